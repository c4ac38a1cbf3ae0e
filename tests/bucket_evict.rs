//! The bounded bucket against a real three-node Garage: eviction brings the
//! total under `--object-store-max-size`, least recently used first, where a
//! use made through another node (another `Bucket`, its own use log) counts;
//! nothing used within the minimum age goes; two passes at once lose no use.
//! With `cairn serve` nodes: what a warm node serves from its local store
//! counts as a use of the bucket's copy, and a node stopped with SIGTERM
//! logs its last uses before it exits.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cairn::digest::{Digest, DigestFunction};
use cairn::store::bucket::{Bucket, BucketOptions, Op};
use cairn::store::tier::{Body, Tier};
use common::action::result_naming;
use common::garage::Garage;
use common::process::ServerProcess;
use common::tier::{client, eventually, queued};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

const OBJECT: usize = 10_000;

fn node(garage: &Garage, prefix: &str, max_size: Option<u64>, min_age: Duration) -> Bucket {
    let opts = BucketOptions { settings: garage.settings(0), max_size, min_age, ..Default::default() };
    Bucket::open(&garage.url(prefix), opts).expect("open bucket")
}

fn blob(seed: u16) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..OBJECT).map(|i| (i as u16).wrapping_mul(7).wrapping_add(seed * 13) as u8).collect();
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

/// Writes `n` distinct blobs through `b`.
async fn fill(b: &Bucket, n: u16) -> Vec<Digest> {
    let mut out = Vec::new();
    for i in 0..n {
        let (d, data) = blob(i);
        b.write(&d, Body::Whole(data)).await.expect("put");
        out.push(d);
    }
    out
}

/// Reads every digest through `b` (noting the uses), then writes its use log.
async fn use_through(b: &Bucket, digests: &[Digest]) {
    for d in digests {
        assert!(b.read(d).await.expect("read").is_some(), "{d:?} should be there");
    }
    b.flush_uses().await.expect("flush uses");
}

