//! Unit tests of the store's safety rules: transient faults never delete
//! data, orphans are reclaimed, a lost file is repaired by the next upload,
//! uses noted during an eviction round protect their entries, and existence
//! checks read only the index.

use super::*;
use crate::digest::DigestFunction;

fn blob(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)).collect()
}

fn put_blob(store: &Store, seed: u8, size: usize) -> Digest {
    let data = blob(size, seed);
    let d = DigestFunction::Sha256.digest_of(&data);
    store.put(d, &data).unwrap();
    d
}

/// A store with a manual clock (no background upkeep) and no minimum age.
fn open_manual(dir: &Path, max_size: u64) -> (Store, Clock) {
    let clock = Clock::manual(1_000_000);
    let limits = Limits { max_size, min_age: Duration::ZERO, clock: clock.clone() };
    (Store::open_with(dir, limits).unwrap(), clock)
}

fn file_of(dir: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    dir.join("blobs").join(d.function.name()).join(&hex[..2]).join(hex)
}

#[test]
fn a_failure_to_open_that_may_pass_never_forgets_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_manual(dir.path(), u64::MAX);
    let data = blob(INLINE_MAX as usize + 1, 1);
    let d = DigestFunction::Sha256.digest_of(&data);
    store.put(d, &data).unwrap();
    // Swap the file for a symlink loop: opening it fails with ELOOP, an error
    // that says nothing about the blob (like EMFILE or EIO would).
    let path = file_of(dir.path(), &d);
    let aside = dir.path().join("aside");
    std::fs::rename(&path, &aside).unwrap();
    std::os::unix::fs::symlink(&path, &path).unwrap();
    let err = store.read(&d, 0, None).err().expect("the read fails");
    assert!(err.to_string().contains("opening blob file"), "{err}");
    // Nothing was forgotten: the record and counters stand, and once the
    // fault passes the blob reads back whole.
    assert_eq!(store.stats().cas_count, 1);
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    assert_eq!(store.read_all(&d).unwrap().unwrap(), data);
}

#[test]
fn a_lost_file_is_forgotten_and_an_upload_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_manual(dir.path(), u64::MAX);
    let data = blob(INLINE_MAX as usize + 100, 2);
    let d = DigestFunction::Sha256.digest_of(&data);
    store.put(d, &data).unwrap();
    std::fs::remove_file(file_of(dir.path(), &d)).unwrap();
    // The record still says present; a re-upload must not trust it.
    store.put(d, &data).unwrap();
    assert_eq!(store.read_all(&d).unwrap().unwrap(), data);
    assert_eq!(store.stats().cas_count, 1);
    assert_eq!(store.stats().cas_bytes, data.len() as i64);
    // A truly lost file (no re-upload) reads as absent and is forgotten.
    std::fs::remove_file(file_of(dir.path(), &d)).unwrap();
    assert!(store.read(&d, 0, None).unwrap().is_none());
    assert_eq!(store.stats().cas_count, 0);
    assert_eq!(store.stats().cas_bytes, 0);
}

#[test]
fn orphan_files_are_reclaimed_and_nothing_else_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_manual(dir.path(), u64::MAX);
    let kept = put_blob(&store, 3, INLINE_MAX as usize + 10);
    // What a crash between rename and record leaves: a file named like a
    // blob, with no record.
    let orphan = DigestFunction::Sha256.digest_of(b"orphan");
    let orphan_path = file_of(dir.path(), &orphan);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, vec![7u8; 300_000]).unwrap();
    // Not named like a blob: not ours to judge.
    let stranger = orphan_path.parent().unwrap().join("README");
    std::fs::write(&stranger, b"hands off").unwrap();

    assert_eq!(store.reclaim_orphans().unwrap(), 1);
    assert!(!orphan_path.exists());
    assert!(stranger.exists());
    assert_eq!(store.read_all(&kept).unwrap().unwrap().len(), INLINE_MAX as usize + 10);
    assert_eq!(store.stats().cas_count, 1);
    assert_eq!(store.reclaim_orphans().unwrap(), 0);
}

#[test]
fn uses_noted_during_an_eviction_round_protect_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open_manual(dir.path(), 10_000);
    let old: Vec<Digest> = (0..8u8)
        .map(|i| {
            clock.advance(1);
            put_blob(&store, i, 1000)
        })
        .collect();
    let action = DigestFunction::Sha256.digest_of(b"old action");
    store.put_action("", &action, &[1u8; 100]).unwrap();
    store.maintain().unwrap();
    clock.advance(10);
    let new: Vec<Digest> = (20..24u8).map(|i| put_blob(&store, i, 1000)).collect();

    // A round begins: uses are written...
    evict::flush_touches(&store.inner).unwrap();
    // ...then a build is told the oldest blobs are present, reads one, and
    // gets the (old) action result as a hit...
    assert!(store.find_missing(&old[..3]).unwrap().is_empty());
    assert!(store.read(&old[3], 0, None).unwrap().is_some());
    assert!(store.get_action("", &action).unwrap().is_some());
    // ...before the round evicts.
    evict::evict(&store.inner).unwrap();

    assert!(store.stats().total_bytes() <= 9_500, "{:?}", store.stats());
    for d in &old[..4] {
        assert!(store.read_all(d).unwrap().is_some(), "{d} was promised to a build, then evicted");
    }
    assert!(store.get_action("", &action).unwrap().is_some());
    // The next least recently used went instead.
    assert_eq!(store.find_missing(&old[4..7]).unwrap(), old[4..7].to_vec());
    assert!(store.find_missing(&new).unwrap().is_empty());
}

