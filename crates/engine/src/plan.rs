//! Turning a stage's plan and the ledger into the list of units to run.

use crate::ledger::LedgerRecord;
use crate::report::UnitResult;
use skypipe_stage::{Stage, WorkUnit};
use std::collections::{HashMap, HashSet};

/// A stage's plan with its unit IDs.
pub(crate) struct Plan<U> {
    /// Units in submission order.
    pub units: Vec<U>,
    /// Their IDs (same order).
    pub ids: Vec<String>,
    /// Their cost hints (same order).
    pub hints: Vec<Option<f64>>,
}

/// Asks the stage for its units and checks that IDs are unique and hints are sane.
pub(crate) fn plan_stage<S: Stage>(stage: &S) -> Result<Plan<S::Unit>, String> {
    let planned = stage
        .plan()
        .map_err(|e| format!("{}: planning failed: {e}", stage.name()))?;
    let mut seen = HashSet::with_capacity(planned.len());
    let mut plan = Plan {
        units: Vec::with_capacity(planned.len()),
        ids: Vec::with_capacity(planned.len()),
        hints: Vec::with_capacity(planned.len()),
    };
    for p in planned {
        let id = p.unit.id().to_string();
        if !seen.insert(id.clone()) {
            return Err(format!("{}: the plan lists unit {id} twice", stage.name()));
        }
        if let Some(h) = p.cost_hint
            && !(h.is_finite() && h >= 0.0)
        {
            return Err(format!(
                "{}: unit {id} has an invalid cost hint {h}",
                stage.name()
            ));
        }
        plan.ids.push(id);
        plan.hints.push(p.cost_hint);
        plan.units.push(p.unit);
    }
    Ok(plan)
}

/// Which units this invocation runs, in dispatch order.
pub(crate) struct Selection {
    /// Plan indices to run: submission order, or by decreasing cost hint when hints are given.
    pub order: Vec<usize>,
    /// Units recorded done or no-work earlier.
    pub skipped_done: usize,
    /// Units recorded failed earlier and not retried now.
    pub skipped_failed: Vec<UnitResult>,
}

/// Skips units the ledger has finished (and failed ones unless `retry_failed`), and orders the
/// rest longest-first when the plan carries cost hints.
pub(crate) fn select(
    ids: &[String],
    hints: &[Option<f64>],
    previous: &HashMap<String, LedgerRecord>,
    retry_failed: bool,
) -> Selection {
    let mut order = Vec::with_capacity(ids.len());
    let mut skipped_done = 0;
    let mut skipped_failed = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match previous.get(id) {
            Some(r) if r.outcome.is_success() => skipped_done += 1,
            Some(r) if !retry_failed => skipped_failed.push(UnitResult::from(r)),
            _ => order.push(i),
        }
    }
    if hints.iter().any(Option::is_some) {
        // Stable: equal costs keep submission order.
        order.sort_by(|&a, &b| hints[b].unwrap_or(0.0).total_cmp(&hints[a].unwrap_or(0.0)));
    }
    Selection {
        order,
        skipped_done,
        skipped_failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_stage::OutcomeKind;

    fn rec(unit: &str, outcome: OutcomeKind) -> LedgerRecord {
        LedgerRecord {
            unit: unit.into(),
            outcome,
            attempts: 1,
            rank: 0,
            elapsed_s: 0.0,
            message: None,
            invocation: 1,
            time: 0.0,
        }
    }

    #[test]
    fn done_units_are_skipped_and_failed_ones_only_retried_on_request() {
        let ids: Vec<String> = ["a=1", "a=2", "a=3", "a=4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let prev: HashMap<String, LedgerRecord> = [
            ("a=1".to_string(), rec("a=1", OutcomeKind::Done)),
            ("a=2".to_string(), rec("a=2", OutcomeKind::NoWork)),
            ("a=3".to_string(), rec("a=3", OutcomeKind::BadInput)),
        ]
        .into_iter()
        .collect();
        let s = select(&ids, &[None; 4], &prev, false);
        assert_eq!(s.order, vec![3]);
        assert_eq!(s.skipped_done, 2);
        assert_eq!(s.skipped_failed.len(), 1);
        let s = select(&ids, &[None; 4], &prev, true);
        assert_eq!(s.order, vec![2, 3]);
        assert!(s.skipped_failed.is_empty());
    }

    #[test]
    fn hints_order_longest_first_and_keep_ties_in_submission_order() {
        let ids: Vec<String> = (0..5).map(|i| format!("a={i}")).collect();
        let hints = [Some(1.0), Some(5.0), Some(1.0), Some(9.0), None];
        let s = select(&ids, &hints, &HashMap::new(), false);
        assert_eq!(s.order, vec![3, 1, 0, 2, 4]);
    }
}
