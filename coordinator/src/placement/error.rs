//! Why a placement is impossible, in words that say what runs short and by
//! how much.

use super::memory::MibPair;

/// Why no placement exists (or the input is malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// There is no host at all.
    #[error("no host is up: add a host to the hosts file or start an agent")]
    NoHosts,
    /// An index in the problem points nowhere (a bug in the caller).
    #[error("invalid placement input: {0}")]
    InvalidInput(String),
    /// A pin names a host that is not up.
    #[error("node \"{node}\": pinned to host \"{host}\", which is not up (hosts: {known})")]
    PinnedHostMissing {
        /// The pinned node.
        node: String,
        /// The host it is pinned to.
        host: String,
        /// The hosts that are up, comma separated.
        known: String,
    },
    /// A pin names a label that no host carries.
    #[error("node \"{node}\": pinned to label \"{label}\", but no host that is up has it")]
    PinnedLabelMissing {
        /// The pinned node.
        node: String,
        /// The label.
        label: String,
    },
    /// A node needs a capability (a qdisc for its links' impairment) that
    /// no host it may run on has.
    #[error(
        "node \"{node}\": needs {capability} ({why}), which {} (lacking it: {lacking}); \
         drop the impairment or add a host whose kernel has {capability}",
        if *pinned { "no host it is pinned to has" } else { "no host that is up has" }
    )]
    MissingCapability {
        /// The node.
        node: String,
        /// What it needs (`netem`, `tbf`).
        capability: String,
        /// Which link asks for it.
        why: String,
        /// Whether its pins (or group) narrowed the hosts first.
        pinned: bool,
        /// The hosts known to lack it, comma separated.
        lacking: String,
    },
    /// The members of a `together` group are pinned to disjoint hosts.
    #[error("together [{group}]: its members' pins allow no common host")]
    TogetherPinsConflict {
        /// The group's members, comma separated.
        group: String,
    },
    /// A `spread` group contains two members of one `together` group.
    #[error(
        "spread [{group}]: \"{a}\" and \"{b}\" must also run together; drop one of the two hints"
    )]
    SpreadConflictsTogether {
        /// The spread group's members.
        group: String,
        /// First member.
        a: String,
        /// Second member.
        b: String,
    },
    /// A node's memory exceeds what any allowed host has free.
    #[error("node \"{node}\": needs {}, largest free on any host is {} ({host})", .sizes.need(), .sizes.free())]
    NodeMemory {
        /// The node.
        node: String,
        /// Needed and largest free memory.
        sizes: MibPair,
        /// The host with the most free memory it may use.
        host: String,
    },
    /// A `together` group's memory exceeds what any allowed host has free.
    #[error("together [{group}]: needs {} on one host, largest free on any host is {} ({host})", .sizes.need(), .sizes.free())]
    TogetherMemory {
        /// The group's members.
        group: String,
        /// Needed and largest free memory.
        sizes: MibPair,
        /// The host with the most free memory.
        host: String,
    },
    /// A node (or together group) needs more vCPUs than any allowed host has free.
    #[error("{what}: needs {need} vCPUs, largest free on any host is {free} ({host}); raise {knob} or add CPUs")]
    Vcpus {
        /// `node "x"` or `together [..]`.
        what: String,
        /// vCPUs needed.
        need: u64,
        /// Most free vCPUs on an allowed host.
        free: u64,
        /// That host.
        host: String,
        /// The setting that raises it where the user is.
        knob: CpuKnob,
    },
    /// A `spread` group needs more distinct hosts than its pins allow.
    #[error("spread [{group}] needs {need} hosts{}, {up} {}", .label.as_ref().map(|l| format!(" labelled \"{l}\"")).unwrap_or_default(), if *.up == 1 { "is up" } else { "are up" })]
    SpreadShort {
        /// The group's members.
        group: String,
        /// Distinct hosts needed.
        need: usize,
        /// The label all members are pinned to, if any.
        label: Option<String>,
        /// Distinct hosts available to the group.
        up: usize,
    },
    /// All nodes together need more memory than all hosts have free.
    #[error("the lab needs {} of memory in all, the hosts have {} free: add hosts or shrink nodes", .sizes.need(), .sizes.free())]
    TotalMemory {
        /// Needed and free memory.
        sizes: MibPair,
    },
    /// All nodes together need more vCPUs than all hosts have free.
    #[error(
        "the lab needs {need} vCPUs in all, the hosts have {free} free: raise {knob} or add hosts"
    )]
    TotalVcpus {
        /// vCPUs needed.
        need: u64,
        /// vCPUs free.
        free: u64,
        /// The setting that raises it where the user is.
        knob: CpuKnob,
    },
    /// The nodes fit in total but could not be packed (free memory is split
    /// in pieces too small for what is left).
    #[error("node \"{node}\": needs {}, largest free piece left after placing the others is {} ({host}); memory is too fragmented, or the hints leave too little room: add a host, or pin or spread fewer nodes", .sizes.need(), .sizes.free())]
    Fragmented {
        /// The first node that did not fit.
        node: String,
        /// Needed and largest free memory at that point.
        sizes: MibPair,
        /// Host with the largest free piece.
        host: String,
    },
}

/// The setting that lets a host run more vCPUs than it has CPUs, as the user
/// reaches it: a key of the offline hosts file, or a flag of each agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuKnob {
    /// `cpu_overcommit` in the hosts file (`labspan place`).
    #[default]
    HostsFile,
    /// `labspan agent run --cpu-overcommit` on the cluster's hosts.
    AgentFlag,
}

impl std::fmt::Display for CpuKnob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuKnob::HostsFile => "cpu_overcommit in the hosts file",
            CpuKnob::AgentFlag => {
                "the hosts' `labspan agent run --cpu-overcommit` (LABSPAN_CPU_OVERCOMMIT)"
            }
        })
    }
}

impl PlacementError {
    /// The same error, naming the knob of a cluster (the agents' flag)
    /// instead of the hosts file's key.
    pub fn on_cluster(mut self) -> PlacementError {
        if let PlacementError::Vcpus { knob, .. } | PlacementError::TotalVcpus { knob, .. } =
            &mut self
        {
            *knob = CpuKnob::AgentFlag;
        }
        self
    }
}
