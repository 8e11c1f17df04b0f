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
use labspan_proto::msg::ErrorKind;
use labspan_proto::plan::{GuestFile, HostPlan, LabPlan, VmPlan};
use sha2::{Digest, Sha256};

pub mod checkpoint;
pub mod vms;

use crate::guest::{network_script, shell_quote};
use crate::net::{self, NetError, NetOps};
use crate::paths;
use crate::supervise;
use crate::vm::{
    self, Accel, AccelChoice, ExecOutput, GuestAgent, QgaError, Vm, VmConfig, VmError,
};
use labspan_image::transfer::{Fetcher, Progress};
use labspan_image::{Image, ImageError, ImageStore};
use labspan_proto::health::{GuestHealth, GuestState};
use labspan_proto::lab::RestartPolicy;
pub use vms::{Found, Key, VmAction, Wanted};

/// How long a guest may take to boot until its agent answers (TCG on a busy
/// 2-core machine boots a Debian guest in tens of seconds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one `exec` line of a lab may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// ACPI power-down grace before QEMU is told to quit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the host could not be brought to its plan.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An image the plan uses could not be brought to this host.
    #[error("lab \"{lab}\": {cause}")]
    Fetch {
        lab: String,
        cause: Box<labspan_image::transfer::FetchError>,
    },
    /// A VM's image is not in the store.
    #[error("lab \"{lab}\": node \"{vm}\": {cause}")]
    Image {
        lab: String,
        vm: String,
        cause: ImageError,
    },
    /// The network could not be brought to the plan.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A VM could not be started, stopped or reached.
    #[error("lab \"{lab}\": {cause}")]
    Vm { lab: String, cause: Box<VmError> },
    /// A configuration step failed inside a guest.
    #[error("lab \"{lab}\": node \"{vm}\": {step} exited {code}: {stderr}")]
    Config {
        lab: String,
        vm: String,
        step: String,
        code: i32,
        stderr: String,
    },
    /// The state folder could not be read or written.
    #[error("{what} {path}: {cause}")]
    State {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// No such VM on this host.
    #[error("lab \"{lab}\" has no running node \"{vm}\" on this host (see `labspan inspect`)")]
    NoSuchVm { lab: String, vm: String },
    /// A live move of a guest failed (the source runs it on).
    #[error("lab \"{lab}\": {cause}")]
    Move {
        lab: String,
        cause: Box<vm::migrate::MoveError>,
    },
    /// A checkpoint or reset could not be done on this host.
    #[error("lab \"{lab}\": {why}")]
    Checkpoint { lab: String, why: String },
    /// A guest file's contents are not available on this host.
    #[error("lab \"{lab}\": node \"{vm}\": guest file {path}: {why}")]
    GuestFile {
        lab: String,
        vm: String,
        path: String,
        why: String,
    },
}

impl AgentError {
    fn moving(lab: impl Into<String>, cause: vm::migrate::MoveError) -> AgentError {
        AgentError::Move {
            lab: lab.into(),
            cause: Box::new(cause),
        }
    }

    fn vm(lab: impl Into<String>, cause: VmError) -> AgentError {
        AgentError::Vm {
            lab: lab.into(),
            cause: Box::new(cause),
        }
    }

    /// How a caller should class this error: an unknown VM, a guest command
    /// that ran out of time, or a failure on this host.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::NoSuchVm { .. } => ErrorKind::NotFound,
            AgentError::Vm { cause, .. } => match cause.as_ref() {
                VmError::Qga {
                    cause: QgaError::Unfinished { .. },
                    ..
                } => ErrorKind::TimedOut,
                _ => ErrorKind::Internal,
            },
            _ => ErrorKind::Internal,
        }
    }
}

