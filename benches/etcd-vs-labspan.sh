#!/usr/bin/env bash
# Commit latency of labspan's three coordinators against a 3-member etcd,
# in interleaved rounds on the same machine (docs/benchmarks.md,
# "Commit latency against etcd").
#
#   benches/etcd-vs-labspan.sh [ROUNDS] [WRITES]    # default 5 rounds of 1000
#
# Each round runs labspan's own bench (`control_plane`: three coordinators
# in one process on 127.0.0.1, QUIC with mutual TLS, redb, one admin client
# writing `CreateToken` to the leader) and then etcd's (benches/etcd: three
# `/usr/bin/etcd` processes on 127.0.0.1, plain HTTP/2, one etcd-client
# connection putting to the leader), each with sequential writes. Both
# clean up after themselves (temporary folders; etcd's members are killed by
# the pids the bench started).
#
# Needs: apt-get install etcd-server protobuf-compiler (protoc builds the
# etcd client). No root.
set -euo pipefail

rounds=${1:-5}
writes=${2:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "etcd-vs-labspan.sh: $*" >&2; exit 1; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS: a whole number above 0, not \"$rounds\""
[[ $writes =~ ^[1-9][0-9]*$ ]] || die "WRITES: a whole number above 0, not \"$writes\""
[ -x /usr/bin/etcd ] || die "no /usr/bin/etcd: apt-get install etcd-server"
command -v protoc >/dev/null || die "no protoc (it builds the etcd client): apt-get install protobuf-compiler"

cd "$root"
echo "building both benches (release)..." >&2
cargo bench -p labspan-coordinator --bench control_plane --no-run >&2
cargo build --release --manifest-path benches/etcd/Cargo.toml >&2

echo "| round | system | writes | p50 ms | p90 ms | p99 ms | max ms | load average |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    row=$(cargo bench -q -p labspan-coordinator --bench control_plane -- --writes "$writes" 2>/dev/null |
        grep '^| the leader |') || die "labspan's bench failed in round $round"
    echo "| $round | labspan${row#| the leader} $load |"
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    row=$(benches/etcd/target/release/labspan-etcd-bench --writes "$writes") ||
        die "etcd's bench failed in round $round"
    echo "| $round | ${row#| } $load |"
done
