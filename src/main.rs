//! The `cairn` command line: parses flags, sets up logging, and calls the
//! library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tracing_subscriber::EnvFilter;

use cairn::config::{self, Config};

#[derive(clap::Parser)]
#[command(name = "cairn", version, about = "A remote build cache for Bazel (REAPI v2) and Go (GOCACHEPROG)")]
struct Cli {
    /// Log level or tracing filter (error, warn, info, debug, trace, or e.g. `cairn=debug`)
    /// [default: info; warn for gocacheprog, whose stderr is Go's, and for bench].
    #[arg(long, global = true, env = "CAIRN_LOG_LEVEL")]
    log_level: Option<String>,
    // --- observability ---
    /// Log one JSON object per line instead of text (for log shippers).
    #[arg(long, global = true, env = "CAIRN_LOG_JSON", value_name = "BOOL", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    log_json: bool,
    // --- end of observability ---
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REAPI cache (Capabilities, ActionCache, CAS, ByteStream, health) over gRPC.
    Serve(Box<ServeArgs>),
    /// Serve Go's build and test cache as GOCACHEPROG (GOCACHEPROG="cairn gocacheprog").
    #[command(name = "gocacheprog")]
    GoCacheProg(Box<cairn::gocache::GoCacheArgs>),
    /// Print entries, bytes, hits, misses and evictions of a data dir (safe while a server runs).
    Stats(StatsArgs),
    /// Load a REAPI server (cairn or a peer) and report speed against this machine's limits.
    Bench(Box<cairn::bench::BenchArgs>),
    // --- security ---
    /// Access tokens for `cairn serve --tokens`.
    #[command(subcommand)]
    Token(TokenCommand),
    // --- end of security ---
}

// --- security ---
#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh random token (first line) and the tokens-file line that grants it (second line).
    New {
        /// Who holds it (shown in refusals and logs), e.g. ci-main.
        name: String,
        /// ro: read only; rw: read and write.
        #[arg(value_parser = ["ro", "rw"])]
        mode: String,
        /// Instance names it may use (each covers names below it); none: every instance.
        prefixes: Vec<String>,
    },
}
// --- end of security ---

