//! The upstream tier (`cairn serve --upstream grpc(s)://central:9092`): this
//! node is a proxy of another REAPI server (cairn or any other), reached
//! with the same client the Go shim and the bench use. Small blobs travel in
//! batch calls, large ones through ByteStream, streamed both ways.
//!
//! Instance names: CAS calls use `--upstream-instance`; ActionCache calls
//! put it in front of the client's own instance name (`ci` + `linux` →
//! `ci/linux`), so a proxy can map its clients into one part of a shared
//! central cache, or (with no upstream instance) forward names unchanged.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

use super::tier::{Body, Chunks, Tier};
use crate::client::{Client, ClientError, Security, BATCH_BLOB_MAX};
use crate::config::TierSettings;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi;

/// Longest wait for a connection to the upstream: a dead upstream should
/// turn into local misses quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Another REAPI server behind this one.
pub struct Upstream {
    url: String,
    /// Connects on first use (and again after a failure), so a proxy starts
    /// while its upstream is down.
    client: Client,
    instance: String,
}

impl Upstream {
    /// A lazily connected client for `url` with the TLS CA and token file
    /// `settings` name; a missing file or a bad address fails here.
    pub fn open(url: &str, settings: &TierSettings) -> Result<Upstream> {
        let token = match &settings.upstream_token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::InvalidArgument(format!("--upstream-token-file {}: {e}", path.display())))?;
                let token = text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string);
                Some(token.ok_or_else(|| {
                    Error::InvalidArgument(format!("--upstream-token-file {} is empty", path.display()))
                })?)
            }
        };
        let security = Security { tls_ca: settings.upstream_tls_ca.clone(), token, ..Security::default() };
        let client = Client::connect_lazy_with(url, &settings.upstream_instance, CONNECT_TIMEOUT, &security)
            .map_err(|e| Error::InvalidArgument(format!("--upstream: {e}")))?
            .with_tool("cairn-proxy", env!("CARGO_PKG_VERSION"));
        Ok(Upstream { url: url.to_string(), client, instance: settings.upstream_instance.clone() })
    }

    /// The instance name an ActionCache call for the client's `instance` uses upstream.
    fn ac_instance(&self, instance: &str) -> String {
        match (self.instance.is_empty(), instance.is_empty()) {
            (true, _) => instance.to_string(),
            (false, true) => self.instance.clone(),
            (false, false) => format!("{}/{instance}", self.instance),
        }
    }

    fn cas(&self, function: DigestFunction) -> Client {
        self.client.with_function(function)
    }
}

/// The store's view of a client failure: the upstream said no to this
/// request (INVALID_ARGUMENT: retrying cannot help) or could not be
/// reached or answered otherwise (UNAVAILABLE: later may work).
fn tier_error(e: ClientError) -> Error {
    use tonic::Code;
    match &e {
        ClientError::Rpc { status, .. }
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::NotFound | Code::OutOfRange | Code::FailedPrecondition
            ) =>
        {
            Error::InvalidArgument(format!("upstream: {e}"))
        }
        ClientError::Corrupt { .. } | ClientError::BadAddress(_) | ClientError::Tls(_) => {
            Error::InvalidArgument(format!("upstream: {e}"))
        }
        _ => Error::Unavailable(format!("upstream: {e}")),
    }
}

#[async_trait::async_trait]
impl Tier for Upstream {
    fn describe(&self) -> String {
        if self.instance.is_empty() {
            self.url.clone()
        } else {
            format!("{} (instance {:?})", self.url, self.instance)
        }
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut by_function: HashMap<DigestFunction, Vec<Digest>> = HashMap::new();
        for d in digests {
            by_function.entry(d.function).or_default().push(*d);
        }
        let mut missing = HashSet::new();
        for (function, ds) in by_function {
            missing.extend(self.cas(function).find_missing(&ds).await.map_err(tier_error)?);
        }
        Ok(digests.iter().filter(|d| missing.contains(d)).copied().collect())
    }

    async fn read(&self, d: &Digest) -> Result<Option<Chunks>> {
        let client = self.cas(d.function);
        if d.size <= BATCH_BLOB_MAX {
            let got = client.batch_read_each(std::slice::from_ref(d)).await.map_err(tier_error)?;
            return match got.into_iter().next() {
                Some(Ok(Some(bytes))) => Ok(Some(futures::stream::once(async { Ok(bytes) }).boxed())),
                Some(Ok(None)) | None => Ok(None),
                Some(Err(e)) => Err(tier_error(e)),
            };
        }
        let Some(stream) = client.read_stream(d).await.map_err(tier_error)? else { return Ok(None) };
        Ok(Some(stream.map(|r| r.map_err(tier_error)).boxed()))
    }

    async fn write(&self, d: &Digest, body: Body) -> Result<()> {
        let client = self.cas(d.function);
        match body {
            Body::Whole(bytes) if d.size <= BATCH_BLOB_MAX => {
                let mut each = client.batch_upload_each(&[(*d, bytes)]).await.map_err(tier_error)?;
                each.pop().unwrap_or(Ok(())).map_err(tier_error)
            }
            Body::Whole(bytes) => client.write_bytes(d, bytes).await.map_err(tier_error),
            Body::Stream(mut chunks) => {
                // Chunks are pulled from the local file as the upload drains.
                // A local read error ends the upload short (the upstream
                // refuses it) and is reported as what it was.
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
                let feed = async move {
                    while let Some(chunk) = chunks.next().await {
                        if tx.send(chunk?).await.is_err() {
                            break; // The upload ended early; it reports why.
                        }
                    }
                    Ok::<(), Error>(())
                };
                let upload = client.write_stream(d, tokio_stream::wrappers::ReceiverStream::new(rx));
                let (fed, sent) = tokio::join!(feed, upload);
                fed.map_err(|e| Error::Internal(format!("reading the local copy of {d} to write it upstream: {e}")))?;
                sent.map_err(tier_error)
            }
        }
    }

    async fn get_action(&self, instance: &str, action: &Digest) -> Result<Option<Bytes>> {
        let client = self.client.with_instance(&self.ac_instance(instance)).with_function(action.function);
        let result = client.get_action_result(action).await.map_err(tier_error)?;
        Ok(result.map(|r| r.encode_to_vec().into()))
    }

    async fn put_action(&self, instance: &str, action: &Digest, result: Bytes) -> Result<()> {
        let decoded = reapi::ActionResult::decode(result)
            .map_err(|e| Error::Internal(format!("queued action result for {action} does not decode: {e}")))?;
        let client = self.client.with_instance(&self.ac_instance(instance)).with_function(action.function);
        client.update_action_result(action, decoded).await.map_err(tier_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_nest_under_the_upstream_instance() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let settings = |instance: &str| TierSettings { upstream_instance: instance.into(), ..TierSettings::default() };
        let plain = Upstream::open("grpc://127.0.0.1:1", &settings("")).unwrap();
        assert_eq!(plain.ac_instance(""), "");
        assert_eq!(plain.ac_instance("linux"), "linux");
        let nested = Upstream::open("grpc://127.0.0.1:1", &settings("ci")).unwrap();
        assert_eq!(nested.ac_instance(""), "ci");
        assert_eq!(nested.ac_instance("linux"), "ci/linux");
        assert!(Upstream::open("127.0.0.1:1", &settings("")).is_err());
    }
}
