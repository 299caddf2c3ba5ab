"""Reads every output of a CMB run the way a user would, with no skypipe code: h5py checks
each HDF5 file against the layout of docs/formats.md, healpy and astropy open each map, Pillow
each quicklook, and the run directory's JSON files are parsed.

Usage: cmb_outputs.py DATA_DIR RUN_DIR NSIDE ORDERING COORDSYS
Warnings are errors. Prints one line per file kind and `ok`.
"""

import glob
import json
import math
import os
import sys
import warnings
import xml.etree.ElementTree as ElementTree

warnings.simplefilter("error")

import h5py  # noqa: E402
import healpy as hp  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from PIL import Image  # noqa: E402

data, run, nside, ordering, coordsys = sys.argv[1:6]
nside = int(nside)

# Attribute kinds of docs/formats.md.
INT, FLOAT, STR, QUAT = "int", "float", "str", "f64[4]"


def check_attr(where, attrs, name, kind):
    assert name in attrs, f"{where}: attribute {name} missing"
    v = attrs[name]
    if kind == STR:
        assert isinstance(v, (str, bytes, np.bytes_)), f"{where}@{name}: {type(v)}"
    elif kind == INT:
        assert np.issubdtype(np.asarray(v).dtype, np.integer), f"{where}@{name}: {v!r}"
        assert np.asarray(v).shape == (), f"{where}@{name}: not a scalar"
    elif kind == FLOAT:
        assert np.asarray(v).dtype == np.float64, f"{where}@{name}: {v!r}"
        assert np.asarray(v).shape == (), f"{where}@{name}: not a scalar"
    elif kind == QUAT:
        a = np.asarray(v)
        assert a.dtype == np.float64 and a.shape == (4,), f"{where}@{name}: {a!r}"
        assert abs(np.linalg.norm(a) - 1) < 1e-6, f"{where}@{name}: not a unit quaternion"
    else:
        raise AssertionError(kind)


def check_attrs(where, attrs, required, optional=()):
    for name, kind in required:
        check_attr(where, attrs, name, kind)
    for name, kind in optional:
        if name in attrs:
            check_attr(where, attrs, name, kind)


def text(v):
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else v


def dataset(where, group, name, dtypes, shape):
    assert name in group, f"{where}: dataset {name} missing"
    d = group[name]
    assert isinstance(d, h5py.Dataset), f"{where}/{name}: not a dataset"
    assert d.dtype in [np.dtype(t) for t in dtypes], f"{where}/{name}: dtype {d.dtype}"
    assert d.shape == shape, f"{where}/{name}: shape {d.shape}, expected {shape}"
    return d[...]


def open_h5(path, fmt):
    f = h5py.File(path, "r")
    assert text(f.attrs["format"]) == fmt, f"{path}: format {f.attrs['format']!r}"
    return f


# Focal plane.
fp_path = f"{data}/focalplane.h5"
with open_h5(fp_path, "skypipe-cmb-focalplane/1") as f:
    check_attrs(fp_path, f.attrs, [], [("freq_ghz", FLOAT)])
    detectors = sorted(f["detectors"])
    assert detectors, fp_path
    rates = {}
    for d in detectors:
        g = f["detectors"][d]
        where = f"{fp_path}:/detectors/{d}"
        check_attrs(
            where,
            g.attrs,
            [("quat", QUAT), ("pol_angle_deg", FLOAT), ("pol_efficiency", FLOAT), ("rate_hz", FLOAT)],
            [("net_k_sqrt_s", FLOAT), ("fknee_hz", FLOAT), ("gain", FLOAT), ("freq_ghz", FLOAT)],
        )
        assert 0 <= g.attrs["pol_efficiency"] <= 1, where
        rates[d] = g.attrs["rate_hz"]
print("focal plane:", len(detectors), "detectors")

# Observation list and observation files; the sample counts of each detector.
with open(f"{data}/observations.json") as fh:
    obs_list = json.load(fh)
assert obs_list["format"] == "skypipe-cmb-observations/1", obs_list["format"]
observations = [o["obs"] for o in obs_list["observations"]]
samples = {}
for o in obs_list["observations"]:
    path = os.path.join(data, o["file"])
    with open_h5(path, "skypipe-cmb-obs/1") as f:
        check_attrs(path, f.attrs, [("obs", INT)], [("epoch", INT)])
        a = f["attitude"]
        check_attrs(f"{path}:/attitude", a.attrs, [("frame", STR)])
        assert text(a.attrs["frame"]) in ("ecliptic", "equatorial", "galactic"), path
        n = a["time"].shape[0]
        t = dataset(path, a, "time", ["f8"], (n,))
        assert (np.diff(t) > 0).all(), f"{path}: attitude times not increasing"
        q = dataset(path, a, "quat", ["f8"], (n, 4))
        assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6), path
        dataset(path, a, "velocity", ["f8"], (n, 3))
        assert sorted(f["detectors"]) == detectors, f"{path}: detectors"
        for d in detectors:
            g = f["detectors"][d]
            where = f"{path}:/detectors/{d}"
            check_attrs(where, g.attrs, [("t0", FLOAT), ("rate_hz", FLOAT)], [("first_sample", INT)])
            assert g.attrs["rate_hz"] == rates[d], where
            m = g["signal"].shape[0]
            dataset(where, g, "signal", ["f8"], (m,))
            dataset(where, g, "flags", ["u1"], (m,))
            samples[(o["obs"], d)] = m
