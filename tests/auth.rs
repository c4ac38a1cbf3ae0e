//! Tokens over gRPC: every outcome of the access decision through the real
//! server and the real client (no token, unknown token, ro and rw tokens,
//! instance prefixes, anonymous reads, a malformed header), the tokens file
//! reloaded on SIGHUP by the real binary, and the start-up log line.

mod bazel_support;
mod common;
mod security_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bazel_support::runner::{Bazel, Build};
use bytes::Bytes;
use cairn::auth::Anonymous;
use cairn::client::{Client, ClientError, Security};
use cairn::digest::{Digest, DigestFunction};
use cairn::proto::reapi;
use common::TestServer;
use security_support::{token_new, Logged};
use tonic::Code;

/// A tokens file with an rw token, a ro token and an rw token for `team-a`
/// made by `cairn token new`; returns the file and the three tokens.
fn tokens_file(dir: &Path) -> (PathBuf, [String; 3]) {
    let (rw, rw_line) = token_new("main", "rw", &[]);
    let (ro, ro_line) = token_new("pr", "ro", &[]);
    let (team, team_line) = token_new("team-a", "rw", &["team-a"]);
    let path = dir.join("tokens");
    std::fs::write(&path, format!("# CI\n{rw_line}\n{ro_line}\n{team_line}\n")).unwrap();
    (path, [rw, ro, team])
}

async fn server(anonymous: Anonymous) -> (tempfile::TempDir, TestServer, [String; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = tokens_file(dir.path());
    let mut config = cairn::config::Config::for_data_dir(dir.path().join("data"));
    config.security.tokens = Some(path);
    config.security.anonymous = anonymous;
    (dir, TestServer::start_with(config).await, tokens)
}

async fn client(server: &TestServer, instance: &str, token: Option<&str>) -> Client {
    let security = Security { token: token.map(str::to_string), ..Security::default() };
    Client::connect_with(&server.grpc_url(), instance, Duration::from_secs(5), &security).await.unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(ClientError::Rpc { status, .. }) => status.code(),
        Err(e) => panic!("not an RPC error: {e}"),
    }
}

fn blob(text: &str) -> (Digest, Bytes) {
    (DigestFunction::Sha256.digest_of(text.as_bytes()), Bytes::from(text.to_string()))
}

/// Every write a client can make, each with its own outcome code:
/// BatchUpdateBlobs, ByteStream Write, UpdateActionResult.
async fn writes(c: &Client, text: &str) -> [Code; 3] {
    let (d, data) = blob(text);
    let (d2, data2) = blob(&format!("{text} streamed"));
    let result = reapi::ActionResult { stdout_digest: Some(d.to_proto()), ..Default::default() };
    [
        code(c.batch_upload(&[(d, data)]).await),
        code(c.write_bytes(&d2, data2).await),
        code(c.update_action_result(&d, result).await),
    ]
}

/// Every read: FindMissingBlobs, BatchReadBlobs, ByteStream Read, GetActionResult, GetCapabilities.
async fn reads(c: &Client, text: &str) -> [Code; 5] {
    let (d, _) = blob(text);
    let mut caps = c.clone();
    [
        code(c.find_missing(&[d]).await),
        code(c.batch_read(&[d]).await),
        code(c.read_blob(&d, true).await),
        code(c.get_action_result(&d).await),
        code(caps.capabilities().await),
    ]
}

const OK3: [Code; 3] = [Code::Ok; 3];
const OK5: [Code; 5] = [Code::Ok; 5];

