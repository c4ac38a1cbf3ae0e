//! The memory budget of streams in flight: one count of bytes shared by
//! every ByteStream call, so the data the server holds for clients (upload
//! batches on their way to disk, download chunks on their way to the network,
//! small uploads spooled in memory, zstd state) stays under
//! `--max-buffered-bytes` however many clients there are. When it is spent,
//! a new upload is refused at once with RESOURCE_EXHAUSTED naming the limit;
//! running streams and new reads wait a bounded time for a release first.
//!
//! Deliberately not a fair (FIFO) semaphore: a large request waiting at the
//! head of a queue would block the small per-message requests of streams
//! already admitted, and they hold the very bytes it waits for. Here every
//! waiter retries on each release, so small requests pass a large one, which
//! at worst times out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::Status;

use crate::config::human_size;

/// Longest wait for budget when no idle timeout is configured.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Bytes counted for the zstd encoder or decoder of one stream: an estimate of
/// a level-1 encoder's or a decoder's window and buffers for ordinary frames,
/// counted so that many idle compressed streams can't hold memory unseen. (A
/// decoder's window is whatever the frame declares, up to zstd's own limit;
/// bounding it by the declared blob size is store/zstd.rs's job.)
pub const ZSTD_STATE_BYTES: usize = 1 << 20;

struct Inner {
    /// Bytes not held by anyone.
    free: Mutex<usize>,
    /// Wakes waiters when bytes are returned.
    released: Notify,
    total: usize,
}

/// Shared by all streams; cheap to clone.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
    /// How long new work waits for budget before RESOURCE_EXHAUSTED.
    wait: Duration,
}

/// Budget held by one piece of work; returned when dropped.
pub struct Held {
    inner: Arc<Inner>,
    bytes: usize,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes over what `other` holds (both return together).
    pub fn merge(&mut self, mut other: Held) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            *self.inner.free.lock().unwrap_or_else(|p| p.into_inner()) += self.bytes;
            self.inner.released.notify_waiters();
        }
    }
}

impl Budget {
    /// A budget of `total` bytes; a request waits at most `wait` (capped at 30 s).
    pub fn new(total: u64, wait: Option<Duration>) -> Budget {
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        let wait = wait.map_or(MAX_WAIT, |w| w.min(MAX_WAIT));
        let inner = Arc::new(Inner { free: Mutex::new(total), released: Notify::new(), total });
        Budget { inner, wait }
    }

    /// Takes `n` bytes if at least `keep` stay free afterwards.
    fn try_take(&self, n: usize, keep: usize) -> Option<Held> {
        let mut free = self.inner.free.lock().unwrap_or_else(|p| p.into_inner());
        if *free < n.saturating_add(keep) {
            return None;
        }
        *free -= n;
        Some(Held { inner: self.inner.clone(), bytes: n })
    }

    /// Takes `n` bytes now for the lifetime of a new upload, or refuses at
    /// once with RESOURCE_EXHAUSTED naming the limit. Refused, not queued:
    /// while it waited, the data its client has already sent would sit unread
    /// in the connection's HTTP/2 window and hold up every other call on that
    /// connection. A quarter of the budget is kept for data in flight, so
    /// uploads already running always find room for their next message.
    pub fn take_now(&self, n: usize, what: &str) -> Result<Held, Status> {
        self.try_take(n, self.inner.total / 4).ok_or_else(|| {
            tracing::warn!(what, bytes = n, "stream buffer budget exhausted; refusing a new upload");
            Status::resource_exhausted(format!(
                "the server's stream buffer budget (--max-buffered-bytes {}) is spent, so {what} ({}) was \
                 refused; too many streams in flight, retry later",
                human_size(self.inner.total as u64),
                human_size(n as u64)
            ))
        })
    }

    /// Takes `n` bytes of the budget for `what` (named in the error), waiting
    /// a bounded time for other streams to release theirs.
    pub async fn take(&self, n: usize, what: &str) -> Result<Held, Status> {
        let total = self.inner.total;
        if n > total {
            return Err(Status::resource_exhausted(format!(
                "{what} needs {} at once, more than the server's whole stream buffer budget \
                 (--max-buffered-bytes {}); send smaller messages",
                human_size(n as u64),
                human_size(total as u64)
            )));
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Register for the next release before looking, so none is missed.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(held) = self.try_take(n, 0) {
                return Ok(held);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                tracing::warn!(what, bytes = n, "stream buffer budget exhausted; refusing work");
                return Err(Status::resource_exhausted(format!(
                    "the server's stream buffer budget (--max-buffered-bytes {}) stayed spent for {:?} \
                     while {what} waited for {}; too many streams in flight, retry later",
                    human_size(total as u64),
                    self.wait,
                    human_size(n as u64)
                )));
            }
        }
    }

    /// Bytes currently free.
    pub fn available(&self) -> usize {
        *self.inner.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_then_refuses_naming_the_limit() {
        let b = Budget::new(1000, Some(Duration::from_millis(50)));
        let held = b.take(800, "a test").await.unwrap();
        let err = b.take(300, "a second test").await.err().expect("over budget");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("--max-buffered-bytes"), "{}", err.message());
        assert!(err.message().contains("a second test"), "{}", err.message());
        drop(held);
        assert_eq!(b.take(300, "a third").await.unwrap().bytes(), 300);
        // A large request waiting does not hold up small ones behind it.
        let held = b.take(900, "most").await.unwrap();
        let (big, small) = tokio::join!(b.take(500, "a large request"), async {
            tokio::task::yield_now().await;
            b.take(50, "a small request").await
        });
        assert!(big.is_err() && small.is_ok(), "a small request waited behind a large one");
        drop(held);
        let err = b.take(2000, "a huge message").await.err().expect("over the total");
        assert!(err.message().contains("more than the server's whole"), "{}", err.message());
    }
}
