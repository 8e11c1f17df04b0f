//! Lab hosts on the leader: registration, heartbeats kept in memory, and
//! marking a silent host down (only the transition is a log entry).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use labspan_proto::msg::{ErrorKind, ErrorReply, Reply};
use labspan_proto::plan::check_underlay_mtu;
use tokio::sync::oneshot;

use super::push::{self, DEFAULT_UNDERLAY_MTU};
use super::{agents, checkpoints, error, lock, recovery, HostLive, Inner};
use crate::raft::{Capacity, Command, LabStatus, Registration};

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
    if let Err(why) = check_host(memory_mib, cpus, underlay_mtu) {
        return error(ErrorKind::Invalid, format!("host {name:?}: {why}"));
    }
    let known = inner.state.read().state.hosts.get(name).cloned();
    let labels = known
        .as_ref()
        .map(|h| h.labels.clone())
        .unwrap_or_else(BTreeSet::new);
    let capacity = Capacity { memory_mib, vcpus };
    let registration = Registration {
        name: name.to_string(),
        capacity,
        labels,
        vtep,
    };
    if let Err(e) = write_batched(inner, registration).await {
        return Reply::Error(e);
    }
    let timing = granted(inner);
    seen(inner, name, &timing, Some(underlay_mtu));
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
    // The registration was committed by a quorum in this leader's term,
    // after the agent sent it: that confirms the leadership the lease
    // needs, as `fresh` would.
    lease_reply(&timing)
}

/// The timing this leader grants now: production's, stretched for the
/// number of hosts in the cluster ([`super::Timing::for_hosts`]). Down
/// hosts count too, so the figure only grows while hosts come and go.
pub(super) fn granted(inner: &Inner) -> super::Timing {
    let hosts = inner.state.read().state.hosts.len();
    inner.timing.for_hosts(hosts)
}

/// A registration and who waits for its entry to commit.
type Pending = (Registration, oneshot::Sender<Result<(), ErrorReply>>);

/// Registrations waiting for the next [`Command::RegisterHosts`] entry.
#[derive(Default)]
pub(super) struct Registrations {
    pending: Mutex<Vec<Pending>>,
    /// Held while one entry is written: what arrives meanwhile waits and
    /// goes into the next one.
    turn: tokio::sync::Mutex<()>,
}

