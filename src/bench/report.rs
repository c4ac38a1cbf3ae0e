//! What a workload measured, and how results are printed: one [`Row`] per
//! workload and setting (ops/s or MB/s, p50/p99/max latency, errors, and the
//! ratio to its physical limit), rendered as Markdown tables and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latencies and outcomes gathered by the tasks of one measurement.
#[derive(Default)]
pub struct Samples {
    /// Latency of every successful or failed operation, in nanoseconds.
    pub nanos: Vec<u64>,
    /// Payload bytes moved by successful operations.
    pub bytes: u64,
    /// Operations that failed or answered wrongly (must stay 0).
    pub errors: u64,
    /// The first error, to say what went wrong.
    pub first_error: Option<String>,
}

impl Samples {
    /// Records one operation.
    pub fn record(&mut self, took: Duration, outcome: Result<u64, String>) {
        self.nanos.push(took.as_nanos() as u64);
        match outcome {
            Ok(bytes) => self.bytes += bytes,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Folds another task's samples into these.
    pub fn merge(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Summarises the samples of a run that took `wall`.
    pub fn into_row(mut self, workload: &str, setting: &str, wall: Duration) -> Row {
        self.nanos.sort_unstable();
        let pick = |q: f64| -> f64 {
            if self.nanos.is_empty() {
                return 0.0;
            }
            let i = ((self.nanos.len() as f64 - 1.0) * q).round() as usize;
            self.nanos[i] as f64 / 1e6
        };
        let secs = wall.as_secs_f64().max(1e-9);
        Row {
            workload: workload.to_string(),
            setting: setting.to_string(),
            ops: self.nanos.len() as u64,
            ops_per_sec: self.nanos.len() as f64 / secs,
            mb_per_sec: (self.bytes > 0).then(|| self.bytes as f64 / secs / 1e6),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
            errors: self.errors,
            first_error: self.first_error,
            limit: None,
            note: None,
        }
    }
}

/// One line of the results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub setting: String,
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Only for workloads that move payload bytes (MB = 10^6 bytes).
    pub mb_per_sec: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// This figure as a fraction of its physical limit, and which limit.
    pub limit: Option<(f64, String)>,
    /// Anything else worth a word (RSS, hit rates, ...).
    pub note: Option<String>,
}

impl Row {
    /// A row that is a single measured value rather than a stream of operations.
    pub fn value(workload: &str, setting: &str, note: String) -> Row {
        Row {
            workload: workload.to_string(),
            setting: setting.to_string(),
            ops: 0,
            ops_per_sec: 0.0,
            mb_per_sec: None,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            errors: 0,
            first_error: None,
            limit: None,
            note: Some(note),
        }
    }

    /// Attaches the ratio `value / limit` (when the limit is known).
    pub fn versus(mut self, value: f64, limit: Option<f64>, name: &str) -> Row {
        if let Some(l) = limit.filter(|l| *l > 0.0) {
            self.limit = Some((value / l, name.to_string()));
        }
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }
}

/// A goal from issue 6 and whether this run met it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// None when the run did not measure it.
    pub met: Option<bool>,
}

/// Everything one `cairn bench` run found.
#[derive(Default, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    /// Limits by name (e.g. `sha256_mb_s`), for ratios and goals.
    pub limits: BTreeMap<String, f64>,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
}

impl Report {
    /// Adds a row and prints it at once, so a long run shows progress.
    pub fn push(&mut self, row: Row) {
        eprintln!("  {}", one_line(&row));
        self.rows.push(row);
    }

    pub fn errors(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum()
    }

    /// The rows as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "| workload | setting | ops | ops/s | MB/s | p50 ms | p99 ms | max ms | errors | vs limit | note |\n",
        );
        s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|\n");
        for r in &self.rows {
            let op_cols = if r.ops == 0 {
                "| | | | | | ".to_string()
            } else {
                format!(
                    "| {} | {} | {} | {} | {} | {} ",
                    r.ops,
                    num(r.ops_per_sec),
                    r.mb_per_sec.map(num).unwrap_or_default(),
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    ms(r.max_ms),
                )
            };
            let limit = r.limit.as_ref().map(|(f, name)| format!("{:.0}% of {name}", f * 100.0)).unwrap_or_default();
            let mut note = r.note.clone().unwrap_or_default();
            if let Some(e) = &r.first_error {
                note = format!("{note} first error: {e}");
            }
            s.push_str(&format!(
                "| {} | {} {}| {} | {} | {} |\n",
                r.workload,
                r.setting,
                op_cols,
                r.errors,
                limit,
                note.replace('|', "/")
            ));
        }
        s
    }

    /// The goals as a Markdown table.
    pub fn goals_markdown(&self) -> String {
        let mut s = String::from("| goal | measured | met |\n|---|---|---|\n");
        for g in &self.goals {
            let met = match g.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            s.push_str(&format!("| {} | {} | {} |\n", g.goal, g.measured, met));
        }
        s
    }
}

/// A row as one progress line on stderr.
fn one_line(r: &Row) -> String {
    let mut s = format!("{:<28} {:<30}", r.workload, r.setting);
    if r.ops > 0 {
        s.push_str(&format!(
            " {:>9} ops/s p50 {} p99 {} max {} ms",
            num(r.ops_per_sec),
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms)
        ));
    }
    if let Some(mb) = r.mb_per_sec {
        s.push_str(&format!(" {} MB/s", num(mb)));
    }
    if r.errors > 0 {
        s.push_str(&format!(" ERRORS {} ({})", r.errors, r.first_error.as_deref().unwrap_or("")));
    }
    if let Some((f, name)) = &r.limit {
        s.push_str(&format!(" [{:.0}% of {name}]", f * 100.0));
    }
    if let Some(n) = &r.note {
        s.push_str(&format!(" {n}"));
    }
    s
}

/// A rate with sensible precision.
pub fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A latency in milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut s = Samples::default();
        for i in 1..=100u64 {
            s.record(Duration::from_millis(i), Ok(10));
        }
        s.record(Duration::from_millis(1), Err("boom".into()));
        let r = s.into_row("w", "x", Duration::from_secs(1));
        assert_eq!(r.ops, 101);
        assert_eq!(r.errors, 1);
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        assert_eq!(r.max_ms, 100.0);
        assert!((r.p50_ms - 50.0).abs() <= 1.0);
        assert_eq!(r.mb_per_sec, Some(1000.0 / 1e6));
    }
}
