//! The PROXY protocol header (HAProxy's, versions 1 and 2) sent first on a server
//! connection so that the server sees the client's address in tcp mode.

use std::net::SocketAddr;
use uphold_config::balance::ProxyProtocol;

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `client` to `local` (the balancer's listening address).
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // Mixed families (an IPv4 client on an IPv6 socket) are shown as IPv6.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V6(l)) => (
            SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
            SocketAddr::V6(l),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(l)) => (
            SocketAddr::V6(c),
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port()),
        ),
        pair => pair,
    };
    match version {
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY command
            match (client, local) {
                (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&c.ip().octets());
                    out.extend_from_slice(&l.ip().octets());
                    out.extend_from_slice(&c.port().to_be_bytes());
                    out.extend_from_slice(&l.port().to_be_bytes());
                }
                (SocketAddr::V6(c), SocketAddr::V6(l)) => {
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&c.ip().octets());
                    out.extend_from_slice(&l.ip().octets());
                    out.extend_from_slice(&c.port().to_be_bytes());
                    out.extend_from_slice(&l.port().to_be_bytes());
                }
                _ => unreachable!("families were made equal above"),
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_text() {
        let h = header(
            ProxyProtocol::V1,
            "192.0.2.7:51000".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\n");
        let h = header(
            ProxyProtocol::V1,
            "[2001:db8::7]:51000".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 51000 80\r\n");
    }

    #[test]
    fn v2_binary() {
        let h = header(
            ProxyProtocol::V2,
            "192.0.2.7:51000".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[20..24], &[10, 0, 0, 1]);
        assert_eq!(&h[24..28], &[0xC7, 0x38, 0, 80]);
        let h6 = header(
            ProxyProtocol::V2,
            "[2001:db8::7]:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
        );
        assert_eq!(h6.len(), 16 + 36);
    }
}
