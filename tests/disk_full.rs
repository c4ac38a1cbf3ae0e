//! A full disk: writes fail with RESOURCE_EXHAUSTED and a message saying so,
//! reads keep working, nothing stored is harmed, and writes work again once
//! space returns. Runs the server on a small tmpfs mounted for the test
//! (tests run as root here; the mount is removed on drop).

mod common;

use std::time::Duration;

use bytes::Bytes;
use cairn::client::{Client, ClientError};
use cairn::config::Config;
use cairn::digest::{Digest, DigestFunction};
use common::small_disk::SmallDisk;
use common::TestServer;

fn blob(n: usize, seed: u8) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
    let data = Bytes::from(data);
    (DigestFunction::Sha256.digest_of(&data), data)
}

fn is_exhausted(e: &ClientError) -> bool {
    match e {
        ClientError::Rpc { status, .. } => {
            status.code() == tonic::Code::ResourceExhausted && status.message().contains("disk is full")
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_writes_cleanly_and_recovers() {
    let disk = SmallDisk::mount("96m");
    let data_dir = disk.path.join("data");
    let server = TestServer::start_with(Config::for_data_dir(&data_dir)).await;
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();

    let small = blob(1000, 3);
    let large = blob(2 << 20, 5);
    c.batch_upload(std::slice::from_ref(&small)).await.unwrap();
    c.write_bytes(&large.0, large.1.clone()).await.unwrap();

    let filler = disk.fill(256 * 1024);
    // A large upload no longer fits.
    let big = blob(4 << 20, 7);
    let err = c.write_bytes(&big.0, big.1.clone()).await.unwrap_err();
    assert!(is_exhausted(&err), "want RESOURCE_EXHAUSTED, got {err}");
    // Reads keep working and stored data is intact.
    assert_eq!(c.batch_read(&[small.0]).await.unwrap()[0].as_deref(), Some(&small.1[..]));
    let out = disk.path.join("..").join("readback");
    assert!(c.read_to_file(&large.0, &out).await.unwrap());
    assert!(c.find_missing(&[big.0]).await.unwrap() == vec![big.0], "a failed upload became visible");

    // Completely full: small blobs (stored inside RocksDB) either still fit
    // in the log space RocksDB reserved ahead, or are refused with
    // RESOURCE_EXHAUSTED; never another error, and nothing already stored
    // is harmed.
    std::fs::remove_file(&filler).unwrap();
    let filler = disk.fill(0);
    let tiny = blob(3000, 11);
    for i in 0..50u8 {
        let b = blob(3000 + i as usize, 11);
        if let Err(e) = c.batch_upload(std::slice::from_ref(&b)).await {
            assert!(is_exhausted(&e), "want RESOURCE_EXHAUSTED, got {e}");
        }
    }
    assert_eq!(c.batch_read(&[small.0]).await.unwrap()[0].as_deref(), Some(&small.1[..]));
    assert!(c.read_to_file(&large.0, &out).await.unwrap());

    // Space returns: writes work again.
    std::fs::remove_file(&filler).unwrap();
    c.batch_upload(std::slice::from_ref(&tiny)).await.unwrap();
    c.write_bytes(&big.0, big.1.clone()).await.unwrap();
    let more = blob(2000, 9);
    c.batch_upload(std::slice::from_ref(&more)).await.unwrap();
    assert!(c.find_missing(&[big.0, more.0, small.0, large.0]).await.unwrap().is_empty());
    server.stop().await;
}
