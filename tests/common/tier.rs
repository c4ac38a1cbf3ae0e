//! What the tests of nodes with a tier (upstream proxies, bucket nodes)
//! share: a client of a node, waiting for the write-behind to happen, and
//! the queue's depth.

use std::future::Future;
use std::time::{Duration, Instant};

use cairn::client::Client;

use super::admin::Scrape;
use super::process::ServerProcess;

/// A client of `server`'s gRPC port, default instance.
pub async fn client(server: &ServerProcess) -> Client {
    Client::connect(&server.grpc_url(), "", Duration::from_secs(10)).await.expect("connect")
}

/// Polls `check` until it holds; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The write-behind queue's depth on `server`.
pub async fn queued(server: &ServerProcess) -> f64 {
    Scrape::take(server.admin.expect("admin port")).await.value("cairn_tier_queue_entries", &[])
}
