//! The storage engine: one RocksDB database plus a directory of blob files.
//!
//! Layout of a data dir:
//! - `db/`: RocksDB with column families `cas` (digest → a 9-byte index
//!   record: whether the blob is inline or a file, and its size), `cas_data`
//!   (digest → the bytes of an inline blob), `ac` (instance + action digest →
//!   ActionResult bytes), `atime` and `lru` (last use of every entry, see
//!   [`lru`]) and `meta` (entry, byte, hit, miss and eviction counters,
//!   maintained by a merge operator in the same write batch as each change, so
//!   start-up reads a few keys and scans nothing).
//!   The index is kept apart from the data so that existence checks
//!   (FindMissingBlobs, ActionCache completeness) read 9-byte values from a
//!   small, cache-resident family instead of pulling up to 256 KiB blobs
//!   through the block cache. (Records written before the split carry their
//!   inline bytes after the header; they are read as they are.)
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
//! place. Readers therefore never see a partial blob. A crash between the
//! rename and the record, or between removing a record and unlinking its
//! file, leaves a file nothing accounts for: [`reclaim`] deletes those in the
//! background after start-up. A record whose file has gone missing is
//! dropped when a read finds it so (never on a transient error such as
//! running out of file descriptors), and repaired by the next upload.

mod ac;
pub mod bucket;
mod cas;
pub mod complete;
mod counters;
mod evict;
mod lookup;
mod lru;
pub mod nonblocking;
mod reader;
mod reclaim;
pub mod tier;
// --- tiers ---
pub mod drain;
mod link;
#[cfg(test)]
mod memory_tier;
mod outbox;
pub mod tiered;
pub mod upstream;
// --- end of tiers ---
mod uploads;
mod writer;
pub mod zstd;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};

pub use ac::action_entry_bytes;
pub use counters::Stats;
pub use lru::Clock;
pub use reader::BlobReader;
pub use uploads::Uploads;
pub use writer::BlobWriter;
// --- tiers ---
pub use outbox::{Entry as QueueEntry, QueueLimits, QueueStats};
// --- end of tiers ---

/// Blobs up to this size are stored inside RocksDB; larger ones as files.
/// Also bounds the memory an upload of a small blob buffers.
pub const INLINE_MAX: u64 = 256 * 1024;

const CF_CAS: &str = "cas";
const CF_CAS_DATA: &str = "cas_data";
const CF_AC: &str = "ac";
const CF_META: &str = "meta";
const CF_ATIME: &str = "atime";
const CF_LRU: &str = "lru";
/// Every column family, for work that spans them all (the flush at close).
const ALL_CFS: [&str; 7] = [CF_CAS, CF_CAS_DATA, CF_AC, CF_META, CF_ATIME, CF_LRU, outbox::CF_OUTBOX];

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
    /// one blob count its bytes once, and every removal. Held for RocksDB
    /// point reads and writes and a rename, never across I/O on blob contents,
    /// an fsync or an unlink.
    commit_lock: Mutex<()>,
    /// Closes the gap between "a reader found an entry" and "the reader's use
    /// is noted": readers hold it shared across the lookup and the note,
    /// eviction holds it exclusively while it checks for noted uses and
    /// removes one entry. So anything reported present or returned as a hit
    /// is seen as used by every later eviction (see [`lru`]).
    use_gate: RwLock<()>,
    uploads: Uploads,
    limits: Limits,
    /// Uses noted since the last flush; see [`lru`].
    touches: lru::Touches,
    /// Wakes the background flusher early (writes past the limit, shutdown).
    wake: Arc<evict::Wake>,
    // --- tiers ---
    /// The write-behind queue, once a tier is attached: every commit and
    /// ActionCache put is recorded in it in the same write batch.
    outbox: std::sync::OnceLock<outbox::Outbox>,
    // --- end of tiers ---
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

/// Encodes a `cas` index record: kind byte + size (u64 LE).
fn cas_header(kind: u8, size: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = kind;
    h[1..].copy_from_slice(&size.to_le_bytes());
    h
}

/// The digest a `cas` key names, given the size from its record.
fn digest_of_cas_key(key: &[u8], size: u64) -> Result<Digest> {
    let function = key
        .first()
        .and_then(|t| DigestFunction::from_tag(*t))
        .ok_or_else(|| Error::Internal(format!("cas key {} has an unknown digest function", hex::encode(key))))?;
    let hash: [u8; 32] =
        key[1..].try_into().map_err(|_| Error::Internal(format!("cas key {} is not 33 bytes", hex::encode(key))))?;
    Ok(Digest { function, hash, size })
}

