//! Faults that must never cost data, against the real `cairn serve` binary:
//! running out of file descriptors under concurrent large reads, and blob
//! files left behind by a crash (reclaimed in the background after start-up).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::client::Client;
use cairn::digest::{Digest, DigestFunction};
use cairn::proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest};
use common::process::ServerProcess;
use tonic::Code;

fn blob(seed: u32, size: usize) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(97)) as u8).collect();
    let data = Bytes::from(data);
    (DigestFunction::Sha256.digest_of(&data), data)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Sets a running process's soft open-file limit (what `open` obeys).
fn limit_fds(pid: u32, n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit reads and writes only the structs we pass.
    let rc = unsafe {
        libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut())
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_loses_nothing() {
    let (_tmp, dir) = common::temp_data_dir();
    let server = ServerProcess::start(&dir, &[]);
    let client = Client::connect(&server.grpc_url(), "", Duration::from_secs(10)).await.unwrap();
    // Several read chunks each, so a stalled read keeps its file open.
    let blobs: Vec<(Digest, Bytes)> = (0..12).map(|i| blob(i, (6 << 20) + i as usize)).collect();
    for (d, data) in &blobs {
        client.write_bytes(d, data.clone()).await.unwrap();
    }
    // Two connections made up front; reads are streams on them.
    let conns = [server.channel().await, server.channel().await];
    let base = open_fds(server.child.id());
    limit_fds(server.child.id(), (base + 8) as u64);

    // Many reads that hold their blob file open (their client never reads),
    // far more than the descriptors left.
    let mut held = Vec::new();
    let mut exhausted = 0;
    for i in 0..60 {
        let (d, _) = &blobs[i % blobs.len()];
        let mut bs = ByteStreamClient::new(conns[i % 2].clone());
        let req = ReadRequest { resource_name: format!("blobs/{}/{}", d.hex(), d.size), read_offset: 0, read_limit: 0 };
        match bs.read(req).await {
            Ok(stream) => held.push(stream),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("file descriptors"), "{}", s.message());
                exhausted += 1;
            }
        }
    }
    assert!(exhausted > 0, "the test never ran out of descriptors (base {base})");
    drop(held);
    limit_fds(server.child.id(), 4096);

    // Every blob is still there, whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (d, _) in &blobs {
        loop {
            match client.read_blob(d, true).await {
                Ok(Some(n)) => {
                    assert_eq!(n, d.size);
                    break;
                }
                Ok(None) => panic!("blob {d} was lost after a transient fault"),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying after {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(client.find_missing(&blobs.iter().map(|b| b.0).collect::<Vec<_>>()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_blob_files_are_reclaimed_after_start_up() {
    let (_tmp, dir) = common::temp_data_dir();
    let (kept, kept_data) = blob(1, 600_000);
    {
        let server = ServerProcess::start(&dir, &[]);
        let client = Client::connect(&server.grpc_url(), "", Duration::from_secs(10)).await.unwrap();
        client.write_bytes(&kept, kept_data).await.unwrap();
        server.kill9();
    }
    // What a crash between publishing a file and recording it leaves behind.
    let (orphan, orphan_data) = blob(2, 700_000);
    let hex = orphan.hex();
    let path = dir.join("blobs/sha256").join(&hex[..2]).join(&hex);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &orphan_data).unwrap();

    let server = ServerProcess::start(&dir, &[]);
    let client = Client::connect(&server.grpc_url(), "", Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while path.exists() {
        assert!(Instant::now() < deadline, "the orphan {} was never reclaimed", path.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.read_blob(&kept, true).await.unwrap(), Some(kept.size));
    assert_eq!(client.find_missing(&[orphan]).await.unwrap(), vec![orphan]);
    server.terminate();
    let stats = cairn::store::read_stats(&dir).unwrap();
    assert_eq!((stats.cas_count, stats.cas_bytes), (1, kept.size as i64));
}
