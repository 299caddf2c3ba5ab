//! `skypipe-mosaic`: the joint astrometric solution per tract, one unit per tract, planned from
//! the registry that `skypipe-singleframe` filled.

use clap::Parser;
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use skypipe_mosaic::{Mosaic, MosaicFile};
use std::process::ExitCode;

/// Joint astrometric solution per tract: per-CCD WCS corrections against the reference
/// catalogue and across overlapping visits.
///
/// One unit per tract, planned from the registry that skypipe-singleframe filled; outputs
/// RUN_DIR/mosaic/tract-TTTT.fits and a row per CCD in the registry.
/// Configuration: the `[run]` and `[mosaic]` tables of the --config file (every key with its
/// default: configs/mosaic.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-mosaic", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: MosaicFile<RunOptions>| {
        if file.mosaic.registry.is_none() {
            let run_dir = cli.engine.run_dir.clone().or_else(|| file.run.dir.clone());
            file.mosaic.registry = run_dir.map(|d| d.join("registry.sqlite3"));
        }
        Mosaic::new(file.mosaic).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
