//! End-to-end test of `skypipe-mosaic` under mpirun on the simulated `small` camera (the tiny
//! one has about ten bright stars per CCD, too few to pin an affine correction per CCD to a
//! few hundredths of a pixel): header WCS wrong by arcseconds, single-frame without
//! calibration, then the joint solution checked against the simulator's true WCS and read back
//! by astropy; a corrupt catalogue fails its tract alone, naming the file.

mod common;

use common::*;
use skypipe_io::fits::{FitsReader, Hdu};
use skypipe_io::provenance::Provenance;
use skypipe_optical::registry::Registry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    match name {
        "sim" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim")),
        "singleframe" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-singleframe")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-mosaic")),
    }
}

/// Astropy's check of one tract's output (`data` from the simulator, `run` the run directory):
/// per CCD, the true sky positions of bright stars (the truth WCS at their true pixels) through
/// the single-frame WCS (calexp `IMAGE`) and through the corrected WCS (the `WCS` column), the
/// pixel distance to the true pixels; and astropy's sky positions of a few pixels through the
/// corrected WCS (`SKY visit ccd x y ra dec`). Prints `RESULT key=value …`.
const TRUTH_CHECK: &str = r#"
import sys, warnings
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
warnings.simplefilter("ignore")
data, run, tract = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = fits.open(f"{run}/mosaic/tract-{tract:04d}.fits")
before, after, solved = [], [], 0
for row in out["MOSAIC"].data:
    v, c = int(row["VISIT"]), int(row["CCD"])
    truth = fits.open(f"{data}/truth/v{v:04d}/c{c:02d}.fits")
    h, t = truth[0].header, truth["OBJECTS"].data
    tw = WCS(naxis=2)
    tw.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    tw.wcs.crpix = [h["TCRPIX1"], h["TCRPIX2"]]
    tw.wcs.crval = [h["TCRVAL1"], h["TCRVAL2"]]
    tw.wcs.cd = [[h["TCD1_1"], h["TCD1_2"]], [h["TCD2_1"], h["TCD2_2"]]]
    bright = (t["TYPE"] == "star") & (t["SNR"] > 50)
    ra, dec = tw.all_pix2world(t["X"][bright], t["Y"][bright], 1)
    old = WCS(fits.getheader(f"{run}/singleframe/calexp/v{v:04d}/c{c:02d}.fits", "IMAGE"))
    x, y = old.all_world2pix(ra, dec, 1)
    before += list(np.hypot(x - t["X"][bright], y - t["Y"][bright]))
    if row["SOLVED"] != 1:
        continue
    solved += 1
    w = WCS(fits.Header.fromstring(row["WCS"]))
    x, y = w.all_world2pix(ra, dec, 1)
    after += list(np.hypot(x - t["X"][bright], y - t["Y"][bright]))
    g = np.array([[1.0, 1.0], [512.0, 1024.0], [100.5, 300.25], [437.0, 811.0]])
    for (px, py), (a, d) in zip(g, w.all_pix2world(g, 1)):
        print(f"SKY {v} {c} {px} {py} {a:.13f} {d:.13f}")
b, a = np.array(before), np.array(after)
p = out[0].header
print(f"RESULT ccds={len(out['MOSAIC'].data)} solved={solved} n={len(a)} "
      f"before_px={np.sqrt(np.mean(b ** 2)):.4f} after_px={np.sqrt(np.mean(a ** 2)):.4f} "
      f"max_after_px={a.max():.4f} ref_before_px={p['REFBEFP']:.4f} ref_after_px={p['REFAFTP']:.4f} "
      f"int_after_px={p['INTAFTP']:.4f}")
"#;

