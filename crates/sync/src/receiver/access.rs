//! Who may send a set to this member: the access rule of every request, decided
//! from the set's config alone so that it is tested without a socket.

// Decides only: no clock, disk, socket or thread (clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fmt;
use uphold_config::sync::{SyncConfig, SyncDirection};
use uphold_core::NodeName;

/// Why a request for a set was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownSet {
        set: String,
    },
    NotInSet {
        set: String,
        peer: NodeName,
    },
    NotTheSender {
        set: String,
        peer: NodeName,
        from: NodeName,
    },
    ThisMemberSends {
        set: String,
    },
    /// The peer already has `open` streams here, the most it may hold.
    TooManyTransfers {
        peer: NodeName,
        open: usize,
        limit: usize,
    },
    /// The set's open streams would announce more than its temporary budget.
    TempBudget {
        set: String,
        reserved: u64,
        size: u64,
        budget: u64,
    },
    /// The target filesystem would keep less than the floor free.
    NoSpace {
        set: String,
        available: u64,
        size: u64,
        floor: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownSet { set } => {
                write!(f, "no sync set {set:?} is configured on this member")
            }
            Refusal::NotInSet { set, peer } => {
                write!(f, "{peer} takes no part in sync set {set:?}")
            }
            Refusal::NotTheSender { set, peer, from } => {
                write!(f, "sync set {set:?} is sent only by {from}, not {peer}")
            }
            Refusal::ThisMemberSends { set } => write!(
                f,
                "this member is the sender of sync set {set:?} and refuses to receive it"
            ),
            Refusal::TooManyTransfers { peer, open, limit } => {
                write!(
                    f,
                    "{peer} already has {open} transfers open (limit {limit})"
                )
            }
            Refusal::TempBudget {
                set,
                reserved,
                size,
                budget,
            } => write!(
                f,
                "sync set {set:?}: a {size}-byte transfer would take the open transfers past \
                 their budget of {budget} bytes ({reserved} already announced); it waits"
            ),
            Refusal::NoSpace {
                set,
                available,
                size,
                floor,
            } => write!(
                f,
                "sync set {set:?}: the target filesystem has {available} bytes free, not enough \
                 for {size} bytes while keeping {floor} bytes free; transfers wait until there is room"
            ),
        }
    }
}

/// The wire carries a refusal as its text.
impl From<Refusal> for String {
    fn from(refusal: Refusal) -> String {
        refusal.to_string()
    }
}

/// `peer` may send the set configured as `config` to this member, which sends
/// it itself when `this_member_sends` (then it must not receive it too).
pub fn may_send(
    config: &SyncConfig,
    peer: &NodeName,
    this_member_sends: bool,
) -> Result<(), Refusal> {
    let set = || config.name.to_string();
    if !config.nodes.contains(peer) {
        return Err(Refusal::NotInSet {
            set: set(),
            peer: peer.clone(),
        });
    }
    if let SyncDirection::Fixed(from) = &config.direction {
        if from != peer {
            return Err(Refusal::NotTheSender {
                set: set(),
                peer: peer.clone(),
                from: from.clone(),
            });
        }
    }
    if this_member_sends {
        return Err(Refusal::ThisMemberSends { set: set() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use uphold_config::sync::{FsyncPolicy, WatchMode};
    use uphold_core::GroupName;

    fn node(name: &str) -> NodeName {
        NodeName::new(name).unwrap()
    }

    fn www(direction: SyncDirection) -> SyncConfig {
        SyncConfig {
            name: GroupName::new("www").unwrap(),
            source: "/srv/www".into(),
            target: "/srv/www".into(),
            direction,
            nodes: vec![node("alpha"), node("beta")],
            exclude: Vec::new(),
            delay: Duration::from_millis(100),
            delete: true,
            preserve_privileged: false,
            ownership: Default::default(),
            fsync: FsyncPolicy::Batch,
            watch: WatchMode::Auto,
            scan_interval: Duration::from_secs(60),
            rescan_interval: Duration::from_secs(3600),
        }
    }

    #[test]
    fn only_a_member_of_the_set_that_may_send_it_is_let_in() {
        let follows = www(SyncDirection::FollowsGroup(GroupName::new("web").unwrap()));
        assert_eq!(may_send(&follows, &node("alpha"), false), Ok(()));
        assert_eq!(
            may_send(&follows, &node("gamma"), false),
            Err(Refusal::NotInSet {
                set: "www".into(),
                peer: node("gamma")
            })
        );
        assert_eq!(
            may_send(&follows, &node("alpha"), true),
            Err(Refusal::ThisMemberSends { set: "www".into() })
        );
        let fixed = www(SyncDirection::Fixed(node("alpha")));
        assert_eq!(may_send(&fixed, &node("alpha"), false), Ok(()));
        assert_eq!(
            may_send(&fixed, &node("beta"), false),
            Err(Refusal::NotTheSender {
                set: "www".into(),
                peer: node("beta"),
                from: node("alpha")
            })
        );
    }
}
