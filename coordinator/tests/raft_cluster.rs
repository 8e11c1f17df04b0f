//! Three coordinators on 127.0.0.1, Raft over QUIC with mutual TLS and the
//! redb store: they elect a leader, commit a command, and agree on the state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use labspan_coordinator::raft::{
    self, Applied, Command, Member, NodeId, QuicNetwork, RaftReply, RaftRequest, RaftService,
    SharedState, TypeConfig,
};
use labspan_proto::codec;
use labspan_proto::msg::{Reply, Request, Role};
use labspan_transport as transport;
use labspan_transport::tls::ClusterCa;
use openraft::raft::VoteRequest;
use openraft::{Config, Raft, Vote};
use tempfile::TempDir;

mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Generous: only bounds how long a broken test hangs.
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

struct Coordinator {
    raft: Raft<TypeConfig>,
    state: SharedState,
    endpoint: quinn::Endpoint,
}

/// Stops Raft on every node, then closes every endpoint at once (so each
/// peer hears the close instead of timing out); with `release`, waits until
/// the UDP ports are free again (for a restart on the same addresses).
async fn stop_all(nodes: Vec<Coordinator>, release: bool) -> TestResult {
    for node in &nodes {
        node.raft.shutdown().await?;
    }
    for node in &nodes {
        node.endpoint.close(0u32.into(), b"stopping");
    }
    if release {
        for node in nodes {
            node.endpoint.wait_idle().await;
        }
    }
    Ok(())
}

/// Starts coordinator `id` with its store in `dir`, listening on `addr`.
async fn start_at(
    ca: &ClusterCa,
    id: NodeId,
    dir: &Path,
    addr: SocketAddr,
) -> Result<(Coordinator, SocketAddr), Box<dyn std::error::Error>> {
    start_with(ca, id, dir, addr, Config::default()).await
}

/// [`start_at`] with a Raft configuration of the test's own.
async fn start_with(
    ca: &ClusterCa,
    id: NodeId,
    dir: &Path,
    addr: SocketAddr,
    config: Config,
) -> Result<(Coordinator, SocketAddr), Box<dyn std::error::Error>> {
    let cred = ca.issue(&format!("c{id}"), Role::Coordinator)?;
    let endpoint = transport::server_endpoint(addr, ca.cert(), &cred)?;
    let addr = endpoint.local_addr()?;
    let (log, sm) = raft::open(&dir.join("raft.redb"))?;
    let state = sm.shared();
    let config = Arc::new(config.validate()?);
    let network = QuicNetwork::new(endpoint.clone());
    let raft = Raft::new(id, config, network, log, sm).await?;
    transport::serve(
        endpoint.clone(),
        Arc::new(RaftService::new(raft.clone(), Duration::from_millis(300))),
    );
    let node = Coordinator {
        raft,
        state,
        endpoint,
    };
    Ok((node, addr))
}

/// `start_at` on the address a stopped coordinator used. Its UDP socket is
/// released only when the last handle on its endpoint (the accept task, the
/// Raft network) is dropped, shortly after shutdown: a bind that finds the
/// address still in use is retried until a deadline.
async fn restart_at(
    ca: &ClusterCa,
    id: NodeId,
    dir: &Path,
    addr: SocketAddr,
) -> Result<(Coordinator, SocketAddr), Box<dyn std::error::Error>> {
    restart_with(ca, id, dir, addr, Config::default).await
}

