//! Bringing this host to its plan: VMs stopped, interfaces made, VMs
//! launched or adopted, guests configured.
//!
//! Every step is idempotent and starts from what is really there (VM
//! folders, QEMU processes, owned interfaces), never from memory, so an agent
//! killed at any point and started again carries on where it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use labspan_proto::files::FileStore;
use labspan_proto::plan::{HostPlan, LabPlan, VmPlan};

pub mod checkpoint;
mod configure;
mod error;
mod images;
mod launch;
mod moves;
pub mod vms;

use crate::net::{self, NetOps};
use crate::paths;
use crate::supervise;
use crate::vm::{self, AccelChoice, ExecOutput, Vm, VmError};
pub use error::{AgentError, Event};
use labspan_image::transfer::Fetcher;
use labspan_image::{Image, ImageStore};
use labspan_proto::health::GuestHealth;
use labspan_proto::lab::RestartPolicy;
pub use vms::{Found, Key, VmAction, Wanted};

/// How long a guest may take to boot until its agent answers (TCG on a busy
/// 2-core machine boots a Debian guest in tens of seconds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one `exec` line of a lab may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// ACPI power-down grace before QEMU is told to quit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What one VM ended up as.
#[derive(Debug, Clone, PartialEq)]
pub struct VmOutcome {
    pub lab: String,
    pub vm: String,
    pub pid: u32,
    /// `None` when the VM is up and configured, else what went wrong.
    pub error: Option<String>,
    pub console: PathBuf,
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub vms: Vec<VmOutcome>,
    /// Interface changes made (0 when the network already matched).
    pub net_actions: usize,
}

impl Report {
    /// True when every VM is up and configured.
    pub fn ok(&self) -> bool {
        self.vms.iter().all(|v| v.error.is_none())
    }
}

/// The host agent, for the host it runs on.
pub struct Agent {
    state: PathBuf,
    images: ImageStore,
    /// Guest files by hash, fetched from the coordinators.
    files: FileStore,
    accel: AccelChoice,
    /// Fetches the plan's images this host lacks (set by the daemon; without
    /// it the store is used as it is).
    fetcher: std::sync::OnceLock<Arc<Fetcher>>,
    /// This agent's cluster certificate, which its QEMUs present on moves
    /// (set by the daemon; a host outside a cluster moves nothing).
    move_credentials: std::sync::OnceLock<vm::migrate::Credentials>,
    /// The last plan applied: the supervisor restarts guests against it.
    last_plan: std::sync::Mutex<Option<HostPlan>>,
    /// Guest-agent sessions open per guest (an `exec` in flight): the
    /// supervisor does not ping a guest whose agent is busy serving one.
    busy: std::sync::Mutex<BTreeMap<Key, usize>>,
    /// Guests this agent is migrating to another host now.
    moving_out: std::sync::Mutex<BTreeSet<Key>>,
    /// What `/metrics` serves besides the kernel's figures.
    metrics: crate::metrics::Metrics,
    /// One checkpoint save or load at a time on this host.
    checkpointing: tokio::sync::Mutex<()>,
}

/// The QEMU running from `dir`, if one does.
fn qemu_facts(dir: &Path) -> Option<labspan_proto::health::QemuFacts> {
    let vm = vm::adopt(dir).ok()??;
    Some(labspan_proto::health::QemuFacts {
        pid: vm.pid(),
        started_at: crate::procfs::started_at(vm.pid()).unwrap_or(0),
        image_hash: vm.record().image_hash.clone(),
    })
}

/// Marks a guest's agent busy while it lives.
struct Busy<'a> {
    agent: &'a Agent,
    key: Key,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = self.agent.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
    }
}

impl Agent {
    /// An agent keeping its state in `state` (see `paths::state_dir`).
    pub fn new(state: PathBuf, accel: AccelChoice) -> Agent {
        let images = ImageStore::in_state(&state);
        let files = FileStore::at(state.join("files"));
        Agent {
            state,
            images,
            files,
            accel,
            fetcher: std::sync::OnceLock::new(),
            move_credentials: std::sync::OnceLock::new(),
            last_plan: std::sync::Mutex::new(None),
            busy: std::sync::Mutex::new(BTreeMap::new()),
            moving_out: std::sync::Mutex::new(BTreeSet::new()),
            metrics: crate::metrics::Metrics::default(),
            checkpointing: tokio::sync::Mutex::new(()),
        }
    }

    /// The counters and histograms this agent feeds.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Image bytes received from other hosts so far.
    pub fn image_bytes_received(&self) -> u64 {
        self.fetcher.get().map_or(0, |f| f.received_bytes())
    }

