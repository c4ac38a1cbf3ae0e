//! Prefetch manifests: which entries a build used ([`Recorder`]), the list
//! fetched at start-up ([`Plan`]), and how lists are loaded from and stored
//! on the server under a key (see `context` for the keys, `mapping` for the
//! format).
//!
//! Stored manifests are merged, not overwritten: this run's entries first,
//! then the previous manifest's entries this run did not use, unless older
//! than [`MAX_AGE`] (by their put time), up to [`MANIFEST_MAX_ENTRIES`]. So
//! shards of a package list, or runs of a project with different commands,
//! add up under the broader keys, and entries nobody uses age out.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{timeout_at, Instant};

use super::local::{now_nanos, Entry};
use super::mapping::{self, RemoteEntry, MANIFEST_MAX_ENTRIES, MANIFEST_PATH};
use super::protocol::ActionId;
use super::shared::{download_allowance, lock, remote_entry, Shared};
use crate::client::{self, ClientError};
use crate::digest::{Digest, DigestFunction};

/// Entries of a previous manifest that this run did not use are kept at
/// most this long after they were put.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Manifests up to this size also travel inside their ActionResult
/// (`OutputFile.contents`, asked for with `inline_output_files`), so a
/// fresh machine has its manifest after one round trip, not two. About
/// 13,000 entries (`go build std cmd` uses ~2,700); larger ones are read
/// from the CAS. The blob is stored in the CAS either way (the ActionResult
/// names it, and a server may drop inlined contents).
pub const INLINE_MANIFEST_MAX: usize = 1 << 20;

/// Largest manifest fetched: [`MANIFEST_MAX_ENTRIES`] records.
const MAX_MANIFEST_BYTES: u64 =
    (mapping::MANIFEST_MAGIC.len() + MANIFEST_MAX_ENTRIES * mapping::MANIFEST_RECORD) as u64;

/// A fetched manifest.
pub(super) struct Plan {
    pub order: Vec<(ActionId, RemoteEntry)>,
    pub by_action: HashMap<ActionId, RemoteEntry>,
}

impl Plan {
    pub fn new(order: Vec<(ActionId, RemoteEntry)>) -> Plan {
        let by_action = order.iter().copied().collect();
        Plan { order, by_action }
    }

    /// True if `entries` are exactly this manifest's (action, output) pairs.
    pub fn same_as(&self, entries: &[(ActionId, RemoteEntry)]) -> bool {
        entries.len() == self.by_action.len()
            && entries.iter().all(|(a, e)| self.by_action.get(a).is_some_and(|p| p.output == e.output))
    }
}

/// Fetches and parses the manifest; `None` if there is none (or trouble).
pub(super) async fn load(shared: &Shared, key: &Digest) -> Option<Plan> {
    let what = "GetActionResult (prefetch manifest)";
    let deadline = Instant::now() + shared.timeout;
    let lookup = shared.prefetch_client.get_action_result_inline(key, &[MANIFEST_PATH]);
    let result = match timeout_at(deadline, lookup).await {
        Ok(Ok(r)) => {
            shared.health.ok();
            r?
        }
        Ok(Err(e)) => {
            shared.failed(what, &e);
            return None;
        }
        Err(_) => {
            shared.timed_out(what);
            return None;
        }
    };
    let (digest, _) = mapping::read_result(&result, MANIFEST_PATH, 0)?;
    if digest.size > MAX_MANIFEST_BYTES {
        return None;
    }
    let inline = result.output_files.first().map(|f| f.contents.clone()).unwrap_or_default();
    let read = async {
        if !inline.is_empty() && DigestFunction::Sha256.digest_of(&inline) == digest {
            return Ok(Some(inline));
        }
        if digest.size <= client::BATCH_BLOB_MAX {
            return Ok(shared.prefetch_client.batch_read(&[digest]).await?.pop().flatten());
        }
        let local_err = |source| ClientError::Io { context: "reading the prefetch manifest".into(), source };
        let mut temp = shared.local.temp_file().map_err(local_err)?;
        drop(temp.take_file());
        if !shared.prefetch_client.read_to_file(&digest, temp.path()).await? {
            return Ok(None);
        }
        std::fs::read(temp.path()).map(|d| Some(Bytes::from(d))).map_err(local_err)
    };
    let data = match timeout_at(deadline + download_allowance(digest.size), read).await {
        Ok(Ok(data)) => data?,
        Ok(Err(e)) => {
            shared.failed("reading the prefetch manifest", &e);
            return None;
        }
        Err(_) => {
            shared.timed_out("reading the prefetch manifest");
            return None;
        }
    };
    match mapping::decode_manifest(&data) {
        Some(entries) => Some(Plan::new(entries)),
        None => {
            tracing::debug!(%digest, "ignoring a malformed prefetch manifest");
            None
        }
    }
}

