//! Floating addresses on interfaces, through rtnetlink: add, remove, query, and
//! whether the interface is usable. Everything here acts on the network
//! namespace of the thread that created the [`Netlink`] handle.

use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlag, AddressHeaderFlag, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkMessage};
use tokio::task::JoinHandle;

use crate::error::OsError;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// What [`Netlink::add_address`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    /// The exact address and prefix were already on the interface (for example
    /// adopted from a previous run); nothing was changed.
    AlreadyPresent,
}

/// What [`Netlink::remove_address`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveOutcome {
    Removed,
    /// The address was not on the interface, or the interface no longer exists.
    NotPresent,
}

/// One rtnetlink connection. Create it once and reuse it: each call is then one
/// or two netlink round trips with no socket setup. The socket belongs to the
/// network namespace of the thread that called [`Netlink::new`].
pub struct Netlink {
    handle: rtnetlink::Handle,
    connection: JoinHandle<()>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// rtnetlink wraps kernel errnos in its own type; callers want the errno.
fn to_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn errno_of(err: &io::Error) -> Option<i32> {
    err.raw_os_error()
}

fn check_prefix(addr: IpAddr, prefix_len: u8) -> Result<(), OsError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(OsError::InvalidPrefix {
            addr,
            prefix_len,
            max,
        });
    }
    Ok(())
}

fn message_has_address(msg: &AddressMessage, addr: IpAddr) -> bool {
    msg.attributes.iter().any(|attr| match attr {
        // IFA_LOCAL is the interface's own address; on point-to-point links
        // IFA_ADDRESS is the peer, so prefer LOCAL and fall back to ADDRESS.
        AddressAttribute::Local(a) => *a == addr,
        AddressAttribute::Address(a) => {
            *a == addr
                && !msg
                    .attributes
                    .iter()
                    .any(|x| matches!(x, AddressAttribute::Local(_)))
        }
        _ => false,
    })
}

fn is_secondary(msg: &AddressMessage) -> bool {
    msg.header.flags.contains(&AddressHeaderFlag::Secondary)
        || msg.attributes.iter().any(|attr| {
            matches!(attr, AddressAttribute::Flags(flags) if flags.contains(&AddressFlag::Secondary))
        })
}

