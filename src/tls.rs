//! TLS for the server's listeners (rustls): loading the PEM files, swapping
//! the configuration on reload (SIGHUP) without a restart, and an accept loop
//! whose handshakes run each in its own task with a timeout, so a client that
//! stalls mid-handshake holds up nobody else. No gRPC here: any front end
//! (gRPC, HTTP) can serve the [`TlsConn`]s it yields; one [`TlsAcceptor`]
//! serves every port, each offering its own [`Protocol`] by ALPN, so one
//! reload changes the certificate on all of them.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// A handshake not finished in this time is dropped: generous for a slow
/// link, short enough that stalled connections don't pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past this, accepting waits. Bounds the
/// memory a flood of half-open connections can take.
const MAX_HANDSHAKES: usize = 1024;

/// The files `--tls-cert`, `--tls-key` and `--tls-client-ca` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to: mTLS.
    pub client_ca: Option<PathBuf>,
}

/// The application protocol a port speaks, offered to clients by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: `h2` (grpc-java in Bazel and grpc-go insist on negotiating it).
    Grpc,
    /// Bazel's HTTP cache protocol: `http/1.1`, the only version its
    /// front end speaks. A client that offers no ALPN at all (Java without
    /// ALPN support) is still served.
    Http1,
}

impl Protocol {
    fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Grpc => b"h2",
            Protocol::Http1 => b"http/1.1",
        }
    }
}

/// The TLS configuration in force, rebuilt from the files on [`reload`](Self::reload).
pub struct TlsAcceptor {
    files: TlsFiles,
    current: RwLock<Configs>,
}

/// The configuration of each [`Protocol`]: the same certificate and client
/// CA, different ALPN. Swapped together, so no port keeps an old certificate.
struct Configs {
    grpc: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
}

impl Configs {
    fn build(files: &TlsFiles) -> Result<Configs, String> {
        let base = build(files)?;
        let with = |p: Protocol| {
            let mut config = base.clone();
            config.alpn_protocols = vec![p.alpn().to_vec()];
            Arc::new(config)
        };
        Ok(Configs { grpc: with(Protocol::Grpc), http1: with(Protocol::Http1) })
    }
}

impl TlsAcceptor {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<TlsAcceptor, String> {
        let configs = Configs::build(&files)?;
        Ok(TlsAcceptor { files, current: RwLock::new(configs) })
    }

    /// Re-reads the files. On error the old configuration stays in force
    /// (a half-written certificate must not take the server down).
    pub fn reload(&self) -> Result<(), String> {
        let configs = Configs::build(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = configs;
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn config(&self, protocol: Protocol) -> Arc<ServerConfig> {
        let configs = self.current.read().unwrap_or_else(|e| e.into_inner());
        match protocol {
            Protocol::Grpc => configs.grpc.clone(),
            Protocol::Http1 => configs.http1.clone(),
        }
    }
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: no usable PEM private key ({e})", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert {} with --tls-key {}: {e}", files.cert.display(), files.key.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// What is known of a TLS connection's peer.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// Subject CN of the client certificate, verified against the client CA.
    pub client_cn: Option<String>,
}

/// A server-side TLS connection with what the handshake proved.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    /// Filled in once the handshake is done.
    pub peer: PeerInfo,
}

/// TCP settings applied to each accepted connection before its handshake.
#[derive(Clone, Copy, Debug)]
pub struct TcpSettings {
    /// Disable Nagle (small unary calls dominate).
    pub nodelay: bool,
    /// SO_KEEPALIVE idle time (None: off).
    pub keepalive: Option<Duration>,
}

/// Accepts on `listener` and yields connections whose handshake succeeded,
/// offering `protocol` by ALPN. Failed and timed-out handshakes are logged
/// at debug and dropped. The loop ends when the receiver is dropped (the
/// server stopped).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsAcceptor>,
    protocol: Protocol,
    tcp: TcpSettings,
) -> mpsc::Receiver<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (stream, addr) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            apply(&stream, tcp);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config(protocol));
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(inner)) => {
                        let client_cn =
                            inner.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(subject_cn);
                        let peer = PeerInfo { remote_addr: Some(addr), client_cn };
                        let _ = tx.send(Ok(TlsConn { inner, peer })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    });
    rx
}

fn apply(stream: &TcpStream, tcp: TcpSettings) {
    if let Err(e) = stream.set_nodelay(tcp.nodelay) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    if let Some(idle) = tcp.keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(idle);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
            tracing::debug!("SO_KEEPALIVE: {e}");
        }
    }
}

/// The first subject CN of a DER certificate.
fn subject_cn(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
