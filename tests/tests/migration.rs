//! Live moves on a cluster made by `deploy/cluster.sh` (issue 13): a guest
//! moved to another host while a peer pings it every 10 ms keeps its boot
//! (same boot id, uptime not reset, a marker kept only in RAM), runs on
//! the new host only, and a drain moves it again and leaves the host
//! cordoned; a move whose leader is killed (kill -9) is ended by the next
//! leader and leaves exactly one copy, the same boot. The figures of each move are printed (`--json`); the ping
//! gap is printed too, as a figure, not asserted.
#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::process::Output;
use std::time::Duration;

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{build_image, text};

const MOVED: &str = "198.19.70.2";

const LAB: &str = r#"
name: move
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  p: {nics: {eth0: {ip: [198.19.70.1/24]}}}
  v: {nics: {eth0: {ip: [198.19.70.2/24]}}}
links:
  - [p:eth0, v:eth0]
placement:
  pin: {p: host1, v: host2}
"#;

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn refused(out: &Output, what: &str, says: &str) {
    assert_eq!(out.status.code(), Some(2), "{what}: {}", text(out));
    assert!(text(out).contains(says), "{what}: {}", text(out));
}

/// Runs `line` in `node` (`labspan exec` hands it to `sh -c`).
fn sh(cluster: &LocalCluster, node: &str, line: &str) -> String {
    ok(&cluster.labspan(&["exec", "move", node, "--", line]), line)
}

/// What a guest's boot looks like from inside: boot id, uptime, marker.
fn boot(cluster: &LocalCluster) -> (String, f64, String) {
    let id = sh(cluster, "v", "cat /proc/sys/kernel/random/boot_id");
    let up = sh(cluster, "v", "cut -d' ' -f1 /proc/uptime")
        .parse()
        .expect("uptime");
    let marker = sh(cluster, "v", "cat /dev/shm/marker");
    assert!(
        id.len() >= 32 && marker.len() == 32,
        "boot id {id:?}, marker {marker:?}"
    );
    (id, up, marker)
}

/// The longest run of echo requests without reply in `ping`'s output, in
/// requests (each is 10 ms), and the last sequence number answered.
fn ping_gap(log: &str) -> (u64, u64) {
    let mut seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let gap = seqs.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
    (gap, seqs.last().copied().unwrap_or(0))
}

fn only_on(cluster: &LocalCluster, host: usize) -> u32 {
    let running = cluster.running("move", "v");
    assert_eq!(
        running.iter().map(|(h, _)| *h).collect::<Vec<_>>(),
        vec![host],
        "v's QEMUs: {running:?}"
    );
    running[0].1
}

/// Moves v (`labspan move ... --json` or a drain) while p pings it every
/// 10 ms; returns the move's figures and the ping gap.
fn pinged_move(cluster: &LocalCluster, args: &[&str]) -> (String, u64) {
    // Started in the background so that it runs through the whole move.
    let pid = sh(
        cluster,
        "p",
        &format!("ping -i 0.01 -w 120 {MOVED} > /tmp/ping.log 2>&1 & echo $!"),
    );
    let before = sh(cluster, "p", "grep -c seq= /tmp/ping.log || true");
    let figures = ok(&cluster.labspan(args), &args.join(" "));
    // A few more seconds of pings on the new host before the count.
    std::thread::sleep(Duration::from_secs(3));
    sh(cluster, "p", &format!("kill {pid}"));
    let log = sh(cluster, "p", "cat /tmp/ping.log");
    let (gap, last) = ping_gap(&log);
    eprintln!(
        "{}: {figures}; longest ping gap {gap} requests of 10 ms (replies before the move: {before})",
        args.join(" ")
    );
    let replies_before: u64 = before.parse().unwrap_or(0);
    assert!(
        last > replies_before,
        "no ping reply after the move (last answered seq {last}): {log}"
    );
    (figures, gap)
}

