//! No client, however slow or hostile, stalls or fills the server: hundreds
//! of stalled ByteStream writes and unread reads leave a fresh client fully
//! served; idle streams are cancelled after `--stream-idle-timeout`; calls
//! past `--max-concurrent-streams` wait on their own connection only; the
//! `--max-buffered-bytes` budget refuses work past it, naming the limit.

mod common;
mod rpc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn::config::Config;
use cairn::proto::bytestream::{ReadRequest, WriteRequest};
use common::TestServer;
use futures::StreamExt;
use rpc::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const MIB: usize = 1 << 20;

/// How long a healthy server may take to answer anything here: far above
/// what any of these calls needs, far below "forever".
const LIVENESS: Duration = Duration::from_secs(30);

/// A Write that sent `first` and then nothing: the sender is kept so the
/// stream stays open until it is dropped.
struct StalledWrite {
    tx: mpsc::Sender<WriteRequest>,
    task: JoinHandle<Result<tonic::Response<cairn::proto::bytestream::WriteResponse>, tonic::Status>>,
}

fn stall_write(ch: &Channel, first: WriteRequest) -> StalledWrite {
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(first).expect("queue the first message");
    let mut client = bs(ch);
    let task = tokio::spawn(async move { client.write(ReceiverStream::new(rx)).await });
    StalledWrite { tx, task }
}

fn first_message(name: &str, data: &[u8]) -> WriteRequest {
    WriteRequest { resource_name: name.into(), write_offset: 0, finish_write: false, data: data.to_vec().into() }
}

