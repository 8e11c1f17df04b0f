//! One VM's share of a lab checkpoint, and its way back.
//!
//! Save (the VM paused by the caller at the lab's common deadline):
//! - disk: the running overlay is frozen where it is and hard-linked into
//!   the node's layer store; a new overlay backed by that link takes the
//!   writes (`blockdev-add` + `blockdev-snapshot`, instant). Files never
//!   change names under a running QEMU: it reopens its images by name;
//! - RAM and devices: `migrate` to `exec:cat > FILE`, bandwidth cap lifted,
//!   which leaves the guest `postmigrate`; then `cont`;
//! - once it runs again: the checkpoint's disk file, the frozen layer with
//!   the node's earlier layers folded in, over the image by a relative
//!   name (it opens on any host that has the image).
//!
//! Load: QEMU started with the same devices, `-S -incoming defer`, on a
//! fresh overlay over the checkpoint's layer; `migrate-incoming exec:cat
//! FILE`; the guest waits paused for the lab's common `cont`.
//!
//! Only the caller's deadlines make the cut consistent across VMs; this
//! module does one VM.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::migrate::{wait_migration, MoveError, Session};
use super::{Vm, VmError};
use labspan_tool::{self as tool, ToolError};
use labspan_transport::poll::Poll;

/// The RAM and device state in a checkpoint's node folder.
pub const RAM_FILE: &str = "ram.state";
/// The disk as of the checkpoint: one qcow2 layer over the image, named
/// [`BASE_LINK`] ([`keep_disk`]).
pub const DISK_FILE: &str = "disk.qcow2";
/// In a VM folder: the file name of its running overlay, when it is not
/// `overlay.qcow2` (after a checkpoint or a reset).
const TOP_FILE: &str = "overlay.top";
/// In a VM folder while a checkpoint operation holds its guest paused:
/// `save`, or `load` and on a second line the checkpoint's name (the fence
/// resumes a `save` left `postmigrate`, and never a `load`, which waits
/// for the lab's common resume).
pub const MARKER_FILE: &str = "checkpoint-op";
/// Beside a checkpoint's disk layer and in a node's layer store: a link
/// to this host's image disk. An exported layer ([`export_disk`]) names
/// its base by this relative name, which opens on any host that links it
/// (a layer's relative backing name is looked up in its own folder).
pub const BASE_LINK: &str = "base.qcow2";
/// QEMU caps migration at 128 MiB/s by default; a file takes what the disk gives.
const MAX_BANDWIDTH: u64 = 10 << 30;
/// QMP exchanges wait behind a busy QEMU (TCG) longer than the usual 5 s.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the run state is looked at while QEMU ends a save.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// What one VM's save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub ram: PathBuf,
    /// The frozen disk layer in the layer store, then (once
    /// [`keep_disk`] has run) the checkpoint's own disk file.
    pub disk: Option<PathBuf>,
}

/// Writes the checkpoint's disk file (in `to`) from the frozen layer a
/// save left in the layer store, once the guest runs again: the layer
/// with every earlier layer of the node folded in, over the image named
/// [`BASE_LINK`] ([`export_disk`]). The file is whole on its own: a copy
/// on another host (a durable copy, a reset or restart there, an archive)
/// needs nothing else of this host, only that host's copy of the image.
pub async fn keep_disk(vm: &str, saved: Saved, to: &Path) -> Result<Saved, MoveError> {
    let Some(layer) = &saved.disk else {
        return Ok(saved);
    };
    let disk = to.join(DISK_FILE);
    export_disk(layer, &disk)
        .await
        .map_err(|why| MoveError::Failed {
            vm: vm.to_string(),
            what: "disk layer",
            why: format!("writing the checkpoint's disk {}: {why}", disk.display()),
        })?;
    Ok(Saved {
        disk: Some(disk),
        ..saved
    })
}

/// The overlay a VM folder runs on.
pub fn active_overlay(dir: &Path) -> PathBuf {
    match fs::read_to_string(dir.join(TOP_FILE)) {
        Ok(name) if is_overlay_name(name.trim()) => dir.join(name.trim()),
        _ => dir.join("overlay.qcow2"),
    }
}

