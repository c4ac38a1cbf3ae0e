//! ByteStream Read / Write / QueryWriteStatus against the real server: round
//! trips of every size class, ranged reads, and tables of malformed resource
//! names and bad writes. Interrupted, concurrent, resumed and 100 MiB uploads
//! are in bytestream_uploads.rs.

mod common;
mod rpc;

use cairn::proto::bytestream::WriteRequest;
use cairn::proto::reapi;
use common::TestServer;
use rpc::*;
use tonic::Code;

/// 0 bytes, small (inline, < 256 KiB), exactly the inline limit, just above
/// it (a blob file), and 1 MiB: each written, found, and read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_of_every_size_class() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let (mut bs, mut cas) = (bs(&ch), cas(&ch));
    for (seed, size) in [(0, 0usize), (1, 1000), (2, 256 << 10), (3, (256 << 10) + 1), (4, 1 << 20)] {
        let data = gen_blob(seed, size);
        let d = sha256(&data);
        assert_eq!(write(&mut bs, &fresh_upload_name(&d), &data).await.expect("Write"), size as i64, "{size} bytes");
        assert!(is_present(&mut cas, &d).await, "{size} bytes present after Write");
        let back = read(&mut bs, &read_name("", &d), 0, 0).await.expect("Read");
        assert_eq!(back.len(), size);
        assert!(back == data, "{size} bytes read back differ");
    }
    assert!(dir_entries(&server.data_dir().join("tmp")).is_empty(), "no temp files left behind");
}

/// Instance names prefix resource names; the CAS is shared by all instances,
/// and a digest-function segment selects BLAKE3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_blake3_resource_names() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut bs = bs(&ch);
    let data = b"written under an instance".to_vec();
    let d = sha256(&data);
    assert_eq!(write(&mut bs, &upload_name("team/a", "u1", &d), &data).await.unwrap(), data.len() as i64);
    assert_eq!(read(&mut bs, &read_name("team/a", &d), 0, 0).await.unwrap(), data);
    assert_eq!(read(&mut bs, &read_name("other", &d), 0, 0).await.unwrap(), data, "CAS is shared across instances");

    // REAPI 2.3 names with an explicit digest function, trailing metadata allowed on writes.
    let b = blake3(&data);
    let wname = format!("uploads/u2/blobs/blake3/{}/{}/some/metadata", b.hash, b.size_bytes);
    assert_eq!(write(&mut bs, &wname, &data).await.unwrap(), data.len() as i64);
    assert_eq!(read(&mut bs, &format!("blobs/blake3/{}/{}", b.hash, b.size_bytes), 0, 0).await.unwrap(), data);
    assert!(find_missing(&mut cas(&ch), "", BLAKE3, std::slice::from_ref(&b)).await.is_empty());
    // Explicit sha256 segment reads the same blob as the plain name.
    assert_eq!(read(&mut bs, &format!("blobs/sha256/{}/{}", d.hash, d.size_bytes), 0, 0).await.unwrap(), data);
    // A BLAKE3 hash read as SHA-256 is a different (absent) blob.
    assert_status(read(&mut bs, &read_name("", &b), 0, 0).await, Code::NotFound, &[&b.hash], "blake3 hash as sha256");
}

/// read_offset / read_limit select a range, for an inline and a file blob;
/// offset == size reads nothing; a limit past the end stops at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads() {
    let server = TestServer::start().await;
    let mut bs = bs(&server.channel().await);
    for size in [1000usize, (1 << 20) + 17] {
        let data = gen_blob(size as u64, size);
        let d = sha256(&data);
        write(&mut bs, &fresh_upload_name(&d), &data).await.expect("Write");
        let name = read_name("", &d);
        let n = size as i64;
        // (offset, limit, expected start, expected end)
        let cases = [
            (0, 0, 0, size),
            (10, 0, 10, size),
            (10, 100, 10, 110),
            (0, 1, 0, 1),
            (n - 5, 100, size - 5, size),
            (n - 1, 0, size - 1, size),
            (n, 0, size, size),
            (0, n + 100, 0, size),
            (n / 2, n / 4, size / 2, size / 2 + size / 4),
        ];
        for (offset, limit, start, end) in cases {
            let got = read(&mut bs, &name, offset, limit)
                .await
                .unwrap_or_else(|e| panic!("{size}: read {offset}+{limit}: {e:?}"));
            assert!(got == data[start..end], "{size}: read {offset}+{limit} returned the wrong bytes");
        }
        // Out of range: past the end, a negative offset (as ByteStream prescribes);
        // a negative limit is a malformed request.
        let past = (n + 1).to_string();
        assert_status(read(&mut bs, &name, n + 1, 0).await, Code::OutOfRange, &["offset", &past], "offset past end");
        assert_status(read(&mut bs, &name, -1, 0).await, Code::OutOfRange, &["read_offset", "-1"], "negative offset");
        assert_status(
            read(&mut bs, &name, 0, -1).await,
            Code::InvalidArgument,
            &["read_limit", "-1"],
            "negative limit",
        );
    }
}

