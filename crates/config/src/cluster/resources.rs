//! Validation of a group's resources: floating addresses (`type = "ip"`, unique
//! across the whole file) and commands (`type = "exec"`, names unique in their
//! group).

use super::file::{ExecFile, IpFile};
use crate::locate::KeyPath;
use crate::validate::Ctx;
use crate::values::{argv, duration, system_user};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;
use uphold_core::{ExecResource, IpResource, ResourceSpec};

pub(crate) const DEFAULT_ARP_COUNT: u32 = 3;
pub(crate) const MAX_ARP_COUNT: i64 = 100;
pub(crate) const DEFAULT_IP_MONITOR_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_EXEC_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const DEFAULT_FAILURES: u32 = 1;
/// Linux IFNAMSIZ is 16 including the terminating NUL.
const MAX_INTERFACE_LEN: usize = 15;

/// Parses `address/prefix`.
fn cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, prefix)) = text.split_once('/') else {
        return Err("missing prefix length; write the address with the prefix of its subnet, like \"10.0.0.100/24\"".to_string());
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address (DNS names are not accepted here)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .trim()
        .parse()
        .map_err(|_| format!("prefix length {prefix:?} is not a number"))?;
    if prefix > max {
        return Err(format!("prefix length must be at most {max}"));
    }
    if prefix == 0 {
        return Err(format!(
            "prefix length must be at least 1 (/0 would make every address look directly \
             reachable on this interface; use /{max} for a lone address)"
        ));
    }
    if addr.is_unspecified() || addr.is_multicast() {
        return Err("a floating address must be a unicast host address".to_string());
    }
    Ok((addr, prefix))
}

fn interface_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if name.len() > MAX_INTERFACE_LEN {
        return Some(format!(
            "must be at most {MAX_INTERFACE_LEN} bytes (the kernel's limit)"
        ));
    }
    if name == "." || name == ".." {
        return Some("is not a valid interface name".to_string());
    }
    if let Some((base, _)) = name.split_once(':') {
        return Some(format!(
            "aliases like \"eth0:1\" are not interfaces; name the interface itself ({base:?})"
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Some("must not contain '/', spaces or control characters".to_string());
    }
    None
}

pub(super) fn validate_ip(
    ctx: &mut Ctx<'_>,
    rp: &KeyPath,
    who: &str,
    ip: IpFile,
    group: &str,
    vips: &mut HashMap<IpAddr, (String, KeyPath)>,
) -> Option<ResourceSpec> {
    let ap = rp.key("address");
    let address = match ip.address {
        None => {
            ctx.error(&ap, format!("{who} (type \"ip\") is missing the required key `address`, e.g. \"10.0.0.100/24\""));
            None
        }
        Some(text) => match cidr(&text) {
            Err(why) => {
                ctx.error(&ap, format!("{who}: invalid address {text:?}: {why}"));
                None
            }
            Ok((addr, prefix)) => {
                if let Some((other, first)) = vips.get(&addr) {
                    let place = ctx.place(first);
                    let holder = if other == group {
                        "this group".to_string()
                    } else {
                        format!("group {other:?}")
                    };
                    ctx.error(
                        &ap,
                        format!("{who}: address {addr} is already used by {holder} ({place}); an address can float in one place only"),
                    );
                    None
                } else {
                    vips.insert(addr, (group.to_string(), ap.clone()));
                    Some((addr, prefix))
                }
            }
        },
    };
    let ip_path = rp.key("interface");
    let interface = match ip.interface {
        None => {
            ctx.error(
                &ip_path,
                format!(
                    "{who} (type \"ip\") is missing the required key `interface`, e.g. \"eth0\""
                ),
            );
            None
        }
        Some(name) => match interface_problem(&name) {
            Some(why) => {
                ctx.error(
                    &ip_path,
                    format!("{who}: invalid interface {name:?}: {why}"),
                );
                None
            }
            None => Some(name),
        },
    };
    let arp_count = match ip.arp_count {
        None => Some(DEFAULT_ARP_COUNT),
        Some(n) if (0..=MAX_ARP_COUNT).contains(&n) => u32::try_from(n).ok(),
        Some(n) => {
            ctx.error(
                &rp.key("arp_count"),
                format!("{who}: invalid arp_count {n}: must be between 0 and {MAX_ARP_COUNT}"),
            );
            None
        }
    };
    let monitor_interval = duration(
        ctx,
        &rp.key("monitor_interval"),
        ip.monitor_interval.as_ref(),
        DEFAULT_IP_MONITOR_INTERVAL,
    );
    let (address, prefix_len) = address?;
    Some(ResourceSpec::Ip(IpResource {
        address,
        prefix_len,
        interface: interface?,
        arp_count: arp_count?,
        monitor_interval: monitor_interval?,
    }))
}

pub(super) fn validate_exec(
    ctx: &mut Ctx<'_>,
    rp: &KeyPath,
    who: &str,
    exec: ExecFile,
    names: &mut HashMap<String, KeyPath>,
) -> Option<ResourceSpec> {
    let np = rp.key("name");
    let name = match exec.name {
        None => {
            ctx.error(
                &np,
                format!("{who} (type \"exec\") is missing the required key `name`"),
            );
            None
        }
        Some(name) if name.trim().is_empty() || name.chars().any(char::is_control) => {
            ctx.error(
                &np,
                format!("{who}: invalid name {name:?}: must be non-empty and printable"),
            );
            None
        }
        Some(name) => {
            if let Some(first) = names.get(&name) {
                let place = ctx.place(first);
                ctx.error(
                    &np,
                    format!(
                        "{who}: exec name {name:?} is used twice in this group (first at {place})"
                    ),
                );
                None
            } else {
                names.insert(name.clone(), np.clone());
                Some(name)
            }
        }
    };
    let who = match &name {
        Some(name) => format!("{who} ({name:?})"),
        None => who.to_string(),
    };
    let start = argv(ctx, &rp.key("start"), &who, "start", exec.start, true);
    let stop = argv(ctx, &rp.key("stop"), &who, "stop", exec.stop, true);
    let monitor = argv(
        ctx,
        &rp.key("monitor"),
        &who,
        "monitor",
        exec.monitor,
        false,
    );
    let interval = duration(
        ctx,
        &rp.key("interval"),
        exec.interval.as_ref(),
        DEFAULT_EXEC_INTERVAL,
    );
    let timeout = duration(
        ctx,
        &rp.key("timeout"),
        exec.timeout.as_ref(),
        DEFAULT_EXEC_TIMEOUT,
    );
    let failures = match exec.failures {
        None => Some(DEFAULT_FAILURES),
        Some(n) => match u32::try_from(n) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                ctx.error(
                    &rp.key("failures"),
                    format!("{who}: invalid failures {n}: must be at least 1 (consecutive failed monitor runs before the group moves)"),
                );
                None
            }
        },
    };
    let user = system_user(ctx, &rp.key("user"), &who, exec.user);
    Some(ResourceSpec::Exec(ExecResource {
        user: user?,
        name: name?,
        start: start??,
        stop: stop??,
        monitor: monitor?,
        monitor_interval: interval?,
        timeout: timeout?,
        failures_before_move: failures?,
    }))
}
