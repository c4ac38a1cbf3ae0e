//! GetActionResult answers NOT_FOUND, never a dangling result, when any blob
//! the result names is missing from the CAS: an output file, stdout, stderr,
//! an output directory's Tree blob, or a file inside that tree.

mod common;

use std::time::Duration;

use bytes::Bytes;
use cairn::client::Client;
use cairn::digest::{Digest, DigestFunction};
use cairn::proto::reapi;
use common::TestServer;
use prost::Message;

fn put(name: &str) -> (Digest, Bytes) {
    let data = Bytes::from(format!("contents of {name}"));
    (DigestFunction::Sha256.digest_of(&data), data)
}

/// A result naming `out`, `stdout`, `stderr` and a tree whose one file is `inner`.
fn result(out: &Digest, stdout: &Digest, stderr: &Digest, tree: &Digest) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out".into(),
            digest: Some(out.to_proto()),
            ..Default::default()
        }],
        output_directories: vec![reapi::OutputDirectory {
            path: "dir".into(),
            tree_digest: Some(tree.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(stdout.to_proto()),
        stderr_digest: Some(stderr.to_proto()),
        ..Default::default()
    }
}

fn tree_of(inner: &Digest) -> (Digest, Bytes) {
    let tree = reapi::Tree {
        root: Some(reapi::Directory {
            files: vec![reapi::FileNode { name: "f".into(), digest: Some(inner.to_proto()), ..Default::default() }],
            ..Default::default()
        }),
        children: vec![],
    };
    let bytes = Bytes::from(tree.encode_to_vec());
    (DigestFunction::Sha256.digest_of(&bytes), bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_missing_blob_makes_a_miss() {
    let server = TestServer::start().await;
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let (out, stdout, stderr, inner) = (put("out"), put("stdout"), put("stderr"), put("inner"));
    let tree = tree_of(&inner.0);
    let all = [&out, &stdout, &stderr, &inner, &tree];

    // Each case leaves exactly one blob out of the CAS.
    for (i, missing) in ["output file", "stdout", "stderr", "file inside the tree", "tree"].iter().enumerate() {
        let present: Vec<(Digest, Bytes)> =
            all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, b)| (*b).clone()).collect();
        // A fresh instance per case, so earlier uploads don't fill the gap.
        let (_tmp, path) = common::temp_data_dir();
        let server = TestServer::start_with(cairn::config::Config::for_data_dir(&path)).await;
        let c2 = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
        c2.batch_upload(&present).await.unwrap();
        let action = DigestFunction::Sha256.digest_of(format!("action {i}").as_bytes());
        c2.update_action_result(&action, result(&out.0, &stdout.0, &stderr.0, &tree.0)).await.unwrap();
        assert!(
            c2.get_action_result(&action).await.unwrap().is_none(),
            "a result with a missing {missing} was returned"
        );
        // Supplying the missing blob makes the same result a hit.
        c2.batch_upload(&[all[i].clone()]).await.unwrap();
        assert!(c2.get_action_result(&action).await.unwrap().is_some(), "complete result ({missing} added) missed");
        // The incomplete result was a miss to the client, and is counted so.
        server.stop().await;
        let stats = cairn::store::read_stats(&path).unwrap();
        assert_eq!((stats.ac_hits, stats.ac_misses), (1, 1), "{missing}: {stats:?}");
    }

    // And the plain complete case on the first server.
    let everything: Vec<(Digest, Bytes)> = all.iter().map(|b| (*b).clone()).collect();
    c.batch_upload(&everything).await.unwrap();
    let action = DigestFunction::Sha256.digest_of(b"complete");
    c.update_action_result(&action, result(&out.0, &stdout.0, &stderr.0, &tree.0)).await.unwrap();
    assert!(c.get_action_result(&action).await.unwrap().is_some());
}

/// A lookup that finds a result naming a missing blob answers NOT_FOUND and
/// is counted as a miss, not a hit; a complete result is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_results_count_as_misses() {
    let (_dir, path) = common::temp_data_dir();
    let server = TestServer::start_with(cairn::config::Config::for_data_dir(&path)).await;
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let (out, stdout, stderr, inner) = (put("out"), put("stdout"), put("stderr"), put("inner"));
    let tree = tree_of(&inner.0);
    // Everything but the output file.
    c.batch_upload(&[stdout.clone(), stderr.clone(), inner.clone(), tree.clone()]).await.unwrap();
    let action = DigestFunction::Sha256.digest_of(b"counted");
    c.update_action_result(&action, result(&out.0, &stdout.0, &stderr.0, &tree.0)).await.unwrap();
    assert!(c.get_action_result(&action).await.unwrap().is_none());
    c.batch_upload(&[out]).await.unwrap();
    assert!(c.get_action_result(&action).await.unwrap().is_some());
    drop(c);
    let config = server.stop().await;
    let stats = cairn::store::read_stats(&config.data_dir).unwrap();
    assert_eq!((stats.ac_hits, stats.ac_misses), (1, 1), "one incomplete (a miss) and one complete lookup (a hit)");
}
