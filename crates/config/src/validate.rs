//! `validate()`: turns the file structs into the typed [`Config`], applying defaults
//! and checking every value and cross-field rule. It keeps going after a problem so
//! that one run of `uphold check` reports everything wrong with the file.

use crate::error::{ConfigError, ConfigWarning};
use crate::file::{
    Argv, ClusterFile, DurationText, ExecFile, FileConfig, GroupFile, IpFile, MemberFile,
    ResourceFile,
};
use crate::locate::{KeyPath, Locator};
use crate::model::{
    ClusterConfig, Config, CpuPriority, GroupConfig, IoPriority, Member, MemberRole, Protection,
    Timing,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use uphold_core::{ExecResource, GroupName, IpResource, NodeId, NodeName, ResourceSpec};

pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/uphold";
pub(crate) const DEFAULT_TLS_DIR: &str = "/etc/uphold/tls";
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_millis(800);
pub(crate) const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const DEFAULT_MAX_CLOCK_DRIFT: f64 = 0.01;
pub(crate) const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const DEFAULT_ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(300);
pub(crate) const DEFAULT_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);
pub(crate) const DEFAULT_API: &str = "127.0.0.1:7401";
pub(crate) const DEFAULT_ARP_COUNT: u32 = 3;
pub(crate) const MAX_ARP_COUNT: i64 = 100;
pub(crate) const DEFAULT_IP_MONITOR_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_EXEC_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const DEFAULT_FAILURES: u32 = 1;
/// Linux IFNAMSIZ is 16 including the terminating NUL.
const MAX_INTERFACE_LEN: usize = 15;

