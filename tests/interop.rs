//! Interoperability: the files skypipe writes, read with the tools users read them with and no
//! skypipe code — Debian's `/usr/bin/python3` with h5py, healpy and astropy (warnings are
//! errors), and the `sqlite3` shell. One tiny simulated run per chain; the checks are the
//! scripts in `tests/python/`, which follow docs/formats.md:
//! - CMB (`cmb_outputs.py`): h5py reads every HDF5 file (focal plane, observations, truth,
//!   pointing, calibrated, baselines) in the documented layout — dataset names, shapes, dtypes,
//!   attributes; healpy reads both maps and their headers give the configured NSIDE, ORDERING and
//!   COORDSYS (the HITS column equals the pointing's pixels moved to that ordering); astropy
//!   verifies them; the run report, ledgers, summary and timeline parse.
//! - Imaging (`imaging_outputs.py`): after the chain singleframe → mosaic → coadd → multiband,
//!   astropy opens and verifies every FITS file of the simulation and the run, evaluates every WCS (round trip pixel → sky → pixel), reads every table with its
//!   units, reads the calexp planes as `CCDData` in electrons; the catalogues' RA/DEC are the
//!   calexp WCS of X/Y; the `sqlite3` shell runs the overlap query of docs/formats.md as written.

mod common;

use common::cmb::{bin, s, simulate};
use common::{code, direct, mpirun, run, text};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `tests/python/<script>` with Debian's Python; panics with its output unless it prints
/// `ok` as its last line.
fn python_script(script: &str, args: &[String]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new("/usr/bin/python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("/usr/bin/python3 (python3-h5py, python3-healpy, python3-astropy)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().last() == Some("ok"),
        "{script} failed:\n{}",
        text(&out)
    );
    eprint!("{stdout}");
}

/// The CMB chain on a tiny simulation (pointing in RING, maps written NESTED in equatorial
/// coordinates, so the headers cannot be right by default), then every file through h5py,
/// healpy and astropy.
#[test]
fn cmb_outputs_read_with_h5py_healpy_and_astropy() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "");
    let obs = format!("observations = \"{}\"", list.display());
    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "[run]\nfsync = false\nprogress_interval_s = 60.0\n\
             [chain]\nstages = [\"pointing\", \"calibrate\", \"mapmake\"]\n\
             [pointing]\n{obs}\nnside = 64\nframe = \"equatorial\"\nchunk_samples = 5000\n\
             [calibrate]\n{obs}\n\
             [mapmake]\n{obs}\nquicklook_width = 200\noutput_ordering = \"nested\"\n"
        ),
    )
    .unwrap();
    let run_dir = tmp.path().join("run");
    let out = run(mpirun(
        2,
        &bin("run"),
        &["--config", &s(&chain), "--run-dir", &s(&run_dir)],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    python_script(
        "cmb_outputs.py",
        &[
            s(&tmp.path().join("data")),
            s(&run_dir),
            "64".into(),
            "NESTED".into(),
            "C".into(),
        ],
    );
}

/// Single-frame processing with calibration against the reference catalogue (so the calexps
/// carry a fitted WCS and `HDRWCS`, the catalogues magnitudes and a primary WCS), then every
/// FITS file through astropy and the registry through the `sqlite3` shell.
#[test]
fn imaging_outputs_read_with_astropy_and_sqlite3() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(direct(
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim")),
        &["image", "--out", &s(&data), "--size", "tiny", "--seed", "3"],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    // The whole imaging chain, so every stage's images and catalogues are read: calibrated
    // exposures, source catalogues, mosaic tract files, warps, coadds, their catalogues and
    // multiband's patch and tract catalogues.
    let run_dir = tmp.path().join("run");
    let out = run(direct(
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-ingest")),
        &[
            "--input",
            &s(&data.join("units.json")),
            "--run-dir",
            &s(&run_dir),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let skymap = "rings = 359\npixel_scale = 0.2\npatch_size = 400\nborder = 20\n";
    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "[run]\nfsync = false\n\
             [chain]\nstages = [\"singleframe\", \"mosaic\", \"coadd\", \"multiband\"]\n\
             [singleframe]\ninput = {:?}\n[singleframe.calibration]\nreference = {:?}\n\
             [mosaic]\nreference = {:?}\nmin_stars_per_ccd = 6\n[mosaic.skymap]\n{skymap}\
             [coadd]\nwcs = \"mosaic\"\n[coadd.skymap]\n{skymap}[multiband.skymap]\n{skymap}",
            s(&data.join("units.json")),
            s(&data.join("reference.fits")),
            s(&data.join("reference.fits")),
        ),
    )
    .unwrap();
    let out = run(mpirun(
        2,
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-run")),
        &["--config", &s(&chain), "--run-dir", &s(&run_dir)],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    for stage in ["mosaic", "coadd", "multiband"] {
        assert!(
            run_dir.join(stage).is_dir(),
            "no {stage} outputs:\n{}",
            text(&out)
        );
    }
    python_script(
        "imaging_outputs.py",
        &[
            s(&data),
            s(&run_dir),
            s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/formats.md")),
        ],
    );
}
