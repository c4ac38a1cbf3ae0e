//! ByteStream Read / Write / QueryWriteStatus over REAPI resource names.
//! Reads stream the blob in chunks from a blocking task; writes hash and spool
//! as bytes arrive and publish only after verification. An upload cut off
//! mid-stream is parked so QueryWriteStatus can report it and the client can
//! resume from `committed_size`.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::digest::{Compressor, ResourceName};
use crate::error::Error;
use crate::proto::bytestream::{self, byte_stream_server::ByteStream};
use crate::server::blocking;
use crate::server::status::{to_status, IntoStatus};
use crate::store::zstd::{ZstdReader, ZstdUpload};
use crate::store::{BlobReader, BlobWriter, Store};

/// Bytes per ReadResponse: large enough to amortise framing, far below
/// gRPC's 4 MiB default message limit.
const READ_CHUNK: usize = 1 << 20;

/// The ByteStream service.
pub struct ByteStreamService {
    pub store: Store,
}

/// Chunks queued between the receiving task and the hashing thread; bounds
/// the memory of one upload to this many messages.
const PIPELINE_DEPTH: usize = 4;

/// What the hashing thread is told to do next.
enum Step {
    Data(bytes::Bytes),
    /// Verify and publish.
    Commit,
    /// Keep the bytes received under this resource name for resumption.
    Park(String),
}

/// Feeds an upload to a blocking thread that hashes and spools it, so
/// receiving the next chunk from the network overlaps with hashing and
/// writing the last, and no file I/O runs on the async workers. Dropping the
/// pipeline abandons the upload (its bytes are discarded).
struct Pipeline {
    tx: tokio::sync::mpsc::Sender<Step>,
    /// The thread's verdict; taken once it is awaited.
    done: Option<tokio::task::JoinHandle<Result<(), Error>>>,
    /// Bytes of the client's stream accepted so far.
    offset: u64,
}

