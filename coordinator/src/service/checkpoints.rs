//! Checkpoints and resets of running labs: one recorded intent
//! each (`BeginCheckpoint`), ended by one `EndCheckpoint` whatever happens.
//!
//! - **create**: every host of the lab is asked to pause all its VMs of
//!   the lab at one deadline (now + [`PAUSE_LEAD`], the leader's clock),
//!   save them and resume each as soon as it is saved. Every host saved:
//!   the checkpoint is recorded in the `EndCheckpoint` entry. Any host
//!   failed: every host drops what it saved, nothing is recorded, the lab
//!   runs on.
//! - **reset**: every host restarts its VMs of the lab paused in the
//!   checkpoint's state; once all are loaded, all resume at one deadline.
//!   A host that cannot load leaves the lab `Failed` with every VM paused
//!   or stopped (never part of it running on in another state).
//!
//! A new leader that finds an operation in the log ends it as the leader
//! that started it would have failed: a create is dropped everywhere
//! (its hosts may have saved), a reset is carried out again from the start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use labspan_proto::checkpoint::Checkpoint;
use labspan_proto::image::ImageSource;
use labspan_proto::msg::{AgentReply, AgentRequest, ErrorKind, ErrorReply, LabStatus, Reply};
use labspan_proto::names::valid;

use super::labs::no_lab;
use super::{agents, error, Inner};
use crate::raft::{CheckpointOpKind, ClusterState, Command};

pub(super) use reset::reset;
use reset::{carry_out_reset, end_reset};

/// How far ahead of now the leader sets a common deadline: time for the
/// request to reach every agent and for each to open its QMP sessions.
pub const PAUSE_LEAD: Duration = Duration::from_millis(500);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks that `lab` may be checkpointed or reset now; returns its hosts
/// and the nodes each runs.
pub fn check_lab(
    state: &ClusterState,
    lab: &str,
    doing: &str,
) -> Result<BTreeMap<String, Vec<String>>, ErrorReply> {
    check_lab_as(state, lab, doing, false)
}

/// [`check_lab`]; `failed_too`: a `Failed` lab passes (a reset brings
/// one back, the one a reset that failed left with its VMs paused first).
fn check_lab_as(
    state: &ClusterState,
    lab: &str,
    doing: &str,
    failed_too: bool,
) -> Result<BTreeMap<String, Vec<String>>, ErrorReply> {
    let invalid = |m: String| ErrorReply::new(ErrorKind::Invalid, m);
    let rec = state.labs.get(lab).ok_or_else(|| no_lab(state, lab))?;
    if let Some(m) = &rec.migration {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            format!(
                "lab {lab:?} is moving node {:?} from {:?} to {:?}: it cannot be {doing} while a node moves; try again once the move has ended",
                m.node, m.from, m.to
            ),
        ));
    }
    if let Some(op) = &rec.checkpoint_op {
        let what = match op.kind {
            CheckpointOpKind::Create => "taking checkpoint",
            CheckpointOpKind::Reset => "being reset to checkpoint",
        };
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            format!("lab {lab:?} is {what} {:?}: wait until that ends", op.name),
        ));
    }
    let failed = matches!(rec.status, LabStatus::Failed { .. });
    if rec.status != LabStatus::Running && !(failed_too && failed) {
        return Err(invalid(format!(
            "lab {lab:?} is {}: only a running lab is {doing}",
            rec.status.word().to_lowercase()
        )));
    }
    if !rec.moving.is_empty() {
        return Err(invalid(format!(
            "lab {lab:?} has nodes starting on another host ({:?}): {doing} once they run",
            rec.moving
        )));
    }
    let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, host) in &rec.placement {
        if !state.hosts.get(host).is_some_and(|h| h.up) {
            return Err(ErrorReply::new(
                ErrorKind::Unavailable,
                format!("node {node:?} of lab {lab:?} runs on host {host:?}, which is down"),
            ));
        }
        hosts.entry(host.clone()).or_default().push(node.clone());
    }
    Ok(hosts)
}

