#!/usr/bin/env bash
# The main job: build labspan, deploy the OSPF triangle demo on this machine (the
# embedded default: real QEMU guests, real bridges and taps), run its checks
# inside the guests, show the lab, and leave it running.
# Usage (root): ./deploy/demo.sh [LAB.yaml]     (default: demos/ospf-triangle/lab.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/demo.sh: labspan needs root here (taps, bridges, QEMU); run it as root" >&2
    exit 2
fi
lab=${1:-demos/ospf-triangle/lab.yaml}
./deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p labspan
labspan=target/release/labspan
"$labspan" validate "$lab"
"$labspan" up "$lab"
name=$(sed -n 's/^name: *\([a-z0-9-]*\).*/\1/p' "$lab" | head -n 1)
echo
"$labspan" inspect "$name"
cat <<TXT

The lab is running. Try:
  $labspan exec $name <node> -- ip -o addr
  $labspan console $name <node>        (Ctrl-] leaves)
  $labspan down $name
TXT