print("observations:", len(observations))

# Simulation truth.
path = f"{data}/truth/sky.h5"
with open_h5(path, "skypipe-cmb-map/1") as f:
    m = f["map"]
    check_attrs(f"{path}:/map", m.attrs, [("nside", INT), ("ordering", STR), ("frame", STR), ("units", STR)])
    dataset(path, f, "map", ["f8"], (12 * int(m.attrs["nside"]) ** 2, 3))
    assert text(m.attrs["ordering"]) in ("RING", "NESTED"), path
path = f"{data}/truth/gains.h5"
with open_h5(path, "skypipe-cmb-gains/1") as f:
    k = f["obs"].shape[0]
    dataset(path, f, "obs", ["i8", "i4", "u8", "u4"], (k,))
    for d in detectors:
        g = f["detectors"][d]
        dataset(f"{path}:/detectors/{d}", g, "gain", ["f8"], (k,))
        if "offset" in g:
            dataset(f"{path}:/detectors/{d}", g, "offset", ["f8"], (k,))
print("truth: sky, gains")

# Pointing files; the hit count of every pixel of the pointing's own ordering.
CLOCK = [("t0", FLOAT), ("rate_hz", FLOAT)]
hits = np.zeros(12 * nside**2, np.int64)
pointing_ordering = None
for o in observations:
    path = f"{run}/pointing/obs={o:04d}.h5"
    with open_h5(path, "skypipe-cmb-pointing/1") as f:
        check_attrs(
            path,
            f.attrs,
            [("obs", INT), ("nside", INT), ("ordering", STR), ("frame", STR), ("attitude_frame", STR), ("aberration", INT)],
        )
        assert f.attrs["obs"] == o and f.attrs["nside"] == nside, path
        pointing_ordering = text(f.attrs["ordering"])
        assert pointing_ordering in ("RING", "NESTED"), path
        assert sorted(f["detectors"]) == detectors, f"{path}: detectors"
        for d in detectors:
            g = f["detectors"][d]
            where = f"{path}:/detectors/{d}"
            check_attrs(where, g.attrs, CLOCK + [("pol_efficiency", FLOAT)], [("first_sample", INT)])
            m = samples[(o, d)]
            pixels = dataset(where, g, "pixels", ["u8", "i4", "i8"], (m,))
            assert (pixels < 12 * nside**2).all(), where
            hits += np.bincount(pixels.astype(np.int64), minlength=hits.size)
            dataset(where, g, "weights", ["f8", "f4"], (m, 3))
            for angle in ("theta", "phi", "psi"):
                if angle in g:
                    dataset(where, g, angle, ["f8", "f4"], (m,))
            if "quat" in g:
                dataset(where, g, "quat", ["f8"], (m, 4))
print("pointing:", len(observations), "files")

# Calibrated timestreams.
for o in observations:
    path = f"{run}/calibrate/obs={o:04d}.h5"
    with open_h5(path, "skypipe-cmb-calibrated/1") as f:
        check_attrs(
            path,
            f.attrs,
            [
                ("obs", INT), ("frame", STR), ("gains", STR), ("solar_dipole", INT), ("orbital_dipole", INT),
                ("t_cmb", FLOAT), ("solar_speed_km_s", FLOAT), ("solar_l_deg", FLOAT), ("solar_b_deg", FLOAT),
                ("quadrupole", INT),
            ],
            [("sky_model", STR)],
        )
        fitted = text(f.attrs["gains"]) == "fit"
        assert text(f.attrs["gains"]) in ("fit", "table"), path
        assert sorted(f["detectors"]) == detectors, f"{path}: detectors"
        for d in detectors:
            g = f["detectors"][d]
            where = f"{path}:/detectors/{d}"
            fit = [
                ("gain_error", FLOAT), ("gain_error_white", FLOAT), ("gain_error_sky", FLOAT),
                ("noise_rms", FLOAT), ("excess_rms", FLOAT), ("gain_warning", INT), ("n_good", INT),
            ]
            check_attrs(
                where,
                g.attrs,
                CLOCK + [("gain", FLOAT), ("offset", FLOAT)] + (fit if fitted else []),
                [("first_sample", INT), ("freq_ghz", FLOAT), ("quadrupole_factor", FLOAT), ("n_sky_unseen", INT)],
            )
            m = samples[(o, d)]
            signal = dataset(where, g, "signal", ["f8"], (m,))
            assert text(g["signal"].attrs["units"]) == "K_CMB", where
            assert np.isfinite(signal).all(), where
            dataset(where, g, "flags", ["u1"], (m,))
