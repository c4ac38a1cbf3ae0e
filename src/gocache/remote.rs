//! The remote tier: go's cache on a REAPI server (cairn or any other), over
//! the shared [`crate::client`]. How entries are keyed and stored is in
//! [`super::mapping`]; this file is the run loop's boundary and the get
//! path's order (manifest, lookup, fetch); the fetching itself is `shared`.
//!
//! The rules the run loop relies on:
//! - [`Remote::get`] never fails: a remote problem is a miss (go would treat
//!   an `Err` as a miss anyway, silently). It is bounded: the lookup by
//!   `RemoteConfig::timeout`, a download by that plus [`download_allowance`].
//!   A hit is downloaded, verified against its digest (by the client) and
//!   committed to the local tier before it is reported, so go only ever sees
//!   local files.
//! - [`Remote::upload`] never blocks the put reply: it queues a job for the
//!   uploader task (module `upload`) and returns.
//! - [`Remote::finish`] bounds how long pending uploads (and the prefetch
//!   manifest) may keep the process alive after go is released.
//! - A failing or silent server costs at most a few timeouts: see
//!   [`super::health`] (one warning, then back-off).
//!
//! Two background tasks hang off a `Remote`: the uploader and the
//! prefetcher (module `prefetch`: fetches the manifest of the last similar
//! build, then the outputs it names before go asks). [`Remote::finish`]
//! ends both; dropping the `Remote` aborts them.
//!
//! Connections: three lazy gRPC channels, made on first use (start-up does
//! no network I/O): one for gets, one for prefetching, one for uploads, so
//! neither a burst of uploads nor prefetching's bulk reads ever queue in
//! front of a get.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::health::Health;
use super::local::{Entry, LocalStore};
use super::prefetch::{self, Prefetch};
use super::protocol::ActionId;
pub use super::shared::{download_allowance, MIN_DOWNLOAD_RATE};
use super::shared::{lock, remote_entry, Downloads, Fetch, Shared};
use super::upload;
use crate::client::Client;

/// TCP connect bound of both channels.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the remote cache is and how to use it; parsed from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `grpc://host:port` (or `http://`), as given by `--remote`.
    pub url: String,
    /// REAPI instance name (`--instance`); may be empty.
    pub instance: String,
    /// Bound on each remote lookup; past it, the get is a miss.
    pub timeout: Duration,
    /// Fetch the last similar build's entries in the background at start-up,
    /// and store this build's list at exit (`--prefetch`).
    pub prefetch: bool,
    /// Replaces the module and directory in the prefetch key (`--prefetch-key`).
    pub prefetch_key: Option<String>,
    /// Finish uploads before answering go's `close` (`--wait-for-uploads`).
    pub wait_for_uploads: bool,
    /// TLS trust, client certificate and token (`--tls-ca`, `--token-file`, ...).
    pub security: crate::client::Security,
    /// Fetch larger outputs zstd-compressed when the server offers it (`--zstd`).
    pub zstd: bool,
}

/// The remote tier.
pub struct Remote {
    shared: Arc<Shared>,
    prefetch: Arc<Prefetch>,
    /// The uploader's queue; taken (closed) by [`Remote::finish`].
    uploads: Mutex<Option<mpsc::Sender<upload::Job>>>,
    uploader: Mutex<Option<JoinHandle<()>>>,
    prefetcher: Mutex<Option<JoinHandle<()>>>,
    /// `RemoteConfig::wait_for_uploads`.
    wait_for_uploads: bool,
    /// [`Remote::finish`] has run (it may be called twice: before the close
    /// reply with `--wait-for-uploads`, and at exit).
    finished: AtomicBool,
}

