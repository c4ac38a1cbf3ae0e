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
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: instance.into(),
            })
            .await
            .expect("GetCapabilities")
            .into_inner();
        let cache = caps.cache_capabilities.as_ref().expect("cache_capabilities");
        for f in [
            reapi::digest_function::Value::Sha256,
            reapi::digest_function::Value::Blake3,
        ] {
            assert!(
                cache.digest_functions.contains(&(f as i32)),
                "{f:?} missing from {:?}",
                cache.digest_functions
            );
        }
        let update = cache
            .action_cache_update_capabilities
            .as_ref()
            .expect("action_cache_update_capabilities");
        assert!(
            update.update_enabled,
            "Bazel refuses a cache whose AC updates are disabled"
        );
        assert!(
            cache.max_batch_total_size_bytes > 0,
            "max_batch_total_size_bytes must be set"
        );
        assert_eq!(
            cache.max_batch_total_size_bytes as u64,
            server.config.max_batch_total_size
        );
        assert_eq!(semver(caps.low_api_version.as_ref()), (2, 0));
        assert_eq!(semver(caps.high_api_version.as_ref()), (2, 3));
        // A cache, not an executor.
        assert!(!caps.execution_capabilities.map_or(false, |e| e.exec_enabled));
    }
}

/// A path-traversing or reserved instance name is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_reject_bad_instance_names() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    for bad in ["../x", "a//b", "blobs", "a/./b", "/lead", "trail/"] {
        let r = caps(&ch)
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: bad.into(),
            })
            .await;
        assert_status(r, Code::InvalidArgument, &["instance name", bad], bad);
    }
    // Still serving afterwards.
    caps(&ch)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("good call after bad ones");
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
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("Check({service:?}): {e:?}"))
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let r = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_status(r, Code::NotFound, &[], "unknown service");
}