print("calibrate:", len(observations), "files")

# Destriping baselines: one per L samples, summing to zero over the map.
total = 0.0
scale = 0.0
for o in observations:
    path = f"{run}/mapmake/baselines/obs={o:04d}.h5"
    with open_h5(path, "skypipe-cmb-baselines/1") as f:
        check_attrs(path, f.attrs, [("obs", INT), ("baseline_samples", INT)])
        length = int(f.attrs["baseline_samples"])
        for d in detectors:
            b = dataset(f"{path}:/detectors/{d}", f["detectors"][d], "baselines", ["f8"], (math.ceil(samples[(o, d)] / length),))
            total += b.sum()
            scale += np.abs(b).sum()
assert abs(total) <= 1e-9 * scale, (total, scale)
print("baselines:", len(observations), "files")

# Maps: healpy reads them in the ordering and frame the header names; astropy verifies them.
if pointing_ordering == "RING" and ordering == "NESTED":
    hits = np.bincount(hp.ring2nest(nside, np.arange(hits.size)), weights=hits, minlength=hits.size)
elif pointing_ordering == "NESTED" and ordering == "RING":
    hits = np.bincount(hp.nest2ring(nside, np.arange(hits.size)), weights=hits, minlength=hits.size)
for kind in ("binned", "destriped"):
    path = f"{run}/mapmake/map_{kind}.fits"
    maps, header = hp.read_map(path, field=None, nest=None, h=True)
    header = dict(header)
    assert header["PIXTYPE"] == "HEALPIX", path
    assert header["NSIDE"] == nside, (path, header["NSIDE"])
    assert header["ORDERING"] == ordering, (path, header["ORDERING"])
    assert header["COORDSYS"] == coordsys, (path, header["COORDSYS"])
    assert header["INDXSCHM"] == "IMPLICIT" and header["OBJECT"] == "FULLSKY", path
    assert len(maps) == 5 and all(m.size == 12 * nside**2 for m in maps), path
    i, q, u, map_hits, rcond = maps
    # The header's ordering is the pixels' ordering: the hits are the pointing's, moved.
    assert np.array_equal(map_hits, hits), f"{path}: HITS differ from the pointing's pixels"
    seen = (i != hp.UNSEEN) & (map_hits > 0)
    assert seen.sum() > 0 and np.isfinite(i[seen]).all(), path
    assert ((i == hp.UNSEEN) == (q == hp.UNSEEN)).all() and ((q == hp.UNSEEN) == (u == hp.UNSEEN)).all(), path
    assert (i[map_hits == 0] == hp.UNSEEN).all(), path
    with fits.open(path) as f:
        f.verify("exception")
        assert [h.name for h in f] == ["PRIMARY", "HEALPIX"], path
        assert [f[1].header[f"TTYPE{k}"] for k in range(1, 6)] == ["I_STOKES", "Q_STOKES", "U_STOKES", "HITS", "RCOND"]
    # The quicklook: a PNG that Pillow decodes, with its colour limits in the text chunk.
    with Image.open(path.replace(".fits", ".png")) as png:
        png.load()
        assert png.mode == "RGB" and png.size[0] == 200, (path, png.mode, png.size)
        low, high = (float(v) for v in png.text["Limits"].replace(",", " ").split()[:2])
        assert np.isfinite([low, high]).all() and low <= high, png.text["Limits"]
print("maps: binned, destriped, quicklooks")

# JSON and SVG of the run directory.
with open(f"{run}/run-report.json") as fh:
    report = json.load(fh)
assert report["format"] == "skypipe-run-report/1", report.get("format")
stages = ["pointing", "calibrate", "mapmake"]
for stage in stages:
    with open(f"{run}/ledger/{stage}.manifest.json") as fh:
        manifest = json.load(fh)
    assert manifest["format"] == "skypipe-ledger/1" and manifest["stage"] == stage, manifest
    with open(f"{run}/ledger/{stage}.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    assert records and all(r["outcome"] == "done" for r in records), (stage, records)
    with open(f"{run}/ledger/{stage}.report.json") as fh:
        json.load(fh)
with open(f"{run}/mapmake/summary.json") as fh:
    summary = json.load(fh)
assert summary["nside"] == nside, summary
ElementTree.parse(f"{run}/timeline.svg")
print("run directory: report, ledgers, summary, timeline")
print("ok")
