//! The network diff, without a kernel: which actions a plan and an observed
//! host give, and what the fake host looks like after them.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

mod net_support;

use std::collections::BTreeSet;

use labspan_agent::net::{
    self, desired_links, diff, removal, Action, FakeNet, Link, LinkKind, NetError,
};
use labspan_proto::lab::Impairment;
use labspan_proto::names;
use labspan_proto::plan::HostPlan;
use net_support::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The host after reconciling `plan` from an empty one.
fn built(plan: &HostPlan) -> FakeNet {
    let mut fake = FakeNet::default();
    block_on(net::reconcile_with(&mut fake, plan)).expect("reconcile");
    fake
}

fn actions(plan: &HostPlan, host: &FakeNet) -> Vec<Action> {
    let observed: Vec<Link> = host.links.values().cloned().collect();
    diff(&desired_links(plan).expect("plan"), &observed).expect("diff")
}

fn bridge(seg: &str) -> String {
    names::bridge("t", seg)
}

fn tap(vm: &str, nic: &str) -> String {
    names::tap("t", vm, nic)
}

fn foreign(name: &str, kind: LinkKind) -> Link {
    let mut l = Link::fresh(name, kind, "", 1500);
    l.alias = None;
    l
}

#[test]
fn an_empty_host_gets_bridges_then_taps_each_fully_set_up() {
    let plan = host(vec![two_segments("t")]);
    let got = actions(&plan, &FakeNet::default());
    let (b1, b2, a0, b0, b_1) = (
        bridge("s1"),
        bridge("s2"),
        tap("a", "eth0"),
        tap("b", "eth0"),
        tap("b", "eth1"),
    );
    let create = |name: &str, kind: LinkKind, what: &str, mtu| Action::Create {
        name: name.to_string(),
        kind,
        alias: names::alias("t", what),
        mtu,
    };
    let master = |name: &str, m: &str| Action::SetMaster {
        name: name.to_string(),
        master: Some(m.to_string()),
    };
    let up = |name: &str| Action::SetUp {
        name: name.to_string(),
        up: true,
    };
    let want = vec![
        create(&b1, LinkKind::Bridge, "segment s1", 1450),
        up(&b1),
        create(&b2, LinkKind::Bridge, "segment s2", 1400),
        up(&b2),
        create(&a0, LinkKind::Tap, "tap a.eth0", 1450),
        master(&a0, &b1),
        up(&a0),
        create(&b0, LinkKind::Tap, "tap b.eth0", 1450),
        master(&b0, &b1),
        up(&b0),
        create(&b_1, LinkKind::Tap, "tap b.eth1", 1400),
        master(&b_1, &b2),
        up(&b_1),
    ];
    assert_eq!(got, want);
}

#[test]
fn applying_the_same_plan_twice_does_nothing_the_second_time() {
    let mut l = two_segments("t");
    vx_segment(&mut l, "s3", 1450, 100, ip(0, 1), &[ip(0, 2), ip(0, 3)]);
    vm(&mut l, "c", &[("eth0", Some("s3")), ("eth1", None)]);
    l.vms[2].nics[0].impairment = Impairment {
        delay_us: Some(5000),
        ..Default::default()
    };
    let plan = host(vec![l]);
    let mut fake = built(&plan);
    let again = block_on(net::reconcile_with(&mut fake, &plan)).expect("second reconcile");
    assert_eq!(again.actions, vec![]);
    assert_eq!(
        fake.links.len(),
        3 + 1 + 5,
        "3 bridges, 1 VXLAN device, 5 taps"
    );
}

#[test]
fn a_vxlan_segment_gets_a_device_on_its_bridge_with_one_fdb_entry_per_remote() {
    let mut l = lab("t");
    vx_segment(&mut l, "s", 1450, 4242, ip(0, 1), &[ip(0, 2), ip(0, 3)]);
    let plan = host(vec![l]);
    let got = actions(&plan, &FakeNet::default());
    let dev = names::vxlan(4242);
    let kind = LinkKind::Vxlan {
        vni: 4242,
        local: ip(0, 1),
        port: 4789,
    };
    assert!(got.contains(&Action::Create {
        name: dev.clone(),
        kind,
        alias: names::alias("t", "vxlan s"),
        mtu: 1450
    }));
    let from = |a: &Action| got.iter().position(|x| x == a).expect("action present");
    let attach = Action::SetMaster {
        name: dev.clone(),
        master: Some(bridge("s")),
    };
    let fdb2 = Action::FdbAppend {
        device: dev.clone(),
        remote: ip(0, 2),
    };
    let fdb3 = Action::FdbAppend {
        device: dev.clone(),
        remote: ip(0, 3),
    };
    let up = Action::SetUp {
        name: dev.clone(),
        up: true,
    };
    assert!(from(&attach) < from(&fdb2) && from(&fdb2) < from(&fdb3) && from(&fdb3) < from(&up));
    let fake = built(&plan);
    assert_eq!(fake.links[&dev].fdb, BTreeSet::from([ip(0, 2), ip(0, 3)]));
}

