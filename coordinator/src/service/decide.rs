//! The leader's decisions, pure: what placement may use, what each host's
//! plan is, what a deploy writes, how a lab settled, what state each node
//! is in, and whether a deploy may replace a lab. No `Inner`, no `async`:
//! the service modules above call these and do the I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use labspan_proto::health::GuestHealth;
use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{Capabilities, LabOrigin, LabReport, NodeState, VmReport};
use labspan_proto::plan::{HostPlan, IncomingPlan};

use crate::hosts::Host;
use crate::placement::{place_lab, vm_memory_mib};
use crate::plan::{plan_lab, Arriving, HostFabric, PlanInput};
use crate::raft::{ClusterState, Command, LabRecord, LabStatus};

/// Checks a lab that arrived as data (not as a file) with the lab file's
/// own rules: a valid lab survives `to_yaml` → `parse` unchanged.
pub(super) fn revalidate(bundle: &LabBundle) -> Result<(), String> {
    let name = &bundle.lab.name;
    let text = labspan_proto::lab::to_yaml(&bundle.lab);
    match labspan_proto::lab::parse(&format!("lab {name:?} as submitted"), &text) {
        Ok(lab) if lab == bundle.lab => Ok(()),
        Ok(_) => Err(format!(
            "lab {name:?} is not what its own file would say; submit it with `labspan up FILE`"
        )),
        Err(diagnostics) => Err(diagnostics.to_string()),
    }
}

/// The one command a deploy (or an edit) of `bundle` writes: its spec
/// (`bytes`), segments, the placement over what `state` offers (nodes that
/// already run stay where they are), and `origin`. Placement errors are for
/// the user.
pub fn deploy_command(
    state: &ClusterState,
    capabilities: &HashMap<String, Capabilities>,
    bundle: &LabBundle,
    bytes: Vec<u8>,
    origin: Option<LabOrigin>,
) -> Result<Command, String> {
    let name = &bundle.lab.name;
    let existing = state
        .labs
        .get(name)
        .map(|r| r.placement.clone())
        .unwrap_or_default();
    let placement = place_lab(&bundle.lab, &offers(state, name, capabilities), &existing)
        .map_err(|e| format!("lab {name:?}: {}", e.on_cluster()))?
        .nodes;
    let segments: BTreeSet<String> = bundle.lab.segments().into_iter().map(|s| s.key).collect();
    Ok(Command::DeployLab {
        name: name.clone(),
        spec: bytes,
        segments,
        placement,
        origin,
    })
}

/// Whether a deploy from `new` may replace the lab `existing` records: the
/// same member from the same file (an edit) may; anyone else needs
/// `--replace`. The refusal says who deployed it, from where and when.
pub fn may_replace(
    lab: &str,
    existing: Option<&LabOrigin>,
    new: &LabOrigin,
    replace: bool,
) -> Result<(), String> {
    let Some(old) = existing else {
        return Ok(());
    };
    if replace || (old.member == new.member && old.source == new.source) {
        return Ok(());
    }
    Err(format!(
        "lab {lab:?} is already deployed by {old}; `labspan up --replace` replaces it \
         (the lab then runs what your file says), or rename your lab"
    ))
}

