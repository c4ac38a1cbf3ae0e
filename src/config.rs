//! Server configuration: a small flat set of knobs, validated once at start-up
//! and passed down as one struct. Every knob is a `cairn serve` flag and an
//! environment variable (see `main.rs`).

use std::path::{Path, PathBuf};

/// Default size limit for stored bytes (AC + CAS): 10 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;

/// Default minimum age before eviction: well above Bazel's 3 h
/// `--experimental_remote_cache_ttl`, so a build never loses a blob that
/// FindMissingBlobs told it was present moments ago.
pub const DEFAULT_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Largest total of blob bytes accepted or returned by one batch call. gRPC
/// clients default to a 4 MiB message limit; this leaves room for the
/// per-blob framing so a full batch still fits in one message.
pub const DEFAULT_MAX_BATCH_TOTAL_SIZE: u64 = 4 * 1024 * 1024 - 64 * 1024;

// --- Stream and connection limits ---

/// Default HTTP/2 streams (calls in flight) per connection. Bazel multiplexes
/// up to 100 calls on one connection and opens more connections beyond that,
/// so this never slows a real client, yet one connection can't pin unbounded
/// per-stream state. Calls past the limit wait in the client for a free slot.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Default interval of HTTP/2 PINGs on each connection: a peer that vanished
/// without a FIN (a crashed VM, a dropped NAT entry) is noticed within a
/// minute or two and its streams are released, instead of after hours.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Default wait for a PING's answer before the connection is closed.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Default idle time before the kernel probes a TCP connection (SO_KEEPALIVE),
/// which also keeps idle connections alive through NAT and firewalls.
pub const DEFAULT_TCP_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(60);

/// Default time a ByteStream Read or Write may go without progress (a Write
/// that sends no bytes, a Read whose client takes none) before the server
/// cancels it with DEADLINE_EXCEEDED. A live client moves a MiB in far less;
/// Bazel's own `--remote_timeout` defaults to the same 60 s.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Default budget for stream data held in memory at once across all calls
/// (upload batches on their way to disk, download chunks on their way to the
/// network, small uploads spooled in memory). 256 MiB keeps over a hundred
/// full-speed streams busy on a machine with a few cores; when it is spent,
/// new work waits (at most the idle timeout) and then gets RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 256 << 20;

/// Connection and stream limits: what one client can make the server hold.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval (None: no pings).
    pub http2_keepalive_interval: Option<std::time::Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: std::time::Duration,
    /// TCP keepalive idle time (None: off).
    pub tcp_keepalive: Option<std::time::Duration>,
    /// A ByteStream call without progress for this long is cancelled (None: never).
    pub stream_idle_timeout: Option<std::time::Duration>,
    /// Bytes of stream data held in memory at once, across all calls.
    pub max_buffered_bytes: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            http2_keepalive_interval: Some(DEFAULT_HTTP2_KEEPALIVE_INTERVAL),
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

/// A duration knob where `0` means off.
pub fn nonzero(d: std::time::Duration) -> Option<std::time::Duration> {
    (!d.is_zero()).then_some(d)
}

// --- end of stream and connection limits ---

// --- Upload limits ---

/// Default largest blob accepted: 4 GiB. Larger than the build outputs that
/// are worth caching (linked binaries with debug info and container layers
/// run to 1-3 GiB), and 40% of the default `--max-size`: one blob must not be
/// able to flush the whole cache. Raise it together with `--max-size`.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 4 << 30;

/// Default bound on the declared bytes of uploads in progress or parked for
/// resumption: 8 GiB. Two maximum-size uploads at once, or thousands of
/// ordinary ones; the data dir's disk needs this much room beyond `--max-size`.
pub const DEFAULT_MAX_TMP_SIZE: u64 = 8 << 30;

