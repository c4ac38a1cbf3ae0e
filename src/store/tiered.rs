//! The local store in front of an optional [`Tier`] (an upstream REAPI
//! server, an object-store bucket): what the front ends call for reads that
//! may miss locally. The local store stays the fast tier and the only one
//! anything is served from: on a local miss the blob is fetched from the
//! tier and streamed into a local [`BlobWriter`], which verifies its hash
//! (wrong bytes from the tier are a miss, never a wrong hit), then served
//! from the local store like any hit. ActionResults from the tier are
//! completed (every blob they name fetched) before they are stored locally.
//!
//! A tier that is slow or down never turns into an error: reads degrade to
//! the local answer ([`Link`] says when to stop asking), and writes wait in
//! the persistent queue ([`super::outbox`], drained by [`super::drain`]).
//! Fills are single-flight: requests for a blob already being fetched wait
//! for that fetch, so a burst of misses on one blob reads the tier once.
//! Local hits are told to the tier as uses ([`Tier::note_used`]: a bounded
//! bucket's LRU must see what warm nodes serve without asking it).
//! Without a tier every method is the local store's answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use prost::Message;

use super::complete;
pub use super::link::TierStats;
use super::link::{Link, Op};
use super::tier::{Chunks, Tier, Used};
use super::{BlobWriter, Store, INLINE_MAX};
use crate::config::TierSettings;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi;
use crate::wire::refs;

/// Digests per FindMissingBlobs call to the tier.
const FIND_MISSING_CHUNK: usize = 1000;
/// Rounds of fetching an ActionResult's blobs: each round can only see one
/// more level of Directories, so this bounds the depth completed.
const MAX_FILL_ROUNDS: usize = 64;
/// Bytes of Directory messages fetched for one GetTree.
const MAX_TREE_FILL_BYTES: u64 = 64 << 20;
/// Bytes of a large blob gathered before one blocking write to its spool.
const SPOOL_BATCH: usize = 1 << 20;

/// The local store and, optionally, a tier behind it; cheap to clone.
#[derive(Clone)]
pub struct Tiered {
    store: Store,
    link: Option<Arc<Link>>,
    /// Tier calls one request may have in flight at once.
    concurrency: usize,
    /// Fills under way, shared by every request for the same blob.
    flights: Arc<Mutex<HashMap<Digest, Flight>>>,
}

/// One fill under way: true once the blob is in the local store.
type Flight = Shared<BoxFuture<'static, bool>>;

/// Runs blocking store work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("store task failed: {e}")))?
}

impl Tiered {
    /// The local store alone.
    pub fn local(store: Store) -> Tiered {
        Tiered { store, link: None, concurrency: 1, flights: Default::default() }
    }

    /// The local store in front of `link`.
    pub fn new(store: Store, link: Arc<Link>, settings: &TierSettings) -> Tiered {
        Tiered::with_link(store, link, settings.concurrency)
    }

