//! Prefetching: hiding the remote's latency from go.
//!
//! go keeps only `-p`+1 requests in flight, so a remote round trip per get
//! is paid almost serially: a warm `go build std` asks ~1,100 gets, which at
//! 10 ms per round trip (two per remote hit: lookup, then blob) is several
//! seconds on top of a 0.3 s build. Asking faster is not possible, so cairn
//! asks earlier: it remembers which entries a build used and fetches them in
//! bulk the next time, before go asks.
//!
//! - **Recording** (`manifest::Recorder`): every get (hit or miss) and every put of
//!   this go command, in the order go asked, with the entry it ended with.
//! - **Storing**: at exit ([`Prefetch::store_manifest`], inside the finish
//!   bound), the recorded entries are merged into a *manifest* blob in the
//!   CAS, named by an ActionCache entry under keys describing the build
//!   ([`super::context::BuildContext`]: module, directory, go subcommand,
//!   output-changing flags, go version, GOOS/GOARCH, ...; then broader
//!   fallback keys). Skipped when nothing changed. See `manifest` for the
//!   merging, `mapping` for the format.
//! - **Prefetching** (this file's task, started with the process): fetch the
//!   manifest of the most specific key that has one (one lookup and one
//!   read per key tried), then, in the manifest's order,
//!   every output not already local: small ones [`BATCH_BYTES`] per
//!   BatchReadBlobs, large ones by ByteStream (zstd-compressed from
//!   `shared::COMPRESSED_MIN` up when the server offers it, learnt from its
//!   capabilities while the manifest loads; each call decides as it is
//!   issued, so a late answer still counts for the calls after it), [`CONCURRENCY`] calls at a
//!   time, each verified by the client and committed to the local tier
//!   together with the entries naming it. A get for an entry the manifest
//!   names needs no lookup: it waits for the prefetcher's download of that
//!   output if it is in flight, or fetches just that output itself.
//!
//! The manifest records (action → output, size, time), not just action IDs:
//! that saves one ActionCache lookup per entry, and it is safe, since an
//! output is verified against its digest like any other, and go accepts any
//! output once stored for an action (entries are results, not promises).
//! A stale manifest costs only wasted downloads; a get falls back to the
//! ActionCache when the manifest's output is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::context::BuildContext;
use super::local::LocalStore;
pub(super) use super::manifest::Recorder;
use super::manifest::{self, Plan};
use super::mapping::{self, RemoteEntry};
use super::protocol::{ActionId, OutputId};
use super::remote::RemoteConfig;
use super::shared::{download_allowance, Claim, Shared};
use crate::client::{self, ClientError};
use crate::digest::Digest;

/// Bytes per BatchReadBlobs call. Smaller calls let the first entries land
/// sooner; larger ones mean fewer calls.
pub const BATCH_BYTES: u64 = 2 << 20;

/// Prefetch calls in flight. Enough to cover a 10 ms round trip at a few
/// hundred MB/s even when compressed outputs go one per call (a few hundred
/// calls for `go build std`), few enough not to flood a shared server.
pub const CONCURRENCY: usize = 16;

/// Least time a prefetch call is given (plus [`download_allowance`] of the
/// bytes in flight): it is background work, and a timeout stops prefetching.
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The prefetch state of one process.
pub(super) struct Prefetch {
    pub recorder: Recorder,
    /// ActionCache keys of this build's manifest, most specific first (see
    /// `BuildContext::descriptions`); empty when prefetching is off.
    keys: Vec<Digest>,
    /// The manifest this run started from, once the start-up fetch is done.
    manifest: watch::Receiver<Loaded>,
}

#[derive(Clone)]
enum Loaded {
    Pending,
    /// `None`: there is none under any key, or it could not be fetched.
    /// Else which key it was found under, and the manifest.
    Done(Option<(usize, Arc<Plan>)>),
}

