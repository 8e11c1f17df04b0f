//! A shared cluster people can trust, on local 3-host clusters
//! made by `deploy/cluster.sh`: leadership that a coordinator coming back
//! from a partition does not disturb; images and a running lab's placement
//! seen across the cluster.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::process::Output;
use std::time::{Duration, Instant};

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{build_image, text};

/// Generous bound for the cluster to answer on a busy 2-core machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// How long the coordinator is cut off by default: several election
/// timeouts (0.5-1 s), each of which would raise its term without the gate.
const PARTITION: Duration = Duration::from_secs(5);
/// How long the cluster is watched after the coordinator is back: many
/// heartbeats (100 ms) from the leader reach it meanwhile.
const WATCH_AFTER: Duration = Duration::from_secs(5);

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    text(out)
}

/// (leader id, term) as the cluster reports it.
fn leadership(cluster: &LocalCluster) -> Option<(u64, u64)> {
    let s = cluster.status()?;
    Some((s["leader"].as_u64()?, s["term"].as_u64()?))
}

/// A cluster file that reaches only the coordinator of host `i`.
fn only_coordinator(cluster: &LocalCluster, i: usize) -> std::path::PathBuf {
    let status = cluster.status().expect("cluster status");
    let addr = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == format!("c{i}").as_str()))
        .and_then(|m| m["addr"].as_str())
        .expect("the member's address")
        .to_string();
    let admin = std::fs::read_to_string(cluster.admin()).expect("admin cluster file");
    let mut file: serde_json::Value = serde_json::from_str(&admin).expect("cluster file JSON");
    file["coordinators"] = serde_json::json!([addr]);
    cluster.write_file(&format!("c{i}.cluster"), &file.to_string())
}

