//! The remote tier: go's cache on a REAPI server (cairn or any other), over
//! the shared [`crate::client`]. How entries are keyed and stored is in
//! [`super::mapping`]; this file is the run loop's boundary and the get path.
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
//! Connections: two lazy gRPC channels, made on first use (start-up does no
//! network I/O). Gets and prefetching share one, uploads have their own, so
//! a burst of uploads never queues in front of a get.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::health::Health;
use super::local::{now_nanos, Entry, LocalStore};
use super::mapping::{self, RemoteEntry};
use super::prefetch::{self, Prefetch};
use super::protocol::{ActionId, OutputId};
use super::upload;
use crate::client::{self, Client, ClientError};

/// Downloads are allowed this rate on top of the lookup timeout, so a large
/// output on a slow link is not cut off by a timeout meant for lookups.
pub const MIN_DOWNLOAD_RATE: u64 = 10 << 20;

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

/// What the request tasks and the background tasks share.
pub(super) struct Shared {
    /// For gets and prefetching.
    pub client: Client,
    /// The health of reads (gets, prefetching): uploads never touch it.
    pub health: Health,
    /// The health of writes (uploads, the prefetch manifest).
    pub upload_health: Health,
    /// The server refused a write outright (RESOURCE_EXHAUSTED: its disk or
    /// budget is full; PERMISSION_DENIED: e.g. a read-only token): no more
    /// uploads for the rest of this process. Reads go on.
    refused: AtomicBool,
    /// Uploads queued and not yet done or dropped (for the warning that
    /// counts the ones a finish bound cuts off).
    pub pending_uploads: AtomicUsize,
    pub local: Arc<LocalStore>,
    /// `RemoteConfig::timeout`.
    pub timeout: Duration,
    pub downloads: Downloads,
    /// A corrupt blob, or local disk trouble, was already warned about:
    /// later ones only go to the debug log (one warning per kind).
    warned_corrupt: AtomicBool,
    warned_local: AtomicBool,
}

/// How fetching one output ended.
#[derive(Debug)]
pub(super) enum Fetch {
    Hit(Entry),
    /// The server does not have the blob.
    Absent,
    /// Timed out, failed, or skipped because the remote is down.
    Failed,
}

impl Remote {
    /// Sets up the remote tier without touching the network (the channels
    /// connect on first use), and starts the uploader and the prefetcher.
    /// `None` (with a warning) only for an unusable address.
    pub fn connect(config: &RemoteConfig, local: &Arc<LocalStore>) -> Option<Remote> {
        let lazy = || Client::connect_lazy(&config.url, &config.instance, CONNECT_TIMEOUT);
        let (client, upload_client) = match (lazy(), lazy()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cairn gocacheprog: {e}; using only the local cache");
                return None;
            }
        };
        let shared = Arc::new(Shared {
            client,
            health: Health::new(&config.url),
            upload_health: Health::for_uploads(&config.url),
            refused: AtomicBool::new(false),
            pending_uploads: AtomicUsize::new(0),
            local: local.clone(),
            timeout: config.timeout,
            downloads: Downloads::default(),
            warned_corrupt: AtomicBool::new(false),
            warned_local: AtomicBool::new(false),
        });
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

impl Shared {
    /// The remote's entry for `action`, if it has a usable one.
    pub async fn lookup(&self, action: &ActionId, deadline: Instant) -> Option<RemoteEntry> {
        let key = mapping::action_key(action);
        match timeout_at(deadline, self.client.get_action_result(&key)).await {
            Ok(Ok(result)) => {
                self.health.ok();
                mapping::read_entry(&result?, now_nanos())
            }
            Ok(Err(e)) => {
                self.failed("GetActionResult", &e);
                None
            }
            Err(_) => {
                self.timed_out("GetActionResult");
                None
            }
        }
    }

