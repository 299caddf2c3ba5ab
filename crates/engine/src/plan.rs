//! Turning the stages' plans and the ledgers into the graph of units to run.
//!
//! Each stage instance plans its own units; units of one instance may run after each other
//! (`PlannedUnit::after`, values passed). Across instances, units are joined by their declared
//! files ([`skypipe_stage::Connections`]): a unit that reads a file runs after the unit that
//! writes it. Before anything runs, every input must be written by a planned unit or be on
//! disk: a missing file of a type that some stage of the run produces is a planning error
//! (the chain is mis-wired); a missing raw input fails only the unit that reads it.

use crate::graph::NodeSpec;
use crate::ledger::LedgerRecord;
use crate::report::UnitResult;
use crate::stages::{ErasedPlanned, ErasedUnit, StageSet};
use skypipe_stage::{ALL_RANKS, Connections, OutcomeKind, UnitId};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The run's plan, checked: unique IDs per stage instance, known dependencies, sane hints and
/// rank counts, inputs matched to the units that write them.
#[derive(Default)]
pub(crate) struct Plan {
    /// Units in submission order.
    pub units: Vec<ErasedUnit>,
    /// Their IDs (within their stage instance).
    pub ids: Vec<UnitId>,
    /// Cost hints.
    pub hints: Vec<Option<f64>>,
    /// Indices of the units each one runs after by its stage's plan (their values reach it).
    pub after: Vec<Vec<usize>>,
    /// Indices of the units that write files each one reads (order only, no values).
    pub needs: Vec<Vec<usize>>,
    /// Ranks each one needs.
    pub ranks: Vec<usize>,
    /// Whether each one's ranks are a cap its stage set (`PlannedUnit::on_up_to_ranks`),
    /// already resolved in `ranks` against the job.
    pub capped: Vec<bool>,
    /// Whether each one runs after failed inputs too.
    pub tolerant: Vec<bool>,
    /// Indices of the units whose ranks each one prefers (its stage's affinity hint).
    pub affinity: Vec<Vec<usize>>,
    /// Declared files of each unit.
    pub connections: Vec<Connections>,
    /// Index of each (instance, ID).
    pub index: HashMap<(u32, UnitId), usize>,
    /// The unit writing each declared output file.
    producers: HashMap<PathBuf, usize>,
    /// Dataset types some planned unit writes.
    kinds_produced: HashSet<String>,
    /// Units that cannot run because an input file is missing: bad-input for a missing
    /// prerequisite, dependency-failed for another stage's missing product; with the reason.
    pub missing_inputs: HashMap<usize, (OutcomeKind, String)>,
}

impl Plan {
    /// The instance of unit `i`.
    pub fn instance(&self, i: usize) -> usize {
        self.units[i].instance as usize
    }

