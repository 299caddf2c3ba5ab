"""Checks of a skypipe-multiband run against the simulated truth with astropy (run by
tests/multiband.rs).

usage: check.py DATA_DIR RUN_DIR TRACT

Prints `key=value` lines:
- objects: rows of the tract catalogue; patch_rows: rows of the patch catalogues together;
  units_ok: 1 if every flux, error and position column has its TUNIT;
- bright: truth objects with aperture S/N above 10 in some band (truth flux over the band's
  median FLUX_APER_ERR), at least 3 arcsec inside the coadded area, not saturated (brighter than 16, whose halos the
  coadd detection shreds) and without a brighter object within 1.5 arcsec (unresolved blends); bright_missing: those
  without a catalogue object within 1 arcsec; bright_twice: those that are the nearest truth
  object of two or more catalogue objects within 1 arcsec; duplicate_ids: repeated IDs;
- colour_n, colour_median_dev, colour_p90_dev: isolated unsaturated bright stars (r < 20.5),
  |measured g/r aperture flux ratio over the true one − 1|;
- dropout_n: stars absent in g (the simulator's dropouts) found once; dropout_clean_n: those
  unflagged in g; dropout_max_chi: their largest |FLUX_PSF_G / FLUX_PSF_ERR_G|.
"""
import glob
import os
import sys
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

warnings.simplefilter("error")

data, run, tract = sys.argv[1], sys.argv[2], int(sys.argv[3])
ZP = 27.0
DROPOUT_MAG = 99.0

# Truth: position (from the true WCS of every CCD it fell on) and magnitude per band.
pos, mags = {}, {}
for path in sorted(glob.glob(os.path.join(data, "truth/v*/c*.fits"))):
    with fits.open(path) as f:
        h = f[0].header
        t = f["OBJECTS"].data
        band = h["BAND"]
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crpix = [h["TCRPIX1"], h["TCRPIX2"]]
        w.wcs.crval = [h["TCRVAL1"], h["TCRVAL2"]]
        w.wcs.cd = [[h["TCD1_1"], h["TCD1_2"]], [h["TCD2_1"], h["TCD2_2"]]]
        ra, dec = w.all_pix2world(t["X"], t["Y"], 1)
        for i, r, d, m in zip(t["ID"], ra, dec, t["MAG"]):
            pos[int(i)] = (float(r), float(d))
            mags.setdefault(int(i), {})[band] = float(m)

with fits.open(os.path.join(run, f"multiband/t{tract:04d}.fits")) as f:
    cat = f["OBJECTS"].data
    units_ok = all(
        f["OBJECTS"].header.get(f"TUNIT{k + 1}", "") != ""
        for k, name in enumerate(cat.columns.names)
        if name.startswith("FLUX") or name in ("RA", "DEC", "X", "Y")
    )
    bands = f["OBJECTS"].header["BANDS"].split(",")
patch_rows = 0
for path in glob.glob(os.path.join(run, f"multiband/t{tract:04d}/p*.fits")):
    with fits.open(path) as f:
        patch_rows += len(f["OBJECTS"].data)
print(f"objects={len(cat)}")
print(f"patch_rows={patch_rows}")
print(f"units_ok={int(units_ok)}")
print(f"duplicate_ids={len(cat) - len(set(cat['ID'].tolist()))}")

ids = np.array(sorted(pos))
tra = np.array([pos[i][0] for i in ids])
tdec = np.array([pos[i][1] for i in ids])
cosd = np.cos(np.radians(np.median(tdec)))


def offsets(ra, dec, ra0, dec0):
    """Distances (arcsec) of (ra, dec) arrays from one position."""
    return np.hypot((ra - ra0) * cosd, dec - dec0) * 3600.0


# Nearest truth object of every catalogue object.
nearest = np.empty(len(cat), dtype=np.int64)
nearest_d = np.empty(len(cat))
for k, (r, d) in enumerate(zip(cat["RA"], cat["DEC"])):
    dist = offsets(tra, tdec, r, d)
    j = int(np.argmin(dist))
    nearest[k], nearest_d[k] = ids[j], dist[j]
