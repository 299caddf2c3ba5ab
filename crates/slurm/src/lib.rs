//! Slurm batch scripts for skypipe stages: settings, walltime estimate, script text,
//! writing and submission (what `skypipe-slurm` does).
//!
//! One script per stage, `RUN_DIR/slurm/<stage>.sbatch`, logging to `RUN_DIR/logs/`. A
//! chain of stages is submitted in order, each with `--dependency=afterok:<previous job>`.
//! When a time limit interrupts a stage (its ranks exit 3), the script submits itself again,
//! after the current job, to finish the rest, up to `max_attempts` jobs in all; later
//! stages of the chain are moved to wait for the continuation. `docs/slurm.md` explains it.
//!
//! - [`plan_jobs`] turns stage commands and `[slurm]` settings into [`JobPlan`]s (absolute
//!   paths, time limit given or estimated from the units to run);
//! - [`render_script`] writes the batch script, whose body resubmits the job when a time
//!   limit interrupts it;
//! - [`submit`] chains the jobs with `sbatch --dependency=afterok`.
//!
//! It reads a run directory only through `skypipe_status::rundir` (the ledger to count the
//! units left, an earlier run report for their durations) and writes only under
//! `RUN_DIR/slurm/` and `RUN_DIR/logs/`. No MPI.

mod script;
mod time;

pub use script::render_script;
pub use time::{Estimate, TimeError, format_time, parse_time};

use serde::{Deserialize, Serialize};
use skypipe_status::rundir::{self, LedgerPaths};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Default `[slurm] safety_factor`.
pub const DEFAULT_SAFETY_FACTOR: f64 = 1.5;
/// Default `[slurm] signal_s`: seconds before the limit at which the ranks get SIGTERM.
pub const DEFAULT_SIGNAL_S: u64 = 120;
/// Default `[slurm] startup_s`.
pub const DEFAULT_STARTUP_S: u64 = 60;
/// Default `[slurm] max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Errors of script generation and submission; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A setting or the command line is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The settings file is wrong.
    #[error("{path}: {message}")]
    File {
        /// The TOML file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Operating-system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or program concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The stage's `--dry-run` failed, so its units could not be counted.
    #[error(
        "cannot count the units to run: `{command}` failed ({status}){stderr}\n(pass --units N, or a time limit with --time)"
    )]
    DryRun {
        /// The command run.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, indented.
        stderr: String,
    },
    /// `sbatch` refused a script.
    #[error("sbatch {script}: {message}")]
    Submit {
        /// The script.
        script: PathBuf,
        /// sbatch's message.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SlurmError + '_ {
    move |source| SlurmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `[slurm]` table of a `skypipe-slurm` settings file, also usable as `[stage.slurm]`
/// for one stage of a chain. Every key is optional; precedence is command-line flag, then
/// `[stage.slurm]`, then `[slurm]`, then the default given here. Unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `#SBATCH --nodes`. Default 1.
    pub nodes: Option<u32>,
    /// `#SBATCH --ntasks-per-node`: MPI ranks per node. Default 1.
    pub ntasks_per_node: Option<u32>,
    /// `#SBATCH --time` (`MM`, `HH:MM:SS`, `D-HH:MM:SS`, ...). Default: estimated from the
    /// units to run and `unit_seconds`.
    pub time: Option<String>,
    /// `#SBATCH --job-name`. Default `skypipe-<stage>`.
    pub job_name: Option<String>,
    /// `#SBATCH --partition`. Default: none (the cluster's default partition).
    pub partition: Option<String>,
    /// `#SBATCH --account`. Default: none (the user's default account).
    pub account: Option<String>,
    /// Wall seconds one rank spends per unit, for the estimate. Default: measured in the run
    /// directory's `run-report.json` when it is this stage's (`makespan_s × ranks / ran`).
    pub unit_seconds: Option<f64>,
    /// Multiplies the expected makespan in the estimate. Default 1.5.
    pub safety_factor: Option<f64>,
    /// Seconds before the time limit at which Slurm sends SIGTERM to the ranks
    /// (`#SBATCH --signal=TERM@N`), so they stop, flush the ledger and the script resubmits
    /// well before the hard limit. 0 leaves only Slurm's SIGTERM at the limit. Default 120;
    /// it must exceed the longest unit plus `[run] stop_grace_s`.
    pub signal_s: Option<u64>,
    /// Seconds added to the estimate for start-up (MPI launch, planning). Default 60.
    pub startup_s: Option<u64>,
    /// Most jobs one stage may use in a row (the first plus its resubmissions). Default 5.
    pub max_attempts: Option<u32>,
    /// `#SBATCH --overcommit`: allow more ranks than CPUs (small test machines); the script
    /// then asks for `--ntasks=nodes×ntasks_per_node`, since Slurm refuses
    /// `--ntasks-per-node` above the CPU count. Default false.
    pub overcommit: Option<bool>,
    /// The `srun --mpi=` plugin. Default `pmix` (OpenMPI is built for PMIx; `pmi2` fails).
    pub mpi: Option<String>,
    /// Extra `srun` arguments, e.g. `["--cpu-bind=cores"]`. Default none.
    pub srun_args: Option<Vec<String>>,
    /// Extra `#SBATCH` options, e.g. `["--constraint=cpu", "--qos=regular"]`. Default none.
    pub directives: Option<Vec<String>>,
    /// Shell lines run before `srun`, e.g. `["module load openmpi"]`. Default none.
    pub setup: Option<Vec<String>>,
}

