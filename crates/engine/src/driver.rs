//! The SPMD run: rank 0 dispatches (its main thread) and works (a second thread); every other
//! rank works. Only this module, `collectives` and `launch` touch MPI.

use crate::collectives::MpiCollectives;
use crate::error::RunError;
use crate::execute::{RankContext, run_assignment, run_batch};
use crate::follow::Follow;
use crate::graph::Next;
use crate::ledger::Ledger;
use crate::options::RunOptions;
use crate::plan::{Plan, plan_stages};
use crate::protocol::{
    RankStats, TAG_TO_DISPATCHER, TAG_TO_WORKER, ToDispatcher, ToWorker, UnitReport,
};
use crate::report::{EXIT_CANNOT_START, RunSummary};
use crate::reservation::Reservation;
use crate::signals;
use crate::stages::StageSet;
use crate::state::{RunState, StateSetup};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::Serialize;
use skypipe_io::{Durability, write_atomic};
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
    /// Not `--no-verify`: rerun done units whose recorded outputs changed.
    pub verify: bool,
    /// `--allow-config-change`.
    pub allow_config_change: bool,
    /// When the process started (for the start-up time).
    pub started: Instant,
    /// The command that retries failures.
    pub retry_command: String,
    /// The command as given (it resumes an interrupted run).
    pub resume_command: String,
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

/// Where a worker gets its work and sends its reports: MPI messages with rank 0 for ranks
/// > 0, channels with the dispatcher for rank 0's worker thread.
trait DispatcherLink {
    /// The next message (blocks).
    fn receive(&mut self) -> ToWorker;
    /// Sends a message to the dispatcher; false when it is gone.
    fn send(&mut self, message: ToDispatcher) -> bool;
}

/// A remote rank's link: MPI point-to-point with rank 0, polled with a backoff.
struct MpiLink<'a> {
    world: &'a SimpleCommunicator,
    rank: usize,
    backoff: Backoff,
}

impl DispatcherLink for MpiLink<'_> {
    fn receive(&mut self) -> ToWorker {
        let (bytes, _) = receive(self.world, Some(0), TAG_TO_WORKER, &mut self.backoff);
        postcard::from_bytes(&bytes).unwrap_or_else(|e| {
            panic!(
                "rank {}: undecodable message from the dispatcher: {e}",
                self.rank
            )
        })
    }

    fn send(&mut self, message: ToDispatcher) -> bool {
        self.world
            .process_at_rank(0)
            .send_with_tag(&encode(&message)[..], TAG_TO_DISPATCHER);
        true
    }
}

/// Rank 0's worker thread's link: channels with the dispatcher on the main thread.
struct LocalLink {
    commands: mpsc::Receiver<ToWorker>,
    events: mpsc::Sender<ToDispatcher>,
}

impl DispatcherLink for LocalLink {
    fn receive(&mut self) -> ToWorker {
        self.commands
            .recv()
            .unwrap_or(ToWorker::Stop { exit_code: 0 })
    }

    fn send(&mut self, message: ToDispatcher) -> bool {
        self.events.send(message).is_ok()
    }
}

/// The worker loop of every rank (rank 0's in its second thread): say hello, then run what
/// the dispatcher sends and report, until told to stop. `units` is the communicator that
/// multi-rank units split. Returns this rank's statistics and the job's exit code.
fn work(
    stages: &StageSet<'_>,
    link: &mut dyn DispatcherLink,
    units: &SimpleCommunicator,
    base: &RankContext,
) -> (RankStats, u8) {
    let mut stats = RankStats {
        rank: base.rank,
        ..RankStats::default()
    };
    let mut message = ToDispatcher::Ready {
        reports: vec![],
        returned: vec![],
        interrupted: false,
    };
    loop {
        if !link.send(message) {
            return (stats, 0);
        }
        let (reports, returned) = match link.receive() {
            ToWorker::Work(batch) => run_batch(stages, batch, base, signals::flag(), &mut stats),
            ToWorker::Multi {
                assignment,
                members,
                tag,
            } => {
                let collectives = unit_collectives(units, &members, tag);
                let report = run_assignment(
                    stages,
                    assignment,
                    base,
                    Some(Box::new(collectives)),
                    &mut stats,
                );
                (vec![report], vec![])
            }
            ToWorker::Stop { exit_code } => return (stats, exit_code),
        };
        message = ToDispatcher::Ready {
            reports,
            returned,
            interrupted: signals::stop_requested(),
        };
    }
}

