//! Bazel's HTTP cache protocol (`--http-listen`) driven by a plain HTTP
//! client, curl: round trips, verification, status codes, instance
//! prefixes, blobs shared with gRPC both ways, and large blobs streamed
//! through a small memory budget. README's curl examples come from here.
//! The real Bazel over HTTP is in bazel_e2e.rs.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cairn::client::Client;
use cairn::config::Config;
use cairn::proto::reapi;
use common::curl::{curl, sha, write};
use common::process::ServerProcess;
use common::TestServer;
use prost::Message;

/// PUT, GET and HEAD of a blob and an ActionResult, and what is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_and_refusals_with_curl() {
    let server = TestServer::start_http(None).await;
    let url = server.http_cache_url();
    let dir = tempfile::tempdir().unwrap();
    let hello = b"hello, cache\n";
    let d = sha(hello);
    let file = write(dir.path(), "hello.txt", hello);

    // README: curl -T hello.txt http://127.0.0.1:8080/cas/$(sha256sum hello.txt | cut -d' ' -f1)
    let r = curl(&["-T", &file, &format!("{url}/cas/{}", d.hex())]).await;
    assert_eq!(r.code, 200, "{}", r.text());
    let r = curl(&[&format!("{url}/cas/{}", d.hex())]).await;
    assert_eq!((r.code, r.body.as_slice()), (200, &hello[..]));
    let r = curl(&["-I", &format!("{url}/cas/{}", d.hex())]).await;
    assert_eq!(r.code, 200);
    assert!(r.headers.contains(&format!("content-length: {}", hello.len())), "{}", r.headers);

    // Missing: 404 for GET and HEAD.
    let missing = sha(b"never stored").hex();
    assert_eq!(curl(&[&format!("{url}/cas/{missing}")]).await.code, 404);
    assert_eq!(curl(&["-I", &format!("{url}/cas/{missing}")]).await.code, 404);
    assert_eq!(curl(&[&format!("{url}/ac/{missing}")]).await.code, 404);

    // Content that does not hash to the name: 400, and nothing readable.
    let r = curl(&["-T", &file, &format!("{url}/cas/{missing}")]).await;
    assert_eq!(r.code, 400);
    assert!(r.text().contains("hashes to") && r.text().contains("nothing was stored"), "{}", r.text());
    assert_eq!(curl(&[&format!("{url}/cas/{missing}")]).await.code, 404);

    // The empty blob is always there.
    let empty = sha(b"").hex();
    let r = curl(&[&format!("{url}/cas/{empty}")]).await;
    assert_eq!((r.code, r.body.len()), (200, 0));

    // An ActionResult naming the blob: stored, returned, and HEAD sees it.
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out/hello.txt".into(),
            digest: Some(d.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    let action = sha(b"action 1").hex();
    let ac_file = write(dir.path(), "result.pb", &result.encode_to_vec());
    // README: curl -T result.pb http://127.0.0.1:8080/ac/$ACTION_HASH
    let r = curl(&["-T", &ac_file, &format!("{url}/ac/{action}")]).await;
    assert_eq!(r.code, 200, "{}", r.text());
    let r = curl(&[&format!("{url}/ac/{action}")]).await;
    assert_eq!(r.code, 200);
    assert_eq!(reapi::ActionResult::decode(r.body.as_slice()).unwrap(), result);
    assert_eq!(curl(&["-I", &format!("{url}/ac/{action}")]).await.code, 200);

    // Not an ActionResult, or one with a broken digest: 400.
    let junk = write(dir.path(), "junk", b"this is not a protobuf");
    let r = curl(&["-T", &junk, &format!("{url}/ac/{action}")]).await;
    assert_eq!(r.code, 400);
    assert!(r.text().contains("not an ActionResult protobuf"), "{}", r.text());
    let broken = reapi::ActionResult {
        stdout_digest: Some(reapi::Digest { hash: "xyz".into(), size_bytes: 1 }),
        ..Default::default()
    };
    let broken = write(dir.path(), "broken.pb", &broken.encode_to_vec());
    let r = curl(&["-T", &broken, &format!("{url}/ac/{action}")]).await;
    assert_eq!(r.code, 400, "{}", r.text());
    assert!(r.text().contains("xyz"), "{}", r.text());
    // Larger than any ActionResult gRPC would take: 413.
    let huge = write(dir.path(), "huge.pb", &vec![0u8; 6 << 20]);
    let r = curl(&["-T", &huge, &format!("{url}/ac/{action}")]).await;
    assert_eq!(r.code, 413, "{}", r.text());
    // The good entry survived the refused ones.
    assert_eq!(curl(&[&format!("{url}/ac/{action}")]).await.code, 200);

    // A result whose output blob is not in the CAS is a miss, as over gRPC.
    let dangling = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "gone".into(),
            digest: Some(sha(b"not uploaded").to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let dangling_file = write(dir.path(), "dangling.pb", &dangling.encode_to_vec());
    let action2 = sha(b"action 2").hex();
    assert_eq!(curl(&["-T", &dangling_file, &format!("{url}/ac/{action2}")]).await.code, 200);
    assert_eq!(curl(&[&format!("{url}/ac/{action2}")]).await.code, 404);

    // Bad paths, methods and uploads.
    assert_eq!(curl(&[&format!("{url}/cas/ABC")]).await.code, 400);
    assert_eq!(curl(&[&format!("{url}/blobs/{empty}")]).await.code, 404);
    let r = curl(&["-X", "POST", &format!("{url}/cas/{empty}")]).await;
    assert_eq!(r.code, 405);
    assert!(r.headers.contains("allow: get, head, put"), "{}", r.headers);
    let r = curl(&["-T", "-", "-H", "Transfer-Encoding: chunked", &format!("{url}/cas/{missing}")]).await;
    assert_eq!(r.code, 411, "{}", r.text());
    server.stop().await;
}

/// `/{instance}/ac/` keeps ActionResults per instance; the CAS is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_prefix_separates_action_results() {
    let server = TestServer::start_http(None).await;
    let url = server.http_cache_url();
    let dir = tempfile::tempdir().unwrap();
    let data = b"shared blob";
    let d = sha(data);
    let file = write(dir.path(), "blob", data);
    assert_eq!(curl(&["-T", &file, &format!("{url}/team/ci/cas/{}", d.hex())]).await.code, 200);
    assert_eq!(curl(&[&format!("{url}/cas/{}", d.hex())]).await.code, 200, "the CAS is shared");
    assert_eq!(curl(&[&format!("{url}/other/cas/{}", d.hex())]).await.code, 200, "the CAS is shared");

    let result = reapi::ActionResult { exit_code: 3, ..Default::default() };
    let ac_file = write(dir.path(), "r.pb", &result.encode_to_vec());
    let action = sha(b"per instance").hex();
    assert_eq!(curl(&["-T", &ac_file, &format!("{url}/team/ci/ac/{action}")]).await.code, 200);
    let r = curl(&[&format!("{url}/team/ci/ac/{action}")]).await;
    assert_eq!(r.code, 200);
    assert_eq!(reapi::ActionResult::decode(r.body.as_slice()).unwrap().exit_code, 3);
    assert_eq!(curl(&[&format!("{url}/ac/{action}")]).await.code, 404);
    assert_eq!(curl(&[&format!("{url}/team/ac/{action}")]).await.code, 404);
    // Names gRPC refuses are refused here too.
    assert_eq!(curl(&[&format!("{url}/team/blobs/ac/{action}")]).await.code, 400);
    server.stop().await;
}

