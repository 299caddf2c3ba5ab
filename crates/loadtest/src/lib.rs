//! The engine load test: each task of a workload file sleeps its duration.
//!
//! Workload files (`skypipe-engine-workload/1`) hold `durations_s` (one per task, in
//! submission order) and `group` (the subset each task belongs to); other keys are ignored.
//! The stage can write one small output per task and inject failures (errors, panics,
//! transient errors) so the engine's isolation, retry and resume paths can be exercised.

mod workload;

pub use workload::{WORKLOAD_FORMAT, Workload, WorkloadError};

use serde::{Deserialize, Serialize};
use skypipe_engine::{RunOptions, RunSummary};
use skypipe_io::{Durability, write_atomic};
use skypipe_stage::{
    Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, UnitId, WorkUnit,
    fingerprint_of,
};
use std::path::PathBuf;
use std::time::Duration;

/// The whole `skypipe-loadtest` configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadtestFile {
    /// Engine options.
    #[serde(default)]
    pub run: RunOptions,
    /// Load-test options.
    #[serde(default)]
    pub loadtest: LoadtestConfig,
}

/// The `[loadtest]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadtestConfig {
    /// Workload file. Default `workloads/skewed.json`.
    pub workload: PathBuf,
    /// Give the engine each task's duration as its cost hint. Default false.
    pub hints: bool,
    /// Multiplies every duration (e.g. 0.1 for a quick run). Default 1.
    pub time_scale: f64,
    /// Write `RUN_DIR/loadtest/task=N.out` for every task. Default false.
    pub write_outputs: bool,
    /// Failures to inject.
    pub inject: Injection,
}

impl Default for LoadtestConfig {
    fn default() -> Self {
        Self {
            workload: PathBuf::from("workloads/skewed.json"),
            hints: false,
            time_scale: 1.0,
            write_outputs: false,
            inject: Injection::default(),
        }
    }
}

/// The `[loadtest.inject]` table: unit IDs (`task=N`) that fail on purpose.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Injection {
    /// Tasks that return a bad-input error.
    pub error: Vec<String>,
    /// Tasks that panic.
    pub panic: Vec<String>,
    /// Tasks that fail with a transient error on their first `transient_attempts` attempts.
    pub transient: Vec<String>,
    /// How many attempts of each `transient` task fail. Default 0 (then 1 is used if the
    /// list is not empty).
    pub transient_attempts: u32,
}

/// One task of the workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// Index in the workload.
    pub index: u32,
    /// The task's group.
    pub group: i64,
    /// Seconds to sleep.
    pub duration_s: f64,
}

impl WorkUnit for Task {
    fn id(&self) -> UnitId {
        UnitId::new().with("task", self.index)
    }
}

/// The load-test stage.
#[derive(Debug, Clone)]
pub struct Loadtest {
    config: LoadtestConfig,
}

