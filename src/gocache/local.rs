//! The local disk tier: every get hit and every put needs a real file path to
//! hand to go, so this tier is always there, with or without a remote.
//!
//! # Layout (under the root, by default `$GOCACHE/cairn`)
//! - `o/<2 hex>/<64 hex>`: outputs, named by output ID (content-addressed, so
//!   many actions share one file). No extension, as go's own cache does.
//! - `a/<2 hex>/<64 hex>`: one small metadata file per action ID:
//!   `v1 <action hex> <output hex> <size> <unix nanos>\n`.
//! - `tmp/`: files being written; every file is written there and renamed
//!   into place, so a reader never sees a partial file and a path already
//!   handed to go is never rewritten in place.
//! - `trim.txt`: its mtime says when a process last started trimming.
//! - `tmp/cleared-*`: what `go clean -cache` asked to remove, moved aside at
//!   start-up and deleted in the background (see [`LocalStore::clear_if_go_cleaned`]).
//!
//! Why under `$GOCACHE`: when go installs a cached archive it *renames* the
//! file away unless its path starts with `$GOCACHE` (then it copies).
//!
//! Durability: no fsync. This is a cache: after a crash an entry may point at
//! a short file, which the size check turns into a miss; go re-hashes the
//! small metadata outputs it reads.
//!
//! All methods are blocking (plain `std::fs`). Lookups and commits are a few
//! page-cache syscalls, cheaper than a `spawn_blocking` hop, so the run loop
//! calls them inline (see the latency note in `gocache`); only
//! [`LocalStore::trim`] belongs on a blocking thread.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::protocol::{ActionId, OutputId};

/// A hit's mtime is refreshed (for LRU trimming) only when older than this,
/// so that warm builds don't turn every read into a metadata write. Short,
/// so that an entry in use always looks recent to a trim (which also
/// re-checks each file's mtime just before unlinking it).
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Trimming never deletes files used this recently: a path handed to a
/// running go must stay valid until that go exits. Longer than
/// [`TOUCH_INTERVAL`], so an entry in use is always protected.
pub const KEEP_RECENT: Duration = Duration::from_secs(60 * 60);

/// A process starts a trim at most this often (all processes share the stamp).
pub const TRIM_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Temp files older than this belong to a process that died mid-write.
const STALE_TEMP: Duration = Duration::from_secs(24 * 60 * 60);

/// Sizes are counted in filesystem blocks of this size, so the thousands of
/// tiny metadata files count for what they really cost on disk.
pub const BLOCK: u64 = 4096;

/// A stored entry: what a get hit reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub output: OutputId,
    pub size: u64,
    /// When the entry was put, in Unix nanoseconds (go's `Entry.Time`).
    pub time_nanos: i64,
    /// Absolute path of the output file.
    pub path: PathBuf,
}

/// What one trim did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrimStats {
    /// Bytes in the store before trimming (in [`BLOCK`]s).
    pub before: u64,
    pub removed_files: u64,
    pub removed_bytes: u64,
}

