"""Replaces a coadd detection catalogue by N uniformly scattered spurious detections (a band
shredded into noise peaks, as a coadd detected at far too low a threshold would be), keeping
the header keys multiband reads. Usage: shred.py CATALOGUE N SIDE_PIXELS"""
import sys

import numpy as np
from astropy.io import fits

path, n, side = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with fits.open(path) as original:
    header = original["SOURCES"].header
    primary = original[0].copy()
    keys = {k: header[k] for k in ("PSFFWHM", "MAGZERO")}
rng = np.random.default_rng(3)
columns = [
    fits.Column(name="X", format="D", array=rng.uniform(1.0, side, n)),
    fits.Column(name="Y", format="D", array=rng.uniform(1.0, side, n)),
    fits.Column(name="DET_SIGNIF", format="D", array=rng.uniform(5.0, 6.0, n)),
]
table = fits.BinTableHDU.from_columns(columns, name="SOURCES")
for key, value in keys.items():
    table.header[key] = value
fits.HDUList([primary, table]).writeto(path, overwrite=True)
