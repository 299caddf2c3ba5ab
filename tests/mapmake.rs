//! End-to-end tests of `skypipe-mapmake`: the chain sim → pointing → calibrate → mapmake under
//! mpirun, maps read back with Debian's healpy and compared with the simulation's input sky,
//! the same maps on 1, 2 and 3 ranks, destriping of 1/f noise, bad inputs and reruns.

mod common;

use common::cmb::*;
use common::*;
use std::path::{Path, PathBuf};

/// Simulation keys for noiseless data: no white or 1/f noise, so calibration with the true gains
/// and offsets leaves exactly the (pixelised) input sky.
const NOISELESS: &str = "net_uk_sqrt_s = 0.0\nfknee_hz = 0.0\nobservations = 6\n\
                         obs_duration_s = 120.0\nprecession_deg = 7.5\n\
                         precession_period_days = 0.01\ndetector_pairs = 4\n";

/// Simulates with `sim_keys`, runs pointing (`pointing` table) and calibrate (gains from the
/// truth table when `true_gains`) on two ranks into `dir/run`; returns (list, run dir).
fn prepare(dir: &Path, sim_keys: &str, pointing: &str, true_gains: bool) -> (PathBuf, PathBuf) {
    let list = simulate(dir, sim_keys);
    let run_dir = dir.join("run");
    let pcfg = stage_config(dir, "p.toml", "pointing", pointing);
    let gains = if true_gains {
        format!(
            "gains = \"table\"\ngain_table = \"{}\"",
            dir.join("data/truth/gains.h5").display()
        )
    } else {
        String::new()
    };
    let ccfg = stage_config(dir, "c.toml", "calibrate", &gains);
    for (stage, cfg) in [("pointing", &pcfg), ("calibrate", &ccfg)] {
        let out = run_stage(stage, cfg, &list, &run_dir, 2, &[]);
        assert_eq!(code(&out.status), 0, "{stage}: {}", text(&out));
    }
    (list, run_dir)
}

/// A `[mapmake]` config reading the chain's pointing and calibration from `inputs`.
fn map_config(dir: &Path, name: &str, inputs: &Path, body: &str) -> String {
    stage_config(
        dir,
        name,
        "mapmake",
        &format!(
            "pointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\nquicklook_width = 400\n{body}",
            inputs.join("pointing").display(),
            inputs.join("calibrate").display()
        ),
    )
}

