#!/usr/bin/env bash
# skypipe-mapmake with owned sub-maps: peak memory (VmHWM) and sub-maps held per rank.
#
#   benches/mapmake_memory.sh [NSIDE]      (default 1024)
#
# Simulates the demo's data (12 two-minute observations, 4 detector pairs, precessing), runs
# pointing at NSIDE and calibration once (2 ranks), then the map-maker (I/Q/U, binned +
# destriped, 64-pixel sub-maps) on 1, 2 and 4 ranks, and prints from summary.json per rank:
# samples binned, sub-maps hit, sub-maps owned, the most sub-maps held at once and the
# process's VmHWM at the end of the map unit. Scratch data under ${TMPDIR:-/tmp}, removed.
set -euo pipefail
cd "$(dirname "$0")/.."
nside=${1:-1024}
cargo build --release --bin skypipe-sim --bin skypipe-pointing --bin skypipe-calibrate \
  --bin skypipe-mapmake >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/skypipe-mapmake-memory.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe --bind-to none)
bin=target/release
printf 'observations = 12\nobs_duration_s = 120.0\ndetector_pairs = 4\nprecession_deg = 7.5\nprecession_period_days = 0.01\n' \
  > "$work/sim.toml"
"$bin/skypipe-sim" cmb --size tiny --config "$work/sim.toml" --out "$work/data" >/dev/null
list="$work/data/observations.json"
printf '[run]\nfsync = false\nprogress_interval_s = 600\n[pointing]\nnside = %s\nframe = "galactic"\nangles = true\n' \
  "$nside" > "$work/p.toml"
"${mpirun[@]}" -n 2 "$bin/skypipe-pointing" --config "$work/p.toml" --observations "$list" \
  --run-dir "$work/run" >/dev/null
printf '[run]\nfsync = false\nprogress_interval_s = 600\n[calibrate]\n' > "$work/c.toml"
"${mpirun[@]}" -n 2 "$bin/skypipe-calibrate" --config "$work/c.toml" --observations "$list" \
  --run-dir "$work/run" >/dev/null
printf '[run]\nfsync = false\nprogress_interval_s = 600\n[mapmake]\nquicklook_width = 0\n' > "$work/m.toml"
echo "nside $nside; columns per rank: samples, sub-maps hit, owned, held at most, VmHWM (MiB)"
for ranks in 1 2 4; do
  out="$work/map$ranks"
  cp -r "$work/run" "$out"
  "${mpirun[@]}" -n "$ranks" "$bin/skypipe-mapmake" --config "$work/m.toml" \
    --observations "$list" --run-dir "$out" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
  python3 - "$out/mapmake/summary.json" "$ranks" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"ranks {sys.argv[2]}: union {s['observed_submaps']} sub-maps of {s['submap_pixels']} pixels, "
      f"{s['iterations']} CG iterations, read/solve/write {' '.join(f'{t:.1f}' for t in s['seconds'])} s")
for r in range(int(sys.argv[2])):
    print(f"  rank {r}: {s['samples_per_rank'][r]:>9} {s['submaps_per_rank'][r]:>6} "
          f"{s['owned_submaps_per_rank'][r]:>6} {s['peak_submaps_per_rank'][r]:>6} "
          f"{s['peak_memory_mb_per_rank'][r]:>8.1f}")
EOF
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
