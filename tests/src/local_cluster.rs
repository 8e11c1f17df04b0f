//! A local multi-host cluster made by `deploy/cluster.sh` itself (the script
//! users run): lab hosts as namespaces on an underlay, 3 coordinators and an
//! agent per host. Each value has its own name, root link, state folder and
//! 198.18.X.0/24 subnet, so test binaries can run side by side; dropping it
//! runs `cluster.sh down`, which stops every lab, QEMU and daemon by pid.
//! [`crate::Fabric`] uses the same script for the hosts alone (`cluster.sh
//! hosts N`) and runs its own daemons or agents in them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::{described, is_qemu, labspan_bin, run, text, wait_until};

/// One cluster made by `deploy/cluster.sh up N`.
pub struct LocalCluster {
    /// Namespace prefix: hosts are `NAME-host1..N`.
    pub name: String,
    /// Number of lab hosts.
    pub hosts: usize,
    /// Third byte of the underlay: hosts are 198.18.X.1..N.
    pub net: u8,
    /// Memory each host offers (`LABSPAN_HOST_MEMORY`, e.g. `1500MiB`);
    /// `None` for an equal share of this machine's.
    pub host_memory: Option<String>,
    /// Every host starts with the images (`LABSPAN_CLUSTER_IMAGES=all`),
    /// not only host1.
    pub images_everywhere: bool,
    /// Each coordinator keeps its data on a tmpfs of this size
    /// (`LABSPAN_CLUSTER_COORDINATOR_DISK`, e.g. `64M`), so that `fill`
    /// can make its disk full.
    pub coordinator_disk: Option<String>,
    link: String,
    state: PathBuf,
    /// Whether the script runs the `labspan` daemons (`up`), so it needs
    /// the binary; not for the hosts alone (`hosts`).
    daemons: bool,
    /// Holds the subnet `free_subnet` found against other test processes
    /// until this cluster is dropped (the lock goes with the process).
    _subnet: std::fs::File,
}

impl LocalCluster {
    /// `cluster.sh up n` under a name made from `tag` (a few lowercase
    /// letters) and this process, on a subnet the root namespace does not use.
    pub fn up(tag: &str, n: usize) -> LocalCluster {
        let mut cluster = LocalCluster::new(tag);
        let out = cluster.start(n);
        assert!(
            out.status.success(),
            "deploy/cluster.sh up {n} ({}): {}",
            cluster.name,
            text(&out)
        );
        cluster
    }

    /// The settings of a cluster made from `tag`, not started yet (its
    /// `name` and `net` may be changed before [`LocalCluster::start`]).
    pub fn new(tag: &str) -> LocalCluster {
        remove_orphans();
        let pid = std::process::id();
        let (net, subnet) = free_subnet(tag);
        LocalCluster {
            name: format!("lsc-{tag}-{pid}"),
            hosts: 0,
            net,
            host_memory: None,
            images_everywhere: false,
            coordinator_disk: None,
            link: format!("lc{tag}{pid}").chars().take(15).collect(),
            state: std::env::temp_dir().join(format!("labspan-cluster-{tag}-{pid}")),
            daemons: true,
            _subnet: subnet,
        }
    }

    /// Runs `cluster.sh up n` with these settings; its output says how it went.
    pub fn start(&mut self, n: usize) -> Output {
        self.hosts = n;
        self.daemons = true;
        run(self.script().args(["up", &n.to_string()]))
    }

    /// Runs `cluster.sh hosts n` with these settings: the hosts, their
    /// underlay and the root veth alone, no daemon; its output says how it
    /// went. `down` (on drop) removes them.
    pub fn make_hosts(&mut self, n: usize) -> Output {
        self.hosts = n;
        self.daemons = false;
        run(self.script().args(["hosts", &n.to_string()]))
    }

