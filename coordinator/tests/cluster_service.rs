//! The coordinator service end to end on 127.0.0.1: `cluster init`'s data
//! folder, joins with tokens over the join endpoint, learner → voter
//! promotion, the API with role checks, leader forwarding, a lab deployed
//! through the API onto a registered host (a stand-in agent answers the plan
//! push on its own connection), and a restart of every coordinator.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use labspan_coordinator::raft::{ClusterState, Command};
use labspan_coordinator::service::{self, DataDir, Running};
use labspan_proto::codec;
use labspan_proto::lab::{self, LabBundle};
use labspan_proto::msg::{
    AgentReply, AgentRequest, ClusterStatus, ErrorKind, JoinGrant, JoinReply, JoinRequest,
    LabSource, LabStatus, Reply, Request, Role, VmReport,
};
use labspan_proto::plan::HostPlan;
use labspan_testutil::wait_until_async;
use labspan_transport::client::{self, Client, ClusterFile};
use labspan_transport::tls::{ca_fingerprint, CertificateRequest, ClusterCa};
use labspan_transport::{read_frame, write_frame};
use tempfile::TempDir;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const PING: &str = r#"
name: ping
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.1.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.1.2/24]}}}
links:
  - [a:eth0, b:eth0]
"#;

/// A loopback address whose port and port + 1 (the join endpoint) are free.
fn free_addr() -> TestResult<SocketAddr> {
    for _ in 0..100 {
        let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = a.local_addr()?.port();
        if port < u16::MAX && UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
    }
    Err("no free pair of UDP ports".into())
}

/// [`wait_until_async`] with this file's bound of 60 s (how long a broken
/// test hangs, not a timing assertion).
async fn eventually<T, F, Fut>(what: &str, check: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    Ok(wait_until_async(what, Duration::from_secs(60), check).await)
}

async fn status(client: &Client) -> Option<ClusterStatus> {
    match client.request(&Request::Status).await {
        Ok(Reply::Status(s)) => Some(s),
        _ => None,
    }
}

/// A client of the cluster in `file`, once a coordinator answers with a leader.
async fn leader_client(what: &str, file: &ClusterFile) -> TestResult<Client> {
    eventually(what, || async {
        let c = Client::connect(file).await.ok()?;
        status(&c).await.filter(|s| s.leader.is_some()).map(|_| c)
    })
    .await
}

/// One coordinator (`init` in `dir`), started, and an admin client once it leads.
async fn one_coordinator(dir: &TempDir) -> TestResult<(Running, ClusterFile, Client)> {
    let admin_file = DataDir::at(dir.path()).init("test", "c1", free_addr()?)?;
    let node = service::start(dir.path()).await?;
    let admin = leader_client("a leader", &admin_file).await?;
    Ok((node, admin_file, admin))
}

async fn token(admin: &Client, role: Role) -> TestResult<(String, String)> {
    match admin
        .request(&Request::CreateToken {
            role,
            ttl_secs: 600,
        })
        .await?
    {
        Reply::Token {
            token,
            ca_fingerprint,
            ..
        } => Ok((token, ca_fingerprint)),
        other => Err(format!("no token: {other:?}").into()),
    }
}

/// Joins as `name` with a key made here; returns the grant and that key.
async fn join(
    api: SocketAddr,
    fingerprint: &str,
    token: &str,
    name: &str,
) -> TestResult<(JoinGrant, CertificateRequest)> {
    let request = CertificateRequest::generate(name)?;
    let grant = join_with(api, fingerprint, token, name, &request.csr_pem).await?;
    Ok((grant, request))
}

async fn join_with(
    api: SocketAddr,
    fingerprint: &str,
    token: &str,
    name: &str,
    csr_pem: &str,
) -> TestResult<JoinGrant> {
    let req = JoinRequest::Join {
        token: token.into(),
        name: name.into(),
        csr_pem: csr_pem.into(),
    };
    match client::join(api, fingerprint, &req).await? {
        JoinReply::Joined(grant) => Ok(grant),
        JoinReply::Error(e) => Err(format!("join refused: {e}").into()),
    }
}

/// Three coordinators: c1 from `init`, c2 and c3 joined with tokens.
async fn three_coordinators(dirs: &[TempDir; 3]) -> TestResult<(Vec<Running>, ClusterFile)> {
    let admin = DataDir::at(dirs[0].path()).init("test", "c1", free_addr()?)?;
    let first = service::start(dirs[0].path()).await?;
    let api = first.addr;
    let mut nodes = vec![first];
    let client = leader_client("the first coordinator to lead", &admin).await?;
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let name = format!("c{}", i + 1);
        let (token, fingerprint) = token(&client, Role::Coordinator).await?;
        let (grant, request) = join(api, &fingerprint, &token, &name).await?;
        DataDir::at(dir.path()).save_grant(&name, free_addr()?, &grant, &request)?;
        nodes.push(service::start(dir.path()).await?);
    }
    client.close().await;
    Ok((nodes, admin))
}

fn states(nodes: &[Running]) -> Vec<ClusterState> {
    nodes.iter().map(|n| n.state.read().state.clone()).collect()
}

/// Waits until every replica has applied the same entries and returns its state.
async fn converged(nodes: &[Running]) -> TestResult<ClusterState> {
    eventually("replicas to agree", || async {
        let applied: Vec<_> = nodes
            .iter()
            .map(|n| n.raft.metrics().borrow().last_applied)
            .collect();
        let s = states(nodes);
        (applied.iter().all(|a| *a == applied[0]) && s.iter().all(|x| *x == s[0]))
            .then(|| s[0].clone())
    })
    .await
}

async fn shutdown(nodes: Vec<Running>) {
    for node in nodes {
        node.shutdown().await;
    }
}

fn ping_bundle() -> TestResult<Vec<u8>> {
    let lab = lab::parse("ping.yaml", PING).map_err(|d| d.to_string())?;
    Ok(codec::encode(&LabBundle {
        lab,
        files: Default::default(),
    })?)
}

/// Stands in for an agent daemon: answers every plan push with a report of
/// each VM in the plan, as `agent::daemon` does after applying it.
fn serve_plans(conn: quinn::Connection, host: String) {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
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
                _ => AgentReply::Error(labspan_proto::msg::ErrorReply::new(
                    ErrorKind::Invalid,
                    "stand-in",
                )),
            };
            let _ = write_frame(&mut send, &reply).await;
        }
    });
}

