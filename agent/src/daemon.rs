//! The agent daemon: joins the cluster's leader, registers this host,
//! heartbeats, and serves what the leader asks on the agent's own connection
//! (agents only dial out): apply a host plan with [`Agent::apply`], run a
//! command in a guest. When the leader changes or goes away it finds the
//! new one by itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use labspan_proto::msg::{
    AgentReply, AgentRequest, ErrorKind, ErrorReply, ExecResult, Reply, Request, VmReport,
};
use labspan_proto::plan::HostPlan;
use labspan_transport::client::{Client, ClusterFile};
use labspan_transport::{read_frame, write_frame};
use quinn::Connection;

use crate::reconcile::Agent;

/// How often the agent tells the leader it is alive (the leader marks a
/// host down after 10 s of silence).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Pause before trying the coordinators again when none answered.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What the daemon announces about its host.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// This host's VXLAN tunnel endpoint address.
    pub vtep: IpAddr,
    /// MTU of the network between hosts.
    pub underlay_mtu: u32,
    pub memory_mib: u64,
    pub cpus: u32,
}

impl HostInfo {
    /// This machine's memory and CPUs, with the given fabric settings.
    pub fn of_this_machine(vtep: IpAddr, underlay_mtu: u32) -> std::io::Result<HostInfo> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(HostInfo {
            vtep,
            underlay_mtu,
            memory_mib: kib / 1024,
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        })
    }
}

/// Why one session with a coordinator ended (the daemon then reconnects).
enum SessionEnd {
    /// Go to this coordinator, the leader.
    Leader(String),
    /// Try the known coordinators again.
    Retry(String),
}

/// Runs the daemon until the process is stopped.
pub async fn run(cluster: ClusterFile, host: HostInfo, agent: Arc<Agent>) {
    let apply_lock = Arc::new(tokio::sync::Mutex::new(()));
    let mut hint: Option<String> = None;
    loop {
        let targets = match hint.take() {
            Some(leader) => vec![leader],
            None => cluster.coordinators.clone(),
        };
        let client = match Client::connect_to(&cluster, &targets).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no coordinator answered; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let server = tokio::spawn(serve(
            client.connection().clone(),
            agent.clone(),
            apply_lock.clone(),
        ));
        let end = session(&client, &host).await;
        server.abort();
        client.close().await;
        match end {
            SessionEnd::Leader(addr) => {
                tracing::info!(leader = addr, "following the leader");
                hint = Some(addr);
            }
            SessionEnd::Retry(why) => {
                tracing::warn!(reason = why, "lost the coordinator; reconnecting");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Registers, then heartbeats until the coordinator stops being the leader
/// or the connection breaks.
async fn session(client: &Client, host: &HostInfo) -> SessionEnd {
    let register = Request::RegisterHost {
        memory_mib: host.memory_mib,
        cpus: host.cpus,
        vtep: host.vtep,
        underlay_mtu: host.underlay_mtu,
    };
    let mut req = register.clone();
    loop {
        match client.request(&req).await {
            Ok(Reply::Done) => req = Request::Heartbeat,
            Ok(Reply::NotLeader { leader: Some(addr) }) => return SessionEnd::Leader(addr),
            Ok(Reply::NotLeader { leader: None }) => {
                return SessionEnd::Retry("no leader elected yet".into())
            }
            // The leader does not know this host (a new leader before it applied the registration): register again.
            Ok(Reply::Error(e)) if e.kind == ErrorKind::NotFound => req = register.clone(),
            Ok(other) => return SessionEnd::Retry(format!("unexpected reply {other:?}")),
            Err(e) => return SessionEnd::Retry(e.to_string()),
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
}

/// Serves the coordinator's requests on the agent's connection.
async fn serve(conn: Connection, agent: Arc<Agent>, apply_lock: Arc<tokio::sync::Mutex<()>>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (agent, apply_lock) = (agent.clone(), apply_lock.clone());
        tokio::spawn(async move {
            let reply = match read_frame::<AgentRequest>(&mut recv).await {
                Ok(AgentRequest::ApplyPlan(plan)) => {
                    let _one_plan_at_a_time = apply_lock.lock().await;
                    apply(&agent, &plan).await
                }
                Ok(AgentRequest::Exec {
                    lab,
                    node,
                    cmd,
                    timeout_secs,
                }) => {
                    match agent
                        .exec(&lab, &node, &cmd, Duration::from_secs(timeout_secs))
                        .await
                    {
                        Ok(out) => AgentReply::Exec(ExecResult {
                            exit_code: out.exit_code,
                            stdout: out.stdout,
                            stderr: out.stderr,
                        }),
                        Err(e) => {
                            AgentReply::Error(ErrorReply::new(ErrorKind::NotFound, e.to_string()))
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable request from the coordinator");
                    return;
                }
            };
            if let Err(e) = write_frame(&mut send, &reply).await {
                tracing::warn!(error = %e, "cannot answer the coordinator");
            }
        });
    }
}

async fn apply(agent: &Agent, plan: &HostPlan) -> AgentReply {
    tracing::info!(
        host = plan.host,
        labs = plan.labs.len(),
        "applying the host plan"
    );
    match agent
        .apply(plan, &|e| tracing::info!(event = ?e, "reconcile"))
        .await
    {
        Ok(report) => AgentReply::Applied(
            report
                .vms
                .into_iter()
                .map(|v| VmReport {
                    host: plan.host.clone(),
                    lab: v.lab,
                    vm: v.vm,
                    pid: v.pid,
                    error: v.error,
                })
                .collect(),
        ),
        Err(e) => AgentReply::Error(ErrorReply::new(
            ErrorKind::Internal,
            format!("host {}: {e}", plan.host),
        )),
    }
}
