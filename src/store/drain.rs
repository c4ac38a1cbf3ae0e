//! The write-behind drain: one background task that empties the persistent
//! queue ([`super::outbox`]) into the tier, oldest entries first. Blobs
//! stream from the local store (large ones from their file, a chunk at a
//! time); a blob the tier already holds is skipped. An ActionResult is
//! written only once every blob it names is in the tier: the drain asks the
//! tier which are missing and uploads those first, whether or not they were
//! queued; if one is gone from the local store too, the result is dropped
//! (never written incomplete). While the tier is unreachable nothing is
//! removed and the drain retries with back-off, catching up when it returns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;

use super::complete;
use super::link::Link;
use super::outbox::{Entry, CF_OUTBOX};
use super::tier::Body;
use super::tiered::{blocking, Tiered};
use super::{Store, INLINE_MAX};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::reapi;

/// Entries taken from the queue per pass.
const BATCH: usize = 256;
/// First and longest wait before retrying an unreachable tier.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Rounds of fetching a queued result's Trees and Directories from the tier.
const MAX_TREE_ROUNDS: usize = 64;
/// Bytes per chunk streamed from a blob file to the tier.
const CHUNK: usize = 1 << 20;

/// The running drain; dropping it stops the task (the queue is persistent,
/// so nothing is lost: the next start picks up where this one stopped).
pub struct Drain(Option<tokio::task::JoinHandle<()>>);

impl Drain {
    /// Stops the task and waits until it has let go of the store.
    pub async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Starts draining `store`'s queue into `link`, with at most `concurrency`
/// uploads at once.
pub(super) fn start(store: Store, link: Arc<Link>, concurrency: usize) -> Drain {
    Drain(Some(tokio::spawn(run(store, link, concurrency))))
}

/// What one pass achieved.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// The queue was empty.
    Idle,
    /// Entries were written or given up on.
    Progress,
    /// The tier is unreachable; entries stay queued.
    Retry,
}

async fn run(store: Store, link: Arc<Link>, concurrency: usize) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match pass(&store, &link, concurrency).await {
            Ok(Pass::Progress) => backoff = BACKOFF_MIN,
            Ok(Pass::Idle) => {
                backoff = BACKOFF_MIN;
                let Some(q) = store.inner.outbox.get() else { return };
                // A permit left by an arrival since the peek wakes this at once.
                q.arrived.notified().await;
            }
            Ok(Pass::Retry) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => {
                tracing::error!(error = %e, "the write-behind queue cannot be read; retrying");
                tokio::time::sleep(BACKOFF_MAX).await;
            }
        }
    }
}

