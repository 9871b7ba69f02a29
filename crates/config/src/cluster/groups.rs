//! Validation of `[[group]]`: names, the preference order in `nodes` (checked
//! against the members, witnesses refused) and each group's resources.

use super::file::{GroupFile, ResourceFile};
use super::model::GroupConfig;
use super::resources::{validate_exec, validate_ip};
use crate::locate::KeyPath;
use crate::validate::Ctx;
use std::collections::HashMap;
use std::net::IpAddr;
use uphold_core::{GroupName, NodeName};

/// What groups need to know about a member even when the member itself has errors, so
/// that one bad member does not also produce "unknown member" errors in every group.
pub(crate) struct RawMember {
    pub name: Option<String>,
    pub witness: bool,
}

pub(crate) fn validate_groups(
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