/// What an upload may claim; read by the store when an upload begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest blob an upload may declare (advertised as
    /// `max_cas_blob_size_bytes`); larger ones are INVALID_ARGUMENT.
    pub max_blob_size: u64,
    /// Bound on the declared sizes of all uploads in progress or parked,
    /// reserved up front; a full budget is RESOURCE_EXHAUSTED.
    pub max_tmp_size: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits { max_blob_size: DEFAULT_MAX_BLOB_SIZE, max_tmp_size: DEFAULT_MAX_TMP_SIZE }
    }
}

impl Config {
    /// The upload limits in force. The blob limit is never above the cache's
    /// size (such a blob could not be kept) nor the tmp budget (it could never
    /// be uploaded), so what Capabilities advertises is what is accepted.
    pub fn upload_limits(&self) -> UploadLimits {
        UploadLimits {
            max_blob_size: self.max_blob_size.min(self.max_size).min(self.max_tmp_size),
            max_tmp_size: self.max_tmp_size,
        }
    }
}

// --- end of upload limits ---

// --- lifecycle ---

/// Default time in-flight calls get to finish after SIGTERM or SIGINT before
/// the server closes anyway. Long enough for a 1 GiB upload on a slow link
/// to complete; a second signal skips the wait.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

// --- end of lifecycle ---
// --- http cache ---

/// A listen address or `off`: the value of `--http-listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<std::net::SocketAddr>);

/// Parses `off` (nothing to listen on) or a socket address such as `0.0.0.0:8080`.
pub fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    s.trim()
        .parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|_| format!("{s:?} is neither `off` nor an address such as 127.0.0.1:8080"))
}

// --- end of http cache ---
// --- security ---

/// TLS and access control. The default is what cairn always was: plain
/// gRPC, open to anyone who can reach the port.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca` (None: plain TCP).
    pub tls: Option<crate::tls::TlsFiles>,
    /// `--tokens FILE` (None: no access control).
    pub tokens: Option<PathBuf>,
    /// `--anonymous`: what callers without credentials may do.
    pub anonymous: crate::auth::Anonymous,
}

// --- end of security ---
// --- observability ---

/// The admin port `cairn serve` listens on by default (`--admin-listen`):
/// loopback only, beside the gRPC default of 9092, like Prometheus exporters.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9093";

/// Default `--log-slow`: calls that take longer get one log line. Lookups
/// take milliseconds; 10 s is a stalled disk or a multi-GiB transfer.
pub const DEFAULT_LOG_SLOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin HTTP port and request logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observability {
    /// Where `/metrics`, `/status`, `/healthz` and the status page are
    /// served (None: no admin port). The library default is None so tests
    /// and embedders never collide on a fixed port; the CLI's is
    /// [`DEFAULT_ADMIN_LISTEN`].
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Calls longer than this are logged (None: never).
    pub log_slow: Option<std::time::Duration>,
}

impl Default for Observability {
    fn default() -> Self {
        Observability { admin_listen: None, log_slow: Some(DEFAULT_LOG_SLOW) }
    }
}

// --- end of observability ---
// --- bucket ---

/// Default `--object-store-timeout`: the deadline of one object-store call.
pub const DEFAULT_OBJECT_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Default `--object-store-evict-interval`: how often a node with
/// `--object-store-max-size` runs an eviction pass over the bucket (each
/// pass lists the whole bucket: one LIST call per 1000 objects).
pub const DEFAULT_OBJECT_STORE_EVICT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// `--object-store URL` and its knobs: a bucket shared by several nodes,
/// behind each node's local store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStore {
    /// `s3://bucket[/prefix]`, `gs://...` or `az://...`; credentials and
    /// endpoint come from the usual environment variables (`AWS_*`, ...).
    pub url: String,
    /// Bound on the bucket's CAS and AC bytes, kept by LRU eviction across
    /// every node (None: unbounded, no use logs).
    pub max_size: Option<u64>,
    /// Objects used within this time are never evicted from the bucket.
    pub min_age: std::time::Duration,
    /// Deadline of one object-store call.
    pub timeout: std::time::Duration,
    /// Time between two eviction passes of this node (None: this node runs
    /// none, it only logs its uses for the nodes that do).
    pub evict_interval: Option<std::time::Duration>,
}

