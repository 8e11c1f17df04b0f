//! One lab over three hosts (network namespaces joined by an underlay):
//! host plans from the coordinator's planner, carried out by each host's
//! agent, guests on different hosts reaching each other through labspan's
//! VXLAN segments. The control plane is not involved: this is the data path.
//! And the harness's `Fabric` itself: gone when its test panics.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use labspan_agent::reconcile::{Agent, Report};
use labspan_agent::vm::AccelChoice;
use labspan_coordinator::plan::{plan_lab, HostFabric, PlanInput};
use labspan_proto::lab::{parse, Lab};
use labspan_proto::plan::HostPlan;
use labspan_tests::local_cluster::{cluster_sh, LocalCluster};
use labspan_tests::{run, text, Fabric, TestHost};

const LAB: &str = r#"
name: span
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.30.1/24]}, eth1: {ip: [198.19.31.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.30.2/24]}, eth1: {ip: [198.19.31.2/24]}}}
  c: {nics: {eth1: {ip: [198.19.31.3/24]}}}
links:
  - [a:eth0, b:eth0]
lans:
  core: [a:eth1, b:eth1, c:eth1]
"#;

/// Every host's plan for `lab` placed as `placement` (node → host index).
fn plans(lab: &Lab, fabric: &Fabric, placement: &[(&str, usize)]) -> Vec<HostPlan> {
    let name = |i: usize| format!("h{}", i + 1);
    let hosts: BTreeMap<String, HostFabric> = fabric
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (
                name(i),
                HostFabric {
                    vtep: h.vtep.expect("fabric host"),
                    underlay_mtu: 1500,
                },
            )
        })
        .collect();
    let placement: BTreeMap<String, String> = placement
        .iter()
        .map(|(n, i)| (n.to_string(), name(*i)))
        .collect();
    let vnis = BTreeMap::from([
        ("link:a:eth0--b:eth0".to_string(), 5001),
        ("lan:core".to_string(), 5002),
    ]);
    let files = BTreeMap::new();
    let mut by_host = plan_lab(&PlanInput {
        lab,
        files: &files,
        placement: &placement,
        hosts: &hosts,
        vnis: &vnis,
        arriving: None,
    })
    .expect("planning");
    (0..fabric.hosts.len())
        .map(|i| HostPlan {
            host: name(i),
            labs: by_host.remove(&name(i)).into_iter().collect(),
            kept_checkpoints: Vec::new(),
            ..HostPlan::default()
        })
        .collect()
}

