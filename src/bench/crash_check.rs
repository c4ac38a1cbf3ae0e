//! The crash loop's checks after a restart. What the loop knows of the data
//! dir comes from two sides:
//! - through the server (RocksDB can only be read that way while it runs):
//!   FindMissingBlobs says which sent blobs have a record, GetActionResult
//!   which sent ActionCache entries exist, reads re-hash every acknowledged
//!   blob; `cairn stats --json` gives the counters;
//! - through the data dir's layout (`blobs/sha256/xx/HASH`, one file per blob
//!   above the 256 KiB inline limit): which files exist and their sizes.
//!
//! A sent write is resolved once, right after the crash that followed it
//! (present or not); nothing else writes to the dir and nothing is evicted
//! (`--max-size 1TiB`), so the counters must equal the sum over what was
//! found present, and every file must belong to a present blob.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;

use super::crash::Ledger;
use crate::client::{Client, BATCH_BLOB_MAX};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

/// What the loop knows the server holds, and what it still has to check.
#[derive(Default)]
pub struct Known {
    /// Blobs with a record (found present after the crash that followed their write).
    stored: HashSet<Digest>,
    /// ActionCache entries present: action → stored result length.
    stored_ac: HashMap<Digest, u64>,
    /// Blobs sent in the last round, with whether they were acknowledged.
    unresolved: Vec<(Digest, bool)>,
    /// ActionCache updates sent in the last round, acknowledged or not.
    unresolved_ac: Vec<(Digest, reapi::ActionResult, bool)>,
    /// Files without a record seen so far (each counted once).
    orphans: HashSet<Digest>,
    /// Every acknowledged write, for the final full check.
    acked: Vec<Digest>,
    acked_ac: Vec<(Digest, reapi::ActionResult)>,
}

impl Known {
    /// Takes in a round's ledger, to be checked after the next restart.
    pub fn absorb(&mut self, l: Ledger) {
        let acked: HashSet<Digest> = l.acked_blobs.iter().copied().collect();
        let acked_ac: HashSet<Digest> = l.acked_ac.iter().copied().collect();
        self.unresolved.extend(l.sent_blobs.iter().map(|d| (*d, acked.contains(d))));
        for (a, r) in l.sent_ac {
            let ok = acked_ac.contains(&a);
            if ok {
                self.acked_ac.push((a, r.clone()));
            }
            self.unresolved_ac.push((a, r, ok));
        }
        self.acked.extend(l.acked_blobs);
    }
}

/// What the loop found, over all rounds.
#[derive(Default)]
pub struct Findings {
    pub rounds: u64,
    pub acked_blobs: u64,
    pub acked_ac: u64,
    /// Acknowledged blobs unreadable or wrong after a restart (must be 0).
    pub lost_blobs: u64,
    /// Acknowledged ActionCache entries missing or changed (must be 0).
    pub lost_ac: u64,
    /// Distinct files in blobs/ seen without a record right after a restart
    /// (expected after a crash: the reclaim runs in the background).
    pub orphans_seen: u64,
    /// Most such files at one restart.
    pub orphans_max: u64,
    /// Files without a record after the reclaim had its time (must be 0).
    pub orphans_left: u64,
    /// Blobs above the inline limit with a record but no file (must be 0).
    pub missing_files: u64,
    /// Restarts where `cairn stats` disagreed with what is stored (must be 0).
    pub counter_mismatches: u64,
    /// Files found in tmp/ after restarts (it is wiped at start-up).
    pub tmp_leftovers: u64,
    /// Writes that failed while the server was up (must be 0).
    pub unexpected: u64,
    /// The first failure, in words.
    pub first: Option<String>,
}

impl Findings {
    /// Everything that must be 0.
    pub fn failures(&self) -> u64 {
        self.lost_blobs
            + self.lost_ac
            + self.orphans_left
            + self.missing_files
            + self.counter_mismatches
            + self.unexpected
    }

    pub fn summary(&self) -> String {
        format!(
            "{} rounds, {} acknowledged blobs + {} ActionCache entries, lost {} blobs + {} entries, \
             files without record after restarts {} (max {} at once), orphans left after reclaim {}, records without file {}, \
             counter mismatches {}, tmp/ leftovers {}, write errors while up {}",
            self.rounds,
            self.acked_blobs,
            self.acked_ac,
            self.lost_blobs,
            self.lost_ac,
            self.orphans_seen,
            self.orphans_max,
            self.orphans_left,
            self.missing_files,
            self.counter_mismatches,
            self.tmp_leftovers,
            self.unexpected
        )
    }

