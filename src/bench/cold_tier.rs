//! `cairn bench --cold-tier`: what a node with an empty local store serves
//! from a warm bucket (issue 12). Node A writes the data through its local
//! store and the write-behind queue drains it to the bucket (timed: the
//! bucket's write rate per node); then node B starts with an empty data dir
//! over the same bucket and every workload reads what only the bucket holds:
//! FindMissingBlobs, ActionCache hits (each hit fetches the result and the
//! blobs it names), 1 MiB and 64 MiB ByteStream reads. Each cold figure is
//! followed by the same reads again through B (now local), measured in the
//! same run, and carries the object-store calls B made for it.
//!
//! The bucket is `--cold-tier-bucket URL` (credentials from the `AWS_*`
//! environment, as `cairn serve` takes them), or else a three-node Garage
//! cluster on loopback that the bench starts ([`super::garage`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ac::action_result;
use super::data::{self, BigBlobs, Blob, Rng};
use super::garage::Garage;
use super::report::{Report, Row};
use super::server::CairnChild;
use super::{connect_all, each, err, run_seed, BenchArgs, Ctx};
use crate::digest::Digest;

/// Flags of `cairn bench --cold-tier`.
#[derive(clap::Args, Clone, Debug)]
pub struct ColdTierArgs {
    /// Instead of the workload families: measure a node with an empty local
    /// store over a warm bucket (starts its own nodes; see BENCHMARKS.md).
    #[arg(long)]
    pub cold_tier: bool,
    /// The bucket for --cold-tier, e.g. s3://bucket/prefix (AWS_* from the
    /// environment) [default: a 3-node Garage cluster on loopback, $CAIRN_GARAGE].
    #[arg(long)]
    pub cold_tier_bucket: Option<String>,
    /// Digests per FindMissingBlobs call of --cold-tier (half in the bucket).
    #[arg(long, default_value_t = 10_000)]
    pub cold_tier_digests: usize,
    /// ActionResults (three small outputs each) read cold by --cold-tier.
    #[arg(long, default_value_t = 1000)]
    pub cold_tier_actions: usize,
    /// 1 MiB blobs read cold by --cold-tier (half one at a time, half 8 at once).
    #[arg(long, default_value_t = 64)]
    pub cold_tier_mib_blobs: u64,
    /// 64 MiB blobs read cold by --cold-tier, one at a time.
    #[arg(long, default_value_t = 4)]
    pub cold_tier_large_blobs: u64,
}

/// What node A wrote, for node B to read.
struct Written {
    present: Vec<Digest>,
    absent: HashSet<Digest>,
    actions: Vec<Digest>,
    mib: Vec<Digest>,
    large: Vec<Digest>,
    bytes: u64,
}

/// The object-store calls counted by a node, by kind.
const OPS: [&str; 6] = ["head", "get", "put", "multipart_create", "multipart_part", "multipart_complete"];

pub async fn run(args: BenchArgs, bin: &Path) -> anyhow::Result<Report> {
    let c = args.cold_tier.clone();
    // reqwest (the /metrics scrapes) is built without a default TLS provider
    // (cairn uses ring); plain HTTP needs none, but building a client asks for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed = run_seed();
    // A Garage cluster of our own unless a bucket was named.
    let garage = match &c.cold_tier_bucket {
        Some(_) => None,
        None => Some(tokio::task::spawn_blocking(Garage::start).await??),
    };
    let (url, env, store) = match (&garage, &c.cold_tier_bucket) {
        (Some(g), _) => (g.url(&format!("bench-{seed:x}")), g.env(0), "Garage, 3 nodes on loopback".to_string()),
        (None, Some(u)) => (u.clone(), Vec::new(), u.clone()),
        (None, None) => unreachable!("a bucket or a cluster"),
    };
    // The tier's defaults (timeouts, concurrency), as a deployment would start.
    let flags = vec!["--object-store".to_string(), url.clone()];
    let mut report = Report { target: format!("cairn, a cold node over a warm bucket ({store})"), ..Report::default() };
    eprintln!("cairn bench --cold-tier: {}", report.target);

    // Node A: write everything, then time the queue draining into the bucket.
    let a = CairnChild::start_env(bin, None, &flags, &env)?;
    let a_admin = a.admin()?;
    let a_ctx = context(&args, &a, seed).await?;
    let written = write(&a_ctx, &c).await?;
    let t = Instant::now();
    let entries = wait_drained(a_admin).await?;
    let drained = t.elapsed();
    let a_calls = calls(a_admin).await?;
    let mut row = Row::value(
        "cold tier: write-behind to the bucket",
        &format!("node A, {entries} queued entries"),
        format!(
            "{} MB in {:.1} s after the last acknowledgement; {}",
            written.bytes / 1_000_000,
            drained.as_secs_f64(),
            show(&a_calls)
        ),
    );
    row.mb_per_sec = Some(written.bytes as f64 / drained.as_secs_f64().max(1e-9) / 1e6);
    row.ops = entries as u64;
    row.ops_per_sec = entries / drained.as_secs_f64().max(1e-9);
    report.push(row);
    drop(a_ctx);
    tokio::task::spawn_blocking(move || a.stop()).await?;

    // Node B: an empty data dir over the same bucket.
    let b = CairnChild::start_env(bin, None, &flags, &env)?;
    let b_admin = b.admin()?;
    let ctx = context(&args, &b, seed).await?;
    let w = Arc::new(written);
    find_missing(&ctx, &w, b_admin, &mut report).await?;
    action_hits(&ctx, &w, b_admin, &mut report).await?;
    for (label, blobs, parallel) in [("1 MiB", &w.mib, 8usize), ("64 MiB", &w.large, 1)] {
        reads(&ctx, blobs, label, parallel, b_admin, &mut report).await?;
    }
    drop(ctx);
    tokio::task::spawn_blocking(move || b.stop()).await?;
    drop(garage);
    Ok(report)
}

