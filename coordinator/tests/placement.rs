//! Placement behaviour a user notices: it never overfills a host, always
//! honours hints, answers the same way twice, keeps running nodes where they
//! are, and says what runs short when nothing fits.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::{BTreeMap, BTreeSet};

use labspan_coordinator::hosts::{parse_hosts, HostSpec};
use labspan_coordinator::placement::{
    place, place_indices, place_lab, Figures, HostOffer, HostSelector, NodeDemand, PlacementError,
    Problem, SegmentDemand,
};
use proptest::prelude::*;

fn host(name: &str, memory_mib: u64, vcpus: u64, labels: &[&str]) -> HostOffer {
    HostOffer {
        name: name.into(),
        memory_mib,
        vcpus,
        used_memory_mib: 0,
        used_vcpus: 0,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        lacks: Default::default(),
    }
}

fn node(name: &str, memory_mib: u64) -> NodeDemand {
    NodeDemand {
        name: name.into(),
        memory_mib,
        vcpus: 1,
    }
}

fn link(a: usize, b: usize) -> SegmentDemand {
    SegmentDemand {
        key: format!("{a}-{b}"),
        members: vec![a, b],
        weight: 100,
    }
}

/// Two triangles joined by one link, on two hosts that hold three nodes each.
fn two_triangles() -> Problem {
    Problem {
        nodes: (0..6).map(|i| node(&format!("n{i}"), 1000)).collect(),
        segments: vec![
            link(0, 1),
            link(1, 2),
            link(2, 0),
            link(3, 4),
            link(4, 5),
            link(5, 3),
            link(2, 3),
        ],
        hosts: vec![host("h1", 3000, 8, &[]), host("h2", 3000, 8, &[])],
        ..Problem::default()
    }
}

#[test]
fn finds_the_single_cut_between_two_triangles() {
    let p = place(&two_triangles()).expect("fits");
    assert_eq!(p.figures.tunnels, 1);
    assert_eq!(p.figures.spanning_segments, 1);
    assert_eq!(p.figures.vxlan_devices, 2);
    assert!(p.figures.within_capacity());
}

#[test]
fn a_lan_spanning_three_hosts_counts_two_tunnels() {
    let mut p = Problem {
        nodes: (0..3).map(|i| node(&format!("n{i}"), 1000)).collect(),
        segments: vec![SegmentDemand {
            key: "lan".into(),
            members: vec![0, 1, 2],
            weight: 100,
        }],
        hosts: (0..3)
            .map(|h| host(&format!("h{h}"), 1000, 8, &[]))
            .collect(),
        ..Problem::default()
    };
    p.spread = vec![vec![0, 1, 2]];
    let f = place(&p).expect("fits").figures;
    assert_eq!((f.tunnels, f.spanning_segments, f.vxlan_devices), (2, 1, 3));
}

#[test]
fn node_too_big_names_the_shortfall_and_the_roomiest_host() {
    let p = Problem {
        nodes: vec![node("ldap", 1331)],
        hosts: vec![
            host("lab-host-1", 500, 8, &[]),
            host("lab-host-2", 921, 8, &[]),
        ],
        ..Problem::default()
    };
    let e = place(&p).expect_err("too big").to_string();
    assert_eq!(
        e,
        "node \"ldap\": needs 1.3 GiB, largest free on any host is 0.8 GiB (lab-host-2)"
    );
}

#[test]
fn spread_short_of_labelled_hosts_says_how_many_are_up() {
    let mut p = Problem {
        nodes: vec![node("phone1", 100), node("phone2", 100)],
        hosts: vec![host("a", 4000, 8, &["edge"]), host("b", 4000, 8, &[])],
        spread: vec![vec![0, 1]],
        ..Problem::default()
    };
    p.pins.insert(0, HostSelector::Label("edge".into()));
    p.pins.insert(1, HostSelector::Label("edge".into()));
    let e = place(&p).expect_err("one edge host").to_string();
    assert_eq!(
        e,
        "spread [phone1, phone2] needs 2 hosts labelled \"edge\", 1 is up"
    );
}