matched = {}
for k in range(len(cat)):
    if nearest_d[k] < 1.0:
        matched.setdefault(int(nearest[k]), []).append(k)

# Coadded area: within 3 arcsec of the catalogue's own extent (its objects cover it).
ra_lo, ra_hi = cat["RA"].min() + 3 / 3600 / cosd, cat["RA"].max() - 3 / 3600 / cosd
dec_lo, dec_hi = cat["DEC"].min() + 3 / 3600, cat["DEC"].max() - 3 / 3600
# Local noise: the aperture flux error of the nearest unflagged catalogue object in the band.
def snr_above_10(i):
    dist = offsets(cat["RA"], cat["DEC"], *pos[i])
    for b in bands:
        if b not in mags[i]:
            continue
        ok = cat[f"FLAGS_{b.upper()}"] == 0
        if not ok.any():
            continue
        k = np.flatnonzero(ok)[np.argmin(dist[ok])]
        if 10 ** (0.4 * (ZP - mags[i][b])) / cat[f"FLUX_APER_ERR_{b.upper()}"][k] > 10:
            return True
    return False


def resolved_brighter_neighbour(i):
    """Whether a brighter truth object lies within 1.5 arcsec (2.3 FWHM): an unresolved blend."""
    near = offsets(tra, tdec, *pos[i])
    close = ids[(near < 1.5) & (near > 0)]
    return any(min(mags[int(j)].values()) < min(mags[i].values()) for j in close)


# Saturated stars (brighter than 16) are left out: the coadd detection shreds their halos.
bright = [
    i
    for i in ids
    if ra_lo < pos[i][0] < ra_hi
    and dec_lo < pos[i][1] < dec_hi
    and min(mags[i].values()) > 16.0
    and not resolved_brighter_neighbour(i)
    and snr_above_10(i)
]
missing = [i for i in bright if i not in matched]
twice = [i for i in bright if len(matched.get(i, [])) > 1]
print(f"bright={len(bright)}")
print(f"bright_missing={len(missing)}")
print(f"bright_twice={len(twice)}")
for i in missing[:10] + twice[:10]:
    print(f"# truth {i} at {pos[i]} mags {mags[i]} matches {matched.get(i)}", file=sys.stderr)

# Colours of isolated bright unsaturated stars (truth g, r both known; no truth neighbour
# within 6 arcsec brighter than 4 magnitudes fainter).
devs = []
for i, rows in matched.items():
    m = mags[i]
    if len(rows) != 1 or "g" not in m or "r" not in m or not (17.0 < m["r"] < 20.5):
        continue
    if m["g"] >= DROPOUT_MAG:
        continue
    near = offsets(tra, tdec, *pos[i])
    close = (near < 6.0) & (near > 0)
    if any(mags[int(j)].get("r", 99) < m["r"] + 4 for j in ids[close]):
        continue
    k = rows[0]
    if cat["FLAGS_G"][k] or cat["FLAGS_R"][k]:
        continue
    ratio = cat["FLUX_APER_G"][k] / cat["FLUX_APER_R"][k]
    truth = 10 ** (-0.4 * (m["g"] - m["r"]))
    devs.append(abs(ratio / truth - 1))
devs = np.array(devs)
print(f"colour_n={len(devs)}")
print(f"colour_median_dev={np.median(devs) if len(devs) else float('nan')}")
print(f"colour_p90_dev={np.percentile(devs, 90) if len(devs) else float('nan')}")

# Dropouts: found once; unflagged in g, forced g PSF fluxes within 4 sigma of 0 (the 2.4"
# aperture flux picks up the wings of neighbours in this crowded field).
found, chis = 0, []
for i, rows in matched.items():
    if mags[i].get("g", 0) >= DROPOUT_MAG and len(rows) == 1:
        found += 1
        k = rows[0]
        if cat["FLAGS_G"][k] == 0:
            chis.append(abs(cat["FLUX_PSF_G"][k] / cat["FLUX_PSF_ERR_G"][k]))
print("# dropout chis", chis, file=sys.stderr)
print(f"dropout_n={found}")
print(f"dropout_clean_n={len(chis)}")
print(f"dropout_max_chi={max(chis) if chis else float('nan')}")