/// The local store. Cheap to share: all state is on disk, so several cairn
/// processes (one per go command) can use one root at the same time.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    objects: PathBuf,
    actions: PathBuf,
    tmp: PathBuf,
    /// Trim target; see [`LocalStore::trim`].
    max_size: u64,
    /// [`KEEP_RECENT`], shortened by tests.
    keep_recent: Duration,
    /// Makes temp names unique within this process (the pid does across processes).
    temp_seq: AtomicU64,
    /// Gets hold it shared while they check and touch an object; the trim
    /// holds it exclusively while it re-checks and unlinks one. So within a
    /// process a get either touches a file before the trim looks again (and
    /// the file stays), or finds it gone (a miss): never a path to a file
    /// that is about to vanish. Uncontended, it costs a few nanoseconds.
    unlink_lock: RwLock<()>,
    /// Local hits served by this process (the trim's test hook waits on it).
    hits: AtomicU64,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`, which should be
    /// absolute: entry paths are handed to go as they are.
    pub fn open(root: &Path, max_size: u64) -> io::Result<LocalStore> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            objects: root.join("o"),
            actions: root.join("a"),
            tmp,
            max_size,
            keep_recent: KEEP_RECENT,
            temp_seq: AtomicU64::new(0),
            unlink_lock: RwLock::new(()),
            hits: AtomicU64::new(0),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The trim target, in bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Where the output with this ID lives (whether or not it exists).
    pub fn object_path(&self, output: &OutputId) -> PathBuf {
        let hex = output.to_hex();
        self.objects.join(&hex[..2]).join(hex)
    }

    fn action_path(&self, action: &ActionId) -> PathBuf {
        let hex = action.to_hex();
        self.actions.join(&hex[..2]).join(hex)
    }

    /// Looks an action up. A hit is only reported if the output file exists
    /// with the recorded size (go would silently rebuild otherwise, and
    /// trimming or a crash can remove either file). Refreshes mtimes for LRU.
    pub fn get(&self, action: &ActionId) -> io::Result<Option<Entry>> {
        let meta_path = self.action_path(action);
        let (meta_text, meta_file, meta_mtime) = match fs::File::open(&meta_path) {
            Ok(mut f) => {
                let mtime = f.metadata()?.modified()?;
                let mut text = String::new();
                if io::Read::read_to_string(&mut f, &mut text).is_err() {
                    return Ok(None); // not even UTF-8: a broken file, a miss
                }
                (text, f, mtime)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((output, size, time_nanos)) = parse_meta(&meta_text, action) else {
            tracing::debug!(path = %meta_path.display(), "ignoring malformed cache metadata");
            return Ok(None);
        };
        let path = self.object_path(&output);
        let now = SystemTime::now();
        {
            let _no_unlink = self.unlink_lock.read().unwrap_or_else(|e| e.into_inner());
            let obj = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if !obj.is_file() || obj.len() != size {
                return Ok(None);
            }
            if obj.modified().is_ok_and(|mtime| is_stale(mtime, now)) {
                // Through a handle: if another process's trim unlinked the
                // file since the stat, the open fails and this is a miss.
                match fs::File::open(&path) {
                    Ok(f) => {
                        let _ = f.set_modified(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        }
        touch_if_stale(&meta_file, meta_mtime, now);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Entry { output, size, time_nanos, path }))
    }

    /// Local hits served so far by this process.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// A new empty temp file inside the store (same filesystem, so it can be
    /// renamed into place). Removed on drop unless committed.
    pub fn temp_file(&self) -> io::Result<TempFile> {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{seq}-{}", std::process::id(), now_nanos()));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file: Some(file), keep: false })
    }

    /// Stores a fully written and verified body: moves `body` to its
    /// content-addressed place (or drops it if an identical output is already
    /// there), then records `action → (output, size, now)`.
    pub fn commit(&self, action: &ActionId, output: &OutputId, size: u64, body: TempFile) -> io::Result<Entry> {
        self.commit_at(action, output, size, body, now_nanos())
    }

    /// [`LocalStore::commit`] with the entry's time given: an entry fetched
    /// from the remote keeps the time it was first put, which go compares
    /// with `go clean -testcache`.
    pub fn commit_at(
        &self,
        action: &ActionId,
        output: &OutputId,
        size: u64,
        body: TempFile,
        time_nanos: i64,
    ) -> io::Result<Entry> {
        self.install_object(output, body)?;
        self.write_meta(action, output, size, time_nanos)
    }

    /// Moves a verified body to its content-addressed place, replacing what
    /// is there. Returns the object's path.
    ///
    /// An object already there with the right size is replaced too, not
    /// kept: sizes are all a get checks, so a same-size corrupt file (a bad
    /// disk block, a stray write) would otherwise be served forever, while
    /// go keeps rebuilding and putting the right bytes. The rename is atomic
    /// and a path handed to go is never rewritten in place: a reader that
    /// already opened the old file keeps it, a new open gets the new one,
    /// and both hold the same bytes unless the old ones were corrupt.
    pub fn install_object(&self, output: &OutputId, mut body: TempFile) -> io::Result<PathBuf> {
        let path = self.object_path(output);
        drop(body.file.take());
        rename_into_place(&body.path, &path)?;
        body.keep = true;
        Ok(path)
    }

    /// Stores bytes already verified to hash to `output` as that object
    /// (downloads, whose digest the client checked). Returns its path.
    pub fn install_bytes(&self, output: &OutputId, data: &[u8]) -> io::Result<PathBuf> {
        if self.has_object(output, data.len() as u64) {
            return Ok(self.object_path(output));
        }
        let mut tmp = self.temp_file()?;
        tmp.file.as_mut().expect("fresh temp file").write_all(data)?;
        self.install_object(output, tmp)
    }

    /// True if the output is stored with this size.
    pub fn has_object(&self, output: &OutputId, size: u64) -> bool {
        fs::metadata(self.object_path(output)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// True if `action` has a metadata file (its output may still be gone;
    /// [`LocalStore::get`] is the full check). One `stat`, for bulk checks.
    pub fn has_action(&self, action: &ActionId) -> bool {
        fs::symlink_metadata(self.action_path(action)).is_ok()
    }

    /// Records `action → (output, size, time)` if that output is already
    /// stored (another action produced it, or a download just landed);
    /// `None` if it is not.
    pub fn link(&self, action: &ActionId, output: &OutputId, size: u64, time_nanos: i64) -> io::Result<Option<Entry>> {
        if !self.has_object(output, size) {
            return Ok(None);
        }
        self.write_meta(action, output, size, time_nanos).map(Some)
    }

    /// Writes the metadata file of `action` (atomically).
    fn write_meta(&self, action: &ActionId, output: &OutputId, size: u64, time_nanos: i64) -> io::Result<Entry> {
        let meta = format!("v1 {} {} {size} {time_nanos}\n", action.to_hex(), output.to_hex());
        self.write_atomic(&self.action_path(action), meta.as_bytes())?;
        Ok(Entry { output: *output, size, time_nanos, path: self.object_path(output) })
    }

    /// Stores `data` under `action`, hashing it here (zero-length puts, and tests).
    pub fn put_bytes(&self, action: &ActionId, data: &[u8]) -> io::Result<Entry> {
        let mut tmp = self.temp_file()?;
        tmp.file.as_mut().expect("fresh temp file").write_all(data)?;
        self.commit(action, &OutputId::of(data), data.len() as u64, tmp)
    }

    /// Writes `data` to `dest` through a temp file and a rename.
    fn write_atomic(&self, dest: &Path, data: &[u8]) -> io::Result<()> {
        let mut tmp = self.temp_file()?;
        tmp.file.take().expect("fresh temp file").write_all(data)?;
        rename_into_place(&tmp.path, dest)?;
        tmp.keep = true;
        Ok(())
    }

    /// Trims if no process has started a trim in the last [`TRIM_INTERVAL`].
    /// The stamp is claimed before trimming, so concurrent processes don't all
    /// scan the store. `pause` runs between the scan and the unlinking (a
    /// test hook: it lets a test put a build in the middle of a trim).
    pub fn trim_if_due(&self, cancel: &AtomicBool, pause: impl FnOnce()) -> io::Result<Option<TrimStats>> {
        let stamp = self.root.join("trim.txt");
        if let Ok(mtime) = fs::metadata(&stamp).and_then(|m| m.modified()) {
            if SystemTime::now().duration_since(mtime).is_ok_and(|age| age < TRIM_INTERVAL) {
                return Ok(None);
            }
        }
        self.write_atomic(&stamp, format!("{}\n", now_nanos()).as_bytes())?;
        self.trim_with(cancel, pause).map(Some)
    }

    /// Removes stale temp files, then, if the store holds more than
    /// `max_size`, removes the least recently used files (by mtime) until it
    /// holds at most 90% of it (the slack keeps trims rare), never touching
    /// files used within [`KEEP_RECENT`]. Stops early when `cancel` is set.
    pub fn trim(&self, cancel: &AtomicBool) -> io::Result<TrimStats> {
        self.trim_with(cancel, || {})
    }

    /// [`LocalStore::trim`], running `pause` between the scan and the unlinking.
    ///
    /// The scan's mtimes are only a guide to what to look at: a get may use
    /// (and touch) a file after the scan saw it, and go may be about to read
    /// it. So each file's mtime is read again just before it is unlinked
    /// (under `unlink_lock`, which orders it with this process's gets), and a
    /// file used since the scan began is never removed.
    fn trim_with(&self, cancel: &AtomicBool, pause: impl FnOnce()) -> io::Result<TrimStats> {
        let scan_start = SystemTime::now();
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        let mut total = 0u64;
        for top in [&self.objects, &self.actions] {
            for sub in read_dir_if_exists(top)? {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(TrimStats::default());
                }
                for entry in read_dir_if_exists(&sub.path())? {
                    let Ok(meta) = entry.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    let cost = meta.len().div_ceil(BLOCK) * BLOCK;
                    total += cost;
                    files.push((meta.modified().unwrap_or(scan_start), cost, entry.path()));
                }
            }
        }
        for entry in read_dir_if_exists(&self.tmp)? {
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| age(t, scan_start) > STALE_TEMP);
            if old && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(entry.path());
            }
        }

        let mut stats = TrimStats { before: total, ..TrimStats::default() };
        if total <= self.max_size {
            return Ok(stats);
        }
        pause();
        let target = self.max_size - self.max_size / 10;
        files.sort_unstable_by_key(|f| f.0);
        for (mtime, cost, path) in files {
            if total <= target || age(mtime, scan_start) < self.keep_recent || cancel.load(Ordering::Relaxed) {
                break;
            }
            let _no_gets = self.unlink_lock.write().unwrap_or_else(|e| e.into_inner());
            let now = fs::symlink_metadata(&path).and_then(|m| m.modified());
            let unused = now.is_ok_and(|t| t < scan_start && age(t, SystemTime::now()) >= self.keep_recent);
            if unused && fs::remove_file(&path).is_ok() {
                total -= cost;
                stats.removed_files += 1;
                stats.removed_bytes += cost;
            }
        }
        Ok(stats)
    }
}

/// A file under `tmp/`, removed on drop unless it was renamed into place.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<fs::File>,
    keep: bool,
}

impl TempFile {
    /// Takes the open handle (to write through tokio); the path stays owned
    /// by this guard.
    pub fn take_file(&mut self) -> Option<fs::File> {
        self.file.take()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Parses a metadata file, checking it belongs to `action`.
fn parse_meta(text: &str, action: &ActionId) -> Option<(OutputId, u64, i64)> {
    let mut fields = text.strip_suffix('\n')?.split(' ');
    if fields.next()? != "v1" || ActionId::from_hex(fields.next()?)? != *action {
        return None;
    }
    let output = OutputId::from_hex(fields.next()?)?;
    let size = fields.next()?.parse().ok()?;
    let time = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((output, size, time))
}

/// Renames `from` to `to`, creating `to`'s parent directory on first use
/// (the 2 × 256 fan-out directories are made lazily, keeping start-up cheap).
fn rename_into_place(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(to.parent().expect("store paths have parents"))?;
            fs::rename(from, to)
        }
        other => other,
    }
}

fn read_dir_if_exists(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(Result::ok).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn age(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

fn is_stale(mtime: SystemTime, now: SystemTime) -> bool {
    age(mtime, now) > TOUCH_INTERVAL
}

fn touch_if_stale(f: &fs::File, mtime: SystemTime, now: SystemTime) {
    if is_stale(mtime, now) {
        let _ = f.set_modified(now);
    }
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

#[path = "local_clean.rs"]
mod clean;

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
