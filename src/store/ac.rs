//! The ActionCache side of the store: ActionResult bytes per instance and
//! action digest, and how their size is accounted.

use rocksdb::{IteratorMode, WriteBatch};

use super::lru::{self, KIND_AC};
use super::nonblocking::{declined, read_options, ready, write_options, Mode, Nonblocking};
use super::{ac_key, Inner, QueueEntry, Store, CF_AC, CF_ATIME, CF_META};
use crate::digest::Digest;
use crate::error::Result;

/// An ActionCache key is stored three times (`ac`, `atime`, `lru`), and an
/// instance name can make it long: its bytes count against `--max-size`
/// like the result's own.
const KEY_COPIES: i64 = 3;

/// Bytes an ActionCache entry counts against the size limit.
pub(super) fn entry_bytes(key_len: usize, value_len: usize) -> i64 {
    value_len as i64 + KEY_COPIES * key_len as i64
}

/// Bytes a stored ActionResult of `result_len` bytes under `instance` counts
/// in `ac_bytes` (what `cairn stats` reports and `--max-size` bounds).
pub fn action_entry_bytes(instance: &str, action: &Digest, result_len: usize) -> u64 {
    entry_bytes(ac_key(instance, action).len(), result_len) as u64
}

/// `meta` key recording how stored bytes are accounted; absent in data dirs
/// from before ActionCache keys were counted.
const ACCOUNTING_KEY: &[u8] = b"accounting";
/// Current accounting: ActionCache entries count their key bytes.
const ACCOUNTING_V2: &[u8] = b"v2";

/// Brings the ActionCache byte counter of an older data dir to the current
/// accounting, once: one pass over `ac` (results are small and few next to
/// the CAS), then a marker so later start-ups read nothing.
pub(super) fn upgrade_accounting(inner: &Inner) -> Result<()> {
    let meta = inner.cf(CF_META);
    if inner.db.get_cf(meta, ACCOUNTING_KEY)?.is_some() {
        return Ok(());
    }
    let mut actual = 0i64;
    for row in inner.db.iterator_cf(inner.cf(CF_AC), IteratorMode::Start) {
        let (k, v) = row?;
        actual += entry_bytes(k.len(), v.len());
    }
    let delta = actual - inner.counters.snapshot().ac_bytes;
    let mut batch = WriteBatch::default();
    inner.counters.add_ac(&mut batch, meta, 0, delta);
    batch.put_cf(meta, ACCOUNTING_KEY, ACCOUNTING_V2);
    inner.db.write(batch)?;
    inner.counters.applied_ac(0, delta);
    if delta != 0 {
        tracing::info!(delta, "recounted ActionCache bytes to include key bytes");
    }
    Ok(())
}

