#!/usr/bin/env bash
# calibrate + mapmake with pointing expanded on the fly (`pointing = "expand"`) against the
# same two stages reading dense pointing files written by skypipe-pointing (pointing's own
# time shown apart). Prints wall times (start-up included), the bytes of pointing per
# detector-sample that each path writes and reads, and calibrate's split between expansion
# and the rest (from its per-unit log line). Rounds interleave the two paths; not pass/fail.
#
#   benches/expand_cmb.sh [ROUNDS=3] [WORK_DIR=/tmp]
#
# One process per stage (no mpirun: the comparison is per core). Data: skypipe-sim cmb, tiny
# preset with 4 observations of 600 s, 4 detector pairs at 180.37 Hz (1.7 M detector-samples),
# nside 1024, aberration on, map-making bins only (the destriper is the same in both paths).
# Binaries from ${CARGO_TARGET_DIR:-target}/release (`cargo build --release --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORK=$(mktemp -d "${2:-/tmp}/expand-bench.XXXXXX")
BIN=$PWD/${CARGO_TARGET_DIR:-target}/release
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT

printf 'seed = 5\nobservations = 4\nobs_duration_s = 600.0\ndetector_pairs = 4\n' >"$WORK/sim.toml"
"$BIN/skypipe-sim" cmb --size tiny --config "$WORK/sim.toml" --out "$WORK/data" >/dev/null
LIST=$WORK/data/observations.json
GEOMETRY='nside = 1024
frame = "galactic"
aberration = true
chunk_samples = 65536'
RUN='[run]
fsync = false
progress_interval_s = 60.0'
printf '%s\n[pointing]\nobservations = "%s"\n%s\n' "$RUN" "$LIST" "$GEOMETRY" >"$WORK/p.toml"
printf '%s\n[calibrate]\nobservations = "%s"\n' "$RUN" "$LIST" >"$WORK/c.toml"
printf '%s\n[mapmake]\nobservations = "%s"\ndestripe = false\nquicklook_width = 0\n' "$RUN" "$LIST" >"$WORK/m.toml"
printf '%s\n[calibrate]\nobservations = "%s"\npointing = "expand"\n[calibrate.expand]\n%s\n' \
    "$RUN" "$LIST" "$GEOMETRY" >"$WORK/ce.toml"
printf '%s\n[mapmake]\nobservations = "%s"\ndestripe = false\nquicklook_width = 0\npointing = "expand"\n[mapmake.expand]\n%s\n' \
    "$RUN" "$LIST" "$GEOMETRY" >"$WORK/me.toml"

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null 2>>"$WORK/log"; /usr/bin/python3 -c "print(f'{$(now) - $t0:.2f}')"; }
stage() { timed "$BIN/skypipe-$1" --config "$WORK/$2.toml" --run-dir "$3"; }

for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/dense" "$WORK/expand"
    : >"$WORK/log"
    tp=$(stage pointing p "$WORK/dense")
    tc=$(stage calibrate c "$WORK/dense")
    tm=$(stage mapmake m "$WORK/dense")
    : >"$WORK/log"
    tce=$(stage calibrate ce "$WORK/expand")
    split=$(/usr/bin/python3 -c '
import re, sys
e = u = 0.0
for m in re.finditer(r"pointing expanded in ([0-9.]+) s of the unit.s ([0-9.]+) s", open(sys.argv[1]).read()):
    e += float(m[1]); u += float(m[2])
print(f"{e:.2f} s of {u:.2f} s in units")' "$WORK/log")
    tme=$(stage mapmake me "$WORK/expand")
    same=$(cmp -s "$WORK/dense/mapmake/map_binned.fits" "$WORK/expand/mapmake/map_binned.fits" && echo identical || echo DIFFERENT)
    echo "round $r: dense: pointing ${tp} s, calibrate ${tc} s, mapmake ${tm} s | expand: calibrate ${tce} s (expansion ${split}), mapmake ${tme} s | maps ${same}"
done
/usr/bin/python3 - "$WORK" <<'PY'
import sys, glob, os, h5py
work = sys.argv[1]
samples = 0
for f in glob.glob(f"{work}/data/obs/*.h5"):
    with h5py.File(f) as h:
        samples += sum(h["detectors"][d]["signal"].shape[0] for d in h["detectors"])
size = sum(os.path.getsize(f) for f in glob.glob(f"{work}/dense/pointing/*.h5"))
print(f"{samples} detector-samples; pointing files {size / samples:.1f} bytes per detector-sample "
      "(written by pointing; calibrate reads theta, phi = 16, mapmake pixels, weights = 32: 48 read); "
      "expand reads none (the 8 Hz attitude: ~80 bytes per attitude sample per observation)")
PY
