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
use std::sync::{Arc, Mutex};

use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{Capabilities, Reply};
use openraft::LogId;

use super::{agents, checkpoints, decide, lock, moves, push, Inner};
use crate::hosts::HostSpec;
use crate::metrics::RecoveryKind;
use crate::placement::{place_lab, vm_memory_mib};
use crate::raft::{ClusterState, Command, LabRecord, LabStatus, NodeId};

/// What the leader does about one lab whose nodes lost their host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
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
    pub fn command(&self) -> Option<Command> {
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
pub fn decide(state: &ClusterState, capabilities: &HashMap<String, Capabilities>) -> Vec<Recovery> {
    // The usual case, every tick: nothing lost, no copy of the state.
    let quiet = state.labs.values().all(|rec| {
        !matches!(rec.status, LabStatus::Degraded { .. }) && lost_nodes(state, rec).is_empty()
    });
    if quiet {
        return Vec::new();
    }
    let mut state = state.clone();
    // What each lab takes of each host, read once for this tick and kept
    // current as moves are decided.
    let mut in_use = decide::InUse::of(&state);
    let names: Vec<String> = state.labs.keys().cloned().collect();
    let mut out = Vec::new();
    for name in names {
        // A lab with a live move in flight is decided once the move has
        // ended (it holds the node on two hosts until then).
        if state.labs.get(&name).is_some_and(|r| r.migration.is_some()) {
            continue;
        }
        let Some(step) = decide_lab(&state, &in_use, &name, capabilities) else {
            continue;
        };
        if let (Recovery::Move { placement, .. }, Some(rec)) = (&step, state.labs.get_mut(&name)) {
            rec.placement = placement.clone();
            in_use.recount(&state, &name);
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
    in_use: &decide::InUse,
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
    let offers = decide::offers_from(state, name, &rec.placement, capabilities, in_use, None);
    let step = match place_lab(&bundle.lab, &offers, &rec.placement) {
        Ok(p) => moved_or_stranded(name, &rec.placement, &lost, p.nodes),
        Err(e) => {
            let search = RoomSearch {
                state,
                in_use,
                capabilities,
                lab: name,
                bundle: &bundle,
                lost: &lost,
            };
            search
                .by_moving(offers)
                .unwrap_or_else(|| Recovery::Strand {
                    lab: name.into(),
                    reason: no_host(&lost, &e.on_cluster().to_string()),
                })
        }
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

/// How many candidate moves [`RoomSearch::by_moving`] tries at most (each
/// costs a placement of the lab).
const MAX_ROOM_TRIES: usize = 64;

/// What the search for room for the lost nodes of `lab` reads.
struct RoomSearch<'a> {
    state: &'a ClusterState,
    /// What each lab takes of each host in `state`.
    in_use: &'a decide::InUse,
    capabilities: &'a HashMap<String, Capabilities>,
    lab: &'a str,
    bundle: &'a LabBundle,
    lost: &'a BTreeMap<String, String>,
}

impl RoomSearch<'_> {
    /// A live move of one running node (of any running lab) that lets the
    /// lost nodes of the lab be placed again, when placing them over
    /// `offers` (the lab's offers in the state) failed: memory free in
    /// pieces on several hosts, none big enough, may be joined by moving a
    /// node off one of them. Only nodes whose host would then have room
    /// for a lost node are tried, smallest first (the cheapest move), then
    /// by name.
    ///
    /// Each candidate is placed over the offers as they would be after its
    /// move: `offers` with that one VM counted on its new host, not offers
    /// read again from every lab (with 500 stored labs and a host down,
    /// reading every lab for each of up to 64 candidates, for each lab of
    /// the lost host, on every monitor tick kept the leader busy;
    /// docs/benchmarks.md, "State at scale").
    fn by_moving(&self, offers: Vec<HostSpec>) -> Option<Recovery> {
        let (state, lab, lost) = (self.state, self.lab, self.lost);
        let need =
            |spec: &labspan_proto::lab::Node| vm_memory_mib(spec.memory_mib, u64::from(spec.cpus));
        let smallest_lost = lost
            .keys()
            .filter_map(|n| self.bundle.lab.nodes.get(n))
            .map(need)
            .min()?;
        let rec = state.labs.get(lab)?;
        // Free memory of each host for this lab: its offer, less the lab's
        // own nodes that stay there.
        let mut free: BTreeMap<String, u64> = (decide::free_room(offers.clone()).into_iter())
            .map(|(host, (memory_mib, _))| (host, memory_mib))
            .collect();
        // Room on each host for a moved node, as `moves::choose` counts it.
        let room = decide::free_room(decide::offers_from(
            state,
            "",
            &BTreeMap::new(),
            self.capabilities,
            self.in_use,
            None,
        ));
        for (node, host) in rec.placement.iter().filter(|(n, _)| !lost.contains_key(*n)) {
            if let (Some(f), Some(spec)) = (free.get_mut(host), self.bundle.lab.nodes.get(node)) {
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
                if moves::choose_in(state, &room, &owner, &node, Some(to)).is_err() {
                    continue;
                }
                tries += 1;
                let moved = decide::MovedVm {
                    lab: &owner,
                    from: &from,
                    to,
                    memory_mib: size,
                    vcpus: cpus,
                };
                if let Some(step) = self.fits_after(&moved, &node) {
                    return Some(step);
                }
            }
        }
        None
    }

    /// The `MakeRoom` step if the lost nodes are placed (and nothing else
    /// of the lab moves) once node `node` of `moved.lab` runs on `moved.to`.
    fn fits_after(&self, moved: &decide::MovedVm, node: &str) -> Option<Recovery> {
        let mut existing = self.state.labs.get(self.lab)?.placement.clone();
        if moved.lab == self.lab {
            existing.insert(node.to_string(), moved.to.to_string());
        }
        let offers = decide::offers_from(
            self.state,
            self.lab,
            &existing,
            self.capabilities,
            self.in_use,
            Some(moved),
        );
        let fits = place_lab(&self.bundle.lab, &offers, &existing).is_ok_and(|p| {
            matches!(
                moved_or_stranded(self.lab, &existing, self.lost, p.nodes),
                Recovery::Move { .. }
            )
        });
        fits.then(|| Recovery::MakeRoom {
            lab: self.lab.into(),
            owner: moved.lab.into(),
            node: node.into(),
            from: moved.from.into(),
            to: moved.to.into(),
        })
    }
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

/// The replica (as the index of the last entry it applied) and the agents'
/// capabilities over which [`decide`] last found nothing to do: `decide`
/// reads nothing else, so until one of them changes it would find nothing
/// again. With labs left `Degraded` on full hosts, deciding again on every
/// monitor tick cost the leader the room search for each of them, five
/// times a second.
pub(super) type Quiet = Arc<Mutex<Option<(Option<LogId<NodeId>>, HashMap<String, Capabilities>)>>>;

/// Leader: carries out [`decide`]'s steps, one lab at a time, under the lab
/// lock (a deploy in flight finishes first and is seen by the decision).
pub(super) async fn run(inner: &Arc<Inner>, quiet: &Quiet) {
    let capabilities = lock(&inner.capabilities).clone();
    {
        let data = inner.state.read();
        let seen = (data.last_applied, capabilities.clone());
        if lock(quiet).as_ref() == Some(&seen) {
            return;
        }
        if decide(&data.state, &capabilities).is_empty() {
            *lock(quiet) = Some(seen);
            return;
        }
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
