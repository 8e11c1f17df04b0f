//! Control-plane benchmarks on real `labspan coordinator run` processes
//! (docs/benchmarks.md, "Control plane"): three coordinators, each in its
//! own test host (network namespace, 198.18.X.1-3 on one underlay bridge),
//! and a fourth host for the client and the simulated agents.
//!
//! - failover: `kill -9` of the leader's pid, then the time until a new
//!   leader answers a linearizable read (`Status`, which runs openraft's
//!   read index on the leader), probed every 5 ms through both survivors;
//!   the killed coordinator is restarted from its folder between rounds.
//! - stability: no failure for S seconds (while `--burn N` busy loops, and
//!   whatever else runs, load the machine); one write a second, and every
//!   coordinator's Raft term and leader changes (its `/metrics`) read each
//!   second: any election shows as a term that moved.
//! - writes: commit latency of N sequential `CreateToken` writes sent to
//!   the leader on one connection (the same client pattern as
//!   `benches/etcd`'s).
//! - agents: N simulated agents (certificates issued by the cluster CA
//!   beforehand; one QUIC connection each, as `agent::daemon` has, all from
//!   one endpoint of the bench) register and heartbeat every
//!   `HEARTBEAT_INTERVAL`; CPU (from /proc/PID/stat) and RSS of every
//!   coordinator are sampled over a window.
//!
//! `cargo bench -p labspan-tests --bench control_plane [-- --rounds N --agents N --seconds S --register-within S --skip-failover --skip-agents --stability S --burn N --writes N --nice N]`
//! as root. It builds and runs the release `labspan` binary (or `$LABSPAN_BIN`);
//! the coordinators inherit the environment, so `LABSPAN_RAFT_HEARTBEAT_MS`
//! and the other timing variables (docs/control-plane.md) try other timings.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::cell::Cell;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use labspan_agent::daemon::HEARTBEAT_INTERVAL;
use labspan_proto::msg::{AgentReply, ClusterStatus, ErrorKind, Reply, Request, Role};
use labspan_tests::{text, Fabric, TestHost};
use labspan_transport::client::{Client, ClusterFile};
use labspan_transport::tls::{self, ClusterCa, COORDINATOR_SERVER_NAME};
use labspan_transport::{quinn_client_config, read_frame, request, write_frame};

/// The port coordinator `i` (0-based) listens on, on test host `i`.
const API_PORT: u16 = 7100;

/// API address of coordinator `i` (0-based): the cluster file names them
/// in the order of their hosts.
fn api(file: &ClusterFile, i: usize) -> String {
    file.coordinators[i].clone()
}

/// The release `labspan` binary, built from this tree (or `$LABSPAN_BIN`).
fn labspan_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LABSPAN_BIN") {
        return Ok(bin.into());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "labspan",
            "--bin",
            "labspan",
        ])
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("building labspan: {}", text(&out));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/labspan"))
}

/// `labspan ARGS` inside `host`.
fn labspan(bin: &Path, host: &TestHost, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.netns])
        .arg(bin)
        .args(args)
        .env("LABSPAN_STATE", &host.state);
    cmd
}

fn run_ok(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", text(&out));
    }
    Ok(text(&out))
}

/// The coordinator processes; each is SIGKILLed (by pid) and reaped on drop.
struct Coordinators {
    bin: PathBuf,
    /// `nice` value the coordinators run at (`--nice`; 0: the bench's).
    nice: i32,
    dirs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
}

impl Coordinators {
    fn start(&mut self, fabric: &Fabric, i: usize) -> Result<()> {
        let host = &fabric.hosts[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(host.state.join("coordinator.log"))?;
        let dir = self.dirs[i].to_str().context("utf-8 path")?;
        let nice = self.nice.to_string();
        let mut cmd = Command::new("ip");
        // `nice` execs in place too, so the pid is still the coordinator's.
        cmd.args(["netns", "exec", &host.netns, "nice", "-n", &nice])
            .arg(&self.bin)
            .args(["coordinator", "run", "--data", dir])
            .env("LABSPAN_STATE", &host.state);
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting a coordinator")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// The pid of coordinator `i` (`ip netns exec` execs the binary in place).
    fn pid(&self, i: usize) -> Result<u32> {
        Ok(self.children[i].as_ref().context("not running")?.id())
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let mut child = self.children[i].take().context("not running")?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill(2) on a pid this bench started and has not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        child.wait()?;
        Ok(())
    }
}

impl Drop for Coordinators {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            let _ = self.kill(i);
        }
    }
}

