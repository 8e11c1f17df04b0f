#!/usr/bin/env bash
# The page of `labspan web` embeds files from npm packages (xterm.js for
# consoles, cytoscape for the topology) so that it works with no network.
# web/package.json and web/package-lock.json pin them; this script installs
# exactly the locked versions (`npm ci`) and copies the files the page uses
# into cli/src/web/assets/, which is committed and compiled into the binary.
#
#   deploy/web-assets.sh           refresh cli/src/web/assets/ (after changing web/package.json:
#                                  run `npm install --package-lock-only` in web/ first)
#   deploy/web-assets.sh --check   fail if the committed files differ from what npm gives (CI)
#
# It also leaves web/node_modules/ in place: the browser test drives
# Chromium with its playwright-core.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "deploy/web-assets.sh: unknown argument '$1' (--check or nothing)" >&2; exit 2 ;;
esac

npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null

# package file -> asset name (what the page's <script>/<link> tags ask for)
files=(
    "@xterm/xterm/lib/xterm.js xterm.js"
    "@xterm/xterm/css/xterm.css xterm.css"
    "@xterm/xterm/LICENSE LICENSE.xterm"
    "@xterm/addon-fit/lib/addon-fit.js addon-fit.js"
    "@xterm/addon-fit/LICENSE LICENSE.addon-fit"
    "cytoscape/dist/cytoscape.min.js cytoscape.min.js"
    "cytoscape/LICENSE LICENSE.cytoscape"
)
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
for f in "${files[@]}"; do
    read -r from to <<<"$f"
    cp "web/node_modules/$from" "$fresh/$to"
done

assets=cli/src/web/assets
if $check; then
    if ! diff -r "$fresh" "$assets" >/dev/null; then
        diff -rq "$fresh" "$assets" >&2 || true
        echo "deploy/web-assets.sh: $assets differs from what web/package-lock.json gives; run deploy/web-assets.sh and commit" >&2
        exit 1
    fi
    echo "deploy/web-assets.sh: $assets matches web/package-lock.json"
else
    rm -rf "$assets"
    mkdir -p "$assets"
    cp "$fresh"/* "$assets"/
    echo "deploy/web-assets.sh: $assets refreshed from web/package-lock.json"
fi
