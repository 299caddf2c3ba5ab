"""TOAST 3 side of benches/mapmake_toast.sh, and the comparison table.

Run with the bench's own virtual environment (toast, healpy, h5py, numpy):

  mapmake_toast.py toast SIM_DIR RUN_DIR OUT_DIR BASELINE_S RCOND CONVERGENCE ITER_MAX
      Loads skypipe's calibrated timestreams (RUN_DIR/calibrate) and dense pointing
      (RUN_DIR/pointing: NESTED pixels, I/Q/U weights) into TOAST observations, then runs
      toast.ops.MapMaker (BinMap + templates.Offset of BASELINE_S seconds, no noise prior)
      once. Writes OUT_DIR/toast_binmap.fits, toast_map.fits, toast_hits.fits,
      toast_rcond.fits and OUT_DIR/timing.json: CPU seconds (user + sys of this process,
      resource.getrusage) of loading and of MapMaker.apply alone, wall seconds, samples.

  mapmake_toast.py toast-residual OUT_DIR
      Prints the |r|/|b| TOAST's PCG ended at (its log has |r|^2/|b|^2).

  mapmake_toast.py report SIM_DIR RESULTS_JSON KIND:LABEL:DIR...
      KIND is skypipe (DIR: a run directory with mapmake/ and mapmake-cpu.json) or toast
      (DIR: an OUT_DIR above). Residual RMS of each binned and destriped map against the
      input sky (SIM_DIR/truth/sky.h5) over the pixels every map solved, and over those of
      them with rcond >= 0.1 in skypipe's binned map; CPU per sample; the tables and the
      ratios, also written to RESULTS_JSON.

No skypipe code is imported: the files are read as docs/formats.md describes them.
"""

import json
import os
import re
import resource
import sys
import time


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def observation_list(sim_dir):
    listing = json.loads(read_text(os.path.join(sim_dir, "observations.json")))
    return listing, [o["obs"] for o in listing["observations"]]


