//! The gRPC server: one file per service, wired together by [`serve`].
//! Handlers parse the request into typed values, make one store call, and
//! map the result; storage logic never lives here.

mod action_cache;
// --- observability ---
pub mod admin;
pub mod metrics;
pub mod observe;
pub mod overview;
pub mod status_page;
pub mod window;
// --- end of observability ---
pub mod budget;
mod bytestream;
mod capabilities;
mod cas;
mod download;
mod get_tree;
mod get_tree_token;
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

/// Runs the cache on `listener` until `shutdown` resolves, then drains
/// in-flight calls and closes the store. `cairn serve` and the tests both
/// call this, so tests exercise the production wiring. The admin port, when
/// `config.observability.admin_listen` names one, is bound first (a busy
/// port fails before the store opens) and runs alongside.
pub async fn serve(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let admin = match config.observability.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            Error::io(format!("cannot listen on {addr} for the admin port (--admin-listen; `off` disables it)"), e)
        })?),
        None => None,
    };
    serve_with_admin(listener, admin, config, shutdown).await
}

/// [`serve`] with the admin port's listener bound by the caller (None: no
/// admin port), so tests can bind 127.0.0.1:0 and know its address.
pub async fn serve_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    validate_limits(&config.streams)?;
    let store = {
        let dir = config.data_dir.clone();
        let limits = Limits { max_size: config.max_size, min_age: config.min_age, ..Limits::default() };
        tokio::task::spawn_blocking(move || Store::open_with(&dir, limits))
            .await
            .map_err(|e| Error::Internal(format!("opening the store: {e}")))??
    };
    store.uploads().set_limits(&config.upload_limits());
    let addr = listener.local_addr().map_err(|e| Error::io("reading the listen address", e))?;
    let stats = store.stats();
    tracing::info!(
        "cairn listening on {addr}, storing in {}, size limit {} (holding {} in {} blobs and {} action results)",
        config.data_dir.display(),
        human_size(config.max_size),
        human_size(stats.total_bytes().max(0) as u64),
        stats.cas_count,
        stats.ac_count,
    );

    // Batch requests carry up to max_batch_total_size of data plus framing.
    let max_message = (config.max_batch_total_size as usize + (1 << 20)).max(4 << 20);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ActionCacheServer<action_cache::ActionCacheService>>().await;
    health_reporter.set_serving::<ContentAddressableStorageServer<cas::CasService>>().await;
    health_reporter.set_serving::<ByteStreamServer<bytestream::ByteStreamService>>().await;
    health_reporter.set_serving::<CapabilitiesServer<capabilities::CapabilitiesService>>().await;

    let limits = &config.streams;
    // Small unary calls dominate: don't let Nagle delay them.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(limits.tcp_keepalive);
    let budget = budget::Budget::new(limits.max_buffered_bytes, limits.stream_idle_timeout);
    // --- observability ---
    let metrics = Arc::new(metrics::Metrics::new(store.clone(), config.max_size));
    // One stop signal for both ports: set by `shutdown`, or by the gRPC
    // server ending on its own (an error), so the admin port never outlives it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_served = async {
        let Some(admin) = admin else { return Ok(()) };
        let at = admin.local_addr().map_err(|e| Error::io("reading the admin listen address", e))?;
        // Tests and the bench read this line (after the gRPC one) for the port.
        tracing::info!("admin listening on {at} (/metrics, /status, /healthz, status page at http://{at}/)");
        admin::run(admin, metrics.clone(), stopped(stop_rx.clone())).await
    };
    let signal = async {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    // --- end of observability ---
    let grpc_served = tonic::transport::Server::builder()
        // Grow HTTP/2 flow-control windows with the measured bandwidth-delay
        // product, so large uploads aren't throttled by fixed 1 MiB windows
        // on fast or distant links.
        .http2_adaptive_window(Some(true))
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
        }))
        .add_service(
            ActionCacheServer::new(action_cache::ActionCacheService { store: store.clone() })
                .max_decoding_message_size(max_message),
        )
        .add_service(
            ContentAddressableStorageServer::new(cas::CasService {
                store: store.clone(),
                max_batch_total_size: config.max_batch_total_size,
            })
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            ByteStreamServer::new(bytestream::ByteStreamService {
                store: store.clone(),
                budget,
                idle: limits.stream_idle_timeout,
            })
            .max_decoding_message_size(BYTESTREAM_MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let grpc_served = async {
        let r = grpc_served.await.map_err(|e| Error::Internal(format!("gRPC server: {e}")));
        stop_tx.send_replace(true);
        r
    };
    let (served, admin_served) = tokio::select! {
        both = async { tokio::join!(grpc_served, admin_served) } => both,
        // Never wins: after signalling it waits forever, and the join ends.
        _ = async { signal.await; std::future::pending::<()>().await } => unreachable!(),
    };
    // Stop the eviction thread and close RocksDB before returning, so the
    // data dir can be reopened at once (tests restart servers this way).
    tokio::task::spawn_blocking(move || store.close()).await.ok();
    served?;
    admin_served?;
    tracing::info!("cairn stopped");
    Ok(())
}

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
