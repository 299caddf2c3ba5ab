#!/bin/sh
# The four multiband phases of every patch of a tract: the engine (each unit starts when its own
# inputs are done: a patch's measurements as soon as its merged detections are, and so on)
# against multiBandDriver's structure, a barrier after each phase (not pass/fail; prints figures).
#
#   cargo build --release --bin skypipe-sim --bin skypipe-singleframe --bin skypipe-coadd \
#       --bin skypipe-multiband
#   benches/multiband_barrier.sh BENCH_DIR [RANKS=2] [SLOW_FACTOR=10] [SLOW_UNITS=3] [COPIES=4]
#
# Data: `skypipe-sim image --size small --seed 5` (4 visits of 4 CCDs of 512x1024, bands g and
# r), calibrated by `skypipe-singleframe` and coadded by `skypipe-coadd` on 0.5° tracts
# (`rings = 359`) with patches of 400 + 2 x 20 pixels of 0.2″, so one tract holds ~20 patches
# in 2 bands; made once in BENCH_DIR.
#
# 1. One real `skypipe-multiband` run under mpirun on RANKS ranks: makespan and utilisation
#    from its run-report.json, and each unit's wall time from its ledger.
# 2. Both schedules replayed with those unit times (list scheduling as the engine's queue: a
#    free rank takes the deepest ready unit, then the first in plan order; dispatch cost
#    neglected) on RANKS and on more ranks:
#     - engine: merge-detections(patch) → measure(patch, band) → merge-measurements(patch) →
#       forced(patch, band) → catalog(patch) → catalog(tract), each after its own inputs only;
#     - barrier: every unit of a phase, then the next phase (one pool map per phase).
#    "Slow patch+bands": the measure and forced units of SLOW_UNITS patch+bands (every
#    seventh patch's first band, in plan order) take SLOW_FACTOR times their measured time (a
#    deep, crowded or huge patch). The replay of the engine on RANKS without slow units is
#    printed beside the real run to show how close the model is. The replay is repeated with
#    the tract's units copied COPIES times (a tract COPIES times larger, still with SLOW_UNITS
#    slow patch+bands): the work then outweighs the slowest patch's chain of units.
# Needs mpirun and /usr/bin/python3.
set -eu
dir=${1:?usage: $0 BENCH_DIR [RANKS] [SLOW_FACTOR] [SLOW_UNITS]}
ranks=${2:-2}
slow=${3:-10}
nslow=${4:-3}
copies=${5:-4}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${SKYPIPE_BIN:-$repo/target/release}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
skymap='[skymap]
rings = 359
pixel_scale = 0.2
patch_size = 400
border = 20'
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
if [ ! -d "$dir/sf/coadd" ]; then
    printf '[run]\nfsync = false\n%s\n' "$(echo "$skymap" | sed 's/^\[skymap\]/[coadd.skymap]/')" \
        >"$dir/coadd.toml"
    mpirun --oversubscribe -n "$ranks" "$bin/skypipe-coadd" --config "$dir/coadd.toml" \
        --run-dir "$dir/sf" >"$dir/coadd.log" 2>&1
fi
printf '[run]\nfsync = false\n%s\n' "$(echo "$skymap" | sed 's/^\[skymap\]/[multiband.skymap]/')" \
    >"$dir/multiband.toml"
rm -rf "$dir/engine"
mpirun --oversubscribe -n "$ranks" "$bin/skypipe-multiband" --config "$dir/multiband.toml" \
    --registry "$dir/sf/registry.sqlite3" --run-dir "$dir/engine" >"$dir/engine.log" 2>&1
/usr/bin/python3 - "$dir" "$ranks" "$slow" "$nslow" "$copies" <<'PY'
import heapq, json, sys
d, ranks, slow, nslow = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
copies = int(sys.argv[5])
rep = json.load(open(f"{d}/engine/run-report.json"))
measured = {}
for line in open(f"{d}/engine/ledger/multiband.jsonl"):
    r = json.loads(line)
    assert r["outcome"] == "done", r
    measured[r["unit"]] = r["elapsed_s"]
