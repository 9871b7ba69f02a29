//! Validation of `[cluster]`: its name and directories, the timing rules that
//! keep leases safe and elections calm, self-protection and the members. It also
//! warns about voter counts that survive no more failures than one fewer would,
//! and hands the groups the members they are checked against.

use super::file::{ClusterFile, GroupFile, MemberFile};
use super::groups::{validate_groups, RawMember};
use super::model::{
    ClusterConfig, CpuPriority, IoPriority, Member, MemberRole, Protection, Timing,
};
use crate::locate::KeyPath;
use crate::validate::Ctx;
use crate::values::{directory, duration, show, socket_addr, DEFAULT_API};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use uphold_core::{GroupName, NodeId, NodeName};

pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/uphold";
pub(crate) const DEFAULT_TLS_DIR: &str = "/etc/uphold/tls";
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_millis(800);
pub(crate) const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const DEFAULT_MAX_CLOCK_DRIFT: f64 = 0.01;
pub(crate) const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const DEFAULT_ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(300);
pub(crate) const DEFAULT_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);

pub(crate) fn validate_cluster(
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
