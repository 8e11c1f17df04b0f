//! The supervisor: watches every guest of the last plan, not only its QEMU
//! (the QEMU process, its QMP run state, which shows a pvpanic panic or a
//! reboot or power-off, and a guest-agent ping once it is ready), records
//! what it sees in the guest's `health.json`, and restarts failed guests
//! by their policy through [`Agent::apply_with`], which keeps their disks.
//! The decisions are `liveness`'s; this only observes and acts.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use labspan_proto::health::GuestState;
use labspan_proto::lab::RestartPolicy;
use labspan_proto::plan::HostPlan;

use crate::liveness::{Decision, Health};
use crate::paths;
use crate::reconcile::{Agent, Event, Key};
use crate::vm::{self, GuestAgent, RunState};

/// How often every guest is looked at.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one guest-agent ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A ready guest whose agent has not answered this long is hung. Long
/// enough for a guest agent on a loaded TCG host to answer late.
pub const HANG_GRACE_SECS: u64 = 20;
/// Console lines kept with a failure.
pub const CONSOLE_LINES: usize = 20;
/// The record's file in a VM's folder.
const HEALTH_FILE: &str = "health.json";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The guest record in VM folder `dir` (a fresh one when there is none or
/// it is unreadable: liveness is observed again anyway).
pub fn load(dir: &Path) -> Health {
    std::fs::read(dir.join(HEALTH_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the guest record into `dir` atomically (a torn record would lose
/// the restart count); a VM folder that is gone is not made again.
pub fn save(dir: &Path, health: &Health) {
    if !dir.is_dir() {
        return;
    }
    let path = dir.join(HEALTH_FILE);
    let written = serde_json::to_vec_pretty(health)
        .map_err(std::io::Error::other)
        .and_then(|json| labspan_proto::atomic::write(&path, &json));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record a guest's health");
    }
}

/// The guest state a QEMU run state means.
pub fn guest_state(state: RunState) -> GuestState {
    match state {
        RunState::Panicked => GuestState::Panicked,
        RunState::ShutDown | RunState::InternalError => GuestState::ShutDown,
        RunState::Running | RunState::Paused => GuestState::Ready,
    }
}

/// Runs until its task is dropped: every [`PROBE_EVERY`], looks at each
/// guest of the last plan and restarts those due. It skips a round while
/// `apply_lock` is held (a plan being applied is bringing guests up).
pub async fn run(
    agent: Arc<Agent>,
    apply_lock: Arc<tokio::sync::Mutex<()>>,
    events: Arc<dyn Fn(Event) + Send + Sync>,
) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(plan) = agent.last_plan() else {
            continue;
        };
        let Ok(_applying) = apply_lock.try_lock() else {
            continue;
        };
        let due = probe_all(&agent, &plan, events.as_ref()).await;
        if due.is_empty() {
            continue;
        }
        let may_restart = |key: &Key| due.contains(key);
        if let Err(e) = agent.apply_with(&plan, &may_restart, events.as_ref()).await {
            tracing::warn!(error = %e, "restarting failed guests");
        }
    }
}

/// Probes every guest of `plan` at once; returns those due for a restart.
async fn probe_all(
    agent: &Agent,
    plan: &HostPlan,
    events: &(dyn Fn(Event) + Sync),
) -> BTreeSet<Key> {
    let guests = plan.labs.iter().flat_map(|l| {
        l.vms.iter().map(move |v| {
            let has_agent = agent
                .images()
                .get(&v.image)
                .is_ok_and(|i| i.manifest.guest.guest_agent);
            ((l.lab.clone(), v.name.clone()), v.restart, has_agent)
        })
    });
    let probes = guests.map(|(key, policy, has_agent)| async move {
        let busy = agent.is_busy(&key);
        let due = probe(agent, &key, policy, has_agent && !busy, events).await;
        due.then_some(key)
    });
    join_all(probes.collect::<Vec<_>>())
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Observes one guest, records what changed, and says whether its
/// restart is due.
async fn probe(
    agent: &Agent,
    key: &Key,
    policy: RestartPolicy,
    ping: bool,
    events: &(dyn Fn(Event) + Sync),
) -> bool {
    let (lab, node) = key;
    let dir = paths::vm_dir(agent.state(), lab, node);
    // A QEMU waiting for a moved guest has no guest to watch yet.
    if !dir.is_dir() || vm::migrate::is_incoming(&dir) {
        return false;
    }
    let before = load(&dir);
    let mut health = before.clone();
    let now = now();
    let failed = observe(&dir, &mut health, ping, now).await;
    if let Some((state, why)) = failed {
        events(Event::Failed {
            lab: lab.clone(),
            vm: node.clone(),
            state,
            why,
        });
    }
    let decision = health.next_step(policy, now);
    match &decision {
        Decision::Wait { until } if before.next_restart_at != Some(*until) => {
            events(Event::BackingOff {
                lab: lab.clone(),
                vm: node.clone(),
                delay: Duration::from_secs(until.saturating_sub(now)),
            });
        }
        Decision::Leave { why } => events(Event::Left {
            lab: lab.clone(),
            vm: node.clone(),
            why: why.clone(),
        }),
        _ => {}
    }
    if health != before {
        save(&dir, &health);
    }
    decision == Decision::Restart
}

/// Updates `health` from what the guest shows now; returns a new failure.
async fn observe(
    dir: &Path,
    health: &mut Health,
    ping: bool,
    now: u64,
) -> Option<(GuestState, String)> {
    let vm = match vm::adopt(dir) {
        Ok(Some(vm)) => vm,
        Ok(None) => {
            let why = "its QEMU process is gone".to_string();
            return fail(health, GuestState::QemuGone, why, now, Vec::new());
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read a VM folder");
            return None;
        }
    };
    let console = || vm.console_lines(CONSOLE_LINES);
    match vm.run_state().await {
        Ok(state) if state.is_failure() => {
            return fail(
                health,
                guest_state(state),
                format!("it {state}"),
                now,
                console(),
            );
        }
        // Paused on purpose (a fenced host, a migration): nothing to ping.
        Ok(RunState::Paused) => return None,
        _ => {}
    }
    let watched = matches!(health.state, GuestState::Ready | GuestState::Hung);
    if !ping || !watched {
        return None;
    }
    match GuestAgent::connect(&vm.record().spec.paths.qga, PING_TIMEOUT).await {
        Ok(_) => {
            health.answered(now);
            None
        }
        Err(_) if health.unanswered(now, HANG_GRACE_SECS) => {
            let why = format!("its guest agent has not answered for {HANG_GRACE_SECS}s");
            fail(health, GuestState::Hung, why, now, console())
        }
        Err(_) => None,
    }
}

fn fail(
    health: &mut Health,
    state: GuestState,
    why: String,
    now: u64,
    console: Vec<String>,
) -> Option<(GuestState, String)> {
    if health.state.is_failure() {
        return None;
    }
    health.fail(state, &why, now, console);
    Some((state, why))
}