impl Pipeline {
    fn start(upload: Upload, store: Store) -> Pipeline {
        let offset = upload.offset();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Step>(PIPELINE_DEPTH);
        let done = tokio::task::spawn_blocking(move || {
            let mut upload = upload;
            while let Some(step) = rx.blocking_recv() {
                match step {
                    Step::Data(data) => upload.write(&data)?,
                    Step::Commit => return upload.commit(),
                    Step::Park(name) => {
                        upload.park(&store, name);
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        Pipeline { tx, done: Some(done), offset }
    }

    /// Queues a chunk. If the thread has stopped (bad data, full disk), its error.
    async fn send(&mut self, data: bytes::Bytes) -> Result<(), Status> {
        let n = data.len() as u64;
        if self.tx.send(Step::Data(data)).await.is_err() {
            return Err(self.join().await.err().unwrap_or_else(|| Status::internal("upload thread stopped early")));
        }
        self.offset += n;
        Ok(())
    }

    /// Sends the last step and waits for the thread's verdict.
    async fn finish(mut self, step: Step) -> Result<(), Status> {
        let _ = self.tx.send(step).await;
        self.join().await
    }

    async fn join(&mut self) -> Result<(), Status> {
        match self.done.take() {
            Some(handle) => match handle.await {
                Ok(result) => result.map_err(to_status),
                Err(e) => Err(Status::internal(format!("upload thread failed: {e}"))),
            },
            None => Err(Status::internal("upload thread already joined")),
        }
    }
}

/// Where a Read's chunks come from: the stored bytes, or those compressed.
/// For compressed reads, read_offset and read_limit count compressed bytes,
/// so the window is applied to the compressed stream.
enum Chunks {
    Plain(BlobReader),
    Zstd { reader: ZstdReader, skip: u64, remaining: Option<u64> },
}

impl Chunks {
    fn next_chunk(&mut self, max: usize) -> Result<Option<bytes::Bytes>, Error> {
        let (reader, skip, remaining) = match self {
            Chunks::Plain(r) => return r.next_chunk(max),
            Chunks::Zstd { reader, skip, remaining } => (reader, skip, remaining),
        };
        loop {
            if *remaining == Some(0) {
                return Ok(None);
            }
            let Some(mut chunk) = reader.next_chunk(max)? else {
                return if *skip > 0 {
                    Err(Error::OutOfRange("read_offset is past the end of the compressed blob".into()))
                } else {
                    Ok(None)
                };
            };
            let drop = (*skip).min(chunk.len() as u64) as usize;
            *skip -= drop as u64;
            let _ = chunk.split_to(drop);
            if let Some(r) = remaining {
                chunk.truncate((*r).min(chunk.len() as u64) as usize);
                *r -= chunk.len() as u64;
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }
}

pub type ReadStream = Pin<Box<dyn Stream<Item = Result<bytestream::ReadResponse, Status>> + Send>>;

/// An upload in progress, plain or zstd-compressed on the wire.
enum Upload {
    Plain(BlobWriter),
    Zstd(ZstdUpload),
}

impl Upload {
    /// Offset in the client's byte stream (compressed bytes for zstd).
    fn offset(&self) -> u64 {
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

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<bytestream::ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let req = request.into_inner();
        let name = ResourceName::parse_read(&req.resource_name).status()?;
        if req.read_offset < 0 {
            return Err(Status::out_of_range(format!("read_offset {} is negative", req.read_offset)));
        }
        if req.read_limit < 0 {
            return Err(Status::out_of_range(format!("read_limit {} is negative", req.read_limit)));
        }
        let limit = (req.read_limit > 0).then_some(req.read_limit as u64);
        let digest = name.digest;
        let store = self.store.clone();
        // For compressed reads the window applies to the compressed stream.
        let compressed = name.compressor != Compressor::Identity;
        let (raw_offset, raw_limit) = if compressed { (0, None) } else { (req.read_offset as u64, limit) };
        let reader = blocking(move || store.read(&digest, raw_offset, raw_limit))
            .await?
            .ok_or_else(|| Status::not_found(format!("blob {digest} is not in the CAS")))?;
        let mut reader = if compressed {
            let reader = ZstdReader::new(reader).status()?;
            Chunks::Zstd { reader, skip: req.read_offset as u64, remaining: limit }
        } else {
            Chunks::Plain(reader)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            loop {
                let msg = match reader.next_chunk(READ_CHUNK) {
                    Ok(Some(data)) => Ok(bytestream::ReadResponse { data }),
                    Ok(None) => return,
                    Err(e) => Err(to_status(e)),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return; // Client gone, or the error was sent.
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write(
        &self,
        request: Request<Streaming<bytestream::WriteRequest>>,
    ) -> Result<Response<bytestream::WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("write stream ended before its first message"))?;
        let resource = first.resource_name.clone();
        let name = ResourceName::parse_write(&resource).status()?;
        let digest = name.digest;
        let compressed = name.compressor != Compressor::Identity;

        // Already stored: answer at once, as the spec allows (-1 for compressed uploads).
        if self.store.contains(&digest).status()? {
            let committed_size = if compressed { -1 } else { digest.size as i64 };
            return Ok(Response::new(bytestream::WriteResponse { committed_size }));
        }

        let parked = if compressed { None } else { self.store.uploads().take(&resource) };
        let upload = match (first.write_offset, parked) {
            (0, _) => {
                let w = self.store.begin_write(digest).status()?;
                if compressed {
                    Upload::Zstd(ZstdUpload::new(w).status()?)
                } else {
                    Upload::Plain(w)
                }
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
        let mut pipeline = Pipeline::start(upload, self.store.clone());
        let mut msg = first;
        loop {
            if !msg.resource_name.is_empty() && msg.resource_name != resource {
                return Err(Status::invalid_argument(format!(
                    "resource_name changed mid-stream from {resource:?} to {:?}",
                    msg.resource_name
                )));
            }
            if msg.write_offset != pipeline.offset as i64 {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not follow the {} bytes already sent",
                    msg.write_offset, pipeline.offset
                )));
            }
            pipeline.send(msg.data).await?;
            live.set(pipeline.offset);
            if msg.finish_write {
                let size = pipeline.offset as i64;
                pipeline.finish(Step::Commit).await?;
                return Ok(Response::new(bytestream::WriteResponse { committed_size: size }));
            }
            match stream.message().await {
                Ok(Some(next)) => msg = next,
                Ok(None) => {
                    // The client half-closed without finish_write: keep what it sent.
                    let size = pipeline.offset as i64;
                    pipeline.finish(Step::Park(resource)).await?;
                    return Ok(Response::new(bytestream::WriteResponse { committed_size: size }));
                }
                Err(status) => {
                    // Disconnect or cancel: keep the bytes so the client can resume.
                    tracing::debug!(resource = %resource, received = pipeline.offset, "upload interrupted");
                    let _ = pipeline.finish(Step::Park(resource)).await;
                    return Err(status);
                }
            }
        }
    }

    async fn query_write_status(
        &self,
        request: Request<bytestream::QueryWriteStatusRequest>,
    ) -> Result<Response<bytestream::QueryWriteStatusResponse>, Status> {
        let resource = request.into_inner().resource_name;
        let name = ResourceName::parse_write(&resource).status()?;
        let digest = name.digest;
        if self.store.contains(&digest).status()? {
            return Ok(Response::new(bytestream::QueryWriteStatusResponse {
                committed_size: digest.size as i64,
                complete: true,
            }));
        }
        match self.store.uploads().progress(&resource) {
            Some(n) => {
                Ok(Response::new(bytestream::QueryWriteStatusResponse { committed_size: n as i64, complete: false }))
            }
            None => Err(to_status(Error::NotFound(format!("no upload in progress for {resource}")))),
        }
    }
}