/// A worker rank (> 0): ask, run, report, until told to stop. Returns the job's exit code.
pub(crate) fn worker(stages: &StageSet<'_>, comms: &Comms, base: &RankContext) -> u8 {
    let mut link = MpiLink {
        world: &comms.world,
        rank: base.rank,
        backoff: Backoff::new(),
    };
    let (stats, exit_code) = work(stages, &mut link, &comms.units, base);
    link.send(ToDispatcher::Finished(stats));
    exit_code
}

/// The dispatcher on rank 0's main thread: hands out work and passes reports to the run
/// state; it owns the transport (who is idle, multi-rank reservations, messages).
struct Dispatcher<'a> {
    state: RunState<'a>,
    setup: &'a RunSetup<'a>,
    world: &'a SimpleCommunicator,
    size: usize,
    idle: Vec<usize>,
    reservation: Option<Reservation>,
    /// Most ranks one unit may get.
    max_ranks: usize,
    /// Follow mode.
    follow: Option<Follow>,
    next_tag: i32,
    local_joins_multi: bool,
    stopping_since: Option<Instant>,
    local_tx: mpsc::Sender<ToWorker>,
    first_dispatch: Option<Instant>,
    last_result: Option<Instant>,
    /// Per rank, when it was last given work it has not reported yet.
    busy_since: Vec<Option<Instant>>,
    /// Per rank, seconds from being given work to reporting it, summed.
    busy_s: Vec<f64>,
    /// Per rank, units given to it.
    attempted: Vec<u64>,
    /// Per rank, whether it is running a multi-rank unit.
    in_multi: Vec<bool>,
}

