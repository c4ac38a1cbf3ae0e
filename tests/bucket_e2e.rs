//! Two `cairn serve` processes over one bucket of a real three-node Garage
//! cluster: what a client stores through node A reaches the bucket behind
//! (results after their blobs), a cold node B serves it as hits, and losing
//! a Garage node fails nothing. Then a real Bazel build through A, `clean
//! --expunge`, the same build through a cold B with a Garage node killed
//! during it:
//! every action a remote cache hit; and a Go build through the shim on
//! "machine A" (node A), rebuilt on "machine B" (fresh GOCACHE, node B)
//! without a compile. The object-store calls each node made
//! are printed (DEPLOYMENT.md quotes them).

mod bazel_support;
mod common;
mod go_support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cairn::digest::Digest;
use cairn::store::bucket::{Bucket, BucketOptions};
use cairn::store::tier::Tier;
use common::action::{blob, Action};
use common::admin::Scrape;
use common::garage::Garage;
use common::process::ServerProcess;
use common::tier::{client, eventually, queued};

/// The large output of each test action: 9 MiB, a multipart upload in the bucket.
const LARGE: usize = 9 << 20;
/// How long a write-behind through Garage may take to show.
const SHOWS: Duration = Duration::from_secs(120);

/// A node over the cluster's bucket (through Garage node 0).
fn node(garage: &Garage, dir: &Path, prefix: &str) -> ServerProcess {
    let url = garage.url(prefix);
    ServerProcess::start_env(dir, &["--object-store", &url, "--tier-timeout", "5s"], &garage.env(0))
}

/// The node's object-store calls by kind, from its /metrics.
async fn calls(server: &ServerProcess) -> Vec<(&'static str, f64)> {
    let scrape = Scrape::take(server.admin.expect("admin port")).await;
    ["head", "get", "put", "multipart_create", "multipart_part", "multipart_complete", "list", "delete"]
        .into_iter()
        .map(|op| (op, scrape.value("cairn_object_store_requests_total", &[("op", op)])))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_node_serves_what_another_wrote_to_the_bucket_even_with_a_garage_node_lost() {
    let mut garage = Garage::start().expect("a Garage cluster");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&garage, a_dir.path(), "e2e");
    let to_a = client(&a).await;
    let first = Action::new(1, LARGE);
    first.write(&to_a).await;
    eventually(SHOWS, "node A's queue drains to the bucket", || async { queued(&a).await == 0.0 }).await;

    // The bucket itself holds the result and every blob, the large one in parts.
    let lib = Bucket::open(&garage.url("e2e"), BucketOptions { settings: garage.settings(1), ..Default::default() })
        .expect("open");
    assert!(lib.find_missing(&first.digests()).await.expect("find missing").is_empty());
    assert!(lib.get_action("", &first.digest).await.expect("get_action").is_some());
    let a_calls = calls(&a).await;
    eprintln!("node A, one action written behind (3 blobs, one of 9 MiB): {a_calls:?}");
    assert_eq!(a_calls.iter().find(|(op, _)| *op == "multipart_part").map(|c| c.1), Some(2.0));

    let b = node(&garage, b_dir.path(), "e2e");
    let to_b = client(&b).await;
    first.assert_served(&to_b, "cold node B").await;
    eprintln!("node B, one action served cold: {:?}", calls(&b).await);

    // One of three Garage nodes lost: writes through A and cold reads through B go on.
    garage.kill(2);
    let second = Action::new(10, LARGE);
    second.write(&to_a).await;
    eventually(SHOWS, "node A drains with a Garage node lost", || async { queued(&a).await == 0.0 }).await;
    second.assert_served(&to_b, "node B, a Garage node lost").await;
    let up = Scrape::take(b.admin.unwrap()).await.value("cairn_tier_up", &[]);
    assert_eq!(up, 1.0, "losing one Garage node is no outage");
}

