//! `skypipe-coadd`: warps of every (patch, CCD) pair found in the registry, coadds per patch
//! and band, and detection on the coadds.

use clap::Parser;
use skypipe_coadd::{Coadd, CoaddFile};
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use std::path::PathBuf;
use std::process::ExitCode;

/// Warp, coadd and detect per sky-map patch, planned from the CCD registry.
///
/// One warp unit per (patch, CCD) overlapping it, one coadd per (patch, band) after its warps,
/// one detection after each coadd; outputs under RUN_DIR/coadd/ and rows in the registry.
/// Configuration: the `[run]` and `[coadd]` tables of the --config file (every key with its
/// default: configs/coadd.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-coadd", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Registry database filled by skypipe-singleframe; overrides `[coadd] registry`
    /// (default `RUN_DIR/registry.sqlite3`).
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: CoaddFile<RunOptions>| {
        if let Some(registry) = cli.registry {
            file.coadd.registry = Some(registry);
        }
        let run_dir = cli.engine.run_dir.clone().or_else(|| file.run.dir.clone());
        Coadd::new(file.coadd, run_dir.as_deref()).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
