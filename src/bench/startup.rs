//! Start-up time and RSS of `cairn serve` over a big data dir (issue 5's
//! "start-up under 1 s at 1M entries"). The data dir is generated directly
//! through [`crate::store::Store`], which is far faster than gRPC, and can be
//! kept (`--startup-dir`) and reused by later runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::data::{BigBlobs, Blob, Rng};
use super::report::{Row, Samples};
use super::server::{memory, mib, CairnChild, ScratchDir};
use super::Ctx;
use crate::client::Client;
use crate::config::human_size;
use crate::digest::Digest;
use crate::store::{Limits, Store};

/// Server starts measured.
const STARTS: usize = 3;
/// Blobs read after each start, to see RSS under a little load.
const READS: u64 = 1000;

/// Small blob `i` of the generated dir: 100–2000 bytes, recomputable.
fn small_blob(seed: u64, i: u64) -> Blob {
    Blob::seeded(seed ^ i.wrapping_mul(0x9E37_79B9), 100 + (i * 7919 % 1900) as usize)
}

/// Seed of the generated dir's contents (fixed, so a kept dir is reusable).
const SEED: u64 = 0x5EED_57A2;

/// Fills `dir` with `entries` entries (4 in 5 small CAS blobs, 1 in 5 action
/// results) plus `bytes` in 1 GiB blob files. Returns the time it took.
fn generate(dir: &Path, entries: u64, bytes: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let store = Store::open_with(
        dir,
        Limits { max_size: u64::MAX / 4, min_age: Duration::from_secs(12 * 3600), ..Limits::default() },
    )?;
    let big = bytes.div_ceil(1 << 30);
    let small = entries.saturating_sub(big);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    let result = crate::proto::reapi::ActionResult::default();
                    let value = prost::Message::encode_to_vec(&result);
                    let mut rng = Rng::new(SEED ^ t);
                    for i in (t..small).step_by(threads as usize) {
                        if i % 5 == 4 {
                            let action = super::data::absent_digest(&mut rng);
                            let mut v = value.clone();
                            v.resize(300, 0);
                            store.put_action("", &action, &v)?;
                        } else {
                            let b = small_blob(SEED, i);
                            store.put(b.digest, &b.data)?;
                        }
                        if t == 0 && i % 200_000 == 0 && i > 0 {
                            eprintln!("    {i} of {small} entries written");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        }
        Ok(())
    })?;
    let source = BigBlobs::new(SEED, 64 << 20);
    let mut left = bytes;
    for k in 0..big {
        let size = left.min(1 << 30);
        left -= size;
        let d = source.digest(k, size);
        let mut w = store.begin_write(d)?;
        for c in source.chunks(k, size) {
            w.write(&c)?;
        }
        w.commit()?;
        eprintln!("    {} of {} in blob files written", human_size(bytes - left), human_size(bytes));
    }
    store.close();
    Ok(start.elapsed())
}

pub async fn run(ctx: &mut Ctx, bin: &Path) -> anyhow::Result<()> {
    eprintln!("startup");
    let (entries, bytes) = (ctx.args.startup_entries, ctx.args.startup_bytes);
    let scratch;
    let dir: PathBuf = match &ctx.args.startup_dir {
        Some(d) => d.clone(),
        None => {
            scratch = ScratchDir::new("startup")?;
            scratch.path().to_path_buf()
        }
    };
    let marker = dir.join("bench-startup.json");
    let want = format!("{{\"entries\":{entries},\"bytes\":{bytes},\"seed\":{SEED}}}");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        eprintln!("  generating {entries} entries + {} in {}", human_size(bytes), dir.display());
        let d = dir.clone();
        let took = tokio::task::spawn_blocking(move || generate(&d, entries, bytes)).await??;
        std::fs::write(&marker, &want)?;
        ctx.report.push(Row::value(
            "start-up data dir",
            &format!("generated {entries} entries + {}", human_size(bytes)),
            format!("{:.1} s through Store ({:.0} entries/s)", took.as_secs_f64(), entries as f64 / took.as_secs_f64()),
        ));
    }
    let stats = crate::store::read_stats(&dir)?;
    let held =
        format!("{} entries, {}", stats.cas_count + stats.ac_count, human_size(stats.total_bytes().max(0) as u64));
    // Present blobs to read after start-up.
    let probe: Vec<Digest> = (0..READS * 5)
        .filter(|i| i % 5 != 4 && *i < entries)
        .map(|i| small_blob(SEED, i).digest)
        .take(READS as usize)
        .collect();
    let max_size = format!("{}", (stats.total_bytes().max(0) as u64).saturating_mul(2).max(1 << 30));
    let (mut listen, mut answer) = (Samples::default(), Samples::default());
    let (mut idle_rss, mut loaded_rss, mut shutdown) = (0u64, 0u64, Duration::ZERO);
    for _ in 0..STARTS {
        let child = CairnChild::start(bin, Some(&dir), &["--max-size".to_string(), max_size.clone()])?;
        listen.record(child.startup, Ok(0));
        let first = async {
            let c = Client::connect(&child.url, "", Duration::from_secs(10)).await?;
            let missing = c.find_missing(&probe[..1]).await?;
            anyhow::ensure!(missing.is_empty(), "a generated blob is missing after restart");
            Ok(c)
        }
        .await;
        let c = match first {
            Ok(c) => {
                answer.record(child.spawned.elapsed(), Ok(0));
                c
            }
            Err(e) => {
                answer.record(child.spawned.elapsed(), Err(e.to_string()));
                continue;
            }
        };
        idle_rss = idle_rss.max(memory(child.pid()).map_or(0, |m| m.rss));
        let got = c.batch_read(&probe).await?;
        let absent = got.iter().filter(|b| b.is_none()).count();
        if absent > 0 {
            answer.record(Duration::ZERO, Err(format!("{absent} generated blobs missing after restart")));
        }
        loaded_rss = loaded_rss.max(memory(child.pid()).map_or(0, |m| m.hwm));
        shutdown = shutdown.max(tokio::task::spawn_blocking(move || child.stop()).await?);
    }
    let note = format!(
        "holding {held}; RSS after start {}, peak after {READS} reads {}; slowest SIGTERM exit {} ms",
        mib(idle_rss),
        mib(loaded_rss),
        shutdown.as_millis()
    );
    let row = listen.into_row("start-up", &format!("time to listen, {held}"), Duration::from_secs(1));
    let p50 = row.p50_ms;
    ctx.report.push(
        Row::value("start-up", &row.setting, format!("p50 {p50:.0} ms, max {:.0} ms; {note}", row.max_ms)).tap(|r| {
            r.p50_ms = p50;
            r.max_ms = row.max_ms;
        }),
    );
    let a = answer.into_row("start-up", "spawn to first FindMissing answer", Duration::from_secs(1));
    let (p50, max, errors, first_error) = (a.p50_ms, a.max_ms, a.errors, a.first_error.clone());
    ctx.report.push(Row::value("start-up", &a.setting, format!("p50 {p50:.0} ms, max {max:.0} ms ({held})")).tap(
        |r| {
            r.p50_ms = p50;
            r.max_ms = max;
            r.errors = errors;
            r.first_error = first_error;
        },
    ));
    Ok(())
}

/// Small helper to adjust a value in place while building it.
trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

impl Tap for Row {}
