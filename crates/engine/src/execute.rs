//! Running units on whichever rank: timing, panics, tracing spans.

use crate::protocol::{Assignment, RankStats, UnitReport};
use skypipe_stage::{FailureKind, Outcome, Stage, UnitContext, UnitFailure, WorkUnit};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Runs one unit, turning a panic into a bad-input failure; returns the result and seconds.
pub(crate) fn run_unit<S: Stage>(
    stage: &S,
    unit: &S::Unit,
    ctx: &UnitContext,
) -> (Result<Outcome, UnitFailure>, f64) {
    let span = tracing::debug_span!("unit", stage = stage.name(), rank = ctx.rank, unit = %unit.id(), attempt = ctx.attempt);
    let _entered = span.enter();
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

/// Runs a batch in order; once `stop` is set, the units not yet started are returned unrun.
pub(crate) fn run_batch<S: Stage>(
    stage: &S,
    batch: Vec<Assignment<S::Unit>>,
    base: &UnitContext,
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
        let ctx = UnitContext {
            attempt: assignment.attempt,
            ..base.clone()
        };
        let (result, elapsed_s) = run_unit(stage, &assignment.unit, &ctx);
        stats.busy_s += elapsed_s;
        stats.units += 1;
        reports.push(UnitReport {
            index: assignment.index,
            attempt: assignment.attempt,
            result,
            elapsed_s,
        });
    }
    (reports, returned)
}