fn is_overlay_name(name: &str) -> bool {
    name.starts_with("overlay")
        && name.ends_with(".qcow2")
        && !name.contains('/')
        && !name.contains("..")
}

/// Forgets which overlay a folder ran on (a move starts it afresh).
pub fn clear_top(dir: &Path) {
    let _ = fs::remove_file(dir.join(TOP_FILE));
}

/// A file name `overlay.N.qcow2` not used in `dir`.
fn next_overlay(dir: &Path) -> PathBuf {
    (1u32..)
        .map(|n| dir.join(format!("overlay.{n}.qcow2")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join("overlay.x.qcow2"))
}

fn set_marker(vm: &Vm, what: Option<&str>) -> Result<(), MoveError> {
    let path = vm.dir().join(MARKER_FILE);
    let result = match what {
        Some(w) => labspan_proto::atomic::write(&path, w.as_bytes()),
        None => match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    };
    result.map_err(|cause| MoveError::Io {
        vm: vm.name().to_string(),
        what: "writing",
        path,
        cause,
    })
}

/// What the checkpoint marker of a VM folder says (`save`, `load`).
pub fn marker(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(MARKER_FILE))
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
}

/// The checkpoint `vm` was loaded from, when it waits paused for its
/// lab's common resume: a reset loaded it and has not resumed it (the
/// reset still runs, or it failed on another host). Such a guest is left
/// as it is until a reset loads it again: it is neither resumed nor
/// waited on to boot.
pub async fn awaits_resume(vm: &Vm) -> Option<String> {
    let text = fs::read_to_string(vm.dir().join(MARKER_FILE)).ok()?;
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some("load") {
        return None;
    }
    let checkpoint = lines.next().unwrap_or_default().to_string();
    matches!(vm.run_state().await, Ok(super::RunState::Paused)).then_some(checkpoint)
}

/// A QMP session to `vm`, ready for `stop` at the deadline.
pub async fn session(vm: &Vm) -> Result<Session, MoveError> {
    Session::open_with(vm, QMP_TIMEOUT).await
}

/// Pauses the guest.
pub async fn pause(s: &mut Session) -> Result<(), MoveError> {
    s.run("stop", Value::Null).await.map(|_| ())
}

/// Runs the guest again (from `paused` or `postmigrate`).
pub async fn resume(s: &mut Session) -> Result<(), MoveError> {
    settled(s).await?;
    s.run("cont", Value::Null).await.map(|_| ())
}

/// Waits until QEMU has left `finish-migrate`. The MIGRATION `completed`
/// event comes from QEMU's migration thread before its main loop moves
/// the guest on to `postmigrate`; a `cont` in between is refused
/// ("Migration is not finalized yet") and would leave the guest paused.
async fn settled(s: &mut Session) -> Result<(), MoveError> {
    let mut wait = Poll::new(SETTLE_POLL, QMP_TIMEOUT).start();
    loop {
        let status = s.run("query-status", Value::Null).await?;
        if status["status"] != "finish-migrate" {
            return Ok(());
        }
        if !wait.pause().await {
            return Err(s.failed(
                "resume",
                format!("QEMU still finishing the save after {QMP_TIMEOUT:?}"),
            ));
        }
    }
}

/// Saves the paused guest `vm` into `to` (its disk layer also linked into
/// `layers`), then resumes it, whether the save worked or not. A failed
/// save leaves no RAM file; a disk already switched to its new overlay
/// stays so (the guest sees the same disk).
pub async fn save(s: &mut Session, vm: &Vm, to: &Path, layers: &Path) -> Result<Saved, MoveError> {
    set_marker(vm, Some("save"))?;
    let mut result = save_steps(s, vm, to, layers).await;
    if let Err(e) = &result {
        // Read before the partial RAM file goes: it is what filled the disk.
        if let Some(free) = full_disk(to) {
            result = Err(MoveError::Failed {
                vm: vm.name().to_string(),
                what: "save",
                why: format!(
                    "the disk holding {} is full ({} MiB free): {e}",
                    to.display(),
                    free >> 20
                ),
            });
        }
        let _ = s.run("migrate_cancel", Value::Null).await;
        let _ = fs::remove_file(to.join(RAM_FILE));
    }
    // A guest not resumed keeps its marker: the fence resumes it when it
    // is lifted, where without one it would stay `postmigrate` for good.
    if let Err(e) = resume(s).await {
        return result.and(Err(e));
    }
    set_marker(vm, None)?;
    result
}

