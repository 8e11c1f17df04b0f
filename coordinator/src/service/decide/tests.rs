//! The leader's pure decisions, and the log property they keep: every
//! prefix of a log the leader writes plans every lab it holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use labspan_proto::codec;
use labspan_proto::lab::{parse, LabBundle};
use labspan_proto::msg::{Capabilities, LabOrigin, LabSource, NodeState};
use proptest::prelude::*;

use super::{deploy_command, host_plans, may_replace, node_states};
use crate::plan::HostFabric;
use crate::raft::{Capacity, ClusterState, Command, LabStatus};
use crate::service::recovery;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn register(i: usize) -> Command {
    Command::RegisterHost {
        name: HOSTS[i].into(),
        capacity: Capacity {
            memory_mib: 8192,
            vcpus: 8,
        },
        labels: BTreeSet::new(),
        vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1 + u8::try_from(i).unwrap_or(0))),
    }
}

/// Lab `name` with nodes n0..n`count` in a chain, each `memory` MiB; a
/// `pin` puts n0 on that host.
fn bundle(name: &str, count: usize, memory: u64, pin: Option<&str>) -> (LabBundle, Vec<u8>) {
    let mut yaml =
        format!("name: {name}\ndefaults: {{image: tiny, memory: {memory}MiB, cpus: 1}}\nnodes:\n");
    for n in 0..count {
        yaml.push_str(&format!("  n{n}: {{nics: {{eth0: {{}}, eth1: {{}}}}}}\n"));
    }
    if count > 1 {
        yaml.push_str("links:\n");
        for n in 1..count {
            yaml.push_str(&format!("  - [n{}:eth1, n{n}:eth0]\n", n - 1));
        }
    }
    if let Some(host) = pin {
        yaml.push_str(&format!("placement:\n  pin: {{n0: {host}}}\n"));
    }
    let lab = parse("test lab", &yaml).unwrap_or_else(|d| panic!("{d}\n{yaml}"));
    let bundle = LabBundle {
        lab,
        files: BTreeMap::new(),
    };
    let bytes = codec::encode(&bundle).expect("encodes");
    (bundle, bytes)
}

fn fabrics(state: &ClusterState) -> BTreeMap<String, HostFabric> {
    state
        .hosts
        .iter()
        .map(|(name, h)| {
            let fabric = HostFabric {
                vtep: h.vtep,
                underlay_mtu: 1500,
            };
            (name.clone(), fabric)
        })
        .collect()
}

/// Every lab of `state` that cannot be planned, with why.
fn unplannable(state: &ClusterState) -> BTreeMap<String, String> {
    let all: BTreeSet<String> = state.hosts.keys().cloned().collect();
    host_plans(state, &fabrics(state), &all).1
}

/// What a user or the cluster does next.
#[derive(Debug, Clone)]
enum Intent {
    /// `up` of lab `lab` with `count` nodes of `memory` MiB (an edit when it exists).
    Up {
        lab: usize,
        count: usize,
        memory: u64,
        pin: Option<usize>,
    },
    Down {
        lab: usize,
    },
    HostDown(usize),
    HostUp(usize),
    /// The leader's recovery tick.
    Recover,
}

fn intent() -> impl Strategy<Value = Intent> {
    prop_oneof![
        4 => (0..3usize, 1..5usize, prop_oneof![Just(256u64), Just(1024), Just(3072)], proptest::option::of(0..3usize))
            .prop_map(|(lab, count, memory, pin)| Intent::Up { lab, count, memory, pin }),
        1 => (0..3usize).prop_map(|lab| Intent::Down { lab }),
        1 => (0..3usize).prop_map(Intent::HostDown),
        1 => (0..3usize).prop_map(Intent::HostUp),
        2 => Just(Intent::Recover),
    ]
}

