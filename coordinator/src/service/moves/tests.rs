//! Move decisions over hand-built cluster states.

use std::collections::HashMap;

use labspan_proto::msg::{ErrorKind, MoveSide};

use super::{choose, free_port, verdict, MoveChoice, Verdict, FIRST_MOVE_PORT};
use crate::raft::{ClusterState, Command, LabStatus, MovePhase};
use crate::service::fixtures::{self, host, record, spec};

/// Lab "lab": a -- b -- c in a chain; a on h1, b and c on h3; h2 and h4
/// have room for one more node each, h1 and h3 none.
fn state() -> ClusterState {
    let yaml = "name: lab\ndefaults: {image: tiny, memory: 256MiB, cpus: 1}\nnodes:\n  a: {nics: {eth0: {}}}\n  b: {nics: {eth0: {}, eth1: {}}}\n  c: {nics: {eth0: {}}}\nlinks:\n  - [a:eth0, b:eth0]\n  - [b:eth1, c:eth0]\n";
    let mut s = fixtures::state(
        &[
            ("h1", host(1, 1, true)),
            ("h2", host(2, 1, true)),
            ("h3", host(3, 2, true)),
            ("h4", host(4, 1, true)),
        ],
        Vec::new(),
    );
    let placed = [("a", "h1"), ("b", "h3"), ("c", "h3")];
    let rec = record(spec(yaml), &placed, LabStatus::Running);
    s.labs.insert("lab".into(), rec);
    s
}

fn refused(s: &ClusterState, lab: &str, node: &str, to: Option<&str>) -> (ErrorKind, String) {
    let e = choose(s, &HashMap::new(), lab, node, to).expect_err("refused");
    (e.kind, e.message)
}

#[test]
fn a_named_host_with_room_is_taken() {
    let c = choose(&state(), &HashMap::new(), "lab", "a", Some("h4")).expect("fits");
    assert_eq!(
        c,
        MoveChoice {
            from: "h1".into(),
            to: "h4".into()
        }
    );
}

#[test]
fn placement_prefers_the_host_of_link_peers_then_free_memory() {
    let mut s = state();
    // c's only peer is b on h3, which is full: h2 and h4 tie on peers and
    // room; the lower name wins.
    assert_eq!(
        choose(&s, &HashMap::new(), "lab", "c", None)
            .expect("fits")
            .to,
        "h2"
    );
    // Give h4 room for two: it has more free memory.
    s.hosts.insert("h4".into(), host(4, 2, true));
    assert_eq!(
        choose(&s, &HashMap::new(), "lab", "c", None)
            .expect("fits")
            .to,
        "h4"
    );
    // Room for b next to a on h1: a is b's peer.
    s.hosts.insert("h1".into(), host(1, 2, true));
    assert_eq!(
        choose(&s, &HashMap::new(), "lab", "b", None)
            .expect("fits")
            .to,
        "h1"
    );
}

#[test]
fn bad_moves_are_refused_with_the_reason() {
    let s = state();
    let (kind, m) = refused(&s, "lba", "a", None);
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(m.contains("\"lba\"") && m.contains("lab"), "{m}");
    let (kind, m) = refused(&s, "lab", "aa", None);
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(m.contains("did you mean \"a\""), "{m}");
    let (kind, m) = refused(&s, "lab", "a", Some("h9"));
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(m.contains("no host \"h9\""), "{m}");
    let (_, m) = refused(&s, "lab", "a", Some("h1"));
    assert!(m.contains("already runs on host \"h1\""), "{m}");
    let (_, m) = refused(&s, "lab", "a", Some("h3"));
    assert!(m.contains("no room") && m.contains("needs"), "{m}");

    let mut down = s.clone();
    if let Some(h) = down.hosts.get_mut("h4") {
        h.up = false;
    }
    let (_, m) = refused(&down, "lab", "a", Some("h4"));
    assert!(m.contains("\"h4\" is down"), "{m}");
    let mut cordoned = s.clone();
    if let Some(h) = cordoned.hosts.get_mut("h4") {
        h.cordoned = true;
    }
    let (_, m) = refused(&cordoned, "lab", "a", Some("h4"));
    assert!(m.contains("cordoned") && m.contains("uncordon h4"), "{m}");
    // Placement skips the cordoned host.
    assert_eq!(
        choose(&cordoned, &HashMap::new(), "lab", "a", None)
            .expect("h2 has room")
            .to,
        "h2"
    );
    let mut full = cordoned.clone();
    full.hosts.insert("h2".into(), host(2, 0, true));
    let (_, m) = refused(&full, "lab", "a", None);
    assert!(m.contains("no other host can take node \"a\""), "{m}");
}