/// Free space under which a save that failed is said to have filled its
/// disk: a RAM file stops growing once no whole block is left for it.
const DISK_FULL_BELOW: u64 = 4 << 20;

/// The bytes free on the file system holding `dir`, when so few that a
/// save there failed for want of space (QEMU only sees its `cat` end).
fn full_disk(dir: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    (free < DISK_FULL_BELOW).then_some(free)
}

async fn save_steps(
    s: &mut Session,
    vm: &Vm,
    to: &Path,
    layers: &Path,
) -> Result<Saved, MoveError> {
    let io = |what: &'static str, path: &Path| {
        let (vm, path) = (vm.name().to_string(), path.to_path_buf());
        move |cause| MoveError::Io {
            vm,
            what,
            path,
            cause,
        }
    };
    fs::create_dir_all(to).map_err(io("creating", to))?;
    let disk = match vm.record.spec.disk.is_some() {
        true => Some(freeze_disk(s, vm, layers).await?),
        false => None,
    };
    let ram = to.join(RAM_FILE);
    s.run(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )
    .await?;
    s.run(
        "migrate-set-parameters",
        json!({ "max-bandwidth": MAX_BANDWIDTH }),
    )
    .await?;
    s.run(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", shell_quote(&ram)) }),
    )
    .await?;
    wait_migration(s, "completed", &|_| {}).await?;
    Ok(Saved { ram, disk })
}

/// Freezes the running overlay and puts a new one on top; returns the
/// frozen layer (its link in the layer store `layers`).
async fn freeze_disk(s: &mut Session, vm: &Vm, layers: &Path) -> Result<PathBuf, MoveError> {
    let io = |what: &'static str, path: &Path| {
        let (vm, path) = (vm.name().to_string(), path.to_path_buf());
        move |cause| MoveError::Io {
            vm,
            what,
            path,
            cause,
        }
    };
    let node = s.disk_node().await?;
    let size = s.disk_size().await?;
    let frozen = active_overlay(vm.dir());
    fs::create_dir_all(layers).map_err(io("creating", layers))?;
    let layer = (1u32..)
        .map(|n| layers.join(format!("layer-{n}.qcow2")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| layers.join("layer-x.qcow2"));
    fs::hard_link(&frozen, &layer).map_err(io("linking", &layer))?;
    let next = next_overlay(vm.dir());
    // `-u`: QEMU holds the frozen layer's write lock until the switch below.
    create_overlay(vm, &layer, &next, Some(size)).await?;
    let next_node = format!(
        "labspan-top-{}",
        next.file_name()
            .map(|n| n.to_string_lossy().replace('.', "-"))
            .unwrap_or_default()
    );
    s.run(
        "blockdev-add",
        json!({
            "driver": "qcow2",
            "node-name": next_node,
            "file": {"driver": "file", "filename": next.to_string_lossy()},
            "backing": null,
        }),
    )
    .await?;
    s.run(
        "blockdev-snapshot",
        json!({"node": node, "overlay": next_node}),
    )
    .await?;
    set_top(vm, &next)?;
    Ok(layer)
}

/// Records `overlay` as the VM's running disk: in the folder (for a later
/// launch) and in `vm.json` (what runs now).
fn set_top(vm: &Vm, overlay: &Path) -> Result<(), MoveError> {
    let dir = vm.dir();
    let name = overlay
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let top = dir.join(TOP_FILE);
    labspan_proto::atomic::write(&top, name.as_bytes()).map_err(|cause| MoveError::Io {
        vm: vm.name().to_string(),
        what: "writing",
        path: top,
        cause,
    })?;
    let mut record = vm.record.clone();
    record.spec.disk = Some(overlay.to_path_buf());
    let path = dir.join("vm.json");
    let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    labspan_proto::atomic::write(&path, &json).map_err(|cause| MoveError::Io {
        vm: vm.name().to_string(),
        what: "writing",
        path,
        cause,
    })
}

