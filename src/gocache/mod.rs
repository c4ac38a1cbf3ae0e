//! `cairn gocacheprog`: the program go (1.24+) runs as `GOCACHEPROG`, serving
//! go's build and test cache from a local disk tier and from the same REAPI
//! server Bazel uses.
//!
//! # Layout
//! - [`protocol`]: request/response types; its `codec` child reads the
//!   framing (put bodies are streamed: decoded, hashed and written to disk
//!   as they arrive).
//! - [`local`]: the local disk tier under `$GOCACHE/cairn`; every hit and put
//!   is answered with a path in it (its `clean` child: `go clean -cache`).
//! - [`remote`]: the remote tier's boundary (connect, get, upload, finish);
//!   `shared`: what the remote tasks share (connections, read and write
//!   health, downloads), the module `prefetch` and `upload` sit on;
//!   [`health`]: one warning, then back-off, when the server fails;
//!   `upload`: the background uploader.
//! - [`mapping`]: how entries are keyed and stored on a REAPI server (pure).
//! - `prefetch`, `manifest` and [`context`]: remembering which entries a
//!   build used, and fetching them in bulk before go asks the next time.
//! - `requests`: one get or put against the tiers, and the work that may
//!   outlive go; this file: flags and config, and the run loop, [`serve`].
//!
//! # The run loop
//! go pipelines requests (up to `-p`+1 in flight) and does not wait for one
//! reply before sending the next request, so:
//! - one task (the caller of [`serve`]) reads stdin and never waits on a
//!   request's work. It must read put bodies itself, since they are part of
//!   the stream; it writes them straight into a temp file in the store;
//! - each request's work is a task of its own (bounded by [`MAX_IN_FLIGHT`]);
//! - one writer task owns stdout; replies go out in completion order, which
//!   go allows (it matches them by ID).
//!
//! A get is: local → remote → miss. A put is stored locally and
//! answered before any upload. Input that breaks the framing is fatal (an
//! error on stderr and a non-zero exit; go reports the helper died), since
//! there is no way to find the next request; anything else fails only its
//! own request.
//!
//! # Latency
//! go keeps only `-p`+1 requests in flight, so each request's latency is
//! paid almost serially (see the shared GOCACHEPROG.md notes). Hence
//! stdin/stdout are driven by epoll when they are pipes (module `stdio`),
//! and the local tier's work (a handful of page-cache syscalls, ~10 µs) runs
//! inline in the request's task rather than through `spawn_blocking`, whose
//! thread hop costs more than the work itself. Measured with a serial get
//! driver on 2 cores: ~110 µs per get with tokio's stdio and
//! `spawn_blocking`, ~75 µs with pipes, ~25 µs with pipes and inline I/O.
//! Only the trim, which scans the whole store, goes to a blocking thread.

pub mod context;
pub mod health;
pub mod local;
mod manifest;
pub mod mapping;
mod prefetch;
pub mod protocol;
pub mod remote;
mod requests;
mod shared;
mod stdio;
mod upload;

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use self::local::LocalStore;
use self::protocol::{Command, ProtocolError, RequestReader, Response};
use self::remote::{Remote, RemoteConfig};
pub use self::requests::Background;
use self::requests::{get, put, read_put_body};

/// Default `--finish-timeout`: how long uploads may go on in the background
/// after go has been let go.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--finish-timeout` with `--wait-for-uploads`: longer, since the
/// point of waiting is that the results reach the server (a CI machine is
/// torn down right after), and go's exit is what shows the wait.
pub const WAIT_FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// Requests being worked on at once. go keeps at most `-p`+1 in flight, so
/// this is only a backstop; when reached, the reader waits for a slot.
pub const MAX_IN_FLIGHT: usize = 256;

/// Stdin buffer. Put bodies are decoded one buffer-full at a time, so this
/// also sets the size of the decode and disk-write steps.
const READ_BUFFER: usize = 1 << 20;

/// Replies waiting for the writer. Tiny messages; the bound only applies
/// back-pressure if go stops reading.
const RESPONSE_QUEUE: usize = 1024;

