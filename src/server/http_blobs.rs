//! `/cas/{hash}` of the HTTP cache: blob bodies stream both ways through the
//! code ByteStream uses, never held whole. A `PUT` is hashed and spooled as
//! it arrives ([`Spool`]) and published only once its bytes match the hash,
//! so nothing partial is ever readable; a `GET` hands out chunks as the
//! client takes them ([`download::stream`]), under the same memory budget
//! and idle timeout.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::digest::Digest;
use crate::server::download::{self, Accounting, Chunks};
use crate::server::http_cache::{binary, HttpCache, HttpError, Target};
use crate::server::upload::{Spool, Upload, BATCH_BYTES};
use crate::store::INLINE_MAX;

impl HttpCache {
    /// The digest of a stored blob, or 404.
    fn stored(&self, t: &Target) -> Result<Digest, HttpError> {
        self.store.digest_of_hash(super::http_cache::FUNCTION, &t.hash)?.ok_or_else(|| {
            HttpError::new(StatusCode::NOT_FOUND, format!("blob {} is not in the CAS", hex::encode(t.hash)))
        })
    }

    /// `GET`/`HEAD /cas/{hash}`: the blob's bytes, streamed.
    pub(super) async fn get_blob(&self, t: &Target, head: bool) -> Result<Response, HttpError> {
        let digest = self.stored(t)?;
        if head {
            // An existence check before an upload: a use, as FindMissingBlobs is.
            if !self.store.contains(&digest)? {
                return Err(HttpError::new(StatusCode::NOT_FOUND, format!("blob {digest} is not in the CAS")));
            }
            self.tiers.note_used(&[digest]);
            return Ok(binary(Body::empty(), digest.size));
        }
        // Served from the local store: a use of the tier's copy too.
        self.tiers.note_used(&[digest]);
        let in_memory = digest.size <= INLINE_MAX;
        // An in-memory blob is held whole from open to the end of the read.
        let state_held = if in_memory && digest.size > 0 {
            Some(
                self.budget
                    .take(digest.size as usize, "an HTTP GET's in-memory blob")
                    .await
                    .map_err(HttpError::from_status)?,
            )
        } else {
            None
        };
        let store = self.store.clone();
        let reader = super::blocking(move || store.read(&digest, 0, None))
            .await
            .map_err(HttpError::from_status)?
            // Evicted between the lookup and the open.
            .ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, format!("blob {digest} is not in the CAS")))?;
        let accounting = Accounting { budget: self.budget.clone(), state_held, budget_chunks: !in_memory };
        let chunks = download::stream(Chunks::Plain(reader), accounting, self.idle, format!("HTTP GET /cas/{digest}"));
        // An error mid-body cuts the connection short of Content-Length, so
        // the client sees the transfer failed rather than a short blob.
        let body = Body::from_stream(chunks.map(|r| r.map(|m| m.data)));
        Ok(binary(body, digest.size))
    }

    /// `PUT /cas/{hash}`: the body must be `Content-Length` bytes hashing to
    /// `hash`, else 400 and nothing is stored.
    pub(super) async fn put_blob(&self, t: &Target, headers: &HeaderMap, body: Body) -> Result<Response, HttpError> {
        let size = content_length(headers)?;
        if size > self.max_blob_size {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a blob of {size} bytes is larger than the {} bytes this cache accepts (--max-blob-size)",
                    self.max_blob_size
                ),
            ));
        }
        let digest = Digest { function: super::http_cache::FUNCTION, hash: t.hash, size };
        if self.store.contains(&digest)? {
            self.tiers.note_used(&[digest]);
            return self.skip_body(headers, body).await;
        }
        let state_held = if size <= INLINE_MAX && size > 0 {
            Some(
                self.budget
                    .take_now(size as usize, "a new HTTP upload's in-memory state")
                    .map_err(HttpError::from_status)?,
            )
        } else {
            None
        };
        let store = self.store.clone();
        let writer = super::blocking(move || store.begin_write(digest)).await.map_err(HttpError::from_status)?;
        let mut spool = Spool::new(self.store.clone(), Upload::Plain(writer), state_held);
        let mut frames = body.into_data_stream();
        loop {
            let next = match self.idle {
                Some(idle) => match tokio::time::timeout(idle, frames.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        spool.discard().await;
                        return Err(HttpError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            format!("no data arrived for {idle:?} (--stream-idle-timeout); the upload was cancelled"),
                        ));
                    }
                },
                None => frames.next().await,
            };
            let data = match next {
                None => break,
                Some(Ok(data)) => data,
                Some(Err(e)) => {
                    spool.discard().await;
                    return Err(HttpError::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading the upload of {digest}: {e}"),
                    ));
                }
            };
            if data.is_empty() {
                continue;
            }
            // Our own pending batch may be what holds the budget: write it first.
            if spool.can_launch() && self.budget.available() < data.len() {
                spool.launch();
            }
            let held = match self.budget.take(data.len(), "an HTTP upload").await {
                Ok(h) => h,
                Err(s) => {
                    spool.discard().await;
                    return Err(HttpError::from_status(s));
                }
            };
            spool.queue(data, held);
            if spool.pending_bytes() >= BATCH_BYTES {
                // One batch on the disk while the next is received.
                spool.land().await.map_err(HttpError::from_status)?;
                spool.launch();
            }
        }
        spool.commit().await.map_err(HttpError::from_status)?;
        Ok(StatusCode::OK.into_response())
    }

    /// A `PUT` of a blob already stored: nothing to verify against (the hash
    /// names the content), so its bytes are read and dropped, keeping the
    /// connection usable; with `Expect: 100-continue` they are never sent.
    async fn skip_body(&self, headers: &HeaderMap, body: Body) -> Result<Response, HttpError> {
        let expects = headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects {
            let mut frames = body.into_data_stream();
            while let Some(frame) = frames.next().await {
                frame.map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")))?;
            }
        }
        Ok(StatusCode::OK.into_response())
    }
}

/// The declared size of an upload; the hash alone does not give it, and the
/// store spools by size, so a body without one (chunked) is refused.
fn content_length(headers: &HeaderMap) -> Result<u64, HttpError> {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else {
        return Err(HttpError::new(
            StatusCode::LENGTH_REQUIRED,
            "a PUT to /cas/ needs a Content-Length header (chunked uploads are not accepted)",
        ));
    };
    v.to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, format!("Content-Length {v:?} is not a number")))
}
