//! The lab model: what a valid lab file means, after defaults are applied.
//!
//! Nothing here is parsed or checked; `parse` builds a `Lab` only from a file
//! that validated, so code that holds a `Lab` may rely on its invariants
//! (every endpoint names a node, every NIC is in at most one segment, ...).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A whole lab: nodes, the segments that join them, hints and checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lab {
    /// `[a-z0-9-]`, 1..32 characters.
    pub name: String,
    pub nodes: BTreeMap<String, Node>,
    /// Point-to-point links, in file order.
    pub links: Vec<Link>,
    /// Multi-access segments by name.
    pub lans: BTreeMap<String, Lan>,
    pub placement: PlacementHints,
    /// Checks run after the lab is up, in file order.
    pub verify: Vec<Check>,
    /// What the cluster does to bring the lab back after a host loss.
    pub resilience: Resilience,
}

/// `resilience:` in the lab file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resilience {
    /// Take an automatic checkpoint this often; the nodes a host loss
    /// takes down restart from the latest one instead of booting.
    pub checkpoint_every: Option<Duration>,
}

/// One virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub image: String,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Every NIC of the node, including those only named by a link or LAN.
    pub nics: BTreeMap<String, Nic>,
    /// Shell lines run in the guest after boot, in order.
    pub exec: Vec<String>,
    /// Guest path → host path, relative to the lab file's folder.
    pub files: BTreeMap<String, String>,
    /// What the agent does when the guest fails.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// When a node's guest is started again after it stops (a kernel panic, a
/// hang, a reboot or power-off from inside, its QEMU dying).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always, with a capped backoff, however often it fails.
    Always,
    /// Restarted with a backoff, until it fails again before ever becoming
    /// ready several times in a row (a guest that cannot boot is left).
    #[default]
    OnFailure,
    /// Never: a failed guest is left as it is and reported.
    Never,
}

impl RestartPolicy {
    /// Every policy, as spelled in a lab file.
    pub const ALL: [RestartPolicy; 3] = [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ];

    /// The policy as a lab file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub ip: Vec<IpNet>,
    /// Guest MTU; `None` means the largest the segment allows.
    pub mtu: Option<u32>,
}

/// `node:nic`, one end of a link or a member of a LAN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub node: String,
    pub nic: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.nic)
    }
}

/// A point-to-point link between two NICs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub endpoints: [Endpoint; 2],
    pub impairment: Impairment,
}

/// A multi-access segment (2 or more members).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lan {
    pub members: Vec<Endpoint>,
}

/// Link impairments, applied on both ends of a link (`tc netem` / `tbf`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Impairment {
    pub delay_us: Option<u64>,
    pub jitter_us: Option<u64>,
    /// Loss in percent, 0..=100.
    pub loss_percent: Option<f64>,
    /// Rate in kbit/s; also weighs the link in placement.
    pub rate_kbit: Option<u64>,
}

/// The qdisc that carries `imp` on a tap: `netem` for a delay, jitter or
/// loss (with any rate), `tbf` for a rate alone, none for no impairment.
pub fn qdisc_for(imp: &Impairment) -> Option<&'static str> {
    let nz = |v: Option<u64>| v.is_some_and(|v| v > 0);
    if nz(imp.delay_us) || nz(imp.jitter_us) || imp.loss_percent.is_some_and(|l| l > 0.0) {
        Some("netem")
    } else if nz(imp.rate_kbit) {
        Some("tbf")
    } else {
        None
    }
}

impl Impairment {
    /// True when no impairment is asked for.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// Where a node may run: a host by name, or any host with a label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HostSelector {
    Host(String),
    Label(String),
}

impl fmt::Display for HostSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostSelector::Host(h) => write!(f, "{h}"),
            HostSelector::Label(l) => write!(f, "label:{l}"),
        }
    }
}

/// The user's placement hints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementHints {
    pub pin: BTreeMap<String, HostSelector>,
    /// Each group runs on one host.
    pub together: Vec<Vec<String>>,
    /// Each group's members run on pairwise different hosts.
    pub spread: Vec<Vec<String>>,
}

/// A check that turns a demo into a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// Ping `to` (an address, or a node name) from inside node `from`.
    Ping {
        from: String,
        to: String,
        /// How long to keep retrying before the check fails (`None`: the
        /// runner's default).
        timeout: Option<Duration>,
    },
    /// Run `cmd` in `node`; it passes when it exits 0 and, if `expect` is
    /// given, its output matches that regular expression.
    Exec {
        node: String,
        cmd: String,
        expect: Option<String>,
        /// How long to keep retrying before the check fails (`None`: the
        /// runner's default).
        timeout: Option<Duration>,
    },
}

impl Check {
    /// How long this check may be retried, if the lab file says.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Check::Ping { timeout, .. } | Check::Exec { timeout, .. } => *timeout,
        }
    }
}

/// A segment of the lab: a link or a LAN, seen the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    /// Stable across edits of the lab file: `lan:NAME` or `link:A:X--B:Y`
    /// (endpoints sorted), so inserting a link does not rename the others.
    pub key: String,
    pub members: Vec<&'a Endpoint>,
    pub impairment: Impairment,
}

impl Lab {
    /// Every segment, links first (in file order), then LANs by name.
    pub fn segments(&self) -> Vec<Segment<'_>> {
        let links = self.links.iter().map(|l| {
            let mut ends = [&l.endpoints[0], &l.endpoints[1]];
            ends.sort();
            Segment {
                key: format!("link:{}--{}", ends[0], ends[1]),
                members: ends.to_vec(),
                impairment: l.impairment,
            }
        });
        let lans = self.lans.iter().map(|(name, lan)| Segment {
            key: format!("lan:{name}"),
            members: lan.members.iter().collect(),
            impairment: Impairment::default(),
        });
        links.chain(lans).collect()
    }
}
