//! The text forms of a frontend's `listen` (`ip:port` or `ip:first-last`) and of
//! a server's `address`, whose port may be left out or be a range that follows
//! the frontend's. Host names are not resolved.

use super::model::{PortRange, ServerPort};
use std::net::IpAddr;

/// `IP:PORT` or `IP:FIRST-LAST`; IPv6 in brackets.
pub(super) fn listen_spec(text: &str) -> Result<(IpAddr, PortRange), String> {
    let (host, ports) = split_host_port(text)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("{host:?} is not an IP address (use 0.0.0.0 or [::] for every address)")
    })?;
    let Some(ports) = ports else {
        return Err("missing port; write ip:port or ip:first-last, e.g. \"0.0.0.0:80\"".into());
    };
    Ok((ip, port_range(ports)?))
}

pub(super) fn server_address(
    text: &str,
    listen: Option<PortRange>,
) -> Result<(IpAddr, ServerPort), String> {
    let (host, ports) = split_host_port(text)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{host:?} is not an IP address (host names are not resolved)"))?;
    let is_range = listen.is_some_and(|l| l.len() > 1);
    match ports {
        None if is_range => Ok((ip, ServerPort::Same)),
        None => Err("missing port; write ip:port (only a frontend with a port range may leave it out: the client's port is kept)".into()),
        Some(p) => {
            let range = port_range(p)?;
            if range.len() == 1 {
                return Ok((ip, ServerPort::Fixed(range.first)));
            }
            match listen {
                Some(l) if l.len() == range.len() => Ok((ip, ServerPort::RangeStart(range.first))),
                Some(l) if l.len() > 1 => Err(format!(
                    "the range has {} ports but the frontend listens on {}; give a range of the same size, one port, or none",
                    range.len(),
                    l.len()
                )),
                _ => Err("a port range needs a frontend that listens on a port range".into()),
            }
        }
    }
}

fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".into());
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    if text.matches(':').count() > 1 {
        if text.parse::<IpAddr>().is_ok() {
            return Ok((text, None));
        }
        return Err("IPv6 addresses with a port need brackets, e.g. \"[2001:db8::1]:80\"".into());
    }
    match text.split_once(':') {
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((text, None)),
    }
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) => Err("port must not be 0".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{text:?} is not a port (1-65535)")),
    }
}

fn port_range(text: &str) -> Result<PortRange, String> {
    match text.split_once('-') {
        None => {
            let p = port(text)?;
            Ok(PortRange { first: p, last: p })
        }
        Some((a, b)) => {
            let (first, last) = (port(a)?, port(b)?);
            if last < first {
                return Err(format!("port range {first}-{last} runs backwards"));
            }
            Ok(PortRange { first, last })
        }
    }
}
