//! `cairn bench --crash-loop N`: N times, start `cairn serve` on one data
//! dir, run mixed concurrent writes (batches of small blobs, ByteStream blobs
//! stored as files, ActionCache updates) recording every acknowledged one,
//! `kill -9` the server at a random moment, restart it and check (see
//! [`super::crash_check`]): every acknowledged blob reads back and re-hashes,
//! every acknowledged ActionCache entry is there, the counters of
//! `cairn stats --json` equal what the server holds, and after the last
//! restart the orphan reclaim leaves no file in `blobs/` without a record.
//!
//! A bench mode rather than a shell script: the writers, the ledger of
//! acknowledged writes and the verification need a REAPI client and hashing,
//! which [`crate::client::Client`] already is; `scripts/crash-loop.sh` only
//! builds and runs this.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::crash_check::{self, Findings, Known};
use super::data::{self, Rng};
use super::report::{Report, Row};
use super::server::{CairnChild, ScratchDir};
use super::BenchArgs;
use crate::client::Client;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

/// Flags of the crash loop.
#[derive(clap::Args, Clone, Debug)]
pub struct CrashArgs {
    /// Instead of loading a server: N rounds of start, mixed writes, kill -9
    /// at a random moment, restart and check (see README, "Proof at scale").
    #[arg(long)]
    pub crash_loop: Option<u64>,
    /// Concurrent writers in each round.
    #[arg(long, default_value_t = 8)]
    pub crash_writers: usize,
    /// Longest time the writes run before the kill, in seconds (the moment is
    /// uniformly random up to this).
    #[arg(long, default_value_t = 2.0)]
    pub crash_max_secs: f64,
    /// After the last restart, how long to wait for the background orphan
    /// reclaim to leave no file in blobs/ without a record, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub crash_reclaim_secs: f64,
    /// Bytes per second all writers together send at most: bounds the data
    /// dir (100 rounds of about a second write about 100 times this).
    #[arg(long, default_value = "32MiB", value_parser = crate::config::parse_size)]
    pub crash_rate: u64,
}

/// Every write the loop sent, and which were acknowledged.
#[derive(Default)]
pub struct Ledger {
    /// Blobs sent this round (acknowledged or not).
    pub sent_blobs: Vec<Digest>,
    /// Blobs acknowledged this round.
    pub acked_blobs: Vec<Digest>,
    /// ActionCache updates sent this round.
    pub sent_ac: Vec<(Digest, reapi::ActionResult)>,
    /// ActionCache updates acknowledged this round.
    pub acked_ac: Vec<Digest>,
    /// Failures while the server was up (must stay 0).
    pub unexpected: Vec<String>,
}

/// Small blobs per BatchUpdateBlobs call, at most.
const BATCH_MAX: u64 = 8;
/// ByteStream blobs are this size and up: above the inline limit (256 KiB),
/// so each is a file in `blobs/`.
const FILE_MIN: usize = 260 * 1024;
/// ByteStream blobs are at most this size: small files, so that many commits
/// (rename, then record) are in flight when the kill comes.
const FILE_MAX: usize = 512 * 1024;

