"""Checks of a skypipe-coadd run with astropy (run by tests/coadd.rs).

usage: check.py DATA_DIR RUN_DIR

Prints `key=value` lines:
- coadds: coadd files opened; wcs_diff_arcsec: largest distance between the catalogue's RA/DEC
  and astropy's WCS of the coadd at the catalogue's X/Y;
- flux_n, flux_max_dev: isolated bright stars measured in a circular aperture in every input
  calexp and in the coadd; deviation of the coadd flux from the weighted mean of the inputs'
  (each scaled to the common zero point with its INSCLn, weighted with its INWGTn);
- png: quicklooks that are PNG files of the coadd's size.
"""
import glob
import os
import sys

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

data, run = sys.argv[1], sys.argv[2]
R = 12.0  # aperture radius, pixels (4 × the largest simulated FWHM)
NO_DATA, SAT, BAD, CLIPPED = 256, 1, 2, 512


def aperture(img, x, y):
    """Sum of the pixels whose centres lie within R of (x, y) (0-based), or None near an edge."""
    h, w = img.shape
    if x < R + 2 or y < R + 2 or x > w - R - 3 or y > h - R - 3:
        return None, None
    yy, xx = np.mgrid[0:h, 0:w]
    sel = (xx - x) ** 2 + (yy - y) ** 2 <= R * R
    return img[sel].sum(), sel


coadds = sorted(glob.glob(os.path.join(run, "coadd/coadd/*/*/*.fits")))
wcs_diff = 0.0
devs = []
png = 0
for path in coadds:
    with fits.open(path) as f:
        hdr = f[0].header
        img = f["IMAGE"].data.astype(float)
        msk = f["MASK"].data
        nin = f["NINPUT"].data
        wcs = WCS(f["IMAGE"].header)
    band = hdr["BAND"]
    cat_path = path.replace("/coadd/coadd/", "/coadd/src/")
    with fits.open(cat_path) as c:
        s = c["SOURCES"].data
        if len(s):
            ra, dec = wcs.all_pix2world(s["X"] - 1.0, s["Y"] - 1.0, 0)
            d = np.hypot((ra - s["RA"]) * np.cos(np.radians(s["DEC"])), dec - s["DEC"])
            wcs_diff = max(wcs_diff, float(d.max()) * 3600.0)
    ql = path[:-5] + ".png"
    with open(ql, "rb") as q:
        head = q.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == img.shape[1]:
        png += 1
    # Inputs and their calexps, truth tables.
    inputs = []
    for k in range(1, hdr["NINPUTS"] + 1):
        v, ccd = hdr[f"INVIS{k}"], hdr[f"INCCD{k}"]
        with fits.open(os.path.join(run, f"singleframe/calexp/v{v:04d}/c{ccd:02d}.fits")) as ce:
            cimg = ce["IMAGE"].data.astype(float)
            cmask = ce["MASK"].data
            cwcs = WCS(ce["IMAGE"].header)
        with fits.open(os.path.join(data, f"truth/v{v:04d}/c{ccd:02d}.fits")) as t:
            obj = t["OBJECTS"].data
        inputs.append((hdr[f"INWGT{k}"], hdr[f"INSCL{k}"], cimg, cmask, cwcs, obj))
    # Stars by truth ID: bright, isolated, away from every edge of every input holding them.
    ids = set()
    for _, _, _, _, _, obj in inputs:
        bright = (obj["TYPE"] == "star") & (obj["FLUX"] > 2e4) & (obj["FLUX"] < 5e5)
        ids.update(int(i) for i in obj["ID"][bright])
    for sid in sorted(ids):
        wsum, expect, used, ok = 0.0, 0.0, 0, True
        sky = None
        for w, scale, cimg, cmask, cwcs, obj in inputs:
            row = np.nonzero(obj["ID"] == sid)[0]
            if len(row) == 0:
                continue
            o = obj[row[0]]
            x, y = o["X"] - 1.0, o["Y"] - 1.0
            others = (obj["ID"] != sid) & (np.hypot(obj["X"] - o["X"], obj["Y"] - o["Y"]) < 2 * R)
            if np.any(obj["FLUX"][others] > 0.02 * o["FLUX"]):
                ok = False
                break
            flux, sel = aperture(cimg, x, y)
            if flux is None or np.any(cmask[sel] & (SAT | BAD)):
                ok = False
                break
            ra, dec = cwcs.all_pix2world([x], [y], 0)
            sky = (ra[0], dec[0])
            wsum += w
            expect += w * scale * flux
            used += 1
        if not ok or used < 2:
            continue
        cx, cy = wcs.all_world2pix([sky[0]], [sky[1]], 0)
        flux, sel = aperture(img, cx[0], cy[0])
        if flux is None or np.any(msk[sel] & (NO_DATA | CLIPPED | SAT | BAD)) or np.any(nin[sel] != used):
            continue
        devs.append(flux / (expect / wsum) - 1.0)

print(f"coadds={len(coadds)}")
print(f"png={png}")
print(f"wcs_diff_arcsec={wcs_diff:.3e}")
print(f"flux_n={len(devs)}")
print(f"flux_max_dev={max(abs(d) for d in devs) if devs else float('nan'):.5f}")
print(f"flux_mean_dev={np.mean(devs) if devs else float('nan'):.5f}")
