//! The SPMD run: rank 0 dispatches (its main thread) and works (a second thread); every other
//! rank works. Only this module, `collectives` and `launch` touch MPI.

use crate::collectives::MpiCollectives;
use crate::execute::{RankContext, run_assignment, run_batch};
use crate::follow::{Follow, parse_list};
use crate::graph::{Graph, Next};
use crate::ledger::{Ledger, LedgerRecord, unix_now};
use crate::options::RunOptions;
use crate::plan::{Plan, Selection, plan_stage};
use crate::protocol::{
    Assignment, RankStats, TAG_TO_DISPATCHER, TAG_TO_WORKER, ToDispatcher, ToWorker, UnitReport,
};
use crate::report::{EXIT_CANNOT_START, RunSummary, UnitResult};
use crate::signals;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::Serialize;
use skypipe_io::{Durability, write_atomic};
use skypipe_stage::{FailureKind, Input, Outcome, OutcomeKind, Stage};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the run needs besides the stage.
pub(crate) struct RunSetup<'a> {
    /// Engine options, already merged with the command line.
    pub opts: &'a RunOptions,
    /// Run directory.
    pub run_dir: &'a Path,
    /// `--retry-failed`.
    pub retry_failed: bool,
    /// `--allow-config-change`.
    pub allow_config_change: bool,
    /// When the process started (for the start-up time).
    pub started: Instant,
    /// The command that retries failures.
    pub retry_command: String,
    /// Memory isolation of units, when configured.
    pub isolation: Option<std::sync::Arc<crate::isolation::Isolation>>,
    /// `--follow DIR`.
    pub follow: Option<std::path::PathBuf>,
}

/// The communicators of a rank: `world` carries dispatch messages; `units` (a duplicate made
/// once at start-up) is where multi-rank units form their sub-communicators.
pub(crate) struct Comms {
    /// Dispatch traffic.
    pub world: SimpleCommunicator,
    /// Parent of multi-rank units' communicators.
    pub units: SimpleCommunicator,
    /// Whether rank 0's worker thread may make MPI calls (MPI_THREAD_MULTIPLE).
    pub threads_may_call_mpi: bool,
}

/// A communicator handed to rank 0's worker thread. Only sound when MPI was initialised with
/// `MPI_THREAD_MULTIPLE`, which [`Comms::threads_may_call_mpi`] records.
struct ThreadComm(SimpleCommunicator);

// SAFETY: MPI handles may be used from any thread under MPI_THREAD_MULTIPLE; the dispatcher
// only moves this into the worker thread when that level was granted, and only that thread
// uses it afterwards.
unsafe impl Send for ThreadComm {}

/// Waits with little latency at first and little CPU later.
struct Backoff {
    idle_since: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self { idle_since: None }
    }

    fn reset(&mut self) {
        self.idle_since = None;
    }

    fn wait(&mut self) {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        let idle = since.elapsed();
        if idle < Duration::from_micros(50) {
            std::hint::spin_loop();
        } else if idle < Duration::from_millis(2) {
            std::thread::yield_now();
        } else if idle < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("engine messages always serialise")
}

/// Receives the next message with `tag` from `source` (any when `None`), polling so that an
/// idle rank does not spin a core.
fn receive(
    world: &SimpleCommunicator,
    source: Option<i32>,
    tag: i32,
    backoff: &mut Backoff,
) -> (Vec<u8>, i32) {
    backoff.reset();
    loop {
        let probe = match source {
            Some(r) => world
                .process_at_rank(r)
                .immediate_matched_probe_with_tag(tag),
            None => world.any_process().immediate_matched_probe_with_tag(tag),
        };
        if let Some(matched) = probe {
            let (bytes, status) = matched.matched_receive_vec::<u8>();
            return (bytes, status.source_rank());
        }
        backoff.wait();
    }
}

/// Joins the sub-communicator of a multi-rank unit.
fn unit_collectives(units: &SimpleCommunicator, members: &[i32], tag: i32) -> MpiCollectives {
    let group = units.group().include(members);
    let comm = units
        .split_by_subgroup_with_tag(&group, tag)
        .expect("this rank is a member of the unit's group");
    MpiCollectives::new(comm)
}

