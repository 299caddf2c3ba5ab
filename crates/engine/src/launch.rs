//! The entry point every stage binary calls: command-line flags shared by all stages, config
//! loading, MPI start-up and the exit code.

use crate::driver::{Comms, RunSetup, dispatcher, worker, write_report};
use crate::execute::RankContext;
use crate::interactive::{dry_run, run_one};
use crate::isolation::{Isolation, child_main};
use crate::options::{RunOptions, Schedule};
use crate::report::{EXIT_CANNOT_START, RunSummary};
use crate::signals;
use crate::stages::StageSet;
use mpi::Threading;
use mpi::traits::*;
use serde::de::DeserializeOwned;
use skypipe_stage::Stage;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags every stage binary accepts (flatten into the binary's clap parser).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EngineArgs {
    /// TOML run configuration (unknown keys are refused).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run directory (ledger, reports, outputs); overrides `[run] dir`.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Run this one unit in this process, without MPI and without the ledger (debugging).
    #[arg(long, value_name = "ID", conflicts_with = "dry_run")]
    pub unit: Option<String>,
    /// List the planned units and what a run would do, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Also rerun units that failed in an earlier invocation.
    #[arg(long)]
    pub retry_failed: bool,
    /// Do not check, on resume, that the outputs of units recorded done are still on disk
    /// with their recorded sizes (by default a unit whose outputs are gone or changed size
    /// runs again, and so do the units recorded done that read its files).
    #[arg(long)]
    pub no_verify: bool,
    /// Resume even though the stage configuration changed since the run directory was made.
    #[arg(long)]
    pub allow_config_change: bool,
    /// Override `[run] schedule`.
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Override `[run] progress_interval_s`.
    #[arg(long, value_name = "SECONDS")]
    pub progress_interval: Option<f64>,
    /// Keep running and take unit lists dropped into DIR (`*.json`, format
    /// `skypipe-unit-list/1`) until a file DIR/STOP appears.
    #[arg(long, value_name = "DIR")]
    pub follow: Option<PathBuf>,
    /// Internal: run the isolated unit described by FILE.request (see `[run] isolate`).
    #[arg(long, value_name = "FILE", hide = true)]
    pub isolated_unit: Option<PathBuf>,
}

/// A configuration error: the run stops before any unit starts (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Reads a TOML configuration file into `C` (whose tables should use `deny_unknown_fields`);
/// without a file, `C::default()`.
pub fn load_config<C: DeserializeOwned + Default>(path: Option<&Path>) -> Result<C, ConfigError> {
    let Some(path) = path else {
        return Ok(C::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        message: format!("cannot read the configuration: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// What [`launch`] did.
#[derive(Debug)]
pub struct Launched {
    /// The exit code from the conventions (0, 1, 2, 3).
    pub exit_code: u8,
    /// On rank 0 of a full run: the summary (already printed and written as run-report.json).
    pub summary: Option<RunSummary>,
}

impl Launched {
    fn code(exit_code: u8) -> Self {
        Self {
            exit_code,
            summary: None,
        }
    }

    /// As a process exit code.
    pub fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(self.exit_code)
    }
}

/// Sets up logging to stderr (`RUST_LOG` overrides the `info` default); idempotent.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The command line that reruns this run and retries its failed units.
fn retry_command() -> String {
    command_line(true)
}

/// This process's command line, quoted for a shell, the binary by its name; with `retry`,
/// `--retry-failed` added if missing.
fn command_line(retry: bool) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut()
        && let Some(name) = Path::new(first.as_str()).file_name()
    {
        *first = name.to_string_lossy().into_owned();
    }
    if retry && !args.iter().any(|a| a == "--retry-failed") {
        args.push("--retry-failed".into());
    }
    skypipe_rundir::shell_command(&args)
}

/// The whole `main` of a stage binary after argument parsing: reads the configuration named
/// by `--config` (defaults without one), builds the stage from it, and launches it. `build`
/// returns the `[run]` options and the stage, or an error whose text names the bad key; any
/// error exits with code 1 before a unit runs.
pub fn run_binary<F, S, E>(
    args: &EngineArgs,
    build: impl FnOnce(F) -> Result<(RunOptions, S), E>,
) -> (Launched, Option<S>)
where
    F: DeserializeOwned + Default,
    S: Stage,
    E: std::fmt::Display,
{
    let file: F = match load_config(args.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return (Launched::code(EXIT_CANNOT_START), None);
        }
    };
    match build(file) {
        Ok((run, stage)) => {
            let launched = launch(&stage, &run, args);
            (launched, Some(stage))
        }
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            (Launched::code(EXIT_CANNOT_START), None)
        }
    }
}

