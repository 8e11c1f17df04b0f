//! Checkpoint and reset decisions, and their entries, over hand-built states.

use std::collections::{BTreeMap, BTreeSet};

use labspan_proto::checkpoint::{Checkpoint, NodeCheckpoint};
use labspan_proto::msg::ErrorKind;

use super::reset::{check_reset, reset_fetches};
use super::{check_lab, recorded_on, second_host};
use crate::raft::{CheckpointOpKind, ClusterState, Command, LabStatus, Rejection};
use crate::service::fixtures::{host, record, spec, state as state_of};

fn state() -> ClusterState {
    let yaml = "name: lab\ndefaults: {image: tiny, memory: 256MiB, cpus: 1}\nnodes:\n  a: {nics: {eth0: {}}}\n  b: {nics: {eth0: {}}}\nlinks:\n  - [a:eth0, b:eth0]\n";
    let mut s = state_of(
        &[("h1", host(1, 8, true)), ("h2", host(2, 8, true))],
        Vec::new(),
    );
    let placed = [("a", "h1"), ("b", "h2")];
    let rec = record(spec(yaml), &placed, LabStatus::Running);
    s.labs.insert("lab".into(), rec);
    s
}

fn taken(name: &str, on: &[(&str, &str)]) -> Checkpoint {
    Checkpoint {
        name: name.into(),
        nodes: on
            .iter()
            .map(|(n, h)| {
                let share = NodeCheckpoint {
                    host: h.to_string(),
                    ..Default::default()
                };
                (n.to_string(), share)
            })
            .collect(),
        ..Default::default()
    }
}

fn apply(s: &mut ClusterState, cmd: Command) -> Result<(), Rejection> {
    s.apply(&cmd).map(|_| ())
}

fn begin(name: &str, kind: CheckpointOpKind) -> Command {
    Command::BeginCheckpoint {
        lab: "lab".into(),
        name: name.into(),
        kind,
    }
}

#[test]
fn a_running_lab_is_split_by_host() {
    let hosts = check_lab(&state(), "lab", "checkpointed").expect("allowed");
    assert_eq!(hosts["h1"], vec!["a".to_string()]);
    assert_eq!(hosts["h2"], vec!["b".to_string()]);
}

#[test]
fn refusals_name_the_reason() {
    let e = check_lab(&state(), "lba", "checkpointed").expect_err("unknown lab");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("did you mean \"lab\""), "{}", e.message);

    let mut s = state();
    s.labs.get_mut("lab").expect("lab").status = LabStatus::Deploying;
    let e = check_lab(&s, "lab", "checkpointed").expect_err("deploying");
    assert!(e.message.contains("is deploying"), "{}", e.message);

    let mut s = state();
    s.hosts.get_mut("h2").expect("h2").up = false;
    let e = check_lab(&s, "lab", "checkpointed").expect_err("host down");
    assert!(e.message.contains("\"h2\", which is down"), "{}", e.message);

    let mut s = state();
    apply(
        &mut s,
        Command::BeginMove {
            lab: "lab".into(),
            node: "a".into(),
            to: "h2".into(),
            port: 7200,
        },
    )
    .expect("move begins");
    let e = check_lab(&s, "lab", "checkpointed").expect_err("moving");
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("is moving node \"a\""), "{}", e.message);
    let refused = apply(&mut s, begin("c1", CheckpointOpKind::Create)).expect_err("entry refused");
    assert!(matches!(refused, Rejection::MoveInProgress { .. }));
}

#[test]
fn one_operation_at_a_time_and_names_are_unique() {
    let mut s = state();
    apply(&mut s, begin("c1", CheckpointOpKind::Create)).expect("begins");
    let e = check_lab(&s, "lab", "checkpointed").expect_err("busy");
    assert!(
        e.message.contains("is taking checkpoint \"c1\""),
        "{}",
        e.message
    );
    assert!(matches!(
        apply(&mut s, begin("c2", CheckpointOpKind::Create)),
        Err(Rejection::CheckpointInProgress { .. })
    ));
    // No move while a checkpoint is taken.
    let moved = apply(
        &mut s,
        Command::BeginMove {
            lab: "lab".into(),
            node: "a".into(),
            to: "h2".into(),
            port: 7200,
        },
    );
    assert!(matches!(moved, Err(Rejection::CheckpointInProgress { .. })));
    let end = Command::EndCheckpoint {
        lab: "lab".into(),
        checkpoint: Some(Box::new(taken("c1", &[("a", "h1"), ("b", "h2")]))),
    };
    apply(&mut s, end).expect("ends");
    assert!(s.labs["lab"].checkpoint_op.is_none());
    assert!(s.labs["lab"].checkpoints.contains_key("c1"));
    let again = apply(&mut s, begin("c1", CheckpointOpKind::Create)).expect_err("taken");
    assert!(
        again
            .to_string()
            .contains("already has a checkpoint \"c1\""),
        "{again}"
    );
}

