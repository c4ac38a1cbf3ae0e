//! The uploader: one background task that copies entries go has just put
//! (already stored locally, and answered) to the remote.
//!
//! It works in rounds over whatever has queued up meanwhile, so a burst of
//! puts costs a few calls, not a few per put:
//! 1. one FindMissingBlobs for the round's outputs the server is not already
//!    known to hold (many actions share an output; the empty blob is never
//!    sent);
//! 2. the missing blobs: small ones read from the local files into
//!    BatchUpdateBlobs calls of at most [`BATCH_BYTES`], large ones streamed
//!    from their files with ByteStream; [`BLOB_CONCURRENCY`] at a time, so at
//!    most about `BATCH_BYTES * BLOB_CONCURRENCY` of blob data is in memory;
//! 3. one UpdateActionResult per entry whose blob is now on the server
//!    (REAPI has no batch form), [`AC_CONCURRENCY`] at a time.
//!
//! Blobs go before the entries naming them, so a server never holds an
//! entry whose output it lacks because of us. Memory is bounded by the queue
//! ([`QUEUE`] small jobs holding paths, not bodies) plus the batches in
//! flight. Uploads have their own health (`Shared::upload_health`): a
//! server failing writes never holds up reads. A failing server: the
//! round's failed jobs are retried after the back-off (at most
//! [`MAX_ATTEMPTS`] times); once go is done and the remote is down, the rest
//! are dropped instead of waited for, unless go waits for uploads
//! (`--wait-for-uploads`): then back-offs are waited out until the finish
//! bound. A server that refuses writes outright (RESOURCE_EXHAUSTED,
//! PERMISSION_DENIED) gets no more uploads from this process. Each blob of
//! a batch succeeds or fails on its own.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::mapping::{self, RemoteEntry};
use super::protocol::ActionId;
use super::shared::{download_allowance, Shared};
use crate::client::{self, Client, ClientError};
use crate::digest::Digest;
use crate::proto::reapi;

/// Jobs waiting for the uploader. A job is a path and two IDs (~200 bytes),
/// so a full queue is ~13 MB; a cold `go build std cmd` puts ~3,700.
pub const QUEUE: usize = 65_536;

/// Most jobs handled per round.
const ROUND_JOBS: usize = 1024;

/// Most bytes per BatchUpdateBlobs call (below the usual 4 MiB gRPC limit).
pub const BATCH_BYTES: u64 = 2 << 20;

/// Blob uploads (batches or streams) in flight.
const BLOB_CONCURRENCY: usize = 4;

/// UpdateActionResult calls in flight (small calls; latency-bound).
const AC_CONCURRENCY: usize = 16;

/// Rounds a job may fail before it is dropped.
const MAX_ATTEMPTS: u32 = 3;

/// Bound on each upload call, plus [`download_allowance`] for its bytes.
/// Generous: uploads run in the background, and `finish` bounds them at exit.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An entry to upload.
#[derive(Debug)]
pub struct Job {
    pub action: ActionId,
    pub entry: RemoteEntry,
    /// The local file holding the output.
    pub path: PathBuf,
}

impl Job {
    fn digest(&self) -> Digest {
        self.entry.digest()
    }
}

/// Starts the uploader. Closing the sender tells it to finish the queue and
/// exit. `wait`: go waits for the uploads, so back-offs are waited out even
/// after the queue is closed (the finish bound ends them).
pub(super) fn start(client: Client, shared: Arc<Shared>, wait: bool) -> (mpsc::Sender<Job>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, tokio::spawn(run(rx, client, shared, wait)))
}

/// Counts jobs that are finished with (uploaded or dropped).
fn done(shared: &Shared, n: usize) {
    let _ = shared.pending_uploads.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(n)));
}

