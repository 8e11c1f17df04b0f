//! Real QEMU (TCG unless the host's KVM proves usable) booting the real
//! `tiny` image built from Debian packages. Needs root (taps), apt sources,
//! `qemu-system-x86` and `qemu-utils`; without root each test fails and says
//! so. The `qemu` tier runs them (`.config/nextest.toml`).
//!
//! The image store is kept between runs in `$LABSPAN_TEST_IMAGES` (default
//! `/var/tmp/labspan-test-images`) so only the first run downloads.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use labspan_agent::vm::{self, Accel, AccelChoice, NicSpec, Vm, VmConfig};
use labspan_image::{Image, ImageStore, ImportRequest};

const AGENT_WAIT: Duration = Duration::from_secs(120);
const EXEC_WAIT: Duration = Duration::from_secs(30);

/// Taps need root: without it the test fails and says why, rather than pass
/// having checked nothing.
fn need_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (taps, QEMU): run the qemu tier as root"
    );
}

fn store() -> ImageStore {
    let dir = std::env::var_os("LABSPAN_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/labspan-test-images"));
    ImageStore::at(dir)
}

/// Builds tiny once per process (tests in this file run in parallel).
fn tiny() -> Image {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let report = store()
        .build_tiny(&mut |line| eprintln!("build tiny: {line}"))
        .expect("tiny image builds");
    eprintln!(
        "tiny image {} in {:?} (cached: {})",
        report.image.manifest.hash,
        started.elapsed(),
        report.cached
    );
    report.image
}

/// A unique name for this test process's taps and folders.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A tap made for the test, deleted on drop. Left down on the host side, so
/// nothing the guest sends goes anywhere.
struct Tap(String);

