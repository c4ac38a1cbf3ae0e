//! Memory-only lookups: the same answers as blocking ones, or `WouldBlock`
//! whenever answering would wait (a table file, a held lock).

use std::sync::mpsc;
use std::time::Duration;

use super::nonblocking::{Mode, Nonblocking};
use super::*;
use crate::digest::DigestFunction;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn digest(text: &str) -> Digest {
    DigestFunction::Sha256.digest_of(text.as_bytes())
}

/// Runs `f` on another thread and fails, instead of hanging, if it waits.
fn without_waiting<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(10)).expect("a memory-only call waited")
}

#[test]
fn memory_only_lookups_answer_like_blocking_ones() {
    let (_dir, store) = open();
    let (held, absent) = (digest("held"), digest("absent"));
    store.put(held, b"held").unwrap();
    store.put_action("", &held, b"result").unwrap();
    let wanted = [held, absent, DigestFunction::Sha256.empty()];
    assert_eq!(store.find_missing_in(Mode::MemoryOnly, &wanted).unwrap(), Nonblocking::Ready(vec![absent]));
    assert_eq!(store.get_action_in(Mode::MemoryOnly, "", &held).unwrap(), Nonblocking::Ready(Some(b"result".to_vec())));
    assert_eq!(store.get_action_in(Mode::MemoryOnly, "", &absent).unwrap(), Nonblocking::Ready(None));
    assert_eq!(store.put_action_in(Mode::MemoryOnly, "", &absent, b"new").unwrap(), Nonblocking::Ready(()));
    assert_eq!(store.get_action("", &absent).unwrap(), Some(b"new".to_vec()));
    assert_eq!(store.stats().ac_count, 2);
}

#[test]
fn what_is_only_in_a_table_file_would_block_until_a_blocking_read_caches_it() {
    let (_dir, store) = open();
    let (action, blob) = (digest("action"), digest("blob"));
    store.put(blob, b"blob").unwrap();
    store.put_action("", &action, b"result").unwrap();
    // Out of the memtables into table files: nothing of them is cached yet.
    store.inner.db.flush_cfs_opt(&[store.inner.cf(CF_AC), store.inner.cf(CF_CAS)], &Default::default()).unwrap();

    assert_eq!(store.get_action_in(Mode::MemoryOnly, "", &action).unwrap(), Nonblocking::WouldBlock);
    assert_eq!(store.find_missing_in(Mode::MemoryOnly, &[blob]).unwrap(), Nonblocking::WouldBlock);
    assert_eq!(store.get_action("", &action).unwrap(), Some(b"result".to_vec()));
    assert!(store.find_missing(&[blob]).unwrap().is_empty());
    // The blocking reads brought the blocks into the cache.
    assert_eq!(
        store.get_action_in(Mode::MemoryOnly, "", &action).unwrap(),
        Nonblocking::Ready(Some(b"result".to_vec()))
    );
    assert_eq!(store.find_missing_in(Mode::MemoryOnly, &[blob]).unwrap(), Nonblocking::Ready(vec![]));
}

#[test]
fn a_held_gate_or_commit_lock_makes_memory_only_calls_would_block_not_wait() {
    let (_dir, store) = open();
    let action = digest("action");
    store.put_action("", &action, b"old").unwrap();

    let s = store.clone();
    let gate = store.inner.use_gate.write().unwrap(); // as eviction holds it
    let (got, missing) = without_waiting(move || {
        (
            s.get_action_in(Mode::MemoryOnly, "", &action).unwrap(),
            s.find_missing_in(Mode::MemoryOnly, &[action]).unwrap(),
        )
    });
    assert_eq!((got, missing), (Nonblocking::WouldBlock, Nonblocking::WouldBlock));
    drop(gate);

    let s = store.clone();
    let lock = store.inner.commit_lock.lock().unwrap(); // as another commit holds it
    let put = without_waiting(move || s.put_action_in(Mode::MemoryOnly, "", &action, b"new").unwrap());
    assert_eq!(put, Nonblocking::WouldBlock);
    drop(lock);
    assert_eq!(store.get_action("", &action).unwrap(), Some(b"old".to_vec()), "a declined put wrote nothing");
}
