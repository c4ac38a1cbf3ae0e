//! The storage engine: one RocksDB database plus a directory of blob files.
//!
//! Layout of a data dir:
//! - `db/`: RocksDB with column families `cas` (digest → small blob inline,
//!   or a marker that the blob is a file), `ac` (instance + action digest →
//!   ActionResult bytes), `atime` and `lru` (last use of every entry, see
//!   [`lru`]) and `meta` (entry, byte, hit, miss and eviction counters,
//!   maintained by a merge operator in the same write batch as each change, so
//!   start-up reads a few keys and scans nothing).
//! - `blobs/{function}/{xx}/{hash}`: blobs larger than [`INLINE_MAX`], one file each.
//! - `tmp/`: uploads in progress; wiped at start-up, so an interrupted upload
//!   leaks no space across a restart.
//!
//! Why files beside RocksDB for large blobs rather than RocksDB's BlobDB or
//! chunk keys: a file is written once, streamed while hashing, published by
//! one `rename`, read at any offset with one `seek`, and its space comes back
//! the moment it is deleted; large values inside an LSM tree get rewritten by
//! compaction and free their space only after garbage collection. Small blobs
//! (the median build output is a few KiB) stay inline, where RocksDB packs
//! them densely and answers FindMissingBlobs from memory-resident blocks.
//!
//! Atomicity: a blob becomes visible only when its `cas` key is written, after
//! its bytes are complete, verified and (for files) fsynced and renamed into
//! place. Readers therefore never see a partial blob.

pub mod complete;
mod counters;
mod evict;
mod lru;
mod reader;
mod uploads;
mod writer;
pub mod zstd;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub use counters::Stats;
pub use lru::Clock;
pub use reader::BlobReader;
pub use uploads::Uploads;
pub use writer::BlobWriter;

/// Blobs up to this size are stored inside RocksDB; larger ones as files.
/// Also bounds the memory an upload of a small blob buffers.
pub const INLINE_MAX: u64 = 256 * 1024;

const CF_CAS: &str = "cas";
const CF_AC: &str = "ac";
const CF_META: &str = "meta";
const CF_ATIME: &str = "atime";
const CF_LRU: &str = "lru";

/// What the store must keep within.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bound on stored bytes (AC + CAS); eviction starts above it.
    pub max_size: u64,
    /// Entries used more recently than this are never evicted, even over the
    /// limit (the overrun is logged and counted instead).
    pub min_age: Duration,
    /// The time source for last-use stamps (the system clock outside tests).
    pub clock: Clock,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: crate::config::DEFAULT_MAX_SIZE,
            min_age: crate::config::DEFAULT_MIN_AGE,
            clock: Clock::default(),
        }
    }
}

/// First byte of a `cas` value: how the blob is stored.
const KIND_INLINE: u8 = 0;
const KIND_FILE: u8 = 1;

/// A handle on an open data dir; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    root: PathBuf,
    counters: counters::Counters,
    /// Serialises the check-then-insert of a commit, so concurrent uploads of
    /// one blob count its bytes once. Held only for a RocksDB get + write and
    /// a rename, never across I/O on blob contents.
    commit_lock: Mutex<()>,
    uploads: Uploads,
    limits: Limits,
    /// Uses noted since the last flush; see [`lru`].
    touches: lru::Touches,
    /// Wakes the background flusher early (writes past the limit, shutdown).
    wake: Arc<evict::Wake>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Keep the last second of LRU information across a clean shutdown.
        if let Err(e) = evict::flush_touches(self) {
            tracing::warn!(error = %e, "could not record recent uses at shutdown");
        }
    }
}

/// The key of a CAS entry: digest function tag + 32 hash bytes. The size is
/// kept in the value and compared on lookup.
fn cas_key(d: &Digest) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = d.function.tag();
    k[1..].copy_from_slice(&d.hash);
    k
}

