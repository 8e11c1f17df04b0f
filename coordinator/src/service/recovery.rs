//! Host loss (DESIGN.md: "only a host loss restarts VMs, and then only that
//! host's VMs, on other hosts"). The leader looks at the state each time its
//! host monitor ticks: every lab with nodes placed on a host that is down has
//! those nodes placed again on the hosts that are up (placement's incremental
//! mode keeps every other node where it runs), the new placement goes through
//! Raft, and the lab's hosts get their new plans. When no up host can take
//! them, the lab becomes `Degraded` and nothing else changes.
//!
//! The decision ([`decide`]) is pure and reads only the replicated state, so a
//! new leader finishes what its predecessor started: labs still on a down
//! host are decided again, a move recorded but not yet pushed is a lab left
//! `Deploying`, which [`super::resume`] settles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{Capabilities, Reply};

use super::{agents, checkpoints, decide, lock, moves, push, Inner};
use crate::metrics::RecoveryKind;
use crate::placement::{place_lab, vm_memory_mib};
use crate::raft::{ClusterState, Command, LabRecord, LabStatus};

/// What the leader does about one lab whose nodes lost their host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Record `placement` (the lab's whole new placement) and push its plans;
    /// `moved` is node → (lost host, new host), for the log.
    Move {
        lab: String,
        placement: BTreeMap<String, String>,
        moved: BTreeMap<String, (String, String)>,
    },
    /// No host that is up can take the lab's lost nodes: record why.
    Strand { lab: String, reason: String },
    /// A `Degraded` lab whose hosts are all up again (the lost host came
    /// back): plan its hosts again and record how it runs.
    Restore { lab: String },
    /// The lost nodes of `lab` fit nowhere, yet the room is there in pieces
    /// too small: moving `node` of lab `owner` live from `from` to `to`
    /// joins two of them. The move writes its own entries; the next tick
    /// decides `lab` again.
    MakeRoom {
        lab: String,
        owner: String,
        node: String,
        from: String,
        to: String,
    },
}

impl Recovery {
    /// The one log entry this step writes (`Restore` writes only the
    /// status it settles to).
    pub(super) fn command(&self) -> Option<Command> {
        match self {
            Recovery::Move {
                lab,
                placement,
                moved,
            } => Some(Command::MoveNodes {
                lab: lab.clone(),
                placement: placement.clone(),
                moved: moved.keys().cloned().collect(),
                restore: BTreeMap::new(),
            }),
            Recovery::Strand { lab, reason } => Some(Command::SetLabStatus {
                lab: lab.clone(),
                status: LabStatus::Degraded {
                    reason: reason.clone(),
                },
            }),
            Recovery::Restore { .. } | Recovery::MakeRoom { .. } => None,
        }
    }
}

/// Every lab that needs a recovery step, in lab-name order. Each move is
/// applied to a copy of the state before the next lab is decided, so two
/// labs never count on the same free room; a live move that makes room
/// ends the list (the room it makes is decided on at the next tick).
pub(super) fn decide(
    state: &ClusterState,
    capabilities: &HashMap<String, Capabilities>,
) -> Vec<Recovery> {
    // The usual case, every tick: nothing lost, no copy of the state.
    let quiet = state.labs.values().all(|rec| {
        !matches!(rec.status, LabStatus::Degraded { .. }) && lost_nodes(state, rec).is_empty()
    });
    if quiet {
        return Vec::new();
    }
    let mut state = state.clone();
    let names: Vec<String> = state.labs.keys().cloned().collect();
    let mut out = Vec::new();
    for name in names {
        // A lab with a live move in flight is decided once the move has
        // ended (it holds the node on two hosts until then).
        if state.labs.get(&name).is_some_and(|r| r.migration.is_some()) {
            continue;
        }
        let Some(step) = decide_lab(&state, &name, capabilities) else {
            continue;
        };
        if let (Recovery::Move { placement, .. }, Some(rec)) = (&step, state.labs.get_mut(&name)) {
            rec.placement = placement.clone();
        }
        let making_room = matches!(step, Recovery::MakeRoom { .. });
        out.push(step);
        if making_room {
            break;
        }
    }
    out
}

