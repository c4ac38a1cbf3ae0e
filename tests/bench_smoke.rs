//! `cairn bench` with tiny sizes against a `cairn serve` it starts itself, so
//! the tool cannot rot: every workload family must report and no operation
//! may fail. Timing is never asserted (benchmarks are not tests).

use std::process::Command;

#[test]
fn bench_runs_every_workload_without_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "bench",
            "--start-cairn",
            "--seconds",
            "0.05",
            "--concurrency",
            "1,4",
            "--connections",
            "2",
            "--find-missing",
            "10,100",
            "--batch-bytes",
            "200KiB",
            "--stream-sizes",
            "300KiB",
            "--stream-parallel",
            "2",
            "--replay-actions",
            "20",
            "--replay-jobs",
            "4",
            "--go-scale",
            "0.01",
            "--startup-entries",
            "300",
            "--lru-accesses",
            "5000",
            "--json",
        ])
        .arg(&json)
        // Scratch data (server dir, file limits) stays inside the test's temp dir.
        .env("CAIRN_BENCH_TMP", dir.path())
        .output()
        .expect("run cairn bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cairn bench failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| workload |"), "no Markdown table:\n{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json parses");
    let rows = report["rows"].as_array().expect("rows");
    for r in rows {
        assert_eq!(r["errors"], 0, "a workload reported errors: {r}");
    }
    let workloads: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
    for want in [
        "limit: hash, 1 core",
        "limit: file",
        "limit: store (no gRPC)",
        "limit: gRPC unary echo",
        "gRPC unary echo",
        "FindMissingBlobs",
        "AC GetActionResult hit",
        "AC GetActionResult miss",
        "AC UpdateActionResult",
        "BatchUpdateBlobs",
        "BatchReadBlobs",
        "bytestream write",
        "bytestream read",
        "replay: Bazel cold build",
        "replay: Bazel warm build, download all",
        "replay: Bazel warm build, download minimal",
        "replay: go build std cmd, cold",
        "replay: go build std cmd, warm",
        "start-up",
        "LRU: exact LRU",
        "LRU: cairn store",
    ] {
        assert!(workloads.contains(&want), "workload {want:?} did not report; got {workloads:?}");
    }
    // Both concurrency levels of the ActionCache workload, and a goal table.
    for c in ["c=1", "c=4"] {
        assert!(
            rows.iter().any(|r| r["workload"] == "AC GetActionResult hit" && r["setting"] == c),
            "no AC hit row for {c}"
        );
    }
    assert!(report["goals"].as_array().is_some_and(|g| !g.is_empty()));
}

/// `cairn bench --soak` for a few seconds with a handful of clients and tiny
/// sizes: every row must report and the well-behaved clients must see no
/// error and lose nothing. The exit status is not asserted: it also reflects
/// how the server answers the misbehaving clients (instance-name cap, zstd
/// limits), which the server side of issue 9 fixes and tests on its own.
#[test]
fn soak_runs_briefly_and_reports_every_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("soak.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "bench",
            "--start-cairn",
            "--soak",
            "--soak-duration",
            "3s",
            "--soak-clients",
            "4",
            "--soak-hostile",
            "8",
            "--connections",
            "2",
            // Over its limit at once, but nothing is old enough to evict: the
            // path runs without making a loss possible on a slow machine.
            "--soak-max-size",
            "4MiB",
            "--soak-min-age",
            "10m",
            "--soak-stream-share",
            "0.3",
            "--soak-stream-min",
            "300KiB",
            "--soak-stream-max",
            "2MiB",
            "--soak-huge",
            "1",
            "--soak-huge-size",
            "3MiB",
            "--soak-stall",
            "1s",
            "--json",
        ])
        .arg(&json)
        .env("CAIRN_BENCH_TMP", dir.path())
        .output()
        .expect("run cairn bench --soak");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| panic!("no JSON report; stderr:\n{stderr}"));
    let report: serde_json::Value = serde_json::from_str(&text).expect("json parses");
    let rows = report["rows"].as_array().expect("rows");
    let row = |w: &str| rows.iter().find(|r| r["workload"] == w).unwrap_or_else(|| panic!("no row {w:?}: {rows:?}"));
    for w in [
        "soak: Bazel action, new",
        "soak: Bazel action, re-run",
        "soak: go put",
        "soak: go get",
        "soak: huge stream action",
        "soak: lost after promise",
    ] {
        assert_eq!(row(w)["errors"], 0, "well-behaved clients saw errors: {}\nstderr:\n{stderr}", row(w));
    }
    assert!(row("soak: Bazel action, new")["ops"].as_u64().unwrap() > 0, "no Bazel action ran");
    assert_eq!(row("soak: huge stream action")["ops"], 1);
    for w in [
        "soak misbehaving: stalled read (never consumed)",
        "soak misbehaving: stalled write (first chunk only)",
        "soak misbehaving: disconnect mid-write",
        "soak misbehaving: disconnect mid-read",
        "soak misbehaving: zstd bomb, BatchUpdateBlobs",
        "soak misbehaving: zstd bomb, ByteStream",
        "soak misbehaving: instance name > 255 bytes",
        "soak misbehaving: wrong or malformed digest",
        "soak: gRPC health check",
        "soak: server peak RSS",
        "soak: data dir disk use",
    ] {
        row(w);
    }
    assert!(row("soak: gRPC health check")["ops"].as_u64().unwrap() > 0);
    assert_eq!(row("soak: gRPC health check")["errors"], 0, "health checks failed");
    assert!(report["goals"].as_array().is_some_and(|g| g.len() == 5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| soak: lost after promise |"));
}

/// A two-round `cairn bench --crash-loop`, so the mode cannot rot (the real
/// run is `scripts/crash-loop.sh`, 100 rounds). Nothing acknowledged may be
/// lost; orphans and counters depend on the store's crash repair, which the
/// store side of issue 9 tests on its own, so the exit status is not asserted.
#[test]
fn crash_loop_runs_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "bench",
            "--crash-loop",
            "2",
            "--crash-writers",
            "3",
            "--crash-max-secs",
            "0.5",
            "--crash-reclaim-secs",
            "1",
        ])
        .env("CAIRN_BENCH_TMP", dir.path())
        .output()
        .expect("run cairn bench --crash-loop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("crash loop: 2 rounds"), "no summary:\n{stdout}\n{stderr}");
    assert!(stdout.contains("lost 0 blobs + 0 entries"), "acknowledged writes lost:\n{stdout}\n{stderr}");
    assert!(stdout.contains("write errors while up 0"), "writes failed:\n{stdout}\n{stderr}");
}
