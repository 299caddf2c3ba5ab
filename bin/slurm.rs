//! `skypipe-slurm`: writes (and by default submits) Slurm batch scripts for skypipe stages,
//! one stage or a chain, with time limits estimated from the units to run and resubmission
//! when a time limit interrupts a job. See docs/slurm.md.

use clap::Parser;
use skypipe_slurm_scripts::{
    SlurmFile, SlurmSettings, StageSpec, plan_jobs, plan_warnings, render_script, sbatch_args,
    submit, write_scripts,
};
use skypipe_status::shell_quote;
use std::path::PathBuf;
use std::process::ExitCode;

/// The separator between the stages of a chain in the stage command.
const THEN: &str = "--then";

/// Writes and submits Slurm batch scripts for skypipe stages.
///
/// The options come first, then the stage command (the binary and its own flags, which
/// must include --config, and --run-dir unless the configuration sets [run] dir). Chain
/// stages with `--then`: each later stage starts when the one before succeeded. Scripts go
/// to RUN_DIR/slurm/<stage>.sbatch, job output to RUN_DIR/logs/<stage>-<job>.out.
#[derive(Debug, Parser)]
#[command(
    name = "skypipe-slurm",
    version,
    after_help = "Examples:\n  skypipe-slurm --nodes 4 --ntasks-per-node 32 --unit-seconds 2.5 skypipe-loadtest --config c.toml --run-dir runs/a\n  skypipe-slurm -f slurm.toml --dry-run skypipe-pointing -c p.toml --run-dir runs/n1 --then skypipe-calibrate -c k.toml --run-dir runs/n1\n\nExit codes: 0 written (and submitted); 1 invalid settings, stage command or submission failure."
)]
struct Cli {
    /// TOML settings: a [slurm] table (every key of the flags below; all listed in
    /// configs/slurm.toml) and, for a chain without a stage command here, [[stage]] tables.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Nodes (#SBATCH --nodes).
    #[arg(long, short = 'N', value_name = "N")]
    nodes: Option<u32>,
    /// MPI ranks per node (#SBATCH --ntasks-per-node).
    #[arg(long, value_name = "N")]
    ntasks_per_node: Option<u32>,
    /// Time limit (MM, HH:MM:SS, D-HH:MM:SS); default: estimated.
    #[arg(long, short = 't', value_name = "TIME")]
    time: Option<String>,
    /// Job name (default skypipe-<stage>).
    #[arg(long, short = 'J', value_name = "NAME")]
    job_name: Option<String>,
    /// Partition.
    #[arg(long, short = 'p', value_name = "NAME")]
    partition: Option<String>,
    /// Account to charge.
    #[arg(long, short = 'A', value_name = "NAME")]
    account: Option<String>,
    /// Units the job will run (default: counted with the stage's --dry-run and its ledger).
    #[arg(long, value_name = "N")]
    units: Option<u64>,
    /// Wall seconds per unit per rank, for the time estimate.
    #[arg(long, value_name = "SECONDS")]
    unit_seconds: Option<f64>,
    /// Measure the seconds per unit in an earlier run's run-report.json (file or run dir).
    #[arg(long, value_name = "REPORT")]
    from_report: Option<PathBuf>,
    /// Multiplies the expected makespan in the estimate (default 1.5).
    #[arg(long, value_name = "F")]
    safety_factor: Option<f64>,
    /// Seconds before the limit at which Slurm sends SIGTERM to the ranks (default 120; 0:
    /// only at the limit).
    #[arg(long, value_name = "SECONDS")]
    signal_seconds: Option<u64>,
    /// Most jobs per stage, the first and its resubmissions (default 5).
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Allow more ranks than CPUs (#SBATCH --overcommit, srun --overcommit).
    #[arg(long)]
    overcommit: bool,
    /// srun's --mpi plugin (default pmix).
    #[arg(long, value_name = "PLUGIN")]
    mpi: Option<String>,
    /// Extra srun argument (repeatable), e.g. --srun-arg=--cpu-bind=cores.
    #[arg(long = "srun-arg", value_name = "ARG", allow_hyphen_values = true)]
    srun_args: Vec<String>,
    /// Print the scripts and what would be submitted; write and submit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the scripts but do not submit them.
    #[arg(long, conflicts_with = "dry_run")]
    no_submit: bool,
    /// The stage command: BIN [ARGS...], then optionally `--then BIN [ARGS...]` per stage.
    #[arg(
        value_name = "STAGE_COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

impl Cli {
    fn flags(&self) -> SlurmSettings {
        SlurmSettings {
            nodes: self.nodes,
            ntasks_per_node: self.ntasks_per_node,
            time: self.time.clone(),
            job_name: self.job_name.clone(),
            partition: self.partition.clone(),
            account: self.account.clone(),
            unit_seconds: self.unit_seconds,
            safety_factor: self.safety_factor,
            signal_s: self.signal_seconds,
            max_attempts: self.max_attempts,
            overcommit: self.overcommit.then_some(true),
            mpi: self.mpi.clone(),
            srun_args: (!self.srun_args.is_empty()).then(|| self.srun_args.clone()),
            ..Default::default()
        }
    }

    /// The stages: from the command line (split at `--then`) or the file's `[[stage]]`s.
    fn stages(&self, file: &SlurmFile) -> Result<Vec<StageSpec>, String> {
        let mut stages: Vec<StageSpec> = if self.command.is_empty() {
            file.stage.clone()
        } else if !file.stage.is_empty() {
            return Err(
                "give the stages either on the command line or as [[stage]] tables, not both"
                    .into(),
            );
        } else {
            self.command
                .split(|a| a == THEN)
                .map(|part| StageSpec {
                    command: part.to_vec(),
                    ..Default::default()
                })
                .collect()
        };
        if stages.iter().any(|s| s.command.is_empty()) {
            return Err(format!("empty stage command (around `{THEN}`)"));
        }
        if self.units.is_some() || self.from_report.is_some() {
            if stages.len() != 1 {
                return Err("--units and --from-report apply to one stage; for a chain, set units / report in each [[stage]] table".into());
            }
            if self.units.is_some() {
                stages[0].units = self.units;
            }
            if self.from_report.is_some() {
                stages[0].report = self.from_report.clone();
            }
        }
        Ok(stages)
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let file = match &cli.file {
        Some(path) => SlurmFile::load(path).map_err(|e| e.to_string())?,
        None => SlurmFile::default(),
    };
    let stages = cli.stages(&file)?;
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let jobs = plan_jobs(&stages, &file.slurm, &cli.flags(), &cwd).map_err(|e| e.to_string())?;
    for job in &jobs {
        for w in plan_warnings(job) {
            eprintln!("warning: {w}");
        }
    }
    let chained = |i: usize| (i > 0).then_some("<previous job>");
    if cli.dry_run {
        for (i, job) in jobs.iter().enumerate() {
            if jobs.len() > 1 {
                println!("# ==> {} <==", job.script.display());
            }
            print!("{}", render_script(job));
            let args: Vec<String> = sbatch_args(job, chained(i))
                .iter()
                .map(|a| shell_quote(a))
                .collect();
            eprintln!(
                "dry run: would write {} and run: sbatch {}",
                job.script.display(),
                args.join(" ")
            );
        }
        return Ok(());
    }
    write_scripts(&jobs).map_err(|e| e.to_string())?;
    if cli.no_submit {
        for (i, job) in jobs.iter().enumerate() {
            let args: Vec<String> = sbatch_args(job, chained(i))
                .iter()
                .map(|a| shell_quote(a))
                .collect();
            println!("wrote {}", job.script.display());
            eprintln!("submit with: sbatch {}", args.join(" "));
        }
        return Ok(());
    }
    let ids = submit(&jobs, "sbatch").map_err(|e| e.to_string())?;
    for (job, id) in jobs.iter().zip(&ids) {
        println!("job {id}: {} ({})", job.stage, job.script.display());
        eprintln!(
            "  output: {}; progress: skypipe-status {}",
            job.output.display(),
            job.run_dir.display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