/// Collects errors and warnings, each tied to a key path and, through the locator, a line.
pub(crate) struct Ctx<'a> {
    file: &'a str,
    loc: &'a Locator<'a>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, loc: &'a Locator<'a>) -> Self {
        Ctx {
            file,
            loc,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: self.loc.line_of(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.file.to_string(),
            line: self.loc.line_of(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    /// "line 12" when the key is in the text, else its key path; for messages that
    /// point at a second place (the first of two duplicates).
    pub(crate) fn place(&self, path: &KeyPath) -> String {
        match self.loc.line_of(path) {
            Some(line) => format!("line {line}"),
            None => format!("key {path}"),
        }
    }
}

/// Builds the typed config. The result is meaningful only when `ctx.errors` is empty.
pub(crate) fn validate(file: FileConfig, ctx: &mut Ctx<'_>) -> Config {
    let root = KeyPath::root();
    if file.is_empty() {
        ctx.warn(&root, "no sections; nothing to run");
        return Config {
            cluster: None,
            sync: Vec::new(),
            balance: Vec::new(),
            balancer: Default::default(),
        };
    }
    let groups = file.group.unwrap_or_default();
    let cluster = match file.cluster {
        Some(cluster) => {
            let other_roles = file.sync.as_ref().is_some_and(|s| !s.is_empty());
            validate_cluster(ctx, cluster, groups, other_roles)
        }
        None => {
            if !groups.is_empty() {
                ctx.error(
                    &root.key("group").index(0),
                    "[[group]] needs a [cluster] section whose members can run it",
                );
                // Still check the groups themselves so every mistake shows up in one run.
                validate_groups(ctx, groups, &[]);
            }
            None
        }
    };
    let sync = crate::sync::validate_sync(ctx, file.sync.unwrap_or_default(), cluster.as_ref());
    let balance = crate::balance::validate_balance(ctx, file.balance.unwrap_or_default());
    let balancer = crate::balance::validate_balancer(ctx, file.balancer);
    Config {
        cluster,
        sync,
        balance,
        balancer,
    }
}

fn validate_cluster(
    ctx: &mut Ctx<'_>,
    c: ClusterFile,
    groups: Vec<GroupFile>,
    other_roles: bool,
) -> Option<ClusterConfig> {
    let p = KeyPath::root().key("cluster");
    let name = match c.name.clone() {
        None => {
            ctx.error(
                &p.key("name"),
                "[cluster] is missing the required key `name` (e.g. name = \"shop\")",
            );
            None
        }
        Some(name) => match GroupName::new(name.as_str()) {
            Ok(_) => Some(name),
            Err(e) => {
                ctx.error(
                    &p.key("name"),
                    format!("invalid cluster name {name:?}: {}", e.reason),
                );
                None
            }
        },
    };
    let state_dir = directory(
        ctx,
        &p.key("state_dir"),
        c.state_dir.clone(),
        DEFAULT_STATE_DIR,
    );
    let tls_dir = directory(ctx, &p.key("tls_dir"), c.tls_dir.clone(), DEFAULT_TLS_DIR);
    let timing = validate_timing(ctx, &p, &c);
    let protection = validate_protection(ctx, &p, &c);
    let raw_members: Vec<RawMember> = c
        .member
        .iter()
        .map(|m| RawMember {
            name: m.name.clone(),
            witness: m.role.as_deref() == Some("witness"),
        })
        .collect();
    let members = validate_members(ctx, &p, c.member);

    let voters = raw_members.len();
    let member_path = p.key("member");
    match voters {
        _ if groups.is_empty() => {}
        0 => {}
        1 => ctx.warn(
            &member_path,
            "a single-member cluster: no failover possible; add members to survive a node loss",
        ),
        2 => ctx.warn(
            &member_path,
            "a cluster of 2 voters stops every group when either is lost; add a witness",
        ),
        n if n % 2 == 0 => ctx.warn(
            &member_path,
            format!(
                "an even number of voters ({n}) survives no more failures than {}; \
                 add a witness or remove a member",
                n - 1
            ),
        ),
        _ => {}
    }
    if groups.is_empty() && !other_roles {
        ctx.warn(
            &KeyPath::root().key("group"),
            "no [[group]] sections; the cluster will run but hold no resources",
        );
    }
    let groups = validate_groups(ctx, groups, &raw_members);

    Some(ClusterConfig {
        name: name?,
        members: members?,
        groups: groups?,
        timing: timing?,
        state_dir: state_dir?,
        tls_dir: tls_dir?,
        protection: protection?,
    })
}

/// `lock_memory`, `cpu_priority`, `io_priority`; absent keys take the defaults of
/// [`Protection`].
fn validate_protection(ctx: &mut Ctx<'_>, p: &KeyPath, c: &ClusterFile) -> Option<Protection> {
    let default = Protection::default();
    let cpu_priority = match c.cpu_priority.as_deref() {
        None => Some(default.cpu_priority),
        Some("normal") => Some(CpuPriority::Normal),
        Some("high") => Some(CpuPriority::High),
        Some("realtime") => Some(CpuPriority::Realtime),
        Some(other) => {
            ctx.error(
                &p.key("cpu_priority"),
                format!(
                    "invalid cpu_priority {other:?}: expected \"normal\", \"high\" or \"realtime\""
                ),
            );
            None
        }
    };
    let io_priority = match c.io_priority.as_deref() {
        None => Some(default.io_priority),
        Some("normal") => Some(IoPriority::Normal),
        Some("high") => Some(IoPriority::High),
        Some(other) => {
            ctx.error(
                &p.key("io_priority"),
                format!("invalid io_priority {other:?}: expected \"normal\" or \"high\""),
            );
            None
        }
    };
    Some(Protection {
        lock_memory: c.lock_memory.unwrap_or(default.lock_memory),
        cpu_priority: cpu_priority?,
        io_priority: io_priority?,
    })
}

fn directory(
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

fn validate_timing(ctx: &mut Ctx<'_>, p: &KeyPath, c: &ClusterFile) -> Option<Timing> {
    let lease = duration(ctx, &p.key("lease"), c.lease.as_ref(), DEFAULT_LEASE);
    let renew = duration(
        ctx,
        &p.key("renew_interval"),
        c.renew_interval.as_ref(),
        DEFAULT_RENEW_INTERVAL,
    );
    let heartbeat = duration(
        ctx,
        &p.key("heartbeat_interval"),
        c.heartbeat_interval.as_ref(),
        DEFAULT_HEARTBEAT_INTERVAL,
    );
    let min = duration(
        ctx,
        &p.key("election_timeout_min"),
        c.election_timeout_min.as_ref(),
        DEFAULT_ELECTION_TIMEOUT_MIN,
    );
    let max = duration(
        ctx,
        &p.key("election_timeout_max"),
        c.election_timeout_max.as_ref(),
        DEFAULT_ELECTION_TIMEOUT_MAX,
    );
    let drift = c.max_clock_drift.unwrap_or(DEFAULT_MAX_CLOCK_DRIFT);
    let drift_ok = drift.is_finite() && (0.0..=0.5).contains(&drift);
    if !drift_ok {
        ctx.error(
            &p.key("max_clock_drift"),
            format!(
                "invalid max_clock_drift {drift}: must be between 0 and 0.5 (e.g. 0.01 for 1%)"
            ),
        );
    }
    let (lease, renew, heartbeat, min, max) = (lease?, renew?, heartbeat?, min?, max?);
    let mut ok = drift_ok;
    if renew > lease / 3 {
        ctx.error(
            &p.key("renew_interval"),
            format!(
                "renew_interval {} must be at most a third of lease {} ({}), so a node can miss \
                 two renewals before its lease runs out",
                show(renew),
                show(lease),
                show(lease / 3)
            ),
        );
        ok = false;
    }
    if min <= heartbeat {
        ctx.error(
            &p.key("election_timeout_min"),
            format!(
                "election_timeout_min {} must be greater than heartbeat_interval {}, or followers \
                 start elections against a healthy leader",
                show(min),
                show(heartbeat)
            ),
        );
        ok = false;
    }
    if max <= min {
        ctx.error(
            &p.key("election_timeout_max"),
            format!(
                "election_timeout_max {} must be greater than election_timeout_min {} \
                 (the gap spreads candidates apart)",
                show(max),
                show(min)
            ),
        );
        ok = false;
    }
    ok.then_some(Timing {
        lease,
        renew_interval: renew,
        max_clock_drift: drift,
        heartbeat_interval: heartbeat,
        election_timeout_min: min,
        election_timeout_max: max,
    })
}

/// What groups need to know about a member even when the member itself has errors, so
/// that one bad member does not also produce "unknown member" errors in every group.
struct RawMember {
    name: Option<String>,
    witness: bool,
}

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

fn validate_members(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    members: Vec<MemberFile>,
) -> Option<Vec<Member>> {
    let list_path = p.key("member");
    if members.is_empty() {
        ctx.error(
            &list_path,
            "a cluster needs at least one [[cluster.member]] (three voters to survive a failure)",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut all_ok = true;
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    let mut ids: HashMap<NodeId, (String, KeyPath)> = HashMap::new();
    let mut addresses: HashMap<SocketAddr, KeyPath> = HashMap::new();
    for (i, m) in members.into_iter().enumerate() {
        let mp = list_path.index(i);
        let who = match &m.name {
            Some(name) => format!("member {name:?}"),
            None => format!("member {}", i + 1),
        };
        let name = match m.name {
            None => {
                ctx.error(
                    &mp.key("name"),
                    format!("{who} is missing the required key `name`"),
                );
                None
            }
            Some(name) => match NodeName::new(name.as_str()) {
                Err(e) => {
                    ctx.error(
                        &mp.key("name"),
                        format!("invalid member name {name:?}: {}", e.reason),
                    );
                    None
                }
                Ok(node) => {
                    let np = mp.key("name");
                    if let Some(first) = names.get(&name) {
                        let place = ctx.place(first);
                        ctx.error(
                            &np,
                            format!("member name {name:?} is used twice (first at {place})"),
                        );
                        None
                    } else if let Some((other, first)) = ids.get(&node.id()) {
                        let place = ctx.place(first);
                        ctx.error(
                            &np,
                            format!(
                                "member names {name:?} and {other:?} ({place}) map to the same node \
                                 id {:#x}; rename one of them",
                                node.id()
                            ),
                        );
                        None
                    } else {
                        names.insert(name.clone(), np.clone());
                        ids.insert(node.id(), (name, np));
                        Some(node)
                    }
                }
            },
        };
        let address = match m.address {
            None => {
                ctx.error(
                    &mp.key("address"),
                    format!(
                        "{who} is missing the required key `address` (ip:port peers connect to)"
                    ),
                );
                None
            }
            Some(text) => match socket_addr(&text) {
                Err(why) => {
                    ctx.error(
                        &mp.key("address"),
                        format!("{who}: invalid address {text:?}: {why}"),
                    );
                    None
                }
                Ok(addr) if addr.ip().is_unspecified() => {
                    ctx.error(
                        &mp.key("address"),
                        format!(
                            "{who}: invalid address {text:?}: peers cannot connect to an unspecified \
                             address; write this member's real IP and set `listen` to bind a wildcard"
                        ),
                    );
                    None
                }
                Ok(addr) => {
                    let ap = mp.key("address");
                    if let Some(first) = addresses.get(&addr) {
                        let place = ctx.place(first);
                        ctx.error(&ap, format!("{who}: address {text:?} is already used by another member ({place})"));
                        None
                    } else {
                        addresses.insert(addr, ap);
                        Some(addr)
                    }
                }
            },
        };
        let listen = match m.listen {
            None => address,
            Some(text) => match socket_addr(&text) {
                Err(why) => {
                    ctx.error(
                        &mp.key("listen"),
                        format!("{who}: invalid listen address {text:?}: {why}"),
                    );
                    None
                }
                Ok(addr) => Some(addr),
            },
        };
        let api_text = m.api.unwrap_or_else(|| DEFAULT_API.to_string());
        let api = match socket_addr(&api_text) {
            Err(why) => {
                ctx.error(
                    &mp.key("api"),
                    format!("{who}: invalid api address {api_text:?}: {why}"),
                );
                None
            }
            Ok(addr) if !addr.ip().is_loopback() => {
                // The API has no authentication yet: anyone who can reach it could
                // read the cluster's state, so it stays on this host.
                ctx.error(
                    &mp.key("api"),
                    format!(
                        "{who}: api address {api_text:?} is not a loopback address; the API has no authentication yet, so it listens on 127.0.0.0/8 or ::1 only"
                    ),
                );
                None
            }
            Ok(addr) => Some(addr),
        };
        let role = match m.role.as_deref() {
            None | Some("node") => Some(MemberRole::Node),
            Some("witness") => Some(MemberRole::Witness),
            Some(other) => {
                ctx.error(
                    &mp.key("role"),
                    format!("{who}: invalid role {other:?}: expected \"node\" or \"witness\""),
                );
                None
            }
        };
        match (name, address, listen, api, role) {
            (Some(name), Some(address), Some(listen), Some(api), Some(role)) => out.push(Member {
                id: name.id(),
                name,
                address,
                listen,
                api,
                role,
            }),
            _ => all_ok = false,
        }
    }
    all_ok.then_some(out)
}

fn validate_groups(
    ctx: &mut Ctx<'_>,
    groups: Vec<GroupFile>,
    members: &[RawMember],
) -> Option<Vec<GroupConfig>> {
    let list_path = KeyPath::root().key("group");
    let mut out = Vec::new();
    let mut all_ok = true;
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    // Every floating address in the file, with the group holding it and where.
    let mut vips: HashMap<IpAddr, (String, KeyPath)> = HashMap::new();
    for (gi, g) in groups.into_iter().enumerate() {
        let gp = list_path.index(gi);
        let who = match &g.name {
            Some(name) => format!("group {name:?}"),
            None => format!("group {}", gi + 1),
        };
        let name = match &g.name {
            None => {
                ctx.error(
                    &gp.key("name"),
                    format!("{who} is missing the required key `name`"),
                );
                None
            }
            Some(name) => match GroupName::new(name.as_str()) {
                Err(e) => {
                    ctx.error(
                        &gp.key("name"),
                        format!("invalid group name {name:?}: {}", e.reason),
                    );
                    None
                }
                Ok(group) => {
                    if let Some(first) = names.get(name) {
                        let place = ctx.place(first);
                        ctx.error(
                            &gp.key("name"),
                            format!("group name {name:?} is used twice (first at {place})"),
                        );
                        None
                    } else {
                        names.insert(name.clone(), gp.key("name"));
                        Some(group)
                    }
                }
            },
        };
        let nodes = group_nodes(ctx, &gp, &who, g.nodes, members);
        let mut resources = Some(Vec::new());
        if g.resource.is_empty() {
            ctx.error(
                &gp.key("resource"),
                format!("{who} has no resources; add at least one [[group.resource]]"),
            );
            resources = None;
        }
        let mut exec_names: HashMap<String, KeyPath> = HashMap::new();
        for (ri, r) in g.resource.into_iter().enumerate() {
            let rp = gp.key("resource").index(ri);
            let rwho = format!("{who} resource {}", ri + 1);
            let spec = match r {
                ResourceFile::Ip(ip) => validate_ip(
                    ctx,
                    &rp,
                    &rwho,
                    ip,
                    g.name.as_deref().unwrap_or(""),
                    &mut vips,
                ),
                ResourceFile::Exec(exec) => validate_exec(ctx, &rp, &rwho, exec, &mut exec_names),
            };
            match (spec, resources.as_mut()) {
                (Some(spec), Some(list)) => list.push(spec),
                _ => resources = None,
            }
        }
        match (name, nodes, resources) {
            (Some(name), Some(nodes), Some(resources)) => out.push(GroupConfig {
                name,
                nodes,
                failback: g.failback.unwrap_or(false),
                resources,
            }),
            _ => all_ok = false,
        }
    }
    all_ok.then_some(out)
}

/// The group's preference order: as written, or every `node` member in file order.
fn group_nodes(
    ctx: &mut Ctx<'_>,
    gp: &KeyPath,
    who: &str,
    nodes: Option<Vec<String>>,
    members: &[RawMember],
) -> Option<Vec<NodeName>> {
    let np = gp.key("nodes");
    let known = || {
        let names: Vec<&str> = members.iter().filter_map(|m| m.name.as_deref()).collect();
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    };
    let Some(nodes) = nodes else {
        if members.is_empty() {
            // Either no [cluster] (already reported) or no members (already reported).
            return None;
        }
        let defaulted: Option<Vec<NodeName>> = members
            .iter()
            .filter(|m| !m.witness)
            .map(|m| m.name.as_deref().and_then(|n| NodeName::new(n).ok()))
            .collect();
        return match defaulted {
            Some(list) if list.is_empty() => {
                ctx.error(
                    &np,
                    format!(
                        "{who} has no member with role \"node\" to run on; witnesses only vote"
                    ),
                );
                None
            }
            // A member with a bad name is reported on its own; no need to repeat it here.
            other => other,
        };
    };
    if nodes.is_empty() {
        ctx.error(
            &np,
            format!("{who}: nodes is empty; list at least one member, or leave `nodes` out to use every node"),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (k, node) in nodes.iter().enumerate() {
        let kp = np.index(k);
        if nodes[..k].contains(node) {
            ctx.error(
                &kp,
                format!("{who}: member {node:?} is listed twice in nodes"),
            );
            ok = false;
            continue;
        }
        if members.is_empty() {
            // No [cluster]: the missing section is the error, not every name in the list.
            ok = false;
            continue;
        }
        match members
            .iter()
            .find(|m| m.name.as_deref() == Some(node.as_str()))
        {
            None => {
                ctx.error(
                    &kp,
                    format!(
                        "{who}: unknown member {node:?} in nodes; members are: {}",
                        known()
                    ),
                );
                ok = false;
            }
            Some(m) if m.witness => {
                ctx.error(
                    &kp,
                    format!("{who}: member {node:?} is a witness; witnesses only vote and never run groups"),
                );
                ok = false;
            }
            Some(_) => match NodeName::new(node.as_str()) {
                Ok(name) => out.push(name),
                // The member's own entry reports the bad name.
                Err(_) => ok = false,
            },
        }
    }
    ok.then_some(out)
}

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

fn validate_ip(
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

/// Checks one argv list; `required` is false only for `monitor`.
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

fn validate_exec(
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
