//! Progress on the leader: one stream of per-node steps that `labspan up`,
//! `down` and `events` follow (`Request::Follow`).
//!
//! Two sources feed it. The leader's own steps come from its writes: after
//! each entry it applies, the nodes' hosts and states are compared with
//! those it last published ([`changes`]): a node new on a host, or on
//! another host, is `placed`; one whose host went down is `lost`; one of a
//! lab that is gone is `stopping`. A lab's settled status follows each
//! `SetLabStatus`. The agents' steps come in `Request::Progress` batches,
//! each named with the host of the agent's certificate.
//!
//! Nothing here is logged or replicated: a new leader starts afresh, and a
//! follower that falls behind loses the steps it missed, not the stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use labspan_proto::msg::{ErrorKind, NodeState, Reply};
use labspan_proto::progress::{now_unix_ms, Phase, ProgressEvent, MAX_BATCH};
use labspan_transport::write_message;
use quinn::SendStream;
use tokio::sync::broadcast;

use super::{decide, error, lock, Inner};
use crate::raft::{ClusterState, Command};

/// Steps a slow follower may fall behind before it misses some.
const BACKLOG: usize = 4096;

/// Lab → node → (host, node state).
pub(super) type Nodes = BTreeMap<String, BTreeMap<String, (String, NodeState)>>;

/// The leader's progress stream.
pub(super) struct Hub {
    tx: broadcast::Sender<ProgressEvent>,
    /// The nodes as last published, and the term they were read in (a
    /// leader elected again compares with the state of its new term).
    seen: Mutex<Option<(u64, Nodes)>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
            seen: Mutex::new(None),
        }
    }
}

impl Hub {
    fn publish(&self, event: ProgressEvent) {
        // No follower: nobody to tell.
        let _ = self.tx.send(event);
    }
}

/// Every lab's nodes: where each runs and its own state.
pub(super) fn nodes(state: &ClusterState) -> Nodes {
    (state.labs.keys())
        .filter_map(|name| Some((name.clone(), nodes_of(state, name)?)))
        .collect()
}

/// Lab `name`'s nodes, if it exists.
fn nodes_of(state: &ClusterState, name: &str) -> Option<BTreeMap<String, (String, NodeState)>> {
    let rec = state.labs.get(name)?;
    let states = decide::node_states(state, rec);
    let nodes = (rec.placement.iter())
        .map(|(node, host)| {
            let s = states.get(node).copied().unwrap_or(NodeState::Starting);
            (node.clone(), (host.clone(), s))
        })
        .collect();
    Some(nodes)
}

/// Whose nodes a command may change.
pub(super) enum Scope {
    /// The nodes of this lab.
    Lab(String),
    /// The nodes on these hosts (up or down, they are `Lost` or not).
    Hosts(Vec<String>),
    /// Any node.
    All,
}

impl Scope {
    /// Whose nodes `cmd` may change.
    pub(super) fn of(cmd: &Command) -> Scope {
        match cmd {
            Command::DeployLab { name, .. } | Command::DeleteLab { name } => {
                Scope::Lab(name.clone())
            }
            Command::MoveNodes { lab, .. }
            | Command::SetLabStatus { lab, .. }
            | Command::BeginMove { lab, .. }
            | Command::SetMovePhase { lab, .. }
            | Command::EndMove { lab, .. }
            | Command::BeginCheckpoint { lab, .. }
            | Command::EndCheckpoint { lab, .. }
            | Command::DeleteCheckpoint { lab, .. }
            | Command::CheckpointCopied { lab, .. } => Scope::Lab(lab.clone()),
            Command::RegisterHost { name, .. }
            | Command::SetHostUp { name, .. }
            | Command::RemoveHost { name }
            | Command::Cordon { name, .. } => Scope::Hosts(vec![name.clone()]),
            Command::RegisterHosts { hosts } => {
                Scope::Hosts(hosts.iter().map(|r| r.name.clone()).collect())
            }
            _ => Scope::All,
        }
    }

    /// The labs whose nodes may have changed, in `state` as it is now
    /// (`None`: every lab).
    fn labs(&self, state: &ClusterState) -> Option<Vec<String>> {
        match self {
            Scope::Lab(lab) => Some(vec![lab.clone()]),
            Scope::Hosts(hosts) => Some(
                (state.labs.iter())
                    .filter(|(_, rec)| {
                        (rec.placement.values())
                            .chain(rec.migration.as_ref().map(|m| &m.to))
                            .any(|h| hosts.contains(h))
                    })
                    .map(|(name, _)| name.clone())
                    .collect(),
            ),
            Scope::All => None,
        }
    }
}

