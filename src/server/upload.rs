//! The disk side of a ByteStream Write, without a thread per stream: the
//! async task receives messages and gathers them into batches of up to
//! [`BATCH_BYTES`]; each batch is hashed and written by one short blocking
//! task, while the next batch is being received. A stream that sends nothing
//! holds no thread, only its (budgeted) pending bytes.

use bytes::Bytes;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::error::Error;
use crate::server::blocking;
use crate::server::budget::Held;
use crate::server::status::to_status;
use crate::store::zstd::ZstdUpload;
use crate::store::{BlobWriter, Store};

/// Client bytes gathered before one hand-off to a blocking thread. Bazel sends
/// 16 KiB messages; a MiB amortises the thread hop (tens of µs) over a MiB of
/// hashing and writing, yet keeps what a stream holds small.
pub const BATCH_BYTES: usize = 1 << 20;

/// An upload in progress, plain or zstd-compressed on the wire.
pub enum Upload {
    Plain(BlobWriter),
    Zstd(ZstdUpload),
}

impl Upload {
    /// Offset in the client's byte stream taken in so far (compressed bytes for zstd).
    pub fn offset(&self) -> u64 {
        match self {
            Upload::Plain(w) => w.written(),
            Upload::Zstd(z) => z.compressed_written(),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        match self {
            Upload::Plain(w) => w.write(data),
            Upload::Zstd(z) => z.write(data),
        }
    }

    fn commit(self) -> Result<(), Error> {
        match self {
            Upload::Plain(w) => w.commit(),
            Upload::Zstd(z) => z.commit(),
        }
    }

    /// Keeps an interrupted plain upload for resumption. Compressed uploads
    /// restart from zero: a decoder's state cannot be parked cheaply.
    fn park(self, store: &Store, resource: String) {
        if let Upload::Plain(w) = self {
            store.uploads().park(resource, w);
        }
    }
}

/// What a batch's blocking task hands back: the upload, and how the batch went.
type Landed = (Upload, Result<(), Error>);

/// An upload plus the bytes received for it but not yet on disk. Dropping it
/// abandons the upload (its bytes are discarded by the store).
pub struct Spool {
    store: Store,
    /// The upload, while no batch is in flight.
    upload: Option<Upload>,
    /// The batch being written by a blocking task (it owns the upload meanwhile).
    inflight: Option<JoinHandle<Landed>>,
    /// Received messages not yet handed off, and the budget they hold.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    pending_held: Option<Held>,
    /// Budget held for the upload's own state (an in-memory spool, a zstd decoder).
    _state_held: Option<Held>,
    /// Bytes taken in by the upload (hashed and written): what QueryWriteStatus reports.
    committed: u64,
    /// Offset of the client's stream accepted so far (committed + pending + in flight).
    received: u64,
}

impl Spool {
    /// Wraps `upload`; `state_held` is the budget for its in-memory state.
    pub fn new(store: Store, upload: Upload, state_held: Option<Held>) -> Spool {
        let offset = upload.offset();
        Spool {
            store,
            upload: Some(upload),
            inflight: None,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_held: None,
            _state_held: state_held,
            committed: offset,
            received: offset,
        }
    }

    /// Bytes hashed and written to the spool: what QueryWriteStatus reports.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Offset of the client's stream accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes received and not yet handed to a blocking task.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// True while a batch is being written.
    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// True when a batch could be handed off now (something pending, no thread busy).
    pub fn can_launch(&self) -> bool {
        self.inflight.is_none() && !self.pending.is_empty()
    }

    /// Adds received bytes, with the budget they hold, to the next batch.
    pub fn queue(&mut self, data: Bytes, held: Held) {
        self.received += data.len() as u64;
        self.pending_bytes += data.len();
        self.pending.push(data);
        match &mut self.pending_held {
            Some(h) => h.merge(held),
            None => self.pending_held = Some(held),
        }
    }

    /// Hands the pending bytes to a blocking task. Their budget is released
    /// when that task finishes, whether or not anyone awaits it.
    pub fn launch(&mut self) {
        let Some(mut upload) = self.upload.take() else { return };
        let batch = std::mem::take(&mut self.pending);
        let held = self.pending_held.take();
        self.pending_bytes = 0;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let _held = held;
            let result = batch.iter().try_for_each(|data| upload.write(data));
            (upload, result)
        }));
    }

    /// Waits for the batch in flight and takes the upload back. Cancel-safe:
    /// if this future is dropped early, the batch stays in flight.
    pub async fn land(&mut self) -> Result<(), Status> {
        let Some(handle) = self.inflight.as_mut() else { return Ok(()) };
        let joined = handle.await;
        self.inflight = None;
        match joined {
            Ok((upload, result)) => {
                self.committed = upload.offset();
                self.upload = Some(upload);
                result.map_err(to_status)
            }
            Err(e) => Err(Status::internal(format!("upload task failed: {e}"))),
        }
    }

    /// Writes everything received so far.
    pub async fn flush(&mut self) -> Result<(), Status> {
        loop {
            self.land().await?;
            if self.pending.is_empty() {
                return Ok(());
            }
            self.launch();
        }
    }

    /// Writes the rest, then verifies and publishes the blob.
    pub async fn commit(mut self) -> Result<(), Status> {
        self.flush().await?;
        let upload = self.upload.take().ok_or_else(|| Status::internal("upload lost before commit"))?;
        blocking(move || upload.commit()).await
    }

    /// Writes the rest and keeps the upload under `resource` so the client can
    /// resume it. Returns the bytes kept.
    pub async fn park(mut self, resource: String) -> Result<u64, Status> {
        self.flush().await?;
        let committed = self.committed;
        if let Some(upload) = self.upload.take() {
            let store = self.store.clone();
            blocking(move || {
                upload.park(&store, resource);
                Ok(())
            })
            .await?;
        }
        Ok(committed)
    }

    /// Abandons the upload; its temp file is gone when this returns.
    pub async fn discard(mut self) {
        let _ = self.land().await;
        if let Some(upload) = self.upload.take() {
            let _ = blocking(move || {
                drop(upload);
                Ok(())
            })
            .await;
        }
    }
}
