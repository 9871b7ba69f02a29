//! HTTP mode: HTTP/1.1 with keep-alive towards clients (hyper's server), each request
//! sent to a server picked for it over a pooled, reused server connection (see
//! `upstream`). Adds X-Forwarded-For/-Proto, sets and honours the persistence cookie,
//! answers 502/503/504 itself, and retries a request on another connection or server
//! when it failed before any of it was sent.

use crate::connect::{connect_any, Failure};
use crate::engine::retry;
use crate::engine::select::client_hash;
use crate::frontend::{Frontend, Slot};
use crate::idle::{Activity, Watched};
use crate::pool::{Refusal, ServerSlot};
use crate::upstream::{self, ReqBody, Returnable};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub type ResponseBody = Either<Relay, Full<Bytes>>;

/// A client connection (plain or TLS) served until it closes or idles out.
pub async fn serve<S>(io: S, peer: SocketAddr, local: SocketAddr, slot: Slot, tls: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (frontend, activity, io, service) = client_connection(io, peer, local, slot, tls);
    let cfg = &frontend.config;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_parse() || e.is_timeout() {
                    frontend.pool.counters.bad_requests.fetch_add(1, Relaxed);
                }
                tracing::debug!(frontend = %cfg.name, client = %peer, "client connection: {e}");
            }
        }
        _ = activity.idle_for(cfg.client_timeout.max(cfg.server_timeout)) => {
            tracing::debug!(frontend = %cfg.name, client = %peer, "client connection idle; closed");
        }
    }
}

/// A client connection that negotiated HTTP/2 (TLS with ALPN h2). Requests are
/// forwarded to servers over HTTP/1.1 as on any other connection.
pub async fn serve_h2<S>(io: S, peer: SocketAddr, local: SocketAddr, slot: Slot)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (frontend, activity, io, service) = client_connection(io, peer, local, slot, true);
    let cfg = &frontend.config;
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                frontend.pool.counters.bad_requests.fetch_add(1, Relaxed);
                tracing::debug!(frontend = %cfg.name, client = %peer, "client connection (h2): {e}");
            }
        }
        _ = activity.idle_for(cfg.client_timeout.max(cfg.server_timeout)) => {
            tracing::debug!(frontend = %cfg.name, client = %peer, "client connection (h2) idle; closed");
        }
    }
}

/// What either HTTP version serves a client connection with: the frontend as it
/// is now, the connection's activity (for the idle limit), its I/O watched for
/// that activity, and the service that proxies each request.
#[allow(clippy::type_complexity)]
fn client_connection<S>(
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    slot: Slot,
    tls: bool,
) -> (
    Arc<Frontend>,
    Activity,
    hyper_util::rt::TokioIo<Watched<S>>,
    impl hyper::service::Service<
            Request<Incoming>,
            Response = Response<ResponseBody>,
            Error = Infallible,
            Future = impl std::future::Future<Output = Result<Response<ResponseBody>, Infallible>>
                         + Send,
        > + Clone
        + Send,
)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let frontend = slot.current();
    let activity = Activity::default();
    let io = hyper_util::rt::TokioIo::new(Watched::new(io, activity.clone()));
    let conn_ctx = ConnCtx::new(slot, peer, local, tls);
    let service = hyper::service::service_fn(move |req| {
        let ctx = conn_ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });
    (frontend, activity, io, service)
}

struct ConnCtx {
    slot: Slot,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    /// The client's address as text and as a header value, made once per connection.
    client_ip: String,
    forwarded_ip: Option<HeaderValue>,
}

impl ConnCtx {
    fn new(slot: Slot, peer: SocketAddr, local: SocketAddr, tls: bool) -> Arc<ConnCtx> {
        let client_ip = peer.ip().to_canonical().to_string();
        Arc::new(ConnCtx {
            slot,
            peer,
            local,
            tls,
            forwarded_ip: HeaderValue::from_str(&client_ip).ok(),
            client_ip,
        })
    }
}

