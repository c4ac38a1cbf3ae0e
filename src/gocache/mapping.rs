//! How go's cache entries are stored on a REAPI server: pure functions,
//! no I/O, so the format is pinned by unit tests.
//!
//! # An entry (go's action ID → output)
//! - **ActionCache key**: the SHA-256 digest of the 49-byte string
//!   `"cairn-gocache-v1\0"` + the 32 raw bytes of go's action ID, with size 49.
//!   It is the true digest of that string, so any REAPI server accepts it.
//!   It can never equal a Bazel action's key: Bazel's key is the digest of a
//!   serialized `Action` message, and our 49 bytes are not one (the first
//!   byte, `c` = 0x63, is a protobuf group tag that `Action` does not have);
//!   two different strings with the same SHA-256 are not a practical concern.
//!   The key lives under the configured instance name (`--instance`), like
//!   Bazel's; the prefix, not the instance, keeps the two apart, so go and
//!   Bazel can share one instance (and one CAS) safely.
//! - **ActionResult**: one `OutputFile` named [`OUTPUT_PATH`] whose digest is
//!   go's output ID (it *is* the SHA-256 of the content) with the body size,
//!   so the blob is an ordinary CAS blob, verified by the server on upload
//!   and by the client on download, and shared with anything else holding
//!   the same bytes. The entry's time (when go first put it; go compares it
//!   with `go clean -testcache`) is `execution_metadata.worker_completed_timestamp`;
//!   `execution_metadata.worker` says who wrote it.
//!
//! # The prefetch manifest
//! Under a second key, [`prefetch_key`] (`"cairn-gocache-prefetch-v1\0"` + a
//! description of the build), an ActionResult names one blob, the
//! *manifest*: the entries (action, output, size, time) that the last such
//! build asked for, in the order it asked. A manifest of up to 1 MiB also
//! rides inline in the ActionResult (`OutputFile.contents`), saving a fresh
//! machine a round trip; the blob is in the CAS either way. See `prefetch` for its use.
//! Format ([`encode_manifest`]): the line `cairn-gocache-prefetch-v1\n`, then
//! 80-byte records: action ID (32), output ID (32), size (u64 LE), time
//! (i64 LE, Unix nanoseconds).

use prost_types::Timestamp;
use sha2::{Digest as _, Sha256};

use super::protocol::{ActionId, OutputId};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

/// Prefix of an entry's ActionCache key; see the module doc.
pub const ACTION_KEY_PREFIX: &[u8] = b"cairn-gocache-v1\0";

/// Prefix of a prefetch manifest's ActionCache key.
pub const PREFETCH_KEY_PREFIX: &[u8] = b"cairn-gocache-prefetch-v1\0";

/// The one output file of an entry's ActionResult.
pub const OUTPUT_PATH: &str = "go-output";

/// The one output file of a prefetch manifest's ActionResult.
pub const MANIFEST_PATH: &str = "go-prefetch-manifest";

/// `execution_metadata.worker` of everything cairn gocacheprog writes.
pub const WORKER: &str = "cairn gocacheprog";

/// First line of a manifest blob.
pub const MANIFEST_MAGIC: &[u8] = b"cairn-gocache-prefetch-v1\n";

/// Bytes per manifest record.
pub const MANIFEST_RECORD: usize = 80;

/// Entries kept in one manifest (8 MB): far more than `go build std cmd`
/// asks for (about 2,700), small enough to fetch in a few round trips.
pub const MANIFEST_MAX_ENTRIES: usize = 100_000;

/// What the remote knows about one action: what a get hit reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    pub output: OutputId,
    pub size: u64,
    /// When go first put the entry, Unix nanoseconds.
    pub time_nanos: i64,
}

impl RemoteEntry {
    /// The CAS digest of the output.
    pub fn digest(&self) -> Digest {
        output_digest(&self.output, self.size)
    }
}

/// The digest of the SHA-256 of `data` with its length: a REAPI key whose
/// preimage is `data` itself.
fn key_of(data: &[u8]) -> Digest {
    Digest { function: DigestFunction::Sha256, hash: Sha256::digest(data).into(), size: data.len() as u64 }
}

/// The ActionCache key of go's `action`.
pub fn action_key(action: &ActionId) -> Digest {
    let mut preimage = Vec::with_capacity(ACTION_KEY_PREFIX.len() + 32);
    preimage.extend_from_slice(ACTION_KEY_PREFIX);
    preimage.extend_from_slice(&action.0);
    key_of(&preimage)
}

