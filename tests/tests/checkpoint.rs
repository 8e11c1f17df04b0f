//! Checkpoints and resets on a cluster made by `deploy/cluster.sh` (issue
//! 14): a lab over two hosts is checkpointed while a TCP connection runs
//! between its guests; RAM markers changed afterwards come back with
//! `reset`, the guests' uptime rewinds, they did not boot again, and the
//! connection carries on at both ends; a guest's disk (a qcow2 layer over
//! its image) comes back as it was, without the writes made since. Bad
//! requests change nothing; a
//! checkpoint whose leader is killed while the hosts save it is removed
//! everywhere by the next leader, and the lab runs on.
#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use labspan_tests::local_cluster::LocalCluster;
use labspan_tests::progress::Events;
use labspan_tests::{build_image, labspan_bin, refused, run, stdout_ok, text};

const LAB: &str = r#"
name: ckpt
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  p: {nics: {eth0: {ip: [198.19.71.1/24]}}}
  v: {nics: {eth0: {ip: [198.19.71.2/24]}}}
  d: {image: tinydisk}
links:
  - [p:eth0, v:eth0]
placement:
  pin: {p: host1, v: host2, d: host1}
"#;

fn sh(cluster: &LocalCluster, node: &str, line: &str) -> String {
    stdout_ok(&cluster.labspan(&["exec", "ckpt", node, "--", line]), line)
}

/// Writes a fresh random marker into `node`'s RAM; returns it.
fn new_marker(cluster: &LocalCluster, node: &str) -> String {
    sh(
        cluster,
        node,
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /dev/shm/marker; cat /dev/shm/marker",
    )
}

/// Writes a fresh random marker straight to d's disk at MiB `at`
/// (written through, no file system); returns it.
fn disk_marker(cluster: &LocalCluster, at: u32) -> String {
    sh(
        cluster,
        "d",
        &format!(
            "m=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
             printf $m | dd of=/dev/vda bs=1M seek={at} conv=fsync 2>/dev/null; echo $m"
        ),
    )
}

/// What d's disk holds at MiB `at` (read from the disk, not the guest's
/// cache): a marker, or nothing.
fn disk_at(cluster: &LocalCluster, at: u32) -> String {
    sh(
        cluster,
        "d",
        &format!(
            "echo 3 > /proc/sys/vm/drop_caches; \
             dd if=/dev/vda bs=1M skip={at} count=1 2>/dev/null | head -c 16 | tr -d '\\000'"
        ),
    )
}

fn uptime(cluster: &LocalCluster, node: &str) -> f64 {
    sh(cluster, node, "cut -d' ' -f1 /proc/uptime")
        .parse()
        .expect("uptime")
}

/// Lines the listener on v has received so far.
fn received(cluster: &LocalCluster) -> u64 {
    sh(cluster, "v", "wc -l < /tmp/recv")
        .parse()
        .expect("count")
}

/// The state folder of host `i`.
fn state_of(cluster: &LocalCluster, i: usize) -> PathBuf {
    let vm = cluster.vm_dir(i, "ckpt", "p");
    vm.ancestors().nth(3).expect("state folder").to_path_buf()
}

