//! Live moves of running nodes: one recorded intent per move.
//!
//! `BeginMove` (node, from, to, phase `Preparing`, the move's port and key)
//! is written before anything is done. The plans then hold the node on
//! both hosts: its own host runs it, the destination receives it (QEMU
//! with `-incoming`), and its segments span both so peers reach it
//! wherever it runs at the switch-over. `SetMovePhase(Copying)` is written
//! before the source is told to migrate. Whatever happens next, the move
//! ends with one `EndMove`: `done` (the node is placed on the destination;
//! plans stop the source's paused copy) or not (the destination's copy
//! is stopped, the source runs on). A new leader that finds a move asks
//! both agents how it looks ([`verdict`]) and ends it the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{
    AgentReply, AgentRequest, Capabilities, ErrorKind, ErrorReply, MoveFigures, MoveReport,
    MoveSide, Reply,
};
use labspan_proto::suggest;
use labspan_transport::poll::Poll;

use super::push::{push_plans, settle};
use super::{agents, decide, error, lock, Inner};
use crate::placement::vm_memory_mib;
use crate::raft::{ClusterState, Command, LabStatus, Migration, MovePhase};

/// First port of a move's streams on the destination (RAM; NBD on the
/// next); each move in flight to one host takes two.
pub const FIRST_MOVE_PORT: u16 = 7200;
/// How many moves may be in flight to one host at once.
const MAX_MOVES_PER_HOST: u16 = 50;
/// How long a leader deciding a move waits for a source still migrating.
const MIGRATING_WAIT: Duration = Duration::from_secs(900);
/// How often it asks.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// Where a move goes, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveChoice {
    pub from: String,
    pub to: String,
}

/// Checks a move of `node` of `lab` and picks its destination (`to`, or
/// the host placement prefers: room for the node, then most of its link
/// peers, then most free memory). Refusals say why; nothing changes.
pub fn choose(
    state: &ClusterState,
    capabilities: &HashMap<String, Capabilities>,
    lab: &str,
    node: &str,
    to: Option<&str>,
) -> Result<MoveChoice, ErrorReply> {
    let free = decide::free_room(decide::offers(state, "", capabilities));
    choose_in(state, &free, lab, node, to)
}

