//! The narrow interface of a tier behind the local store: an object-store
//! bucket shared by several nodes ([`bucket`](super::bucket)) or another REAPI
//! server this node is a proxy of ([`upstream`](super::upstream)), in the
//! spirit of Buildbarn's BlobAccess. The local RocksDB store stays the fast
//! tier in front of every one of them: the front ends (gRPC, HTTP) talk to the
//! local store; on a local miss the store asks its tier, fills itself from
//! the answer, and writes every commit behind to the tier from a persistent
//! queue.
//!
//! Every method may fail with [`Error::Unavailable`] when the tier is slow or
//! down; callers treat that as "not there" for reads and retry writes later,
//! so a tier outage never becomes a build failure.

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::digest::Digest;
use crate::error::Result;

/// A blob's contents in order, as chunks of any size.
pub type Chunks = BoxStream<'static, Result<Bytes>>;

/// What a write sends: small blobs whole, large ones streamed (never buffered
/// whole: the stream comes from the local blob file).
pub enum Body {
    Whole(Bytes),
    Stream(Chunks),
}

/// Something this node served from its local store without asking the tier
/// (a local hit), told to a tier that keeps its own LRU ([`Tier::note_used`]).
#[derive(Clone, Copy, Debug)]
pub enum Used<'a> {
    /// Blobs read or reported present.
    Blobs(&'a [Digest]),
    /// An ActionResult returned as a hit.
    Action { instance: &'a str, action: &'a Digest },
}

/// A store of CAS blobs and ActionCache entries reached over the network.
/// Implementations verify nothing: the local store hashes whatever it fills
/// itself with, so a tier that returns wrong bytes causes a miss, never a
/// wrong hit.
#[async_trait::async_trait]
pub trait Tier: Send + Sync + 'static {
    /// One line for logs and the status page ("s3://bucket/prefix", "grpc://central:9092").
    fn describe(&self) -> String;

    /// The subset of `digests` the tier does not hold.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// The blob's bytes from the start, or None when the tier lacks it.
    async fn read(&self, digest: &Digest) -> Result<Option<Chunks>>;

    /// Stores a blob whose digest the caller has already verified.
    async fn write(&self, digest: &Digest, body: Body) -> Result<()>;

    /// The encoded ActionResult stored for `action` in `instance`, if any.
    async fn get_action(&self, instance: &str, action: &Digest) -> Result<Option<Bytes>>;

    /// Stores an encoded ActionResult. Callers write it only after every blob
    /// it names is in the tier, so no node ever serves a result whose outputs
    /// it cannot fetch.
    async fn put_action(&self, instance: &str, action: &Digest, result: Bytes) -> Result<()>;

    /// Calls made to the service behind the tier so far, by kind, for
    /// pricing (object stores bill per request); empty when not counted.
    fn calls(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Notes local hits as uses, for a tier whose eviction should see every
    /// node's uses (a bounded bucket). Called on the request path: it must
    /// only remember them (a set insert), never call the service. No-op by
    /// default.
    fn note_used(&self, _used: Used<'_>) {}

    /// Uses [`Tier::note_used`] dropped because too many were pending
    /// (0 for a tier that keeps none).
    fn uses_dropped(&self) -> u64 {
        0
    }

    /// Before the process exits: hands over what the tier keeps in memory
    /// (a bucket's pending use log), within the tier's own call timeout.
    async fn finish(&self) {}
}
