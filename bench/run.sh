#!/usr/bin/env bash
# Myelin's benchmarks: every scenario side by side, interleaved in rounds, on a topology of
# network namespaces this script builds and removes (bench/README.md explains the method).
#
#   bench/run.sh                       all scenarios, 3 rounds, results in bench/results/
#   bench/run.sh --scenario node-nginx one scenario (repeat the flag or use commas for more)
#   bench/run.sh --smoke               ~2 s per figure, asserts only that every scenario
#                                      produces numbers; results stay in the temp dir
#   options: --rounds N  --rate REQ_PER_S  --duration SECONDS (whole)  --server nginx|deathstar
#            --podready PODS (pod-ready time in a lab of its own; default 100, 3 with --smoke,
#            0 with --scenario)  --no-build  --out DIR  --keep (keep the temp dir with the logs)
#            --soak CONNECTIONS (proxy memory storm; default 10000, 1000 with --smoke, 0 with --scenario)
#            --convergence PODS (pod on node1 → first allowed request from node3, 3-node lab;
#            default 100, 3 with --smoke, 0 with --scenario)
#            --control-plane AGENTSxENDPOINTS[,...] (simulated agents on a real etcd; default
#            100x100,1000x100, 20x10 with --smoke, none with --scenario; "none" skips it)
#
# Run as root. Nothing leaves the namespaces created here (mb-<pid>-client, -server, -node;
# for the cross-node scenarios -node1, -node2, -xclient, -xserver); they and every process
# started here are removed by name/PID on exit, failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_SCENARIOS=(no-mesh myelin-l34 myelin-l7-node sidecar-myelin sidecar-nginx sidecar-haproxy node-nginx node-haproxy
  plain-vxlan myelin-tunnel plain-routed myelin-native)
# Between two nodes (client pod on node1, server pod on node2), each Myelin routing mode next
# to the plain kernel path it is compared with.
CROSS_NODE_SCENARIOS=(plain-vxlan myelin-tunnel plain-routed myelin-native)
# Diagnostics, run only when named: Myelin's node proxy as a fixed-upstream listener the
# client connects to (no datapath), with the agent stand-in and without it (events dropped).
EXTRA_SCENARIOS=(myelin-l7-node-fixed myelin-l7-node-noagent)

SMOKE=0
ROUNDS=3
RATE=""
DURATION=""
SERVER=nginx
BUILD=1
OUT=""
KEEP=0
PODREADY=""
SOAK=""
CONVERGENCE=""
CONTROL_PLANE=""
SCENARIOS=()

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --scenario) shift; IFS=',' read -r -a more <<<"${1:?--scenario needs a name}"; SCENARIOS+=("${more[@]}") ;;
    --rounds) shift; ROUNDS=${1:?--rounds needs a number} ;;
    --rate) shift; RATE=${1:?--rate needs requests per second} ;;
    --duration) shift; DURATION=${1:?--duration needs seconds} ;;
    --server) shift; SERVER=${1:?--server needs nginx or deathstar} ;;
    --podready) shift; PODREADY=${1:?--podready needs a number of pods} ;;
    --soak) shift; SOAK=${1:?--soak needs a number of connections} ;;
    --convergence) shift; CONVERGENCE=${1:?--convergence needs a number of pods} ;;
    --control-plane) shift; CONTROL_PLANE=${1:?--control-plane needs AGENTSxENDPOINTS[,...] or none} ;;
    --no-build) BUILD=0 ;;
    --out) shift; OUT=${1:?--out needs a directory} ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "${#SCENARIOS[@]}" -gt 0 ]; then
  PODREADY=${PODREADY:-0}
  SOAK=${SOAK:-0}
  CONVERGENCE=${CONVERGENCE:-0}
  CONTROL_PLANE=${CONTROL_PLANE:-none}
else
  SCENARIOS=("${ALL_SCENARIOS[@]}")
fi
for s in "${SCENARIOS[@]}"; do
  case " ${ALL_SCENARIOS[*]} ${EXTRA_SCENARIOS[*]} " in
    *" $s "*) ;;
    *) echo "bench: unknown scenario '$s' (known: ${ALL_SCENARIOS[*]} ${EXTRA_SCENARIOS[*]})" >&2; exit 2 ;;
  esac
done
case "$SERVER" in
  nginx) REQ_PATH=/ ;;
  deathstar) REQ_PATH=/v1/healthz ;;
  *) echo "bench: --server must be nginx or deathstar" >&2; exit 2 ;;
esac

if [ "$SMOKE" = 1 ]; then
  ROUNDS=1; WARMUP=1; DURATION=${DURATION:-1}; RATE=${RATE:-1000}; PODREADY=${PODREADY:-3}; QUIET=0
  CONVERGENCE=${CONVERGENCE:-3}; CONTROL_PLANE=${CONTROL_PLANE:-20x10}
else
  WARMUP=2; DURATION=${DURATION:-5}; RATE=${RATE:-5000}; PODREADY=${PODREADY:-100}
  CONVERGENCE=${CONVERGENCE:-100}; CONTROL_PLANE=${CONTROL_PLANE:-100x100,1000x100}
fi
CONNS=64          # keep-alive connections, closed loop and open loop alike
CONN_RATE_CONNS=32
SUT_CPU=0         # server, proxies, agent stand-in
GEN_CPU=1         # wrk, iperf3 client, the open-loop generator

