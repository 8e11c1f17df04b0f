use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn segs(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn register(name: &str) -> Command {
    Command::RegisterHost {
        name: name.into(),
        capacity: Capacity {
            memory_mib: 16384,
            vcpus: 8,
        },
        labels: segs(&["ssd"]),
        vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    }
}

/// The bundle of lab `name` with one node per name in `nodes`.
fn spec(name: &str, nodes: &[&str]) -> Vec<u8> {
    let mut yaml = format!("name: {name}\ndefaults: {{image: tiny}}\nnodes:\n");
    for n in nodes {
        yaml.push_str(&format!("  {n}: {{}}\n"));
    }
    let lab =
        labspan_proto::lab::parse("test lab", &yaml).unwrap_or_else(|d| panic!("{d}\n{yaml}"));
    codec::encode(&LabBundle {
        lab,
        files: BTreeMap::new(),
    })
    .expect("encodes")
}

/// A deploy of lab `name` (one node, `r1`, on `h1`) with `segments`.
fn create(name: &str, segments: &[&str]) -> Command {
    deploy(name, &[("r1", "h1")], segments)
}

fn deploy(name: &str, placement: &[(&str, &str)], segments: &[&str]) -> Command {
    let nodes: Vec<&str> = placement.iter().map(|(n, _)| *n).collect();
    Command::DeployLab {
        name: name.into(),
        spec: spec(name, &nodes),
        segments: segs(segments),
        placement: placement
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect(),
        origin: None,
    }
}

/// A state with host `h1` registered.
fn with_h1() -> ClusterState {
    let mut s = ClusterState::default();
    assert_eq!(s.apply(&register("h1")), Ok(Applied::Done));
    s
}

fn vnis(result: CommandResult) -> BTreeMap<String, u32> {
    match result {
        Ok(Applied::Vnis(v)) => v,
        other => panic!("expected VNIs, got {other:?}"),
    }
}

#[test]
fn vnis_are_lowest_free_from_4096() {
    let mut s = with_h1();
    let a = vnis(s.apply(&create("a", &["l1", "l2"])));
    assert_eq!(
        a,
        BTreeMap::from([("l1".into(), 4096), ("l2".into(), 4097)])
    );
    let b = vnis(s.apply(&create("b", &["x"])));
    assert_eq!(b["x"], 4098);
    // Freed VNIs are reused, lowest first.
    assert_eq!(
        s.apply(&Command::DeleteLab { name: "a".into() }),
        Ok(Applied::Done)
    );
    let c = vnis(s.apply(&create("c", &["p", "q", "r"])));
    assert_eq!(
        c.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([4096, 4097, 4099])
    );
}

#[test]
fn an_edit_keeps_vnis_of_kept_segments_and_is_deploying_again() {
    let mut s = with_h1();
    let before = vnis(s.apply(&create("a", &["l1", "l2", "l3"])));
    let _ = s.apply(&Command::SetLabStatus {
        lab: "a".into(),
        status: LabStatus::Running,
    });
    let update = deploy("a", &[("r1", "h1"), ("r2", "h1")], &["l1", "l3", "l4"]);
    let after = vnis(s.apply(&update));
    assert_eq!(after["l1"], before["l1"]);
    assert_eq!(after["l3"], before["l3"]);
    // l2's VNI was still held while l4 was allocated, so l4 gets the next one.
    assert_eq!(after["l4"], 4099);
    assert!(!s.vni_owners.contains_key(&before["l2"]));
    let rec = &s.labs["a"];
    assert_eq!(rec.status, LabStatus::Deploying);
    assert_eq!(rec.placement.len(), 2);
}

#[test]
fn a_deploy_whose_placement_misses_a_node_changes_nothing() {
    let mut s = with_h1();
    let _ = s.apply(&create("a", &["s"]));
    let before = s.clone();
    let mut cmd = deploy("a", &[("r1", "h1"), ("r2", "h1")], &["s", "t"]);
    if let Command::DeployLab { placement, .. } = &mut cmd {
        placement.remove("r2");
    }
    assert!(matches!(s.apply(&cmd), Err(Rejection::BadPlacement { .. })));
    let bad_spec = Command::DeployLab {
        name: "a".into(),
        spec: b"not a bundle".to_vec(),
        segments: segs(&[]),
        placement: BTreeMap::new(),
        origin: None,
    };
    assert!(matches!(s.apply(&bad_spec), Err(Rejection::BadSpec { .. })));
    assert_eq!(s, before);
}

#[test]
fn a_move_sets_placement_and_deploying_in_one_entry() {
    let mut s = with_h1();
    let _ = s.apply(&register("h2"));
    let _ = s.apply(&deploy("a", &[("r1", "h1"), ("r2", "h1")], &[]));
    let _ = s.apply(&Command::SetLabStatus {
        lab: "a".into(),
        status: LabStatus::Running,
    });
    let placement: BTreeMap<String, String> = [("r1", "h1"), ("r2", "h2")]
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    let moved = segs(&["r2"]);
    let mv = Command::MoveNodes {
        lab: "a".into(),
        placement: placement.clone(),
        moved: moved.clone(),
        restore: BTreeMap::from([("r2".to_string(), "auto-1".to_string())]),
    };
    // Only a node whose host is down moves.
    let before = s.clone();
    assert!(matches!(
        s.apply(&mv),
        Err(Rejection::HostBackUp { node, host, .. }) if node == "r2" && host == "h1"
    ));
    assert_eq!(s, before, "a refused move changes nothing");
    let _ = s.apply(&Command::SetHostUp {
        name: "h1".into(),
        up: false,
    });
    assert_eq!(s.apply(&mv), Ok(Applied::Done));
    assert_eq!(s.labs["a"].placement, placement);
    assert_eq!(s.labs["a"].status, LabStatus::Deploying);
    assert_eq!(s.labs["a"].moving, moved);
    assert_eq!(s.labs["a"].restored_from["r2"], "auto-1");
    let _ = s.apply(&Command::SetLabStatus {
        lab: "a".into(),
        status: LabStatus::Running,
    });
    assert!(s.labs["a"].moving.is_empty(), "a settled lab moves nothing");
    // A move may not add or drop nodes.
    let _ = s.apply(&Command::SetHostUp {
        name: "h2".into(),
        up: false,
    });
    let before = s.clone();
    let short = Command::MoveNodes {
        lab: "a".into(),
        placement: BTreeMap::from([("r1".to_string(), "h2".to_string())]),
        moved: segs(&["r1"]),
        restore: BTreeMap::new(),
    };
    assert!(matches!(
        s.apply(&short),
        Err(Rejection::BadPlacement { .. })
    ));
    assert_eq!(s, before);
}

#[test]
fn same_commands_give_same_state() {
    let cmds = vec![
        register("h1"),
        create("a", &["s"]),
        create("b", &["t", "u"]),
    ];
    let (mut s1, mut s2) = (ClusterState::default(), ClusterState::default());
    for c in &cmds {
        let _ = s1.apply(c);
        let _ = s2.apply(c);
    }
    assert_eq!(s1, s2);
}

#[test]
fn free_vnis_run_out_at_the_end_of_the_range() {
    let mut used = BTreeMap::new();
    used.insert(4097, ("a".to_string(), "s".to_string()));
    assert_eq!(lowest_free_in(&used, 5, 4096, 4099), vec![4096, 4098, 4099]);
    assert_eq!(lowest_free_in(&used, 1, 4096, 4099), vec![4096]);
    assert!(lowest_free_in(&used, 1, 4097, 4097).is_empty());
    assert_eq!(lowest_free(&BTreeMap::new(), 1), vec![FIRST_VNI]);
}

#[test]
fn host_lifecycle() {
    let mut s = ClusterState::default();
    assert_eq!(
        s.apply(&Command::SetHostUp {
            name: "h1".into(),
            up: false
        }),
        Err(Rejection::UnknownHost("h1".into()))
    );
    assert_eq!(s.apply(&register("h1")), Ok(Applied::Done));
    assert!(s.hosts["h1"].up);
    let _ = s.apply(&Command::SetHostUp {
        name: "h1".into(),
        up: false,
    });
    // Re-registering keeps the up/down state: only heartbeats change it.
    let _ = s.apply(&register("h1"));
    assert!(!s.hosts["h1"].up);
    assert!(matches!(
        s.apply(&create("a", &["s"])),
        Ok(Applied::Vnis(_))
    ));
    assert_eq!(
        s.apply(&Command::RemoveHost { name: "h1".into() }),
        Err(Rejection::HostInUse {
            host: "h1".into(),
            lab: "a".into()
        })
    );
    let _ = s.apply(&Command::DeleteLab { name: "a".into() });
    assert_eq!(
        s.apply(&Command::RemoveHost { name: "h1".into() }),
        Ok(Applied::Done)
    );
    assert!(s.hosts.is_empty());
}

#[test]
fn placement_on_unknown_host_is_rejected() {
    let mut s = with_h1();
    let r = s.apply(&deploy("a", &[("r1", "ghost")], &["s"]));
    assert!(matches!(r, Err(Rejection::PlacementOnUnknownHost { .. })));
    assert!(!s.labs.contains_key("a"));
    assert!(s.vni_owners.is_empty());
}

#[test]
fn status_of_unknown_lab_is_rejected() {
    let mut s = ClusterState::default();
    let cmd = Command::SetLabStatus {
        lab: "a".into(),
        status: LabStatus::Running,
    };
    assert_eq!(s.apply(&cmd), Err(Rejection::UnknownLab("a".into())));
    let _ = s.apply(&register("h1"));
    let _ = s.apply(&create("a", &[]));
    assert_eq!(s.apply(&cmd), Ok(Applied::Done));
    assert_eq!(s.labs["a"].status, LabStatus::Running);
}

#[test]
fn state_round_trips_through_the_codec() -> Result<(), labspan_proto::codec::CodecError> {
    let mut s = ClusterState::default();
    let _ = s.apply(&register("h1"));
    let _ = s.apply(&create("a", &["s", "t"]));
    assert!(s.labs.contains_key("a"));
    let bytes = labspan_proto::codec::encode(&s)?;
    assert_eq!(labspan_proto::codec::decode::<ClusterState>(&bytes)?, s);
    Ok(())
}

fn add_token(hash: &str, role: Role, expires_unix: u64) -> Command {
    Command::AddToken {
        hash: hash.into(),
        role,
        expires_unix,
    }
}

fn use_token(hash: &str, name: &str, now_unix: u64) -> Command {
    Command::UseToken {
        hash: hash.into(),
        name: name.into(),
        now_unix,
    }
}

#[test]
fn a_token_is_used_once_before_it_expires() {
    let mut s = ClusterState::default();
    let _ = s.apply(&add_token("t1", Role::Agent, 100));
    let _ = s.apply(&add_token("t2", Role::Agent, 100));
    assert_eq!(
        s.apply(&use_token("nope", "h1", 50)),
        Err(Rejection::UnknownToken)
    );
    assert_eq!(
        s.apply(&use_token("t2", "h1", 101)),
        Err(Rejection::TokenExpired)
    );
    let used = Applied::TokenUsed {
        role: Role::Agent,
        node_id: None,
    };
    assert_eq!(s.apply(&use_token("t1", "h1", 100)), Ok(used));
    let before = s.clone();
    assert_eq!(
        s.apply(&use_token("t1", "h2", 50)),
        Err(Rejection::TokenUsed("h1".into()))
    );
    assert_eq!(s, before, "a refused token changed the state");
}

#[test]
fn coordinator_tokens_reserve_distinct_node_ids_from_2() {
    let mut s = ClusterState::default();
    let _ = s.apply(&add_token("a", Role::Coordinator, 10));
    let _ = s.apply(&add_token("b", Role::Coordinator, 10));
    let ids: Vec<_> = [("a", "c2"), ("b", "c3")]
        .iter()
        .map(|(t, n)| match s.apply(&use_token(t, n, 0)) {
            Ok(Applied::TokenUsed { node_id, .. }) => node_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [Some(2), Some(3)]);
}

#[test]
fn a_revoked_coordinator_is_admitted_again_only_by_a_coordinator_join() {
    let mut s = ClusterState::default();
    let revoke = Command::RevokeCoordinator { name: "c3".into() };
    assert_eq!(s.apply(&revoke), Ok(Applied::Done));
    assert!(s.revoked.contains("c3"));
    // An agent of that name does not lift it.
    let _ = s.apply(&add_token("a", Role::Agent, 10));
    let _ = s.apply(&use_token("a", "c3", 0));
    assert!(s.revoked.contains("c3"));
    let _ = s.apply(&add_token("c", Role::Coordinator, 10));
    let _ = s.apply(&use_token("c", "c3", 0));
    assert!(!s.revoked.contains("c3"));
}

/// Checks that the decoded cache holds exactly the stored labs, each as a
/// fresh decode of its spec gives it.
fn assert_cache_fresh(s: &ClusterState) {
    let cached: BTreeSet<&String> = s.bundles.0.keys().collect();
    let labs: BTreeSet<&String> = s.labs.keys().collect();
    assert_eq!(cached, labs, "the cache holds other labs than the state");
    for (name, rec) in &s.labs {
        let fresh: LabBundle = codec::decode(&rec.spec).expect("a stored spec decodes");
        let c = &s.bundles.0[name];
        assert_eq!(*c.spec, *rec.spec, "lab {name}: cached from another spec");
        assert_eq!(*c.bundle, fresh, "lab {name}: cached bundle differs");
    }
}

mod cache {
    use proptest::prelude::*;

    use super::*;

    const LABS: [&str; 3] = ["a", "b", "c"];
    const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
    const NODES: [&str; 3] = ["r1", "r2", "r3"];

    /// Commands over a few labs, hosts and nodes, valid or not: deploys
    /// and edits (some on unknown hosts, some with a spec that does not
    /// decode or names other nodes than the placement), moves, deletes,
    /// status changes and host changes.
    fn command() -> impl Strategy<Value = Command> {
        let lab = || proptest::sample::select(&LABS[..]);
        let host = || proptest::sample::select(&HOSTS[..]);
        let nodes = || proptest::sample::subsequence(&NODES[..], 1..=3);
        prop_oneof![
            host().prop_map(register),
            (host(), any::<bool>()).prop_map(|(h, up)| Command::SetHostUp { name: h.into(), up }),
            host().prop_map(|h| Command::RemoveHost { name: h.into() }),
            (lab(), nodes(), proptest::collection::vec(host(), 3), 0..4u8).prop_map(
                |(lab, nodes, hosts, how)| {
                    let placement: Vec<(&str, &str)> =
                        nodes.iter().copied().zip(hosts.iter().copied()).collect();
                    let mut cmd = deploy(lab, &placement, &["lan"]);
                    if let Command::DeployLab { spec, .. } = &mut cmd {
                        match how {
                            0 => *spec = b"not a bundle".to_vec(),
                            1 => *spec = super::spec(lab, &NODES),
                            _ => {}
                        }
                    }
                    cmd
                }
            ),
            (lab(), nodes(), host()).prop_map(|(lab, nodes, h)| Command::MoveNodes {
                lab: lab.into(),
                placement: nodes
                    .iter()
                    .map(|n| (n.to_string(), h.to_string()))
                    .collect(),
                moved: nodes.iter().map(|n| n.to_string()).collect(),
                restore: BTreeMap::new(),
            }),
            lab().prop_map(|lab| Command::SetLabStatus {
                lab: lab.into(),
                status: LabStatus::Running
            }),
            lab().prop_map(|lab| Command::DeleteLab { name: lab.into() }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// After any sequence of applies (accepted or refused), and after
        /// a snapshot is written and read, the cache equals a fresh decode
        /// of every stored spec.
        #[test]
        fn the_decoded_cache_equals_a_fresh_decode(cmds in proptest::collection::vec(command(), 1..40)) {
            let mut s = ClusterState::default();
            for cmd in &cmds {
                let _ = s.apply(cmd);
                assert_cache_fresh(&s);
            }
            let bytes = crate::raft::snapshot::write(&s).expect("encodes");
            let read = crate::raft::snapshot::read(&bytes).expect("decodes");
            assert_cache_fresh(&read);
            prop_assert_eq!(read, s);
        }
    }
}

#[test]
fn a_state_built_by_hand_decodes_on_demand() {
    let mut s = with_h1();
    assert_eq!(s.apply(&create("a", &["lan"])).map(|_| ()), Ok(()));
    // Changed behind `apply`: the stale entry is not used.
    if let Some(rec) = s.labs.get_mut("a") {
        rec.spec = spec("a", &["r1", "r2"]);
    }
    let b = s.bundle("a").expect("lab a").expect("decodes");
    assert_eq!(b.lab.nodes.len(), 2);
    assert!(s.bundle("zz").is_none());
}

#[test]
fn a_batch_of_registrations_applies_each_in_order() {
    let regs: Vec<Registration> = ["h1", "h2", "h1"]
        .iter()
        .zip([1024u64, 2048, 4096])
        .map(|(name, memory_mib)| Registration {
            name: name.to_string(),
            capacity: Capacity {
                memory_mib,
                vcpus: 2,
            },
            labels: segs(&["ssd"]),
            vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        })
        .collect();
    let down_and_cordoned = |s: &mut ClusterState| {
        let _ = s.apply(&register("h1"));
        let _ = s.apply(&Command::SetHostUp {
            name: "h1".into(),
            up: false,
        });
        let _ = s.apply(&Command::Cordon {
            name: "h1".into(),
            cordoned: true,
        });
    };
    let mut one_by_one = ClusterState::default();
    down_and_cordoned(&mut one_by_one);
    for r in &regs {
        let cmd = Command::RegisterHost {
            name: r.name.clone(),
            capacity: r.capacity,
            labels: r.labels.clone(),
            vtep: r.vtep,
        };
        assert_eq!(one_by_one.apply(&cmd), Ok(Applied::Done));
    }
    let mut batched = ClusterState::default();
    down_and_cordoned(&mut batched);
    let cmd = Command::RegisterHosts { hosts: regs };
    assert_eq!(batched.apply(&cmd), Ok(Applied::Done));
    assert_eq!(batched, one_by_one);
    // The last registration of h1 wins; it keeps its down mark and cordon.
    let h1 = &batched.hosts["h1"];
    assert_eq!(
        (h1.capacity.memory_mib, h1.up, h1.cordoned),
        (4096, false, true)
    );
    assert!(batched.hosts["h2"].up);
}
