//! The status page at `/` on the admin port: one server-rendered HTML page
//! with inline CSS and inline SVG charts, no script and no external assets
//! (cache machines are often offline). Every figure comes from the same
//! [`Overview`] as `/status`, and carries an `id` (and the raw number in
//! `data-value`) so tests and scrapers can read it.

use std::fmt::Write;

use super::overview::{Overview, Rates};
use super::window::Counts;
use crate::config::human_size;

/// Renders the page.
pub fn render(o: &Overview) -> String {
    let mut h = String::with_capacity(16 << 10);
    let s = &o.store;
    let used = s.used_percent.clamp(0.0, 100.0);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cairn status</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 60em; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
.muted {{ color: #666; }} table {{ border-collapse: collapse; }} td, th {{ padding: 0.25em 0.9em 0.25em 0; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }} .bar {{ background: #e4e4e4; height: 1.1em; width: 100%; max-width: 30em; }}
.bar > div {{ background: #3b7dd8; height: 100%; }} .big {{ font-size: 1.3em; font-weight: 600; }}
.hit {{ fill: #2e9e5b; }} .miss {{ fill: #e0823d; }} .key span {{ display: inline-block; width: 0.8em; height: 0.8em; margin: 0 0.3em 0 1em; }}
</style></head><body>
<h1>cairn cache</h1>
<div class="muted">version <span id="version">{version}</span> · up <span id="uptime" data-value="{uptime}">{uptime_h}</span> · refreshes every 30 s · <a href="/metrics">/metrics</a> · <a href="/status">/status</a></div>
<h2>Storage</h2>
<div class="big"><span id="stored-bytes" data-value="{stored}">{stored_h}</span> of <span id="max-size" data-value="{max}">{max_h}</span> (<span id="used-percent" data-value="{used_raw}">{used:.1}%</span>)</div>
<div class="bar" title="{used:.1}% of --max-size"><div style="width: {used:.1}%"></div></div>
<table>
<tr><td>ActionCache</td><td id="ac-entries" data-value="{ac_n}">{ac_n} results</td><td>{ac_b}</td></tr>
<tr><td>CAS</td><td id="cas-entries" data-value="{cas_n}">{cas_n} blobs</td><td>{cas_b}</td></tr>
<tr><td>Evictions</td><td id="evictions" data-value="{ev}">{ev}</td><td></td></tr>
<tr><td>Eviction held back by --min-age</td><td id="min-age-overruns" data-value="{mao}">{mao}</td><td></td></tr>
<tr><td>Uploads in flight</td><td id="uploads-in-flight" data-value="{ufl}">{ufl}</td><td>{reserved} reserved</td></tr>
</table>
"#,
        version = esc(o.version),
        uptime = o.uptime_seconds,
        uptime_h = human_duration(o.uptime_seconds),
        stored = s.stored_bytes,
        stored_h = human_size(s.stored_bytes),
        max = s.max_size_bytes,
        max_h = human_size(s.max_size_bytes),
        used_raw = s.used_percent,
        ac_n = s.ac_entries,
        ac_b = human_size(s.ac_bytes),
        cas_n = s.cas_entries,
        cas_b = human_size(s.cas_bytes),
        ev = s.evictions,
        mao = s.min_age_overruns,
        ufl = o.requests.uploads_in_flight,
        reserved = human_size(s.upload_reserved_bytes),
    );

    // --- tiers ---
    if let Some(t) = &o.tier {
        let errors: u64 = t.errors.iter().map(|(_, n)| n).sum();
        let _ = write!(
            h,
            "<h2>Tier</h2>\n<table>\n<tr><td><code>{}</code></td><td id=\"tier-up\" data-value=\"{up}\">{}</td><td></td></tr>\n\
             <tr><td>Waiting to be written behind</td><td id=\"tier-queue-entries\" data-value=\"{qn}\">{qn} entries</td><td>{}</td></tr>\n\
             <tr><td>Dropped from a full queue</td><td id=\"tier-queue-dropped\" data-value=\"{qd}\">{qd}</td><td></td></tr>\n\
             <tr><td>Filled from the tier</td><td id=\"tier-fills\" data-value=\"{f}\">{f}</td><td></td></tr>\n\
             <tr><td>Failed tier calls</td><td id=\"tier-errors\" data-value=\"{e}\">{e}</td><td></td></tr>\n</table>\n",
            esc(&t.tier),
            if t.up { "reachable" } else { "unreachable: serving local hits and misses" },
            human_size(t.queue.bytes),
            up = u8::from(t.up),
            qn = t.queue.entries,
            qd = t.queue.dropped,
            f = t.fills,
            e = errors,
        );
    }
    // --- end of tiers ---
    h.push_str(
        "<h2>Hit rates</h2>\n<p class=\"muted\">ActionCache: results found over GetActionResult calls. \
         CAS: blobs found over blobs asked for (FindMissingBlobs, BatchReadBlobs, ByteStream Read).</p>\n\
         <table>\n<tr><th>client</th><th>AC, last hour</th><th>AC, last day</th><th>CAS, last hour</th>\
         <th>CAS, last day</th><th>AC lookups, last day</th></tr>\n",
    );
    for (key, label) in
        [("bazel", "Bazel"), ("go", "Go (cairn gocacheprog)"), ("other", "other clients"), ("all", "all")]
    {
        let Some(c) = o.clients.get(key) else { continue };
        let _ = writeln!(
            h,
            "<tr><td>{label}</td>{}{}{}{}<td id=\"lookups-{key}-day\" data-value=\"{n}\">{n}</td></tr>",
            rate_cell(&format!("rate-{key}-hour"), c.last_hour.ac_hit_rate, &c.last_hour),
            rate_cell(&format!("rate-{key}-day"), c.last_day.ac_hit_rate, &c.last_day),
            rate_cell(&format!("cas-rate-{key}-hour"), c.last_hour.cas_hit_rate, &c.last_hour),
            rate_cell(&format!("cas-rate-{key}-day"), c.last_day.cas_hit_rate, &c.last_day),
            n = c.last_day.counts.ac_hits + c.last_day.counts.ac_misses,
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h2>ActionCache hits and misses</h2>\n<div class=\"key muted\"><span class=\"hit\" style=\"background:#2e9e5b\"></span>hits<span style=\"background:#e0823d\"></span>misses</div>\n");
    h.push_str(&chart("chart-hour", &o.chart.last_hour, "last hour, per minute", "60 min ago"));
    h.push_str(&chart("chart-day", &o.chart.last_day, "last day, per hour", "24 h ago"));

    h.push_str("<h2>Busiest instance names</h2>\n");
    if o.busiest_instances.is_empty() {
        h.push_str("<p class=\"muted\" id=\"instances\">no calls yet</p>\n");
    } else {
        h.push_str("<table id=\"instances\">\n");
        for i in &o.busiest_instances {
            let shown = if i.name.is_empty() { "(default instance)".to_string() } else { esc(&i.name) };
            let _ = writeln!(
                h,
                "<tr class=\"instance\" data-name=\"{}\" data-value=\"{}\"><td><code>{shown}</code></td><td>{} calls</td></tr>",
                esc(&i.name),
                i.requests,
                i.requests
            );
        }
        h.push_str("</table>\n");
    }
    let _ = write!(
        h,
        "<p class=\"muted\">{} calls since start, <span id=\"not-ok\" data-value=\"{n}\">{n}</span> not OK (misses included).</p>\n</body></html>\n",
        o.requests.finished,
        n = o.requests.not_ok
    );
    h
}

/// A rate as a table cell: `87.5%` (or `–` with no lookups), with its counts.
fn rate_cell(id: &str, rate: Option<f64>, r: &Rates) -> String {
    let c = &r.counts;
    match rate {
        Some(v) => format!(
            "<td id=\"{id}\" data-value=\"{v}\" title=\"AC {}/{} CAS {}/{}\">{}</td>",
            c.ac_hits,
            c.ac_hits + c.ac_misses,
            c.cas_hits,
            c.cas_hits + c.cas_misses,
            percent(v)
        ),
        None => format!("<td id=\"{id}\" data-value=\"\">–</td>"),
    }
}

/// A 0..1 rate as the page shows it: one decimal, `87.5%`.
pub fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// A bar chart of ActionCache hits (bottom) and misses (stacked on top).
fn chart(id: &str, series: &[Counts], caption: &str, start: &str) -> String {
    const W: f64 = 600.0;
    const H: f64 = 110.0;
    let max = series.iter().map(|c| c.ac_hits + c.ac_misses).max().unwrap_or(0).max(1) as f64;
    let step = W / series.len().max(1) as f64;
    let mut svg = format!(
        "<figure><svg id=\"{id}\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\" role=\"img\" aria-label=\"{caption}\">\n\
         <line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#999\"/>\n",
        H + 16.0,
        H + 16.0
    );
    for (i, c) in series.iter().enumerate() {
        let x = i as f64 * step;
        let hit_h = c.ac_hits as f64 / max * H;
        let miss_h = c.ac_misses as f64 / max * H;
        let _ = writeln!(
            svg,
            "<g><title>{} hits, {} misses</title><rect class=\"hit\" data-value=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hit_h:.1}\"/>\
             <rect class=\"miss\" data-value=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{miss_h:.1}\"/></g>",
            c.ac_hits,
            c.ac_misses,
            c.ac_hits,
            H - hit_h,
            (step - 1.0).max(1.0),
            c.ac_misses,
            H - hit_h - miss_h,
            (step - 1.0).max(1.0),
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"11\" fill=\"#666\">{start}</text>\
         <text x=\"{W}\" y=\"{}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">now</text>\
         <text x=\"2\" y=\"11\" font-size=\"11\" fill=\"#666\">{}</text></svg>\
         <figcaption class=\"muted\">{caption}</figcaption></figure>",
        H + 13.0,
        H + 13.0,
        max as u64
    );
    svg
}

/// `3d 4h`, `2h 5m`, `4m 10s`.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

/// Escapes text for HTML (instance names come from clients).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_and_rates() {
        assert_eq!(human_duration(70), "1m 10s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(human_duration(2 * 86400 + 3600), "2d 1h");
        assert_eq!(percent(0.875), "87.5%");
    }

    #[test]
    fn escapes_client_text() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn charts_scale_to_the_busiest_bin() {
        let series = [Counts { ac_hits: 3, ac_misses: 1, ..Counts::default() }, Counts::default()];
        let svg = chart("c", &series, "cap", "start");
        assert_eq!(svg.matches("<rect class=\"hit\"").count(), 2);
        assert!(svg.contains("height=\"82.5\""), "{svg}");
    }
}
