//! Starts the real cairn server (the same `server::run` that `cairn serve`
//! uses) on an ephemeral loopback port with a temporary data dir.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub mod action;
pub mod admin;
pub mod caps_gate;
pub mod curl;
pub mod garage;
pub mod go_session;
pub mod process;
pub mod small_disk;
pub mod tier;

/// A running server; dropped or `stop`ped at the end of a test.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where Bazel's HTTP cache protocol is served, if asked for ([`TestServer::start_http`]).
    pub http_addr: Option<SocketAddr>,
    /// The admin HTTP port (/metrics, /status, /healthz, /), on 127.0.0.1:0.
    pub admin: SocketAddr,
    pub config: Config,
    /// Keeps the temp data dir alive as long as the server (None if the caller owns the dir).
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with default settings over a fresh temp data dir.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::for_data_dir(dir.path());
        Self::start_inner(config, Some(dir)).await
    }

    /// Starts a server with the given config (its data dir belongs to the caller).
    pub async fn start_with(config: Config) -> TestServer {
        Self::start_inner(config, None).await
    }

    /// Starts a server that also serves Bazel's HTTP cache protocol, with
    /// `config` (a fresh temp data dir when None).
    pub async fn start_http(config: Option<Config>) -> TestServer {
        let (config, dir) = match config {
            Some(c) => (c, None),
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                (Config::for_data_dir(dir.path()), Some(dir))
            }
        };
        Self::start_listeners(config, dir, true).await
    }

    async fn start_inner(config: Config, dir: Option<tempfile::TempDir>) -> TestServer {
        Self::start_listeners(config, dir, false).await
    }

    async fn start_listeners(config: Config, dir: Option<tempfile::TempDir>, with_http: bool) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let http = match with_http {
            true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http")),
            false => None,
        };
        let http_addr = http.as_ref().map(|l| l.local_addr().expect("http addr"));
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        let listeners = cairn::server::Listeners { grpc: listener, http, admin: Some(admin_listener) };
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            cairn::server::serve(listeners, cfg, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        TestServer { addr, http_addr, admin, config, _dir: dir, shutdown: Some(tx), task: Some(task) }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// `grpc://127.0.0.1:PORT`, as Bazel's --remote_cache wants it.
    pub fn grpc_url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` of the HTTP cache (panics if it was not started).
    pub fn http_cache_url(&self) -> String {
        format!("http://{}", self.http_addr.expect("server started without --http-listen"))
    }

    /// `http://127.0.0.1:PORT`, as tonic's endpoint wants it.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.http_url()).unwrap().connect().await.expect("connect")
    }

    /// Graceful shutdown; waits until the store is closed so it can be reopened.
    pub async fn stop(mut self) -> Config {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        self.config.clone()
    }
}

/// A fresh temp dir for tests that restart a server over the same data.
pub fn temp_data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data");
    (dir, path)
}
