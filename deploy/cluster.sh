#!/usr/bin/env bash
# A local multi-host labspan cluster on this machine: N lab hosts as network
# namespaces (NAME-host1..N, 198.18.X.N/24 on eth0) joined by an underlay
# bridge (namespace NAME-underlay), 3 coordinators (hosts 1..3) and an agent
# per host, all the one `labspan` binary. The root namespace gets 198.18.X.254
# on the underlay (veth ROOT_LINK) so the CLI reaches the coordinators directly.
#
# Usage (root):
#   deploy/cluster.sh up [N]     (default 3; cleans a previous run of the same
#                                 cluster first)
#   deploy/cluster.sh hosts [N]  (only the N hosts, the underlay and the root
#                                 veth, as `up` makes them, with an empty
#                                 state folder hostI/state each: no daemon, no
#                                 image; the test harness's `Fabric` runs its
#                                 own daemons or agents in them)
#   deploy/cluster.sh down       (stops every lab, QEMU and daemon it started,
#                                 removes the namespaces, the veth and the state)
#   deploy/cluster.sh start I coordinator|agent
#                                (starts that daemon of host I again, as `up`
#                                 did, after a crash or a `kill -9`)
#   deploy/cluster.sh cut N      (host N off the underlay: control and lab
#                                 traffic, as a pulled cable)
#   deploy/cluster.sh partition-control N
#                                (host N loses only the control plane: UDP
#                                 7100/7101 dropped by nftables inside its
#                                 namespace; VXLAN and image transfers flow)
#   deploy/cluster.sh fill N     (fills the disk of host N's coordinator; needs
#                                 LABSPAN_CLUSTER_COORDINATOR_DISK at `up`)
#   deploy/cluster.sh heal N     (undoes cut, partition-control and fill of host N)
# Environment:
#   LABSPAN_CLUSTER_NAME    namespace prefix (default labspan: labspan-host1..)
#   LABSPAN_CLUSTER_LINK    root-side veth, <= 15 bytes (default lsc-root)
#   LABSPAN_CLUSTER_STATE   state folder (default /var/lib/labspan/cluster)
#   LABSPAN_CLUSTER_SUBNET  underlay, 198.18.X.0/24 (default 198.18.0.0/24)
#   LABSPAN_BIN (default target/release/labspan, else `labspan` on PATH),
#   LABSPAN_ACCEL (auto|kvm|tcg, default auto), CLUSTER_DEADLINE (s, 90),
#   LABSPAN_HOST_MEMORY     memory each host offers (default: an equal share
#                           of this machine's, e.g. 8192MiB of 24 GiB for 3)
#   LABSPAN_CLUSTER_IMAGES  host1 (default: only host1 starts with the images
#                           of /var/lib/labspan/images, the others fetch what
#                           their labs use) or all (every host starts with
#                           them, so a node can move while host1 is down)
#   LABSPAN_CLUSTER_COORDINATOR_DISK
#                           a size (e.g. 64M): each coordinator keeps its data
#                           on a tmpfs of that size, so `fill` can make its
#                           disk full (default: no tmpfs)
#   LABSPAN_CPU_OVERCOMMIT  vCPUs each host offers per CPU of this machine
#                           (default 4; every host sees all of its CPUs, so
#                           raise it to fit more guests on a small machine)
# It reads the cluster's state with `labspan cluster status --json` (jq).
# Several clusters run side by side when each has its own name, link, state
# folder and subnet; `up` refuses a subnet the root namespace already uses and
# namespaces or a link that another cluster (or anything else) owns.
set -Eeuo pipefail

NAME=${LABSPAN_CLUSTER_NAME:-labspan}
ROOT_LINK=${LABSPAN_CLUSTER_LINK:-lsc-root}
STATE=${LABSPAN_CLUSTER_STATE:-/var/lib/labspan/cluster}
SUBNET=${LABSPAN_CLUSTER_SUBNET:-198.18.0.0/24}
IMAGES=/var/lib/labspan/images
HOST_PREFIX=$NAME-host
UNDERLAY=$NAME-underlay
PORT=7100
ADMIN=$STATE/admin.cluster
# What this cluster is, written by `up`: `down` removes only a state folder
# that holds it, and `up` knows its own namespaces by it.
MARKER=$STATE/cluster.env

