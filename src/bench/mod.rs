//! `cairn bench`: a REAPI load generator that works against any REAPI v2
//! server (cairn or a peer), measured against this machine's physical limits
//! in the same run. See BENCHMARKS.md for results and `scripts/bench.sh`,
//! which regenerates them.
//!
//! # Layout
//! - [`report`]: samples, percentiles, result rows, Markdown and JSON output.
//! - [`data`]: deterministic test data (small-blob mix, large blobs from one buffer).
//! - [`server`]: a `cairn serve` child (`--start-cairn`) and `/proc` memory readings.
//! - [`limits`]: the reference points: SHA-256/BLAKE3 on one core, the store
//!   without gRPC, a page-cache file read, a loopback gRPC unary echo.
//! - [`cas`]: FindMissingBlobs and the batch calls.
//! - [`ac`]: ActionCache hits, misses and updates at several concurrencies.
//! - [`bytestream`]: large-blob writes and reads, one stream and in parallel, with server RSS.
//! - [`replay`]: the RPC sequence of a Bazel build and of `go build` through GOCACHEPROG.
//! - [`startup`]: start-up time and RSS of `cairn serve` over a big data dir.
//! - [`lru`]: the store's eviction against exact LRU on a replayed access trace.
//! - [`merge`]: medians of repeated runs (`--merge`) and servers side by side (`--compare`).
//! - [`soak`]: `--soak`, minutes of well-behaved ([`soak_builds`]) and
//!   misbehaving ([`soak_hostile`]) clients against a server at its size
//!   limit, watched by [`soak_watch`].
//! - [`crash`]: `--crash-loop N`, kill -9 during mixed writes, checked by [`crash_check`].
//! - [`cold_tier`]: `--cold-tier`, a node with an empty local store over a
//!   warm bucket (a [`garage`] cluster the bench starts, or a named bucket).
//! - [`link`]: `cairn bench link`, a delayed, rate-limited packet forwarder
//!   between two TUN devices (a real network for scripts/bench-go.sh).
//!
//! Every workload talks through [`crate::client::Client`], the one REAPI
//! client, and counts every failed or wrong answer as an error.

mod ac;
mod bytestream;
mod cas;
mod cold_tier;
mod crash;
mod crash_check;
mod data;
pub mod garage;
mod limits;
pub mod link;
mod lru;
mod merge;
mod replay;
mod report;
mod server;
mod soak;
mod soak_builds;
mod soak_hostile;
mod soak_watch;
mod startup;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::config::parse_size;
use report::{Goal, Report, Samples};

/// Workload families, in the order a run measures them.
const FAMILIES: [&str; 8] = ["limits", "find-missing", "ac", "batch", "bytestream", "replay", "startup", "lru"];

/// Flags of `cairn bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// REAPI server to load, e.g. grpc://127.0.0.1:9092 (cairn or any peer).
    #[arg(long, conflicts_with = "start_cairn")]
    pub target: Option<String>,
    /// Start a `cairn serve` child on a temp dir under $CAIRN_BENCH_TMP (default /var/tmp) and load it.
    #[arg(long)]
    pub start_cairn: bool,
    /// The cairn binary to start for --start-cairn and the start-up workload [default: this one].
    #[arg(long)]
    pub cairn_bin: Option<PathBuf>,
    /// Name of the server in the report (e.g. cairn, buildgrid).
    #[arg(long, default_value = "cairn")]
    pub name: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// PID of the target server, to report its RSS (automatic with --start-cairn).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Comma-separated workload families to run: limits, find-missing, ac, batch,
    /// bytestream, replay, startup, lru [default: all].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Seconds each timed measurement runs.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Concurrency levels for the ActionCache workload.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub concurrency: Vec<usize>,
    /// HTTP/2 connections the load is spread over (as Bazel opens several).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Digests per FindMissingBlobs call (half of them present).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub find_missing: Vec<usize>,
    /// Bytes of 1–64 KiB blobs uploaded and read per batch measurement.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub batch_bytes: u64,
    /// ByteStream blob sizes.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,64MiB", value_parser = parse_size)]
    pub stream_sizes: Vec<u64>,
    /// Also stream 1 GiB blobs (about 10 GiB of disk writes).
    #[arg(long)]
    pub large: bool,
    /// Parallel streams in the parallel ByteStream measurement.
    #[arg(long, default_value_t = 8)]
    pub stream_parallel: usize,
    /// Actions in the replayed Bazel build.
    #[arg(long, default_value_t = 2000)]
    pub replay_actions: usize,
    /// Actions in flight in the replayed Bazel build (Bazel's --jobs).
    #[arg(long, default_value_t = 16)]
    pub replay_jobs: usize,
    /// Scale of the replayed `go build std cmd` (1.0 = 3715 puts, 730 MB).
    #[arg(long, default_value_t = 1.0)]
    pub go_scale: f64,
    /// Entries in the data dir of the start-up workload (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub startup_entries: u64,
    /// Extra bytes in large blob files in the start-up data dir.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub startup_bytes: u64,
    /// Keep the start-up data dir here and reuse it when it already matches.
    #[arg(long)]
    pub startup_dir: Option<PathBuf>,
    /// Accesses in the LRU trace replayed through the real store (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    pub lru_accesses: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    // --- security ---
    /// PEM CA of a grpcs:// --target's certificate [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Token sent as `authorization: Bearer` on every call (a server run with --tokens).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    // --- end of security ---
    /// Write the results as Markdown here (stdout always gets them).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Instead of loading a server: merge these JSON reports of repeated runs
    /// against one server (median of each figure) and print, --json, --markdown.
    #[arg(long, num_args = 1.., conflicts_with_all = ["target", "start_cairn", "compare"])]
    pub merge: Vec<PathBuf>,
    /// Instead of loading a server: print merged JSON reports side by side
    /// (the first is the reference, e.g. cairn, then the peers).
    #[arg(long, num_args = 1.., conflicts_with_all = ["target", "start_cairn"])]
    pub compare: Vec<PathBuf>,
    #[command(flatten)]
    pub soak: soak::SoakArgs,
    #[command(flatten)]
    pub crash: crash::CrashArgs,
    #[command(flatten)]
    pub cold_tier: cold_tier::ColdTierArgs,
    /// A tool instead of a load run (hidden from `cairn bench --help`'s flags).
    #[command(subcommand)]
    pub tool: Option<BenchTool>,
}

