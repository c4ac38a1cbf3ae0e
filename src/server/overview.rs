//! The figures of `/status` (JSON) and the status page, gathered in one
//! struct so the two always agree: size against the limit, hit rates by
//! client over the last hour and day, the charts' series, evictions, the
//! busiest instance names, version and uptime.

use std::collections::BTreeMap;

use serde::Serialize;

use super::metrics::{Metrics, VERSION};
use super::window::{self, Counts, ToolClass, MINUTES};

/// Instance names listed as the busiest.
const BUSIEST: usize = 5;

/// Everything `/status` answers.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// cairn's version.
    pub version: &'static str,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// When it started, in Unix seconds.
    pub started_at_unix: u64,
    pub store: StoreFigures,
    pub requests: RequestFigures,
    /// Lookups by client (`bazel`, `go`, `other`, and `all`) over the last hour and day.
    pub clients: BTreeMap<&'static str, ClientFigures>,
    pub chart: Chart,
    /// Instance names with the most calls since start, busiest first.
    pub busiest_instances: Vec<InstanceFigure>,
    // --- tiers ---
    /// The tier behind the store (`--upstream`...), absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<crate::store::tiered::TierStats>,
    // --- end of tiers ---
}

/// The store against its limit.
#[derive(Debug, Serialize)]
pub struct StoreFigures {
    /// AC + CAS bytes: what `--max-size` bounds.
    pub stored_bytes: u64,
    /// `--max-size`.
    pub max_size_bytes: u64,
    /// stored / max, in percent.
    pub used_percent: f64,
    pub ac_entries: u64,
    pub ac_bytes: u64,
    pub cas_entries: u64,
    pub cas_bytes: u64,
    /// Entries evicted (kept across restarts).
    pub evictions: u64,
    /// Times eviction was held back by `--min-age` while over the limit.
    pub min_age_overruns: u64,
    /// Declared bytes of uploads in progress or parked.
    pub upload_reserved_bytes: u64,
}

/// Calls since start.
#[derive(Debug, Serialize)]
pub struct RequestFigures {
    pub finished: u64,
    /// Finished with a status other than OK (misses included).
    pub not_ok: u64,
    pub uploads_in_flight: i64,
}

/// One client's lookups over two windows.
#[derive(Debug, Serialize)]
pub struct ClientFigures {
    pub last_hour: Rates,
    pub last_day: Rates,
}

/// Lookup counts and the rates made of them (null when there were none).
#[derive(Debug, Serialize)]
pub struct Rates {
    #[serde(flatten)]
    pub counts: Counts,
    /// ActionCache hits over GetActionResult calls, 0..1.
    pub ac_hit_rate: Option<f64>,
    /// CAS blobs found over blobs looked up, 0..1.
    pub cas_hit_rate: Option<f64>,
}

impl From<Counts> for Rates {
    fn from(counts: Counts) -> Rates {
        Rates { ac_hit_rate: counts.ac_hit_rate(), cas_hit_rate: counts.cas_hit_rate(), counts }
    }
}

/// The charts' series, every client together, oldest first.
#[derive(Debug, Serialize)]
pub struct Chart {
    /// 60 one-minute bins.
    pub last_hour: Vec<Counts>,
    /// 24 one-hour bins.
    pub last_day: Vec<Counts>,
}

/// An instance name and its calls.
#[derive(Debug, Serialize)]
pub struct InstanceFigure {
    pub name: String,
    pub requests: u64,
}

impl Overview {
    /// Gathers the figures now.
    pub fn gather(m: &Metrics) -> Overview {
        let s = m.store.stats();
        let (uptime_seconds, started_at_unix) = m.uptime();
        let (finished, not_ok, uploads_in_flight) = m.call_totals();
        let stored = s.total_bytes().max(0) as u64;
        let now = m.minute();
        let (clients, chart) = m.with_window(|w| {
            let mut clients = BTreeMap::new();
            let classes = ToolClass::ALL.iter().map(|c| (c.key(), Some(*c))).chain([("all", None)]);
            for (key, class) in classes {
                clients.insert(
                    key,
                    ClientFigures {
                        last_hour: w.total(now, 60, class).into(),
                        last_day: w.total(now, MINUTES, class).into(),
                    },
                );
            }
            let chart =
                Chart { last_hour: w.series(now, 60, None), last_day: window::bin(&w.series(now, MINUTES, None), 60) };
            (clients, chart)
        });
        Overview {
            version: VERSION,
            uptime_seconds,
            started_at_unix,
            store: StoreFigures {
                stored_bytes: stored,
                max_size_bytes: m.max_size,
                used_percent: if m.max_size > 0 { stored as f64 * 100.0 / m.max_size as f64 } else { 0.0 },
                ac_entries: s.ac_count.max(0) as u64,
                ac_bytes: s.ac_bytes.max(0) as u64,
                cas_entries: s.cas_count.max(0) as u64,
                cas_bytes: s.cas_bytes.max(0) as u64,
                evictions: s.evictions.max(0) as u64,
                min_age_overruns: s.min_age_overruns.max(0) as u64,
                upload_reserved_bytes: m.store.uploads().reserved(),
            },
            requests: RequestFigures { finished, not_ok, uploads_in_flight },
            clients,
            chart,
            busiest_instances: m
                .busiest_instances(BUSIEST)
                .into_iter()
                .map(|(name, requests)| InstanceFigure { name, requests })
                .collect(),
            tier: m.tiers.as_ref().and_then(|t| t.stats()),
        }
    }
}