    /// Makes `action → e` a local entry: links it if the output is already
    /// here, waits if someone else is downloading the output, downloads it
    /// otherwise. `deadline` is the lookup deadline; the download gets
    /// [`download_allowance`] on top.
    pub async fn fetch(&self, action: &ActionId, e: &RemoteEntry, deadline: Instant) -> Fetch {
        if e.size > self.local.max_size() {
            return Fetch::Failed; // would be trimmed at once; not worth the bytes
        }
        let deadline = deadline + download_allowance(e.size);
        // At most: look, wait for another download, look, download, look.
        for _ in 0..3 {
            match self.local.link(action, &e.output, e.size, e.time_nanos) {
                Ok(Some(entry)) => return Fetch::Hit(entry),
                Ok(None) => {}
                Err(err) => {
                    let err = ClientError::Io {
                        context: format!("recording {action} in {}", self.local.root().display()),
                        source: err,
                    };
                    self.failed("writing the local cache", &err);
                    return Fetch::Failed;
                }
            }
            match self.downloads.claim(e.output) {
                Err(mut busy) => {
                    if timeout_at(deadline, busy.wait_for(|done| *done)).await.is_err() {
                        return Fetch::Failed;
                    }
                }
                Ok(_claim) => {
                    if !self.health.usable() {
                        return Fetch::Failed;
                    }
                    match self.download(&e.output, e.size, deadline).await {
                        Ok(true) => {}
                        Ok(false) => return Fetch::Absent,
                        Err(Some(err)) => {
                            self.failed("download", &err);
                            return Fetch::Failed;
                        }
                        Err(None) => {
                            self.timed_out("download");
                            return Fetch::Failed;
                        }
                    }
                }
            }
        }
        Fetch::Failed
    }

    /// Downloads one output into the local tier (verified by the client):
    /// small ones with BatchReadBlobs, large ones streamed to a temp file
    /// with ByteStream. `Ok(false)` if the server does not have it;
    /// `Err(None)` if the network part missed `deadline` (local writes are
    /// not bounded: a slow disk is not the server's fault).
    async fn download(&self, output: &OutputId, size: u64, deadline: Instant) -> Result<bool, Option<ClientError>> {
        let digest = mapping::output_digest(output, size);
        let local_err = |source| {
            Some(ClientError::Io { context: format!("storing {digest} in {}", self.local.root().display()), source })
        };
        if size == 0 {
            // The empty blob: every CAS has it implicitly. (An entry claiming
            // zero bytes under another hash is bogus: the server lacks it.)
            if *output != OutputId::EMPTY {
                return Ok(false);
            }
            self.local.install_bytes(output, b"").map_err(local_err)?;
        } else if size <= client::BATCH_BLOB_MAX {
            let read = timeout_at(deadline, self.client.batch_read(&[digest])).await;
            let Some(Some(data)) = read.map_err(|_| None)?.map_err(Some)?.pop() else {
                return Ok(false);
            };
            self.local.install_bytes(output, &data).map_err(local_err)?;
        } else {
            let mut temp = self.local.temp_file().map_err(local_err)?;
            drop(temp.take_file());
            let read = timeout_at(deadline, self.client.read_to_file(&digest, temp.path())).await;
            if !read.map_err(|_| None)?.map_err(Some)? {
                return Ok(false);
            }
            self.local.install_object(output, temp).map_err(local_err)?;
        }
        self.health.ok();
        Ok(true)
    }

    /// Reports a failed call: the server's fault counts against its health;
    /// bad data and local disk trouble are warned about, not held against it.
    pub fn failed(&self, what: &str, e: &ClientError) {
        let once = match e {
            ClientError::Corrupt { .. } => &self.warned_corrupt,
            ClientError::Io { .. } => &self.warned_local,
            _ => return self.health.failed(what, e),
        };
        if once.swap(true, Ordering::Relaxed) {
            tracing::debug!("{what}: {e}");
        } else {
            tracing::warn!("cairn gocacheprog: {what}: {e}; treating it as a miss (this warning is shown once)");
        }
    }

