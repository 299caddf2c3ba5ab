#!/usr/bin/env bash
# skypipe-mapmake: strong scaling (1 -> 2 ranks) and memory per rank at nside 1024 and 2048.
#
#   benches/mapmake_scaling.sh [OBSERVATIONS]      (default 48 bench-size observations)
#
# Simulates OBSERVATIONS bench-size observations (5 min each, 8 detectors at 180.37 Hz), runs
# pointing at nside 1024 and 2048 and calibration once (2 ranks), then the map-maker
# (binned + destriped) on 1 and 2 ranks at each nside. Prints wall time, speed-up, the peak RSS
# of each rank (GNU time), the sparse accumulators' size beside a dense full-sky one, the
# sub-maps each CG iteration reduces, and the map unit's phases, from summary.json.
# Intensity only: the simulation's four detector pairs sit at different focal-plane positions,
# so at these resolutions few pixels see two pairs' angles and I/Q/U pixels fall under the
# rcond cut, which would leave the destriper nothing to do.
# Scratch data under ${TMPDIR:-/tmp}; removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
obs=${1:-48}
cargo build --release --bin skypipe-sim --bin skypipe-pointing --bin skypipe-calibrate \
  --bin skypipe-mapmake >/dev/null
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)"; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/skypipe-mapmake-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe --bind-to none)
bin=target/release

"$bin/skypipe-sim" cmb --size bench --observations "$obs" --out "$work/data" >/dev/null
list="$work/data/observations.json"
for nside in 1024 2048; do
  printf '[run]\nfsync = false\nprogress_interval_s = 600\n[pointing]\nnside = %s\nframe = "galactic"\nangles = %s\n' \
    "$nside" "$([ "$nside" = 2048 ] && echo true || echo false)" > "$work/p$nside.toml"
  "${mpirun[@]}" -n 2 "$bin/skypipe-pointing" --config "$work/p$nside.toml" \
    --observations "$list" --run-dir "$work/run$nside" >/dev/null
done
printf '[run]\nfsync = false\nprogress_interval_s = 600\n[calibrate]\npointing_dir = "%s"\n' \
  "$work/run2048/pointing" > "$work/c.toml"
"${mpirun[@]}" -n 2 "$bin/skypipe-calibrate" --config "$work/c.toml" --observations "$list" \
  --run-dir "$work/cal" >/dev/null

echo "observations: $obs; samples: $(python3 -c "import json;print(sum(o.get('samples',0) for o in json.load(open('$list'))['observations'])*8)")"
printf '%-6s %-5s %-7s %-8s %-22s %-14s %-9s %-10s %-7s %s\n' nside ranks wall_s speedup \
  "peak_rss_MB_per_rank" "accum_MB/rank" dense_MB iterations shared "map unit s (read solve write)"
for nside in 1024 2048; do
  t1=
  for ranks in 1 2; do
    run="$work/map$nside-$ranks"
    printf '[run]\nfsync = false\nprogress_interval_s = 600\n[mapmake]\ncomponents = "i"\npointing_dir = "%s"\ncalibrated_dir = "%s"\n' \
      "$work/run$nside/pointing" "$work/cal/calibrate" > "$work/m.toml"
    start=$(date +%s.%N)
    "${mpirun[@]}" -n "$ranks" /usr/bin/time -f "maxrss_kb %M" "$bin/skypipe-mapmake" \
      --config "$work/m.toml" --observations "$list" --run-dir "$run" >"$work/out" 2>&1 \
      || { cat "$work/out"; exit 1; }
    end=$(date +%s.%N)
    wall=$(python3 -c "print(f'{$end - $start:.1f}')")
    [ -z "$t1" ] && t1=$wall
    rss=$(grep -o 'maxrss_kb [0-9]*' "$work/out" | awk '{printf "%d ", $2/1024}')
    python3 - "$run/mapmake/summary.json" "$nside" "$ranks" "$wall" "$t1" "$rss" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
nside, ranks, wall, t1, rss = sys.argv[2:]
stride = 3  # hits, matrix, right-hand side (intensity only)
acc = [n * s['submap_pixels'] * stride * 8 / 1e6 for n in s['submaps_per_rank']]
dense = 12 * int(nside) ** 2 * stride * 8 / 1e6
print(f"{nside:<6} {ranks:<5} {wall:<7} {float(t1) / float(wall):<8.2f} {rss:<22} "
      f"{' '.join(f'{a:.0f}' for a in acc):<14} {dense:<9.0f} {s['iterations']:<10} "
      f"{s['shared_submaps']}/{max(s['submaps_per_rank'])} "
      f"{' '.join(f'{t:.1f}' for t in s['seconds'])}")
EOF
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
