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
    let cred = ca.issue(&format!("c{id}"), Role::Coordinator)?;
    let endpoint = transport::server_endpoint(addr, ca.cert(), &cred)?;
    let addr = endpoint.local_addr()?;
    let (log, sm) = raft::open(&dir.join("raft.redb"))?;
    let state = sm.shared();
    let config = Arc::new(Config::default().validate()?);
    let network = QuicNetwork::new(endpoint.clone());
    let raft = Raft::new(id, config, network, log, sm).await?;
    transport::serve(endpoint.clone(), Arc::new(RaftService::new(raft.clone())));
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start_at(ca, id, dir, addr).await {
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
        Some(transport::TransportError::Bind { source, .. })
            if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// Starts one coordinator per store dir, on free ports,, with stores in `dirs`, as one cluster.
async fn start_cluster(
    ca: &ClusterCa,
    dirs: &[TempDir],
) -> Result<(Vec<Coordinator>, BTreeMap<NodeId, Member>), Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for (id, dir) in (1..).zip(dirs) {
        let (node, addr) = start_at(ca, id, dir.path(), any_port()).await?;
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

fn create_sip() -> Command {
    Command::CreateLab {
        name: "sip".into(),
        spec: b"lab".to_vec(),
        segments: BTreeSet::from(["lan0".to_string(), "r1-r2".to_string()]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_commit_and_agree() -> TestResult {
    let ca = ClusterCa::generate("test")?;
    let dirs = [TempDir::new()?, TempDir::new()?, TempDir::new()?];
    let (nodes, _) = start_cluster(&ca, &dirs).await?;
    let leader = &nodes[usize::try_from(leader_of(&nodes[0]).await?)? - 1].raft;

    let written = leader.client_write(create_sip()).await?;
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
    let written = leader.client_write(create_sip()).await?;
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
