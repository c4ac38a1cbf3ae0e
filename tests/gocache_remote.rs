//! End to end with a real Go toolchain and the remote tier: two "machines"
//! (separate GOCACHEs, so separate cairn dirs, same source path) share one
//! cairn server. Machine B must build without a single compile what machine
//! A built, link a byte-identical binary, and see A's test results as
//! "(cached)"; `go build std` is the larger load. A server killed mid-build,
//! or one that accepts connections and never answers, must not fail the
//! build or stall it beyond a bound.
//!
//! Needs Go 1.24+ (scripts/setup.sh installs it; `CAIRN_GO` points at it).

mod common;
mod go_support;

use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::TestServer;
use go_support::{compiles, Workspace, APP_OUTPUT, GO_TIMEOUT};

/// Runs the in-process server on its own runtime, so the (blocking) go
/// commands can run on the test thread.
fn start_server() -> (tokio::runtime::Runtime, TestServer) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start());
    (rt, server)
}

/// A build on machine A: cold, uploads finished before go exits.
fn env_a(url: &str) -> Vec<(&'static str, String)> {
    vec![("CAIRN_REMOTE", url.to_string()), ("CAIRN_WAIT_FOR_UPLOADS", "1".into())]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn assert_quiet(what: &str, run: &go_support::GoRun) {
    assert!(run.cairn_lines().is_empty(), "{what}: cairn complained:\n{}", run.stderr);
}

#[test]
fn machine_b_builds_nothing_that_machine_a_built() {
    let _one = go_support::one_at_a_time();
    let (_rt, server) = start_server();
    let url = server.grpc_url();
    let ws = Workspace::new();
    let a = env_a(&url);
    let build = |gocache: &str, env: &[(&str, &str)], out: &str| {
        let target = ws.root.join(out);
        let run = ws.go_env(gocache, env, &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"]);
        assert_quiet(out, &run);
        eprintln!("{gocache}: go build {out}: {:.2}s", run.elapsed.as_secs_f64());
        run.stderr
    };

    // Machine A: a cold build and test, uploaded.
    let cold = build("gocache-a", &pairs(&a), "bin/app-a");
    assert!(compiles(&cold).len() >= 4, "a cold build compiles:\n{cold}");
    let test = ws.go_env("gocache-a", &pairs(&a), &["test", "./..."]);
    assert!(
        test.stdout.contains("ok  \texample.com/gcp/c") && !test.stdout.contains("(cached)"),
        "first go test runs:\n{}",
        test.stdout
    );

    // Machine B: fresh GOCACHE and cairn dir, same server: no compile at all.
    let b = [("CAIRN_REMOTE", url.as_str())];
    let warm = build("gocache-b", &b, "bin/app-b");
    assert_eq!(compiles(&warm), Vec::<&str>::new(), "machine B compiled:\n{warm}");
    assert!(ws.read("bin/app-a") == ws.read("bin/app-b"), "binaries differ");
    assert_eq!(ws.run_app("bin/app-b"), APP_OUTPUT);
    let test = ws.go_env("gocache-b", &b, &["test", "./..."]);
    assert!(test.stdout.contains("example.com/gcp/c\t(cached)"), "go test on machine B is cached:\n{}", test.stdout);

    // Machine C, without prefetching: every hit through the ActionCache.
    let c = [("CAIRN_REMOTE", url.as_str()), ("CAIRN_PREFETCH", "false")];
    let warm = build("gocache-c", &c, "bin/app-c");
    assert_eq!(compiles(&warm), Vec::<&str>::new(), "machine C compiled:\n{warm}");
    assert!(ws.read("bin/app-a") == ws.read("bin/app-c"), "binaries differ");
}

#[test]
fn go_build_std_from_a_warm_server() {
    let _one = go_support::one_at_a_time();
    let (_rt, server) = start_server();
    let url = server.grpc_url();
    let ws = Workspace::new();
    let a = ws.go_env("gocache-a", &pairs(&env_a(&url)), &["build", "std"]);
    assert_quiet("A", &a);
    let b = ws.go_env("gocache-b", &[("CAIRN_REMOTE", url.as_str())], &["build", "-x", "std"]);
    assert_quiet("B", &b);
    eprintln!(
        "go build std: cold + upload {:.1}s, fresh machine from the server {:.2}s",
        a.elapsed.as_secs_f64(),
        b.elapsed.as_secs_f64()
    );
    assert_eq!(compiles(&b.stderr), Vec::<&str>::new(), "machine B compiled std");
}

#[test]
fn a_server_killed_mid_build_does_not_fail_it() {
    let _one = go_support::one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let url = server.grpc_url();
    let ws = Workspace::new();
    let (out, out2) = (ws.root.join("bin/app"), ws.root.join("bin/app2"));
    let (out, out2) = (out.to_str().unwrap(), out2.to_str().unwrap());
    let started = Instant::now();
    let build = std::thread::scope(|s| {
        let go = s.spawn(|| {
            ws.try_go("gocache-a", &[("CAIRN_REMOTE", url.as_str())], &["build", "-o", out, "./cmd/app"], GO_TIMEOUT)
        });
        // A cold build of the app and its std dependencies takes well over
        // this on 2 cores, so the server dies in the middle of it.
        std::thread::sleep(Duration::from_secs(2));
        assert!(!go.is_finished(), "the build ended before the server was killed");
        server.kill9();
        go.join().unwrap()
    });
    eprintln!("build with the server killed after 3 s: {:.1}s", started.elapsed().as_secs_f64());
    assert!(build.status.success(), "build failed:\n{}", build.stderr);
    assert!(build.cairn_lines().len() <= 1, "one warning at most:\n{}", build.stderr);
    assert_eq!(ws.run_app("bin/app"), APP_OUTPUT);

    // And a fresh machine against the dead server: a plain cold build.
    let again = ws.go_env("gocache-b", &[("CAIRN_REMOTE", url.as_str())], &["build", "-o", out2, "./cmd/app"]);
    assert!(again.cairn_lines().len() <= 1, "{}", again.stderr);
    assert_eq!(ws.run_app("bin/app2"), APP_OUTPUT);
}

#[test]
fn a_server_that_never_answers_does_not_stall_the_build() {
    let _one = go_support::one_at_a_time();
    // Accepts every connection and never writes a byte.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming() {
            held.push(socket);
        }
    });
    let ws = Workspace::new();
    let (out, out0) = (ws.root.join("bin/app"), ws.root.join("bin/app0"));
    let (out, out0) = (out.to_str().unwrap(), out0.to_str().unwrap());
    let baseline = ws.go_env("gocache-0", &[], &["build", "-o", out0, "./cmd/app"]);
    let run = ws.go_env("gocache-a", &[("CAIRN_REMOTE", url.as_str())], &["build", "-o", out, "./cmd/app"]);
    eprintln!(
        "cold build: local-only {:.1}s, against a silent server {:.1}s",
        baseline.elapsed.as_secs_f64(),
        run.elapsed.as_secs_f64()
    );
    assert_eq!(run.cairn_lines().len(), 1, "exactly one warning:\n{}", run.stderr);
    assert_eq!(ws.run_app("bin/app"), APP_OUTPUT);
    // A warm rebuild (local hits; the uncached link step pays at most one
    // lookup timeout) is not held up either.
    let warm = ws.go_env("gocache-a", &[("CAIRN_REMOTE", url.as_str())], &["build", "-o", out, "./cmd/app"]);
    eprintln!("warm rebuild against a silent server: {:.2}s", warm.elapsed.as_secs_f64());
    assert!(warm.elapsed < Duration::from_secs(20), "warm build took {:?}", warm.elapsed);
}

