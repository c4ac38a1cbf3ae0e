//! `cairn bench --soak`: one server at its size limit, loaded for minutes by
//! well-behaved replayed builds ([`super::soak_builds`]) and misbehaving
//! clients ([`super::soak_hostile`]) at once, while [`super::soak_watch`]
//! measures the health check, the server's memory and its disk use.
//!
//! Rows: each well-behaved operation kind (goal: 0 errors), "lost after
//! promise", each kind of misbehaviour with its outcomes by gRPC code, the
//! health check, peak RSS against the documented bound, disk use against
//! `--max-size`, and the server's own counters at the end.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{num, Goal, Report, Row};
use super::server::{memory, mib, CairnChild, ScratchDir};
use super::soak_builds::{self, Plan};
use super::soak_hostile::{self, Hostile};
use super::soak_watch;
use super::BenchArgs;
use crate::client::Client;
use crate::config::{human_size, parse_duration, parse_size};

/// Flags of the soak (and the server flags shared with the crash loop).
#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    /// Instead of the workload families: run the soak (see README, "Proof at scale").
    /// With --start-cairn the bench starts the server at the soak's limits.
    #[arg(long)]
    pub soak: bool,
    /// How long the soak runs (e.g. 10m, 60s).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub soak_duration: Duration,
    /// Well-behaved clients (replayed Bazel and Go builds).
    #[arg(long, default_value_t = 256)]
    pub soak_clients: usize,
    /// Misbehaving clients, assigned round-robin to the 8 kinds of misbehaviour.
    #[arg(long, default_value_t = 16)]
    pub soak_hostile: usize,
    /// --max-size of the started server: small next to what the soak writes,
    /// so that eviction runs throughout.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub soak_max_size: u64,
    /// --min-age of the started server: short, so that eviction can work
    /// (at the soak's ~300 MB/s of writes, 10 s would protect ~3 GB, most
    /// of the 4 GiB cache, and the store would run over its limit by design).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub soak_min_age: Duration,
    /// Share of new Bazel actions with one ByteStream output.
    #[arg(long, default_value_t = 0.02)]
    pub soak_stream_share: f64,
    /// Smallest ByteStream output (sizes are log-uniform between min and max).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub soak_stream_min: u64,
    /// Largest ordinary ByteStream output.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub soak_stream_max: u64,
    /// Huge streams over the whole soak, one at a time, evenly spread.
    #[arg(long, default_value_t = 2)]
    pub soak_huge: u64,
    /// Size of each huge stream.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub soak_huge_size: u64,
    /// Share of the well-behaved operations that are Go (GOCACHEPROG) requests.
    #[arg(long, default_value_t = 0.3)]
    pub soak_go_share: f64,
    /// How long a stalled read or write is held before the client gives up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub soak_stall: Duration,
    /// Extra flag for every `cairn serve` the soak or the crash loop starts
    /// (repeat it; e.g. --serve-arg=--max-blob-size=2GiB).
    #[arg(long, allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
}

/// The documented RSS bound (BENCHMARKS.md goals): 150 MB plus RocksDB's
/// configured caches.
fn rss_bound() -> u64 {
    150_000_000 + (crate::store::BLOCK_CACHE_BYTES + crate::store::MEMTABLE_BUDGET) as u64
}

