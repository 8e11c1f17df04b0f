//! Guests that fail are noticed and restarted (docs/running-labs.md,
//! "Guests that fail"): on a one-host local cluster (real daemons, real
//! QEMU under TCG), a guest whose kernel panics is restarted by its policy
//! and reported, with the backoff in its events; a guest whose agent stops
//! answering is seen as hung after the grace period and restarted; a guest
//! with `restart: never` is left as it is and reported; `labspan restart`
//! restarts one node on purpose.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::time::Duration;

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{build_image, text};
use serde_json::Value;

const LAB: &str = r#"
name: guests
defaults: {image: tiny, memory: 128MiB, cpus: 1}
nodes:
  a:
    nics: {eth0: {ip: 198.19.40.1/24}}
  b:
    restart: never
    nics: {eth0: {ip: 198.19.40.2/24}}
links:
  - [a:eth0, b:eth0]
verify:
  - ping: {from: a, to: 198.19.40.2}
"#;

/// Generous bounds for a loaded 2-core machine; not timing assertions.
const LIMIT: Duration = Duration::from_secs(240);

/// `inspect guests --json`'s guest record of `node`, once the leader has one.
fn guest(cluster: &LocalCluster, node: &str) -> Option<Value> {
    let out = cluster.labspan(&["inspect", "guests", "--json"]);
    if !out.status.success() {
        return None;
    }
    // One record per lab, each with its nodes.
    let labs: Value = serde_json::from_slice(&out.stdout).ok()?;
    labs.as_array()?
        .iter()
        .filter_map(|lab| lab["nodes"].as_array())
        .flatten()
        .find(|r| r["node"] == node)
        .map(|r| r["guest"].clone())
        .filter(|g| !g.is_null())
}

fn events(g: &Value) -> Vec<String> {
    g["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The seconds between the first event containing `from` and the first
/// later one containing `to` (for docs/benchmarks.md; never asserted).
fn seconds_between(events: &[String], from: &str, to: &str) -> Option<u64> {
    let at = |e: &String| e.split_whitespace().next()?.parse::<u64>().ok();
    let start = events.iter().position(|e| e.contains(from))?;
    let end = events[start..].iter().find(|e| e.contains(to))?;
    Some(at(end)? - at(&events[start])?)
}

/// Waits until `node` is ready with `restarts` restarts.
fn ready_after(cluster: &LocalCluster, node: &str, restarts: u64) -> Value {
    cluster.wait_for(
        &format!("{node} ready after restart {restarts}"),
        LIMIT,
        || guest(cluster, node).filter(|g| g["state"] == "ready" && g["restarts"] == restarts),
    )
}

#[test]
fn failed_guests_are_restarted_by_policy_and_reported() {
    build_image("tiny");
    let cluster = LocalCluster::up("gst", 1);
    let lab = cluster.write_file("guests.yaml", LAB);
    let up = cluster.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    assert!(up.status.success(), "labspan up: {}", text(&up));
    ready_after(&cluster, "a", 0);
    ready_after(&cluster, "b", 0);
    let first_qemu = cluster.qemu_pid(1, "guests", "a").expect("a runs");

    // 1. A kernel panic: restarted (a new boot, same folder) and reported.
    // The exec's own connection dies with the guest: its result is moot.
    let _ = cluster.labspan(&["exec", "guests", "a", "--", "echo c > /proc/sysrq-trigger"]);
    let g = ready_after(&cluster, "a", 1);
    let ev = events(&g);
    assert!(
        ev.iter()
            .any(|e| e.contains("shut-down:") || e.contains("panicked:")),
        "the failure is an event: {ev:#?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.contains("backing off: restart 1 in 2s")),
        "{ev:#?}"
    );
    assert!(
        g["console"].as_array().is_some_and(|c| c
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("Kernel")))),
        "the console lines of the failure are kept: {g:#}"
    );
    assert_ne!(cluster.qemu_pid(1, "guests", "a"), Some(first_qemu));
    let table = text(&cluster.labspan(&["inspect", "guests"]));
    assert!(
        !table.contains("Kernel")
            && table
                .lines()
                .any(|l| l.contains(" a ") && l.contains("ready")),
        "console lines stay out of the table: {table}"
    );
    eprintln!(
        "figure: panic to ready again: {:?} s",
        seconds_between(&ev, "shut-down:", "ready").or(seconds_between(&ev, "panicked:", "ready"))
    );

    // 2. A second failure soon after backs off longer; this one a hang:
    // its guest agent is stopped (after the exec returned).
    let stop_agent = "(sleep 1; kill -STOP $(pidof qemu-ga)) >/dev/null 2>&1 &";
    let out = cluster.labspan(&["exec", "guests", "a", "--", stop_agent]);
    assert!(out.status.success(), "{}", text(&out));
    let g = ready_after(&cluster, "a", 2);
    let ev = events(&g);
    assert!(
        ev.iter()
            .any(|e| e.contains("hung: its guest agent has not answered for 20s")),
        "{ev:#?}"
    );
    assert!(
        ev.iter().any(|e| e.contains("backing off: restart 2 in ")),
        "{ev:#?}"
    );
    eprintln!(
        "figure: last answer to hang detected, then ready: {:?} s / {:?} s",
        seconds_between(&ev, "ready", "hung:"),
        seconds_between(&ev, "hung:", "ready")
    );

    // 3. restart: never: the panicked guest is left as it is, and said so.
    let b_qemu = cluster.qemu_pid(1, "guests", "b").expect("b runs");
    let _ = cluster.labspan(&["exec", "guests", "b", "--", "echo c > /proc/sysrq-trigger"]);
    let g = cluster.wait_for("b left", LIMIT, || {
        guest(&cluster, "b").filter(|g| g["state"] == "left")
    });
    assert_eq!(g["restarts"], 0);
    assert!(
        events(&g)
            .iter()
            .any(|e| e.contains("left as it is (restart: never)")),
        "{g:#}"
    );
    assert_eq!(
        cluster.qemu_pid(1, "guests", "b"),
        Some(b_qemu),
        "its QEMU is kept for a post-mortem"
    );

    // 4. labspan restart restarts it on purpose, in its folder.
    let out = cluster.labspan(&["restart", "guests", "b"]);
    assert!(out.status.success(), "labspan restart: {}", text(&out));
    let g = ready_after(&cluster, "b", 1);
    assert!(
        events(&g)
            .iter()
            .any(|e| e.contains("restart 1: requested (labspan restart)")),
        "{g:#}"
    );
    let ping = cluster.labspan(&["exec", "guests", "a", "--", "ping -c 1 -W 5 198.19.40.2"]);
    assert!(ping.status.success(), "a reaches b again: {}", text(&ping));
    let nope = cluster.labspan(&["restart", "guests", "zz"]);
    assert_eq!(nope.status.code(), Some(2), "{}", text(&nope));

    let down = cluster.labspan(&["down", "guests"]);
    assert!(down.status.success(), "{}", text(&down));
}