impl Dispatcher<'_> {
    fn send(&mut self, rank: usize, message: ToWorker) {
        let now = Instant::now();
        self.first_dispatch.get_or_insert(now);
        let given = match &message {
            ToWorker::Work(assignments) => assignments.len() as u64,
            ToWorker::Multi { .. } => 1,
            ToWorker::Stop { .. } => 0,
        };
        if given > 0 {
            self.attempted[rank] += given;
            self.busy_since[rank].get_or_insert(now);
        }
        if rank == 0 {
            let _ = self.local_tx.send(message);
            return;
        }
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
            && reservation.admits(rank)
        {
            reservation.join(rank);
            self.launch_if_complete();
            return;
        }
        match self.state.next(rank) {
            Next::Batch(batch) if !batch.is_empty() => {
                let assignments = batch
                    .into_iter()
                    .map(|(index, attempt)| self.state.assignment(index, attempt))
                    .collect();
                self.send(rank, ToWorker::Work(assignments));
            }
            Next::Multi(index, attempt) if may_join && self.reservation.is_none() => {
                let preferred = self.state.preferred_ranks(index);
                let local_joins_multi = self.local_joins_multi;
                let in_multi = &self.in_multi;
                self.reservation = Some(Reservation::new(
                    index,
                    attempt,
                    self.state.graph.ranks_of(index),
                    &preferred,
                    |r| (r != 0 || local_joins_multi) && !in_multi[r],
                ));
                // This rank and the parked ones join if admitted, or take other work.
                self.idle.push(rank);
                for other in std::mem::take(&mut self.idle) {
                    self.serve(other);
                }
                self.launch_if_complete();
            }
            Next::Multi(index, _) => {
                self.state.graph.give_back(None, index);
                self.idle.push(rank);
            }
            Next::Batch(_) | Next::Nothing => self.idle.push(rank),
        }
    }

    fn launch_if_complete(&mut self) {
        let Some(reservation) = &self.reservation else {
            return;
        };
        if !reservation.is_complete() {
            return;
        }
        let reservation = self.reservation.take().expect("checked");
        let mut members: Vec<i32> = reservation.members.iter().map(|&r| r as i32).collect();
        members.sort_unstable();
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) & 0x3fff_ffff;
        tracing::debug!(unit = %self.state.plan.label(self.state.stages, reservation.index), ?members, "starting a multi-rank unit");
        for &rank in &members {
            self.state.graph.start_on(rank as usize);
            self.in_multi[rank as usize] = true;
            let assignment = self
                .state
                .assignment(reservation.index, reservation.attempt);
            self.send(
                rank as usize,
                ToWorker::Multi {
                    assignment,
                    members: members.clone(),
                    tag,
                },
            );
        }
    }

    /// Hands newly ready work to parked ranks.
    fn serve_idle(&mut self) {
        if self.stopping_since.is_some()
            || (self.state.graph.ready() == 0 && self.reservation.is_none())
        {
            return;
        }
        for rank in std::mem::take(&mut self.idle) {
            self.serve(rank);
        }
    }

    /// Adds the units of unit lists dropped into the follow directory.
    fn take_lists(&mut self) {
        let Some(mut follow) = self.follow.take() else {
            return;
        };
        let mut added = false;
        for path in follow.scan() {
            match self
                .state
                .add_list(&path, self.setup.run_dir, self.max_ranks)
            {
                Ok(to_run) => {
                    added = true;
                    tracing::info!(
                        "{}: took {to_run} new units from {}",
                        self.state.stages.run_name(),
                        path.display()
                    );
                }
                Err(reason) => follow.reject(&path, reason.to_string()),
            }
        }
        // The manifest counts every planned unit, those of unit lists included, so that
        // `skypipe-status` sees how many are pending.
        if added && let Err(e) = self.state.write_manifests() {
            tracing::warn!("cannot update the manifest: {e}");
        }
        self.follow = Some(follow);
        self.check_ledger();
        self.serve_idle();
    }

    /// Stops the run when a ledger could not be written.
    fn check_ledger(&mut self) {
        if let Some(error) = &self.state.ledger_error
            && self.stopping_since.is_none()
        {
            tracing::error!("cannot write the ledger, stopping: {error}");
            self.begin_stop();
        }
    }

    /// Per-rank busy time as rank 0 sees it (from giving a rank work to its report), a rank
    /// still working counted up to now: the figures of a run left before every rank reported.
    fn dispatcher_stats(&self) -> Vec<RankStats> {
        (0..self.size)
            .map(|rank| RankStats {
                rank,
                busy_s: self.busy_s[rank]
                    + self.busy_since[rank].map_or(0.0, |t| t.elapsed().as_secs_f64()),
                units: self.attempted[rank],
            })
            .collect()
    }

    fn begin_stop(&mut self) {
        if self.stopping_since.is_some() {
            return;
        }
        tracing::warn!(
            "stop requested: no new units; waiting up to {} s for {} running units",
            self.setup.opts.stop_grace_s,
            self.state.graph.in_flight()
        );
        self.stopping_since = Some(Instant::now());
        if let Some(reservation) = self.reservation.take() {
            self.state.graph.give_back(None, reservation.index);
            self.idle.extend(reservation.members);
        }
        self.state.commit();
    }

    fn handle_ready(
        &mut self,
        rank: usize,
        reports: Vec<UnitReport>,
        returned: Vec<u64>,
        interrupted: bool,
    ) {
        if let Some(since) = self.busy_since[rank].take() {
            self.busy_s[rank] += since.elapsed().as_secs_f64();
        }
        self.in_multi[rank] = false;
        for report in reports {
            self.last_result = Some(Instant::now());
            self.state.report(rank, report);
        }
        for index in returned {
            self.state.graph.give_back(Some(rank), index as usize);
        }
        self.check_ledger();
        if interrupted {
            self.begin_stop();
        }
        self.serve(rank);
        self.serve_idle();
    }

    fn progress(&self, started: Instant) {
        let ended = self.state.results.len();
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let rate = ended as f64 / elapsed;
        let open = self.state.graph.open();
        let eta = (rate > 0.0).then(|| open as f64 / rate);
        let (ended, failed, total) = self.state.write_progress(rate, eta, self.size);
        tracing::info!(
            "{}: {ended}/{total} units ended ({failed} failed), {} running, {rate:.1} units/s, ETA {}",
            self.state.stages.run_name(),
            self.state.graph.in_flight(),
            eta.map_or("unknown".to_string(), |e| format!("{e:.0} s"))
        );
    }
}