/// Heartbeats on `conn` as often as the leader says (as the agent daemon
/// does) until it closes.
fn heartbeat(conn: quinn::Connection) {
    tokio::spawn(async move {
        let mut every = service::Timing::default().heartbeat;
        while let Ok(reply) =
            labspan_transport::request::<_, Reply>(&conn, &Request::Heartbeat).await
        {
            if let Reply::Lease { heartbeat_ms, .. } = reply {
                every = Duration::from_millis(heartbeat_ms);
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Joins an agent named `name` and registers it with the leader, following
/// the leader from whichever coordinator answered first; with `alive`, it
/// heartbeats from then on.
async fn agent(
    admin: &Client,
    api: SocketAddr,
    name: &str,
    alive: bool,
) -> TestResult<(Client, ClusterFile)> {
    agent_serving(admin, api, name, alive, serve_plans).await
}

/// [`agent`], with `serve` answering the coordinator's streams.
async fn agent_serving(
    admin: &Client,
    api: SocketAddr,
    name: &str,
    alive: bool,
    serve: impl Fn(quinn::Connection, String),
) -> TestResult<(Client, ClusterFile)> {
    let (token, fingerprint) = token(admin, Role::Agent).await?;
    let (grant, request) = join(api, &fingerprint, &token, name).await?;
    let me = request.credential(&grant.cert_pem)?;
    let file = ClusterFile {
        coordinators: grant.coordinators,
        ca_pem: grant.ca_pem,
        cert_pem: me.cert_pem(),
        key_pem: me.key_pem(),
    };
    let register = Request::RegisterHost {
        memory_mib: 16 * 1024,
        cpus: 4,
        vcpus: 16,
        vtep: "198.18.0.1".parse()?,
        underlay_mtu: 1500,
    };
    let conn = register_with_leader(&file, &file.coordinators, &register, name, &serve).await?;
    if alive {
        heartbeat(conn.connection().clone());
    }
    Ok((conn, file))
}

/// Connects to one of `addrs` and registers, following `NotLeader` (as the
/// agent daemon does), with `serve` answering on each connection.
async fn register_with_leader(
    file: &ClusterFile,
    addrs: &[String],
    register: &Request,
    name: &str,
    serve: &impl Fn(quinn::Connection, String),
) -> TestResult<Client> {
    let mut conn = Client::connect_to(file, addrs).await?;
    for _ in 0..3 {
        serve(conn.connection().clone(), name.to_string());
        match conn.request(register).await? {
            Reply::Lease { .. } => return Ok(conn),
            Reply::NotLeader {
                leader: Some(leader),
            } => conn = Client::connect_to(file, &[leader]).await?,
            other => return Err(format!("registration refused: {other:?}").into()),
        }
    }
    Err("the agent did not find the leader".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_joins_serves_the_api_and_restarts_from_disk() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin_file) = three_coordinators(&dirs).await?;

    // Status: three voters, one leader, the same through any coordinator.
    let admin = Client::connect(&admin_file).await?;
    let st = eventually("three voters", || async {
        status(&admin)
            .await
            .filter(|s| s.members.iter().filter(|m| m.voter).count() == 3)
    })
    .await?;
    assert!(st.leader.is_some(), "{st:?}");
    let names: Vec<&str> = st.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "c3"]);

    // A lab deployed through a follower is forwarded to the leader, placed on
    // the registered host, pushed to its agent, and Running on every replica.
    let leader = st.leader.ok_or("no leader")?;
    let follower = st
        .members
        .iter()
        .find(|m| m.id != leader)
        .ok_or("no follower")?;
    let (_agent, agent_file) = agent(&admin, nodes[0].addr, "h1", true).await?;
    let via_follower =
        Client::connect_to(&admin_file, std::slice::from_ref(&follower.addr)).await?;
    let deployed = match via_follower
        .request(&Request::DeployLab {
            bundle: ping_bundle()?,
            source: LabSource::default(),
            replace: false,
        })
        .await?
    {
        Reply::Deployed(r) => r,
        other => return Err(format!("deploy failed: {other:?}").into()),
    };
    assert_eq!(deployed.status, LabStatus::Running, "{deployed:?}");
    assert_eq!(
        deployed.placement.values().collect::<Vec<_>>(),
        ["h1", "h1"]
    );
    assert_eq!(deployed.vms.len(), 2, "{deployed:?}");
    let state = converged(&nodes).await?;
    assert!(state.labs.contains_key("ping"));
    assert!(state.hosts["h1"].up);

    // An agent certificate asking for admin actions is refused; nothing changes.
    let agent_client = Client::connect(&agent_file).await?;
    let forbidden = [
        Request::DeleteLab {
            name: "ping".into(),
        },
        Request::CreateToken {
            role: Role::Admin,
            ttl_secs: 60,
        },
        Request::Forwarded {
            name: "admin".into(),
            role: Role::Admin,
            request: Box::new(Request::DeleteLab {
                name: "ping".into(),
            }),
        },
    ];
    for req in forbidden {
        let reply = agent_client.request(&req).await?;
        assert!(
            matches!(&reply, Reply::Error(e) if e.kind == ErrorKind::Forbidden),
            "{reply:?}"
        );
    }
    // A bundle that is not a lab is refused the same way.
    let bad = admin
        .request(&Request::DeployLab {
            bundle: b"not a lab".to_vec(),
            source: LabSource::default(),
            replace: false,
        })
        .await?;
    assert!(
        matches!(&bad, Reply::Error(e) if e.kind == ErrorKind::Invalid),
        "{bad:?}"
    );
    assert_eq!(
        converged(&nodes).await?,
        state,
        "a refused request changed the state"
    );

    // A client with a certificate from another CA gets no reply.
    let other = ClusterCa::generate("other")?.issue("admin", Role::Admin)?;
    let stranger = ClusterFile {
        cert_pem: other.cert_pem(),
        key_pem: other.key_pem(),
        ..admin_file.clone()
    };
    let refused = match Client::connect(&stranger).await {
        Err(_) => true,
        Ok(c) => c.request(&Request::Status).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was served");

    // Stop every coordinator; started again from their folders, they hold
    // the same state.
    agent_client.close().await;
    via_follower.close().await;
    admin.close().await;
    shutdown(nodes).await;
    let mut again = Vec::new();
    for dir in &dirs {
        again.push(service::start(dir.path()).await?);
    }
    let admin = Client::connect(&admin_file).await?;
    eventually("a leader after the restart", || async {
        status(&admin).await.filter(|s| s.leader.is_some())
    })
    .await?;
    // A restarted coordinator applies the entries it had stored as
    // committed; the last ones are applied once the new leader commits an
    // entry of its own term (reads wait for that: `Inner::fresh`). So the
    // replicas may agree for a moment on a state a few entries short.
    let restored = eventually(
        "the replicas back to the state before the restart",
        || async {
            let mut s = states(&again);
            // Host liveness is not replayed; everything else is as before.
            s.iter_mut()
                .for_each(|s| s.hosts.values_mut().for_each(|h| h.up = true));
            let same = s
                .iter()
                .all(|x| x.labs == state.labs && x.tokens == state.tokens);
            same.then(|| s.swap_remove(0))
        },
    )
    .await?;
    assert_eq!(restored.labs, state.labs);
    assert_eq!(restored.tokens, state.tokens);
    admin.close().await;
    shutdown(again).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_is_one_time_and_the_fingerprint_is_checked() -> TestResult {
    let dir = TempDir::new()?;
    let (node, admin_file, admin) = one_coordinator(&dir).await?;
    let (token, fingerprint) = token(&admin, Role::Agent).await?;
    let ca = labspan_transport::tls::cert_from_pem(&admin_file.ca_pem, "ca")?;
    assert_eq!(fingerprint, ca_fingerprint(&ca));

    let wrong = format!("sha256:{}", "0".repeat(64));
    assert!(
        join(node.addr, &wrong, &token, "h1").await.is_err(),
        "joined a CA with the wrong fingerprint"
    );
    // A request that is not signed by its own key (one byte of its
    // signature changed) is refused, and does not spend the token.
    let request = CertificateRequest::generate("h1")?;
    let forged = tamper(&request.csr_pem);
    let refused = join_with(node.addr, &fingerprint, &token, "h1", &forged).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("certificate request")),
        "a forged certificate request was signed: {refused:?}"
    );
    let grant = join_with(node.addr, &fingerprint, &token, "h1", &request.csr_pem).await?;
    assert_eq!(grant.role, Role::Agent);
    assert!(grant.ca_key_pem.is_none(), "an agent got the CA key");
    // The certificate is for the key the member made and kept.
    request.credential(&grant.cert_pem)?;
    let other = CertificateRequest::generate("h1")?;
    assert!(
        other.credential(&grant.cert_pem).is_err(),
        "a certificate for one key was taken for another"
    );
    let again = join(node.addr, &fingerprint, &token, "h2").await;
    assert!(
        again.is_err_and(|e| e.to_string().contains("already used")),
        "a token was used twice"
    );
    admin.close().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_heartbeats_stop_is_marked_down_on_every_replica() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let (silent, _) = agent(&admin, nodes[0].addr, "h9", false).await?;
    let host_up = |want: bool| {
        let nodes = &nodes;
        move || async move {
            let states = states(nodes);
            states
                .iter()
                .all(|s| s.hosts.get("h9").is_some_and(|h| h.up == want))
                .then_some(())
        }
    };
    eventually("h9 registered and up everywhere", host_up(true)).await?;
    // It never heartbeats: the leader marks it down (a log entry), and every
    // replica applies that.
    eventually("h9 marked down everywhere", host_up(false)).await?;
    silent.close().await;
    admin.close().await;
    shutdown(nodes).await;
    Ok(())
}

/// Stands in for an agent that is still applying lab `lab` when its leader
/// dies: a plan without that lab is answered, a plan with it is sent on
/// `held` and never answered.
fn hold_plans_of(
    lab: &'static str,
    held: tokio::sync::mpsc::UnboundedSender<HostPlan>,
) -> impl Fn(quinn::Connection, String) {
    move |conn, host| {
        let held = held.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some((mut send, plan)) = next_plan(&conn).await {
                if plan.labs.iter().any(|l| l.lab == lab) {
                    let _ = held.send(plan);
                    pending.push(send); // Left unanswered, as by a busy agent.
                } else {
                    let _ = write_frame(&mut send, &applied(&host, &plan)).await;
                }
            }
        });
    }
}

/// The leader's next plan push, with the stream to answer it on; other
/// requests (a returning host is told which checkpoint files to keep) are
/// left unanswered, as these agents hold none. `None` once the connection
/// ends.
async fn next_plan(conn: &quinn::Connection) -> Option<(quinn::SendStream, HostPlan)> {
    loop {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        if let AgentRequest::ApplyPlan(plan) = read_frame(&mut recv).await.ok()? {
            return Some((send, plan));
        }
    }
}

/// Answers every plan push, and sends each plan on `seen`.
fn record_plans(
    seen: tokio::sync::mpsc::UnboundedSender<HostPlan>,
) -> impl Fn(quinn::Connection, String) {
    move |conn, host| {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some((mut send, plan)) = next_plan(&conn).await {
                let _ = write_frame(&mut send, &applied(&host, &plan)).await;
                let _ = seen.send(plan);
            }
        });
    }
}