#[tokio::test]
async fn every_token_outcome_over_grpc() {
    let (_dir, server, [rw, ro, team]) = server(Anonymous::None).await;

    // No token, or one nobody issued: UNAUTHENTICATED, reads and writes alike.
    for token in [None, Some("cairn_not-a-real-token")] {
        let c = client(&server, "", token).await;
        assert_eq!(reads(&c, "x").await, [Code::Unauthenticated; 5], "{token:?}");
        assert_eq!(writes(&c, "x").await, [Code::Unauthenticated; 3], "{token:?}");
        // Health stays open: probes carry no credentials.
        assert!(c.health_check().await.unwrap());
    }

    // rw writes; ro then reads what it wrote but may not write.
    let writer = client(&server, "", Some(&rw)).await;
    assert_eq!(writes(&writer, "main wrote this").await, OK3);
    let reader = client(&server, "", Some(&ro)).await;
    assert_eq!(reads(&reader, "main wrote this").await, OK5);
    let (d, data) = blob("main wrote this");
    assert_eq!(reader.batch_read(&[d]).await.unwrap(), vec![Some(data)]);
    assert!(reader.get_action_result(&d).await.unwrap().is_some());
    assert_eq!(writes(&reader, "pr wants to write").await, [Code::PermissionDenied; 3]);
    let (pr, _) = blob("pr wants to write");
    assert_eq!(writer.find_missing(&[pr]).await.unwrap(), vec![pr], "a refused write stored something");

    // A prefix token: its instance and those below it, nothing else (reads too).
    for instance in ["team-a", "team-a/linux"] {
        let c = client(&server, instance, Some(&team)).await;
        assert_eq!(writes(&c, instance).await, OK3, "{instance}");
        assert_eq!(reads(&c, instance).await, OK5, "{instance}");
    }
    for instance in ["", "team-ab", "other"] {
        let c = client(&server, instance, Some(&team)).await;
        assert_eq!(writes(&c, instance).await, [Code::PermissionDenied; 3], "{instance}");
        assert_eq!(reads(&c, instance).await, [Code::PermissionDenied; 5], "{instance}");
    }
    server.stop().await;
}

#[tokio::test]
async fn anonymous_ro_reads_but_never_writes() {
    let (_dir, server, [rw, ..]) = server(Anonymous::Ro).await;
    assert_eq!(writes(&client(&server, "any", Some(&rw)).await, "cached").await, OK3);
    let anonymous = client(&server, "any", None).await;
    assert_eq!(reads(&anonymous, "cached").await, OK5);
    assert_eq!(writes(&anonymous, "anonymous write").await, [Code::Unauthenticated; 3]);
    // A wrong token is refused even though anonymous reads are allowed.
    let typo = client(&server, "any", Some("cairn_typo")).await;
    assert_eq!(reads(&typo, "cached").await, [Code::Unauthenticated; 5]);
    server.stop().await;
}

#[tokio::test]
async fn a_header_that_is_not_a_bearer_token_is_refused() {
    use cairn::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    let (_dir, server, [rw, ..]) = server(Anonymous::Ro).await;
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    for header in [format!("Basic {rw}"), rw.clone(), format!("bearer {rw}")] {
        let mut req = tonic::Request::new(reapi::FindMissingBlobsRequest::default());
        req.metadata_mut().insert("authorization", header.parse().unwrap());
        let got = cas.find_missing_blobs(req).await.map(|_| ()).map_err(|s| s.code());
        // The scheme is case-insensitive; anything else is an unknown credential.
        let want = if header.starts_with("bearer ") { Ok(()) } else { Err(Code::Unauthenticated) };
        assert_eq!(got, want, "{header}");
    }
    server.stop().await;
}

#[test]
fn the_startup_line_says_whether_the_server_is_open() {
    let data = tempfile::tempdir().unwrap();
    let open = Logged::start(data.path(), &[]).unwrap().startup.clone();
    assert!(open.contains("plain gRPC (no TLS)") && open.contains("auth: OPEN (no --tokens)"), "{open}");
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = tokens_file(dir.path());
    let tokens = path.to_str().unwrap();
    let closed = Logged::start(data.path(), &["--tokens", tokens, "--anonymous", "ro"]).unwrap().startup.clone();
    assert!(closed.contains("auth: 3 tokens and 0 certificate identities"), "{closed}");
    assert!(closed.contains("anonymous read-only"), "{closed}");
    // A bad file stops the start, naming the file and the line.
    std::fs::write(&path, "main rw not-a-hash\n").unwrap();
    let bad = Logged::start(data.path(), &["--tokens", path.to_str().unwrap()]).err().expect("started with a bad file");
    assert!(bad.contains("line 1") && bad.contains("tokens"), "{bad}");
}

