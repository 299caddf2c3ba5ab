//! End-to-end tests of `skypipe-coadd` on the tiny simulated camera: `skypipe-singleframe`
//! (with calibration) fills the registry, then `skypipe-coadd` runs under mpirun. Checked: the
//! plan against a brute-force overlap of every CCD with every patch, the outputs with astropy
//! (WCS, quicklooks, star fluxes through warp + coadd against the inputs'), the registry rows,
//! the coarse-grid interpolation error, and a corrupt calexp that fails its warps alone and
//! leaves its coadds dependency-failed. The coadd kernels (clipping, 1/√N noise) are tested in
//! `crates/coadd`.

mod common;

use common::*;
use skypipe_coadd::{Coadd, CoaddConfig};
use skypipe_io::fits::{FitsReader, Hdu};
use skypipe_registry::{PatchId, Registry, SkyMap, SkyMapConfig};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim"))
}

fn singleframe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-singleframe"))
}

fn coadd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-coadd"))
}

/// Small patches (400 + 2 × 20 pixels of 0.2″), so the tiny field spans a dozen patches.
const SKYMAP: SkyMapConfig = SkyMapConfig {
    rings: 359,
    pixel_scale: 0.2,
    patch_size: 400,
    border: 20,
};

fn coadd_config(dir: &Path) -> PathBuf {
    let path = dir.join("coadd.toml");
    std::fs::write(
        &path,
        format!(
            "[run]\nfsync = false\n[coadd.skymap]\nrings = {}\npixel_scale = {}\npatch_size = {}\nborder = {}\n",
            SKYMAP.rings, SKYMAP.pixel_scale, SKYMAP.patch_size, SKYMAP.border
        ),
    )
    .unwrap();
    path
}

