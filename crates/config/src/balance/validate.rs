//! Validation of `[balancer]` and of each `[[balance]]` frontend: its name, its
//! listening ports (no two frontends may overlap), the keys only one mode takes,
//! TLS certificates, limits and timeouts. Servers and health checks have files of
//! their own.

use super::address::listen_spec;
use super::check::check_config;
use super::file::{BalanceFile, BalancerFile, TlsFile};
use super::model::{
    Algorithm, BalanceConfig, BalanceMode, BalancerSettings, CheckConfig, CheckKind, PortRange,
    TlsCert, DEFAULT_BALANCER_ADMIN_SOCKET,
};
use super::servers::servers;
use crate::locate::KeyPath;
use crate::validate::Ctx;
use crate::values::{admin_socket_path, duration, socket_addr, DurationText};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_RETRIES: u32 = 2;
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub(crate) const DEFAULT_QUEUE: u32 = 1_000;
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 1_000;
pub(crate) const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

pub(crate) fn validate_balancer(ctx: &mut Ctx<'_>, file: Option<BalancerFile>) -> BalancerSettings {
    let file = file.unwrap_or_default();
    let path = KeyPath::root().key("balancer");
    let threads = match file.threads {
        None => None,
        Some(n) if (1..=256).contains(&n) => Some(n as usize),
        Some(n) => {
            ctx.error(
                &path.key("threads"),
                format!("[balancer] threads = {n}: must be between 1 and 256 (leave it out for one per CPU)"),
            );
            None
        }
    };
    let api = match &file.api {
        None => BalancerSettings::default().api,
        Some(text) => match socket_addr(text) {
            Ok(a) if a.ip().is_loopback() => a,
            Ok(_) => {
                ctx.error(
                    &path.key("api"),
                    format!("[balancer] api {text:?} is not a loopback address; the HTTP API is read-only and unauthenticated, so it listens on 127.0.0.0/8 or ::1 only"),
                );
                BalancerSettings::default().api
            }
            Err(why) => {
                ctx.error(
                    &path.key("api"),
                    format!("[balancer] invalid api address {text:?}: {why}"),
                );
                BalancerSettings::default().api
            }
        },
    };
    let admin_socket = match &file.admin_socket {
        None => PathBuf::from(DEFAULT_BALANCER_ADMIN_SOCKET),
        Some(text) => {
            if let Err(why) = admin_socket_path(Path::new(text)) {
                ctx.error(
                    &path.key("admin_socket"),
                    format!("[balancer] admin_socket {text:?}: {why}"),
                );
            }
            PathBuf::from(text)
        }
    };
    BalancerSettings {
        threads,
        api,
        admin_socket,
    }
}

