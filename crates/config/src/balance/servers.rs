//! Validation of a frontend's `[[balance.server]]` entries: unique names,
//! addresses whose ports fit the frontend's, weights, limits and PROXY protocol.

use super::address::server_address;
use super::file::ServerFile;
use super::model::{PortRange, ProxyProtocol, ServerConfig};
use super::validate::{bounded, valid_name};
use crate::locate::KeyPath;
use crate::validate::Ctx;
use std::collections::HashMap;

pub(crate) const MAX_WEIGHT: u32 = 256;

pub(super) fn servers(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    list: Vec<ServerFile>,
    listen: Option<PortRange>,
) -> Option<Vec<ServerConfig>> {
    if list.is_empty() {
        ctx.error(
            &p.key("server"),
            format!(
                "{who} has no servers; add at least one [[balance.server]] with name and address"
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    for (i, s) in list.into_iter().enumerate() {
        let sp = p.key("server").index(i);
        let swho = match &s.name {
            Some(n) => format!("{who} server {n:?}"),
            None => format!("{who} server {}", i + 1),
        };
        let name = match s.name {
            None => {
                ctx.error(
                    &sp.key("name"),
                    format!("{swho} is missing the required key `name`"),
                );
                None
            }
            Some(n) if !valid_name(&n) => {
                ctx.error(
                    &sp.key("name"),
                    format!(
                        "invalid server name {n:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                    ),
                );
                None
            }
            Some(n) => {
                if let Some(first) = names.get(&n) {
                    let place = ctx.place(first);
                    ctx.error(
                        &sp.key("name"),
                        format!("{swho}: the name is used twice (first at {place})"),
                    );
                    None
                } else {
                    names.insert(n.clone(), sp.key("name"));
                    Some(n)
                }
            }
        };
        let address = match &s.address {
            None => {
                ctx.error(
                    &sp.key("address"),
                    format!("{swho} is missing the required key `address`, e.g. address = \"10.0.0.11:80\""),
                );
                None
            }
            Some(text) => match server_address(text, listen) {
                Ok(a) => Some(a),
                Err(e) => {
                    ctx.error(&sp.key("address"), format!("{swho}: address {text:?}: {e}"));
                    None
                }
            },
        };
        let weight = bounded(
            ctx,
            &sp.key("weight"),
            &swho,
            "weight",
            s.weight,
            1,
            0,
            MAX_WEIGHT as i64,
        );
        let maxconn = bounded(
            ctx,
            &sp.key("maxconn"),
            &swho,
            "maxconn",
            s.maxconn,
            0,
            0,
            10_000_000,
        );
        let proxy_protocol = match s.proxy_protocol.as_deref() {
            None => Some(None),
            Some("v1") => Some(Some(ProxyProtocol::V1)),
            Some("v2") => Some(Some(ProxyProtocol::V2)),
            Some(other) => {
                ctx.error(
                    &sp.key("proxy_protocol"),
                    format!("{swho}: unknown proxy_protocol {other:?}; use \"v1\" or \"v2\""),
                );
                None
            }
        };
        match (name, address, weight, maxconn, proxy_protocol) {
            (Some(name), Some((ip, port)), Some(weight), Some(maxconn), Some(proxy_protocol)) => {
                out.push(ServerConfig {
                    name,
                    ip,
                    port,
                    weight: weight as u32,
                    backup: s.backup.unwrap_or(false),
                    maxconn: maxconn as u32,
                    proxy_protocol,
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