/// `LABSPAN_PARTITION_SECS` sets the cut (the figures in
/// docs/benchmarks.md use 40 s).
#[test]
fn a_coordinator_back_from_a_partition_leaves_the_leader_and_term_alone() {
    let partition = std::env::var("LABSPAN_PARTITION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(PARTITION, Duration::from_secs);
    let cluster = LocalCluster::up("lead", 3);
    let (leader, term) = cluster.wait_for("a leader", SETTLE_WITHIN, || leadership(&cluster));
    let leader_host = cluster.leader_host().expect("the leader's host");
    let victim = (1..=3).find(|i| *i != leader_host).expect("a follower");
    let victim_file = only_coordinator(&cluster, victim);

    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "down"]),
        "cutting the follower off",
    );
    let cut_at = Instant::now();
    std::thread::sleep(partition);
    let during = leadership(&cluster);
    ok(
        &cluster.ip(victim, &["link", "set", "eth0", "up"]),
        "bringing the follower back",
    );
    let back_at = Instant::now();
    // The coordinator that came back answers again, through the leader.
    let victim_status = || {
        let out = cluster.labspan(&[
            "cluster",
            "status",
            "--json",
            "--cluster",
            victim_file.to_str().expect("utf-8 path"),
        ]);
        out.status.success().then_some(())
    };
    cluster.wait_for("the coordinator back answers", SETTLE_WITHIN, victim_status);
    let answered_after = back_at.elapsed();
    // A write through it: the leader replicates to every member, it too.
    ok(
        &cluster.labspan(&[
            "cluster",
            "token",
            "--role",
            "viewer",
            "--cluster",
            victim_file.to_str().expect("utf-8 path"),
        ]),
        "a write through the coordinator that came back",
    );
    let mut seen = vec![];
    let watch_until = Instant::now() + WATCH_AFTER;
    while Instant::now() < watch_until {
        if let Some(l) = leadership(&cluster) {
            seen.push(l);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = leadership(&cluster);
    eprintln!(
        "partition of c{victim} for {:.0} s: before (leader {leader}, term {term}); during {during:?}; \
         back and answering after {:.1} s; after {after:?}; seen {seen:?}; whole run {:.0} s",
        partition.as_secs_f64(),
        answered_after.as_secs_f64(),
        cut_at.elapsed().as_secs_f64()
    );
    assert_eq!(during, Some((leader, term)), "the majority kept its leader");
    assert!(
        seen.iter().all(|l| *l == (leader, term)),
        "leadership moved after c{victim} came back: {seen:?}, was (leader {leader}, term {term})"
    );
    assert_eq!(after, Some((leader, term)));
}

/// `image push --name` lists under that name, `image list --cluster` says
/// which host holds which image (size, hash), and `graph --cluster` draws a
/// running lab where it runs, the segment that crosses hosts with its VNI.
#[test]
fn images_and_a_running_lab_are_seen_across_the_cluster() {
    build_image("tiny");
    let cluster = LocalCluster::up("look", 3);
    let admin = cluster.admin();
    let admin = admin.to_str().expect("utf-8 path");

    // A blank disk, pushed under another name from a store of its own.
    let disk = cluster.write_file("blank.qcow2", "");
    let store = disk.parent().expect("the state folder").join("store");
    std::fs::create_dir_all(&store).expect("a store folder");
    let store = store.as_path();
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("8M")
        .output()
        .expect("qemu-img (apt install qemu-utils)");
    ok(&out, "qemu-img create");
    let store_arg = store.to_str().expect("utf-8 path");
    ok(
        &cluster.labspan(&[
            "image",
            "push",
            disk.to_str().expect("utf-8 path"),
            "--name",
            "blank-copy",
            "--store",
            store_arg,
        ]),
        "image push --name",
    );
    let local = ok(
        &cluster.labspan(&["image", "list", "--store", store_arg]),
        "image list of the local store",
    );
    let row = local
        .lines()
        .find(|l| l.starts_with("blank-copy "))
        .unwrap_or_else(|| panic!("no blank-copy in the local store:\n{local}"));
    assert!(
        row.split_whitespace().any(|w| w == "unknown"),
        "an imported disk's guest agent is unknown: {row}"
    );
    let listed = ok(
        &cluster.labspan(&["image", "list", "--cluster", admin, "--json"]),
        "image list --cluster",
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("image list JSON");
    let rows = listed.as_array().expect("a list");
    let held = |image: &str| -> Vec<(String, u64, String)> {
        rows.iter()
            .filter(|r| r["image"] == image)
            .map(|r| {
                (
                    r["host"].as_str().unwrap_or_default().to_string(),
                    r["size"].as_u64().unwrap_or_default(),
                    r["hash"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let copies = held("blank-copy");
    assert_eq!(copies.len(), 1, "pushed to one host: {copies:?}");
    assert!(copies[0].1 > 0 && copies[0].2.len() == 64, "{copies:?}");
    assert!(held("blank").is_empty(), "listed under the name given");
    assert!(
        held("tiny").iter().any(|(h, _, _)| h == "host1"),
        "host1 starts with the images: {rows:?}"
    );

    // A lab over two hosts, then drawn where it runs.
    let lab = cluster.write_file(
        "look.yaml",
        "name: look\ndefaults: {image: tiny, cpus: 1, memory: 128MiB}\n\
         nodes:\n  a: {nics: {eth0: {ip: [198.19.90.1/24]}}}\n  b: {nics: {eth0: {ip: [198.19.90.2/24]}}}\n\
         links:\n  - [a:eth0, b:eth0]\nplacement:\n  pin: {a: host1, b: host2}\n",
    );
    ok(
        &cluster.labspan(&["up", "--no-verify", lab.to_str().expect("utf-8 path")]),
        "up",
    );
    let graph = ok(
        &cluster.labspan(&["graph", "look", "--cluster", admin, "--format", "json"]),
        "graph --cluster --format json",
    );
    let graph: serde_json::Value = serde_json::from_str(&graph).expect("graph JSON");
    let host_of = |node: &str| {
        graph["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == node))
            .and_then(|n| n["host"].as_str())
            .map(str::to_string)
    };
    assert_eq!(host_of("a").as_deref(), Some("host1"), "{graph}");
    assert_eq!(host_of("b").as_deref(), Some("host2"), "{graph}");
    let segments = graph["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1, "{graph}");
    assert!(
        segments[0]["vni"].as_u64().is_some(),
        "the segment crosses hosts and has a VNI: {graph}"
    );
    let dot = ok(
        &cluster.labspan(&["graph", "look", "--cluster", admin]),
        "graph --cluster",
    );
    assert!(
        dot.contains("label=\"host1\"") && dot.contains("label=\"host2\"") && dot.contains("vxlan"),
        "dot groups by host and marks the VXLAN: {dot}"
    );
    ok(&cluster.labspan(&["down", "look"]), "down");
}
