#!/bin/sh
# skypipe-singleframe --unit beside SExtractor on the same simulated CCDs, interleaved, CPU time
# per CCD (not pass/fail; prints figures).
#
#   cargo build --release --bin skypipe-sim --bin skypipe-singleframe
#   benches/optical_sextractor.sh BENCH_DIR [NCCD=16] [ROUNDS=3]
#
# Two data sets, made once in BENCH_DIR by skypipe-sim: `survey` (--size demo, 1024x2048 CCDs,
# ~1,500 objects each) and `crowded` (--size crowded, ~20,000 objects per CCD). For each of the
# first NCCD CCDs of each set (4 for crowded), ROUNDS rounds of: SExtractor 2.25 (Debian
# `source-extractor`, one thread, the configuration in benches/optical_sextractor/ with
# DETECT_THRESH 0.883 = 5 sigma on its filtered image, skypipe's threshold of 5) on the
# calibrated image (bias, flat and gain applied outside the timing, e-, sky kept), then
# `skypipe-singleframe --unit` on the raw CCD with configs/singleframe.toml (fsync on), both
# pinned to core 0. CPU time = user + system time of the process (wait4 rusage); the best round
# per CCD is kept. skypipe's own step split comes from its debug log (`steps (cpu s): ...`).
# Completeness (truth S/N >= 10) and purity of both catalogues against the simulator's truth,
# matching within 2 pixels.
# SKYPIPE_BIN (default target/release) and SINGLEFRAME_CONFIG (default configs/singleframe.toml)
# choose the binaries and configuration, e.g. to measure an older build beside a newer one.
# SINGLEFRAME_CALIBRATE=1 adds `[singleframe.calibration] reference = <set>/reference.fits` to
# that configuration (astrometric and photometric calibration; its CPU share is printed).
# Needs source-extractor and /usr/bin/python3 with astropy (Debian python3-astropy).
set -eu
dir=${1:?usage: $0 BENCH_DIR [NCCD] [ROUNDS]}
nccd=${2:-16}
rounds=${3:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${SKYPIPE_BIN:-$repo/target/release}
config=${SINGLEFRAME_CONFIG:-$repo/configs/singleframe.toml}
conf=$repo/benches/optical_sextractor
mkdir -p "$dir"
for set in survey crowded; do
  size=demo
  [ "$set" = crowded ] && size=crowded
  [ -f "$dir/$set/units.json" ] || "$bin/skypipe-sim" image --size "$size" --out "$dir/$set"
done
exec /usr/bin/python3 - "$dir" "$nccd" "$rounds" "$bin" "$conf" "$config" "${SINGLEFRAME_CALIBRATE:-0}" <<'PY'
import json, os, re, statistics, subprocess, sys
import numpy as np
from astropy.io import fits

root, nccd, rounds, bin_dir, conf, base_config, calibrate = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7], sys.argv[7] == "1")

def cpu_of(cmd, env=None):
    """Runs cmd pinned to core 0; returns (user + system CPU seconds, stderr)."""
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}): {err[-2000:]}")
    return ru.ru_utime + ru.ru_stime, err

def calibrated(base, u, out):
    """(raw - bias) / flat * gain, header kept: the pixels skypipe's ISR makes, for SExtractor."""
    if os.path.exists(out):
        return
    raw = fits.open(os.path.join(base, u["raw"]))[0]
    bias = fits.getdata(os.path.join(base, u["bias"]))
    flat = fits.getdata(os.path.join(base, u["flat"]))
    cal = ((raw.data.astype(np.float64) - bias) / flat * raw.header["GAIN"]).astype(np.float32)
    fits.writeto(out + ".tmp", cal, raw.header, overwrite=True)
    os.replace(out + ".tmp", out)  # a run cut short leaves no truncated image behind

def score(x, y, truth):
    tx, ty, snr = truth["X"], truth["Y"], truth["SNR"]
    d2 = (x[:, None] - tx[None, :]) ** 2 + (y[:, None] - ty[None, :]) ** 2
    near = d2 <= 4.0
    bright = snr >= 10
    return near[:, bright].any(axis=0).sum(), bright.sum(), near.any(axis=1).sum(), len(x)

