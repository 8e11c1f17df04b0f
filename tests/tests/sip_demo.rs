//! The SIP demo (demos/sip) end to end over a local 3-host cluster made by
//! `deploy/cluster.sh` (the README's main command does the same): eight
//! Debian guests under TCG (routers with bird2, bind9, slapd, Kamailio with
//! LDAP, two baresip softphones), 12.5 GiB of guest memory where each host offers
//! a third of this machine, so placement spreads the lab and the SIP traffic
//! crosses hosts over VXLAN. The lab file is the demo's, unchanged; its
//! `verify` checks prove it works. Then the same lab with a wrong password
//! in alice's phone: the REGISTER check must fail.
//!
//! One deployment serves both halves: re-applying the edited lab reconfigures
//! only phone1 in place, which saves a second boot of eight guests (minutes
//! under TCG on two cores).

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::{build_image, text};

/// The demo's folder in this tree.
fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demos/sip")
}

/// A copy of the demo (lab file and guest files, unchanged) in the
/// cluster's state folder, so the test may edit it.
fn demo_copy(cluster: &LocalCluster) -> PathBuf {
    let src = demo_dir();
    let lab = cluster.write_file(
        "sip-lab.yaml",
        &fs::read_to_string(src.join("lab.yaml")).expect("reading demos/sip/lab.yaml"),
    );
    let files = lab.with_file_name("files");
    fs::create_dir_all(&files).expect("creating the demo copy");
    for entry in fs::read_dir(src.join("files")).expect("reading demos/sip/files") {
        let entry = entry.expect("listing demos/sip/files");
        fs::copy(entry.path(), files.join(entry.file_name())).expect("copying a demo file");
    }
    lab
}

/// The `verify` line of the check whose command is `cmd` on `node`.
fn check_line<'a>(out: &'a str, node: &str, cmd: &str) -> &'a str {
    let needle = format!("exec {node}: {cmd} ");
    out.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no check `{node}: {cmd}` in the output:\n{out}"))
}

fn passed(line: &str) -> bool {
    line.trim_start().starts_with("PASS")
}

/// Node → host, from `labspan inspect sip`.
fn placement(cluster: &LocalCluster) -> Vec<(String, String)> {
    let out = cluster.labspan(&["inspect", "sip"]);
    assert!(out.status.success(), "labspan inspect sip: {}", text(&out));
    text(&out)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 3 && cols[0] == "sip")
                .then(|| (cols[1].to_string(), cols[2].to_string()))
        })
        .collect()
}

#[test]
fn sip_demo_over_three_hosts_passes_its_checks_and_a_wrong_ldap_password_fails_register() {
    build_image(demo_dir().join("image.yaml").to_str().expect("utf-8 path"));
    let cluster = LocalCluster::up("sip", 3);
    let lab = demo_copy(&cluster);
    let lab_arg = lab.to_str().expect("utf-8 path");

    let up = cluster.labspan(&["up", lab_arg]);
    let out = text(&up);
    // The check table with its timings, for the CI log (`--nocapture`).
    eprintln!("{out}");
    assert!(
        up.status.success(),
        "labspan up (the SIP demo) failed:\n{out}"
    );
    assert_eq!(
        out.matches("PASS").count(),
        15,
        "every check passes:\n{out}"
    );
    for (node, cmd) in [
        ("r1", "sh /usr/local/sbin/ospf-check"),
        ("phone2", "sh /usr/local/sbin/reach-all"),
        ("phone1", "sh /usr/local/sbin/sip-register"),
        ("phone2", "sh /usr/local/sbin/sip-register"),
        ("phone1", "sh /usr/local/sbin/sip-register --wrong-password"),
        ("phone1", "sh /usr/local/sbin/sip-call bob"),
    ] {
        assert!(passed(check_line(&out, node, cmd)), "{node}: {cmd}:\n{out}");
    }
    let placed = placement(&cluster);
    assert_eq!(placed.len(), 8, "eight nodes placed: {placed:?}");
    let hosts: BTreeSet<&str> = placed.iter().map(|(_, h)| h.as_str()).collect();
    assert!(
        hosts.len() >= 2,
        "12.5 GiB cannot fit one host: the lab is spread: {placed:?}"
    );
    let host_of = |node: &str| placed.iter().find(|(n, _)| n == node).map(|(_, h)| h);
    assert_ne!(
        host_of("phone1"),
        host_of("phone2"),
        "spread: the phones run on different hosts"
    );

    // alice's phone now holds a password LDAP does not have.
    let conf = lab.with_file_name("files").join("phone1.conf");
    let good = fs::read_to_string(&conf).expect("reading phone1.conf");
    assert!(good.contains("SIP_PASSWORD=alice-secret-1"), "{good}");
    fs::write(
        &conf,
        good.replace("SIP_PASSWORD=alice-secret-1", "SIP_PASSWORD=not-in-ldap"),
    )
    .expect("editing phone1.conf");
    let again = cluster.labspan(&["up", lab_arg]);
    let out = text(&again);
    eprintln!("{out}");
    assert!(
        !again.status.success(),
        "a wrong password must make `labspan up` fail:\n{out}"
    );
    let alice = check_line(&out, "phone1", "sh /usr/local/sbin/sip-register");
    assert!(!passed(alice), "alice's REGISTER must fail:\n{out}");
    let bob = check_line(&out, "phone2", "sh /usr/local/sbin/sip-register");
    assert!(passed(bob), "bob's REGISTER is not affected:\n{out}");
    assert!(
        out.contains("REGISTER alice@sip.test failed"),
        "the failure says why:\n{out}"
    );

    let down = cluster.labspan(&["down", "sip"]);
    assert!(down.status.success(), "labspan down sip:\n{}", text(&down));
    for i in 1..=3 {
        assert_eq!(
            cluster.leftovers(i),
            Vec::<String>::new(),
            "host {i} keeps nothing of the lab"
        );
    }
}
