//! Unit tests of the store over a temp dir.

use super::*;
use crate::digest::DigestFunction;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn blob(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn small_and_large_blobs_round_trip() {
    let (_dir, store) = open();
    for size in [1usize, 1000, INLINE_MAX as usize, INLINE_MAX as usize + 1, 3 << 20] {
        let data = blob(size, 7);
        let d = DigestFunction::Sha256.digest_of(&data);
        assert_eq!(store.find_missing(&[d]).unwrap(), vec![d]);
        store.put(d, &data).unwrap();
        assert!(store.find_missing(&[d]).unwrap().is_empty());
        assert_eq!(store.read_all(&d).unwrap().unwrap(), data);
        // A range read.
        let mut r = store.read(&d, 1, Some(10)).unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(c) = r.next_chunk(3).unwrap() {
            got.extend_from_slice(&c);
        }
        assert_eq!(got, data[1..(1 + 10).min(size)]);
    }
}

#[test]
fn empty_blob_is_always_present() {
    let (_dir, store) = open();
    for f in DigestFunction::ALL {
        let e = f.empty();
        assert!(store.find_missing(&[e]).unwrap().is_empty());
        assert_eq!(store.read_all(&e).unwrap().unwrap(), Vec::<u8>::new());
    }
}

#[test]
fn wrong_hash_or_size_stores_nothing() {
    let (_dir, store) = open();
    let data = blob(5000, 1);
    let d = DigestFunction::Sha256.digest_of(&data);
    let mut other = data.clone();
    other[0] ^= 1;
    let err = store.put(d, &other).unwrap_err().to_string();
    assert!(err.contains("hashes to"), "{err}");
    assert!(store.put(d, &data[..10]).unwrap_err().to_string().contains("ended after 10"));
    let mut w = store.begin_write(d).unwrap();
    w.write(&data).unwrap();
    assert!(w.write(b"x").unwrap_err().to_string().contains("more than"));
    drop(w);
    assert_eq!(store.find_missing(&[d]).unwrap(), vec![d]);
    assert_eq!(store.stats(), Stats::default());
    // Same hash, wrong size: a different, absent blob.
    store.put(d, &data).unwrap();
    let wrong_size = Digest { size: d.size + 1, ..d };
    assert_eq!(store.find_missing(&[wrong_size]).unwrap(), vec![wrong_size]);
    assert!(store.read(&wrong_size, 0, None).unwrap().is_none());
}

#[test]
fn counters_persist_and_count_duplicates_once() {
    let dir = tempfile::tempdir().unwrap();
    let big = blob(INLINE_MAX as usize + 10, 3);
    let small = blob(100, 4);
    {
        let store = Store::open(dir.path()).unwrap();
        for data in [&big, &small, &big, &small] {
            store.put(DigestFunction::Sha256.digest_of(data), data).unwrap();
        }
        let a = DigestFunction::Blake3.digest_of(b"action");
        store.put_action("", &a, b"result-1").unwrap();
        store.put_action("", &a, b"result-22").unwrap();
        store.put_action("other", &a, b"r").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(s.cas_count, 2);
    assert_eq!(s.cas_bytes, (big.len() + small.len()) as i64);
    assert_eq!(s.ac_count, 2);
    // Results count their key bytes too: stored in `ac`, `atime` and `lru`
    // (keys: instance, NUL, function tag, 32 hash bytes).
    assert_eq!(s.ac_bytes, ("result-22".len() + 3 * 34 + "r".len() + 3 * (5 + 34)) as i64);
    let a = DigestFunction::Blake3.digest_of(b"action");
    assert_eq!(store.get_action("", &a).unwrap().unwrap(), b"result-22");
    assert_eq!(store.get_action("other", &a).unwrap().unwrap(), b"r");
    assert!(store.get_action("third", &a).unwrap().is_none());
}

#[test]
fn abandoned_uploads_leave_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(INLINE_MAX as usize * 2, 9);
    let d = DigestFunction::Sha256.digest_of(&data);
    let store = Store::open(dir.path()).unwrap();
    let mut w = store.begin_write(d).unwrap();
    w.write(&data[..1000]).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    // A leftover from a crash is wiped at the next open.
    std::fs::write(dir.path().join("tmp").join("stale"), b"x").unwrap();
    drop(store);
    let _store = Store::open(dir.path()).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn read_past_end_is_out_of_range() {
    let (_dir, store) = open();
    let data = blob(10, 0);
    let d = DigestFunction::Sha256.digest_of(&data);
    store.put(d, &data).unwrap();
    assert!(matches!(store.read(&d, 11, None), Err(Error::OutOfRange(_))));
    assert_eq!(store.read(&d, 10, None).unwrap().unwrap().remaining(), 0);
}

#[test]
fn missing_blob_file_reads_as_absent() {
    let (dir, store) = open();
    let data = blob(INLINE_MAX as usize + 1, 5);
    let d = DigestFunction::Sha256.digest_of(&data);
    store.put(d, &data).unwrap();
    let hex = d.hex();
    std::fs::remove_file(dir.path().join("blobs/sha256").join(&hex[..2]).join(&hex)).unwrap();
    assert!(store.read(&d, 0, None).unwrap().is_none());
    assert_eq!(store.find_missing(&[d]).unwrap(), vec![d]);
    assert_eq!(store.stats().cas_count, 0);
}

/// A store with a manual clock, a small limit and no minimum age.
fn open_small(max_size: u64) -> (tempfile::TempDir, Store, Clock) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_000_000);
    let limits = Limits { max_size, min_age: Duration::ZERO, clock: clock.clone() };
    let store = Store::open_with(dir.path(), limits).unwrap();
    (dir, store, clock)
}

