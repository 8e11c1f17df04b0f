#!/usr/bin/env python3
"""Bare QEMU save and restore of the guests of the checkpoint test, for
comparison with `labspan checkpoint create` and `labspan reset`
(docs/benchmarks.md, "Checkpoints").

Boots 3 `tiny` guests (256 MiB, 1 vCPU, TCG, the devices labspan gives
them), the third over a 64 MiB qcow2 disk overlay, as lab "ckpt" of
tests/tests/checkpoint.rs has them (there on two hosts, here on one).
Each run then, with no labspan:
- save: `stop` every guest at once; per guest, for the disk one a new
  overlay on top (`blockdev-snapshot-sync`), `migrate` to `exec:cat >
  FILE` with the bandwidth cap lifted, `cont` once its own save is done;
  prints each guest's pause and the frozen window (first stop to last
  cont), and the RAM files' sizes;
- restore: every QEMU ended and started again paused with `-incoming
  defer` (the disk one on a fresh overlay over the saved layer),
  `migrate-incoming exec:cat FILE`, then all `cont`; prints the time from
  the first QEMU ended to the last `cont`.
The 1-minute load average is printed with each run.

    sudo deploy/bench-checkpoint.py [IMAGE_DIR] [RUNS]

IMAGE_DIR holds tiny's vmlinuz and initrd.img (default: the tiny image of
/var/lib/labspan/images).

For the cost per GiB of RAM (deploy/bench-checkpoint-size.sh runs it so):
BENCH_GUESTS=p (or p,v: guests without a disk only), BENCH_MEM=1024 (MiB
of RAM per guest, default 256), BENCH_FILL=768 (MiB of non-zero data each
guest writes to its RAM-backed root before the first save, default 0:
QEMU sends an untouched page as a flag, so an idle guest's file is small).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bareqemu import Qmp, image_dir, kill, qemu, wait_guest_agent


MEM = int(os.environ.get("BENCH_MEM", "256"))
FILL = int(os.environ.get("BENCH_FILL", "0"))
GUESTS = os.environ.get("BENCH_GUESTS", "p,v,d").split(",")


def guest_sh(path, line, limit=1200):
    """Runs `sh -c LINE` in the guest through its agent, to its end."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(limit)
    s.connect(path)
    f = s.makefile("rw")

    def ask(cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        f.flush()
        msg = json.loads(f.readline())
        if "error" in msg:
            raise RuntimeError(f"{cmd}: {msg['error']}")
        return msg["return"]

    pid = ask("guest-exec", path="/bin/sh", arg=["-c", line])["pid"]
    end = time.time() + limit
    while time.time() < end:
        st = ask("guest-exec-status", pid=pid)
        if st["exited"]:
            if st.get("exitcode", 1) != 0:
                raise RuntimeError(f"guest: `{line}` exited {st.get('exitcode')}")
            s.close()
            return
        time.sleep(0.2)
    raise RuntimeError(f"guest: `{line}` did not end in {limit} s")


def wait_migration(q):
    while True:
        status = q.run("query-migrate").get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"migration {status}")
        time.sleep(0.005)


def wait_settled(q):
    # `cont` is refused while QEMU is still in finish-migrate.
    while q.run("query-status")["status"] == "finish-migrate":
        time.sleep(0.005)


def save_all(d, guests, n):
    """Saves every guest at one pause; each resumes once its own save is done."""
    paused, resumed = {}, {}

    def save(name, g):
        q = g["qmp"]
        if g["disk"]:
            top = f"{d}/{name}.top{n}.qcow2"
            q.run("blockdev-snapshot-sync", **{"node-name": g["node"], "snapshot-file": top,
                                               "snapshot-node-name": f"top{n}", "format": "qcow2"})
            g["layer"], g["node"], g["disk"] = g["disk"], f"top{n}", top
        q.run("migrate-set-parameters", **{"max-bandwidth": 10 << 30})
        q.run("migrate", uri=f"exec:cat > {d}/{name}.ram")
        wait_migration(q)
        wait_settled(q)
        q.run("cont")
        resumed[name] = time.monotonic()

    for name, g in guests.items():
        g["qmp"].run("stop")
        paused[name] = time.monotonic()
    threads = [threading.Thread(target=save, args=(name, g)) for name, g in guests.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frozen = max(resumed.values()) - min(paused.values())
    return {name: resumed[name] - paused[name] for name in guests}, frozen


def restore_all(d, img, guests, n):
    """Every QEMU ended and started again from its saved state, then all resume."""
    started = time.monotonic()
    for name, g in guests.items():
        g["qmp"].close()
        kill(g["pid"])

    def restore(name, g):
        disk = None
        if g["layer"]:
            disk = f"{d}/{name}.back{n}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                            "-b", g["layer"], disk], check=True)
        g["pid"] = qemu(d, name, img, MEM, disk, ["-S", "-incoming", "defer"])
        g["qmp"] = q = Qmp(f"{d}/{name}.qmp")
        q.run("migrate-incoming", uri=f"exec:cat {d}/{name}.ram")
        wait_migration(q)
        if disk:
            g["disk"], g["node"], g["layer"] = disk, "disk0", None

    threads = [threading.Thread(target=restore, args=(name, g)) for name, g in guests.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in guests.values():
        g["qmp"].run("cont")
    return time.monotonic() - started


def main():
    img = image_dir(sys.argv[1] if len(sys.argv) > 1 else "")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as d:
        base = f"{d}/disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
        overlay = f"{d}/d.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base,
                        overlay], check=True)
        guests = {}
        try:
            for name, disk in (("p", None), ("v", None), ("d", overlay)):
                if name not in GUESTS:
                    continue
                pid = qemu(d, name, img, MEM, disk)
                guests[name] = {"pid": pid, "disk": disk, "node": "disk0", "layer": None}
            for name, g in guests.items():
                wait_guest_agent(f"{d}/{name}.qga")
                g["qmp"] = Qmp(f"{d}/{name}.qmp")
                if FILL:
                    guest_sh(f"{d}/{name}.qga", "mount -o remount,size=90% / && "
                             f"dd if=/dev/urandom of=/fill bs=1048576 count={FILL} 2>/dev/null")
            for n in range(1, runs + 1):
                load = os.getloadavg()[0]
                pauses, frozen = save_all(d, guests, n)
                sizes = {name: os.path.getsize(f"{d}/{name}.ram") >> 20 for name in guests}
                back = restore_all(d, img, guests, n)
                print(json.dumps({
                    "run": n, "load_1m": round(load, 1), "mem_mib": MEM, "fill_mib": FILL,
                    "paused_ms": {k: round(v * 1000) for k, v in pauses.items()},
                    "frozen_ms": round(frozen * 1000), "ram_mib": sizes,
                    "restore_ms": round(back * 1000)}), flush=True)
                time.sleep(2)
        finally:
            for g in guests.values():
                kill(g["pid"])


if __name__ == "__main__":
    main()
