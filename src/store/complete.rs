//! ActionCache completeness: an action result is only worth returning when
//! every blob it names is still in the CAS (output files, stdout/stderr, each
//! output directory's Tree blob and every file listed inside it). Bazel's
//! download-minimal mode never fetches outputs up front, so a dangling
//! result would break the build later instead of causing a rebuild now.

use prost::Message;

use super::Store;
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;
use crate::proto::reapi;

/// Largest Tree blob inspected; bigger trees are trusted as they are.
const MAX_TREE_BYTES: u64 = 64 << 20;

/// The first blob `result` refers to that the CAS lacks, or `None` when the
/// result is complete.
pub fn first_missing(store: &Store, function: DigestFunction, result: &reapi::ActionResult) -> Result<Option<Digest>> {
    let mut wanted = Vec::new();
    let files = result.output_files.iter().map(|f| f.digest.as_ref());
    for d in files.chain([result.stdout_digest.as_ref(), result.stderr_digest.as_ref()]) {
        push_digest(&mut wanted, function, d);
    }
    for dir in &result.output_directories {
        let Some(td) = dir.tree_digest.as_ref() else { continue };
        let Ok(tree_digest) = Digest::parse(function, &td.hash, td.size_bytes) else {
            continue;
        };
        if tree_digest.size > MAX_TREE_BYTES {
            wanted.push(tree_digest);
            continue;
        }
        let Some(bytes) = store.read_all(&tree_digest)? else {
            return Ok(Some(tree_digest));
        };
        // A Tree that does not decode can't be used by the client either.
        let Ok(tree) = reapi::Tree::decode(bytes.as_slice()) else {
            return Ok(Some(tree_digest));
        };
        for d in tree.root.iter().chain(tree.children.iter()) {
            for f in &d.files {
                push_digest(&mut wanted, function, f.digest.as_ref());
            }
        }
    }
    Ok(store.find_missing(&wanted)?.into_iter().next())
}

/// Adds a well-formed digest to `wanted` (malformed ones were rejected on update).
fn push_digest(wanted: &mut Vec<Digest>, function: DigestFunction, d: Option<&reapi::Digest>) {
    if let Some(d) = d {
        if let Ok(d) = Digest::parse(function, &d.hash, d.size_bytes) {
            wanted.push(d);
        }
    }
}
