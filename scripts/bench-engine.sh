#!/usr/bin/env bash
# Engine benchmarks on the shipped workloads (see docs/benchmarks.md for the figures and
# their definitions). Prints one line per configuration: median of REPEAT runs.
#   REPEAT=3 scripts/bench-engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/skypipe-loadtest
repeat=${REPEAT:-3}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '[run]\nmax_batch = 1\n' > "$tmp/unbatched.toml"
printf '[run]\nfsync = false\nisolate = true\n' > "$tmp/isolated.toml"
printf '[run]\nfsync = false\n' > "$tmp/inprocess.toml"
python3 -c 'import json; json.dump({"format": "skypipe-engine-workload/1", "durations_s": [0.0]*400, "group": [0]*400}, open("'"$tmp"'/w400.json", "w"))'

# bench NAME W WORKLOAD [extra args...] -> "NAME W=.. makespan=.. tasks/s=.. efficiency=.."
bench() {
  local name=$1 w=$2 workload=$3; shift 3
  local rows=()
  for r in $(seq "$repeat"); do
    rm -rf "$tmp/run"
    out=$(mpirun --oversubscribe --bind-to none -n "$w" "$bin" --workload "$workload" --run-dir "$tmp/run" "$@" 2>/dev/null)
    rows+=("$(echo "$out" | awk -F': ' '/^makespan_s/{m=$2} /^tasks_per_s/{t=$2} /^efficiency/{e=$2} END{print m, t, e}')")
  done
  printf '%s\n' "${rows[@]}" | sort -n -k1 | awk -v n="$name" -v w="$w" -v k="$repeat" \
    'NR==int((k+1)/2){printf "%-34s W=%-3s makespan_s=%-10s tasks_per_s=%-12s efficiency=%s\n", n, w, $1, $2, $3}'
}

bench "empty (ledger on, fsync on)" 2 workloads/empty.json
bench "empty (ledger on, fsync on)" 8 workloads/empty.json
bench "empty, unbatched (max_batch=1)" 2 workloads/empty.json --config "$tmp/unbatched.toml"
bench "empty, unbatched (max_batch=1)" 8 workloads/empty.json --config "$tmp/unbatched.toml"
for w in 16 32; do
  bench "skewed dynamic, no hints" "$w" workloads/skewed.json
  bench "skewed dynamic, --hints" "$w" workloads/skewed.json --hints
  bench "skewed static round-robin" "$w" workloads/skewed.json --schedule static
done
for w in 16 32; do
  bench "groups, gather per group" "$w" workloads/groups.json --gather
  bench "groups, no gather" "$w" workloads/groups.json
done
# Process isolation: the same 400 empty units in-process and isolated, on 2 ranks.
bench "400 empty units, in-process" 2 "$tmp/w400.json" --config "$tmp/inprocess.toml"
bench "400 empty units, isolated" 2 "$tmp/w400.json" --config "$tmp/isolated.toml"