/// The first run of a new flag set in a project whose other runs are on the
/// server has no manifest of its own (flags are part of the prefetch key),
/// so it falls back to the project's manifest and is still prefetched.
/// (`-tags` rather than `-race`: the race detector needs cgo, which these
/// tests turn off.)
#[test]
fn a_new_flag_set_is_prefetched_from_the_projects_manifest() {
    let _one = go_support::one_at_a_time();
    let (_rt, server) = start_server();
    let url = server.grpc_url();
    let ws = Workspace::new();
    let a = ws.go_env("gocache-a", &pairs(&env_a(&url)), &["test", "./..."]);
    assert_quiet("A", &a);

    let debug = [("CAIRN_REMOTE", url.as_str()), ("CAIRN_LOG_LEVEL", "cairn=debug"), ("CAIRN_WAIT_FOR_UPLOADS", "1")];
    let b = ws.go_env("gocache-b", &debug, &["test", "-tags", "extra", "./..."]);
    let done: Vec<&str> = b.stderr.lines().filter(|l| l.contains("prefetch done")).collect();
    assert_eq!(done.len(), 1, "one prefetch in B's go test:\n{}", b.stderr);
    assert!(done[0].contains("fallback=1"), "from the project's manifest: {}", done[0]);
    assert!(!done[0].contains("outputs=0 "), "outputs were fetched: {}", done[0]);
    assert!(b.stdout.contains("ok  \texample.com/gcp/c"), "{}", b.stdout);

    // B stored a manifest under its own key: C with the same flags uses it.
    let c = ws.go_env("gocache-c", &debug, &["test", "-tags", "extra", "./..."]);
    let done: Vec<&str> = c.stderr.lines().filter(|l| l.contains("prefetch done")).collect();
    assert!(done.len() == 1 && done[0].contains("fallback=0"), "C used its own key:\n{}", c.stderr);
}
