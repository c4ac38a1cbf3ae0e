//! A bounded bucket's background work on each node: flushing the use log
//! and, when due, running an eviction pass; in a task [`Bucket::start`]
//! spawns, which ends when the bucket is dropped.

use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStoreExt, PutPayload};

use super::{uses, Bucket, Op, DEFAULT_USE_LOG_INTERVAL};
use crate::error::Result;

impl Drop for Bucket {
    fn drop(&mut self) {
        if let Some(task) = self.background.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// When the next eviction pass of a node is due.
struct Background {
    evict_interval: Option<Duration>,
    next_evict: Option<tokio::time::Instant>,
}

impl Background {
    /// The first pass comes after a random part of the interval, so nodes
    /// started together don't list the bucket together.
    fn new(evict_interval: Option<Duration>) -> Background {
        let jitter = |iv: Duration| Duration::from_millis(rand::random::<u64>() % (iv.as_millis() as u64).max(1));
        Background { evict_interval, next_evict: evict_interval.map(|iv| tokio::time::Instant::now() + jitter(iv)) }
    }
}

impl Bucket {
    /// Opens the bucket `cairn serve --object-store` names and, when it is
    /// bounded, starts its background work (use logs, eviction passes),
    /// which ends when the bucket is dropped.
    pub fn start(cfg: &crate::config::ObjectStore) -> Result<Arc<Bucket>> {
        let bucket = Arc::new(Bucket::from_config(cfg)?);
        if bucket.opts.max_size.is_some() {
            let weak = Arc::downgrade(&bucket);
            let evict_interval = cfg.evict_interval;
            let full = bucket.uses.full.clone();
            let task = tokio::spawn(async move {
                // A round at least as often as passes are due (tests use seconds).
                let every = evict_interval.map_or(DEFAULT_USE_LOG_INTERVAL, |iv| iv.min(DEFAULT_USE_LOG_INTERVAL));
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut state = Background::new(evict_interval);
                loop {
                    // A full use set flushes at once rather than drop uses.
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = full.notified() => {}
                    }
                    let Some(bucket) = weak.upgrade() else { return };
                    bucket.background_round(&mut state).await;
                }
            });
            *bucket.background.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(bucket)
    }

    /// Writes this node's pending uses as one log object. On failure the
    /// uses stay pending for the next flush, so none is forgotten.
    pub async fn flush_uses(&self) -> Result<()> {
        let keys = self.uses.take();
        if keys.is_empty() {
            return Ok(());
        }
        let name =
            format!("{}/{}-{}-{}", uses::USES_DIR, self.opts.node_id, chrono_millis(), uuid::Uuid::new_v4().simple());
        let body = PutPayload::from(uses::encode_plain(&keys));
        match self.call(Op::Put, "writing a use log", self.store.put(&self.path(&name), body)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.uses.restore(keys);
                Err(e)
            }
        }
    }

    /// At a graceful stop: writes the pending uses (the last flush
    /// interval's), so a stop forgets none. One try, within the call timeout.
    pub(super) async fn flush_at_stop(&self) {
        if self.opts.max_size.is_none() {
            return;
        }
        let pending = self.uses.len();
        match self.flush_uses().await {
            Ok(()) => tracing::debug!("object store {}: wrote the last {pending} uses before stopping", self.url),
            Err(e) => tracing::warn!("the last {pending} uses are lost: {e}"),
        }
    }

    /// Uses noted since the last flush (for tests and the status page).
    pub fn pending_uses(&self) -> usize {
        self.uses.len()
    }

    /// One round of background work: flush the use log and, when due,
    /// run an eviction pass. Failures are logged and retried next round.
    async fn background_round(&self, state: &mut Background) {
        if let Err(e) = self.flush_uses().await {
            tracing::warn!("{e}");
        }
        let (Some(iv), Some(due)) = (state.evict_interval, state.next_evict) else { return };
        if tokio::time::Instant::now() < due {
            return;
        }
        state.next_evict = Some(tokio::time::Instant::now() + iv);
        match self.evict().await {
            Ok(r) if r.deleted > 0 || r.held_by_min_age => tracing::info!("object store {}: {r}", self.url),
            Ok(_) => {}
            Err(e) => tracing::warn!("eviction: {e}"),
        }
    }
}

/// Milliseconds since the epoch by this node's clock (only names logs).
fn chrono_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