/// Rank 0: plan, dispatch, record, report. Returns the summary, or why the run could not
/// start or had to stop.
pub(crate) fn dispatcher(
    stages: &StageSet<'_>,
    comms: Comms,
    setup: &RunSetup<'_>,
) -> Result<RunSummary, RunError> {
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
    let cannot_start = |e: RunError| {
        stop_workers(world, size, &mut Vec::new(), EXIT_CANNOT_START, true);
        Err(e)
    };
    if stages.is_chain() && setup.follow.is_some() {
        return cannot_start(RunError::FollowChain);
    }
    let (plan, ledgers) = match prepare(stages, setup, max_ranks) {
        Ok(p) => p,
        Err(e) => return cannot_start(e),
    };
    let follow = match setup.follow.clone().map(Follow::new).transpose() {
        Ok(f) => f,
        Err(e) => return cannot_start(e),
    };
    let state_setup = StateSetup {
        size,
        schedule: setup.opts.schedule,
        max_batch: setup.opts.max_batch,
        retry_failed: setup.retry_failed,
        verify: setup.verify,
        max_retries: setup.opts.max_retries,
        isolation: setup.isolation.clone(),
    };
    let state = match RunState::new(stages, plan, ledgers, state_setup) {
        Ok(s) => s,
        Err(e) => return cannot_start(e.into()),
    };
    if let Err(e) = state.write_manifests() {
        return cannot_start(e.into());
    }
    let selection = &state.selection;
    tracing::info!(
        "{}: {} units planned, {} already done, {} failed earlier{}, {} failed at planning (input missing or failed), {} to run on {size} ranks",
        stages.run_name(),
        state.plan.units.len(),
        selection.skipped_done,
        selection.failed_earlier,
        if setup.retry_failed {
            " (retried)"
        } else {
            " (not retried)"
        },
        state.results.len(),
        selection.to_run,
    );
    let base = RankContext {
        run_dir: setup.run_dir.to_path_buf(),
        rank: 0,
        durable: setup.opts.fsync,
        isolation: setup.isolation.clone(),
        isolated_child: false,
    };
    let (local_tx, local_rx) = mpsc::channel::<ToWorker>();
    let (event_tx, event_rx) = mpsc::channel::<ToDispatcher>();
    let startup_s = setup.started.elapsed().as_secs_f64();
    let thread_comm = ThreadComm(units);

    std::thread::scope(|scope| {
        let local = scope.spawn(move || {
            let thread_comm = thread_comm;
            let mut link = LocalLink {
                commands: local_rx,
                events: event_tx,
            };
            work(stages, &mut link, &thread_comm.0, &base).0
        });
        let mut d = Dispatcher {
            state,
            setup,
            world,
            size,
            idle: Vec::new(),
            reservation: None,
            max_ranks,
            follow,
            next_tag: 1,
            local_joins_multi: threads_may_call_mpi,
            stopping_since: None,
            local_tx,
            first_dispatch: None,
            last_result: None,
            busy_since: vec![None; size],
            busy_s: vec![0.0; size],
            attempted: vec![0; size],
            in_multi: vec![false; size],
        };
        d.check_ledger();
        let loop_start = Instant::now();
        d.take_lists();
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
            let drained = d.state.graph.is_finished()
                || (d.stopping_since.is_some() && d.state.graph.in_flight() == 0);
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
            while let Ok(message) = event_rx.try_recv() {
                if let ToDispatcher::Ready {
                    reports,
                    returned,
                    interrupted,
                } = message
                {
                    d.handle_ready(0, reports, returned, interrupted);
                }
                busy = true;
            }
            d.state.commit_if_due();
            d.check_ledger();
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
        d.state.commit();
        let interrupted = d.stopping_since.is_some();
        // An interrupted run ends when it stops, not at its last result (a multi-rank unit
        // can run long after it).
        let end = if interrupted {
            Some(Instant::now())
        } else {
            d.last_result
        };
        let makespan_s = match (d.first_dispatch, end) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let mut summary = RunSummary {
            stage: stages.run_name().to_string(),
            stages: stages.names().map(str::to_string).collect(),
            ranks: size,
            schedule: setup.opts.schedule,
            invocation: d.state.invocation(),
            planned: d.state.plan.units.len(),
            skipped_done: d.state.selection.skipped_done,
            outputs_changed: d.state.selection.outputs_changed,
            inputs_remade: d.state.selection.inputs_remade,
            skipped_failed: std::mem::take(&mut d.state.selection.skipped_failed),
            rejected_lists: d.follow.as_mut().map(Follow::finish).unwrap_or_default(),
            units: std::mem::take(&mut d.state.results),
            retries: d.state.retries,
            not_run: d.state.graph.open(),
            interrupted,
            startup_s,
            makespan_s,
            rank_stats: Vec::new(),
            retry_command: setup.retry_command.clone(),
            resume_command: setup.resume_command.clone(),
        };
        if abandoned {
            // Units still running past the grace period: record what we have and leave
            // without waiting (their outputs, if any, are whole; they rerun on resume).
            summary.rank_stats = d.dispatcher_stats();
            write_report(setup.run_dir, &summary, setup.opts.fsync);
            eprint!("{}", summary.text());
            std::process::exit(i32::from(summary.exit_code()));
        }
        let exit_code = summary.exit_code();
        let _ = d.local_tx.send(ToWorker::Stop { exit_code });
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
        if let Some(e) = d.state.ledger_error {
            return Err(RunError::LedgerWrite(e));
        }
        Ok(summary)
    })
}

