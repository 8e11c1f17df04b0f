//! Labs on the leader: store, place, allocate VNIs, plan every host and
//! push each host its complete plan; agents answer with each VM's outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use labspan_proto::codec;
use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{
    AgentReply, AgentRequest, ErrorKind, ErrorReply, LabReport, Reply, VmReport,
};
use labspan_proto::plan::HostPlan;
use labspan_transport as transport;
use quinn::Connection;

use super::hosts::DEFAULT_UNDERLAY_MTU;
use super::status::status_text;
use super::{error, lock, Inner};
use crate::hosts::Host;
use crate::placement::{place_lab, vm_memory_mib};
use crate::plan::{plan_lab, HostFabric, PlanInput};
use crate::raft::{ClusterState, Command, LabStatus};

/// Leader: the bundle and record of lab `name` (linearizable).
pub(super) async fn get(inner: &Arc<Inner>, name: &str) -> Reply {
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let state = inner.state.read();
    match state.state.labs.get(name) {
        Some(rec) => Reply::Lab {
            bundle: rec.spec.clone(),
            report: report(inner, name, rec, vec![]),
        },
        None => error(
            ErrorKind::NotFound,
            format!("lab {name:?} is not deployed (see `labspan inspect`)"),
        ),
    }
}

fn report(
    inner: &Inner,
    name: &str,
    rec: &crate::raft::LabRecord,
    vms: Vec<VmReport>,
) -> LabReport {
    // Only what the node's current host says: a node moved away leaves its
    // old host's word behind.
    let guests = lock(&inner.guests)
        .iter()
        .flat_map(|(host, guests)| {
            guests.iter().filter(move |g| {
                g.lab == name && rec.placement.get(&g.node).is_some_and(|h| h == host)
            })
        })
        .cloned()
        .collect();
    LabReport {
        lab: name.to_string(),
        placement: rec.placement.clone(),
        vnis: rec.vnis.clone(),
        status: status_text(&rec.status),
        vms,
        guests,
    }
}

/// Leader: deploys (or updates) the lab in `bytes`, a codec-encoded bundle.
pub(super) async fn deploy(inner: &Arc<Inner>, bytes: Vec<u8>) -> Reply {
    let bundle: LabBundle = match codec::decode(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return error(
                ErrorKind::Invalid,
                format!("the lab bundle does not decode: {e}"),
            )
        }
    };
    if let Err(why) = revalidate(&bundle) {
        return error(ErrorKind::Invalid, why);
    }
    if let Err(missing) = crate::images::check_lab(
        &bundle.lab,
        &super::images::inventories(inner),
        &super::images::up_hosts(inner),
        |name| labspan_proto::image::BUILTIN.contains(&name),
    ) {
        return error(ErrorKind::Invalid, missing.to_string());
    }
    let _one_at_a_time = inner.lab_lock.lock().await;
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let name = bundle.lab.name.clone();
    let state = inner.state.read().state.clone();
    let existing = state
        .labs
        .get(&name)
        .map(|r| r.placement.clone())
        .unwrap_or_default();
    let placement = match place_lab(&bundle.lab, &offers(&state, &name), &existing) {
        Ok(p) => p.nodes,
        Err(e) => {
            return error(
                ErrorKind::Invalid,
                format!("lab {name:?}: {}", e.on_cluster()),
            )
        }
    };
    let segments: BTreeSet<String> = bundle.lab.segments().into_iter().map(|s| s.key).collect();
    let spec = if state.labs.contains_key(&name) {
        Command::UpdateLabSpec {
            name: name.clone(),
            spec: bytes,
            segments,
        }
    } else {
        Command::CreateLab {
            name: name.clone(),
            spec: bytes,
            segments,
        }
    };
    let deploying = Command::SetLabStatus {
        lab: name.clone(),
        status: LabStatus::Deploying,
    };
    for cmd in [
        spec,
        Command::SetPlacement {
            lab: name.clone(),
            placement: placement.clone(),
        },
        deploying,
    ] {
        if let Err(e) = inner.write(cmd).await {
            return Reply::Error(e);
        }
    }
    // A host that is down gets its plan when it registers again.
    let hosts: BTreeSet<String> = placement
        .values()
        .chain(existing.values())
        .filter(|h| state.hosts.get(*h).is_some_and(|h| h.up))
        .cloned()
        .collect();
    let vms = match settle(inner, &name, &hosts).await {
        Ok(vms) => vms,
        Err(e) => return Reply::Error(e),
    };
    let state = inner.state.read();
    match state.state.labs.get(&name) {
        Some(rec) => Reply::Deployed(report(inner, &name, rec, vms)),
        None => error(
            ErrorKind::Internal,
            format!("lab {name:?} vanished during its deploy"),
        ),
    }
}

