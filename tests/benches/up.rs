//! `labspan up` on one host against bare QEMU boots of the same guest
//! (docs/benchmarks.md, "Deploying on one host").
//!
//! For each size N and each round:
//! - labspan: `labspan up --no-verify` of a lab of N `tiny` guests (256 MiB,
//!   1 vCPU, one NIC each on one shared LAN; one guest: its NIC
//!   unconnected), timed from the start of the process to its exit: labspan
//!   exits once every guest agent has answered and the guest's addresses
//!   are applied. Peak RSS of the labspan process itself is its `VmHWM`,
//!   sampled from /proc while it runs (wait4's ru_maxrss would also count
//!   QEMU's pre-daemonize parent). QEMU RSS is each VM's `VmRSS` right
//!   after `up` returns.
//! - bare: N `qemu-system-x86_64` processes with exactly the argv labspan
//!   gave its first QEMU (read from /proc/PID/cmdline, checked against the
//!   kernel, initrd and cmdline in its `vm.json`), only the state folder,
//!   VM name, tap and MAC changed; taps on one bridge made with `ip`. Timed
//!   from the first spawn until every guest agent answered `guest-sync`
//!   (one connection per VM, a new guest-sync every 0.5 s until one is
//!   answered: close to the earliest moment the agent can answer).
//!
//! Rounds interleave the sizes and both modes, so background load drifts
//! over all of them alike. Everything runs in a test host (a network
//! namespace and a state folder of its own, removed at the end with the
//! QEMUs started there).
//!
//! `cargo build --release -p labspan && cargo bench -p labspan-tests --bench up`,
//! as root. Environment: `REPEAT` (rounds, default 5), `SIZES` (default
//! "1 4 8"), `LABSPAN_BIN` (default target/release/labspan), `OUT` (write
//! every measurement there as JSON).

#![allow(clippy::expect_used, clippy::panic)] // a bench: failing loudly is its job

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use labspan_tests::stats::{median, range};
use labspan_tests::{is_qemu, text, TestHost, TEST_IMAGES};
use serde_json::{json, Value};

/// How long a guest agent may take to answer.
const QGA_DEADLINE: Duration = Duration::from_secs(300);
/// The reconciler's "configured" marker.
const CONFIGURED: &str = "configured.json";
/// How often the labspan process is sampled while it runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

struct Options {
    repeat: usize,
    sizes: Vec<usize>,
    bin: PathBuf,
    out: Option<PathBuf>,
}

fn options() -> Result<Options> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repeat = match std::env::var("REPEAT") {
        Ok(r) => r
            .parse()
            .with_context(|| format!("REPEAT={r:?}: not a number"))?,
        Err(_) => 5,
    };
    let sizes = std::env::var("SIZES").unwrap_or_else(|_| "1 4 8".into());
    let sizes = sizes
        .split_whitespace()
        .map(|s| {
            s.parse()
                .with_context(|| format!("SIZES: {s:?} is not a number"))
        })
        .collect::<Result<Vec<usize>>>()?;
    ensure!(
        !sizes.is_empty() && !sizes.contains(&0),
        "SIZES: give VM counts, e.g. \"1 4 8\""
    );
    let bin = std::env::var_os("LABSPAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("release/labspan")
        });
    ensure!(
        bin.is_file(),
        "no labspan binary at {}: cargo build --release -p labspan (or set LABSPAN_BIN)",
        bin.display()
    );
    Ok(Options {
        repeat,
        sizes,
        bin,
        out: std::env::var_os("OUT").map(PathBuf::from),
    })
}

fn log(msg: &str) {
    eprintln!("[{:.0?}] {msg}", started().elapsed());
}

fn started() -> &'static Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now)
}

/// A `kB` field of /proc/PID/status, or None once the process is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of the process itself (all its threads), or None.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(ticks as f64 / hz as f64)
}

fn read_pid(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid", path.display()))
}

/// Pids from the qemu.pid files one level below `folder`, by VM name.
fn qemu_pids(folder: &Path) -> Result<BTreeMap<String, u32>> {
    let mut pids = BTreeMap::new();
    for entry in fs::read_dir(folder).with_context(|| format!("listing {}", folder.display()))? {
        let entry = entry?;
        let pidfile = entry.path().join("qemu.pid");
        if pidfile.exists() {
            pids.insert(
                entry.file_name().to_string_lossy().into_owned(),
                read_pid(&pidfile)?,
            );
        }
    }
    Ok(pids)
}

