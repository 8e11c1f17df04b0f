//! `load` and `load_bundle`: reading the lab file and the files it copies
//! into guests, with positions in the errors.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::path::{Path, PathBuf};

use labspan_proto::lab::{load, load_bundle, FileRef, LoadError, MAX_FILE_SIZE};

/// A scratch folder removed on drop, pass or fail.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("labspan-lab-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LAB: &str = "name: t\nnodes:\n  a:\n    image: tiny\n    files: {/etc/motd: motd.txt, /etc/issue: gone.txt}\n";

fn invalid(r: Result<impl std::fmt::Debug, LoadError>) -> String {
    match r {
        Err(LoadError::Invalid(d)) => d.to_string(),
        other => panic!("expected diagnostics, got {other:?}"),
    }
}

#[test]
fn bundle_reads_files_relative_to_the_lab_file() {
    let dir = Scratch::new("ok");
    dir.write("motd.txt", b"hello\n");
    dir.write("gone.txt", b"issue\n");
    let path = dir.write("lab.yaml", LAB.as_bytes());
    let loaded = load_bundle(&path).unwrap_or_else(|e| panic!("{e}"));
    let motd = &loaded.bundle.files["motd.txt"];
    assert_eq!(motd, &FileRef::of(b"hello\n"));
    assert_eq!(loaded.contents[&motd.sha256], b"hello\n");
    let issue = &loaded.bundle.files["gone.txt"];
    assert_eq!(loaded.contents[&issue.sha256], b"issue\n");
    assert_eq!(loaded.bundle.lab.nodes["a"].files["/etc/motd"], "motd.txt");
}

#[test]
fn a_lab_over_the_file_size_limit_is_refused_naming_the_limit() {
    let dir = Scratch::new("big");
    let big = vec![7u8; usize::try_from(MAX_FILE_SIZE).unwrap_or(0)];
    dir.write("motd.txt", &big);
    dir.write("gone.txt", &big[1..]);
    let lab = "name: t\nnodes:\n  a:\n    image: tiny\n    files: {/etc/motd: motd.txt, /etc/issue: gone.txt}\n  b:\n    image: tiny\n    files: {/etc/motd: third.txt, /etc/issue: fourth.txt}\n";
    dir.write("third.txt", &big[2..]);
    dir.write("fourth.txt", &big[3..]);
    let path = dir.write("lab.yaml", lab.as_bytes());
    let shown = invalid(load_bundle(&path));
    assert!(
        shown.contains("over the limit of 48 MiB per lab"),
        "{shown}"
    );
    dir.write("fourth.txt", &[big.as_slice(), b"!"].concat());
    let shown = invalid(load_bundle(&path));
    assert!(
        shown.contains("\"fourth.txt\" is 15.0 MiB, over the limit of 15 MiB for one guest file"),
        "{shown}"
    );
}

#[test]
fn missing_source_file_names_node_guest_path_and_host_path() {
    let dir = Scratch::new("missing");
    dir.write("motd.txt", b"hello\n");
    let path = dir.write("lab.yaml", LAB.as_bytes());
    let shown = path.display().to_string();
    let full = dir.0.join("gone.txt");
    assert_eq!(
        invalid(load_bundle(&path)),
        format!(
            "{shown}:5:46: nodes.a.files./etc/issue: cannot read \"gone.txt\" ({}): No such file or directory (os error 2)\n  help: create the file, or fix the path (relative to the lab file's folder)",
            full.display()
        )
    );
}

#[test]
fn unreadable_lab_file_is_a_read_error() {
    let err = load(Path::new("/nonexistent/labspan/lab.yaml"));
    assert!(
        matches!(&err, Err(LoadError::Read { path, .. }) if path == Path::new("/nonexistent/labspan/lab.yaml")),
        "{err:?}"
    );
}

#[test]
fn non_utf8_lab_file_points_at_the_bad_byte() {
    let dir = Scratch::new("utf8");
    let path = dir.write("lab.yaml", b"name: t\nnodes: {a\xff: {}}\n");
    assert_eq!(
        invalid(load(&path)),
        format!(
            "{}:2:10: the lab file is not UTF-8 text\n  help: save it as UTF-8",
            path.display()
        )
    );
}
