#!/usr/bin/env bash
# Whole-run throughput of skypipe-pointing and skypipe-calibrate against the disk's own speed,
# measured the same way in the same run: durable writes (fdatasync) and reads of data not in the
# page cache (dropped per file with `dd iflag=nocache`). Not pass/fail: prints figures.
#
#   benches/cmb_throughput.sh [OBSERVATIONS=200] [RANKS=2] [WORK_DIR=/tmp]
#
# Binaries from ${CARGO_TARGET_DIR:-target}/release (build with `cargo build --release --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
OBS=${1:-200}
RANKS=${2:-2}
WORK=$(mktemp -d "${3:-/tmp}/cmb-bench.XXXXXX")
BIN=${CARGO_TARGET_DIR:-target}/release
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
trap 'rm -rf "$WORK"' EXIT

uncache() { for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done; }
bytes() { du -cb "$@" | tail -1 | cut -f1; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
now() { date +%s.%N; }

echo "== simulating $OBS observations (bench size) in $WORK"
"$BIN/skypipe-sim" cmb --size bench --observations "$OBS" --out "$WORK/data"
sync

echo "== disk: 1 GiB sequential durable write (fdatasync), then cold read"
t0=$(now); dd if=/dev/zero of="$WORK/disk.bin" bs=4M count=256 conv=fdatasync status=none; t1=$(now)
disk_w=$(mbps $((1 << 30)) "$(echo "$t1 - $t0" | bc -l)")
uncache "$WORK/disk.bin"
t0=$(now); dd if="$WORK/disk.bin" of=/dev/null bs=4M status=none; t1=$(now)
disk_r=$(mbps $((1 << 30)) "$(echo "$t1 - $t0" | bc -l)")
rm -f "$WORK/disk.bin"
echo "disk write ${disk_w} MB/s, cold read ${disk_r} MB/s"

cat > "$WORK/p.toml" <<TOML
[run]
fsync = true
progress_interval_s = 60.0
[pointing]
observations = "$WORK/data/observations.json"
nside = 2048
TOML
cat > "$WORK/c.toml" <<TOML
[run]
fsync = true
progress_interval_s = 60.0
[calibrate]
observations = "$WORK/data/observations.json"
TOML

run_stage() { # stage config
    local t0 t1
    t0=$(now)
    mpirun --oversubscribe --bind-to none -n "$RANKS" "$BIN/skypipe-$1" --config "$2" --run-dir "$WORK/run" >/dev/null 2>"$WORK/$1.log"
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}

uncache "$WORK"/data/obs/*.h5
secs=$(run_stage pointing "$WORK/p.toml")
in_b=$(bytes "$WORK"/data/obs/*.h5)
out_b=$(bytes "$WORK"/run/pointing/*.h5)
samples=$(python3 -c "import json; l=json.load(open('$WORK/data/observations.json')); print(sum(o['samples'] for o in l['observations']) * 8)")
echo "pointing: ${secs}s on $RANKS ranks; read $((in_b / 1000000)) MB, wrote $((out_b / 1000000)) MB;" \
     "write rate $(mbps "$out_b" "$secs") MB/s (disk ${disk_w}); $(awk -v s="$secs" -v n="$samples" -v r="$RANKS" 'BEGIN { printf "%.1f", s * r / n * 1e9 }') ns per detector-sample per rank"

uncache "$WORK"/data/obs/*.h5 "$WORK"/run/pointing/*.h5
secs=$(run_stage calibrate "$WORK/c.toml")
# Calibrate reads the raw timestreams and theta/phi of the pointing (not pixels or weights).
raw_b=$(bytes "$WORK"/data/obs/*.h5)
ang_b=$(awk -v n="$samples" 'BEGIN { printf "%d", n * 16 }')
cal_b=$(bytes "$WORK"/run/calibrate/*.h5)
echo "calibrate: ${secs}s on $RANKS ranks; read $(((raw_b + ang_b) / 1000000)) MB, wrote $((cal_b / 1000000)) MB;" \
     "read rate $(mbps $((raw_b + ang_b)) "$secs") MB/s (disk cold read ${disk_r}), write rate $(mbps "$cal_b" "$secs") MB/s (disk ${disk_w})"

# The same calibrate run again with every input in the page cache: CPU-bound figures.
cat "$WORK"/data/obs/*.h5 "$WORK"/run/pointing/*.h5 >/dev/null
rm -rf "$WORK/run/calibrate" "$WORK/run/ledger/calibrate".*
/usr/bin/time -f "%e %U %S" -o "$WORK/time.txt" \
    mpirun --oversubscribe --bind-to none -n "$RANKS" "$BIN/skypipe-calibrate" --config "$WORK/c.toml" --run-dir "$WORK/run" >/dev/null 2>"$WORK/calibrate-warm.log"
read -r wall user sys < "$WORK/time.txt"
echo "calibrate from the page cache: ${wall}s on $RANKS ranks;" \
     "$(awk -v s="$wall" -v n="$samples" -v r="$RANKS" 'BEGIN { printf "%.1f", s * r / n * 1e9 }') ns per detector-sample per rank (wall),"\
     "$(awk -v u="$user" -v n="$samples" 'BEGIN { printf "%.1f", u / n * 1e9 }') ns user CPU per detector-sample"
