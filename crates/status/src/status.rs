//! The state of a run directory, stage by stage: what `skypipe-status` prints.

use crate::rundir::{
    self, LedgerPaths, LedgerRecord, LockProbe, Progress, Report, RunDirError, StagePart, unix_now,
};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Format tag of the `--json` output.
pub const STATUS_FORMAT: &str = "skypipe-status/1";

/// A progress file younger than this (seconds) counts as fresh. Rank 0 rewrites it at every
/// progress line (`[run] progress_interval_s`, default 10 s).
pub const FRESH_PROGRESS_S: f64 = 60.0;

/// How many of the latest invocation's last records the ledger-based rate uses.
const RATE_WINDOW: usize = 1000;

/// What a stage is doing, as far as the run directory tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// A job holds the stage's ledger lock.
    Running,
    /// No job runs; every planned unit is done or no-work.
    Complete,
    /// No job runs; nothing is pending but some units failed.
    Failed,
    /// No job runs and units are pending: the job was interrupted or killed, or has not
    /// been resumed yet.
    Incomplete,
    /// No manifest, so the number of planned units is unknown.
    Unknown,
    /// No job runs; nothing is pending, but outputs of units recorded done are gone or
    /// changed size since (a resume makes them again).
    OutputsChanged,
}

/// A failed unit (its latest ledger record).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Unit ID.
    pub unit: String,
    /// Failure kind (`bad-input`, `transient`, `out-of-memory`, `dependency-failed`, ...).
    pub kind: String,
    /// The error chain recorded.
    pub message: Option<String>,
    /// Attempts in the invocation that recorded it.
    pub attempts: u32,
    /// Invocation that recorded it.
    pub invocation: u32,
}

/// Where the rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateSource {
    /// The running job's `progress.json`, written less than [`FRESH_PROGRESS_S`] ago.
    Progress,
    /// The recording times of the latest invocation's ledger records.
    Ledger,
}

/// Slurm facts found in the run directory (written by `skypipe-slurm` scripts).
#[derive(Debug, Clone, Serialize)]
pub struct SlurmInfo {
    /// `RUN_DIR/slurm/<stage>.sbatch`, when it exists.
    pub script: Option<PathBuf>,
    /// `sbatch <script>`: submits the stage again (it resumes).
    pub submit_command: Option<String>,
    /// The last line of `RUN_DIR/logs/<stage>.attempts` as `key: value` pairs (job,
    /// attempt, exit, reason, action, next_job, time).
    pub last_attempt: Option<BTreeMap<String, String>>,
}

/// How the latest job that ran a stage went, from `run-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// `true` when the stage ran inside a chain run (`skypipe-run`), sharing its ranks.
    pub in_chain: bool,
    /// Ranks of that job.
    pub ranks: usize,
    /// Units of the stage that ended in it.
    pub ran: usize,
    /// Seconds from the stage's first unit's start to its last unit's end (the job's makespan
    /// when it ran alone).
    pub wall_s: Option<f64>,
    /// Seconds spent in the stage's units.
    pub busy_s: f64,
    /// The job's utilisation when the stage ran alone; `None` in a chain, whose ranks the
    /// stages share (the chain's utilisation is [`ChainRun::utilisation`]).
    pub utilisation: Option<f64>,
}

/// The latest chain run (`skypipe-run`) on the run directory, when `run-report.json` is its.
#[derive(Debug, Clone, Serialize)]
pub struct ChainRun {
    /// Chain invocation.
    pub invocation: u32,
    /// Ranks of the job.
    pub ranks: usize,
    /// Seconds from first dispatch to last result.
    pub makespan_s: f64,
    /// Busy rank-seconds over `makespan × ranks`.
    pub utilisation: Option<f64>,
    /// Exit code of the job.
    pub exit_code: Option<u8>,
}

