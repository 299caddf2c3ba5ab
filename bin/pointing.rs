//! `skypipe-pointing`: dense detector pointing (HEALPix pixels, I/Q/U weights, θ/φ/ψ) for every
//! observation of a list, one unit per observation on the engine.

use clap::Parser;
use skypipe_cmb::PointingFile;
use skypipe_cmb::pointing::Pointing;
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use std::path::PathBuf;
use std::process::ExitCode;

/// Dense detector pointing from attitude and focal plane.
///
/// One unit per observation of the list; outputs RUN_DIR/pointing/obs=NNNN.h5. Configuration:
/// the `[run]` and `[pointing]` tables of the --config file (every key with its default:
/// configs/pointing.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-pointing", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Observation list (overrides `[pointing] observations`).
    #[arg(long, value_name = "FILE")]
    observations: Option<PathBuf>,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: PointingFile<RunOptions>| {
        if let Some(o) = cli.observations {
            file.pointing.observations = o;
        }
        Pointing::new(file.pointing).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