/// [`choose`] with each host's free room (memory MiB, vCPUs) as
/// `decide::free_room` of `decide::offers(state, "", ..)` gives it, read
/// once by a caller that asks about many moves over one state.
pub(super) fn choose_in(
    state: &ClusterState,
    free: &BTreeMap<String, (u64, u64)>,
    lab: &str,
    node: &str,
    to: Option<&str>,
) -> Result<MoveChoice, ErrorReply> {
    let invalid = |m: String| ErrorReply::new(ErrorKind::Invalid, m);
    let Some(rec) = state.labs.get(lab) else {
        let hint = suggest::hint(lab, state.labs.keys().map(String::as_str), "deployed labs");
        return Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("lab {lab:?} is not deployed{hint}"),
        ));
    };
    let Some(from) = rec.placement.get(node) else {
        let hint = suggest::hint(node, rec.placement.keys().map(String::as_str), "its nodes");
        return Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("lab {lab:?} has no node {node:?}{hint}"),
        ));
    };
    if let Some(m) = &rec.migration {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            format!(
                "lab {lab:?} is already moving node {:?} from {:?} to {:?}: wait until that move ends",
                m.node, m.from, m.to
            ),
        ));
    }
    if rec.status != LabStatus::Running {
        return Err(invalid(format!(
            "lab {lab:?} is {}: only a running lab's nodes move live",
            status_word(&rec.status)
        )));
    }
    if !state.hosts.get(from).is_some_and(|h| h.up) {
        return Err(invalid(format!(
            "node {node:?} of lab {lab:?} runs on host {from:?}, which is down: nothing to move live"
        )));
    }
    let bundle = state
        .bundle(lab)
        .transpose()
        .map_err(|e| invalid(format!("lab {lab:?}: its stored spec does not decode: {e}")))?
        .ok_or_else(|| invalid(format!("lab {lab:?} is not deployed")))?;
    let spec = bundle
        .lab
        .nodes
        .get(node)
        .ok_or_else(|| invalid(format!("lab {lab:?} has no node {node:?} in its spec")))?;
    let need_mib = vm_memory_mib(spec.memory_mib, u64::from(spec.cpus));
    let need_cpus = u64::from(spec.cpus);
    let fits = |host: &str| {
        free.get(host)
            .is_some_and(|(m, c)| *m >= need_mib && *c >= need_cpus)
    };
    let need = format!("{need_mib} MiB and {need_cpus} vCPUs");
    if let Some(to) = to {
        let Some(host) = state.hosts.get(to) else {
            let hint = suggest::hint(to, state.hosts.keys().map(String::as_str), "hosts");
            return Err(ErrorReply::new(
                ErrorKind::NotFound,
                format!("no host {to:?} in the cluster{hint}"),
            ));
        };
        if to == from {
            return Err(invalid(format!(
                "node {node:?} of lab {lab:?} already runs on host {to:?}"
            )));
        }
        if !host.up {
            return Err(invalid(format!("host {to:?} is down")));
        }
        if host.cordoned {
            return Err(invalid(format!(
                "host {to:?} is cordoned (no new placements); `labspan host uncordon {to}` ends that"
            )));
        }
        if !fits(to) {
            let (m, c) = free.get(to).copied().unwrap_or_default();
            return Err(invalid(format!(
                "host {to:?} has no room for node {node:?} (it needs {need}; {m} MiB and {c} vCPUs are free)"
            )));
        }
        return Ok(MoveChoice {
            from: from.clone(),
            to: to.to_string(),
        });
    }
    let peers = link_peers(&bundle, node);
    let best = state
        .hosts
        .iter()
        .filter(|(name, h)| *name != from && h.up && !h.cordoned && fits(name))
        .max_by_key(|(name, _)| {
            let near = peers
                .iter()
                .filter(|p| rec.placement.get(*p) == Some(*name))
                .count();
            let mem = free.get(*name).map_or(0, |f| f.0);
            // Names break ties the same way on every run (lowest first).
            (near, mem, std::cmp::Reverse((*name).clone()))
        });
    match best {
        Some((to, _)) => Ok(MoveChoice {
            from: from.clone(),
            to: to.clone(),
        }),
        None => Err(invalid(format!(
            "no other host can take node {node:?} of lab {lab:?} (it needs {need}; hosts that are down or cordoned do not count)"
        ))),
    }
}

/// The nodes that share a segment with `node`.
fn link_peers(bundle: &LabBundle, node: &str) -> BTreeSet<String> {
    bundle
        .lab
        .segments()
        .iter()
        .filter(|s| s.members.iter().any(|m| m.node == node))
        .flat_map(|s| s.members.iter().map(|m| m.node.clone()))
        .filter(|n| n != node)
        .collect()
}

fn status_word(s: &LabStatus) -> String {
    match s {
        LabStatus::Deploying => "deploying".into(),
        LabStatus::Running => "running".into(),
        LabStatus::Failed { reason } => format!("failed ({reason})"),
        LabStatus::Deleting => "being deleted".into(),
        LabStatus::Degraded { reason } => format!("degraded ({reason})"),
    }
}

/// The lowest free port pair on `to` for a new move.
pub fn free_port(state: &ClusterState, to: &str) -> Option<u16> {
    let used: BTreeSet<u16> = state
        .labs
        .values()
        .filter_map(|r| r.migration.as_ref())
        .filter(|m| m.to == to)
        .map(|m| m.port)
        .collect();
    (0..MAX_MOVES_PER_HOST)
        .map(|i| FIRST_MOVE_PORT + 2 * i)
        .find(|p| !used.contains(p))
}

