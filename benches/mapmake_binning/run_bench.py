"""Binned accumulation side by side: skypipe, TOAST's compiled kernels and numpy bincount.

All three bin the same samples (written by gen_data.py into DIR) into hits, the 6 unique terms
of the noise-weighted 3x3 matrix and the noise-weighted I/Q/U right-hand side, at nside 2048
NESTED with sub-maps of 2^14 pixels. The implementations run interleaved, one timed pass each
per round, so a change of machine load affects them alike; figures are medians over rounds.

- skypipe: `crates/core/examples/bin_samples.rs` (path given as RUST_BIN), one process per
  round; it times `BinAccumulator::accumulate` itself and writes its sums into DIR.
- TOAST (3.x, `toast._libtoast`, compiled, one OpenMP thread, no accelerator):
  `build_noise_weighted` (one call for all detectors, global pixels, as BuildNoiseWeighted
  calls it) + `cov_accum_diag_invnpp` + `cov_accum_diag_hits` (one call per detector on local
  sub-map / sub-pixel indices, as BuildInverseCovariance and BuildHitMap call them); and the
  fused `cov_accum_diag` (hits, matrix and right-hand side in one pass per detector). The
  sub-map index arrays those kernels need are computed once, outside their timing (their
  numpy cost is reported apart).
- numpy: `np.bincount` with weights over dense full-sky arrays (hits, 6 matrix terms, 3 rhs).

After the timing, every implementation's output is checked against skypipe's: hits exactly,
matrix terms relative to the pixel's C_II, right-hand side relative to the pixel's largest
|b|; the run fails if any difference exceeds 1e-12.

Usage: python run_bench.py DIR RUST_BIN [ROUNDS=5]
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import toast  # noqa: E402
import toast._libtoast as libtoast  # noqa: E402
from toast.intervals import interval_dtype  # noqa: E402

PAIRS = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
TOLERANCE = 1e-12


def load(d):
    """The shared samples, detector-major, as numpy arrays."""
    meta = {}
    for line in (d / "meta.txt").read_text().splitlines():
        k, v = line.split(None, 1)
        meta[k] = v
    ndet, nsamp = int(meta["ndet"]), int(meta["nsamp"])
    return dict(
        nside=int(meta["nside"]),
        submap=int(meta["submap_size"]),
        ndet=ndet,
        nsamp=nsamp,
        pixels=(
            np.fromfile(d / "pixels.u64", dtype="<u8").view(np.int64).reshape(ndet, nsamp)
        ),
        weights=np.fromfile(d / "weights.f64", dtype="<f8").reshape(ndet, nsamp, 3),
        signal=np.fromfile(d / "signal.f64", dtype="<f8").reshape(ndet, nsamp),
        detweights=np.fromfile(d / "detweights.f64", dtype="<f8"),
    )


class Toast:
    """TOAST's buffers for the locally touched sub-maps, and the calls that fill them."""

    def __init__(self, data):
        self.d = data
        s = data["submap"]
        shift = s.bit_length() - 1
        npix = 12 * data["nside"] ** 2
        self.local = np.unique(data["pixels"] >> shift)
        self.global2local = np.full(npix // s, -1, dtype=np.int64)
        self.global2local[self.local] = np.arange(self.local.size, dtype=np.int64)
        nloc = self.local.size
        self.zmap = np.zeros((nloc, s, 3))
        self.invnpp = np.zeros(nloc * s * 6)
        self.hits = np.zeros(nloc * s, dtype=np.int64)
        self.f_zmap = np.zeros(nloc * s * 3)
        self.f_invnpp = np.zeros(nloc * s * 6)
        self.f_hits = np.zeros(nloc * s, dtype=np.int64)
        t0 = time.perf_counter()
        self.local_sm = [self.global2local[p >> shift] for p in data["pixels"]]
        self.local_pix = [p & (s - 1) for p in data["pixels"]]
        self.index_prep_s = time.perf_counter() - t0
        ndet = data["ndet"]
        self.idx = np.arange(ndet, dtype=np.int32)
        self.intervals = np.zeros(1, dtype=interval_dtype)
        self.intervals["first"] = 0
        self.intervals["last"] = data["nsamp"]  # exclusive in TOAST 3
        self.intervals["stop"] = data["nsamp"] / 180.0
        self.no_det_flags = np.zeros((1, 1), dtype=np.uint8)
        self.no_shared_flags = np.zeros(1, dtype=np.uint8)
        self.wflat = [w.reshape(-1) for w in data["weights"]]

    def operators(self):
        """The kernels of BuildNoiseWeighted, BuildInverseCovariance, BuildHitMap; seconds."""
        for a in (self.zmap, self.invnpp, self.hits):
            a.fill(0)
        d, nloc, s = self.d, self.local.size, self.d["submap"]
        t = [time.perf_counter()]
        libtoast.build_noise_weighted(
            self.global2local, self.zmap, self.idx, d["pixels"], self.idx, d["weights"],
            self.idx, d["signal"], self.idx, self.no_det_flags, d["detweights"], 0,
            self.intervals, self.no_shared_flags, 0, False,
        )
        t.append(time.perf_counter())
        for k in range(d["ndet"]):
            libtoast.cov_accum_diag_invnpp(
                nloc, s, 3, self.local_sm[k], self.local_pix[k], self.wflat[k],
                float(d["detweights"][k]), self.invnpp, False,
            )
        t.append(time.perf_counter())
        for k in range(d["ndet"]):
            libtoast.cov_accum_diag_hits(
                nloc, s, 1, self.local_sm[k], self.local_pix[k], self.hits, False
            )
        t.append(time.perf_counter())
        return np.diff(t)

    def fused(self):
        """The single-pass `cov_accum_diag` over every detector; seconds."""
        for a in (self.f_zmap, self.f_invnpp, self.f_hits):
            a.fill(0)
        d, nloc, s = self.d, self.local.size, self.d["submap"]
        t0 = time.perf_counter()
        for k in range(d["ndet"]):
            libtoast.cov_accum_diag(
                nloc, s, 3, self.local_sm[k], self.local_pix[k], self.wflat[k],
                float(d["detweights"][k]), d["signal"][k], self.f_invnpp, self.f_hits,
                self.f_zmap,
            )
        return time.perf_counter() - t0


def bin_numpy(data):
    """Hits, matrix terms and rhs as dense full-sky arrays, with np.bincount."""
    npix = 12 * data["nside"] ** 2
    pix = data["pixels"].reshape(-1)
    w = data["weights"].reshape(-1, 3)
    nw = np.repeat(data["detweights"], data["nsamp"])
    hits = np.bincount(pix, minlength=npix)
    wn = w * nw[:, None]
    cov = [np.bincount(pix, weights=wn[:, i] * w[:, j], minlength=npix) for i, j in PAIRS]
    dn = data["signal"].reshape(-1) * nw
    rhs = [np.bincount(pix, weights=w[:, i] * dn, minlength=npix) for i in range(3)]
    return hits, cov, rhs


def run_rust(rust_bin, d):
    """One skypipe process: warm and cold ns/sample plus its sizes."""
    out = subprocess.run([rust_bin, str(d), "1"], check=True, capture_output=True, text=True)
    return dict(line.split("=", 1) for line in out.stdout.split())


def compare(name, hits, cov, rhs, ours):
    """Maximum differences to skypipe's records (same pixel order); raises past TOLERANCE."""
    h = ours[:, 0]
    if not np.array_equal(hits.astype(np.float64), h):
        raise SystemExit(f"{name}: hits differ from skypipe's")
    c, b = ours[:, 1:7], ours[:, 7:10]
    seen = h > 0
    if np.any(cov[~seen]) or np.any(rhs[~seen]) or np.any(c[~seen]) or np.any(b[~seen]):
        raise SystemExit(f"{name}: non-zero sums in pixels without hits")
    dc = np.abs(cov[seen] - c[seen]) / c[seen, :1]
    scale_b = np.maximum(np.abs(b[seen]).max(axis=1, keepdims=True), np.finfo(float).tiny)
    db = np.abs(rhs[seen] - b[seen]) / scale_b
    res = dict(
        pixels_seen=int(seen.sum()),
        matrix_max_rel=float(dc.max()),
        rhs_max_rel=float(db.max()),
        matrix_identical=float(np.mean(cov[seen] == c[seen])),
        rhs_identical=float(np.mean(rhs[seen] == b[seen])),
    )
    if max(res["matrix_max_rel"], res["rhs_max_rel"]) > TOLERANCE:
        raise SystemExit(f"{name}: outputs differ from skypipe's: {res}")
    return res


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    d, rust_bin = Path(sys.argv[1]), sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    data = load(d)
    n = data["ndet"] * data["nsamp"]
    tst = Toast(data)
    tst.operators()  # warm-up: pages of the buffers and inputs touched
    tst.fused()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    runs = {k: [] for k in ("warm", "cold", "bnw", "invnpp", "hits", "ops", "fused", "numpy")}
    rust = {}
    np_out = None
    for r in range(rounds):
        rust = run_rust(rust_bin, d)
        runs["warm"].append(float(rust["warm_ns_per_sample"]))
        runs["cold"].append(float(rust["cold_ns_per_sample"]))
        parts = tst.operators() * 1e9 / n
        for k, v in zip(("bnw", "invnpp", "hits"), parts):
            runs[k].append(v)
        runs["ops"].append(parts.sum())
        runs["fused"].append(tst.fused() * 1e9 / n)
        np_out = None  # free the previous round's dense maps first
        t0 = time.perf_counter()
        np_out = bin_numpy(data)
        runs["numpy"].append((time.perf_counter() - t0) * 1e9 / n)
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1]:.1f}" for k, v in runs.items()), flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    # Equality of outputs on the shared data (skypipe's from its last round).
    subs = np.fromfile(d / "ours_submaps.u64", dtype="<u8").astype(np.int64)
    ours = np.fromfile(d / "ours_records.f64", dtype="<f8").reshape(-1, 10)
    if not np.array_equal(subs, tst.local):
        raise SystemExit("skypipe and TOAST touched different sub-maps")
    s = data["submap"]
    checks = {
        "toast_operators": compare(
            "TOAST operator kernels", tst.hits, tst.invnpp.reshape(-1, 6),
            tst.zmap.reshape(-1, 3), ours),
        "toast_fused": compare(
            "TOAST cov_accum_diag", tst.f_hits, tst.f_invnpp.reshape(-1, 6),
            tst.f_zmap.reshape(-1, 3), ours),
    }
    hits, cov, rhs = np_out
    if int(hits.sum()) != n:
        raise SystemExit("numpy: total hits differ")
    idx = (subs[:, None] * s + np.arange(s)).reshape(-1)
    checks["numpy"] = compare(
        "numpy", hits[idx], np.stack([c[idx] for c in cov], axis=1),
        np.stack([b[idx] for b in rhs], axis=1), ours)
    del np_out, hits, cov, rhs

    med = {k: float(np.median(v)) for k, v in runs.items()}
    npix = 12 * data["nside"] ** 2
    mem = dict(
        sparse=int(rust["sparse_bytes"]) + int(rust["sparse_index_bytes"]),
        toast_local=tst.local.size * s * (8 + 6 * 8 + 3 * 8),
        dense1024=int(rust["dense_bytes_nside1024"]),
        dense2048=int(rust["dense_bytes_nside2048"]),
        numpy=npix * 8 * 10,
    )
    result = dict(
        toast_version=toast.__version__, numpy_version=np.__version__,
        samples=n, ndet=data["ndet"], rounds=rounds, load_before=load_before,
        load_after=load_after, median_ns_per_sample=med, runs_ns_per_sample=runs,
        toast_index_prep_ns_per_sample=tst.index_prep_s * 1e9 / n,
        n_submaps=int(rust["n_submaps"]), n_touched=int(rust["n_touched"]),
        pixels_seen=checks["numpy"]["pixels_seen"], memory_bytes=mem, checks=checks,
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
    )
    (d / "results.json").write_text(json.dumps(result, indent=1))
    report(result)


