//! Why a resource could not be started, stopped or checked on this node, with
//! what the operator needs to act on it: which call failed and what the
//! command or the kernel said. The engine only sees that a step failed; the
//! text of these goes to the log, to `uphold status` and into the release the
//! log records.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;
use uphold_os::{ExecOutcome, OsError};

/// Which of an exec resource's commands ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandRole {
    Start,
    Stop,
    Monitor,
}

impl fmt::Display for CommandRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandRole::Start => "start command",
            CommandRole::Stop => "stop command",
            CommandRole::Monitor => "monitor",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: OsError,
    },
    #[error("{what}: netlink did not answer within {after:?}")]
    NetlinkTimeout { what: &'static str, after: Duration },
    /// The command could not be run at all (not found, unknown user, ...).
    #[error("{role}: {source}")]
    CannotRun {
        role: CommandRole,
        #[source]
        source: OsError,
    },
    /// The command ran and failed: its exit and the last line it wrote.
    #[error("{role} {}", outcome.summary())]
    CommandFailed {
        role: CommandRole,
        outcome: ExecOutcome,
    },
    #[error("{address} is no longer on {interface}")]
    AddressGone { address: IpAddr, interface: String },
    #[error("interface {interface} is down")]
    InterfaceDown { interface: String },
}
