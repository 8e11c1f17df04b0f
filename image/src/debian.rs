//! Debian guest images from a recipe file: debootstrap into a folder, make
//! the guest boot quickly with qemu-guest-agent, pack the folder into an ext4
//! filesystem with `mkfs.ext4 -d` (no mounting, no loop device) and convert
//! it to qcow2. The kernel and initramfs are copied out of the folder and
//! booted directly with `-kernel`.
//!
//! The recipe's bytes, the mirror and the versions apt can serve for the
//! named packages are hashed; that hash is the image's address, so an
//! unchanged recipe is found in the store and nothing is downloaded.

use std::fs;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::apt;
use super::{io_err, GuestKind, Image, ImageError, ImageStore, Manifest};
use crate::BuildReport;

mod debootstrap;
mod mirror;
mod recipe;
mod setup;

use debootstrap::debootstrap;
use mirror::host_mirror;
use recipe::size_mib;
pub use recipe::Recipe;
use setup::{kernel_version, setup_guest};

/// Bump when the build itself changes in a way the recipe does not show.
const BUILDER_VERSION: &str = "debian-2";
/// Packages every Debian guest gets: the kernel, systemd, the guest agent
/// (exec and files) and the tools the agent's network script runs.
pub const BASE_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "qemu-guest-agent",
    "iproute2",
    "iputils-ping",
    "udev",
];
/// Kernel command line; labspan appends `labspan.hostname=NODE`.
/// `net.ifnames=0` keeps the kernel's ethN names, so udev never renames a
/// NIC while the agent's network script renames it by MAC.
pub const CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet";
/// Timers and services that only slow a lab guest's boot down or wake it up
/// for housekeeping; disabled when present.
const HOUSEKEEPING: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "logrotate.timer",
];
/// Root filesystem: the kernel mounts it read-write from the command line;
/// no fsck pass (the disk is a fresh overlay every deployment).
const FSTAB: &str = "/dev/vda / ext4 rw,noatime 0 0\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";
/// `labspan console` logs in as root without a password.
const AUTOLOGIN: &str = "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n";
/// dpkg settings for the build only (removed before the image is made).
const DPKG_BUILD_CFG: &str = "etc/dpkg/dpkg.cfg.d/labspan-build";
/// dpkg settings kept in the guest: no documentation, manuals or
/// translations (fewer files to write, a smaller image).
const DPKG_NODOC_CFG: &str = "etc/dpkg/dpkg.cfg.d/labspan-nodoc";
const DPKG_NODOC: &str = "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n\
path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n\
path-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n";
/// The journal in memory: nothing to flush to the disk under TCG.
const JOURNALD: &str = "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n";

