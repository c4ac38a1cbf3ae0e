//! The gRPC server: one file per service, wired together by [`serve`].
//! Handlers parse the request into typed values, make one store call, and
//! map the result; storage logic never lives here.

mod action_cache;
pub mod auth;
// --- observability ---
pub mod admin;
pub mod metrics;
// --- bucket ---
pub mod object_store_metrics;
// --- end of bucket ---
pub mod observe;
pub mod overview;
pub mod status_page;
pub mod window;
// --- end of observability ---
// --- tiers ---
mod tier_metrics;
// --- end of tiers ---
pub mod budget;
mod bytestream;
mod capabilities;
mod cas;
mod download;
mod get_tree;
mod get_tree_token;
mod http_blobs;
pub mod http_cache;
mod http_tls;
pub mod status;
mod upload;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use crate::config::{human_size, Config};
use crate::error::{Error, Result};
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::store::{Limits, Store};

/// The sockets the server answers on: gRPC, and optionally Bazel's HTTP
/// cache protocol (`--http-listen`). Bound by the caller, so tests can bind
/// `127.0.0.1:0` and learn the ports.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    /// The admin port (`--admin-listen`); when None, `serve` binds the
    /// config's address itself, if it names one.
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Listeners {
        Listeners { grpc, http: None, admin: None }
    }
}

