//! The prefetch bookkeeping, without a server: what gets recorded, what
//! needs fetching, and how it is grouped into calls.

use super::super::local::Entry;
use super::super::manifest::{merge, MAX_AGE};
use super::*;

fn aid(n: u8) -> ActionId {
    ActionId([n; 32])
}

fn entry_of(data: &[u8], time: i64) -> RemoteEntry {
    RemoteEntry { output: OutputId::of(data), size: data.len() as u64, time_nanos: time }
}

fn local_entry(e: &RemoteEntry) -> Entry {
    Entry { output: e.output, size: e.size, time_nanos: e.time_nanos, path: "/x".into() }
}

#[test]
fn recorder_keeps_first_use_order_and_known_entries_only() {
    let r = Recorder::new(true);
    let (a, b) = (entry_of(b"a", 1), entry_of(b"b", 2));
    r.asked(&aid(3)); // a miss never put: left out
    r.asked(&aid(1));
    r.known(&aid(2), &local_entry(&b)); // a put without a get
    r.known(&aid(1), &local_entry(&a)); // the miss's put
    r.asked(&aid(1)); // asked again: keeps its place and entry
    assert_eq!(r.snapshot(), vec![(aid(1), a), (aid(2), b)]);

    let off = Recorder::new(false);
    off.known(&aid(1), &local_entry(&a));
    assert!(off.snapshot().is_empty());
}

#[test]
fn plan_comparison_looks_at_actions_and_outputs() {
    let (a, b) = (entry_of(b"a", 1), entry_of(b"b", 2));
    let plan = Plan::new(vec![(aid(1), a), (aid(2), b)]);
    assert!(plan.same_as(&[(aid(2), b), (aid(1), a)]), "order does not matter");
    assert!(!plan.same_as(&[(aid(1), a)]));
    assert!(!plan.same_as(&[(aid(1), a), (aid(2), b), (aid(3), b)]));
    assert!(!plan.same_as(&[(aid(1), a), (aid(2), a)]), "another output");
    let retimed = RemoteEntry { time_nanos: 9, ..a };
    assert!(plan.same_as(&[(aid(1), retimed), (aid(2), b)]), "time alone is not a change");
}

#[test]
fn sort_out_links_what_is_local_and_lists_the_rest_once() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(dir.path(), 1 << 30).unwrap();
    let here = b"already here".as_slice();
    let known = entry_of(here, 5);
    local.put_bytes(&aid(50), here).unwrap(); // the output is local, under another action
    local.put_bytes(&aid(1), b"mine already").unwrap();
    let shared = entry_of(b"shared output", 7);
    let other = entry_of(b"other", 8);
    let huge = RemoteEntry { size: 2 << 30, ..entry_of(b"huge", 9) };
    let order = vec![
        (aid(1), entry_of(b"something else", 1)), // local entry wins
        (aid(2), known),                          // output local: linked now
        (aid(3), shared),
        (aid(4), other),
        (aid(5), shared), // same output as aid(3): one download, two entries
        (aid(6), huge),   // bigger than the whole local cache: skipped
    ];
    let wanted = sort_out(&local, &order);
    let got: Vec<(OutputId, Vec<ActionId>)> =
        wanted.iter().map(|w| (w.output, w.actions.iter().map(|(a, _)| *a).collect())).collect();
    assert_eq!(got, vec![(shared.output, vec![aid(3), aid(5)]), (other.output, vec![aid(4)])]);
    let linked = local.get(&aid(2)).unwrap().expect("linked");
    assert_eq!((linked.output, linked.time_nanos), (known.output, 5), "keeps the remote time");
    assert_eq!(local.get(&aid(1)).unwrap().unwrap().output, OutputId::of(b"mine already"));
}

#[test]
fn groups_batch_small_outputs_and_send_large_ones_alone() {
    let w = |n: u8, size: u64| Wanted { output: OutputId([n; 32]), size, actions: Vec::new() };
    let (max, big) = (client::BATCH_BLOB_MAX, client::BATCH_BLOB_MAX + 1);
    assert_eq!(2 * max, BATCH_BYTES);
    let all = || vec![w(1, max), w(2, max), w(3, big), w(4, 10), w(5, 20), w(6, max - 30)];
    let ids = |groups: &mut dyn Iterator<Item = Vec<Wanted>>| -> Vec<Vec<u8>> {
        groups.map(|g| g.iter().map(|w| w.output.0[0]).collect()).collect()
    };
    // A large output goes out when it is reached, ahead of a part-filled batch.
    assert_eq!(ids(&mut group(all(), |_| false)), vec![vec![3], vec![1, 2], vec![4, 5, 6]]);
    // Compressed ones (here: from 1 KiB up) go one per call too.
    assert_eq!(ids(&mut group(all(), |size| size >= 1024)), vec![vec![1], vec![2], vec![3], vec![6], vec![4, 5]]);
    // Calls are formed as they are issued: once the server's capabilities
    // say "compress" (here: after the first call), later calls follow them
    // (1 and 2 were put in a batch before it: they stay in it).
    let known = std::cell::Cell::new(false);
    let mut calls = group(all(), |size| known.get() && size >= 1024);
    assert_eq!(ids(&mut calls.by_ref().take(1)), vec![vec![3]]);
    known.set(true);
    assert_eq!(ids(&mut calls), vec![vec![1, 2], vec![6], vec![4, 5]]);
}

#[test]
fn manifests_merge_this_run_first_and_age_out_unused_entries() {
    let now = 1_000 * MAX_AGE.as_nanos() as i64;
    let fresh = now - 1;
    let stale = now - MAX_AGE.as_nanos() as i64 - 1;
    let (a, b, c) = (entry_of(b"a", fresh), entry_of(b"b", fresh), entry_of(b"c", stale));
    let previous = vec![(aid(1), a), (aid(2), b), (aid(3), c)];
    // This run used 4 and 2 (2 with a new output).
    let b2 = entry_of(b"b2", fresh);
    let current = vec![(aid(4), a), (aid(2), b2)];
    let merged = merge(&current, &previous, now);
    assert_eq!(merged, vec![(aid(4), a), (aid(2), b2), (aid(1), a)], "3 aged out; this run wins for 2");
    // A stale entry this run used is kept: it is in use.
    assert_eq!(merge(&[(aid(3), c)], &[], now), vec![(aid(3), c)]);
}
