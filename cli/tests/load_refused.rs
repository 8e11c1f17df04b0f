//! `labspan load` of an archive it must not trust: a newer
//! format version, a truncated archive, a member that differs from its
//! manifest, a file that is no archive, an image that is not the build
//! the archive names or that it lists but does not hold. Each is refused
//! before any cluster is asked (exit 2, the file and the fault named), and
//! nothing is left in the scratch folder it unpacks into.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// `labspan load FILE` with `scratch` as its temporary folder, against a
/// cluster file that does not exist: an archive that passed its checks
/// would fail there, saying so.
fn load(file: &Path, scratch: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labspan"))
        .arg("load")
        .arg(file)
        .env("LABSPAN_CLUSTER", scratch.join("no.cluster"))
        .env("TMPDIR", scratch)
        .env_remove("LABSPAN_LOG")
        .output()
        .expect("run labspan")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// An archive as `labspan save` writes it: its manifest (with `version`),
/// then each member; `lie` changes a member's bytes after it was listed.
fn archive(version: u32, lie: bool) -> Vec<u8> {
    // Not all alike: compressed, it still spans several zstd blocks.
    let ram: Vec<u8> = (0..800_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    let members = vec![
        ("lab.bundle".to_string(), b"bundle".to_vec()),
        ("checkpoint/p/ram".to_string(), ram),
    ];
    archive_of(version, serde_json::json!({"lab": "t"}), members, lie)
}

/// An archive whose manifest says `content` and lists `members`.
fn archive_of(
    version: u32,
    content: serde_json::Value,
    members: Vec<(String, Vec<u8>)>,
    lie: bool,
) -> Vec<u8> {
    let listed: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .map(|(name, data)| {
            let entry = serde_json::json!({
                "bytes": data.len(),
                "sha256": hex::encode(Sha256::digest(data)),
            });
            (name.to_string(), entry)
        })
        .collect();
    let manifest = serde_json::json!({
        "format": "labspan-lab-archive",
        "version": version,
        "content": content,
        "members": listed,
    });
    let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).expect("zstd"));
    let json = serde_json::to_vec(&manifest).expect("json");
    let mut all = vec![("labspan-archive.json".to_string(), json)];
    all.extend(members);
    for (name, mut data) in all {
        if lie && name == "checkpoint/p/ram" {
            data[1000] ^= 1;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_slice()).expect("tar");
    }
    tar.into_inner().expect("tar").finish().expect("zstd")
}

/// `bytes` as an archive is refused with `says`, naming the file, and
/// leaves nothing in the scratch folder.
fn refused(bytes: &[u8], says: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    let file = dir.path().join("lab.labspan");
    std::fs::write(&file, bytes).expect("archive");
    let out = load(&file, &scratch);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{says}: {t}");
    assert!(t.contains(says), "expected {says:?}: {t}");
    assert!(
        t.contains(&file.display().to_string()),
        "the file is named: {t}"
    );
    assert!(!t.contains("no.cluster"), "refused before any cluster: {t}");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{says}: left behind {left:?}");
}

#[test]
fn a_newer_format_version_is_refused() {
    refused(
        &archive(2, false),
        "archive format version 2 is newer than this labspan reads (up to 1)",
    );
}

#[test]
fn a_truncated_archive_is_refused() {
    let whole = archive(1, false);
    refused(&whole[..whole.len() - 100], "the archive is truncated");
    refused(&whole[..whole.len() / 2], "the archive is truncated");
}

#[test]
fn a_member_that_does_not_match_its_hash_is_refused() {
    refused(
        &archive(1, true),
        "the archive is corrupt: member \"checkpoint/p/ram\" holds 800000 bytes of sha256",
    );
}

#[test]
fn a_file_that_is_no_archive_is_refused() {
    refused(b"name: lab\nnodes: {}\n", "lab.labspan");
}

#[test]
fn a_whole_archive_that_holds_no_lab_is_refused() {
    // Every member matches its manifest: what it holds is checked next.
    refused(&archive(1, false), "its manifest: missing field");
}

/// An archive of lab "t" holding image "x" (store hash `hash`) as
/// `files`, and naming its digest `digest`.
fn with_image(hash: &str, digest: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let content = serde_json::json!({
        "lab": "t",
        "bundle": "lab.bundle",
        "files": {},
        "images": {"x": digest},
        "image_objects": {"x": hash},
        "checkpoint": {"name": "s1", "created_unix": 0, "nodes": {}, "frozen_ms": 0, "total_ms": 0},
        "checkpoint_files": {},
    });
    let mut members = vec![("lab.bundle".to_string(), b"bundle".to_vec())];
    for (name, data) in files {
        members.push((format!("images/objects/{hash}/{name}"), data.to_vec()));
    }
    archive_of(1, content, members, false)
}

#[test]
fn an_image_that_is_not_the_build_the_archive_names_is_refused() {
    let hash = "a".repeat(64);
    let manifest = br#"{"name":"x","hash":"aaaa","disk":"disk.qcow2","cmdline":"","guest":{"kind":"imported","guest_agent":false},"recipe":[]}"#;
    refused(
        &with_image(
            &hash,
            &"0".repeat(64),
            &[
                ("manifest.json", manifest),
                ("disk.qcow2", b"not the image"),
            ],
        ),
        "image \"x\" in it has digest",
    );
}

#[test]
fn an_image_the_archive_lists_but_does_not_hold_is_refused() {
    let hash = "a".repeat(64);
    refused(
        &with_image(&hash, &"0".repeat(64), &[("disk.qcow2", b"half an image")]),
        &format!("it lists image \"x\" as {hash} but holds no whole copy of it"),
    );
}
