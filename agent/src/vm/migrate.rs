//! Live migration of a running guest to another QEMU, disk included.
//!
//! The sequence (tested on QEMU 7.2; see docs/migration.md):
//! - destination: QEMU started with the same devices and `-incoming defer`,
//!   its fresh overlay exported writable over QEMU's NBD server, then
//!   `migrate-incoming`;
//! - source: `blockdev-mirror sync=top` of its overlay into that export
//!   until `BLOCK_JOB_READY`, then `migrate` with `pause-before-switchover`;
//!   at `pre-switchover` the mirror is *cancelled* (completing it would
//!   pivot the source onto the NBD target) and its NBD client detached
//!   (else the destination cannot drop its export), then `migrate-continue`;
//! - destination, once told the move is done: export and NBD server
//!   dropped, the guest running, `announce-self`.
//!
//! Both streams (NBD and RAM) are mutual TLS with the two agents' own
//! cluster certificates (QEMU's `tls-creds-x509`): the source checks that
//! the destination's certificate names the destination host, and the
//! destination lets in only the source host's certificate (`authz-simple`),
//! so nothing crosses the underlay in the clear and no other member of
//! the cluster can feed or read a moving guest.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use labspan_proto::msg::Role;
use labspan_transport::poll::Poll;
use labspan_transport::tls::agent_host_name;

use super::{Qmp, QmpError, Vm, VmError};

/// QMP exchanges during a move may wait behind a busy QEMU (TCG, a RAM
/// pass in flight): longer than the usual 5 s.
const MOVE_QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the disk copy may take to reach `BLOCK_JOB_READY`.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the RAM copy may take to reach `pre-switchover`, then
/// `completed`.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(900);
/// How often progress is read while waiting for an event.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long a completed migration's times may take to appear, and how often
/// to look ([`completed_migration`]).
const TIMES_WITHIN: Duration = Duration::from_secs(2);
const TIMES_EVERY: Duration = Duration::from_millis(10);
/// How long a cancelled mirror job or migration may take to go, and how
/// often it is looked at (each wait bounded: a roll-back goes on after it).
const CANCEL_WITHIN: Duration = Duration::from_secs(5);
const CANCEL_EVERY: Duration = Duration::from_millis(50);
/// QEMU's own default (300 ms), said out loud: the switch-over target.
pub const DOWNTIME_LIMIT_MS: u64 = 300;
/// QEMU caps migration at 128 MiB/s by default; between two lab hosts the
/// underlay, not a cap, should be the limit.
const MAX_BANDWIDTH: u64 = 10 << 30;

/// QOM id of the TLS credentials object of a move (one move per QEMU).
const TLS_ID: &str = "labspan-move-tls";
/// Node name of the source's NBD client.
const NBD_TARGET: &str = "labspan-move-target";
/// Job id of the disk mirror.
const MIRROR_JOB: &str = "labspan-move-mirror";
/// Export id and NBD export name on the destination.
const EXPORT_ID: &str = "labspan-move-disk";
/// The block backend of the guest's one disk (`-drive if=virtio`).
const DISK_DEVICE: &str = "virtio0";
/// File in the VM folder of a destination QEMU still waiting for its guest.
const INCOMING_FILE: &str = "incoming.json";
/// QOM id of the destination's rule that lets in the source agent only.
const AUTHZ_ID: &str = "labspan-move-authz";
/// Folder (in the VM folder) of this agent's credentials, for QEMU.
const TLS_DIR: &str = "move-tls";

/// Where a destination listens for one move, and who is at the other end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The destination host's underlay address.
    pub addr: IpAddr,
    /// The RAM stream's port; the disk's NBD server listens on `port + 1`.
    pub port: u16,
    /// The agent at the other end of the streams: the destination host for
    /// the source, the source host for the destination.
    pub peer: String,
}

/// This agent's TLS identity, which its QEMUs present on a move's streams:
/// the cluster CA and the agent's own certificate and key (PEM).
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Endpoint {
    fn migration_uri(&self) -> String {
        format!("tcp:{}", SocketAddr::new(self.addr, self.port))
    }
    fn nbd_port(&self) -> String {
        self.port.saturating_add(1).to_string()
    }
}

/// What a finished move measured, from the source's QEMU.
pub use labspan_proto::msg::MoveFigures as Figures;