#[test]
fn a_removed_segment_and_an_added_tap_change_only_those() {
    let mut fake = built(&host(vec![two_segments("t")]));
    let mut l = two_segments("t");
    l.segments.remove(1);
    l.vms[1].nics.remove(1);
    vm(&mut l, "c", &[("eth0", Some("s1"))]);
    let got = block_on(net::reconcile_with(&mut fake, &host(vec![l])))
        .expect("reconcile")
        .actions;
    let c0 = tap("c", "eth0");
    assert_eq!(
        got,
        vec![
            Action::Delete {
                name: tap("b", "eth1")
            },
            Action::Delete { name: bridge("s2") },
            Action::Create {
                name: c0.clone(),
                kind: LinkKind::Tap,
                alias: names::alias("t", "tap c.eth0"),
                mtu: 1450
            },
            Action::SetMaster {
                name: c0.clone(),
                master: Some(bridge("s1"))
            },
            Action::SetUp { name: c0, up: true },
        ]
    );
}

#[test]
fn a_foreign_interface_with_a_wanted_name_is_an_error_and_nothing_is_decided() {
    let plan = host(vec![two_segments("t")]);
    let b1 = bridge("s1");
    let mut fake = FakeNet::with([foreign(&b1, LinkKind::Bridge)]);
    let err = block_on(net::reconcile_with(&mut fake, &plan)).expect_err("foreign bridge");
    assert!(matches!(&err, NetError::Foreign { names } if names.as_slice() == [b1.as_str()]));
    assert_eq!(
        err.to_string(),
        format!("interface {b1} exists and is not labspan's (no labspan alias); remove it or rename the lab")
    );
    assert!(fake.applied.is_empty());
    // An alias without the marker is not labspan's either.
    let mut aliased = foreign(&b1, LinkKind::Bridge);
    aliased.alias = Some("lab bridge".into());
    let mut fake = FakeNet::with([aliased]);
    assert!(block_on(net::reconcile_with(&mut fake, &plan)).is_err());
    assert!(fake.applied.is_empty());
}

#[test]
fn every_clashing_name_is_listed() {
    let plan = host(vec![two_segments("t")]);
    let (b1, a0) = (bridge("s1"), tap("a", "eth0"));
    let fake = FakeNet::with([foreign(&b1, LinkKind::Bridge), foreign(&a0, LinkKind::Tap)]);
    let observed: Vec<Link> = fake.links.values().cloned().collect();
    let err = diff(&desired_links(&plan).expect("plan"), &observed).expect_err("foreign");
    assert!(
        err.to_string().starts_with(&format!(
            "interfaces {b1}, {a0} exist and are not labspan's"
        )),
        "{err}"
    );
}

#[test]
fn foreign_interfaces_with_other_names_are_never_touched() {
    let plan = host(vec![two_segments("t")]);
    let mut fake = FakeNet::with([
        foreign("eth0", LinkKind::Other("veth".into())),
        foreign("br0", LinkKind::Bridge),
    ]);
    block_on(net::reconcile_with(&mut fake, &plan)).expect("reconcile");
    block_on(net::remove_all_with(&mut fake)).expect("remove all");
    assert!(fake
        .applied
        .iter()
        .all(|a| a.object() != "eth0" && a.object() != "br0"));
    assert_eq!(fake.links.keys().collect::<Vec<_>>(), vec!["br0", "eth0"]);
}

