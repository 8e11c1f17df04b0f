//! The SIP demo (demos/sip) end to end on one test host: eight Debian guests
//! under TCG (routers with bird2, bind9, slapd, Kamailio with LDAP, two sipp
//! phones), configured by the lab's `files` and `exec`, proven by its
//! `verify` checks. Then the same lab with a wrong password in alice's phone:
//! the REGISTER check must fail.
//!
//! One deployment serves both halves: re-applying the edited lab reconfigures
//! only phone1 in place, which saves a second boot of eight guests (minutes
//! under TCG on two cores).

use std::fs;
use std::path::{Path, PathBuf};

use labspan_tests::{text, TestHost};

/// The demo's folder in this tree.
fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demos/sip")
}

/// Copies the demo into the host's state folder for a one-host run: the
/// `placement` block goes (its `spread` needs two hosts) and every node gets
/// one vCPU (the demo's 11 exceed what one 2-core host may overcommit; under
/// TCG a second vCPU buys nothing there). Memory, files, exec and checks stay
/// as the demo has them.
fn one_host_copy(host: &TestHost) -> PathBuf {
    let src = demo_dir();
    let dst = host.state.join("sip-demo");
    fs::create_dir_all(dst.join("files")).expect("creating the demo copy");
    for entry in fs::read_dir(src.join("files")).expect("reading demos/sip/files") {
        let entry = entry.expect("listing demos/sip/files");
        fs::copy(entry.path(), dst.join("files").join(entry.file_name()))
            .expect("copying a demo file");
    }
    let lab = fs::read_to_string(src.join("lab.yaml")).expect("reading demos/sip/lab.yaml");
    let mut out = String::new();
    let mut in_placement = false;
    for line in lab.lines() {
        if line.starts_with("placement:") {
            in_placement = true;
            continue;
        }
        if in_placement && line.starts_with(' ') {
            continue;
        }
        in_placement = false;
        out.push_str(if line == "    cpus: 2" {
            "    cpus: 1"
        } else {
            line
        });
        out.push('\n');
    }
    let path = dst.join("lab.yaml");
    fs::write(&path, out).expect("writing the one-host lab file");
    path
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

#[test]
fn sip_demo_passes_its_checks_and_a_wrong_ldap_password_fails_register() {
    let host = TestHost::new("sip");
    host.ensure_image(demo_dir().join("image.yaml").to_str().expect("utf-8 path"));
    let lab = one_host_copy(&host);
    let lab_arg = lab.to_str().expect("utf-8 path");

    let up = host.labspan(&["up", lab_arg]);
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

    // alice's phone now holds a password LDAP does not have.
    let conf = lab.parent().expect("lab folder").join("files/phone1.conf");
    let good = fs::read_to_string(&conf).expect("reading phone1.conf");
    assert!(good.contains("SIP_PASSWORD=alice-secret-1"), "{good}");
    fs::write(
        &conf,
        good.replace("SIP_PASSWORD=alice-secret-1", "SIP_PASSWORD=not-in-ldap"),
    )
    .expect("editing phone1.conf");
    let again = host.labspan(&["up", lab_arg]);
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

    let down = host.labspan(&["down", "sip"]);
    assert!(down.status.success(), "labspan down sip:\n{}", text(&down));
}