/// Progress of a move, as the source sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Disk bytes copied of the total so far.
    Disk { done: u64, total: u64 },
    /// The disk is in step; RAM copy starts.
    DiskReady { bytes: u64 },
    /// A RAM pass: `pass`, bytes sent so far, bytes still dirty.
    Ram {
        pass: u64,
        sent: u64,
        remaining: u64,
    },
    /// The guest paused for the switch-over.
    Switchover,
}

/// Errors of a move.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("VM {vm}: {cause}")]
    Qmp { vm: String, cause: QmpError },
    #[error("VM {vm}: {what} {}: {cause}", path.display())]
    Io {
        vm: String,
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("VM {vm}: the {what} failed: {why}")]
    Failed {
        vm: String,
        what: &'static str,
        why: String,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// A QMP session for a move or a checkpoint, naming the VM in its errors.
pub struct Session {
    vm: String,
    pub(super) qmp: Qmp,
}

impl Session {
    pub(super) async fn open(vm: &Vm) -> Result<Session, MoveError> {
        Session::open_with(vm, MOVE_QMP_TIMEOUT).await
    }

    /// A session whose exchanges may each take `timeout`.
    pub(super) async fn open_with(vm: &Vm, timeout: Duration) -> Result<Session, MoveError> {
        let qmp = Qmp::connect(&vm.record.spec.paths.qmp, timeout)
            .await
            .map_err(|cause| MoveError::Qmp {
                vm: vm.name().to_string(),
                cause,
            })?;
        Ok(Session {
            vm: vm.name().to_string(),
            qmp,
        })
    }

    pub(super) async fn run(&mut self, command: &str, args: Value) -> Result<Value, MoveError> {
        let args = (!args.is_null()).then_some(args);
        self.qmp
            .execute(command, args)
            .await
            .map_err(|cause| MoveError::Qmp {
                vm: self.vm.clone(),
                cause,
            })
    }

    /// `query-migrate`'s status (`none` before any migration).
    async fn migration(&mut self) -> Result<Value, MoveError> {
        self.run("query-migrate", Value::Null).await
    }

    /// The node name of the guest's disk (its format layer).
    pub(super) async fn disk_node(&mut self) -> Result<String, MoveError> {
        let block = self.run("query-block", Value::Null).await?;
        block
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["device"] == DISK_DEVICE)
            .and_then(|b| b["inserted"]["node-name"].as_str())
            .map(String::from)
            .ok_or_else(|| MoveError::Failed {
                vm: self.vm.clone(),
                what: "disk lookup",
                why: format!("QEMU has no disk {DISK_DEVICE}"),
            })
    }

    /// The guest disk's size in bytes.
    pub(super) async fn disk_size(&mut self) -> Result<u64, MoveError> {
        let block = self.run("query-block", Value::Null).await?;
        block
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["device"] == DISK_DEVICE)
            .and_then(|b| b["inserted"]["image"]["virtual-size"].as_u64())
            .ok_or_else(|| self.failed("disk lookup", format!("QEMU has no disk {DISK_DEVICE}")))
    }

    /// How many backing layers the guest's disk has (1: overlay on its image).
    pub(super) async fn backing_depth(&mut self) -> Result<usize, MoveError> {
        let block = self.run("query-block", Value::Null).await?;
        let disk = block
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["device"] == DISK_DEVICE)
            .map(|b| b["inserted"]["image"].clone())
            .unwrap_or_default();
        let mut depth = 0;
        let mut image = &disk["backing-image"];
        while image.is_object() {
            depth += 1;
            image = &image["backing-image"];
        }
        Ok(depth)
    }

    pub(super) fn failed(&self, what: &'static str, why: impl Into<String>) -> MoveError {
        MoveError::Failed {
            vm: self.vm.clone(),
            what,
            why: why.into(),
        }
    }
}

