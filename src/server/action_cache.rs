//! ActionCache: GetActionResult / UpdateActionResult. Entries are kept per
//! instance name; the blobs they refer to live in the shared CAS. Both calls
//! run on the async worker when RocksDB can answer from memory without
//! waiting, else on a blocking thread: a lookup may decode Trees of up to
//! 64 MiB and read stdout/stderr, an update may wait for the commit lock or
//! a write stall ([`crate::store::nonblocking`]).

use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::digest::{validate_instance, Digest, DigestFunction};
use crate::error::Error;
use crate::proto::reapi::{self, action_cache_server::ActionCache};
use crate::server::auth::Guard;
use crate::server::blocking;
use crate::server::status::IntoStatus;
use crate::store::nonblocking::{ready, Mode, Nonblocking};
use crate::store::tiered::Tiered;
use crate::store::{complete, Store};

/// Largest stdout/stderr inlined into a GetActionResult reply on request.
const MAX_INLINE_OUTPUT: u64 = 1 << 20;

/// The ActionCache service.
pub struct ActionCacheService {
    /// The local store, and the tier behind it that fills its misses.
    pub tiers: Tiered,
    /// Who may read and write which instance.
    pub guard: Guard,
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Read)?;
        let req = request.into_inner();
        let function = DigestFunction::from_proto(req.digest_function).status()?;
        validate_instance(&req.instance_name).status()?;
        let action = Digest::from_proto(function, req.action_digest.as_ref(), "action_digest").status()?;
        Ok(Response::new(lookup(&self.tiers, req, action).await?))
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        self.guard.check_request(&request, &request.get_ref().instance_name, Access::Write)?;
        let req = request.into_inner();
        let function = DigestFunction::from_proto(req.digest_function).status()?;
        validate_instance(&req.instance_name).status()?;
        let action = Digest::from_proto(function, req.action_digest.as_ref(), "action_digest").status()?;
        let result =
            req.action_result.ok_or_else(|| Error::InvalidArgument("action_result is missing".into())).status()?;
        validate_result(function, &result).status()?;
        let bytes = result.encode_to_vec();
        let store = self.tiers.store().clone();
        let instance = req.instance_name;
        // On this worker when nothing would wait (see crate::store::nonblocking).
        if store.put_action_in(Mode::MemoryOnly, &instance, &action, &bytes).status()? == Nonblocking::WouldBlock {
            blocking(move || store.put_action(&instance, &action, &bytes)).await?;
        }
        Ok(Response::new(result))
    }
}

/// A GetActionResult lookup: the local store's answer; on a miss, the tier
/// (if any) fills the local store and the lookup runs again. Counted once.
/// A hit and the blobs it names count as uses of the tier's copies.
pub(super) async fn lookup(
    tiers: &Tiered,
    req: reapi::GetActionResultRequest,
    action: Digest,
) -> Result<reapi::ActionResult, Status> {
    let req = std::sync::Arc::new(req);
    let mut result = local_lookup(tiers.store(), &req, action).await;
    if matches!(&result, Err(s) if s.code() == tonic::Code::NotFound) {
        // A tier that is down or lies leaves the miss a miss.
        if tiers.fill_action(&req.instance_name, &action).await.unwrap_or(false) {
            result = local_lookup(tiers.store(), &req, action).await;
        }
    }
    // A result naming a lost blob is a miss to the client: count it so.
    tiers.store().count_lookup(result.is_ok());
    let (result, named) = result?;
    tiers.note_action_hit(&req.instance_name, &action, &named);
    Ok(result)
}

/// The local store's answer: from memory on this worker when RocksDB has it
/// there (most hits and misses), else on a blocking thread (see
/// [`crate::store::nonblocking`]).
async fn local_lookup(
    store: &Store,
    req: &std::sync::Arc<reapi::GetActionResultRequest>,
    action: Digest,
) -> Result<Found, Status> {
    if let Nonblocking::Ready(found) = get_action_result(Mode::MemoryOnly, store, req, &action).status()? {
        return Ok(found);
    }
    let (store, req) = (store.clone(), req.clone());
    blocking(move || Ok(get_action_result(Mode::MayBlock, &store, &req, &action)?.into_ready())).await
}

/// A usable result and every blob it names.
type Found = (reapi::ActionResult, Vec<Digest>);

/// The stored result for `action` with every blob it names, or NOT_FOUND
/// (absent, or naming a blob the CAS lost). Both answers, and a store
/// failure, are final in either mode.
pub(super) fn get_action_result(
    mode: Mode,
    store: &Store,
    req: &reapi::GetActionResultRequest,
    action: &Digest,
) -> Result<Nonblocking<Found>, Error> {
    let not_found = || Error::NotFound(format!("no action result for {action} in instance {:?}", req.instance_name));
    let Some(bytes) = ready!(store.get_action_in(mode, &req.instance_name, action)?) else {
        return Err(not_found());
    };
    let mut result = reapi::ActionResult::decode(bytes.as_slice())
        .map_err(|e| Error::Internal(format!("stored action result for {action} does not decode: {e}")))?;
    let function = action.function;
    let wants_inline = |d: &Option<reapi::Digest>| d.as_ref().is_some_and(|d| d.size_bytes > 0);
    if mode == Mode::MemoryOnly
        && ((req.inline_stdout && wants_inline(&result.stdout_digest))
            || (req.inline_stderr && wants_inline(&result.stderr_digest)))
    {
        return Ok(Nonblocking::WouldBlock); // Inlining reads blob files.
    }
    let named = match ready!(complete::check_in(mode, store, function, &result)?) {
        Ok(named) => named,
        Err(gone) => {
            tracing::debug!(action = ?action, missing = ?gone, "action result is incomplete; reporting a miss");
            return Err(Error::NotFound(format!(
                "action result for {action} refers to blob {gone}, which is no longer in the CAS"
            )));
        }
    };
    if req.inline_stdout {
        result.stdout_raw = inline_output(store, function, result.stdout_digest.as_ref())?.into();
    }
    if req.inline_stderr {
        result.stderr_raw = inline_output(store, function, result.stderr_digest.as_ref())?.into();
    }
    Ok(Nonblocking::Ready((result, named)))
}

/// Reads a small stdout/stderr blob for inlining; empty when absent or large
/// (the spec lets the server decline, the client then reads the digest).
fn inline_output(store: &Store, function: DigestFunction, d: Option<&reapi::Digest>) -> Result<Vec<u8>, Error> {
    let Some(d) = d else { return Ok(Vec::new()) };
    let Ok(d) = Digest::parse(function, &d.hash, d.size_bytes) else {
        return Ok(Vec::new());
    };
    if d.size > MAX_INLINE_OUTPUT {
        return Ok(Vec::new());
    }
    Ok(store.read_all(&d)?.unwrap_or_default())
}

/// Checks every digest inside a result is well formed, naming the bad one
/// (output directories: `tree_digest` and/or `root_directory_digest`).
pub(super) fn validate_result(function: DigestFunction, r: &reapi::ActionResult) -> Result<(), Error> {
    crate::wire::refs::ResultRefs::parse(function, r).map(|_| ())
}
