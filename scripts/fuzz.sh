#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target of the workspace (crates/*/fuzz), each for
# FUZZ_SECONDS seconds (default 60), and fails if any target crashes, leaks, times out
# or runs out of memory. `make fuzz` runs it.
#
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh          # longer runs
#   FUZZ_TARGETS="sniff rules" bash scripts/fuzz.sh # only these targets
#   FUZZ_ARGS="-max_len=8192" bash scripts/fuzz.sh  # extra libFuzzer flags
#
# Each target starts from the seeds kept in git (crates/X/fuzz/corpus/TARGET, read only)
# plus what earlier runs found (crates/X/fuzz/work/TARGET, ignored by git). A crashing
# input lands in crates/X/fuzz/artifacts/TARGET/; reproduce it with
#   (cd crates/X && cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...)
# and minimise it with `cargo +nightly fuzz tmin TARGET <file>`.
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz from
# crates.io when it is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${FUZZ_SECONDS:-60}
only=${FUZZ_TARGETS:-}
# Each fuzz workspace builds into its own target dir (crates/X/fuzz/target).
unset CARGO_TARGET_DIR

say() { printf '\n==> %s\n' "$*"; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
# Idempotent: only installs when cargo-fuzz is not there yet.
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

declare -a summary=()
failed=0
for fuzz_dir in crates/*/fuzz; do
    [[ -f $fuzz_dir/Cargo.toml ]] || continue
    crate_dir=$(dirname "$fuzz_dir")
    mapfile -t targets < <(cd "$crate_dir" && cargo +nightly fuzz list)
    if [[ -n $only ]]; then
        mapfile -t targets < <(for t in "${targets[@]}"; do
            [[ " $only " == *" $t "* ]] && echo "$t"
        done)
    fi
    ((${#targets[@]})) || continue
    say "building $fuzz_dir: ${targets[*]}"
    (cd "$crate_dir" && cargo +nightly fuzz build 2>&1 | tail -n 3) ||
        { echo "fuzz: build of $fuzz_dir failed" >&2; exit 1; }
    for target in "${targets[@]}"; do
        seeds=$fuzz_dir/corpus/$target
        work=$fuzz_dir/work/$target
        log=$fuzz_dir/work/$target.log
        mkdir -p "$seeds" "$work"
        say "running $target for ${seconds}s (log: $log)"
        # New inputs go to the first corpus dir only; the seeds stay as committed.
        # shellcheck disable=SC2086
        if (cd "$crate_dir" && cargo +nightly fuzz run "$target" \
            "$root/$work" "$root/$seeds" -- \
            -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 \
            -print_final_stats=1 ${FUZZ_ARGS:-}) >"$log" 2>&1; then
            status=ok
        else
            status=CRASHED
            failed=1
            grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|^Failing input' "$log" |
                head -n 20 >&2 || true
        fi
        runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1 || true)
        [[ -n $runs ]] || runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" |
            grep -oE '[0-9]+$' | tail -n 1 || true)
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)
        summary+=("$(printf '%-16s %-8s runs=%-10s cov=%s' "$target" "$status" "${runs:-?}" "${cov:-?}")")
        echo "${summary[-1]}"
    done
done

say "summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if ((failed)); then
    echo "fuzz: a target failed; see the logs above and crates/*/fuzz/artifacts/" >&2
    exit 1
fi
