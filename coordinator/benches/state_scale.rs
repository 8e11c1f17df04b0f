//! The cluster's state at scale: three coordinators in this
//! process on 127.0.0.1 (each with its own redb file and QUIC endpoint, as
//! `labspan coordinator run` starts them) and stand-in agents for the lab
//! hosts (each answers plan pushes with a report of every VM, as
//! `agent::daemon` does, and heartbeats).
//!
//! `cargo bench -p labspan-coordinator --bench state_scale [-- --labs 500 --nodes 20 --hosts 20 --deploys 10 --ticks 3 --down 1,2,4]`
//!
//! It measures, with the cluster empty and then holding `--labs` labs of
//! `--nodes` nodes each (a ring of links, one guest file per node, by hash):
//! - a deploy through the API (`DeployLab` to the leader: checks, placement,
//!   one Raft entry, the plan push to every host the lab is on, and the
//!   agents' reports), and the leader's placement alone for the same lab
//!   (`decide::deploy_command` over the leader's state);
//! - the leader's recovery decision with the `--down` hosts that run the
//!   most nodes marked down (1, 2 and 4: with 4, lost nodes fit nowhere and
//!   it searches for room) (`recovery::decide`, what each monitor tick
//!   computes while a host is down), before and after its steps are
//!   recorded;
//! - the snapshot: its encoding time and size, the leader's snapshot as
//!   openraft builds it (trigger → saved), and the API writes sent
//!   meanwhile against as many without a snapshot (does building it stall
//!   the leader?);
//! - a fourth coordinator joining after every log is purged: the time until
//!   it installed the snapshot, until its replica holds every lab, and until
//!   a read sent to it (`GetLab`) answers, and until it copied every file;
//! - the process's RSS (three replicas and the stand-in agents) before and
//!   after storing the labs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use labspan_coordinator::raft::{ClusterState, Command, LabStatus};
use labspan_coordinator::service::{self, decide, DataDir, Running};
use labspan_proto::codec;
use labspan_proto::lab::{self, FileRef, LabBundle};
use labspan_proto::msg::{
    AgentReply, AgentRequest, ClusterStatus, JoinReply, JoinRequest, LabSource, Reply, Request,
    Role, VmReport,
};
use labspan_transport::client::{self, Client, ClusterFile};
use labspan_transport::tls::{CertificateRequest, ClusterCa};
use labspan_transport::{read_frame, write_frame};
use tempfile::TempDir;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A loopback address whose port and port + 1 (the join endpoint) are free.
fn free_addr() -> BenchResult<SocketAddr> {
    for _ in 0..100 {
        let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = a.local_addr()?.port();
        if port < u16::MAX && UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
    }
    Err("no free pair of UDP ports".into())
}

async fn status(client: &Client) -> Option<ClusterStatus> {
    match client.request(&Request::Status).await {
        Ok(Reply::Status(s)) => Some(s),
        _ => None,
    }
}

/// Polls `check` every 20 ms for at most 10 minutes.
async fn eventually<T, Fut>(what: &str, mut check: impl FnMut() -> Fut) -> BenchResult<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        if let Some(v) = check().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Percentile `p` (0..=100) of sorted samples, in milliseconds.
fn pct(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(f64::NAN, |d| ms(*d))
}

/// This process's resident set, in MiB.
fn rss_mib() -> BenchResult<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kib / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Creates a token for `role` through `client`.
async fn token(client: &Client, role: Role) -> BenchResult<(String, String)> {
    let req = Request::CreateToken {
        role,
        ttl_secs: 600,
    };
    match client.request(&req).await? {
        Reply::Token {
            token,
            ca_fingerprint,
            ..
        } => Ok((token, ca_fingerprint)),
        other => Err(format!("no token: {other:?}").into()),
    }
}

/// Joins coordinator `name` in `dir` through `api` and starts it.
async fn join_coordinator(
    client: &Client,
    api: SocketAddr,
    dir: &Path,
    name: &str,
) -> BenchResult<Running> {
    let (token, fingerprint) = token(client, Role::Coordinator).await?;
    let request = CertificateRequest::generate(name)?;
    let join = JoinRequest::Join {
        token,
        name: name.to_string(),
        csr_pem: request.csr_pem.clone(),
    };
    let JoinReply::Joined(grant) = client::join(api, &fingerprint, &join).await? else {
        return Err("join refused".into());
    };
    DataDir::at(dir).save_grant(name, free_addr()?, &grant, &request)?;
    Ok(service::start(dir).await?)
}

