//! The bounded bucket: least-recently-used eviction across every node,
//! without conditional writes (Garage ignores If-None-Match) and without a
//! coordinator.
//!
//! One pass, which any node may run at any time, twice at once included:
//! 1. Take the bucket's time: write `_cairn/clock/{node}` and list it.
//!    Every time the pass compares is the bucket's (objects' and logs'
//!    `last_modified`), so clock skew between nodes changes nothing.
//! 2. Read every use log under `_cairn/uses/` and fold them: key → latest use.
//! 3. List `cas/` and `ac/`; an object's last use is the later of its
//!    `last_modified` (its last write) and its latest logged use.
//! 4. While the total is over the bound, delete the least recently used,
//!    stopping at the first object used within `min_age`: the bound may be
//!    overrun, never the promise to a build that just saw a blob present.
//! 5. Write one summary log of the folded uses of the objects that remain
//!    (with their own times), *then* delete exactly the logs read in step 2.
//!    A log is deleted only after a summary holding its uses is stored, and
//!    logs written meanwhile are untouched, so no use is ever forgotten. Two
//!    passes at once both fold, both write a summary, both delete the same
//!    logs: the uses survive in either summary.
//!
//! Limits: a pass lists the whole bucket (one LIST call per 1000 objects);
//! a use made between a pass's listing and its deletes can lose to the
//! delete (the next read misses and the blob is rebuilt, never served
//! wrong; the min age keeps this to blobs unused for that long); uses are
//! noted up to one flush interval late, which only delays eviction.

use std::collections::HashMap;
use std::fmt;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};

use super::{uses, Bucket, Op};
use crate::error::{Error, Result};

/// Use logs read at once during a pass.
const LOG_READ_CONCURRENCY: usize = 16;

/// What one eviction pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// CAS and AC objects listed.
    pub objects: u64,
    /// Their bytes before the pass.
    pub bytes_before: u64,
    /// Objects deleted, and their bytes.
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Bytes left after the pass.
    pub bytes_after: u64,
    /// Use logs folded (and deleted) by this pass.
    pub logs_folded: u64,
    /// True when the pass stopped over the bound because every remaining
    /// object was used within the minimum age.
    pub held_by_min_age: bool,
}

impl fmt::Display for EvictReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "eviction: {} objects, {} bytes; deleted {} ({} bytes); {} bytes left; {} use logs folded{}",
            self.objects,
            self.bytes_before,
            self.deleted,
            self.deleted_bytes,
            self.bytes_after,
            self.logs_folded,
            if self.held_by_min_age { "; over the bound: the rest was used within the minimum age" } else { "" }
        )
    }
}

fn millis(meta: &ObjectMeta) -> i64 {
    meta.last_modified.timestamp_millis()
}

impl Bucket {
    /// Lists every object under `rel`, counting one LIST call per 1000 keys.
    async fn list_all(&self, rel: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(rel);
        let what = format!("listing {rel}/");
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        loop {
            match self.timed(&what, async { listing.next().await.transpose() }).await {
                Ok(Some(Some(meta))) => out.push(meta),
                Ok(_) => break,
                Err(e) => {
                    self.counts.add(Op::List, (out.len() as u64).div_ceil(1000).max(1));
                    return Err(e);
                }
            }
        }
        self.counts.add(Op::List, (out.len() as u64).div_ceil(1000).max(1));
        Ok(out)
    }

    /// The bucket's time now, in ms: the `last_modified` of an object this
    /// node writes for the purpose.
    async fn bucket_now(&self) -> Result<i64> {
        let rel = format!("_cairn/clock/{}", self.opts.node_id);
        self.call(
            Op::Put,
            "writing the clock object",
            self.store.put(&self.path(&rel), PutPayload::from_static(b"clock")),
        )
        .await?;
        // Listed, not HEADed: a listing gives milliseconds, like the
        // listings the pass compares with; HEAD's Last-Modified has seconds.
        // (A listing names what is under a folder, so list the folder.)
        let mine = self.path(&rel);
        let listed = self.list_all("_cairn/clock").await?;
        listed
            .iter()
            .filter(|m| m.location == mine)
            .map(millis)
            .max()
            .ok_or_else(|| Error::Unavailable(format!("object store {}: the clock object vanished", self.url)))
    }

