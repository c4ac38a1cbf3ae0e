//! The one tower layer that observes every gRPC call, so no handler carries
//! metrics code: the RPC (from the path), the client tool (from REAPI's
//! `requestmetadata-bin` header), the instance name (peeked from the first
//! request message), bytes in and out (counted as frames pass), the final
//! status code (from the trailers, or the headers of a trailers-only error)
//! and the time to the last response byte. A call's record is written when
//! its last piece (request body, response body, handler) is dropped, and a
//! failed or slow call gets one log line then (target `cairn::requests`).
//!
//! Hits and misses: a GetActionResult or ByteStream Read that answers is a
//! hit, one answered NOT_FOUND a miss. FindMissingBlobs and BatchReadBlobs
//! count blobs, which only the handler knows: it reports them with
//! [`note_lookups`], which finds the call through a task-local.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::Code;

use super::metrics::{code_name, rpc_name, Metrics, RpcHandles};
use crate::digest::{validate_instance, ResourceName};
use crate::proto::reapi::RequestMetadata;

/// The header REAPI clients put their RequestMetadata in (binary, base64).
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

tokio::task_local! {
    /// The call whose handler is running, for [`note_lookups`].
    static CALL: Arc<Call>;
}

/// Reports blob lookups of the running FindMissingBlobs or BatchReadBlobs
/// call: `found` blobs present, `missing` absent. No-op outside a call.
pub(crate) fn note_lookups(found: usize, missing: usize) {
    let _ = CALL.try_with(|c| {
        c.found.fetch_add(found as u64, Ordering::Relaxed);
        c.missing.fetch_add(missing as u64, Ordering::Relaxed);
    });
}

/// The layer; clones share one [`Metrics`].
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    /// Calls longer than this get a log line (None: never).
    slow: Option<Duration>,
}

impl ObserveLayer {
    /// Observes calls into `metrics`; logs calls slower than `slow`.
    pub fn new(metrics: Arc<Metrics>, slow: Option<Duration>) -> ObserveLayer {
        ObserveLayer { metrics, slow }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, layer: self.clone() }
    }
}

/// The service the layer wraps around tonic's routes.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S, B> tower_service::Service<Request<tonic::body::Body>> for Observe<S>
where
    S: tower_service::Service<Request<tonic::body::Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ObservedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let call = Arc::new(Call::start(&self.layer, req.uri().path(), req.headers()));
        let (parts, body) = req.into_parts();
        let body = RequestBody { inner: body, call: call.clone(), peeked: false };
        let req = Request::from_parts(parts, tonic::body::Body::new(body));
        // The ready service answers this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = CALL.scope(call.clone(), inner.call(req));
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            // A trailers-only response (an error from the handler) carries its
            // status in the headers; anything else means the handler answered.
            match status_of(&parts.headers) {
                Some((code, message)) => call.set_status(code, message),
                None => call.answered(),
            }
            Ok(Response::from_parts(parts, ObservedBody { inner: body, call: Some(call) }))
        })
    }
}

/// What is known of one call while it runs; recorded when dropped.
pub(crate) struct Call {
    metrics: Arc<Metrics>,
    rpc: &'static str,
    tool: Arc<str>,
    handles: RpcHandles,
    started: Instant,
    slow: Option<Duration>,
    instance: OnceLock<String>,
    status: Mutex<Option<(Code, String)>>,
    found: AtomicU64,
    missing: AtomicU64,
}

impl Call {
    fn start(layer: &ObserveLayer, path: &str, headers: &HeaderMap) -> Call {
        let rpc = rpc_name(path);
        let tool = layer.metrics.tool(tool_name(headers).as_deref());
        Call {
            handles: layer.metrics.start(rpc),
            metrics: layer.metrics.clone(),
            rpc,
            tool,
            started: Instant::now(),
            slow: layer.slow,
            instance: OnceLock::new(),
            status: Mutex::new(None),
            found: AtomicU64::new(0),
            missing: AtomicU64::new(0),
        }
    }

    fn set_status(&self, code: Code, message: String) {
        let mut s = self.status.lock().expect("status lock");
        if s.is_none() {
            *s = Some((code, message));
        }
        drop(s);
        if code == Code::NotFound {
            self.lookup(false);
        }
    }

    /// The handler answered: a GetActionResult or Read that answers is a hit.
    fn answered(&self) {
        self.lookup(true);
    }

    fn lookup(&self, hit: bool) {
        if self.rpc == "GetActionResult" || self.rpc == "Read" {
            self.metrics.lookup(self.rpc, &self.tool, hit, 1);
        }
    }