impl SlurmSettings {
    /// These settings, with every key that is unset here taken from `lower`.
    pub fn or(&self, lower: &SlurmSettings) -> SlurmSettings {
        let s = self.clone();
        let l = lower.clone();
        SlurmSettings {
            nodes: s.nodes.or(l.nodes),
            ntasks_per_node: s.ntasks_per_node.or(l.ntasks_per_node),
            time: s.time.or(l.time),
            job_name: s.job_name.or(l.job_name),
            partition: s.partition.or(l.partition),
            account: s.account.or(l.account),
            unit_seconds: s.unit_seconds.or(l.unit_seconds),
            safety_factor: s.safety_factor.or(l.safety_factor),
            signal_s: s.signal_s.or(l.signal_s),
            startup_s: s.startup_s.or(l.startup_s),
            max_attempts: s.max_attempts.or(l.max_attempts),
            overcommit: s.overcommit.or(l.overcommit),
            mpi: s.mpi.or(l.mpi),
            srun_args: s.srun_args.or(l.srun_args),
            directives: s.directives.or(l.directives),
            setup: s.setup.or(l.setup),
        }
    }

    /// Applies the defaults and checks every value, naming the key at fault.
    pub fn resolve(&self) -> Result<JobSettings, SlurmError> {
        let bad = |m: String| Err(SlurmError::Invalid(m));
        let nodes = self.nodes.unwrap_or(1);
        let ntasks_per_node = self.ntasks_per_node.unwrap_or(1);
        if nodes == 0 || ntasks_per_node == 0 {
            return bad("slurm.nodes and slurm.ntasks_per_node must be at least 1".into());
        }
        let time_s = self.time.as_deref().map(parse_time).transpose();
        let time_s = match time_s {
            Ok(t) => t,
            Err(e) => return bad(format!("slurm.time: {e}")),
        };
        for (key, value) in [
            ("slurm.job_name", &self.job_name),
            ("slurm.partition", &self.partition),
            ("slurm.account", &self.account),
            ("slurm.mpi", &self.mpi),
        ] {
            if let Some(v) = value {
                check_word(key, v)?;
            }
        }
        if let Some(u) = self.unit_seconds
            && !(u.is_finite() && u > 0.0)
        {
            return bad(format!(
                "slurm.unit_seconds must be a positive number of seconds, got {u}"
            ));
        }
        let safety_factor = self.safety_factor.unwrap_or(DEFAULT_SAFETY_FACTOR);
        if !(safety_factor.is_finite() && safety_factor >= 1.0) {
            return bad(format!(
                "slurm.safety_factor must be at least 1, got {safety_factor}"
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            return bad("slurm.max_attempts must be at least 1".into());
        }
        let directives = self.directives.clone().unwrap_or_default();
        for d in &directives {
            if !d.starts_with('-') || d.chars().any(|c| c.is_control()) {
                return bad(format!(
                    "slurm.directives: `{d}` is not an sbatch option (e.g. \"--qos=regular\")"
                ));
            }
        }
        let setup = self.setup.clone().unwrap_or_default();
        if setup.iter().any(|l| l.contains('\n')) {
            return bad("slurm.setup: one shell line per entry (no newlines)".into());
        }
        Ok(JobSettings {
            nodes,
            ntasks_per_node,
            time_s,
            job_name: self.job_name.clone(),
            partition: self.partition.clone(),
            account: self.account.clone(),
            unit_seconds: self.unit_seconds,
            safety_factor,
            signal_s: self.signal_s.unwrap_or(DEFAULT_SIGNAL_S),
            startup_s: self.startup_s.unwrap_or(DEFAULT_STARTUP_S),
            max_attempts,
            overcommit: self.overcommit.unwrap_or(false),
            mpi: self.mpi.clone().unwrap_or_else(|| "pmix".to_string()),
            srun_args: self.srun_args.clone().unwrap_or_default(),
            directives,
            setup,
        })
    }
}

/// A value that goes into an `#SBATCH` line: no whitespace, quotes or control characters.
fn check_word(key: &str, value: &str) -> Result<(), SlurmError> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"#\\$`".contains(c))
    {
        return Err(SlurmError::Invalid(format!(
            "{key}: `{value}` must be one word without spaces, quotes, `#`, `$` or backslashes"
        )));
    }
    Ok(())
}

