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
    assert!(store
        .put(d, &data[..10])
        .unwrap_err()
        .to_string()
        .contains("ended after 10"));
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
    assert_eq!(s.ac_bytes, ("result-22".len() + 1) as i64);
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
