//! Telling the local segment that a floating address moved here: gratuitous ARP
//! for IPv4 (an RFC 5227 ARP announcement in a raw Ethernet frame) and
//! unsolicited neighbour advertisements for IPv6 (RFC 4861 §7.2.6). Without
//! them, switches and neighbours keep sending to the old owner's MAC until their
//! caches time out.
//!
//! The sends are blocking (they pace packets with `gap`); from async code run
//! them on `tokio::task::spawn_blocking`. Sockets are opened in the calling
//! thread's network namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::OsError;

const ETH_P_ARP: u16 = 0x0806;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// Length of an Ethernet frame carrying an ARP packet, without padding.
pub const ARP_FRAME_LEN: usize = 42;
/// Length of an ICMPv6 neighbour advertisement with a target link-layer option.
pub const NA_LEN: usize = 32;

/// The Ethernet frame of an ARP announcement: a broadcast ARP request whose
/// sender and target protocol address are both `addr` and whose target hardware
/// address is zero (RFC 5227 §3). Requests are used rather than replies because
/// every common stack updates an existing cache entry from a request, and some
/// ignore unsolicited replies.
pub fn gratuitous_arp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut frame = [0u8; ARP_FRAME_LEN];
    // Ethernet header
    frame[0..6].copy_from_slice(&BROADCAST_MAC);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP packet
    frame[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&addr.octets());
    // target hardware address stays zero
    frame[38..42].copy_from_slice(&addr.octets());
    frame
}

/// ICMPv6 body of an unsolicited neighbour advertisement for `addr`: Override
/// set (so caches replace the old owner's MAC), Solicited and Router clear, and
/// a target link-layer address option carrying `mac`. The checksum is left zero;
/// the kernel fills it in for ICMPv6 raw sockets.
pub fn unsolicited_na_message(mac: [u8; 6], addr: Ipv6Addr) -> [u8; NA_LEN] {
    let mut msg = [0u8; NA_LEN];
    msg[0] = 136; // neighbour advertisement
    msg[1] = 0; // code
                // msg[2..4]: checksum, computed by the kernel
    msg[4] = 0x20; // flags: R=0 S=0 O=1
    msg[8..24].copy_from_slice(&addr.octets());
    msg[24] = 2; // option: target link-layer address
    msg[25] = 1; // length in units of 8 bytes
    msg[26..32].copy_from_slice(&mac);
    msg
}

/// Index and MAC of an Ethernet interface in the current network namespace.
fn ethernet_interface(interface: &str, addr: IpAddr) -> Result<(u32, [u8; 6]), OsError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|errno| OsError::InterfaceQuery {
        interface: interface.to_string(),
        source: io::Error::from(errno),
    })?;
    let mut found = false;
    for entry in addrs {
        if entry.interface_name != interface {
            continue;
        }
        found = true;
        let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        if link.hatype() != ARPHRD_ETHER || link.halen() != 6 {
            return Err(OsError::NotEthernet {
                interface: interface.to_string(),
                addr,
            });
        }
        let (Ok(index), Some(mac)) = (u32::try_from(link.ifindex()), link.addr()) else {
            continue;
        };
        return Ok((index, mac));
    }
    if found {
        Err(OsError::NotEthernet {
            interface: interface.to_string(),
            addr,
        })
    } else {
        Err(OsError::InterfaceNotFound {
            interface: interface.to_string(),
        })
    }
}

/// An AF_PACKET address: the interface to send on (or listen on) and, for
/// sending, the link-layer destination.
pub(crate) fn packet_sockaddr(ifindex: u32, protocol: u16, dest: [u8; 6]) -> io::Result<SockAddr> {
    let ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    // SAFETY: `storage` is a zeroed sockaddr_storage, which is larger than and
    // at least as aligned as sockaddr_ll, so writing a sockaddr_ll at its start
    // is in bounds; the family (AF_PACKET) and the length we report match the
    // sockaddr_ll we wrote.
    let ((), address) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = storage.cast::<libc::sockaddr_ll>();
            let mut sll_addr = [0u8; 8];
            sll_addr[..6].copy_from_slice(&dest);
            ll.write(libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as libc::c_ushort,
                sll_protocol: protocol.to_be(),
                sll_ifindex: ifindex,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 6,
                sll_addr,
            });
            *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    Ok(address)
}

fn send_paced(
    count: u32,
    gap: Duration,
    mut send_one: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(gap);
        }
        send_one()?;
    }
    Ok(())
}

