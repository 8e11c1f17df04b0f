#!/usr/bin/env python3
"""Bare QEMU-to-QEMU live migration of the `tiny` guest, for comparison
with `labspan move` (docs/benchmarks.md, "Live moves").

Boots tiny (256 MiB, 1 vCPU, TCG, the devices labspan gives it) in one
QEMU, starts a second with `-incoming`, migrates over loopback TCP with
QEMU's defaults but the bandwidth cap lifted (as labspan does), and prints
QEMU's downtime and total time per run, and the wall time from starting
the destination QEMU to the migration's end. No disk, no labspan.

    sudo deploy/bench-migration.py [IMAGE_DIR] [RUNS] [busy|idle] [tls]

With `tls`, both streams are mutual TLS with x509 certificates from a CA
made for the run (openssl, P-256), as `labspan move` sets them up
(`tls-creds-x509`, verify-peer, `tls-hostname`, `tls-authz`), so that
TLS's cost is measured apart from labspan's.

IMAGE_DIR holds tiny's vmlinuz and initrd.img (default: the tiny image of
/var/lib/labspan/images). With `busy`, the guest
rewrites 32 MiB of its RAM (/dev/shm) from /dev/urandom in a loop during
the migration (BUSY_LOOP, the same line `docs/benchmarks.md` runs in a
labspan guest).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bareqemu import Qmp, image_dir, qemu, wait_guest_agent


BUSY_LOOP = "while true; do dd if=/dev/urandom of=/dev/shm/hot bs=1M count=32 2>/dev/null; done"


def start_busy(path):
    """Starts BUSY_LOOP in the guest through its agent (guest-exec)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    cmd = {"execute": "guest-exec", "arguments": {
        "path": "/bin/sh", "arg": ["-c", BUSY_LOOP], "capture-output": False}}
    s.sendall(json.dumps(cmd).encode() + b"\n")
    reply = s.recv(4096)
    if b"return" not in reply:
        raise RuntimeError(f"guest-exec: {reply!r}")
    s.close()
    time.sleep(2)  # the loop is writing by now


def make_credentials(d):
    """A CA and one certificate (server and client usage, the key usages
    labspan's agents carry) in QEMU's x509 folder layout; returns it."""
    tls = os.path.join(d, "tls")
    os.mkdir(tls, 0o700)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, cwd=tls, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
        "-subj", "/O=bench/CN=bench CA", "-days", "1",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    ssl("req", *ec, "-keyout", "server-key.pem", "-out", "peer.csr",
        "-subj", "/O=bench/CN=peer")
    with open(os.path.join(tls, "ext"), "w") as f:
        f.write("subjectAltName=DNS:peer.bench\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n")
    ssl("x509", "-req", "-in", "peer.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-out", "server-cert.pem", "-days", "1", "-extfile", "ext")
    for kind in ("cert", "key"):
        with open(os.path.join(tls, f"server-{kind}.pem")) as f, \
                open(os.path.join(tls, f"client-{kind}.pem"), "w") as g:
            g.write(f.read())
    return tls


def add_tls(q, tls, endpoint):
    q.run("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                           "endpoint": endpoint, "dir": tls, "verify-peer": True})


def one_run(img, port, busy, with_tls):
    with tempfile.TemporaryDirectory() as d:
        pids = []
        try:
            pids.append(qemu(d, "src", img))
            wait_guest_agent(f"{d}/src.qga")
            if busy:
                start_busy(f"{d}/src.qga")
            tls = make_credentials(d) if with_tls else None
            uri = f"tcp:127.0.0.1:{port}"
            start = time.monotonic()
            pids.append(qemu(d, "dst", img, extra=["-incoming", "defer"]))
            dst = Qmp(f"{d}/dst.qmp")
            src = Qmp(f"{d}/src.qmp")
            params = {"max-bandwidth": 10 << 30, "downtime-limit": 300}
            if tls:
                add_tls(dst, tls, "server")
                dst.run("object-add", **{"qom-type": "authz-simple", "id": "authz0",
                                         "identity": "O=bench,CN=peer"})
                dst.run("migrate-set-parameters", **{"tls-creds": "tls0", "tls-authz": "authz0"})
                add_tls(src, tls, "client")
                params.update({"tls-creds": "tls0", "tls-hostname": "peer.bench"})
            dst.run("migrate-incoming", uri=uri)
            src.run("migrate-set-parameters", **params)
            src.run("migrate", uri=uri)
            while True:
                m = src.run("query-migrate")
                if m.get("status") in ("completed", "failed", "cancelled"):
                    m["wall-ms"] = int((time.monotonic() - start) * 1000)
                    return m
                time.sleep(0.05)
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def main():
    img = image_dir(sys.argv[1] if len(sys.argv) > 1 else "")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else 3
    busy = len(sys.argv) > 3 and sys.argv[3] == "busy"
    with_tls = len(sys.argv) > 4 and sys.argv[4] == "tls"
    for i in range(runs):
        m = one_run(img, 47000 + i, busy, with_tls)
        ram = m.get("ram", {})
        print(
            f"run {i + 1}: {m['status']}: downtime {m.get('downtime')} ms, "
            f"total {m.get('total-time')} ms, destination start to end {m['wall-ms']} ms, RAM {ram.get('transferred', 0) >> 20} MiB "
            f"in {ram.get('dirty-sync-count')} passes"
        )


if __name__ == "__main__":
    main()
