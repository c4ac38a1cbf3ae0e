//! ByteStream Read / Write / QueryWriteStatus over REAPI resource names.
//! Neither direction holds a thread for the life of a stream: reads produce
//! each chunk with a short blocking task when the client wants it
//! ([`download`]), writes hand batches of received bytes to short blocking
//! tasks ([`upload`]). Writes hash and spool as bytes arrive and publish only
//! after verification. An upload cut off mid-stream (or idle too long) is
//! parked so QueryWriteStatus can report it and the client can resume from
//! `committed_size`.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Access;
use crate::digest::{Compressor, ResourceName};
use crate::error::Error;
use crate::proto::bytestream::{self, byte_stream_server::ByteStream};
use crate::server::auth::{credentials, Guard};
use crate::server::blocking;
use crate::server::budget::{Budget, Held, ZSTD_STATE_BYTES};
use crate::server::download::{self, Accounting, Chunks, ReadStream};
use crate::server::status::{to_status, IntoStatus};
use crate::server::upload::{Spool, Upload, BATCH_BYTES};
use crate::store::tiered::Tiered;
use crate::store::zstd::{ZstdReader, ZstdUpload};
use crate::store::{BlobWriter, Store, INLINE_MAX};

/// The ByteStream service.
pub struct ByteStreamService {
    pub store: Store,
    /// Fills local misses from the tier behind the store, if any.
    pub tiers: Tiered,
    /// Bounds the stream data held in memory across all calls.
    pub budget: Budget,
    /// A stream without progress for this long is cancelled.
    pub idle: Option<Duration>,
    /// Who may read and write which instance.
    pub guard: Guard,
}

impl ByteStreamService {
    /// Budget for what an upload holds in memory for its whole life: a small
    /// blob's in-memory spool (sized by its declared size), a zstd decoder.
    fn upload_state_budget(&self, size: u64, compressed: bool) -> Result<Option<Held>, Status> {
        let spool = if size <= INLINE_MAX { size as usize } else { 0 };
        let n = spool + if compressed { ZSTD_STATE_BYTES } else { 0 };
        if n == 0 {
            return Ok(None);
        }
        self.budget.take_now(n, "a new ByteStream write's in-memory state").map(Some)
    }

