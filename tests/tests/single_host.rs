//! `labspan up` on the embedded default, end to end: real QEMU guests under
//! TCG, real bridges and taps, checks run inside the guests.

use labspan_proto::names;
use labspan_testutil::process;
use std::process::Stdio;
use std::time::Duration;

use labspan_tests::{qmp, qmp_status, text, write_lab, TestHost};

const TRIO: &str = r#"
name: trio
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.10.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.10.2/24]}, eth1: {ip: [198.19.11.2/24]}}}
  c: {nics: {eth1: {ip: [198.19.11.3/24]}}}
links:
  - [a:eth0, b:eth0]
lans:
  back: [b:eth1, c:eth1]
verify:
  - ping: {from: a, to: 198.19.10.2}
  - ping: {from: c, to: b}
  - exec: {node: b, cmd: "ip -o addr show dev eth1", expect: "198\\.19\\.11\\.2/24"}
"#;

#[test]
fn three_guests_on_two_segments_reach_their_neighbours_only() {
    let host = TestHost::new("trio");
    host.ensure_tiny();
    let lab = write_lab(&host, "trio.yaml", TRIO);
    let up = host.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    let out = text(&up);
    assert!(up.status.success(), "labspan up failed:\n{out}");
    assert_eq!(out.matches("PASS").count(), 3, "{out}");

    // From inside the guests: b reaches both segments, a does not reach c's.
    let ping = |node: &str, addr: &str| {
        host.labspan(&[
            "exec", "trio", node, "--", "ping", "-c", "1", "-W", "2", addr,
        ])
    };
    assert!(ping("b", "198.19.11.3").status.success(), "b -> c");
    assert!(ping("b", "198.19.10.1").status.success(), "b -> a");
    let cross = ping("a", "198.19.11.3");
    assert!(
        !cross.status.success(),
        "a must not reach c's segment: {}",
        text(&cross)
    );
}

#[test]
fn down_leaves_no_interface_process_socket_or_overlay() {
    let host = TestHost::new("down");
    host.ensure_tiny();
    let lab = write_lab(&host, "trio.yaml", TRIO);
    let up = host.labspan(&["up", "--no-verify", lab.to_str().expect("utf-8 path")]);
    assert!(up.status.success(), "labspan up failed:\n{}", text(&up));
    let pids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .filter_map(|n| host.qemu_pid("trio", n))
        .collect();
    assert_eq!(pids.len(), 3, "three QEMUs run");
    assert!(!host.labspan_links().is_empty());
    assert!(host.vm_files().iter().any(|f| f.ends_with("qmp.sock")));

    // A typo is an error that names the lab meant, and stops nothing.
    let typo = host.labspan(&["down", "tiro"]);
    assert_eq!(typo.status.code(), Some(2), "{}", text(&typo));
    assert!(
        text(&typo).contains("did you mean \"trio\""),
        "{}",
        text(&typo)
    );
    let still: Vec<u32> = ["a", "b", "c"]
        .iter()
        .filter_map(|n| host.qemu_pid("trio", n))
        .collect();
    assert_eq!(still, pids, "a down of a misspelt lab stops nothing");

    let down = host.labspan(&["down", "trio"]);
    assert!(
        down.status.success(),
        "labspan down failed:\n{}",
        text(&down)
    );
    assert_eq!(
        host.labspan_links(),
        Vec::<String>::new(),
        "interfaces left"
    );
    assert!(
        pids.iter().all(|p| !labspan_tests::is_qemu(*p)),
        "QEMU left running"
    );
    assert_eq!(
        host.vm_files(),
        Vec::<std::path::PathBuf>::new(),
        "files left (sockets, overlays, pidfiles)"
    );
    let inspect = host.labspan(&["inspect", "trio"]);
    assert_eq!(
        inspect.status.code(),
        Some(2),
        "the lab is forgotten: {}",
        text(&inspect)
    );

    // A second down is an error, unless a script says a missing lab is fine.
    let again = host.labspan(&["down", "trio"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("not deployed"), "{}", text(&again));
    let scripted = host.labspan(&["down", "trio", "--ignore-missing"]);
    assert!(
        scripted.status.success() && text(&scripted).contains("nothing to do"),
        "{}",
        text(&scripted)
    );
}

const PAIR_V1: &str = r#"
name: pair
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.20.1/24]}, eth1: {ip: [198.19.21.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.20.2/24]}, eth1: {ip: [198.19.21.2/24]}}}
links:
  - [a:eth0, b:eth0]