    /// `deploy/cluster.sh` with this cluster's settings in its environment.
    fn script(&self) -> Command {
        let subnet = format!("198.18.{}.0/24", self.net);
        let mut cmd = cluster_sh(&self.name, &self.link, &self.state, &subnet);
        cmd.env("LABSPAN_ACCEL", "tcg");
        if self.daemons {
            cmd.env("LABSPAN_BIN", labspan_bin());
        }
        if let Some(memory) = &self.host_memory {
            cmd.env("LABSPAN_HOST_MEMORY", memory);
        }
        if self.images_everywhere {
            cmd.env("LABSPAN_CLUSTER_IMAGES", "all");
        }
        if let Some(size) = &self.coordinator_disk {
            cmd.env("LABSPAN_CLUSTER_COORDINATOR_DISK", size);
        }
        cmd
    }

    /// The admin cluster file the CLI uses.
    pub fn admin(&self) -> PathBuf {
        self.state.join("admin.cluster")
    }

    /// A copy of the admin cluster file that names only the coordinator
    /// of host `i`: a command given it talks to the cluster through that
    /// coordinator alone (it forwards to the leader), whatever happens to
    /// the other hosts.
    pub fn admin_through(&self, i: usize) -> PathBuf {
        let text = std::fs::read_to_string(self.admin()).expect("the admin cluster file");
        let mut file: Value = serde_json::from_str(&text).expect("the admin cluster file is JSON");
        let host = format!("{}:", self.addr(i));
        let named = file["coordinators"].as_array().cloned().unwrap_or_default();
        let only: Vec<Value> = named
            .into_iter()
            .filter(|c| c.as_str().is_some_and(|c| c.starts_with(&host)))
            .collect();
        assert_eq!(
            only.len(),
            1,
            "one coordinator of host{i} in the admin file"
        );
        file["coordinators"] = Value::Array(only);
        self.write_file(
            &format!("admin-c{i}.cluster"),
            &serde_json::to_string_pretty(&file).expect("JSON"),
        )
    }

    /// Writes `text` as `file` in the cluster's state folder (removed by
    /// `down`) and returns its path.
    pub fn write_file(&self, file: &str, text: &str) -> PathBuf {
        let path = self.state.join(file);
        std::fs::write(&path, text).expect("writing into the cluster's state folder");
        path
    }

    /// Pushes image `name` to the cluster: `tiny`'s kernel and initramfs
    /// over an empty 64 MiB qcow2 disk (imported into a store in the
    /// cluster's state folder), so that a guest has a real disk to write.
    pub fn push_disk_image(&self, name: &str) {
        let tiny = labspan_image::ImageStore::at(crate::TEST_IMAGES)
            .get("tiny")
            .expect("the tiny image");
        let disk = self.write_file(&format!("{name}.qcow2"), "");
        let made = run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M"));
        crate::stdout_ok(&made, "qemu-img create");
        let store = disk.with_file_name(format!("{name}-store"));
        let store = store.to_str().expect("utf-8");
        let imported = run(Command::new(labspan_bin())
            .args(["image", "import", "--name", name, "--kernel"])
            .arg(tiny.kernel_path().expect("tiny's kernel"))
            .arg("--initrd")
            .arg(tiny.initrd_path().expect("tiny's initramfs"))
            .args(["--cmdline", &tiny.manifest.cmdline, "--store", store])
            .arg(&disk));
        crate::stdout_ok(&imported, "labspan image import");
        crate::stdout_ok(
            &self.labspan(&["image", "push", name, "--store", store]),
            "labspan image push",
        );
    }

    /// Runs `labspan ARGS` in the root namespace against this cluster.
    pub fn labspan(&self, args: &[&str]) -> Output {
        run(Command::new(labspan_bin())
            .args(args)
            .env("LABSPAN_CLUSTER", self.admin()))
    }

    /// Namespace of host `i` (1-based).
    pub fn netns(&self, i: usize) -> String {
        format!("{}-host{i}", self.name)
    }

