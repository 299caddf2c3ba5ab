#!/usr/bin/env bash
# The quick-start demo, on built-in simulated data, under mpirun with 4 ranks:
#   1. the engine load test on the skewed workload: interrupted part-way by SIGTERM (as Slurm
#      does at a time limit), resumed, with injected failures, then the run report;
#   2. the CMB chain: skypipe-sim cmb, then pointing -> calibrate -> mapmake as one chain job
#      (skypipe-run), then skypipe-status on the run directory;
#   3. imaging: skypipe-sim image -> skypipe-ingest -> singleframe, mosaic, coadd and multiband
#      as one chain job (skypipe-run), then skypipe-status.
# Each part ends with its per-rank timeline, demo-run/{loadtest,cmb,image}-timeline.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/skypipe-loadtest
cfg=configs/loadtest-demo.toml
run_dir=demo-run/loadtest
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun=(mpirun --oversubscribe --bind-to none -n 4)

rm -rf "$run_dir"
echo "== 1. $bin on 4 ranks; SIGTERM to every rank after 1 s (what Slurm sends at the time limit)"
"${mpirun[@]}" "$bin" --config "$cfg" &
job=$!
sleep 1
pkill -TERM -f "^$bin --config $cfg" || true
set +e; wait "$job"; code=$?; set -e
echo "== exit code $code (3 = interrupted, resumable)"

echo
echo "== 2. the same command again: resumes, runs only what is missing"
set +e; "${mpirun[@]}" "$bin" --config "$cfg"; code=$?; set -e
echo "== exit code $code (2 = finished, some units failed: they are injected)"

echo
echo "== 3. one failed unit, in-process, for debugging: $bin --config $cfg --unit task=17"
"$bin" --config "$cfg" --unit task=17 || true

echo
echo "== 4. the run report ($run_dir/run-report.json)"
cat "$run_dir/run-report.json"
echo
echo "== ledger: $(wc -l < "$run_dir/ledger/loadtest.jsonl") records for 2000 units; outputs: $(ls "$run_dir/loadtest" | wc -l) files"
target/release/skypipe-status "$run_dir" --timeline demo-run/loadtest-timeline.svg

echo
echo "== 5. CMB: simulate 12 short Planck-like observations, then pointing, calibration and map-making on 4 ranks"
cmb_data=demo-run/cmb-data
cmb_run=demo-run/cmb
rm -rf "$cmb_data" "$cmb_run"
# Twelve 2-minute observations of 4 detector pairs whose spin axis precesses, so that scans
# cross at several angles and the I/Q/U maps have well-conditioned pixels.
mkdir -p "$cmb_data"
printf 'observations = 12\nobs_duration_s = 120.0\ndetector_pairs = 4\nprecession_deg = 7.5\nprecession_period_days = 0.01\n' \
  > "$cmb_data/../cmb-sim.toml"
target/release/skypipe-sim cmb --size tiny --config "$cmb_data/../cmb-sim.toml" --out "$cmb_data"
# The three stages as one chain job (configs/chain-cmb.toml): calibrate[obs=N] starts as soon
# as pointing[obs=N] is written. The shipped config is nside 2048; the demo's maps use nside 64
# (49 152 pixels). Calibration fits each gain against the dipole plus a sky model, here the
# simulation's input sky standing in for an earlier survey's map: without one the CMB
# anisotropies leak into the gains (calibrate then says so, and configs/chain-cmb-iterate.toml
# makes the model from a first pass).
sed -e "s|data/cmb/observations.json|$cmb_data/observations.json|" -e 's/^nside = 2048/nside = 64/' \
  -e "/^\[calibrate\]/a sky_model = \"$cmb_data/truth/sky.h5\"" \
  configs/chain-cmb.toml > "$cmb_data/chain.toml"
"${mpirun[@]}" target/release/skypipe-run --config "$cmb_data/chain.toml" --run-dir "$cmb_run"
echo "maps: $(ls "$cmb_run/mapmake" | tr '\n' ' ')"
cat "$cmb_run/mapmake/summary.json"
echo
echo "== 6. skypipe-status $cmb_run"
target/release/skypipe-status "$cmb_run"
target/release/skypipe-status "$cmb_run" --timeline demo-run/cmb-timeline.svg

echo
echo "== 7. Imaging: simulate 16 CCD exposures of 512x1024 (2 bands x 2 visits x 4 CCDs); record their raw"
echo "==    regions (skypipe-ingest), then singleframe -> mosaic -> coadd -> multiband as one chain job on 4 ranks"
img_data=demo-run/image-data
img_run=demo-run/image
rm -rf "$img_data" "$img_run"
target/release/skypipe-sim image --size small --out "$img_data"
target/release/skypipe-ingest --input "$img_data/units.json" --run-dir "$img_run"
# configs/chain-imaging-demo.toml (configs/chain-imaging.toml with the demo's paths): a tract's
# mosaic starts as soon as its CCDs are registered and a patch's warps as soon as their tract's
# mosaic is written, while other CCDs are still being processed. A CCD the mosaic cannot solve
# (fewer than min_stars_per_ccd usable stars) would be warped with its single-frame WCS and
# flagged (WCSSRC = 'singleframe-fallback'); on these CCDs every one is solved.
"${mpirun[@]}" target/release/skypipe-run --config configs/chain-imaging-demo.toml --run-dir "$img_run"
echo "warps with the mosaic WCS: $(grep -l "WCSSRC  = 'mosaic" -r "$img_run/coadd/warp" | wc -l), with the single-frame fallback: $(grep -l "WCSSRC  = 'singleframe-fallback" -r "$img_run/coadd/warp" | wc -l)"

echo "multiband catalogues: $(find "$img_run/multiband" -name '*.fits' | wc -l) FITS under $img_run/multiband"
echo "== the tract catalogue against the simulation's truth: astrometric and photometric residuals"
for catalog in "$img_run"/multiband/t*.fits; do
  target/release/skypipe-sim residuals --data "$img_data" --catalog "$catalog" --out demo-run/image-residuals.png
done

echo
echo "== 8. skypipe-status $img_run"
target/release/skypipe-status "$img_run"
target/release/skypipe-status "$img_run" --timeline demo-run/image-timeline.svg
echo "calibrated exposures and catalogues: $(find "$img_run/singleframe" -type f | wc -l) files; registry: $img_run/registry.sqlite3"
echo "coadds and their quicklooks: $(find "$img_run/coadd/coadd" -name '*.fits' | wc -l) FITS, $(find "$img_run/coadd/coadd" -name '*.png' | wc -l) PNG under $img_run/coadd/coadd"