/// The state of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// Stage name.
    pub stage: String,
    /// Summary state.
    pub state: State,
    /// Whether a job seems to be running (lock held, or lock untestable and progress fresh).
    pub running: bool,
    /// What the lock probe found: `held`, `free`, `absent` or `untestable: <reason>`.
    pub lock: String,
    /// Latest invocation on this run directory (from the manifest).
    pub invocation: Option<u32>,
    /// Units planned by the latest invocation (from the manifest).
    pub planned: Option<usize>,
    /// Units whose latest record is `done`.
    pub done: usize,
    /// Units whose latest record is `no-work`.
    pub no_work: usize,
    /// Units whose latest record is a failure.
    pub failed: usize,
    /// Failed units by kind.
    pub failed_by_kind: BTreeMap<String, usize>,
    /// Planned units minus units with a record; `None` without a manifest.
    pub pending: Option<usize>,
    /// Ranks of the running job (from a fresh progress file).
    pub ranks: Option<u64>,
    /// Units ended per second.
    pub rate_per_s: Option<f64>,
    /// Where the rate comes from.
    pub rate_source: Option<RateSource>,
    /// Seconds until the pending units are done at that rate (only while running).
    pub eta_s: Option<f64>,
    /// Age of `progress.json`, seconds.
    pub progress_age_s: Option<f64>,
    /// Age of the newest ledger record, seconds.
    pub last_record_age_s: Option<f64>,
    /// Exit code of the latest invocation, when `run-report.json` reports on it.
    pub last_exit_code: Option<u8>,
    /// Every failed unit with its reason, latest record per unit, in unit order.
    pub failures: Vec<Failure>,
    /// The command that resumes the stage (from `run-report.json`, without `--retry-failed`).
    pub resume_command: Option<String>,
    /// The command that resumes the stage and retries its failed units.
    pub retry_command: Option<String>,
    /// Slurm scripts and attempts, when the stage was submitted with `skypipe-slurm`.
    pub slurm: Option<SlurmInfo>,
    /// How its latest job went, when `run-report.json` reports on that job.
    pub last_run: Option<LastRun>,
    /// Units recorded done whose recorded outputs are gone or changed size since, each
    /// `unit: file (what changed)`, the first changed file named.
    pub outputs_changed: Vec<String>,
    /// Problems met while reading (malformed lines, unreadable files).
    pub warnings: Vec<String>,
}

/// The state of a whole run directory.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// Always [`STATUS_FORMAT`].
    pub format: &'static str,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Unix time the status was taken.
    pub time: f64,
    /// The latest job, when it was a chain run.
    pub chain: Option<ChainRun>,
    /// One entry per stage with a ledger, by name.
    pub stages: Vec<StageStatus>,
}

/// Reads the state of every stage under `run_dir`. Takes no lock beyond an instant's probe
/// and writes nothing, so it is safe on a login node while a job runs. Fails only when the
/// directory has no ledger (or it cannot be listed); unreadable parts become warnings.
pub fn run_status(run_dir: &Path) -> Result<RunStatus, RunDirError> {
    let names = rundir::stages(run_dir)?;
    let now = unix_now();
    let mut report_warning = None;
    let report = match rundir::read_report(&run_dir.join("run-report.json")) {
        Ok(r) => r,
        Err(e) => {
            report_warning = Some(e.to_string());
            None
        }
    };
    let stages = names
        .iter()
        .map(|name| {
            let mut s = stage_status(run_dir, name, report.as_ref(), now);
            if let Some(w) = &report_warning {
                s.warnings.push(w.clone());
            }
            s
        })
        .collect();
    let chain = report
        .as_ref()
        .filter(|r| r.stage == CHAIN_REPORT_STAGE)
        .map(|r| ChainRun {
            invocation: r.invocation,
            ranks: r.ranks,
            makespan_s: r.makespan_s,
            utilisation: r.utilisation,
            exit_code: r.exit_code,
        });
    Ok(RunStatus {
        format: STATUS_FORMAT,
        run_dir: run_dir.to_path_buf(),
        time: now,
        chain,
        stages,
    })
}

/// The `stage` of a chain run's `run-report.json`.
const CHAIN_REPORT_STAGE: &str = "chain";