/// Checkpoint folders of lab "ckpt" named `name` on every host.
fn files_of(cluster: &LocalCluster, name: &str) -> Vec<PathBuf> {
    (1..=2)
        .filter_map(|i| {
            let vm = cluster.vm_dir(i, "ckpt", "p");
            let state = vm.ancestors().nth(3)?;
            Some(state.join("checkpoints/ckpt").join(name))
        })
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn a_lab_over_two_hosts_goes_back_to_its_checkpoint() {
    build_image("tiny");
    let cluster = LocalCluster::up("ckpt", 3);
    cluster.push_disk_image("tinydisk");
    let file = cluster.write_file("ckpt.yaml", LAB);
    stdout_ok(
        &cluster.labspan(&["up", file.to_str().expect("utf-8")]),
        "labspan up",
    );
    assert_eq!(cluster.running("ckpt", "p").first().map(|r| r.0), Some(1));
    assert_eq!(cluster.running("ckpt", "v").first().map(|r| r.0), Some(2));

    // A TCP connection from p (host1) to v (host2), one line a second.
    // busybox nc ends the connection when its input ends: it never does.
    sh(
        &cluster,
        "v",
        "( sleep 100000 | nc -l -p 5000 > /tmp/recv ) < /dev/null > /dev/null 2>&1 &",
    );
    sh(
        &cluster,
        "p",
        "( (while true; do date; sleep 1; done) | nc 198.19.71.2 5000 ) < /dev/null > /dev/null 2>&1 &",
    );
    cluster.wait_for("lines over TCP", Duration::from_secs(30), || {
        (received(&cluster) >= 2).then_some(())
    });
    let boot_id = sh(&cluster, "v", "cat /proc/sys/kernel/random/boot_id");
    let p_marker = new_marker(&cluster, "p");
    let v_marker = new_marker(&cluster, "v");
    let d_before = disk_marker(&cluster, 0);
    assert_eq!(disk_at(&cluster, 0), d_before, "d's disk write");

    // Bad requests change nothing.
    refused(
        &cluster.labspan(&["checkpoint", "create", "ckpr", "c1"]),
        "an unknown lab",
        "did you mean \"ckpt\"",
    );
    refused(
        &cluster.labspan(&["checkpoint", "create", "ckpt", "C 1"]),
        "a bad name",
        "checkpoint name \"C 1\" cannot be used",
    );
    refused(
        &cluster.labspan(&["reset", "ckpt", "c1"]),
        "an unknown checkpoint",
        "no checkpoint \"c1\"",
    );

    let before = uptime(&cluster, "v");
    let taken = stdout_ok(
        &cluster.labspan(&["checkpoint", "create", "ckpt", "c1", "--json"]),
        "checkpoint create",
    );
    eprintln!("checkpoint: {taken}");
    let taken: serde_json::Value = serde_json::from_str(&taken).expect("--json");
    assert_eq!(taken["nodes"]["p"]["host"], "host1", "{taken}");
    assert_eq!(taken["nodes"]["v"]["host"], "host2", "{taken}");
    assert!(taken["bytes"].as_u64().unwrap_or(0) > 0, "{taken}");
    assert_eq!(files_of(&cluster, "c1").len(), 2);
    // Durable: each node's files copied to the other host, same bytes.
    for (node, copy_on) in [("p", 2), ("v", 1)] {
        let copies = &taken["nodes"][node]["copies"];
        assert_eq!(
            copies,
            &serde_json::json!([format!("host{copy_on}")]),
            "{taken}"
        );
        let copy =
            state_of(&cluster, copy_on).join(format!("checkpoints/ckpt/c1/{node}/ram.state"));
        let sum = stdout_ok(&run(Command::new("sha256sum").arg(&copy)), "sha256sum");
        let recorded = taken["nodes"][node]["files"][0]["sha256"]
            .as_str()
            .expect("sha256");
        assert!(
            sum.starts_with(recorded),
            "copy of {node}: {sum}, recorded {recorded}"
        );
    }
    refused(
        &cluster.labspan(&["checkpoint", "create", "ckpt", "c1"]),
        "a name already used",
        "already has a checkpoint \"c1\"",
    );

    // Everything changes after the checkpoint; the guests run on.
    assert_ne!(new_marker(&cluster, "p"), p_marker);
    assert_ne!(new_marker(&cluster, "v"), v_marker);
    let d_after = disk_marker(&cluster, 1);
    std::thread::sleep(Duration::from_secs(6));
    let later = uptime(&cluster, "v");
    let lines_before_reset = received(&cluster);
    assert!(later > before, "v's clock stood still: {before} -> {later}");

    let reset = stdout_ok(
        &cluster.labspan(&["reset", "ckpt", "c1", "--json"]),
        "labspan reset",
    );
    eprintln!("reset: {reset}");
    assert_eq!(sh(&cluster, "p", "cat /dev/shm/marker"), p_marker);
    assert_eq!(sh(&cluster, "v", "cat /dev/shm/marker"), v_marker);
    assert_eq!(disk_at(&cluster, 0), d_before, "d's disk before c1");
    assert_eq!(
        disk_at(&cluster, 1),
        "",
        "d's disk kept {d_after}, written after c1"
    );
    let rewound = uptime(&cluster, "v");
    assert!(
        rewound < later,
        "v's uptime did not go back: {later} before the reset, {rewound} after"
    );
    assert_eq!(
        sh(&cluster, "v", "cat /proc/sys/kernel/random/boot_id"),
        boot_id,
        "v booted again"
    );
    // The connection carries on from where the checkpoint left it.
    let after_reset = received(&cluster);
    assert!(
        after_reset < lines_before_reset,
        "v kept the lines received after the checkpoint: {after_reset} now, {lines_before_reset} before the reset"
    );
    cluster.wait_for(
        "lines over the same TCP connection after the reset",
        Duration::from_secs(60),
        || (received(&cluster) >= after_reset + 3).then_some(()),
    );
    assert_eq!(cluster.lab_status("ckpt").as_deref(), Some("Running"));

    // list, delete.
    let list = stdout_ok(
        &cluster.labspan(&["checkpoint", "list", "ckpt", "--json"]),
        "list",
    );
    let list: serde_json::Value = serde_json::from_str(&list).expect("--json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], "c1");
    stdout_ok(
        &cluster.labspan(&["checkpoint", "delete", "ckpt", "c1"]),
        "delete",
    );
    assert!(
        files_of(&cluster, "c1").is_empty(),
        "files left after delete"
    );
    refused(
        &cluster.labspan(&["reset", "ckpt", "c1"]),
        "a deleted checkpoint",
        "no checkpoint \"c1\"",
    );

    // kill -9 of the leader while the hosts save: the next leader removes
    // the checkpoint everywhere, the lab runs on, the name can be used.
    let leader = cluster.wait_for("a leader", Duration::from_secs(60), || {
        cluster.leader_host()
    });
    std::thread::scope(|s| {
        let taker = s.spawn(|| cluster.labspan(&["checkpoint", "create", "ckpt", "c2"]));
        cluster.wait_for("the hosts saving c2", Duration::from_secs(60), || {
            (!files_of(&cluster, "c2").is_empty()).then_some(())
        });
        assert!(
            cluster.kill_coordinator(leader),
            "no leader on host{leader}"
        );
        let out = taker.join().expect("the checkpoint thread");
        eprintln!("checkpoint while its leader was killed: {}", text(&out));
    });
    cluster.wait_for(
        "c2 ended by the next leader",
        Duration::from_secs(240),
        || {
            let out = cluster.labspan(&["checkpoint", "list", "ckpt", "--json"]);
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let names: Vec<&str> = list
                .as_array()?
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            // Either whole (recorded) or gone everywhere: never half.
            match names.contains(&"c2") {
                true => Some(()),
                false => files_of(&cluster, "c2").is_empty().then_some(()),
            }
        },
    );
    let out = cluster.labspan(&["checkpoint", "list", "ckpt", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list");
    if list
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c["name"] == "c2"))
    {
        assert_eq!(
            files_of(&cluster, "c2").len(),
            2,
            "c2 recorded but not on both hosts"
        );
    }
    assert_eq!(cluster.lab_status("ckpt").as_deref(), Some("Running"));
    assert_eq!(
        sh(&cluster, "v", "cat /proc/sys/kernel/random/boot_id"),
        boot_id,
        "v booted again"
    );
    let moving = received(&cluster);
    cluster.wait_for(
        "v running after the leader's loss",
        Duration::from_secs(60),
        || (received(&cluster) > moving).then_some(()),
    );
    // Archives outlive the cluster (its state folder goes with it).
    let kept = tempfile::tempdir().expect("a folder for the archives");
    let saved = save_down_and_load(&cluster, kept.path(), &boot_id, &d_before);
    drop(cluster);
    load_on_a_second_cluster(&saved);
}

/// Lab "res": two tiny guests on two hosts, an automatic checkpoint every
/// 30 s (long enough to cut a host between two of them once the last
/// one is copied).
const RESILIENT: &str = r#"
name: res
defaults: {image: tiny, memory: 256MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.72.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.72.2/24]}}}
links:
  - [a:eth0, b:eth0]
