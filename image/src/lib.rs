//! labspan's guest images: the store (below), content digests
//! ([`digest`]), importing a disk ([`ImageStore::import`]), receiving an
//! image checked against its digest ([`ImageStore::receive`]), the image
//! endpoint between hosts (its TLS and QUIC endpoints in [`endpoint`], its
//! messages in [`msg`], serving with who-may-ask-what, fetching and
//! pushing in [`transfer`]) and the daemon's image duties ([`service`]). The builders (the tiny images, Debian recipes, and the
//! `apt` and `cpio` helpers they use) shell out to host tools and sit
//! behind the `builders` feature, which the command enables.
//!
//! The image store: guest images addressed by content hash, with a name index.
//!
//! Layout under the store root:
//! - `objects/HASH/` one image: `manifest.json` and its files (kernel, initrd,
//!   disk). HASH is the sha256 of the recipe (built images) or of the files
//!   (imported images), so the same inputs land in the same place.
//! - `names/NAME` a file holding the HASH that NAME points at.
//! - `tmp/` work folders; a build or import assembles its image there and
//!   renames it into `objects/` at the very end, so a failure leaves nothing
//!   half-made in `objects/` or `names/`.

#![forbid(unsafe_code)]

#[cfg(feature = "builders")]
pub mod apt;
#[cfg(feature = "builders")]
pub mod cpio;
#[cfg(feature = "builders")]
mod debian;
pub mod digest;
pub mod endpoint;
mod import;
pub mod msg;
mod receive;
pub mod service;
#[cfg(feature = "builders")]
mod tiny;
pub mod transfer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(feature = "builders")]
pub use debian::{Recipe, CMDLINE as DEBIAN_CMDLINE};
pub use import::{ImportRequest, IMPORTED_CMDLINE};
pub use receive::{Expected, ReceiveError};
#[cfg(feature = "builders")]
pub use tiny::{
    recipe, BuildReport, TinyRecipe, CMDLINE as TINY_CMDLINE, RECIPES, TINY, TINY_ROUTER,
};

/// `guest.kind` of an image imported from a disk of the user's: labspan
/// cannot know whether it runs a guest agent.
pub const IMPORTED_KIND: &str = "imported";

/// What a guest image is and how to boot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The name it was built or imported under.
    pub name: String,
    /// Its address in the store.
    pub hash: String,
    /// Kernel file (relative to the image folder), booted with `-kernel`;
    /// `None` boots the disk through the firmware.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initramfs file (relative to the image folder).
    #[serde(default)]
    pub initrd: Option<String>,
    /// qcow2 base disk (relative to the image folder); each VM gets an overlay.
    #[serde(default)]
    pub disk: Option<String>,
    /// Kernel command line (only with `kernel`); labspan appends the hostname.
    #[serde(default)]
    pub cmdline: String,
    /// What runs inside.
    pub guest: GuestKind,
    /// What it was made from (package versions, source file), for humans.
    #[serde(default)]
    pub recipe: Vec<String>,
}

impl Manifest {
    /// Checks that `kernel`, `initrd` and `disk` are plain file names, so
    /// that they stay inside the image folder (QEMU, as root, opens them as
    /// a kernel or a disk's backing file): no `/`, no `..`, nothing hidden.
    pub fn check_files(&self) -> Result<(), ImageError> {
        for (field, value) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("disk", &self.disk),
        ] {
            let Some(file) = value else { continue };
            let plain = !file.is_empty()
                && file.len() <= 255
                && !file.starts_with('.')
                && !file.contains(['/', '\\', '\0']);
            if !plain {
                return Err(ImageError::BadFile {
                    image: self.name.clone(),
                    field,
                    file: file.clone(),
                });
            }
        }
        Ok(())
    }
}

