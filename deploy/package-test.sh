#!/usr/bin/env bash
# The Debian package, tested for real: installed in a Debian 12 tree booted
# with systemd (systemd-nspawn -b, its own network namespace), the
# coordinator and agent units start from their config files, the agent joins
# with a join line, a lab deploys, and `systemctl restart labspan-agent`
# keeps its guests (same QEMU pids, the lab still answers).
#
#   deploy/package.sh && deploy/package-test.sh [target/debian/labspan_*.deb]
#
# Needs root, debootstrap, systemd-container and the network (Debian's
# mirror) for the first run; the tree is kept in $LABSPAN_PKG_TREE (default
# /var/tmp/labspan-pkg-deb12) and reused. The lab's image (tiny) is copied
# from this machine's image store.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

DEB=${1:-}
if [ -z "$DEB" ]; then
    for f in target/debian/labspan_*.deb; do DEB=$f; done
fi
TREE=${LABSPAN_PKG_TREE:-/var/tmp/labspan-pkg-deb12}
MACHINE=labspan-pkg-$$
STORE=/var/lib/labspan/images
die() { echo "deploy/package-test.sh: $*" >&2; exit 1; }
[ -f "$DEB" ] || die "no package: run deploy/package.sh first"
[ "$(id -u)" = 0 ] || die "run as root"

if [ ! -x "$TREE/usr/bin/systemctl" ]; then
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2,ca-certificates \
        bookworm "$TREE" http://deb.debian.org/debian
fi
# Without a systemd on this machine, nspawn neither registers the machine
# nor makes a scope for it.
nspawn=(systemd-nspawn -q -D "$TREE" --register=no --keep-unit)
cp "$DEB" "$TREE/root/labspan.deb"
"${nspawn[@]}" --pipe sh -c 'apt-get update -q >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /root/labspan.deb' >/dev/null
tiny=$(tr -d "[:space:]" <"$STORE/names/tiny")
mkdir -p "$TREE/var/lib/labspan/images/names" "$TREE/var/lib/labspan/images/objects"
cp -a "$STORE/objects/$tiny" "$TREE/var/lib/labspan/images/objects/"
cp -a "$STORE/names/tiny" "$TREE/var/lib/labspan/images/names/"
cp demos/ping/lab.yaml "$TREE/root/ping.yaml"

log=$(mktemp)
setsid "${nspawn[@]}" -b -M "$MACHINE" --private-network \
    --bind=/dev/net/tun --bind=/dev/kvm >"$log" 2>&1 </dev/null &
nspawn_pid=$!
leader=
cleanup() {
    [ -n "$leader" ] && kill -RTMIN+3 "$leader" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    kill "$nspawn_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 60); do
    leader=$(ps --ppid "$nspawn_pid" -o pid= | tr -d " " | head -n 1 || true)
    [ -n "$leader" ] && nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null | grep -qE 'running|degraded' && break
    sleep 1
done
[ -n "$leader" ] || die "the container did not boot: $(tail -n 20 "$log")"
inside() { nsenter -t "$leader" -a "$@"; }
step() { echo "== $*"; }

step "the package's files"
inside test -x /usr/bin/labspan
inside test -f /usr/share/man/man1/labspan-cluster-join.1.gz
inside test -f /usr/share/bash-completion/completions/labspan
inside systemctl cat labspan-coordinator labspan-agent >/dev/null

step "coordinator: init, then the unit"
inside ip link set lo up
inside labspan cluster init --data /var/lib/labspan/coordinator --listen 127.0.0.1:7100 >/dev/null
inside systemctl start labspan-coordinator
admin=/var/lib/labspan/coordinator/admin.cluster
for _ in $(seq 60); do
    out=$(inside labspan cluster token --role agent --cluster "$admin" 2>&1) && break
    sleep 1
done
line=$(sed -n 's/^join line: *//p' <<<"$out")
[ -n "$line" ] || die "no join line: $out"

step "agent: join with the line, then the unit"
inside labspan cluster join "$line" --data /var/lib/labspan/agent --name pkghost >/dev/null
inside sed -i 's/--vtep [^ "]*/--vtep 127.0.0.1/' /etc/labspan/agent.env
inside systemctl start labspan-agent
for _ in $(seq 60); do
    inside labspan cluster status --json --cluster "$admin" 2>/dev/null | grep -q '"up":true' && break
    sleep 1
done
inside systemctl is-active labspan-coordinator labspan-agent

step "a lab deploys"
inside labspan up /root/ping.yaml --cluster "$admin"
pids() { inside sh -c 'cat /var/lib/labspan/vms/ping/*/qemu.pid' | sort | tr '\n' ' '; }
before=$(pids)
[ -n "$before" ] || die "no QEMU pids after up"

step "systemctl restart labspan-agent keeps the guests"
inside systemctl restart labspan-agent
inside systemctl is-active labspan-agent
for _ in $(seq 120); do
    inside labspan exec ping a --cluster "$admin" -- true >/dev/null 2>&1 && break
    sleep 1
done
after=$(pids)
[ "$before" = "$after" ] || die "QEMU pids changed over the restart: $before -> $after"
inside labspan exec ping a --cluster "$admin" -- ping -c 1 -W 5 198.19.1.2 >/dev/null
inside journalctl -u labspan-agent --no-pager -q | tail -n 3
inside labspan down ping --cluster "$admin" >/dev/null
echo "package test: ok (QEMU pids $before kept over the agent's restart)"
