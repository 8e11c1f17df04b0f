//! The schedule of automatic checkpoints and their pruning, over
//! hand-built states.

use std::collections::HashMap;

use labspan_proto::checkpoint::Checkpoint;

use super::{auto_name, due, is_auto, to_prune, AUTO_KEEP};
use crate::raft::{ClusterState, LabRecord, LabStatus, Migration, MovePhase};
use crate::service::fixtures::{host, record as lab_record, spec, state as state_of};

/// Lab "lab" (a on h1, b on h2) with `resilience`.
fn record(resilience: &str) -> LabRecord {
    let yaml =
        format!("name: lab\ndefaults: {{image: tiny}}\nnodes: {{a: {{}}, b: {{}}}}\n{resilience}");
    lab_record(spec(&yaml), &[("a", "h1"), ("b", "h2")], LabStatus::Running)
}

/// "every" checkpoints each 60 s; "never" has no `resilience`.
fn state() -> ClusterState {
    let mut s = state_of(
        &[("h1", host(1, 8, true)), ("h2", host(2, 8, true))],
        Vec::new(),
    );
    s.labs.insert(
        "every".into(),
        record("resilience: {checkpoint_every: 1m}\n"),
    );
    s.labs.insert("never".into(), record(""));
    s.decode_bundles();
    s
}

fn with_checkpoint(s: &mut ClusterState, lab: &str, name: &str, at: u64) {
    let c = Checkpoint {
        name: name.into(),
        created_unix: at,
        ..Checkpoint::default()
    };
    if let Some(rec) = s.labs.get_mut(lab) {
        rec.checkpoints.insert(name.into(), c);
    }
}

#[test]
fn a_lab_without_an_automatic_checkpoint_is_due_at_once() {
    assert_eq!(due(&state(), 1000, &HashMap::new()), ["every"]);
}

#[test]
fn the_next_one_is_due_a_period_after_the_newest_automatic_one() {
    let mut s = state();
    with_checkpoint(&mut s, "every", "auto-a", 1000);
    with_checkpoint(&mut s, "every", "auto-b", 1030);
    // A user's checkpoint does not move the schedule.
    with_checkpoint(&mut s, "every", "mine", 1080);
    assert!(due(&s, 1089, &HashMap::new()).is_empty());
    assert_eq!(due(&s, 1090, &HashMap::new()), ["every"]);
    // A new leader reads the same times: the same answer.
    let mut copy = s.clone();
    copy.decode_bundles();
    assert_eq!(due(&copy, 1090, &HashMap::new()), ["every"]);
}

#[test]
fn a_busy_or_skipped_lab_is_not_due() {
    let busy = |change: &dyn Fn(&mut LabRecord)| {
        let mut s = state();
        if let Some(rec) = s.labs.get_mut("every") {
            change(rec);
        }
        due(&s, 1000, &HashMap::new())
    };
    assert!(busy(&|r| r.status = LabStatus::Deploying).is_empty());
    assert!(busy(&|r| {
        r.checkpoint_op = Some(Box::new(crate::raft::CheckpointOp {
            name: "mine".into(),
            kind: crate::raft::CheckpointOpKind::Create,
        }))
    })
    .is_empty());
    assert!(busy(&|r| {
        r.migration = Some(Box::new(Migration {
            node: "a".into(),
            from: "h1".into(),
            to: "h2".into(),
            phase: MovePhase::Copying,
            port: 1,
        }))
    })
    .is_empty());
    let mut s = state();
    if let Some(h) = s.hosts.get_mut("h2") {
        h.up = false;
    }
    assert!(due(&s, 1000, &HashMap::new()).is_empty());
    let skipped: HashMap<String, u64> = [("every".to_string(), 1060)].into();
    assert!(due(&state(), 1000, &skipped).is_empty());
    assert_eq!(due(&state(), 1060, &skipped), ["every"]);
}

#[test]
fn only_older_automatic_checkpoints_are_pruned() {
    let mut s = state();
    for i in 0..5u64 {
        with_checkpoint(&mut s, "every", &format!("auto-{i}"), 1000 + i * 60);
    }
    with_checkpoint(&mut s, "every", "mine", 900);
    let rec = &s.labs["every"];
    assert_eq!(AUTO_KEEP, 3);
    assert_eq!(to_prune(rec), ["auto-0", "auto-1"]);
}

#[test]
fn automatic_names_say_when() {
    // 2026-11-30T06:48:02Z
    let name = auto_name(1_796_021_282);
    assert_eq!(name, "auto-20261130-064802");
    assert!(is_auto(&name));
    assert!(labspan_proto::names::valid::checkpoint(&name).is_ok());
    assert!(!is_auto("mine"));
}
