//! The engine load test: each task of a workload file sleeps its duration.
//!
//! Workload files (`skypipe-engine-workload/1`) hold `durations_s` (one per task, in
//! submission order) and `group` (the subset each task belongs to); other keys are ignored.
//! The stage can write one small output per task and inject failures (errors, panics,
//! transient errors, held units) so the engine's isolation, retry and resume paths can be
//! exercised. With `gather`, each group gets a unit that runs after the group's tasks and sums
//! their durations (a scatter/gather over that subset); with `follow_up`, every task gets a
//! second-phase unit that runs after its group's gather and uses its result
//! (scatter-gather-scatter); with `collective_ranks = k`, one unit runs on k ranks at once and
//! checks an all-reduce over exactly those ranks (with `collective_affinity_group = G`, after
//! group G's tasks and preferring the ranks that ran them).

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
    /// Add one gather unit per group (`group=G`), after the group's tasks. Default false.
    pub gather: bool,
    /// Add one second-phase unit per task (`task=N,phase=2`), after its group's gather.
    /// Needs `gather`. Default false.
    pub follow_up: bool,
    /// Add one unit (`collective=1`) that runs on this many ranks at once; 0 (default) for none.
    pub collective_ranks: usize,
    /// The collective unit runs after this group's tasks and prefers the ranks that ran them
    /// (rank affinity). Default none.
    pub collective_affinity_group: Option<i64>,
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
            gather: false,
            follow_up: false,
            collective_ranks: 0,
            collective_affinity_group: None,
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
    /// Units that, once started, create `HOLD_DIR/<id>.started` and wait until
    /// `HOLD_DIR/<id>.release` exists (tests use this to order events without timing).
    pub hold: Vec<String>,
    /// Directory of the hold files. Default `RUN_DIR/hold`.
    pub hold_dir: Option<PathBuf>,
    /// Units that allocate and touch `allocate_mb` MiB (to exercise memory limits).
    pub allocate: Vec<String>,
    /// MiB allocated by each `allocate` unit. Default 0.
    pub allocate_mb: u64,
}

/// One task of the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Index in the workload.
    pub index: u32,
    /// The task's group.
    pub group: i64,
    /// Seconds to sleep.
    pub duration_s: f64,
}

impl Task {
    fn id(&self) -> UnitId {
        UnitId::new().with("task", self.index)
    }
}

/// A unit of the load test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LoadUnit {
    /// A workload task (`task=N`): sleeps its duration.
    Task(Task),
    /// A group's gather (`group=G`): sums its tasks' durations.
    Gather {
        /// The group.
        group: i64,
    },
    /// A task's second phase (`task=N,phase=2`): uses its group's gathered sum.
    FollowUp(Task),
    /// A unit run on several ranks at once (`collective=1`).
    Collective {
        /// Ranks it runs on.
        ranks: usize,
    },
}

impl WorkUnit for LoadUnit {
    fn id(&self) -> UnitId {
        match self {
            LoadUnit::Task(t) => t.id(),
            LoadUnit::Gather { group } => UnitId::new().with("group", group),
            LoadUnit::FollowUp(t) => t.id().with("phase", 2),
            LoadUnit::Collective { .. } => UnitId::new().with("collective", 1),
        }
    }
}

/// What a task passes to its group's gather.
#[derive(Debug, Serialize, Deserialize)]
struct TaskValue {
    index: u32,
    duration_s: f64,
}

/// What a gather passes to its group's second phase.
#[derive(Debug, Serialize, Deserialize)]
struct GroupValue {
    group: i64,
    tasks: u32,
    sum_s: f64,
}

/// A `[loadtest]` table the stage refuses; each names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `time_scale` is negative or not a number.
    #[error("loadtest.time_scale must be a non-negative number, got {0}")]
    TimeScale(f64),
    /// A unit ID of `[loadtest.inject]` does not parse.
    #[error("loadtest.inject: {0}")]
    Inject(#[source] skypipe_stage::ParseUnitIdError),
}

/// The load-test stage.
#[derive(Debug, Clone)]
pub struct Loadtest {
    config: LoadtestConfig,
}

