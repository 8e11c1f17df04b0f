#!/usr/bin/env python3
"""N bare QEMU boots at once, for comparison with `labspan up` of a lab of N
guests (docs/benchmarks.md, "Thirty OSPF routers on four hosts").

Starts N QEMUs of an image (TCG, 1 vCPU, the devices labspan gives a guest,
no NICs) all at once, then waits until every guest agent answers
`guest-ping`, which is when labspan counts a guest as booted. Prints the
time until the last one answered. No labspan, no network, no OSPF.

    sudo deploy/bench-boots.py [N] [IMAGE] [MEMORY_MIB]

Defaults: 30 guests of tiny-router from /var/lib/labspan/images, 192 MiB.
"""
import os
import signal
import sys
import tempfile
import time

from bareqemu import image_dir, qemu, wait_guest_agent


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    img = image_dir("", sys.argv[2] if len(sys.argv) > 2 else "tiny-router")
    mib = int(sys.argv[3]) if len(sys.argv) > 3 else 192
    with tempfile.TemporaryDirectory() as d:
        pids = []
        try:
            start = time.time()
            for k in range(n):
                pids.append(qemu(d, f"g{k}", img, mem_mib=mib))
            started = time.time() - start
            for k in range(n):
                wait_guest_agent(f"{d}/g{k}.qga", limit=900)
            ready = time.time() - start
            load = os.getloadavg()[0]
            print(f"{n} bare QEMU boots: all started in {started:.1f} s, every guest agent answered after {ready:.1f} s (load average {load:.1f})")
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    main()
