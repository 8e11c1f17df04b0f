//! Choosing the accelerator: `kvm`, `tcg`, or `auto`.
//!
//! `auto` must not pick a KVM that exists but cannot boot a guest in
//! reasonable time (nested virtualisation often gives a `/dev/kvm` that opens
//! yet runs a guest kernel hundreds of times slower than TCG, or a `-cpu
//! host` that QEMU aborts on). So when `/dev/kvm` opens, `auto` boots a probe
//! guest with KVM exactly as a real VM would be started and requires its guest
//! agent to answer within `PROBE_DEADLINE`. The verdict is cached in the
//! state folder per host boot (`/proc/sys/kernel/random/boot_id`), so only
//! the first VM after a reboot pays for the probe.

use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{launch, Accel, Vm, VmConfig, VmError};
use labspan_image::Image;

/// How long a KVM probe guest may take to answer through its guest agent.
/// The tiny guest does it in about 2 s under TCG; a working KVM is faster.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(20);
/// Cache file of the verdict, in the state folder.
pub const PROBE_CACHE: &str = "accel-probe.json";

/// The user's accelerator setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: use auto, kvm or tcg"
            )),
        }
    }
}

/// The probe's cached verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Verdict {
    boot_id: String,
    kvm_usable: bool,
}

/// What `auto` needs to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Use(Accel),
    /// KVM opens and nothing is known yet: boot a probe guest.
    Probe,
}

/// The pure part of the choice.
pub fn decide(choice: AccelChoice, kvm_opens: bool, cached_usable: Option<bool>) -> Decision {
    match (choice, kvm_opens, cached_usable) {
        (AccelChoice::Kvm, _, _) => Decision::Use(Accel::Kvm),
        (AccelChoice::Tcg, _, _) => Decision::Use(Accel::Tcg),
        (AccelChoice::Auto, false, _) => Decision::Use(Accel::Tcg),
        (AccelChoice::Auto, true, Some(true)) => Decision::Use(Accel::Kvm),
        (AccelChoice::Auto, true, Some(false)) => Decision::Use(Accel::Tcg),
        (AccelChoice::Auto, true, None) => Decision::Probe,
    }
}

/// Resolves `choice` on this host, probing KVM with `probe_image` (which
/// must have a guest agent) when needed; `state` holds the cache and the
/// probe VM's folder.
pub async fn resolve(
    choice: AccelChoice,
    state: &Path,
    probe_image: &Image,
) -> Result<Accel, VmError> {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cache = state.join(PROBE_CACHE);
    let cached = read_verdict(&cache, &boot_id);
    match decide(choice, kvm_opens(), cached) {
        Decision::Use(a) => return Ok(a),
        Decision::Probe => {}
    }
    if !probe_image.manifest.guest.guest_agent {
        return Err(VmError::NoGuestAgent {
            vm: "accel-probe".into(),
            image: probe_image.manifest.name.clone(),
        });
    }
    let _lock = ProbeLock::take(state).await?;
    // Another launcher may have probed while we waited for the lock.
    if let Some(usable) = read_verdict(&cache, &boot_id) {
        return Ok(if usable { Accel::Kvm } else { Accel::Tcg });
    }
    let usable = probe_kvm(state, probe_image).await;
    let verdict = Verdict {
        boot_id,
        kvm_usable: usable,
    };
    if let Ok(json) = serde_json::to_vec(&verdict) {
        let _ = labspan_proto::atomic::write(&cache, &json);
    }
    tracing::info!(kvm_usable = usable, "KVM probe done");
    Ok(if usable { Accel::Kvm } else { Accel::Tcg })
}

/// Whether KVM can run guests here, as far as known without booting one:
/// no when `/dev/kvm` does not open, the probe's verdict for this boot when
/// there is one, else `None` (the first VM under `auto` finds out).
pub fn kvm_works(state: &Path) -> Option<bool> {
    if !kvm_opens() {
        return Some(false);
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    read_verdict(&state.join(PROBE_CACHE), &boot_id)
}

fn read_verdict(cache: &Path, boot_id: &str) -> Option<bool> {
    let v: Verdict = serde_json::from_slice(&fs::read(cache).ok()?).ok()?;
    (v.boot_id == boot_id).then_some(v.kvm_usable)
}

fn kvm_opens() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boots `image` under KVM and reports whether its guest agent answered in
/// time. The probe VM is always killed and its folder removed.
async fn probe_kvm(state: &Path, image: &Image) -> bool {
    let dir = state.join("accel-probe");
    let cfg = VmConfig {
        name: "accel-probe".into(),
        image: image.clone(),
        memory_mib: 256,
        cpus: 1,
        accel: Accel::Kvm,
        nics: Vec::new(),
    };
    // A probe left over from a crashed launcher: kill it first.
    if let Ok(Some(old)) = super::adopt(&dir) {
        let _ = old.kill().await;
    }
    let _ = super::remove_state(&dir, "accel-probe");
    let vm: Vm = match launch(&dir, &cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            tracing::info!(error = %e, "KVM probe guest did not start");
            return false;
        }
    };
    let ok = vm.wait_guest_agent(PROBE_DEADLINE).await.is_ok();
    let _ = vm.kill().await;
    let _ = super::remove_state(&dir, "accel-probe");
    ok
}

/// An exclusive lock on `accel-probe.lock`, so that VMs launched together
/// run one probe, not one each.
struct ProbeLock {
    _file: fs::File,
}

impl ProbeLock {
    async fn take(state: &Path) -> Result<Self, VmError> {
        let path = state.join("accel-probe.lock");
        let io = |cause| VmError::Io {
            vm: "accel-probe".into(),
            what: "locking",
            path: path.clone(),
            cause,
        };
        fs::create_dir_all(state).map_err(io)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // A blocking flock on a thread of its own: the kernel hands the lock
        // over when the probe that holds it ends, with no polling and no
        // deadline (a probe is bounded by its own timeout).
        let locked = tokio::task::spawn_blocking(move || {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map(|()| file)
        })
        .await
        .map_err(|joined| io(std::io::Error::other(joined)))?;
        let file = locked.map_err(|errno| io(errno.into()))?;
        Ok(ProbeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choices_are_obeyed() {
        assert_eq!(
            decide(AccelChoice::Kvm, false, Some(false)),
            Decision::Use(Accel::Kvm)
        );
        assert_eq!(
            decide(AccelChoice::Tcg, true, Some(true)),
            Decision::Use(Accel::Tcg)
        );
    }

    #[test]
    fn auto_probes_once_then_follows_the_verdict() {
        assert_eq!(
            decide(AccelChoice::Auto, false, None),
            Decision::Use(Accel::Tcg)
        );
        assert_eq!(decide(AccelChoice::Auto, true, None), Decision::Probe);
        assert_eq!(
            decide(AccelChoice::Auto, true, Some(false)),
            Decision::Use(Accel::Tcg)
        );
        assert_eq!(
            decide(AccelChoice::Auto, true, Some(true)),
            Decision::Use(Accel::Kvm)
        );
    }

    #[test]
    fn verdict_from_another_boot_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join(PROBE_CACHE);
        let v = Verdict {
            boot_id: "a".into(),
            kvm_usable: true,
        };
        fs::write(&cache, serde_json::to_vec(&v).expect("json")).expect("write");
        assert_eq!(read_verdict(&cache, "a"), Some(true));
        assert_eq!(read_verdict(&cache, "b"), None);
        assert!("nope"
            .parse::<AccelChoice>()
            .expect_err("bad")
            .contains("auto, kvm or tcg"));
    }
}