/// The stage's part of the latest job, if `report` is a job that ran it: its own job when the
/// report's invocation is the stage's latest, or a chain run listing it.
fn last_run(report: &Report, stage: &str, invocation: Option<u32>) -> Option<LastRun> {
    let part: Option<&StagePart> = report.stages.iter().find(|p| p.stage == stage);
    if report.stage == stage && Some(report.invocation) == invocation {
        Some(LastRun {
            in_chain: false,
            ranks: report.ranks,
            ran: report.ran,
            wall_s: Some(report.makespan_s),
            busy_s: part.map_or(0.0, |p| p.busy_s),
            utilisation: report.utilisation,
        })
    } else if report.stage == CHAIN_REPORT_STAGE {
        part.map(|p| LastRun {
            in_chain: true,
            ranks: report.ranks,
            ran: p.ran,
            wall_s: p.span_s(),
            busy_s: p.busy_s,
            utilisation: None,
        })
    } else {
        None
    }
}

fn stage_status(run_dir: &Path, stage: &str, report: Option<&Report>, now: f64) -> StageStatus {
    let files = LedgerPaths::new(run_dir, stage);
    let mut warnings = Vec::new();
    let contents = rundir::read_ledger(&files.records).unwrap_or_else(|e| {
        warnings.push(e.to_string());
        Default::default()
    });
    if !contents.bad_lines.is_empty() {
        warnings.push(format!(
            "{}: {} malformed line(s) ignored (first: line {})",
            files.records.display(),
            contents.bad_lines.len(),
            contents.bad_lines[0].0
        ));
    }
    let manifest = rundir::read_manifest(&files.manifest).unwrap_or_else(|e| {
        warnings.push(e.to_string());
        None
    });
    let progress = rundir::read_progress(&files.progress).unwrap_or_else(|e| {
        warnings.push(e.to_string());
        None
    });

    let latest = contents.latest();
    let mut done = 0;
    let mut no_work = 0;
    let mut failed_by_kind = BTreeMap::new();
    let mut failures = Vec::new();
    let mut outputs_changed = Vec::new();
    for r in latest.values() {
        match r.outcome.as_str() {
            "done" => {
                done += 1;
                let changed = r.changed_outputs();
                if let Some((first, problem)) = changed.first() {
                    outputs_changed.push(format!(
                        "{}: {} ({problem}){}",
                        r.unit,
                        first.path.display(),
                        if changed.len() > 1 {
                            format!(" and {} more", changed.len() - 1)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            "no-work" => no_work += 1,
            kind => {
                *failed_by_kind.entry(kind.to_string()).or_insert(0) += 1;
                failures.push(Failure {
                    unit: r.unit.clone(),
                    kind: kind.to_string(),
                    message: r.message.clone(),
                    attempts: r.attempts,
                    invocation: r.invocation,
                });
            }
        }
    }
    failures.sort_by(|a, b| natural_cmp(&a.unit, &b.unit));
    outputs_changed.sort_by(|a, b| natural_cmp(a, b));
    let failed = failures.len();
    let ended = latest.len();
    let planned = manifest.as_ref().map(|m| m.planned_units);
    let pending = planned.map(|p| p.saturating_sub(ended));
    let invocation = manifest.as_ref().map(|m| m.invocations);

    let progress_age_s = progress.as_ref().map(|p| (now - p.time).max(0.0));
    let progress_fresh = progress.as_ref().is_some_and(|p| {
        now - p.time <= FRESH_PROGRESS_S && invocation.is_none_or(|i| p.invocation == i)
    });
    let probe = rundir::probe_lock(&files.lock);
    let (running, lock) = match &probe {
        LockProbe::Held => (true, "held".to_string()),
        LockProbe::Free => (false, "free".to_string()),
        LockProbe::Absent => (false, "absent".to_string()),
        LockProbe::Untestable(reason) => (progress_fresh, format!("untestable: {reason}")),
    };

    let last_record_age_s = contents
        .records
        .iter()
        .map(|r| r.time)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
        .map(|t| (now - t).max(0.0));
    let (rate_per_s, rate_source, eta_s, ranks) = rate(
        running,
        progress_fresh,
        progress.as_ref(),
        &contents.records,
        pending,
    );

    let state = if running {
        State::Running
    } else {
        match pending {
            None => State::Unknown,
            Some(p) if p > 0 => State::Incomplete,
            Some(_) if failed > 0 => State::Failed,
            Some(_) if !outputs_changed.is_empty() => State::OutputsChanged,
            Some(_) => State::Complete,
        }
    };

    let own_report = report.filter(|r| r.stage == stage);
    let last_exit_code = own_report
        .filter(|r| Some(r.invocation) == invocation)
        .and_then(|r| r.exit_code);
    // An interrupted run's report carries the command that resumes it; a finished one's the
    // command that retries its failures.
    let reported = own_report.and_then(|r| r.retry_command.clone());
    let resume_command = reported.as_ref().map(|c| c.replace(" --retry-failed", ""));
    let retry_command = reported.map(|c| {
        if c.contains("--retry-failed") {
            c
        } else {
            format!("{c} --retry-failed")
        }
    });

    StageStatus {
        stage: stage.to_string(),
        state,
        running,
        lock,
        invocation,
        planned,
        done,
        no_work,
        failed,
        failed_by_kind,
        pending,
        ranks,
        rate_per_s,
        rate_source,
        eta_s,
        progress_age_s,
        last_record_age_s,
        last_exit_code,
        failures,
        resume_command,
        retry_command,
        slurm: slurm_info(run_dir, stage),
        last_run: report.and_then(|r| last_run(r, stage, invocation)),
        outputs_changed,
        warnings,
    }
}

/// Rate, its source, ETA and ranks: from a fresh progress file while the job runs, else
/// from the recording times of the latest invocation's records.
fn rate(
    running: bool,
    progress_fresh: bool,
    progress: Option<&Progress>,
    records: &[LedgerRecord],
    pending: Option<usize>,
) -> (Option<f64>, Option<RateSource>, Option<f64>, Option<u64>) {
    if running
        && progress_fresh
        && let Some(p) = progress
        && let Some(rate) = p.rate_per_s.filter(|r| r.is_finite() && *r > 0.0)
    {
        let age = (unix_now() - p.time).max(0.0);
        let eta = p
            .eta_s
            .map(|e| (e - age).max(0.0))
            .or_else(|| pending.map(|n| n as f64 / rate));
        return (Some(rate), Some(RateSource::Progress), eta, p.ranks);
    }
    let latest_invocation = records.iter().map(|r| r.invocation).max();
    let mut times: Vec<f64> = records
        .iter()
        .filter(|r| Some(r.invocation) == latest_invocation)
        .map(|r| r.time)
        .collect();
    if times.len() > RATE_WINDOW {
        times.drain(..times.len() - RATE_WINDOW);
    }
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = last - first;
    if times.len() < 2 || !(span.is_finite() && span > 0.0) {
        return (None, None, None, None);
    }
    let rate = (times.len() - 1) as f64 / span;
    let eta = if running {
        pending.map(|n| n as f64 / rate)
    } else {
        None
    };
    (Some(rate), Some(RateSource::Ledger), eta, None)
}

fn slurm_info(run_dir: &Path, stage: &str) -> Option<SlurmInfo> {
    let script = run_dir.join("slurm").join(format!("{stage}.sbatch"));
    let script = script.is_file().then(|| absolute(&script));
    let attempts = std::fs::read_to_string(run_dir.join("logs").join(format!("{stage}.attempts")))
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(parse_attempt)
        });
    if script.is_none() && attempts.is_none() {
        return None;
    }
    Some(SlurmInfo {
        submit_command: script
            .as_ref()
            .map(|s| format!("sbatch {}", crate::shell_quote(&s.to_string_lossy()))),
        script,
        last_attempt: attempts,
    })
}

/// Parses one attempts-log line: a timestamp, then tab-separated `key=value` fields.
fn parse_attempt(line: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (i, field) in line.split('\t').enumerate() {
        match field.split_once('=') {
            Some((k, v)) => {
                map.insert(k.to_string(), v.to_string());
            }
            None if i == 0 => {
                map.insert("time".to_string(), field.to_string());
            }
            None => {}
        }
    }
    map
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Compares unit IDs with digit runs as numbers, so `task=9` sorts before `task=10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|c| **c == b'0').count();
    &digits[zeros..]
}

/// Seconds as `42 s`, `3 min 20 s` or `2 h 05 min`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "unknown".to_string();
    }
    let s = seconds.max(0.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

impl RunStatus {
    /// The `--json` output: this status as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("status serialises")
    }

    /// The human-readable report, listing at most `max_failures` failures per stage.
    pub fn text(&self, max_failures: usize) -> String {
        let mut out = format!("run directory {}\n", self.run_dir.display());
        if let Some(c) = &self.chain {
            let _ = write!(
                out,
                "latest job: chain run (skypipe-run), invocation {}, {} ranks, makespan {:.2} s",
                c.invocation, c.ranks, c.makespan_s
            );
            if let Some(u) = c.utilisation {
                let _ = write!(out, ", utilisation {:.1}%", 100.0 * u);
            }
            if let Some(code) = c.exit_code {
                let _ = write!(out, ", exit code {code}");
            }
            out.push('\n');
        }
        for s in &self.stages {
            s.write_text(&mut out, max_failures);
        }
        out
    }
}

impl StageStatus {
    fn write_text(&self, out: &mut String, max_failures: usize) {
        let state = match self.state {
            State::Running => match &self.ranks {
                Some(r) => format!("running on {r} ranks (ledger lock {})", self.lock),
                None => format!("running (ledger lock {})", self.lock),
            },
            State::Complete => "complete".to_string(),
            State::Failed => format!("finished, {} failed", self.failed),
            State::Incomplete => {
                "stopped before the end (interrupted or killed), not running now".to_string()
            }
            State::Unknown => "unknown (no manifest: planned units unknown)".to_string(),
            State::OutputsChanged => format!(
                "not complete: {} units recorded done have outputs missing or changed (a resume makes them again)",
                self.outputs_changed.len()
            ),
        };
        let _ = write!(out, "{}: {state}", self.stage);
        if let Some(i) = self.invocation {
            let _ = write!(out, "; invocation {i}");
        }
        if let Some(code) = self.last_exit_code {
            let _ = write!(out, ", exit code {code}");
        }
        out.push('\n');
        let planned = self
            .planned
            .map_or("? planned".to_string(), |p| format!("{p} planned"));
        let pending = self.pending.map_or("?".to_string(), |p| p.to_string());
        let _ = writeln!(
            out,
            "  units: {planned}: {} done, {} no-work, {} failed, {pending} pending",
            self.done, self.no_work, self.failed
        );
        if !self.failed_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .failed_by_kind
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            let _ = writeln!(out, "  failed by kind: {}", kinds.join(", "));
        }
        match (self.rate_per_s, self.rate_source) {
            (Some(rate), Some(source)) => {
                let source = match source {
                    RateSource::Progress => format!(
                        "progress file, {} old",
                        human_duration(self.progress_age_s.unwrap_or(0.0))
                    ),
                    RateSource::Ledger => "ledger record times, latest invocation".to_string(),
                };
                let eta = match self.eta_s {
                    Some(e) => format!("; ETA {}", human_duration(e)),
                    None if self.running => "; ETA unknown".to_string(),
                    None => String::new(),
                };
                let _ = writeln!(out, "  rate: {rate:.2} units/s ({source}){eta}");
            }
            _ => {
                let _ = writeln!(out, "  rate: unknown (too few records yet)");
            }
        }
        if let Some(age) = self.last_record_age_s {
            let _ = writeln!(out, "  last record: {} ago", human_duration(age));
        }
        if let Some(run) = &self.last_run {
            let wall = run.wall_s.map_or("?".to_string(), |w| format!("{w:.2} s"));
            if run.in_chain {
                let _ = writeln!(
                    out,
                    "  in the latest chain run ({} ranks): {} units, first start to last end {wall}, {:.2} rank-s busy",
                    run.ranks, run.ran, run.busy_s
                );
            } else {
                let util = run.utilisation.map_or(String::new(), |u| {
                    format!(", utilisation {:.1}%", 100.0 * u)
                });
                let _ = writeln!(
                    out,
                    "  latest job: {} units on {} ranks, makespan {wall}{util}",
                    run.ran, run.ranks
                );
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "  failures (latest record per unit):");
            for f in self.failures.iter().take(max_failures) {
                let _ = writeln!(
                    out,
                    "    {} [{}] {}",
                    f.unit,
                    f.kind,
                    f.message.as_deref().unwrap_or("(no message)")
                );
            }
            if self.failures.len() > max_failures {
                let _ = writeln!(
                    out,
                    "    ... and {} more (skypipe-status --json lists all)",
                    self.failures.len() - max_failures
                );
            }
        }
        let pending = self.pending.unwrap_or(0);
        if !self.running {
            match (&self.resume_command, &self.retry_command) {
                (Some(resume), Some(retry)) => {
                    if pending > 0 {
                        let _ = writeln!(out, "  resume: {resume}");
                    }
                    if self.failed > 0 {
                        let _ = writeln!(out, "  retry the failed units: {retry}");
                    }
                }
                _ if pending > 0 || self.failed > 0 => {
                    let _ = writeln!(
                        out,
                        "  resume: rerun the command that started {} on this run directory, with the same --config{}",
                        self.stage,
                        if self.failed > 0 {
                            " (add --retry-failed to retry the failed units)"
                        } else {
                            ""
                        }
                    );
                }
                _ => {}
            }
        }
        if let Some(slurm) = &self.slurm {
            if let Some(cmd) = &slurm.submit_command
                && !self.running
                && (pending > 0 || self.failed > 0)
            {
                let _ = writeln!(out, "  under Slurm: {cmd}");
            }
            if let Some(a) = &slurm.last_attempt {
                let fields: Vec<String> = [
                    "job", "attempt", "event", "exit", "reason", "action", "next_job",
                ]
                .iter()
                .filter_map(|k| a.get(*k).map(|v| format!("{k}={v}")))
                .collect();
                let when = a.get("time").map_or(String::new(), |t| format!(" at {t}"));
                let _ = writeln!(out, "  last Slurm event{when}: {}", fields.join(" "));
            }
        }
        for c in self.outputs_changed.iter().take(max_failures) {
            let _ = writeln!(out, "  output changed: {c}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn line(
        unit: &str,
        outcome: &str,
        invocation: u32,
        time: f64,
        message: Option<&str>,
    ) -> String {
        let mut v = serde_json::json!({
            "unit": unit, "outcome": outcome, "attempts": 1, "rank": 0, "elapsed_s": 0.1,
            "invocation": invocation, "time": time,
        });
        if let Some(m) = message {
            v["message"] = m.into();
        }
        format!("{v}\n")
    }

    fn write_run(dir: &Path, records: &str, planned: usize, invocations: u32) {
        let ledger = dir.join("ledger");
        fs::create_dir_all(&ledger).unwrap();
        fs::write(ledger.join("demo.jsonl"), records).unwrap();
        fs::write(
            ledger.join("demo.manifest.json"),
            serde_json::json!({
                "format": "skypipe-ledger/1", "stage": "demo", "config_fingerprint": "x",
                "invocations": invocations, "planned_units": planned, "started": 100.0,
            })
            .to_string(),
        )
        .unwrap();
    }

    #[test]
    fn counts_use_the_latest_record_per_unit() {
        let dir = tempfile::tempdir().unwrap();
        let mut records = String::new();
        records += &line("a=1", "bad-input", 1, 10.0, Some("a=1: broken"));
        records += &line("a=2", "done", 1, 11.0, None);
        records += &line("a=3", "transient", 1, 12.0, Some("a=3: flaky"));
        records += &line("a=10", "no-work", 1, 12.5, Some("nothing"));
        records += &line("a=1", "done", 2, 20.0, None);
        records += &line("a=4", "out-of-memory", 2, 21.0, Some("a=4: too big"));
        write_run(dir.path(), &records, 6, 2);
        let status = run_status(dir.path()).unwrap();
        let s = &status.stages[0];
        assert_eq!(s.stage, "demo");
        assert_eq!((s.done, s.no_work, s.failed), (2, 1, 2));
        assert_eq!(s.pending, Some(1));
        assert_eq!(s.state, State::Incomplete);
        assert!(!s.running);
        assert_eq!(s.lock, "absent");
        let kinds: Vec<(&str, usize)> = s
            .failed_by_kind
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        assert_eq!(kinds, vec![("out-of-memory", 1), ("transient", 1)]);
        let units: Vec<&str> = s.failures.iter().map(|f| f.unit.as_str()).collect();
        assert_eq!(units, vec!["a=3", "a=4"]);
        assert_eq!(s.failures[1].message.as_deref(), Some("a=4: too big"));
        // Two records of invocation 2, one second apart.
        assert_eq!(s.rate_source, Some(RateSource::Ledger));
        assert_eq!(s.rate_per_s, Some(1.0));
        assert_eq!(s.eta_s, None, "no ETA when nothing runs");
        let text = status.text(10);
        assert!(
            text.contains("6 planned: 2 done, 1 no-work, 2 failed, 1 pending"),
            "{text}"
        );
        assert!(text.contains("a=4 [out-of-memory] a=4: too big"), "{text}");
    }

    #[test]
    fn report_commands_and_exit_code_apply_to_their_own_stage_only() {
        let dir = tempfile::tempdir().unwrap();
        write_run(
            dir.path(),
            &(line("a=1", "bad-input", 1, 1.0, Some("bad")) + &line("a=2", "done", 1, 2.0, None)),
            2,
            1,
        );
        let report = serde_json::json!({
            "format": "skypipe-run-report/1", "stage": "demo", "invocation": 1, "exit_code": 2,
            "interrupted": false, "ranks": 2, "makespan_s": 1.0, "ran": 2,
            "retry_command": "skypipe-demo --config c.toml --run-dir r --retry-failed",
        });
        fs::write(dir.path().join("run-report.json"), report.to_string()).unwrap();
        let s = &run_status(dir.path()).unwrap().stages[0];
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.last_exit_code, Some(2));
        assert_eq!(
            s.resume_command.as_deref(),
            Some("skypipe-demo --config c.toml --run-dir r")
        );
        assert!(
            s.retry_command
                .as_deref()
                .unwrap()
                .ends_with("--retry-failed")
        );

        let mut other = report.clone();
        other["stage"] = "other".into();
        fs::write(dir.path().join("run-report.json"), other.to_string()).unwrap();
        let s = &run_status(dir.path()).unwrap().stages[0];
        assert_eq!(s.last_exit_code, None);
        assert_eq!(s.retry_command, None);
        let text = run_status(dir.path()).unwrap().text(10);
        assert!(
            text.contains("rerun the command that started demo"),
            "{text}"
        );
    }

    #[test]
    fn the_latest_job_is_summarised_for_a_stage_alone_and_in_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        write_run(dir.path(), &line("a=1", "done", 2, 1.0, None), 1, 2);
        let part = serde_json::json!({
            "stage": "demo", "ran": 1, "outcomes": {"done": 1}, "busy_s": 3.0,
            "first_start": 10.0, "last_end": 14.5,
        });
        let alone = serde_json::json!({
            "format": "skypipe-run-report/1", "stage": "demo", "invocation": 2, "exit_code": 0,
            "ranks": 4, "makespan_s": 5.0, "ran": 1, "utilisation": 0.75, "stages": [part],
        });
        fs::write(dir.path().join("run-report.json"), alone.to_string()).unwrap();
        let status = run_status(dir.path()).unwrap();
        assert!(status.chain.is_none());
        let run = status.stages[0].last_run.as_ref().unwrap();
        assert!(!run.in_chain);
        assert_eq!((run.ranks, run.ran, run.wall_s), (4, 1, Some(5.0)));
        assert_eq!(run.utilisation, Some(0.75));
        let text = status.text(10);
        assert!(
            text.contains("latest job: 1 units on 4 ranks, makespan 5.00 s, utilisation 75.0%"),
            "{text}"
        );

        // A report of an earlier invocation of the stage says nothing of the latest job.
        let mut stale = alone.clone();
        stale["invocation"] = 1.into();
        fs::write(dir.path().join("run-report.json"), stale.to_string()).unwrap();
        assert!(run_status(dir.path()).unwrap().stages[0].last_run.is_none());

        let mut chain = alone.clone();
        chain["stage"] = "chain".into();
        chain["invocation"] = 7.into();
        fs::write(dir.path().join("run-report.json"), chain.to_string()).unwrap();
        let status = run_status(dir.path()).unwrap();
        let c = status.chain.as_ref().unwrap();
        assert_eq!((c.invocation, c.ranks, c.exit_code), (7, 4, Some(0)));
        let run = status.stages[0].last_run.as_ref().unwrap();
        assert!(run.in_chain);
        assert_eq!(
            (run.wall_s, run.busy_s, run.utilisation),
            (Some(4.5), 3.0, None)
        );
        let text = status.text(10);
        assert!(
            text.contains(
                "chain run (skypipe-run), invocation 7, 4 ranks, makespan 5.00 s, utilisation 75.0%"
            ),
            "{text}"
        );
        assert!(
            text.contains("in the latest chain run (4 ranks): 1 units, first start to last end 4.50 s, 3.00 rank-s busy"),
            "{text}"
        );
    }

    #[test]
    fn a_held_lock_and_fresh_progress_mean_running_with_the_progress_rate() {
        let dir = tempfile::tempdir().unwrap();
        write_run(dir.path(), &line("a=1", "done", 3, 1.0, None), 10, 3);
        let ledger = dir.path().join("ledger");
        let lock = fs::File::create(ledger.join("demo.lock")).unwrap();
        lock.try_lock().unwrap();
        let progress = serde_json::json!({
            "stage": "demo", "invocation": 3, "time": unix_now(), "to_run": 10, "ended": 1,
            "rate_per_s": 2.5, "eta_s": 3.6, "ranks": 4, "pid": 1,
        });
        fs::write(ledger.join("demo.progress.json"), progress.to_string()).unwrap();
        let s = &run_status(dir.path()).unwrap().stages[0];
        assert!(s.running);
        assert_eq!(s.state, State::Running);
        assert_eq!(s.rate_source, Some(RateSource::Progress));
        assert_eq!(s.rate_per_s, Some(2.5));
        assert_eq!(s.ranks, Some(4));
        assert!(s.eta_s.unwrap() <= 3.6);
        assert_eq!(s.pending, Some(9));

        // A stale progress file (an older invocation) is not used.
        let mut stale = progress.clone();
        stale["invocation"] = 2.into();
        fs::write(ledger.join("demo.progress.json"), stale.to_string()).unwrap();
        let s = &run_status(dir.path()).unwrap().stages[0];
        assert!(s.running);
        assert_eq!(s.rate_source, None);
        drop(lock);
        let s = &run_status(dir.path()).unwrap().stages[0];
        assert!(!s.running);
        assert_eq!(s.lock, "free");
    }

    #[test]
    fn slurm_attempts_log_is_summarised() {
        let dir = tempfile::tempdir().unwrap();
        write_run(dir.path(), &line("a=1", "done", 1, 1.0, None), 2, 1);
        fs::create_dir_all(dir.path().join("slurm")).unwrap();
        fs::write(dir.path().join("slurm/demo.sbatch"), "#!/bin/bash\n").unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        fs::write(
            dir.path().join("logs/demo.attempts"),
            "2026-01-01T00:00:00Z\tjob=12\tattempt=1\tevent=end\texit=3\treason=time-limit\taction=resubmitted\tnext_job=13\n",
        )
        .unwrap();
        let s = &run_status(dir.path()).unwrap().stages[0];
        let slurm = s.slurm.as_ref().unwrap();
        assert!(
            slurm
                .submit_command
                .as_deref()
                .unwrap()
                .starts_with("sbatch /")
        );
        let a = slurm.last_attempt.as_ref().unwrap();
        assert_eq!(a["next_job"], "13");
        assert_eq!(a["time"], "2026-01-01T00:00:00Z");
        let text = run_status(dir.path()).unwrap().text(5);
        assert!(
            text.contains("reason=time-limit action=resubmitted next_job=13"),
            "{text}"
        );
    }

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut ids = vec!["task=10", "task=9", "task=100", "task=09b", "a=1,b=2"];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            ids,
            vec!["a=1,b=2", "task=9", "task=09b", "task=10", "task=100"]
        );
        assert_eq!(human_duration(59.6), "1 min 00 s");
        assert_eq!(human_duration(3725.0), "1 h 02 min");
        assert_eq!(human_duration(f64::INFINITY), "unknown");
    }
}
