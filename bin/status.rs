//! `skypipe-status RUN_DIR [--json]`: units done / failed / pending per stage, rate, ETA,
//! whether a job is running, the failures with their reasons, and the command that resumes
//! or retries the run. No MPI; reads the run directory without locking it, so it is safe on
//! a login node while the job runs.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Shows the state of a skypipe run directory.
#[derive(Debug, Parser)]
#[command(
    name = "skypipe-status",
    version,
    after_help = "Exit codes: 0 the status was shown; 1 RUN_DIR has no ledger (or cannot be read)."
)]
struct Cli {
    /// The run directory (the one given to the stage with --run-dir or [run] dir).
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    /// Print JSON (format `skypipe-status/1`) for scripts instead of text.
    #[arg(long)]
    json: bool,
    /// How many failures to list per stage in the text output (JSON lists all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    max_failures: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match skypipe_status::run_status(&cli.run_dir) {
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
