//! QEMU guests: launch into a state folder, adopt a running one, talk to its
//! QMP and guest agent, stop it and clean up.
//!
//! A VM's state folder holds everything about it, so that an agent restarted
//! with no memory finds it again: `qemu.pid`, `qmp.sock`, `console.sock`,
//! `console.log`, `qga.sock`, `overlay.qcow2` (images with a disk) and
//! `vm.json` (what was launched).

pub mod accel;
pub mod checkpoint;
mod jsonline;
pub mod migrate;
mod process;
pub mod qemu;
pub mod qga;
pub mod qmp;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use labspan_transport::poll::Poll;

pub use accel::AccelChoice;
use labspan_image::Image;
use labspan_tool::{self as tool, ToolError};
pub use process::{is_our_qemu, QemuProcess};
pub use qemu::{Accel, LaunchSpec, NicSpec, VmPaths};
pub use qga::{ExecOutput, GuestAgent, QgaError};
pub use qmp::{Qmp, QmpError};

/// The QEMU binary (from the `qemu-system-x86` package).
pub const QEMU: &str = "qemu-system-x86_64";
/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `quit` may take before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Kernel arguments of every direct kernel boot. `no_timer_check`: on an
/// overloaded host the kernel's IO-APIC timer check fails and panics the
/// boot ("IO-APIC + timer doesn't work!"), as cloud images know. `panic=1`:
/// a kernel that panics without pvpanic reboots, which QEMU turns into a
/// stop the agent sees.
pub const BOOT_ROBUSTNESS: &str = "no_timer_check panic=1";
/// How often a booting guest's run state is read, so that one that panics
/// or stops while booting is reported at once rather than at the timeout.
const BOOT_STATE_EVERY: Duration = Duration::from_secs(2);
/// How often a booting guest's agent is tried, and how long one try may
/// take (`guest-sync` on a busy TCG guest).
const AGENT_EVERY: Duration = Duration::from_millis(100);
const AGENT_ATTEMPT: Duration = Duration::from_secs(1);

/// Errors about one VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM {vm}: {what} {path}: {cause}")]
    Io {
        vm: String,
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("VM {vm}: QEMU failed to start: {detail}")]
    Start { vm: String, detail: String },
    #[error("VM {vm} is already running (QEMU pid {pid}) in {dir}")]
    AlreadyRunning { vm: String, pid: u32, dir: PathBuf },
    #[error("VM {vm}: the QEMU process (pid {pid}) is gone (its last console lines: `labspan inspect LAB --json`)")]
    Died { vm: String, pid: u32 },
    #[error("VM {vm}: its guest agent did not answer within {timeout:?} (its last console lines: `labspan inspect LAB --json`)")]
    AgentTimeout { vm: String, timeout: Duration },
    #[error("VM {vm}: the guest {state} while booting (its last console lines: `labspan inspect LAB --json`)")]
    GuestStopped { vm: String, state: RunState },
    #[error("VM {vm}: its guest left this host by a live move (QEMU holds it `postmigrate`); the leader's record of the move says which copy stays")]
    Departed { vm: String },
    #[error("VM {vm}: {cause}")]
    Qmp { vm: String, cause: QmpError },
    #[error("VM {vm}: {cause}")]
    Qga { vm: String, cause: QgaError },
    #[error("VM {vm}: state file {path} is unreadable: {detail}; stop the VM's QEMU and remove {path}'s folder")]
    BadState {
        vm: String,
        path: PathBuf,
        detail: String,
    },
    #[error("VM {vm}: image \"{image}\" has no guest agent, which this needs")]
    NoGuestAgent { vm: String, image: String },
    #[error("VM {vm}: QEMU pid {pid} did not exit, even after SIGKILL")]
    Unkillable { vm: String, pid: u32 },
}

