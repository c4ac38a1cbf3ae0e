//! Object-store calls counted by kind, so an operator can price a build: S3
//! and its clones bill per request (PUT, LIST and multipart calls in one
//! class, GET and HEAD in a cheaper one), and the counts come out as
//! `cairn_object_store_requests_total{op}`.

use std::sync::atomic::{AtomicU64, Ordering};

/// One kind of object-store call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// HEAD an object (FindMissingBlobs).
    Head,
    /// GET an object (a blob, an ActionResult, a use log).
    Get,
    /// PUT an object in one request.
    Put,
    /// Start a multipart upload.
    MultipartCreate,
    /// Upload one part of a multipart upload.
    MultipartPart,
    /// Complete a multipart upload.
    MultipartComplete,
    /// One page (up to 1000 keys) of a listing.
    List,
    /// Delete one object (S3 batches these, 1000 a request).
    Delete,
}

impl Op {
    /// Every kind, in the order the metric lists them.
    pub const ALL: [Op; 8] = [
        Op::Head,
        Op::Get,
        Op::Put,
        Op::MultipartCreate,
        Op::MultipartPart,
        Op::MultipartComplete,
        Op::List,
        Op::Delete,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Head => "head",
            Op::Get => "get",
            Op::Put => "put",
            Op::MultipartCreate => "multipart_create",
            Op::MultipartPart => "multipart_part",
            Op::MultipartComplete => "multipart_complete",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }

    fn index(self) -> usize {
        Op::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// Calls made so far, by kind (successful or not: a failed call is billed too).
#[derive(Debug, Default)]
pub struct OpCounts([AtomicU64; 8]);

impl OpCounts {
    /// Adds `n` calls of kind `op`.
    pub fn add(&self, op: Op, n: u64) {
        self.0[op.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Calls of kind `op` so far.
    pub fn get(&self, op: Op) -> u64 {
        self.0[op.index()].load(Ordering::Relaxed)
    }

    /// Every kind with its count, for the metric and for tests.
    pub fn snapshot(&self) -> Vec<(Op, u64)> {
        Op::ALL.iter().map(|op| (*op, self.get(*op))).collect()
    }

    /// All calls of every kind.
    pub fn total(&self) -> u64 {
        Op::ALL.iter().map(|op| self.get(*op)).sum()
    }
}
