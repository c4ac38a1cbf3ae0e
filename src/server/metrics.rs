//! The server's metrics: Prometheus families (the `prometheus-client` crate)
//! fed by the one call observer ([`super::observe`]), the store's own
//! counters read at scrape time, and the per-minute [`Window`] behind the
//! status page. Label values are bounded (known RPC names, gRPC codes, at
//! most [`MAX_TOOLS`] tools and [`MAX_INSTANCES`] instance names) so a
//! client cannot grow the scrape without limit.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tonic::Code;

use super::window::{Outcome, ToolClass, Window};
use crate::store::Store;

/// Distinct tool names kept as label values; later ones count as `other`.
pub const MAX_TOOLS: usize = 16;
/// Distinct instance names counted; later ones count as `(other)`.
pub const MAX_INSTANCES: usize = 100;
/// Tool label of calls that sent no RequestMetadata.
pub const NO_TOOL: &str = "none";

/// Latency buckets in seconds: sub-millisecond lookups up to multi-minute uploads.
const LATENCY_BUCKETS: [f64; 17] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCodeLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    store: &'static str,
    rpc: &'static str,
    tool: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Live handles of one RPC's byte and in-flight metrics, taken once per call
/// so each frame costs an atomic add, not a label lookup.
pub struct RpcHandles {
    /// Request bytes (gRPC framing included) received.
    pub received: Counter,
    /// Response bytes sent.
    pub sent: Counter,
    in_flight: Gauge,
}

/// Everything the admin port reports; one per server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcCodeLabels, Counter>,
    latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    received: Family<RpcLabels, Counter>,
    sent: Family<RpcLabels, Counter>,
    in_flight: Family<RpcLabels, Gauge>,
    lookups: Family<LookupLabels, Counter>,
    by_instance: Family<InstanceLabels, Counter>,
    /// Tool names seen so far (bounded); read on every call, written rarely.
    tools: RwLock<Vec<Arc<str>>>,
    /// Requests per instance name since start, for the page's busiest list.
    instances: Mutex<HashMap<String, u64>>,
    /// Held only to add one count or read the page's figures: never across I/O.
    window: Mutex<Window>,
    /// Shared with the store collector, which reports it at scrape time.
    live: Arc<Live>,
    started: Instant,
    started_unix: u64,
    pub(super) store: Store,
    pub(super) max_size: u64,
    // --- tiers ---
    /// The tier behind the store, if any (its queue, errors and fills).
    pub(super) tiers: Option<crate::store::tiered::Tiered>,
    // --- end of tiers ---
}

/// Call totals the status page shows and the store collector exports.
#[derive(Debug, Default)]
struct Live {
    uploads_in_flight: AtomicI64,
    total: AtomicU64,
    failed: AtomicU64,
}

/// Reads the store's counters on each scrape (they live in the store, not here).
struct StoreCollector {
    store: Store,
    max_size: u64,
    live: Arc<Live>,
}

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCollector").field("max_size", &self.max_size).finish_non_exhaustive()
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.store.stats();
        let per_store = |enc: &mut DescriptorEncoder, name: &str, help: &str, ac: i64, cas: i64| {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
            ConstGauge::new(ac).encode(m.encode_family(&StoreLabels { store: "ac" })?)?;
            ConstGauge::new(cas).encode(m.encode_family(&StoreLabels { store: "cas" })?)
        };
        per_store(&mut enc, "cairn_stored_bytes", "Bytes stored, by keyspace.", s.ac_bytes, s.cas_bytes)?;
        per_store(&mut enc, "cairn_stored_entries", "Entries stored, by keyspace.", s.ac_count, s.cas_count)?;
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let counter = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let c = ConstCounter::new(v.max(0) as u64);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
        };
        gauge(&mut enc, "cairn_max_size_bytes", "The size limit (--max-size) on stored bytes.", self.max_size as i64)?;
        counter(
            &mut enc,
            "cairn_evictions",
            "Entries evicted to keep within --max-size (kept across restarts).",
            s.evictions,
        )?;
        counter(
            &mut enc,
            "cairn_min_age_overruns",
            "Times eviction stopped because every entry left was younger than --min-age or still queued for the tier, leaving the store over its limit.",
            s.min_age_overruns,
        )?;
        gauge(
            &mut enc,
            "cairn_uploads_in_flight",
            "ByteStream Write and BatchUpdateBlobs calls in progress.",
            self.live.uploads_in_flight.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut enc,
            "cairn_upload_reserved_bytes",
            "Declared bytes of uploads in progress or parked, against --max-tmp-size.",
            self.store.uploads().reserved() as i64,
        )
    }
}

