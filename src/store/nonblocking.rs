//! Lookups an async worker may run itself. A hop to a blocking thread costs
//! more than a lookup that RocksDB answers from memory: at 64 concurrent
//! GetActionResult calls, the blocking pool's mutex, its futex wake-ups and
//! the two context switches per call took about 40 % of the server's CPU
//! (profile in BENCHMARKS.md). So a lookup first runs in
//! [`Mode::MemoryOnly`]: it reads only RocksDB's memtables and block cache
//! (`ReadTier::BlockCache`, which answers "incomplete" instead of reading a
//! table file), takes the use gate only if it is free, and leaves flushing a
//! backlog of noted uses to someone else; whenever one of those would wait,
//! it answers [`Nonblocking::WouldBlock`] and the caller runs the same lookup
//! in [`Mode::MayBlock`] on a blocking thread. Both modes give the same
//! answers; only where they may wait differs.

use std::sync::{LockResult, MutexGuard, RwLockReadGuard, TryLockError, TryLockResult};

use rocksdb::{ReadOptions, ReadTier, WriteOptions};

use super::Inner;
use crate::error::Result;

/// Where a lookup may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On a blocking thread: may read table files and wait for locks.
    MayBlock,
    /// On an async worker: memory only, never waits.
    MemoryOnly,
}

/// A lookup's answer, or word that getting it would mean waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Nonblocking<T> {
    /// The answer.
    Ready(T),
    /// Run the lookup again in [`Mode::MayBlock`].
    WouldBlock,
}

impl<T> Nonblocking<T> {
    /// The answer of a [`Mode::MayBlock`] lookup, which always has one.
    pub fn into_ready(self) -> T {
        match self {
            Nonblocking::Ready(t) => t,
            Nonblocking::WouldBlock => unreachable!("a lookup that may block never answers WouldBlock"),
        }
    }
}

/// `?` for [`Nonblocking`] inside a function that returns
/// `Result<Nonblocking<_>>`: yields the answer or returns `WouldBlock`.
macro_rules! ready {
    ($e:expr) => {
        match $e {
            $crate::store::nonblocking::Nonblocking::Ready(t) => t,
            $crate::store::nonblocking::Nonblocking::WouldBlock => {
                return Ok($crate::store::nonblocking::Nonblocking::WouldBlock)
            }
        }
    };
}
pub(crate) use ready;

impl Inner {
    /// The use gate, shared; `None` in [`Mode::MemoryOnly`] when eviction
    /// holds it (it reads and writes RocksDB while it does).
    pub(super) fn use_gate_in(&self, mode: Mode) -> Option<RwLockReadGuard<'_, ()>> {
        take(mode, || self.use_gate.read(), || self.use_gate.try_read())
    }

    /// The commit lock; `None` in [`Mode::MemoryOnly`] when another commit
    /// holds it.
    pub(super) fn commit_lock_in(&self, mode: Mode) -> Option<MutexGuard<'_, ()>> {
        take(mode, || self.commit_lock.lock(), || self.commit_lock.try_lock())
    }

    /// [`Inner::relieve_backlog`] in `mode`: flushing a full backlog writes
    /// to RocksDB, so in [`Mode::MemoryOnly`] it would block; the uses stay
    /// noted and the blocking retry flushes them.
    pub(super) fn relieve_backlog_in(&self, mode: Mode, full: bool) -> Result<Nonblocking<()>> {
        if full && mode == Mode::MemoryOnly {
            return Ok(Nonblocking::WouldBlock);
        }
        self.relieve_backlog(full)?;
        Ok(Nonblocking::Ready(()))
    }
}

/// A lock's guard: waited for in [`Mode::MayBlock`], tried in
/// [`Mode::MemoryOnly`]. A poisoned lock is used as it is (what it guards is
/// RocksDB's, which a panic cannot leave half-written).
fn take<G>(mode: Mode, wait: impl FnOnce() -> LockResult<G>, try_: impl FnOnce() -> TryLockResult<G>) -> Option<G> {
    match mode {
        Mode::MayBlock => Some(wait().unwrap_or_else(|p| p.into_inner())),
        Mode::MemoryOnly => match try_() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        },
    }
}

/// RocksDB write options for `mode`: in [`Mode::MemoryOnly`] a write that
/// RocksDB would stall (too many memtables or level-0 files) fails as
/// "incomplete", with nothing written, instead of waiting.
pub(super) fn write_options(mode: Mode) -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_no_slowdown(mode == Mode::MemoryOnly);
    o
}

/// RocksDB read options for `mode`.
pub(super) fn read_options(mode: Mode) -> ReadOptions {
    let mut o = ReadOptions::default();
    if mode == Mode::MemoryOnly {
        o.set_read_tier(ReadTier::BlockCache);
    }
    o
}

/// A RocksDB call's outcome: `WouldBlock` when it declined to wait (a
/// memory-only read of an uncached table file, a write that would stall).
pub(super) fn declined<T>(r: std::result::Result<T, rocksdb::Error>) -> Result<Nonblocking<T>> {
    match r {
        Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(Nonblocking::WouldBlock),
        r => Ok(Nonblocking::Ready(r?)),
    }
}