impl ObjectStore {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> ObjectStore {
        ObjectStore {
            url: url.into(),
            max_size: None,
            min_age: DEFAULT_MIN_AGE,
            timeout: DEFAULT_OBJECT_STORE_TIMEOUT,
            evict_interval: Some(DEFAULT_OBJECT_STORE_EVICT_INTERVAL),
        }
    }
}

// --- end of bucket ---

// --- tiers ---

/// Default `--tier-timeout`: how long a lookup waits on the tier (and the
/// FindMissingBlobs deadline), and how long a tier read may stall mid-blob.
/// A tier slower than this is treated as down for that call: the client gets
/// the local answer.
pub const DEFAULT_TIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Default `--tier-concurrency`: tier calls one request (or the
/// write-behind drain) has in flight at once.
pub const DEFAULT_TIER_CONCURRENCY: usize = 16;

/// Default `--tier-queue-max-entries`: entries the write-behind queue holds
/// before dropping its oldest blob entries.
pub const DEFAULT_TIER_QUEUE_MAX_ENTRIES: u64 = 1_000_000;

/// Default `--tier-queue-max-size`: bytes the queued entries may stand for
/// (the default `--max-size`: more could not still be in the local store).
pub const DEFAULT_TIER_QUEUE_MAX_SIZE: u64 = DEFAULT_MAX_SIZE;

/// The tier behind the local store (README, "Several nodes").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSettings {
    /// `--upstream grpc(s)://host:port`: another REAPI server this node is a proxy of.
    pub upstream: Option<String>,
    /// `--upstream-instance`: the instance name used upstream (a prefix for ActionCache names).
    pub upstream_instance: String,
    /// `--upstream-tls-ca`: PEM CA certificates for a `grpcs://` upstream (default: system roots).
    pub upstream_tls_ca: Option<PathBuf>,
    /// `--upstream-token-file`: first line is the token sent upstream.
    pub upstream_token_file: Option<PathBuf>,
    /// `--tier-timeout`.
    pub timeout: std::time::Duration,
    /// `--tier-concurrency`.
    pub concurrency: usize,
    /// `--tier-queue-max-entries`.
    pub queue_max_entries: u64,
    /// `--tier-queue-max-size`.
    pub queue_max_size: u64,
    // --- bucket ---
    /// `--object-store`: a bucket shared by several nodes (None: none).
    pub object_store: Option<ObjectStore>,
    // --- end of bucket ---
}

impl Default for TierSettings {
    fn default() -> Self {
        TierSettings {
            upstream: None,
            upstream_instance: String::new(),
            upstream_tls_ca: None,
            upstream_token_file: None,
            timeout: DEFAULT_TIER_TIMEOUT,
            concurrency: DEFAULT_TIER_CONCURRENCY,
            queue_max_entries: DEFAULT_TIER_QUEUE_MAX_ENTRIES,
            queue_max_size: DEFAULT_TIER_QUEUE_MAX_SIZE,
            // --- bucket ---
            object_store: None,
            // --- end of bucket ---
        }
    }
}

// --- end of tiers ---

/// Everything `server::serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Root of the data directory (RocksDB under `db/`, large blobs under `blobs/`).
    pub data_dir: PathBuf,
    /// Bound on stored bytes; enforcing it is the eviction's job.
    pub max_size: u64,
    /// Entries used within this time are never evicted.
    pub min_age: std::time::Duration,
    /// Advertised `max_batch_total_size_bytes`, enforced on batch calls.
    pub max_batch_total_size: u64,
    /// Connection and stream limits (see [`StreamLimits`]).
    pub streams: StreamLimits,
    /// Largest blob accepted (`--max-blob-size`); see [`Config::upload_limits`].
    pub max_blob_size: u64,
    /// Budget for uploads in progress (`--max-tmp-size`).
    pub max_tmp_size: u64,
    /// After the shutdown signal, how long in-flight calls may run on (`--drain-timeout`).
    pub drain_timeout: std::time::Duration,
    /// TLS and access control (`--tls-*`, `--tokens`, `--anonymous`).
    pub security: Security,
    // --- observability ---
    /// Admin port and request logging.
    pub observability: Observability,
    // --- end of observability ---
    // --- tiers ---
    /// The tier behind the local store, if any (`--upstream`, `--tier-*`).
    pub tiers: TierSettings,
    // --- end of tiers ---
}

