//! ActionCache completeness: an action result is only worth returning when
//! every blob it names is still in the CAS (output files, stdout/stderr, each
//! output directory's Tree blob and every file listed inside it, or its root
//! Directory and every Directory and file below it). Bazel's download-minimal
//! mode never fetches outputs up front, so a dangling result would break the
//! build later instead of causing a rebuild now.
//!
//! Which digests a result, Tree or Directory names is protocol knowledge and
//! lives in [`crate::wire::refs`]; this module only asks the store.

use std::collections::HashSet;

use super::nonblocking::{ready, Mode, Nonblocking};
use super::Store;
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;
use crate::proto::reapi;
use crate::wire::refs::{self, ResultRefs};

/// Largest Tree blob inspected, and the most Directory bytes read walking
/// one output directory; past it the rest is trusted as it is.
const MAX_TREE_BYTES: u64 = 64 << 20;

/// Every blob `result` refers to (Trees and Directories included) when the
/// CAS holds them all, or else the first one it lacks. The list is what a
/// hit uses (a bounded bucket is told so).
pub fn check(
    store: &Store,
    function: DigestFunction,
    result: &reapi::ActionResult,
) -> Result<std::result::Result<Vec<Digest>, Digest>> {
    Ok(check_in(Mode::MayBlock, store, function, result)?.into_ready())
}

/// [`check`] in `mode`: in [`Mode::MemoryOnly`], a result with output
/// directories would block (their Trees and Directories are blob reads).
pub fn check_in(
    mode: Mode,
    store: &Store,
    function: DigestFunction,
    result: &reapi::ActionResult,
) -> Result<Nonblocking<std::result::Result<Vec<Digest>, Digest>>> {
    let refs = ResultRefs::lenient(function, result);
    if mode == Mode::MemoryOnly && !(refs.trees.is_empty() && refs.root_directories.is_empty()) {
        return Ok(Nonblocking::WouldBlock);
    }
    let mut wanted = refs.blobs;
    for tree_digest in refs.trees {
        wanted.push(tree_digest);
        if tree_digest.size > MAX_TREE_BYTES {
            continue;
        }
        let Some(bytes) = store.read_all(&tree_digest)? else {
            return Ok(Nonblocking::Ready(Err(tree_digest)));
        };
        // A Tree that does not decode can't be used by the client either.
        let Ok(files) = refs::tree_files(function, &bytes) else {
            return Ok(Nonblocking::Ready(Err(tree_digest)));
        };
        wanted.extend(files);
    }
    for root in refs.root_directories {
        if let Some(gone) = walk_directories(store, function, root, &mut wanted)? {
            return Ok(Nonblocking::Ready(Err(gone)));
        }
    }
    let missing = ready!(store.find_missing_in(mode, &wanted)?);
    Ok(Nonblocking::Ready(match missing.into_iter().next() {
        Some(gone) => Err(gone),
        None => Ok(wanted),
    }))
}

/// Reads the Directory hierarchy under `root`, adding its files to `wanted`.
/// Returns the first Directory that is missing or does not decode.
fn walk_directories(
    store: &Store,
    function: DigestFunction,
    root: Digest,
    wanted: &mut Vec<Digest>,
) -> Result<Option<Digest>> {
    let mut queue = vec![root];
    let mut seen = HashSet::from([root]);
    let mut budget = MAX_TREE_BYTES;
    while let Some(d) = queue.pop() {
        wanted.push(d);
        if d.size > budget {
            continue; // Too much to read: only check it exists.
        }
        budget -= d.size;
        let Some(bytes) = store.read_all(&d)? else {
            return Ok(Some(d));
        };
        let Ok(dir) = refs::directory_refs(function, &bytes) else {
            return Ok(Some(d));
        };
        wanted.extend(dir.files);
        queue.extend(dir.directories.into_iter().filter(|c| seen.insert(*c)));
    }
    Ok(None)
}
// --- tiers ---

/// Every blob an ActionResult names, as far as the local CAS can tell: what
/// a tier must hold before the result may be written to it, and what a fill
/// from a tier must fetch before the result may be served.
#[derive(Debug, Default)]
pub struct Named {
    /// Every digest named: plain blobs, Trees, Directories and the files
    /// inside the Trees and Directories that could be read.
    pub blobs: Vec<Digest>,
    /// Trees and Directories absent from the local CAS: what is below them
    /// is unknown until they are fetched.
    pub absent: Vec<Digest>,
    /// Trees and Directories present but undecodable: the result is unusable.
    pub broken: Vec<Digest>,
}

/// What `result` names (see [`Named`]); Tree and Directory reads are bounded
/// as in [`check`].
pub fn named(store: &Store, function: DigestFunction, result: &reapi::ActionResult) -> Result<Named> {
    let refs = ResultRefs::lenient(function, result);
    let mut out = Named { blobs: refs.blobs, ..Named::default() };
    for tree in refs.trees {
        out.blobs.push(tree);
        if tree.size > MAX_TREE_BYTES {
            continue;
        }
        match store.read_all(&tree)? {
            None => out.absent.push(tree),
            Some(bytes) => match refs::tree_files(function, &bytes) {
                Ok(files) => out.blobs.extend(files),
                Err(_) => out.broken.push(tree),
            },
        }
    }
    let mut budget = MAX_TREE_BYTES;
    for root in refs.root_directories {
        let mut queue = vec![root];
        let mut seen = HashSet::from([root]);
        while let Some(d) = queue.pop() {
            out.blobs.push(d);
            if d.size > budget {
                continue;
            }
            budget -= d.size;
            match store.read_all(&d)? {
                None => out.absent.push(d),
                Some(bytes) => match refs::directory_refs(function, &bytes) {
                    Ok(dir) => {
                        out.blobs.extend(dir.files);
                        queue.extend(dir.directories.into_iter().filter(|c| seen.insert(*c)));
                    }
                    Err(_) => out.broken.push(d),
                },
            }
        }
    }
    Ok(out)
}
// --- end of tiers ---
