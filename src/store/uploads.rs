//! ByteStream uploads in flight and interrupted ones, so a client can ask
//! QueryWriteStatus how far it got and resume at that offset instead of
//! starting over.
//! Bounded in count and age: the oldest is dropped (with its temp file) when
//! the table is full, and every entry expires after [`PARKED_TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BlobWriter;

/// How many interrupted uploads are kept at once.
const MAX_PARKED: usize = 256;
/// How long an interrupted upload waits to be resumed.
const PARKED_TTL: Duration = Duration::from_secs(15 * 60);

/// The table of interrupted uploads, keyed by their full resource name.
pub struct Uploads {
    parked: Mutex<HashMap<String, (BlobWriter, Instant)>>,
    /// Bytes received so far by uploads whose stream is still open.
    live: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

/// Registration of an upload in flight; its progress is visible to
/// QueryWriteStatus until the guard is dropped.
pub struct LiveUpload<'a> {
    uploads: &'a Uploads,
    name: String,
    progress: Arc<AtomicU64>,
}

impl LiveUpload<'_> {
    /// Records the bytes received so far.
    pub fn set(&self, n: u64) {
        self.progress.store(n, Ordering::Relaxed);
    }
}

impl Drop for LiveUpload<'_> {
    fn drop(&mut self) {
        let mut live = self.uploads.live.lock().unwrap_or_else(|p| p.into_inner());
        // Only remove our own entry (a newer stream may have reused the name).
        if live.get(&self.name).is_some_and(|p| Arc::ptr_eq(p, &self.progress)) {
            live.remove(&self.name);
        }
    }
}

impl Default for Uploads {
    fn default() -> Self {
        Self::new()
    }
}

impl Uploads {
    pub fn new() -> Uploads {
        Uploads { parked: Mutex::new(HashMap::new()), live: Mutex::new(HashMap::new()) }
    }

    /// Keeps an interrupted upload for later resumption.
    pub fn park(&self, name: String, writer: BlobWriter) {
        let mut map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < PARKED_TTL);
        if map.len() >= MAX_PARKED {
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(name, (writer, now));
    }

    /// Takes an interrupted upload back to continue it.
    pub fn take(&self, name: &str) -> Option<BlobWriter> {
        let mut map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(name).filter(|(_, at)| at.elapsed() < PARKED_TTL).map(|(w, _)| w)
    }

    /// Drops every interrupted upload (at shutdown).
    pub fn clear(&self) {
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Registers an upload whose stream is open, starting at `offset` bytes.
    pub fn start_live(&self, name: &str, offset: u64) -> LiveUpload<'_> {
        let progress = Arc::new(AtomicU64::new(offset));
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(name.to_string(), progress.clone());
        LiveUpload { uploads: self, name: name.to_string(), progress }
    }

    /// Bytes received so far by an upload in flight or interrupted.
    pub fn progress(&self, name: &str) -> Option<u64> {
        if let Some(p) = self.live.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Some(p.load(Ordering::Relaxed));
        }
        let map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).filter(|(_, at)| at.elapsed() < PARKED_TTL).map(|(w, _)| w.written())
    }
}