    /// The local store in front of `link`, `concurrency` tier calls at once.
    pub(super) fn with_link(store: Store, link: Arc<Link>, concurrency: usize) -> Tiered {
        Tiered { store, link: Some(link), concurrency: concurrency.max(1), flights: Default::default() }
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Calls the tier made to the service behind it, by kind (empty without
    /// a tier, or with one that doesn't count them).
    pub fn tier_calls(&self) -> Vec<(&'static str, u64)> {
        self.link.as_ref().map(|l| l.calls()).unwrap_or_default()
    }

    /// The tier's figures (None without a tier).
    pub fn stats(&self) -> Option<TierStats> {
        let link = self.link.as_ref()?;
        Some(link.stats(self.store.queue_stats().unwrap_or_default()))
    }

    /// Those of `digests` neither the local store nor the tier holds, in
    /// request order. The tier is asked only about the locally missing
    /// ones, in chunks with bounded concurrency; what it has not answered
    /// by the deadline is reported missing (safe: the client uploads it).
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let local = self.store.find_missing(digests)?;
        let Some(link) = &self.link else { return Ok(local) };
        link.note_used(Used::Blobs(&present(digests, &local)));
        if local.is_empty() || !link.available() {
            return Ok(local);
        }
        let deadline = tokio::time::Instant::now() + link.timeout();
        let chunks: Vec<Vec<Digest>> = local.chunks(FIND_MISSING_CHUNK).map(<[Digest]>::to_vec).collect();
        let answers: Vec<(Vec<Digest>, Option<Vec<Digest>>)> = futures::stream::iter(chunks)
            .map(|chunk| {
                let link = link.clone();
                async move {
                    let answer = tokio::time::timeout_at(deadline, link.find_missing(&chunk)).await;
                    (chunk, answer.ok().and_then(|r| r.ok()))
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut missing = HashSet::new();
        for (chunk, answer) in answers {
            missing.extend(answer.unwrap_or(chunk));
        }
        Ok(local.into_iter().filter(|d| missing.contains(d)).collect())
    }

    /// Before a local read: fetches from the tier those of `digests` the
    /// local store lacks, so the read that follows finds them. Nothing
    /// without a tier; a tier failure leaves them missing (a local miss).
    /// The ones the local store holds are about to be served from it: they
    /// count as uses of the tier's copies (see [`Tier::note_used`]).
    pub async fn prefetch(&self, digests: &[Digest]) -> Result<()> {
        let Some(link) = &self.link else { return Ok(()) };
        let missing = self.store.find_missing(digests)?;
        link.note_used(Used::Blobs(&present(digests, &missing)));
        self.fill_missing(missing).await?;
        Ok(())
    }

    /// After a local ActionCache hit: the result and every blob it names
    /// (`named`, as the completeness check listed them) count as uses of the
    /// tier's copies, so the tier keeps a result warm nodes serve complete.
    pub fn note_action_hit(&self, instance: &str, action: &Digest, named: &[Digest]) {
        if let Some(link) = &self.link {
            link.note_used(Used::Action { instance, action });
            link.note_used(Used::Blobs(named));
        }
    }

    /// Blobs served or found present in the local store by a path that
    /// doesn't come through here (the HTTP cache, which looks blobs up by
    /// hash alone): uses of the tier's copies.
    pub fn note_used(&self, blobs: &[Digest]) {
        if let Some(link) = &self.link {
            link.note_used(Used::Blobs(blobs));
        }
    }

    /// Uses the tier dropped for want of room (0 without a tier).
    pub fn uses_dropped(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.uses_dropped())
    }

    /// At a graceful stop: lets the tier hand over what it keeps in memory
    /// (a bucket's pending use log), bounded by the tier timeout.
    pub async fn finish(&self) {
        if let Some(link) = &self.link {
            link.finish().await;
        }
    }

    /// Fetches from the tier those of `digests` the local store lacks;
    /// returns the ones still missing afterwards. Never fails: a tier error
    /// leaves the blob missing. Not a use: the drain fills through here too.
    pub(super) async fn fill(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let missing = self.store.find_missing(digests)?;
        self.fill_missing(missing).await
    }

    /// Fetches `missing` (locally absent) from the tier; returns the ones
    /// still missing afterwards.
    async fn fill_missing(&self, missing: Vec<Digest>) -> Result<Vec<Digest>> {
        if missing.is_empty() || self.link.is_none() {
            return Ok(missing);
        }
        let filled: Vec<(Digest, bool)> = futures::stream::iter(missing)
            .map(|d| {
                let this = self.clone();
                async move { (d, this.fill_one(d).await) }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        Ok(filled.into_iter().filter(|(_, ok)| !ok).map(|(d, _)| d).collect())
    }

    /// Fetches one blob into the local store, or waits for the fetch of it
    /// already under way; true when it is there now. The fetch runs as its
    /// own task, so it completes (and leaves the map) even if every request
    /// waiting for it goes away.
    async fn fill_one(&self, d: Digest) -> bool {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&d) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    // Its removal takes the lock held here, so it can't run
                    // before the insert below.
                    let task = tokio::spawn(async move {
                        let ok = this.fetch_one(d).await;
                        this.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&d);
                        ok
                    });
                    let f = task.map(|r| r.unwrap_or(false)).boxed().shared();
                    flights.insert(d, f.clone());
                    f
                }
            }
        };
        flight.await
    }

