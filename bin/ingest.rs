//! `skypipe-ingest`: records the raw CCDs of a CCD list in the registry with the sky regions
//! their raw headers predict, so that a chain run can plan mosaic and coadd units for CCDs that
//! single-frame processing has not reached yet. Reads headers only; no MPI.

use clap::Parser;
use skypipe_optical::ingest::{default_registry, ingest};
use skypipe_optical::singleframe::Singleframe;
use std::path::PathBuf;
use std::process::ExitCode;

/// Ingest raw CCDs: their header WCS regions go into the registry (table `raw_ccd`).
///
/// Exit codes: 0 every CCD ingested, 1 could not start (unreadable list, registry error),
/// 2 some CCDs refused (each named with its file; the others are recorded).
#[derive(Debug, Parser)]
#[command(name = "skypipe-ingest", version)]
struct Cli {
    /// CCD list (`skypipe-ccd-list/1`, e.g. the `units.json` of `skypipe-sim image`): the same
    /// list `[singleframe] input` names.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Registry database; default `RUN_DIR/registry.sqlite3` (where `skypipe-singleframe`
    /// writes it unless `[singleframe] registry` says otherwise).
    #[arg(long, value_name = "FILE", required_unless_present = "run_dir")]
    registry: Option<PathBuf>,
    /// Run directory whose `registry.sqlite3` is the registry (when `--registry` is not given).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Threads reading headers.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ccds = match Singleframe::read_list(&cli.input) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let run_dir = cli.run_dir.unwrap_or_else(|| PathBuf::from("."));
    let registry = default_registry(cli.registry.as_deref(), &run_dir);
    if let Some(parent) = registry.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        eprintln!("error: {}: {e}", parent.display());
        return ExitCode::from(1);
    }
    match ingest(&ccds, &registry, cli.threads) {
        Ok(summary) => {
            for f in &summary.failed {
                eprintln!("visit={},ccd={} refused: {}", f.visit, f.ccd, f.message);
            }
            println!(
                "{} of {} CCDs ingested into {}",
                summary.ingested,
                ccds.len(),
                registry.display()
            );
            if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
