//! The background side of the store: once a second (or when a write pushes
//! the store over its limit) it records noted uses into `atime`/`lru` and, if
//! the stored bytes exceed `max_size`, evicts least recently used entries down
//! to [`LOW_WATER`] of the limit. Entries younger than `min_age` are never
//! evicted; when only such entries are left, the overrun is logged loudly and
//! counted in `min_age_overruns`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rocksdb::{IteratorMode, WriteBatch};

use super::lru::{lru_key, parse_lru_key, KIND_AC, KIND_CAS};
use super::{parse_cas_value, Inner, Store, CF_AC, CF_ATIME, CF_CAS, CF_LRU, CF_META, KIND_FILE};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};

/// Eviction frees space down to this fraction of `max_size`, so it runs in
/// bursts rather than on every write.
const LOW_WATER: f64 = 0.95;
/// Uses recorded per RocksDB batch (and per hold of the commit lock).
const FLUSH_CHUNK: usize = 10_000;
/// Rows examined per pass over the `lru` family.
const EVICT_CHUNK: usize = 1_000;

/// Wakes the background thread early, or tells it to stop.
#[derive(Default)]
pub(super) struct Wake {
    woken: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
    /// Held for one round of upkeep.
    round: Mutex<()>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Wake {
    fn notify(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Sleeps until woken or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let guard = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let (mut woken, _) = self.cv.wait_timeout_while(guard, timeout, |w| !*w).unwrap_or_else(|e| e.into_inner());
        *woken = false;
    }
}

impl Inner {
    pub(super) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Adds "used now" rows for `entry` to `batch`, replacing the row of its
    /// previous use (`previous` is its old `atime` value, if any).
    pub(super) fn stamp(&self, batch: &mut WriteBatch, entry: &[u8], previous: Option<&[u8]>) {
        let now = self.limits.clock.now();
        if let Some(prev) = previous.and_then(|p| <[u8; 8]>::try_from(p).ok()) {
            batch.delete_cf(self.cf(CF_LRU), lru_key(u64::from_be_bytes(prev), entry));
        }
        batch.put_cf(self.cf(CF_ATIME), entry, now.to_be_bytes());
        batch.put_cf(self.cf(CF_LRU), lru_key(now, entry), []);
    }

    pub(super) fn wake_if_over_limit(&self) {
        if self.counters.snapshot().total_bytes() as u64 > self.limits.max_size {
            self.wake.notify();
        }
    }

    /// Deletes an entry (CAS blob or action result) with its LRU rows and
    /// file, fixing the counters. Caller holds the commit lock. Returns the
    /// bytes freed.
    pub(super) fn remove_entry(&self, entry: &[u8]) -> Result<u64> {
        let (kind, key) = entry.split_first().ok_or_else(|| Error::Internal("empty entry key".into()))?;
        let mut batch = WriteBatch::default();
        if let Some(t) = self.db.get_cf(self.cf(CF_ATIME), entry)? {
            if let Ok(t) = <[u8; 8]>::try_from(t.as_slice()) {
                batch.delete_cf(self.cf(CF_LRU), lru_key(u64::from_be_bytes(t), entry));
            }
        }
        batch.delete_cf(self.cf(CF_ATIME), entry);
        let mut file = None;
        let freed = match *kind {
            KIND_CAS => {
                let Some(v) = self.db.get_cf(self.cf(CF_CAS), key)? else {
                    self.db.write(batch)?;
                    return Ok(0);
                };
                let (k, size, _) = parse_cas_value(&v)?;
                if k == KIND_FILE {
                    let function = DigestFunction::from_tag(key[0])
                        .ok_or_else(|| Error::Internal(format!("cas key with unknown tag {}", key[0])))?;
                    let hash: [u8; 32] = key[1..].try_into().map_err(|_| Error::Internal("short cas key".into()))?;
                    file = Some(blob_path(self, &Digest { function, hash, size }));
                }
                batch.delete_cf(self.cf(CF_CAS), key);
                self.counters.add_cas(&mut batch, self.cf(CF_META), -1, -(size as i64));
                self.db.write(batch)?;
                self.counters.applied_cas(-1, -(size as i64));
                size
            }
            KIND_AC => {
                let Some(v) = self.db.get_cf(self.cf(CF_AC), key)? else {
                    self.db.write(batch)?;
                    return Ok(0);
                };
                let len = v.len() as i64;
                batch.delete_cf(self.cf(CF_AC), key);
                self.counters.add_ac(&mut batch, self.cf(CF_META), -1, -len);
                self.db.write(batch)?;
                self.counters.applied_ac(-1, -len);
                len as u64
            }
            other => return Err(Error::Internal(format!("entry key with unknown kind {other}"))),
        };
        if let Some(path) = file {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete an evicted blob file");
            }
        }
        Ok(freed)
    }
}

fn blob_path(inner: &Inner, d: &Digest) -> std::path::PathBuf {
    let hex = d.hex();
    inner.root.join("blobs").join(d.function.name()).join(&hex[..2]).join(hex)
}

