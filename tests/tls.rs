//! TLS and mTLS on the gRPC port with certificates made per test: a tonic
//! client over grpcs://, plain-text and untrusted clients refused, client
//! certificates required and mapped to scopes, a stalled handshake that
//! holds up nobody, certificates reloaded on SIGHUP by the real binary, and
//! the real Go shim over grpcs:// with mTLS and tokens.

mod common;
mod go_support;
mod security_support;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cairn::client::{Client, ClientError, Security};
use cairn::digest::DigestFunction;
use common::TestServer;
use go_support::{compiles, Workspace, APP_OUTPUT};
use security_support::{tls_config, token_new, Ca, Issued, Logged, TlsFilesOnDisk};
use tonic::Code;

fn grpcs(server: &TestServer) -> String {
    format!("grpcs://127.0.0.1:{}", server.addr.port())
}

fn trusting(ca: &Ca, client: Option<&Issued>) -> Security {
    Security {
        tls_ca: Some(ca.cert.clone()),
        tls_cert: client.map(|c| c.cert.clone()),
        tls_key: client.map(|c| c.key.clone()),
        token: None,
    }
}

/// Connects and makes one upload and one download; the first error.
async fn round_trip(url: &str, security: &Security) -> Result<(), ClientError> {
    let c = Client::connect_with(url, "", Duration::from_secs(5), security).await?;
    let data = Bytes::from_static(b"over TLS");
    let d = DigestFunction::Sha256.digest_of(&data);
    c.batch_upload(&[(d, data.clone())]).await?;
    assert_eq!(c.batch_read(&[d]).await?, vec![Some(data)]);
    Ok(())
}

fn code(r: Result<(), ClientError>) -> Code {
    match r {
        Ok(()) => Code::Ok,
        Err(ClientError::Rpc { status, .. }) => status.code(),
        Err(e) => panic!("not an RPC error: {e}"),
    }
}

#[tokio::test]
async fn tls_serves_a_tonic_client_and_refuses_plain_text_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let server = TestServer::start_with(tls_config(dir.path(), &ca, None)).await;
    round_trip(&grpcs(&server), &trusting(&ca, None)).await.unwrap();
    // Plain text to a TLS port, and a client that trusts another CA: no call succeeds.
    assert!(round_trip(&server.grpc_url(), &Security::default()).await.is_err());
    let other = Ca::new(dir.path(), "other");
    assert!(round_trip(&grpcs(&server), &trusting(&other, None)).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_does_not_hold_up_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let server = TestServer::start_with(tls_config(dir.path(), &ca, None)).await;
    // Connections that never finish (or never start) their handshake.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"\x16\x03\x01").await.unwrap();
        stalled.push(s);
    }
    // Well inside the server's 10 s handshake timeout: with handshakes done
    // one after another in the accept loop this would wait for all of them.
    let (url, security) = (grpcs(&server), trusting(&ca, None));
    let call = round_trip(&url, &security);
    tokio::time::timeout(Duration::from_secs(5), call).await.expect("held up by stalled handshakes").unwrap();
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_known_certificate_and_scopes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "clients");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ci-main rw cert:writer.example\npr-builds ro cert:reader.example\n").unwrap();
    let mut config = tls_config(dir.path(), &ca, Some(&ca.cert));
    config.security.tokens = Some(tokens);
    let server = TestServer::start_with(config).await;
    let url = grpcs(&server);

    let writer = ca.client("writer.example", "writer");
    round_trip(&url, &trusting(&ca, Some(&writer))).await.unwrap();
    // No certificate, or one from a CA the server does not trust: refused in the handshake.
    assert!(round_trip(&url, &trusting(&ca, None)).await.is_err());
    let stranger_ca = Ca::new(dir.path(), "stranger");
    let stranger = stranger_ca.client("writer.example", "stranger");
    let forged = Security { tls_ca: Some(ca.cert.clone()), ..trusting(&stranger_ca, Some(&stranger)) };
    assert!(round_trip(&url, &forged).await.is_err());
    // A trusted certificate maps to its line's scope; one with no line is unknown.
    let reader = ca.client("reader.example", "reader");
    assert_eq!(code(round_trip(&url, &trusting(&ca, Some(&reader))).await), Code::PermissionDenied);
    let c = Client::connect_with(&url, "", Duration::from_secs(5), &trusting(&ca, Some(&reader))).await.unwrap();
    assert!(c.find_missing(&[DigestFunction::Sha256.digest_of(b"x")]).await.is_ok());
    let nobody = ca.client("nobody.example", "nobody");
    assert_eq!(code(round_trip(&url, &trusting(&ca, Some(&nobody))).await), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn certificates_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let files = TlsFilesOnDisk::new(dir.path());
    files.install(&old);
    let args = files.flags();
    let server = Logged::start(&dir.path().join("data"), &args).unwrap();
    assert!(server.startup.contains("TLS with client certificates (mTLS)"), "{}", server.startup);
    let url = format!("grpcs://{}", server.addr);
    let (old_client, new_client) = (old.client("c", "old-client"), new.client("c", "new-client"));
    round_trip(&url, &trusting(&old, Some(&old_client))).await.unwrap();
    assert!(round_trip(&url, &trusting(&new, Some(&new_client))).await.is_err());

    // A half-written key: the old certificate stays.
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    server.hup();
    server.wait_for("SIGHUP: keeping the previous TLS certificate").unwrap();
    round_trip(&url, &trusting(&old, Some(&old_client))).await.unwrap();

    files.install(&new);
    server.hup();
    server.wait_for("SIGHUP: reloaded the TLS certificate").unwrap();
    round_trip(&url, &trusting(&new, Some(&new_client))).await.unwrap();
    assert!(round_trip(&url, &trusting(&old, Some(&old_client))).await.is_err());
}

