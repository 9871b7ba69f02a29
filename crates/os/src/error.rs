//! The one error type of the os crate. Every variant names the object it was
//! acting on (interface, address, program) so that a log line is enough to act on.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("no tokio runtime is running; {what} must be called from inside one")]
    NoRuntime { what: &'static str },

    #[error("cannot open a netlink (rtnetlink) socket: {source}")]
    NetlinkSocket {
        #[source]
        source: io::Error,
    },

    #[error("interface {interface:?} does not exist (in this network namespace)")]
    InterfaceNotFound { interface: String },

    #[error("cannot look up interface {interface:?}: {source}")]
    InterfaceQuery {
        interface: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot {action} address {addr}/{prefix_len} on interface {interface:?}: {source}")]
    Address {
        action: &'static str,
        interface: String,
        addr: IpAddr,
        prefix_len: u8,
        #[source]
        source: io::Error,
    },

    #[error("invalid prefix length /{prefix_len} for address {addr} (at most {max})")]
    InvalidPrefix {
        addr: IpAddr,
        prefix_len: u8,
        max: u8,
    },

    #[error("interface {interface:?} has no Ethernet address, so {addr} cannot be announced by ARP/NA on it")]
    NotEthernet { interface: String, addr: IpAddr },

    #[error("cannot announce {addr} on interface {interface:?}: {source}")]
    Announce {
        interface: String,
        addr: IpAddr,
        #[source]
        source: io::Error,
    },

    #[error("command has an empty argv; nothing to run")]
    EmptyArgv,

    #[error("command {program:?} not found (is the path right and the file executable?)")]
    ExecNotFound { program: String },

    #[error("command {program:?} is to run as user {user:?}, which does not exist on this host")]
    UnknownUser { program: String, user: String },

    #[error("cannot start command {program:?}: {source}")]
    ExecSpawn {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("lost track of command {program:?} while waiting for it: {source}")]
    ExecWait {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot start the VIP guard {program:?}: {source}")]
    GuardSpawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the VIP guard process is gone ({source}); resources can no longer be protected by it"
    )]
    GuardGone {
        #[source]
        source: io::Error,
    },

    #[error("the VIP guard is not reading its input (stopped or hung); the message is queued")]
    GuardStalled,

    #[error("the VIP guard exited unsuccessfully: {status}")]
    GuardFailed { status: std::process::ExitStatus },

    #[error("the VIP guard cannot {what}: {source}")]
    GuardSetup {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot encode a message for the VIP guard: {source}")]
    GuardEncode {
        #[source]
        source: serde_json::Error,
    },
}