/// Writes this agent's credentials where QEMU's `tls-creds-x509` reads
/// them: the same certificate serves (destination) and connects (source).
/// The key is 0600 in a 0700 folder.
fn write_credentials(vm: &Vm, tls: &Credentials) -> Result<PathBuf, MoveError> {
    let dir = vm.dir().join(TLS_DIR);
    let io = |what, path: &Path| {
        let (vm, path) = (vm.name().to_string(), path.to_path_buf());
        move |cause| MoveError::Io {
            vm,
            what,
            path,
            cause,
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("creating", &dir))?;
    let files = [
        ("ca-cert.pem", &tls.ca_pem),
        ("server-cert.pem", &tls.cert_pem),
        ("server-key.pem", &tls.key_pem),
        ("client-cert.pem", &tls.cert_pem),
        ("client-key.pem", &tls.key_pem),
    ];
    for (file, pem) in files {
        let path = dir.join(file);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("writing", &path))?;
        f.write_all(pem.as_bytes()).map_err(io("writing", &path))?;
    }
    Ok(dir)
}

async fn add_tls(s: &mut Session, dir: &Path, endpoint: &str) -> Result<(), MoveError> {
    // A move cut short may have left them behind.
    let _ = s.run("object-del", json!({ "id": TLS_ID })).await;
    let _ = s.run("object-del", json!({ "id": AUTHZ_ID })).await;
    s.run(
        "object-add",
        json!({
            "qom-type": "tls-creds-x509",
            "id": TLS_ID,
            "endpoint": endpoint,
            "dir": dir.to_string_lossy(),
            "verify-peer": true,
        }),
    )
    .await
    .map(|_| ())
}

/// Readies a destination QEMU launched with `-incoming defer`: its disk
/// exported (writable, TLS) for the source's mirror, then the RAM stream
/// awaited on `at`. Marks the VM folder as incoming.
pub async fn prepare_incoming(vm: &Vm, at: &Endpoint, tls: &Credentials) -> Result<(), MoveError> {
    let dir = write_credentials(vm, tls)?;
    let mut s = Session::open(vm).await?;
    add_tls(&mut s, &dir, "server").await?;
    // Any member's certificate chains to the cluster CA: only the source
    // agent's may feed this guest.
    s.run(
        "object-add",
        json!({
            "qom-type": "authz-simple",
            "id": AUTHZ_ID,
            "identity": labspan_transport::tls::member_subject(Role::Agent, &at.peer),
        }),
    )
    .await?;
    s.run(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )
    .await?;
    s.run(
        "migrate-set-parameters",
        json!({ "tls-creds": TLS_ID, "tls-authz": AUTHZ_ID }),
    )
    .await?;
    if vm.record.spec.disk.is_some() {
        let node = s.disk_node().await?;
        s.run(
            "nbd-server-start",
            json!({
                "addr": {"type": "inet", "data": {"host": at.addr.to_string(), "port": at.nbd_port()}},
                "tls-creds": TLS_ID,
                "tls-authz": AUTHZ_ID,
            }),
        )
        .await?;
        s.run(
            "block-export-add",
            json!({"type": "nbd", "id": EXPORT_ID, "node-name": node, "name": EXPORT_ID, "writable": true}),
        )
        .await?;
    }
    s.run("migrate-incoming", json!({ "uri": at.migration_uri() }))
        .await?;
    let path = vm.dir().join(INCOMING_FILE);
    let marker = json!({"addr": at.addr, "port": at.port}).to_string();
    labspan_proto::atomic::write(&path, marker.as_bytes()).map_err(|cause| MoveError::Io {
        vm: vm.name().to_string(),
        what: "writing",
        path,
        cause,
    })
}

/// Whether `vm` is a destination QEMU whose move is not finished.
pub fn is_incoming(vm_dir: &Path) -> bool {
    vm_dir.join(INCOMING_FILE).exists()
}

/// Where an incoming QEMU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arrival {
    /// Still receiving (or waiting for) the guest.
    Waiting,
    /// The guest arrived: QEMU's incoming migration completed.
    Arrived,
    /// The incoming migration failed.
    Failed,
}

/// The incoming migration's state on a destination QEMU.
pub async fn arrival(vm: &Vm) -> Result<Arrival, MoveError> {
    let mut s = Session::open(vm).await?;
    let m = s.migration().await?;
    Ok(match m["status"].as_str().unwrap_or("none") {
        "completed" => Arrival::Arrived,
        "failed" | "cancelled" => Arrival::Failed,
        _ => Arrival::Waiting,
    })
}

