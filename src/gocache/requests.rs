//! The work of one request (get, put) against the tiers, and the work that
//! may outlive go ([`Background`]: a trim, queued uploads). The run loop
//! that dispatches requests is in the parent, `gocache`.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::local::{Entry, LocalStore, TempFile};
use super::protocol::{ActionId, Body, OutputId, ProtocolError, RequestReader, Response};
use super::Tiers;

pub(super) async fn get(tiers: Arc<Tiers>, id: i64, action: ActionId) -> Response {
    match tiers.local.get(&action) {
        Ok(Some(entry)) => {
            if let Some(remote) = &tiers.remote {
                remote.saw(&action, &entry);
            }
            return hit(id, &entry);
        }
        Ok(None) => {}
        // Don't fail go over it: an Err on a get is a (silent) miss for go anyway.
        Err(e) => tracing::warn!(%action, "cairn gocacheprog: reading the local cache: {e}; treating as a miss"),
    }
    if let Some(remote) = &tiers.remote {
        if let Some(entry) = remote.get(&action).await {
            return hit(id, &entry);
        }
    }
    Response::miss(id)
}

fn hit(id: i64, entry: &Entry) -> Response {
    match disk_path(&entry.path) {
        Ok(path) => Response::hit(id, entry.output, entry.size, entry.time_nanos, path),
        Err(msg) => Response::error(id, msg),
    }
}

/// Stores a put and replies with its path.
///
/// A body whose size or SHA-256 does not match the request is answered with
/// an `Err`, even though an `Err` on a put can fail go's build: go computes
/// OutputID as the SHA-256 of exactly the bytes it sends, so a mismatch means
/// corruption between go and us. Storing it under its real hash would hand
/// go back different bytes than it put; failing this one request loudly is
/// the honest answer (the framing is intact, so the session goes on).
pub(super) async fn put(
    tiers: Arc<Tiers>,
    id: i64,
    action: ActionId,
    output: OutputId,
    size: u64,
    body: Option<io::Result<(TempFile, Body)>>,
) -> Response {
    let local = &tiers.local;
    let stored = match body {
        None if output != OutputId::EMPTY => {
            return Response::error(id, format!("zero-length put with OutputID {output}, which is not sha256(\"\")"));
        }
        None => local.put_bytes(&action, b""),
        Some(Err(e)) => Err(e),
        Some(Ok((_, Body { write_error: Some(e), .. }))) => Err(e),
        Some(Ok((_, body))) if body.size != size => {
            return Response::error(id, format!("put body has {} bytes but BodySize is {size}", body.size));
        }
        Some(Ok((_, body))) if body.output != output => {
            return Response::error(
                id,
                format!("put body has sha256 {} but OutputID is {output}: corrupted on the way", body.output),
            );
        }
        Some(Ok((temp, _))) => local.commit(&action, &output, size, temp),
    };
    match stored {
        Ok(entry) => {
            if let Some(remote) = &tiers.remote {
                remote.upload(&action, &entry);
            }
            match disk_path(&entry.path) {
                Ok(path) => Response::stored(id, path),
                Err(msg) => Response::error(id, msg),
            }
        }
        Err(e) => {
            let root = tiers.local.root().display();
            tracing::error!(%action, "cairn gocacheprog: storing in {root}: {e}");
            Response::error(id, format!("cairn: storing in local cache {root}: {e}"))
        }
    }
}

/// Streams a put body from the input into a new temp file. The outer error
/// is fatal (broken framing); the inner one fails only this put (the body
/// was still consumed, so the stream stays in sync).
pub(super) async fn read_put_body<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut RequestReader<R>,
    local: &LocalStore,
) -> Result<io::Result<(TempFile, Body)>, ProtocolError> {
    let mut temp = match local.temp_file() {
        Ok(t) => t,
        Err(e) => {
            reader.read_body(None).await?;
            return Ok(Err(e));
        }
    };
    let mut file = temp.take_file().expect("a fresh temp file is open");
    let body = reader.read_body(Some(&mut file)).await?;
    Ok(Ok((temp, body)))
}

fn disk_path(path: &Path) -> Result<String, String> {
    // The root was checked to be UTF-8 and the rest is hex.
    path.to_str().map(str::to_owned).ok_or_else(|| format!("cache path {} is not UTF-8", path.display()))
}

/// Work that may continue after go has been released: a local trim, and
/// queued uploads. Dropping it cancels what can be cancelled.
pub struct Background {
    pub(super) tiers: Option<Arc<Tiers>>,
    trim: Option<JoinHandle<()>>,
    /// Tells a running trim to stop between files.
    cancel: Arc<AtomicBool>,
}

impl Background {
    /// Starts a trim of the local tier in the background if one is due.
    /// Also deletes what a `go clean -cache` left to delete.
    pub(super) fn start_trim(tiers: &Arc<Tiers>, after_hits: Option<u64>) -> Background {
        let cancel = Arc::new(AtomicBool::new(false));
        let (local, stop) = (tiers.local.clone(), cancel.clone());
        let trim = tokio::task::spawn_blocking(move || {
            local.remove_cleared();
            // The test hook: wait (on this blocking thread) for the build to
            // be well under way. Bounded, so a test that gets it wrong ends.
            let pause = || {
                let Some(n) = after_hits else { return };
                let until = std::time::Instant::now() + Duration::from_secs(120);
                while local.hits() < n && !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            match local.trim_if_due(&stop, pause) {
                Ok(Some(stats)) => tracing::debug!(?stats, dir = %local.root().display(), "trimmed local cache"),
                Ok(None) => {}
                Err(e) => tracing::warn!("cairn gocacheprog: trimming {}: {e}", local.root().display()),
            }
        });
        Background { tiers: None, trim: Some(trim), cancel }
    }

    /// Lets the work finish for at most `bound`, then cancels what is left.
    pub async fn finish(mut self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        if let Some(remote) = self.tiers.as_ref().and_then(|t| t.remote.as_ref()) {
            remote.finish(bound).await;
        }
        if let Some(trim) = self.trim.take() {
            let aborted = tokio::time::timeout_at(deadline, trim).await.is_err();
            if aborted {
                self.cancel.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
