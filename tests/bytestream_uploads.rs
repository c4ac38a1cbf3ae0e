//! ByteStream uploads under stress, against the real server: a 100 MiB round
//! trip streamed from a generator, concurrent uploads of one blob, a client
//! that disconnects mid-write and resumes via QueryWriteStatus, and what a
//! restart leaves behind (no temp files, completed blobs intact).

mod common;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use cairn::config::Config;
use cairn::proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest};
use cairn::proto::reapi;
use common::TestServer;
use futures::StreamExt;
use rpc::*;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

const MIB: usize = 1 << 20;

/// Size of the large round trip: ≥ 100 MiB and not a whole number of chunks.
const LARGE: usize = 100 * MIB + 12_345;

/// The SHA-256 of the generated blob `seed` of `size` bytes, one chunk at a time.
fn generated_digest(seed: u64, size: usize) -> reapi::Digest {
    let mut h = sha2::Sha256::new();
    for i in 0..size.div_ceil(MIB) {
        h.update(gen_chunk(seed, i as u64, MIB.min(size - i * MIB)));
    }
    digest(&hex::encode(h.finalize()), size as i64)
}

/// 100 MiB written from a lazy generator in 1 MiB messages (only a chunk or
/// two alive at once), then read back while hashing: same digest, same size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_round_trip() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut bs = bs(&ch);
    let seed = 100;
    let d = generated_digest(seed, LARGE);
    let name = fresh_upload_name(&d);
    let chunks = LARGE.div_ceil(MIB);
    let requests = futures::stream::iter(0..chunks).map(move |i| {
        let len = MIB.min(LARGE - i * MIB);
        WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * MIB) as i64,
            finish_write: i + 1 == chunks,
            data: gen_chunk(seed, i as u64, len).into(),
        }
    });
    let committed = bs.write(requests).await.expect("100 MiB Write").into_inner().committed_size;
    assert_eq!(committed, LARGE as i64);
    assert!(is_present(&mut cas(&ch), &d).await);

    // Read back, hashing as the chunks arrive.
    let mut stream = bs
        .read(ReadRequest { resource_name: read_name("", &d), read_offset: 0, read_limit: 0 })
        .await
        .expect("Read")
        .into_inner();
    let (mut h, mut total) = (sha2::Sha256::new(), 0usize);
    while let Some(msg) = stream.next().await {
        let data = msg.expect("Read chunk").data;
        assert!(data.len() <= 4 * MIB, "a read message stays under gRPC's default 4 MiB limit");
        total += data.len();
        h.update(&data);
    }
    assert_eq!(total, LARGE);
    assert_eq!(hex::encode(h.finalize()), d.hash, "100 MiB read back differs");

    // A ranged read deep into the file: the last 100 bytes.
    let tail = read(&mut bs, &read_name("", &d), (LARGE - 100) as i64, 0).await.expect("tail read");
    let last_chunk = gen_chunk(seed, (chunks - 1) as u64, LARGE - (chunks - 1) * MIB);
    assert_eq!(tail, last_chunk[last_chunk.len() - 100..]);
    assert!(dir_entries(&server.data_dir().join("tmp")).is_empty(), "no temp files left behind");
}

/// Eight clients upload the same 3 MiB blob at once under different upload
/// ids; all commit their full size at the same moment (every upload has
/// passed the "already stored?" check before any finishes), the blob reads
/// back intact, and no loser's temp file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_blob() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let data = Arc::new(gen_blob(42, 3 * MIB));
    let d = sha256(&data);
    let reqs = write_requests("", &data, 0, 256 << 10);
    let (last, body) = reqs.split_last().expect("requests");

    // Each task gets its first messages now and its final one after all are underway.
    let mut finals = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let name = fresh_upload_name(&d);
        let (tx, rx) = mpsc::channel(body.len() + 1);
        for (i, r) in body.iter().enumerate() {
            let mut r = r.clone();
            if i == 0 {
                r.resource_name = name.clone();
            }
            tx.send(r).await.unwrap();
        }
        finals.push(tx);
        let mut client = bs(&ch);
        tasks.push(tokio::spawn(async move { client.write(ReceiverStream::new(rx)).await }));
    }
    // Let every server handler receive its bytes (and pass the existence check) first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for tx in &finals {
        tx.send(last.clone()).await.unwrap();
    }
    for t in tasks {
        let resp = t.await.expect("task").expect("concurrent Write");
        assert_eq!(resp.into_inner().committed_size, d.size_bytes);
    }
    drop(finals);
    let mut bs = bs(&ch);
    assert!(read(&mut bs, &read_name("", &d), 0, 0).await.unwrap() == *data, "blob reads back intact");
    let leftovers = dir_entries(&server.data_dir().join("tmp"));
    assert!(leftovers.is_empty(), "temp files of the losing uploads were leaked: {leftovers:?}");
}