/// How `Vm::stop` ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The guest powered off after the ACPI power button.
    PowerDown,
    /// QEMU quit on QMP `quit` (the guest ignored the power button).
    Quit,
    /// QEMU had to be SIGKILLed.
    Killed,
    /// QEMU was not running any more.
    AlreadyGone,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub image: Image,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Already resolved (see `accel::resolve` for `auto`).
    pub accel: Accel,
    pub nics: Vec<NicSpec>,
}

/// `vm.json`: what was launched, for adoption and for humans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub image: String,
    pub image_hash: String,
    pub spec: LaunchSpec,
}

/// A running VM.
#[derive(Debug, Clone)]
pub struct Vm {
    dir: PathBuf,
    pid: u32,
    record: VmRecord,
}

impl Vm {
    /// The VM's state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// What was launched.
    pub fn record(&self) -> &VmRecord {
        &self.record
    }
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }
    /// The serial console's unix socket.
    pub fn console_socket(&self) -> &Path {
        &self.record.spec.paths.console
    }
    /// Whether QEMU is still running.
    pub fn is_running(&self) -> bool {
        is_our_qemu(self.pid, &self.record.spec.paths.qmp)
    }

    /// A fresh QMP session.
    pub async fn qmp(&self) -> Result<Qmp, VmError> {
        Qmp::connect(&self.record.spec.paths.qmp, QMP_TIMEOUT)
            .await
            .map_err(|cause| self.qmp_err(cause))
    }

    /// A fresh guest-agent session (one at a time per VM: drop it when done).
    pub async fn guest_agent(&self, timeout: Duration) -> Result<GuestAgent, VmError> {
        GuestAgent::connect(&self.record.spec.paths.qga, timeout)
            .await
            .map_err(|cause| VmError::Qga {
                vm: self.name().to_string(),
                cause,
            })
    }

    /// Waits until the guest agent answers; returns how long that took.
    pub async fn wait_guest_agent(&self, timeout: Duration) -> Result<Duration, VmError> {
        let start = Instant::now();
        let mut last_state = start;
        let mut wait = Poll::new(AGENT_EVERY, timeout).start();
        loop {
            if !self.is_running() {
                return Err(VmError::Died {
                    vm: self.name().to_string(),
                    pid: self.pid,
                });
            }
            if last_state.elapsed() >= BOOT_STATE_EVERY {
                last_state = Instant::now();
                if let Ok(state) = self.run_state().await {
                    if state.is_failure() {
                        return Err(VmError::GuestStopped {
                            vm: self.name().to_string(),
                            state,
                        });
                    }
                }
                // A guest that moved out never answers here: a plan read
                // before its move was recorded must not wait on it (it
                // would hold the agent's apply lock, and the plan that
                // stops this copy would wait behind it).
                if self.departed().await {
                    return Err(VmError::Departed {
                        vm: self.name().to_string(),
                    });
                }
            }
            let attempt = wait.left().min(AGENT_ATTEMPT);
            if !attempt.is_zero()
                && GuestAgent::connect(&self.record.spec.paths.qga, attempt)
                    .await
                    .is_ok()
            {
                return Ok(start.elapsed());
            }
            if !wait.pause().await {
                return Err(VmError::AgentTimeout {
                    vm: self.name().to_string(),
                    timeout,
                });
            }
        }
    }

    /// Stops the VM: ACPI power-down, then `quit` after `timeout`, then
    /// SIGKILL; then removes its state folder (sockets, overlay, pidfile).
    /// Says which step ended it.
    pub async fn stop(self, timeout: Duration) -> Result<Stopped, VmError> {
        let how = if !self.is_running() {
            Stopped::AlreadyGone
        } else if self.not_here().await {
            if let Ok(mut q) = self.qmp().await {
                let _ = q.execute("quit", None).await;
            }
            if self.wait_exit(QUIT_GRACE).await {
                Stopped::Quit
            } else {
                self.kill().await?;
                Stopped::Killed
            }
        } else {
            if let Ok(mut q) = self.qmp().await {
                // A guest that powers off now is meant to: QEMU should exit
                // rather than hold it for the agent.
                let poweroff = serde_json::json!({"shutdown": "poweroff"});
                let _ = q.execute("set-action", Some(poweroff)).await;
                let _ = q.execute("system_powerdown", None).await;
            }
            if self.wait_exit(timeout).await {
                Stopped::PowerDown
            } else {
                if let Ok(mut q) = self.qmp().await {
                    let _ = q.execute("quit", None).await;
                }
                if self.wait_exit(QUIT_GRACE).await {
                    Stopped::Quit
                } else {
                    self.kill().await?;
                    Stopped::Killed
                }
            }
        };
        tracing::info!(vm = self.name(), pid = self.pid, ?how, "VM stopped");
        remove_state(&self.dir, self.name())?;
        Ok(how)
    }

    /// Whether the guest left this QEMU by a completed live move
    /// ([`migrated_out`]), unless a checkpoint's save did that (it never left).
    pub async fn departed(&self) -> bool {
        let Ok(mut q) = self.qmp().await else {
            return false;
        };
        migrated_out(&mut q).await && checkpoint::marker(&self.dir).as_deref() != Some("save")
    }

    /// Whether the guest is not in this QEMU (it left by a move, or has not
    /// arrived): no power button reaches it, so `stop` quits at once.
    async fn not_here(&self) -> bool {
        let Ok(mut q) = self.qmp().await else {
            return false;
        };
        matches!(q.execute("query-status", None).await,
            Ok(s) if s["status"] == "postmigrate" || s["status"] == "inmigrate")
    }

    /// The guest's run state, from QMP `query-status`.
    pub async fn run_state(&self) -> Result<RunState, VmError> {
        let mut q = self.qmp().await?;
        let status = q
            .execute("query-status", None)
            .await
            .map_err(|cause| self.qmp_err(cause))?;
        Ok(RunState::from_qmp(
            status.get("status").and_then(|s| s.as_str()).unwrap_or(""),
        ))
    }

    /// Ends QEMU (`quit`, then SIGKILL) and keeps the state folder, disk
    /// included, for the guest to be launched again from it.
    pub async fn halt(&self) -> Result<(), VmError> {
        if self.is_running() {
            if let Ok(mut q) = self.qmp().await {
                let _ = q.execute("quit", None).await;
            }
            if !self.wait_exit(QUIT_GRACE).await {
                self.kill().await?;
            }
        }
        tracing::info!(vm = self.name(), pid = self.pid, "QEMU ended, state kept");
        Ok(())
    }

    /// The last `n` lines its serial console printed.
    pub fn console_lines(&self, n: usize) -> Vec<String> {
        console_lines(&self.record.spec.paths.console_log, n)
    }

    /// SIGKILLs QEMU (only if the pid is still our QEMU) and waits for it.
    pub async fn kill(&self) -> Result<(), VmError> {
        if let Some(qemu) = QemuProcess::open(self.pid, &self.record.spec.paths.qmp) {
            if let Err(e) = qemu.kill() {
                // It may have ended since it was opened: the wait tells.
                tracing::debug!(vm = self.name(), pid = self.pid, error = %e, "SIGKILL not sent");
            }
        }
        if self.wait_exit(Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(VmError::Unkillable {
                vm: self.name().to_string(),
                pid: self.pid,
            })
        }
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        Poll::new(Duration::from_millis(50), timeout)
            .until(|| async { (!self.is_running()).then_some(()) })
            .await
            .is_some()
    }

    fn qmp_err(&self, cause: QmpError) -> VmError {
        VmError::Qmp {
            vm: self.name().to_string(),
            cause,
        }
    }
}
/// Whether the guest of the QEMU behind `q` left it by a migration that
/// completed. QEMU reports the migration `completed` while the guest is
/// still `finish-migrate`, for a moment before `postmigrate`: a roll-back
/// that resumed the guest in that moment would run it on both hosts.
/// `query-migrate` speaks of the last outgoing migration once one has
/// started (before that, on a QEMU that arrived by a move, of the incoming
/// one, and the run state then is neither of these two).
pub async fn migrated_out(q: &mut Qmp) -> bool {
    let stopped_by_migration = matches!(q.execute("query-status", None).await,
        Ok(s) if s["status"] == "postmigrate" || s["status"] == "finish-migrate");
    stopped_by_migration
        && matches!(q.execute("query-migrate", None).await, Ok(m) if m["status"] == "completed")
}