/// The end of every deploy (a fresh one, or one a new leader resumes):
/// pushes the plans of `hosts` and records lab `name` as `Running` or
/// `Failed` from what the agents report; returns the lab's VMs.
/// The caller holds `lab_lock`.
pub(super) async fn settle(
    inner: &Arc<Inner>,
    name: &str,
    hosts: &BTreeSet<String>,
) -> Result<Vec<VmReport>, ErrorReply> {
    let outcomes = push_plans(inner, hosts).await;
    let (status, vms) = outcome(name, &outcomes);
    inner
        .write(Command::SetLabStatus {
            lab: name.to_string(),
            status,
        })
        .await?;
    Ok(vms)
}

/// Checks a lab that arrived as data (not as a file) with the lab file's
/// own rules: a valid lab survives `to_yaml` → `parse` unchanged.
fn revalidate(bundle: &LabBundle) -> Result<(), String> {
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

/// The lab's status from what the agents reported, and its VMs.
fn outcome(
    lab: &str,
    outcomes: &BTreeMap<String, Result<Vec<VmReport>, String>>,
) -> (LabStatus, Vec<VmReport>) {
    let mut problems = Vec::new();
    let mut vms = Vec::new();
    for (host, result) in outcomes {
        match result {
            Ok(reports) => vms.extend(reports.iter().filter(|v| v.lab == lab).cloned()),
            Err(e) => problems.push(format!("host {host}: {e}")),
        }
    }
    problems.extend(
        vms.iter()
            .filter_map(|v| v.error.as_ref().map(|e| format!("node {}: {e}", v.vm))),
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

/// What placement may use of each host that is up: its capacity minus the
/// VMs of every lab but `lab`.
pub(super) fn offers(state: &ClusterState, lab: &str) -> Vec<Host> {
    let mut hosts: BTreeMap<&String, Host> = state
        .hosts
        .iter()
        .filter(|(_, h)| h.up)
        .map(|(name, h)| {
            // The agent already multiplied its CPUs by its overcommit.
            let mut host = Host::new(
                name,
                h.capacity.memory_mib,
                u32::try_from(h.capacity.vcpus).unwrap_or(u32::MAX),
            );
            host.cpu_overcommit = 1.0;
            host.labels = h.labels.clone();
            host.vtep = Some(h.vtep);
            (name, host)
        })
        .collect();
    for (other, rec) in state.labs.iter().filter(|(n, _)| n.as_str() != lab) {
        let Ok(bundle) = codec::decode::<LabBundle>(&rec.spec) else {
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
    }
    hosts.into_values().collect()
}

/// Every host's complete plan, for `wanted` hosts: its share of every lab.
/// Pure; a lab whose stored bundle cannot be planned is left out (and logged).
pub fn host_plans(
    state: &ClusterState,
    fabrics: &BTreeMap<String, HostFabric>,
    wanted: &BTreeSet<String>,
) -> BTreeMap<String, HostPlan> {
    let mut plans: BTreeMap<String, HostPlan> = wanted
        .iter()
        .map(|h| {
            (
                h.clone(),
                HostPlan {
                    host: h.clone(),
                    labs: vec![],
                },
            )
        })
        .collect();
    for (name, rec) in &state.labs {
        if rec.placement.is_empty() || !rec.placement.values().any(|h| wanted.contains(h)) {
            continue;
        }
        let planned = codec::decode::<LabBundle>(&rec.spec)
            .map_err(|e| e.to_string())
            .and_then(|bundle| {
                let input = PlanInput {
                    lab: &bundle.lab,
                    files: &bundle.files,
                    placement: &rec.placement,
                    hosts: fabrics,
                    vnis: &rec.vnis,
                };
                plan_lab(&input).map_err(|e| e.to_string())
            });
        match planned {
            Ok(per_host) => {
                for (host, lab_plan) in per_host {
                    if let Some(plan) = plans.get_mut(&host) {
                        plan.labs.push(lab_plan);
                    }
                }
            }
            Err(e) => {
                tracing::error!(lab = name, error = %e, "cannot plan a stored lab; left out of host plans")
            }
        }
    }
    plans
}

/// Plans `hosts` from the current state and pushes each its plan; returns
/// each host's VM reports (or why it could not be brought to its plan).
pub(super) async fn push_plans(
    inner: &Arc<Inner>,
    hosts: &BTreeSet<String>,
) -> BTreeMap<String, Result<Vec<VmReport>, String>> {
    let mut plans = {
        let state = inner.state.read();
        let fabrics = fabrics(inner, &state.state);
        host_plans(&state.state, &fabrics, hosts)
    };
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
            tracing::warn!(host, error = %e, "host plan not applied");
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

/// Sends `plan` to the agent of `host` on its own connection.
async fn push(inner: &Inner, host: &str, plan: HostPlan) -> Result<Vec<VmReport>, String> {
    match agent_request(inner, host, &AgentRequest::ApplyPlan(plan)).await? {
        AgentReply::Applied(vms) => Ok(vms),
        AgentReply::Error(e) => Err(e.message),
        other => Err(format!("unexpected agent reply {other:?}")),
    }
}

/// The leader's connection from the agent of `host`.
pub(super) fn agent_connection(inner: &Inner, host: &str) -> Result<Connection, String> {
    lock(&inner.agents)
        .get(host)
        .cloned()
        .filter(|c| c.close_reason().is_none())
        .ok_or_else(|| format!("the agent of host {host:?} is not connected to the leader"))
}

async fn agent_request(
    inner: &Inner,
    host: &str,
    req: &AgentRequest,
) -> Result<AgentReply, String> {
    let conn = agent_connection(inner, host)?;
    transport::request(&conn, req)
        .await
        .map_err(|e| format!("agent of host {host:?}: {e}"))
}

/// Leader: stops lab `name` on its hosts and forgets it.
pub(super) async fn delete(inner: &Arc<Inner>, name: &str) -> Reply {
    let _one_at_a_time = inner.lab_lock.lock().await;
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    // A host that is down stops the lab's VMs when it registers again.
    let hosts: Option<BTreeSet<String>> = {
        let state = &inner.state.read().state;
        let up = |h: &&String| state.hosts.get(*h).is_some_and(|h| h.up);
        (state.labs.get(name)).map(|rec| rec.placement.values().filter(up).cloned().collect())
    };
    let Some(hosts) = hosts else {
        return error(ErrorKind::NotFound, format!("lab {name:?} is not deployed"));
    };
    if let Err(e) = inner
        .write(Command::DeleteLab {
            name: name.to_string(),
        })
        .await
    {
        return Reply::Error(e);
    }
    let failed: Vec<String> = push_plans(inner, &hosts)
        .await
        .into_iter()
        .filter_map(|(h, r)| r.err().map(|e| format!("host {h}: {e}")))
        .collect();
    if failed.is_empty() {
        Reply::Done
    } else {
        error(
            ErrorKind::Unavailable,
            format!(
                "lab {name:?} is forgotten but not yet removed from: {}",
                failed.join("; ")
            ),
        )
    }
}

/// The host that runs `node` of `lab`, or the refusal saying which is unknown.
pub(super) fn host_of(inner: &Inner, lab: &str, node: &str) -> Result<String, ErrorReply> {
    match inner.state.read().state.labs.get(lab) {
        None => Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("lab {lab:?} is not deployed"),
        )),
        Some(rec) => rec.placement.get(node).cloned().ok_or_else(|| {
            ErrorReply::new(
                ErrorKind::NotFound,
                format!("lab {lab:?} has no node {node:?}"),
            )
        }),
    }
}

/// Leader: runs `cmd` in node `node` of `lab` through that host's agent.
pub(super) async fn exec(
    inner: &Arc<Inner>,
    lab: &str,
    node: &str,
    cmd: &str,
    timeout_secs: u64,
) -> Reply {
    let host = match host_of(inner, lab, node) {
        Ok(h) => h,
        Err(refused) => return Reply::Error(refused),
    };
    let req = AgentRequest::Exec {
        lab: lab.into(),
        node: node.into(),
        cmd: cmd.into(),
        timeout_secs,
    };
    match agent_request(inner, &host, &req).await {
        Ok(AgentReply::Exec(out)) => Reply::Exec(out),
        Ok(AgentReply::Error(e)) => Reply::Error(e),
        Ok(other) => error(
            ErrorKind::Internal,
            format!("unexpected agent reply {other:?}"),
        ),
        Err(e) => error(ErrorKind::Unavailable, e),
    }
}

/// Leader: restarts node `node` of `lab` through its host's agent, keeping
/// its disk.
pub(super) async fn restart(inner: &Arc<Inner>, lab: &str, node: &str) -> Reply {
    let host = match host_of(inner, lab, node) {
        Ok(h) => h,
        Err(refused) => return Reply::Error(refused),
    };
    let req = AgentRequest::Restart {
        lab: lab.into(),
        node: node.into(),
    };
    match agent_request(inner, &host, &req).await {
        Ok(AgentReply::Applied(_)) => Reply::Done,
        Ok(AgentReply::Error(e)) => Reply::Error(e),
        Ok(other) => error(
            ErrorKind::Internal,
            format!("unexpected agent reply {other:?}"),
        ),
        Err(e) => error(ErrorKind::Unavailable, e),
    }
}