/// Tools run as `cairn bench TOOL` instead of loading a server.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum BenchTool {
    /// Forward packets between two TUN devices with a fixed delay each way
    /// and a rate limit: a real network link for benchmarks (needs root).
    #[command(hide = true)]
    Link(link::LinkArgs),
}

/// What every workload needs: the connections, the flags, the results so far.
pub struct Ctx {
    pub args: BenchArgs,
    /// One client per connection; tasks take them round-robin.
    pub clients: Vec<Client>,
    /// The server process, when known, for RSS readings.
    pub server_pid: Option<u32>,
    pub report: Report,
    /// Makes this run's blobs differ from any earlier run's, so uploads to a
    /// long-lived server are never answered "already have it".
    pub seed: u64,
}

impl Ctx {
    /// How long a timed measurement runs.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.args.seconds.max(0.01))
    }

    /// A fresh seed for one workload's data.
    pub fn seed(&self, salt: u64) -> u64 {
        self.seed ^ salt.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A limit measured earlier in this run.
    pub fn limit(&self, name: &str) -> Option<f64> {
        self.report.limits.get(name).copied()
    }
}

/// Runs `op` from `concurrency` tasks until `duration` passes or `max_ops`
/// operations have started; `op` gets a client and the operation's index and
/// returns the payload bytes it moved. Returns the samples and the wall time.
pub async fn timed<F, Fut>(
    ctx: &Ctx,
    concurrency: usize,
    duration: Duration,
    max_ops: u64,
    op: F,
) -> (Samples, Duration)
where
    F: Fn(Client, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|t| {
            let client = ctx.clients[t % ctx.clients.len()].clone();
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                let mut samples = Samples::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max_ops || Instant::now() >= deadline {
                        return samples;
                    }
                    let t0 = Instant::now();
                    let outcome = op(client.clone(), i).await;
                    samples.record(t0.elapsed(), outcome);
                }
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        match t.await {
            Ok(s) => all.merge(s),
            Err(e) => all.record(Duration::ZERO, Err(format!("bench task panicked: {e}"))),
        }
    }
    (all, start.elapsed())
}

