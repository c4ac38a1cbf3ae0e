//! Combining runs: `--merge` takes the median of repeated runs against one
//! server (numbers on a shared 2-core machine are noisy), and `--compare`
//! puts merged reports of several servers side by side.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::report::{self, Report, Row};

/// Median of the values (0 when there are none).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn load(path: &PathBuf) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a bench report: {e}", path.display()))
}

/// One report from several runs of one server: each row (workload +
/// setting) and each limit becomes the median over the runs that measured
/// it; errors add up; goals are judged again on the medians.
pub fn merge(paths: &[PathBuf]) -> anyhow::Result<Report> {
    let reports = paths.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
    let mut merged =
        Report { target: reports.first().map(|r| r.target.clone()).unwrap_or_default(), ..Report::default() };
    let mut groups: Vec<((String, String), Vec<Row>)> = Vec::new();
    let mut limits: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &reports {
        for row in &r.rows {
            let key = (row.workload.clone(), row.setting.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, rows)) => rows.push(row.clone()),
                None => groups.push((key, vec![row.clone()])),
            }
        }
        for (k, v) in &r.limits {
            limits.entry(k.clone()).or_default().push(*v);
        }
    }
    for (_, rows) in groups {
        let pick = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
        // Single-value rows keep the note of the median run by their p50.
        let mid = {
            let mut by: Vec<&Row> = rows.iter().collect();
            by.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec).then(a.p50_ms.total_cmp(&b.p50_ms)));
            by[by.len() / 2].clone()
        };
        let mut row = Row {
            ops: pick(|r| r.ops as f64) as u64,
            ops_per_sec: pick(|r| r.ops_per_sec),
            mb_per_sec: mid.mb_per_sec.map(|_| pick(|r| r.mb_per_sec.unwrap_or(0.0))),
            p50_ms: pick(|r| r.p50_ms),
            p99_ms: pick(|r| r.p99_ms),
            max_ms: pick(|r| r.max_ms),
            errors: rows.iter().map(|r| r.errors).sum(),
            first_error: rows.iter().find_map(|r| r.first_error.clone()),
            ..mid
        };
        if let Some((_, name)) = &row.limit {
            let fractions = rows.iter().filter_map(|r| r.limit.as_ref().map(|l| l.0)).collect();
            row.limit = Some((median(fractions), name.clone()));
        }
        if rows.len() > 1 && row.ops > 0 {
            let note = row.note.take().unwrap_or_default();
            row.note = Some(format!("median of {} runs {note}", rows.len()).trim().to_string());
        }
        merged.rows.push(row);
    }
    merged.limits = limits.into_iter().map(|(k, v)| (k, median(v))).collect();
    super::goals(&mut merged);
    Ok(merged)
}

/// The headline figure of a row: MB/s when it moves bytes, else ops/s.
fn figure(r: &Row) -> (f64, &'static str) {
    match r.mb_per_sec {
        Some(mb) => (mb, "MB/s"),
        None => (r.ops_per_sec, "ops/s"),
    }
}

/// Merged reports of several servers side by side, one row per workload
/// that the first (cairn) measured with operations.
pub fn compare(paths: &[PathBuf]) -> anyhow::Result<String> {
    let reports = paths.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
    let Some(first) = reports.first() else {
        return Ok(String::new());
    };
    let names: Vec<String> = reports.iter().map(|r| r.target.split(" at ").next().unwrap_or("?").to_string()).collect();
    let mut s = String::from("| workload | setting |");
    for n in &names {
        s.push_str(&format!(" {n} | {n} p99 ms |"));
    }
    for n in names.iter().skip(1) {
        s.push_str(&format!(" {} / {n} |", names[0]));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"--:|--:|".repeat(names.len()));
    s.push_str(&"--:|".repeat(names.len().saturating_sub(1)));
    s.push('\n');
    for row in first.rows.iter().filter(|r| r.ops > 0 && !r.workload.starts_with("limit")) {
        let (value, unit) = figure(row);
        s.push_str(&format!("| {} | {} |", row.workload, row.setting));
        let mut others = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let found = r.rows.iter().find(|o| o.workload == row.workload && o.setting == row.setting && o.ops > 0);
            match found {
                Some(o) if o.errors == 0 => {
                    let (v, _) = figure(o);
                    s.push_str(&format!(" {} {unit} | {} |", report::num(v), report::ms(o.p99_ms)));
                    if i > 0 {
                        others.push(format!("{:.1}×", value / v.max(1e-9)));
                    }
                }
                Some(o) => {
                    s.push_str(&format!(" {} errors | |", o.errors));
                    if i > 0 {
                        others.push("–".into());
                    }
                }
                None => {
                    s.push_str(" not run | |");
                    if i > 0 {
                        others.push("–".into());
                    }
                }
            }
        }
        for o in others {
            s.push_str(&format!(" {o} |"));
        }
        s.push('\n');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
