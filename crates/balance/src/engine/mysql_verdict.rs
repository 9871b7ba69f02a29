//! What a MySQL server's state means for a frontend: whether this server may take
//! traffic under the configured `require`, and the pool-wide rule that two writable
//! servers mean nobody gets writes (a split primary must not get writes on both).

use uphold_config::balance::MysqlRequire;

/// The facts a probe read (see `health::mysql`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub read_only: bool,
    /// `None`: not a replica.
    pub replica: Option<ReplicaObserved>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaObserved {
    pub io_running: bool,
    pub sql_running: bool,
    pub seconds_behind: Option<u64>,
}

/// Whether the server suits `require`, with the reason shown in status.
pub fn verdict(require: MysqlRequire, s: &Observed) -> (bool, String) {
    match require {
        MysqlRequire::Any => (true, "answers".into()),
        MysqlRequire::Primary => {
            if s.read_only {
                (false, "read_only is on".into())
            } else {
                (true, "writable".into())
            }
        }
        MysqlRequire::Replica { max_lag } => {
            let Some(r) = &s.replica else {
                return (false, "not a replica".into());
            };
            if !s.read_only {
                return (false, "replica is writable (read_only off)".into());
            }
            if !r.io_running || !r.sql_running {
                return (
                    false,
                    format!(
                        "replication stopped (io {}, sql {})",
                        if r.io_running { "running" } else { "stopped" },
                        if r.sql_running { "running" } else { "stopped" }
                    ),
                );
            }
            match r.seconds_behind {
                None => (false, "replication lag unknown".into()),
                Some(lag) if lag > max_lag.as_secs() => {
                    (false, format!("{lag}s behind (max {}s)", max_lag.as_secs()))
                }
                Some(lag) => (true, format!("replica, {lag}s behind")),
            }
        }
    }
}

/// With `require = "primary"`: the servers (by index) that must be kept out because
/// more than one is writable. Empty when at most one is.
pub fn writable_conflict(writable: &[bool]) -> Vec<usize> {
    let list: Vec<usize> = writable
        .iter()
        .enumerate()
        .filter(|(_, w)| **w)
        .map(|(i, _)| i)
        .collect();
    if list.len() > 1 {
        list
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn replica(lag: Option<u64>, running: bool) -> Observed {
        Observed {
            read_only: true,
            replica: Some(ReplicaObserved {
                io_running: running,
                sql_running: running,
                seconds_behind: lag,
            }),
        }
    }

    #[test]
    fn primary_needs_writable() {
        let w = Observed {
            read_only: false,
            replica: None,
        };
        assert!(verdict(MysqlRequire::Primary, &w).0);
        assert!(!verdict(MysqlRequire::Primary, &replica(Some(0), true)).0);
    }

    #[test]
    fn replica_needs_running_threads_and_little_lag() {
        let r = MysqlRequire::Replica {
            max_lag: Duration::from_secs(10),
        };
        assert!(verdict(r, &replica(Some(3), true)).0);
        assert!(verdict(r, &replica(Some(30), true))
            .1
            .contains("30s behind"));
        assert!(verdict(r, &replica(Some(0), false)).1.contains("stopped"));
        assert!(!verdict(r, &replica(None, true)).0);
        assert!(
            !verdict(
                r,
                &Observed {
                    read_only: true,
                    replica: None
                }
            )
            .0
        );
    }

    #[test]
    fn two_writable_servers_are_both_refused() {
        assert!(writable_conflict(&[true, false, false]).is_empty());
        assert_eq!(writable_conflict(&[true, false, true]), vec![0, 2]);
    }
}