fn field<'a>(out: &'a str, label: &str) -> Result<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .with_context(|| format!("no {label:?} in {out}"))
}

/// `cluster init` on host 1, then two coordinators joined with tokens; all three running.
fn cluster(fabric: &Fabric, bin: PathBuf, nice: i32) -> Result<(Coordinators, ClusterFile)> {
    let dirs: Vec<PathBuf> = fabric.hosts[..3]
        .iter()
        .map(|h| h.state.join("coordinator"))
        .collect();
    let mut c = Coordinators {
        bin,
        nice,
        dirs,
        children: vec![None, None, None],
    };
    let d0 = c.dirs[0].to_str().context("utf-8 path")?.to_string();
    let first = fabric.hosts[0].underlay_addr(API_PORT);
    let init = ["cluster", "init", "--data", &d0, "--listen", &first];
    run_ok(labspan(&c.bin, &fabric.hosts[0], &init), "cluster init")?;
    c.start(fabric, 0)?;
    let admin_path = c.dirs[0].join("admin.cluster");
    let admin = admin_path.to_str().context("utf-8 path")?;
    for i in 1..3 {
        let token_args = [
            "cluster",
            "token",
            "--role",
            "coordinator",
            "--cluster",
            admin,
        ];
        let out = retry(|| run_ok(labspan(&c.bin, &fabric.hosts[0], &token_args), "token"))?;
        let (token, fp) = (field(&out, "token:")?, field(&out, "ca fingerprint:")?);
        let dir = c.dirs[i].to_str().context("utf-8 path")?.to_string();
        let (name, listen) = (
            format!("c{}", i + 1),
            fabric.hosts[i].underlay_addr(API_PORT),
        );
        let join = [
            "cluster",
            "join",
            &first,
            "--token",
            token,
            "--ca-fingerprint",
            fp,
            "--data",
            &dir,
            "--name",
            &name,
            "--listen",
            &listen,
        ];
        run_ok(labspan(&c.bin, &fabric.hosts[i], &join), "cluster join")?;
        c.start(fabric, i)?;
    }
    let mut file = ClusterFile::load(&admin_path)?;
    file.coordinators = (0..3)
        .map(|i| fabric.hosts[i].underlay_addr(API_PORT))
        .collect();
    Ok((c, file))
}

fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    for _ in 0..60 {
        if let Ok(v) = f() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    f()
}

async fn status_via(file: &ClusterFile, addr: &str) -> Option<ClusterStatus> {
    let client = Client::connect_to(file, &[addr.to_string()]).await.ok()?;
    let reply =
        tokio::time::timeout(Duration::from_secs(5), client.request(&Request::Status)).await;
    client.close().await;
    match reply {
        Ok(Ok(Reply::Status(s))) => Some(s),
        _ => None,
    }
}

