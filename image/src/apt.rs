//! The thin layer over `apt-cache`, `apt-get download` and `dpkg-deb` that
//! the tiny image builder uses. Parsing is pure and unit tested; the rest
//! only runs the tools.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::ImageError;

/// A Debian package pinned to the versions the archive can serve, newest
/// first (the builder downloads the first one that works: a mirror may list
/// a version whose file it does not have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub package: String,
    pub versions: Vec<String>,
}

/// Runs a tool ([`labspan_tool`]) and returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    Ok(labspan_tool::stdout_of(cmd)?)
}

/// The versioned kernel package that `linux-image-cloud-amd64` points at.
pub fn cloud_kernel_package() -> Result<String, ImageError> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    parse_depends(&out)
        .into_values()
        .flatten()
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-cloud-amd64"))
        .ok_or_else(|| ImageError::Resolve {
            detail: "linux-image-cloud-amd64 depends on no linux-image-*-cloud-amd64 \
                     package; run `apt-get update`"
                .into(),
        })
}

/// `roots` plus every library package they depend on, transitively. Only
/// `lib*` and `zlib*` dependencies are followed: the guest needs shared
/// libraries, not the maintainer-script machinery (perl, dpkg) that a full
/// dependency closure drags in.
pub fn library_closure(roots: &[&str]) -> Result<Vec<String>, ImageError> {
    // One recursive query (apt-cache takes about a second per call, most of
    // it loading its indexes), then the lib-only walk here.
    let out = run(Command::new("apt-cache")
        .args(["depends", "--recurse", "--no-recommends", "--no-suggests"])
        .args([
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(roots))?;
    Ok(lib_walk(roots, &parse_depends(&out)))
}

/// The walk behind `library_closure`, over parsed `apt-cache depends` output.
pub fn lib_walk(roots: &[&str], deps: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut seen: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
    let mut i = 0;
    while i < seen.len() {
        for dep in deps.get(&seen[i]).into_iter().flatten() {
            let is_lib = dep.starts_with("lib") || dep.starts_with("zlib");
            if is_lib && !seen.contains(dep) {
                seen.push(dep.clone());
            }
        }
        i += 1;
    }
    seen
}

/// Pins each package to the versions the configured archives can serve.
pub fn pin(packages: &[String]) -> Result<Vec<Pinned>, ImageError> {
    let out = run(Command::new("apt-cache").arg("policy").args(packages))?;
    let table = parse_policy(&out);
    packages
        .iter()
        .map(|p| match table.get(p) {
            Some(v) if !v.is_empty() => Ok(Pinned {
                package: p.clone(),
                versions: v.clone(),
            }),
            _ => Err(ImageError::Resolve {
                detail: format!(
                    "package {p} has no downloadable version in the configured apt \
                     sources; run `apt-get update`"
                ),
            }),
        })
        .collect()
}

/// Downloads every package into `dir`: all at once at their newest
/// version first (apt-get takes about a second to start), then one by one,
/// trying older versions, for those the mirror did not serve. Returns
/// `package=version` for each.
pub fn download_all(pkgs: &[Pinned], dir: &Path) -> Result<Vec<String>, ImageError> {
    let newest: Vec<String> = pkgs
        .iter()
        .filter_map(|p| Some(format!("{}={}", p.package, p.versions.first()?)))
        .collect();
    if apt_download(&newest, dir).is_ok() {
        return Ok(newest);
    }
    let have = downloaded(dir)?;
    let mut got = Vec::new();
    for p in pkgs {
        match have.iter().find(|(name, _)| name == &p.package) {
            Some((_, file)) if file_has_version(file, p.versions.first()) => {
                got.push(format!("{}={}", p.package, p.versions[0]));
            }
            _ => got.push(format!("{}={}", p.package, download(p, dir)?)),
        }
    }
    Ok(got)
}

/// Downloads one version of `pkg` into `dir`, trying each pinned version in
/// turn; returns the version fetched.
pub fn download(pkg: &Pinned, dir: &Path) -> Result<String, ImageError> {
    let mut last = None;
    for v in &pkg.versions {
        match apt_download(&[format!("{}={}", pkg.package, v)], dir) {
            Ok(()) => return Ok(v.clone()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ImageError::Resolve {
        detail: format!("package {} has no version to download", pkg.package),
    }))
}

fn apt_download(specs: &[String], dir: &Path) -> Result<(), ImageError> {
    run(Command::new("apt-get")
        .current_dir(dir)
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .args(specs))
    .map(|_| ())
}

/// (package, file name) of the .debs in `dir`: apt names them
/// `PACKAGE_VERSION_ARCH.deb`, and package names have no '_'.
fn downloaded(dir: &Path) -> Result<Vec<(String, String)>, ImageError> {
    let rd = std::fs::read_dir(dir).map_err(super::io_err("listing", dir))?;
    Ok(rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".deb"))
        .filter_map(|f| Some((f.split('_').next()?.to_string(), f.clone())))
        .collect())
}

/// Whether a .deb file name carries `version` (apt writes ':' as "%3a").
fn file_has_version(file: &str, version: Option<&String>) -> bool {
    version.is_some_and(|v| file.split('_').nth(1) == Some(&v.replace(':', "%3a")))
}

/// Unpacks a .deb's files into `root`.
pub fn extract(deb: &Path, root: &Path) -> Result<(), ImageError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root)).map(|_| ())
}

