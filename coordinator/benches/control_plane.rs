//! Commit latency of a real API write on three coordinators (issue 5):
//! one admin client sends `CreateToken` requests one after another; each is
//! a Raft entry (the token's hash) the leader appends with fsync, replicates
//! to a majority (which fsyncs too), applies and answers. The three
//! coordinators run in this process on 127.0.0.1, each with its own redb
//! file and QUIC endpoint, exactly as `labspan coordinator run` starts them.
//!
//! `cargo bench -p labspan-coordinator --bench control_plane [-- --writes N]`
//!
//! Prints p50/p90/p99/max of the round trip seen by the client, sent to the
//! leader directly and through a follower (which forwards to the leader).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use labspan_coordinator::service::{self, DataDir, Running};
use labspan_proto::msg::{ClusterStatus, JoinReply, JoinRequest, Reply, Request, Role};
use labspan_transport::client::{self, Client, ClusterFile};
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

fn writes_arg() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--writes")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult {
    let writes = writes_arg();
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
    println!("| client sends to | writes | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let to_leader = Client::connect_to(&admin, &[addr_of(true)?]).await?;
    series("the leader", &to_leader, writes).await?;
    to_leader.close().await;
    let to_follower = Client::connect_to(&admin, &[addr_of(false)?]).await?;
    series("a follower (forwarded)", &to_follower, writes).await?;
    to_follower.close().await;
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