#[tokio::test(flavor = "multi_thread")]
async fn bazel_through_a_cold_node_hits_everything_another_node_wrote() {
    use bazel_support::runner::Bazel;
    let mut garage = Garage::start().expect("a Garage cluster");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&garage, a_dir.path(), "bazel");
    let bazel = Bazel::new("original");
    let cold = bazel.build(&[format!("--remote_cache={}", a.grpc_url())]).await;
    eprintln!("bazel cold through node A: {}", cold.describe());
    cold.assert_cold();
    eventually(SHOWS, "node A has written everything to the bucket", || async { queued(&a).await == 0.0 }).await;
    let a_calls = calls(&a).await;

    let b = node(&garage, b_dir.path(), "bazel");
    bazel.clean_expunge().await;
    // Garage node 2 is killed while the build runs: once node B has fetched
    // its first object, and with most of the build still to come.
    let gets = || async { calls(&b).await.iter().find(|(op, _)| *op == "get").map_or(0.0, |c| c.1) };
    let kill_during_build = async {
        eventually(Duration::from_secs(300), "node B fetches from the bucket", || async { gets().await > 0.0 }).await;
        garage.kill(2);
        gets().await
    };
    let flags = [format!("--remote_cache={}", b.grpc_url())];
    let (warm, gets_at_kill) = tokio::join!(bazel.build(&flags), kill_during_build);
    eprintln!("bazel warm through cold node B, a Garage node killed during it: {}", warm.describe());
    let gets_after = gets().await;
    assert!(
        gets_after > gets_at_kill,
        "the Garage node died after the build's last fetch ({gets_at_kill} GETs then, {gets_after} at the end)"
    );
    warm.assert_every_action_hit(&cold);
    eprintln!(
        "object-store calls for a {}-action build: writing node A {a_calls:?}; reading node B {:?}",
        cold.summary.cacheable(),
        calls(&b).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn go_on_machine_b_through_node_b_compiles_nothing_machine_a_built_through_node_a() {
    use go_support::{compiles, Workspace};
    // (The only Go build in this binary: no need for go_support's one-at-a-time lock.)
    let garage = Garage::start().expect("a Garage cluster");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&garage, a_dir.path(), "go");
    let b = node(&garage, b_dir.path(), "go");
    let ws = Workspace::new();
    let (url_a, url_b) = (a.grpc_url(), b.grpc_url());
    let build = |gocache: &'static str, env: Vec<(&'static str, String)>, out: &'static str| {
        let ws = &ws;
        let target = ws.root.join(out);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = ws.go_env(gocache, &pairs, &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"]);
        assert!(run.cairn_lines().is_empty(), "{out}: cairn complained:\n{}", run.stderr);
        run.stderr
    };
    let cold = tokio::task::block_in_place(|| {
        build("gocache-a", vec![("CAIRN_REMOTE", url_a.clone()), ("CAIRN_WAIT_FOR_UPLOADS", "1".into())], "bin/app-a")
    });
    assert!(compiles(&cold).len() >= 4, "a cold build compiles:\n{cold}");
    eventually(SHOWS, "node A has written the Go build to the bucket", || async { queued(&a).await == 0.0 }).await;
    let warm = tokio::task::block_in_place(|| build("gocache-b", vec![("CAIRN_REMOTE", url_b.clone())], "bin/app-b"));
    assert_eq!(compiles(&warm), Vec::<&str>::new(), "machine B compiled through node B:\n{warm}");
    assert!(ws.read("bin/app-a") == ws.read("bin/app-b"), "binaries differ");
    eprintln!("go: object-store calls, node A {:?}; node B {:?}", calls(&a).await, calls(&b).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_keeps_the_bucket_under_object_store_max_size() {
    let garage = Garage::start().expect("a Garage cluster");
    let dir = tempfile::tempdir().unwrap();
    let url = garage.url("bound");
    let flags = [
        "--object-store",
        &url,
        "--object-store-max-size",
        "100KiB",
        "--object-store-min-age",
        "0",
        "--object-store-evict-interval",
        "1s",
    ];
    let a = ServerProcess::start_env(dir.path(), &flags, &garage.env(0));
    let to_a = client(&a).await;
    // Several times the bound, written through the node and behind to the bucket.
    let blobs: Vec<(Digest, Bytes)> = (0..40u8).map(|i| blob(i.wrapping_mul(3).wrapping_add(100), 10_000)).collect();
    for chunk in blobs.chunks(10) {
        to_a.batch_upload(chunk).await.expect("batch upload");
    }
    eventually(SHOWS, "node A drains to the bucket", || async { queued(&a).await == 0.0 }).await;
    let observer = Bucket::open(&url, BucketOptions { settings: garage.settings(1), ..Default::default() }).unwrap();
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    eventually(SHOWS, "the node's eviction passes bring the bucket under 100 KiB", || async {
        let missing = observer.find_missing(&digests).await.expect("find missing").len();
        (digests.len() - missing) * 10_000 <= 100 << 10
    })
    .await;
    let listed = Scrape::take(a.admin.unwrap()).await.value("cairn_object_store_requests_total", &[("op", "list")]);
    assert!(listed > 0.0, "the passes list the bucket");
    // The node still serves every blob from its own store.
    assert!(to_a.find_missing(&digests).await.expect("FindMissingBlobs").is_empty());
}
