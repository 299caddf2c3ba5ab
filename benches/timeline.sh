#!/usr/bin/env bash
# Time to draw the per-rank timeline of a large run (issue 15): skypipe-loadtest runs UNITS
# units of 0.1 ms each (with a few injected failures) on RANKS ranks, then
# `skypipe-status RUN_DIR --timeline` draws it as SVG and as PNG, each timed REPEATS times
# (median printed), with the sizes of the ledger and the pictures and how many marks the
# sub-pixel merging left. Not pass/fail.
#
#   benches/timeline.sh [UNITS=100000] [RANKS=4] [REPEATS=3] [WORK_DIR=/tmp]
#
# Binaries from ${CARGO_TARGET_DIR:-target}/release (build with `cargo build --release --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
UNITS=${1:-100000}
RANKS=${2:-4}
REPEATS=${3:-3}
WORK=$(mktemp -d "${4:-/tmp}/timeline-bench.XXXXXX")
BIN=$PWD/${CARGO_TARGET_DIR:-target}/release
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
trap 'rm -rf "$WORK"' EXIT

/usr/bin/python3 - "$WORK" "$UNITS" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
json.dump({"format": "skypipe-engine-workload/1", "name": "timeline-bench",
           "durations_s": [1e-4] * n, "group": [i // 100 for i in range(n)]},
          open(f"{work}/w.json", "w"))
PY
cat >"$WORK/c.toml" <<TOML
[run]
fsync = false
progress_interval_s = 5.0
[loadtest]
workload = "$WORK/w.json"
[loadtest.inject]
error = ["task=7", "task=$((UNITS / 2))"]
transient = ["task=11"]
transient_attempts = 1
TOML
echo "== skypipe-loadtest: $UNITS units of 0.1 ms on $RANKS ranks"
mpirun --oversubscribe --bind-to none -n "$RANKS" "$BIN/skypipe-loadtest" \
    --config "$WORK/c.toml" --run-dir "$WORK/run" 2>&1 | grep -E 'makespan' || true
echo "ledger: $(wc -l <"$WORK/run/ledger/loadtest.jsonl") records, $(du -h "$WORK/run/ledger/loadtest.jsonl" | cut -f1)"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
TIMEFORMAT='%R %U %S'
for ext in svg png; do
    walls=() cpus=()
    for _ in $(seq "$REPEATS"); do
        read -r wall user sys < <({ time "$BIN/skypipe-status" "$WORK/run" --timeline "$WORK/t.$ext" >/dev/null; } 2>&1)
        walls+=("$wall")
        cpus+=("$(echo "$user + $sys" | bc)")
    done
    echo "timeline.$ext: median wall $(printf '%s\n' "${walls[@]}" | median) s, CPU $(printf '%s\n' "${cpus[@]}" | median) s over $REPEATS draws (wall: ${walls[*]}), $(du -h "$WORK/t.$ext" | cut -f1); load average $(cut -d' ' -f1 /proc/loadavg)"
done
echo "marks in the SVG: $(grep -c 'class="attempt"' "$WORK/t.svg") single attempts, $(grep -c 'class="merged"' "$WORK/t.svg") merged marks"
grep -o 'narrower than a pixel merged into [0-9,]* marks' "$WORK/t.svg" | head -1 || true
