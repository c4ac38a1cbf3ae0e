//! How the client reaches a server: the address (`grpc://` plain,
//! `grpcs://` TLS), the CA and client certificate for TLS and mTLS, and the
//! bearer token sent with every call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{ClientError, Result};

/// What the client channel is: a tonic channel that adds the token.
pub type Transport = InterceptedService<Channel, Bearer>;

/// Credentials and trust for reaching a server (`--tls-ca`, `--tls-cert`,
/// `--tls-key`, and a token). The default: no TLS settings (system roots
/// for `grpcs://`), no token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// PEM CA certificates the server's certificate must chain to
    /// (`grpcs://` only; default: the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Sent as `authorization: Bearer TOKEN` on every call.
    pub token: Option<String>,
}

/// Never prints the token (configs end up in debug logs).
impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Adds `authorization: Bearer TOKEN` to every call (when there is a token).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

impl Bearer {
    /// The header value, refused when it could not travel in a header.
    pub fn new(token: Option<&str>) -> Result<Bearer> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(Bearer(None)) };
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Tls("the token has characters a header cannot carry".into()))?;
        Ok(Bearer(Some(value)))
    }
}

/// How much a server may send on one call before the client reads it (HTTP/2
/// flow control). Fixed rather than adaptive: hyper's adaptive window starts
/// each connection at HTTP/2's 64 KiB and grows it from bytes per ping round
/// trip, which on a fast link with a short round trip stays near 1 MiB, so a
/// large read waited on window updates at ~1 GB/s on loopback.
const STREAM_WINDOW: u32 = 8 << 20;
/// The same for all calls of one connection together.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// The endpoint for `addr` with the client's transport settings and, for
/// `grpcs://`, TLS.
pub(super) fn endpoint(addr: &str, connect_timeout: Duration, security: &Security) -> Result<Endpoint> {
    let (uri, tls) = endpoint_uri(addr)?;
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|_| ClientError::BadAddress(addr.to_string()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(crate::wire::HTTP2_MAX_FRAME)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if tls {
        endpoint = endpoint.tls_config(tls_config(security)?).map_err(|e| ClientError::Tls(e.to_string()))?;
    } else if security.tls_ca.is_some() || security.tls_cert.is_some() {
        return Err(ClientError::Tls(format!("TLS files are given but {addr} is not a grpcs:// address")));
    }
    Ok(endpoint)
}

fn tls_config(security: &Security) -> Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new();
    config = match &security.tls_ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?)),
        None => config.with_native_roots(),
    };
    match (&security.tls_cert, &security.tls_key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
        }
        (None, None) => {}
        _ => return Err(ClientError::Tls("a client certificate needs both --tls-cert and --tls-key".into())),
    }
    Ok(config)
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ClientError::Tls(format!("{flag} {}: {e}", path.display())))
}

/// Turns `grpc://h:p` (Bazel's spelling) into `http://h:p` for tonic, and
/// `grpcs://h:p` into `https://h:p`; the flag says whether it is TLS.
pub(super) fn endpoint_uri(addr: &str) -> Result<(String, bool)> {
    let (rest, tls) = if let Some(r) = addr.strip_prefix("grpc://").or_else(|| addr.strip_prefix("http://")) {
        (r, false)
    } else if let Some(r) = addr.strip_prefix("grpcs://").or_else(|| addr.strip_prefix("https://")) {
        (r, true)
    } else {
        return Err(ClientError::BadAddress(addr.to_string()));
    };
    if rest.is_empty() {
        return Err(ClientError::BadAddress(addr.to_string()));
    }
    Ok((format!("{}://{rest}", if tls { "https" } else { "http" }), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(endpoint_uri("grpc://127.0.0.1:9092").unwrap(), ("http://127.0.0.1:9092".into(), false));
        assert_eq!(endpoint_uri("http://h:1").unwrap(), ("http://h:1".into(), false));
        assert_eq!(endpoint_uri("grpcs://h:1").unwrap(), ("https://h:1".into(), true));
        assert!(endpoint_uri("127.0.0.1:9092").is_err());
        assert!(endpoint_uri("grpc://").is_err());
        assert!(endpoint_uri("grpcs://").is_err());
    }

    #[test]
    fn tls_settings_need_grpcs_and_both_halves() {
        let ca = Security { tls_ca: Some("/nonexistent".into()), ..Security::default() };
        assert!(matches!(endpoint("grpc://h:1", Duration::from_secs(1), &ca), Err(ClientError::Tls(_))));
        let half = Security { tls_cert: Some("/etc/hostname".into()), ..Security::default() };
        assert!(matches!(tls_config(&half), Err(ClientError::Tls(_))));
        assert!(matches!(Bearer::new(Some("bad\ntoken")), Err(ClientError::Tls(_))));
        assert!(Bearer::new(Some("  ")).unwrap().0.is_none());
        let secret = Security { token: Some("cairn_secret".into()), ..Security::default() };
        assert!(!format!("{secret:?}").contains("cairn_secret"));
    }
}
