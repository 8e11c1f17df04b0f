//! Self-fencing, so that a node never runs twice.
//!
//! The leader grants this host a *lease* with every heartbeat it answers
//! after confirming it still leads a quorum (`Reply::Lease`). The lease
//! counts from when the heartbeat was sent. When it lapses, this agent
//! pauses every VM of the host (QMP `stop`): the leader moves a silent
//! host's nodes only after the lease plus a margin, so by then the copies
//! here are frozen. A host that is fenced stays so until the leader sends
//! it a plan: the VMs that plan no longer holds (moved meanwhile) are
//! killed first, then the others resume.
//!
//! The agent's own death must fence too: its QEMUs are daemonized and
//! outlive it, and the leader moves a silent host's nodes whether its
//! network or its agent went quiet. So a standalone agent starts a *guard*
//! (`labspan agent guard`, [`guard`]), a small process that holds the read
//! end of a pipe whose only writer is the agent: when the agent dies, even
//! by `kill -9`, the kernel closes the pipe and the guard pauses every VM
//! at once, well within the lease plus margin, then exits. The restarted
//! agent starts fenced, as above.
//!
//! Plans carry a generation (the leader's last applied Raft index); a plan
//! older than one this host has applied is refused, so a slow push from a
//! deposed leader cannot bring back a node that moved. The last applied
//! generation is kept in the state folder, tied to the cluster's CA (a new
//! cluster starts again from 0).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use labspan_proto::msg::ErrorKind;
use labspan_proto::plan::HostPlan;
use labspan_transport::poll::Poll;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::vm;

/// Heartbeat interval and lease until the leader says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(400);
/// See [`DEFAULT_HEARTBEAT`].
pub const DEFAULT_LEASE: Duration = Duration::from_millis(1600);
/// How often the lease is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// While fenced, VMs are paused again this often (an apply that was in
/// flight when the lease lapsed may have started one).
const REPAUSE_EVERY: Duration = Duration::from_secs(1);
/// File (in the state folder) holding the last applied plan generation.
const GENERATION_FILE: &str = "plan-generation.json";

/// Why a plan was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// An older plan than one already applied.
    #[error("plan generation {got} is older than generation {applied}, already applied on this host: refused")]
    Stale { got: u64, applied: u64 },
    /// This host has no lease: it cannot tell whether its nodes moved.
    #[error("this host has no lease from a leader with a quorum (its VMs are paused): refused until its heartbeats are answered")]
    NoLease,
    /// The generation could not be kept on disk.
    #[error("cannot record plan generation {generation} in {}: {why}", path.display())]
    Persist {
        generation: u64,
        path: PathBuf,
        why: String,
    },
}

impl Refusal {
    /// How the leader reads it: a stale plan was superseded by a newer one
    /// (a conflict the leader resolves by planning the host again).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::Stale { .. } => ErrorKind::Conflict,
            Refusal::NoLease => ErrorKind::Unavailable,
            Refusal::Persist { .. } => ErrorKind::Internal,
        }
    }
}