/// Applies each host's plan with that host's agent, all hosts at once.
fn apply(fabric: &Fabric, plans: &[HostPlan]) -> Vec<Report> {
    std::thread::scope(|s| {
        let runs: Vec<_> = fabric
            .hosts
            .iter()
            .zip(plans)
            .map(|(host, plan)| {
                s.spawn(move || host.block_on(|| async { agent(host).apply(plan, &|_| {}).await }))
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("apply thread").expect("apply"))
            .collect()
    })
}

fn agent(host: &TestHost) -> Agent {
    Agent::new(host.state.clone(), AccelChoice::Tcg)
}

/// Runs `cmd` in guest `node` on `host`; true when it exits 0.
fn guest_ok(host: &TestHost, node: &str, cmd: &str) -> bool {
    let out = host.block_on(|| async {
        agent(host)
            .exec("span", node, cmd, Duration::from_secs(30))
            .await
    });
    out.expect("guest exec").exit_code == 0
}

fn pid(host: &TestHost, node: &str) -> Option<u32> {
    host.qemu_pid("span", node)
}

#[test]
fn a_lab_spans_three_hosts_moves_a_node_and_leaves_nothing() {
    let fabric = Fabric::new("span", 3);
    fabric.hosts[0].ensure_tiny();
    let lab = parse("span.yaml", LAB).expect("valid lab");
    let [h1, h2, h3] = [&fabric.hosts[0], &fabric.hosts[1], &fabric.hosts[2]];

    // a on h1, b on h2, c on h3: the link spans h1-h2, the LAN all three.
    let reports = apply(
        &fabric,
        &plans(&lab, &fabric, &[("a", 0), ("b", 1), ("c", 2)]),
    );
    assert!(reports.iter().all(Report::ok), "{reports:?}");
    assert_eq!(
        h1.block_on(|| async {
            agent(h1)
                .exec(
                    "span",
                    "a",
                    "cat /sys/class/net/eth0/mtu",
                    Duration::from_secs(10),
                )
                .await
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("exec"),
        "1450",
        "guest MTU leaves room for VXLAN on a 1500-byte underlay"
    );
    assert!(
        guest_ok(h1, "a", "ping -c 3 -W 2 198.19.30.2"),
        "a -> b over the link (h1 -> h2)"
    );
    assert!(
        guest_ok(h1, "a", "ping -c 3 -W 2 198.19.31.3"),
        "a -> c over the LAN (h1 -> h3)"
    );
    assert!(
        guest_ok(h3, "c", "ping -c 3 -W 2 198.19.31.2"),
        "c -> b over the LAN (h3 -> h2)"
    );
    let kept = (pid(h1, "a"), pid(h3, "c"));

    // Move b to h3: the link now spans h1-h3; nothing else restarts.
    let reports = apply(
        &fabric,
        &plans(&lab, &fabric, &[("a", 0), ("b", 2), ("c", 2)]),
    );
    assert!(reports.iter().all(Report::ok), "{reports:?}");
    assert_eq!(pid(h2, "b"), None, "b left h2");
    assert!(pid(h3, "b").is_some(), "b runs on h3");
    assert_eq!(
        (pid(h1, "a"), pid(h3, "c")),
        kept,
        "a and c were not restarted"
    );
    assert!(
        guest_ok(h1, "a", "ping -c 3 -W 2 198.19.30.2"),
        "a -> b over the moved link (h1 -> h3)"
    );
    assert!(
        guest_ok(h1, "a", "ping -c 3 -W 2 198.19.31.2"),
        "a -> b over the LAN"
    );
    assert_eq!(
        h2.labspan_links(),
        Vec::<String>::new(),
        "h2 has no member left"
    );

    // Remove the lab: every host is left clean.
    let empty: Vec<HostPlan> = (1..=3)
        .map(|i| HostPlan {
            host: format!("h{i}"),
            labs: vec![],
            kept_checkpoints: Vec::new(),
            ..HostPlan::default()
        })
        .collect();
    apply(&fabric, &empty);
    for host in &fabric.hosts {
        assert_eq!(
            host.labspan_links(),
            Vec::<String>::new(),
            "{} keeps interfaces",
            host.netns
        );
        assert!(host.vm_files().is_empty(), "{} keeps VM files", host.netns);
    }
}

/// A `Fabric`'s hosts reach each other over its underlay, and when the test
/// holding it panics, its drop (`cluster.sh down`) removes the host and
/// underlay namespaces, the root veth and the state folders.
#[test]
fn a_fabric_is_removed_when_its_test_panics() {
    struct Made {
        namespaces: Vec<String>,
        subnet: String,
        state: std::path::PathBuf,
    }
    let unwound = std::panic::catch_unwind(|| {
        let fabric = Fabric::new("gone", 2);
        let [h1, h2] = [&fabric.hosts[0], &fabric.hosts[1]];
        let Some(IpAddr::V4(peer)) = h2.vtep else {
            panic!("h2 of a fabric has an IPv4 address: {:?}", h2.vtep)
        };
        let ping = run(Command::new("ip")
            .args(["netns", "exec", &h1.netns, "ping", "-c", "1", "-W", "10"])
            .arg(peer.to_string()));
        assert!(ping.status.success(), "h1 pings h2: {}", text(&ping));
        let prefix = h1.netns.strip_suffix("-host1").expect("NAME-host1");
        let [a, b, c, _] = peer.octets();
        std::panic::panic_any(Made {
            namespaces: vec![
                h1.netns.clone(),
                h2.netns.clone(),
                format!("{prefix}-underlay"),
            ],
            subnet: format!("{a}.{b}.{c}.0/24"),
            state: h1.state.clone(),
        })
    });
    let made = unwound
        .expect_err("the test panicked")
        .downcast::<Made>()
        .expect("the fabric's names");
    let listed = run(Command::new("ip").args(["netns", "list"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in &made.namespaces {
        assert!(
            !listed.lines().any(|l| l.split(' ').next() == Some(ns)),
            "namespace {ns} left:\n{listed}"
        );
    }
    let addressed = run(Command::new("ip").args(["-4", "-o", "addr", "show", "to", &made.subnet]));
    assert!(
        addressed.stdout.is_empty(),
        "the root veth in {} left: {}",
        made.subnet,
        text(&addressed)
    );
    assert!(!made.state.exists(), "{} left", made.state.display());
}

/// A test process killed before its drop (by a signal, by nextest's
/// timeout) leaves its cluster behind; the next `LocalCluster` of any test
/// removes it, and leaves alone the cluster of a process that still runs.
#[test]
fn the_cluster_of_a_killed_test_process_is_removed_by_the_next_one() {
    /// The test process that "dies": a child of ours, killed by its handle.
    struct StandIn(std::process::Child);
    impl Drop for StandIn {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stand_in = StandIn(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = stand_in.0.id();
    // The subnet is found (and held) through a cluster of this process.
    let holder = LocalCluster::new("orphnet");
    let name = format!("lsc-orph-{pid}");
    let state = std::env::temp_dir().join(format!("labspan-cluster-orph-{pid}"));
    let (link, subnet) = (
        format!("lcorph{pid}"),
        format!("198.18.{}.0/24", holder.net),
    );
    let script = |what: &[&str]| run(cluster_sh(&name, &link, &state, &subnet).args(what));
    let namespaces = || {
        let out = run(Command::new("ip").args(["netns", "list"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{name}-")))
            .count()
    };
    let made = script(&["hosts", "1"]);
    let made = made
        .status
        .success()
        .then_some(())
        .ok_or_else(|| text(&made));
    // Its process still runs: the next cluster leaves it alone.
    drop(LocalCluster::new("next"));
    let kept = namespaces();
    // Its process is gone: the next cluster removes it.
    drop(stand_in);
    drop(LocalCluster::new("next"));
    let (left, state_left) = (namespaces(), state.exists());
    script(&["down"]);
    made.expect("cluster.sh hosts 1");
    assert_eq!(
        kept, 2,
        "host1 and the underlay of a live process's cluster"
    );
    assert_eq!(left, 0, "namespaces of {name} left after the sweep");
    assert!(!state_left, "{} left after the sweep", state.display());
}
