//! `skypipe-status RUN_DIR [--json]`: units done / failed / pending per stage, rate, ETA,
//! whether a job is running, the failures with their reasons, and the command that resumes
//! or retries the run. `skypipe-status RUN_DIR --timeline [FILE.svg|FILE.png]` draws the
//! per-rank timeline of the run instead; `skypipe-status --explain FILE` prints the provenance
//! chain behind an output file. No MPI; reads the run directory without locking it,
//! so it is safe on a login node while the job runs.

use clap::Parser;
use skypipe_status::timeline::{ColourBy, RenderOptions, write_timeline};
use std::path::PathBuf;
use std::process::ExitCode;

/// Shows the state of a skypipe run directory.
#[derive(Debug, Parser)]
#[command(
    name = "skypipe-status",
    version,
    after_help = "Exit codes: 0 the status was shown; 1 RUN_DIR has no ledger (or cannot be read), or --explain's FILE is not a readable FITS or HDF5 file."
)]
struct Cli {
    /// The run directory (the one given to the stage with --run-dir or [run] dir).
    #[arg(value_name = "RUN_DIR", required_unless_present = "explain")]
    run_dir: Option<PathBuf>,
    /// Print the provenance chain of an output FILE instead: the software, stage, unit and
    /// configuration that wrote it, the files it was made from, and theirs in turn.
    #[arg(long, value_name = "FILE")]
    explain: Option<PathBuf>,
    /// Print JSON (format `skypipe-status/1`) for scripts instead of text.
    #[arg(long)]
    json: bool,
    /// How many failures to list per stage in the text output (JSON lists all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    max_failures: usize,
    /// Draw the per-rank timeline (one bar per unit attempt) into FILE, .svg or .png
    /// (default: timeline.svg in the current directory), instead of printing the status.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "timeline.svg")]
    timeline: Option<PathBuf>,
    /// What the timeline's colours show: outcome, stage, or auto (outcome for one stage,
    /// stage for several).
    #[arg(long, value_name = "BY", default_value = "auto", value_parser = ["auto", "outcome", "stage"])]
    colour_by: String,
    /// Width of the timeline picture, pixels.
    #[arg(long, value_name = "PX", default_value_t = 1200)]
    width: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(file) = &cli.explain {
        return match skypipe_status::explain::explain(file) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let Some(run_dir) = cli.run_dir.as_deref() else {
        eprintln!("error: RUN_DIR is required");
        return ExitCode::from(1);
    };
    if let Some(out) = &cli.timeline {
        let colour_by = match cli.colour_by.as_str() {
            "outcome" => ColourBy::Outcome,
            "stage" => ColourBy::Stage,
            _ => ColourBy::Auto,
        };
        let options = RenderOptions {
            width_px: cli.width,
            row_px: None,
        };
        return match write_timeline(run_dir, out, colour_by, &options, false) {
            Ok(path) => {
                println!("timeline written to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    match skypipe_status::run_status(run_dir) {
        Ok(status) => {
            if cli.json {
                println!("{}", status.to_json());
            } else {
                print!("{}", status.text(cli.max_failures));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
