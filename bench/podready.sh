#!/usr/bin/env bash
# Pod-ready time: from `myelin apply` of a pod to the first successful *policed* request to
# it, in a lab of its own (lab name mb<pid>, removed with `myelin lab down` on exit).
#
#   bench/podready.sh [PODS] [OUT_JSON]      (default 100 pods, JSON on stdout)
#
# The lab holds a client (tiefighter, org=empire), a pod the policy rejects (xwing,
# org=alliance) and a CiliumNetworkPolicy admitting only org=empire to class=ready on
# 80/TCP. Pods ready-1..N (the deathstar app, class=ready) are applied one at a time; each
# is timed until `curl` from the client's namespace gets 200 from its address. At the end
# the xwing must be refused by the last pod (the requests were policed). Also records the
# resident memory of the node's agent + proxy at 10 and at N pods. Run as root after a
# release build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PODS=${1:-100}
OUT=${2:-}
M="${CARGO_TARGET_DIR:-$ROOT/target}/release/myelin"
LAB="mb$$"
[ -x "$M" ] || { echo "podready: $M missing: cargo build --release --bin myelin" >&2; exit 1; }
command -v curl >/dev/null || { echo "podready: needs curl" >&2; exit 1; }

# shellcheck source=bench/lab_bench.sh
source "$ROOT/bench/lab_bench.sh" podready
{
  ship tiefighter empire
  ship xwing alliance
  cat <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ready-ingress
spec:
  endpointSelector: {matchLabels: {class: ready}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
EOF
} >"$TMP/base.yaml"

LAB_UP=1
"$M" lab --name "$LAB" up -f "$TMP/base.yaml" >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log" >&2; exit 1; }
CLIENT_NS="ml-${LAB}_default_tiefighter"
REJECTED_NS="ml-${LAB}_default_xwing"

now_ns() { date +%s%N; }
# node_rss: VmRSS (KiB) of the lab node's agent + proxy, from the lab's state file.
node_rss() {
  local pid total=0
  for pid in $(python3 -c 'import json,sys
s = json.load(open(sys.argv[1]))
for n in s["nodes"]:
    for p in (n.get("agent"), n.get("proxy")):
        if p: print(p["pid"])' "/run/myelin/labs/$LAB/state.json"); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
pod_ip() { ip netns exec "$1" ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1; }

: >"$TMP/times"
: >"$TMP/rss"
ip=""
for i in $(seq "$PODS"); do
  cat >"$TMP/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ready-$i
  labels: {class: ready}
spec:
  containers: [{name: deathstar, image: $IMAGE_APP}]
EOF
  t0=$(now_ns)
  "$M" apply --lab "$LAB" -f "$TMP/pod.yaml" >/dev/null
  ns="ml-${LAB}_default_ready-$i"
  ok=0
  while [ $(( $(now_ns) - t0 )) -lt 10000000000 ]; do
    ip=$(pod_ip "$ns" || true)
    if [ -n "$ip" ] && [ "$(ip netns exec "$CLIENT_NS" curl -s -m 0.5 -o /dev/null -w '%{http_code}' "http://$ip/v1/healthz" 2>/dev/null)" = 200 ]; then
      ok=1; break
    fi
    sleep 0.005
  done
  [ "$ok" = 1 ] || { echo "podready: ready-$i not reachable within 10 s" >&2; exit 1; }
  echo $(( ($(now_ns) - t0) / 1000 )) >>"$TMP/times"
  case "$i" in 10|100|"$PODS") echo "$i $(node_rss)" >>"$TMP/rss" ;; esac
done

# The requests were policed: the rejected client times out on the last pod.
policed=true
if ip netns exec "$REJECTED_NS" curl -s -m 1 -o /dev/null "http://$ip/v1/healthz" 2>/dev/null; then
  policed=false
fi

python3 - "$TMP/times" "$PODS" "$policed" "$TMP/rss" <<'EOF' | if [ -n "$OUT" ]; then tee "$OUT"; else cat; fi
import json, statistics, sys
times = sorted(int(l) / 1000 for l in open(sys.argv[1]) if l.strip())
def pct(p):
    return times[min(len(times) - 1, max(0, round(p / 100 * len(times) + 0.5) - 1))]
print(json.dumps({"pods": int(sys.argv[2]), "p50_ms": round(pct(50), 1), "p99_ms": round(pct(99), 1),
                  "min_ms": round(times[0], 1), "max_ms": round(times[-1], 1),
                  "mean_ms": round(statistics.mean(times), 1), "policed": sys.argv[3] == "true",
                  "node_rss_kib": {l.split()[0]: int(l.split()[1]) for l in open(sys.argv[4]) if l.strip()}}))
EOF
