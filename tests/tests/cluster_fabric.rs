//! Labs on a cluster made by `deploy/cluster.sh` (the script users run):
//! hosts as namespaces on an underlay, 3 coordinators and an agent per host,
//! tiny guests under TCG. A node moved by editing its pin restarts alone;
//! a lost host's VMs run again on other hosts and, when it comes back, its
//! stale copies stop, and `labspan events` shows the node lost, placed
//! again, booting and running; with no host to take it a node waits, the lab says
//! `Degraded`; a new leader finishes a re-placement; `labspan down` leaves
//! nothing of ours on any host; `cluster.sh` refuses what others use.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::progress::{in_order, steps_of, Events};
use labspan_tests::{build_image, text};

/// Generous bounds for a cluster of TCG guests on a busy 2-core machine.
const HOST_DOWN_WITHIN: Duration = Duration::from_secs(90);
const MOVED_WITHIN: Duration = Duration::from_secs(300);
const BACK_WITHIN: Duration = Duration::from_secs(180);

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    text(out)
}

/// A chain a — b — c; `placement` is the lab's placement section.
fn chain(name: &str, placement: &str) -> String {
    format!(
        r#"
name: {name}
defaults: {{image: tiny, memory: 256MiB, cpus: 1}}
nodes:
  a: {{nics: {{eth0: {{ip: [198.19.50.1/24]}}}}}}
  b: {{nics: {{eth0: {{ip: [198.19.50.2/24]}}, eth1: {{ip: [198.19.51.2/24]}}}}}}
  c: {{nics: {{eth1: {{ip: [198.19.51.3/24]}}}}}}
links:
  - [a:eth0, b:eth0]
  - [b:eth1, c:eth1]
placement:
{placement}
verify:
  - ping: {{from: a, to: b}}
  - ping: {{from: b, to: c}}
"#
    )
}

/// Node → (host, QEMU pid) for every node of `lab` that runs; panics when
/// a node runs twice (only a host cut off the underlay may hold a copy, and
/// callers ask about the others).
fn where_running(cluster: &LocalCluster, lab: &str) -> BTreeMap<String, (usize, u32)> {
    ["a", "b", "c"]
        .iter()
        .filter_map(|n| {
            let on = cluster.running(lab, n);
            assert!(on.len() <= 1, "node {n} runs on several hosts: {on:?}");
            on.first().map(|&at| (n.to_string(), at))
        })
        .collect()
}

/// Pings `to` from node `from` through the cluster's exec path. A
/// control-plane answer without the guest's (a coordinator that came back
/// can move the leadership, and agents then follow the new leader) is
/// asked again; a ping that ran and failed fails the test.
fn ping(cluster: &LocalCluster, lab: &str, from: &str, to: &str) {
    let what = format!("ping {to} from {from}");
    let args = ["exec", lab, from, "--", "ping", "-c", "3", "-W", "5", to];
    let out = cluster.wait_for(&what, BACK_WITHIN, || {
        let out = cluster.labspan(&args);
        let ran = out.status.success() || text(&out).contains("packets transmitted");
        if !ran {
            eprintln!("{what}: asking again after: {}", text(&out).trim());
        }
        ran.then_some(out)
    });
    ok(&out, &what);
}

fn assert_clean(cluster: &LocalCluster, lab: &str) {
    for i in 1..=cluster.hosts {
        assert_eq!(
            cluster.leftovers(i),
            Vec::<String>::new(),
            "left on host{i}"
        );
    }
    for n in ["a", "b", "c"] {
        assert_eq!(cluster.running(lab, n), vec![], "QEMU of {n} left");
    }
}

