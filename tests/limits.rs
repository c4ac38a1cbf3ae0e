//! The upload limits against the real server (issue 9, "amplification and
//! unbounded keys"): `--max-blob-size` refused and advertised, zstd bombs
//! refused before they cost anything, the `--max-tmp-size` budget, instance
//! names of at most 255 bytes, the reserved `capabilities` segment, upload ids
//! that are identifiers, and `root_directory_digest` validated and counted.

mod common;
mod rpc;

use std::time::Duration;

use cairn::config::{Config, DEFAULT_MAX_BLOB_SIZE};
use cairn::proto::bytestream::WriteRequest;
use cairn::proto::reapi::{self, batch_update_blobs_request, ActionResult, OutputDirectory};
use common::TestServer;
use prost::Message;
use rpc::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A server over a fresh data dir with `tune` applied to its config.
async fn server_with(tune: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestServer) {
    let (dir, path) = common::temp_data_dir();
    let mut config = Config::for_data_dir(&path);
    tune(&mut config);
    (dir, TestServer::start_with(config).await)
}

/// A zstd frame holding `content` in one raw block, whose header asks for a
/// window of 2^`window_log` bytes and declares no content size.
fn raw_frame(window_log: u32, content: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, ((window_log - 10) << 3) as u8];
    f.extend_from_slice(&(((content.len() as u32) << 3) | 1).to_le_bytes()[..3]);
    f.extend_from_slice(content);
    f
}

/// A zstd frame of `mib` MiB of zeros in RLE blocks: 32 bytes of input per MiB.
fn zstd_bomb(mib: u32) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (17 - 10) << 3];
    let blocks = mib * 8;
    for i in 0..blocks {
        let header = ((128u32 << 10) << 3) | (1 << 1) | u32::from(i + 1 == blocks);
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

fn batch_item(d: reapi::Digest, data: Vec<u8>, zstd: bool) -> batch_update_blobs_request::Request {
    let compressor = if zstd { reapi::compressor::Value::Zstd } else { reapi::compressor::Value::Identity };
    batch_update_blobs_request::Request { digest: Some(d), data: data.into(), compressor: compressor as i32 }
}

fn batch(requests: Vec<batch_update_blobs_request::Request>) -> reapi::BatchUpdateBlobsRequest {
    reapi::BatchUpdateBlobsRequest { instance_name: String::new(), requests, digest_function: SHA256 }
}

fn compressed_upload_name(d: &reapi::Digest) -> String {
    format!("uploads/{}/compressed-blobs/zstd/{}/{}", uuid::Uuid::new_v4(), d.hash, d.size_bytes)
}

/// The advertised `max_cas_blob_size_bytes` is what uploads are held to:
/// a blob of exactly the limit is stored, one byte more is INVALID_ARGUMENT
/// (REAPI's code for uploads over the advertised limit) on every upload path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_over_max_blob_size_are_refused_and_the_limit_is_advertised() {
    let limit = 1 << 20;
    let (_dir, server) = server_with(|c| c.max_blob_size = limit).await;
    let ch = server.channel().await;
    let caps = caps(&ch).get_capabilities(reapi::GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    assert_eq!(caps.cache_capabilities.unwrap().max_cas_blob_size_bytes, limit as i64);

    let fits = gen_blob(1, limit as usize);
    let over = gen_blob(2, limit as usize + 1);
    let mut bs = bs(&ch);
    write(&mut bs, &fresh_upload_name(&sha256(&fits)), &fits).await.expect("a blob of exactly the limit");
    let needles = ["--max-blob-size", "max_cas_blob_size_bytes", "1048576"];
    let r = write(&mut bs, &fresh_upload_name(&sha256(&over)), &over).await;
    assert_status(r, Code::InvalidArgument, &needles, "ByteStream write");
    let compressed = zstd::encode_all(over.as_slice(), 1).unwrap();
    let r = write(&mut bs, &compressed_upload_name(&sha256(&over)), &compressed).await;
    assert_status(r, Code::InvalidArgument, &needles, "compressed ByteStream write");
    for zstd in [false, true] {
        let data = if zstd { compressed.clone() } else { over.clone() };
        let resp = cas(&ch).batch_update_blobs(batch(vec![batch_item(sha256(&over), data, zstd)])).await.unwrap();
        let status = resp.into_inner().responses[0].status.clone();
        assert_rpc_status(status.as_ref(), Code::InvalidArgument, &needles, "BatchUpdateBlobs");
    }
    assert!(!is_present(&mut cas(&ch), &sha256(&over)).await);
    assert!(is_present(&mut cas(&ch), &sha256(&fits)).await);
    assert!(dir_entries(&server.data_dir().join("tmp")).is_empty(), "refused uploads leave nothing in tmp/");
}

/// Out of the box the limit is advertised too (it was 0, "no limit").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_blob_limit_is_advertised() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let caps = caps(&ch).get_capabilities(reapi::GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    assert_eq!(caps.cache_capabilities.unwrap().max_cas_blob_size_bytes, DEFAULT_MAX_BLOB_SIZE as i64);
}