/// Starts prefetching (unless `--prefetch=false`): works out the keys, then
/// fetches the manifest and its outputs in a task.
pub(super) fn start(config: &RemoteConfig, shared: Arc<Shared>) -> (Arc<Prefetch>, Option<JoinHandle<()>>) {
    if !config.prefetch {
        let (_, manifest) = watch::channel(Loaded::Done(None));
        let off = Prefetch { recorder: Recorder::new(false), keys: Vec::new(), manifest };
        return (Arc::new(off), None);
    }
    let context = BuildContext::of_this_process(config.prefetch_key.as_deref());
    let keys: Vec<Digest> = context.descriptions().iter().map(|d| mapping::prefetch_key(d)).collect();
    tracing::debug!(?keys, ?context, "prefetch keys");
    let (tx, manifest) = watch::channel(Loaded::Pending);
    let prefetch = Prefetch { recorder: Recorder::new(true), keys: keys.clone(), manifest };
    (Arc::new(prefetch), Some(tokio::spawn(run(shared, keys, tx))))
}

impl Prefetch {
    /// The manifest's entry for `action`, waiting (until `deadline`) for the
    /// manifest if it is still being fetched.
    pub async fn planned(&self, action: &ActionId, deadline: Instant) -> Option<RemoteEntry> {
        if self.keys.is_empty() {
            return None;
        }
        let mut rx = self.manifest.clone();
        let plan = {
            let loaded = timeout_at(deadline, rx.wait_for(|l| matches!(l, Loaded::Done(_)))).await.ok()?.ok()?;
            match &*loaded {
                Loaded::Done(Some((_, plan))) => plan.clone(),
                _ => return None,
            }
        };
        plan.by_action.get(action).copied()
    }

    /// Stores what this run used, merged into the manifest under each key
    /// (see `manifest`). Keys more specific than the one the run started
    /// from had no manifest then; broader ones are fetched to merge into.
    /// Called by `finish`, which bounds it.
    pub async fn store_manifest(&self, shared: &Shared) {
        let entries = self.recorder.snapshot();
        if self.keys.is_empty() || entries.is_empty() {
            return;
        }
        if !shared.health.usable() || !shared.upload_health.usable() || shared.uploads_refused() {
            return;
        }
        let found = match &*self.manifest.borrow() {
            Loaded::Done(Some((i, plan))) => Some((*i, plan.clone())),
            _ => None,
        };
        let entries = &entries;
        let stores = self.keys.iter().enumerate().map(|(i, key)| {
            let found = found.clone();
            async move {
                let previous = match found {
                    Some((at, plan)) if at == i => Some(plan),
                    Some((at, _)) if at > i => None,
                    _ => manifest::load(shared, key).await.map(Arc::new),
                };
                manifest::store(shared, *key, entries, previous.as_deref()).await;
            }
        });
        futures::future::join_all(stores).await;
    }
}

/// The prefetch task: the manifest (under the most specific key that has
/// one), then its outputs.
async fn run(shared: Arc<Shared>, keys: Vec<Digest>, tx: watch::Sender<Loaded>) {
    let started = Instant::now();
    let find = async {
        for (i, key) in keys.iter().enumerate() {
            if !shared.health.usable() {
                break;
            }
            if let Some(plan) = manifest::load(&shared, key).await {
                return Some((i, Arc::new(plan)));
            }
        }
        None
    };
    // How to group the outputs depends on whether the server compresses:
    // learn that while the manifest is on its way (both take a round trip),
    // waiting at most the lookup timeout. An answer that comes later still
    // counts for every call issued after it (`group` is lazy).
    let (found, ()) = tokio::join!(find, shared.zstd_known(started + shared.timeout));
    let _ = tx.send(Loaded::Done(found.clone()));
    let manifest_at = started.elapsed();
    let Some((fallback, plan)) = found else { return };
    let (s, p) = (shared.clone(), plan.clone());
    let wanted = tokio::task::spawn_blocking(move || sort_out(&s.local, &p.order)).await.unwrap_or_default();
    let (count, bytes) = (wanted.len(), wanted.iter().map(|w| w.size).sum::<u64>());
    let calls = group(wanted, |size| shared.compresses(size)).map(|g| fetch_group(&shared, g));
    let mut calls = futures::stream::iter(calls).buffer_unordered(CONCURRENCY);
    let mut complete = true;
    while let Some(ok) = calls.next().await {
        if !ok {
            complete = false;
            break; // the remote is failing: leave the rest to go's own gets
        }
    }
    tracing::debug!(
        fallback,
        entries = plan.order.len(),
        outputs = count,
        bytes,
        complete,
        zstd = *shared.zstd.borrow() == Some(true),
        ?manifest_at,
        elapsed = ?started.elapsed(),
        "prefetch done"
    );
}

