//! ByteStream uploads in flight and interrupted ones, so a client can ask
//! QueryWriteStatus how far it got and resume at that offset instead of
//! starting over.
//! Bounded in count and age: the oldest is dropped (with its temp file) when
//! the table is full, and every entry expires after [`PARKED_TTL`].
//!
//! Also the budget of bytes uploads may hold (`--max-tmp-size`): each upload
//! reserves its declared size when it begins and gives it back when it is
//! committed, abandoned or expires. When the budget is full, parked uploads
//! (expired ones first, then the oldest) make room for live ones; if that is
//! not enough the new upload is refused with RESOURCE_EXHAUSTED.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BlobWriter;
use crate::config::{human_size, UploadLimits};
use crate::error::{Error, Result};

/// How many interrupted uploads are kept at once.
const MAX_PARKED: usize = 256;
/// How long an interrupted upload waits to be resumed.
const PARKED_TTL: Duration = Duration::from_secs(15 * 60);

/// The table of interrupted uploads, keyed by their full resource name.
pub struct Uploads {
    parked: Mutex<HashMap<String, (BlobWriter, Instant)>>,
    /// Bytes received so far by uploads whose stream is still open.
    live: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Declared bytes reserved by uploads in progress or parked.
    reserved: Arc<AtomicU64>,
    /// `--max-blob-size`: checked when an upload begins (see `writer.rs`).
    max_blob_size: AtomicU64,
    /// `--max-tmp-size`: the bound on `reserved`.
    max_tmp_size: AtomicU64,
    /// Bytes in the temp files of uploads in progress or parked: on the
    /// cache's disk already, so eviction counts them against `--max-size`.
    spooled: Arc<AtomicU64>,
}

/// Bytes of the upload budget held by one upload; given back on drop, so a
/// commit, an abandoned stream and an expired parked upload all release it.
pub struct Reservation {
    reserved: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
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
        Uploads {
            parked: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            reserved: Arc::new(AtomicU64::new(0)),
            max_blob_size: AtomicU64::new(UploadLimits::default().max_blob_size),
            max_tmp_size: AtomicU64::new(UploadLimits::default().max_tmp_size),
            spooled: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes in upload temp files right now (see [`Uploads::spooled`]'s field).
    pub fn spooled(&self) -> u64 {
        self.spooled.load(Ordering::Acquire)
    }

    /// The shared counter a temp file adds its bytes to and removes them from.
    pub(super) fn spool_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.spooled)
    }

    /// Sets the upload limits (the server does, from its config, before it
    /// serves; until then the defaults apply). Uploads already begun keep
    /// their reservations.
    pub fn set_limits(&self, limits: &UploadLimits) {
        self.max_blob_size.store(limits.max_blob_size, Ordering::Release);
        self.max_tmp_size.store(limits.max_tmp_size, Ordering::Release);
    }

    /// The upload limits in force.
    pub fn limits(&self) -> UploadLimits {
        UploadLimits {
            max_blob_size: self.max_blob_size.load(Ordering::Acquire),
            max_tmp_size: self.max_tmp_size.load(Ordering::Acquire),
        }
    }

    /// Declared bytes currently reserved by uploads in progress or parked.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Reserves `bytes` of the budget for a new upload, first dropping
    /// expired and then the oldest parked uploads if that makes it fit.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation> {
        let budget = self.max_tmp_size.load(Ordering::Acquire);
        if let Some(r) = self.try_reserve(bytes, budget) {
            return Ok(r);
        }
        if bytes > budget {
            // Could never fit: don't drop anyone's parked upload for it.
            return Err(self.budget_full(bytes, budget));
        }
        // Dropped outside the lock: dropping a writer deletes its temp file.
        let mut evicted = Vec::new();
        {
            let mut map = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let expired: Vec<String> = map
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) >= PARKED_TTL)
                .map(|(k, _)| k.clone())
                .collect();
            evicted.extend(expired.iter().filter_map(|k| map.remove(k)));
            let mut by_age: Vec<(Instant, String)> = map.iter().map(|(k, (_, at))| (*at, k.clone())).collect();
            by_age.sort();
            let mut freed: u64 = evicted.iter().map(|(w, _)| w.digest().size).sum();
            for (_, k) in by_age {
                if self.reserved().saturating_sub(freed).saturating_add(bytes) <= budget {
                    break;
                }
                if let Some(e) = map.remove(&k) {
                    freed += e.0.digest().size;
                    evicted.push(e);
                }
            }
        }
        if !evicted.is_empty() {
            tracing::info!(count = evicted.len(), "dropped parked uploads to make room in the upload budget");
        }
        drop(evicted);
        self.try_reserve(bytes, budget).ok_or_else(|| self.budget_full(bytes, budget))
    }

    /// The client's answer when an upload of `bytes` does not fit.
    fn budget_full(&self, bytes: u64, budget: u64) -> Error {
        Error::ResourceExhausted(format!(
            "uploads in progress hold {} of the {} upload budget (--max-tmp-size, CAIRN_MAX_TMP_SIZE), \
             so this upload of {} must wait: retry later, or raise --max-tmp-size",
            human_size(self.reserved()),
            human_size(budget),
            human_size(bytes)
        ))
    }

    /// Reserves `bytes` if they fit in `budget` now.
    fn try_reserve(&self, bytes: u64, budget: u64) -> Option<Reservation> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= budget)
            })
            .ok()
            .map(|_| Reservation { reserved: self.reserved.clone(), bytes })
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
        let all = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
        drop(all);
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
