//! `skypipe-loadtest`: runs a workload of sleeping tasks on the engine and prints its figures.

use clap::Parser;
use skypipe_engine::{EngineArgs, run_binary};
use skypipe_loadtest::{Loadtest, LoadtestFile, Workload, metrics};
use std::path::PathBuf;
use std::process::ExitCode;

/// Engine load test: every task of a workload file sleeps its duration.
///
/// Measures the engine's overhead and balance. Configuration: the `[run]` and `[loadtest]`
/// tables of the --config file (every key: configs/loadtest.toml).
#[derive(Debug, Parser)]
#[command(name = "skypipe-loadtest", version)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// Workload file (overrides `[loadtest] workload`).
    #[arg(long, value_name = "FILE")]
    workload: Option<PathBuf>,
    /// Pass each task's duration to the engine as its cost hint.
    #[arg(long)]
    hints: bool,
    /// Add a gather unit per workload group, after the group's tasks (`[loadtest] gather`).
    #[arg(long)]
    gather: bool,
    /// Multiply every duration by this factor (overrides `[loadtest] time_scale`).
    #[arg(long, value_name = "FACTOR")]
    time_scale: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (launched, stage) = run_binary(&cli.engine, |mut file: LoadtestFile| {
        if let Some(w) = cli.workload {
            file.loadtest.workload = w;
        }
        if let Some(t) = cli.time_scale {
            file.loadtest.time_scale = t;
        }
        file.loadtest.hints |= cli.hints;
        file.loadtest.gather |= cli.gather;
        Loadtest::new(file.loadtest).map(|stage| (file.run, stage))
    });
    if let (Some(summary), Some(stage)) = (&launched.summary, &stage)
        && let Ok(workload) = Workload::load(&stage.config().workload)
    {
        for (name, value) in metrics(summary, &workload.tasks(), stage.config().time_scale) {
            println!("{name}: {value}");
        }
    }
    launched.exit_code()
}