/// Runs the soak and prints its report; fails when a well-behaved client saw
/// an error, a promised blob was lost, a bad input was accepted or a health
/// check failed.
pub async fn run(args: BenchArgs, bin: PathBuf) -> anyhow::Result<()> {
    let s = args.soak.clone();
    let scratch = if args.start_cairn { Some(ScratchDir::new("soak")?) } else { None };
    let child = match &scratch {
        Some(dir) => {
            let mut extra = vec![
                "--max-size".to_string(),
                s.soak_max_size.to_string(),
                "--min-age".to_string(),
                format!("{}s", s.soak_min_age.as_secs()),
            ];
            extra.extend(s.serve_arg.iter().cloned());
            Some(CairnChild::start(&bin, Some(dir.path()), &extra)?)
        }
        None => None,
    };
    let url = match (&child, &args.target) {
        (Some(c), _) => c.url.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => anyhow::bail!("say which server to soak: --start-cairn or --target grpc://host:port"),
    };
    let pid = child.as_ref().map(|c| c.pid()).or(args.server_pid);
    let data_dir = scratch.as_ref().map(|d| d.path().to_path_buf());
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let mut c = Client::connect(&url, &args.instance, Duration::from_secs(10)).await?;
        c.capabilities().await?;
        clients.push(c);
    }
    let health_client = Client::connect(&url, &args.instance, Duration::from_secs(10)).await?;
    let seed = super::run_seed();
    let start = Instant::now();
    let deadline = start + s.soak_duration;
    eprintln!(
        "cairn bench --soak: {} at {url}, {:?}, {} clients + {} misbehaving",
        args.name, s.soak_duration, s.soak_clients, s.soak_hostile
    );

    let stop = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(soak_watch::health(health_client, Arc::clone(&stop)));
    let watch = tokio::spawn(soak_watch::resources(pid, data_dir.clone(), Arc::clone(&stop)));
    let plan = Plan {
        clients: s.soak_clients,
        deadline,
        duration: s.soak_duration,
        min_age: s.soak_min_age,
        stream_share: s.soak_stream_share,
        stream_min: s.soak_stream_min,
        stream_max: s.soak_stream_max.max(s.soak_stream_min),
        go_share: s.soak_go_share,
        huge: s.soak_huge,
        huge_size: s.soak_huge_size,
        seed,
    };
    let uri = url.replacen("grpc://", "http://", 1);
    let hostile = Hostile { uri, url: url.clone(), deadline, stall: s.soak_stall, seed: seed ^ 0x4057 };
    let hostile_client = clients[0].clone();
    let n_hostile = s.soak_hostile;
    let hostile = tokio::spawn(async move { soak_hostile::run(hostile, n_hostile, &hostile_client).await });
    let builds = soak_builds::run(&clients, plan).await;
    let hostile = hostile.await?;
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let health = health.await?;
    let peaks = watch.await?;
    let hwm = pid.and_then(memory).map(|m| m.hwm.max(peaks.rss));
    let stats = match &data_dir {
        Some(d) => server_stats(&bin, d).await,
        None => None,
    };
    if let Some(c) = child {
        tokio::task::spawn_blocking(move || c.stop()).await?;
    }

    let mut report = Report { target: format!("{} at {url} (soak)", args.name), ..Report::default() };
    let setting = format!("{} clients, {}", s.soak_clients, human_secs(wall));
    let lost = builds.lost;
    let well_errors = builds.bazel_new.errors
        + builds.bazel_rerun.errors
        + builds.go_put.errors
        + builds.go_get.errors
        + builds.huge.errors;
    let well_ops = builds.bazel_new.nanos.len()
        + builds.bazel_rerun.nanos.len()
        + builds.go_put.nanos.len()
        + builds.go_get.nanos.len()
        + builds.huge.nanos.len();
    for (name, samples, note) in [
        (
            "soak: Bazel action, new",
            builds.bazel_new,
            "GetActionResult miss, FindMissingBlobs, uploads, UpdateActionResult; MB/s moved",
        ),
        (
            "soak: Bazel action, re-run",
            builds.bazel_rerun,
            "hit and verified download of every output, or re-run when evicted",
        ),
        ("soak: go put", builds.go_put, "get miss, FindMissingBlobs, upload, UpdateActionResult (gocache key scheme)"),
        ("soak: go get", builds.go_get, "hit and verified download, or put again when evicted"),
        ("soak: huge stream action", builds.huge, "one at a time; upload, then hit and verified download"),
    ] {
        report.push(samples.into_row(name, &setting, wall).with_note(note));
    }
    let codes: Vec<String> = builds.codes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    let mut lost_row = Row::value(
        "soak: lost after promise",
        "present per FindMissingBlobs or named by a hit, unreadable within --min-age",
        format!(
            "{lost} lost; {} reads after --min-age found the blob gone (not errors); {} re-runs missed (evicted); \
             well-behaved errors by code: {}",
            builds.late,
            builds.evicted_misses,
            if codes.is_empty() { "none".to_string() } else { codes.join(", ") }
        ),
    );
    lost_row.errors = lost;
    lost_row.first_error = builds.lost_first;
    report.push(lost_row);

    let mut hostile = hostile;
    let mut hostile_wrong = 0;
    for kind in soak_hostile::KINDS {
        let Some(t) = hostile.remove(&kind) else { continue };
        hostile_wrong += t.samples.errors;
        let outcomes: Vec<String> = t.outcomes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        report.push(
            t.samples
                .into_row(&format!("soak misbehaving: {}", kind.label()), "latency = time to the outcome", wall)
                .with_note(format!("outcomes: {}", outcomes.join(", "))),
        );
    }

    let health_failures = health.errors;
    let health_row = health.into_row("soak: gRPC health check", "every 100 ms on its own connection", wall);
    let health_p99 = health_row.p99_ms;
    report.push(health_row);

    let bound = rss_bound();
    if let Some(hwm) = hwm {
        report.push(Row::value(
            "soak: server peak RSS",
            "VmHWM at the end",
            format!("{} (bound {}: 150 MB + RocksDB caches)", mib(hwm), mib(bound)),
        ));
    }
    if data_dir.is_some() {
        report.push(Row::value(
            "soak: data dir disk use",
            &format!("--max-size {}", human_size(s.soak_max_size)),
            format!(
                "max du {} ({:.0}% of --max-size); without tmp/ {} ({:.0}%); tmp/ max {}; {} samples",
                human_size(peaks.disk),
                pct(peaks.disk, s.soak_max_size),
                human_size(peaks.disk_stored),
                pct(peaks.disk_stored, s.soak_max_size),
                human_size(peaks.disk_tmp),
                peaks.samples
            ),
        ));
    }
    if let Some(st) = &stats {
        report.push(Row::value("soak: server counters at the end", "cairn stats --json", st.to_string()));
    }

    report.goals = vec![
        Goal {
            goal: "Soak: well-behaved clients see 0 errors and lose 0 promised blobs".into(),
            measured: format!("{well_errors} errors and {lost} lost in {well_ops} operations"),
            met: Some(well_errors == 0 && lost == 0),
        },
        Goal {
            goal: "Soak: misbehaving clients get clear errors (bad input never accepted)".into(),
            measured: format!("{hostile_wrong} wrong outcomes"),
            met: Some(hostile_wrong == 0),
        },
        Goal {
            goal: "Soak: health check answers throughout (no failure, p99 < 1 s)".into(),
            measured: format!("p99 {} ms, {health_failures} failed", num(health_p99)),
            met: Some(health_failures == 0 && health_p99 < 1000.0),
        },
        match hwm {
            Some(h) => Goal {
                goal: "Soak: RSS < 150 MB + configured caches".into(),
                measured: format!("peak {} (bound {})", mib(h), mib(bound)),
                met: Some(h < bound),
            },
            None => super::unmeasured("Soak: RSS < 150 MB + configured caches"),
        },
        if data_dir.is_some() {
            Goal {
                goal: "Soak: data dir (without uploads in progress) ≤ --max-size".into(),
                measured: format!("max {} of {}", human_size(peaks.disk_stored), human_size(s.soak_max_size)),
                met: Some(peaks.disk_stored <= s.soak_max_size),
            }
        } else {
            super::unmeasured("Soak: data dir (without uploads in progress) ≤ --max-size")
        },
    ];
    // Fails on any error row: well-behaved errors, losses, accepted bad input, failed health checks.
    super::output(&args, &report)
}

/// `cairn stats --json` of the data dir, while the server runs. Retried: its
/// read-only open of RocksDB can race with the server deleting an SST file
/// after a compaction ("No such file or directory ... MANIFEST may be
/// corrupted"), a transient failure.
pub async fn server_stats(bin: &std::path::Path, dir: &std::path::Path) -> Option<serde_json::Value> {
    for attempt in 1..=STATS_ATTEMPTS {
        let out =
            tokio::process::Command::new(bin).args(["stats", "--json", "--data-dir"]).arg(dir).output().await.ok()?;
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).ok();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().take(3).collect::<Vec<_>>().join(" / ");
        eprintln!("cairn stats failed (attempt {attempt} of {STATS_ATTEMPTS}): {first}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// Tries of `cairn stats` before a failure counts.
const STATS_ATTEMPTS: u32 = 5;

fn pct(a: u64, b: u64) -> f64 {
    a as f64 * 100.0 / b.max(1) as f64
}

fn human_secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}