/// A worker rank (> 0): ask, run, report, until told to stop. Returns the job's exit code.
pub(crate) fn worker<S: Stage>(stage: &S, comms: &Comms, base: &RankContext) -> u8 {
    let world = &comms.world;
    let dispatcher = world.process_at_rank(0);
    let mut stats = RankStats {
        rank: base.rank,
        ..RankStats::default()
    };
    let mut backoff = Backoff::new();
    let hello = ToDispatcher::Ready {
        reports: vec![],
        returned: vec![],
        interrupted: false,
    };
    dispatcher.send_with_tag(&encode(&hello)[..], TAG_TO_DISPATCHER);
    loop {
        let (bytes, _) = receive(world, Some(0), TAG_TO_WORKER, &mut backoff);
        let message: ToWorker<S::Unit> = postcard::from_bytes(&bytes).unwrap_or_else(|e| {
            panic!(
                "rank {}: undecodable message from the dispatcher: {e}",
                base.rank
            )
        });
        let (reports, returned) = match message {
            ToWorker::Work(batch) => run_batch(stage, batch, base, signals::flag(), &mut stats),
            ToWorker::Multi {
                assignment,
                members,
                tag,
            } => {
                let collectives = unit_collectives(&comms.units, &members, tag);
                let report = run_assignment(
                    stage,
                    assignment,
                    base,
                    Some(Box::new(collectives)),
                    &mut stats,
                );
                (vec![report], vec![])
            }
            ToWorker::Stop { exit_code } => {
                dispatcher.send_with_tag(
                    &encode(&ToDispatcher::Finished(stats))[..],
                    TAG_TO_DISPATCHER,
                );
                return exit_code;
            }
        };
        let reply = ToDispatcher::Ready {
            reports,
            returned,
            interrupted: signals::stop_requested(),
        };
        dispatcher.send_with_tag(&encode(&reply)[..], TAG_TO_DISPATCHER);
    }
}

/// Commands to rank 0's own worker thread.
enum LocalCommand<U> {
    Work(Vec<Assignment<U>>),
    Multi(Assignment<U>, Vec<i32>, i32),
    Stop,
}

/// Ranks being gathered for a multi-rank unit.
struct Reservation {
    index: usize,
    attempt: u32,
    members: Vec<usize>,
}

/// Everything the dispatcher tracks while the run is under way.
struct Dispatcher<'a, S: Stage> {
    stage: &'a S,
    setup: &'a RunSetup<'a>,
    world: &'a SimpleCommunicator,
    size: usize,
    plan: Plan<S::Unit>,
    ledger: Ledger,
    graph: Graph,
    /// Value of each ended unit, kept while units that run after it have not ended.
    values: Vec<Option<Vec<u8>>>,
    /// Outcome of each ended unit.
    outcomes: Vec<Option<OutcomeKind>>,
    /// Units that run after each unit and have not ended yet.
    consumers_left: Vec<usize>,
    idle: Vec<usize>,
    reservation: Option<Reservation>,
    multi_reports: HashMap<usize, Vec<UnitReport>>,
    /// Memory limits of the attempts so far, per unit (isolated units only).
    memory_limits: HashMap<usize, Vec<u64>>,
    /// Each unit's latest record from earlier invocations.
    previous: HashMap<String, LedgerRecord>,
    /// Ledger counts of the planned units.
    selection: Selection,
    /// Most ranks one unit may get.
    max_ranks: usize,
    /// Follow mode.
    follow: Option<Follow>,
    next_tag: i32,
    local_joins_multi: bool,
    results: Vec<UnitResult>,
    retries: usize,
    stopping_since: Option<Instant>,
    ledger_error: Option<String>,
    local_tx: mpsc::Sender<LocalCommand<S::Unit>>,
    first_dispatch: Option<Instant>,
    last_result: Option<Instant>,
}