/// The standard paths inside a VM's state folder.
pub fn vm_paths(dir: &Path) -> VmPaths {
    VmPaths {
        pidfile: dir.join("qemu.pid"),
        qmp: dir.join("qmp.sock"),
        console: dir.join(crate::paths::CONSOLE_SOCKET),
        console_log: dir.join("console.log"),
        qga: dir.join("qga.sock"),
    }
}

/// Starts `cfg` with its state in `dir` (created if needed). Fails if a VM
/// already runs there. On failure, what this call created is removed.
pub async fn launch(dir: &Path, cfg: &VmConfig) -> Result<Vm, VmError> {
    launch_as(dir, cfg, Start::Boot).await
}

/// How a QEMU starts its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Boots it.
    Boot,
    /// Receives it from a move (`-incoming defer`; runs once it arrived).
    Incoming,
    /// Receives it from a checkpoint (`-S -incoming defer`: stays paused).
    Restore,
}

/// Starts `cfg` from checkpoint `checkpoint`'s state: its disk on a fresh
/// overlay over `layer` (if it has a disk), its RAM and devices from
/// `ram`, paused until [`checkpoint::start_loaded`]. On failure, QEMU is
/// ended; the folder is kept.
pub async fn launch_restored(
    dir: &Path,
    cfg: &VmConfig,
    layer: Option<&Path>,
    ram: &Path,
    checkpoint: &str,
) -> Result<Vm, migrate::MoveError> {
    if let Some(layer) = layer {
        checkpoint::prepare_disk(&cfg.name, dir, layer).await?;
    }
    let vm = launch_as(dir, cfg, Start::Restore).await?;
    if let Err(e) = checkpoint::load(&vm, ram, checkpoint).await {
        let _ = vm.halt().await;
        return Err(e);
    }
    Ok(vm)
}

