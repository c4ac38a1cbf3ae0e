//! Tests of the run loop over in-memory pipes, talking exactly as go does,
//! and of the flags.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, DuplexStream, Lines};
use tokio::task::JoinHandle;

use super::protocol::{ActionId, OutputId};
use super::*;
use std::path::Path;

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
const LIMIT: Duration = Duration::from_secs(30);

fn aid(n: u32) -> ActionId {
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(&n.to_be_bytes());
    ActionId(a)
}

fn config(dir: &Path) -> GoCacheConfig {
    GoCacheConfig {
        dir: dir.join("cairn"),
        max_local_size: 1 << 30,
        remote: None,
        finish_timeout: Duration::from_secs(10),
        go_cache: None,
        trim_after_hits: None,
    }
}

/// go's side of one session.
struct Go {
    stdin: Option<DuplexStream>,
    stdout: Lines<BufReader<DuplexStream>>,
    server: JoinHandle<Result<Background, Error>>,
}

impl Go {
    fn start(config: GoCacheConfig) -> Go {
        let (stdin, their_in) = tokio::io::duplex(64 * 1024);
        let (their_out, stdout) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(config, their_in, their_out));
        Go { stdin: Some(stdin), stdout: BufReader::new(stdout).lines(), server }
    }

    async fn send(&mut self, wire: &[u8]) {
        self.stdin.as_mut().expect("stdin open").write_all(wire).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(LIMIT, self.stdout.next_line()).await.expect("reply in time");
        let line = line.unwrap().expect("a reply line, not EOF");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
    }

    /// Closes stdin (as go does after close, or when it exits).
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    async fn expect_eof(&mut self) {
        let next = tokio::time::timeout(LIMIT, self.stdout.next_line()).await.expect("EOF in time");
        assert_eq!(next.unwrap(), None, "stdout should be closed");
    }

    async fn result(self) -> Result<Background, Error> {
        tokio::time::timeout(LIMIT, self.server).await.expect("serve returns in time").unwrap()
    }
}

fn get_wire(id: i64, action: ActionId) -> Vec<u8> {
    format!("{{\"ID\":{id},\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n", action.to_base64()).into_bytes()
}

fn put_wire(id: i64, action: ActionId, output: OutputId, body: &[u8]) -> Vec<u8> {
    let mut w = format!(
        "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\"",
        action.to_base64(),
        output.to_base64()
    );
    if body.is_empty() {
        w.push_str("}\n\n");
    } else {
        w.push_str(&format!(",\"BodySize\":{}}}\n\n\"{}\"\n", body.len(), STANDARD.encode(body)));
    }
    w.into_bytes()
}

fn close_wire(id: i64) -> Vec<u8> {
    format!("{{\"ID\":{id},\"Command\":\"close\"}}\n\n").into_bytes()
}

#[tokio::test]
async fn handshake_comes_first_unprompted() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    assert_eq!(go.recv().await, serde_json::json!({"ID": 0, "KnownCommands": ["get", "put", "close"]}));
    go.close_stdin();
    go.expect_eof().await;
    go.result().await.unwrap();
}

#[tokio::test]
async fn put_get_miss_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    go.recv().await;

    let body = b"package main archive bytes";
    go.send(&put_wire(1, aid(1), OutputId::of(body), body)).await;
    let put = go.recv().await;
    assert_eq!(put["ID"], 1);
    assert!(put.get("Err").is_none(), "{put}");
    let path = put["DiskPath"].as_str().unwrap().to_owned();
    assert!(Path::new(&path).is_absolute() && path.starts_with(dir.path().to_str().unwrap()));
    assert_eq!(std::fs::read(&path).unwrap(), body);

    go.send(&get_wire(2, aid(1))).await;
    let hit = go.recv().await;
    assert_eq!(hit["ID"], 2);
    assert_eq!(hit["OutputID"], OutputId::of(body).to_base64());
    assert_eq!(hit["Size"], body.len());
    assert_eq!(hit["DiskPath"], path);
    let time = hit["Time"].as_str().unwrap();
    assert!(time.len() == 30 && time.ends_with('Z'), "{time}");
    assert!(hit.get("Miss").is_none());

    go.send(&get_wire(3, aid(2))).await;
    assert_eq!(go.recv().await, serde_json::json!({"ID": 3, "Miss": true}));

    go.send(&close_wire(4)).await;
    assert_eq!(go.recv().await, serde_json::json!({"ID": 4}));
    go.expect_eof().await;
    go.result().await.unwrap().finish(LIMIT).await;
}

