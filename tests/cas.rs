//! ContentAddressableStorage FindMissingBlobs / BatchUpdateBlobs /
//! BatchReadBlobs against the real server (GetTree is in get_tree.rs).
//! Bad inputs come as tables; every table ends with a good call to show the
//! server kept serving.

mod common;
mod rpc;

use cairn::config::Config;
use cairn::proto::reapi::{
    self, batch_update_blobs_request, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
};
use common::TestServer;
use rpc::*;
use tonic::Code;

const HELLO: &[u8] = b"hello, cas";

fn update_req(d: reapi::Digest, data: &[u8]) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request { digest: Some(d), data: data.to_vec().into(), compressor: 0 }
}

fn find_req(instance: &str, function: i32, digests: Vec<reapi::Digest>) -> FindMissingBlobsRequest {
    FindMissingBlobsRequest { instance_name: instance.into(), blob_digests: digests, digest_function: function }
}

fn read_req(instance: &str, function: i32, digests: Vec<reapi::Digest>) -> BatchReadBlobsRequest {
    BatchReadBlobsRequest {
        instance_name: instance.into(),
        digests,
        acceptable_compressors: vec![],
        digest_function: function,
    }
}

fn sorted(mut v: Vec<reapi::Digest>) -> Vec<reapi::Digest> {
    v.sort_by(|a, b| (&a.hash, a.size_bytes).cmp(&(&b.hash, b.size_bytes)));
    v
}

/// Present and absent blobs in one call: exactly the absent ones come back;
/// the empty blob is always present; a stored hash with the wrong size is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_reports_exactly_the_absent() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut cas = cas(&ch);
    let stored = upload(&mut cas, &[HELLO, b"second blob"]).await;
    let absent = [sha256(b"never uploaded"), sha256(b"nor this")];
    let empty = digest(EMPTY_SHA256, 0);
    let wrong_size = digest(&stored[0].hash, stored[0].size_bytes + 1);

    let query = vec![
        stored[0].clone(),
        absent[0].clone(),
        stored[1].clone(),
        empty.clone(),
        absent[1].clone(),
        wrong_size.clone(),
    ];
    // CAS is shared by all instances, and UNKNOWN(0) means SHA-256 for 64-digit hashes.
    for (instance, function) in [("", SHA256), ("some/instance", SHA256), ("", UNKNOWN_FN)] {
        let missing = find_missing(&mut cas, instance, function, &query).await;
        assert_eq!(
            missing,
            sorted(vec![absent[0].clone(), absent[1].clone(), wrong_size.clone()]),
            "{instance:?}/{function}"
        );
    }
    // The empty blob is present without ever being uploaded, under both functions.
    assert!(find_missing(&mut cas, "", SHA256, &[empty]).await.is_empty());
    assert!(find_missing(&mut cas, "", BLAKE3, &[blake3(b"")]).await.is_empty());
    // An empty request is fine.
    assert!(find_missing(&mut cas, "", SHA256, &[]).await.is_empty());
}

/// Malformed digests fail the whole call with INVALID_ARGUMENT naming the
/// offending entry and the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_rejects_malformed_digests() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let good = sha256(HELLO);
    let h = good.hash.clone();
    let cases: Vec<(&str, reapi::Digest, &str)> = vec![
        ("63 characters", digest(&h[..63], 5), "63 characters"),
        ("65 characters", digest(&format!("{h}0"), 5), "65 characters"),
        ("empty hash", digest("", 5), "0 characters"),
        ("upper case", digest(&h.to_uppercase(), 5), "lower-case hex"),
        ("non-hex", digest(&format!("{}g", &h[..63]), 5), "lower-case hex"),
        ("negative size", digest(&h, -1), "negative size"),
    ];
    for (what, bad, needle) in cases {
        // The bad digest is second, after a good one: the message names its index.
        let r = cas.find_missing_blobs(find_req("", SHA256, vec![good.clone(), bad])).await;
        assert_status(r, Code::InvalidArgument, &["blob_digests[1]", needle], what);
    }
    // BLAKE3 hashes are 64 hex digits too; a SHA-256-length rule is not enough.
    let r = cas.find_missing_blobs(find_req("", BLAKE3, vec![digest(&h[..40], 5)])).await;
    assert_status(r, Code::InvalidArgument, &["40 characters"], "short blake3");

    assert!(!find_missing(&mut cas, "", SHA256, &[good]).await.is_empty(), "still serving");
}

