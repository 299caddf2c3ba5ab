//! The end-of-run summary, `run-report.json` and the exit code.

use crate::ledger::LedgerRecord;
use crate::options::Schedule;
use crate::protocol::RankStats;
use serde::Serialize;
use skypipe_stage::OutcomeKind;
use std::collections::BTreeMap;

/// Exit code: every unit done or no-work.
pub const EXIT_OK: u8 = 0;
/// Exit code: could not start (bad configuration, missing input list, MPI failure).
pub const EXIT_CANNOT_START: u8 = 1;
/// Exit code: finished, some units failed.
pub const EXIT_UNITS_FAILED: u8 = 2;
/// Exit code: interrupted by SIGTERM/SIGINT; the ledger is consistent, rerun to resume.
pub const EXIT_INTERRUPTED: u8 = 3;

/// How many of the slowest units the report lists.
const SLOWEST: usize = 10;

/// One unit's final state in this invocation.
#[derive(Debug, Clone, Serialize)]
pub struct UnitResult {
    /// Unit ID.
    pub unit: String,
    /// Outcome kind.
    pub outcome: OutcomeKind,
    /// Attempts made.
    pub attempts: u32,
    /// Rank of the last attempt.
    pub rank: usize,
    /// Seconds of the last attempt.
    pub elapsed_s: f64,
    /// No-work reason or failure message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Memory limit of each attempt, MiB, when the unit ran isolated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_limits_mb: Vec<u64>,
    /// Unix time the last attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<f64>,
    /// Index of the unit's stage instance in the run.
    #[serde(skip)]
    pub instance: usize,
}

impl From<&LedgerRecord> for UnitResult {
    fn from(r: &LedgerRecord) -> Self {
        Self {
            unit: r.unit.clone(),
            outcome: r.outcome,
            attempts: r.attempts,
            rank: r.rank,
            elapsed_s: r.elapsed_s,
            message: r.message.clone(),
            memory_limits_mb: r.memory_limits_mb.clone(),
            started: r.started,
            instance: 0,
        }
    }
}

/// Everything rank 0 knows at the end of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Stage name (`chain` for a chain run).
    pub stage: String,
    /// The stage instances the run ran, in order (one for a stage binary).
    pub stages: Vec<String>,
    /// Ranks that ran units (the world size).
    pub ranks: usize,
    /// Schedule used.
    pub schedule: Schedule,
    /// Invocation number on this run directory.
    pub invocation: u32,
    /// Units in the plan.
    pub planned: usize,
    /// Units skipped because an earlier invocation recorded them done or no-work.
    pub skipped_done: usize,
    /// Units recorded done whose recorded outputs were gone or changed size, run again.
    pub outputs_changed: usize,
    /// Units recorded done that read a file of a unit run again, run again themselves.
    pub inputs_remade: usize,
    /// Units skipped because they failed earlier and `--retry-failed` was not given.
    pub skipped_failed: Vec<UnitResult>,
    /// Units that ended in this invocation.
    pub units: Vec<UnitResult>,
    /// Failed attempts that were retried.
    pub retries: usize,
    /// Units left pending because the run was interrupted.
    pub not_run: usize,
    /// Follow mode: unit lists rejected, with reasons.
    pub rejected_lists: Vec<String>,
    /// Whether SIGTERM/SIGINT stopped the run.
    pub interrupted: bool,
    /// Seconds from process start to the first dispatch.
    pub startup_s: f64,
    /// Seconds from the first dispatch to the last result.
    pub makespan_s: f64,
    /// Busy time per rank.
    pub rank_stats: Vec<RankStats>,
    /// The command that resumes this run and retries its failures.
    pub retry_command: String,
    /// The command as given, which resumes an interrupted run.
    pub resume_command: String,
}

impl RunSummary {
    /// Units failed in this invocation, and earlier failures not retried.
    pub fn failures(&self) -> impl Iterator<Item = &UnitResult> {
        self.units
            .iter()
            .filter(|u| !u.outcome.is_success())
            .chain(self.skipped_failed.iter())
    }