#[tokio::test]
async fn zero_length_put_then_hit() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    go.recv().await;
    // go's Put waits for its reply, so a get of the same action comes after it.
    go.send(&put_wire(1, aid(1), OutputId::EMPTY, b"")).await;
    let put = go.recv().await;
    go.send(&get_wire(2, aid(1))).await;
    let hit = go.recv().await;
    let path = put["DiskPath"].as_str().unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
    assert_eq!(hit["OutputID"], OutputId::EMPTY.to_base64());
    assert!(hit.get("Size").is_none(), "size 0 is omitted, as go does");
    assert_eq!(hit["DiskPath"], path);
}

#[tokio::test]
async fn corrupt_bodies_fail_only_their_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    go.recv().await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (put_wire(1, aid(1), OutputId::of(b"something else"), b"body"), "corrupted on the way"),
        (put_wire(2, aid(2), OutputId::of(b"x"), b""), "not sha256(\"\")"),
        (
            format!(
                "{{\"ID\":3,\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":9}}\n\n\"{}\"\n",
                aid(3).to_base64(),
                OutputId::of(b"body").to_base64(),
                STANDARD.encode(b"body")
            )
            .into_bytes(),
            "BodySize is 9",
        ),
    ];
    for (wire, want) in cases {
        go.send(&wire).await;
        let r = go.recv().await;
        assert!(r["Err"].as_str().unwrap().contains(want), "{r}");
        assert!(r.get("DiskPath").is_none());
    }
    // Nothing was stored, and the session goes on.
    go.send(&get_wire(4, aid(1))).await;
    assert_eq!(go.recv().await["Miss"], true);
    assert!(std::fs::read_dir(dir.path().join("cairn/tmp")).unwrap().next().is_none(), "temp files cleaned up");
}

/// Writes `wire` from another task, as go's goroutines do, while replies are read.
fn send_in_background(go: &mut Go, wire: Vec<u8>) -> JoinHandle<DuplexStream> {
    let mut stdin = go.stdin.take().expect("stdin open");
    tokio::spawn(async move {
        stdin.write_all(&wire).await.unwrap();
        stdin
    })
}

/// Reads `n` replies, checking each ID is answered once; returns them by ID
/// and the ID of the last one.
async fn recv_all(go: &mut Go, n: usize) -> (HashMap<i64, Value>, i64) {
    let mut seen = HashMap::new();
    let mut last = 0;
    for _ in 0..n {
        let r = go.recv().await;
        last = r["ID"].as_i64().unwrap();
        assert!(r.get("Err").is_none(), "{r}");
        assert!(seen.insert(last, r).is_none(), "duplicate reply {last}");
    }
    (seen, last)
}

#[tokio::test]
async fn pipelined_requests_each_get_exactly_one_reply() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    go.recv().await;
    const N: u32 = 300;
    let body = |i: u32| format!("output {}", i % 50).into_bytes(); // shared outputs, like go's

    // A burst of puts and gets of other actions, without waiting for replies.
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(put_wire(i64::from(2 * i + 1), aid(i), OutputId::of(&body(i)), &body(i)));
        wire.extend(get_wire(i64::from(2 * i + 2), aid(N + i)));
    }
    let writer = send_in_background(&mut go, wire);
    let (seen, _) = recv_all(&mut go, 2 * N as usize).await;
    assert!((0..N).all(|i| seen[&i64::from(2 * i + 2)]["Miss"] == true));
    go.stdin = Some(writer.await.unwrap());

    // Then a burst of gets of what was put, and close.
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(get_wire(i64::from(2 * N + 1 + i), aid(i)));
    }
    wire.extend(close_wire(i64::from(3 * N + 1)));
    let writer = send_in_background(&mut go, wire);
    let (seen, last) = recv_all(&mut go, N as usize + 1).await;
    for i in 0..N {
        assert_eq!(seen[&i64::from(2 * N + 1 + i)]["Size"], body(i).len(), "get {i} hits");
    }
    // The close reply comes last: every other request was answered first.
    assert_eq!(last, i64::from(3 * N + 1));
    let _stdin = writer.await.unwrap();
    go.expect_eof().await;
    go.result().await.unwrap();
}

