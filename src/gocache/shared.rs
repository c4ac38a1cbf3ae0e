//! What the remote tier's tasks share, and the read path they all use: the
//! connections, the health of reads and of writes, the local tier, and
//! downloads (one at a time per output). `remote` (the run loop's boundary
//! and gets), `prefetch` and `upload` all sit on this module; it depends on
//! none of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use super::health::Health;
use super::local::{now_nanos, Entry, LocalStore};
use super::mapping::{self, RemoteEntry};
use super::protocol::{ActionId, OutputId};
use crate::client::{self, Client, ClientError};

/// Downloads are allowed this rate on top of the lookup timeout, so a large
/// output on a slow link is not cut off by a timeout meant for lookups.
pub const MIN_DOWNLOAD_RATE: u64 = 10 << 20;

/// Outputs at least this large are fetched zstd-compressed, one per
/// ByteStream call, when the server offers zstd: go's archives shrink 3-4×
/// (`go build std` fetches 177 of its 181 MiB in outputs this large), and a
/// call of its own costs one stream, not a round trip more, when calls are
/// in flight together. Smaller ones stay in batches, uncompressed.
pub const COMPRESSED_MIN: u64 = 64 << 10;

/// Least time the start-up capabilities call is given before downloads are
/// plain for the rest of the process. Long, since waiting costs nothing:
/// downloads do not wait for it, they are plain until it answers.
pub const CAPABILITIES_TIMEOUT: Duration = Duration::from_secs(30);

/// What the request tasks and the background tasks share.
pub(super) struct Shared {
    /// For gets only: a get never queues behind prefetching's bulk reads.
    pub client: Client,
    /// For prefetching and the manifest.
    pub prefetch_client: Client,
    /// The health of reads (gets, prefetching): uploads never touch it.
    pub health: Health,
    /// The health of writes (uploads, the prefetch manifest).
    pub upload_health: Health,
    /// The server refused a write outright (RESOURCE_EXHAUSTED: its disk or
    /// budget is full; PERMISSION_DENIED: e.g. a read-only token): no more
    /// uploads for the rest of this process. Reads go on.
    pub refused: AtomicBool,
    /// Uploads queued and not yet done or dropped (for the warning that
    /// counts the ones a finish bound cuts off).
    pub pending_uploads: AtomicUsize,
    pub local: Arc<LocalStore>,
    /// `RemoteConfig::timeout`.
    pub timeout: Duration,
    pub downloads: Downloads,
    /// Bytes being downloaded right now, by gets and the prefetcher
    /// together: they share one link, so each download's time allowance is
    /// sized by all of them, not by its own bytes alone (see [`Shared::downloading`]).
    pub in_flight: AtomicU64,
    /// Whether the server offers zstd-compressed reads: `None` until its
    /// capabilities are known (asked once at start-up, see
    /// [`Shared::probe_zstd`]; `Some(false)` with `--zstd=false`, or when
    /// asking failed). Only ever goes from `None` to `Some`.
    pub zstd: watch::Sender<Option<bool>>,
    /// A corrupt blob, or local disk trouble, was already warned about:
    /// later ones only go to the debug log (one warning per kind).
    pub warned_corrupt: AtomicBool,
    pub warned_local: AtomicBool,
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

impl Shared {
    /// Asks the server's capabilities whether it serves zstd-compressed
    /// blobs. Until it answers, downloads are plain; every download issued
    /// after the answer follows it (see [`Shared::compresses`]), so a slow
    /// answer costs only the plain bytes of the downloads before it. Hence
    /// the generous bound ([`CAPABILITIES_TIMEOUT`], not the lookup
    /// timeout): on a loaded machine the first call of a fresh connection
    /// can take longer than a lookup is allowed, and giving up then would
    /// make every download of the run plain. Failing to ask only means plain
    /// downloads (a down server is the gets' and prefetch's to notice).
    pub async fn probe_zstd(self: Arc<Self>) {
        let bound = self.timeout.max(CAPABILITIES_TIMEOUT);
        let offered = match tokio::time::timeout(bound, self.client.offers_zstd()).await {
            Ok(Ok(offered)) => offered,
            Ok(Err(e)) => {
                tracing::debug!("asking the remote's capabilities: {e}; fetching uncompressed");
                false
            }
            Err(_) => {
                tracing::debug!("the remote's capabilities did not come within {bound:?}; fetching uncompressed");
                false
            }
        };
        tracing::debug!(offered, "zstd-compressed reads");
        self.zstd.send_replace(Some(offered));
    }

    /// Waits (until `deadline`) to learn whether the server offers zstd.
    pub async fn zstd_known(&self, deadline: Instant) {
        let mut rx = self.zstd.subscribe();
        let _ = timeout_at(deadline, rx.wait_for(Option::is_some)).await;
    }

