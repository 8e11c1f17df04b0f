//! Cross-host segment throughput (docs/benchmarks.md, "Cross-host segments
//! (VXLAN)"): iperf3 between two test hosts over the raw veth underlay, over
//! hand-built kernel VXLAN segments, and over a segment built by labspan's
//! agent (`labspan_agent::net::reconcile`), all between the hosts' own
//! addresses (no guest). Paths are interleaved round by round, in a rotating
//! order, so background load on the 2-core machine hits every path alike.
//!
//! `cargo bench -p labspan-tests --bench fabric [-- --runs N --seconds S --tcp-only]`,
//! as root.

use std::net::IpAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use labspan_proto::names;
use labspan_proto::plan::{HostPlan, LabPlan, SegmentPlan, VxlanPlan};
use labspan_tests::stats::{median, range};
use labspan_tests::{text, Fabric, TestHost};
use serde_json::Value;

const UNDERLAY_MTU: u32 = 1500;
/// Outer Ethernet, IPv4, UDP and VXLAN headers.
const VXLAN_OVERHEAD: u32 = 50;
const VXLAN_PORT: u16 = 4789;
const IPERF_PORT: &str = "5201";
/// UDP payload that fits every path (1450-byte MTU: 1422 at most).
const UDP_LEN: &str = "1400";
const LAB: &str = "bench";

/// One way from host 1 to host 2.
struct Path {
    name: &'static str,
    /// Host 2's address on this path.
    target: String,
    /// The devices that carry it on host 1 (VXLAN device, bridge), for the
    /// settings report.
    devices: Option<(String, String)>,
}

/// What one path measured, one entry per round.
#[derive(Default)]
struct Samples {
    tcp: Vec<f64>,
    udp: Vec<f64>,
    udp_loss: Vec<f64>,
    rtt: Vec<f64>,
    /// TCP segments the sender retransmitted, per TCP run.
    retransmits: Vec<f64>,
    /// IP packets host 2 reassembled from fragments during each TCP run:
    /// outer VXLAN packets larger than the underlay's MTU.
    reassembled: Vec<f64>,
}

/// One iperf3 run, as the receiver saw it.
struct Run {
    bits_per_second: f64,
    /// UDP only: datagrams lost (%).
    lost_percent: f64,
    /// TCP only.
    retransmits: f64,
}

struct Options {
    runs: usize,
    seconds: u32,
    /// Skip UDP and ping: more TCP rounds in the same time.
    tcp_only: bool,
}

fn options() -> Result<Options> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: u32| -> Result<u32> {
        match args.iter().position(|a| a == flag) {
            None => Ok(default),
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .with_context(|| format!("{flag} needs a positive number")),
        }
    };
    Ok(Options {
        runs: value("--runs", 7)? as usize,
        seconds: value("--seconds", 5)?,
        tcp_only: args.iter().any(|a| a == "--tcp-only"),
    })
}

fn main() -> Result<()> {
    let opts = options()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fabric benchmark makes network namespaces: run it as root");
    }
    for tool in ["iperf3", "ping", "ss", "bridge"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .success()
        {
            bail!("{tool} is missing: apt-get install -y iperf3 iputils-ping iproute2");
        }
    }
    let load_before = loadavg();
    let fabric = Fabric::new("bench", 2);
    let paths = build_paths(&fabric)?;
    let server = Server::start(&fabric.hosts[1])?;
    for path in &paths {
        warm_up(&fabric.hosts[0], path)?;
    }
    let samples = measure(&fabric, &paths, &opts)?;
    drop(server);
    print_report(&fabric, &paths, &samples, &opts, &load_before);
    Ok(())
}