impl Remote {
    /// Sets up the remote tier without touching the network (the channels
    /// connect on first use), and starts the uploader and the prefetcher.
    /// `None` (with a warning) only for an unusable address.
    pub fn connect(config: &RemoteConfig, local: &Arc<LocalStore>) -> Option<Remote> {
        // Every call names the shim, so the server's metrics count Go apart from Bazel.
        let lazy = || {
            Client::connect_lazy_with(&config.url, &config.instance, CONNECT_TIMEOUT, &config.security)
                .map(|c| c.with_tool(crate::client::GOCACHEPROG_TOOL_NAME, env!("CARGO_PKG_VERSION")))
        };
        let (client, prefetch_client, upload_client) = match (lazy(), lazy(), lazy()) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::warn!("cairn gocacheprog: {e}; using only the local cache");
                return None;
            }
        };
        let health = Health::new(&config.url);
        let shared = Arc::new(Shared {
            client,
            prefetch_client,
            upload_health: Health::for_uploads(&health),
            health,
            refused: AtomicBool::new(false),
            pending_uploads: AtomicUsize::new(0),
            local: local.clone(),
            timeout: config.timeout,
            downloads: Downloads::default(),
            in_flight: AtomicU64::new(0),
            zstd: watch::channel(if config.zstd { None } else { Some(false) }).0,
            warned_corrupt: AtomicBool::new(false),
            warned_local: AtomicBool::new(false),
        });
        if config.zstd {
            tokio::spawn(shared.clone().probe_zstd());
        }
        let (uploads, uploader) = upload::start(upload_client, shared.clone(), config.wait_for_uploads);
        let (prefetch, prefetcher) = prefetch::start(config, shared.clone());
        Some(Remote {
            shared,
            prefetch,
            uploads: Mutex::new(Some(uploads)),
            uploader: Mutex::new(Some(uploader)),
            prefetcher: Mutex::new(prefetcher),
            wait_for_uploads: config.wait_for_uploads,
            finished: AtomicBool::new(false),
        })
    }

    /// Looks `action` up remotely (after a local miss); on a hit, downloads
    /// the output (verified) into the local tier and returns the new local
    /// entry. Never an error, and bounded in time.
    pub async fn get(&self, action: &ActionId) -> Option<Entry> {
        self.prefetch.recorder.asked(action);
        let deadline = Instant::now() + self.shared.timeout;
        // The last similar build had it: no lookup needed, and the
        // prefetcher may be downloading it already.
        let mut stale = None;
        if let Some(planned) = self.prefetch.planned(action, deadline).await {
            match self.shared.fetch(action, &planned, deadline).await {
                Fetch::Hit(entry) => return Some(self.found(action, entry)),
                Fetch::Absent => stale = Some(planned.output),
                Fetch::Failed => return None,
            }
        }
        // The manifest took the whole bound (it is still loading): a miss,
        // not a failed lookup.
        if !self.shared.health.usable() || Instant::now() >= deadline {
            return None;
        }
        let remote = self.shared.lookup(action, deadline).await?;
        if stale == Some(remote.output) {
            return None; // just found missing
        }
        match self.shared.fetch(action, &remote, deadline).await {
            Fetch::Hit(entry) => Some(self.found(action, entry)),
            Fetch::Absent | Fetch::Failed => None,
        }
    }

    fn found(&self, action: &ActionId, entry: Entry) -> Entry {
        self.prefetch.recorder.known(action, &entry);
        entry
    }

    /// Notes a local hit, for this build's prefetch manifest.
    pub fn saw(&self, action: &ActionId, entry: &Entry) {
        self.prefetch.recorder.asked(action);
        self.prefetch.recorder.known(action, entry);
    }

    /// Queues the upload of an entry that was just stored locally. Never
    /// waits: when the queue is full the upload is dropped (the build goes
    /// on; the server just misses this entry).
    pub fn upload(&self, action: &ActionId, entry: &Entry) {
        self.prefetch.recorder.known(action, entry);
        let job = upload::Job { action: *action, entry: remote_entry(entry), path: entry.path.clone() };
        if self.shared.uploads_refused() {
            return;
        }
        if let Some(tx) = lock(&self.uploads).as_ref() {
            if tx.try_send(job).is_err() {
                tracing::debug!(%action, "upload queue full; not uploading this entry");
            } else {
                self.shared.pending_uploads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops prefetching, then lets queued uploads and the manifest upload
    /// run for at most `bound` (less if the remote is down), then gives up
    /// on them. Later calls return at once.
    pub async fn finish(&self, bound: Duration) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        let deadline = Instant::now() + bound;
        if let Some(p) = lock(&self.prefetcher).take() {
            p.abort();
        }
        drop(lock(&self.uploads).take()); // the uploader drains the queue and exits
        let uploader = lock(&self.uploader).take();
        let uploads = async {
            if let Some(task) = uploader {
                let abort = task.abort_handle();
                if timeout_at(deadline, task).await.is_err() {
                    abort.abort();
                    let dropped = self.shared.pending_uploads.swap(0, Ordering::Relaxed);
                    // Only with --wait-for-uploads does go still show our
                    // stderr; otherwise it has been let go already.
                    if self.wait_for_uploads && dropped > 0 {
                        tracing::warn!(
                            "cairn gocacheprog: {dropped} uploads did not finish within {bound:?} \
                             (--finish-timeout) and were dropped; the server misses those entries"
                        );
                    } else {
                        tracing::debug!(dropped, "uploads did not finish within {bound:?}; dropped the rest");
                    }
                }
            }
        };
        let manifest = async {
            if timeout_at(deadline, self.prefetch.store_manifest(&self.shared)).await.is_err() {
                tracing::debug!("storing the prefetch manifest did not finish within {bound:?}");
            }
        };
        tokio::join!(uploads, manifest);
    }

    /// Finish uploads before answering go's close (`--wait-for-uploads`).
    pub fn waits_for_uploads(&self) -> bool {
        self.wait_for_uploads
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        for task in [&self.uploader, &self.prefetcher] {
            if let Some(t) = lock(task).take() {
                t.abort();
            }
        }
    }
}