/// Sends `count` gratuitous ARP announcements for `addr` out of `interface`,
/// `gap` apart. `count == 0` does nothing (for interfaces where ARP makes no
/// sense, such as a loopback VIP for direct routing).
pub fn send_gratuitous_arp(
    interface: &str,
    addr: Ipv4Addr,
    count: u32,
    gap: Duration,
) -> Result<(), OsError> {
    if count == 0 {
        return Ok(());
    }
    let ip = IpAddr::V4(addr);
    let (ifindex, mac) = ethernet_interface(interface, ip)?;
    let fail = |source: io::Error| OsError::Announce {
        interface: interface.to_string(),
        addr: ip,
        source,
    };
    // Protocol 0: this socket only sends, so it must not queue received frames.
    let socket = Socket::new(Domain::PACKET, Type::RAW, None).map_err(fail)?;
    let dest = packet_sockaddr(ifindex, ETH_P_ARP, BROADCAST_MAC).map_err(fail)?;
    let frame = gratuitous_arp_frame(mac, addr);
    send_paced(count, gap, || socket.send_to(&frame, &dest).map(drop)).map_err(fail)?;
    tracing::debug!(%interface, %addr, count, "sent gratuitous ARP");
    Ok(())
}

/// Sends `count` unsolicited neighbour advertisements for `addr` to all nodes
/// (ff02::1) on `interface`, hop limit 255 as RFC 4861 requires, `gap` apart.
pub fn send_unsolicited_na(
    interface: &str,
    addr: Ipv6Addr,
    count: u32,
    gap: Duration,
) -> Result<(), OsError> {
    if count == 0 {
        return Ok(());
    }
    let ip = IpAddr::V6(addr);
    let (ifindex, mac) = ethernet_interface(interface, ip)?;
    let fail = |source: io::Error| OsError::Announce {
        interface: interface.to_string(),
        addr: ip,
        source,
    };
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(fail)?;
    socket.set_multicast_hops_v6(255).map_err(fail)?;
    socket.set_unicast_hops_v6(255).map_err(fail)?;
    socket.set_multicast_if_v6(ifindex).map_err(fail)?;
    socket.set_multicast_loop_v6(false).map_err(fail)?;
    // Sending from the floating address itself is what neighbours expect; if it
    // is not (yet) usable the kernel picks the link-local address instead, which
    // is still a valid source for an advertisement.
    let scope = if addr.is_unicast_link_local() {
        ifindex
    } else {
        0
    };
    if let Err(err) = socket.bind(&SocketAddrV6::new(addr, 0, 0, scope).into()) {
        tracing::debug!(%interface, %addr, error = %err, "cannot send NA from the address itself");
    }
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, ifindex);
    let message = unsolicited_na_message(mac, addr);
    send_paced(count, gap, || {
        socket.send_to(&message, &all_nodes.into()).map(drop)
    })
    .map_err(fail)?;
    tracing::debug!(%interface, %addr, count, "sent unsolicited neighbour advertisements");
    Ok(())
}

