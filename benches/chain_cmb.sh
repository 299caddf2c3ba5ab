#!/usr/bin/env bash
# The CMB chain (pointing -> calibrate -> mapmake) on observations of skewed lengths: three
# separate jobs (one stage after another, each with its own tail) against one chain job
# (skypipe-run, one graph). Prints makespan and utilisation of both; not pass/fail.
#
#   benches/chain_cmb.sh [RANKS=2] [WORK_DIR=/tmp]
#
# Observation lengths: 24 observations in four length classes (1 x 1920 s, 3 x 960 s,
# 8 x 240 s, 12 x 120 s), simulated as four data sets with one seed and merged into one list in
# a shuffled order (the list's observation numbers are the units). Map-making bins only
# (destripe = false): the destriper's all-rank iterations are balanced by construction and
# would hide the stage tails this compares.
# Utilisation = busy seconds of all ranks / (ranks x wall seconds of the whole run), the three
# jobs' wall time summed (start-up excluded in both).
# Binaries from ${CARGO_TARGET_DIR:-target}/release (build with `cargo build --release --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS=${1:-2}
WORK=$(mktemp -d "${2:-/tmp}/chain-bench.XXXXXX")
BIN=$PWD/${CARGO_TARGET_DIR:-target}/release
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT

echo "== simulating 24 observations of skewed lengths in $WORK"
k=0
for class in "1 1920" "3 960" "8 240" "12 120"; do
    set -- $class
    printf 'seed = 7\nobservations = %d\nobs_duration_s = %s\ndetector_pairs = 4\n' "$1" "$2" >"$WORK/sim$k.toml"
    "$BIN/skypipe-sim" cmb --size tiny --config "$WORK/sim$k.toml" --out "$WORK/set$k" >/dev/null
    k=$((k + 1))
done
/usr/bin/python3 - "$WORK" <<'PY'
import json, random, sys, os
work = sys.argv[1]
entries = []
for k in range(4):
    d = f"{work}/set{k}"
    lst = json.load(open(f"{d}/observations.json"))
    for o in lst["observations"]:
        entries.append({"file": os.path.join(d, o["file"]), "samples": o["samples"]})
random.Random(3).shuffle(entries)
for i, e in enumerate(entries):
    e["obs"] = i
json.dump({"format": "skypipe-cmb-observations/1",
           "focal_plane": f"{work}/set0/focalplane.h5",
           "observations": entries}, open(f"{work}/observations.json", "w"), indent=1)
PY

LIST=$WORK/observations.json
POINTING="observations = \"$LIST\"
nside = 256
frame = \"galactic\""
CALIBRATE="observations = \"$LIST\""
MAPMAKE="observations = \"$LIST\"
destripe = false
quicklook_width = 400"
RUN='[run]
fsync = false
progress_interval_s = 60.0'
printf '%s\n[pointing]\n%s\n' "$RUN" "$POINTING" >"$WORK/p.toml"
printf '%s\n[calibrate]\n%s\n' "$RUN" "$CALIBRATE" >"$WORK/c.toml"
printf '%s\n[mapmake]\n%s\n' "$RUN" "$MAPMAKE" >"$WORK/m.toml"
printf '%s\n[chain]\nstages = ["pointing", "calibrate", "mapmake"]\n[pointing]\n%s\n[calibrate]\n%s\n[mapmake]\n%s\n' \
    "$RUN" "$POINTING" "$CALIBRATE" "$MAPMAKE" >"$WORK/chain.toml"

mpi() { mpirun --oversubscribe --bind-to none -n "$RANKS" "$@"; }
# busy seconds and makespan of a run report
figures() { /usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(sum(x["busy_s"] for x in r["per_rank"]), r["makespan_s"])' "$1"; }

now() { date +%s.%N; }
echo "== three jobs"
busy=0; span=0
t0=$(now)
for stage in pointing calibrate mapmake; do
    mpi "$BIN/skypipe-$stage" --config "$WORK/${stage:0:1}.toml" --run-dir "$WORK/separate" >/dev/null 2>"$WORK/$stage.log"
    read -r b m < <(figures "$WORK/separate/run-report.json")
    echo "$stage: makespan ${m} s, busy ${b} s"
    busy=$(echo "$busy + $b" | bc -l); span=$(echo "$span + $m" | bc -l)
done
sep_wall=$(echo "$(now) - $t0" | bc -l)
sep_util=$(echo "$busy / ($RANKS * $span)" | bc -l)

echo "== one chain job"
t0=$(now)
mpi "$BIN/skypipe-run" --config "$WORK/chain.toml" --run-dir "$WORK/chain" >/dev/null 2>"$WORK/chain.log"
chain_wall=$(echo "$(now) - $t0" | bc -l)
read -r cb cm < <(figures "$WORK/chain/run-report.json")
chain_util=$(echo "$cb / ($RANKS * $cm)" | bc -l)

printf '\n| run | ranks | makespan (s) | busy (s) | utilisation | wall incl. start-up (s) |\n|---|---|---|---|---|---|\n'
printf '| three jobs | %d | %.2f | %.2f | %.3f | %.2f |\n' "$RANKS" "$span" "$busy" "$sep_util" "$sep_wall"
printf '| one chain job | %d | %.2f | %.2f | %.3f | %.2f |\n' "$RANKS" "$cm" "$cb" "$chain_util" "$chain_wall"
