//! The gRPC server: one file per service, wired together by [`serve`].
//! Handlers parse the request into typed values, make one store call, and
//! map the result; storage logic never lives here.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;
mod get_tree;
pub mod status;

use std::future::Future;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
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
/// call this, so tests exercise the production wiring.
pub async fn serve(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
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

    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            // Small unary calls dominate; don't let Nagle delay them.
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let served = tonic::transport::Server::builder()
        // Grow HTTP/2 flow-control windows with the measured bandwidth-delay
        // product, so large uploads aren't throttled by fixed 1 MiB windows
        // on fast or distant links.
        .http2_adaptive_window(Some(true))
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
            ByteStreamServer::new(bytestream::ByteStreamService { store: store.clone() })
                .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")));
    // Stop the eviction thread and close RocksDB before returning, so the
    // data dir can be reopened at once (tests restart servers this way).
    tokio::task::spawn_blocking(move || store.close()).await.ok();
    served?;
    tracing::info!("cairn stopped");
    Ok(())
}

/// Runs blocking store work (blob file I/O, hashing of whole batches, fsync)
/// off the async workers and maps its error to a status. Point lookups in
/// RocksDB (ActionCache, FindMissingBlobs, existence checks) are answered from
/// its caches in microseconds and run inline: a thread hand-off would cost
/// more than the lookup.
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
