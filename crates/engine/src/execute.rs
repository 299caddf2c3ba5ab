//! Running units on whichever rank: timing, panics, tracing spans, values.

use crate::isolation::{Isolation, run_isolated};
use crate::ledger::unix_now;
use crate::protocol::{Assignment, RankStats, UnitReport};
use crate::stages::{ErasedUnit, StageSet};
use skypipe_stage::{Collectives, FailureKind, Outcome, UnitContext, UnitFailure, UnitId};
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
    /// This process is an isolated unit's child: its address-space limit, not the unit's
    /// declared estimate, bounds what file readers may read.
    pub isolated_child: bool,
}

/// Runs one unit, turning a panic into a bad-input failure; returns the result and seconds.
/// With `reads_within_estimate`, file readers refuse reads beyond the unit's memory estimate.
pub(crate) fn run_unit(
    stages: &StageSet<'_>,
    unit: &ErasedUnit,
    id: &UnitId,
    ctx: &UnitContext,
    reads_within_estimate: bool,
) -> (Result<Outcome, UnitFailure>, f64) {
    let instance = &stages.instances[unit.instance as usize];
    let span = tracing::debug_span!("unit", stage = %instance.name, rank = ctx.rank, unit = %id, attempt = ctx.attempt);
    let _entered = span.enter();
    let start = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| {
        instance
            .stage
            .run_erased(&unit.bytes, ctx, reads_within_estimate)
    })) {
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
pub(crate) fn run_assignment(
    stages: &StageSet<'_>,
    assignment: Assignment,
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
    .with_inputs(assignment.inputs)
    .with_unproduced_inputs(assignment.unproduced);
    if let Some(c) = collectives {
        ctx = ctx.with_collectives(c);
    }
    let started = unix_now();
    let (result, elapsed_s) = run_unit(
        stages,
        &assignment.unit,
        &assignment.id,
        &ctx,
        !base.isolated_child,
    );
    stats.busy_s += elapsed_s;
    stats.units += 1;
    let value = ctx.take_value().filter(|_| keep_value && result.is_ok());
    UnitReport {
        index: assignment.index,
        attempt: assignment.attempt,
        result,
        started,
        elapsed_s,
        value,
        memory_limit_mb: None,
    }
}

/// Runs a batch in order; once `stop` is set, the units not yet started are returned unrun.
pub(crate) fn run_batch(
    stages: &StageSet<'_>,
    batch: Vec<Assignment>,
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
                let estimate = stages.memory_estimate_mb(&assignment.unit);
                match run_isolated(iso, assignment, estimate, base, stats) {
                    Some(report) => reports.push(report),
                    None => returned.push(index),
                }
            }
            None => reports.push(run_assignment(stages, assignment, base, None, stats)),
        }
    }
    (reports, returned)
}