    /// Reads the instance name from the first request frame: field 1 of every
    /// REAPI request, or the instance part of a ByteStream resource name.
    fn peek_instance(&self, frame: &[u8]) {
        let Some(first) = first_string_field(frame) else { return };
        let instance = match self.rpc {
            "Read" => ResourceName::parse_read(first).ok().map(|n| n.instance),
            "Write" | "QueryWriteStatus" => ResourceName::parse_write(first).ok().map(|n| n.instance),
            "Check" | "Watch" | "other" => None,
            _ => validate_instance(first).is_ok().then(|| first.to_string()),
        };
        if let Some(name) = instance {
            self.metrics.count_instance(&name);
            let _ = self.instance.set(name);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        // No status by now: the client went away before the call ended.
        let (code, message) =
            self.status.get_mut().ok().and_then(|s| s.take()).unwrap_or((Code::Cancelled, String::new()));
        self.metrics.finish(self.rpc, &self.handles, code, elapsed);
        let (found, missing) = (*self.found.get_mut(), *self.missing.get_mut());
        self.metrics.lookup(self.rpc, &self.tool, true, found);
        self.metrics.lookup(self.rpc, &self.tool, false, missing);
        log_call(self, code, &message, elapsed);
    }
}

/// One line for a failed or slow call; successful ones only at debug level.
fn log_call(call: &Call, code: Code, message: &str, elapsed: Duration) {
    let miss = code == Code::NotFound && matches!(call.rpc, "GetActionResult" | "Read");
    let failed = code != Code::Ok && !miss;
    let slow = call.slow.is_some_and(|s| elapsed >= s);
    let server_fault = matches!(
        code,
        Code::Internal
            | Code::Unknown
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unimplemented
    );
    macro_rules! line {
        ($level:ident, $what:literal) => {
            tracing::$level!(
                target: "cairn::requests",
                rpc = call.rpc,
                code = code_name(code),
                ms = elapsed.as_millis() as u64,
                tool = &*call.tool,
                instance = call.instance.get().map(String::as_str).unwrap_or(""),
                bytes_in = call.handles.received.get(),
                bytes_out = call.handles.sent.get(),
                status_message = message,
                $what
            )
        };
    }
    if failed && server_fault {
        line!(warn, "request failed");
    } else if failed {
        line!(info, "request failed");
    } else if slow {
        line!(warn, "slow request");
    } else {
        line!(debug, "request");
    }
}

/// The client's RequestMetadata tool_name, if it sent one that decodes.
pub fn tool_name(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(REQUEST_METADATA_HEADER)?.as_bytes();
    // gRPC sends binary headers as base64, padded or not.
    let trimmed = raw.strip_suffix(b"==").or_else(|| raw.strip_suffix(b"=")).unwrap_or(raw);
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed).ok()?;
    RequestMetadata::decode(bytes.as_slice()).ok()?.tool_details.map(|t| t.tool_name)
}

/// `grpc-status` (and `grpc-message`) of a header or trailer map.
fn status_of(headers: &HeaderMap) -> Option<(Code, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).map(percent_decode).unwrap_or_default();
    Some((Code::from_i32(code), message))
}

/// gRPC percent-encodes `grpc-message`; decode it for the log line.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Field 1 of the protobuf message in the first gRPC frame, when it is a
/// string at the start (encoders write fields in number order; a compressed
/// frame or a message without field 1 gives None or the empty name).
fn first_string_field(frame: &[u8]) -> Option<&str> {
    let (&flag, rest) = frame.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let msg = &rest[4..];
    if msg.first() != Some(&0x0a) {
        return Some("");
    }
    let mut len: u64 = 0;
    let mut at = 1;
    for shift in (0..35).step_by(7) {
        let b = *msg.get(at)?;
        at += 1;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let end = at.checked_add(usize::try_from(len).ok()?)?;
            return std::str::from_utf8(msg.get(at..end)?).ok();
        }
    }
    None
}

pin_project_lite::pin_project! {
    /// The request body, counting bytes and peeking at the first frame.
    struct RequestBody {
        #[pin]
        inner: tonic::body::Body,
        call: Arc<Call>,
        peeked: bool,
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.call.handles.received.inc_by(data.len() as u64);
                if !*this.peeked {
                    *this.peeked = true;
                    this.call.peek_instance(data);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The response body, counting bytes and reading the status trailer.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        // Dropped at the end of the stream, so the call is recorded then.
        call: Option<Arc<Call>>,
    }
}

impl<B: Body<Data = Bytes>> Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(call)) = (&polled, this.call.as_ref()) {
            if let Some(data) = frame.data_ref() {
                call.handles.sent.inc_by(data.len() as u64);
            } else if let Some((code, message)) = frame.trailers_ref().and_then(status_of) {
                call.set_status(code, message);
            }
        }
        if let Poll::Ready(None) = &polled {
            this.call.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn peeks_the_first_string_field() {
        let req =
            crate::proto::reapi::FindMissingBlobsRequest { instance_name: "main/linux".into(), ..Default::default() };
        assert_eq!(first_string_field(&frame(&req.encode_to_vec())), Some("main/linux"));
        let empty = crate::proto::reapi::FindMissingBlobsRequest {
            blob_digests: vec![Default::default()],
            ..Default::default()
        };
        assert_eq!(first_string_field(&frame(&empty.encode_to_vec())), Some(""));
        let long = "x".repeat(300);
        let req = crate::proto::reapi::GetCapabilitiesRequest { instance_name: long.clone() };
        assert_eq!(first_string_field(&frame(&req.encode_to_vec())), Some(long.as_str()));
        // Compressed, cut short, or not UTF-8: no name.
        assert_eq!(first_string_field(&[1, 0, 0, 0, 2, 0x0a, 0]), None);
        assert_eq!(first_string_field(&frame(&[0x0a, 5, b'a'])), None);
        assert_eq!(first_string_field(&frame(&[0x0a, 1, 0xff])), None);
        assert_eq!(first_string_field(&[0, 0]), None);
    }

    #[test]
    fn reads_the_tool_from_request_metadata() {
        let md = RequestMetadata {
            tool_details: Some(crate::proto::reapi::ToolDetails {
                tool_name: "bazel".into(),
                tool_version: "7".into(),
            }),
            ..Default::default()
        };
        let bytes = md.encode_to_vec();
        for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::STANDARD_NO_PAD] {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_METADATA_HEADER, engine.encode(&bytes).parse().unwrap());
            assert_eq!(tool_name(&h).as_deref(), Some("bazel"));
        }
        let mut h = HeaderMap::new();
        assert_eq!(tool_name(&h), None);
        h.insert(REQUEST_METADATA_HEADER, "!!!".parse().unwrap());
        assert_eq!(tool_name(&h), None);
    }

    #[test]
    fn decodes_grpc_messages() {
        assert_eq!(percent_decode("no%20such%20blob"), "no such blob");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
