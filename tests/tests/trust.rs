//! A shared cluster people can trust (issue 18), on a local 3-host cluster
//! made by `deploy/cluster.sh`: leadership that a coordinator coming back
//! from a partition does not disturb.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::process::Output;
use std::time::{Duration, Instant};

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::text;

/// Generous bound for the cluster to answer on a busy 2-core machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// How long the coordinator is cut off by default: several election
/// timeouts (1-2 s), each of which would raise its term without the gate.
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
