//! The batch calls of [`Client`]: BatchUpdateBlobs and BatchReadBlobs for
//! small blobs, grouped under the server's batch limit, with one answer per
//! blob (REAPI answers each blob of a batch separately) and downloads
//! verified against their digests.

use bytes::Bytes;
use tonic::Code;

use super::{rpc, Client, ClientError, Result};
use crate::digest::Digest;
use crate::proto::reapi;

impl Client {
    /// Uploads small in-memory blobs with as few BatchUpdateBlobs calls as the
    /// server's limit allows. Fails on the first blob the server rejects;
    /// [`Client::batch_upload_each`] has the per-blob answers.
    pub async fn batch_upload(&self, blobs: &[(Digest, Bytes)]) -> Result<()> {
        self.batch_upload_each(blobs).await?.into_iter().collect()
    }

    /// Uploads small in-memory blobs with as few BatchUpdateBlobs calls as the
    /// server's limit allows, and returns one result per blob, in order: a
    /// blob the server refuses fails alone (REAPI answers each blob of a
    /// batch separately). `Err` only if no call could be made at all; a call
    /// that fails after others worked fails just its own blobs.
    pub async fn batch_upload_each(&self, blobs: &[(Digest, Bytes)]) -> Result<Vec<Result<()>>> {
        let mut out: Vec<Option<Result<()>>> = blobs.iter().map(|_| None).collect();
        let mut any_call_ok = false;
        for group in batches(blobs.iter().map(|(d, b)| (d, b.len() as u64)), self.max_batch_total) {
            let requests = group
                .iter()
                .map(|&i| reapi::batch_update_blobs_request::Request {
                    digest: Some(blobs[i].0.to_proto()),
                    data: blobs[i].1.clone(),
                    compressor: 0,
                })
                .collect();
            let call = self
                .cas()
                .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                    instance_name: self.instance.clone(),
                    requests,
                    digest_function: self.function.to_proto() as i32,
                })
                .await;
            let resp = match call {
                Ok(r) => r.into_inner(),
                Err(status) if !any_call_ok => return Err(rpc("BatchUpdateBlobs")(status)),
                Err(status) => {
                    for &i in &group {
                        out[i] = Some(Err(rpc("BatchUpdateBlobs")(copy_status(&status))));
                    }
                    continue;
                }
            };
            any_call_ok = true;
            let mut slots = slots_by_digest(group.iter().map(|&i| (i, blobs[i].0)));
            for r in resp.responses {
                let Some(d) = r.digest.and_then(|d| Digest::parse(self.function, &d.hash, d.size_bytes).ok()) else {
                    continue;
                };
                let status = r.status.filter(|s| s.code != 0);
                for i in slots.remove(&d).unwrap_or_default() {
                    out[i] = Some(match &status {
                        None => Ok(()),
                        Some(s) => Err(ClientError::Rpc {
                            rpc: "BatchUpdateBlobs",
                            status: tonic::Status::new(Code::from(s.code), s.message.clone()),
                        }),
                    });
                }
            }
        }
        // A blob the server did not answer for was not stored.
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ClientError::Rpc {
                        rpc: "BatchUpdateBlobs",
                        status: tonic::Status::internal("the server did not answer for this blob"),
                    })
                })
            })
            .collect())
    }

    /// Downloads small blobs with BatchReadBlobs, verifying each. Absent blobs
    /// come back as `None` (as do blobs the server refused), in the order
    /// asked; a blob that fails its check fails the whole call ([`Client::batch_read_each`] answers per blob).
    pub async fn batch_read(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        let each = self.batch_read_each(digests).await?.into_iter();
        // A blob the server refused individually reads as absent, as before.
        each.map(|r| match r {
            Err(ClientError::Rpc { .. }) => Ok(None),
            other => other,
        })
        .collect()
    }

    /// Downloads small blobs with BatchReadBlobs and returns one result per
    /// digest, in order: `Ok(Some)` verified bytes, `Ok(None)` the server
    /// does not have it, `Err` this blob was corrupt or refused. One bad
    /// blob spoils only itself. `Err` for the call only if no call could be
    /// made at all; a call that fails after others worked fails just its own
    /// blobs.
    pub async fn batch_read_each(&self, digests: &[Digest]) -> Result<Vec<Result<Option<Bytes>>>> {
        let mut out: Vec<Result<Option<Bytes>>> = digests.iter().map(|_| Ok(None)).collect();
        let mut any_call_ok = false;
        for group in batches(digests.iter().map(|d| (d, d.size)), self.max_batch_total) {
            let call = self
                .cas()
                .batch_read_blobs(reapi::BatchReadBlobsRequest {
                    instance_name: self.instance.clone(),
                    digests: group.iter().map(|&i| digests[i].to_proto()).collect(),
                    acceptable_compressors: Vec::new(),
                    digest_function: self.function.to_proto() as i32,
                })
                .await;
            let resp = match call {
                Ok(r) => r.into_inner(),
                Err(status) if !any_call_ok => return Err(rpc("BatchReadBlobs")(status)),
                Err(status) => {
                    for &i in &group {
                        out[i] = Err(rpc("BatchReadBlobs")(copy_status(&status)));
                    }
                    continue;
                }
            };
            any_call_ok = true;
            // Responses are matched by digest, not position: servers may
            // answer in another order, and once per distinct digest.
            let mut slots = slots_by_digest(group.iter().map(|&i| (i, digests[i])));
            for r in resp.responses {
                let Some(d) = r.digest.as_ref().and_then(|d| Digest::parse(self.function, &d.hash, d.size_bytes).ok())
                else {
                    continue;
                };
                let Some(at) = slots.remove(&d) else { continue };
                let answer = match r.status.as_ref().filter(|s| s.code != 0) {
                    Some(s) if s.code == Code::NotFound as i32 => Ok(None),
                    Some(s) => Err(ClientError::Rpc {
                        rpc: "BatchReadBlobs",
                        status: tonic::Status::new(Code::from(s.code), s.message.clone()),
                    }),
                    None => verify(&d, &r.data).map(|()| Some(r.data.clone())),
                };
                for slot in at {
                    out[slot] = match &answer {
                        Ok(data) => Ok(data.clone()),
                        Err(e) => Err(copy_error(e)),
                    };
                }
            }
        }
        Ok(out)
    }
}