/// Ends a destination's part once the move is decided done: drops the
/// export, runs the guest (it runs already unless the source was paused
/// when it switched), announces its MACs, and clears the incoming mark.
pub async fn finish_incoming(vm: &Vm) -> Result<(), MoveError> {
    let mut s = Session::open(vm).await?;
    let status = s.migration().await?;
    if status["status"] != "completed" {
        return Err(s.failed(
            "move",
            format!(
                "the guest has not arrived (incoming migration {})",
                status["status"].as_str().unwrap_or("unknown")
            ),
        ));
    }
    // Gone already when a finish was cut short and runs again.
    let _ = s.run("block-export-del", json!({ "id": EXPORT_ID })).await;
    let _ = s.run("nbd-server-stop", Value::Null).await;
    let _ = s.run("object-del", json!({ "id": TLS_ID })).await;
    let _ = s.run("object-del", json!({ "id": AUTHZ_ID })).await;
    let run = s.run("query-status", Value::Null).await?;
    if run["status"] != "running" {
        s.run("cont", Value::Null).await?;
    }
    s.run(
        "announce-self",
        json!({"initial": 50, "max": 550, "rounds": 5, "step": 100}),
    )
    .await?;
    let _ = fs::remove_dir_all(vm.dir().join(TLS_DIR));
    let path = vm.dir().join(INCOMING_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(MoveError::Io {
            vm: vm.name().to_string(),
            what: "removing",
            path,
            cause: e,
        }),
        _ => Ok(()),
    }
}

