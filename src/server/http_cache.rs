//! Bazel's HTTP cache protocol (`--http-listen`), on the same store as gRPC:
//! `GET`/`HEAD`/`PUT` of `/ac/{hash}` (an ActionResult protobuf) and
//! `/cas/{hash}` (blob bytes), optionally under an instance prefix
//! (`/{instance}/ac/{hash}`, as bazel-remote does; Bazel sends whatever path
//! `--remote_cache=http://host:port/prefix` names). Hashes are SHA-256, the
//! only function the protocol knows.
//!
//! Each request is parsed into a [`Target`], checked once by
//! [`HttpCache::authorize`], and served by one store call; CAS bodies stream
//! through the same upload and download paths as ByteStream
//! ([`super::http_blobs`]). HTTP status codes are chosen in one place,
//! [`HttpError`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

use crate::digest::{validate_instance, Digest, DigestFunction};
use crate::error::Error;
use crate::proto::reapi;
use crate::server::action_cache::{lookup, validate_result};
use crate::server::budget::Budget;
use crate::server::status::to_status;
use crate::store::Store;

/// The only digest function of Bazel's HTTP protocol.
pub(super) const FUNCTION: DigestFunction = DigestFunction::Sha256;

/// What the HTTP front end shares between requests.
pub struct HttpCache {
    pub store: Store,
    /// Fills ActionCache misses from the tier behind the store, if any.
    pub tiers: crate::store::tiered::Tiered,
    /// The stream memory budget, shared with ByteStream.
    pub budget: Budget,
    /// A body that moves no bytes for this long is cancelled (None: never).
    pub idle: Option<Duration>,
    /// Largest ActionResult accepted on `PUT /ac/` (the gRPC message limit).
    pub max_action_result: usize,
    /// Largest blob accepted on `PUT /cas/` (`--max-blob-size`).
    pub max_blob_size: u64,
    /// The same access policy as the gRPC port (`--tokens`, `--anonymous`).
    pub auth: Arc<crate::auth::Auth>,
}

/// Serves the HTTP cache on `listener` until `shutdown` resolves, then lets
/// requests in flight finish.
pub async fn run(
    listener: TcpListener,
    cache: HttpCache,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::error::Result<()> {
    use axum::serve::ListenerExt;
    // Small AC lookups dominate: don't let Nagle delay them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = axum::Router::new().fallback(handle).with_state(Arc::new(cache));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving the HTTP cache", e))
}

/// The two keyspaces of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// `/ac/`: ActionResults, per instance.
    Ac,
    /// `/cas/`: blobs, shared by every instance (as over gRPC).
    Cas,
}

/// What a request names: an instance (possibly empty), a keyspace and a hash.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub instance: String,
    pub space: Space,
    pub hash: [u8; 32],
}

pub use crate::auth::Access;

/// Parses `/{instance/}ac|cas/{hash}`: the last two segments are the
/// keyspace and the hash, whatever precedes them is the instance name.
pub fn parse_path(path: &str) -> Result<Target, HttpError> {
    let bad = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{path:?} is not a cache path: use /ac/{{sha256}} or /cas/{{sha256}}, optionally under /{{instance}}/"
            ),
        )
    };
    let mut parts = path.strip_prefix('/').unwrap_or(path).rsplitn(3, '/');
    let hash = parts.next().ok_or_else(bad)?;
    let space = match parts.next() {
        Some("ac") => Space::Ac,
        Some("cas") => Space::Cas,
        _ => return Err(bad()),
    };
    let instance = parts.next().unwrap_or("").to_string();
    validate_instance(&instance).map_err(HttpError::from)?;
    let digest = Digest::parse(FUNCTION, hash, 0).map_err(HttpError::from)?;
    Ok(Target { instance, space, hash: digest.hash })
}

/// Every request enters here: parse, authorize, dispatch on method and keyspace.
async fn handle(State(cache): State<Arc<HttpCache>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let answer = async {
        let target = parse_path(&path)?;
        let access = match method {
            Method::GET | Method::HEAD => Access::Read,
            Method::PUT => Access::Write,
            _ => return Err(HttpError::method_not_allowed(&method)),
        };
        cache.authorize(req.headers(), &target.instance, access)?;
        match (access, target.space) {
            (Access::Read, Space::Ac) => cache.get_action(&target, method == Method::HEAD).await,
            (Access::Write, Space::Ac) => {
                let (parts, body) = req.into_parts();
                cache.put_action(&target, &parts.headers, body).await
            }
            (Access::Read, Space::Cas) => cache.get_blob(&target, method == Method::HEAD).await,
            (Access::Write, Space::Cas) => {
                let (parts, body) = req.into_parts();
                cache.put_blob(&target, &parts.headers, body).await
            }
        }
    };
    match answer.await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, status = %e.status, message = %e.message, "HTTP request refused");
            e.into_response()
        }
    }
}

