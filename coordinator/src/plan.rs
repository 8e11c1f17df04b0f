//! Host plans from a placed lab: which bridges, taps, VXLAN devices and VMs
//! each host runs. Pure: the same inputs give the same plans.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use labspan_proto::lab::{Endpoint, FileRef, Lab, Segment};
use labspan_proto::names;
use labspan_proto::plan::{
    GuestConfig, GuestFile, IncomingPlan, LabPlan, NicPlan, SegmentPlan, VmPlan, VxlanPlan,
};

/// VXLAN's own header cost on an IPv4 underlay (outer IP 20 + UDP 8 +
/// VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// UDP port of the lab fabric (IANA's VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

/// What the planner needs to know about a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFabric {
    /// Address of this host's VXLAN tunnel endpoint.
    pub vtep: IpAddr,
    /// MTU of the network between hosts.
    pub underlay_mtu: u32,
}

/// Why a placed lab cannot be turned into host plans.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A node has no host in the placement.
    #[error("lab \"{lab}\": node \"{node}\" is not placed on any host")]
    Unplaced { lab: String, node: String },
    /// A node is placed on a host the planner knows nothing of.
    #[error("lab \"{lab}\": node \"{node}\" is placed on unknown host \"{host}\"")]
    UnknownHost {
        lab: String,
        node: String,
        host: String,
    },
    /// A NIC asks for an MTU the fabric cannot carry.
    #[error(
        "lab \"{lab}\": nodes.{node}.nics.{nic}: mtu {asked} is larger than the fabric carries \
         ({max}: the underlay MTU {underlay} minus {VXLAN_OVERHEAD} bytes of VXLAN); ask for {max} or less"
    )]
    MtuTooLarge {
        lab: String,
        node: String,
        nic: String,
        asked: u32,
        max: u32,
        underlay: u32,
    },
    /// A segment spanning hosts has no VNI.
    #[error("lab \"{lab}\": segment {segment} spans hosts but has no VNI")]
    NoVni { lab: String, segment: String },
    /// A host's underlay MTU leaves no room for VXLAN (the leader checks
    /// what agents announce; this guards a state that holds one anyway).
    #[error("lab \"{lab}\": host \"{host}\": {why}")]
    BadUnderlayMtu {
        lab: String,
        host: String,
        why: String,
    },
    /// A node copies a file the lab's bundle does not name.
    #[error("lab \"{lab}\": nodes.{node}.files: \"{file}\" is not in the lab's bundle; submit it with `labspan up FILE`")]
    MissingFile {
        lab: String,
        node: String,
        file: String,
    },
}

/// Inputs of `plan_lab`.
pub struct PlanInput<'a> {
    pub lab: &'a Lab,
    /// The lab's `files` by hash, by host path as written in the lab.
    pub files: &'a BTreeMap<String, FileRef>,
    /// Node → host.
    pub placement: &'a BTreeMap<String, String>,
    pub hosts: &'a BTreeMap<String, HostFabric>,
    /// VNI of every segment that spans hosts, by segment key.
    pub vnis: &'a BTreeMap<String, u32>,
    /// A node being moved: it runs on its placed host and is received on
    /// another, and its segments span both until the move ends.
    pub arriving: Option<Arriving<'a>>,
}

/// A node on its way to another host (a live move).
#[derive(Debug, Clone, Copy)]
pub struct Arriving<'a> {
    pub node: &'a str,
    /// The host that receives it.
    pub to: &'a str,
    pub plan: &'a IncomingPlan,
}

/// The hosts each segment has members on, by segment key.
pub fn segment_hosts<'a>(
    segments: &[Segment<'_>],
    placement: &'a BTreeMap<String, String>,
) -> BTreeMap<String, BTreeSet<&'a str>> {
    segments
        .iter()
        .map(|s| {
            let hosts = s
                .members
                .iter()
                .filter_map(|m| placement.get(&m.node).map(String::as_str))
                .collect();
            (s.key.clone(), hosts)
        })
        .collect()
}