#[test]
fn a_blob_stored_again_counts_as_used() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open_manual(dir.path(), 3_500);
    let first = put_blob(&store, 1, 1000);
    clock.advance(1);
    let second = put_blob(&store, 2, 1000);
    store.maintain().unwrap();
    clock.advance(1);
    // A client uploads `first` again (BatchUpdateBlobs of a held blob).
    put_blob(&store, 1, 1000);
    clock.advance(1);
    put_blob(&store, 3, 1000);
    put_blob(&store, 4, 1000);
    store.maintain().unwrap();
    assert!(store.contains(&first).unwrap(), "a re-stored blob was evicted as if unused");
    assert!(!store.contains(&second).unwrap());
}

#[test]
fn existence_checks_read_only_the_index() {
    use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
    let dir = tempfile::tempdir().unwrap();
    let digests: Vec<Digest> = {
        let (store, _) = open_manual(dir.path(), u64::MAX);
        let ds = (0..64u8).map(|i| put_blob(&store, i, 200 << 10)).collect();
        for cf in [CF_CAS, CF_CAS_DATA, CF_ATIME, CF_LRU] {
            store.inner.db.flush_cf(store.inner.cf(cf)).unwrap();
        }
        store.close();
        ds
    };
    // A fresh open: a cold block cache, everything on disk.
    let (store, _) = open_manual(dir.path(), u64::MAX);
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut perf = PerfContext::default();
    perf.reset();
    assert!(store.find_missing(&digests).unwrap().is_empty());
    let read = perf.metric(PerfMetric::BlockReadByte);
    set_perf_stats(PerfStatsLevel::Disable);
    // 64 blobs of 200 KiB are 12.8 MiB of data; their index is a few KiB.
    assert!(read < 256 << 10, "FindMissingBlobs of 64 inline blobs read {read} bytes from disk");
    assert_eq!(store.read_all(&digests[5]).unwrap().unwrap(), blob(200 << 10, 5));
}

#[test]
fn evicted_inline_bytes_leave_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open_manual(dir.path(), 1 << 20);
    for _ in 0..2000 {
        clock.advance(1);
        // Incompressible, so the table files hold every byte.
        let mut data = vec![0u8; 10_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
        store.put(DigestFunction::Sha256.digest_of(&data), &data).unwrap();
    }
    let data_cf = store.inner.cf(CF_CAS_DATA);
    let on_disk = || store.inner.db.property_int_value_cf(data_cf, "rocksdb.total-sst-files-size").unwrap().unwrap();
    store.inner.db.flush_cf(data_cf).unwrap();
    let full = on_disk();
    assert!(full > 15 << 20, "{full}");
    // Evict down to the 1 MiB limit: ~19 MB of inline blobs deleted.
    store.maintain().unwrap();
    assert!(store.stats().cas_bytes <= 1 << 20);
    store.inner.db.flush_cf(data_cf).unwrap();
    // The deletions alone (a few small table files) would never trigger a
    // size-based compaction; the tombstone-heavy file must.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while on_disk() > 4 << 20 {
        assert!(std::time::Instant::now() < deadline, "{} bytes of table files for 1 MiB of live blobs", on_disk());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn uses_noted_just_before_close_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_000_000);
    let limits = Limits { max_size: 3_500, min_age: Duration::ZERO, clock: clock.clone() };
    let (first, second) = {
        let store = Store::open_with(dir.path(), limits.clone()).unwrap();
        let first = put_blob(&store, 1, 1000);
        clock.advance(1);
        let second = put_blob(&store, 2, 1000);
        store.maintain().unwrap();
        clock.advance(1);
        // Read by a build moments before the server is stopped.
        assert!(store.read_all(&first).unwrap().is_some());
        store.close();
        (first, second)
    };
    let store = Store::open_with(dir.path(), limits).unwrap();
    clock.advance(1);
    put_blob(&store, 3, 1000);
    put_blob(&store, 4, 1000);
    store.maintain().unwrap();
    assert!(store.contains(&first).unwrap(), "a use noted before shutdown was lost, so its blob was evicted first");
    assert!(!store.contains(&second).unwrap());
}

#[test]
fn room_is_made_while_a_large_upload_arrives() {
    let dir = tempfile::tempdir().unwrap();
    const MIB: usize = 1 << 20;
    let (store, clock) = open_manual(dir.path(), 10 * MIB as u64);
    let old: Vec<Digest> = (0..8u8)
        .map(|i| {
            clock.advance(1);
            put_blob(&store, i, MIB)
        })
        .collect();
    store.maintain().unwrap();
    clock.advance(1);
    let data = blob(4 * MIB, 99);
    let d = DigestFunction::Sha256.digest_of(&data);
    let mut w = store.begin_write(d).unwrap();
    w.write(&data[..3 * MIB]).unwrap();
    assert_eq!(store.uploads().spooled(), 3 * MIB as u64);
    // A round while the upload is still arriving makes room for its bytes.
    store.maintain().unwrap();
    let held = store.stats().total_bytes() as u64 + store.uploads().spooled();
    assert!(held <= 10 * MIB as u64, "stored + arriving = {held} bytes, over the 10 MiB limit");
    w.write(&data[3 * MIB..]).unwrap();
    w.commit().unwrap();
    assert_eq!(store.uploads().spooled(), 0, "a committed upload's bytes are counted as stored only");
    assert!(
        store.stats().total_bytes() as u64 <= 10 * MIB as u64 + MIB as u64,
        "the stored total overshoots by at most the bytes that arrived since the last round"
    );
    assert!(store.read_all(&d).unwrap().is_some());
    assert!(!store.contains(&old[0]).unwrap(), "the least recently used blob made room");
}