/// 8 KiB of zstd frames in a batch declaring 256 MiB is refused as a whole,
/// at once, before anything is decompressed: a batch's limit counts declared
/// (uncompressed) sizes. Per-item bombs and oversized windows are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_in_batches_are_refused_at_once() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let bomb = zstd_bomb(256);
    assert!(bomb.len() < 9 << 10);
    // Whatever the hash: the declared size is what a bomb lies about.
    let declared = digest(&hex::encode([7u8; 32]), 256 << 20);
    let mut client = cas(&ch);
    let call = client.batch_update_blobs(batch(vec![batch_item(declared, bomb.clone(), true)]));
    let r = tokio::time::timeout(Duration::from_secs(20), call).await.expect("answered within 20 s");
    assert_status(r, Code::InvalidArgument, &["268435456", "max_batch_total_size_bytes"], "bomb batch");
    assert!(dir_entries(&server.data_dir().join("tmp")).is_empty(), "nothing was spooled");

    // Per item: output past a small declared size, and a frame whose window
    // is larger than the blob could need, each fail alone.
    let hello = b"hello".to_vec();
    let cases = [
        ("bomb declaring 5 bytes", batch_item(sha256(&hello), bomb, true), "more than the 5 bytes"),
        ("128 MiB window for 5 bytes", batch_item(sha256(&hello), raw_frame(27, &hello), true), "window"),
    ];
    for (what, item, needle) in cases {
        let resp = cas(&ch).batch_update_blobs(batch(vec![item])).await.expect(what).into_inner();
        assert_rpc_status(resp.responses[0].status.as_ref(), Code::InvalidArgument, &[needle], what);
    }
    assert!(!is_present(&mut cas(&ch), &sha256(&hello)).await);
    // A frame within the window limit is an ordinary upload.
    let ok = batch_item(sha256(&hello), raw_frame(20, &hello), true);
    let resp = cas(&ch).batch_update_blobs(batch(vec![ok])).await.unwrap().into_inner();
    assert_rpc_status(resp.responses[0].status.as_ref(), Code::Ok, &[], "small window");
}

/// The same over ByteStream: a compressed upload stops at the declared size
/// and a frame asking for a window beyond the blob is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_over_bytestream_are_refused() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut bs = bs(&ch);
    let data = gen_blob(3, 100 << 10);
    let d = sha256(&data);
    let r = write(&mut bs, &compressed_upload_name(&d), &zstd_bomb(1024)).await;
    assert_status(r, Code::InvalidArgument, &["more than the 102400 bytes"], "bomb");
    let r = write(&mut bs, &compressed_upload_name(&d), &raw_frame(27, &data)).await;
    assert_status(r, Code::InvalidArgument, &["window"], "oversized window");
    assert!(!is_present(&mut cas(&ch), &d).await);
    write(&mut bs, &compressed_upload_name(&d), &raw_frame(23, &data)).await.expect("an 8 MiB window is fine");
    assert!(is_present(&mut cas(&ch), &d).await);
}