#[derive(clap::Args)]
struct StatsArgs {
    /// Data directory [default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (use 0.0.0.0:9092 to serve other machines).
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Data directory ($XDG_CACHE_HOME/cairn, else ~/.cache/cairn, by default).
    #[arg(long, env = "CAIRN_DATA_DIR", default_value_os_t = config::default_data_dir())]
    data_dir: PathBuf,
    /// Bound on stored bytes, e.g. 10GiB, 500MB or plain bytes.
    #[arg(long, env = "CAIRN_MAX_SIZE", default_value = "10GiB", value_parser = config::parse_size)]
    max_size: u64,
    /// Entries used more recently than this are never evicted (e.g. 12h, 90m, 0).
    #[arg(long, env = "CAIRN_MIN_AGE", default_value = "12h", value_parser = config::parse_duration)]
    min_age: std::time::Duration,
    // --- Stream and connection limits ---
    /// HTTP/2 calls in flight per connection; more wait in the client.
    #[arg(long, env = "CAIRN_MAX_CONCURRENT_STREAMS", default_value_t = config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_concurrent_streams: u32,
    /// Interval of HTTP/2 keepalive PINGs (0: off).
    #[arg(long, env = "CAIRN_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = config::parse_duration)]
    http2_keepalive_interval: std::time::Duration,
    /// How long a keepalive PING may go unanswered before the connection is closed.
    #[arg(long, env = "CAIRN_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = config::parse_duration)]
    http2_keepalive_timeout: std::time::Duration,
    /// TCP keepalive idle time (0: off).
    #[arg(long, env = "CAIRN_TCP_KEEPALIVE", default_value = "60s", value_parser = config::parse_duration)]
    tcp_keepalive: std::time::Duration,
    /// A ByteStream Read or Write without progress for this long is cancelled (0: never).
    #[arg(long, env = "CAIRN_STREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = config::parse_duration)]
    stream_idle_timeout: std::time::Duration,
    /// Stream data held in memory at once across all calls, e.g. 256MiB.
    #[arg(long, env = "CAIRN_MAX_BUFFERED_BYTES", default_value = "256MiB", value_parser = config::parse_size)]
    max_buffered_bytes: u64,
    // --- end of stream and connection limits ---
    // --- upload limits ---
    /// Largest blob accepted (advertised as max_cas_blob_size_bytes; capped at --max-size).
    #[arg(long, env = "CAIRN_MAX_BLOB_SIZE", default_value = "4GiB", value_parser = config::parse_size)]
    max_blob_size: u64,
    /// Bound on the declared bytes of uploads in progress or parked for resumption (spooled under tmp/).
    #[arg(long, env = "CAIRN_MAX_TMP_SIZE", default_value = "8GiB", value_parser = config::parse_size)]
    max_tmp_size: u64,
    // --- end of upload limits ---
    // --- lifecycle ---
    /// After SIGTERM/SIGINT, how long in-flight calls may finish before the server closes anyway
    /// (a second signal exits at once).
    #[arg(long, env = "CAIRN_DRAIN_TIMEOUT", default_value = "30s", value_parser = config::parse_duration)]
    drain_timeout: std::time::Duration,
    // --- end of lifecycle ---
    // --- http cache ---
    /// Also serve Bazel's HTTP cache protocol (GET/HEAD/PUT /ac/ and /cas/) on this address,
    /// e.g. 0.0.0.0:8080 (`off`: not at all).
    #[arg(long, env = "CAIRN_HTTP_LISTEN", default_value = "off", value_parser = config::parse_optional_addr)]
    http_listen: config::OptionalAddr,
    // --- end of http cache ---
    // --- config file ---
    /// TOML file of settings named like these flags (max-size = "50GiB"); flags and CAIRN_*
    /// variables override it [default: none].
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (each value with where it came from) and exit.
    #[arg(long)]
    print_config: bool,
    // --- end of config file ---
    // --- security ---
    /// PEM certificate chain: serve gRPC (and --http-listen) over TLS (with --tls-key). Reloaded on SIGHUP [default: none: plain TCP].
    #[arg(long, env = "CAIRN_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Reloaded on SIGHUP [default: none].
    #[arg(long, env = "CAIRN_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate signed by one (mTLS). Reloaded on SIGHUP [default: none: no client certificates].
    #[arg(long, env = "CAIRN_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Tokens file, one `NAME ro|rw SHA256-HEX|cert:CN [INSTANCE-PREFIX...]` per line (see `cairn token new`);
    /// unset: the server is open to anyone who reaches it. Reloaded on SIGHUP [default: none: open].
    #[arg(long, env = "CAIRN_TOKENS", value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// What callers without a token or known certificate may do under --tokens: none, or ro (read every instance).
    #[arg(long, env = "CAIRN_ANONYMOUS", default_value = "none")]
    anonymous: cairn::auth::Anonymous,
    // --- end of security ---
    // --- observability ---
    /// Admin HTTP port: /metrics (Prometheus), /status (JSON), /healthz and a status page at /; `off` disables it.
    #[arg(long, env = "CAIRN_ADMIN_LISTEN", default_value = config::DEFAULT_ADMIN_LISTEN,
          value_parser = config::parse_optional_addr)]
    admin_listen: config::OptionalAddr,
    /// Log one line for each call slower than this (e.g. 10s, 2m; 0: never). Failed calls are always logged.
    #[arg(long, env = "CAIRN_LOG_SLOW", default_value = "10s", value_parser = config::parse_duration)]
    log_slow: std::time::Duration,
    // --- end of observability ---
    // --- bucket ---
    /// A bucket shared by several cairn nodes, behind the local store: s3://bucket[/prefix]
    /// (gs://, az:// too). Credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP [default: none].
    #[arg(long, env = "CAIRN_OBJECT_STORE", value_name = "URL")]
    object_store: Option<String>,
    /// Bound on the bucket's bytes, kept by LRU eviction across all nodes, e.g. 500GiB [default: unbounded].
    #[arg(long, env = "CAIRN_OBJECT_STORE_MAX_SIZE", value_parser = config::parse_size, requires = "object_store")]
    object_store_max_size: Option<u64>,
    /// Objects used in the bucket more recently than this are never evicted from it.
    #[arg(long, env = "CAIRN_OBJECT_STORE_MIN_AGE", default_value = "12h", value_parser = config::parse_duration)]
    object_store_min_age: std::time::Duration,
    /// Deadline of one object-store call (and of a stall within a streamed one).
    #[arg(long, env = "CAIRN_OBJECT_STORE_TIMEOUT", default_value = "10s", value_parser = config::parse_duration)]
    object_store_timeout: std::time::Duration,
    /// Time between this node's eviction passes over the bucket (each lists the whole bucket;
    /// 0: none here, this node only logs its uses for the nodes that evict).
    #[arg(long, env = "CAIRN_OBJECT_STORE_EVICT_INTERVAL", default_value = "10m", value_parser = config::parse_duration)]
    object_store_evict_interval: std::time::Duration,
    // --- end of bucket ---
    // --- tiers ---
    /// Make this node a proxy of another REAPI cache (cairn or any other), e.g. grpc://central:9092
    /// or grpcs://central:443: local misses are filled from it, writes go to it behind [default: none].
    #[arg(long, env = "CAIRN_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Instance name used on the upstream; ActionCache names go below it (ci + linux -> ci/linux).
    #[arg(long, env = "CAIRN_UPSTREAM_INSTANCE", default_value = "")]
    upstream_instance: String,
    /// PEM CA certificates a grpcs:// upstream's certificate must chain to [default: the system's roots].
    #[arg(long, env = "CAIRN_UPSTREAM_TLS_CA", value_name = "FILE")]
    upstream_tls_ca: Option<PathBuf>,
    /// File whose first line is the token sent to the upstream [default: none].
    #[arg(long, env = "CAIRN_UPSTREAM_TOKEN_FILE", value_name = "FILE")]
    upstream_token_file: Option<PathBuf>,
    /// How long a lookup waits on the tier before answering from the local store alone
    /// (also the FindMissingBlobs deadline and the longest stall of a tier read).
    #[arg(long, env = "CAIRN_TIER_TIMEOUT", default_value = "5s", value_parser = config::parse_duration)]
    tier_timeout: std::time::Duration,
    /// Tier calls one request, or the write-behind queue, has in flight at once.
    #[arg(long, env = "CAIRN_TIER_CONCURRENCY", default_value_t = config::DEFAULT_TIER_CONCURRENCY)]
    tier_concurrency: usize,
    /// Entries the write-behind queue holds; beyond it the oldest blob entries are dropped.
    #[arg(long, env = "CAIRN_TIER_QUEUE_MAX_ENTRIES", default_value_t = config::DEFAULT_TIER_QUEUE_MAX_ENTRIES)]
    tier_queue_max_entries: u64,
    /// Bytes the write-behind queue's entries may stand for; beyond it the oldest blob entries are dropped.
    #[arg(long, env = "CAIRN_TIER_QUEUE_MAX_SIZE", default_value = "10GiB", value_parser = config::parse_size)]
    tier_queue_max_size: u64,
    // --- end of tiers ---
}

