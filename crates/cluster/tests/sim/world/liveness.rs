//! Liveness after healing: every group up on exactly one node within the bound,
//! and at the end.

use super::*;

impl World {
    pub(super) fn track_liveness(&mut self) {
        if self.obs.heal_at.is_none() {
            return;
        }
        for g in 0..self.groups.len() {
            if self.obs.up_after_heal[g].is_none() && self.group_up(g).is_some() {
                self.obs.up_after_heal[g] = Some(self.now);
            }
        }
    }

    /// Every node a group may run on has failed it: the leader waits
    /// `failure_retry_ms` before clearing the marks.
    pub(super) fn all_candidates_failed(&self, g: usize) -> bool {
        let state = self.latest_state();
        let gs = state.group(&self.groups[g]);
        self.topo.groups[g]
            .nodes
            .iter()
            .all(|n| gs.failed_on.contains(n))
    }

    pub(super) fn check(&mut self, check: Check) {
        let heal = self.obs.heal_at.unwrap_or(0);
        match check {
            Check::LivenessDeadline => {
                for g in 0..self.groups.len() {
                    if self.obs.up_after_heal[g].is_some() {
                        continue;
                    }
                    // A group every candidate failed is blocked by design until the
                    // leader clears the marks; its start after that may still be
                    // under way at the deadline.
                    let cleared_since_heal = self
                        .obs
                        .failures_cleared_at
                        .get(self.groups[g].as_str())
                        .is_some_and(|at| *at >= heal);
                    if !self.obs.liveness_extended
                        && (self.all_candidates_failed(g) || cleared_since_heal)
                    {
                        self.obs.liveness_extended = true;
                        let extra = self.topo.failure_retry_ms;
                        self.schedule(self.now + extra * MS, Ev::Check(Check::LivenessDeadline));
                        let final_at = self.obs.final_at.unwrap_or(self.now) + extra * MS;
                        self.obs.final_at = Some(final_at);
                        self.schedule(final_at, Ev::Check(Check::Final));
                        return;
                    }
                    let holders: Vec<String> = self
                        .holders(g)
                        .iter()
                        .map(|m| self.members[*m].name.clone())
                        .collect();
                    let all: Vec<usize> = (0..self.members.len()).collect();
                    self.fail(
                        format!(
                            "LIVENESS: group {} not up on exactly one node {} ms after healing (active on [{}], log owner {:?})",
                            self.groups[g],
                            (self.now - heal) / MS,
                            holders.join(", "),
                            self.owner_in_log(g).map(|m| self.members[m].name.clone())
                        ),
                        &all,
                    );
                    return;
                }
            }
            Check::Final => {
                if Some(self.now) != self.obs.final_at {
                    return;
                }
                let state = self.latest_state();
                for g in 0..self.groups.len() {
                    let all: Vec<usize> = (0..self.members.len()).collect();
                    let Some(m) = self.group_up(g) else {
                        let holders: Vec<String> = self
                            .holders(g)
                            .iter()
                            .map(|m| self.members[*m].name.clone())
                            .collect();
                        self.fail(
                            format!(
                                "LIVENESS: group {} not up on exactly one node at the end (active on [{}])",
                                self.groups[g],
                                holders.join(", ")
                            ),
                            &all,
                        );
                        return;
                    };
                    let spec = &self.topo.groups[g];
                    let gs = state.group(&spec.name);
                    if gs.owner != Some(self.members[m].id) {
                        self.fail(
                            format!(
                                "group {} runs on {} but the log names {:?}",
                                spec.name, self.members[m].name, gs.owner
                            ),
                            &all,
                        );
                        return;
                    }
                    if spec.failback {
                        let preferred = spec
                            .nodes
                            .iter()
                            .find(|n| !gs.failed_on.contains(n))
                            .copied();
                        if preferred.is_some() && preferred != Some(self.members[m].id) {
                            let name = self.names(&format!("{preferred:?}"));
                            self.fail(
                                format!(
                                    "FAILBACK: group {} still on {} at the end, preferred node {name} is healthy",
                                    spec.name, self.members[m].name
                                ),
                                &all,
                            );
                            return;
                        }
                    }
                }
            }
        }
    }
}
