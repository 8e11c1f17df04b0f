#!/usr/bin/env bash
# `labspan move` of the tiny guest (256 MiB, 1 vCPU, TCG) between the two
# hosts of a local cluster, RUNS times back and forth, each move's figures
# printed as JSON (docs/benchmarks.md, "Live moves"). With `busy`, the guest
# rewrites 32 MiB of its RAM in a loop during the moves: the same loop as
# `deploy/bench-migration.py "" RUNS busy`, the bare QEMU comparison.
#
#   sudo deploy/bench-move.sh [RUNS] [busy]
#
# The cluster (its own name, state folder and 198.18.250.0/24 subnet) is
# removed when the script ends, on success or failure.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
busy=${2:-}
export LABSPAN_CLUSTER_NAME=lsc-benchmove
export LABSPAN_CLUSTER_STATE=/tmp/labspan-bench-move
export LABSPAN_CLUSTER_SUBNET=198.18.250.0/24
export LABSPAN_CLUSTER_LINK=lcbenchmove
export LABSPAN_ACCEL=tcg
export LABSPAN_BIN=${LABSPAN_BIN:-$PWD/target/debug/labspan}
export LABSPAN_CLUSTER=$LABSPAN_CLUSTER_STATE/admin.cluster
BUSY_LOOP='while true; do dd if=/dev/urandom of=/dev/shm/hot bs=1M count=32 2>/dev/null; done'

trap 'deploy/cluster.sh down >/dev/null' EXIT
deploy/cluster.sh up 2 >/dev/null
lab=$LABSPAN_CLUSTER_STATE/benchmove.yaml
cat >"$lab" <<'EOF'
name: benchmove
nodes:
  v: {image: tiny, memory: 256MiB, cpus: 1}
placement:
  pin: {v: host1}
EOF
"$LABSPAN_BIN" up "$lab" >/dev/null
if [ "$busy" = busy ]; then
    "$LABSPAN_BIN" exec benchmove v -- "{ $BUSY_LOOP; } </dev/null >/dev/null 2>&1 &" >/dev/null
    sleep 2
fi
to=host2
for _ in $(seq "$runs"); do
    "$LABSPAN_BIN" move benchmove v --to "$to" --json
    if [ "$to" = host2 ]; then to=host1; else to=host2; fi
done
"$LABSPAN_BIN" down benchmove >/dev/null