/// Reading an absent blob (or a stored hash under the wrong size) is NOT_FOUND naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_of_absent_blob_is_not_found() {
    let server = TestServer::start().await;
    let mut bs = bs(&server.channel().await);
    let absent = sha256(b"absent");
    assert_status(read(&mut bs, &read_name("", &absent), 0, 0).await, Code::NotFound, &[&absent.hash], "absent");
    let data = b"stored".to_vec();
    let d = sha256(&data);
    write(&mut bs, &fresh_upload_name(&d), &data).await.unwrap();
    let wrong = digest(&d.hash, d.size_bytes + 1);
    assert_status(read(&mut bs, &read_name("", &wrong), 0, 0).await, Code::NotFound, &[&d.hash], "wrong size");
    // The empty blob is always readable.
    assert_eq!(read(&mut bs, &read_name("", &digest(EMPTY_SHA256, 0)), 0, 0).await.unwrap(), Vec::<u8>::new());
}

/// Malformed resource names are INVALID_ARGUMENT for Read, Write and
/// QueryWriteStatus alike, with a message naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resource_names_are_rejected() {
    let server = TestServer::start().await;
    let mut bs = bs(&server.channel().await);
    let data = b"payload".to_vec();
    let d = sha256(&data);
    let (h, s) = (d.hash.as_str(), d.size_bytes);
    let upper = h.to_uppercase();
    // (name after the read/upload prefix, needle). Each is tried as a read name
    // `{x}` and as a write name `uploads/u/{x}` (instance names are tested separately).
    let blob_parts: Vec<(String, &str)> = vec![
        (format!("blobs/{}/{s}", &h[..63]), "63 characters"),
        (format!("blobs/{h}0/{s}"), "65 characters"),
        (format!("blobs/{upper}/{s}"), "lower-case hex"),
        (format!("blobs/{}z/{s}", &h[..63]), "lower-case hex"),
        (format!("blobs/{h}/7x"), "\"7x\" is not a decimal integer"),
        (format!("blobs/{h}/"), "\"\" is not a decimal integer"),
        (format!("blobs/{h}/-7"), "negative size"),
        (format!("blobs/{h}"), "missing size"),
        ("blobs".to_string(), "missing hash"),
        (format!("blobs/sha1/{h}/{s}"), "digest function \"sha1\""),
        (format!("blobs/md5/{h}/{s}"), "digest function \"md5\""),
        (format!("compressed-blobs/lz4/{h}/{s}"), "compressor \"lz4\""),
        (format!("compressed-blobs/deflate/{h}/{s}"), "compressor \"deflate\""),
        (format!("compressed-blobs/{h}/{s}"), "compressor"),
        (format!("things/{h}/{s}"), "blobs"),
    ];
    for (part, needle) in &blob_parts {
        assert_status(read(&mut bs, part, 0, 0).await, Code::InvalidArgument, &[needle], &format!("read {part}"));
        let wname = format!("uploads/u/{part}");
        assert_status(write(&mut bs, &wname, &data).await, Code::InvalidArgument, &[needle], &format!("write {wname}"));
        assert_status(query(&mut bs, &wname).await, Code::InvalidArgument, &[needle], &format!("query {wname}"));
    }

    // Instance names: path traversal, empty and reserved segments.
    for instance in ["../../etc", "..", "a//b", "a/./b", "/abs", "trail/", "actionResults", "operations"] {
        let rname = read_name(instance, &d);
        assert_status(read(&mut bs, &rname, 0, 0).await, Code::InvalidArgument, &["instance name", instance], &rname);
        let wname = upload_name(instance, "u", &d);
        assert_status(write(&mut bs, &wname, &data).await, Code::InvalidArgument, &["instance name", instance], &wname);
        assert_status(query(&mut bs, &wname).await, Code::InvalidArgument, &["instance name", instance], &wname);
    }

    // Names of the wrong kind or shape for the call.
    let cases: Vec<(&str, String, &str)> = vec![
        ("read", String::new(), "resource name"),
        ("read", format!("blobs/{h}/{s}/extra"), "unexpected segments"),
        ("read", format!("{h}/{s}"), "blobs"),
        ("write", String::new(), "uploads"),
        ("write", format!("blobs/{h}/{s}"), "uploads"),
        ("write", format!("uploads/blobs/{h}/{s}"), "upload id"),
        ("write", format!("uploads//blobs/{h}/{s}"), "upload id"),
        ("write", format!("uploads/u/{h}/{s}"), "blobs"),
        ("query", format!("blobs/{h}/{s}"), "uploads"),
        // A reserved word inside the instance part (the name parses at the first
        // blobs/uploads segment, so only these placements reach the instance check).
        ("read", format!("x/uploads/y/blobs/{h}/{s}"), "instance name"),
        ("write", format!("x/blobs/uploads/u/blobs/{h}/{s}"), "instance name"),
    ];
    for (call, name, needle) in cases {
        let what = format!("{call} {name:?}");
        match call {
            "read" => drop(assert_status(read(&mut bs, &name, 0, 0).await, Code::InvalidArgument, &[needle], &what)),
            "write" => drop(assert_status(write(&mut bs, &name, &data).await, Code::InvalidArgument, &[needle], &what)),
            _ => drop(assert_status(query(&mut bs, &name).await, Code::InvalidArgument, &[needle], &what)),
        }
    }

    // Nothing was stored, and the server still serves a good write.
    assert!(!is_present(&mut cas(&server.channel().await), &d).await);
    assert_eq!(write(&mut bs, &fresh_upload_name(&d), &data).await.unwrap(), data.len() as i64);
}