/// A bench context whose clients talk to `node`.
async fn context(args: &BenchArgs, node: &CairnChild, seed: u64) -> anyhow::Result<Ctx> {
    // The nodes run without tokens or TLS: plain clients.
    let clients = connect_all(&node.url, &args.instance, args.connections, &Default::default()).await?;
    Ok(Ctx { args: args.clone(), clients, server_pid: Some(node.pid()), report: Report::default(), seed })
}

/// Writes the data set through node A.
async fn write(ctx: &Ctx, c: &ColdTierArgs) -> anyhow::Result<Written> {
    let mut rng = Rng::new(ctx.seed(61));
    let client = &ctx.clients[0];
    let mut bytes = 0u64;
    let half = c.cold_tier_digests / 2;
    let small: Vec<Blob> = (0..half + 3 * c.cold_tier_actions)
        .map(|_| Blob::new(data::bytes(rng.next_u64(), 100 + rng.below(4000) as usize)))
        .collect();
    for chunk in small.chunks(500) {
        let batch: Vec<_> = chunk.iter().map(|b| (b.digest, b.data.clone())).collect();
        bytes += batch.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        client.batch_upload(&batch).await?;
    }
    let present: Vec<Digest> = small[..half].iter().map(|b| b.digest).collect();
    let absent: HashSet<Digest> = (0..c.cold_tier_digests - half).map(|_| data::absent_digest(&mut rng)).collect();
    let mut actions = Vec::new();
    for outputs in small[half..].chunks(3) {
        let action = data::absent_digest(&mut rng);
        client.update_action_result(&action, action_result(&[&outputs[0], &outputs[1]], Some(&outputs[2]))).await?;
        actions.push(action);
    }
    let source = BigBlobs::new(ctx.seed(62), 64 << 20);
    let big = |n: u64, size: u64, salt: u64| -> Vec<(u64, Digest)> {
        (0..n).map(|i| (salt + i, source.digest(salt + i, size))).collect()
    };
    let (mib, large) =
        (big(c.cold_tier_mib_blobs, 1 << 20, ctx.seed(63)), big(c.cold_tier_large_blobs, 64 << 20, ctx.seed(64)));
    for (blobs, size) in [(&mib, 1u64 << 20), (&large, 64 << 20)] {
        for (k, d) in blobs {
            client.write_chunks(d, source.chunks(*k, size)).await?;
            bytes += size;
        }
    }
    let digests = |v: &[(u64, Digest)]| v.iter().map(|(_, d)| *d).collect();
    Ok(Written { present, absent, actions, mib: digests(&mib), large: digests(&large), bytes })
}

/// FindMissingBlobs through the cold node: every digest asked of the bucket.
async fn find_missing(ctx: &Ctx, w: &Arc<Written>, admin: SocketAddr, report: &mut Report) -> anyhow::Result<()> {
    let all: Arc<Vec<Digest>> = Arc::new(w.present.iter().chain(&w.absent).copied().collect());
    let before = calls(admin).await?;
    let (wa, list) = (Arc::clone(w), Arc::clone(&all));
    let (s, wall) = each(ctx, 1, 3, move |client, _| {
        let (w, list) = (Arc::clone(&wa), Arc::clone(&list));
        async move {
            let missing = client.find_missing(&list).await.map_err(err)?;
            let wrong = missing.len() != w.absent.len() || missing.iter().any(|d| !w.absent.contains(d));
            if wrong {
                return Err(format!("{} reported missing, {} absent", missing.len(), w.absent.len()));
            }
            Ok(0)
        }
    })
    .await;
    let used = delta(&before, &calls(admin).await?);
    let setting = format!("{} digests, half in the bucket, none local, c=1", all.len());
    report.push(s.into_row("cold tier: FindMissingBlobs", &setting, wall).with_note(show(&used)));
    Ok(())
}

