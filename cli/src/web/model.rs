//! What the web page shows, made from a [`ClusterView`]: nodes grouped by
//! the host they run on, each host's load against its offer, segments and
//! the hosts they cross (with their VNI), members and leader. Pure: the
//! server sends it to the page as JSON.

use std::collections::{BTreeMap, BTreeSet};

use labspan_proto::codec;
use labspan_proto::lab::LabBundle;
use labspan_proto::msg::{ClusterView, Role};
use serde::Serialize;

/// The page's state.
#[derive(Debug, Serialize, PartialEq)]
pub struct Page {
    /// The role of the user's certificate (`admin`, `viewer`): the page
    /// offers consoles to admins only, as the coordinators allow them.
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub members: Vec<Member>,
    pub hosts: Vec<Host>,
    pub labs: Vec<Lab>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub voter: bool,
    pub leader: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Host {
    pub name: String,
    pub up: bool,
    pub cordoned: bool,
    /// What the host offers.
    pub memory_mib: u64,
    pub vcpus: u64,
    /// What the nodes placed on it take.
    pub used_memory_mib: u64,
    pub used_vcpus: u64,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Node {
    pub lab: String,
    pub node: String,
    pub state: String,
    pub memory_mib: u64,
    pub cpus: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Lab {
    pub name: String,
    /// `Running`, `Degraded: why`, ...
    pub status: String,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Segment {
    pub key: String,
    pub vni: Option<u32>,
    /// `node:nic` of each member.
    pub members: Vec<String>,
    /// The hosts its members run on.
    pub hosts: Vec<String>,
    /// Whether it spans hosts (VXLAN between them).
    pub crosses: bool,
}

/// The page for `view`, only lab `only` when given. A lab whose bundle does
/// not decode is shown by its status alone.
pub fn page(view: &ClusterView, only: Option<&str>, role: Role) -> Page {
    let s = &view.status;
    let leader = s
        .members
        .iter()
        .find(|m| Some(m.id) == s.leader)
        .map(|m| m.name.clone());
    let mut hosts: BTreeMap<String, Host> = s
        .hosts
        .iter()
        .map(|h| {
            let host = Host {
                name: h.name.clone(),
                up: h.up,
                cordoned: h.cordoned,
                memory_mib: h.memory_mib,
                vcpus: h.vcpus,
                used_memory_mib: 0,
                used_vcpus: 0,
                nodes: Vec::new(),
            };
            (h.name.clone(), host)
        })
        .collect();
    let mut labs = Vec::new();
    for snap in &view.labs {
        let report = &snap.report;
        let bundle = codec::decode::<LabBundle>(&snap.bundle).ok();
        // Every lab takes its share of its hosts, shown or not.
        for (node, host) in &report.placement {
            let spec = bundle.as_ref().and_then(|b| b.lab.nodes.get(node));
            let Some(h) = hosts.get_mut(host) else {
                continue;
            };
            let (memory_mib, cpus) = spec.map_or((0, 0), |n| (n.memory_mib, n.cpus));
            h.used_memory_mib += memory_mib;
            h.used_vcpus += u64::from(cpus);
            if only.is_none_or(|o| o == report.lab) {
                h.nodes.push(Node {
                    lab: report.lab.clone(),
                    node: node.clone(),
                    state: crate::remote::node_state(report, node),
                    memory_mib,
                    cpus,
                });
            }
        }
        if only.is_some_and(|o| o != report.lab) {
            continue;
        }
        let segments = bundle
            .as_ref()
            .map(|b| {
                b.lab
                    .segments()
                    .into_iter()
                    .map(|seg| {
                        let on: BTreeSet<String> = seg
                            .members
                            .iter()
                            .filter_map(|e| report.placement.get(&e.node).cloned())
                            .collect();
                        Segment {
                            vni: report.vnis.get(&seg.key).copied(),
                            members: seg.members.iter().map(|e| e.to_string()).collect(),
                            crosses: on.len() > 1,
                            hosts: on.into_iter().collect(),
                            key: seg.key,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        labs.push(Lab {
            name: report.lab.clone(),
            status: report.status.to_string(),
            segments,
        });
    }
    Page {
        role: role.to_string(),
        term: s.term,
        leader,
        members: s
            .members
            .iter()
            .map(|m| Member {
                name: m.name.clone(),
                addr: m.addr.clone(),
                voter: m.voter,
                leader: Some(m.id) == s.leader,
            })
            .collect(),
        hosts: hosts.into_values().collect(),
        labs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labspan_proto::msg::{ClusterStatus, HostStatus, LabReport, LabSnapshot, MemberStatus};

    fn host(name: &str, up: bool) -> HostStatus {
        HostStatus {
            name: name.into(),
            vtep: "198.18.0.1".parse().expect("ip"),
            memory_mib: 4096,
            vcpus: 8,
            up,
            cordoned: false,
            capabilities: None,
        }
    }

    fn view() -> ClusterView {
        let lab = labspan_proto::lab::parse(
            "t.yaml",
            "name: t\ndefaults: {image: tiny, memory: 256MiB, cpus: 1}\nnodes:\n  a: {nics: {eth0: {}}}\n  b: {nics: {eth0: {}, eth1: {}}}\n  c: {nics: {eth0: {}}}\nlinks:\n  - [a:eth0, b:eth0]\n  - [b:eth1, c:eth0]\n",
        )
        .expect("a valid lab");
        let bundle = LabBundle {
            lab,
            files: Default::default(),
        };
        let report = LabReport {
            lab: "t".into(),
            placement: [("a", "h1"), ("b", "h1"), ("c", "h2")]
                .into_iter()
                .map(|(n, h)| (n.to_string(), h.to_string()))
                .collect(),
            vnis: [
                ("link:a:eth0--b:eth0".to_string(), 10),
                ("link:b:eth1--c:eth0".to_string(), 11),
            ]
            .into(),
            ..Default::default()
        };
        ClusterView {
            status: ClusterStatus {
                members: vec![MemberStatus {
                    id: 1,
                    name: "c1".into(),
                    addr: "198.18.0.1:7100".into(),
                    voter: true,
                }],
                leader: Some(1),
                term: 3,
                hosts: vec![host("h1", true), host("h2", false)],
                ..Default::default()
            },
            labs: vec![LabSnapshot {
                report,
                bundle: codec::encode(&bundle).expect("encode"),
            }],
        }
    }

    #[test]
    fn nodes_are_grouped_by_host_and_crossing_segments_are_marked() {
        let p = page(&view(), None, Role::Admin);
        assert_eq!(p.leader.as_deref(), Some("c1"));
        assert_eq!(p.role, "admin");
        let on =
            |h: usize| -> Vec<&str> { p.hosts[h].nodes.iter().map(|n| n.node.as_str()).collect() };
        assert_eq!((on(0), on(1)), (vec!["a", "b"], vec!["c"]));
        assert_eq!(
            (p.hosts[0].used_memory_mib, p.hosts[0].used_vcpus),
            (512, 2)
        );
        assert!(!p.hosts[1].up);
        let segs = &p.labs[0].segments;
        assert_eq!(segs.len(), 2);
        assert!(!segs[0].crosses && segs[0].vni == Some(10));
        assert!(segs[1].crosses && segs[1].hosts == ["h1", "h2"] && segs[1].vni == Some(11));
    }

    #[test]
    fn another_lab_takes_its_share_but_is_not_shown() {
        let p = page(&view(), Some("other"), Role::Viewer);
        assert!(p.labs.is_empty());
        assert!(p.hosts[0].nodes.is_empty());
        assert_eq!(p.hosts[0].used_memory_mib, 512);
    }
}