/// What kind of guest an image boots into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestKind {
    /// `tiny` (busybox initramfs) or `imported`.
    pub kind: String,
    /// Whether qemu-guest-agent runs in the guest (needed for exec and files).
    pub guest_agent: bool,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image's folder (`objects/HASH`).
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Image {
    /// Absolute path of the kernel, if the image boots one directly.
    pub fn kernel_path(&self) -> Option<PathBuf> {
        self.manifest.kernel.as_ref().map(|k| self.dir.join(k))
    }
    /// Absolute path of the initramfs, if any.
    pub fn initrd_path(&self) -> Option<PathBuf> {
        self.manifest.initrd.as_ref().map(|k| self.dir.join(k))
    }
    /// Absolute path of the qcow2 base disk, if any.
    pub fn disk_path(&self) -> Option<PathBuf> {
        self.manifest.disk.as_ref().map(|k| self.dir.join(k))
    }
}

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image \"{name}\" is not in the image store {store}: build it with \
         `labspan image build tiny` (or `tiny-router`), `labspan image build RECIPE.yaml` (e.g. demos/sip/image.yaml), \
         or add your own with `labspan image import FILE.qcow2 --name {name}`"
    )]
    Missing { name: String, store: PathBuf },
    #[error("image name \"{name}\" is invalid: use letters, digits, '-', '_' and '.', not starting with '.'")]
    BadName { name: String },
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(transparent)]
    Tool(#[from] labspan_tool::ToolError),
    #[error("cannot resolve the tiny image's packages: {detail}")]
    Resolve { detail: String },
    #[error("image recipe {path}: {detail}")]
    Recipe { path: PathBuf, detail: String },
    #[error("building the image: {detail}")]
    Build { detail: String },
    #[error("{file} is not a usable qcow2 image: {detail}; nothing was imported")]
    NotQcow2 { file: PathBuf, detail: String },
    #[error("image \"{image}\": manifest {field} {file:?} must be a plain file name inside the image folder (no '/', no '..', not hidden); the image is refused and nothing was stored")]
    BadFile {
        image: String,
        field: &'static str,
        file: String,
    },
    #[error("manifest {path} is unreadable: {cause}; remove that image folder and build or import it again")]
    BadManifest {
        path: PathBuf,
        cause: serde_json::Error,
    },
}

/// Shorthand for an I/O error on a path.
pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |cause| ImageError::Io { what, path, cause }
}

/// A folder of images.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// The store at `root` (created on first write).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    /// The store of the state folder `state` (its `images/`).
    pub fn in_state(state: &Path) -> Self {
        Self::at(state.join("images"))
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image called `name`.
    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let missing = || ImageError::Missing {
            name: name.to_string(),
            store: self.root.clone(),
        };
        let index = self.root.join("names").join(name);
        let hash = match fs::read_to_string(&index) {
            Ok(h) => h.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(io_err("reading image index", &index)(e)),
        };
        match self.by_hash(&hash) {
            Err(ImageError::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => {
                Err(missing())
            }
            r => r,
        }
    }

    /// Every named image, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.names()?.iter().map(|n| self.get(n)).collect()
    }

    /// Every image name, sorted.
    pub fn names(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("names");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing image names", &dir)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Points `name` at the image `hash` already in the store (unless it
    /// does already) and returns that image.
    pub fn name_hash(&self, name: &str, hash: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let image = self.by_hash(hash)?;
        let index = self.root.join("names").join(name);
        let current = fs::read_to_string(&index).unwrap_or_default();
        if current.trim() != hash {
            self.set_name(name, hash)?;
        }
        Ok(image)
    }

    fn by_hash(&self, hash: &str) -> Result<Image, ImageError> {
        let dir = self.root.join("objects").join(hash);
        let path = dir.join("manifest.json");
        let text = fs::read(&path).map_err(io_err("reading image manifest", &path))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|cause| ImageError::BadManifest { path, cause })?;
        manifest.check_files()?;
        Ok(Image { dir, manifest })
    }

    /// Points `name` at `hash` atomically (write then rename).
    fn set_name(&self, name: &str, hash: &str) -> Result<(), ImageError> {
        let names = self.root.join("names");
        fs::create_dir_all(&names).map_err(io_err("creating", &names))?;
        let dst = names.join(name);
        labspan_proto::atomic::write(&dst, format!("{hash}\n").as_bytes())
            .map_err(io_err("writing", &dst))
    }

    /// Moves a finished image folder from `tmp/` into `objects/HASH` and names
    /// it. When another build got there first, its copy is kept.
    fn commit(&self, staged: &Path, manifest: &Manifest) -> Result<Image, ImageError> {
        manifest.check_files()?;
        let path = staged.join("manifest.json");
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| ImageError::Build {
            detail: e.to_string(),
        })?;
        fs::write(&path, json).map_err(io_err("writing", &path))?;
        self.install(staged, &manifest.hash, &manifest.name)
    }

    /// Moves a staged image folder (manifest included) into `objects/HASH`
    /// and points `name` at it; a copy already there is kept.
    fn install(&self, staged: &Path, hash: &str, name: &str) -> Result<Image, ImageError> {
        let objects = self.root.join("objects");
        fs::create_dir_all(&objects).map_err(io_err("creating", &objects))?;
        let dst = objects.join(hash);
        if !dst.join("manifest.json").exists() {
            if let Err(e) = fs::rename(staged, &dst) {
                // A concurrent build of the same recipe renamed first.
                if !dst.join("manifest.json").exists() {
                    return Err(io_err("moving the image into", &dst)(e));
                }
            }
        }
        self.set_name(name, hash)?;
        self.by_hash(hash)
    }

    /// A fresh work folder under `tmp/`, removed when the guard drops.
    fn work_dir(&self, what: &str) -> Result<WorkDir, ImageError> {
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = tmp.join(format!("{what}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(WorkDir(dir))
    }
}

/// Image names become file names: keep them plain.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    labspan_proto::names::valid::image(name).map_err(|_| ImageError::BadName {
        name: name.to_string(),
    })
}