impl Loadtest {
    /// A load test with this configuration; checks it (exit code 1 territory on error).
    pub fn new(config: LoadtestConfig) -> Result<Self, ConfigError> {
        if !(config.time_scale.is_finite() && config.time_scale >= 0.0) {
            return Err(ConfigError::TimeScale(config.time_scale));
        }
        let inject = &config.inject;
        for id in inject
            .error
            .iter()
            .chain(&inject.panic)
            .chain(&inject.transient)
        {
            id.parse::<UnitId>().map_err(ConfigError::Inject)?;
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &LoadtestConfig {
        &self.config
    }

    fn write_output(&self, ctx: &UnitContext, id: &UnitId, text: &str) -> Result<(), UnitFailure> {
        if !self.config.write_outputs {
            return Ok(());
        }
        let path = ctx.run_dir.join("loadtest").join(format!("{id}.out"));
        let durability = if ctx.durable {
            Durability::Synced
        } else {
            Durability::ProcessCrashOnly
        };
        write_atomic(path, text.as_bytes(), durability)
            .map(|_| ())
            .map_err(UnitFailure::transient)
    }

    /// Applies the configured injections to unit `id`.
    fn inject(&self, id: &UnitId, ctx: &UnitContext) -> Result<(), UnitFailure> {
        let inject = &self.config.inject;
        let listed = |list: &[String]| list.iter().any(|s| s == id.as_str());
        if listed(&inject.hold) {
            let dir = inject
                .hold_dir
                .clone()
                .unwrap_or_else(|| ctx.run_dir.join("hold"));
            std::fs::create_dir_all(&dir).map_err(UnitFailure::transient)?;
            std::fs::write(dir.join(format!("{id}.started")), b"")
                .map_err(UnitFailure::transient)?;
            let release = dir.join(format!("{id}.release"));
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !release.exists() {
                if std::time::Instant::now() > deadline {
                    return Err(UnitFailure::bad_input(format!(
                        "{id}: held for 300 s and never released"
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if listed(&inject.allocate) {
            let block = vec![1_u8; (inject.allocate_mb as usize) << 20];
            std::hint::black_box(&block);
        }
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
        Ok(())
    }

    fn run_task(&self, task: &Task, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        if !(task.duration_s.is_finite() && task.duration_s >= 0.0) {
            return Err(UnitFailure::bad_input(format!(
                "{}: duration_s is {:e}; a duration must be a finite number ≥ 0",
                task.id(),
                task.duration_s
            )));
        }
        let seconds = task.duration_s * self.config.time_scale;
        if seconds > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
        let id = task.id();
        self.inject(&id, ctx)?;
        self.write_output(
            ctx,
            &id,
            &format!(
                "{id}\tgroup={}\tduration_s={}\n",
                task.group, task.duration_s
            ),
        )?;
        if self.config.gather {
            ctx.set_value(&TaskValue {
                index: task.index,
                duration_s: task.duration_s,
            });
        }
        Ok(Outcome::Done)
    }

    fn run_gather(&self, group: i64, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let id = UnitId::new().with("group", group);
        self.inject(&id, ctx)?;
        let mut values: Vec<(UnitId, TaskValue)> = ctx.input_values()?;
        values.sort_by_key(|(_, v)| v.index);
        let sum_s: f64 = values.iter().map(|(_, v)| v.duration_s).sum();
        let indices: Vec<String> = values.iter().map(|(_, v)| v.index.to_string()).collect();
        self.write_output(
            ctx,
            &id,
            &format!(
                "{id}\ttasks={}\tsum_s={sum_s}\tmembers={}\n",
                values.len(),
                indices.join(",")
            ),
        )?;
        ctx.set_value(&GroupValue {
            group,
            tasks: values.len() as u32,
            sum_s,
        });
        Ok(Outcome::Done)
    }

    fn run_follow_up(&self, task: &Task, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let id = task.id().with("phase", 2);
        self.inject(&id, ctx)?;
        let values: Vec<(UnitId, GroupValue)> = ctx.input_values()?;
        let [(_, group)] = values.as_slice() else {
            return Err(UnitFailure::bad_input(format!(
                "{id}: expected its group's gather as the only input, got {}",
                values.len()
            )));
        };
        self.write_output(
            ctx,
            &id,
            &format!(
                "{id}\tgroup={}\tgroup_tasks={}\tgroup_sum_s={}\n",
                group.group, group.tasks, group.sum_s
            ),
        )?;
        Ok(Outcome::Done)
    }

    fn run_collective(&self, ranks: usize, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let id = UnitId::new().with("collective", 1);
        let c = ctx.collectives();
        if c.rank() == 0 {
            self.inject(&id, ctx)?;
        }
        c.barrier();
        if c.size() != ranks {
            return Err(UnitFailure::bad_input(format!(
                "{id}: runs on {} ranks, planned for {ranks}",
                c.size()
            )));
        }
        let mut sums = [(c.rank() + 1) as f64, 1.0];
        c.all_reduce_sum_f64(&mut sums);
        let mut counts = [1_u64 << c.rank()];
        c.all_reduce_sum_u64(&mut counts);
        let members = c.all_gather_bytes(&(c.rank() as u32).to_le_bytes());
        let nothing = c.all_gather_bytes(&[]);
        let mut greeting = if c.rank() == 0 {
            b"from rank 0".to_vec()
        } else {
            Vec::new()
        };
        c.broadcast_bytes(0, &mut greeting);
        // Rank r sends s + 1 copies of 100·r + s to rank s; the last rank gets the sum of
        // every rank's r + 1, the others keep their own value.
        let (me, size) = (c.rank(), c.size());
        let per_rank: Vec<usize> = (1..=size).collect();
        let to_send: Vec<u64> = (0..size)
            .flat_map(|s| std::iter::repeat_n((100 * me + s) as u64, s + 1))
            .collect();
        let (got, got_counts) = c.all_to_all_u64(&to_send, &per_rank);
        let floats: Vec<f64> = to_send.iter().map(|&v| v as f64 + 0.5).collect();
        let (got_floats, _) = c.all_to_all_f64(&floats, &per_rank);
        let expected: Vec<u64> = (0..size)
            .flat_map(|r| std::iter::repeat_n((100 * r + me) as u64, me + 1))
            .collect();
        let mut gathered = [(me + 1) as f64];
        c.reduce_sum_f64(size - 1, &mut gathered);
        let expected_gathered = if me + 1 == size {
            (size * (size + 1) / 2) as f64
        } else {
            (me + 1) as f64
        };
        let exchanged = got == expected
            && got_counts == vec![me + 1; size]
            && got_floats == expected.iter().map(|&v| v as f64 + 0.5).collect::<Vec<_>>()
            && gathered[0] == expected_gathered;
        let expected_members: Vec<Vec<u8>> = (0..ranks as u32)
            .map(|r| r.to_le_bytes().to_vec())
            .collect();
        if members != expected_members
            || nothing != vec![Vec::<u8>::new(); ranks]
            || greeting != b"from rank 0"
            || counts[0] != (1_u64 << ranks) - 1
            || !exchanged
        {
            return Err(UnitFailure::bad_input(format!(
                "{id}: collectives over {ranks} ranks gave inconsistent results"
            )));
        }
        if c.rank() == 0 {
            self.write_output(
                ctx,
                &id,
                &format!(
                    "{id}\tranks={}\tsum={}\tcount={}\n",
                    c.size(),
                    sums[0],
                    sums[1]
                ),
            )?;
            ctx.set_value(&sums[0]);
        }
        Ok(Outcome::Done)
    }
}

impl Stage for Loadtest {
    type Unit = LoadUnit;

    fn name(&self) -> &'static str {
        "loadtest"
    }

    fn config_fingerprint(&self) -> String {
        let content = std::fs::read(&self.config.workload).unwrap_or_default();
        let c = &self.config;
        let fingerprint = fingerprint_of(&(
            c.time_scale,
            c.write_outputs,
            c.gather,
            c.follow_up,
            c.collective_ranks,
            &c.inject,
            fingerprint_of(&content),
        ));
        match c.collective_affinity_group {
            Some(group) => fingerprint_of(&(fingerprint, group)),
            None => fingerprint,
        }
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<LoadUnit>>, PlanError> {
        let workload =
            Workload::load(&self.config.workload).map_err(|e| PlanError::from_error(&e))?;
        let tasks = workload.tasks();
        let mut plan: Vec<PlannedUnit<LoadUnit>> = Vec::with_capacity(tasks.len() * 2);
        for task in &tasks {
            let unit = PlannedUnit::new(LoadUnit::Task(task.clone()));
            plan.push(if self.config.hints {
                unit.cost(task.duration_s)
            } else {
                unit
            });
        }
        if self.config.gather {
            let mut groups: std::collections::BTreeMap<i64, Vec<UnitId>> = Default::default();
            for task in &tasks {
                groups.entry(task.group).or_default().push(task.id());
            }
            for (&group, members) in &groups {
                plan.push(
                    PlannedUnit::new(LoadUnit::Gather { group }).after(members.iter().cloned()),
                );
            }
            if self.config.follow_up {
                for task in &tasks {
                    let gather = UnitId::new().with("group", task.group);
                    plan.push(PlannedUnit::new(LoadUnit::FollowUp(task.clone())).after([gather]));
                }
            }
        }
        if self.config.collective_ranks > 0 {
            let ranks = self.config.collective_ranks;
            let mut unit = PlannedUnit::new(LoadUnit::Collective { ranks }).on_ranks(ranks);
            if let Some(group) = self.config.collective_affinity_group {
                let members: Vec<UnitId> = tasks
                    .iter()
                    .filter(|t| t.group == group)
                    .map(|t| t.id())
                    .collect();
                unit = unit.after(members.clone()).prefer_ranks_of(members);
            }
            plan.push(unit);
        }
        Ok(plan)
    }

    fn run(&self, unit: &LoadUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        match unit {
            LoadUnit::Task(task) => self.run_task(task, ctx),
            LoadUnit::Gather { group } => self.run_gather(*group, ctx),
            LoadUnit::FollowUp(task) => self.run_follow_up(task, ctx),
            LoadUnit::Collective { ranks } => self.run_collective(*ranks, ctx),
        }
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
        UnitContext::new(attempt, dir, 0, false)
    }

    fn task(i: u32) -> LoadUnit {
        LoadUnit::Task(Task {
            index: i,
            group: 0,
            duration_s: 0.0,
        })
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
                .to_string()
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
            matches!(Loadtest::new(config), Err(ConfigError::Inject(e)) if e.to_string().contains("task 3"))
        );
        let err = toml::from_str::<LoadtestFile>("[loadtest]\nworkloud = \"x\"\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `workloud`"),
            "{err}"
        );
    }
}