impl Loadtest {
    /// A load test with this configuration; checks it (exit code 1 territory on error).
    pub fn new(config: LoadtestConfig) -> Result<Self, String> {
        if !(config.time_scale.is_finite() && config.time_scale >= 0.0) {
            return Err(format!(
                "loadtest.time_scale must be a non-negative number, got {}",
                config.time_scale
            ));
        }
        let inject = &config.inject;
        for id in inject
            .error
            .iter()
            .chain(&inject.panic)
            .chain(&inject.transient)
        {
            id.parse::<UnitId>()
                .map_err(|e| format!("loadtest.inject: {e}"))?;
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &LoadtestConfig {
        &self.config
    }

    fn output_path(&self, ctx: &UnitContext, task: &Task) -> PathBuf {
        ctx.run_dir
            .join("loadtest")
            .join(format!("{}.out", task.id()))
    }
}

impl Stage for Loadtest {
    type Unit = Task;

    fn name(&self) -> &'static str {
        "loadtest"
    }

    fn config_fingerprint(&self) -> String {
        let content = std::fs::read(&self.config.workload).unwrap_or_default();
        fingerprint_of(&(
            &self.config.time_scale,
            &self.config.write_outputs,
            &self.config.inject,
            fingerprint_of(&content),
        ))
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<Task>>, PlanError> {
        let workload =
            Workload::load(&self.config.workload).map_err(|e| PlanError::from_error(&e))?;
        Ok(workload
            .tasks()
            .into_iter()
            .map(|task| {
                if self.config.hints {
                    let cost = task.duration_s;
                    PlannedUnit::with_cost(task, cost)
                } else {
                    PlannedUnit::new(task)
                }
            })
            .collect())
    }

    fn run(&self, task: &Task, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let seconds = task.duration_s * self.config.time_scale;
        if seconds > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
        let id = task.id();
        let inject = &self.config.inject;
        let listed = |list: &[String]| list.iter().any(|s| s == id.as_str());
        if listed(&inject.transient) && ctx.attempt <= inject.transient_attempts.max(1) {
            return Err(UnitFailure::transient(format!(
                "{id}: injected transient failure (attempt {})",
                ctx.attempt
            )));
        }
        if listed(&inject.error) {
            return Err(UnitFailure::bad_input(format!(
                "{id}: injected bad-input error"
            )));
        }
        if listed(&inject.panic) {
            panic!("{id}: injected panic");
        }
        if self.config.write_outputs {
            let text = format!(
                "{id}\tgroup={}\tduration_s={}\n",
                task.group, task.duration_s
            );
            let durability = if ctx.durable {
                Durability::Synced
            } else {
                Durability::ProcessCrashOnly
            };
            write_atomic(self.output_path(ctx, task), text.as_bytes(), durability)
                .map_err(UnitFailure::transient)?;
        }
        Ok(Outcome::Done)
    }
}

/// The load-test figures for a finished run, as `(name, value)` pairs, defined as in the
/// benchmark README: makespan from first dispatch to last result, tasks/s = tasks run /
/// makespan, efficiency = sum of the durations run / (W × makespan), ideal = max(sum / W,
/// longest).
pub fn metrics(
    summary: &RunSummary,
    tasks: &[Task],
    time_scale: f64,
) -> Vec<(&'static str, String)> {
    let ran: std::collections::HashSet<&str> =
        summary.units.iter().map(|u| u.unit.as_str()).collect();
    let durations: Vec<f64> = tasks
        .iter()
        .filter(|t| ran.contains(t.id().as_str()))
        .map(|t| t.duration_s * time_scale)
        .collect();
    let total: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    let w = summary.ranks as f64;
    let makespan = summary.makespan_s;
    let efficiency = if total > 0.0 && makespan > 0.0 {
        format!("{:.4}", total / (w * makespan))
    } else {
        "n/a".to_string()
    };
    let rate = if makespan > 0.0 {
        format!("{:.1}", durations.len() as f64 / makespan)
    } else {
        "n/a".to_string()
    };
    vec![
        ("workers", summary.ranks.to_string()),
        ("tasks", durations.len().to_string()),
        ("startup_s", format!("{:.4}", summary.startup_s)),
        ("makespan_s", format!("{makespan:.6}")),
        ("tasks_per_s", rate),
        ("efficiency", efficiency),
        (
            "ideal_makespan_s",
            format!("{:.6}", (total / w).max(longest)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &std::path::Path, attempt: u32) -> UnitContext {
        UnitContext {
            attempt,
            run_dir: dir.to_path_buf(),
            rank: 0,
            durable: false,
        }
    }

    fn task(i: u32) -> Task {
        Task {
            index: i,
            group: 0,
            duration_s: 0.0,
        }
    }

    #[test]
    fn injected_failures_have_the_right_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let config = LoadtestConfig {
            write_outputs: true,
            inject: Injection {
                error: vec!["task=1".into()],
                transient: vec!["task=2".into()],
                transient_attempts: 2,
                ..Injection::default()
            },
            ..LoadtestConfig::default()
        };
        let stage = Loadtest::new(config).unwrap();
        assert_eq!(stage.run(&task(0), &ctx(dir.path(), 1)), Ok(Outcome::Done));
        let out = std::fs::read_to_string(dir.path().join("loadtest/task=0.out")).unwrap();
        assert_eq!(out, "task=0\tgroup=0\tduration_s=0\n");
        let e = stage.run(&task(1), &ctx(dir.path(), 1)).unwrap_err();
        assert_eq!(e.kind, skypipe_stage::FailureKind::BadInput);
        for attempt in 1..=2 {
            let e = stage.run(&task(2), &ctx(dir.path(), attempt)).unwrap_err();
            assert_eq!(e.kind, skypipe_stage::FailureKind::Transient);
        }
        assert_eq!(stage.run(&task(2), &ctx(dir.path(), 3)), Ok(Outcome::Done));
    }

    #[test]
    fn bad_configuration_names_the_key() {
        let config = LoadtestConfig {
            time_scale: -1.0,
            ..LoadtestConfig::default()
        };
        assert!(
            Loadtest::new(config)
                .unwrap_err()
                .contains("loadtest.time_scale")
        );
        let config = LoadtestConfig {
            inject: Injection {
                panic: vec!["task 3".into()],
                ..Injection::default()
            },
            ..LoadtestConfig::default()
        };
        assert!(
            Loadtest::new(config)
                .unwrap_err()
                .contains("loadtest.inject")
        );
        let err = toml::from_str::<LoadtestFile>("[loadtest]\nworkloud = \"x\"\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `workloud`"),
            "{err}"
        );
    }
}
