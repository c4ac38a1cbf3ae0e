//! The admin HTTP port (`--admin-listen`): `/metrics` (Prometheus text),
//! `/status` (JSON), `/healthz` and `/` (the status page). Plain HTTP/1.1
//! with axum; it starts and stops with the gRPC server in [`super::serve`].
//! It reads only in-memory figures, so it answers while the store is busy.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::metrics::Metrics;
use super::overview::Overview;
use super::status_page;
use crate::error::{Error, Result};

/// The Content-Type of `/metrics`: prometheus-client writes OpenMetrics text,
/// which Prometheus reads natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin routes over `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(prometheus))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving the admin port", e))
}

async fn prometheus(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], m.render())
}

async fn status(State(m): State<Arc<Metrics>>) -> Json<Overview> {
    Json(Overview::gather(&m))
}

async fn page(State(m): State<Arc<Metrics>>) -> Html<String> {
    Html(status_page::render(&Overview::gather(&m)))
}