/// [`restart_at`] with the Raft configuration `config` makes.
async fn restart_with(
    ca: &ClusterCa,
    id: NodeId,
    dir: &Path,
    addr: SocketAddr,
    config: fn() -> Config,
) -> Result<(Coordinator, SocketAddr), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start_with(ca, id, dir, addr, config()).await {
            Err(e) if tokio::time::Instant::now() < deadline && addr_in_use(e.as_ref()) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

fn addr_in_use(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<transport::TransportError>(),
        Some(transport::TransportError::Bind { cause, .. })
            if cause.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// Starts one coordinator per store dir, on free ports,, with stores in `dirs`, as one cluster.
async fn start_cluster(
    ca: &ClusterCa,
    dirs: &[TempDir],
) -> Result<(Vec<Coordinator>, BTreeMap<NodeId, Member>), Box<dyn std::error::Error>> {
    start_cluster_with(ca, dirs, Config::default).await
}

/// [`start_cluster`] with the Raft configuration `config` makes.
async fn start_cluster_with(
    ca: &ClusterCa,
    dirs: &[TempDir],
    config: fn() -> Config,
) -> Result<(Vec<Coordinator>, BTreeMap<NodeId, Member>), Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for (id, dir) in (1..).zip(dirs) {
        let (node, addr) = start_with(ca, id, dir.path(), any_port(), config()).await?;
        let member = Member {
            name: format!("c{id}"),
            addr: addr.to_string(),
        };
        members.insert(id, member);
        nodes.push(node);
    }
    nodes[0].raft.initialize(members.clone()).await?;
    Ok((nodes, members))
}

fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The leader once one is elected, as seen by `node`.
async fn leader_of(node: &Coordinator) -> Result<NodeId, Box<dyn std::error::Error>> {
    let m = node
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await?;
    Ok(m.current_leader.ok_or("no leader")?)
}

fn create_sip() -> Result<Command, Box<dyn std::error::Error>> {
    let lab = labspan_proto::lab::parse("sip", "name: sip\nnodes:\n  r1: {image: tiny}\n")
        .map_err(|d| d.to_string())?;
    let spec = labspan_proto::codec::encode(&labspan_proto::lab::LabBundle {
        lab,
        files: BTreeMap::new(),
    })?;
    Ok(Command::DeployLab {
        name: "sip".into(),
        spec,
        segments: BTreeSet::from(["lan0".to_string(), "r1-r2".to_string()]),
        placement: BTreeMap::from([("r1".to_string(), "h1".to_string())]),
        origin: None,
    })
}

/// The host `create_sip` places its node on.
fn register_h1() -> Command {
    Command::RegisterHost {
        name: "h1".into(),
        capacity: labspan_coordinator::raft::Capacity {
            memory_mib: 4096,
            vcpus: 2,
        },
        labels: BTreeSet::new(),
        vtep: std::net::IpAddr::from([198, 18, 0, 1]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_commit_and_agree() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, _) = start_cluster(&ca, &dirs).await?;
    let leader = &nodes[usize::try_from(leader_of(&nodes[0]).await?)? - 1].raft;

    leader.client_write(register_h1()).await?;
    let written = leader.client_write(create_sip()?).await?;
    let expected = BTreeMap::from([("lan0".to_string(), 4096), ("r1-r2".to_string(), 4097)]);
    assert_eq!(written.data, Ok(Applied::Vnis(expected)));

    for node in &nodes {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(written.log_id.index), "entry applied everywhere")
            .await?;
    }
    let states: Vec<_> = nodes.iter().map(|n| n.state.read().state.clone()).collect();
    assert!(states.iter().all(|s| *s == states[0]), "replicas differ");
    assert_eq!(states[0].labs["sip"].vnis["r1-r2"], 4097);
    stop_all(nodes, false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_cluster_has_the_same_state_from_disk() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, members) = start_cluster(&ca, &dirs).await?;
    let leader = &nodes[usize::try_from(leader_of(&nodes[0]).await?)? - 1].raft;
    leader.client_write(register_h1()).await?;
    let written = leader.client_write(create_sip()?).await?;
    for node in &nodes {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(written.log_id.index), "entry applied everywhere")
            .await?;
    }
    let before = nodes[0].state.read().state.clone();
    stop_all(nodes, true).await?;

    // Same stores, same addresses, no initialize: everything comes from disk.
    let mut again = Vec::new();
    for ((id, member), dir) in members.iter().zip(&dirs) {
        let addr: SocketAddr = member.addr.parse()?;
        again.push(restart_at(&ca, *id, dir.path(), addr).await?.0);
    }
    leader_of(&again[0]).await?;
    for node in &again {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(written.log_id.index), "log re-applied after restart")
            .await?;
        assert_eq!(node.state.read().state, before);
    }
    stop_all(again, false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_coordinators_may_send_raft_rpcs() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let dir = TempDir::new()?;
    let (node, addr) = start_at(&ca, 1, dir.path(), any_port()).await?;
    let agent = ca.issue("host-1", Role::Agent)?;
    let client = transport::client_endpoint(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ca.cert(),
        &agent,
    )?;
    let conn = transport::connect(&client, addr).await?;
    // A vote request from a would-be candidate with a higher term.
    let vote = RaftRequest::Vote(VoteRequest::new(Vote::new(99, 7), None));
    let reply: Reply = transport::request(&conn, &Request::Raft(codec::encode(&vote)?)).await?;
    let Reply::Raft(bytes) = reply else {
        return Err(format!("unexpected reply {reply:?}").into());
    };
    let reply: RaftReply = codec::decode(&bytes)?;
    assert!(
        matches!(reply, RaftReply::Forbidden { role: Role::Agent }),
        "{reply:?}"
    );
    // Nothing changed: the node did not see term 99.
    let term = node.raft.metrics().borrow().current_term;
    assert!(term < 99, "term {term}");
    stop_all(vec![node], false).await?;
    Ok(())
}