#[tokio::test]
async fn the_tokens_file_reloads_on_sighup_and_a_bad_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (path, [first, ..]) = tokens_file(dir.path());
    let server = Logged::start(&dir.path().join("data"), &["--tokens", path.to_str().unwrap()]).unwrap();
    let url = format!("grpc://{}", server.addr);
    let find = |token: &str| {
        let (url, token) = (url.clone(), token.to_string());
        async move {
            let security = Security { token: Some(token), ..Security::default() };
            let c = Client::connect_with(&url, "", Duration::from_secs(5), &security).await.unwrap();
            code(c.find_missing(&[blob("x").0]).await)
        }
    };
    let (second, second_line) = token_new("second", "ro", &[]);
    assert_eq!(find(&first).await, Code::Ok);
    assert_eq!(find(&second).await, Code::Unauthenticated);

    // Replace the file: the new token works and the old one stops working.
    std::fs::write(&path, format!("{second_line}\n")).unwrap();
    server.hup();
    server.wait_for("SIGHUP: auth: 1 tokens").unwrap();
    assert_eq!(find(&second).await, Code::Ok);
    assert_eq!(find(&first).await, Code::Unauthenticated);

    // A broken file on reload: logged, and the previous tokens stay in force.
    std::fs::write(&path, "garbage\n").unwrap();
    server.hup();
    let error = server.wait_for("SIGHUP: keeping the previous tokens").unwrap();
    assert!(error.contains("line 1"), "{error}");
    assert_eq!(find(&second).await, Code::Ok);
    assert_eq!(find(&first).await, Code::Unauthenticated);
}

/// Bazel's flags for `server` with `token` in `--remote_header`.
fn bazel_flags(server: &TestServer, token: &str, extra: &[&str]) -> Vec<String> {
    let mut flags =
        vec![format!("--remote_cache={}", server.grpc_url()), format!("--remote_header=Authorization=Bearer {token}")];
    flags.extend(extra.iter().map(|f| f.to_string()));
    flags
}

fn log_build(what: &str, build: &Build) {
    eprintln!("bazel {what}: {}", build.describe());
    for w in build.remote_warnings() {
        eprintln!("  {w}");
    }
}

/// The real Bazel: an rw token (`--remote_header`) fills the cache; a ro
/// token gets every hit with `--remote_upload_local_results=false`; with
/// uploads left on, a ro build's refused writes are tolerated (Bazel warns
/// and goes green) and store nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bazel_writes_with_an_rw_token_and_reads_with_a_ro_token() {
    let (_dir, server, [rw, ro, _]) = server(Anonymous::None).await;
    let bazel = Bazel::new("original");

    let cold = bazel.build(&bazel_flags(&server, &rw, &[])).await;
    log_build("cold, rw token", &cold);
    assert!(cold.remote_warnings().is_empty(), "rw build had cache trouble");
    assert_eq!(cold.summary.remote_cache_hits(), 0);
    assert_eq!(cold.summary.executed(), cold.summary.cacheable());

    bazel.clean_expunge().await;
    let warm = bazel.build(&bazel_flags(&server, &ro, &["--remote_upload_local_results=false"])).await;
    log_build("rebuild, ro token, no uploads", &warm);
    assert!(warm.remote_warnings().is_empty(), "ro build without uploads had cache trouble");
    assert_eq!(warm.summary.remote_cache_hits(), cold.summary.cacheable(), "misses: {:#?}", warm.misses());

    // A change built with the ro token and uploads on: the 3 dependent
    // actions run, their uploads are refused (Bazel 4 warns "Writing to
    // Remote Cache: N errors during bulk transfer"), the build succeeds.
    bazel.generate("changed");
    let changed = bazel.build(&bazel_flags(&server, &ro, &[])).await;
    log_build("changed, ro token, uploads refused", &changed);
    assert_eq!(changed.summary.executed(), 3, "{:#?}", changed.misses());
    assert!(
        changed.stderr.contains("WARNING: Writing to Remote Cache"),
        "Bazel did not report the refused uploads:\n{}",
        changed.stderr
    );

    // Nothing of it was stored: the rw token runs the same 3 again.
    bazel.clean_expunge().await;
    let again = bazel.build(&bazel_flags(&server, &rw, &[])).await;
    log_build("changed, rw token", &again);
    assert_eq!(again.summary.executed(), 3, "a ro build's results reached the cache");
    drop(bazel);
    server.stop().await;
}
