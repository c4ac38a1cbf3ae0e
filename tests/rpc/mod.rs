//! Shared helpers for the gRPC integration tests (cas, get_tree, bytestream,
//! bytestream_uploads, action_cache, capabilities_health): clients with
//! generous message limits, digests computed independently of cairn (with
//! `sha2`/`blake3` directly, so a hashing bug in cairn cannot hide itself),
//! ByteStream resource names and helpers, a deterministic large-blob
//! generator, and one assertion for "this call failed with this code and its
//! message says what was wrong".
#![allow(dead_code)]

use std::fmt::Debug;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn::proto::bytestream::{
    byte_stream_client::ByteStreamClient, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, WriteRequest,
};
use cairn::proto::reapi::{
    self, action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use futures::StreamExt;
use sha2::Digest as _;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// `DigestFunction.Value` numbers, as a client puts them on the wire.
pub const UNKNOWN_FN: i32 = 0;
pub const SHA256: i32 = 1;
pub const BLAKE3: i32 = 9;

/// The SHA-256 of nothing: the empty blob, which every CAS holds.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Message limit for test clients: far above anything the server sends
/// (a full batch is ~4 MiB), so a server-side limit is what gets tested.
const MAX_MESSAGE: usize = 64 << 20;

pub fn cas(ch: &Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(ch.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

pub fn ac(ch: &Channel) -> ActionCacheClient<Channel> {
    ActionCacheClient::new(ch.clone())
}

pub fn caps(ch: &Channel) -> CapabilitiesClient<Channel> {
    CapabilitiesClient::new(ch.clone())
}

pub fn bs(ch: &Channel) -> ByteStreamClient<Channel> {
    ByteStreamClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

/// A `Digest` message from a hash string and size, malformed ones included.
pub fn digest(hash: &str, size: i64) -> reapi::Digest {
    reapi::Digest { hash: hash.to_string(), size_bytes: size }
}

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> reapi::Digest {
    digest(&hex::encode(sha2::Sha256::digest(data)), data.len() as i64)
}

/// The BLAKE3 digest of `data`.
pub fn blake3(data: &[u8]) -> reapi::Digest {
    digest(&blake3::hash(data).to_hex(), data.len() as i64)
}

/// Asserts `result` failed with `code` and that its message contains every
/// needle (so the message names what was wrong). `what` labels the case.
#[track_caller]
pub fn assert_status<T: Debug>(result: Result<T, Status>, code: Code, needles: &[&str], what: &str) -> Status {
    let status = match result {
        Ok(v) => panic!("{what}: expected {code:?}, got a success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{what}: wrong code; message: {:?}", status.message());
    for n in needles {
        assert!(status.message().contains(n), "{what}: message {:?} does not mention {n:?}", status.message());
    }
    status
}

/// Same as [`assert_status`] for a per-blob `google.rpc.Status` inside a batch response.
#[track_caller]
pub fn assert_rpc_status(status: Option<&cairn::proto::rpc::Status>, code: Code, needles: &[&str], what: &str) {
    let s = status.unwrap_or_else(|| panic!("{what}: the response carries no status"));
    assert_eq!(Code::from_i32(s.code), code, "{what}: wrong code; message: {:?}", s.message);
    for n in needles {
        assert!(s.message.contains(n), "{what}: message {:?} does not mention {n:?}", s.message);
    }
}

/// Digests the CAS reports missing among `digests` (sorted by hash, for comparing as a set).
pub async fn find_missing(
    cas: &mut ContentAddressableStorageClient<Channel>,
    instance: &str,
    function: i32,
    digests: &[reapi::Digest],
) -> Vec<reapi::Digest> {
    let mut missing = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: instance.into(),
            blob_digests: digests.to_vec(),
            digest_function: function,
        })
        .await
        .expect("FindMissingBlobs")
        .into_inner()
        .missing_blob_digests;
    missing.sort_by(|a, b| (&a.hash, a.size_bytes).cmp(&(&b.hash, b.size_bytes)));
    missing
}

/// True when the (default-instance, SHA-256) CAS holds `d`.
pub async fn is_present(cas: &mut ContentAddressableStorageClient<Channel>, d: &reapi::Digest) -> bool {
    find_missing(cas, "", SHA256, std::slice::from_ref(d)).await.is_empty()
}

/// Uploads blobs (SHA-256, default instance) by BatchUpdateBlobs, asserting each is accepted.
pub async fn upload(cas: &mut ContentAddressableStorageClient<Channel>, blobs: &[&[u8]]) -> Vec<reapi::Digest> {
    let requests: Vec<_> = blobs
        .iter()
        .map(|b| reapi::batch_update_blobs_request::Request {
            digest: Some(sha256(b)),
            data: b.to_vec().into(),
            compressor: 0,
        })
        .collect();
    let resp = cas
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests,
            digest_function: SHA256,
        })
        .await
        .expect("BatchUpdateBlobs")
        .into_inner();
    assert_eq!(resp.responses.len(), blobs.len());
    for r in &resp.responses {
        assert_rpc_status(r.status.as_ref(), Code::Ok, &[], "upload");
    }
    blobs.iter().map(|b| sha256(b)).collect()
}

/// `{instance/}blobs/{hash}/{size}`: the read name of a SHA-256 blob.
pub fn read_name(instance: &str, d: &reapi::Digest) -> String {
    format!("{}blobs/{}/{}", prefix(instance), d.hash, d.size_bytes)
}

/// `{instance/}uploads/{uuid}/blobs/{hash}/{size}`: a write name.
pub fn upload_name(instance: &str, uuid: &str, d: &reapi::Digest) -> String {
    format!("{}uploads/{uuid}/blobs/{}/{}", prefix(instance), d.hash, d.size_bytes)
}

/// A write name with a fresh upload id.
pub fn fresh_upload_name(d: &reapi::Digest) -> String {
    upload_name("", &uuid::Uuid::new_v4().to_string(), d)
}

fn prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

/// The WriteRequests that upload `data` in `chunk`-byte pieces starting at
/// `offset`, the last one with finish_write.
pub fn write_requests(name: &str, data: &[u8], offset: usize, chunk: usize) -> Vec<WriteRequest> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let end = (at + chunk).min(data.len());
        out.push(WriteRequest {
            resource_name: if out.is_empty() { name.to_string() } else { String::new() },
            write_offset: (offset + at) as i64,
            finish_write: end == data.len(),
            data: data[at..end].to_vec().into(),
        });
        if end == data.len() {
            return out;
        }
        at = end;
    }
}

