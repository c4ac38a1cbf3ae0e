//! The background side of the store: once a second (or when a write pushes
//! the store over its limit) it records noted uses into `atime`/`lru` and, if
//! the stored bytes exceed `max_size`, evicts least recently used entries down
//! to [`LOW_WATER`] of the limit. Entries younger than `min_age` are never
//! evicted; when only such entries are left, the overrun is logged loudly and
//! counted in `min_age_overruns`. Entries still waiting in the write-behind
//! queue are skipped too (evicting one would lose an acknowledged write
//! before it reaches the tier); when only such entries keep the store over
//! its limit, that overrun is logged and counted the same way. The same
//! thread sweeps `blobs/` once after start-up for files no record accounts
//! for (see [`reclaim`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rocksdb::{Direction, IteratorMode, WriteBatch};

use std::path::{Path, PathBuf};

use super::lru::{lru_key, parse_lru_key, KIND_AC, KIND_CAS};
use super::{ac, digest_of_cas_key, parse_cas_value, reclaim, Inner, Store};
use super::{CF_AC, CF_ATIME, CF_CAS, CF_CAS_DATA, CF_LRU, CF_META, KIND_FILE};
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

    /// What `--max-size` bounds: bytes stored, plus bytes of uploads already
    /// in temp files (they are on the disk too, and most will be stored).
    pub(super) fn bytes_held(&self) -> u64 {
        (self.counters.snapshot().total_bytes().max(0) as u64).saturating_add(self.uploads.spooled())
    }

    pub(super) fn wake_if_over_limit(&self) {
        if self.bytes_held() > self.limits.max_size {
            self.wake.notify();
        }
    }

    /// Writes the noted uses when a caller found the backlog full, so uses
    /// are never dropped and their memory stays bounded.
    pub(super) fn relieve_backlog(&self, full: bool) -> Result<()> {
        if full {
            flush_touches(self)?;
        }
        Ok(())
    }

    /// Deletes an entry (CAS blob or action result) with its LRU rows, fixing
    /// the counters. Caller holds the commit lock. A blob file is moved out of
    /// `blobs/` at once (a rename: a re-upload of the same blob may publish
    /// there as soon as the lock is released) and must be unlinked with
    /// [`Inner::bury`] after the lock is released.
    pub(super) fn remove_entry(&self, entry: &[u8]) -> Result<Removed> {
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
                    return Ok(Removed::default());
                };
                let (k, size, _) = parse_cas_value(&v)?;
                if k == KIND_FILE {
                    file = Some(self.blob_path(&digest_of_cas_key(key, size)?));
                }
                batch.delete_cf(self.cf(CF_CAS), key);
                batch.delete_cf(self.cf(CF_CAS_DATA), key);
                self.counters.add_cas(&mut batch, self.cf(CF_META), -1, -(size as i64));
                self.db.write(batch)?;
                self.counters.applied_cas(-1, -(size as i64));
                size
            }
            KIND_AC => {
                let Some(v) = self.db.get_cf(self.cf(CF_AC), key)? else {
                    self.db.write(batch)?;
                    return Ok(Removed::default());
                };
                let bytes = ac::entry_bytes(key.len(), v.len());
                batch.delete_cf(self.cf(CF_AC), key);
                self.counters.add_ac(&mut batch, self.cf(CF_META), -1, -bytes);
                self.db.write(batch)?;
                self.counters.applied_ac(-1, -bytes);
                bytes as u64
            }
            other => return Err(Error::Internal(format!("entry key with unknown kind {other}"))),
        };
        let doomed = file.and_then(|path| self.move_to_tmp(&path));
        Ok(Removed { freed, doomed })
    }

    /// Renames a file into `tmp/` (wiped at start-up) to be unlinked later;
    /// `None` if it is already gone.
    pub(super) fn move_to_tmp(&self, path: &Path) -> Option<PathBuf> {
        let doomed = self.tmp_dir().join(format!("removed-{}", uuid::Uuid::new_v4()));
        match std::fs::rename(path, &doomed) {
            Ok(()) => Some(doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                // The record is gone; the orphan sweep reclaims the file.
                tracing::warn!(path = %path.display(), error = %e, "could not move a removed blob file aside");
                None
            }
        }
    }

    /// Unlinks a file set aside by [`Inner::remove_entry`]; outside any lock
    /// (freeing a large file's extents can take a while).
    pub(super) fn bury(&self, doomed: Option<PathBuf>) {
        if let Some(path) = doomed {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a removed blob file");
            }
        }
    }
}

