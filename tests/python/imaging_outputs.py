"""Reads every input and output of a single-frame run the way a user would, with no skypipe
code: astropy opens every FITS file, verifies it, evaluates every WCS and reads every table
(units included); the calexps and catalogues are checked against docs/formats.md; the Debian
`sqlite3` shell runs the documented overlap query on the registry; the run directory's JSON
files are parsed.

Usage: imaging_outputs.py DATA_DIR RUN_DIR FORMATS_MD
Warnings are errors. Prints one line per file kind and `ok`.
"""

import glob
import json
import os
import re
import subprocess
import sys
import warnings

warnings.simplefilter("error")

import astropy.units as u  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.nddata import CCDData  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

data, run, formats_md = sys.argv[1:4]

# Pixels where header-only WCSs (no image in their HDU) are evaluated, 1-based.
PROBE = (np.array([1.0, 128.0, 256.0, 1.0]), np.array([1.0, 256.0, 512.0, 512.0]))


def evaluate(path, hdu, shape):
    """Evaluates the HDU's WCS on the image's corners and centre (or PROBE) and back."""
    w = WCS(hdu.header)
    assert w.has_celestial, f"{path}[{hdu.name}]: no celestial WCS"
    if shape:
        ny, nx = shape
        x = np.array([1.0, nx, nx, 1.0, (nx + 1) / 2])
        y = np.array([1.0, 1.0, ny, ny, (ny + 1) / 2])
    else:
        x, y = PROBE
    ra, dec = w.all_pix2world(x, y, 1)
    assert np.isfinite(ra).all() and np.isfinite(dec).all(), f"{path}[{hdu.name}]"
    x2, y2 = w.all_world2pix(ra, dec, 1, tolerance=1e-10)
    assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-6, f"{path}[{hdu.name}]: no round trip"
    return w


files = sorted(glob.glob(f"{data}/**/*.fits", recursive=True) + glob.glob(f"{run}/**/*.fits", recursive=True))
counts = {"files": 0, "images": 0, "wcs": 0, "tables": 0}
for path in files:
    counts["files"] += 1
    with fits.open(path) as f:
        f.verify("exception")
        for hdu in f:
            extnames = [c for c in hdu.header.cards if c.keyword == "EXTNAME"]
            assert len(extnames) <= 1, f"{path}[{hdu.name}]: {len(extnames)} EXTNAME cards"
            if isinstance(hdu, fits.BinTableHDU):
                t = Table.read(path, hdu=hdu.name)
                for column in t.itercols():
                    np.asarray(column)
                counts["tables"] += 1
                continue
            shape = hdu.data.shape if hdu.data is not None and hdu.data.size else None
            if shape is not None:
                assert np.isfinite(hdu.data).any(), f"{path}[{hdu.name}]"
                counts["images"] += 1
            if "CTYPE1" in hdu.header:
                evaluate(path, hdu, shape)
                counts["wcs"] += 1
print("fits:", counts)

# Calibrated exposures and catalogues against docs/formats.md.
with open(f"{data}/units.json") as fh:
    units = json.load(fh)["units"]
SOURCE_UNITS = {
    "ID": None, "X": "pix", "Y": "pix", "RA": "deg", "DEC": "deg",
    "FLUX_APER": "ct", "FLUX_APER_ERR": "ct", "FLUX_PSF": "ct", "FLUX_PSF_ERR": "ct",
    "IXX": "pix2", "IYY": "pix2", "IXY": "pix2", "DET_SIGNIF": None, "FOOTPRINT": None, "FLAGS": None,
}
calexps = {}
for unit in units:
    name = f"v{unit['visit']:04d}/c{unit['ccd']:02d}.fits"
    calexp = f"{run}/singleframe/calexp/{name}"
    with fits.open(calexp) as f:
        primary = f[0].header
        fitted = primary.get("ASTFIT", 0) == 1
        expected = ["PRIMARY", "IMAGE", "MASK", "VARIANCE"] + (["HDRWCS"] if fitted else [])
        assert [h.name for h in f] == expected, (calexp, [h.name for h in f])
        for key in ("VISIT", "CCD", "BAND", "FILTER", "EXPTIME", "PSFFWHM", "PSFGWID", "APCORR", "BKGRMS"):
            assert key in primary, f"{calexp}: {key} missing"
        assert primary["BAND"] == unit["band"] and primary["VISIT"] == unit["visit"], calexp
        image, mask, variance = f["IMAGE"], f["MASK"], f["VARIANCE"]
        assert image.data.dtype == np.dtype(">f4") and variance.data.dtype == np.dtype(">f4"), calexp
        assert mask.data.dtype == np.dtype(">i4"), calexp
        assert image.data.shape == mask.data.shape == variance.data.shape, calexp
        for name_, bit in (("SAT", 1), ("BAD", 2), ("CR", 4), ("DETECTED", 8), ("EDGE", 16)):
            assert mask.header[f"MP_{name_}"] == bit, calexp
        w = WCS(image.header)
        ny, nx = image.data.shape
        corners = np.array([[0.5, 0.5], [nx + 0.5, 0.5], [nx + 0.5, ny + 0.5], [0.5, ny + 0.5]])
        sky = w.all_pix2world(corners, 1)
        for other in (mask, variance):
            assert np.allclose(WCS(other.header).all_pix2world(corners, 1), sky, rtol=0, atol=1e-12), calexp
        calexps[(unit["visit"], unit["ccd"])] = (w, sky)
    # Images in electrons, variance in electrons squared, as astropy's CCDData reads them.
    assert CCDData.read(calexp, hdu="IMAGE").unit == u.electron, calexp
    assert CCDData.read(calexp, hdu="VARIANCE").unit == u.electron**2, calexp

    src = f"{run}/singleframe/src/{name}"
    with fits.open(src) as f:
        assert [h.name for h in f] == ["PRIMARY", "SOURCES"], src
        if "CTYPE1" in f[0].header:
            assert np.allclose(WCS(f[0].header).all_pix2world(corners, 1), sky, rtol=0, atol=1e-12), src
    t = Table.read(src, hdu="SOURCES")
    for column, unit_name in SOURCE_UNITS.items():
        assert column in t.colnames, f"{src}: column {column}"
        if unit_name is None:
            assert t[column].unit is None, (src, column, t[column].unit)
        else:
            assert t[column].unit == u.Unit(unit_name, format="fits"), (src, column, t[column].unit)
    assert t["ID"].dtype.str[1:] == "i8" and t["FLAGS"].dtype.str[1:] == "i4", src
    for column in ("X", "Y", "RA", "DEC", "FLUX_PSF", "FLUX_PSF_ERR", "MAG", "MAG_ERR"):
        if column in t.colnames:
            assert t[column].dtype.str[1:] == "f8", (src, column)
    assert len(t) > 0, src
    ra, dec = w.all_pix2world(t["X"], t["Y"], 1)
    assert np.max(np.abs(ra - t["RA"]) * np.cos(np.radians(dec))) < 1e-9, src
    assert np.max(np.abs(dec - t["DEC"])) < 1e-9, src
