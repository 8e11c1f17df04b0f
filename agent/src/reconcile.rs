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
use labspan_proto::plan::{HostPlan, LabPlan, VmPlan};
use sha2::{Digest, Sha256};

use crate::guest::{network_script, shell_quote};
use crate::image::transfer::{Fetcher, Progress};
use crate::image::{Image, ImageError, ImageStore};
use crate::net::{self, NetError, NetOps};
use crate::paths;
use crate::vm::{
    self, Accel, AccelChoice, ExecOutput, GuestAgent, NicSpec, QgaError, Vm, VmConfig, VmError,
};

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
    #[error("lab \"{lab}\": {source}")]
    Fetch {
        lab: String,
        #[source]
        source: Box<crate::image::transfer::FetchError>,
    },
    /// A VM's image is not in the store.
    #[error("lab \"{lab}\": node \"{vm}\": {source}")]
    Image {
        lab: String,
        vm: String,
        #[source]
        source: ImageError,
    },
    /// The network could not be brought to the plan.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A VM could not be started, stopped or reached.
    #[error("lab \"{lab}\": {source}")]
    Vm {
        lab: String,
        #[source]
        source: Box<VmError>,
    },
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
    #[error("{what} {path}: {source}")]
    State {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No such VM on this host.
    #[error("lab \"{lab}\" has no running node \"{vm}\" on this host (see `labspan inspect`)")]
    NoSuchVm { lab: String, vm: String },
}

impl AgentError {
    fn vm(lab: impl Into<String>, source: VmError) -> AgentError {
        AgentError::Vm {
            lab: lab.into(),
            source: Box::new(source),
        }
    }
}

/// Progress, reported as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// QEMU is being started for a VM.
    Launching { lab: String, vm: String },
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
    /// A VM not in the plan was stopped and removed.
    Stopped { lab: String, vm: String },
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
    accel: AccelChoice,
    /// Fetches the plan's images this host lacks (set by the daemon; without
    /// it the store is used as it is).
    fetcher: std::sync::OnceLock<Arc<Fetcher>>,
}

impl Agent {
    /// An agent keeping its state in `state` (see `paths::state_dir`).
    pub fn new(state: PathBuf, accel: AccelChoice) -> Agent {
        let images = ImageStore::at(state.join("images"));
        Agent {
            state,
            images,
            accel,
            fetcher: std::sync::OnceLock::new(),
        }
    }