/// Progress, reported as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// QEMU is being started for a VM.
    Launching { lab: String, vm: String },
    /// QEMU is being started to receive a guest moved from another host.
    Receiving { lab: String, vm: String },
    /// A moved guest arrived and runs here.
    Arrived { lab: String, vm: String },
    /// A guest whose host was lost runs here from a checkpoint of its lab.
    Restored {
        lab: String,
        vm: String,
        checkpoint: String,
    },
    /// A running VM was found and kept (same QEMU process).
    Adopted { lab: String, vm: String, pid: u32 },
    /// A VM's QEMU had died, or its definition changed; it is started again.
    Restarting {
        lab: String,
        vm: String,
        why: String,
    },
    /// The guest agent answered.
    Booted {
        lab: String,
        vm: String,
        after: Duration,
    },
    /// Addresses, files and exec lines are in place.
    Configured { lab: String, vm: String },
    /// The VM is up: its guest booted and is configured (or has no guest
    /// agent to wait for).
    Ready { lab: String, vm: String },
    /// A VM not in the plan was stopped and removed.
    Stopped { lab: String, vm: String },
    /// A guest failed (panicked, shut down, hung, lost its QEMU).
    Failed {
        lab: String,
        vm: String,
        state: GuestState,
        why: String,
    },
    /// A failed guest will be restarted after `delay`.
    BackingOff {
        lab: String,
        vm: String,
        delay: Duration,
    },
    /// A failed guest is left as it is.
    Left {
        lab: String,
        vm: String,
        why: String,
    },
    /// An image the lab uses is being fetched from another host
    /// (`bytes == total` when it is complete).
    Fetching {
        lab: String,
        image: String,
        from: String,
        bytes: u64,
        total: u64,
        mib_per_s: f64,
    },
    /// A fetch from `from` failed (`why`); the next attempt follows.
    FetchRetry {
        lab: String,
        image: String,
        from: String,
        why: String,
    },
}

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

    /// Lets moves run, with this agent's cluster certificate (once).
    pub fn set_move_credentials(&self, tls: vm::migrate::Credentials) {
        let _ = self.move_credentials.set(tls);
    }

    fn move_credentials(
        &self,
        lab: &str,
        vm: &str,
    ) -> Result<&vm::migrate::Credentials, AgentError> {
        self.move_credentials.get().ok_or_else(|| {
            AgentError::moving(
                lab,
                vm::migrate::MoveError::Failed {
                    vm: vm.to_string(),
                    what: "TLS setup",
                    why: "this agent has no cluster certificate for the move's streams".into(),
                },
            )
        })
    }

    /// The image fetcher, once the image service has set it.
    pub fn fetcher(&self) -> Option<Arc<Fetcher>> {
        self.fetcher.get().cloned()
    }

    /// Brings every image the plan resolved to this host's store, under its
    /// name, fetching what is missing; without a fetcher, does nothing.
    async fn ensure_images(
        &self,
        plan: &HostPlan,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<(), AgentError> {
        let Some(fetcher) = self.fetcher.get() else {
            return Ok(());
        };
        let mut done = BTreeSet::new();
        for lab in &plan.labs {
            for image in &lab.images {
                if !done.insert((image.name.clone(), image.hash.clone())) {
                    continue;
                }
                let progress = |p: Progress| {
                    events(Event::Fetching {
                        lab: lab.lab.clone(),
                        image: p.image,
                        from: p.from,
                        bytes: p.bytes,
                        total: p.total,
                        mib_per_s: p.mib_per_s,
                    })
                };
                let retrying = |from: &str, why: &str| {
                    events(Event::FetchRetry {
                        lab: lab.lab.clone(),
                        image: image.name.clone(),
                        from: from.to_string(),
                        why: why.to_string(),
                    })
                };
                fetcher
                    .ensure(image, &progress, &retrying)
                    .await
                    .map_err(|e| AgentError::Fetch {
                        lab: lab.lab.clone(),
                        cause: Box::new(e),
                    })?;
            }
        }
        Ok(())
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

    /// The outcome of a failed guest that is left as it is.
    fn left(&self, lab: &LabPlan, plan: &VmPlan, vm: Option<Vm>, why: &str) -> VmOutcome {
        let dir = paths::vm_dir(&self.state, &lab.lab, &plan.name);
        VmOutcome {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            pid: vm.map_or(0, |v| v.pid()),
            error: Some(format!(
                "the guest failed ({why}) and is left as it is (restart: {}); `labspan restart {} {}` restarts it",
                plan.restart, lab.lab, plan.name
            )),
            console: dir.join(paths::CONSOLE_SOCKET),
        }
    }

    fn resolve_images(
        &self,
        plan: &HostPlan,
    ) -> Result<BTreeMap<(String, String), Image>, AgentError> {
        let mut images = BTreeMap::new();
        for lab in &plan.labs {
            for vm in &lab.vms {
                let image = self
                    .images
                    .get(&vm.image)
                    .map_err(|cause| AgentError::Image {
                        lab: lab.lab.clone(),
                        vm: vm.name.clone(),
                        cause,
                    })?;
                images.insert((lab.lab.clone(), vm.name.clone()), image);
            }
        }
        Ok(images)
    }

    /// The accelerator to launch with; `auto` probes KVM once per boot of the
    /// host, with an image that has a guest agent.
    async fn accel(&self, images: &BTreeMap<(String, String), Image>) -> Result<Accel, AgentError> {
        let probe = images.values().find(|i| i.manifest.guest.guest_agent);
        match probe {
            Some(image) => vm::accel::resolve(self.accel, &self.state, image)
                .await
                .map_err(|cause| AgentError::vm(String::new(), cause)),
            None => Ok(match self.accel {
                AccelChoice::Kvm => Accel::Kvm,
                _ => Accel::Tcg,
            }),
        }
    }

    async fn bring_up(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        image: &Image,
        accel: Accel,
        adopted: Option<Vm>,
        events: &(dyn Fn(Event) + Sync),
    ) -> VmOutcome {
        let dir = paths::vm_dir(&self.state, &lab.lab, &plan.name);
        let mut outcome = VmOutcome {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            pid: 0,
            error: None,
            console: dir.join(paths::CONSOLE_SOCKET),
        };
        let result = async {
            let vm = match adopted {
                Some(vm) => {
                    events(Event::Adopted {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                        pid: vm.pid(),
                    });
                    let key = (lab.lab.clone(), plan.name.clone());
                    if vm::migrate::interrupted_out(&dir) && !self.moving_out().contains(&key) {
                        tracing::warn!(
                            lab = lab.lab,
                            vm = plan.name,
                            "an outgoing move was cut short by the agent's end: cancelling it, the guest runs on here"
                        );
                        if let Err(e) = vm::migrate::abandon_out(&vm).await {
                            tracing::warn!(lab = lab.lab, vm = plan.name, error = %e, "cannot cancel the move cut short");
                        }
                    }
                    // Loaded by a reset that has not resumed it: its guest
                    // agent will not answer, and it must not run on its
                    // own. It is left paused, and reported not up (the lab
                    // is not running as a whole) until a reset loads it
                    // again; the plan is answered at once.
                    if let Some(checkpoint) = vm::checkpoint::awaits_resume(&vm).await {
                        outcome.pid = vm.pid();
                        return Err(AgentError::Checkpoint {
                            lab: lab.lab.clone(),
                            why: format!(
                                "paused in the state of checkpoint \"{checkpoint}\" by a reset that has not resumed it (a reset that failed leaves it so): `labspan reset {} {checkpoint}` runs the lab again",
                                lab.lab
                            ),
                        });
                    }
                    vm
                }
                None if plan.incoming.is_some() => {
                    let cfg = vm_config(plan, image, accel);
                    let at = plan.incoming.as_ref().map(endpoint);
                    let at = at.as_ref().ok_or_else(|| AgentError::NoSuchVm {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    })?;
                    events(Event::Receiving {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    });
                    let tls = self.move_credentials(&lab.lab, &plan.name)?;
                    vm::launch_incoming(&dir, &cfg, at, tls)
                        .await
                        .map_err(|source| AgentError::moving(lab.lab.clone(), source))?
                }
                None => {
                    let restored = match &plan.restore {
                        Some(checkpoint) => {
                            self.restore(lab, plan, image, accel, checkpoint, events)
                                .await
                        }
                        None => None,
                    };
                    if let Some(vm) = restored {
                        outcome.pid = vm.pid();
                        return Ok(true);
                    }
                    events(Event::Launching {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    });
                    let cfg = vm_config(plan, image, accel);
                    let mut health = supervise::load(&dir);
                    let vm = vm::launch(&dir, &cfg)
                        .await
                        .map_err(|cause| AgentError::vm(lab.lab.clone(), cause))?;
                    if health.state != GuestState::Booting {
                        health.booting(supervise::now());
                    }
                    supervise::save(&dir, &health);
                    vm
                }
            };
            outcome.pid = vm.pid();
            if plan.incoming.is_some() {
                // The guest is still on its way: nothing to wait for here.
                return Ok(false);
            }
            if vm::migrate::is_incoming(&dir) {
                self.arrived(&lab.lab, plan, &vm).await?;
                events(Event::Arrived {
                    lab: lab.lab.clone(),
                    vm: plan.name.clone(),
                });
            }
            if !image.manifest.guest.guest_agent {
                return Ok(true);
            }
            let after = match vm.wait_guest_agent(BOOT_TIMEOUT).await {
                Ok(after) => after,
                Err(e) => {
                    self.boot_failed(lab, plan, &vm, &e, events);
                    return Err(AgentError::vm(lab.lab.clone(), e));
                }
            };
            events(Event::Booted {
                lab: lab.lab.clone(),
                vm: plan.name.clone(),
                after,
            });
            if self.configure(&lab.lab, plan, &vm).await? {
                events(Event::Configured {
                    lab: lab.lab.clone(),
                    vm: plan.name.clone(),
                });
            }
            let mut health = supervise::load(&dir);
            health.ready(supervise::now());
            supervise::save(&dir, &health);
            Ok::<bool, AgentError>(true)
        }
        .await;
        match result {
            Ok(true) => events(Event::Ready {
                lab: lab.lab.clone(),
                vm: plan.name.clone(),
            }),
            Ok(false) => {}
            Err(e) => outcome.error = Some(e.to_string()),
        }
        outcome
    }

    /// Starts `plan`'s guest here from `checkpoint` of its lab (its host
    /// was lost; the leader put the checkpoint's files here), running and
    /// configured as it was then; `None` (and the reason in the events and
    /// the log) when it cannot be loaded: the guest then boots from its
    /// image.
    async fn restore(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        image: &Image,
        accel: Accel,
        checkpoint: &str,
        events: &(dyn Fn(Event) + Sync),
    ) -> Option<Vm> {
        let dir = paths::vm_dir(&self.state, &lab.lab, &plan.name);
        let from = paths::checkpoint_dir(&self.state, &lab.lab, checkpoint, &plan.name);
        let loaded = async {
            let ram = from.join(vm::checkpoint::RAM_FILE);
            if !ram.exists() {
                return Err(format!("{} is missing", ram.display()));
            }
            // The running overlay goes over the layer store's link (the
            // checkpoint may be deleted), whose image is this host's.
            let layer = match image.disk_path() {
                Some(base) => {
                    let disk = from.join(vm::checkpoint::DISK_FILE);
                    let layers = paths::layers_dir(&self.state, &lab.lab, &plan.name);
                    let layer = vm::checkpoint::layer_of(&plan.name, &disk, &layers, &base);
                    Some(layer.map_err(|e| e.to_string())?)
                }
                None => None,
            };
            let cfg = vm_config(plan, image, accel);
            let vm = vm::launch_restored(&dir, &cfg, layer.as_deref(), &ram, checkpoint)
                .await
                .map_err(|e| e.to_string())?;
            let started = async {
                let mut s = vm::checkpoint::session(&vm).await?;
                vm::checkpoint::start_loaded(&mut s, &vm).await
            };
            if let Err(e) = started.await {
                let _ = vm.halt().await;
                return Err(e.to_string());
            }
            Ok(vm)
        };
        let vm = match loaded.await {
            Ok(vm) => vm,
            Err(why) => {
                let why = format!(
                    "checkpoint {checkpoint:?} cannot be loaded here ({why}): booting from its image"
                );
                tracing::warn!(
                    lab = lab.lab,
                    vm = plan.name,
                    why,
                    "restart from a checkpoint failed"
                );
                events(Event::Restarting {
                    lab: lab.lab.clone(),
                    vm: plan.name.clone(),
                    why,
                });
                return None;
            }
        };
        if image.manifest.guest.guest_agent {
            if let Err(e) = vm::checkpoint::set_guest_time(&vm).await {
                tracing::warn!(lab = lab.lab, vm = plan.name, error = %e, "guest clock not set");
            }
        }
        // Configured as it was when the checkpoint was taken: its files and
        // `exec` lines do not run again.
        if let Err(e) = self.arrived_configured(plan, &vm) {
            tracing::warn!(lab = lab.lab, vm = plan.name, error = %e, "restored guest not marked configured");
        }
        let mut health = supervise::load(vm.dir());
        health.ready(supervise::now());
        supervise::save(vm.dir(), &health);
        tracing::info!(
            lab = lab.lab,
            vm = plan.name,
            checkpoint,
            "guest restarted from a checkpoint"
        );
        events(Event::Restored {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            checkpoint: checkpoint.to_string(),
        });
        Some(vm)
    }

    /// Records `vm` as configured for `plan` (it came with its state).
    fn arrived_configured(&self, plan: &VmPlan, vm: &Vm) -> Result<(), AgentError> {
        let done = Configured {
            pid: vm.pid(),
            net: digest(&plan.nics),
            run: digest(&plan.config),
        };
        let path = vm.dir().join(CONFIGURED);
        let json = serde_json::to_vec(&done).unwrap_or_default();
        labspan_proto::atomic::write(&path, &json).map_err(|source| AgentError::State {
            what: "writing",
            path,
            cause: source,
        })
    }

    /// Ends the receiving side of a move recorded done: the guest runs here,
    /// configured as it was on its old host (same boot: its files and
    /// `exec` lines are not run again).
    async fn arrived(&self, lab: &str, plan: &VmPlan, vm: &Vm) -> Result<(), AgentError> {
        vm::migrate::finish_incoming(vm)
            .await
            .map_err(|source| AgentError::moving(lab, source))?;
        self.arrived_configured(plan, vm)?;
        let mut health = supervise::load(vm.dir());
        health.ready(supervise::now());
        supervise::save(vm.dir(), &health);
        Ok(())
    }

    /// Live-migrates guest `node` of `lab` into the QEMU waiting for it at
    /// `to` (the destination's plan holds it as incoming). On failure the
    /// guest runs on here, unless it had already left (then the error says
    /// so and a leader decides the move done).
    pub async fn migrate_out(
        &self,
        lab: &str,
        node: &str,
        to: &vm::migrate::Endpoint,
        progress: &(dyn Fn(vm::migrate::Progress) + Sync),
    ) -> Result<labspan_proto::msg::MoveFigures, AgentError> {
        let key = (lab.to_string(), node.to_string());
        let dir = paths::vm_dir(&self.state, lab, node);
        let vm = vm::adopt(&dir)
            .map_err(|source| AgentError::vm(lab.to_string(), source))?
            .ok_or_else(|| AgentError::NoSuchVm {
                lab: lab.to_string(),
                vm: node.to_string(),
            })?;
        let tls = self.move_credentials(lab, node)?;
        let _busy = self.mark_busy(&key);
        self.moving_out().insert(key.clone());
        let result = vm::migrate::migrate_out(&vm, to, tls, progress).await;
        self.moving_out().remove(&key);
        result.map_err(|source| AgentError::moving(lab, source))
    }

    fn moving_out(&self) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
        self.moving_out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How a move of `node` of `lab` looks on this host.
    pub async fn move_status(&self, lab: &str, node: &str) -> labspan_proto::msg::MoveSide {
        use labspan_proto::msg::MoveSide;
        use vm::migrate::Arrival;
        if self
            .moving_out()
            .contains(&(lab.to_string(), node.to_string()))
        {
            return MoveSide::Migrating;
        }
        let dir = paths::vm_dir(&self.state, lab, node);
        let Ok(Some(vm)) = vm::adopt(&dir) else {
            return MoveSide::Absent;
        };
        if vm::migrate::is_incoming(&dir) {
            return match vm::migrate::arrival(&vm).await {
                Ok(Arrival::Arrived) => MoveSide::Completed,
                Ok(Arrival::Waiting) => MoveSide::Waiting,
                Ok(Arrival::Failed) | Err(_) => MoveSide::Absent,
            };
        }
        match vm::migrate::departed(&vm).await {
            Ok(true) => MoveSide::Completed,
            _ => MoveSide::Idle,
        }
    }

    /// Records a guest that failed while booting, for the supervisor to
    /// restart it by its policy.
    fn boot_failed(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        vm: &Vm,
        error: &VmError,
        events: &(dyn Fn(Event) + Sync),
    ) {
        let (state, why) = match error {
            VmError::Died { .. } => (GuestState::QemuGone, "its QEMU process is gone".into()),
            VmError::AgentTimeout { timeout, .. } => (
                GuestState::Hung,
                format!("its guest agent did not answer within {timeout:?} of boot"),
            ),
            VmError::GuestStopped { state, .. } => (
                supervise::guest_state(*state),
                format!("it {state} while booting"),
            ),
            _ => return,
        };
        let mut health = supervise::load(vm.dir());
        health.fail(
            state,
            &why,
            supervise::now(),
            vm.console_lines(supervise::CONSOLE_LINES),
        );
        supervise::save(vm.dir(), &health);
        events(Event::Failed {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            state,
            why,
        });
    }

    /// The contents of a guest file of the plan, from this host's file store
    /// (the daemon fetched it before applying the plan).
    fn guest_file(&self, lab: &str, vm: &str, file: &GuestFile) -> Result<Vec<u8>, AgentError> {
        match self.files.get(&file.file.sha256) {
            Ok(Some(contents)) => Ok(contents),
            Ok(None) => Err(AgentError::GuestFile {
                lab: lab.to_string(),
                vm: vm.to_string(),
                path: file.path.clone(),
                why: format!("its contents ({}) are not on this host", file.file.sha256),
            }),
            Err(e) => Err(AgentError::GuestFile {
                lab: lab.to_string(),
                vm: vm.to_string(),
                path: file.path.clone(),
                why: e.to_string(),
            }),
        }
    }

    /// Applies what changed since this boot of the VM was last configured:
    /// the network (addresses, names, MTUs: safe to apply again) whenever the
    /// NICs change; files and `exec` lines once per boot, and again only when
    /// the lab changes them, because lab `exec` lines need not be idempotent.
    /// Returns whether anything ran.
    async fn configure(&self, lab: &str, plan: &VmPlan, vm: &Vm) -> Result<bool, AgentError> {
        let path = vm.dir().join(CONFIGURED);
        let done: Configured = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|c: &Configured| c.pid == vm.pid())
            .unwrap_or_default();
        let want = Configured {
            pid: vm.pid(),
            net: digest(&plan.nics),
            run: digest(&plan.config),
        };
        if done == want {
            return Ok(false);
        }
        let vm_err = |cause| AgentError::vm(lab.to_string(), cause);
        let mut ga = vm
            .guest_agent(Duration::from_secs(10))
            .await
            .map_err(vm_err)?;
        let mut step = Step {
            ga: &mut ga,
            lab,
            vm: &plan.name,
            log: String::new(),
        };
        let mut result = Ok(());
        if done.net != want.net {
            result = step.run("network setup", &network_script(plan)).await;
        }
        if done.run != want.run {
            for file in &plan.config.files {
                if result.is_err() {
                    break;
                }
                result = match self.guest_file(lab, &plan.name, file) {
                    Ok(contents) => step.write_file(&file.path, &contents).await,
                    Err(e) => Err(e),
                };
            }
            for (i, line) in plan.config.exec.iter().enumerate() {
                if result.is_err() {
                    break;
                }
                result = step
                    .run(&format!("exec line {} `{line}`", i + 1), line)
                    .await;
            }
        }
        let log_path = vm.dir().join("exec.log");
        let mut log = fs::read_to_string(&log_path).unwrap_or_default();
        log.push_str(&step.log);
        labspan_proto::atomic::write(&log_path, log.as_bytes()).map_err(|cause| {
            AgentError::State {
                what: "writing",
                path: log_path,
                cause,
            }
        })?;
        result?;
        let json = serde_json::to_vec(&want).unwrap_or_default();
        labspan_proto::atomic::write(&path, &json).map_err(|cause| AgentError::State {
            what: "writing",
            path,
            cause,
        })?;
        Ok(true)
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

/// One guest's configuration steps, with the log of what they printed.
struct Step<'a> {
    ga: &'a mut GuestAgent,
    lab: &'a str,
    vm: &'a str,
    log: String,
}

impl Step<'_> {
    fn qga_err(&self, cause: QgaError) -> AgentError {
        AgentError::vm(
            self.lab.to_string(),
            VmError::Qga {
                vm: self.vm.to_string(),
                cause,
            },
        )
    }

    /// Runs a shell line; a non-zero exit is an error naming `step`.
    async fn run(&mut self, step: &str, line: &str) -> Result<(), AgentError> {
        let out = self
            .ga
            .exec_shell(line, EXEC_TIMEOUT)
            .await
            .map_err(|e| self.qga_err(e))?;
        self.log.push_str(&exec_log_entry(line, &out));
        if out.exit_code != 0 {
            return Err(AgentError::Config {
                lab: self.lab.to_string(),
                vm: self.vm.to_string(),
                step: step.to_string(),
                code: out.exit_code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Writes a file, making its folder first.
    async fn write_file(&mut self, path: &str, contents: &[u8]) -> Result<(), AgentError> {
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            let mkdir = format!("mkdir -p {}", shell_quote(&parent.to_string_lossy()));
            self.run(&format!("making the folder of {path}"), &mkdir)
                .await?;
        }
        self.log
            .push_str(&format!("# wrote {path} ({} bytes)\n", contents.len()));
        self.ga
            .write_file(path, contents)
            .await
            .map_err(|e| self.qga_err(e))
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

/// Where a planned incoming guest is received.
fn endpoint(incoming: &labspan_proto::plan::IncomingPlan) -> vm::migrate::Endpoint {
    vm::migrate::Endpoint {
        addr: incoming.addr,
        port: incoming.port,
        peer: incoming.from.clone(),
    }
}

fn vm_config(plan: &VmPlan, image: &Image, accel: Accel) -> VmConfig {
    VmConfig {
        name: plan.name.clone(),
        image: image.clone(),
        memory_mib: plan.memory_mib,
        cpus: plan.cpus,
        accel,
        nics: vms::nic_specs(plan),
    }
}

/// File in a VM's folder recording what this boot of the guest was given.
const CONFIGURED: &str = "configured.json";

/// What a guest was configured with, and on which boot (QEMU pid).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Configured {
    pid: u32,
    /// Digest of the NICs the network script was run for.
    net: String,
    /// Digest of the files and exec lines that were run.
    run: String,
}

fn digest<T: serde::Serialize>(value: &T) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(value).unwrap_or_default(),
    ))
}

fn exec_log_entry(line: &str, out: &ExecOutput) -> String {
    format!(
        "$ {line}\n{}{}[exit {}]\n",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.exit_code
    )
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

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_for_the_wire() {
        let timed_out = AgentError::vm(
            "lab",
            VmError::Qga {
                vm: "r1".into(),
                cause: QgaError::Unfinished {
                    command: "guest-exec".into(),
                    timeout: Duration::from_secs(3),
                },
            },
        );
        assert_eq!(timed_out.kind(), ErrorKind::TimedOut);
        let missing = AgentError::NoSuchVm {
            lab: "lab".into(),
            vm: "r9".into(),
        };
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let closed = AgentError::vm(
            "lab",
            VmError::Qga {
                vm: "r1".into(),
                cause: QgaError::Closed {
                    what: "exec".into(),
                },
            },
        );
        assert_eq!(closed.kind(), ErrorKind::Internal);
    }

    #[test]
    fn a_cause_is_printed_once() {
        let e = AgentError::State {
            what: "writing",
            path: PathBuf::from("/x/vm.json"),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let cause = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        // The CLI prints a chain with `{:#}`: the message and every source.
        let mut chain = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(c) = next {
            chain.push_str(&format!(": {c}"));
            next = c.source();
        }
        assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
    }
}
