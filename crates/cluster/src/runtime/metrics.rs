//! Prometheus metrics of the cluster role, registered from the same status
//! picture `uphold status` shows, so the two can never disagree.

use super::StatusCell;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Registers the cluster's figures (`cluster_*`) in `registry`, the one every
/// role of the daemon registers in (prefix `uphold`).
pub fn register(cell: &StatusCell, registry: &mut Registry) {
    let quorum = Gauge::<i64>::default();
    let leader = Gauge::<i64>::default();
    let term = Gauge::<i64>::default();
    let lease = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    let member_live = Family::<Labels, Gauge>::default();
    let group_here = Family::<Labels, Gauge>::default();
    let group_epoch = Family::<Labels, Gauge>::default();
    let group_owned = Family::<Labels, Gauge>::default();
    let group_claim = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let member_heard = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "cluster_quorum",
        "1 if this member is in contact with a quorum",
        quorum.clone(),
    );
    registry.register(
        "cluster_is_leader",
        "1 if this member is the Raft leader",
        leader.clone(),
    );
    registry.register("cluster_term", "current Raft term", term.clone());
    registry.register(
        "cluster_lease_remaining_seconds",
        "lease left on this member",
        lease.clone(),
    );
    registry.register(
        "cluster_member_live",
        "1 if the member renewed within a lease",
        member_live.clone(),
    );
    registry.register(
        "cluster_member_last_renewal_seconds",
        "time since a voter last accepted the member's renewal, as known here",
        member_heard.clone(),
    );
    registry.register(
        "group_claim_remaining_seconds",
        "lease left on this member's claim on the group, where it has the group",
        group_claim.clone(),
    );
    registry.register(
        "group_running_here",
        "1 if the group runs on this member",
        group_here.clone(),
    );
    registry.register(
        "group_epoch",
        "changes of owner of the group so far",
        group_epoch.clone(),
    );
    registry.register(
        "group_owned",
        "1 if the log assigns the group to some node",
        group_owned.clone(),
    );
    if let Ok(guard) = cell.read() {
        if let Some(status) = guard.as_ref() {
            quorum.set(i64::from(status.quorum));
            leader.set(i64::from(
                status.leader.as_deref() == Some(status.me.as_str()),
            ));
            term.set(status.term as i64);
            lease.set(status.lease_remaining_ms as f64 / 1000.0);
            for m in &status.members {
                let labels = vec![("member".to_string(), m.name.clone())];
                member_live.get_or_create(&labels).set(i64::from(m.live));
                if let Some(age) = m.last_renewal_age_ms {
                    member_heard.get_or_create(&labels).set(age as f64 / 1000.0);
                }
            }
            for g in &status.groups {
                let labels = vec![("group".to_string(), g.name.clone())];
                group_here
                    .get_or_create(&labels)
                    .set(i64::from(g.local_phase.as_deref() == Some("running")));
                group_epoch.get_or_create(&labels).set(g.epoch as i64);
                if let Some(ms) = g.claim_remaining_ms {
                    group_claim.get_or_create(&labels).set(ms as f64 / 1000.0);
                }
                group_owned
                    .get_or_create(&labels)
                    .set(i64::from(g.owner.is_some()));
            }
        }
    }
}
