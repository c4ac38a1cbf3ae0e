//! Use logs: how every node tells the evictor which objects it used, without
//! rewriting the objects (a copy-onto-itself per hit would cost a PUT and the
//! bytes) and without conditional writes (Garage ignores If-None-Match).
//!
//! A node collects the keys it read or found present, deduplicated, whether
//! it asked the bucket or served them from its local store (a warm node's
//! hits must keep the bucket's copies young for the next cold node), and
//! every few seconds (and at a graceful stop) writes them as one small
//! object under `_cairn/uses/`, a name no other writer uses. A line is a key relative to the bucket prefix,
//! optionally followed by a tab and a time in milliseconds since the epoch.
//! A line without a time was used at the log's own `last_modified`: the
//! bucket's clock, so no node's clock matters, and a little late (by at most
//! the flush interval), which only makes the evictor more careful. The
//! evictor's summary carries explicit times, because it restates old uses.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::Bucket;
use crate::store::tier::Used;

/// The folder of use logs, under the bucket prefix.
pub const USES_DIR: &str = "_cairn/uses";

/// Distinct keys a node keeps between two flushes: about 100 bytes each in
/// memory, so at most ~20 MiB, and a log of at most ~15 MiB. Reaching it
/// flushes at once; uses noted while that flush is under way are dropped
/// (counted): a dropped use only makes its object look older to the evictor.
pub const MAX_PENDING_USES: usize = 200_000;

/// Keys used since the last flush (relative to the bucket prefix),
/// de-duplicated, at most `max` of them.
#[derive(Debug)]
pub struct Recorder {
    pending: Mutex<HashSet<String>>,
    max: usize,
    /// Uses not kept because `max` were pending.
    dropped: AtomicU64,
    /// Woken when the set is full, so the background task flushes early.
    pub(super) full: std::sync::Arc<tokio::sync::Notify>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::with_max(MAX_PENDING_USES)
    }
}

impl Recorder {
    /// A recorder keeping at most `max` keys between flushes.
    pub fn with_max(max: usize) -> Recorder {
        Recorder { pending: Mutex::default(), max, dropped: AtomicU64::new(0), full: Default::default() }
    }

    /// Notes one use of `key`: a set insert, or a count when the set is full.
    pub fn note(&self, key: String) {
        self.note_all(std::iter::once(key));
    }

    /// Notes uses of `keys` under one lock.
    pub fn note_all(&self, keys: impl IntoIterator<Item = String>) {
        self.insert(keys, true);
    }

    /// Adds `keys` up to the bound, counting the rest; wakes the flush when
    /// the set fills if `wake`.
    fn insert(&self, keys: impl IntoIterator<Item = String>, wake: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if pending.len() < self.max {
                pending.insert(key);
                if wake && pending.len() == self.max {
                    self.full.notify_one();
                }
            } else if !pending.contains(&key) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Uses dropped so far because the set was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes every noted key, leaving none.
    pub fn take(&self) -> Vec<String> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<String> = pending.drain().collect();
        keys.sort();
        keys
    }

    /// Puts keys back after a flush failed, so no use is forgotten (as long
    /// as they fit: past `max` they are dropped and counted). Never wakes
    /// the flush: a bucket that refuses at once must not be retried in a loop.
    pub fn restore(&self, keys: Vec<String>) {
        self.insert(keys, false);
    }