/// The reply of an agent that applied `plan`: one report per VM.
fn applied(host: &str, plan: &HostPlan) -> AgentReply {
    AgentReply::Applied(
        plan.labs
            .iter()
            .flat_map(|l| l.vms.iter().map(move |vm| (l.lab.clone(), vm.name.clone())))
            .map(|(lab, vm)| VmReport {
                host: host.to_string(),
                lab,
                vm,
                pid: 1,
                error: None,
            })
            .collect(),
    )
}

/// The leader dies while its deploy waits for the agent;
/// the new leader finishes the deploy with the same plan (so the agent, which
/// keeps a VM whose plan did not change, restarts nothing), and the lab is
/// `Running` on the remaining replicas, which agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_survives_the_death_of_its_leader() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (mut nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let st = eventually("three voters", || async {
        status(&admin)
            .await
            .filter(|s| s.members.iter().filter(|m| m.voter).count() == 3)
    })
    .await?;
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let (agent_conn, agent_file) = agent_serving(
        &admin,
        nodes[0].addr,
        "h1",
        true,
        hold_plans_of("ping", held_tx),
    )
    .await?;

    // The deploy reaches the agent, which does not answer yet.
    let deploy_client = Client::connect(&admin_file).await?;
    let bundle = ping_bundle()?;
    let deploy = tokio::spawn(async move {
        let reply = deploy_client
            .request(&Request::DeployLab {
                bundle,
                source: LabSource::default(),
                replace: false,
            })
            .await;
        deploy_client.close().await;
        reply
    });
    let first_plan = held_rx
        .recv()
        .await
        .ok_or("the deploy never reached the agent")?;
    let leader_id = status(&admin)
        .await
        .and_then(|s| s.leader)
        .ok_or("no leader")?;
    let leader_name = &st
        .members
        .iter()
        .find(|m| m.id == leader_id)
        .ok_or("the leader is not a member")?
        .name;
    let leader_at = dirs_index(leader_name)?;
    eventually("the lab Deploying on every replica", || async {
        states(&nodes)
            .iter()
            .all(|s| {
                s.labs
                    .get("ping")
                    .is_some_and(|l| l.status == labspan_coordinator::raft::LabStatus::Deploying)
            })
            .then_some(())
    })
    .await?;

    // The leader dies mid-deploy; its client sees the deploy fail.
    admin.close().await;
    nodes.remove(leader_at).shutdown().await;
    let reply = deploy.await?;
    assert!(
        !matches!(reply, Ok(Reply::Deployed(_))),
        "the deploy finished on a dead leader: {reply:?}"
    );
    agent_conn.close().await;

    // The agent finds the new leader, which pushes the same plan again.
    let survivors: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let register = Request::RegisterHost {
        memory_mib: 16 * 1024,
        cpus: 4,
        vcpus: 16,
        vtep: "198.18.0.1".parse()?,
        underlay_mtu: 1500,
    };
    let agent_conn = eventually("the agent to reach the new leader", || async {
        register_with_leader(
            &agent_file,
            &survivors,
            &register,
            "h1",
            &record_plans(seen_tx.clone()),
        )
        .await
        .ok()
    })
    .await?;
    heartbeat(agent_conn.connection().clone());
    let state = eventually("the lab Running on the remaining replicas", || async {
        let s = states(&nodes);
        let running = s.iter().all(|x| {
            x.labs
                .get("ping")
                .is_some_and(|l| l.status == labspan_coordinator::raft::LabStatus::Running)
        });
        running.then(|| s[0].clone())
    })
    .await?;
    assert_eq!(converged(&nodes).await?.labs, state.labs);
    while let Ok(plan) = seen_rx.try_recv() {
        if plan.labs.iter().any(|l| l.lab == "ping") {
            // Same plan; only its generation (fencing token) is newer.
            assert!(plan.generation >= first_plan.generation, "{plan:?}");
            assert_eq!(
                HostPlan {
                    generation: first_plan.generation,
                    ..plan
                },
                first_plan,
                "the new leader planned the lab differently"
            );
        }
    }
    agent_conn.close().await;
    shutdown(nodes).await;
    Ok(())
}

