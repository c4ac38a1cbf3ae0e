//! Capabilities.GetCapabilities and grpc.health.v1 against the real server:
//! what Bazel reads before it trusts a cache, and what load balancers probe.

mod common;
mod rpc;

use cairn::proto::reapi::{self, GetCapabilitiesRequest};
use common::TestServer;
use rpc::*;
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

fn semver(v: Option<&cairn::proto::semver::SemVer>) -> (i32, i32) {
    let v = v.expect("version is set");
    (v.major, v.minor)
}

/// The advertised cache: both digest functions, AC updates allowed, a real
/// batch limit, and the REAPI versions 2.0 through 2.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_describe_the_cache() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    for instance in ["", "some/instance"] {
        let caps = caps(&ch)
            .get_capabilities(GetCapabilitiesRequest { instance_name: instance.into() })
            .await
            .expect("GetCapabilities")
            .into_inner();
        let cache = caps.cache_capabilities.as_ref().expect("cache_capabilities");
        for f in [reapi::digest_function::Value::Sha256, reapi::digest_function::Value::Blake3] {
            assert!(cache.digest_functions.contains(&(f as i32)), "{f:?} missing from {:?}", cache.digest_functions);
        }
        let update = cache.action_cache_update_capabilities.as_ref().expect("action_cache_update_capabilities");
        assert!(update.update_enabled, "Bazel refuses a cache whose AC updates are disabled");
        assert!(cache.max_batch_total_size_bytes > 0, "max_batch_total_size_bytes must be set");
        assert_eq!(cache.max_batch_total_size_bytes as u64, server.config.max_batch_total_size);
        assert_eq!(semver(caps.low_api_version.as_ref()), (2, 0));
        assert_eq!(semver(caps.high_api_version.as_ref()), (2, 3));
        // A cache, not an executor.
        assert!(!caps.execution_capabilities.is_some_and(|e| e.exec_enabled));
    }
}

/// A path-traversing or reserved instance name is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_reject_bad_instance_names() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    for bad in ["../x", "a//b", "blobs", "a/./b", "/lead", "trail/"] {
        let r = caps(&ch).get_capabilities(GetCapabilitiesRequest { instance_name: bad.into() }).await;
        assert_status(r, Code::InvalidArgument, &["instance name", bad], bad);
    }
    // Still serving afterwards.
    caps(&ch).get_capabilities(GetCapabilitiesRequest::default()).await.expect("good call after bad ones");
}

/// grpc.health.v1: the whole server ("") and each REAPI service are SERVING;
/// an unknown service is NOT_FOUND, as the health protocol prescribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "build.bazel.remote.execution.v2.ActionCache",
        "build.bazel.remote.execution.v2.Capabilities",
        "google.bytestream.ByteStream",
    ] {
        let resp = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("Check({service:?}): {e:?}"))
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let r = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_status(r, Code::NotFound, &[], "unknown service");
}

/// One server takes a burst of bad input on every service (and a client that
/// vanishes mid-upload), then still reports SERVING and answers good calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keeps_serving_after_bad_input() {
    use cairn::proto::bytestream::{ReadRequest, WriteRequest};
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let bad = digest("NOT-A-HASH", -1);

    let r = cas(&ch)
        .find_missing_blobs(reapi::FindMissingBlobsRequest { blob_digests: vec![bad.clone()], ..Default::default() })
        .await;
    assert_status(r, Code::InvalidArgument, &[], "FindMissingBlobs");
    let r = cas(&ch).get_tree(reapi::GetTreeRequest { root_digest: Some(bad.clone()), ..Default::default() }).await;
    assert_status(r.map(|_| ()), Code::InvalidArgument, &[], "GetTree");
    let r = ac(&ch)
        .get_action_result(reapi::GetActionResultRequest { action_digest: Some(bad.clone()), ..Default::default() })
        .await;
    assert_status(r, Code::InvalidArgument, &[], "GetActionResult");
    let r = ac(&ch).update_action_result(reapi::UpdateActionResultRequest::default()).await;
    assert_status(r, Code::InvalidArgument, &[], "UpdateActionResult");
    let r = bs(&ch).read(ReadRequest { resource_name: "../../etc/passwd".into(), ..Default::default() }).await;
    assert_status(r.map(|_| ()), Code::InvalidArgument, &[], "Read");
    let r =
        send(&mut bs(&ch), vec![WriteRequest { resource_name: "uploads/x/blobs/zz/1".into(), ..Default::default() }])
            .await;
    assert_status(r, Code::InvalidArgument, &[], "Write");

    // A client that starts a 1 MiB upload and vanishes.
    let data = gen_blob(1, 1 << 20);
    let name = fresh_upload_name(&sha256(&data));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(write_requests(&name, &data[..4096], 0, 4096).remove(0)).await.unwrap();
    let mut client = bs(&ch);
    let task = tokio::spawn(async move { client.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    task.abort();
    drop(tx);

    // Still healthy, and every service answers a good call.
    let mut health = HealthClient::new(ch.clone());
    let resp = health.check(HealthCheckRequest { service: String::new() }).await.expect("Check").into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32);
    caps(&ch).get_capabilities(GetCapabilitiesRequest::default()).await.expect("GetCapabilities");
    let d = upload(&mut cas(&ch), &[b"after the storm"]).await.remove(0);
    assert_eq!(read(&mut bs(&ch), &read_name("", &d), 0, 0).await.expect("Read"), b"after the storm");
    let action = sha256(b"final action");
    let result = reapi::ActionResult { exit_code: 3, ..Default::default() };
    let update = reapi::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(result.clone()),
        ..Default::default()
    };
    ac(&ch).update_action_result(update).await.expect("UpdateActionResult");
    let got = ac(&ch)
        .get_action_result(reapi::GetActionResultRequest { action_digest: Some(action), ..Default::default() })
        .await
        .expect("GetActionResult");
    assert_eq!(got.into_inner(), result);
}
