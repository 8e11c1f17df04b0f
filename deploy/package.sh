#!/usr/bin/env bash
# Builds the Debian package of labspan: target/debian/labspan_VERSION_ARCH.deb,
# and prints its path.
#
#   deploy/package.sh            the release build (what you install)
#   deploy/package.sh --debug    the debug build the tests use (deploy/test.sh
#                                package: no release build in CI; stripped,
#                                but slower at run time)
#
# Needs cargo-deb (deploy/install-deps.sh installs it). The package holds the
# binary, the systemd units and their config files (deploy/debian/), shell
# completions and man pages made by the binary itself, and docs. Install it
# with `apt install ./target/debian/labspan_*.deb`; docs/install.md goes on
# from there. deploy/package-test.sh tests it in a booted Debian 12.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    "") profile=release dir=release deb_flags=() ;;
    --debug) profile=dev dir=debug deb_flags=(--fast) ;;
    *) echo "usage: deploy/package.sh [--debug]" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || {
    echo "deploy/package.sh: cargo-deb is missing: run deploy/install-deps.sh" >&2
    exit 2
}
cargo build --profile "$profile" --locked -p labspan
target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
bin=$target/$dir/labspan
# cli/Cargo.toml names the assets under target/release/; cargo-deb reads
# them from the selected profile's folder instead.
out=$target/$dir/package
rm -rf "$out"
mkdir -p "$out/completions" "$out/man"
"$bin" completions bash >"$out/completions/labspan.bash"
"$bin" completions zsh >"$out/completions/_labspan"
"$bin" completions fish >"$out/completions/labspan.fish"
"$bin" man --out "$out/man" 2>/dev/null
gzip -9n "$out"/man/*.1
cargo deb -p labspan --no-build --locked --profile "$profile" "${deb_flags[@]}" | tail -n 1
