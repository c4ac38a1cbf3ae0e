//! An upload in progress: bytes are hashed as they arrive and spooled to
//! memory (small blobs) or a temp file (large ones); `commit` verifies size
//! and hash and only then publishes the blob. Dropping a writer without
//! committing discards its bytes, so a failed or abandoned upload leaves
//! nothing readable behind.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use super::{Store, INLINE_MAX};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};

/// Receives one blob's bytes; see the module doc.
pub struct BlobWriter {
    store: Store,
    digest: Digest,
    hasher: Hasher,
    written: u64,
    spool: Spool,
}

enum Spool {
    /// At most `INLINE_MAX` bytes, since the declared size decides the spool.
    Memory(Vec<u8>),
    File(TempFile),
}

/// A temp file under `tmp/`, removed on drop unless it was renamed away.
struct TempFile {
    file: File,
    path: PathBuf,
    published: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobWriter {
    pub(super) fn new(store: Store, digest: Digest) -> Result<BlobWriter> {
        let spool = if digest.size <= INLINE_MAX {
            Spool::Memory(Vec::with_capacity(digest.size as usize))
        } else {
            let path = store.tmp_dir().join(uuid::Uuid::new_v4().to_string());
            let file =
                File::create(&path).map_err(|e| Error::io(format!("creating upload file {}", path.display()), e))?;
            Spool::File(TempFile { file, path, published: false })
        };
        Ok(BlobWriter { store, hasher: digest.function.hasher(), digest, written: 0, spool })
    }

    /// The digest this upload must match.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Bytes received so far (what QueryWriteStatus reports).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`. More bytes than the digest's size is the client's
    /// error; a full disk is RESOURCE_EXHAUSTED.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.written + data.len() as u64 > self.digest.size {
            return Err(Error::InvalidArgument(format!(
                "upload of {} sent {} bytes, more than the {} its digest declares",
                self.digest,
                self.written + data.len() as u64,
                self.digest.size
            )));
        }
        self.hasher.update(data);
        match &mut self.spool {
            Spool::Memory(buf) => buf.extend_from_slice(data),
            Spool::File(t) => t.file.write_all(data).map_err(|e| disk_error("writing upload", e))?,
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Verifies the bytes against the digest and publishes the blob. Blocking
    /// (fsync + RocksDB write): call from a blocking-capable context.
    pub fn commit(self) -> Result<()> {
        let d = self.digest;
        if self.written != d.size {
            return Err(Error::InvalidArgument(format!(
                "upload of {d} ended after {} of its {} bytes",
                self.written, d.size
            )));
        }
        let actual = self.hasher.finalize();
        if actual != d.hash {
            return Err(Error::InvalidArgument(format!(
                "uploaded data hashes to {} ({}), not the declared {}; nothing was stored",
                hex::encode(actual),
                d.function.name(),
                d.hex()
            )));
        }
        match self.spool {
            Spool::Memory(buf) => self.store.commit_blob(&d, Some(&buf), None).map(|_| ()),
            Spool::File(mut t) => {
                // Durable before visible: the record must never point at a
                // file whose bytes are still only in the page cache.
                t.file.sync_data().map_err(|e| disk_error("syncing upload", e))?;
                // Moved into the store, or dropped (deleted) if another upload won.
                t.published = self.store.commit_blob(&d, None, Some(&t.path))?;
                Ok(())
            }
        }
    }
}

fn disk_error(what: &str, e: std::io::Error) -> Error {
    let err = Error::io(what, e);
    if err.is_disk_full() {
        Error::ResourceExhausted(format!("{what}: the cache's disk is full ({err}); reads still work"))
    } else {
        err
    }
}