/// `labspan down` after a host came back. The leadership may be moving
/// then (see [`ping`]): a delete that reached only some agents says so, and
/// the others converge when they register with the new leader; in the end
/// nothing of the lab is left anywhere.
fn down_after_churn(cluster: &LocalCluster, lab: &str) {
    let out = cluster.labspan(&["down", lab]);
    if !out.status.success() {
        assert!(
            text(&out).contains("not yet removed"),
            "labspan down: {}",
            text(&out)
        );
        eprintln!("labspan down {lab}: {}", text(&out).trim());
    }
    cluster.wait_for("nothing of the lab left", BACK_WITHIN, || {
        let clean = (1..=cluster.hosts).all(|i| cluster.leftovers(i).is_empty());
        let stopped = ["a", "b", "c"]
            .iter()
            .all(|n| cluster.running(lab, n).is_empty());
        (clean && stopped).then_some(())
    });
}

#[test]
fn a_node_moved_by_its_pin_restarts_alone_and_down_leaves_nothing() {
    build_image("tiny");
    let cluster = LocalCluster::up("mv", 3);
    let pins = |c: &str| format!("  pin: {{a: host1, b: host2, c: {c}}}");
    let file = cluster.write_file("tri.yaml", &chain("tri", &pins("host3")));
    let file = file.to_str().expect("utf-8 path");
    let shown = ok(&cluster.labspan(&["up", file]), "labspan up (c on host3)");
    assert!(shown.contains("PASS ping b -> c"), "{shown}");
    let before = where_running(&cluster, "tri");
    let hosts: Vec<usize> = before.values().map(|&(h, _)| h).collect();
    assert_eq!(hosts, vec![1, 2, 3], "{before:?}");
    another_file_with_the_same_name_is_refused(&cluster, file, &before);
    a_certificate_from_another_ca_is_refused_at_once(&cluster);

    cluster.write_file("tri.yaml", &chain("tri", &pins("host1")));
    let shown = ok(&cluster.labspan(&["up", file]), "labspan up (c on host1)");
    assert!(shown.contains("PASS ping a -> b"), "{shown}");
    assert!(shown.contains("PASS ping b -> c"), "{shown}");
    let after = where_running(&cluster, "tri");
    assert_eq!(after["a"], before["a"], "a restarted");
    assert_eq!(after["b"], before["b"], "b restarted");
    assert_eq!(after["c"].0, 1, "c did not move to host1: {after:?}");
    ping(&cluster, "tri", "b", "198.19.51.3");

    ok(&cluster.labspan(&["down", "tri"]), "labspan down");
    assert_clean(&cluster, "tri");
}

/// Labs have an identity: `up` of another file that names a
/// running lab is refused with who deployed it, from where and when, and the
/// lab keeps its VMs; `inspect` shows its origin.
fn another_file_with_the_same_name_is_refused(
    cluster: &LocalCluster,
    file: &str,
    before: &BTreeMap<String, (usize, u32)>,
) {
    let pins = "  pin: {a: host1, b: host2, c: host1}";
    let other = cluster.write_file("other.yaml", &chain("tri", pins));
    let refused = cluster.labspan(&["up", &other.to_string_lossy()]);
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains("already deployed by member") && said.contains(file),
        "{said}"
    );
    assert!(said.contains("--replace"), "{said}");
    assert_eq!(
        &where_running(cluster, "tri"),
        before,
        "the lab's VMs changed"
    );
    let shown = ok(&cluster.labspan(&["inspect", "tri"]), "labspan inspect tri");
    assert!(
        shown.contains("lab \"tri\" deployed by member") && shown.contains(file),
        "{shown}"
    );
    // Each node's own state is in its row (the guest's, once its agent
    // reports it: booting, then ready).
    assert!(
        shown.lines().any(|l| l.starts_with("tri a ")
            && ["running", "booting", "ready"]
                .iter()
                .any(|s| l.contains(s))),
        "{shown}"
    );
}

