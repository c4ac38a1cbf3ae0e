//! Bazel's HTTP cache port (`--http-listen`) over TLS with the gRPC port's
//! certificate, driven by curl over https: PUT/GET/HEAD of /cas and /ac,
//! plain HTTP and untrusted clients refused, client certificates (mTLS)
//! required and mapped to scopes exactly as on gRPC, and a SIGHUP reload
//! seen by the next HTTP connection of the real binary. The real Bazel over
//! https is in bazel_e2e.rs. Certificates are made per test (rcgen).

mod common;
mod security_support;

use cairn::proto::reapi;
use common::curl::{curl, sha, try_curl, write};
use common::process::ServerProcess;
use common::TestServer;
use prost::Message;
use security_support::{tls_config, token_new, Ca, Issued, TlsFilesOnDisk};

fn https(server: &TestServer) -> String {
    format!("https://{}", server.http_addr.expect("started with an HTTP port"))
}

/// curl flags trusting `ca`, presenting `client`'s certificate if any.
fn trusting(ca: &Ca, client: Option<&Issued>) -> Vec<String> {
    let mut flags = vec!["--cacert".to_string(), ca.cert.display().to_string()];
    if let Some(c) = client {
        flags.extend(["--cert".into(), c.cert.display().to_string(), "--key".into(), c.key.display().to_string()]);
    }
    flags
}

/// `trusting` flags followed by `rest`, as curl arguments.
fn with<'a>(tls: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    tls.iter().map(String::as_str).chain(rest.iter().copied()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_round_trips_and_refuses_plain_text_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let server = TestServer::start_http(Some(tls_config(dir.path(), &ca, None))).await;
    let url = https(&server);
    let tls = trusting(&ca, None);

    // A blob: PUT, GET, HEAD.
    let data = b"hello over https\n";
    let d = sha(data);
    let file = write(dir.path(), "hello.txt", data);
    let cas = format!("{url}/cas/{}", d.hex());
    // README: curl --cacert ca.pem -T hello.txt https://cache.example.com:8443/cas/$HASH
    let r = curl(&with(&tls, &["-T", &file, &cas])).await;
    assert_eq!(r.code, 200, "{}", r.text());
    let r = curl(&with(&tls, &[&cas])).await;
    assert_eq!((r.code, r.body.as_slice()), (200, &data[..]));
    let r = curl(&with(&tls, &["-I", &cas])).await;
    assert_eq!(r.code, 200);
    assert!(r.headers.contains(&format!("content-length: {}", data.len())), "{}", r.headers);

    // An ActionResult naming the blob: PUT, GET, HEAD.
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out/hello.txt".into(),
            digest: Some(d.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ac = format!("{url}/ac/{}", sha(b"an action").hex());
    let ac_file = write(dir.path(), "result.pb", &result.encode_to_vec());
    assert_eq!(curl(&with(&tls, &["-T", &ac_file, &ac])).await.code, 200);
    let r = curl(&with(&tls, &[&ac])).await;
    assert_eq!(r.code, 200);
    assert_eq!(reapi::ActionResult::decode(r.body.as_slice()).unwrap(), result);
    assert_eq!(curl(&with(&tls, &["-I", &ac])).await.code, 200);

    // Plain HTTP to the TLS port gets no HTTP answer; neither does a client
    // that does not trust the server's CA, or trusts another one.
    let plain = cas.replacen("https://", "http://", 1);
    assert!(try_curl(&[&plain]).await.is_err(), "plain HTTP was answered on the TLS port");
    assert!(try_curl(&[&cas]).await.is_err(), "a client without the CA got through");
    let other = Ca::new(dir.path(), "other");
    assert!(try_curl(&with(&trusting(&other, None), &[&cas])).await.is_err(), "a stranger's CA was accepted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_on_the_http_port_maps_certificates_to_scopes_as_on_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "team");
    let (rw, rw_line) = token_new("main", "rw", &[]);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("ci-main rw cert:writer.example\npr-builds ro cert:reader.example\n{rw_line}\n"))
        .unwrap();
    let mut config = tls_config(dir.path(), &ca, Some(&ca.cert));
    config.security.tokens = Some(tokens);
    let server = TestServer::start_http(Some(config)).await;
    let url = https(&server);
    let data = b"built by main\n";
    let file = write(dir.path(), "blob", data);
    let cas = format!("{url}/cas/{}", sha(data).hex());

    // The writer's certificate (CN=writer.example, rw) writes and reads.
    let writer = trusting(&ca, Some(&ca.client("writer.example", "writer")));
    // README: curl --cacert ca.pem --cert client.pem --key client-key.pem -T blob https://…/cas/$HASH
    assert_eq!(curl(&with(&writer, &["-T", &file, &cas])).await.code, 200);
    assert_eq!(curl(&with(&writer, &[&cas])).await.body, data);

    // No certificate, or one from a CA the server does not trust (even with
    // a known CN): refused in the handshake, no HTTP answer.
    assert!(try_curl(&with(&trusting(&ca, None), &[&cas])).await.is_err(), "served without a certificate");
    let stranger_ca = Ca::new(dir.path(), "stranger");
    let forged = stranger_ca.client("writer.example", "forged");
    assert!(try_curl(&with(&trusting(&ca, Some(&forged)), &[&cas])).await.is_err(), "a forged certificate");

    // CN=reader.example is `ro`: GET yes, PUT 403 (/cas and /ac).
    let reader = trusting(&ca, Some(&ca.client("reader.example", "reader")));
    assert_eq!(curl(&with(&reader, &[&cas])).await.code, 200);
    let r = curl(&with(&reader, &["-T", &file, &cas])).await;
    assert_eq!(r.code, 403, "{}", r.text());
    let result = write(dir.path(), "result.pb", &reapi::ActionResult::default().encode_to_vec());
    let ac = format!("{url}/ac/{}", sha(b"action").hex());
    assert_eq!(curl(&with(&reader, &["-T", &result, &ac])).await.code, 403);
    // A token wins over the certificate, as on gRPC.
    let bearer = format!("Authorization: Bearer {rw}");
    assert_eq!(curl(&with(&reader, &["-H", &bearer, "-T", &result, &ac])).await.code, 200);

    // A trusted certificate whose CN has no line: unauthenticated.
    let nobody = trusting(&ca, Some(&ca.client("nobody.example", "nobody")));
    assert_eq!(curl(&with(&nobody, &[&cas])).await.code, 401);
    server.stop().await;
}

/// The real binary: after SIGHUP a new HTTP connection gets the new
/// certificate and the new client CA, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_reload_reaches_new_http_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let files = TlsFilesOnDisk::new(dir.path());
    files.install(&old);
    let mut args = vec!["--http-listen", "127.0.0.1:0"];
    args.extend(files.flags());
    let server = ServerProcess::start(&dir.path().join("data"), &args);
    let url = format!("https://{}/cas/{}", server.http_addr(), sha(b"").hex());
    let old_client = trusting(&old, Some(&old.client("c", "old-client")));
    let new_client = trusting(&new, Some(&new.client("c", "new-client")));
    assert_eq!(curl(&with(&old_client, &[&url])).await.code, 200);
    assert!(try_curl(&with(&new_client, &[&url])).await.is_err(), "the new CA before the reload");

    files.install(&new);
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: reloaded the TLS certificate");
    assert_eq!(curl(&with(&new_client, &[&url])).await.code, 200);
    assert!(try_curl(&with(&old_client, &[&url])).await.is_err(), "the old certificate after the reload");
    server.terminate();
}
