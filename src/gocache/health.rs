//! Whether the remote is worth asking right now: a failing or silent server
//! must not cost every request a timeout. After a failure the remote is
//! skipped for a back-off period (doubling per consecutive failure, up to
//! [`MAX_BACKOFF`]); when it ends, requests try again, and one success
//! resets it. The first failure prints the process's one warning (go shows
//! our stderr to the user); later ones only go to the debug log.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Back-off after the first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// Longest back-off (a build keeps probing a dead server about once a minute).
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The remote's health as one kind of call sees it. Reads (gets and
/// prefetching) and writes (uploads) each have their own: a server that
/// refuses or chokes on writes (a full disk, a read-only token, one slow
/// large upload) may still serve reads perfectly well.
#[derive(Debug)]
pub struct Health {
    /// For the warning.
    url: String,
    /// Whose health this is: the warning says what is switched off.
    uploads: bool,
    /// A std mutex: held for a few instructions, never across an await.
    state: Mutex<State>,
    /// The one warning has been printed. Shared by the read and the write
    /// health of one remote: a dead server is one warning, not two.
    warned: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    /// While set and in the future, the remote is skipped.
    down_until: Option<Instant>,
    /// The next back-off; zero while healthy.
    backoff: Duration,
}

impl Health {
    /// The health of reads (gets and prefetching).
    pub fn new(url: &str) -> Health {
        Health { url: url.to_string(), uploads: false, state: Mutex::new(State::default()), warned: Arc::default() }
    }

    /// The health of uploads to the remote whose reads `reads` tracks (they
    /// share the one warning).
    pub fn for_uploads(reads: &Health) -> Health {
        Health { uploads: true, warned: reads.warned.clone(), ..Health::new(&reads.url) }
    }

    /// True unless the remote failed recently.
    pub fn usable(&self) -> bool {
        self.usable_at(Instant::now())
    }

    fn usable_at(&self, now: Instant) -> bool {
        self.lock().down_until.is_none_or(|t| now >= t)
    }

    /// When the current back-off ends (None: usable now).
    pub fn down_until(&self) -> Option<Instant> {
        let until = self.lock().down_until?;
        (until > Instant::now()).then_some(until)
    }

    /// A call succeeded (a miss is a success too).
    pub fn ok(&self) {
        let mut s = self.lock();
        if s.backoff != Duration::ZERO {
            tracing::debug!(remote = %self.url, "remote cache is answering again");
        }
        *s = State::default();
    }

    /// A call failed or timed out: back off, warning once per process.
    pub fn failed(&self, what: &str, error: &dyn Display) {
        self.failed_at(Instant::now(), what, error);
    }

    fn failed_at(&self, now: Instant, what: &str, error: &dyn Display) {
        let backoff = {
            let mut s = self.lock();
            // Calls that were already in flight when the remote went down
            // fail together; count them as one failure.
            if s.down_until.is_some_and(|t| now < t) {
                return;
            }
            s.backoff = (s.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
            s.down_until = Some(now + s.backoff);
            s.backoff
        };
        let first = !self.warned.swap(true, Ordering::Relaxed);
        if first && self.uploads {
            tracing::warn!(
                "cairn gocacheprog: uploads to remote cache {} are failing ({what}: {error}); this build's \
                 results may not be shared, retrying in the background (reads go on; shown once)",
                self.url
            );
        } else if first {
            tracing::warn!(
                "cairn gocacheprog: remote cache {} is failing ({what}: {error}); continuing with the local \
                 cache only, retrying in the background (this warning is shown once)",
                self.url
            );
        } else {
            tracing::debug!(remote = %self.url, ?backoff, "{what} failed: {error}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing can panic while the lock is held; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backs_off_doubling_and_recovers() {
        let h = Health::new("grpc://x");
        let t0 = Instant::now();
        assert!(h.usable_at(t0));

        h.failed_at(t0, "get", &"boom");
        assert!(!h.usable_at(t0));
        assert!(!h.usable_at(t0 + FIRST_BACKOFF - Duration::from_millis(1)));
        assert!(h.usable_at(t0 + FIRST_BACKOFF));

        // Failures during the back-off (calls already in flight) don't extend it.
        h.failed_at(t0 + Duration::from_millis(10), "get", &"boom");
        assert!(h.usable_at(t0 + FIRST_BACKOFF));

        // The retry fails too: twice as long.
        let t1 = t0 + FIRST_BACKOFF;
        h.failed_at(t1, "get", &"boom");
        assert!(!h.usable_at(t1 + FIRST_BACKOFF));
        assert!(h.usable_at(t1 + 2 * FIRST_BACKOFF));

        // Capped.
        let mut t = t1 + 2 * FIRST_BACKOFF;
        for _ in 0..20 {
            h.failed_at(t, "get", &"boom");
            t += MAX_BACKOFF;
        }
        assert!(h.usable_at(t));
        h.failed_at(t, "get", &"boom");
        assert!(!h.usable_at(t + MAX_BACKOFF - Duration::from_millis(1)));
        assert!(h.usable_at(t + MAX_BACKOFF));

        // One success resets everything.
        h.ok();
        assert!(h.usable_at(t));
        h.failed_at(t, "get", &"boom");
        assert!(h.usable_at(t + FIRST_BACKOFF));
        assert!(h.warned.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn reads_and_writes_back_off_apart_but_warn_once() {
        let reads = Health::new("grpc://x");
        let writes = Health::for_uploads(&reads);
        let t0 = Instant::now();
        writes.failed_at(t0, "upload", &"disk full");
        assert!(!writes.usable_at(t0), "uploads back off");
        assert!(reads.usable_at(t0), "reads are not held against failing writes");
        assert!(reads.warned.load(Ordering::Relaxed), "the one warning is shared: a dead server warns once");
    }
}
