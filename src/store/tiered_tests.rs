//! The composition against an in-memory tier: FindMissingBlobs asks the tier
//! only about local misses and reports what it doesn't answer as missing;
//! fills verify (a lying tier is a miss); ActionResults are stored locally
//! only once complete; a tier that is down or hangs leaves local answers;
//! concurrent fills of one blob read the tier once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::super::link::Link;
use super::super::memory_tier::MemoryTier;
use super::super::Store;
use super::Tiered;
use crate::config::TierSettings;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    tier: Arc<MemoryTier>,
    tiered: Tiered,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tier = Arc::new(MemoryTier::default());
    let link = Arc::new(Link::new(tier.clone(), Duration::from_millis(300)));
    let tiered = Tiered::new(store.clone(), link, &TierSettings::default());
    Setup { _dir: dir, store, tier, tiered }
}

fn blob(seed: u8, size: usize) -> (Digest, Vec<u8>) {
    let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
    (DigestFunction::Sha256.digest_of(&data), data)
}

impl Setup {
    fn in_tier(&self, d: Digest, data: &[u8]) {
        self.tier.blobs.lock().unwrap().insert(d, data.to_vec().into());
    }
}

#[tokio::test]
async fn find_missing_asks_the_tier_about_local_misses_only() {
    let s = setup();
    let (local, local_data) = blob(1, 10);
    let (remote, remote_data) = blob(2, 10);
    let (nowhere, _) = blob(3, 10);
    s.store.put(local, &local_data).unwrap();
    s.in_tier(remote, &remote_data);
    let missing = s.tiered.find_missing(&[nowhere, local, remote]).await.unwrap();
    assert_eq!(missing, vec![nowhere]);

    // A tier that hangs: what it hasn't answered by the deadline is missing.
    s.tier.stalled.store(true, Ordering::Relaxed);
    let missing = s.tiered.find_missing(&[nowhere, local, remote]).await.unwrap();
    assert_eq!(missing, vec![nowhere, remote]);
}

#[tokio::test]
async fn local_hits_are_noted_as_uses_of_the_tier_but_fills_are_not() {
    let s = setup();
    let (local, local_data) = blob(11, 10);
    let (other, other_data) = blob(12, 10);
    let (remote, remote_data) = blob(13, 10);
    let (nowhere, _) = blob(14, 10);
    s.store.put(local, &local_data).unwrap();
    s.store.put(other, &other_data).unwrap();
    s.in_tier(remote, &remote_data);
    let used = |s: &Setup| std::mem::take(&mut *s.tier.used.lock().unwrap());

    // FindMissingBlobs: the locally present ones, not what the tier answers.
    s.tiered.find_missing(&[nowhere, local, remote]).await.unwrap();
    assert_eq!(used(&s), vec![format!("blob {}", local.hex())]);
    // A read (prefetch first): the local hit; the remote one the tier saw itself.
    s.tiered.prefetch(&[other, remote]).await.unwrap();
    assert_eq!(used(&s), vec![format!("blob {}", other.hex())]);
    // The drain's fills and completeness checks are not uses.
    s.tiered.fill(&[local, other]).await.unwrap();
    assert!(used(&s).is_empty());
    // An ActionCache hit: the result and what it names.
    let action = DigestFunction::Sha256.digest_of(b"hit");
    s.tiered.note_action_hit("", &action, &[local]);
    assert_eq!(used(&s), vec![format!("action {}", action.hex()), format!("blob {}", local.hex())]);
}

#[tokio::test]
async fn a_fill_streams_a_large_blob_into_the_local_store() {
    let s = setup();
    let (d, data) = blob(5, (3 << 20) + 7);
    s.in_tier(d, &data);
    s.tiered.prefetch(&[d]).await.unwrap();
    assert_eq!(s.store.read_all(&d).unwrap().as_deref(), Some(&data[..]));
    assert_eq!(s.tiered.stats().unwrap().fills, 1);
}