/// Nodes of `rec` whose host is unknown or down: node → that host.
fn lost_nodes(state: &ClusterState, rec: &LabRecord) -> BTreeMap<String, String> {
    rec.placement
        .iter()
        .filter(|(_, host)| !state.hosts.get(*host).is_some_and(|h| h.up))
        .map(|(node, host)| (node.clone(), host.clone()))
        .collect()
}

fn decide_lab(
    state: &ClusterState,
    name: &str,
    capabilities: &HashMap<String, Capabilities>,
) -> Option<Recovery> {
    let rec = state.labs.get(name)?;
    if rec.status == LabStatus::Deleting {
        return None;
    }
    let lost = lost_nodes(state, rec);
    if lost.is_empty() {
        let degraded = matches!(rec.status, LabStatus::Degraded { .. });
        return degraded.then(|| Recovery::Restore { lab: name.into() });
    }
    let bundle = match state.bundle(name)? {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(lab = name, error = %e, "cannot decode a stored lab; its lost nodes stay lost");
            return None;
        }
    };
    let step = match place_lab(
        &bundle.lab,
        &decide::offers(state, name, capabilities),
        &rec.placement,
    ) {
        Ok(p) => moved_or_stranded(name, &rec.placement, &lost, p.nodes),
        Err(e) => room_by_moving(state, name, &bundle, &lost, capabilities).unwrap_or_else(|| {
            Recovery::Strand {
                lab: name.into(),
                reason: no_host(&lost, &e.on_cluster().to_string()),
            }
        }),
    };
    match &step {
        Recovery::Strand { reason, .. }
            if rec.status
                == (LabStatus::Degraded {
                    reason: reason.clone(),
                }) =>
        {
            None // Already recorded.
        }
        _ => Some(step),
    }
}

/// A move of exactly the lost nodes, or (should placement ever move a node
/// that runs on an up host) a refusal: only a host loss restarts VMs.
fn moved_or_stranded(
    lab: &str,
    old: &BTreeMap<String, String>,
    lost: &BTreeMap<String, String>,
    new: BTreeMap<String, String>,
) -> Recovery {
    let kept_moved: Vec<&String> = old
        .iter()
        .filter(|(node, host)| !lost.contains_key(*node) && new.get(*node) != Some(host))
        .map(|(node, _)| node)
        .collect();
    if let Some(node) = kept_moved.first() {
        let why =
            format!("placing them again would move node {node:?}, which runs on a host that is up");
        return Recovery::Strand {
            lab: lab.into(),
            reason: no_host(lost, &why),
        };
    }
    let moved = lost
        .iter()
        .filter_map(|(node, from)| Some((node.clone(), (from.clone(), new.get(node)?.clone()))))
        .collect();
    Recovery::Move {
        lab: lab.into(),
        placement: new,
        moved,
    }
}

/// How many candidate moves [`room_by_moving`] tries at most (each costs a
/// placement of the lab).
const MAX_ROOM_TRIES: usize = 64;