/// `qemu-img create` of a qcow2 overlay backed by `backing` (`size` given:
/// the backing is not opened).
async fn create_overlay(
    vm: &Vm,
    backing: &Path,
    overlay: &Path,
    size: Option<u64>,
) -> Result<(), MoveError> {
    create_overlay_named(vm.name(), backing, overlay, size).await
}

async fn create_overlay_named(
    vm: &str,
    backing: &Path,
    overlay: &Path,
    size: Option<u64>,
) -> Result<(), MoveError> {
    create_overlay_of(backing, overlay, size)
        .await
        .map_err(|why| MoveError::Failed {
            vm: vm.to_string(),
            what: "disk layer",
            why,
        })
}

/// The one `qemu-img create` of a qcow2 overlay (a VM's first disk, a
/// checkpoint's layers): `overlay` over `backing`, which is not opened
/// when `size` is given. What went wrong names both files.
pub(super) async fn create_overlay_of(
    backing: &Path,
    overlay: &Path,
    size: Option<u64>,
) -> Result<(), String> {
    qemu_img(|c| {
        c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(backing)
            .arg(overlay);
        if let Some(size) = size {
            c.arg("-u").arg(size.to_string());
        }
        c
    })
    .await
    .map(|_| ())
}

/// The layer-store file of checkpoint disk `disk` (a node's layers are in
/// `layers`): the hard link a save made, or a new one for a disk brought
/// from elsewhere (`labspan load`). A running overlay is backed by this
/// file, never by the checkpoint's own link, which goes with the
/// checkpoint. `base` (this host's image disk) is linked as
/// [`BASE_LINK`] beside both, for layers that name their base so.
pub fn layer_of(vm: &str, disk: &Path, layers: &Path, base: &Path) -> Result<PathBuf, MoveError> {
    use std::os::unix::fs::MetadataExt;
    let io = |what: &'static str, path: &Path| {
        let (vm, path) = (vm.to_string(), path.to_path_buf());
        move |cause| MoveError::Io {
            vm,
            what,
            path,
            cause,
        }
    };
    let meta = fs::metadata(disk).map_err(io("reading", disk))?;
    fs::create_dir_all(layers).map_err(io("creating", layers))?;
    let mut free = None;
    for n in 1u32.. {
        let layer = layers.join(format!("layer-{n}.qcow2"));
        match fs::metadata(&layer) {
            Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {
                free = Some((layer, true));
                break;
            }
            Ok(_) => {}
            Err(_) => {
                free = Some((layer, false));
                break;
            }
        }
    }
    let Some((layer, linked)) = free else {
        return Err(MoveError::Failed {
            vm: vm.to_string(),
            what: "disk layer",
            why: format!("no free layer name in {}", layers.display()),
        });
    };
    if !linked {
        fs::hard_link(disk, &layer).map_err(io("linking", &layer))?;
    }
    for dir in [Some(layers), disk.parent()].into_iter().flatten() {
        link_base(dir, base).map_err(io("linking", &dir.join(BASE_LINK)))?;
    }
    Ok(layer)
}

/// `dir/BASE_LINK` → `base`, replaced whole if it pointed elsewhere.
fn link_base(dir: &Path, base: &Path) -> std::io::Result<()> {
    let link = dir.join(BASE_LINK);
    if fs::read_link(&link).is_ok_and(|to| to == base) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{BASE_LINK}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(base, &tmp)?;
    fs::rename(&tmp, &link)
}

/// Writes checkpoint disk layer `disk` to `to` as one qcow2 layer over
/// the image at the bottom of its chain: the layers between are folded in
/// (a copy of `disk`, rebased onto the image: `qemu-img` writes in every
/// cluster where the chain differs from the image), and the image is
/// named [`BASE_LINK`], so that the file opens over any host's copy of
/// that image. `to` is removed on failure.
async fn export_disk(disk: &Path, to: &Path) -> Result<(), String> {
    let result = export_steps(disk, to).await;
    if result.is_err() {
        let _ = fs::remove_file(to);
    }
    result
}