/// What placement may use of each host that is up: its capacity minus the
/// VMs of every lab but `lab`, and what its agent said it lacks (a lab
/// whose impaired links no host can carry is refused before anything
/// starts, and such links go only where they can be made).
pub(super) fn offers(
    state: &ClusterState,
    lab: &str,
    capabilities: &HashMap<String, Capabilities>,
) -> Vec<Host> {
    // A cordoned host keeps the nodes of `lab` it runs (an edit does not
    // move them) and takes no other.
    let runs_lab = |host: &String| {
        state
            .labs
            .get(lab)
            .is_some_and(|r| r.placement.values().any(|h| h == host))
    };
    let mut hosts: BTreeMap<&String, Host> = state
        .hosts
        .iter()
        .filter(|(name, h)| h.up && (!h.cordoned || runs_lab(name)))
        .map(|(name, h)| {
            let mut host = Host::new(
                name,
                h.capacity.memory_mib,
                u32::try_from(h.capacity.vcpus).unwrap_or(u32::MAX),
            );
            host.labels = h.labels.clone();
            host.vtep = Some(h.vtep);
            // The agent already multiplied its CPUs by its overcommit.
            host.cpu_overcommit = 1.0;
            if let Some(c) = capabilities.get(name) {
                host.lacks = [(c.netem, "netem"), (c.tbf, "tbf")]
                    .into_iter()
                    .filter(|(has, _)| !has)
                    .map(|(_, qdisc)| qdisc.to_string())
                    .collect();
            }
            (name, host)
        })
        .collect();
    for (other, rec) in state.labs.iter().filter(|(n, _)| n.as_str() != lab) {
        let Some(Ok(bundle)) = state.bundle(other) else {
            continue;
        };
        for (node, spec) in &bundle.lab.nodes {
            let Some(host) = rec.placement.get(node).and_then(|h| hosts.get_mut(h)) else {
                continue;
            };
            host.used_memory_mib += vm_memory_mib(spec.memory_mib, u64::from(spec.cpus));
            host.used_vcpus += u64::from(spec.cpus);
            tracing::trace!(lab = other, node, host = host.name, "capacity in use");
        }
        // A node being moved holds room on both hosts until the move ends.
        let arriving = rec.migration.as_ref().and_then(|m| {
            let spec = bundle.lab.nodes.get(&m.node)?;
            Some((&m.to, spec))
        });
        if let Some((to, spec)) = arriving {
            if let Some(host) = hosts.get_mut(to) {
                host.used_memory_mib += vm_memory_mib(spec.memory_mib, u64::from(spec.cpus));
                host.used_vcpus += u64::from(spec.cpus);
            }
        }
    }
    hosts.into_values().collect()
}

/// Every host's complete plan, for `wanted` hosts: its share of every lab,
/// and the labs that could not be planned (lab → why). The log keeps every
/// lab plannable (one entry per deploy, placement checked in `apply`), so
/// the second map is empty unless something is badly wrong.
pub fn host_plans(
    state: &ClusterState,
    fabrics: &BTreeMap<String, HostFabric>,
    wanted: &BTreeSet<String>,
) -> (BTreeMap<String, HostPlan>, BTreeMap<String, String>) {
    let mut plans: BTreeMap<String, HostPlan> = wanted
        .iter()
        .map(|h| {
            (
                h.clone(),
                HostPlan {
                    host: h.clone(),
                    labs: vec![],
                    kept_checkpoints: Vec::new(),
                    generation: 0,
                },
            )
        })
        .collect();
    let mut unplanned = BTreeMap::new();
    for (name, rec) in &state.labs {
        let arriving_at = rec.migration.as_ref().map(|m| &m.to);
        if !rec
            .placement
            .values()
            .chain(arriving_at)
            .any(|h| wanted.contains(h))
        {
            continue;
        }
        let Some(bundle) = state.bundle(name) else {
            continue;
        };
        match bundle
            .map_err(|e| e.to_string())
            .and_then(|b| plan_record(rec, &b, fabrics))
        {
            Ok(per_host) => {
                for (host, lab_plan) in per_host {
                    if let Some(plan) = plans.get_mut(&host) {
                        plan.labs.push(lab_plan);
                    }
                }
            }
            Err(e) => {
                unplanned.insert(name.clone(), e);
            }
        }
    }
    for (name, rec) in &state.labs {
        let copied_to = (rec.checkpoints.values())
            .flat_map(|c| c.nodes.values())
            .flat_map(|n| &n.copies);
        for host in copied_to {
            if let Some(plan) = plans.get_mut(host) {
                if !plan.kept_checkpoints.contains(name) {
                    plan.kept_checkpoints.push(name.clone());
                }
            }
        }
    }
    (plans, unplanned)
}

