#!/usr/bin/env bash
# The Debian package, tested for real: installed in a Debian 12 tree booted
# with systemd (systemd-nspawn -b, its own network namespace), the
# coordinator and agent units start from their config files, the agent joins
# with a join line, a lab deploys, `systemctl restart labspan-agent` keeps its
# guests (same QEMU pids, guests not rebooted, the lab answers) and so does
# `systemctl restart labspan-coordinator`.
#
#   deploy/package.sh [--debug] && deploy/package-test.sh [DEB]
#
# DEB defaults to target/debian/labspan_*.deb. `deploy/test.sh package` runs
# both (the debug build, as CI does). Needs root, debootstrap,
# systemd-container, and this machine's tiny image (labspan image build tiny).
#
# The Debian 12 tree (systemd plus the package's dependencies) is made once
# with debootstrap from this machine's apt mirror and kept, read-only, in
# $LABSPAN_TEST_CACHE (default /var/cache/labspan-test); a new one is made
# when the package's dependencies change. Each run boots an overlay of it, so
# nothing of a run is left in the cache. Inside, the container has no network
# but its loopback: the package installs from the tree's own packages, and the
# lab runs on 127.0.0.1.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

DEB=${1:-}
if [ -z "$DEB" ]; then
    for f in target/debian/labspan_*.deb; do DEB=$f; done
fi
CACHE=${LABSPAN_TEST_CACHE:-/var/cache/labspan-test}
STORE=/var/lib/labspan/images
# How long one step may take: the boot, a unit becoming ready, a restarted
# agent answering. Every wait below is bounded by it.
WAIT=${LABSPAN_PKG_WAIT:-60}
die() { echo "deploy/package-test.sh: $*" >&2; exit 1; }
[ -f "$DEB" ] || die "no package: run deploy/package.sh first"
[ "$(id -u)" = 0 ] || die "run as root"
for tool in debootstrap systemd-nspawn nsenter dpkg-deb jq; do
    command -v "$tool" >/dev/null || die "needs $tool (deploy/install-deps.sh installs it)"
done
[ -f "$STORE/names/tiny" ] || die "no tiny image in $STORE: run 'labspan image build tiny'"
step() { echo "== $(date +%T) $*"; }

# The mirror this machine's apt uses for bookworm (deb822 or one-line form).
mirror() {
    if [ -n "${LABSPAN_DEBIAN_MIRROR:-}" ]; then
        echo "$LABSPAN_DEBIAN_MIRROR"
        return
    fi
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'BEGIN { RS = "" }
        /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ {
            if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
                u = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", u); print u; exit
            }
        }')
    if [ -z "$m" ]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -nE 's/^deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+bookworm[ \t].*/\2/p' | head -n 1)
    fi
    [ -n "$m" ] || die "no bookworm mirror in /etc/apt/sources.list*: set LABSPAN_DEBIAN_MIRROR"
    echo "$m"
}

# The cached tree: systemd, and what the package depends on, so that the
# package installs without the network. Named by that list: a package with
# new dependencies gets a new tree.
deps=$(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed -E 's/[|(].*//; s/[[:space:]]//g' | grep . | sort -u | paste -sd, -)
include="systemd,systemd-sysv,dbus,$deps"
key=$(printf '%s' "$include" | sha256sum | cut -c1-12)
base=$CACHE/debian12-$key
if [ ! -x "$base/usr/bin/systemctl" ]; then
    mkdir -p "$CACHE"
    src=$(mirror)
    step "debootstrap bookworm from $src into $base (once; cached)"
    partial=$base.partial-$$
    rm -rf "$partial"
    if ! debootstrap --variant=minbase --include="$include" bookworm "$partial" "$src" >"$CACHE/debootstrap-$key.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap-$key.log" >&2
        rm -rf "$partial"
        die "debootstrap failed (log: $CACHE/debootstrap-$key.log)"
    fi
    # Trees made for other dependency lists are of no further use.
    for old in "$CACHE"/debian12-* "$CACHE"/debootstrap-*.log; do
        case "$old" in *"-$key"*) ;; *) rm -rf "$old" ;; esac
    done
    # Another run may have finished the same tree meanwhile: keep that one.
    mv -T "$partial" "$base" 2>/dev/null || rm -rf "$partial"
fi