impl HttpCache {
    /// Decides whether a request may `access` `instance`, once per request
    /// before any store call, by the same policy as the gRPC port. The token
    /// comes as `Authorization: Bearer TOKEN` (Bazel's `--remote_header`), or
    /// as the password of Basic auth (`http://name:TOKEN@host/…` in Bazel's
    /// `--remote_cache`, or `curl -u name:TOKEN`).
    fn authorize(&self, headers: &HeaderMap, instance: &str, access: Access) -> Result<(), HttpError> {
        let creds = crate::auth::Credentials { bearer: bearer_token(headers), client_cn: None };
        self.auth.check(&creds, instance, access).map_err(|d| match d {
            crate::auth::Denied::Unauthenticated(m) => HttpError::new(StatusCode::UNAUTHORIZED, m),
            crate::auth::Denied::PermissionDenied(m) => HttpError::new(StatusCode::FORBIDDEN, m),
        })
    }

    /// `GET`/`HEAD /ac/{hash}`: the ActionResult, only when every blob it
    /// names is still in the CAS (else 404, as over gRPC).
    async fn get_action(&self, t: &Target, head: bool) -> Result<Response, HttpError> {
        let action = Digest { function: FUNCTION, hash: t.hash, size: 0 };
        let req = reapi::GetActionResultRequest {
            instance_name: t.instance.clone(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        };
        let result = lookup(&self.tiers, req, action).await.map_err(HttpError::from_status)?;
        let bytes = result.encode_to_vec();
        let len = bytes.len();
        let body = if head { Body::empty() } else { Body::from(bytes) };
        Ok(binary(body, len as u64))
    }

    /// `PUT /ac/{hash}`: stores the body after checking it is an ActionResult
    /// whose digests are well formed.
    async fn put_action(&self, t: &Target, headers: &HeaderMap, body: Body) -> Result<Response, HttpError> {
        let limit = self.max_action_result;
        let too_large = || {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an ActionResult may be at most {limit} bytes (the gRPC message limit)"),
            )
        };
        // Refused before the body is touched: a client that sent `Expect:
        // 100-continue` (curl does for large bodies) gets the 413 instead of
        // a connection closed under its upload.
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
            if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                too_large()
            } else {
                HttpError::new(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))
            }
        })?;
        let result = reapi::ActionResult::decode(bytes.as_ref()).map_err(|e| {
            HttpError::new(StatusCode::BAD_REQUEST, format!("the body is not an ActionResult protobuf: {e}"))
        })?;
        validate_result(FUNCTION, &result).map_err(HttpError::from)?;
        let encoded = result.encode_to_vec();
        let action = Digest { function: FUNCTION, hash: t.hash, size: 0 };
        let (store, instance) = (self.store.clone(), t.instance.clone());
        super::blocking(move || store.put_action(&instance, &action, &encoded))
            .await
            .map_err(HttpError::from_status)?;
        Ok(StatusCode::OK.into_response())
    }
}

/// A 200 response of `len` bytes of binary data (the body may be empty for HEAD).
pub(super) fn binary(body: Body, len: u64) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    r
}

/// A refused request: the status and a message a person can act on (sent as
/// the plain-text body).
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

/// The token an HTTP request carries, if any: a Bearer token, or the
/// password of Basic auth. Any other scheme or garbage is an unknown token
/// (refused as such), never "no token".
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?;
    let (scheme, rest) = value.to_str().ok().and_then(|v| v.split_once(' ')).unwrap_or(("", ""));
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, password)| password.to_string()))
    } else {
        None
    };
    Some(token.unwrap_or_default())
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into() }
    }

    fn method_not_allowed(m: &Method) -> HttpError {
        HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{m} is not supported: use GET, HEAD or PUT"))
    }

    /// The HTTP status for a gRPC status from the shared stream code. A full
    /// disk (507) is told from a full budget (503, retry later) by the
    /// message `status::to_status` and the store give a full disk.
    pub fn from_status(s: tonic::Status) -> HttpError {
        let status = match s.code() {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
            Code::ResourceExhausted if s.message().contains("disk is full") => StatusCode::INSUFFICIENT_STORAGE,
            Code::ResourceExhausted | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError::new(status, s.message())
    }
}

impl From<Error> for HttpError {
    /// Internal errors are logged once, by `to_status`.
    fn from(e: Error) -> HttpError {
        HttpError::from_status(to_status(e))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status, format!("{}\n", self.message)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // Lets curl and Bazel's netrc support send Basic credentials.
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"cairn\""));
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD, PUT"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_paths() {
        let t = parse_path(&format!("/ac/{H}")).unwrap();
        assert_eq!((t.instance.as_str(), t.space), ("", Space::Ac));
        let t = parse_path(&format!("/team/ci/cas/{H}")).unwrap();
        assert_eq!((t.instance.as_str(), t.space), ("team/ci", Space::Cas));
        assert_eq!(hex::encode(t.hash), H);
    }

    #[test]
    fn refuses_bad_paths_with_the_right_status() {
        for (path, status) in [
            ("/", StatusCode::NOT_FOUND),
            ("/cas", StatusCode::NOT_FOUND),
            (&format!("/blobs/{H}"), StatusCode::NOT_FOUND),
            ("/cas/abc", StatusCode::BAD_REQUEST),
            (&format!("/cas/{}", H.to_uppercase()), StatusCode::BAD_REQUEST),
            (&format!("/a//b/ac/{H}"), StatusCode::BAD_REQUEST),
            (&format!("/../ac/{H}"), StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(parse_path(path).unwrap_err().status, status, "{path}");
        }
    }
}