/// A live move of one running node (of any running lab) that lets the lost
/// nodes of `lab` be placed again, when placing them failed: memory free
/// in pieces on several hosts, none big enough, may be joined by moving a
/// node off one of them. Only nodes whose host would then have room for a
/// lost node are tried, smallest first (the cheapest move), then by name.
fn room_by_moving(
    state: &ClusterState,
    lab: &str,
    bundle: &LabBundle,
    lost: &BTreeMap<String, String>,
    capabilities: &HashMap<String, Capabilities>,
) -> Option<Recovery> {
    let need =
        |spec: &labspan_proto::lab::Node| vm_memory_mib(spec.memory_mib, u64::from(spec.cpus));
    let smallest_lost = lost
        .keys()
        .filter_map(|n| bundle.lab.nodes.get(n))
        .map(need)
        .min()?;
    let rec = state.labs.get(lab)?;
    // Free memory of each host for this lab: its offer, less the lab's own
    // nodes that stay there.
    let mut free: BTreeMap<String, u64> = decide::offers(state, lab, capabilities)
        .into_iter()
        .map(|h| {
            let o = h.offer();
            (h.name, o.memory_mib.saturating_sub(o.used_memory_mib))
        })
        .collect();
    // Room on each host for a moved node, as `moves::choose` counts it,
    // read once: `choose` reads every lab's nodes on each call, and a
    // candidate it refuses is not counted in `tries`. With 500 full labs
    // that was thousands of candidates × every host × every lab on each
    // monitor tick (docs/benchmarks.md, "State at scale"); a target
    // without that room is now skipped before `choose` is asked.
    let room: BTreeMap<String, (u64, u64)> = decide::offers(state, "", capabilities)
        .into_iter()
        .map(|h| {
            let o = h.offer();
            let mem = o.memory_mib.saturating_sub(o.used_memory_mib);
            (h.name, (mem, o.vcpus.saturating_sub(o.used_vcpus)))
        })
        .collect();
    for (node, host) in rec.placement.iter().filter(|(n, _)| !lost.contains_key(*n)) {
        if let (Some(f), Some(spec)) = (free.get_mut(host), bundle.lab.nodes.get(node)) {
            *f = f.saturating_sub(need(spec));
        }
    }
    let mut candidates = Vec::new();
    for (owner, other) in state
        .labs
        .iter()
        .filter(|(_, r)| r.status == LabStatus::Running)
    {
        let Some(Ok(owner_bundle)) = state.bundle(owner) else {
            continue;
        };
        for (node, from) in &other.placement {
            if owner == lab && lost.contains_key(node) {
                continue;
            }
            let Some(spec) = owner_bundle.lab.nodes.get(node) else {
                continue;
            };
            let size = need(spec);
            if free.get(from).is_some_and(|f| f + size >= smallest_lost) {
                let cpus = u64::from(spec.cpus);
                candidates.push((size, owner.clone(), node.clone(), from.clone(), cpus));
            }
        }
    }
    candidates.sort();
    let mut sim = state.clone();
    let mut tries = 0;
    for (size, owner, node, from, cpus) in candidates {
        for to in state.hosts.keys().filter(|h| **h != from) {
            if tries == MAX_ROOM_TRIES {
                return None;
            }
            let has_room = room.get(to).is_some_and(|(m, c)| *m >= size && *c >= cpus);
            if !has_room {
                continue;
            }
            if moves::choose(state, capabilities, &owner, &node, Some(to)).is_err() {
                continue;
            }
            tries += 1;
            let placed = |sim: &mut ClusterState, host: &str| {
                if let Some(p) = sim
                    .labs
                    .get_mut(&owner)
                    .and_then(|r| r.placement.get_mut(&node))
                {
                    *p = host.to_string();
                }
            };
            placed(&mut sim, to);
            let existing = sim
                .labs
                .get(lab)
                .map(|r| r.placement.clone())
                .unwrap_or_default();
            let fits = place_lab(
                &bundle.lab,
                &decide::offers(&sim, lab, capabilities),
                &existing,
            )
            .is_ok_and(|p| {
                matches!(
                    moved_or_stranded(lab, &existing, lost, p.nodes),
                    Recovery::Move { .. }
                )
            });
            placed(&mut sim, &from);
            if fits {
                return Some(Recovery::MakeRoom {
                    lab: lab.into(),
                    owner,
                    node,
                    from,
                    to: to.clone(),
                });
            }
        }
    }
    None
}

/// The `Degraded` reason: which nodes have no host, where they were, and why.
fn no_host(lost: &BTreeMap<String, String>, why: &str) -> String {
    let nodes: Vec<String> = lost.keys().map(|n| format!("{n:?}")).collect();
    let hosts: BTreeSet<&String> = lost.values().collect();
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let (node_word, verb) = if nodes.len() == 1 {
        ("node", "has")
    } else {
        ("nodes", "have")
    };
    format!(
        "{node_word} {} {verb} no host (host {} down): {why}",
        nodes.join(", "),
        hosts.join(", ")
    )
}

