//! Validation of `[[sync]]` sets: their trees, who sends and who receives
//! (checked against the cluster's members and groups), timings, ownership lists,
//! and that no two sets write into each other's trees.

use super::file::SyncFile;
use super::model::{FsyncPolicy, SyncConfig, SyncDirection, WatchMode};
use super::owners::{kept_ids, IdKind, Ownership};
use crate::locate::KeyPath;
use crate::model::{ClusterConfig, MemberRole};
use crate::validate::Ctx;
use crate::values::{duration, show};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use uphold_core::{GroupName, NodeName};

pub(crate) const DEFAULT_SYNC_DELAY: Duration = Duration::from_millis(20);
pub(crate) const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn validate_sync(
    ctx: &mut Ctx<'_>,
    sets: Vec<SyncFile>,
    cluster: Option<&ClusterConfig>,
) -> Vec<SyncConfig> {
    let list = KeyPath::root().key("sync");
    let mut out: Vec<(usize, SyncConfig)> = Vec::new();
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    for (i, s) in sets.into_iter().enumerate() {
        let p = list.index(i);
        let who = match &s.name {
            Some(name) => format!("sync {name:?}"),
            None => format!("sync set {}", i + 1),
        };
        let name = match &s.name {
            None => {
                ctx.error(
                    &p.key("name"),
                    format!("{who} is missing the required key `name` (e.g. name = \"www\")"),
                );
                None
            }
            Some(name) => match GroupName::new(name.as_str()) {
                Err(e) => {
                    ctx.error(
                        &p.key("name"),
                        format!("invalid sync name {name:?}: {}", e.reason),
                    );
                    None
                }
                Ok(valid) => {
                    if let Some(first) = names.get(name) {
                        let place = ctx.place(first);
                        ctx.error(
                            &p.key("name"),
                            format!("sync name {name:?} is used twice (first at {place})"),
                        );
                        None
                    } else {
                        names.insert(name.clone(), p.key("name"));
                        Some(valid)
                    }
                }
            },
        };
        let source = match &s.source {
            None => {
                ctx.error(
                    &p.key("source"),
                    format!("{who} is missing the required key `source`, the directory to replicate (e.g. source = \"/var/www\")"),
                );
                None
            }
            Some(path) => tree_path(ctx, &p.key("source"), &who, path),
        };
        let target = match &s.target {
            None => source.clone(),
            Some(path) => tree_path(ctx, &p.key("target"), &who, path),
        };
        let (direction, nodes) = direction_and_nodes(ctx, &p, &who, &s, cluster);
        let exclude = exclude_patterns(ctx, &p.key("exclude"), &who, s.exclude.unwrap_or_default());
        let delay = duration(ctx, &p.key("delay"), s.delay.as_ref(), DEFAULT_SYNC_DELAY);
        let scan_interval = duration(
            ctx,
            &p.key("scan_interval"),
            s.scan_interval.as_ref(),
            DEFAULT_SCAN_INTERVAL,
        );
        let rescan_interval = duration(
            ctx,
            &p.key("rescan_interval"),
            s.rescan_interval.as_ref(),
            DEFAULT_RESCAN_INTERVAL,
        );
        let fsync = match s.fsync.as_deref() {
            None | Some("batch") => Some(FsyncPolicy::Batch),
            Some("file") => Some(FsyncPolicy::File),
            Some("off") => Some(FsyncPolicy::Off),
            Some(other) => {
                ctx.error(
                    &p.key("fsync"),
                    format!("{who}: unknown fsync policy {other:?}; use \"batch\" (default), \"file\" or \"off\""),
                );
                None
            }
        };
        let watch = match s.watch.as_deref() {
            None | Some("auto") => Some(WatchMode::Auto),
            Some("inotify") => Some(WatchMode::Inotify),
            Some("fanotify") => Some(WatchMode::Fanotify),
            Some("scan") => Some(WatchMode::Scan),
            Some(other) => {
                ctx.error(
                    &p.key("watch"),
                    format!("{who}: unknown watch mode {other:?}; use \"auto\" (default), \"inotify\", \"fanotify\" or \"scan\""),
                );
                None
            }
        };
        let owners = kept_ids(ctx, &p.key("owners"), &who, IdKind::User, s.owners);
        let groups = kept_ids(ctx, &p.key("groups"), &who, IdKind::Group, s.groups);
        let ownership = owners
            .zip(groups)
            .map(|(owners, groups)| Ownership { owners, groups });
        if let Some(delay) = delay {
            if delay > Duration::from_secs(60) {
                ctx.warn(
                    &p.key("delay"),
                    format!("{who}: a delay of {} lets changes wait that long before they are sent; the default is 20ms", show(delay)),
                );
            }
        }
        if let (Some(name), Some(source), Some(target), Some((direction, nodes)), Some(exclude)) =
            (name, source, target, direction.zip(nodes), exclude)
        {
            if let (
                Some(delay),
                Some(scan_interval),
                Some(rescan_interval),
                Some(fsync),
                Some(watch),
                Some(ownership),
            ) = (
                delay,
                scan_interval,
                rescan_interval,
                fsync,
                watch,
                ownership,
            ) {
                out.push((
                    i,
                    SyncConfig {
                        name,
                        source,
                        target,
                        direction,
                        nodes,
                        exclude,
                        delay,
                        delete: s.delete.unwrap_or(true),
                        preserve_privileged: s.preserve_privileged.unwrap_or(false),
                        ownership,
                        fsync,
                        watch,
                        scan_interval,
                        rescan_interval,
                    },
                ));
            }
        }
    }
    check_overlaps(ctx, &list, &out);
    out.into_iter().map(|(_, set)| set).collect()
}