/// SIGTERM the given QEMUs (ours, by pidfile), SIGKILL stragglers after 10 s.
fn stop_qemus(pids: &[u32]) {
    for pid in pids.iter().filter(|p| is_qemu(**p)) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in pids {
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_qemu(pid) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The test host, the labspan binary, and what runs in them.
struct Bench {
    host: TestHost,
    bin: PathBuf,
}

impl Bench {
    /// `labspan ARGS` inside the host, under TCG.
    fn labspan(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.netns])
            .arg(&self.bin)
            .args(args)
            .env("LABSPAN_STATE", &self.host.state)
            .env("LABSPAN_ACCEL", "tcg");
        cmd
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = self.host.ip(args);
        ensure!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            text(&out)
        );
        Ok(())
    }

    /// A lab of n tiny guests on one LAN (one guest: its NIC unconnected).
    fn lab_file(&self, n: usize) -> Result<(String, PathBuf)> {
        let name = format!("bench{n}");
        let mut lines = vec![
            format!("name: {name}"),
            "defaults: {image: tiny, memory: 256MiB, cpus: 1}".to_string(),
            "nodes:".to_string(),
        ];
        for i in 1..=n {
            lines.push(format!("  n{i}:"));
            lines.push("    nics:".to_string());
            lines.push(format!("      eth0: {{ip: [198.19.100.{i}/24]}}"));
        }
        if n > 1 {
            let members: Vec<String> = (1..=n).map(|i| format!("n{i}:eth0")).collect();
            lines.push("lans:".to_string());
            lines.push(format!("  lan: [{}]", members.join(", ")));
        }
        let path = self.host.state.join(format!("{name}.yaml"));
        fs::write(&path, lines.join("\n") + "\n")?;
        Ok((name, path))
    }

    /// One timed `labspan up --no-verify`, then the lab is taken down.
    fn run_labspan(&self, n: usize) -> Result<LabspanRun> {
        let (name, path) = self.lab_file(n)?;
        let path = path.to_string_lossy().into_owned();
        let t0_wall = SystemTime::now();
        let t0 = Instant::now();
        let mut child = self
            .labspan(&["up", "--no-verify", &path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning labspan up")?;
        // `ip netns exec` execs labspan in place: the pid is labspan's.
        let pid = child.id();
        let mut stdout = child.stdout.take().context("labspan's stdout")?;
        let mut stderr = child.stderr.take().context("labspan's stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (mut hwm, mut cpu) = (0u64, 0f64);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            hwm = hwm.max(status_kib(pid, "VmHWM").unwrap_or(0));
            cpu = cpu.max(cpu_seconds(pid).unwrap_or(0.0));
            std::thread::sleep(SAMPLE_EVERY);
        };
        let elapsed = t0.elapsed().as_secs_f64();
        let output = format!(
            "{}{}",
            out_reader.join().unwrap_or_default(),
            err_reader.join().unwrap_or_default()
        );
        ensure!(
            status.success() && output.contains("is up"),
            "labspan up of {n} VM(s) failed ({status}):\n{output}"
        );
        let folder = self.host.state.join("vms").join(&name);
        let pids = qemu_pids(&folder)?;
        ensure!(
            pids.len() == n,
            "{n} VMs asked for, {} pidfiles",
            pids.len()
        );
        let rss: Vec<u64> = pids
            .values()
            .filter_map(|p| status_kib(*p, "VmRSS"))
            .collect();
        let anon: Vec<u64> = pids
            .values()
            .filter_map(|p| status_kib(*p, "RssAnon"))
            .collect();
        // Where the time went, from the files labspan writes: vm.json just
        // before it spawns QEMU, qemu.pid by QEMU, its configured marker
        // after the guest's setup.
        let mt = |vm: &str, file: &str| -> Result<f64> {
            let p = folder.join(vm).join(file);
            let modified = fs::metadata(&p)
                .and_then(|m| m.modified())
                .with_context(|| format!("labspan wrote no {}", p.display()))?;
            Ok(match modified.duration_since(t0_wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            })
        };
        let mut launch = Vec::new();
        let mut running = Vec::new();
        let mut configured = Vec::new();
        for vm in pids.keys() {
            launch.push(mt(vm, "vm.json")?);
            running.push(mt(vm, "qemu.pid")?);
            configured.push(mt(vm, CONFIGURED)?);
        }
        let per_vm = configured.iter().zip(&launch).map(|(c, l)| c - l).collect();
        let (first, first_pid) = pids.iter().next().context("no VM")?;
        let argv: Vec<String> = fs::read(format!("/proc/{first_pid}/cmdline"))?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let record: Value = serde_json::from_slice(&fs::read(folder.join(first).join("vm.json"))?)?;
        let vm_dir = folder.join(first);
        stop_qemus(&pids.values().copied().collect::<Vec<_>>());
        let down = self.labspan(&["down", &name]).output()?;
        ensure!(
            down.status.success(),
            "labspan down {name}: {}",
            text(&down)
        );
        Ok(LabspanRun {
            elapsed,
            hwm_kib: hwm,
            cpu_s: cpu,
            per_vm,
            qemu_rss_kib: rss,
            qemu_anon_kib: anon,
            to_first_launch: launch.iter().copied().fold(f64::INFINITY, f64::min),
            to_last_qemu_running: running.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            to_last_configured: configured.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            argv,
            record,
            vm_dir,
        })
    }

    /// N bare QEMUs started at once; time until every guest agent answered.
    fn run_bare(&self, n: usize, tpl: &Template, round: usize) -> Result<BareRun> {
        let base = self.host.state.join("bare").join(format!("r{round}n{n}"));
        self.ip(&["link", "add", "bbr0", "type", "bridge"])?;
        self.ip(&["link", "set", "bbr0", "up"])?;
        let mut folders = Vec::new();
        let mut taps = Vec::new();
        for i in 1..=n {
            let tap = format!("btap{i}");
            let folder = base.join(format!("b{i}"));
            fs::create_dir_all(&folder)?;
            self.ip(&["tuntap", "add", &tap, "mode", "tap"])?;
            self.ip(&["link", "set", &tap, "master", "bbr0", "up"])?;
            folders.push(folder);
            taps.push(tap);
        }
        let t0 = Instant::now();
        let deadline = t0 + QGA_DEADLINE;
        let mut spawns = Vec::new();
        for (i, (folder, tap)) in folders.iter().zip(&taps).enumerate() {
            let argv = tpl.argv_for(i + 1, folder, tap);
            let child = Command::new("ip")
                .args(["netns", "exec", &self.host.netns])
                .args(&argv)
                .stdin(Stdio::null())
                .spawn()
                .context("spawning a bare qemu-system-x86_64")?;
            spawns.push(child);
        }
        let waiters: Vec<_> = folders
            .iter()
            .map(|f| {
                let sock = f.join("qga.sock");
                std::thread::spawn(move || {
                    wait_agent(&sock, deadline).map(|()| t0.elapsed().as_secs_f64())
                })
            })
            .collect();
        for mut p in spawns {
            let status = p.wait()?;
            ensure!(
                status.success(),
                "bare qemu-system-x86_64 failed to start ({status})"
            );
        }
        let mut ready = Vec::new();
        let mut failed = None;
        for w in waiters {
            match w.join() {
                Ok(Ok(t)) => ready.push(t),
                Ok(Err(e)) => failed = Some(e),
                Err(_) => failed = Some(anyhow::anyhow!("a guest-sync thread panicked")),
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let mut pids = Vec::new();
        for f in &folders {
            pids.push(read_pid(&f.join("qemu.pid"))?);
        }
        let rss = pids
            .iter()
            .filter_map(|p| status_kib(*p, "VmRSS"))
            .collect();
        let anon = pids
            .iter()
            .filter_map(|p| status_kib(*p, "RssAnon"))
            .collect();
        stop_qemus(&pids);
        for tap in &taps {
            self.ip(&["link", "del", tap])?;
        }
        self.ip(&["link", "del", "bbr0"])?;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(BareRun {
            elapsed,
            per_vm: ready,
            qemu_rss_kib: rss,
            qemu_anon_kib: anon,
        })
    }

    /// Kills the bare QEMUs still running (by their pidfiles under `bare/`).
    fn stop_bare(&self) {
        let mut pids = Vec::new();
        let rounds = self.host.state.join("bare");
        for round in fs::read_dir(rounds).into_iter().flatten().flatten() {
            for vm in fs::read_dir(round.path()).into_iter().flatten().flatten() {
                if let Ok(pid) = read_pid(&vm.path().join("qemu.pid")) {
                    pids.push(pid);
                }
            }
        }
        stop_qemus(&pids);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // The host's own cleanup kills the labspan QEMUs and removes the
        // namespace and the state folder.
        self.stop_bare();
    }
}

struct LabspanRun {
    elapsed: f64,
    hwm_kib: u64,
    cpu_s: f64,
    per_vm: Vec<f64>,
    qemu_rss_kib: Vec<u64>,
    qemu_anon_kib: Vec<u64>,
    to_first_launch: f64,
    to_last_qemu_running: f64,
    to_last_configured: f64,
    argv: Vec<String>,
    record: Value,
    vm_dir: PathBuf,
}

impl LabspanRun {
    fn json(&self) -> Value {
        json!({
            "elapsed": self.elapsed,
            "hwm_kib": self.hwm_kib,
            "cpu_s": self.cpu_s,
            "per_vm": self.per_vm,
            "qemu_rss_kib": self.qemu_rss_kib,
            "qemu_anon_kib": self.qemu_anon_kib,
            "phases": {
                "to_first_launch": self.to_first_launch,
                "to_last_qemu_running": self.to_last_qemu_running,
                "to_last_configured": self.to_last_configured,
            },
        })
    }
}

struct BareRun {
    elapsed: f64,
    per_vm: Vec<f64>,
    qemu_rss_kib: Vec<u64>,
    qemu_anon_kib: Vec<u64>,
}

impl BareRun {
    fn json(&self) -> Value {
        json!({
            "elapsed": self.elapsed,
            "per_vm": self.per_vm,
            "qemu_rss_kib": self.qemu_rss_kib,
            "qemu_anon_kib": self.qemu_anon_kib,
        })
    }
}

/// labspan's QEMU argv, checked against the VM's vm.json.
struct Template {
    argv: Vec<String>,
    dir: String,
    name: String,
    tap: String,
    mac: String,
}

impl Template {
    fn of(run: &LabspanRun) -> Result<Template> {
        let spec = &run.record["spec"];
        for (key, flag) in [
            ("kernel", "-kernel"),
            ("initrd", "-initrd"),
            ("cmdline", "-append"),
        ] {
            let given = run
                .argv
                .iter()
                .position(|a| a == flag)
                .and_then(|i| run.argv.get(i + 1));
            if given.map(String::as_str) != spec[key].as_str() {
                bail!(
                    "QEMU's {flag} differs from vm.json's {key}: {:?} vs {spec}",
                    run.argv
                );
            }
        }
        let nic = &spec["nics"][0];
        let mac = nic["mac"]
            .as_array()
            .context("vm.json: nics[0].mac")?
            .iter()
            .map(|b| format!("{:02x}", b.as_u64().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Template {
            argv: run.argv.clone(),
            dir: run.vm_dir.to_string_lossy().into_owned(),
            name: spec["name"].as_str().context("vm.json: name")?.to_string(),
            tap: nic["tap"]
                .as_str()
                .context("vm.json: nics[0].tap")?
                .to_string(),
            mac,
        })
    }

    /// The template argv for bare VM i: its folder, name, tap and MAC.
    fn argv_for(&self, i: usize, folder: &Path, tap: &str) -> Vec<String> {
        let folder = folder.to_string_lossy();
        let mac = format!("52:54:00:be:00:{i:02x}");
        let name = format!("b{i}");
        self.argv
            .iter()
            .map(|a| {
                let a = a
                    .replace(&self.dir, &folder)
                    .replace(&format!("ifname={},", self.tap), &format!("ifname={tap},"))
                    .replace(&format!("mac={}", self.mac), &format!("mac={mac}"));
                let a = a
                    .split(' ')
                    .map(|w| {
                        if w.starts_with("labspan.hostname=") {
                            format!("labspan.hostname={name}")
                        } else {
                            w.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                if a.starts_with(&format!("{},process=", self.name)) {
                    format!("{name},process=qemu-{name}")
                } else {
                    a
                }
            })
            .collect()
    }
}

/// Returns when the guest agent at `path` answers guest-sync. A sync sent
/// before the guest opened its port may be dropped, so a new one (new id)
/// goes out every 0.5 s on the same connection; any of ours counts.
fn wait_agent(path: &Path, deadline: Instant) -> Result<()> {
    let mut ids = Vec::new();
    while Instant::now() < deadline {
        let Ok(stream) = UnixStream::connect(path) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if sync_on(&stream, &mut ids, deadline).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "guest agent at {} did not answer in {} s",
        path.display(),
        QGA_DEADLINE.as_secs()
    )
}

/// Sends guest-syncs on `stream` every 0.5 s until one of `ids` is
/// answered (true), the deadline passes (false) or the socket fails.
fn sync_on(stream: &UnixStream, ids: &mut Vec<u64>, deadline: Instant) -> std::io::Result<bool> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while Instant::now() < deadline {
        let id = 4242 + ids.len() as u64;
        ids.push(id);
        let sync = json!({"execute": "guest-sync", "arguments": {"id": id}});
        writer.write_all(format!("{sync}\n").as_bytes())?;
        let resend = Instant::now() + Duration::from_millis(500);
        let mut line = String::new();
        loop {
            let left = resend.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stream.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    return Err(std::io::Error::other("guest agent socket closed"));
                }
                Ok(_) => {
                    let answer: Option<u64> = serde_json::from_str::<Value>(&line)
                        .ok()
                        .and_then(|v| v.get("return")?.as_u64());
                    if answer.is_some_and(|a| ids.contains(&a)) {
                        return Ok(true);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(false)
}

/// "median (min–max)" with two decimals.
fn spread(xs: &[f64]) -> String {
    let (min, max) = range(xs);
    format!("{:.2} ({min:.2}–{max:.2})", median(xs))
}

/// "median (min–max)" of KiB values, in whole MiB.
fn spread_mib(kib: &[f64]) -> String {
    let mib: Vec<f64> = kib.iter().map(|k| k / 1024.0).collect();
    let (min, max) = range(&mib);
    format!("{:.0} ({min:.0}–{max:.0})", median(&mib))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": loadavg(),
        "qemu": first_line(Command::new("qemu-system-x86_64").arg("--version")),
        "git": first_line(Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", "HEAD"])),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn table(
    opts: &Options,
    labspan: &BTreeMap<usize, Vec<LabspanRun>>,
    bare: &BTreeMap<usize, Vec<BareRun>>,
    m: &Value,
    after: &str,
) -> String {
    let mut rows = vec![
        "| VMs | `labspan up` s | bare QEMU s | overhead s | labspan peak RSS MiB | QEMU RSS/VM MiB (labspan) | QEMU RSS/VM MiB (bare) |".to_string(),
        "|----:|---------------:|------------:|-----------:|---------------------:|--------------------------:|-----------------------:|".to_string(),
    ];
    let empty = (Vec::new(), Vec::new());
    for n in &opts.sizes {
        let (ls, b) = (
            labspan.get(n).unwrap_or(&empty.0),
            bare.get(n).unwrap_or(&empty.1),
        );
        let up: Vec<f64> = ls.iter().map(|r| r.elapsed).collect();
        let bt: Vec<f64> = b.iter().map(|r| r.elapsed).collect();
        let over: Vec<f64> = up.iter().zip(&bt).map(|(a, b)| a - b).collect();
        let hwm: Vec<f64> = ls.iter().map(|r| r.hwm_kib as f64 / 1024.0).collect();
        let qrss: Vec<f64> = ls
            .iter()
            .flat_map(|r| r.qemu_rss_kib.iter().map(|k| *k as f64))
            .collect();
        let brss: Vec<f64> = b
            .iter()
            .flat_map(|r| r.qemu_rss_kib.iter().map(|k| *k as f64))
            .collect();
        rows.push(format!(
            "| {n} | {} | {} | {} | {} | {} | {} |",
            spread(&up),
            spread(&bt),
            spread(&over),
            spread(&hwm),
            spread_mib(&qrss),
            spread_mib(&brss)
        ));
    }
    rows.push(String::new());
    rows.push(
        "Where `labspan up`'s time goes (median s from its start; from the files it writes),"
            .into(),
    );
    rows.push(
        "its own CPU time, and each guest's time from QEMU spawn to ready (labspan: configured):"
            .into(),
    );
    rows.push(String::new());
    rows.push("| VMs | first QEMU spawned | last QEMU running | last guest configured | process exit | labspan CPU s | per VM, labspan | per VM, bare |".into());
    rows.push("|----:|---:|---:|---:|---:|---:|---:|---:|".into());
    for n in &opts.sizes {
        let (ls, b) = (
            labspan.get(n).unwrap_or(&empty.0),
            bare.get(n).unwrap_or(&empty.1),
        );
        let med = |f: fn(&LabspanRun) -> f64| median(&ls.iter().map(f).collect::<Vec<_>>());
        let cpu: Vec<f64> = ls.iter().map(|r| r.cpu_s).collect();
        let lvm: Vec<f64> = ls.iter().flat_map(|r| r.per_vm.clone()).collect();
        let bvm: Vec<f64> = b.iter().flat_map(|r| r.per_vm.clone()).collect();
        rows.push(format!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            med(|r| r.to_first_launch),
            med(|r| r.to_last_qemu_running),
            med(|r| r.to_last_configured),
            med(|r| r.elapsed),
            spread(&cpu),
            spread(&lvm),
            spread(&bvm)
        ));
    }
    rows.push(String::new());
    rows.push(format!(
        "{} rounds; median (min–max). {} CPUs, kernel {}, {}, TCG; load average before {}, after {after}; labspan {}.",
        opts.repeat,
        m["cpus"],
        m["kernel"].as_str().unwrap_or_default(),
        m["qemu"].as_str().unwrap_or_default(),
        m["loadavg"].as_str().unwrap_or_default(),
        m["git"].as_str().unwrap_or_default(),
    ));
    rows.join("\n")
}

fn main() -> Result<()> {
    started();
    // `cargo bench` passes `--bench`; this bench takes no arguments.
    let opts = options()?;
    ensure!(
        rustix::process::geteuid().is_root(),
        "needs root (network namespace, taps)"
    );
    if !Path::new(TEST_IMAGES).join("names/tiny").exists() {
        log(&format!("building the tiny image into {TEST_IMAGES}"));
        let out = Command::new(&opts.bin)
            .args(["image", "build", "tiny", "--store", TEST_IMAGES])
            .output()?;
        ensure!(out.status.success(), "building tiny: {}", text(&out));
    }
    let bench = Bench {
        host: TestHost::new("upbench"),
        bin: opts.bin.clone(),
    };
    let m = machine();
    log("warm-up: labspan up of 1 VM (not counted; gives the QEMU argv)");
    let tpl = Template::of(&bench.run_labspan(1)?)?;
    let mut labspan: BTreeMap<usize, Vec<LabspanRun>> = BTreeMap::new();
    let mut bare: BTreeMap<usize, Vec<BareRun>> = BTreeMap::new();
    for round in 0..opts.repeat {
        for &n in &opts.sizes {
            let r = bench.run_labspan(n)?;
            let b = bench.run_bare(n, &tpl, round)?;
            log(&format!(
                "round {}/{} n={n}: labspan {:.2} s (peak RSS {:.1} MiB, CPU {:.2} s), bare {:.2} s",
                round + 1,
                opts.repeat,
                r.elapsed,
                r.hwm_kib as f64 / 1024.0,
                r.cpu_s,
                b.elapsed
            ));
            labspan.entry(n).or_default().push(r);
            bare.entry(n).or_default().push(b);
        }
    }
    let after = loadavg();
    if let Some(out) = &opts.out {
        let runs = |f: &dyn Fn(usize) -> Vec<Value>| -> Value {
            opts.sizes
                .iter()
                .map(|n| (n.to_string(), Value::from(f(*n))))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let results = json!({
            "machine": m,
            "loadavg_after": after,
            "bare_argv_example": tpl.argv_for(1, Path::new("/STATE/bare/b1"), "btap1"),
            "labspan": runs(&|n| labspan.get(&n).map(|v| v.iter().map(LabspanRun::json).collect()).unwrap_or_default()),
            "bare": runs(&|n| bare.get(&n).map(|v| v.iter().map(BareRun::json).collect()).unwrap_or_default()),
        });
        fs::write(out, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{}", table(&opts, &labspan, &bare, &m, &after));
    Ok(())
}