/// Digest functions the server does not implement are INVALID_ARGUMENT on
/// every CAS call, naming the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_digest_functions_are_rejected() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let d = sha256(HELLO);
    for (function, needle) in [(2, "SHA1"), (3, "MD5"), (8, "SHA256TREE"), (99, "99"), (-1, "-1")] {
        let what = format!("digest_function {function}");
        let r = cas.find_missing_blobs(find_req("", function, vec![d.clone()])).await;
        assert_status(r, Code::InvalidArgument, &["digest function", needle], &what);
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests: vec![update_req(d.clone(), HELLO)],
                digest_function: function,
            })
            .await;
        assert_status(r, Code::InvalidArgument, &["digest function", needle], &what);
        let r = cas.batch_read_blobs(read_req("", function, vec![d.clone()])).await;
        assert_status(r, Code::InvalidArgument, &["digest function", needle], &what);
    }
    // Nothing was stored by the rejected updates.
    assert!(!is_present(&mut cas, &d).await);
}

/// Path-traversing, empty-segment and reserved instance names are refused
/// by every CAS call, naming the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_instance_names_are_rejected() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let d = sha256(HELLO);
    for bad in ["../x", "a//b", "blobs", "x/uploads/y", "a/./b", "/lead", "trail/", "..", "compressed-blobs"] {
        let r = cas.find_missing_blobs(find_req(bad, SHA256, vec![d.clone()])).await;
        assert_status(r, Code::InvalidArgument, &["instance name", bad], bad);
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: bad.into(),
                requests: vec![update_req(d.clone(), HELLO)],
                digest_function: SHA256,
            })
            .await;
        assert_status(r, Code::InvalidArgument, &["instance name", bad], bad);
        let r = cas.batch_read_blobs(read_req(bad, SHA256, vec![d.clone()])).await;
        assert_status(r, Code::InvalidArgument, &["instance name", bad], bad);
    }
    assert!(!is_present(&mut cas, &d).await, "rejected updates stored nothing");
    upload(&mut cas, &[HELLO]).await;
    assert!(is_present(&mut cas, &d).await, "still serving");
}

/// BLAKE3 blobs are stored and found with digest_function = BLAKE3, and are
/// a separate namespace from SHA-256 (the same hex under SHA-256 is missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_blobs_round_trip() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let d = blake3(HELLO);
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![update_req(d.clone(), HELLO), update_req(sha256(b"x"), b"x")],
            digest_function: BLAKE3,
        })
        .await
        .expect("BatchUpdateBlobs")
        .into_inner();
    assert_rpc_status(resp.responses[0].status.as_ref(), Code::Ok, &[], "blake3 upload");
    // A SHA-256 digest presented as BLAKE3 does not verify.
    assert_rpc_status(
        resp.responses[1].status.as_ref(),
        Code::InvalidArgument,
        &["blake3"],
        "sha256 data under blake3",
    );

    assert!(find_missing(&mut cas, "", BLAKE3, std::slice::from_ref(&d)).await.is_empty());
    assert_eq!(
        find_missing(&mut cas, "", SHA256, std::slice::from_ref(&d)).await,
        vec![d.clone()],
        "BLAKE3 and SHA-256 are separate keys"
    );
    let read = cas.batch_read_blobs(read_req("", BLAKE3, vec![d.clone()])).await.expect("BatchReadBlobs").into_inner();
    assert_rpc_status(read.responses[0].status.as_ref(), Code::Ok, &[], "blake3 read");
    assert_eq!(&read.responses[0].data[..], HELLO);
}

