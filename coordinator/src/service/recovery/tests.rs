//! The host-loss decision over hand-built cluster states.

use std::collections::HashMap;

use super::{decide, Recovery};
use crate::raft::{ClusterState, LabStatus, Migration, MovePhase};
use crate::service::fixtures::{host, record, spec, state};

/// A lab of `nodes` (256 MiB, 1 vCPU each) in a chain, with `extra` YAML.
fn lab(name: &str, nodes: &[&str], extra: &str) -> Vec<u8> {
    let mut yaml =
        format!("name: {name}\ndefaults: {{image: tiny, memory: 256MiB, cpus: 1}}\nnodes:\n");
    for n in nodes {
        yaml.push_str(&format!("  {n}: {{nics: {{eth0: {{}}, eth1: {{}}}}}}\n"));
    }
    yaml.push_str("links:\n");
    for pair in nodes.windows(2) {
        yaml.push_str(&format!("  - [{}:eth1, {}:eth0]\n", pair[0], pair[1]));
    }
    yaml.push_str(extra);
    spec(&yaml)
}

fn three_nodes_on_three_hosts(h2_up: bool) -> ClusterState {
    state(
        &[
            ("h1", host(1, 2, true)),
            ("h2", host(2, 2, h2_up)),
            ("h3", host(3, 2, true)),
        ],
        vec![(
            "chain",
            record(
                lab("chain", &["a", "b", "c"], ""),
                &[("a", "h1"), ("b", "h2"), ("c", "h3")],
                LabStatus::Running,
            ),
        )],
    )
}

#[test]
fn nothing_to_do_while_every_host_is_up() {
    assert_eq!(
        decide(&three_nodes_on_three_hosts(true), &HashMap::new()),
        vec![]
    );
}

#[test]
fn a_host_loss_moves_only_that_hosts_nodes() {
    let steps = decide(&three_nodes_on_three_hosts(false), &HashMap::new());
    let [Recovery::Move {
        lab,
        placement,
        moved,
    }] = steps.as_slice()
    else {
        panic!("one move expected: {steps:?}");
    };
    assert_eq!(lab, "chain");
    assert_eq!(placement["a"], "h1");
    assert_eq!(placement["c"], "h3");
    assert!(
        ["h1", "h3"].contains(&placement["b"].as_str()),
        "{placement:?}"
    );
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved["b"].0, "h2");
}

#[test]
fn a_node_pinned_to_the_lost_host_degrades_the_lab_once() {
    let mut s = three_nodes_on_three_hosts(false);
    let spec = lab("chain", &["a", "b", "c"], "placement:\n  pin: {b: h2}\n");
    s.labs.get_mut("chain").expect("lab").spec = spec;
    let steps = decide(&s, &HashMap::new());
    let [Recovery::Strand { lab, reason }] = steps.as_slice() else {
        panic!("one strand expected: {steps:?}");
    };
    assert_eq!(lab, "chain");
    assert!(
        reason.starts_with("node \"b\" has no host (host \"h2\" down): "),
        "{reason}"
    );
    assert!(reason.contains("pinned"), "{reason}");
    // Recorded: nothing more to do, and the placement was never touched.
    s.labs.get_mut("chain").expect("lab").status = LabStatus::Degraded {
        reason: reason.clone(),
    };
    assert_eq!(decide(&s, &HashMap::new()), vec![]);
}

#[test]
fn full_hosts_degrade_the_lab_and_change_nothing_else() {
    let s = state(
        &[("h1", host(1, 1, true)), ("h2", host(2, 1, false))],
        vec![(
            "duo",
            record(
                lab("duo", &["a", "b"], ""),
                &[("a", "h1"), ("b", "h2")],
                LabStatus::Running,
            ),
        )],
    );
    let steps = decide(&s, &HashMap::new());
    assert!(
        matches!(steps.as_slice(), [Recovery::Strand { lab, reason }]
            if lab == "duo" && reason.starts_with("node \"b\" has no host")),
        "{steps:?}"
    );
}

#[test]
fn two_labs_never_count_on_the_same_free_room() {
    // h2 held one node of each lab; h1 has room for one more guest only.
    let s = state(
        &[("h1", host(1, 3, true)), ("h2", host(2, 2, false))],
        vec![
            (
                "l1",
                record(
                    lab("l1", &["a", "b"], ""),
                    &[("a", "h1"), ("b", "h2")],
                    LabStatus::Running,
                ),
            ),
            (
                "l2",
                record(
                    lab("l2", &["a", "b"], ""),
                    &[("a", "h1"), ("b", "h2")],
                    LabStatus::Running,
                ),
            ),
        ],
    );
    let steps = decide(&s, &HashMap::new());
    assert!(
        matches!(steps.as_slice(), [Recovery::Move { lab: l1, .. }, Recovery::Strand { lab: l2, .. }]
            if l1 == "l1" && l2 == "l2"),
        "{steps:?}"
    );
}