#[test]
fn other_infeasible_inputs_say_what_runs_short() {
    let base = Problem {
        nodes: vec![node("a", 800), node("b", 800)],
        hosts: vec![host("h1", 1000, 1, &[]), host("h2", 1000, 8, &[])],
        ..Problem::default()
    };
    let mut together = base.clone();
    together.together = vec![vec![0, 1]];
    let e = place(&together).expect_err("too big together").to_string();
    assert_eq!(
        e,
        "together [a, b]: needs 1.6 GiB on one host, largest free on any host is 0.9 GiB (h1)"
    );
    let mut pinned = base.clone();
    pinned.pins.insert(0, HostSelector::Host("h9".into()));
    assert!(matches!(
        place(&pinned),
        Err(PlacementError::PinnedHostMissing { .. })
    ));
    let mut label = base.clone();
    label.pins.insert(1, HostSelector::Label("gpu".into()));
    let e = place(&label).expect_err("no such label").to_string();
    assert_eq!(
        e,
        "node \"b\": pinned to label \"gpu\", but no host that is up has it"
    );
    let mut total = base.clone();
    total.nodes.push(node("c", 800));
    let e = place(&total).expect_err("no room").to_string();
    assert!(
        e.starts_with("the lab needs 2.4 GiB of memory in all, the hosts have 1.9 GiB free"),
        "{e}"
    );
    let mut cpus = base.clone();
    cpus.nodes[0].vcpus = 9;
    let e = place(&cpus).expect_err("vcpus").to_string();
    assert!(
        e.starts_with("node \"a\": needs 9 vCPUs, largest free on any host is 8 (h2)"),
        "{e}"
    );
    assert_eq!(
        place(&Problem {
            hosts: vec![],
            ..base
        }),
        Err(PlacementError::NoHosts)
    );
}

#[test]
fn the_sip_demo_places_on_two_hosts_from_the_hosts_file() {
    let lab = labspan_proto::lab::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../demos/sip/lab.yaml"
    )))
    .expect("the demo lab is valid");
    let hosts = parse_hosts(
        "hosts:\n  lab-host-1: {memory: 16GiB, cpus: 8, vtep: 198.18.0.1}\n  lab-host-2: {memory: 16GiB, cpus: 8, vtep: 198.18.0.2}\n",
        "hosts.yaml",
    )
    .expect("valid hosts");
    let p = place_lab(&lab, &hosts, &BTreeMap::new()).expect("fits on two hosts");
    assert_eq!(p.nodes.len(), lab.nodes.len());
    assert!(p.figures.within_capacity());
    assert_ne!(p.nodes["phone1"], p.nodes["phone2"], "spread hint");
    // With one host left the spread hint cannot hold; the error says so.
    let one: Vec<HostSpec> = hosts[..1].to_vec();
    let e = place_lab(&lab, &one, &p.nodes)
        .expect_err("one host is not enough")
        .to_string();
    assert_eq!(e, "spread [phone1, phone2] needs 2 hosts, 1 is up");
}

#[test]
fn a_node_added_to_a_running_together_group_joins_it_and_nothing_moves() {
    let mut p = two_triangles();
    let before = place_indices(&p).expect("fits");
    p.nodes.push(node("new", 500));
    p.hosts[0].memory_mib = 3600;
    p.hosts[1].memory_mib = 3600;
    let partner = 5;
    p.together = vec![vec![partner, 6]];
    p.existing = before.iter().copied().enumerate().collect();
    let after = place_indices(&p).expect("fits");
    assert_eq!(&after[..6], &before[..]);
    assert_eq!(after[6], after[partner]);
}

#[test]
fn an_empty_lab_places_trivially() {
    let p = Problem {
        hosts: vec![host("h1", 1000, 1, &[])],
        ..Problem::default()
    };
    let f = place(&p).expect("nothing to place").figures;
    assert_eq!((f.tunnels, f.hosts["h1"].nodes), (0, 0));
}

