//! The remote tier's boundary. Phase 2 fills it in over [`crate::client`]
//! (REAPI ActionCache + CAS); phase 1 has no remote.
//!
//! In phase 1 [`Remote`] has no values (it wraps [`Infallible`]), so the run
//! loop's `Option<Remote>` is always `None` and its calls into the remote are
//! compiled, type-checked and unreachable. Phase 2 replaces the body of this
//! file and keeps the method shapes, which encode the rules the run loop
//! relies on:
//! - `get` never fails: a remote problem is a miss (go would treat an `Err`
//!   as a miss anyway, silently), and it is bounded by `RemoteConfig::timeout`.
//!   A hit is downloaded, verified against its digest and committed to the
//!   local tier before it is reported, so go only ever sees local files.
//! - `upload` never blocks the put reply: it queues background work.
//! - `finish` bounds how long pending uploads may delay exit.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use super::local::{Entry, LocalStore};
use super::protocol::ActionId;

/// Where the remote cache is and how to use it; parsed from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `grpc://host:port` (or `grpcs://`), as given by `--remote`.
    pub url: String,
    /// REAPI instance name (`--instance`); may be empty.
    pub instance: String,
    /// Bound on each remote lookup; past it, the get is a miss.
    pub timeout: Duration,
}

/// A connection to the remote tier (phase 1: cannot exist).
pub struct Remote {
    never: Infallible,
}

impl Remote {
    /// Sets up the remote tier. Phase 1: not implemented, so `None` and one
    /// warning, and the build runs local-only.
    pub fn connect(config: &RemoteConfig) -> Option<Remote> {
        tracing::warn!(
            remote = %config.url,
            "cairn gocacheprog: the remote tier is not implemented yet; using only the local cache"
        );
        None
    }

    /// Looks `action` up remotely; on a hit, downloads the output (verified)
    /// into `local` and returns the new local entry. Never an error.
    pub async fn get(&self, _action: &ActionId, _local: &Arc<LocalStore>) -> Option<Entry> {
        match self.never {}
    }

    /// Queues the upload of an entry that was just stored locally.
    pub fn upload(&self, _action: &ActionId, _entry: &Entry) {
        match self.never {}
    }

    /// Lets queued uploads run for at most `bound`, then gives up on them.
    pub async fn finish(&self, _bound: Duration) {
        match self.never {}
    }
}
