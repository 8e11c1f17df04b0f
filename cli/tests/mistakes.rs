//! Answers to a user's mistakes that need no cluster and no root: a closed
//! pipe, settings from the environment, a flag that does not apply, and
//! log output that is not a terminal.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn labspan() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labspan"));
    cmd.env_remove("LABSPAN_CLUSTER")
        .env_remove("LABSPAN_ACCEL")
        .env_remove("LABSPAN_LOG");
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn ping_lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demos/ping/lab.yaml")
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // Far more lines than a pipe buffers, so the writes after `head` has
    // gone do fail.
    let lab = ping_lab();
    let mut child = labspan()
        .arg("validate")
        .args(std::iter::repeat_n(&lab, 5000))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run labspan");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read a line");
    // The reader closes its end, as `head -n 1` does.
    assert!(first.contains(": ok"), "{first}");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "quiet: {}", text(&out));
}

#[test]
fn an_empty_cluster_variable_is_named() {
    let out = labspan()
        .args(["inspect"])
        .env("LABSPAN_CLUSTER", "")
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("LABSPAN_CLUSTER") && t.contains("empty"), "{t}");
}

#[test]
fn a_missing_cluster_file_is_reported_once_with_its_origin_and_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nowhere.cluster");
    let out = labspan()
        .args(["down", "ping"])
        .env("LABSPAN_CLUSTER", &file)
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("from LABSPAN_CLUSTER"), "{t}");
    assert_eq!(t.matches("does not exist").count(), 1, "{t}");
    assert!(!t.contains("os error"), "{t}");
    assert!(t.contains("hint:"), "{t}");
}

#[test]
fn accel_is_refused_with_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = labspan()
        .args(["up", "--accel", "tcg", "--cluster"])
        .arg(dir.path().join("any.cluster"))
        .arg(ping_lab())
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--accel does not apply with a cluster"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("c1");
    // Nothing listens on port 1: the command logs its connection attempts.
    let init = labspan()
        .args(["cluster", "init", "--listen", "127.0.0.1:1", "--data"])
        .arg(&data)
        .output()
        .expect("run labspan");
    assert!(init.status.success(), "{}", text(&init));
    let mut child = labspan()
        .args(["inspect", "--cluster"])
        .arg(data.join("admin.cluster"))
        .env("LABSPAN_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run labspan");
    let mut log = vec![0u8; 4096];
    let mut stderr = child.stderr.take().expect("stderr");
    stderr.read_exact(&mut log).expect("some log lines");
    let _ = child.kill();
    let _ = child.wait();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
}

#[test]
fn a_lab_file_that_cannot_be_read_exits_2_as_validate_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("missing.yaml");
    for verb in ["validate", "up"] {
        let out = labspan()
            .args([verb, file.to_str().expect("utf-8 path")])
            .output()
            .expect("run labspan");
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{verb}: {t}");
        assert_eq!(t.matches("cannot read lab file").count(), 1, "{verb}: {t}");
    }
}
