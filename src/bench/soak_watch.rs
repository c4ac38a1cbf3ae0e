//! What the soak watches while it runs: the gRPC health check's latency on a
//! connection of its own (is the server still answering?), the server's
//! memory, and the disk use of its data dir (`du`: allocated blocks).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::Samples;
use super::server::memory;
use crate::client::Client;

/// Time between health checks.
const HEALTH_EVERY: Duration = Duration::from_millis(100);
/// A health check slower than this counts as failed (the server is stalled).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between memory and disk samples (`du` of a big dir costs I/O).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Checks health until `stop` is set; one sample per check.
pub async fn health(client: Client, stop: Arc<AtomicBool>) -> Samples {
    let mut s = Samples::default();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let outcome = match tokio::time::timeout(HEALTH_TIMEOUT, client.health_check()).await {
            Ok(Ok(true)) => Ok(0),
            Ok(Ok(false)) => Err("health check answered NOT_SERVING".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("health check unanswered after {HEALTH_TIMEOUT:?}")),
        };
        s.record(t.elapsed(), outcome);
        tokio::time::sleep(HEALTH_EVERY.saturating_sub(t.elapsed())).await;
    }
    s
}

/// The peaks seen by [`resources`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Peaks {
    /// Largest sampled VmRSS of the server.
    pub rss: u64,
    /// Largest `du` of the whole data dir.
    pub disk: u64,
    /// Largest `du` of the data dir without `tmp/` (uploads in progress).
    pub disk_stored: u64,
    /// Largest `du` of `tmp/`.
    pub disk_tmp: u64,
    pub samples: u64,
}

/// Samples memory (when `pid` is known) and disk (when `dir` is) until `stop`.
pub async fn resources(pid: Option<u32>, dir: Option<PathBuf>, stop: Arc<AtomicBool>) -> Peaks {
    let mut p = Peaks::default();
    while !stop.load(Ordering::Relaxed) {
        if let Some(m) = pid.and_then(memory) {
            p.rss = p.rss.max(m.rss);
        }
        if let Some(d) = dir.clone() {
            let (total, tmp) =
                tokio::task::spawn_blocking(move || (du(&d), du(&d.join("tmp")))).await.unwrap_or((0, 0));
            p.disk = p.disk.max(total);
            p.disk_tmp = p.disk_tmp.max(tmp);
            p.disk_stored = p.disk_stored.max(total.saturating_sub(tmp));
        }
        p.samples += 1;
        // Short naps so a stop is noticed quickly.
        let t = Instant::now();
        while t.elapsed() < SAMPLE_EVERY && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    p
}

/// Bytes allocated to everything under `path`, as `du` counts them (files
/// that vanish while it walks are skipped: eviction runs meanwhile).
pub fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return own };
    own + entries.filter_map(Result::ok).map(|e| du(&e.path())).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_allocated_bytes_and_tolerates_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), vec![1u8; 100_000]).unwrap();
        let n = du(dir.path());
        assert!(n >= 100_000, "{n}");
        assert_eq!(du(&dir.path().join("nope")), 0);
    }
}