/// Moves the running guest `vm` into the destination QEMU waiting at `to`
/// (see [`prepare_incoming`]). On success the guest runs there and this
/// QEMU holds it paused (`postmigrate`): the caller stops it once the move
/// is recorded. On failure this QEMU runs the guest again, unless the
/// migration completed (then the guest runs at the destination: the error
/// says so and the caller must not resume it).
pub async fn migrate_out(
    vm: &Vm,
    to: &Endpoint,
    tls: &Credentials,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Figures, MoveError> {
    let start = Instant::now();
    let dir = write_credentials(vm, tls)?;
    let mut s = Session::open(vm).await?;
    let result = migrate_steps(&mut s, vm, &dir, to, progress, start).await;
    if result.is_err() {
        roll_back(&mut s).await;
    }
    let _ = s.run("object-del", json!({ "id": TLS_ID })).await;
    let _ = fs::remove_dir_all(&dir);
    result
}

async fn migrate_steps(
    s: &mut Session,
    vm: &Vm,
    dir: &Path,
    to: &Endpoint,
    progress: &(dyn Fn(Progress) + Sync),
    start: Instant,
) -> Result<Figures, MoveError> {
    let mut figures = Figures::default();
    // A move cut short by its agent's end may have left its NBD client.
    cancel_outgoing(s).await;
    add_tls(s, dir, "client").await?;
    let has_disk = vm.record.spec.disk.is_some();
    if has_disk {
        let node = s.disk_node().await?;
        s.run(
            "blockdev-add",
            json!({
                "driver": "nbd",
                "node-name": NBD_TARGET,
                "server": {"type": "inet", "host": to.addr.to_string(), "port": to.nbd_port()},
                "export": EXPORT_ID,
                "tls-creds": TLS_ID,
                "tls-hostname": agent_host_name(&to.peer),
            }),
        )
        .await?;
        // The destination's fresh overlay sits on the base image: a disk
        // with checkpoint layers between them (docs/checkpoints.md) is
        // copied whole, or their contents would stay behind.
        let sync = if s.backing_depth().await? > 1 {
            "full"
        } else {
            "top"
        };
        s.run(
            "blockdev-mirror",
            json!({"job-id": MIRROR_JOB, "device": node, "target": NBD_TARGET, "sync": sync}),
        )
        .await?;
        figures.disk_bytes = wait_mirror_ready(s, progress).await?;
        figures.disk_ms = millis(start.elapsed());
        progress(Progress::DiskReady {
            bytes: figures.disk_bytes,
        });
    }
    s.run(
        "migrate-set-capabilities",
        json!({"capabilities": [
            {"capability": "events", "state": true},
            {"capability": "pause-before-switchover", "state": true},
        ]}),
    )
    .await?;
    s.run(
        "migrate-set-parameters",
        json!({
            "max-bandwidth": MAX_BANDWIDTH,
            "downtime-limit": DOWNTIME_LIMIT_MS,
            "tls-creds": TLS_ID,
            "tls-hostname": agent_host_name(&to.peer),
        }),
    )
    .await?;
    s.run("migrate", json!({ "uri": to.migration_uri() }))
        .await?;
    wait_migration(s, "pre-switchover", progress).await?;
    progress(Progress::Switchover);
    if has_disk {
        s.run("block-job-cancel", json!({ "device": MIRROR_JOB }))
            .await?;
        s.qmp
            .wait_event("mirror end", MOVE_QMP_TIMEOUT, |e| {
                (e.name == "BLOCK_JOB_COMPLETED" || e.name == "BLOCK_JOB_CANCELLED")
                    && e.data["device"] == MIRROR_JOB
            })
            .await
            .map_err(|cause| MoveError::Qmp {
                vm: s.vm.clone(),
                cause,
            })?;
        s.run("blockdev-del", json!({ "node-name": NBD_TARGET }))
            .await?;
    }
    s.run("migrate-continue", json!({"state": "pre-switchover"}))
        .await?;
    wait_migration(s, "completed", progress).await?;
    let m = completed_migration(s).await?;
    figures.downtime_ms = m["downtime"].as_u64().unwrap_or(0);
    figures.migrate_ms = m["total-time"].as_u64().unwrap_or(0);
    figures.ram_bytes = m["ram"]["transferred"].as_u64().unwrap_or(0);
    figures.ram_passes = m["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
    figures.total_ms = millis(start.elapsed());
    Ok(figures)
}

/// QEMU's `query-migrate` once its times are in. QEMU says `completed` (the
/// event and the status) before its migration thread has worked out the
/// total time and the downtime, which then read 0 for a moment.
async fn completed_migration(s: &mut Session) -> Result<Value, MoveError> {
    let mut wait = Poll::new(TIMES_EVERY, TIMES_WITHIN).start();
    loop {
        let m = s.migration().await?;
        if m["total-time"].as_u64().is_some_and(|t| t > 0) || !wait.pause().await {
            return Ok(m);
        }
    }
}

/// Waits for the mirror to be in step; returns the bytes it copied.
async fn wait_mirror_ready(
    s: &mut Session,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<u64, MoveError> {
    let deadline = Instant::now() + MIRROR_TIMEOUT;
    loop {
        let got = s
            .qmp
            .wait_event("BLOCK_JOB_READY", PROGRESS_EVERY, |e| {
                e.name.starts_with("BLOCK_JOB_") && e.data["device"] == MIRROR_JOB
            })
            .await;
        match got {
            Ok(e) if e.name == "BLOCK_JOB_READY" => {
                return Ok(e.data["len"].as_u64().unwrap_or(0));
            }
            Ok(e) if e.name == "BLOCK_JOB_COMPLETED" || e.name == "BLOCK_JOB_CANCELLED" => {
                let why = e.data["error"]
                    .as_str()
                    .unwrap_or("it ended before it was ready");
                return Err(s.failed("disk copy", why.to_string()));
            }
            Ok(_) => {}
            Err(QmpError::NoEvent { .. }) => {
                if Instant::now() >= deadline {
                    return Err(
                        s.failed("disk copy", format!("not in step after {MIRROR_TIMEOUT:?}"))
                    );
                }
                let jobs = s.run("query-block-jobs", Value::Null).await?;
                if let Some(j) = jobs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|j| j["device"] == MIRROR_JOB)
                {
                    progress(Progress::Disk {
                        done: j["offset"].as_u64().unwrap_or(0),
                        total: j["len"].as_u64().unwrap_or(0),
                    });
                }
            }
            Err(cause) => {
                return Err(MoveError::Qmp {
                    vm: s.vm.clone(),
                    cause,
                })
            }
        }
    }
}

/// Waits until the migration reaches `status`; a failed or cancelled
/// migration is an error with QEMU's reason.
pub(super) async fn wait_migration(
    s: &mut Session,
    status: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MoveError> {
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    let mut last_pass = 0;
    loop {
        let got = s
            .qmp
            .wait_event("MIGRATION", PROGRESS_EVERY, |e| e.name == "MIGRATION")
            .await;
        // Only events move this on: on a QEMU that itself arrived by a
        // move, `query-migrate` keeps reporting that incoming migration.
        let now = match got {
            Ok(e) => e.data["status"].as_str().unwrap_or("").to_string(),
            Err(QmpError::NoEvent { .. }) => {
                if Instant::now() >= deadline {
                    return Err(
                        s.failed("RAM copy", format!("no {status} after {MIGRATE_TIMEOUT:?}"))
                    );
                }
                let m = s.migration().await?;
                let pass = m["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
                if pass != last_pass {
                    last_pass = pass;
                    progress(Progress::Ram {
                        pass,
                        sent: m["ram"]["transferred"].as_u64().unwrap_or(0),
                        remaining: m["ram"]["remaining"].as_u64().unwrap_or(0),
                    });
                }
                continue;
            }
            Err(cause) => {
                return Err(MoveError::Qmp {
                    vm: s.vm.clone(),
                    cause,
                })
            }
        };
        if now == status {
            return Ok(());
        }
        if now == "failed" || now == "cancelled" {
            let m = s.migration().await?;
            let why = m["error-desc"].as_str().unwrap_or(&now).to_string();
            return Err(s.failed("RAM copy", why));
        }
    }
}

/// Puts the source back as it was after a failed move: migration and
/// mirror cancelled, the NBD client gone, the guest running. A migration
/// that completed is left alone: the guest runs at the destination.
async fn roll_back(s: &mut Session) {
    if left(s).await {
        return;
    }
    cancel_outgoing(s).await;
    // The migration may have completed before the cancel reached it; it is
    // settled now (cancelled or completed), so this second look is final.
    if left(s).await {
        return;
    }
    if let Ok(r) = s.run("query-status", Value::Null).await {
        if r["status"] != "running" {
            let _ = s.run("cont", Value::Null).await;
        }
    }
}

/// Cancels whatever an outgoing move left in this QEMU: the migration,
/// the mirror job and its NBD client (each is skipped if absent).
async fn cancel_outgoing(s: &mut Session) {
    let _ = s.run("migrate_cancel", Value::Null).await;
    let _ = s
        .run(
            "block-job-cancel",
            json!({"device": MIRROR_JOB, "force": true}),
        )
        .await;
    // The cancel is asynchronous: wait for the job to go before its target.
    let mut wait = Poll::new(CANCEL_EVERY, CANCEL_WITHIN).start();
    loop {
        let mirroring = match s.run("query-block-jobs", Value::Null).await {
            Ok(j) => j
                .as_array()
                .is_some_and(|a| a.iter().any(|j| j["device"] == MIRROR_JOB)),
            Err(_) => false,
        };
        if !mirroring || !wait.pause().await {
            break;
        }
    }
    let _ = s
        .run("blockdev-del", json!({ "node-name": NBD_TARGET }))
        .await;
    let mut wait = Poll::new(CANCEL_EVERY, CANCEL_WITHIN).start();
    loop {
        let cancelling = s
            .migration()
            .await
            .is_ok_and(|m| m["status"] == "cancelling");
        if !cancelling || !wait.pause().await {
            break;
        }
    }
}

/// Whether an outgoing move of the VM in `vm_dir` was cut short: its TLS
/// folder outlives only a move whose agent ended before it did (an
/// incoming move keeps one too, until it is finished).
pub fn interrupted_out(vm_dir: &Path) -> bool {
    vm_dir.join(TLS_DIR).is_dir() && !is_incoming(vm_dir)
}

/// Ends an outgoing move that its agent did not finish (the agent was
/// killed while it ran): the migration, the mirror and the NBD client are
/// cancelled and the guest runs on here, as after any failed move; a later
/// move then starts clean. A guest that left (its migration completed) is
/// left alone.
pub async fn abandon_out(vm: &Vm) -> Result<(), MoveError> {
    let mut s = Session::open(vm).await?;
    roll_back(&mut s).await;
    let _ = s.run("object-del", json!({ "id": TLS_ID })).await;
    let _ = fs::remove_dir_all(vm.dir().join(TLS_DIR));
    Ok(())
}

/// Whether the guest left this QEMU ([`super::migrated_out`]).
async fn left(s: &mut Session) -> bool {
    super::migrated_out(&mut s.qmp).await
}

/// Whether the guest of this (source) QEMU left it for another host
/// ([`Vm::departed`]: a checkpoint's save, also `postmigrate`, is not a
/// departure).
pub async fn departed(vm: &Vm) -> Result<bool, MoveError> {
    Ok(vm.departed().await)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