/// Parses `apt-cache depends` output: package → its Depends/PreDepends (the
/// first of each alternative group; virtual `<pkg>` entries skipped).
pub fn parse_depends(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_alternative = false;
    for line in out.lines() {
        if !line.starts_with(' ') {
            current = Some(line.trim().to_string());
            map.entry(line.trim().to_string()).or_default();
            in_alternative = false;
            continue;
        }
        let t = line.trim();
        // "|Depends: a" starts a group of alternatives continued by the next
        // line; only its first member is taken.
        let (alt, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let dep = rest
            .strip_prefix("Depends: ")
            .or_else(|| rest.strip_prefix("PreDepends: "));
        let skip = in_alternative;
        in_alternative = alt;
        let (Some(dep), Some(cur)) = (dep, current.as_ref()) else {
            continue;
        };
        if skip || dep.starts_with('<') {
            continue;
        }
        let name = dep.split(':').next().unwrap_or(dep).to_string();
        map.entry(cur.clone()).or_default().push(name);
    }
    map
}

/// Parses `apt-cache policy` output: package → versions with a download
/// source, in the order apt lists them (newest first). Versions known only
/// from `/var/lib/dpkg/status` (installed, not downloadable) are left out.
pub fn parse_policy(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pkg: Option<String> = None;
    let mut version: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(' ') {
            pkg = line.trim().strip_suffix(':').map(str::to_string);
            version = None;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let starred = line.trim_start().starts_with("*** ");
        let t = line.trim_start().trim_start_matches("*** ");
        let Some(p) = pkg.as_ref() else { continue };
        if indent == 5 || starred {
            version = t.split_whitespace().next().map(str::to_string);
        } else if indent >= 8 && !t.contains("/var/lib/dpkg/status") {
            if let Some(v) = version.take() {
                map.entry(p.clone()).or_default().push(v);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_skips_installed_only_versions() {
        let out = "libpcre2-8-0:\n  Installed: 10.42-1+deb12u1\n  Candidate: 10.42-1+deb12u1\n  Version table:\n *** 10.42-1+deb12u1 100\n        100 /var/lib/dpkg/status\n     10.42-1 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\nqemu-guest-agent:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b2\n  Version table:\n     1:7.2+dfsg-7+deb12u18+b2 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n     1:7.2+dfsg-7+deb12u15 500\n        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n";
        let m = parse_policy(out);
        assert_eq!(m["libpcre2-8-0"], vec!["10.42-1"]);
        assert_eq!(
            m["qemu-guest-agent"],
            vec!["1:7.2+dfsg-7+deb12u18+b2", "1:7.2+dfsg-7+deb12u15"]
        );
    }

    #[test]
    fn policy_keeps_installed_version_that_is_also_downloadable() {
        let out = "libc6:\n  Installed: 2.36\n  Candidate: 2.36\n  Version table:\n *** 2.36 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n        100 /var/lib/dpkg/status\n";
        assert_eq!(parse_policy(out)["libc6"], vec!["2.36"]);
    }

    #[test]
    fn walk_follows_only_library_edges() {
        let out = "qemu-guest-agent\n  PreDepends: init-system-helpers\n  Depends: libc6\n  Depends: libglib2.0-0\ninit-system-helpers\n  Depends: libperl-stuff\nlibglib2.0-0\n  Depends: libc6\n  Depends: zlib1g\nlibc6\n  Depends: libgcc-s1\nlibgcc-s1\n  Depends: gcc-12-base\n";
        let got = lib_walk(&["qemu-guest-agent"], &parse_depends(out));
        assert_eq!(
            got,
            vec![
                "qemu-guest-agent",
                "libc6",
                "libglib2.0-0",
                "libgcc-s1",
                "zlib1g"
            ]
        );
    }

    #[test]
    fn depends_takes_first_alternative_and_skips_virtual() {
        let out = "qemu-guest-agent\n  PreDepends: init-system-helpers\n  Depends: libc6\n  Depends: <perl:any>\n |Depends: liba\n  Depends: libb\n  Depends: libglib2.0-0\n  Recommends: foo\nlibc6\n  Depends: libgcc-s1\n";
        let m = parse_depends(out);
        assert_eq!(
            m["qemu-guest-agent"],
            vec!["init-system-helpers", "libc6", "liba", "libglib2.0-0"]
        );
        assert_eq!(m["libc6"], vec!["libgcc-s1"]);
    }
}