/// Leader: carries out [`decide`]'s steps, one lab at a time, under the lab
/// lock (a deploy in flight finishes first and is seen by the decision).
pub(super) async fn run(inner: &Arc<Inner>) {
    let capabilities = lock(&inner.capabilities).clone();
    if decide(&inner.state.read().state, &capabilities).is_empty() {
        return;
    }
    let _one_at_a_time = inner.lab_lock.lock().await;
    if let Err(e) = inner.fresh().await {
        tracing::info!(error = %e.message, "not recovering labs: leadership not confirmed");
        return;
    }
    let steps = decide(&inner.state.read().state, &capabilities);
    for step in steps {
        if !inner.is_leader() {
            return; // The next leader decides again from the log.
        }
        if let Err(e) = carry_out(inner, &step).await {
            tracing::warn!(?step, error = %e.message, "recovery step not finished; retried next tick");
            return;
        }
    }
}

async fn carry_out(
    inner: &Arc<Inner>,
    step: &Recovery,
) -> Result<(), labspan_proto::msg::ErrorReply> {
    match step {
        Recovery::Move {
            lab,
            placement,
            moved,
        } => {
            let hosts: BTreeSet<String> = placement.values().cloned().collect();
            if waiting_for_agents(inner, lab, &hosts) {
                return Ok(());
            }
            tracing::warn!(lab, ?moved, "host lost: starting its nodes on other hosts");
            // Their checkpoint's files go to their new hosts first, so
            // that the plans say to restart them from it.
            let to: BTreeMap<String, String> = (moved.iter())
                .map(|(node, (_, to))| (node.clone(), to.clone()))
                .collect();
            let restore = checkpoints::restore::prepare(inner, lab, &to).await;
            // One entry: placement and `Deploying` together, so a new
            // leader settles a move it finds recorded.
            inner
                .write(Command::MoveNodes {
                    lab: lab.clone(),
                    placement: placement.clone(),
                    moved: moved.keys().cloned().collect(),
                    restore,
                })
                .await?;
            let vms = push::settle(inner, lab, &hosts).await?;
            inner.metrics.recovered(RecoveryKind::Move);
            tracing::info!(lab, vms = vms.len(), "lab re-placed after a host loss");
        }
        Recovery::Strand { lab, reason } => {
            tracing::warn!(lab, reason, "lab degraded: lost nodes have no host");
            if let Some(cmd) = step.command() {
                inner.write(cmd).await?;
            }
            inner.metrics.recovered(RecoveryKind::Strand);
        }
        Recovery::Restore { lab } => {
            let hosts: BTreeSet<String> = inner
                .state
                .read()
                .state
                .labs
                .get(lab)
                .map(|r| r.placement.values().cloned().collect())
                .unwrap_or_default();
            if waiting_for_agents(inner, lab, &hosts) {
                return Ok(());
            }
            let vms = push::settle(inner, lab, &hosts).await?;
            inner.metrics.recovered(RecoveryKind::Restore);
            tracing::info!(lab, vms = vms.len(), "degraded lab whole again");
        }
        Recovery::MakeRoom {
            lab,
            owner,
            node,
            from,
            to,
        } => {
            tracing::warn!(
                lab,
                owner,
                node,
                from,
                to,
                "host lost: its nodes fit nowhere as memory is; moving a running node live to make room"
            );
            if let Reply::Error(e) = moves::move_node_locked(inner, owner, node, Some(to)).await {
                return Err(e);
            }
            inner.metrics.recovered(RecoveryKind::MakeRoom);
        }
    }
    Ok(())
}

/// Whether an agent of `hosts` is not connected to this leader yet (after a
/// failover they come back within the new leader's grace, `Timing::new_leader_grace`): the
/// step waits for a later tick rather than record the lab `Failed`. A host
/// whose agent never comes back is marked down, and the next decision
/// places around it.
fn waiting_for_agents(inner: &Inner, lab: &str, hosts: &BTreeSet<String>) -> bool {
    let missing = agents::missing(inner, hosts);
    if !missing.is_empty() {
        tracing::info!(lab, ?missing, "recovery waits for these agents to connect");
    }
    !missing.is_empty()
}

#[cfg(test)]
mod tests;