    fn fail(&mut self, what: String) {
        eprintln!("  crash loop: {what}");
        self.first.get_or_insert(what);
    }
}

/// Reads `d` back through the server, verifying it; `Err` says why not.
async fn read_back(c: &Client, d: &Digest) -> Result<(), String> {
    let got = if d.size <= BATCH_BLOB_MAX {
        c.batch_read(&[*d]).await.map(|v| v.into_iter().next().flatten().map(|b| b.len() as u64))
    } else {
        c.read_blob(d, true).await
    };
    match got {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("acknowledged blob {d} is gone")),
        Err(e) => Err(format!("acknowledged blob {d} does not read back: {e}")),
    }
}

/// Reads back every blob of `ds`, several at a time; each failure is a loss.
async fn read_all(c: &Client, ds: &[Digest], f: &mut Findings) {
    use futures::StreamExt;
    let mut reads = futures::stream::iter(ds).map(|d| read_back(c, d)).buffer_unordered(READS_IN_FLIGHT);
    while let Some(r) = reads.next().await {
        if let Err(e) = r {
            f.lost_blobs += 1;
            f.fail(e);
        }
    }
}

/// Verifying reads in flight during a check.
const READS_IN_FLIGHT: usize = 16;

/// Output digests of a result, for comparing what was stored with what was sent.
fn outputs(r: &reapi::ActionResult) -> Vec<Option<reapi::Digest>> {
    r.output_files.iter().map(|f| f.digest.clone()).collect()
}

/// The checks right after a restart (before new writes).
pub async fn after_restart(c: &Client, bin: &Path, dir: &Path, k: &mut Known, f: &mut Findings) -> anyhow::Result<()> {
    // Blobs of the last round: which have a record; acknowledged ones must, and read back.
    let sent: Vec<Digest> = k.unresolved.iter().map(|(d, _)| *d).collect();
    let missing: HashSet<Digest> = c.find_missing(&sent).await?.into_iter().collect();
    let mut acked = Vec::new();
    for (d, was_acked) in std::mem::take(&mut k.unresolved) {
        if was_acked {
            acked.push(d);
        }
        if !missing.contains(&d) {
            k.stored.insert(d);
        }
    }
    f.acked_blobs += acked.len() as u64;
    read_all(c, &acked, f).await;
    for (a, sent, acked) in std::mem::take(&mut k.unresolved_ac) {
        let got = c.get_action_result(&a).await?;
        if acked {
            f.acked_ac += 1;
            if got.as_ref().map(outputs) != Some(outputs(&sent)) {
                f.lost_ac += 1;
                f.fail(format!(
                    "acknowledged ActionCache entry {a} is {}",
                    if got.is_some() { "changed" } else { "gone" }
                ));
            }
        }
        if let Some(r) = got {
            // The crash loop writes under the default (empty) instance name.
            k.stored_ac.insert(a, crate::store::action_entry_bytes("", &a, r.encoded_len()));
        }
    }
    let (orphans, missing_files, tmp) = disk(dir, k)?;
    f.orphans_seen = k.orphans.len() as u64;
    f.orphans_max = f.orphans_max.max(orphans);
    f.tmp_leftovers += tmp;
    if missing_files > 0 {
        f.missing_files += missing_files;
        f.fail(format!("{missing_files} blobs have a record but no file in blobs/"));
    }
    counters(bin, dir, k, f).await
}

/// Compares `cairn stats --json` with what was found stored.
async fn counters(bin: &Path, dir: &Path, k: &Known, f: &mut Findings) -> anyhow::Result<()> {
    let Some(st) = super::soak::server_stats(bin, dir).await else {
        f.counter_mismatches += 1;
        f.fail("cairn stats --json failed".into());
        return Ok(());
    };
    let get = |key: &str| st.get(key).and_then(|v| v.as_i64()).unwrap_or(-1);
    let want = [
        ("cas_count", k.stored.len() as i64),
        ("cas_bytes", k.stored.iter().map(|d| d.size as i64).sum()),
        ("ac_count", k.stored_ac.len() as i64),
        ("ac_bytes", k.stored_ac.values().map(|&n| n as i64).sum()),
    ];
    let wrong: Vec<String> = want
        .iter()
        .filter(|(key, n)| get(key) != *n)
        .map(|(key, n)| format!("{key} {} (stored: {n})", get(key)))
        .collect();
    if !wrong.is_empty() {
        f.counter_mismatches += 1;
        f.fail(format!("round {}: counters differ from what is stored: {}", f.rounds, wrong.join(", ")));
    }
    Ok(())
}