/// Runs the cache on `listeners` until `shutdown` resolves, then drains
/// in-flight calls and closes the store. `cairn serve` and the tests both
/// call this, so tests exercise the production wiring. The admin port, when
/// `config.observability.admin_listen` names one and the caller bound none,
/// is bound first (a busy port fails before the store opens).
pub async fn serve(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let Listeners { grpc: listener, http, admin } = listeners.into();
    // --- observability ---
    let admin = match (admin, config.observability.admin_listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(TcpListener::bind(addr).await.map_err(|e| {
            Error::io(format!("cannot listen on {addr} for the admin port (--admin-listen; `off` disables it)"), e)
        })?),
        (None, None) => None,
    };
    // --- end of observability ---
    validate_limits(&config.streams)?;
    // --- security ---
    let (guard, tls) = security(&config.security)?;
    // --- end of security ---
    let store = {
        let dir = config.data_dir.clone();
        let limits = Limits { max_size: config.max_size, min_age: config.min_age, ..Limits::default() };
        tokio::task::spawn_blocking(move || Store::open_with(&dir, limits))
            .await
            .map_err(|e| Error::Internal(format!("opening the store: {e}")))??
    };
    store.uploads().set_limits(&config.upload_limits());
    // --- tiers ---
    let (tiers, drain) = crate::store::tiered::start(&store, &config.tiers)?;
    // --- end of tiers ---
    // --- security ---
    // Registered before the listening line, so a SIGHUP sent after it never
    // meets the default action (exit).
    let reloader = reload_on_sighup(guard.0.clone(), tls.clone());
    // --- end of security ---
    let addr = listener.local_addr().map_err(|e| Error::io("reading the listen address", e))?;
    let stats = store.stats();
    tracing::info!(
        "cairn listening on {addr}, storing in {}, size limit {} (holding {} in {} blobs and {} action results); {}; {}",
        config.data_dir.display(),
        human_size(config.max_size),
        human_size(stats.total_bytes().max(0) as u64),
        stats.cas_count,
        stats.ac_count,
        match &tls {
            None => "plain gRPC (no TLS)",
            Some(t) if t.mutual() => "TLS with client certificates (mTLS)",
            Some(_) => "TLS",
        },
        guard.0.describe(),
    );

    let max_message = max_message(&config);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ActionCacheServer<action_cache::ActionCacheService>>().await;
    health_reporter.set_serving::<ContentAddressableStorageServer<cas::CasService>>().await;
    health_reporter.set_serving::<ByteStreamServer<bytestream::ByteStreamService>>().await;
    health_reporter.set_serving::<CapabilitiesServer<capabilities::CapabilitiesService>>().await;

    let limits = &config.streams;
    let budget = budget::Budget::new(limits.max_buffered_bytes, limits.stream_idle_timeout);
    // Both front ends stop on the same signal: dropping `stop` (when the
    // gRPC server is told to shut down, or fails) stops the HTTP one. New
    // connections stop at the signal and in-flight calls drain, for at most
    // the drain timeout: a stalled client can't hold the shutdown.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let shutdown = async move {
        shutdown.await;
        drop(stop);
    };
    let http_served =
        serve_http(http, tls.clone(), tiers.clone(), &config, budget.clone(), guard.0.clone(), stopped.clone());
    // --- observability ---
    let metrics = Arc::new(
        metrics::Metrics::new(store.clone(), config.max_size)
            .with_tiers(tiers.clone())
            // --- bucket ---
            .with_object_store(tiers.clone()), // --- end of bucket ---
    );
    let stopped_for_drain = stopped.clone();
    let admin_stopped = stopped;
    let admin_served = async {
        let Some(admin) = admin else { return Ok(()) };
        let at = admin.local_addr().map_err(|e| Error::io("reading the admin listen address", e))?;
        // Tests and the bench read this line (after the gRPC one) for the port.
        tracing::info!("admin listening on {at} (/metrics, /status, /healthz, status page at http://{at}/)");
        admin::run(admin, metrics.clone(), watch_closed(admin_stopped)).await
    };
    // --- end of observability ---
    let router = tonic::transport::Server::builder()
        // Grow HTTP/2 flow-control windows with the measured bandwidth-delay
        // product, so large uploads aren't throttled by fixed 1 MiB windows
        // on fast or distant links.
        .http2_adaptive_window(Some(true))
        .max_frame_size(Some(crate::wire::HTTP2_MAX_FRAME))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(limits.http2_keepalive_interval)
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        // --- observability ---
        .layer(observe::ObserveLayer::new(metrics.clone(), config.observability.log_slow))
        // --- end of observability ---
        .add_service(health_service)
        .add_service(CapabilitiesServer::new(capabilities::CapabilitiesService {
            max_batch_total_size: config.max_batch_total_size,
            max_blob_size: config.upload_limits().max_blob_size,
            guard: guard.clone(),
        }))
        .add_service(
            ActionCacheServer::new(action_cache::ActionCacheService { tiers: tiers.clone(), guard: guard.clone() })
                .max_decoding_message_size(max_message),
        )
        .add_service(
            ContentAddressableStorageServer::new(cas::CasService {
                tiers: tiers.clone(),
                max_batch_total_size: config.max_batch_total_size,
                guard: guard.clone(),
            })
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            ByteStreamServer::new(bytestream::ByteStreamService {
                store: store.clone(),
                tiers: tiers.clone(),
                budget,
                idle: limits.stream_idle_timeout,
                guard: guard.clone(),
            })
            .max_decoding_message_size(BYTESTREAM_MAX_MESSAGE),
        );
    // --- security ---
    let tcp = tcp_settings(&config);
    let grpc_served = async move {
        match tls {
            Some(tls) => {
                let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::tls::incoming(
                    listener,
                    tls,
                    crate::tls::Protocol::Grpc,
                    tcp,
                ));
                router.serve_with_incoming_shutdown(incoming, shutdown).await
            }
            None => {
                // Small unary calls dominate: don't let Nagle delay them.
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(tcp.keepalive);
                router.serve_with_incoming_shutdown(incoming, shutdown).await
            }
        }
    };
    // --- end of security ---
    let both = async {
        let (grpc_served, http_served, admin_served) = tokio::join!(grpc_served, http_served, admin_served);
        grpc_served.map_err(|e| Error::Internal(format!("gRPC server: {e}"))).and(http_served).and(admin_served)
    };
    let served = tokio::select! {
        r = both => r,
        () = drain_deadline(stopped_for_drain, config.drain_timeout) => {
            tracing::warn!(
                "calls still running {:?} after the shutdown signal; closing without them \
                 (none of them was acknowledged)",
                config.drain_timeout
            );
            Ok(())
        }
    };
    reloader.abort();
    // --- tiers ---
    if let Some(drain) = drain {
        drain.stop().await;
    }
    // What the tier holds in memory (a bucket's last use log) goes out
    // before the exit, within the tier timeout.
    tiers.finish().await;
    // --- end of tiers ---
    // Stop the eviction thread and close RocksDB before returning, so the
    // data dir can be reopened at once (tests restart servers this way).
    tokio::task::spawn_blocking(move || store.close()).await.ok();
    served?;
    tracing::info!("cairn stopped");
    Ok(())
}

/// Resolves `timeout` after the shutdown signal (or the gRPC server ending
/// on its own, when everything is stopping anyway).
async fn drain_deadline(stopped: tokio::sync::watch::Receiver<()>, timeout: std::time::Duration) {
    watch_closed(stopped).await;
    tokio::time::sleep(timeout).await;
}