/// Announces `addr` on `interface`: gratuitous ARP for IPv4, unsolicited
/// neighbour advertisements for IPv6.
pub fn announce(interface: &str, addr: IpAddr, count: u32, gap: Duration) -> Result<(), OsError> {
    match addr {
        IpAddr::V4(v4) => send_gratuitous_arp(interface, v4, count, gap),
        IpAddr::V6(v6) => send_unsolicited_na(interface, v6, count, gap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::TestNetns;
    use std::io::Read;
    use std::time::Instant;

    const ETH_P_IPV6: u16 = 0x86dd;
    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn arp_frame_layout() {
        let frame = gratuitous_arp_frame(MAC, Ipv4Addr::new(10, 0, 0, 5));
        #[rustfmt::skip]
        let expected: [u8; ARP_FRAME_LEN] = [
            // Ethernet: broadcast destination, our source, ethertype ARP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x08, 0x06,
            // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            // sender MAC, sender IP
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 0, 0, 5,
            // target MAC zero, target IP = sender IP
            0, 0, 0, 0, 0, 0, 10, 0, 0, 5,
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn na_message_layout() {
        let addr: Ipv6Addr = "fd00::5".parse().unwrap();
        let msg = unsolicited_na_message(MAC, addr);
        assert_eq!(msg[0], 136);
        assert_eq!(msg[1], 0);
        assert_eq!(&msg[2..4], &[0, 0], "checksum is left to the kernel");
        assert_eq!(&msg[4..8], &[0x20, 0, 0, 0], "only the Override flag");
        assert_eq!(&msg[8..24], &addr.octets());
        assert_eq!(&msg[24..26], &[2, 1]);
        assert_eq!(&msg[26..32], &MAC);
    }

    #[test]
    fn zero_count_sends_nothing_and_missing_interface_is_named() {
        let addr = Ipv4Addr::new(10, 0, 0, 5);
        assert!(send_gratuitous_arp("nosuch0", addr, 0, Duration::ZERO).is_ok());
        let err = send_gratuitous_arp("nosuch0", addr, 1, Duration::ZERO).unwrap_err();
        assert!(matches!(err, OsError::InterfaceNotFound { .. }), "{err}");
        assert!(err.to_string().contains("nosuch0"), "{err}");
    }

    #[test]
    fn loopback_is_not_ethernet() {
        let err = announce("lo", "127.0.0.2".parse().unwrap(), 1, Duration::ZERO).unwrap_err();
        assert!(matches!(err, OsError::NotEthernet { .. }), "{err}");
    }

    /// A socket on `interface` seeing every frame, for capturing on the peer.
    fn capture(interface: &str) -> Socket {
        const ETH_P_ALL: u16 = 0x0003;
        let index = nix::net::if_::if_nametoindex(interface).unwrap();
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
        )
        .unwrap();
        socket
            .bind(&packet_sockaddr(index, ETH_P_ALL, [0; 6]).unwrap())
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        socket
    }

    /// Frames received until `n` match `wanted` or five seconds pass.
    fn wait_for_frames(socket: &Socket, n: usize, wanted: impl Fn(&[u8]) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = 0;
        let mut buf = [0u8; 2048];
        while seen < n && Instant::now() < deadline {
            match (&*socket).read(&mut buf) {
                Ok(len) if wanted(&buf[..len]) => seen += 1,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("capture failed: {e}"),
            }
        }
        seen
    }

    #[test]
    fn gratuitous_arp_arrives_on_the_peer() {
        let Some(ns) = TestNetns::create_or_skip("arp") else {
            return;
        };
        ns.run_sync(|| {
            let (_, mac) = ethernet_interface("veth0", IpAddr::V4(Ipv4Addr::UNSPECIFIED)).unwrap();
            let addr = Ipv4Addr::new(10, 79, 0, 5);
            let rx = capture("veth1");
            send_gratuitous_arp("veth0", addr, 3, Duration::from_millis(5)).unwrap();
            let expected = gratuitous_arp_frame(mac, addr);
            // The frame may arrive padded to the Ethernet minimum of 60 bytes.
            let seen = wait_for_frames(&rx, 3, |frame| {
                frame.len() >= ARP_FRAME_LEN && frame[..ARP_FRAME_LEN] == expected
            });
            assert_eq!(seen, 3, "expected 3 gratuitous ARP frames on veth1");
        });
    }

    fn icmpv6_checksum_ok(src: &[u8], dst: &[u8], icmp: &[u8]) -> bool {
        let mut sum: u32 = 0;
        let mut add = |bytes: &[u8]| {
            for chunk in bytes.chunks(2) {
                let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
                sum += u32::from(word);
            }
        };
        add(src);
        add(dst);
        add(&u32::try_from(icmp.len()).unwrap().to_be_bytes());
        add(&[0, 0, 0, 58]);
        add(icmp);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn unsolicited_na_arrives_on_the_peer() {
        let Some(ns) = TestNetns::create_or_skip("na") else {
            return;
        };
        ns.ip(&["addr", "add", "fd00:79::5/64", "dev", "veth0", "nodad"]);
        ns.run_sync(|| {
            let addr: Ipv6Addr = "fd00:79::5".parse().unwrap();
            let (_, mac) = ethernet_interface("veth0", IpAddr::V6(addr)).unwrap();
            let rx = capture("veth1");
            announce("veth0", IpAddr::V6(addr), 2, Duration::from_millis(5)).unwrap();
            let seen = wait_for_frames(&rx, 2, |frame| {
                // Ethernet(14) + IPv6(40) + NA(32), no extension headers.
                if frame.len() < 14 + 40 + NA_LEN || frame[12..14] != ETH_P_IPV6.to_be_bytes() {
                    return false;
                }
                let ip = &frame[14..54];
                let icmp = &frame[54..54 + NA_LEN];
                let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
                ip[6] == 58
                    && icmp[0] == 136
                    && icmp[8..24] == addr.octets()
                    && icmp[26..32] == mac
                    && icmp[4] == 0x20
                    && ip[7] == 255
                    && ip[24..40] == all_nodes
                    && ip[8..24] == addr.octets()
                    && frame[0..6] == [0x33, 0x33, 0, 0, 0, 1]
                    && icmpv6_checksum_ok(&ip[8..24], &ip[24..40], icmp)
            });
            assert_eq!(
                seen, 2,
                "expected 2 valid unsolicited NAs for {addr} on veth1"
            );
        });
    }
}
