#!/usr/bin/env python3
"""Measures `labspan up --no-verify` against bare QEMU boots of the same guest.

Run through benches/up.sh, which provides the state folder, the network
namespace (this runs inside it) and the cleanup. Prints a markdown table on
stdout, progress on stderr, and writes every measurement to
$BENCH_STATE/results.json.

For each size N and each round:
  labspan  `labspan up --no-verify` of a lab of N `tiny` guests (256 MiB,
           1 vCPU, one NIC each on one shared LAN), timed from the start of
           the process to its exit: labspan exits once every guest agent has
           answered and the guest's addresses are applied. Peak RSS of the
           labspan process itself is its VmHWM, sampled from /proc while it
           runs (wait4's ru_maxrss would also count QEMU's pre-daemonize
           parent). QEMU RSS is each VM's VmRSS right after `up` returns.
  bare     N `qemu-system-x86_64` processes with exactly the argv labspan
           gave its first QEMU (read from /proc/PID/cmdline, checked against
           the kernel, initrd and cmdline in its vm.json), only the state
           folder, VM name, tap and MAC changed; taps on one bridge made with
           `ip`. Timed from the first spawn until every guest agent answered
           `guest-sync` (one connection per VM, a new guest-sync every 0.5 s
           until one is answered: close to the earliest moment the agent can
           answer).
Rounds interleave the sizes and both modes, so background load drifts over
all of them alike.
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

BIN = os.environ["LABSPAN_BIN"]
STATE = os.environ["BENCH_STATE"]
ROOT = os.environ["BENCH_ROOT"]
REPEAT = int(os.environ.get("REPEAT", "5"))
SIZES = [int(s) for s in os.environ.get("SIZES", "1 4 8").split()]
QGA_DEADLINE = 300.0
# The reconciler's "configured" marker (named differently across versions).
CONFIGURED = ("configured.json", "configured", "exec.log")
ENV = dict(os.environ, LABSPAN_STATE=STATE, LABSPAN_ACCEL="tcg")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def lab_file(n):
    """A lab of n tiny guests on one LAN (one guest: its NIC unconnected)."""
    name = f"bench{n}"
    lines = [f"name: {name}", "defaults: {image: tiny, memory: 256MiB, cpus: 1}", "nodes:"]
    for i in range(1, n + 1):
        lines += [f"  n{i}:", "    nics:", f"      eth0: {{ip: [198.19.100.{i}/24]}}"]
    if n > 1:
        members = ", ".join(f"n{i}:eth0" for i in range(1, n + 1))
        lines += ["lans:", f"  lan: [{members}]"]
    path = os.path.join(STATE, f"{name}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return name, path


def status_kib(pid, field):
    """A `kB` field of /proc/PID/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """utime + stime of the process itself (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_pid(path):
    with open(path) as f:
        return int(f.read().strip())


def qemu_pids(folder):
    """Pids from the qemu.pid files one level below `folder`."""
    pids = {}
    for vm in sorted(os.listdir(folder)):
        p = os.path.join(folder, vm, "qemu.pid")
        if os.path.exists(p):
            pids[vm] = read_pid(p)
    return pids


def stop_qemus(pids):
    """SIGTERM the given QEMUs (ours, by pidfile), SIGKILL stragglers."""
    for pid in pids:
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)


def run_labspan(n):
    """One timed `labspan up --no-verify`, then the lab is taken down."""
    name, path = lab_file(n)
    t0_wall, t0 = time.time(), time.monotonic()
    proc = subprocess.Popen([BIN, "up", "--no-verify", path], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    hwm, cpu = 0, 0.0
    out = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    while proc.poll() is None:
        hwm = max(hwm, status_kib(proc.pid, "VmHWM") or 0)
        cpu = max(cpu, cpu_seconds(proc.pid) or 0.0)
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    reader.join()
    text = out[0].decode(errors="replace")
    if proc.returncode != 0 or "is up" not in text:
        raise SystemExit(f"labspan up of {n} VM(s) failed (exit {proc.returncode}):\n{text}")
    folder = os.path.join(STATE, "vms", name)
    pids = qemu_pids(folder)
    rss = [status_kib(p, "VmRSS") for p in pids.values()]
    anon = [status_kib(p, "RssAnon") for p in pids.values()]
    # Where the time went, from the files labspan writes: vm.json just before
    # it spawns QEMU, qemu.pid by QEMU, its configuration marker (its name
    # changed across versions) after the guest's setup.
    def mt(vm, *names):
        for f in names:
            p = os.path.join(folder, vm, f)
            if os.path.exists(p):
                return os.stat(p).st_mtime - t0_wall
        raise SystemExit(f"labspan wrote none of {names} in {folder}/{vm}")
    phases = {
        "to_first_launch": min(mt(vm, "vm.json") for vm in pids),
        "to_last_qemu_running": max(mt(vm, "qemu.pid") for vm in pids),
        "to_last_configured": max(mt(vm, *CONFIGURED) for vm in pids),
    }
    per_vm = [mt(vm, *CONFIGURED) - mt(vm, "vm.json") for vm in pids]
    first = next(iter(pids))
    with open(f"/proc/{pids[first]}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
    with open(os.path.join(folder, first, "vm.json")) as f:
        record = json.load(f)
    stop_qemus(list(pids.values()))
    subprocess.run([BIN, "down", name], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return {"elapsed": elapsed, "hwm_kib": hwm, "cpu_s": cpu, "per_vm": per_vm, "qemu_rss_kib": rss, "qemu_anon_kib": anon, "phases": phases,
            "argv": argv, "record": record, "vm_dir": os.path.join(folder, first)}


def bare_template(run):
    """labspan's QEMU argv, checked against the VM's vm.json."""
    argv, spec = run["argv"], run["record"]["spec"]
    for key, flag in (("kernel", "-kernel"), ("initrd", "-initrd"), ("cmdline", "-append")):
        if argv[argv.index(flag) + 1] != spec[key]:
            raise SystemExit(f"QEMU's {flag} differs from vm.json's {key}: {argv} vs {spec}")
    nic = spec["nics"][0]
    mac = ":".join(f"{b:02x}" for b in nic["mac"])
    return {"argv": argv, "dir": run["vm_dir"], "name": spec["name"], "tap": nic["tap"], "mac": mac}


def bare_argv(tpl, i, folder, tap):
    """The template argv for bare VM i: its folder, name, tap and MAC."""
    mac = f"52:54:00:be:00:{i:02x}"
    name = f"b{i}"
    out = []
    for a in tpl["argv"]:
        a = a.replace(tpl["dir"], folder).replace(f"ifname={tpl['tap']},", f"ifname={tap},")
        a = a.replace(f"mac={tpl['mac']}", f"mac={mac}")
        a = re.sub(r"labspan\.hostname=\S+", f"labspan.hostname={name}", a)
        if a.startswith(tpl["name"] + ",process="):
            a = f"{name},process=qemu-{name}"
        out.append(a)
    return out


def wait_agent(path, deadline):
    """Returns when the guest agent at `path` answers guest-sync. A sync sent
    before the guest opened its port may be dropped, so a new one (new id)
    goes out every 0.5 s on the same connection; any of ours counts."""
    ids = set()
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            time.sleep(0.02)
            continue
        try:
            buf = b""
            while time.monotonic() < deadline:
                ident = 4242 + len(ids)
                ids.add(ident)
                s.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": ident}}).encode() + b"\n")
                resend = time.monotonic() + 0.5
                while time.monotonic() < resend:
                    s.settimeout(max(0.01, resend - time.monotonic()))
                    try:
                        chunk = s.recv(4096)
                    except socket.timeout:
                        break
                    if not chunk:
                        raise OSError("guest agent socket closed")
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        try:
                            if json.loads(line).get("return") in ids:
                                return
                        except (ValueError, AttributeError):
                            pass
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.02)
    raise SystemExit(f"guest agent at {path} did not answer in {QGA_DEADLINE:.0f} s")


def sh(*cmd):
    subprocess.run(cmd, check=True)


def run_bare(n, tpl, rnd):
    """N bare QEMUs started at once; time until every guest agent answered."""
    base = os.path.join(STATE, "bare")
    sh("ip", "link", "add", "bbr0", "type", "bridge")
    sh("ip", "link", "set", "bbr0", "up")
    folders, taps = [], []
    for i in range(1, n + 1):
        tap, folder = f"btap{i}", os.path.join(base, f"r{rnd}n{n}", f"b{i}")
        os.makedirs(folder)
        sh("ip", "tuntap", "add", tap, "mode", "tap")
        sh("ip", "link", "set", tap, "master", "bbr0", "up")
        folders.append(folder)
        taps.append(tap)
    t0 = time.monotonic()
    spawns = [subprocess.Popen(bare_argv(tpl, i + 1, f, t), stdin=subprocess.DEVNULL)
              for i, (f, t) in enumerate(zip(folders, taps))]
    deadline = t0 + QGA_DEADLINE
    ready = [None] * n

    def one(i):
        wait_agent(os.path.join(folders[i], "qga.sock"), deadline)
        ready[i] = time.monotonic() - t0

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for p in spawns:
        if p.wait() != 0:
            raise SystemExit(f"bare qemu-system-x86_64 failed to start (exit {p.returncode})")
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    pids = [read_pid(os.path.join(f, "qemu.pid")) for f in folders]
    rss = [status_kib(p, "VmRSS") for p in pids]
    anon = [status_kib(p, "RssAnon") for p in pids]
    stop_qemus(pids)
    for tap in taps:
        sh("ip", "link", "del", tap)
    sh("ip", "link", "del", "bbr0")
    if None in ready:
        raise SystemExit("a bare guest agent never answered")
    return {"elapsed": elapsed, "per_vm": ready, "qemu_rss_kib": rss, "qemu_anon_kib": anon}


def spread(xs):
    xs = sorted(xs)
    return f"{statistics.median(xs):.2f} ({xs[0]:.2f}–{xs[-1]:.2f})"


def mib(kib):
    return kib / 1024


def machine():
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "loadavg": load, "qemu": qemu.stdout.splitlines()[0],
            "git": rev.stdout.strip(), "kernel": os.uname().release}


def table(results, before, after):
    rows = ["| VMs | `labspan up` s | bare QEMU s | overhead s | labspan peak RSS MiB | QEMU RSS/VM MiB (labspan) | QEMU RSS/VM MiB (bare) |",
            "|----:|---------------:|------------:|-----------:|---------------------:|--------------------------:|-----------------------:|"]
    for n in SIZES:
        ls, bare = results["labspan"][str(n)], results["bare"][str(n)]
        up = [r["elapsed"] for r in ls]
        bt = [r["elapsed"] for r in bare]
        over = [a - b for a, b in zip(up, bt)]
        hwm = [mib(r["hwm_kib"]) for r in ls]
        qrss = [mib(x) for r in ls for x in r["qemu_rss_kib"]]
        brss = [mib(x) for r in bare for x in r["qemu_rss_kib"]]
        rows.append(f"| {n} | {spread(up)} | {spread(bt)} | {spread(over)} | {spread(hwm)} | "
                    f"{statistics.median(qrss):.0f} ({min(qrss):.0f}–{max(qrss):.0f}) | "
                    f"{statistics.median(brss):.0f} ({min(brss):.0f}–{max(brss):.0f}) |")
    rows.append("")
    rows.append("Where `labspan up`'s time goes (median s from its start; from the files it writes),")
    rows.append("its own CPU time, and each guest's time from QEMU spawn to ready (labspan: configured):")
    rows.append("")
    rows.append("| VMs | first QEMU spawned | last QEMU running | last guest configured | process exit | "
                "labspan CPU s | per VM, labspan | per VM, bare |")
    rows.append("|----:|---:|---:|---:|---:|---:|---:|---:|")
    for n in SIZES:
        ls, bare = results["labspan"][str(n)], results["bare"][str(n)]
        med = lambda k: statistics.median(r["phases"][k] for r in ls)
        cpu = [r["cpu_s"] for r in ls]
        lvm = [x for r in ls for x in r["per_vm"]]
        bvm = [x for r in bare for x in r["per_vm"]]
        rows.append(f"| {n} | {med('to_first_launch'):.2f} | {med('to_last_qemu_running'):.2f} | "
                    f"{med('to_last_configured'):.2f} | {statistics.median(r['elapsed'] for r in ls):.2f} | "
                    f"{spread(cpu)} | {spread(lvm)} | {spread(bvm)} |")
    m = results["machine"]
    rows.append("")
    rows.append(f"{REPEAT} rounds; median (min–max). {m['cpus']} CPUs, kernel {m['kernel']}, {m['qemu']}, "
                f"TCG; load average before {before}, after {after}; labspan {m['git']}.")
    return "\n".join(rows)


def main():
    results = {"machine": machine(), "labspan": {str(n): [] for n in SIZES},
               "bare": {str(n): [] for n in SIZES}}
    before = results["machine"]["loadavg"]
    log("warm-up: labspan up of 1 VM (not counted; gives the QEMU argv)")
    tpl = bare_template(run_labspan(1))
    results["bare_argv_example"] = bare_argv(tpl, 1, "/STATE/bare/b1", "btap1")
    for rnd in range(REPEAT):
        for n in SIZES:
            r = run_labspan(n)
            for k in ("argv", "record", "vm_dir"):
                r.pop(k)
            results["labspan"][str(n)].append(r)
            b = run_bare(n, tpl, rnd)
            results["bare"][str(n)].append(b)
            log(f"round {rnd + 1}/{REPEAT} n={n}: labspan {r['elapsed']:.2f} s "
                f"(peak RSS {mib(r['hwm_kib']):.1f} MiB, CPU {r['cpu_s']:.2f} s), bare {b['elapsed']:.2f} s")
    after = machine()["loadavg"]
    results["loadavg_after"] = after
    with open(os.path.join(STATE, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table(results, before, after))


if __name__ == "__main__":
    main()
