//! ContentAddressableStorage: FindMissingBlobs and the batch calls. GetTree
//! lives in `get_tree.rs`. The CAS is shared by all instance names: content
//! is named by its hash, so sharing is safe and deduplicates across instances.

use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::digest::{validate_instance, Compressor, Digest, DigestFunction};
use crate::error::Error;
use crate::proto::reapi::{self, content_addressable_storage_server::ContentAddressableStorage};
use crate::server::auth::Guard;
use crate::server::blocking;
use crate::server::get_tree;
use crate::server::status::{ok_rpc_status, to_rpc_status, IntoStatus};
use crate::store::tiered::Tiered;
use crate::store::{zstd, Store};

/// The CAS service.
pub struct CasService {
    /// The local store, and the tier behind it that fills its misses.
    pub tiers: Tiered,
    /// Bound on blob bytes per batch call, as advertised in Capabilities.
    pub max_batch_total_size: u64,
    /// Who may read and write which instance.
    pub guard: Guard,
}

impl CasService {
    /// Refuses a batch whose blob bytes exceed the advertised limit.
    fn check_batch_size(&self, verb: &str, total: u64) -> Result<(), Error> {
        if total > self.max_batch_total_size {
            return Err(Error::InvalidArgument(format!(
                "batch {verb} {total} bytes, over the {} advertised as max_batch_total_size_bytes; \
                 use ByteStream for large blobs",
                self.max_batch_total_size
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Read)?;
        let req = request.into_inner();
        let function = DigestFunction::from_proto(req.digest_function).status()?;
        validate_instance(&req.instance_name).status()?;
        let digests = req
            .blob_digests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                // The field path is formatted only for the error message.
                Digest::parse(function, &d.hash, d.size_bytes)
                    .map_err(|e| Error::InvalidArgument(format!("blob_digests[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .status()?;
        let missing = self.tiers.find_missing(&digests).await.status()?;
        crate::server::observe::note_lookups(digests.len() - missing.len(), missing.len());
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Write)?;
        let req = request.into_inner();
        let function = DigestFunction::from_proto(req.digest_function).status()?;
        validate_instance(&req.instance_name).status()?;
        self.check_batch_size("carries", update_batch_size(&req.requests)).status()?;
        let store = self.tiers.store().clone();
        let responses =
            blocking(move || Ok(req.requests.into_iter().map(|r| update_one(&store, function, r)).collect())).await?;
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Read)?;
        let req = request.into_inner();
        let function = DigestFunction::from_proto(req.digest_function).status()?;
        validate_instance(&req.instance_name).status()?;
        // Saturating: absurd declared sizes must not wrap around the limit check.
        let total = req.digests.iter().fold(0u64, |t, d| t.saturating_add(d.size_bytes.max(0) as u64));
        self.check_batch_size("asks for", total).status()?;
        let wanted: Vec<Digest> =
            req.digests.iter().filter_map(|d| Digest::from_proto(function, Some(d), "digest").ok()).collect();
        self.tiers.prefetch(&wanted).await.status()?;
        let store = self.tiers.store().clone();
        let responses: Vec<reapi::batch_read_blobs_response::Response> =
            blocking(move || Ok(req.digests.iter().map(|d| read_one(&store, function, d)).collect())).await?;
        let found = responses.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.code == 0)).count();
        let missing = responses.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.code == 5)).count();
        crate::server::observe::note_lookups(found, missing);
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = get_tree::GetTreeStream;

    async fn get_tree(&self, request: Request<reapi::GetTreeRequest>) -> Result<Response<Self::GetTreeStream>, Status> {
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Read)?;
        get_tree::get_tree(self.tiers.clone(), request.into_inner()).await
    }
}

/// The bytes a batch update amounts to, counted as the limit is defined: by
/// the blobs' declared (uncompressed) sizes, so 4 MiB of zstd frames cannot
/// make the server decompress and hash gigabytes. Identity items also count
/// their data, whichever is larger. Saturating: absurd sizes must not wrap.
fn update_batch_size(requests: &[reapi::batch_update_blobs_request::Request]) -> u64 {
    requests.iter().fold(0u64, |total, r| {
        let declared = r.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64);
        let item = if r.compressor == reapi::compressor::Value::Identity as i32 {
            declared.max(r.data.len() as u64)
        } else {
            declared
        };
        total.saturating_add(item)
    })
}

/// Stores one blob of a batch; failures become that blob's status.
fn update_one(
    store: &Store,
    function: DigestFunction,
    r: reapi::batch_update_blobs_request::Request,
) -> reapi::batch_update_blobs_response::Response {
    let result = Digest::from_proto(function, r.digest.as_ref(), "digest").and_then(|d| {
        match Compressor::from_proto(r.compressor)? {
            Compressor::Identity => store.put(d, &r.data)?,
            Compressor::Zstd => {
                // Streamed through the writer, so a false declared size cannot
                // make us allocate it up front.
                let mut up = zstd::ZstdUpload::new(store.begin_write(d)?)?;
                up.write(&r.data)?;
                up.commit()?
            }
        }
        Ok(d)
    });
    reapi::batch_update_blobs_response::Response {
        digest: r.digest,
        status: Some(match &result {
            Ok(_) => ok_rpc_status(),
            Err(e) => to_rpc_status(e),
        }),
    }
}

/// Reads one blob of a batch; a miss is that blob's NOT_FOUND.
fn read_one(store: &Store, function: DigestFunction, d: &reapi::Digest) -> reapi::batch_read_blobs_response::Response {
    let result = Digest::from_proto(function, Some(d), "digest").and_then(|digest| {
        store.read_all(&digest)?.ok_or_else(|| Error::NotFound(format!("blob {digest} is not in the CAS")))
    });
    let (data, status) = match result {
        Ok(data) => (data, ok_rpc_status()),
        Err(e) => (Vec::new(), to_rpc_status(&e)),
    };
    reapi::batch_read_blobs_response::Response {
        digest: Some(d.clone()),
        data: data.into(),
        compressor: reapi::compressor::Value::Identity as i32,
        status: Some(status),
    }
}
