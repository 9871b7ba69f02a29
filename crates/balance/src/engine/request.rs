//! Which client requests the HTTP proxy refuses before it picks a server:
//! requests whose target is ambiguous or that would turn the balancer into an
//! open tunnel. Two `Host` headers let a front and a back end disagree about
//! which site is asked for (request smuggling, cache poisoning); HTTP/1.1
//! requires a Host; `CONNECT` asks for a raw tunnel to any address.

use http::{Method, Version};

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
}
