//! The HTTP cache port under `--tokens`: the same policy as gRPC, with the
//! token as `Authorization: Bearer` or as the Basic-auth password (Bazel's
//! `http://name:TOKEN@host` form): no or unknown token 401, a write with a
//! read-only token or outside the token's prefixes 403. Client certificates
//! on the HTTP port (mTLS) are in http_tls.rs.

mod common;
mod security_support;

use std::process::Command;

use cairn::auth::Anonymous;
use cairn::config::Config;
use common::TestServer;
use security_support::token_new;

/// `curl -sS -o /dev/null -w %{http_code} ARGS`: the status code only.
async fn status(args: Vec<String>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(&args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    })
    .await
    .unwrap()
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_outcome_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (rw, rw_line) = token_new("main", "rw", &[]);
    let (ro, ro_line) = token_new("pr", "ro", &[]);
    let (team, team_line) = token_new("team-a", "rw", &["team-a"]);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{rw_line}\n{ro_line}\n{team_line}\n")).unwrap();
    let mut config = Config::for_data_dir(dir.path().join("data"));
    config.security.tokens = Some(tokens);
    config.security.anonymous = Anonymous::None;
    let server = TestServer::start_http(Some(config)).await;
    let url = server.http_cache_url();
    let body = dir.path().join("hello.txt");
    std::fs::write(&body, b"hello over http\n").unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"hello over http\n"));
    let cas = format!("{url}/cas/{hash}");
    let body = body.to_str().unwrap();
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    // No token, an unknown one, a garbage header: 401, nothing stored.
    assert_eq!(status(args(&["-T", body, &cas])).await, 401);
    assert_eq!(status(args(&["-T", body, "-H", &bearer("not-a-token"), &cas])).await, 401);
    assert_eq!(status(args(&["-T", body, "-H", "Authorization: Magic x", &cas])).await, 401);
    assert_eq!(status(args(&["-H", &bearer(&rw), &cas])).await, 404, "nothing was stored");
    // A read-only token reads but does not write.
    assert_eq!(status(args(&["-T", body, "-H", &bearer(&ro), &cas])).await, 403);
    // The rw token writes, as Bearer or as the Basic password.
    assert_eq!(status(args(&["-T", body, "-H", &bearer(&rw), &cas])).await, 200);
    assert_eq!(status(args(&["-T", body, "-u", &format!("ci:{rw}"), &cas])).await, 200);
    assert_eq!(status(args(&["-H", &bearer(&ro), &cas])).await, 200);
    assert_eq!(status(args(&["-u", &format!("pr:{ro}"), &cas])).await, 200);
    assert_eq!(status(args(&[&cas])).await, 401, "anonymous reads are refused under --anonymous none");
    // A prefixed token writes under its prefix only.
    assert_eq!(status(args(&["-T", body, "-H", &bearer(&team), &format!("{url}/team-a/cas/{hash}")])).await, 200);
    assert_eq!(status(args(&["-T", body, "-H", &bearer(&team), &format!("{url}/team-b/cas/{hash}")])).await, 403);
    assert_eq!(status(args(&["-T", body, "-H", &bearer(&team), &cas])).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_ro_reads_over_http_but_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (_rw, rw_line) = token_new("main", "rw", &[]);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{rw_line}\n")).unwrap();
    let mut config = Config::for_data_dir(dir.path().join("data"));
    config.security.tokens = Some(tokens);
    config.security.anonymous = Anonymous::Ro;
    let server = TestServer::start_http(Some(config)).await;
    let url = server.http_cache_url();
    let body = dir.path().join("b.txt");
    std::fs::write(&body, b"b\n").unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"b\n"));
    let cas = format!("{url}/cas/{hash}");
    assert_eq!(status(args(&[&cas])).await, 404, "an anonymous read is answered");
    // As over gRPC: a write without credentials is unauthenticated (401), not forbidden.
    assert_eq!(status(args(&["-T", body.to_str().unwrap(), &cas])).await, 401);
}