/// Serves Bazel's HTTP cache protocol on `listener`, if there is one, until
/// `stopped` changes or closes; over TLS when the gRPC port has it (the
/// same acceptor, so a SIGHUP reload reaches both ports).
async fn serve_http(
    listener: Option<TcpListener>,
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
    tiers: crate::store::tiered::Tiered,
    config: &Config,
    budget: budget::Budget,
    auth: Arc<crate::auth::Auth>,
    stopped: tokio::sync::watch::Receiver<()>,
) -> Result<()> {
    let Some(listener) = listener else { return Ok(()) };
    let addr = listener.local_addr().map_err(|e| Error::io("reading the HTTP listen address", e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("http listening on {addr} (Bazel's HTTP cache protocol: --remote_cache={scheme}://{addr})");
    let cache = http_cache::HttpCache {
        store: tiers.store().clone(),
        tiers,
        budget,
        idle: config.streams.stream_idle_timeout,
        max_action_result: max_message(config),
        max_blob_size: config.upload_limits().max_blob_size,
        auth,
    };
    let tls = tls.map(|t| (t, tcp_settings(config)));
    http_cache::run(listener, tls, cache, watch_closed(stopped)).await
}

/// TCP settings of the TLS listeners (plain gRPC sets the same on tonic's).
fn tcp_settings(config: &Config) -> crate::tls::TcpSettings {
    // Small unary calls dominate: don't let Nagle delay them.
    crate::tls::TcpSettings { nodelay: true, keepalive: config.streams.tcp_keepalive }
}

/// Resolves when the watch's sender is dropped: the shutdown signal, or the
/// gRPC server ending on its own, so no port outlives it.
async fn watch_closed(mut stopped: tokio::sync::watch::Receiver<()>) {
    while stopped.changed().await.is_ok() {}
}

/// Largest gRPC message of a unary call: batch requests carry up to
/// `max_batch_total_size` of data plus framing.
fn max_message(config: &Config) -> usize {
    (config.max_batch_total_size as usize + (1 << 20)).max(4 << 20)
}
// --- security ---

/// The access policy and TLS configuration `config` asks for; a bad tokens
/// file or certificate stops the start with an error naming the file.
fn security(config: &crate::config::Security) -> Result<(auth::Guard, Option<Arc<crate::tls::TlsAcceptor>>)> {
    let policy = match &config.tokens {
        Some(path) => crate::auth::Auth::from_file(path, config.anonymous).map_err(Error::InvalidArgument)?,
        None => crate::auth::Auth::open(),
    };
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(crate::tls::TlsAcceptor::load(files.clone()).map_err(Error::InvalidArgument)?)),
        None => None,
    };
    Ok((auth::Guard(Arc::new(policy)), tls))
}

/// On each SIGHUP, re-reads the tokens file and the TLS files; a file that
/// fails to load keeps what was in force and logs why. New connections get
/// the new certificate; calls already running finish under the old policy.
/// The handler is installed before this returns; abort the task to stop.
fn reload_on_sighup(
    auth: Arc<crate::auth::Auth>,
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP; certificates and tokens reload only on restart");
                return;
            };
            while hup.recv().await.is_some() {
                match auth.reload() {
                    Ok(()) => tracing::info!("SIGHUP: {}", auth.describe()),
                    Err(e) => tracing::error!("SIGHUP: keeping the previous tokens: {e}"),
                }
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
                        Err(e) => tracing::error!("SIGHUP: keeping the previous TLS certificate: {e}"),
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (auth, tls);
    })
}

// --- end of security ---

/// Largest ByteStream message accepted: 4 MiB of data (gRPC's default message
/// limit, which clients size their chunks by) plus room for the resource name.
/// Not the batch limit: a stream's messages are held in memory while they wait
/// for the disk, so each one should be modest.
const BYTESTREAM_MAX_MESSAGE: usize = (4 << 20) + (64 << 10);

/// Smallest `--max-buffered-bytes` accepted: one full batch of a write.
const MIN_BUFFERED_BYTES: u64 = 1 << 20;

/// Refuses limits that would make the server unusable, naming the flag.
fn validate_limits(l: &crate::config::StreamLimits) -> Result<()> {
    if l.max_concurrent_streams == 0 {
        return Err(Error::InvalidArgument("--max-concurrent-streams must be at least 1".into()));
    }
    if l.max_buffered_bytes < MIN_BUFFERED_BYTES {
        return Err(Error::InvalidArgument(format!(
            "--max-buffered-bytes {} is below the minimum of {}",
            human_size(l.max_buffered_bytes),
            human_size(MIN_BUFFERED_BYTES)
        )));
    }
    Ok(())
}

/// Runs blocking store work (blob file I/O, hashing, fsync, Tree decoding,
/// anything under the store's commit lock) off the async workers and maps its
/// error to a status. Point lookups in RocksDB (FindMissingBlobs, existence
/// checks) are answered from its caches in microseconds and run inline: a
/// thread hand-off would cost more than the lookup.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(status::to_status),
        Err(e) => Err(Status::internal(format!("worker task failed: {e}"))),
    }
}
