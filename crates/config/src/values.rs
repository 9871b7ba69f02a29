//! Values every role writes the same way, and their checks: durations (kept as
//! text by serde so a bare number gets a helpful message), `ip:port` addresses,
//! argv commands, system accounts, directories and the admin socket path. One
//! copy each, so a key means and reports the same in `[cluster]`, `[[sync]]` and
//! `[[balance]]`.

use crate::locate::KeyPath;
use crate::validate::Ctx;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// A duration as written, e.g. `"800ms"`; parsed by [`duration`]. A custom visitor
/// so that a bare number gets a message saying a unit is needed.
#[derive(Debug, Clone)]
pub(crate) struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, like \"800ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

pub(crate) fn duration(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    value: Option<&DurationText>,
    default: Duration,
) -> Option<Duration> {
    let Some(DurationText(text)) = value else {
        return Some(default);
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            ctx.error(
                path,
                format!("invalid duration {text:?}: must be greater than 0"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            // humantime's own message sometimes already shows the right spelling.
            let e = e.to_string();
            let hint = if e.contains("for example") {
                ""
            } else {
                "; write a number with a unit, like \"800ms\", \"2s\" or \"1m 30s\""
            };
            ctx.error(path, format!("invalid duration {text:?}: {e}{hint}"));
            None
        }
    }
}

pub(crate) fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The local API's address unless one is given: a member's `api`, and
/// `[balancer] api` in a file without `[cluster]`.
pub(crate) const DEFAULT_API: &str = "127.0.0.1:7401";

/// Parses `ip:port`. The messages cover the usual ways of getting it wrong.
pub(crate) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port must not be 0".to_string());
        }
        return Ok(addr);
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => {
            return Err("missing port; write ip:port, e.g. \"10.0.0.1:7400\"".to_string())
        }
        Ok(IpAddr::V6(_)) => return Err(
            "missing port; with a port, IPv6 addresses need brackets, e.g. \"[2001:db8::1]:7400\""
                .to_string(),
        ),
        Err(_) => {}
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        if host.contains(':') && !host.starts_with('[') {
            return Err("IPv6 addresses need brackets, e.g. \"[2001:db8::1]:7400\"".to_string());
        }
        if port.parse::<u16>().is_err() {
            return Err(format!("invalid port {port:?}; ports are 1 to 65535"));
        }
        if host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_err()
        {
            return Err(format!(
                "{host:?} is not an IP address: DNS names are not supported in this version \
                 (so a DNS outage cannot split the cluster); write the IP address"
            ));
        }
    }
    Err("expected ip:port, e.g. \"10.0.0.1:7400\"".to_string())
}

/// A command as an argv list. Shell strings are refused on purpose: uphold never runs
/// a shell, so `"nginx -s quit"` would look for a binary with spaces in its name.
#[derive(Debug, Clone)]
pub(crate) struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of strings (argv), like [\"/usr/sbin/nginx\", \"-s\", \"quit\"]; \
                     shell command lines are not accepted",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    args.push(arg);
                }
                Ok(Argv(args))
            }
        }
        deserializer.deserialize_seq(V)
    }
}

/// Checks one argv list; `required` is false only for `monitor`.
pub(crate) fn argv(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    key: &str,
    value: Option<Argv>,
    required: bool,
) -> Option<Option<Vec<String>>> {
    let Some(Argv(args)) = value else {
        if required {
            ctx.error(
                path,
                format!("{who} (type \"exec\") is missing the required key `{key}`, a command as a list, e.g. [\"/usr/sbin/nginx\"]"),
            );
            return None;
        }
        return Some(None);
    };
    if args.is_empty() {
        ctx.error(
            path,
            format!(
                "{who}: `{key}` must not be empty; give the program and its arguments as a list"
            ),
        );
        return None;
    }
    let mut ok = true;
    if args[0].trim().is_empty() {
        ctx.error(
            &path.index(0),
            format!("{who}: `{key}` names no program: its first element is empty"),
        );
        ok = false;
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.contains('\0') {
            ctx.error(
                &path.index(i),
                format!("{who}: `{key}` argument {arg:?} contains a NUL byte"),
            );
            ok = false;
        }
    }
    ok.then_some(Some(args))
}

/// The system account a command runs as (`user = "www-data"`). A name that no
/// account can have is an error; one this host does not know is a warning,
/// not an error: the config is shared by every member, and a witness or an
/// operator's machine need not have the accounts of the web servers.
pub(crate) fn system_user(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    value: Option<String>,
) -> Option<Option<String>> {
    let Some(name) = value else {
        return Some(None);
    };
    // Debian's rule for login names (adduser's NAME_REGEX, plus the `$` of
    // machine accounts), at most 32 bytes as utmp allows.
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .trim_end_matches('$')
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        ctx.error(
            path,
            format!("{who}: invalid user {name:?}: a login name such as \"www-data\" (lowercase letters, digits, `_` and `-`)"),
        );
        return None;
    }
    if !matches!(nix::unistd::User::from_name(&name), Ok(Some(_))) {
        ctx.warn(
            path,
            format!("{who}: user {name:?} does not exist on this host; its commands fail on every member that lacks it"),
        );
    }
    Some(Some(name))
}

pub(crate) fn directory(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    value: Option<String>,
    default: &str,
) -> Option<String> {
    let value = value.unwrap_or_else(|| default.to_string());
    if value.trim().is_empty() {
        ctx.error(path, "directory must not be empty");
        return None;
    }
    if value.contains('\0') {
        ctx.error(path, format!("directory {value:?} contains a NUL byte"));
        return None;
    }
    Some(value)
}

/// Longest path a Unix socket address holds (`sun_path`, less its NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Whether `path` can name the admin socket: absolute, and short enough for a
/// Unix socket address.
pub(crate) fn admin_socket_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err("must be an absolute path".to_string());
    }
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH_BYTES}"
        ));
    }
    Ok(())
}
