//! The drain's ordering rule against an in-memory tier that records the
//! order of its calls: an ActionResult reaches the tier only after every
//! blob it names, never incomplete, and nothing leaves the queue while the
//! tier is down, and eviction keeps what is still queued.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::super::link::Link;
use super::super::memory_tier::MemoryTier;
use super::super::{Clock, Limits, QueueLimits, Store};
use super::{pass, Pass};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    tier: Arc<MemoryTier>,
    link: Arc<Link>,
}

fn setup(limits: QueueLimits) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.attach_outbox(limits).unwrap();
    let tier = Arc::new(MemoryTier::default());
    let link = Arc::new(Link::new(tier.clone(), Duration::from_secs(5)));
    Setup { _dir: dir, store, tier, link }
}

const ROOMY: QueueLimits = QueueLimits { max_entries: 1000, max_bytes: 1 << 30 };

fn blob(seed: u8, size: usize) -> (Digest, Vec<u8>) {
    let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
    (DigestFunction::Sha256.digest_of(&data), data)
}

fn result_naming(blobs: &[Digest]) -> Vec<u8> {
    reapi::ActionResult {
        output_files: blobs
            .iter()
            .enumerate()
            .map(|(i, d)| reapi::OutputFile {
                path: format!("out{i}"),
                digest: Some(d.to_proto()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn drain_all(s: &Setup) {
    for _ in 0..10 {
        if pass(&s.store, &s.link, 4).await.unwrap() == Pass::Idle {
            return;
        }
    }
    panic!("the queue did not drain");
}

#[tokio::test]
async fn an_action_result_goes_out_after_every_blob_it_names() {
    let s = setup(ROOMY);
    let (small, small_data) = blob(3, 1000);
    let (large, large_data) = blob(5, 600 << 10); // A file blob, streamed.
    let action = DigestFunction::Sha256.digest_of(b"action");
    // The result is queued before one of its blobs: order in the queue
    // must not matter.
    s.store.put(small, &small_data).unwrap();
    s.store.put_action("", &action, &result_naming(&[small, large])).unwrap();
    s.store.put(large, &large_data).unwrap();
    assert_eq!(s.store.queue_stats().unwrap().entries, 3);
    drain_all(&s).await;
    let log = s.tier.log.lock().unwrap().clone();
    let at = |what: &str| log.iter().position(|l| l == what).unwrap_or_else(|| panic!("{what} not in {log:?}"));
    let act = at(&format!("action {}", action.hex()));
    assert!(at(&format!("blob {}", small.hex())) < act, "{log:?}");
    assert!(at(&format!("blob {}", large.hex())) < act, "{log:?}");
    assert_eq!(log.len(), 3, "each blob once: {log:?}");
    assert_eq!(s.store.queue_stats().unwrap(), Default::default(), "the queue is empty");
}

#[tokio::test]
async fn queued_results_are_written_several_at_once() {
    // One at a time, a queue of results drains at one tier round trip each
    // (on a bucket ~50 ms per small PUT): the tier here lets a result write
    // finish only once four are in flight together.
    let s = setup(ROOMY);
    *s.tier.action_barrier.lock().unwrap() = Some(Arc::new(tokio::sync::Barrier::new(4)));
    let (out, data) = blob(7, 100);
    s.store.put(out, &data).unwrap();
    for i in 0..4u8 {
        s.store.put_action("", &DigestFunction::Sha256.digest_of(&[i]), &result_naming(&[out])).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), drain_all(&s))
        .await
        .expect("the results were written one at a time: the fourth never joined the first");
    assert_eq!(s.tier.actions.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn a_result_whose_blob_is_gone_everywhere_is_never_written() {
    let s = setup(ROOMY);
    let (kept, kept_data) = blob(7, 100);
    let (lost, _) = blob(9, 100); // Never stored locally, not in the tier.
    let action = DigestFunction::Sha256.digest_of(b"incomplete");
    s.store.put(kept, &kept_data).unwrap();
    s.store.put_action("", &action, &result_naming(&[kept, lost])).unwrap();
    drain_all(&s).await;
    assert!(s.tier.actions.lock().unwrap().is_empty(), "an incomplete result reached the tier");
    assert_eq!(s.store.queue_stats().unwrap().entries, 0, "and it left the queue");
}

#[tokio::test]
async fn blobs_a_result_names_are_uploaded_even_when_not_queued() {
    // A blob stored before the queue existed (or dropped from it by an overflow).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (old, old_data) = blob(11, 100);
    store.put(old, &old_data).unwrap();
    store.attach_outbox(ROOMY).unwrap();
    let tier = Arc::new(MemoryTier::default());
    let s = Setup { _dir: dir, store, link: Arc::new(Link::new(tier.clone(), Duration::from_secs(5))), tier };
    let action = DigestFunction::Sha256.digest_of(b"names old");
    s.store.put_action("", &action, &result_naming(&[old])).unwrap();
    assert_eq!(s.store.queue_stats().unwrap().entries, 1);
    drain_all(&s).await;
    assert!(s.tier.blobs.lock().unwrap().contains_key(&old));
    assert!(s.tier.actions.lock().unwrap().contains_key(&action));
}

#[tokio::test]
async fn nothing_leaves_the_queue_while_the_tier_is_down() {
    let s = setup(ROOMY);
    let (d, data) = blob(13, 100);
    let action = DigestFunction::Sha256.digest_of(b"later");
    s.store.put(d, &data).unwrap();
    s.store.put_action("", &action, &result_naming(&[d])).unwrap();
    s.tier.down.store(true, Ordering::Relaxed);
    assert_eq!(pass(&s.store, &s.link, 4).await.unwrap(), Pass::Retry);
    assert_eq!(s.store.queue_stats().unwrap().entries, 2);
    assert!(!s.link.stats(Default::default()).up);
    s.tier.down.store(false, Ordering::Relaxed);
    drain_all(&s).await;
    assert!(s.tier.actions.lock().unwrap().contains_key(&action));
    assert!(s.link.stats(Default::default()).up);
}

#[tokio::test]
async fn fills_from_the_tier_are_not_queued_back() {
    let s = setup(ROOMY);
    let (d, data) = blob(17, 100);
    let w = s.store.begin_write(d).unwrap().from_tier();
    let mut w = w;
    w.write(&data).unwrap();
    w.commit().unwrap();
    s.store.put_action_from_tier("", &DigestFunction::Sha256.digest_of(b"x"), &result_naming(&[d])).unwrap();
    assert_eq!(s.store.queue_stats().unwrap().entries, 0);
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_blob_entries_first() {
    let s = setup(QueueLimits { max_entries: 3, max_bytes: 1 << 30 });
    let blobs: Vec<_> = (1..=4).map(|i| blob(20 + i, 100)).collect();
    let action = DigestFunction::Sha256.digest_of(b"kept");
    s.store.put(blobs[0].0, &blobs[0].1).unwrap();
    s.store.put_action("", &action, &result_naming(&[blobs[0].0])).unwrap();
    for (d, data) in &blobs[1..] {
        s.store.put(*d, data).unwrap();
    }
    let stats = s.store.queue_stats().unwrap();
    assert_eq!((stats.entries, stats.dropped), (3, 2), "{stats:?}");
    drain_all(&s).await;
    let tier_blobs = s.tier.blobs.lock().unwrap().clone();
    assert!(s.tier.actions.lock().unwrap().contains_key(&action), "the result survived the overflow");
    assert!(tier_blobs.contains_key(&blobs[0].0), "and its blob went out with it");
    assert!(!tier_blobs.contains_key(&blobs[1].0), "the oldest unnamed blob was dropped");
    assert!(tier_blobs.contains_key(&blobs[3].0));
}

#[tokio::test]
async fn a_result_naming_a_tree_only_the_tier_has_still_goes_out() {
    let s = setup(ROOMY);
    // The client skipped uploading the Tree and its file: the tier has them.
    let (file, file_data) = blob(31, 100);
    let tree = reapi::Tree {
        root: Some(reapi::Directory {
            files: vec![reapi::FileNode { name: "f".into(), digest: Some(file.to_proto()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let tree_digest = DigestFunction::Sha256.digest_of(&tree);
    s.tier.blobs.lock().unwrap().insert(tree_digest, tree.into());
    s.tier.blobs.lock().unwrap().insert(file, file_data.into());
    let (stdout, stdout_data) = blob(33, 10);
    s.store.put(stdout, &stdout_data).unwrap();
    let result = reapi::ActionResult {
        output_directories: vec![reapi::OutputDirectory {
            path: "d".into(),
            tree_digest: Some(tree_digest.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(stdout.to_proto()),
        ..Default::default()
    };
    let action = DigestFunction::Sha256.digest_of(b"tree in tier");
    s.store.put_action("", &action, &result.encode_to_vec()).unwrap();
    drain_all(&s).await;
    assert!(s.tier.actions.lock().unwrap().contains_key(&action), "the result went out");

    // The same result naming a Tree nobody has is dropped.
    let s = setup(ROOMY);
    s.store.put(stdout, &stdout_data).unwrap();
    s.store.put_action("", &action, &result.encode_to_vec()).unwrap();
    drain_all(&s).await;
    assert!(s.tier.actions.lock().unwrap().is_empty(), "a result with an unknown tree went out");
    assert_eq!(s.store.queue_stats().unwrap().entries, 0);
}

#[tokio::test]
async fn queued_blobs_are_not_evicted_until_written_behind() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_000);
    let limits = Limits { max_size: 3_000, min_age: Duration::ZERO, clock: clock.clone() };
    let store = Store::open_with(dir.path(), limits).unwrap();
    store.attach_outbox(ROOMY).unwrap();
    let tier = Arc::new(MemoryTier::default());
    let s = Setup { _dir: dir, store, link: Arc::new(Link::new(tier.clone(), Duration::from_secs(5))), tier };
    s.tier.down.store(true, Ordering::Relaxed);
    // Four queued blobs, the least recently used, then one filled from the
    // tier (not queued): together well over the limit.
    let queued: Vec<_> = (1..=4).map(|i| blob(40 + i, 1000)).collect();
    for (d, data) in &queued {
        s.store.put(*d, data).unwrap();
        clock.advance(1);
    }
    let (filled, filled_data) = blob(50, 1000);
    let mut w = s.store.begin_write(filled).unwrap().from_tier();
    w.write(&filled_data).unwrap();
    w.commit().unwrap();
    clock.advance(1);
    assert_eq!(pass(&s.store, &s.link, 4).await.unwrap(), Pass::Retry);

    s.store.maintain().unwrap();
    let ds: Vec<Digest> = queued.iter().map(|(d, _)| *d).collect();
    assert!(s.store.find_missing(&ds).unwrap().is_empty(), "a queued blob was evicted");
    assert!(!s.store.contains(&filled).unwrap(), "the unqueued blob past them was not evicted");
    let stats = s.store.stats();
    assert_eq!((stats.evictions, stats.min_age_overruns), (1, 1), "{stats:?}");

    // Once written behind they are ordinary entries again.
    s.tier.down.store(false, Ordering::Relaxed);
    drain_all(&s).await;
    assert_eq!(s.tier.blobs.lock().unwrap().len(), 4);
    s.store.maintain().unwrap();
    let stats = s.store.stats();
    assert!(stats.total_bytes() <= 2_850, "{stats:?}");
    assert_eq!(stats.evictions, 3, "{stats:?}");
    // (Which two depends on the order the drain read them in.)
    assert_eq!(s.store.find_missing(&ds).unwrap().len(), 2, "two of them were evicted");
}

#[tokio::test]
async fn writing_a_blob_behind_is_not_a_local_use() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_000);
    let limits = Limits { max_size: 2_500, min_age: Duration::ZERO, clock: clock.clone() };
    let store = Store::open_with(dir.path(), limits).unwrap();
    store.attach_outbox(ROOMY).unwrap();
    let tier = Arc::new(MemoryTier::default());
    let s = Setup { _dir: dir, store, link: Arc::new(Link::new(tier.clone(), Duration::from_secs(5))), tier };
    // Written (and queued) first, and then used by nobody.
    let (written, written_data) = blob(60, 1000);
    s.store.put(written, &written_data).unwrap();
    clock.advance(10);
    // Filled from the tier later (not queued): used more recently.
    let (filled, filled_data) = blob(61, 1000);
    let mut w = s.store.begin_write(filled).unwrap().from_tier();
    w.write(&filled_data).unwrap();
    w.commit().unwrap();
    clock.advance(10);
    // The drain reads the first one from the local store to upload it.
    drain_all(&s).await;
    assert!(s.tier.blobs.lock().unwrap().contains_key(&written));
    // A third blob takes the store over its bound: the least recently
    // used goes, and the upload did not make the first one recent.
    let (third, third_data) = blob(62, 1000);
    s.store.put(third, &third_data).unwrap();
    s.store.maintain().unwrap();
    assert_eq!(s.store.stats().evictions, 1, "{:?}", s.store.stats());
    assert_eq!(s.store.find_missing(&[written, filled]).unwrap(), vec![written], "the uploaded blob looked used");
}
