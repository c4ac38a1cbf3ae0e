//! Least-recently-used eviction with batched bookkeeping.
//!
//! Every entry (CAS blob or action result) has a last-use time in the `atime`
//! column family (entry key → seconds) and a row in the `lru` column family
//! keyed by `(seconds, entry key)`, so iterating `lru` from the start yields
//! the least recently used entries first. Writes record their time in the
//! same batch as the data. Reads only note the key in memory ([`Touches`]);
//! a background flusher turns the noted keys into `atime`/`lru` updates once
//! a second, so a read never costs a RocksDB write of its own. The order is
//! exact LRU at one-second resolution, except that uses in the last second
//! before a crash are forgotten.
//!
//! Eviction never takes an entry whose use is noted but not yet written: it
//! checks [`Touches::contains`] under the store's `use_gate`, which readers
//! hold from their lookup until their use is noted. So an entry reported
//! present, or named by a result returned as a hit, is protected from that
//! moment, and for `--min-age` once the use is written.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// An entry's key in `atime`/`lru`: a kind byte, then the entry's own key.
pub(super) type EntryKey = Vec<u8>;

/// Kind byte for CAS entries (followed by the 33-byte CAS key).
pub(super) const KIND_CAS: u8 = b'c';
/// Kind byte for ActionCache entries (followed by the AC key).
pub(super) const KIND_AC: u8 = b'a';

/// Builds an entry key.
pub(super) fn entry_key(kind: u8, key: &[u8]) -> EntryKey {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(kind);
    k.extend_from_slice(key);
    k
}

/// The `lru` row for an entry used at `secs`: big-endian time first, so
/// RocksDB's byte order is time order.
pub(super) fn lru_key(secs: u64, entry: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(entry.len() + 8);
    k.extend_from_slice(&secs.to_be_bytes());
    k.extend_from_slice(entry);
    k
}

/// Splits an `lru` row back into (time, entry key).
pub(super) fn parse_lru_key(k: &[u8]) -> Option<(u64, &[u8])> {
    if k.len() < 9 {
        return None;
    }
    Some((u64::from_be_bytes(k[..8].try_into().ok()?), &k[8..]))
}

/// Where the store reads the time of a use: the system clock, or a manual
/// clock that tests and the LRU trace replay in `cairn bench` advance themselves.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Clock {
    /// A clock that stands still until [`Clock::advance`] moves it. A store
    /// with a manual clock runs no background upkeep: call `Store::maintain`.
    pub fn manual(start_secs: u64) -> Clock {
        Clock { manual: Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(start_secs))) }
    }

    /// True for a clock made by [`Clock::manual`].
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, secs: u64) {
        if let Some(m) = &self.manual {
            m.fetch_add(secs, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Seconds since the Unix epoch (or the manual clock's reading).
    pub fn now(&self) -> u64 {
        match &self.manual {
            Some(m) => m.load(std::sync::atomic::Ordering::Relaxed),
            None => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
            }
        }
    }
}

/// Keys used since the last flush, visible to eviction until they are
/// written: a use noted here protects its entry exactly as a written one
/// does. Bounded: past [`MAX_PENDING`] keys the caller that noted the use
/// writes the backlog itself before answering (backpressure; a use is never
/// dropped).
pub(super) struct Touches {
    pending: Mutex<HashSet<EntryKey>>,
    /// The keys a flush is writing right now; still "used" until written.
    flushing: Mutex<Arc<HashSet<EntryKey>>>,
    /// One flush at a time, so `flushing` always holds the one in progress.
    flush: Mutex<()>,
    /// Uses held before the caller must flush ([`MAX_PENDING`] outside tests).
    bound: usize,
}

/// Bound on remembered uses between flushes (~50 MB at worst).
const MAX_PENDING: usize = 1_000_000;

impl Touches {
    pub(super) fn new() -> Touches {
        Touches::with_bound(MAX_PENDING)
    }

    fn with_bound(bound: usize) -> Touches {
        Touches { pending: Mutex::new(HashSet::new()), flushing: Mutex::default(), flush: Mutex::new(()), bound }
    }

    /// Notes that an entry was used. True when the backlog is full and the
    /// caller must flush it.
    pub(super) fn touch(&self, entry: EntryKey) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(entry);
        p.len() >= self.bound
    }

    /// Notes many uses under one lock acquisition; true as for [`Touches::touch`].
    pub(super) fn touch_all(&self, entries: Vec<EntryKey>) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(entries);
        p.len() >= self.bound
    }

    /// True when `entry` was used since its last written use.
    pub(super) fn contains(&self, entry: &[u8]) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).contains(entry)
            || self.flushing.lock().unwrap_or_else(|e| e.into_inner()).contains(entry)
    }

    /// Runs `write` over every noted use. The keys stay visible to
    /// [`Touches::contains`] until `write` returns (and, if it fails, are
    /// noted again).
    pub(super) fn flush<T, E>(&self, write: impl FnOnce(&HashSet<EntryKey>) -> Result<T, E>) -> Result<T, E> {
        let _one = self.flush.lock().unwrap_or_else(|e| e.into_inner());
        let taken = {
            // Lock order: pending, then flushing (as in `contains`).
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let taken = Arc::new(std::mem::take(&mut *p));
            *self.flushing.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&taken);
            taken
        };
        let result = write(&taken);
        if result.is_err() {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(taken.iter().cloned());
        }
        *self.flushing.lock().unwrap_or_else(|e| e.into_inner()) = Arc::default();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_keys_sort_by_time() {
        let a = lru_key(5, &entry_key(KIND_CAS, b"zzz"));
        let b = lru_key(6, &entry_key(KIND_CAS, b"aaa"));
        let c = lru_key(256, &entry_key(KIND_AC, b"aaa"));
        assert!(a < b && b < c);
        let (t, e) = parse_lru_key(&c).unwrap();
        assert_eq!(t, 256);
        assert_eq!(e, entry_key(KIND_AC, b"aaa").as_slice());
        assert!(parse_lru_key(b"short").is_none());
    }

    #[test]
    fn uses_are_never_dropped_and_stay_visible_while_written() {
        let t = Touches::with_bound(3);
        assert!(!t.touch(b"a".to_vec()));
        assert!(!t.touch(b"b".to_vec()));
        // Full: the caller is told to write the backlog, and nothing is lost.
        assert!(t.touch_all(vec![b"c".to_vec(), b"d".to_vec()]));
        assert!([&b"a"[..], b"b", b"c", b"d"].iter().all(|k| t.contains(k)));
        let written = t
            .flush(|keys| {
                // Mid-write, every key still counts as used.
                assert!(keys.iter().all(|k| t.contains(k)));
                Ok::<usize, ()>(keys.len())
            })
            .unwrap();
        assert_eq!(written, 4);
        assert!(!t.contains(b"a"));
        // A failed write notes the uses again.
        t.touch(b"e".to_vec());
        assert!(t.flush(|_| Err::<(), ()>(())).is_err());
        assert!(t.contains(b"e"));
    }
}
