//! The body of a ByteStream Read, without a thread per stream: each chunk is
//! read (and compressed) by one short blocking task when the transport asks
//! for it, so a client that stops reading holds no thread and no buffered
//! chunk, only its open blob (a file, or a small blob's bytes, budgeted). A watchdog closes the blob and ends the stream
//! with DEADLINE_EXCEEDED when the client takes nothing for the idle timeout.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;
use tonic::Status;

use crate::error::Error;
use crate::proto::bytestream;
use crate::server::budget::{Budget, Held};
use crate::server::status::to_status;
use crate::store::zstd::ZstdReader;
use crate::store::BlobReader;

/// Bytes per ReadResponse: large enough to amortise framing and the thread
/// hop, far below gRPC's 4 MiB default message limit.
pub const READ_CHUNK: usize = 1 << 20;

/// The response stream of a Read.
pub type ReadStream = Pin<Box<dyn Stream<Item = Result<bytestream::ReadResponse, Status>> + Send>>;

/// Where a Read's chunks come from: the stored bytes, or those compressed.
pub enum Chunks {
    Plain(BlobReader),
    Zstd(ZstdReader),
}

impl Chunks {
    /// Bytes the next chunk may take in memory.
    fn next_size(&self) -> usize {
        match self {
            Chunks::Plain(r) => r.remaining().min(READ_CHUNK as u64) as usize,
            Chunks::Zstd(_) => READ_CHUNK,
        }
    }

    fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        match self {
            Chunks::Plain(r) => r.next_chunk(max),
            Chunks::Zstd(r) => r.next_chunk(max),
        }
    }
}

/// What the stream and its watchdog share.
struct Shared {
    /// The open blob; None while a chunk is being read, and after a timeout.
    chunks: Option<Chunks>,
    /// When the transport last asked for a chunk (the client is reading).
    last_asked: Instant,
    /// The status to end with, set by the watchdog.
    cancelled: Option<Status>,
}

/// The stream's own state, carried from chunk to chunk.
struct Body {
    shared: Arc<Mutex<Shared>>,
    budget: Budget,
    /// Whether chunks need budget of their own (file reads). In-memory blobs
    /// and compressors are budgeted once, by `state_held`, for the whole read.
    budget_chunks: bool,
    _state_held: Option<Held>,
    /// Stops the watchdog when the stream is dropped or done.
    watchdog: Option<tokio::task::AbortHandle>,
    done: bool,
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a read is accounted against the budget.
pub struct Accounting {
    pub budget: Budget,
    /// Budget already taken for what the reader holds for its whole life (an
    /// in-memory blob, a compressor).
    pub state_held: Option<Held>,
    /// Whether each chunk takes budget while it is read (file blobs); an
    /// in-memory blob's chunks are slices of bytes already counted.
    pub budget_chunks: bool,
}

/// Streams `chunks` as ReadResponses, cancelled after `idle` without a request
/// for more. `what` names the read in the cancellation status and log line.
pub fn stream(chunks: Chunks, accounting: Accounting, idle: Option<Duration>, what: String) -> ReadStream {
    let Accounting { budget, state_held, budget_chunks } = accounting;
    let shared = Arc::new(Mutex::new(Shared { chunks: Some(chunks), last_asked: Instant::now(), cancelled: None }));
    let watchdog = idle.map(|idle| tokio::spawn(watch(shared.clone(), idle, what)).abort_handle());
    let body = Body { shared, budget, budget_chunks, _state_held: state_held, watchdog, done: false };
    Box::pin(futures::stream::unfold(body, next))
}

/// Produces the next message, or ends the stream.
async fn next(mut body: Body) -> Option<(Result<bytestream::ReadResponse, Status>, Body)> {
    if body.done {
        return None;
    }
    let size = {
        let mut s = lock(&body.shared);
        s.last_asked = Instant::now();
        s.chunks.as_ref().map_or(0, Chunks::next_size)
    };
    let held = if body.budget_chunks {
        match body.budget.take(size, "a ByteStream read").await {
            Ok(h) => Some(h),
            Err(status) => return finish(body, status),
        }
    } else {
        None
    };
    let taken = {
        let mut s = lock(&body.shared);
        match s.cancelled.take() {
            Some(status) => Err(status),
            None => s.chunks.take().ok_or_else(|| Status::internal("read state lost")),
        }
    };
    let mut chunks = match taken {
        Ok(c) => c,
        Err(status) => return finish(body, status),
    };
    let read = tokio::task::spawn_blocking(move || {
        let r = chunks.next_chunk(READ_CHUNK);
        (chunks, r)
    })
    .await;
    drop(held); // The chunk now belongs to the transport.
    match read {
        Ok((chunks, Ok(Some(data)))) => {
            let mut s = lock(&body.shared);
            s.chunks = Some(chunks);
            s.last_asked = Instant::now();
            drop(s);
            Some((Ok(bytestream::ReadResponse { data }), body))
        }
        Ok((_, Ok(None))) => {
            body.done = true;
            None
        }
        Ok((_, Err(e))) => finish(body, to_status(e)),
        Err(e) => finish(body, Status::internal(format!("read task failed: {e}"))),
    }
}

/// Ends the stream with `status` as its last item.
fn finish(mut body: Body, status: Status) -> Option<(Result<bytestream::ReadResponse, Status>, Body)> {
    body.done = true;
    Some((Err(status), body))
}

/// Cancels the read once the client has taken nothing for `idle`: closes the
/// blob (releasing its file and memory) and leaves the status to end with.
async fn watch(shared: Arc<Mutex<Shared>>, idle: Duration, what: String) {
    loop {
        let due = {
            let s = lock(&shared);
            // A chunk being read means the client is reading: look again later.
            if s.chunks.is_none() {
                Instant::now() + idle
            } else {
                s.last_asked + idle
            }
        };
        tokio::time::sleep_until(due).await;
        let mut s = lock(&shared);
        if s.chunks.is_none() || s.last_asked + idle > Instant::now() {
            continue;
        }
        let closed = s.chunks.take();
        s.cancelled = Some(Status::deadline_exceeded(format!(
            "the client took no data from {what} for {idle:?} (--stream-idle-timeout); the read was cancelled"
        )));
        drop(s);
        tracing::info!(read = %what, ?idle, "cancelled a read whose client took nothing");
        tokio::task::spawn_blocking(move || drop(closed));
        return;
    }
}