/// What HTTP writes, gRPC reads, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_share_blobs_and_results() {
    let server = TestServer::start_http(None).await;
    let url = server.http_cache_url();
    let dir = tempfile::tempdir().unwrap();
    let grpc = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let team = Client::connect(&server.grpc_url(), "team", Duration::from_secs(5)).await.unwrap();

    // gRPC -> HTTP: a small blob, a file-backed one (over 256 KiB), a result.
    let small = Bytes::from_static(b"written over gRPC");
    let large = Bytes::from((0..1_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    for data in [&small, &large] {
        grpc.write_bytes(&sha(data), data.clone()).await.unwrap();
        let r = curl(&[&format!("{url}/cas/{}", sha(data).hex())]).await;
        assert_eq!((r.code, r.body.len()), (200, data.len()));
        assert!(r.body == data.as_ref(), "HTTP read back different bytes");
    }
    let action = sha(b"grpc action");
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "a".into(),
            digest: Some(sha(&small).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    grpc.update_action_result(&action, result.clone()).await.unwrap();
    let r = curl(&[&format!("{url}/ac/{}", action.hex())]).await;
    assert_eq!(r.code, 200);
    assert_eq!(reapi::ActionResult::decode(r.body.as_slice()).unwrap(), result);

    // HTTP -> gRPC.
    let from_http = b"written over HTTP".to_vec();
    let f = write(dir.path(), "h", &from_http);
    assert_eq!(curl(&["-T", &f, &format!("{url}/cas/{}", sha(&from_http).hex())]).await.code, 200);
    let read = grpc.batch_read(&[sha(&from_http)]).await.unwrap();
    assert_eq!(read[0].as_deref(), Some(from_http.as_slice()));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let f = write(dir.path(), "big", &big);
    assert_eq!(curl(&["-T", &f, &format!("{url}/cas/{}", sha(&big).hex())]).await.code, 200);
    let dest = dir.path().join("big.read");
    assert!(grpc.read_to_file(&sha(&big), &dest).await.unwrap());
    assert!(std::fs::read(&dest).unwrap() == big, "gRPC read back different bytes");

    let action = sha(b"http action");
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "b".into(),
            digest: Some(sha(&big).to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    let f = write(dir.path(), "r.pb", &result.encode_to_vec());
    assert_eq!(curl(&["-T", &f, &format!("{url}/team/ac/{}", action.hex())]).await.code, 200);
    assert_eq!(team.get_action_result(&action).await.unwrap(), Some(result));
    assert_eq!(grpc.get_action_result(&action).await.unwrap(), None, "other instance");
    server.stop().await;
}

/// A blob 32 times the memory budget goes up and comes back: bodies stream
/// through the budget in pieces, never held whole. Over --max-blob-size is 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_stream_through_a_small_budget() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(data_dir.path());
    config.streams.max_buffered_bytes = 2 << 20;
    config.max_blob_size = 80 << 20;
    let server = TestServer::start_http(Some(config)).await;
    let url = server.http_cache_url();
    let dir = tempfile::tempdir().unwrap();

    let big: Vec<u8> = (0..(64u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let d = sha(&big);
    let f = write(dir.path(), "big", &big);
    let r = curl(&["-T", &f, &format!("{url}/cas/{}", d.hex())]).await;
    assert_eq!(r.code, 200, "{}", r.text());
    let r = curl(&[&format!("{url}/cas/{}", d.hex())]).await;
    assert_eq!(r.code, 200);
    assert!(r.body == big, "read back different bytes");
    // A second PUT of a stored blob is answered without storing it again.
    assert_eq!(curl(&["-T", &f, &format!("{url}/cas/{}", d.hex())]).await.code, 200);
    assert_eq!(std::fs::read_dir(data_dir.path().join("tmp")).unwrap().count(), 0, "no upload left behind");

    let huge = vec![7u8; 81 << 20];
    let f = write(dir.path(), "huge", &huge);
    let r = curl(&["-T", &f, &format!("{url}/cas/{}", sha(&huge).hex())]).await;
    assert_eq!(r.code, 413);
    assert!(r.text().contains("--max-blob-size"), "{}", r.text());
    server.stop().await;
}

/// The real binary's peak memory stays far below the size of a blob sent up
/// and read back over HTTP: neither direction holds a body whole.
#[test]
fn server_memory_stays_below_the_blob_size() {
    const SIZE: usize = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--http-listen", "127.0.0.1:0", "--max-buffered-bytes", "16MiB", "--admin-listen", "off"],
    );
    let addr = server.http_addr();
    let peak_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let data: Vec<u8> = (0..SIZE as u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 24) as u8).collect();
    let hash = sha(&data).hex();
    let file = write(dir.path(), "big", &data);
    drop(data);
    let run = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "-w", "%{http_code}"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("http://{addr}/cas/{hash}");
    assert_eq!(run(&["-o", "/dev/null", "-T", &file, &url]), "200");
    let back = dir.path().join("back").to_string_lossy().into_owned();
    assert_eq!(run(&["-o", &back, &url]), "200");
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&file).unwrap(), "read back different bytes");
    let peak = peak_kib();
    server.kill9();
    eprintln!("server peak RSS {} MiB for a {} MiB blob up and down", peak >> 10, SIZE >> 20);
    assert!(peak < (SIZE as u64 >> 10) / 2, "peak RSS {peak} KiB: a body was held whole");
}