say() { printf '==> %s\n' "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, eBPF): run it with sudo"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (system under test on cpu$SUT_CPU, generator on cpu$GEN_CPU)"

# --- tools ------------------------------------------------------------------------------
install_tools() {
  local missing=() pkg
  for pkg in nginx-light haproxy wrk iperf3 iproute2 util-linux python3; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # nginx-light's nginx counts as nginx; any nginx flavour will do.
  if command -v nginx >/dev/null; then
    local filtered=(); for pkg in "${missing[@]}"; do [ "$pkg" = nginx-light ] || filtered+=("$pkg"); done
    missing=("${filtered[@]+"${filtered[@]}"}")
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    # Debian starts packaged daemons on install unless policy-rc.d says no: say no.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [ "$created" = 0 ] || rm -f "$policy"
  fi
}
install_tools

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [ "$BUILD" = 1 ]; then
  say "building (release)"
  (cd "$ROOT" && cargo build --release --bin myelin --bin myelin-bench)
  [ "$PODREADY" = 0 ] || [ "$SMOKE" = 1 ] || (cd "$ROOT" && cargo build --release -p myelin-policy --example resolve_bench)
fi
NEED_BINS=(myelin-bench); [ "$SERVER" != deathstar ] && [ "$PODREADY" = 0 ] || NEED_BINS+=(myelin)
[ "$CONVERGENCE" = 0 ] || NEED_BINS+=(myelin)
for b in "${NEED_BINS[@]}"; do [ -x "$BIN/$b" ] || die "$BIN/$b missing: build with cargo build --release --bin $b"; done

# --- temp dir, namespaces, cleanup -------------------------------------------------------
ID=$$
TMP=$(mktemp -d "/tmp/myelin-bench.$ID.XXXX")
NS_C="mb-$ID-client"; NS_S="mb-$ID-server"; NS_N="mb-$ID-node"
VETH_C="mb${ID}c"; VETH_S="mb${ID}s"
# Cross-node: two nodes, an underlay veth pair between them, a client pod on node1 and a
# server pod on node2; the plain-vxlan scenario's VXLAN device (one per node).
NS_N1="mb-$ID-node1"; NS_N2="mb-$ID-node2"; NS_XC="mb-$ID-xclient"; NS_XS="mb-$ID-xserver"
VETH_U1="mb${ID}u1"; VETH_U2="mb${ID}u2"; VETH_XC="mb${ID}xc"; VETH_XS="mb${ID}xs"
VXLAN_DEV="mb${ID}vx"
NAMESPACES=()  # every namespace built, in the order built
BPFFS="$TMP/bpffs"
PIDS=()        # every process started here, stopped by PID
FAILED=1

stop_pids() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

cleanup() {
  set +e
  [ "${#PIDS[@]}" -eq 0 ] || stop_pids "${PIDS[@]}"
  mountpoint -q "$BPFFS" 2>/dev/null && umount "$BPFFS"
  local ns
  for ns in "$NS_C" "$NS_S" "$NS_N" "$NS_XC" "$NS_XS" "$NS_N1" "$NS_N2"; do
    ip netns list | grep -qw "^$ns" && ip netns del "$ns"
  done
  if [ "$FAILED" = 1 ] || [ "$KEEP" = 1 ]; then
    echo "bench: logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# add_namespace NS: a namespace with loopback up and the sockets' limits the load needs.
add_namespace() {
  local ns=$1
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  in_ns "$ns" ip link set lo up
  in_ns "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 \
    net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192
}

topology() {
  say "topology: $NS_C, $NS_S, $NS_N"
  local ns
  for ns in "$NS_C" "$NS_S" "$NS_N"; do add_namespace "$ns"; done
  in_ns "$NS_N" sysctl -qw net.ipv4.ip_forward=1
  # The L7 redirect's local delivery, as myelin_datapath::proxy_routing sets it up in the
  # lab: packets the datapath hands to the proxy carry mark 0x200/0xf00 and are delivered
  # locally.
  in_ns "$NS_N" ip rule add fwmark 0x200/0xf00 lookup 2004 pref 100
  in_ns "$NS_N" ip route add local 0.0.0.0/0 dev lo table 2004
  # Routed pods, as Myelin's nodes do: a veth per pod, the host side in the node.
  ip link add "$VETH_C" netns "$NS_N" type veth peer name eth0 netns "$NS_C"
  ip link add "$VETH_S" netns "$NS_N" type veth peer name eth0 netns "$NS_S"
  in_ns "$NS_N" ip addr add 10.250.1.1/24 dev "$VETH_C"
  in_ns "$NS_N" ip addr add 10.250.2.1/24 dev "$VETH_S"
  in_ns "$NS_N" ip link set "$VETH_C" up
  in_ns "$NS_N" ip link set "$VETH_S" up
  in_ns "$NS_C" ip addr add 10.250.1.2/24 dev eth0
  in_ns "$NS_C" ip link set eth0 up
  in_ns "$NS_C" ip route add default via 10.250.1.1
  in_ns "$NS_S" ip addr add 10.250.2.2/24 dev eth0
  in_ns "$NS_S" ip link set eth0 up
  in_ns "$NS_S" ip route add default via 10.250.2.1
  mkdir -p "$BPFFS"
  mount -t bpf bpf "$BPFFS"
}

CLIENT_IP=10.250.1.2; SERVER_IP=10.250.2.2; NODE_IP=10.250.1.1
VIP=10.96.0.10   # the server's ClusterIP: exists only as a translation in Myelin's programs
GRPC_PORT=50051
NODE_PORT=8080; PROXY_PORT=15001; CLIENT_SIDECAR=127.0.0.1:15001; SERVER_SIDECAR="$SERVER_IP:15006"

# Cross-node addresses: each node's pod CIDR (the lab's 10.244.N.0/24 pattern), its gateway
# on the pod's host veth, the underlay (documentation addresses, on the veth pair only).
XCLIENT_IP=10.244.1.2; XSERVER_IP=10.244.2.2
POD_CIDR_1=10.244.1.0/24; POD_CIDR_2=10.244.2.0/24
UNDERLAY_1=192.0.2.1; UNDERLAY_2=192.0.2.2
# The pods' MTU in tunnel mode, both Myelin's and plain VXLAN's: the underlay's 1500 less
# VXLAN over IPv4 (myelin_datapath::pod_mtu; the kernel gives a VXLAN device the same).
TUNNEL_POD_MTU=1450
# Identities: myelin-bench datapath numbers a node's endpoints from its --identity-base;
# node1's base is 10000, node2's 10100, so the client pod is 10001, the server pod 10101.
XCLIENT_IDENTITY=10001; XSERVER_IDENTITY=10101
# The plain-vxlan devices' MACs (each node's neighbour entry for the other's device).
VXLAN_MAC_1=0a:58:c0:00:02:01; VXLAN_MAC_2=0a:58:c0:00:02:02

# topology_between_nodes: node1 and node2 joined by an underlay veth pair, a client pod
# behind node1 and a server pod behind node2, routed as on one node. How node1 reaches
# node2's pod CIDR is the scenario's (up).
topology_between_nodes() {
  say "topology between nodes: $NS_N1, $NS_N2, $NS_XC, $NS_XS"
  local ns
  for ns in "$NS_XC" "$NS_XS" "$NS_N1" "$NS_N2"; do add_namespace "$ns"; done
  for ns in "$NS_N1" "$NS_N2"; do
    in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
      net.ipv4.conf.default.rp_filter=0
  done
  ip link add "$VETH_U1" netns "$NS_N1" type veth peer name "$VETH_U2" netns "$NS_N2"
  in_ns "$NS_N1" ip addr add "$UNDERLAY_1/24" dev "$VETH_U1"
  in_ns "$NS_N2" ip addr add "$UNDERLAY_2/24" dev "$VETH_U2"
  in_ns "$NS_N1" ip link set "$VETH_U1" up
  in_ns "$NS_N2" ip link set "$VETH_U2" up
  local node pod veth gateway address
  for node in 1 2; do
    if [ "$node" = 1 ]; then
      ns=$NS_N1; pod=$NS_XC; veth=$VETH_XC; gateway=10.244.1.1; address=$XCLIENT_IP
    else
      ns=$NS_N2; pod=$NS_XS; veth=$VETH_XS; gateway=10.244.2.1; address=$XSERVER_IP
    fi
    ip link add "$veth" netns "$ns" type veth peer name eth0 netns "$pod"
    in_ns "$ns" ip addr add "$gateway/24" dev "$veth"
    in_ns "$ns" ip link set "$veth" up
    in_ns "$pod" ip addr add "$address/24" dev eth0
    in_ns "$pod" ip link set eth0 up
    in_ns "$pod" ip route add default via "$gateway"
  done
}

# pod_mtu_between_nodes MTU: both cross-node pods' interfaces, both ends of their veths.
pod_mtu_between_nodes() {
  local mtu=$1
  in_ns "$NS_XC" ip link set eth0 mtu "$mtu"
  in_ns "$NS_N1" ip link set "$VETH_XC" mtu "$mtu"
  in_ns "$NS_N2" ip link set "$VETH_XS" mtu "$mtu"
  in_ns "$NS_XS" ip link set eth0 mtu "$mtu"
}

# routes_between_nodes: each node routes the other's pod CIDR via its underlay address (the
# lab's native routing; no encapsulation).
routes_between_nodes() {
  in_ns "$NS_N1" ip route add "$POD_CIDR_2" via "$UNDERLAY_2"
  in_ns "$NS_N2" ip route add "$POD_CIDR_1" via "$UNDERLAY_1"
}

# plain_vxlan: a kernel VXLAN device per node (VNI 1, Myelin's UDP port), no programs;
# static routes, neighbours and FDB entries as flannel's VXLAN backend writes them: node1
# routes node2's pod CIDR via node2's device address (onlink), whose MAC is a permanent
# neighbour, whose FDB entry is node2's underlay address; and the other way round.
plain_vxlan() {
  local node ns underlay local_ip remote_ip mac remote_mac remote_cidr gateway
  for node in 1 2; do
    if [ "$node" = 1 ]; then
      ns=$NS_N1; underlay=$VETH_U1; local_ip=$UNDERLAY_1; remote_ip=$UNDERLAY_2
      mac=$VXLAN_MAC_1; remote_mac=$VXLAN_MAC_2; remote_cidr=$POD_CIDR_2; gateway=10.244.2.0
    else
      ns=$NS_N2; underlay=$VETH_U2; local_ip=$UNDERLAY_2; remote_ip=$UNDERLAY_1
      mac=$VXLAN_MAC_2; remote_mac=$VXLAN_MAC_1; remote_cidr=$POD_CIDR_1; gateway=10.244.1.0
    fi
    in_ns "$ns" ip link add "$VXLAN_DEV" type vxlan id 1 local "$local_ip" dev "$underlay" \
      dstport 8472 nolearning
    in_ns "$ns" ip link set "$VXLAN_DEV" address "$mac" mtu "$TUNNEL_POD_MTU" up
    in_ns "$ns" ip route add "$remote_cidr" via "$gateway" dev "$VXLAN_DEV" onlink
    in_ns "$ns" ip neigh add "$gateway" lladdr "$remote_mac" dev "$VXLAN_DEV" nud permanent
    in_ns "$ns" bridge fdb append "$remote_mac" dev "$VXLAN_DEV" dst "$remote_ip"
  done
}

# reset_between_nodes: what a cross-node scenario added to the nodes goes (by name): the
# plain VXLAN devices, the routes to the other node's pod CIDR, and Myelin's overlay device
# and pins (maps, links: no program stays attached) should its datapath process not have
# removed them. Runs after the scenario's processes stopped.
reset_between_nodes() {
  [[ " ${NAMESPACES[*]} " == *" $NS_N1 "* ]] || return 0
  rm -rf "$BPFFS"/node1-* "$BPFFS"/node2-*
  local ns cidr
  for ns in "$NS_N1" "$NS_N2"; do
    [ "$ns" = "$NS_N1" ] && cidr=$POD_CIDR_2 || cidr=$POD_CIDR_1
    in_ns "$ns" ip link del "$VXLAN_DEV" 2>/dev/null || true
    in_ns "$ns" ip link del myelin_vxlan 2>/dev/null || true
    in_ns "$ns" ip route del "$cidr" 2>/dev/null || true
  done
}

# --- processes --------------------------------------------------------------------------
SC_PIDS=()     # processes of the running scenario (system under test)
MESH_PIDS=()   # of those, the mesh's own (proxies, agent stand-in, datapath): for RSS
LAST_PID=""

LOGS="$TMP/logs"  # the running scenario's logs (measure sets one directory per run)
# start NAME NS CMD...: runs CMD in NS pinned to the SUT CPU, logs to $LOGS/NAME.log.
start() {
  local name=$1 ns=$2; shift 2
  mkdir -p "$LOGS"
  ip netns exec "$ns" taskset -c "$SUT_CPU" "$@" >"$LOGS/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID"); SC_PIDS+=("$LAST_PID")
}

wait_tcp() {
  local ns=$1 addr=$2 i
  for i in $(seq 100); do
    if ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/${addr%:*}/${addr##*:}" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "nothing listens on $addr in $ns (logs: $TMP)"
}

wait_log() {
  local file=$1 pattern=$2 pid=$3 i
  for i in $(seq 200); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die "$(basename "$file" .log) exited: $(tail -n 5 "$file")"
    sleep 0.05
  done
  die "timed out waiting for '$pattern' in $file"
}

stop_scenario() {
  [ "${#SC_PIDS[@]}" -eq 0 ] || stop_pids "${SC_PIDS[@]}"
  local keep=() pid s
  for pid in "${PIDS[@]}"; do
    s=1; for d in "${SC_PIDS[@]}"; do [ "$pid" = "$d" ] && s=0; done
    [ "$s" = 0 ] || keep+=("$pid")
  done
  PIDS=("${keep[@]+"${keep[@]}"}"); SC_PIDS=(); MESH_PIDS=()
  reset_between_nodes
}

nginx_conf() { # nginx_conf FILE BODY: one worker, keep-alive, no logs
  local file=$1 body=$2 dir
  dir=$(dirname "$file")/$(basename "$file" .conf)
  mkdir -p "$dir"
  cat >"$file" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
$body
}
EOF
}

start_server() {
  case "$SERVER" in
    nginx)
      nginx_conf "$TMP/server.conf" '  server { listen 80 backlog=8192; location / { return 200 "ok\n"; } }'
      start server "$SERVER_NS" nginx -c "$TMP/server.conf" ;;
    deathstar)
      start server "$SERVER_NS" "$BIN/myelin" app deathstar ;;
  esac
  wait_tcp "$SERVER_NS" "$SERVER_ADDR:80"
}