    /// The exit code from the project conventions.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            EXIT_INTERRUPTED
        } else if self.failures().next().is_some() {
            EXIT_UNITS_FAILED
        } else {
            EXIT_OK
        }
    }

    /// Counts of this invocation's units by outcome kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for u in &self.units {
            *counts.entry(u.outcome.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// The report written to `run-report.json`.
    pub fn report(&self) -> RunReport<'_> {
        let makespan = self.makespan_s.max(f64::MIN_POSITIVE);
        let ranks = self
            .rank_stats
            .iter()
            .map(|s| RankUsage {
                rank: s.rank,
                busy_s: s.busy_s,
                units: s.units,
                utilisation: (s.busy_s / makespan).clamp(0.0, 1.0),
            })
            .collect::<Vec<_>>();
        let busy: f64 = self.rank_stats.iter().map(|s| s.busy_s).sum();
        let mut slowest: Vec<&UnitResult> = self.units.iter().collect();
        slowest.sort_by(|a, b| b.elapsed_s.total_cmp(&a.elapsed_s));
        slowest.truncate(SLOWEST);
        RunReport {
            format: "skypipe-run-report/1",
            stage: &self.stage,
            invocation: self.invocation,
            exit_code: self.exit_code(),
            interrupted: self.interrupted,
            ranks: self.ranks,
            schedule: self.schedule,
            startup_s: self.startup_s,
            makespan_s: self.makespan_s,
            utilisation: (busy / (makespan * self.ranks.max(1) as f64)).clamp(0.0, 1.0),
            planned: self.planned,
            skipped_done: self.skipped_done,
            outputs_changed: self.outputs_changed,
            inputs_remade: self.inputs_remade,
            ran: self.units.len(),
            not_run: self.not_run,
            retries: self.retries,
            rejected_lists: &self.rejected_lists,
            outcomes: self.counts(),
            per_rank: ranks,
            slowest,
            failures: self.failures().collect(),
            retry_command: if self.interrupted {
                &self.resume_command
            } else {
                &self.retry_command
            },
            stages: self.stage_reports(),
        }
    }

    /// Each stage instance's part of this invocation.
    pub fn stage_reports(&self) -> Vec<StageReport> {
        self.stages
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let mut part = StageReport {
                    stage: name.clone(),
                    ran: 0,
                    outcomes: BTreeMap::new(),
                    busy_s: 0.0,
                    first_start: None,
                    last_end: None,
                };
                for u in self.units.iter().filter(|u| u.instance == k) {
                    part.ran += 1;
                    *part.outcomes.entry(u.outcome.as_str()).or_insert(0) += 1;
                    part.busy_s += u.elapsed_s;
                    if let Some(start) = u.started {
                        let end = start + u.elapsed_s;
                        part.first_start = Some(part.first_start.map_or(start, |f| f.min(start)));
                        part.last_end = Some(part.last_end.map_or(end, |l| l.max(end)));
                    }
                }
                part
            })
            .collect()
    }

    /// The human summary printed at the end of a run.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let counts = self
            .counts()
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let report = self.report();
        out.push_str(&format!(
            "{}: {} planned, {} already done, {} ran ({}), {} retried attempts, {} not run; makespan {:.3} s on {} ranks, utilisation {:.1}%\n",
            self.stage,
            self.planned,
            self.skipped_done,
            self.units.len(),
            if counts.is_empty() { "none".to_string() } else { counts },
            self.retries,
            self.not_run,
            self.makespan_s,
            self.ranks,
            100.0 * report.utilisation,
        ));
        for reason in &self.rejected_lists {
            out.push_str(&format!("rejected unit list: {reason}\n"));
        }
        let failures: Vec<&UnitResult> = self.failures().collect();
        if !failures.is_empty() {
            out.push_str(&format!("{} failed units:\n", failures.len()));
            for f in failures.iter().take(50) {
                out.push_str(&format!(
                    "  {} [{}] {}\n",
                    f.unit,
                    f.outcome,
                    f.message.as_deref().unwrap_or("")
                ));
            }
            if failures.len() > 50 {
                out.push_str(&format!(
                    "  ... and {} more (see run-report.json)\n",
                    failures.len() - 50
                ));
            }
        }
        if self.interrupted {
            out.push_str(&format!(
                "interrupted: rerun the same command to resume: {}\n",
                self.resume_command
            ));
        } else if !failures.is_empty() {
            out.push_str(&format!(
                "to retry the failed units: {}\n",
                self.retry_command
            ));
        }
        out
    }
}

/// Per-rank busy time in the report.
#[derive(Debug, Serialize)]
pub struct RankUsage {
    /// Rank.
    pub rank: usize,
    /// Seconds inside units.
    pub busy_s: f64,
    /// Units attempted.
    pub units: u64,
    /// busy / makespan.
    pub utilisation: f64,
}

/// The JSON report of one invocation (`RUN_DIR/run-report.json`).
#[derive(Debug, Serialize)]
pub struct RunReport<'a> {
    /// Format tag.
    pub format: &'static str,
    /// Stage name.
    pub stage: &'a str,
    /// Invocation number on this run directory.
    pub invocation: u32,
    /// Exit code of the run.
    pub exit_code: u8,
    /// Whether the run was interrupted.
    pub interrupted: bool,
    /// Ranks running units.
    pub ranks: usize,
    /// Schedule used.
    pub schedule: Schedule,
    /// Seconds from start to first dispatch.
    pub startup_s: f64,
    /// Seconds from first dispatch to last result.
    pub makespan_s: f64,
    /// Sum of busy time over ranks × makespan.
    pub utilisation: f64,
    /// Units planned.
    pub planned: usize,
    /// Units done in earlier invocations.
    pub skipped_done: usize,
    /// Units recorded done earlier whose recorded outputs were gone or changed size (run again).
    pub outputs_changed: usize,
    /// Units recorded done earlier that read a file of a unit run again (run again).
    pub inputs_remade: usize,
    /// Units that ended in this invocation.
    pub ran: usize,
    /// Units left pending by an interruption.
    pub not_run: usize,
    /// Retried attempts.
    pub retries: usize,
    /// Unit lists rejected in follow mode, with reasons.
    pub rejected_lists: &'a [String],
    /// Counts by outcome.
    pub outcomes: BTreeMap<&'static str, usize>,
    /// Busy time per rank.
    pub per_rank: Vec<RankUsage>,
    /// Slowest units of this invocation.
    pub slowest: Vec<&'a UnitResult>,
    /// Every failed unit with its reason.
    pub failures: Vec<&'a UnitResult>,
    /// Command that resumes the run and retries failures (for an interrupted run, the command
    /// as given: it resumes).
    pub retry_command: &'a str,
    /// Per stage instance: what its units did in this invocation.
    pub stages: Vec<StageReport>,
}