/// Starts a Write of `d` under `name`, sends `data` in 1 MiB messages without
/// finishing, waits for the server to take them in, then cuts the call off
/// (aborting the task drops the HTTP/2 stream: RST_STREAM, as a dying client would).
async fn interrupted_write(ch: &Channel, name: &str, data: &[u8]) {
    let (tx, rx) = mpsc::channel(64);
    let mut client: ByteStreamClient<Channel> = bs(ch);
    let task = tokio::spawn(async move { client.write(ReceiverStream::new(rx)).await });
    for (i, piece) in data.chunks(MIB).enumerate() {
        let r = WriteRequest {
            resource_name: if i == 0 { name.to_string() } else { String::new() },
            write_offset: (i * MIB) as i64,
            finish_write: false,
            data: piece.to_vec().into(),
        };
        tx.send(r).await.unwrap();
    }
    // No RPC reports an upload's progress while it is live, so give the server
    // time to read what is in flight (well above what a loopback copy of a
    // few MiB takes) before cutting the connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    drop(tx);
}

/// A client that disconnects mid-write leaves nothing readable;
/// QueryWriteStatus reports the bytes received; a wrong resume offset is
/// refused without losing them; resuming at committed_size completes the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_write_then_resume() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let (mut bs, mut cas) = (bs(&ch), cas(&ch));
    let data = gen_blob(7, 6 * MIB + 333);
    let d = sha256(&data);
    let name = fresh_upload_name(&d);
    let sent = 2 * MIB;
    interrupted_write(&ch, &name, &data[..sent]).await;

    let q = wait_parked(&mut bs, &name).await;
    assert!(!q.complete);
    assert_eq!(q.committed_size, sent as i64, "committed_size is the bytes received");
    assert!(!is_present(&mut cas, &d).await, "a partial upload is not in the CAS");
    assert_status(read(&mut bs, &read_name("", &d), 0, 0).await, Code::NotFound, &[], "partial upload read");

    // Resuming at the wrong offset is refused, naming the offset and what is held...
    for bad in [sent as i64 + 1, 1] {
        let r = send(&mut bs, write_requests(&name, &data[bad as usize..], bad as usize, MIB)).await;
        assert_status(r, Code::InvalidArgument, &[&format!("write_offset {bad}"), &sent.to_string()], "bad resume");
    }
    // ...and keeps the bytes received.
    assert_eq!(query(&mut bs, &name).await.expect("still parked").committed_size, sent as i64);

    // Resume from committed_size.
    let committed = send(&mut bs, write_requests(&name, &data[sent..], sent, MIB)).await.expect("resumed Write");
    assert_eq!(committed, d.size_bytes);
    assert!(read(&mut bs, &read_name("", &d), 0, 0).await.unwrap() == data, "resumed blob reads back intact");
    let q = query(&mut bs, &name).await.expect("QueryWriteStatus after completion");
    assert!(q.complete);
    assert_eq!(q.committed_size, d.size_bytes);
    assert!(dir_entries(&server.data_dir().join("tmp")).is_empty(), "no temp files left behind");
}

