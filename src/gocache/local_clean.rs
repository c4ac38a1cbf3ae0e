//! `go clean -cache` reaches the local tier: a marker in a directory go
//! owns tells cairn, at start-up, that go's cache was cleared.

use std::fs;
use std::io;
use std::path::Path;

use super::{now_nanos, read_dir_if_exists, LocalStore};
use crate::gocache::protocol::OutputId;

impl LocalStore {
    /// Clears the store if `go clean -cache` ran since the last start-up.
    ///
    /// go's `clean -cache` removes the `00`..`ff` directories of `$GOCACHE`
    /// and nothing else, so it never reaches this store, even under
    /// `$GOCACHE`. Hence a marker file in `gocache/00`: present, nothing to
    /// do; missing while the store holds entries, go (or a user) cleared the
    /// cache and the store is cleared too. Its name ends in neither `-a` nor
    /// `-d`, so go's own trim leaves it alone. The entries are moved aside
    /// (two renames; a start-up must stay fast) and deleted by
    /// [`LocalStore::remove_cleared`] in the background. Returns whether it
    /// cleared anything.
    pub fn clear_if_go_cleaned(&self, gocache: &Path) -> io::Result<bool> {
        let dir = gocache.join("00");
        let marker =
            dir.join(format!("cairn-{}", &OutputId::of(self.root.as_os_str().as_encoded_bytes()).to_hex()[..16]));
        if marker.exists() {
            return Ok(false);
        }
        let mut cleared = false;
        for top in [&self.objects, &self.actions] {
            if top.exists() {
                let aside = self.tmp.join(format!("cleared-{}-{}", std::process::id(), now_nanos()));
                fs::rename(top, aside)?;
                cleared = true;
            }
        }
        fs::create_dir_all(&dir)?;
        let note = format!("cairn gocacheprog: its cache {} is cleared when this file is gone\n", self.root.display());
        self.write_atomic(&marker, note.as_bytes())?;
        Ok(cleared)
    }

    /// Deletes what [`LocalStore::clear_if_go_cleaned`] moved aside (any
    /// process's, left over or not). Slow for a big store: a blocking thread's work.
    pub fn remove_cleared(&self) {
        for entry in read_dir_if_exists(&self.tmp).unwrap_or_default() {
            if entry.file_name().to_string_lossy().starts_with("cleared-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}