async fn run(mut rx: mpsc::Receiver<Job>, mut client: Client, shared: Arc<Shared>, wait: bool) {
    let mut pending: VecDeque<(Job, u32)> = VecDeque::new();
    // Blobs the server is known to hold (found or uploaded by this process).
    let mut present: HashSet<Digest> = HashSet::new();
    let mut open = true;
    let mut checked = false;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(job) => pending.push_back((job, 0)),
                None => return,
            }
        }
        while open && pending.len() < ROUND_JOBS {
            match rx.try_recv() {
                Ok(job) => pending.push_back((job, 0)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if shared.uploads_refused() {
            // Keep taking jobs, so puts never see a full queue.
            done(&shared, pending.len());
            pending.clear();
            while rx.recv().await.is_some() {
                done(&shared, 1);
            }
            return;
        }
        if let Some(until) = shared.upload_health.down_until() {
            if !open && !wait {
                tracing::debug!("remote is down at exit; dropping {} uploads", pending.len());
                done(&shared, pending.len());
                return;
            }
            // Wait out the back-off, noticing if go finishes meanwhile.
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                job = rx.recv() => match job {
                    Some(job) => pending.push_back((job, 0)),
                    None => open = false,
                },
            }
            continue;
        }
        if !checked {
            match check_capabilities(&mut client, &shared).await {
                Some(true) => checked = true,
                Some(false) => {
                    // Keep taking jobs, so puts never see a full queue.
                    done(&shared, pending.len());
                    while rx.recv().await.is_some() {
                        done(&shared, 1);
                    }
                    return;
                }
                None => continue, // failed: the health check above waits
            }
        }
        let n = pending.len().min(ROUND_JOBS);
        let round: Vec<(Job, u32)> = pending.drain(..n).collect();
        let retry = upload_round(&client, &shared, round, &mut present).await;
        let mut finished = n - retry.len();
        for (job, attempts) in retry.into_iter().rev() {
            if attempts + 1 < MAX_ATTEMPTS {
                pending.push_front((job, attempts + 1));
            } else {
                finished += 1;
            }
        }
        done(&shared, finished);
    }
}

/// Asks the server's capabilities once (adopting its batch limit). `None`:
/// the call failed; `Some(false)`: the server does not take ActionCache
/// updates (e.g. a read-only cache), so there is nothing to upload.
async fn check_capabilities(client: &mut Client, shared: &Shared) -> Option<bool> {
    let caps = match timeout(CALL_TIMEOUT, client.capabilities()).await {
        Ok(Ok(caps)) => caps,
        Ok(Err(e)) => {
            shared.upload_failed("GetCapabilities", &e);
            return None;
        }
        Err(_) => {
            shared.upload_timed_out("GetCapabilities");
            return None;
        }
    };
    let cache = caps.cache_capabilities.unwrap_or_default();
    let sha256 = reapi::digest_function::Value::Sha256 as i32;
    let updates = cache.action_cache_update_capabilities.is_some_and(|u| u.update_enabled);
    let hashes = cache.digest_functions.is_empty() || cache.digest_functions.contains(&sha256);
    if !updates || !hashes {
        tracing::warn!(
            "cairn gocacheprog: the remote cache does not accept {}; using it read-only",
            if hashes { "ActionCache updates" } else { "SHA-256 digests" }
        );
        return Some(false);
    }
    Some(true)
}

/// One round: find missing blobs, upload them, then the entries. Returns
/// the jobs to retry.
async fn upload_round(
    client: &Client,
    shared: &Shared,
    round: Vec<(Job, u32)>,
    present: &mut HashSet<Digest>,
) -> Vec<(Job, u32)> {
    // 1. Which blobs does the server lack?
    let mut asked = HashSet::new();
    let wanted: Vec<Digest> = round
        .iter()
        .map(|(j, _)| j.digest())
        .filter(|d| d.size > 0 && !present.contains(d) && asked.insert(*d))
        .collect();
    let missing: HashSet<Digest> = if wanted.is_empty() {
        HashSet::new()
    } else {
        match timeout(CALL_TIMEOUT, client.find_missing(&wanted)).await {
            Ok(Ok(m)) => m.into_iter().collect(),
            Ok(Err(e)) => {
                shared.upload_failed("FindMissingBlobs", &e);
                return round;
            }
            Err(_) => {
                shared.upload_timed_out("FindMissingBlobs");
                return round;
            }
        }
    };
    present.extend(wanted.iter().filter(|d| !missing.contains(d)));

    // 2. Upload them, small ones batched.
    let mut seen = HashSet::new();
    let mut small: Vec<Vec<(Digest, PathBuf)>> = Vec::new();
    let mut small_bytes = 0;
    let mut large = Vec::new();
    for (job, _) in &round {
        let d = job.digest();
        if !missing.contains(&d) || !seen.insert(d) {
            continue;
        }
        if d.size > client::BATCH_BLOB_MAX {
            large.push((d, job.path.clone()));
            continue;
        }
        if small.is_empty() || small_bytes + d.size > BATCH_BYTES {
            small.push(Vec::new());
            small_bytes = 0;
        }
        small_bytes += d.size;
        small.last_mut().expect("just pushed").push((d, job.path.clone()));
    }
    let uploads = small.into_iter().map(Upload::Batch).chain(large.into_iter().map(|(d, p)| Upload::Stream(d, p)));
    let mut failed_blobs = HashSet::new();
    let mut failures = 0;
    let mut uploading =
        futures::stream::iter(uploads.map(|u| u.run(client, shared))).buffer_unordered(BLOB_CONCURRENCY);
    while let Some((uploaded, failed)) = uploading.next().await {
        present.extend(uploaded);
        if !failed.is_empty() {
            failures += 1;
            failed_blobs.extend(failed);
        }
    }
    drop(uploading);

    // 3. The entries whose blobs are there. Blobs whose local file vanished
    // (trimmed) are neither present nor failed: those entries are dropped.
    let mut retry = Vec::new();
    let mut ready = Vec::new();
    for (job, attempts) in round {
        let d = job.digest();
        if d.size == 0 || present.contains(&d) {
            ready.push((job, attempts));
        } else if failed_blobs.contains(&d) {
            retry.push((job, attempts));
        }
    }
    let updates = ready.into_iter().map(|(job, attempts)| async move {
        let key = mapping::action_key(&job.action);
        let result = mapping::entry_result(&job.entry);
        let outcome = timeout(CALL_TIMEOUT, client.update_action_result(&key, result)).await;
        (job, attempts, outcome)
    });
    let mut updates = futures::stream::iter(updates).buffer_unordered(AC_CONCURRENCY);
    while let Some((job, attempts, outcome)) = updates.next().await {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failures += 1;
                shared.upload_failed("UpdateActionResult", &e);
                retry.push((job, attempts));
            }
            Err(_) => {
                failures += 1;
                shared.upload_timed_out("UpdateActionResult");
                retry.push((job, attempts));
            }
        }
    }
    if failures == 0 {
        shared.upload_health.ok();
    }
    retry
}