impl Metrics {
    /// Registers every family; `store` and `max_size` are read at scrape time.
    pub fn new(store: Store, max_size: u64) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RpcCodeLabels, Counter>::default();
        let latency = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS.iter().copied())
        });
        let received = Family::<RpcLabels, Counter>::default();
        let sent = Family::<RpcLabels, Counter>::default();
        let in_flight = Family::<RpcLabels, Gauge>::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let by_instance = Family::<InstanceLabels, Counter>::default();
        registry.register("cairn_requests", "gRPC calls finished, by RPC and status code.", requests.clone());
        registry.register(
            "cairn_request_duration_seconds",
            "Time from a call's arrival to its last response byte, by RPC.",
            latency.clone(),
        );
        registry.register("cairn_received_bytes", "Request bytes received (gRPC frames), by RPC.", received.clone());
        registry.register("cairn_sent_bytes", "Response bytes sent (gRPC frames), by RPC.", sent.clone());
        registry.register("cairn_requests_in_flight", "Calls in progress, by RPC.", in_flight.clone());
        registry.register(
            "cairn_lookups",
            "Cache lookups by keyspace, RPC, client tool (RequestMetadata tool_name) and result: \
             GetActionResult results, FindMissingBlobs/BatchReadBlobs blobs, ByteStream Reads.",
            lookups.clone(),
        );
        registry.register("cairn_instance_requests", "Calls by REAPI instance name.", by_instance.clone());
        registry.register("cairn_build", "The running cairn's version.", Info::new(VersionLabels { version: VERSION }));
        let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let start_time = Gauge::<i64>::default();
        start_time.set(started_unix as i64);
        registry.register("cairn_start_time_seconds", "When this server started, in Unix seconds.", start_time);
        let live = Arc::new(Live::default());
        registry.register_collector(Box::new(StoreCollector { store: store.clone(), max_size, live: live.clone() }));
        Metrics {
            registry,
            requests,
            latency,
            received,
            sent,
            in_flight,
            lookups,
            by_instance,
            tools: RwLock::new(Vec::new()),
            instances: Mutex::new(HashMap::new()),
            window: Mutex::new(Window::default()),
            live,
            started: Instant::now(),
            started_unix,
            store,
            max_size,
            tiers: None,
        }
    }

    // --- bucket ---
    /// Reports the calls an object-store tier makes
    /// (`cairn_object_store_requests_total{op}`; nothing for other tiers).
    pub fn with_object_store(mut self, tiers: crate::store::tiered::Tiered) -> Metrics {
        if !tiers.tier_calls().is_empty() {
            self.registry.register_collector(Box::new(super::object_store_metrics::ObjectStoreCollector(tiers)));
        }
        self
    }
    // --- end of bucket ---
    // --- tiers ---
    /// Reports the tier behind the store too (nothing when it has none).
    pub fn with_tiers(mut self, tiers: crate::store::tiered::Tiered) -> Metrics {
        if tiers.stats().is_some() {
            self.registry.register_collector(Box::new(super::tier_metrics::TierCollector(tiers.clone())));
            self.tiers = Some(tiers);
        }
        self
    }
    // --- end of tiers ---

    /// The Prometheus (OpenMetrics) text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The tool label for a RequestMetadata tool name: a bounded, tidy copy.
    pub fn tool(&self, name: Option<&str>) -> Arc<str> {
        let Some(name) = name.map(tidy).filter(|n| !n.is_empty()) else {
            return Arc::from(NO_TOOL);
        };
        if let Some(t) = self.tools.read().expect("tools lock").iter().find(|t| ***t == *name) {
            return t.clone();
        }
        let mut tools = self.tools.write().expect("tools lock");
        if let Some(t) = tools.iter().find(|t| ***t == *name) {
            return t.clone();
        }
        if tools.len() >= MAX_TOOLS {
            return Arc::from("other");
        }
        let t: Arc<str> = Arc::from(name.as_str());
        tools.push(t.clone());
        t
    }

    /// A call of `rpc` starts: its byte counters, and it counts as in flight.
    pub fn start(&self, rpc: &'static str) -> RpcHandles {
        let labels = RpcLabels { rpc };
        let h = RpcHandles {
            received: self.received.get_or_create_owned(&labels),
            sent: self.sent.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
        };
        h.in_flight.inc();
        if is_upload(rpc) {
            self.live.uploads_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        h
    }

    /// A call of `rpc` ended with `code` after `elapsed`.
    pub fn finish(&self, rpc: &'static str, handles: &RpcHandles, code: Code, elapsed: Duration) {
        handles.in_flight.dec();
        if is_upload(rpc) {
            self.live.uploads_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.requests.get_or_create(&RpcCodeLabels { rpc, code: code_name(code) }).inc();
        self.latency.get_or_create(&RpcLabels { rpc }).observe(elapsed.as_secs_f64());
        self.live.total.fetch_add(1, Ordering::Relaxed);
        if code != Code::Ok {
            self.live.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one call against its REAPI instance name.
    pub fn count_instance(&self, name: &str) {
        let mut map = self.instances.lock().expect("instances lock");
        let key = if map.contains_key(name) || map.len() < MAX_INSTANCES { name } else { "(other)" };
        *map.entry(key.to_string()).or_default() += 1;
        drop(map);
        self.by_instance.get_or_create(&InstanceLabels { instance_name: escape_label(key) }).inc();
    }

    /// Counts `n` lookups of `rpc` by `tool` that found (`hit`) or missed.
    pub fn lookup(&self, rpc: &'static str, tool: &str, hit: bool, n: u64) {
        if n == 0 {
            return;
        }
        let ac = rpc == "GetActionResult";
        let labels = LookupLabels {
            store: if ac { "ac" } else { "cas" },
            rpc,
            tool: escape_label(tool),
            result: if hit { "hit" } else { "miss" },
        };
        self.lookups.get_or_create(&labels).inc_by(n);
        let outcome = match (ac, hit) {
            (true, true) => Outcome::AcHit,
            (true, false) => Outcome::AcMiss,
            (false, true) => Outcome::CasHit,
            (false, false) => Outcome::CasMiss,
        };
        let minute = self.minute();
        self.window.lock().expect("window lock").record(minute, ToolClass::of(tool), outcome, n);
    }

    /// Minutes since the server started: the window's clock.
    pub(super) fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// Runs `f` on the window (the status page's read).
    pub(super) fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        f(&mut self.window.lock().expect("window lock"))
    }

    /// The `n` instance names with the most calls, busiest first.
    pub(super) fn busiest_instances(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> =
            self.instances.lock().expect("instances lock").iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Calls finished and, of those, not OK; calls and uploads in progress.
    pub(super) fn call_totals(&self) -> (u64, u64, i64) {
        (
            self.live.total.load(Ordering::Relaxed),
            self.live.failed.load(Ordering::Relaxed),
            self.live.uploads_in_flight.load(Ordering::Relaxed),
        )
    }

    /// Seconds since start, and the start in Unix seconds.
    pub(super) fn uptime(&self) -> (u64, u64) {
        (self.started.elapsed().as_secs(), self.started_unix)
    }
}

/// The version reported on `/metrics`, `/status` and the page.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Calls that upload blobs.
fn is_upload(rpc: &str) -> bool {
    rpc == "Write" || rpc == "BatchUpdateBlobs"
}

/// A label value in the text format's escaping (`\\`, `\"`, `\n`):
/// prometheus-client writes values as given, and instance and tool names
/// come from clients.
fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A tool name as a label value: printable ASCII only, at most 64 bytes.
fn tidy(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect::<String>().trim().to_string()
}

/// The RPC a gRPC path names, from the services cairn serves; `other` else.
pub fn rpc_name(path: &str) -> &'static str {
    const KNOWN: [&str; 12] = [
        "GetActionResult",
        "UpdateActionResult",
        "FindMissingBlobs",
        "BatchUpdateBlobs",
        "BatchReadBlobs",
        "GetTree",
        "GetCapabilities",
        "Read",
        "Write",
        "QueryWriteStatus",
        "Check",
        "Watch",
    ];
    let method = path.rsplit('/').next().unwrap_or("");
    KNOWN.iter().find(|k| **k == method).copied().unwrap_or("other")
}

/// The gRPC code's name as the spec spells it (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_rpcs_from_paths() {
        assert_eq!(rpc_name("/build.bazel.remote.execution.v2.ActionCache/GetActionResult"), "GetActionResult");
        assert_eq!(rpc_name("/google.bytestream.ByteStream/Read"), "Read");
        assert_eq!(rpc_name("/x.Y/Nope"), "other");
        assert_eq!(rpc_name(""), "other");
    }

    #[test]
    fn tidies_tool_names() {
        assert_eq!(tidy(" bazel\n"), "bazel");
        assert_eq!(tidy(&"x".repeat(100)).len(), 64);
        assert_eq!(tidy("a\"b\\c"), "a\"b\\c");
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("main/linux"), "main/linux");
    }
}