/// The ActionCache key of the prefetch manifest for a build described by
/// `description` (see `prefetch::BuildContext`).
pub fn prefetch_key(description: &str) -> Digest {
    let mut preimage = PREFETCH_KEY_PREFIX.to_vec();
    preimage.extend_from_slice(description.as_bytes());
    key_of(&preimage)
}

/// The CAS digest of a go output: the output ID is its SHA-256.
pub fn output_digest(output: &OutputId, size: u64) -> Digest {
    Digest { function: DigestFunction::Sha256, hash: output.0, size }
}

/// The ActionResult recording one blob (an entry's output, or a manifest)
/// under `path`, stamped with `time_nanos`.
pub fn action_result(path: &str, blob: &Digest, time_nanos: i64) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: path.to_string(),
            digest: Some(blob.to_proto()),
            ..Default::default()
        }],
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: WORKER.to_string(),
            worker_completed_timestamp: Some(timestamp(time_nanos)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ActionResult for an entry.
pub fn entry_result(entry: &RemoteEntry) -> reapi::ActionResult {
    action_result(OUTPUT_PATH, &entry.digest(), entry.time_nanos)
}

/// Reads an ActionResult written by [`action_result`] with `path`: exactly
/// one output file with that name and a well-formed SHA-256 digest, and
/// nothing else. Anything else (another tool's result under our key, a
/// result from a later format) is `None`, a miss. A missing time is read as
/// `now_nanos` (what go assumes for an entry without one).
pub fn read_result(result: &reapi::ActionResult, path: &str, now_nanos: i64) -> Option<(Digest, i64)> {
    let [file] = result.output_files.as_slice() else {
        return None;
    };
    if file.path != path || !result.output_directories.is_empty() || !result.output_symlinks.is_empty() {
        return None;
    }
    let d = file.digest.as_ref()?;
    let digest = Digest::parse(DigestFunction::Sha256, &d.hash, d.size_bytes).ok()?;
    let time = result
        .execution_metadata
        .as_ref()
        .and_then(|m| m.worker_completed_timestamp.as_ref())
        .and_then(from_timestamp)
        .unwrap_or(now_nanos);
    Some((digest, time))
}

/// Reads an entry's ActionResult.
pub fn read_entry(result: &reapi::ActionResult, now_nanos: i64) -> Option<RemoteEntry> {
    let (digest, time_nanos) = read_result(result, OUTPUT_PATH, now_nanos)?;
    Some(RemoteEntry { output: OutputId(digest.hash), size: digest.size, time_nanos })
}

fn timestamp(unix_nanos: i64) -> Timestamp {
    Timestamp { seconds: unix_nanos.div_euclid(1_000_000_000), nanos: unix_nanos.rem_euclid(1_000_000_000) as i32 }
}

fn from_timestamp(t: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds.checked_mul(1_000_000_000)?.checked_add(i64::from(t.nanos))
}

/// Serializes a manifest (at most [`MANIFEST_MAX_ENTRIES`]; the rest are dropped).
pub fn encode_manifest(entries: &[(ActionId, RemoteEntry)]) -> Vec<u8> {
    let entries = &entries[..entries.len().min(MANIFEST_MAX_ENTRIES)];
    let mut out = Vec::with_capacity(MANIFEST_MAGIC.len() + entries.len() * MANIFEST_RECORD);
    out.extend_from_slice(MANIFEST_MAGIC);
    for (action, e) in entries {
        out.extend_from_slice(&action.0);
        out.extend_from_slice(&e.output.0);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.time_nanos.to_le_bytes());
    }
    out
}

/// Parses a manifest; `None` if it is not one (wrong magic, a partial
/// record, too many entries).
pub fn decode_manifest(data: &[u8]) -> Option<Vec<(ActionId, RemoteEntry)>> {
    let body = data.strip_prefix(MANIFEST_MAGIC)?;
    if body.len() % MANIFEST_RECORD != 0 || body.len() / MANIFEST_RECORD > MANIFEST_MAX_ENTRIES {
        return None;
    }
    let entries = body
        .chunks_exact(MANIFEST_RECORD)
        .map(|r| {
            let word = |at: usize| <[u8; 8]>::try_from(&r[at..at + 8]).expect("8 bytes");
            let action = ActionId(r[..32].try_into().expect("32 bytes"));
            let entry = RemoteEntry {
                output: OutputId(r[32..64].try_into().expect("32 bytes")),
                size: u64::from_le_bytes(word(64)),
                time_nanos: i64::from_le_bytes(word(72)),
            };
            (action, entry)
        })
        .collect();
    Some(entries)
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