    /// Appends planned units of stage instance `instance` (named `stage`). `max_ranks` is the
    /// most ranks a multi-rank unit can get. Returns the indices added, or an error naming the
    /// offending unit. With `skip_known`, units whose ID is already planned are ignored (a
    /// unit list added twice).
    pub fn extend(
        &mut self,
        instance: usize,
        stage: &str,
        planned: Vec<ErasedPlanned>,
        max_ranks: usize,
        skip_known: bool,
    ) -> Result<Vec<usize>, PlanningError> {
        let first = self.units.len();
        let inst = instance as u32;
        let mut fresh = Vec::with_capacity(planned.len());
        for ErasedPlanned {
            id,
            planned: p,
            connections,
        } in planned
        {
            if self.index.contains_key(&(inst, id.clone())) {
                if skip_known {
                    continue;
                }
                self.rollback(first);
                return Err(PlanningError::Twice {
                    stage: stage.to_string(),
                    id,
                });
            }
            if let Some(h) = p.cost_hint
                && !(h.is_finite() && h >= 0.0)
            {
                self.rollback(first);
                return Err(PlanningError::CostHint {
                    stage: stage.to_string(),
                    id,
                    hint: h,
                });
            }
            let ranks = resolved_ranks(p.ranks, p.ranks_capped, max_ranks);
            if ranks == 0 || ranks > max_ranks {
                self.rollback(first);
                return Err(PlanningError::TooManyRanks {
                    stage: stage.to_string(),
                    id,
                    ranks: p.ranks,
                    max_ranks,
                });
            }
            self.index.insert((inst, id.clone()), self.units.len());
            self.ids.push(id);
            self.hints.push(p.cost_hint);
            self.ranks.push(ranks);
            self.capped.push(p.ranks_capped);
            self.tolerant.push(p.tolerate_failed_inputs);
            self.after.push(Vec::new());
            self.affinity.push(Vec::new());
            self.needs.push(Vec::new());
            self.connections.push(connections);
            self.units.push(ErasedUnit {
                instance: inst,
                bytes: p.unit,
            });
            fresh.push((p.after, p.affinity));
        }
        for (k, (after, affinity)) in fresh.into_iter().enumerate() {
            let i = first + k;
            let mut deps = Vec::with_capacity(after.len());
            for a in after {
                match self.index.get(&(inst, a.clone())) {
                    Some(&d) if d != i => deps.push(d),
                    Some(_) => {
                        let id = self.ids[i].clone();
                        self.rollback(first);
                        return Err(PlanningError::AfterItself {
                            stage: stage.to_string(),
                            id,
                        });
                    }
                    None => {
                        let id = self.ids[i].clone();
                        self.rollback(first);
                        return Err(PlanningError::AfterUnplanned {
                            stage: stage.to_string(),
                            id,
                            after: a,
                        });
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
            self.after[i] = deps;
            let mut preferred = Vec::with_capacity(affinity.len());
            for a in affinity {
                match self.index.get(&(inst, a.clone())) {
                    Some(&d) => preferred.push(d),
                    None => {
                        let id = self.ids[i].clone();
                        self.rollback(first);
                        return Err(PlanningError::AffinityUnplanned {
                            stage: stage.to_string(),
                            id,
                            preferred: a,
                        });
                    }
                }
            }
            preferred.sort_unstable();
            preferred.dedup();
            self.affinity[i] = preferred;
        }
        Ok((first..self.units.len()).collect())
    }

    /// Joins the units `from..` to the units that write the files they read (paths made
    /// absolute, without resolving links, before they are compared), and checks
    /// that every input exists or will exist. A missing input whose type a planned unit
    /// produces is an error naming the unit and file (nothing is added); any other missing
    /// input marks the reading unit in [`Plan::missing_inputs`].
    pub fn connect(&mut self, set: &StageSet<'_>, from: usize) -> Result<(), PlanningError> {
        for c in &mut self.connections[from..] {
            for d in c.inputs.iter_mut().chain(c.outputs.iter_mut()) {
                if let Ok(abs) = std::path::absolute(&d.path) {
                    d.path = abs;
                }
            }
        }
        let mut producers = self.producers.clone();
        let mut kinds = self.kinds_produced.clone();
        for i in from..self.units.len() {
            for out in &self.connections[i].outputs {
                if let Some(&other) = producers.get(&out.path) {
                    return Err(PlanningError::SharedOutput {
                        first: self.label(set, other),
                        second: self.label(set, i),
                        path: out.path.clone(),
                    });
                }
                producers.insert(out.path.clone(), i);
                kinds.insert(out.kind.clone());
            }
        }
        let mut needs: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut missing = Vec::new();
        for i in from..self.units.len() {
            let mut deps = Vec::new();
            for input in &self.connections[i].inputs {
                match producers.get(&input.path) {
                    Some(&p) if p != i => deps.push(p),
                    Some(_) => {}
                    None if input.path.exists() => {}
                    None if kinds.contains(&input.kind) => {
                        return Err(PlanningError::MissingProduct {
                            unit: self.label(set, i),
                            path: input.path.clone(),
                            kind: input.kind.clone(),
                        });
                    }
                    None if input.prerequisite => missing.push((
                        i,
                        OutcomeKind::BadInput,
                        format!(
                            "input file missing: {} ({})",
                            input.path.display(),
                            input.kind
                        ),
                    )),
                    None => missing.push((
                        i,
                        OutcomeKind::DependencyFailed,
                        format!(
                            "{}: {} missing (its stage is not in this run: run it first; did its unit fail?)",
                            input.path.display(),
                            input.kind
                        ),
                    )),
                }
            }
            deps.sort_unstable();
            deps.dedup();
            deps.retain(|d| !self.after[i].contains(d));
            needs.push((i, deps));
        }
        for (i, deps) in needs {
            self.needs[i] = deps;
        }
        for (i, kind, reason) in missing {
            self.missing_inputs.entry(i).or_insert((kind, reason));
        }
        self.producers = producers;
        self.kinds_produced = kinds;
        Ok(())
    }

    /// The planned unit that writes `path` (an absolute path, as connections hold them).
    pub fn producer(&self, path: &Path) -> Option<usize> {
        self.producers.get(path).copied()
    }

    /// `NAME[ID]` in a chain, `ID` alone otherwise.
    pub fn label(&self, set: &StageSet<'_>, i: usize) -> String {
        set.label(self.instance(i), &self.ids[i])
    }

    /// Forgets units from `len` on (a list that could not be added).
    pub fn truncate(&mut self, len: usize) {
        self.rollback(len);
    }

    fn rollback(&mut self, len: usize) {
        for (k, id) in self.ids.drain(len..).enumerate() {
            self.index.remove(&(self.units[len + k].instance, id));
        }
        self.units.truncate(len);
        self.hints.truncate(len);
        self.after.truncate(len);
        self.affinity.truncate(len);
        self.needs.truncate(len);
        self.ranks.truncate(len);
        self.capped.truncate(len);
        self.tolerant.truncate(len);
        self.connections.truncate(len);
        self.missing_inputs.retain(|&i, _| i < len);
    }

    /// Graph nodes for `indices`, settled from the ledgers (`previous[instance]`): units
    /// recorded done or no-work are not rerun, failed ones only with `retry_failed`; units
    /// with a missing input fail now (listed in the selection) unless settled.
    ///
    /// With `verify`, a unit recorded done whose recorded outputs are gone or have another
    /// size is run again (one warning per unit naming the first such file), and so is every
    /// unit recorded done that reads a file of a unit run again (writers come before their
    /// readers in plan order).
    pub fn node_specs(
        &self,
        set: &StageSet<'_>,
        indices: &[usize],
        previous: &[HashMap<String, LedgerRecord>],
        retry_failed: bool,
        verify: bool,
    ) -> (Vec<NodeSpec>, Selection) {
        let mut selection = Selection::default();
        let mut remade = std::collections::HashSet::new();
        let specs = indices
            .iter()
            .map(|&i| {
                let inst = self.instance(i);
                let record = previous[inst].get(self.ids[i].as_str());
                let rerun = verify
                    && record.is_some_and(|r| r.outcome.is_success())
                    && self.outputs_changed(set, i, record, &remade, &mut selection);
                if rerun {
                    remade.insert(i);
                }
                let prior = match record.filter(|_| !rerun) {
                    Some(r) if r.outcome.is_success() => {
                        selection.skipped_done += 1;
                        Some(true)
                    }
                    Some(r) if !retry_failed => {
                        selection.failed_earlier += 1;
                        let mut result = UnitResult::from(r);
                        result.unit = self.label(set, i);
                        selection.skipped_failed.push(result);
                        Some(false)
                    }
                    earlier => {
                        // A failure recorded earlier, retried now (or no record at all).
                        selection.failed_earlier += usize::from(earlier.is_some());
                        match self.missing_inputs.get(&i) {
                            Some((kind, reason)) => {
                                selection.missing.push((i, *kind, reason.clone()));
                                Some(false)
                            }
                            None => {
                                selection.to_run += 1;
                                None
                            }
                        }
                    }
                };
                let mut after = self.after[i].clone();
                after.extend_from_slice(&self.needs[i]);
                NodeSpec {
                    after,
                    ranks: self.ranks[i],
                    hint: self.hints[i],
                    tolerant: self.tolerant[i],
                    prior,
                }
            })
            .collect();
        (specs, selection)
    }

    /// Whether unit `i`, recorded done, must be made again: a recorded output is gone or
    /// has another size, or it reads a file of a unit in `remade`. Logs why.
    fn outputs_changed(
        &self,
        set: &StageSet<'_>,
        i: usize,
        record: Option<&LedgerRecord>,
        remade: &std::collections::HashSet<usize>,
        selection: &mut Selection,
    ) -> bool {
        let changed = record
            .map(LedgerRecord::changed_outputs)
            .unwrap_or_default();
        if let Some((first, problem)) = changed.first() {
            selection.outputs_changed += 1;
            tracing::warn!(
                unit = %self.label(set, i),
                "recorded done, but {} of its {} recorded outputs changed ({}: {problem}): running it again",
                changed.len(),
                record.map_or(0, |r| r.outputs.len()),
                first.path.display(),
            );
            return true;
        }
        if let Some(&upstream) = self.needs[i].iter().find(|u| remade.contains(u)) {
            selection.inputs_remade += 1;
            tracing::warn!(
                unit = %self.label(set, i),
                "recorded done, but its input from {} is made again: running it again",
                self.label(set, upstream),
            );
            return true;
        }
        false
    }
}

/// A plan the engine refuses before any unit runs; each names the stage instance or unit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanningError {
    /// A stage could not plan.
    #[error("{stage}: planning failed: {source}")]
    Stage {
        /// The stage instance.
        stage: String,
        /// The stage's error.
        #[source]
        source: skypipe_stage::PlanError,
    },
    /// A unit ID is planned twice by one stage instance.
    #[error("{stage}: the plan lists unit {id} twice")]
    Twice {
        /// The stage instance.
        stage: String,
        /// The unit.
        id: UnitId,
    },
    /// A cost hint is negative or not finite.
    #[error("{stage}: unit {id} has an invalid cost hint {}", crate::follow::readable_number(*.hint))]
    CostHint {
        /// The stage instance.
        stage: String,
        /// The unit.
        id: UnitId,
        /// The hint.
        hint: f64,
    },
    /// A unit needs more ranks than the job can give it (or none).
    #[error(
        "{stage}: unit {id} needs {ranks} ranks, but this job can give a unit at most {max_ranks}"
    )]
    TooManyRanks {
        /// The stage instance.
        stage: String,
        /// The unit.
        id: UnitId,
        /// The ranks it asks for.
        ranks: usize,
        /// The most ranks a unit can get.
        max_ranks: usize,
    },
    /// A unit runs after itself.
    #[error("{stage}: unit {id} runs after itself")]
    AfterItself {
        /// The stage instance.
        stage: String,
        /// The unit.
        id: UnitId,
    },
    /// A unit runs after a unit that is not planned.
    #[error("{stage}: unit {id} runs after unit {after}, which is not in the plan")]
    AfterUnplanned {
        /// The stage instance.
        stage: String,
        /// The unit.
        id: UnitId,
        /// The unit it runs after.
        after: UnitId,
    },
    /// A unit prefers the ranks of a unit that is not planned.
    #[error("{stage}: unit {id} prefers the ranks of unit {preferred}, which is not in the plan")]
    AffinityUnplanned {
        /// The stage instance.
        stage: String,
        /// The unit.
        id: UnitId,
        /// The unit whose ranks it prefers.
        preferred: UnitId,
    },
    /// Two units declare the same output file.
    #[error("{first} and {second} both write {}", .path.display())]
    SharedOutput {
        /// The unit planned first.
        first: String,
        /// The unit planned second.
        second: String,
        /// The file.
        path: PathBuf,
    },
    /// A unit reads a file of a type some planned unit produces, but no planned unit writes
    /// this one and it does not exist (the chain is mis-wired).
    #[error(
        "{unit} reads {} ({kind}), which no planned unit writes and which does not exist",
        .path.display()
    )]
    MissingProduct {
        /// The reading unit.
        unit: String,
        /// The file.
        path: PathBuf,
        /// Its dataset type.
        kind: String,
    },
    /// The units' dependencies form a cycle.
    #[error("{run}: unit {unit} is on a dependency cycle")]
    Cycle {
        /// The run's name (a stage's, or `chain`).
        run: String,
        /// A unit on the cycle.
        unit: String,
    },
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
    /// Units recorded failed earlier, retried now or not.
    pub failed_earlier: usize,
    /// Units recorded done whose recorded outputs are gone or changed size (run again).
    pub outputs_changed: usize,
    /// Units recorded done that read a file of a unit run again (run again).
    pub inputs_remade: usize,
    /// Units failed now, before running, because an input file is missing: how and why.
    pub missing: Vec<(usize, OutcomeKind, String)>,
}