/// Where coordinator `name` (c1, c2, c3) is in [`three_coordinators`]' list.
fn dirs_index(name: &str) -> TestResult<usize> {
    match name {
        "c1" => Ok(0),
        "c2" => Ok(1),
        "c3" => Ok(2),
        other => Err(format!("unknown coordinator {other}").into()),
    }
}

/// `cluster remove`: the leader refuses a removal that leaves too few
/// reachable voters and the removal of its last voter; a removed node is
/// out of `cluster status`, writes still commit, and the removed node
/// refuses API requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_is_removed_and_the_rest_still_commit() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (mut nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let st = eventually("three voters", || async {
        status(&admin)
            .await
            .filter(|s| s.members.iter().filter(|m| m.voter).count() == 3)
    })
    .await?;
    let leader = st.leader.ok_or("no leader")?;
    let followers: Vec<_> = st.members.iter().filter(|m| m.id != leader).collect();
    let (stopped, kept) = (followers[0].clone(), followers[1].clone());
    let remove = |member: &str| Request::RemoveCoordinator {
        member: member.to_string(),
    };

    // With `stopped` down, removing `kept` would leave one of two voters: refused.
    let at = dirs_index(&stopped.name)?;
    let kept_at = dirs_index(&kept.name)?;
    nodes.remove(at).shutdown().await;
    let admin = Client::connect_to(
        &admin_file,
        &[st.members[dirs_index_of(&st, leader)?].addr.clone()],
    )
    .await?;
    let reply = admin.request(&remove(&kept.name)).await?;
    assert!(
        matches!(&reply, Reply::Error(e) if e.kind == ErrorKind::Unavailable),
        "{reply:?}"
    );
    let reply = admin.request(&remove("c9")).await?;
    assert!(
        matches!(&reply, Reply::Error(e) if e.kind == ErrorKind::NotFound),
        "{reply:?}"
    );

    // Removing the stopped one (by id) leaves two voters that still commit.
    let reply = admin.request(&remove(&stopped.id.to_string())).await?;
    assert_eq!(reply, Reply::Done);
    let st = status(&admin).await.ok_or("no status")?;
    let names: Vec<&str> = st.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{st:?}");
    assert!(!names.contains(&stopped.name.as_str()), "{st:?}");
    token(&admin, Role::Viewer).await?;

    // Down to the leader alone, then its removal is refused.
    assert_eq!(admin.request(&remove(&kept.name)).await?, Reply::Done);
    token(&admin, Role::Viewer).await?;

    // The removed coordinator's certificate, signed by the CA, is refused.
    let read = |file: &str| std::fs::read_to_string(dirs[kept_at].path().join(file));
    let as_removed = ClusterFile {
        coordinators: vec![st.members[dirs_index_of(&st, leader)?].addr.clone()],
        ca_pem: admin_file.ca_pem.clone(),
        cert_pem: read("node.pem")?,
        key_pem: read("node.key")?,
    };
    let removed = Client::connect(&as_removed).await?;
    let reply = removed.request(&Request::WhoAmI).await?;
    assert!(
        matches!(&reply, Reply::Error(e) if e.kind == ErrorKind::Forbidden && e.message.contains("removed")),
        "a removed coordinator's certificate was taken: {reply:?}"
    );
    removed.close().await;
    let leader_name = st
        .members
        .iter()
        .find(|m| m.id == leader)
        .ok_or("leader")?
        .name
        .clone();
    let reply = admin.request(&remove(&leader_name)).await?;
    assert!(
        matches!(&reply, Reply::Error(e) if e.kind == ErrorKind::Invalid && e.message.contains("last voter")),
        "{reply:?}"
    );
    let st = status(&admin).await.ok_or("no status")?;
    assert_eq!(st.members.len(), 1, "{st:?}");

    // The removed (running) coordinator refuses writes instead of forwarding them.
    let kept_at = if kept_at > at { kept_at - 1 } else { kept_at };
    let removed = Client::connect_to(&admin_file, &[nodes[kept_at].addr.to_string()]).await?;
    let refused = eventually("the removed coordinator to refuse writes", || async {
        let req = Request::CreateToken {
            role: Role::Viewer,
            ttl_secs: 60,
        };
        match removed.request(&req).await {
            Ok(Reply::Error(e)) if e.message.contains("was removed") => Some(()),
            _ => None,
        }
    })
    .await;
    removed.close().await;
    admin.close().await;
    shutdown(nodes).await;
    refused
}

