//! Listening sockets: one per frontend port, shared by every proxy thread, kept
//! across reloads. IP_FREEBIND lets a standby balancer bind a floating address it
//! does not hold yet, so it serves the instant the address moves to it.

use std::net::{IpAddr, SocketAddr};

/// Binds `ip:port` for accepting; the error says which address and why.
pub fn bind(ip: IpAddr, port: u16, freebind: bool) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {addr}: {e}");
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| fail("create a socket for", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| fail("set SO_REUSEADDR on", e))?;
    if freebind {
        let r = if ip.is_ipv4() {
            socket.set_freebind(true)
        } else {
            socket.set_freebind_ipv6(true)
        };
        r.map_err(|e| fail("set IP_FREEBIND on", e))?;
    }
    if ip.is_ipv6() {
        // [::] takes IPv6 only; an IPv4 frontend on the same port is a separate one.
        socket
            .set_only_v6(true)
            .map_err(|e| fail("set IPV6_V6ONLY on", e))?;
    }
    // Accepted connections inherit TCP_NODELAY from the listener: one system call
    // less per client connection.
    socket
        .set_nodelay(true)
        .map_err(|e| fail("set TCP_NODELAY on", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| fail("make nonblocking", e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| fail("listen on", e))?;
    socket.listen(4096).map_err(|e| fail("listen on", e))?;
    Ok(socket.into())
}