/// One stored lab's plan per host.
fn plan_record(
    rec: &LabRecord,
    bundle: &LabBundle,
    fabrics: &BTreeMap<String, HostFabric>,
) -> Result<BTreeMap<String, labspan_proto::plan::LabPlan>, String> {
    let incoming = rec.migration.as_ref().and_then(|m| {
        Some(IncomingPlan {
            from: m.from.clone(),
            addr: fabrics.get(&m.to)?.vtep,
            port: m.port,
        })
    });
    let arriving = rec
        .migration
        .as_ref()
        .zip(incoming.as_ref())
        .map(|(m, plan)| Arriving {
            node: &m.node,
            to: &m.to,
            plan,
        });
    let input = PlanInput {
        lab: &bundle.lab,
        files: &bundle.files,
        placement: &rec.placement,
        hosts: fabrics,
        vnis: &rec.vnis,
        arriving,
    };
    let mut plans = plan_lab(&input).map_err(|e| e.to_string())?;
    // A node restarting after its host was lost, from a checkpoint.
    for vm in plans.values_mut().flat_map(|p| &mut p.vms) {
        if rec.moving.contains(&vm.name) && vm.incoming.is_none() {
            vm.restore = rec.restored_from.get(&vm.name).cloned();
        }
    }
    Ok(plans)
}

/// The lab's status from what the agents reported, and its VMs.
pub(super) fn outcome(
    lab: &str,
    outcomes: &BTreeMap<String, Result<Vec<VmReport>, String>>,
) -> (LabStatus, Vec<VmReport>) {
    let mut problems = Vec::new();
    let mut vms = Vec::new();
    for (host, result) in outcomes {
        match result {
            Ok(reports) => vms.extend(reports.iter().filter(|v| v.lab == lab).cloned()),
            Err(e) => problems.push(format!("host {host}: {}", first_line(e))),
        }
    }
    problems.extend(
        vms.iter().filter_map(|v| {
            (v.error.as_ref()).map(|e| format!("node {}: {}", v.vm, first_line(e)))
        }),
    );
    let status = if problems.is_empty() {
        LabStatus::Running
    } else {
        LabStatus::Failed {
            reason: problems.join("; "),
        }
    };
    (status, vms)
}

/// A lab's status is one line: the first line of a multi-line report
/// (the console tail of a guest that did not answer stays in `up`'s table).
fn first_line(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches(':')
}

/// Each node's own state, from the lab's status and its hosts' liveness:
/// a node on a host that is down is `Lost` whatever the lab's status says.
pub fn node_states(state: &ClusterState, rec: &LabRecord) -> BTreeMap<String, NodeState> {
    rec.placement
        .iter()
        .map(|(node, host)| {
            let up = state.hosts.get(host).is_some_and(|h| h.up);
            let live_move = rec.migration.as_ref().is_some_and(|m| m.node == *node);
            let node_state = match &rec.status {
                _ if !up => NodeState::Lost,
                // A live move: the node runs on while it is copied.
                _ if live_move => NodeState::Moving,
                LabStatus::Deploying if rec.moving.contains(node) => NodeState::Moving,
                // A move after a host loss: the other nodes run on, untouched.
                LabStatus::Deploying if !rec.moving.is_empty() => NodeState::Running,
                LabStatus::Deploying => NodeState::Starting,
                LabStatus::Running | LabStatus::Degraded { .. } => NodeState::Running,
                LabStatus::Failed { .. } => NodeState::Failed,
                LabStatus::Deleting => NodeState::Stopping,
            };
            (node.clone(), node_state)
        })
        .collect()
}

/// Lab `name` as clients see it.
pub(super) fn report(
    state: &ClusterState,
    name: &str,
    rec: &LabRecord,
    vms: Vec<VmReport>,
    guests: Vec<GuestHealth>,
) -> LabReport {
    LabReport {
        lab: name.to_string(),
        placement: rec.placement.clone(),
        vnis: rec.vnis.clone(),
        status: rec.status.clone(),
        nodes: node_states(state, rec),
        origin: rec.origin.clone(),
        vms,
        guests,
        restored_from: rec.restored_from.clone(),
    }
}

#[cfg(test)]
mod tests;