/// A member whose certificate another cluster's CA signed is refused during
/// the handshake, and `up` says so instead of waiting for a coordinator.
fn a_certificate_from_another_ca_is_refused_at_once(cluster: &LocalCluster) {
    // In the cluster's state folder, which `down` removes.
    let dir = cluster.admin().with_file_name("foreign-ca");
    let init = cluster.labspan(&[
        "cluster",
        "init",
        "--data",
        &dir.to_string_lossy(),
        "--listen",
        "127.0.0.1:9",
    ]);
    ok(&init, "labspan cluster init (another CA)");
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    };
    let mut mixed = read(cluster.admin());
    let foreign = read(dir.join("admin.cluster"));
    mixed["cert_pem"] = foreign["cert_pem"].clone();
    mixed["key_pem"] = foreign["key_pem"].clone();
    let path = cluster.write_file("foreign.cluster", &mixed.to_string());
    let lab = cluster.write_file("solo.yaml", "name: solo\nnodes:\n  a: {image: tiny}\n");
    let out = labspan_tests::run(
        std::process::Command::new(labspan_tests::labspan_bin())
            .arg("up")
            .arg(&lab)
            .env("LABSPAN_CLUSTER", &path),
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused this member's certificate"), "{said}");
    assert!(!said.contains("waiting for the cluster"), "{said}");
}

/// `labspan events --json` showed the recovery of `node`: lost on host
/// `from`, then placed on host `to` (moved from `from`), booting and
/// running there, and the lab settled `Running`.
fn recovery_shown(events: &Events, node: &str, from: usize, to: usize) {
    let (from, to) = (format!("host{from}"), format!("host{to}"));
    let steps = events.until("the node's recovery", BACK_WITHIN, |all| {
        let steps = steps_of(all, "loss", node);
        let settled = all
            .iter()
            .any(|s| s["phase"] == "settled" && s["status"] == "Running");
        let done = in_order(&steps, &["lost", "placed", "booting", "running"]).is_some();
        (settled && done).then_some(steps)
    });
    let at = in_order(&steps, &["lost", "placed", "booting", "running"]).unwrap_or_default();
    let hosts: Vec<&str> = at.iter().map(|i| steps[*i].1.as_str()).collect();
    assert_eq!(hosts, [&from, &to, &to, &to], "{steps:?}");
    let placed: Vec<serde_json::Value> = (events.steps().into_iter())
        .filter(|s| s["node"] == node && s["phase"] == "placed")
        .map(|s| s["from"].clone())
        .collect();
    assert_eq!(placed, [from.as_str()], "{steps:?}");
}

