//! Which client requests the HTTP proxy refuses before it picks a server:
//! requests whose target is ambiguous or that would turn the balancer into an
//! open tunnel. Two `Host` headers let a front and a back end disagree about
//! which site is asked for (request smuggling, cache poisoning); HTTP/1.1
//! requires a Host; `CONNECT` asks for a raw tunnel to any address.

use http::{header, Method, Request, Version};

/// Why a request is refused, with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Connect,
    NoHost,
    SeveralHosts(usize),
    /// The body is announced (or turned out) larger than the frontend's
    /// `max_body_bytes`.
    BodyTooLarge {
        limit: u64,
    },
}

impl Malformed {
    pub fn status(self) -> u16 {
        match self {
            Malformed::Connect => 405,
            Malformed::NoHost | Malformed::SeveralHosts(_) => 400,
            Malformed::BodyTooLarge { .. } => 413,
        }
    }

    pub fn reason(self) -> String {
        match self {
            Malformed::Connect => "CONNECT is not allowed here".to_string(),
            Malformed::NoHost => "an HTTP/1.1 request needs a Host header".to_string(),
            Malformed::SeveralHosts(n) => format!("{n} Host headers; send exactly one"),
            Malformed::BodyTooLarge { limit } => {
                format!("the request body is larger than this site accepts ({limit} bytes)")
            }
        }
    }
}

/// A request with `hosts` Host header lines; `has_authority` when its target
/// names one (absolute form, or HTTP/2's `:authority`).
pub fn check(
    method: &Method,
    version: Version,
    hosts: usize,
    has_authority: bool,
) -> Result<(), Malformed> {
    if method == Method::CONNECT {
        return Err(Malformed::Connect);
    }
    if hosts > 1 {
        return Err(Malformed::SeveralHosts(hosts));
    }
    if hosts == 0 && !has_authority && version == Version::HTTP_11 {
        return Err(Malformed::NoHost);
    }
    Ok(())
}

/// A body that announces `content_length` bytes, with `limit` the most the
/// frontend passes on. A body of unknown length is cut at the limit as it streams.
pub fn check_body(content_length: Option<u64>, limit: u64) -> Result<(), Malformed> {
    match content_length {
        Some(len) if len > limit => Err(Malformed::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Both checks on a parsed request head: its Host lines, whether its target names
/// an authority, and the Content-Length it announces (one that does not parse is
/// hyper's to refuse, so it counts as unknown here).
pub fn check_request<B>(req: &Request<B>, max_body_bytes: u64) -> Result<(), Malformed> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let has_authority = req.uri().authority().is_some();
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    check(req.method(), req.version(), hosts, has_authority)
        .and_then(|()| check_body(content_length, max_body_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(check(&Method::GET, Version::HTTP_11, 1, false), Ok(()));
        assert_eq!(check(&Method::POST, Version::HTTP_11, 0, true), Ok(()));
        // HTTP/1.0 predates Host; HTTP/2 carries :authority.
        assert_eq!(check(&Method::GET, Version::HTTP_10, 0, false), Ok(()));
        assert_eq!(check(&Method::GET, Version::HTTP_2, 0, true), Ok(()));
    }

    #[test]
    fn ambiguous_targets_and_tunnels_are_refused() {
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, 2, false),
            Err(Malformed::SeveralHosts(2))
        );
        assert_eq!(
            check(&Method::GET, Version::HTTP_10, 3, false),
            Err(Malformed::SeveralHosts(3))
        );
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, 0, false),
            Err(Malformed::NoHost)
        );
        assert_eq!(
            check(&Method::CONNECT, Version::HTTP_11, 1, true),
            Err(Malformed::Connect)
        );
        assert_eq!(Malformed::Connect.status(), 405);
        assert_eq!(check_body(Some(10), 10), Ok(()));
        assert_eq!(check_body(None, 10), Ok(()));
        assert_eq!(
            check_body(Some(11), 10),
            Err(Malformed::BodyTooLarge { limit: 10 })
        );
        assert_eq!(Malformed::BodyTooLarge { limit: 10 }.status(), 413);
        assert_eq!(Malformed::NoHost.status(), 400);
    }

    #[test]
    fn a_whole_head_is_judged_by_its_host_lines_target_and_length() {
        let head = |target: &str, hosts: &[&str], length: Option<&str>| {
            let mut req = Request::get(target);
            for h in hosts {
                req = req.header(header::HOST, *h);
            }
            if let Some(len) = length {
                req = req.header(header::CONTENT_LENGTH, len);
            }
            req.body(()).unwrap()
        };
        assert_eq!(check_request(&head("/", &["a"], Some("10")), 10), Ok(()));
        assert_eq!(check_request(&head("http://a/", &[], None), 10), Ok(()));
        assert_eq!(
            check_request(&head("/", &[], None), 10),
            Err(Malformed::NoHost)
        );
        assert_eq!(
            check_request(&head("/", &["a", "b"], None), 10),
            Err(Malformed::SeveralHosts(2))
        );
        assert_eq!(
            check_request(&head("/", &["a"], Some("11")), 10),
            Err(Malformed::BodyTooLarge { limit: 10 })
        );
        // Not a number: hyper refuses such a head before the balancer sees it.
        assert_eq!(check_request(&head("/", &["a"], Some("x")), 10), Ok(()));
    }
}