/// Waits until every coordinator answers `Status` with three voters and a leader.
async fn settled(file: &ClusterFile) -> Result<ClusterStatus> {
    for _ in 0..240 {
        let mut all = Vec::new();
        for i in 0..3 {
            all.extend(status_via(file, &api(file, i)).await);
        }
        let ok = all.len() == 3
            && all.iter().all(|s| {
                s.leader.is_some()
                    && s.leader == all[0].leader
                    && s.members.iter().filter(|m| m.voter).count() == 3
            });
        if ok {
            return Ok(all.swap_remove(0));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the cluster did not settle (three voters, one leader)")
}

fn index_of(status: &ClusterStatus, id: u64) -> Result<usize> {
    let m = status
        .members
        .iter()
        .find(|m| m.id == id)
        .context("leader not a member")?;
    Ok(m.name.trim_start_matches('c').parse::<usize>()? - 1)
}

/// One failover: kill -9 the leader, time until a survivor's `Status` names
/// a new leader; then restart the killed one. Returns (time, new term).
async fn failover_round(
    fabric: &Fabric,
    c: &mut Coordinators,
    file: &ClusterFile,
) -> Result<(Duration, u64)> {
    let before = settled(file).await?;
    let old = before.leader.context("no leader")?;
    let dead = index_of(&before, old)?;
    let mut clients = Vec::new();
    for i in (0..3).filter(|i| *i != dead) {
        clients.push(Rc::new(Client::connect_to(file, &[api(file, i)]).await?));
    }
    c.kill(dead)?;
    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let local = tokio::task::LocalSet::new();
    let probes = local.run_until(async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for n in 0usize.. {
            tokio::select! {
                got = rx.recv() => return got,
                _ = tick.tick() => {}
            }
            if n > 6000 {
                return None;
            }
            let (client, tx) = (clients[n % clients.len()].clone(), tx.clone());
            tokio::task::spawn_local(async move {
                let reply =
                    tokio::time::timeout(Duration::from_secs(5), client.request(&Request::Status))
                        .await;
                if let Ok(Ok(Reply::Status(s))) = reply {
                    if s.leader.is_some_and(|l| l != old) {
                        let _ = tx.send((t0.elapsed(), s.term));
                    }
                }
            });
        }
        None
    });
    let got = probes.await.context("no new leader answered within 30 s")?;
    drop(local);
    for client in clients {
        if let Ok(client) = Rc::try_unwrap(client) {
            client.close().await;
        }
    }
    c.start(fabric, dead)?;
    Ok(got)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn failover(
    fabric: &Fabric,
    c: &mut Coordinators,
    file: &ClusterFile,
    rounds: usize,
) -> Result<()> {
    let mut times = Vec::new();
    for round in 1..=rounds {
        let (t, term) = failover_round(fabric, c, file).await?;
        println!(
            "round {round}: new leader answered a linearizable read after {:.0} ms (term {term})",
            ms(t)
        );
        times.push(t);
    }
    times.sort();
    println!(
        "failover over {rounds} rounds: p50 {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

/// `name value` lines of coordinator `i`'s `/metrics` (plain HTTP/1.0),
/// served on its API address's host.
async fn scrape(file: &ClusterFile, i: usize) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr: std::net::SocketAddr = api(file, i).parse()?;
    addr.set_port(labspan_coordinator::metrics::DEFAULT_PORT);
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("{addr}: no metrics within 5 s"))?
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// (term, leader changes) of each coordinator, as its `/metrics` says.
async fn terms(file: &ClusterFile) -> Result<Vec<(u64, u64)>> {
    let mut all = Vec::new();
    for i in 0..3 {
        let text = scrape(file, i).await?;
        let term = metric(&text, "labspan_raft_term").context("no labspan_raft_term")?;
        let changes = metric(&text, "labspan_raft_leader_changes_total")
            .or_else(|| metric(&text, "labspan_raft_leader_changes"))
            .context("no labspan_raft_leader_changes")?;
        all.push((term, changes));
    }
    Ok(all)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Busy loops that load the machine; killed (by pid) on drop.
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> Result<Burners> {
        let mut all = Burners(Vec::new());
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .context("starting a busy loop")?;
            all.0.push(child);
        }
        Ok(all)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a pid this bench started and has not reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

/// One `CreateToken` write; its time once committed and applied.
async fn write_once(client: &Client) -> Result<Duration> {
    let t0 = Instant::now();
    let req = Request::CreateToken {
        role: Role::Viewer,
        ttl_secs: 60,
    };
    match client.request(&req).await? {
        Reply::Token { .. } => Ok(t0.elapsed()),
        other => bail!("CreateToken: {other:?}"),
    }
}

fn percentiles(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| ms(times[((times.len() as f64 * q) as usize).min(times.len() - 1)]);
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        times.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        ms(times[times.len() - 1]),
        loadavg()
    );
}

/// Runs for `secs` with a write a second; fails if any term moved.
async fn stability(file: &ClusterFile, secs: u64, burn: usize) -> Result<()> {
    let st = settled(file).await?;
    let leader = index_of(&st, st.leader.context("no leader")?)?;
    let client = Client::connect_to(file, &[api(file, leader)]).await?;
    let before = terms(file).await?;
    println!(
        "stability: {secs} s, {burn} busy loops, leader c{}, (term, leader changes) {before:?}, load {}",
        leader + 1,
        loadavg()
    );
    let burners = Burners::start(burn)?;
    let t0 = Instant::now();
    let mut last = before.clone();
    let mut writes = Vec::new();
    let mut loads = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match write_once(&client).await {
            Ok(t) => writes.push(t),
            Err(e) => println!("{:>4} s: write failed: {e:#}", t0.elapsed().as_secs()),
        }
        let now = terms(file).await?;
        if now != last {
            println!(
                "{:>4} s: (term, leader changes) {last:?} -> {now:?}, load {}",
                t0.elapsed().as_secs(),
                loadavg()
            );
            last = now;
        }
        if t0.elapsed().as_secs().is_multiple_of(60) || loads.is_empty() {
            loads.push(loadavg());
        }
    }
    drop(burners);
    client.close().await;
    let after = terms(file).await?;
    let elections = after.iter().map(|t| t.0).max().unwrap_or(0)
        - before.iter().map(|t| t.0).max().unwrap_or(0);
    println!("load average (1, 5, 15 min) about once a minute: {loads:?}");
    println!("| system | writes | p50 ms | p90 ms | p99 ms | max ms | load average |");
    println!("|---|---|---|---|---|---|---|");
    percentiles("one write a second", writes);
    println!(
        "stability over {secs} s: terms {:?} -> {:?}, leader changes {:?} -> {:?}: {elections} election(s)",
        before.iter().map(|t| t.0).collect::<Vec<_>>(),
        after.iter().map(|t| t.0).collect::<Vec<_>>(),
        before.iter().map(|t| t.1).collect::<Vec<_>>(),
        after.iter().map(|t| t.1).collect::<Vec<_>>(),
    );
    Ok(())
}

/// `n` sequential writes to the leader on one connection, after 20 of warm-up.
async fn writes(file: &ClusterFile, n: usize) -> Result<()> {
    let st = settled(file).await?;
    let leader = index_of(&st, st.leader.context("no leader")?)?;
    let client = Client::connect_to(file, &[api(file, leader)]).await?;
    for _ in 0..20 {
        write_once(&client).await?;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        times.push(write_once(&client).await?);
    }
    client.close().await;
    println!("| system | writes | p50 ms | p90 ms | p99 ms | max ms | load average |");
    println!("|---|---|---|---|---|---|---|");
    percentiles("labspan, 3 processes, the leader", times);
    Ok(())
}

/// utime + stime of `pid` in clock ticks, and its RSS in KiB.
fn cpu_and_rss(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 is index 0, so utime (14) and stime (15) are 11 and 12.
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok((ticks, rss))
}

/// How many simulated agents may be in their QUIC handshake at once: the
/// simulator starts them all at the same moment from one process, where
/// real agents start on their own hosts.
const DIALS_AT_ONCE: usize = 200;

/// How long one simulated agent's dial may take before it tries the next
/// coordinator (longer than `client::CONNECT_TIMEOUT`: the simulator's own
/// handshakes queue behind each other on a loaded machine).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer of the simulator's socket (the kernel caps it at
/// `net.core.rmem_max`, 4 MiB on this machine).
const SIM_RECV_BUFFER: usize = 4 << 20;

/// What the simulated agents share: ONE QUIC endpoint (one UDP socket) that
/// every agent's connection leaves from, each with its own client
/// configuration (its certificate). An endpoint per agent, as
/// `Client::connect_to` makes, costs about 2.3 MiB (docs/benchmarks.md).
struct Sim {
    endpoint: quinn::Endpoint,
    coordinators: Vec<SocketAddr>,
    /// The coordinator that answered a dial last, tried first (as
    /// `Client::connect_to` gives it a head start).
    last_answered: Cell<Option<SocketAddr>>,
    dials: tokio::sync::Semaphore,
}

impl Sim {
    fn new(file: &ClusterFile) -> Result<Sim> {
        let coordinators = file
            .coordinators
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("coordinator address {a:?}"))
            })
            .collect::<Result<Vec<SocketAddr>>>()?;
        let first = coordinators.first().context("no coordinator")?;
        let bind = labspan_transport::client::any_local(*first);
        let socket = std::net::UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
        // Every agent's packets arrive on this one socket: with the default
        // receive buffer (208 KiB) the kernel drops a fifth of them at
        // 10,000 agents, and the retransmissions load the leader.
        quinn::udp::UdpSocketState::new((&socket).into())?
            .set_recv_buffer_size((&socket).into(), SIM_RECV_BUFFER)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            std::sync::Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Sim {
            endpoint,
            coordinators,
            last_answered: Cell::new(None),
            dials: tokio::sync::Semaphore::new(DIALS_AT_ONCE),
        })
    }

    /// A connection with `config` to the first of `targets` that answers,
    /// the one that answered last tried first.
    async fn dial(
        &self,
        config: &quinn::ClientConfig,
        targets: &[SocketAddr],
    ) -> Option<quinn::Connection> {
        let _turn = self.dials.acquire().await.ok()?;
        let last = self.last_answered.get();
        let first = targets.iter().filter(|a| Some(**a) == last);
        for &addr in first.chain(targets.iter().filter(|a| Some(**a) != last)) {
            let Ok(connecting) =
                self.endpoint
                    .connect_with(config.clone(), addr, COORDINATOR_SERVER_NAME)
            else {
                continue;
            };
            if let Ok(Ok(conn)) = tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
                self.last_answered.set(Some(addr));
                return Some(conn);
            }
        }
        None
    }
}