    /// The status of an upload cancelled for idleness (one log line for it).
    fn idle_status(&self, resource: &str, kept: u64) -> Status {
        let idle = self.idle.unwrap_or_default();
        tracing::info!(upload = %resource, kept, ?idle, "cancelled an upload that sent nothing");
        Status::deadline_exceeded(format!(
            "no data arrived on {resource} for {idle:?} (--stream-idle-timeout); the upload was cancelled, \
             keeping {kept} bytes: ask QueryWriteStatus and resume from committed_size"
        ))
    }
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<bytestream::ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let creds = credentials(&request);
        let req = request.into_inner();
        let name = ResourceName::parse_read(&req.resource_name).status()?;
        self.guard.check(&creds, &name.instance, Access::Read)?;
        // ByteStream: "A read_offset that is negative or greater than the size
        // of the resource will cause an OUT_OF_RANGE error."
        if req.read_offset < 0 {
            return Err(Status::out_of_range(format!("read_offset {} is negative", req.read_offset)));
        }
        // ByteStream: "a negative read_limit will cause an error": the request
        // itself is malformed, whatever the resource's size.
        if req.read_limit < 0 {
            return Err(Status::invalid_argument(format!("read_limit {} is negative", req.read_limit)));
        }
        let compressed = name.compressor != Compressor::Identity;
        // REAPI, compressed-blobs: "Servers MUST return INVALID_ARGUMENT if
        // ReadRequest.read_limit is non-zero", and read_offset "refers to the
        // offset in the uncompressed form of the blob".
        if compressed && req.read_limit != 0 {
            return Err(Status::invalid_argument(format!(
                "read_limit {} must be 0 for a compressed-blobs read (REAPI forbids limits on compressed reads)",
                req.read_limit
            )));
        }
        let limit = (req.read_limit > 0).then_some(req.read_limit as u64);
        let digest = name.digest;
        let offset = req.read_offset as u64;
        let in_memory = digest.size <= INLINE_MAX;
        // An in-memory blob is held whole from open to the end of the read.
        let blob_state = if in_memory { digest.size as usize } else { 0 };
        let state = blob_state + if compressed { ZSTD_STATE_BYTES } else { 0 };
        let state_held =
            if state > 0 { Some(self.budget.take(state, "a ByteStream read's in-memory state").await?) } else { None };
        self.tiers.prefetch(std::slice::from_ref(&digest)).await.status()?;
        let store = self.store.clone();
        let chunks = blocking(move || {
            let Some(reader) = store.read(&digest, offset, limit)? else {
                return Ok(None);
            };
            Ok(Some(if compressed { Chunks::Zstd(ZstdReader::new(reader)?) } else { Chunks::Plain(reader) }))
        })
        .await?
        .ok_or_else(|| Status::not_found(format!("blob {digest} is not in the CAS")))?;
        let accounting = Accounting { budget: self.budget.clone(), state_held, budget_chunks: !in_memory };
        Ok(Response::new(download::stream(chunks, accounting, self.idle, req.resource_name)))
    }

    async fn write(
        &self,
        request: Request<Streaming<bytestream::WriteRequest>>,
    ) -> Result<Response<bytestream::WriteResponse>, Status> {
        let creds = credentials(&request);
        let mut stream = request.into_inner();
        let first = match self.idle {
            Some(idle) => tokio::time::timeout(idle, stream.message()).await.map_err(|_| {
                tracing::info!(?idle, "cancelled an upload that sent no first message");
                Status::deadline_exceeded(format!("no first message within {idle:?} (--stream-idle-timeout)"))
            })??,
            None => stream.message().await?,
        }
        .ok_or_else(|| Status::invalid_argument("write stream ended before its first message"))?;
        let resource = first.resource_name.clone();
        let name = ResourceName::parse_write(&resource).status()?;
        self.guard.check(&creds, &name.instance, Access::Write)?;
        let digest = name.digest;
        let compressed = name.compressor != Compressor::Identity;

        // Already stored: answer at once, as the spec allows (-1 for compressed uploads).
        if self.store.contains(&digest).status()? {
            let committed_size = if compressed { -1 } else { digest.size as i64 };
            return Ok(Response::new(bytestream::WriteResponse { committed_size }));
        }

        let state_held = self.upload_state_budget(digest.size, compressed)?;
        let parked = if compressed { None } else { self.store.uploads().take(&resource) };
        let upload = match (first.write_offset, parked) {
            (0, parked) => {
                if let Some(old) = parked {
                    tokio::task::spawn_blocking(move || drop(old));
                }
                let store = self.store.clone();
                blocking(move || {
                    let w = store.begin_write(digest)?;
                    Ok(if compressed { Upload::Zstd(ZstdUpload::new(w)?) } else { Upload::Plain(w) })
                })
                .await?
            }
            (off, Some(w)) if off == w.written() as i64 => Upload::Plain(w),
            (off, other) => {
                let held = other.as_ref().map_or(0, BlobWriter::written);
                if let Some(w) = other {
                    self.store.uploads().park(resource.clone(), w);
                }
                return Err(Status::invalid_argument(format!(
                    "write_offset {off} does not match the {held} bytes the server holds for {resource}; \
                     ask QueryWriteStatus and resume from committed_size"
                )));
            }
        };

        let live = self.store.uploads().start_live(&resource, upload.offset());
        let mut spool = Spool::new(self.store.clone(), upload, state_held);
        let mut msg = Some(first);
        let mut deadline = self.idle.map(|i| Instant::now() + i);
        loop {
            if let Some(m) = msg.take() {
                if let Err(status) = check_message(&m, &resource, spool.received()) {
                    spool.discard().await;
                    return Err(status);
                }
                if !m.data.is_empty() {
                    // Our own pending batch may be what holds the budget: write it first.
                    if spool.can_launch() && self.budget.available() < m.data.len() {
                        spool.launch();
                    }
                    let held = match self.budget.take(m.data.len(), "a ByteStream write").await {
                        Ok(h) => h,
                        Err(status) => {
                            let _ = spool.park(resource).await;
                            return Err(status);
                        }
                    };
                    spool.queue(m.data, held);
                    deadline = self.idle.map(|i| Instant::now() + i);
                }
                if m.finish_write {
                    let size = spool.received() as i64;
                    spool.commit().await?;
                    return Ok(Response::new(bytestream::WriteResponse { committed_size: size }));
                }
            }
            if spool.can_launch() && spool.pending_bytes() >= BATCH_BYTES {
                spool.launch();
            }
            let next = if spool.pending_bytes() >= BATCH_BYTES {
                // A batch in flight and a full one waiting: let the disk catch up first.
                spool.land().await?;
                live.set(spool.committed());
                continue;
            } else if spool.can_launch() {
                // The thread is free: take a message only if one is already
                // here, else write what is pending now rather than wait.
                match stream.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        spool.launch();
                        continue;
                    }
                }
            } else {
                let idle = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    landed = spool.land(), if spool.in_flight() => {
                        landed?;
                        live.set(spool.committed());
                        continue;
                    }
                    next = stream.next() => next,
                    _ = idle => {
                        let kept = spool.park(resource.clone()).await?;
                        return Err(self.idle_status(&resource, kept));
                    }
                }
            };
            match next {
                Some(Ok(m)) => msg = Some(m),
                None => {
                    // The client half-closed without finish_write: keep what it sent.
                    let kept = spool.park(resource).await?;
                    return Ok(Response::new(bytestream::WriteResponse { committed_size: kept as i64 }));
                }
                Some(Err(status)) => {
                    // Disconnect or cancel: keep the bytes so the client can resume.
                    tracing::debug!(resource = %resource, received = spool.received(), "upload interrupted");
                    let _ = spool.park(resource).await;
                    return Err(status);
                }
            }
        }
    }

    async fn query_write_status(
        &self,
        request: Request<bytestream::QueryWriteStatusRequest>,
    ) -> Result<Response<bytestream::QueryWriteStatusResponse>, Status> {
        let creds = credentials(&request);
        let resource = request.into_inner().resource_name;
        let name = ResourceName::parse_write(&resource).status()?;
        // Only writers have uploads to ask about.
        self.guard.check(&creds, &name.instance, Access::Write)?;
        let digest = name.digest;
        if self.store.contains(&digest).status()? {
            return Ok(Response::new(bytestream::QueryWriteStatusResponse {
                committed_size: digest.size as i64,
                complete: true,
            }));
        }
        // Live uploads report bytes written to their spool, not bytes queued.
        match self.store.uploads().progress(&resource) {
            Some(n) => {
                Ok(Response::new(bytestream::QueryWriteStatusResponse { committed_size: n as i64, complete: false }))
            }
            None => Err(to_status(Error::NotFound(format!("no upload in progress for {resource}")))),
        }
    }
}

/// Checks a message continues the stream: same resource, the next offset.
fn check_message(m: &bytestream::WriteRequest, resource: &str, received: u64) -> Result<(), Status> {
    if !m.resource_name.is_empty() && m.resource_name != resource {
        return Err(Status::invalid_argument(format!(
            "resource_name changed mid-stream from {resource:?} to {:?}",
            m.resource_name
        )));
    }
    if m.write_offset != received as i64 {
        return Err(Status::invalid_argument(format!(
            "write_offset {} does not follow the {received} bytes already sent",
            m.write_offset
        )));
    }
    Ok(())
}