/// `cairn gocacheprog` flags. Every flag has an environment variable, since
/// go users configure through the environment (`GOCACHEPROG` is a command
/// line, but CI sets variables).
#[derive(Clone, Debug, clap::Args)]
pub struct GoCacheArgs {
    /// Local cache directory [default: $GOCACHE/cairn]. Keep it under
    /// $GOCACHE: go moves (rather than copies) cached archives out of a cache
    /// that is not, which costs later hits.
    #[arg(long, env = "CAIRN_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Remote cache to share results through, e.g. grpc://cache:9092 (any
    /// REAPI v2 server). Unset: local-only.
    #[arg(long, env = "CAIRN_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// REAPI instance name on the remote.
    #[arg(long, env = "CAIRN_INSTANCE", value_name = "NAME", default_value = "")]
    pub instance: String,
    /// Size bound of the local cache, e.g. 10GiB; trimmed least-recently-used
    /// first, at most hourly.
    #[arg(long, env = "CAIRN_LOCAL_MAX_SIZE", value_name = "SIZE", default_value = "10GiB",
          value_parser = crate::config::parse_size)]
    pub max_local_size: u64,
    /// Bound on each remote lookup, e.g. 500ms or 2s; past it, a get is a
    /// miss (downloads get 1 s per 10 MiB on top).
    #[arg(long, env = "CAIRN_REMOTE_TIMEOUT", value_name = "DURATION", default_value = "1s",
          value_parser = parse_timeout)]
    pub remote_timeout: Duration,
    /// Fetch the entries the last run of the same go command used, in bulk,
    /// before go asks for them (and record this run's for the next one).
    #[arg(long, env = "CAIRN_PREFETCH", value_name = "BOOL", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub prefetch: bool,
    /// Names the project in the prefetch key instead of the go module and
    /// directory (the go command, version, GOOS/GOARCH, ... still apply).
    #[arg(long, env = "CAIRN_PREFETCH_KEY", value_name = "TEXT")]
    pub prefetch_key: Option<String>,
    /// How long uploads may go on after go is released (or, with
    /// --wait-for-uploads, delay go's exit); the rest are dropped
    /// [default: 10s, or 2m with --wait-for-uploads].
    #[arg(long, env = "CAIRN_FINISH_TIMEOUT", value_name = "DURATION", value_parser = parse_timeout)]
    pub finish_timeout: Option<Duration>,
    /// Finish uploads before answering go's close, so go exits only once its
    /// results are on the server (for CI machines torn down right after the
    /// build). Default: go exits at once and uploads finish in the background.
    #[arg(long, env = "CAIRN_WAIT_FOR_UPLOADS", value_name = "BOOL", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub wait_for_uploads: bool,
    // --- security ---
    /// File whose first line is the token sent to the remote on every call
    /// (`authorization: Bearer`).
    #[arg(long, env = "CAIRN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The token itself, when there is no --token-file (an environment
    /// variable is safer than the command line, which other users can see).
    #[arg(long, env = "CAIRN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificates a grpcs:// remote's certificate must chain to
    /// [default: the system's roots].
    #[arg(long, env = "CAIRN_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for a remote that requires one (mTLS).
    #[arg(long, env = "CAIRN_TLS_CLIENT_CERT", value_name = "FILE", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "CAIRN_TLS_CLIENT_KEY", value_name = "FILE", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    // --- end of security ---
    // --- goshim ---
    /// Fetch outputs of 64 KiB and more zstd-compressed when the remote's
    /// capabilities offer it (`compressed-blobs/zstd`): fewer bytes on a slow
    /// link, some CPU on both ends.
    #[arg(long, env = "CAIRN_ZSTD", value_name = "BOOL", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub zstd: bool,
    /// Test hook (hidden): a due trim of the local cache pauses between its
    /// scan and its deletions until this process has served this many local
    /// hits, so that a test can put a real build in the middle of a trim.
    #[arg(long, env = "CAIRN_TEST_TRIM_AFTER_HITS", value_name = "N", hide = true)]
    pub test_trim_after_hits: Option<u64>,
    // --- end of goshim ---
}

/// Validated settings for [`run`] / [`serve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoCacheConfig {
    /// Root of the local tier. Absolute and UTF-8: entry paths under it are
    /// sent to go as JSON strings.
    pub dir: PathBuf,
    /// Trim target of the local tier, in bytes.
    pub max_local_size: u64,
    /// None: local-only.
    pub remote: Option<RemoteConfig>,
    /// Bound on work after go is released (uploads, a trim).
    pub finish_timeout: Duration,
    /// go's own cache directory (`$GOCACHE`) when the local tier is inside
    /// it: then `go clean -cache` clears the tier too. None otherwise (a
    /// tier elsewhere may be shared by several GOCACHEs).
    pub go_cache: Option<PathBuf>,
    /// `--test-trim-after-hits` (a test hook; None in real use).
    pub trim_after_hits: Option<u64>,
}

impl GoCacheArgs {
    /// Resolves defaults (`$GOCACHE/cairn`) and validates.
    pub fn into_config(self) -> Result<GoCacheConfig, Error> {
        self.resolve(std::env::var_os("GOCACHE"), std::env::current_dir())
    }