/// Garage's `last_modified` has millisecond resolution; a pause well past
/// that makes "used later than written" unambiguous.
async fn later() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// What `b`'s bucket holds of `digests` (by FindMissing, through an unbounded node).
async fn present(b: &Bucket, digests: &[Digest]) -> Vec<Digest> {
    let missing = b.find_missing(digests).await.expect("find missing");
    digests.iter().filter(|d| !missing.contains(d)).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_brings_the_bucket_under_its_bound_sparing_what_other_nodes_used() {
    let garage = Garage::start().expect("a Garage cluster");
    let bound = 4 * OBJECT as u64 + 100;
    let a = node(&garage, "lru", Some(bound), Duration::ZERO);
    let b = node(&garage, "lru", Some(bound), Duration::ZERO);
    let observer = node(&garage, "lru", None, Duration::ZERO);
    let all = fill(&a, 12).await;
    let action = blob(999).0;
    a.put_action("", &action, Bytes::from_static(b"an action result")).await.expect("put ac");
    later().await;
    // Node B used the oldest three blobs and the ActionResult: they are the most recent now.
    use_through(&b, &all[..3]).await;
    assert!(b.get_action("", &action).await.expect("get ac").is_some());
    b.flush_uses().await.expect("flush");

    let report = a.evict().await.expect("evict");
    eprintln!("{report}; calls {:?}", a.counts().snapshot());
    assert_eq!(report.objects, 13);
    assert!(report.bytes_after <= bound, "{report:?}");
    assert!(!report.held_by_min_age);
    assert_eq!(report.logs_folded, 2, "node B wrote two use logs");
    let kept = present(&observer, &all).await;
    for d in &all[..3] {
        assert!(kept.contains(d), "a blob node B used was evicted: {report:?}");
    }
    assert_eq!(kept.len(), 4, "three used blobs and the newest unused one fit under the bound: {report:?}");
    assert!(kept.contains(&all[11]), "the least recently written go first");
    assert!(observer.get_action("", &action).await.expect("get ac").is_some(), "the used ActionResult stays");

    // Those uses live on in the pass's summary once the logs are gone:
    // squeezed to three blobs' worth, the unused survivor goes, the used stay.
    let tight = node(&garage, "lru", Some(3 * OBJECT as u64 + 100), Duration::ZERO);
    let report = tight.evict().await.expect("second pass");
    assert_eq!(report.logs_folded, 1, "only the first pass's summary is left to fold");
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(present(&observer, &all).await, all[..3].to_vec(), "{report:?}");
    assert!(observer.get_action("", &action).await.expect("get ac").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_used_within_the_minimum_age_is_evicted_even_over_the_bound() {
    let garage = Garage::start().expect("a Garage cluster");
    let a = node(&garage, "young", Some(2 * OBJECT as u64), Duration::from_secs(3600));
    let all = fill(&a, 8).await;
    let report = a.evict().await.expect("evict");
    assert_eq!(report.deleted, 0, "{report:?}");
    assert!(report.held_by_min_age, "the pass says why it stopped over the bound: {report:?}");
    assert_eq!(report.bytes_after, 8 * OBJECT as u64);
    assert_eq!(present(&a, &all).await.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_passes_at_once_lose_no_use() {
    let garage = Garage::start().expect("a Garage cluster");
    let writer = node(&garage, "race", None, Duration::ZERO);
    let all = fill(&writer, 10).await;
    later().await;
    let b = node(&garage, "race", Some(u64::MAX), Duration::ZERO);
    let c = node(&garage, "race", Some(u64::MAX), Duration::ZERO);
    use_through(&b, &all[..3]).await;
    use_through(&c, &all[3..6]).await;

    // Two unbounded passes fold and delete the same logs at the same time.
    let p1 = node(&garage, "race", Some(u64::MAX), Duration::ZERO);
    let p2 = node(&garage, "race", Some(u64::MAX), Duration::ZERO);
    let (r1, r2) = tokio::join!(p1.evict(), p2.evict());
    let (r1, r2) = (r1.expect("pass 1"), r2.expect("pass 2"));
    assert_eq!((r1.deleted, r2.deleted), (0, 0));
    assert!(r1.logs_folded + r2.logs_folded >= 2, "{r1:?} {r2:?}");

    // A bounded pass after them still knows every use: the four unused blobs go.
    let tight = node(&garage, "race", Some(6 * OBJECT as u64), Duration::ZERO);
    let report = tight.evict().await.expect("bounded pass");
    assert_eq!(report.deleted, 4, "{report:?}");
    let kept = present(&writer, &all).await;
    assert_eq!(kept, all[..6].to_vec(), "every blob used through B or C survives: {report:?}");
    eprintln!("bounded pass over 10 objects: calls {:?}", tight.counts().snapshot());
    assert_eq!(tight.counts().get(Op::Delete), 4 + report.logs_folded);
}

/// A `cairn serve` node over the bucket at `prefix` that logs its uses,
/// with `extra` flags.
fn serve(garage: &Garage, dir: &Path, prefix: &str, extra: &[&str]) -> ServerProcess {
    let url = garage.url(prefix);
    let mut args = vec!["--object-store", &url, "--object-store-max-size", "1GiB", "--tier-timeout", "5s"];
    args.extend_from_slice(extra);
    ServerProcess::start_env(dir, &args, &garage.env(0))
}

/// Everything the use logs (and pass summaries) under `prefix` say now.
async fn logged(garage: &Garage, prefix: &str) -> String {
    // The HTTP client needs a TLS provider even for http:// (Bucket::open installs the same).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(common::garage::BUCKET)
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key(&garage.secret)
        .with_endpoint(garage.endpoint(1))
        .with_region("garage")
        .with_allow_http(true)
        .build()
        .expect("raw client");
    let dir = object_store::path::Path::from(format!("{prefix}/_cairn/uses"));
    let logs: Vec<object_store::ObjectMeta> = raw.list(Some(&dir)).try_collect().await.expect("list use logs");
    let mut text = String::new();
    for log in logs {
        // A pass may delete a log between the listing and the read (its uses
        // then live on in that pass's summary).
        if let Ok(got) = raw.get(&log.location).await {
            text.push_str(&String::from_utf8_lossy(&got.bytes().await.unwrap_or_default()));
        }
    }
    text
}

fn cas_key(d: &Digest) -> String {
    format!("cas/sha256/{}", d.hex())
}

/// How long a write-behind through Garage may take to show.
const SHOWS: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_warm_node_serves_locally_counts_as_a_use_of_the_bucket() {
    let garage = Garage::start().expect("a Garage cluster");
    let dir = tempfile::tempdir().unwrap();
    // Logs its uses every second; its own passes (bound far above) delete nothing.
    let flags = ["--object-store-min-age", "0s", "--object-store-evict-interval", "1s", "--http-listen", "127.0.0.1:0"];
    let a = serve(&garage, dir.path(), "warm", &flags);
    let c = client(&a).await;
    let (read, found, named, fetched, unused) = (blob(1), blob(2), blob(3), blob(5), blob(4));
    c.batch_upload(&[read.clone(), found.clone(), named.clone(), fetched.clone()]).await.expect("upload");
    let action = DigestFunction::Sha256.digest_of(b"a warm action");
    c.update_action_result(&action, result_naming(&[named.0], named.0)).await.expect("UpdateActionResult");
    eventually(SHOWS, "node A writes them behind", || async { queued(&a).await == 0.0 }).await;
    later().await;
    // Written last: by its write alone the newest object in the bucket.
    c.batch_upload(std::slice::from_ref(&unused)).await.expect("upload");
    eventually(SHOWS, "node A writes it behind", || async { queued(&a).await == 0.0 }).await;
    later().await;

    // Served from A's local store, never asking the bucket: a ByteStream
    // read, a FindMissingBlobs, an ActionCache hit (and the blob it names),
    // an HTTP GET.
    assert_eq!(c.read_blob(&read.0, true).await.expect("read"), Some(OBJECT as u64));
    assert!(c.find_missing(&[found.0]).await.expect("find missing").is_empty());
    assert!(c.get_action_result(&action).await.expect("GetActionResult").is_some());
    // And Bazel's HTTP cache protocol.
    let url = format!("http://{}/cas/{}", a.http_addr(), fetched.0.hex());
    assert_eq!(common::curl::curl(&[&url]).await.body, fetched.1.to_vec(), "HTTP GET /cas/");
    let ac_key = format!("ac/-/sha256/{}", action.hex());
    let keys = [cas_key(&read.0), cas_key(&found.0), cas_key(&named.0), cas_key(&fetched.0), ac_key];
    eventually(Duration::from_secs(30), "node A logs its local hits as uses", || async {
        let text = logged(&garage, "warm").await;
        keys.iter().all(|k| text.contains(k.as_str()))
    })
    .await;

    // Room for four blobs and the result: the blob nobody used goes, though
    // it was written last.
    let tight = node(&garage, "warm", Some(4 * OBJECT as u64 + 1000), Duration::ZERO);
    let report = tight.evict().await.expect("evict");
    assert_eq!(report.deleted, 1, "{report:?}");
    let observer = node(&garage, "warm", None, Duration::ZERO);
    let all = [read.0, found.0, named.0, fetched.0, unused.0];
    assert_eq!(present(&observer, &all).await, all[..4].to_vec(), "{report:?}");
    assert!(observer.get_action("", &action).await.expect("get ac").is_some(), "the result served as a hit stays");
    a.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_logs_its_last_uses() {
    let garage = Garage::start().expect("a Garage cluster");
    let writer = node(&garage, "stop", None, Duration::ZERO);
    let (d, data) = blob(7);
    writer.write(&d, Body::Whole(data)).await.expect("put");
    let dir = tempfile::tempdir().unwrap();
    // No passes here: its use log is due only every 30 s.
    let b = serve(&garage, dir.path(), "stop", &["--object-store-evict-interval", "0s"]);
    let c = client(&b).await;
    assert_eq!(c.read_blob(&d, true).await.expect("read"), Some(OBJECT as u64), "filled from the bucket");
    b.terminate();
    assert!(logged(&garage, "stop").await.contains(&cas_key(&d)), "the use was lost at the stop");
}
