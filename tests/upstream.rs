//! Proxy nodes (`cairn serve --upstream`) in front of a central `cairn
//! serve`, all real processes on loopback: writes through a proxy reach the
//! central behind (results only after their blobs), a cold proxy serves what
//! only the central has, a dead central leaves the proxy answering local
//! hits and misses (never UNAVAILABLE) while writes wait in the persistent
//! queue, which survives kill -9 and drains when the central returns, and a
//! central serving wrong bytes causes misses, never wrong hits. Then a real
//! Bazel through two proxies.

mod bazel_support;
mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cairn::client::Client;
use cairn::digest::DigestFunction;
use cairn::proto::reapi;
use common::action::{blob, Action};
use common::admin::Scrape;
use common::process::ServerProcess;
use common::tier::{client, eventually, queued};
use futures::StreamExt;
use prost::Message;

/// The streamed output of each test action: just over one batch.
const LARGE: usize = (2 << 20) + 1;
/// How long a write-behind may take to show.
const SHOWS: Duration = Duration::from_secs(60);

/// A proxy of `central` (a grpc:// URL) over `dir`.
fn proxy(dir: &Path, central: &str) -> ServerProcess {
    ServerProcess::start(dir, &["--upstream", central, "--tier-timeout", "2s"])
}

/// True once `central` serves the action's result (a cairn central only
/// answers a result whose blobs it holds).
async fn has_result(central: &Client, action: &Action) -> bool {
    matches!(central.get_action_result(&action.digest).await, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_a_proxy_reach_the_central() {
    let (c_dir, p_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = ServerProcess::start(c_dir.path(), &[]);
    let proxy = proxy(p_dir.path(), &central.grpc_url());
    let (to_proxy, to_central) = (client(&proxy).await, client(&central).await);
    let action = Action::new(1, LARGE);
    action.write(&to_proxy).await;
    action.assert_served(&to_proxy, "the proxy").await;
    eventually(SHOWS, "the result reaches the central", || has_result(&to_central, &action)).await;
    action.assert_served(&to_central, "the central").await;
    eventually(SHOWS, "the proxy's queue empties", || async { queued(&proxy).await == 0.0 }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_proxy_serves_what_only_the_central_has() {
    let (c_dir, p_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = ServerProcess::start(c_dir.path(), &[]);
    let action = Action::new(20, LARGE);
    action.write(&client(&central).await).await;

    let proxy = proxy(p_dir.path(), &central.grpc_url());
    let to_proxy = client(&proxy).await;
    assert!(to_proxy.find_missing(&action.digests()).await.unwrap().is_empty(), "present in the tier is present");
    action.assert_served(&to_proxy, "the cold proxy").await;
    let fills = Scrape::take(proxy.admin.unwrap()).await.value("cairn_tier_fills_total", &[]);
    assert!(fills >= 4.0, "the result and its 3 blobs were filled: {fills}");
    assert_eq!(queued(&proxy).await, 0.0, "fills are not queued back to the central");

    // Filled means stored here: the proxy answers without the central.
    central.kill9();
    action.assert_served(&to_proxy, "the proxy without its central").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_central_down_the_proxy_answers_locally_and_catches_up() {
    let (c_dir, p_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = ServerProcess::start(c_dir.path(), &[]);
    let central_addr = central.addr.to_string();
    let proxy = proxy(p_dir.path(), &central.grpc_url());
    let to_proxy = client(&proxy).await;
    let before = Action::new(40, LARGE);
    before.write(&to_proxy).await;
    let to_central = client(&central).await;
    eventually(SHOWS, "the first result reaches the central", || has_result(&to_central, &before)).await;
    central.kill9();

    // Local hits still hit; misses are misses, not UNAVAILABLE.
    before.assert_served(&to_proxy, "the proxy, central down").await;
    let (unknown, _) = blob(99, 10);
    assert_eq!(to_proxy.get_action_result(&unknown).await.expect("a miss, not an error"), None);
    assert_eq!(to_proxy.read_blob(&unknown, true).await.expect("a miss, not an error"), None);
    let missing = to_proxy.find_missing(&[unknown, before.blobs[0].0]).await.expect("FindMissingBlobs");
    assert_eq!(missing, vec![unknown]);

    // Writes are acknowledged and queued.
    let during = Action::new(60, LARGE);
    during.write(&to_proxy).await;
    during.assert_served(&to_proxy, "the proxy, central down").await;
    assert!(queued(&proxy).await >= 4.0, "3 blobs and a result wait for the central");
    let scrape = Scrape::take(proxy.admin.unwrap()).await;
    assert_eq!(scrape.value("cairn_tier_up", &[]), 0.0);
    assert!(scrape.sum("cairn_tier_errors_total", &[]) > 0.0);
    assert_eq!(proxy.log_lines("the tier is unreachable").len(), 1, "one warning per outage, not per request");

    let central = ServerProcess::start(c_dir.path(), &["--listen", &central_addr]);
    let to_central = client(&central).await;
    eventually(SHOWS, "the queued result reaches the restarted central", || has_result(&to_central, &during)).await;
    during.assert_served(&to_central, "the central after catching up").await;
    eventually(SHOWS, "the proxy's queue empties", || async { queued(&proxy).await == 0.0 }).await;
    proxy.wait_for_log("the tier is reachable again");
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_writes_survive_a_proxy_kill_9() {
    let (c_dir, p_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = ServerProcess::start(c_dir.path(), &[]);
    let (central_url, central_addr) = (central.grpc_url(), central.addr.to_string());
    central.kill9();

    let first = proxy(p_dir.path(), &central_url);
    let action = Action::new(80, LARGE);
    action.write(&client(&first).await).await;
    assert_eq!(queued(&first).await, 4.0, "3 blobs and a result queued");
    first.kill9();

    let central = ServerProcess::start(c_dir.path(), &["--listen", &central_addr]);
    let second = proxy(p_dir.path(), &central_url);
    let to_central = client(&central).await;
    eventually(SHOWS, "the queue left by the killed proxy reaches the central", || has_result(&to_central, &action))
        .await;
    action.assert_served(&to_central, "the central").await;
    eventually(SHOWS, "the queue empties", || async { queued(&second).await == 0.0 }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_central_serving_wrong_bytes_is_a_miss_never_a_wrong_hit() {
    let (c_dir, p_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = ServerProcess::start(c_dir.path(), &[]);
    let action = Action::new(100, LARGE);
    action.write(&client(&central).await).await;
    // Flip one byte of the large blob's file: same size, so the central
    // serves it as it is.
    let hex = action.large().hex();
    let path = c_dir.path().join("blobs").join("sha256").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&path).expect("the central's blob file");
    bytes[12345] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let proxy = proxy(p_dir.path(), &central.grpc_url());
    let to_proxy = client(&proxy).await;
    assert_eq!(to_proxy.read_blob(&action.large(), true).await.expect("a miss, not an error"), None);
    assert_eq!(
        to_proxy.get_action_result(&action.digest).await.expect("a miss, not an error"),
        None,
        "a result whose output can't be fetched intact is a miss"
    );
    let scrape = Scrape::take(proxy.admin.unwrap()).await;
    assert!(scrape.value("cairn_tier_errors_total", &[("op", "read")]) >= 1.0, "counted as a tier read error");
    assert_eq!(proxy.log_lines("the tier's copy is wrong").len(), 2, "both fills were refused");
}

/// Real Bazel: a cold build through one proxy; after `clean --expunge`, the
/// same build through a second, empty proxy of the same central is all
/// remote cache hits (so everything reached the central, results and
/// outputs, and a proxy fills itself from it).
#[tokio::test(flavor = "multi_thread")]
async fn bazel_through_a_fresh_proxy_hits_what_another_proxy_wrote() {
    use bazel_support::runner::Bazel;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let central = ServerProcess::start(dirs[0].path(), &[]);
    let first = proxy(dirs[1].path(), &central.grpc_url());
    let bazel = Bazel::new("original");
    let cold = bazel.build(&[format!("--remote_cache={}", first.grpc_url())]).await;
    eprintln!("bazel cold through proxy 1: {}", cold.describe());
    cold.assert_cold();
    eventually(SHOWS, "proxy 1 has written everything to the central", || async { queued(&first).await == 0.0 }).await;

    let second = proxy(dirs[2].path(), &central.grpc_url());
    bazel.clean_expunge().await;
    let warm = bazel.build(&[format!("--remote_cache={}", second.grpc_url())]).await;
    eprintln!("bazel warm through proxy 2: {}", warm.describe());
    warm.assert_every_action_hit(&cold);
}

/// GetTree, GetActionResult with `inline_stdout` and the HTTP port's
/// `GET /ac/` on a cold proxy: each fills from the central first.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_proxy_fills_get_tree_inline_stdout_and_http_lookups() {
    use cairn::proto::reapi::action_cache_client::ActionCacheClient;
    use cairn::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    let (c_dir, p_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = ServerProcess::start(c_dir.path(), &[]);
    let to_central = client(&central).await;
    // root/ -> sub/ -> file
    let (file, file_data) = blob(120, 1000);
    let dir = |files: Vec<reapi::FileNode>, dirs: Vec<reapi::DirectoryNode>| {
        let bytes = Bytes::from(reapi::Directory { files, directories: dirs, ..Default::default() }.encode_to_vec());
        (DigestFunction::Sha256.digest_of(&bytes), bytes)
    };
    let file_node = reapi::FileNode { name: "f".into(), digest: Some(file.to_proto()), ..Default::default() };
    let (sub, sub_bytes) = dir(vec![file_node], vec![]);
    let sub_node = reapi::DirectoryNode { name: "sub".into(), digest: Some(sub.to_proto()) };
    let (root, root_bytes) = dir(vec![], vec![sub_node]);
    let (stdout, stdout_data) = blob(121, 64);
    let blobs = [(file, file_data), (sub, sub_bytes), (root, root_bytes), (stdout, stdout_data.clone())];
    to_central.batch_upload(&blobs).await.unwrap();
    let action = DigestFunction::Sha256.digest_of(b"with stdout");
    let result = reapi::ActionResult { stdout_digest: Some(stdout.to_proto()), ..Default::default() };
    to_central.update_action_result(&action, result.clone()).await.unwrap();
    let http_action = DigestFunction::Sha256.digest_of(b"over http");
    to_central.update_action_result(&http_action, result).await.unwrap();

    let proxy = ServerProcess::start(
        p_dir.path(),
        &["--upstream", &central.grpc_url(), "--tier-timeout", "2s", "--http-listen", "127.0.0.1:0"],
    );
    let channel = proxy.channel().await;
    let pages: Vec<reapi::GetTreeResponse> = ContentAddressableStorageClient::new(channel.clone())
        .get_tree(reapi::GetTreeRequest { root_digest: Some(root.to_proto()), ..Default::default() })
        .await
        .expect("GetTree of a tree only the central has")
        .into_inner()
        .map(|r| r.expect("GetTree page"))
        .collect()
        .await;
    assert_eq!(pages.iter().map(|p| p.directories.len()).sum::<usize>(), 2, "root and sub");

    let got = ActionCacheClient::new(channel)
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            ..Default::default()
        })
        .await
        .expect("GetActionResult")
        .into_inner();
    assert_eq!(got.stdout_raw, stdout_data, "stdout inlined from a blob filled from the central");

    let http = proxy.log_lines("http listening on ")[0].split("http listening on ").nth(1).unwrap().to_string();
    let http: std::net::SocketAddr = http.split_whitespace().next().unwrap().parse().unwrap();
    let (status, _, body) = common::admin::get(http, &format!("/ac/{}", http_action.hex())).await;
    assert_eq!(status, 200, "GET /ac/ on the proxy: {body}");
    let decoded = reapi::ActionResult::decode(body.as_bytes()).expect("an ActionResult");
    assert_eq!(decoded.stdout_digest, Some(stdout.to_proto()));
}
