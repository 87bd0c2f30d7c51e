#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 30); exits non-zero on any crash.
#
#   bash fuzz/run.sh [SECONDS]
#
# * Installs cargo-fuzz (cargo install --locked) if it is missing. Uses the installed toolchain;
#   on stable, RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the nightly-only sanitizer flags.
# * Seeds fuzz/corpus/<target>/ with fuzz/seed.sh (the PROTOCOL.md vectors), then runs each
#   target with one job, these libFuzzer limits:
#     -max_total_time=SECONDS  time per target
#     -rss_limit_mb=512        a memory blow-up is a crash (the protocol bounds buffers far lower)
#     -max_len=70000           longest input: one maximal record (65572 bytes) plus framing
#     -timeout=10              one input taking over 10 s is a crash
# * A crash leaves its input in fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log;
#   reproduce it with `cargo fuzz run <target> fuzz/artifacts/<target>/crash-...`.
# * Prints the number of executions of each target (libFuzzer's `#N DONE` line).
#
# FUZZ_TARGETS="a b" limits the run to some targets. All targets are built once, before the runs.
set -euo pipefail
cd "$(dirname "$0")/.." # cargo-fuzz works from the project root and finds fuzz/
secs=${1:-30}
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
unset CARGO_TARGET_DIR # the fuzz crate keeps its own target dir, fuzz/target

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

bash fuzz/seed.sh

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
# No sanitizer: the sealpipe crate is `#![forbid(unsafe_code)]` (src/lib.rs), so ASan would only
# watch its dependencies, and the C in aws-lc is not instrumented by RUSTFLAGS anyway; without
# ASan the build is shorter and each run makes more executions.
echo "==> building all fuzz targets (release, debug assertions, no sanitizer)"
cargo fuzz build -s none

mkdir -p fuzz/logs
failed=()
summary=()
total=0
for t in $targets; do
    echo "==> fuzzing $t for ${secs}s"
    log="fuzz/logs/$t.log"
    set +e
    cargo fuzz run -s none "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=512 -max_len=70000 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -n 1)
    [[ -n $execs ]] || execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log" | tail -n 1)
    execs=${execs:-0}
    if [[ $rc -ne 0 ]]; then
        failed+=("$t")
        summary+=("$(printf '%-32s FAILED (exit %d) after %s execs; see %s' "$t" "$rc" "$execs" "$log")")
        echo "---- last lines of $log ----"
        tail -n 40 "$log"
    else
        summary+=("$(printf '%-32s %12s execs' "$t" "$execs")")
        total=$((total + execs))
    fi
done

echo
echo "==> fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
printf '%-32s %12s execs\n' total "$total"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