# proxy_nginx NAME NS LISTEN UPSTREAM
proxy_nginx() {
  local name=$1 ns=$2 listen=$3 upstream=$4
  nginx_conf "$TMP/$name.conf" "  upstream up { server $upstream; keepalive 128; keepalive_requests 10000000; }
  server {
    listen $listen backlog=8192;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
  start "$name" "$ns" nginx -c "$TMP/$name.conf"
  MESH_PIDS+=("$LAST_PID")
  wait_tcp "$ns" "$listen"
}

# proxy_haproxy NAME NS LISTEN UPSTREAM
proxy_haproxy() {
  local name=$1 ns=$2 listen=$3 upstream=$4
  cat >"$TMP/$name.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend f
  bind $listen
  default_backend b
backend b
  server s1 $upstream
EOF
  start "$name" "$ns" haproxy -db -f "$TMP/$name.cfg"
  MESH_PIDS+=("$LAST_PID")
  wait_tcp "$ns" "$listen"
}

# proxy_myelin NAME NS LISTEN UPSTREAM [--l7-policy]: the sidecar role (no agent)
proxy_myelin() {
  local name=$1 ns=$2 listen=$3 upstream=$4; shift 4
  start "$name" "$ns" "$BIN/myelin-bench" proxy --listen "$listen" --upstream "$upstream" "$@"
  MESH_PIDS+=("$LAST_PID")
  wait_tcp "$ns" "$listen"
}

# pod_mac NS: the MAC address of the pod's eth0 (the datapath delivers into the pod with it).
pod_mac() { in_ns "$1" cat /sys/class/net/eth0/address; }

# datapath RULES...: Myelin's programs on both pod veths, the server's ClusterIP (for HTTP
# and iperf3) and the given ingress rules (myelin-bench datapath --help).
datapath() {
  local rule args=()
  for rule in "$@"; do args+=(--ingress "$rule"); done
  start datapath "$NS_N" "$BIN/myelin-bench" datapath --pin-dir "$BPFFS/node-$RANDOM" \
    --endpoint "$VETH_C=$CLIENT_IP@$(pod_mac "$NS_C")" \
    --endpoint "$VETH_S=$SERVER_IP@$(pod_mac "$NS_S")" \
    --service "$VIP:80=$SERVER_IP:80" --service "$VIP:5201=$SERVER_IP:5201" \
    --service "$VIP:$GRPC_PORT=$SERVER_IP:$GRPC_PORT" "${args[@]}"
  MESH_PIDS+=("$LAST_PID")
  wait_log "$LOGS/datapath.log" "datapath attached" "$LAST_PID"
}

# agent_and_proxy ROUTE...: the agent stand-in with that route, and the node proxy it feeds.
agent_and_proxy() {
  start agent "$NS_N" "$BIN/myelin-bench" agent --control-socket "$TMP/control.sock" "$@"
  MESH_PIDS+=("$LAST_PID")
  wait_log "$LOGS/agent.log" "agent serving" "$LAST_PID"
  start proxy "$NS_N" "$BIN/myelin-bench" proxy --control-socket "$TMP/control.sock"
  MESH_PIDS+=("$LAST_PID")
  wait_log "$LOGS/proxy.log" "proxy listening" "$LAST_PID"
}

# datapath_between_nodes ROUTING: Myelin's programs on both nodes, each attached as that
# node's agent attaches them in ROUTING mode (tunnel: the overlay device, the other node's
# pod CIDR as tunnel endpoint and route into the device; native: from_underlay on the
# underlay link), each node's ipcache holding the other's pod; the server pod admits the
# client pod's identity (tunnel: the VNI's; native: node2's ipcache) on 80 and 5201 only.
datapath_between_nodes() {
  local routing=$1 node1=() node2=()
  if [ "$routing" = tunnel ]; then
    node1=(--remote-node "$POD_CIDR_2=$UNDERLAY_2"); node2=(--remote-node "$POD_CIDR_1=$UNDERLAY_1")
  fi
  start datapath-node1 "$NS_N1" "$BIN/myelin-bench" datapath --pin-dir "$BPFFS/node1-$RANDOM" \
    --endpoint "$VETH_XC=$XCLIENT_IP@$(pod_mac "$NS_XC")" --identity-base 10000 \
    --routing "$routing" --node-address "$UNDERLAY_1" --remote-pod "$XSERVER_IP=$XSERVER_IDENTITY" \
    "${node1[@]+"${node1[@]}"}"
  MESH_PIDS+=("$LAST_PID")
  wait_log "$LOGS/datapath-node1.log" "datapath attached" "$LAST_PID"
  start datapath-node2 "$NS_N2" "$BIN/myelin-bench" datapath --pin-dir "$BPFFS/node2-$RANDOM" \
    --endpoint "$VETH_XS=$XSERVER_IP@$(pod_mac "$NS_XS")" --identity-base 10100 \
    --routing "$routing" --node-address "$UNDERLAY_2" --remote-pod "$XCLIENT_IP=$XCLIENT_IDENTITY" \
    --ingress "$VETH_XS:$XCLIENT_IP:80" --ingress "$VETH_XS:$XCLIENT_IP:5201" \
    "${node2[@]+"${node2[@]}"}"
  MESH_PIDS+=("$LAST_PID")
  wait_log "$LOGS/datapath-node2.log" "datapath attached" "$LAST_PID"
}

start_grpc_server() {
  start grpc-server "$NS_S" "$BIN/myelin-bench" grpc-server --listen "$SERVER_IP:$GRPC_PORT"
  wait_tcp "$NS_S" "$SERVER_IP:$GRPC_PORT"
}

# Brings scenario $1 up; sets CLIENT_NS, SERVER_NS and SERVER_ADDR (where the client and
# the server run), TARGET (what the client connects to), IPERF_TARGET (when a raw TCP stream
# crosses the same path), GRPC_TARGET (gRPC unary calls through the path), L4_POLICY and
# L7_POLICY (what the path enforces).
up() {
  CLIENT_NS=$NS_C; SERVER_NS=$NS_S; SERVER_ADDR=$SERVER_IP
  case " ${CROSS_NODE_SCENARIOS[*]} " in
    *" $1 "*) CLIENT_NS=$NS_XC; SERVER_NS=$NS_XS; SERVER_ADDR=$XSERVER_IP ;;
  esac
  TARGET="$SERVER_ADDR:80"; IPERF_TARGET=""; GRPC_TARGET=""; L4_POLICY=0; L7_POLICY=0
  start_server
  case "$1" in
    no-mesh)
      start_grpc_server
      IPERF_TARGET=$SERVER_IP; GRPC_TARGET="$SERVER_IP:$GRPC_PORT" ;;
    myelin-l34)
      # Through the ClusterIP; the server admits the client's identity on 80, 5201 and the
      # gRPC port only.
      start_grpc_server
      datapath "$VETH_S:$VETH_C:80" "$VETH_S:$VETH_C:5201" "$VETH_S:$VETH_C:$GRPC_PORT"
      TARGET="$VIP:80"; IPERF_TARGET=$VIP; GRPC_TARGET="$VIP:$GRPC_PORT"; L4_POLICY=1 ;;
    myelin-l7-node)
      # Through the ClusterIP; the server's ports 80 and gRPC have L7 rules: the datapath
      # redirects the connections to the node proxy's transparent listener (bpf_sk_assign).
      start_grpc_server
      datapath "$VETH_S:any:80:$PROXY_PORT" "$VETH_S:any:$GRPC_PORT:$PROXY_PORT"
      agent_and_proxy --listen "0.0.0.0:$PROXY_PORT" --transparent --upstream "$SERVER_IP:80" \
        --l7-policy --l7-port "$GRPC_PORT"
      TARGET="$VIP:80"; GRPC_TARGET="$VIP:$GRPC_PORT"; L4_POLICY=1; L7_POLICY=1 ;;
    myelin-l7-node-fixed)
      agent_and_proxy --listen "$NODE_IP:$NODE_PORT" --upstream "$SERVER_IP:80" --l7-policy
      wait_tcp "$NS_N" "$NODE_IP:$NODE_PORT"
      TARGET="$NODE_IP:$NODE_PORT"; L7_POLICY=1 ;;
    myelin-l7-node-noagent)
      proxy_myelin node-proxy "$NS_N" "$NODE_IP:$NODE_PORT" "$SERVER_IP:80" --l7-policy
      TARGET="$NODE_IP:$NODE_PORT"; L7_POLICY=1 ;;
    sidecar-myelin)
      proxy_myelin sidecar-server "$NS_S" "$SERVER_SIDECAR" 127.0.0.1:80 --l7-policy
      proxy_myelin sidecar-client "$NS_C" "$CLIENT_SIDECAR" "$SERVER_SIDECAR"
      TARGET=$CLIENT_SIDECAR; L7_POLICY=1 ;;
    sidecar-nginx)
      proxy_nginx sidecar-server "$NS_S" "$SERVER_SIDECAR" 127.0.0.1:80
      proxy_nginx sidecar-client "$NS_C" "$CLIENT_SIDECAR" "$SERVER_SIDECAR"
      TARGET=$CLIENT_SIDECAR ;;
    sidecar-haproxy)
      proxy_haproxy sidecar-server "$NS_S" "$SERVER_SIDECAR" 127.0.0.1:80
      proxy_haproxy sidecar-client "$NS_C" "$CLIENT_SIDECAR" "$SERVER_SIDECAR"
      TARGET=$CLIENT_SIDECAR ;;
    node-nginx)
      proxy_nginx node-proxy "$NS_N" "$NODE_IP:$NODE_PORT" "$SERVER_IP:80"
      TARGET="$NODE_IP:$NODE_PORT" ;;
    node-haproxy)
      proxy_haproxy node-proxy "$NS_N" "$NODE_IP:$NODE_PORT" "$SERVER_IP:80"
      TARGET="$NODE_IP:$NODE_PORT" ;;
    plain-vxlan)
      # Pod to pod over a plain kernel VXLAN device per node: no programs.
      pod_mtu_between_nodes "$TUNNEL_POD_MTU"
      plain_vxlan
      IPERF_TARGET=$XSERVER_IP ;;
    myelin-tunnel)
      # Pod to pod through Myelin's overlay: the sender's identity in the VNI, the server's
      # ingress policy decided with it.
      pod_mtu_between_nodes "$TUNNEL_POD_MTU"
      datapath_between_nodes tunnel
      IPERF_TARGET=$XSERVER_IP; L4_POLICY=1 ;;
    plain-routed)
      # Pod to pod over the nodes' routes: no programs.
      pod_mtu_between_nodes 1500
      routes_between_nodes
      IPERF_TARGET=$XSERVER_IP ;;
    myelin-native)
      # The same routes with Myelin's programs in native routing: the server's ingress policy
      # decided with the client's identity from node2's ipcache.
      pod_mtu_between_nodes 1500
      routes_between_nodes
      datapath_between_nodes native
      IPERF_TARGET=$XSERVER_IP; L4_POLICY=1 ;;
  esac
}

