//! The `tiny` image: Debian's cloud kernel, busybox and qemu-guest-agent in
//! an initramfs, built from Debian packages only; and the images built the
//! same way with a few more programs (`tiny-router`: tiny plus bird2).
//!
//! The recipe (the package versions apt can serve plus the guest files below)
//! is hashed; that hash is the image's address, so a second build with the
//! same apt indexes finds the image already there and downloads nothing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::apt::{self, Pinned};
use super::cpio::{write_archive, Entry};
use super::{io_err, GuestKind, Image, ImageError, ImageStore, Manifest};
use labspan_tool::ToolError;

/// Bump when the build itself changes in a way the recipe does not show.
const BUILDER_VERSION: &str = "tiny-1";
const INIT: &str = include_str!("tiny/init.sh");
const INITTAB: &str = include_str!("tiny/inittab");
const QGA_START: &str = include_str!("tiny/labspan-qga.sh");
const POWER_BUTTON: &str = include_str!("tiny/power-button.sh");
const PROFILE: &str = include_str!("tiny/profile");
/// Kernel modules loaded by `/init`, in load order (paths under
/// `lib/modules/VERSION/kernel/`).
const MODULES: &str = include_str!("tiny/modules");
/// Kernel command line; labspan appends `labspan.hostname=NODE`.
pub const CMDLINE: &str = "console=ttyS0 quiet";

/// One image built by this builder: the tiny base plus extra Debian
/// packages whose programs are copied with the libraries they load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyRecipe {
    /// The image's name in the store (`labspan image build NAME`).
    pub name: &'static str,
    /// Debian packages added to the base; their library closure follows.
    pub packages: &'static [&'static str],
    /// Programs from those packages (paths in the unpacked packages), each
    /// copied with the libraries its dynamic loader resolves.
    pub binaries: &'static [&'static str],
    /// Empty folders the programs expect to find.
    pub dirs: &'static [&'static str],
    /// Commands busybox init runs once at boot (`::sysinit:` lines), for
    /// what cannot live in the initramfs, such as folders under the `/run`
    /// tmpfs.
    pub boot: &'static [&'static str],
}

impl TinyRecipe {
    fn is_base(&self) -> bool {
        self.packages.is_empty()
            && self.binaries.is_empty()
            && self.dirs.is_empty()
            && self.boot.is_empty()
    }

    /// The inittab: the base one plus this recipe's boot commands.
    fn inittab(&self) -> String {
        let mut t = INITTAB.to_string();
        for cmd in self.boot {
            t.push_str(&format!("::sysinit:{cmd}\n"));
        }
        t
    }
}

/// busybox, the kernel and qemu-guest-agent: what every labspan guest needs.
pub const TINY: TinyRecipe = TinyRecipe {
    name: "tiny",
    packages: &[],
    binaries: &[],
    dirs: &[],
    boot: &[],
};

/// tiny plus BIRD 2 (`bird`, `birdc`), run as root: a router for OSPF/BGP
/// labs. Lab files bring `/etc/bird/bird.conf` and start `bird`.
pub const TINY_ROUTER: TinyRecipe = TinyRecipe {
    name: "tiny-router",
    packages: &["bird2"],
    binaries: &["usr/sbin/bird", "usr/sbin/birdc"],
    dirs: &["etc/bird", "var/lib/bird"],
    // bird's control socket lives in /run/bird, and /run is a tmpfs.
    boot: &["/bin/mkdir -p /run/bird"],
};

/// The built-in recipes of `labspan image build NAME`.
pub const RECIPES: &[TinyRecipe] = &[TINY, TINY_ROUTER];

/// The recipe called `name`, if there is one.
pub fn recipe(name: &str) -> Option<&'static TinyRecipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// What a tiny build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub image: Image,
    /// True when the image was already in the store.
    pub cached: bool,
}

impl ImageStore {
    /// Builds (or finds in the cache) the `tiny` image and names it `tiny`.
    /// `progress` receives one line per step.
    pub fn build_tiny(&self, progress: &mut dyn FnMut(&str)) -> Result<BuildReport, ImageError> {
        self.build_recipe(&TINY, progress)
    }