fn summary(run_dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run_dir.join("mapmake/summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Reads the maps with healpy, compares them with the truth sky in well-conditioned pixels and
/// with each other; prints the figures.
const CHECK_NOISELESS: &str = r#"
import sys, h5py, numpy as np, healpy as hp
data, runs = sys.argv[1], sys.argv[2:]
truth = h5py.File(data + '/truth/sky.h5', 'r')
assert truth['map'].attrs['ordering'] == 'RING' and truth['map'].attrs['nside'] == 64
sky = truth['map'][:].T
rms = np.sqrt(np.mean(sky[0] ** 2))
spread = {}
for kind in ('binned', 'destriped'):
    maps = []
    for run in runs:
        f = run + f'/mapmake/map_{kind}.fits'
        m, h = hp.read_map(f, field=(0, 1, 2, 3, 4), h=True)
        h = dict(h)
        assert h['NSIDE'] == 64 and h['ORDERING'] == 'RING' and h['COORDSYS'] == 'G', h
        assert h['TUNIT1'].strip() == 'K_CMB', h
        # RCOND is float32: keep clear of the 1e-3 cut when telling cut from solved pixels.
        good = (m[4] > 1.001e-3) & (m[3] > 0)
        assert good.sum() > 200, good.sum()
        unseen = m[3] == 0
        assert (m[0][unseen] == hp.UNSEEN).all()
        cut = (m[3] > 0) & (m[4] < 0.999e-3)
        assert (m[0][cut] == hp.UNSEEN).all() and (m[0][good] != hp.UNSEEN).all()
        # Noiseless: no offsets to find, the destriped map is the sky too (up to its monopole).
        mono = np.mean(m[0][good] - sky[0][good]) if kind == 'destriped' else 0.0
        err = max(np.abs(m[c][good] - sky[c][good] - (mono if c == 0 else 0)).max()
                  for c in range(3))
        assert err < 1e-6 * rms, (run, kind, err / rms)
        maps.append(m)
    seen = maps[0][3] > 0
    assert all((maps[k][3] == maps[0][3]).all() for k in range(len(maps)))
    spread[kind] = max(np.abs(maps[k][c][seen] - maps[0][c][seen]).max()
                       for k in range(1, len(maps)) for c in range(3)) / rms
assert spread['binned'] <= 1e-12 and spread['destriped'] <= 1e-8, spread
print(f'ok pixels={int(good.sum())} err={err / rms:.2e} spread={spread}')
"#;

#[test]
fn noiseless_chain_maps_the_input_sky_identically_on_1_to_4_ranks_from_owned_submaps() {
    let tmp = tempfile::tempdir().unwrap();
    let (list, inputs) = prepare(tmp.path(), NOISELESS, POINTING, true);
    let mut runs = Vec::new();
    for ranks in [1, 2, 3, 4] {
        let run_dir = tmp.path().join(format!("map{ranks}"));
        // Open (issue 16): on these six noiseless observations no coarse space converges
        // within 200 iterations; one template per observation ends at 2.7e-6 and leaves the
        // map within 1e-6 of the sky, the default (per detector) at 1.2e-5 and 1.2e-6.
        let cfg = map_config(
            tmp.path(),
            &format!("m{ranks}.toml"),
            &inputs,
            "coarse_space = \"observation\"\ncoarse_segments = 1",
        );
        let out = run_stage("mapmake", &cfg, &list, &run_dir, ranks, &[]);
        assert_eq!(code(&out.status), 0, "{ranks} ranks: {}", text(&out));
        let mut expected = all_done(6);
        expected.insert(0, ("map=full".to_string(), "done".to_string()));
        assert_eq!(outcomes(&run_dir, "mapmake"), expected);
        let sum = summary(&run_dir);
        assert_eq!(sum["ranks"], ranks);
        assert_eq!(sum["observations"], 6);
        assert_eq!(sum["reread_observations"], 0, "{sum}");
        eprintln!(
            "{ranks} ranks: destriper {} iterations, residual {}, converged {}",
            sum["iterations"], sum["residual"], sum["converged"]
        );
        // Every rank binned a share (the queue spread the six observations over all of them).
        let per_rank: Vec<u64> = sum["samples_per_rank"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(per_rank.len(), ranks, "{sum}");
        assert!(per_rank.iter().all(|&n| n > 0), "{sum}");
        assert_eq!(
            per_rank.iter().sum::<u64>(),
            sum["samples"].as_u64().unwrap()
        );
        // Owned sub-maps: the union is split evenly over the ranks, and a rank only ever
        // holds the sub-maps it hits plus its owned share of the two maps written.
        let column = |key: &str| -> Vec<u64> {
            sum[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        };
        let (hit, owned, peak) = (
            column("submaps_per_rank"),
            column("owned_submaps_per_rank"),
            column("peak_submaps_per_rank"),
        );
        let union = sum["observed_submaps"].as_u64().unwrap();
        assert_eq!(owned.iter().sum::<u64>(), union, "{sum}");
        assert!(
            owned.iter().max().unwrap() - owned.iter().min().unwrap() <= 1,
            "{sum}"
        );
        for r in 0..ranks {
            assert_eq!(peak[r], hit[r] + 2 * owned[r], "rank {r}: {sum}");
            assert!(hit[r] <= union, "{sum}");
        }
        if ranks > 1 {
            assert!(
                peak.iter().all(|&p| p < 2 * union),
                "no rank holds the union for each map: {sum}"
            );
        }
        let memory = sum["peak_memory_mb_per_rank"].as_array().unwrap();
        assert_eq!(memory.len(), ranks);
        assert!(memory.iter().all(|m| m.as_f64().unwrap() > 0.0), "{sum}");
        for f in [
            "map_binned.fits",
            "map_binned.png",
            "map_binned_Q.png",
            "map_binned_U.png",
            "map_destriped.fits",
            "map_destriped.png",
            "map_destriped_Q.png",
            "map_destriped_U.png",
        ] {
            assert!(run_dir.join("mapmake").join(f).is_file(), "{f} missing");
        }
        let png = std::fs::read(run_dir.join("mapmake/map_binned.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 400);
        runs.push(s(&run_dir));
    }
    // `skypipe-status --explain` lists a map's observations (calibrated and pointing file of
    // each), followed back to the raw observations; the baselines name the same.
    for file in ["map_destriped.fits", "baselines/obs=0003.h5"] {
        let chain = explain(&tmp.path().join("map2/mapmake").join(file));
        assert!(chain.contains("stage mapmake, unit map=full"), "{chain}");
        assert!(chain.contains("made from 12 file(s)"), "{chain}");
        for obs in 0..6 {
            let calibrated = absolute(&inputs.join(format!("calibrate/obs={obs:04}.h5")));
            assert!(
                chain.contains(&format!("- calibrated {calibrated}")),
                "{chain}"
            );
            let pointing = absolute(&inputs.join(format!("pointing/obs={obs:04}.h5")));
            assert!(chain.contains(&format!("- pointing {pointing}")), "{chain}");
        }
        assert!(chain.contains("stage calibrate, unit obs=0005"), "{chain}");
        assert!(chain.contains("- observation "), "{chain}");
    }
    let mut args = vec![s(&tmp.path().join("data"))];
    args.extend(runs);
    let out = python(CHECK_NOISELESS, &args);
    assert!(out.starts_with("ok"), "{out}");
    eprintln!("{out}");
}

/// An independent destriper (scipy's CG on sparse pointing and baseline matrices, uniform
/// weights) on the chain's calibrated data; compares its map and baselines with ours (map and
/// baseline files) and prints the residual RMS (monopole removed) of the binned and destriped
/// maps.
const CHECK_DESTRIPED: &str = r#"
import sys, glob, h5py, numpy as np, healpy as hp, scipy.sparse as sp, scipy.sparse.linalg as sla
data, run, inputs, length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sky = h5py.File(data + '/truth/sky.h5', 'r')['map'][:, 0]
npix = len(sky)
pix, w, s, base, nb = [], [], [], [], 0
for f in sorted(glob.glob(inputs + '/pointing/obs=*.h5')):
    p, c = h5py.File(f, 'r'), h5py.File(f.replace('/pointing/', '/calibrate/'), 'r')
    for d in sorted(p['detectors']):
        pix.append(hp.ring2nest(hp.npix2nside(npix), p['detectors'][d]['pixels'][:].astype(np.int64)))
        w.append(p['detectors'][d]['weights'][:, 0])
        s.append(c['detectors'][d]['signal'][:])
        base.append(nb + np.arange(len(s[-1])) // length)
        nb += (len(s[-1]) + length - 1) // length
pix, w, s, base = map(np.concatenate, (pix, w, s, base))
n = len(s)
P = sp.csr_matrix((w, (np.arange(n), pix)), shape=(n, npix))
F = sp.csr_matrix((np.ones(n), (np.arange(n), base)), shape=(n, nb))
ptp = np.asarray(P.multiply(P).sum(0)).ravel()
seen = ptp > 0
def binmap(y):
    m = np.zeros(npix)
    m[seen] = (P.T @ y)[seen] / ptp[seen]
    return m
Z = lambda y: y - P @ binmap(y)
A = sla.LinearOperator((nb, nb), matvec=lambda x: F.T @ Z(F @ x) + x.sum())
a, info = sla.cg(A, F.T @ Z(s), tol=1e-12, maxiter=1000)
assert info == 0, info
ref = hp.reorder(binmap(s - F @ a), n2r=True)
b = hp.read_map(run + '/mapmake/map_binned.fits', field=0)
d = hp.read_map(run + '/mapmake/map_destriped.fits', field=0)
good = hp.reorder(seen, n2r=True)
assert (b[good] != hp.UNSEEN).all() and (d[good] != hp.UNSEEN).all()
res = lambda m: np.std(m[good] - sky[good])
diff = np.abs((d[good] - ref[good]) - np.mean(d[good] - ref[good])).max()
assert diff < 1e-6 * res(d), (diff, res(d))
# The baselines each rank wrote, in the same order (observations, then detectors by name).
ours = []
for f in sorted(glob.glob(run + '/mapmake/baselines/obs=*.h5')):
    h = h5py.File(f, 'r')
    assert h.attrs['format'] == 'skypipe-cmb-baselines/1' and h.attrs['baseline_samples'] == length
    ours += [h['detectors'][d]['baselines'][:] for d in sorted(h['detectors'])]
ours = np.concatenate(ours)
assert ours.shape == a.shape, (ours.shape, a.shape)
bdiff = np.abs((ours - ours.mean()) - (a - a.mean())).max()
assert bdiff < 1e-6 * np.std(a), (bdiff, np.std(a))
print(f'{res(b) / res(d):.3f} binned={res(b):.3e} destriped={res(d):.3e} vs-scipy={diff:.1e} baselines-vs-scipy={bdiff:.1e}')
"#;

#[test]
fn destriping_matches_an_independent_solver_and_removes_one_over_f_noise() {
    let tmp = tempfile::tempdir().unwrap();
    // 1/f with its knee (5 Hz) far above the spin frequency (0.1 Hz), 30 revolutions per
    // observation, a precessing spin axis so that scans cross, nside 16 so that white noise
    // averages down in each pixel and the stripes dominate the binned map.
    let keys = "net_uk_sqrt_s = 50.0\nfknee_hz = 5.0\nobservations = 4\nobs_duration_s = 300.0\n\
                spin_rpm = 6.0\nprecession_deg = 20.0\nprecession_period_days = 0.01\n\
                detector_pairs = 4\nsky_pol_uk = 0.0\nsky_nside = 16\n";
    let pointing = POINTING.replace("nside = 64", "nside = 16");
    let (list, inputs) = prepare(tmp.path(), keys, &pointing, true);
    let run_dir = tmp.path().join("map");
    let cfg = map_config(
        tmp.path(),
        "m.toml",
        &inputs,
        "components = \"i\"\nbaseline_s = 0.5\nsubmap_nside = 4\nnoise_weights = false",
    );
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let sum = summary(&run_dir);
    assert!(sum["iterations"].as_u64().unwrap() > 1, "{sum}");
    assert_eq!(sum["converged"], true, "{sum}");
    assert_eq!(sum["baseline_samples"], 90, "{sum}");
    let out = python(
        CHECK_DESTRIPED,
        &[
            s(&tmp.path().join("data")),
            s(&run_dir),
            s(&inputs),
            "90".to_string(),
        ],
    );
    eprintln!("binned/destriped residual RMS: {out}");
    let ratio: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    // The sim's 1/f spectrum runs up to 10× the knee, inside the 0.5 s baselines, so part of
    // it is beyond any destriper's reach: 2.7× here (the ≥ 3× case with a drift below the
    // baseline frequency is crates/core/tests/mapmaking.rs).
    assert!(ratio >= 2.5, "destriping gained only {ratio}× ({out})");
}

/// The demo's weakly cross-linked scans (its data: 12 two-minute observations of 4 detector
/// pairs, spin axis precessing 7.5°, white and 1/f noise; fewer observations cross too little
/// for 100 iterations, 200 for 6 observations): with the default coarse
/// space (20 templates per detector and observation) the destriper reaches its 1e-10
/// tolerance within 100 iterations and logs no warning; with one template per observation (the
/// first two-level version) it needs more iterations, the slow modes being detector-pair offset
/// differences and smooth sky-like offset patterns.
#[test]
fn weakly_cross_linked_scans_converge_within_100_iterations() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = NOISELESS
        .replace("net_uk_sqrt_s = 0.0\nfknee_hz = 0.0\n", "")
        .replace("observations = 6", "observations = 12");
    let (list, inputs) = prepare(tmp.path(), &keys, POINTING, false);
    let mut iterations = Vec::new();
    for (name, body) in [
        ("detector", ""),
        (
            "observation",
            "coarse_space = \"observation\"\ncoarse_segments = 1",
        ),
    ] {
        let run_dir = tmp.path().join(name);
        let cfg = map_config(tmp.path(), &format!("{name}.toml"), &inputs, body);
        let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
        assert_eq!(code(&out.status), 0, "{name}: {}", text(&out));
        let sum = summary(&run_dir);
        let history: Vec<f64> = sum["residual_history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let n = sum["iterations"].as_u64().unwrap() as usize;
        assert_eq!(history.len(), n + 1, "{sum}");
        eprintln!(
            "coarse space {name}: {n} iterations, residual {:.2e}, {} templates",
            history[n], sum["coarse_templates"]
        );
        iterations.push(n);
        if name == "detector" {
            assert_eq!(sum["converged"], true, "{sum}");
            assert!(n <= 100 && history[n] <= 1e-10, "{sum}");
            assert_eq!(sum["coarse_templates"], 12 * 8 * 20, "{sum}");
            let log = text(&out);
            assert!(
                !log.contains("did not reach") && !log.contains("coarse space too large"),
                "{log}"
            );
        }
    }
    assert!(iterations[0] < iterations[1], "{iterations:?}");
}

#[test]
fn bad_inputs_fail_clearly_and_a_rerun_does_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (list, inputs) = prepare(tmp.path(), NOISELESS, POINTING, true);

    // A missing calibrated file fails its observation and, by default, the map.
    let hidden = tmp.path().join("obs=0003.h5.away");
    let cal3 = inputs.join("calibrate/obs=0003.h5");
    std::fs::rename(&cal3, &hidden).unwrap();
    let run_dir = tmp.path().join("map");
    let cfg = map_config(tmp.path(), "m.toml", &inputs, "destripe = false");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    assert!(
        text(&out).contains("calibrate/obs=0003.h5"),
        "{}",
        text(&out)
    );
    let states = outcomes(&run_dir, "mapmake");
    assert!(states.contains(&("obs=0003".into(), "dependency-failed".into())));
    assert!(states.contains(&("map=full".into(), "dependency-failed".into())));
    assert_eq!(
        states.iter().filter(|(_, o)| o == "done").count(),
        5,
        "{states:?}"
    );
    assert!(!run_dir.join("mapmake/map_binned.fits").exists());

    // Restored, a rerun with --retry-failed redoes that observation and the map; the five
    // others are read again by the map unit (a new job holds nothing in memory).
    std::fs::rename(&hidden, &cal3).unwrap();
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &["--retry-failed"]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let records = ledger(&run_dir, "mapmake");
    assert_eq!(records.len(), 9, "7 units, 2 of them twice");
    let sum = summary(&run_dir);
    assert_eq!(sum["reread_observations"], 5, "{sum}");
    assert_eq!(sum["observations"], 6);

    // With allow_failed_observations the map is made without a broken one, which is listed.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(bad.join("calibrate")).unwrap();
    for o in 0..6 {
        let name = format!("obs={o:04}.h5");
        std::fs::copy(
            inputs.join("calibrate").join(&name),
            bad.join("calibrate").join(&name),
        )
        .unwrap();
    }
    std::fs::write(bad.join("calibrate/obs=0001.h5"), b"not hdf5").unwrap();
    let cfg = stage_config(
        tmp.path(),
        "tolerant.toml",
        "mapmake",
        &format!(
            "pointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\ndestripe = false\n\
             allow_failed_observations = true\nquicklook_width = 0\n\
             output_precision = \"single\"",
            inputs.join("pointing").display(),
            bad.join("calibrate").display()
        ),
    );
    let run_dir = tmp.path().join("tolerant");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 3, &[]);
    assert_eq!(code(&out.status), 2, "a unit failed: {}", text(&out));
    assert!(
        text(&out).contains("bad/calibrate/obs=0001.h5"),
        "{}",
        text(&out)
    );
    let states = outcomes(&run_dir, "mapmake");
    assert!(
        states.contains(&("obs=0001".into(), "bad-input".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("map=full".into(), "done".into())),
        "{states:?}"
    );
    let sum = summary(&run_dir);
    assert_eq!(sum["observations"], 5);
    assert_eq!(sum["missing_observations"][0], "obs=0001");
    assert!(!run_dir.join("mapmake/map_binned.png").exists());
    // That map is single precision: healpy reads it with UNSEEN where unobserved, and in the
    // well-conditioned pixels it is the (noiseless) input sky to float32 rounding.
    let single = r#"
import sys, h5py, numpy as np, healpy as hp
from astropy.io import fits
f, data = sys.argv[1], sys.argv[2]
cols = fits.open(f)[1].columns
assert [c.format for c in cols] == ['1024E', '1024E', '1024E', '1024J', '1024E'], cols
m = hp.read_map(f, field=(0, 1, 2, 3, 4))
sky = h5py.File(data + '/truth/sky.h5', 'r')['map'][:].T
unseen = m[3] == 0
# float32 UNSEEN is UNSEEN to float32 rounding: healpy's own test for it is mask_bad. (RCOND
# is float32: keep clear of the 1e-3 cut when telling cut from solved pixels.)
bad = hp.mask_bad(m[0])
assert unseen.any() and bad[unseen].all() and bad[m[4] < 0.999e-3].all()
good = (m[3] > 0) & (m[4] > 1.001e-3)
assert not bad[good].any()
assert good.sum() > 100
rms = np.sqrt(np.mean(sky[0] ** 2))
err = max(np.abs(m[c][good] - sky[c][good]).max() for c in range(3))
assert err < 1e-6 * rms, err / rms
print('ok')
"#;
    let out = python(
        single,
        &[
            s(&run_dir.join("mapmake/map_binned.fits")),
            s(&tmp.path().join("data")),
        ],
    );
    assert_eq!(out.trim(), "ok");

    // An unflagged NaN in a calibrated timestream names the file and the detector.
    let nan = r#"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], 'r+') as f:
    s = f['detectors/d01a/signal']
    s[17] = np.nan
"#;
    python(nan, &[s(&bad.join("calibrate/obs=0002.h5"))]);
    let run_dir = tmp.path().join("nan");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 0, &["--unit", "obs=0002"]);
    assert_ne!(code(&out.status), 0);
    let msg = text(&out);
    assert!(
        msg.contains("obs=0002.h5")
            && msg.contains("detectors/d01a/signal")
            && msg.contains("sample 17"),
        "{msg}"
    );

    // Pointing at another nside in one observation: the map unit names the odd file; with
    // mapmake.nside set, that observation's own unit fails.
    let odd = tmp.path().join("odd");
    let pcfg32 = stage_config(
        tmp.path(),
        "p32.toml",
        "pointing",
        &POINTING.replace("nside = 64", "nside = 32"),
    );
    let out = run_stage("pointing", &pcfg32, &list, &odd, 0, &["--unit", "obs=0004"]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(mixed.join("pointing")).unwrap();
    for o in 0..6 {
        let name = format!("obs={o:04}.h5");
        let from = if o == 4 {
            odd.join("pointing")
        } else {
            inputs.join("pointing")
        };
        std::fs::copy(from.join(&name), mixed.join("pointing").join(&name)).unwrap();
    }
    let body = |extra: &str| {
        format!(
            "pointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\ndestripe = false\nquicklook_width = 0\n{extra}",
            mixed.join("pointing").display(),
            inputs.join("calibrate").display()
        )
    };
    let cfg = stage_config(tmp.path(), "mixed.toml", "mapmake", &body(""));
    let run_dir = tmp.path().join("mixed-run");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("disagree on nside") && msg.contains("pointing/obs=0004.h5 (nside 32"),
        "{msg}"
    );
    let cfg = stage_config(tmp.path(), "mixed64.toml", "mapmake", &body("nside = 64"));
    let run_dir = tmp.path().join("mixed64-run");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    assert!(
        text(&out).contains("pointing has nside 32, but mapmake.nside is 64"),
        "{}",
        text(&out)
    );
    let states = outcomes(&run_dir, "mapmake");
    assert!(
        states.contains(&("obs=0004".into(), "bad-input".into())),
        "{states:?}"
    );
}

#[test]
fn shipped_mapmake_config_parses_and_unknown_keys_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let m: skypipe_cmb::MapmakeFile<skypipe_engine::RunOptions> =
        skypipe_engine::load_config(Some(&dir.join("mapmake.toml"))).unwrap();
    m.run.validate().unwrap();
    assert_eq!(m.mapmake, skypipe_cmb::mapmake::MapmakeConfig::default());
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "[mapmake]\nbaseline = 4\n").unwrap();
    let e = skypipe_engine::load_config::<skypipe_cmb::MapmakeFile<skypipe_engine::RunOptions>>(
        Some(bad.path()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("baseline"), "{e}");
}

/// Writes, beside the simulated list, the inputs of maps made from a subset alone: `hm1.json`
/// (the first three observations) and `dets.json` (every observation, with a focal plane of the
/// first four detectors). Prints every detector's name, sorted, comma-separated.
const MAKE_SUBSETS: &str = r#"
import sys, json, shutil, h5py
data = sys.argv[1]
lst = json.load(open(data + '/observations.json'))
fp = lst['focal_plane'] if lst['focal_plane'].startswith('/') else data + '/' + lst['focal_plane']
every = sorted(h5py.File(fp, 'r')['detectors'].keys())
names = every[:4]
shutil.copy(fp, data + '/fp_subset.h5')
with h5py.File(data + '/fp_subset.h5', 'a') as f:
    for n in list(f['detectors'].keys()):
        if n not in names:
            del f['detectors'][n]
hm1 = dict(lst, observations=sorted(lst['observations'], key=lambda o: o['obs'])[:3])
json.dump(hm1, open(data + '/hm1.json', 'w'))
json.dump(dict(lst, focal_plane=data + '/fp_subset.h5'), open(data + '/dets.json', 'w'))
print(','.join(every))
"#;

/// Compares each split's maps with the map of its subset made alone: the same hits, I/Q/U
/// within the documented spread across rank counts (binned 1e-12, destriped 1e-8 of the RMS).
const CHECK_SPLITS: &str = r#"
import sys, numpy as np, healpy as hp
pairs = sys.argv[1:]
for split, alone in zip(pairs[::2], pairs[1::2]):
    for kind in ('binned', 'destriped'):
        a = hp.read_map(f'{split}/map_{kind}.fits', field=(0, 1, 2, 3))
        b = hp.read_map(f'{alone}/map_{kind}.fits', field=(0, 1, 2, 3))
        assert (a[3] == b[3]).all(), (split, kind, 'hits differ')
        good = (b[0] != hp.UNSEEN)
        assert ((a[0] != hp.UNSEEN) == good).all() and good.sum() > 100, (split, kind)
        rms = np.sqrt(np.mean(b[0][good] ** 2))
        diff = max(np.abs(a[c][good] - b[c][good]).max() for c in range(3)) / rms
        assert diff <= (1e-12 if kind == 'binned' else 1e-8), (split, kind, diff)
        print(f'{split} {kind}: {int(good.sum())} pixels, spread {diff:.1e}')
"#;

#[test]
fn splits_equal_their_subsets_mapped_alone_and_run_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let (list, inputs) = prepare(tmp.path(), NOISELESS, POINTING, true);
    let data = list.parent().unwrap().to_path_buf();
    let detectors = python(MAKE_SUBSETS, &[s(&data)]);
    let every: Vec<&str> = detectors.trim().split(',').collect();
    assert_eq!(every.len(), 8);
    let quoted = |names: &[&str]| -> String {
        let q: Vec<String> = names.iter().map(|d| format!("\"{d}\"")).collect();
        q.join(", ")
    };
    let (detectors, rest) = every.split_at(4);
    // The noiseless CG does not converge (see above): a fixed number of iterations keeps the
    // destriped maps' difference at rounding, where 200 iterations can amplify it to 1e-3.
    let solver = "coarse_space = \"observation\"\ncoarse_segments = 1\nmax_iterations = 30\n";
    // `hm1` can start once its three observations are read; `dets` and `rest` (the two halves
    // of the focal plane) once all are, beside each other after the full map.
    let cfg = map_config(
        tmp.path(),
        "splits.toml",
        &inputs,
        &format!(
            "{solver}[[mapmake.split]]\nname = \"hm1\"\nhalf_mission = 1\nranks = 2\n\
             [[mapmake.split]]\nname = \"dets\"\ndetectors = [{}]\nranks = 2\n\
             [[mapmake.split]]\nname = \"rest\"\ndetectors = [{}]\nranks = 2\n",
            quoted(detectors),
            quoted(rest)
        ),
    );
    let run_dir = tmp.path().join("splits");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 4, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let mut expected = all_done(6);
    expected.insert(0, ("map=full".into(), "done".into()));
    expected.insert(1, ("map=split-dets".into(), "done".into()));
    expected.insert(2, ("map=split-hm1".into(), "done".into()));
    expected.insert(3, ("map=split-rest".into(), "done".into()));
    assert_eq!(outcomes(&run_dir, "mapmake"), expected);
    // The two halves of the focal plane ran at the same time on disjoint pairs of ranks.
    let records = ledger(&run_dir, "mapmake");
    let split_runs: Vec<(Vec<u64>, f64, f64)> = records
        .iter()
        .filter(|r| ["map=split-dets", "map=split-rest"].contains(&r["unit"].as_str().unwrap()))
        .map(|r| {
            let ranks = r["ranks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let start = r["started"].as_f64().unwrap();
            (ranks, start, start + r["elapsed_s"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(split_runs.len(), 2, "{records:?}");
    let (a, b) = (&split_runs[0], &split_runs[1]);
    assert!(a.0.len() == 2 && b.0.len() == 2, "{split_runs:?}");
    assert!(a.0.iter().all(|r| !b.0.contains(r)), "{split_runs:?}");
    assert!(
        a.1 < b.2 && b.1 < a.2,
        "the splits overlap in time: {split_runs:?}"
    );
    // Each split's summary names its subset; the full map's has no split.
    let full = summary(&run_dir);
    assert!(full.get("split").is_none(), "{full}");
    assert_eq!(full["observations"], 6);
    let split_summary = |name: &str| -> serde_json::Value {
        let path = run_dir.join(format!("mapmake/split-{name}/summary.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let hm1 = split_summary("hm1");
    assert_eq!(hm1["split"]["name"], "hm1");
    assert_eq!(hm1["split"]["observations"], serde_json::json!([0, 1, 2]));
    assert_eq!(hm1["split"]["detectors"].as_array().unwrap().len(), 8);
    assert_eq!(hm1["ranks"], 2);
    let dets = split_summary("dets");
    assert_eq!(dets["split"]["detectors"], serde_json::json!(detectors));
    assert_eq!(dets["observations"], 6);
    assert_eq!(
        dets["samples"].as_u64().unwrap() + split_summary("rest")["samples"].as_u64().unwrap(),
        full["samples"].as_u64().unwrap(),
        "the two halves of the focal plane share the samples"
    );
    assert!(
        run_dir
            .join("mapmake/split-dets/baselines/obs=0005.h5")
            .is_file()
    );
    // The same maps from each subset alone (its own list and focal plane), on two ranks.
    let plain = map_config(tmp.path(), "plain.toml", &inputs, solver);
    let mut compare = Vec::new();
    for name in ["hm1", "dets"] {
        let alone = tmp.path().join(format!("alone-{name}"));
        let sub_list = data.join(format!("{name}.json"));
        let out = run_stage("mapmake", &plain, &sub_list, &alone, 2, &[]);
        assert_eq!(code(&out.status), 0, "{name}: {}", text(&out));
        compare.push(s(&run_dir.join(format!("mapmake/split-{name}"))));
        compare.push(s(&alone.join("mapmake")));
    }
    eprint!("{}", python(CHECK_SPLITS, &compare));
}

/// A baselines file that one rank cannot write (a directory squats on its path) fails the map
/// unit on both ranks, with the path named: the rank that wrote its baselines does not wait
/// for the other in the collectives that send the maps to their writers.
#[test]
fn a_baselines_file_one_rank_cannot_write_fails_the_map_on_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let (list, inputs) = prepare(tmp.path(), NOISELESS, POINTING, true);
    let run_dir = tmp.path().join("map");
    let squatter = run_dir.join("mapmake/baselines/obs=0002.h5");
    std::fs::create_dir_all(squatter.join("in-the-way")).unwrap();
    let cfg = map_config(
        tmp.path(),
        "m.toml",
        &inputs,
        "destripe = true\nmax_iterations = 5",
    );
    let started = std::time::Instant::now();
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_ne!(code(&out.status), 0, "{}", text(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(100),
        "the job waited for mpirun's timeout:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("obs=0002.h5"), "{}", text(&out));
    let states = outcomes(&run_dir, "mapmake");
    assert!(
        states.iter().any(|(u, o)| u == "map=full" && o != "done"),
        "{states:?}"
    );
    assert!(!run_dir.join("mapmake/map_binned.fits").exists());
}
