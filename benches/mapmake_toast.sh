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
# that both map-makers see the same calibrated samples, mapmake), TOAST's maps and logs, and
# results.json. benches/mapmake_toast.py loads skypipe's calibrated timestreams and dense
# pointing (pixels, I/Q/U weights) into TOAST observations, so both map-makers use identical
# samples, pointing, flags, detector weights (1/(NET^2 rate)), baseline length, rcond cut.
#
# TOAST runs twice: with its defaults (convergence 1e-12 on |r|^2/|b|^2, i.e. 1e-6 on |r|/|b|,
# at most 100 iterations) and with skypipe's criterion (1e-10 on |r|/|b|, i.e. 1e-20 on
# TOAST's squared ratio, at most TOAST_ITER_MAX iterations).
#
# Knobs (environment): OBSERVATIONS (default 24), OBS_S (seconds per observation, 120),
# PAIRS (detector pairs, 4), NSIDE (sky and map nside, 64), FKNEE_HZ (0.1), BASELINE_S (1.0),
# TOAST_ITER_MAX (500), CARGO_TARGET_DIR as for cargo. Needs GNU time (/usr/bin/time).
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
fknee=${FKNEE_HZ:-0.1}
baseline_s=${BASELINE_S:-1.0}
toast_iter_max=${TOAST_ITER_MAX:-500}
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
rm -rf "$data" "$run" "$bench"/toast-*
printf 'observations = %s\nobs_duration_s = %s\ndetector_pairs = %s\nsky_nside = %s\nfknee_hz = %s\nprecession_deg = 7.5\nprecession_period_days = 0.01\n' \
  "$observations" "$obs_s" "$pairs" "$nside" "$fknee" > "$bench/sim.toml"
echo "== simulating: $(tr '\n' ' ' < "$bench/sim.toml")"
"$bin/skypipe-sim" cmb --size tiny --config "$bench/sim.toml" --out "$data" >/dev/null
list=$data/observations.json

sed -e "s/^nside = .*/nside = $nside/" -e 's/^ordering = .*/ordering = "nested"/' \
  -e 's/^fsync = true/fsync = false/' configs/pointing.toml > "$bench/pointing.toml"
sed -e 's/^fsync = true/fsync = false/' \
  -e "s|^gains = \"fit\"|gains = \"table\"\ngain_table = \"$data/truth/gains.h5\"|" \
  configs/calibrate.toml > "$bench/calibrate.toml"
sed -e 's/^fsync = true/fsync = false/' -e 's/^quicklook_width = .*/quicklook_width = 0/' \
  -e "s/^baseline_s = .*/baseline_s = $baseline_s/" -e "s/^rcond_min = .*/rcond_min = $rcond/" \
  configs/mapmake.toml > "$bench/mapmake.toml"
echo "== skypipe-pointing, skypipe-calibrate (true gains)"
"$bin/skypipe-pointing" --config "$bench/pointing.toml" --observations "$list" --run-dir "$run" \
  >"$bench/pointing.log" 2>&1
"$bin/skypipe-calibrate" --config "$bench/calibrate.toml" --observations "$list" --run-dir "$run" \
  >"$bench/calibrate.log" 2>&1

echo "== skypipe-mapmake (one process)"
/usr/bin/time -f '%U %S %M' -o "$bench/mapmake.time" "$bin/skypipe-mapmake" \
  --config "$bench/mapmake.toml" --observations "$list" --run-dir "$run" >"$bench/mapmake.log" 2>&1
read -r user sys rss < "$bench/mapmake.time"
printf '{"user_s": %s, "sys_s": %s, "peak_rss_mb": %s, "rcond_min": %s}\n' \
  "$user" "$sys" "$((rss / 1024))" "$rcond" > "$run/mapmake-cpu.json"

labels=()
dirs=()
for setting in "default 1e-12 100" "matched 1e-20 $toast_iter_max"; do
  read -r name conv iters <<< "$setting"
  out=$bench/toast-$name
  mkdir -p "$out"
  echo "== TOAST MapMaker, $name convergence ($conv on |r|^2/|b|^2, at most $iters iterations)"
  TOAST_LOGLEVEL=INFO "$py" benches/mapmake_toast.py toast "$data" "$run" "$out" "$baseline_s" \
    "$rcond" "$conv" "$iters" >"$out/toast.log" 2>&1 || { tail -20 "$out/toast.log"; exit 1; }
  labels+=("TOAST $name")
  dirs+=("$out")
done

echo "== comparison"
labels_csv=$(IFS=,; echo "${labels[*]}")
"$py" benches/mapmake_toast.py report "$data" "$run" "$bench/results.json" "${dirs[@]}" \
  --labels "$labels_csv"
