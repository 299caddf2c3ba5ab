//! The state of a run on rank 0, free of MPI so it can be tested directly: the plan, the graph,
//! the ledgers, each unit's outcome and value, retries and the results so far. The dispatcher
//! (`driver`) only moves messages; every decision about what a report means is taken here.

use crate::follow::UnitListError;
use crate::graph::{Graph, Next};
use crate::ledger::{AttemptRecord, Ledger, LedgerError, LedgerRecord, OutputRecord, unix_now};
use crate::options::Schedule;
use crate::plan::{Plan, PlanningError, Selection};
use crate::protocol::{Assignment, UnitReport};
use crate::report::UnitResult;
use crate::stages::StageSet;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use skypipe_io::{Durability, write_atomic};
use skypipe_stage::{FailureKind, Input, Outcome, OutcomeKind};
use std::collections::HashMap;
use std::path::Path;

/// Everything rank 0 knows about the units of a run.
pub(crate) struct RunState<'a> {
    /// The stage instances.
    pub stages: &'a StageSet<'a>,
    /// The plan.
    pub plan: Plan,
    /// Ready units, batches, ranks.
    pub graph: Graph,
    /// One ledger per stage instance.
    ledgers: Vec<Ledger>,
    /// Each unit's latest record from earlier invocations, per stage instance.
    previous: Vec<HashMap<String, LedgerRecord>>,
    /// The last sequence number recorded.
    seq: u64,
    /// Value of each ended unit, kept while units that run after it have not ended.
    values: Vec<Option<Vec<u8>>>,
    /// Outcome of each ended unit.
    outcomes: Vec<Option<OutcomeKind>>,
    /// Units that run after each unit and have not ended yet.
    consumers_left: Vec<usize>,
    /// Ranks that ran each unit done in this invocation (for multi-rank units' affinity).
    ran_on: HashMap<usize, Vec<usize>>,
    /// Reports of multi-rank units whose ranks have not all reported, with their ranks.
    parts: HashMap<usize, Vec<(usize, UnitReport)>>,
    /// Memory limits of the attempts so far, per unit (isolated units only).
    memory_limits: HashMap<usize, Vec<u64>>,
    /// Earlier attempts of units being retried.
    retried: HashMap<usize, Vec<AttemptRecord>>,
    /// Ledger counts of the planned units.
    pub selection: Selection,
    /// Units to run per stage instance (planned, not settled by the ledgers).
    to_run_by_instance: Vec<usize>,
    /// This invocation's results, in recording order.
    pub results: Vec<UnitResult>,
    /// Failed attempts that were retried.
    pub retries: usize,
    /// `--retry-failed`.
    retry_failed: bool,
    /// Not `--no-verify`.
    verify: bool,
    /// Transient retries allowed.
    max_retries: u32,
    /// Memory isolation, whose limits decide out-of-memory retries.
    isolation: Option<std::sync::Arc<crate::isolation::Isolation>>,
    /// The first error writing a ledger; the run must stop.
    pub ledger_error: Option<LedgerError>,
}

/// What the state is built from.
pub(crate) struct StateSetup {
    /// World size.
    pub size: usize,
    /// Dynamic or static schedule.
    pub schedule: Schedule,
    /// Largest batch.
    pub max_batch: usize,
    /// `--retry-failed`.
    pub retry_failed: bool,
    /// Not `--no-verify`: rerun done units whose recorded outputs changed.
    pub verify: bool,
    /// Transient retries allowed.
    pub max_retries: u32,
    /// Memory isolation.
    pub isolation: Option<std::sync::Arc<crate::isolation::Isolation>>,
}