/// Starts `cfg` as the destination of a move: QEMU with the same devices,
/// waiting for the guest on `at` (see [`migrate::prepare_incoming`]). On
/// failure, what this call created is removed.
pub async fn launch_incoming(
    dir: &Path,
    cfg: &VmConfig,
    at: &migrate::Endpoint,
    tls: &migrate::Credentials,
) -> Result<Vm, migrate::MoveError> {
    // The mirror copies only what the source's overlay holds: anything left
    // in an overlay here (an earlier move cut short) would shadow the base.
    if adopt(dir)?.is_none() {
        checkpoint::clear_top(dir);
        let overlay = dir.join("overlay.qcow2");
        if let Err(source) = fs::remove_file(&overlay) {
            if source.kind() != io::ErrorKind::NotFound {
                return Err(VmError::Io {
                    vm: cfg.name.clone(),
                    what: "removing",
                    path: overlay,
                    cause: source,
                }
                .into());
            }
        }
    }
    let vm = launch_as(dir, cfg, Start::Incoming).await?;
    if let Err(e) = migrate::prepare_incoming(&vm, at, tls).await {
        let _ = vm.kill().await;
        let _ = remove_state(dir, &cfg.name);
        return Err(e);
    }
    Ok(vm)
}

async fn launch_as(dir: &Path, cfg: &VmConfig, start: Start) -> Result<Vm, VmError> {
    if let Some(vm) = adopt(dir)? {
        return Err(VmError::AlreadyRunning {
            vm: cfg.name.clone(),
            pid: vm.pid,
            dir: dir.to_path_buf(),
        });
    }
    let io = |what, path: &Path| {
        let (vm, path) = (cfg.name.clone(), path.to_path_buf());
        move |cause| VmError::Io {
            vm,
            what,
            path,
            cause,
        }
    };
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let paths = vm_paths(dir);
    for stale in [&paths.pidfile, &paths.qmp, &paths.console, &paths.qga] {
        let _ = fs::remove_file(stale);
    }
    let disk = match cfg.image.disk_path() {
        Some(base) => {
            let overlay = checkpoint::active_overlay(dir);
            Some(ensure_overlay(&cfg.name, &base, &overlay).await?)
        }
        None => None,
    };
    let mut spec = launch_spec(cfg, paths, disk);
    spec.incoming = start != Start::Boot;
    spec.start_paused = start == Start::Restore;
    let record = VmRecord {
        name: cfg.name.clone(),
        image: cfg.image.manifest.name.clone(),
        image_hash: cfg.image.manifest.hash.clone(),
        spec,
    };
    let json_path = dir.join("vm.json");
    let json = serde_json::to_vec_pretty(&record).map_err(|e| VmError::BadState {
        vm: cfg.name.clone(),
        path: json_path.clone(),
        detail: e.to_string(),
    })?;
    // Atomic: a torn vm.json would make the next adoption refuse the VM.
    labspan_proto::atomic::write(&json_path, &json).map_err(io("writing", &json_path))?;
    if let Err(e) = spawn_qemu(&record).await {
        let _ = remove_state(dir, &cfg.name);
        return Err(e);
    }
    let pid = read_pid(&cfg.name, &record.spec.paths.pidfile)?;
    Ok(Vm {
        dir: dir.to_path_buf(),
        pid,
        record,
    })
}