/// Opens a Write of `data`'s digest and sends its first half; returns the
/// sender (dropping it interrupts the upload) and the call's task.
async fn start_upload(
    ch: &tonic::transport::Channel,
    name: &str,
    data: &[u8],
) -> (tokio::sync::mpsc::Sender<WriteRequest>, tokio::task::JoinHandle<Result<i64, tonic::Status>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = bs(ch);
    let task =
        tokio::spawn(async move { client.write(ReceiverStream::new(rx)).await.map(|r| r.into_inner().committed_size) });
    let half = data.len() / 2;
    let first = WriteRequest {
        resource_name: name.to_string(),
        write_offset: 0,
        finish_write: false,
        data: data[..half].to_vec().into(),
    };
    tx.send(first).await.unwrap();
    // The server reserves the budget before it records progress.
    let mut bs = bs(ch);
    for _ in 0..200 {
        if query(&mut bs, name).await.is_ok_and(|q| q.committed_size == half as i64) {
            return (tx, task);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("upload {name} never started");
}

/// With a 3 MiB budget, an open 2 MiB upload leaves no room for another:
/// RESOURCE_EXHAUSTED naming the knob. Committing gives the bytes back; a
/// parked (interrupted) upload gives way to a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_budget_is_reserved_up_front_and_released() {
    let (_dir, server) = server_with(|c| c.max_tmp_size = 3 << 20).await;
    let ch = server.channel().await;
    let (a, b, c) = (gen_blob(10, 2 << 20), gen_blob(11, 2 << 20), gen_blob(12, 2 << 20));
    let a_name = fresh_upload_name(&sha256(&a));
    let (tx, task) = start_upload(&ch, &a_name, &a).await;

    let mut bs = bs(&ch);
    let r = write(&mut bs, &fresh_upload_name(&sha256(&b)), &b).await;
    assert_status(r, Code::ResourceExhausted, &["--max-tmp-size", "CAIRN_MAX_TMP_SIZE"], "second upload");
    // Small uploads still fit beside it.
    write(&mut bs, &fresh_upload_name(&sha256(b"small")), b"small").await.expect("small upload");

    // Finishing the first upload releases its reservation.
    let half = a.len() / 2;
    let rest = WriteRequest {
        resource_name: String::new(),
        write_offset: half as i64,
        finish_write: true,
        data: a[half..].to_vec().into(),
    };
    tx.send(rest).await.unwrap();
    assert_eq!(task.await.unwrap().expect("first upload"), a.len() as i64);
    write(&mut bs, &fresh_upload_name(&sha256(&b)), &b).await.expect("room after the commit");

    // An interrupted upload is parked with its reservation; a new upload
    // that needs the room drops it rather than failing.
    let c_name = fresh_upload_name(&sha256(&c));
    let (tx, task) = start_upload(&ch, &c_name, &c).await;
    drop(tx);
    let _ = task.await;
    wait_parked(&mut bs, &c_name).await;
    let d = gen_blob(13, 2 << 20);
    write(&mut bs, &fresh_upload_name(&sha256(&d)), &d).await.expect("a parked upload gives way");
    assert_status(query(&mut bs, &c_name).await, Code::NotFound, &[], "the parked upload was dropped");
}

/// Instance names: 255 bytes are fine, 256 are INVALID_ARGUMENT naming the
/// limit, in every place a name arrives; `capabilities` is reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_names_are_at_most_255_bytes_and_capabilities_is_reserved() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let ok = "i".repeat(255);
    let long = "i".repeat(256);
    let blob = b"instance test".to_vec();
    let d = sha256(&blob);
    let action = sha256(b"an action");
    write(&mut bs(&ch), &upload_name(&ok, "u1", &d), &blob).await.expect("255-byte instance upload");
    assert_eq!(read(&mut bs(&ch), &read_name(&ok, &d), 0, 0).await.expect("255-byte instance read"), blob);
    caps(&ch).get_capabilities(reapi::GetCapabilitiesRequest { instance_name: ok.clone() }).await.unwrap();

    for (bad, needles) in [(&long, vec!["256 bytes", "255"]), (&"capabilities".to_string(), vec!["reserves"])] {
        let what = |rpc: &str| format!("{rpc} with instance {:.20}", bad);
        let r = caps(&ch).get_capabilities(reapi::GetCapabilitiesRequest { instance_name: bad.clone() }).await;
        assert_status(r, Code::InvalidArgument, &needles, &what("GetCapabilities"));
        let req = reapi::FindMissingBlobsRequest {
            instance_name: bad.clone(),
            blob_digests: vec![d.clone()],
            digest_function: SHA256,
        };
        assert_status(cas(&ch).find_missing_blobs(req).await, Code::InvalidArgument, &needles, &what("FindMissing"));
        let req = reapi::GetActionResultRequest {
            instance_name: bad.clone(),
            action_digest: Some(action.clone()),
            ..Default::default()
        };
        assert_status(ac(&ch).get_action_result(req).await, Code::InvalidArgument, &needles, &what("GetActionResult"));
        let r = write(&mut bs(&ch), &upload_name(bad, "u2", &d), &blob).await;
        assert_status(r, Code::InvalidArgument, &needles, &what("Write"));
        let r = read(&mut bs(&ch), &read_name(bad, &d), 0, 0).await;
        assert_status(r, Code::InvalidArgument, &needles, &what("Read"));
    }
}

