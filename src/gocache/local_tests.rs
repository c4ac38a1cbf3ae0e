//! Unit tests of the local tier (beside `local.rs`).

use super::*;

fn aid(n: u8) -> ActionId {
    ActionId([n; 32])
}

fn store(max_size: u64) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(&dir.path().join("cairn"), max_size).unwrap();
    (dir, s)
}

fn set_mtime(path: &Path, ago: Duration) {
    let f = fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

fn tmp_is_empty(s: &LocalStore) -> bool {
    fs::read_dir(&s.tmp).unwrap().next().is_none()
}

#[test]
fn put_then_get_round_trips() {
    let (_d, s) = store(1 << 30);
    let before = now_nanos();
    let put = s.put_bytes(&aid(1), b"hello").unwrap();
    assert_eq!(put.output, OutputId::of(b"hello"));
    assert_eq!(put.size, 5);
    assert!(put.time_nanos >= before);
    assert!(put.path.is_absolute());
    assert!(put.path.ends_with(format!("o/{}/{}", &put.output.to_hex()[..2], put.output.to_hex())));
    assert_eq!(fs::read(&put.path).unwrap(), b"hello");

    assert_eq!(s.get(&aid(1)).unwrap(), Some(put));
    assert_eq!(s.get(&aid(2)).unwrap(), None);
    assert!(tmp_is_empty(&s), "temp files are renamed away");
}

#[test]
fn empty_outputs_are_real_files() {
    let (_d, s) = store(1 << 30);
    let e = s.put_bytes(&aid(1), b"").unwrap();
    assert_eq!(e.output, OutputId::EMPTY);
    assert_eq!(fs::metadata(&e.path).unwrap().len(), 0);
    assert_eq!(s.get(&aid(1)).unwrap().unwrap().size, 0);
}

#[test]
fn shared_outputs_share_one_file() {
    let (_d, s) = store(1 << 30);
    let a = s.put_bytes(&aid(1), b"same").unwrap();
    let b = s.put_bytes(&aid(2), b"same").unwrap();
    assert_eq!(a.path, b.path);
    assert_eq!(fs::read(&a.path).unwrap(), b"same");
    assert!(s.get(&aid(1)).unwrap().is_some() && s.get(&aid(2)).unwrap().is_some());
    assert!(tmp_is_empty(&s));
}

#[test]
fn a_put_repairs_a_corrupt_object_of_the_right_size() {
    let (_d, s) = store(1 << 30);
    let e = s.put_bytes(&aid(1), b"twelve bytes").unwrap();
    // Same size, wrong bytes: the size check cannot see it.
    fs::write(&e.path, b"TWELVE BYTES").unwrap();
    let handed_out = fs::File::open(&e.path).unwrap();
    s.put_bytes(&aid(2), b"twelve bytes").unwrap();
    assert_eq!(fs::read(&e.path).unwrap(), b"twelve bytes", "the verified body replaced the corrupt one");
    // Replaced by a rename, not rewritten: an open handle keeps what it had.
    assert_eq!(io::read_to_string(handed_out).unwrap(), "TWELVE BYTES");
    assert!(tmp_is_empty(&s));
}

#[test]
fn a_re_put_replaces_the_action_entry() {
    let (_d, s) = store(1 << 30);
    s.put_bytes(&aid(1), b"old").unwrap();
    let new = s.put_bytes(&aid(1), b"new").unwrap();
    assert_eq!(s.get(&aid(1)).unwrap(), Some(new));
}

#[test]
fn hits_are_rechecked_against_the_output_file() {
    let (_d, s) = store(1 << 30);
    let e = s.put_bytes(&aid(1), b"twelve bytes").unwrap();
    fs::write(&e.path, b"short").unwrap();
    assert_eq!(s.get(&aid(1)).unwrap(), None, "wrong size is a miss");
    fs::remove_file(&e.path).unwrap();
    assert_eq!(s.get(&aid(1)).unwrap(), None, "missing output is a miss");
    // Putting again repairs the entry (the wrong-size file is replaced).
    fs::write(&e.path, b"short").unwrap();
    s.put_bytes(&aid(1), b"twelve bytes").unwrap();
    assert_eq!(fs::read(&e.path).unwrap(), b"twelve bytes");
    assert!(s.get(&aid(1)).unwrap().is_some());
}

#[test]
fn malformed_metadata_is_a_miss() {
    let (_d, s) = store(1 << 30);
    let e = s.put_bytes(&aid(1), b"x").unwrap();
    let meta = s.action_path(&aid(1));
    let good = fs::read_to_string(&meta).unwrap();
    let other = good.replace(&aid(1).to_hex(), &aid(2).to_hex());
    let cases: [Vec<u8>; 7] = [
        Vec::new(),
        b"garbage\n".to_vec(),
        good.trim_end().into(), // no newline: a torn write
        good.replace("v1", "v9").into(),
        other.into(), // a file that belongs to another action
        format!("{} extra\n", good.trim_end()).into(),
        vec![0xff, 0xfe, b'\n'], // not UTF-8
    ];
    for text in cases {
        fs::write(&meta, &text).unwrap();
        assert_eq!(s.get(&aid(1)).unwrap(), None, "{:?}", String::from_utf8_lossy(&text));
    }
    fs::write(&meta, good).unwrap();
    assert_eq!(s.get(&aid(1)).unwrap().unwrap().path, e.path);
}

#[test]
fn parse_meta_reads_what_commit_writes() {
    let out = OutputId::of(b"z");
    let text = format!("v1 {} {} 1 -5\n", aid(3).to_hex(), out.to_hex());
    assert_eq!(parse_meta(&text, &aid(3)), Some((out, 1, -5)));
    assert_eq!(parse_meta(&text, &aid(4)), None);
}

#[test]
fn hits_refresh_stale_mtimes() {
    let (_d, s) = store(1 << 30);
    let e = s.put_bytes(&aid(1), b"lru").unwrap();
    let day = Duration::from_secs(86_400);
    set_mtime(&e.path, day);
    set_mtime(&s.action_path(&aid(1)), day);
    s.get(&aid(1)).unwrap().unwrap();
    for p in [&e.path, &s.action_path(&aid(1))] {
        let mtime = fs::metadata(p).unwrap().modified().unwrap();
        assert!(age(mtime, SystemTime::now()) < Duration::from_secs(60), "{}", p.display());
    }
}

#[test]
fn dropped_temp_files_are_removed() {
    let (_d, s) = store(1 << 30);
    let t = s.temp_file().unwrap();
    let p = t.path().to_path_buf();
    assert!(p.exists());
    drop(t);
    assert!(!p.exists());
}

#[test]
fn trim_removes_least_recently_used_down_to_90_percent() {
    let (_d, s) = store(10 * BLOCK);
    let mut s = s;
    s.keep_recent = Duration::from_secs(60);
    // 6 entries of 1 block output + 1 block metadata = 12 blocks > 10.
    let entries: Vec<Entry> = (0..6u8).map(|i| s.put_bytes(&aid(i), &[i; 100]).unwrap()).collect();
    for (i, e) in entries.iter().enumerate() {
        let ago = Duration::from_secs(3600 * (10 - i as u64)); // entry 0 is the oldest
        set_mtime(&e.path, ago);
        set_mtime(&s.action_path(&aid(i as u8)), ago);
    }
    let stats = s.trim(&AtomicBool::new(false)).unwrap();
    assert_eq!(stats.before, 12 * BLOCK);
    // Down to <= 9 blocks: the 3 oldest files go (entry 0's two files and one of entry 1's).
    assert_eq!(stats.removed_files, 3);
    assert_eq!(s.get(&aid(0)).unwrap(), None);
    assert_eq!(s.get(&aid(1)).unwrap(), None);
    for i in 2..6u8 {
        assert!(s.get(&aid(i)).unwrap().is_some(), "entry {i} survives");
    }
    // Under the bound now: nothing more to do.
    assert_eq!(s.trim(&AtomicBool::new(false)).unwrap().removed_files, 0);
}

#[test]
fn trim_never_removes_recently_used_files() {
    let (_d, s) = store(BLOCK);
    for i in 0..4u8 {
        s.put_bytes(&aid(i), &[i; 10]).unwrap();
    }
    let stats = s.trim(&AtomicBool::new(false)).unwrap();
    assert_eq!(stats.removed_files, 0, "everything was used just now");
    assert!((0..4u8).all(|i| s.get(&aid(i)).unwrap().is_some()));
}

#[test]
fn trim_stops_when_cancelled_and_cleans_stale_temps() {
    let (_d, mut s) = store(BLOCK);
    s.keep_recent = Duration::ZERO;
    for i in 0..4u8 {
        s.put_bytes(&aid(i), &[i; 10]).unwrap();
    }
    assert_eq!(s.trim(&AtomicBool::new(true)).unwrap(), TrimStats::default());
    assert!((0..4u8).all(|i| s.get(&aid(i)).unwrap().is_some()));

    let stale = s.temp_file().unwrap();
    let fresh = s.temp_file().unwrap();
    set_mtime(stale.path(), Duration::from_secs(2 * 86_400));
    s.trim(&AtomicBool::new(false)).unwrap();
    assert!(!stale.path().exists());
    assert!(fresh.path().exists());
}

#[test]
fn trim_if_due_runs_once_per_interval() {
    let (_d, s) = store(1 << 30);
    let cancel = AtomicBool::new(false);
    assert!(s.trim_if_due(&cancel, || {}).unwrap().is_some(), "first time: due");
    assert!(s.trim_if_due(&cancel, || {}).unwrap().is_none(), "just trimmed");
    set_mtime(&s.root.join("trim.txt"), TRIM_INTERVAL + Duration::from_secs(60));
    assert!(s.trim_if_due(&cancel, || {}).unwrap().is_some(), "stamp expired");
}

#[test]
fn trim_never_removes_a_file_used_after_its_scan() {
    let (_d, mut s) = store(1);
    s.keep_recent = Duration::from_secs(60);
    let used = s.put_bytes(&aid(1), b"used during the trim").unwrap();
    let unused = s.put_bytes(&aid(2), b"not used").unwrap();
    let hour = Duration::from_secs(3600);
    for a in [1, 2] {
        set_mtime(&s.action_path(&aid(a)), hour);
    }
    set_mtime(&used.path, hour);
    set_mtime(&unused.path, hour);
    // The scan sees everything an hour old; then a build gets entry 1
    // before the trim reaches it.
    let stats = s
        .trim_with(&AtomicBool::new(false), || {
            assert!(s.get(&aid(1)).unwrap().is_some());
        })
        .unwrap();
    assert!(used.path.exists(), "a file handed to go during the trim was deleted");
    assert!(s.get(&aid(1)).unwrap().is_some());
    assert!(!unused.path.exists(), "unused old files still go");
    assert_eq!(stats.removed_files, 2, "entry 2's output and metadata: {stats:?}");
}

#[test]
fn go_clean_cache_clears_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let gocache = dir.path().join("gocache");
    let s = LocalStore::open(&gocache.join("cairn"), 1 << 30).unwrap();
    assert!(!s.clear_if_go_cleaned(&gocache).unwrap(), "a new store has nothing to clear");
    let e = s.put_bytes(&aid(1), b"kept").unwrap();
    assert!(!s.clear_if_go_cleaned(&gocache).unwrap(), "marker present: nothing to do");
    assert!(s.get(&aid(1)).unwrap().is_some());

    // What `go clean -cache` does: remove $GOCACHE/[0-9a-f][0-9a-f].
    fs::remove_dir_all(gocache.join("00")).unwrap();
    assert!(s.clear_if_go_cleaned(&gocache).unwrap());
    assert_eq!(s.get(&aid(1)).unwrap(), None);
    assert!(!e.path.exists());
    s.remove_cleared();
    assert!(tmp_is_empty(&s));
    // The store works on, and the marker is back.
    s.put_bytes(&aid(1), b"again").unwrap();
    assert!(!s.clear_if_go_cleaned(&gocache).unwrap());
    assert!(s.get(&aid(1)).unwrap().is_some());
}