/// One stage instance's part of a run (`run-report.json`'s `stages`, and
/// `ledger/<stage>.report.json` in a chain run).
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Instance name.
    pub stage: String,
    /// Units that ended in this invocation.
    pub ran: usize,
    /// Counts by outcome.
    pub outcomes: BTreeMap<&'static str, usize>,
    /// Seconds spent in its units (a multi-rank unit counts its wall time once).
    pub busy_s: f64,
    /// Unix time its first unit started, if any ran.
    pub first_start: Option<f64>,
    /// Unix time its last unit ended, if any ran.
    pub last_end: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, outcome: OutcomeKind, elapsed_s: f64) -> UnitResult {
        UnitResult {
            unit: name.into(),
            outcome,
            attempts: 1,
            rank: 0,
            elapsed_s,
            message: (!outcome.is_success()).then(|| "broken".to_string()),
            memory_limits_mb: vec![],
            started: None,
            instance: 0,
        }
    }

    fn summary(units: Vec<UnitResult>, interrupted: bool) -> RunSummary {
        RunSummary {
            stage: "demo".into(),
            stages: vec!["demo".into()],
            ranks: 2,
            schedule: Schedule::Dynamic,
            invocation: 1,
            planned: units.len(),
            skipped_done: 0,
            outputs_changed: 0,
            inputs_remade: 0,
            skipped_failed: vec![],
            units,
            retries: 0,
            not_run: 0,
            rejected_lists: vec![],
            interrupted,
            startup_s: 0.1,
            makespan_s: 2.0,
            rank_stats: vec![
                RankStats {
                    rank: 0,
                    busy_s: 2.0,
                    units: 1,
                },
                RankStats {
                    rank: 1,
                    busy_s: 1.0,
                    units: 1,
                },
            ],
            retry_command: "skypipe-demo --retry-failed".into(),
            resume_command: "skypipe-demo".into(),
        }
    }

    #[test]
    fn exit_codes_follow_the_conventions() {
        let ok = summary(
            vec![
                unit("a=1", OutcomeKind::Done, 1.0),
                unit("a=2", OutcomeKind::NoWork, 0.1),
            ],
            false,
        );
        assert_eq!(ok.exit_code(), EXIT_OK);
        let failed = summary(vec![unit("a=1", OutcomeKind::BadInput, 1.0)], false);
        assert_eq!(failed.exit_code(), EXIT_UNITS_FAILED);
        let stopped = summary(vec![unit("a=1", OutcomeKind::BadInput, 1.0)], true);
        assert_eq!(stopped.exit_code(), EXIT_INTERRUPTED);
        let mut earlier = summary(vec![], false);
        earlier
            .skipped_failed
            .push(unit("a=9", OutcomeKind::Transient, 0.0));
        assert_eq!(earlier.exit_code(), EXIT_UNITS_FAILED);
    }

    #[test]
    fn report_computes_utilisation_and_lists_failures_and_slowest() {
        let s = summary(
            vec![
                unit("a=1", OutcomeKind::Done, 0.5),
                unit("a=2", OutcomeKind::BadInput, 1.5),
            ],
            false,
        );
        let r = s.report();
        assert!((r.utilisation - 0.75).abs() < 1e-12);
        assert_eq!(r.per_rank[1].utilisation, 0.5);
        assert_eq!(r.slowest[0].unit, "a=2");
        assert_eq!(r.failures.len(), 1);
        let text = s.text();
        assert!(text.contains("a=2 [bad-input] broken"), "{text}");
        assert!(text.contains("--retry-failed"), "{text}");
        assert_eq!(r.retry_command, "skypipe-demo --retry-failed");
        // An interrupted run is resumed by the same command, in the report as on the console.
        let stopped = summary(vec![unit("a=2", OutcomeKind::BadInput, 1.5)], true);
        assert_eq!(stopped.report().retry_command, "skypipe-demo");
        assert!(
            stopped.text().contains("resume: skypipe-demo\n"),
            "{}",
            stopped.text()
        );
    }
}
