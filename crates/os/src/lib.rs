//! Everything in uphold that touches the kernel, and the only crate allowed
//! `unsafe` (each block carries a `// SAFETY:` comment).
//!
//! - [`clock`]: raw CLOCK_MONOTONIC ([`monotonic_now`], [`monotonic_now_ms`],
//!   [`MonotonicClock`]), comparable between the daemon and its guard process.
//! - [`vip`]: floating addresses through rtnetlink. Keep one [`Netlink`] per
//!   process (created inside a tokio runtime, in the network namespace it
//!   manages) and call [`Netlink::add_address`], [`Netlink::remove_address`],
//!   [`Netlink::has_address`], [`Netlink::interface_is_up`]; one-shot free
//!   functions of the same names exist for rare calls.
//! - [`arp`]: announcing a moved address: [`announce`] (gratuitous ARP for
//!   IPv4, unsolicited neighbour advertisements for IPv6). Blocking.
//! - [`exec`]: running user commands from an argv with a timeout, in their own
//!   process group: [`exec::run`] → [`ExecOutcome`]; [`exec::run_watched`] also
//!   tells an [`exec::CommandWatch`] which commands are running.
//! - [`process_id`]: [`process_id::ProcessId`], a pid with its start time, so a
//!   process can be killed later without hitting one that reused the pid.
//! - [`guard`]: the VIP guard process that removes addresses and stops services
//!   when the daemon dies or overruns its lease: [`GuardClient`] on the daemon
//!   side, [`run_guard_process`] as the body of `uphold guard` ([`run_guard`]
//!   is its loop over any reader).
//! - [`confined`]: [`confined::DirFd`], directory handles that never follow a
//!   symlink out of a tree (the sync receiver writes only through these).
//! - [`watch`]: recursive directory-tree watching for replication:
//!   [`watch::TreeWatcher`] turns inotify events into [`watch::Hint`]s, falling
//!   back to periodic rescans where the watch limit is reached.
//! - [`limits`]: [`limits::raise_open_files`] at start-up.
//! - [`loopback`]: [`loopback::free_port_range`], free loopback ports for processes
//!   started on one host (the demo, the tests).
//! - [`protect`]: the daemon's self-protection on a loaded host: locked memory
//!   ([`protect::lock_memory`]), CPU priority per thread
//!   ([`protect::set_thread_cpu_priority`]), I/O priority
//!   ([`protect::set_io_priority`]).
//! - [`error`]: [`OsError`], the error type of everything else ([`protect`] has
//!   its own [`protect::ProtectError`], whose callers must tell "not permitted",
//!   an expected outcome without root, from a failure).

#![allow(unsafe_code)]

pub mod arp;
pub mod clock;
pub mod confined;
pub mod error;
pub mod exec;
pub mod guard;
pub mod limits;
pub mod loopback;
pub mod process_id;
pub mod protect;
pub mod vip;
pub mod watch;

#[cfg(test)]
mod testns;

pub use arp::{announce, send_gratuitous_arp, send_unsolicited_na};
pub use clock::{monotonic_now, monotonic_now_ms, MonotonicClock};
pub use error::OsError;
pub use exec::{ExecOutcome, ExecStatus};
pub use guard::{run_guard, run_guard_process, GuardClient, GuardMessage, GuardReady};
pub use vip::{AddOutcome, Netlink, RemoveOutcome};