/// One writer: mixed writes until the server dies or `killed` is set.
async fn writer(c: Client, ledger: Arc<Mutex<Ledger>>, killed: Arc<AtomicBool>, seed: u64, rate: u64) {
    let mut rng = Rng::new(seed);
    let (started, mut sent) = (Instant::now(), 0u64);
    let mut mine: Vec<Digest> = Vec::new();
    let lock = || ledger.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let pick = rng.below(10);
        let r = if pick < 5 || (pick >= 8 && mine.is_empty()) {
            let blobs: Vec<(Digest, bytes::Bytes)> = (0..1 + rng.below(BATCH_MAX))
                .map(|_| {
                    let b = data::bytes(rng.next_u64(), data::small_size(&mut rng));
                    (DigestFunction::Sha256.digest_of(&b), b)
                })
                .collect();
            lock().sent_blobs.extend(blobs.iter().map(|b| b.0));
            c.batch_upload(&blobs).await.map(|_| blobs.iter().map(|b| b.0).collect::<Vec<_>>())
        } else if pick < 8 {
            let len = FILE_MIN + rng.below((FILE_MAX - FILE_MIN) as u64) as usize;
            let b = data::bytes(rng.next_u64(), len);
            let d = DigestFunction::Sha256.digest_of(&b);
            lock().sent_blobs.push(d);
            c.write_bytes(&d, b).await.map(|_| vec![d])
        } else {
            let action = DigestFunction::Sha256.digest_of(&rng.next_u64().to_le_bytes());
            let outs: Vec<Digest> =
                (0..1 + rng.below(2)).map(|_| mine[rng.below(mine.len() as u64) as usize]).collect();
            let result = reapi::ActionResult {
                output_files: outs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| reapi::OutputFile {
                        path: format!("out/{i}"),
                        digest: Some(d.to_proto()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            lock().sent_ac.push((action, result.clone()));
            match c.update_action_result(&action, result).await {
                Ok(()) => {
                    lock().acked_ac.push(action);
                    Ok(Vec::new())
                }
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(ds) => {
                sent += ds.iter().map(|d| d.size).sum::<u64>();
                mine.extend(ds.iter().copied());
                lock().acked_blobs.extend(ds);
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    lock().unexpected.push(e.to_string());
                }
                return;
            }
        }
        if killed.load(Ordering::SeqCst) {
            return;
        }
        // Keep to this writer's share of --crash-rate.
        let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
}

/// Runs the crash loop and prints its report; fails on any loss, orphan left
/// after the reclaim, counter mismatch or unexpected write error.
pub async fn run(args: BenchArgs, bin: PathBuf, rounds: u64) -> anyhow::Result<()> {
    let ca = args.crash.clone();
    let scratch = ScratchDir::new("crash")?;
    let dir = scratch.path().to_path_buf();
    let mut extra = vec!["--max-size".to_string(), "1TiB".to_string()];
    extra.extend(args.soak.serve_arg.iter().cloned());
    let seed = super::run_seed();
    let mut rng = Rng::new(seed);
    let mut known = Known::default();
    let mut f = Findings::default();
    let started = Instant::now();
    eprintln!("cairn bench --crash-loop {rounds}: data dir {}", dir.display());
    for round in 0..rounds {
        let child = CairnChild::start(&bin, Some(&dir), &extra)?;
        let c = Client::connect(&child.url, "", Duration::from_secs(10)).await?;
        // What the last round left behind, checked before anything new is written.
        crash_check::after_restart(&c, &bin, &dir, &mut known, &mut f).await?;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let killed = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..ca.crash_writers.max(1))
            .map(|w| {
                let (c, l, k) = (c.clone(), Arc::clone(&ledger), Arc::clone(&killed));
                let rate = ca.crash_rate / ca.crash_writers.max(1) as u64;
                tokio::spawn(writer(c, l, k, seed ^ (round << 16) ^ w as u64, rate))
            })
            .collect();
        let wait = 0.05 + rng.unit() * (ca.crash_max_secs - 0.05).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        killed.store(true, Ordering::SeqCst);
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.pid() as i32, libc::SIGKILL);
        }
        drop(child);
        for w in writers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        let l = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
        f.unexpected += l.unexpected.len() as u64;
        if let Some(e) = l.unexpected.first() {
            eprintln!("  round {round}: write failed while the server was up: {e}");
        }
        known.absorb(l);
        f.rounds += 1;
        if round % 10 == 9 || round + 1 == rounds {
            eprintln!("  {} rounds, {:.0} s: {}", round + 1, started.elapsed().as_secs_f64(), f.summary());
        }
    }
    // The last restart: check it all, wait for the orphan reclaim, check again.
    let child = CairnChild::start(&bin, Some(&dir), &extra)?;
    let c = Client::connect(&child.url, "", Duration::from_secs(10)).await?;
    crash_check::after_restart(&c, &bin, &dir, &mut known, &mut f).await?;
    crash_check::full(&c, &mut known, &mut f).await?;
    crash_check::reclaim(&c, &dir, &mut known, &mut f, Duration::from_secs_f64(ca.crash_reclaim_secs)).await?;
    tokio::task::spawn_blocking(move || child.stop()).await?;
    let disk = super::soak_watch::du(&dir);

    let wall = started.elapsed();
    println!("crash loop: {}", f.summary());
    let mut report = Report { target: format!("{} crash loop on {}", args.name, dir.display()), ..Report::default() };
    let mut row = Row::value(
        "crash loop: kill -9 during mixed writes",
        &format!("{} rounds, {} writers, kill within {} s", f.rounds, ca.crash_writers, ca.crash_max_secs),
        format!(
            "{}; data dir {} at the end; {:.0} s",
            f.summary(),
            crate::config::human_size(disk),
            wall.as_secs_f64()
        ),
    );
    row.errors = f.failures();
    row.first_error = f.first.clone();
    report.push(row);
    report.goals.push(super::report::Goal {
        goal: "kill -9 ≥ 100 times: no acknowledged write lost, no orphan left after the reclaim, counters exact"
            .into(),
        measured: format!(
            "{} rounds: {} lost, {} orphans left, {} counter mismatches",
            f.rounds,
            f.lost_blobs + f.lost_ac,
            f.orphans_left,
            f.counter_mismatches
        ),
        met: Some(f.rounds >= 100 && f.failures() == 0),
    });
    super::output(&args, &report)
}