#[tokio::test]
async fn large_body_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    go.recv().await;
    let body: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let writer = send_in_background(&mut go, put_wire(1, aid(1), OutputId::of(&body), &body));
    let put = go.recv().await;
    assert!(std::fs::read(put["DiskPath"].as_str().unwrap()).unwrap() == body);
    go.stdin = Some(writer.await.unwrap());
    go.send(&get_wire(2, aid(1))).await;
    assert_eq!(go.recv().await["Size"], body.len());
    go.close_stdin(); // EOF without close, as `go list` does
    go.expect_eof().await;
    go.result().await.unwrap();
}

#[tokio::test]
async fn malformed_input_is_a_fatal_error_not_a_hang() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello?\n\n".to_vec(), "not a valid JSON request"),
        (br#"{"ID":1,"Command":"get"}"#.to_vec(), "get without ActionID"),
        // A put that promises a body, then EOF.
        (
            format!(
                "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":5}}\n\n",
                aid(1).to_base64(),
                OutputId::of(b"hello").to_base64()
            )
            .into_bytes(),
            "ended in the middle of a put body",
        ),
    ];
    for (wire, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut go = Go::start(config(dir.path()));
        go.recv().await;
        go.send(&wire).await;
        go.close_stdin();
        let err = go.result().await.err().expect("a fatal error");
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[tokio::test]
async fn gone_reader_stops_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut go = Go::start(config(dir.path()));
    go.recv().await;
    let Go { stdin, stdout, server } = go;
    drop(stdout); // go died; its stdin (ours) stays open
    let mut stdin = stdin.unwrap();
    for i in 1..=3 {
        let _ = stdin.write_all(&get_wire(i, aid(1))).await;
    }
    let res = tokio::time::timeout(LIMIT, server).await.expect("no hang").unwrap();
    assert!(matches!(res, Err(Error::Output(_))), "{:?}", res.err());
}

#[tokio::test]
async fn unusable_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let go = Go::start(GoCacheConfig {
        dir: file.join("cairn"),
        max_local_size: 1,
        remote: None,
        finish_timeout: Duration::from_secs(1),
        go_cache: None,
        trim_after_hits: None,
    });
    let err = go.result().await.err().expect("error");
    assert!(err.to_string().contains("opening local cache dir"), "{err}");
}

/// A log writer that panics, as the log layer does (it reports a failed
/// write with `eprintln!`, which panics) when stderr, go's, cannot be
/// written: a full disk, a closed pipe.
struct PanickingWriter;

impl io::Write for PanickingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        panic!("stderr is gone");
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_is_answered_even_if_logging_panics() {
    // Found with a full disk: the handler's panic was logged before the
    // reply was sent, the logging panicked too, and go waited forever.
    let subscriber = tracing_subscriber::fmt().with_writer(|| PanickingWriter).finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    let (responses, mut rx) = mpsc::channel(4);
    let mut work = Dispatcher { tasks: JoinSet::new(), slots: Arc::new(Semaphore::new(4)), responses };
    work.spawn(7, async {
        if id_is_cursed(7) {
            panic!("a bug in a handler");
        }
        Response::ok(7)
    })
    .await;
    let reply = tokio::time::timeout(LIMIT, rx.recv()).await.expect("a reply").unwrap();
    assert_eq!(reply.id, 7);
    assert!(reply.err.is_some(), "{reply:?}");
    work.drain().await;
}

fn id_is_cursed(id: i64) -> bool {
    id == 7
}

/// The flags as main.rs embeds them.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: GoCacheArgs,
}

fn parse(flags: &[&str]) -> GoCacheArgs {
    Cli::try_parse_from(std::iter::once("gocacheprog").chain(flags.iter().copied())).unwrap().args
}