# --- measurements -----------------------------------------------------------------------
gen() { ip netns exec "$CLIENT_NS" taskset -c "$GEN_CPU" "$@"; }

# iperf_gbps: one iperf3 run against $IPERF_TARGET, in Gbit/s; on failure prints iperf3's
# own error and fails (on a loaded machine its control connection sometimes breaks: the
# caller tries again once).
iperf_gbps() {
  gen iperf3 -c "$IPERF_TARGET" -t "$DURATION" -J | python3 -c '
import json, sys
report = json.load(sys.stdin)
received = report.get("end", {}).get("sum_received")
if not received:
    print(report.get("error", "no result"))
    sys.exit(1)
print(round(received["bits_per_second"] / 1e9, 3))'
}

# wrk_run SECONDS CONNS [extra wrk args]: prints "req_per_s non_2xx socket_errors"
wrk_run() {
  local secs=$1 conns=$2; shift 2
  local out
  out=$(gen wrk -t1 -c"$conns" -d"${secs}s" "$@" "http://$TARGET$REQ_PATH") || die "wrk failed against $TARGET: $out"
  echo "$out" >>"$TMP/wrk.log"
  local rps non2xx errs
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
  errs=$(awk -F'[ ,]+' '/Socket errors:/ {print $4+$6+$8+$10}' <<<"$out")
  echo "${rps:-0} ${non2xx:-0} ${errs:-0}"
}

