#!/bin/sh
# Lanczos3 warp of one simulated CCD onto a patch grid: skypipe's warp kernel beside SWarp
# (LANCZOS3) and astropy reproject (reproject_interp, bicubic: it has no Lanczos), on the same
# input and the same output grid, interleaved, one core each. Prints output Mpix/s per core
# (not pass/fail) and the flux of isolated stars through each warp.
#
#   benches/warp_swarp.sh BENCH_DIR [ROUNDS=3] [STEP=32]
#
# Input: a 2048 x 4096 CCD at 0.263"/px (TAN, CD matrix) holding 300 isolated Gaussian stars
# (sigma 1.5 px, fluxes 1e3-1e5, no noise, no sky), written by /usr/bin/python3 + astropy.
# Output grid: a 1800 x 2000 patch at 0.24"/px, rotated by 10 degrees, whose TAN tangent point
# lies 0.5 deg from the CCD's (so the CCD -> patch mapping is not linear), entirely inside the CCD
# so that every output pixel has data. SWarp 2.41 (Debian `swarp`) runs with the peer
# configuration /work/shared/bench/optical-peers/skypipe.swarp (FSCALASTRO_TYPE FIXED,
# NTHREADS 1), given the patch grid through coadd.head; skypipe's driver (cargo bench target
# `warp`, benches/warp.rs) evaluates the mapping with WCSLIB on a STEP-pixel coarse grid and
# interpolates. Every tool is pinned to core 0. Times: SWarp and skypipe = whole-process CPU
# time (user + system, wait4 rusage, including their I/O; skypipe's raw f32 I/O is lighter than
# SWarp's FITS), plus skypipe's kernel-only CPU time; reproject = CPU time of the
# reproject_interp call alone (process_time, imports and I/O excluded). Best round kept.
# Flux: for each star, the sum over a 12 px (patch) radius aperture in the output divided by the
# true flux; median over the stars (reproject's surface-brightness output times the area ratio).
# Needs SWarp (Debian package swarp, binary /usr/bin/SWarp), /usr/bin/python3 with astropy and reproject (Debian python3-reproject), both
# installed by scripts/install-deps.sh test.
set -eu
dir=${1:?usage: $0 BENCH_DIR [ROUNDS] [STEP]}
rounds=${2:-3}
step=${3:-32}
repo=$(cd "$(dirname "$0")/.." && pwd)
peers=${SWARP_CONFIG:-/work/shared/bench/optical-peers/skypipe.swarp}
mkdir -p "$dir"
driver=$(cd "$repo" && cargo bench --bench warp --no-run --message-format=json 2>/dev/null \
  | /usr/bin/python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "warp" and m.get("executable"):
        print(m["executable"])')
[ -x "$driver" ] || { echo "could not build the warp bench driver" >&2; exit 1; }
exec /usr/bin/python3 - "$dir" "$rounds" "$step" "$driver" "$peers" <<'PY'
import os, subprocess, sys
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

root, rounds, step, driver, peers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
W, H, TW, TH = 2048, 4096, 1800, 2000
os.chdir(root)

def tan(crval, crpix, scale_arcsec, rot_deg, shape):
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, shape[0], shape[1]
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = crpix
    s, r = scale_arcsec / 3600.0, np.radians(rot_deg)
    h["CD1_1"], h["CD1_2"] = -s * np.cos(r), s * np.sin(r)
    h["CD2_1"], h["CD2_2"] = s * np.sin(r), s * np.cos(r)
    h["EQUINOX"], h["RADESYS"] = 2000.0, "ICRS"
    return h

ccd_h = tan((150.0, 2.0), (W / 2 + 0.5, H / 2 + 0.5), 0.263, 0.0, (W, H))
ccd_wcs = WCS(ccd_h)
# Patch: tangent point 0.5 deg away; CRPIX set so the patch centre falls on the CCD centre.
patch_h = tan((150.4, 2.3), (0.0, 0.0), 0.24, 10.0, (TW, TH))
cx, cy = WCS(patch_h).wcs_world2pix([[150.0, 2.0]], 1)[0]
patch_h["CRPIX1"] = (TW + 1) / 2 - cx
patch_h["CRPIX2"] = (TH + 1) / 2 - cy
patch_wcs = WCS(patch_h)
corners = patch_wcs.wcs_pix2world([[1, 1], [TW, 1], [1, TH], [TW, TH]], 1)
cc = ccd_wcs.wcs_world2pix(corners, 1)
assert (cc[:, 0] > 4).all() and (cc[:, 0] < W - 4).all() and (cc[:, 1] > 4).all() and (cc[:, 1] < H - 4).all(), cc

# Stars on a jittered grid so that they stay isolated, inside the patch footprint.
rng = np.random.default_rng(18)
gx, gy = np.meshgrid(np.linspace(60, TW - 60, 15), np.linspace(60, TH - 60, 20))
tx = gx.ravel() + rng.uniform(-10, 10, gx.size)
ty = gy.ravel() + rng.uniform(-10, 10, gy.size)
sky = patch_wcs.wcs_pix2world(np.c_[tx + 1, ty + 1], 1)
sx, sy = (ccd_wcs.wcs_world2pix(sky, 1) - 1).T
flux = 10 ** rng.uniform(3, 5, tx.size)
if not os.path.exists("ccd.fits"):
    img = np.zeros((H, W))
    sig = 1.5
    yy, xx = np.mgrid[-10:11, -10:11]
    for x, y, f in zip(sx, sy, flux):
        ix, iy = int(round(x)), int(round(y))
        img[iy - 10:iy + 11, ix - 10:ix + 11] += f / (2 * np.pi * sig**2) * np.exp(
            -((xx + ix - x) ** 2 + (yy + iy - y) ** 2) / (2 * sig**2))
    img = img.astype(np.float32)
    fits.writeto("ccd.weight.fits", np.ones_like(img), ccd_h, overwrite=True)
    img.astype("<f4").tofile("ccd.f32")
    with open("ccd.hdr", "w") as f:
        f.write(ccd_h.tostring(sep="", padding=False))
    with open("patch.hdr", "w") as f:
        f.write(patch_h.tostring(sep="", padding=False))
    with open("coadd.head", "w") as f:  # SWarp's output-grid header (text cards, one a line)
        f.write(patch_h.tostring(sep="\n", padding=False) + "\n")
    fits.writeto("ccd.fits", img, ccd_h, overwrite=True)
img_sum = float(np.fromfile("ccd.f32", dtype="<f4").sum())
area = abs(np.linalg.det(patch_wcs.pixel_scale_matrix) / np.linalg.det(ccd_wcs.pixel_scale_matrix))

def run_cpu(cmd):
    """Runs cmd pinned to core 0; returns (stdout, user + system CPU seconds)."""
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode()[-2000:]}")
    return out.decode(), ru.ru_utime + ru.ru_stime

