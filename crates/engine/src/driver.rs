//! The SPMD run: rank 0 dispatches (its main thread) and works (a second thread); every other
//! rank works. Only this module and `launch` touch MPI.

use crate::execute::run_batch;
use crate::ledger::{Ledger, LedgerRecord, unix_now};
use crate::options::RunOptions;
use crate::plan::{Plan, plan_stage, select};
use crate::protocol::{
    Assignment, RankStats, TAG_TO_DISPATCHER, TAG_TO_WORKER, ToDispatcher, ToWorker, UnitReport,
};
use crate::queue::WorkQueue;
use crate::report::{EXIT_CANNOT_START, RunSummary, UnitResult};
use crate::signals;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::Serialize;
use skypipe_io::{Durability, write_atomic};
use skypipe_stage::{OutcomeKind, Stage, UnitContext};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the run needs besides the stage.
pub(crate) struct RunSetup<'a> {
    /// Engine options, already merged with the command line.
    pub opts: &'a RunOptions,
    /// Run directory.
    pub run_dir: &'a std::path::Path,
    /// `--retry-failed`.
    pub retry_failed: bool,
    /// `--allow-config-change`.
    pub allow_config_change: bool,
    /// When the process started (for the start-up time).
    pub started: Instant,
    /// The command that retries failures.
    pub retry_command: String,
}

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

/// A worker rank (> 0): ask, run, report, until told to stop. Returns the job's exit code.
pub(crate) fn worker<S: Stage>(
    stage: &S,
    world: &SimpleCommunicator,
    run_dir: &std::path::Path,
    durable: bool,
) -> u8 {
    let rank = world.rank() as usize;
    let base = UnitContext {
        attempt: 1,
        run_dir: run_dir.to_path_buf(),
        rank,
        durable,
    };
    let dispatcher = world.process_at_rank(0);
    let mut stats = RankStats {
        rank,
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
            panic!("rank {rank}: undecodable message from the dispatcher: {e}")
        });
        match message {
            ToWorker::Work(batch) => {
                let (reports, returned) =
                    run_batch(stage, batch, &base, signals::flag(), &mut stats);
                let reply = ToDispatcher::Ready {
                    reports,
                    returned,
                    interrupted: signals::stop_requested(),
                };
                dispatcher.send_with_tag(&encode(&reply)[..], TAG_TO_DISPATCHER);
            }
            ToWorker::Stop { exit_code } => {
                dispatcher.send_with_tag(
                    &encode(&ToDispatcher::Finished(stats))[..],
                    TAG_TO_DISPATCHER,
                );
                return exit_code;
            }
        }
    }
}

/// Commands to rank 0's own worker thread.
enum LocalCommand<U> {
    Work(Vec<Assignment<U>>),
    Stop,
}

/// Everything the dispatcher tracks while the run is under way.
struct Dispatcher<'a, S: Stage> {
    stage: &'a S,
    setup: &'a RunSetup<'a>,
    world: &'a SimpleCommunicator,
    plan: Plan<S::Unit>,
    ledger: Ledger,
    queue: WorkQueue,
    idle: Vec<usize>,
    results: Vec<UnitResult>,
    retries: usize,
    stopping_since: Option<Instant>,
    ledger_error: Option<String>,
    local_tx: mpsc::Sender<LocalCommand<S::Unit>>,
    first_dispatch: Option<Instant>,
    last_result: Option<Instant>,
}

