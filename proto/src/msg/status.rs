//! What the cluster and its labs look like: the status, reports and
//! snapshots that replies carry.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::health::GuestHealth;
use crate::image::ImageInfo;

/// One up host's image endpoint and inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostImages {
    pub host: String,
    /// `ip:port` of its image endpoint (`None`: its agent has not said).
    pub addr: Option<String>,
    pub images: Vec<ImageInfo>,
}

/// The whole cluster at one moment, as [`Request::Watch`](super::Request::Watch) streams it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub status: ClusterStatus,
    pub labs: Vec<LabSnapshot>,
}

/// One lab in a [`ClusterView`]: its report and its codec-encoded
/// [`crate::lab::LabBundle`] (nodes, NICs, segments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSnapshot {
    pub report: LabReport,
    #[serde(with = "serde_bytes")]
    pub bundle: Vec<u8>,
}

/// What `labspan cluster status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub members: Vec<MemberStatus>,
    pub leader: Option<u64>,
    pub term: u64,
    /// Index of the last committed (and applied) entry on the leader.
    pub commit_index: Option<u64>,
    pub hosts: Vec<HostStatus>,
    /// Lab name → status.
    pub labs: Vec<(String, LabStatus)>,
}

/// One coordinator in the Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub name: String,
    pub addr: String,
    /// A voter (false: a learner still catching up).
    pub voter: bool,
}

/// One lab host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub vtep: IpAddr,
    pub memory_mib: u64,
    pub vcpus: u64,
    pub up: bool,
    /// Cordoned (`labspan host drain`): no new placements.
    #[serde(default)]
    pub cordoned: bool,
    /// What it can do (`None`: its agent has not said to this leader).
    pub capabilities: Option<Capabilities>,
}

/// What a host's kernel and hardware can do, as its agent found out by
/// trying (not by reading a kernel config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The netem qdisc: link delay, jitter and loss.
    pub netem: bool,
    /// The tbf qdisc: a link rate alone.
    pub tbf: bool,
    /// VXLAN devices: segments that span hosts.
    pub vxlan: bool,
    /// KVM boots a guest in time (`None`: `/dev/kvm` opens, not tried yet).
    pub kvm: Option<bool>,
}

impl Capabilities {
    /// Whether the host can put `imp` on a link (which qdisc it takes is
    /// the agent's rule: netem for delay, jitter or loss, tbf for a rate alone).
    pub fn can_impair(&self, imp: &crate::lab::Impairment) -> Result<(), &'static str> {
        match crate::lab::qdisc_for(imp) {
            Some("netem") if !self.netem => Err("netem"),
            Some("tbf") if !self.tbf => Err("tbf"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out: Vec<String> = [
            (self.netem, "netem"),
            (self.tbf, "tbf"),
            (self.vxlan, "vxlan"),
        ]
        .iter()
        .map(|(on, name)| {
            if *on {
                name.to_string()
            } else {
                format!("no-{name}")
            }
        })
        .collect();
        out.push(
            match self.kvm {
                Some(true) => "kvm",
                Some(false) => "no-kvm",
                None => "kvm-untested",
            }
            .to_string(),
        );
        f.write_str(&out.join(" "))
    }
}

/// Where a lab's nodes run and how its VMs came up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabReport {
    pub lab: String,
    /// Node → host.
    pub placement: BTreeMap<String, String>,
    /// Segment key → VNI.
    pub vnis: BTreeMap<String, u32>,
    pub status: LabStatus,
    /// Node → its own state (a lost host's nodes are `Lost` while the rest
    /// of the lab runs).
    pub nodes: BTreeMap<String, NodeState>,
    /// Who deployed the lab, from which file, and when.
    pub origin: Option<LabOrigin>,
    pub vms: Vec<VmReport>,
    /// How each guest is doing, as its agent last said.
    pub guests: Vec<GuestHealth>,
    /// Node → the checkpoint it restarted from after its host was lost.
    #[serde(default)]
    pub restored_from: BTreeMap<String, String>,
}

/// Where a lab is in its life. It crosses the wire typed: clients match on
/// it, and its text is for people only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabStatus {
    /// Placed and recorded in one step; agents are bringing it up (a fresh
    /// deploy, an edit, or nodes moving off a lost host).
    #[default]
    Deploying,
    /// Every VM is up.
    Running,
    /// Could not be brought up; the reason is for the user.
    Failed { reason: String },
    /// Being torn down.
    Deleting,
    /// Some nodes were on a host that is down and no up host can take them;
    /// the rest of the lab runs. The reason names those nodes.
    Degraded { reason: String },
}

impl LabStatus {
    /// The status word, without its reason.
    pub fn word(&self) -> &'static str {
        match self {
            LabStatus::Deploying => "Deploying",
            LabStatus::Running => "Running",
            LabStatus::Failed { .. } => "Failed",
            LabStatus::Deleting => "Deleting",
            LabStatus::Degraded { .. } => "Degraded",
        }
    }

    /// Why the lab is `Failed` or `Degraded`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            LabStatus::Failed { reason } | LabStatus::Degraded { reason } => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{}: {reason}", self.word()),
            None => f.write_str(self.word()),
        }
    }
}

/// One node's own state, as the leader knows it from the replicated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Its host is bringing it up (a deploy or an edit in flight).
    Starting,
    /// Its host was lost; it is starting on another host.
    Moving,
    /// Up, as far as the last deploy reported.
    Running,
    /// Its host is down and no host has taken it yet.
    Lost,
    /// The lab failed (its reason is the lab's).
    Failed,
    /// The lab is being torn down.
    Stopping,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Starting => "starting",
            NodeState::Moving => "moving",
            NodeState::Running => "running",
            NodeState::Lost => "lost",
            NodeState::Failed => "failed",
            NodeState::Stopping => "stopping",
        })
    }
}

/// Which lab file a deploy came from, as the CLI saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSource {
    /// The lab file's absolute path on the machine that ran `up`.
    pub file: String,
    /// That machine's name.
    pub host: String,
}

/// Who deployed a lab, from where, and when (recorded by the leader: the
/// member comes from the caller's certificate, never from the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabOrigin {
    pub member: String,
    pub source: LabSource,
    /// Seconds since the Unix epoch, on the leader's clock.
    pub deployed_unix: u64,
}

impl fmt::Display for LabOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.deployed_unix),
        );
        write!(
            f,
            "member {:?} from {}:{} at {when}",
            self.member, self.source.host, self.source.file
        )
    }
}

/// How one VM came up, as its agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    pub host: String,
    pub lab: String,
    pub vm: String,
    pub pid: u32,
    /// `None` when the VM is up and configured, else what went wrong.
    pub error: Option<String>,
}

/// Output of a command run in a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}
