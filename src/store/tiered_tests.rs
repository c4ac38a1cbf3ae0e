//! The composition against an in-memory tier: FindMissingBlobs asks the tier
//! only about local misses and reports what it doesn't answer as missing;
//! fills verify (a lying tier is a miss); ActionResults are stored locally
//! only once complete; a tier that is down or hangs leaves local answers.

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