print("calexps and catalogues:", len(units))

# The registry through the sqlite3 shell: the documented overlap query, as written in the docs.
registry = f"{run}/registry.sqlite3"
with open(formats_md) as fh:
    blocks = re.findall(r"```sql\n(.*?)```", fh.read(), re.S)
query = next(b for b in blocks if "ccd_box" in b)


def sqlite(script):
    out = subprocess.run(
        ["sqlite3", "-readonly", "-json", registry], input=script, capture_output=True, text=True, check=True
    )
    assert not out.stderr, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else []


def vector(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def corners_of(row):
    return [vector(row[f"ra{k}"], row[f"dec{k}"]) for k in range(4)]


def contains(row, p):
    """The point p lies inside the convex spherical quadrilateral of the row's corners."""
    c = corners_of(row)
    sides = [np.dot(np.cross(c[k], c[(k + 1) % 4]), p) for k in range(4)]
    return all(s > 0 for s in sides) or all(s < 0 for s in sides)


def overlapping(p):
    bind = "".join(f".parameter set :{lim}_{axis} {p[k]!r}\n" for k, axis in enumerate("xyz") for lim in ("min", "max"))
    return sqlite(bind + query)


rows = sqlite("SELECT * FROM ccd ORDER BY visit, ccd;")
assert len(rows) == len(units), (len(rows), len(units))
for row in rows:
    assert os.path.isfile(f"{run}/{row['calexp_path']}") and os.path.isfile(f"{run}/{row['catalog_path']}"), row
    w, sky = calexps[(row["visit"], row["ccd"])]
    # The stored corners are the calexp's outer pixel corners; the stored WCS text is the calexp's.
    stored = np.array([[row[f"ra{k}"], row[f"dec{k}"]] for k in range(4)])
    assert np.allclose(stored, sky, rtol=0, atol=1e-9), (row["visit"], row["ccd"], stored, sky)
    if row["wcs"]:
        rw = WCS(fits.Header.fromstring(row["wcs"]))
        assert np.allclose(rw.all_pix2world(np.array([[0.5, 0.5], [100.0, 300.0]]), 1), w.all_pix2world(np.array([[0.5, 0.5], [100.0, 300.0]]), 1), rtol=0, atol=1e-9), row["wcs"]
    # Every CCD containing its centre, and no other: the prefilter keeps all of them.
    centre = sum(corners_of(row))
    centre /= np.linalg.norm(centre)
    found = overlapping(centre)
    exact = [(r["visit"], r["ccd"]) for r in found if contains(r, centre)]
    brute = [(r["visit"], r["ccd"]) for r in rows if contains(r, centre)]
    assert exact == brute and (row["visit"], row["ccd"]) in exact, (exact, brute)
assert overlapping(vector(10.0, -40.0)) == []
print("registry:", len(rows), "rows, overlap query answered")

# JSON of the run directory.
with open(f"{run}/run-report.json") as fh:
    report = json.load(fh)
assert report["format"] == "skypipe-run-report/1", report.get("format")
stages = sorted(name[: -len(".manifest.json")] for name in os.listdir(f"{run}/ledger") if name.endswith(".manifest.json"))
assert {"singleframe", "mosaic", "coadd", "multiband"} <= set(stages), stages
recorded = 0
for stage in stages:
    with open(f"{run}/ledger/{stage}.manifest.json") as fh:
        assert json.load(fh)["format"] == "skypipe-ledger/1", stage
    with open(f"{run}/ledger/{stage}.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    assert records and all(r["outcome"] in ("done", "no-work") for r in records), (stage, records)
    recorded += len(records)
assert recorded == report["planned"], (recorded, report["planned"])
print("run directory: report, ledgers of", stages)
print("ok")