/// Runs `op` once for each index in `0..n`, `concurrency` at a time.
pub async fn each<F, Fut>(ctx: &Ctx, concurrency: usize, n: u64, op: F) -> (Samples, Duration)
where
    F: Fn(Client, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send,
{
    timed(ctx, concurrency, Duration::from_secs(24 * 3600), n, op).await
}

/// `cairn bench`: runs the selected workloads and prints the report.
/// Fails when any operation failed, after printing everything.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchTool::Link(link_args)) = args.tool.clone() {
        // Blocking threads and sleeps for its whole life: keep it off the runtime's workers.
        return tokio::task::spawn_blocking(move || link::run(link_args)).await?;
    }
    if !args.compare.is_empty() {
        print!("{}", merge::compare(&args.compare)?);
        return Ok(());
    }
    if !args.merge.is_empty() {
        let report = merge::merge(&args.merge)?;
        return output(&args, &report);
    }
    let bin = match &args.cairn_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    if let Some(rounds) = args.crash.crash_loop {
        return crash::run(args, bin, rounds).await;
    }
    if args.soak.soak {
        return soak::run(args, bin).await;
    }
    if args.cold_tier.cold_tier {
        let report = cold_tier::run(args.clone(), &bin).await?;
        return output(&args, &report);
    }
    for f in &args.only {
        anyhow::ensure!(FAMILIES.contains(&f.as_str()), "unknown workload family {f:?}; pick from {FAMILIES:?}");
    }
    let child = if args.start_cairn { Some(server::CairnChild::start(&bin, None, &[])?) } else { None };
    let url = match (&child, &args.target) {
        (Some(c), _) => c.url.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => anyhow::bail!("say which server to load: --target grpc://host:port or --start-cairn"),
    };
    let security =
        crate::client::Security { tls_ca: args.tls_ca.clone(), token: args.token.clone(), ..Default::default() };
    let clients = connect_all(&url, &args.instance, args.connections, &security).await?;
    let server_pid = child.as_ref().map(|c| c.pid()).or(args.server_pid);
    let seed = run_seed();
    let mut ctx = Ctx {
        report: Report { target: format!("{} at {url}", args.name), ..Report::default() },
        args,
        clients,
        server_pid,
        seed,
    };
    eprintln!("cairn bench: {}", ctx.report.target);
    let wanted = |f: &str| ctx.args.only.is_empty() || ctx.args.only.iter().any(|o| o == f);
    let (w_limits, w_fm, w_ac, w_batch, w_bs, w_replay, w_startup, w_lru) = (
        wanted("limits"),
        wanted("find-missing"),
        wanted("ac"),
        wanted("batch"),
        wanted("bytestream"),
        wanted("replay"),
        wanted("startup"),
        wanted("lru"),
    );
    if w_limits {
        limits::run(&mut ctx).await?;
    }
    if w_fm {
        cas::find_missing(&mut ctx).await?;
    }
    if w_ac {
        ac::run(&mut ctx).await?;
    }
    if w_batch {
        cas::batches(&mut ctx).await?;
    }
    if w_bs {
        bytestream::run(&mut ctx).await?;
    }
    if w_replay {
        replay::bazel(&mut ctx).await?;
        replay::go(&mut ctx).await?;
    }
    if w_startup && ctx.args.startup_entries > 0 {
        startup::run(&mut ctx, &bin).await?;
    }
    if w_lru && ctx.args.lru_accesses > 0 {
        lru::run(&mut ctx).await?;
    }
    if let Some(c) = child {
        tokio::task::spawn_blocking(move || c.stop()).await?;
    }
    goals(&mut ctx.report);
    output(&ctx.args, &ctx.report)
}

/// `connections` clients of `url` (at least one), each past its
/// Capabilities call, so a run fails early on a server it cannot use.
pub async fn connect_all(
    url: &str,
    instance: &str,
    connections: usize,
    security: &crate::client::Security,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let mut c = Client::connect_with(url, instance, Duration::from_secs(10), security).await?;
        c.capabilities().await?;
        clients.push(c);
    }
    Ok(clients)
}

/// A seed that makes this run's blobs differ from any earlier run's.
pub fn run_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

/// Prints the report as Markdown (and writes it and the JSON where asked);
/// fails when any operation failed, after printing everything.
fn output(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    let mut md = format!("### {}\n\n{}", report.target, report.markdown());
    if !report.goals.is_empty() {
        md.push_str(&format!("\n#### Goals\n\n{}", report.goals_markdown()));
    }
    println!("{md}");
    if let Some(p) = &args.markdown {
        std::fs::write(p, &md)?;
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(report)?)?;
    }
    let errors = report.errors();
    anyhow::ensure!(errors == 0, "{errors} operations failed; see the errors column");
    Ok(())
}