#[test]
fn a_degraded_lab_whose_host_is_back_is_restored() {
    let mut s = three_nodes_on_three_hosts(true);
    s.labs.get_mut("chain").expect("lab").status = LabStatus::Degraded {
        reason: "node \"b\" has no host".into(),
    };
    assert_eq!(
        decide(&s, &HashMap::new()),
        vec![Recovery::Restore {
            lab: "chain".into()
        }]
    );
}

#[test]
fn a_lab_being_deleted_is_left_alone() {
    let mut s = three_nodes_on_three_hosts(false);
    s.labs.get_mut("chain").expect("lab").status = LabStatus::Deleting;
    assert_eq!(decide(&s, &HashMap::new()), vec![]);
}

#[test]
fn a_lab_with_a_live_move_in_flight_waits_for_its_end() {
    // A move copies without the lab lock: recovery must not re-place the
    // lab while its node is held on two hosts, whichever host was lost.
    let mut s = three_nodes_on_three_hosts(false);
    s.labs.get_mut("chain").expect("lab").migration = Some(Box::new(Migration {
        node: "a".into(),
        from: "h1".into(),
        to: "h3".into(),
        phase: MovePhase::Copying,
        port: 7200,
    }));
    assert_eq!(decide(&s, &HashMap::new()), vec![]);
    s.labs.get_mut("chain").expect("lab").migration = None;
    assert_eq!(decide(&s, &HashMap::new()).len(), 1);
}

#[test]
fn room_in_pieces_is_joined_by_a_live_move_then_the_lost_node_placed() {
    // h1 and h2 each run one 256 MiB node of "small" and have room for one
    // more; "big"'s 512 MiB node ran on h3, which is down. It fits on
    // neither host as they are, but on either once the other's node moves.
    let big = spec("name: big\nnodes:\n  x: {image: tiny, memory: 512MiB, cpus: 1}\n");
    let mut s = state(
        &[
            ("h1", host(1, 2, true)),
            ("h2", host(2, 2, true)),
            ("h3", host(3, 2, false)),
        ],
        vec![
            ("big", record(big, &[("x", "h3")], LabStatus::Running)),
            (
                "small",
                record(
                    lab("small", &["s1", "s2"], ""),
                    &[("s1", "h1"), ("s2", "h2")],
                    LabStatus::Running,
                ),
            ),
        ],
    );
    s.decode_bundles();
    let steps = decide(&s, &HashMap::new());
    let [Recovery::MakeRoom {
        lab,
        owner,
        node,
        from,
        to,
    }] = steps.as_slice()
    else {
        panic!("one live move to make room expected: {steps:?}");
    };
    assert_eq!((lab.as_str(), owner.as_str()), ("big", "small"));
    assert_eq!(s.labs["small"].placement[node], *from);
    assert_ne!(to, "h3", "a move onto the down host");

    // Once the move is done, the lost node goes where the room was made,
    // and nothing else moves.
    s.labs
        .get_mut("small")
        .and_then(|r| r.placement.get_mut(node))
        .map(|h| *h = to.clone())
        .expect("the moved node");
    let steps = decide(&s, &HashMap::new());
    let [Recovery::Move {
        lab,
        placement,
        moved,
    }] = steps.as_slice()
    else {
        panic!("the lost node placed expected: {steps:?}");
    };
    assert_eq!(lab, "big");
    assert_eq!(placement["x"], *from);
    assert_eq!(moved.len(), 1, "{moved:?}");
}

#[test]
fn no_live_move_when_none_makes_room() {
    // Every host is full: moving a node only trades places.
    let s = state(
        &[
            ("h1", host(1, 1, true)),
            ("h2", host(2, 1, true)),
            ("h3", host(3, 1, false)),
        ],
        vec![(
            "chain",
            record(
                lab("chain", &["a", "b", "c"], ""),
                &[("a", "h1"), ("b", "h2"), ("c", "h3")],
                LabStatus::Running,
            ),
        )],
    );
    let steps = decide(&s, &HashMap::new());
    assert!(
        matches!(steps.as_slice(), [Recovery::Strand { lab, .. }] if lab == "chain"),
        "{steps:?}"
    );
}
