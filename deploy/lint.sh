#!/usr/bin/env bash
# The quality gates CI runs before the tests (see .ci/run); run it before you
# push. No root needed. deploy/install-deps.sh installs every tool it uses.
#
#   deploy/lint.sh          every gate
#   deploy/lint.sh fmt      one gate: fmt, clippy, deny, machete, shellcheck or web-assets
#
# Every selected gate runs even when an earlier one fails, so one run lists
# all there is to fix; the exit status is non-zero if any gate failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

fmt() { cargo fmt --all --check; }
clippy() { cargo clippy --workspace --all-targets --locked --keep-going -- -D warnings; }
# Advisories need the RustSec database, which CI's network cannot reach.
deny() { cargo deny check --hide-inclusion-graph bans licenses sources; }
machete() { cargo machete; }
shellcheck_all() {
    local scripts=() guest=() f
    while IFS= read -r f; do
        case "$f" in
            # Guest scripts run under the tiny image's busybox sh. They are
            # baked into the image, so editing them rebuilds every tiny
            # image; init.sh splits /proc/cmdline into words on purpose.
            image/src/tiny/*) guest+=("$f") ;;
            *) scripts+=("$f") ;;
        esac
    done < <(git ls-files '*.sh' .ci/run)
    shellcheck "${scripts[@]}" && shellcheck --shell=sh --exclude=SC2013 "${guest[@]}"
}

# The page's npm files are committed; they must be what the lock gives.
web_assets() { deploy/web-assets.sh --check; }

gates=("$@")
[ ${#gates[@]} -gt 0 ] || gates=(fmt clippy deny machete shellcheck web-assets)
failed=()
for gate in "${gates[@]}"; do
    case "$gate" in
        fmt | clippy | deny | machete) cmd=$gate ;;
        shellcheck) cmd=shellcheck_all ;;
        web-assets) cmd=web_assets ;;
        *) echo "deploy/lint.sh: unknown gate '$gate' (fmt, clippy, deny, machete, shellcheck, web-assets)" >&2; exit 2 ;;
    esac
    echo "== lint: $gate"
    "$cmd" || failed+=("$gate")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "deploy/lint.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "deploy/lint.sh: ${gates[*]}: ok"