/// One blob upload call.
enum Upload {
    /// Small blobs, read into memory just before the call.
    Batch(Vec<(Digest, PathBuf)>),
    /// One large blob, streamed from its file.
    Stream(Digest, PathBuf),
}

impl Upload {
    /// Runs the call; returns the digests uploaded and the ones that failed
    /// (to retry). A file that vanished (trimmed) is in neither: that entry
    /// is dropped, not retried.
    async fn run(self, client: &Client, shared: &Shared) -> (Vec<Digest>, Vec<Digest>) {
        match self {
            Upload::Batch(items) => {
                let asked: Vec<Digest> = items.iter().map(|(d, _)| *d).collect();
                let blobs = match tokio::task::spawn_blocking(move || read_all(items)).await {
                    Ok(blobs) => blobs,
                    Err(_) => return (Vec::new(), asked),
                };
                let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
                let bytes = digests.iter().map(|d| d.size).sum();
                let call = timeout(CALL_TIMEOUT + download_allowance(bytes), client.batch_upload_each(&blobs));
                let each = match call.await {
                    Ok(Ok(each)) => each,
                    Ok(Err(e)) => {
                        shared.upload_failed("BatchUpdateBlobs", &e);
                        return (Vec::new(), digests);
                    }
                    Err(_) => {
                        shared.upload_timed_out("BatchUpdateBlobs");
                        return (Vec::new(), digests);
                    }
                };
                let (mut uploaded, mut failed) = (Vec::new(), Vec::new());
                for (d, result) in digests.into_iter().zip(each) {
                    match result {
                        Ok(()) => uploaded.push(d),
                        Err(e) => {
                            shared.upload_failed("BatchUpdateBlobs", &e);
                            failed.push(d);
                        }
                    }
                }
                (uploaded, failed)
            }
            Upload::Stream(d, path) => {
                let call = timeout(CALL_TIMEOUT + download_allowance(d.size), client.write_file(&d, &path));
                match call.await {
                    Ok(Ok(())) => (vec![d], Vec::new()),
                    // Local trouble (the file is gone): skip it.
                    Ok(Err(ClientError::Io { .. })) => (Vec::new(), Vec::new()),
                    Ok(Err(e)) => {
                        shared.upload_failed("ByteStream.Write", &e);
                        (Vec::new(), vec![d])
                    }
                    Err(_) => {
                        shared.upload_timed_out("ByteStream.Write");
                        (Vec::new(), vec![d])
                    }
                }
            }
        }
    }
}

/// Reads the files of a batch, leaving out the ones that are gone or changed size.
fn read_all(items: Vec<(Digest, PathBuf)>) -> Vec<(Digest, Bytes)> {
    items
        .into_iter()
        .filter_map(|(d, path)| match std::fs::read(&path) {
            Ok(data) if data.len() as u64 == d.size => Some((d, Bytes::from(data))),
            _ => None,
        })
        .collect()
}