    /// Fetches one blob from the tier into the local store; true when it is there now.
    async fn fetch_one(&self, d: Digest) -> bool {
        let Some(link) = &self.link else { return false };
        if !link.available() {
            return false;
        }
        let chunks = match link.read(&d).await {
            Ok(Some(chunks)) => chunks,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(digest = %d, error = %e, "reading a blob from the tier failed; a miss");
                return false;
            }
        };
        match self.spool(d, chunks).await {
            Ok(()) => {
                link.count_fill();
                true
            }
            Err(Error::InvalidArgument(why)) => {
                // The local writer refused the bytes: the tier holds (or
                // sent) something that is not this blob.
                link.count_error(Op::Read);
                tracing::warn!(tier = %link.name(), digest = %d, "the tier's copy is wrong ({why}); treated as a miss");
                false
            }
            Err(e) => {
                tracing::debug!(digest = %d, error = %e, "filling a blob from the tier failed; a miss");
                false
            }
        }
    }

    /// Streams `chunks` into a local writer that verifies and commits them.
    /// A large blob goes to its spool file a batch at a time, never whole.
    async fn spool(&self, d: Digest, mut chunks: Chunks) -> Result<()> {
        let store = self.store.clone();
        let mut w = blocking(move || store.begin_write(d).map(BlobWriter::from_tier)).await?;
        let mut pending: Vec<bytes::Bytes> = Vec::new();
        let mut pending_len = 0usize;
        loop {
            let next = chunks.next().await.transpose()?;
            let end = next.is_none();
            if let Some(chunk) = next {
                pending_len += chunk.len();
                pending.push(chunk);
            }
            if d.size <= INLINE_MAX && !end {
                continue; // Spooled in memory: one blocking hop at the end.
            }
            if pending_len >= SPOOL_BATCH || end {
                let batch = std::mem::take(&mut pending);
                pending_len = 0;
                w = blocking(move || {
                    for chunk in &batch {
                        w.write(chunk)?;
                    }
                    Ok(w)
                })
                .await?;
            }
            if end {
                return blocking(move || w.commit()).await;
            }
        }
    }

    /// Makes the local ActionCache able to answer `action` from the tier:
    /// completes the local entry's missing blobs from the tier, or else
    /// fetches the tier's entry and every blob it names and stores it
    /// locally. True when a fresh local lookup is worth making.
    pub async fn fill_action(&self, instance: &str, action: &Digest) -> Result<bool> {
        let Some(link) = &self.link else { return Ok(false) };
        let store = self.store.clone();
        let (i, a) = (instance.to_string(), *action);
        if let Some(bytes) = blocking(move || store.get_action(&i, &a)).await? {
            if let Ok(result) = reapi::ActionResult::decode(bytes.as_slice()) {
                if self.complete(action.function, &result).await? {
                    return Ok(true);
                }
            }
        }
        if !link.available() {
            return Ok(false);
        }
        let bytes = match link.get_action(instance, action).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::debug!(action = %action, error = %e, "asking the tier for an action result failed; a miss");
                return Ok(false);
            }
        };
        let result = match reapi::ActionResult::decode(bytes.as_ref()) {
            Ok(r) if refs::ResultRefs::parse(action.function, &r).is_ok() => r,
            _ => {
                link.count_error(Op::GetAction);
                tracing::warn!(tier = %link.name(), action = %action, "the tier's action result is malformed; a miss");
                return Ok(false);
            }
        };
        if !self.complete(action.function, &result).await? {
            tracing::debug!(action = %action, "the tier's action result names blobs it cannot supply; a miss");
            return Ok(false);
        }
        let store = self.store.clone();
        let (i, a) = (instance.to_string(), *action);
        blocking(move || store.put_action_from_tier(&i, &a, &bytes)).await?;
        link.count_fill();
        Ok(true)
    }

    /// Fetches what `result` names until the local store holds all of it;
    /// true when it does. Each round sees one level further into the output
    /// directories (a Tree's files once the Tree is local).
    async fn complete(&self, function: DigestFunction, result: &reapi::ActionResult) -> Result<bool> {
        for _ in 0..MAX_FILL_ROUNDS {
            let (store, r) = (self.store.clone(), result.clone());
            let named = blocking(move || complete::named(&store, function, &r)).await?;
            if !named.broken.is_empty() {
                return Ok(false);
            }
            let missing = self.store.find_missing(&named.blobs)?;
            if missing.is_empty() {
                return Ok(true);
            }
            if !self.fill(&missing).await?.is_empty() {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Fetches the Directory hierarchy under `root` that the local store
    /// lacks (for GetTree), level by level, up to [`MAX_TREE_FILL_BYTES`].
    pub async fn fill_directories(&self, root: Digest) -> Result<()> {
        if self.link.is_none() {
            return Ok(());
        }
        let mut frontier = vec![root];
        let mut seen = HashSet::from([root]);
        let mut budget = MAX_TREE_FILL_BYTES;
        while !frontier.is_empty() {
            self.prefetch(&frontier).await?;
            let store = self.store.clone();
            let level = std::mem::take(&mut frontier);
            let children = blocking(move || {
                let mut children = Vec::new();
                for d in level {
                    if let Some(bytes) = store.read_all(&d)? {
                        if let Ok(dir) = refs::directory_refs(d.function, &bytes) {
                            children.extend(dir.directories);
                        }
                    }
                }
                Ok(children)
            })
            .await?;
            for c in children {
                if seen.insert(c) && c.size <= budget {
                    budget -= c.size;
                    frontier.push(c);
                }
            }
        }
        Ok(())
    }
}

/// Those of `digests` not in `missing`, which lists the missing ones in
/// request order (what [`Store::find_missing`] returns): one merge pass.
fn present(digests: &[Digest], missing: &[Digest]) -> Vec<Digest> {
    let mut missing = missing.iter().peekable();
    let mut out = Vec::with_capacity(digests.len());
    for d in digests {
        if missing.peek() == Some(&d) {
            missing.next();
        } else {
            out.push(*d);
        }
    }
    out
}

/// The tier `settings` configure, if any: one function with one arm per
/// kind of tier. A node has at most one tier (a proxy of an upstream, or a
/// node over a shared bucket); naming two is refused at start-up.
pub fn open_tier(settings: &TierSettings) -> Result<Option<Arc<dyn Tier>>> {
    // Refused before either is opened: the bucket starts background work.
    match (&settings.upstream, &settings.object_store) {
        (Some(_), Some(_)) => Err(Error::InvalidArgument(
            "name one tier: --upstream (a proxy of another cache) or --object-store (a shared bucket), not both".into(),
        )),
        (Some(url), None) => Ok(Some(Arc::new(super::upstream::Upstream::open(url, settings)?))),
        (None, Some(object_store)) => Ok(Some(super::bucket::Bucket::start(object_store)?)),
        (None, None) => Ok(None),
    }
}

/// Opens the tier `settings` name behind `store`: attaches the write-behind
/// queue and starts its drain. Without a tier: the local store alone, no
/// queue, no task. Drop the returned [`super::drain::Drain`] to stop the drain.
pub fn start(store: &Store, settings: &TierSettings) -> Result<(Tiered, Option<super::drain::Drain>)> {
    let Some(tier) = open_tier(settings)? else { return Ok((Tiered::local(store.clone()), None)) };
    if settings.timeout.is_zero() {
        return Err(Error::InvalidArgument("--tier-timeout must be above 0 (e.g. 5s)".into()));
    }
    let link = Arc::new(Link::new(tier, settings.timeout));
    store.attach_outbox(super::QueueLimits {
        max_entries: settings.queue_max_entries,
        max_bytes: settings.queue_max_size,
    })?;
    let drain = super::drain::start(store.clone(), link.clone(), settings.concurrency.max(1));
    tracing::info!(tier = %link.name(), "misses are filled from the tier; writes go to it behind, from a persistent queue");
    Ok((Tiered::new(store.clone(), link, settings), Some(drain)))
}

#[cfg(test)]
#[path = "tiered_tests.rs"]
mod tests;