    /// Lets `apply` fetch missing images with `fetcher` (once; later calls
    /// keep the first).
    pub fn set_fetcher(&self, fetcher: Arc<Fetcher>) {
        let _ = self.fetcher.set(fetcher);
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
                        source: Box::new(e),
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
    pub async fn apply(
        &self,
        plan: &HostPlan,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report, AgentError> {
        self.ensure_images(plan, events).await?;
        let images = self.resolve_images(plan)?;
        let mut kernel = self.kernel().await?;
        net::diff(&net::desired_links(plan)?, &kernel.observe().await?)?;
        self.apply_checked(plan, images, kernel, events).await
    }

    /// The state folder this agent keeps its VMs in.
    pub fn state(&self) -> &Path {
        &self.state
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
        images: BTreeMap<(String, String), Image>,
        mut kernel: net::KernelNet,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report, AgentError> {
        let running = self.running_vms()?;
        let wanted: BTreeMap<(String, String), (&LabPlan, &VmPlan)> = plan
            .labs
            .iter()
            .flat_map(|l| {
                l.vms
                    .iter()
                    .map(move |v| ((l.lab.clone(), v.name.clone()), (l, v)))
            })
            .collect();
        // Stop what goes away or changes before the network reconcile, which
        // deletes their taps.
        // Stops run together: a guest may take its whole ACPI grace.
        let mut kept = BTreeMap::new();
        let mut gone = Vec::new();
        let mut changed = Vec::new();
        for (key, dir) in running {
            let (lab, name) = key.clone();
            let Some((_, plan_vm)) = wanted.get(&key) else {
                gone.push((lab, name, dir));
                continue;
            };
            match vm::adopt(&dir).map_err(|source| AgentError::vm(lab.clone(), source))? {
                Some(v) => match mismatch(&v, plan_vm, &images[&key]) {
                    None => {
                        kept.insert(key, v);
                    }
                    Some(why) => {
                        events(Event::Restarting {
                            lab: lab.clone(),
                            vm: name,
                            why,
                        });
                        changed.push((lab, v));
                    }
                },
                None => {
                    let why = "its QEMU process is gone".to_string();
                    events(Event::Restarting {
                        lab: lab.clone(),
                        vm: name.clone(),
                        why,
                    });
                    vm::remove_state(&dir, &name).map_err(|source| AgentError::vm(lab, source))?;
                }
            }
        }
        let stops = gone.iter().map(|(lab, _, dir)| self.stop_dir(lab, dir));
        join_all(stops)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for (lab, vm, _) in gone {
            // The folder of a lab whose last VM here just went (a lab that
            // still has VMs keeps it: NotEmpty).
            let _ = fs::remove_dir(paths::lab_vms_dir(&self.state, &lab));
            events(Event::Stopped { lab, vm });
        }
        let restarts = changed.into_iter().map(|(lab, v)| async move {
            v.stop(STOP_TIMEOUT)
                .await
                .map_err(|source| AgentError::vm(lab, source))
        });
        join_all(restarts)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let net_report = net::reconcile_with(&mut kernel, plan).await?;
        let accel = self.accel(&images).await?;
        let runs = wanted.iter().map(|(key, (lab, vm))| {
            let adopted = kept.remove(key);
            self.bring_up(lab, vm, &images[key], accel, adopted, events)
        });
        let vms = join_all(runs.collect::<Vec<_>>()).await;
        Ok(Report {
            vms,
            net_actions: net_report.actions.len(),
        })
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
                    .map_err(|source| AgentError::Image {
                        lab: lab.lab.clone(),
                        vm: vm.name.clone(),
                        source,
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
                .map_err(|source| AgentError::vm(String::new(), source)),
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
                    vm
                }
                None => {
                    events(Event::Launching {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    });
                    let cfg = vm_config(plan, image, accel);
                    vm::launch(&dir, &cfg)
                        .await
                        .map_err(|source| AgentError::vm(lab.lab.clone(), source))?
                }
            };
            outcome.pid = vm.pid();
            if !image.manifest.guest.guest_agent {
                return Ok(());
            }
            let after = vm
                .wait_guest_agent(BOOT_TIMEOUT)
                .await
                .map_err(|source| AgentError::vm(lab.lab.clone(), source))?;
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
            Ok::<(), AgentError>(())
        }
        .await;
        outcome.error = result.err().map(|e| e.to_string());
        outcome
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
        let vm_err = |source| AgentError::vm(lab.to_string(), source);
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
                result = step.write_file(&file.path, &file.contents).await;
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
        fs::write(&log_path, &log).map_err(|source| AgentError::State {
            what: "writing",
            path: log_path,
            source,
        })?;
        result?;
        let json = serde_json::to_vec(&want).unwrap_or_default();
        fs::write(&path, json).map_err(|source| AgentError::State {
            what: "writing",
            path,
            source,
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
        let err = |source| AgentError::vm(lab.to_string(), source);
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
        if let Err(source) = fs::remove_dir(&lab_dir) {
            if source.kind() != std::io::ErrorKind::NotFound {
                return Err(AgentError::State {
                    what: "removing",
                    path: lab_dir,
                    source,
                });
            }
        }
        net::remove_lab(lab).await?;
        Ok(vms.len())
    }

    /// The state of every VM folder on this host: (lab, node) → running VM,
    /// or `None` when its QEMU is gone.
    pub fn status(&self) -> Result<BTreeMap<(String, String), Option<Vm>>, AgentError> {
        self.running_vms()?
            .into_iter()
            .map(|((lab, node), dir)| {
                let vm = vm::adopt(&dir).map_err(|source| AgentError::vm(lab.clone(), source))?;
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
            .map_err(|source| AgentError::vm(lab.to_string(), source))?
            .ok_or_else(|| AgentError::NoSuchVm {
                lab: lab.to_string(),
                vm: node.to_string(),
            })?;
        let err = |source| AgentError::vm(lab.to_string(), source);
        let mut ga = vm.guest_agent(Duration::from_secs(10)).await.map_err(err)?;
        ga.exec_shell(cmd, timeout).await.map_err(|source| {
            err(VmError::Qga {
                vm: node.to_string(),
                source,
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
    fn qga_err(&self, source: QgaError) -> AgentError {
        AgentError::vm(
            self.lab.to_string(),
            VmError::Qga {
                vm: self.vm.to_string(),
                source,
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

/// Why a running VM no longer matches its plan (`None`: it matches).
fn mismatch(vm: &Vm, plan: &VmPlan, image: &Image) -> Option<String> {
    let rec = vm.record();
    if rec.image_hash != image.manifest.hash {
        return Some(format!("image \"{}\" changed", plan.image));
    }
    if rec.spec.memory_mib != plan.memory_mib || rec.spec.cpus != plan.cpus {
        return Some("memory or cpus changed".into());
    }
    if rec.spec.nics != nic_specs(plan) {
        return Some("its NICs changed".into());
    }
    None
}

fn nic_specs(plan: &VmPlan) -> Vec<NicSpec> {
    plan.nics
        .iter()
        .map(|n| NicSpec {
            tap: n.tap.clone(),
            mac: n.mac,
        })
        .collect()
}

fn vm_config(plan: &VmPlan, image: &Image, accel: Accel) -> VmConfig {
    VmConfig {
        name: plan.name.clone(),
        image: image.clone(),
        memory_mib: plan.memory_mib,
        cpus: plan.cpus,
        accel,
        nics: nic_specs(plan),
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
        Err(source) => {
            return Err(AgentError::State {
                what: "reading",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect())
}
