#!/usr/bin/env bash
# Runs the tests, by tier (see .config/nextest.toml and README.md, "Tests"):
#
#   deploy/test.sh          every tier: the README's test command (as root)
#   deploy/test.sh fast     no root: unit and property tests, parser,
#                           placement, plans, Raft, codec (the everyday one)
#   deploy/test.sh kernel   root: bridges, taps, VXLAN in namespaces
#   deploy/test.sh qemu     root: real QEMU guests on one host, image tools
#   deploy/test.sh cluster  root: several test hosts, daemons, guests
#   deploy/test.sh package  root: the Debian package (of the debug build)
#                           installed and run in a booted Debian 12
#                           container (deploy/package-test.sh)
#
# Extra arguments go to `cargo nextest run` (a test name filter, say).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
[ $# -eq 0 ] || shift
case "$tier" in
    all) profile=default ;;
    fast | kernel | qemu | cluster) profile=$tier ;;
    package) profile= ;;
    *) echo "usage: deploy/test.sh [fast|kernel|qemu|cluster|package] [nextest args]" >&2; exit 2 ;;
esac
if [ "$tier" != fast ] && [ "$(id -u)" -ne 0 ]; then
    echo "deploy/test.sh: the $tier tests need root (namespaces, taps, QEMU); run it as root, or run 'deploy/test.sh fast'" >&2
    exit 2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "deploy/test.sh: needs cargo-nextest (deploy/install-deps.sh installs it)" >&2
    exit 2
fi
# The package tier is a script, not a nextest profile: it boots a whole
# Debian under systemd. Its .deb holds the debug build the tests use.
# Its lab boots this machine's tiny image (the other tiers build it too).
package() {
    local deb
    deb=$(deploy/package.sh --debug | tail -n 1) || return
    if [ ! -f /var/lib/labspan/images/names/tiny ]; then
        "$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/labspan" \
            image build tiny --store /var/lib/labspan/images || return
    fi
    deploy/package-test.sh "$deb"
}
if [ "$tier" = package ]; then
    [ $# -eq 0 ] || { echo "deploy/test.sh: the package tier takes no arguments" >&2; exit 2; }
    package
    exit
fi
cargo build --workspace --all-targets --locked
status=0
cargo nextest run --workspace --locked --profile "$profile" "$@" || status=$?
if [ "$tier" = all ]; then
    package || status=$?
fi
exit "$status"