/// The leader's steps between two views of the labs' nodes.
pub fn changes(before: &Nodes, after: &Nodes, at_unix_ms: u64) -> Vec<ProgressEvent> {
    let event = |lab: &str, node: &str, host: &str, phase| ProgressEvent {
        lab: lab.to_string(),
        node: Some(node.to_string()),
        host: Some(host.to_string()),
        phase,
        at_unix_ms,
    };
    let mut out = Vec::new();
    for (lab, nodes) in after {
        let was = before.get(lab);
        for (node, (host, state)) in nodes {
            let phase = match was.and_then(|n| n.get(node)) {
                None => Some(Phase::Placed { from: None }),
                Some((old, _)) if old != host => Some(Phase::Placed {
                    from: Some(old.clone()),
                }),
                Some((_, old)) if old == state => None,
                Some(_) => match state {
                    NodeState::Lost => Some(Phase::Lost),
                    NodeState::Moving => Some(Phase::Moving),
                    NodeState::Stopping => Some(Phase::Stopping),
                    // The agents say when a node runs; the lab's settled
                    // status says why it failed.
                    NodeState::Starting | NodeState::Running | NodeState::Failed => None,
                },
            };
            out.extend(phase.map(|p| event(lab, node, host, p)));
        }
        // Nodes an edit took out of the lab.
        for (node, (host, _)) in was.into_iter().flatten() {
            if !nodes.contains_key(node) {
                out.push(event(lab, node, host, Phase::Stopping));
            }
        }
    }
    for (lab, nodes) in before.iter().filter(|(lab, _)| !after.contains_key(*lab)) {
        for (node, (host, _)) in nodes {
            out.push(event(lab, node, host, Phase::Stopping));
        }
    }
    out
}

impl Inner {
    fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Before a write: the nodes as they are, if this term has not read them yet.
    pub(super) fn progress_before_write(&self) {
        let term = self.term();
        let mut seen = lock(&self.progress.seen);
        if seen.as_ref().is_none_or(|(t, _)| *t != term) {
            *seen = Some((term, nodes(&self.state.read().state)));
        }
    }

    /// After a write: publishes what it changed of the nodes (those of
    /// `scope` alone), then, for a `SetLabStatus`, the lab's settled status.
    ///
    /// A write that names its lab (or hosts) compares those nodes only:
    /// reading every lab's after each write cost a deploy on a cluster of
    /// 500 labs tens of thousands of copies (docs/benchmarks.md, "State at
    /// scale").
    pub(super) fn progress_after_write(&self, scope: &Scope, settled: Option<(String, String)>) {
        let term = self.term();
        let events = {
            // In the order `progress_before_write` takes them.
            let mut seen = lock(&self.progress.seen);
            let state = &self.state.read().state;
            match (seen.as_mut(), scope.labs(state)) {
                (Some((_, before)), Some(labs)) => {
                    let mut was = Nodes::new();
                    let mut is = Nodes::new();
                    for lab in labs {
                        was.extend(before.remove_entry(&lab));
                        is.extend(nodes_of(state, &lab).map(|n| (lab, n)));
                    }
                    let events = changes(&was, &is, now_unix_ms());
                    before.extend(is);
                    events
                }
                (before, _) => {
                    let now = nodes(state);
                    let events = before
                        .map_or_else(Vec::new, |(_, before)| changes(before, &now, now_unix_ms()));
                    *seen = Some((term, now));
                    events
                }
            }
        };
        events.into_iter().for_each(|e| self.progress.publish(e));
        if let Some((lab, status)) = settled {
            self.lab_step(&lab, Phase::Settled { status });
        }
    }

    /// Publishes a step of node `node` of `lab`, on `host`, that no
    /// change of the recorded state shows.
    pub(super) fn node_step(&self, lab: &str, node: &str, host: &str, phase: Phase) {
        self.progress.publish(ProgressEvent {
            lab: lab.to_string(),
            node: Some(node.to_string()),
            host: Some(host.to_string()),
            phase,
            at_unix_ms: now_unix_ms(),
        });
    }

