#!/usr/bin/env bash
# Installs what labspan needs on a Debian 12 machine (as root): QEMU, iproute2,
# nftables (deploy/cluster.sh partition-control), the tools that build guest
# images, a Rust toolchain when there is none, and
# the tools of the quality gates (deploy/lint.sh) and test tiers (nextest).
# Safe to run again: it installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
# prometheus: its promtool checks the daemons' /metrics (tests/tests/observability.rs).
# debootstrap and systemd-container (systemd-nspawn): the package tier boots
# a Debian 12 tree with the .deb installed (deploy/package-test.sh).
for p in iproute2 iputils-ping iperf3 tcpdump nftables cpio gzip e2fsprogs debootstrap systemd-container ca-certificates curl gcc shellcheck jq prometheus; do
    installed "$p" || missing+=("$p")
done
# qemu-system-x86 and qemu-utils go together, both from bookworm: on a machine
# with a backported qemu-utils, installing qemu-system-x86 alone ends in "held
# broken packages" or removes qemu-img (see docs/images.md).
if ! installed qemu-system-x86 || ! command -v qemu-img >/dev/null; then
    missing+=(qemu-system-x86 qemu-utils/bookworm)
fi
# Node.js and npm: the page's assets come from npm (deploy/web-assets.sh) and
# the web view's test drives Chromium with playwright-core (node >= 18).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# chromium: the web view's test loads the page in it, headless.
for p in chromium chromium-driver; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --allow-downgrades --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"

# The gates' tools. rustfmt and clippy are toolchain components.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
# Built from crates.io at pinned versions. --debug: a debug build compiles in
# about half the time of a release one, and both tools still finish their
# check of this workspace in seconds.
cargo_tool() { # binary crate@version
    command -v "$1" >/dev/null 2>&1 || cargo install --quiet --locked --debug "$2"
}
cargo_tool cargo-deny cargo-deny@0.20.2
cargo_tool cargo-machete cargo-machete@0.9.2
# Builds the Debian package (deploy/package.sh).
cargo_tool cargo-deb cargo-deb@3.8.0
# The test runner of deploy/test.sh; most Rust machines already have it.
cargo_tool cargo-nextest cargo-nextest@0.9.143