/// Index in `st.members` of member `id`.
fn dirs_index_of(st: &ClusterStatus, id: u64) -> TestResult<usize> {
    st.members
        .iter()
        .position(|m| m.id == id)
        .ok_or_else(|| "no such member".into())
}

/// Removing the leader itself: it steps down once demoted and the next
/// leader drops it; the two others commit and list two members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_itself_and_the_next_leader_takes_over() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let st = eventually("three voters", || async {
        status(&admin)
            .await
            .filter(|s| s.members.iter().filter(|m| m.voter).count() == 3)
    })
    .await?;
    let leader = st.leader.ok_or("no leader")?;
    let old = st.members[dirs_index_of(&st, leader)?].clone();
    let reply = admin
        .request(&Request::RemoveCoordinator {
            member: old.name.clone(),
        })
        .await?;
    assert_eq!(reply, Reply::Done);
    let others: Vec<String> = st
        .members
        .iter()
        .filter(|m| m.id != leader)
        .map(|m| m.addr.clone())
        .collect();
    let via_other = Client::connect_to(&admin_file, &others).await?;
    let st = eventually("two members and a new leader", || async {
        status(&via_other)
            .await
            .filter(|s| s.members.len() == 2 && s.leader.is_some_and(|l| l != leader))
    })
    .await?;
    assert!(
        st.members.iter().all(|m| m.voter && m.id != leader),
        "{st:?}"
    );
    token(&via_other, Role::Viewer).await?;
    via_other.close().await;
    admin.close().await;
    shutdown(nodes).await;
    Ok(())
}

/// `pem` with one base64 letter changed near its end, in the signature.
fn tamper(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(String::from).collect();
    if let Some(body) = lines.iter_mut().rev().find(|l| !l.starts_with("-----")) {
        let keep = body.trim_end_matches('=').len();
        if let Some(at) = keep.checked_sub(3) {
            let swapped = if body.as_bytes()[at] == b'A' {
                "B"
            } else {
                "A"
            };
            body.replace_range(at..=at, swapped);
        }
    }
    lines.join("\n") + "\n"
}

/// Stands in for an agent that fetches every guest file of a plan by hash
/// from the coordinator (as `agent::daemon` does) before it reports its VMs;
/// what it got is kept in `fetched` (sha256 → contents).
fn fetch_files_then_apply(
    fetched: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>>,
) -> impl Fn(quinn::Connection, String) {
    move |conn: quinn::Connection, host: String| {
        let fetched = fetched.clone();
        tokio::spawn(async move {
            while let Some((mut send, plan)) = next_plan(&conn).await {
                for file in plan
                    .labs
                    .iter()
                    .flat_map(|l| &l.vms)
                    .flat_map(|v| &v.config.files)
                {
                    let req = Request::GetFile {
                        sha256: file.file.sha256.clone(),
                    };
                    if let Ok(Reply::File { contents }) =
                        labspan_transport::request::<_, Reply>(&conn, &req).await
                    {
                        if let Ok(mut f) = fetched.lock() {
                            f.insert(file.file.sha256.clone(), contents);
                        }
                    }
                }
                let _ = write_frame(&mut send, &applied(&host, &plan)).await;
            }
        });
    }
}

const WITH_FILE: &str = r#"
name: big
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {files: {/srv/blob: blob.bin}}
"#;

