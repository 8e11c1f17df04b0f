//! `labspan cluster status`: a linearizable view from the leader.

use std::sync::Arc;

use labspan_proto::msg::{ClusterStatus, HostStatus, MemberStatus, Reply};

use super::Inner;

/// The cluster as the leader sees it, after a read-index round.
pub(super) async fn status(inner: &Arc<Inner>) -> Reply {
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    Reply::Status(now(inner))
}

/// The cluster as this coordinator's replica and Raft node have it now.
pub(super) fn now(inner: &Inner) -> ClusterStatus {
    let m = inner.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, member)| MemberStatus {
            id: *id,
            name: member.name.clone(),
            addr: member.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let capabilities = super::lock(&inner.capabilities).clone();
    let state = inner.state.read();
    let hosts = state
        .state
        .hosts
        .iter()
        .map(|(name, h)| HostStatus {
            name: name.clone(),
            vtep: h.vtep,
            memory_mib: h.capacity.memory_mib,
            vcpus: h.capacity.vcpus,
            up: h.up,
            cordoned: h.cordoned,
            capabilities: capabilities.get(name).copied(),
        })
        .collect();
    let labs = state
        .state
        .labs
        .iter()
        .map(|(name, rec)| (name.clone(), rec.status.clone()))
        .collect();
    ClusterStatus {
        members,
        leader: m.current_leader,
        term: m.current_term,
        commit_index: m.last_applied.map(|l| l.index),
        hosts,
        labs,
    }
}
