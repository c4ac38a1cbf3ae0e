//! The HTTP cache port over TLS: the accept loop of [`crate::tls`] (one task
//! per handshake, with its timeout and bound) as an axum [`Listener`], and
//! what the handshake proved about the peer as each request's
//! [`ConnectInfo`](axum::extract::ConnectInfo), so the HTTP front end
//! authorizes a client certificate exactly as the gRPC one does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::tls::{PeerInfo, Protocol, TcpSettings, TlsAcceptor, TlsConn};

/// Connections on the HTTP port whose TLS handshake succeeded, offering
/// `http/1.1` by ALPN with the same certificate (and reloads) as gRPC.
pub struct TlsListener {
    handshaken: mpsc::Receiver<io::Result<TlsConn>>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; the accept loop stops when this is dropped.
    pub fn new(listener: TcpListener, tls: Arc<TlsAcceptor>, tcp: TcpSettings) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let handshaken = crate::tls::incoming(listener, tls, Protocol::Http1, tcp);
        Ok(TlsListener { handshaken, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        loop {
            match self.handshaken.recv().await {
                Some(Ok(conn)) => {
                    let addr = conn.peer.remote_addr.unwrap_or(self.local);
                    return (conn, addr);
                }
                // The accept loop logs its own errors and only yields Ok.
                Some(Err(_)) => continue,
                // The accept loop ends only once this listener is gone.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> PeerInfo {
        stream.io().peer.clone()
    }
}
