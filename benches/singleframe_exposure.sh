#!/bin/sh
# The exposure-wide astrometric step gathered per visit against the HSC structure, a barrier per
# visit (not pass/fail; prints figures).
#
#   cargo build --release --bin skypipe-sim --bin skypipe-singleframe
#   benches/singleframe_exposure.sh BENCH_DIR [RANKS=2]
#
# Data: `skypipe-sim image --size demo --seed 3 --wcs-error 20,0.5,0.01` (6 visits of 8
# 1024x2048 CCDs), made once in BENCH_DIR/data. Both runs use
# `[singleframe.calibration] exposure_wide = true` with the simulated reference catalogue:
#  - gather: one run over every visit; a visit's exposure unit runs after that visit's CCDs
#    only, so the other visits' CCDs keep the ranks busy meanwhile;
#  - barrier: one run per visit, one after the other (every rank waits for the visit's
#    gather and follow-ups before the next visit's CCDs start).
# Figures from each run's run-report.json: makespan (summed over the barrier's runs; start-up
# of the MPI jobs excluded) and utilisation (busy time over ranks x makespan).
# Needs mpirun and /usr/bin/python3.
set -eu
dir=${1:?usage: $0 BENCH_DIR [RANKS]}
ranks=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${SKYPIPE_BIN:-$repo/target/release}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -f "$dir/data/units.json" ]; then
    "$bin/skypipe-sim" image --out "$dir/data" --size demo --seed 3 --wcs-error 20,0.5,0.01
fi
cat > "$dir/exposure.toml" <<TOML
[run]
fsync = false
[singleframe.calibration]
reference = "$dir/data/reference.fits"
exposure_wide = true
TOML
mpi() {
    mpirun --oversubscribe -n "$ranks" "$bin/skypipe-singleframe" --config "$dir/exposure.toml" \
        --input "$1" --run-dir "$2" >"$2.log" 2>&1
}
rm -rf "$dir/gather" "$dir"/barrier-v*
mpi "$dir/data/units.json" "$dir/gather"
visits=$(/usr/bin/python3 -c "import json,sys; print(' '.join(sorted({str(u['visit']) for u in json.load(open(sys.argv[1]))['units']}, key=int)))" "$dir/data/units.json")
for v in $visits; do
    /usr/bin/python3 - "$dir/data/units.json" "$v" "$dir/data/visit-$v.json" <<'PY'
import json, sys
src, visit, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = json.load(open(src))
d["units"] = [u for u in d["units"] if u["visit"] == visit]
json.dump(d, open(out, "w"))
PY
    mpi "$dir/data/visit-$v.json" "$dir/barrier-v$v"
done
/usr/bin/python3 - "$dir" "$ranks" $visits <<'PY'
import json, sys
d, ranks, visits = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def report(run):
    r = json.load(open(f"{d}/{run}/run-report.json"))
    return r["makespan_s"], r["utilisation"] * r["makespan_s"] * r["ranks"], r["ran"]
m, busy, ran = report("gather")
print(f"gather : {ran} units, makespan {m:.2f} s, utilisation {busy / (ranks * m):.1%}")
tm = tb = tr = 0.0
for v in visits:
    m, busy, ran = report(f"barrier-v{v}")
    tm, tb, tr = tm + m, tb + busy, tr + ran
print(f"barrier: {int(tr)} units, makespan {tm:.2f} s (sum of {len(visits)} visits), utilisation {tb / (ranks * tm):.1%}")
PY