#[tokio::test]
async fn a_lying_tier_is_a_miss_never_a_wrong_hit() {
    let s = setup();
    for (d, data) in [blob(7, 100), blob(8, 600 << 10)] {
        s.in_tier(d, &data);
        s.tier.lying.store(true, Ordering::Relaxed);
        s.tiered.prefetch(&[d]).await.unwrap();
        assert_eq!(s.store.read_all(&d).unwrap(), None, "wrong bytes were stored for {d}");
    }
    let stats = s.tiered.stats().unwrap();
    assert_eq!(stats.errors.iter().find(|(op, _)| *op == "read").unwrap().1, 2);
    assert_eq!(stats.fills, 0);
}

fn result_naming(blobs: &[Digest]) -> Vec<u8> {
    reapi::ActionResult {
        output_files: blobs
            .iter()
            .enumerate()
            .map(|(i, d)| reapi::OutputFile { path: format!("o{i}"), digest: Some(d.to_proto()), ..Default::default() })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_result_from_the_tier_is_stored_locally_only_when_complete() {
    let s = setup();
    let (a, a_data) = blob(11, 100);
    let (b, _) = blob(12, 100); // Named, but nobody has it.
    s.in_tier(a, &a_data);
    let complete = DigestFunction::Sha256.digest_of(b"complete");
    let incomplete = DigestFunction::Sha256.digest_of(b"incomplete");
    s.tier.actions.lock().unwrap().insert(complete, result_naming(&[a]).into());
    s.tier.actions.lock().unwrap().insert(incomplete, result_naming(&[a, b]).into());

    assert!(s.tiered.fill_action("", &complete).await.unwrap());
    assert!(s.store.get_action("", &complete).unwrap().is_some());
    assert!(s.store.contains(&a).unwrap(), "its blob came with it");
    assert!(!s.tiered.fill_action("", &incomplete).await.unwrap());
    assert!(s.store.get_action("", &incomplete).unwrap().is_none(), "an incomplete result was stored");

    // A local result whose blob was lost is completed from the tier.
    let (c, c_data) = blob(13, 100);
    let local = DigestFunction::Sha256.digest_of(b"local");
    s.store.put_action("", &local, &result_naming(&[c])).unwrap();
    s.in_tier(c, &c_data);
    assert!(s.tiered.fill_action("", &local).await.unwrap());
    assert!(s.store.contains(&c).unwrap());
}

#[tokio::test]
async fn a_tier_that_is_down_leaves_the_local_answers() {
    let s = setup();
    let (remote, remote_data) = blob(21, 10);
    s.in_tier(remote, &remote_data);
    s.tier.actions.lock().unwrap().insert(remote, result_naming(&[remote]).into());
    s.tier.down.store(true, Ordering::Relaxed);
    assert_eq!(s.tiered.find_missing(&[remote]).await.unwrap(), vec![remote]);
    s.tiered.prefetch(&[remote]).await.unwrap();
    assert!(!s.tiered.fill_action("", &remote).await.unwrap());
    assert!(!s.tiered.stats().unwrap().up);
}

#[tokio::test]
async fn two_requests_for_one_missing_blob_read_the_tier_once() {
    let s = setup();
    let (d, data) = blob(31, 1000);
    s.in_tier(d, &data);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *s.tier.read_gate.lock().unwrap() = Some(gate.clone());
    // Holds the tier's answer until the first read has begun and both
    // requests have had ample turns to ask for the blob too.
    let open = async {
        while s.tier.reads.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
    };
    let one = [d];
    let (a, b, ()) = tokio::join!(s.tiered.prefetch(&one), s.tiered.prefetch(&one), open);
    a.unwrap();
    b.unwrap();
    assert_eq!(s.tier.reads.load(Ordering::Relaxed), 1, "each request read the tier itself");
    assert!(s.store.contains(&d).unwrap(), "both requests find it locally now");
    assert_eq!(s.tiered.stats().unwrap().fills, 1);

    // A flight that found nothing is over: a later request asks again.
    let (e, e_data) = blob(32, 100);
    s.tiered.prefetch(&[e]).await.unwrap();
    s.in_tier(e, &e_data);
    s.tiered.prefetch(&[e]).await.unwrap();
    assert!(s.store.contains(&e).unwrap());
    assert!(s.tiered.flights.lock().unwrap().is_empty(), "finished flights leave the map");
}