/// What a leader does with a move, from how each side looks (`None`: its
/// agent did not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The guest runs at the destination: record the move done.
    Done,
    /// The guest never left: stop the destination's copy.
    RollBack,
    /// The source is migrating it now: ask again.
    Wait,
}

/// Decides a move from its phase and both sides. The guest left only if
/// either side says the migration completed; while the source's agent
/// still migrates, wait; anything else never left the source, whose copy
/// (paused by its fence if its agent died) runs on.
pub fn verdict(phase: MovePhase, source: Option<MoveSide>, dest: Option<MoveSide>) -> Verdict {
    if phase == MovePhase::Preparing {
        return Verdict::RollBack;
    }
    if dest == Some(MoveSide::Completed) || source == Some(MoveSide::Completed) {
        return Verdict::Done;
    }
    if source == Some(MoveSide::Migrating) {
        return Verdict::Wait;
    }
    Verdict::RollBack
}

/// How often a change of a lab that has a move in flight looks again.
const MOVE_ENDED_POLL: Duration = Duration::from_millis(200);

/// The lab lock, once `lab` has no move in flight. A move holds the lock
/// only to begin and to end, and copies without it, so other labs deploy,
/// move and recover meanwhile; a change of the moving lab itself waits
/// here for the move to end (without the lock, which the end needs).
pub(super) async fn lock_unmoving<'a>(
    inner: &'a Inner,
    lab: &str,
) -> Result<tokio::sync::MutexGuard<'a, ()>, ErrorReply> {
    let unmoving = Poll::new(MOVE_ENDED_POLL, MIGRATING_WAIT)
        .until(|| async {
            let guard = inner.lab_lock.lock().await;
            migration(inner, lab).is_none().then_some(guard)
        })
        .await;
    unmoving.ok_or_else(|| {
        let moving = migration(inner, lab)
            .map(|m| {
                format!(
                    "node {:?} of lab {lab:?} is still moving from {:?} to {:?}",
                    m.node, m.from, m.to
                )
            })
            .unwrap_or_else(|| format!("lab {lab:?} is still moving a node"));
        ErrorReply::new(
            ErrorKind::Conflict,
            format!("{moving} after {MIGRATING_WAIT:?}: try again when the move has ended"),
        )
    })
}

/// Leader: moves `node` of `lab` live to `to` (or where placement says);
/// answers once the move is recorded done or rolled back. The lab lock is
/// held to decide and record the move, and again to end it, not while the
/// guest's disk and RAM are copied: moves of other labs (a drain runs a
/// few at once) and other labs' changes go on meanwhile.
pub(super) async fn move_node(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    to: Option<&str>,
) -> Reply {
    let begun = {
        let _one_at_a_time = match lock_unmoving(inner, lab).await {
            Ok(guard) => guard,
            Err(e) => return Reply::Error(e),
        };
        if let Err(e) = inner.fresh().await {
            return Reply::Error(e);
        }
        match begin(inner, lab, node, to).await {
            Ok(begun) => begun,
            Err(refused) => return refused,
        }
    };
    let outcome = copy(inner, lab, node, &begun).await;
    let _one_at_a_time = inner.lab_lock.lock().await;
    finish(inner, lab, node, begun, outcome).await
}

/// [`move_node`] for a caller that holds the lab lock and has confirmed
/// its leadership (recovery making room for a lost host's nodes); the lock
/// stays held for the whole move.
pub(super) async fn move_node_locked(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    to: Option<&str>,
) -> Reply {
    let begun = match begin(inner, lab, node, to).await {
        Ok(begun) => begun,
        Err(refused) => return refused,
    };
    let outcome = copy(inner, lab, node, &begun).await;
    finish(inner, lab, node, begun, outcome).await
}

/// A move whose intent is recorded (`BeginMove`).
struct Begun {
    choice: MoveChoice,
    port: u16,
    started: Instant,
}