/// Opens every stage instance's ledger and plans, on rank 0.
fn prepare(
    stages: &StageSet<'_>,
    setup: &RunSetup<'_>,
    max_ranks: usize,
) -> Result<(Plan, Vec<Ledger>), RunError> {
    stages.check()?;
    let ledgers = stages
        .instances
        .iter()
        .map(|inst| {
            Ledger::open(
                setup.run_dir,
                &inst.name,
                &inst.stage.fingerprint(),
                setup.allow_config_change,
                setup.opts.fsync,
                Duration::from_secs_f64(setup.opts.ledger_sync_interval_s),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    remove_dead_files(setup.run_dir);
    let plan = plan_stages(stages, setup.run_dir, max_ranks)?;
    Ok((plan, ledgers))
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
    let stop = encode(&ToWorker::Stop { exit_code });
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

/// Writes `run-report.json` in the run directory, in a chain run each stage's part as
/// `ledger/<stage>.report.json`, and the run's timeline `timeline.svg` (logging, not failing,
/// on error).
pub(crate) fn write_report(run_dir: &Path, summary: &RunSummary, fsync: bool) {
    let durability = if fsync {
        Durability::Synced
    } else {
        Durability::ProcessCrashOnly
    };
    let report = summary.report();
    if report.stages.len() > 1 {
        for part in &report.stages {
            let path = crate::ledger::LedgerPaths::new(run_dir, &part.stage).report;
            let bytes = serde_json::to_vec_pretty(part).expect("report serialises");
            if let Err(e) = write_atomic(&path, &bytes, durability) {
                tracing::error!("cannot write {}: {e}", path.display());
            }
        }
    }
    let bytes = serde_json::to_vec_pretty(&report).expect("report serialises");
    if let Err(e) = write_atomic(run_dir.join("run-report.json"), &bytes, durability) {
        tracing::error!("cannot write the run report: {e}");
    }
    // The picture of where every rank worked and idled (`RUN_DIR/timeline.svg`).
    if let Err(e) = skypipe_status::timeline::write_run_timeline(run_dir) {
        tracing::warn!("cannot draw the run's timeline: {e}");
    }
}

/// Removes the temporaries and isolation requests of writers on this machine that no longer
/// exist (a job killed earlier), now that this job holds its stages' ledger locks.
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
