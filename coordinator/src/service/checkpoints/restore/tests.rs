//! Which checkpoint a lost host's nodes restart from, and where each
//! one's files come from, over hand-built states.

use std::collections::BTreeMap;

use labspan_proto::checkpoint::{Checkpoint, NodeCheckpoint};

use super::{choose, Choice, Source};
use crate::raft::{ClusterState, LabStatus};
use crate::service::fixtures::{host, record, spec, state as state_of};

/// Lab "lab" (a on h1, b on h2) with or without `resilience`; h1 is down.
fn state(resilience: &str) -> ClusterState {
    let yaml =
        format!("name: lab\ndefaults: {{image: tiny}}\nnodes: {{a: {{}}, b: {{}}}}\n{resilience}");
    let hosts = [
        ("h1", host(1, 8, false)),
        ("h2", host(2, 8, true)),
        ("h3", host(3, 8, true)),
    ];
    let placed = [("a", "h1"), ("b", "h2")];
    let mut s = state_of(
        &hosts,
        vec![("lab", record(spec(&yaml), &placed, LabStatus::Running))],
    );
    s.decode_bundles();
    s
}

const EVERY: &str = "resilience: {checkpoint_every: 1m}\n";

/// Checkpoint `name` taken at `at`, holding a on h1 with copies `a_copies`
/// and b on h2.
fn add(s: &mut ClusterState, name: &str, at: u64, a_copies: &[&str]) {
    let share = |host: &str, copies: &[&str]| NodeCheckpoint {
        host: host.into(),
        copies: copies.iter().map(|c| c.to_string()).collect(),
        ..NodeCheckpoint::default()
    };
    let c = Checkpoint {
        name: name.into(),
        created_unix: at,
        nodes: BTreeMap::from([
            ("a".to_string(), share("h1", a_copies)),
            ("b".to_string(), share("h2", &["h1"])),
        ]),
        ..Checkpoint::default()
    };
    if let Some(rec) = s.labs.get_mut("lab") {
        rec.checkpoints.insert(name.into(), c);
    }
}

fn a_to(host: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("a".to_string(), host.to_string())])
}

#[test]
fn a_lab_that_does_not_ask_boots_its_nodes() {
    let mut s = state("");
    add(&mut s, "c1", 100, &["h2"]);
    assert_eq!(choose(&s, "lab", &a_to("h2")), Ok(None));
}

#[test]
fn the_latest_checkpoint_with_a_copy_that_is_up_is_chosen() {
    let mut s = state(EVERY);
    add(&mut s, "auto-1", 100, &["h2"]);
    add(&mut s, "mine", 200, &["h3"]);
    // Its copy is on the new host: nothing to fetch.
    let here = choose(&s, "lab", &a_to("h3")).expect("usable");
    assert_eq!(
        here,
        Some(Choice {
            checkpoint: "mine".into(),
            sources: BTreeMap::from([("a".to_string(), Source::Here)]),
        })
    );
    // Elsewhere: fetched from the copy, never from the lost host.
    let fetched = choose(&s, "lab", &a_to("h2")).expect("usable");
    assert_eq!(
        fetched.map(|c| (c.checkpoint, c.sources)),
        Some((
            "mine".to_string(),
            BTreeMap::from([("a".to_string(), Source::From("h3".into()))])
        ))
    );
}

#[test]
fn a_newer_checkpoint_without_a_copy_that_is_up_is_passed_over() {
    let mut s = state(EVERY);
    add(&mut s, "auto-1", 100, &["h2"]);
    add(&mut s, "auto-2", 200, &[]);
    let c = choose(&s, "lab", &a_to("h3")).expect("usable");
    assert_eq!(
        c.map(|c| (c.checkpoint, c.sources)),
        Some((
            "auto-1".to_string(),
            BTreeMap::from([("a".to_string(), Source::From("h2".into()))])
        ))
    );
}

#[test]
fn no_usable_checkpoint_says_why() {
    let s = state(EVERY);
    assert_eq!(
        choose(&s, "lab", &a_to("h2")),
        Err("the lab has no checkpoint yet".to_string())
    );
    let mut s = state(EVERY);
    add(&mut s, "auto-1", 100, &[]);
    let why = choose(&s, "lab", &a_to("h2")).expect_err("only on the lost host");
    assert!(why.contains("on a host that is up"), "{why}");
}
