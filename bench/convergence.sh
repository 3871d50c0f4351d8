#!/usr/bin/env bash
# Convergence across nodes: from `myelin apply` of a pod on node1 to the first request to it
# that succeeds from a client pod on node3, in a 3-node lab of its own (lab name mc<pid>,
# removed with `myelin lab down` on exit).
#
#   bench/convergence.sh [PODS] [OUT_JSON] [ROUTING]   (default 100 pods, JSON on stdout,
#                                                       native routing; or tunnel)
#
# The lab holds a client (tiefighter, org=empire) and a rejected peer (xwing, org=alliance),
# both pinned to node3, and two policies: the client may send only to class=conv pods on
# 80/TCP (egress, enforced on node3), and class=conv pods admit only org=empire on 80/TCP
# (ingress, enforced on node1). Pods conv-1..N (the deathstar app) are applied one at a time
# with spec.nodeName node1, each with a label of its own, so each gets a new identity: the
# first request succeeds only once node1's agent allocated it in etcd, node3's agent has
# the identity and the pod's address from its etcd watches (its egress policy and ipcache
# admit the pod), and node1 enforces the pod's ingress policy.
#
# The time runs from just before `myelin apply` (its process start included) to the 200
# (`myelin-bench first-ok` in the client's namespace: a new connection every ~20 ms, each
# given 20 ms, so the figure is up to ~20 ms late when a SYN was dropped, and it includes
# starting that one process, ~2 ms, once per pod). At the end the xwing must be refused by
# the last pod. Run as root after a release build (myelin, myelin-bench).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PODS=${1:-100}
OUT=${2:-}
ROUTING=${3:-native}
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
M="$BIN/myelin"
LAB="mc$$"
for b in myelin myelin-bench; do
  [ -x "$BIN/$b" ] || { echo "convergence: $BIN/$b missing: cargo build --release --bin $b" >&2; exit 1; }
done

# shellcheck source=bench/lab_bench.sh
source "$ROOT/bench/lab_bench.sh" convergence
{
  ship tiefighter empire node3
  ship xwing alliance node3
  cat <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: conv-ingress
spec:
  endpointSelector: {matchLabels: {class: conv}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress
spec:
  endpointSelector: {matchLabels: {org: empire}}
  egress:
  - toEndpoints: [{matchLabels: {class: conv}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
EOF
} >"$TMP/base.yaml"

LAB_UP=1
"$M" lab --name "$LAB" up --nodes 3 --routing "$ROUTING" -f "$TMP/base.yaml" >"$TMP/up.log" 2>&1 \
  || { cat "$TMP/up.log" >&2; exit 1; }
CLIENT_NS="ml-${LAB}_default_tiefighter"
REJECTED_NS="ml-${LAB}_default_xwing"

now_ns() { date +%s%N; }
pod_ip() { ip netns exec "$1" ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1; }

: >"$TMP/times"
ip=""
for i in $(seq "$PODS"); do
  cat >"$TMP/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: conv-$i
  labels: {class: conv, run: conv-$i}
spec:
  nodeName: node1
  containers: [{name: deathstar, image: $IMAGE_APP}]
EOF
  t0=$(now_ns)
  "$M" apply --lab "$LAB" -f "$TMP/pod.yaml" >/dev/null
  applied=$(now_ns)
  ip=$(pod_ip "ml-${LAB}_default_conv-$i")
  [ -n "$ip" ] || { echo "convergence: conv-$i has no address after apply" >&2; exit 1; }
  ok=$(ip netns exec "$CLIENT_NS" "$BIN/myelin-bench" first-ok --to "$ip:80" --path /v1/healthz \
    --attempt-ms 20 --deadline-s 10) || { echo "convergence: conv-$i not reachable from node3 within 10 s" >&2; exit 1; }
  read -r ok_ns attempts < <(python3 -c 'import json,sys; r = json.loads(sys.argv[1]); print(r["ok_unix_ns"], r["attempts"])' "$ok")
  echo "$(( (ok_ns - t0) / 1000 )) $(( (applied - t0) / 1000 )) $attempts" >>"$TMP/times"
done

# The requests were policed: the rejected peer on node3 times out on the last pod.
policed=true
if ip netns exec "$REJECTED_NS" curl -s -m 1 -o /dev/null "http://$ip/v1/healthz" 2>/dev/null; then
  policed=false
fi

python3 - "$TMP/times" "$PODS" "$policed" "$ROUTING" <<'EOF' | if [ -n "$OUT" ]; then tee "$OUT"; else cat; fi
import json, statistics, sys
rows = [[int(v) for v in l.split()] for l in open(sys.argv[1]) if l.strip()]
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]
total = [r[0] / 1000 for r in rows]
apply = [r[1] / 1000 for r in rows]
first_try = sum(1 for r in rows if r[2] == 1)
print(json.dumps({"pods": int(sys.argv[2]), "routing": sys.argv[4],
                  "p50_ms": round(pct(total, 50), 1), "p99_ms": round(pct(total, 99), 1),
                  "min_ms": round(min(total), 1), "max_ms": round(max(total), 1),
                  "mean_ms": round(statistics.mean(total), 1),
                  "apply_p50_ms": round(pct(apply, 50), 1), "apply_p99_ms": round(pct(apply, 99), 1),
                  "first_attempt_ok": first_try,
                  "policed": sys.argv[3] == "true"}))
EOF