fn req(name: &str, offset: i64, data: &[u8], finish: bool) -> WriteRequest {
    WriteRequest { resource_name: name.into(), write_offset: offset, finish_write: finish, data: data.to_vec().into() }
}

/// Writes whose bytes don't match their name are INVALID_ARGUMENT, naming the
/// problem, and leave the blob absent (for Read, FindMissing and a later
/// QueryWriteStatus) with no temp file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_writes_are_rejected_and_store_nothing() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let (mut bs, mut cas) = (bs(&ch), cas(&ch));
    let small = b"small payload".to_vec();
    let large = gen_blob(9, 300 << 10); // a file upload, not inline
    let other_small = sha256(b"other payload");
    let other_large = sha256(&gen_blob(10, 300 << 10));
    let ds = sha256(&small);

    // (what, declared digest, the messages sent, needles)
    let cases: Vec<(&str, reapi::Digest, Vec<WriteRequest>, Vec<String>)> = {
        let n = fresh_upload_name;
        let d_small_mismatch = digest(&other_small.hash, small.len() as i64);
        let d_large_mismatch = digest(&other_large.hash, large.len() as i64);
        let d_short = digest(&ds.hash, 5); // declares 5 bytes, 13 are sent
        let d_long = digest(&ds.hash, 100); // declares 100 bytes, 13 are sent
        let d_zero = digest(&ds.hash, 0); // size 0 but not the empty hash
        let d_gap = sha256(&gen_blob(11, 8));
        let d_restart = sha256(&gen_blob(12, 8));
        let d_neg = sha256(&gen_blob(13, 8));
        let d_rename = sha256(&gen_blob(14, 8));
        let g = |seed| gen_blob(seed, 8);
        vec![
            (
                "small hash mismatch",
                d_small_mismatch.clone(),
                write_requests(&n(&d_small_mismatch), &small, 0, 4),
                vec!["hashes to".into(), other_small.hash.clone()],
            ),
            (
                "large hash mismatch",
                d_large_mismatch.clone(),
                write_requests(&n(&d_large_mismatch), &large, 0, 64 << 10),
                vec!["hashes to".into(), other_large.hash.clone()],
            ),
            (
                "more bytes than declared",
                d_short.clone(),
                write_requests(&n(&d_short), &small, 0, 4),
                vec!["more than".into(), "5".into()],
            ),
            (
                "fewer bytes than declared",
                d_long.clone(),
                write_requests(&n(&d_long), &small, 0, 4),
                vec!["13".into(), "100".into()],
            ),
            (
                "size 0 with a non-empty hash",
                d_zero.clone(),
                vec![req(&n(&d_zero), 0, b"", true)],
                vec!["hashes to".into()],
            ),
            (
                "gap between messages",
                d_gap.clone(),
                vec![req(&n(&d_gap), 0, &g(11)[..4], false), req("", 6, &g(11)[6..], true)],
                vec!["write_offset 6".into(), "4".into()],
            ),
            (
                "overlap between messages",
                d_gap.clone(),
                vec![req(&n(&d_gap), 0, &g(11)[..4], false), req("", 2, &g(11)[2..], true)],
                vec!["write_offset 2".into()],
            ),
            (
                "fresh upload at offset 4",
                d_restart.clone(),
                vec![req(&n(&d_restart), 4, &g(12)[4..], true)],
                vec!["write_offset 4".into()],
            ),
            ("negative offset", d_neg.clone(), vec![req(&n(&d_neg), -1, &g(13), true)], vec!["write_offset -1".into()]),
            (
                "name changes mid-stream",
                d_rename.clone(),
                vec![req(&n(&d_rename), 0, &g(14)[..4], false), req(&n(&d_rename), 4, &g(14)[4..], true)],
                vec!["changed mid-stream".into()],
            ),
        ]
    };
    for (what, declared, reqs, needles) in cases {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_status(send(&mut bs, reqs).await, Code::InvalidArgument, &needles, what);
        assert!(!is_present(&mut cas, &declared).await, "{what}: blob must stay absent");
        assert_status(read(&mut bs, &read_name("", &declared), 0, 0).await, Code::NotFound, &[], what);
        assert!(dir_entries(&server.data_dir().join("tmp")).is_empty(), "{what}: temp file left behind");
    }

    // A stream with no message at all.
    assert_status(send(&mut bs, vec![]).await, Code::InvalidArgument, &["first message"], "empty stream");

    // The real contents still upload fine afterwards.
    assert_eq!(write(&mut bs, &fresh_upload_name(&ds), &small).await.unwrap(), small.len() as i64);
    assert_eq!(read(&mut bs, &read_name("", &ds), 0, 0).await.unwrap(), small);
}