/// The four paths: raw underlay, hand-built VXLAN at the kernel's default
/// MTU and at labspan's MTU, and labspan's segment.
fn build_paths(fabric: &Fabric) -> Result<Vec<Path>> {
    let labspan_mtu = UNDERLAY_MTU - VXLAN_OVERHEAD;
    hand_built(fabric, 100, None, 100)?;
    hand_built(fabric, 101, Some(labspan_mtu), 101)?;
    labspan_built(fabric, 200, labspan_mtu, 200)?;
    let bridge = names::bridge(LAB, "lan:bench");
    Ok(vec![
        Path {
            name: "raw veth (underlay)",
            target: vtep(&fabric.hosts[1])?.to_string(),
            devices: None,
        },
        Path {
            name: "hand-built VXLAN (kernel default MTU)",
            target: "198.19.100.2".into(),
            devices: Some(("vx100".into(), "br100".into())),
        },
        Path {
            name: "hand-built VXLAN (MTU 1450)",
            target: "198.19.101.2".into(),
            devices: Some(("vx101".into(), "br101".into())),
        },
        Path {
            name: "labspan segment",
            target: "198.19.200.2".into(),
            devices: Some((names::vxlan(200), bridge)),
        },
    ])
}

/// `PLATFORM.md`'s recipe, by hand with `ip` and `bridge`, on both hosts;
/// `mtu` set on the VXLAN device when given (the bridge follows its port).
fn hand_built(fabric: &Fabric, vni: u32, mtu: Option<u32>, subnet: u8) -> Result<()> {
    let (vx, br) = (format!("vx{vni}"), format!("br{vni}"));
    for (i, host) in fabric.hosts.iter().enumerate() {
        let (local, remote) = (vtep(host)?, vtep(&fabric.hosts[1 - i])?);
        let id = vni.to_string();
        let mut steps: Vec<Vec<String>> = vec![
            args(&[
                "link",
                "add",
                &vx,
                "type",
                "vxlan",
                "id",
                &id,
                "local",
                &local.to_string(),
            ]),
            args(&["link", "add", &br, "type", "bridge"]),
            args(&["link", "set", &vx, "master", &br, "up"]),
            args(&["link", "set", &br, "up"]),
            args(&[
                "addr",
                "add",
                &format!("198.19.{subnet}.{}/24", i + 1),
                "dev",
                &br,
            ]),
        ];
        steps[0].extend(args(&["dstport", &VXLAN_PORT.to_string(), "nolearning"]));
        if let Some(mtu) = mtu {
            steps.insert(1, args(&["link", "set", &vx, "mtu", &mtu.to_string()]));
        }
        for step in &steps {
            let refs: Vec<&str> = step.iter().map(String::as_str).collect();
            checked(host.ip(&refs), &format!("ip {}", step.join(" ")))?;
        }
        let fdb = [
            "-n",
            &host.netns,
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &vx,
            "dst",
            &remote.to_string(),
            "self",
        ];
        checked(
            Command::new("bridge").args(fdb).output()?,
            "bridge fdb append",
        )?;
    }
    Ok(())
}

/// A host plan with one cross-host segment and no VMs, carried out by the
/// agent's reconcile inside each host; then a test address on its bridge.
fn labspan_built(fabric: &Fabric, vni: u32, mtu: u32, subnet: u8) -> Result<()> {
    for (i, host) in fabric.hosts.iter().enumerate() {
        let key = "lan:bench".to_string();
        let segment = SegmentPlan {
            bridge: names::bridge(LAB, &key),
            key,
            mtu,
            vxlan: Some(VxlanPlan {
                vni,
                device: names::vxlan(vni),
                local: vtep(host)?,
                remotes: vec![vtep(&fabric.hosts[1 - i])?],
                port: VXLAN_PORT,
            }),
        };
        let bridge = segment.bridge.clone();
        let lab = LabPlan {
            lab: LAB.into(),
            segments: vec![segment],
            vms: vec![],
            verify: vec![],
            images: vec![],
        };
        let plan = HostPlan {
            host: format!("h{}", i + 1),
            labs: vec![lab],
            kept_checkpoints: Vec::new(),
            ..HostPlan::default()
        };
        host.block_on(|| async { labspan_agent::net::reconcile(&plan).await })
            .with_context(|| format!("labspan reconcile on {}", host.netns))?;
        checked(
            host.ip(&[
                "addr",
                "add",
                &format!("198.19.{subnet}.{}/24", i + 1),
                "dev",
                &bridge,
            ]),
            "bridge address",
        )?;
    }
    Ok(())
}

