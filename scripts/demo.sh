#!/usr/bin/env bash
# The Star Wars demo in the lab, as Cilium's getting-started guide tells it.
# Every step shows the command, runs it, and checks the answer users expect.
set -euo pipefail
cd "$(dirname "$0")/.."

M=${MYELIN:-./target/release/myelin}
export MYELIN_LAB=${MYELIN_LAB:-myelin}
APP=examples/starwars
URL=deathstar.default.svc.cluster.local/v1
NODES=${NODES:-1}
if ! [[ "$NODES" =~ ^[0-9]+$ ]] || [ "$NODES" -eq 0 ] || [ "$NODES" -eq 2 ]; then
  echo "NODES=$NODES: use 1, or 3 and more (the deathstar's two pods take two nodes, the ships a third)" >&2
  exit 1
fi

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }

# expect NAME WANT CMD...: runs CMD, prints its output, and checks it holds WANT.
expect() {
  local want="$1"; shift
  show "$*"
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  if [[ "$out" != *"$want"* ]]; then
    printf '\033[31mexpected %q (exit %s)\033[0m\n' "$want" "$rc" >&2
    exit 1
  fi
}

# expect_timeout CMD...: the command must fail with curl's timeout (28).
expect_timeout() {
  show "$*"
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -ne 28 ]; then
    printf '\033[31mexpected a timeout (curl exit 28), got exit %s\033[0m\n' "$rc" >&2
    exit 1
  fi
  echo "(no answer: the SYN was dropped; curl gave up after the timeout)"
}

"$M" lab down >/dev/null 2>&1 || true

# pods_on NODE: the names of the pods the lab placed on NODE, one a line.
pods_on() {
  "$M" lab status -o json | python3 -c 'import json,sys; [print(p["name"]) for p in json.load(sys.stdin)["pods"] if p["node"]==sys.argv[1]]' "$1"
}

# pod_ip POD FAMILY: the pod's address of that family (4 or 6).
pod_ip() {
  "$M" lab status -o json | python3 -c 'import json,sys; p=next(p for p in json.load(sys.stdin)["pods"] if p["name"]==sys.argv[1]); print(next(a for a in p["addresses"] if (":" in a)==(sys.argv[2]=="6")))' "$1" "$2"
}

# The walk over several nodes (`make demo NODES=3`): what holds across nodes
# is checked as on one node; what does not yet is said.
multinode() {
  local last="node$NODES"
  DEMO_TMP=$(mktemp -d)
  trap 'rm -rf "$DEMO_TMP"' EXIT
  local tmp=$DEMO_TMP
  # The app as it ships, with one line more in each ship: spec.nodeName.
  awk -v node="$last" '
    /^---/ { kind = "" }
    /^kind: / { kind = $2 }
    { print }
    kind == "Pod" && /^spec:$/ { print "  nodeName: " node }
  ' "$APP/http-sw-app.yaml" >"$tmp/http-sw-app.yaml"

  bold "1. A cluster of $NODES nodes on this machine: an underlay bridge, one etcd, a relay; packets between nodes through the VXLAN overlay"
  echo "The ships are pinned to $last with spec.nodeName; the deathstar's two pods spread over the nodes with the fewest pods:"
  show "diff -u $APP/http-sw-app.yaml pinned.yaml"
  diff -u "$APP/http-sw-app.yaml" "$tmp/http-sw-app.yaml" | tail -n +3 || true
  show "$M lab up --nodes $NODES --routing tunnel -f pinned.yaml"
  "$M" lab up --nodes "$NODES" --routing tunnel -f "$tmp/http-sw-app.yaml"
  show "$M lab status"
  "$M" lab status
  local deathstars=() node
  for node in $(seq 1 $((NODES - 1))); do
    while read -r pod; do
      [[ "$pod" == deathstar-* ]] && deathstars+=("$pod")
    done < <(pods_on "node$node")
  done
  if [ "${#deathstars[@]}" -ne 2 ] || [ "$(pods_on "$last" | sort | tr '\n' ' ')" != "tiefighter xwing " ]; then
    printf '\033[31mexpected the deathstar pods on two nodes and the ships on %s\033[0m\n' "$last" >&2
    exit 1
  fi

  bold "2. Across nodes: pod to pod (IPv4 and IPv6) and the Service's cluster IP (no policy yet)"
  local pod
  for pod in "${deathstars[@]}"; do
    expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "http://$(pod_ip "$pod" 4)/v1/request-landing"
    expect "Ship landed" "$M" lab exec xwing -- curl -s -m 5 -XPOST "http://[$(pod_ip "$pod" 6)]/v1/request-landing"
  done
  echo "$last's agent balances the deathstar Service over its pods on the other nodes (it learns them from etcd):"
  expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "$URL/request-landing"

  bold "3. L3/L4 policy by identity across nodes: only the empire lands"
  echo "Each ship's identity travels in the VXLAN header; the deathstar's node enforces with it:"
  expect "rule1 created" "$M" apply -f "$APP/sw_l3_l4_policy.yaml"
  expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "$URL/request-landing"
  expect_timeout "$M" lab exec xwing -- curl -s -m 3 -XPOST "$URL/request-landing"
  echo "The relay merges every node's flows; the xwing's drop was recorded on the deathstar's node:"
  show "$M observe --from-pod default/xwing --verdict DROPPED --last 2"
  "$M" observe --from-pod default/xwing --verdict DROPPED --last 2

  bold "4. L7 policy across nodes: the deathstar's node proxy guards the exhaust port"
  echo "The deathstar's node hands the tiefighter's connections to its proxy as they arrive from the overlay:"
  expect "rule1 configured" "$M" apply -f "$APP/sw_l3_l4_l7_policy.yaml"
  expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "$URL/request-landing"
  expect "Access denied" "$M" lab exec tiefighter -- curl -s -m 5 -XPUT "$URL/exhaust-port"

  bold "Try next"
  cat <<TRY
  $M lab node add                 # a node more: namespace, underlay link, routes, agent, proxy
  $M lab node delete $last        # drain it: its pods are deleted with it
  $M bpf endpoints --node node2   # one node's datapath
  $M observe -f                   # every node's flows, through the lab's relay
  $M observe --node node1 -f      # one node's flows
  $M lab down                     # remove the lab and all it created
TRY
}