fn bundle_with(sha256: &str, size: u64) -> TestResult<Vec<u8>> {
    let lab = lab::parse("big.yaml", WITH_FILE).map_err(|d| d.to_string())?;
    let file = lab::FileRef {
        sha256: sha256.to_string(),
        size,
    };
    Ok(codec::encode(&LabBundle {
        lab,
        files: [("blob.bin".to_string(), file)].into(),
    })?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_with_a_12_mib_guest_file_deploys_and_status_answers_throughout() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let api = nodes[0].addr;
    let fetched = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let (_agent, _) = agent_serving(
        &admin,
        api,
        "host-1",
        true,
        fetch_files_then_apply(fetched.clone()),
    )
    .await?;

    // Status from a second client, all along; each must be answered.
    let watcher = Client::connect(&admin_file).await?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let polls = tokio::spawn(async move {
        let (mut answered, mut missed) = (0u32, Vec::new());
        while !*stopped.borrow() {
            match tokio::time::timeout(Duration::from_secs(10), watcher.request(&Request::Status))
                .await
            {
                Ok(Ok(Reply::Status(_))) => answered += 1,
                other => missed.push(format!("{other:?}")),
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
        }
        (answered, missed)
    });

    let blob: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let sha256 = lab::FileRef::of(&blob).sha256;
    // Printed for docs/benchmarks.md, never asserted.
    let started = std::time::Instant::now();
    let stored = admin
        .request(&Request::PutFile {
            contents: blob.clone(),
        })
        .await?;
    assert_eq!(
        stored,
        Reply::FileStored {
            sha256: sha256.clone()
        }
    );
    let uploaded = started.elapsed();
    let bytes = bundle_with(&sha256, 12 * 1024 * 1024)?;
    let reply = admin
        .request(&Request::DeployLab {
            bundle: bytes,
            source: LabSource::default(),
            replace: false,
        })
        .await?;
    let Reply::Deployed(report) = reply else {
        return Err(format!("deploy refused: {reply:?}").into());
    };
    assert_eq!(report.status, LabStatus::Running);
    println!(
        "12 MiB guest file: upload {uploaded:?}, upload and deploy {:?}",
        started.elapsed()
    );
    let _ = stop.send(true);
    let (answered, missed) = polls.await?;
    assert!(missed.is_empty(), "status went unanswered: {missed:?}");
    assert!(answered > 0);

    // The agent got the file by hash; the Raft state holds only its reference.
    let got = fetched
        .lock()
        .map_err(|e| e.to_string())?
        .get(&sha256)
        .cloned();
    assert!(
        got.as_deref() == Some(blob.as_slice()),
        "the agent did not get the file"
    );
    let state = converged(&nodes).await?;
    assert!(
        state.labs["big"].spec.len() < 64 * 1024,
        "{} bytes",
        state.labs["big"].spec.len()
    );
    for dir in &dirs {
        assert!(
            dir.path().join("files").join(&sha256).exists(),
            "no copy in {}",
            dir.path().display()
        );
    }
    admin.close().await;
    shutdown(nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_over_the_file_limit_or_with_a_missing_file_is_refused() -> TestResult {
    let dir = TempDir::new()?;
    let (node, _, admin) = one_coordinator(&dir).await?;
    let (_agent, _) = agent(&admin, node.addr, "host-1", true).await?;

    let too_big = bundle_with(&"a".repeat(64), 49 * 1024 * 1024)?;
    let reply = admin
        .request(&Request::DeployLab {
            bundle: too_big,
            source: LabSource::default(),
            replace: false,
        })
        .await?;
    let Reply::Error(e) = reply else {
        return Err(format!("accepted: {reply:?}").into());
    };
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message
            .contains("over the limit of 15 MiB for one guest file"),
        "{}",
        e.message
    );

    // Four files under the one-file limit, over the lab's.
    let text = "name: big\ndefaults: {image: tiny}\nnodes:\n  a: {files: {/f1: f1, /f2: f2, /f3: f3, /f4: f4}}\n";
    let four = LabBundle {
        lab: lab::parse("big.yaml", text).map_err(|d| d.to_string())?,
        files: ["f1", "f2", "f3", "f4"]
            .iter()
            .zip(["c", "d", "e", "f"])
            .map(|(path, digit)| {
                let file = lab::FileRef {
                    sha256: digit.repeat(64),
                    size: 13 * 1024 * 1024,
                };
                (path.to_string(), file)
            })
            .collect(),
    };
    let reply = admin
        .request(&Request::DeployLab {
            bundle: codec::encode(&four)?,
            source: LabSource::default(),
            replace: false,
        })
        .await?;
    let Reply::Error(e) = reply else {
        return Err(format!("accepted: {reply:?}").into());
    };
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message.contains("over the limit of 48 MiB per lab"),
        "{}",
        e.message
    );

    // A file over the limit is refused on upload, and not kept.
    let reply = admin
        .request(&Request::PutFile {
            contents: vec![7; 15 * 1024 * 1024 + 1],
        })
        .await?;
    let Reply::Error(e) = reply else {
        return Err(format!("accepted: {reply:?}").into());
    };
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message
            .contains("over the limit of 15 MiB for one guest file"),
        "{}",
        e.message
    );
    let kept = std::fs::read_dir(dir.path().join("files"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(kept, 0, "a refused file was kept");

    let never_uploaded = bundle_with(&"b".repeat(64), 1024)?;
    let reply = admin
        .request(&Request::DeployLab {
            bundle: never_uploaded,
            source: LabSource::default(),
            replace: false,
        })
        .await?;
    let Reply::Error(e) = reply else {
        return Err(format!("accepted: {reply:?}").into());
    };
    assert!(e.message.contains("was not uploaded"), "{}", e.message);
    assert!(
        node.state.read().state.labs.is_empty(),
        "a refused lab was stored"
    );
    admin.close().await;
    node.shutdown().await;
    Ok(())
}

/// [`bundle_with`] for a lab named `name`.
fn bundle_named(name: &str, sha256: &str, size: u64) -> TestResult<Vec<u8>> {
    let text = WITH_FILE.replace("name: big", &format!("name: {name}"));
    let lab = lab::parse("lab.yaml", &text).map_err(|d| d.to_string())?;
    let file = lab::FileRef {
        sha256: sha256.to_string(),
        size,
    };
    Ok(codec::encode(&LabBundle {
        lab,
        files: [("blob.bin".to_string(), file)].into(),
    })?)
}

/// Deploys `bundle` through `client`; the lab must run.
async fn deploy_running(
    client: &Client,
    bundle: Vec<u8>,
) -> TestResult<labspan_proto::msg::LabReport> {
    let reply = client
        .request(&Request::DeployLab {
            bundle,
            source: LabSource::default(),
            replace: false,
        })
        .await?;
    match reply {
        Reply::Deployed(r) if r.status == LabStatus::Running => Ok(r),
        other => Err(format!("deploy did not run: {other:?}").into()),
    }
}

/// A cluster whose labs hold more than 16 MiB of guest files (once the
/// limit of the whole state in one snapshot message) snapshots and
/// compacts its log; a fourth coordinator joins, catches up from the
/// snapshot and copies the files; once the first three are removed and
/// stopped, it alone deploys a lab that uses one of them, and the agent
/// fetches the file from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_added_after_compaction_catches_up_and_keeps_the_files() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let fourth = TempDir::new()?;
    let (mut nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let (_h1, _) = agent(&admin, nodes[0].addr, "h1", true).await?;

    // Two labs with a 9 MiB guest file each: 18 MiB of files.
    let mut blobs = Vec::new();
    for i in 0..2u8 {
        let blob: Vec<u8> = (0..9 * 1024 * 1024u32)
            .map(|b| (b % 251) as u8 ^ i)
            .collect();
        let reply = admin
            .request(&Request::PutFile {
                contents: blob.clone(),
            })
            .await?;
        let Reply::FileStored { sha256 } = reply else {
            return Err(format!("upload refused: {reply:?}").into());
        };
        let size = u64::try_from(blob.len())?;
        deploy_running(&admin, bundle_named(&format!("big-{i}"), &sha256, size)?).await?;
        blobs.push((sha256, blob));
    }

    // Every coordinator snapshots and purges its log up to the snapshot.
    let state = converged(&nodes).await?;
    let applied = nodes[0]
        .raft
        .metrics()
        .borrow()
        .last_applied
        .ok_or("nothing applied")?
        .index;
    let wait = Some(Duration::from_secs(60));
    for node in &nodes {
        node.raft.trigger().snapshot().await?;
        node.raft
            .wait(wait)
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "a snapshot",
            )
            .await?;
        node.raft.trigger().purge_log(applied).await?;
        node.raft
            .wait(wait)
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= applied),
                "the log purged",
            )
            .await?;
    }

    // A fourth coordinator joins: with the log purged, only the snapshot
    // can bring it up to date.
    let (token, fingerprint) = token(&admin, Role::Coordinator).await?;
    let (grant, request) = join(nodes[0].addr, &fingerprint, &token, "c4").await?;
    DataDir::at(fourth.path()).save_grant("c4", free_addr()?, &grant, &request)?;
    nodes.push(service::start(fourth.path()).await?);
    eventually("four voters", || async {
        status(&admin)
            .await
            .filter(|s| s.members.iter().filter(|m| m.voter).count() == 4)
    })
    .await?;
    let now = converged(&nodes).await?;
    assert_eq!(now.labs, state.labs);
    let installed = nodes[3].raft.metrics().borrow().snapshot;
    assert!(
        installed.is_some_and(|s| s.index >= applied),
        "c4 caught up without the snapshot: {installed:?}"
    );

    // It copies the files in the background, from the others.
    let c4_files = fourth.path().join("files");
    eventually("c4 to copy the guest files", || async {
        blobs
            .iter()
            .all(|(sha256, _)| c4_files.join(sha256).exists())
            .then_some(())
    })
    .await?;

    // The three first coordinators are removed and stopped; c4 leads alone.
    let via_c4 = Client::connect_to(&admin_file, &[nodes[3].addr.to_string()]).await?;
    for name in ["c1", "c2", "c3"] {
        let remove = Request::RemoveCoordinator {
            member: name.to_string(),
        };
        eventually(&format!("{name} removed"), || async {
            match via_c4.request(&remove).await {
                Ok(Reply::Done) => Some(()),
                // A retry after a removal whose reply was lost.
                Ok(Reply::Error(e)) if e.kind == ErrorKind::NotFound => Some(()),
                _ => None,
            }
        })
        .await?;
    }
    admin.close().await;
    shutdown(nodes.drain(..3).collect()).await;
    let c4_id = nodes[0].raft.metrics().borrow().id;
    eventually("c4 alone and leading", || async {
        status(&via_c4)
            .await
            .filter(|s| s.members.len() == 1 && s.leader == Some(c4_id))
    })
    .await?;

    // A lab that uses the first file deploys through c4 onto a new host,
    // whose agent fetches the file from c4: no other copy is running.
    let fetched = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let (_h2, _) = agent_serving(
        &via_c4,
        nodes[0].addr,
        "h2",
        true,
        fetch_files_then_apply(fetched.clone()),
    )
    .await?;
    let cordon = Request::Cordon {
        host: "h1".into(),
        cordoned: true,
    };
    assert_eq!(via_c4.request(&cordon).await?, Reply::Done);
    let (sha256, blob) = &blobs[0];
    let size = u64::try_from(blob.len())?;
    let report = deploy_running(&via_c4, bundle_named("again", sha256, size)?).await?;
    assert_eq!(report.placement.values().collect::<Vec<_>>(), ["h2"]);
    let got = fetched
        .lock()
        .map_err(|e| e.to_string())?
        .get(sha256)
        .cloned();
    assert!(
        got.as_deref() == Some(blob.as_slice()),
        "the agent did not get the file from c4"
    );
    via_c4.close().await;
    shutdown(nodes).await;
    Ok(())
}