rss_kib() { # total VmRSS of the given PIDs and their descendants
  local total=0 pid child
  for pid in "$@"; do
    for child in $pid $(ps -o pid= --ppid "$pid" 2>/dev/null); do
      total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}

# l4_denies: 1 when a connection the policy does not admit (server port 81) is dropped,
# 0 when it is refused by the server's stack (no policy on the path).
l4_denies() {
  local rc=0
  ip netns exec "$CLIENT_NS" timeout 1 bash -c "exec 3<>/dev/tcp/$SERVER_ADDR/81" 2>/dev/null || rc=$?
  [ "$rc" = 124 ] && echo 1 || echo 0
}

# l7_denies: 1 when a request the L7 rules do not allow (PUT) is answered 403. Three tries:
# right after the connection-rate run a new connection may wait out a SYN retransmission.
l7_denies() {
  local status try
  for try in 1 2 3; do
    status=$(ip netns exec "$CLIENT_NS" timeout 4 bash -c "exec 3<>/dev/tcp/${TARGET%:*}/${TARGET##*:}
      printf 'PUT $REQ_PATH HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' >&3
      head -n1 <&3" 2>/dev/null || true)
    case "$status" in *" 403 "*) echo 1; return ;; esac
  done
  echo 0
}

# busy_cores SECONDS: cores busy machine-wide over that many seconds (nothing of ours runs
# between scenarios, so this is other people's work).
busy_cores() {
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  sleep "$1"
  b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" -v s="$1" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.2f", (y[1] - x[1]) / hz / s }'
}