#[test]
fn a_lost_hosts_vms_run_elsewhere_and_its_stale_copies_stop_when_it_returns() {
    build_image("tiny");
    let cluster = LocalCluster::up("loss", 4);
    let file = cluster.write_file("loss.yaml", &chain("loss", "  spread: [[a, b, c]]"));
    let file = file.to_str().expect("utf-8 path");
    let shown = ok(&cluster.labspan(&["up", file]), "labspan up");
    assert!(shown.contains("PASS ping b -> c"), "{shown}");
    let before = where_running(&cluster, "loss");
    assert_eq!(before.len(), 3, "{before:?}");

    // The victim runs a node and no leading coordinator (that failover is
    // another test's subject); the highest such host.
    let leader = cluster.wait_for("a leader", HOST_DOWN_WITHIN, || cluster.leader_host());
    let (node, (victim, stale_pid)) = before
        .iter()
        .filter(|(_, &(h, _))| h != leader)
        .max_by_key(|(_, &(h, _))| h)
        .map(|(n, &at)| (n.clone(), at))
        .expect("a node off the leader's host");
    let ns = cluster.netns(victim);
    // What a user following the lab sees of the recovery (`labspan events`).
    let events = Events::follow(&cluster.admin(), "loss");
    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "down"]),
        "eth0 down",
    );
    let cut = Instant::now();
    eprintln!("host{victim} ({ns}) off the underlay; it ran {node}");

    cluster.wait_for("the host marked down", HOST_DOWN_WITHIN, || {
        (cluster.host_up(victim) == Some(false)).then_some(())
    });
    let marked = cut.elapsed();
    let elsewhere = cluster.wait_for("the node running on another host", MOVED_WITHIN, || {
        let on: Vec<(usize, u32)> = cluster.running("loss", &node);
        let moved = on.iter().find(|(h, _)| *h != victim).copied();
        let running = cluster.lab_status("loss").is_some_and(|s| s == "Running");
        moved.filter(|_| running)
    });
    let moved = cut.elapsed();
    assert_eq!(
        cluster.qemu_pid(victim, "loss", &node),
        Some(stale_pid),
        "the cut-off host's copy runs on, unseen, until it returns"
    );
    for (n, at) in before.iter().filter(|(n, _)| **n != node) {
        assert_eq!(cluster.running("loss", n), vec![*at], "{n} restarted");
    }
    ping(&cluster, "loss", "b", "198.19.50.1");
    ping(&cluster, "loss", "b", "198.19.51.3");
    recovery_shown(&events, &node, victim, elsewhere.0);
    drop(events);

    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "up"]),
        "eth0 up",
    );
    let back = Instant::now();
    cluster.wait_for("the stale copy stopped", BACK_WITHIN, || {
        let back = cluster.host_up(victim) == Some(true);
        (back && cluster.qemu_pid(victim, "loss", &node).is_none()).then_some(())
    });
    eprintln!(
        "host{victim} cut off: marked down after {:.1} s, {node} running on host{} after {:.1} s; \
         back: stale copy stopped after {:.1} s",
        marked.as_secs_f64(),
        elsewhere.0,
        moved.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.running("loss", &node),
        vec![elsewhere],
        "{node} restarted again"
    );
    for (n, at) in before.iter().filter(|(n, _)| **n != node) {
        assert_eq!(cluster.running("loss", n), vec![*at], "{n} restarted");
    }
    assert_eq!(cluster.lab_status("loss").as_deref(), Some("Running"));
    ping(&cluster, "loss", "b", "198.19.50.1");
    ping(&cluster, "loss", "b", "198.19.51.3");

    down_after_churn(&cluster, "loss");
}

#[test]
fn a_lost_node_with_no_other_host_degrades_the_lab_until_its_host_returns() {
    build_image("tiny");
    let cluster = LocalCluster::up("pin", 3);
    let placement = "  pin: {a: host1, b: host2, c: host3}";
    let file = cluster.write_file("pin.yaml", &chain("pin", placement));
    let file = file.to_str().expect("utf-8 path");
    ok(&cluster.labspan(&["up", file]), "labspan up");
    let before = where_running(&cluster, "pin");
    let leader = cluster.wait_for("a leader", HOST_DOWN_WITHIN, || cluster.leader_host());
    let (node, (victim, pid)) = before
        .iter()
        .rev()
        .find(|(_, &(h, _))| h != leader)
        .map(|(n, &at)| (n.clone(), at))
        .expect("a node off the leader's host");
    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "down"]),
        "eth0 down",
    );

    let status = cluster.wait_for("the lab degraded", MOVED_WITHIN, || {
        cluster
            .lab_status("pin")
            .filter(|s| s.starts_with("Degraded"))
    });
    let expected = format!("Degraded: node {node:?} has no host (host \"host{victim}\" down): ");
    assert!(status.starts_with(&expected), "{status}");
    assert!(status.contains("pinned"), "{status}");
    for n in ["a", "b", "c"] {
        let at = before[n];
        let on = cluster.running("pin", n);
        assert_eq!(on, vec![at], "{n} restarted or moved (status {status})");
    }

    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "up"]),
        "eth0 up",
    );
    cluster.wait_for("the lab running again", BACK_WITHIN, || {
        let back = cluster.host_up(victim) == Some(true);
        let running = cluster.lab_status("pin").is_some_and(|s| s == "Running");
        (back && running).then_some(())
    });
    assert_eq!(
        cluster.running("pin", &node),
        vec![(victim, pid)],
        "{node}: its host kept it running; it must not restart"
    );
    ping(&cluster, "pin", "b", "198.19.50.1");
    ping(&cluster, "pin", "b", "198.19.51.3");
    down_after_churn(&cluster, "pin");
}