impl ImageStore {
    /// Builds (or finds in the cache) the image a recipe describes and
    /// names it after the recipe. `progress` receives one line per step.
    pub fn build_debian(
        &self,
        recipe_file: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuildReport, ImageError> {
        let (recipe, bytes) = Recipe::load(recipe_file)?;
        let mirror = match &recipe.mirror {
            Some(m) => m.clone(),
            None => host_mirror(&recipe.suite)?,
        };
        let packages = package_list(&recipe);
        progress(&format!(
            "resolving {} packages ({} from the recipe)",
            packages.len(),
            recipe.packages.len()
        ));
        let pinned = apt::pin(&packages)?;
        let versions: Vec<String> = pinned
            .iter()
            .map(|p| format!("{}={}", p.package, p.versions.first().map_or("", |v| v)))
            .collect();
        let hash = recipe_hash(&bytes, &mirror, &versions);
        if let Ok(image) = self.by_hash(&hash) {
            self.set_name(&recipe.name, &hash)?;
            progress(&format!("image {} {} is cached", recipe.name, &hash[..12]));
            return Ok(BuildReport {
                image,
                cached: true,
            });
        }
        let work = self.work_dir(&recipe.name)?;
        let image = build_into(self, &work.0, &recipe, &mirror, hash, versions, progress)?;
        progress(&format!(
            "image {} {} built",
            recipe.name,
            &image.manifest.hash[..12]
        ));
        Ok(BuildReport {
            image,
            cached: false,
        })
    }
}

/// The build proper, in `work` (removed by the caller whatever happens).
fn build_into(
    store: &ImageStore,
    work: &Path,
    recipe: &Recipe,
    mirror: &str,
    hash: String,
    versions: Vec<String>,
    progress: &mut dyn FnMut(&str),
) -> Result<Image, ImageError> {
    let root = work.join("root");
    let staged = work.join("image");
    fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
    debootstrap(recipe, &package_list(recipe), mirror, &root, progress)?;
    progress("setting the guest up (guest agent at boot, services left for the lab to start)");
    setup_guest(&root, &recipe.disable)?;
    let kver = kernel_version(&root)?;
    for (from, to) in [
        (format!("vmlinuz-{kver}"), "vmlinuz"),
        (format!("initrd.img-{kver}"), "initrd.img"),
    ] {
        let src = root.join("boot").join(from);
        fs::copy(&src, staged.join(to)).map_err(io_err("copying", &src))?;
    }
    let mib = size_mib(&recipe.size).map_err(|detail| ImageError::Build { detail })?;
    progress(&format!("making a {mib} MiB ext4 filesystem from the tree"));
    let raw = work.join("disk.raw");
    labspan_tool::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-d"])
            .arg(&root)
            .args(["-L", "root"])
            .arg(&raw)
            .arg(format!("{mib}M")),
    )?;
    progress("converting to qcow2");
    labspan_tool::run(
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(staged.join("disk.qcow2")),
    )?;
    let mut recipe_lines = vec![
        format!("debian {} from {mirror}", recipe.suite),
        format!("kernel {kver}"),
    ];
    recipe_lines.extend(versions);
    let manifest = Manifest {
        name: recipe.name.clone(),
        hash,
        kernel: Some("vmlinuz".into()),
        initrd: Some("initrd.img".into()),
        disk: Some("disk.qcow2".into()),
        cmdline: CMDLINE.into(),
        guest: GuestKind {
            kind: "debian".into(),
            guest_agent: true,
        },
        recipe: recipe_lines,
    };
    store.commit(&staged, &manifest)
}

/// The base packages, then the recipe's, without repeats.
fn package_list(recipe: &Recipe) -> Vec<String> {
    let mut v: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    for p in &recipe.packages {
        if !v.contains(p) {
            v.push(p.clone());
        }
    }
    v
}

/// The cache key: every input that shapes the image.
fn recipe_hash(recipe: &[u8], mirror: &str, versions: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [
        BUILDER_VERSION,
        CMDLINE,
        FSTAB,
        HOSTS,
        AUTOLOGIN,
        JOURNALD,
        DPKG_NODOC,
        mirror,
    ] {
        h.update(format!("{}\n", part.len()));
        h.update(part);
    }
    h.update(HOUSEKEEPING.join(" "));
    h.update(format!("\nrecipe {}\n", recipe.len()));
    h.update(recipe);
    for v in versions {
        h.update(format!("\n{v}"));
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real debootstrap against a mirror that refuses connections: the
    /// error names debootstrap, and the store is left as it was.
    #[test]
    fn failed_build_leaves_nothing_in_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = dir.path().join("r.yaml");
        fs::write(
            &recipe,
            "name: broken\npackages: [procps]\nmirror: http://127.0.0.1:9/debian\n",
        )
        .expect("write");
        let store = ImageStore::at(dir.path().join("store"));
        let mut lines = Vec::new();
        let err = store
            .build_debian(&recipe, &mut |l: &str| lines.push(l.to_string()))
            .expect_err("no mirror");
        assert!(err.to_string().contains("debootstrap"), "{err}");
        assert!(
            lines.iter().any(|l| l.starts_with("debootstrap bookworm")),
            "{lines:?}"
        );
        assert!(store.get("broken").is_err());
        for sub in ["objects", "names", "tmp"] {
            let left = fs::read_dir(dir.path().join("store").join(sub))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(left, 0, "{sub} is not empty");
        }
    }

    #[test]
    fn hash_follows_recipe_and_versions() {
        let a = recipe_hash(b"name: x", "m", &["bird2=2.0.12".into()]);
        assert_eq!(a, recipe_hash(b"name: x", "m", &["bird2=2.0.12".into()]));
        assert_ne!(a, recipe_hash(b"name: y", "m", &["bird2=2.0.12".into()]));
        assert_ne!(a, recipe_hash(b"name: x", "m", &["bird2=2.0.13".into()]));
    }
}