    /// Publishes a step of lab `lab` as a whole.
    pub(super) fn lab_step(&self, lab: &str, phase: Phase) {
        self.progress.publish(ProgressEvent {
            lab: lab.to_string(),
            node: None,
            host: None,
            phase,
            at_unix_ms: now_unix_ms(),
        });
    }
}

/// The lab and status a command settles, if it is a `SetLabStatus`.
pub(super) fn settles(cmd: &Command) -> Option<(String, String)> {
    match cmd {
        Command::SetLabStatus { lab, status } => Some((lab.clone(), status.to_string())),
        _ => None,
    }
}

/// Leader: the steps the agent of `host` reports, passed to followers.
pub(super) fn from_agent(inner: &Inner, host: &str, events: Vec<ProgressEvent>) -> Reply {
    if let Err(why) = check_batch(host, &events) {
        return error(ErrorKind::Invalid, why);
    }
    for mut e in events {
        e.host = Some(host.to_string());
        inner.progress.publish(e);
    }
    Reply::Done
}

/// Leader: check results an admin's `up` reports (a member, not a host:
/// only `checked` steps, each of a node the lab has; the host is where the
/// node runs now).
pub(super) fn from_member(inner: &Inner, events: Vec<ProgressEvent>) -> Reply {
    let placed = |e: &ProgressEvent| -> Result<String, String> {
        let state = &inner.state.read().state;
        let node = e.node.as_deref().unwrap_or_default();
        (state.labs.get(&e.lab))
            .and_then(|rec| rec.placement.get(node).cloned())
            .ok_or_else(|| format!("lab {:?} has no node {node:?}", e.lab))
    };
    if events.len() > MAX_BATCH {
        return error(
            ErrorKind::Invalid,
            format!(
                "progress: {} events in one message, at most {MAX_BATCH}",
                events.len()
            ),
        );
    }
    let mut hosts = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if !matches!(e.phase, Phase::Checked { .. }) {
            return error(
                ErrorKind::Invalid,
                format!(
                    "progress: event {i} ({} of lab {:?}): a member reports only checks",
                    e.phase.word(),
                    e.lab
                ),
            );
        }
        match placed(e) {
            Ok(host) => hosts.push(host),
            Err(why) => return error(ErrorKind::Invalid, format!("progress: event {i}: {why}")),
        }
    }
    for (mut e, host) in events.into_iter().zip(hosts) {
        e.host = Some(host);
        inner.progress.publish(e);
    }
    Reply::Done
}

/// Refuses a batch an agent may not send: too many events, a step with no
/// node, or a step only the leader takes.
pub fn check_batch(host: &str, events: &[ProgressEvent]) -> Result<(), String> {
    if events.len() > MAX_BATCH {
        return Err(format!(
            "progress from host {host:?}: {} events in one message, at most {MAX_BATCH}",
            events.len()
        ));
    }
    for (i, e) in events.iter().enumerate() {
        let leaders = matches!(
            e.phase,
            Phase::Placed { .. }
                | Phase::Lost
                | Phase::Moving
                | Phase::Stopping
                | Phase::Settled { .. }
                | Phase::Removed
        );
        // A check's result comes from whoever ran the checks (`up`), not
        // from a host: an agent cannot report one.
        let checked = matches!(e.phase, Phase::Checked { .. });
        let why = match (&e.node, leaders, checked) {
            (None, _, _) => "names no node",
            (Some(_), true, _) => "is a step only the leader takes",
            (Some(_), _, true) => "is a check's result, which only the one who deployed reports",
            (Some(_), false, false) => continue,
        };
        return Err(format!(
            "progress from host {host:?}: event {i} ({} of lab {:?}) {why}",
            e.phase.word(),
            e.lab
        ));
    }
    Ok(())
}