    fn resolve(self, gocache: Option<OsString>, cwd: io::Result<PathBuf>) -> Result<GoCacheConfig, Error> {
        let dir = match self.dir.filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d,
            None => match gocache.as_ref().filter(|g| !g.is_empty() && *g != "off") {
                Some(g) => PathBuf::from(g).join("cairn"),
                None => {
                    return Err(Error::Config(
                        "no --dir (CAIRN_DIR) given and GOCACHE is not set; go sets GOCACHE for the \
                         GOCACHEPROG it runs"
                            .into(),
                    ))
                }
            },
        };
        let dir = if dir.is_absolute() {
            dir
        } else {
            cwd.map_err(|source| Error::Io { context: "finding the current directory".into(), source })?.join(dir)
        };
        if dir.to_str().is_none() {
            return Err(Error::Config(format!(
                "cache dir {} is not valid UTF-8 (paths are sent to go as JSON strings)",
                dir.display()
            )));
        }
        if self.max_local_size == 0 {
            return Err(Error::Config("--max-local-size must be more than 0".into()));
        }
        let security = crate::client::Security {
            token: read_token(self.token_file.as_deref(), self.token)?,
            tls_ca: self.tls_ca,
            tls_cert: self.tls_client_cert,
            tls_key: self.tls_client_key,
        };
        let remote = self.remote.filter(|r| !r.is_empty()).map(|url| RemoteConfig {
            url,
            instance: self.instance,
            timeout: self.remote_timeout,
            prefetch: self.prefetch,
            prefetch_key: self.prefetch_key.filter(|k| !k.is_empty()),
            wait_for_uploads: self.wait_for_uploads,
            security,
            zstd: self.zstd,
        });
        let go_cache = gocache.filter(|g| !g.is_empty() && g != "off").map(PathBuf::from);
        let go_cache = go_cache.filter(|g| g.is_absolute() && dir.starts_with(g) && dir != *g);
        Ok(GoCacheConfig {
            dir,
            max_local_size: self.max_local_size,
            remote,
            finish_timeout: self.finish_timeout.unwrap_or(if self.wait_for_uploads {
                WAIT_FINISH_TIMEOUT
            } else {
                FINISH_TIMEOUT
            }),
            go_cache,
            trim_after_hits: self.test_trim_after_hits,
        })
    }
}

/// The token: the first non-empty line of `file` if given, else `token`.
fn read_token(file: Option<&Path>, token: Option<String>) -> Result<Option<String>, Error> {
    let Some(file) = file.filter(|f| !f.as_os_str().is_empty()) else {
        return Ok(token.filter(|t| !t.trim().is_empty()));
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| Error::Config(format!("--token-file {}: {e}", file.display())))?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(t) => Ok(Some(t.to_string())),
        None => Err(Error::Config(format!("--token-file {} is empty", file.display()))),
    }
}

