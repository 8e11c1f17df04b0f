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
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use labspan_proto::lab::units::parse_size_mib;
use labspan_proto::yaml::{
    self, check_keys, missing, want_map, want_seq, want_str, Diagnostics, Pos, Shape, Sink,
};
use marked_yaml::Node;
use sha2::{Digest, Sha256};

use super::apt;
use super::{check_name, io_err, GuestKind, Image, ImageError, ImageStore, Manifest};
use crate::BuildReport;
use labspan_tool::ToolError;

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

/// A recipe file: `{name: debian-sip, suite: bookworm, packages: [...], size: 2GiB}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The image's name in the store (`image:` in lab files).
    pub name: String,
    /// Debian suite [default: bookworm].
    pub suite: String,
    /// Packages added to the base set (kernel, systemd, qemu-guest-agent, iproute2, ping, udev).
    pub packages: Vec<String>,
    /// Filesystem size: `2GiB`, `1500MiB` [default: 2GiB].
    pub size: String,
    /// Units left disabled at boot: services that need the lab's
    /// configuration first (the lab's `exec` starts them).
    pub disable: Vec<String>,
    /// Debian mirror [default: the host's apt source for the suite].
    pub mirror: Option<String>,
}

/// The keys a recipe may have.
const RECIPE_KEYS: &[&str] = &["name", "suite", "packages", "size", "disable", "mirror"];

/// What a recipe's top level must be.
const RECIPE_FILE: Shape = Shape {
    what: "the image recipe",
    start: "start with name: my-image, then packages:",
    no_anchors: "write each value out",
};

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<(Recipe, Vec<u8>), ImageError> {
        let bytes = fs::read(path).map_err(io_err("reading the image recipe", path))?;
        let bad = |detail: String| ImageError::Recipe {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| bad(e.to_string()))?;
        let recipe = Recipe::parse(&path.display().to_string(), text)
            .map_err(|problems| bad(format!("\n{problems}")))?;
        Ok((recipe, bytes))
    }

    /// Parses and checks a recipe's text (`file` names it in problems),
    /// the way a lab file is read: every problem at once, each with its
    /// line, column and key.
    pub fn parse(file: &str, text: &str) -> Result<Recipe, Diagnostics> {
        let mut sink = Sink::new(file);
        let recipe =
            yaml::load(&mut sink, text, RECIPE_FILE).and_then(|root| read(&mut sink, &root));
        match recipe {
            Some(recipe) if sink.is_clean() => Ok(recipe),
            _ => Err(sink.finish()),
        }
    }
}

fn read(sink: &mut Sink, root: &Node) -> Option<Recipe> {
    let top = want_map(sink, root, "", "a mapping with name, packages, ...")?;
    check_keys(sink, top, "", RECIPE_KEYS);
    let name = match top.get_node("name") {
        Some(n) => want_str(sink, n, "name", "the image's name").filter(|name| {
            let problem = check_name(name).err();
            if let Some(e) = &problem {
                sink.error(Pos::of(n), "name", e.to_string(), None);
            }
            problem.is_none()
        }),
        None => {
            missing(sink, top, "", "name", "name: debian-sip");
            None
        }
    };
    let suite = top.get_node("suite").map_or(Some("bookworm"), |n| {
        plain(sink, n, "suite", "a Debian suite name")
    });
    let size = top.get_node("size").map_or(Some("2GiB"), |n| {
        let text = want_str(sink, n, "size", "a size like 2GiB")?;
        match size_mib(text) {
            Ok(_) => Some(text),
            Err(why) => {
                sink.error(Pos::of(n), "size", why, None);
                None
            }
        }
    });
    let packages = names(sink, top.get_node("packages"), "packages", "a package name");
    let disable = names(sink, top.get_node("disable"), "disable", "a unit name");
    let mirror = top
        .get_node("mirror")
        .map(|n| want_str(sink, n, "mirror", "a Debian mirror's URL"));
    Some(Recipe {
        name: name?.to_string(),
        suite: suite?.to_string(),
        packages: packages?,
        size: size?.to_string(),
        disable: disable?,
        mirror: match mirror {
            Some(url) => Some(url?.to_string()),
            None => None,
        },
    })
}

/// A name apt or systemd takes as one word (never an option).
fn plain<'n>(sink: &mut Sink, n: &'n Node, path: &str, what: &str) -> Option<&'n str> {
    let text = want_str(sink, n, path, what)?;
    let ok = !text.starts_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.:_@".contains(&b));
    if !ok {
        sink.error(Pos::of(n), path, format!("\"{text}\" is not {what}"), None);
        return None;
    }
    Some(text)
}

/// A list of [`plain`] names, empty when the key is absent.
fn names(sink: &mut Sink, n: Option<&Node>, path: &str, what: &str) -> Option<Vec<String>> {
    let Some(n) = n else {
        return Some(Vec::new());
    };
    let items = want_seq(sink, n, path, &format!("a list of {what}s"))?;
    let mut out = Vec::new();
    let mut all = true;
    for (i, item) in items.iter().enumerate() {
        match plain(sink, item, &format!("{path}[{i}]"), what) {
            Some(name) => out.push(name.to_string()),
            None => all = false,
        }
    }
    all.then_some(out)
}

