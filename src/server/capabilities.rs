//! Capabilities.GetCapabilities: what this cache supports. Bazel asks once per
//! build and refuses to use a cache whose ActionCache updates are disabled.

use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::digest::validate_instance;
use crate::digest::DigestFunction;
use crate::proto::reapi::{self, capabilities_server::Capabilities};
use crate::proto::semver::SemVer;
use crate::server::auth::Guard;
use crate::server::status::IntoStatus;

/// The Capabilities service.
pub struct CapabilitiesService {
    pub max_batch_total_size: u64,
    /// Largest blob accepted, advertised as `max_cas_blob_size_bytes`.
    pub max_blob_size: u64,
    /// Capabilities is a read of the instance it names.
    pub guard: Guard,
}

fn version(minor: i32) -> Option<SemVer> {
    Some(SemVer { major: 2, minor, patch: 0, prerelease: String::new() })
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        validate_instance(&request.get_ref().instance_name).status()?;
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Read)?;
        let functions = DigestFunction::ALL.iter().map(|f| f.to_proto() as i32).collect();
        let cache = reapi::CacheCapabilities {
            digest_functions: functions,
            action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities { update_enabled: true }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: self.max_batch_total_size as i64,
            // The cache stores symlinks as given; it never follows them.
            symlink_absolute_path_strategy: reapi::symlink_absolute_path_strategy::Value::Allowed as i32,
            supported_compressors: vec![reapi::compressor::Value::Zstd as i32],
            supported_batch_update_compressors: vec![reapi::compressor::Value::Zstd as i32],
            // Uploads over it are refused with INVALID_ARGUMENT.
            max_cas_blob_size_bytes: self.max_blob_size.min(i64::MAX as u64) as i64,
        };
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(cache),
            // A cache only: execution is advertised as disabled.
            execution_capabilities: Some(reapi::ExecutionCapabilities {
                digest_function: reapi::digest_function::Value::Sha256 as i32,
                exec_enabled: false,
                execution_priority_capabilities: None,
                supported_node_properties: Vec::new(),
                digest_functions: Vec::new(),
            }),
            deprecated_api_version: version(0),
            low_api_version: version(0),
            high_api_version: version(3),
        }))
    }
}
