"""Deterministic shared inputs for the map-making binning benchmark.

Writes, into DIR, the files `crates/core/examples/bin_samples.rs` reads (all little-endian):
`meta.txt`, `pixels.u64` (NESTED, ndet x nsamp), `weights.f64` (ndet x nsamp x 3: I, Q, U),
`signal.f64` (ndet x nsamp) and `detweights.f64` (1/sigma^2 per detector).

The scan is Planck-like: 180 Hz sampling, 1 rpm spin, 85 deg opening angle; the spin axis
stays fixed for a "ring" of 23 circles, then steps by RING_STEP_DEG along the ecliptic. The
ecliptic is tilted against the map frame (fixed rotation), so the circles cross the HEALPix
grid obliquely. Detectors sit on a small grid in the focal plane (offsets of a few tenths of
a degree) with polarisation angles 0/45/90/135 deg, so consecutive samples of one detector
hit neighbouring pixels and repeated circles hit the same pixels again, as in a real scan.

Usage: python gen_data.py DIR [NDET=8] [NSAMP_PER_DET=2000000]
"""

import sys
from pathlib import Path

import healpy as hp
import numpy as np

NSIDE = 2048
SUBMAP_SIZE = 1 << 14
FSAMP_HZ = 180.0
SPIN_PERIOD_S = 60.0
OPENING_DEG = 85.0
RING_S = 23 * SPIN_PERIOD_S
RING_STEP_DEG = 1.0
TILT_DEG = 60.0
SEED = 20250


def rotation_x(angle):
    """Rotation matrix about the x axis (ecliptic-like frame -> map frame)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def focal_plane(ndet):
    """Offsets (along-scan, cross-scan; radians), polarisation angle and efficiency."""
    dets = []
    for d in range(ndet):
        x = np.radians(0.2 * ((d // 2) % 4) - 0.3)
        y = np.radians(0.15 * (d // 8) + 0.1 * (d % 2) - 0.05)
        psi = np.radians(45.0 * (d % 4))
        eta = 0.9 + 0.01 * d
        dets.append((x, y, psi, eta))
    return dets


def sky(v):
    """Smooth I, Q, U sky at unit vectors v (n x 3)."""
    lat = np.arcsin(np.clip(v[:, 2], -1.0, 1.0))
    lon = np.arctan2(v[:, 1], v[:, 0])
    i = 100.0 + 30.0 * v[:, 0] * v[:, 1] + 5.0 * np.sin(7.0 * lon) * np.cos(lat)
    q = 2.0 * np.sin(3.0 * lon) * np.cos(lat)
    u = 2.0 * np.cos(2.0 * lat) * np.cos(lon)
    return i, q, u


def detector(nsamp, offsets, rot):
    """Pixels, weights (n x 3) and noiseless signal of one detector."""
    x_off, y_off, psi_det, eta = offsets
    t = np.arange(nsamp) / FSAMP_HZ
    lon = np.radians(RING_STEP_DEG) * np.floor(t / RING_S)
    phi = 2.0 * np.pi * t / SPIN_PERIOD_S
    axis = np.stack([np.cos(lon), np.sin(lon), np.zeros_like(lon)], axis=1)
    u = np.stack([-np.sin(lon), np.cos(lon), np.zeros_like(lon)], axis=1)
    v = np.array([0.0, 0.0, 1.0])
    op = np.radians(OPENING_DEG)
    cphi, sphi = np.cos(phi)[:, None], np.sin(phi)[:, None]
    bore = np.cos(op) * axis + np.sin(op) * (cphi * u + sphi * v)
    scan = -sphi * u + cphi * v
    cross = np.cross(bore, scan)
    direc = bore + x_off * scan + y_off * cross
    direc /= np.linalg.norm(direc, axis=1)[:, None]
    pol = np.cos(psi_det) * scan + np.sin(psi_det) * cross
    direc = direc @ rot.T
    pol = pol @ rot.T
    east = np.cross(np.array([0.0, 0.0, 1.0]), direc)
    east /= np.linalg.norm(east, axis=1)[:, None]
    north = np.cross(direc, east)
    psi = np.arctan2(np.sum(pol * east, axis=1), np.sum(pol * north, axis=1))
    weights = np.stack(
        [np.ones(nsamp), eta * np.cos(2.0 * psi), eta * np.sin(2.0 * psi)], axis=1
    )
    pixels = hp.vec2pix(NSIDE, direc[:, 0], direc[:, 1], direc[:, 2], nest=True)
    i, q, uu = sky(direc)
    signal = weights[:, 0] * i + weights[:, 1] * q + weights[:, 2] * uu
    return pixels.astype(np.int64), weights, signal


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    ndet = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    nsamp = int(sys.argv[3]) if len(sys.argv) > 3 else 2_000_000
    assert sys.byteorder == "little", "files are written in native (little-endian) order"
    out.mkdir(parents=True, exist_ok=True)
    rot = rotation_x(np.radians(TILT_DEG))
    sigmas = np.array([1.0 + 0.1 * d for d in range(ndet)])
    detweights = 1.0 / sigmas**2
    with open(out / "pixels.u64", "wb") as fp, open(
        out / "weights.f64", "wb"
    ) as fw, open(out / "signal.f64", "wb") as fs:
        for d, offsets in enumerate(focal_plane(ndet)):
            pixels, weights, signal = detector(nsamp, offsets, rot)
            rng = np.random.default_rng(SEED + d)
            signal = signal + sigmas[d] * rng.standard_normal(nsamp)
            pixels.astype(np.uint64).tofile(fp)
            np.ascontiguousarray(weights, dtype=np.float64).tofile(fw)
            signal.astype(np.float64).tofile(fs)
    detweights.astype(np.float64).tofile(out / "detweights.f64")
    (out / "meta.txt").write_text(
        f"nside {NSIDE}\nndet {ndet}\nnsamp {nsamp}\nsubmap_size {SUBMAP_SIZE}\n"
        f"fsamp_hz {FSAMP_HZ}\nring_step_deg {RING_STEP_DEG}\nseed {SEED}\n"
    )
    print(f"wrote {ndet} x {nsamp} samples to {out}")


if __name__ == "__main__":
    main()
