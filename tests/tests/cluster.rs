//! A real cluster over two test hosts (network namespaces joined by an
//! underlay): a coordinator and an agent daemon on h1, an agent daemon on
//! h2, all the `labspan` binary. `labspan up --cluster` deploys a lab whose
//! two nodes must run on different hosts; the leader places it, plans both
//! hosts and pushes each its plan; `verify` runs through the cluster's exec
//! path and a ping crosses the VXLAN segment between the hosts.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use labspan_tests::{text, write_lab, Fabric, TestHost};

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

const COORDINATOR: &str = "198.18.0.1:7100";

/// Daemons started by this test, stopped (SIGTERM, by pid) on drop.
struct Daemons(Vec<Child>);

impl Daemons {
    fn spawn(&mut self, mut cmd: Command, log: &Path) {
        let out = File::create(log).expect("creating a daemon log");
        let err = out.try_clone().expect("cloning a log handle");
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("starting a daemon");
        self.0.push(child);
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a pid this test started and has not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    text(out)
}

/// Retries `labspan ARGS` on `host` until it succeeds (a daemon starting), at most about 30 s.
fn until_ok(host: &TestHost, args: &[&str]) -> String {
    for _ in 0..60 {
        let out = host.labspan(args);
        if out.status.success() {
            return text(&out);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    ok(&host.labspan(args), &args.join(" "))
}

fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
}

#[test]
fn a_lab_spans_two_agent_daemons_through_the_control_plane() {
    let fabric = Fabric::new("cl", 2);
    let (h1, h2) = (&fabric.hosts[0], &fabric.hosts[1]);
    h1.ensure_tiny();
    let data = h1.state.join("c1");
    let data = data.to_str().expect("utf-8 path");
    ok(
        &h1.labspan(&["cluster", "init", "--data", data, "--listen", COORDINATOR]),
        "cluster init",
    );
    let admin = format!("{data}/admin.cluster");
    let mut daemons = Daemons(Vec::new());
    daemons.spawn(
        h1.labspan_cmd(&["coordinator", "run", "--data", data]),
        &h1.state.join("coordinator.log"),
    );

    for (i, host) in fabric.hosts.iter().enumerate() {
        let out = until_ok(
            h1,
            &["cluster", "token", "--role", "agent", "--cluster", &admin],
        );
        let (token, fingerprint) = (field(&out, "token:"), field(&out, "ca fingerprint:"));
        let dir = host.state.join("agent");
        let dir = dir.to_str().expect("utf-8 path");
        let name = format!("h{}", i + 1);
        let join = [
            "cluster",
            "join",
            COORDINATOR,
            "--token",
            token,
            "--ca-fingerprint",
            fingerprint,
            "--data",
            dir,
            "--name",
            &name,
        ];
        ok(&host.labspan(&join), "cluster join");
        let vtep = host.vtep.expect("fabric host").to_string();
        daemons.spawn(
            host.labspan_cmd(&["agent", "run", "--data", dir, "--vtep", &vtep]),
            &host.state.join("agent.log"),
        );
    }
    // Both agents registered and up.
    for _ in 0..60 {
        let status = ok(
            &h1.labspan(&["cluster", "status", "--cluster", &admin]),
            "cluster status",
        );
        if status.lines().filter(|l| l.ends_with(" up")).count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

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

    ok(
        &h1.labspan(&["down", "duo", "--cluster", &admin]),
        "labspan down --cluster",
    );
    assert_eq!((on(h1), on(h2)), (0, 0), "guests left after down");
    drop(daemons);
}
