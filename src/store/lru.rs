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

use std::collections::HashSet;
use std::sync::Mutex;

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

/// Keys used since the last flush. Bounded: past [`MAX_PENDING`] keys new
/// uses are dropped until the flusher catches up (they only sharpen LRU order).
pub(super) struct Touches {
    pending: Mutex<HashSet<EntryKey>>,
}

/// Upper bound on remembered uses between flushes (~50 MB at worst).
const MAX_PENDING: usize = 1_000_000;

impl Touches {
    pub(super) fn new() -> Touches {
        Touches { pending: Mutex::new(HashSet::new()) }
    }

    /// Notes that an entry was used.
    pub(super) fn touch(&self, entry: EntryKey) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < MAX_PENDING {
            p.insert(entry);
        }
    }

    /// Notes many uses under one lock acquisition.
    pub(super) fn touch_all(&self, entries: Vec<EntryKey>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING.saturating_sub(p.len());
        p.extend(entries.into_iter().take(room));
    }

    /// Takes every noted use.
    pub(super) fn drain(&self) -> HashSet<EntryKey> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
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
}
