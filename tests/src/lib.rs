//! The harness that builds test hosts: a network namespace and a state
//! folder per host, the `labspan` binary run inside it, and cleanup that
//! always runs (QEMU killed by pid, namespace and folder removed), even when
//! a test fails.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::fs;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use local_cluster::LocalCluster;

pub mod daemons;
pub mod local_cluster;
pub mod progress;
pub mod stats;

pub use labspan_testutil::{described, netns, wait_until, wait_until_async};

/// Where tests keep images, shared by every test host so `tiny` is built once.
pub const TEST_IMAGES: &str = "/var/lib/labspan/images";

static IMAGE_BUILD: Mutex<()> = Mutex::new(());

/// The `labspan` binary, built from this tree before first use: this
/// package cannot depend on a binary, so a stale one would be tested.
pub fn labspan_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            // Without the variables cargo set for this test (its package's
            // name, folder, ...): build scripts that watch them (ring's
            // does) would see them change, and this build, then the next
            // `cargo build` outside, would each rebuild ring and all that
            // depends on it.
            let mut cmd = Command::new(cargo);
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy().into_owned();
                let set_for_this_test = [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                ]
                .iter()
                .any(|p| key.starts_with(p))
                    || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"]
                        .contains(&key.as_str());
                if set_for_this_test {
                    cmd.env_remove(&key);
                }
            }
            let out = run(cmd
                .current_dir(&root)
                .args(["build", "-q", "-p", "labspan", "--bin", "labspan"]));
            assert!(out.status.success(), "building labspan: {}", text(&out));
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("debug/labspan")
        })
        .clone()
}

/// The trimmed standard output of a command that had to succeed; fails the
/// test with `what` and everything the command printed otherwise.
pub fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A command that had to be refused as bad input: exit status 2, and its
/// output says `says`.
pub fn refused(out: &Output, what: &str, says: &str) {
    assert_eq!(out.status.code(), Some(2), "{what}: {}", text(out));
    assert!(text(out).contains(says), "{what}: {}", text(out));
}

/// Runs a command and returns its output; panics (failing the test) when it
/// cannot be started at all.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Text of a command's stdout and stderr, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One test host: a network namespace and a state folder.
pub struct TestHost {
    pub netns: String,
    pub state: PathBuf,
    /// Its address on the fabric's underlay, when it is part of a `Fabric`.
    pub vtep: Option<IpAddr>,
    /// Whether this value made the namespace and the state folder and
    /// removes them on drop; a `Fabric`'s hosts are `cluster.sh`'s.
    owned: bool,
}

impl TestHost {
    /// A fresh host named after `tag` (unique per test).
    pub fn new(tag: &str) -> TestHost {
        let netns = format!("lst-{tag}-{}", std::process::id());
        let state = std::env::temp_dir().join(format!("labspan-test-{tag}-{}", std::process::id()));
        let host = TestHost {
            netns,
            state,
            vtep: None,
            owned: true,
        };
        host.cleanup();
        let out = run(Command::new("ip").args(["netns", "add", &host.netns]));
        assert!(
            out.status.success(),
            "ip netns add {}: {}",
            host.netns,
            text(&out)
        );
        host.ip(&["link", "set", "lo", "up"]);
        fs::create_dir_all(&host.state).expect("creating the test state folder");
        host.link_images();
        host
    }

    /// A host that `cluster.sh hosts` made: namespace `netns` with `eth0`
    /// at `vtep`, state folder `state`; this value only links the shared
    /// image store into it, and `cluster.sh down` removes it all.
    fn adopt(netns: String, state: PathBuf, vtep: IpAddr) -> TestHost {
        let host = TestHost {
            netns,
            state,
            vtep: Some(vtep),
            owned: false,
        };
        host.link_images();
        host
    }

    /// `images` in the state folder: a link to [`TEST_IMAGES`].
    fn link_images(&self) {
        fs::create_dir_all(TEST_IMAGES).expect("creating the shared image store");
        std::os::unix::fs::symlink(TEST_IMAGES, self.state.join("images"))
            .expect("linking the shared image store");
    }

    /// `ADDRESS:port` of this host on its fabric's underlay.
    pub fn underlay_addr(&self, port: u16) -> String {
        let ip = self.vtep.expect("a host of a Fabric");
        SocketAddr::new(ip, port).to_string()
    }

    /// Builds `tiny` into the shared store once per test process.
    pub fn ensure_tiny(&self) {
        self.ensure_image("tiny");
    }

    /// Builds the image recipe `name` (`tiny`, `tiny-router`) into the
    /// shared store; a cached recipe costs only the apt look-up.
    pub fn ensure_image(&self, name: &str) {
        build_image(name);
    }

    /// Runs `labspan ARGS` inside this host, under TCG.
    pub fn labspan(&self, args: &[&str]) -> Output {
        run(&mut self.labspan_cmd(args))
    }

