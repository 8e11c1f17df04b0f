//! `labspan import clab` as a user runs it: a containerlab topology in, a
//! lab file out that `labspan validate` accepts; a topology that cannot be
//! imported exits 2, names the node and the field, and writes nothing.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::process::{Command, Output};

fn labspan() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labspan"));
    cmd.env_remove("LABSPAN_CLUSTER").env_remove("LABSPAN_LOG");
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

const TOPOLOGY: &str = r#"
name: clos
topology:
  defaults:
    kind: linux
  kinds:
    juniper_vmx:
      image: vrnetlab/juniper_vmx:23.2
  nodes:
    spine: {kind: juniper_vmx}
    leaf1: {kind: vr-veos}
    h1: {image: alpine:3.20}
  links:
    - endpoints: ["spine:eth1", "leaf1:eth1"]
    - type: veth
      endpoints:
        - {node: leaf1, interface: eth2}
        - {node: h1, interface: eth1, ipv4: 198.19.1.1/24}
"#;

#[test]
fn a_topology_becomes_a_lab_file_that_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("clos.clab.yml");
    std::fs::write(&topo, TOPOLOGY).expect("write topology");
    let lab = dir.path().join("lab.yaml");
    let out = labspan()
        .args(["import", "clab"])
        .arg(&topo)
        .arg("-o")
        .arg(&lab)
        .args(["--image", "juniper_vmx=/srv/vmx-23.2.qcow2"])
        .args(["--image", "vr-veos=veos"])
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("3 nodes, 2 links"), "{t}");
    assert!(
        t.contains("labspan image import /srv/vmx-23.2.qcow2 --name vmx-23.2"),
        "{t}"
    );
    let out = labspan().arg("validate").arg(&lab).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("ok (3 nodes, 2 segments)"),
        "{}",
        text(&out)
    );
    let written = std::fs::read_to_string(&lab).expect("lab file");
    assert!(
        written.contains("\"vmx-23.2\"") && written.contains("198.19.1.1/24"),
        "{written}"
    );

    // Without -o the lab goes to standard output.
    let out = labspan()
        .args(["import", "clab"])
        .arg(&topo)
        .args(["--image", "juniper_vmx=vmx", "--image", "vr-veos=veos"])
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"name\": \"clos\""));
}

#[test]
fn what_cannot_be_imported_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("bad.clab.yml");
    std::fs::write(
        &topo,
        "name: bad\ntopology:\n  nodes:\n    h1:\n      kind: linux\n      mgmt-ipv4: 172.20.20.5\n    srl: {kind: nokia_srlinux}\n",
    )
    .expect("write topology");
    let lab = dir.path().join("lab.yaml");
    let out = labspan()
        .args(["import", "clab"])
        .arg(&topo)
        .arg("-o")
        .arg(&lab)
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("bad.clab.yml:6:18: topology.nodes.h1.mgmt-ipv4: node \"h1\""),
        "{t}"
    );
    assert!(
        t.contains("kind \"nokia_srlinux\" runs only as a container"),
        "{t}"
    );
    assert!(!lab.exists(), "nothing written");

    let out = labspan()
        .args(["import", "clab", "/nonexistent.clab.yml"])
        .output()
        .expect("run labspan");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot read /nonexistent.clab.yml"));
}