/// Checks the move, picks its destination and port, and records its
/// intent. The caller holds the lab lock.
async fn begin(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    to: Option<&str>,
) -> Result<Begun, Reply> {
    let started = Instant::now();
    let decided = {
        let state = &inner.state.read().state;
        let capabilities = lock(&inner.capabilities).clone();
        choose(state, &capabilities, lab, node, to)
    };
    let choice = decided.map_err(Reply::Error)?;
    let both: BTreeSet<String> = [choice.from.clone(), choice.to.clone()].into();
    let missing = agents::missing(inner, &both);
    if !missing.is_empty() {
        return Err(error(
            ErrorKind::Unavailable,
            format!("the agents of {missing:?} are not connected to the leader: cannot move now"),
        ));
    }
    let Some(port) = free_port(&inner.state.read().state, &choice.to) else {
        return Err(error(
            ErrorKind::Unavailable,
            format!(
                "host {:?} already receives {MAX_MOVES_PER_HOST} moves",
                choice.to
            ),
        ));
    };
    let begin = Command::BeginMove {
        lab: lab.to_string(),
        node: node.to_string(),
        to: choice.to.clone(),
        port,
    };
    inner.write(begin).await.map_err(Reply::Error)?;
    tracing::info!(
        lab,
        node,
        from = choice.from,
        to = choice.to,
        "moving a node live"
    );
    Ok(Begun {
        choice,
        port,
        started,
    })
}

/// Carries out a recorded move; whether the guest ended on the destination
/// (from both hosts' own view when the steps did not finish), with the
/// figures or why it stopped.
async fn copy(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    begun: &Begun,
) -> (bool, Result<MoveFigures, String>) {
    let moved = carry_out(inner, lab, node, &begun.choice, begun.port).await;
    let done = match &moved {
        Ok(_) => true,
        Err(why) => {
            tracing::warn!(
                lab,
                node,
                why,
                "the move failed; deciding it from both hosts"
            );
            decide_end(inner, lab).await
        }
    };
    (done, moved)
}