placement:
  spread: [[a, b]]
resilience: {checkpoint_every: 30s}
"#;

fn res_sh(cluster: &LocalCluster, node: &str, line: &str) -> String {
    stdout_ok(&cluster.labspan(&["exec", "res", node, "--", line]), line)
}

/// The automatic checkpoints of lab "res" whose every node has a copy
/// on a second host (durable): (name, taken), oldest first.
fn durable_autos(cluster: &LocalCluster) -> Vec<(String, u64)> {
    let out = cluster.labspan(&["checkpoint", "list", "res", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let copied = |c: &serde_json::Value| {
        (c["nodes"].as_object().into_iter().flatten())
            .all(|(_, n)| n["copies"].as_array().is_some_and(|a| !a.is_empty()))
    };
    (list.as_array().into_iter().flatten())
        .filter(|c| copied(c))
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["created_unix"].as_u64()?)))
        .filter(|(n, _)| n.starts_with("auto-"))
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state folder of host `i` of cluster `ckres`.
fn res_state(cluster: &LocalCluster, i: usize) -> PathBuf {
    let vm = cluster.vm_dir(i, "res", "a");
    vm.ancestors().nth(3).expect("state folder").to_path_buf()
}

/// Folder of checkpoint `name` of lab "res" on host `i`.
fn res_checkpoint(cluster: &LocalCluster, i: usize, name: &str) -> PathBuf {
    res_state(cluster, i).join("checkpoints/res").join(name)
}

/// `labspan ARGS` on lab "res", again while it is refused because the lab
/// is busy for a moment (an automatic checkpoint under way, a node
/// starting on another host): its first answer that is not that.
fn when_free(cluster: &LocalCluster, args: &[&str]) -> Output {
    let busy = ["wait until that ends", "once they run", "try again shortly"];
    cluster.wait_for(
        &format!("labspan {args:?} not refused as busy"),
        Duration::from_secs(120),
        || {
            let out = cluster.labspan(args);
            let is_busy = !out.status.success() && busy.iter().any(|b| text(&out).contains(b));
            if is_busy {
                std::thread::sleep(Duration::from_millis(500));
            }
            (!is_busy).then_some(out)
        },
    )
}

/// Waits until lab "res" is no longer busy with the operation whose
/// refusal says `busy` (`is taking checkpoint "cut"`): a reset to a
/// checkpoint that does not exist is refused (naming the lab) either way,
/// changing nothing, and says what the lab is busy with. The command that
/// started it may have lost its connection (the coordinator it talked to
/// may be on the cut host): the leader ends it all the same.
fn wait_ended(cluster: &LocalCluster, busy: &str) {
    cluster.wait_for(
        &format!("lab \"res\" no longer busy ({busy})"),
        Duration::from_secs(180),
        || {
            let out = cluster.labspan(&["reset", "res", "none-such"]);
            let said = text(&out);
            (said.contains("lab \"res\"") && !said.contains(busy)).then_some(())
        },
    );
}

