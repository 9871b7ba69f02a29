//! Protocol upgrades in http mode (WebSocket, mostly): the request goes to a server
//! over a connection of its own; when the server answers 101, both sides are
//! switched to the new protocol and bytes pass through until either side closes.
//! The server's slot is held as long as the upgraded connection lives.

use crate::connect::{connect_any, Failure};
use crate::frontend::Frontend;
use crate::http::{error_response, ResponseBody};
use crate::idle::{Activity, Watched};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Whether the client asks to switch protocols.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sends an upgrade request on a fresh server connection and, on 101, joins the two
/// upgraded connections. `forwarded` is the X-Forwarded-For value to set.
pub async fn forward(
    mut req: Request<Incoming>,
    frontend: &Arc<Frontend>,
    client: u64,
    listen_port: u16,
    forwarded: Option<(HeaderValue, &'static str)>,
) -> Response<ResponseBody> {
    let cfg = &frontend.config;
    let client_side = hyper::upgrade::on(&mut req);
    let (slot, stream) = match connect_any(frontend, client, None, listen_port, Vec::new()).await {
        Ok(pair) => pair,
        Err(Failure::Refused(_)) | Err(Failure::Unreachable(_)) => {
            frontend.pool.counters.no_server.fetch_add(1, Relaxed);
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "no server is available");
        }
    };
    let (mut parts, _body) = req.into_parts();
    // Keep Connection: upgrade and Upgrade; drop the rest of this hop's headers.
    for name in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        parts.headers.remove(name);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some((xff, proto)) = forwarded {
        parts.headers.insert("x-forwarded-for", xff);
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if parts.uri.scheme().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        match pq.parse() {
            Ok(uri) => parts.uri = uri,
            Err(_) => return error_response(StatusCode::BAD_REQUEST, "bad request target"),
        }
    }
    let server_req = Request::from_parts(parts, Empty::<Bytes>::new());
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return error_response(StatusCode::BAD_GATEWAY, &format!("server: {e}")),
    };
    let server_conn = tokio::spawn(conn.with_upgrades());
    let mut resp =
        match tokio::time::timeout(cfg.server_timeout, sender.send_request(server_req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                slot.server.traffic.server_errors.fetch_add(1, Relaxed);
                return error_response(StatusCode::BAD_GATEWAY, &format!("server: {e}"));
            }
            Err(_) => {
                slot.server.traffic.server_errors.fetch_add(1, Relaxed);
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the server did not answer in time",
                );
            }
        };
    slot.server.traffic.requests.fetch_add(1, Relaxed);
    slot.server.traffic.response(resp.status().as_u16());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The server declined: pass its answer on; the connection is not reused.
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        drop(server_conn);
        return Response::from_parts(parts, Either::Right(Full::new(body)));
    }
    let server_side = hyper::upgrade::on(&mut resp);
    let idle_limit = cfg.client_timeout.max(cfg.server_timeout);
    let frontend = frontend.clone();
    tokio::spawn(async move {
        let (client_io, server_io) = match tokio::join!(client_side, server_side) {
            (Ok(c), Ok(s)) => (c, s),
            _ => return,
        };
        let activity = Activity::default();
        let mut a = Watched::new(hyper_util::rt::TokioIo::new(client_io), activity.clone());
        let mut b = Watched::new(hyper_util::rt::TokioIo::new(server_io), activity.clone());
        let relay = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::select! {
            r = relay => if let Ok((up, down)) = r {
                slot.server.traffic.bytes_in.fetch_add(up, Relaxed);
                slot.server.traffic.bytes_out.fetch_add(down, Relaxed);
                frontend.pool.traffic.bytes_in.fetch_add(up, Relaxed);
                frontend.pool.traffic.bytes_out.fetch_add(down, Relaxed);
            },
            _ = activity.idle_for(idle_limit) => {}
        }
        drop(slot);
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}