/// GetActionResult hits through the cold node (each fetches the result and
/// its three blobs into the local store), then the same hits again, local.
async fn action_hits(ctx: &Ctx, w: &Arc<Written>, admin: SocketAddr, report: &mut Report) -> anyhow::Result<()> {
    for pass in ["cold", "again, now local"] {
        let before = calls(admin).await?;
        let wa = Arc::clone(w);
        let (s, wall) = each(ctx, 16, w.actions.len() as u64, move |client, i| {
            let action = wa.actions[i as usize];
            async move {
                match client.get_action_result(&action).await.map_err(err)? {
                    Some(r) if r.output_files.len() == 2 => Ok(0),
                    Some(_) => Err(format!("the result of {action} lost outputs")),
                    None => Err(format!("no result for {action}: the cold node missed the bucket")),
                }
            }
        })
        .await;
        let used = delta(&before, &calls(admin).await?);
        let setting = format!("{} results × 3 outputs, {pass}, c=16", w.actions.len());
        report.push(s.into_row("cold tier: GetActionResult hit", &setting, wall).with_note(show(&used)));
    }
    Ok(())
}

/// ByteStream reads of `blobs` through the cold node: half one stream at a
/// time and half `parallel` at once (all of them when `parallel` is 1), then
/// the same reads again from the local store.
async fn reads(
    ctx: &Ctx,
    blobs: &[Digest],
    label: &str,
    parallel: usize,
    admin: SocketAddr,
    report: &mut Report,
) -> anyhow::Result<()> {
    let split = if parallel > 1 { blobs.len() / 2 } else { blobs.len() };
    let groups = [(1usize, &blobs[..split]), (parallel, &blobs[split..])];
    for pass in ["cold", "again, now local"] {
        for (streams, group) in groups.iter().filter(|(_, g)| !g.is_empty()) {
            let before = calls(admin).await?;
            let list: Arc<Vec<Digest>> = Arc::new(group.to_vec());
            let (s, wall) = each(ctx, *streams, list.len() as u64, move |client, i| {
                let d = list[i as usize];
                async move {
                    match client.read_blob(&d, false).await.map_err(err)? {
                        Some(n) => Ok(n),
                        None => Err(format!("{d} not found: the cold node missed the bucket")),
                    }
                }
            })
            .await;
            let used = delta(&before, &calls(admin).await?);
            let setting = format!("{label} x{streams}, {} blobs, {pass}", group.len());
            report.push(s.into_row("cold tier: bytestream read", &setting, wall).with_note(show(&used)));
        }
    }
    Ok(())
}

/// Waits until the node's write-behind queue is empty; returns how many
/// entries it held at the first look.
async fn wait_drained(admin: SocketAddr) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let first = metric(&scrape(admin).await?, "cairn_tier_queue_entries", None);
    loop {
        if metric(&scrape(admin).await?, "cairn_tier_queue_entries", None) == 0.0 {
            return Ok(first);
        }
        anyhow::ensure!(Instant::now() < deadline, "node A's write-behind queue did not drain in 30 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's object-store calls so far, by kind.
async fn calls(admin: SocketAddr) -> anyhow::Result<Vec<f64>> {
    let text = scrape(admin).await?;
    Ok(OPS.iter().map(|op| metric(&text, "cairn_object_store_requests_total", Some(("op", op)))).collect())
}

fn delta(before: &[f64], after: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// "object store: 5000 HEAD, 12 GET" (kinds with no calls left out).
fn show(calls: &[f64]) -> String {
    let said: Vec<String> = OPS
        .iter()
        .zip(calls)
        .filter(|(_, n)| **n > 0.0)
        .map(|(op, n)| format!("{n:.0} {}", op.to_uppercase()))
        .collect();
    if said.is_empty() {
        "object store: no calls".into()
    } else {
        format!("object store: {}", said.join(", "))
    }
}

/// The node's /metrics text.
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{admin}/metrics")).await?.error_for_status()?.text().await?)
}

/// The sum of the samples of `name` (with the label `label`, when given) in
/// Prometheus text.
fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let want = label.map(|(k, v)| format!("{k}=\"{v}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let (n, labels) = key.split_once('{').unwrap_or((key, ""));
            n == name && want.as_ref().is_none_or(|w| labels.trim_end_matches('}').split(',').any(|x| x == w))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_name_and_label() {
        let text = "# HELP x\ncairn_tier_queue_entries 3\ncairn_object_store_requests_total{op=\"get\"} 7\n\
                    cairn_object_store_requests_total{op=\"head\",tier=\"b\"} 2\ncairn_tier_queue_entries_max 9\n";
        assert_eq!(metric(text, "cairn_tier_queue_entries", None), 3.0);
        assert_eq!(metric(text, "cairn_object_store_requests_total", Some(("op", "get"))), 7.0);
        assert_eq!(metric(text, "cairn_object_store_requests_total", Some(("op", "head"))), 2.0);
        assert_eq!(metric(text, "cairn_object_store_requests_total", Some(("op", "put"))), 0.0);
        assert_eq!(show(&[2.0, 0.0, 1.0, 0.0, 0.0, 0.0]), "object store: 2 HEAD, 1 PUT");
    }
}