impl<S: Stage> Dispatcher<'_, S> {
    fn assignment(&self, index: usize, attempt: u32) -> Assignment<S::Unit> {
        let inputs = self.plan.after[index]
            .iter()
            .map(|&a| Input {
                unit: self.plan.ids[a].clone(),
                outcome: self.outcomes[a].unwrap_or(OutcomeKind::Done),
                value: self.values[a].clone(),
            })
            .collect();
        Assignment {
            index: index as u64,
            attempt,
            unit: self.plan.units[index].clone(),
            inputs,
        }
    }

    fn send(&mut self, rank: usize, command: LocalCommand<S::Unit>) {
        self.first_dispatch.get_or_insert_with(Instant::now);
        if rank == 0 {
            let _ = self.local_tx.send(command);
            return;
        }
        let message = match command {
            LocalCommand::Work(batch) => ToWorker::Work(batch),
            LocalCommand::Multi(assignment, members, tag) => ToWorker::Multi {
                assignment,
                members,
                tag,
            },
            LocalCommand::Stop => unreachable!("remote ranks are stopped by stop_workers"),
        };
        self.world
            .process_at_rank(rank as i32)
            .send_with_tag(&encode(&message)[..], TAG_TO_WORKER);
    }

    /// Gives `rank` its next work, adds it to a multi-rank unit being gathered, or parks it.
    fn serve(&mut self, rank: usize) {
        if self.stopping_since.is_some() {
            self.idle.push(rank);
            return;
        }
        let may_join = rank != 0 || self.local_joins_multi;
        if let Some(reservation) = &mut self.reservation
            && may_join
        {
            reservation.members.push(rank);
            self.launch_if_complete();
            return;
        }
        match self.graph.next(rank) {
            Next::Batch(batch) if !batch.is_empty() => {
                let assignments = batch
                    .into_iter()
                    .map(|(index, attempt)| self.assignment(index, attempt))
                    .collect();
                self.send(rank, LocalCommand::Work(assignments));
            }
            Next::Multi(index, attempt) if may_join && self.reservation.is_none() => {
                self.reservation = Some(Reservation {
                    index,
                    attempt,
                    members: vec![rank],
                });
                for other in std::mem::take(&mut self.idle) {
                    self.serve(other);
                }
                self.launch_if_complete();
            }
            Next::Multi(index, _) => {
                self.graph.give_back(None, index);
                self.idle.push(rank);
            }
            Next::Batch(_) | Next::Nothing => self.idle.push(rank),
        }
    }

    fn launch_if_complete(&mut self) {
        let Some(reservation) = &self.reservation else {
            return;
        };
        if reservation.members.len() < self.graph.ranks_of(reservation.index) {
            return;
        }
        let reservation = self.reservation.take().expect("checked");
        let mut members: Vec<i32> = reservation.members.iter().map(|&r| r as i32).collect();
        members.sort_unstable();
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) & 0x3fff_ffff;
        tracing::debug!(unit = %self.plan.ids[reservation.index], ?members, "starting a multi-rank unit");
        for &rank in &members {
            self.graph.start_on(rank as usize);
            let assignment = self.assignment(reservation.index, reservation.attempt);
            self.send(
                rank as usize,
                LocalCommand::Multi(assignment, members.clone(), tag),
            );
        }
    }

    /// Hands newly ready work to parked ranks.
    fn serve_idle(&mut self) {
        if self.stopping_since.is_some() || (self.graph.ready() == 0 && self.reservation.is_none())
        {
            return;
        }
        for rank in std::mem::take(&mut self.idle) {
            self.serve(rank);
        }
    }

    fn append(&mut self, record: LedgerRecord) {
        if let Err(e) = self.ledger.append(&record) {
            self.fail_ledger(e.to_string());
        }
        self.results.push(UnitResult::from(&record));
    }

    fn record(&mut self, rank: usize, report: UnitReport) {
        let index = report.index as usize;
        self.last_result = Some(Instant::now());
        if let Some(limit) = report.memory_limit_mb {
            self.memory_limits.entry(index).or_default().push(limit);
        }
        let (outcome, message) = match report.result {
            Ok(Outcome::Done) => (OutcomeKind::Done, None),
            Ok(Outcome::NoWork { reason }) => (OutcomeKind::NoWork, Some(reason)),
            Err(f)
                if f.kind == FailureKind::Transient
                    && report.attempt <= self.setup.opts.max_retries =>
            {
                tracing::warn!(unit = %self.plan.ids[index], attempt = report.attempt, "retrying after failure: {f}");
                self.retries += 1;
                self.graph.retry(index);
                return;
            }
            Err(f)
                if f.kind == FailureKind::OutOfMemory
                    && self
                        .setup
                        .isolation
                        .as_ref()
                        .is_some_and(|iso| iso.may_grow(report.attempt)) =>
            {
                tracing::warn!(unit = %self.plan.ids[index], attempt = report.attempt, "retrying with a larger memory limit: {f}");
                self.retries += 1;
                self.graph.retry(index);
                return;
            }
            Err(f) => (OutcomeKind::from(f.kind), Some(f.message)),
        };
        let success = outcome.is_success();
        let value = report.value.filter(|_| success);
        let memory_limits_mb = self.memory_limits.remove(&index).unwrap_or_default();
        self.append(LedgerRecord {
            unit: self.plan.ids[index].to_string(),
            outcome,
            attempts: report.attempt,
            rank,
            elapsed_s: report.elapsed_s,
            message,
            invocation: self.ledger.invocation(),
            time: unix_now(),
            value: value.as_ref().map(|v| BASE64.encode(v)),
            memory_limits_mb,
        });
        self.outcomes[index] = Some(outcome);
        if self.consumers_left[index] > 0 {
            self.values[index] = value;
        }
        let blocked = self.graph.finish(index, success);
        self.ended(index);
        self.record_blocked(blocked);
    }

    /// Records units that cannot run because an input failed.
    fn record_blocked(&mut self, blocked: Vec<(usize, usize)>) {
        for (unit, failed_input) in blocked {
            let message = format!(
                "not run: input unit {} failed ({})",
                self.plan.ids[failed_input],
                self.outcomes[failed_input].map_or("failed earlier", OutcomeKind::as_str)
            );
            self.outcomes[unit] = Some(OutcomeKind::DependencyFailed);
            self.append(LedgerRecord {
                unit: self.plan.ids[unit].to_string(),
                outcome: OutcomeKind::DependencyFailed,
                attempts: 0,
                rank: 0,
                elapsed_s: 0.0,
                message: Some(message),
                invocation: self.ledger.invocation(),
                time: unix_now(),
                value: None,
                memory_limits_mb: vec![],
            });
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

    /// Adds the units of unit lists dropped into the follow directory.
    fn take_lists(&mut self) {
        let Some(mut follow) = self.follow.take() else {
            return;
        };
        for path in follow.scan() {
            let planned = match parse_list::<S::Unit>(&path) {
                Ok(p) => p,
                Err(reason) => {
                    follow.reject(&path, reason);
                    continue;
                }
            };
            let first = self.plan.units.len();
            let indices = match self
                .plan
                .extend(self.stage.name(), planned, self.max_ranks, true)
            {
                Ok(i) => i,
                Err(reason) => {
                    follow.reject(&path, format!("{}: {reason}", path.display()));
                    continue;
                }
            };
            let (specs, selection) =
                self.plan
                    .node_specs(&indices, &self.previous, self.setup.retry_failed);
            match self.graph.add(specs) {
                Ok(blocked) => {
                    self.values.resize(self.plan.units.len(), None);
                    self.outcomes.resize(self.plan.units.len(), None);
                    self.consumers_left.resize(self.plan.units.len(), 0);
                    for &i in &indices {
                        for k in 0..self.plan.after[i].len() {
                            let input = self.plan.after[i][k];
                            self.consumers_left[input] += 1;
                        }
                        settle_from_ledger(
                            &self.previous,
                            self.plan.ids[i].as_str(),
                            &mut self.outcomes[i],
                            &mut self.values[i],
                        );
                    }
                    self.selection.to_run += selection.to_run;
                    self.selection.skipped_done += selection.skipped_done;
                    self.selection
                        .skipped_failed
                        .extend(selection.skipped_failed);
                    tracing::info!(
                        "{}: took {} new units from {}",
                        self.stage.name(),
                        selection.to_run,
                        path.display()
                    );
                    self.record_blocked(blocked);
                }
                Err(on_cycle) => {
                    let id = self.plan.ids[on_cycle].clone();
                    self.plan.truncate(first);
                    follow.reject(
                        &path,
                        format!("{}: unit {id} is on a dependency cycle", path.display()),
                    );
                }
            }
        }
        self.follow = Some(follow);
        self.serve_idle();
    }

    fn fail_ledger(&mut self, error: String) {
        tracing::error!("cannot write the ledger, stopping: {error}");
        self.ledger_error.get_or_insert(error);
        self.begin_stop();
    }

    fn begin_stop(&mut self) {
        if self.stopping_since.is_some() {
            return;
        }
        tracing::warn!(
            "stop requested: no new units; waiting up to {} s for {} running units",
            self.setup.opts.stop_grace_s,
            self.graph.in_flight()
        );
        self.stopping_since = Some(Instant::now());
        if let Some(reservation) = self.reservation.take() {
            self.graph.give_back(None, reservation.index);
            self.idle.extend(reservation.members);
        }
        if let Err(e) = self.ledger.commit() {
            self.ledger_error.get_or_insert(e.to_string());
        }
    }

    fn handle_ready(
        &mut self,
        rank: usize,
        reports: Vec<UnitReport>,
        returned: Vec<u64>,
        interrupted: bool,
    ) {
        for report in reports {
            let index = report.index as usize;
            self.graph.returned(rank, report.elapsed_s);
            let needed = self.graph.ranks_of(index);
            if needed == 1 {
                self.record(rank, report);
                continue;
            }
            let parts = self.multi_reports.entry(index).or_default();
            parts.push(report);
            if parts.len() == needed {
                let mut parts = self.multi_reports.remove(&index).expect("present");
                // The first failure if any, else rank 0's report (which carries the value).
                parts.sort_by_key(|p| (p.result.is_ok(), p.value.is_none()));
                let mut combined = parts.swap_remove(0);
                combined.elapsed_s = parts
                    .iter()
                    .map(|p| p.elapsed_s)
                    .fold(combined.elapsed_s, f64::max);
                self.record(rank, combined);
            }
        }
        for index in returned {
            self.graph.give_back(Some(rank), index as usize);
        }
        if interrupted {
            self.begin_stop();
        }
        self.serve(rank);
        self.serve_idle();
    }

    fn progress(&self, started: Instant) {
        let ended = self.results.len();
        let failed = self
            .results
            .iter()
            .filter(|r| !r.outcome.is_success())
            .count();
        let total = ended + self.graph.open();
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let rate = ended as f64 / elapsed;
        let eta = if rate > 0.0 {
            self.graph.open() as f64 / rate
        } else {
            f64::INFINITY
        };
        tracing::info!(
            "{}: {ended}/{total} units ended ({failed} failed), {} running, {rate:.1} units/s, ETA {}",
            self.stage.name(),
            self.graph.in_flight(),
            if eta.is_finite() {
                format!("{eta:.0} s")
            } else {
                "unknown".into()
            }
        );
        let snapshot = serde_json::json!({
            "stage": self.stage.name(),
            "invocation": self.ledger.invocation(),
            "time": unix_now(),
            "to_run": total,
            "ended": ended,
            "failed": failed,
            "running": self.graph.in_flight(),
            "pending": self.graph.open() - self.graph.in_flight().min(self.graph.open()),
            "rate_per_s": rate,
            "eta_s": if eta.is_finite() { Some(eta) } else { None },
            "ranks": self.size,
            "pid": std::process::id(),
        });
        let _ = write_atomic(
            &self.ledger.paths().progress,
            snapshot.to_string().as_bytes(),
            Durability::ProcessCrashOnly,
        );
    }
}

/// Rank 0: plan, dispatch, record, report. Returns the summary, or an error message when the
/// run could not start.
pub(crate) fn dispatcher<S: Stage>(
    stage: &S,
    comms: Comms,
    setup: &RunSetup<'_>,
) -> Result<RunSummary, String> {
    let Comms {
        world,
        units,
        threads_may_call_mpi,
    } = comms;
    let world = &world;
    let size = world.size() as usize;
    let max_ranks = if threads_may_call_mpi {
        size
    } else {
        size.saturating_sub(1).max(1)
    };
    let prepared = prepare(stage, setup, max_ranks);
    let (plan, ledger) = match prepared {
        Ok(p) => p,
        Err(e) => {
            stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
            return Err(e);
        }
    };
    let follow = match setup.follow.clone().map(Follow::new).transpose() {
        Ok(f) => f,
        Err(e) => {
            stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
            return Err(e);
        }
    };
    let previous = ledger.previous().clone();
    let all: Vec<usize> = (0..plan.units.len()).collect();
    let (specs, selection) = plan.node_specs(&all, &previous, setup.retry_failed);
    let (to_run, skipped_done, skipped_failed_count) = (
        selection.to_run,
        selection.skipped_done,
        selection.skipped_failed.len(),
    );
    let (graph, blocked) = match Graph::new(specs, size, setup.opts.schedule, setup.opts.max_batch)
    {
        Ok(g) => g,
        Err(on_cycle) => {
            stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
            return Err(format!(
                "{}: unit {} is on a dependency cycle",
                stage.name(),
                plan.ids[on_cycle]
            ));
        }
    };
    if let Err(e) =
        ledger.write_manifest(stage.name(), &stage.config_fingerprint(), plan.units.len())
    {
        stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
        return Err(e.to_string());
    }
    tracing::info!(
        "{}: {} units planned, {skipped_done} already done, {skipped_failed_count} failed earlier{}, {to_run} to run on {size} ranks",
        stage.name(),
        plan.units.len(),
        if setup.retry_failed {
            " (retried)"
        } else {
            " (not retried)"
        },
    );
    let n = plan.units.len();
    let mut values = vec![None; n];
    let mut outcomes = vec![None; n];
    let mut consumers_left = vec![0; n];
    for i in 0..n {
        for &a in &plan.after[i] {
            consumers_left[a] += 1;
        }
    }
    for (i, id) in plan.ids.iter().enumerate() {
        settle_from_ledger(&previous, id.as_str(), &mut outcomes[i], &mut values[i]);
    }
    let base = RankContext {
        run_dir: setup.run_dir.to_path_buf(),
        rank: 0,
        durable: setup.opts.fsync,
        isolation: setup.isolation.clone(),
    };
    let (local_tx, local_rx) = mpsc::channel::<LocalCommand<S::Unit>>();
    let (event_tx, event_rx) = mpsc::channel::<(Vec<UnitReport>, Vec<u64>, bool)>();
    let startup_s = setup.started.elapsed().as_secs_f64();
    let thread_comm = ThreadComm(units);

    std::thread::scope(|scope| {
        let local = scope.spawn(move || {
            let thread_comm = thread_comm;
            let mut stats = RankStats::default();
            loop {
                let (reports, returned) = match local_rx.recv() {
                    Ok(LocalCommand::Work(batch)) => {
                        run_batch(stage, batch, &base, signals::flag(), &mut stats)
                    }
                    Ok(LocalCommand::Multi(assignment, members, tag)) => {
                        let collectives = unit_collectives(&thread_comm.0, &members, tag);
                        (
                            vec![run_assignment(
                                stage,
                                assignment,
                                &base,
                                Some(Box::new(collectives)),
                                &mut stats,
                            )],
                            vec![],
                        )
                    }
                    Ok(LocalCommand::Stop) | Err(_) => break,
                };
                if event_tx
                    .send((reports, returned, signals::stop_requested()))
                    .is_err()
                {
                    break;
                }
            }
            stats
        });
        let mut d = Dispatcher {
            stage,
            setup,
            world,
            size,
            plan,
            ledger,
            graph,
            values,
            outcomes,
            consumers_left,
            idle: Vec::new(),
            reservation: None,
            multi_reports: HashMap::new(),
            memory_limits: HashMap::new(),
            previous,
            selection,
            max_ranks,
            follow,
            next_tag: 1,
            local_joins_multi: threads_may_call_mpi,
            results: Vec::new(),
            retries: 0,
            stopping_since: None,
            ledger_error: None,
            local_tx,
            first_dispatch: None,
            last_result: None,
        };
        d.record_blocked(blocked);
        let loop_start = Instant::now();
        d.take_lists();
        d.serve(0);
        let mut next_scan = Instant::now();
        let mut backoff = Backoff::new();
        let progress_every = Duration::from_secs_f64(setup.opts.progress_interval_s);
        let mut next_progress = Instant::now() + progress_every;
        let grace = Duration::from_secs_f64(setup.opts.stop_grace_s);
        let mut abandoned = false;
        loop {
            if d.follow.is_some() && Instant::now() >= next_scan {
                d.take_lists();
                next_scan = Instant::now() + Duration::from_millis(200);
            }
            let following =
                d.follow.as_ref().is_some_and(|f| !f.stopped) && d.stopping_since.is_none();
            let drained =
                d.graph.is_finished() || (d.stopping_since.is_some() && d.graph.in_flight() == 0);
            if drained && !following && d.idle.len() == size {
                break;
            }
            if signals::stop_requested() {
                d.begin_stop();
            }
            if d.stopping_since
                .is_some_and(|since| since.elapsed() > grace)
            {
                abandoned = true;
                break;
            }
            let mut busy = false;
            while let Some(matched) = world
                .any_process()
                .immediate_matched_probe_with_tag(TAG_TO_DISPATCHER)
            {
                let (bytes, status) = matched.matched_receive_vec::<u8>();
                let rank = status.source_rank() as usize;
                match postcard::from_bytes::<ToDispatcher>(&bytes) {
                    Ok(ToDispatcher::Ready {
                        reports,
                        returned,
                        interrupted,
                    }) => d.handle_ready(rank, reports, returned, interrupted),
                    Ok(ToDispatcher::Finished(_)) => {
                        panic!("rank 0: rank {rank} finished before it was stopped")
                    }
                    Err(e) => panic!("rank 0: undecodable message from rank {rank}: {e}"),
                }
                busy = true;
            }
            while let Ok((reports, returned, interrupted)) = event_rx.try_recv() {
                d.handle_ready(0, reports, returned, interrupted);
                busy = true;
            }
            if let Err(e) = d.ledger.commit_if_due() {
                d.fail_ledger(e.to_string());
            }
            if Instant::now() >= next_progress {
                d.progress(loop_start);
                next_progress = Instant::now() + progress_every;
            }
            if busy {
                backoff.reset();
            } else {
                backoff.wait();
            }
        }
        if let Err(e) = d.ledger.commit() {
            d.ledger_error.get_or_insert(e.to_string());
        }
        let interrupted = d.stopping_since.is_some();
        let makespan_s = match (d.first_dispatch, d.last_result) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let mut summary = RunSummary {
            stage: stage.name().to_string(),
            ranks: size,
            schedule: setup.opts.schedule,
            invocation: d.ledger.invocation(),
            planned: d.plan.units.len(),
            skipped_done: d.selection.skipped_done,
            skipped_failed: std::mem::take(&mut d.selection.skipped_failed),
            rejected_lists: d.follow.as_mut().map(Follow::finish).unwrap_or_default(),
            units: std::mem::take(&mut d.results),
            retries: d.retries,
            not_run: d.graph.open(),
            interrupted,
            startup_s,
            makespan_s,
            rank_stats: Vec::new(),
            retry_command: setup.retry_command.clone(),
        };
        if abandoned {
            // Units still running past the grace period: record what we have and leave
            // without waiting (their outputs, if any, are whole; they rerun on resume).
            write_report(setup.run_dir, &summary, setup.opts.fsync);
            eprint!("{}", summary.text());
            std::process::exit(i32::from(summary.exit_code()));
        }
        let exit_code = summary.exit_code();
        let _ = d.local_tx.send(LocalCommand::Stop);
        let mut idle = std::mem::take(&mut d.idle);
        idle.retain(|&r| r != 0);
        let mut stats = stop_workers(world, size, &mut idle, exit_code, false);
        let local_stats = local.join().expect("rank 0 worker thread");
        stats.push(RankStats {
            rank: 0,
            ..local_stats
        });
        stats.sort_by_key(|s| s.rank);
        summary.rank_stats = stats;
        if let Some(e) = d.ledger_error {
            return Err(format!("the ledger could not be written: {e}"));
        }
        Ok(summary)
    })
}

/// Sets a unit's outcome and value from its ledger record of an earlier invocation.
fn settle_from_ledger(
    previous: &HashMap<String, LedgerRecord>,
    id: &str,
    outcome: &mut Option<OutcomeKind>,
    value: &mut Option<Vec<u8>>,
) {
    if let Some(r) = previous.get(id) {
        *outcome = Some(r.outcome);
        if r.outcome.is_success() {
            *value = r.value.as_deref().and_then(|v| BASE64.decode(v).ok());
        }
    }
}

/// Opens the ledger and plans, on rank 0.
fn prepare<S: Stage>(
    stage: &S,
    setup: &RunSetup<'_>,
    max_ranks: usize,
) -> Result<(Plan<S::Unit>, Ledger), String> {
    let ledger = Ledger::open(
        setup.run_dir,
        stage.name(),
        &stage.config_fingerprint(),
        setup.allow_config_change,
        setup.opts.fsync,
        Duration::from_secs_f64(setup.opts.ledger_sync_interval_s),
    )
    .map_err(|e| e.to_string())?;
    remove_dead_files(setup.run_dir);
    let plan = plan_stage(stage, max_ranks)?;
    Ok((plan, ledger))
}

/// Stops every worker rank (1..size) and collects their statistics. `parked` lists ranks known
/// to be waiting for work; the others are waited for (they report first). With
/// `expect_hello`, workers have sent only their first Ready, which is consumed here.
fn stop_workers(
    world: &SimpleCommunicator,
    size: usize,
    parked: &mut Vec<usize>,
    exit_code: u8,
    expect_hello: bool,
) -> Vec<RankStats> {
    let mut backoff = Backoff::new();
    let stop = encode(&ToWorker::<()>::Stop { exit_code });
    if expect_hello {
        parked.clear();
        for _ in 1..size {
            let (_, rank) = receive(world, None, TAG_TO_DISPATCHER, &mut backoff);
            parked.push(rank as usize);
        }
    }
    for &rank in parked.iter() {
        world
            .process_at_rank(rank as i32)
            .send_with_tag(&stop[..], TAG_TO_WORKER);
    }
    let mut stats = Vec::new();
    let mut waiting = size - 1;
    while waiting > 0 {
        let (bytes, rank) = receive(world, None, TAG_TO_DISPATCHER, &mut backoff);
        match postcard::from_bytes::<ToDispatcher>(&bytes) {
            Ok(ToDispatcher::Finished(s)) => {
                stats.push(s);
                waiting -= 1;
            }
            Ok(ToDispatcher::Ready { .. }) => {
                // A worker that was not parked reports late: stop it too.
                world
                    .process_at_rank(rank)
                    .send_with_tag(&stop[..], TAG_TO_WORKER);
            }
            Err(e) => panic!("rank 0: undecodable message from rank {rank}: {e}"),
        }
    }
    stats
}

/// Writes `run-report.json` in the run directory (logging, not failing, on error).
pub(crate) fn write_report(run_dir: &Path, summary: &RunSummary, fsync: bool) {
    let report = serde_json::to_vec_pretty(&summary.report()).expect("report serialises");
    let durability = if fsync {
        Durability::Synced
    } else {
        Durability::ProcessCrashOnly
    };
    if let Err(e) = write_atomic(run_dir.join("run-report.json"), &report, durability) {
        tracing::error!("cannot write the run report: {e}");
    }
}

/// Removes the temporaries and isolation requests of writers on this machine that no longer
/// exist (a job killed earlier), now that this job holds the stage's ledger lock.
fn remove_dead_files(run_dir: &std::path::Path) {
    let removed = skypipe_io::remove_dead_temporaries(run_dir).unwrap_or_else(|e| {
        tracing::warn!(
            "cannot remove stale temporaries under {}: {e}",
            run_dir.display()
        );
        0
    }) + crate::isolation::remove_dead_scratch(run_dir);
    if removed > 0 {
        tracing::info!("removed {removed} temporary files left by killed jobs");
    }
}