impl Config {
    /// Defaults for everything but where the data lives.
    pub fn for_data_dir(data_dir: impl AsRef<Path>) -> Config {
        Config {
            data_dir: data_dir.as_ref().to_path_buf(),
            max_size: DEFAULT_MAX_SIZE,
            min_age: DEFAULT_MIN_AGE,
            max_batch_total_size: DEFAULT_MAX_BATCH_TOTAL_SIZE,
            streams: StreamLimits::default(),
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            max_tmp_size: DEFAULT_MAX_TMP_SIZE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            security: Security::default(),
            // --- observability ---
            observability: Observability::default(),
            // --- end of observability ---
            // --- tiers ---
            tiers: TierSettings::default(),
            // --- end of tiers ---
        }
    }
}

/// The default data dir: `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`, else `./cairn-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("cairn");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("cairn");
    }
    PathBuf::from("cairn-data")
}

/// Parses a byte size: plain bytes (`1048576`) or a number with a unit
/// (`512MiB`, `10GiB`, `1.5TB`, `100k`). Binary units (KiB, MiB, GiB, TiB) are
/// powers of 1024, decimal ones (KB, MB, GB, TB) of 1000; single letters
/// (k, m, g, t) are binary, as in most tools' flags.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("size {s:?} has no number; use e.g. 10GiB or 1073741824"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!("size {s:?} has unknown unit {other:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"))
        }
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| format!("size {s:?} is not a number"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v as u64)
}

/// Parses a duration: a number with a unit `s`, `m`, `h` or `d` (`90m`,
/// `12h`, `7d`), or `0`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("duration {s:?} has no number; use e.g. 12h, 90m or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("duration {s:?} needs a unit: s, m, h or d")),
    };
    n.checked_mul(secs).map(std::time::Duration::from_secs).ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Formats bytes for humans (log lines, stats): `10.0 GiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("10 GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512mib").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("3GB").unwrap(), 3_000_000_000);
        assert_eq!(parse_size("100k").unwrap(), 102_400);
    }

    #[test]
    fn rejects_bad_sizes() {
        for bad in ["", "GiB", "10XB", "-5", "1e999GiB", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 43200);
        assert_eq!(parse_duration("90m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("0").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        for bad in ["", "h", "12", "12x", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blob_limit_never_exceeds_what_fits() {
        let mut c = Config::for_data_dir("/nonexistent");
        assert_eq!(c.upload_limits(), UploadLimits::default());
        c.max_size = 1 << 30;
        assert_eq!(c.upload_limits().max_blob_size, 1 << 30);
        c.max_tmp_size = 100 << 20;
        assert_eq!(c.upload_limits(), UploadLimits { max_blob_size: 100 << 20, max_tmp_size: 100 << 20 });
    }

    #[test]
    fn parses_optional_addrs() {
        assert_eq!(parse_optional_addr("off").unwrap(), OptionalAddr(None));
        assert_eq!(
            parse_optional_addr("127.0.0.1:8080").unwrap(),
            OptionalAddr(Some("127.0.0.1:8080".parse().unwrap()))
        );
        assert!(parse_optional_addr("8080").unwrap_err().contains("off"));
        assert_eq!(parse_optional_addr(DEFAULT_ADMIN_LISTEN).unwrap().0, Some("127.0.0.1:9093".parse().unwrap()));
        assert_eq!(parse_optional_addr("[::1]:0").unwrap().0, Some("[::1]:0".parse().unwrap()));
        assert!(parse_optional_addr("localhost").unwrap_err().contains("off"));
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(human_size(10 << 30), "10.0 GiB");
        assert_eq!(human_size(12), "12 B");
    }
}