#[test]
fn owned_interfaces_not_in_the_plan_are_deleted_ports_first() {
    let mut fake = built(&host(vec![two_segments("t"), two_segments("u")]));
    let got = block_on(net::reconcile_with(
        &mut fake,
        &host(vec![two_segments("t")]),
    ))
    .expect("reconcile")
    .actions;
    let mut want_taps = vec![
        names::tap("u", "a", "eth0"),
        names::tap("u", "b", "eth0"),
        names::tap("u", "b", "eth1"),
    ];
    want_taps.sort();
    let mut want_bridges = vec![names::bridge("u", "s1"), names::bridge("u", "s2")];
    want_bridges.sort();
    let want: Vec<Action> = want_taps
        .into_iter()
        .chain(want_bridges)
        .map(|name| Action::Delete { name })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_vxlan_device_whose_vni_local_or_port_changed_is_recreated() {
    for change in 0..3 {
        let mut l = lab("t");
        vx_segment(&mut l, "s", 1450, 100, ip(0, 1), &[ip(0, 2)]);
        let mut fake = built(&host(vec![l.clone()]));
        let dev = names::vxlan(100);
        if let Some(LinkKind::Vxlan { vni, local, port }) =
            fake.links.get_mut(&dev).map(|d| &mut d.kind)
        {
            match change {
                0 => *vni = 101,
                1 => *local = ip(0, 9),
                _ => *port = 8472,
            }
        }
        let got = actions(&host(vec![l]), &fake);
        assert_eq!(
            got.first(),
            Some(&Action::Delete { name: dev.clone() }),
            "change {change}"
        );
        assert!(matches!(got.get(1), Some(Action::Create { name, .. }) if *name == dev));
        assert!(got.contains(&Action::FdbAppend {
            device: dev.clone(),
            remote: ip(0, 2)
        }));
    }
}

#[test]
fn ports_of_a_recreated_bridge_are_attached_again() {
    let plan = host(vec![two_segments("t")]);
    let mut fake = built(&plan);
    let b1 = bridge("s1");
    if let Some(b) = fake.links.get_mut(&b1) {
        b.kind = LinkKind::Other("dummy".into());
    }
    let got = block_on(net::reconcile_with(&mut fake, &plan))
        .expect("reconcile")
        .actions;
    for t in [tap("a", "eth0"), tap("b", "eth0")] {
        assert!(
            got.contains(&Action::SetMaster {
                name: t.clone(),
                master: Some(b1.clone())
            }),
            "{t}"
        );
    }
    assert_eq!(
        block_on(net::reconcile_with(&mut fake, &plan))
            .expect("again")
            .actions,
        vec![]
    );
}

#[test]
fn drifted_attributes_are_put_back_one_action_each() {
    let plan = host(vec![two_segments("t")]);
    let mut fake = built(&plan);
    let (b1, b2, a0) = (bridge("s1"), bridge("s2"), tap("a", "eth0"));
    if let Some(l) = fake.links.get_mut(&a0) {
        l.mtu = 9000;
        l.master = Some(b2.clone());
        l.up = false;
        l.alias = Some(names::alias("other", "tap"));
    }
    let got = actions(&plan, &fake);
    assert_eq!(
        got,
        vec![
            Action::SetAlias {
                name: a0.clone(),
                alias: names::alias("t", "tap a.eth0")
            },
            Action::SetMtu {
                name: a0.clone(),
                mtu: 1450
            },
            Action::SetMaster {
                name: a0.clone(),
                master: Some(b1)
            },
            Action::SetUp { name: a0, up: true },
        ]
    );
}

#[test]
fn a_nic_on_no_segment_is_a_tap_on_no_bridge() {
    let mut l = two_segments("t");
    vm(&mut l, "c", &[("eth0", None)]);
    let plan = host(vec![l]);
    let mut fake = built(&plan);
    let c0 = tap("c", "eth0");
    assert_eq!(fake.links[&c0].master, None);
    if let Some(t) = fake.links.get_mut(&c0) {
        t.master = Some(bridge("s1"));
    }
    assert_eq!(
        actions(&plan, &fake),
        vec![Action::SetMaster {
            name: c0,
            master: None
        }]
    );
}

#[test]
fn fdb_entries_follow_the_remotes() {
    let mut l = lab("t");
    vx_segment(&mut l, "s", 1450, 7, ip(0, 1), &[ip(0, 2), ip(0, 3)]);
    let mut fake = built(&host(vec![l.clone()]));
    if let Some(vx) = l.segments[0].vxlan.as_mut() {
        vx.remotes = vec![ip(0, 3), ip(0, 4)];
    }
    let got = block_on(net::reconcile_with(&mut fake, &host(vec![l])))
        .expect("reconcile")
        .actions;
    let dev = names::vxlan(7);
    assert_eq!(
        got,
        vec![
            Action::FdbDelete {
                device: dev.clone(),
                remote: ip(0, 2)
            },
            Action::FdbAppend {
                device: dev.clone(),
                remote: ip(0, 4)
            },
        ]
    );
    assert_eq!(fake.links[&dev].fdb, BTreeSet::from([ip(0, 3), ip(0, 4)]));
}

#[test]
fn impairments_change_only_when_the_kernel_would_apply_them_differently() {
    let mut l = two_segments("t");
    l.vms[0].nics[0].impairment = Impairment {
        loss_percent: Some(1.5),
        rate_kbit: Some(1000),
        ..Default::default()
    };
    let plan = host(vec![l.clone()]);
    let mut fake = built(&plan);
    let a0 = tap("a", "eth0");
    // What `tc` reads back: six significant digits of the fixed-point loss.
    if let Some(t) = fake.links.get_mut(&a0) {
        t.impairment.loss_percent = Some(1.500_001);
    }
    assert_eq!(actions(&plan, &fake), vec![]);
    l.vms[0].nics[0].impairment = Impairment::default();
    assert_eq!(
        actions(&host(vec![l]), &fake),
        vec![Action::SetImpairment {
            name: a0,
            nic: "a:eth0".into(),
            impairment: Impairment::default()
        }]
    );
}

#[test]
fn bad_plans_are_refused_before_anything_is_observed() {
    let mut unknown = two_segments("t");
    unknown.vms[0].nics[0].segment = Some("nope".into());
    let err = desired_links(&host(vec![unknown])).expect_err("unknown segment");
    assert_eq!(
        err.to_string(),
        "host plan, lab \"t\": vm \"a\" nic \"eth0\" is on segment \"nope\", which the plan does not have"
    );
    let mut long = two_segments("t");
    long.segments[0].bridge = "a-name-too-long-for-ifnamsiz".into();
    assert!(matches!(
        desired_links(&host(vec![long])),
        Err(NetError::InvalidPlan { .. })
    ));
    let mut slash = two_segments("t");
    slash.vms[0].nics[0].tap = "../etc".into();
    assert!(matches!(
        desired_links(&host(vec![slash])),
        Err(NetError::InvalidPlan { .. })
    ));
    let mut twice = two_segments("t");
    twice.vms[1].nics[0].tap = twice.vms[0].nics[0].tap.clone();
    let err = desired_links(&host(vec![twice])).expect_err("name used twice");
    assert!(matches!(err, NetError::NameClash { .. }), "{err}");
    // The same VNI in two labs is one device wanted twice.
    let (mut a, mut b) = (lab("a"), lab("b"));
    vx_segment(&mut a, "s", 1450, 5, ip(0, 1), &[]);
    vx_segment(&mut b, "s", 1450, 5, ip(0, 1), &[]);
    assert!(matches!(
        desired_links(&host(vec![a, b])),
        Err(NetError::NameClash { .. })
    ));
}

#[test]
fn removal_of_one_lab_leaves_the_others_and_foreign_interfaces() {
    let mut t = two_segments("t");
    vx_segment(&mut t, "s3", 1450, 9, ip(0, 1), &[ip(0, 2)]);
    let mut fake = built(&host(vec![t, two_segments("t2")]));
    fake.links
        .insert("br0".into(), foreign("br0", LinkKind::Bridge));
    let observed: Vec<Link> = fake.links.values().cloned().collect();
    let doomed = removal(&observed, |l| l.belongs_to("t"));
    assert_eq!(
        doomed.len(),
        3 + 3 + 1,
        "3 taps, 3 bridges, 1 VXLAN device of lab t"
    );
    assert!(doomed.iter().all(|a| matches!(a, Action::Delete { .. })));
    let first_bridge = doomed
        .iter()
        .position(|a| a.object().starts_with("lsb"))
        .expect("bridges");
    assert!(
        doomed[first_bridge..]
            .iter()
            .all(|a| a.object().starts_with("lsb")),
        "ports first"
    );
    block_on(net::remove_lab_with(&mut fake, "t")).expect("remove");
    assert_eq!(fake.links.len(), 5 + 1, "lab t2 and br0 stay");
    assert!(fake.links.values().all(|l| !l.belongs_to("t")));
    assert_eq!(
        block_on(net::remove_lab_with(&mut fake, "t"))
            .expect("again")
            .actions,
        vec![]
    );
    block_on(net::remove_all_with(&mut fake)).expect("remove all");
    assert_eq!(fake.links.keys().collect::<Vec<_>>(), vec!["br0"]);
}

#[test]
fn a_failed_action_stops_the_reconcile_and_the_next_one_finishes_it() {
    let plan = host(vec![two_segments("t")]);
    let mut fake = FakeNet {
        fail_on: Some(tap("b", "eth0")),
        ..Default::default()
    };
    let err = block_on(net::reconcile_with(&mut fake, &plan)).expect_err("injected");
    assert!(err.to_string().contains(&tap("b", "eth0")), "{err}");
    let rest = block_on(net::reconcile_with(&mut fake, &plan))
        .expect("second")
        .actions;
    assert!(!rest.is_empty());
    assert_eq!(
        block_on(net::reconcile_with(&mut fake, &plan))
            .expect("third")
            .actions,
        vec![]
    );
}
