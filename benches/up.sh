#!/usr/bin/env bash
# Benchmark of `labspan up` on one host against bare QEMU boots of the same
# guest. See docs/benchmarks.md, section "Deploying on one host".
#
#   sudo benches/up.sh                  # 5 rounds of 1, 4 and 8 VMs
#   REPEAT=3 SIZES="1 4" benches/up.sh  # fewer
#
# Environment: LABSPAN_BIN (default target/release/labspan), IMAGES (the image
# store to reuse, default /var/lib/labspan/images), REPEAT, SIZES, OUT (where
# the raw JSON goes, default: printed path in the temporary folder, copied to
# $OUT if set).
#
# Everything runs in a network namespace made here; the temporary state folder,
# the namespace and the QEMU processes started here (found by their pidfiles
# under the state folder) are removed on any exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${LABSPAN_BIN:-$root/target/release/labspan}
images=${IMAGES:-/var/lib/labspan/images}
export REPEAT=${REPEAT:-5} SIZES=${SIZES:-"1 4 8"}

die() { echo "up.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace, taps)"
[ -x "$bin" ] || die "no labspan binary at $bin: cargo build --release -p labspan (or set LABSPAN_BIN)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: apt-get install qemu-system-x86 qemu-utils"
command -v python3 >/dev/null || die "python3 missing"

state=$(mktemp -d /tmp/labspan-bench.XXXXXX)
ns=lsbench-$$

# Kills the QEMUs whose pidfiles are in our state folder, and only if the
# process really is a QEMU serving a socket inside that folder.
kill_ours() {
    local f pid pids=()
    for f in "$state"/vms/*/*/qemu.pid "$state"/bare/*/qemu.pid; do
        [ -f "$f" ] || continue
        pid=$(tr -dc 0-9 <"$f")
        { [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ]; } || continue
        if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$state/"; then
            kill "$pid" 2>/dev/null && pids+=("$pid")
        fi
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        if [ -d "/proc/$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    done
}

cleanup() {
    set +e
    kill_ours
    ip netns del "$ns" 2>/dev/null
    rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ln -s "$images" "$state/images"
if [ ! -e "$images/names/tiny" ]; then
    echo "building the tiny image into $images" >&2
    "$bin" image build tiny --store "$images" >&2
fi

ip netns add "$ns"
ip -n "$ns" link set lo up

export LABSPAN_BIN=$bin BENCH_STATE=$state BENCH_ROOT=$root
ip netns exec "$ns" python3 -B "$here/up_bench.py"
if [ -n "${OUT:-}" ]; then cp "$state/results.json" "$OUT"; fi