/// An output to fetch, and the entries that name it.
#[derive(Debug)]
struct Wanted {
    output: OutputId,
    size: u64,
    actions: Vec<(ActionId, i64)>,
}

/// Links the manifest's entries whose outputs are already local, and lists
/// the outputs to fetch, in first-use order. One or two `stat`s per entry.
fn sort_out(local: &LocalStore, order: &[(ActionId, RemoteEntry)]) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut index: HashMap<OutputId, usize> = HashMap::new();
    for (action, e) in order {
        if e.size > local.max_size() || local.has_action(action) {
            continue;
        }
        if let Some(&i) = index.get(&e.output) {
            wanted[i].actions.push((*action, e.time_nanos));
        } else if e.size == 0 && e.output == OutputId::EMPTY {
            // Nothing to fetch: every CAS holds the empty blob implicitly.
            if local.install_bytes(&e.output, b"").is_ok() {
                let _ = local.link(action, &e.output, 0, e.time_nanos);
            }
        } else if local.has_object(&e.output, e.size) {
            let _ = local.link(action, &e.output, e.size, e.time_nanos);
        } else {
            index.insert(e.output, wanted.len());
            wanted.push(Wanted { output: e.output, size: e.size, actions: vec![(*action, e.time_nanos)] });
        }
    }
    wanted
}

/// Splits the outputs into calls: small ones together up to [`BATCH_BYTES`],
/// large ones alone, and those `alone` picks (fetched compressed) alone too,
/// keeping the order. Lazy: each call is formed as it is issued, so `alone`
/// is asked then, and calls issued after the server's capabilities arrive
/// follow them (the start-up answer may come after the first calls).
fn group(wanted: Vec<Wanted>, alone: impl Fn(u64) -> bool) -> impl Iterator<Item = Vec<Wanted>> {
    let mut rest = wanted.into_iter();
    let mut small: Vec<Wanted> = Vec::new();
    let mut small_bytes = 0;
    std::iter::from_fn(move || loop {
        let Some(w) = rest.next() else {
            return (!small.is_empty()).then(|| std::mem::take(&mut small));
        };
        if w.size > client::BATCH_BLOB_MAX || alone(w.size) {
            return Some(vec![w]);
        }
        if !small.is_empty() && small_bytes + w.size > BATCH_BYTES {
            small_bytes = w.size;
            return Some(std::mem::replace(&mut small, vec![w]));
        }
        small_bytes += w.size;
        small.push(w);
    })
}