"#;

#[test]
fn killed_agent_restarts_keeps_the_vms_and_applies_an_added_link() {
    let host = TestHost::new("adopt");
    host.ensure_tiny();
    let v1 = write_lab(&host, "v1.yaml", PAIR_V1);
    let up = host.labspan(&["up", v1.to_str().expect("utf-8 path")]);
    assert!(up.status.success(), "labspan up v1 failed:\n{}", text(&up));
    let before = (host.qemu_pid("pair", "a"), host.qemu_pid("pair", "b"));
    assert!(before.0.is_some() && before.1.is_some());

    // v2, the same file edited, links the NICs that were left unconnected
    // (a lab file at another path would be refused as a replacement).
    let v2_text =
        format!("{PAIR_V1}  - [a:eth1, b:eth1]\nverify:\n  - ping: {{from: a, to: 198.19.21.2}}\n");
    let v2 = write_lab(&host, "v1.yaml", &v2_text);
    let new_bridge = names::bridge("pair", "link:a:eth1--b:eth1");
    let mut child = host
        .labspan_cmd(&["up", v2.to_str().expect("utf-8 path")])
        .spawn()
        .expect("spawn labspan up");
    // Kill the agent once it is part way: the new bridge exists and is
    // marked as labspan's. (A kill between creating an interface and setting
    // its alias is covered by the creation journal: docs/running-labs.md,
    // and its test in agent/tests/net_kernel.rs.)
    // Watched without a pause: the window lasts until the guests are
    // configured, and a wait with pauses could miss it.
    let marked = |name: &str| {
        let out = host.ip(&["-o", "link", "show", "dev", name]);
        String::from_utf8_lossy(&out.stdout).contains("alias labspan:")
    };
    while child.try_wait().expect("wait").is_none() && !marked(&new_bridge) {
        std::thread::yield_now();
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "labspan up ended before the bridge was seen marked: nothing was killed part way"
    );
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();

    let again = host.labspan(&["up", v2.to_str().expect("utf-8 path")]);
    let out = text(&again);
    assert!(
        again.status.success(),
        "labspan up v2 after kill -9 failed:\n{out}"
    );
    assert!(out.contains("PASS ping a -> 198.19.21.2"), "{out}");
    let after = (host.qemu_pid("pair", "a"), host.qemu_pid("pair", "b"));
    assert_eq!(before, after, "the VMs were restarted");
}

#[test]
fn a_missing_image_is_refused_and_nothing_is_touched() {
    let host = TestHost::new("noimg");
    let lab = write_lab(&host, "l.yaml", "name: noimg\nnodes:\n  a: {image: no-such-image, nics: {eth0: {}}}\n  b: {image: no-such-image}\nlinks:\n  - [a:eth0, b:eth0]\n");
    let up = host.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    let out = text(&up);
    assert_eq!(up.status.code(), Some(2), "{out}");
    assert!(
        out.contains("node \"a\"") && out.contains("no-such-image"),
        "{out}"
    );
    assert_eq!(host.labspan_links(), Vec::<String>::new());
    assert_eq!(host.vm_files(), Vec::<std::path::PathBuf>::new());
    assert!(
        !host.state.join("labs/noimg.json").exists(),
        "the lab was recorded"
    );
}

