//! The write-behind queue: when a tier is configured, every CAS commit and
//! ActionCache put records its key in the `outbox` column family, in the same
//! RocksDB write batch as the commit itself, so an acknowledged write is
//! queued for the tier exactly as durably as it is stored (kill -9 and
//! restart lose nothing). The [`drain`](super::drain) task empties it in
//! order.
//!
//! Keys are a sequence number (u64, big-endian: RocksDB's order is the
//! queue's order); values name the entry and the bytes it stands for. The
//! queue is bounded by entries and bytes: when a new entry would overflow it,
//! the oldest *blob* entries are dropped first (counted, and one warning per
//! overflow episode). Dropping a blob entry loses nothing an ActionResult
//! needs: the drain uploads every blob a queued result names before the
//! result itself, whether or not the blob was queued.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rocksdb::{ColumnFamily, IteratorMode, WriteBatch, DB};

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};

/// The column family holding the queue.
pub(super) const CF_OUTBOX: &str = "outbox";

/// Value tags.
const TAG_BLOB: u8 = 0;
const TAG_ACTION: u8 = 1;

/// One thing waiting to be written to the tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A CAS blob, streamed from the local store.
    Blob(Digest),
    /// An ActionCache entry, written only after every blob it names.
    Action { instance: String, action: Digest },
}

/// Bounds of the queue (`--tier-queue-max-entries`, `--tier-queue-max-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// What the queue holds now, for metrics and the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Entries waiting.
    pub entries: u64,
    /// Bytes they stand for (blob sizes, result sizes).
    pub bytes: u64,
    /// Entries dropped since start because the queue was full.
    pub dropped: u64,
}

/// The queue's bookkeeping; the entries themselves live in RocksDB.
pub(super) struct Outbox {
    limits: QueueLimits,
    /// Every change to the queue holds it from reading RocksDB to updating
    /// the counts, so the counts match the column family exactly.
    state: Mutex<State>,
    dropped: AtomicU64,
    /// True while the queue is overflowing (one warning per episode).
    overflowing: AtomicBool,
    /// Wakes the drain when an entry arrives.
    pub(super) arrived: tokio::sync::Notify,
}

struct State {
    next: u64,
    entries: u64,
    bytes: u64,
}

/// An entry added to a write batch, applied to the counts once the batch is
/// written (dropped unapplied if the write fails). Holds the queue's lock.
pub(super) struct Staged<'a> {
    outbox: &'a Outbox,
    state: MutexGuard<'a, State>,
    entries: u64,
    bytes: u64,
    dropped: u64,
    /// False when the entry was too large to queue at all.
    queued: bool,
}

impl Staged<'_> {
    /// The batch was written: the counts follow.
    pub(super) fn applied(mut self) {
        self.state.next += u64::from(self.queued);
        self.state.entries = self.entries;
        self.state.bytes = self.bytes;
        drop(self.state);
        if self.dropped > 0 {
            self.outbox.dropped.fetch_add(self.dropped, Ordering::Relaxed);
        }
        self.outbox.arrived.notify_one();
    }
}