#[test]
fn a_failed_checkpoint_records_nothing() {
    let mut s = state();
    apply(&mut s, begin("c1", CheckpointOpKind::Create)).expect("begins");
    let end = Command::EndCheckpoint {
        lab: "lab".into(),
        checkpoint: None,
    };
    apply(&mut s, end.clone()).expect("ends");
    assert!(s.labs["lab"].checkpoints.is_empty());
    assert!(matches!(
        apply(&mut s, end),
        Err(Rejection::NoCheckpointOp(_))
    ));
}

#[test]
fn reset_needs_the_checkpoint_its_nodes_and_their_hosts() {
    let mut s = state();
    let e = check_reset(&s, "lab", "c1").expect_err("none");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("no checkpoint \"c1\""), "{}", e.message);
    assert!(matches!(
        apply(&mut s, begin("c1", CheckpointOpKind::Reset)),
        Err(Rejection::UnknownCheckpoint { .. })
    ));

    let rec = s.labs.get_mut("lab").expect("lab");
    rec.checkpoints
        .insert("c1".into(), taken("c1", &[("a", "h1"), ("b", "h2")]));
    rec.checkpoints
        .insert("old".into(), taken("old", &[("a", "h1")]));
    rec.checkpoints
        .insert("there".into(), taken("there", &[("a", "h2"), ("b", "h2")]));
    let e = check_reset(&s, "lab", "c2").expect_err("typo");
    assert!(e.message.contains("did you mean \"c1\""), "{}", e.message);
    assert_eq!(check_reset(&s, "lab", "c1").expect("fits").len(), 2);
    let e = check_reset(&s, "lab", "old").expect_err("other nodes");
    assert!(e.message.contains("the lab now has"), "{}", e.message);
    // Node a moved since "there": reset from its files on h2, fetched to h1.
    assert_eq!(check_reset(&s, "lab", "there").expect("fetched").len(), 2);
    assert_eq!(
        reset_fetches(&s, "lab", "there"),
        BTreeMap::from([("a".to_string(), ("h1".to_string(), "h2".to_string()))])
    );
    assert!(reset_fetches(&s, "lab", "c1").is_empty());
    // A copy on the node's host is used as it is.
    let rec = s.labs.get_mut("lab").expect("lab");
    let mut copied = taken("copied", &[("a", "h3"), ("b", "h2")]);
    if let Some(a) = copied.nodes.get_mut("a") {
        a.copies.push("h1".into());
    }
    rec.checkpoints.insert("copied".into(), copied);
    assert!(reset_fetches(&s, "lab", "copied").is_empty());
    check_reset(&s, "lab", "copied").expect("its copy is here");
    // Only on a host that is gone: refused.
    let rec = s.labs.get_mut("lab").expect("lab");
    rec.checkpoints
        .insert("gone".into(), taken("gone", &[("a", "h3"), ("b", "h2")]));
    let e = check_reset(&s, "lab", "gone").expect_err("no holder up");
    assert!(
        e.message.contains("no host that is up holds its files"),
        "{}",
        e.message
    );

    apply(&mut s, begin("c1", CheckpointOpKind::Reset)).expect("begins");
    let e = check_reset(&s, "lab", "c1").expect_err("busy");
    assert!(
        e.message.contains("being reset to checkpoint \"c1\""),
        "{}",
        e.message
    );
    let gone = apply(
        &mut s,
        Command::DeleteCheckpoint {
            lab: "lab".into(),
            name: "c1".into(),
        },
    );
    assert!(matches!(gone, Err(Rejection::CheckpointInProgress { .. })));
}