fn chain_lab(name: &str, n: usize) -> labspan_proto::lab::Lab {
    let mut text =
        format!("name: {name}\ndefaults: {{image: tiny, memory: 1GiB, cpus: 1}}\nnodes:\n");
    for i in 0..n {
        text += &format!("  n{i}: {{nics: {{eth0: {{}}, eth1: {{}}}}}}\n");
    }
    text += "links:\n";
    for i in 1..n {
        text += &format!("  - [n{}:eth1, n{i}:eth0]\n", i - 1);
    }
    labspan_proto::lab::parse("lab.yaml", &text).expect("valid lab")
}

#[test]
fn several_labs_share_the_hosts_and_a_new_one_moves_nothing() {
    use labspan_coordinator::placement::place_labs;
    let hosts = parse_hosts(
        "hosts:\n  h1: {memory: 8GiB, cpus: 8}\n  h2: {memory: 8GiB, cpus: 8}\n",
        "hosts.yaml",
    )
    .expect("valid hosts");
    let (a, b, c) = (chain_lab("a", 4), chain_lab("b", 4), chain_lab("c", 3));
    let first = place_labs(&[&a, &b], &hosts, &BTreeMap::new()).expect("fits");
    assert_eq!(first.nodes.len(), 8);
    assert!(first.nodes.contains_key("a/n0") && first.nodes.contains_key("b/n3"));
    // Each host holds 6 such guests: each chain fits on one host, no tunnel.
    assert_eq!(first.figures.tunnels, 0);
    let second = place_labs(&[&a, &b, &c], &hosts, &first.nodes).expect("fits");
    for (node, host) in &first.nodes {
        assert_eq!(&second.nodes[node], host, "{node} moved");
    }
    assert!(second.figures.within_capacity());
}

// ---- properties ----

/// A random problem: nodes with mixed sizes, links and small LANs, hosts
/// with labels, and a few hints of every kind.
fn problem() -> impl Strategy<Value = Problem> {
    (2usize..30, 2usize..7)
        .prop_flat_map(|(n, k)| {
            let nodes = prop::collection::vec((1u64..8, 1u64..3), n);
            let hosts = prop::collection::vec((8u64..40, prop::bool::ANY), k);
            let segs =
                prop::collection::vec((prop::collection::vec(0..n, 2..4), 1u64..100), 0..2 * n);
            let pins = prop::collection::vec((0..n, 0..k, prop::bool::ANY), 0..3);
            let groups = prop::collection::vec(prop::collection::vec(0..n, 2..4), 0..3);
            (nodes, hosts, segs, pins, groups.clone(), groups)
        })
        .prop_map(|(nodes, hosts, segs, pins, together, spread)| {
            let hosts: Vec<HostOffer> = hosts
                .iter()
                .enumerate()
                .map(|(i, &(mem, edge))| {
                    host(
                        &format!("h{i}"),
                        mem * 256,
                        8,
                        if edge { &["edge"] } else { &[] },
                    )
                })
                .collect();
            let mut p = Problem {
                nodes: nodes
                    .iter()
                    .enumerate()
                    .map(|(i, &(m, c))| NodeDemand {
                        name: format!("n{i}"),
                        memory_mib: m * 256,
                        vcpus: c,
                    })
                    .collect(),
                segments: segs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (members, w))| SegmentDemand {
                        key: format!("s{i}"),
                        members,
                        weight: w,
                    })
                    .collect(),
                hosts,
                together,
                spread,
                ..Problem::default()
            };
            for (node, h, by_label) in pins {
                let sel = if by_label {
                    HostSelector::Label("edge".into())
                } else {
                    HostSelector::Host(format!("h{h}"))
                };
                p.pins.insert(node, sel);
            }
            p
        })
}

