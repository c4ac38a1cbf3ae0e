//! ByteStream Write and Read of large blobs, one stream and several in
//! parallel, with the server's peak RSS during each (when its PID is known).
//! Blobs are built from slices of one shared buffer (see [`super::data::BigBlobs`]),
//! so the client's memory stays flat whatever the blob size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::data::BigBlobs;
use super::report::Row;
use super::server::{memory, mib, reset_peak};
use super::{each, err, Ctx};
use crate::config::human_size;

/// Samples a process's RSS every 10 ms until dropped, keeping the peak; the
/// kernel's own peak (VmHWM after a reset) is used when it may be reset.
struct RssWatch {
    pid: u32,
    reset: bool,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let reset = reset_peak(pid);
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peak), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(m) = memory(pid) {
                    p.fetch_max(m.rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        RssWatch { pid, reset, peak, stop, task }
    }

    /// The peak RSS since `start`.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let sampled = self.peak.load(Ordering::Relaxed);
        match memory(self.pid) {
            Some(m) if self.reset => m.hwm.max(sampled),
            _ => sampled,
        }
    }
}

/// The lower of the hashing limit and the disk's write + fdatasync rate, named.
fn write_limit(hash: Option<f64>, disk: Option<f64>, hash_name: &str) -> (Option<f64>, String) {
    match (hash, disk) {
        (Some(h), Some(d)) if d < h => (Some(d), "disk write + fdatasync".to_string()),
        (h, _) => (h, hash_name.to_string()),
    }
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("bytestream");
    let mut sizes = ctx.args.stream_sizes.clone();
    if ctx.args.large {
        sizes.push(1 << 30);
    }
    let par = ctx.args.stream_parallel.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let source = Arc::new(BigBlobs::new(ctx.seed(51), 64 << 20));
    let mut upload_peak = 0u64;
    for (si, size) in sizes.into_iter().enumerate() {
        // Enough blobs to measure for a while, bounded in total bytes.
        let single = ((256u64 << 20) / size).clamp(1, 32);
        let parallel = ((512u64 << 20) / size).clamp(par as u64, 64);
        let base = ctx.seed(52 + si as u64) & 0xffff_ffff_0000_0000;
        let keys: Vec<u64> = (0..single + parallel).map(|k| base + k).collect();
        let src = Arc::clone(&source);
        let digests = Arc::new(
            tokio::task::spawn_blocking(move || keys.iter().map(|&k| (k, src.digest(k, size))).collect::<Vec<_>>())
                .await?,
        );
        let label = human_size(size).replace(".0 ", " ");
        for (streams, offset, count) in [(1usize, 0u64, single), (par, single, parallel)] {
            let watch = ctx.server_pid.map(RssWatch::start);
            let (d, src) = (Arc::clone(&digests), Arc::clone(&source));
            let (s, wall) = each(ctx, streams, count, move |client, i| {
                let (k, digest) = d[(offset + i) as usize];
                let chunks = src.chunks(k, size);
                async move { client.write_chunks(&digest, chunks).await.map(|_| size).map_err(err) }
            })
            .await;
            let row = s.into_row("bytestream write", &format!("{label} x{streams}"), wall);
            let mb = row.mb_per_sec.unwrap_or(0.0);
            // The limit is the slower of hashing and getting bytes durably on
            // disk (issue 13): on a slow disk SHA-256 is not what bounds a write.
            let disk = ctx.limit("file_write_mb_s");
            let row = if streams == 1 {
                let (limit, name) = write_limit(ctx.limit("sha256_mb_s"), disk, "1-core SHA-256");
                row.versus(mb, limit, &name)
            } else {
                let all = ctx.limit("sha256_mb_s").map(|l| l * cores);
                let (limit, name) = write_limit(all, disk, &format!("{cores}-core SHA-256"));
                row.versus(mb, limit, &name)
            };
            let row = match watch {
                Some(w) => {
                    let peak = w.finish().await;
                    upload_peak = upload_peak.max(peak);
                    row.with_note(format!("server peak RSS {}", mib(peak)))
                }
                None => row,
            };
            ctx.report.push(row);
        }
        for (streams, offset, count) in [(1usize, 0u64, single), (par, single, parallel)] {
            let watch = ctx.server_pid.map(RssWatch::start);
            let d = Arc::clone(&digests);
            let (s, wall) = each(ctx, streams, count, move |client, i| {
                let (_, digest) = d[(offset + i) as usize];
                async move {
                    match client.read_blob(&digest, false).await {
                        Ok(Some(n)) => Ok(n),
                        Ok(None) => Err(format!("uploaded blob {digest} not found")),
                        Err(e) => Err(err(e)),
                    }
                }
            })
            .await;
            let row = s.into_row("bytestream read", &format!("{label} x{streams}"), wall);
            let mb = row.mb_per_sec.unwrap_or(0.0);
            let mut row: Row = row.versus(mb, ctx.limit("file_read_mb_s"), "page-cache file read");
            let mut note = "size checked, hash not (client CPU is the server's)".to_string();
            if let Some(w) = watch {
                note = format!("{note}; server peak RSS {}", mib(w.finish().await));
            }
            row.note = Some(note);
            ctx.report.push(row);
        }
    }
    if ctx.server_pid.is_some() {
        let limits = &mut ctx.report.limits;
        limits.insert("upload_peak_rss_bytes".into(), upload_peak as f64);
        if ctx.args.name == "cairn" {
            // What cairn configures RocksDB to hold: the goal allows these on top of 150 MB.
            let caches = crate::store::BLOCK_CACHE_BYTES + crate::store::MEMTABLE_BUDGET;
            limits.insert("configured_cache_bytes".into(), caches as f64);
        }
    }
    Ok(())
}
