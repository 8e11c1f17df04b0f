//! Host plans for the network tests, named the way the coordinator names them.

#![allow(dead_code)]

#[allow(unused_imports)] // not every test binary uses namespaces
pub use labspan_testutil::netns;

use std::net::IpAddr;

use labspan_proto::lab::Impairment;
use labspan_proto::names;
use labspan_proto::plan::{
    GuestConfig, HostPlan, LabPlan, NicPlan, SegmentPlan, VmPlan, VxlanPlan,
};

/// A lab plan with no segments and no VMs.
pub fn lab(name: &str) -> LabPlan {
    LabPlan {
        lab: name.to_string(),
        segments: vec![],
        vms: vec![],
        verify: vec![],
        images: vec![],
    }
}

/// A host plan of `labs`.
pub fn host(labs: Vec<LabPlan>) -> HostPlan {
    HostPlan {
        host: "h1".to_string(),
        labs,
        kept_checkpoints: Vec::new(),
        ..HostPlan::default()
    }
}

/// Adds a local-only segment.
pub fn segment(lab: &mut LabPlan, key: &str, mtu: u32) {
    let bridge = names::bridge(&lab.lab, key);
    lab.segments.push(SegmentPlan {
        key: key.to_string(),
        bridge,
        mtu,
        vxlan: None,
    });
}

/// Adds a segment stretched over VXLAN to `remotes`.
pub fn vx_segment(
    lab: &mut LabPlan,
    key: &str,
    mtu: u32,
    vni: u32,
    local: IpAddr,
    remotes: &[IpAddr],
) {
    segment(lab, key, mtu);
    if let Some(seg) = lab.segments.last_mut() {
        seg.vxlan = Some(VxlanPlan {
            vni,
            device: names::vxlan(vni),
            local,
            remotes: remotes.to_vec(),
            port: 4789,
        });
    }
}

/// Adds a VM with one NIC per `(nic, segment)`.
/// NIC MTU is the segment's, as the coordinator plans it.
pub fn vm(lab: &mut LabPlan, name: &str, nics: &[(&str, Option<&str>)]) {
    let mtu_of = |seg: Option<&str>| {
        lab.segments
            .iter()
            .find(|s| Some(s.key.as_str()) == seg)
            .map_or(1450, |s| s.mtu)
    };
    let nics = nics
        .iter()
        .map(|(nic, seg)| NicPlan {
            name: nic.to_string(),
            segment: seg.map(str::to_string),
            tap: names::tap(&lab.lab, name, nic),
            mac: names::mac(&lab.lab, name, nic),
            mtu: mtu_of(*seg),
            addrs: vec![],
            impairment: Impairment::default(),
        })
        .collect();
    lab.vms.push(VmPlan {
        name: name.to_string(),
        image: "tiny".to_string(),
        memory_mib: 128,
        cpus: 1,
        nics,
        config: GuestConfig::default(),
        restart: Default::default(),
        incoming: None,
        restore: None,
    });
}

/// `198.18.a.b`.
pub fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::from([198, 18, a, b])
}

/// The reference plan: lab `name`, segments "s1" and "s2", VMs a (eth0 on
/// s1) and b (eth0 on s1, eth1 on s2): two bridges, three taps.
pub fn two_segments(name: &str) -> LabPlan {
    let mut l = lab(name);
    segment(&mut l, "s1", 1450);
    segment(&mut l, "s2", 1400);
    vm(&mut l, "a", &[("eth0", Some("s1"))]);
    vm(&mut l, "b", &[("eth0", Some("s1")), ("eth1", Some("s2"))]);
    l
}