/// What [`Inner::remove_entry`] freed, and the file left to unlink.
#[derive(Default)]
pub(super) struct Removed {
    pub(super) freed: u64,
    pub(super) doomed: Option<PathBuf>,
}

/// One round of upkeep: record uses, then evict if over the limit. Rounds
/// never overlap (the background tick and `Store::maintain` share a lock),
/// so two evictions can't both free the same headroom.
pub(super) fn maintain(inner: &Inner) -> Result<()> {
    let _round = inner.wake.round.lock().unwrap_or_else(|e| e.into_inner());
    flush_touches(inner)?;
    evict(inner)
}

/// Writes the noted uses into `atime`/`lru`, and the hit/miss counters into
/// `meta`. Takes no store lock: a use written for an entry removed meanwhile
/// leaves a stale row, which eviction recognises and drops.
pub(super) fn flush_touches(inner: &Inner) -> Result<()> {
    inner.touches.flush(|touched| {
        let touched: Vec<&Vec<u8>> = touched.iter().collect();
        let now = inner.limits.clock.now();
        for chunk in touched.chunks(FLUSH_CHUNK) {
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
        Ok::<(), Error>(())
    })?;
    let mut batch = WriteBatch::default();
    if inner.counters.save_lookups(&mut batch, inner.cf(CF_META)) {
        inner.db.write(batch)?;
    }
    Ok(())
}

/// Evicts least recently used entries while the store is over its limit.
pub(super) fn evict(inner: &Inner) -> Result<()> {
    let max = inner.limits.max_size;
    if inner.bytes_held() <= max {
        return Ok(());
    }
    let target = (max as f64 * LOW_WATER) as u64;
    let cutoff = inner.limits.clock.now().saturating_sub(inner.limits.min_age.as_secs());
    let (mut evicted, mut freed, mut queued) = (0u64, 0u64, 0u64);
    // The last row looked at: queued entries keep their rows, so each pass
    // goes on after it rather than from the start.
    let mut after: Option<Box<[u8]>> = None;
    let mut result = Ok(());
    'passes: while inner.bytes_held() > target {
        let mode = match &after {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let rows: Vec<Box<[u8]>> = inner
            .db
            .iterator_cf(inner.cf(CF_LRU), mode)
            .take(EVICT_CHUNK)
            .map(|r| r.map(|(k, _)| k))
            .collect::<std::result::Result<_, _>>()?;
        let rows: Vec<Box<[u8]>> = rows.into_iter().filter(|r| Some(r) != after.as_ref()).collect();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let Some((secs, entry)) = parse_lru_key(&row) else {
                continue;
            };
            if secs > cutoff {
                inner.counters.count_min_age_overrun();
                // Uploads in progress count against the limit too: say so,
                // or "stored" alone can read as under the limit.
                tracing::warn!(
                    stored = inner.counters.snapshot().total_bytes(),
                    uploads_in_progress = inner.uploads.spooled(),
                    max_size = max,
                    min_age_secs = inner.limits.min_age.as_secs(),
                    "the cache (stored entries plus uploads in progress) is over its size limit but every \
                     remaining entry was used within the minimum age; raise --max-size, lower --min-age or \
                     --max-tmp-size, or builds may lose entries they still need"
                );
                break 'passes;
            }
            match evict_one(inner, &row, secs, entry) {
                Ok(Outcome::Freed(n)) => {
                    freed += n;
                    evicted += 1;
                }
                Ok(Outcome::Kept) => {}
                Ok(Outcome::Queued) => queued += 1,
                Err(e) => {
                    result = Err(e);
                    break 'passes;
                }
            }
            after = Some(row);
            if inner.bytes_held() <= target {
                break;
            }
        }
    }
    if queued > 0 && inner.bytes_held() > target {
        inner.counters.count_min_age_overrun();
        tracing::warn!(
            stored = inner.counters.snapshot().total_bytes(),
            max_size = max,
            queued,
            "the cache is over its size limit but the entries left to evict are still waiting to be written \
             to the tier (it is down or slow); they stay until written, or until the queue overflows"
        );
    }
    if evicted > 0 {
        inner.counters.count_evictions(evicted);
        let mut batch = WriteBatch::default();
        inner.counters.save_lookups(&mut batch, inner.cf(CF_META));
        inner.db.write(batch)?;
        tracing::info!(evicted, freed, "evicted least recently used entries");
    }
    result
}