usage() { echo "deploy/cluster.sh: $*" >&2; exit 2; }

[[ $NAME =~ ^[a-z0-9][a-z0-9-]{0,39}$ ]] ||
    usage "LABSPAN_CLUSTER_NAME=$NAME: use 1 to 40 of a-z, 0-9 and '-' (it prefixes namespace names)"
[[ $ROOT_LINK =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$ ]] ||
    usage "LABSPAN_CLUSTER_LINK=$ROOT_LINK: an interface name is 1 to 15 of A-Z, a-z, 0-9, '_', '.', '-'"
{ [[ $STATE == /?* && $STATE != *..* ]] && [ "${STATE%/}" != "" ]; } ||
    usage "LABSPAN_CLUSTER_STATE=$STATE: give an absolute folder other than /"
if [[ $SUBNET =~ ^198\.18\.([0-9]{1,3})\.0/24$ ]] && [ "${BASH_REMATCH[1]}" -le 255 ]; then
    NET=198.18.$((10#${BASH_REMATCH[1]}))
else
    usage "LABSPAN_CLUSTER_SUBNET=$SUBNET: use 198.18.X.0/24 (X in 0..255; benchmarking range only)"
fi
ROOT_ADDR=$NET.254
SEED_IMAGES=${LABSPAN_CLUSTER_IMAGES:-host1}
[[ $SEED_IMAGES == host1 || $SEED_IMAGES == all ]] ||
    usage "LABSPAN_CLUSTER_IMAGES=$SEED_IMAGES: use host1 or all"

die() { echo "deploy/cluster.sh: $*" >&2; exit 1; }

find_bin() {
    local repo
    repo=$(cd "$(dirname "$0")/.." && pwd)
    if [ -n "${LABSPAN_BIN:-}" ]; then
        BIN=$LABSPAN_BIN
    elif [ -x "$repo/target/release/labspan" ]; then
        BIN=$repo/target/release/labspan
    else
        BIN=$(command -v labspan) || die "no labspan binary: build it (cargo build --release -p labspan) or set LABSPAN_BIN"
    fi
}

# Whether PID is alive and its command line contains WORD (guards against a
# recycled pid: we only ever signal what we started).
alive_as() {
    local pid=$1 word=$2 cmd
    [ -r "/proc/$pid/cmdline" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" = Z ] && return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$word"* ]]
}

# Stops the process in PIDFILE if it is still what we started (WORD in its
# command line): SIGTERM, up to 10 s, then SIGKILL.
stop_pidfile() {
    local pidfile=$1 word=$2 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    if [ -n "$pid" ] && alive_as "$pid" "$word"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            alive_as "$pid" "$word" || break
            sleep 0.2
        done
        if alive_as "$pid" "$word"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$pidfile"
}

host_dirs() { ls -d "$STATE"/host[0-9]* 2>/dev/null || true; }

any_coordinator_alive() {
    local f pid
    for f in "$STATE"/host*/coordinator.pid; do
        [ -f "$f" ] || continue
        pid=$(tr -dc '0-9' <"$f")
        [ -n "$pid" ] && alive_as "$pid" "coordinator run" && return 0
    done
    return 1
}

# The non-default settings, as a command prefix (for the hints printed).
settings() {
    local out=
    [ "$NAME" = labspan ] || out+="LABSPAN_CLUSTER_NAME=$NAME "
    [ "$ROOT_LINK" = lsc-root ] || out+="LABSPAN_CLUSTER_LINK=$ROOT_LINK "
    [ "$STATE" = /var/lib/labspan/cluster ] || out+="LABSPAN_CLUSTER_STATE=$STATE "
    [ "$SUBNET" = 198.18.0.0/24 ] || out+="LABSPAN_CLUSTER_SUBNET=$SUBNET "
    printf '%s' "$out"
}

# Whether STATE holds this cluster (same name, link and subnet).
own_state() {
    [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$(marker_text)" ] && return 0
    # A default cluster made before the record existed.
    [ ! -f "$MARKER" ] && [ -z "$(settings)" ] && [ -f "$ADMIN" ] && [ -d "$STATE/host1" ]
}

marker_text() { printf 'name=%s\nlink=%s\nsubnet=%s\n' "$NAME" "$ROOT_LINK" "$SUBNET"; }

# This cluster's namespaces that exist now.
our_namespaces() {
    ip netns list | awk '{print $1}' | grep -E "^(${HOST_PREFIX}[0-9]+|$UNDERLAY)\$" || true
}

down() {
    if [ ! -e "$STATE" ]; then
        [ -z "$(our_namespaces)" ] || echo "deploy/cluster.sh: namespaces $(our_namespaces | tr '\n' ' ')exist but $STATE does not: not this cluster's, left alone" >&2
        echo "nothing to remove ($STATE does not exist)"
        return 0
    fi
    if ! own_state; then
        if [ -f "$MARKER" ]; then
            die "$STATE holds another cluster ($(tr '\n' ' ' <"$MARKER")); run down with those LABSPAN_CLUSTER_* settings"
        fi
        die "$STATE exists but holds no cluster record ($MARKER): not removed; remove it yourself if it is a leftover"
    fi
    # Without a binary the labs are not taken down through the cluster, but
    # everything below still goes (die, in a subshell, does not end `down`).
    BIN=$(find_bin 2>/dev/null && echo "$BIN") || BIN=
    # 1. Labs, through the cluster, while it is still up.
    if [ -n "$BIN" ] && [ -f "$ADMIN" ] && any_coordinator_alive; then
        local labs lab
        labs=$(timeout 20 "$BIN" cluster status --json --cluster "$ADMIN" 2>/dev/null |
            jq -r '.labs[].name') || labs=
        for lab in $labs; do
            echo "labspan down $lab (cluster)"
            timeout 180 "$BIN" down "$lab" --ignore-missing --cluster "$ADMIN" || echo "  (failed; its QEMUs are stopped by pid below)"
        done
    fi
    # 2. Agents, before their QEMUs: an agent restarts a guest whose QEMU
    # dies (its supervisor), so QEMUs stopped first could come back.
    local pidfile dir
    for dir in $(host_dirs); do stop_pidfile "$dir/agent.pid" "agent run"; done
    # 3. Any QEMU the agents left, by the pidfiles under each host's state.
    for pidfile in "$STATE"/host*/state/vms/*/*/qemu.pid; do
        [ -f "$pidfile" ] && stop_pidfile "$pidfile" qemu-system
    done
    # 4. Coordinators.
    for dir in $(host_dirs); do stop_pidfile "$dir/coordinator.pid" "coordinator run"; done
    # 5. Coordinator disks (LABSPAN_CLUSTER_COORDINATOR_DISK).
    local mnt
    for dir in $(host_dirs); do
        mnt=$dir/coordinator
        if mountpoint -q "$mnt"; then umount "$mnt"; fi
    done
    # 6. Namespaces (with every bridge, tap and VXLAN device inside); the
    # root veth goes with its peer in the underlay namespace.
    local ns
    for ns in $(our_namespaces); do
        ip netns del "$ns"
    done
    ip link del "$ROOT_LINK" 2>/dev/null || true
    # 7. State, with each host's image store ($IMAGES is kept).
    rm -rf "$STATE"
    echo "cluster $NAME removed (namespaces $HOST_PREFIX*, $UNDERLAY, veth $ROOT_LINK, $STATE)"
}

# Refuses (before anything is made) what another cluster or the machine
# already uses: our namespace names, the root link's name, the subnet.
check_free() {
    local ns used
    ns=$(our_namespaces | tr '\n' ' ')
    [ -z "$ns" ] || die "namespaces ${ns}already exist and are not this cluster's ($STATE has no record of them): pick another LABSPAN_CLUSTER_NAME, or remove them"
    ! ip link show "$ROOT_LINK" >/dev/null 2>&1 ||
        die "interface $ROOT_LINK already exists in the root namespace: pick another LABSPAN_CLUSTER_LINK"
    used=$(ip -4 -o addr show to "$SUBNET" | awk '{print $2 " " $4}' | tr '\n' ' ')
    [ -z "$used" ] || die "subnet $SUBNET is already addressed in the root namespace ($used): pick another LABSPAN_CLUSTER_SUBNET (198.18.X.0/24)"
    used=$( { ip -4 route show table all root "$SUBNET"; ip -4 route show table all match "$SUBNET"; } |
        awk '$1 != "default" && $1 != "unreachable" {print}' | sort -u | tr '\n' ';')
    [ -z "$used" ] || die "subnet $SUBNET is already routed in the root namespace ($used): pick another LABSPAN_CLUSTER_SUBNET (198.18.X.0/24)"
}

in_host() { local i=$1; shift; ip netns exec "$HOST_PREFIX$i" "$@"; }

make_fabric() {
    local n=$1 i ns
    ip netns add "$UNDERLAY"
    ip -n "$UNDERLAY" link set lo up
    ip -n "$UNDERLAY" link add underlay type bridge
    ip -n "$UNDERLAY" link set underlay up
    for i in $(seq "$n"); do
        ns=$HOST_PREFIX$i
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$UNDERLAY" link add "port$i" type veth peer name eth0 netns "$ns"
        ip -n "$UNDERLAY" link set "port$i" master underlay up
        ip -n "$ns" addr add "$NET.$i/24" dev eth0
        ip -n "$ns" link set eth0 mtu 1500 up
        mkdir -p "$STATE/host$i/state"
    done
    ip link add "$ROOT_LINK" type veth peer name portroot netns "$UNDERLAY"
    ip -n "$UNDERLAY" link set portroot master underlay up
    ip addr add "$ROOT_ADDR/24" dev "$ROOT_LINK"
    ip link set "$ROOT_LINK" up
}

# Gives every host its own image store: host1's (every host's with
# LABSPAN_CLUSTER_IMAGES=all) starts with the images of $IMAGES (hard links
# when on the same filesystem: objects never change in place), the others
# start empty and fetch from it what their labs use.
seed_images() {
    local n=$1 i into
    mkdir -p "$IMAGES/objects" "$IMAGES/names"
    for i in $(seq "$n"); do
        mkdir -p "$STATE/host$i/state/images/objects" "$STATE/host$i/state/images/names"
        [ "$i" -eq 1 ] || [ "$SEED_IMAGES" = all ] || continue
        into=$STATE/host$i/state/images
        cp -al "$IMAGES/objects/." "$into/objects/" 2>/dev/null || cp -a "$IMAGES/objects/." "$into/objects/"
        cp -a "$IMAGES/names/." "$into/names/"
    done
}

# The memory each of N hosts offers: LABSPAN_HOST_MEMORY, else an equal
# share of this machine (so a lab bigger than a share must be spread).
host_memory() {
    if [ -n "${LABSPAN_HOST_MEMORY:-}" ]; then
        echo "$LABSPAN_HOST_MEMORY"
        return
    fi
    local kib
    kib=$(awk '$1 == "MemTotal:" {print $2}' /proc/meminfo)
    echo "$((kib / 1024 / $1))MiB"
}

# Starts `labspan ARGS` as a daemon inside host I, its pid in DIR/NAME.pid.
spawn() {
    local i=$1 name=$2; shift 2
    local dir=$STATE/host$i
    LABSPAN_STATE=$dir/state LABSPAN_ACCEL=${LABSPAN_ACCEL:-auto} \
        setsid ip netns exec "$HOST_PREFIX$i" "$BIN" "$@" </dev/null >>"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
}

# Prints `labspan cluster token --role ROLE`, retrying while the cluster starts.
token() {
    local role=$1 out i
    for i in $(seq 60); do
        if out=$("$BIN" cluster token --role "$role" --ttl 10m --cluster "$ADMIN" 2>&1); then
            echo "$out"
            return 0
        fi
        sleep 0.5
    done
    die "no join token from the cluster: $out (see $STATE/host1/coordinator.log)"
}

join() {
    local i=$1 role=$2 data=$3 name=$4; shift 4
    local out line
    out=$(token "$role")
    # The one pasteable line: token, coordinator addresses, CA fingerprint.
    line=$(sed -n 's/^join line: *//p' <<<"$out")
    [ -n "$line" ] || die "no join line in: $out"
    in_host "$i" "$BIN" cluster join "$line" --data "$data" --name "$name" "$@" >/dev/null
}

wait_ready() {
    local voters=$1 hosts=$2 deadline=$((SECONDS + ${CLUSTER_DEADLINE:-90})) got=
    while [ $SECONDS -lt $deadline ]; do
        got=$("$BIN" cluster status --json --cluster "$ADMIN" 2>/dev/null | jq -r '
            "\([.members[] | select(.voter)] | length) \([.hosts[] | select(.up)] | length) \(if .leader == null then "no-leader" else "leader" end)"') || got=
        [ "$got" = "$voters $hosts leader" ] && return 0
        sleep 1
    done
    die "cluster not ready after ${CLUSTER_DEADLINE:-90} s (voters, hosts up, leader: ${got:-no answer}; wanted $voters $hosts leader); logs: $STATE/host*/*.log"
}

# Checks the host count N that command WHAT was given.
host_count() {
    local what=$1 n=$2
    { [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ]; } || { echo "usage: $0 $what [N]   (1 <= N <= 200)" >&2; exit 2; }
}

# The part `up` and `hosts` share: a previous run of this cluster removed,
# the names and subnet checked free, the record written, then N hosts on the
# underlay. A failure leaves what was made for `down`.
make_hosts() {
    local what=$1 n=$2
    if [ -e "$STATE" ]; then down >/dev/null; fi
    check_free
    mkdir -p "$STATE"
    marker_text >"$MARKER"
    DOING=$what
    trap 'echo "deploy/cluster.sh: $DOING failed; what it made is left for a look (logs: $STATE/host*/*.log); remove it with: $(settings)$0 down" >&2' ERR
    make_fabric "$n"
}

# Only the hosts and their underlay (`hosts N`), for a harness that starts
# its own daemons in them; `down` removes them as it removes a cluster.
hosts_only() {
    local n=${1:-3}
    host_count hosts "$n"
    make_hosts hosts "$n"
    echo "$n hosts (${HOST_PREFIX}1..$n at $NET.1..$n, state folders $STATE/host{1..$n}/state) on $UNDERLAY; remove them with: $(settings)$0 down"
}

up() {
    local n=${1:-3}
    host_count up "$n"
    find_bin
    local start=$SECONDS coords=$((n < 3 ? n : 3)) i dir
    make_hosts up "$n"
    seed_images "$n"
    local memory
    memory=$(host_memory "$n")
    if [ -n "${LABSPAN_CLUSTER_COORDINATOR_DISK:-}" ]; then
        [[ $LABSPAN_CLUSTER_COORDINATOR_DISK =~ ^[1-9][0-9]*[KMG]$ ]] ||
            usage "LABSPAN_CLUSTER_COORDINATOR_DISK=$LABSPAN_CLUSTER_COORDINATOR_DISK: give a size such as 64M"
        for i in $(seq "$coords"); do
            mkdir -p "$STATE/host$i/coordinator"
            mount -t tmpfs -o "size=$LABSPAN_CLUSTER_COORDINATOR_DISK,mode=0700" "$NAME-c$i" "$STATE/host$i/coordinator"
        done
    fi
    in_host 1 "$BIN" cluster init --data "$STATE/host1/coordinator" --listen "$NET.1:$PORT" --name c1 >/dev/null
    cp "$STATE/host1/coordinator/admin.cluster" "$ADMIN"
    chmod 600 "$ADMIN"
    spawn 1 coordinator coordinator run --data "$STATE/host1/coordinator"
    for i in $(seq 2 "$coords"); do
        join "$i" coordinator "$STATE/host$i/coordinator" "c$i" --listen "$NET.$i:$PORT"
        spawn "$i" coordinator coordinator run --data "$STATE/host$i/coordinator"
    done
    # The admin file names every coordinator, so the CLI outlives any one.
    local list=
    for i in $(seq "$coords"); do list+="${list:+, }\"$NET.$i:$PORT\""; done
    sed -i "s|\"$NET.1:$PORT\"|$list|" "$ADMIN"
    for i in $(seq "$n"); do
        join "$i" agent "$STATE/host$i/agent" "host$i"
        spawn "$i" agent agent run --data "$STATE/host$i/agent" --vtep "$NET.$i" --memory "$memory" \
            --cpu-overcommit "${LABSPAN_CPU_OVERCOMMIT:-4}"
    done
    wait_ready "$coords" "$n"
    "$BIN" cluster status --cluster "$ADMIN"
    cat <<TXT

Cluster up in $((SECONDS - start)) s: $n hosts (${HOST_PREFIX}1..$n), coordinators on hosts 1..$coords.
This namespace reaches it through $ROOT_LINK ($ROOT_ADDR). Point the CLI at it:
  export LABSPAN_CLUSTER=$ADMIN
  $BIN cluster status
  $BIN up LAB.yaml        (host1 has the images of $IMAGES, the other hosts fetch
                            what their labs use; add one: $BIN image push FILE.qcow2)
Metrics (Prometheus, /metrics): coordinators http://$NET.{1..$coords}:7180/metrics,
  agents http://$NET.{1..$n}:7181/metrics (see docs/metrics.md)
Logs and pids: $STATE/hostN/{coordinator,agent}.{log,pid}
Remove it all:   $(settings)$0 down
TXT
}

# Starts the coordinator or the agent of host I again, with the arguments
# `up` gave it; refuses while it still runs.
start_daemon() {
    local i=${1:-} what=${2:-} n
    own_state || die "no cluster of this name in $STATE (see \`$0 up\`)"
    { [[ $i =~ ^[0-9]+$ ]] && [ -d "$STATE/host$i/$what" ]; } ||
        usage "start: host '$i' has no $what in $STATE (usage: $0 start I coordinator|agent)"
    find_bin
    if [ -f "$STATE/host$i/$what.pid" ] && alive_as "$(tr -dc '0-9' <"$STATE/host$i/$what.pid")" "$what"; then
        die "the $what of host $i still runs (pid $(cat "$STATE/host$i/$what.pid"))"
    fi
    case $what in
        coordinator) spawn "$i" coordinator coordinator run --data "$STATE/host$i/coordinator" ;;
        agent)
            n=$(host_dirs | wc -l)
            spawn "$i" agent agent run --data "$STATE/host$i/agent" --vtep "$NET.$i" --memory "$(host_memory "$n")" \
                --cpu-overcommit "${LABSPAN_CPU_OVERCOMMIT:-4}" ;;
        *) usage "start: coordinator or agent, not '$what'" ;;
    esac
}

