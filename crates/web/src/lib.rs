//! The local HTTP API: `GET /v1/status` (JSON), `GET /metrics` (Prometheus text)
//! and `POST /v1/ROLE/VERB` for operator commands. Roles hand in closures that
//! produce their part or carry out a command; this crate knows nothing about them. It listens on localhost by default: there is no
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
/// An operator command: the path after `/v1/` and the request body (UTF-8, at most
/// 64 KiB); the answer is a line for the operator, or an HTTP status and why.
pub type ActionFn = Arc<dyn Fn(&str, &str) -> Result<String, (u16, String)> + Send + Sync>;

/// Largest command body accepted.
const MAX_ACTION_BODY: usize = 64 * 1024;

#[derive(Clone)]
struct Sources {
    status: StatusFn,
    metrics: MetricsFn,
    action: Option<ActionFn>,
}

pub async fn serve(
    listen: SocketAddr,
    status: StatusFn,
    metrics: MetricsFn,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_actions(listen, status, metrics, None, shutdown).await
}

pub async fn serve_with_actions(
    listen: SocketAddr,
    status: StatusFn,
    metrics: MetricsFn,
    action: Option<ActionFn>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/{*command}", axum::routing::post(action_handler))
        .route("/metrics", get(metrics_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ACTION_BODY))
        .with_state(Sources {
            status,
            metrics,
            action,
        });
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

async fn action_handler(
    State(sources): State<Sources>,
    axum::extract::Path(command): axum::extract::Path<String>,
    body: String,
) -> Response {
    let Some(action) = sources.action else {
        return (StatusCode::NOT_FOUND, "no commands here\n").into_response();
    };
    // Commands may take locks held by the proxy threads for a moment; keep them off
    // the API's own threads.
    let result = tokio::task::spawn_blocking(move || action(&command, &body)).await;
    match result {
        Ok(Ok(text)) => (StatusCode::OK, format!("{text}\n")).into_response(),
        Ok(Err((code, why))) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            format!("{why}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
