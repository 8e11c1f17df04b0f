//! Commit latency of a 3-member etcd cluster, measured the way labspan's
//! `control_plane` bench measures its own: one client, one connection to
//! the leader, sequential writes, each acknowledged once the leader has
//! fsynced it and a majority has too.
//!
//! The members are Debian's `/usr/bin/etcd` (etcd-server), started here on
//! 127.0.0.1 with their data in a temporary folder and etcd's default
//! timing (heartbeat 100 ms, election 1 s); they are stopped (by the pids
//! started here) and their folders removed at the end, or on any error.
//!
//! `cargo run --release --manifest-path benches/etcd/Cargo.toml -- [--writes N] [--etcd PATH]`
//!
//! Prints one markdown row: p50/p90/p99/max in milliseconds.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio::process::{Child, Command};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A free TCP port on 127.0.0.1 (closed again before etcd binds it).
fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Three etcd processes; killed when dropped.
struct Members {
    children: Vec<Child>,
    clients: Vec<String>,
    _data: tempfile::TempDir,
}

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

async fn start(etcd: &str) -> BenchResult<Members> {
    let data = tempfile::TempDir::new()?;
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        peers.push(free_port()?);
        clients.push(free_port()?);
    }
    let cluster: Vec<String> = (0..3)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", peers[i]))
        .collect();
    let cluster = cluster.join(",");
    let mut children = Vec::new();
    for i in 0..3 {
        let peer = format!("http://127.0.0.1:{}", peers[i]);
        let client = format!("http://127.0.0.1:{}", clients[i]);
        let dir = data.path().join(format!("m{i}"));
        let log = std::fs::File::create(data.path().join(format!("m{i}.log")))?;
        children.push(
            Command::new(etcd)
                .arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(&dir)
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--initial-cluster-token", "labspan-bench"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    Ok(Members {
        children,
        clients: clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
        _data: data,
    })
}

/// The client URL of the member that leads, once there is a leader.
async fn leader(members: &Members) -> BenchResult<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for url in &members.clients {
            let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
            if let Ok(mut c) = Client::connect([url.as_str()], Some(opts)).await {
                if let Ok(s) = c.status().await {
                    if s.leader() != 0 && s.leader() == s.header().map_or(0, |h| h.member_id()) {
                        return Ok(url.clone());
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err("etcd elected no leader in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percentile `p` (0..=100) of sorted samples, in milliseconds.
fn pct(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult {
    let writes: usize = arg("--writes").map_or(Ok(1000), |n| n.parse())?;
    if writes == 0 {
        return Err("--writes: at least 1".into());
    }
    let etcd = arg("--etcd").unwrap_or_else(|| "/usr/bin/etcd".into());
    let members = start(&etcd).await?;
    let url = leader(&members).await?;
    let mut client = Client::connect([url.as_str()], None).await?;
    // The same payload size as labspan's token entry (a sha256 in hex).
    let value = "0".repeat(64);
    for i in 0..20 {
        client
            .put(format!("warm/{i}"), value.as_str(), None)
            .await?;
    }
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        client
            .put(format!("token/{i}"), value.as_str(), None)
            .await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "| etcd {}, the leader | {writes} | {:.2} | {:.2} | {:.2} | {:.2} |",
        version(&etcd).await,
        pct(&samples, 50),
        pct(&samples, 90),
        pct(&samples, 99),
        pct(&samples, 100)
    );
    drop(members);
    Ok(())
}

async fn version(etcd: &str) -> String {
    let out = Command::new(etcd).arg("--version").output().await;
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("etcd Version: "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}