    /// Builds (or finds in the cache) the image of `recipe` and names it
    /// after the recipe. `progress` receives one line per step.
    pub fn build_recipe(
        &self,
        recipe: &TinyRecipe,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuildReport, ImageError> {
        let name = recipe.name;
        progress(&resolving_line(recipe));
        let kernel_pkg = apt::cloud_kernel_package()?;
        let mut roots = vec![kernel_pkg.as_str(), "busybox-static", "qemu-guest-agent"];
        roots.extend(recipe.packages);
        let packages = apt::library_closure(&roots)?;
        let pinned = apt::pin(&packages)?;
        let hash = recipe_hash(recipe, &pinned);
        if let Ok(image) = self.by_hash(&hash) {
            self.set_name(name, &hash)?;
            progress(&format!("image {name} {} is cached", &hash[..12]));
            return Ok(BuildReport {
                image,
                cached: true,
            });
        }
        let work = self.work_dir(name)?;
        let debs = work.0.join("debs");
        let root = work.0.join("root");
        for d in [&debs, &root] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        progress(&format!("downloading {} packages", pinned.len()));
        let mut recipe_lines = apt::download_all(&pinned, &debs)?;
        progress("unpacking packages");
        for deb in list_files(&debs)? {
            apt::extract(&deb, &root)?;
        }
        progress("assembling the initramfs");
        let staged = work.0.join("image");
        fs::create_dir_all(&staged).map_err(io_err("creating", &staged))?;
        let kver = kernel_version(&root)?;
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{kver}"));
        fs::copy(&vmlinuz, staged.join("vmlinuz"))
            .map_err(io_err("copying the kernel", &vmlinuz))?;
        let entries = initramfs_entries(recipe, &root, &kver)?;
        pack(&entries, &staged.join("initrd.img"))?;
        recipe_lines.push(format!("kernel {kver}"));
        let manifest = Manifest {
            name: name.into(),
            hash,
            kernel: Some("vmlinuz".into()),
            initrd: Some("initrd.img".into()),
            disk: None,
            cmdline: CMDLINE.into(),
            guest: GuestKind {
                kind: "tiny".into(),
                guest_agent: true,
            },
            recipe: recipe_lines,
        };
        let image = self.commit(&staged, &manifest)?;
        progress(&format!("image {name} {} built", &manifest.hash[..12]));
        Ok(BuildReport {
            image,
            cached: false,
        })
    }
}

fn resolving_line(recipe: &TinyRecipe) -> String {
    let mut what = String::from("kernel, busybox, qemu-guest-agent");
    for p in recipe.packages {
        what.push_str(", ");
        what.push_str(p);
    }
    format!("resolving Debian packages ({what} and their libraries)")
}

/// The cache key: every input that shapes the image. The base recipe hashes
/// exactly what it did before recipes had extras, so `tiny` keeps its key.
fn recipe_hash(recipe: &TinyRecipe, pinned: &[Pinned]) -> String {
    let mut h = Sha256::new();
    h.update(BUILDER_VERSION);
    for p in pinned {
        h.update(format!("\npkg {} {}", p.package, p.versions.join(" ")));
    }
    let inittab = recipe.inittab();
    for f in [
        INIT,
        inittab.as_str(),
        QGA_START,
        POWER_BUTTON,
        PROFILE,
        MODULES,
        CMDLINE,
    ] {
        h.update(format!("\nfile {}\n", f.len()));
        h.update(f);
    }
    if !recipe.is_base() {
        h.update(format!(
            "\nrecipe {}\nbinaries {}\ndirs {}",
            recipe.name,
            recipe.binaries.join(" "),
            recipe.dirs.join(" ")
        ));
    }
    hex::encode(h.finalize())
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The one kernel version unpacked under `lib/modules/`.
fn kernel_version(root: &Path) -> Result<String, ImageError> {
    let dir = root.join("lib/modules");
    let mut versions: Vec<String> = list_files(&dir)?
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    match versions.len() {
        1 => Ok(versions.remove(0)),
        n => Err(ImageError::Build {
            detail: format!("expected one kernel under {}, found {n}", dir.display()),
        }),
    }
}

/// Every file of the initramfs: busybox, qemu-ga and the recipe's programs
/// with exactly the libraries their dynamic loader resolves, the kernel
/// modules `/init` loads, and the guest scripts.
fn initramfs_entries(
    recipe: &TinyRecipe,
    root: &Path,
    kver: &str,
) -> Result<Vec<Entry>, ImageError> {
    let mut tree = Tree::default();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "lib64", "var", "root",
    ] {
        tree.dir(d);
    }
    tree.file("init", 0o755, INIT.as_bytes().to_vec());
    for d in recipe.dirs {
        tree.dir(d);
    }
    tree.file("etc/inittab", 0o644, recipe.inittab().into_bytes());
    tree.file("etc/profile", 0o644, PROFILE.as_bytes().to_vec());
    tree.file("etc/labspan/modules", 0o644, MODULES.as_bytes().to_vec());
    tree.file("sbin/labspan-qga", 0o755, QGA_START.as_bytes().to_vec());
    tree.file(
        "etc/acpi/PWRF/00000080",
        0o755,
        POWER_BUTTON.as_bytes().to_vec(),
    );
    tree.file(
        "etc/hosts",
        0o644,
        b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
    );
    tree.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    tree.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    tree.copy(root, "bin/busybox", 0o755)?;
    let mut libs: Vec<String> = Vec::new();
    for bin in std::iter::once(&"usr/sbin/qemu-ga").chain(recipe.binaries) {
        tree.copy(root, bin, 0o755)?;
        for lib in libraries(root, bin)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        tree.copy(root, lib, 0o755)?;
    }
    tree.copy(root, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", 0o755)?;
    tree.symlink(
        "lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    );
    for m in MODULES.lines().map(str::trim).filter(|m| !m.is_empty()) {
        tree.copy(root, &format!("lib/modules/{kver}/kernel/{m}"), 0o644)?;
    }
    Ok(tree.entries)
}

/// The libraries the program `bin` needs, as paths relative to `root`, found
/// by the staged dynamic loader itself (`ld.so --list`) so the answer is the
/// one the guest will get. A library that resolves outside `root` is missing
/// from the packages: that is a build error, not a guest that fails at boot.
fn libraries(root: &Path, bin: &str) -> Result<Vec<String>, ImageError> {
    let ld = root.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    let lib_path = format!(
        "{}:{}",
        root.join("lib/x86_64-linux-gnu").display(),
        root.join("usr/lib/x86_64-linux-gnu").display()
    );
    let out = apt::run(
        Command::new(&ld)
            .args(["--library-path", &lib_path, "--list"])
            .arg(root.join(bin)),
    )?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let Some((soname, target)) = line.trim().split_once(" => ") else {
            continue;
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if soname.contains("ld-linux") {
            continue;
        }
        match Path::new(path).strip_prefix(root) {
            Ok(rel) => libs.push(rel.to_string_lossy().into_owned()),
            Err(_) => {
                return Err(ImageError::Build {
                    detail: format!(
                        "{bin} needs {soname}, which no downloaded package provides \
                         (resolved to {path:?})"
                    ),
                })
            }
        }
    }
    Ok(libs)
}

/// Archive entries with their parent folders added once each.
#[derive(Default)]
struct Tree {
    entries: Vec<Entry>,
    dirs: Vec<String>,
}

impl Tree {
    fn dir(&mut self, path: &str) {
        if path.is_empty() || self.dirs.iter().any(|d| d == path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.push(path.to_string());
        self.entries.push(Entry::Dir {
            path: path.to_string(),
            mode: 0o755,
        });
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parent(path);
        self.entries.push(Entry::File {
            path: path.to_string(),
            mode,
            data,
        });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entries.push(Entry::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        });
    }

    /// Copies `root/rel` (following symlinks: sonames are links in the .debs).
    fn copy(&mut self, root: &Path, rel: &str, mode: u32) -> Result<(), ImageError> {
        let src = root.join(rel);
        let data = fs::read(&src).map_err(io_err("reading", &src))?;
        self.file(rel, mode, data);
        Ok(())
    }
}

/// Writes the gzip-compressed newc archive (gzip: the kernel's initramfs
/// decompressor always has it).
fn pack(entries: &[Entry], dst: &Path) -> Result<(), ImageError> {
    let out = fs::File::create(dst).map_err(io_err("creating", dst))?;
    let started = Instant::now();
    let mut gzip = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .map_err(|cause| ToolError::Spawn {
            command: "gzip -6 -n -c".into(),
            cause,
        })?;
    let mut archive = Vec::new();
    write_archive(&mut archive, entries).map_err(io_err("archiving into", dst))?;
    if let Some(mut stdin) = gzip.stdin.take() {
        stdin
            .write_all(&archive)
            .map_err(io_err("compressing", dst))?;
    }
    let status = gzip.wait().map_err(io_err("compressing", dst))?;
    if !status.success() {
        return Err(ToolError::Failed {
            command: "gzip -6 -n -c".into(),
            status,
            stderr: String::new(),
        }
        .into());
    }
    tracing::debug!(elapsed = ?started.elapsed(), "initramfs packed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> Vec<Pinned> {
        vec![Pinned {
            package: "busybox-static".into(),
            versions: vec!["1:1.35.0-4+b3".into()],
        }]
    }

    #[test]
    fn base_recipe_hashes_as_before_recipes_had_extras() {
        // The key `tiny` had before TinyRecipe existed: keeping it keeps
        // every store's cached tiny image valid.
        let mut h = Sha256::new();
        h.update(BUILDER_VERSION);
        h.update("\npkg busybox-static 1:1.35.0-4+b3");
        for f in [
            INIT,
            INITTAB,
            QGA_START,
            POWER_BUTTON,
            PROFILE,
            MODULES,
            CMDLINE,
        ] {
            h.update(format!("\nfile {}\n", f.len()));
            h.update(f);
        }
        assert_eq!(recipe_hash(&TINY, &pinned()), hex::encode(h.finalize()));
        assert_eq!(TINY.inittab(), INITTAB);
    }

    #[test]
    fn router_recipe_has_its_own_key_and_boot_lines() {
        assert_ne!(
            recipe_hash(&TINY_ROUTER, &pinned()),
            recipe_hash(&TINY, &pinned())
        );
        assert!(TINY_ROUTER
            .inittab()
            .ends_with("::sysinit:/bin/mkdir -p /run/bird\n"));
    }

    #[test]
    fn recipes_are_found_by_name() {
        assert_eq!(recipe("tiny"), Some(&TINY));
        assert_eq!(recipe("tiny-router"), Some(&TINY_ROUTER));
        assert_eq!(recipe("debian"), None);
    }

    #[test]
    fn builtin_names_are_the_agent_recipes() {
        let names: Vec<&str> = RECIPES.iter().map(|r| r.name).collect();
        assert_eq!(names, labspan_proto::image::BUILTIN);
    }
}