/// The generation rule: a plan may be applied unless an applied one is newer.
pub fn check_generation(applied: Option<u64>, got: u64) -> Result<(), Refusal> {
    match applied {
        Some(applied) if got < applied => Err(Refusal::Stale { got, applied }),
        _ => Ok(()),
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Recorded {
    /// SHA-256 of the cluster CA's PEM.
    ca: String,
    generation: u64,
}

#[derive(Debug)]
struct Lease {
    /// VMs may run until then; `None` before the first answered heartbeat.
    until: Option<Instant>,
    heartbeat: Duration,
    lease: Duration,
    /// VMs are paused and wait for a plan.
    fenced: bool,
    last_pause: Option<Instant>,
    applied: Option<u64>,
}

/// This host's lease and plan generation.
#[derive(Debug)]
pub struct Fence {
    state: PathBuf,
    ca: String,
    /// Whether a lapsed lease pauses VMs (a standalone daemon); the
    /// embedded default has no other host to fence against.
    enabled: bool,
    lease: Mutex<Lease>,
    /// One pause or resume at a time.
    ops: tokio::sync::Mutex<()>,
}

impl Fence {
    /// The fence of the agent whose state folder is `state`, in the cluster
    /// whose CA is `ca_pem`. An enabled fence starts fenced: a restarted
    /// agent cannot know whether its nodes moved while it was away.
    pub fn new(state: &Path, ca_pem: &str, enabled: bool) -> Fence {
        let ca = hex::encode(Sha256::digest(ca_pem.as_bytes()));
        let path = state.join(GENERATION_FILE);
        let applied = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Recorded>(&b).ok())
            .filter(|r| r.ca == ca)
            .map(|r| r.generation);
        Fence {
            state: state.to_path_buf(),
            ca,
            enabled,
            lease: Mutex::new(Lease {
                until: None,
                heartbeat: DEFAULT_HEARTBEAT,
                lease: DEFAULT_LEASE,
                fenced: enabled,
                last_pause: None,
                applied,
            }),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A heartbeat sent at `sent` was answered with a lease.
    pub fn renew(&self, sent: Instant, heartbeat: Duration, lease: Duration) {
        let mut l = self.lock();
        l.heartbeat = heartbeat;
        l.lease = lease;
        let until = sent + lease;
        l.until = Some(l.until.map_or(until, |u| u.max(until)));
    }

    /// How often to heartbeat, as the leader said.
    pub fn heartbeat(&self) -> Duration {
        self.lock().heartbeat
    }

    /// The lease's length, as the leader said.
    pub fn lease(&self) -> Duration {
        self.lock().lease
    }

    /// Whether the VMs are paused, waiting for a plan.
    pub fn fenced(&self) -> bool {
        self.lock().fenced
    }

    fn valid(&self, now: Instant) -> bool {
        !self.enabled || self.lock().until.is_some_and(|u| now < u)
    }

    /// The last applied generation.
    pub fn applied(&self) -> Option<u64> {
        self.lock().applied
    }

    /// Runs for the life of the daemon: pauses every VM when the lease lapses.
    pub async fn watch(&self) {
        if !self.enabled {
            return;
        }
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let now = Instant::now();
            let pause = {
                let mut l = self.lock();
                let lapsed = l.until.is_none_or(|u| now >= u);
                let due = l
                    .last_pause
                    .is_none_or(|p| now.duration_since(p) >= REPAUSE_EVERY);
                if lapsed && !l.fenced {
                    tracing::warn!(lease = ?l.lease, "lease lapsed (no quorum answered): pausing every VM");
                    l.fenced = true;
                }
                let pause = lapsed && l.fenced && due;
                if pause {
                    l.last_pause = Some(now);
                }
                pause
            };
            if pause {
                let _one = self.ops.lock().await;
                // The lease may have been renewed meanwhile; pausing anyway
                // is safe (the next plan resumes them).
                pause_all(&self.state).await;
            }
        }
    }

    /// Checks that `plan` may be applied, records its generation, and, when
    /// this host is fenced, kills the VMs the plan no longer holds and
    /// resumes the rest. Waits up to two heartbeats for a lease (the plan the
    /// leader sends after a registration may overtake the lease's answer).
    pub async fn admit(&self, plan: &HostPlan) -> Result<(), Refusal> {
        check_generation(self.applied(), plan.generation)?;
        let leased = Poll::new(WATCH_EVERY, 2 * self.heartbeat())
            .until(|| async { self.valid(Instant::now()).then_some(()) })
            .await;
        if leased.is_none() {
            return Err(Refusal::NoLease);
        }
        self.record(plan.generation)?;
        if !self.fenced() {
            return Ok(());
        }
        let _one = self.ops.lock().await;
        let wanted: BTreeSet<(String, String)> = plan
            .labs
            .iter()
            .flat_map(|l| l.vms.iter().map(|v| (l.lab.clone(), v.name.clone())))
            .collect();
        stop_stale(&self.state, &wanted).await;
        if !self.valid(Instant::now()) {
            return Err(Refusal::NoLease);
        }
        resume_all(&self.state).await;
        self.lock().fenced = false;
        tracing::info!(
            generation = plan.generation,
            "fence lifted: stale copies stopped, VMs resumed"
        );
        Ok(())
    }

    /// Whether `plan`, admitted earlier, is still the newest admitted
    /// (checked again under the apply lock, just before it is applied).
    pub fn still_current(&self, plan: &HostPlan) -> Result<(), Refusal> {
        check_generation(self.applied(), plan.generation)
    }

    /// Keeps `generation` (when newer) on disk before the plan is applied:
    /// written to a new file, synced, then renamed over the old one.
    fn record(&self, generation: u64) -> Result<(), Refusal> {
        // Held across the check and the write: two plans admitted at once
        // (a plan pushed after a registration does not wait for the
        // leader's lab lock) must not write at once, nor leave the older
        // generation on disk after the newer.
        let mut state = self.lock();
        if state.applied.is_some_and(|a| a >= generation) {
            return Ok(());
        }
        let path = self.state.join(GENERATION_FILE);
        let fail = |why: String| Refusal::Persist {
            generation,
            path: path.clone(),
            why,
        };
        let bytes = serde_json::to_vec(&Recorded {
            ca: self.ca.clone(),
            generation,
        })
        .map_err(|e| fail(e.to_string()))?;
        fs::create_dir_all(&self.state)
            .and_then(|()| labspan_proto::atomic::write(&path, &bytes))
            .map_err(|e| fail(e.to_string()))?;
        state.applied = Some(generation);
        Ok(())
    }
}

/// Every VM folder of the host: (lab, node) → folder.
fn vm_dirs(state: &Path) -> Vec<((String, String), PathBuf)> {
    let list = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|r| {
                r.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for lab in list(&state.join("vms")) {
        for node in list(&lab) {
            out.push(((name(&lab), name(&node)), node));
        }
    }
    out
}

/// Sends `command` to every running VM's QMP, together.
async fn qmp_all(state: &Path, command: &'static str, keep: impl Fn(&(String, String)) -> bool) {
    let runs = vm_dirs(state).into_iter().filter(|(key, _)| keep(key)).map(
        |((lab, node), dir)| async move {
            let result = async {
                let Some(v) = vm::adopt(&dir)? else {
                    return Ok(());
                };
                let qmp_err = |cause| vm::VmError::Qmp {
                    vm: node.clone(),
                    cause,
                };
                let mut q = v.qmp().await?;
                if command == "cont" {
                    // Only what a fence paused: a guest that left by a live
                    // move (`postmigrate`), is switching over
                    // (`finish-migrate`) or has not arrived (`inmigrate`)
                    // must not run here.
                    // A checkpoint's save cut short leaves its guest
                    // `postmigrate` (saved to a file, never left); a guest
                    // restored from one waits for the lab's common resume.
                    let status = q.execute("query-status", None).await.map_err(qmp_err)?;
                    let marker = vm::checkpoint::marker(&dir);
                    let resumable = match status["status"].as_str() {
                        Some("paused") => marker.as_deref() != Some("load"),
                        Some("postmigrate") => marker.as_deref() == Some("save"),
                        _ => false,
                    };
                    if !resumable {
                        return Ok(());
                    }
                }
                q.execute(command, None).await.map_err(qmp_err)?;
                Ok::<(), vm::VmError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(lab, node, command, error = %e, "fence: QMP command failed");
            }
        },
    );
    futures::future::join_all(runs).await;
}

/// After the guard's first pause, the time it waits before pausing again
/// (a QEMU that was being started when the agent died comes up meanwhile).
const GUARD_REPAUSE_AFTER: Duration = Duration::from_secs(1);

/// File (in the state folder) naming the agent that runs now: each agent
/// writes its own run id there as it starts, before its guard.
const AGENT_RUN_FILE: &str = "agent-run";

/// Records that a new agent runs on `state` (its run id: pid and start
/// time); returns the id, for its guard.
pub fn record_agent_run(state: &Path) -> std::io::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{} {nanos}", std::process::id());
    fs::create_dir_all(state)?;
    labspan_proto::atomic::write(&state.join(AGENT_RUN_FILE), id.as_bytes())?;
    Ok(id)
}

/// Whether an agent other than run `id` has started on `state` since.
fn replaced(state: &Path, id: &str) -> bool {
    fs::read_to_string(state.join(AGENT_RUN_FILE)).is_ok_and(|now| now != id)
}

/// The guard of a standalone agent whose state folder is `state` and whose
/// run id is `agent`: waits until `agent_gone` resolves (the pipe from the
/// agent reached its end), then pauses every VM of the host, twice; not
/// once a new agent has started there (a service restart starts it at
/// once). That agent starts fenced and pauses the VMs itself until a plan
/// under a lease resumes them: a pause from here after that resume would
/// leave the guests paused for good.
pub async fn guard(state: &Path, agent: &str, agent_gone: impl std::future::Future<Output = ()>) {
    agent_gone.await;
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(GUARD_REPAUSE_AFTER).await;
        }
        if replaced(state, agent) {
            tracing::info!("a new agent runs on this host: it fences its VMs itself");
            return;
        }
        if round == 0 {
            tracing::warn!("the agent is gone: pausing every VM of this host (a restarted agent resumes them under a lease)");
        }
        pause_all(state).await;
    }
}

