//! The interfaces a host plan asks for. Pure.

use std::collections::BTreeMap;

use labspan_proto::names;
use labspan_proto::plan::{HostPlan, LabPlan};

use super::state::{Link, LinkKind};
use super::NetError;

/// Interface names are at most IFNAMSIZ - 1 bytes.
const MAX_NAME: usize = 15;

/// Every interface `plan` needs, bridges first, then VXLAN devices, then
/// taps (the order they are created in).
pub fn desired_links(plan: &HostPlan) -> Result<Vec<Link>, NetError> {
    let mut bridges = Vec::new();
    let mut vxlans = Vec::new();
    let mut taps = Vec::new();
    for lab in &plan.labs {
        lab_links(lab, &mut bridges, &mut vxlans, &mut taps)?;
    }
    let links: Vec<Link> = bridges.into_iter().chain(vxlans).chain(taps).collect();
    check_unique(&links)?;
    Ok(links)
}

fn lab_links(
    lab: &LabPlan,
    bridges: &mut Vec<Link>,
    vxlans: &mut Vec<Link>,
    taps: &mut Vec<Link>,
) -> Result<(), NetError> {
    let mut bridge_of = BTreeMap::new();
    for seg in &lab.segments {
        check_name(&lab.lab, &seg.bridge)?;
        let alias = names::alias(&lab.lab, &format!("segment {}", seg.key));
        let mut bridge = Link::fresh(&seg.bridge, LinkKind::Bridge, &alias, seg.mtu);
        bridge.up = true;
        bridges.push(bridge);
        bridge_of.insert(seg.key.as_str(), seg.bridge.as_str());
        if let Some(vx) = &seg.vxlan {
            check_name(&lab.lab, &vx.device)?;
            let kind = LinkKind::Vxlan {
                vni: vx.vni,
                local: vx.local,
                port: vx.port,
            };
            let alias = names::alias(&lab.lab, &format!("vxlan {}", seg.key));
            let mut dev = Link::fresh(&vx.device, kind, &alias, seg.mtu);
            dev.master = Some(seg.bridge.clone());
            dev.up = true;
            dev.fdb = vx.remotes.iter().copied().collect();
            vxlans.push(dev);
        }
    }
    for vm in &lab.vms {
        for nic in &vm.nics {
            check_name(&lab.lab, &nic.tap)?;
            let alias = names::alias(&lab.lab, &format!("tap {}.{}", vm.name, nic.name));
            let mut tap = Link::fresh(&nic.tap, LinkKind::Tap, &alias, nic.mtu);
            tap.up = true;
            tap.impairment = nic.impairment;
            if let Some(key) = &nic.segment {
                let bridge = bridge_of.get(key.as_str()).ok_or_else(|| NetError::InvalidPlan {
                    lab: lab.lab.clone(),
                    reason: format!(
                        "vm \"{}\" nic \"{}\" is on segment \"{key}\", which the plan does not have",
                        vm.name, nic.name
                    ),
                })?;
                tap.master = Some(bridge.to_string());
            }
            taps.push(tap);
        }
    }
    Ok(())
}

/// A name the kernel accepts as an interface name.
fn check_name(lab: &str, name: &str) -> Result<(), NetError> {
    let bad = |b: u8| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace();
    if name.is_empty()
        || name.len() > MAX_NAME
        || name == "."
        || name == ".."
        || name.bytes().any(bad)
    {
        return Err(NetError::InvalidPlan {
            lab: lab.to_string(),
            reason: format!(
                "\"{name}\" is not a valid interface name (1 to {MAX_NAME} bytes, no '/', ':' or space)"
            ),
        });
    }
    Ok(())
}

/// No two objects of the plan may want the same interface.
fn check_unique(links: &[Link]) -> Result<(), NetError> {
    let mut seen: BTreeMap<&str, &Link> = BTreeMap::new();
    for link in links {
        if let Some(first) = seen.insert(&link.name, link) {
            return Err(NetError::NameClash {
                name: link.name.clone(),
                first: first.alias.clone().unwrap_or_default(),
                second: link.alias.clone().unwrap_or_default(),
            });
        }
    }
    Ok(())
}
