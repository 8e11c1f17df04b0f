//! Placement: which host runs each node of a lab.
//!
//! Pure code over small input types ([`Problem`]) so it can be tested and
//! benchmarked without the lab model; [`place_lab`] builds a problem from a
//! [`Lab`](labspan_proto::lab::Lab). See `docs/placement.md` for the
//! objective, the memory formula and the algorithm.

mod check;
mod error;
mod figures;
mod graph;
mod initial;
mod lab;
mod memory;
mod multilevel;
mod refine;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use error::{CpuKnob, PlacementError};
pub use figures::{Figures, HostUse};
pub use lab::{lab_problem, place_lab, place_labs, segment_weight, RATE_WEIGHT_FULL};
pub use labspan_proto::lab::HostSelector;
pub use memory::{format_mib, vm_memory_mib};

/// One VM to place: what it needs on the host that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDemand {
    /// Node name, used in errors and in the result.
    pub name: String,
    /// Host memory the VM takes, QEMU overhead included (see [`vm_memory_mib`]).
    pub memory_mib: u64,
    /// Virtual CPUs of the VM.
    pub vcpus: u64,
}

/// A lab segment seen as a hyperedge: the nodes it joins and what splitting
/// it across hosts costs per extra host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDemand {
    /// Stable segment key, for reports.
    pub key: String,
    /// Indices into [`Problem::nodes`]; a node listed twice counts once.
    pub members: Vec<usize>,
    /// Cost of one tunnel of this segment (see [`segment_weight`]).
    pub weight: u64,
}

/// A host as placement sees it: what it can give, and what is already taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOffer {
    /// Host name.
    pub name: String,
    /// Memory VMs may use: physical memory minus the host's reserve.
    pub memory_mib: u64,
    /// vCPUs VMs may use: CPUs times the overcommit ratio.
    pub vcpus: u64,
    /// Memory taken by VMs that are not part of this problem (other labs).
    pub used_memory_mib: u64,
    /// vCPUs taken by VMs that are not part of this problem.
    pub used_vcpus: u64,
    /// Labels that `pin: label:X` hints select on.
    pub labels: BTreeSet<String>,
    /// Capabilities the host is known to lack (`netem`, `tbf`); nodes that
    /// need one run elsewhere.
    pub lacks: BTreeSet<String>,
}

impl HostOffer {
    /// Memory still free for this problem's nodes.
    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.used_memory_mib)
    }

    /// vCPUs still free for this problem's nodes.
    pub fn free_vcpus(&self) -> u64 {
        self.vcpus.saturating_sub(self.used_vcpus)
    }
}

/// Everything placement decides on. Indices refer to `nodes` and `hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problem {
    /// The VMs to place.
    pub nodes: Vec<NodeDemand>,
    /// Links and LANs between them.
    pub segments: Vec<SegmentDemand>,
    /// The hosts that are up.
    pub hosts: Vec<HostOffer>,
    /// Node → where it must run.
    pub pins: BTreeMap<usize, HostSelector>,
    /// Node → capabilities its host must have, each with why (`netem` →
    /// `link a:eth0 -- b:eth0 has a delay`).
    pub requires: BTreeMap<usize, BTreeMap<String, String>>,
    /// Groups of nodes that must share one host.
    pub together: Vec<Vec<usize>>,
    /// Groups of nodes that must run on pairwise different hosts.
    pub spread: Vec<Vec<usize>>,
    /// Node → host it runs on now; kept there whenever the constraints allow.
    pub existing: BTreeMap<usize, usize>,
}

/// The answer: node → host, and what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Node name → host name.
    pub nodes: BTreeMap<String, String>,
    /// Tunnels, spanning segments and per-host use of this placement.
    pub figures: Figures,
}

/// Places every node of `problem`: deterministic, never over capacity,
/// honouring every hint, with as few (rate-weighted) tunnels as it finds.
pub fn place(problem: &Problem) -> Result<Placement, PlacementError> {
    let assignment = place_indices(problem)?;
    let nodes = problem
        .nodes
        .iter()
        .zip(&assignment)
        .map(|(n, &h)| (n.name.clone(), problem.hosts[h].name.clone()))
        .collect();
    Ok(Placement {
        nodes,
        figures: Figures::of(problem, &assignment),
    })
}

/// Like [`place`], but returns the host index of every node (for benchmarks
/// and callers that keep indices).
pub fn place_indices(problem: &Problem) -> Result<Vec<usize>, PlacementError> {
    let prepared = check::prepare(problem)?;
    multilevel::solve(problem, &prepared)
}
