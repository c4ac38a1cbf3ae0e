//! Mixed CI: one cairn server, one instance name, a real Bazel build and a
//! real Go build both populate it; then both lose all local state and
//! rebuild from it: Bazel with every action a remote cache hit, Go without a
//! single compile. Go's entries live in their own ActionCache namespace
//! (see `gocache::mapping`), so neither sees the other's results, while
//! their blobs share the CAS.
//!
//! Needs Bazel and Go (scripts/setup.sh installs both).

mod bazel_support;
mod common;
mod go_support;

use bazel_support::runner::Bazel;
use common::TestServer;
use go_support::{compiles, Workspace, APP_OUTPUT};

#[tokio::test(flavor = "multi_thread")]
async fn bazel_and_go_share_one_server() {
    let server = TestServer::start().await;
    let url = server.grpc_url();
    let flags = vec![format!("--remote_cache={url}")];

    // Both populate the server: Bazel cold, then Go cold.
    let bazel = Bazel::new("original");
    let cold = bazel.build(&flags).await;
    eprintln!("bazel cold: {}", cold.describe());
    let s = &cold.summary;
    assert!(s.cacheable() > 0, "{s:?}");
    assert_eq!(s.remote_cache_hits(), 0, "hits from an empty cache: {s:?}");

    let ws = std::sync::Arc::new(Workspace::new());
    let go = |gocache: &'static str, extra: Vec<(&'static str, String)>| {
        let (ws, url) = (ws.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let target = ws.root.join(format!("bin/{gocache}"));
            let mut env = vec![("CAIRN_REMOTE", url)];
            env.extend(extra);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ws.go_env(gocache, &env, &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"])
        })
    };
    let go_cold = go("gocache-a", vec![("CAIRN_WAIT_FOR_UPLOADS", "1".into())]).await.unwrap();
    assert!(compiles(&go_cold.stderr).len() >= 4, "go cold build compiles");

    // Local state wiped: Bazel's output base, a fresh GOCACHE (and cairn dir).
    bazel.clean_expunge().await;
    let warm = bazel.build(&flags).await;
    eprintln!("bazel after expunge: {}", warm.describe());
    let s = &warm.summary;
    assert_eq!(s.cacheable(), cold.summary.cacheable(), "{s:?}");
    assert_eq!(
        s.remote_cache_hits(),
        s.cacheable(),
        "not every Bazel action was a remote cache hit: {s:?}\nmisses: {:#?}",
        warm.misses()
    );

    let go_warm = go("gocache-b", Vec::new()).await.unwrap();
    assert_eq!(
        compiles(&go_warm.stderr),
        Vec::<&str>::new(),
        "go compiled after its local state was wiped:\n{}",
        go_warm.stderr
    );
    assert!(ws.read("bin/gocache-a") == ws.read("bin/gocache-b"), "go binaries differ");
    assert_eq!(ws.run_app("bin/gocache-b"), APP_OUTPUT);
    eprintln!("go: cold {:.1}s, after wipe {:.2}s", go_cold.elapsed.as_secs_f64(), go_warm.elapsed.as_secs_f64());

    drop(bazel);
    server.stop().await;
}