/// [`SlurmSettings`] with defaults applied and values checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSettings {
    /// Nodes.
    pub nodes: u32,
    /// MPI ranks per node.
    pub ntasks_per_node: u32,
    /// Time limit in seconds, when given.
    pub time_s: Option<u64>,
    /// Job name, when given.
    pub job_name: Option<String>,
    /// Partition, when given.
    pub partition: Option<String>,
    /// Account, when given.
    pub account: Option<String>,
    /// Seconds per unit per rank, when given.
    pub unit_seconds: Option<f64>,
    /// Safety factor of the estimate.
    pub safety_factor: f64,
    /// Warning signal lead time, seconds (0: none).
    pub signal_s: u64,
    /// Start-up allowance of the estimate, seconds.
    pub startup_s: u64,
    /// Most jobs in a row for one stage.
    pub max_attempts: u32,
    /// `--overcommit`.
    pub overcommit: bool,
    /// `srun --mpi=` value.
    pub mpi: String,
    /// Extra srun arguments.
    pub srun_args: Vec<String>,
    /// Extra `#SBATCH` options.
    pub directives: Vec<String>,
    /// Shell lines before srun.
    pub setup: Vec<String>,
}

impl JobSettings {
    /// Nodes × tasks per node.
    pub fn ranks(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.ntasks_per_node)
    }
}

/// One stage to submit: its command and what the estimate needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The stage binary (`skypipe-<stage>` on `PATH`, or a path) and its arguments, which
    /// must give `--config` and (unless the configuration sets `[run] dir`) `--run-dir`.
    pub command: Vec<String>,
    /// Units this job will run. Default: counted by running the stage with `--dry-run` and
    /// leaving out the units the ledger already records done or no-work.
    #[serde(default)]
    pub units: Option<u64>,
    /// An earlier run's `run-report.json` (or its run directory) to measure the time per
    /// unit in. Default: this stage's own run directory, if its report is this stage's.
    #[serde(default)]
    pub report: Option<PathBuf>,
    /// Settings for this stage only, over the `[slurm]` table.
    #[serde(default)]
    pub slurm: SlurmSettings,
}