/// Commits `registration` in a [`Command::RegisterHosts`] entry shared with
/// every registration pending when its turn comes.
async fn write_batched(inner: &Arc<Inner>, registration: Registration) -> Result<(), ErrorReply> {
    let (done, committed) = oneshot::channel();
    lock(&inner.registrations.pending).push((registration, done));
    // In a task of its own: a caller that goes away must not drop the
    // entry it took for the others.
    let writer = inner.clone();
    tokio::spawn(async move {
        let _turn = writer.registrations.turn.lock().await;
        let batch = std::mem::take(&mut *lock(&writer.registrations.pending));
        if batch.is_empty() {
            return; // An earlier turn took it.
        }
        let (hosts, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        tracing::debug!(hosts = hosts.len(), "registering hosts in one entry");
        let result = writer
            .write(Command::RegisterHosts { hosts })
            .await
            .map(|_| ());
        for done in waiting {
            let _ = done.send(result.clone());
        }
    });
    committed.await.unwrap_or_else(|_| {
        Err(ErrorReply::new(
            ErrorKind::Unavailable,
            "the registration was interrupted (the coordinator is stopping); retry",
        ))
    })
}

/// What an agent announces about its host, checked before it is used.
fn check_host(memory_mib: u64, cpus: u32, underlay_mtu: u32) -> Result<(), String> {
    check_underlay_mtu(underlay_mtu)?;
    if cpus == 0 {
        return Err("a host with 0 CPUs cannot run a VM".into());
    }
    if memory_mib == 0 {
        return Err("a host with 0 MiB of memory cannot run a VM".into());
    }
    Ok(())
}

/// The agent's lease, granted only once this leader has confirmed it still
/// leads a quorum (a deposed leader on the minority side of a partition
/// must not keep an agent's VMs running while the majority moves them).
/// The confirmation is bounded by the lease itself: an agent that waited
/// longer would have fenced anyway.
async fn lease(inner: &Inner, t: super::Timing) -> Reply {
    match tokio::time::timeout(t.lease, inner.fresh()).await {
        Ok(Ok(())) => lease_reply(&t),
        Ok(Err(e)) => error(ErrorKind::Unavailable, format!("no lease: {}", e.message)),
        Err(_) => error(
            ErrorKind::Unavailable,
            format!(
                "no lease: leadership not confirmed by a quorum within {:?}",
                t.lease
            ),
        ),
    }
}

/// The lease, once leadership is confirmed.
fn lease_reply(t: &super::Timing) -> Reply {
    Reply::Lease {
        heartbeat_ms: millis(t.heartbeat),
        lease_ms: millis(t.lease),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends host `name` its complete plan in the background: after a restart
/// or a loss, its agent converges (and stops VMs that moved elsewhere).
/// Labs on it that `Failed` (typically because this agent was away during
/// their deploy) are settled again, so they become `Running` once every
/// host of theirs runs its share.
fn send_own_plan(inner: &Arc<Inner>, name: &str) {
    let (inner, host) = (inner.clone(), name.to_string());
    tokio::spawn(async move {
        // Not behind `lab_lock`: a deploy or a recovery that holds it may be
        // waiting on this very host, whose guests stay paused (fenced) until
        // a plan reaches it. The plan is safe out of order: it carries its
        // generation, and the agent refuses one older than it has applied.
        push::push_plans(&inner, &BTreeSet::from([host.clone()])).await;
        checkpoints::keep_recorded(&inner, &host).await;
        if failed_labs_on(&inner, &host).is_empty() {
            return;
        }
        // A lab's status is written by one lab change at a time; read
        // again under the lock (a lab may have changed or gone meanwhile).
        let _one_at_a_time = inner.lab_lock.lock().await;
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

/// Records that agent `name` was heard now and is granted `timing`'s
/// lease (its underlay MTU too, when it registered).
fn seen(inner: &Inner, name: &str, timing: &super::Timing, underlay_mtu: Option<u32>) {
    let mut live = lock(&inner.live);
    let entry = live.entry(name.to_string()).or_insert(HostLive {
        last_seen: Instant::now(),
        down_after: timing.host_down_after(),
        underlay_mtu: DEFAULT_UNDERLAY_MTU,
    });
    entry.last_seen = Instant::now();
    // Never shorter than a lease it may still hold from before.
    entry.down_after = entry.down_after.max(timing.host_down_after());
    if let Some(mtu) = underlay_mtu {
        entry.underlay_mtu = mtu;
    }
}

/// Leader: agent `name` is alive; answers with its lease.
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
    let timing = granted(inner);
    seen(inner, name, &timing, None);
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
    lease(inner, timing).await
}

/// Runs for the life of the coordinator; acts only while it leads.
pub(super) async fn monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.timing.monitor_every);
    let mut recovering: Option<tokio::task::JoinHandle<()>> = None;
    let mut checkpointing: Option<tokio::task::JoinHandle<()>> = None;
    let skipped = checkpoints::auto::Skipped::default();
    let quiet = recovery::Quiet::default();
    loop {
        tick.tick().await;
        if !inner.is_leader() {
            // A future leadership starts with a fresh grace period for every host.
            lock(&inner.live).clear();
            continue;
        }
        for (name, after) in silent_hosts(&inner) {
            tracing::warn!(host = name, ?after, "no heartbeat: marking the host down");
            if let Err(e) = inner
                .write(Command::SetHostUp {
                    name: name.clone(),
                    up: false,
                })
                .await
            {
                tracing::warn!(host = name, error = %e, "cannot mark the host down");
            } else {
                agents::host_lost(&inner);
            }
        }
        // Level-triggered: also finishes what a previous leader started.
        // One run at a time; a run may wait for VMs to start elsewhere.
        if recovering.as_ref().is_none_or(|t| t.is_finished()) {
            let (inner, quiet) = (inner.clone(), quiet.clone());
            recovering = Some(tokio::spawn(
                async move { recovery::run(&inner, &quiet).await },
            ));
        }
        // Automatic checkpoints (`resilience.checkpoint_every`), one run at a time.
        if checkpointing.as_ref().is_none_or(|t| t.is_finished()) {
            let (inner, skipped) = (inner.clone(), skipped.clone());
            checkpointing = Some(tokio::spawn(async move {
                checkpoints::auto::run(&inner, &skipped).await
            }));
        }
    }
}

/// Hosts marked up whose agent has been silent too long; hosts never heard
/// of by this leader get the new leader's grace from now.
/// Each comes with the silence it was allowed.
fn silent_hosts(inner: &Inner) -> Vec<(String, Duration)> {
    let hosts: Vec<(String, bool)> = inner
        .state
        .read()
        .state
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), h.up))
        .collect();
    let now = Instant::now();
    let timing = granted(inner);
    let down_after = timing.host_down_after();
    let grace = timing.new_leader_grace;
    let mut live = lock(&inner.live);
    hosts
        .into_iter()
        .filter_map(|(name, up)| {
            let seen = live.entry(name.clone()).or_insert(HostLive {
                // Seen "in the future": `duration_since` stays zero until then.
                last_seen: now + grace.saturating_sub(down_after),
                down_after,
                underlay_mtu: DEFAULT_UNDERLAY_MTU,
            });
            let silent = up && now.duration_since(seen.last_seen) > seen.down_after;
            silent.then_some((name, seen.down_after))
        })
        .collect()
}

/// Leader: cordons host `name` (placement skips it for new nodes) or ends
/// its cordon.
pub(super) async fn cordon(inner: &Arc<Inner>, name: &str, cordoned: bool) -> Reply {
    if let Err(e) = inner.fresh().await {
        return Reply::Error(e);
    }
    let known = {
        let state = &inner.state.read().state;
        if state.hosts.contains_key(name) {
            Ok(())
        } else {
            let hint =
                labspan_proto::suggest::hint(name, state.hosts.keys().map(String::as_str), "hosts");
            Err(format!("no host {name:?} in the cluster{hint}"))
        }
    };
    if let Err(why) = known {
        return error(ErrorKind::NotFound, why);
    }
    let cmd = Command::Cordon {
        name: name.to_string(),
        cordoned,
    };
    match inner.write(cmd).await {
        Ok(_) => Reply::Done,
        Err(e) => Reply::Error(e),
    }
}
