//! `skypipe-run`: several stages in one MPI job, planned as one graph (a chain).
//!
//! `skypipe-run --config chain.toml` runs the stages listed in `[chain] stages`, each
//! configured by its own table exactly as in its stage's file; a unit of a later stage starts
//! the moment the units that write its input files are done, with no barrier between stages.
//! Ledgers stay per stage (`ledger/<instance>.jsonl`), so each stage can also be resumed or
//! inspected alone.

use clap::Parser;
use skypipe_cmb::calibrate::Calibrate;
use skypipe_cmb::mapmake::Mapmake;
use skypipe_cmb::pointing::Pointing;
use skypipe_coadd::Coadd;
use skypipe_engine::{ChainError, ChainFile, ChainMember, EngineArgs, StageSet, launch_stages};
use skypipe_loadtest::Loadtest;
use skypipe_mosaic::{Mosaic, MosaicConfig};
use skypipe_multiband::Multiband;
use skypipe_optical::singleframe::Singleframe;
use std::path::Path;
use std::process::ExitCode;

/// Huge pages under the image buffers of the imaging chain (results unchanged; see
/// `skypipe_engine::hugepages`).
#[global_allocator]
static ALLOCATOR: skypipe_engine::HugePageAlloc = skypipe_engine::HugePageAlloc;

/// The stage kinds a chain may contain.
const KINDS: &[&str] = &[
    "pointing",
    "calibrate",
    "mapmake",
    "singleframe",
    "mosaic",
    "coadd",
    "multiband",
    "loadtest",
];

/// Runs a chain of stages (`[chain] stages` in the configuration) as one job.
///
/// The stages' units form one graph: a unit starts as soon as the units writing its input files
/// are done. Configuration: the `[run]` and `[chain]` tables of the --config file and one table
/// per stage instance, each exactly that stage's own table (configs/chain-cmb.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-run", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
}

/// One built stage of any kind.
enum AnyStage {
    Pointing(Pointing),
    Calibrate(Calibrate),
    Mapmake(Mapmake),
    Singleframe(Singleframe),
    Mosaic(Mosaic),
    Coadd(Coadd),
    Multiband(Multiband),
    Loadtest(Loadtest),
}

/// Builds member `index` of `members`; `run_dir` is the chain's run directory (the default
/// registry is in it). A multiband stage plans from the plan of the nearest coadd stage before
/// it, whose coadds do not exist yet when the chain starts.
fn build(
    members: &[ChainMember],
    index: usize,
    run_dir: Option<&Path>,
) -> Result<AnyStage, ChainError> {
    let member = &members[index];
    Ok(match member.kind.as_str() {
        "pointing" => AnyStage::Pointing(member.build(Pointing::new)?),
        "calibrate" => AnyStage::Calibrate(member.build(Calibrate::new)?),
        "mapmake" => AnyStage::Mapmake(member.build(Mapmake::new)?),
        "singleframe" => AnyStage::Singleframe(member.build(Singleframe::new)?),
        "mosaic" => AnyStage::Mosaic(member.build(|mut c: MosaicConfig| {
            if c.registry.is_none() {
                c.registry = run_dir.map(|d| d.join("registry.sqlite3"));
            }
            Mosaic::new(c)
        })?),
        "coadd" => AnyStage::Coadd(member.build(|c| Coadd::new(c, run_dir))?),
        "multiband" => {
            let upstream = members[..index].iter().rev().find(|m| m.kind == "coadd");
            let upstream = match (upstream, run_dir) {
                (Some(coadd), Some(dir)) => Some((coadd.build(|c| Coadd::new(c, run_dir))?, dir)),
                _ => None,
            };
            AnyStage::Multiband(member.build(|c| {
                let stage = Multiband::new(c, run_dir)?;
                match upstream {
                    Some((coadd, dir)) => stage.planning_after(coadd, dir),
                    None => Ok(stage),
                }
            })?)
        }
        "loadtest" => AnyStage::Loadtest(member.build(Loadtest::new)?),
        other => {
            return Err(ChainError::UnknownKind {
                name: member.name.clone(),
                kind: other.to_string(),
                known: KINDS.iter().map(|k| k.to_string()).collect(),
            });
        }
    })
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let Some(path) = cli.engine.config.as_deref() else {
        eprintln!("error: skypipe-run needs --config CHAIN.toml (see configs/chain-cmb.toml)");
        return ExitCode::from(skypipe_engine::EXIT_CANNOT_START);
    };
    let file = match ChainFile::load(path, KINDS) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(skypipe_engine::EXIT_CANNOT_START);
        }
    };
    let run_dir = cli.engine.run_dir.clone().or_else(|| file.run.dir.clone());
    let built: Result<Vec<AnyStage>, ChainError> = file
        .members
        .iter()
        .enumerate()
        .map(|(i, _)| build(&file.members, i, run_dir.as_deref()))
        .collect();
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: invalid configuration: {}: {e}", path.display());
            return ExitCode::from(skypipe_engine::EXIT_CANNOT_START);
        }
    };
    let mut set = StageSet::new();
    for (member, stage) in file.members.iter().zip(&built) {
        set = match stage {
            AnyStage::Pointing(s) => set.with(&member.name, s),
            AnyStage::Calibrate(s) => set.with(&member.name, s),
            AnyStage::Mapmake(s) => set.with(&member.name, s),
            AnyStage::Singleframe(s) => set.with(&member.name, s),
            AnyStage::Mosaic(s) => set.with(&member.name, s),
            AnyStage::Coadd(s) => set.with(&member.name, s),
            AnyStage::Multiband(s) => set.with(&member.name, s),
            AnyStage::Loadtest(s) => set.with(&member.name, s),
        };
    }
    launch_stages(&set, &file.run, &cli.engine).exit_code()
}
