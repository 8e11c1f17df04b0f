//! Resets of a running lab to one of its checkpoints: the checks (the
//! checkpoint fits the lab as it is now, each node's files are on its host
//! or can be fetched there), then every host loads its VMs paused and all
//! resume at one deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use labspan_proto::checkpoint::ResetReport;
use labspan_proto::msg::{AgentReply, AgentRequest, ErrorKind, ErrorReply, LabStatus, Reply};

use super::super::labs::no_lab;
use super::super::{agents, error, Inner};
use super::{check_lab_as, millis, missing_agents, restore, unix_ms, PAUSE_LEAD};
use crate::raft::{CheckpointOpKind, ClusterState, Command};

/// Checks a reset of `lab` to `name`: the checkpoint exists, holds every
/// node of the lab as it is now, and each node's files are on the host it
/// runs on.
pub fn check_reset(
    state: &ClusterState,
    lab: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<String>>, ErrorReply> {
    let hosts = check_lab_as(state, lab, "reset", true)?;
    let rec = state.labs.get(lab).ok_or_else(|| no_lab(state, lab))?;
    let Some(ckpt) = rec.checkpoints.get(name) else {
        let hint = labspan_proto::suggest::hint(
            name,
            rec.checkpoints.keys().map(String::as_str),
            "its checkpoints",
        );
        return Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("lab {lab:?} has no checkpoint {name:?}{hint}"),
        ));
    };
    let now: BTreeSet<&String> = rec.placement.keys().collect();
    let then: BTreeSet<&String> = ckpt.nodes.keys().collect();
    if now != then {
        return Err(ErrorReply::new(
            ErrorKind::Invalid,
            format!(
                "checkpoint {name:?} of lab {lab:?} holds nodes {then:?}, the lab now has {now:?}: it cannot be reset to it"
            ),
        ));
    }
    let fetches = reset_fetches(state, lab, name);
    for (node, host) in &rec.placement {
        let holders: Vec<&String> = (ckpt.nodes.get(node))
            .map(|n| std::iter::once(&n.host).chain(&n.copies).collect())
            .unwrap_or_default();
        if !holders.contains(&host) && !fetches.contains_key(node) {
            return Err(ErrorReply::new(
                ErrorKind::Unavailable,
                format!(
                    "node {node:?} of lab {lab:?} runs on host {host:?}, and no host that is up holds its files of checkpoint {name:?} (held by {holders:?}): it cannot be reset"
                ),
            ));
        }
    }
    Ok(hosts)
}

/// The nodes of `lab` whose files of checkpoint `name` are not on the
/// host each runs on now (it moved since, or its holder was lost): node →
/// (its host, an up host holding them, the original first, to fetch them
/// from).
pub fn reset_fetches(
    state: &ClusterState,
    lab: &str,
    name: &str,
) -> BTreeMap<String, (String, String)> {
    let Some(rec) = state.labs.get(lab) else {
        return BTreeMap::new();
    };
    let Some(ckpt) = rec.checkpoints.get(name) else {
        return BTreeMap::new();
    };
    let up = |h: &&String| state.hosts.get(*h).is_some_and(|h| h.up);
    (rec.placement.iter())
        .filter_map(|(node, host)| {
            let share = ckpt.nodes.get(node)?;
            let mut holders = std::iter::once(&share.host).chain(&share.copies);
            if holders.clone().any(|h| h == host) {
                return None;
            }
            let from = holders.find(up)?;
            Some((node.clone(), (host.clone(), from.clone())))
        })
        .collect()
}