async fn handle(req: Request<Incoming>, ctx: &ConnCtx) -> Response<ResponseBody> {
    let frontend = ctx.slot.current();
    let started = Instant::now();
    let traffic = &frontend.pool.traffic;
    traffic.requests.fetch_add(1, Relaxed);
    let response = forward(req, ctx, &frontend, started).await;
    traffic.response(response.status().as_u16());
    traffic.latency.record(started.elapsed());
    response
}

async fn forward(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    frontend: &Arc<Frontend>,
    started: Instant,
) -> Response<ResponseBody> {
    let cfg = &frontend.config;
    if let Err(bad) = crate::engine::request::check_request(&req, cfg.max_body_bytes) {
        frontend.pool.counters.bad_requests.fetch_add(1, Relaxed);
        let status = StatusCode::from_u16(bad.status()).unwrap_or(StatusCode::BAD_REQUEST);
        return error_response(status, &bad.reason());
    }
    if crate::upgrade::is_upgrade(&req) {
        let forwarded = cfg.forwarded_for.then(|| {
            let xff = ctx
                .forwarded_ip
                .clone()
                .unwrap_or(HeaderValue::from_static("unknown"));
            (xff, if ctx.tls { "https" } else { "http" })
        });
        return crate::upgrade::forward(
            req,
            frontend,
            client_hash(ctx.peer.ip()),
            ctx.local.port(),
            forwarded,
        )
        .await;
    }
    let persisted = cfg
        .cookie
        .as_deref()
        .and_then(|name| cookie_value(req.headers(), name))
        .and_then(|v| frontend.pool.servers.iter().position(|s| s.name() == v));
    let mut req = match prepare(req, ctx, cfg.forwarded_for, cfg.max_body_bytes) {
        Ok(r) => r,
        Err(status) => {
            frontend.pool.counters.bad_requests.fetch_add(1, Relaxed);
            return error_response(status, "bad request");
        }
    };
    let hash = client_hash(ctx.peer.ip());
    let listen_port = ctx.local.port();
    let exclude: Vec<usize> = Vec::new();
    // Bounded: each round either uses up a pooled connection or a server attempt.
    for _ in 0..64 {
        let preferred = persisted.filter(|_| exclude.is_empty());
        let (slot, mut sender) =
            match checkout(frontend, hash, preferred, &exclude, listen_port).await {
                Ok(pair) => pair,
                Err(resp) => return resp,
            };
        let server = slot.server.clone();
        server.traffic.requests.fetch_add(1, Relaxed);
        let bodyless = matches!(req.body(), Either::Right(_));
        let replay =
            retry::replayable(req.method(), bodyless, sender.reused).then(|| replay_copy(&req));
        match sender.send(req).await {
            Ok(resp) => {
                server.traffic.latency.record(started.elapsed());
                server.traffic.response(resp.status().as_u16());
                let set_cookie = cfg
                    .cookie
                    .as_deref()
                    .filter(|_| persisted != Some(slot.index))
                    .map(|name| format!("{name}={}; Path=/; HttpOnly", server.name()));
                return relay_response(resp, slot, sender, frontend.clone(), set_cookie);
            }
            Err(upstream::SendError::NotSent(back)) => {
                // Nothing reached the server (`retry::SendFailure::NotSent`): the
                // request itself goes again, on a new connection.
                req = *back;
                frontend.pool.traffic.retries.fetch_add(1, Relaxed);
                continue;
            }
            Err(upstream::SendError::Failed(e)) if e.body_too_large => {
                // The client's fault, not the server's: counted as a bad request.
                frontend.pool.counters.bad_requests.fetch_add(1, Relaxed);
                let bad = crate::engine::request::Malformed::BodyTooLarge {
                    limit: cfg.max_body_bytes,
                };
                return error_response(StatusCode::PAYLOAD_TOO_LARGE, &bad.reason());
            }
            Err(upstream::SendError::Failed(e)) => {
                let failure = retry::SendFailure::NoAnswer {
                    timed_out: e.is_timeout(),
                };
                let status = match (retry::after_send_failure(failure, replay.is_some()), replay) {
                    (retry::AfterFailure::SendAgain, Some(copy)) => {
                        tracing::debug!(frontend = %cfg.name, server = %server.name(), "reused connection failed ({e}); sending again");
                        req = copy;
                        frontend.pool.traffic.retries.fetch_add(1, Relaxed);
                        continue;
                    }
                    (retry::AfterFailure::GatewayTimeout, _) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                server.traffic.server_errors.fetch_add(1, Relaxed);
                frontend.pool.traffic.server_errors.fetch_add(1, Relaxed);
                tracing::debug!(frontend = %cfg.name, server = %server.name(), "request failed: {e}");
                return error_response(status, "the server failed to answer");
            }
        }
    }
    error_response(StatusCode::BAD_GATEWAY, "no usable server connection")
}

/// A slot on a server and a connection to it, pooled or new.
async fn checkout(
    frontend: &Arc<Frontend>,
    hash: u64,
    preferred: Option<usize>,
    exclude: &[usize],
    listen_port: u16,
) -> Result<(ServerSlot, upstream::Sender), Response<ResponseBody>> {
    let cfg = &frontend.config;
    if !(cfg.ports.first..=cfg.ports.last).contains(&listen_port) {
        // A keep-alive connection on a port that a reload took away.
        return Err(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "this port is no longer served",
        ));
    }
    let slot = match frontend.pool.acquire(hash, preferred, exclude).await {
        Ok(l) => l,
        Err(r) => return Err(refused(frontend, r)),
    };
    let addr = slot.server.config.address_for(listen_port, cfg.ports.first);
    if let Some(sender) = upstream::take_idle(addr).await {
        return Ok((slot, sender));
    }
    // No idle connection to that server: connect; if that fails, others are tried.
    let connected = match crate::connect::open(frontend, &slot, listen_port).await {
        Ok(stream) => Ok((slot, stream)),
        Err(_) if !retry::tries_another_server(0, cfg.retries) => {
            Err(Failure::Unreachable("connect failed".into()))
        }
        Err(_) => {
            let mut excluded = exclude.to_vec();
            excluded.push(slot.index);
            drop(slot);
            frontend.pool.traffic.retries.fetch_add(1, Relaxed);
            connect_any(frontend, hash, None, listen_port, excluded).await
        }
    };
    let (slot, stream) = match connected {
        Ok(pair) => pair,
        Err(Failure::Refused(r)) => return Err(refused(frontend, r)),
        Err(Failure::Unreachable(e)) => {
            frontend.pool.counters.no_server.fetch_add(1, Relaxed);
            tracing::warn!(frontend = %cfg.name, "no server reachable: {e}");
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no server is available",
            ));
        }
    };
    let addr = slot.server.config.address_for(listen_port, cfg.ports.first);
    match upstream::handshake(stream, addr, cfg.server_timeout).await {
        Ok(sender) => Ok((slot, sender)),
        Err(e) => {
            slot.server.traffic.server_errors.fetch_add(1, Relaxed);
            Err(error_response(
                StatusCode::BAD_GATEWAY,
                &format!("server connection: {e}"),
            ))
        }
    }
}