impl<'a> RunState<'a> {
    /// Settles the plan against the ledgers, builds the graph and records the units that
    /// cannot run (missing inputs, failed inputs from earlier invocations). Fails on a
    /// dependency cycle, naming a unit on it.
    pub fn new(
        stages: &'a StageSet<'a>,
        plan: Plan,
        ledgers: Vec<Ledger>,
        setup: StateSetup,
    ) -> Result<Self, PlanningError> {
        let previous: Vec<HashMap<String, LedgerRecord>> =
            ledgers.iter().map(|l| l.previous().clone()).collect();
        let all: Vec<usize> = (0..plan.units.len()).collect();
        let (specs, mut selection) =
            plan.node_specs(stages, &all, &previous, setup.retry_failed, setup.verify);
        let mut to_run_by_instance = vec![0; stages.len()];
        for (i, spec) in specs.iter().enumerate() {
            if spec.prior.is_none() {
                to_run_by_instance[plan.instance(i)] += 1;
            }
        }
        let missing = std::mem::take(&mut selection.missing);
        let (graph, blocked) = Graph::new(specs, setup.size, setup.schedule, setup.max_batch)
            .map_err(|on_cycle| PlanningError::Cycle {
                run: stages.run_name().to_string(),
                unit: plan.label(stages, on_cycle),
            })?;
        let n = plan.units.len();
        let mut state = Self {
            stages,
            graph,
            seq: ledgers.iter().map(Ledger::last_seq).max().unwrap_or(0),
            ledgers,
            values: vec![None; n],
            outcomes: vec![None; n],
            consumers_left: vec![0; n],
            ran_on: HashMap::new(),
            parts: HashMap::new(),
            memory_limits: HashMap::new(),
            retried: HashMap::new(),
            selection,
            to_run_by_instance,
            results: Vec::new(),
            retries: 0,
            retry_failed: setup.retry_failed,
            verify: setup.verify,
            max_retries: setup.max_retries,
            isolation: setup.isolation,
            ledger_error: None,
            previous,
            plan,
        };
        state.settle(0);
        state.record_missing(missing);
        state.record_blocked(blocked);
        Ok(state)
    }

    /// Counts consumers and takes outcomes and values from the ledgers for units `from..`.
    fn settle(&mut self, from: usize) {
        let n = self.plan.units.len();
        self.values.resize(n, None);
        self.outcomes.resize(n, None);
        self.consumers_left.resize(n, 0);
        for i in from..n {
            for k in 0..self.plan.after[i].len() {
                let input = self.plan.after[i][k];
                self.consumers_left[input] += 1;
            }
            let inst = self.plan.instance(i);
            if let Some(r) = self.previous[inst].get(self.plan.ids[i].as_str()) {
                self.outcomes[i] = Some(r.outcome);
                if r.outcome.is_success() {
                    self.values[i] = r.value.as_deref().and_then(|v| BASE64.decode(v).ok());
                }
            }
        }
    }

    /// Writes each instance's manifest with its number of planned units.
    pub fn write_manifests(&self) -> Result<(), LedgerError> {
        for (k, inst) in self.stages.instances.iter().enumerate() {
            let planned = (0..self.plan.units.len())
                .filter(|&i| self.plan.instance(i) == k)
                .count();
            self.ledgers[k].write_manifest(&inst.name, &inst.stage.fingerprint(), planned)?;
        }
        Ok(())
    }

    /// The invocation number (the largest over the instances' ledgers).
    pub fn invocation(&self) -> u32 {
        self.ledgers
            .iter()
            .map(Ledger::invocation)
            .max()
            .unwrap_or(1)
    }

    /// The next work for `rank`.
    pub fn next(&mut self, rank: usize) -> Next {
        self.graph.next(rank)
    }

    /// The assignment of unit `index`, with its inputs' outcomes and values.
    pub fn assignment(&self, index: usize, attempt: u32) -> Assignment {
        let inputs = self.plan.after[index]
            .iter()
            .map(|&a| Input {
                unit: self.plan.ids[a].clone(),
                outcome: self.outcomes[a].unwrap_or(OutcomeKind::Done),
                value: self.values[a].clone(),
            })
            .collect();
        let unproduced = self.plan.connections[index]
            .inputs
            .iter()
            .filter(|input| {
                self.plan
                    .producer(&input.path)
                    .is_some_and(|p| self.outcomes[p] == Some(OutcomeKind::NoWork))
            })
            .map(|input| input.path.clone())
            .collect();
        Assignment {
            index: index as u64,
            attempt,
            id: self.plan.ids[index].clone(),
            unit: self.plan.units[index].clone(),
            inputs,
            unproduced,
        }
    }

