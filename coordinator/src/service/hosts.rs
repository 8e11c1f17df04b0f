//! Lab hosts on the leader: registration, heartbeats kept in memory, and
//! marking a silent host down (only the transition is a log entry).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use labspan_proto::msg::{ErrorKind, Reply};

use super::{error, labs, lock, HostLive, Inner};
use crate::raft::{Capacity, Command};

/// A host not heard of for this long is marked down.
pub const HOST_DOWN_AFTER: Duration = Duration::from_secs(10);
/// How often the leader looks for silent hosts.
const MONITOR_EVERY: Duration = Duration::from_secs(1);
/// Underlay MTU assumed for a host whose agent has not said (after a failover).
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Leader: records the host of agent `name` (its certificate's name), marks
/// it up, and sends it its plan (a restarted agent converges again).
pub(super) async fn register(
    inner: &Arc<Inner>,
    name: &str,
    memory_mib: u64,
    cpus: u32,
    vtep: IpAddr,
    underlay_mtu: u32,
) -> Reply {
    let known = inner.state.read().state.hosts.get(name).cloned();
    let labels = known
        .as_ref()
        .map(|h| h.labels.clone())
        .unwrap_or_else(BTreeSet::new);
    let capacity = Capacity {
        memory_mib,
        vcpus: u64::from(cpus),
    };
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
    tracing::info!(host = name, %vtep, memory_mib, cpus, "host registered");
    let (inner, host) = (inner.clone(), name.to_string());
    tokio::spawn(async move {
        // After any lab change in flight: a plan computed before it must not
        // reach the agent after that change's plan.
        let _one_at_a_time = inner.lab_lock.lock().await;
        labs::push_plans(&inner, &BTreeSet::from([host])).await
    });
    Reply::Done
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
    }
    Reply::Done
}

/// Runs for the life of the coordinator; acts only while it leads.
pub(super) async fn monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(MONITOR_EVERY);
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
            // TODO(issue 6): re-place the VMs of the lost host on the hosts
            // still up (placement::place_lab with the lost host removed),
            // then push the changed host plans.
        }
    }
}

/// Hosts marked up whose agent has been silent too long; hosts never heard
/// of by this leader get a grace period from now.
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
                last_seen: now,
                underlay_mtu: DEFAULT_UNDERLAY_MTU,
            });
            *up && now.duration_since(seen.last_seen) > HOST_DOWN_AFTER
        })
        .map(|(name, _)| name)
        .collect()
}
