//! The balancer's HTTP mode: what it does with a client's request head before
//! any server is asked.

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use uphold_balance::engine::request::check_request;
use uphold_balance::request_head::{cookie_value, is_upgrade, upstream_head};

use crate::named;

/// hyper's default for a request head, the most the balancer's server parses.
const MAX_HEADERS: usize = 100;

/// The client address the forwarding headers name.
const CLIENT_IP: &str = "192.0.2.7";

/// Bytes parsed as an HTTP/1.1 request head the way the balancer's server (hyper,
/// with httparse) does, then the balancer's own steps: the refusals, the upgrade
/// test, the persistence cookie, and the head the server is sent, which must be
/// in origin form, HTTP/1.1, without this hop's headers and, when forwarding is
/// on, naming the client last in X-Forwarded-For.
pub fn http_request_head(data: &[u8]) {
    let Some(req) = parse_head(data) else {
        return;
    };
    for limit in [0, 1024, u64::MAX] {
        let _ = check_request(&req, limit);
    }
    let _ = is_upgrade(&req);
    let _ = cookie_value(req.headers(), "SRV");
    let client = HeaderValue::from_static(CLIENT_IP);
    for (tls, forwarded_for) in [(false, false), (true, true)] {
        let (mut head, ()) = req.clone().into_parts();
        if upstream_head(&mut head, CLIENT_IP, Some(&client), tls, forwarded_for).is_err() {
            continue;
        }
        assert_eq!(head.version, Version::HTTP_11);
        assert!(
            head.uri.scheme().is_none() && head.uri.authority().is_none(),
            "the server was sent an absolute target: {}",
            head.uri
        );
        for hop in [
            header::CONNECTION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ] {
            assert!(
                !head.headers.contains_key(&hop),
                "{hop} was passed to the server"
            );
        }
        if forwarded_for {
            let chain: Vec<_> = head.headers.get_all("x-forwarded-for").iter().collect();
            assert!(
                chain.len() == 1 && chain[0].as_bytes().ends_with(CLIENT_IP.as_bytes()),
                "X-Forwarded-For does not end with the client: {chain:?}"
            );
            let proto = head.headers.get("x-forwarded-proto");
            assert_eq!(proto.map(HeaderValue::as_bytes), Some(&b"https"[..]));
        }
    }
}

/// A complete head, or `None` where hyper would answer 400 or wait for more.
fn parse_head(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !parsed.parse(data).ok()?.is_complete() {
        return None;
    }
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut req = Request::builder()
        .method(Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(parsed.path?).ok()?)
        .version(version);
    for h in parsed.headers.iter() {
        req = req.header(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    req.body(()).ok()
}

pub(crate) fn http_request_head_seeds() -> Vec<(String, Vec<u8>)> {
    let head = |text: &str| text.replace('\n', "\r\n").into_bytes();
    named(vec![
        ("get", head("GET /index.html HTTP/1.1\nHost: shop\n\n")),
        (
            "absolute-form-behind-a-proxy",
            head(
                "GET http://shop:8080/a?b=c HTTP/1.1\nHost: other\nX-Forwarded-For: 198.51.100.1\n\
                 Connection: keep-alive, x-trace\nx-trace: 1\nKeep-Alive: timeout=5\n\n",
            ),
        ),
        (
            "websocket",
            head(
                "GET /chat HTTP/1.1\nHost: shop\nConnection: Upgrade\nUpgrade: websocket\n\
                 Sec-WebSocket-Version: 13\n\n",
            ),
        ),
        (
            "post-with-cookie",
            head(
                "POST /cart HTTP/1.1\nHost: shop\nContent-Length: 2048\nCookie: a=1; SRV=web2\n\
                 Transfer-Encoding: chunked\nTE: trailers\n\n",
            ),
        ),
        ("http10-without-host", head("GET / HTTP/1.0\n\n")),
        ("two-hosts", head("GET / HTTP/1.1\nHost: a\nHost: b\n\n")),
        (
            "connect",
            head("CONNECT db:3306 HTTP/1.1\nHost: db:3306\n\n"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_complete_heads() {
        for (name, head) in http_request_head_seeds() {
            assert!(parse_head(&head).is_some(), "{name}");
        }
    }
}