/// One round of upkeep: record uses, then evict if over the limit. Rounds
/// never overlap (the background tick and `Store::maintain` share a lock),
/// so two evictions can't both free the same headroom.
pub(super) fn maintain(inner: &Inner) -> Result<()> {
    let _round = inner.wake.round.lock().unwrap_or_else(|e| e.into_inner());
    flush_touches(inner)?;
    evict(inner)
}

/// Writes the noted uses into `atime`/`lru`, and the hit/miss counters into `meta`.
pub(super) fn flush_touches(inner: &Inner) -> Result<()> {
    let touched: Vec<Vec<u8>> = inner.touches.drain().into_iter().collect();
    let now = inner.limits.clock.now();
    for chunk in touched.chunks(FLUSH_CHUNK) {
        let _guard = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = inner.db.batched_multi_get_cf(inner.cf(CF_ATIME), chunk.iter(), false);
        let mut batch = WriteBatch::default();
        for (entry, prev) in chunk.iter().zip(previous) {
            // No atime row: the entry was removed since it was used.
            let Some(prev) = prev? else { continue };
            if prev.as_ref() != now.to_be_bytes() {
                inner.stamp(&mut batch, entry, Some(prev.as_ref()));
            }
        }
        inner.db.write(batch)?;
    }
    let mut batch = WriteBatch::default();
    if inner.counters.save_lookups(&mut batch, inner.cf(CF_META)) {
        inner.db.write(batch)?;
    }
    Ok(())
}

/// Evicts least recently used entries while the store is over its limit.
fn evict(inner: &Inner) -> Result<()> {
    let max = inner.limits.max_size;
    if inner.counters.snapshot().total_bytes() as u64 <= max {
        return Ok(());
    }
    let target = (max as f64 * LOW_WATER) as u64;
    let cutoff = inner.limits.clock.now().saturating_sub(inner.limits.min_age.as_secs());
    let (mut evicted, mut freed) = (0u64, 0u64);
    while inner.counters.snapshot().total_bytes() as u64 > target {
        let rows: Vec<Box<[u8]>> = inner
            .db
            .iterator_cf(inner.cf(CF_LRU), IteratorMode::Start)
            .take(EVICT_CHUNK)
            .map(|r| r.map(|(k, _)| k))
            .collect::<std::result::Result<_, _>>()?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let Some((secs, entry)) = parse_lru_key(&row) else {
                continue;
            };
            if secs > cutoff {
                inner.counters.count_min_age_overrun();
                tracing::warn!(
                    stored = inner.counters.snapshot().total_bytes(),
                    max_size = max,
                    min_age_secs = inner.limits.min_age.as_secs(),
                    "the cache is over its size limit but every remaining entry was used within the minimum age; \
                     raise --max-size or lower --min-age, or builds may lose entries they still need"
                );
                return Ok(());
            }
            let _guard = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            let current = inner.db.get_cf(inner.cf(CF_ATIME), entry)?;
            if current.as_deref() == Some(&secs.to_be_bytes()[..]) {
                freed += inner.remove_entry(entry)?;
                evicted += 1;
            } else {
                // A stale row (the entry was used again, or is gone).
                inner.db.delete_cf(inner.cf(CF_LRU), &row)?;
            }
            if inner.counters.snapshot().total_bytes() as u64 <= target {
                break;
            }
        }
    }
    if evicted > 0 {
        inner.counters.count_evictions(evicted);
        let mut batch = WriteBatch::default();
        inner.counters.save_lookups(&mut batch, inner.cf(CF_META));
        inner.db.write(batch)?;
        tracing::info!(evicted, freed, "evicted least recently used entries");
    }
    Ok(())
}

/// Starts the thread that flushes uses and evicts; it holds the store only
/// while working, and stops when [`Store::close`] is called or the store is gone.
pub(super) fn start_background(store: &Store) -> Result<()> {
    let weak = Arc::downgrade(&store.inner);
    let wake = Arc::clone(&store.inner.wake);
    let handle = std::thread::Builder::new()
        .name("cairn-lru".into())
        .spawn(move || {
            let mut last_error: Option<Instant> = None;
            loop {
                wake.wait(Duration::from_secs(1));
                if wake.stop.load(Ordering::Acquire) {
                    return;
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = maintain(&inner) {
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::error!(error = %e, "recording uses or evicting failed");
                        last_error = Some(Instant::now());
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting the eviction thread", e))?;
    *store.inner.wake.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    Ok(())
}

impl Store {
    /// Stops the background thread and waits for it, so that dropping the
    /// last handle afterwards closes the database at once.
    pub fn close(&self) {
        // Interrupted uploads hold a handle on the store; let them (and their
        // temp files) go so the database can close.
        self.inner.uploads.clear();
        self.inner.wake.stop.store(true, Ordering::Release);
        self.inner.wake.notify();
        let handle = self.inner.wake.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