fn put_blob(store: &Store, seed: u8, size: usize) -> Digest {
    let data = blob(size, seed);
    let d = DigestFunction::Sha256.digest_of(&data);
    store.put(d, &data).unwrap();
    d
}

#[test]
fn evicts_least_recently_used_first() {
    let (_dir, store, clock) = open_small(10_000);
    let ds: Vec<Digest> = (0..8u8)
        .map(|i| {
            clock.advance(1);
            put_blob(&store, i, 1000)
        })
        .collect();
    // Use the oldest two again: they become the most recent.
    clock.advance(1);
    store.read_all(&ds[0]).unwrap().unwrap();
    assert!(store.find_missing(&[ds[1]]).unwrap().is_empty());
    store.maintain().unwrap();
    // Four more push the store to 12,000 bytes; eviction goes to 95% of 10,000.
    clock.advance(1);
    let more: Vec<Digest> = (8..12u8).map(|i| put_blob(&store, i, 1000)).collect();
    store.maintain().unwrap();
    let s = store.stats();
    assert!(s.total_bytes() <= 9_500, "{s:?}");
    assert_eq!(s.evictions, 3);
    // Evicted: the three least recently used (2, 3, 4); kept: the rest.
    assert_eq!(store.find_missing(&ds[2..5]).unwrap(), ds[2..5].to_vec());
    assert!(store.find_missing(&[ds[0], ds[1], ds[5], ds[6], ds[7]]).unwrap().is_empty());
    assert!(store.find_missing(&more).unwrap().is_empty());
}

#[test]
fn action_results_are_evicted_too_and_min_age_protects() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(5_000);
    let limits = Limits { max_size: 3_000, min_age: Duration::from_secs(100), clock: clock.clone() };
    let store = Store::open_with(dir.path(), limits).unwrap();
    let a = DigestFunction::Sha256.digest_of(b"action");
    store.put_action("", &a, &[7u8; 1500]).unwrap();
    clock.advance(50);
    put_blob(&store, 1, 2000);
    store.maintain().unwrap();
    // Over the limit, but everything is younger than the minimum age.
    assert_eq!(store.stats().evictions, 0);
    assert_eq!(store.stats().min_age_overruns, 1);
    // Once old enough, the least recently used (the action result) goes.
    clock.advance(60);
    store.maintain().unwrap();
    assert_eq!(store.stats().evictions, 1);
    assert!(store.get_action("", &a).unwrap().is_none());
    assert_eq!(store.stats().ac_count, 0);
}

#[test]
fn evicted_files_are_deleted_and_counters_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1);
    let big = INLINE_MAX as usize + 1000;
    {
        let limits = Limits { max_size: (big * 2) as u64, min_age: Duration::ZERO, clock: clock.clone() };
        let store = Store::open_with(dir.path(), limits).unwrap();
        for i in 0..3u8 {
            clock.advance(1);
            put_blob(&store, i, big);
        }
        store.maintain().unwrap();
        assert_eq!(store.stats().cas_count, 1);
        store.close();
    }
    let files = walk_files(&dir.path().join("blobs"));
    assert_eq!(files, 1, "evicted blob files must be deleted");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.stats().cas_count, 1);
    assert_eq!(store.stats().evictions, 2);
}

fn walk_files(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

/// Captures what `f` logs, as text.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = sink.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

#[test]
fn a_min_age_overrun_caused_by_uploads_in_progress_says_so() {
    // Stored entries alone are under the limit; an upload in progress puts
    // the total over it. The warning must show both, or it reads as "over
    // the limit" beside a stored figure under it.
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(5_000);
    let limits = Limits { max_size: 1_000_000, min_age: Duration::from_secs(100), clock: clock.clone() };
    let store = Store::open_with(dir.path(), limits).unwrap();
    put_blob(&store, 1, 2000);
    let big = blob(2_000_000, 9);
    let mut upload = store.begin_write(DigestFunction::Sha256.digest_of(&big)).unwrap();
    upload.write(&big[..1_500_000]).unwrap();
    let text = logged(|| store.maintain().unwrap());
    assert_eq!(store.stats().min_age_overruns, 1, "{text}");
    assert!(text.contains("uploads_in_progress=1500000"), "{text}");
    assert!(text.contains("stored entries plus uploads in progress"), "{text}");
}