/// Takes the oldest entries, writes what it can, removes what is done.
pub(super) async fn pass(store: &Store, link: &Arc<Link>, concurrency: usize) -> Result<Pass> {
    let s = store.clone();
    let entries = blocking(move || {
        let inner = &s.inner;
        match inner.outbox.get() {
            Some(q) => q.peek(&inner.db, inner.cf(CF_OUTBOX), BATCH),
            None => Ok(Vec::new()),
        }
    })
    .await?;
    if entries.is_empty() {
        return Ok(Pass::Idle);
    }
    let mut done = Vec::new();
    let mut retry = false;
    let blobs: Vec<(u64, Digest)> =
        entries.iter().filter_map(|(seq, e)| if let Entry::Blob(d) = e { Some((*seq, *d)) } else { None }).collect();
    match write_blobs(store, link, &blobs, concurrency).await {
        Ok(written) => done.extend(written),
        Err(e) => {
            tracing::debug!(error = %e, "writing blobs behind failed; retrying later");
            retry = true;
        }
    }
    // Results go after this pass's blobs (and each checks its own blobs are
    // in the tier), several at once: one at a time, a queue of small builds'
    // results drains at one tier round trip each.
    let actions: Vec<(u64, String, Digest)> = entries
        .iter()
        .filter_map(|(seq, e)| match e {
            Entry::Action { instance, action } => Some((*seq, instance.clone(), *action)),
            Entry::Blob(_) => None,
        })
        .collect();
    if !retry && !actions.is_empty() {
        let outcomes: Vec<(u64, Digest, Result<()>)> = futures::stream::iter(actions)
            .map(|(seq, instance, action)| {
                let (store, link) = (store.clone(), link.clone());
                async move { (seq, action, write_action(&store, &link, &instance, &action, concurrency).await) }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (seq, action, outcome) in outcomes {
            match outcome {
                Ok(()) => done.push(seq),
                Err(Error::Unavailable(_)) => retry = true,
                Err(e) => {
                    tracing::warn!(action = %action, error = %e, "the tier refused an action result; dropped from the queue");
                    done.push(seq);
                }
            }
        }
    }
    if !done.is_empty() {
        let s = store.clone();
        blocking(move || {
            let inner = &s.inner;
            match inner.outbox.get() {
                Some(q) => q.remove(&inner.db, inner.cf(CF_OUTBOX), &done),
                None => Ok(()),
            }
        })
        .await?;
        return Ok(Pass::Progress);
    }
    Ok(if retry { Pass::Retry } else { Pass::Progress })
}

/// Writes the queued blobs the tier lacks; returns the sequence numbers
/// done with (written, already there, gone locally, or refused by the tier
/// for good). UNAVAILABLE from the tier fails the whole call.
async fn write_blobs(store: &Store, link: &Arc<Link>, blobs: &[(u64, Digest)], concurrency: usize) -> Result<Vec<u64>> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let digests: Vec<Digest> = blobs.iter().map(|(_, d)| *d).collect();
    let missing: HashSet<Digest> = link.find_missing(&digests).await?.into_iter().collect();
    let outcomes: Vec<(u64, Result<()>)> = futures::stream::iter(blobs.to_vec())
        .map(|(seq, d)| {
            let needed = missing.contains(&d);
            let (store, link) = (store.clone(), link.clone());
            async move { (seq, if needed { upload(store, link, d).await } else { Ok(()) }) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut done = Vec::new();
    let mut unavailable = None;
    for (seq, outcome) in outcomes {
        match outcome {
            Ok(()) => done.push(seq),
            Err(Error::NotFound(_)) => done.push(seq), // Evicted locally before it went out.
            Err(e @ Error::Unavailable(_)) => unavailable = Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "a blob could not be written behind; dropped from the queue");
                done.push(seq);
            }
        }
    }
    match unavailable {
        // Keep the failed ones queued, but let the written ones go.
        Some(e) if done.is_empty() => Err(e),
        _ => Ok(done),
    }
}

/// Streams one blob from the local store to the tier; NOT_FOUND when the
/// local store no longer has it.
async fn upload(store: Store, link: Arc<Link>, d: Digest) -> Result<()> {
    let s = store.clone();
    // Not a use: the upload must not make the blob look recently used locally.
    let reader = blocking(move || s.read_untouched(&d)).await?;
    let Some(reader) = reader else {
        return Err(Error::NotFound(format!("blob {d} left the local store before it was written behind")));
    };
    let body = if d.size <= INLINE_MAX {
        let all = blocking(move || {
            let mut reader = reader;
            let mut out = Vec::with_capacity(d.size as usize);
            while let Some(chunk) = reader.next_chunk(CHUNK)? {
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        })
        .await?;
        Body::Whole(all.into())
    } else {
        let chunks = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match blocking(move || Ok((reader.next_chunk(CHUNK)?, reader))).await {
                Ok((Some(chunk), reader)) => Some((Ok(chunk), Some(reader))),
                Ok((None, _)) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Body::Stream(chunks.boxed())
    };
    link.write(&d, body).await
}

/// Writes one queued ActionResult after every blob it names is in the tier.
/// Ok when done with it: written, or dropped because it can't be completed.
async fn write_action(
    store: &Store,
    link: &Arc<Link>,
    instance: &str,
    action: &Digest,
    concurrency: usize,
) -> Result<()> {
    let (s, i, a) = (store.clone(), instance.to_string(), *action);
    let Some(bytes) = blocking(move || s.get_action_untouched(&i, &a)).await? else {
        tracing::debug!(action = %action, "a queued action result left the local store; not written behind");
        return Ok(());
    };
    let Ok(result) = reapi::ActionResult::decode(bytes.as_slice()) else {
        tracing::warn!(action = %action, "a queued action result does not decode; not written behind");
        return Ok(());
    };
    // A Tree or Directory this node lacks (the client skipped uploading it
    // because the tier has it) is fetched, so the files below it are known.
    let tiered = Tiered::with_link(store.clone(), link.clone(), concurrency);
    let mut rounds = 0;
    let named = loop {
        let (s, r, function) = (store.clone(), result.clone(), action.function);
        let named = blocking(move || complete::named(&s, function, &r)).await?;
        if let Some(d) = named.broken.first() {
            tracing::debug!(action = %action, broken = %d, "a queued action result names an undecodable tree; dropped");
            return Ok(());
        }
        if named.absent.is_empty() {
            break named;
        }
        rounds += 1;
        if rounds > MAX_TREE_ROUNDS {
            tracing::debug!(action = %action, "a queued action result's directories are too deep to check; dropped");
            return Ok(());
        }
        if let Some(d) = link.find_missing(&named.absent).await?.first() {
            tracing::debug!(action = %action, missing = %d, "a queued action result names a tree nobody has; dropped");
            return Ok(());
        }
        if let Some(d) = tiered.fill(&named.absent).await?.first() {
            return Err(Error::Unavailable(format!("could not fetch tree {d} from the tier; retrying later")));
        }
    };
    let mut wanted = named.blobs;
    let mut seen = HashSet::new();
    wanted.retain(|d| !d.is_empty_blob() && seen.insert(*d));
    let missing = link.find_missing(&wanted).await?;
    let uploads: Vec<Result<()>> = futures::stream::iter(missing)
        .map(|d| upload(store.clone(), link.clone(), d))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for outcome in uploads {
        match outcome {
            Ok(()) => {}
            Err(Error::NotFound(why)) => {
                tracing::debug!(action = %action, %why, "a queued action result cannot be completed in the tier; dropped");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    link.put_action(instance, action, bytes.into()).await
}

#[cfg(test)]
#[path = "drain_tests.rs"]
mod tests;
