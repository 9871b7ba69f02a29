//! Which node holds each group's resources, and the safety invariant checked
//! whenever one comes up: a group active on at most one node, never on a witness.

use super::*;

impl World {
    pub(super) fn set_active(&mut self, g: usize, m: usize, on: bool, why: &'static str) {
        if self.active[g][m] == on {
            return;
        }
        self.active[g][m] = on;
        self.trace(
            Some(m),
            Tr::Active {
                group: self.groups[g].to_string(),
                on,
                why,
            },
        );
        if !on {
            if self.no_moves_after.is_some_and(|t| self.now >= t) {
                self.fail(
                    format!(
                        "NEEDLESS STOP: group {} stopped on {} ({why}) with only slow disks",
                        self.groups[g], self.members[m].name
                    ),
                    &[m],
                );
            }
            return;
        }

        if self.members[m].witness {
            self.fail(
                format!(
                    "group {} active on witness {}",
                    self.groups[g], self.members[m].name
                ),
                &[m],
            );
            return;
        }
        let holders = self.holders(g);
        if holders.len() > 1 {
            let names: Vec<String> = holders
                .iter()
                .map(|h| self.members[*h].name.clone())
                .collect();
            self.fail(
                format!(
                    "SPLIT BRAIN: group {} active on {} at once",
                    self.groups[g],
                    names.join(" and ")
                ),
                &holders,
            );
        }
    }

    pub(super) fn record_restored(&mut self, g: usize) {
        let now = self.now;
        let mut i = 0;
        while i < self.obs.pending.len() {
            if self.obs.pending[i].g == g {
                let p = self.obs.pending.remove(i);
                self.obs.failovers.push(FailoverSample {
                    ms: (now - p.since) as f64 / MS as f64,
                    clean: p.clean,
                    leader: p.leader,
                    lease_ms: self.cfg.lease_ms,
                });
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn fail(&mut self, what: String, involved: &[usize]) {
        if self.violation.is_some() {
            return;
        }
        let mut msg = format!(
            "seed {}: {what} at t={:.3} ms\n{}\nlast relevant events:\n",
            self.seed,
            self.now_ms(),
            self.describe_config()
        );
        let wanted: Vec<NodeId> = involved.iter().map(|m| self.members[*m].id).collect();
        let relevant: Vec<&TraceRec> = self
            .ring
            .iter()
            .filter(|r| {
                !is_renewal(&r.what) || renewal_of(&r.what).is_some_and(|n| wanted.contains(&n))
            })
            .collect();
        let skip = relevant.len().saturating_sub(60);
        for rec in relevant.into_iter().skip(skip) {
            let _ = writeln!(msg, "  {}", self.format_rec(rec));
        }
        self.violation = Some(msg.trim_end().to_string());
    }

    pub fn describe_config(&self) -> String {
        let c = &self.cfg;
        let groups: Vec<String> = c
            .groups
            .iter()
            .map(|g| {
                let nodes: Vec<String> = g.nodes.iter().map(|m| c.member_name(*m)).collect();
                format!(
                    "{}[{}]{}",
                    g.name,
                    nodes.join(">"),
                    if g.failback { " failback" } else { "" }
                )
            })
            .collect();
        let ids: Vec<String> = self
            .members
            .iter()
            .map(|mb| format!("{}={:#x}", mb.name, mb.id))
            .collect();
        format!(
            "config: {} voters{}, groups {}, lease {} ms, renew {} ms, raft hb {} ms election {}..{} ms, \
             engine wakeups {}, eager commit {}, snapshots {}, loss {}, start failures {}; ids {}",
            c.voters,
            if c.witness { " (one witness)" } else { "" },
            groups.join(", "),
            c.lease_ms,
            c.renew_ms,
            c.raft.heartbeat_ms,
            c.raft.election_min_ms,
            c.raft.election_max_ms,
            match c.engine_max_idle_ms {
                Some(idle) => format!("at deadlines (max idle {idle} ms)"),
                None => format!("every {} ms", c.engine_tick_ms),
            },
            c.raft.eager_commit,
            c.raft.snapshots,
            c.net_loss,
            c.start_fail_prob,
            ids.join(" ")
        )
    }
}
