//! The one typed REAPI client, shared by `cairn gocacheprog` and `cairn bench`:
//! connect, find missing, upload (batched when small, ByteStream when large),
//! download with verification, and ActionCache get/update. Works against any
//! REAPI v2 server, using only standard RPCs.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{Binary, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::Code;

use crate::digest::{Digest, DigestFunction};
use crate::proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest};
use crate::proto::reapi::{
    self, action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};

mod batch;
mod connect;

pub use connect::{Bearer, Security, Transport};

/// Blobs at most this large go through the batch calls; larger ones through ByteStream.
pub const BATCH_BLOB_MAX: u64 = 1 << 20;
/// Bytes per ByteStream WriteRequest.
const WRITE_CHUNK: usize = 256 * 1024;
/// Digests per FindMissingBlobs call, to keep each request well under 4 MiB.
const FIND_MISSING_CHUNK: usize = 10_000;
/// Used when the server does not advertise a batch limit.
const DEFAULT_BATCH_TOTAL: u64 = 4 * 1024 * 1024 - 64 * 1024;

/// What can go wrong talking to a cache server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: use grpc://host:port (or grpcs://host:port for TLS)")]
    BadAddress(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error("{rpc} failed: {status}")]
    Rpc { rpc: &'static str, status: tonic::Status },
    #[error("blob {digest} from the server does not match its digest ({why}); rejected")]
    Corrupt { digest: String, why: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("TLS or token settings: {0}")]
    Tls(String),
}

type Result<T> = std::result::Result<T, ClientError>;

fn rpc(rpc: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    move |status| ClientError::Rpc { rpc, status }
}

/// A connection to one REAPI server and instance.
#[derive(Clone)]
pub struct Client {
    channel: Transport,
    instance: String,
    function: DigestFunction,
    max_batch_total: u64,
    /// RequestMetadata sent on every call (see [`Client::with_tool`]).
    metadata: Option<MetadataValue<Binary>>,
}

impl Client {
    /// Connects to `addr` (grpc://host:port), failing after `connect_timeout`.
    /// The connection is made now, so an unreachable server is reported at once.
    pub async fn connect(addr: &str, instance: &str, connect_timeout: Duration) -> Result<Client> {
        Client::connect_with(addr, instance, connect_timeout, &Security::default()).await
    }