fn local_address(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

/// Best effort: when it fails, the caller re-adds what the kernel dropped.
fn enable_promote_secondaries(interface: &str) {
    // /proc/sys/net resolves against the calling thread's network namespace,
    // the same one the netlink socket was opened in.
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/promote_secondaries");
    match std::fs::read_to_string(&path) {
        Ok(value) if value.trim() == "1" => {}
        _ => match std::fs::write(&path, "1") {
            Ok(()) => {
                tracing::info!(%interface, "enabled promote_secondaries so that removing a primary address keeps the other addresses of its subnet")
            }
            Err(err) => {
                tracing::warn!(%interface, error = %err, "cannot enable promote_secondaries")
            }
        },
    }
}

impl Netlink {
    /// Opens the netlink socket in the current thread's network namespace and
    /// spawns its connection task on the current tokio runtime.
    pub fn new() -> Result<Netlink, OsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OsError::NoRuntime {
            what: "Netlink::new",
        })?;
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| OsError::NetlinkSocket { source })?;
        let connection = runtime.spawn(connection);
        Ok(Netlink { handle, connection })
    }

    async fn link(&self, interface: &str) -> Result<LinkMessage, OsError> {
        let result = self
            .handle
            .link()
            .get()
            .match_name(interface.to_string())
            .execute()
            .try_next()
            .await;
        match result {
            Ok(Some(link)) => Ok(link),
            Ok(None) => Err(OsError::InterfaceNotFound {
                interface: interface.to_string(),
            }),
            Err(err) => {
                let source = to_io(err);
                if errno_of(&source) == Some(ENODEV) {
                    Err(OsError::InterfaceNotFound {
                        interface: interface.to_string(),
                    })
                } else {
                    Err(OsError::InterfaceQuery {
                        interface: interface.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Kernel index of `interface`.
    pub async fn interface_index(&self, interface: &str) -> Result<u32, OsError> {
        Ok(self.link(interface).await?.header.index)
    }

    /// True when the interface is administratively up and operationally running
    /// (carrier present), i.e. an address on it can actually be reached.
    pub async fn interface_is_up(&self, interface: &str) -> Result<bool, OsError> {
        let link = self.link(interface).await?;
        let flags = &link.header.flags;
        Ok(flags.contains(&LinkFlag::Up) && flags.contains(&LinkFlag::Running))
    }

    /// MAC address of `interface`, if it has a 6-byte hardware address.
    pub async fn interface_mac(&self, interface: &str) -> Result<Option<[u8; 6]>, OsError> {
        let link = self.link(interface).await?;
        Ok(link.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        }))
    }

    async fn interface_addresses(
        &self,
        interface: &str,
        index: u32,
    ) -> Result<Vec<AddressMessage>, OsError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|err| OsError::InterfaceQuery {
                interface: interface.to_string(),
                source: to_io(err),
            })
    }

    async fn addresses_on(
        &self,
        interface: &str,
        index: u32,
        addr: IpAddr,
    ) -> Result<Vec<AddressMessage>, OsError> {
        let all = self.interface_addresses(interface, index).await?;
        Ok(all
            .into_iter()
            .filter(|msg| message_has_address(msg, addr))
            .collect())
    }

    /// Adds `addr/prefix_len` to `interface`. IPv6 addresses are added without
    /// duplicate address detection: a floating address moves between nodes on
    /// purpose, and DAD would keep it unusable ("tentative") for a second or
    /// more after every takeover.
    pub async fn add_address(
        &self,
        interface: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<AddOutcome, OsError> {
        check_prefix(addr, prefix_len)?;
        let index = self.interface_index(interface).await?;
        let mut request = self.handle.address().add(index, addr, prefix_len);
        if addr.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
        }
        match request.execute().await.map_err(to_io) {
            Ok(()) => Ok(AddOutcome::Added),
            Err(err) if errno_of(&err) == Some(EEXIST) => Ok(AddOutcome::AlreadyPresent),
            Err(source) => Err(OsError::Address {
                action: "add",
                interface: interface.to_string(),
                addr,
                prefix_len,
                source,
            }),
        }
    }

    /// Removes `addr/prefix_len` from `interface`. The same address with a
    /// different prefix is left alone: it is not the one this resource added.
    ///
    /// Deleting a primary IPv4 address makes the kernel delete the secondary
    /// addresses of its subnet too, unless `promote_secondaries` is set, and
    /// those may be other groups' floating addresses. So before deleting a
    /// primary that has secondaries, `promote_secondaries` is switched on for
    /// the interface (the systemd default), and any secondary that still
    /// vanished is added back.
    pub async fn remove_address(
        &self,
        interface: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<RemoveOutcome, OsError> {
        check_prefix(addr, prefix_len)?;
        let index = match self.interface_index(interface).await {
            Ok(index) => index,
            // A vanished interface took its addresses with it.
            Err(OsError::InterfaceNotFound { .. }) => return Ok(RemoveOutcome::NotPresent),
            Err(err) => return Err(err),
        };
        let all = self.interface_addresses(interface, index).await?;
        let Some(target) = all
            .iter()
            .find(|msg| message_has_address(msg, addr) && msg.header.prefix_len == prefix_len)
            .cloned()
        else {
            return Ok(RemoveOutcome::NotPresent);
        };
        let at_risk: Vec<(IpAddr, u8)> = if addr.is_ipv4() && !is_secondary(&target) {
            all.iter()
                .filter(|msg| is_secondary(msg))
                .filter_map(|msg| Some((local_address(msg)?, msg.header.prefix_len)))
                .filter(|(other, _)| other.is_ipv4() && *other != addr)
                .collect()
        } else {
            Vec::new()
        };
        if !at_risk.is_empty() {
            enable_promote_secondaries(interface);
        }
        match self
            .handle
            .address()
            .del(target)
            .execute()
            .await
            .map_err(to_io)
        {
            Ok(()) => {}
            // Someone else removed it between our dump and our delete.
            Err(err) if matches!(errno_of(&err), Some(EADDRNOTAVAIL) | Some(ENODEV)) => {
                return Ok(RemoveOutcome::NotPresent)
            }
            Err(source) => {
                return Err(OsError::Address {
                    action: "remove",
                    interface: interface.to_string(),
                    addr,
                    prefix_len,
                    source,
                })
            }
        }
        if !at_risk.is_empty() {
            self.restore_lost(interface, index, addr, &at_risk).await?;
        }
        Ok(RemoveOutcome::Removed)
    }

    async fn restore_lost(
        &self,
        interface: &str,
        index: u32,
        removed: IpAddr,
        expected: &[(IpAddr, u8)],
    ) -> Result<(), OsError> {
        let now = self.interface_addresses(interface, index).await?;
        for &(other, prefix_len) in expected {
            let present = now
                .iter()
                .any(|msg| message_has_address(msg, other) && msg.header.prefix_len == prefix_len);
            if present {
                continue;
            }
            tracing::warn!(
                %interface, removed = %removed, lost = %other,
                "removing a primary address also removed {other}/{prefix_len}; adding it back"
            );
            self.add_address(interface, other, prefix_len).await?;
        }
        Ok(())
    }

    /// True when `addr` (with any prefix length) is on `interface`.
    pub async fn has_address(&self, interface: &str, addr: IpAddr) -> Result<bool, OsError> {
        let index = self.interface_index(interface).await?;
        Ok(!self.addresses_on(interface, index, addr).await?.is_empty())
    }
}

/// One-shot [`Netlink::add_address`] on a fresh connection. Prefer a long-lived
/// [`Netlink`] when calling repeatedly.
pub async fn add_address(
    interface: &str,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<AddOutcome, OsError> {
    Netlink::new()?
        .add_address(interface, addr, prefix_len)
        .await
}

/// One-shot [`Netlink::remove_address`] on a fresh connection.
pub async fn remove_address(
    interface: &str,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<RemoveOutcome, OsError> {
    Netlink::new()?
        .remove_address(interface, addr, prefix_len)
        .await
}

/// One-shot [`Netlink::has_address`] on a fresh connection.
pub async fn has_address(interface: &str, addr: IpAddr) -> Result<bool, OsError> {
    Netlink::new()?.has_address(interface, addr).await
}

/// One-shot [`Netlink::interface_is_up`] on a fresh connection.
pub async fn interface_is_up(interface: &str) -> Result<bool, OsError> {
    Netlink::new()?.interface_is_up(interface).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::TestNetns;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn prefix_is_checked_before_touching_the_kernel() {
        let err = check_prefix(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 33).unwrap_err();
        assert!(err.to_string().contains("/33"), "{err}");
        assert!(check_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).is_ok());
        assert!(check_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 129).is_err());
    }

    #[test]
    fn new_outside_a_runtime_is_an_error_not_a_panic() {
        let err = Netlink::new().unwrap_err();
        assert!(matches!(err, OsError::NoRuntime { .. }), "{err}");
    }

    #[test]
    fn add_has_remove_in_a_namespace() {
        let Some(ns) = TestNetns::create_or_skip("vip") else {
            return;
        };
        ns.run(|| async {
            let nl = Netlink::new().unwrap();
            let v4: IpAddr = "10.77.0.5".parse().unwrap();
            let v6: IpAddr = "fd00:77::5".parse().unwrap();

            assert!(nl.interface_is_up("veth0").await.unwrap());
            assert!(!nl.has_address("veth0", v4).await.unwrap());
            assert_eq!(
                nl.add_address("veth0", v4, 24).await.unwrap(),
                AddOutcome::Added
            );
            assert_eq!(
                nl.add_address("veth0", v4, 24).await.unwrap(),
                AddOutcome::AlreadyPresent
            );
            assert!(nl.has_address("veth0", v4).await.unwrap());
            assert!(!nl.has_address("veth1", v4).await.unwrap());

            // A different prefix is a different address: not ours to remove.
            assert_eq!(
                nl.remove_address("veth0", v4, 16).await.unwrap(),
                RemoveOutcome::NotPresent
            );
            assert!(nl.has_address("veth0", v4).await.unwrap());

            assert_eq!(
                nl.add_address("veth0", v6, 64).await.unwrap(),
                AddOutcome::Added
            );
            assert!(nl.has_address("veth0", v6).await.unwrap());

            assert_eq!(
                nl.remove_address("veth0", v4, 24).await.unwrap(),
                RemoveOutcome::Removed
            );
            assert_eq!(
                nl.remove_address("veth0", v4, 24).await.unwrap(),
                RemoveOutcome::NotPresent
            );
            assert!(!nl.has_address("veth0", v4).await.unwrap());
            assert_eq!(
                nl.remove_address("veth0", v6, 64).await.unwrap(),
                RemoveOutcome::Removed
            );
            assert!(!nl.has_address("veth0", v6).await.unwrap());

            // The free functions use their own connection in the same namespace.
            assert_eq!(
                add_address("veth0", v4, 32).await.unwrap(),
                AddOutcome::Added
            );
            assert!(has_address("veth0", v4).await.unwrap());
            assert_eq!(
                remove_address("veth0", v4, 32).await.unwrap(),
                RemoveOutcome::Removed
            );
        });
        // The address never leaked into the test's own namespace.
        let out = std::process::Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("10.77.0.5"));
    }

    fn ns_addresses(ns: &TestNetns) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name(), "-o", "addr", "show", "dev", "veth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn removing_a_primary_keeps_the_secondaries_of_its_subnet() {
        let Some(ns) = TestNetns::create_or_skip("vipprimary") else {
            return;
        };
        // A fresh namespace starts with promote_secondaries off: the kernel
        // would delete 10.81.0.6 along with the primary 10.81.0.5.
        ns.run(|| async {
            std::fs::write("/proc/sys/net/ipv4/conf/veth0/promote_secondaries", "0").unwrap();
            let nl = Netlink::new().unwrap();
            let primary: IpAddr = "10.81.0.5".parse().unwrap();
            let secondary: IpAddr = "10.81.0.6".parse().unwrap();
            nl.add_address("veth0", primary, 24).await.unwrap();
            nl.add_address("veth0", secondary, 24).await.unwrap();
            assert_eq!(
                nl.remove_address("veth0", primary, 24).await.unwrap(),
                RemoveOutcome::Removed
            );
            assert!(!nl.has_address("veth0", primary).await.unwrap());
            assert!(nl.has_address("veth0", secondary).await.unwrap());
        });
        let shown = ns_addresses(&ns);
        assert!(shown.contains(" 10.81.0.6/24 "), "{shown}");
    }

    #[test]
    fn secondaries_lost_with_a_primary_are_added_back() {
        let Some(ns) = TestNetns::create_or_skip("viprestore") else {
            return;
        };
        ns.ip(&["addr", "add", "10.82.0.5/24", "dev", "veth0"]);
        ns.ip(&["addr", "add", "10.82.0.6/24", "dev", "veth0"]);
        ns.run(|| async {
            // The fallback for when promote_secondaries cannot be switched on.
            std::fs::write("/proc/sys/net/ipv4/conf/veth0/promote_secondaries", "0").unwrap();
            let nl = Netlink::new().unwrap();
            let index = nl.interface_index("veth0").await.unwrap();
            let primary: IpAddr = "10.82.0.5".parse().unwrap();
            let secondary: IpAddr = "10.82.0.6".parse().unwrap();
            let msg = nl
                .addresses_on("veth0", index, primary)
                .await
                .unwrap()
                .pop()
                .unwrap();
            nl.handle.address().del(msg).execute().await.unwrap();
            assert!(
                !nl.has_address("veth0", secondary).await.unwrap(),
                "kernel kept it"
            );
            nl.restore_lost("veth0", index, primary, &[(secondary, 24)])
                .await
                .unwrap();
            assert!(nl.has_address("veth0", secondary).await.unwrap());
        });
    }

    #[test]
    fn missing_interface_and_down_link_are_reported() {
        let Some(ns) = TestNetns::create_or_skip("vipdown") else {
            return;
        };
        ns.ip(&["link", "set", "veth1", "down"]);
        ns.run(|| async {
            let nl = Netlink::new().unwrap();
            let v4: IpAddr = "10.78.0.5".parse().unwrap();
            // veth0 is admin-up but its peer is down: no carrier.
            assert!(!nl.interface_is_up("veth0").await.unwrap());
            assert!(!nl.interface_is_up("veth1").await.unwrap());

            let err = nl.add_address("nosuch0", v4, 24).await.unwrap_err();
            assert!(matches!(err, OsError::InterfaceNotFound { .. }), "{err}");
            assert!(err.to_string().contains("nosuch0"), "{err}");
            let err = nl.has_address("nosuch0", v4).await.unwrap_err();
            assert!(matches!(err, OsError::InterfaceNotFound { .. }), "{err}");
            let err = nl.interface_is_up("nosuch0").await.unwrap_err();
            assert!(matches!(err, OsError::InterfaceNotFound { .. }), "{err}");
            assert_eq!(
                nl.remove_address("nosuch0", v4, 24).await.unwrap(),
                RemoveOutcome::NotPresent
            );
            let mac = nl.interface_mac("veth0").await.unwrap();
            assert!(mac.is_some_and(|m| m != [0; 6]));
        });
    }
}