/// Update then read a batch of blobs (empty, small, near-inline-limit);
/// an absent blob is a per-blob NOT_FOUND naming it, not a failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_round_trip_and_per_blob_not_found() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let big = gen_blob(7, 300 << 10); // above the 256 KiB inline threshold
    let blobs: Vec<&[u8]> = vec![b"", HELLO, &big];
    let digests = upload(&mut cas, &blobs).await;
    let absent = sha256(b"absent");

    let mut query = digests.clone();
    query.push(absent.clone());
    let resp = cas.batch_read_blobs(read_req("", SHA256, query)).await.expect("BatchReadBlobs").into_inner();
    assert_eq!(resp.responses.len(), 4);
    for (i, blob) in blobs.iter().enumerate() {
        let r = &resp.responses[i];
        assert_rpc_status(r.status.as_ref(), Code::Ok, &[], "stored blob");
        assert_eq!(r.digest.as_ref(), Some(&digests[i]));
        assert_eq!(&r.data[..], *blob, "blob {i}");
    }
    let miss = &resp.responses[3];
    assert_eq!(miss.digest.as_ref(), Some(&absent));
    assert_rpc_status(miss.status.as_ref(), Code::NotFound, &[&absent.hash], "absent blob");
    assert!(miss.data.is_empty());

    // A stored hash asked for with the wrong size is not that blob.
    let wrong = digest(&digests[1].hash, 3);
    let resp = cas.batch_read_blobs(read_req("", SHA256, vec![wrong])).await.expect("BatchReadBlobs").into_inner();
    assert_rpc_status(resp.responses[0].status.as_ref(), Code::NotFound, &[], "wrong size");
}

/// In one batch, blobs that fail verification get their own INVALID_ARGUMENT
/// while the others are stored; nothing of a rejected blob becomes readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_rejects_bad_blobs_individually() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let good1: &[u8] = b"good one";
    let good2: &[u8] = b"good two";
    let claimed = sha256(b"what the client claims");
    let h = sha256(HELLO).hash;
    // (request, expected code, needles)
    let cases: Vec<(batch_update_blobs_request::Request, Code, Vec<&str>)> = vec![
        (update_req(sha256(good1), good1), Code::Ok, vec![]),
        // Right size, wrong content: the hash does not match.
        (
            update_req(digest(&claimed.hash, HELLO.len() as i64), HELLO),
            Code::InvalidArgument,
            vec!["hashes to", &claimed.hash],
        ),
        (update_req(sha256(good2), good2), Code::Ok, vec![]),
        // Data longer than the declared size.
        (update_req(digest(&h, 3), HELLO), Code::InvalidArgument, vec!["more than"]),
        // Data shorter than the declared size.
        (update_req(digest(&h, 100), HELLO), Code::InvalidArgument, vec!["100"]),
        (
            update_req(digest(&h.to_uppercase(), HELLO.len() as i64), HELLO),
            Code::InvalidArgument,
            vec!["lower-case hex"],
        ),
        (update_req(digest(&h, -4), HELLO), Code::InvalidArgument, vec!["negative size"]),
        (
            batch_update_blobs_request::Request { digest: None, data: HELLO.to_vec().into(), compressor: 0 },
            Code::InvalidArgument,
            vec!["digest is missing"],
        ),
    ];
    let requests = cases.iter().map(|c| c.0.clone()).collect();
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest { instance_name: String::new(), requests, digest_function: SHA256 })
        .await
        .expect("a batch with some bad blobs still succeeds as a call")
        .into_inner();
    assert_eq!(resp.responses.len(), cases.len());
    for (i, ((req, code, needles), got)) in cases.iter().zip(&resp.responses).enumerate() {
        assert_eq!(got.digest, req.digest, "response {i} names its blob");
        assert_rpc_status(got.status.as_ref(), *code, needles, &format!("blob {i}"));
    }

    // The good ones are readable; none of the rejected ones are.
    assert!(find_missing(&mut cas, "", SHA256, &[sha256(good1), sha256(good2)]).await.is_empty());
    let rejected = vec![digest(&claimed.hash, HELLO.len() as i64), digest(&h, 3), digest(&h, 100), sha256(HELLO)];
    assert_eq!(find_missing(&mut cas, "", SHA256, &rejected).await, sorted(rejected.clone()));
    let read = cas.batch_read_blobs(read_req("", SHA256, rejected)).await.expect("BatchReadBlobs").into_inner();
    for r in &read.responses {
        assert_rpc_status(r.status.as_ref(), Code::NotFound, &[], "rejected blob");
    }
}

/// Malformed digests in a BatchReadBlobs are that blob's INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_rejects_malformed_digests_individually() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let d = upload(&mut cas, &[HELLO]).await.remove(0);
    let bad = [digest(&d.hash[..10], 5), digest(&d.hash.to_uppercase(), d.size_bytes), digest(&d.hash, -1)];
    let needles = ["10 characters", "lower-case hex", "negative size"];
    let mut query = vec![d.clone()];
    query.extend(bad.iter().cloned());
    let resp = cas.batch_read_blobs(read_req("", SHA256, query)).await.expect("BatchReadBlobs").into_inner();
    assert_rpc_status(resp.responses[0].status.as_ref(), Code::Ok, &[], "good blob");
    assert_eq!(&resp.responses[0].data[..], HELLO);
    for (i, needle) in needles.iter().enumerate() {
        assert_rpc_status(resp.responses[i + 1].status.as_ref(), Code::InvalidArgument, &[needle], needle);
    }
}

