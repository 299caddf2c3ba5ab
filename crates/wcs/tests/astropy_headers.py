"""Writes WCS headers of every accepted form with astropy and evaluates them with astropy.

Prints JSON: {name: {"header": str, "scale": arcsec/pix, "pixels": [[x, y]], "sky": [[ra, dec]],
"sky_in": [[ra, dec]], "pixels_out": [[x, y]]}}, pixels 1-based. "sky" is astropy's
all_pix2world of "pixels"; "pixels_out" is astropy's all_world2pix of "sky_in" (converged to
1e-12 pix). SIP is applied by astropy only with the '-SIP' CTYPE suffix: every SIP header here
has it (asserted), so astropy and WCSLIB both apply the polynomials.
"""
import json
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip

warnings.simplefilter("error")  # any astropy warning about a header fails the test
S = 0.2 / 3600.0  # 0.2 arcsec per pixel
NX, NY = 2048, 4096


def card_header(cards):
    h = fits.Header()
    for k, v in cards:
        h[k] = v
    return h


def base(w):
    w.wcs.crpix = [1024.5, 2048.5]
    w.wcs.crval = [359.98, -30.0]
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    return w


def rot(t_deg):
    t = np.radians(t_deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def poly(order, coef_fn):
    m = np.zeros((order + 1, order + 1))
    for p in range(order + 1):
        for q in range(order + 1 - p):
            if p + q >= 2:
                m[p, q] = coef_fn(p, q)
    return m


def sip_eval(m, u, v):
    out = np.zeros_like(u)
    for p in range(m.shape[0]):
        for q in range(m.shape[1]):
            if m[p, q] != 0.0:
                out += m[p, q] * u**p * v**q
    return out


def fit_inverse(a, b, order):
    """AP, BP of `order` such that u = U + AP(U, V), with U = u + A(u, v), on a grid."""
    u, v = np.meshgrid(np.linspace(-1100, 1100, 45), np.linspace(-2100, 2100, 45))
    u, v = u.ravel(), v.ravel()
    uu, vv = u + sip_eval(a, u, v), v + sip_eval(b, u, v)
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1 - p) if p + q >= 1]
    design = np.stack([uu**p * vv**q for p, q in terms], axis=1)
    ap, bp = np.zeros((order + 1, order + 1)), np.zeros((order + 1, order + 1))
    for target, out in ((u - uu, ap), (v - vv, bp)):
        sol = np.linalg.lstsq(design, target, rcond=None)[0]
        for (p, q), c in zip(terms, sol):
            out[p, q] = c
    return ap, bp


def headers():
    out = {}
    # CD matrix, rotated and flipped, RA crossing 0.
    # (astropy's to_header writes any linear matrix as PCi_j: the CD header is written by hand.)
    cd = S * np.array([[-1.0, 0.0], [0.0, 1.0]]) @ rot(0.7)
    out["cd"] = card_header([
        ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"),
        ("CRPIX1", 1024.5), ("CRPIX2", 2048.5), ("CRVAL1", 359.98), ("CRVAL2", -30.0),
        ("CD1_1", cd[0, 0]), ("CD1_2", cd[0, 1]), ("CD2_1", cd[1, 0]), ("CD2_2", cd[1, 1]),
    ])
    # PC + CDELT, unequal scales.
    w = base(WCS(naxis=2))
    w.wcs.pc = rot(-12.0)
    w.wcs.cdelt = [-S, 1.02 * S]
    out["pc_cdelt"] = w.to_header()
    assert "PC1_1" in out["pc_cdelt"] and "CDELT2" in out["pc_cdelt"]
    # CROTA2 with CDELT (the AIPS convention), as old cameras write it.
    out["crota2"] = card_header([
        ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"),
        ("CRPIX1", 1024.5), ("CRPIX2", 2048.5), ("CRVAL1", 359.98), ("CRVAL2", -30.0),
        ("CDELT1", -S), ("CDELT2", S), ("CROTA2", 23.5),
        ("CUNIT1", "deg"), ("CUNIT2", "deg"),
    ])
    # TAN-SIP, third order: A/B only, then A/B with AP/BP.
    a = poly(3, lambda p, q: [0, 0, 2.1e-7, -4.3e-10][p + q] * (1.0 if (p + 2 * q) % 3 else -0.6))
    b = poly(3, lambda p, q: [0, 0, -1.4e-7, 3.1e-10][p + q] * (1.0 if (2 * p + q) % 3 else 0.8))
    for name, inverse in (("sip_ab", False), ("sip_ab_apbp", True)):
        w = base(WCS(naxis=2))
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.wcs.cd = S * np.array([[-1.0, 0.0], [0.0, 1.0]]) @ rot(1.3)
        ap, bp = fit_inverse(a, b, 4) if inverse else (None, None)
        w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
        h = w.to_header(relax=True)
        assert h["CTYPE1"].endswith("-SIP") and h["CTYPE2"].endswith("-SIP")
        assert ("AP_ORDER" in h) == inverse and "A_ORDER" in h
        out[name] = h
    # TPV (astropy cannot write it): PV cards by hand, read by astropy through WCSLIB.
    out["tpv"] = card_header([
        ("CTYPE1", "RA---TPV"), ("CTYPE2", "DEC--TPV"),
        ("CRPIX1", 1024.5), ("CRPIX2", 2048.5), ("CRVAL1", 359.98), ("CRVAL2", -30.0),
        ("CD1_1", -S), ("CD1_2", 1e-7), ("CD2_1", 2e-7), ("CD2_2", S),
        ("CUNIT1", "deg"), ("CUNIT2", "deg"),
    ] + TPV)
    return out


# PVi_k for TPV (also read by the Rust test, which evaluates the TPV polynomial by formula).
TPV = [
    ("PV1_0", 1.0e-5), ("PV1_1", 1.0003), ("PV1_2", 2.0e-4), ("PV1_4", 3.0e-2),
    ("PV1_5", -2.0e-2), ("PV1_6", 1.5e-2), ("PV1_7", 4.0e-1), ("PV1_9", -3.0e-1),
    ("PV1_11", 2.5e-1),
    ("PV2_0", -2.0e-5), ("PV2_1", 0.9996), ("PV2_2", -1.0e-4), ("PV2_4", -2.0e-2),
    ("PV2_5", 1.0e-2), ("PV2_6", 2.5e-2), ("PV2_8", 3.0e-1), ("PV2_10", -4.0e-1),
    ("PV2_11", 1.5e-1),
]

xs, ys = np.meshgrid(np.linspace(1, NX, 9), np.linspace(1, NY, 11))
pixels = np.stack([xs.ravel(), ys.ravel()], axis=1) + np.array([0.3, -0.2])
result = {}
for name, h in headers().items():
    w = WCS(h)
    if "SIP" in name:
        assert w.sip is not None, name
    sky = w.all_pix2world(pixels, 1)
    sky_in = w.all_pix2world(pixels + np.array([17.25, -31.5]), 1)
    pix_out = w.all_world2pix(sky_in, 1, tolerance=1e-12, maxiter=200)
    result[name] = {
        "header": h.tostring(),
        "scale": S * 3600.0,
        "pixels": pixels.tolist(),
        "sky": sky.tolist(),
        "sky_in": sky_in.tolist(),
        "pixels_out": pix_out.tolist(),
    }
result["tpv_coefficients"] = {k: v for k, v in TPV}
print(json.dumps(result))