fn result_value(stdout: &str, key: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

/// `(unit, outcome, message)` of every mosaic ledger record.
fn outcomes(run_dir: &Path) -> Vec<(String, String, String)> {
    ledger(run_dir, "mosaic")
        .into_iter()
        .map(|r| {
            (
                r["unit"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r.get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The `small` camera simulated into `dir/data` (header WCS wrong by a few arcseconds: the
/// simulator's own error plus 3″, 0.01°, 3e-4; reference positions with 2 mas noise), then
/// single-frame processing without calibration into `run_dir` on 2 ranks. Returns the data
/// directory.
fn simulated_singleframe_run(dir: &Path, run_dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = run(direct(
        &bin("sim"),
        &[
            "image",
            "--out",
            data.to_str().unwrap(),
            "--size",
            "small",
            "--seed",
            "7",
            "--wcs-error",
            "3,0.01,0.0003",
            "--reference-noise-mas",
            "2",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let sf = dir.join("singleframe.toml");
    std::fs::write(&sf, "[run]\nfsync = false\n").unwrap();
    let out = run(mpirun(
        2,
        &bin("singleframe"),
        &[
            "--config",
            sf.to_str().unwrap(),
            "--input",
            data.join("units.json").to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    data
}

#[test]
fn mosaic_corrects_wrong_header_wcs_to_the_truth_and_a_corrupt_catalogue_fails_its_tract() {
    let tmp = tempfile::tempdir().unwrap();
    let run1 = tmp.path().join("run");
    let data = simulated_singleframe_run(tmp.path(), &run1);
    let run2 = tmp.path().join("run2");
    copy_dir(&run1, &run2);

    // 88 rings put a tract boundary at Dec 2.0225°: the camera's upper row of CCDs straddles
    // it, the lower row lies below it (and below the upper tract's patches of 40″, which reach
    // past the boundary). Two tracts, the lower one holding every CCD.
    let cfg = tmp.path().join("mosaic.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\n[mosaic]\nreference = {:?}\nreference_error_mas = 2.0\n\
             bright = {{ snr = 20.0 }}\nthreads = 2\n[mosaic.skymap]\nrings = 88\npatch_size = 200\nborder = 10\n",
            data.join("reference.fits").to_str().unwrap()
        ),
    )
    .unwrap();
    let mosaic = |run_dir: &Path| {
        run(mpirun(
            2,
            &bin("mosaic"),
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--run-dir",
                run_dir.to_str().unwrap(),
            ],
        ))
    };
    let out = mosaic(&run1);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let done = outcomes(&run1);
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(done.iter().all(|d| d.1 == "done"), "{done:?}");
    let tracts: Vec<u32> = done
        .iter()
        .map(|d| d.0.strip_prefix("tract=").unwrap().parse().unwrap())
        .collect();
    // Each tract file names what it was made from: the reference catalogue, and the
    // catalogue and calexp of each of its CCDs.
    for &tract in &tracts {
        let path = run1.join(format!("mosaic/tract-{tract:04}.fits"));
        let p = Provenance::read(&path)
            .unwrap()
            .expect("a tract file has provenance");
        assert_eq!(
            (p.stage.as_str(), p.unit.clone()),
            ("mosaic", format!("tract={tract}"))
        );
        let ccds = FitsReader::open(&path)
            .unwrap()
            .key_i64(Hdu::Primary, "NCCD")
            .unwrap() as usize;
        let count = |kind: &str| p.inputs.iter().filter(|i| i.kind == kind).count();
        assert_eq!(
            (
                count("sources"),
                count("calexp"),
                count("reference-catalog")
            ),
            (ccds, ccds, 1),
            "{p:?}"
        );
    }
    let reg = Registry::open_read_only(run1.join("registry.sqlite3")).unwrap();
    let mut lower = None;
    for &tract in &tracts {
        let py = Command::new("/usr/bin/python3")
            .args(["-c", TRUTH_CHECK])
            .arg(&data)
            .arg(&run1)
            .arg(tract.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&py.stdout).into_owned();
        assert!(
            py.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&py.stderr)
        );
        println!(
            "tract {tract}: {}",
            stdout.lines().last().unwrap_or_default()
        );
        // Astropy's sky positions of the written WCS equal skypipe's (WCSLIB on the registry's
        // row) to well under a milliarcsecond.
        let mut compared = 0;
        for line in stdout.lines().filter(|l| l.starts_with("SKY ")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (visit, ccd): (u64, u32) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            let v: Vec<f64> = f[3..].iter().map(|x| x.parse().unwrap()).collect();
            let cards = reg
                .mosaic_wcs(visit, ccd, tract)
                .unwrap()
                .expect("a registry row");
            let wcs = skypipe_wcs::Wcs::from_header("registry", &cards).unwrap();
            let sky = wcs.pixel_to_sky(&[[v[0], v[1]]]).unwrap()[0].unwrap();
            let d = ((sky[0] - v[2]) * v[3].to_radians().cos()).hypot(sky[1] - v[3]) * 3.6e6;
            assert!(d < 1.0, "{line}: skypipe {sky:?}, {d} mas apart");
            compared += 1;
        }
        let ccds = result_value(&stdout, "ccds");
        assert_eq!(result_value(&stdout, "solved"), ccds, "{stdout}");
        assert_eq!(compared as f64, 4.0 * ccds);
        if ccds == 16.0 {
            lower = Some(tract);
            // Bright stars against the truth: from tens of pixels to hundredths.
            let (before, after) = (
                result_value(&stdout, "before_px"),
                result_value(&stdout, "after_px"),
            );
            assert!(before > 5.0, "{stdout}");
            assert!(after < before / 3.0 && after < 0.03, "{stdout}");
            assert!(result_value(&stdout, "max_after_px") < 0.1, "{stdout}");
            // The header's statistics agree: the residuals against the reference fell.
            assert!(result_value(&stdout, "ref_before_px") > 5.0, "{stdout}");
            assert!(result_value(&stdout, "ref_after_px") < 0.2, "{stdout}");
        }
    }
    let lower = lower.expect("a tract holding all 16 CCDs");

    // A corrupt catalogue of a CCD in one tract only (a lower-row CCD): that tract fails as bad
    // input naming the file; the other completes.
    let only_lower: Vec<(u64, u32)> = (1..=4u64)
        .flat_map(|v| (0..4u32).map(move |c| (v, c)))
        .filter(|&(v, c)| {
            tracts
                .iter()
                .filter(|&&t| reg.mosaic_wcs(v, c, t).unwrap().is_some())
                .count()
                == 1
        })
        .collect();
    println!("CCDs in one tract only: {only_lower:?}");
    let (visit, ccd) = only_lower[0];
    let catalog = run2.join(format!("singleframe/src/v{visit:04}/c{ccd:02}.fits"));
    let bytes = std::fs::read(&catalog).unwrap();
    std::fs::write(&catalog, &bytes[..bytes.len() / 2]).unwrap();
    let out = mosaic(&run2);
    assert_ne!(code(&out.status), 0, "{}", text(&out));
    let recs = outcomes(&run2);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for (unit, outcome, message) in recs {
        if unit == format!("tract={lower}") {
            assert_eq!(outcome, "bad-input", "{message}");
            assert!(message.contains(catalog.to_str().unwrap()), "{message}");
        } else {
            assert_eq!(outcome, "done", "{unit}: {message}");
        }
    }
}

/// Bright coadd detections (PSF S/N > 50) of every catalogue under `run_dir/coadd/src`, each
/// with its distance (arcsec) to the nearest reference star: `(median, count)`.
fn coadd_offsets_from_reference(run_dir: &Path, reference: &Path) -> (f64, usize) {
    let mut r = FitsReader::open(reference).unwrap();
    let (ref_ra, ref_dec) = (
        r.column_f64(Hdu::Name("REFCAT"), "RA").unwrap(),
        r.column_f64(Hdu::Name("REFCAT"), "DEC").unwrap(),
    );
    let mut offsets = Vec::new();
    for (name, _) in files(run_dir) {
        if !(name.starts_with("coadd/src/") && name.ends_with(".fits")) {
            continue;
        }
        let mut c = FitsReader::open(run_dir.join(&name)).unwrap();
        let t = Hdu::Name("SOURCES");
        let ra = c.column_f64(t, "RA").unwrap();
        let dec = c.column_f64(t, "DEC").unwrap();
        let flux = c.column_f64(t, "FLUX_PSF").unwrap();
        let err = c.column_f64(t, "FLUX_PSF_ERR").unwrap();
        for i in 0..ra.len() {
            if (flux[i] / err[i]).is_nan() || flux[i] / err[i] <= 50.0 {
                continue;
            }
            let cos = dec[i].to_radians().cos();
            let nearest = ref_ra
                .iter()
                .zip(&ref_dec)
                .map(|(a, d)| ((a - ra[i]) * cos).hypot(d - dec[i]) * 3600.0)
                .fold(f64::INFINITY, f64::min);
            offsets.push(nearest);
        }
    }
    assert!(!offsets.is_empty(), "no bright coadd detection");
    offsets.sort_by(f64::total_cmp);
    (offsets[offsets.len() / 2], offsets.len())
}

/// Records the raw regions of `data`'s CCDs in `run_dir` (`skypipe-ingest`), then runs the
/// chain file `chain` there on 2 ranks; both must exit 0.
fn ingest_and_run_chain(data: &Path, run_dir: &Path, chain: &Path) {
    let out = run(direct(
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-ingest")),
        &[
            "--input",
            data.join("units.json").to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let out = run(mpirun(
        2,
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-run")),
        &[
            "--config",
            chain.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
}

/// Single-frame processing, mosaic and coadd (`wcs = "mosaic"`) as one chain planned from the
/// ingested raw regions, on CCDs whose header WCS is wrong by arcseconds (single-frame without
/// calibration keeps it): every unit ends well, each tract's mosaic is recorded before the warps
/// of its tract, and bright stars in the coadds land on their reference positions to a few
/// milliarcseconds; the same coadds made with the header WCS put them arcseconds away.
#[test]
fn singleframe_mosaic_and_coadd_chain_puts_stars_at_their_true_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(direct(
        &bin("sim"),
        &[
            "image",
            "--out",
            data.to_str().unwrap(),
            "--size",
            "small",
            "--seed",
            "11",
            "--wcs-error",
            "3,0.01,0.0003",
            "--reference-noise-mas",
            "2",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let run_dir = tmp.path().join("run");
    let reference = data.join("reference.fits");
    let skymap = "rings = 359\npixel_scale = 0.2\npatch_size = 1000\nborder = 50\n";
    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "[run]\nfsync = false\n[chain]\nstages = [\"singleframe\", \"mosaic\", \"coadd\"]\n\
             [singleframe]\ninput = {:?}\n\
             [mosaic]\nreference = {:?}\nreference_error_mas = 2.0\nbright = {{ snr = 20.0 }}\n\
             [mosaic.skymap]\n{skymap}\
             [coadd]\nwcs = \"mosaic\"\nmissing_zero_point = \"unscaled\"\nbands = [\"r\"]\n\
             [coadd.skymap]\n{skymap}",
            data.join("units.json").to_str().unwrap(),
            reference.to_str().unwrap(),
        ),
    )
    .unwrap();
    ingest_and_run_chain(&data, &run_dir, &chain);

    let mosaic_seq: BTreeMap<String, u64> = ledger(&run_dir, "mosaic")
        .into_iter()
        .map(|r| {
            assert_eq!(r["outcome"], "done", "{r}");
            (
                r["unit"].as_str().unwrap().to_string(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!mosaic_seq.is_empty());
    let records = ledger(&run_dir, "coadd");
    let mut warps_done = 0;
    for r in &records {
        let unit = r["unit"].as_str().unwrap();
        let outcome = r["outcome"].as_str().unwrap();
        assert!(outcome == "done" || outcome == "no-work", "{unit}: {r}");
        if unit.contains(",visit=") && outcome == "done" {
            warps_done += 1;
            let tract = unit.split(',').next().unwrap();
            assert!(
                r["seq"].as_u64().unwrap() > mosaic_seq[tract],
                "{unit} recorded before {tract}'s mosaic"
            );
        }
    }
    assert!(warps_done >= 2, "{records:?}");

    let (mosaic_median, n) = coadd_offsets_from_reference(&run_dir, &reference);
    println!("mosaic WCS: {n} bright coadd stars, median offset {mosaic_median:.4}\"");
    assert!(n >= 20, "{n}");
    assert!(mosaic_median < 0.02, "{mosaic_median}");

    // The same coadds with the calexps' (header) WCS.
    let header_run = tmp.path().join("header");
    let cfg = tmp.path().join("coadd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\n[coadd]\nwcs = \"singleframe\"\nmissing_zero_point = \"unscaled\"\n\
             bands = [\"r\"]\n[coadd.skymap]\n{skymap}"
        ),
    )
    .unwrap();
    let out = run(mpirun(
        2,
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-coadd")),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--registry",
            run_dir.join("registry.sqlite3").to_str().unwrap(),
            "--run-dir",
            header_run.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let (header_median, n) = coadd_offsets_from_reference(&header_run, &reference);
    println!("header WCS: {n} bright coadd stars, median offset {header_median:.4}\"");
    assert!(header_median > 1.0, "{header_median}");
}

/// Runs `cmd` to completion within `limit`, killing its process group after that (a hang
/// fails the test instead of stalling it).
fn run_within(mut cmd: Command, limit: std::time::Duration) -> std::process::Output {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    wait_with_deadline(cmd.spawn().unwrap(), limit)
}

/// The mosaic outputs of a run directory that must not depend on the ranks: every tract file's
/// bytes without its provenance, and every `mosaic_wcs` row of the registry (`(visit, ccd,
/// tract)` → keyrecords).
fn mosaic_outputs(run_dir: &Path, tracts: &[u32]) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    // Without provenance: the two runs read their catalogues from different run directories.
    let tract_files = common::content::files_without_provenance(&run_dir.join("mosaic"));
    let reg = Registry::open_read_only(run_dir.join("registry.sqlite3")).unwrap();
    let mut rows = Vec::new();
    for &tract in tracts {
        for visit in 1..=4u64 {
            for ccd in 0..4u32 {
                if let Some(cards) = reg.mosaic_wcs(visit, ccd, tract).unwrap() {
                    rows.push(format!("{tract} {visit} {ccd} {cards}"));
                }
            }
        }
    }
    (tract_files, rows)
}

/// With `large_tract_ccds = 10` the tract holding all 16 CCDs of the small camera is planned on
/// up to 4 ranks: on a 3-rank job it runs on several (each reading and fitting a block of
/// CCDs), and its tract file and registry rows are the same bits as a one-rank job's. A corrupt
/// catalogue read by one of its ranks fails that tract alone as bad input naming the file, on
/// every rank (no rank is left waiting in a collective): the job ends with exit 2.
#[test]
fn a_large_tract_shared_by_three_ranks_gives_the_one_rank_outputs_and_fails_whole_on_a_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let data = simulated_singleframe_run(tmp.path(), &one);
    let three = tmp.path().join("three");
    let corrupt = tmp.path().join("corrupt");
    copy_dir(&one, &three);
    copy_dir(&one, &corrupt);

    // The sky map of the first test: two tracts, the lower one holding all 16 CCDs.
    let cfg = tmp.path().join("mosaic.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\n[mosaic]\nreference = {:?}\nreference_error_mas = 2.0\n\
             bright = {{ snr = 20.0 }}\nlarge_tract_ccds = 10\nranks_per_large_tract = 4\n\
             [mosaic.skymap]\nrings = 88\npatch_size = 200\nborder = 10\n",
            data.join("reference.fits").to_str().unwrap()
        ),
    )
    .unwrap();
    let args = |run_dir: &Path| {
        vec![
            "--config".to_string(),
            cfg.to_str().unwrap().to_string(),
            "--run-dir".to_string(),
            run_dir.to_str().unwrap().to_string(),
        ]
    };
    let limit = std::time::Duration::from_secs(60);
    let one_args = args(&one);
    let one_args: Vec<&str> = one_args.iter().map(String::as_str).collect();
    let out = run_within(direct(&bin("mosaic"), &one_args), limit);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let three_args = args(&three);
    let three_args: Vec<&str> = three_args.iter().map(String::as_str).collect();
    let out = run_within(mpirun(3, &bin("mosaic"), &three_args), limit);
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    // Which tract is large, and on how many ranks it ran.
    let records = ledger(&three, "mosaic");
    assert_eq!(records.len(), 2, "{records:?}");
    let mut tracts = Vec::new();
    let mut large = None;
    for r in &records {
        assert_eq!(r["outcome"], "done", "{r}");
        let tract: u32 = r["unit"].as_str().unwrap()["tract=".len()..]
            .parse()
            .unwrap();
        tracts.push(tract);
        let ranks = r
            .get("ranks")
            .and_then(|v| v.as_array())
            .map_or(1, Vec::len);
        println!("tract {tract}: {ranks} ranks");
        if ranks > 1 {
            large = Some(tract);
        }
    }
    let large = large.expect("the 16-CCD tract ran on several ranks");
    let (one_files, one_rows) = mosaic_outputs(&one, &tracts);
    let (three_files, three_rows) = mosaic_outputs(&three, &tracts);
    assert_eq!(one_files.len(), 2, "{:?}", one_files.keys());
    assert_eq!(
        one_files.keys().collect::<Vec<_>>(),
        three_files.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &one_files {
        assert!(
            three_files[name] == *bytes,
            "{name} differs between 1 and 3 ranks"
        );
    }
    assert!(
        one_rows.len() >= 16,
        "the large tract solves its CCDs: {one_rows:?}"
    );
    assert_eq!(one_rows, three_rows);

    // A truncated catalogue of the last CCD (in the unit's (visit, ccd) order, so read by the
    // large tract's last rank) that lies in the large tract only.
    let reg = Registry::open_read_only(one.join("registry.sqlite3")).unwrap();
    let (visit, ccd) = (1..=4u64)
        .flat_map(|v| (0..4u32).map(move |c| (v, c)))
        .filter(|&(v, c)| {
            tracts
                .iter()
                .all(|&t| reg.mosaic_wcs(v, c, t).unwrap().is_some() == (t == large))
        })
        .last()
        .expect("a CCD in the large tract only");
    let catalog = corrupt.join(format!("singleframe/src/v{visit:04}/c{ccd:02}.fits"));
    let bytes = std::fs::read(&catalog).unwrap();
    std::fs::write(&catalog, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt_args = args(&corrupt);
    let corrupt_args: Vec<&str> = corrupt_args.iter().map(String::as_str).collect();
    let out = run_within(mpirun(3, &bin("mosaic"), &corrupt_args), limit);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    for (unit, outcome, message) in outcomes(&corrupt) {
        if unit == format!("tract={large}") {
            assert_eq!(outcome, "bad-input", "{message}");
            assert!(message.contains(catalog.to_str().unwrap()), "{message}");
        } else {
            assert_eq!(outcome, "done", "{unit}: {message}");
        }
    }
}

/// Every file under `dir` (recursively) whose name ends in `.fits`.
fn fits_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(fits_files(&path));
        } else if path.extension().is_some_and(|e| e == "fits") {
            files.push(path);
        }
    }
    files
}

/// `(tract, visit, ccd)` of a warp from its path `coadd/warp/tTTTT/pXXX-YYY/vVVVV-cCC.fits`.
fn warp_ids(path: &Path) -> (u32, u64, u32) {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    let (v, c) = stem.split_once("-c").unwrap();
    let tract_dir = path
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap();
    let tract = tract_dir.to_str().unwrap()[1..].parse().unwrap();
    (tract, v[1..].parse().unwrap(), c.parse().unwrap())
}

/// The tiny camera's CCDs hold 3–9 reference stars each: with `min_stars_per_ccd = 6` the
/// mosaic solves some CCDs of a tract and leaves the others without a WCS. Coadd with
/// `wcs = "mosaic"` still warps every CCD: a solved one with its mosaic WCS, an unsolved one
/// with its single-frame WCS, flagged `WCSSRC = 'singleframe-fallback'` in the warp and
/// counted in the coadd's `NWCSFALL` / `INWCSn`; no unit fails.
#[test]
fn a_ccd_the_mosaic_left_unsolved_is_warped_with_its_single_frame_wcs_and_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(direct(
        &bin("sim"),
        &["image", "--out", data.to_str().unwrap(), "--size", "tiny"],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let run_dir = tmp.path().join("run");
    let reference = data.join("reference.fits");
    let skymap = "rings = 359\npixel_scale = 0.2\npatch_size = 2000\nborder = 100\n";
    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "[run]\nfsync = false\n[chain]\nstages = [\"singleframe\", \"mosaic\", \"coadd\"]\n\
             [singleframe]\ninput = {units:?}\n[singleframe.calibration]\nreference = {reference:?}\n\
             [mosaic]\nreference = {reference:?}\nplan_margin_arcsec = 60.0\nmin_stars_per_ccd = 6\n\
             [mosaic.skymap]\n{skymap}\
             [coadd]\nwcs = \"mosaic\"\nzero_point = 27.0\nplan_margin_arcsec = 60.0\n\
             [coadd.skymap]\n{skymap}",
            units = data.join("units.json").to_str().unwrap(),
            reference = reference.to_str().unwrap(),
        ),
    )
    .unwrap();
    ingest_and_run_chain(&data, &run_dir, &chain);
    for stage in ["singleframe", "mosaic", "coadd"] {
        for r in ledger(&run_dir, stage) {
            let outcome = r["outcome"].as_str().unwrap();
            assert!(outcome == "done" || outcome == "no-work", "{stage}: {r}");
        }
    }

    let registry = Registry::open_read_only(run_dir.join("registry.sqlite3")).unwrap();
    let (mut solved, mut fallback) = (0, 0);
    for warp in fits_files(&run_dir.join("coadd/warp")) {
        let (tract, visit, ccd) = warp_ids(&warp);
        let source = FitsReader::open(&warp)
            .unwrap()
            .key_string(Hdu::Primary, "WCSSRC")
            .unwrap();
        let has_mosaic_wcs = registry.mosaic_wcs(visit, ccd, tract).unwrap().is_some();
        let expected = if has_mosaic_wcs {
            solved += 1;
            "mosaic"
        } else {
            fallback += 1;
            "singleframe-fallback"
        };
        assert_eq!(source, expected, "{}", warp.display());
    }
    println!("warps with the mosaic WCS: {solved}, with the single-frame fallback: {fallback}");
    assert!(
        solved > 0 && fallback > 0,
        "{solved} solved, {fallback} fallback"
    );

    let mut flagged_in_coadds = 0;
    for coadd in fits_files(&run_dir.join("coadd/coadd")) {
        let mut r = FitsReader::open(&coadd).unwrap();
        let inputs = r.key_i64(Hdu::Primary, "NINPUTS").unwrap();
        let flagged = (1..=inputs)
            .filter(|n| {
                r.key_string(Hdu::Primary, &format!("INWCS{n}")).unwrap() == "singleframe-fallback"
            })
            .count() as i64;
        assert_eq!(
            r.key_i64(Hdu::Primary, "NWCSFALL").unwrap(),
            flagged,
            "{}",
            coadd.display()
        );
        flagged_in_coadds += flagged;
    }
    assert!(flagged_in_coadds > 0);
}
