//! The local HTTP API: `GET /v1/status` (JSON), `GET /metrics` (Prometheus text)
//! and `POST /v1/ROLE/VERB` for operator commands. Roles hand in closures that
//! produce their part or carry out a command; this crate knows nothing about them.
//!
//! Two listeners serve it. TCP on loopback is read-only, for local programs only
//! (`access`: no browser origin, the API's own `Host`). Commands are accepted only
//! on the admin socket (`admin_socket`), which root and the `uphold` group reach.

pub mod access;
pub mod admin_socket;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::FutureExt;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// Serves the read-only API on `listen` and the same API with commands on the
/// Unix socket `admin_socket`, until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    admin_socket: &Path,
    status: StatusFn,
    metrics: MetricsFn,
    action: Option<ActionFn>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sources = Sources {
        status,
        metrics,
        action,
    };
    let routes = Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/{*command}", axum::routing::post(action_handler))
        .route("/metrics", get(metrics_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ACTION_BODY))
        .with_state(sources);
    let tcp_rules = TcpRules {
        listen,
        admin_socket: admin_socket.to_path_buf(),
    };
    let tcp_app = routes.clone().layer(axum::middleware::from_fn_with_state(
        Arc::new(tcp_rules),
        tcp_access,
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {listen}: {e}"))?;
    tracing::info!(%listen, "API listening (read-only)");
    let shutdown = shutdown.shared();
    let tcp = axum::serve(listener, tcp_app).with_graceful_shutdown(shutdown.clone());
    match admin_socket::AdminListener::bind(admin_socket) {
        Ok(admin) => {
            tracing::info!(socket = %admin_socket.display(), "admin socket listening");
            let app = routes.layer(axum::middleware::from_fn_with_state(
                admin.rule(),
                admin_socket::admit,
            ));
            let admin = axum::serve(
                admin,
                app.into_make_service_with_connect_info::<admin_socket::Peer>(),
            )
            .with_graceful_shutdown(shutdown);
            let (tcp, admin) = tokio::join!(tcp.into_future(), admin.into_future());
            tcp?;
            admin?;
        }
        Err(e) => {
            // Status and metrics still matter when commands cannot be taken.
            tracing::error!("{e:#}; operator commands are unavailable");
            tcp.await?;
        }
    }
    Ok(())
}

struct TcpRules {
    listen: SocketAddr,
    admin_socket: PathBuf,
}

async fn tcp_access(
    State(rules): State<Arc<TcpRules>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let verdict = {
        let headers = request.headers();
        let text = |name| {
            headers.get(name).map(|v: &axum::http::HeaderValue| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
        };
        let is_read = request.method() == axum::http::Method::GET
            || request.method() == axum::http::Method::HEAD;
        access::check_tcp_request(
            rules.listen,
            is_read,
            text(header::HOST).as_deref(),
            text(header::ORIGIN).as_deref(),
        )
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(refusal) => (
            StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN),
            format!("{}\n", refusal.message(&rules.admin_socket)),
        )
            .into_response(),
    }
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
