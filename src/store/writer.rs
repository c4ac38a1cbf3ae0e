//! An upload in progress: bytes are hashed as they arrive and spooled to
//! memory (small blobs) or a temp file (large ones); `commit` verifies size
//! and hash and only then publishes the blob. Dropping a writer without
//! committing discards its bytes, so a failed or abandoned upload leaves
//! nothing readable behind.
//!
//! Beginning an upload is where the upload limits apply: a declared size over
//! `--max-blob-size` is refused (INVALID_ARGUMENT, as REAPI prescribes for
//! blobs over `max_cas_blob_size_bytes`; retrying cannot help), and the
//! declared size is reserved from the `--max-tmp-size` budget for as long as
//! the writer lives (RESOURCE_EXHAUSTED when full: retrying later can).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::uploads::Reservation;
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
    /// This upload's share of the upload budget, released when the writer goes.
    _reservation: Reservation,
    /// Queue the committed blob for the tier (false for fills from the tier).
    behind: bool,
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
    /// Bytes written, and the store-wide count of spooled bytes they are in.
    bytes: u64,
    spooled: Arc<AtomicU64>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Published bytes are in the stored total by now; others are deleted.
        self.spooled.fetch_sub(self.bytes, Ordering::AcqRel);
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobWriter {
    pub(super) fn new(store: Store, digest: Digest) -> Result<BlobWriter> {
        let limits = store.uploads().limits();
        if digest.size > limits.max_blob_size {
            return Err(Error::InvalidArgument(format!(
                "blob {digest} is larger than the {} bytes this cache accepts (--max-blob-size, advertised as \
                 max_cas_blob_size_bytes); keep it out of the remote cache",
                limits.max_blob_size
            )));
        }
        let reservation = store.uploads().reserve(digest.size)?;
        let spool = if digest.size <= INLINE_MAX {
            Spool::Memory(Vec::with_capacity(digest.size as usize))
        } else {
            let path = store.tmp_dir().join(uuid::Uuid::new_v4().to_string());
            let file =
                File::create(&path).map_err(|e| Error::io(format!("creating upload file {}", path.display()), e))?;
            Spool::File(TempFile { file, path, published: false, bytes: 0, spooled: store.uploads().spool_counter() })
        };
        Ok(BlobWriter {
            store,
            hasher: digest.function.hasher(),
            digest,
            written: 0,
            spool,
            _reservation: reservation,
            behind: true,
        })
    }

    /// Marks a fill from a tier: its commit is not queued to be written
    /// back to the tier it came from.
    pub fn from_tier(mut self) -> BlobWriter {
        self.behind = false;
        self
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
            Spool::File(t) => {
                t.file.write_all(data).map_err(|e| disk_error("writing upload", e))?;
                t.bytes += data.len() as u64;
                t.spooled.fetch_add(data.len() as u64, Ordering::AcqRel);
                // Room is made while the bytes arrive, not after a large
                // blob has landed: the disk stays within --max-size.
                self.store.inner.wake_if_over_limit();
            }
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
            Spool::Memory(buf) => self.store.commit_blob(&d, Some(&buf), None, self.behind).map(|_| ()),
            Spool::File(mut t) => {
                // Durable before visible: the record must never point at a
                // file whose bytes are still only in the page cache.
                t.file.sync_data().map_err(|e| disk_error("syncing upload", e))?;
                // Moved into the store, or dropped (deleted) if another upload won.
                t.published = self.store.commit_blob(&d, None, Some(&t.path), self.behind)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UploadLimits;
    use crate::digest::DigestFunction;

    fn store(max_blob_size: u64, max_tmp_size: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.uploads().set_limits(&UploadLimits { max_blob_size, max_tmp_size });
        (dir, store)
    }

    fn blob(seed: u8, size: usize) -> (Digest, Vec<u8>) {
        let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(seed)).collect();
        (DigestFunction::Sha256.digest_of(&data), data)
    }

    #[test]
    fn blobs_over_the_limit_are_refused_when_the_upload_begins() {
        let (_dir, store) = store(1000, 1 << 20);
        for (size, ok) in [(0, true), (999, true), (1000, true), (1001, false), (u64::MAX >> 1, false)] {
            let d = Digest { size, ..DigestFunction::Sha256.empty() };
            match store.begin_write(d) {
                Ok(_) => assert!(ok, "{size} accepted"),
                Err(e) => {
                    assert!(!ok, "{size} refused: {e}");
                    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
                    assert!(e.to_string().contains("--max-blob-size"), "{e}");
                }
            }
        }
        assert_eq!(store.uploads().reserved(), 0, "refused and dropped uploads hold nothing");
    }

    #[test]
    fn the_budget_is_reserved_up_front_and_released() {
        let (_dir, store) = store(1 << 20, 1 << 20);
        let (a, a_data) = blob(3, 600 << 10);
        let (b, b_data) = blob(5, 600 << 10);
        let w = store.begin_write(a).unwrap();
        assert_eq!(store.uploads().reserved(), a.size, "reserved before any byte arrives");
        let err = store.begin_write(b).err().expect("no room for a second upload");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        assert!(err.to_string().contains("--max-tmp-size"), "{err}");
        drop(w); // Abandoned: released.
        assert_eq!(store.uploads().reserved(), 0);
        store.put(b, &b_data).unwrap(); // Committed: released.
        assert_eq!(store.uploads().reserved(), 0);

        // A parked upload keeps its reservation, and gives way to a new one.
        let mut w = store.begin_write(a).unwrap();
        w.write(&a_data[..1000]).unwrap();
        store.uploads().park("parked".into(), w);
        assert_eq!(store.uploads().reserved(), a.size);
        let (c, c_data) = blob(7, 600 << 10);
        store.put(c, &c_data).unwrap();
        assert!(store.uploads().take("parked").is_none(), "dropped to make room");
        assert_eq!(store.uploads().reserved(), 0);
        assert!(std::fs::read_dir(store.tmp_dir()).unwrap().next().is_none(), "its temp file went with it");
    }
}
