//! LRU quality (issue 5): a Zipf-like access trace replayed through the real
//! store (small `max_size`, `min_age` 0), against exact LRU on the same trace
//! and byte capacity. Each access asks whether the blob is present (a use)
//! and uploads it when not, as a build does.
//!
//! The store stamps uses with one-second resolution from the wall clock, so
//! a replay squeezed into seconds puts thousands of accesses into each
//! second, where a real cache sees few accesses per second compared with the
//! entries it holds. Two simulations separate the effects: exact LRU that
//! evicts to the same 95% low-water mark, and a model of the store's policy
//! (one-second stamps, ties in key order, touches flushed each second) run
//! at the replay's rate, which checks the model against the real store, and
//! at slower rates, which shows what the resolution costs in production.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::data::{Blob, Rng};
use super::report::Row;
use super::server::ScratchDir;
use super::Ctx;
use crate::store::{Limits, Store};

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

/// Hit rate of the store's policy at `per_sec` accesses per second: uses are
/// noted in memory and stamped (whole seconds) at the next flush, which runs
/// each second and before each eviction; eviction takes the oldest stamps
/// first, ties in key order, down to the low-water mark.
fn model_store(t: &Trace, keys: &[[u8; 32]], capacity: u64, per_sec: f64) -> f64 {
    let mut stamp: HashMap<u32, u64> = HashMap::new();
    let mut order: BTreeSet<(u64, [u8; 32], u32)> = BTreeSet::new();
    let mut pending: HashSet<u32> = HashSet::new();
    let (mut bytes, mut hits, mut flushed_at) = (0u64, 0u64, 0u64);
    let flush = |now: u64, pending: &mut HashSet<u32>, stamp: &mut HashMap<u32, u64>, order: &mut BTreeSet<_>| {
        for item in pending.drain() {
            if let Some(s) = stamp.get_mut(&item) {
                if *s != now {
                    order.remove(&(*s, keys[item as usize], item));
                    *s = now;
                    order.insert((now, keys[item as usize], item));
                }
            }
        }
    };
    for (i, &item) in t.accesses.iter().enumerate() {
        let now = (i as f64 / per_sec) as u64;
        if now != flushed_at {
            flush(now, &mut pending, &mut stamp, &mut order);
            flushed_at = now;
        }
        if stamp.contains_key(&item) {
            hits += 1;
            pending.insert(item);
            continue;
        }
        stamp.insert(item, now);
        order.insert((now, keys[item as usize], item));
        bytes += t.sizes[item as usize] as u64;
        if bytes > capacity {
            flush(now, &mut pending, &mut stamp, &mut order);
            while bytes as f64 > capacity as f64 * LOW_WATER {
                let (_, _, victim) = order.pop_first().expect("entries while over capacity");
                stamp.remove(&victim);
                bytes -= t.sizes[victim as usize] as u64;
            }
        }
    }
    hits as f64 / t.accesses.len().max(1) as f64
}

/// Replays the trace through a real store, paced evenly over `wall`.
/// Returns (hit rate, accesses per second achieved, errors).
fn replay_store(t: &Trace, blobs: &[Blob], capacity: u64, wall: Duration) -> anyhow::Result<(f64, f64, u64)> {
    let dir = ScratchDir::new("lru")?;
    let store = Store::open_with(
        dir.path(),
        Limits {
            max_size: capacity,
            min_age: Duration::ZERO,
        },
    )?;
    let per_access = wall.as_secs_f64() / t.accesses.len().max(1) as f64;
    let (mut hits, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    for (i, &item) in t.accesses.iter().enumerate() {
        let due = start + Duration::from_secs_f64(per_access * i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let b = &blobs[item as usize];
        match store.contains(&b.digest) {
            Ok(true) => hits += 1,
            Ok(false) => {
                if store.put(b.digest, &b.data).is_err() {
                    errors += 1;
                }
                if store.stats().total_bytes() as u64 > capacity && store.maintain().is_err() {
                    errors += 1;
                }
            }
            Err(_) => errors += 1,
        }
    }
    let rate = t.accesses.len() as f64 / start.elapsed().as_secs_f64();
    store.close();
    Ok((hits as f64 / t.accesses.len().max(1) as f64, rate, errors))
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("lru");
    let secs = ctx.args.lru_seconds;
    let quick = secs < 2.0;
    let n = if quick { 20_000 } else { 200_000 };
    let seed = ctx.seed(81);
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<Row>, f64)> {
        let t = zipf_trace(seed, n);
        let blobs: Vec<Blob> = (0..ITEMS)
            .map(|i| Blob::seeded(seed ^ ((i as u64) << 24), t.sizes[i]))
            .collect();
        let keys: Vec<[u8; 32]> = blobs.iter().map(|b| b.digest.hash).collect();
        let total: u64 = t.sizes.iter().map(|&s| s as u64).sum();
        let capacity = (total as f64 * CAPACITY) as u64;
        let exact = exact_lru(&t, capacity, 1.0);
        let exact95 = exact_lru(&t, capacity, LOW_WATER);
        let (real, rate, errors) = replay_store(&t, &blobs, capacity, Duration::from_secs_f64(secs))?;
        let setting = format!(
            "{n} accesses, {ITEMS} blobs, Zipf {ZIPF_S}, capacity {:.0}% = {} KiB",
            CAPACITY * 100.0,
            capacity / 1024
        );
        let pct = |h: f64| format!("{:.2}%", h * 100.0);
        let mut rows = vec![
            Row::value("LRU: exact LRU", &setting, format!("hit rate {}", pct(exact))),
            Row::value(
                "LRU: exact LRU, evicting to 95%",
                &setting,
                format!("hit rate {}", pct(exact95)),
            ),
            Row::value(
                "LRU: cairn store (real)",
                &format!("{setting}, replayed at {rate:.0}/s"),
                format!(
                    "hit rate {}, {:.2} points below exact LRU",
                    pct(real),
                    (exact - real) * 100.0
                ),
            ),
        ];
        rows[2].errors = errors;
        for per_sec in [rate, 1000.0, 100.0, 10.0] {
            let m = model_store(&t, &keys, capacity, per_sec);
            rows.push(Row::value(
                "LRU: model of cairn's policy",
                &format!("{setting}, {per_sec:.0} accesses/s"),
                format!("hit rate {}, {:.2} points below exact LRU", pct(m), (exact - m) * 100.0),
            ));
        }
        Ok((rows, exact - real))
    })
    .await??;
    let (rows, gap) = rows;
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
        let t = Trace {
            sizes: vec![10, 10, 10],
            accesses: vec![0, 1, 0, 2, 1, 0],
        };
        // Room for two: 0 1 0(hit) 2(evicts 1) 1(miss, evicts 0) 0(miss).
        assert_eq!(exact_lru(&t, 20, 1.0), 1.0 / 6.0);
        // Room for all: hits on the 3 repeats.
        assert_eq!(exact_lru(&t, 30, 1.0), 0.5);
    }

    #[test]
    fn model_matches_exact_lru_at_fine_resolution() {
        let t = zipf_trace(3, 20_000);
        let keys: Vec<[u8; 32]> = (0..ITEMS).map(|i| [(i % 251) as u8; 32]).collect();
        let total: u64 = t.sizes.iter().map(|&s| s as u64).sum();
        let cap = total / 5;
        // One access per second: stamps are exact, only the low-water mark differs.
        let m = model_store(&t, &keys, cap, 1.0);
        let e = exact_lru(&t, cap, LOW_WATER);
        assert!((m - e).abs() < 0.005, "model {m} vs exact-95% {e}");
    }
}