/// A full disk: a PUT is 507 saying so, GETs keep working, nothing partial
/// is readable, and PUTs work again once space returns. The data dir is on a
/// small tmpfs mounted for the test (tests run as root here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_507_and_reads_keep_working() {
    let disk = common::small_disk::SmallDisk::mount("64m");
    let server = TestServer::start_http(Some(Config::for_data_dir(disk.path.join("data")))).await;
    let url = server.http_cache_url();
    let dir = tempfile::tempdir().unwrap();
    let stored: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
    let f = write(dir.path(), "stored", &stored);
    assert_eq!(curl(&["-T", &f, &format!("{url}/cas/{}", sha(&stored).hex())]).await.code, 200);

    // Fill the disk, leaving less than the next upload needs.
    let filler = disk.path.join("filler");
    {
        use std::io::Write;
        let mut w = std::fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 64 << 10];
        while w.write_all(&chunk).is_ok() {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(std::fs::metadata(&filler).unwrap().len() - (256 << 10))
        .unwrap();
    let big: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 241) as u8).collect();
    let big_url = format!("{url}/cas/{}", sha(&big).hex());
    let f = write(dir.path(), "big", &big);
    let r = curl(&["-T", &f, &big_url]).await;
    assert_eq!(r.code, 507, "{}", r.text());
    assert!(r.text().contains("disk is full"), "{}", r.text());
    assert_eq!(curl(&[&big_url]).await.code, 404, "a failed upload became readable");
    let r = curl(&[&format!("{url}/cas/{}", sha(&stored).hex())]).await;
    assert!(r.code == 200 && r.body == stored, "reads keep working");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(curl(&["-T", &f, &big_url]).await.code, 200, "space returned");
    assert_eq!(curl(&[&big_url]).await.body.len(), big.len());
    server.stop().await;
}
