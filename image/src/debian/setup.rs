//! Making a debootstrapped tree a lab guest, in the tree and in a chroot.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{AUTOLOGIN, FSTAB, HOSTS, HOUSEKEEPING, JOURNALD};
use crate::{apt, io_err, ImageError};

/// Makes the debootstrapped tree a lab guest: root filesystem in fstab,
/// root logs in on the console, no housekeeping timers, the recipe's
/// services left stopped, a fresh machine id at each boot.
pub(super) fn setup_guest(root: &Path, disable: &[String]) -> Result<(), ImageError> {
    write(root, "etc/fstab", FSTAB)?;
    write(root, "etc/hosts", HOSTS)?;
    write(root, "etc/hostname", "labspan\n")?;
    write(root, "etc/resolv.conf", "")?;
    write(
        root,
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
        AUTOLOGIN,
    )?;
    write(root, "etc/systemd/journald.conf.d/labspan.conf", JOURNALD)?;
    chroot(root, &["passwd", "-d", "root"])?;
    for unit in HOUSEKEEPING {
        if unit_exists(root, unit) {
            chroot(root, &["systemctl", "disable", "--quiet", unit])?;
        }
    }
    for unit in disable {
        if !unit_exists(root, unit) {
            return Err(ImageError::Build {
                detail: format!(
                    "the recipe disables \"{unit}\", but no package installed a unit or init \
                     script of that name"
                ),
            });
        }
        chroot(root, &["systemctl", "disable", "--quiet", unit])?;
    }
    // Downloaded packages and indexes: not needed in the guest.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        clear_files(&root.join(dir))?;
    }
    Ok(())
}

fn unit_exists(root: &Path, unit: &str) -> bool {
    let name = if unit.contains('.') {
        unit.to_string()
    } else {
        format!("{unit}.service")
    };
    let sysv = unit.strip_suffix(".service").unwrap_or(unit);
    [
        "lib/systemd/system",
        "usr/lib/systemd/system",
        "etc/systemd/system",
    ]
    .iter()
    .any(|d| root.join(d).join(&name).exists())
        || root.join("etc/init.d").join(sysv).exists()
}

pub(super) fn write(root: &Path, rel: &str, text: &str) -> Result<(), ImageError> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    // resolv.conf may be a symlink left by the host's configuration.
    let _ = fs::remove_file(&path);
    fs::write(&path, text).map_err(io_err("writing", &path))
}

fn clear_files(dir: &Path) -> Result<(), ImageError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_file() {
            fs::remove_file(&p).map_err(io_err("removing", &p))?;
        }
    }
    Ok(())
}

fn chroot(root: &Path, args: &[&str]) -> Result<(), ImageError> {
    apt::run(Command::new("chroot").arg(root).args(args)).map(|_| ())
}

/// The one kernel under `boot/` (`vmlinuz-VERSION`).
pub(super) fn kernel_version(root: &Path) -> Result<String, ImageError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(io_err("listing", &boot))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort();
    match versions.len() {
        1 => Ok(versions.remove(0)),
        n => Err(ImageError::Build {
            detail: format!(
                "expected one kernel in {}, found {n}: list one kernel package at most",
                boot.display()
            ),
        }),
    }
}