fn tree_path(ctx: &mut Ctx<'_>, path: &KeyPath, who: &str, text: &str) -> Option<PathBuf> {
    if text.contains('\0') {
        ctx.error(path, format!("{who}: path {text:?} contains a NUL byte"));
        return None;
    }
    let p = PathBuf::from(text);
    if !p.is_absolute() {
        ctx.error(
            path,
            format!("{who}: path {text:?} must be absolute (start with /)"),
        );
        return None;
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        ctx.error(path, format!("{who}: path {text:?} must not contain `..`"));
        return None;
    }
    if p.parent().is_none() {
        ctx.error(
            path,
            format!("{who}: refusing to replicate the root directory `/`"),
        );
        return None;
    }
    Some(p)
}

fn member_name(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    text: &str,
    cluster: &ClusterConfig,
) -> Option<NodeName> {
    match cluster.member(text) {
        None => {
            let known: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
            ctx.error(
                path,
                format!(
                    "{who}: {text:?} is not a member of the cluster (members: {})",
                    known.join(", ")
                ),
            );
            None
        }
        Some(m) if m.role == MemberRole::Witness => {
            ctx.error(
                path,
                format!("{who}: {text:?} is a witness; a witness holds no data"),
            );
            None
        }
        Some(m) => Some(m.name.clone()),
    }
}

type DirectionAndNodes = (Option<SyncDirection>, Option<Vec<NodeName>>);