/// Re-uploading a stored blob completes at once with committed_size == size,
/// without waiting for (or needing) the rest of the client's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_completes_early() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut bs = bs(&ch);
    for size in [100usize, 2 << 20] {
        let data = gen_blob(20 + size as u64, size);
        let d = sha256(&data);
        write(&mut bs, &fresh_upload_name(&d), &data).await.expect("first upload");

        // Send only the first message and keep the stream open: the reply must still come.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(req(&fresh_upload_name(&d), 0, &data[..64], false)).await.unwrap();
        let call = bs.write(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .expect("the server answered a re-upload without waiting for all its bytes")
            .expect("re-upload");
        assert_eq!(resp.into_inner().committed_size, size as i64);
        drop(tx);

        // QueryWriteStatus of any upload name of a stored blob says complete.
        let q = query(&mut bs, &fresh_upload_name(&d)).await.expect("QueryWriteStatus");
        assert!(q.complete);
        assert_eq!(q.committed_size, size as i64);
    }
    // Writing the empty blob is also instant.
    let empty = digest(EMPTY_SHA256, 0);
    assert_eq!(send(&mut bs, vec![req(&fresh_upload_name(&empty), 0, b"", true)]).await.unwrap(), 0);
}

/// QueryWriteStatus: an upload the server never saw is NOT_FOUND, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_write_status_of_unknown_upload() {
    let server = TestServer::start().await;
    let mut bs = bs(&server.channel().await);
    let name = fresh_upload_name(&sha256(b"never sent"));
    assert_status(query(&mut bs, &name).await, Code::NotFound, &[&name], "unknown upload");
    let q = query(&mut bs, &fresh_upload_name(&digest(EMPTY_SHA256, 0))).await.expect("empty blob");
    assert!(q.complete, "the empty blob is always complete");
}