# wait_quiet: before a scenario, wait (up to QUIET_WAIT seconds, 10) until other work on the
# machine drops under 0.3 cores; the wait and the load seen are recorded with the run.
QUIET_WAIT=$([ "${QUIET:-1}" = 0 ] && echo 0 || echo 10)
wait_quiet() {
  local waited=0 busy
  busy=$(busy_cores 1)
  while awk -v b="$busy" 'BEGIN { exit !(b > 0.3) }' && [ "$waited" -lt "$QUIET_WAIT" ]; do
    busy=$(busy_cores 2); waited=$((waited + 2))
  done
  echo "$busy $waited"
}

others_compiling() { ps -eo comm= | grep -cE '^(rustc|cc1|cc1plus|ld|cargo)$' || true; }

# summary PATTERN FILE...: the helpers' closing lines matching PATTERN, as one JSON string.
summary() {
  python3 -c 'import json, os, sys
lines = [l.strip() for path in sys.argv[2:] if os.path.exists(path)
         for l in open(path, errors="replace") if sys.argv[1] in l]
print(json.dumps(" | ".join(lines)) if lines else "null")' "$@"
}

measure() { # measure SCENARIO ROUND: appends one JSON line to $RAW
  local scenario=$1 round=$2
  LOGS="$TMP/logs/$scenario-r$round"
  local quiet_busy quiet_waited
  read -r quiet_busy quiet_waited < <(wait_quiet)
  # The namespaces outlive scenarios, and so would the previous scenario's TIME_WAIT
  # sockets: a SYN reusing such a tuple towards another address (no mesh: the server; a
  # ClusterIP: the VIP) carries timestamps the server's TIME_WAIT socket rejects (PAWS), a
  # retransmission each, which halved the connection rate of whichever scenario came next.
  local ns
  for ns in "${NAMESPACES[@]}"; do in_ns "$ns" ss -K state time-wait >/dev/null 2>&1 || true; done
  up "$scenario"
  wrk_run "$WARMUP" "$CONNS" >/dev/null
  local busy_before busy_after
  busy_before=$(others_compiling)
  read -r rps non2xx errs < <(wrk_run "$DURATION" "$CONNS")
  local load
  load=$(gen "$BIN/myelin-bench" load --target "$TARGET" --path "$REQ_PATH" --rate "$RATE" \
    --connections "$CONNS" --warmup 1 --duration "$DURATION" \
    --sut-pids "$(IFS=,; echo "${SC_PIDS[*]}")") || die "the open-loop generator failed against $TARGET"
  read -r cps cnon2xx cerrs < <(wrk_run "$DURATION" "$CONN_RATE_CONNS" -H "Connection: close")
  local grpc=null
  if [ -n "$GRPC_TARGET" ]; then
    grpc=$(gen "$BIN/myelin-bench" grpc-load --target "$GRPC_TARGET" --warmup 1 --duration "$DURATION") \
      || die "the gRPC client failed against $GRPC_TARGET"
  fi
  local iperf=null
  if [ -n "$IPERF_TARGET" ]; then
    start iperf-server "$SERVER_NS" iperf3 -s -B "$SERVER_ADDR"
    wait_tcp "$SERVER_NS" "$SERVER_ADDR:5201"
    iperf=$(iperf_gbps) || iperf=$(iperf_gbps) || die "iperf3 failed twice against $IPERF_TARGET: $iperf"
  fi
  busy_after=$(others_compiling)
  local l4=null l7=null
  [ "$L4_POLICY" = 0 ] || l4=$(l4_denies)
  [ "$L7_POLICY" = 0 ] || l7=$(l7_denies)
  local rss=0 meshes=${#MESH_PIDS[@]}
  [ "$meshes" -eq 0 ] || rss=$(rss_kib "${MESH_PIDS[@]}")
  stop_scenario
  # The helpers' closing lines: packets and events the datapath saw, L7 events consumed.
  local dp ag
  dp=$(summary "events read" "$LOGS/datapath.log" "$LOGS/datapath-node1.log" "$LOGS/datapath-node2.log")
  ag=$(summary "L7 events consumed" "$LOGS/agent.log")
  printf '{"scenario":"%s","round":%d,"rps":%s,"rps_non_2xx":%s,"rps_errors":%s,"conn_rate":%s,"conn_non_2xx":%s,"conn_errors":%s,"iperf_gbps":%s,"mesh_rss_kib":%s,"mesh_processes":%d,"l4_denies":%s,"l7_denies":%s,"compilers_running":%d,"datapath_events":%s,"agent_events":%s,"grpc":%s,"busy_before_cores":%s,"quiet_wait_s":%s,"load":%s}\n' \
    "$scenario" "$round" "$rps" "$non2xx" "$errs" "$cps" "$cnon2xx" "$cerrs" "$iperf" "$rss" \
    "$meshes" "$l4" "$l7" "$((busy_before + busy_after))" "$dp" "$ag" "$grpc" "$quiet_busy" "$quiet_waited" "$load" >>"$RAW"
  [ "$l4" != 0 ] || say "WARNING: $scenario: a connection the L3/L4 policy does not admit got through"
  [ "$l7" != 0 ] || say "WARNING: $scenario: a request the L7 rules deny was not answered 403"
  printf '    %-16s %9.0f req/s  %8.0f conn/s  p50 %s ms  p99 %s ms  cpu %s us/req\n' "$scenario" "$rps" "$cps" \
    "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["latency_ms"]["p50"])' "$load")" \
    "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["latency_ms"]["p99"])' "$load")" \
    "$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["total_cpu_us_per_req"],1))' "$load")" >&2
}

# --- run --------------------------------------------------------------------------------
topology
for s in "${SCENARIOS[@]}"; do
  case " ${CROSS_NODE_SCENARIOS[*]} " in *" $s "*) topology_between_nodes; break ;; esac