/// Files in blobs/ without a record, records above the inline limit without a
/// file, and files in tmp/.
fn disk(dir: &Path, k: &mut Known) -> anyhow::Result<(u64, u64, u64)> {
    let mut files: HashSet<Digest> = HashSet::new();
    let root = dir.join("blobs").join(DigestFunction::Sha256.name());
    if root.exists() {
        for shard in std::fs::read_dir(&root)? {
            for file in std::fs::read_dir(shard?.path())? {
                let file = file?;
                let name = file.file_name().to_string_lossy().into_owned();
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                match Digest::parse(DigestFunction::Sha256, &name, size as i64) {
                    Ok(d) => files.insert(d),
                    // Not a blob's name (a temp file?): it has no record either.
                    Err(_) => files.insert(Digest { function: DigestFunction::Sha256, hash: [0; 32], size }),
                };
            }
        }
    }
    let orphans = files.iter().filter(|d| !k.stored.contains(d)).count() as u64;
    k.orphans.extend(files.iter().filter(|d| !k.stored.contains(d)));
    let inline_max = crate::store::INLINE_MAX;
    let missing = k.stored.iter().filter(|d| d.size > inline_max && !files.contains(d)).count() as u64;
    let tmp = std::fs::read_dir(dir.join("tmp")).map(|r| r.count() as u64).unwrap_or(0);
    Ok((orphans, missing, tmp))
}

/// The final check: every acknowledged write, every record still there.
pub async fn full(c: &Client, k: &mut Known, f: &mut Findings) -> anyhow::Result<()> {
    let stored: Vec<Digest> = k.stored.iter().copied().collect();
    let vanished = c.find_missing(&stored).await?;
    if !vanished.is_empty() {
        f.lost_blobs += vanished.len() as u64;
        f.fail(format!("{} blobs found present after an earlier restart are gone", vanished.len()));
    }
    read_all(c, &k.acked, f).await;
    for (a, sent) in &k.acked_ac {
        if c.get_action_result(a).await?.as_ref().map(outputs) != Some(outputs(sent)) {
            f.lost_ac += 1;
            f.fail(format!("acknowledged ActionCache entry {a} is gone or changed at the end"));
        }
    }
    Ok(())
}

/// Polls until no file in blobs/ lacks a record, for at most `wait`.
pub async fn reclaim(c: &Client, dir: &Path, k: &mut Known, f: &mut Findings, wait: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let (orphans, _, _) = disk(dir, k)?;
        if orphans == 0 || t.elapsed() >= wait {
            f.orphans_left = orphans;
            if orphans > 0 {
                f.fail(format!(
                    "{orphans} files in blobs/ still have no record {:.0} s after start-up",
                    wait.as_secs_f64()
                ));
            } else {
                eprintln!("  orphan reclaim: none left after {:.1} s", t.elapsed().as_secs_f64());
            }
            // The server still answers after the reclaim.
            c.health_check().await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_finds_orphans_records_without_file_and_tmp_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let shard = |d: &Digest| dir.path().join("blobs/sha256").join(&d.hex()[..2]);
        let data = vec![5u8; 300 * 1024];
        let kept = DigestFunction::Sha256.digest_of(&data);
        let orphan = DigestFunction::Sha256.digest_of(&data[1..]);
        let no_file = DigestFunction::Sha256.digest_of(&data[2..]);
        let inline = DigestFunction::Sha256.digest_of(b"small");
        for d in [kept, orphan] {
            std::fs::create_dir_all(shard(&d)).unwrap();
            std::fs::write(shard(&d).join(d.hex()), &data[..d.size as usize]).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/upload"), b"x").unwrap();
        let mut k = Known::default();
        // Held: one file, one above the inline limit without its file, one inline.
        k.stored.extend([kept, no_file, inline]);
        assert_eq!(disk(dir.path(), &mut k).unwrap(), (1, 1, 1));
        k.stored.insert(orphan);
        assert_eq!(disk(dir.path(), &mut k).unwrap(), (0, 1, 1));
    }
}