/// The leader is killed (`kill -9`) as soon as the lost host is marked down,
/// wherever its re-placement then is: the next leader finishes it.
#[test]
fn a_new_leader_finishes_the_re_placement_of_a_lost_host() {
    build_image("tiny");
    let cluster = LocalCluster::up("fo", 4);
    // c on host4, which runs no coordinator: two stay when the leader dies.
    // Pinned first, then only spread: a running node stays where it runs.
    let pinned = "  pin: {a: host1, b: host2, c: host4}\n  spread: [[a, b, c]]";
    let file = cluster.write_file("fo.yaml", &chain("fo", pinned));
    let file = file.to_str().expect("utf-8 path");
    ok(&cluster.labspan(&["up", file]), "labspan up (pinned)");
    cluster.write_file("fo.yaml", &chain("fo", "  spread: [[a, b, c]]"));
    ok(&cluster.labspan(&["up", file]), "labspan up (spread only)");
    let before = where_running(&cluster, "fo");
    let (node, victim) = ("c".to_string(), 4);
    assert_eq!(before[&node].0, victim, "{before:?}");
    let leader = cluster.wait_for("a leader", HOST_DOWN_WITHIN, || cluster.leader_host());
    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "down"]),
        "eth0 down",
    );
    cluster.wait_for("the host marked down", HOST_DOWN_WITHIN, || {
        (cluster.host_up(victim) == Some(false)).then_some(())
    });
    assert!(
        cluster.kill_coordinator(leader),
        "no coordinator on host{leader}"
    );

    let elsewhere = cluster.wait_for("the node running on another host", MOVED_WITHIN, || {
        let moved = cluster
            .running("fo", &node)
            .into_iter()
            .find(|(h, _)| *h != victim);
        let running = cluster.lab_status("fo").is_some_and(|s| s == "Running");
        moved.filter(|_| running)
    });
    let new_leader = cluster.leader_host();
    assert!(new_leader.is_some_and(|l| l != leader), "{new_leader:?}");
    for (n, at) in before.iter().filter(|(n, _)| **n != node) {
        assert_eq!(cluster.running("fo", n), vec![*at], "{n} restarted");
    }
    ping(&cluster, "fo", "b", "198.19.50.1");
    ping(&cluster, "fo", "b", "198.19.51.3");

    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "up"]),
        "eth0 up",
    );
    cluster.wait_for("the stale copy stopped", BACK_WITHIN, || {
        let back = cluster.host_up(victim) == Some(true);
        (back && cluster.qemu_pid(victim, "fo", &node).is_none()).then_some(())
    });
    assert_eq!(cluster.running("fo", &node), vec![elsewhere]);
    down_after_churn(&cluster, "fo");
}

/// `cluster.sh up` refuses what another cluster uses, changes nothing of
/// it, and the refused cluster's `down` leaves the other one alone.
#[test]
fn cluster_sh_refuses_a_subnet_or_namespaces_already_in_use() {
    let first = LocalCluster::up("ra", 1);

    let mut same_subnet = LocalCluster::new("rb");
    same_subnet.net = first.net;
    let out = same_subnet.start(1);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("subnet 198.18.{}.0/24 is already", first.net)),
        "{}",
        text(&out)
    );

    let mut same_name = LocalCluster::new("rc");
    same_name.name = first.name.clone();
    let out = same_name.start(1);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already exist and are not this cluster's"),
        "{}",
        text(&out)
    );
    ok(&same_name.down(), "down of the refused cluster");
    drop(same_name);
    drop(same_subnet);

    let status = first
        .status()
        .expect("the first cluster answers after both refusals");
    assert_eq!(first.host_up(1), Some(true), "{status}");
}