def star_flux(out, scale=1.0):
    yy, xx = np.mgrid[-12:13, -12:13]
    ap = xx**2 + yy**2 <= 144
    r = []
    for x, y, f in zip(tx, ty, flux):
        ix, iy = int(round(x)), int(round(y))
        cut = out[iy - 12:iy + 13, ix - 12:ix + 13]
        r.append(np.nansum(cut[ap]) * scale / f)
    return float(np.median(r)), float(np.percentile(r, 5)), float(np.percentile(r, 95))

REPROJECT = r'''
import sys, time, numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp
hdu = fits.open("ccd.fits")[0]
target = WCS(fits.Header.fromtextfile("coadd.head"))
t = time.process_time()
out, _ = reproject_interp(hdu, target, shape_out=(%d, %d), order="bicubic")
print(time.process_time() - t)
np.save("reproject.npy", out.astype(np.float32))
''' % (TH, TW)

best = {}
mpix = TW * TH / 1e6
print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start")
print(f"input {W}x{H} CCD, output {TW}x{TH} = {mpix:.2f} Mpix, area ratio {area:.4f}, coarse step {step}")
for rnd in range(rounds):
    _, t = run_cpu(["SWarp", "ccd.fits", "-c", peers, "-IMAGEOUT_NAME", "coadd.fits",
                    "-WEIGHTOUT_NAME", "coadd.weight.fits", "-RESAMPLE_DIR", ".", "-NTHREADS", "1"])
    best["swarp"] = min(best.get("swarp", 1e9), t)
    out, t = run_cpu([driver, "ccd.f32", str(W), str(H), "ccd.hdr", "patch.hdr", str(TW), str(TH), str(step), "skypipe.f32"])
    best["skypipe"] = min(best.get("skypipe", 1e9), t)
    fields = out.split()
    info = dict(zip(fields[::2], fields[1::2]))
    best["skypipe kernel"] = min(best.get("skypipe kernel", 1e9), float(info["kernel_cpu_s"]))
    out, _ = run_cpu(["/usr/bin/python3", "-c", REPROJECT])
    best["reproject"] = min(best.get("reproject", 1e9), float(out.split()[0]))
    print(f"round {rnd + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), flush=True)

sw = fits.getdata("coadd.fits").astype(np.float64)
sk = np.fromfile("skypipe.f32", dtype="<f4").reshape(TH, TW).astype(np.float64)
rp = np.load("reproject.npy").astype(np.float64)
print(f"skypipe coarse-grid interpolation error: {float(info['interp_error_px']):.2e} px (max over probes)")
print(f"{'tool':16} {'CPU s':>7} {'Mpix/s/core':>12} {'vs SWarp':>9}  flux ratio median [5%, 95%]")
for name, arr, scale in (("swarp", sw, 1.0), ("skypipe", sk, 1.0), ("skypipe kernel", None, None), ("reproject", rp, area)):
    t = best[name]
    line = f"{name:16} {t:7.2f} {mpix / t:12.2f} {best['swarp'] / t:9.2f}"
    if arr is not None:
        med, lo, hi = star_flux(arr, scale)
        line += f"  {med:.4f} [{lo:.4f}, {hi:.4f}]"
    print(line)
d = sk - sw
print(f"skypipe - SWarp: max |diff| / max(SWarp) = {np.nanmax(np.abs(d)) / np.nanmax(sw):.2e}")
PY