core = ("background", "psf", "background2", "detection", "measurement")
env = dict(os.environ, RUST_LOG="skypipe_optical=debug")
print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start")
for set_name in ("survey", "crowded"):
    base = os.path.join(root, set_name)
    units = json.load(open(os.path.join(base, "units.json")))["units"]
    units = units[: (nccd if set_name == "survey" else min(nccd, 4))]
    sf_config = base_config
    if calibrate:
        sf_config = os.path.join(root, f"singleframe-calibrate-{set_name}.toml")
        table = "[singleframe.calibration]\n"
        text = open(base_config).read()
        if table not in text:
            text += "\n" + table
        reference = json.dumps(os.path.abspath(os.path.join(base, "reference.fits")))
        with open(sf_config, "w") as f:
            f.write(text.replace(table, f"{table}reference = {reference}\n", 1))
    sexdir = os.path.join(root, "sex", set_name)
    os.makedirs(sexdir, exist_ok=True)
    best = {}
    for u in units:
        calibrated(base, u, os.path.join(sexdir, f"v{u['visit']:04d}-c{u['ccd']:02d}.fits"))
    for r in range(rounds):
        for u in units:
            key = (u["visit"], u["ccd"])
            img = os.path.join(sexdir, f"v{u['visit']:04d}-c{u['ccd']:02d}.fits")
            cat = img.replace(".fits", ".cat")
            t_sex, _ = cpu_of(["source-extractor", img, "-c", f"{conf}/skypipe.sex",
                               "-PARAMETERS_NAME", f"{conf}/skypipe.param",
                               "-FILTER_NAME", f"{conf}/gauss_4.0_7x7.conv",
                               "-DETECT_THRESH", "0.883", "-ANALYSIS_THRESH", "0.883",
                               "-CATALOG_NAME", cat])
            t_sky, err = cpu_of([f"{bin_dir}/skypipe-singleframe", "--config", sf_config,
                                 "--input", os.path.join(base, "units.json"),
                                 "--run-dir", os.path.join(root, "run", set_name),
                                 "--unit", f"visit={u['visit']},ccd={u['ccd']}"], env)
            m = re.search(r"steps \(cpu s\): ([^\n]*?)(?: visit=|\n|$)", re.sub(r"\x1b\[[0-9;]*m", "", err))
            steps = dict((k, float(v)) for k, v in (kv.split("=") for kv in m.group(1).split())) if m else {}
            old = best.get(key)
            best[key] = (min(old[0], t_sex) if old else t_sex,
                         (t_sky, steps) if not old or t_sky < old[1][0] else old[1])
    sex = [b[0] for b in best.values()]
    sky = [b[1][0] for b in best.values()]
    split = {k: statistics.mean(b[1][1].get(k, 0.0) for b in best.values())
             for k in next(iter(best.values()))[1][1]}
    print(f"\n{set_name}: {len(units)} CCDs of 1024x2048, best of {rounds} interleaved rounds, CPU s per CCD")
    print(f"  SExtractor                : mean {statistics.mean(sex):.3f}  median {statistics.median(sex):.3f}")
    print(f"  skypipe-singleframe --unit: mean {statistics.mean(sky):.3f}  median {statistics.median(sky):.3f}"
          f"  ratio skypipe/SExtractor {sum(sky) / sum(sex):.2f}")
    bdm = sum(split.get(k, 0.0) for k in core)
    print(f"  skypipe background+detection+measurement ({'+'.join(core)}): {bdm:.3f}"
          f"  ratio to SExtractor {bdm / statistics.mean(sex):.2f}")
    print("  skypipe steps (mean CPU s): " + "  ".join(f"{k} {v:.4f}" for k, v in split.items()))
    if "calibration" in split:
        print(f"  calibration: {split['calibration']:.4f} CPU s per CCD, "
              f"{split['calibration'] / statistics.mean(sky):.1%} of skypipe's CPU time")
    tot = np.zeros((2, 4), dtype=int)
    for u in units:
        truth = fits.getdata(os.path.join(base, f"truth/v{u['visit']:04d}/c{u['ccd']:02d}.fits"), "OBJECTS")
        s = fits.getdata(os.path.join(sexdir, f"v{u['visit']:04d}-c{u['ccd']:02d}.cat"), 1)
        k = fits.getdata(os.path.join(root, "run", set_name,
                                      f"singleframe/src/v{u['visit']:04d}/c{u['ccd']:02d}.fits"), "SOURCES")
        tot[0] += score(s["X_IMAGE"], s["Y_IMAGE"], truth)
        tot[1] += score(k["X"], k["Y"], truth)
    for name, t in zip(("SExtractor", "skypipe"), tot):
        print(f"  {name}: {t[3]} sources, completeness (S/N >= 10) {t[0] / t[1]:.4f} of {t[1]}, purity {t[2] / t[3]:.4f}")
PY
