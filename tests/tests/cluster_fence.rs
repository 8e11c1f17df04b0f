//! Fencing on a cluster made by `deploy/cluster.sh`: a host that loses only
//! its control plane (`cluster.sh partition-control`: UDP 7100/7101 dropped
//! inside its namespace, VXLAN still flowing) pauses its VMs when its lease
//! lapses, before the leader starts them elsewhere; when it is healed, its
//! stale copy is stopped, never resumed.
//!
//! Two oracles watch the lab network that both copies share:
//! - every boot of the moving node `v` starts a pinger towards `p` (a lab
//!   `exec` line), and `p`'s host captures those echo requests: each copy's
//!   pinger has its own ICMP id and a payload size drawn at boot (two
//!   boots of one image often get the same pid, hence the same id), and
//!   the times of two pingers never overlap
//!   (the stale copy's host still forwards to `p`'s host: only a pause or
//!   a stop silences it);
//! - `p` probes `v`'s address every 100 ms: no `DUP!` reply, and ARP
//!   requests get one answer each.
#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{build_image, text};

/// Generous bounds for a cluster of TCG guests on a busy 2-core machine.
const HOST_DOWN_WITHIN: Duration = Duration::from_secs(90);
const MOVED_WITHIN: Duration = Duration::from_secs(300);
const BACK_WITHIN: Duration = Duration::from_secs(180);

/// `v` is the node that moves, `p` probes it over their link.
fn lab(placement: &str) -> String {
    format!(
        r#"
name: fence
defaults: {{image: tiny, memory: 256MiB, cpus: 1}}
nodes:
  p: {{nics: {{eth0: {{ip: [198.19.60.1/24]}}}}}}
  v:
    nics: {{eth0: {{ip: [198.19.60.2/24]}}}}
    exec: ["(ping -s $((16 + RANDOM % 1000)) -i 0.2 198.19.60.1 >/dev/null 2>&1 &)"]
links:
  - [p:eth0, v:eth0]
placement:
{placement}
"#
    )
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    text(out)
}