impl Outbox {
    /// Counts what a previous run left in the queue (bounded by the limits,
    /// so the scan is too).
    pub(super) fn open(db: &DB, cf: &ColumnFamily, limits: QueueLimits) -> Result<Outbox> {
        let (mut entries, mut bytes, mut next) = (0u64, 0u64, 0u64);
        for row in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = row?;
            let (_, b) = decode(&v)?;
            entries += 1;
            bytes += b;
            next = seq_of(&k)? + 1;
        }
        if entries > 0 {
            tracing::info!(entries, bytes, "resuming the write-behind queue left by the last run");
        }
        Ok(Outbox {
            limits,
            state: Mutex::new(State { next, entries, bytes }),
            dropped: AtomicU64::new(0),
            overflowing: AtomicBool::new(false),
            arrived: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `entry` (standing for `bytes`) to `batch`, and deletions of the
    /// oldest entries when it would overflow the bounds. Call with the batch
    /// unwritten; [`Staged::applied`] after writing it.
    pub(super) fn stage(
        &self,
        db: &DB,
        cf: &ColumnFamily,
        batch: &mut WriteBatch,
        entry: &Entry,
        bytes: u64,
    ) -> Result<Staged<'_>> {
        let state = self.lock();
        if bytes > self.limits.max_bytes {
            // Could never fit: dropped at once, whatever is queued stays.
            tracing::warn!(?entry, bytes, "an entry larger than the whole write-behind queue was not queued");
            let (entries, bytes) = (state.entries, state.bytes);
            return Ok(Staged { outbox: self, state, entries, bytes, dropped: 1, queued: false });
        }
        let (mut n, mut b, mut dropped) = (state.entries + 1, state.bytes + bytes, 0u64);
        if n > self.limits.max_entries || b > self.limits.max_bytes {
            // Oldest blob entries first; results only if blobs alone can't
            // make room (they are small, and what makes a cache hit).
            for blobs_only in [true, false] {
                for row in db.iterator_cf(cf, IteratorMode::Start) {
                    if n <= self.limits.max_entries && b <= self.limits.max_bytes {
                        break;
                    }
                    let (k, v) = row?;
                    let (old, old_bytes) = decode(&v)?;
                    // The second pass skips blobs: the first deleted them all
                    // (in the batch, which this iterator does not see).
                    if blobs_only != matches!(old, Entry::Blob(_)) {
                        continue;
                    }
                    batch.delete_cf(cf, &k);
                    n -= 1;
                    b -= old_bytes;
                    dropped += 1;
                }
            }
            if !self.overflowing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_entries = self.limits.max_entries,
                    max_bytes = self.limits.max_bytes,
                    "the write-behind queue is full (the tier is down or slow): dropping its oldest blob \
                     entries; they stay served locally but will not reach the tier unless a result names them"
                );
            }
        } else if state.entries * 2 < self.limits.max_entries && state.bytes * 2 < self.limits.max_bytes {
            self.overflowing.store(false, Ordering::Relaxed);
        }
        batch.put_cf(cf, state.next.to_be_bytes(), encode(entry, bytes));
        Ok(Staged { outbox: self, state, entries: n, bytes: b, dropped, queued: true })
    }

    /// The oldest `n` entries, with their sequence numbers.
    pub(super) fn peek(&self, db: &DB, cf: &ColumnFamily, n: usize) -> Result<Vec<(u64, Entry)>> {
        let mut out = Vec::new();
        for row in db.iterator_cf(cf, IteratorMode::Start).take(n) {
            let (k, v) = row?;
            out.push((seq_of(&k)?, decode(&v)?.0));
        }
        Ok(out)
    }

    /// Removes entries the drain is done with (written, or given up on).
    /// Entries already dropped by an overflow are skipped, not counted twice.
    pub(super) fn remove(&self, db: &DB, cf: &ColumnFamily, seqs: &[u64]) -> Result<()> {
        let mut state = self.lock();
        let mut batch = WriteBatch::default();
        let (mut n, mut b) = (0u64, 0u64);
        for seq in seqs {
            let key = seq.to_be_bytes();
            if let Some(v) = db.get_pinned_cf(cf, key)? {
                b += decode(&v)?.1;
                n += 1;
                batch.delete_cf(cf, key);
            }
        }
        db.write(batch)?;
        state.entries -= n;
        state.bytes -= b;
        Ok(())
    }

    /// Entries, bytes and drops now.
    pub(super) fn stats(&self) -> QueueStats {
        let state = self.lock();
        QueueStats { entries: state.entries, bytes: state.bytes, dropped: self.dropped.load(Ordering::Relaxed) }
    }
}

impl super::Inner {
    /// Adds `entry` to a commit's `batch` when a tier is attached and the
    /// commit is `behind` (not a fill from the tier). Holds the queue's lock
    /// until the returned [`Staged`] is applied or dropped.
    pub(super) fn queue_behind(
        &self,
        behind: bool,
        batch: &mut WriteBatch,
        entry: Entry,
        bytes: u64,
    ) -> Result<Option<Staged<'_>>> {
        match self.outbox.get() {
            Some(q) if behind => q.stage(&self.db, self.cf(CF_OUTBOX), batch, &entry, bytes).map(Some),
            _ => Ok(None),
        }
    }
}

fn seq_of(key: &[u8]) -> Result<u64> {
    let k: [u8; 8] =
        key.try_into().map_err(|_| Error::Internal(format!("outbox key {} is not 8 bytes", hex::encode(key))))?;
    Ok(u64::from_be_bytes(k))
}

/// tag, bytes (u64 LE), digest function tag, hash, size (u64 LE), then the
/// instance name of an ActionCache entry.
fn encode(entry: &Entry, bytes: u64) -> Vec<u8> {
    let (tag, d, instance) = match entry {
        Entry::Blob(d) => (TAG_BLOB, d, ""),
        Entry::Action { instance, action } => (TAG_ACTION, action, instance.as_str()),
    };
    let mut v = Vec::with_capacity(50 + instance.len());
    v.push(tag);
    v.extend_from_slice(&bytes.to_le_bytes());
    v.push(d.function.tag());
    v.extend_from_slice(&d.hash);
    v.extend_from_slice(&d.size.to_le_bytes());
    v.extend_from_slice(instance.as_bytes());
    v
}

fn decode(v: &[u8]) -> Result<(Entry, u64)> {
    let bad = || Error::Internal(format!("outbox entry {} does not decode", hex::encode(v)));
    if v.len() < 50 {
        return Err(bad());
    }
    let bytes = u64::from_le_bytes(v[1..9].try_into().expect("8 bytes"));
    let function = DigestFunction::from_tag(v[9]).ok_or_else(bad)?;
    let hash: [u8; 32] = v[10..42].try_into().expect("32 bytes");
    let size = u64::from_le_bytes(v[42..50].try_into().expect("8 bytes"));
    let d = Digest { function, hash, size };
    let entry = match v[0] {
        TAG_BLOB => Entry::Blob(d),
        TAG_ACTION => Entry::Action { instance: String::from_utf8(v[50..].to_vec()).map_err(|_| bad())?, action: d },
        _ => return Err(bad()),
    };
    Ok((entry, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let d = DigestFunction::Sha256.digest_of(b"x");
        for e in [Entry::Blob(d), Entry::Action { instance: "main/linux".into(), action: d }] {
            assert_eq!(decode(&encode(&e, 77)).unwrap(), (e, 77));
        }
        assert!(decode(&[9; 50]).is_err());
    }
}
