//! Every shipped configuration goes through the parser of the binary that reads it, and builds
//! that binary's stage: each file of `configs/` (found by listing the directory, so a new file
//! without a reader here fails the test).
//!
//! The stage files are read with `skypipe_engine::load_config` into the binary's own file type
//! (tables with `deny_unknown_fields`), then `[run]` is validated and the stage built as the
//! binary does. `configs/sim-cmb.toml` is run through `skypipe-sim cmb --size tiny`, and the
//! observation list it writes stands in for the data the CMB stage configs point at (as their
//! binaries' `--observations` flag does), since building those stages reads the list and the
//! focal plane.

mod common;

use common::cmb::{bin, s};
use common::{code, direct, run, text};
use skypipe_cmb::calibrate::Calibrate;
use skypipe_cmb::calibrate::CalibrateConfig;
use skypipe_cmb::mapmake::Mapmake;
use skypipe_cmb::mapmake::MapmakeConfig;
use skypipe_cmb::pointing::Pointing;
use skypipe_cmb::pointing::PointingConfig;
use skypipe_cmb::{CalibrateFile, MapmakeFile, PointingFile};
use skypipe_coadd::{Coadd, CoaddFile};
use skypipe_engine::{ChainFile, RunOptions, load_config};
use skypipe_loadtest::{Loadtest, LoadtestFile, Workload};
use skypipe_mosaic::{Mosaic, MosaicConfig, MosaicFile};
use skypipe_multiband::{Multiband, MultibandFile};
use skypipe_optical::singleframe::{Singleframe, SingleframeFile};
use skypipe_slurm_scripts::SlurmFile;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The binary that reads a file of `configs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reader {
    SimCmb,
    Loadtest,
    Pointing,
    Calibrate,
    Mapmake,
    Singleframe,
    Coadd,
    Mosaic,
    Multiband,
    Chain,
    Slurm,
}

/// File-name stems (exact, or followed by `-`) and the binary that reads them. Every binary
/// with a configuration file ships at least one example.
const READERS: [(&str, Reader); 11] = [
    ("sim-cmb", Reader::SimCmb),
    ("loadtest", Reader::Loadtest),
    ("pointing", Reader::Pointing),
    ("calibrate", Reader::Calibrate),
    ("mapmake", Reader::Mapmake),
    ("singleframe", Reader::Singleframe),
    ("coadd", Reader::Coadd),
    ("mosaic", Reader::Mosaic),
    ("multiband", Reader::Multiband),
    ("chain", Reader::Chain),
    ("slurm", Reader::Slurm),
];

/// The stage kinds `skypipe-run` builds.
const CHAIN_KINDS: &[&str] = &[
    "pointing",
    "calibrate",
    "mapmake",
    "singleframe",
    "mosaic",
    "coadd",
    "multiband",
    "loadtest",
];

fn reader_of(path: &Path) -> Option<Reader> {
    if path.extension()? != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    READERS
        .iter()
        .find(|(prefix, _)| {
            stem == *prefix
                || stem
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .map(|&(_, reader)| reader)
}

/// Runs `skypipe-sim cmb --config FILE --size tiny` into `out`; returns the observation list.
fn simulate_with(config: &Path, out: &Path) -> Result<PathBuf, String> {
    let output = run(direct(
        &bin("sim"),
        &[
            "cmb",
            "--config",
            &s(config),
            "--size",
            "tiny",
            "--out",
            &s(out),
        ],
    ));
    if code(&output.status) != 0 {
        return Err(format!("skypipe-sim cmb failed: {}", text(&output)));
    }
    Ok(out.join("observations.json"))
}

/// Parses `path` as `F` with the binary's loader and validates `[run]`.
fn parse<F: serde::de::DeserializeOwned + Default>(
    path: &Path,
    run: impl FnOnce(&F) -> &RunOptions,
) -> Result<F, Box<dyn std::error::Error>> {
    let file: F = load_config(Some(path))?;
    run(&file).validate()?;
    Ok(file)
}

/// Reads `path` as `reader`'s binary does and builds its stage; `observations` is the list
/// the CMB stages are pointed at.
fn check(
    path: &Path,
    reader: Reader,
    observations: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    match reader {
        Reader::SimCmb => unreachable!("simulated first"),
        Reader::Loadtest => {
            let file: LoadtestFile = parse(path, |f: &LoadtestFile| &f.run)?;
            // Relative paths in the shipped configs are relative to the repository root,
            // which is this test's working directory.
            Workload::load(&file.loadtest.workload)
                .map_err(|e| format!("loadtest.workload: {e}"))?;
            Loadtest::new(file.loadtest)?;
        }
        Reader::Pointing => {
            let mut file = parse(path, |f: &PointingFile<RunOptions>| &f.run)?;
            file.pointing.observations = observations.to_path_buf();
            Pointing::new(file.pointing)?;
        }
        Reader::Calibrate => {
            let mut file = parse(path, |f: &CalibrateFile<RunOptions>| &f.run)?;
            file.calibrate.observations = observations.to_path_buf();
            Calibrate::new(file.calibrate)?;
        }
        Reader::Mapmake => {
            let mut file = parse(path, |f: &MapmakeFile<RunOptions>| &f.run)?;
            file.mapmake.observations = observations.to_path_buf();
            Mapmake::new(file.mapmake)?;
        }
        Reader::Singleframe => {
            let file = parse(path, |f: &SingleframeFile<RunOptions>| &f.run)?;
            Singleframe::new(file.singleframe)?;
        }
        Reader::Slurm => {
            SlurmFile::load(path).map_err(|e| e.to_string())?;
        }
        Reader::Coadd => {
            let file = parse(path, |f: &CoaddFile<RunOptions>| &f.run)?;
            Coadd::new(file.coadd, file.run.dir.as_deref())?;
        }
        Reader::Multiband => {
            let file = parse(path, |f: &MultibandFile<RunOptions>| &f.run)?;
            Multiband::new(file.multiband, file.run.dir.as_deref())?;
        }
        Reader::Mosaic => {
            let mut file = parse(path, |f: &MosaicFile<RunOptions>| &f.run)?;
            // As the binary does: the registry defaults to the run directory's.
            if file.mosaic.registry.is_none() {
                file.mosaic.registry = file.run.dir.as_ref().map(|d| d.join("registry.sqlite3"));
            }
            Mosaic::new(file.mosaic)?;
        }
        Reader::Chain => {
            let file = ChainFile::load(path, CHAIN_KINDS)?;
            file.run.validate()?;
            for member in &file.members {
                match member.kind.as_str() {
                    "pointing" => {
                        let mut c: PointingConfig = member.config()?;
                        c.observations = observations.to_path_buf();
                        Pointing::new(c)?;
                    }
                    "calibrate" => {
                        let mut c: CalibrateConfig = member.config()?;
                        c.observations = observations.to_path_buf();
                        Calibrate::new(c)?;
                    }
                    "mapmake" => {
                        let mut c: MapmakeConfig = member.config()?;
                        c.observations = observations.to_path_buf();
                        Mapmake::new(c)?;
                    }
                    "singleframe" => {
                        Singleframe::new(member.config()?)?;
                    }
                    "coadd" => {
                        Coadd::new(member.config()?, file.run.dir.as_deref())?;
                    }
                    "multiband" => {
                        // As skypipe-run does: planned from the chain's coadd stage, whose sky
                        // map must be the same.
                        let stage = Multiband::new(member.config()?, file.run.dir.as_deref())?;
                        let coadd = file.members.iter().find(|m| m.kind == "coadd");
                        if let (Some(coadd), Some(dir)) = (coadd, file.run.dir.as_deref()) {
                            let coadd = Coadd::new(coadd.config()?, Some(dir))?;
                            stage.planning_after(coadd, dir)?;
                        }
                    }
                    "mosaic" => {
                        // As skypipe-run does: the registry defaults to the run directory's.
                        let mut c: MosaicConfig = member.config()?;
                        if c.registry.is_none() {
                            c.registry = file.run.dir.as_ref().map(|d| d.join("registry.sqlite3"));
                        }
                        Mosaic::new(c)?;
                    }
                    other => {
                        return Err(format!("{}: no check for kind {other}", path.display()).into());
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_shipped_config_parses_with_its_binarys_reader_and_builds_its_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut errors = Vec::new();
    let mut typed = Vec::new();
    for path in files {
        match reader_of(&path) {
            Some(reader) => typed.push((reader, path)),
            None => errors.push(format!(
                "{}: no binary reads this file; add its reader to tests/configs.rs",
                path.display()
            )),
        }
    }
    // The simulation configs first: the CMB stages are built against the data they write.
    typed.sort();
    let tmp = tempfile::tempdir().unwrap();
    let mut observations = None;
    let mut seen = BTreeSet::new();
    for (reader, path) in &typed {
        seen.insert(*reader);
        let name = path.file_name().unwrap().to_string_lossy();
        let result = match reader {
            Reader::SimCmb => simulate_with(path, &tmp.path().join(&*name)).map(|list| {
                observations.get_or_insert(list);
            }),
            _ => match &observations {
                Some(list) => check(path, *reader, list).map_err(|e| e.to_string()),
                None => Err("no configs/sim-cmb*.toml to simulate the CMB data with".into()),
            },
        };
        if let Err(e) = result {
            let shown = path.display().to_string();
            errors.push(if e.contains(&shown) {
                e
            } else {
                format!("{shown}: {e}")
            });
        }
    }
    for (prefix, reader) in READERS {
        if !seen.contains(&reader) {
            errors.push(format!("configs/{prefix}*.toml: no example shipped"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn an_unknown_key_is_refused_by_each_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("unused.json");
    for (prefix, reader) in READERS {
        if reader == Reader::SimCmb {
            continue;
        }
        let path = tmp.path().join(format!("{prefix}.toml"));
        std::fs::write(&path, format!("[{prefix}]\nno_such_key = 1\n")).unwrap();
        let err = check(&path, reader, &list).expect_err(prefix).to_string();
        assert!(err.contains("no_such_key"), "{prefix}: {err}");
    }
}