/// Pings v from p every 100 ms, in rounds of a few seconds, until `stop`;
/// returns every round's output (a round the control plane could not run
/// is retried and leaves a gap, never a false reply).
fn probe(cluster: &LocalCluster, stop: &AtomicBool) -> Vec<String> {
    let mut rounds = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let out = cluster.labspan(&[
            "exec",
            "fence",
            "p",
            "--timeout",
            "30",
            "--",
            "ping",
            "-i",
            "0.1",
            "-w",
            "5",
            "198.19.60.2",
        ]);
        let shown = text(&out);
        if shown.contains("packets transmitted") {
            rounds.push(shown);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    rounds
}

/// ARP requests for v's address from p: how many were sent and answered.
fn arping(cluster: &LocalCluster) -> (u32, u32) {
    let args = [
        "exec",
        "fence",
        "p",
        "--",
        "arping",
        "-c",
        "5",
        "-w",
        "6",
        "-I",
        "eth0",
        "198.19.60.2",
    ];
    let out = cluster.wait_for("arping from p", BACK_WITHIN, || {
        let out = cluster.labspan(&args);
        text(&out).contains("Sent ").then_some(out)
    });
    let shown = text(&out);
    let count = |prefix: &str| -> u32 {
        shown
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line in arping's output: {shown}"))
    };
    (count("Sent "), count("Received "))
}

/// `tcpdump` of the echo requests from v's address inside host `i`'s
/// namespace, on every interface (VXLAN, bridge, tap: the same packet seen
/// thrice keeps its ICMP id and length, which are all that is compared).
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(cluster: &LocalCluster, i: usize) -> Capture {
        let file = cluster.write_file("echo.pcap", "");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &cluster.netns(i),
                "tcpdump",
                "-i",
                "any",
                "-U",
                "-n",
                "-w",
            ])
            .arg(&file)
            .args(["icmp[icmptype] == icmp-echo and src host 198.19.60.2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (apt install tcpdump)");
        Capture { child, file }
    }

    /// (ICMP id, length) → (first, last) capture time in seconds, of every
    /// pinger seen.
    fn pingers(mut self) -> BTreeMap<(u32, u32), (f64, f64)> {
        // SIGINT makes tcpdump flush and close the file.
        // SAFETY: kill(2) on the pid of the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-n", "-tt", "-r"])
            .arg(&self.file)
            .output()
            .expect("tcpdump -r");
        let mut ids: BTreeMap<(u32, u32), (f64, f64)> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let time = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<f64>().ok());
            let id = line
                .split("id ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.trim().parse::<u32>().ok());
            let length = line
                .split("length ")
                .nth(1)
                .and_then(|n| n.trim().parse::<u32>().ok());
            if let (Some(t), Some(id), Some(length)) = (time, id, length) {
                let e = ids.entry((id, length)).or_insert((t, t));
                e.0 = e.0.min(t);
                e.1 = e.1.max(t);
            }
        }
        ids
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_host_cut_from_the_control_plane_pauses_its_vms_before_they_run_elsewhere() {
    build_image("tiny");
    let cluster = LocalCluster::up("fence", 4);
    // v on host4, which runs no coordinator: the cut takes no leader with it.
    // Pinned first, then only p: a running node stays where it runs.
    let file = cluster.write_file("fence.yaml", &lab("  pin: {p: host1, v: host4}"));
    let file = file.to_str().expect("utf-8 path");
    ok(&cluster.labspan(&["up", file]), "labspan up (pinned)");
    cluster.write_file("fence.yaml", &lab("  pin: {p: host1}"));
    ok(
        &cluster.labspan(&["up", file]),
        "labspan up (v free to move)",
    );
    let victim = 4;
    let stale = cluster
        .qemu_pid(victim, "fence", "v")
        .expect("v runs on host4");
    let start = Instant::now();
    let phase = |what: &str| eprintln!("{:6.1} s: {what}", start.elapsed().as_secs_f64());

    let capture = Capture::start(&cluster, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = std::thread::scope(|s| {
        let prober = s.spawn(|| probe(&cluster, &stop));
        ok(
            &cluster.fault("partition-control", victim),
            "cluster.sh partition-control",
        );
        phase("host4's control plane cut");
        cluster.wait_for("host4 marked down", HOST_DOWN_WITHIN, || {
            (cluster.host_up(victim) == Some(false)).then_some(())
        });
        phase("host4 marked down");
        let moved = cluster.wait_for("v running on another host", MOVED_WITHIN, || {
            let elsewhere = cluster
                .running("fence", "v")
                .into_iter()
                .find(|(h, _)| *h != victim);
            let running = cluster.lab_status("fence").is_some_and(|s| s == "Running");
            elsewhere.filter(|_| running)
        });
        phase(&format!("v running on host{}", moved.0));
        assert_eq!(
            cluster.qemu_pid(victim, "fence", "v"),
            Some(stale),
            "the cut-off host's copy is paused, not gone, while it cannot hear the leader"
        );
        let (sent, received) = arping(&cluster);
        assert!(
            received <= sent && received > 0,
            "one copy answers ARP while the other is fenced: sent {sent}, received {received}"
        );

        ok(&cluster.fault("heal", victim), "cluster.sh heal");
        phase("host4 healed");
        cluster.wait_for("the stale copy stopped", BACK_WITHIN, || {
            let back = cluster.host_up(victim) == Some(true);
            (back && cluster.qemu_pid(victim, "fence", "v").is_none()).then_some(())
        });
        phase("host4's stale copy stopped");
        assert_eq!(
            cluster.running("fence", "v"),
            vec![moved],
            "v restarted again"
        );
        let (sent, received) = arping(&cluster);
        assert!(
            received <= sent && received > 0,
            "after the heal one copy answers ARP: sent {sent}, received {received}"
        );
        stop.store(true, Ordering::SeqCst);
        prober.join().expect("the probe thread")
    });

    let pingers = capture.pingers();
    eprintln!("v's pingers seen from host1 ((ICMP id, length): first, last): {pingers:?}");
    assert!(
        pingers.len() >= 2,
        "both copies' pingers should have been seen (before the cut, after the move): {pingers:?}"
    );
    let spans: Vec<(f64, f64)> = pingers.values().copied().collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            assert!(
                a.1 < b.0 || b.1 < a.0,
                "two copies of v sent at the same time: {pingers:?}"
            );
        }
    }
    let replies: usize = prober
        .iter()
        .map(|r| r.lines().filter(|l| l.contains("bytes from")).count())
        .sum();
    let dups: Vec<&String> = prober.iter().filter(|r| r.contains("DUP!")).collect();
    eprintln!(
        "probe: {} rounds, {replies} replies, {} with duplicates",
        prober.len(),
        dups.len()
    );
    assert!(dups.is_empty(), "two copies of v answered: {dups:?}");
    assert!(replies > 0, "the probe never got a reply: {prober:?}");
    ok(&cluster.labspan(&["down", "fence"]), "labspan down");
}