/// Lab `lab-NNN`: one node on h1, one segment.
fn small_lab(i: usize) -> TestResult<Command> {
    let name = format!("lab-{i:03}");
    let text = format!("name: {name}\ndefaults: {{image: tiny}}\nnodes:\n  r1: {{}}\n");
    let lab = lab::parse("lab.yaml", &text).map_err(|d| d.to_string())?;
    Ok(Command::DeployLab {
        name,
        spec: codec::encode(&LabBundle {
            lab,
            files: Default::default(),
        })?,
        segments: ["lan0".to_string()].into(),
        placement: [("r1".to_string(), "h1".to_string())].into(),
        origin: None,
    })
}

/// Stores labs `range` as running, through `leader`'s Raft, 16 at a time.
async fn store_running_labs(leader: &Running, range: std::ops::Range<usize>) -> TestResult {
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let (raft, deploy) = (leader.raft.clone(), small_lab(i)?);
        tasks.spawn(async move {
            let Command::DeployLab { name, .. } = &deploy else {
                return Err("not a deploy".to_string());
            };
            let lab = name.clone();
            for cmd in [
                deploy,
                Command::SetLabStatus {
                    lab,
                    status: LabStatus::Running,
                },
            ] {
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

/// A restart of all three coordinators with 500 stored labs, half of them
/// only in a snapshot (the log before it purged), half only in the log:
/// every lab comes back as it was, and the API serves each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_labs_survive_a_restart_and_are_served() -> TestResult {
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = Client::connect(&admin_file).await?;
    let (_h1, _) = agent(&admin, nodes[0].addr, "h1", true).await?;
    let st = status(&admin).await.ok_or("no status")?;
    let leader = st.leader.ok_or("no leader")?;
    let leader = nodes
        .iter()
        .find(|n| n.raft.metrics().borrow().id == leader)
        .ok_or("the leader is not one of the nodes")?;

    store_running_labs(leader, 0..250).await?;
    let half = converged(&nodes).await?;
    let wait = Some(Duration::from_secs(60));
    for node in &nodes {
        let applied = node.raft.metrics().borrow().last_applied.map(|l| l.index);
        let applied = applied.ok_or("nothing applied")?;
        node.raft.trigger().snapshot().await?;
        node.raft
            .wait(wait)
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "a snapshot",
            )
            .await?;
        node.raft.trigger().purge_log(applied).await?;
    }
    assert_eq!(half.labs.len(), 250);
    store_running_labs(leader, 250..500).await?;
    let before = converged(&nodes).await?;
    assert_eq!(before.labs.len(), 500);

    admin.close().await;
    shutdown(nodes).await;
    // No agent comes back: a long grace keeps h1 up, so nothing moves.
    let timing = service::Timing {
        new_leader_grace: Duration::from_secs(600),
        ..service::Timing::default()
    };
    let mut again = Vec::new();
    for dir in &dirs {
        again.push(service::start_with(dir.path(), timing).await?);
    }
    let admin = leader_client("a leader after the restart", &admin_file).await?;
    // The replicas may agree for a moment on a state a few entries short
    // (the last entries are applied once the new leader commits one of its
    // term): wait for the state before the restart, not the first agreed.
    let after = eventually("the replicas back to the 500 labs", || async {
        let s = states(&again);
        s.iter()
            .all(|x| x.labs == before.labs)
            .then(|| s[0].clone())
    })
    .await?;
    assert_eq!(after.labs, before.labs);
    for (name, rec) in &before.labs {
        let reply = admin
            .request(&Request::GetLab { name: name.clone() })
            .await?;
        let Reply::Lab { bundle, report } = reply else {
            return Err(format!("lab {name} not served: {reply:?}").into());
        };
        assert_eq!(bundle, rec.spec, "lab {name}");
        assert_eq!(report.status, LabStatus::Running, "lab {name}");
        assert_eq!(report.placement, rec.placement, "lab {name}");
        assert_eq!(report.vnis, rec.vnis, "lab {name}");
    }
    admin.close().await;
    shutdown(again).await;
    Ok(())
}

/// Agents registering all at once (as every agent does after a failover)
/// each get their lease, every replica lists every host, and they share
/// entries: fewer log entries than agents.
/// An agent named `name` with a certificate issued from the CA in `dir`
/// (no join), connected to `addr` and answering plan pushes.
async fn issued_agent(
    dir: &std::path::Path,
    admin_file: &ClusterFile,
    name: &str,
    addr: SocketAddr,
) -> TestResult<Client> {
    let read = |file: &str| std::fs::read_to_string(dir.join(file));
    let ca = ClusterCa::from_pem(&read("ca.pem")?, &read("ca.key")?)?;
    let cred = ca.issue(name, Role::Agent)?;
    let file = ClusterFile {
        cert_pem: cred.cert_pem(),
        key_pem: cred.key_pem(),
        ..admin_file.clone()
    };
    let client = Client::connect_to(&file, &[addr.to_string()]).await?;
    serve_plans(client.connection().clone(), name.to_string());
    Ok(client)
}

/// The registration of a small stand-in host.
fn sim_registration() -> TestResult<Request> {
    Ok(Request::RegisterHost {
        memory_mib: 4096,
        cpus: 2,
        vcpus: 4,
        vtep: "198.18.0.1".parse()?,
        underlay_mtu: 1500,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_registering_at_once_share_entries_and_all_get_a_lease() -> TestResult {
    const AGENTS: usize = 64;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, admin_file) = three_coordinators(&dirs).await?;
    let admin = leader_client("a leader", &admin_file).await?;
    let st = status(&admin).await.ok_or("no status")?;
    let leader_id = st.leader.ok_or("no leader")?;
    let leader = nodes
        .iter()
        .find(|n| n.raft.metrics().borrow().id == leader_id)
        .ok_or("the leader is not one of the nodes")?;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        agents.push(
            issued_agent(dirs[0].path(), &admin_file, &format!("sim{i}"), leader.addr).await?,
        );
    }
    let before = leader.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let register = sim_registration()?;
    let replies = futures::future::join_all(agents.iter().map(|a| a.request(&register))).await;
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply?;
        assert!(matches!(reply, Reply::Lease { .. }), "sim{i}: {reply:?}");
    }
    let entries = leader.raft.metrics().borrow().last_log_index.unwrap_or(0) - before;
    assert!(
        entries < AGENTS as u64,
        "{entries} entries for {AGENTS} agents"
    );
    let state = converged(&nodes).await?;
    for i in 0..AGENTS {
        assert!(
            state.hosts.contains_key(&format!("sim{i}")),
            "sim{i} missing"
        );
    }
    for a in agents {
        a.close().await;
    }
    admin.close().await;
    shutdown(nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_heartbeat_budget_agents_are_told_a_longer_heartbeat_and_lease() -> TestResult {
    // A budget of one heartbeat a second: each host registered stretches
    // the interval by a second, and the lease with it (4 heartbeats).
    let timing = service::Timing {
        max_heartbeats_per_s: 1,
        ..service::Timing::default()
    };
    let dir = TempDir::new()?;
    let admin_file = DataDir::at(dir.path()).init("test", "c1", free_addr()?)?;
    let node = service::start_with(dir.path(), timing).await?;
    let admin = leader_client("a leader", &admin_file).await?;
    let register = sim_registration()?;
    let mut agents = Vec::new();
    for (i, want_s) in [(1, 1u64), (2, 2), (3, 3)] {
        let client = issued_agent(dir.path(), &admin_file, &format!("h{i}"), node.addr).await?;
        let want = Reply::Lease {
            heartbeat_ms: want_s * 1000,
            lease_ms: want_s * 4000,
        };
        assert_eq!(client.request(&register).await?, want, "h{i} registering");
        agents.push(client);
    }
    // The first agent's next heartbeat is granted the cluster's new timing.
    let beat = agents[0].request(&Request::Heartbeat).await?;
    let want = Reply::Lease {
        heartbeat_ms: 3000,
        lease_ms: 12_000,
    };
    assert_eq!(beat, want);
    for a in agents {
        a.close().await;
    }
    admin.close().await;
    node.shutdown().await;
    Ok(())
}
