//! A real cluster over two test hosts (network namespaces joined by an
//! underlay): a coordinator and an agent daemon on h1, an agent daemon on
//! h2, all the `labspan` binary. `labspan up --cluster` deploys a lab whose
//! two nodes must run on different hosts; the leader places it, plans both
//! hosts and pushes each its plan; `verify` runs through the cluster's exec
//! path and a ping crosses the VXLAN segment between the hosts.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use labspan_tests::daemons::{field, ok, start_cluster, until_ok, Daemons};
use labspan_tests::{text, wait_until, write_lab, Fabric, TestHost};

const DUO: &str = r#"
name: duo
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.40.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.40.2/24]}}}
links:
  - [a:eth0, b:eth0]
placement:
  spread: [[a, b]]
verify:
  - ping: {from: a, to: b}
"#;

/// The port of the coordinator (on h1's underlay address).
const COORDINATOR_PORT: u16 = 7100;

#[test]
fn a_lab_spans_two_agent_daemons_through_the_control_plane() {
    let fabric = Fabric::new("cl", 2);
    let (h1, h2) = (&fabric.hosts[0], &fabric.hosts[1]);
    h1.ensure_tiny();
    let mut daemons = Daemons::default();
    let coordinator = h1.underlay_addr(COORDINATOR_PORT);
    let admin = start_cluster(&fabric, &coordinator, &mut daemons);

    let lab = write_lab(h1, "duo.yaml", DUO);
    let up = h1.labspan(&["up", lab.to_str().expect("utf-8 path"), "--cluster", &admin]);
    let shown = ok(&up, "labspan up --cluster");
    assert!(shown.contains("PASS ping a -> b"), "{shown}");
    let on = |host: &TestHost| {
        ["a", "b"]
            .iter()
            .filter(|n| host.qemu_pid("duo", n).is_some())
            .count()
    };
    assert_eq!(
        (on(h1), on(h2)),
        (1, 1),
        "one guest per host expected:\n{shown}"
    );

    let exec = ok(
        &h1.labspan(&["exec", "duo", "b", "--cluster", &admin, "--", "hostname"]),
        "labspan exec --cluster",
    );
    assert_eq!(exec.trim(), "b");
    capture_through_the_cluster(h1, &admin);
    console_through_the_cluster(h1, &admin);

    ok(
        &h1.labspan(&["down", "duo", "--cluster", &admin]),
        "labspan down --cluster",
    );
    assert_eq!((on(h1), on(h2)), (0, 0), "guests left after down");
    drop(daemons);
}

/// `labspan capture` of b's NIC (on h2) from h1's CLI while a pings b:
/// the pcap streams from h2's agent through the coordinator.
fn capture_through_the_cluster(h1: &TestHost, admin: &str) {
    let pcap = h1.state.join("b-eth0.pcap");
    let pcap_arg = pcap.to_str().expect("utf-8 path");
    let args = [
        "capture",
        "duo",
        "b",
        "eth0",
        "--count",
        "4",
        "-w",
        pcap_arg,
        "--cluster",
        admin,
    ];
    let mut capture = h1
        .labspan_cmd(&args)
        .spawn()
        .expect("starting labspan capture");
    let ping = [
        "exec",
        "duo",
        "a",
        "--cluster",
        admin,
        "--",
        "ping -c 8 198.19.40.2",
    ];
    ok(&h1.labspan(&ping), "ping from a while capturing");
    let status = capture.wait().expect("waiting for labspan capture");
    assert!(status.success(), "labspan capture: {status}");
    let bytes = std::fs::read(&pcap).expect("reading the capture");
    // pcap: a 24-byte header (magic a1b2c3d4, little-endian here), then 4
    // records of a 16-byte header and at least an Ethernet + IPv4 header.
    assert_eq!(
        bytes.get(..4),
        Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]),
        "pcap magic"
    );
    assert!(
        bytes.len() >= 24 + 4 * (16 + 34),
        "4 packets: {} bytes",
        bytes.len()
    );

    let missing = h1.labspan(&["capture", "duo", "b", "eth9", "--cluster", admin]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains(r#"node "b" of lab "duo" has no NIC "eth9"; did you mean "eth0"?"#),
        "{}",
        text(&missing)
    );
}