done
RAW="$TMP/raw.jsonl"
: >"$RAW"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s)
for round in $(seq "$ROUNDS"); do
  say "round $round/$ROUNDS"
  for scenario in "${SCENARIOS[@]}"; do measure "$scenario" "$round"; done
done

PODREADY_ARGS=()
# Policy resolution time: the policy crate's own benchmark (1,000 policies, 1,000 endpoints;
# the largest policy document accepted; 10,000 policies applied then deleted one by one),
# with the full runs (those that also measure pod-ready).
if [ "$PODREADY" != 0 ] && [ "$SMOKE" = 0 ] && [ -x "$BIN/examples/resolve_bench" ]; then
  say "policy resolution (myelin-policy's resolve_bench)"
  taskset -c "$SUT_CPU" "$BIN/examples/resolve_bench" >"$TMP/resolve.txt" 2>&1 || true
  PODREADY_ARGS+=(--resolve "$TMP/resolve.txt")
fi
# Kernel events the agent's pipeline consumes (ring buffer → flow → flow ring), per core
# and without loss, and the packet-to-flow delay: the agent's own benchmark.
if [ "$PODREADY" != 0 ] && [ "$SMOKE" = 0 ]; then
  say "kernel event pipeline (myelin-agent's event_throughput benchmark)"
  (cd "$ROOT" && taskset -c "$SUT_CPU" cargo test --release -q -p myelin-agent --test event_throughput \
    -- --ignored --nocapture 2>/dev/null | grep '^{' >"$TMP/events.json") || true
  [ -s "$TMP/events.json" ] && PODREADY_ARGS+=(--events "$TMP/events.json")