async fn pause_all(state: &Path) {
    qmp_all(state, "stop", |_| true).await;
}

async fn resume_all(state: &Path) {
    qmp_all(state, "cont", |_| true).await;
}

/// Kills the VMs that `wanted` no longer holds (they run elsewhere now;
/// paused, they would not heed an ACPI power-down) and removes their folders.
async fn stop_stale(state: &Path, wanted: &BTreeSet<(String, String)>) {
    for ((lab, node), dir) in vm_dirs(state) {
        if wanted.contains(&(lab.clone(), node.clone())) {
            continue;
        }
        let result = async {
            if let Some(v) = vm::adopt(&dir)? {
                v.kill().await?;
                tracing::warn!(lab, node, pid = v.pid(), "fence: stale copy killed");
            }
            vm::remove_state(&dir, &node)
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(lab, node, error = %e, "fence: cannot stop a stale copy");
        }
        // The lab's folder once its last VM here is gone (NotEmpty otherwise).
        if let Some(lab_dir) = dir.parent() {
            let _ = fs::remove_dir(lab_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(generation: u64) -> HostPlan {
        HostPlan {
            host: "h1".into(),
            generation,
            ..HostPlan::default()
        }
    }

    #[test]
    fn a_guard_knows_when_a_new_agent_has_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = record_agent_run(dir.path()).expect("first agent");
        assert!(!replaced(dir.path(), &first), "its own agent's run");
        let second = record_agent_run(dir.path()).expect("second agent");
        assert_ne!(first, second);
        assert!(replaced(dir.path(), &first), "a restarted agent took over");
        assert!(!replaced(dir.path(), &second));
    }

    #[test]
    fn an_older_generation_is_refused_an_equal_or_newer_one_applies() {
        assert_eq!(check_generation(None, 0), Ok(()));
        assert_eq!(check_generation(Some(7), 7), Ok(()));
        assert_eq!(check_generation(Some(7), 8), Ok(()));
        assert_eq!(
            check_generation(Some(7), 6),
            Err(Refusal::Stale { got: 6, applied: 7 })
        );
    }

    #[tokio::test]
    async fn the_applied_generation_survives_a_restart_of_the_same_cluster_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fence = Fence::new(dir.path(), "CA one", false);
        fence.admit(&plan(5)).await.expect("first plan");
        fence.admit(&plan(9)).await.expect("newer plan");
        assert_eq!(
            fence.admit(&plan(8)).await,
            Err(Refusal::Stale { got: 8, applied: 9 })
        );
        drop(fence);

        let again = Fence::new(dir.path(), "CA one", false);
        assert_eq!(again.applied(), Some(9));
        let err = again
            .admit(&plan(3))
            .await
            .expect_err("stale after restart");
        assert!(
            err.to_string()
                .contains("generation 3 is older than generation 9"),
            "{err}"
        );
        assert!(!dir.path().join(format!("{GENERATION_FILE}.new")).exists());

        let other_cluster = Fence::new(dir.path(), "CA two", false);
        assert_eq!(other_cluster.applied(), None);
        other_cluster
            .admit(&plan(1))
            .await
            .expect("a new cluster starts from 0");
    }

    #[tokio::test]
    async fn an_enabled_fence_without_a_lease_refuses_plans_until_renewed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fence = Fence::new(dir.path(), "CA", true);
        assert!(fence.fenced(), "a restarted agent starts fenced");
        fence.renew(
            Instant::now(),
            Duration::from_millis(10),
            Duration::from_millis(20),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(fence.admit(&plan(1)).await, Err(Refusal::NoLease));
        fence.renew(
            Instant::now(),
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        fence.admit(&plan(1)).await.expect("leased");
        assert!(!fence.fenced(), "a plan under a lease lifts the fence");
    }
}
