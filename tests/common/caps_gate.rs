//! A gRPC forwarder in front of the real server that holds every
//! `GetCapabilities` call until the test opens its gate, and forwards all
//! other calls at once: a server whose capabilities answer comes as late as
//! the test decides, with no timing guess.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tower_service::Service;

const CAPABILITIES: &str = "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities";

/// The forwarder; stops when dropped.
pub struct CapsGate {
    /// `grpc://` address of the forwarder, for the client under test.
    pub url: String,
    /// Capabilities calls that have arrived (held or not).
    asked: watch::Receiver<usize>,
    /// Capabilities calls done with: answered in full, or given up by
    /// their client.
    settled: watch::Receiver<usize>,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CapsGate {
    /// Forwards to the server at `upstream` (`grpc://host:port`), with the gate closed.
    pub async fn start(upstream: &str) -> CapsGate {
        let channel = Channel::from_shared(upstream.replacen("grpc://", "http://", 1)).unwrap().connect_lazy();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("grpc://{}", listener.local_addr().unwrap());
        let (asked_tx, asked) = watch::channel(0);
        let (settled_tx, settled) = watch::channel(0);
        let (open, _) = watch::channel(false);
        let gate = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (channel, gate) = (channel.clone(), gate.clone());
                let (asked_tx, settled_tx) = (asked_tx.clone(), settled_tx.clone());
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (mut channel, mut gate) = (channel.clone(), gate.subscribe());
                    let (asked_tx, settled_tx) = (asked_tx.clone(), settled_tx.clone());
                    async move {
                        let caps = req.uri().path() == CAPABILITIES;
                        // Counts the call as settled when dropped: here if
                        // the client gives up, else in the response body.
                        let mut settle = Settle(None);
                        if caps {
                            asked_tx.send_modify(|n| *n += 1);
                            settle = Settle(Some(settled_tx));
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                        let resp = channel.call(req.map(tonic::body::Body::new)).await?;
                        Ok::<_, tonic::transport::Error>(resp.map(|inner| Signal { inner, _settle: settle }))
                    }
                });
                tokio::spawn(async move {
                    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let _ = http2.serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        CapsGate { url, asked, settled, open, task }
    }

    /// Waits until a capabilities call has arrived (and is held).
    pub async fn asked(&self) {
        let _ = self.asked.clone().wait_for(|n| *n > 0).await;
    }

    /// Lets held and later capabilities calls through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until every capabilities call that arrived is settled:
    /// answered in full, or given up by its client.
    pub async fn settled(&self) {
        let asked = *self.asked.borrow();
        let _ = self.settled.clone().wait_for(|n| *n >= asked).await;
    }
}

impl Drop for CapsGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Adds one to its counter when dropped.
struct Settle(Option<watch::Sender<usize>>);

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(settled) = &self.0 {
            settled.send_modify(|n| *n += 1);
        }
    }
}

/// A response body that settles its call once hyper is through with it
/// (hyper drops the body after its last frame).
struct Signal {
    inner: tonic::body::Body,
    _settle: Settle,
}

impl Body for Signal {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