fn direction_and_nodes(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    s: &SyncFile,
    cluster: Option<&ClusterConfig>,
) -> DirectionAndNodes {
    let Some(cluster) = cluster else {
        ctx.error(
            p,
            format!("{who} needs a [cluster] section naming its members, their addresses and certificates (a cluster without [[group]] runs no consensus, only the transport)"),
        );
        return (None, None);
    };
    match (&s.group, &s.from) {
        (Some(_), Some(_)) => {
            ctx.error(
                &p.key("from"),
                format!("{who}: give either `group` (the member running the group sends) or `from` (a fixed sender), not both"),
            );
            (None, None)
        }
        (None, None) => {
            ctx.error(
                p,
                format!("{who} must say who sends: `group = \"NAME\"` to follow a group, or `from = \"MEMBER\"` for a fixed sender"),
            );
            (None, None)
        }
        (Some(group), None) => {
            if s.to.is_some() {
                ctx.error(
                    &p.key("to"),
                    format!("{who}: `to` is only for a fixed sender (`from`); with `group` every node of the group receives while another runs it"),
                );
            }
            match cluster.group(group) {
                None => {
                    let known: Vec<&str> = cluster.groups.iter().map(|g| g.name.as_str()).collect();
                    ctx.error(
                        &p.key("group"),
                        format!(
                            "{who}: no group {group:?} in this file (groups: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    (None, None)
                }
                Some(g) if g.nodes.len() < 2 => {
                    ctx.error(
                        &p.key("group"),
                        format!("{who}: group {group:?} can run on only one node, so there is nobody to replicate to"),
                    );
                    (None, None)
                }
                Some(g) => (
                    Some(SyncDirection::FollowsGroup(g.name.clone())),
                    Some(g.nodes.clone()),
                ),
            }
        }
        (None, Some(from)) => {
            let Some(from) = member_name(ctx, &p.key("from"), who, from, cluster) else {
                return (None, None);
            };
            let mut nodes = vec![from.clone()];
            match &s.to {
                None => nodes.extend(
                    cluster
                        .members
                        .iter()
                        .filter(|m| m.role == MemberRole::Node && m.name != from)
                        .map(|m| m.name.clone()),
                ),
                Some(to) => {
                    let mut ok = true;
                    for (i, t) in to.iter().enumerate() {
                        let tp = p.key("to").index(i);
                        match member_name(ctx, &tp, who, t, cluster) {
                            Some(n) if n == from => {
                                ctx.error(&tp, format!("{who}: {t:?} is the sender itself"));
                                ok = false;
                            }
                            Some(n) if nodes.contains(&n) => {
                                ctx.error(&tp, format!("{who}: {t:?} is listed twice"));
                                ok = false;
                            }
                            Some(n) => nodes.push(n),
                            None => ok = false,
                        }
                    }
                    if !ok {
                        return (None, None);
                    }
                }
            }
            if nodes.len() < 2 {
                ctx.error(
                    &p.key("to"),
                    format!(
                        "{who}: nobody to replicate to; add another member or list targets in `to`"
                    ),
                );
                return (None, None);
            }
            (Some(SyncDirection::Fixed(from)), Some(nodes))
        }
    }
}

fn exclude_patterns(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    patterns: Vec<String>,
) -> Option<Vec<String>> {
    let mut ok = true;
    for (i, pat) in patterns.iter().enumerate() {
        let problem = if pat.trim().is_empty() {
            Some("is empty")
        } else if pat.contains('\0') {
            Some("contains a NUL byte")
        } else if pat.split('/').any(|c| c == "..") {
            Some("contains `..`")
        } else if pat == "/" || pat == "**" || pat == "/**" || pat == "*" {
            Some("would exclude the whole tree")
        } else {
            None
        };
        if let Some(problem) = problem {
            ctx.error(
                &path.index(i),
                format!("{who}: exclude pattern {pat:?} {problem}"),
            );
            ok = false;
        }
    }
    ok.then_some(patterns)
}

/// Two sets must not write into each other's trees, or each would replicate the
/// other's changes back and forth.
fn check_overlaps(ctx: &mut Ctx<'_>, list: &KeyPath, sets: &[(usize, SyncConfig)]) {
    for (i, (_, a)) in sets.iter().enumerate() {
        for (j, b) in &sets[i + 1..] {
            let nested = |x: &PathBuf, y: &PathBuf| x.starts_with(y) || y.starts_with(x);
            if nested(&a.source, &b.source) || nested(&a.target, &b.target) {
                let j = *j;
                ctx.error(
                    &list.index(j).key("source"),
                    format!(
                        "sync {:?} overlaps sync {:?}: their trees are the same or nested",
                        b.name.as_str(),
                        a.name.as_str()
                    ),
                );
            }
        }
    }
}