/// A work folder that is removed on drop, whether the work succeeded or not.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_image_names_itself_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::at(dir.path());
        let err = store.get("tiny").expect_err("empty store");
        let msg = err.to_string();
        assert!(msg.contains("\"tiny\""), "{msg}");
        assert!(msg.contains("labspan image build tiny"), "{msg}");
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("debian-12.1_x").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_naming_files_outside_its_folder_is_refused_and_leaves_nothing() {
        for (field, file) in [
            ("kernel", "../../x"),
            ("kernel", "/etc/x"),
            ("initrd", ".."),
            ("disk", "sub/disk.qcow2"),
            ("disk", ""),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = ImageStore::at(dir.path());
            let work = store.work_dir("t").expect("work dir");
            let staged = work.0.join("image");
            fs::create_dir_all(&staged).expect("mkdir");
            let mut m = Manifest {
                name: "x".into(),
                hash: "abc".into(),
                kernel: Some("vmlinuz".into()),
                initrd: None,
                disk: None,
                cmdline: String::new(),
                guest: GuestKind {
                    kind: "tiny".into(),
                    guest_agent: true,
                },
                recipe: vec![],
            };
            let slot = match field {
                "kernel" => &mut m.kernel,
                "initrd" => &mut m.initrd,
                _ => &mut m.disk,
            };
            *slot = Some(file.into());
            let err = store.commit(&staged, &m).expect_err("outside the folder");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!(
                    "manifest {field} {file:?} must be a plain file name"
                )),
                "{msg}"
            );
            drop(work);
            assert!(!dir.path().join("objects").exists(), "{file}: stored");
            assert!(!dir.path().join("names").exists(), "{file}: named");
        }
    }

    #[test]
    fn commit_then_get_and_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::at(dir.path());
        let work = store.work_dir("t").expect("work dir");
        let staged = work.0.join("image");
        fs::create_dir_all(&staged).expect("mkdir");
        let m = Manifest {
            name: "x".into(),
            hash: "abc".into(),
            kernel: Some("vmlinuz".into()),
            initrd: None,
            disk: None,
            cmdline: "console=ttyS0".into(),
            guest: GuestKind {
                kind: "tiny".into(),
                guest_agent: true,
            },
            recipe: vec![],
        };
        let img = store.commit(&staged, &m).expect("commit");
        assert_eq!(img.manifest, m);
        assert_eq!(store.get("x").expect("get").manifest, m);
        assert_eq!(store.list().expect("list").len(), 1);
        drop(work);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }
}
