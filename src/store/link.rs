//! A tier as the rest of the store uses it: every call bounded by a timeout,
//! failures counted by operation, and the tier's health tracked, so an
//! outage costs one warning when it starts and one line when it ends (not
//! one per request), and reads skip the tier while it lasts (one probe per
//! [`PROBE_INTERVAL`] gets through, and the write-behind drain keeps trying).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::tier::{Body, Chunks, Tier, Used};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// While the tier is down, how often a read may still try it.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Bytes per second a write to the tier is allowed at least, on top of the
/// timeout: a 1 GiB blob gets minutes, not the seconds of a lookup.
const MIN_WRITE_RATE: u64 = 1 << 20;

/// What a tier call was doing, for `cairn_tier_errors_total{op}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    FindMissing,
    Read,
    Write,
    GetAction,
    PutAction,
}

impl Op {
    /// Every operation, in the order of [`TierStats::errors`].
    pub const ALL: [Op; 5] = [Op::FindMissing, Op::Read, Op::Write, Op::GetAction, Op::PutAction];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Op::FindMissing => "find_missing",
            Op::Read => "read",
            Op::Write => "write",
            Op::GetAction => "get_action",
            Op::PutAction => "put_action",
        }
    }
}

/// The tier's figures for metrics and the status page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TierStats {
    /// What the tier is (`grpc://central:9092`).
    pub tier: String,
    /// False from a failed call until the next successful one.
    pub up: bool,
    /// Failed calls since start, by operation name.
    pub errors: Vec<(&'static str, u64)>,
    /// Blobs and action results this node filled itself with from the tier.
    pub fills: u64,
    /// The write-behind queue.
    pub queue: super::QueueStats,
}

/// A tier behind timeouts and health tracking; see the module doc.
pub struct Link {
    tier: Arc<dyn Tier>,
    name: String,
    timeout: Duration,
    /// When the current outage began and when a read may next probe.
    down: Mutex<Option<(Instant, Instant)>>,
    errors: [AtomicU64; 5],
    fills: AtomicU64,
}

impl Link {
    /// Calls the tier made to the service behind it, by kind (see [`Tier::calls`]).
    pub fn calls(&self) -> Vec<(&'static str, u64)> {
        self.tier.calls()
    }

    /// Notes local hits as uses of the tier's objects (see [`Tier::note_used`]).
    pub fn note_used(&self, used: Used<'_>) {
        self.tier.note_used(used);
    }

    /// Uses the tier dropped for want of room (see [`Tier::uses_dropped`]).
    pub fn uses_dropped(&self) -> u64 {
        self.tier.uses_dropped()
    }

    /// Lets the tier hand over what it keeps in memory before the process
    /// exits, for at most the per-call timeout: a down tier can't hold a stop.
    pub async fn finish(&self) {
        if tokio::time::timeout(self.timeout, self.tier.finish()).await.is_err() {
            tracing::warn!(tier = %self.name, "the tier did not finish within {:?}; stopping anyway", self.timeout);
        }
    }

    /// Wraps `tier`; each call (and each chunk of a read) gets `timeout`.
    pub fn new(tier: Arc<dyn Tier>, timeout: Duration) -> Link {
        Link {
            name: tier.describe(),
            tier,
            timeout,
            down: Mutex::new(None),
            errors: Default::default(),
            fills: AtomicU64::new(0),
        }
    }

    /// The tier's description.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The per-call timeout (also the FindMissingBlobs deadline).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a read should ask the tier now: always while it is up; while
    /// it is down, one caller per [`PROBE_INTERVAL`] (the others answer from
    /// the local store at once instead of waiting on a dead tier).
    pub fn available(&self) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.as_mut() {
            None => true,
            Some((_, next_probe)) => {
                let now = Instant::now();
                if now < *next_probe {
                    return false;
                }
                *next_probe = now + PROBE_INTERVAL;
                true
            }
        }
    }

    /// Counts one blob or result filled from the tier.
    pub fn count_fill(&self) {
        self.fills.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure that did not come back from a call (a fill whose
    /// bytes did not match their digest).
    pub fn count_error(&self, op: Op) {
        self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Figures for metrics, with the queue's from the store.
    pub fn stats(&self, queue: super::QueueStats) -> TierStats {
        TierStats {
            tier: self.name.clone(),
            up: self.down.lock().unwrap_or_else(|p| p.into_inner()).is_none(),
            errors: Op::ALL.iter().map(|op| (op.name(), self.errors[*op as usize].load(Ordering::Relaxed))).collect(),
            fills: self.fills.load(Ordering::Relaxed),
            queue,
        }
    }

    fn succeeded(&self) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = down.take() {
            tracing::info!(tier = %self.name, after = ?since.elapsed(), "the tier is reachable again; catching up");
        }
    }

    fn failed(&self, op: Op, e: &Error) {
        self.count_error(op);
        if !matches!(e, Error::Unavailable(_)) {
            // The tier answered (it refused one thing): not an outage.
            tracing::debug!(tier = %self.name, op = op.name(), error = %e, "tier call failed");
            return;
        }
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            tracing::warn!(
                tier = %self.name,
                error = %e,
                "the tier is unreachable: serving local hits and misses, queueing writes until it is back"
            );
            let now = Instant::now();
            *down = Some((now, now + PROBE_INTERVAL));
        }
    }

    /// Runs one call under `limit`, recording its outcome.
    async fn call<T>(&self, op: Op, limit: Duration, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let r = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!("{} did not answer {} within {limit:?}", self.name, op.name()))),
        };
        match &r {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(op, e),
        }
        r
    }

    /// The subset of `digests` the tier lacks.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.call(Op::FindMissing, self.timeout, self.tier.find_missing(digests)).await
    }

    /// The blob's bytes, each chunk within the timeout of the last; a stall
    /// mid-blob ends the stream with UNAVAILABLE.
    pub async fn read(self: &Arc<Self>, d: &Digest) -> Result<Option<Chunks>> {
        let Some(inner) = self.call(Op::Read, self.timeout, self.tier.read(d)).await? else { return Ok(None) };
        let link = self.clone();
        let chunks = futures::stream::unfold(Some(inner), move |inner| {
            let link = link.clone();
            async move {
                let mut inner = inner?;
                match tokio::time::timeout(link.timeout, inner.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(inner))),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => {
                        link.failed(Op::Read, &e);
                        Some((Err(e), None))
                    }
                    Err(_) => {
                        let e = Error::Unavailable(format!("{} stalled for {:?} mid-blob", link.name, link.timeout));
                        link.failed(Op::Read, &e);
                        Some((Err(e), None))
                    }
                }
            }
        });
        Ok(Some(chunks.boxed()))
    }

    /// Stores a verified blob; the time allowed grows with its size.
    pub async fn write(&self, d: &Digest, body: Body) -> Result<()> {
        let limit = self.timeout + Duration::from_secs(d.size / MIN_WRITE_RATE);
        self.call(Op::Write, limit, self.tier.write(d, body)).await
    }

    /// The encoded ActionResult the tier holds for `action`.
    pub async fn get_action(&self, instance: &str, action: &Digest) -> Result<Option<Bytes>> {
        self.call(Op::GetAction, self.timeout, self.tier.get_action(instance, action)).await
    }

    /// Stores an encoded ActionResult (every blob it names is in the tier).
    pub async fn put_action(&self, instance: &str, action: &Digest, result: Bytes) -> Result<()> {
        self.call(Op::PutAction, self.timeout, self.tier.put_action(instance, action, result)).await
    }
}
