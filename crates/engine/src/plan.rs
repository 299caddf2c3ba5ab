//! Turning a stage's plan and the ledger into the graph of units to run.

use crate::graph::NodeSpec;
use crate::ledger::LedgerRecord;
use crate::report::UnitResult;
use skypipe_stage::{ALL_RANKS, PlannedUnit, Stage, UnitId, WorkUnit};
use std::collections::HashMap;

/// A stage's plan, checked: unique IDs, known dependencies, sane hints and rank counts.
pub(crate) struct Plan<U> {
    /// Units in submission order.
    pub units: Vec<U>,
    /// Their IDs.
    pub ids: Vec<UnitId>,
    /// Cost hints.
    pub hints: Vec<Option<f64>>,
    /// Indices of the units each one runs after.
    pub after: Vec<Vec<usize>>,
    /// Ranks each one needs.
    pub ranks: Vec<usize>,
    /// Whether each one runs after failed inputs too.
    pub tolerant: Vec<bool>,
    /// Index of each ID.
    pub index: HashMap<UnitId, usize>,
}

impl<U: WorkUnit> Plan<U> {
    /// An empty plan.
    pub fn empty() -> Self {
        Self {
            units: Vec::new(),
            ids: Vec::new(),
            hints: Vec::new(),
            after: Vec::new(),
            ranks: Vec::new(),
            tolerant: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Appends planned units. `max_ranks` is the most ranks a multi-rank unit can get.
    /// Returns the indices added, or an error naming the offending unit. With
    /// `skip_known`, units whose ID is already planned are ignored (a unit list added twice).
    pub fn extend(
        &mut self,
        stage: &str,
        planned: Vec<PlannedUnit<U>>,
        max_ranks: usize,
        skip_known: bool,
    ) -> Result<Vec<usize>, String> {
        let first = self.units.len();
        let mut fresh = Vec::with_capacity(planned.len());
        for p in planned {
            let id = p.unit.id();
            if self.index.contains_key(&id) {
                if skip_known {
                    continue;
                }
                self.rollback(first);
                return Err(format!("{stage}: the plan lists unit {id} twice"));
            }
            if let Some(h) = p.cost_hint
                && !(h.is_finite() && h >= 0.0)
            {
                self.rollback(first);
                return Err(format!("{stage}: unit {id} has an invalid cost hint {h}"));
            }
            let ranks = if p.ranks == ALL_RANKS {
                max_ranks
            } else {
                p.ranks
            };
            if ranks == 0 || ranks > max_ranks {
                self.rollback(first);
                return Err(format!(
                    "{stage}: unit {id} needs {} ranks, but this job can give a unit at most {max_ranks}",
                    p.ranks
                ));
            }
            self.index.insert(id.clone(), self.units.len());
            self.ids.push(id);
            self.hints.push(p.cost_hint);
            self.ranks.push(ranks);
            self.tolerant.push(p.tolerate_failed_inputs);
            self.after.push(Vec::new());
            self.units.push(p.unit);
            fresh.push(p.after);
        }
        for (k, after) in fresh.into_iter().enumerate() {
            let i = first + k;
            let mut deps = Vec::with_capacity(after.len());
            for a in after {
                match self.index.get(&a) {
                    Some(&d) if d != i => deps.push(d),
                    Some(_) => {
                        let id = self.ids[i].clone();
                        self.rollback(first);
                        return Err(format!("{stage}: unit {id} runs after itself"));
                    }
                    None => {
                        let id = self.ids[i].clone();
                        self.rollback(first);
                        return Err(format!(
                            "{stage}: unit {id} runs after unit {a}, which is not in the plan"
                        ));
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
            self.after[i] = deps;
        }
        Ok((first..self.units.len()).collect())
    }

    /// Forgets units from `len` on (a list that could not be added).
    pub fn truncate(&mut self, len: usize) {
        self.rollback(len);
    }

    fn rollback(&mut self, len: usize) {
        for id in self.ids.drain(len..) {
            self.index.remove(&id);
        }
        self.units.truncate(len);
        self.hints.truncate(len);
        self.after.truncate(len);
        self.ranks.truncate(len);
        self.tolerant.truncate(len);
    }

    /// Graph nodes for `indices`, settled from the ledger: units recorded done or no-work are
    /// not rerun, failed ones only with `retry_failed`.
    pub fn node_specs(
        &self,
        indices: &[usize],
        previous: &HashMap<String, LedgerRecord>,
        retry_failed: bool,
    ) -> (Vec<NodeSpec>, Selection) {
        let mut selection = Selection::default();
        let specs = indices
            .iter()
            .map(|&i| {
                let prior = match previous.get(self.ids[i].as_str()) {
                    Some(r) if r.outcome.is_success() => {
                        selection.skipped_done += 1;
                        Some(true)
                    }
                    Some(r) if !retry_failed => {
                        selection.skipped_failed.push(UnitResult::from(r));
                        Some(false)
                    }
                    _ => {
                        selection.to_run += 1;
                        None
                    }
                };
                NodeSpec {
                    after: self.after[i].clone(),
                    ranks: self.ranks[i],
                    hint: self.hints[i],
                    tolerant: self.tolerant[i],
                    prior,
                }
            })
            .collect();
        (specs, selection)
    }
}

/// What the ledger says about the planned units.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Units to run now.
    pub to_run: usize,
    /// Units recorded done or no-work earlier.
    pub skipped_done: usize,
    /// Units recorded failed earlier and not retried now.
    pub skipped_failed: Vec<UnitResult>,
}

/// Asks the stage for its units and checks them.
pub(crate) fn plan_stage<S: Stage>(stage: &S, max_ranks: usize) -> Result<Plan<S::Unit>, String> {
    let planned = stage
        .plan()
        .map_err(|e| format!("{}: planning failed: {e}", stage.name()))?;
    let mut plan = Plan::empty();
    plan.extend(stage.name(), planned, max_ranks, false)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use skypipe_stage::OutcomeKind;

    #[derive(Clone, Serialize, Deserialize)]
    struct U(u32);
    impl WorkUnit for U {
        fn id(&self) -> UnitId {
            UnitId::new().with("u", self.0)
        }
    }

    fn id(i: u32) -> UnitId {
        U(i).id()
    }

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
            value: None,
            memory_limits_mb: vec![],
        }
    }

    #[test]
    fn dependencies_resolve_and_bad_plans_are_refused_whole() {
        let mut plan = Plan::empty();
        let units = vec![
            PlannedUnit::new(U(0)),
            PlannedUnit::new(U(1)).after([id(0), id(0)]),
            PlannedUnit::new(U(2)).on_ranks(2),
            PlannedUnit::new(U(6)).on_all_ranks(),
        ];
        assert_eq!(plan.extend("s", units, 2, false).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(plan.after[1], vec![0]);
        assert_eq!(plan.ranks[3], 2, "all ranks resolves to the job's");
        let err = plan
            .extend("s", vec![PlannedUnit::new(U(3)).after([id(9)])], 2, false)
            .unwrap_err();
        assert!(
            err.contains("u=3 runs after unit u=9, which is not in the plan"),
            "{err}"
        );
        assert_eq!(plan.units.len(), 4, "a refused list adds nothing");
        let err = plan
            .extend("s", vec![PlannedUnit::new(U(4)).on_ranks(3)], 2, false)
            .unwrap_err();
        assert!(err.contains("needs 3 ranks"), "{err}");
        assert!(
            plan.extend("s", vec![PlannedUnit::new(U(0))], 2, false)
                .unwrap_err()
                .contains("twice")
        );
        assert_eq!(
            plan.extend(
                "s",
                vec![PlannedUnit::new(U(0)), PlannedUnit::new(U(5))],
                2,
                true
            )
            .unwrap(),
            vec![4]
        );
    }

    #[test]
    fn ledger_settles_done_units_and_failed_ones_unless_retried() {
        let mut plan = Plan::empty();
        plan.extend(
            "s",
            (0..4).map(|i| PlannedUnit::new(U(i))).collect(),
            1,
            false,
        )
        .unwrap();
        let prev: HashMap<String, LedgerRecord> = [
            ("u=0".to_string(), rec("u=0", OutcomeKind::Done)),
            ("u=1".to_string(), rec("u=1", OutcomeKind::NoWork)),
            ("u=2".to_string(), rec("u=2", OutcomeKind::BadInput)),
        ]
        .into_iter()
        .collect();
        let (specs, s) = plan.node_specs(&[0, 1, 2, 3], &prev, false);
        assert_eq!(
            specs.iter().map(|s| s.prior).collect::<Vec<_>>(),
            vec![Some(true), Some(true), Some(false), None]
        );
        assert_eq!(
            (s.skipped_done, s.skipped_failed.len(), s.to_run),
            (2, 1, 1)
        );
        let (specs, s) = plan.node_specs(&[0, 1, 2, 3], &prev, true);
        assert_eq!(specs[2].prior, None);
        assert_eq!(s.to_run, 2);
    }
}