    /// The plan last applied (`None` before the first).
    pub fn last_plan(&self) -> Option<HostPlan> {
        self.last_plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn mark_busy(&self, key: &Key) -> Busy<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        *busy.entry(key.clone()).or_default() += 1;
        Busy {
            agent: self,
            key: key.clone(),
        }
    }

    /// Whether a guest's agent is serving an `exec` now.
    pub fn is_busy(&self, key: &Key) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// Lets `apply` fetch missing images with `fetcher` (once; later calls
    /// keep the first).
    pub fn set_fetcher(&self, fetcher: Arc<Fetcher>) {
        let _ = self.fetcher.set(fetcher);
    }

    /// The image fetcher, once the image service has set it.
    pub fn fetcher(&self) -> Option<Arc<Fetcher>> {
        self.fetcher.get().cloned()
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Brings the host to `plan`. Inputs are checked first (images present,
    /// no foreign interface in the way): when they fail nothing is touched.
    /// A failed guest is restarted unless its policy is `restart: never`
    /// (a plan comes from the user's `up`, or a change of the cluster).
    pub async fn apply(
        &self,
        plan: &HostPlan,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report, AgentError> {
        let policies = policies(plan);
        let may_restart = |key: &Key| {
            policies
                .get(key)
                .is_some_and(|p| *p != RestartPolicy::Never)
        };
        let started = std::time::Instant::now();
        let result = self.apply_with(plan, &may_restart, events).await;
        self.metrics.plan_applied(started.elapsed().as_secs_f64());
        result
    }

    /// [`Agent::apply`], restarting the failed guests `may_restart` allows
    /// and leaving the others as they are.
    pub async fn apply_with(
        &self,
        plan: &HostPlan,
        may_restart: &(dyn Fn(&Key) -> bool + Sync),
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report, AgentError> {
        self.ensure_images(plan, events).await?;
        let images = self.resolve_images(plan)?;
        let mut kernel = self.kernel().await?;
        net::diff(&net::desired_links(plan)?, &kernel.observe().await?)?;
        *self.last_plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
        self.apply_checked(plan, images, kernel, may_restart, events)
            .await
    }

    /// Restarts one guest of the last plan, keeping its disk: its QEMU is
    /// ended and launched again from its folder. The caller holds the
    /// daemon's apply lock.
    pub async fn restart(
        &self,
        lab: &str,
        node: &str,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report, AgentError> {
        let key = (lab.to_string(), node.to_string());
        let no_such = || AgentError::NoSuchVm {
            lab: lab.to_string(),
            vm: node.to_string(),
        };
        let plan = self.last_plan().ok_or_else(no_such)?;
        if !policies(&plan).contains_key(&key) {
            return Err(no_such());
        }
        // Recorded as due now, the guest reads as failed to the diff, which
        // restarts it (and only it), keeping its folder and disk.
        let dir = paths::vm_dir(&self.state, lab, node);
        let mut health = supervise::load(&dir);
        health.requested(supervise::now());
        supervise::save(&dir, &health);
        let only = |k: &Key| *k == key;
        let mut report = self.apply_with(&plan, &only, events).await?;
        report.vms.retain(|v| v.lab == lab && v.vm == node);
        Ok(report)
    }

    /// How every guest of the last plan is doing, from their records.
    pub fn guest_health(&self) -> Vec<GuestHealth> {
        let Some(plan) = self.last_plan() else {
            return Vec::new();
        };
        policies(&plan)
            .into_keys()
            .filter_map(|(lab, node)| {
                let dir = paths::vm_dir(&self.state, &lab, &node);
                dir.exists().then(|| {
                    let mut report = supervise::load(&dir).report(&lab, &node);
                    report.qemu = qemu_facts(&dir);
                    report
                })
            })
            .collect()
    }

    /// The state folder this agent keeps its VMs in.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// This host's guest files by hash.
    pub fn files(&self) -> &FileStore {
        &self.files
    }

    /// The kernel's interfaces, with a creation a killed agent left half
    /// done finished first (see [`net::KernelNet::with_journal`]).
    async fn kernel(&self) -> Result<net::KernelNet, AgentError> {
        let kernel = net::KernelNet::connect()?.with_journal(paths::net_journal(&self.state));
        kernel.recover().await?;
        Ok(kernel)
    }

    /// Checks `plan` against this host without changing anything: every
    /// image is in the store, and no foreign interface is in the way.
    pub async fn check(&self, plan: &HostPlan) -> Result<(), AgentError> {
        self.resolve_images(plan)?;
        let mut kernel = self.kernel().await?;
        net::diff(&net::desired_links(plan)?, &kernel.observe().await?)?;
        Ok(())
    }

    async fn apply_checked(
        &self,
        plan: &HostPlan,
        images: BTreeMap<Key, Image>,
        mut kernel: net::KernelNet,
        may_restart: &(dyn Fn(&Key) -> bool + Sync),
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report, AgentError> {
        let dirs = self.running_vms()?;
        let mut found = BTreeMap::new();
        let mut running = BTreeMap::new();
        for (key, dir) in &dirs {
            let lab = &key.0;
            match vm::adopt(dir).map_err(|cause| AgentError::vm(lab.clone(), cause))? {
                None => {
                    found.insert(key.clone(), Found::Gone);
                }
                Some(v) => {
                    let failed = guest_failure(&v).await;
                    let record = Box::new(v.record().clone());
                    found.insert(key.clone(), Found::Running { record, failed });
                    running.insert(key.clone(), v);
                }
            }
        }
        let wanted: BTreeMap<Key, (&LabPlan, &VmPlan)> = plan
            .labs
            .iter()
            .flat_map(|l| {
                l.vms
                    .iter()
                    .map(move |v| ((l.lab.clone(), v.name.clone()), (l, v)))
            })
            .collect();
        let diff_input = wanted
            .iter()
            .map(|(key, (_, vm))| {
                let image_hash = images[key].manifest.hash.as_str();
                (
                    key.clone(),
                    Wanted {
                        plan: vm,
                        image_hash,
                    },
                )
            })
            .collect();
        let actions = vms::vm_actions(&found, &diff_input, may_restart);
        // Stop what goes away or changes before the network reconcile, which
        // deletes their taps. Stops run together: a guest may take its
        // whole ACPI grace.
        let mut gone = Vec::new();
        let mut replaced = Vec::new();
        let mut halted = Vec::new();
        for action in &actions {
            match action {
                VmAction::Stop(key) => gone.push(key.clone()),
                VmAction::Replace { key, why } | VmAction::Restart { key, why } => {
                    events(Event::Restarting {
                        lab: key.0.clone(),
                        vm: key.1.clone(),
                        why: why.clone(),
                    });
                    let restart = matches!(action, VmAction::Restart { .. });
                    if restart {
                        let dir = paths::vm_dir(&self.state, &key.0, &key.1);
                        let mut health = supervise::load(&dir);
                        health.restarting(why, supervise::now());
                        supervise::save(&dir, &health);
                    }
                    if let Some(v) = running.remove(key) {
                        if restart {
                            halted.push((key.0.clone(), v));
                        } else {
                            replaced.push((key.0.clone(), v));
                        }
                    }
                }
                _ => {}
            }
        }
        let stops = gone.iter().map(|(lab, vm)| {
            let dir = &dirs[&(lab.clone(), vm.clone())];
            self.stop_dir(lab, dir)
        });
        join_all(stops)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for (lab, vm) in gone {
            // The folder of a lab whose last VM here just went (a lab that
            // still has VMs keeps it: NotEmpty).
            let _ = fs::remove_dir(paths::lab_vms_dir(&self.state, &lab));
            events(Event::Stopped { lab, vm });
        }
        let replaces = replaced.into_iter().map(|(lab, v)| async move {
            v.stop(STOP_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|cause| AgentError::vm(lab, cause))
        });
        let halts = halted.into_iter().map(|(lab, v)| async move {
            v.halt().await.map_err(|cause| AgentError::vm(lab, cause))
        });
        let (replaces, halts) = futures::future::join(join_all(replaces), join_all(halts)).await;
        replaces
            .into_iter()
            .chain(halts)
            .collect::<Result<Vec<_>, _>>()?;
        self.prune_checkpoints(plan)?;
        let net_report = net::reconcile_with(&mut kernel, plan).await?;
        let accel = self.accel(&images).await?;
        let runs = actions.into_iter().filter_map(|action| {
            let (key, left) = match action {
                VmAction::Stop(_) => return None,
                VmAction::Leave { key, why } => (key, Some(why)),
                VmAction::Adopt(key)
                | VmAction::Launch(key)
                | VmAction::Replace { key, .. }
                | VmAction::Restart { key, .. } => (key, None),
            };
            let (lab, vm) = wanted.get(&key)?;
            let adopted = running.remove(&key);
            let image = images.get(&key)?;
            Some(async move {
                match left {
                    Some(why) => self.left(lab, vm, adopted, &why),
                    None => self.bring_up(lab, vm, image, accel, adopted, events).await,
                }
            })
        });
        let vms = join_all(runs.collect::<Vec<_>>()).await;
        Ok(Report {
            vms,
            net_actions: net_report.actions.len(),
        })
    }

    /// Every VM folder on this host, by (lab, node).
    fn running_vms(&self) -> Result<BTreeMap<(String, String), PathBuf>, AgentError> {
        let mut found = BTreeMap::new();
        let root = self.state.join("vms");
        for lab in read_dirs(&root)? {
            for node in read_dirs(&lab)? {
                let name = |p: &Path| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                };
                found.insert((name(&lab), name(&node)), node);
            }
        }
        Ok(found)
    }

    async fn stop_dir(&self, lab: &str, dir: &Path) -> Result<(), AgentError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let err = |cause| AgentError::vm(lab.to_string(), cause);
        match vm::adopt(dir).map_err(err)? {
            Some(v) => {
                v.stop(STOP_TIMEOUT).await.map_err(err)?;
            }
            None => vm::remove_state(dir, &name).map_err(err)?,
        }
        Ok(())
    }

    /// Stops every VM of `lab` and deletes every interface made for it.
    /// Idempotent: removing a lab that is not there does nothing.
    pub async fn remove_lab(&self, lab: &str) -> Result<usize, AgentError> {
        let vms: Vec<_> = self
            .running_vms()?
            .into_iter()
            .filter(|((l, _), _)| l == lab)
            .collect();
        let stopped = join_all(vms.iter().map(|(_, dir)| self.stop_dir(lab, dir))).await;
        stopped.into_iter().collect::<Result<Vec<_>, _>>()?;
        let lab_dir = paths::lab_vms_dir(&self.state, lab);
        if let Err(cause) = fs::remove_dir(&lab_dir) {
            if cause.kind() != std::io::ErrorKind::NotFound {
                return Err(AgentError::State {
                    what: "removing",
                    path: lab_dir,
                    cause,
                });
            }
        }
        net::remove_lab(lab).await?;
        let checkpoints = paths::lab_checkpoints_dir(&self.state, lab);
        if let Err(cause) = fs::remove_dir_all(&checkpoints) {
            if cause.kind() != std::io::ErrorKind::NotFound {
                return Err(AgentError::State {
                    what: "removing",
                    path: checkpoints,
                    cause,
                });
            }
        }
        Ok(vms.len())
    }

    /// The state of every VM folder on this host: (lab, node) → running VM,
    /// or `None` when its QEMU is gone.
    pub fn status(&self) -> Result<BTreeMap<(String, String), Option<Vm>>, AgentError> {
        self.running_vms()?
            .into_iter()
            .map(|((lab, node), dir)| {
                let vm = vm::adopt(&dir).map_err(|cause| AgentError::vm(lab.clone(), cause))?;
                Ok(((lab, node), vm))
            })
            .collect()
    }

    /// Runs `cmd` with `sh -c` in a VM of this host.
    pub async fn exec(
        &self,
        lab: &str,
        node: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let dir = paths::vm_dir(&self.state, lab, node);
        let vm = vm::adopt(&dir)
            .map_err(|cause| AgentError::vm(lab.to_string(), cause))?
            .ok_or_else(|| AgentError::NoSuchVm {
                lab: lab.to_string(),
                vm: node.to_string(),
            })?;
        let err = |cause| AgentError::vm(lab.to_string(), cause);
        let _busy = self.mark_busy(&(lab.to_string(), node.to_string()));
        let mut ga = vm.guest_agent(Duration::from_secs(10)).await.map_err(err)?;
        ga.exec_shell(cmd, timeout).await.map_err(|cause| {
            err(VmError::Qga {
                vm: node.to_string(),
                cause,
            })
        })
    }
}

/// Each planned guest's restart policy.
fn policies(plan: &HostPlan) -> BTreeMap<Key, RestartPolicy> {
    plan.labs
        .iter()
        .flat_map(|l| {
            l.vms
                .iter()
                .map(move |v| ((l.lab.clone(), v.name.clone()), v.restart))
        })
        .collect()
}

/// Why the guest in a running QEMU has failed, if it has: QEMU holds it
/// stopped (panic, reboot, power-off), or the supervisor found it hung or
/// already recorded it failed.
async fn guest_failure(vm: &Vm) -> Option<String> {
    let health = supervise::load(vm.dir());
    if health.state.is_failure() {
        return Some(
            health
                .last_reason
                .unwrap_or_else(|| format!("it is {}", health.state)),
        );
    }
    match vm.run_state().await {
        Ok(state) if state.is_failure() => Some(format!("it {state}")),
        _ => None,
    }
}

fn read_dirs(dir: &Path) -> Result<BTreeSet<PathBuf>, AgentError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(cause) => {
            return Err(AgentError::State {
                what: "reading",
                path: dir.to_path_buf(),
                cause,
            })
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect())
}