/// Three coordinators: c1 from `init`, c2 and c3 joined with tokens; all voters.
async fn three(dirs: &[TempDir; 3]) -> BenchResult<(Vec<Running>, ClusterFile)> {
    let admin = DataDir::at(dirs[0].path()).init("bench", "c1", free_addr()?)?;
    let mut nodes = vec![service::start(dirs[0].path()).await?];
    let api = nodes[0].addr;
    let client = eventually("a leader", || async {
        let c = Client::connect(&admin).await.ok()?;
        status(&c).await.filter(|s| s.leader.is_some()).map(|_| c)
    })
    .await?;
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let name = format!("c{}", i + 1);
        nodes.push(join_coordinator(&client, api, dir.path(), &name).await?);
    }
    eventually("three voters", || async {
        status(&client)
            .await
            .filter(|s| s.members.iter().filter(|m| m.voter).count() == 3)
    })
    .await?;
    client.close().await;
    Ok((nodes, admin))
}

/// Stands in for an agent daemon on `conn`: answers every plan push with a
/// report of each VM in the plan, and heartbeats every 2 s.
fn stand_in(conn: quinn::Connection, host: String) {
    let serving = conn.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = serving.accept_bi().await {
            let Ok(req) = read_frame::<AgentRequest>(&mut recv).await else {
                return;
            };
            let reply = match req {
                AgentRequest::ApplyPlan(plan) => AgentReply::Applied(
                    plan.labs
                        .iter()
                        .flat_map(|l| l.vms.iter().map(move |vm| (l.lab.clone(), vm.name.clone())))
                        .map(|(lab, vm)| VmReport {
                            host: host.clone(),
                            lab,
                            vm,
                            pid: 1,
                            error: None,
                        })
                        .collect(),
                ),
                _ => AgentReply::Applied(Vec::new()),
            };
            let _ = write_frame(&mut send, &reply).await;
        }
    });
    // A refused heartbeat (a leader too busy to confirm its leadership in
    // time) is sent again, as the agent daemon does; only a lost
    // connection ends it.
    tokio::spawn(async move {
        while labspan_transport::request::<_, Reply>(&conn, &Request::Heartbeat)
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// `n` hosts of `vcpus` each, each with a stand-in agent connected to the
/// leader.
async fn hosts(
    ca_dir: &Path,
    admin: &ClusterFile,
    leader: &str,
    n: usize,
    vcpus: u64,
) -> BenchResult<Vec<Client>> {
    let ca = ClusterCa::from_pem(
        &std::fs::read_to_string(ca_dir.join("ca.pem"))?,
        &std::fs::read_to_string(ca_dir.join("ca.key"))?,
    )?;
    let mut agents = Vec::new();
    for i in 0..n {
        let name = format!("h{i:02}");
        let cred = ca.issue(&name, Role::Agent)?;
        let file = ClusterFile {
            coordinators: vec![leader.to_string()],
            cert_pem: cred.cert_pem(),
            key_pem: cred.key_pem(),
            ..admin.clone()
        };
        let client = Client::connect_to(&file, &file.coordinators).await?;
        let req = Request::RegisterHost {
            memory_mib: vcpus * 1024,
            cpus: u32::try_from(vcpus)?,
            vcpus,
            vtep: IpAddr::from([198, 18, 1, u8::try_from(i + 1)?]),
            underlay_mtu: 1500,
        };
        match client.request(&req).await? {
            Reply::Lease { .. } => {}
            other => return Err(format!("{name} not registered: {other:?}").into()),
        }
        stand_in(client.connection().clone(), name);
        agents.push(client);
    }
    Ok(agents)
}

/// The contents of node `node`'s guest file in lab `lab` (about 2 KiB, as
/// a router's configuration).
fn guest_file(lab: &str, node: usize) -> Vec<u8> {
    let mut text = format!("! {lab} r{node:02}\nhostname r{node:02}\n");
    for i in 0..48 {
        text.push_str(&format!(
            "interface eth{i}\n ip address 10.{node}.{i}.1/30\n ip ospf cost 10\n"
        ));
    }
    text.into_bytes()
}

/// Lab `name`: `nodes` routers in a ring (one link, so one segment, per
/// pair), each with a guest file; `files` gives each node's file reference.
fn bundle(name: &str, nodes: usize, files: &[FileRef]) -> BenchResult<LabBundle> {
    let mut text =
        format!("name: {name}\ndefaults: {{image: tiny, memory: 64MiB, cpus: 1}}\nnodes:\n");
    for n in 0..nodes {
        let (a, b) = (n, (n + nodes - 1) % nodes);
        text.push_str(&format!(
            "  r{n:02}: {{nics: {{eth0: {{ip: [10.{a}.0.1/24]}}, eth1: {{ip: [10.{b}.0.2/24]}}}}, \
             files: {{/etc/frr/frr.conf: r{n:02}.conf}}}}\n"
        ));
    }
    text.push_str("links:\n");
    for n in 0..nodes {
        let next = (n + 1) % nodes;
        text.push_str(&format!("  - [r{n:02}:eth0, r{next:02}:eth1]\n"));
    }
    let lab = lab::parse("lab.yaml", &text).map_err(|d| d.to_string())?;
    let files: BTreeMap<String, FileRef> = files
        .iter()
        .enumerate()
        .map(|(n, f)| (format!("r{n:02}.conf"), f.clone()))
        .collect();
    Ok(LabBundle { lab, files })
}

/// Puts lab `name`'s guest files in every coordinator's file store (as the
/// uploads of its deploy would have left them), and returns their references.
fn store_files(dirs: &[&Path], name: &str, nodes: usize) -> BenchResult<Vec<FileRef>> {
    let mut refs = Vec::new();
    for n in 0..nodes {
        let contents = guest_file(name, n);
        let file = FileRef::of(&contents);
        for dir in dirs {
            let files = dir.join("files");
            std::fs::create_dir_all(&files)?;
            // Not fsynced: this is the bench's setup, not a measured upload.
            std::fs::write(files.join(&file.sha256), &contents)?;
        }
        refs.push(file);
    }
    Ok(refs)
}

/// Stores labs `range` as running through the leader's Raft (16 writes in
/// flight), each placed by the leader's own placement over its state.
async fn store_labs(
    leader: &Running,
    dirs: &[&Path],
    range: std::ops::Range<usize>,
    nodes: usize,
) -> BenchResult {
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let name = format!("lab-{i:03}");
        let files = store_files(dirs, &name, nodes)?;
        let b = bundle(&name, nodes, &files)?;
        let bytes = codec::encode(&b)?;
        let deploy = {
            let state = leader.state.read();
            decide::deploy_command(&state.state, &Default::default(), &b, bytes, None)?
        };
        let raft = leader.raft.clone();
        tasks.spawn(async move {
            let status = Command::SetLabStatus {
                lab: name,
                status: LabStatus::Running,
            };
            for cmd in [deploy, status] {
                match raft.client_write(cmd).await {
                    Ok(w) if w.data.is_ok() => {}
                    other => return Err(format!("{other:?}")),
                }
            }
            Ok(())
        });
        while tasks.len() >= 16 {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Uploads lab `name`'s guest files through the API (as `labspan up` does).
async fn upload_files(client: &Client, name: &str, nodes: usize) -> BenchResult<Vec<FileRef>> {
    let mut refs = Vec::new();
    for n in 0..nodes {
        let contents = guest_file(name, n);
        let file = FileRef::of(&contents);
        match client.request(&Request::PutFile { contents }).await? {
            Reply::FileStored { sha256 } if sha256 == file.sha256 => refs.push(file),
            other => return Err(format!("upload refused: {other:?}").into()),
        }
    }
    Ok(refs)
}

/// `count` deploys of new labs through `client` (files uploaded first, not
/// timed), then the leader's placement alone for one more; prints a row.
async fn deploys(
    label: &str,
    client: &Client,
    leader: &Running,
    prefix: &str,
    count: usize,
    nodes: usize,
) -> BenchResult {
    let mut samples = Vec::new();
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let files = upload_files(client, &name, nodes).await?;
        let bytes = codec::encode(&bundle(&name, nodes, &files)?)?;
        let start = Instant::now();
        let reply = client
            .request(&Request::DeployLab {
                bundle: bytes,
                source: LabSource::default(),
                replace: false,
            })
            .await?;
        match reply {
            Reply::Deployed(r) if r.status == LabStatus::Running => samples.push(start.elapsed()),
            other => return Err(format!("deploy of {name} did not run: {other:?}").into()),
        }
    }
    samples.sort();
    // The leader's placement for one more lab of the same shape, alone.
    let name = format!("{prefix}-placed");
    let files = store_files(&[], &name, nodes)?;
    let b = bundle(&name, nodes, &files)?;
    let bytes = codec::encode(&b)?;
    let mut placing = Vec::new();
    for _ in 0..20 {
        let state = leader.state.read();
        let start = Instant::now();
        let cmd =
            decide::deploy_command(&state.state, &Default::default(), &b, bytes.clone(), None);
        placing.push(start.elapsed());
        cmd?;
    }
    placing.sort();
    println!(
        "| {label} | {count} | {:.1} | {:.1} | {:.2} | {} |",
        pct(&samples, 50),
        pct(&samples, 100),
        pct(&placing, 50),
        load_average()
    );
    Ok(())
}

/// The leader's recovery decision (`recovery::decide`, as its monitor task
/// makes it every tick while a lab has nodes on a host that is down) over
/// `state` with the `down` hosts that run the most nodes marked down:
/// first with nothing decided yet, then on the tick after its steps were
/// recorded (moves settled, labs without room `Degraded`), when a lab
/// whose lost nodes fit nowhere is searched for room again. Prints a row
/// of each.
fn recovery_ticks(state: &ClusterState, down: usize, ticks: usize) -> BenchResult {
    let mut state = state.clone();
    let mut per_host: BTreeMap<&String, usize> = BTreeMap::new();
    for host in state.labs.values().flat_map(|r| r.placement.values()) {
        *per_host.entry(host).or_default() += 1;
    }
    let mut busiest: Vec<(usize, String)> =
        per_host.into_iter().map(|(h, n)| (n, h.clone())).collect();
    busiest.sort_by(|a, b| b.cmp(a));
    let lost: usize = busiest.iter().take(down).map(|(n, _)| n).sum();
    for (_, host) in busiest.iter().take(down) {
        if let Some(h) = state.hosts.get_mut(host) {
            h.up = false;
        }
    }
    let capabilities = Default::default();
    for round in ["first tick", "next tick, steps recorded"] {
        let mut times = Vec::new();
        let mut steps = Vec::new();
        for _ in 0..ticks {
            let start = Instant::now();
            steps = service::recovery::decide(&state, &capabilities);
            times.push(start.elapsed());
        }
        times.sort();
        let count = |kind: fn(&service::recovery::Recovery) -> bool| {
            steps.iter().filter(|s| kind(s)).count()
        };
        use service::recovery::Recovery as R;
        println!(
            "| {down} hosts down ({lost} nodes lost), {round} | {ticks} | {:.1} | {:.1} | {} moves, {} degraded, {} live moves to make room | {} |",
            pct(&times, 50),
            pct(&times, 100),
            count(|s| matches!(s, R::Move { .. })),
            count(|s| matches!(s, R::Strand { .. })),
            count(|s| matches!(s, R::MakeRoom { .. })),
            load_average()
        );
        for step in &steps {
            let lab = match step {
                R::Move { lab, .. }
                | R::Strand { lab, .. }
                | R::Restore { lab }
                | R::MakeRoom { lab, .. } => lab,
            };
            if let Some(cmd) = step.command() {
                let _ = state.apply(&cmd);
            }
            if matches!(step, R::Move { .. }) {
                let _ = state.apply(&Command::SetLabStatus {
                    lab: lab.clone(),
                    status: LabStatus::Running,
                });
            }
        }
    }
    Ok(())
}

/// The leader's replica state.
fn state_of(node: &Running) -> ClusterState {
    node.state.read().state.clone()
}

async fn write_once(client: &Client) -> BenchResult<Duration> {
    let start = Instant::now();
    let req = Request::CreateToken {
        role: Role::Viewer,
        ttl_secs: 60,
    };
    match client.request(&req).await? {
        Reply::Token { .. } => Ok(start.elapsed()),
        other => Err(format!("CreateToken failed: {other:?}").into()),
    }
}

/// Triggers a snapshot on `node` and waits until it is saved; the API
/// writes sent to the leader meanwhile, one after another (sorted).
async fn snapshot(node: &Running, client: &Client) -> BenchResult<(Duration, Vec<Duration>)> {
    let applied = node
        .raft
        .metrics()
        .borrow()
        .last_applied
        .ok_or("nothing applied")?
        .index;
    let start = Instant::now();
    node.raft.trigger().snapshot().await?;
    let mut writes = Vec::new();
    loop {
        let done = node
            .raft
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= applied);
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err("no snapshot in 10 minutes".into());
        }
        writes.push(write_once(client).await?);
    }
    let built = start.elapsed();
    writes.sort();
    Ok((built, writes))
}

/// `n` API writes to the leader one after another, sorted.
async fn writes_alone(client: &Client, n: usize) -> BenchResult<Vec<Duration>> {
    let mut writes = Vec::new();
    for _ in 0..n {
        writes.push(write_once(client).await?);
    }
    writes.sort();
    Ok(writes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult {
    let labs = arg("--labs", 500);
    let nodes = arg("--nodes", 20);
    let host_count = arg("--hosts", 20);
    let count = arg("--deploys", 10);
    // Room for every lab (one vCPU a node) and a tenth more: placement
    // fills the hosts one after another, so most end up nearly full.
    let all_nodes = (labs + 2 * count + 1) * nodes;
    let vcpus = u64::try_from((all_nodes + all_nodes / 10).div_ceil(host_count.max(1)))?;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let fourth = TempDir::new()?;
    let (mut coordinators, admin) = three(&dirs).await?;
    let client = Client::connect(&admin).await?;
    let st = status(&client).await.ok_or("no status")?;
    let leader_id = st.leader.ok_or("no leader")?;
    let leader_at = coordinators
        .iter()
        .position(|n| n.raft.metrics().borrow().id == leader_id)
        .ok_or("the leader is not one of ours")?;
    let leader_addr = coordinators[leader_at].addr.to_string();
    let to_leader = Client::connect_to(&admin, std::slice::from_ref(&leader_addr)).await?;
    let agents = hosts(dirs[0].path(), &admin, &leader_addr, host_count, vcpus).await?;
    println!("load average at the start: {}", load_average());

    println!("| state | deploys | deploy p50 ms | deploy max ms | placement alone p50 ms | load average |");
    println!("|---|---|---|---|---|---|");
    let leader = &coordinators[leader_at];
    deploys("empty", &to_leader, leader, "empty", count, nodes).await?;
    let rss_before = rss_mib()?;

    let stores: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    let start = Instant::now();
    store_labs(leader, &stores, 0..labs, nodes).await?;
    let stored = start.elapsed();
    eventually("the replicas to apply every lab", || async {
        coordinators
            .iter()
            .all(|n| n.state.read().state.labs.len() >= labs + count)
            .then_some(())
    })
    .await?;
    let state = state_of(leader);
    let node_count: usize = state.labs.values().map(|r| r.placement.len()).sum();
    let rss_after = rss_mib()?;
    println!(
        "stored {labs} labs of {nodes} nodes in {:.1} s; process RSS {rss_before:.0} MiB \
         before, {rss_after:.0} MiB after ({:.1} MiB per replica)",
        stored.as_secs_f64(),
        (rss_after - rss_before) / 3.0
    );
    deploys(
        &format!("{} labs, {node_count} nodes", state.labs.len()),
        &to_leader,
        leader,
        "full",
        count,
        nodes,
    )
    .await?;

    println!("| recovery decision | ticks | p50 ms | max ms | steps | load average |");
    println!("|---|---|---|---|---|---|");
    let ticks = arg("--ticks", 3);
    let downs: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--down")
        .nth(1)
        .unwrap_or_else(|| "1,2,4".into())
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    for down in downs {
        recovery_ticks(&state_of(leader), down, ticks)?;
    }

    // The snapshot: encoding alone, then openraft's build on the leader.
    let state = state_of(leader);
    let specs: usize = state.labs.values().map(|r| r.spec.len()).sum();
    let start = Instant::now();
    let bytes = labspan_coordinator::raft::snapshot::write(&state)?;
    let encoded = start.elapsed();
    let start = Instant::now();
    let decoded = labspan_coordinator::raft::snapshot::read(&bytes)?;
    let decode = start.elapsed();
    if decoded != state {
        return Err("the snapshot does not decode to the state".into());
    }
    println!(
        "snapshot of {} labs: {:.2} MiB (specs {:.2} MiB); encoding {:.0} ms, decoding {:.0} ms",
        state.labs.len(),
        bytes.len() as f64 / 1048576.0,
        specs as f64 / 1048576.0,
        ms(encoded),
        ms(decode)
    );
    let alone = writes_alone(&to_leader, 20).await?;
    let (built, during) = snapshot(leader, &to_leader).await?;
    println!(
        "leader's snapshot, trigger to saved: {:.0} ms; {} writes meanwhile: p50 {:.1} ms, \
         slowest {:.1} ms (20 writes without a snapshot: p50 {:.1} ms, slowest {:.1} ms); \
         load average {}",
        ms(built),
        during.len(),
        pct(&during, 50),
        pct(&during, 100),
        pct(&alone, 50),
        pct(&alone, 100),
        load_average()
    );
    for node in &coordinators {
        let applied = node.raft.metrics().borrow().last_applied;
        let applied = applied.ok_or("nothing applied")?.index;
        node.raft.trigger().snapshot().await?;
        eventually("a snapshot", || async {
            node.raft
                .metrics()
                .borrow()
                .snapshot
                .is_some_and(|s| s.index >= applied)
                .then_some(())
        })
        .await?;
        node.raft.trigger().purge_log(applied).await?;
        eventually("the log purged", || async {
            node.raft
                .metrics()
                .borrow()
                .purged
                .is_some_and(|p| p.index >= applied)
                .then_some(())
        })
        .await?;
    }

    // A fourth coordinator: only the snapshot can bring it up to date.
    let want = state_of(leader).labs.len();
    let probe = format!("lab-{:03}", labs.saturating_sub(1));
    let start = Instant::now();
    let c4 = join_coordinator(
        &to_leader,
        coordinators[leader_at].addr,
        fourth.path(),
        "c4",
    )
    .await?;
    let started = start.elapsed();
    let installed = eventually("c4 to install the snapshot", || async {
        c4.raft
            .metrics()
            .borrow()
            .snapshot
            .is_some()
            .then(|| start.elapsed())
    })
    .await?;
    let holds = eventually("c4 to hold every lab", || async {
        (c4.state.read().state.labs.len() >= want).then(|| start.elapsed())
    })
    .await?;
    let via_c4 = Client::connect_to(&admin, &[c4.addr.to_string()]).await?;
    let serves = eventually("c4 to serve a read", || async {
        match via_c4
            .request(&Request::GetLab {
                name: probe.clone(),
            })
            .await
        {
            Ok(Reply::Lab { .. }) => Some(start.elapsed()),
            _ => None,
        }
    })
    .await?;
    let wanted = state_of(leader).file_hashes();
    let c4_files = labspan_proto::files::FileStore::at(fourth.path().join("files"));
    let copied = eventually("c4 to copy every guest file", || async {
        wanted
            .iter()
            .all(|h| c4_files.has(h))
            .then(|| start.elapsed())
    })
    .await?;
    println!(
        "fourth coordinator, from its start: started {:.0} ms, snapshot installed {:.0} ms, \
         every lab in its replica {:.0} ms, a GetLab through it answered {:.0} ms, \
         {} guest files copied {:.1} s; load average {}",
        ms(started),
        ms(installed),
        ms(holds),
        ms(serves),
        wanted.len(),
        copied.as_secs_f64(),
        load_average()
    );
    via_c4.close().await;
    coordinators.push(c4);
    for agent in agents {
        agent.close().await;
    }
    to_leader.close().await;
    client.close().await;
    for node in coordinators {
        node.shutdown().await;
    }
    Ok(())
}
