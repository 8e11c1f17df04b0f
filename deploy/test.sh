#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests that need root, real
# QEMU (under TCG here) and real netlink. See README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/test.sh: the integration tests need root (namespaces, taps, QEMU); run it as root" >&2
    exit 2
fi
cargo build --workspace --all-targets --locked
# QEMU guests under TCG use a whole core each while booting: at most two
# tests at once keeps boots from crawling on 2-core machines.
cargo test --workspace --locked -- --test-threads=2
