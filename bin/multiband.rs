//! `skypipe-multiband`: merged detections, per-band measurement, reference bands, forced
//! photometry and object catalogues per sky-map patch, planned from the registry's coadds.

use clap::Parser;
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use skypipe_multiband::{Multiband, MultibandFile};
use std::path::PathBuf;
use std::process::ExitCode;

/// Multiband object catalogues per sky-map patch and tract, planned from the coadd registry.
///
/// Per patch with coadds: merge-detections (the bands' coadd catalogues matched into objects,
/// each owned by one patch), measure per band, merge-measurements (a reference band per object),
/// forced photometry per band at the reference positions, and the patch catalogue
/// (RUN_DIR/multiband/tTTTT/pXXX-YYY.fits); per tract the concatenated catalogue
/// (RUN_DIR/multiband/tTTTT.fits) listing the missing patches and bands. Configuration: the
/// `[run]` and `[multiband]` tables of the --config file (every key with its default:
/// configs/multiband.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-multiband", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Registry database filled by skypipe-coadd; overrides `[multiband] registry`
    /// (default `RUN_DIR/registry.sqlite3`).
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: MultibandFile<RunOptions>| {
        if let Some(registry) = cli.registry {
            file.multiband.registry = Some(registry);
        }
        let run_dir = cli.engine.run_dir.clone().or_else(|| file.run.dir.clone());
        Multiband::new(file.multiband, run_dir.as_deref()).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
