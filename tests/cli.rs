//! The `cairn` binary itself: start-up line, flag errors, `cairn stats`
//! against a running server, clean exit on SIGTERM, restart keeps data.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cairn::client::Client;
use cairn::digest::DigestFunction;
use common::process::ServerProcess;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

#[test]
fn bad_flags_get_clear_errors() {
    let out = cairn().args(["serve", "--max-size", "ten gigs"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-size") && err.contains("ten gigs"), "{err}");

    let out = cairn().args(["serve", "--min-age", "12"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a unit"));

    let dir = tempfile::tempdir().unwrap();
    let out = cairn().args(["stats", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no cairn data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_while_serving_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--max-size", "1GiB"]);
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let blobs: Vec<_> = (0..10u8)
        .map(|i| {
            let b = Bytes::from(vec![i; 1000 + i as usize]);
            (DigestFunction::Sha256.digest_of(&b), b)
        })
        .collect();
    c.batch_upload(&blobs).await.unwrap();
    let action = DigestFunction::Sha256.digest_of(b"a");
    c.update_action_result(&action, Default::default()).await.unwrap();
    assert!(c.get_action_result(&action).await.unwrap().is_some());
    assert!(c.get_action_result(&DigestFunction::Sha256.digest_of(b"b")).await.unwrap().is_none());

    let out = cairn().args(["stats", "--json", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cas_count"], 10);
    assert_eq!(v["cas_bytes"], (0..10).map(|i| 1000 + i).sum::<i64>());
    assert_eq!(v["ac_count"], 1);

    server.terminate();
    // The restart reports what it holds, and keeps it.
    let server = ServerProcess::start(&data, &[]);
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let digests: Vec<_> = blobs.iter().map(|b| b.0).collect();
    assert!(c.find_missing(&digests).await.unwrap().is_empty());
    assert!(c.get_action_result(&action).await.unwrap().is_some());
    server.terminate();
    let out = cairn().args(["stats", "--data-dir"]).arg(&data).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10 blobs"), "{text}");
    assert!(text.contains("AC hits / misses  2 / 1"), "{text}");
}