/// One `LabPlan` per host that runs part of the lab.
pub fn plan_lab(input: &PlanInput<'_>) -> Result<BTreeMap<String, LabPlan>, PlanError> {
    let lab = input.lab;
    let host_of = |node: &str| -> Result<&String, PlanError> {
        let host = input
            .placement
            .get(node)
            .ok_or_else(|| PlanError::Unplaced {
                lab: lab.name.clone(),
                node: node.to_string(),
            })?;
        if !input.hosts.contains_key(host) {
            return Err(PlanError::UnknownHost {
                lab: lab.name.clone(),
                node: node.to_string(),
                host: host.clone(),
            });
        }
        Ok(host)
    };
    for node in lab.nodes.keys() {
        host_of(node)?;
    }
    // The fabric limit is the same on every host so that moving a node never
    // changes a running guest's MTU.
    for (host, fabric) in input.hosts {
        labspan_proto::plan::check_underlay_mtu(fabric.underlay_mtu).map_err(|why| {
            PlanError::BadUnderlayMtu {
                lab: lab.name.clone(),
                host: host.clone(),
                why,
            }
        })?;
    }
    let fabric_mtu = input
        .hosts
        .values()
        .map(|h| h.underlay_mtu)
        .min()
        .unwrap_or(1550)
        .saturating_sub(VXLAN_OVERHEAD);

    let segments = lab.segments();
    let mut spans = segment_hosts(&segments, input.placement);
    if let Some(a) = &input.arriving {
        if !input.hosts.contains_key(a.to) {
            return Err(PlanError::UnknownHost {
                lab: lab.name.clone(),
                node: a.node.to_string(),
                host: a.to.to_string(),
            });
        }
        // Peers flood the segment to both hosts while the guest moves, so
        // its frames reach it wherever it runs at the switch-over.
        for seg in &segments {
            if seg.members.iter().any(|m| m.node == a.node) {
                if let Some(hosts) = spans.get_mut(&seg.key) {
                    hosts.insert(a.to);
                }
            }
        }
    }
    let mut segment_of: BTreeMap<&Endpoint, (&str, u32)> = BTreeMap::new();
    let mut plans: BTreeMap<String, LabPlan> = BTreeMap::new();
    for seg in &segments {
        let mtu = segment_mtu(lab, seg, fabric_mtu)?;
        let hosts = &spans[&seg.key];
        for m in &seg.members {
            segment_of.insert(m, (seg.key.as_str(), mtu));
        }
        for host in hosts {
            let vxlan = if hosts.len() > 1 {
                let vni = *input.vnis.get(&seg.key).ok_or_else(|| PlanError::NoVni {
                    lab: lab.name.clone(),
                    segment: seg.key.clone(),
                })?;
                Some(VxlanPlan {
                    vni,
                    device: names::vxlan(vni),
                    local: input.hosts[*host].vtep,
                    remotes: hosts
                        .iter()
                        .filter(|h| *h != host)
                        .map(|h| input.hosts[*h].vtep)
                        .collect(),
                    port: VXLAN_PORT,
                })
            } else {
                None
            };
            lab_plan(&mut plans, lab, host).segments.push(SegmentPlan {
                key: seg.key.clone(),
                bridge: names::bridge(&lab.name, &seg.key),
                mtu,
                vxlan,
            });
        }
    }
    for (name, node) in &lab.nodes {
        let host = host_of(name)?;
        let nics = node
            .nics
            .iter()
            .map(|(nic_name, nic)| {
                let ep = Endpoint {
                    node: name.clone(),
                    nic: nic_name.clone(),
                };
                let (segment, seg_mtu) = match segment_of.get(&ep) {
                    Some((key, mtu)) => (Some(key.to_string()), *mtu),
                    None => (None, fabric_mtu),
                };
                let impairment = lab
                    .links
                    .iter()
                    .find(|l| l.endpoints.contains(&ep))
                    .map(|l| l.impairment)
                    .unwrap_or_default();
                NicPlan {
                    name: nic_name.clone(),
                    segment,
                    tap: names::tap(&lab.name, name, nic_name),
                    mac: names::mac(&lab.name, name, nic_name),
                    mtu: nic.mtu.unwrap_or(seg_mtu).min(seg_mtu),
                    addrs: nic.ip.clone(),
                    impairment,
                }
            })
            .collect();
        let files = node
            .files
            .iter()
            .map(|(guest, src)| {
                let file = input.files.get(src).ok_or_else(|| PlanError::MissingFile {
                    lab: lab.name.clone(),
                    node: name.clone(),
                    file: src.clone(),
                })?;
                Ok(GuestFile {
                    path: guest.clone(),
                    file: file.clone(),
                })
            })
            .collect::<Result<_, PlanError>>()?;
        let vm = VmPlan {
            name: name.clone(),
            image: node.image.clone(),
            memory_mib: node.memory_mib,
            cpus: node.cpus,
            nics,
            config: GuestConfig {
                files,
                exec: node.exec.clone(),
            },
            restart: node.restart,
            incoming: None,
            restore: None,
        };
        if let Some(a) = input.arriving.filter(|a| a.node == name.as_str()) {
            let arriving = VmPlan {
                incoming: Some(a.plan.clone()),
                ..vm.clone()
            };
            lab_plan(&mut plans, lab, a.to).vms.push(arriving);
        }
        lab_plan(&mut plans, lab, host).vms.push(vm);
    }
    Ok(plans)
}