impl Tap {
    fn new() -> Tap {
        let name = unique("lsvt");
        let ok = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .status()
            .expect("ip runs");
        assert!(ok.success(), "creating tap {name}");
        Tap(name)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Kills the VM's QEMU (by its pid) and removes its folder if a test ends
/// before stopping it.
struct VmGuard {
    dir: PathBuf,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Ok(Some(vm)) = vm::adopt(&self.dir) {
            let pid = libc::pid_t::try_from(vm.pid()).unwrap_or(libc::pid_t::MAX);
            // SAFETY: kill(2) on the pid adopt() just checked is our QEMU.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while vm.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An empty 64 MiB qcow2 disk at `path`.
fn empty_qcow2(path: &Path) {
    labspan_tool::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg("64M"),
    )
    .unwrap_or_else(|e| panic!("this test needs qemu-img (deploy/install-deps.sh): {e}"));
}

fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("labspan-vm-test")
        .tempdir()
        .expect("tempdir")
}

fn kernel_version(image: &Image) -> String {
    image
        .manifest
        .recipe
        .iter()
        .find_map(|r| r.strip_prefix("kernel "))
        .expect("tiny's recipe names its kernel")
        .to_string()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn boot(dir: &Path, name: &str, image: Image, nics: Vec<NicSpec>) -> Vm {
    let cfg = VmConfig {
        name: name.to_string(),
        image,
        memory_mib: 256,
        cpus: 1,
        accel: Accel::Tcg,
        nics,
    };
    let started = Instant::now();
    let vm = vm::launch(dir, &cfg).await.expect("QEMU starts");
    let took = vm
        .wait_guest_agent(AGENT_WAIT)
        .await
        .expect("guest agent answers");
    eprintln!(
        "{name}: launch to guest agent {:?} (agent wait {took:?}), QEMU RSS {} KiB",
        started.elapsed(),
        rss_kib(vm.pid())
    );
    vm
}

/// Types `line` on the VM's serial console and waits for `expect` in what
/// comes back (nothing to wait for when `expect` is empty).
async fn console_answers(vm: &Vm, line: &str, expect: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(vm.console_socket())
        .await
        .expect("console socket");
    s.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("type");
    let mut seen = Vec::new();
    let deadline = Instant::now() + EXEC_WAIT;
    while !expect.is_empty() && !String::from_utf8_lossy(&seen).contains(expect) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 512];
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => panic!(
                "console never showed {expect:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_guest_runs_commands_files_and_survives_adoption() {
    need_root();
    let image = tiny();
    // A second build finds the first in the cache.
    let again = store().build_tiny(&mut |_| {}).expect("cached build");
    assert!(again.cached);
    assert_eq!(again.image, image);

    let state = state_root();
    let dir = state.path().join("vms").join("t1");
    let _guard = VmGuard { dir: dir.clone() };
    let tap = Tap::new();
    let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let nics = vec![NicSpec {
        tap: tap.0.clone(),
        mac,
    }];
    let vm = boot(&dir, "t1", image.clone(), nics).await;
    let pid = vm.pid();

    let mut ga = vm.guest_agent(EXEC_WAIT).await.expect("agent session");
    let out = ga.exec("uname", &["-r"], EXEC_WAIT).await.expect("uname");
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        kernel_version(&image)
    );

    let out = ga
        .exec_shell("echo oops >&2; exit 3", EXEC_WAIT)
        .await
        .expect("exit 3");
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stderr, b"oops\n");

    // The tap's MAC is the guest NIC's, and the hostname came from the
    // kernel command line.
    let out = ga
        .exec_shell("cat /sys/class/net/eth0/address; hostname", EXEC_WAIT)
        .await
        .expect("nic");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "52:54:00:12:34:56\nt1\n"
    );

    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ga.write_file("/tmp/blob", &data).await.expect("write file");
    assert_eq!(ga.read_file("/tmp/blob").await.expect("read file"), data);
    let out = ga
        .exec("wc", &["-c", "/tmp/blob"], EXEC_WAIT)
        .await
        .expect("wc");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("200000 "));
    drop(ga);

    // The serial console has a shell, and a new one after `exit`.
    console_answers(&vm, "echo lab$((6*7))", "lab42").await;
    // The respawned shell prints its banner once it is ready for input.
    console_answers(&vm, "exit", "built-in shell").await;
    console_answers(&vm, "echo again$((1+1))", "again2").await;

    // Forget every handle, then find the same QEMU again from the folder.
    drop(vm);
    let vm = vm::adopt(&dir).expect("adopt").expect("VM still running");
    assert_eq!(vm.pid(), pid);
    let mut ga = vm.guest_agent(EXEC_WAIT).await.expect("agent after adopt");
    // Same boot: the file written before is still there.
    assert_eq!(
        ga.read_file("/tmp/blob").await.expect("read").len(),
        data.len()
    );
    drop(ga);

    let qmp_sock = vm.record().spec.paths.qmp.clone();
    let how = vm.stop(Duration::from_secs(30)).await.expect("stop");
    // tiny's acpid turns the power button into a clean poweroff.
    assert_eq!(how, vm::Stopped::PowerDown);
    assert!(!vm::is_our_qemu(pid, &qmp_sock), "QEMU {pid} still running");
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || !vm::is_our_qemu(pid, &qmp_sock));
    assert!(!dir.exists(), "state folder {} left behind", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_image_gets_an_overlay_that_stop_removes() {
    need_root();
    let tiny = tiny();
    let state = state_root();
    // A user's image: an empty qcow2 disk booted with tiny's kernel and
    // initramfs, imported into a store of its own.
    let disk = state.path().join("user.qcow2");
    empty_qcow2(&disk);
    let kernel = tiny.kernel_path().expect("kernel");
    let initrd = tiny.initrd_path().expect("initrd");
    let user_store = ImageStore::at(state.path().join("images"));
    let image = user_store
        .import(&ImportRequest {
            name: "withdisk",
            disk: &disk,
            kernel: Some(&kernel),
            initrd: Some(&initrd),
            cmdline: Some(&tiny.manifest.cmdline),
        })
        .expect("import");

    let dir = state.path().join("vms").join("d1");
    let _guard = VmGuard { dir: dir.clone() };
    let vm = boot(&dir, "d1", image, Vec::new()).await;
    let overlay = dir.join("overlay.qcow2");
    assert!(overlay.is_file());
    let mut ga = vm.guest_agent(EXEC_WAIT).await.expect("agent");
    // The guest sees the disk (64 MiB = 131072 sectors).
    let out = ga
        .exec("cat", &["/sys/block/vda/size"], EXEC_WAIT)
        .await
        .expect("cat");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "131072");
    drop(ga);
    let pid = vm.pid();
    let qmp_sock = vm.record().spec.paths.qmp.clone();
    vm.stop(Duration::from_secs(30)).await.expect("stop");
    assert!(!vm::is_our_qemu(pid, &qmp_sock));
    assert!(!overlay.exists() && !dir.exists());
    // The image's base disk is untouched.
    assert!(user_store
        .get("withdisk")
        .expect("still there")
        .disk_path()
        .expect("disk")
        .is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_accel_picks_one_that_boots_and_caches_it() {
    need_root();
    let image = tiny();
    let state = state_root();
    let started = Instant::now();
    let accel = vm::accel::resolve(AccelChoice::Auto, state.path(), &image)
        .await
        .expect("auto resolves");
    eprintln!(
        "auto accelerator: {accel:?} (decided in {:?})",
        started.elapsed()
    );
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    // With a /dev/kvm to try, the verdict came from a probe and is cached.
    assert_eq!(
        state.path().join(vm::accel::PROBE_CACHE).is_file(),
        kvm_opens
    );
    assert!(
        !state.path().join("accel-probe").exists(),
        "probe VM left behind"
    );
    // Asking again answers from the cache, the same way.
    let again = vm::accel::resolve(AccelChoice::Auto, state.path(), &image)
        .await
        .expect("auto resolves again");
    assert_eq!(again, accel);

    let dir = state.path().join("vms").join("a1");
    let _guard = VmGuard { dir: dir.clone() };
    let cfg = VmConfig {
        name: "a1".into(),
        image,
        memory_mib: 256,
        cpus: 1,
        accel,
        nics: Vec::new(),
    };
    let vm = vm::launch(&dir, &cfg).await.expect("launch");
    vm.wait_guest_agent(AGENT_WAIT)
        .await
        .expect("the chosen accelerator boots the guest");
    vm.stop(Duration::from_secs(30)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launch_leaves_nothing_and_dead_qemu_is_not_adopted() {
    need_root();
    let tiny = tiny();
    let state = state_root();

    // An image whose kernel file is gone: QEMU refuses, the error says so,
    // and the VM folder is not left behind.
    let mut broken = tiny.clone();
    broken.dir = state.path().join("no-such-image");
    let dir = state.path().join("vms").join("b1");
    let _guard_b = VmGuard { dir: dir.clone() };
    let cfg = VmConfig {
        name: "b1".into(),
        image: broken,
        memory_mib: 128,
        cpus: 1,
        accel: Accel::Tcg,
        nics: Vec::new(),
    };
    let err = vm::launch(&dir, &cfg).await.expect_err("no kernel file");
    let msg = err.to_string();
    assert!(msg.contains("b1") && msg.contains("vmlinuz"), "{msg}");
    assert!(!dir.exists());

    // A QEMU killed behind our back: adopt() does not mistake the stale
    // pidfile for a running VM, vm.json says what to restart, and the
    // folder can be cleaned.
    let dir = state.path().join("vms").join("k1");
    let _guard_k = VmGuard { dir: dir.clone() };
    let cfg = VmConfig {
        name: "k1".into(),
        image: tiny,
        ..cfg
    };
    let vm = vm::launch(&dir, &cfg).await.expect("launch");
    vm.kill().await.expect("kill");
    assert!(vm::adopt(&dir).expect("adopt").is_none());
    let record = vm::read_record(&dir, "k1").expect("vm.json");
    assert_eq!(record.spec.memory_mib, 128);
    vm::remove_state(&dir, "k1").expect("cleanup");
    assert!(!dir.exists());
}

/// Two free TCP ports in a row on loopback (a move's RAM and NBD streams).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free ports in a row on 127.0.0.1");
}

async fn shell(vm: &Vm, line: &str) -> String {
    let mut ga = vm.guest_agent(EXEC_WAIT).await.expect("agent session");
    let out = ga.exec_shell(line, EXEC_WAIT).await.expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_to_another_qemu_with_its_ram_and_disk() {
    use labspan_agent::vm::migrate::{self, Arrival, Credentials, Endpoint};
    need_root();
    // The streams are mutual TLS with each agent's cluster certificate.
    let ca = labspan_transport::tls::ClusterCa::generate("moves").expect("CA");
    let creds = |name: &str| {
        let c = ca
            .issue(name, labspan_proto::msg::Role::Agent)
            .expect("agent certificate");
        Credentials {
            ca_pem: ca.cert_pem(),
            cert_pem: c.cert_pem(),
            key_pem: c.key_pem(),
        }
    };
    let (host_a, host_b, host_c) = (creds("host-a"), creds("host-b"), creds("host-c"));
    let tiny = tiny();
    let state = state_root();
    // tiny's kernel and initramfs over a qcow2 disk, so the disk copy runs.
    let disk = state.path().join("user.qcow2");
    empty_qcow2(&disk);
    let image = ImageStore::at(state.path().join("images"))
        .import(&ImportRequest {
            name: "withdisk",
            disk: &disk,
            kernel: Some(&tiny.kernel_path().expect("kernel")),
            initrd: Some(&tiny.initrd_path().expect("initrd")),
            cmdline: Some(&tiny.manifest.cmdline),
        })
        .expect("import");

    let src_dir = state.path().join("a").join("m1");
    let dst_dir = state.path().join("b").join("m1");
    let _src_guard = VmGuard {
        dir: src_dir.clone(),
    };
    let _dst_guard = VmGuard {
        dir: dst_dir.clone(),
    };
    let src = boot(&src_dir, "m1", image.clone(), Vec::new()).await;
    let boot_id = shell(&src, "cat /proc/sys/kernel/random/boot_id").await;
    let marker = shell(
        &src,
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /dev/shm/marker; cat /dev/shm/marker",
    )
    .await;
    // 4 MiB of random data on the guest's disk, below the page cache.
    let disk_sum = shell(
        &src,
        "head -c 4194304 /dev/urandom > /dev/shm/d && dd if=/dev/shm/d of=/dev/vda bs=1048576 conv=fsync 2>/dev/null && md5sum < /dev/shm/d",
    )
    .await;
    let uptime = |s: String| -> f64 {
        s.split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .expect("uptime")
    };
    let up_before = uptime(shell(&src, "cat /proc/uptime").await);

    // Nobody listens: the move fails and the guest runs on, here.
    let nowhere = Endpoint {
        addr: "127.0.0.1".parse().expect("ip"),
        port: free_port_pair(),
        peer: "host-b".into(),
    };
    let e = migrate::migrate_out(&src, &nowhere, &host_a, &|_| {})
        .await
        .expect_err("a move to nobody fails");
    eprintln!("move to nobody: {e}");
    assert_eq!(shell(&src, "cat /dev/shm/marker").await, marker);

    let cfg = VmConfig {
        name: "m1".to_string(),
        image,
        memory_mib: 256,
        cpus: 1,
        accel: Accel::Tcg,
        nics: Vec::new(),
    };
    let at = Endpoint {
        addr: "127.0.0.1".parse().expect("ip"),
        port: free_port_pair(),
        peer: "host-a".into(),
    };
    let dst = vm::launch_incoming(&dst_dir, &cfg, &at, &host_b)
        .await
        .expect("destination QEMU waits for the guest");
    assert!(migrate::is_incoming(&dst_dir));
    assert_eq!(
        migrate::arrival(&dst).await.expect("arrival"),
        Arrival::Waiting
    );

    // The destination lets in the source host's certificate only: another
    // agent of the same cluster gets nowhere.
    let to_b = Endpoint {
        peer: "host-b".into(),
        ..at.clone()
    };
    let e = migrate::migrate_out(&src, &to_b, &host_c, &|_| {})
        .await
        .expect_err("a move from another agent's certificate fails");
    eprintln!("move from host-c's certificate: {e}");
    assert_eq!(shell(&src, "cat /dev/shm/marker").await, marker);
    // And the source sends only to the host it was told: a certificate
    // that names another host is refused.
    let to_c = Endpoint {
        peer: "host-c".into(),
        ..at.clone()
    };
    let e = migrate::migrate_out(&src, &to_c, &host_a, &|_| {})
        .await
        .expect_err("a move to a destination with another name fails");
    eprintln!("move to host-c's name at host-b: {e}");
    assert_eq!(shell(&src, "cat /dev/shm/marker").await, marker);

    let seen = std::sync::Mutex::new(Vec::new());
    let figures = migrate::migrate_out(&src, &to_b, &host_a, &|p| {
        eprintln!("move: {p:?}");
        seen.lock().expect("lock").push(p);
    })
    .await
    .expect("the guest moves");
    eprintln!("move figures: {figures:?}");
    assert!(figures.disk_bytes >= 4 << 20, "{figures:?}");
    assert!(
        figures.ram_bytes > 0 && figures.ram_passes > 0,
        "{figures:?}"
    );
    assert!(seen
        .lock()
        .expect("lock")
        .contains(&migrate::Progress::Switchover));

    assert_eq!(
        migrate::arrival(&dst).await.expect("arrival"),
        Arrival::Arrived
    );
    assert_eq!(
        src.run_state().await.expect("source state"),
        vm::RunState::from_qmp("postmigrate")
    );
    // A plan read before the move was recorded adopts the source's copy:
    // waiting for its guest agent must end, saying the guest left.
    assert!(
        src.departed().await,
        "the source's copy must read as departed"
    );
    let waited = src.wait_guest_agent(AGENT_WAIT).await;
    assert!(
        matches!(waited, Err(vm::VmError::Departed { .. })),
        "{waited:?}"
    );
    assert!(
        !dst.departed().await,
        "the destination's copy holds the guest"
    );
    migrate::finish_incoming(&dst).await.expect("finish");
    assert!(!migrate::is_incoming(&dst_dir));
    src.kill().await.expect("source QEMU ends");

    // The same boot, the same RAM, the same disk, on the other QEMU.
    assert_eq!(
        shell(&dst, "cat /proc/sys/kernel/random/boot_id").await,
        boot_id
    );
    assert_eq!(shell(&dst, "cat /dev/shm/marker").await, marker);
    assert!(uptime(shell(&dst, "cat /proc/uptime").await) >= up_before);
    assert_eq!(
        shell(
            &dst,
            "echo 3 > /proc/sys/vm/drop_caches; head -c 4194304 /dev/vda | md5sum"
        )
        .await,
        disk_sum
    );
    // And it keeps writing to its own disk there.
    shell(&dst, "echo after > /dev/shm/x && dd if=/dev/shm/x of=/dev/vda bs=512 seek=9000 conv=fsync 2>/dev/null").await;
    dst.stop(Duration::from_secs(30)).await.expect("stop");
}

/// Waits (up to 60 s) until `query-migrate` reports `want`.
async fn migration_reaches(q: &mut vm::Qmp, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = q
            .execute("query-migrate", None)
            .await
            .expect("query-migrate");
        if m["status"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "migration never {want}: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_state(q: &mut vm::Qmp) -> String {
    let s = q.execute("query-status", None).await.expect("query-status");
    s["status"].as_str().unwrap_or_default().to_string()
}

/// A guest whose migration was cancelled is still here, and one whose
/// migration completed has left: the rule that a move's roll-back and the
/// agent's adoption of a moved guest go by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_completed_migration_counts_as_the_guest_leaving() {
    need_root();
    let state = state_root();
    let dir = state.path().join("m1");
    let _guard = VmGuard { dir: dir.clone() };
    let vm = boot(&dir, "m1", tiny(), Vec::new()).await;
    let mut q = vm.qmp().await.expect("QMP");
    q.execute("stop", None).await.expect("stop");

    // A peer that accepts and never reads: the migration stalls until cancelled.
    let sink = state.path().join("sink.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sink).expect("bind sink");
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let uri = format!("unix:{}", sink.display());
    q.execute("migrate", Some(serde_json::json!({ "uri": uri })))
        .await
        .expect("migrate starts");
    let _peer = held.join().expect("accept thread").expect("accept");
    q.execute("migrate_cancel", None).await.expect("cancel");
    migration_reaches(&mut q, "cancelled").await;
    assert_eq!(run_state(&mut q).await, "paused");
    assert!(
        !vm::migrated_out(&mut q).await,
        "a cancelled migration left"
    );

    // Into a sink that reads everything: the migration completes.
    q.execute(
        "migrate",
        Some(serde_json::json!({ "uri": "exec:cat > /dev/null" })),
    )
    .await
    .expect("migrate starts");
    migration_reaches(&mut q, "completed").await;
    assert!(
        vm::migrated_out(&mut q).await,
        "a completed migration did not leave"
    );
    // QMP takes one client at a time: `departed` opens its own.
    drop(q);
    assert!(
        vm.departed().await,
        "a completed migration is not a departure"
    );
    let mut q = vm.qmp().await.expect("QMP");

    // QEMU lets the guest run again from here; it answers as before.
    q.execute("cont", None).await.expect("cont");
    assert_eq!(run_state(&mut q).await, "running");
    assert!(
        !vm::migrated_out(&mut q).await,
        "a running guest counts as left"
    );
    let mut ga = vm.guest_agent(EXEC_WAIT).await.expect("agent session");
    let out = ga.exec_shell("echo here", EXEC_WAIT).await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "here");
}