/// One simulated agent: connect, register (following `NotLeader`),
/// heartbeat at the interval each `Lease` gives (as `agent::daemon` does;
/// `HEARTBEAT_INTERVAL` until the first), answer plan pushes; all over
/// `sim`'s endpoint with `config`.
async fn agent(sim: Rc<Sim>, config: quinn::ClientConfig, i: usize, up: Rc<Cell<usize>>) {
    let vtep = format!("198.19.{}.{}", i / 250, i % 250 + 1);
    let register = Request::RegisterHost {
        memory_mib: 16 * 1024,
        cpus: 8,
        vcpus: 32,
        vtep: vtep.parse().expect("a valid address"),
        underlay_mtu: 1500,
    };
    let mut targets = sim.coordinators.clone();
    loop {
        let Some(conn) = sim.dial(&config, &targets).await else {
            targets = sim.coordinators.clone();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let serving = conn.clone();
        tokio::task::spawn_local(async move {
            while let Ok((mut send, mut recv)) = serving.accept_bi().await {
                if read_frame::<labspan_proto::msg::AgentRequest>(&mut recv)
                    .await
                    .is_ok()
                {
                    let _ = write_frame(&mut send, &AgentReply::Applied(Vec::new())).await;
                }
            }
        });
        let mut req = register.clone();
        let mut counted = false;
        let mut every = HEARTBEAT_INTERVAL;
        loop {
            match request::<_, Reply>(&conn, &req).await {
                Ok(Reply::Lease { heartbeat_ms, .. }) => {
                    every = Duration::from_millis(heartbeat_ms);
                    if !counted {
                        up.set(up.get() + 1);
                        counted = true;
                    }
                    req = Request::Heartbeat;
                }
                Ok(Reply::NotLeader { leader: Some(l) }) => {
                    targets = l
                        .parse()
                        .map(|a| vec![a])
                        .unwrap_or_else(|_| sim.coordinators.clone());
                    break;
                }
                Ok(Reply::Error(e)) if e.kind == ErrorKind::NotFound => req = register.clone(),
                _ => {
                    targets = sim.coordinators.clone();
                    break;
                }
            }
            tokio::time::sleep(every).await;
        }
        if counted {
            up.set(up.get() - 1);
        }
        conn.close(0u32.into(), b"done");
    }
}

fn sample(c: &Coordinators) -> Result<Vec<(u64, u64)>> {
    (0..3).map(|i| cpu_and_rss(c.pid(i)?)).collect()
}

/// Prints each coordinator's CPU (% of one core) and RSS over `secs`.
async fn measure(c: &Coordinators, leader: usize, secs: u64, label: &str) -> Result<()> {
    let tck = 100.0; // sysconf(_SC_CLK_TCK) on Linux.
    let start = sample(c)?;
    let t0 = Instant::now();
    let mut max_rss = [0u64; 3];
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (m, (_, rss)) in max_rss.iter_mut().zip(sample(c)?) {
            *m = (*m).max(rss);
        }
    }
    let end = sample(c)?;
    let wall = t0.elapsed().as_secs_f64();
    let me = cpu_and_rss(std::process::id())?;
    for i in 0..3 {
        let cpu = (end[i].0 - start[i].0) as f64 / tck / wall * 100.0;
        let role = if i == leader { "leader" } else { "follower" };
        println!(
            "| {label} | c{} ({role}) | {cpu:.1} | {:.1} | {:.1} |",
            i + 1,
            end[i].1 as f64 / 1024.0,
            max_rss[i] as f64 / 1024.0
        );
    }
    println!("(bench process RSS {:.1} MiB)", me.1 as f64 / 1024.0);
    Ok(())
}

