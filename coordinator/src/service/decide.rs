//! The leader's decisions, pure: what placement may use, what each host's
//! plan is, what a deploy writes, how a lab settled, what state each node
//! is in, and whether a deploy may replace a lab. No `Inner`, no `async`:
//! the service modules above call these and do the I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use labspan_proto::health::GuestHealth;
use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{Capabilities, LabOrigin, LabReport, NodeState, VmReport};
use labspan_proto::plan::{HostPlan, IncomingPlan};

use crate::hosts::HostSpec;
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
) -> Vec<HostSpec> {
    let placement = state.labs.get(lab).map(|r| &r.placement);
    let mut hosts = up_hosts(state, placement, capabilities);
    for other in state.labs.keys().filter(|n| n.as_str() != lab) {
        each_vm(state, other, |host, memory_mib, vcpus| {
            if let Some(h) = hosts.get_mut(host) {
                h.used_memory_mib += memory_mib;
                h.used_vcpus += vcpus;
                tracing::trace!(lab = other, host = h.name, "capacity in use");
            }
        });
    }
    hosts.into_values().collect()
}

/// [`offers`] for `lab` placed as `placement`, with what the other labs
/// take read from `in_use` (a pass over the hosts, not over every lab),
/// and `moved`, a node of another lab moved from host to host, counted
/// where it goes.
pub(super) fn offers_from(
    state: &ClusterState,
    lab: &str,
    placement: &BTreeMap<String, String>,
    capabilities: &HashMap<String, Capabilities>,
    in_use: &InUse,
    moved: Option<&MovedVm>,
) -> Vec<HostSpec> {
    let mut hosts = up_hosts(state, Some(placement), capabilities);
    for (name, host) in &mut hosts {
        let (mut memory_mib, mut vcpus) = in_use.by_others(name, lab);
        if let Some(m) = moved.filter(|m| m.lab != lab) {
            if m.from == **name {
                memory_mib = memory_mib.saturating_sub(m.memory_mib);
                vcpus = vcpus.saturating_sub(m.vcpus);
            }
            if m.to == **name {
                memory_mib += m.memory_mib;
                vcpus += m.vcpus;
            }
        }
        host.used_memory_mib = memory_mib;
        host.used_vcpus = vcpus;
    }
    hosts.into_values().collect()
}

/// Each host's free memory and vCPUs in `offers`.
pub(super) fn free_room(offers: Vec<HostSpec>) -> BTreeMap<String, (u64, u64)> {
    offers
        .into_iter()
        .map(|h| {
            let o = h.offer();
            let memory_mib = o.memory_mib.saturating_sub(o.used_memory_mib);
            (h.name, (memory_mib, o.vcpus.saturating_sub(o.used_vcpus)))
        })
        .collect()
}

/// The hosts placement may use for a lab placed as `placement` (none: a
/// lab not stored), each with nothing in use yet. A cordoned host keeps
/// the nodes of the lab it runs (an edit does not move them) and takes no
/// other.
fn up_hosts<'s>(
    state: &'s ClusterState,
    placement: Option<&BTreeMap<String, String>>,
    capabilities: &HashMap<String, Capabilities>,
) -> BTreeMap<&'s String, HostSpec> {
    let runs_lab = |host: &String| placement.is_some_and(|p| p.values().any(|h| h == host));
    state
        .hosts
        .iter()
        .filter(|(name, h)| h.up && (!h.cordoned || runs_lab(name)))
        .map(|(name, h)| {
            let mut host = HostSpec::new(
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
        .collect()
}

/// Calls `f(host, memory MiB, vCPUs)` for each VM of lab `name`: its nodes
/// where they are placed, and a node being moved live where it arrives
/// too (it holds room on both hosts until the move ends). A lab whose
/// spec does not decode takes nothing.
fn each_vm(state: &ClusterState, name: &str, mut f: impl FnMut(&String, u64, u64)) {
    let (Some(rec), Some(Ok(bundle))) = (state.labs.get(name), state.bundle(name)) else {
        return;
    };
    let size = |spec: &labspan_proto::lab::Node| {
        let vcpus = u64::from(spec.cpus);
        (vm_memory_mib(spec.memory_mib, vcpus), vcpus)
    };
    for (node, spec) in &bundle.lab.nodes {
        if let Some(host) = rec.placement.get(node) {
            let (memory_mib, vcpus) = size(spec);
            f(host, memory_mib, vcpus);
        }
    }
    let arriving = rec.migration.as_ref().and_then(|m| {
        let spec = bundle.lab.nodes.get(&m.node)?;
        Some((&m.to, spec))
    });
    if let Some((to, spec)) = arriving {
        let (memory_mib, vcpus) = size(spec);
        f(to, memory_mib, vcpus);
    }
}

/// What every stored lab's VMs take of each host (as [`offers`] counts
/// them), read in one pass over every lab, so that many offers (recovery
/// deciding every lab of a lost host, and its room search trying moves
/// for each) each cost a pass over the hosts only.
#[derive(Debug, Clone, Default)]
pub(super) struct InUse {
    /// Host → (memory MiB, vCPUs) that every lab takes there.
    total: BTreeMap<String, (u64, u64)>,
    /// Lab → host → what that lab takes there.
    by_lab: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
}

impl InUse {
    pub(super) fn of(state: &ClusterState) -> InUse {
        let mut in_use = InUse::default();
        for name in state.labs.keys() {
            in_use.count(state, name);
        }
        in_use
    }

    /// Counts lab `name` as `state` places it now, instead of as it was
    /// counted before.
    pub(super) fn recount(&mut self, state: &ClusterState, name: &str) {
        for (host, (memory_mib, vcpus)) in self.by_lab.remove(name).unwrap_or_default() {
            if let Some(t) = self.total.get_mut(&host) {
                t.0 = t.0.saturating_sub(memory_mib);
                t.1 = t.1.saturating_sub(vcpus);
            }
        }
        self.count(state, name);
    }

    fn count(&mut self, state: &ClusterState, name: &str) {
        let mut lab: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        each_vm(state, name, |host, memory_mib, vcpus| {
            for map in [&mut lab, &mut self.total] {
                if let Some(t) = map.get_mut(host) {
                    t.0 += memory_mib;
                    t.1 += vcpus;
                } else {
                    map.insert(host.clone(), (memory_mib, vcpus));
                }
            }
        });
        self.by_lab.insert(name.to_string(), lab);
    }

    /// What the labs other than `lab` take on `host`.
    fn by_others(&self, host: &str, lab: &str) -> (u64, u64) {
        let (memory_mib, vcpus) = self.total.get(host).copied().unwrap_or_default();
        let (own_memory, own_vcpus) = (self.by_lab.get(lab))
            .and_then(|l| l.get(host))
            .copied()
            .unwrap_or_default();
        (
            memory_mib.saturating_sub(own_memory),
            vcpus.saturating_sub(own_vcpus),
        )
    }
}

/// One VM of lab `lab` counted on host `to` instead of `from` (a candidate
/// live move, for [`offers_from`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct MovedVm<'a> {
    pub lab: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub memory_mib: u64,
    pub vcpus: u64,
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
