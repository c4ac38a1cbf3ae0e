//! Real clients as the metrics see them: a real Bazel (sends its own
//! RequestMetadata, tool `bazel`) and a real `go build` through `cairn
//! gocacheprog` (tool `cairn-gocacheprog`) against the in-process server;
//! their ActionCache hits and misses land under their own tool, in
//! `/metrics` and in `/status`.
//!
//! Needs Bazel and Go (scripts/setup.sh); without them these tests fail.

mod bazel_support;
mod common;
mod go_support;

use bazel_support::runner::Bazel;
use common::admin::{self, Scrape};
use common::TestServer;
use go_support::{compiles, Workspace};

fn lookups(m: &Scrape, store: &str, tool: &str, result: &str) -> f64 {
    m.sum("cairn_lookups_total", &[("store", store), ("tool", tool), ("result", result)])
}

#[tokio::test(flavor = "multi_thread")]
async fn bazel_lookups_are_counted_under_tool_bazel() {
    let server = TestServer::start().await;
    let bazel = Bazel::new("metrics");
    let flags = vec![format!("--remote_cache={}", server.grpc_url())];
    let cold = bazel.build(&flags).await;
    let cacheable = cold.summary.cacheable();
    assert!(cacheable > 0, "{}", cold.describe());
    bazel.clean_expunge().await;
    let warm = bazel.build(&flags).await;
    assert_eq!(warm.summary.remote_cache_hits(), cacheable, "{}", warm.describe());

    let m = Scrape::take(server.admin).await;
    // Each cacheable action: one GetActionResult miss cold, one hit warm.
    assert_eq!(lookups(&m, "ac", "bazel", "miss"), cacheable as f64, "{}", m.text);
    assert_eq!(lookups(&m, "ac", "bazel", "hit"), cacheable as f64, "{}", m.text);
    // The warm build read outputs back through ByteStream.
    assert!(
        m.value("cairn_lookups_total", &[("store", "cas"), ("rpc", "Read"), ("tool", "bazel"), ("result", "hit")])
            > 0.0
    );
    assert_eq!(m.sum("cairn_lookups_total", &[("tool", "none")]), 0.0, "every Bazel call carries RequestMetadata");

    let s = admin::status(server.admin).await;
    let day = &s["clients"]["bazel"]["last_day"];
    assert_eq!(day["ac_hits"], cacheable);
    assert_eq!(day["ac_misses"], cacheable);
    assert_eq!(day["ac_hit_rate"], 0.5);
    assert!(s["clients"]["go"]["last_day"]["ac_hit_rate"].is_null());
    drop(bazel);
    server.stop().await;
}

#[test]
fn go_shim_lookups_are_counted_under_its_own_tool_name() {
    let _one = go_support::one_at_a_time();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start());
    let url = server.grpc_url();
    let ws = Workspace::new();
    let a = [("CAIRN_REMOTE", url.as_str()), ("CAIRN_WAIT_FOR_UPLOADS", "1")];
    let cold = ws.go_env("gocache-a", &a, &["build", "-x", "-o", ws.root.join("bin/a").to_str().unwrap(), "./cmd/app"]);
    assert!(compiles(&cold.stderr).len() >= 4, "a cold build compiles:\n{}", cold.stderr);
    // Machine B, no prefetching: every entry through GetActionResult.
    let b = [("CAIRN_REMOTE", url.as_str()), ("CAIRN_PREFETCH", "false")];
    let warm = ws.go_env("gocache-b", &b, &["build", "-x", "-o", ws.root.join("bin/b").to_str().unwrap(), "./cmd/app"]);
    assert_eq!(compiles(&warm.stderr), Vec::<&str>::new(), "machine B compiled:\n{}", warm.stderr);

    let tool = cairn::client::GOCACHEPROG_TOOL_NAME;
    assert_eq!(tool, "cairn-gocacheprog");
    let m = rt.block_on(Scrape::take(server.admin));
    assert!(lookups(&m, "ac", tool, "miss") >= 4.0, "the cold build's misses:\n{}", m.text);
    assert!(lookups(&m, "ac", tool, "hit") >= 4.0, "machine B's hits:\n{}", m.text);
    assert_eq!(m.sum("cairn_lookups_total", &[("tool", "none")]), 0.0, "every shim call carries RequestMetadata");
    assert_eq!(m.sum("cairn_lookups_total", &[("tool", "bazel")]), 0.0);

    let s = rt.block_on(admin::status(server.admin));
    let go = &s["clients"]["go"]["last_hour"];
    assert_eq!(go["ac_hits"].as_f64().unwrap(), lookups(&m, "ac", tool, "hit"));
    assert!(go["ac_hit_rate"].as_f64().unwrap() > 0.0);
    assert!(s["clients"]["bazel"]["last_hour"]["ac_hit_rate"].is_null());
    rt.block_on(server.stop());
}