/// A `skypipe-slurm` settings file: `[slurm]` and, for a chain, `[[stage]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmFile {
    /// Settings for every stage.
    #[serde(default)]
    pub slurm: SlurmSettings,
    /// Stages to submit in order, each after the previous one succeeded (used when no stage
    /// command is given on the command line).
    #[serde(default)]
    pub stage: Vec<StageSpec>,
}

impl SlurmFile {
    /// Reads and checks a settings file.
    pub fn load(path: &Path) -> Result<Self, SlurmError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let file: SlurmFile = toml::from_str(&text).map_err(|e| SlurmError::File {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        file.slurm.resolve().map_err(|e| SlurmError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for s in &file.stage {
            s.slurm.resolve().map_err(|e| SlurmError::File {
                path: path.to_path_buf(),
                message: format!("[[stage]] {}: {e}", s.command.join(" ")),
            })?;
        }
        Ok(file)
    }
}

/// Everything one job script needs, with absolute paths.
#[derive(Debug, Clone, Serialize)]
pub struct JobPlan {
    /// Stage name (the ledger name: the binary name without `skypipe-`).
    pub stage: String,
    /// The stage binary, absolute.
    pub bin: PathBuf,
    /// Its arguments, with `--config` and `--run-dir` made absolute.
    pub args: Vec<String>,
    /// The run directory, absolute.
    pub run_dir: PathBuf,
    /// The job's working directory (where `skypipe-slurm` ran), so relative paths inside
    /// the configuration resolve as they did there.
    pub workdir: PathBuf,
    /// `RUN_DIR/slurm/<stage>.sbatch`.
    pub script: PathBuf,
    /// `RUN_DIR/logs/<stage>-%j.out`: the job's standard output and error.
    pub output: PathBuf,
    /// `RUN_DIR/logs/<stage>.attempts`: one line per job start and end, appended by the script.
    pub attempts_log: PathBuf,
    /// Resolved settings.
    pub settings: JobSettings,
    /// The time limit, seconds.
    pub time_s: u64,
    /// How the time limit was estimated, when it was not given.
    pub estimate: Option<Estimate>,
}

impl JobPlan {
    /// `#SBATCH --job-name` value.
    pub fn job_name(&self) -> String {
        self.settings
            .job_name
            .clone()
            .unwrap_or_else(|| format!("skypipe-{}", self.stage))
    }
}

/// A stage command split into binary and arguments, paths made absolute.
#[derive(Debug, Clone, PartialEq)]
struct StageCommand {
    bin: PathBuf,
    args: Vec<String>,
    run_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    retry_failed: bool,
}

fn absolute_in(cwd: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}

/// Finds a program as the shell would: a path when it has a `/`, else on `PATH`.
fn find_program(name: &str, cwd: &Path) -> Result<PathBuf, SlurmError> {
    if name.contains('/') {
        let p = absolute_in(cwd, Path::new(name));
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SlurmError::Invalid(format!(
                "{}: no such program",
                p.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| absolute_in(cwd, &dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            SlurmError::Invalid(format!(
                "{name}: not found on PATH (give the stage binary's path)"
            ))
        })
}

impl StageCommand {
    fn parse(command: &[String], cwd: &Path) -> Result<Self, SlurmError> {
        let (bin, rest) = command
            .split_first()
            .ok_or_else(|| SlurmError::Invalid("empty stage command".into()))?;
        let bin = find_program(bin, cwd)?;
        let mut args = Vec::with_capacity(rest.len());
        let mut run_dir = None;
        let mut config = None;
        let mut retry_failed = false;
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            match flag {
                "--config" | "-c" | "--run-dir" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| SlurmError::Invalid(format!("{flag} needs a value")))?,
                    };
                    let path = absolute_in(cwd, Path::new(&value));
                    if flag == "--run-dir" {
                        run_dir = Some(path.clone());
                    } else {
                        config = Some(path.clone());
                    }
                    args.push(flag.to_string());
                    args.push(path.to_string_lossy().into_owned());
                }
                "--dry-run" | "--unit" => {
                    return Err(SlurmError::Invalid(format!(
                        "{flag} does not belong in a batch job's stage command"
                    )));
                }
                "--retry-failed" => {
                    retry_failed = true;
                    args.push(arg.clone());
                }
                _ => args.push(arg.clone()),
            }
        }
        Ok(Self {
            bin,
            args,
            run_dir,
            config,
            retry_failed,
        })
    }