/// What [`evict_one`] did with an `lru` row.
enum Outcome {
    /// The entry is gone, these bytes freed.
    Freed(u64),
    /// The row was stale, or the entry used since the last flush.
    Kept,
    /// The entry is waiting in the write-behind queue.
    Queued,
}

/// Evicts the entry of one `lru` row unless it was used since or is still
/// queued for the tier.
fn evict_one(inner: &Inner, row: &[u8], secs: u64, entry: &[u8]) -> Result<Outcome> {
    let removed = {
        let _gate = inner.use_gate.write().unwrap_or_else(|p| p.into_inner());
        let _guard = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = inner.db.get_cf(inner.cf(CF_ATIME), entry)?;
        if current.as_deref() != Some(&secs.to_be_bytes()[..]) {
            // A stale row (the entry was used again, or is gone).
            inner.db.delete_cf(inner.cf(CF_LRU), row)?;
            return Ok(Outcome::Kept);
        }
        if inner.touches.contains(entry) {
            // Used since the last flush (found present, returned as a hit):
            // record that use now, which moves the entry out of this row.
            let mut batch = WriteBatch::default();
            inner.stamp(&mut batch, entry, current.as_deref());
            inner.db.write(batch)?;
            return Ok(Outcome::Kept);
        }
        // Under the commit lock, which every queued commit holds: an entry
        // is never queued between this check and its removal.
        if inner.outbox.get().is_some_and(|q| q.holds(entry)) {
            return Ok(Outcome::Queued);
        }
        inner.remove_entry(entry)?
    };
    inner.bury(removed.doomed);
    Ok(Outcome::Freed(removed.freed))
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
            // Blob files left by a crash are reclaimed a few directories per
            // tick, so start-up stays instant and upkeep keeps its pace.
            let mut sweep = Some(reclaim::Sweep::default());
            loop {
                wake.wait(Duration::from_secs(1));
                if wake.stop.load(Ordering::Acquire) {
                    return;
                }
                let Some(inner) = weak.upgrade() else { return };
                let mut result = maintain(&inner);
                if let (Ok(()), Some(s)) = (&result, &mut sweep) {
                    match s.step(&inner, reclaim::DIRS_PER_TICK) {
                        Ok(true) => sweep = None,
                        Ok(false) => {}
                        Err(e) => result = Err(e),
                    }
                }
                if let Err(e) = result {
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::error!(error = %e, "recording uses, evicting or reclaiming failed");
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
        // Record the uses noted since the last tick (so the next start evicts
        // by true recency) and write the memtables out, so a restart replays
        // no log. Both are only tidiness: the log makes a crash just as safe.
        if let Err(e) = flush_touches(&self.inner) {
            tracing::warn!(error = %e, "recording recent uses at shutdown failed");
        }
        let cfs: Vec<_> = super::ALL_CFS.iter().map(|name| self.inner.cf(name)).collect();
        if let Err(e) = self.inner.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default()) {
            tracing::warn!(error = %e, "flushing the database at shutdown failed");
        }
        // Uploads still running now (past the server's drain timeout) will
        // never be acknowledged: take their temp files, so a stopped server
        // leaves no partial data behind. A late rename of one fails cleanly.
        if let Err(e) = super::wipe_dir(&self.inner.tmp_dir()) {
            tracing::warn!(error = %e, "removing unfinished uploads at shutdown failed");
        }
    }
}