    /// Reads and folds every use log; returns the uses and the logs read.
    async fn fold_logs(&self) -> Result<(HashMap<String, i64>, Vec<Path>)> {
        let logs = self.list_all(uses::USES_DIR).await?;
        let texts = futures::stream::iter(logs)
            .map(|meta| async move {
                let what = format!("reading use log {}", meta.location);
                let got = async { self.store.get(&meta.location).await?.bytes().await };
                let body = self.call(Op::Get, &what, got).await?;
                Ok::<_, Error>((meta, body))
            })
            .buffer_unordered(LOG_READ_CONCURRENCY);
        let texts: Vec<_> = texts.try_collect().await?;
        let mut folded = HashMap::new();
        let mut read = Vec::new();
        for (meta, body) in texts {
            // A log deleted since the listing was folded by another pass.
            let Some(body) = body else { continue };
            uses::fold(&String::from_utf8_lossy(&body), millis(&meta), &mut folded);
            read.push(meta.location);
        }
        Ok((folded, read))
    }

    /// One eviction pass (see the module doc). With no `max_size` it only
    /// folds the use logs and reports the total.
    pub async fn evict(&self) -> Result<EvictReport> {
        let now = self.bucket_now().await?;
        let (folded, logs) = self.fold_logs().await?;
        let mut objects = Vec::new();
        for dir in ["cas", "ac"] {
            for meta in self.list_all(dir).await? {
                let Some(rel) = self.rel(&meta.location) else { continue };
                let last_use = folded.get(&rel).copied().unwrap_or(i64::MIN).max(millis(&meta));
                objects.push((last_use, rel, meta));
            }
        }
        let mut report = EvictReport {
            objects: objects.len() as u64,
            bytes_before: objects.iter().map(|(_, _, m)| m.size).sum(),
            logs_folded: logs.len() as u64,
            ..Default::default()
        };
        let bound = self.opts.max_size.unwrap_or(u64::MAX);
        let min_age = self.opts.min_age.as_millis() as i64;
        objects.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut total = report.bytes_before;
        let mut doomed = Vec::new();
        for (last_use, rel, meta) in &objects {
            if total <= bound {
                break;
            }
            if now.saturating_sub(*last_use) < min_age {
                report.held_by_min_age = true;
                break;
            }
            total -= meta.size;
            doomed.push((rel.clone(), meta.location.clone(), meta.size));
        }
        self.delete_all(doomed.iter().map(|(_, p, _)| p.clone()).collect()).await?;
        report.deleted = doomed.len() as u64;
        report.deleted_bytes = doomed.iter().map(|(_, _, s)| s).sum();
        report.bytes_after = total;

        // The summary keeps the logged uses that still say more than the
        // objects' own last_modified; then, and only then, the logs go.
        let gone: std::collections::HashSet<&String> = doomed.iter().map(|(r, _, _)| r).collect();
        let summary: HashMap<String, i64> = objects
            .iter()
            .filter(|(_, rel, meta)| !gone.contains(rel) && folded.get(rel).is_some_and(|t| *t > millis(meta)))
            .map(|(t, rel, _)| (rel.clone(), *t))
            .collect();
        if !summary.is_empty() {
            let name =
                format!("{}/summary-{}-{now}-{}", uses::USES_DIR, self.opts.node_id, uuid::Uuid::new_v4().simple());
            let body = PutPayload::from(uses::encode_timed(&summary));
            self.call(Op::Put, "writing the use summary", self.store.put(&self.path(&name), body)).await?;
        }
        self.delete_all(logs).await?;
        Ok(report)
    }

    /// Deletes `paths` (S3 batches them, up to 1000 a request); an object
    /// already gone (another pass deleted it) is no failure.
    async fn delete_all(&self, paths: Vec<Path>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        self.counts.add(Op::Delete, paths.len() as u64);
        let input = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(input);
        while let Some(r) = self.timed("deleting", async { Ok(results.next().await) }).await? {
            match r {
                None => break,
                Some(Ok(_)) | Some(Err(object_store::Error::NotFound { .. })) => {}
                Some(Err(e)) => return Err(self.unavailable("deleting", &e)),
            }
        }
        Ok(())
    }
}