/// Proposes `cmd` on whichever node leads, following leadership changes (a
/// loaded machine may miss a heartbeat); returns the entry's index.
async fn write_on_leader(
    nodes: &[Raft<TypeConfig>],
    cmd: Command,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut target = 0;
    for _ in 0..20 {
        match nodes[target].client_write(cmd.clone()).await {
            Ok(written) => return Ok(written.log_id.index),
            Err(e) => match e.forward_to_leader() {
                Some(fwd) => {
                    target = fwd
                        .leader_id
                        .and_then(|id| usize::try_from(id).ok())
                        .filter(|id| (1..=nodes.len()).contains(id))
                        .map_or(target, |id| id - 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => return Err(e.to_string().into()),
            },
        }
    }
    Err("no stable leader".into())
}

/// Writes labs `range` through the cluster's leader, a few at a time;
/// returns the last log index written.
async fn write_labs(
    nodes: &[Coordinator],
    range: std::ops::Range<usize>,
    spec_len: usize,
) -> Result<u64, Box<dyn std::error::Error>> {
    let rafts: Arc<Vec<Raft<TypeConfig>>> =
        Arc::new(nodes.iter().map(|n| n.raft.clone()).collect());
    let mut last = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let rafts = rafts.clone();
        tasks
            .spawn(async move { write_on_leader(&rafts, support::deploy_lab(i, spec_len)?).await });
        if tasks.len() >= 16 {
            if let Some(done) = tasks.join_next().await {
                last = last.max(done?.map_err(|e| e.to_string())?);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        last = last.max(done?.map_err(|e| e.to_string())?);
    }
    Ok(last)
}

async fn applied_everywhere(nodes: &[Coordinator], index: u64) -> TestResult {
    for node in nodes {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(index), "entry applied everywhere")
            .await?;
    }
    Ok(())
}

fn leader_index(
    nodes: &[Coordinator],
    leader: NodeId,
) -> Result<usize, Box<dyn std::error::Error>> {
    let i = usize::try_from(leader)? - 1;
    if i >= nodes.len() {
        return Err(format!("leader {leader} is not one of the nodes").into());
    }
    Ok(i)
}

/// Timings for a machine busy with other work: these tests are about
/// state, and an election in the middle only makes them slower.
fn patient() -> Config {
    Config {
        // openraft gives an AppendEntries one heartbeat interval: large
        // entries, with the follower's fsync, on a loaded machine, need more.
        heartbeat_interval: 1000,
        election_timeout_min: 5000,
        election_timeout_max: 10_000,
        install_snapshot_timeout: 10_000,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_labs_survive_a_restart_of_every_coordinator() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, members) = start_cluster_with(&ca, &dirs, patient).await?;
    let leader = leader_index(&nodes, leader_of(&nodes[0]).await?)?;
    write_on_leader(
        &nodes.iter().map(|n| n.raft.clone()).collect::<Vec<_>>(),
        register_h1(),
    )
    .await
    .map_err(|e| e.to_string())?;
    // Half of them in a snapshot, the other half only in the log.
    let half = write_labs(&nodes, 0..250, 2048).await?;
    applied_everywhere(&nodes, half).await?;
    for node in &nodes {
        node.raft.trigger().snapshot().await?;
        node.raft
            .wait(WAIT)
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= half),
                "a snapshot",
            )
            .await?;
    }
    let last = write_labs(&nodes, 250..500, 2048).await?;
    applied_everywhere(&nodes, last).await?;
    let before = nodes[leader].state.read().state.clone();
    assert_eq!(before.labs.len(), 500);
    stop_all(nodes, true).await?;

    let mut again = Vec::new();
    for ((id, member), dir) in members.iter().zip(&dirs) {
        let addr: SocketAddr = member.addr.parse()?;
        let (node, _) = restart_with(&ca, *id, dir.path(), addr, patient).await?;
        again.push(node);
    }
    leader_of(&again[0]).await?;
    applied_everywhere(&again, last).await?;
    for node in &again {
        assert_eq!(node.state.read().state, before);
    }
    stop_all(again, false).await?;
    Ok(())
}