MACHINE=labspan-pkg-$$
run=$(mktemp -d /var/tmp/labspan-pkg-test.XXXXXX)
mkdir "$run/upper" "$run/work" "$run/root"
root=$run/root
nspawn_pid=
leader=
booted=
journals() {
    if [ -z "$booted" ]; then
        [ -f "$run/console.log" ] && tail -n 30 "$run/console.log" >&2
        return 0
    fi
    echo "---- journal: labspan-coordinator, labspan-agent" >&2
    nsenter -t "$leader" -a journalctl -u labspan-coordinator -u labspan-agent \
        --no-pager -q -o short-precise -n 300 >&2 || true
}
cleanup() {
    local status=$?
    trap - EXIT
    set +e
    [ "$status" = 0 ] || journals
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # SIGRTMIN+3 asks systemd to halt; the container's pid namespace ends
        # with its init, and every QEMU in it with that.
        [ -n "$leader" ] && kill -RTMIN+3 "$leader" 2>/dev/null
        for _ in $(seq 40); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.5
        done
        [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null
        kill -KILL "$nspawn_pid" 2>/dev/null
        wait "$nspawn_pid" 2>/dev/null
    fi
    if mountpoint -q "$root"; then
        umount "$root" || echo "deploy/package-test.sh: cannot unmount $root; left $run" >&2
    fi
    mountpoint -q "$root" || rm -rf "$run"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$root"

step "install the package (no network: its dependencies are in the tree)"
cp "$DEB" "$root/root/labspan.deb"
systemd-nspawn -q -D "$root" --register=no --keep-unit --private-network --pipe \
    sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /root/labspan.deb' \
    >"$run/apt.log" 2>&1 || { cat "$run/apt.log" >&2; die "the package did not install"; }
tiny=$(tr -d '[:space:]' <"$STORE/names/tiny")
mkdir -p "$root/var/lib/labspan/images/names" "$root/var/lib/labspan/images/objects"
cp -a "$STORE/objects/$tiny" "$root/var/lib/labspan/images/objects/"
cp -a "$STORE/names/tiny" "$root/var/lib/labspan/images/names/"
cp demos/ping/lab.yaml "$root/root/ping.yaml"

step "boot the container"
# Without a systemd on this machine, nspawn neither registers the machine
# nor makes a scope for it. No /dev/kvm: the guests run under TCG.
setsid systemd-nspawn -q -D "$root" --register=no --keep-unit -b -M "$MACHINE" \
    --private-network --bind=/dev/net/tun >"$run/console.log" 2>&1 </dev/null &
nspawn_pid=$!
inside() { nsenter -t "$leader" -a "$@"; }
# Polls CMD until it succeeds, at most $WAIT seconds.
wait_for() { # what cmd...
    local what=$1 deadline=$((SECONDS + WAIT))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${WAIT}s"
        sleep 0.5
    done
}
# The container's init: nspawn's child once it has become systemd (before
# that, nspawn's own helper processes come and go).
booted() {
    leader=$(ps --ppid "$nspawn_pid" -o pid=,comm= | awk '$2 == "systemd" { print $1; exit }')
    [ -n "$leader" ] && inside systemctl is-system-running 2>/dev/null | grep -qE '^(running|degraded)$'
}
wait_for "the container's boot" booted
booted=1

step "the package's files"
inside test -x /usr/bin/labspan
inside test -f /usr/share/man/man1/labspan-cluster-join.1.gz
inside test -f /usr/share/bash-completion/completions/labspan
inside test -f /usr/share/zsh/vendor-completions/_labspan
inside test -f /usr/share/fish/vendor_completions.d/labspan.fish
inside systemctl cat labspan-coordinator labspan-agent >/dev/null

step "coordinator: init, then the unit"
admin=/var/lib/labspan/coordinator/admin.cluster
lab() { inside env LABSPAN_CLUSTER="$admin" labspan "$@"; }
inside labspan cluster init --data /var/lib/labspan/coordinator --listen 127.0.0.1:7100 >/dev/null
inside systemctl start labspan-coordinator
token() { lab cluster token --role agent >"$run/token"; }
wait_for "a join token from the coordinator" token
line=$(sed -n 's/^join line: *//p' "$run/token")
[ -n "$line" ] || die "no join line in: $(cat "$run/token")"

step "agent: join with the line, then the unit"
inside labspan cluster join "$line" --data /var/lib/labspan/agent --name pkghost >/dev/null
inside sed -i 's/--vtep [^ "]*/--vtep 127.0.0.1/' /etc/labspan/agent.env
inside systemctl start labspan-agent
host_up() { lab cluster status --json | jq -e '.hosts[] | select(.name == "pkghost") | .up' >/dev/null; }
wait_for "the agent up in cluster status" host_up
inside systemctl is-active labspan-coordinator labspan-agent >/dev/null

step "a lab deploys"
lab up /root/ping.yaml
pids() { inside sh -c 'cat /var/lib/labspan/vms/ping/*/qemu.pid' | sort -n | paste -sd' ' -; }
uptime_of() { lab exec --timeout 5 ping "$1" -- cut -d. -f1 /proc/uptime | tr -d '[:space:]'; }
before=$(pids)
[ "$(wc -w <<<"$before")" = 2 ] || die "expected 2 QEMU pids after up, got '$before'"
up_a=$(uptime_of a)

# Each try of exec is cut at 5 s: one to a guest that is still paused must
# not eat the whole wait.
answers() { timeout 6 nsenter -t "$leader" -a env LABSPAN_CLUSTER="$admin" labspan exec --timeout 5 ping "$1" -- true; }
kept() { # what changed
    local after up
    wait_for "node a answering after $1" answers a
    wait_for "node b answering after $1" answers b
    after=$(pids)
    [ "$before" = "$after" ] || die "QEMU pids changed over $1: $before -> $after"
    up=$(uptime_of a)
    [ "$up" -ge "$up_a" ] || die "guest a rebooted over $1: uptime ${up_a}s before, ${up}s after"
    up_a=$up
    lab exec --timeout 10 ping a -- ping -c 1 -W 5 198.19.1.2 >/dev/null ||
        die "a does not reach b after $1"
}

step "systemctl restart labspan-agent keeps the guests"
inside systemctl restart labspan-agent
kept "systemctl restart labspan-agent"

step "systemctl restart labspan-coordinator keeps the lab"
inside systemctl restart labspan-coordinator
wait_for "the agent up after the coordinator's restart" host_up
kept "systemctl restart labspan-coordinator"
lab inspect ping | grep -q . || die "the lab is gone after the coordinator's restart"

step "labspan down"
lab down ping >/dev/null
echo "package test: ok (QEMU pids $before kept over both restarts)"