    /// The command for `labspan ARGS` inside this host (to spawn it yourself).
    pub fn labspan_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(labspan_bin())
            .args(args);
        cmd.env("LABSPAN_STATE", &self.state)
            .env("LABSPAN_ACCEL", "tcg");
        cmd
    }

    /// Runs the future `make` returns on a current-thread runtime, in a
    /// thread that has entered this host's namespace (netlink sockets and
    /// child processes such as QEMU live there).
    pub fn block_on<T: Send, F: Future<Output = T>>(&self, make: impl FnOnce() -> F + Send) -> T {
        netns::block_on_in(&self.netns, make)
    }

    /// Runs `ip ARGS` inside this host.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["-n", &self.netns]).args(args))
    }

    /// Names of every interface in this host.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Interfaces labspan made (its names start with `ls`).
    pub fn labspan_links(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|n| n.starts_with("ls"))
            .collect()
    }

    /// QEMU pid of `node` of `lab`, from its pidfile, if it is alive.
    pub fn qemu_pid(&self, lab: &str, node: &str) -> Option<u32> {
        let pidfile = self.state.join("vms").join(lab).join(node).join("qemu.pid");
        let pid: u32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
        is_qemu(pid).then_some(pid)
    }

    /// Every file left under the VM folders.
    pub fn vm_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut stack = vec![self.state.join("vms")];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files
    }

    /// Kills this host's QEMUs (by the pids in their pidfiles), removes the
    /// namespace and the state folder. Idempotent.
    fn cleanup(&self) {
        let vms = self.state.join("vms");
        for lab in fs::read_dir(&vms).into_iter().flatten().flatten() {
            for node in fs::read_dir(lab.path()).into_iter().flatten().flatten() {
                let pid = fs::read_to_string(node.path().join("qemu.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    labspan_testutil::process::kill_if(pid, is_qemu_cmdline);
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.state);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if self.owned {
            self.cleanup();
        }
    }
}

/// Builds the image recipe `name` into [`TEST_IMAGES`], once per test
/// process (a cached recipe costs only the apt look-up).
pub fn build_image(name: &str) {
    let _guard = IMAGE_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    // In the root namespace: the build downloads Debian packages.
    let out =
        run(Command::new(labspan_bin()).args(["image", "build", name, "--store", TEST_IMAGES]));
    assert!(
        out.status.success(),
        "labspan image build {name}: {}",
        text(&out)
    );
}

/// Whether `pid` is a live QEMU. Read from `/proc`, not held by a pidfd:
/// the harness never starts a QEMU (an agent does, and QEMU daemonizes),
/// so all it has is the pid in a pidfile, which may be another process's
/// by now. To signal one, use `labspan_testutil::process::kill_if` with
/// [`is_qemu_cmdline`], which checks the process its pidfd holds.
pub fn is_qemu(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && is_qemu_cmdline(&cmdline)
}

/// Whether a NUL-separated command line (`/proc/PID/cmdline`) is a QEMU's.
pub fn is_qemu_cmdline(cmdline: &[u8]) -> bool {
    String::from_utf8_lossy(cmdline).contains("qemu-system")
}

/// QMP `query-status` of the QEMU whose QMP socket is `sock`: its run state
/// (`running`, `paused`, ...), or `None` if it does not answer within a
/// second (QEMU serves one QMP client at a time: an agent may hold it).
pub fn qmp_status(sock: &Path) -> Option<String> {
    let status = qmp(sock, "query-status")?;
    status["status"].as_str().map(String::from)
}

/// Runs QMP `command` (no arguments) on the QEMU whose QMP socket is
/// `sock`; its `return` value, or `None` without an answer within a second.
pub fn qmp(sock: &Path, command: &str) -> Option<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let timeout = Some(std::time::Duration::from_secs(1));
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(timeout).ok()?;
    s.set_write_timeout(timeout).ok()?;
    let mut lines = BufReader::new(s.try_clone().ok()?);
    let mut reply = |command: Option<&str>| -> Option<serde_json::Value> {
        if let Some(c) = command {
            s.write_all(format!("{{\"execute\":\"{c}\"}}\n").as_bytes())
                .ok()?;
        }
        // Events may come first; a few lines at most.
        for _ in 0..16 {
            let mut line = String::new();
            if lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            if command.is_none() || v.get("return").is_some() {
                return Some(v);
            }
        }
        None
    };
    reply(None)?.get("QMP")?;
    reply(Some("qmp_capabilities"))?;
    reply(Some(command))?.get("return").cloned()
}

/// Writes a lab file into the host's state folder and returns its path.
pub fn write_lab(host: &TestHost, file: &str, yaml: &str) -> PathBuf {
    let path = host.state.join(file);
    fs::write(&path, yaml).expect("writing the lab file");
    path
}

/// Several test hosts joined by an underlay, made by `deploy/cluster.sh
/// hosts N` (as `cluster.sh up` makes a cluster's hosts, without its
/// daemons): namespaces `lsc-TAG-PID-host1..N` whose `eth0` (198.18.X.N/24,
/// MTU 1500, X free in the root namespace) meet on a bridge in
/// `lsc-TAG-PID-underlay`. The tests run their own daemons or agents in
/// them. `cluster.sh down` removes everything on drop, after a panic too:
/// QEMUs by pidfile, namespaces, root veth and state folders.
pub struct Fabric {
    pub hosts: Vec<TestHost>,
    /// Held for its drop, `cluster.sh down`.
    _cluster: LocalCluster,
}

impl Fabric {
    /// `n` hosts at 198.18.X.1..n, named after `tag` (a few lowercase
    /// letters) and this process.
    pub fn new(tag: &str, n: u8) -> Fabric {
        let n = usize::from(n);
        let mut cluster = LocalCluster::new(tag);
        let out = cluster.make_hosts(n);
        assert!(
            out.status.success(),
            "deploy/cluster.sh hosts {n} ({}): {}",
            cluster.name,
            text(&out)
        );
        let hosts = (1..=n)
            .map(|i| {
                let vtep = IpAddr::V4(cluster.addr(i));
                TestHost::adopt(cluster.netns(i), cluster.host_state(i), vtep)
            })
            .collect();
        Fabric {
            hosts,
            _cluster: cluster,
        }
    }
}