/// A recipe's disk size in MiB: the one size rule
/// ([`parse_size_mib`]), within what debootstrap and a guest need.
pub fn size_mib(s: &str) -> Result<u64, String> {
    let mib = parse_size_mib("size", s)?;
    if !(256..=65536).contains(&mib) {
        return Err(format!("size \"{s}\" is out of range (256MiB ..= 64GiB)"));
    }
    Ok(mib)
}

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
    apt::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-d"])
            .arg(&root)
            .args(["-L", "root"])
            .arg(&raw)
            .arg(format!("{mib}M")),
    )?;
    progress("converting to qcow2");
    apt::run(
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

/// The mirror the host's apt uses for `suite` (deb822 sources first, then
/// the one-line format).
pub fn host_mirror(suite: &str) -> Result<String, ImageError> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = fs::read_to_string(deb822) {
        if let Some(m) = mirror_from_deb822(&text, suite) {
            return Ok(m);
        }
    }
    let list = Path::new("/etc/apt/sources.list");
    if let Ok(text) = fs::read_to_string(list) {
        if let Some(m) = mirror_from_list(&text, suite) {
            return Ok(m);
        }
    }
    Err(ImageError::Resolve {
        detail: format!(
            "no apt source for suite {suite} in {} or {}: add `mirror: URL` to the recipe",
            deb822.display(),
            list.display()
        ),
    })
}

/// The first `URIs:` of a stanza whose `Suites:` has `suite`.
fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        let suites = field("Suites:")?;
        if !suites.split_whitespace().any(|s| s == suite) {
            return None;
        }
        field("URIs:")?
            .split_whitespace()
            .next()
            .map(str::to_string)
    })
}

/// The URI of the first `deb URI SUITE ...` line.
fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
        (w.next()? == "deb").then_some(())?;
        let uri = w.next()?;
        (w.next()? == suite).then(|| uri.to_string())
    })
}

/// Runs debootstrap in its two stages with dpkg tuned in between: the first
/// stage downloads and unpacks the base, the second (in the chroot) installs
/// everything with `force-unsafe-io` (no fsync per file: the tree becomes a
/// fresh filesystem anyway) and without documentation.
fn debootstrap(
    recipe: &Recipe,
    packages: &[String],
    mirror: &str,
    root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    progress(&format!(
        "debootstrap {} ({} packages named, dependencies added) from {mirror}",
        recipe.suite,
        packages.len()
    ));
    let command = format!("debootstrap {} {mirror}", recipe.suite);
    let mut first = Command::new("debootstrap");
    first
        .args(["--foreign", "--variant=minbase", "--include"])
        .arg(packages.join(","))
        .arg(&recipe.suite)
        .arg(root)
        .arg(mirror);
    let mut counts = Counts::default();
    run_streaming(&mut first, &command, root, &mut counts, progress)?;
    write(root, DPKG_BUILD_CFG, "force-unsafe-io\n")?;
    write(root, DPKG_NODOC_CFG, DPKG_NODOC)?;
    let mut second = Command::new("chroot");
    second
        .arg(root)
        .args(["/debootstrap/debootstrap", "--second-stage"]);
    if let Err(e) = run_streaming(&mut second, &command, root, &mut counts, progress) {
        // The second stage mounts /proc and /sys in the chroot; a failed one
        // may leave them, and the work folder is about to be deleted.
        for m in ["proc", "sys"] {
            let _ = Command::new("umount").arg("-l").arg(root.join(m)).output();
        }
        return Err(e);
    }
    fs::remove_file(root.join(DPKG_BUILD_CFG)).map_err(io_err("removing", root))
}

/// Runs one debootstrap stage, turning its output into progress lines; on
/// failure the error carries its last lines and those of its log.
fn run_streaming(
    cmd: &mut Command,
    command: &str,
    root: &Path,
    counts: &mut Counts,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ToolError::Spawn {
            command: command.to_string(),
            cause: std::io::Error::new(
                e.kind(),
                format!("{e} (install it: apt-get install debootstrap)"),
            ),
        })?;
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(msg) = counts.progress_line(&line) {
                progress(&msg);
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
    }
    let status = child
        .wait()
        .map_err(io_err("waiting for debootstrap in", root))?;
    let stderr = errors.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
    let log_tail: Vec<&str> = log.lines().rev().take(15).collect();
    Err(ToolError::Failed {
        command: command.to_string(),
        status,
        stderr: format!(
            "\n{}\n{}\n{}",
            tail.join("\n"),
            stderr.trim(),
            log_tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    }
    .into())
}

/// debootstrap prints one line per package and step; people want phases
/// and a count.
#[derive(Default)]
struct Counts {
    retrieved: usize,
    unpacked: usize,
    configured: usize,
}

