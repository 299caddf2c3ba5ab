//! `skypipe-calibrate`: calibration to K_CMB against the dipole and dipole removal for every
//! observation of a list, one unit per observation on the engine.

use clap::Parser;
use skypipe_cmb::CalibrateFile;
use skypipe_cmb::calibrate::Calibrate;
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use std::path::PathBuf;
use std::process::ExitCode;

/// Calibrated, dipole-subtracted timestreams from raw timestreams and dense pointing.
///
/// One unit per observation of the list; outputs RUN_DIR/calibrate/obs=NNNN.h5. Configuration:
/// the `[run]` and `[calibrate]` tables of the --config file (every key with its default:
/// configs/calibrate.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-calibrate", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Observation list (overrides `[calibrate] observations`).
    #[arg(long, value_name = "FILE")]
    observations: Option<PathBuf>,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: CalibrateFile<RunOptions>| {
        if let Some(o) = cli.observations {
            file.calibrate.observations = o;
        }
        Calibrate::new(file.calibrate).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