#[test]
fn delete_forgets_one_and_refuses_an_unknown_one() {
    let mut s = state();
    s.labs
        .get_mut("lab")
        .expect("lab")
        .checkpoints
        .insert("c1".into(), taken("c1", &[("a", "h1"), ("b", "h2")]));
    let del = |name: &str| Command::DeleteCheckpoint {
        lab: "lab".into(),
        name: name.into(),
    };
    let e = apply(&mut s, del("c2")).expect_err("unknown");
    assert!(e.to_string().contains("did you mean \"c1\""), "{e}");
    apply(&mut s, del("c1")).expect("deleted");
    assert!(s.labs["lab"].checkpoints.is_empty());
}

#[test]
fn a_copy_goes_to_another_host_of_the_lab_first_then_to_any() {
    let lab_hosts: BTreeSet<String> = ["h1", "h2"].map(String::from).into();
    let up: Vec<String> = ["h1", "h2", "h3"].map(String::from).into();
    let all = |_: &str| true;
    assert_eq!(
        second_host("h1", &lab_hosts, &up, all).as_deref(),
        Some("h2")
    );
    assert_eq!(
        second_host("h2", &lab_hosts, &up, all).as_deref(),
        Some("h1")
    );
    // The lab's other host serves no images: another host, then none.
    let no_h2 = |h: &str| h != "h2";
    assert_eq!(
        second_host("h1", &lab_hosts, &up, no_h2).as_deref(),
        Some("h3")
    );
    let only = vec!["h1".to_string()];
    assert_eq!(second_host("h1", &lab_hosts, &only, all), None);
}

#[test]
fn a_copy_is_recorded_on_its_node_and_planned_to_be_kept() {
    let mut s = state();
    s.labs
        .get_mut("lab")
        .expect("lab")
        .checkpoints
        .insert("c1".into(), taken("c1", &[("a", "h1"), ("b", "h2")]));
    let copied = |name: &str| Command::CheckpointCopied {
        lab: "lab".into(),
        name: name.into(),
        node: "a".into(),
        host: "h3".into(),
    };
    apply(&mut s, copied("c1")).expect("recorded");
    apply(&mut s, copied("c1")).expect("once");
    assert_eq!(s.labs["lab"].checkpoints["c1"].nodes["a"].copies, ["h3"]);
    // A checkpoint deleted meanwhile: nothing to record, nothing fails.
    apply(&mut s, copied("c9")).expect("deleted meanwhile");
    let wanted: BTreeSet<String> = ["h1", "h3"].map(String::from).into();
    let (plans, _) = crate::service::decide::host_plans(&s, &BTreeMap::new(), &wanted);
    assert_eq!(plans["h3"].kept_checkpoints, ["lab"]);
    assert!(plans["h1"].kept_checkpoints.is_empty());
}

#[test]
fn a_lab_a_reset_left_failed_may_be_reset_again_not_checkpointed() {
    let mut s = state();
    let rec = s.labs.get_mut("lab").expect("lab");
    rec.checkpoints
        .insert("c1".into(), taken("c1", &[("a", "h1"), ("b", "h2")]));
    rec.status = LabStatus::Failed {
        reason: "reset to checkpoint \"c1\" failed: host \"h2\": no answer".into(),
    };
    let hosts = check_reset(&s, "lab", "c1").expect("a failed lab is reset again");
    assert_eq!(hosts.len(), 2);
    let e = check_lab(&s, "lab", "checkpointed").expect_err("not checkpointed");
    assert!(e.message.contains("is failed"), "{}", e.message);
    s.labs.get_mut("lab").expect("lab").status = LabStatus::Deploying;
    let e = check_reset(&s, "lab", "c1").expect_err("deploying");
    assert!(e.message.contains("is deploying"), "{}", e.message);
}

#[test]
fn a_host_back_keeps_only_what_is_recorded_on_it() {
    let mut s = state();
    let rec = s.labs.get_mut("lab").expect("lab");
    let mut c1 = taken("c1", &[("a", "h1"), ("b", "h2")]);
    c1.nodes.get_mut("b").expect("b").copies = vec!["h1".into()];
    rec.checkpoints.insert("c1".into(), c1);
    rec.checkpoints
        .insert("c2".into(), taken("c2", &[("a", "h2"), ("b", "h2")]));
    let on_h1 = recorded_on(&s, "h1");
    // Its own share of c1 and its copy of b's; nothing of c2.
    assert_eq!(
        on_h1["lab"],
        BTreeMap::from([("c1".to_string(), vec!["a".to_string(), "b".to_string()])])
    );
    let on_h3 = recorded_on(&s, "h3");
    assert!(on_h3["lab"].is_empty(), "{on_h3:?}");
}
