//! Running units on whichever rank: timing, panics, tracing spans, values.

use crate::isolation::{Isolation, run_isolated};
use crate::protocol::{Assignment, RankStats, UnitReport};
use skypipe_stage::{Collectives, FailureKind, Outcome, Stage, UnitContext, UnitFailure, WorkUnit};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The parts of a unit's context that are the same for every unit on a rank.
#[derive(Debug, Clone)]
pub(crate) struct RankContext {
    /// Run directory.
    pub run_dir: PathBuf,
    /// This rank.
    pub rank: usize,
    /// Whether outputs are fsynced.
    pub durable: bool,
    /// Run single-rank units in memory-limited child processes.
    pub isolation: Option<Arc<Isolation>>,
}

/// Runs one unit, turning a panic into a bad-input failure; returns the result and seconds.
pub(crate) fn run_unit<S: Stage>(
    stage: &S,
    unit: &S::Unit,
    ctx: &UnitContext,
) -> (Result<Outcome, UnitFailure>, f64) {
    let span = tracing::debug_span!("unit", stage = stage.name(), rank = ctx.rank, unit = %unit.id(), attempt = ctx.attempt);
    let _entered = span.enter();
    let estimate = stage.memory_estimate_mb(unit);
    let _limit = skypipe_io::limits::MemoryLimitScope::enter(estimate.map(|mb| mb << 20));
    let start = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| stage.run(unit, ctx))) {
        Ok(result) => result,
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            Err(UnitFailure {
                kind: FailureKind::BadInput,
                message: format!("panicked: {text}"),
            })
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    match &result {
        Ok(_) => tracing::debug!(elapsed_s = elapsed, "unit finished"),
        Err(f) => tracing::warn!(elapsed_s = elapsed, "unit failed: {f}"),
    }
    (result, elapsed)
}

/// Runs one assignment (with collectives for a multi-rank unit) and reports it.
pub(crate) fn run_assignment<S: Stage>(
    stage: &S,
    assignment: Assignment<S::Unit>,
    base: &RankContext,
    collectives: Option<Box<dyn Collectives>>,
    stats: &mut RankStats,
) -> UnitReport {
    let keep_value = collectives.as_ref().is_none_or(|c| c.rank() == 0);
    let mut ctx = UnitContext::new(
        assignment.attempt,
        base.run_dir.clone(),
        base.rank,
        base.durable,
    )
    .with_inputs(assignment.inputs);
    if let Some(c) = collectives {
        ctx = ctx.with_collectives(c);
    }
    let (result, elapsed_s) = run_unit(stage, &assignment.unit, &ctx);
    stats.busy_s += elapsed_s;
    stats.units += 1;
    let value = ctx.take_value().filter(|_| keep_value && result.is_ok());
    UnitReport {
        index: assignment.index,
        attempt: assignment.attempt,
        result,
        elapsed_s,
        value,
        memory_limit_mb: None,
    }
}

/// Runs a batch in order; once `stop` is set, the units not yet started are returned unrun.
pub(crate) fn run_batch<S: Stage>(
    stage: &S,
    batch: Vec<Assignment<S::Unit>>,
    base: &RankContext,
    stop: &AtomicBool,
    stats: &mut RankStats,
) -> (Vec<UnitReport>, Vec<u64>) {
    let mut reports = Vec::with_capacity(batch.len());
    let mut returned = Vec::new();
    for assignment in batch {
        if stop.load(Ordering::Relaxed) {
            returned.push(assignment.index);
            continue;
        }
        match &base.isolation {
            Some(iso) => {
                let index = assignment.index;
                match run_isolated(iso, assignment, base, stats) {
                    Some(report) => reports.push(report),
                    None => returned.push(index),
                }
            }
            None => reports.push(run_assignment(stage, assignment, base, None, stats)),
        }
    }
    (reports, returned)
}
