#!/bin/sh
# Warps + coadds + detections of every patch of a tract: the engine (a patch's coadd starts as
# soon as that patch's warps are done) against the HSC structure, a barrier between the warp,
# coadd and detection phases (not pass/fail; prints figures).
#
#   cargo build --release --bin skypipe-sim --bin skypipe-singleframe --bin skypipe-coadd
#   benches/coadd_barrier.sh BENCH_DIR [RANKS=2] [SLOW_FACTOR=8]
#
# Data: `skypipe-sim image --size small --seed 5` (4 visits of 4 CCDs of 512x1024, bands g and
# r), calibrated by `skypipe-singleframe`, made once in BENCH_DIR/sf. Sky map: 0.5° tracts
# (`rings = 359`), patches of 400 + 2 x 20 pixels of 0.2″, so the field spans one tract's
# ~20 patches and ~100 warps.
#
# 1. One real `skypipe-coadd` run under mpirun on RANKS ranks: makespan and utilisation from
#    its run-report.json, and each unit's wall time from its ledger.
# 2. Both schedules replayed with those unit times (list scheduling: a free rank takes the
#    first ready unit in plan order, dispatch cost neglected) on RANKS and on more ranks:
#     - engine: a coadd is ready when its patch's warps in its band are done, a detection
#       when its coadd is;
#     - barrier: every warp, then every coadd, then every detection (one pool map each).
#    "Slow CCDs": the warps of CCD 0 of every visit take SLOW_FACTOR times their measured time
#    (a CCD on a slow disk or with a costly WCS), so a tail of slow warps shows. The replay of
#    the engine schedule on RANKS without slow CCDs is printed beside the real run to show how
#    close the model is.
# Needs mpirun, sqlite3 and /usr/bin/python3.
set -eu
dir=${1:?usage: $0 BENCH_DIR [RANKS] [SLOW_FACTOR]}
ranks=${2:-2}
slow=${3:-8}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${SKYPIPE_BIN:-$repo/target/release}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -f "$dir/data/units.json" ]; then
    "$bin/skypipe-sim" image --out "$dir/data" --size small --seed 5 >"$dir/sim.log" 2>&1
fi
if [ ! -f "$dir/sf/registry.sqlite3" ]; then
    cat > "$dir/singleframe.toml" <<TOML
[run]
fsync = false
[singleframe.calibration]
reference = "$dir/data/reference.fits"
TOML
    mpirun --oversubscribe -n "$ranks" "$bin/skypipe-singleframe" \
        --config "$dir/singleframe.toml" --input "$dir/data/units.json" --run-dir "$dir/sf" \
        >"$dir/sf.log" 2>&1
fi
cat > "$dir/coadd.toml" <<TOML
[run]
fsync = false
[coadd.skymap]
rings = 359
pixel_scale = 0.2
patch_size = 400
border = 20
TOML
rm -rf "$dir/engine"
mpirun --oversubscribe -n "$ranks" "$bin/skypipe-coadd" --config "$dir/coadd.toml" \
    --registry "$dir/sf/registry.sqlite3" --run-dir "$dir/engine" >"$dir/engine.log" 2>&1
sqlite3 "$dir/sf/registry.sqlite3" "SELECT DISTINCT visit, band FROM ccd" >"$dir/bands.txt"
/usr/bin/python3 - "$dir" "$ranks" "$slow" <<'PY'
import heapq, json, sys
d, ranks, slow = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
band_of = {}
for line in open(f"{d}/bands.txt"):
    v, b = line.strip().split("|")
    band_of[int(v)] = b
rep = json.load(open(f"{d}/engine/run-report.json"))
units = {}
for line in open(f"{d}/engine/ledger/coadd.jsonl"):
    r = json.loads(line)
    assert r["outcome"] == "done", r
    units[r["unit"]] = r["elapsed_s"]
def parse(u):
    tract = u.split(",")[0].split("=")[1]
    rest = u.split(",patch=")[1].split(",")
    x, y, kv = rest[0], rest[1], dict(p.split("=") for p in rest[2:])
    return (int(tract), int(x), int(y)), kv
warps, coadds, detects = [], [], []
for u in units:
    patch, kv = parse(u)
    if "visit" in kv:
        warps.append((patch, band_of[int(kv["visit"])], int(kv["visit"]), int(kv["ccd"]), u))
    elif "step" in kv:
        detects.append((patch, kv["band"], u))
    else:
        coadds.append((patch, kv["band"], u))
warps.sort(); coadds.sort(); detects.sort()
def cost(u, factor):
    patch, kv = parse(u)
    return units[u] * (factor if kv.get("ccd") == "0" else 1.0)
def replay(n, factor, barrier):
    """Makespan and utilisation of list scheduling on n ranks."""
    # Plan order: warps, then (coadd, detect) per patch and band, as Coadd::plan lists them.
    order = [w[4] for w in warps]
    deps = {}
    for patch, band, u in coadds:
        deps[u] = {w[4] for w in warps if w[0] == patch and w[1] == band}
        order.append(u)
        det = next(x[2] for x in detects if x[0] == patch and x[1] == band)
        deps[det] = {u}
        order.append(det)
    if barrier:
        phases = [[w[4] for w in warps], [c[2] for c in coadds], [x[2] for x in detects]]
        t, busy = 0.0, 0.0
        for phase in phases:
            free = [t] * n
            for u in phase:
                s = heapq.heappop(free)
                c = cost(u, factor)
                busy += c
                heapq.heappush(free, s + c)
            t = max(free)
        return t, busy / (n * t)
    finish, pending, free = {}, list(order), [(0.0, k) for k in range(n)]
    heapq.heapify(free)
    busy = 0.0
    while pending:
        now, k = heapq.heappop(free)
        ready = [u for u in pending if all(p in finish and finish[p] <= now for p in deps.get(u, ()))]
        if not ready:
            # Wait for the next unit to finish.
            later = min(f for f in finish.values() if f > now)
            heapq.heappush(free, (later, k))
            continue
        u = ready[0]
        pending.remove(u)
        c = cost(u, factor)
        finish[u] = now + c
        busy += c
        heapq.heappush(free, (now + c, k))
    m = max(finish.values())
    return m, busy / (n * m)
print(f"{len(warps)} warps, {len(coadds)} coadds, {len(detects)} detections; "
      f"summed unit time {sum(units.values()):.2f} s")
print(f"real engine run on {ranks} ranks: makespan {rep['makespan_s']:.2f} s, "
      f"utilisation {rep['utilisation']:.1%}")
m, u = replay(ranks, 1.0, False)
print(f"replayed engine on {ranks} ranks, measured times: makespan {m:.2f} s, utilisation {u:.1%}")
print("| Ranks | Slow CCDs | Engine makespan, s | Engine utilisation | Barrier makespan, s | Barrier utilisation |")
print("|---|---|---|---|---|---|")
for n in sorted({ranks, 4, 8, 16}):
    for factor in (1.0, slow):
        em, eu = replay(n, factor, False)
        bm, bu = replay(n, factor, True)
        label = "none" if factor == 1.0 else f"CCD 0 ×{factor:g}"
        print(f"| {n} | {label} | {em:.2f} | {eu:.1%} | {bm:.2f} | {bu:.1%} |")
PY
