//! Faults of one coordinator, at a chosen moment, on a cluster made by
//! `deploy/cluster.sh` (the chaos test meets them only at random):
//!
//! - a follower whose disk fills (`cluster.sh fill`: its data folder is a
//!   tmpfs of its own) stops, because openraft treats a storage error as
//!   fatal, and its process exits saying why, instead of staying a member
//!   that votes but cannot write; the two others go on writing; once its
//!   disk is freed and it is started again, it catches up (its own
//!   `labspan_raft_commit_index`).
#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::process::{Command, Output};
use std::time::Duration;

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{run, stdout_ok, text};

/// One Raft write that needs no guest: host3 cordoned, or uncordoned.
fn write(cluster: &LocalCluster, n: u64) -> Output {
    let verb = if n.is_multiple_of(2) {
        "drain"
    } else {
        "uncordon"
    };
    cluster.labspan(&["host", verb, "host3"])
}

/// The commit index the cluster reports.
fn commit_index(cluster: &LocalCluster) -> Option<u64> {
    cluster.status()?["commit_index"].as_u64()
}

#[test]
#[ignore = "the full follower does not always exit: redb may still have room in its file for small entries (seen: 125 writes, no exit, in one of four runs); run with --ignored"]
fn a_coordinator_whose_disk_fills_exits_and_the_others_write_on() {
    let mut cluster = LocalCluster::new("disk");
    cluster.coordinator_disk = Some("64M".into());
    stdout_ok(&cluster.start(3), "deploy/cluster.sh up 3");
    let leader = cluster.wait_for("a leader", Duration::from_secs(60), || {
        cluster.leader_host()
    });
    let full = (1..=3).find(|i| *i != leader).expect("a follower");
    assert!(
        cluster.daemon_pid(full, "coordinator").is_some(),
        "host{full}'s coordinator does not run"
    );
    stdout_ok(&cluster.fault("fill", full), "fill");

    // Each write must reach the full follower's log: it fails there, and
    // the process ends. A write the CLI sent through that coordinator may
    // be cut by its end ("coordinator stopping"): only the exit is awaited.
    let mut n = 0;
    cluster.wait_for(
        "the coordinator whose disk is full to exit",
        Duration::from_secs(120),
        || {
            n += 1;
            let out = write(&cluster, n);
            if !out.status.success() {
                eprintln!("a write while host{full}'s disk is full: {}", text(&out));
            }
            cluster
                .daemon_pid(full, "coordinator")
                .is_none()
                .then_some(())
        },
    );
    let log = cluster.log(full, "coordinator");
    assert!(
        log.contains("raft stopped") && log.contains("full? exiting"),
        "host{full}'s coordinator ended without saying why: {log}"
    );

    // Two of three: writes go on, and the cluster says who is missing.
    let before = commit_index(&cluster).expect("status");
    for _ in 0..4 {
        n += 1;
        stdout_ok(&write(&cluster, n), "a write with one coordinator gone");
    }
    let after = commit_index(&cluster).expect("status");
    assert!(after >= before + 4, "commit index {before} -> {after}");

    // Its disk freed and started again, it catches up with what it missed.
    stdout_ok(&cluster.fault("heal", full), "heal");
    stdout_ok(&cluster.start_daemon(full, "coordinator"), "start it again");
    cluster.wait_for(
        "the restarted coordinator to apply every entry it missed",
        Duration::from_secs(120),
        || (applied(&cluster, full)? >= after).then_some(()),
    );
    stdout_ok(&write(&cluster, n + 1), "a write with all three back");
}

/// The commit index coordinator `i` has applied, from its metrics.
fn applied(cluster: &LocalCluster, i: usize) -> Option<u64> {
    let url = cluster.metrics_url(i, "coordinator");
    let out = run(Command::new("curl").args(["-sSf", "--max-time", "10", &url]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("labspan_raft_commit_index "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
