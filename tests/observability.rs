//! The admin port against the real server: `/metrics` numbers that move
//! after real gRPC calls (by RPC, code, client tool and instance), `/status`
//! figures, the status page in a real headless Chromium, the request log
//! lines of the real binary, and the admin port's start and stop.

mod common;
mod rpc;

use std::time::Duration;

use cairn::proto::bytestream::ReadRequest;
use cairn::proto::reapi;
use common::admin::{self, Scrape};
use common::process::ServerProcess;
use common::TestServer;
use futures::StreamExt;
use prost::Message;
use tonic::{Code, Request};

const INSTANCE: &str = "ci/linux";
const KEY: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// `msg` with a RequestMetadata naming `tool`, as Bazel sends it.
fn tagged<T>(msg: T, tool: &str) -> Request<T> {
    let md = reapi::RequestMetadata {
        tool_details: Some(reapi::ToolDetails { tool_name: tool.into(), tool_version: "test".into() }),
        ..Default::default()
    };
    let mut req = Request::new(msg);
    req.metadata_mut().insert_bin(KEY, tonic::metadata::MetadataValue::from_bytes(&md.encode_to_vec()));
    req
}

fn action(n: u8) -> reapi::Digest {
    rpc::sha256(&[b'a', n])
}

/// Calls [`exercise`] makes.
const CALLS: u64 = 9;

/// A fixed mix of calls, tagged `bazel` unless said otherwise; returns the
/// stored blob. ActionCache: 1 miss, 1 hit. CAS (bazel): FindMissingBlobs
/// 1 found + 1 missing, Read 1 hit + 1 miss. Untagged: BatchReadBlobs
/// 1 found + 1 missing, one GetActionResult with a malformed digest.
async fn exercise(server: &TestServer) -> Vec<u8> {
    let ch = server.channel().await;
    let blob = rpc::gen_blob(7, 10_000);
    let d = rpc::sha256(&blob);
    let absent = rpc::sha256(b"never stored");
    let get = |n: u8| reapi::GetActionResultRequest {
        instance_name: INSTANCE.into(),
        action_digest: Some(action(n)),
        ..Default::default()
    };
    let miss = rpc::ac(&ch).get_action_result(tagged(get(1), "bazel")).await;
    assert_eq!(miss.unwrap_err().code(), Code::NotFound);

    let upload = reapi::BatchUpdateBlobsRequest {
        instance_name: INSTANCE.into(),
        requests: vec![reapi::batch_update_blobs_request::Request {
            digest: Some(d.clone()),
            data: blob.clone().into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    rpc::cas(&ch).batch_update_blobs(tagged(upload, "bazel")).await.unwrap();
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile { path: "out".into(), digest: Some(d.clone()), ..Default::default() }],
        ..Default::default()
    };
    let update = reapi::UpdateActionResultRequest {
        instance_name: INSTANCE.into(),
        action_digest: Some(action(2)),
        action_result: Some(result),
        ..Default::default()
    };
    rpc::ac(&ch).update_action_result(tagged(update, "bazel")).await.unwrap();
    rpc::ac(&ch).get_action_result(tagged(get(2), "bazel")).await.unwrap();

    let find = reapi::FindMissingBlobsRequest {
        instance_name: INSTANCE.into(),
        blob_digests: vec![d.clone(), absent.clone()],
        ..Default::default()
    };
    let missing = rpc::cas(&ch).find_missing_blobs(tagged(find, "bazel")).await.unwrap().into_inner();
    assert_eq!(missing.missing_blob_digests, vec![absent.clone()]);

    let read = |dg: &reapi::Digest| ReadRequest { resource_name: rpc::read_name(INSTANCE, dg), ..Default::default() };
    let mut stream = rpc::bs(&ch).read(tagged(read(&d), "bazel")).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap().data);
    }
    assert_eq!(got, blob);
    let gone = rpc::bs(&ch).read(tagged(read(&absent), "bazel")).await;
    assert_eq!(gone.err().map(|s| s.code()), Some(Code::NotFound));

    let batch = reapi::BatchReadBlobsRequest { digests: vec![d.clone(), absent], ..Default::default() };
    rpc::cas(&ch).batch_read_blobs(batch).await.unwrap();
    let bad = reapi::GetActionResultRequest { action_digest: Some(rpc::digest("xyz", 1)), ..Default::default() };
    assert_eq!(rpc::ac(&ch).get_action_result(bad).await.unwrap_err().code(), Code::InvalidArgument);
    blob
}