#[test]
fn a_running_guest_moves_live_and_a_drain_moves_it_again() {
    build_image("tiny");
    let cluster = LocalCluster::up("move", 3);
    let file = cluster.write_file("move.yaml", LAB);
    ok(
        &cluster.labspan(&["up", file.to_str().expect("utf-8")]),
        "labspan up",
    );
    let old = only_on(&cluster, 2);
    sh(
        &cluster,
        "v",
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /dev/shm/marker",
    );
    let (boot_id, up_before, marker) = boot(&cluster);

    // Bad moves change nothing.
    refused(
        &cluster.labspan(&["move", "move", "vv", "--to", "host3"]),
        "an unknown node",
        "did you mean \"v\"",
    );
    refused(
        &cluster.labspan(&["move", "move", "v", "--to", "host2"]),
        "its own host",
        "already runs on host \"host2\"",
    );
    refused(
        &cluster.labspan(&["move", "move", "v", "--to", "hots3"]),
        "an unknown host",
        "no host \"hots3\"",
    );
    assert_eq!(only_on(&cluster, 2), old);

    let (figures, _) = pinged_move(&cluster, &["move", "move", "v", "--to", "host3", "--json"]);
    let figures: serde_json::Value = serde_json::from_str(&figures).expect("--json");
    assert_eq!(figures["from"], "host2");
    assert_eq!(figures["to"], "host3");
    assert!(figures["ram_bytes"].as_u64().unwrap_or(0) > 0, "{figures}");
    let new = only_on(&cluster, 3);
    let (id, up_after, kept) = boot(&cluster);
    assert_eq!(id, boot_id, "v booted again");
    assert_eq!(kept, marker, "v's RAM did not move");
    assert!(
        up_after >= up_before,
        "uptime went back: {up_before} -> {up_after}"
    );
    assert_eq!(cluster.lab_status("move").as_deref(), Some("Running"));

    // Drain host3: v goes back next to its peer's host or to host2, the
    // host stays cordoned, and nothing may be moved onto it.
    pinged_move(&cluster, &["host", "drain", "host3", "--json"]);
    let drained_to = cluster.running("move", "v");
    assert_eq!(drained_to.len(), 1, "v's QEMUs: {drained_to:?}");
    assert_ne!(drained_to[0].0, 3);
    assert_ne!(drained_to[0].1, new);
    assert_eq!(boot(&cluster).0, boot_id, "v booted again in the drain");
    let status = cluster.status().expect("status");
    let host3 = status["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == "host3"))
        .cloned()
        .expect("host3 in status");
    assert_eq!(host3["cordoned"], true, "{host3}");
    refused(
        &cluster.labspan(&["move", "move", "v", "--to", "host3"]),
        "a cordoned host",
        "cordoned",
    );
    ok(&cluster.labspan(&["host", "uncordon", "host3"]), "uncordon");
    let status = cluster.status().expect("status");
    assert!(status["hosts"]
        .as_array()
        .is_some_and(|h| h.iter().all(|h| h["cordoned"] == false)));

    // kill -9 of the leader while v moves: the next leader ends the move
    // (done or rolled back), and v runs exactly once, the same boot.
    let from = only_on_one(&cluster);
    let to = (1..=3).find(|h| *h != from).expect("another host");
    let leader = cluster.wait_for("a leader", Duration::from_secs(60), || {
        cluster.leader_host()
    });
    let to_name = format!("host{to}");
    std::thread::scope(|s| {
        let mover = s.spawn(|| cluster.labspan(&["move", "move", "v", "--to", &to_name]));
        cluster.wait_for("the destination's QEMU", Duration::from_secs(120), || {
            cluster.qemu_pid(to, "move", "v").map(|_| ())
        });
        assert!(
            cluster.kill_coordinator(leader),
            "no leader on host{leader}"
        );
        let out = mover.join().expect("the move thread");
        eprintln!("move while its leader was killed: {}", text(&out));
    });
    cluster.wait_for(
        "the move ended by the next leader",
        Duration::from_secs(240),
        || {
            let state = node_state(&cluster, "v")?;
            let running = cluster.lab_status("move").is_some_and(|s| s == "Running");
            (state != "moving" && running).then_some(())
        },
    );
    let copies = cluster.running("move", "v");
    eprintln!("after the leader's loss v runs on {copies:?}");
    assert_eq!(copies.len(), 1, "v's QEMUs: {copies:?}");
    assert_eq!(boot(&cluster).0, boot_id, "v booted again");
    ok(&cluster.labspan(&["down", "move"]), "labspan down");
}

/// The one host v runs on.
fn only_on_one(cluster: &LocalCluster) -> usize {
    let running = cluster.running("move", "v");
    assert_eq!(running.len(), 1, "v's QEMUs: {running:?}");
    running[0].0
}

/// The state `labspan inspect --json` gives `node` of lab "move".
fn node_state(cluster: &LocalCluster, node: &str) -> Option<String> {
    let out = cluster.labspan(&["inspect", "move", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    fn find(v: &serde_json::Value, node: &str) -> Option<String> {
        match v {
            serde_json::Value::Object(m) if m.get("node").is_some_and(|n| n == node) => {
                m.get("state")?.as_str().map(String::from)
            }
            serde_json::Value::Object(m) => m.values().find_map(|v| find(v, node)),
            serde_json::Value::Array(a) => a.iter().find_map(|v| find(v, node)),
            _ => None,
        }
    }
    find(&json, node)
}
