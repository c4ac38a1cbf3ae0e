//! The CAS side of the store: existence checks against the index, reads
//! (inline or from a blob file), and publishing verified uploads.

use std::path::{Path, PathBuf};

use rocksdb::WriteBatch;

use super::lru::{self, KIND_CAS};
use super::nonblocking::{declined, read_options, ready, Mode, Nonblocking};
use super::reader::{self, OpenError};
use super::{cas_header, cas_key, parse_cas_value, BlobReader, BlobWriter, Inner, QueueEntry, Store};
use super::{CF_ATIME, CF_CAS, CF_CAS_DATA, CF_META, KIND_FILE, KIND_INLINE};
use crate::digest::Digest;
use crate::error::{Error, Result};

impl Store {
    /// Returns those of `digests` the CAS does not hold, in request order.
    /// The empty blob is always present. Reads only the index, never blob
    /// bytes. Every blob reported present counts as used now, so no eviction
    /// takes it within the minimum age.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        Ok(self.find_missing_in(Mode::MayBlock, digests)?.into_ready())
    }

    /// [`Store::find_missing`] in `mode` (see [`super::nonblocking`]).
    pub fn find_missing_in(&self, mode: Mode, digests: &[Digest]) -> Result<Nonblocking<Vec<Digest>>> {
        let keys: Vec<[u8; 33]> = digests.iter().map(cas_key).collect();
        // RocksDB sorts a batch's keys itself unless told they are sorted; its
        // sort (through the comparator, per key context) was a third of the
        // lookup's instructions, a sort of the plain keys here far less.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| keys[i]);
        let mut present = vec![false; digests.len()];
        let backlog = {
            let Some(_gate) = self.inner.use_gate_in(mode) else { return Ok(Nonblocking::WouldBlock) };
            let (cf, reads) = (self.inner.cf(CF_CAS), read_options(mode));
            let sorted = order.iter().map(|&i| &keys[i]);
            let found = match mode {
                Mode::MayBlock => self.inner.db.batched_multi_get_cf_opt(cf, sorted, true, &reads),
                // MultiGet reads table files whatever the read tier says
                // (RocksDB 9/10); point lookups honour it.
                Mode::MemoryOnly => sorted.map(|k| self.inner.db.get_pinned_cf_opt(cf, k, &reads)).collect(),
            };
            let mut used = Vec::with_capacity(digests.len());
            for (&i, r) in order.iter().zip(found) {
                let (d, k) = (&digests[i], &keys[i]);
                present[i] = match ready!(declined(r)?) {
                    Some(v) => {
                        let same = parse_cas_value(&v)?.1 == d.size;
                        if same {
                            used.push(lru::entry_key(KIND_CAS, k));
                        }
                        same
                    }
                    None => d.is_empty_blob(),
                };
            }
            self.inner.touches.touch_all(used)
        };
        ready!(self.inner.relieve_backlog_in(mode, backlog)?);
        Ok(Nonblocking::Ready(digests.iter().zip(present).filter(|(_, p)| !p).map(|(d, _)| *d).collect()))
    }

    /// True when the CAS holds `d` (a use of it, as for [`Store::find_missing`]).
    pub fn contains(&self, d: &Digest) -> Result<bool> {
        Ok(self.find_missing(std::slice::from_ref(d))?.is_empty())
    }

    /// Opens `d` for reading from `offset`, at most `limit` bytes (None = to the
    /// end). `Ok(None)` when the blob is absent. An offset past the end is
    /// OUT_OF_RANGE; an offset equal to the size reads nothing.
    pub fn read(&self, d: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<BlobReader>> {
        self.read_with(d, offset, limit, true)
    }

    /// Opens `d` from the start like [`Store::read`], but not as a use: for
    /// the write-behind drain, whose upload must not make a blob nobody
    /// asked for look recently used to the local LRU.
    pub(super) fn read_untouched(&self, d: &Digest) -> Result<Option<BlobReader>> {
        self.read_with(d, 0, None, false)
    }

    /// [`Store::read`], noting the use or not. An unnoted read holds the
    /// use gate until its bytes are open: without a noted use nothing else
    /// keeps eviction from taking the blob between the lookup and the open.
    fn read_with(&self, d: &Digest, offset: u64, limit: Option<u64>, touch: bool) -> Result<Option<BlobReader>> {
        if offset > d.size {
            return Err(Error::OutOfRange(format!(
                "read offset {offset} is past the end of blob {d} ({} bytes)",
                d.size
            )));
        }
        let len = limit.map_or(d.size - offset, |l| l.min(d.size - offset));
        if d.is_empty_blob() {
            return Ok(Some(BlobReader::inline(Vec::new(), 0, 0)));
        }
        let key = cas_key(d);
        let gate = self.inner.use_gate.read().unwrap_or_else(|p| p.into_inner());
        let (kind, legacy_inline, backlog) = {
            let Some(v) = self.inner.db.get_pinned_cf(self.inner.cf(CF_CAS), key)? else {
                return Ok(None);
            };
            let (kind, size, legacy) = parse_cas_value(&v)?;
            if size != d.size {
                return Ok(None);
            }
            let backlog = touch && self.inner.touches.touch(lru::entry_key(KIND_CAS, &key));
            (kind, legacy.to_vec(), backlog)
        };
        let mut gate = if touch {
            drop(gate);
            None
        } else {
            Some(gate)
        };
        self.inner.relieve_backlog(backlog)?;
        match kind {
            KIND_INLINE if !legacy_inline.is_empty() => Ok(Some(BlobReader::inline(legacy_inline, offset, len))),
            KIND_INLINE => match self.inner.db.get_cf(self.inner.cf(CF_CAS_DATA), key)? {
                Some(data) if data.len() as u64 == d.size => Ok(Some(BlobReader::inline(data, offset, len))),
                found => {
                    drop(gate.take());
                    let why =
                        found.map_or("its bytes are missing".to_string(), |b| format!("it holds {} bytes", b.len()));
                    tracing::error!(digest = ?d, "inline blob unusable ({why}); forgetting it");
                    self.forget_if(d, |inner| {
                        let data = inner.db.get_pinned_cf(inner.cf(CF_CAS_DATA), key)?;
                        Ok(data.is_none_or(|b| b.len() as u64 != d.size))
                    })?;
                    Ok(None)
                }
            },
            KIND_FILE => {
                let path = self.inner.blob_path(d);
                let opened = reader::open_file(&path, d.size, offset, len);
                drop(gate.take());
                match opened {
                    Ok(r) => Ok(Some(r)),
                    Err(OpenError::Gone(why)) => {
                        // The record outlived its file (deleted by hand, or a
                        // truncated file after power loss): drop the record so
                        // the blob reads as missing and gets uploaded again.
                        tracing::error!(digest = ?d, path = %path.display(), "blob file unusable ({why}); forgetting the blob");
                        self.forget_if(d, |_| Ok(reader::file_is_gone(&path, d.size)))?;
                        Ok(None)
                    }
                    // Out of file descriptors, an I/O error, a permission
                    // problem: the blob is fine, this read is not. Never
                    // delete data for a failure that may pass.
                    Err(OpenError::Io(e)) => Err(reader::read_error(&path, e)),
                }
            }
            k => Err(Error::Internal(format!("cas record for {d} has unknown kind {k}"))),
        }
    }

    /// Reads a whole small blob into memory (for batch reads and Tree/Directory
    /// protos); callers bound `d.size` first.
    pub fn read_all(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(mut r) = self.read(d, 0, None)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(d.size as usize);
        while let Some(chunk) = r.next_chunk(1 << 20)? {
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// Starts an upload of `d`; bytes are verified against `d` on commit.
    pub fn begin_write(&self, d: Digest) -> Result<BlobWriter> {
        BlobWriter::new(self.clone(), d)
    }

    /// Stores a blob held in memory after verifying it hashes to `d`.
    pub fn put(&self, d: Digest, data: &[u8]) -> Result<()> {
        let mut w = self.begin_write(d)?;
        w.write(data)?;
        w.commit()
    }

    /// Makes a verified blob visible. `file` is the temp file holding it, for
    /// blobs above [`super::INLINE_MAX`]; otherwise `inline` holds the bytes.
    /// Returns true when `file` was moved into the store (else the caller
    /// deletes it). Storing a blob already held counts as a use of it; a
    /// record whose file has gone missing is repaired with the new bytes.
    /// `behind`: queue the new blob for the tier, if one is attached.
    pub(super) fn commit_blob(
        &self,
        d: &Digest,
        inline: Option<&[u8]>,
        file: Option<&Path>,
        behind: bool,
    ) -> Result<bool> {
        let inner = &self.inner;
        let key = cas_key(d);
        let entry = lru::entry_key(KIND_CAS, &key);
        let kind = if file.is_some() { KIND_FILE } else { KIND_INLINE };
        let dest = inner.blob_path(d);
        let published = {
            // Gate before lock, always: eviction takes them in this order.
            let _gate = inner.use_gate.read().unwrap_or_else(|p| p.into_inner());
            let _guard = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            let old = match inner.db.get_pinned_cf(inner.cf(CF_CAS), key)? {
                Some(v) => Some(parse_cas_value(&v).map(|(k, size, _)| (k, size))?),
                None => None,
            };
            if let Some((old_kind, old_size)) = old {
                let intact = old_size == d.size && (old_kind != KIND_FILE || !reader::file_is_gone(&dest, d.size));
                if intact {
                    // Someone else stored it first; ours is dropped.
                    let backlog = inner.touches.touch(entry);
                    drop(_guard);
                    drop(_gate);
                    inner.relieve_backlog(backlog)?;
                    return Ok(false);
                }
                tracing::warn!(digest = ?d, "repairing a blob whose stored copy was lost");
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(inner.cf(CF_CAS), key, cas_header(kind, d.size));
            match inline {
                Some(bytes) if file.is_none() => batch.put_cf(inner.cf(CF_CAS_DATA), key, bytes),
                _ => batch.delete_cf(inner.cf(CF_CAS_DATA), key),
            }
            let previous = match old {
                Some(_) => inner.db.get_cf(inner.cf(CF_ATIME), &entry)?,
                None => None,
            };
            inner.stamp(&mut batch, &entry, previous.as_deref());
            let (dn, db) = match old {
                Some((_, old_size)) => (0, d.size as i64 - old_size as i64),
                None => (1, d.size as i64),
            };
            inner.counters.add_cas(&mut batch, inner.cf(CF_META), dn, db);
            let queued = inner.queue_behind(behind, &mut batch, QueueEntry::Blob(*d), d.size)?;
            let published = match file {
                Some(path) => Some(publish(path, &dest)?),
                None => None,
            };
            if let Err(e) = inner.db.write(batch) {
                // No record, so no file: a blob file without a record would be
                // space that nothing accounts for.
                if published.is_some() {
                    let _ = std::fs::remove_file(&dest);
                }
                return Err(e.into());
            }
            inner.counters.applied_cas(dn, db);
            if let Some(q) = queued {
                q.applied();
            }
            published
        };
        if let Some(dir) = &published {
            // The rename is durable only once its directory is synced; done
            // outside the lock (a record that outlives a lost rename after
            // power loss is dropped by the next read and repaired by the next
            // upload).
            sync_dir(dir)?;
        }
        inner.wake_if_over_limit();
        Ok(published.is_some())
    }

    /// Removes a CAS entry and its file if `still_broken` (checked under the
    /// commit lock) confirms the fault a reader saw: a re-upload may have
    /// repaired the entry since.
    fn forget_if(&self, d: &Digest, still_broken: impl FnOnce(&Inner) -> Result<bool>) -> Result<()> {
        let removed = {
            let _guard = self.inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            if !still_broken(&self.inner)? {
                return Ok(());
            }
            self.inner.remove_entry(&lru::entry_key(KIND_CAS, &cas_key(d)))?
        };
        self.inner.bury(removed.doomed);
        Ok(())
    }
}

/// Moves a verified temp file to its place under `blobs/`; returns the
/// directory it now lives in.
fn publish(tmp: &Path, dest: &Path) -> Result<PathBuf> {
    let parent = dest.parent().expect("blob path has a parent").to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    std::fs::rename(tmp, dest).map_err(|e| Error::io(format!("publishing {}", dest.display()), e))?;
    Ok(parent)
}

/// fsyncs a directory, making the renames into it durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}