/// Decodes a `cas` value into (kind, size, inline bytes of a record written
/// before the index split; empty for current records).
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
    /// uses and evicts (it stops when the last handle is dropped), and a
    /// one-off sweep that reclaims blob files no record accounts for.
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
                use_gate: RwLock::new(()),
                uploads: Uploads::new(),
                limits,
                touches: lru::Touches::new(),
                wake: Arc::new(evict::Wake::default()),
                outbox: std::sync::OnceLock::new(),
            }),
        };
        ac::upgrade_accounting(&store.inner)?;
        // A manual clock means the owner (a test, the LRU replay) drives
        // upkeep itself through `maintain`; a background round would race it.
        if !store.inner.limits.clock.is_manual() {
            evict::start_background(&store)?;
        }
        Ok(store)
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

    fn tmp_dir(&self) -> PathBuf {
        self.inner.tmp_dir()
    }

    // --- tiers ---
    /// Starts recording every commit and ActionCache put in the write-behind
    /// queue (see [`outbox`]); picks up what a previous run left in it.
    /// Call once, before serving.
    pub fn attach_outbox(&self, limits: QueueLimits) -> Result<()> {
        let q = outbox::Outbox::open(&self.inner.db, self.inner.cf(outbox::CF_OUTBOX), limits)?;
        self.inner.outbox.set(q).map_err(|_| Error::Internal("the write-behind queue is attached twice".into()))
    }

    /// What the write-behind queue holds (None when no tier is attached).
    pub fn queue_stats(&self) -> Option<QueueStats> {
        self.inner.outbox.get().map(outbox::Outbox::stats)
    }
    // --- end of tiers ---
}

impl Inner {
    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Uploads in progress, and removed files waiting to be unlinked; wiped at start-up.
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the file of a blob above [`INLINE_MAX`] lives.
    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs").join(d.function.name()).join(&hex[..2]).join(hex)
    }
}

/// RocksDB's block cache, shared by all column families: the one memory
/// knob that grows with the working set. Everything else RocksDB holds is
/// bounded by [`MEMTABLE_BUDGET`].
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Total memtable memory across column families before RocksDB flushes.
pub const MEMTABLE_BUDGET: usize = 64 << 20;
/// Table files RocksDB keeps open (each a file descriptor). A 10 GiB cache
/// has a few dozen; beyond this RocksDB reopens files as needed.
const MAX_OPEN_TABLE_FILES: i32 = 256;

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.increase_parallelism(2);
    o.set_db_write_buffer_size(MEMTABLE_BUDGET);
    // RocksDB keeps every table file open by default; bound it so blob reads
    // and connections can't be starved of file descriptors by a large DB.
    o.set_max_open_files(MAX_OPEN_TABLE_FILES);
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
        // Eviction deletes in bursts; a table file that is mostly tombstones
        // is compacted soon after, so deleted bytes leave the disk instead of
        // waiting for size-triggered compactions.
        o.add_compact_on_deletion_collector_factory(128, 64, 0.5);
        o
    };
    // Blob bytes and results are stored compressed where it saves space: LZ4
    // in the upper levels (cheap for fresh, churning data), zstd in the
    // bottom level where most data settles. RocksDB keeps a block
    // uncompressed when compression doesn't pay (already-compressed outputs).
    // Inline bytes are only read after the index said they exist, so their
    // family needs no bloom filter.
    let compressed = |bloom: bool| {
        let mut o = small(bloom);
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        o.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        o
    };
    let mut meta_opts = small(false);
    meta_opts.set_merge_operator_associative("add_i64", counters::add_merge);
    vec![
        ColumnFamilyDescriptor::new(CF_CAS, compressed(true)),
        ColumnFamilyDescriptor::new(CF_CAS_DATA, compressed(false)),
        ColumnFamilyDescriptor::new(CF_AC, compressed(true)),
        ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ColumnFamilyDescriptor::new(CF_ATIME, small(true)),
        ColumnFamilyDescriptor::new(CF_LRU, small(false)),
        ColumnFamilyDescriptor::new(outbox::CF_OUTBOX, small(false)),
    ]
}

/// Reads the counters of a data dir without taking it over: works while a
/// server holds it open (a read-only RocksDB open replays the WAL in memory).
pub fn read_stats(root: &Path) -> Result<Stats> {
    let path = root.join("db");
    if !path.join("CURRENT").exists() {
        return Err(Error::NotFound(format!("{} holds no cairn data", root.display())));
    }
    // A read-only open lists the live table files, then opens them; a
    // compaction in the running server can delete one in between. A fresh
    // attempt sees the new list.
    let mut attempt = 0;
    loop {
        // A data dir from an older cairn may lack a family (`outbox`).
        let present = DB::list_cf(&db_options(), &path).unwrap_or_default();
        let cfs = cf_descriptors().into_iter().filter(|c| present.iter().any(|p| p == c.name()));
        let opened = DB::open_cf_descriptors_read_only(&db_options(), &path, cfs, false);
        match opened {
            Ok(db) => {
                let counters = counters::Counters::load(&db, db.cf_handle(CF_META).expect("meta cf"))?;
                return Ok(counters.snapshot());
            }
            Err(e) if attempt < 5 && e.to_string().contains("No such file") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * attempt));
            }
            Err(e) => return Err(e.into()),
        }
    }
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
mod nonblocking_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod safety_tests;