/// The isolation settings of this run, when `[run] isolate` is on.
fn isolation(opts: &RunOptions) -> Option<std::sync::Arc<Isolation>> {
    if !opts.isolate {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    Some(std::sync::Arc::new(Isolation {
        exe,
        args: std::env::args_os().skip(1).collect(),
        limit_mb: opts.memory_limit_mb,
        overhead_mb: opts.memory_overhead_mb,
        growth: opts.memory_growth,
        cap_mb: (opts.memory_cap_mb != 0).then_some(opts.memory_cap_mb),
    }))
}

/// Runs `stage` as the flags say: one unit in-process (`--unit`), a plan listing
/// (`--dry-run`), or the whole plan over MPI (under `mpirun`/`srun`, or alone as one rank).
pub fn launch<S: Stage>(stage: &S, run: &RunOptions, args: &EngineArgs) -> Launched {
    launch_stages(&StageSet::single(stage), run, args)
}

/// Runs several stage instances as one graph (a chain) as the flags say, like [`launch`]:
/// units of later stages start as soon as the units that write their input files are done.
/// With `--unit`, name the stage too: `calibrate[obs=0007]`.
pub fn launch_stages(stages: &StageSet<'_>, run: &RunOptions, args: &EngineArgs) -> Launched {
    let started = Instant::now();
    init_logging();
    let mut opts = run.clone();
    if let Some(s) = args.schedule {
        opts.schedule = s;
    }
    if let Some(p) = args.progress_interval {
        opts.progress_interval_s = p;
    }
    if let Err(e) = opts.validate() {
        eprintln!("error: invalid configuration: {e}");
        return Launched::code(EXIT_CANNOT_START);
    }
    if let Some(stem) = &args.isolated_unit {
        return Launched::code(child_main(stages, stem));
    }
    let run_dir = args.run_dir.clone().or_else(|| opts.dir.clone());
    if args.dry_run {
        return Launched::code(dry_run(
            stages,
            run_dir.as_deref(),
            args.retry_failed,
            !args.no_verify,
            args.allow_config_change,
        ));
    }
    let Some(run_dir) = run_dir else {
        eprintln!("error: no run directory: pass --run-dir DIR or set `dir` in the [run] table");
        return Launched::code(EXIT_CANNOT_START);
    };
    if let Some(id) = &args.unit {
        return Launched::code(run_one(stages, id, &run_dir, opts.fsync));
    }
    signals::install();
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Multiple) else {
        eprintln!("error: MPI could not be initialised (or was initialised twice)");
        return Launched::code(EXIT_CANNOT_START);
    };
    let world = universe.world();
    let rank = world.rank();
    let units = world.duplicate();
    let comms = Comms {
        world,
        units,
        threads_may_call_mpi: threading == Threading::Multiple,
    };
    let span = tracing::info_span!("rank", rank);
    let _entered = span.enter();
    let isolation = isolation(&opts);
    if rank != 0 {
        let base = RankContext {
            run_dir: run_dir.clone(),
            rank: rank as usize,
            durable: opts.fsync,
            isolation,
            isolated_child: false,
        };
        let exit_code = worker(stages, &comms, &base);
        return Launched::code(exit_code);
    }
    let setup = RunSetup {
        opts: &opts,
        run_dir: &run_dir,
        retry_failed: args.retry_failed,
        verify: !args.no_verify,
        allow_config_change: args.allow_config_change,
        started,
        retry_command: retry_command(),
        resume_command: command_line(false),
        isolation,
        follow: args.follow.clone(),
    };
    match dispatcher(stages, comms, &setup) {
        Ok(summary) => {
            write_report(&run_dir, &summary, opts.fsync);
            eprint!("{}", summary.text());
            eprintln!("report: {}", run_dir.join("run-report.json").display());
            Launched {
                exit_code: summary.exit_code(),
                summary: Some(summary),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            Launched::code(EXIT_CANNOT_START)
        }
    }
}