/// Leader: streams the steps of `lab` (every lab: `None`) on `send`, after
/// `Reply::Streaming`, until the caller goes away or this coordinator
/// stops leading (the caller then follows the new leader). It subscribes
/// before it answers: a caller that deploys once it has the answer misses
/// no step of its deploy.
pub(super) async fn follow(inner: &Arc<Inner>, lab: Option<String>, mut send: SendStream) {
    let mut rx = inner.progress.tx.subscribe();
    let mut server = inner.raft.server_metrics();
    if write_message(&mut send, &Reply::Streaming).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Ok(e) if lab.as_ref().is_none_or(|l| *l == e.lab) => {
                    if write_message(&mut send, &e).await.is_err() {
                        return; // The caller went away.
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a progress follower fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = server.changed() => {
                if changed.is_err() || !inner.is_leader() {
                    let _ = send.finish();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node of a test view: name, host, state.
    type Node<'a> = (&'a str, &'a str, NodeState);

    fn view(labs: &[(&str, &[Node])]) -> Nodes {
        labs.iter()
            .map(|(lab, nodes)| {
                let nodes = nodes
                    .iter()
                    .map(|(n, h, s)| (n.to_string(), (h.to_string(), *s)))
                    .collect();
                (lab.to_string(), nodes)
            })
            .collect()
    }

    fn steps(before: &Nodes, after: &Nodes) -> Vec<String> {
        changes(before, after, 0)
            .into_iter()
            .map(|e| {
                format!(
                    "{}/{}@{} {}",
                    e.lab,
                    e.node.unwrap_or_default(),
                    e.host.unwrap_or_default(),
                    e.phase
                )
            })
            .collect()
    }

    use NodeState::*;

    #[test]
    fn a_deploy_places_each_node_on_its_host() {
        let after = view(&[(
            "seen",
            &[("a", "host1", Starting), ("b", "host2", Starting)],
        )]);
        assert_eq!(
            steps(&Nodes::new(), &after),
            ["seen/a@host1 placed", "seen/b@host2 placed"]
        );
        // Settling to Running is the agents' word, not a leader step.
        let running = view(&[("seen", &[("a", "host1", Running), ("b", "host2", Running)])]);
        assert!(steps(&after, &running).is_empty());
    }

    #[test]
    fn a_host_loss_shows_lost_then_placed_elsewhere() {
        let running = view(&[("seen", &[("a", "host1", Running), ("b", "host2", Running)])]);
        let lost = view(&[("seen", &[("a", "host1", Running), ("b", "host2", Lost)])]);
        assert_eq!(steps(&running, &lost), ["seen/b@host2 lost"]);
        let moved = view(&[("seen", &[("a", "host1", Running), ("b", "host3", Moving)])]);
        assert_eq!(
            steps(&lost, &moved),
            ["seen/b@host3 placed (moved from host2)"]
        );
    }

    #[test]
    fn a_lab_or_node_that_goes_is_stopping_on_its_host() {
        let two = view(&[("seen", &[("a", "host1", Running), ("b", "host2", Running)])]);
        let one = view(&[("seen", &[("a", "host1", Running)])]);
        assert_eq!(steps(&two, &one), ["seen/b@host2 stopping"]);
        assert_eq!(steps(&one, &Nodes::new()), ["seen/a@host1 stopping"]);
        let live = view(&[("seen", &[("a", "host1", Moving)])]);
        assert_eq!(steps(&one, &live), ["seen/a@host1 moving"]);
    }

    fn event(node: Option<&str>, phase: Phase) -> ProgressEvent {
        ProgressEvent {
            lab: "seen".into(),
            node: node.map(str::to_string),
            host: None,
            phase,
            at_unix_ms: 0,
        }
    }

    #[test]
    fn an_agent_may_send_only_its_own_node_steps() {
        assert!(check_batch("host1", &[event(Some("a"), Phase::Running)]).is_ok());
        let err = check_batch(
            "host1",
            &[
                event(Some("a"), Phase::Running),
                event(Some("a"), Phase::Lost),
            ],
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            err,
            "progress from host \"host1\": event 1 (lost of lab \"seen\") is a step only the leader takes"
        );
        let forged = Phase::Checked {
            check: "ping a -> b".into(),
            passed: true,
            detail: String::new(),
        };
        let err = check_batch("host1", &[event(Some("a"), forged)])
            .err()
            .unwrap_or_default();
        assert!(err.contains("only the one who deployed reports"), "{err}");
        let err = check_batch("host1", &[event(None, Phase::Booting)])
            .err()
            .unwrap_or_default();
        assert!(err.contains("names no node"), "{err}");
        let many = vec![event(Some("a"), Phase::Booting); MAX_BATCH + 1];
        let err = check_batch("host1", &many).err().unwrap_or_default();
        assert!(err.contains("at most 1024"), "{err}");
    }
}
