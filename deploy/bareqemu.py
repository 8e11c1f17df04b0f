"""What the bare-QEMU benchmarks share (deploy/bench-boots.py,
bench-checkpoint.py, bench-migration.py): the image store's files, QEMU
started as labspan starts a guest (TCG, 1 vCPU, serial console, QMP,
guest agent, pvpanic; no NICs), a QMP client and the guest agent's ping.
Each benchmark compares labspan with these same QEMUs without labspan.
"""
import json
import os
import socket
import subprocess
import time

# The image store of the tests and `labspan image build` (TEST_IMAGES in
# tests/src/lib.rs).
STORE = "/var/lib/labspan/images"


def image_dir(arg="", name="tiny"):
    """ARG if given, else the folder of image NAME in the store: it holds
    vmlinuz and initrd.img."""
    if arg:
        return arg
    with open(os.path.join(STORE, "names", name)) as f:
        return os.path.join(STORE, "objects", f.read().strip())


class Qmp:
    """One QMP connection, capabilities negotiated."""

    def __init__(self, path):
        for _ in range(100):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.run("qmp_capabilities")

    def run(self, cmd, **args):
        """Runs CMD; its return value, or RuntimeError with QEMU's error."""
        self.f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"{cmd}: {msg['error']}")

    def close(self):
        self.s.close()


def qemu(d, name, img, mem_mib=256, disk=None, extra=()):
    """Starts guest NAME of image folder IMG, daemonized, its sockets in D
    (NAME.console, NAME.qmp, NAME.qga), on qcow2 DISK if given; its pid."""
    args = [
        "qemu-system-x86_64", "-name", name, "-machine", "q35", "-accel", "tcg",
        "-m", f"{mem_mib}M", "-smp", "1", "-nodefaults", "-display", "none",
        "-kernel", f"{img}/vmlinuz", "-initrd", f"{img}/initrd.img",
        "-append", "console=ttyS0 quiet no_timer_check panic=1",
        "-chardev", f"socket,id=serial0,path={d}/{name}.console,server=on,wait=off",
        "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qmp0,path={d}/{name}.qmp,server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=qga0,path={d}/{name}.qga,server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        "-device", "pvpanic", "-pidfile", f"{d}/{name}.pid", "-daemonize",
    ]
    if disk:
        args += ["-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={disk}",
                 "-device", "virtio-blk-pci,drive=disk0"]
    subprocess.run(args + list(extra), check=True)
    with open(f"{d}/{name}.pid") as f:
        return int(f.read())


def wait_guest_agent(path, limit=180):
    """Until the guest agent on socket PATH answers `guest-ping` (when
    labspan counts a guest as booted); RuntimeError after LIMIT s."""
    end = time.time() + limit
    while time.time() < end:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(path)
            s.sendall(b'{"execute":"guest-ping"}\n')
            if b"return" in s.recv(4096):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the guest agent never answered")


def kill(pid):
    """SIGKILL to PID (one this benchmark started) and wait until it is gone."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.01)