/// The `{uuid}` of an upload name is an identifier: empty, dot-only or
/// anything path-like is INVALID_ARGUMENT, and so is a resource name longer
/// than 2 KiB (trailing metadata included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_ids_must_be_identifiers() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let blob = b"upload id test".to_vec();
    let d = sha256(&blob);
    let mut bs = bs(&ch);
    for bad in ["..", ".", "", "a\\b", "%2e%2e", "a b", "uploads", "x\u{0}y"] {
        let name = upload_name("", bad, &d);
        assert_status(write(&mut bs, &name, &blob).await, Code::InvalidArgument, &["upload id"], bad);
        assert_status(query(&mut bs, &name).await, Code::InvalidArgument, &["upload id"], bad);
    }
    let long = format!("{}/{}", upload_name("", "u", &d), "m".repeat(3000));
    assert_status(write(&mut bs, &long, &blob).await, Code::InvalidArgument, &["2048"], "long name");
    assert!(!is_present(&mut cas(&ch), &d).await);
    write(&mut bs, &upload_name("", "2f1c9b1e-4d6a-4c1b-9f7e-0a1b2c3d4e5f", &d), &blob).await.expect("a UUID");
}

fn dir_result(tree: Option<reapi::Digest>, root: Option<reapi::Digest>) -> ActionResult {
    ActionResult {
        output_directories: vec![OutputDirectory {
            path: "out/dir".into(),
            tree_digest: tree,
            root_directory_digest: root,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn update(action: &reapi::Digest, result: ActionResult) -> reapi::UpdateActionResultRequest {
    reapi::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(result),
        digest_function: SHA256,
        ..Default::default()
    }
}

fn get(action: &reapi::Digest) -> reapi::GetActionResultRequest {
    reapi::GetActionResultRequest { action_digest: Some(action.clone()), digest_function: SHA256, ..Default::default() }
}

/// `root_directory_digest` is validated on update (alone it is a valid output
/// directory), and a hit needs the root Directory, every Directory below it
/// and every file in them to be in the CAS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_directory_digest_is_validated_and_counted() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let h = hex::encode([1u8; 32]);
    let action = sha256(b"dir action");
    let bad = [
        ("negative size", dir_result(None, Some(digest(&h, -1))), vec!["out/dir", "root_directory_digest"]),
        ("short hash", dir_result(Some(sha256(b"t")), Some(digest(&h[..10], 1))), vec!["root_directory_digest"]),
        ("neither", dir_result(None, None), vec!["out/dir", "neither"]),
    ];
    for (what, result, needles) in bad {
        assert_status(
            ac(&ch).update_action_result(update(&action, result)).await,
            Code::InvalidArgument,
            &needles,
            what,
        );
    }

    // root → sub → file, each a separate CAS blob.
    let file = b"a file deep inside".to_vec();
    let node = |name: &str, data: &[u8]| reapi::FileNode {
        name: name.into(),
        digest: Some(sha256(data)),
        ..Default::default()
    };
    let sub = reapi::Directory { files: vec![node("f", &file)], ..Default::default() }.encode_to_vec();
    let root = reapi::Directory {
        directories: vec![reapi::DirectoryNode { name: "sub".into(), digest: Some(sha256(&sub)) }],
        ..Default::default()
    }
    .encode_to_vec();
    let all: [&[u8]; 3] = [&root, &sub, &file];
    ac(&ch).update_action_result(update(&action, dir_result(None, Some(sha256(&root))))).await.expect("root only");
    for (i, missing) in ["root Directory", "sub Directory", "file"].iter().enumerate() {
        let server = TestServer::start().await;
        let ch = server.channel().await;
        let present: Vec<&[u8]> = all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, b)| *b).collect();
        upload(&mut cas(&ch), &present).await;
        ac(&ch).update_action_result(update(&action, dir_result(None, Some(sha256(&root))))).await.unwrap();
        let r = ac(&ch).get_action_result(get(&action)).await;
        assert_status(r, Code::NotFound, &[], &format!("missing {missing}"));
        upload(&mut cas(&ch), &[all[i]]).await;
        ac(&ch).get_action_result(get(&action)).await.unwrap_or_else(|e| panic!("{missing} added: {e}"));
    }
}