fn missing_agents(inner: &Inner, hosts: &BTreeMap<String, Vec<String>>) -> Option<Reply> {
    let set: BTreeSet<String> = hosts.keys().cloned().collect();
    let missing = agents::missing(inner, &set);
    (!missing.is_empty()).then(|| {
        error(
            ErrorKind::Unavailable,
            format!("the agents of {missing:?} are not connected to the leader: try again shortly"),
        )
    })
}

/// Leader: `labspan checkpoint create LAB NAME`.
pub(super) async fn create(inner: &Arc<Inner>, lab: &str, name: &str) -> Reply {
    if let Err(e) = valid::checkpoint(name) {
        return error(ErrorKind::Invalid, e.to_string());
    }
    if auto::is_auto(name) {
        return error(
            ErrorKind::Invalid,
            format!(
                "checkpoint name {name:?} cannot be used: names starting with {:?} are kept for automatic checkpoints (resilience.checkpoint_every)",
                auto::AUTO_PREFIX
            ),
        );
    }
    take(inner, lab, name).await
}

/// Takes checkpoint `name` of `lab` (a user's, or an automatic one). A lab
/// busy with a move, a checkpoint or a reset is refused at once.
async fn take(inner: &Arc<Inner>, lab: &str, name: &str) -> Reply {
    let started = Instant::now();
    let _one_at_a_time = inner.lab_lock.lock().await;
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let hosts = match check_lab(&inner.state.read().state, lab, "checkpointed") {
        Ok(h) => h,
        Err(refused) => return Reply::Error(refused),
    };
    if let Some(refused) = missing_agents(inner, &hosts) {
        return refused;
    }
    let begin = Command::BeginCheckpoint {
        lab: lab.to_string(),
        name: name.to_string(),
        kind: CheckpointOpKind::Create,
    };
    if let Err(e) = inner.write(begin).await {
        return Reply::Error(e);
    }
    tracing::info!(lab, name, hosts = ?hosts.keys(), "taking a checkpoint");
    let taken = save_everywhere(inner, lab, name, &hosts).await;
    let recorded = match &taken {
        Ok(c) => {
            let mut c = c.clone();
            c.total_ms = millis(started.elapsed());
            Some(Box::new(c))
        }
        Err(_) => {
            drop_everywhere(inner, lab, name, hosts.keys()).await;
            None
        }
    };
    let end = Command::EndCheckpoint {
        lab: lab.to_string(),
        checkpoint: recorded.clone(),
    };
    if let Err(e) = inner.write(end).await {
        return Reply::Error(e);
    }
    match (recorded, taken) {
        (Some(c), _) => {
            copy_to_second_hosts(inner, lab, &c).await;
            let with_copies = inner
                .state
                .read()
                .state
                .labs
                .get(lab)
                .and_then(|r| r.checkpoints.get(name).cloned());
            Reply::Checkpointed(with_copies.unwrap_or(*c))
        }
        (None, Err(why)) => error(
            ErrorKind::Unavailable,
            format!("checkpoint {name:?} of lab {lab:?} failed and was removed from every host (the lab runs on): {why}"),
        ),
        (None, Ok(_)) => error(ErrorKind::Internal, "a checkpoint taken was not recorded"),
    }
}