/// The log entries the leader writes for `intent` over `state`, in order,
/// with the status each settle records (every deploy or move settles).
fn entries(state: &ClusterState, intent: &Intent) -> Vec<Command> {
    match intent {
        Intent::Up {
            lab,
            count,
            memory,
            pin,
        } => {
            let name = format!("lab{lab}");
            let (bundle, bytes) = bundle(&name, *count, *memory, pin.map(|p| HOSTS[p]));
            match deploy_command(state, &HashMap::new(), &bundle, bytes, None) {
                Ok(cmd) => vec![cmd, settled(&name)],
                Err(_) => vec![], // Refused before anything is written.
            }
        }
        Intent::Down { lab } => vec![Command::DeleteLab {
            name: format!("lab{lab}"),
        }],
        Intent::HostDown(h) | Intent::HostUp(h) => vec![Command::SetHostUp {
            name: HOSTS[*h].into(),
            up: matches!(intent, Intent::HostUp(_)),
        }],
        Intent::Recover => recovery::decide(state, &HashMap::new())
            .iter()
            .flat_map(|step| {
                let lab = match step {
                    recovery::Recovery::Move { lab, .. }
                    | recovery::Recovery::Strand { lab, .. }
                    | recovery::Recovery::Restore { lab }
                    | recovery::Recovery::MakeRoom { lab, .. } => lab.clone(),
                };
                step.command().into_iter().chain([settled(&lab)])
            })
            .collect(),
    }
}

