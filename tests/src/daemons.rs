//! Daemons a test starts by hand (coordinators, agents) and the small
//! helpers the tests that drive them share.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{text, TestHost};

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
/// at most about 30 s.
pub fn until_ok(host: &TestHost, args: &[&str]) -> String {
    for _ in 0..60 {
        let out = host.labspan(args);
        if out.status.success() {
            return text(&out);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    ok(&host.labspan(args), &args.join(" "))
}

/// The value after `label` on the first line that starts with it.
pub fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
}
