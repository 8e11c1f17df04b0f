//! Commit latency of a real API write on three coordinators:
//! one admin client sends `CreateToken` requests one after another; each is
//! a Raft entry (the token's hash) the leader appends with fsync, replicates
//! to a majority (which fsyncs too), applies and answers. The three
//! coordinators run in this process on 127.0.0.1, each with its own redb
//! file and QUIC endpoint, exactly as `labspan coordinator run` starts them.
//!
//! `cargo bench -p labspan-coordinator --bench control_plane [-- --writes N --agents N]`
//!
//! Prints p50/p90/p99/max of the round trip seen by the client, sent to the
//! leader directly and through a follower (which forwards to the leader).
//!
//! With `--agents N` (and `--writes 0` to skip the writes), N agents, each
//! with its own certificate from the cluster CA and its own QUIC connection
//! to the leader (made first, not timed), send `RegisterHost` all at once;
//! it prints the time until the last one has its lease, and p50/p99 of one
//! registration.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use labspan_coordinator::service::{self, DataDir, Running};
use labspan_proto::msg::{
    AgentReply, AgentRequest, ClusterStatus, JoinReply, JoinRequest, Reply, Request, Role,
};
use labspan_transport::client::{self, Client, ClusterFile};
use labspan_transport::tls::ClusterCa;
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

/// Polls `check` every 100 ms for at most 60 s.
async fn eventually<T, Fut>(what: &str, mut check: impl FnMut() -> Fut) -> BenchResult<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = check().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

/// One `CreateToken` round trip; the token is a committed Raft entry when it returns.
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
        let req = Request::CreateToken {
            role: Role::Coordinator,
            ttl_secs: 600,
        };
        let Reply::Token {
            token,
            ca_fingerprint,
            ..
        } = client.request(&req).await?
        else {
            return Err("no token".into());
        };
        let request = labspan_transport::tls::CertificateRequest::generate(&name)?;
        let join = JoinRequest::Join {
            token,
            name: name.clone(),
            csr_pem: request.csr_pem.clone(),
        };
        let JoinReply::Joined(grant) = client::join(api, &ca_fingerprint, &join).await? else {
            return Err("join refused".into());
        };
        DataDir::at(dir.path()).save_grant(&name, free_addr()?, &grant, &request)?;
        nodes.push(service::start(dir.path()).await?);
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

/// Percentile `p` (0..=100) of sorted samples, in milliseconds.
fn pct(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

async fn series(label: &str, client: &Client, writes: usize) -> BenchResult {
    for _ in 0..20 {
        write_once(client).await?; // Warm-up: connections, redb pages.
    }
    let mut samples = Vec::with_capacity(writes);
    for _ in 0..writes {
        samples.push(write_once(client).await?);
    }
    samples.sort();
    println!(
        "| {label} | {writes} | {:.2} | {:.2} | {:.2} | {:.2} |",
        pct(&samples, 50),
        pct(&samples, 90),
        pct(&samples, 99),
        pct(&samples, 100)
    );
    Ok(())
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Answers every plan push on `conn` with an empty report, as an agent with
/// nothing to run does.
fn serve_plans(conn: quinn::Connection) {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            if read_frame::<AgentRequest>(&mut recv).await.is_ok() {
                let _ = write_frame(&mut send, &AgentReply::Applied(Vec::new())).await;
            }
        }
    });
}

/// `n` agents connected to the leader at `leader`, then registered all at once.
async fn registrations(ca_dir: &Path, admin: &ClusterFile, leader: &str, n: usize) -> BenchResult {
    let ca = ClusterCa::from_pem(
        &std::fs::read_to_string(ca_dir.join("ca.pem"))?,
        &std::fs::read_to_string(ca_dir.join("ca.key"))?,
    )?;
    let connecting = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let cred = ca.issue(&format!("sim{i}"), Role::Agent)?;
        let file = ClusterFile {
            coordinators: vec![leader.to_string()],
            cert_pem: cred.cert_pem(),
            key_pem: cred.key_pem(),
            ..admin.clone()
        };
        let client = Client::connect_to(&file, &file.coordinators).await?;
        serve_plans(client.connection().clone());
        agents.push(client);
    }
    let connected = connecting.elapsed();
    let start = Instant::now();
    let registered = agents.iter().enumerate().map(|(i, client)| async move {
        let req = Request::RegisterHost {
            memory_mib: 16 * 1024,
            cpus: 8,
            vcpus: 32,
            vtep: std::net::IpAddr::from([198, 19, (i / 250) as u8, (i % 250 + 1) as u8]),
            underlay_mtu: 1500,
        };
        let sent = Instant::now();
        match client.request(&req).await {
            Ok(Reply::Lease { .. }) => Ok(sent.elapsed()),
            other => Err(format!("agent {i}: {other:?}")),
        }
    });
    let mut each = futures::future::join_all(registered)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let all = start.elapsed();
    each.sort();
    println!(
        "| agents | connect (not timed below) s | all registered s | one p50 ms | one p99 ms |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.1} | {:.2} | {:.1} | {:.1} |",
        connected.as_secs_f64(),
        all.as_secs_f64(),
        pct(&each, 50),
        pct(&each, 99)
    );
    for client in agents {
        client.close().await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult {
    let writes = arg("--writes", 1000);
    let agents = arg("--agents", 0);
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin) = three(&dirs).await?;
    let probe = Client::connect(&admin).await?;
    let st = status(&probe).await.ok_or("no status")?;
    probe.close().await;
    let leader = st.leader.ok_or("no leader")?;
    let addr_of = |leader_wanted: bool| {
        st.members
            .iter()
            .find(|m| (m.id == leader) == leader_wanted)
            .map(|m| m.addr.clone())
            .ok_or("no such member")
    };
    if writes > 0 {
        println!("| client sends to | writes | p50 ms | p90 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|");
        let to_leader = Client::connect_to(&admin, &[addr_of(true)?]).await?;
        series("the leader", &to_leader, writes).await?;
        to_leader.close().await;
        let to_follower = Client::connect_to(&admin, &[addr_of(false)?]).await?;
        series("a follower (forwarded)", &to_follower, writes).await?;
        to_follower.close().await;
    }
    if agents > 0 {
        registrations(dirs[0].path(), &admin, &addr_of(true)?, agents).await?;
    }
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