/// Parses a timeout: a number with a unit (`250ms`, `2s`, `1.5s`, `1m`), or
/// plain seconds. (`config::parse_duration` is for ages and has no sub-second
/// units; remote timeouts need them.)
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("duration {s:?} is not a number with a unit, e.g. 500ms or 2s"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        other => return Err(format!("duration {s:?} has unknown unit {other:?}; use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("duration {s:?}: {e}"))
}

/// Everything that stops `cairn gocacheprog`. Per-request failures are not
/// here: they are answered to go.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or environment.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// go's input could not be understood; see [`ProtocolError`].
    #[error("GOCACHEPROG protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// Filesystem trouble that stops the whole program (opening the store).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// stdout failed: go is gone or stopped reading.
    #[error("writing responses to go: {0}")]
    Output(#[source] io::Error),
}

/// `cairn gocacheprog`: serves go over stdin/stdout until `close` or EOF,
/// then releases go (which waits for our stdout to close) and lets left-over
/// work finish for a bounded time.
pub async fn run(config: GoCacheConfig) -> Result<(), Error> {
    let bound = config.finish_timeout;
    let background = serve(config, stdio::input(), stdio::output()).await?;
    stdio::release();
    background.finish(bound).await;
    Ok(())
}

/// The protocol over any pair of streams (`run` passes stdin and stdout;
/// tests pass in-memory pipes). Returns after `close` was answered or input
/// ended, with every reply written, handing back work that may continue
/// after go is released.
pub async fn serve<R, W>(config: GoCacheConfig, input: R, output: W) -> Result<Background, Error>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (responses, rx) = mpsc::channel::<Response>(RESPONSE_QUEUE);
    // One writer owns the output; a JoinSet so that it is aborted, not
    // leaked, if we return early with an error.
    let mut writer = JoinSet::new();
    writer.spawn(write_responses(rx, output));
    // go waits (forever, with no timeout) for this before sending anything.
    let _ = responses.send(Response::handshake()).await;

    let local = LocalStore::open(&config.dir, config.max_local_size)
        .map_err(|source| Error::Io { context: format!("opening local cache dir {}", config.dir.display()), source })?;
    if let Some(go_cache) = &config.go_cache {
        match local.clear_if_go_cleaned(go_cache) {
            Ok(true) => tracing::debug!(dir = %config.dir.display(), "go clean -cache ran: cleared the local cache"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cairn gocacheprog: checking whether go clean -cache ran: {e}"),
        }
    }
    let local = Arc::new(local);
    let tiers = Arc::new(Tiers { remote: config.remote.as_ref().and_then(|r| Remote::connect(r, &local)), local });
    let mut background = Background::start_trim(&tiers, config.trim_after_hits);

    let mut reader = RequestReader::new(BufReader::with_capacity(READ_BUFFER, input));
    let mut work = Dispatcher { tasks: JoinSet::new(), slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), responses };
    let close_id = loop {
        let request = tokio::select! {
            biased;
            done = writer.join_next() => return Err(writer_stopped(done)),
            request = reader.next_request() => request?,
        };
        let Some(request) = request else { break None };
        let id = request.id;
        match request.command {
            Command::Get { action } => work.spawn(id, get(tiers.clone(), id, action)).await,
            Command::Put { action, output, size } => {
                let body = if size > 0 { Some(read_put_body(&mut reader, &tiers.local).await?) } else { None };
                work.spawn(id, put(tiers.clone(), id, action, output, size, body)).await
            }
            Command::Close => break Some(id),
        }
    };

    // Every request read gets its reply before we stop (go hangs forever on
    // a request without one).
    work.drain().await;
    if let Some(id) = close_id {
        if let Some(remote) = tiers.remote.as_ref().filter(|r| r.waits_for_uploads()) {
            remote.finish(config.finish_timeout).await;
        }
        let _ = work.responses.send(Response::ok(id)).await;
    }
    drop(work);
    match writer.join_next().await {
        Some(Ok(Ok(()))) => {}
        // After EOF go may well be gone: an unread reply is not a failure.
        Some(Ok(Err(e))) if close_id.is_none() && e.kind() == io::ErrorKind::BrokenPipe => {}
        done => return Err(writer_stopped(done)),
    }
    background.tiers = Some(tiers);
    Ok(background)
}

/// The cache tiers, shared by every request's task.
struct Tiers {
    local: Arc<LocalStore>,
    /// None: local-only.
    remote: Option<Remote>,
}

/// Starts request tasks and guarantees each one a reply.
struct Dispatcher {
    tasks: JoinSet<()>,
    /// [`MAX_IN_FLIGHT`] slots.
    slots: Arc<Semaphore>,
    responses: mpsc::Sender<Response>,
}

impl Dispatcher {
    /// Runs `handler` as a task and sends its reply. A panicking handler is
    /// answered with an error, since go would wait forever for a reply.
    async fn spawn(&mut self, id: i64, handler: impl Future<Output = Response> + Send + 'static) {
        let slot = self.slots.clone().acquire_owned().await.expect("semaphore is never closed");
        let responses = self.responses.clone();
        self.tasks.spawn(async move {
            let outcome = AssertUnwindSafe(handler).catch_unwind().await;
            let panicked = outcome.is_err();
            let response = outcome.unwrap_or_else(|_| Response::error(id, "cairn: internal error (handler panicked)"));
            let _ = responses.send(response).await;
            drop(slot);
            // Only now, with the reply sent: logging can itself panic (the
            // log layer panics when stderr, which is go's, cannot be written,
            // e.g. on a full disk), and a task that dies before replying
            // hangs go forever.
            if panicked {
                tracing::error!(id, "cairn gocacheprog: request handler panicked");
            }
        });
        // Forget finished tasks, so the set doesn't grow with the build.
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits for every request task.
    async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Owns the output: writes replies as they come, flushing whenever the queue
/// runs dry (so a burst costs one write, and a lone reply is not delayed).
async fn write_responses<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Response>, output: W) -> io::Result<()> {
    let mut out = BufWriter::new(output);
    while let Some(first) = rx.recv().await {
        out.write_all(&first.to_line()).await?;
        while let Ok(more) = rx.try_recv() {
            out.write_all(&more.to_line()).await?;
        }
        out.flush().await?;
    }
    out.shutdown().await
}

fn writer_stopped(done: Option<Result<io::Result<()>, tokio::task::JoinError>>) -> Error {
    match done {
        Some(Ok(Err(e))) => Error::Output(e),
        Some(Err(e)) => Error::Output(io::Error::other(format!("writer task failed: {e}"))),
        // The writer only ends early on an error; a clean end here means our
        // own senders are gone, which is also a bug worth a loud error.
        Some(Ok(Ok(()))) | None => Error::Output(io::Error::other("response writer ended early")),
    }
}

#[cfg(test)]
mod tests;