/// A restarted coordinator applies at once what it knew was committed (its
/// saved commit index), and never an entry it had only appended: that one
/// waits for a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_coordinator_applies_only_what_it_knew_committed() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (mut nodes, members) = start_cluster(&ca, &dirs).await?;
    let leader_id = leader_of(&nodes[0]).await?;
    let leader = leader_index(&nodes, leader_id)?;
    nodes[leader].raft.client_write(register_h1()).await?;
    let committed = nodes[leader].raft.client_write(create_sip()?).await?;
    applied_everywhere(&nodes, committed.log_id.index).await?;

    // Without its followers the leader appends an entry it cannot commit.
    let kept = nodes.remove(leader);
    stop_all(nodes, false).await?;
    let raft = kept.raft.clone();
    let stranded_lab = support::deploy_lab(1, 16)?;
    let stranded = tokio::spawn(async move { raft.client_write(stranded_lab).await });
    kept.raft
        .wait(WAIT)
        .log_index_at_least(Some(committed.log_id.index + 1), "an uncommitted append")
        .await?;
    stranded.abort();
    let addr: SocketAddr = members[&leader_id].addr.parse()?;
    stop_all(vec![kept], true).await?;

    // Alone again, it has both entries in its log but applies only the first.
    let (alone, _) = restart_at(&ca, leader_id, dirs[leader].path(), addr).await?;
    alone
        .raft
        .wait(WAIT)
        .applied_index_at_least(
            Some(committed.log_id.index),
            "the committed entry is applied",
        )
        .await?;
    let m = alone.raft.metrics().borrow().clone();
    assert_eq!(m.last_log_index, Some(committed.log_id.index + 1), "{m:?}");
    assert_eq!(
        m.last_applied.map(|l| l.index),
        Some(committed.log_id.index)
    );
    let state = alone.state.read().state.clone();
    assert!(state.labs.contains_key("sip"));
    assert!(
        !state.labs.contains_key("lab-001"),
        "an uncommitted entry was applied"
    );
    stop_all(vec![alone], false).await?;
    Ok(())
}