fn refused(frontend: &Frontend, r: Refusal) -> Response<ResponseBody> {
    frontend.pool.counters.no_server.fetch_add(1, Relaxed);
    let why = match r {
        Refusal::NoServer => "no server is available",
        Refusal::QueueFull => "every server is busy and the queue is full",
        Refusal::QueueTimeout => "every server stayed busy for the queue timeout",
    };
    error_response(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes this hop's headers. One pass over the names first: most messages carry
/// none or only `Connection`, and removing by name costs a hash lookup each.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in Connection are hop-by-hop too ("keep-alive" and "close",
    // the usual values, name nothing else).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in named.iter().chain(present.iter()) {
        headers.remove(n);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request as the server gets it: the head from [`upstream_head`], the body
/// limited to `max_body_bytes`.
fn prepare(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    forwarded_for: bool,
    max_body_bytes: u64,
) -> Result<Request<ReqBody>, StatusCode> {
    let (mut parts, body) = req.into_parts();
    upstream_head(
        &mut parts,
        &ctx.client_ip,
        ctx.forwarded_ip.as_ref(),
        ctx.tls,
        forwarded_for,
    )?;
    // A request without a body is sent as one, so it can be replayed.
    let body = if body.is_end_stream() {
        Either::Right(Empty::new())
    } else {
        Either::Left(http_body_util::Limited::new(
            body,
            usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        ))
    };
    Ok(Request::from_parts(parts, body))
}

/// The head as the server gets it: origin-form target, HTTP/1.1, this hop's
/// headers removed, and with `forwarded_for` the client (`client_ip`, already a
/// header value in `forwarded_ip`) added to X-Forwarded-For and -Proto. Apart from
/// the body, so that the fuzz targets reach it with heads parsed from raw bytes.
pub fn upstream_head(
    parts: &mut http::request::Parts,
    client_ip: &str,
    forwarded_ip: Option<&HeaderValue>,
    tls: bool,
    forwarded_for: bool,
) -> Result<(), StatusCode> {
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // Absolute-form (a client talking to us as a proxy): the authority becomes
        // the Host and the server gets origin-form.
        if let Some(auth) = parts.uri.authority() {
            let host = HeaderValue::from_str(auth.as_str()).map_err(|_| StatusCode::BAD_REQUEST)?;
            parts.headers.insert(header::HOST, host);
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = pq.parse().map_err(|_| StatusCode::BAD_REQUEST)?;
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.version = http::Version::HTTP_11;
    if forwarded_for {
        let value = if parts.headers.contains_key(&X_FORWARDED_FOR) {
            // Every earlier line, in order, then this client (RFC 7239's list form).
            let mut joined = Vec::with_capacity(64);
            for prev in parts.headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(prev.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        } else {
            forwarded_ip.cloned()
        };
        if let Some(v) = value {
            parts.headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        let proto = if tls { "https" } else { "http" };
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    Ok(())
}

/// A copy of a bodyless request (`retry::replayable` decides which), to send
/// again when a reused server connection turns out to have been closed under it.
fn replay_copy(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn relay_response(
    resp: Response<Incoming>,
    slot: ServerSlot,
    sender: upstream::Sender,
    frontend: Arc<Frontend>,
    set_cookie: Option<String>,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client's connection follows its own protocol, not the server's (an
    // HTTP/1.0 server must not make the client's keep-alive connection close).
    parts.version = http::Version::HTTP_11;
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        parts.headers.append(header::SET_COOKIE, c);
    }
    let relay = Relay {
        body,
        returnable: Some(Returnable { sender, slot }),
        frontend,
        done: false,
    };
    // A body that is already complete (no content) gives the connection back now.
    let mut relay = relay;
    if relay.body.is_end_stream() {
        relay.finish();
    }
    Response::from_parts(parts, Either::Left(relay))
}

/// A server's response body on its way to the client. When it has been read to the
/// end the server connection goes back to the idle pool; if the client goes away
/// first, the connection is closed (its state is unknown).
pub struct Relay {
    body: Incoming,
    returnable: Option<Returnable>,
    frontend: Arc<Frontend>,
    done: bool,
}

impl Relay {
    fn finish(&mut self) {
        self.done = true;
        if let Some(r) = self.returnable.take() {
            upstream::give_back(r);
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.frontend.pool.traffic.bytes_out.fetch_add(n, Relaxed);
                    if let Some(ret) = &this.returnable {
                        ret.slot.server.traffic.bytes_out.fetch_add(n, Relaxed);
                    }
                }
                if this.body.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.frontend
                    .pool
                    .traffic
                    .server_errors
                    .fetch_add(1, Relaxed);
                this.returnable = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pub fn error_response(status: StatusCode, why: &str) -> Response<ResponseBody> {
    let body = format!("{} {}\n", status.as_u16(), why);
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