    /// Takes one rank's report of a unit. A multi-rank unit is recorded once all its ranks
    /// have reported: from the first rank's start to the last rank's end, failed if any rank
    /// failed, with the value of its rank 0.
    pub fn report(&mut self, rank: usize, report: UnitReport) {
        let index = report.index as usize;
        self.graph.returned(rank, report.elapsed_s);
        let needed = self.graph.ranks_of(index);
        if needed == 1 {
            self.record(rank, Vec::new(), report);
            return;
        }
        let parts = self.parts.entry(index).or_default();
        parts.push((rank, report));
        if parts.len() < needed {
            return;
        }
        let mut parts = self.parts.remove(&index).expect("present");
        let mut ranks: Vec<usize> = parts.iter().map(|(r, _)| *r).collect();
        ranks.sort_unstable();
        let start = parts
            .iter()
            .map(|(_, p)| p.started)
            .fold(f64::INFINITY, f64::min);
        let end = parts
            .iter()
            .map(|(_, p)| p.started + p.elapsed_s)
            .fold(f64::NEG_INFINITY, f64::max);
        // The first failure if any, else rank 0's report (which carries the value).
        parts.sort_by_key(|(_, p)| (p.result.is_ok(), p.value.is_none()));
        let (_, mut combined) = parts.swap_remove(0);
        combined.started = start;
        combined.elapsed_s = (end - start).max(0.0);
        self.record(ranks[0], ranks, combined);
    }

