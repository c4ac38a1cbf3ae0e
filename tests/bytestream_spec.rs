//! ByteStream details the REAPI spec prescribes, as tables against the real
//! server: compressed-blobs reads count read_offset in uncompressed bytes and
//! refuse a read_limit; negative limits are INVALID_ARGUMENT, negative offsets
//! OUT_OF_RANGE; compressed writes round-trip.

mod common;
mod rpc;

use common::TestServer;
use rpc::*;
use tonic::Code;

fn zstd_read_name(d: &cairn::proto::reapi::Digest) -> String {
    format!("compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes)
}

fn zstd_upload_name(d: &cairn::proto::reapi::Digest) -> String {
    format!("uploads/{}/compressed-blobs/zstd/{}/{}", uuid::Uuid::new_v4(), d.hash, d.size_bytes)
}

/// "When downloading compressed blobs: ReadRequest.read_offset refers to the
/// offset in the uncompressed form of the blob. Servers MUST return
/// INVALID_ARGUMENT if ReadRequest.read_limit is non-zero." (REAPI v2)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_reads_count_uncompressed_offsets() {
    let server = TestServer::start().await;
    let mut bs = bs(&server.channel().await);
    // An in-memory blob, and a file blob of several read chunks.
    for size in [1000usize, 3 * (1 << 20) + 7] {
        let data = gen_blob(size as u64, size);
        let d = sha256(&data);
        write(&mut bs, &fresh_upload_name(&d), &data).await.expect("Write");
        let name = zstd_read_name(&d);
        let n = size as i64;
        // (read_offset, expected uncompressed bytes from)
        for (offset, from) in [(0, 0usize), (1, 1), (10, 10), (n - 5, size - 5), (n, size)] {
            let what = format!("{size}: compressed read at {offset}");
            let compressed = read(&mut bs, &name, offset, 0).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let plain = zstd::decode_all(compressed.as_slice()).unwrap_or_else(|e| panic!("{what}: not zstd: {e}"));
            assert!(plain == data[from..], "{what}: wrong bytes ({} of {})", plain.len(), size - from);
        }
        // (offset, limit, code, needles)
        let cases: Vec<(i64, i64, Code, Vec<&str>)> = vec![
            (0, 1, Code::InvalidArgument, vec!["read_limit", "compressed"]),
            (10, 100, Code::InvalidArgument, vec!["read_limit", "compressed"]),
            (0, -1, Code::InvalidArgument, vec!["read_limit", "-1"]),
            (-1, 0, Code::OutOfRange, vec!["read_offset", "-1"]),
            (n + 1, 0, Code::OutOfRange, vec!["offset"]),
        ];
        for (offset, limit, code, needles) in cases {
            let what = format!("{size}: compressed read {offset}+{limit}");
            assert_status(read(&mut bs, &name, offset, limit).await, code, &needles, &what);
        }
    }
}

/// Plain reads: a negative limit is INVALID_ARGUMENT (the request is
/// malformed whatever the blob), a negative or past-the-end offset OUT_OF_RANGE
/// ("A read_offset that is negative or greater than the size of the resource
/// will cause an OUT_OF_RANGE error", google.bytestream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_read_windows() {
    let server = TestServer::start().await;
    let mut bs = bs(&server.channel().await);
    let data = gen_blob(8, 5000);
    let d = sha256(&data);
    write(&mut bs, &fresh_upload_name(&d), &data).await.unwrap();
    let name = read_name("", &d);
    let cases: Vec<(i64, i64, Code, Vec<&str>)> = vec![
        (0, -1, Code::InvalidArgument, vec!["read_limit", "-1"]),
        (0, i64::MIN, Code::InvalidArgument, vec!["read_limit"]),
        (-1, 0, Code::OutOfRange, vec!["read_offset", "-1"]),
        (i64::MIN, 5, Code::OutOfRange, vec!["read_offset"]),
        (5001, 0, Code::OutOfRange, vec!["5001"]),
    ];
    for (offset, limit, code, needles) in cases {
        assert_status(read(&mut bs, &name, offset, limit).await, code, &needles, &format!("read {offset}+{limit}"));
    }
    assert_eq!(read(&mut bs, &name, 4990, 0).await.unwrap(), data[4990..]);
}

/// zstd uploads of an in-memory and a multi-batch file blob: stored, read
/// back plain and compressed; a re-upload completes early with -1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_writes_round_trip() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut bs = bs(&ch);
    for size in [3000usize, 5 * (1 << 20) + 3] {
        let data: Vec<u8> = (0..size).map(|i| (i % 7) as u8 ^ (i / 4096) as u8).collect();
        let d = sha256(&data);
        let compressed = zstd::encode_all(data.as_slice(), 3).unwrap();
        // 16 KiB messages, as Bazel sends them.
        let reqs = write_requests(&zstd_upload_name(&d), &compressed, 0, 16 << 10);
        assert_eq!(send(&mut bs, reqs).await.expect("compressed Write"), compressed.len() as i64);
        assert!(is_present(&mut cas(&ch), &d).await);
        assert!(read(&mut bs, &read_name("", &d), 0, 0).await.unwrap() == data);
        let back = read(&mut bs, &zstd_read_name(&d), 0, 0).await.unwrap();
        assert!(zstd::decode_all(back.as_slice()).unwrap() == data);
        let again = write_requests(&zstd_upload_name(&d), &compressed, 0, 16 << 10);
        assert_eq!(send(&mut bs, again).await.unwrap(), -1, "a stored blob completes early");
    }
}
