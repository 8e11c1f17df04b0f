//! debootstrap in its two stages, its output turned into progress lines.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use labspan_tool::ToolError;

use super::setup::write;
use super::{Recipe, DPKG_BUILD_CFG, DPKG_NODOC, DPKG_NODOC_CFG};
use crate::{io_err, ImageError};

/// Runs debootstrap in its two stages with dpkg tuned in between: the first
/// stage downloads and unpacks the base, the second (in the chroot) installs
/// everything with `force-unsafe-io` (no fsync per file: the tree becomes a
/// fresh filesystem anyway) and without documentation.
pub(super) fn debootstrap(
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
            let _ = labspan_tool::run(Command::new("umount").arg("-l").arg(root.join(m)));
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

#[cfg(test)]
mod tests {
    use super::*;

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