    /// Keys waiting for the next flush.
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Bucket {
    /// Notes local hits as uses (see [`crate::store::tier::Tier::note_used`]):
    /// keys formatted and put in the pending set, nothing else.
    pub(super) fn note_local(&self, used: Used<'_>) {
        if self.opts.max_size.is_none() {
            return;
        }
        match used {
            Used::Blobs(blobs) => {
                self.uses.note_all(blobs.iter().filter(|d| !d.is_empty_blob()).map(Self::cas_key));
            }
            Used::Action { instance, action } => self.uses.note(Self::ac_key(instance, action)),
        }
    }
}

/// A log of keys used at the log's own time (what nodes write).
pub fn encode_plain(keys: &[String]) -> String {
    let mut out = String::with_capacity(keys.iter().map(|k| k.len() + 1).sum());
    for k in keys {
        out.push_str(k);
        out.push('\n');
    }
    out
}

/// A log of keys with their own times in ms (what the evictor's summary writes).
pub fn encode_timed(uses: &HashMap<String, i64>) -> String {
    let mut keys: Vec<&String> = uses.keys().collect();
    keys.sort();
    let mut out = String::new();
    for k in keys {
        out.push_str(&format!("{k}\t{}\n", uses[k]));
    }
    out
}

/// Folds one log into `into` (key → latest use in ms): each line's own time,
/// or `log_time_ms` for a line without one. Lines that are not keys (empty,
/// unparsable times) are skipped: a damaged log must not stop eviction.
pub fn fold(text: &str, log_time_ms: i64, into: &mut HashMap<String, i64>) {
    for line in text.lines() {
        let (key, time) = match line.split_once('\t') {
            Some((k, t)) => match t.trim().parse::<i64>() {
                Ok(t) => (k, t),
                Err(_) => continue,
            },
            None => (line, log_time_ms),
        };
        let key = key.trim();
        if key.is_empty() || key.starts_with("_cairn/") {
            continue;
        }
        let slot = into.entry(key.to_string()).or_insert(time);
        *slot = (*slot).max(time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_take_the_log_time_and_timed_lines_their_own() {
        let mut uses = HashMap::new();
        fold(&encode_plain(&["cas/sha256/aa".into(), "ac/-/sha256/bb".into()]), 1000, &mut uses);
        let summary: HashMap<String, i64> =
            [("cas/sha256/aa".to_string(), 500), ("cas/sha256/cc".to_string(), 3000)].into();
        fold(&encode_timed(&summary), 9999, &mut uses);
        assert_eq!(uses["cas/sha256/aa"], 1000, "the later of the two uses wins");
        assert_eq!(uses["ac/-/sha256/bb"], 1000);
        assert_eq!(uses["cas/sha256/cc"], 3000, "a summary's time is its own, not the log's");
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let mut uses = HashMap::new();
        fold("\n\ncas/sha256/aa\tnot-a-time\n_cairn/uses/x\ncas/sha256/bb\n", 7, &mut uses);
        assert_eq!(uses.len(), 1);
        assert_eq!(uses["cas/sha256/bb"], 7);
    }

    #[test]
    fn the_pending_set_is_bounded_and_counts_what_it_drops() {
        let r = Recorder::with_max(2);
        r.note("a".into());
        r.note("b".into());
        r.note("a".into());
        assert_eq!(r.dropped(), 0, "a key already pending is no new entry");
        r.note("c".into());
        r.note("d".into());
        assert_eq!((r.len(), r.dropped()), (2, 2));
        let keys = r.take();
        r.note("e".into());
        r.restore(keys);
        assert_eq!((r.len(), r.dropped()), (2, 3), "a restore past the bound drops and counts too");
    }

    #[tokio::test]
    async fn new_uses_filling_the_set_wake_the_flush_and_a_restore_does_not() {
        let ready = |r: &Recorder| {
            let full = r.full.clone();
            async move { tokio::time::timeout(std::time::Duration::ZERO, full.notified()).await.is_ok() }
        };
        let r = Recorder::with_max(2);
        r.restore(vec!["a".into(), "b".into()]);
        assert!(!ready(&r).await, "a restore after a failed flush woke the flush (a retry loop)");
        r.take();
        r.note("a".into());
        assert!(!ready(&r).await);
        r.note("b".into());
        assert!(ready(&r).await, "a full set did not wake the flush");
    }

    #[test]
    fn a_failed_flush_loses_nothing() {
        let r = Recorder::default();
        r.note("a".into());
        r.note("a".into());
        r.note("b".into());
        let keys = r.take();
        assert_eq!(keys, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.len(), 0);
        r.restore(keys);
        assert_eq!(r.len(), 2);
    }
}