/// Merges this run's entries with a previous manifest's: this run's first
/// (in first-use order), then the previous ones this run did not use and
/// that are younger than [`MAX_AGE`] at `now_nanos`, up to
/// [`MANIFEST_MAX_ENTRIES`].
pub fn merge(
    current: &[(ActionId, RemoteEntry)],
    previous: &[(ActionId, RemoteEntry)],
    now_nanos: i64,
) -> Vec<(ActionId, RemoteEntry)> {
    let oldest = now_nanos.saturating_sub(MAX_AGE.as_nanos() as i64);
    let mut seen: HashSet<ActionId> = HashSet::with_capacity(current.len() + previous.len());
    let kept_previous = previous.iter().filter(|(_, e)| e.time_nanos >= oldest);
    current.iter().chain(kept_previous).filter(|(a, _)| seen.insert(*a)).take(MANIFEST_MAX_ENTRIES).copied().collect()
}

/// Stores `entries` merged with `previous` under `key`, unless that changes
/// nothing. Writes count against the upload health.
pub(super) async fn store(shared: &Shared, key: Digest, entries: &[(ActionId, RemoteEntry)], previous: Option<&Plan>) {
    let merged = merge(entries, previous.map_or(&[][..], |p| &p.order[..]), now_nanos());
    if previous.is_some_and(|p| p.same_as(&merged)) {
        tracing::debug!(%key, entries = merged.len(), "prefetch manifest unchanged");
        return;
    }
    let blob = Bytes::from(mapping::encode_manifest(&merged));
    let digest = DigestFunction::Sha256.digest_of(&blob);
    let stored = if digest.size <= client::BATCH_BLOB_MAX {
        shared.prefetch_client.batch_upload(&[(digest, blob.clone())]).await
    } else {
        shared.prefetch_client.write_bytes(&digest, blob.clone()).await
    };
    let mut result = mapping::action_result(MANIFEST_PATH, &digest, now_nanos());
    if blob.len() <= INLINE_MANIFEST_MAX {
        result.output_files[0].contents = blob;
    }
    let stored = match stored {
        Ok(()) => shared.prefetch_client.update_action_result(&key, result).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => tracing::debug!(%key, entries = merged.len(), %digest, "stored prefetch manifest"),
        Err(e) => shared.upload_failed("storing the prefetch manifest", &e),
    }
}

/// Records which entries this go command used, in first-use order.
pub(super) struct Recorder {
    enabled: bool,
    inner: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    order: Vec<ActionId>,
    /// `None` until the entry is known (a get that missed, until its put).
    entries: HashMap<ActionId, Option<RemoteEntry>>,
}

impl Recorder {
    pub fn new(enabled: bool) -> Recorder {
        Recorder { enabled, inner: Mutex::new(Recorded::default()) }
    }

    /// go asked for `action`.
    pub fn asked(&self, action: &ActionId) {
        self.note(action, None);
    }

    /// `action` has `entry` (a hit, or a put).
    pub fn known(&self, action: &ActionId, entry: &Entry) {
        self.note(action, Some(remote_entry(entry)));
    }

    fn note(&self, action: &ActionId, entry: Option<RemoteEntry>) {
        if !self.enabled {
            return;
        }
        let mut r = lock(&self.inner);
        let Recorded { order, entries } = &mut *r;
        match entries.get_mut(action) {
            Some(slot) if entry.is_some() => *slot = entry,
            Some(_) => {}
            None if order.len() < MANIFEST_MAX_ENTRIES => {
                order.push(*action);
                entries.insert(*action, entry);
            }
            None => {}
        }
    }

    /// The known entries, in first-use order.
    pub fn snapshot(&self) -> Vec<(ActionId, RemoteEntry)> {
        let r = lock(&self.inner);
        r.order.iter().filter_map(|a| r.entries.get(a).copied().flatten().map(|e| (*a, e))).collect()
    }
}
