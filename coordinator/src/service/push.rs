//! Pushing complete host plans to agents, and the end of every deploy
//! ([`settle`]): plans pushed, the lab's status recorded from what the
//! agents report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use labspan_proto::msg::{AgentReply, AgentRequest, ErrorKind, ErrorReply, VmReport};
use labspan_proto::plan::HostPlan;

use super::{agents, decide, lock, Inner};
use crate::plan::HostFabric;
use crate::raft::{ClusterState, Command};

/// Underlay MTU assumed for a host whose agent has not said (after a failover).
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// The end of every deploy (a fresh one, an edit, a move, or one a new
/// leader resumes): pushes the plans of `hosts` and records lab `name` as
/// `Running` or `Failed` from what the agents report; returns the lab's
/// VMs. The caller holds `lab_lock`.
pub(super) async fn settle(
    inner: &Arc<Inner>,
    name: &str,
    hosts: &BTreeSet<String>,
) -> Result<Vec<VmReport>, ErrorReply> {
    let outcomes = push_plans(inner, hosts).await;
    let (status, vms) = decide::outcome(name, &outcomes);
    inner
        .write(Command::SetLabStatus {
            lab: name.to_string(),
            status,
        })
        .await?;
    Ok(vms)
}

/// How many times a host's plan is made again after the agent refused it
/// for a newer one it had already applied (pushed meanwhile by a
/// registration or another change): each new plan is read from a newer state.
const SUPERSEDED_RETRIES: usize = 3;

/// Plans `hosts` from the current state and pushes each its plan; returns
/// each host's VM reports (or why it could not be brought to its plan).
///
/// Plans of one host may cross: a plan read from an older state can reach
/// the agent after a newer one, which it then refuses (its generation is
/// older). That host is planned again from the state as it is now.
pub(super) async fn push_plans(
    inner: &Arc<Inner>,
    hosts: &BTreeSet<String>,
) -> BTreeMap<String, Result<Vec<VmReport>, String>> {
    let mut outcomes = BTreeMap::new();
    let mut pending = hosts.clone();
    for attempt in 0..=SUPERSEDED_RETRIES {
        let mut superseded = BTreeSet::new();
        for (host, result) in push_once(inner, &pending).await {
            match result {
                Err(e) if e.kind == ErrorKind::Conflict && attempt < SUPERSEDED_RETRIES => {
                    tracing::info!(host, error = %e.message, "plan superseded; planning the host again");
                    superseded.insert(host);
                }
                result => {
                    outcomes.insert(host, result.map_err(|e| e.message));
                }
            }
        }
        if superseded.is_empty() {
            break;
        }
        pending = superseded;
    }
    outcomes
}

/// One round of [`push_plans`]: plans read from one state, pushed at once.
async fn push_once(
    inner: &Arc<Inner>,
    hosts: &BTreeSet<String>,
) -> BTreeMap<String, Result<Vec<VmReport>, ErrorReply>> {
    let (mut plans, unplanned) = {
        let state = inner.state.read();
        let fabrics = fabrics(inner, &state.state);
        let (mut plans, unplanned) = decide::host_plans(&state.state, &fabrics, hosts);
        // The fencing token, read under the same lock as the state the
        // plans come from: an agent never goes back to an older one.
        let generation = state.last_applied.map_or(0, |id| id.index);
        for plan in plans.values_mut() {
            plan.generation = generation;
        }
        (plans, unplanned)
    };
    for (lab, error) in &unplanned {
        tracing::error!(
            lab,
            error,
            "cannot plan a stored lab; left out of host plans"
        );
    }
    // Which bits of each image, and from where: resolved at every push, over
    // what the agents hold now.
    crate::images::attach(
        &mut plans,
        &super::images::inventories(inner),
        &super::images::up_hosts(inner),
    );
    let pushes = plans.into_iter().map(|(host, plan)| async move {
        let result = push(inner, &host, plan).await;
        if let Err(e) = &result {
            tracing::warn!(host, error = %e.message, "host plan not applied");
        }
        (host, result)
    });
    futures::future::join_all(pushes)
        .await
        .into_iter()
        .collect()
}

fn fabrics(inner: &Inner, state: &ClusterState) -> BTreeMap<String, HostFabric> {
    let live = lock(&inner.live);
    state
        .hosts
        .iter()
        .map(|(name, h)| {
            let mtu = live
                .get(name)
                .map_or(DEFAULT_UNDERLAY_MTU, |l| l.underlay_mtu);
            (
                name.clone(),
                HostFabric {
                    vtep: h.vtep,
                    underlay_mtu: mtu,
                },
            )
        })
        .collect()
}

/// Sends `plan` to the agent of `host`.
async fn push(inner: &Inner, host: &str, plan: HostPlan) -> Result<Vec<VmReport>, ErrorReply> {
    let reply = agents::request(inner, host, &AgentRequest::ApplyPlan(plan))
        .await
        .map_err(|e| ErrorReply::new(ErrorKind::Unavailable, e))?;
    match reply {
        AgentReply::Applied(vms) => Ok(vms),
        AgentReply::Error(e) => Err(e),
        other => Err(ErrorReply::new(
            ErrorKind::Internal,
            format!("unexpected agent reply {other:?}"),
        )),
    }
}
