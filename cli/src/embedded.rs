//! The embedded default: with no cluster configured, this machine is the one
//! host, and the CLI plays coordinator (placement, host plans, lab records)
//! and drives the agent library in-process, through the same plan types a
//! cluster uses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use labspan_agent::reconcile::{Agent, AgentError};
use labspan_agent::vm::AccelChoice;
use labspan_coordinator::hosts::Host;
use labspan_coordinator::local::{LabRecord, LocalStore};
use labspan_coordinator::placement::{place_lab, vm_memory_mib};
use labspan_coordinator::plan::{plan_lab, HostFabric, PlanInput, VXLAN_OVERHEAD};
use labspan_proto::lab::LabBundle;
use labspan_proto::plan::HostPlan;

use crate::InvalidInput;

/// Guests on one machine have no underlay to share: give them a full
/// Ethernet MTU.
const LOCAL_UNDERLAY_MTU: u32 = 1500 + VXLAN_OVERHEAD;

/// This machine as the embedded default's only host.
pub struct Embedded {
    pub store: LocalStore,
    pub agent: Agent,
    pub host: String,
}

impl Embedded {
    /// Opens the state folder (`$LABSPAN_STATE` or `/var/lib/labspan`).
    pub fn open(accel: AccelChoice) -> anyhow::Result<Embedded> {
        let state = labspan_agent::paths::state_dir();
        let store = LocalStore::open(&state)?;
        let agent = Agent::new(state.clone(), accel);
        Ok(Embedded {
            store,
            agent,
            host: host_name(),
        })
    }

    /// Places `bundle` on this machine and plans it, next to the labs
    /// already deployed; returns its record and the host's whole new plan.
    /// Nothing is changed: bad input is an `InvalidInput` error.
    pub fn plan(&self, bundle: &LabBundle) -> anyhow::Result<(LabRecord, HostPlan)> {
        let lab = &bundle.lab;
        let mut others = self.store.all()?;
        let existing = others
            .remove(&lab.name)
            .map(|r| r.placement)
            .unwrap_or_default();
        let mut host = self.local_host()?;
        for other in others.values() {
            for node in other.lab.nodes.values() {
                host.used_memory_mib += vm_memory_mib(node.memory_mib, u64::from(node.cpus));
                host.used_vcpus += u64::from(node.cpus);
            }
        }
        let placement = place_lab(lab, std::slice::from_ref(&host), &existing)
            .map_err(|e| InvalidInput(format!("lab \"{}\": {e}", lab.name)))?;
        let fabric = HostFabric {
            vtep: IpAddr::V4(Ipv4Addr::LOCALHOST),
            underlay_mtu: LOCAL_UNDERLAY_MTU,
        };
        let hosts = BTreeMap::from([(self.host.clone(), fabric)]);
        let plans = plan_lab(&PlanInput {
            lab,
            files: &bundle.files,
            placement: &placement.nodes,
            hosts: &hosts,
            vnis: &BTreeMap::new(),
        })
        .map_err(|e| InvalidInput(e.to_string()))?;
        let record = LabRecord {
            lab: lab.clone(),
            placement: placement.nodes,
            plans,
        };
        let mut host_plan = self.store.host_plan(&self.host)?;
        host_plan.labs.retain(|l| l.lab != lab.name);
        host_plan.labs.extend(record.plans.get(&self.host).cloned());
        Ok((record, host_plan))
    }

    fn local_host(&self) -> anyhow::Result<Host> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("/proc/meminfo has no MemTotal")?;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(Host::new(
            &self.host,
            mem_kib / 1024,
            u32::try_from(cpus).unwrap_or(u32::MAX),
        ))
    }
}

/// Turns the agent's input errors (missing image, foreign interface in the
/// way) into `InvalidInput`, so they exit 2.
pub fn classify(e: AgentError) -> anyhow::Error {
    match e {
        AgentError::Image { .. }
        | AgentError::Net(labspan_agent::net::NetError::Foreign { .. }) => {
            InvalidInput(format!("error: {e}; nothing was changed")).into()
        }
        other => other.into(),
    }
}

/// This machine's name, the embedded default's host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Loads a lab file and everything it copies into guests; invalid → exit 2.
pub fn load(path: &Path) -> anyhow::Result<LabBundle> {
    labspan_proto::lab::load_bundle(path).map_err(|e| match e {
        labspan_proto::lab::LoadError::Invalid(d) => InvalidInput(d.to_string()).into(),
        other => anyhow::Error::new(other),
    })
}