impl<S: Stage> Dispatcher<'_, S> {
    fn send_batch(&mut self, rank: usize, batch: Vec<(usize, u32)>) {
        self.first_dispatch.get_or_insert_with(Instant::now);
        let assignments: Vec<Assignment<S::Unit>> = batch
            .into_iter()
            .map(|(index, attempt)| Assignment {
                index: index as u64,
                attempt,
                unit: self.plan.units[index].clone(),
            })
            .collect();
        if rank == 0 {
            let _ = self.local_tx.send(LocalCommand::Work(assignments));
        } else {
            let bytes = encode(&ToWorker::Work(assignments));
            self.world
                .process_at_rank(rank as i32)
                .send_with_tag(&bytes[..], TAG_TO_WORKER);
        }
    }

    /// Gives `rank` its next batch, or parks it.
    fn serve(&mut self, rank: usize) {
        if self.stopping_since.is_none() {
            let batch = self.queue.next_batch(rank);
            if !batch.is_empty() {
                self.send_batch(rank, batch);
                return;
            }
        }
        self.idle.push(rank);
    }

    /// Hands newly queued work (retries) to parked ranks.
    fn serve_idle(&mut self) {
        if self.stopping_since.is_some() || self.queue.pending() == 0 {
            return;
        }
        for rank in std::mem::take(&mut self.idle) {
            self.serve(rank);
        }
    }

    fn record(&mut self, rank: usize, report: UnitReport) {
        let index = report.index as usize;
        self.queue.complete(rank, report.elapsed_s);
        self.last_result = Some(Instant::now());
        let (outcome, message) = match report.result {
            Ok(o) => {
                let kind = OutcomeKind::from(&o);
                let reason = match o {
                    skypipe_stage::Outcome::NoWork { reason } => Some(reason),
                    skypipe_stage::Outcome::Done => None,
                };
                (kind, reason)
            }
            Err(f) if f.kind.is_retryable() && report.attempt <= self.setup.opts.max_retries => {
                tracing::warn!(
                    unit = %self.plan.ids[index],
                    attempt = report.attempt,
                    "retrying after failure: {f}"
                );
                self.retries += 1;
                self.queue.retry(rank, index);
                return;
            }
            Err(f) => (OutcomeKind::from(f.kind), Some(f.message)),
        };
        let record = LedgerRecord {
            unit: self.plan.ids[index].clone(),
            outcome,
            attempts: report.attempt,
            rank,
            elapsed_s: report.elapsed_s,
            message,
            invocation: self.ledger.invocation(),
            time: unix_now(),
        };
        if let Err(e) = self.ledger.append(&record) {
            self.fail_ledger(e.to_string());
        }
        self.results.push(UnitResult::from(&record));
    }

    fn fail_ledger(&mut self, error: String) {
        tracing::error!("cannot write the ledger, stopping: {error}");
        self.ledger_error.get_or_insert(error);
        self.begin_stop();
    }

    fn begin_stop(&mut self) {
        if self.stopping_since.is_none() {
            tracing::warn!(
                "stop requested: no new units; waiting up to {} s for {} running units",
                self.setup.opts.stop_grace_s,
                self.queue.in_flight()
            );
            self.stopping_since = Some(Instant::now());
            if let Err(e) = self.ledger.commit() {
                self.ledger_error.get_or_insert(e.to_string());
            }
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
            self.record(rank, report);
        }
        for index in returned {
            self.queue.give_back(rank, index as usize);
        }
        if interrupted {
            self.begin_stop();
        }
        self.serve(rank);
        self.serve_idle();
    }

    fn progress(&self, started: Instant) {
        let done = self.results.len();
        let failed = self
            .results
            .iter()
            .filter(|r| !r.outcome.is_success())
            .count();
        let total = done + self.queue.pending() + self.queue.in_flight();
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed;
        let left = total - done;
        let eta = if rate > 0.0 {
            left as f64 / rate
        } else {
            f64::INFINITY
        };
        tracing::info!(
            "{}: {done}/{total} units ended ({failed} failed), {} running, {rate:.1} units/s, ETA {}",
            self.stage.name(),
            self.queue.in_flight(),
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
            "ended": done,
            "failed": failed,
            "running": self.queue.in_flight(),
            "pending": self.queue.pending(),
            "rate_per_s": rate,
            "eta_s": if eta.is_finite() { Some(eta) } else { None },
            "ranks": self.world.size(),
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
    world: &SimpleCommunicator,
    setup: &RunSetup<'_>,
) -> Result<RunSummary, String> {
    let size = world.size() as usize;
    let prepared = prepare(stage, setup);
    let (plan, ledger) = match prepared {
        Ok(p) => p,
        Err(e) => {
            stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
            return Err(e);
        }
    };
    let selection = select(
        &plan.ids,
        &plan.hints,
        ledger.previous(),
        setup.retry_failed,
    );
    if let Err(e) =
        ledger.write_manifest(stage.name(), &stage.config_fingerprint(), plan.units.len())
    {
        stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
        return Err(e.to_string());
    }
    tracing::info!(
        "{}: {} units planned, {} already done, {} failed earlier{}, {} to run on {size} ranks",
        stage.name(),
        plan.units.len(),
        selection.skipped_done,
        selection.skipped_failed.len(),
        if setup.retry_failed {
            " (retried)"
        } else {
            " (not retried)"
        },
        selection.order.len()
    );
    let total_units = plan.units.len();
    let queue = WorkQueue::new(selection.order, total_units, size, setup.opts.schedule);
    let base = UnitContext {
        attempt: 1,
        run_dir: setup.run_dir.to_path_buf(),
        rank: 0,
        durable: setup.opts.fsync,
    };
    let (local_tx, local_rx) = mpsc::channel::<LocalCommand<S::Unit>>();
    let (event_tx, event_rx) = mpsc::channel::<(Vec<UnitReport>, Vec<u64>, bool)>();
    let startup_s = setup.started.elapsed().as_secs_f64();

    std::thread::scope(|scope| {
        let local = scope.spawn(move || {
            let mut stats = RankStats::default();
            while let Ok(LocalCommand::Work(batch)) = local_rx.recv() {
                let (reports, returned) =
                    run_batch(stage, batch, &base, signals::flag(), &mut stats);
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
            plan,
            ledger,
            queue,
            idle: Vec::new(),
            results: Vec::new(),
            retries: 0,
            stopping_since: None,
            ledger_error: None,
            local_tx,
            first_dispatch: None,
            last_result: None,
        };
        let loop_start = Instant::now();
        d.serve(0);
        let mut backoff = Backoff::new();
        let progress_every = Duration::from_secs_f64(setup.opts.progress_interval_s);
        let mut next_progress = Instant::now() + progress_every;
        let grace = Duration::from_secs_f64(setup.opts.stop_grace_s);
        let mut abandoned = false;
        loop {
            let drained =
                d.queue.is_finished() || (d.stopping_since.is_some() && d.queue.in_flight() == 0);
            if drained && d.idle.len() == size {
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
            planned: total_units,
            skipped_done: selection.skipped_done,
            skipped_failed: selection.skipped_failed,
            units: std::mem::take(&mut d.results),
            retries: d.retries,
            not_run: d.queue.pending() + d.queue.in_flight(),
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

/// Opens the ledger and plans, on rank 0.
fn prepare<S: Stage>(stage: &S, setup: &RunSetup<'_>) -> Result<(Plan<S::Unit>, Ledger), String> {
    let ledger = Ledger::open(
        setup.run_dir,
        stage.name(),
        &stage.config_fingerprint(),
        setup.allow_config_change,
        setup.opts.fsync,
        Duration::from_secs_f64(setup.opts.ledger_sync_interval_s),
    )
    .map_err(|e| e.to_string())?;
    let plan = plan_stage(stage)?;
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
pub(crate) fn write_report(run_dir: &std::path::Path, summary: &RunSummary, fsync: bool) {
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
