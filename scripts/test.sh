#!/usr/bin/env bash
# Runs every test. As root the privileged tests (network namespaces, eBPF)
# run too; with CI=true they must run, and one that cannot fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> formatting"
cargo fmt --all --check

echo "==> lints (without the kernel toolchain, as a contributor's machine may be)"
MYELIN_EBPF_STUB=1 cargo clippy --all-targets --quiet -- -D warnings

if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "CI=true: the privileged tests must run, but this is not root" >&2
    exit 1
  fi
  echo "note: not root, the privileged tests (namespaces, eBPF) will be skipped"
fi

if [ "${CI:-}" = "true" ]; then
  # A fresh clone gains nothing from incremental caches; they cost disk.
  export CARGO_INCREMENTAL=0
  # Keeps the fuzz targets building and running; the long runs are `make fuzz`.
  echo "==> fuzz targets (smoke: ${FUZZ_SECONDS:-10} s each)"
  FUZZ_SECONDS=${FUZZ_SECONDS:-10} bash scripts/fuzz.sh
  # The sanitizer builds are not used again in this run: give their disk back.
  rm -rf crates/*/fuzz/target
  # Keeps the benchmark harness working: every scenario must produce numbers
  # (the figures themselves come from `make bench`, never from tests).
  echo "==> benchmark harness (smoke)"
  bash bench/run.sh --smoke
fi


echo "==> tests"
if [ "${CI:-}" = "true" ]; then
  # In CI the metrics must pass Prometheus' own checker, not be skipped.
  export MYELIN_REQUIRE_PROMTOOL=1
fi
cargo test --no-fail-fast