def run_toast(sim_dir, run_dir, out_dir, baseline_s, rcond, convergence, iter_max):
    import astropy.units as u
    import h5py
    import numpy as np
    from astropy.table import QTable

    import toast
    import toast.ops
    from toast.noise import Noise
    from toast.observation import default_values as defaults
    from toast.templates import Offset

    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    listing, numbers = observation_list(sim_dir)
    with h5py.File(os.path.join(sim_dir, listing["focal_plane"]), "r") as f:
        dets = list(f["detectors"].keys())
        fp_attrs = {d: dict(f["detectors"][d].attrs) for d in dets}
    rate = float(fp_attrs[dets[0]]["rate_hz"])
    # Focal-plane table: TOAST needs names and quaternions; the pointing itself is loaded
    # below (pixels and weights), so TOAST never expands it.
    table = QTable(
        {
            "name": dets,
            "quat": [np.asarray(fp_attrs[d]["quat"], dtype=np.float64) for d in dets],
            "pol_efficiency": [float(fp_attrs[d]["pol_efficiency"]) for d in dets],
        }
    )
    focalplane = toast.Focalplane(detector_data=table, sample_rate=rate * u.Hz)
    telescope = toast.Telescope("skypipe-sim", focalplane=focalplane, site=toast.SpaceSite("L2"))
    # Detector weights exactly as skypipe-mapmake's noise_weights: 1 / (NET^2 rate), K^-2.
    # The PSD is only there because a Noise model needs one (flat at NET^2).
    freqs = np.linspace(0.0, rate / 2, 64) * u.Hz
    net = {d: float(fp_attrs[d]["net_k_sqrt_s"]) for d in dets}
    noise = Noise(
        detectors=dets,
        freqs={d: freqs for d in dets},
        psds={d: np.full(64, net[d] ** 2) * u.K**2 * u.s for d in dets},
        detweights={d: 1.0 / (net[d] ** 2 * rate) / u.K**2 for d in dets},
    )

    data = toast.Data(comm=toast.Comm())
    nside = None
    samples = 0
    for obs in numbers:
        name = f"obs={obs:04d}.h5"
        with h5py.File(os.path.join(run_dir, "pointing", name), "r") as pf, h5py.File(
            os.path.join(run_dir, "calibrate", name), "r"
        ) as cf:
            if pf.attrs["ordering"] != "NESTED":
                raise SystemExit("the bench expects NESTED pointing files")
            nside = int(pf.attrs["nside"])
            n = len(cf["detectors"][dets[0]]["signal"])
            ob = toast.Observation(
                data.comm, telescope, n_samples=n, name=f"obs{obs:04d}", uid=obs + 1
            )
            first = int(cf["detectors"][dets[0]].attrs.get("first_sample", 0))
            t0 = float(cf["detectors"][dets[0]].attrs["t0"])
            ob.shared.create_column(defaults.times, (n,), np.float64)
            ob.shared[defaults.times].set(t0 + (first + np.arange(n)) / rate, fromrank=0)
            # A boresight TOAST's detector-pointing operator looks up but does not use here.
            ob.shared.create_column(defaults.boresight_radec, (n, 4), np.float64)
            bore = np.zeros((n, 4))
            bore[:, 3] = 1.0
            ob.shared[defaults.boresight_radec].set(bore, fromrank=0)
            # No sample is flagged for the whole focal plane (TOAST's templates look these up).
            ob.shared.create_column(defaults.shared_flags, (n,), np.uint8)
            ob.shared[defaults.shared_flags].set(np.zeros(n, np.uint8), fromrank=0)
            ob.detdata.create("signal", dtype=np.float64, units=u.K)
            ob.detdata.create("flags", dtype=np.uint8)
            ob.detdata.create("pixels", dtype=np.int64)
            ob.detdata.create("weights", sample_shape=(3,), dtype=np.float64)
            ob.detdata.create("quats", sample_shape=(4,), dtype=np.float64)
            for d in dets:
                c, p = cf["detectors"][d], pf["detectors"][d]
                ob.detdata["signal"][d] = c["signal"][...]
                ob.detdata["flags"][d] = c["flags"][...]
                ob.detdata["pixels"][d] = p["pixels"][...].astype(np.int64)
                ob.detdata["weights"][d] = p["weights"][...]
                samples += n
            ob["noise_model"] = noise
            data.obs.append(ob)
    load_cpu, load_wall = cpu_seconds() - cpu0, time.perf_counter() - wall0

    # Pointing operators that find pixels, weights (and detector quaternions) already in
    # every observation and therefore compute nothing.
    det_pointing = toast.ops.PointingDetectorSimple(quats="quats")
    pixels = toast.ops.PixelsHealpix(
        nside=nside,
        nside_submap=min(16, nside),
        nest=True,
        detector_pointing=det_pointing,
        pixels="pixels",
    )
    weights = toast.ops.StokesWeights(
        mode="IQU", detector_pointing=det_pointing, weights="weights"
    )
    binner = toast.ops.BinMap(
        pixel_dist="pixel_dist",
        pixel_pointing=pixels,
        stokes_weights=weights,
        noise_model="noise_model",
        det_flags="flags",
        det_flag_mask=255,
        full_pointing=True,
    )
    offset = Offset(
        name="baselines",
        times=defaults.times,
        step_time=baseline_s * u.s,
        noise_model="noise_model",
        use_noise_prior=False,
        det_flags="flags",
        det_flag_mask=255,
    )
    mapmaker = toast.ops.MapMaker(
        name="toast",
        det_data="signal",
        binning=binner,
        template_matrix=toast.ops.TemplateMatrix(templates=[offset]),
        solve_rcond_threshold=rcond,
        map_rcond_threshold=rcond,
        convergence=convergence,
        iter_max=iter_max,
        write_binmap=True,
        write_map=True,
        write_hits=True,
        write_rcond=True,
        write_cov=False,
        write_invcov=False,
        write_float64=True,
        output_dir=out_dir,
    )
    cpu1, wall1 = cpu_seconds(), time.perf_counter()
    mapmaker.apply(data)
    map_cpu, map_wall = cpu_seconds() - cpu1, time.perf_counter() - wall1
    step = int(np.rint(baseline_s * rate))
    timing = {
        "toast": toast.__version__,
        "samples": samples,
        "nside": nside,
        "baseline_samples": step,
        "convergence": convergence,
        "iter_max": iter_max,
        "rcond": rcond,
        "load_cpu_s": load_cpu,
        "load_wall_s": load_wall,
        "mapmaker_cpu_s": map_cpu,
        "mapmaker_wall_s": map_wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(os.path.join(out_dir, "timing.json"), "w", encoding="utf-8") as f:
        json.dump(timing, f, indent=1)
    print(json.dumps(timing))


def toast_iterations(log_path):
    """Iterations, final |r|/|b| (TOAST logs |r|^2/|b|^2) and how its PCG ended, from its log."""
    iters, last, how = 0, None, "iteration cap"
    for line in read_text(log_path).splitlines():
        m = re.search(r"MapMaker iteration\s+(\d+), relative residual = ([0-9.eE+-]+)", line)
        if m:
            iters, last = int(m.group(1)) + 1, float(m.group(2)) ** 0.5
        if "PCG converged" in line:
            how = "converged"
        elif "PCG stalled" in line:
            how = "stalled"
    return iters, last, how


def toast_residual(out_dir):
    """Print TOAST's final |r|/|b| (the shell passes it to skypipe as a tolerance)."""
    print(f"{toast_iterations(os.path.join(out_dir, 'toast.log'))[1]:.3e}")


def report(sim_dir, results_path, entries):
    import h5py
    import healpy as hp
    import numpy as np

    with h5py.File(os.path.join(sim_dir, "truth", "sky.h5"), "r") as f:
        sky = f["map"][...].T  # (3, npix)
        if f["map"].attrs["ordering"] != "RING":
            sky = np.array([hp.reorder(s, n2r=True) for s in sky])

    def read(path, fields):
        return np.array(hp.read_map(path, field=fields))

    rows, summary, rcond = [], None, None
    for kind, label, d in entries:
        if kind == "skypipe":
            s = json.loads(read_text(os.path.join(d, "mapmake", "summary.json")))
            cpu = json.loads(read_text(os.path.join(d, "mapmake-cpu.json")))
            maps = []
            for name in ("binned", "destriped"):
                m = read(os.path.join(d, "mapmake", f"map_{name}.fits"), (0, 1, 2, 4))
                maps.append((m[:3], np.all(m[:3] != hp.UNSEEN, axis=0)))
                if rcond is None and name == "binned":
                    rcond = m[3]
            summary = summary or s
            how = "converged" if s["converged"] else "iteration cap"
            rows.append(
                {
                    "name": label,
                    "samples": s["samples"],
                    "baseline_samples": s["baseline_samples"],
                    "cpu_s": cpu["user_s"] + cpu["sys_s"],
                    "solve_wall_s": s["seconds"][1],
                    "iterations": s["iterations"],
                    "stop": f"{how}, |r|/|b| {s['residual']:.1e}",
                    "maps": maps,
                }
            )
        else:
            t = json.loads(read_text(os.path.join(d, "timing.json")))
            iters, last, how = toast_iterations(os.path.join(d, "toast.log"))
            hits = read(os.path.join(d, "toast_hits.fits"), 0)
            rc = read(os.path.join(d, "toast_rcond.fits"), 0)
            maps = []
            for name in ("binmap", "map"):
                m = read(os.path.join(d, f"toast_{name}.fits"), (0, 1, 2))
                good = (hits > 0) & (rc >= t["rcond"]) & np.all(np.isfinite(m), axis=0)
                maps.append((m, good & np.all(m != hp.UNSEEN, axis=0)))
            rows.append(
                {
                    "name": label,
                    "samples": t["samples"],
                    "baseline_samples": t["baseline_samples"],
                    "cpu_s": t["load_cpu_s"] + t["mapmaker_cpu_s"],
                    "load_cpu_s": t["load_cpu_s"],
                    "mapmaker_cpu_s": t["mapmaker_cpu_s"],
                    "iterations": iters,
                    "stop": f"{how}, |r|/|b| {last:.1e}",
                    "maps": maps,
                }
            )
    samples = summary["samples"]
    for r in rows:
        if r["samples"] != samples or r["baseline_samples"] != summary["baseline_samples"]:
            raise SystemExit(f"{r['name']}: other samples or baseline length than skypipe's")
    solved = np.ones(sky.shape[1], dtype=bool)
    for r in rows:
        for _, good in r["maps"]:
            solved &= good
    sets = {"all": solved, "rcond>=0.1": solved & (rcond >= 0.1)}

    def rms(m, sel):
        res = m[:, sel] - sky[:, sel]
        # I: the destriped map is defined up to a monopole (a common offset of every
        # baseline), so the mean residual is removed from I, for every map alike.
        res[0] -= res[0].mean()
        return [float(np.sqrt(np.mean(x * x))) for x in res]

    print(
        f"\n{samples} samples, nside {summary['nside']}, baselines of "
        f"{summary['baseline_samples']} samples; CPU = user+sys seconds, one thread"
    )
    head = ["map-maker", "CPU s", "ns/sample", "iterations", "PCG stop"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        r["ns_per_sample"] = 1e9 * r["cpu_s"] / samples
        cells = [r["name"], f"{r['cpu_s']:.2f}", f"{r['ns_per_sample']:.0f}", str(r["iterations"]), r["stop"]]
        print("| " + " | ".join(cells) + " |")
    for key, sel in sets.items():
        print(
            f"\nResidual RMS against the input sky, uK_CMB, over the {np.count_nonzero(sel)} pixels "
            f"every map solved{'' if key == 'all' else ' with rcond >= 0.1'} (I: mean removed)"
        )
        head = ["map-maker", "binned I", "Q", "U", "destriped I", "Q", "U"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            vals = rms(r["maps"][0][0], sel) + rms(r["maps"][1][0], sel)
            r[f"residual_uk_{key}"] = [1e6 * v for v in vals]
            print("| " + " | ".join([r["name"]] + [f"{1e6 * v:.2f}" for v in vals]) + " |")
    print()
    toast_rows = [r for r in rows if "mapmaker_cpu_s" in r]
    for r in rows:
        if r in toast_rows:
            continue
        for t in toast_rows:
            print(
                f"{r['name']} vs {t['name']}: {t['cpu_s'] / r['cpu_s']:.2f}x less CPU "
                f"({t['mapmaker_cpu_s'] / r['cpu_s']:.2f}x against MapMaker.apply alone); "
                "destriped residual I/Q/U, all pixels: "
                + "/".join(
                    f"{a / b:.3f}" for a, b in zip(r["residual_uk_all"][3:], t["residual_uk_all"][3:])
                )
                + " of TOAST's (goal: >= 3x less CPU, residual <= 1)"
            )
    for r in rows:
        del r["maps"]
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump({"samples": samples, "rows": rows}, f, indent=1)


def main(argv):
    if len(argv) == 9 and argv[1] == "toast":
        run_toast(argv[2], argv[3], argv[4], float(argv[5]), float(argv[6]), float(argv[7]), int(argv[8]))
    elif len(argv) == 3 and argv[1] == "toast-residual":
        toast_residual(argv[2])
    elif len(argv) >= 5 and argv[1] == "report":
        entries = [tuple(e.split(":", 2)) for e in argv[4:]]
        if any(len(e) != 3 or e[0] not in ("skypipe", "toast") for e in entries):
            raise SystemExit(__doc__)
        report(argv[2], argv[3], entries)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