    /// Whether a failed attempt is tried again.
    fn retried_again(&self, report: &UnitReport) -> bool {
        match &report.result {
            Err(f) if f.kind == FailureKind::Transient => report.attempt <= self.max_retries,
            Err(f) if f.kind == FailureKind::OutOfMemory => {
                let first = self
                    .memory_limits
                    .get(&(report.index as usize))
                    .and_then(|limits| limits.first());
                match (&self.isolation, first) {
                    (Some(iso), Some(&first)) => iso.may_grow(first, report.attempt),
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// The ranks unit `index` prefers, most preferred first: those that ran its affinity units
    /// in this invocation, by how many of them each ran (ties by rank number).
    pub fn preferred_ranks(&self, index: usize) -> Vec<usize> {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for unit in &self.plan.affinity[index] {
            for &rank in self.ran_on.get(unit).into_iter().flatten() {
                *counts.entry(rank).or_default() += 1;
            }
        }
        let mut ranked: Vec<(usize, usize)> = counts.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.into_iter().map(|(rank, _)| rank).collect()
    }

    /// Records the final attempt of a unit, or schedules a retry.
    fn record(&mut self, rank: usize, ranks: Vec<usize>, report: UnitReport) {
        let index = report.index as usize;
        if let Some(limit) = report.memory_limit_mb {
            self.memory_limits.entry(index).or_default().push(limit);
        }
        if self.retried_again(&report)
            && let Err(f) = &report.result
        {
            tracing::warn!(unit = %self.plan.label(self.stages, index), attempt = report.attempt, "retrying after failure: {f}");
            self.retries += 1;
            self.retried.entry(index).or_default().push(AttemptRecord {
                rank,
                ranks,
                started: report.started,
                elapsed_s: report.elapsed_s,
                outcome: OutcomeKind::from(f.kind),
                message: Some(f.message.clone()),
            });
            self.graph.retry(index);
            return;
        }
        let (outcome, message) = match report.result {
            Ok(Outcome::Done) => (OutcomeKind::Done, None),
            Ok(Outcome::NoWork { reason }) => (OutcomeKind::NoWork, Some(reason)),
            Err(f) => (OutcomeKind::from(f.kind), Some(f.message)),
        };
        let success = outcome.is_success();
        if success {
            let ran = if ranks.is_empty() {
                vec![rank]
            } else {
                ranks.clone()
            };
            self.ran_on.insert(index, ran);
        }
        let value = report.value.filter(|_| success);
        let mut record = self.new_record(index, outcome, message);
        record.attempts = report.attempt;
        record.rank = rank;
        record.ranks = ranks;
        record.elapsed_s = report.elapsed_s;
        record.started = Some(report.started);
        record.value = value.as_ref().map(|v| BASE64.encode(v));
        record.memory_limits_mb = self.memory_limits.remove(&index).unwrap_or_default();
        record.retried = self.retried.remove(&index).unwrap_or_default();
        if outcome == OutcomeKind::Done {
            record.outputs = self.plan.connections[index]
                .outputs
                .iter()
                .filter_map(|d| OutputRecord::of(&d.path))
                .collect();
        }
        self.append(index, record);
        self.outcomes[index] = Some(outcome);
        if self.consumers_left[index] > 0 {
            self.values[index] = value;
        }
        let blocked = self.graph.finish(index, success);
        self.ended(index);
        self.record_blocked(blocked);
    }

    /// A record of unit `index` with this invocation's number and the time now.
    fn new_record(
        &self,
        index: usize,
        outcome: OutcomeKind,
        message: Option<String>,
    ) -> LedgerRecord {
        LedgerRecord::new(
            self.plan.ids[index].to_string(),
            outcome,
            message,
            self.ledgers[self.plan.instance(index)].invocation(),
        )
    }

    /// Appends `record` of unit `index` to its stage's ledger with the next sequence number.
    fn append(&mut self, index: usize, mut record: LedgerRecord) {
        self.seq += 1;
        record.seq = self.seq;
        let instance = self.plan.instance(index);
        if let Err(e) = self.ledgers[instance].append(&record) {
            self.ledger_error.get_or_insert(e);
        }
        let mut result = UnitResult::from(&record);
        result.unit = self.plan.label(self.stages, index);
        result.instance = instance;
        self.results.push(result);
    }

    /// Records units that cannot run because an input failed.
    fn record_blocked(&mut self, blocked: Vec<(usize, usize)>) {
        for (unit, failed_input) in blocked {
            let message = format!(
                "not run: input unit {} failed ({})",
                self.plan.label(self.stages, failed_input),
                self.outcomes[failed_input].map_or("failed earlier", OutcomeKind::as_str)
            );
            self.outcomes[unit] = Some(OutcomeKind::DependencyFailed);
            let record = self.new_record(unit, OutcomeKind::DependencyFailed, Some(message));
            self.append(unit, record);
            self.ended(unit);
        }
    }

    /// Records units failed at planning because an input file is missing.
    fn record_missing(&mut self, missing: Vec<(usize, OutcomeKind, String)>) {
        for (unit, kind, reason) in missing {
            tracing::warn!(unit = %self.plan.label(self.stages, unit), "not run: {reason}");
            self.outcomes[unit] = Some(kind);
            let record = self.new_record(unit, kind, Some(reason));
            self.append(unit, record);
            self.ended(unit);
        }
    }

    /// Releases the values a unit no longer needs once it has ended.
    fn ended(&mut self, index: usize) {
        for k in 0..self.plan.after[index].len() {
            let input = self.plan.after[index][k];
            self.consumers_left[input] = self.consumers_left[input].saturating_sub(1);
            if self.consumers_left[input] == 0 {
                self.values[input] = None;
            }
        }
    }

    /// Adds the units of a `--follow` unit list (one-stage runs: instance 0). Returns how
    /// many will run, or why the list was rejected (then nothing is added).
    pub fn add_list(
        &mut self,
        path: &Path,
        run_dir: &Path,
        max_ranks: usize,
    ) -> Result<usize, UnitListError> {
        let stages = self.stages;
        let stage = &stages.instances[0];
        let planned = stage.stage.parse_list_erased(path, run_dir)?;
        let first = self.plan.units.len();
        let added = self
            .plan
            .extend(0, &stage.name, planned, max_ranks, true)
            .and_then(|indices| {
                self.plan.connect(stages, first)?;
                Ok(indices)
            });
        let indices = match added {
            Ok(i) => i,
            Err(source) => {
                self.plan.truncate(first);
                return Err(UnitListError::Plan {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let (specs, mut selection) = self.plan.node_specs(
            stages,
            &indices,
            &self.previous,
            self.retry_failed,
            self.verify,
        );
        match self.graph.add(specs) {
            Ok(blocked) => {
                self.settle(first);
                self.selection.to_run += selection.to_run;
                self.selection.skipped_done += selection.skipped_done;
                self.selection.outputs_changed += selection.outputs_changed;
                self.selection.inputs_remade += selection.inputs_remade;
                self.selection.failed_earlier += selection.failed_earlier;
                self.selection
                    .skipped_failed
                    .append(&mut selection.skipped_failed);
                self.to_run_by_instance[0] += selection.to_run;
                self.record_missing(selection.missing);
                self.record_blocked(blocked);
                Ok(selection.to_run)
            }
            Err(on_cycle) => {
                let unit = self.plan.label(stages, on_cycle);
                self.plan.truncate(first);
                Err(UnitListError::Cycle {
                    path: path.to_path_buf(),
                    unit,
                })
            }
        }
    }

    /// Commits every ledger whose sync interval has passed.
    pub fn commit_if_due(&mut self) {
        for k in 0..self.ledgers.len() {
            if let Err(e) = self.ledgers[k].commit_if_due() {
                self.ledger_error.get_or_insert(e);
            }
        }
    }

    /// Commits every ledger now.
    pub fn commit(&mut self) {
        for k in 0..self.ledgers.len() {
            if let Err(e) = self.ledgers[k].commit() {
                self.ledger_error.get_or_insert(e);
            }
        }
    }

    /// Writes each instance's `progress.json` (its own counts; running units and rate are
    /// the job's) and returns `(ended, failed, total)` over the whole run.
    pub fn write_progress(
        &self,
        rate: f64,
        eta_s: Option<f64>,
        ranks: usize,
    ) -> (usize, usize, usize) {
        let ended = self.results.len();
        let failed = self
            .results
            .iter()
            .filter(|r| !r.outcome.is_success())
            .count();
        for (k, inst) in self.stages.instances.iter().enumerate() {
            let (ended_k, failed_k) = self
                .results
                .iter()
                .filter(|r| r.instance == k)
                .fold((0, 0), |(e, f), r| {
                    (e + 1, f + usize::from(!r.outcome.is_success()))
                });
            let to_run_k = self.to_run_by_instance[k].max(ended_k);
            let snapshot = serde_json::json!({
                "stage": inst.name,
                "invocation": self.ledgers[k].invocation(),
                "time": unix_now(),
                "to_run": to_run_k,
                "ended": ended_k,
                "failed": failed_k,
                "running": self.graph.in_flight(),
                "pending": to_run_k - ended_k,
                "rate_per_s": rate,
                "eta_s": eta_s,
                "ranks": ranks,
                "pid": std::process::id(),
            });
            let _ = write_atomic(
                &self.ledgers[k].paths().progress,
                snapshot.to_string().as_bytes(),
                Durability::ProcessCrashOnly,
            );
        }
        (ended, failed, ended + self.graph.open())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_stages;
    use crate::testutil::Files;
    use skypipe_stage::UnitFailure;
    use std::time::Duration;

    fn state<'a>(stages: &'a StageSet<'a>, dir: &Path, max_retries: u32) -> RunState<'a> {
        let plan = plan_stages(stages, dir, 2).unwrap();
        let ledgers = stages
            .instances
            .iter()
            .map(|i| {
                Ledger::open(dir, &i.name, "fp", false, false, Duration::from_secs(60)).unwrap()
            })
            .collect();
        let setup = StateSetup {
            size: 2,
            schedule: Schedule::Dynamic,
            max_batch: 1,
            retry_failed: false,
            verify: true,
            max_retries,
            isolation: None,
        };
        RunState::new(stages, plan, ledgers, setup).unwrap()
    }

    fn report(index: usize, attempt: u32, result: Result<Outcome, UnitFailure>) -> UnitReport {
        UnitReport {
            index: index as u64,
            attempt,
            result,
            started: 100.0,
            elapsed_s: 1.0,
            value: None,
            memory_limit_mb: None,
        }
    }

    fn take_one(state: &mut RunState<'_>, rank: usize) -> (usize, u32) {
        match state.next(rank) {
            Next::Batch(b) if b.len() == 1 => b[0],
            _ => panic!("expected one unit"),
        }
    }

    fn records(dir: &Path, stage: &str) -> Vec<LedgerRecord> {
        crate::ledger::read_records(&crate::ledger::LedgerPaths::new(dir, stage).records).unwrap()
    }

    #[test]
    fn a_failure_fails_only_its_readers_and_records_share_one_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let first = Files {
            name: "files",
            reads: None,
            writes: "mid",
            units: 2,
            wide: false,
        };
        let second = Files {
            name: "files",
            reads: Some("mid"),
            writes: "end",
            units: 2,
            wide: false,
        };
        let stages = StageSet::new()
            .with("first", &first)
            .with("second", &second);
        let mut s = state(&stages, dir.path(), 0);
        let a = take_one(&mut s, 0);
        let b = take_one(&mut s, 1);
        assert_eq!((a.0, b.0), (0, 1), "only the first stage is ready");
        s.report(0, report(0, 1, Err(UnitFailure::bad_input("broken"))));
        s.report(1, report(1, 1, Ok(Outcome::Done)));
        // second[u=0] is dependency-failed at once; second[u=1] is ready.
        assert_eq!(take_one(&mut s, 0), (3, 1));
        s.report(0, report(3, 1, Ok(Outcome::Done)));
        assert!(s.graph.is_finished());
        s.commit();
        let seqs = |stage| -> Vec<(String, OutcomeKind, u64)> {
            records(dir.path(), stage)
                .into_iter()
                .map(|r| (r.unit, r.outcome, r.seq))
                .collect()
        };
        assert_eq!(
            seqs("first"),
            vec![
                ("u=0".into(), OutcomeKind::BadInput, 1),
                ("u=1".into(), OutcomeKind::Done, 3)
            ]
        );
        assert_eq!(
            seqs("second"),
            vec![
                ("u=0".into(), OutcomeKind::DependencyFailed, 2),
                ("u=1".into(), OutcomeKind::Done, 4)
            ]
        );
        let blocked = &records(dir.path(), "second")[0];
        assert!(blocked.message.as_deref().unwrap().contains("first[u=0]"));
        assert_eq!(s.results[1].unit, "second[u=0]");
    }

    #[test]
    fn transient_failures_are_retried_and_kept_in_the_final_record() {
        let dir = tempfile::tempdir().unwrap();
        let only = Files {
            name: "files",
            reads: None,
            writes: "out",
            units: 1,
            wide: false,
        };
        let stages = StageSet::single(&only);
        let mut s = state(&stages, dir.path(), 1);
        assert_eq!(take_one(&mut s, 1), (0, 1));
        s.report(1, report(0, 1, Err(UnitFailure::transient("I/O hiccup"))));
        assert_eq!(s.retries, 1);
        assert!(s.results.is_empty(), "a retried attempt is not a result");
        assert_eq!(take_one(&mut s, 0), (0, 2));
        s.report(0, report(0, 2, Ok(Outcome::Done)));
        s.commit();
        let r = &records(dir.path(), "files")[0];
        assert_eq!((r.outcome, r.attempts, r.rank), (OutcomeKind::Done, 2, 0));
        assert_eq!(r.retried.len(), 1);
        assert_eq!(r.retried[0].outcome, OutcomeKind::Transient);
        assert_eq!(r.retried[0].rank, 1);
        assert_eq!(r.started, Some(100.0));
    }

    #[test]
    fn a_multi_rank_unit_is_recorded_once_over_its_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let only = Files {
            name: "files",
            reads: None,
            writes: "out",
            units: 0,
            wide: true,
        };
        let stages = StageSet::single(&only);
        let mut s = state(&stages, dir.path(), 0);
        let Next::Multi(index, attempt) = s.next(0) else {
            panic!("expected the two-rank unit");
        };
        s.graph.start_on(0);
        s.graph.start_on(1);
        let mut late = report(index, attempt, Ok(Outcome::Done));
        late.started = 101.0;
        late.elapsed_s = 2.0;
        s.report(1, late);
        assert!(s.results.is_empty(), "waits for every rank");
        let mut early = report(index, attempt, Ok(Outcome::Done));
        early.value = Some(vec![7]);
        s.report(0, early);
        s.commit();
        let r = &records(dir.path(), "files")[0];
        assert_eq!(r.ranks, vec![0, 1]);
        assert_eq!(r.started, Some(100.0));
        assert!((r.elapsed_s - 3.0).abs() < 1e-12, "first start to last end");
        assert_eq!(r.value.as_deref(), Some("Bw=="), "rank 0's value");
    }

    /// Four one-rank units, then two two-rank units each preferring the ranks of some of them.
    struct Affine;

    impl skypipe_stage::Stage for Affine {
        type Unit = crate::testutil::U;
        fn name(&self) -> &'static str {
            "affine"
        }
        fn config_fingerprint(&self) -> String {
            "fp".into()
        }
        fn plan(
            &self,
        ) -> Result<Vec<skypipe_stage::PlannedUnit<Self::Unit>>, skypipe_stage::PlanError> {
            use crate::testutil::U;
            use skypipe_stage::{PlannedUnit, WorkUnit};
            let mut plan: Vec<_> = (0..4).map(|i| PlannedUnit::new(U(i))).collect();
            let ids = |units: &[u32]| units.iter().map(|&i| U(i).id()).collect::<Vec<_>>();
            plan.push(
                PlannedUnit::new(U(10))
                    .after(ids(&[0, 1, 2, 3]))
                    .prefer_ranks_of(ids(&[0, 1, 2]))
                    .on_ranks(2),
            );
            plan.push(
                PlannedUnit::new(U(11))
                    .after(ids(&[0, 1, 2, 3]))
                    .prefer_ranks_of(ids(&[3]))
                    .on_ranks(2),
            );
            Ok(plan)
        }
        fn run(
            &self,
            _: &Self::Unit,
            _: &skypipe_stage::UnitContext,
        ) -> Result<Outcome, UnitFailure> {
            Ok(Outcome::Done)
        }
    }

    #[test]
    fn a_multi_rank_unit_prefers_the_ranks_that_ran_its_affinity_units() {
        use crate::reservation::Reservation;
        let dir = tempfile::tempdir().unwrap();
        let stages = StageSet::single(&Affine);
        let plan = plan_stages(&stages, dir.path(), 4).unwrap();
        let ledgers = vec![
            Ledger::open(
                dir.path(),
                "affine",
                "fp",
                false,
                false,
                Duration::from_secs(60),
            )
            .unwrap(),
        ];
        let setup = StateSetup {
            size: 4,
            schedule: Schedule::Dynamic,
            max_batch: 1,
            retry_failed: false,
            verify: true,
            max_retries: 0,
            isolation: None,
        };
        let mut s = RunState::new(&stages, plan, ledgers, setup).unwrap();
        // Units 0 and 1 run on rank 2, unit 2 on rank 1, unit 3 on rank 0.
        for (unit, rank) in [(0, 2), (1, 2), (2, 1), (3, 0)] {
            let (index, attempt) = take_one(&mut s, rank);
            assert_eq!(index, unit, "plan order");
            s.report(rank, report(index, attempt, Ok(Outcome::Done)));
        }
        assert_eq!(
            s.preferred_ranks(4),
            vec![2, 1],
            "most affinity units first"
        );
        assert_eq!(s.preferred_ranks(5), vec![0]);
        // Ranks become free in the order 3, 0, 1, 2: the first unit keeps its seats for 2 and
        // 1, so 3 and 0 take the second one, whose preferred rank 0 is among them.
        let mut first = Reservation::new(4, 1, 2, &s.preferred_ranks(4), |_| true);
        let mut second = Reservation::new(5, 1, 2, &s.preferred_ranks(5), |_| true);
        for rank in [3, 0, 1, 2] {
            if first.admits(rank) {
                first.join(rank);
            } else {
                assert!(second.admits(rank), "rank {rank} has a seat somewhere");
                second.join(rank);
            }
        }
        assert!(first.is_complete() && second.is_complete());
        first.members.sort_unstable();
        second.members.sort_unstable();
        assert_eq!((first.members, second.members), (vec![1, 2], vec![0, 3]));
    }
}