/// Datagrams received and dropped for a full receive buffer in `netns`
/// since it was made (`/proc/net/snmp`, `Udp:` InDatagrams and RcvbufErrors).
fn udp_counters(netns: &str) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "cat", "/proc/net/snmp"]);
    let snmp = run_ok(cmd, "reading /proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().context("no Udp:")?,
        udp.next().context("no Udp:")?,
    );
    let get = |name: &str| {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .unwrap_or("?")
            .to_string()
    };
    Ok(format!(
        "{} received, {} dropped (receive buffer full)",
        get("InDatagrams"),
        get("RcvbufErrors")
    ))
}

async fn agents(
    fabric: &Fabric,
    c: &Coordinators,
    file: &ClusterFile,
    n: usize,
    secs: u64,
    register_secs: u64,
) -> Result<()> {
    let st = settled(file).await?;
    let leader = index_of(&st, st.leader.context("no leader")?)?;
    println!("| load | coordinator | CPU % of a core | RSS MiB (end) | RSS MiB (max) |");
    println!("|---|---|---|---|---|");
    measure(c, leader, secs, "idle").await?;
    let dir = &c.dirs[0];
    let ca = ClusterCa::from_pem(
        &std::fs::read_to_string(dir.join("ca.pem"))?,
        &std::fs::read_to_string(dir.join("ca.key"))?,
    )?;
    // Certificates and TLS configurations first, outside the timed part.
    let t_issue = Instant::now();
    let mut configs = Vec::with_capacity(n);
    for i in 0..n {
        let cred = ca.issue(&format!("sim{i}"), Role::Agent)?;
        configs.push(quinn_client_config(tls::client_config(ca.cert(), &cred)?)?);
    }
    println!(
        "{n} agent certificates issued in {:.1} s (not timed below)",
        t_issue.elapsed().as_secs_f64()
    );
    let sim = Rc::new(Sim::new(file)?);
    let up = Rc::new(Cell::new(0usize));
    let local = tokio::task::LocalSet::new();
    let t0 = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        local.spawn_local(agent(sim.clone(), config, i, up.clone()));
    }
    local
        .run_until(async {
            while up.get() < n && t0.elapsed() < Duration::from_secs(register_secs) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if up.get() < n {
                println!(
                    "only {} of {n} agents registered within {register_secs} s; measuring as they are",
                    up.get()
                );
            } else {
                println!(
                    "{n} agents registered in {:.1} s (one process, one endpoint, at most {DIALS_AT_ONCE} handshakes at once)",
                    t0.elapsed().as_secs_f64()
                );
            }
            // Let the registrations' Raft entries settle before measuring.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let terms_before = terms(file).await?;
            measure(c, leader, secs, &format!("{n} agents")).await?;
            let terms_after = terms(file).await?;
            let st = settled(file).await?;
            let hosts_up = st.hosts.iter().filter(|h| h.up).count();
            println!(
                "hosts up at the end: {hosts_up} of {}; agents connected: {}; (term, leader changes) {terms_before:?} -> {terms_after:?} (the leader was c{} before)",
                st.hosts.len(),
                up.get(),
                leader + 1
            );
            for (i, host) in fabric.hosts.iter().enumerate() {
                println!("host {}: UDP {}", i + 1, udp_counters(&host.netns)?);
            }
            anyhow::Ok(())
        })
        .await?;
    drop(local);
    sim.endpoint.close(0u32.into(), b"done");
    // Bounded: after an overrun (thousands of connections closing towards
    // coordinators that answer late) the drain could hold the bench for
    // minutes, and the coordinators are killed right after anyway.
    let _ = tokio::time::timeout(Duration::from_secs(10), sim.endpoint.wait_idle()).await;
    Ok(())
}

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let rounds = arg("--rounds", 10usize);
    let n = arg("--agents", 1000usize);
    let secs = arg("--seconds", 60u64);
    let register_secs = arg("--register-within", 600u64);
    let stable_secs = arg("--stability", 0u64);
    let burn = arg("--burn", 0usize);
    let n_writes = arg("--writes", 0usize);
    let flags: Vec<String> = std::env::args().collect();
    let bin = labspan_bin()?;
    let fabric = Fabric::new("cp", 4);
    let (mut c, file) = cluster(&fabric, bin, arg("--nice", 0i32))?;
    let client_host = &fabric.hosts[3];
    let result = client_host.block_on(|| async {
        if n_writes > 0 {
            writes(&file, n_writes).await?;
        }
        if !flags.iter().any(|f| f == "--skip-failover") {
            failover(&fabric, &mut c, &file, rounds).await?;
        }
        if stable_secs > 0 {
            stability(&file, stable_secs, burn).await?;
        }
        if !flags.iter().any(|f| f == "--skip-agents") {
            agents(&fabric, &c, &file, n, secs, register_secs).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = &result {
        for (i, host) in fabric.hosts[..3].iter().enumerate() {
            let log =
                std::fs::read_to_string(host.state.join("coordinator.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            eprintln!(
                "c{} log tail:\n{}",
                i + 1,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        eprintln!("error: {e:#}");
    }
    drop(c);
    drop(fabric);
    result
}