def parse(u):
    """(patch or None, band or None, step) of a unit ID with its copy number after '#'."""
    uid, copy = u.split("#")
    kv = dict(p.split("=", 1) for p in uid.split(",") if "=" in p)
    parts = uid.split(",")
    patch = None
    if "patch=" in uid:
        i = next(k for k, p in enumerate(parts) if p.startswith("patch="))
        patch = (copy, parts[0], parts[i][6:], parts[i + 1])
    return patch, kv.get("band"), kv["step"]
PHASES = ["merge-detections", "measure", "merge-measurements", "forced", "catalog"]
def phase(u):
    patch, band, step = parse(u)
    return 5 if patch is None else PHASES.index(step)
def table(units, ranks_list):
    """Replays of the engine and of the barrier schedule over `units` (ID -> seconds)."""
    # Plan order as Multiband::plan lists the units: per patch its five phases, then the tracts.
    patches = sorted({parse(u)[0] for u in units if parse(u)[0] is not None})
    by_patch = {p: sorted((u for u in units if parse(u)[0] == p), key=lambda u: (phase(u), u)) for p in patches}
    order = [u for p in patches for u in by_patch[p]] + [u for u in units if parse(u)[0] is None]
    position = {u: k for k, u in enumerate(order)}
    deps = {}
    for p in patches:
        us = by_patch[p]
        for u in us:
            k = phase(u)
            deps[u] = {v for v in us if phase(v) == k - 1} if k > 0 else set()
    for u in units:
        if parse(u)[0] is None:
            deps[u] = {v for v in units if parse(v)[0] is not None and phase(v) == 4}
    firsts = [by_patch[p] for p in patches][::7][:nslow]
    slow_pb = {(parse(us[1])[0], parse(us[1])[1]) for us in firsts}
    def cost(u, factor):
        patch, band, step = parse(u)
        heavy = step in ("measure", "forced") and (patch, band) in slow_pb
        return units[u] * (factor if heavy else 1.0)
    def replay(n, factor, barrier):
        """Makespan and utilisation of list scheduling on n ranks."""
        if barrier:
            t, busy = 0.0, 0.0
            for k in range(6):
                free = [t] * n
                for u in (u for u in order if phase(u) == k):
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
            ready = [u for u in pending if all(p in finish and finish[p] <= now for p in deps[u])]
            if not ready:
                later = min(f for f in finish.values() if f > now)
                heapq.heappush(free, (later, k))
                continue
            u = max(ready, key=lambda v: (phase(v), -position[v]))
            pending.remove(u)
            c = cost(u, factor)
            finish[u] = now + c
            busy += c
            heapq.heappush(free, (now + c, k))
        m = max(finish.values())
        return m, busy / (n * m)
    print(f"{len(patches)} patches, {len(units)} units; summed unit time {sum(units.values()):.2f} s; "
          f"slow patch+bands: {sorted(slow_pb)}")
    m, u = replay(ranks, 1.0, False)
    print(f"replayed engine on {ranks} ranks, measured times: makespan {m:.2f} s, utilisation {u:.1%}")
    print("| Ranks | Slow patch+bands | Engine makespan, s | Engine utilisation | Barrier makespan, s | Barrier utilisation |")
    print("|---|---|---|---|---|---|")
    for n in ranks_list:
        for factor in (1.0, slow):
            em, eu = replay(n, factor, False)
            bm, bu = replay(n, factor, True)
            label = "none" if factor == 1.0 else f"{len(slow_pb)} ×{factor:g}"
            print(f"| {n} | {label} | {em:.2f} | {eu:.1%} | {bm:.2f} | {bu:.1%} |")

print(f"real engine run on {ranks} ranks: makespan {rep['makespan_s']:.2f} s, "
      f"utilisation {rep['utilisation']:.1%}")
for c in sorted({1, copies}):
    units = {f"{u}#{k}": t for u, t in measured.items() for k in range(c)}
    print(f"\n{'the tract' if c == 1 else f'the tract copied {c} times'}:")
    table(units, sorted({ranks, 4, 8, 16}))
PY
