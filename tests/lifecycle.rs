//! Stopping the server: SIGTERM drains in-flight calls (bounded by
//! `--drain-timeout`), loses no acknowledged write, leaves no temp files, and
//! a second signal exits at once.

mod common;
mod rpc;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::proto::bytestream::WriteRequest;
use common::process::ServerProcess;
use rpc::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1 << 20;

/// Far above what a clean exit needs, far below "hung".
const EXIT_LIMIT: Duration = Duration::from_secs(60);

fn tmp_entries(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("tmp"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Opens a ByteStream Write that sends its first 64 KiB and then nothing;
/// the returned sender keeps the stream open.
async fn stalled_write(server: &ServerProcess, seed: u64) -> mpsc::Sender<WriteRequest> {
    let data = gen_blob(seed, 4 * MIB);
    let name = fresh_upload_name(&sha256(&data));
    let (tx, rx) = mpsc::channel(4);
    let first = WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: data[..64 << 10].to_vec().into(),
    };
    tx.send(first).await.unwrap();
    let mut client = bs(&server.channel().await);
    tokio::spawn(async move { client.write(ReceiverStream::new(rx)).await });
    // Wait until the server has the bytes, so the call is truly in flight.
    let mut q = bs(&server.channel().await);
    loop {
        if query(&mut q, &name).await.map(|r| r.committed_size > 0).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_uploads_loses_no_acknowledged_write_and_leaves_no_temp_files() {
    let (_guard, dir) = common::temp_data_dir();
    let mut server = ServerProcess::start(&dir, &["--drain-timeout", "60s"]);
    let acked: Arc<Mutex<Vec<(cairn::proto::reapi::Digest, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let ch = server.channel().await;
        let acked = Arc::clone(&acked);
        writers.push(tokio::spawn(async move {
            let mut client = bs(&ch);
            for i in 0.. {
                let seed = w * 1_000_000 + i;
                let data = gen_blob(seed, MIB + (seed as usize % 4096));
                let d = sha256(&data);
                let reqs = write_requests(&fresh_upload_name(&d), &data, 0, 64 << 10);
                match send(&mut client, reqs).await {
                    Ok(_) => acked.lock().unwrap().push((d, seed)),
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 24 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(EXIT_LIMIT));
    assert!(status.success(), "a graceful shutdown exits 0, got {status}");
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(tmp_entries(&dir), Vec::<String>::new(), "temp files left after shutdown");
    let server = ServerProcess::start(&dir, &[]);
    let mut client = bs(&server.channel().await);
    let acked = acked.lock().unwrap().clone();
    for (d, seed) in &acked {
        let data = read(&mut client, &read_name("", d), 0, 0).await.expect("an acknowledged blob is readable");
        assert!(data == gen_blob(*seed, d.size_bytes as usize), "acknowledged blob {} came back different", d.hash);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_call_cannot_hold_the_shutdown_past_the_drain_timeout() {
    let (_guard, dir) = common::temp_data_dir();
    let mut server = ServerProcess::start(&dir, &["--drain-timeout", "1s"]);
    let _held = stalled_write(&server, 1).await;
    server.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(EXIT_LIMIT));
    assert!(status.success(), "shutdown after the drain timeout still exits 0, got {status}");
    assert!(server.log.lock().unwrap().iter().any(|l| l.contains("closing without them")));
    assert_eq!(tmp_entries(&dir), Vec::<String>::new(), "the stalled upload's temp file was left behind");
    // The data dir reopens at once and is intact.
    let server = ServerProcess::start(&dir, &[]);
    let mut cas = cas(&server.channel().await);
    assert!(!is_present(&mut cas, &sha256(&gen_blob(1, 4 * MIB))).await, "a partial upload became readable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once() {
    let (_guard, dir) = common::temp_data_dir();
    // A drain timeout far beyond the test's patience: only the second signal can end it.
    let mut server = ServerProcess::start(&dir, &["--drain-timeout", "1h"]);
    let _held = stalled_write(&server, 2).await;
    server.signal(libc::SIGTERM);
    tokio::task::block_in_place(|| server.wait_for_log("a second signal exits at once"));
    assert!(server.child.try_wait().unwrap().is_none(), "the first signal waits for the stalled call");
    server.signal(libc::SIGINT);
    let status = tokio::task::block_in_place(|| server.wait_exit(EXIT_LIMIT));
    assert_eq!(status.code(), Some(130), "the second signal exits with 130, got {status}");
    // Crash-safe: the data dir reopens.
    let _server = ServerProcess::start(&dir, &[]);
}
