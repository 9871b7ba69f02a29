//! What `uphold status` and the metrics show about file sync: per set its role and
//! watcher, per target the lag (age of the oldest change not yet there), the queue, what
//! was sent and the last error; and what this member received. Plain serde data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    pub sets: Vec<SetStatus>,
    pub received: ReceivedStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SetStatus {
    pub name: String,
    pub source: String,
    pub target: String,
    /// "sender", "receiver" or "not taking part".
    pub role: String,
    /// Who sends: "group web" or "member a".
    pub direction: String,
    pub watch: Option<WatchStatus>,
    pub targets: Vec<TargetStatus>,
    /// A problem of the set as a whole (source missing, watcher failed).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchStatus {
    pub backend: String,
    pub watched_dirs: u64,
    /// Directories scanned periodically because the watch limit was reached.
    pub unwatched_dirs: u64,
    pub overflows: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TargetStatus {
    pub node: String,
    /// "up", "syncing", "down" or "halted".
    pub state: String,
    /// The start-up comparison with this target has finished.
    pub initial_done: bool,
    pub lag_ms: u64,
    pub queued: u64,
    pub batches: u64,
    pub files_sent: u64,
    pub file_bytes: u64,
    pub delta_files: u64,
    pub deletes: u64,
    pub renames: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReceivedStatus {
    pub files_written: u64,
    pub bytes_written: u64,
    pub deletes: u64,
    pub renames: u64,
    pub refused: u64,
}

pub(crate) fn load(v: &AtomicU64) -> u64 {
    v.load(std::sync::atomic::Ordering::Relaxed)
}

impl SyncStatus {
    /// Human-readable rendering for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for set in &self.sets {
            out.push_str(&format!(
                "sync {}  {} -> {}  ({}, sent by {})\n",
                set.name, set.source, set.target, set.role, set.direction
            ));
            if let Some(w) = &set.watch {
                out.push_str(&format!(
                    "  watching: {} ({} dirs watched, {} scanned periodically, {} overflows)\n",
                    w.backend, w.watched_dirs, w.unwatched_dirs, w.overflows
                ));
            }
            if let Some(e) = &set.error {
                out.push_str(&format!("  ERROR: {e}\n"));
            }
            if !set.targets.is_empty() {
                out.push_str(&format!(
                    "  {:<12} {:<8} {:>9} {:>7} {:>9} {:>11}  last error\n",
                    "target", "state", "lag", "queued", "files", "sent"
                ));
            }
            for t in &set.targets {
                out.push_str(&format!(
                    "  {:<12} {:<8} {:>7}ms {:>7} {:>9} {:>11}  {}\n",
                    t.node,
                    t.state,
                    t.lag_ms,
                    t.queued,
                    t.files_sent,
                    human_bytes(t.bytes_sent),
                    t.last_error.as_deref().unwrap_or("-")
                ));
            }
        }
        if self.received.files_written + self.received.deletes + self.received.refused > 0 {
            out.push_str(&format!(
                "received: {} files ({}), {} deletes, {} renames, {} refused requests\n",
                self.received.files_written,
                human_bytes(self.received.bytes_written),
                self.received.deletes,
                self.received.renames,
                self.received.refused
            ));
        }
        out
    }

    /// Registers the same figures in `registry` (names `sync_*` below the
    /// daemon's `uphold` prefix).
    pub fn register_metrics(&self, registry: &mut Registry) {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct TargetLabels {
            set: String,
            target: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct SetLabels {
            set: String,
        }
        let registry = registry.sub_registry_with_prefix("sync");
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<TargetLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let lag = gauge(
            registry,
            "lag_milliseconds",
            "Age of the oldest change not yet on the target",
        );
        let queued = gauge(registry, "queued_paths", "Places waiting to be compared");
        let up = gauge(
            registry,
            "target_up",
            "1 when the target is reachable and not halted",
        );
        let files = gauge(registry, "files_sent", "Files sent since start");
        let bytes = gauge(
            registry,
            "wire_bytes_sent",
            "Message bytes sent since start",
        );
        let errors = gauge(registry, "errors", "Operations that failed since start");
        let sender = Family::<SetLabels, Gauge>::default();
        registry.register(
            "is_sender",
            "1 when this member sends the set",
            sender.clone(),
        );
        let unwatched = Family::<SetLabels, Gauge>::default();
        registry.register(
            "unwatched_directories",
            "Directories scanned periodically because the watch limit was reached",
            unwatched.clone(),
        );
        for set in &self.sets {
            let sl = SetLabels {
                set: set.name.clone(),
            };
            sender
                .get_or_create(&sl)
                .set(i64::from(set.role == "sender"));
            if let Some(w) = &set.watch {
                unwatched.get_or_create(&sl).set(w.unwatched_dirs as i64);
            }
            for t in &set.targets {
                let l = TargetLabels {
                    set: set.name.clone(),
                    target: t.node.clone(),
                };
                lag.get_or_create(&l).set(t.lag_ms as i64);
                queued.get_or_create(&l).set(t.queued as i64);
                up.get_or_create(&l)
                    .set(i64::from(t.state == "up" || t.state == "syncing"));
                files.get_or_create(&l).set(t.files_sent as i64);
                bytes.get_or_create(&l).set(t.bytes_sent as i64);
                errors.get_or_create(&l).set(t.errors as i64);
            }
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