/// Fetches one group's outputs (those no get is fetching already) and
/// commits them with their entries. False if prefetching should stop (the
/// remote failed, or is too slow to be worth it).
///
/// The call's deadline is sized by all the bytes prefetching has in flight
/// (`Shared::in_flight`, gets' downloads included), not just this call's: [`CONCURRENCY`] calls share one
/// link. A prefetch timeout does not count against the remote's health: it
/// only says the link is slower than hoped, and go's own gets (on their own
/// connection) may still be served in time.
async fn fetch_group(shared: &Shared, group: Vec<Wanted>) -> bool {
    let local = &shared.local;
    let mut mine = Vec::new();
    for w in group {
        let Ok(claim) = shared.downloads.claim(w.output) else {
            continue; // a get is on it; go's gets link the other entries
        };
        if local.has_object(&w.output, w.size) {
            link_all(local, &w);
        } else {
            mine.push((w, claim));
        }
    }
    if mine.is_empty() {
        return true;
    }
    if !shared.health.usable() {
        return false;
    }
    let bytes: u64 = mine.iter().map(|(w, _)| w.size).sum();
    let (others, counted) = shared.downloading(bytes);
    let deadline = Instant::now() + shared.timeout.max(MIN_CALL_TIMEOUT) + download_allowance(bytes + others);
    let fetched = fetch_outputs(shared, mine, deadline).await;
    drop(counted);
    match fetched {
        Ok(()) => {
            shared.health.ok();
            true
        }
        Err(Some(e)) => {
            shared.failed("prefetching", &e);
            !matches!(e, ClientError::Rpc { .. } | ClientError::Connect { .. })
        }
        Err(None) => {
            tracing::debug!(bytes, others, "a prefetch call timed out; leaving the rest to go's gets");
            false
        }
    }
}

/// Downloads `mine` and commits it, releasing each output's claim the
/// moment that output is installed (a get waiting for it goes on at once,
/// not after the whole group). The deadline bounds the network calls, not
/// the local writes (a slow disk is not the server's fault). `Err(None)`:
/// timed out.
async fn fetch_outputs(
    shared: &Shared,
    mine: Vec<(Wanted, Claim)>,
    deadline: Instant,
) -> Result<(), Option<ClientError>> {
    let local_err = |source| {
        Some(ClientError::Io { context: format!("prefetching into {}", shared.local.root().display()), source })
    };
    let client = &shared.prefetch_client;
    if let [(w, _)] = mine.as_slice() {
        let compressed = shared.compresses(w.size);
        if w.size > client::BATCH_BLOB_MAX || compressed {
            let mut temp = shared.local.temp_file().map_err(local_err)?;
            drop(temp.take_file());
            let digest = mapping::output_digest(&w.output, w.size);
            let read = if compressed {
                timeout_at(deadline, client.read_to_file_zstd(&digest, temp.path())).await
            } else {
                timeout_at(deadline, client.read_to_file(&digest, temp.path())).await
            };
            if read.map_err(|_| None)?.map_err(Some)? {
                shared.local.install_object(&w.output, temp).map_err(local_err)?;
                link_all(&shared.local, w);
            }
            return Ok(());
        }
    }
    let digests: Vec<Digest> = mine.iter().map(|(w, _)| mapping::output_digest(&w.output, w.size)).collect();
    let each = timeout_at(deadline, client.batch_read_each(&digests)).await.map_err(|_| None)?.map_err(Some)?;
    // Each blob on its own: a corrupt or refused one is left to go's get
    // (which looks it up afresh), the rest of the batch is still used.
    let mut blobs = Vec::with_capacity(each.len());
    for (d, blob) in digests.iter().zip(each) {
        match blob {
            Ok(data) => blobs.push(data),
            Err(e @ ClientError::Corrupt { .. }) => {
                shared.failed("prefetching", &e);
                blobs.push(None);
            }
            Err(e) => {
                tracing::debug!(%d, "prefetching: the server refused one blob: {e}");
                blobs.push(None);
            }
        }
    }
    // Many small files and entries: off the async threads.
    let local = shared.local.clone();
    tokio::task::spawn_blocking(move || {
        for ((w, claim), blob) in mine.into_iter().zip(blobs) {
            if let Some(data) = blob {
                local.install_bytes(&w.output, &data)?;
                link_all(&local, &w);
            }
            drop(claim); // wakes gets waiting for this output
        }
        Ok(())
    })
    .await
    .map_err(|e| local_err(std::io::Error::other(e)))?
    .map_err(local_err)
}

fn link_all(local: &LocalStore, w: &Wanted) {
    for (action, time) in &w.actions {
        let _ = local.link(action, &w.output, w.size, *time);
    }
}

#[cfg(test)]
#[path = "prefetch_tests.rs"]
mod tests;
