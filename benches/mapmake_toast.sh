#!/usr/bin/env bash
# skypipe-mapmake against TOAST 3's map-maker (toast.ops.MapMaker: BinMap + templates.Offset)
# on the same simulated samples: CPU time per sample and residual map RMS against the input
# sky, binned and destriped, one process and one thread each.
#
#   benches/mapmake_toast.sh BENCH_DIR
#
# Everything goes under BENCH_DIR (nothing else is written): a virtual environment used only
# by this script (BENCH_DIR/venv: `pip install toast healpy h5py numpy`, made once), the
# simulation (skypipe-sim cmb with 1/f noise, its input sky in data/truth/sky.h5), the
# skypipe run (pointing NESTED at the sky's nside, calibration with the true gains table so
# that both map-makers see the same calibrated samples), each map-maker's maps and logs, and
# results.json. benches/mapmake_toast.py loads skypipe's calibrated timestreams and dense
# pointing (pixels, I/Q/U weights) into TOAST observations, so both map-makers use identical
# samples, pointing, flags, detector weights (1/(NET^2 rate)), baseline length, rcond cut.
#
# Three map-making runs, one process and one thread each (OMP/TOAST/RAYON threads = 1):
#  1. skypipe-mapmake with the shipped defaults (blocks per observation + coarse space,
#     tolerance 1e-10 on |r|/|b|);
#  2. TOAST's MapMaker with its defaults (convergence 1e-12 on |r|^2/|b|^2, at most 100
#     iterations; its PCG also stops when the residual has not halved in 10 iterations);
#  3. skypipe-mapmake with TOAST's preconditioner (the diagonal: block_baselines = 0,
#     coarse_space = "none") and tolerance = the |r|/|b| TOAST ended at.
# CPU = user + sys: skypipe's whole process (GNU time: start-up, reading the files, writing
# the FITS maps); TOAST's loading of the same files into observations + MapMaker.apply
# (resource.getrusage; Python and TOAST import excluded).
#
# Knobs (environment): OBSERVATIONS (default 24), OBS_S (seconds per observation, 120),
# PAIRS (detector pairs, 4), NSIDE (sky and map nside, 64), FKNEE_HZ (1.0), BASELINE_S (1.0),
# CARGO_TARGET_DIR as for cargo. Needs GNU time (/usr/bin/time). About 2 minutes.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BENCH_DIR" >&2; exit 1; }
mkdir -p "$1"
bench=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
observations=${OBSERVATIONS:-24}
obs_s=${OBS_S:-120}
pairs=${PAIRS:-4}
nside=${NSIDE:-64}
fknee=${FKNEE_HZ:-1.0}
baseline_s=${BASELINE_S:-1.0}
rcond=1e-3

venv=$bench/venv
if ! "$venv/bin/python" -c 'import toast, healpy, h5py, numpy' 2>/dev/null; then
  echo "== creating $venv (pip install toast healpy h5py numpy)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet toast healpy h5py numpy
fi
py=$venv/bin/python
echo "== TOAST $("$py" -c 'import toast; print(toast.__version__)')"

echo "== building skypipe-sim, -pointing, -calibrate, -mapmake"
cargo build --quiet --release --bin skypipe-sim --bin skypipe-pointing --bin skypipe-calibrate \
  --bin skypipe-mapmake
bin=${CARGO_TARGET_DIR:-target}/release

# One thread everywhere: every figure is per core.
export OMP_NUM_THREADS=1 TOAST_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 RAYON_NUM_THREADS=1

data=$bench/data
run=$bench/run
rm -rf "$data" "$run" "$bench/toast" "$bench"/skypipe-*
{
  echo "observations = $observations"
  echo "obs_duration_s = $obs_s"
  echo "detector_pairs = $pairs"
  echo "sky_nside = $nside"
  echo "fknee_hz = $fknee"
  echo "precession_deg = 7.5"
  echo "precession_period_days = 0.01"
} > "$bench/sim.toml"
echo "== simulating: $(tr '\n' ' ' < "$bench/sim.toml")"
"$bin/skypipe-sim" cmb --size tiny --config "$bench/sim.toml" --out "$data" >/dev/null
list=$data/observations.json