    /// Counts `bytes` as being downloaded until the guard drops; returns
    /// the bytes others were downloading already.
    pub fn downloading(&self, bytes: u64) -> (u64, InFlight<'_>) {
        let others = self.in_flight.fetch_add(bytes, Ordering::Relaxed);
        (others, InFlight { counter: &self.in_flight, bytes })
    }

    /// True if an output of `size` bytes is to be fetched compressed. Asked
    /// by each download as it is issued, so all those issued after the
    /// capabilities answer follow it.
    pub fn compresses(&self, size: u64) -> bool {
        size >= COMPRESSED_MIN && *self.zstd.borrow() == Some(true)
    }

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
        let wait_deadline = deadline;
        // Sized by everything being downloaded now, not this output alone:
        // behind the prefetcher's bulk reads on a slow link, this download
        // gets its share of the link, and timing out would turn an output
        // the server has into a compile (and count against its health).
        let deadline = download_deadline(deadline, e.size, self.in_flight.load(Ordering::Relaxed));
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
                    // Wait for the other download, but only up to the lookup
                    // bound: if it is still busy (a slow prefetch batch),
                    // fetch this output alone rather than miss.
                    if timeout_at(wait_deadline, busy.wait_for(|done| *done)).await.is_err() {
                        return self.fetch_unclaimed(action, e, deadline).await;
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

    /// Downloads one output that another task is already fetching (too
    /// slowly for this get), without claiming it: two verified copies
    /// renamed into one place are harmless.
    async fn fetch_unclaimed(&self, action: &ActionId, e: &RemoteEntry, deadline: Instant) -> Fetch {
        if !self.health.usable() {
            return Fetch::Failed;
        }
        match self.download(&e.output, e.size, deadline).await {
            Ok(true) => match self.local.link(action, &e.output, e.size, e.time_nanos) {
                Ok(Some(entry)) => Fetch::Hit(entry),
                _ => Fetch::Failed,
            },
            Ok(false) => Fetch::Absent,
            Err(Some(err)) => {
                self.failed("download", &err);
                Fetch::Failed
            }
            Err(None) => {
                self.timed_out("download");
                Fetch::Failed
            }
        }
    }

    /// Downloads one output into the local tier (verified by the client):
    /// small ones with BatchReadBlobs, large ones streamed to a temp file
    /// with ByteStream (zstd-compressed from [`COMPRESSED_MIN`] up, when the
    /// server offers it). `Ok(false)` if the server does not have it;
    /// `Err(None)` if the network part missed `deadline` (local writes are
    /// not bounded: a slow disk is not the server's fault).
    async fn download(&self, output: &OutputId, size: u64, deadline: Instant) -> Result<bool, Option<ClientError>> {
        let digest = mapping::output_digest(output, size);
        let local_err = |source| {
            Some(ClientError::Io { context: format!("storing {digest} in {}", self.local.root().display()), source })
        };
        let _counted = self.downloading(size);
        if size == 0 {
            // The empty blob: every CAS has it implicitly. (An entry claiming
            // zero bytes under another hash is bogus: the server lacks it.)
            if *output != OutputId::EMPTY {
                return Ok(false);
            }
            self.local.install_bytes(output, b"").map_err(local_err)?;
        } else if self.compresses(size) {
            let mut temp = self.local.temp_file().map_err(local_err)?;
            drop(temp.take_file());
            let read = timeout_at(deadline, self.client.read_to_file_zstd(&digest, temp.path())).await;
            if !read.map_err(|_| None)?.map_err(Some)? {
                return Ok(false);
            }
            self.local.install_object(output, temp).map_err(local_err)?;
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

/// Bytes counted in [`Shared::in_flight`] while this lives.
pub(super) struct InFlight<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// When a get's download of `size` bytes must be done, given its lookup
/// deadline and the bytes others are downloading now over the same link.
pub fn download_deadline(lookup: Instant, size: u64, in_flight: u64) -> Instant {
    lookup + download_allowance(size + in_flight)
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
    fn a_get_behind_bulk_downloads_gets_their_time_too() {
        let lookup = Instant::now();
        let alone = download_deadline(lookup, MIN_DOWNLOAD_RATE, 0);
        assert_eq!(alone - lookup, Duration::from_secs(1));
        // Behind 30 MiB of prefetching on the same link: 3 s more, not a
        // timeout that turns a hit into a compile.
        assert_eq!(download_deadline(lookup, MIN_DOWNLOAD_RATE, 3 * MIN_DOWNLOAD_RATE) - alone, Duration::from_secs(3));
    }

    #[test]
    fn allowance_grows_with_size() {
        assert_eq!(download_allowance(0), Duration::ZERO);
        assert_eq!(download_allowance(MIN_DOWNLOAD_RATE * 3), Duration::from_secs(3));
    }
}