/// An mTLS server with an rw and a ro token, on its own runtime so that the
/// (blocking) go commands can run on the test thread.
struct GoSetup {
    _rt: tokio::runtime::Runtime,
    server: TestServer,
    _dir: tempfile::TempDir,
    ca: Ca,
    client: Issued,
    rw_file: PathBuf,
    ro: String,
}

fn go_setup() -> GoSetup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "team");
    let client = ca.client("go-builder", "client");
    let (rw, rw_line) = token_new("main", "rw", &[]);
    let (ro, ro_line) = token_new("pr", "ro", &[]);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{rw_line}\n{ro_line}\n")).unwrap();
    let rw_file = dir.path().join("rw-token");
    std::fs::write(&rw_file, format!("{rw}\n")).unwrap();
    let mut config = tls_config(dir.path(), &ca, Some(&ca.cert));
    config.security.tokens = Some(tokens);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start_with(config));
    GoSetup { _rt: rt, server, _dir: dir, ca, client, rw_file, ro }
}

impl GoSetup {
    /// GOCACHEPROG settings: grpcs://, the CA, the client certificate, and
    /// `token` (a file name, or the token itself).
    fn env(&self, token: (&'static str, String)) -> Vec<(&'static str, String)> {
        vec![
            ("CAIRN_REMOTE", grpcs(&self.server)),
            ("CAIRN_TLS_CA", self.ca.cert.display().to_string()),
            ("CAIRN_TLS_CLIENT_CERT", self.client.cert.display().to_string()),
            ("CAIRN_TLS_CLIENT_KEY", self.client.key.display().to_string()),
            token,
        ]
    }
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn the_go_shim_builds_over_grpcs_with_mtls_and_a_ro_token_keeps_reading() {
    let _one = go_support::one_at_a_time();
    let s = go_setup();
    let ws = Workspace::new();
    let mut rw = s.env(("CAIRN_TOKEN_FILE", s.rw_file.display().to_string()));
    rw.push(("CAIRN_WAIT_FOR_UPLOADS", "1".into()));
    let build = |gocache: &str, env: &[(&'static str, String)], out: &str| {
        let target = ws.root.join(out);
        let run = ws.go_env(gocache, &pairs(env), &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"]);
        eprintln!("{gocache}: go build {out}: {:.2}s", run.elapsed.as_secs_f64());
        run
    };

    // Machine A with the rw token: a cold build, uploaded over mTLS.
    let a = build("gocache-a", &rw, "bin/app-a");
    assert!(a.cairn_lines().is_empty(), "cairn complained:\n{}", a.stderr);
    assert!(compiles(&a.stderr).len() >= 4, "a cold build compiles:\n{}", a.stderr);

    // Machine B, fresh GOCACHE, same credentials: everything from the server.
    let b = build("gocache-b", &rw, "bin/app-b");
    assert!(b.cairn_lines().is_empty(), "cairn complained:\n{}", b.stderr);
    assert_eq!(compiles(&b.stderr), Vec::<&str>::new(), "machine B compiled:\n{}", b.stderr);
    assert_eq!(ws.run_app("bin/app-b"), APP_OUTPUT);

    // Machine C with the ro token (CAIRN_TOKEN): hits too.
    let ro = s.env(("CAIRN_TOKEN", s.ro.clone()));
    let c = build("gocache-c", &ro, "bin/app-c");
    assert_eq!(compiles(&c.stderr), Vec::<&str>::new(), "machine C compiled:\n{}", c.stderr);
    assert_eq!(ws.run_app("bin/app-c"), APP_OUTPUT);

    // Machine C changes a package: it compiles, its uploads are refused, and
    // the build still succeeds with at most a warning about read-only use.
    let a_go = ws.root.join("src/a/a.go");
    let changed = std::fs::read_to_string(&a_go).unwrap().replace("\"!\"", "\"!!\"");
    std::fs::write(&a_go, changed).unwrap();
    // (Waiting for uploads, so the refusal happens while go runs.)
    let mut ro_wait = ro.clone();
    ro_wait.push(("CAIRN_WAIT_FOR_UPLOADS", "1".into()));
    let d = build("gocache-c", &ro_wait, "bin/app-d");
    assert!(!compiles(&d.stderr).is_empty(), "the change compiled nothing:\n{}", d.stderr);
    assert_eq!(ws.run_app("bin/app-d"), "HELLO, BAZEL!!\nHELLO, GO!!\n");
    eprintln!("machine C's warnings: {:#?}", d.cairn_lines());
    assert_eq!(d.cairn_lines().len(), 1, "one warning:\n{}", d.stderr);
    assert!(d.cairn_lines()[0].contains("refuses uploads"), "{}", d.stderr);
    // Nothing it built reached the server: a fresh rw machine compiles the change.
    let e = build("gocache-e", &rw, "bin/app-e");
    assert!(!compiles(&e.stderr).is_empty(), "a ro client's build reached the server:\n{}", e.stderr);
}