fn main() -> anyhow::Result<()> {
    // --- config file ---
    let cli: Cli = cairn::config_file::parse("serve");
    // --- end of config file ---
    let default_level =
        if matches!(cli.command, Command::GoCacheProg(_) | Command::Bench(_)) { "warn" } else { "info" };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    let filter =
        EnvFilter::try_new(level).with_context(|| format!("--log-level {level:?} is not a level or tracing filter"))?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // --- observability ---
    if cli.log_json {
        logs.json().init();
    } else {
        // Colour codes only for a person at a terminal, not in log files.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    // --- end of observability ---
    if matches!(cli.command, Command::Serve(_)) {
        limit_malloc_arenas();
        raise_fd_limit();
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => {
            let served = runtime.block_on(serve(*args));
            // Calls still running after the drain timeout may sit in blocking
            // tasks; don't wait for them (what they had not committed was
            // never acknowledged, and the data dir is crash-safe).
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
        Command::Stats(args) => stats(args),
        // --- security ---
        Command::Token(TokenCommand::New { name, mode, prefixes }) => {
            let (token, line) = cairn::auth::new_token(&name, mode == "rw", &prefixes);
            println!("{token}\n{line}");
            eprintln!("# Give the token (first line) to {name}; add the second line to the --tokens file and send cairn serve a SIGHUP.");
            Ok(())
        }
        // --- end of security ---
        Command::Bench(args) => runtime.block_on(cairn::bench::run(*args)),
        Command::GoCacheProg(args) => {
            let config = (*args).into_config()?;
            runtime.block_on(cairn::gocache::run(config))?;
            Ok(())
        }
    }
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.unwrap_or_else(config::default_data_dir);
    let s = cairn::store::read_stats(&dir).with_context(|| format!("reading stats of {}", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("data dir          {}", dir.display());
        println!("CAS               {} blobs, {}", s.cas_count, config::human_size(s.cas_bytes.max(0) as u64));
        println!("ActionCache       {} results, {}", s.ac_count, config::human_size(s.ac_bytes.max(0) as u64));
        println!("AC hits / misses  {} / {}", s.ac_hits, s.ac_misses);
        println!("evictions         {}", s.evictions);
        println!("min-age overruns  {}", s.min_age_overruns);
    }
    Ok(())
}

/// glibc gives each thread that allocates its own malloc arena and keeps freed
/// memory there; with tokio's blocking pool that grew the server's RSS to
/// 400+ MB under load (BENCHMARKS.md). Two arenas keep it near the live set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Every open blob read, upload and connection holds a file descriptor, and
/// the usual soft limit (1024) is far below what a busy cache needs; the hard
/// limit is what the administrator allows. (Running out is still safe: the
/// request fails with RESOURCE_EXHAUSTED and nothing stored is touched.)
fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = lim.rlim_cur, hard = lim.rlim_max, "could not raise the open-file limit");
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::for_data_dir(&args.data_dir);
    config.max_size = args.max_size;
    config.min_age = args.min_age;
    // --- Stream and connection limits ---
    config.streams = config::StreamLimits {
        max_concurrent_streams: args.max_concurrent_streams,
        http2_keepalive_interval: config::nonzero(args.http2_keepalive_interval),
        http2_keepalive_timeout: args.http2_keepalive_timeout,
        tcp_keepalive: config::nonzero(args.tcp_keepalive),
        stream_idle_timeout: config::nonzero(args.stream_idle_timeout),
        max_buffered_bytes: args.max_buffered_bytes,
    };
    // --- end of stream and connection limits ---
    config.max_blob_size = args.max_blob_size;
    config.max_tmp_size = args.max_tmp_size;
    config.drain_timeout = args.drain_timeout;
    // --- security ---
    config.security = config::Security {
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(cairn::tls::TlsFiles { cert, key, client_ca: args.tls_client_ca }),
            _ => None,
        },
        tokens: args.tokens,
        anonymous: args.anonymous,
    };
    // --- end of security ---
    // --- observability ---
    config.observability =
        config::Observability { admin_listen: args.admin_listen.0, log_slow: config::nonzero(args.log_slow) };
    // --- end of observability ---
    // --- tiers ---
    config.tiers = config::TierSettings {
        upstream: args.upstream,
        upstream_instance: args.upstream_instance,
        upstream_tls_ca: args.upstream_tls_ca,
        upstream_token_file: args.upstream_token_file,
        timeout: args.tier_timeout,
        concurrency: args.tier_concurrency,
        queue_max_entries: args.tier_queue_max_entries,
        queue_max_size: args.tier_queue_max_size,
        // --- bucket ---
        object_store: args.object_store.map(|url| config::ObjectStore {
            url,
            max_size: args.object_store_max_size,
            min_age: args.object_store_min_age,
            timeout: args.object_store_timeout,
            evict_interval: config::nonzero(args.object_store_evict_interval),
        }),
        // --- end of bucket ---
    };
    // --- end of tiers ---
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // --- http cache ---
    let http = match args.http_listen.0 {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--http-listen)"))?,
        ),
        None => None,
    };
    let listeners = cairn::server::Listeners { grpc: listener, http, admin: None };
    // --- end of http cache ---
    cairn::server::serve(listeners, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM, starting a graceful
/// shutdown; a second one exits at once, for an operator who won't wait.
async fn shutdown_signal() {
    next_signal().await;
    tracing::info!("shutting down: no new calls; a second signal exits at once");
    tokio::spawn(async {
        next_signal().await;
        tracing::warn!("second signal: exiting without waiting for in-flight calls");
        // Everything acknowledged is already durable; the rest was never promised.
        std::process::exit(130);
    });
}

/// Resolves on the next SIGINT or SIGTERM.
async fn next_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