fn launch_spec(cfg: &VmConfig, paths: VmPaths, disk: Option<PathBuf>) -> LaunchSpec {
    let m = &cfg.image.manifest;
    let kernel = cfg.image.kernel_path();
    let cmdline = if kernel.is_some() {
        format!(
            "{} {BOOT_ROBUSTNESS} labspan.hostname={}",
            m.cmdline, cfg.name
        )
    } else {
        String::new()
    };
    LaunchSpec {
        name: cfg.name.clone(),
        memory_mib: cfg.memory_mib,
        cpus: cfg.cpus,
        accel: cfg.accel,
        kernel,
        initrd: cfg.image.initrd_path(),
        cmdline,
        disk,
        nics: cfg.nics.clone(),
        paths,
        incoming: false,
        start_paused: false,
    }
}

/// Runs QEMU; with `-daemonize` it returns once the guest is set up (or
/// failed to be), so its exit status and stderr are the launch's verdict.
async fn spawn_qemu(record: &VmRecord) -> Result<(), VmError> {
    let run = tool::run_async(
        tokio::process::Command::new(QEMU)
            .args(qemu::command_line(&record.spec))
            .stdin(std::process::Stdio::null()),
    )
    .await;
    match run {
        Ok(_) => Ok(()),
        Err(ToolError::Spawn { cause, .. }) => Err(VmError::Start {
            vm: record.name.clone(),
            detail: format!("cannot run {QEMU}: {cause} (install the qemu-system-x86 package)"),
        }),
        Err(ToolError::Failed { stderr, .. }) => Err(VmError::Start {
            vm: record.name.clone(),
            detail: stderr,
        }),
    }
}

/// Creates the VM's qcow2 overlay over the image's base disk, unless one is
/// already there (a restarted VM keeps its disk).
async fn ensure_overlay(vm: &str, base: &Path, overlay: &Path) -> Result<PathBuf, VmError> {
    if overlay.exists() {
        return Ok(overlay.to_path_buf());
    }
    checkpoint::create_overlay_of(base, overlay, None)
        .await
        .map_err(|detail| VmError::Start {
            vm: vm.to_string(),
            detail,
        })?;
    Ok(overlay.to_path_buf())
}