/// Checks downloaded bytes against their digest.
fn verify(d: &Digest, data: &[u8]) -> Result<()> {
    if data.len() as u64 != d.size || d.function.digest_of(data) != *d {
        return Err(ClientError::Corrupt { digest: d.to_string(), why: format!("{} bytes, wrong hash", data.len()) });
    }
    Ok(())
}

/// Where each digest of a batch goes in the caller's list (a digest may be
/// asked more than once; servers answer once per distinct digest).
fn slots_by_digest(items: impl Iterator<Item = (usize, Digest)>) -> std::collections::HashMap<Digest, Vec<usize>> {
    let mut slots: std::collections::HashMap<Digest, Vec<usize>> = std::collections::HashMap::new();
    for (i, d) in items {
        slots.entry(d).or_default().push(i);
    }
    slots
}

/// A status with the same code and message (for answering several blobs).
fn copy_status(s: &tonic::Status) -> tonic::Status {
    tonic::Status::new(s.code(), s.message())
}

/// The same error again, for each blob one answer covers.
fn copy_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Rpc { rpc, status } => ClientError::Rpc { rpc, status: copy_status(status) },
        ClientError::Corrupt { digest, why } => ClientError::Corrupt { digest: digest.clone(), why: why.clone() },
        other => ClientError::Io { context: other.to_string(), source: std::io::Error::other("see context") },
    }
}

/// Groups item indexes so each group's sizes sum to at most `limit` (an item
/// larger than `limit` gets a group of its own).
fn batches<'a, T: 'a>(items: impl Iterator<Item = (&'a T, u64)>, limit: u64) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for (i, (_, size)) in items.enumerate() {
        // Per-blob framing overhead (digest + tags) counts against the limit too.
        let cost = size + 100;
        if !current.is_empty() && bytes + cost > limit {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += cost;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_respects_the_limit() {
        let sizes = [10u64, 500, 400, 2000, 50];
        let items: Vec<(u64, u64)> = sizes.iter().map(|&s| (s, s)).collect();
        let groups = batches(items.iter().map(|(a, s)| (a, *s)), 1000);
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }
}