    pub fn timed_out(&self, what: &str) {
        self.health.failed(what, &"no answer in time");
    }

    /// Reports a failed write: against the upload health only. A refusal
    /// (see `refused`) stops uploading for the rest of the process, with
    /// one warning.
    pub fn upload_failed(&self, what: &str, e: &ClientError) {
        if refuses_writes(e) {
            if !self.refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cairn gocacheprog: the remote cache refuses uploads ({what}: {e}); not uploading for the \
                     rest of this go command (reads from it go on)"
                );
            }
            return;
        }
        match e {
            ClientError::Corrupt { .. } | ClientError::Io { .. } => self.failed(what, e),
            _ => self.upload_health.failed(what, e),
        }
    }

    /// A write timed out: against the upload health only.
    pub fn upload_timed_out(&self, what: &str) {
        self.upload_health.failed(what, &"no answer in time");
    }

    /// True once the server refused a write outright: nothing more is uploaded.
    pub fn uploads_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// True for the answers that say a server will not take writes from us for
/// a while (and retrying only adds load): RESOURCE_EXHAUSTED (its disk or
/// upload budget is full) and PERMISSION_DENIED (e.g. a read-only token).
pub(super) fn refuses_writes(e: &ClientError) -> bool {
    matches!(e, ClientError::Rpc { status, .. }
        if matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::PermissionDenied))
}

/// Extra time a download of `size` bytes may take beyond the lookup timeout.
pub fn download_allowance(size: u64) -> Duration {
    Duration::from_secs_f64(size as f64 / MIN_DOWNLOAD_RATE as f64)
}

pub(super) fn remote_entry(e: &Entry) -> RemoteEntry {
    RemoteEntry { output: e.output, size: e.size, time_nanos: e.time_nanos }
}

/// Downloads in progress, by output, so that a get and the prefetcher (or
/// two gets whose actions share an output) never fetch the same bytes twice:
/// the second one waits for the first.
#[derive(Default)]
pub(super) struct Downloads {
    /// Each receiver turns `true` when that download ends (either way).
    active: Arc<Mutex<HashMap<OutputId, watch::Receiver<bool>>>>,
}

/// The right to download one output; dropping it wakes the waiters.
pub(super) struct Claim {
    active: Arc<Mutex<HashMap<OutputId, watch::Receiver<bool>>>>,
    output: OutputId,
    done: watch::Sender<bool>,
}

impl Downloads {
    /// Claims `output`, or returns a receiver to wait on if it is taken.
    pub fn claim(&self, output: OutputId) -> Result<Claim, watch::Receiver<bool>> {
        let mut active = lock(&self.active);
        if let Some(busy) = active.get(&output) {
            return Err(busy.clone());
        }
        let (done, rx) = watch::channel(false);
        active.insert(output, rx);
        Ok(Claim { active: self.active.clone(), output, done })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.active).remove(&self.output);
        let _ = self.done.send(true);
    }
}

/// Locks a std mutex (held only for a few instructions), ignoring poison.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_download_waits_for_the_first() {
        let d = Downloads::default();
        let out = OutputId([5; 32]);
        let Ok(claim) = d.claim(out) else { panic!("the first claim must be free") };
        let mut busy = d.claim(out).err().expect("taken");
        assert!(d.claim(OutputId([6; 32])).is_ok(), "other outputs are independent");
        assert!(!*busy.borrow());
        drop(claim);
        busy.wait_for(|done| *done).await.unwrap();
        assert!(d.claim(out).is_ok(), "free again");
    }

    #[test]
    fn allowance_grows_with_size() {
        assert_eq!(download_allowance(0), Duration::ZERO);
        assert_eq!(download_allowance(MIN_DOWNLOAD_RATE * 3), Duration::from_secs(3));
    }
}
