#!/usr/bin/env bash
# Installs what labspan needs on a Debian 12 machine (as root): QEMU, iproute2,
# the tools that build guest images, and a Rust toolchain when there is none.
# Safe to run again: it installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in iproute2 iputils-ping iperf3 tcpdump cpio gzip e2fsprogs debootstrap ca-certificates curl gcc; do
    installed "$p" || missing+=("$p")
done
# qemu-system-x86 and qemu-utils go together, both from bookworm: on a machine
# with a backported qemu-utils, installing qemu-system-x86 alone ends in "held
# broken packages" or removes qemu-img (see docs/images.md).
if ! installed qemu-system-x86 || ! command -v qemu-img >/dev/null; then
    missing+=(qemu-system-x86 qemu-utils/bookworm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --allow-downgrades --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
