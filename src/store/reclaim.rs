//! Reclaims blob files that no record accounts for. A crash between
//! publishing a file (rename) and writing its record, or between removing a
//! record and moving its file aside, leaves such a file: space that the
//! counters don't see, so disk use would drift above `--max-size` for ever.
//! The sweep runs in the background after start-up, a few shard directories
//! per tick, and decides each file under the commit lock, where commits
//! publish: a file published meanwhile has its record by then.

use std::path::{Path, PathBuf};

use super::{cas_key, parse_cas_value, Inner, Store, CF_CAS, KIND_FILE};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};

/// Shard directories (`blobs/{function}/{xx}`) examined per background tick.
pub(super) const DIRS_PER_TICK: usize = 16;
/// Files looked up per RocksDB multi-get.
const LOOKUP_CHUNK: usize = 1_000;

/// Where a sweep over `blobs/` has got to.
#[derive(Default)]
pub(super) struct Sweep {
    /// Index into [`DigestFunction::ALL`].
    function: usize,
    /// Next shard (`00`..`ff`) of that function.
    shard: usize,
    /// Files and bytes reclaimed so far.
    files: u64,
    bytes: u64,
}

impl Sweep {
    /// Examines up to `dirs` shard directories; true when the sweep is done.
    pub(super) fn step(&mut self, inner: &Inner, dirs: usize) -> Result<bool> {
        for _ in 0..dirs {
            let Some(function) = DigestFunction::ALL.get(self.function).copied() else {
                if self.files > 0 {
                    tracing::warn!(
                        files = self.files,
                        bytes = self.bytes,
                        "reclaimed blob files that no record accounted for (left by a crash)"
                    );
                }
                return Ok(true);
            };
            let dir = inner.root.join("blobs").join(function.name()).join(format!("{:02x}", self.shard));
            let (files, bytes) = sweep_dir(inner, function, &dir)?;
            self.files += files;
            self.bytes += bytes;
            self.shard += 1;
            if self.shard == 256 {
                self.shard = 0;
                self.function += 1;
            }
        }
        Ok(false)
    }
}

/// Reclaims the orphans of one shard directory; returns (files, bytes).
fn sweep_dir(inner: &Inner, function: DigestFunction, dir: &Path) -> Result<(u64, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut found: Vec<(Digest, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        // Only files named as blobs are ours to judge; leave anything else.
        let Some(d) = name.to_str().and_then(|n| Digest::parse(function, n, 0).ok()) else { continue };
        found.push((d, entry.path()));
    }
    let (mut files, mut bytes) = (0, 0);
    for chunk in found.chunks(LOOKUP_CHUNK) {
        let keys: Vec<[u8; 33]> = chunk.iter().map(|(d, _)| cas_key(d)).collect();
        let records = inner.db.batched_multi_get_cf(inner.cf(CF_CAS), keys.iter(), false);
        for ((key, (_, path)), record) in keys.iter().zip(chunk).zip(records) {
            if accounts_for_file(record?.as_deref())? {
                continue;
            }
            // Decide again under the lock: a commit may have just published it.
            let doomed = {
                let _guard = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
                let record = inner.db.get_pinned_cf(inner.cf(CF_CAS), key)?;
                if accounts_for_file(record.as_deref())? {
                    continue;
                }
                inner.move_to_tmp(path)
            };
            if let Some(doomed) = doomed {
                bytes += std::fs::metadata(&doomed).map(|m| m.len()).unwrap_or(0);
                files += 1;
                inner.bury(Some(doomed));
            }
        }
    }
    Ok((files, bytes))
}

/// True when a `cas` record says its blob is a file.
fn accounts_for_file(record: Option<&[u8]>) -> Result<bool> {
    Ok(match record {
        Some(v) => parse_cas_value(v)?.0 == KIND_FILE,
        None => false,
    })
}

impl Store {
    /// Sweeps all of `blobs/` now for files no record accounts for (the
    /// background thread does this once after start-up); returns how many
    /// files were reclaimed.
    pub fn reclaim_orphans(&self) -> Result<u64> {
        let mut sweep = Sweep::default();
        while !sweep.step(&self.inner, usize::MAX)? {}
        Ok(sweep.files)
    }
}
