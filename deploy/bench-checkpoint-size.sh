#!/usr/bin/env bash
# Checkpoint and reset time per GiB of guest RAM (docs/benchmarks.md,
# "Checkpoints: time per GiB of guest RAM"), labspan against a bare QEMU
# save of the same guest.
#
#   sudo deploy/bench-checkpoint-size.sh [MiB ...]     (default: 512 1024 2048)
#
# For each size: a 2-host deploy/cluster.sh (cluster "ckb", 198.18.77.0/24)
# runs lab "ckb" (two `tiny` guests of that much RAM, one per host); each
# guest fills 3/4 of its RAM with random data (QEMU sends untouched pages
# as flags, so an idle guest's RAM file says little about its size); then
# `labspan checkpoint create` and `labspan reset`, each printed as JSON,
# then the lab goes down. Then deploy/bench-checkpoint.py saves and
# restores two bare QEMU guests of the same size and fill on this host at
# one pause (as the lab's two hosts do), with no labspan.
# LABSPAN_BIN as for deploy/cluster.sh. The cluster is removed on exit.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(512 1024 2048)
for s in "${sizes[@]}"; do
    if ! [[ "$s" =~ ^[0-9]+$ ]] || [ "$s" -lt 256 ]; then
        echo "bench-checkpoint-size: size $s: want MiB, at least 256" >&2
        exit 2
    fi
done
export LABSPAN_CLUSTER_NAME=ckb LABSPAN_CLUSTER_LINK=lsc-ckb
export LABSPAN_CLUSTER_STATE=/var/lib/labspan/ckb LABSPAN_CLUSTER_SUBNET=198.18.77.0/24
bin=${LABSPAN_BIN:-target/release/labspan}
admin=$LABSPAN_CLUSTER_STATE/admin.cluster
work=$(mktemp -d)
cleanup() { deploy/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
deploy/cluster.sh up 2 >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
cli() { LABSPAN_CLUSTER=$admin "$bin" "$@"; }
for mib in "${sizes[@]}"; do
    fill=$((mib * 3 / 4))
    # The root is a tmpfs of half the RAM until it is given more.
    fill_line="mount -o remount,size=90% / && dd if=/dev/urandom of=/fill bs=1048576 count=$fill 2>/dev/null"
    cat >"$work/lab.yaml" <<EOF
name: ckb
defaults: {image: tiny, memory: ${mib}MiB, cpus: 1}
nodes:
  a: {nics: {eth0: {ip: [198.19.77.1/24]}}}
  b: {nics: {eth0: {ip: [198.19.77.2/24]}}}
links:
  - [a:eth0, b:eth0]
placement:
  spread: [[a, b]]
EOF
    cli up "$work/lab.yaml" >/dev/null
    pids=()
    for node in a b; do
        cli exec --timeout 1200 ckb "$node" -- "$fill_line" >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    ckpt=$(cli checkpoint create ckb c1 --json)
    reset_start=$(date +%s%N)
    reset=$(cli reset ckb c1 --json)
    reset_ms=$((($(date +%s%N) - reset_start) / 1000000))
    jq -cn --argjson c "$ckpt" --argjson r "$reset" --arg load "$load" \
        --argjson mib "$mib" --argjson fill "$fill" --argjson reset_ms "$reset_ms" \
        '{system: "labspan", mem_mib: $mib, fill_mib: $fill, load_1m: $load,
          frozen_ms: $c.frozen_ms, total_ms: $c.total_ms, file_mib: ($c.bytes / 1048576 | floor),
          paused_ms: ($c.nodes | map_values(.paused_ms)), reset_ms: $reset_ms, reset: $r}'
    cli down ckb >/dev/null
    BENCH_GUESTS=p,v BENCH_MEM=$mib BENCH_FILL=$fill deploy/bench-checkpoint.py "" 1 |
        jq -c '{system: "bare qemu", mem_mib, fill_mib, load_1m, frozen_ms, paused_ms, ram_mib, restore_ms}'
done