    /// [`Client::connect`] with TLS settings and a token (`grpcs://` for TLS).
    pub async fn connect_with(
        addr: &str,
        instance: &str,
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<Client> {
        let bearer = Bearer::new(security.token.as_deref())?;
        let channel = connect::endpoint(addr, connect_timeout, security)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
        Ok(Client::over(Transport::new(channel, bearer), instance))
    }

    /// Like [`Client::connect`], but connects on first use instead of now:
    /// for short-lived processes that must not wait on the network to start
    /// (`cairn gocacheprog` runs once per go command). Only a malformed
    /// address fails here; an unreachable server fails each call (each call
    /// tries to connect again, after at most `connect_timeout`). Bound calls
    /// with `tokio::time::timeout`: a server that accepts connections and
    /// never answers is not detected otherwise. Needs a tokio runtime.
    pub fn connect_lazy(addr: &str, instance: &str, connect_timeout: Duration) -> Result<Client> {
        Client::connect_lazy_with(addr, instance, connect_timeout, &Security::default())
    }

    /// [`Client::connect_lazy`] with TLS settings and a token. TLS files are
    /// read now, so a missing one fails here rather than on every call.
    pub fn connect_lazy_with(
        addr: &str,
        instance: &str,
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<Client> {
        let bearer = Bearer::new(security.token.as_deref())?;
        let channel = connect::endpoint(addr, connect_timeout, security)?.connect_lazy();
        Ok(Client::over(Transport::new(channel, bearer), instance))
    }

    fn over(channel: Transport, instance: &str) -> Client {
        Client {
            channel,
            instance: instance.to_string(),
            function: DigestFunction::Sha256,
            max_batch_total: DEFAULT_BATCH_TOTAL,
            metadata: None,
        }
    }

    /// Names the client in a REAPI RequestMetadata header on every call
    /// (`tool_details` and one invocation id per client), as Bazel does, so
    /// the server's metrics can tell its clients apart.
    pub fn with_tool(mut self, name: &str, version: &str) -> Client {
        let md = reapi::RequestMetadata {
            tool_details: Some(reapi::ToolDetails { tool_name: name.into(), tool_version: version.into() }),
            tool_invocation_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        self.metadata = Some(MetadataValue::from_bytes(&md.encode_to_vec()));
        self
    }

    /// The channel with this client's RequestMetadata added to each call.
    fn conn(&self) -> Conn {
        InterceptedService::new(self.channel.clone(), AddMetadata(self.metadata.clone()))
    }

    /// Asks the server's capabilities and adopts its batch limit.
    pub async fn capabilities(&mut self) -> Result<reapi::ServerCapabilities> {
        let caps = CapabilitiesClient::new(self.conn())
            .get_capabilities(reapi::GetCapabilitiesRequest { instance_name: self.instance.clone() })
            .await
            .map_err(rpc("GetCapabilities"))?
            .into_inner();
        if let Some(c) = &caps.cache_capabilities {
            if c.max_batch_total_size_bytes > 0 {
                self.max_batch_total = c.max_batch_total_size_bytes as u64;
            }
        }
        Ok(caps)
    }

    /// The instance name every call carries.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn cas(&self) -> ContentAddressableStorageClient<Conn> {
        ContentAddressableStorageClient::new(self.conn())
            .max_decoding_message_size(self.max_batch_total as usize + (1 << 20))
            .max_encoding_message_size(self.max_batch_total as usize + (1 << 20))
    }

    /// Which of `digests` the server lacks.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_CHUNK) {
            let resp = self
                .cas()
                .find_missing_blobs(reapi::FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: self.function.to_proto() as i32,
                })
                .await
                .map_err(rpc("FindMissingBlobs"))?
                .into_inner();
            for d in resp.missing_blob_digests {
                if let Ok(d) = Digest::parse(self.function, &d.hash, d.size_bytes) {
                    missing.push(d);
                }
            }
        }
        Ok(missing)
    }

    /// Uploads one blob held in memory through ByteStream.
    pub async fn write_bytes(&self, d: &Digest, data: Bytes) -> Result<()> {
        let name = self.upload_name(d);
        let size = data.len();
        let chunks: Vec<WriteRequest> = if size == 0 {
            vec![WriteRequest { resource_name: name, write_offset: 0, finish_write: true, data: Bytes::new() }]
        } else {
            (0..size)
                .step_by(WRITE_CHUNK)
                .map(|off| {
                    let end = (off + WRITE_CHUNK).min(size);
                    WriteRequest {
                        resource_name: if off == 0 { name.clone() } else { String::new() },
                        write_offset: off as i64,
                        finish_write: end == size,
                        data: data.slice(off..end),
                    }
                })
                .collect()
        };
        ByteStreamClient::new(self.conn())
            .write(futures::stream::iter(chunks))
            .await
            .map_err(rpc("ByteStream.Write"))?;
        Ok(())
    }

    /// Uploads a file through ByteStream, reading it in chunks so memory stays
    /// bounded whatever the file's size.
    pub async fn write_file(&self, d: &Digest, path: &Path) -> Result<()> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::Io { context: format!("opening {}", path.display()), source })?;
        let name = self.upload_name(d);
        let size = d.size;
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
        let ctx = path.display().to_string();
        let reader = tokio::spawn(async move {
            let mut off = 0u64;
            loop {
                let want = (size - off).min(WRITE_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                if want > 0 {
                    file.read_exact(&mut buf)
                        .await
                        .map_err(|source| ClientError::Io { context: format!("reading {ctx}"), source })?;
                }
                let finish = off + want as u64 == size;
                let msg = WriteRequest {
                    resource_name: if off == 0 { name.clone() } else { String::new() },
                    write_offset: off as i64,
                    finish_write: finish,
                    data: Bytes::from(buf),
                };
                off += want as u64;
                if tx.send(msg).await.is_err() || finish {
                    return Ok(());
                }
            }
        });
        let result = ByteStreamClient::new(self.conn())
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(rpc("ByteStream.Write"));
        let read = reader.await.unwrap_or(Ok(()));
        read?;
        result.map(|_| ())
    }

    /// Starts a ByteStream read of the whole blob; `None` when the server lacks it.
    async fn open_read(&self, d: &Digest) -> Result<Option<tonic::Streaming<crate::proto::bytestream::ReadResponse>>> {
        let resp = ByteStreamClient::new(self.conn())
            .read(ReadRequest { resource_name: self.read_name(d), read_offset: 0, read_limit: 0 })
            .await;
        match resp {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ClientError::Rpc { rpc: "ByteStream.Read", status: s }),
        }
    }

    /// Downloads a blob through ByteStream into `dest` (created or truncated),
    /// verifying size and hash; on mismatch the file is removed. `Ok(false)`
    /// when the server does not have it.
    pub async fn read_to_file(&self, d: &Digest, dest: &Path) -> Result<bool> {
        let Some(mut stream) = self.open_read(d).await? else { return Ok(false) };
        let io = |source| ClientError::Io { context: format!("writing {}", dest.display()), source };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = d.function.hasher();
        let mut got = 0u64;
        let outcome: Result<()> = async {
            while let Some(msg) = stream.message().await.map_err(rpc("ByteStream.Read"))? {
                got += msg.data.len() as u64;
                if got > d.size {
                    return Err(ClientError::Corrupt { digest: d.to_string(), why: "too many bytes".into() });
                }
                hasher.update(&msg.data);
                file.write_all(&msg.data).await.map_err(io)?;
            }
            file.flush().await.map_err(io)?;
            if got != d.size || hasher.clone().finalize() != d.hash {
                return Err(ClientError::Corrupt { digest: d.to_string(), why: format!("{got} bytes, wrong hash") });
            }
            Ok(())
        }
        .await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        outcome.map(|_| true)
    }

    /// Uploads one blob through ByteStream from `chunks`, which are pulled
    /// lazily as the stream drains, so a large blob never has to be whole in
    /// memory (the bench builds 1 GiB blobs from slices of one shared buffer).
    /// The chunks must add up to `d.size` bytes.
    pub async fn write_chunks<I>(&self, d: &Digest, chunks: I) -> Result<()>
    where
        I: IntoIterator<Item = Bytes>,
        I::IntoIter: Send + 'static,
    {
        let name = self.upload_name(d);
        let mut chunks = chunks.into_iter().peekable();
        let (mut off, mut first) = (0u64, true);
        let requests = std::iter::from_fn(move || {
            let data = match chunks.next() {
                Some(data) => data,
                // An empty blob still needs one finishing message.
                None if first => Bytes::new(),
                None => return None,
            };
            let msg = WriteRequest {
                resource_name: if first { name.clone() } else { String::new() },
                write_offset: off as i64,
                finish_write: chunks.peek().is_none(),
                data,
            };
            first = false;
            off += msg.data.len() as u64;
            Some(msg)
        });
        ByteStreamClient::new(self.conn())
            .write(futures::stream::iter(requests))
            .await
            .map_err(rpc("ByteStream.Write"))?;
        Ok(())
    }

    /// Downloads a blob through ByteStream and discards it, returning the
    /// bytes received; `Ok(None)` when the server does not have it. The size
    /// is always checked; the hash too when `verify` (a client that trusts
    /// the server skips it, and on a small machine hashing competes with the
    /// server for CPU).
    pub async fn read_blob(&self, d: &Digest, verify: bool) -> Result<Option<u64>> {
        let Some(mut stream) = self.open_read(d).await? else { return Ok(None) };
        let mut hasher = verify.then(|| d.function.hasher());
        let mut got = 0u64;
        while let Some(msg) = stream.message().await.map_err(rpc("ByteStream.Read"))? {
            got += msg.data.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&msg.data);
            }
        }
        let hash_ok = hasher.is_none_or(|h| h.finalize() == d.hash);
        if got != d.size || !hash_ok {
            return Err(ClientError::Corrupt {
                digest: d.to_string(),
                why: format!("{got} bytes{}", if hash_ok { "" } else { ", wrong hash" }),
            });
        }
        Ok(Some(got))
    }

    /// The standard gRPC health check (`grpc.health.v1.Health/Check` for the
    /// whole server): the smallest unary call a server answers, which the
    /// bench uses as the floor for every other unary RPC. `Ok(false)` when
    /// the server answers but is not serving.
    pub async fn health_check(&self) -> Result<bool> {
        use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
        let resp = HealthClient::new(self.conn())
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map_err(rpc("Health.Check"))?
            .into_inner();
        Ok(resp.status == ServingStatus::Serving as i32)
    }

    /// The stored result for an action, or `None` on a miss.
    pub async fn get_action_result(&self, action: &Digest) -> Result<Option<reapi::ActionResult>> {
        self.get_action_result_inline(action, &[]).await
    }

    /// Stores `result` for `action`.
    pub async fn update_action_result(&self, action: &Digest, result: reapi::ActionResult) -> Result<()> {
        ActionCacheClient::new(self.conn())
            .update_action_result(reapi::UpdateActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action.to_proto()),
                action_result: Some(result),
                results_cache_policy: None,
                digest_function: self.function.to_proto() as i32,
            })
            .await
            .map_err(rpc("UpdateActionResult"))?;
        Ok(())
    }

    // --- tiers ---
    /// The same connection, for another instance name (a proxy forwards
    /// each client's instance).
    pub fn with_instance(&self, instance: &str) -> Client {
        Client { instance: instance.to_string(), ..self.clone() }
    }

    /// The same connection, for digests of `function`.
    pub fn with_function(&self, function: DigestFunction) -> Client {
        Client { function, ..self.clone() }
    }

    /// Starts a ByteStream read of the whole blob and hands its bytes out
    /// as they arrive, unverified (the caller hashes them); `None` when the
    /// server lacks it.
    pub async fn read_stream(
        &self,
        d: &Digest,
    ) -> Result<Option<impl futures::Stream<Item = Result<Bytes>> + Send + 'static>> {
        use futures::StreamExt;
        let Some(stream) = self.open_read(d).await? else { return Ok(None) };
        Ok(Some(stream.map(|r| r.map(|m| m.data).map_err(rpc("ByteStream.Read")))))
    }

    /// Uploads one blob through ByteStream from an async stream of chunks
    /// adding up to `d.size` bytes, pulled as the upload drains (never
    /// whole in memory).
    pub async fn write_stream<S>(&self, d: &Digest, chunks: S) -> Result<()>
    where
        S: futures::Stream<Item = Bytes> + Send + 'static,
    {
        use futures::StreamExt;
        let (name, size) = (self.upload_name(d), d.size);
        let mut off = 0u64;
        let requests = chunks.map(move |data| {
            let msg = WriteRequest {
                resource_name: if off == 0 { name.clone() } else { String::new() },
                write_offset: off as i64,
                finish_write: off + data.len() as u64 == size,
                data,
            };
            off += msg.data.len() as u64;
            msg
        });
        ByteStreamClient::new(self.conn()).write(requests).await.map_err(rpc("ByteStream.Write"))?;
        Ok(())
    }
    // --- end of tiers ---

    fn prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    fn upload_name(&self, d: &Digest) -> String {
        format!("{}uploads/{}/blobs/{}/{}", self.prefix(), uuid::Uuid::new_v4(), d.hex(), d.size)
    }

    fn read_name(&self, d: &Digest) -> String {
        format!("{}blobs/{}/{}", self.prefix(), d.hex(), d.size)
    }
}

/// The tool name `cairn gocacheprog` sends in its RequestMetadata.
pub const GOCACHEPROG_TOOL_NAME: &str = "cairn-gocacheprog";

/// The header REAPI clients put their RequestMetadata in.
const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// A channel whose calls carry the client's RequestMetadata.
type Conn = InterceptedService<Transport, AddMetadata>;

/// Adds the RequestMetadata header (when set) to each call.
#[derive(Clone)]
struct AddMetadata(Option<MetadataValue<Binary>>);

impl tonic::service::Interceptor for AddMetadata {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert_bin(REQUEST_METADATA_HEADER, v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lazy_connect_does_no_io_and_checks_the_address() {
        // Port 9 (discard) on a TEST-NET address: nothing answers, yet this
        // returns at once because nothing is dialled until the first call.
        let started = std::time::Instant::now();
        assert!(Client::connect_lazy("grpc://192.0.2.1:9", "", Duration::from_secs(30)).is_ok());
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            Client::connect_lazy("192.0.2.1:9", "", Duration::from_secs(1)),
            Err(ClientError::BadAddress(_))
        ));
    }
}

// Compressed and inlined reads (the Go shim on slow links).
mod compressed;
