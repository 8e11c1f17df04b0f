#!/usr/bin/env bash
# Builds the Debian package of labspan: target/debian/labspan_VERSION_ARCH.deb.
#
#   deploy/package.sh
#
# Needs cargo-deb (deploy/install-deps.sh installs it). The package holds the
# release binary, the systemd units and their config files (deploy/debian/),
# shell completions and man pages made by the binary itself, and docs.
# Install it with `apt install ./target/debian/labspan_*.deb`; docs/install.md
# goes on from there.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || {
    echo "deploy/package.sh: cargo-deb is missing: run deploy/install-deps.sh" >&2
    exit 2
}
cargo build --release --locked -p labspan
target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
bin=$target/release/labspan
out=$target/release/package
rm -rf "$out"
mkdir -p "$out/completions" "$out/man"
"$bin" completions bash >"$out/completions/labspan.bash"
"$bin" completions zsh >"$out/completions/_labspan"
"$bin" completions fish >"$out/completions/labspan.fish"
"$bin" man --out "$out/man" 2>/dev/null
gzip -9n "$out"/man/*.1
cargo deb -p labspan --no-build --locked