/// Records the move's end and answers the caller. The caller holds the
/// lab lock.
async fn finish(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    begun: Begun,
    (done, moved): (bool, Result<MoveFigures, String>),
) -> Reply {
    if let Err(e) = end(inner, lab, done).await {
        return Reply::Error(e);
    }
    let Begun {
        choice, started, ..
    } = begun;
    match (done, moved) {
        (true, figures) => Reply::Moved(MoveReport {
            lab: lab.to_string(),
            node: node.to_string(),
            from: choice.from,
            to: choice.to,
            figures: figures.unwrap_or_default(),
            total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
        (false, Err(why)) => error(
            ErrorKind::Unavailable,
            format!(
                "moving node {node:?} of lab {lab:?} from {:?} to {:?} failed and was rolled back (it runs on {:?}): {why}",
                choice.from, choice.to, choice.from
            ),
        ),
        (false, Ok(_)) => error(ErrorKind::Internal, "a move that succeeded was rolled back"),
    }
}

/// The move's steps after its intent is recorded; the figures, or why it
/// stopped.
async fn carry_out(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    choice: &MoveChoice,
    port: u16,
) -> Result<MoveFigures, String> {
    let hosts = lab_hosts(inner, lab);
    let outcomes = push_plans(inner, &hosts).await;
    match outcomes.get(&choice.to) {
        Some(Ok(vms)) => match vms.iter().find(|v| v.lab == lab && v.vm == node) {
            Some(v) if v.error.is_none() => {}
            Some(v) => {
                return Err(format!(
                    "host {:?} could not ready a QEMU for it: {}",
                    choice.to,
                    v.error.clone().unwrap_or_default()
                ))
            }
            None => return Err(format!("host {:?} did not ready a QEMU for it", choice.to)),
        },
        Some(Err(e)) => return Err(format!("host {:?}: {e}", choice.to)),
        None => return Err(format!("host {:?} got no plan", choice.to)),
    }
    inner
        .write(Command::SetMovePhase {
            lab: lab.to_string(),
            phase: MovePhase::Copying,
        })
        .await
        .map_err(|e| e.message)?;
    let vtep = inner
        .state
        .read()
        .state
        .hosts
        .get(&choice.to)
        .map(|h| h.vtep)
        .ok_or_else(|| format!("host {:?} is gone", choice.to))?;
    let req = AgentRequest::MigrateOut {
        lab: lab.to_string(),
        node: node.to_string(),
        to: vtep,
        port,
        host: choice.to.clone(),
    };
    match agents::request(inner, &choice.from, &req).await? {
        AgentReply::Migrated(figures) => Ok(figures),
        AgentReply::Error(e) => Err(e.message),
        other => Err(format!("unexpected agent reply {other:?}")),
    }
}

/// The up hosts of `lab`, its move's destination included.
fn lab_hosts(inner: &Inner, lab: &str) -> BTreeSet<String> {
    let state = &inner.state.read().state;
    let Some(rec) = state.labs.get(lab) else {
        return BTreeSet::new();
    };
    rec.placement
        .values()
        .chain(rec.migration.iter().flat_map(|m| [&m.from, &m.to]))
        .filter(|h| state.hosts.get(*h).is_some_and(|h| h.up))
        .cloned()
        .collect()
}

/// Asks both sides of `lab`'s move until the verdict is done or rolled back.
async fn decide_end(inner: &Arc<Inner>, lab: &str) -> bool {
    let mut wait = Poll::new(ASK_EVERY, MIGRATING_WAIT).start();
    loop {
        let Some(m) = migration(inner, lab) else {
            return false;
        };
        let source = side(inner, &m.from, lab, &m.node).await;
        let dest = side(inner, &m.to, lab, &m.node).await;
        let v = verdict(m.phase, source, dest);
        tracing::info!(lab, node = m.node, ?source, ?dest, ?v, "move verdict");
        match v {
            Verdict::Done => return true,
            Verdict::RollBack => return false,
            Verdict::Wait => {
                if !wait.pause().await {
                    return false;
                }
            }
        }
    }
}

fn migration(inner: &Inner, lab: &str) -> Option<Migration> {
    inner
        .state
        .read()
        .state
        .labs
        .get(lab)
        .and_then(|r| r.migration.as_deref().cloned())
}

async fn side(inner: &Inner, host: &str, lab: &str, node: &str) -> Option<MoveSide> {
    let req = AgentRequest::MoveStatus {
        lab: lab.to_string(),
        node: node.to_string(),
    };
    match agents::request(inner, host, &req).await {
        Ok(AgentReply::MoveStatus(s)) => Some(s),
        _ => None,
    }
}

/// Records the end of `lab`'s move and brings its hosts (both sides
/// included) to their plans.
async fn end(inner: &Arc<Inner>, lab: &str, done: bool) -> Result<(), ErrorReply> {
    let hosts = lab_hosts(inner, lab);
    inner
        .write(Command::EndMove {
            lab: lab.to_string(),
            done,
        })
        .await?;
    settle(inner, lab, &hosts).await.map(|_| ())
}

/// A new leader: ends every move its predecessor left, as the move itself
/// would have.
pub(super) async fn resume(inner: &Arc<Inner>) {
    let labs: Vec<String> = inner
        .state
        .read()
        .state
        .labs
        .iter()
        .filter(|(_, r)| r.migration.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for lab in labs {
        let _one_at_a_time = inner.lab_lock.lock().await;
        if migration(inner, &lab).is_none() {
            continue;
        }
        super::resume::wait_for_agents(inner, &lab_hosts(inner, &lab)).await;
        let done = decide_end(inner, &lab).await;
        tracing::info!(lab, done, "ending a move left by the previous leader");
        if let Err(e) = end(inner, &lab, done).await {
            tracing::warn!(lab, error = %e.message, "cannot end a resumed move");
        }
    }
}

#[cfg(test)]
mod tests;