/// Leader: copies each node's files of a checkpoint just recorded to a
/// second host (over the image transfer path: the second host fetches
/// them from the holder's image endpoint and checks their hashes), and
/// records each copy. A copy that fails is logged: the checkpoint stands,
/// with fewer copies (`checkpoint list --json` says which it has).
async fn copy_to_second_hosts(inner: &Arc<Inner>, lab: &str, ckpt: &Checkpoint) {
    let inventories = super::images::inventories(inner);
    let addr = |h: &str| inventories.get(h).and_then(|i| i.addr.clone());
    let (lab_hosts, up): (BTreeSet<String>, Vec<String>) = {
        let state = &inner.state.read().state;
        let lab_hosts = (state.labs.get(lab))
            .map(|r| r.placement.values().cloned().collect())
            .unwrap_or_default();
        let up = (state.hosts.iter())
            .filter(|(_, h)| h.up)
            .map(|(n, _)| n.clone())
            .collect();
        (lab_hosts, up)
    };
    let mut asks = Vec::new();
    for (node, share) in &ckpt.nodes {
        let Some(from) = addr(&share.host).map(|addr| ImageSource {
            host: share.host.clone(),
            addr,
        }) else {
            tracing::warn!(
                lab,
                node,
                host = share.host,
                "no image endpoint known: checkpoint not copied"
            );
            continue;
        };
        let Some(to) = second_host(&share.host, &lab_hosts, &up, |h| addr(h).is_some()) else {
            tracing::warn!(lab, node, "no second host to copy the checkpoint to");
            continue;
        };
        let req = AgentRequest::CheckpointCopy {
            lab: lab.to_string(),
            name: ckpt.name.clone(),
            node: node.clone(),
            files: share.files.clone(),
            from,
        };
        asks.push(async move {
            let answer = agents::request(inner, &to, &req).await;
            (node, to, answer)
        });
    }
    for (node, to, answer) in join_all(asks).await {
        match answer {
            Ok(AgentReply::CheckpointCopied { bytes }) => {
                tracing::info!(
                    lab,
                    name = ckpt.name,
                    node,
                    host = to,
                    bytes,
                    "checkpoint copied"
                );
                let copied = Command::CheckpointCopied {
                    lab: lab.to_string(),
                    name: ckpt.name.clone(),
                    node: node.clone(),
                    host: to.clone(),
                };
                if let Err(e) = inner.write(copied).await {
                    tracing::warn!(lab, node, host = to, error = ?e, "checkpoint copy not recorded");
                }
            }
            other => {
                tracing::warn!(lab, name = ckpt.name, node, host = to, answer = ?other, "checkpoint copy failed")
            }
        }
    }
}

/// The host a node's checkpoint files are copied to: another host that is
/// up and serves images, one of the lab's first (it keeps the lab's
/// checkpoints anyway), else any.
pub fn second_host(
    holder: &str,
    lab_hosts: &BTreeSet<String>,
    up: &[String],
    serves: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut candidates = up.iter().filter(|h| *h != holder && serves(h));
    let any = candidates.clone().next();
    candidates.find(|h| lab_hosts.contains(*h)).or(any).cloned()
}