async fn export_steps(disk: &Path, to: &Path) -> Result<(), String> {
    let info = qemu_img(|c| {
        c.args(["info", "-U", "--backing-chain", "--output=json"])
            .arg(disk)
    })
    .await?;
    let chain: Vec<Value> = serde_json::from_str(&info)
        .map_err(|e| format!("qemu-img info of {}: {e}", disk.display()))?;
    let base = match chain.as_slice() {
        [_, .., last] => last["filename"].as_str().unwrap_or_default().to_string(),
        _ => {
            return Err(format!(
                "{} has no backing image to export it against",
                disk.display()
            ))
        }
    };
    fs::copy(disk, to)
        .map_err(|e| format!("copying {} to {}: {e}", disk.display(), to.display()))?;
    // A layer right over the image has nothing to fold in.
    if chain.len() > 2 {
        qemu_img(|c| {
            c.args(["rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base])
                .arg(to)
        })
        .await?;
    }
    qemu_img(|c| {
        c.args([
            "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", BASE_LINK,
        ])
        .arg(to)
    })
    .await
    .map(|_| ())
}

/// `qemu-img` with the arguments `args` gives: its stdout, or what went wrong.
async fn qemu_img(
    args: impl FnOnce(&mut tokio::process::Command) -> &mut tokio::process::Command,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    args(&mut cmd);
    match tool::run_async(&mut cmd).await {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e @ ToolError::Spawn { .. }) => Err(format!("{e} (install the qemu-utils package)")),
        Err(e) => Err(e.to_string()),
    }
}

/// Readies VM folder `dir` to start from a checkpoint whose disk layer is
/// `layer`: a fresh overlay over it becomes the running one; overlays no
/// checkpoint holds (writes after it) are removed. QEMU must not run there.
pub async fn prepare_disk(vm: &str, dir: &Path, layer: &Path) -> Result<(), MoveError> {
    let io = |what: &'static str, path: &Path| {
        let (vm, path) = (vm.to_string(), path.to_path_buf());
        move |cause| MoveError::Io {
            vm,
            what,
            path,
            cause,
        }
    };
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let old: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| is_overlay_name(&n.to_string_lossy()))
        })
        .collect();
    let next = next_overlay(dir);
    create_overlay_named(vm, layer, &next, None).await?;
    let name = next
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let top = dir.join(TOP_FILE);
    labspan_proto::atomic::write(&top, name.as_bytes()).map_err(io("writing", &top))?;
    for p in old {
        // A layer of a checkpoint has another link in the layer store.
        let single =
            std::os::unix::fs::MetadataExt::nlink(&fs::metadata(&p).map_err(io("reading", &p))?)
                == 1;
        if single {
            fs::remove_file(&p).map_err(io("removing", &p))?;
        }
    }
    Ok(())
}

/// Loads the saved state `ram` of checkpoint `checkpoint` into `vm`, a
/// QEMU started with `-S -incoming defer`; the guest stays paused.
pub async fn load(vm: &Vm, ram: &Path, checkpoint: &str) -> Result<(), MoveError> {
    set_marker(vm, Some(&format!("load\n{checkpoint}\n")))?;
    let mut s = session(vm).await?;
    s.run(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )
    .await?;
    s.run(
        "migrate-incoming",
        json!({ "uri": format!("exec:cat {}", shell_quote(ram)) }),
    )
    .await?;
    wait_migration(&mut s, "completed", &|_| {}).await
}

/// Ends a load: the marker goes, the guest runs.
pub async fn start_loaded(s: &mut Session, vm: &Vm) -> Result<(), MoveError> {
    let status = s.run("query-status", Value::Null).await?;
    if status["status"] != "running" {
        resume(s).await?;
    }
    set_marker(vm, None)
}

/// Sets the guest's clock to this host's, through its guest agent.
pub async fn set_guest_time(vm: &Vm) -> Result<(), VmError> {
    let mut ga = vm.guest_agent(Duration::from_secs(5)).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let now = u64::try_from(now).unwrap_or(u64::MAX);
    match ga
        .call("guest-set-time", Some(json!({ "time": now })))
        .await
    {
        Ok(_) => Ok(()),
        // The system clock is set before the guest agent writes the RTC
        // (`hwclock`), which a small guest may lack.
        Err(super::QgaError::Command { desc, .. }) if desc.contains("hardware clock") => Ok(()),
        Err(cause) => Err(VmError::Qga {
            vm: vm.name().to_string(),
            cause,
        }),
    }
}

/// `'path'` for `sh -c`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}
