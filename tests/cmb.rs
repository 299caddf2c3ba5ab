//! End-to-end tests of the CMB chain: `skypipe-sim cmb` → `skypipe-pointing` →
//! `skypipe-calibrate` under mpirun, checked against an independent reference (numpy + healpy
//! through `/usr/bin/python3`), the simulation's truth, corrupted inputs, reruns and `--unit`.

mod common;

use common::cmb::*;
use common::content::*;
use common::*;
use std::path::Path;

#[test]
fn chain_under_mpirun_is_reproducible_and_equals_single_units() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "");
    let pcfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let ccfg = stage_config(tmp.path(), "c.toml", "calibrate", "chunk_samples = 7000");
    let run1 = tmp.path().join("run1");
    let out = run_stage("pointing", &pcfg, &list, &run1, 3, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let out = run_stage("calibrate", &ccfg, &list, &run1, 3, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert_eq!(outcomes(&run1, "pointing"), all_done(4));
    assert_eq!(outcomes(&run1, "calibrate"), all_done(4));

    // A second run on a different number of ranks writes byte-identical files but for their
    // provenance (another run directory, another configuration fingerprint).
    let run2 = tmp.path().join("run2");
    let out = run_stage("pointing", &pcfg, &list, &run2, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    // Calibrate here reads its inputs twice instead of caching them: same bytes.
    let ccfg2 = stage_config(
        tmp.path(),
        "c2.toml",
        "calibrate",
        "chunk_samples = 7000\ncache_samples = 0",
    );
    let out = run_stage("calibrate", &ccfg2, &list, &run2, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    for stage in ["pointing", "calibrate"] {
        let a = files_without_provenance(&run1.join(stage));
        assert_eq!(a.len(), 4, "{stage}: {:?}", a.keys());
        assert!(
            a == files_without_provenance(&run2.join(stage)),
            "{stage} outputs differ between runs"
        );
    }

    // One unit run interactively equals the mpirun output.
    let run3 = tmp.path().join("run3");
    for stage in ["pointing", "calibrate"] {
        let cfg = if stage == "pointing" { &pcfg } else { &ccfg };
        let out = run_stage(stage, cfg, &list, &run3, 0, &["--unit", "obs=0002"]);
        assert_eq!(code(&out.status), 0, "{}", text(&out));
        let one = without_provenance(&run3.join(stage).join("obs=0002.h5"));
        let all = without_provenance(&run1.join(stage).join("obs=0002.h5"));
        assert!(
            one == all,
            "{stage}: --unit output differs from the mpirun output"
        );
    }

    // `skypipe-status --explain` follows a calibrated file to its pointing file and, through
    // both, to the raw observation.
    let chain = explain(&run1.join("calibrate/obs=0002.h5"));
    let raw = absolute(&list.parent().unwrap().join("obs/obs=0002.h5"));
    let pointing = absolute(&run1.join("pointing/obs=0002.h5"));
    assert!(chain.contains("stage calibrate, unit obs=0002"), "{chain}");
    assert!(chain.contains(&format!("- pointing {pointing}")), "{chain}");
    assert!(chain.contains("stage pointing, unit obs=0002"), "{chain}");
    assert!(chain.contains(&format!("- observation {raw}")), "{chain}");
    assert!(
        chain.contains("no skypipe provenance (input data"),
        "{chain}"
    );

    // The outputs read with h5py: layout, attributes, finite calibrated data, and gains close to
    // the truth (noise, 1/f and the sky bias the fit at the per-cent level in 60 s).
    let check = r#"
import sys, h5py, numpy as np
run, data = sys.argv[1], sys.argv[2]
truth = h5py.File(data + '/truth/gains.h5', 'r')
for o in range(4):
    p = h5py.File(f'{run}/pointing/obs={o:04d}.h5', 'r')
    c = h5py.File(f'{run}/calibrate/obs={o:04d}.h5', 'r')
    assert p.attrs['format'] == 'skypipe-cmb-pointing/1' and p.attrs['nside'] == 64
    assert p.attrs['ordering'] == 'RING' and p.attrs['frame'] == 'galactic', dict(p.attrs)
    assert sorted(p['detectors']) == ['d00a', 'd00b', 'd01a', 'd01b']
    for d in p['detectors']:
        g = p['detectors'][d]
        n = g['pixels'].shape[0]
        assert g['weights'].shape == (n, 3) and g['theta'].shape == (n,)
        assert g['pixels'].dtype == np.uint64 and (g['pixels'][:] < 12 * 64 * 64).all()
        assert np.allclose(g['weights'][:, 0], 0.5)
        q, u = g['weights'][:, 1], g['weights'][:, 2]
        assert np.allclose(np.hypot(q, u), 0.5 * 0.95)
        cg = c['detectors'][d]
        sig, flags = cg['signal'][:], cg['flags'][:]
        assert sig.shape == (n,) and np.isfinite(sig).all() and (flags == 0).all()
        assert cg['signal'].attrs['units'] == 'K_CMB'
        gain, true = cg.attrs['gain'], truth['detectors'][d]['gain'][o]
        assert abs(gain / true - 1) < 0.05, (o, d, gain, true)
        # Dipole removed: what is left is sky + noise, well below the 1.7 mK dipole response.
        assert np.std(sig) < 1.5e-3, np.std(sig)
print('ok')
"#;
    let out = python(check, &[s(&run1), s(&tmp.path().join("data"))]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn pointing_matches_an_independent_numpy_and_healpy_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 2\nprecession_deg = 5.0\n");
    // Exact pixels: no frame rotation and no aberration, so numpy slerp + healpy decide alone.
    for ordering in ["ring", "nested"] {
        let cfg = stage_config(
            tmp.path(),
            &format!("p-{ordering}.toml"),
            "pointing",
            &format!(
                "nside = 2048\nordering = \"{ordering}\"\nframe = \"input\"\naberration = false\nquats = true"
            ),
        );
        let run_dir = tmp.path().join(format!("run-{ordering}"));
        let out = run_stage("pointing", &cfg, &list, &run_dir, 2, &[]);
        assert_eq!(code(&out.status), 0, "{}", text(&out));
    }
    // And with aberration + ecliptic → galactic, directions within 0.5″ of the reference
    // (healpy's rotator and skypipe's frame constants differ by well under that).
    let cfg = stage_config(
        tmp.path(),
        "p-gal.toml",
        "pointing",
        "nside = 2048\nframe = \"galactic\"\naberration = true",
    );
    let gal = tmp.path().join("run-gal");
    let out = run_stage("pointing", &cfg, &list, &gal, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    let reference = r#"
import sys, h5py, numpy as np, healpy as hp
tmp = sys.argv[1]
fp = h5py.File(tmp + '/data/focalplane.h5', 'r')
def qmul(a, b):
    ax, ay, az, aw = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx, by, bz, bw = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([aw*bx + ax*bw + ay*bz - az*by, aw*by - ax*bz + ay*bw + az*bx,
                     aw*bz + ax*by - ay*bx + az*bw, aw*bw - ax*bx - ay*by - az*bz], -1)
def rot(q, v):
    # v' = v + 2w (u×v) + 2 u×(u×v)
    u, w = q[..., :3], q[..., 3:4]
    t = 2 * np.cross(u, v)
    return v + w * t + np.cross(u, t)
def slerp(q0, q1, t):
    d = np.sum(q0 * q1, -1)
    q1 = np.where(d[:, None] < 0, -q1, q1)
    d = np.abs(d)
    om = np.arccos(np.clip(d, -1, 1))
    so = np.sin(om)
    small = so < 1e-12
    a = np.where(small, 1 - t, np.sin((1 - t) * om) / np.where(small, 1, so))
    b = np.where(small, t, np.sin(t * om) / np.where(small, 1, so))
    return a[:, None] * q0 + b[:, None] * q1
rng = np.random.default_rng(7)
E2G = hp.Rotator(coord=['E', 'G']).mat
checked = 0
for o in range(2):
    f = h5py.File(f'{tmp}/data/obs/obs={o:04d}.h5', 'r')
    times = f['attitude/time'][:]
    quats = f['attitude/quat'][:]
    vel = f['attitude/velocity'][:]
    for d in fp['detectors']:
        det = fp['detectors'][d]
        a = np.radians(det.attrs['pol_angle_deg'])
        off = qmul(det.attrs['quat'][None], np.array([[0, 0, np.sin(a / 2), np.cos(a / 2)]]))[0]
        g = f['detectors'][d]
        t0, rate, n = g.attrs['t0'], g.attrs['rate_hz'], g['signal'].shape[0]
        idx = np.concatenate([[0, n - 1], rng.choice(n, 1500, replace=False)])
        s = (g.attrs.get('first_sample', 0) + idx) / rate
        rel = times - t0
        j = np.clip(np.searchsorted(rel, s, side='right') - 1, 0, len(times) - 2)
        u = (s - rel[j]) / (rel[j + 1] - rel[j])
        qb = slerp(quats[j], quats[j + 1], u)
        qd = qmul(qb, np.broadcast_to(off, qb.shape))
        dirv = rot(qd, np.array([0.0, 0.0, 1.0]))
        orient = rot(qd, np.array([1.0, 0.0, 0.0]))
        theta, phi = hp.vec2ang(dirv)
        etheta = np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), -np.sin(theta)], -1)
        ephi = np.stack([-np.sin(phi), np.cos(phi), np.zeros_like(phi)], -1)
        psi = np.arctan2(np.sum(orient * ephi, -1), np.sum(orient * etheta, -1))
        eta = det.attrs['pol_efficiency']
        for order, nest in (('ring', False), ('nested', True)):
            p = h5py.File(f'{tmp}/run-{order}/pointing/obs={o:04d}.h5', 'r')['detectors'][d]
            pix = p['pixels'][:][idx]
            ref = hp.vec2pix(2048, dirv[:, 0], dirv[:, 1], dirv[:, 2], nest=nest)
            bad = np.nonzero(pix != ref)[0]
            assert len(bad) == 0, (o, d, order, len(bad), idx[bad][:5], pix[bad][:5], ref[bad][:5])
            w = p['weights'][:][idx]
            assert np.allclose(w[:, 1], 0.5 * eta * np.cos(2 * psi), atol=1e-9), (o, d)
            assert np.allclose(w[:, 2], 0.5 * eta * np.sin(2 * psi), atol=1e-9), (o, d)
            assert np.allclose(p['theta'][:][idx], theta, atol=1e-10)
            qs = p['quat'][:][idx]
            assert np.allclose(np.abs(np.sum(qs * qd, -1)), 1.0, atol=1e-12)
        # Galactic with aberration: rotate, then move to the rest frame with the satellite's
        # velocity (linear interpolation): n = (n' - γβ + (γ-1)(n'·β̂)β̂ ... via the inverse boost.
        v = vel[j] + u[:, None] * (vel[j + 1] - vel[j])
        beta = (E2G @ v.T).T / 299792.458
        ng = (E2G @ dirv.T).T
        b2 = np.sum(beta**2, -1)[:, None]
        gam = 1 / np.sqrt(1 - b2)
        nb = np.sum(ng * beta, -1)[:, None]
        rest = (ng - gam * beta + (gam - 1) * nb * beta / b2) / (gam * (1 - nb))
        rest /= np.linalg.norm(rest, axis=-1)[:, None]
        p = h5py.File(f'{tmp}/run-gal/pointing/obs={o:04d}.h5', 'r')['detectors'][d]
        th, ph = p['theta'][:][idx], p['phi'][:][idx]
        got = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
        sep = np.degrees(np.arccos(np.clip(np.sum(got * rest, -1), -1, 1))) * 3600
        assert sep.max() < 0.5, ('arcsec', sep.max())
        no_ab = np.degrees(np.arccos(np.clip(np.sum(got * ng, -1), -1, 1))) * 3600
        assert no_ab.max() > 5, 'aberration (~20 arcsec) was not applied'
        checked += len(idx)
print(checked)
"#;
    let out = python(reference, &[s(tmp.path())]);
    assert_eq!(out.trim(), (2 * 4 * 1502).to_string());
}

#[test]
fn fitted_gains_recover_the_truth() {
    // Noiseless: gains and offsets to 1e-6 (the sky is in the template via the true map).
    let tmp = tempfile::tempdir().unwrap();
    let quiet = tmp.path().join("quiet");
    std::fs::create_dir_all(&quiet).unwrap();
    let list = simulate(&quiet, "observations = 2\nnet_uk_sqrt_s = 0.0\n");
    let pcfg = stage_config(&quiet, "p.toml", "pointing", POINTING);
    let sky = quiet.join("data/truth/sky.h5");
    let ccfg = stage_config(
        &quiet,
        "c.toml",
        "calibrate",
        &format!("sky_model = \"{}\"", sky.display()),
    );
    let r = quiet.join("run");
    for (stage, cfg) in [("pointing", &pcfg), ("calibrate", &ccfg)] {
        let out = run_stage(stage, cfg, &list, &r, 2, &[]);
        assert_eq!(code(&out.status), 0, "{}", text(&out));
    }
    // The same with the true gain table: same gains, same calibrated samples.
    let tcfg = stage_config(
        &quiet,
        "t.toml",
        "calibrate",
        &format!(
            "gains = \"table\"\ngain_table = \"{}\"\npointing_dir = \"{}\"",
            quiet.join("data/truth/gains.h5").display(),
            r.join("pointing").display()
        ),
    );
    let out = run_stage("calibrate", &tcfg, &list, &quiet.join("table"), 1, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let table_check = r#"
import sys, h5py, numpy as np
q = sys.argv[1]
truth = h5py.File(q + '/data/truth/gains.h5', 'r')
for o in range(2):
    fit = h5py.File(f'{q}/run/calibrate/obs={o:04d}.h5', 'r')
    tab = h5py.File(f'{q}/table/calibrate/obs={o:04d}.h5', 'r')
    assert tab.attrs['gains'] == 'table' and fit.attrs['gains'] == 'fit'
    for d in tab['detectors']:
        assert tab['detectors'][d].attrs['gain'] == truth['detectors'][d]['gain'][o]
        a, b = tab['detectors'][d]['signal'][:], fit['detectors'][d]['signal'][:]
        assert np.abs(a - b).max() < 1e-12, np.abs(a - b).max()
        # Noiseless and dipole-free: only the sky response (≲ 0.3 mK) is left.
        assert 1e-6 < np.std(a) < 3e-4, np.std(a)
print('ok')
"#;
    assert_eq!(python(table_check, &[s(&quiet)]).trim(), "ok");
    // White noise only: every gain within 5σ of the truth, σ as reported, and the reported σ
    // as the noise level predicts (NET 50 µK√s at 180.37 Hz: σ = 671 µK per sample).
    let noisy = tmp.path().join("noisy");
    std::fs::create_dir_all(&noisy).unwrap();
    let list2 = simulate(&noisy, "observations = 3\nfknee_hz = 0.0\n");
    let pcfg2 = stage_config(&noisy, "p.toml", "pointing", POINTING);
    let sky2 = noisy.join("data/truth/sky.h5");
    let ccfg2 = stage_config(
        &noisy,
        "c.toml",
        "calibrate",
        &format!("sky_model = \"{}\"", sky2.display()),
    );
    let r2 = noisy.join("run");
    for (stage, cfg) in [("pointing", &pcfg2), ("calibrate", &ccfg2)] {
        let out = run_stage(stage, cfg, &list2, &r2, 2, &[]);
        assert_eq!(code(&out.status), 0, "{}", text(&out));
    }
    let check = r#"
import sys, h5py, numpy as np
def gains(base, nobs):
    truth = h5py.File(base + '/data/truth/gains.h5', 'r')
    for o in range(nobs):
        c = h5py.File(f'{base}/run/calibrate/obs={o:04d}.h5', 'r')
        for d in c['detectors']:
            a = c['detectors'][d].attrs
            t = truth['detectors'][d]
            yield o, d, a['gain'], a['gain_error'], a['offset'], t['gain'][o], t['offset'][o], c['detectors'][d]['signal'][:]
quiet, noisy = sys.argv[1], sys.argv[2]
n = 0
for o, d, g, ge, off, tg, toff, sig in gains(quiet, 2):
    assert abs(g / tg - 1) < 1e-6, (o, d, g, tg)
    assert abs(off - toff) < 1e-6 * abs(tg), (o, d, off, toff)
    n += 1
z = []
for o, d, g, ge, off, tg, toff, sig in gains(noisy, 3):
    z.append((g - tg) / ge)
    # Predicted σ_g: σ_V / sqrt(Σ(T - T̄)²); the calibrated residual has the per-sample σ.
    sigma = 50e-6 * np.sqrt(180.37)
    resid = np.std(sig - np.mean(sig))
    assert 0.9 * sigma < resid < 1.2 * sigma, (o, d, resid, sigma)
    assert 1e-4 < ge < 1e-1, ge
    n += 1
z = np.array(z)
assert (np.abs(z) < 5).all(), z
assert 0.05 < np.mean(z**2) < 5, z
print(n)
"#;
    let out = python(check, &[s(&quiet), s(&noisy)]);
    assert_eq!(out.trim(), "20");
}

#[test]
fn bad_inputs_fail_their_units_with_clear_errors_and_the_others_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 8\n");
    let data = tmp.path().join("data");
    let obs = |i: u32| data.join("obs").join(format!("obs={i:04}.h5"));
    // obs 0: truncated.
    let bytes = std::fs::read(obs(0)).unwrap();
    std::fs::write(obs(0), &bytes[..bytes.len() / 3]).unwrap();
    // obs 1..6 edited with h5py; obs 7 gets NaN raw samples (calibrate flags them).
    let corrupt = r#"
import sys, h5py, numpy as np
d = sys.argv[1]
def edit(i):
    return h5py.File(f'{d}/obs/obs={i:04d}.h5', 'r+')
with edit(1) as f:
    q = f['attitude/quat'][:]
    del f['attitude/quat']
    f['attitude/quat'] = q[:, :3]
with edit(2) as f:
    f['attitude/quat'][5] = f['attitude/quat'][5] * 1.1
with edit(3) as f:
    t = f['attitude/time'][:]
    t[10], t[11] = t[11], t[10]
    f['attitude/time'][:] = t
with edit(4) as f:
    f['attitude/quat'][7, 2] = np.nan
with edit(5) as f:
    f['detectors/d01b'].attrs['t0'] = f['detectors/d01b'].attrs['t0'] + 30.0
with edit(6) as f:
    f['attitude/velocity'][3, 1] = np.inf
with edit(7) as f:
    s = f['detectors/d00a/signal']
    s[100:110] = np.nan
    s[500] = np.inf
"#;
    python(corrupt, &[s(&data)]);
    let pcfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let run_dir = tmp.path().join("run");
    let out = run_stage("pointing", &pcfg, &list, &run_dir, 3, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let mut expected: Vec<(String, String)> = (0..7)
        .map(|i| (format!("obs={i:04}"), "bad-input".to_string()))
        .collect();
    expected.push(("obs=0007".into(), "done".into()));
    assert_eq!(outcomes(&run_dir, "pointing"), expected);
    let report = report(&run_dir);
    let failures = report["failures"].as_array().unwrap();
    let message = |unit: &str| -> String {
        let f = failures
            .iter()
            .find(|f| f["unit"] == unit)
            .unwrap_or_else(|| panic!("{unit} not in {failures:?}"));
        f.to_string()
    };
    let want = [
        (0, "obs=0000.h5", "cannot open"),
        (
            1,
            "dataset 'attitude/quat' has shape [481, 3], expected [481, 4]",
            "",
        ),
        (2, "'attitude/quat'", "has norm 1.1"),
        (3, "'attitude/time'", "not strictly increasing"),
        (4, "'attitude/quat'", "not finite"),
        (5, "'detectors/d01b/signal'", "outside the attitude span"),
        (6, "'attitude/velocity'", "not finite"),
    ];
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for (i, a, b) in want {
        let unit = format!("obs={i:04}");
        let m = message(&unit);
        let file = format!("obs={i:04}.h5");
        assert!(
            m.contains(&file) && m.contains(a) && m.contains(b),
            "{unit}: {m}"
        );
        let line = format!(
            "{unit} [bad-input] {}",
            data.join("obs").join(&file).display()
        );
        assert!(stderr.contains(&line), "{unit} not named:\n{stderr}");
    }
    // Calibrate: the units without pointing fail as dependencies, obs 7 is calibrated with its
    // non-finite samples flagged and zeroed.
    let ccfg = stage_config(tmp.path(), "c.toml", "calibrate", "");
    let out = run_stage("calibrate", &ccfg, &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let mut expected: Vec<(String, String)> = (0..7)
        .map(|i| (format!("obs={i:04}"), "dependency-failed".to_string()))
        .collect();
    expected.push(("obs=0007".into(), "done".into()));
    assert_eq!(outcomes(&run_dir, "calibrate"), expected);
    let check = r#"
import sys, h5py, numpy as np
c = h5py.File(sys.argv[1] + '/calibrate/obs=0007.h5', 'r')['detectors/d00a']
sig, flags = c['signal'][:], c['flags'][:]
assert np.isfinite(sig).all()
bad = np.nonzero(flags)[0]
assert list(bad) == list(range(100, 110)) + [500], bad
assert (flags[bad] == 0x80).all() and (sig[bad] == 0).all()
assert c.attrs['n_good'] == len(sig) - 11
print('ok')
"#;
    assert_eq!(python(check, &[s(&run_dir)]).trim(), "ok");
}

#[test]
fn shipped_cmb_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let p: skypipe_cmb::PointingFile<skypipe_engine::RunOptions> =
        skypipe_engine::load_config(Some(&dir.join("pointing.toml"))).unwrap();
    p.run.validate().unwrap();
    assert_eq!(p.pointing.nside, 2048);
    let c: skypipe_cmb::CalibrateFile<skypipe_engine::RunOptions> =
        skypipe_engine::load_config(Some(&dir.join("calibrate.toml"))).unwrap();
    c.run.validate().unwrap();
    let text = std::fs::read_to_string(dir.join("sim-cmb.toml")).unwrap();
    let sim = skypipe_cmb::sim::SimConfig::from_toml(skypipe_cmb::sim::Size::Tiny, &text)
        .unwrap_or_else(|e| panic!("sim-cmb.toml: {e}"));
    // The shipped simulation config spells out the tiny preset.
    assert_eq!(
        sim,
        skypipe_cmb::sim::SimConfig::preset(skypipe_cmb::sim::Size::Tiny)
    );
    // Unknown keys are refused.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "[pointing]\nnsides = 4\n").unwrap();
    let e = skypipe_engine::load_config::<skypipe_cmb::PointingFile<skypipe_engine::RunOptions>>(
        Some(bad.path()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nsides"), "{e}");
}

#[test]
fn inputs_written_with_h5py_as_documented_are_accepted() {
    // The docs/formats.md recipe, with numpy fixed-length strings and integer attributes.
    let tmp = tempfile::tempdir().unwrap();
    let write = r#"
import sys, json, h5py, numpy as np
d = sys.argv[1]
with h5py.File(d + '/fp.h5', 'w') as f:
    g = f.create_group('detectors/bolo1')
    g.attrs['quat'] = [0.0, 0.0, 0.0, 1.0]
    g.attrs['pol_angle_deg'] = 30
    g.attrs['pol_efficiency'] = 1
    g.attrs['rate_hz'] = 100
    g.attrs['some_other_key'] = 'ignored'
t0 = 1.7e9
times = t0 + np.arange(81) / 8.0
ang = 2 * np.pi * (times - t0) / 60.0
quats = np.stack([np.sin(ang / 2), np.zeros_like(ang), np.zeros_like(ang), np.cos(ang / 2)], -1)
with h5py.File(d + '/o.h5', 'w') as f:
    a = f.create_group('attitude')
    a.attrs['frame'] = np.bytes_('ECLIPTIC')
    a['time'] = times
    a['quat'] = quats
    a['velocity'] = np.tile([0.0, 30.0, 0.0], (81, 1)).astype(np.float32)
    g = f.create_group('detectors/bolo1')
    g.attrs['t0'] = t0
    g.attrs['rate_hz'] = 100
    g['signal'] = np.ones(1000, np.float32)
    g['flags'] = np.zeros(1000, np.uint8)
json.dump({'format': 'skypipe-cmb-observations/1', 'focal_plane': 'fp.h5',
           'observations': [{'obs': 421, 'file': 'o.h5'}]}, open(d + '/list.json', 'w'))
"#;
    python(write, &[s(tmp.path())]);
    let cfg = stage_config(
        tmp.path(),
        "p.toml",
        "pointing",
        "nside = 16\nframe = \"input\"\naberration = false",
    );
    let list = tmp.path().join("list.json");
    let run_dir = tmp.path().join("run");
    let out = run_stage(
        "pointing",
        &cfg,
        &list,
        &run_dir,
        0,
        &["--unit", "obs=0421"],
    );
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    // Boresight along ẑ rotating about x̂ at 1 rpm: sample 0 looks at the north pole.
    let check = r#"
import sys, h5py, numpy as np
p = h5py.File(sys.argv[1] + '/pointing/obs=0421.h5', 'r')
assert p.attrs['frame'] == 'ecliptic'
g = p['detectors/bolo1']
assert g['pixels'][0] == 0 and abs(g['theta'][0]) < 1e-12, (g['pixels'][0], g['theta'][0])
t = np.arange(1000) / 100.0
assert np.allclose(g['theta'][:], 2 * np.pi * t / 60.0, atol=1e-9)
print('ok')
"#;
    assert_eq!(python(check, &[s(&run_dir)]).trim(), "ok");
}

#[test]
fn single_precision_pointing_halves_the_files_and_gives_the_same_maps() {
    let tmp = tempfile::tempdir().unwrap();
    // Cross-linked enough for a binned map at nside 64 (the chain tests' scan).
    let list = simulate(
        tmp.path(),
        "observations = 4\nobs_duration_s = 60.0\nprecession_deg = 7.5\n\
         precession_period_days = 0.01\ndetector_pairs = 2\n",
    );
    let obs = format!("observations = \"{}\"", list.display());
    let mcfg = stage_config(
        tmp.path(),
        "m.toml",
        "mapmake",
        &format!("{obs}\nquicklook_width = 0\ndestripe = false"),
    );
    let ccfg = stage_config(tmp.path(), "c.toml", "calibrate", &obs);
    for (name, extra) in [("double", ""), ("single", "output_precision = \"single\"")] {
        let pcfg = stage_config(
            tmp.path(),
            &format!("p-{name}.toml"),
            "pointing",
            &format!("{POINTING}\n{extra}"),
        );
        let run_dir = tmp.path().join(name);
        for (stage, cfg) in [
            ("pointing", &pcfg),
            ("calibrate", &ccfg),
            ("mapmake", &mcfg),
        ] {
            let out = run_stage(stage, cfg, &list, &run_dir, 2, &[]);
            assert_eq!(code(&out.status), 0, "{name} {stage}: {}", text(&out));
        }
    }
    // Pixels identical (int32 against int64), weights and angles to float32 rounding, files
    // about half the size; calibrated timestreams within 1e-9 K (float32 θ, φ move the dipole
    // template by < 1e-9 K against ≈ 600 µK of noise per sample); binned maps with identical
    // hits and I, Q, U within 5e-5 of the I map's RMS (float32 weights, 6e-8 relative, amplified
    // by the 3×3 pixel solves of this weakly cross-linked scan; 1.5e-5 measured).
    let check = r#"
import sys, os, h5py, numpy as np, healpy as hp
d, s = sys.argv[1], sys.argv[2]
size = lambda r: sum(os.path.getsize(f'{r}/pointing/obs={o:04d}.h5') for o in range(4))
ratio = size(s) / size(d)
assert 0.45 < ratio < 0.56, ratio
for o in range(4):
    pd = h5py.File(f'{d}/pointing/obs={o:04d}.h5', 'r')
    ps = h5py.File(f'{s}/pointing/obs={o:04d}.h5', 'r')
    cd = h5py.File(f'{d}/calibrate/obs={o:04d}.h5', 'r')
    cs = h5py.File(f'{s}/calibrate/obs={o:04d}.h5', 'r')
    for det in pd['detectors']:
        a, b = pd['detectors'][det], ps['detectors'][det]
        assert b['pixels'].dtype == np.int32 and b['weights'].dtype == np.float32
        assert b['theta'].dtype == np.float32 and a['pixels'].dtype == np.uint64
        assert (a['pixels'][:] == b['pixels'][:].astype(np.uint64)).all()
        assert np.abs(a['weights'][:] - b['weights'][:]).max() < 1e-7
        for k in ('theta', 'phi', 'psi'):
            assert (a[k][:].astype(np.float32) == b[k][:]).all(), k
        dsig = np.abs(cd['detectors'][det]['signal'][:] - cs['detectors'][det]['signal'][:])
        assert dsig.max() < 1e-9, dsig.max()
ma = hp.read_map(d + '/mapmake/map_binned.fits', field=(0, 1, 2, 3))
mb = hp.read_map(s + '/mapmake/map_binned.fits', field=(0, 1, 2, 3))
assert (ma[3] == mb[3]).all()
seen = (ma[3] > 0) & (ma[0] != hp.UNSEEN)
assert seen.sum() > 100, (seen.sum(), (ma[3] > 0).sum())
assert ((ma[0] == hp.UNSEEN) == (mb[0] == hp.UNSEEN)).all()
rms = np.sqrt(np.mean(ma[0][seen] ** 2))
err = max(np.abs(ma[c][seen] - mb[c][seen]).max() for c in range(3)) / rms
assert err < 5e-5, err
print('ok', ratio, err)
"#;
    let out = python(
        check,
        &[s(&tmp.path().join("double")), s(&tmp.path().join("single"))],
    );
    assert!(out.starts_with("ok"), "{out}");
    eprintln!("single vs double precision: {out}");
}

#[test]
fn an_observation_list_renumbering_a_file_is_said() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(
        tmp.path(),
        "observations = 2\nobs_duration_s = 20.0\ndetector_pairs = 1\n",
    );
    // The list swaps the two files' numbers: each unit still runs under the list's number,
    // and the file is named with the number it carries.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&list).unwrap()).unwrap();
    json["observations"][0]["obs"] = 1.into();
    json["observations"][1]["obs"] = 0.into();
    let swapped = list.with_file_name("swapped.json");
    std::fs::write(&swapped, json.to_string()).unwrap();
    let cfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let out = run_stage("pointing", &cfg, &swapped, &tmp.path().join("run"), 0, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("obs=0000.h5: @obs is 0 but the observation list names it obs=0001"),
        "{all}"
    );
    assert!(tmp.path().join("run/pointing/obs=0001.h5").is_file());
}

/// The comparison the reproducibility tests make: provenance (cards or a table, HDF5
/// attributes) is left out, and a changed value is still seen.
#[test]
fn files_compared_without_provenance_still_differ_in_their_data() {
    use skypipe_io::Durability;
    use skypipe_io::fits::{Column, FitsWriter};
    use skypipe_io::hdf5::H5Writer;
    use skypipe_io::provenance::Provenance;
    let tmp = tempfile::tempdir().unwrap();
    let provenance = |inputs: usize, run: &str| {
        Provenance::new(
            "calibrate",
            "obs=0001",
            run,
            (0..inputs).map(|i| ("raw".to_string(), format!("/{run}/obs={i:04}.h5"))),
        )
    };
    let fits = |name: &str, p: &Provenance, value: f64| {
        let path = tmp.path().join(name);
        let mut w = FitsWriter::create(&path, false, None).unwrap();
        w.table("DATA", &[Column::f64("X", "m", vec![1.0, value])], &[])
            .unwrap();
        p.write_fits(&mut w).unwrap();
        w.commit().unwrap();
        without_provenance(&path)
    };
    let cards = fits("a.fits", &provenance(2, "run1"), 2.0);
    assert!(cards == fits("b.fits", &provenance(3, "a/much/longer/run/directory"), 2.0));
    assert!(
        cards == fits("c.fits", &provenance(100, "run2"), 2.0),
        "table"
    );
    assert!(cards != fits("d.fits", &provenance(2, "run1"), 3.0));
    let hdf5 = |name: &str, p: &Provenance, value: f64| {
        let path = tmp.path().join(name);
        let w = H5Writer::create(&path, Durability::ProcessCrashOnly).unwrap();
        w.attr_str("", "format", "test/1").unwrap();
        p.write_hdf5(&w).unwrap();
        w.write_1d("detectors/a/signal", &[1.0, value]).unwrap();
        w.commit().unwrap();
        without_provenance(&path)
    };
    let attributes = hdf5("a.h5", &provenance(2, "run1"), 2.0);
    assert!(attributes == hdf5("b.h5", &provenance(5, "run2"), 2.0));
    assert!(attributes != hdf5("c.h5", &provenance(2, "run1"), 3.0));
}