/// Asks every host to save its share at one deadline; the checkpoint, or
/// why a host could not.
async fn save_everywhere(
    inner: &Arc<Inner>,
    lab: &str,
    name: &str,
    hosts: &BTreeMap<String, Vec<String>>,
) -> Result<Checkpoint, String> {
    let pause_at = unix_ms() + millis(PAUSE_LEAD);
    let req = AgentRequest::CheckpointSave {
        lab: lab.to_string(),
        name: name.to_string(),
        pause_at_unix_ms: pause_at,
    };
    let asks = hosts.keys().map(|h| {
        let req = &req;
        async move { (h.clone(), agents::request(inner, h, req).await) }
    });
    let mut checkpoint = Checkpoint {
        name: name.to_string(),
        created_unix: pause_at / 1000,
        ..Checkpoint::default()
    };
    let (mut first_pause, mut last_resume) = (u64::MAX, 0);
    let mut failures = Vec::new();
    for (host, reply) in join_all(asks).await {
        match reply {
            Ok(AgentReply::CheckpointSaved {
                nodes,
                paused_at_unix_ms,
                resumed_at_unix_ms,
            }) => {
                first_pause = first_pause.min(paused_at_unix_ms);
                last_resume = last_resume.max(resumed_at_unix_ms);
                for (node, mut share) in nodes {
                    share.host = host.clone();
                    checkpoint.nodes.insert(node, share);
                }
            }
            Ok(AgentReply::Error(e)) => failures.push(format!("host {host:?}: {}", e.message)),
            Ok(other) => failures.push(format!("host {host:?}: unexpected reply {other:?}")),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    let missing: Vec<&String> = hosts
        .values()
        .flatten()
        .filter(|n| !checkpoint.nodes.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(format!("no host saved nodes {missing:?}"));
    }
    checkpoint.frozen_ms = last_resume.saturating_sub(first_pause);
    Ok(checkpoint)
}

/// Asks each of `hosts` to remove checkpoint `name` of `lab`; a host that
/// cannot is logged (its files go with the lab).
async fn drop_everywhere<'h>(
    inner: &Arc<Inner>,
    lab: &str,
    name: &str,
    hosts: impl Iterator<Item = &'h String>,
) -> Vec<String> {
    let req = AgentRequest::CheckpointDrop {
        lab: lab.to_string(),
        name: name.to_string(),
    };
    // A host that is down would only be waited for: it is told what to
    // keep when it is back ([`keep_recorded`]).
    let (up, down): (Vec<&String>, Vec<&String>) =
        hosts.partition(|h| (inner.state.read().state.hosts.get(*h)).is_some_and(|h| h.up));
    for host in down {
        tracing::info!(
            lab,
            name,
            host,
            "host down: its checkpoint files go when it is back"
        );
    }
    let asks = up.into_iter().map(|h| {
        let req = &req;
        async move { (h.clone(), agents::request(inner, h, req).await) }
    });
    let mut failed = Vec::new();
    for (host, reply) in join_all(asks).await {
        let why = match reply {
            Ok(AgentReply::Error(e)) => e.message,
            Err(e) => e,
            Ok(_) => continue,
        };
        tracing::warn!(lab, name, host, why, "checkpoint files not removed");
        failed.push(format!("host {host:?}: {why}"));
    }
    failed
}

/// What the cluster records host `host` holding: lab → checkpoint → the
/// nodes whose files it holds (the original or a copy). Every lab is
/// listed, one without checkpoints with none.
pub fn recorded_on(
    state: &ClusterState,
    host: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    (state.labs.iter())
        .map(|(lab, rec)| {
            let names = (rec.checkpoints.iter())
                .filter_map(|(name, c)| {
                    let nodes: Vec<String> = (c.nodes.iter())
                        .filter(|(_, n)| n.host == host || n.copies.iter().any(|h| h == host))
                        .map(|(node, _)| node.clone())
                        .collect();
                    (!nodes.is_empty()).then(|| (name.clone(), nodes))
                })
                .collect();
            (lab.clone(), names)
        })
        .collect()
}

/// Leader: tells host `host`, back from a cut or a restart, which
/// checkpoint files to keep: those the cluster records it holding. What a
/// checkpoint that failed (or was deleted) while it was away left there,
/// and a copy cut short, go. Under the lab lock: no checkpoint is taken,
/// copied or fetched meanwhile.
pub(super) async fn keep_recorded(inner: &Arc<Inner>, host: &str) {
    let _one_at_a_time = inner.lab_lock.lock().await;
    let labs = recorded_on(&inner.state.read().state, host);
    match agents::request(inner, host, &AgentRequest::CheckpointKeep { labs }).await {
        Ok(AgentReply::Resumed { .. }) => {}
        Ok(AgentReply::Error(e)) => {
            tracing::warn!(
                host,
                error = e.message,
                "unrecorded checkpoint files not removed"
            )
        }
        other => {
            tracing::warn!(host, answer = ?other, "unrecorded checkpoint files not removed")
        }
    }
}

/// Leader: `labspan checkpoint list LAB`, oldest first.
pub(super) async fn list(inner: &Arc<Inner>, lab: &str) -> Reply {
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let state = &inner.state.read().state;
    match state.labs.get(lab) {
        Some(rec) => {
            let mut all: Vec<Checkpoint> = rec.checkpoints.values().cloned().collect();
            all.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
            Reply::Checkpoints(all)
        }
        None => Reply::Error(no_lab(state, lab)),
    }
}

/// Leader: `labspan checkpoint delete LAB NAME`: forgotten in one entry,
/// then its files removed from the hosts that hold them.
pub(super) async fn delete(inner: &Arc<Inner>, lab: &str, name: &str) -> Reply {
    let _one_at_a_time = match super::moves::lock_unmoving(inner, lab).await {
        Ok(guard) => guard,
        Err(e) => return Reply::Error(e),
    };
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let holders: BTreeSet<String> = {
        let state = &inner.state.read().state;
        match state.labs.get(lab) {
            Some(rec) => rec
                .checkpoints
                .get(name)
                .map(|c| {
                    (c.nodes.values())
                        .flat_map(|n| std::iter::once(&n.host).chain(&n.copies))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            None => return Reply::Error(no_lab(state, lab)),
        }
    };
    let forget = Command::DeleteCheckpoint {
        lab: lab.to_string(),
        name: name.to_string(),
    };
    if let Err(mut e) = inner.write(forget).await {
        if e.message.contains("has no checkpoint") {
            e.kind = ErrorKind::NotFound;
        }
        return Reply::Error(e);
    }
    let up: Vec<String> = {
        let state = &inner.state.read().state;
        holders
            .into_iter()
            .filter(|h| state.hosts.get(h).is_some_and(|h| h.up))
            .collect()
    };
    let failed = drop_everywhere(inner, lab, name, up.iter()).await;
    if failed.is_empty() {
        Reply::Done
    } else {
        error(
            ErrorKind::Unavailable,
            format!(
                "checkpoint {name:?} of lab {lab:?} is forgotten but its files are not yet removed from: {}",
                failed.join("; ")
            ),
        )
    }
}

/// The host holding node `node`'s share of checkpoint `name` of `lab`.
pub(super) fn holder(
    inner: &Inner,
    lab: &str,
    name: &str,
    node: &str,
) -> Result<String, ErrorReply> {
    let state = &inner.state.read().state;
    let rec = state.labs.get(lab).ok_or_else(|| no_lab(state, lab))?;
    let ckpt = rec.checkpoints.get(name).ok_or_else(|| {
        ErrorReply::new(
            ErrorKind::NotFound,
            format!("lab {lab:?} has no checkpoint {name:?}"),
        )
    })?;
    ckpt.nodes.get(node).map(|n| n.host.clone()).ok_or_else(|| {
        ErrorReply::new(
            ErrorKind::NotFound,
            format!("checkpoint {name:?} of lab {lab:?} holds no node {node:?}"),
        )
    })
}

/// Checks that `ckpt`, brought from elsewhere, fits `lab` as it runs in
/// `state`: a new name, and exactly the lab's nodes; returns it with each
/// node on the host that runs it (whose agent was given its files).
pub fn check_import(
    state: &ClusterState,
    lab: &str,
    mut ckpt: Checkpoint,
) -> Result<Checkpoint, ErrorReply> {
    check_lab(state, lab, "given a checkpoint")?;
    let rec = state.labs.get(lab).ok_or_else(|| no_lab(state, lab))?;
    if rec.checkpoints.contains_key(&ckpt.name) {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            format!(
                "lab {lab:?} already has a checkpoint {:?}; choose another name or delete it first",
                ckpt.name
            ),
        ));
    }
    let now: BTreeSet<&String> = rec.placement.keys().collect();
    let then: BTreeSet<&String> = ckpt.nodes.keys().collect();
    if now != then {
        return Err(ErrorReply::new(
            ErrorKind::Invalid,
            format!(
                "checkpoint {:?} holds nodes {then:?}, lab {lab:?} has {now:?}",
                ckpt.name
            ),
        ));
    }
    for (node, share) in &mut ckpt.nodes {
        share.host = rec.placement.get(node).cloned().unwrap_or_default();
        // Copies made where it was saved are not here.
        share.copies.clear();
    }
    Ok(ckpt)
}

/// Leader: records a checkpoint whose files `labspan load` gave the hosts.
pub(super) async fn import(inner: &Arc<Inner>, lab: &str, checkpoint: Checkpoint) -> Reply {
    if let Err(e) = valid::checkpoint(&checkpoint.name) {
        return error(ErrorKind::Invalid, e.to_string());
    }
    let _one_at_a_time = inner.lab_lock.lock().await;
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let checkpoint = match check_import(&inner.state.read().state, lab, checkpoint) {
        Ok(c) => c,
        Err(refused) => return Reply::Error(refused),
    };
    let begin = Command::BeginCheckpoint {
        lab: lab.to_string(),
        name: checkpoint.name.clone(),
        kind: CheckpointOpKind::Create,
    };
    if let Err(e) = inner.write(begin).await {
        return Reply::Error(e);
    }
    let end = Command::EndCheckpoint {
        lab: lab.to_string(),
        checkpoint: Some(Box::new(checkpoint.clone())),
    };
    if let Err(e) = inner.write(end).await {
        return Reply::Error(e);
    }
    copy_to_second_hosts(inner, lab, &checkpoint).await;
    let with_copies = (inner.state.read().state.labs.get(lab))
        .and_then(|r| r.checkpoints.get(&checkpoint.name).cloned());
    Reply::Checkpointed(with_copies.unwrap_or(checkpoint))
}

/// A new leader: ends every checkpoint operation its predecessor left (a
/// create is dropped everywhere, a reset carried out again).
pub(super) async fn resume(inner: &Arc<Inner>) {
    let ops: Vec<(String, String, CheckpointOpKind)> = inner
        .state
        .read()
        .state
        .labs
        .iter()
        .filter_map(|(lab, r)| {
            r.checkpoint_op
                .as_ref()
                .map(|op| (lab.clone(), op.name.clone(), op.kind))
        })
        .collect();
    for (lab, name, kind) in ops {
        let _one_at_a_time = inner.lab_lock.lock().await;
        let hosts: BTreeMap<String, Vec<String>> = {
            let state = &inner.state.read().state;
            let Some(rec) = state.labs.get(&lab).filter(|r| r.checkpoint_op.is_some()) else {
                continue;
            };
            let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (node, host) in &rec.placement {
                hosts.entry(host.clone()).or_default().push(node.clone());
            }
            hosts
        };
        let set: BTreeSet<String> = hosts.keys().cloned().collect();
        super::resume::wait_for_agents(inner, &set).await;
        match kind {
            CheckpointOpKind::Create => {
                tracing::info!(
                    lab,
                    name,
                    "dropping a checkpoint left unfinished by the previous leader"
                );
                drop_everywhere(inner, &lab, &name, hosts.keys()).await;
                let end = Command::EndCheckpoint {
                    lab: lab.clone(),
                    checkpoint: None,
                };
                if let Err(e) = inner.write(end).await {
                    tracing::warn!(lab, error = %e.message, "cannot end a resumed checkpoint");
                }
            }
            CheckpointOpKind::Reset => {
                tracing::info!(
                    lab,
                    name,
                    "finishing a reset left unfinished by the previous leader"
                );
                let result = carry_out_reset(inner, &lab, &name, &hosts).await;
                if let Err(e) = end_reset(inner, &lab, &name, &result).await {
                    tracing::warn!(lab, error = %e.message, "cannot end a resumed reset");
                }
            }
        }
    }
}

pub(super) mod auto;
mod reset;
pub(super) mod restore;

#[cfg(test)]
mod tests;
