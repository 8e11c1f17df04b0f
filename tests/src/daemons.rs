//! Daemons a test starts by hand (coordinators, agents) and the small
//! helpers the tests that drive them share.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use std::cell::RefCell;

use crate::{described, text, wait_until, Fabric, TestHost};

/// Daemons started by a test, stopped (SIGTERM, by pid) on drop.
#[derive(Default)]
pub struct Daemons(Vec<Child>);

impl Daemons {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(&mut self, mut cmd: Command, log: &Path) {
        let out = File::create(log).expect("creating a daemon log");
        let err = out.try_clone().expect("cloning a log handle");
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("starting a daemon");
        self.0.push(child);
    }

    /// The pid of the `i`-th daemon started (0-based), if there is one.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.0.get(i).map(Child::id)
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

/// The output of a command that must have succeeded.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    text(out)
}

/// Retries `labspan ARGS` on `host` until it succeeds (a daemon starting),
/// for at most 30 s.
pub fn until_ok(host: &TestHost, args: &[&str]) -> String {
    let last = RefCell::new(String::new());
    let what = described(|| {
        format!(
            "`labspan {}` to succeed; it last said: {}",
            args.join(" "),
            last.borrow()
        )
    });
    wait_until(what, Duration::from_secs(30), || {
        let out = host.labspan(args);
        *last.borrow_mut() = text(&out);
        out.status.success().then(|| text(&out))
    })
}

/// The value after `label` on the first line that starts with it.
pub fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
}

/// Starts a coordinator listening on `coordinator` in the first host of
/// `fabric` and an agent daemon (`h1`, `h2`, ...) on every host, all kept
/// in `daemons`; waits until every host is up and returns the admin
/// cluster file.
pub fn start_cluster(fabric: &Fabric, coordinator: &str, daemons: &mut Daemons) -> String {
    let h1 = &fabric.hosts[0];
    let data = h1.state.join("c1");
    let data = data.to_str().expect("utf-8 path").to_string();
    ok(
        &h1.labspan(&["cluster", "init", "--data", &data, "--listen", coordinator]),
        "cluster init",
    );
    let admin = format!("{data}/admin.cluster");
    daemons.spawn(
        h1.labspan_cmd(&["coordinator", "run", "--data", &data]),
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
            coordinator,
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
        let mut agent = host.labspan_cmd(&["agent", "run", "--data", dir, "--vtep", &vtep]);
        agent.env("LABSPAN_LOG", "info");
        daemons.spawn(agent, &host.state.join("agent.log"));
    }
    let hosts = fabric.hosts.len();
    let up = std::cell::Cell::new(0);
    let what = described(|| {
        format!(
            "{hosts} hosts up, {} are (logs in each host's state folder)",
            up.get()
        )
    });
    wait_until(what, Duration::from_secs(30), || {
        let out = h1.labspan(&["cluster", "status", "--json", "--cluster", &admin]);
        ok(&out, "cluster status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        up.set(
            (status["hosts"].as_array().into_iter().flatten())
                .filter(|h| h["up"] == true)
                .count(),
        );
        (up.get() == hosts).then_some(())
    });
    admin
}
