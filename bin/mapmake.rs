//! `skypipe-mapmake`: binned and destriped HEALPix maps from calibrated timestreams, one unit
//! per observation on the engine's balanced queue, then one map unit on every rank.

use clap::Parser;
use skypipe_cmb::MapmakeFile;
use skypipe_cmb::mapmake::Mapmake;
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use std::path::PathBuf;
use std::process::ExitCode;

/// Binned and destriped I/Q/U maps (FITS for healpy, PNG quicklooks) from calibrated
/// timestreams and dense pointing.
///
/// One unit per observation reads it, then one unit on every rank bins and destripes; outputs in
/// RUN_DIR/mapmake/, and each `[[mapmake.split]]` (a subset of observations and detectors)
/// its own map unit into RUN_DIR/mapmake/split-NAME/. Configuration: the `[run]` and `[mapmake]` tables of the --config file
/// (every key with its default: configs/mapmake.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-mapmake", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Observation list (overrides `[mapmake] observations`).
    #[arg(long, value_name = "FILE")]
    observations: Option<PathBuf>,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: MapmakeFile<RunOptions>| {
        if let Some(o) = cli.observations {
            file.mapmake.observations = o;
        }
        Mapmake::new(file.mapmake).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
