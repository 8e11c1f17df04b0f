#!/usr/bin/env bash
# `labspan move` against bare QEMU migrations of the same guest, interleaved
# so that both see the same load (docs/benchmarks.md, "Live moves"): ROUNDS
# rounds, each of three bare runs without TLS, three with x509 TLS and three
# moves, every run's figures printed with the load average at its start.
#
#   sudo deploy/bench-move-vs-bare.sh [ROUNDS]
#
# LABSPAN_BIN picks the labspan build (default: target/debug/labspan).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
for round in $(seq "$rounds"); do
    for what in idle tls move; do
        echo "=== round $round $what, load $(cut -d' ' -f1 /proc/loadavg)"
        case $what in
            idle) deploy/bench-migration.py "" 3 idle | grep '^run' ;;
            tls) deploy/bench-migration.py "" 3 idle tls | grep '^run' ;;
            move) deploy/bench-move.sh 3 | grep '^{' ;;
        esac
    done
done