/// Polls QueryWriteStatus until the server has taken in `n` bytes of `name`.
async fn wait_committed(ch: &Channel, name: &str, n: i64) {
    let mut client = bs(ch);
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        if let Ok(q) = query(&mut client, name).await {
            if q.committed_size >= n {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the server never took in the first bytes of {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(server: &TestServer) -> Channel {
    // A fresh Endpoint per call: each channel is its own HTTP/2 connection.
    server.channel().await
}

/// 600 stalled writes and 600 unread reads (of a 10 MiB blob, so each read
/// has far more to send than the client takes) over 12 connections; then a
/// fresh client's health check, FindMissingBlobs, and a 10 MiB write and read
/// all succeed. Before the redesign each of these streams held a blocking
/// thread, and past tokio's 512 every later read or write queued forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_do_not_stall_the_server() {
    let server = TestServer::start().await;
    let setup = server.channel().await;
    let big = gen_blob(1, 10 * MIB);
    let dbig = sha256(&big);
    write(&mut bs(&setup), &fresh_upload_name(&dbig), &big).await.expect("upload the blob to read");

    let (conns, per_conn) = (12, 50);
    let chans: Vec<Channel> = futures::future::join_all((0..conns).map(|_| connect(&server))).await;
    // The writes first, each taken in before the reads start: reads in
    // flight hold buffer budget, and a new upload past the budget is refused
    // (by design), which is not what this test is about.
    let mut writes = Vec::new();
    let mut names = Vec::new();
    for (c, ch) in chans.iter().enumerate() {
        for i in 0..per_conn {
            // Half the writes declare a small (in-memory) blob, half a large one.
            let size = if i % 2 == 0 { 100 << 10 } else { 8 * MIB };
            let target = sha256(&gen_blob((c * 1000 + i) as u64 + 10, 64));
            let name = fresh_upload_name(&digest(&target.hash, size as i64));
            writes.push(stall_write(ch, first_message(&name, &gen_blob(7, 16 << 10))));
            names.push(name);
        }
    }
    // Asked on a connection of its own: once the reads below have filled
    // their connections' flow-control windows, nothing more arrives on those.
    for name in &names {
        tokio::time::timeout(LIVENESS, wait_committed(&setup, name, 16 << 10)).await.expect("stalled write taken in");
    }
    let reads_open = Arc::new(AtomicUsize::new(0));
    let mut reads = Vec::new();
    for ch in &chans {
        for _ in 0..per_conn {
            let mut client = bs(ch);
            let req = ReadRequest { resource_name: read_name("", &dbig), read_offset: 0, read_limit: 0 };
            let open = reads_open.clone();
            reads.push(tokio::spawn(async move {
                let stream = client.read(req).await.expect("Read").into_inner();
                open.fetch_add(1, Ordering::SeqCst);
                // Hold the stream without taking anything from it.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(stream);
            }));
        }
    }
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while reads_open.load(Ordering::SeqCst) < conns * per_conn {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} reads were answered: stalled streams starved the server",
            reads_open.load(Ordering::SeqCst),
            conns * per_conn
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A fresh client, on its own connection, is fully served.
    let fresh = connect(&server).await;
    let check = async {
        let health = HealthClient::new(fresh.clone()).check(HealthCheckRequest { service: String::new() }).await;
        health.expect("health check");
        assert_eq!(find_missing(&mut cas(&fresh), "", SHA256, std::slice::from_ref(&dbig)).await, vec![]);
        let data = gen_blob(99, 10 * MIB);
        let d = sha256(&data);
        let mut client = bs(&fresh);
        assert_eq!(write(&mut client, &fresh_upload_name(&d), &data).await.expect("10 MiB write"), d.size_bytes);
        assert!(read(&mut client, &read_name("", &d), 0, 0).await.expect("10 MiB read") == data);
    };
    tokio::time::timeout(LIVENESS, check).await.expect("a fresh client was not served while streams were stalled");

    for r in reads {
        r.abort();
    }
    for w in writes {
        w.task.abort();
        drop(w.tx);
    }
}

/// With a 1 s idle timeout: a write that stops sending is cancelled with
/// DEADLINE_EXCEEDED naming the knob, its bytes kept for resumption; a read
/// whose client takes nothing ends with DEADLINE_EXCEEDED once the client
/// looks again; a slow write that keeps sending is not cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_cancelled() {
    let (_dir, path) = common::temp_data_dir();
    let mut config = Config::for_data_dir(&path);
    config.streams.stream_idle_timeout = Some(Duration::from_secs(1));
    let server = TestServer::start_with(config).await;
    let ch = server.channel().await;

    // A stalled write.
    let data = gen_blob(3, 3 * MIB);
    let d = sha256(&data);
    let name = fresh_upload_name(&d);
    let stalled = stall_write(&ch, first_message(&name, &data[..MIB]));
    let result = tokio::time::timeout(LIVENESS, stalled.task).await.expect("the stalled write was never cancelled");
    let status = assert_status(
        result.expect("task"),
        Code::DeadlineExceeded,
        &["--stream-idle-timeout", &name],
        "stalled write",
    );
    assert!(status.message().contains("resume"), "{}", status.message());
    drop(stalled.tx);
    let mut client = bs(&ch);
    assert_eq!(query(&mut client, &name).await.expect("kept").committed_size, MIB as i64);
    let rest = write_requests(&name, &data[MIB..], MIB, 256 << 10);
    assert_eq!(send(&mut client, rest).await.expect("resume after the idle cancel"), d.size_bytes);

    // An unread read of a 10 MiB blob.
    let big = gen_blob(4, 10 * MIB);
    let dbig = sha256(&big);
    write(&mut client, &fresh_upload_name(&dbig), &big).await.unwrap();
    let req = ReadRequest { resource_name: read_name("", &dbig), read_offset: 0, read_limit: 0 };
    let mut stream = client.read(req).await.expect("Read").into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let ended = tokio::time::timeout(LIVENESS, async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(m) => got += m.data.len(),
                Err(s) => return Some(s),
            }
        }
        None
    })
    .await
    .expect("the read ended");
    let status = ended.unwrap_or_else(|| panic!("the unread read was never cancelled ({got} bytes delivered)"));
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("--stream-idle-timeout"), "{}", status.message());
    assert!(got < big.len());

    // A slow writer that keeps sending within the timeout completes.
    let slow = gen_blob(5, 8 << 10);
    let ds = sha256(&slow);
    let (tx, rx) = mpsc::channel(8);
    let writer = tokio::spawn({
        let mut client = bs(&ch);
        async move { client.write(ReceiverStream::new(rx)).await }
    });
    for (i, r) in write_requests(&fresh_upload_name(&ds), &slow, 0, 1 << 10).into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tx.send(r).await.unwrap();
    }
    let resp = writer.await.unwrap().expect("a slow but live write is not cancelled");
    assert_eq!(resp.into_inner().committed_size, ds.size_bytes);
    // And the server serves the blobs.
    assert!(read(&mut client, &read_name("", &dbig), 0, 0).await.unwrap() == big);
}