/// `labspan console` of b (on h2) from h1's CLI, its input piped: b's
/// serial shell answers through the agent and the coordinator.
fn console_through_the_cluster(h1: &TestHost, admin: &str) {
    use std::io::{Read, Write};
    let mut console = h1
        .labspan_cmd(&["console", "duo", "b", "--cluster", admin])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting labspan console");
    let mut stdout = console.stdout.take().expect("console stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = console.stdin.take().expect("console stdin");
    // The shell prints 42 only if it ran the line (the echoed input says 6*7).
    stdin
        .write_all(b"\necho console-$((6*7))\n")
        .expect("typing into the console");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains("console-42") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend(chunk),
            Err(_) => break,
        }
    }
    drop(stdin);
    let status = console.wait().expect("waiting for labspan console");
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("console-42"),
        "the guest shell answered: {seen:?}"
    );
    assert!(status.success(), "labspan console: {status}");
}

/// Ports of the failover test's coordinators, all on h1's underlay
/// address (each also uses port + 1).
const FAILOVER_PORTS: [u16; 3] = [7110, 7112, 7114];

/// `cluster status --json` through the admin file, if a coordinator answers.
fn status_json(h1: &TestHost, admin: &str) -> Option<serde_json::Value> {
    let out = h1.labspan(&["cluster", "status", "--json", "--cluster", admin]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn lab_status(status: &serde_json::Value, lab: &str) -> Option<String> {
    status["labs"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == lab)
        .and_then(|l| l["status"].as_str().map(String::from))
}

/// Joins a member with a fresh token of `role`; returns its data folder.
fn join_member(
    h1: &TestHost,
    host: &TestHost,
    admin: &str,
    role: &str,
    name: &str,
    listen: Option<&str>,
) -> String {
    let out = until_ok(
        h1,
        &["cluster", "token", "--role", role, "--cluster", admin],
    );
    let (token, fingerprint) = (field(&out, "token:"), field(&out, "ca fingerprint:"));
    let dir = host.state.join(name);
    let dir = dir.to_str().expect("utf-8 path").to_string();
    let first = h1.underlay_addr(FAILOVER_PORTS[0]);
    let mut join = vec![
        "cluster",
        "join",
        &first,
        "--token",
        token,
        "--ca-fingerprint",
        fingerprint,
        "--data",
        &dir,
        "--name",
        name,
    ];
    if let Some(addr) = listen {
        join.extend(["--listen", addr]);
    }
    ok(&host.labspan(&join), "cluster join");
    dir
}

/// `kill -9` of the leader while it deploys. The new leader
/// finishes the deploy, `labspan up` (which lost its coordinator) waits for it
/// through another coordinator, and the guests that were already running keep
/// their QEMU process.
#[test]
fn a_deploy_survives_kill_9_of_its_leader() {
    let fabric = Fabric::new("fo", 2);
    let (h1, h2) = (&fabric.hosts[0], &fabric.hosts[1]);
    h1.ensure_tiny();
    let failover = FAILOVER_PORTS.map(|port| h1.underlay_addr(port));
    let c1 = h1.state.join("c1");
    let c1 = c1.to_str().expect("utf-8 path");
    ok(
        &h1.labspan(&["cluster", "init", "--data", c1, "--listen", &failover[0]]),
        "cluster init",
    );
    let admin = format!("{c1}/admin.cluster");
    let mut daemons = Daemons::default();
    daemons.spawn(
        h1.labspan_cmd(&["coordinator", "run", "--data", c1]),
        &h1.state.join("c1.log"),
    );
    for (i, listen) in failover.iter().enumerate().skip(1) {
        let name = format!("c{}", i + 1);
        let dir = join_member(h1, h1, &admin, "coordinator", &name, Some(listen.as_str()));
        daemons.spawn(
            h1.labspan_cmd(&["coordinator", "run", "--data", &dir]),
            &h1.state.join(format!("{name}.log")),
        );
    }
    // The CLI may use any coordinator.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&admin).expect("admin file")).expect("json");
    file["coordinators"] = serde_json::json!(failover);
    std::fs::write(&admin, file.to_string()).expect("admin file");
    let voters = |s: &serde_json::Value| {
        s["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["voter"] == true).count())
    };
    wait_until("three voting coordinators", Duration::from_secs(60), || {
        status_json(h1, &admin)
            .is_some_and(|s| voters(&s) == 3)
            .then_some(())
    });
    for (i, host) in fabric.hosts.iter().enumerate() {
        let dir = join_member(h1, host, &admin, "agent", &format!("h{}", i + 1), None);
        let vtep = host.vtep.expect("fabric host").to_string();
        daemons.spawn(
            host.labspan_cmd(&["agent", "run", "--data", &dir, "--vtep", &vtep]),
            &host.state.join("agent.log"),
        );
    }
    wait_until("both agents up", Duration::from_secs(30), || {
        let up = status_json(h1, &admin).and_then(|s| {
            s["hosts"]
                .as_array()
                .map(|h| h.iter().filter(|h| h["up"] == true).count())
        });
        (up == Some(2)).then_some(())
    });

    let lab = write_lab(h1, "duo.yaml", DUO);
    let out_path = h1.state.join("up.log");
    let mut up = Background::spawn(
        h1.labspan_cmd(&["up", lab.to_str().expect("utf-8 path"), "--cluster", &admin]),
        &out_path,
    );
    // Wait for a guest to run while the lab is still Deploying, then kill the leader.
    let (status, pids_before) = wait_until(
        "a guest of the lab running while it is Deploying",
        Duration::from_secs(60),
        || {
            let pids: Vec<Option<u32>> = [(h1, "a"), (h1, "b"), (h2, "a"), (h2, "b")]
                .iter()
                .map(|(h, n)| h.qemu_pid("duo", n))
                .collect();
            let status = status_json(h1, &admin);
            let deploying = status
                .as_ref()
                .and_then(|s| lab_status(s, "duo"))
                .is_some_and(|s| s == "Deploying");
            if deploying && pids.iter().any(Option::is_some) {
                status.map(|s| (s, pids))
            } else {
                None
            }
        },
    );
    let leader = status["leader"].as_u64().expect("a leader");
    let name = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == leader))
        .and_then(|m| m["name"].as_str())
        .expect("the leader is a member")
        .to_string();
    let at: usize = name
        .trim_start_matches('c')
        .parse()
        .expect("coordinator cN");
    let pid = daemons
        .pid(at - 1)
        .and_then(|p| i32::try_from(p).ok())
        .expect("the leader's pid");
    // SAFETY: kill(2) on a pid this test started and has not reaped yet.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let status = up.0.wait().expect("waiting for labspan up");
    let shown = std::fs::read_to_string(&out_path).unwrap_or_default();
    for c in ["c1", "c2", "c3"] {
        let log = std::fs::read_to_string(h1.state.join(format!("{c}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("resum")) {
            eprintln!("{c}: {line}");
        }
    }
    eprintln!("killed {name}; labspan up said:\n{shown}");
    assert!(status.success(), "labspan up after the failover:\n{shown}");
    assert!(shown.contains("PASS ping a -> b"), "{shown}");
    let after = status_json(h1, &admin).expect("status after the failover");
    assert_eq!(
        lab_status(&after, "duo").as_deref(),
        Some("Running"),
        "{after}"
    );
    assert_ne!(after["leader"].as_u64(), Some(leader), "{after}");
    let pids_after: Vec<Option<u32>> = [(h1, "a"), (h1, "b"), (h2, "a"), (h2, "b")]
        .iter()
        .map(|(h, n)| h.qemu_pid("duo", n))
        .collect();
    for (was, is) in pids_before.iter().zip(&pids_after) {
        if was.is_some() {
            assert_eq!(was, is, "a guest started before the failover was restarted");
        }
    }
    ok(
        &h1.labspan(&["down", "duo", "--cluster", &admin]),
        "labspan down --cluster",
    );
    drop(daemons);
}

/// A `labspan` run in the background, killed (by pid) if the test fails first.
struct Background(Child);

impl Background {
    fn spawn(mut cmd: Command, log: &Path) -> Background {
        let out = File::create(log).expect("creating a log");
        let err = out.try_clone().expect("cloning a log handle");
        Background(
            cmd.stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("starting labspan"),
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
