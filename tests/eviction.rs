//! The size limit holds: filling past `--max-size` evicts least recently used
//! entries (reads count as use), hot entries survive, the minimum age is
//! honoured and its overrun reported, and everything survives a restart.

mod common;

use std::time::Duration;

use bytes::Bytes;
use cairn::client::Client;
use cairn::config::Config;
use cairn::digest::{Digest, DigestFunction};
use common::TestServer;

const BLOB: usize = 100_000;

fn blob(seed: u32) -> (Digest, Bytes) {
    let data: Vec<u8> =
        (0..BLOB as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) as u8).collect();
    let data = Bytes::from(data);
    (DigestFunction::Sha256.digest_of(&data), data)
}

async fn client(server: &TestServer) -> Client {
    Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap()
}

/// Waits (bounded) until the store's bytes satisfy `pred`.
async fn wait_for_stats(server: &TestServer, pred: impl Fn(&cairn::store::Stats) -> bool) -> cairn::store::Stats {
    for _ in 0..100 {
        let s = cairn::store::read_stats(server.data_dir()).unwrap();
        if pred(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cairn::store::read_stats(server.data_dir()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_holds_and_hot_entries_survive() {
    let (_tmp, path) = common::temp_data_dir();
    let mut config = Config::for_data_dir(&path);
    config.max_size = 3_000_000;
    config.min_age = Duration::ZERO;
    let server = TestServer::start_with(config.clone()).await;
    let c = client(&server).await;

    let hot: Vec<_> = (0..5).map(blob).collect();
    let cold: Vec<_> = (100..120).map(blob).collect();
    c.batch_upload(&hot).await.unwrap();
    c.batch_upload(&cold).await.unwrap();
    // LRU time has one-second resolution: use the hot set in a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hot_digests: Vec<Digest> = hot.iter().map(|b| b.0).collect();
    assert!(c.batch_read(&hot_digests).await.unwrap().iter().all(Option::is_some));
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Push well past the limit.
    let fresh: Vec<_> = (200..215).map(blob).collect();
    for b in &fresh {
        c.write_bytes(&b.0, b.1.clone()).await.unwrap();
    }
    let stats = wait_for_stats(&server, |s| s.total_bytes() <= 3_000_000).await;
    assert!(stats.total_bytes() <= 3_000_000, "limit not held: {stats:?}");
    assert!(stats.evictions > 0);
    assert!(c.find_missing(&hot_digests).await.unwrap().is_empty(), "hot entries were evicted");
    let cold_digests: Vec<Digest> = cold.iter().map(|b| b.0).collect();
    assert!(!c.find_missing(&cold_digests).await.unwrap().is_empty(), "nothing cold was evicted");

    // A restart keeps the survivors and the accounting.
    let config = server.stop().await;
    let server = TestServer::start_with(config).await;
    let c = client(&server).await;
    assert!(c.find_missing(&hot_digests).await.unwrap().is_empty());
    let after = cairn::store::read_stats(server.data_dir()).unwrap();
    assert_eq!(after.cas_count, stats.cas_count);
    assert_eq!(after.cas_bytes, stats.cas_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_age_is_honoured_and_overrun_reported() {
    let (_tmp, path) = common::temp_data_dir();
    let mut config = Config::for_data_dir(&path);
    config.max_size = 500_000;
    config.min_age = Duration::from_secs(3600);
    let server = TestServer::start_with(config).await;
    let c = client(&server).await;
    let blobs: Vec<_> = (0..10).map(blob).collect();
    c.batch_upload(&blobs).await.unwrap();
    let stats = wait_for_stats(&server, |s| s.min_age_overruns > 0).await;
    assert!(stats.min_age_overruns > 0, "{stats:?}");
    assert_eq!(stats.evictions, 0);
    let digests: Vec<Digest> = blobs.iter().map(|b| b.0).collect();
    assert!(c.find_missing(&digests).await.unwrap().is_empty(), "young entries were evicted");
}
