//! Which member this process is. The same file is copied to every node, so the node
//! finds itself by an explicit name (`--node` or `UPHOLD_NODE`) or by its hostname.

use crate::error::ConfigError;
use crate::model::{ClusterConfig, Member};

/// Picks this process's member: `explicit` when given (the caller passes the `--node`
/// flag or the `UPHOLD_NODE` variable, whichever it has), else the short hostname.
pub fn select_member<'a>(
    cluster: &'a ClusterConfig,
    explicit: Option<&str>,
) -> Result<&'a Member, ConfigError> {
    select_member_with(cluster, explicit, short_hostname)
}

/// The hostname up to its first dot, lowercased (member names are lowercase and
/// hostnames are case-insensitive). `None` when it cannot be read.
pub fn short_hostname() -> Option<String> {
    let full = hostname::get().ok()?;
    let full = full.to_str()?.trim();
    let short = full.split('.').next().unwrap_or(full);
    (!short.is_empty()).then(|| short.to_ascii_lowercase())
}

pub(crate) fn select_member_with<'a>(
    cluster: &'a ClusterConfig,
    explicit: Option<&str>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<&'a Member, ConfigError> {
    let names = cluster
        .members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let error = |message: String| ConfigError {
        file: String::new(),
        line: None,
        key: "cluster.member".to_string(),
        message,
    };
    if let Some(name) = explicit {
        return cluster.member(name).ok_or_else(|| {
            error(format!(
                "no member named {name:?} (chosen by --node or UPHOLD_NODE); members are: {names}"
            ))
        });
    }
    let Some(host) = hostname() else {
        return Err(error(format!(
            "cannot read this host's name to pick a member; pass --node NAME or set \
             UPHOLD_NODE (members are: {names})"
        )));
    };
    cluster.member(&host).ok_or_else(|| {
        error(format!(
            "this host is named {host:?} and no member has that name; pass --node NAME or set \
             UPHOLD_NODE (members are: {names})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;

    fn cluster() -> ClusterConfig {
        let text = "[cluster]\nname = \"c\"\n\
                    [[cluster.member]]\nname = \"web1\"\naddress = \"10.0.0.1:7400\"\n\
                    [[cluster.member]]\nname = \"web2\"\naddress = \"10.0.0.2:7400\"\n";
        parse_str(text, "t.toml").unwrap().config.cluster.unwrap()
    }

    #[test]
    fn explicit_name_wins_over_hostname() {
        let c = cluster();
        let m = select_member_with(&c, Some("web2"), || Some("web1".into())).unwrap();
        assert_eq!(m.name.as_str(), "web2");
    }

    #[test]
    fn hostname_is_used_without_an_explicit_name() {
        let c = cluster();
        let m = select_member_with(&c, None, || Some("web1".into())).unwrap();
        assert_eq!(m.name.as_str(), "web1");
    }

    #[test]
    fn unknown_hostname_lists_members_and_how_to_choose() {
        let c = cluster();
        let e = select_member_with(&c, None, || Some("db7".into())).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("\"db7\""), "{shown}");
        assert!(shown.contains("members are: web1, web2"), "{shown}");
        assert!(
            shown.contains("--node NAME") && shown.contains("UPHOLD_NODE"),
            "{shown}"
        );
        let e = select_member_with(&c, None, || None).unwrap_err();
        assert!(e.message.contains("cannot read this host's name"), "{e}");
    }

    #[test]
    fn short_hostname_is_lowercase_without_domain() {
        let host = short_hostname().expect("a Linux host always has a name");
        assert!(!host.is_empty());
        assert!(!host.contains('.'), "{host}");
        assert_eq!(host, host.to_ascii_lowercase());
    }
}
