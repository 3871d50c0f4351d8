#!/usr/bin/env bash
# The Star Wars demo in the lab, as Cilium's getting-started guide tells it.
# Every step shows the command, runs it, and checks the answer users expect.
set -euo pipefail
cd "$(dirname "$0")/.."

M=${MYELIN:-./target/release/myelin}
export MYELIN_LAB=${MYELIN_LAB:-myelin}
APP=examples/starwars
URL=deathstar.default.svc.cluster.local/v1

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
