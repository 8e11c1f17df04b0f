#!/usr/bin/env bash
# The multi-host demo: build labspan, bring up a local cluster of 3 hosts
# (deploy/cluster.sh), deploy the OSPF triangle with one router per host (the
# triangle's links cross hosts over VXLAN), run its checks inside the guests,
# print the placement, and leave it running.
# Usage (root): ./deploy/cluster-demo.sh      (remove it all: ./deploy/cluster.sh down)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/cluster-demo.sh: needs root (namespaces, taps, bridges, QEMU); run it as root" >&2
    exit 2
fi
start=$SECONDS
./deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p labspan
labspan=$PWD/target/release/labspan
export LABSPAN_BIN=$labspan
# Images are built once, outside the hosts (the build downloads Debian
# packages); every host's store links to this one.
for image in tiny tiny-router; do
    "$labspan" image build "$image" --store /var/lib/labspan/images
done
./deploy/cluster.sh up 3
export LABSPAN_CLUSTER=/var/lib/labspan/cluster/admin.cluster

# The demo's lab file as it is, plus a hint that puts each router on its own
# host (kept out of demos/: on one machine a 3-way spread cannot be met).
lab=/var/lib/labspan/cluster/ospf-triangle-spread
mkdir -p "$lab"
cp -r demos/ospf-triangle/files "$lab/"
{ cat demos/ospf-triangle/lab.yaml; printf '%s\n' 'placement:' '  spread: [[r1, r2, r3]]'; } >"$lab/lab.yaml"
"$labspan" validate "$lab/lab.yaml"
"$labspan" up "$lab/lab.yaml"
echo
"$labspan" inspect ospf-triangle
echo
"$labspan" cluster status
cat <<TXT

The lab runs over 3 hosts (took $((SECONDS - start)) s). Try:
  export LABSPAN_CLUSTER=$LABSPAN_CLUSTER
  $labspan exec ospf-triangle h1 -- ping -c 3 198.19.3.10
  $labspan exec ospf-triangle r1 -- birdc show route
  ip netns exec labspan-host1 ip -d link show type vxlan
  $labspan down ospf-triangle
Remove the cluster and everything on it:
  ./deploy/cluster.sh down
TXT
