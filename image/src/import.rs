//! `labspan image import`: a user's own qcow2 disk (and optionally the
//! kernel and initrd to boot it with) into the store.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{check_name, io_err, GuestKind, Image, ImageError, ImageStore, Manifest};
use labspan_tool::stdout_of as run;

/// Command line for imported images booted with an explicit kernel: the
/// disk is the guest's first virtio disk.
pub const IMPORTED_CMDLINE: &str = "root=/dev/vda rw console=ttyS0";

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest<'a> {
    pub name: &'a str,
    pub disk: &'a Path,
    pub kernel: Option<&'a Path>,
    pub initrd: Option<&'a Path>,
    /// Kernel command line; `IMPORTED_CMDLINE` when `None`.
    pub cmdline: Option<&'a str>,
}

impl ImageStore {
    /// Checks `req.disk` with `qemu-img info` and copies it (and the kernel
    /// and initrd) into the store under `req.name`. On any error the store is
    /// as it was.
    pub fn import(&self, req: &ImportRequest<'_>) -> Result<Image, ImageError> {
        check_name(req.name)?;
        if req.initrd.is_some() && req.kernel.is_none() {
            return Err(ImageError::NotQcow2 {
                file: req.disk.to_path_buf(),
                detail: "an initrd was given without a kernel (--kernel)".into(),
            });
        }
        check_qcow2(req.disk)?;
        let work = self.work_dir("import")?;
        let staged = work.0.join("image");
        fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
        let mut h = Sha256::new();
        let mut recipe = vec![format!("imported from {}", req.disk.display())];
        copy_hashing(req.disk, &staged.join("disk.qcow2"), &mut h)?;
        for (src, dst) in [(req.kernel, "vmlinuz"), (req.initrd, "initrd.img")] {
            if let Some(src) = src {
                h.update(dst);
                copy_hashing(src, &staged.join(dst), &mut h)?;
                recipe.push(format!("{dst} from {}", src.display()));
            }
        }
        let manifest = Manifest {
            name: req.name.to_string(),
            hash: hex::encode(h.finalize()),
            kernel: req.kernel.map(|_| "vmlinuz".to_string()),
            initrd: req.initrd.map(|_| "initrd.img".to_string()),
            disk: Some("disk.qcow2".into()),
            cmdline: match (req.kernel, req.cmdline) {
                (None, _) => String::new(),
                (Some(_), Some(c)) => c.to_string(),
                (Some(_), None) => IMPORTED_CMDLINE.to_string(),
            },
            guest: GuestKind {
                kind: super::IMPORTED_KIND.into(),
                guest_agent: true,
            },
            recipe,
        };
        self.commit(&staged, &manifest)
    }
}

/// A file is importable when qemu-img reads it as qcow2 and it stands alone
/// (a backing file would not travel with it).
fn check_qcow2(file: &Path) -> Result<(), ImageError> {
    let not = |detail: String| ImageError::NotQcow2 {
        file: file.to_path_buf(),
        detail,
    };
    if !file.is_file() {
        return Err(not("no such file".into()));
    }
    let out = run(Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(file))
    .map_err(|e| not(e.stderr().unwrap_or_default().to_string()))?;
    let info: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| not(format!("qemu-img info said: {e}")))?;
    if info.get("format").and_then(|f| f.as_str()) != Some("qcow2") {
        return Err(not("qemu-img does not see qcow2 in it".into()));
    }
    if let Some(b) = info.get("backing-filename").and_then(|b| b.as_str()) {
        return Err(not(format!(
            "it has a backing file {b}; flatten it first with `qemu-img convert -O qcow2`"
        )));
    }
    if info.get("corrupt").and_then(|c| c.as_bool()) == Some(true)
        || info
            .pointer("/format-specific/data/corrupt")
            .and_then(|c| c.as_bool())
            == Some(true)
    {
        return Err(not(
            "qemu-img marks it corrupt; try `qemu-img check -r all`".into(),
        ));
    }
    Ok(())
}

fn copy_hashing(src: &Path, dst: &Path, h: &mut Sha256) -> Result<(), ImageError> {
    let mut r = fs::File::open(src).map_err(io_err("opening", src))?;
    let mut w = fs::File::create(dst).map_err(io_err("creating", dst))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io_err("reading", src))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(io_err("writing", dst))?;
    }
    w.sync_all().map_err(io_err("writing", dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These tests are in the `qemu` tier (`.config/nextest.toml`); without
    /// the tool they fail and say so rather than pass having checked nothing.
    fn need_qemu_img() {
        if let Err(e) = Command::new("qemu-img").arg("--version").output() {
            panic!("this test needs qemu-img (Debian: qemu-utils; deploy/install-deps.sh): {e}");
        }
    }

    #[test]
    fn garbage_is_refused_and_store_untouched() {
        need_qemu_img();
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.qcow2");
        fs::write(&bad, vec![0x5a; 4096]).expect("write");
        let store = ImageStore::at(dir.path().join("store"));
        let req = ImportRequest {
            name: "mine",
            disk: &bad,
            kernel: None,
            initrd: None,
            cmdline: None,
        };
        let err = store.import(&req).expect_err("not qcow2");
        assert!(matches!(err, ImageError::NotQcow2 { .. }), "{err}");
        assert!(err.to_string().contains("bad.qcow2"), "{err}");
        assert!(!dir.path().join("store").join("objects").exists());
        assert!(!dir.path().join("store").join("names").exists());
    }

    #[test]
    fn real_qcow2_is_imported() {
        need_qemu_img();
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("d.qcow2");
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("16M")
            .status()
            .expect("qemu-img runs");
        assert!(ok.success());
        let store = ImageStore::at(dir.path().join("store"));
        let req = ImportRequest {
            name: "mine",
            disk: &disk,
            kernel: None,
            initrd: None,
            cmdline: None,
        };
        let img = store.import(&req).expect("import");
        assert_eq!(store.get("mine").expect("get"), img);
        assert!(img.disk_path().expect("disk").is_file());
        assert!(img.kernel_path().is_none());
    }
}