fi
if [ "$PODREADY" != 0 ]; then
  say "pod-ready time over $PODREADY pods (bench/podready.sh)"

  bash "$ROOT/bench/podready.sh" "$PODREADY" "$TMP/podready.json" >&2
  PODREADY_ARGS+=(--podready "$TMP/podready.json")
fi

# Many nodes: a pod on node1 until node3 reaches it (bench/convergence.sh, a 3-node lab of
# its own), and simulated agents against a real etcd (myelin-bench control-plane).
CLUSTER_ARGS=()
if [ "$CONVERGENCE" != 0 ]; then
  say "convergence across nodes over $CONVERGENCE pods (bench/convergence.sh)"
  bash "$ROOT/bench/convergence.sh" "$CONVERGENCE" "$TMP/convergence.json" >&2
  CLUSTER_ARGS+=(--convergence "$TMP/convergence.json")
fi
control_plane_measurement() {
  # A round's changes spread over 10 s: at 1,000 x 100, 1 % per second saturates etcd and
  # the simulated agents on two cores (bench/README.md).
  local size agents endpoints rounds=5 window=10000
  [ "$SMOKE" = 0 ] || { rounds=2; window=200; }
  : >"$TMP/control-plane.json"
  for size in ${CONTROL_PLANE//,/ }; do
    agents=${size%x*}; endpoints=${size#*x}
    say "control plane: $agents agents x $endpoints endpoints on etcd (myelin-bench control-plane)"
    "$BIN/myelin-bench" control-plane --agents "$agents" --endpoints "$endpoints" --rounds "$rounds" \
      --window-ms "$window" $([ "$SMOKE" = 1 ] && echo "--identities 20 --settle-ms 200") \
      >>"$TMP/control-plane.json" 2>"$TMP/control-plane.log" \
      || { tail -20 "$TMP/control-plane.log" >&2; die "myelin-bench control-plane failed at $size"; }
  done
  CLUSTER_ARGS+=(--control-plane "$TMP/control-plane.json")
}
[ "$CONTROL_PLANE" = none ] || control_plane_measurement

# The proxy's memory under a storm of client connections and after it closed (myelin-bench
# soak: the proxy in a process of its own, clients and upstream on 127.0.0.0/8, ~15 s).
SOAK_ARGS=()
soak_measurement() {
  local connections=$1 rounds=3 settle=2
  [ "$SMOKE" = 0 ] || { rounds=1; settle=0.5; }
  say "proxy memory: storms of $connections connections (myelin-bench soak)"
  "$BIN/myelin-bench" soak --connections "$connections" --rounds "$rounds" --settle "$settle" \
    >"$TMP/soak.json" 2>"$TMP/soak.log" || { cat "$TMP/soak.log" >&2; die "myelin-bench soak failed"; }
  SOAK_ARGS+=(--soak "$TMP/soak.json")
}
SOAK=${SOAK:-$([ "$SMOKE" = 1 ] && echo 1000 || echo 10000)}
[ "$SOAK" = 0 ] || soak_measurement "$SOAK"

if [ "$SMOKE" = 1 ]; then
  DEST=${OUT:-$TMP/results}
else
  DEST=${OUT:-$ROOT/bench/results}
fi
mkdir -p "$DEST"
COMMAND="bench/run.sh"
[ "$SMOKE" = 0 ] || COMMAND+=" --smoke"
[ "${#SCENARIOS[@]}" -eq "${#ALL_SCENARIOS[@]}" ] || COMMAND+=" --scenario $(IFS=,; echo "${SCENARIOS[*]}")"
python3 "$ROOT/bench/report.py" --raw "$RAW" --out "$DEST" \
  --started "$STARTED" --seconds "$(( $(date +%s) - T0 ))" --command "$COMMAND --rounds $ROUNDS --rate $RATE --duration $DURATION --server $SERVER" \
  --rate "$RATE" --server "$SERVER" $([ "$SMOKE" = 1 ] && echo --smoke) "${PODREADY_ARGS[@]+"${PODREADY_ARGS[@]}"}" \
  "${SOAK_ARGS[@]+"${SOAK_ARGS[@]}"}" "${CLUSTER_ARGS[@]+"${CLUSTER_ARGS[@]}"}" \
  $([ "$SMOKE" = 0 ] && [ -z "$OUT" ] && [ "${#SCENARIOS[@]}" -eq "${#ALL_SCENARIOS[@]}" ] && echo --readme "$ROOT/bench/README.md")
FAILED=0
say "results in $DEST"