#[test]
fn config_defaults_to_a_dir_under_gocache() {
    let c = parse(&[]).resolve(Some("/home/u/.cache/go-build".into()), Ok("/x".into())).unwrap();
    assert_eq!(c.dir, PathBuf::from("/home/u/.cache/go-build/cairn"));
    assert_eq!(c.max_local_size, 10 << 30);
    assert_eq!(c.remote, None);
    // The tier is inside GOCACHE, so `go clean -cache` reaches it.
    assert_eq!(c.go_cache, Some(PathBuf::from("/home/u/.cache/go-build")));
    let elsewhere = parse(&["--dir", "/shared/cairn"]).resolve(Some("/g".into()), Ok("/x".into())).unwrap();
    assert_eq!(elsewhere.go_cache, None, "a tier outside GOCACHE is not go's to clear");
}

#[test]
fn config_flags() {
    let c = parse(&[
        "--dir",
        "rel/dir",
        "--remote",
        "grpc://cache:9092",
        "--instance",
        "go",
        "--max-local-size",
        "512MiB",
        "--remote-timeout",
        "250ms",
    ])
    .resolve(None, Ok("/work".into()))
    .unwrap();
    assert_eq!(c.dir, PathBuf::from("/work/rel/dir"));
    assert_eq!(c.max_local_size, 512 << 20);
    assert_eq!(
        c.remote,
        Some(RemoteConfig {
            url: "grpc://cache:9092".into(),
            instance: "go".into(),
            timeout: Duration::from_millis(250),
            prefetch: true,
            prefetch_key: None,
            wait_for_uploads: false,
            security: Default::default(),
            zstd: true,
        })
    );
    assert_eq!(c.finish_timeout, Duration::from_secs(10));
    let c = parse(&[
        "--remote",
        "grpc://c:1",
        "--prefetch=false",
        "--prefetch-key",
        "team/app",
        "--wait-for-uploads",
        "--finish-timeout",
        "3s",
    ])
    .resolve(Some("/g".into()), Ok("/".into()))
    .unwrap();
    let r = c.remote.unwrap();
    assert!(!r.prefetch && r.wait_for_uploads);
    assert_eq!(r.prefetch_key.as_deref(), Some("team/app"));
    assert_eq!(c.finish_timeout, Duration::from_secs(3));
    // Waiting for uploads gets a longer default bound.
    let c =
        parse(&["--remote", "grpc://c:1", "--wait-for-uploads"]).resolve(Some("/g".into()), Ok("/".into())).unwrap();
    assert_eq!(c.finish_timeout, WAIT_FINISH_TIMEOUT);
}

#[test]
fn config_errors() {
    let no_gocache = parse(&[]).resolve(None, Ok("/".into())).unwrap_err();
    assert!(no_gocache.to_string().contains("GOCACHE is not set"), "{no_gocache}");
    let off = parse(&[]).resolve(Some("off".into()), Ok("/".into())).unwrap_err();
    assert!(off.to_string().contains("GOCACHE"), "{off}");
    assert!(parse(&["--max-local-size", "0"]).resolve(Some("/g".into()), Ok("/".into())).is_err());
    assert!(Cli::try_parse_from(["x", "--max-local-size", "lots"]).is_err());
    assert!(Cli::try_parse_from(["x", "--remote-timeout", "soon"]).is_err());
    // An empty remote means local-only.
    let c = parse(&["--remote", ""]).resolve(Some("/g".into()), Ok("/".into())).unwrap();
    assert_eq!(c.remote, None);
}

#[test]
fn timeouts() {
    let cases = [
        ("2s", Some(Duration::from_secs(2))),
        ("2", Some(Duration::from_secs(2))),
        ("250ms", Some(Duration::from_millis(250))),
        ("1.5s", Some(Duration::from_millis(1500))),
        ("1m", Some(Duration::from_secs(60))),
        ("10us", Some(Duration::from_micros(10))),
        ("", None),
        ("ms", None),
        ("5h", None),
        ("-1s", None),
    ];
    for (s, want) in cases {
        assert_eq!(parse_timeout(s).ok(), want, "{s:?}");
    }
}