# Checks that host N exists in this cluster; prints its namespace.
fault_host() {
    local i=$1
    if ! [[ $i =~ ^[0-9]+$ ]] || [ "$i" -lt 1 ]; then
        usage "give a host number (1, 2, ...), not '$i'"
    fi
    own_state || die "$STATE holds no cluster named $NAME: start it with $(settings)$0 up"
    ip netns list | awk '{print $1}' | grep -qx "$HOST_PREFIX$i" ||
        die "host $i has no namespace $HOST_PREFIX$i (the cluster has $(our_namespaces | grep -c "^$HOST_PREFIX") hosts)"
    echo "$HOST_PREFIX$i"
}

# The nftables table that partition-control adds inside a host's namespace.
NFT_TABLE=labspan_fault

# Host N off the underlay: its port on the underlay bridge goes down, so
# nothing crosses (the host itself is untouched and sees its link down).
# (Not named `cut`: a function of that name would shadow cut(1), which
# alive_as uses.)
cut_host() {
    local i=$1 ns
    ns=$(fault_host "$i") || exit 2
    ip -n "$UNDERLAY" link set "port$i" down
    echo "host $i ($ns) cut off the underlay; undo with: $(settings)$0 heal $i"
}

# Host N keeps its lab traffic (VXLAN, UDP 4789) and image transfers but
# loses the control plane: UDP to and from ports 7100 (API, Raft) and 7101
# (joins) is dropped on its underlay link. Its own coordinator stays
# reachable from its agent over loopback, as on a real host whose uplink
# to the other control-plane members failed.
partition_control() {
    local i=$1 ns
    ns=$(fault_host "$i") || exit 2
    command -v nft >/dev/null || die "nft not found: install nftables (deploy/install-deps.sh does)"
    ip netns exec "$ns" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    ip netns exec "$ns" nft -f - <<NFT
table inet $NFT_TABLE {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "eth0" udp dport { $PORT, $((PORT + 1)) } drop
        iifname "eth0" udp sport { $PORT, $((PORT + 1)) } drop
    }
    chain output {
        type filter hook output priority 0; policy accept;
        oifname "eth0" udp dport { $PORT, $((PORT + 1)) } drop
        oifname "eth0" udp sport { $PORT, $((PORT + 1)) } drop
    }
}
NFT
    echo "host $i ($ns): control plane cut (UDP $PORT/$((PORT + 1)) dropped on eth0), lab traffic flows; undo with: $(settings)$0 heal $i"
}