/// Every hint and capacity holds for `a` (host index per node).
fn check_valid(p: &Problem, a: &[usize]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), p.nodes.len());
    prop_assert!(Figures::of(p, a).within_capacity(), "over capacity");
    for (&n, sel) in &p.pins {
        let h = &p.hosts[a[n]];
        match sel {
            HostSelector::Host(name) => prop_assert_eq!(&h.name, name),
            HostSelector::Label(l) => prop_assert!(h.labels.contains(l)),
        }
    }
    for g in &p.together {
        prop_assert!(g.iter().all(|&m| a[m] == a[g[0]]), "together {:?} split", g);
    }
    for g in &p.spread {
        let members: BTreeSet<usize> = g.iter().copied().collect();
        let hosts: BTreeSet<usize> = members.iter().map(|&m| a[m]).collect();
        prop_assert_eq!(hosts.len(), members.len(), "spread {:?} shares a host", g);
    }
    Ok(())
}

/// `p` without host `lost`; `existing` re-indexed, nodes on `lost` dropped.
fn without_host(p: &Problem, a: &[usize], lost: usize) -> Problem {
    let mut q = p.clone();
    q.hosts.remove(lost);
    q.existing = a
        .iter()
        .enumerate()
        .filter(|&(_, &h)| h != lost)
        .map(|(n, &h)| (n, if h > lost { h - 1 } else { h }))
        .collect();
    q
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn placements_respect_capacity_and_hints_and_are_deterministic(p in problem()) {
        if let Ok(a) = place_indices(&p) {
            check_valid(&p, &a)?;
            prop_assert_eq!(place_indices(&p).ok(), Some(a));
        }
    }

    #[test]
    fn adding_nodes_moves_no_running_node(p in problem(), extra in prop::collection::vec(1u64..6, 1..8)) {
        let Ok(before) = place_indices(&p) else { return Ok(()) };
        let mut q = p.clone();
        let n0 = p.nodes.len();
        for (i, m) in extra.iter().enumerate() {
            q.nodes.push(NodeDemand { name: format!("new{i}"), memory_mib: m * 256, vcpus: 1 });
            q.segments.push(SegmentDemand { key: format!("new{i}"), members: vec![n0 + i, i % n0], weight: 100 });
        }
        q.existing = before.iter().copied().enumerate().collect();
        if let Ok(after) = place_indices(&q) {
            check_valid(&q, &after)?;
            prop_assert_eq!(&after[..n0], &before[..]);
        }
    }

    #[test]
    fn losing_a_host_moves_only_its_nodes(p in problem(), lost in 0usize..7) {
        let Ok(before) = place_indices(&p) else { return Ok(()) };
        let lost = lost % p.hosts.len();
        let q = without_host(&p, &before, lost);
        if q.hosts.is_empty() {
            return Ok(());
        }
        if let Ok(after) = place_indices(&q) {
            check_valid(&q, &after)?;
            for (n, &h) in before.iter().enumerate() {
                if h != lost {
                    prop_assert_eq!(after[n], if h > lost { h - 1 } else { h }, "node {} moved", n);
                }
            }
        }
    }
}

#[test]
fn nodes_with_impaired_links_go_only_to_hosts_that_can_impair_them() {
    let mut p = two_triangles();
    p.hosts[0].lacks.insert("netem".into());
    let why = || "link a:eth0--b:eth0 is impaired".to_string();
    for node in [0, 3] {
        p.requires
            .entry(node)
            .or_default()
            .insert("netem".into(), why());
    }
    let placed = place(&p).expect("h2 can impair");
    assert_eq!(placed.nodes["n0"], "h2");
    assert_eq!(placed.nodes["n3"], "h2");

    p.hosts[1].lacks.insert("netem".into());
    let e = place(&p).expect_err("no host has netem").to_string();
    assert!(e.starts_with("node \"n0\": needs netem"), "{e}");
    assert!(
        e.contains("no host that is up has") && e.contains("h1, h2"),
        "{e}"
    );
}