    fn stage_name(&self) -> String {
        let name = self
            .bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.strip_prefix("skypipe-").unwrap_or(&name) {
            // A chain run's reports and scripts are the chain's.
            "run" => "chain".to_string(),
            other => other.to_string(),
        }
    }

    fn display(&self) -> String {
        std::iter::once(self.bin.to_string_lossy().into_owned())
            .chain(self.args.iter().cloned())
            .map(|a| skypipe_status::shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `[run] dir` of a stage configuration, if set (other keys are not looked at).
fn config_run_dir(config: &Path) -> Result<Option<PathBuf>, SlurmError> {
    let text = std::fs::read_to_string(config).map_err(io_err(config))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| SlurmError::File {
        path: config.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    Ok(table
        .get("run")
        .and_then(|r| r.get("dir"))
        .and_then(|d| d.as_str())
        .map(PathBuf::from))
}

/// Units the stage would run now: its `--dry-run` plan minus the units its ledger records
/// done or no-work (and minus failed ones unless `--retry-failed`).
fn count_units(
    cmd: &StageCommand,
    stage: &str,
    run_dir: &Path,
    cwd: &Path,
) -> Result<u64, SlurmError> {
    let out = Command::new(&cmd.bin)
        .args(&cmd.args)
        .arg("--dry-run")
        .current_dir(cwd)
        .output()
        .map_err(io_err(&cmd.bin))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: String = stderr
            .lines()
            .take(20)
            .map(|l| format!("\n  {l}"))
            .collect();
        return Err(SlurmError::DryRun {
            command: format!("{} --dry-run", cmd.display()),
            status: out.status.to_string(),
            stderr,
        });
    }
    // A chain's dry run names units `STAGE[ID]`: each is checked in its own stage's ledger.
    let mut ledgers: BTreeMap<String, HashMap<String, bool>> = BTreeMap::new();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut units = 0;
    for label in stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
    {
        let (ledger_name, id) = match label.strip_suffix(']').and_then(|l| l.split_once('[')) {
            Some((name, id)) => (name, id),
            None => (stage, label),
        };
        if !ledgers.contains_key(ledger_name) {
            let ledger = rundir::read_ledger(&LedgerPaths::new(run_dir, ledger_name).records)
                .map_err(|e| {
                    SlurmError::Invalid(format!(
                        "cannot read the ledger to count pending units: {e}"
                    ))
                })?;
            let latest = ledger
                .latest()
                .into_iter()
                .map(|(unit, r)| (unit.to_string(), r.is_success()))
                .collect();
            ledgers.insert(ledger_name.to_string(), latest);
        }
        let pending = match ledgers[ledger_name].get(id) {
            None => true,
            Some(&success) => cmd.retry_failed && !success,
        };
        units += usize::from(pending);
    }
    Ok(units as u64)
}

/// Seconds per unit from a run report, and a description of where it came from. An
/// explicit report must belong to `stage`; the run directory's own report is used only if it
/// does.
fn report_unit_seconds(
    explicit: Option<&Path>,
    run_dir: &Path,
    stage: &str,
) -> Result<Option<(f64, String)>, SlurmError> {
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (run_dir.join("run-report.json"), false),
    };
    let report = rundir::read_report(&path)
        .map_err(|e| SlurmError::Invalid(format!("cannot read the run report: {e}")))?;
    match report {
        Some(r) if r.stage == stage => match r.unit_seconds() {
            Some(s) => Ok(Some((
                s,
                format!(
                    "measured in {}: makespan {:.1} s x {} ranks / {} units",
                    path.display(),
                    r.makespan_s,
                    r.ranks,
                    r.ran
                ),
            ))),
            None if required => Err(SlurmError::Invalid(format!(
                "{}: no unit ran in that invocation, so it measures no time per unit",
                path.display()
            ))),
            None => Ok(None),
        },
        Some(r) if required => Err(SlurmError::Invalid(format!(
            "{}: the report is stage {}'s, not {stage}'s",
            path.display(),
            r.stage
        ))),
        None if required => Err(SlurmError::Invalid(format!(
            "{}: no run report there",
            path.display()
        ))),
        _ => Ok(None),
    }
}

/// Resolves the stages of a submission into job plans: settings merged (`flags` over each
/// stage's own over `file`), paths made absolute against `cwd`, time limits given or
/// estimated (running each stage's `--dry-run` when its unit count is not given).
pub fn plan_jobs(
    stages: &[StageSpec],
    file: &SlurmSettings,
    flags: &SlurmSettings,
    cwd: &Path,
) -> Result<Vec<JobPlan>, SlurmError> {
    if stages.is_empty() {
        return Err(SlurmError::Invalid(
            "no stage to submit: give a stage command (e.g. skypipe-loadtest --config c.toml --run-dir runs/x) or [[stage]] tables".into(),
        ));
    }
    let mut jobs: Vec<JobPlan> = Vec::with_capacity(stages.len());
    for spec in stages {
        let settings = flags.or(&spec.slurm).or(file).resolve()?;
        let mut cmd = StageCommand::parse(&spec.command, cwd)?;
        let stage = cmd.stage_name();
        let run_dir = match (&cmd.run_dir, &cmd.config) {
            (Some(d), _) => d.clone(),
            (None, Some(config)) => match config_run_dir(config)? {
                Some(d) => {
                    let d = absolute_in(cwd, &d);
                    cmd.args.push("--run-dir".into());
                    cmd.args.push(d.to_string_lossy().into_owned());
                    d
                }
                None => {
                    return Err(SlurmError::Invalid(format!(
                        "{stage}: no run directory: pass --run-dir in the stage command or set [run] dir in {}",
                        config.display()
                    )));
                }
            },
            (None, None) => {
                return Err(SlurmError::Invalid(format!(
                    "{stage}: the stage command needs --config FILE and --run-dir DIR"
                )));
            }
        };
        for (what, p) in [
            ("run directory", &run_dir),
            ("working directory", &cwd.to_path_buf()),
        ] {
            if p.to_string_lossy()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SlurmError::Invalid(format!(
                    "{what} {}: paths with spaces cannot go into #SBATCH lines",
                    p.display()
                )));
            }
        }
        let (time_s, estimate) = match settings.time_s {
            Some(t) => (t, None),
            None => {
                let (unit_seconds, source) = match settings.unit_seconds {
                    Some(s) => (s, "given".to_string()),
                    None => report_unit_seconds(spec.report.as_deref(), &run_dir, &stage)?
                        .ok_or_else(|| {
                            SlurmError::Invalid(format!(
                                "{stage}: cannot estimate the time limit: give --time, or --unit-seconds S (seconds per unit per rank), or --from-report with an earlier run-report.json of this stage"
                            ))
                        })?,
                };
                let units = match spec.units {
                    Some(n) => n,
                    None => count_units(&cmd, &stage, &run_dir, cwd)?,
                };
                let e = Estimate::new(
                    units,
                    unit_seconds,
                    source,
                    settings.ranks(),
                    settings.safety_factor,
                    settings.signal_s,
                    settings.startup_s,
                );
                (e.limit_s, Some(e))
            }
        };
        let job = JobPlan {
            script: run_dir.join("slurm").join(format!("{stage}.sbatch")),
            output: run_dir.join("logs").join(format!("{stage}-%j.out")),
            attempts_log: run_dir.join("logs").join(format!("{stage}.attempts")),
            stage,
            bin: cmd.bin,
            args: cmd.args,
            run_dir,
            workdir: cwd.to_path_buf(),
            settings,
            time_s,
            estimate,
        };
        if let Some(other) = jobs.iter().find(|j| j.script == job.script) {
            return Err(SlurmError::Invalid(format!(
                "stage {} appears twice in the chain with run directory {}",
                other.stage,
                other.run_dir.display()
            )));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// Warnings worth printing about a plan (they do not stop submission).
pub fn plan_warnings(job: &JobPlan) -> Vec<String> {
    let mut w = Vec::new();
    let s = &job.settings;
    if s.signal_s > 0 && job.time_s <= s.signal_s + 60 {
        w.push(format!(
            "{}: the time limit ({}) leaves at most a minute before the warning signal ({} s before the limit); Slurm checks limits every 30 s or so, so the ranks may be told to stop almost at once",
            job.stage,
            format_time(job.time_s),
            s.signal_s
        ));
    }
    w
}

/// Writes each job's script (atomically, executable) and creates `RUN_DIR/logs`, which
/// Slurm needs before it can open the job's output file.
pub fn write_scripts(jobs: &[JobPlan]) -> Result<(), SlurmError> {
    use std::os::unix::fs::PermissionsExt;
    for job in jobs {
        let logs = job.run_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        let dir = job.script.parent().expect("script has a directory");
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = dir.join(format!(".{}.tmp.{}", job.stage, std::process::id()));
        std::fs::write(&tmp, render_script(job)).map_err(io_err(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &job.script).map_err(io_err(&job.script))?;
    }
    Ok(())
}

/// The `sbatch` argument lists that submit `jobs` as a chain: the first alone, each later
/// one with `--dependency=afterok:<previous>` (written `afterok:{prev}` here) and
/// `--kill-on-invalid-dep=yes`, so a failed stage cancels the rest instead of leaving them
/// pending forever.
pub fn sbatch_args(job: &JobPlan, previous: Option<&str>) -> Vec<String> {
    let mut args = vec!["--parsable".to_string()];
    if let Some(prev) = previous {
        args.push(format!("--dependency=afterok:{prev}"));
        args.push("--kill-on-invalid-dep=yes".to_string());
    }
    args.push(job.script.to_string_lossy().into_owned());
    args
}

/// Submits the written scripts in order with `sbatch` (the program named by `sbatch`),
/// chaining them; returns the job IDs.
pub fn submit(jobs: &[JobPlan], sbatch: &str) -> Result<Vec<String>, SlurmError> {
    let mut ids: Vec<String> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let out = Command::new(sbatch)
            .args(sbatch_args(job, ids.last().map(String::as_str)))
            .current_dir(&job.workdir)
            .output()
            .map_err(io_err(Path::new(sbatch)))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if !out.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SlurmError::Submit {
                script: job.script.clone(),
                message: format!(
                    "{}{}{}",
                    out.status,
                    if ids.is_empty() {
                        String::new()
                    } else {
                        format!(" (jobs already submitted: {})", ids.join(", "))
                    },
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .map(|l| format!("\n  {l}"))
                        .collect::<String>()
                ),
            });
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_and_precedence_is_flag_stage_file() {
        let err = toml::from_str::<SlurmFile>("[slurm]\nnode = 2\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `node`"), "{err}");
        let err =
            toml::from_str::<SlurmFile>("[[stage]]\ncommand = [\"x\"]\ncores = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `cores`"), "{err}");
        let file: SlurmFile = toml::from_str(
            "[slurm]\nnodes = 2\npartition = \"debug\"\naccount = \"m1\"\n[[stage]]\ncommand = [\"skypipe-a\"]\n[stage.slurm]\nnodes = 8\naccount = \"m2\"\n",
        )
        .unwrap();
        let flags = SlurmSettings {
            account: Some("m3".into()),
            ..Default::default()
        };
        let s = flags
            .or(&file.stage[0].slurm)
            .or(&file.slurm)
            .resolve()
            .unwrap();
        assert_eq!(s.nodes, 8);
        assert_eq!(s.partition.as_deref(), Some("debug"));
        assert_eq!(s.account.as_deref(), Some("m3"));
        assert_eq!(s.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(s.mpi, "pmix");
    }

    #[test]
    fn the_shipped_example_sets_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/slurm.toml");
        let file = SlurmFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let keys: Vec<&String> = table["slurm"].as_table().unwrap().keys().collect();
        let all = serde_json::to_value(&file.slurm).unwrap();
        let fields: Vec<&String> = all.as_object().unwrap().keys().collect();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        let mut fields_sorted = fields.clone();
        fields_sorted.sort();
        assert_eq!(
            keys_sorted, fields_sorted,
            "the example sets every [slurm] key"
        );
        for key in keys {
            let documented = text
                .lines()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0].starts_with('#') && w[1].starts_with(&format!("{key} =")));
            assert!(documented, "{key} has no comment in the example");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("nodes = 0", "slurm.nodes"),
            ("time = \"soon\"", "slurm.time"),
            ("partition = \"a b\"", "slurm.partition"),
            ("account = \"x$(rm)\"", "slurm.account"),
            ("safety_factor = 0.5", "slurm.safety_factor"),
            ("unit_seconds = -1.0", "slurm.unit_seconds"),
            ("max_attempts = 0", "slurm.max_attempts"),
            ("directives = [\"qos=x\"]", "slurm.directives"),
        ];
        for (toml_text, key) in cases {
            let file: SlurmFile = toml::from_str(&format!("[slurm]\n{toml_text}\n")).unwrap();
            let err = file.slurm.resolve().unwrap_err().to_string();
            assert!(err.contains(key), "{toml_text}: {err}");
        }
    }

    #[test]
    fn stage_command_paths_become_absolute_and_batch_unfit_flags_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("skypipe-demo");
        std::fs::write(&bin, "").unwrap();
        let cmd: Vec<String> = [
            "./skypipe-demo",
            "-c",
            "cfg.toml",
            "--run-dir=runs/a",
            "--retry-failed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = StageCommand::parse(&cmd, dir.path()).unwrap();
        assert_eq!(parsed.bin, dir.path().join("./skypipe-demo"));
        assert_eq!(parsed.stage_name(), "demo");
        assert_eq!(parsed.config, Some(dir.path().join("cfg.toml")));
        assert_eq!(parsed.run_dir, Some(dir.path().join("runs/a")));
        assert!(parsed.retry_failed);
        assert_eq!(parsed.args[0], "-c");
        assert_eq!(parsed.args[2], "--run-dir");
        for bad in ["--dry-run", "--unit"] {
            let mut c = cmd.clone();
            c.push(bad.into());
            let err = StageCommand::parse(&c, dir.path()).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn chain_submission_arguments_depend_on_the_previous_job() {
        let job = JobPlan {
            stage: "b".into(),
            bin: "/bin/skypipe-b".into(),
            args: vec![],
            run_dir: "/r".into(),
            workdir: "/".into(),
            script: "/r/slurm/b.sbatch".into(),
            output: "/r/logs/b-%j.out".into(),
            attempts_log: "/r/logs/b.attempts".into(),
            settings: SlurmSettings::default().resolve().unwrap(),
            time_s: 60,
            estimate: None,
        };
        assert_eq!(
            sbatch_args(&job, None),
            vec!["--parsable", "/r/slurm/b.sbatch"]
        );
        assert_eq!(
            sbatch_args(&job, Some("41")),
            vec![
                "--parsable",
                "--dependency=afterok:41",
                "--kill-on-invalid-dep=yes",
                "/r/slurm/b.sbatch"
            ]
        );
        assert_eq!(job.job_name(), "skypipe-b");
    }
}