# The file `fill` writes to take a coordinator's disk.
FILLER=filler.bin

# The disk of host N's coordinator (a tmpfs from `up`) has no free byte
# left: its next Raft write fails as on a real full disk.
fill_disk() {
    local i=$1 dir
    fault_host "$i" >/dev/null || exit 2
    dir=$STATE/host$i/coordinator
    mountpoint -q "$dir" ||
        die "host $i's coordinator has no disk of its own: start the cluster with LABSPAN_CLUSTER_COORDINATOR_DISK=SIZE"
    # dd stops at ENOSPC, which is the point.
    dd if=/dev/zero of="$dir/$FILLER" bs=64K status=none 2>/dev/null || true
    echo "host $i: the coordinator's disk is full ($(df -h --output=avail "$dir" | tail -1 | tr -d ' ') left); undo with: $(settings)$0 heal $i"
}

heal_host() {
    local i=$1 ns
    ns=$(fault_host "$i") || exit 2
    ip -n "$UNDERLAY" link set "port$i" up
    ip netns exec "$ns" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    rm -f "$STATE/host$i/coordinator/$FILLER"
    echo "host $i ($ns) healed: back on the underlay, control plane open, disk freed"
}

[ "$(id -u)" -eq 0 ] || die "needs root (namespaces, veths, QEMU)"
case "${1:-}" in
    up) up "${2:-3}" ;;
    hosts) hosts_only "${2:-3}" ;;
    down) down ;;
    start) start_daemon "${2:-}" "${3:-}" ;;
    cut) cut_host "${2:-}" ;;
    partition-control) partition_control "${2:-}" ;;
    fill) fill_disk "${2:-}" ;;
    heal) heal_host "${2:-}" ;;
    *) echo "usage: $0 up [N] | hosts [N] | down | start I coordinator|agent | cut N | partition-control N | fill N | heal N" >&2; exit 2 ;;
esac