/// Simulates the tiny camera and runs calibrated single-frame processing into `run_dir`.
fn singleframe_run(tmp: &Path, run_dir: &Path) -> PathBuf {
    let data = tmp.join("data");
    let out = run(direct(
        &sim_bin(),
        &[
            "image",
            "--out",
            data.to_str().unwrap(),
            "--size",
            "tiny",
            "--seed",
            "7",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let cfg = tmp.join("singleframe.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\n[singleframe.calibration]\nreference = {:?}\n",
            data.join("reference.fits").to_str().unwrap()
        ),
    )
    .unwrap();
    let out = run(mpirun(
        2,
        &singleframe_bin(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--input",
            data.join("units.json").to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    data
}

fn outcomes(run_dir: &Path) -> Vec<(String, String, String)> {
    ledger(run_dir, "coadd")
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

/// Every (patch, visit, ccd) whose patch outer region meets the CCD's recorded region, found
/// by testing every patch of every tract within 3° of the CCD.
fn brute_force_overlaps(registry: &Path) -> BTreeSet<(PatchId, u64, u32)> {
    let map = SkyMap::new(SKYMAP).unwrap();
    let reg = Registry::open_read_only(registry).unwrap();
    let mut out = BTreeSet::new();
    for rec in reg.all().unwrap() {
        let region = rec.region().unwrap();
        for t in map.tracts() {
            if t.centre.separation(rec.corners[0]) > 3.0 {
                continue;
            }
            for y in 0..t.patches_y {
                for x in 0..t.patches_x {
                    if t.patch_outer(x, y).intersects(&region) {
                        out.insert((PatchId { tract: t.id, x, y }, rec.visit, rec.ccd));
                    }
                }
            }
        }
    }
    out
}

fn result_value(stdout: &str, key: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
        .parse()
        .unwrap()
}

#[test]
fn coadds_of_the_tiny_field_from_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let data = singleframe_run(tmp.path(), &run_dir);
    let registry = run_dir.join("registry.sqlite3");
    let cfg = coadd_config(tmp.path());

    // The shipped configuration parses and plans (its own, default sky map).
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/coadd.toml");
    let out = run(direct(
        &coadd_bin(),
        &[
            "--config",
            shipped.to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
            "--run-dir",
            tmp.path().join("dry").to_str().unwrap(),
            "--dry-run",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    // Registry-driven planning equals brute force.
    let stage = Coadd::new(
        CoaddConfig {
            skymap: SKYMAP,
            ..CoaddConfig::default()
        },
        Some(&run_dir),
    )
    .unwrap();
    let planned: BTreeSet<(PatchId, u64, u32)> = stage
        .planned_warps()
        .unwrap()
        .iter()
        .map(|w| (w.patch.into(), w.visit, w.ccd))
        .collect();
    let brute = brute_force_overlaps(&registry);
    assert_eq!(planned, brute);
    let patches: BTreeSet<PatchId> = planned.iter().map(|p| p.0).collect();
    assert!(patches.len() >= 4, "{patches:?}");

    let out = run(mpirun(
        2,
        &coadd_bin(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let done = outcomes(&run_dir);
    let warps = done.iter().filter(|u| u.0.contains("visit=")).count();
    assert_eq!(warps, planned.len(), "{done:?}");
    assert!(done.iter().all(|u| u.1 == "done"), "{done:?}");
    assert!(
        done.iter()
            .any(|u| u.0.contains("band=r,step=detect") && u.0.starts_with("tract=")),
        "{done:?}"
    );
    assert!(
        files(&run_dir).keys().all(|k| !k.contains(".skypipe-tmp.")),
        "temporaries left"
    );

    // Registry rows: every warp of every patch, one coadd per patch and band.
    let reg = Registry::open_read_only(&registry).unwrap();
    let mut warp_rows = 0;
    for p in &patches {
        warp_rows += reg.warps(*p).unwrap().len();
        let coadds = reg.coadds(*p).unwrap();
        assert!(!coadds.is_empty(), "{p:?}");
        for c in coadds {
            assert!(c.path.is_file() && c.inputs >= 1 && c.depth > 20.0, "{c:?}");
        }
    }
    assert_eq!(warp_rows, planned.len());

    // The coarse-grid mapping error recorded in every warp.
    let mut max_error: f64 = 0.0;
    for rec in reg.warps(*patches.first().unwrap()).unwrap() {
        let mut r = FitsReader::open(&rec.path).unwrap();
        max_error = max_error.max(r.key_f64(Hdu::Primary, "INTERPER").unwrap());
    }
    println!("coarse-grid interpolation error: max {max_error:.2e} pixel");
    assert!(max_error < 1e-3, "{max_error}");

    // `skypipe-status --explain` follows a coadd to its warps and each warp to its calexp, and
    // a detection catalogue to its coadd.
    let coadd = &reg.coadds(*patches.first().unwrap()).unwrap()[0];
    let chain = explain(&coadd.path);
    assert!(chain.contains("stage coadd, unit tract="), "{chain}");
    let listed = |kind: &str| {
        chain
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("- {kind} ")))
            .count()
    };
    assert_eq!(listed("warp"), coadd.inputs as usize, "{chain}");
    assert_eq!(listed("calexp"), coadd.inputs as usize, "{chain}");
    assert!(chain.contains("stage singleframe, unit visit="), "{chain}");
    assert!(chain.contains("- raw "), "{chain}");
    let catalog = coadd
        .path
        .to_string_lossy()
        .replace("/coadd/coadd/", "/coadd/src/");
    let chain = explain(Path::new(&catalog));
    assert!(chain.contains("stage coadd, unit tract="), "{chain}");
    assert!(
        chain.contains(&format!("- coadd {}", absolute(&coadd.path))),
        "{chain}"
    );

    // astropy: WCS of the coadds, quicklooks, flux of isolated stars through warp + coadd.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/coadd/check.py");
    let py = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&data)
        .arg(&run_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&py.stdout).into_owned();
    assert!(
        py.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&py.stderr)
    );
    println!("{stdout}");
    let coadds = result_value(&stdout, "coadds");
    assert!(coadds >= patches.len() as f64, "{stdout}");
    assert_eq!(result_value(&stdout, "png"), coadds, "{stdout}");
    assert!(result_value(&stdout, "wcs_diff_arcsec") < 1e-6, "{stdout}");
    assert!(result_value(&stdout, "flux_n") >= 5.0, "{stdout}");
    assert!(result_value(&stdout, "flux_max_dev") < 0.005, "{stdout}");

    // A corrupt calexp fails its warps (bad input naming file and unit); their coadds and
    // detections are dependency-failed, not run; every other unit completes.
    let victim = run_dir.join("singleframe/calexp/v0003/c02.fits");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&victim, bytes).unwrap();
    let run2 = tmp.path().join("run2");
    let out = run(mpirun(
        2,
        &coadd_bin(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
            "--run-dir",
            run2.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let results = outcomes(&run2);
    let failed_patches: BTreeSet<String> = results
        .iter()
        .filter(|u| u.0.ends_with("visit=3,ccd=2"))
        .map(|u| {
            assert_eq!(u.1, "bad-input", "{u:?}");
            assert!(u.2.contains("v0003/c02.fits"), "{u:?}");
            u.0.trim_end_matches(",visit=3,ccd=2").to_string()
        })
        .collect();
    assert!(!failed_patches.is_empty());
    for (unit, outcome, message) in &results {
        let patch_of = unit.split(",visit=").next().unwrap();
        let patch_of = patch_of.split(",band=").next().unwrap();
        if unit.ends_with("visit=3,ccd=2") {
            continue;
        }
        let hit = failed_patches.contains(patch_of) && unit.contains("band=r");
        let expected = if hit { "dependency-failed" } else { "done" };
        assert_eq!(outcome, expected, "{unit}: {message}");
    }
}

fn ingest_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-ingest"))
}

fn run_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-run"))
}

/// The chain in one job: `skypipe-ingest` records the raw CCDs' header regions, then
/// `skypipe-run` plans singleframe and coadd together before any CCD is processed. Every unit
/// ends well; the warps planned from the raw regions (grown by the margin) include every
/// (patch, CCD) overlap of the processed regions, each of those warps is done, and the extra ones
/// found no data (no-work); each warp is recorded after its visit's registry unit. With
/// `keep_warps = false` no warp is left and a resumed run reruns nothing.
#[test]
fn singleframe_and_coadd_run_as_one_chain_planned_from_ingested_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(direct(
        &sim_bin(),
        &[
            "image",
            "--out",
            data.to_str().unwrap(),
            "--size",
            "tiny",
            "--seed",
            "7",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let run_dir = tmp.path().join("run");
    let out = run(direct(
        &ingest_bin(),
        &[
            "--input",
            data.join("units.json").to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let chain = tmp.path().join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "[run]\nfsync = false\n[chain]\nstages = [\"singleframe\", \"coadd\"]\n\
             [singleframe]\ninput = {:?}\n[singleframe.calibration]\nreference = {:?}\n\
             [coadd]\nplan_margin_arcsec = 30.0\nkeep_warps = false\n\
             [coadd.skymap]\nrings = {}\npixel_scale = {}\npatch_size = {}\nborder = {}\n",
            data.join("units.json").to_str().unwrap(),
            data.join("reference.fits").to_str().unwrap(),
            SKYMAP.rings,
            SKYMAP.pixel_scale,
            SKYMAP.patch_size,
            SKYMAP.border
        ),
    )
    .unwrap();
    let out = run(mpirun(
        2,
        &run_bin(),
        &[
            "--config",
            chain.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    let truth = brute_force_overlaps(&run_dir.join("registry.sqlite3"));
    assert!(!truth.is_empty());
    let records = ledger(&run_dir, "coadd");
    let registry_seq: std::collections::BTreeMap<u64, u64> = ledger(&run_dir, "singleframe")
        .into_iter()
        .filter(|r| r["unit"].as_str().unwrap().ends_with("step=registry"))
        .map(|r| {
            let unit = r["unit"].as_str().unwrap();
            let visit: u64 = unit
                .trim_start_matches("visit=")
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (visit, r["seq"].as_u64().unwrap())
        })
        .collect();
    let (mut done, mut planned) = (BTreeSet::new(), BTreeSet::new());
    for r in &records {
        let unit = r["unit"].as_str().unwrap();
        let outcome = r["outcome"].as_str().unwrap();
        assert!(
            outcome == "done" || outcome == "no-work",
            "{unit}: {outcome}"
        );
        let Some(rest) = unit.split_once(",visit=").map(|(_, rest)| rest) else {
            continue;
        };
        let (visit, ccd) = rest.split_once(",ccd=").unwrap();
        let (visit, ccd): (u64, u32) = (visit.parse().unwrap(), ccd.parse().unwrap());
        assert!(
            r["seq"].as_u64().unwrap() > registry_seq[&visit],
            "{unit} recorded before visit {visit}'s registry unit"
        );
        let patch = unit.trim_start_matches("tract=");
        let (tract, rest) = patch.split_once(",patch=").unwrap();
        let mut xy = rest.split(',');
        let (x, y) = (xy.next().unwrap(), xy.next().unwrap());
        let key = (
            PatchId {
                tract: tract.parse().unwrap(),
                x: x.parse().unwrap(),
                y: y.parse().unwrap(),
            },
            visit,
            ccd,
        );
        planned.insert(key);
        if outcome == "done" {
            done.insert(key);
        }
    }
    let missed: Vec<_> = truth.difference(&planned).collect();
    assert!(
        missed.is_empty(),
        "overlaps not planned from the raw regions: {missed:?}"
    );
    let extra: Vec<_> = done.difference(&truth).collect();
    assert!(extra.is_empty(), "warps done without an overlap: {extra:?}");
    assert!(
        done.len() * 10 >= truth.len() * 9,
        "{} of {} overlaps warped",
        done.len(),
        truth.len()
    );
    // The coadds and detections of the chain ran too.
    let coadds = records
        .iter()
        .filter(|r| r["unit"].as_str().unwrap().contains(",band=") && r["outcome"] == "done")
        .count();
    assert!(coadds > 0);

    // keep_warps = false: the detect units deleted every warp once its coadd was recorded, the
    // coadds stay; resuming finds every unit done and remakes nothing.
    let left = files(&run_dir);
    assert!(
        left.keys()
            .all(|k| !k.starts_with("coadd/warp/") || !k.ends_with(".fits")),
        "warps left: {:?}",
        left.keys()
            .filter(|k| k.starts_with("coadd/warp/"))
            .collect::<Vec<_>>()
    );
    assert!(left.keys().any(|k| k.starts_with("coadd/coadd/")));
    let out = run(mpirun(
        2,
        &run_bin(),
        &[
            "--config",
            chain.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert_eq!(
        ledger(&run_dir, "coadd").len(),
        records.len(),
        "{}",
        text(&out)
    );
}
