//! Who may ask what of the local API over TCP: reading only, and only as a
//! program on this host addressing it by its loopback name. A web page in a
//! browser on the host can reach loopback too, so requests that carry an
//! `Origin` (sent by browsers on cross-origin requests) are refused, and so are
//! requests whose `Host` is not the API's own address (DNS rebinding: a page
//! on an attacker's name that resolves to 127.0.0.1). Changes go through the
//! admin socket, whose file permissions and peer credentials say who asks.

use std::net::SocketAddr;

/// Why a TCP request is refused, with the words the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpRefusal {
    /// `Host` is not this API's own address.
    WrongHost(String),
    /// The request came from a web page of another origin.
    CrossOrigin(String),
    /// A command: those are accepted only on the admin socket.
    CommandOverTcp,
}

impl TcpRefusal {
    pub fn status(&self) -> u16 {
        match self {
            TcpRefusal::WrongHost(_) => 421,
            TcpRefusal::CrossOrigin(_) | TcpRefusal::CommandOverTcp => 403,
        }
    }

    pub fn message(&self, admin_socket: &std::path::Path) -> String {
        match self {
            TcpRefusal::WrongHost(host) => format!(
                "Host {host:?} is not this API's address; address it as 127.0.0.1, [::1] or localhost with its port"
            ),
            TcpRefusal::CrossOrigin(origin) => {
                format!("requests from web pages (Origin {origin:?}) are refused")
            }
            TcpRefusal::CommandOverTcp => format!(
                "commands are accepted only on the admin socket {} (root and the uphold group); use the uphold CLI",
                admin_socket.display()
            ),
        }
    }
}

/// The decision for one TCP request to the API listening on `listen`.
pub fn check_tcp_request(
    listen: SocketAddr,
    is_read: bool,
    host: Option<&str>,
    origin: Option<&str>,
) -> Result<(), TcpRefusal> {
    if let Some(origin) = origin {
        return Err(TcpRefusal::CrossOrigin(origin.to_string()));
    }
    // Browsers always send Host; a request without one (HTTP/1.0 from a
    // script) is a local program's.
    if let Some(host) = host.filter(|h| !is_own_host(listen, h)) {
        return Err(TcpRefusal::WrongHost(host.to_string()));
    }
    if !is_read {
        return Err(TcpRefusal::CommandOverTcp);
    }
    Ok(())
}

/// `host` names the API itself: its address, a loopback address or `localhost`,
/// with its port or none.
fn is_own_host(listen: SocketAddr, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal without a port has colons only inside its brackets.
        Some((name, port)) if !port.ends_with(']') => (name, Some(port)),
        _ => (host.as_str(), None),
    };
    if port.is_some_and(|p| p != listen.port().to_string()) {
        return false;
    }
    let own = match listen.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    name == own
        || name == "localhost"
        || (listen.ip().is_loopback() && (name == "127.0.0.1" || name == "[::1]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "127.0.0.3:7401".parse().unwrap()
    }

    #[test]
    fn reads_from_local_programs_pass() {
        for host in [
            "127.0.0.3:7401",
            "localhost:7401",
            "LOCALHOST:7401",
            "127.0.0.1:7401",
            "[::1]:7401",
            "localhost",
            "127.0.0.3",
            "[::1]",
        ] {
            assert_eq!(
                check_tcp_request(listen(), true, Some(host), None),
                Ok(()),
                "{host}"
            );
        }
    }

    #[test]
    fn browsers_rebinding_and_commands_are_refused() {
        assert_eq!(
            check_tcp_request(
                listen(),
                true,
                Some("127.0.0.3:7401"),
                Some("http://evil.example")
            ),
            Err(TcpRefusal::CrossOrigin("http://evil.example".into()))
        );
        assert_eq!(
            check_tcp_request(listen(), false, Some("127.0.0.3:7401"), Some("null")),
            Err(TcpRefusal::CrossOrigin("null".into()))
        );
        for host in [
            "evil.example:7401",
            "evil.example",
            "127.0.0.3:80",
            "localhost:7402",
            "10.0.0.1:7401",
        ] {
            assert_eq!(
                check_tcp_request(listen(), true, Some(host), None),
                Err(TcpRefusal::WrongHost(host.into())),
                "{host}"
            );
        }
        assert_eq!(check_tcp_request(listen(), true, None, None), Ok(()));
        assert_eq!(
            check_tcp_request(listen(), false, None, None),
            Err(TcpRefusal::CommandOverTcp)
        );
        assert_eq!(
            check_tcp_request(listen(), false, Some("127.0.0.3:7401"), None),
            Err(TcpRefusal::CommandOverTcp)
        );
    }
}