pub(crate) fn validate_balance(
    ctx: &mut Ctx<'_>,
    frontends: Vec<BalanceFile>,
) -> Vec<BalanceConfig> {
    let list = KeyPath::root().key("balance");
    let mut out: Vec<BalanceConfig> = Vec::new();
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    let mut ports: Vec<(IpAddr, PortRange, String)> = Vec::new();
    for (i, f) in frontends.into_iter().enumerate() {
        let p = list.index(i);
        let who = match &f.name {
            Some(n) => format!("balance {n:?}"),
            None => format!("balance frontend {}", i + 1),
        };
        let name = match &f.name {
            None => {
                ctx.error(
                    &p.key("name"),
                    format!("{who} is missing the required key `name` (e.g. name = \"web\")"),
                );
                None
            }
            Some(n) if !valid_name(n) => {
                ctx.error(
                    &p.key("name"),
                    format!(
                        "invalid balance name {n:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                    ),
                );
                None
            }
            Some(n) => {
                if let Some(first) = names.get(n) {
                    let place = ctx.place(first);
                    ctx.error(
                        &p.key("name"),
                        format!("balance name {n:?} is used twice (first at {place})"),
                    );
                    None
                } else {
                    names.insert(n.clone(), p.key("name"));
                    Some(n.clone())
                }
            }
        };
        let listen = match &f.listen {
            None => {
                ctx.error(
                    &p.key("listen"),
                    format!("{who} is missing the required key `listen`, e.g. listen = \"0.0.0.0:80\" or \"10.0.0.5:8000-8099\""),
                );
                None
            }
            Some(text) => match listen_spec(text) {
                Ok(l) => Some(l),
                Err(e) => {
                    ctx.error(&p.key("listen"), format!("{who}: listen {text:?}: {e}"));
                    None
                }
            },
        };
        if let Some((ip, range)) = listen {
            for (other_ip, other, other_name) in &ports {
                let same_ip = *other_ip == ip || other_ip.is_unspecified() || ip.is_unspecified();
                if same_ip && range.first <= other.last && other.first <= range.last {
                    ctx.error(
                        &p.key("listen"),
                        format!("{who}: its ports overlap those of balance {other_name:?}"),
                    );
                }
            }
            ports.push((ip, range, f.name.clone().unwrap_or_default()));
        }
        let mode = match f.mode.as_deref() {
            None | Some("tcp") => Some(BalanceMode::Tcp),
            Some("http") => Some(BalanceMode::Http),
            Some(other) => {
                ctx.error(
                    &p.key("mode"),
                    format!("{who}: unknown mode {other:?}; use \"tcp\" (default) or \"http\""),
                );
                None
            }
        };
        let algorithm = match f.algorithm.as_deref() {
            None | Some("roundrobin") => Some(Algorithm::RoundRobin),
            Some("leastconn") => Some(Algorithm::LeastConn),
            Some("source") => Some(Algorithm::Source),
            Some("random") => Some(Algorithm::Random),
            Some(other) => {
                ctx.error(
                    &p.key("algorithm"),
                    format!("{who}: unknown algorithm {other:?}; use \"roundrobin\" (default), \"leastconn\", \"source\" or \"random\""),
                );
                None
            }
        };
        let is_http = mode == Some(BalanceMode::Http);
        if let Some(cookie) = &f.cookie {
            if !is_http {
                ctx.error(
                    &p.key("cookie"),
                    format!("{who}: cookie persistence needs mode = \"http\""),
                );
            } else if cookie.is_empty()
                || !cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                ctx.error(
                    &p.key("cookie"),
                    format!(
                        "{who}: cookie name {cookie:?} must be letters, digits, '-', '_' or '.'"
                    ),
                );
            }
        }
        if f.forwarded_for.is_some() && !is_http {
            ctx.error(
                &p.key("forwarded_for"),
                format!("{who}: forwarded_for is for mode = \"http\"; in tcp mode use proxy_protocol on the servers"),
            );
        }
        let tls = tls_certs(ctx, &p, &who, f.tls.unwrap_or_default(), is_http);
        let retries = bounded(
            ctx,
            &p.key("retries"),
            &who,
            "retries",
            f.retries,
            DEFAULT_RETRIES as i64,
            0,
            10,
        );
        let max_connections = bounded(
            ctx,
            &p.key("max_connections"),
            &who,
            "max_connections",
            f.max_connections,
            DEFAULT_MAX_CONNECTIONS as i64,
            1,
            10_000_000,
        );
        let max_body = bounded(
            ctx,
            &p.key("max_body_bytes"),
            &who,
            "max_body_bytes",
            f.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES as i64,
            1,
            1 << 50,
        );
        let per_client = bounded(
            ctx,
            &p.key("max_connections_per_client"),
            &who,
            "max_connections_per_client",
            f.max_connections_per_client,
            DEFAULT_MAX_CONNECTIONS_PER_CLIENT as i64,
            1,
            10_000_000,
        );
        let queue = bounded(
            ctx,
            &p.key("queue"),
            &who,
            "queue",
            f.queue,
            DEFAULT_QUEUE as i64,
            0,
            10_000_000,
        );
        let max_header_bytes = bounded(
            ctx,
            &p.key("max_header_bytes"),
            &who,
            "max_header_bytes",
            f.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES as i64,
            8192,
            1024 * 1024,
        );
        let connect_timeout = duration(
            ctx,
            &p.key("connect_timeout"),
            f.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let client_timeout = duration(
            ctx,
            &p.key("client_timeout"),
            f.client_timeout.as_ref(),
            DEFAULT_CLIENT_TIMEOUT,
        );
        let server_timeout = duration(
            ctx,
            &p.key("server_timeout"),
            f.server_timeout.as_ref(),
            DEFAULT_SERVER_TIMEOUT,
        );
        let header_timeout = duration(
            ctx,
            &p.key("header_timeout"),
            f.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        let queue_timeout = duration(
            ctx,
            &p.key("queue_timeout"),
            f.queue_timeout.as_ref(),
            DEFAULT_QUEUE_TIMEOUT,
        );
        let slowstart = match &f.slowstart {
            Some(DurationText(t)) if t.trim() == "0" || t.trim() == "0s" => Some(Duration::ZERO),
            other => duration(ctx, &p.key("slowstart"), other.as_ref(), Duration::ZERO),
        };
        let check = check_config(ctx, &p.key("check"), &who, f.check);
        let servers = servers(
            ctx,
            &p,
            &who,
            f.server.unwrap_or_default(),
            listen.map(|l| l.1),
        );
        if let (
            Some(CheckConfig {
                kind: CheckKind::Agent,
                port: None,
                ..
            }),
            _,
        ) = (&check, ())
        {
            ctx.error(
                &p.key("check").key("port"),
                format!(
                    "{who}: an agent check needs `port`, the port the servers' agents listen on"
                ),
            );
        }
        let (Some(name), Some((ip, ports)), Some(mode), Some(algorithm), Some(tls)) =
            (name, listen, mode, algorithm, tls)
        else {
            continue;
        };
        let (Some(retries), Some(max_connections), Some(queue), Some(max_header_bytes)) =
            (retries, max_connections, queue, max_header_bytes)
        else {
            continue;
        };
        let (Some(per_client), Some(max_body)) = (per_client, max_body) else {
            continue;
        };
        let (
            Some(connect_timeout),
            Some(client_timeout),
            Some(server_timeout),
            Some(header_timeout),
            Some(queue_timeout),
            Some(slowstart),
        ) = (
            connect_timeout,
            client_timeout,
            server_timeout,
            header_timeout,
            queue_timeout,
            slowstart,
        )
        else {
            continue;
        };
        let (Some(check), Some(servers)) = (check, servers) else {
            continue;
        };
        if mode == BalanceMode::Http {
            if let Some(i) = servers.iter().position(|s| s.proxy_protocol.is_some()) {
                ctx.error(
                    &p.key("server").index(i).key("proxy_protocol"),
                    format!("{who}: proxy_protocol is for mode = \"tcp\"; in http mode servers get X-Forwarded-For"),
                );
                continue;
            }
        }
        out.push(BalanceConfig {
            name,
            ip,
            ports,
            mode,
            algorithm,
            cookie: if is_http { f.cookie } else { None },
            freebind: f.freebind.unwrap_or(false),
            retries: retries as u32,
            connect_timeout,
            client_timeout,
            server_timeout,
            header_timeout,
            max_connections: max_connections as u32,
            max_connections_per_client: per_client as u32,
            queue: queue as u32,
            queue_timeout,
            slowstart,
            forwarded_for: f.forwarded_for.unwrap_or(is_http),
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes: max_body as u64,
            tls,
            check,
            servers,
        });
    }
    out
}

pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bounded(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    key: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    match value {
        None => Some(default),
        Some(v) if (min..=max).contains(&v) => Some(v),
        Some(v) => {
            ctx.error(
                path,
                format!("{who}: {key} = {v} is out of range ({min} to {max})"),
            );
            None
        }
    }
}

fn tls_certs(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    list: Vec<TlsFile>,
    is_http: bool,
) -> Option<Vec<TlsCert>> {
    if !list.is_empty() && !is_http {
        ctx.error(
            &p.key("tls"),
            format!("{who}: TLS termination needs mode = \"http\" (in tcp mode the servers' TLS passes through untouched)"),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, t) in list.into_iter().enumerate() {
        let tp = p.key("tls").index(i);
        let mut file = |key: &str, v: Option<String>| -> Option<PathBuf> {
            match v {
                None => {
                    ctx.error(
                        &tp.key(key),
                        format!("{who}: tls entry {} is missing `{key}` (a PEM file)", i + 1),
                    );
                    None
                }
                Some(v) if !v.starts_with('/') => {
                    ctx.error(
                        &tp.key(key),
                        format!("{who}: {key} path {v:?} must be absolute"),
                    );
                    None
                }
                Some(v) => Some(PathBuf::from(v)),
            }
        };
        match (file("cert", t.cert), file("key", t.key)) {
            (Some(cert), Some(key)) => out.push(TlsCert { cert, key }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
