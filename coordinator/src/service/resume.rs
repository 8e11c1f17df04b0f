//! A new leader finishes the deploys its predecessor left `Deploying`:
//! the lab's spec, placement and VNIs are already in the log, so what is
//! left is the end of a deploy ([`super::push::settle`]): push the
//! host plans and record `Running` or `Failed`. Agents adopt the VMs already
//! running, so nothing that was started restarts.
//!
//! `Running` labs need nothing here: each agent gets its complete plan when
//! it registers with the new leader ([`super::hosts`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use labspan_transport::poll::Poll;
use openraft::ServerState;

use super::{agents, push, Inner};
use crate::raft::LabStatus;

/// How often the resumed deploy looks for its agents' connections.
const AGENTS_POLL: Duration = Duration::from_millis(250);

/// Runs for the life of the coordinator: each time it becomes leader (a new
/// term), resumes the deploys left `Deploying`.
pub(super) async fn on_leadership(inner: Arc<Inner>) {
    let mut metrics = inner.raft.metrics();
    let mut led_term = None;
    loop {
        let term = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader && m.current_leader == Some(inner.id))
                .then_some(m.current_term)
        };
        if let Some(term) = term.filter(|t| led_term != Some(*t)) {
            led_term = Some(term);
            tokio::spawn(resume(inner.clone(), term));
        }
        if metrics.changed().await.is_err() {
            return; // Raft stopped.
        }
    }
}

/// Leader of `term`: settles every lab left `Deploying`, one at a time.
async fn resume(inner: Arc<Inner>, term: u64) {
    if let Err(e) = inner.fresh().await {
        tracing::info!(term, error = %e.message, "not resuming deploys: leadership not confirmed");
        return;
    }
    super::moves::resume(&inner).await;
    super::checkpoints::resume(&inner).await;
    for lab in deploying(&inner) {
        let hosts = hosts_of(&inner, &lab);
        wait_for_agents(&inner, &hosts).await;
        let _one_at_a_time = inner.lab_lock.lock().await;
        if !inner.is_leader() || inner.raft.metrics().borrow().current_term != term {
            return; // A later leader resumes what is left.
        }
        // A deploy or delete may have finished it meanwhile.
        if !deploying(&inner).contains(&lab) {
            continue;
        }
        tracing::info!(
            lab,
            term,
            ?hosts,
            "resuming a deploy left unfinished by the previous leader"
        );
        match push::settle(&inner, &lab, &hosts).await {
            Ok(vms) => tracing::info!(lab, vms = vms.len(), "resumed deploy settled"),
            Err(e) => tracing::warn!(lab, error = %e.message, "cannot settle a resumed deploy"),
        }
    }
}

/// Labs whose status is `Deploying` in this replica's state.
fn deploying(inner: &Inner) -> BTreeSet<String> {
    let state = inner.state.read();
    state
        .state
        .labs
        .iter()
        .filter(|(_, rec)| rec.status == LabStatus::Deploying)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The hosts lab `lab` is placed on.
fn hosts_of(inner: &Inner, lab: &str) -> BTreeSet<String> {
    let state = inner.state.read();
    state
        .state
        .labs
        .get(lab)
        .map(|rec| rec.placement.values().cloned().collect())
        .unwrap_or_default()
}

/// Waits (at most the new leader's grace, `Timing::new_leader_grace`) until every host in `hosts` has an open
/// connection from its agent; an agent still missing then makes the lab
/// `Failed`, as it does for a fresh deploy.
pub(super) async fn wait_for_agents(inner: &Inner, hosts: &BTreeSet<String>) {
    let all_in = Poll::new(AGENTS_POLL, super::hosts::granted(inner).new_leader_grace)
        .until(|| async { agents::missing(inner, hosts).is_empty().then_some(()) })
        .await;
    if all_in.is_none() {
        let missing = agents::missing(inner, hosts);
        tracing::warn!(?missing, "agents did not reach the new leader in time");
    }
}
