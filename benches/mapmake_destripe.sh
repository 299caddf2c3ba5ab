#!/usr/bin/env bash
# skypipe-mapmake: destriper convergence with and without the two-level preconditioner, on
# the demo's weakly cross-linked data (12 two-minute observations of 4 detector pairs with a
# precessing spin axis, nside 64, I/Q/U; see scripts/demo.sh).
#
#   benches/mapmake_destripe.sh [ROUNDS]      (default 2 interleaved rounds)
#
# Each round runs the map-maker on one rank with the diagonal preconditioner alone
# (block_baselines = 0, coarse_space = "none": the solver before issue 16), with blocks per
# observation + one coarse template per observation (coarse_space = "observation",
# coarse_segments = 1: the first two-level version) and with the shipped defaults (blocks +
# 20 coarse templates per detector and observation), printing
# iterations, the final relative residual, the residual after 100 iterations, the solve time
# and peak RSS (GNU time). Scratch data under ${TMPDIR:-/tmp}; removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cargo build --release --bin skypipe-sim --bin skypipe-pointing --bin skypipe-calibrate \
  --bin skypipe-mapmake >/dev/null
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)"; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/skypipe-destripe-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe --bind-to none -n 2)
bin=target/release
printf 'observations = 12\nobs_duration_s = 120.0\ndetector_pairs = 4\nprecession_deg = 7.5\nprecession_period_days = 0.01\n' \
  > "$work/sim.toml"
"$bin/skypipe-sim" cmb --size tiny --config "$work/sim.toml" --out "$work/data" >/dev/null
list="$work/data/observations.json"
sed 's/^nside = 2048/nside = 64/; s/^fsync = true/fsync = false/' configs/pointing.toml > "$work/pointing.toml"
sed 's/^fsync = true/fsync = false/' configs/calibrate.toml > "$work/calibrate.toml"
"${mpirun[@]}" "$bin/skypipe-pointing" --config "$work/pointing.toml" --observations "$list" \
  --run-dir "$work/run" >/dev/null 2>&1
"${mpirun[@]}" "$bin/skypipe-calibrate" --config "$work/calibrate.toml" --observations "$list" \
  --run-dir "$work/run" >/dev/null 2>&1
base=$(sed 's/^fsync = true/fsync = false/; s/^quicklook_width = .*/quicklook_width = 0/' configs/mapmake.toml)
echo "$base" | sed 's/^block_baselines = .*/block_baselines = 0/; s/^coarse_space = .*/coarse_space = "none"/' \
  > "$work/one-level.toml"
echo "$base" | sed 's/^coarse_space = .*/coarse_space = "observation"/; s/^coarse_segments = .*/coarse_segments = 1/' \
  > "$work/per-obs.toml"
echo "$base" > "$work/per-det.toml"
printf '%-10s %-6s %10s %12s %12s %9s %9s\n' preconditioner round iterations residual "at 100" "solve s" "RSS MB"
for round in $(seq 1 "$rounds"); do
  for kind in one-level per-obs per-det; do
    rm -rf "$work/run/mapmake" "$work/run/ledger/mapmake".*
    /usr/bin/time -f '%M' -o "$work/rss" "$bin/skypipe-mapmake" --config "$work/$kind.toml" \
      --observations "$list" --run-dir "$work/run" >"$work/log" 2>&1 || true
    /usr/bin/python3 - "$work/run/mapmake/summary.json" "$kind" "$round" "$(cat "$work/rss")" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
h = s["residual_history"]
at100 = h[100] if len(h) > 100 else h[-1]
print(f"{sys.argv[2]:<10} {sys.argv[3]:<6} {s['iterations']:>10} {s['residual']:>12.2e} {at100:>12.2e} "
      f"{s['seconds'][1]:>9.1f} {int(sys.argv[4]) / 1024:>9.0f}")
PY
  done
done