    /// Address of host `i` (1-based) on the underlay (its `eth0`).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let i = u8::try_from(i).expect("a host number below 256");
        Ipv4Addr::new(198, 18, self.net, i)
    }

    /// The state folder of host `i` (`LABSPAN_STATE` of its daemons).
    pub fn host_state(&self, i: usize) -> PathBuf {
        self.state.join(format!("host{i}/state"))
    }

    /// Where daemon `what` (`coordinator`, `agent`) of host `i` serves its
    /// metrics: the default address, reachable from the root namespace.
    pub fn metrics_url(&self, i: usize, what: &str) -> String {
        let port = match what {
            "coordinator" => labspan_coordinator::metrics::DEFAULT_PORT,
            _ => labspan_agent::metrics::DEFAULT_PORT,
        };
        format!("http://{}:{port}/metrics", self.addr(i))
    }

    /// Runs `ip ARGS` inside host `i`.
    pub fn ip(&self, i: usize, args: &[&str]) -> Output {
        run(Command::new("ip").args(["-n", &self.netns(i)]).args(args))
    }

    /// QEMU pid of `node` of `lab` on host `i`, if one is alive there.
    pub fn qemu_pid(&self, i: usize, lab: &str, node: &str) -> Option<u32> {
        let pidfile = self.vm_dir(i, lab, node).join("qemu.pid");
        let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
        is_qemu(pid).then_some(pid)
    }

    /// Every (host, pid) that runs a QEMU of `node` of `lab`.
    pub fn running(&self, lab: &str, node: &str) -> Vec<(usize, u32)> {
        (1..=self.hosts)
            .filter_map(|i| self.qemu_pid(i, lab, node).map(|p| (i, p)))
            .collect()
    }

    /// What labspan left on host `i`: its interfaces (`ls` prefix, see
    /// proto's names) and every FDB entry on them.
    pub fn leftovers(&self, i: usize) -> Vec<String> {
        let links = self.ip(i, &["-o", "link", "show"]);
        let mut left: Vec<String> = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .filter(|n| n.starts_with("ls"))
            .collect();
        let fdb = run(Command::new("bridge").args(["-n", &self.netns(i), "fdb", "show"]));
        left.extend(
            String::from_utf8_lossy(&fdb.stdout)
                .lines()
                .filter(|l| l.contains(" dev ls"))
                .map(|l| format!("fdb: {l}")),
        );
        left
    }

    /// `cluster status --json`, if a coordinator answers.
    pub fn status(&self) -> Option<Value> {
        let out = self.labspan(&["cluster", "status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The status text of `lab` (`Running`, `Degraded: ...`).
    pub fn lab_status(&self, lab: &str) -> Option<String> {
        self.status()?["labs"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == lab)
            .and_then(|l| l["status"].as_str().map(String::from))
    }

    /// Whether the cluster has host `hostN` marked up.
    pub fn host_up(&self, i: usize) -> Option<bool> {
        let name = format!("host{i}");
        self.status()?["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == name.as_str())
            .and_then(|h| h["up"].as_bool())
    }

    /// The host (1-based) of the coordinator that leads now.
    pub fn leader_host(&self) -> Option<usize> {
        let status = self.status()?;
        let leader = status["leader"].as_u64()?;
        let member = status["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == leader)?;
        member["name"]
            .as_str()?
            .trim_start_matches('c')
            .parse()
            .ok()
    }

    /// Waits until `check` holds ([`wait_until`]); fails with `what` and the
    /// cluster's status after `limit` (a generous bound, not a timing
    /// assertion).
    pub fn wait_for<T>(&self, what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
        let what = described(|| {
            format!(
                "{what}; cluster status: {}",
                self.status().map(|s| s.to_string()).unwrap_or_default()
            )
        });
        wait_until(what, limit, check)
    }

    /// `kill -9` of the coordinator on host `i` (by its pidfile, after
    /// checking the pid is still that coordinator); false if none runs.
    pub fn kill_coordinator(&self, i: usize) -> bool {
        self.kill_daemon(i, "coordinator")
    }

    /// `kill -9` of daemon `what` (`coordinator`, `agent`) on host `i`, by
    /// its pidfile, after checking the pid is still that daemon; false if
    /// none runs. An agent's QEMUs outlive it (they are daemonized).
    pub fn kill_daemon(&self, i: usize, what: &str) -> bool {
        let Some(pid) = self.daemon_pid(i, what) else {
            return false;
        };
        labspan_testutil::process::kill_if(pid, runs_daemon(what))
    }

    /// The pid of daemon `what` (`coordinator`, `agent`) on host `i`, from
    /// its pidfile, if that process still runs as that daemon.
    ///
    /// By its command line, not by a pidfd kept from its start: the daemons
    /// are started by `deploy/cluster.sh` (`up`, `start`), not by this
    /// harness, which has only the pidfile the script wrote.
    pub fn daemon_pid(&self, i: usize, what: &str) -> Option<i32> {
        let pidfile = self.state.join(format!("host{i}/{what}.pid"));
        let pid = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())?;
        labspan_testutil::process::open_if(pid, runs_daemon(what)).map(|_| pid)
    }

    /// `cluster.sh start I WHAT`: daemon `what` of host `i` started again.
    pub fn start_daemon(&self, i: usize, what: &str) -> Output {
        run(self.script().args(["start", &i.to_string(), what]))
    }

    /// The folder of `node` of `lab` on host `i` (`qemu.pid`, `qmp.sock`).
    pub fn vm_dir(&self, i: usize, lab: &str, node: &str) -> PathBuf {
        self.host_state(i).join(format!("vms/{lab}/{node}"))
    }

    /// Every live QEMU of every host: (host, lab, node, pid), read from the
    /// agents' VM folders.
    pub fn qemus(&self) -> Vec<(usize, String, String, u32)> {
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|r| {
                    r.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for i in 1..=self.hosts {
            let vms = self.host_state(i).join("vms");
            for lab in names(&vms) {
                for node in names(&vms.join(&lab)) {
                    if let Some(pid) = self.qemu_pid(i, &lab, &node) {
                        out.push((i, lab.clone(), node, pid));
                    }
                }
            }
        }
        out
    }

    /// `cluster.sh ACTION I`: `cut`, `partition-control`, `fill` or `heal`
    /// of host `i`.
    pub fn fault(&self, action: &str, i: usize) -> Output {
        run(self.script().args([action, &i.to_string()]))
    }

    /// The log of daemon `what` (`agent`, `coordinator`) of host `i`.
    pub fn log(&self, i: usize, what: &str) -> String {
        std::fs::read_to_string(self.state.join(format!("host{i}/{what}.log"))).unwrap_or_default()
    }

    /// `cluster.sh down` (idempotent; the drop runs it again).
    pub fn down(&self) -> Output {
        run(self.script().arg("down"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let out = self.down();
        if !out.status.success() {
            eprintln!("deploy/cluster.sh down ({}): {}", self.name, text(&out));
        }
    }
}

/// Removes the clusters of test processes that died without their drop
/// (killed by a signal, by nextest's timeout): each `LocalCluster` keeps its
/// settings in `$TMPDIR/labspan-cluster-TAG-PID/cluster.env`, so one whose
/// PID no longer runs is `down`ed with them. One sweep at a time (a lock
/// file), and never a cluster whose process still runs.
fn remove_orphans() {
    let tmp = std::env::temp_dir();
    let lock = tmp.join("labspan-cluster-sweep.lock");
    let Ok(lock) = std::fs::File::create(&lock) else {
        return;
    };
    if lock.lock().is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let state = entry.path();
        let Some([name, link, subnet]) = orphan_settings(&state) else {
            continue;
        };
        let out = run(cluster_sh(&name, &link, &state, &subnet).arg("down"));
        eprintln!(
            "removed the cluster of a test process that is gone ({}): {}",
            state.display(),
            text(&out).trim()
        );
    }
}

/// `deploy/cluster.sh` for the cluster `name` with root link `link`, state
/// folder `state` and underlay `subnet` (the settings `cluster.sh` records in
/// `STATE/cluster.env`).
pub fn cluster_sh(name: &str, link: &str, state: &Path, subnet: &str) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(root.join("deploy/cluster.sh"));
    cmd.env("LABSPAN_CLUSTER_NAME", name)
        .env("LABSPAN_CLUSTER_LINK", link)
        .env("LABSPAN_CLUSTER_STATE", state)
        .env("LABSPAN_CLUSTER_SUBNET", subnet);
    cmd
}

/// The name, link and subnet of the cluster in `state` when it is a test
/// cluster (`labspan-cluster-TAG-PID` with its `cluster.env`) whose process
/// is gone.
fn orphan_settings(state: &Path) -> Option<[String; 3]> {
    let name = state.file_name()?.to_str()?;
    let (_, pid) = name.strip_prefix("labspan-cluster-")?.rsplit_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    let env = std::fs::read_to_string(state.join("cluster.env")).ok()?;
    let settings: std::collections::BTreeMap<String, String> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let [name, link, subnet] = ["name", "link", "subnet"].map(|k| settings.get(k).cloned());
    // Only what `cluster.sh` itself recorded for a test cluster.
    let name = name.filter(|n| n.starts_with("lsc-"))?;
    Some([name, link?, subnet?])
}

/// A 198.18.X.0/24 (X in 100..=250) that no address or route of the root
/// namespace touches, reserved for this cluster: an exclusive lock on
/// `$TMPDIR/labspan-subnet-198.18.X.lock`, held until the returned file is
/// dropped (or the process dies), so two test processes building clusters
/// at the same moment never take the same one between the check and
/// `cluster.sh up`. The search starts from a place that depends on this
/// process, so they rarely even try the same.
fn free_subnet(tag: &str) -> (u8, std::fs::File) {
    let seed = std::process::id() as usize + tag.bytes().map(usize::from).sum::<usize>();
    (0..151)
        .map(|k| 100 + ((seed + k) % 151) as u8)
        .find_map(|x| {
            let lock = std::env::temp_dir().join(format!("labspan-subnet-198.18.{x}.lock"));
            let file = std::fs::File::create(&lock)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock.display()));
            file.try_lock().ok()?;
            let subnet = format!("198.18.{x}.0/24");
            let addrs = run(Command::new("ip").args(["-4", "-o", "addr", "show", "to", &subnet]));
            let routes =
                run(Command::new("ip")
                    .args(["-4", "route", "show", "table", "all", "root", &subnet]));
            (addrs.stdout.is_empty() && routes.stdout.is_empty()).then_some((x, file))
        })
        .expect("a free 198.18.X.0/24 in 100..=250")
}

/// Whether a NUL-separated command line is `labspan WHAT run ...`, the
/// daemon `deploy/cluster.sh` starts.
fn runs_daemon(what: &str) -> impl Fn(&[u8]) -> bool {
    let daemon = format!("{what}\0run");
    move |cmdline| String::from_utf8_lossy(cmdline).contains(&daemon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_found_is_reserved_until_its_file_is_dropped() {
        // The same tag in the same process starts the search at the same
        // place: only the reservation makes the second search move on.
        let (first, held) = free_subnet("sub");
        let (second, _other) = free_subnet("sub");
        assert_ne!(first, second);
        drop(held);
        let lock = std::env::temp_dir().join(format!("labspan-subnet-198.18.{first}.lock"));
        let file = std::fs::File::open(&lock).expect("the lock file stays");
        assert!(file.try_lock().is_ok(), "{} still locked", lock.display());
    }
}