/// With max_concurrent_streams 4: a fifth call on a connection holding four
/// stalled writes waits (the client queues it), another connection is served
/// at once, and the waiting call runs as soon as a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_wait_on_their_own_connection() {
    let (_dir, path) = common::temp_data_dir();
    let mut config = Config::for_data_dir(&path);
    config.streams.max_concurrent_streams = 4;
    let server = TestServer::start_with(config).await;
    let busy = server.channel().await;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let d = sha256(&gen_blob(i, 4 * MIB));
        let name = fresh_upload_name(&d);
        stalled.push(stall_write(&busy, first_message(&name, &gen_blob(i, 4 * MIB)[..64 << 10])));
        tokio::time::timeout(LIVENESS, wait_committed(&server.channel().await, &name, 64 << 10)).await.unwrap();
    }
    let probe = sha256(b"probe");
    let mut held = cas(&busy);
    let held_call = tokio::spawn(async move { find_missing(&mut held, "", SHA256, &[probe]).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held_call.is_finished(), "a fifth call ran beside four open streams on one connection");

    let other = server.channel().await;
    let answered = tokio::time::timeout(LIVENESS, find_missing(&mut cas(&other), "", SHA256, &[sha256(b"x")])).await;
    assert_eq!(answered.expect("another connection is served").len(), 1);

    // Half-closing one stalled write frees a slot for the held call.
    let first = stalled.remove(0);
    drop(first.tx);
    let _ = tokio::time::timeout(LIVENESS, first.task).await.expect("the half-closed write ends");
    let missing = tokio::time::timeout(LIVENESS, held_call).await.expect("the held call ran").unwrap();
    assert_eq!(missing.len(), 1);
    for w in stalled {
        w.task.abort();
    }
}

/// With a 1 MiB budget (a quarter kept for data in flight): three slow
/// uploads of 250 KiB blobs (spooled in memory) hold 750 KiB; a fourth gets
/// RESOURCE_EXHAUSTED naming --max-buffered-bytes, while the slow ones, reads
/// and lookups go on; a message larger than
/// the whole budget is refused at once; when the slow uploads finish, new
/// uploads are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_budget_refuses_work_past_it() {
    let (_dir, path) = common::temp_data_dir();
    let mut config = Config::for_data_dir(&path);
    config.streams.max_buffered_bytes = MIB as u64;
    config.streams.stream_idle_timeout = Some(Duration::from_secs(2));
    let server = TestServer::start_with(config).await;
    let ch = server.channel().await;
    let mut client = bs(&ch);
    let small = b"a small stored blob".to_vec();
    let dsmall = sha256(&small);
    write(&mut client, &fresh_upload_name(&dsmall), &small).await.unwrap();

    // Three slow uploads, each sending a byte every 300 ms (never idle).
    let mut slow = Vec::new();
    for i in 0..3u64 {
        let data = gen_blob(100 + i, 250 << 10);
        let d = sha256(&data);
        let name = fresh_upload_name(&d);
        let (tx, rx) = mpsc::channel(8);
        let mut c = bs(&ch);
        let task = tokio::spawn(async move { c.write(ReceiverStream::new(rx)).await });
        tx.send(first_message(&name, &data[..1])).await.unwrap();
        wait_committed(&ch, &name, 1).await;
        slow.push((tx, task, data, name));
    }
    const TRICKLED: usize = 8;
    let trickle = {
        let senders: Vec<_> = slow.iter().map(|(tx, _, data, _)| (tx.clone(), data.clone())).collect();
        tokio::spawn(async move {
            for offset in 1..=TRICKLED {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for (tx, data) in &senders {
                    let r = WriteRequest {
                        write_offset: offset as i64,
                        data: data[offset..offset + 1].to_vec().into(),
                        ..Default::default()
                    };
                    tx.send(r).await.expect("the slow upload is still open");
                }
            }
        })
    };
    let extra = gen_blob(200, 250 << 10);
    let refused = tokio::time::timeout(LIVENESS, write(&mut client, &fresh_upload_name(&sha256(&extra)), &extra))
        .await
        .expect("the over-budget write was answered");
    assert_status(refused, Code::ResourceExhausted, &["--max-buffered-bytes"], "write past the budget");
    // Reads and lookups still work meanwhile.
    assert_eq!(read(&mut client, &read_name("", &dsmall), 0, 0).await.unwrap(), small);
    assert!(is_present(&mut cas(&ch), &dsmall).await);
    trickle.await.expect("trickle");

    // A message bigger than the whole budget: refused at once, naming it.
    let huge = gen_blob(300, 2 * MIB);
    let r = send(&mut client, write_requests(&fresh_upload_name(&sha256(&huge)), &huge, 0, 2 * MIB)).await;
    assert_status(r, Code::ResourceExhausted, &["--max-buffered-bytes", "smaller messages"], "huge message");

    // The slow uploads were not harmed: each completes.
    for (tx, task, data, name) in slow {
        for r in write_requests("", &data[TRICKLED + 1..], TRICKLED + 1, 64 << 10) {
            tx.send(r).await.expect("the slow upload is still open");
        }
        let done = tokio::time::timeout(LIVENESS, task).await.expect("slow upload ends").unwrap();
        assert_eq!(done.expect(&name).into_inner().committed_size, data.len() as i64);
    }
    let again = write(&mut client, &fresh_upload_name(&sha256(&extra)), &extra).await;
    assert_eq!(again.expect("accepted once the budget is free"), extra.len() as i64);
}