fn settled(lab: &str) -> Command {
    Command::SetLabStatus {
        lab: lab.into(),
        status: LabStatus::Running,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the leader writes, and wherever the log is cut (a leader
    /// dying between two entries), every lab in the state can be planned:
    /// no lab is ever left out of its hosts' plans (which would stop its VMs).
    #[test]
    fn no_prefix_of_the_log_plans_a_lab_that_cannot_be_planned(
        intents in proptest::collection::vec(intent(), 1..24)
    ) {
        let mut state = ClusterState::default();
        for i in 0..HOSTS.len() {
            prop_assert!(state.apply(&register(i)).is_ok());
        }
        let mut log = Vec::new();
        for intent in &intents {
            for cmd in entries(&state, intent) {
                // Rejected entries are committed too; they change nothing.
                let _ = state.apply(&cmd);
                log.push(cmd);
                let bad = unplannable(&state);
                prop_assert!(bad.is_empty(), "after {} entries: {bad:?}; log: {log:#?}", log.len());
            }
        }
        // Replaying any prefix from scratch gives the same plannable states.
        let mut replay = ClusterState::default();
        for i in 0..HOSTS.len() {
            let _ = replay.apply(&register(i));
        }
        for cmd in &log {
            let _ = replay.apply(cmd);
            prop_assert!(unplannable(&replay).is_empty());
        }
        prop_assert_eq!(replay, state);
    }
}

#[test]
fn a_deploy_is_one_entry_with_every_node_placed_and_deploying() {
    let mut state = ClusterState::default();
    let _ = state.apply(&register(0));
    let (b, bytes) = bundle("one", 3, 256, None);
    let cmd = deploy_command(&state, &HashMap::new(), &b, bytes, None).expect("placed");
    let Command::DeployLab { placement, .. } = &cmd else {
        panic!("{cmd:?}");
    };
    assert_eq!(placement.len(), 3);
    assert!(state.apply(&cmd).is_ok());
    assert_eq!(state.labs["one"].status, LabStatus::Deploying);
    assert!(unplannable(&state).is_empty());
}

fn origin(member: &str, file: &str) -> LabOrigin {
    LabOrigin {
        member: member.into(),
        source: LabSource {
            file: file.into(),
            host: "laptop".into(),
        },
        deployed_unix: 1_800_000_000,
    }
}

#[test]
fn only_the_same_member_and_file_replace_a_lab_without_asking() {
    let first = origin("alice", "/home/alice/ping.yaml");
    assert_eq!(may_replace("ping", None, &first, false), Ok(()));
    assert_eq!(may_replace("ping", Some(&first), &first, false), Ok(()));
    let other_file = origin("alice", "/home/alice/other.yaml");
    let why = may_replace("ping", Some(&first), &other_file, false).expect_err("refused");
    assert!(
        why.contains("alice") && why.contains("laptop:/home/alice/ping.yaml"),
        "{why}"
    );
    assert!(why.contains("2027-01-15T08:00:00Z"), "{why}");
    assert!(why.contains("--replace"), "{why}");
    let other_member = origin("bob", "/home/alice/ping.yaml");
    assert!(may_replace("ping", Some(&first), &other_member, false).is_err());
    assert_eq!(
        may_replace("ping", Some(&first), &other_member, true),
        Ok(())
    );
}

#[test]
fn nodes_on_a_lost_host_are_lost_and_moving_nodes_say_so() {
    let mut state = ClusterState::default();
    for i in 0..3 {
        let _ = state.apply(&register(i));
    }
    let (b, bytes) = bundle("chain", 3, 256, None);
    let _ = state.apply(&deploy_command(&state, &HashMap::new(), &b, bytes, None).expect("placed"));
    let _ = state.apply(&settled("chain"));
    let rec = state.labs["chain"].clone();
    assert!(node_states(&state, &rec)
        .values()
        .all(|s| *s == NodeState::Running));
    let lost_host = rec.placement["n1"].clone();
    let _ = state.apply(&Command::SetHostUp {
        name: lost_host.clone(),
        up: false,
    });
    let states = node_states(&state, &rec);
    for (node, host) in &rec.placement {
        let want = if *host == lost_host {
            NodeState::Lost
        } else {
            NodeState::Running
        };
        assert_eq!(states[node], want, "{node} on {host}");
    }
    for step in recovery::decide(&state, &HashMap::new()) {
        if let Some(cmd) = step.command() {
            assert!(state.apply(&cmd).is_ok(), "{cmd:?}");
        }
    }
    let rec = &state.labs["chain"];
    let states = node_states(&state, rec);
    assert_eq!(states["n1"], NodeState::Moving, "{states:?}");
    assert!(rec.moving.contains("n1"));
    for (node, host) in &rec.placement {
        if !rec.moving.contains(node) {
            assert_eq!(
                states[node],
                NodeState::Running,
                "{node} on {host} keeps running"
            );
        }
    }
}

#[test]
fn a_lab_with_an_unplaced_node_is_reported_unplannable() {
    let mut state = ClusterState::default();
    let _ = state.apply(&register(0));
    let (b, bytes) = bundle("two", 2, 256, None);
    let _ = state.apply(&deploy_command(&state, &HashMap::new(), &b, bytes, None).expect("placed"));
    assert!(unplannable(&state).is_empty());
    // What three separate writes left behind when the leader died between them.
    if let Some(rec) = state.labs.get_mut("two") {
        rec.placement.remove("n1");
    }
    assert!(unplannable(&state).contains_key("two"));
}

/// What a host's agent said it can do: everything, or no netem.
fn can(netem: bool) -> Capabilities {
    Capabilities {
        netem,
        tbf: true,
        vxlan: true,
        kvm: None,
    }
}

#[test]
fn a_delayed_link_goes_only_to_hosts_with_netem_and_is_refused_when_none_has_it() {
    let mut state = ClusterState::default();
    for i in 0..3 {
        let _ = state.apply(&register(i));
    }
    let yaml = "name: slow\ndefaults: {image: tiny, memory: 256MiB, cpus: 1}\n\
                nodes:\n  a: {nics: {eth0: {}}}\n  b: {nics: {eth0: {}}}\n\
                links:\n  - {endpoints: [a:eth0, b:eth0], delay: 10ms}\n";
    let lab = parse("test lab", yaml).unwrap_or_else(|d| panic!("{d}"));
    let b = LabBundle {
        lab,
        files: BTreeMap::new(),
    };
    let bytes = codec::encode(&b).expect("encodes");

    let only_h3: HashMap<String, Capabilities> =
        [("h1", can(false)), ("h2", can(false)), ("h3", can(true))]
            .into_iter()
            .map(|(h, c)| (h.to_string(), c))
            .collect();
    let cmd = deploy_command(&state, &only_h3, &b, bytes.clone(), None).expect("placed");
    let Command::DeployLab { placement, .. } = &cmd else {
        panic!("{cmd:?}");
    };
    assert!(placement.values().all(|h| h == "h3"), "{placement:?}");

    let none: HashMap<String, Capabilities> =
        HOSTS.iter().map(|h| (h.to_string(), can(false))).collect();
    let refused = deploy_command(&state, &none, &b, bytes, None).expect_err("no host has netem");
    assert!(refused.contains("netem"), "{refused}");
}

/// A lab for the offers property: its nodes (memory MiB, vCPUs, host
/// index), and the host its first node may be on its way to (a live move).
type ShapedLab = (Vec<(u64, u32, usize)>, Option<usize>);

/// A state for the offers property: `hosts` hosts (up, cordoned) and `labs`.
fn offers_state(hosts: &[(bool, bool)], labs: &[ShapedLab]) -> ClusterState {
    let mut state = ClusterState::default();
    for (i, (up, cordoned)) in hosts.iter().enumerate() {
        let name = format!("h{i}");
        let mut host = crate::service::fixtures::host(u8::try_from(i + 1).unwrap_or(1), 8, *up);
        host.cordoned = *cordoned;
        state.hosts.insert(name, host);
    }
    for (l, (nodes, moving_to)) in labs.iter().enumerate() {
        let name = format!("lab{l}");
        let mut yaml = format!("name: {name}\nnodes:\n");
        for (n, (memory, cpus, _)) in nodes.iter().enumerate() {
            yaml.push_str(&format!(
                "  n{n}: {{image: tiny, memory: {memory}MiB, cpus: {cpus}}}\n"
            ));
        }
        let placement: Vec<(String, String)> = (nodes.iter().enumerate())
            .map(|(n, (_, _, h))| (format!("n{n}"), format!("h{}", h % hosts.len())))
            .collect();
        let placement: Vec<(&str, &str)> = (placement.iter())
            .map(|(n, h)| (n.as_str(), h.as_str()))
            .collect();
        let spec = crate::service::fixtures::spec(&yaml);
        let mut rec = crate::service::fixtures::record(spec, &placement, LabStatus::Running);
        rec.migration = moving_to.map(|to| {
            Box::new(crate::raft::Migration {
                node: "n0".into(),
                from: rec.placement["n0"].clone(),
                to: format!("h{}", to % hosts.len()),
                phase: crate::raft::MovePhase::Copying,
                port: 7200,
            })
        });
        state.labs.insert(name, rec);
    }
    state.decode_bundles();
    state
}

fn offers_labs() -> impl Strategy<Value = Vec<ShapedLab>> {
    let node = (
        prop_oneof![Just(256u64), Just(512), Just(1024)],
        1..3u32,
        0..4usize,
    );
    proptest::collection::vec(
        (
            proptest::collection::vec(node, 1..4),
            proptest::option::of(0..4usize),
        ),
        1..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The offers recovery reads from what each lab takes, counted once
    /// (`InUse`) and adjusted for one candidate move, are the offers read
    /// from every lab of the state after that move; and so they stay once
    /// a lab's placement changes and is counted again.
    #[test]
    fn offers_counted_once_are_offers_read_from_every_lab(
        hosts in proptest::collection::vec((proptest::bool::weighted(0.8), proptest::bool::weighted(0.2)), 1..5),
        labs in offers_labs(),
        lab in 0..6usize,
        owner in 0..6usize,
        node in 0..4usize,
        to in 0..5usize,
        no_netem in proptest::option::of(0..5usize),
    ) {
        let state = offers_state(&hosts, &labs);
        let capabilities: HashMap<String, Capabilities> =
            no_netem.map(|h| (format!("h{h}"), can(false))).into_iter().collect();
        let in_use = super::InUse::of(&state);
        // A stored lab, or (past the last) one not stored.
        let lab = if lab < labs.len() { format!("lab{lab}") } else { String::new() };
        let placement = state.labs.get(&lab).map(|r| r.placement.clone()).unwrap_or_default();
        prop_assert_eq!(
            super::offers_from(&state, &lab, &placement, &capabilities, &in_use, None),
            super::offers(&state, &lab, &capabilities)
        );
        // One node of lab `owner` moved to host `to`.
        let owner = format!("lab{}", owner % labs.len());
        let node = format!("n{}", node % state.labs[&owner].placement.len());
        let to = format!("h{}", to % hosts.len());
        let from = state.labs[&owner].placement[&node].clone();
        let bundle = state.bundle(&owner).expect("stored").expect("decodes");
        let spec = &bundle.lab.nodes[&node];
        let moved = super::MovedVm {
            lab: &owner,
            from: &from,
            to: &to,
            memory_mib: crate::placement::vm_memory_mib(spec.memory_mib, u64::from(spec.cpus)),
            vcpus: u64::from(spec.cpus),
        };
        let mut after = state.clone();
        if let Some(h) = after.labs.get_mut(&owner).and_then(|r| r.placement.get_mut(&node)) {
            h.clone_from(&to);
        }
        let placement = after.labs.get(&lab).map(|r| r.placement.clone()).unwrap_or_default();
        prop_assert_eq!(
            super::offers_from(&state, &lab, &placement, &capabilities, &in_use, Some(&moved)),
            super::offers(&after, &lab, &capabilities)
        );
        // The move recorded, and the owner counted again.
        let mut recounted = in_use.clone();
        recounted.recount(&after, &owner);
        prop_assert_eq!(
            super::offers_from(&after, &lab, &placement, &capabilities, &recounted, None),
            super::offers(&after, &lab, &capabilities)
        );
    }
}
