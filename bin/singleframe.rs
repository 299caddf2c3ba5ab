//! `skypipe-singleframe`: single-frame processing of raw CCD exposures, one unit per CCD, and
//! the registry of processed CCDs (one unit per visit).

use clap::Parser;
use skypipe_engine::{EngineArgs, RunOptions, run_binary};
use skypipe_optical::singleframe::{Singleframe, SingleframeFile};
use std::path::PathBuf;
use std::process::ExitCode;

/// Huge pages under the image buffers (results unchanged; see `skypipe_engine::hugepages`).
#[global_allocator]
static ALLOCATOR: skypipe_engine::HugePageAlloc = skypipe_engine::HugePageAlloc;

/// Single-frame processing: ISR, background, detection, deblending, measurement, registry.
///
/// One unit per CCD of the list, one registry unit per visit; outputs the calexps and source
/// catalogues under RUN_DIR/singleframe/ and the registry RUN_DIR/registry.sqlite3.
/// Configuration: the `[run]` and `[singleframe]` tables of the --config file (every key with
/// its default: configs/singleframe.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-singleframe", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// CCD list (`skypipe-ccd-list/1`, e.g. the `units.json` of `skypipe-sim image`);
    /// overrides `[singleframe] input`.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
}

fn main() -> ExitCode {
    skypipe_io::provenance::set_build_commit(option_env!("SKYPIPE_GIT_COMMIT"));
    let cli = Cli::parse();
    let (launched, _) = run_binary(&cli.engine, |mut file: SingleframeFile<RunOptions>| {
        if let Some(input) = cli.input {
            file.singleframe.input = Some(input);
        }
        Singleframe::new(file.singleframe).map(|stage| (file.run, stage))
    });
    launched.exit_code()
}