/// The ranks a unit planned with `ranks` gets from a job that can give a unit at most
/// `max_ranks`: every one for [`ALL_RANKS`], at most `max_ranks` for a cap
/// (`PlannedUnit::on_up_to_ranks`), else exactly `ranks` (checked by the caller).
fn resolved_ranks(ranks: usize, capped: bool, max_ranks: usize) -> usize {
    if ranks == ALL_RANKS {
        max_ranks
    } else if capped {
        ranks.min(max_ranks)
    } else {
        ranks
    }
}

/// Asks every stage instance for its units, joins them by their files and checks them.
pub(crate) fn plan_stages(
    set: &StageSet<'_>,
    run_dir: &std::path::Path,
    max_ranks: usize,
) -> Result<Plan, PlanningError> {
    let mut plan = Plan::default();
    for (k, inst) in set.instances.iter().enumerate() {
        let planned = inst
            .stage
            .plan_erased(run_dir)
            .map_err(|source| PlanningError::Stage {
                stage: inst.name.clone(),
                source,
            })?;
        plan.extend(k, &inst.name, planned, max_ranks, false)?;
    }
    plan.connect(set, 0)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Files, U};
    use skypipe_stage::{OutcomeKind, PlannedUnit, WorkUnit};

    fn id(i: u32) -> UnitId {
        U(i).id()
    }

    fn erased(units: Vec<PlannedUnit<U>>) -> Vec<ErasedPlanned> {
        units
            .into_iter()
            .map(|p| ErasedPlanned {
                id: p.unit.id(),
                connections: Connections::new(),
                planned: PlannedUnit {
                    unit: postcard::to_stdvec(&p.unit).unwrap(),
                    cost_hint: p.cost_hint,
                    after: p.after,
                    ranks: p.ranks,
                    ranks_capped: p.ranks_capped,
                    tolerate_failed_inputs: p.tolerate_failed_inputs,
                    affinity: p.affinity,
                },
            })
            .collect()
    }

    fn rec(unit: &str, outcome: OutcomeKind) -> LedgerRecord {
        let mut r = LedgerRecord::new(unit, outcome, None, 1);
        r.attempts = 1;
        r
    }

    #[test]
    fn dependencies_resolve_and_bad_plans_are_refused_whole() {
        let mut plan = Plan::default();
        let units = vec![
            PlannedUnit::new(U(0)),
            PlannedUnit::new(U(1)).after([id(0), id(0)]),
            PlannedUnit::new(U(2)).on_ranks(2),
            PlannedUnit::new(U(6)).on_all_ranks(),
        ];
        assert_eq!(
            plan.extend(0, "s", erased(units), 2, false).unwrap(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(plan.after[1], vec![0]);
        assert_eq!(plan.ranks[3], 2, "all ranks resolves to the job's");
        let err = plan
            .extend(
                0,
                "s",
                erased(vec![PlannedUnit::new(U(3)).after([id(9)])]),
                2,
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("u=3 runs after unit u=9, which is not in the plan"),
            "{err}"
        );
        assert_eq!(plan.units.len(), 4, "a refused list adds nothing");
        let err = plan
            .extend(
                0,
                "s",
                erased(vec![PlannedUnit::new(U(4)).on_ranks(3)]),
                2,
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 3 ranks"), "{err}");
        assert!(matches!(
            plan.extend(0, "s", erased(vec![PlannedUnit::new(U(0))]), 2, false),
            Err(PlanningError::Twice { .. })
        ));
        assert_eq!(
            plan.extend(
                0,
                "s",
                erased(vec![PlannedUnit::new(U(0)), PlannedUnit::new(U(5))]),
                2,
                true
            )
            .unwrap(),
            vec![4]
        );
    }

    #[test]
    fn a_rank_cap_resolves_to_what_the_job_can_give_and_a_requirement_does_not() {
        let planned = || {
            erased(vec![
                PlannedUnit::new(U(0)).on_up_to_ranks(4),
                PlannedUnit::new(U(1)).on_up_to_ranks(2),
                PlannedUnit::new(U(2)).on_up_to_ranks(4).on_ranks(2),
            ])
        };
        let mut plan = Plan::default();
        plan.extend(0, "s", planned(), 3, false).unwrap();
        assert_eq!(plan.ranks, vec![3, 2, 2], "a cap above the job's 3 gives 3");
        assert_eq!(plan.capped, vec![true, true, false]);
        let mut plan = Plan::default();
        let err = plan
            .extend(0, "s", planned(), 1, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("u=2 needs 2 ranks"),
            "a requirement stays one: {err}"
        );
        let mut plan = Plan::default();
        let capped_only = erased(vec![PlannedUnit::new(U(0)).on_up_to_ranks(4)]);
        plan.extend(0, "s", capped_only, 1, false).unwrap();
        assert_eq!(plan.ranks, vec![1], "a one-rank job runs it on one");
        let mut plan = Plan::default();
        let err = plan
            .extend(
                0,
                "s",
                erased(vec![PlannedUnit::new(U(0)).on_up_to_ranks(0)]),
                3,
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 0 ranks"), "{err}");
    }

    #[test]
    fn ledger_settles_done_units_and_failed_ones_unless_retried() {
        let mut plan = Plan::default();
        plan.extend(
            0,
            "s",
            erased((0..4).map(|i| PlannedUnit::new(U(i))).collect()),
            1,
            false,
        )
        .unwrap();
        let one = Files::new("s", Some("a"), "b", 0);
        let set = StageSet::single(&one);
        let prev: HashMap<String, LedgerRecord> = [
            ("u=0".to_string(), rec("u=0", OutcomeKind::Done)),
            ("u=1".to_string(), rec("u=1", OutcomeKind::NoWork)),
            ("u=2".to_string(), rec("u=2", OutcomeKind::BadInput)),
        ]
        .into_iter()
        .collect();
        let prev = [prev];
        let (specs, s) = plan.node_specs(&set, &[0, 1, 2, 3], &prev, false, true);
        assert_eq!(
            specs.iter().map(|s| s.prior).collect::<Vec<_>>(),
            vec![Some(true), Some(true), Some(false), None]
        );
        assert_eq!(
            (s.skipped_done, s.skipped_failed.len(), s.to_run),
            (2, 1, 1)
        );
        assert_eq!(s.failed_earlier, 1);
        let (specs, s) = plan.node_specs(&set, &[0, 1, 2, 3], &prev, true, true);
        assert_eq!(specs[2].prior, None);
        assert_eq!(s.to_run, 2);
        assert_eq!(
            s.failed_earlier, 1,
            "retried, still counted as failed earlier"
        );
    }

    #[test]
    fn units_are_joined_by_files_across_stages_and_missing_inputs_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        // raw/0 exists, raw/1 and raw/2 do not.
        std::fs::create_dir_all(run.join("raw")).unwrap();
        std::fs::write(run.join("raw/0"), b"").unwrap();
        let first = Files::new("first", Some("raw"), "mid", 3);
        let second = Files::new("second", Some("mid"), "end", 3);
        let set = StageSet::new()
            .with("first", &first)
            .with("second", &second);
        let plan = plan_stages(&set, run, 1).unwrap();
        assert_eq!(plan.units.len(), 6);
        assert_eq!(plan.needs[3], vec![0], "second[u=0] runs after first[u=0]");
        assert_eq!(plan.needs[5], vec![2]);
        assert!(plan.needs[0].is_empty());
        let mut missing: Vec<usize> = plan.missing_inputs.keys().copied().collect();
        missing.sort_unstable();
        assert_eq!(
            missing,
            vec![1, 2],
            "raw inputs missing fail only their readers"
        );
        assert_eq!(plan.missing_inputs[&1].0, OutcomeKind::DependencyFailed);
        assert!(plan.missing_inputs[&1].1.contains("raw/1"));
        let (specs, selection) = plan.node_specs(
            &set,
            &(0..6).collect::<Vec<_>>(),
            &[HashMap::new(), HashMap::new()],
            false,
            true,
        );
        assert_eq!(specs[4].after, vec![1]);
        assert_eq!(selection.missing.len(), 2);
        assert_eq!(selection.to_run, 4);

        // A chain whose second stage reads files of a type the chain produces, but of units
        // that are not planned: refused before anything runs, naming the unit and the file.
        let third = Files::new("third", Some("mid"), "other", 4);
        let set = StageSet::new().with("first", &first).with("third", &third);
        let err = plan_stages(&set, run, 1).err().unwrap().to_string();
        assert!(err.contains("third[u=3] reads"), "{err}");
        assert!(err.contains("mid/3"), "{err}");

        // Two units writing one file.
        let set = StageSet::new().with("first", &first).with("again", &first);
        let err = plan_stages(&set, run, 1).err().unwrap().to_string();
        assert!(
            err.contains("first[u=0] and again[u=0] both write"),
            "{err}"
        );
    }
}