if [ "$NODES" -gt 1 ]; then
  multinode
  exit 0
fi

bold "1. A cluster on this machine: one node, the Star Wars app (a deathstar Service with two pods, two ships)"
show "$M lab up -f $APP/http-sw-app.yaml"
"$M" lab up -f "$APP/http-sw-app.yaml"
show "$M lab status"
"$M" lab status

bold "2. No policy yet: both ships land, through the Service's cluster IP"
expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "$URL/request-landing"
expect "Ship landed" "$M" lab exec xwing -- curl -s -m 5 -XPOST "$URL/request-landing"

bold "3. L3/L4 policy: only empire ships may reach the deathstar on port 80"
expect "rule1 created" "$M" apply -f "$APP/sw_l3_l4_policy.yaml"
expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "$URL/request-landing"
expect_timeout "$M" lab exec xwing -- curl -s -m 3 -XPOST "$URL/request-landing"
expect "Denied" "$M" policy explain --from xwing --to "$("$M" lab status -o json | python3 -c 'import json,sys; print(next(p["name"] for p in json.load(sys.stdin)["pods"] if p["name"].startswith("deathstar-")))')" --port 80/TCP

bold "4. L7 policy: empire ships may land, but not touch the exhaust port"
expect "rule1 configured" "$M" apply -f "$APP/sw_l3_l4_l7_policy.yaml"
expect "Ship landed" "$M" lab exec tiefighter -- curl -s -m 5 -XPOST "$URL/request-landing"
expect "Access denied" "$M" lab exec tiefighter -- curl -s -m 5 -XPUT "$URL/exhaust-port"
expect_timeout "$M" lab exec xwing -- curl -s -m 3 -XPOST "$URL/request-landing"

bold "5. What happened, as Hubble shows it"
show "$M observe --last 20"
"$M" observe --last 20
show "$M observe --verdict DROPPED --last 5"
"$M" observe --verdict DROPPED --last 5

bold "6. The service map: who talks to whom, what was denied"
show "$M servicemap"
"$M" servicemap
MAP=$("$M" lab status -o json | python3 -c 'import json,sys; print(next((a for w,a in json.load(sys.stdin).get("exposed",[]) if w=="servicemap"), ""))')
if [ -n "$MAP" ]; then
  echo "Live page: http://$MAP/   (the flows above, drawn; click an edge for its flows)"
fi

bold "Try next"
cat <<TRY
  $M lab exec xwing -- curl -s -XPOST $URL/request-landing     # still blocked
  $M observe -f --pod deathstar                                # follow flows live
  $M policy get -o json                                        # the resolved policy
  $M delete -f $APP/sw_l3_l4_l7_policy.yaml                    # lift the policy
  $M lab down                                                  # remove the lab and all it created
TRY