/// Uploads `data` under `name` in 64 KiB messages; returns committed_size.
pub async fn write(bs: &mut ByteStreamClient<Channel>, name: &str, data: &[u8]) -> Result<i64, Status> {
    send(bs, write_requests(name, data, 0, 64 << 10)).await
}

/// Sends exactly these WriteRequests as one Write call; returns committed_size.
pub async fn send(bs: &mut ByteStreamClient<Channel>, reqs: Vec<WriteRequest>) -> Result<i64, Status> {
    Ok(bs.write(futures::stream::iter(reqs)).await?.into_inner().committed_size)
}

/// Reads a range; errors from the call or from the stream alike become Err.
pub async fn read(bs: &mut ByteStreamClient<Channel>, name: &str, offset: i64, limit: i64) -> Result<Vec<u8>, Status> {
    let mut stream = bs
        .read(ReadRequest { resource_name: name.to_string(), read_offset: offset, read_limit: limit })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.next().await {
        out.extend_from_slice(&msg?.data);
    }
    Ok(out)
}

pub async fn query(bs: &mut ByteStreamClient<Channel>, name: &str) -> Result<QueryWriteStatusResponse, Status> {
    Ok(bs.query_write_status(QueryWriteStatusRequest { resource_name: name.to_string() }).await?.into_inner())
}

/// Polls QueryWriteStatus until the server has parked the interrupted upload
/// `name` (it notices a cut connection asynchronously) or 10 s pass.
pub async fn wait_parked(bs: &mut ByteStreamClient<Channel>, name: &str) -> QueryWriteStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match query(bs, name).await {
            Ok(r) => return r,
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("QueryWriteStatus({name}) never found the interrupted upload: {s:?}"),
        }
    }
}

/// Chunk `index` of a deterministic pseudo-random blob (splitmix64), so a
/// 100 MiB blob can be produced, re-produced and checked one chunk at a time.
pub fn gen_chunk(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = vec![0u8; len];
    for word in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
    }
    out
}

/// `size` bytes of generated data, small enough to hold in memory.
pub fn gen_blob(seed: u64, size: usize) -> Vec<u8> {
    gen_chunk(seed, 0, size)
}

/// Names of the entries in `dir` (for checking `tmp/` holds no leftovers).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => panic!("listing {}: {e}", dir.display()),
    }
}