/// The names of lab "res"'s checkpoints.
fn res_checkpoints(cluster: &LocalCluster) -> Vec<String> {
    let out = stdout_ok(
        &cluster.labspan(&["checkpoint", "list", "res", "--json"]),
        "checkpoint list res",
    );
    let list: serde_json::Value = serde_json::from_str(&out).expect("--json");
    (list.as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// `nsenter` into the mount namespace of host `i`'s agent (where its
/// QEMUs write their checkpoints).
fn in_agent_mounts(cluster: &LocalCluster, i: usize, args: &[&str]) -> Output {
    let pid = cluster.daemon_pid(i, "agent").expect("the agent runs");
    run(Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args))
}

/// A checkpoint on a host whose checkpoint folder is a 16 MiB file system
/// (a tiny guest's RAM file is ~100 MiB): it fails, says which host and
/// that its disk was full, leaves no file on any host, and the lab runs on.
fn a_full_disk_fails_the_checkpoint(cluster: &LocalCluster, full_host: usize, other: usize) {
    let dir = res_checkpoint(cluster, full_host, "full");
    std::fs::create_dir_all(&dir).expect("mount point");
    let dir_arg = dir.to_str().expect("utf-8");
    stdout_ok(
        &in_agent_mounts(
            cluster,
            full_host,
            &["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir_arg],
        ),
        "mount a small tmpfs",
    );
    let out = when_free(cluster, &["checkpoint", "create", "res", "full"]);
    let files = in_agent_mounts(cluster, full_host, &["find", dir_arg, "-type", "f"]);
    stdout_ok(
        &in_agent_mounts(cluster, full_host, &["umount", dir_arg]),
        "umount the small tmpfs",
    );
    std::fs::remove_dir_all(&dir).expect("remove the mount point");
    eprintln!("checkpoint on a full disk: {}", text(&out));
    assert!(
        !out.status.success(),
        "saved on a full disk: {}",
        text(&out)
    );
    for says in [
        "checkpoint \"full\" of lab \"res\" failed and was removed from every host".to_string(),
        format!("host \"host{full_host}\""),
        "is full".to_string(),
    ] {
        assert!(text(&out).contains(&says), "{says}: {}", text(&out));
    }
    assert_eq!(stdout_ok(&files, "find"), "", "files left on the full disk");
    assert!(!res_checkpoint(cluster, other, "full").exists());
    assert!(!res_checkpoints(cluster).contains(&"full".to_string()));
    assert_eq!(cluster.lab_status("res").as_deref(), Some("Running"));
}

/// `resilience: {checkpoint_every}`: the node of a lost host restarts on
/// another host from the latest checkpoint held on a host that is up (a
/// RAM marker written before it is back, the one written after it is
/// not), `inspect` and `events` name the checkpoint, and the other node
/// runs on, same boot. The host is cut while the hosts save a checkpoint:
/// it is recorded whole or removed everywhere, also from the cut host once
/// it is back. A checkpoint on a full disk fails cleanly.
#[test]
fn a_lost_host_s_node_comes_back_from_the_latest_checkpoint() {
    build_image("tiny");
    let cluster = &LocalCluster::up("ckres", 3);
    let file = cluster.write_file("res.yaml", RESILIENT);
    // Every step from the first boot on, for the figures at the end,
    // through the leader's coordinator alone: the host cut below is never
    // the leader's, and a stream through a coordinator on a cut host would
    // go silent until its connection timed out, and miss the steps taken
    // meanwhile (a follower that dials again is not given them).
    let through = cluster.wait_for("a leader", Duration::from_secs(60), || {
        cluster.leader_host()
    });
    let events = Events::follow(&cluster.admin_through(through), "res");
    stdout_ok(
        &cluster.labspan(&["up", file.to_str().expect("utf-8")]),
        "labspan up res",
    );
    refused(
        &cluster.labspan(&["checkpoint", "create", "res", "auto-mine"]),
        "a name kept for automatic checkpoints",
        "names starting with \"auto-\" are kept for automatic checkpoints",
    );
    let host_of = |node: &str| cluster.running("res", node).first().map(|r| r.0);
    let running_off = |node: &str, off: usize| {
        (cluster.running("res", node).into_iter())
            .map(|r| r.0)
            .find(|h| *h != off)
    };
    let leader = cluster.leader_host();
    // The victim's host is not the leader's: no election in the way.
    let (lost, kept) = match host_of("a") == leader {
        true => ("b", "a"),
        false => ("a", "b"),
    };
    let victim = host_of(lost).expect("the lost node runs");
    let kept_host = host_of(kept).expect("the other node runs");
    let kept_pid = cluster.qemu_pid(kept_host, "res", kept);
    let kept_boot = res_sh(cluster, kept, "cat /proc/sys/kernel/random/boot_id");

    // A marker in RAM, then an automatic checkpoint taken after it.
    let marker = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /dev/shm/marker; cat /dev/shm/marker";
    let before = res_sh(cluster, lost, marker);
    let written = unix_now();
    let (auto, _) = cluster.wait_for(
        "an automatic checkpoint after the marker, copied to a second host",
        Duration::from_secs(90),
        || {
            durable_autos(cluster)
                .into_iter()
                .find(|(_, at)| *at > written)
        },
    );
    let after = res_sh(cluster, lost, marker);
    assert_ne!(before, after);
    a_full_disk_fails_the_checkpoint(cluster, kept_host, victim);
    assert_eq!(res_sh(cluster, lost, "cat /dev/shm/marker"), after);

    // The victim's host is cut while it saves checkpoint "cut".
    let saving = res_checkpoint(cluster, victim, "cut")
        .join(lost)
        .join("ram.state");
    let taken = std::thread::scope(|s| {
        let create = s.spawn(|| when_free(cluster, &["checkpoint", "create", "res", "cut"]));
        cluster.wait_for(
            "host of the lost node saving checkpoint \"cut\"",
            Duration::from_secs(120),
            || saving.exists().then_some(()),
        );
        stdout_ok(&cluster.fault("cut", victim), "cluster.sh cut");
        create.join().expect("the create thread")
    });
    eprintln!(
        "checkpoint \"cut\" while its host was cut: {}",
        text(&taken)
    );
    wait_ended(cluster, "is taking checkpoint \"cut\"");
    // Recorded whole (the host answered before it was cut), or nowhere.
    let recorded = res_checkpoints(cluster).contains(&"cut".to_string());
    if recorded {
        assert!(res_checkpoint(cluster, kept_host, "cut")
            .join(kept)
            .exists());
        assert!(saving.exists());
    } else {
        // The command says so, unless its own connection was lost.
        assert!(
            !taken.status.success()
                && (text(&taken).contains("failed and was removed from every host")
                    || text(&taken).contains("connection lost")),
            "{}",
            text(&taken)
        );
        assert!(!res_checkpoint(cluster, kept_host, "cut").exists());
    }
    // An unfinished copy on the cut host (as an agent that ended in the
    // middle of one leaves it): never taken as a copy, removed when back.
    let partial = res_checkpoint(cluster, victim, &auto)
        .join(kept)
        .join("ram.partial");
    if partial.parent().is_some_and(Path::exists) {
        std::fs::write(&partial, b"cut short").expect("a partial copy");
    }
    let moved_to = cluster.wait_for(
        "the lost node running on another host",
        Duration::from_secs(120),
        || {
            let to = running_off(lost, victim)?;
            let running = cluster.lab_status("res").is_some_and(|s| s == "Running");
            running.then_some(to)
        },
    );
    let inspect = stdout_ok(
        &cluster.labspan(&["inspect", "res", "--json"]),
        "inspect res",
    );
    let view: serde_json::Value = serde_json::from_str(&inspect).expect("--json");
    let rows = view[0]["nodes"].as_array().expect("nodes");
    let row = |node: &str| rows.iter().find(|r| r["node"] == node).cloned();
    let from = (row(lost).and_then(|r| r["restored_from"].as_str().map(String::from)))
        .unwrap_or_else(|| panic!("not restored from a checkpoint: {inspect}"));
    eprintln!("{lost} lost on host{victim}, back on host{moved_to} from {from}");
    // `auto` was the newest checkpoint before `after` was written; one
    // taken since (automatic, or "cut" had it been copied) holds `after`.
    assert!(
        from == auto || from.starts_with("auto-") || (recorded && from == "cut"),
        "{from}"
    );
    assert_eq!(
        res_sh(cluster, lost, "cat /dev/shm/marker"),
        if from == auto {
            before.as_str()
        } else {
            after.as_str()
        },
        "the lost node did not come back with its checkpoint's RAM"
    );
    assert_eq!(
        row(kept).map(|r| r["restored_from"].clone()),
        Some(serde_json::Value::Null)
    );
    let table = stdout_ok(&cluster.labspan(&["inspect", "res"]), "inspect res");
    assert!(
        table.contains(&format!(
            "node \"{lost}\" restarted on host{moved_to} from checkpoint \"{from}\""
        )),
        "{table}"
    );
    assert_eq!(
        res_sh(cluster, kept, "cat /proc/sys/kernel/random/boot_id"),
        kept_boot,
        "the node on a host that stayed up booted again"
    );
    assert_eq!(cluster.qemu_pid(kept_host, "res", kept), kept_pid);
    let steps = events.until("the lost node restored", Duration::from_secs(30), |all| {
        let restored = all.iter().position(|e| {
            e["node"] == lost && e["phase"] == "restored" && e["checkpoint"] == from.as_str()
        })?;
        let running = all[restored..]
            .iter()
            .any(|e| e["node"] == lost && e["phase"] == "running");
        running.then(|| all.to_vec())
    });
    drop(events);
    // Figures (docs/benchmarks.md), not assertions: from `placed` to
    // `running` of the lost node, booted by `up`, then restored.
    let steps: Vec<&serde_json::Value> = steps.iter().filter(|e| e["node"] == lost).collect();
    let spans: Vec<u64> = (steps.iter().enumerate())
        .filter(|(_, e)| e["phase"] == "placed")
        .filter_map(|(i, placed)| {
            let running = steps[i..].iter().find(|e| e["phase"] == "running")?;
            Some(running["at_unix_ms"].as_u64()? - placed["at_unix_ms"].as_u64()?)
        })
        .collect();
    eprintln!("figures: node {lost} placed -> running (ms): booted by up, then restored from {from}: {spans:?}");

    // Back on the underlay, the cut host keeps only what the cluster
    // records it holding: "cut" goes unless it was recorded (its share is
    // the recorded original), and so does the unfinished copy.
    stdout_ok(&cluster.fault("heal", victim), "cluster.sh heal");
    cluster.wait_for(
        "the cut host back up, without unrecorded checkpoint files",
        Duration::from_secs(120),
        || {
            let cut_gone = recorded || !res_checkpoint(cluster, victim, "cut").exists();
            let clean = cluster.host_up(victim)? && cut_gone && !partial.exists();
            clean.then_some(())
        },
    );

    a_host_lost_while_the_hosts_load_a_reset(
        cluster,
        [(lost, moved_to), (kept, kept_host)],
        victim,
    );
    stdout_ok(&cluster.labspan(&["down", "res"]), "labspan down res");
}

/// Writes a fresh random marker into `node`'s RAM (lab "res"); returns it.
fn res_marker(cluster: &LocalCluster, node: &str) -> String {
    res_sh(
        cluster,
        node,
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /dev/shm/marker; cat /dev/shm/marker",
    )
}

/// A host cut off once a reset has ended its node's QEMU there (the hosts
/// load the checkpoint): the reset fails as one, no guest is resumed in
/// the checkpoint's state (the other node's guest waits paused, left so
/// by its host's plans), the lost node comes back on the host that is
/// `free`, and the lab settles without waiting on the paused guest. The
/// reset run again brings both guests to the checkpoint's RAM markers.
/// `nodes`: lab "res"'s two nodes and their hosts.
fn a_host_lost_while_the_hosts_load_a_reset(
    cluster: &LocalCluster,
    nodes: [(&str, usize); 2],
    free: usize,
) {
    // Running, each node in one QEMU (the cut host's stale one is gone).
    cluster.wait_for(
        "lab \"res\" running as a whole",
        Duration::from_secs(120),
        || {
            let one_each = (nodes.iter()).all(|(n, at)| {
                let hosts: Vec<usize> = cluster.running("res", n).iter().map(|r| r.0).collect();
                hosts == [*at]
            });
            let running = cluster.lab_status("res").as_deref() == Some("Running");
            (running && one_each).then_some(())
        },
    );
    let at_r1: Vec<String> = nodes.iter().map(|(n, _)| res_marker(cluster, n)).collect();
    stdout_ok(
        &when_free(cluster, &["checkpoint", "create", "res", "r1"]),
        "checkpoint create res r1",
    );
    for ((node, _), then) in nodes.iter().zip(&at_r1) {
        assert_ne!(&res_marker(cluster, node), then);
    }
    // The cut host is not the leader's: no election in the way.
    let leader = cluster.leader_host();
    let [(cut, cut_host), (other, other_host)] = match Some(nodes[0].1) == leader {
        true => [nodes[1], nodes[0]],
        false => nodes,
    };
    let pid = cluster
        .qemu_pid(cut_host, "res", cut)
        .expect("the node to cut runs");
    let qemu = labspan_testutil::process::open_if(i32::try_from(pid).expect("pid"), |c| {
        String::from_utf8_lossy(c).contains("qemu-system")
    })
    .expect("its QEMU");
    let (reset, cut_at) = std::thread::scope(|s| {
        let reset = s.spawn(|| when_free(cluster, &["reset", "res", "r1"]));
        assert!(
            labspan_testutil::process::wait_exit(qemu, Duration::from_secs(240)),
            "the reset did not end {cut}'s QEMU on host{cut_host}"
        );
        stdout_ok(&cluster.fault("cut", cut_host), "cluster.sh cut");
        (
            reset.join().expect("the reset thread"),
            std::time::Instant::now(),
        )
    });
    eprintln!("reset while host{cut_host} was cut: {}", text(&reset));
    wait_ended(cluster, "being reset to checkpoint \"r1\"");
    // Failed as one: the command says no VM was resumed, unless its own
    // connection was lost (its coordinator was on the cut host).
    assert!(
        !reset.status.success()
            && (text(&reset).contains("no VM was resumed")
                || text(&reset).contains("connection lost")),
        "{}",
        text(&reset)
    );
    let qmp = cluster.vm_dir(other_host, "res", other).join("qmp.sock");
    let state_of_other = || {
        cluster.wait_for(
            &format!("QMP status of {other} on host{other_host}"),
            Duration::from_secs(60),
            || labspan_tests::qmp_status(&qmp),
        )
    };
    assert_eq!(state_of_other(), "paused", "{other} resumed alone");
    let settled = cluster.wait_for(
        "the lost node running on the free host, the lab settled",
        Duration::from_secs(180),
        || {
            cluster.qemu_pid(free, "res", cut)?;
            let status = cluster.lab_status("res")?;
            (!status.starts_with("Deploying")).then_some(status)
        },
    );
    eprintln!("{cut} lost on host{cut_host}, back on host{free}; lab: {settled}");
    // A figure (docs/checkpoints.md), not an assertion.
    eprintln!(
        "figures: from the reset's end to the lab settled: {:.1} s",
        cut_at.elapsed().as_secs_f64()
    );
    assert!(
        settled.contains(&format!("node {other}"))
            && settled.contains("paused in the state of checkpoint \"r1\""),
        "{settled}"
    );
    assert_eq!(state_of_other(), "paused", "{other} resumed alone");

    stdout_ok(
        &when_free(cluster, &["reset", "res", "r1"]),
        "labspan reset res r1, again",
    );
    for ((node, _), then) in nodes.iter().zip(&at_r1) {
        assert_eq!(
            &res_sh(cluster, node, "cat /dev/shm/marker"),
            then,
            "{node} is not back in checkpoint r1"
        );
    }
    assert_eq!(cluster.lab_status("res").as_deref(), Some("Running"));
}

/// `labspan load FILE` against this cluster, with its own scratch folder
/// (`TMPDIR`) so that what a load leaves behind can be seen.
fn load(cluster: &LocalCluster, scratch: &Path, args: &[&str]) -> Output {
    run(Command::new(labspan_bin())
        .arg("load")
        .args(args)
        .env("LABSPAN_CLUSTER", cluster.admin())
        .env("TMPDIR", scratch))
}

fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("scratch folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `archive` with its manifest's `content` changed by `edit`, written as `to`.
fn edited(archive: &Path, to: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let input = zstd::Decoder::new(std::fs::File::open(archive).expect("archive")).expect("zstd");
    let mut tar_in = tar::Archive::new(input);
    let out = zstd::Encoder::new(std::fs::File::create(to).expect("create"), 3).expect("zstd");
    let mut tar_out = tar::Builder::new(out);
    for (i, entry) in tar_in.entries().expect("entries").enumerate() {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("member");
        if i == 0 {
            let mut manifest: serde_json::Value = serde_json::from_slice(&data).expect("manifest");
            edit(&mut manifest["content"]);
            data = serde_json::to_vec(&manifest).expect("json");
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar_out
            .append_data(&mut h, name, data.as_slice())
            .expect("tar");
    }
    tar_out.into_inner().expect("tar").finish().expect("zstd");
}

/// What was saved, to find again once loaded.
struct Saved {
    /// The archive, with its images, and one saved `--without-images`.
    archive: PathBuf,
    bare: PathBuf,
    boot_id: String,
    /// p's RAM marker.
    marker: String,
    /// d's disk markers: as of c1, as of s1, after s1.
    d_c1: String,
    d_kept: String,
    d_gone: String,
}

/// The lab runs in checkpoint s1 of `saved`: a file and a RAM marker
/// written before it are there, those written after are not, d's disk
/// holds what was written before c1 and s1 (layers of two checkpoints
/// folded into the archive's one) and not what came after, the guests did
/// not boot again, and the TCP stream between the hosts carries on.
fn back_in_s1(cluster: &LocalCluster, saved: &Saved) {
    assert_eq!(cluster.lab_status("ckpt").as_deref(), Some("Running"));
    assert_eq!(sh(cluster, "p", "cat /root/before-save"), "kept");
    assert_eq!(
        sh(
            cluster,
            "p",
            "test -e /root/after-save && echo there || echo absent"
        ),
        "absent"
    );
    assert_eq!(sh(cluster, "p", "cat /dev/shm/marker"), saved.marker);
    assert_eq!(
        sh(cluster, "v", "cat /proc/sys/kernel/random/boot_id"),
        saved.boot_id,
        "v booted again instead of loading its checkpoint"
    );
    assert_eq!(disk_at(cluster, 0), saved.d_c1, "d's disk as of c1");
    assert_eq!(disk_at(cluster, 2), saved.d_kept, "d's disk as of s1");
    assert_eq!(
        disk_at(cluster, 3),
        "",
        "d's disk kept {}, written after s1",
        saved.d_gone
    );
    let lines = received(cluster);
    cluster.wait_for(
        "lines over the same TCP connection after the load",
        Duration::from_secs(60),
        || (received(cluster) > lines + 2).then_some(()),
    );
}

/// The image members of an archive (`images/objects/HASH/FILE`).
fn image_members(archive: &Path) -> Vec<String> {
    let input = zstd::Decoder::new(std::fs::File::open(archive).expect("archive")).expect("zstd");
    let mut tar = tar::Archive::new(input);
    let mut first = tar
        .entries()
        .expect("entries")
        .next()
        .expect("manifest")
        .expect("entry");
    let mut json = Vec::new();
    first.read_to_end(&mut json).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&json).expect("manifest");
    manifest["members"]
        .as_object()
        .expect("members")
        .keys()
        .filter(|m| m.starts_with("images/"))
        .cloned()
        .collect()
}

/// d moved live to host3, then the lab reset to s1: d's share of s1 (its
/// disk: two layers of its own, c1's and s1's, folded into one over the
/// image) is fetched from host1 and loaded on host3, which did not take
/// it. d's disk holds what was written before c1 and s1, not what came
/// after (`marks`: as of c1, as of s1, after s1), and every file under
/// it is host3's own (nothing of host1's layer store or image).
fn d_reset_on_a_host_that_did_not_take_it(cluster: &LocalCluster, [c1, s1, gone]: [&str; 3]) {
    stdout_ok(
        &cluster.labspan(&["move", "ckpt", "d", "--to", "host3"]),
        "labspan move ckpt d --to host3",
    );
    let on: Vec<usize> = cluster.running("ckpt", "d").iter().map(|r| r.0).collect();
    assert_eq!(on, [3], "d after its move");
    let reset = stdout_ok(
        &cluster.labspan(&["reset", "ckpt", "s1"]),
        "labspan reset ckpt s1, d on host3",
    );
    eprintln!("reset with d's files fetched to host3: {reset}");
    assert_eq!(disk_at(cluster, 0), c1, "d's disk as of c1, on host3");
    assert_eq!(disk_at(cluster, 2), s1, "d's disk as of s1, on host3");
    assert_eq!(
        disk_at(cluster, 3),
        "",
        "d's disk kept {gone}, written after s1"
    );
    let dir = cluster.vm_dir(3, "ckpt", "d");
    let top = std::fs::read_to_string(dir.join("overlay.top")).expect("d's overlay");
    let info = stdout_ok(
        &run(Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain", "--output=json"])
            .arg(dir.join(top.trim()))),
        "qemu-img info",
    );
    let chain: serde_json::Value = serde_json::from_str(&info).expect("qemu-img json");
    let own = state_of(cluster, 3).canonicalize().expect("host3's state");
    for layer in chain.as_array().expect("a chain") {
        let file = PathBuf::from(layer["filename"].as_str().expect("filename"));
        let file = file.canonicalize().expect("a layer of d's disk");
        assert!(
            file.starts_with(&own),
            "d's disk on host3 uses {}",
            file.display()
        );
    }
}

/// `labspan save` (with its images, and without), `down`, `load`: the lab
/// comes back running in the checkpoint's state ([`back_in_s1`]). A load
/// that cannot work leaves nothing behind.
fn save_down_and_load(cluster: &LocalCluster, out: &Path, boot_id: &str, d_c1: &str) -> Saved {
    sh(cluster, "p", "echo kept > /root/before-save");
    let marker = new_marker(cluster, "p");
    let d_kept = disk_marker(cluster, 2);
    stdout_ok(
        &cluster.labspan(&["checkpoint", "create", "ckpt", "s1"]),
        "checkpoint create s1",
    );
    sh(cluster, "p", "echo gone > /root/after-save");
    assert_ne!(new_marker(cluster, "p"), marker);
    let d_gone = disk_marker(cluster, 3);
    d_reset_on_a_host_that_did_not_take_it(cluster, [d_c1, &d_kept, &d_gone]);
    let archive = out.join("ckpt.labspan");
    let archive_arg = archive.to_str().expect("utf-8");
    let saved = stdout_ok(
        &cluster.labspan(&["save", "ckpt", "-o", archive_arg]),
        "labspan save",
    );
    eprintln!("save: {saved}");
    assert!(saved.contains("\"s1\""), "the latest checkpoint: {saved}");
    let bare = out.join("ckpt-bare.labspan");
    let bare_arg = bare.to_str().expect("utf-8");
    let saved_bare = stdout_ok(
        &cluster.labspan(&["save", "ckpt", "-o", bare_arg, "--without-images"]),
        "labspan save --without-images",
    );
    eprintln!("save --without-images: {saved_bare}");
    // Both images the lab uses are in the archive (tiny from this
    // machine's store, tinydisk fetched from a host), none in the bare one.
    let held = image_members(&archive);
    for image in ["tiny", "tinydisk"] {
        let hash =
            std::fs::read_to_string(state_of(cluster, 1).join(format!("images/names/{image}")))
                .expect("image name");
        assert!(
            held.iter()
                .any(|m| m == &format!("images/objects/{}/manifest.json", hash.trim())),
            "{image} not in the archive: {held:?}"
        );
    }
    assert!(
        image_members(&bare).is_empty(),
        "{:?}",
        image_members(&bare)
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let checkpoints = || {
        stdout_ok(
            &cluster.labspan(&["checkpoint", "list", "ckpt", "--json"]),
            "checkpoint list",
        )
    };
    let listed = checkpoints();

    // A running lab of that name is refused, and left as it was.
    refused(
        &load(cluster, scratch.path(), &[archive_arg]),
        "a load over a running lab",
        "lab \"ckpt\" is already deployed",
    );
    assert_eq!(checkpoints(), listed);
    assert_eq!(sh(cluster, "p", "cat /dev/shm/marker").len(), marker.len());
    // An image the hosts have in another build, and the archive not.
    let other = cluster.write_file("other-image.labspan", "");
    edited(&bare, &other, |c| {
        c["images"]["tiny"] = serde_json::Value::String("0".repeat(64))
    });
    refused(
        &load(
            cluster,
            scratch.path(),
            &["--replace", other.to_str().expect("utf-8")],
        ),
        "an image the cluster does not have",
        "needs image \"tiny\" of digest 0000",
    );
    assert_eq!(cluster.lab_status("ckpt").as_deref(), Some("Running"));
    assert_eq!(checkpoints(), listed);
    assert!(
        left_in(scratch.path()).is_empty(),
        "{:?}",
        left_in(scratch.path())
    );

    stdout_ok(&cluster.labspan(&["down", "ckpt"]), "labspan down");
    assert!(files_of(cluster, "s1").is_empty(), "files left after down");
    // A RAM file that is not the one the checkpoint recorded: found once
    // the lab is deployed, which is taken down again.
    let wrong = cluster.write_file("wrong-ram.labspan", "");
    edited(&archive, &wrong, |c| {
        c["checkpoint"]["nodes"]["p"]["files"][0]["sha256"] =
            serde_json::Value::String("0".repeat(64))
    });
    let out = load(cluster, scratch.path(), &[wrong.to_str().expect("utf-8")]);
    assert!(
        !out.status.success(),
        "a wrong RAM file loaded: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("could not be brought to its checkpoint; it was taken down again"),
        "{}",
        text(&out)
    );
    assert_eq!(
        cluster.lab_status("ckpt"),
        None,
        "the lab was left deployed"
    );
    assert!(
        files_of(cluster, "s1").is_empty(),
        "files left after a failed load"
    );
    assert!(
        cluster.qemus().is_empty(),
        "guests left after a failed load"
    );
    assert!(
        left_in(scratch.path()).is_empty(),
        "{:?}",
        left_in(scratch.path())
    );
    let loaded = stdout_ok(
        &load(cluster, scratch.path(), &[archive_arg]),
        "labspan load",
    );
    eprintln!("load: {loaded}");
    assert!(
        left_in(scratch.path()).is_empty(),
        "{:?}",
        left_in(scratch.path())
    );
    let saved = Saved {
        archive: archive.clone(),
        bare: bare.clone(),
        boot_id: boot_id.to_string(),
        marker,
        d_c1: d_c1.to_string(),
        d_kept,
        d_gone,
    };
    back_in_s1(cluster, &saved);
    let list: serde_json::Value = serde_json::from_str(&checkpoints()).expect("--json");
    assert_eq!(list[0]["name"], "s1", "{list}");
    assert_eq!(files_of(cluster, "s1").len(), 2);
    stdout_ok(&cluster.labspan(&["down", "ckpt"]), "labspan down");
    assert!(files_of(cluster, "s1").is_empty(), "files left after down");
    saved
}

/// On a second cluster (another `LABSPAN_CLUSTER_NAME`, brought up once
/// the first is down), whose hosts have `tiny` but not `tinydisk`: the
/// archive saved without images is refused, naming the image, and leaves
/// nothing; the whole one brings tinydisk to the cluster and the lab back
/// in the same state, also when the leader is killed in the middle of the
/// load (it fails or finishes as one: a failed one is taken down whole).
fn load_on_a_second_cluster(saved: &Saved) {
    let cluster = LocalCluster::up("ckptb", 3);
    let scratch = tempfile::tempdir().expect("scratch");
    let admin = cluster.admin();
    let admin_path = admin.to_str().expect("utf-8");
    let images = || {
        let list = ["image", "list", "--json", "--cluster", admin_path];
        stdout_ok(&cluster.labspan(&list), "image list")
    };
    assert!(!images().contains("tinydisk"), "{}", images());
    refused(
        &load(
            &cluster,
            scratch.path(),
            &[saved.bare.to_str().expect("utf-8")],
        ),
        "an archive without an image the cluster lacks",
        "needs image \"tinydisk\"",
    );
    assert_eq!(cluster.lab_status("ckpt"), None, "the lab was deployed");
    assert!(
        cluster.qemus().is_empty(),
        "guests left after a refused load"
    );
    assert!(!images().contains("tinydisk"), "{}", images());
    assert!(
        left_in(scratch.path()).is_empty(),
        "{:?}",
        left_in(scratch.path())
    );
    let archive = saved.archive.to_str().expect("utf-8");
    let leader = cluster.wait_for("a leader", Duration::from_secs(60), || {
        cluster.leader_host()
    });
    let out = std::thread::scope(|s| {
        let loader = s.spawn(|| load(&cluster, scratch.path(), &[archive]));
        cluster.wait_for(
            "the load giving the hosts their checkpoint files",
            Duration::from_secs(240),
            || (!files_of(&cluster, "s1").is_empty()).then_some(()),
        );
        assert!(
            cluster.kill_coordinator(leader),
            "no leader on host{leader}"
        );
        loader.join().expect("the load thread")
    });
    eprintln!("load while its leader was killed: {}", text(&out));
    // Image inventories are soft state on the leader: the new one knows a
    // host's images once that agent has reported to it.
    cluster.wait_for(
        "tinydisk in the new leader's image list",
        Duration::from_secs(120),
        || {
            let list = cluster.labspan(&["image", "list", "--json", "--cluster", admin_path]);
            (list.status.success() && String::from_utf8_lossy(&list.stdout).contains("tinydisk"))
                .then_some(())
        },
    );
    let outcome = cluster.wait_for("the load ended as one", Duration::from_secs(240), || {
        cluster.leader_host()?;
        match cluster.lab_status("ckpt") {
            Some(s) if s == "Running" && out.status.success() => Some("loaded"),
            None if cluster.qemus().is_empty() && files_of(&cluster, "s1").is_empty() => {
                Some("taken down")
            }
            _ => None,
        }
    });
    eprintln!("the load whose leader was killed: {outcome}");
    assert!(
        left_in(scratch.path()).is_empty(),
        "{:?}",
        left_in(scratch.path())
    );
    stdout_ok(
        &cluster.start_daemon(leader, "coordinator"),
        "restarting the killed coordinator",
    );
    if outcome == "taken down" {
        let loaded = stdout_ok(
            &load(&cluster, scratch.path(), &[archive]),
            "labspan load on a second cluster",
        );
        eprintln!("load on a second cluster: {loaded}");
    }
    back_in_s1(&cluster, saved);
    stdout_ok(&cluster.labspan(&["down", "ckpt"]), "labspan down");
}