/// Leader: `labspan reset LAB NAME`.
pub(in crate::service) async fn reset(inner: &Arc<Inner>, lab: &str, name: &str) -> Reply {
    let started = Instant::now();
    let _one_at_a_time = inner.lab_lock.lock().await;
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let hosts = match check_reset(&inner.state.read().state, lab, name) {
        Ok(h) => h,
        Err(refused) => return Reply::Error(refused),
    };
    if let Some(refused) = missing_agents(inner, &hosts) {
        return refused;
    }
    // Nodes moved since the checkpoint (or whose holder is gone) are reset
    // from a copy, fetched to their host first; nothing else changes if
    // one cannot be fetched.
    let fetches = reset_fetches(&inner.state.read().state, lab, name);
    let fetched = join_all(fetches.iter().map(|(node, (to, from))| async move {
        restore::fetch(inner, lab, name, node, to, from).await
    }))
    .await;
    if let Some(Err(why)) = fetched.into_iter().find(Result::is_err) {
        return error(
            ErrorKind::Unavailable,
            format!("lab {lab:?} cannot be reset to checkpoint {name:?} (nothing changed): {why}"),
        );
    }
    let begin = Command::BeginCheckpoint {
        lab: lab.to_string(),
        name: name.to_string(),
        kind: CheckpointOpKind::Reset,
    };
    if let Err(e) = inner.write(begin).await {
        return Reply::Error(e);
    }
    tracing::info!(lab, name, "resetting a lab to a checkpoint");
    let result = carry_out_reset(inner, lab, name, &hosts).await;
    match end_reset(inner, lab, name, &result).await {
        Err(e) => Reply::Error(e),
        Ok(()) => match result {
            Ok(clock_not_set) => Reply::WasReset(ResetReport {
                lab: lab.to_string(),
                checkpoint: name.to_string(),
                nodes: hosts.values().flatten().cloned().collect(),
                total_ms: millis(started.elapsed()),
                clock_not_set,
            }),
            Err(why) => error(
                ErrorKind::Unavailable,
                format!("resetting lab {lab:?} to checkpoint {name:?} failed: {why}; the lab is marked failed with its VMs paused or stopped: `labspan reset {lab} {name}` again"),
            ),
        },
    }
}

/// Records the end of a reset: a failed one leaves the lab `Failed`.
pub(super) async fn end_reset(
    inner: &Arc<Inner>,
    lab: &str,
    name: &str,
    result: &Result<Vec<String>, String>,
) -> Result<(), ErrorReply> {
    let status = match result {
        Err(why) => Some(LabStatus::Failed {
            reason: format!("reset to checkpoint {name:?} failed: {why}"),
        }),
        // A lab a reset brought back from `Failed` runs again.
        Ok(_) => {
            let now = (inner.state.read().state.labs.get(lab)).map(|r| r.status.clone());
            (now.is_some_and(|s| s != LabStatus::Running)).then_some(LabStatus::Running)
        }
    };
    if let Some(status) = status {
        inner
            .write(Command::SetLabStatus {
                lab: lab.to_string(),
                status,
            })
            .await?;
    }
    inner
        .write(Command::EndCheckpoint {
            lab: lab.to_string(),
            checkpoint: None,
        })
        .await
        .map(|_| ())
}

/// Loads every host's VMs paused, then resumes them all at one deadline;
/// the guests whose clock could not be set, or why it failed.
pub(super) async fn carry_out_reset(
    inner: &Arc<Inner>,
    lab: &str,
    name: &str,
    hosts: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, String> {
    let loads = hosts.iter().map(|(h, nodes)| async move {
        let req = AgentRequest::CheckpointLoad {
            lab: lab.to_string(),
            name: name.to_string(),
            nodes: nodes.clone(),
        };
        (h.clone(), agents::request(inner, h, &req).await)
    });
    let failures: Vec<String> = join_all(loads)
        .await
        .into_iter()
        .filter_map(|(host, reply)| match reply {
            Ok(AgentReply::Resumed { .. }) => None,
            Ok(AgentReply::Error(e)) => Some(format!("host {host:?}: {}", e.message)),
            Ok(other) => Some(format!("host {host:?}: unexpected reply {other:?}")),
            Err(e) => Some(e),
        })
        .collect();
    if !failures.is_empty() {
        return Err(format!(
            "not every host loaded it, so no VM was resumed: {}",
            failures.join("; ")
        ));
    }
    let req = AgentRequest::CheckpointResume {
        lab: lab.to_string(),
        resume_at_unix_ms: unix_ms() + millis(PAUSE_LEAD),
    };
    let resumes = hosts.keys().map(|h| {
        let req = &req;
        async move { (h.clone(), agents::request(inner, h, req).await) }
    });
    let mut clock_not_set = Vec::new();
    let mut failures = Vec::new();
    for (host, reply) in join_all(resumes).await {
        match reply {
            Ok(AgentReply::Resumed { clock_not_set: c }) => clock_not_set.extend(c),
            Ok(AgentReply::Error(e)) => failures.push(format!("host {host:?}: {}", e.message)),
            Ok(other) => failures.push(format!("host {host:?}: unexpected reply {other:?}")),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(clock_not_set)
    } else {
        Err(format!(
            "every host loaded it, not every host resumed its VMs: {}",
            failures.join("; ")
        ))
    }
}