impl Store {
    /// The stored ActionResult bytes for `action` in `instance`, if any.
    /// Counts as a use of the entry (the caller checks, and so uses, the
    /// blobs it names) but not as a hit: the caller says whether the result
    /// was usable with [`Store::count_lookup`].
    pub fn get_action(&self, instance: &str, action: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.get_action_in(Mode::MayBlock, instance, action)?.into_ready())
    }

    /// [`Store::get_action`] in `mode` (see [`super::nonblocking`]).
    pub fn get_action_in(&self, mode: Mode, instance: &str, action: &Digest) -> Result<Nonblocking<Option<Vec<u8>>>> {
        self.get_action_with(mode, instance, action, true)
    }

    /// [`Store::get_action`] without counting a use: for the write-behind
    /// drain, which reads a result only to upload it.
    pub(super) fn get_action_untouched(&self, instance: &str, action: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.get_action_with(Mode::MayBlock, instance, action, false)?.into_ready())
    }

    fn get_action_with(
        &self,
        mode: Mode,
        instance: &str,
        action: &Digest,
        touch: bool,
    ) -> Result<Nonblocking<Option<Vec<u8>>>> {
        let key = ac_key(instance, action);
        let (found, backlog) = {
            let Some(_gate) = self.inner.use_gate_in(mode) else { return Ok(Nonblocking::WouldBlock) };
            let found = ready!(declined(self.inner.db.get_cf_opt(self.inner.cf(CF_AC), &key, &read_options(mode)))?);
            let backlog = touch && found.is_some() && self.inner.touches.touch(lru::entry_key(KIND_AC, &key));
            (found, backlog)
        };
        ready!(self.inner.relieve_backlog_in(mode, backlog)?);
        Ok(Nonblocking::Ready(found))
    }

    /// Counts an ActionCache lookup: a hit only when a complete result was
    /// returned (one naming a lost blob is a miss to the client too).
    pub fn count_lookup(&self, hit: bool) {
        self.inner.counters.count_lookup(hit);
    }

    /// Stores (or replaces) the ActionResult bytes for `action` in `instance`,
    /// and queues it for the tier if one is attached.
    pub fn put_action(&self, instance: &str, action: &Digest, result: &[u8]) -> Result<()> {
        self.put_action_with(Mode::MayBlock, instance, action, result, true)?.into_ready();
        Ok(())
    }

    /// [`Store::put_action`] in `mode` (see [`super::nonblocking`]): in
    /// [`Mode::MemoryOnly`] it never waits for a lock, a table file or a
    /// write stall, and leaves a result for the tier's queue to the blocking
    /// path. `WouldBlock` means nothing was written.
    pub fn put_action_in(&self, mode: Mode, instance: &str, action: &Digest, result: &[u8]) -> Result<Nonblocking<()>> {
        self.put_action_with(mode, instance, action, result, true)
    }

    /// [`Store::put_action`] for a result filled from the tier: not queued
    /// to be written back.
    pub fn put_action_from_tier(&self, instance: &str, action: &Digest, result: &[u8]) -> Result<()> {
        self.put_action_with(Mode::MayBlock, instance, action, result, false)?.into_ready();
        Ok(())
    }

    fn put_action_with(
        &self,
        mode: Mode,
        instance: &str,
        action: &Digest,
        result: &[u8],
        behind: bool,
    ) -> Result<Nonblocking<()>> {
        let inner = &self.inner;
        if mode == Mode::MemoryOnly && behind && inner.outbox.get().is_some() {
            return Ok(Nonblocking::WouldBlock);
        }
        let cf = inner.cf(CF_AC);
        let key = ac_key(instance, action);
        let entry = lru::entry_key(KIND_AC, &key);
        let Some(_gate) = inner.use_gate_in(mode) else { return Ok(Nonblocking::WouldBlock) };
        let Some(_guard) = inner.commit_lock_in(mode) else { return Ok(Nonblocking::WouldBlock) };
        let reads = read_options(mode);
        let old =
            ready!(declined(inner.db.get_pinned_cf_opt(cf, &key, &reads))?).map(|v| entry_bytes(key.len(), v.len()));
        let previous = ready!(declined(inner.db.get_cf_opt(inner.cf(CF_ATIME), &entry, &reads))?);
        let new = entry_bytes(key.len(), result.len());
        let (dn, db) = match old {
            Some(old) => (0, new - old),
            None => (1, new),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, &key, result);
        inner.stamp(&mut batch, &entry, previous.as_deref());
        inner.counters.add_ac(&mut batch, inner.cf(CF_META), dn, db);
        let entry = QueueEntry::Action { instance: instance.to_string(), action: *action };
        let queued = inner.queue_behind(behind, &mut batch, entry, result.len() as u64)?;
        ready!(declined(inner.db.write_opt(batch, &write_options(mode)))?);
        inner.counters.applied_ac(dn, db);
        if let Some(q) = queued {
            q.applied();
        }
        drop(_guard);
        drop(_gate);
        inner.wake_if_over_limit();
        Ok(Nonblocking::Ready(()))
    }
}
