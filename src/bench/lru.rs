//! LRU quality (issue 5): a Zipf-like access trace replayed through the real
//! store (small `max_size`, `min_age` 0), against exact LRU on the same trace
//! and byte capacity. Each access asks whether the blob is present (a use)
//! and uploads it when not, as a build does.
//!
//! The store stamps uses with one-second resolution. The replay drives it
//! with a manual [`Clock`], advanced one second every `rate` accesses (and a
//! flush of noted uses at each tick, as the background thread does), so the
//! trace runs at full speed yet sees the timing of a cache serving `rate`
//! accesses per second. What matters is the accesses per second relative to
//! the entries the cache holds: the rates shown range from this machine's
//! realistic ratio (a 1M-entry cache at 1,000 accesses/s) to far coarser.
//! Exact LRU evicting to the same 95% low-water mark separates the cost of
//! that mark from the cost of the one-second resolution.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::data::{Blob, Rng};
use super::report::Row;
use super::server::ScratchDir;
use super::Ctx;
use crate::store::{Clock, Limits, Store};

/// Distinct blobs in the trace.
const ITEMS: usize = 50_000;
/// Zipf exponent of their popularity.
const ZIPF_S: f64 = 0.8;
/// Cache capacity as a fraction of all the trace's bytes.
const CAPACITY: f64 = 0.2;
/// The store's low-water mark (src/store/evict.rs).
const LOW_WATER: f64 = 0.95;

/// The trace: item sizes and the sequence of accessed items.
struct Trace {
    sizes: Vec<usize>,
    accesses: Vec<u32>,
}

fn zipf_trace(seed: u64, n: usize) -> Trace {
    let mut rng = Rng::new(seed);
    let sizes: Vec<usize> = (0..ITEMS).map(|_| 200 + rng.below(1800) as usize).collect();
    let mut cdf = Vec::with_capacity(ITEMS);
    let mut sum = 0.0;
    for r in 0..ITEMS {
        sum += 1.0 / ((r + 1) as f64).powf(ZIPF_S);
        cdf.push(sum);
    }
    // Ranks are shuffled onto items so popularity is unrelated to key order.
    let mut perm: Vec<u32> = (0..ITEMS as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let accesses = (0..n)
        .map(|_| {
            let x = rng.unit() * sum;
            perm[cdf.partition_point(|&c| c < x).min(ITEMS - 1)]
        })
        .collect();
    Trace { sizes, accesses }
}

/// Hit rate of exact LRU with `capacity` bytes that, when over, evicts down
/// to `low_water` × capacity.
fn exact_lru(t: &Trace, capacity: u64, low_water: f64) -> f64 {
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut order: BTreeMap<u64, u32> = BTreeMap::new();
    let (mut bytes, mut hits) = (0u64, 0u64);
    for (tick, &item) in t.accesses.iter().enumerate() {
        let tick = tick as u64;
        if let Some(old) = last.insert(item, tick) {
            order.remove(&old);
            hits += 1;
        } else {
            bytes += t.sizes[item as usize] as u64;
        }
        order.insert(tick, item);
        if bytes > capacity {
            let target = (capacity as f64 * low_water) as u64;
            while bytes > target {
                let (_, victim) = order.pop_first().expect("entries while over capacity");
                last.remove(&victim);
                bytes -= t.sizes[victim as usize] as u64;
            }
        }
    }
    hits as f64 / t.accesses.len().max(1) as f64
}

/// Replays the trace through a real store at `rate` accesses per (manual)
/// second. Returns (hit rate, errors).
fn replay_store(t: &Trace, blobs: &[Blob], capacity: u64, rate: u64) -> anyhow::Result<(f64, u64)> {
    let dir = ScratchDir::new("lru")?;
    let clock = Clock::manual(1_000_000);
    let store =
        Store::open_with(dir.path(), Limits { max_size: capacity, min_age: Duration::ZERO, clock: clock.clone() })?;
    let (mut hits, mut errors) = (0u64, 0u64);
    for (i, &item) in t.accesses.iter().enumerate() {
        if i > 0 && (i as u64).is_multiple_of(rate.max(1)) {
            clock.advance(1);
            // The background thread's once-a-second flush of noted uses.
            if store.maintain().is_err() {
                errors += 1;
            }
        }
        let b = &blobs[item as usize];
        match store.contains(&b.digest) {
            Ok(true) => hits += 1,
            Ok(false) => {
                if store.put(b.digest, &b.data).is_err() {
                    errors += 1;
                }
                // A write past the limit wakes eviction at once.
                if store.stats().total_bytes() as u64 > capacity && store.maintain().is_err() {
                    errors += 1;
                }
            }
            Err(_) => errors += 1,
        }
    }
    store.close();
    Ok((hits as f64 / t.accesses.len().max(1) as f64, errors))
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("lru");
    let n = ctx.args.lru_accesses as usize;
    let seed = ctx.seed(81);
    let (rows, gap) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<Row>, f64)> {
        let t = zipf_trace(seed, n);
        let blobs: Vec<Blob> = (0..ITEMS).map(|i| Blob::seeded(seed ^ ((i as u64) << 24), t.sizes[i])).collect();
        let total: u64 = t.sizes.iter().map(|&s| s as u64).sum();
        let capacity = (total as f64 * CAPACITY) as u64;
        let entries = capacity / (total / ITEMS as u64);
        let exact = exact_lru(&t, capacity, 1.0);
        let exact95 = exact_lru(&t, capacity, LOW_WATER);
        let setting =
            format!("{n} accesses, {ITEMS} blobs, Zipf {ZIPF_S}, capacity {}% (~{entries} entries)", CAPACITY * 100.0,);
        let pct = |h: f64| format!("{:.2}%", h * 100.0);
        let mut rows = vec![
            Row::value("LRU: exact LRU", &setting, format!("hit rate {}", pct(exact))),
            Row::value(
                "LRU: exact LRU, evicting to 95%",
                &setting,
                format!("hit rate {}, {:.2} points below exact LRU", pct(exact95), (exact - exact95) * 100.0),
            ),
        ];
        // The realistic ratio: a 1M-entry cache at 1,000 accesses/s sees
        // 0.1% of its entries per second.
        let realistic = (entries / 1000).max(1);
        let mut gap = 0.0;
        for rate in [realistic, entries / 10, entries] {
            let started = Instant::now();
            let (real, errors) = replay_store(&t, &blobs, capacity, rate.max(1))?;
            let share = rate as f64 / entries as f64 * 100.0;
            let mut row = Row::value(
                "LRU: cairn store",
                &format!("{setting}, {rate} accesses/s ({share:.1}% of entries per second)"),
                format!(
                    "hit rate {}, {:.2} points below exact LRU (replayed in {:.1} s)",
                    pct(real),
                    (exact - real) * 100.0,
                    started.elapsed().as_secs_f64()
                ),
            );
            row.errors = errors;
            if rate == realistic {
                gap = exact - real;
            }
            rows.push(row);
        }
        Ok((rows, gap))
    })
    .await??;
    for r in rows {
        ctx.report.push(r);
    }
    ctx.report.limits.insert("lru_hit_rate_gap".into(), gap);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_lru_counts_hits() {
        let t = Trace { sizes: vec![10, 10, 10], accesses: vec![0, 1, 0, 2, 1, 0] };
        // Room for two: 0 1 0(hit) 2(evicts 1) 1(miss, evicts 0) 0(miss).
        assert_eq!(exact_lru(&t, 20, 1.0), 1.0 / 6.0);
        // Room for all: hits on the 3 repeats.
        assert_eq!(exact_lru(&t, 30, 1.0), 0.5);
    }
}
