//! Whether a server takes traffic, and with what weight: pure rules over one
//! server's state read at one instant. The proxy threads keep that state in
//! atomics (`crate::pool::Server`); this is where it is judged.

use super::agent::AgentState;
use super::health::Health;
use super::select::Candidate;
use super::slowstart::effective_weight;
use std::time::Duration;

/// What an operator set with `uphold balance …`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Enabled,
    /// Existing connections (and cookie-persistent clients) finish; nothing new.
    Drain,
    /// Nothing new at all.
    Disabled,
}

/// One server as the balancer knows it at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub health: Health,
    /// Unknown health counts as up, except for MySQL checks: writes must not
    /// reach a server never seen writable.
    pub unknown_is_up: bool,
    /// Kept out by a pool-wide rule (two writable MySQL servers).
    pub fenced: bool,
    pub admin: Admin,
    /// The operator's weight.
    pub weight: u32,
    /// The agent's last word, if it has one, and its weight in percent.
    pub agent: Option<AgentState>,
    pub agent_percent: u32,
    /// Time since the server last came up, while slow start may still apply.
    pub since_up: Option<Duration>,
    /// Connections (tcp) or requests (http) in flight.
    pub active: u32,
    /// 0: no limit.
    pub maxconn: u32,
    pub backup: bool,
}

impl ServerState {
    /// Healthy enough to be picked, whatever the operator and the load say.
    pub fn healthy(&self) -> bool {
        !self.fenced
            && match self.health {
                Health::Up => true,
                Health::Down => false,
                Health::Unknown => self.unknown_is_up,
            }
    }

    /// A client persistent on this server goes back to it: draining servers
    /// still take their persistent clients, so sessions end where they started.
    pub fn takes_persistent_client(&self) -> bool {
        self.healthy() && self.admin != Admin::Disabled
    }

    /// New traffic may be sent here (load aside).
    pub fn takes_new_traffic(&self) -> bool {
        self.healthy()
            && self.admin == Admin::Enabled
            && !matches!(
                self.agent,
                Some(AgentState::Down | AgentState::Maint | AgentState::Drain)
            )
    }

    /// Operator weight × agent percent (at least 1 when neither is 0), scaled
    /// by slow start over `slowstart`.
    pub fn effective_weight(&self, slowstart: Duration) -> u32 {
        let scaled = (u64::from(self.weight) * u64::from(self.agent_percent) / 100) as u32;
        let base = if scaled == 0 && self.weight > 0 && self.agent_percent > 0 {
            1
        } else {
            scaled
        };
        effective_weight(base, self.since_up, slowstart)
    }

    /// The server as selection sees it.
    pub fn candidate(&self, slowstart: Duration) -> Candidate {
        Candidate {
            weight: self.effective_weight(slowstart),
            active: self.active,
            available: self.takes_new_traffic(),
            full: self.maxconn > 0 && self.active >= self.maxconn,
            backup: self.backup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> ServerState {
        ServerState {
            health: Health::Up,
            unknown_is_up: true,
            fenced: false,
            admin: Admin::Enabled,
            weight: 10,
            agent: None,
            agent_percent: 100,
            since_up: None,
            active: 0,
            maxconn: 0,
            backup: false,
        }
    }

    #[test]
    fn health_fencing_operator_and_agent_each_keep_new_traffic_out() {
        assert!(up().takes_new_traffic());
        let unknown = ServerState {
            health: Health::Unknown,
            ..up()
        };
        assert!(unknown.takes_new_traffic());
        assert!(!ServerState {
            unknown_is_up: false,
            ..unknown
        }
        .takes_new_traffic());
        assert!(!ServerState {
            fenced: true,
            ..up()
        }
        .takes_new_traffic());
        for agent in [AgentState::Down, AgentState::Maint, AgentState::Drain] {
            assert!(!ServerState {
                agent: Some(agent),
                ..up()
            }
            .takes_new_traffic());
        }
        let draining = ServerState {
            admin: Admin::Drain,
            ..up()
        };
        assert!(!draining.takes_new_traffic());
        assert!(draining.takes_persistent_client());
        assert!(!ServerState {
            admin: Admin::Disabled,
            ..up()
        }
        .takes_persistent_client());
    }

    #[test]
    fn weight_is_the_operators_times_the_agents_percent_ramped_by_slow_start() {
        let window = Duration::from_secs(10);
        assert_eq!(up().effective_weight(window), 10);
        let half = ServerState {
            agent_percent: 50,
            ..up()
        };
        assert_eq!(half.effective_weight(window), 5);
        let tiny = ServerState {
            agent_percent: 1,
            ..up()
        };
        assert_eq!(
            tiny.effective_weight(window),
            1,
            "never 0 while both are set"
        );
        let starting = ServerState {
            since_up: Some(Duration::from_secs(5)),
            ..up()
        };
        assert_eq!(starting.effective_weight(window), 5);
        assert_eq!(
            ServerState {
                active: 3,
                maxconn: 3,
                backup: true,
                ..starting
            }
            .candidate(window),
            Candidate {
                weight: 5,
                active: 3,
                available: true,
                full: true,
                backup: true,
            }
        );
    }
}
