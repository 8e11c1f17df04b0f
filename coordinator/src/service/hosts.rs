//! Lab hosts on the leader: registration, heartbeats kept in memory, and
//! marking a silent host down (only the transition is a log entry).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use labspan_proto::msg::{ErrorKind, Reply};
use labspan_transport::IDLE_TIMEOUT;

use super::push::{self, DEFAULT_UNDERLAY_MTU};
use super::{agents, error, lock, recovery, HostLive, Inner};
use crate::raft::{Capacity, Command, LabStatus};

/// A host not heard of for this long is marked down.
pub const HOST_DOWN_AFTER: Duration = Duration::from_secs(10);
/// How long a new leader waits for a host it never heard of: its agent
/// notices the old leader is gone within the transport's idle timeout, may
/// spend as long again on a dead coordinator of its list, then registers.
/// Marking it down sooner would move VMs off a healthy host, and a
/// coordinator failover never restarts a VM.
pub const NEW_LEADER_GRACE: Duration =
    Duration::from_secs(2 * IDLE_TIMEOUT.as_secs() + HOST_DOWN_AFTER.as_secs());
/// How often the leader looks for silent hosts.
const MONITOR_EVERY: Duration = Duration::from_secs(1);

/// Leader: records the host of agent `name` (its certificate's name), marks
/// it up, and sends it its plan (a restarted agent converges again).
pub(super) async fn register(
    inner: &Arc<Inner>,
    name: &str,
    memory_mib: u64,
    cpus: u32,
    vcpus: u64,
    vtep: IpAddr,
    underlay_mtu: u32,
) -> Reply {
    let known = inner.state.read().state.hosts.get(name).cloned();
    let labels = known
        .as_ref()
        .map(|h| h.labels.clone())
        .unwrap_or_else(BTreeSet::new);
    let capacity = Capacity { memory_mib, vcpus };
    let cmd = Command::RegisterHost {
        name: name.to_string(),
        capacity,
        labels,
        vtep,
    };
    if let Err(e) = inner.write(cmd).await {
        return Reply::Error(e);
    }
    lock(&inner.live).insert(
        name.to_string(),
        HostLive {
            last_seen: Instant::now(),
            underlay_mtu,
        },
    );
    if known.is_some_and(|h| !h.up) {
        if let Err(e) = inner
            .write(Command::SetHostUp {
                name: name.to_string(),
                up: true,
            })
            .await
        {
            return Reply::Error(e);
        }
    }
    tracing::info!(host = name, %vtep, memory_mib, cpus, vcpus, "host registered");
    send_own_plan(inner, name);
    Reply::Done
}

/// Sends host `name` its complete plan in the background: after a restart
/// or a loss, its agent converges (and stops VMs that moved elsewhere).
/// Labs on it that `Failed` (typically because this agent was away during
/// their deploy) are settled again, so they become `Running` once every
/// host of theirs runs its share.
fn send_own_plan(inner: &Arc<Inner>, name: &str) {
    let (inner, host) = (inner.clone(), name.to_string());
    tokio::spawn(async move {
        // After any lab change in flight: a plan computed before it must not
        // reach the agent after that change's plan.
        let _one_at_a_time = inner.lab_lock.lock().await;
        push::push_plans(&inner, &BTreeSet::from([host.clone()])).await;
        for (lab, hosts) in failed_labs_on(&inner, &host) {
            if !agents::missing(&inner, &hosts).is_empty() {
                continue; // Settled when the last of its agents registers.
            }
            match push::settle(&inner, &lab, &hosts).await {
                Ok(_) => tracing::info!(
                    lab,
                    host,
                    "failed lab settled again after its host registered"
                ),
                Err(e) => {
                    tracing::warn!(lab, error = %e.message, "cannot settle a failed lab again")
                }
            }
        }
    });
}

/// The `Failed` labs with a node on `host`, each with all its hosts.
fn failed_labs_on(inner: &Inner, host: &str) -> Vec<(String, BTreeSet<String>)> {
    let state = inner.state.read();
    state
        .state
        .labs
        .iter()
        .filter(|(_, rec)| matches!(rec.status, LabStatus::Failed { .. }))
        .filter(|(_, rec)| rec.placement.values().any(|h| h == host))
        .map(|(lab, rec)| (lab.clone(), rec.placement.values().cloned().collect()))
        .collect()
}

/// Leader: agent `name` is alive.
pub(super) async fn heartbeat(inner: &Arc<Inner>, name: &str) -> Reply {
    let up = match inner.state.read().state.hosts.get(name) {
        Some(h) => h.up,
        None => {
            return error(
                ErrorKind::NotFound,
                format!("host {name:?} is not registered: send RegisterHost first"),
            )
        }
    };
    {
        let mut live = lock(&inner.live);
        let entry = live.entry(name.to_string()).or_insert(HostLive {
            last_seen: Instant::now(),
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
        });
        entry.last_seen = Instant::now();
    }
    if !up {
        if let Err(e) = inner
            .write(Command::SetHostUp {
                name: name.to_string(),
                up: true,
            })
            .await
        {
            return Reply::Error(e);
        }
        tracing::info!(host = name, "host is up again");
        // Its connection outlived the outage, so it will not register again:
        // its VMs may have moved meanwhile.
        send_own_plan(inner, name);
    }
    Reply::Done
}

/// Runs for the life of the coordinator; acts only while it leads.
pub(super) async fn monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(MONITOR_EVERY);
    let mut recovering: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        if !inner.is_leader() {
            // A future leadership starts with a fresh grace period for every host.
            lock(&inner.live).clear();
            continue;
        }
        for name in silent_hosts(&inner) {
            tracing::warn!(host = name, after = ?HOST_DOWN_AFTER, "no heartbeat: marking the host down");
            if let Err(e) = inner
                .write(Command::SetHostUp {
                    name: name.clone(),
                    up: false,
                })
                .await
            {
                tracing::warn!(host = name, error = %e, "cannot mark the host down");
            }
        }
        // Level-triggered: also finishes what a previous leader started.
        // One run at a time; a run may wait for VMs to start elsewhere.
        if recovering.as_ref().is_none_or(|t| t.is_finished()) {
            let inner = inner.clone();
            recovering = Some(tokio::spawn(async move { recovery::run(&inner).await }));
        }
    }
}

/// Hosts marked up whose agent has been silent too long; hosts never heard
/// of by this leader get [`NEW_LEADER_GRACE`] from now.
fn silent_hosts(inner: &Inner) -> Vec<String> {
    let hosts: Vec<(String, bool)> = inner
        .state
        .read()
        .state
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), h.up))
        .collect();
    let now = Instant::now();
    let mut live = lock(&inner.live);
    hosts
        .into_iter()
        .filter(|(name, up)| {
            let seen = live.entry(name.clone()).or_insert(HostLive {
                // Seen "in the future": `duration_since` stays zero until then.
                last_seen: now + (NEW_LEADER_GRACE - HOST_DOWN_AFTER),
                underlay_mtu: DEFAULT_UNDERLAY_MTU,
            });
            *up && now.duration_since(seen.last_seen) > HOST_DOWN_AFTER
        })
        .map(|(name, _)| name)
        .collect()
}
