//! Persistent entry and byte counters. Each change to AC or CAS adds a merge
//! operand (a signed delta) to the same RocksDB write batch as the change, so
//! the counters are exactly as durable as the data and start-up reads them
//! instead of scanning. An in-memory mirror answers `stats()` without I/O.

use std::sync::atomic::{AtomicI64, Ordering};

use rocksdb::{ColumnFamily, MergeOperands, WriteBatch, DB};

use crate::error::Result;

const CAS_COUNT: &[u8] = b"cas_count";
const CAS_BYTES: &[u8] = b"cas_bytes";
const AC_COUNT: &[u8] = b"ac_count";
const AC_BYTES: &[u8] = b"ac_bytes";
const AC_HITS: &[u8] = b"ac_hits";
const AC_MISSES: &[u8] = b"ac_misses";
const EVICTIONS: &[u8] = b"evictions";
const MIN_AGE_OVERRUNS: &[u8] = b"min_age_overruns";

/// A point-in-time copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub cas_count: i64,
    pub cas_bytes: i64,
    pub ac_count: i64,
    pub ac_bytes: i64,
    /// GetActionResult lookups that found an entry / found none.
    pub ac_hits: i64,
    pub ac_misses: i64,
    /// Entries removed to keep within the size limit.
    pub evictions: i64,
    /// Times eviction stopped short because every entry was younger than the minimum age.
    pub min_age_overruns: i64,
}

impl Stats {
    /// Bytes held by AC and CAS together: what `--max-size` bounds.
    pub fn total_bytes(&self) -> i64 {
        self.cas_bytes + self.ac_bytes
    }
}

pub(super) struct Counters {
    cas_count: AtomicI64,
    cas_bytes: AtomicI64,
    ac_count: AtomicI64,
    ac_bytes: AtomicI64,
    /// Lookup and eviction totals; their unsaved part is written by the
    /// background flusher (a lookup never costs a write of its own).
    events: [AtomicI64; 4],
    unsaved: [AtomicI64; 4],
}

/// Indexes into `events`/`unsaved`, with their `meta` keys.
const HITS: usize = 0;
const MISSES: usize = 1;
const EVICTED: usize = 2;
const OVERRUNS: usize = 3;
const EVENT_KEYS: [&[u8]; 4] = [AC_HITS, AC_MISSES, EVICTIONS, MIN_AGE_OVERRUNS];

fn decode(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

/// RocksDB merge operator: the value is the sum of all i64 deltas.
pub(super) fn add_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.map(decode).unwrap_or(0);
    for op in operands {
        sum = sum.wrapping_add(decode(op));
    }
    Some(sum.to_le_bytes().to_vec())
}

impl Counters {
    pub(super) fn load(db: &DB, cf: &ColumnFamily) -> Result<Counters> {
        let get = |k: &[u8]| -> Result<i64> { Ok(db.get_cf(cf, k)?.map(|v| decode(&v)).unwrap_or(0)) };
        Ok(Counters {
            cas_count: AtomicI64::new(get(CAS_COUNT)?),
            cas_bytes: AtomicI64::new(get(CAS_BYTES)?),
            ac_count: AtomicI64::new(get(AC_COUNT)?),
            ac_bytes: AtomicI64::new(get(AC_BYTES)?),
            events: [
                AtomicI64::new(get(AC_HITS)?),
                AtomicI64::new(get(AC_MISSES)?),
                AtomicI64::new(get(EVICTIONS)?),
                AtomicI64::new(get(MIN_AGE_OVERRUNS)?),
            ],
            unsaved: Default::default(),
        })
    }

    pub(super) fn snapshot(&self) -> Stats {
        Stats {
            cas_count: self.cas_count.load(Ordering::Relaxed),
            cas_bytes: self.cas_bytes.load(Ordering::Relaxed),
            ac_count: self.ac_count.load(Ordering::Relaxed),
            ac_bytes: self.ac_bytes.load(Ordering::Relaxed),
            ac_hits: self.events[HITS].load(Ordering::Relaxed),
            ac_misses: self.events[MISSES].load(Ordering::Relaxed),
            evictions: self.events[EVICTED].load(Ordering::Relaxed),
            min_age_overruns: self.events[OVERRUNS].load(Ordering::Relaxed),
        }
    }

    fn count(&self, i: usize, n: i64) {
        self.events[i].fetch_add(n, Ordering::Relaxed);
        self.unsaved[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an ActionCache lookup.
    pub(super) fn count_lookup(&self, hit: bool) {
        self.count(if hit { HITS } else { MISSES }, 1);
    }

    /// Turns one counted hit into a miss (an incomplete ActionCache result).
    pub(super) fn hit_was_a_miss(&self) {
        self.count(HITS, -1);
        self.count(MISSES, 1);
    }

    pub(super) fn count_evictions(&self, n: u64) {
        self.count(EVICTED, n as i64);
    }

    pub(super) fn count_min_age_overrun(&self) {
        self.count(OVERRUNS, 1);
    }

    /// Moves unsaved event counts into `batch`; false when there were none.
    pub(super) fn save_lookups(&self, batch: &mut WriteBatch, cf: &ColumnFamily) -> bool {
        let mut any = false;
        for (i, key) in EVENT_KEYS.iter().enumerate() {
            let n = self.unsaved[i].swap(0, Ordering::Relaxed);
            if n != 0 {
                batch.merge_cf(cf, key, n.to_le_bytes());
                any = true;
            }
        }
        any
    }

    /// Adds CAS deltas to `batch`; call `applied_cas` once the batch is written.
    pub(super) fn add_cas(&self, batch: &mut WriteBatch, cf: &ColumnFamily, count: i64, bytes: i64) {
        batch.merge_cf(cf, CAS_COUNT, count.to_le_bytes());
        batch.merge_cf(cf, CAS_BYTES, bytes.to_le_bytes());
    }

    pub(super) fn applied_cas(&self, count: i64, bytes: i64) {
        self.cas_count.fetch_add(count, Ordering::Relaxed);
        self.cas_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds AC deltas to `batch`; call `applied_ac` once the batch is written.
    pub(super) fn add_ac(&self, batch: &mut WriteBatch, cf: &ColumnFamily, count: i64, bytes: i64) {
        batch.merge_cf(cf, AC_COUNT, count.to_le_bytes());
        batch.merge_cf(cf, AC_BYTES, bytes.to_le_bytes());
    }

    pub(super) fn applied_ac(&self, count: i64, bytes: i64) {
        self.ac_count.fetch_add(count, Ordering::Relaxed);
        self.ac_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