/// A client that half-closes without finish_write gets committed_size for
/// what it sent; the upload can be resumed; a fresh upload at offset 0 under
/// the same name starts over instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_write_can_be_resumed() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let (mut bs, mut cas) = (bs(&ch), cas(&ch));
    for size in [1000usize, 2 * MIB] {
        let data = gen_blob(size as u64, size);
        let d = sha256(&data);
        let name = fresh_upload_name(&d);
        let half = size / 2;
        let mut first = write_requests(&name, &data[..half], 0, 64 << 10);
        first.last_mut().unwrap().finish_write = false;
        assert_eq!(send(&mut bs, first).await.expect("half-closed Write"), half as i64);
        let q = query(&mut bs, &name).await.expect("QueryWriteStatus");
        assert_eq!((q.committed_size, q.complete), (half as i64, false));
        assert!(!is_present(&mut cas, &d).await);

        let rest = write_requests(&name, &data[half..], half, 64 << 10);
        assert_eq!(send(&mut bs, rest).await.expect("resumed"), size as i64);
        assert!(read(&mut bs, &read_name("", &d), 0, 0).await.unwrap() == data);
    }
}

/// After a restart over the same data dir: the interrupted upload's temp file
/// is gone (tmp/ is empty) and forgotten, completed blobs are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cleans_interrupted_uploads_and_keeps_blobs() {
    let (_dir, path) = common::temp_data_dir();
    let server = TestServer::start_with(Config::for_data_dir(&path)).await;
    let ch = server.channel().await;
    let small = b"small and complete".to_vec();
    let large = gen_blob(5, 2 * MIB + 1);
    let partial = gen_blob(6, 4 * MIB);
    let (ds, dl, dp) = (sha256(&small), sha256(&large), sha256(&partial));
    let pname = fresh_upload_name(&dp);
    {
        let mut bs = bs(&ch);
        write(&mut bs, &fresh_upload_name(&ds), &small).await.expect("small");
        write(&mut bs, &fresh_upload_name(&dl), &large).await.expect("large");
        interrupted_write(&ch, &pname, &partial[..2 * MIB]).await;
        assert_eq!(wait_parked(&mut bs, &pname).await.committed_size, (2 * MIB) as i64);
    }
    let tmp = path.join("tmp");
    assert!(!dir_entries(&tmp).is_empty(), "the interrupted upload holds a temp file before the restart");
    drop(ch);
    let config = tokio::time::timeout(Duration::from_secs(30), server.stop()).await.expect("graceful stop");

    let server = TestServer::start_with(config).await;
    let ch = server.channel().await;
    let (mut bs, mut cas) = (bs(&ch), cas(&ch));
    // Serving again (the store reopened) before looking at the disk.
    let missing = find_missing(&mut cas, "", SHA256, &[ds.clone(), dl.clone(), dp.clone()]).await;
    assert_eq!(missing, vec![dp.clone()], "completed blobs survive, the partial one is absent");
    assert!(dir_entries(&tmp).is_empty(), "tmp/ still holds {:?} after the restart", dir_entries(&tmp));
    assert_eq!(read(&mut bs, &read_name("", &ds), 0, 0).await.unwrap(), small);
    assert!(read(&mut bs, &read_name("", &dl), 0, 0).await.unwrap() == large);
    assert_status(query(&mut bs, &pname).await, Code::NotFound, &[], "interrupted upload forgotten");
    // And the blob can be uploaded from scratch.
    assert_eq!(write(&mut bs, &pname, &partial).await.unwrap(), dp.size_bytes);
}

/// QueryWriteStatus reports the progress of an upload whose stream is still
/// open, not only of interrupted ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_write_status_sees_live_uploads() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut query_bs = bs(&ch);
    let data = gen_blob(11, 3 * MIB);
    let d = sha256(&data);
    let name = fresh_upload_name(&d);
    let mut reqs = write_requests(&name, &data, 0, MIB).into_iter();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(reqs.next().unwrap()).await.unwrap();
    let mut writer_bs = bs(&ch);
    let write = tokio::spawn(async move { writer_bs.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    // The first MiB arrives while the stream stays open.
    let mut seen = None;
    for _ in 0..200 {
        if let Ok(q) = query(&mut query_bs, &name).await {
            if q.committed_size == MIB as i64 {
                seen = Some(q);
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let q = seen.expect("QueryWriteStatus never reported the live upload's progress");
    assert!(!q.complete);
    for r in reqs {
        tx.send(r).await.unwrap();
    }
    drop(tx);
    let resp = write.await.unwrap().expect("write completes");
    assert_eq!(resp.into_inner().committed_size, data.len() as i64);
    let q = query(&mut query_bs, &name).await.expect("complete upload");
    assert!(q.complete);
}