/// A batch over the advertised max_batch_total_size_bytes fails as a whole
/// with INVALID_ARGUMENT and stores nothing; one exactly at the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_advertised_limit_are_rejected() {
    // The default limit, read from Capabilities as a client would.
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let limit = caps(&ch)
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .expect("GetCapabilities")
        .into_inner()
        .cache_capabilities
        .expect("cache capabilities")
        .max_batch_total_size_bytes as usize;
    assert_over_limit_rejected(&ch, limit).await;
    drop(ch);
    server.stop().await;

    // A small configured limit is advertised and enforced the same way.
    let (_dir, path) = common::temp_data_dir();
    let server = TestServer::start_with(Config { max_batch_total_size: 64 << 10, ..Config::for_data_dir(&path) }).await;
    let ch = server.channel().await;
    let advertised =
        caps(&ch).get_capabilities(reapi::GetCapabilitiesRequest::default()).await.expect("caps").into_inner();
    assert_eq!(advertised.cache_capabilities.expect("cache").max_batch_total_size_bytes, 64 << 10);
    assert_over_limit_rejected(&ch, 64 << 10).await;
}

async fn assert_over_limit_rejected(ch: &tonic::transport::Channel, limit: usize) {
    let mut cas = cas(ch);
    let a = gen_blob(1, limit / 2 + 1);
    let b = gen_blob(2, limit / 2);
    let (da, db) = (sha256(&a), sha256(&b));
    let over = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![update_req(da.clone(), &a), update_req(db.clone(), &b)],
            digest_function: SHA256,
        })
        .await;
    let limit_s = limit.to_string();
    assert_status(over, Code::InvalidArgument, &["max_batch_total_size_bytes", &limit_s], "update over the limit");
    assert_eq!(
        find_missing(&mut cas, "", SHA256, &[da.clone(), db.clone()]).await.len(),
        2,
        "nothing of a rejected batch is stored"
    );

    // Exactly at the limit is fine.
    let c = gen_blob(3, limit - b.len());
    upload(&mut cas, &[&b, &c]).await;
    // Reading more than the limit in one batch is refused too (a + b > limit, and b is stored).
    upload(&mut cas, &[&a]).await;
    let r = cas.batch_read_blobs(read_req("", SHA256, vec![da, db.clone()])).await;
    assert_status(r, Code::InvalidArgument, &["max_batch_total_size_bytes", &limit_s], "read over the limit");
    let ok = cas.batch_read_blobs(read_req("", SHA256, vec![db])).await.expect("read within limit").into_inner();
    assert_eq!(ok.responses[0].data[..], b[..]);
}

/// Declared sizes are client input: their sum must not overflow into a small
/// number that slips under the batch limit. Two stored 3 MiB blobs plus two
/// absent digests of 2^63 - 3 MiB bytes each add up to exactly 2^64, which
/// wraps to 0 in u64 arithmetic (and panics in a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_sizes_that_overflow_are_rejected() {
    let server = TestServer::start().await;
    let mut cas = cas(&server.channel().await);
    let a = gen_blob(31, 3 << 20);
    let b = gen_blob(32, 3 << 20);
    upload(&mut cas, &[&a]).await;
    upload(&mut cas, &[&b]).await;
    let huge = (1i64 << 62) * 2 - (3 << 20); // 2^63 - 3 MiB, written without overflowing i64
    let query = vec![sha256(&a), sha256(&b), digest(&"0".repeat(64), huge), digest(&"1".repeat(64), huge)];
    let r = cas.batch_read_blobs(read_req("", SHA256, query)).await;
    assert_status(r, Code::InvalidArgument, &["max_batch_total_size_bytes"], "sizes summing to 2^64");
    // A single absurd size is refused too, and the server still serves.
    let r = cas.batch_read_blobs(read_req("", SHA256, vec![digest(&"2".repeat(64), i64::MAX)])).await;
    assert_status(r, Code::InvalidArgument, &["max_batch_total_size_bytes"], "i64::MAX");
    assert!(is_present(&mut cas, &sha256(&a)).await);
}
