//! Host plans: everything one host must run, as decided by the coordinator.
//!
//! The agent reconciles its host to a `HostPlan`; the same type is used by
//! the embedded default and by a cluster. A plan is complete (not a diff):
//! what is on the host and not in the plan is removed.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::image::ImagePlan;
use crate::lab::{Check, Impairment, RestartPolicy};

/// Underlay MTUs a host may announce: from IPv4's smallest datagram every
/// link must carry to the largest IP packet (VXLAN takes 50 bytes of it).
pub const UNDERLAY_MTU: std::ops::RangeInclusive<u32> = 576..=65535;

/// Checks an underlay MTU against [`UNDERLAY_MTU`]; the error says the range.
pub fn check_underlay_mtu(mtu: u32) -> Result<u32, String> {
    if UNDERLAY_MTU.contains(&mtu) {
        Ok(mtu)
    } else {
        Err(format!(
            "underlay MTU {mtu} is outside {}..={} bytes",
            UNDERLAY_MTU.start(),
            UNDERLAY_MTU.end()
        ))
    }
}

/// Everything one host must run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    pub labs: Vec<LabPlan>,
    /// Labs this host runs no node of but keeps checkpoint copies of (it
    /// removes the checkpoints of every other lab it does not run).
    #[serde(default)]
    pub kept_checkpoints: Vec<String>,
    /// The fencing token: the index of the last Raft entry the plan was
    /// made from. An agent refuses a plan older than one it has applied
    /// (a slow push from a deposed leader must not undo a host loss's moves).
    pub generation: u64,
}

/// The part of one lab that runs on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabPlan {
    pub lab: String,
    pub segments: Vec<SegmentPlan>,
    pub vms: Vec<VmPlan>,
    /// The lab's checks (run by whoever drives `verify`).
    pub verify: Vec<Check>,
    /// The images this host's VMs of the lab use, as the leader resolved
    /// them (an image left out is taken from the local store as it is).
    #[serde(default)]
    pub images: Vec<ImagePlan>,
}

/// One L2 segment's share on this host: a bridge, and a VXLAN device when
/// the segment has members on other hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentPlan {
    /// `Segment::key` in the lab.
    pub key: String,
    /// Bridge interface name (`names::bridge`).
    pub bridge: String,
    /// MTU of the bridge and every port on it.
    pub mtu: u32,
    pub vxlan: Option<VxlanPlan>,
}

/// The VXLAN device that stretches a segment to other hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanPlan {
    pub vni: u32,
    /// Device name (`names::vxlan`).
    pub device: String,
    /// This host's VTEP address.
    pub local: IpAddr,
    /// VTEPs of the other hosts with members on this segment (one all-zeros
    /// FDB entry each).
    pub remotes: Vec<IpAddr>,
    /// UDP destination port (4789 by default).
    pub port: u16,
}

/// One guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmPlan {
    pub name: String,
    /// Image name in the image store.
    pub image: String,
    pub memory_mib: u64,
    pub cpus: u32,
    /// In guest order: the first NIC is the guest's first virtio-net device.
    pub nics: Vec<NicPlan>,
    pub config: GuestConfig,
    /// What the agent does when the guest fails.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Set while the guest is being moved here from another host: the
    /// agent starts QEMU to receive it rather than to boot it.
    #[serde(default)]
    pub incoming: Option<IncomingPlan>,
    /// Set while the guest restarts here after its host was lost, from
    /// this checkpoint of its lab (its files are on this host): the agent
    /// starts QEMU from the checkpoint's state rather than booting it, and
    /// boots it only when the checkpoint cannot be loaded.
    #[serde(default)]
    pub restore: Option<String>,
}

/// Where a moved guest comes from (only that host's certificate may feed
/// it) and where it is received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingPlan {
    /// The host it runs on until the move is done.
    pub from: String,
    /// Where this host receives it: its VTEP address.
    pub addr: IpAddr,
    /// The port (on `addr`) of the RAM stream; the disk's NBD server
    /// listens on the next one.
    pub port: u16,
}

/// One guest NIC and the tap that backs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicPlan {
    /// Name inside the guest (`eth0`).
    pub name: String,
    /// Key of the segment it belongs to; `None` for a NIC on no segment.
    pub segment: Option<String>,
    /// Tap interface name (`names::tap`).
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addrs: Vec<IpNet>,
    pub impairment: Impairment,
}

/// What the agent does inside a guest once it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    pub files: Vec<GuestFile>,
    /// Shell lines, run in order after addresses and files are in place.
    pub exec: Vec<String>,
}

/// A file to write in the guest; the agent fetches its contents by hash
/// from the coordinators (`Request::GetFile`) unless it holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    pub path: String,
    pub file: crate::lab::FileRef,
}