/// Finds the VM running from `dir` without touching it: `None` when there
/// is no pidfile or its process is no longer our QEMU (its `vm.json` is then
/// still there for the caller to restart it or clean up).
pub fn adopt(dir: &Path) -> Result<Option<Vm>, VmError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let paths = vm_paths(dir);
    let pid = match fs::read_to_string(&paths.pidfile) {
        Ok(s) => match s.trim().parse::<u32>() {
            Ok(p) => p,
            Err(_) => return Ok(None),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(VmError::Io {
                vm: name,
                what: "reading",
                path: paths.pidfile,
                cause,
            })
        }
    };
    if !is_our_qemu(pid, &paths.qmp) {
        return Ok(None);
    }
    let record = read_record(dir, &name)?;
    Ok(Some(Vm {
        dir: dir.to_path_buf(),
        pid,
        record,
    }))
}

/// Reads a VM folder's `vm.json`.
pub fn read_record(dir: &Path, name: &str) -> Result<VmRecord, VmError> {
    let path = dir.join("vm.json");
    let bad = |detail: String| VmError::BadState {
        vm: name.to_string(),
        path: path.clone(),
        detail,
    };
    let bytes = fs::read(&path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// Removes a stopped VM's state folder; refuses while its QEMU runs.
pub fn remove_state(dir: &Path, name: &str) -> Result<(), VmError> {
    if let Some(vm) = adopt(dir)? {
        return Err(VmError::AlreadyRunning {
            vm: name.to_string(),
            pid: vm.pid,
            dir: dir.to_path_buf(),
        });
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(cause) => Err(VmError::Io {
            vm: name.to_string(),
            what: "removing",
            path: dir.to_path_buf(),
            cause,
        }),
    }
}

fn read_pid(vm: &str, pidfile: &Path) -> Result<u32, VmError> {
    let s = fs::read_to_string(pidfile).map_err(|cause| VmError::Io {
        vm: vm.to_string(),
        what: "reading",
        path: pidfile.to_path_buf(),
        cause,
    })?;
    s.trim().parse().map_err(|_| VmError::BadState {
        vm: vm.to_string(),
        path: pidfile.to_path_buf(),
        detail: format!("not a pid: {s:?}"),
    })
}

/// The last `n` lines of a console log, read from its end (a guest can
/// print without bound).
pub fn console_lines(log: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL_BYTES: u64 = 16 * 1024;
    let Ok(mut file) = fs::File::open(log) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .is_err()
        || file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A guest's run state as QMP `query-status` names it, reduced to what the
/// agent acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running (or about to: `prelaunch`, `inmigrate`, ...).
    Running,
    /// Paused by someone on purpose (`stop`, a migration, a fenced host).
    Paused,
    /// Its kernel panicked (pvpanic).
    Panicked,
    /// It rebooted or powered off from inside.
    ShutDown,
    /// QEMU hit an internal error running it.
    InternalError,
}

impl RunState {
    /// From a `query-status` `status` string.
    pub fn from_qmp(status: &str) -> RunState {
        match status {
            "guest-panicked" => RunState::Panicked,
            "shutdown" => RunState::ShutDown,
            "internal-error" | "io-error" => RunState::InternalError,
            "paused" | "suspended" | "postmigrate" | "finish-migrate" | "save-vm"
            | "restore-vm" | "colo" | "watchdog" => RunState::Paused,
            _ => RunState::Running,
        }
    }

    /// Whether the guest stopped on its own and will not go on by itself.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            RunState::Panicked | RunState::ShutDown | RunState::InternalError
        )
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Running => "is running",
            RunState::Paused => "is paused",
            RunState::Panicked => "panicked (its kernel)",
            RunState::ShutDown => "rebooted or powered off (a kernel panic reboots it)",
            RunState::InternalError => "stopped on a QEMU internal error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopt_without_pidfile_or_with_dead_pid_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(adopt(dir.path()).expect("adopt").is_none());
        // Our own pid is alive but is not QEMU serving that socket.
        fs::write(dir.path().join("qemu.pid"), std::process::id().to_string()).expect("pidfile");
        assert!(adopt(dir.path()).expect("adopt").is_none());
    }
}