#[test]
fn a_foreign_interface_in_the_way_is_refused_and_left_alone() {
    let host = TestHost::new("clash");
    host.ensure_tiny();
    let foreign = names::bridge("clash", "link:a:eth0--b:eth0");
    let add = host.ip(&["link", "add", &foreign, "type", "bridge"]);
    assert!(add.status.success(), "{}", text(&add));
    let lab = write_lab(&host, "l.yaml", "name: clash\ndefaults: {image: tiny}\nnodes:\n  a: {}\n  b: {}\nlinks:\n  - [a:eth0, b:eth0]\n");
    let up = host.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    let out = text(&up);
    assert_eq!(up.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&foreign),
        "the error names the interface: {out}"
    );
    assert_eq!(
        host.labspan_links(),
        vec![foreign],
        "only the foreign interface is there"
    );
    assert_eq!(host.vm_files(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_node_larger_than_the_host_is_refused_and_nothing_is_touched() {
    let host = TestHost::new("huge");
    let lab = write_lab(
        &host,
        "l.yaml",
        "name: huge\ndefaults: {image: tiny}\nnodes:\n  a: {memory: 900GiB}\n  b: {}\n",
    );
    let up = host.labspan(&["up", lab.to_str().expect("utf-8 path")]);
    let out = text(&up);
    assert_eq!(up.status.code(), Some(2), "{out}");
    assert!(out.contains("node \"a\"") && out.contains("GiB"), "{out}");
    assert_eq!(host.labspan_links(), Vec::<String>::new());
    assert_eq!(host.vm_files(), Vec::<std::path::PathBuf>::new());
}

/// `labspan agent guard`, which a cluster agent starts beside itself with a
/// pipe only the agent holds, pauses every guest of the host when that pipe
/// ends (the agent died, even by `kill -9`): a dead agent's guests must not
/// run on while the leader starts them on another host.
#[test]
fn the_agent_guard_pauses_every_guest_when_its_agent_dies() {
    let host = TestHost::new("guard");
    host.ensure_tiny();
    let lab = write_lab(
        &host,
        "solo.yaml",
        "name: solo\ndefaults: {image: tiny, memory: 128MiB, cpus: 1}\nnodes:\n  a: {}\n",
    );
    let up = host.labspan(&["up", "--no-verify", lab.to_str().expect("utf-8 path")]);
    assert!(up.status.success(), "labspan up failed:\n{}", text(&up));
    let sock = host.state.join("vms/solo/a/qmp.sock");
    assert_eq!(qmp_status(&sock).as_deref(), Some("running"));

    let mut guard = host
        .labspan_cmd(&["agent", "guard"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("labspan agent guard");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        guard.try_wait().expect("the guard").is_none(),
        "the guard waits while its agent lives"
    );
    assert_eq!(qmp_status(&sock).as_deref(), Some("running"));
    // Held by a pidfd (our child, not yet waited: its pid is not reused).
    let pid = i32::try_from(guard.id()).expect("a pid");
    let held = process::open_if(pid, |_| true).expect("a pidfd on the guard");
    drop(guard.stdin.take()); // What the kernel does when the agent dies.
    if !process::wait_exit(held, Duration::from_secs(30)) {
        let _ = guard.kill();
        panic!("the guard did not finish 30 s after its pipe ended");
    }
    let status = guard.wait().expect("the guard");
    assert!(status.success(), "the guard: {status}");
    assert_eq!(
        qmp_status(&sock).as_deref(),
        Some("paused"),
        "the guard pauses the guest"
    );
    // The embedded default never pauses a guest: resumed, it stops as usual.
    assert!(qmp(&sock, "cont").is_some(), "QMP cont");
    let down = host.labspan(&["down", "solo"]);
    assert!(down.status.success(), "labspan down: {}", text(&down));
}

const SAVED: &str = r#"
name: saved
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  p: {nics: {eth0: {ip: [198.19.12.1/24]}}}
"#;

#[test]
fn a_lab_saved_and_loaded_on_the_embedded_default_comes_back_in_its_checkpoint() {
    let host = TestHost::new("save");
    host.ensure_tiny();
    let lab = write_lab(&host, "saved.yaml", SAVED);
    let ok = |args: &[&str]| {
        let out = host.labspan(args);
        assert!(out.status.success(), "labspan {args:?}:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let sh = |line: &str| ok(&["exec", "saved", "p", "--", line]);
    ok(&["up", "--no-verify", lab.to_str().expect("utf-8 path")]);
    sh("echo kept > /root/before");
    let boot_id = sh("cat /proc/sys/kernel/random/boot_id");
    ok(&["checkpoint", "create", "saved", "e1"]);
    sh("echo gone > /root/after");
    let archive = host.state.join("saved.labspan");
    let archive = archive.to_str().expect("utf-8 path");
    eprintln!("{}", ok(&["save", "saved", "-o", archive]));
    ok(&["down", "saved"]);
    assert_eq!(host.qemu_pid("saved", "p"), None, "down left the guest");
    eprintln!("{}", ok(&["load", archive]));
    assert_eq!(sh("cat /root/before"), "kept");
    assert_eq!(
        sh("test -e /root/after && echo there || echo absent"),
        "absent"
    );
    assert_eq!(
        sh("cat /proc/sys/kernel/random/boot_id"),
        boot_id,
        "the guest booted again instead of loading its checkpoint"
    );
    ok(&["down", "saved"]);
    assert!(
        host.labspan_links().is_empty(),
        "{:?}",
        host.labspan_links()
    );
}
