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
