#!/usr/bin/env bash
# Runs the tests, by tier (see .config/nextest.toml and README.md, "Tests"):
#
#   deploy/test.sh          every tier: the README's test command (as root)
#   deploy/test.sh fast     no root: unit and property tests, parser,
#                           placement, plans, Raft, codec (the everyday one)
#   deploy/test.sh kernel   root: bridges, taps, VXLAN in namespaces
#   deploy/test.sh qemu     root: real QEMU guests on one host, image tools
#   deploy/test.sh cluster  root: several test hosts, daemons, guests
#
# Extra arguments go to `cargo nextest run` (a test name filter, say).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
[ $# -eq 0 ] || shift
case "$tier" in
    all) profile=default ;;
    fast | kernel | qemu | cluster) profile=$tier ;;
    *) echo "usage: deploy/test.sh [fast|kernel|qemu|cluster] [nextest args]" >&2; exit 2 ;;
esac
if [ "$tier" != fast ] && [ "$(id -u)" -ne 0 ]; then
    echo "deploy/test.sh: the $tier tests need root (namespaces, taps, QEMU); run it as root, or run 'deploy/test.sh fast'" >&2
    exit 2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "deploy/test.sh: needs cargo-nextest (deploy/install-deps.sh installs it)" >&2
    exit 2
fi
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --profile "$profile" "$@"
