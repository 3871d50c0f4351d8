#!/usr/bin/env bash
# Where the CPU goes in one scenario: runs it with bench/run.sh and samples cpu0 (the system
# under test's core) with perf during the keep-alive load, then writes a per-process split
# and the top symbols of the two busiest processes.
#
#   bench/profile.sh myelin-l7-node [OUT_FILE]     (default bench/results/profile-SCENARIO.txt)
#
# Run as root, after a release build (cargo build --release --bin myelin-bench).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCENARIO=${1:?usage: bench/profile.sh SCENARIO [OUT_FILE]}
OUT=${2:-$ROOT/bench/results/profile-$SCENARIO.txt}
command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null

TMP=$(mktemp -d "/tmp/myelin-profile.$$.XXXX")
RUN_PID=""
cleanup() {
  if [ -n "$RUN_PID" ]; then
    kill "$RUN_PID" 2>/dev/null || true
    wait "$RUN_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10 s per figure: the keep-alive run starts ~3 s in (topology, server, 2 s warm-up).
bash "$ROOT/bench/run.sh" --no-build --rounds 1 --duration 10 --out "$TMP/results" \
  --scenario "$SCENARIO" >"$TMP/run.log" 2>&1 &
RUN_PID=$!
sleep 5
perf record -q -C 0 -o "$TMP/perf.data" -- sleep 6 2>/dev/null
wait "$RUN_PID" || { cat "$TMP/run.log" >&2; exit 1; }
RUN_PID=""

mkdir -p "$(dirname "$OUT")"
{
  echo "# perf profile of cpu0 (system under test) during keep-alive load: $SCENARIO"
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $(uname -r), bench/profile.sh $SCENARIO"
  grep -E "^    $SCENARIO" "$TMP/run.log" || true
  echo
  echo "## share of cpu0 samples by process"
  # (|| true: head closing the pipe early is not a failure)
  perf report -i "$TMP/perf.data" --no-children --sort pid --stdio 2>/dev/null | grep -vE '^(#|$)' | head -12 || true
  for comm in $( (perf report -i "$TMP/perf.data" --no-children --sort comm --stdio 2>/dev/null \
      | grep -vE '^(#|$)' | awk '{print $2}' | head -3) || true); do
    echo
    echo "## top symbols of $comm"
    perf report -i "$TMP/perf.data" --no-children --comm "$comm" --sort dso,sym --stdio 2>/dev/null \
      | grep -vE '^(#|$)' | head -30 || true
  done
} >"$OUT"
echo "profile written to $OUT"