fn lab_plan<'p>(
    plans: &'p mut BTreeMap<String, LabPlan>,
    lab: &Lab,
    host: &str,
) -> &'p mut LabPlan {
    plans.entry(host.to_string()).or_insert_with(|| LabPlan {
        lab: lab.name.clone(),
        segments: Vec::new(),
        vms: Vec::new(),
        verify: lab.verify.clone(),
        images: Vec::new(),
    })
}

/// The segment's MTU: the smallest its members ask for, at most what the
/// fabric carries (asking for more is an error).
fn segment_mtu(lab: &Lab, seg: &Segment<'_>, fabric_mtu: u32) -> Result<u32, PlanError> {
    let mut mtu = fabric_mtu;
    for m in &seg.members {
        let asked = lab
            .nodes
            .get(&m.node)
            .and_then(|n| n.nics.get(&m.nic))
            .and_then(|n| n.mtu);
        if let Some(asked) = asked {
            if asked > fabric_mtu {
                return Err(PlanError::MtuTooLarge {
                    lab: lab.name.clone(),
                    node: m.node.clone(),
                    nic: m.nic.clone(),
                    asked,
                    max: fabric_mtu,
                    underlay: fabric_mtu + VXLAN_OVERHEAD,
                });
            }
            mtu = mtu.min(asked);
        }
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use labspan_proto::lab::{Impairment, Lan, Link, Nic, Node, PlacementHints};

    fn ep(s: &str) -> Endpoint {
        let (node, nic) = s.split_once(':').expect("node:nic");
        Endpoint {
            node: node.into(),
            nic: nic.into(),
        }
    }

    fn node(nics: &[(&str, Option<u32>)]) -> Node {
        Node {
            image: "tiny".into(),
            memory_mib: 256,
            cpus: 1,
            nics: nics
                .iter()
                .map(|(n, mtu)| {
                    (
                        n.to_string(),
                        Nic {
                            ip: vec![],
                            mtu: *mtu,
                        },
                    )
                })
                .collect(),
            exec: vec!["true".into()],
            files: BTreeMap::from([("/etc/motd".into(), "motd.txt".into())]),
            restart: Default::default(),
        }
    }

    /// a:eth0 -- b:eth0 link; a:eth1, b:eth1, c:eth1 on LAN "core".
    fn lab() -> Lab {
        Lab {
            name: "t".into(),
            nodes: BTreeMap::from([
                ("a".into(), node(&[("eth0", None), ("eth1", None)])),
                ("b".into(), node(&[("eth0", None), ("eth1", None)])),
                ("c".into(), node(&[("eth1", Some(1400))])),
            ]),
            links: vec![Link {
                endpoints: [ep("a:eth0"), ep("b:eth0")],
                impairment: Impairment::default(),
            }],
            lans: BTreeMap::from([(
                "core".into(),
                Lan {
                    members: vec![ep("a:eth1"), ep("b:eth1"), ep("c:eth1")],
                },
            )]),
            placement: PlacementHints::default(),
            verify: vec![],
            resilience: Default::default(),
        }
    }

    fn hosts(n: u8) -> BTreeMap<String, HostFabric> {
        (1..=n)
            .map(|i| {
                let fabric = HostFabric {
                    vtep: IpAddr::from([198, 18, 0, i]),
                    underlay_mtu: 1500,
                };
                (format!("h{i}"), fabric)
            })
            .collect()
    }

    fn placed(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect()
    }

    fn plan(
        placement: &BTreeMap<String, String>,
        hosts: &BTreeMap<String, HostFabric>,
    ) -> Result<BTreeMap<String, LabPlan>, PlanError> {
        let files = BTreeMap::from([("motd.txt".to_string(), FileRef::of(b"hello"))]);
        let vnis = BTreeMap::from([
            ("link:a:eth0--b:eth0".to_string(), 4096),
            ("lan:core".to_string(), 4097),
        ]);
        plan_lab(&PlanInput {
            lab: &lab(),
            files: &files,
            placement,
            hosts,
            vnis: &vnis,
            arriving: None,
        })
    }

    #[test]
    fn one_host_gets_every_segment_and_no_tunnel() {
        let plans =
            plan(&placed(&[("a", "h1"), ("b", "h1"), ("c", "h1")]), &hosts(1)).expect("plan");
        let p = &plans["h1"];
        assert_eq!(p.segments.len(), 2);
        assert!(p.segments.iter().all(|s| s.vxlan.is_none()));
        assert_eq!(p.vms.len(), 3);
        let a = p.vms.iter().find(|v| v.name == "a").expect("a");
        assert_eq!(a.nics[0].segment.as_deref(), Some("link:a:eth0--b:eth0"));
        assert_eq!(a.nics[0].tap, names::tap("t", "a", "eth0"));
        assert_eq!(a.config.files[0].file, FileRef::of(b"hello"));
    }

    #[test]
    fn spanning_segments_get_vxlan_to_every_other_host() {
        let plans =
            plan(&placed(&[("a", "h1"), ("b", "h2"), ("c", "h3")]), &hosts(3)).expect("plan");
        let lan = |h: &str| {
            plans[h]
                .segments
                .iter()
                .find(|s| s.key == "lan:core")
                .cloned()
                .expect("lan")
        };
        let vx = lan("h1").vxlan.expect("vxlan");
        assert_eq!((vx.vni, vx.device.as_str()), (4097, "lsx4097"));
        assert_eq!(vx.local, IpAddr::from([198, 18, 0, 1]));
        assert_eq!(
            vx.remotes,
            vec![IpAddr::from([198, 18, 0, 2]), IpAddr::from([198, 18, 0, 3])]
        );
        assert!(
            !plans["h3"]
                .segments
                .iter()
                .any(|s| s.key.starts_with("link:")),
            "h3 has no link member"
        );
        // The LAN's smallest requested MTU wins for every member.
        assert_eq!(lan("h2").mtu, 1400);
        // Default MTU leaves room for VXLAN on a 1500-byte underlay.
        assert_eq!(
            plans["h1"]
                .segments
                .iter()
                .find(|s| s.key.starts_with("link:"))
                .map(|s| s.mtu),
            Some(1450)
        );
    }

    #[test]
    fn an_underlay_mtu_below_the_vxlan_overhead_is_refused_not_wrapped() {
        for bad in [0, 40, 49, 575, 70_000] {
            let mut h = hosts(1);
            h.get_mut("h1").expect("h1").underlay_mtu = bad;
            let err = plan(&placed(&[("a", "h1"), ("b", "h1"), ("c", "h1")]), &h)
                .expect_err("bad underlay MTU");
            assert!(
                matches!(&err, PlanError::BadUnderlayMtu { host, .. } if host == "h1"),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("underlay MTU {bad} is outside 576..=65535")),
                "{err}"
            );
        }
    }

    #[test]
    fn mtu_above_the_fabric_is_refused() {
        let mut h = hosts(1);
        h.get_mut("h1").expect("h1").underlay_mtu = 1420;
        let err =
            plan(&placed(&[("a", "h1"), ("b", "h1"), ("c", "h1")]), &h).expect_err("too large");
        assert!(
            matches!(
                err,
                PlanError::MtuTooLarge {
                    asked: 1400,
                    max: 1370,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("nodes.c.nics.eth1: mtu 1400"),
            "{err}"
        );
    }

    #[test]
    fn unplaced_and_unknown_hosts_are_errors() {
        let err = plan(&placed(&[("a", "h1"), ("b", "h1")]), &hosts(1)).expect_err("c unplaced");
        assert_eq!(
            err,
            PlanError::Unplaced {
                lab: "t".into(),
                node: "c".into()
            }
        );
        let err =
            plan(&placed(&[("a", "h1"), ("b", "h1"), ("c", "h9")]), &hosts(1)).expect_err("h9");
        assert!(matches!(err, PlanError::UnknownHost { .. }));
    }
}