#[test]
fn one_move_per_lab_at_a_time_and_its_room_is_held() {
    let mut s = state();
    let begin = Command::BeginMove {
        lab: "lab".into(),
        node: "a".into(),
        to: "h4".into(),
        port: FIRST_MOVE_PORT,
    };
    s.apply(&begin).expect("begins");
    let (kind, m) = refused(&s, "lab", "c", Some("h2"));
    assert_eq!(kind, ErrorKind::Conflict);
    assert!(m.contains("already moving node \"a\""), "{m}");
    // The same intent twice is refused by the state too.
    assert!(s.apply(&begin).is_err());
    assert_eq!(free_port(&s, "h4"), Some(FIRST_MOVE_PORT + 2));
    assert_eq!(free_port(&s, "h2"), Some(FIRST_MOVE_PORT));

    // Rolled back: a stays on h1.
    let before = s.labs["lab"].placement.clone();
    s.apply(&Command::EndMove {
        lab: "lab".into(),
        done: false,
    })
    .expect("ends");
    assert_eq!(s.labs["lab"].placement, before);
    assert!(s.labs["lab"].migration.is_none());
    // Done: a runs on h4, in the same entry that ends the move.
    s.apply(&begin).expect("begins again");
    s.apply(&Command::SetMovePhase {
        lab: "lab".into(),
        phase: MovePhase::Copying,
    })
    .expect("phase");
    s.apply(&Command::EndMove {
        lab: "lab".into(),
        done: true,
    })
    .expect("ends");
    assert_eq!(s.labs["lab"].placement["a"], "h4");
    assert!(s
        .apply(&Command::EndMove {
            lab: "lab".into(),
            done: true
        })
        .is_err());
}

#[test]
fn a_move_to_its_own_host_or_an_unknown_one_is_not_recorded() {
    let mut s = state();
    let before = s.clone();
    for to in ["h1", "nohost"] {
        let r = s.apply(&Command::BeginMove {
            lab: "lab".into(),
            node: "a".into(),
            to: to.into(),
            port: FIRST_MOVE_PORT,
        });
        assert!(r.is_err(), "{to}");
    }
    assert_eq!(s, before);
}

#[test]
fn the_verdict_moves_the_guest_only_once_it_left() {
    use MoveSide::*;
    let copying = MovePhase::Copying;
    // Never asked to migrate: the guest never left.
    assert_eq!(
        verdict(MovePhase::Preparing, Some(Idle), Some(Waiting)),
        Verdict::RollBack
    );
    assert_eq!(
        verdict(copying, Some(Migrating), Some(Waiting)),
        Verdict::Wait
    );
    assert_eq!(
        verdict(copying, Some(Completed), Some(Waiting)),
        Verdict::Done
    );
    // The source's agent is gone (its fence paused the copy): the
    // destination says whether it arrived.
    assert_eq!(verdict(copying, None, Some(Completed)), Verdict::Done);
    assert_eq!(verdict(copying, None, Some(Waiting)), Verdict::RollBack);
    assert_eq!(verdict(copying, Some(Idle), None), Verdict::RollBack);
    assert_eq!(verdict(copying, None, None), Verdict::RollBack);
    assert_eq!(
        verdict(copying, Some(Idle), Some(Absent)),
        Verdict::RollBack
    );
}