/// The key of an ActionCache entry: instance name, NUL (never valid in an
/// instance name), digest function tag, hash. Entries are per instance.
fn ac_key(instance: &str, d: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(instance.len() + 34);
    k.extend_from_slice(instance.as_bytes());
    k.push(0);
    k.push(d.function.tag());
    k.extend_from_slice(&d.hash);
    k
}

/// Encodes a `cas` value header: kind byte + size (u64 LE).
fn cas_header(kind: u8, size: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = kind;
    h[1..].copy_from_slice(&size.to_le_bytes());
    h
}

/// Decodes a `cas` value into (kind, size, inline bytes).
fn parse_cas_value(v: &[u8]) -> Result<(u8, u64, &[u8])> {
    if v.len() < 9 {
        return Err(Error::Internal(format!("cas record of {} bytes is truncated", v.len())));
    }
    let size = u64::from_le_bytes(v[1..9].try_into().expect("8 bytes"));
    Ok((v[0], size, &v[9..]))
}

impl Store {
    /// Opens (creating if needed) the data dir at `root` with default limits.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, Limits::default())
    }

    /// Opens the data dir at `root`; starts the background thread that records
    /// uses and evicts (it stops when the last handle is dropped).
    pub fn open_with(root: &Path, limits: Limits) -> Result<Store> {
        for sub in ["db", "blobs", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(|e| Error::io(format!("creating {}", root.join(sub).display()), e))?;
        }
        // Uploads in progress at the last shutdown or crash are gone for good.
        wipe_dir(&root.join("tmp"))?;

        let db = DB::open_cf_descriptors(&db_options(), root.join("db"), cf_descriptors())?;
        let counters = counters::Counters::load(&db, db.cf_handle(CF_META).expect("meta cf"))?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                root: root.to_path_buf(),
                counters,
                commit_lock: Mutex::new(()),
                uploads: Uploads::new(),
                limits,
                touches: lru::Touches::new(),
                wake: Arc::new(evict::Wake::default()),
            }),
        };
        // A manual clock means the owner (a test, the LRU replay) drives
        // upkeep itself through `maintain`; a background round would race it.
        if !store.inner.limits.clock.is_manual() {
            evict::start_background(&store)?;
        }
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.inner.cf(name)
    }

    /// Records uses and evicts now rather than at the next tick (tests, shutdown).
    pub fn maintain(&self) -> Result<()> {
        evict::maintain(&self.inner)
    }

    /// Entries and bytes stored.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Uploads that were interrupted and may be resumed.
    pub fn uploads(&self) -> &Uploads {
        &self.inner.uploads
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.inner.root.join("blobs").join(d.function.name()).join(&hex[..2]).join(hex)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    /// Returns those of `digests` the CAS does not hold, in request order.
    /// The empty blob is always present.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let keys: Vec<[u8; 33]> = digests.iter().map(cas_key).collect();
        let found = self.inner.db.batched_multi_get_cf(self.cf(CF_CAS), keys.iter(), false);
        let mut missing = Vec::new();
        let mut used = Vec::with_capacity(digests.len());
        for ((d, k), r) in digests.iter().zip(&keys).zip(found) {
            let present = match r? {
                Some(v) => {
                    let same = parse_cas_value(&v)?.1 == d.size;
                    if same {
                        used.push(lru::entry_key(lru::KIND_CAS, k));
                    }
                    same
                }
                None => d.is_empty_blob(),
            };
            if !present {
                missing.push(*d);
            }
        }
        // Asking whether a blob exists means a build needs it.
        self.inner.touches.touch_all(used);
        Ok(missing)
    }

    /// True when the CAS holds `d`.
    pub fn contains(&self, d: &Digest) -> Result<bool> {
        Ok(self.find_missing(std::slice::from_ref(d))?.is_empty())
    }

    /// Opens `d` for reading from `offset`, at most `limit` bytes (None = to the
    /// end). `Ok(None)` when the blob is absent. An offset past the end is
    /// OUT_OF_RANGE; an offset equal to the size reads nothing.
    pub fn read(&self, d: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<BlobReader>> {
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
        let Some(v) = self.inner.db.get_pinned_cf(self.cf(CF_CAS), cas_key(d))? else {
            return Ok(None);
        };
        let (kind, size, data) = parse_cas_value(&v)?;
        if size != d.size {
            return Ok(None);
        }
        self.inner.touches.touch(lru::entry_key(lru::KIND_CAS, &cas_key(d)));
        match kind {
            KIND_INLINE => Ok(Some(BlobReader::inline(data.to_vec(), offset, len))),
            KIND_FILE => {
                let path = self.blob_path(d);
                match reader::open_file(&path, size, offset, len) {
                    Ok(r) => Ok(Some(r)),
                    Err(e) => {
                        // The record outlived its file (deleted by hand, or a
                        // truncated file after power loss): drop the record so
                        // the blob reads as missing and gets uploaded again.
                        tracing::error!(digest = ?d, path = %path.display(), error = %e, "blob file unusable; forgetting the blob");
                        self.forget_cas(d)?;
                        Ok(None)
                    }
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
    /// blobs above [`INLINE_MAX`]; otherwise `inline` holds the bytes. Returns
    /// true when `file` was moved into the store (else the caller deletes it).
    fn commit_blob(&self, d: &Digest, inline: Option<&[u8]>, file: Option<&Path>) -> Result<bool> {
        let cf = self.cf(CF_CAS);
        let key = cas_key(d);
        let _guard = self.inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = self.inner.db.get_pinned_cf(cf, key)? {
            if parse_cas_value(&v)?.1 == d.size {
                return Ok(false); // Someone else stored it first; ours is dropped.
            }
        }
        let mut value = cas_header(if file.is_some() { KIND_FILE } else { KIND_INLINE }, d.size).to_vec();
        let mut published = None;
        if let Some(path) = file {
            let dest = self.blob_path(d);
            let parent = dest.parent().expect("blob path has a parent");
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            std::fs::rename(path, &dest).map_err(|e| Error::io(format!("publishing {}", dest.display()), e))?;
            published = Some(dest);
        } else {
            value.extend_from_slice(inline.unwrap_or_default());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, key, &value);
        self.inner.stamp(&mut batch, &lru::entry_key(lru::KIND_CAS, &key), None);
        self.inner.counters.add_cas(&mut batch, self.cf(CF_META), 1, d.size as i64);
        if let Err(e) = self.inner.db.write(batch) {
            // No record, so no file: a blob file without a record would be
            // space that nothing accounts for.
            if let Some(dest) = &published {
                let _ = std::fs::remove_file(dest);
            }
            return Err(e.into());
        }
        self.inner.counters.applied_cas(1, d.size as i64);
        drop(_guard);
        self.inner.wake_if_over_limit();
        Ok(published.is_some())
    }

    /// Removes a CAS entry and its file, fixing the counters.
    fn forget_cas(&self, d: &Digest) -> Result<()> {
        let _guard = self.inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.remove_entry(&lru::entry_key(lru::KIND_CAS, &cas_key(d)))?;
        Ok(())
    }

    /// The stored ActionResult bytes for `action` in `instance`, if any.
    /// Counts as a use of the entry (the caller touches the blobs it names).
    pub fn get_action(&self, instance: &str, action: &Digest) -> Result<Option<Vec<u8>>> {
        let key = ac_key(instance, action);
        let found = self.inner.db.get_cf(self.cf(CF_AC), &key)?;
        if found.is_some() {
            self.inner.touches.touch(lru::entry_key(lru::KIND_AC, &key));
        }
        self.inner.counters.count_lookup(found.is_some());
        Ok(found)
    }

    /// Recounts the last `get_action` hit as a miss: the result named a blob
    /// the CAS no longer holds, so the client was told NOT_FOUND.
    pub fn count_incomplete_hit(&self) {
        self.inner.counters.hit_was_a_miss();
    }

    /// Stores (or replaces) the ActionResult bytes for `action` in `instance`.
    pub fn put_action(&self, instance: &str, action: &Digest, result: &[u8]) -> Result<()> {
        let cf = self.cf(CF_AC);
        let key = ac_key(instance, action);
        let _guard = self.inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.inner.db.get_pinned_cf(cf, &key)?.map(|v| v.len() as i64);
        let (dn, db) = match old {
            Some(len) => (0, result.len() as i64 - len),
            None => (1, result.len() as i64),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, &key, result);
        let entry = lru::entry_key(lru::KIND_AC, &key);
        let previous = self.inner.db.get_cf(self.cf(CF_ATIME), &entry)?;
        self.inner.stamp(&mut batch, &entry, previous.as_deref());
        self.inner.counters.add_ac(&mut batch, self.cf(CF_META), dn, db);
        self.inner.db.write(batch)?;
        self.inner.counters.applied_ac(dn, db);
        drop(_guard);
        self.inner.wake_if_over_limit();
        Ok(())
    }
}

/// RocksDB's block cache, shared by all column families: the one memory
/// knob that grows with the working set. Everything else RocksDB holds is
/// bounded by [`MEMTABLE_BUDGET`].
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Total memtable memory across column families before RocksDB flushes.
pub const MEMTABLE_BUDGET: usize = 64 << 20;

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.increase_parallelism(2);
    o.set_db_write_buffer_size(MEMTABLE_BUDGET);
    o
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let table = |bloom: bool| {
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_block_cache(&cache);
        // Index and filter blocks live in (and are bounded by) the cache.
        t.set_cache_index_and_filter_blocks(true);
        t.set_pin_l0_filter_and_index_blocks_in_cache(true);
        if bloom {
            // Most FindMissingBlobs lookups before an upload are misses: a
            // bloom filter answers them without reading data blocks.
            t.set_bloom_filter(10.0, false);
        }
        t
    };
    let small = |bloom: bool| {
        let mut o = Options::default();
        o.set_block_based_table_factory(&table(bloom));
        o.set_write_buffer_size(MEMTABLE_BUDGET / 4);
        o
    };
    // Blobs and results are stored compressed where it saves space: LZ4 in
    // the upper levels (cheap for fresh, churning data), zstd in the bottom
    // level where most data settles. RocksDB keeps a block uncompressed when
    // compression doesn't pay (already-compressed outputs).
    let mut data_opts = small(true);
    data_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    data_opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    let mut meta_opts = small(false);
    meta_opts.set_merge_operator_associative("add_i64", counters::add_merge);
    vec![
        ColumnFamilyDescriptor::new(CF_CAS, data_opts.clone()),
        ColumnFamilyDescriptor::new(CF_AC, data_opts),
        ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ColumnFamilyDescriptor::new(CF_ATIME, small(true)),
        ColumnFamilyDescriptor::new(CF_LRU, small(false)),
    ]
}

/// Reads the counters of a data dir without taking it over: works while a
/// server holds it open (a read-only RocksDB open replays the WAL in memory).
pub fn read_stats(root: &Path) -> Result<Stats> {
    let path = root.join("db");
    if !path.join("CURRENT").exists() {
        return Err(Error::NotFound(format!("{} holds no cairn data", root.display())));
    }
    let db = DB::open_cf_descriptors_read_only(&db_options(), &path, cf_descriptors(), false)?;
    let counters = counters::Counters::load(&db, db.cf_handle(CF_META).expect("meta cf"))?;
    Ok(counters.snapshot())
}

/// Deletes everything inside `dir` (not `dir` itself).
fn wipe_dir(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let res = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        res.map_err(|e| Error::io(format!("removing stale upload {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
