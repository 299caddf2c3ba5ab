"""TOAST 3 side of benches/mapmake_toast.sh, and the comparison table.

Run with the bench's own virtual environment (toast, healpy, h5py, numpy):

  mapmake_toast.py toast SIM_DIR RUN_DIR OUT_DIR BASELINE_S RCOND CONVERGENCE ITER_MAX
      Loads skypipe's calibrated timestreams (RUN_DIR/calibrate) and dense pointing
      (RUN_DIR/pointing: NESTED pixels, I/Q/U weights) into TOAST observations, then runs
      toast.ops.MapMaker (BinMap + templates.Offset of BASELINE_S seconds, no noise prior)
      once. Writes OUT_DIR/toast_binmap.fits, toast_map.fits, toast_hits.fits,
      toast_rcond.fits and OUT_DIR/timing.json: CPU seconds (user + sys of this process,
      resource.getrusage) of loading and of MapMaker.apply alone, wall seconds, samples.

  mapmake_toast.py report SIM_DIR RUN_DIR RESULTS_JSON TOAST_DIRS... [--labels L1,L2,...]
      Residual RMS of the binned and destriped maps of skypipe (RUN_DIR/mapmake) and of each
      TOAST output directory against the input sky (SIM_DIR/truth/sky.h5), over the pixels
      every map solved; CPU per sample; the table and the ratios, also written to RESULTS_JSON.

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
    """Iterations and final relative residual (TOAST's is ||r||^2 / ||b||^2) from its log."""
    iters, last, how = 0, None, "iteration cap"
    for line in read_text(log_path).splitlines():
        m = re.search(r"MapMaker iteration\s+(\d+), relative residual = ([0-9.eE+-]+)", line)
        if m:
            iters, last = int(m.group(1)) + 1, float(m.group(2))
        if "PCG converged" in line:
            how = "converged"
        elif "PCG stalled" in line:
            how = "stalled"
    return iters, last, how


def report(sim_dir, run_dir, results_path, toast_dirs, labels):
    import h5py
    import healpy as hp
    import numpy as np

    with h5py.File(os.path.join(sim_dir, "truth", "sky.h5"), "r") as f:
        sky = f["map"][...].T  # (3, npix)
        if f["map"].attrs["ordering"] != "RING":
            sky = np.array([hp.reorder(s, n2r=True) for s in sky])
    summary = json.loads(read_text(os.path.join(run_dir, "mapmake", "summary.json")))
    cpu = json.loads(read_text(os.path.join(run_dir, "mapmake-cpu.json")))

    def skypipe_map(kind):
        m = np.array(hp.read_map(os.path.join(run_dir, "mapmake", f"map_{kind}.fits"), field=(0, 1, 2)))
        return m, np.all(m != hp.UNSEEN, axis=0)

    def toast_map(d, kind):
        m = np.array(hp.read_map(os.path.join(d, f"toast_{kind}.fits"), field=(0, 1, 2)))
        hits = hp.read_map(os.path.join(d, "toast_hits.fits"))
        rcond = hp.read_map(os.path.join(d, "toast_rcond.fits"))
        good = (hits > 0) & (rcond >= summary_rcond) & np.all(np.isfinite(m), axis=0)
        good &= np.all(m != hp.UNSEEN, axis=0)
        return m, good

    summary_rcond = cpu["rcond_min"]
    maps = {"skypipe": (skypipe_map("binned"), skypipe_map("destriped"))}
    timings = {}
    for d, label in zip(toast_dirs, labels):
        maps[label] = (toast_map(d, "binmap"), toast_map(d, "map"))
        timings[label] = json.loads(read_text(os.path.join(d, "timing.json")))
        timings[label]["iterations"] = toast_iterations(os.path.join(d, "toast.log"))
    common = np.ones(sky.shape[1], dtype=bool)
    for binned, destriped in maps.values():
        common &= binned[1] & destriped[1]
    npix_obs = int(np.count_nonzero(common))

    def rms(m):
        r = m[:, common] - sky[:, common]
        # I: the destriped map is defined up to a monopole (a common offset of every
        # baseline), so the mean residual is removed from I, for every map alike.
        r[0] -= r[0].mean()
        return [float(np.sqrt(np.mean(x * x))) for x in r]

    samples = summary["samples"]
    rows = []
    sp_solve = summary["seconds"][1]
    rows.append(
        {
            "name": "skypipe-mapmake",
            "cpu_s": sp_solve,
            "cpu_what": "map unit's solve phase (bin + destripe + solve), wall, 1 thread",
            "process_cpu_s": cpu["user_s"] + cpu["sys_s"],
            "iterations": f"{summary['iterations']} ({'converged' if summary['converged'] else 'cap'}, |r|/|b| {summary['residual']:.1e})",
            "binned": rms(maps["skypipe"][0][0]),
            "destriped": rms(maps["skypipe"][1][0]),
        }
    )
    for label in labels:
        t = timings[label]
        iters, last, how = t["iterations"]
        if t["samples"] != samples:
            raise SystemExit(f"TOAST read {t['samples']} samples, skypipe binned {samples}")
        if t["baseline_samples"] != summary["baseline_samples"]:
            raise SystemExit("baseline lengths differ")
        rows.append(
            {
                "name": label,
                "cpu_s": t["mapmaker_cpu_s"],
                "cpu_what": "MapMaker.apply, user+sys",
                "process_cpu_s": None,
                "load_cpu_s": t["load_cpu_s"],
                "iterations": f"{iters} ({how}, |r|/|b| {np.sqrt(last):.1e})" if last is not None else "?",
                "binned": rms(maps[label][0][0]),
                "destriped": rms(maps[label][1][0]),
            }
        )
    print(
        f"\n{samples} samples, nside {summary['nside']}, baseline {summary['baseline_samples']} samples, "
        f"{npix_obs} pixels solved in every map; residual RMS in uK_CMB (I after removing its mean)"
    )
    head = ["map-maker", "CPU s", "ns/sample", "iterations", "binned I", "Q", "U", "destriped I", "Q", "U"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["name"], f"{r['cpu_s']:.2f}", f"{1e9 * r['cpu_s'] / samples:.0f}", r["iterations"]]
        cells += [f"{1e6 * x:.3f}" for x in r["binned"] + r["destriped"]]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        f"skypipe-mapmake whole process (start-up, reading {summary['observations']} observations' files, "
        f"writing FITS), user+sys: {rows[0]['process_cpu_s']:.2f} s = "
        f"{1e9 * rows[0]['process_cpu_s'] / samples:.0f} ns/sample"
    )
    for r in rows[1:]:
        ratio = r["cpu_s"] / rows[0]["cpu_s"]
        whole = (r["cpu_s"] + r["load_cpu_s"]) / rows[0]["process_cpu_s"]
        lower = all(a <= b for a, b in zip(rows[0]["destriped"], r["destriped"]))
        print(
            f"vs {r['name']}: skypipe {ratio:.2f}x faster per core (map-making), {whole:.2f}x "
            f"(skypipe's whole process vs TOAST loading + MapMaker); destriped residual "
            f"{'equal or lower' if lower else 'HIGHER'} in I, Q and U "
            f"(goal: >= 3x and equal or lower)"
        )
        print(f"   TOAST loading the HDF5 files into observations: {r['load_cpu_s']:.2f} s CPU")
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump({"pixels": npix_obs, "samples": samples, "rows": rows}, f, indent=1)


def main(argv):
    if len(argv) >= 2 and argv[1] == "toast" and len(argv) == 9:
        run_toast(argv[2], argv[3], argv[4], float(argv[5]), float(argv[6]), float(argv[7]), int(argv[8]))
    elif len(argv) >= 6 and argv[1] == "report":
        args = argv[2:]
        labels = None
        if "--labels" in args:
            i = args.index("--labels")
            labels = args[i + 1].split(",")
            args = args[:i] + args[i + 2 :]
        toast_dirs = args[3:]
        labels = labels or [f"TOAST {i}" for i in range(len(toast_dirs))]
        report(args[0], args[1], args[2], toast_dirs, labels)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
