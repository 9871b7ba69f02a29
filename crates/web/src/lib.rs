//! The local HTTP API: `GET /v1/status` (JSON) and `GET /metrics` (Prometheus
//! text). Roles hand in closures that produce their part; this crate knows
//! nothing about them. It listens on localhost by default: there is no
//! authentication yet, so the config validation refuses other addresses.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub type StatusFn = Arc<dyn Fn() -> Option<serde_json::Value> + Send + Sync>;
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct Sources {
    status: StatusFn,
    metrics: MetricsFn,
}

pub async fn serve(
    listen: SocketAddr,
    status: StatusFn,
    metrics: MetricsFn,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(Sources { status, metrics });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {listen}: {e}"))?;
    tracing::info!(%listen, "API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn status_handler(State(sources): State<Sources>) -> Response {
    match (sources.status)() {
        Some(value) => axum::Json(value).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}

async fn metrics_handler(State(sources): State<Sources>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (sources.metrics)(),
    )
        .into_response()
}