impl Counts {
    fn progress_line(&mut self, line: &str) -> Option<String> {
        let rest = line.strip_prefix("I: ")?;
        let every = |n: usize, what: &str| {
            n.is_multiple_of(50)
                .then(|| format!("  {what} {n} packages"))
        };
        if rest.starts_with("Retrieving ")
            && !rest.contains("Release")
            && !rest.contains("Packages")
        {
            self.retrieved += 1;
            return every(self.retrieved, "downloaded");
        }
        if rest.starts_with("Validating ") || rest.starts_with("Extracting ") {
            return None;
        }
        // `Unpacking dash...` is one package; `Unpacking the base system...` a phase.
        let one_package = |verb: &str| {
            rest.strip_prefix(verb)
                .is_some_and(|r| !r.trim_end_matches('.').contains(' '))
        };
        if one_package("Unpacking ") {
            self.unpacked += 1;
            return every(self.unpacked, "unpacked");
        }
        if one_package("Configuring ") {
            self.configured += 1;
            return every(self.configured, "configured");
        }
        Some(format!("  {rest}"))
    }
}

/// Makes the debootstrapped tree a lab guest: root filesystem in fstab,
/// root logs in on the console, no housekeeping timers, the recipe's
/// services left stopped, a fresh machine id at each boot.
fn setup_guest(root: &Path, disable: &[String]) -> Result<(), ImageError> {
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

fn write(root: &Path, rel: &str, text: &str) -> Result<(), ImageError> {
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
fn kernel_version(root: &Path) -> Result<String, ImageError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_reads_with_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.yaml");
        fs::write(&p, "name: debian-sip\npackages: [bird2, bind9]\n").expect("write");
        let (r, _) = Recipe::load(&p).expect("load");
        assert_eq!(r.suite, "bookworm");
        assert_eq!(r.size, "2GiB");
        assert_eq!(r.packages, vec!["bird2", "bind9"]);

        fs::write(&p, "name: x\npackges: [bird2]\n").expect("write");
        let err = Recipe::load(&p).expect_err("unknown key").to_string();
        assert!(err.contains("packges"), "{err}");
        assert!(err.contains("r.yaml"), "{err}");

        fs::write(&p, "name: x\npackages: [\"--force-yes\"]\n").expect("write");
        assert!(Recipe::load(&p).is_err());
    }

    /// As a lab file: every problem at once, each at its line and key.
    #[test]
    fn every_recipe_problem_is_reported_with_its_place() {
        let text = "name: x\npackges: [bird2]\nsize: 10MiB\npackages: [ok, \"--force-yes\"]\n";
        let problems = Recipe::parse("r.yaml", text).expect_err("three problems");
        let lines: Vec<String> = problems
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.path, d.message))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("2: unknown key \"packges\""),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("3:size size \"10MiB\" is out of range"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("4:packages[1] \"--force-yes\""),
            "{lines:?}"
        );
        assert!(Recipe::parse("r.yaml", "").is_err());
    }

    #[test]
    fn the_demo_recipe_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demos/sip/image.yaml");
        let (recipe, _) = Recipe::load(&path).expect("demos/sip/image.yaml");
        assert_eq!(recipe.name, "debian-sip");
        assert!(
            recipe.packages.iter().any(|p| p == "kamailio"),
            "{recipe:?}"
        );
    }

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
    fn sizes() {
        assert_eq!(size_mib("2GiB"), Ok(2048));
        assert_eq!(size_mib("1.5GiB"), Ok(1536));
        assert_eq!(size_mib("1500M"), Ok(1500));
        assert_eq!(size_mib("1500"), Ok(1500));
        assert_eq!(size_mib("2gib"), Ok(2048));
        assert!(size_mib("2TB").is_err());
        assert!(size_mib("10MiB").is_err());
    }

    #[test]
    fn mirror_from_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(deb822, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(mirror_from_deb822(deb822, "trixie"), None);
        let list = "# x\ndeb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_list(list, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
    }

    #[test]
    fn hash_follows_recipe_and_versions() {
        let a = recipe_hash(b"name: x", "m", &["bird2=2.0.12".into()]);
        assert_eq!(a, recipe_hash(b"name: x", "m", &["bird2=2.0.12".into()]));
        assert_ne!(a, recipe_hash(b"name: y", "m", &["bird2=2.0.12".into()]));
        assert_ne!(a, recipe_hash(b"name: x", "m", &["bird2=2.0.13".into()]));
    }

    #[test]
    fn debootstrap_lines_become_phases_and_counts() {
        let mut c = Counts::default();
        assert_eq!(
            c.progress_line("I: Retrieving InRelease ").as_deref(),
            Some("  Retrieving InRelease ")
        );
        assert_eq!(c.progress_line("I: Validating libc6 2.36"), None);
        let mut last = None;
        for _ in 0..50 {
            last = c.progress_line("I: Retrieving libc6 2.36");
        }
        assert_eq!(last.as_deref(), Some("  downloaded 50 packages"));
        assert_eq!(c.progress_line("not info"), None);
        assert_eq!(c.progress_line("I: Unpacking dash..."), None);
        assert_eq!(
            c.progress_line("I: Unpacking the base system...")
                .as_deref(),
            Some("  Unpacking the base system...")
        );
    }
}
