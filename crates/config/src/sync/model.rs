//! The typed sync set handed to the sync role.

use super::owners::Ownership;
use std::path::PathBuf;
use std::time::Duration;
use uphold_core::{GroupName, NodeName};

/// Who sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncDirection {
    /// The member currently running this group sends; the others receive.
    FollowsGroup(GroupName),
    /// This member always sends.
    Fixed(NodeName),
}

/// When the receiver forces written data to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Files of one batch are flushed together (one `syncfs`) before they are renamed
    /// into place: after a power cut a target holds old or new versions, never empty
    /// files. The default.
    Batch,
    /// Every file is fsynced before its rename, and its directory after.
    File,
    /// Never; a power cut of a target may leave empty or short files (like rsync).
    Off,
}

/// How the sender learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// fanotify for the whole filesystem when the kernel and privileges allow it,
    /// else inotify; either way periodic scanning of whatever could not be watched.
    Auto,
    Inotify,
    Fanotify,
    /// No kernel watches at all: scan every `scan_interval`.
    Scan,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SyncConfig {
    pub name: GroupName,
    /// The tree on the sending member; absolute.
    pub source: PathBuf,
    /// Where the tree lives on receiving members; absolute. Default: `source`.
    pub target: PathBuf,
    pub direction: SyncDirection,
    /// Every member taking part, senders and receivers, in file order.
    pub nodes: Vec<NodeName>,
    /// Patterns of paths left alone (gitignore-like: `*.tmp` anywhere, `/cache` at the
    /// root only, `logs/` directories only).
    pub exclude: Vec<String>,
    /// How long changes are gathered before a batch is sent.
    pub delay: Duration,
    /// Remove what is gone from the source. Default true.
    pub delete: bool,
    /// Recreate setuid and setgid bits on the targets. Default false: a member
    /// that sends a set must not be able to plant a setuid-root program on the
    /// others.
    pub preserve_privileged: bool,
    /// Which owners and groups the targets keep as sent (the rest become root).
    /// `preserve_privileged` keeps them all.
    pub ownership: Ownership,
    pub fsync: FsyncPolicy,
    pub watch: WatchMode,
    /// How often parts of the tree that could not be watched are scanned.
    pub scan_interval: Duration,
    /// How often the whole tree is compared with every target to repair drift.
    pub rescan_interval: Duration,
}

impl SyncConfig {
    /// The tree this member sends from; `{node}` in the path is replaced by the member's
    /// name (so several members can share one host, as in tests and the demo).
    pub fn source_for(&self, me: &NodeName) -> PathBuf {
        PathBuf::from(self.source.to_string_lossy().replace("{node}", me.as_str()))
    }

    /// The tree this member receives into; `{node}` as for [`SyncConfig::source_for`].
    pub fn target_for(&self, me: &NodeName) -> PathBuf {
        PathBuf::from(self.target.to_string_lossy().replace("{node}", me.as_str()))
    }

    /// Members that receive when `source` sends.
    pub fn receivers_of<'a>(&'a self, source: &'a NodeName) -> impl Iterator<Item = &'a NodeName> {
        self.nodes.iter().filter(move |n| *n != source)
    }
}