def report(r):
    """The table printed at the end (markdown)."""
    m = r["median_ns_per_sample"]
    ref = m["ops"]
    print(f"\n{r['samples']:,} samples ({r['ndet']} detectors), nside 2048 NESTED, sub-maps of "
          f"2^14 pixels, {r['n_touched']} of {r['n_submaps']} sub-maps touched, "
          f"{r['pixels_seen']:,} pixels seen; median of {r['rounds']} interleaved rounds; "
          f"toast {r['toast_version']}, numpy {r['numpy_version']}; one thread each; "
          f"load average {' '.join(r['load_before'])} before, {' '.join(r['load_after'])} after; "
          f"{r['date']}\n")
    print("| implementation | ns/sample | Msamples/s per core | speed vs TOAST operator kernels | "
          "output vs skypipe |")
    print("|---|---|---|---|---|")
    c = r["checks"]

    def chk(k):
        x = c[k]
        return (f"hits equal; matrix ≤ {x['matrix_max_rel']:.1e}, rhs ≤ {x['rhs_max_rel']:.1e} "
                f"rel. ({100 * x['matrix_identical']:.0f} % / {100 * x['rhs_identical']:.0f} % "
                "bit-identical)")

    rows = [
        ("skypipe `BinAccumulator::accumulate` (sub-maps allocated)", m["warm"], "reference"),
        ("skypipe, new accumulator (first-touch allocation included)", m["cold"], "same code"),
        ("TOAST `build_noise_weighted` + `cov_accum_diag_invnpp` + `cov_accum_diag_hits`",
         m["ops"], chk("toast_operators")),
        (f"  of which build_noise_weighted {m['bnw']:.1f}, invnpp {m['invnpp']:.1f}, "
         f"hits {m['hits']:.1f}", None, ""),
        ("TOAST `cov_accum_diag` (fused, one pass)", m["fused"], chk("toast_fused")),
        ("numpy `bincount` × 10, dense full sky", m["numpy"], chk("numpy")),
    ]
    for name, ns, note in rows:
        if ns is None:
            print(f"| {name} | | | | |")
        else:
            print(f"| {name} | {ns:.1f} | {1e3 / ns:.1f} | {ref / ns:.2f}× | {note} |")
    print(f"\nTOAST's sub-map index arrays (numpy, outside its timing): "
          f"{r['toast_index_prep_ns_per_sample']:.1f} ns/sample")
    mem = r["memory_bytes"]
    print("\n| accumulator memory (hits + 6 matrix terms + 3 rhs, 8 B each) | MB |")
    print("|---|---|")
    print(f"| skypipe sparse: {r['n_touched']} sub-maps × 16,384 px × 10 × 8 B (+ index) | "
          f"{mem['sparse'] / 1e6:,.0f} |")
    print(f"| TOAST local sub-maps (same {r['n_touched']}) | {mem['toast_local'] / 1e6:,.0f} |")
    print(f"| dense full sky, nside 1024 | {mem['dense1024'] / 1e6:,.0f} |")
    print(f"| dense full sky, nside 2048 (numpy's bincount outputs) | "
          f"{mem['dense2048'] / 1e6:,.0f} |")


if __name__ == "__main__":
    main()