fn vtep(host: &TestHost) -> Result<IpAddr> {
    host.vtep
        .with_context(|| format!("{} is not a fabric host", host.netns))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn checked(out: Output, what: &str) -> Result<Output> {
    if !out.status.success() {
        bail!("{what} failed: {}", text(&out));
    }
    Ok(out)
}

/// The iperf3 server on host 2, killed by pid when dropped.
struct Server(Child);

impl Server {
    fn start(host: &TestHost) -> Result<Server> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.netns,
                "iperf3",
                "-s",
                "-p",
                IPERF_PORT,
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?;
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{IPERF_PORT}");
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["netns", "exec", &host.netns, "ss", "-Hltn", &filter])
                .output()?;
            if !out.stdout.is_empty() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the iperf3 server in {} did not listen within 10 s",
            host.netns
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end, killing it (by pid) if it outlives `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} ran past {} s and was killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// Fills ARP and FDB caches and proves the path works before timing it.
fn warm_up(host: &TestHost, path: &Path) -> Result<()> {
    let out = run_bounded(
        Command::new("ip").args([
            "netns",
            "exec",
            &host.netns,
            "ping",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &path.target,
        ]),
        Duration::from_secs(10),
        "ping",
    )?;
    checked(out, &format!("ping over {} to {}", path.name, path.target)).map(|_| ())
}

fn measure(fabric: &Fabric, paths: &[Path], opts: &Options) -> Result<Vec<Samples>> {
    let (client, server) = (&fabric.hosts[0], &fabric.hosts[1]);
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    for round in 0..opts.runs {
        eprintln!("round {}/{} (load {})", round + 1, opts.runs, loadavg());
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let s = &mut samples[i];
            let before = reassembled(server)?;
            let tcp = iperf(client, &paths[i].target, false, opts.seconds)?;
            s.reassembled.push((reassembled(server)? - before) as f64);
            s.tcp.push(tcp.bits_per_second);
            s.retransmits.push(tcp.retransmits);
            if opts.tcp_only {
                continue;
            }
            let udp = iperf(client, &paths[i].target, true, opts.seconds)?;
            s.udp.push(udp.bits_per_second);
            s.udp_loss.push(udp.lost_percent);
            s.rtt.push(rtt_us(client, &paths[i].target)?);
        }
    }
    Ok(samples)
}

/// `ReasmOKs` of `host`'s IPv4 statistics (/proc/net/snmp of its namespace).
fn reassembled(host: &TestHost) -> Result<u64> {
    let out = checked(
        Command::new("ip")
            .args(["netns", "exec", &host.netns, "cat", "/proc/net/snmp"])
            .output()?,
        "reading /proc/net/snmp",
    )?;
    let snmp = String::from_utf8_lossy(&out.stdout);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().unwrap_or_default(), ip.next().unwrap_or_default());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ReasmOKs")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Ip ReasmOKs in /proc/net/snmp of {}", host.netns))
}

/// One iperf3 run to `target`, `seconds` long.
fn iperf(client: &TestHost, target: &str, udp: bool, seconds: u32) -> Result<Run> {
    let t = seconds.to_string();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &client.netns,
        "iperf3",
        "-c",
        target,
        "-p",
        IPERF_PORT,
        "-t",
        &t,
        "-J",
    ]);
    cmd.args(["--connect-timeout", "3000"]);
    if udp {
        // Unlimited rate: the sender goes as fast as a core lets it.
        cmd.args(["-u", "-b", "0", "-l", UDP_LEN]);
    }
    let out = run_bounded(
        &mut cmd,
        Duration::from_secs(seconds as u64 + 20),
        "iperf3 client",
    )?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output to {target}: {}", text(&out)))?;
    if let Some(err) = report.get("error") {
        bail!("iperf3 to {target}: {err}");
    }
    let received = &report["end"]["sum_received"];
    let field = |what: &str| {
        received[what]
            .as_f64()
            .with_context(|| format!("iperf3 report to {target} has no end.sum_received.{what}"))
    };
    let lost_percent = if udp { field("lost_percent")? } else { 0.0 };
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_f64()
        .unwrap_or(0.0);
    Ok(Run {
        bits_per_second: field("bits_per_second")?,
        lost_percent,
        retransmits,
    })
}

/// Mean round trip of 100 pings 10 ms apart, in µs.
fn rtt_us(client: &TestHost, target: &str) -> Result<f64> {
    let out = run_bounded(
        Command::new("ip").args([
            "netns",
            "exec",
            &client.netns,
            "ping",
            "-q",
            "-c",
            "100",
            "-i",
            "0.01",
            "-W",
            "2",
            target,
        ]),
        Duration::from_secs(20),
        "ping",
    )?;
    let out = checked(out, &format!("ping {target}"))?;
    // "rtt min/avg/max/mdev = 0.030/0.045/0.120/0.010 ms"
    let stdout = String::from_utf8_lossy(&out.stdout);
    let avg = stdout
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no rtt line in ping's output: {stdout}"))?;
    Ok(avg * 1000.0)
}

/// The median of `v` / `scale` with `prec` decimals; "–" when not measured.
fn cell(v: &[f64], scale: f64, prec: usize) -> String {
    if v.is_empty() {
        return "–".into();
    }
    format!("{:.prec$}", median(v) / scale)
}

/// "min–max" of `v` / `scale`; "–" when not measured.
fn spread(v: &[f64], scale: f64, prec: usize) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let (min, max) = range(v);
    format!("{:.prec$}–{:.prec$}", min / scale, max / scale)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn print_report(
    fabric: &Fabric,
    paths: &[Path],
    samples: &[Samples],
    opts: &Options,
    load_before: &str,
) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "kernel {}, {} rounds of {} s per path and mode, load average (1/5/15 min) before {load_before}, after {}\n",
        kernel.trim(),
        opts.runs,
        opts.seconds,
        loadavg()
    );
    println!("| path | MTU | TCP Gbit/s median | TCP min–max | TCP retransmits median | fragments reassembled median | UDP Gbit/s median | UDP loss % median | ping RTT µs median | RTT min–max | TCP vs raw | TCP vs hand-built (default MTU) | TCP vs hand-built (MTU 1450) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let tcp: Vec<f64> = samples.iter().map(|s| median(&s.tcp)).collect();
    for (i, (path, s)) in paths.iter().zip(samples).enumerate() {
        let mtu = mtu_of(&fabric.hosts[0], path);
        println!(
            "| {} | {mtu} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            path.name,
            cell(&s.tcp, 1e9, 2),
            spread(&s.tcp, 1e9, 2),
            cell(&s.retransmits, 1.0, 0),
            cell(&s.reassembled, 1.0, 0),
            cell(&s.udp, 1e9, 2),
            cell(&s.udp_loss, 1.0, 1),
            cell(&s.rtt, 1.0, 0),
            spread(&s.rtt, 1.0, 0),
            tcp[i] / tcp[0],
            tcp[i] / tcp[1],
            tcp[i] / tcp[2],
        );
    }
    let last = samples.len() - 1;
    for (j, name) in [(1, "default MTU"), (2, "MTU 1450")] {
        let paired: Vec<f64> = samples[last]
            .tcp
            .iter()
            .zip(&samples[j].tcp)
            .map(|(l, h)| l / h)
            .collect();
        let (min, max) = range(&paired);
        println!("\nlabspan / hand-built ({name}) TCP, paired by round: median {:.2}, min–max {min:.2}–{max:.2}", median(&paired));
    }
    print_settings(&fabric.hosts[0], paths);
    println!("\nroutes on host 1 after the runs (a learnt path MTU shows as `mtu`):");
    for path in paths {
        let out = fabric.hosts[0].ip(&["route", "get", &path.target]);
        let route = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        println!("- {}: {route}", path.name);
    }
}

fn mtu_of(host: &TestHost, path: &Path) -> String {
    let dev = path.devices.as_ref().map_or("eth0", |(_, br)| br.as_str());
    let out = host.ip(&["-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["mtu"].as_u64().map_or("?".into(), |m| m.to_string())
}

/// What differs between the hand-built segment at labspan's MTU and
/// labspan's own, on host 1: every `ip -d link` setting of the VXLAN device
/// and the bridge, and the VXLAN device's FDB entries.
fn print_settings(host: &TestHost, paths: &[Path]) {
    let devices: Vec<&(String, String)> = paths.iter().filter_map(|p| p.devices.as_ref()).collect();
    let (Some(hand), Some(ours)) = (devices.get(1), devices.last()) else {
        return;
    };
    println!(
        "\nsettings of {} / {} (hand-built, MTU 1450) vs {} / {} (labspan):",
        hand.0, hand.1, ours.0, ours.1
    );
    let mut same = true;
    for (a, b) in [(&hand.0, &ours.0), (&hand.1, &ours.1)] {
        let (sa, sb) = (link_settings(host, a), link_settings(host, b));
        for key in sa
            .keys()
            .chain(sb.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let (va, vb) = (sa.get(key), sb.get(key));
            if va != vb {
                same = false;
                println!(
                    "- {key}: {a} {} vs {b} {}",
                    va.map_or("(none)", String::as_str),
                    vb.map_or("(none)", String::as_str)
                );
            }
        }
    }
    let (fa, fb) = (
        fdb_entries(host, &hand.0, &hand.1),
        fdb_entries(host, &ours.0, &ours.1),
    );
    println!("- FDB of {}: {}", hand.0, fa.join("; "));
    println!("- FDB of {}: {}", ours.0, fb.join("; "));
    if same && fa == fb {
        println!("- no other difference: same settings, same FDB entries");
    }
}

/// Every `ip -d -j link` setting of `dev`, flattened to `path = value`,
/// without what only names the device (index, name, MAC, alias, master,
/// VNI, bridge ids) or changes by itself (timers).
fn link_settings(host: &TestHost, dev: &str) -> std::collections::BTreeMap<String, String> {
    const IDENTITY: &[&str] = &[
        "ifindex",
        "ifname",
        "address",
        "broadcast",
        "ifalias",
        "master",
        "id",
        "bridge_id",
        "root_id",
        "designated_root",
        "designated_bridge",
        "port_id",
        "port_no",
        "no",
        "parentbus",
        "parentdev",
    ];
    let out = host.ip(&["-d", "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut flat = std::collections::BTreeMap::new();
    let mut stack = vec![(String::new(), v[0].clone())];
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if !IDENTITY.contains(&k.as_str()) && !k.contains("timer") {
                        stack.push((format!("{path}.{k}").trim_start_matches('.').to_string(), v));
                    }
                }
            }
            other => {
                flat.insert(path, other.to_string());
            }
        }
    }
    flat
}

/// `bridge fdb show dev DEV`, with the device's own MAC and the names of
/// the device and its bridge replaced, so two segments compare.
fn fdb_entries(host: &TestHost, dev: &str, bridge: &str) -> Vec<String> {
    let mac = host.ip(&["-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&mac.stdout).unwrap_or_default();
    let mac = v[0]["address"].as_str().unwrap_or("?").to_string();
    let out = Command::new("bridge")
        .args(["-n", &host.netns, "fdb", "show", "dev", dev])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            // The device's own MAC and the MACs the bridge learnt differ
            // between any two segments; what kind of entry each is does not.
            let (first, rest) = l.trim().split_once(' ').unwrap_or((l, ""));
            let first = match first {
                m if m == mac => "DEVMAC",
                "00:00:00:00:00:00" => first,
                _ => "OTHER-MAC",
            };
            format!(
                "{first} {}",
                rest.replace(&format!("dev {dev}"), "dev DEV")
                    .replace(bridge, "BRIDGE")
            )
        })
        .collect();
    lines.sort();
    lines
}