/// Judges the run against the goals of issues 6 and 13 (whatever it measured).
fn goals(report: &mut Report) {
    let find = |w: &str, s: &str| report.rows.iter().find(|r| r.workload == w && r.setting.starts_with(s));
    let mut goals = Vec::new();
    // Issue 13: the slower of one core's SHA-256 and the disk's write + fdatasync.
    let write = find("bytestream write", "1 GiB x1")
        .or_else(|| find("bytestream write", "64 MiB x1"))
        .or_else(|| find("bytestream write", "1 MiB x1"));
    let sha = report.limits.get("sha256_mb_s").copied();
    let disk = report.limits.get("file_write_mb_s").copied();
    let limit = match (sha, disk) {
        (Some(s), Some(d)) => Some((s.min(d), if d < s { "disk write + fdatasync" } else { "1-core SHA-256" })),
        (Some(s), None) => Some((s, "1-core SHA-256")),
        _ => None,
    };
    const WRITE_GOAL: &str = "ByteStream single-stream write ≥ 70% of min(1-core SHA-256, disk write + fdatasync)";
    goals.push(match (write, limit) {
        (Some(w), Some((l, name))) => {
            let f = w.mb_per_sec.unwrap_or(0.0) / l;
            Goal {
                goal: WRITE_GOAL.into(),
                measured: format!(
                    "{} MB/s ({}) = {:.0}% of {} MB/s ({name})",
                    report::num(w.mb_per_sec.unwrap_or(0.0)),
                    w.setting,
                    f * 100.0,
                    report::num(l)
                ),
                met: Some(f >= 0.7),
            }
        }
        _ => unmeasured(WRITE_GOAL),
    });
    const PARALLEL_GOAL: &str = "ByteStream write, 8 streams ≥ 1.5× one stream (64 MiB)";
    goals.push(match (find("bytestream write", "64 MiB x1"), find("bytestream write", "64 MiB x8")) {
        (Some(one), Some(eight)) => {
            let f = eight.mb_per_sec.unwrap_or(0.0) / one.mb_per_sec.unwrap_or(0.0).max(f64::MIN_POSITIVE);
            Goal {
                goal: PARALLEL_GOAL.into(),
                measured: format!(
                    "{} MB/s x8 = {f:.2}× {} MB/s x1",
                    report::num(eight.mb_per_sec.unwrap_or(0.0)),
                    report::num(one.mb_per_sec.unwrap_or(0.0))
                ),
                met: Some(f >= 1.5),
            }
        }
        _ => unmeasured(PARALLEL_GOAL),
    });
    const READ_GOAL: &str = "ByteStream read of a stored 64 MiB blob ≥ 1.5 GB/s, one stream";
    goals.push(match find("bytestream read", "64 MiB x1") {
        Some(r) => Goal {
            goal: READ_GOAL.into(),
            measured: format!("{} MB/s", report::num(r.mb_per_sec.unwrap_or(0.0))),
            met: Some(r.mb_per_sec.unwrap_or(0.0) >= 1500.0),
        },
        None => unmeasured(READ_GOAL),
    });
    let find_missing = report
        .rows
        .iter()
        .find(|r| r.workload == "FindMissingBlobs" && r.setting.starts_with("10000") && r.setting.ends_with("c=1"))
        .or_else(|| find("FindMissingBlobs", "10000"));
    goals.push(match find_missing {
        Some(r) => Goal {
            goal: "FindMissingBlobs of 10,000 digests p50 < 20 ms".into(),
            measured: format!("p50 {} ms, p99 {} ms ({})", report::ms(r.p50_ms), report::ms(r.p99_ms), r.setting),
            met: Some(r.p50_ms < 20.0),
        },
        None => unmeasured("FindMissingBlobs of 10,000 digests p50 < 20 ms"),
    });
    goals.push(match find("AC GetActionResult hit", "c=64") {
        Some(r) => Goal {
            goal: "ActionCache hit p99 < 2 ms at concurrency 64".into(),
            measured: format!("p99 {} ms", report::ms(r.p99_ms)),
            met: Some(r.p99_ms < 2.0),
        },
        None => unmeasured("ActionCache hit p99 < 2 ms at concurrency 64"),
    });
    goals.push(match find("start-up", "spawn to first") {
        Some(r) => Goal {
            goal: "start-up < 1 s at 1M entries".into(),
            measured: format!("{} ({})", r.note.clone().unwrap_or_default(), r.setting),
            met: Some(r.p50_ms < 1000.0),
        },
        None => unmeasured("start-up < 1 s at 1M entries"),
    });
    goals.push(match report.limits.get("upload_peak_rss_bytes") {
        Some(&rss) => {
            let caches = report.limits.get("configured_cache_bytes").copied().unwrap_or(0.0);
            Goal {
                goal: "RSS < 150 MB + configured caches during any upload".into(),
                measured: format!(
                    "peak {:.0} MB during ByteStream uploads (bound {:.0} MB: 150 + {:.0} MB of RocksDB caches)",
                    rss / 1e6,
                    (150e6 + caches) / 1e6,
                    caches / 1e6
                ),
                met: Some(rss < 150e6 + caches),
            }
        }
        None => unmeasured("RSS < 150 MB + configured caches during any upload"),
    });
    goals.push(match report.limits.get("lru_hit_rate_gap") {
        Some(&gap) => Goal {
            goal: "LRU hit rate within 2% of exact LRU (issue 5)".into(),
            measured: format!("{:.2} percentage points below exact LRU", gap * 100.0),
            met: Some(gap <= 0.02),
        },
        None => unmeasured("LRU hit rate within 2% of exact LRU (issue 5)"),
    });
    report.goals = goals;
}

fn unmeasured(goal: &str) -> Goal {
    Goal { goal: goal.into(), measured: "not measured in this run".into(), met: None }
}

/// Turns a client error into the text kept with a failed operation.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}
