//! The `cairn` binary itself: start-up line, flag errors, `cairn stats`
//! against a running server, clean exit on SIGTERM, restart keeps data.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cairn::client::Client;
use cairn::digest::DigestFunction;
use common::process::ServerProcess;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

#[test]
fn bad_flags_get_clear_errors() {
    let out = cairn().args(["serve", "--max-size", "ten gigs"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-size") && err.contains("ten gigs"), "{err}");

    let out = cairn().args(["serve", "--min-age", "12"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a unit"));

    let dir = tempfile::tempdir().unwrap();
    let out = cairn().args(["stats", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no cairn data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_while_serving_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--max-size", "1GiB"]);
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let blobs: Vec<_> = (0..10u8)
        .map(|i| {
            let b = Bytes::from(vec![i; 1000 + i as usize]);
            (DigestFunction::Sha256.digest_of(&b), b)
        })
        .collect();
    c.batch_upload(&blobs).await.unwrap();
    let action = DigestFunction::Sha256.digest_of(b"a");
    c.update_action_result(&action, Default::default()).await.unwrap();
    assert!(c.get_action_result(&action).await.unwrap().is_some());
    assert!(c.get_action_result(&DigestFunction::Sha256.digest_of(b"b")).await.unwrap().is_none());

    let out = cairn().args(["stats", "--json", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cas_count"], 10);
    assert_eq!(v["cas_bytes"], (0..10).map(|i| 1000 + i).sum::<i64>());
    assert_eq!(v["ac_count"], 1);

    server.terminate();
    // The restart reports what it holds, and keeps it.
    let server = ServerProcess::start(&data, &[]);
    let c = Client::connect(&server.grpc_url(), "", Duration::from_secs(5)).await.unwrap();
    let digests: Vec<_> = blobs.iter().map(|b| b.0).collect();
    assert!(c.find_missing(&digests).await.unwrap().is_empty());
    assert!(c.get_action_result(&action).await.unwrap().is_some());
    server.terminate();
    let out = cairn().args(["stats", "--data-dir"]).arg(&data).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10 blobs"), "{text}");
    assert!(text.contains("AC hits / misses  2 / 1"), "{text}");
}

#[test]
fn an_upstream_and_a_bucket_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, _, err) = serve_cmd(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--data-dir",
            data,
            "--upstream",
            "grpc://127.0.0.1:1",
            "--object-store",
            "s3://bucket",
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("name one tier"), "{err}");
}

/// `cairn serve` with `args` and only the CAIRN_* variables in `env`
/// (inherited ones removed), returning (exit code, stdout, stderr).
fn serve_cmd(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = cairn();
    cmd.arg("serve").args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CAIRN_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// One `key = value  # source` line of `--print-config`.
fn setting<'a>(printed: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    printed.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {key} in:\n{printed}"))
}

#[test]
fn config_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        "max-size = \"3GiB\"\nmin-age = \"2h\"\nmax-tmp-size = \"5GiB\"\nhttp-listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let env = [("CAIRN_MAX_SIZE", "2GiB"), ("CAIRN_MIN_AGE", "3h")];
    let (code, out, err) = serve_cmd(&["--config", path, "--max-size", "1GiB", "--print-config"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(setting(&out, "max-size"), "max-size = \"1GiB\"  # flag");
    assert_eq!(setting(&out, "min-age"), "min-age = \"3h\"  # CAIRN_MIN_AGE variable");
    assert_eq!(setting(&out, "max-tmp-size"), "max-tmp-size = \"5GiB\"  # config file");
    assert_eq!(setting(&out, "http-listen"), "http-listen = \"127.0.0.1:0\"  # config file");
    assert_eq!(setting(&out, "max-blob-size"), "max-blob-size = \"4GiB\"  # default");
    assert_eq!(setting(&out, "max-concurrent-streams"), "max-concurrent-streams = 256  # default");

    // CAIRN_CONFIG names the file as well as --config does.
    let (code, out, _) = serve_cmd(&["--print-config"], &[("CAIRN_CONFIG", path)]);
    assert_eq!(code, 0);
    assert_eq!(setting(&out, "max-size"), "max-size = \"3GiB\"  # config file");

    // What is printed is itself a config file that gives the same settings.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out).unwrap();
    let (code, again, err) = serve_cmd(&["--config", printed.to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(code, 0, "{err}");
    let values = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#') && l.contains(" = "))
            .map(|l| l.split("  #").next().unwrap().into())
            .collect()
    };
    assert_eq!(values(&again), values(&out));
}

#[test]
fn config_file_mistakes_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, why) in [
        ("max-sise = \"1GiB\"\n", "max-sise", "unknown key"),
        ("max-size = \"ten gigs\"\n", "max-size", "bad value \"ten gigs\""),
        ("min-age = \"12\"\n", "min-age", "needs a unit"),
        ("http-listen = \"everywhere\"\n", "http-listen", "neither `off` nor an address"),
        ("listen = [\"a\", \"b\"]\n", "listen", "bad value"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = serve_cmd(&["--config", file.to_str().unwrap()], &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(out.is_empty(), "{text}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{text}: one line: {err}");
        assert!(err.contains(&format!("{key:?}")) && err.contains(why) && err.contains("bad.toml"), "{text}: {err}");
    }
    // A missing file too.
    let (code, _, err) = serve_cmd(&["--config", "/nonexistent/cairn.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/cairn.toml"), "{err}");
}

#[test]
fn example_config_in_deploy_parses() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cairn.toml");
    let (code, out, err) = serve_cmd(&["--config", example, "--print-config"], &[]);
    assert_eq!(code, 0, "{err}");
    let keys: toml::Table = std::fs::read_to_string(example).unwrap().parse().unwrap();
    assert!(keys.len() >= 8, "{keys:?}");
    for key in keys.keys() {
        assert!(setting(&out, key).ends_with("# config file"), "{key}: {out}");
    }
    assert_eq!(setting(&out, "max-size"), "max-size = \"50GiB\"  # config file");
}

#[test]
fn serve_help_lists_every_option_with_its_env_var_and_default() {
    let out = cairn().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with("-h,") {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(t);
            b.push(' ');
        }
    }
    assert!(blocks.len() >= 15, "{help}");
    for b in &blocks {
        if b.starts_with("-h,") || b.starts_with("--print-config") {
            continue;
        }
        assert!(b.contains("[env: CAIRN_") && b.contains("[default: "), "no env var or default: {b}");
    }
}

/// The settings of a config file reach the running server: its HTTP port
/// serves, with the file's --max-blob-size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_settings_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nhttp-listen = \"127.0.0.1:0\"\nadmin-listen = \"off\"\n\
             max-blob-size = \"1KiB\"\ndata-dir = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut command = cairn();
    command.args(["serve", "--config", file.to_str().unwrap()]);
    let server = ServerProcess::spawn(command, false);
    let http = server.http_addr();
    let put = |size: usize| {
        let body = dir.path().join("body");
        std::fs::write(&body, vec![1u8; size]).unwrap();
        let hash = DigestFunction::Sha256.digest_of(&vec![1u8; size]).hex();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-T"])
            .arg(&body)
            .arg(format!("http://{http}/cas/{hash}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(put(1000), "200");
    assert_eq!(put(2000), "413", "max-blob-size from the file");
    assert!(data.join("db").exists(), "data-dir from the file");
    server.terminate();
}