sed -e "s/^nside = .*/nside = $nside/" -e 's/^ordering = .*/ordering = "nested"/' \
  -e 's/^fsync = true/fsync = false/' configs/pointing.toml > "$bench/pointing.toml"
sed -e 's/^fsync = true/fsync = false/' \
  -e "s|^gains = \"fit\"|gains = \"table\"\ngain_table = \"$data/truth/gains.h5\"|" \
  configs/calibrate.toml > "$bench/calibrate.toml"
echo "== skypipe-pointing, skypipe-calibrate (true gains)"
"$bin/skypipe-pointing" --config "$bench/pointing.toml" --observations "$list" --run-dir "$run" \
  >"$bench/pointing.log" 2>&1
"$bin/skypipe-calibrate" --config "$bench/calibrate.toml" --observations "$list" --run-dir "$run" \
  >"$bench/calibrate.log" 2>&1

# skypipe-mapmake in one process, its own run directory reading the shared pointing and
# calibrated files; extra settings ("key = value" lines) replace the shipped defaults.
mapmake() {
  local dir=$1
  shift
  mkdir -p "$dir"
  sed -e 's/^fsync = true/fsync = false/' -e 's/^quicklook_width = .*/quicklook_width = 0/' \
    -e "s/^baseline_s = .*/baseline_s = $baseline_s/" -e "s/^rcond_min = .*/rcond_min = $rcond/" \
    -e "s|^\[mapmake\]|[mapmake]\npointing_dir = \"$run/pointing\"\ncalibrated_dir = \"$run/calibrate\"|" \
    configs/mapmake.toml > "$dir/mapmake.toml"
  local setting
  for setting in "$@"; do
    sed -i "s|^${setting%% =*} = .*|$setting|" "$dir/mapmake.toml"
  done
  /usr/bin/time -f '%U %S %M' -o "$dir/mapmake.time" "$bin/skypipe-mapmake" \
    --config "$dir/mapmake.toml" --observations "$list" --run-dir "$dir" >"$dir/mapmake.log" 2>&1
  local user sys rss
  read -r user sys rss < "$dir/mapmake.time"
  printf '{"user_s": %s, "sys_s": %s, "peak_rss_mb": %s}\n' "$user" "$sys" "$((rss / 1024))" \
    > "$dir/mapmake-cpu.json"
}

echo "== skypipe-mapmake, shipped defaults (two-level preconditioner, tolerance 1e-10)"
mapmake "$bench/skypipe-default"

echo "== TOAST MapMaker, its defaults (convergence 1e-12 on |r|^2/|b|^2, at most 100 iterations)"
mkdir -p "$bench/toast"
TOAST_LOGLEVEL=INFO "$py" benches/mapmake_toast.py toast "$data" "$run" "$bench/toast" \
  "$baseline_s" "$rcond" 1e-12 100 >"$bench/toast.log" 2>&1 || { tail -20 "$bench/toast.log"; exit 1; }
mv "$bench/toast.log" "$bench/toast/toast.log"
reached=$("$py" benches/mapmake_toast.py toast-residual "$bench/toast")

echo "== skypipe-mapmake, TOAST's preconditioner (diagonal) and stopping point (|r|/|b| $reached)"
mapmake "$bench/skypipe-diagonal" "block_baselines = 0" 'coarse_space = "none"' \
  "tolerance = $reached"

echo "== comparison"
"$py" benches/mapmake_toast.py report "$data" "$bench/results.json" \
  "skypipe:skypipe-mapmake defaults:$bench/skypipe-default" \
  "skypipe:skypipe-mapmake diagonal, TOAST's stop:$bench/skypipe-diagonal" \
  "toast:TOAST $("$py" -c 'import toast; print(toast.__version__)') MapMaker:$bench/toast"
