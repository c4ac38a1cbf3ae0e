//! The remote tier without Go: `cairn::gocache::serve` driven over in-memory
//! pipes exactly as go drives it, against the in-process server (and against
//! servers that are down, silent, or serve corrupt data). Two "machines" are
//! two local dirs sharing one server.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use cairn::client::Client;
use cairn::gocache::local::LocalStore;
use cairn::gocache::mapping;
use cairn::gocache::protocol::OutputId;
use cairn::gocache::remote::RemoteConfig;
use cairn::proto::reapi;
use common::TestServer;
use serde_json::Value;
use tokio::task::JoinHandle;

use common::go_session::{aid, assert_hit, big_body, config, remote, Go, LIMIT};

#[tokio::test]
async fn entries_travel_through_the_server() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (small, big) = (b"export data of package a".to_vec(), big_body());
    let mut r = remote(&server.grpc_url(), "travel");
    r.prefetch = false; // the plain ActionCache path
    r.wait_for_uploads = true;

    // Machine A puts, and learns each entry's time from a local get.
    let mut a = Go::start(config(&tmp.path().join("a"), r.clone())).await;
    a.put(aid(1), &small).await;
    a.put(aid(2), &big).await;
    a.put(aid(3), b"").await;
    a.put(aid(4), &small).await; // another action, same output
    let times: Vec<Value> =
        [a.get(aid(1)).await, a.get(aid(2)).await, a.get(aid(3)).await].iter().map(|r| r["Time"].clone()).collect();
    a.close(Duration::from_secs(10)).await;

    // The server holds the mapping the README documents.
    let client = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let result =
        client.get_action_result(&mapping::action_key(&aid(2))).await.unwrap().expect("entry in the ActionCache");
    let entry = mapping::read_entry(&result, 0).expect("a go entry");
    assert_eq!((entry.output, entry.size), (OutputId::of(&big), big.len() as u64));
    assert!(client.find_missing(&[entry.digest()]).await.unwrap().is_empty(), "blob in the CAS");

    // Machine B (another dir) gets them all, with A's times.
    let mut b = Go::start(config(&tmp.path().join("b"), r)).await;
    let hit = b.get(aid(1)).await;
    let path = assert_hit(&hit, &small);
    assert!(path.starts_with(tmp.path().join("b")), "served from B's own dir");
    assert_eq!(hit["Time"], times[0]);
    assert_eq!(b.get(aid(2)).await["Time"], times[1]);
    assert_hit(&b.get(aid(2)).await, &big); // now a local hit
    let empty = b.get(aid(3)).await;
    assert_eq!(empty["Time"], times[2]);
    assert_hit(&empty, b"");
    assert_hit(&b.get(aid(4)).await, &small);
    assert_eq!(b.get(aid(99)).await["Miss"], true, "unknown action");
    b.close(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn prefetch_fills_the_local_tier_before_go_asks() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let r = RemoteConfig { wait_for_uploads: true, ..remote(&server.grpc_url(), "prefetch-test") };
    let bodies: Vec<Vec<u8>> = (0..40u32)
        .map(|n| format!("output {n} ").repeat(n as usize * 50).into_bytes())
        .chain([big_body(), Vec::new()])
        .collect();

    // Machine A: a cold build (gets miss, then puts).
    let mut a = Go::start(config(&tmp.path().join("a"), r.clone())).await;
    for (n, body) in bodies.iter().enumerate() {
        assert_eq!(a.get(aid(n as u32)).await["Miss"], true);
        a.put(aid(n as u32), body).await;
    }
    a.close(Duration::from_secs(10)).await;

    // Machine B: without a single get, the entries arrive.
    let b_dir = tmp.path().join("b");
    let b = Go::start(config(&b_dir, r.clone())).await;
    let local = LocalStore::open(&b_dir, 1 << 30).unwrap();
    let deadline = Instant::now() + LIMIT;
    for (n, body) in bodies.iter().enumerate() {
        loop {
            if let Some(e) = local.get(&aid(n as u32)).unwrap() {
                assert_eq!(std::fs::read(&e.path).unwrap(), *body);
                break;
            }
            assert!(Instant::now() < deadline, "entry {n} was not prefetched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut b = b;
    for (n, body) in bodies.iter().enumerate() {
        assert_hit(&b.get(aid(n as u32)).await, body);
    }
    b.close(Duration::from_secs(10)).await;

    // Another project has no manifest of its own: it falls back to the one
    // stored under its toolchain's key (same go version and target), so it
    // is prefetched too.
    let c_dir = tmp.path().join("c");
    let mut c = Go::start(config(&c_dir, remote(&server.grpc_url(), "another build"))).await;
    let local = LocalStore::open(&c_dir, 1 << 30).unwrap();
    let deadline = Instant::now() + LIMIT;
    while local.get(&aid(5)).unwrap().is_none() {
        assert!(Instant::now() < deadline, "no fallback prefetch for a new project");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_hit(&c.get(aid(5)).await, &bodies[5]);
    c.close(Duration::from_secs(10)).await;
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_server_that_is_down_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("grpc://{}", closed_port());
    let mut go = Go::start(config(tmp.path(), remote(&url, "down"))).await;
    let started = Instant::now();
    go.put(aid(1), b"still stored locally").await;
    assert_hit(&go.get(aid(1)).await, b"still stored locally");
    for n in 2..50 {
        assert_eq!(go.get(aid(n)).await["Miss"], true);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let closing = Instant::now();
    go.close(Duration::from_secs(10)).await;
    assert!(
        closing.elapsed() < Duration::from_secs(3),
        "uploads to a dead server are dropped at exit, not waited for: {:?}",
        closing.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_costs_a_bounded_time() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(300);
    let r = RemoteConfig { timeout, ..remote(&url, "silent") };
    let mut go = Go::start(config(tmp.path(), r)).await;

    let first = Instant::now();
    assert_eq!(go.get(aid(1)).await["Miss"], true);
    let first = first.elapsed();
    assert!(first < timeout * 3, "first get: {first:?}");
    // Now the remote is known to be down: misses are immediate.
    let rest = Instant::now();
    for n in 2..200 {
        assert_eq!(go.get(aid(n)).await["Miss"], true);
    }
    go.put(aid(1), b"local").await;
    assert!(rest.elapsed() < Duration::from_secs(1), "later gets: {:?}", rest.elapsed());
    let closing = Instant::now();
    go.close(Duration::from_secs(2)).await;
    assert!(closing.elapsed() < Duration::from_secs(4), "{:?}", closing.elapsed());
    silent.abort();
}

/// A server whose ActionCache names a blob for every key, and whose CAS
/// returns the wrong bytes (of the right length) for it.
mod lying {
    use super::*;
    use reapi::action_cache_server::{ActionCache, ActionCacheServer};
    use reapi::content_addressable_storage_server::{ContentAddressableStorage, ContentAddressableStorageServer};
    use tonic::{Request, Response, Status};

    pub const GOOD: &[u8] = b"the bytes go put";
    pub const EVIL: &[u8] = b"the bytes we got";

    pub struct Liar;

    #[tonic::async_trait]
    impl ActionCache for Liar {
        async fn get_action_result(
            &self,
            _: Request<reapi::GetActionResultRequest>,
        ) -> Result<Response<reapi::ActionResult>, Status> {
            let e = mapping::RemoteEntry { output: OutputId::of(GOOD), size: GOOD.len() as u64, time_nanos: 1 };
            Ok(Response::new(mapping::entry_result(&e)))
        }

        async fn update_action_result(
            &self,
            r: Request<reapi::UpdateActionResultRequest>,
        ) -> Result<Response<reapi::ActionResult>, Status> {
            Ok(Response::new(r.into_inner().action_result.unwrap_or_default()))
        }
    }

    #[tonic::async_trait]
    impl ContentAddressableStorage for Liar {
        async fn find_missing_blobs(
            &self,
            _: Request<reapi::FindMissingBlobsRequest>,
        ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
            Ok(Response::new(Default::default()))
        }

        async fn batch_update_blobs(
            &self,
            _: Request<reapi::BatchUpdateBlobsRequest>,
        ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
            Err(Status::unimplemented("read-only liar"))
        }

        async fn batch_read_blobs(
            &self,
            r: Request<reapi::BatchReadBlobsRequest>,
        ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
            let responses = r
                .into_inner()
                .digests
                .into_iter()
                .map(|d| reapi::batch_read_blobs_response::Response {
                    digest: Some(d),
                    data: EVIL.to_vec().into(),
                    ..Default::default()
                })
                .collect();
            Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
        }

        type GetTreeStream = Pin<Box<dyn futures::Stream<Item = Result<reapi::GetTreeResponse, Status>> + Send>>;

        async fn get_tree(&self, _: Request<reapi::GetTreeRequest>) -> Result<Response<Self::GetTreeStream>, Status> {
            Err(Status::unimplemented("no trees"))
        }
    }

    /// Serves the liar on an ephemeral port; returns its grpc:// URL.
    pub async fn start() -> (String, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("grpc://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ActionCacheServer::new(Liar))
                .add_service(ContentAddressableStorageServer::new(Liar))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        (url, task)
    }
}

#[tokio::test]
async fn corrupt_remote_data_is_never_handed_to_go() {
    let (url, liar) = lying::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(tmp.path(), remote(&url, "liar"))).await;
    for n in 0..3 {
        assert_eq!(go.get(aid(n)).await["Miss"], true, "corrupt data is a miss");
    }
    let local = LocalStore::open(tmp.path(), 1 << 30).unwrap();
    assert!(!local.has_object(&OutputId::of(lying::GOOD), lying::GOOD.len() as u64));
    assert!(!local.has_object(&OutputId::of(lying::EVIL), lying::EVIL.len() as u64));
    // Bad data is not the server being down: a correct put and get still work.
    go.put(aid(7), lying::GOOD).await;
    assert_hit(&go.get(aid(7)).await, lying::GOOD);
    go.close(Duration::from_secs(2)).await;
    liar.abort();
}

/// A server whose disk is full refuses uploads (RESOURCE_EXHAUSTED) while
/// it still serves reads. The refused upload must not switch reads off:
/// every get after it, spread over longer than a back-off, is still a
/// remote hit (before uploads had their own health, they all missed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_refused_by_a_full_server_leave_reads_on() {
    let disk = common::small_disk::SmallDisk::mount("96m");
    let server = TestServer::start_with(cairn::config::Config::for_data_dir(disk.path.join("data"))).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut r = remote(&server.grpc_url(), "full server");
    r.prefetch = false; // every hit below is a lookup after the refusal
    let bodies: Vec<Vec<u8>> = (0..20u32).map(|n| format!("archive {n} ").repeat(40).into_bytes()).collect();
    let mut a = Go::start(config(&tmp.path().join("a"), RemoteConfig { wait_for_uploads: true, ..r.clone() })).await;
    for (n, body) in bodies.iter().enumerate() {
        a.put(aid(1000 + n as u32), body).await;
    }
    a.close(Duration::from_secs(10)).await;

    disk.fill(256 * 1024);
    let mut b = Go::start(config(&tmp.path().join("b"), r)).await;
    // A new output too large for what is left: its upload is refused.
    b.put(aid(2000), &big_body()).await;
    for (n, body) in bodies.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_hit(&b.get(aid(1000 + n as u32)).await, body);
    }
    b.close(Duration::from_secs(10)).await;
    let client = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    assert!(client.get_action_result(&mapping::action_key(&aid(2000))).await.unwrap().is_none(), "refused, not stored");
    server.stop().await;
}

/// Outputs above 64 KiB that compress 4× or better (go's archives do).
fn compressible_bodies() -> Vec<Vec<u8>> {
    (0..6u32)
        .map(|n| format!("archive {n}: symbol table, export data ").repeat(2_000 + 20_000 * n as usize).into_bytes())
        .collect()
}

/// Machine A puts `bodies` (and stores their prefetch manifest); returns
/// the server's counters after it is done.
async fn fill(server: &TestServer, dir: &Path, r: &RemoteConfig, bodies: &[Vec<u8>]) -> common::admin::Scrape {
    let mut a = Go::start(config(dir, RemoteConfig { wait_for_uploads: true, ..r.clone() })).await;
    for (n, body) in bodies.iter().enumerate() {
        assert_eq!(a.get(aid(3000 + n as u32)).await["Miss"], true);
        a.put(aid(3000 + n as u32), body).await;
    }
    a.close(Duration::from_secs(10)).await;
    settle(server).await
}

/// The server's counters once every call made so far is recorded (a call
/// is recorded just after its client has the answer).
async fn settle(server: &TestServer) -> common::admin::Scrape {
    let mut last = common::admin::Scrape::take(server.admin).await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = common::admin::Scrape::take(server.admin).await;
        if now.sum("cairn_requests_total", &[]) == last.sum("cairn_requests_total", &[]) {
            return now;
        }
        last = now;
    }
}

/// A server that offers zstd (cairn does) sends the larger outputs
/// compressed, both to a get and to the prefetcher: the bytes ByteStream
/// sends are a fraction of the outputs' size, and none of them go through
/// uncompressed batches.
#[tokio::test]
async fn larger_outputs_arrive_zstd_compressed() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let bodies = compressible_bodies();
    let total: usize = bodies.iter().map(Vec::len).sum();
    assert!(bodies.iter().all(|b| b.len() > 64 << 10) && bodies.iter().any(|b| b.len() > 1 << 20));
    let r = remote(&server.grpc_url(), "zstd");
    let before = fill(&server, &tmp.path().join("a"), &r, &bodies).await;

    // Gets alone (no prefetch), then a machine that prefetches everything.
    let mut b = Go::start(config(&tmp.path().join("b"), RemoteConfig { prefetch: false, ..r.clone() })).await;
    for (n, body) in bodies.iter().enumerate() {
        assert_hit(&b.get(aid(3000 + n as u32)).await, body);
    }
    b.close(Duration::from_secs(10)).await;
    let c_dir = tmp.path().join("c");
    let mut c = Go::start(config(&c_dir, r.clone())).await;
    let local = LocalStore::open(&c_dir, 1 << 30).unwrap();
    let deadline = Instant::now() + LIMIT;
    while !bodies.iter().all(|b| local.has_object(&OutputId::of(b), b.len() as u64)) {
        assert!(Instant::now() < deadline, "not prefetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, body) in bodies.iter().enumerate() {
        assert_hit(&c.get(aid(3000 + n as u32)).await, body);
    }
    c.close(Duration::from_secs(10)).await;

    let after = settle(&server).await;
    let sent = |rpc| {
        after.value("cairn_sent_bytes_total", &[("rpc", rpc)]) - before.value("cairn_sent_bytes_total", &[("rpc", rpc)])
    };
    assert!(sent("Read") < (2 * total / 4) as f64, "ByteStream sent {} bytes for 2 × {total}", sent("Read"));
    assert!(sent("BatchReadBlobs") < (64 << 10) as f64, "outputs went through uncompressed batches");
}

/// The server's capabilities answer decides how every download after it
/// goes, however late it comes: held past twice the lookup timeout (on a
/// loaded machine the first call of a fresh connection can take that
/// long), the gets before it go plain and all those after it compressed.
/// (Before: the shim gave up on the answer after the lookup timeout and
/// fetched everything plain for the rest of the process.)
#[tokio::test]
async fn capabilities_that_come_late_still_turn_on_zstd() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let bodies = compressible_bodies();
    assert!(bodies[0].len() <= 1 << 20, "the first goes by BatchReadBlobs when plain");
    let r = RemoteConfig { prefetch: false, ..remote(&server.grpc_url(), "late capabilities") };
    fill(&server, &tmp.path().join("a"), &r, &bodies).await;
    let gate = common::caps_gate::CapsGate::start(&server.grpc_url()).await;
    let mut b = Go::start(config(&tmp.path().join("b"), RemoteConfig { url: gate.url.clone(), ..r.clone() })).await;
    tokio::time::timeout(LIMIT, gate.asked()).await.expect("the shim asks for the capabilities");
    tokio::time::sleep(2 * r.timeout).await; // past anything bounded by the lookup timeout
    let before = settle(&server).await;
    assert_hit(&b.get(aid(3000)).await, &bodies[0]);
    let held = settle(&server).await;
    let sent = |from: &common::admin::Scrape, to: &common::admin::Scrape, rpc| {
        to.value("cairn_sent_bytes_total", &[("rpc", rpc)]) - from.value("cairn_sent_bytes_total", &[("rpc", rpc)])
    };
    assert!(sent(&before, &held, "BatchReadBlobs") >= bodies[0].len() as f64, "plain until the answer");

    gate.open();
    tokio::time::timeout(LIMIT, gate.settled()).await.expect("the capabilities call done with");
    for (n, body) in bodies.iter().enumerate().skip(1) {
        assert_hit(&b.get(aid(3000 + n as u32)).await, body);
    }
    b.close(Duration::from_secs(10)).await;
    let after = settle(&server).await;
    let rest: usize = bodies[1..].iter().map(Vec::len).sum();
    let read = sent(&held, &after, "Read");
    assert!(read < (rest / 2) as f64, "ByteStream sent {read} bytes for {rest} after the answer: not compressed");
    assert!(sent(&held, &after, "BatchReadBlobs") < (64 << 10) as f64, "outputs went through uncompressed batches");
}

/// With `--zstd=false` the same outputs arrive uncompressed (the switch
/// for a server that compresses slower than the link carries).
#[tokio::test]
async fn zstd_can_be_switched_off() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let bodies = compressible_bodies();
    let total: usize = bodies.iter().map(Vec::len).sum();
    let r = RemoteConfig { prefetch: false, ..remote(&server.grpc_url(), "no zstd") };
    let before = fill(&server, &tmp.path().join("a"), &r, &bodies).await;
    let mut b = Go::start(config(&tmp.path().join("b"), RemoteConfig { zstd: false, ..r.clone() })).await;
    for (n, body) in bodies.iter().enumerate() {
        assert_hit(&b.get(aid(3000 + n as u32)).await, body);
    }
    b.close(Duration::from_secs(10)).await;
    let after = settle(&server).await;
    let sent = |rpc| {
        after.value("cairn_sent_bytes_total", &[("rpc", rpc)]) - before.value("cairn_sent_bytes_total", &[("rpc", rpc)])
    };
    assert!(sent("Read") + sent("BatchReadBlobs") > total as f64);
}

/// The prefetch manifest rides inline in its ActionResult: a fresh machine
/// whose outputs are all local already prefetches with one lookup and no
/// CAS read at all (before: one more round trip, a BatchReadBlobs for the
/// manifest, before any prefetching could start).
#[tokio::test]
async fn the_manifest_arrives_with_its_lookup() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let bodies = compressible_bodies();
    let r = remote(&server.grpc_url(), "inline manifest");
    let a_dir = tmp.path().join("a");
    fill(&server, &a_dir, &r, &bodies).await;
    // The same machine again (its outputs are local): it needs only the
    // manifest, to know there is nothing to fetch.
    let before = settle(&server).await;
    let mut a = Go::start(config(&a_dir, r.clone())).await;
    for (n, body) in bodies.iter().enumerate() {
        assert_hit(&a.get(aid(3000 + n as u32)).await, body);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the prefetcher's manifest load
    a.close(Duration::from_secs(10)).await;
    let after = settle(&server).await;
    let calls =
        |rpc| after.sum("cairn_requests_total", &[("rpc", rpc)]) - before.sum("cairn_requests_total", &[("rpc", rpc)]);
    assert!(calls("GetActionResult") >= 1.0, "the manifest was looked up");
    assert_eq!(calls("BatchReadBlobs") + calls("Read"), 0.0, "the manifest came with its lookup");
}