#[tokio::test]
async fn metrics_count_calls_bytes_and_lookups_by_tool() {
    let server = TestServer::start().await;
    let before = Scrape::take(server.admin).await;
    assert_eq!(before.sum("cairn_requests_total", &[]), 0.0, "a fresh server has served nothing");
    let blob = exercise(&server).await;
    let m = Scrape::settled(server.admin, CALLS).await;

    let req = |rpc: &str, code: &str| m.value("cairn_requests_total", &[("rpc", rpc), ("code", code)]);
    assert_eq!(req("GetActionResult", "OK"), 1.0);
    assert_eq!(req("GetActionResult", "NOT_FOUND"), 1.0);
    assert_eq!(req("GetActionResult", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(req("UpdateActionResult", "OK"), 1.0);
    assert_eq!(req("Read", "OK"), 1.0);
    assert_eq!(req("Read", "NOT_FOUND"), 1.0);
    assert_eq!(m.value("cairn_request_duration_seconds_count", &[("rpc", "GetActionResult")]), 3.0);
    assert_eq!(m.value("cairn_request_duration_seconds_bucket", &[("rpc", "GetActionResult"), ("le", "+Inf")]), 3.0);

    let look = |store: &str, rpc: &str, tool: &str, result: &str| {
        m.value("cairn_lookups_total", &[("store", store), ("rpc", rpc), ("tool", tool), ("result", result)])
    };
    assert_eq!(look("ac", "GetActionResult", "bazel", "hit"), 1.0);
    assert_eq!(look("ac", "GetActionResult", "bazel", "miss"), 1.0);
    assert_eq!(look("cas", "FindMissingBlobs", "bazel", "hit"), 1.0);
    assert_eq!(look("cas", "FindMissingBlobs", "bazel", "miss"), 1.0);
    assert_eq!(look("cas", "Read", "bazel", "hit"), 1.0);
    assert_eq!(look("cas", "Read", "bazel", "miss"), 1.0);
    assert_eq!(look("cas", "BatchReadBlobs", "none", "hit"), 1.0);
    assert_eq!(look("cas", "BatchReadBlobs", "none", "miss"), 1.0);
    // The malformed lookup is neither a hit nor a miss.
    assert_eq!(m.sum("cairn_lookups_total", &[("tool", "none"), ("store", "ac")]), 0.0);

    let n = blob.len() as f64;
    assert!(m.value("cairn_received_bytes_total", &[("rpc", "BatchUpdateBlobs")]) > n);
    assert!(m.value("cairn_sent_bytes_total", &[("rpc", "Read")]) > n);
    assert!(m.value("cairn_sent_bytes_total", &[("rpc", "BatchReadBlobs")]) > n);
    // Every tagged call named the instance; the batch read and the bad call used the default.
    assert_eq!(m.value("cairn_instance_requests_total", &[("instance_name", INSTANCE)]), 7.0);
    assert_eq!(m.value("cairn_instance_requests_total", &[("instance_name", "")]), 2.0);

    assert_eq!(m.value("cairn_stored_entries", &[("store", "cas")]), 1.0);
    assert_eq!(m.value("cairn_stored_entries", &[("store", "ac")]), 1.0);
    assert!(m.value("cairn_stored_bytes", &[("store", "cas")]) >= n);
    assert_eq!(m.value("cairn_max_size_bytes", &[]), server.config.max_size as f64);
    assert_eq!(m.value("cairn_evictions_total", &[]), 0.0);
    assert_eq!(m.value("cairn_uploads_in_flight", &[]), 0.0);
    assert_eq!(m.sum("cairn_requests_in_flight", &[]), 0.0, "{}", m.text);
    assert_eq!(m.value("cairn_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn status_reports_size_hit_rates_and_busiest_instances() {
    let server = TestServer::start().await;
    exercise(&server).await;
    Scrape::settled(server.admin, CALLS).await;
    let s = admin::status(server.admin).await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    let bazel = &s["clients"]["bazel"]["last_hour"];
    assert_eq!(bazel["ac_hits"], 1);
    assert_eq!(bazel["ac_misses"], 1);
    assert_eq!(bazel["ac_hit_rate"], 0.5);
    // FindMissingBlobs 1/2 and Read 1/2.
    assert_eq!(bazel["cas_hits"], 2);
    assert_eq!(bazel["cas_misses"], 2);
    assert_eq!(s["clients"]["bazel"]["last_day"]["ac_hit_rate"], 0.5);
    assert!(s["clients"]["go"]["last_hour"]["ac_hit_rate"].is_null(), "no Go lookups yet: {s}");
    assert_eq!(s["clients"]["other"]["last_hour"]["cas_hits"], 1);
    assert_eq!(s["clients"]["all"]["last_day"]["ac_misses"], 1);

    let store = &s["store"];
    let stats = cairn::store::read_stats(server.data_dir()).unwrap();
    assert_eq!(store["stored_bytes"], stats.total_bytes());
    assert_eq!(store["max_size_bytes"], server.config.max_size);
    assert_eq!(store["cas_entries"], 1);
    assert_eq!(store["ac_entries"], 1);
    assert_eq!(store["evictions"], 0);

    let hour = s["chart"]["last_hour"].as_array().unwrap();
    assert_eq!(hour.len(), 60);
    assert_eq!(hour.iter().map(|c| c["ac_hits"].as_u64().unwrap()).sum::<u64>(), 1);
    assert_eq!(s["chart"]["last_day"].as_array().unwrap().len(), 24);
    assert_eq!(s["busiest_instances"][0]["name"], INSTANCE);
    assert_eq!(s["busiest_instances"][0]["requests"], 7);
    assert_eq!(s["requests"]["uploads_in_flight"], 0);
    assert_eq!(s["requests"]["finished"], 9);
    server.stop().await;
}

/// The element with `id` in a DOM dump: its `data-value` and its text.
fn element(dom: &str, id: &str) -> (String, String) {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    let tag = &dom[start..end];
    let value = tag.split("data-value=\"").nth(1).map(|v| v[..v.find('"').unwrap()].to_string()).unwrap_or_default();
    let text = dom[end + 1..end + 1 + dom[end + 1..].find('<').unwrap()].to_string();
    (value, text)
}

#[tokio::test]
async fn status_page_in_headless_chromium_shows_the_status_figures() {
    let server = TestServer::start().await;
    exercise(&server).await;
    Scrape::settled(server.admin, CALLS).await;
    let s = admin::status(server.admin).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", server.admin);
    // The flags the machine notes give for Chromium on a closed network, as root.
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("chromium did not finish within 120 s")
        .expect("cannot run chromium: scripts/setup.sh installs Debian's chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<title>cairn status</title>"),
        "chromium did not load the page: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (v, text) = element(&dom, "stored-bytes");
    assert_eq!(v, s["store"]["stored_bytes"].to_string());
    assert_eq!(text, cairn::config::human_size(s["store"]["stored_bytes"].as_u64().unwrap()));
    let (v, text) = element(&dom, "max-size");
    assert_eq!(v, s["store"]["max_size_bytes"].to_string());
    assert_eq!(text, "10.0 GiB");
    let (_, text) = element(&dom, "used-percent");
    assert_eq!(text, format!("{:.1}%", s["store"]["used_percent"].as_f64().unwrap()));
    let (_, text) = element(&dom, "rate-bazel-hour");
    assert_eq!(text, "50.0%");
    let (v, text) = element(&dom, "rate-bazel-day");
    assert_eq!(
        (v.parse::<f64>().unwrap(), text.as_str()),
        (s["clients"]["bazel"]["last_day"]["ac_hit_rate"].as_f64().unwrap(), "50.0%")
    );
    assert_eq!(element(&dom, "rate-go-hour").1, "–", "no Go lookups: no rate");
    assert_eq!(element(&dom, "cas-rate-bazel-hour").1, "50.0%");
    assert_eq!(element(&dom, "evictions").0, s["store"]["evictions"].to_string());
    assert_eq!(element(&dom, "version").1, env!("CARGO_PKG_VERSION"));
    assert_eq!(element(&dom, "lookups-all-day").0, "2");
    // The chart's bars: one per minute, the hit and the miss somewhere in the last hour.
    let hits: u64 = dom
        .split("<rect class=\"hit\" data-value=\"")
        .skip(1)
        .take(60)
        .map(|r| r[..r.find('"').unwrap()].parse::<u64>().unwrap())
        .sum();
    assert_eq!(hits, 1, "hour chart");
    assert!(dom.contains(&format!("data-name=\"{INSTANCE}\" data-value=\"7\"")), "busiest instance listed");
    server.stop().await;
}

#[tokio::test]
async fn admin_port_answers_health_and_stops_with_the_server() {
    let server = TestServer::start().await;
    let admin = server.admin;
    let (code, _, body) = admin::get(admin, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, ctype, page) = admin::get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(!page.contains("<script") && !page.contains("src=\"http"), "the page loads nothing from outside");
    assert_eq!(admin::get(admin, "/nope").await.0, 404);
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(admin).await.is_err(), "the admin port outlived the server");
}

/// The JSON log lines of target `cairn::requests`.
fn request_lines(p: &ServerProcess) -> Vec<serde_json::Value> {
    p.log_lines("cairn::requests").iter().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect()
}

// Multi-threaded: terminate() blocks its thread while the client's
// connection task must still see the server's GOAWAY and close.
#[tokio::test(flavor = "multi_thread")]
async fn failed_and_slow_calls_get_one_log_line_hits_and_misses_none() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start(dir.path(), &["--log-json", "--log-slow", "1s"]);
    let ch = p.channel().await;
    let blob = b"logged?".to_vec();
    let d = rpc::upload(&mut rpc::cas(&ch), &[&blob]).await.remove(0);
    let read = ReadRequest { resource_name: rpc::read_name("", &d), ..Default::default() };
    let mut stream = rpc::bs(&ch).read(read).await.unwrap().into_inner();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    let get = reapi::GetActionResultRequest { action_digest: Some(action(9)), ..Default::default() };
    assert_eq!(rpc::ac(&ch).get_action_result(get).await.unwrap_err().code(), Code::NotFound);
    let bad = reapi::GetActionResultRequest { action_digest: Some(rpc::digest("xyz", 1)), ..Default::default() };
    rpc::ac(&ch).get_action_result(tagged(bad, "bazel")).await.unwrap_err();
    // A write that holds its stream open past --log-slow before finishing.
    let data = rpc::gen_blob(3, 2000);
    let wd = rpc::sha256(&data);
    let mut reqs = rpc::write_requests(&rpc::fresh_upload_name(&wd), &data, 0, 1000);
    let last = reqs.pop().unwrap();
    let slow = futures::stream::iter(reqs).chain(futures::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        last
    }));
    rpc::bs(&ch).write(slow).await.unwrap();
    // BatchUpdateBlobs, Read, 2 GetActionResult, Write: recorded (and logged) once the calls end.
    let m = Scrape::settled(p.admin.unwrap(), 5).await;
    assert_eq!(m.value("cairn_requests_total", &[("rpc", "Write"), ("code", "OK")]), 1.0);
    let mut lines = request_lines(&p);
    for _ in 0..100 {
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = request_lines(&p);
    }
    let field = |l: &serde_json::Value, k: &str| l["fields"][k].as_str().unwrap_or_default().to_string();
    let summary: Vec<(String, String, String)> =
        lines.iter().map(|l| (field(l, "message"), field(l, "rpc"), field(l, "code"))).collect();
    assert_eq!(
        summary,
        vec![
            ("request failed".into(), "GetActionResult".into(), "INVALID_ARGUMENT".into()),
            ("slow request".into(), "Write".into(), "OK".into()),
        ],
        "{lines:#?}"
    );
    assert_eq!(field(&lines[0], "tool"), "bazel");
    assert!(lines[0]["fields"]["ms"].is_u64(), "{:?}", lines[0]);
    assert!(lines[1]["fields"]["ms"].as_u64().unwrap() >= 1000);
    drop(ch);
    p.terminate();
}

#[test]
fn a_busy_admin_port_stops_start_up_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", &port, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-listen") && err.contains(&port), "{err}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--admin-listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`off`"));
}
