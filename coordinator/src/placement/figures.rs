//! What a placement costs: tunnels, spanning segments, per-host use.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Problem;

/// The figures of one placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    /// Σ over segments of (hosts the segment spans − 1): the VXLAN tunnels a
    /// lab needs, counting a segment on 3 hosts as 2 tunnels (one per extra
    /// host), as a MaxiNet/METIS "edge cut" counts a cut link.
    pub tunnels: u64,
    /// Segments with members on more than one host.
    pub spanning_segments: usize,
    /// VXLAN devices created, one per (spanning segment, host it touches).
    pub vxlan_devices: u64,
    /// Σ over segments of weight × (hosts spanned − 1): what placement minimises.
    pub weighted_cost: u64,
    /// Per host, by name (hosts that run none of these nodes included).
    pub hosts: BTreeMap<String, HostUse>,
}

/// What one host runs of this placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostUse {
    /// Nodes placed here.
    pub nodes: usize,
    /// Memory those nodes take (QEMU overhead included), MiB.
    pub memory_mib: u64,
    /// Memory already taken by others (other labs), MiB.
    pub others_memory_mib: u64,
    /// Memory VMs may use on this host, MiB.
    pub memory_capacity_mib: u64,
    /// vCPUs of those nodes.
    pub vcpus: u64,
    /// vCPUs already taken by others.
    pub others_vcpus: u64,
    /// vCPUs VMs may use (CPUs × overcommit).
    pub vcpu_capacity: u64,
}

impl Figures {
    /// The figures of `assignment` (host index per node) for `problem`.
    pub fn of(problem: &Problem, assignment: &[usize]) -> Figures {
        let mut f = Figures::default();
        let mut spanned: Vec<usize> = Vec::new();
        for s in &problem.segments {
            spanned.clear();
            spanned.extend(s.members.iter().filter_map(|&m| assignment.get(m).copied()));
            spanned.sort_unstable();
            spanned.dedup();
            let extra = spanned.len().saturating_sub(1) as u64;
            f.tunnels += extra;
            f.weighted_cost += extra * s.weight;
            if extra > 0 {
                f.spanning_segments += 1;
                f.vxlan_devices += spanned.len() as u64;
            }
        }
        let mut per_host: Vec<HostUse> = problem
            .hosts
            .iter()
            .map(|h| HostUse {
                others_memory_mib: h.used_memory_mib,
                memory_capacity_mib: h.memory_mib,
                others_vcpus: h.used_vcpus,
                vcpu_capacity: h.vcpus,
                ..HostUse::default()
            })
            .collect();
        for (node, &h) in problem.nodes.iter().zip(assignment) {
            if let Some(u) = per_host.get_mut(h) {
                u.nodes += 1;
                u.memory_mib += node.memory_mib;
                u.vcpus += node.vcpus;
            }
        }
        f.hosts = problem
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .zip(per_host)
            .collect();
        f
    }

    /// True when no host runs more than it may (memory and vCPUs).
    pub fn within_capacity(&self) -> bool {
        self.hosts.values().all(|u| {
            u.memory_mib + u.others_memory_mib <= u.memory_capacity_mib
                && u.vcpus + u.others_vcpus <= u.vcpu_capacity
        })
    }
}
