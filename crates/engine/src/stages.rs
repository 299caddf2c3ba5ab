//! The stages of one run, with their unit types erased, so that one job can run several
//! stages (a chain) as one graph and the rest of the engine handles units as bytes.

use crate::error::RunError;
use crate::follow::{UnitListError, parse_list};
use serde::{Deserialize, Serialize};
use skypipe_stage::{
    Connections, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, UnitId, WorkUnit,
};
use std::path::Path;

/// A unit of any stage of the run: which stage instance, and the unit's postcard encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ErasedUnit {
    /// Index of the stage instance in the run's [`StageSet`].
    pub instance: u32,
    /// The unit, encoded.
    pub bytes: Vec<u8>,
}

/// A planned unit with its ID and declared files, unit type erased.
pub(crate) struct ErasedPlanned {
    /// The unit's ID within its stage.
    pub id: UnitId,
    /// The plan entry, with the unit encoded.
    pub planned: PlannedUnit<Vec<u8>>,
    /// What it reads and writes.
    pub connections: Connections,
}

/// [`Stage`] without its unit type; implemented for every stage.
pub(crate) trait ErasedStage: Send + Sync {
    /// Its configuration fingerprint.
    fn fingerprint(&self) -> String;
    /// Its plan, with each unit's connections in `run_dir`.
    fn plan_erased(&self, run_dir: &Path) -> Result<Vec<ErasedPlanned>, PlanError>;
    /// Units from a `--follow` unit list.
    fn parse_list_erased(
        &self,
        path: &Path,
        run_dir: &Path,
    ) -> Result<Vec<ErasedPlanned>, UnitListError>;
    /// Decodes and runs one unit; with `reads_within_estimate`, file readers refuse reads
    /// larger than its memory estimate.
    fn run_erased(
        &self,
        unit: &[u8],
        ctx: &UnitContext,
        reads_within_estimate: bool,
    ) -> Result<Outcome, UnitFailure>;
    /// The unit's memory estimate, MiB, if its stage declares one (undecodable: none).
    fn memory_estimate_erased(&self, unit: &[u8]) -> Option<u64>;
}

fn erase<S: Stage>(stage: &S, p: PlannedUnit<S::Unit>, run_dir: &Path) -> ErasedPlanned {
    let id = p.unit.id();
    let connections = stage.connections(&p.unit, run_dir);
    let bytes = postcard::to_stdvec(&p.unit).expect("units always encode");
    ErasedPlanned {
        id,
        connections,
        planned: PlannedUnit {
            unit: bytes,
            cost_hint: p.cost_hint,
            after: p.after,
            ranks: p.ranks,
            ranks_capped: p.ranks_capped,
            tolerate_failed_inputs: p.tolerate_failed_inputs,
            affinity: p.affinity,
        },
    }
}

impl<S: Stage> ErasedStage for S {
    fn fingerprint(&self) -> String {
        self.config_fingerprint()
    }

    fn plan_erased(&self, run_dir: &Path) -> Result<Vec<ErasedPlanned>, PlanError> {
        Ok(self
            .plan()?
            .into_iter()
            .map(|p| erase(self, p, run_dir))
            .collect())
    }

    fn parse_list_erased(
        &self,
        path: &Path,
        run_dir: &Path,
    ) -> Result<Vec<ErasedPlanned>, UnitListError> {
        Ok(parse_list::<S::Unit>(path)?
            .into_iter()
            .map(|p| erase(self, p, run_dir))
            .collect())
    }

    fn run_erased(
        &self,
        unit: &[u8],
        ctx: &UnitContext,
        reads_within_estimate: bool,
    ) -> Result<Outcome, UnitFailure> {
        let unit: S::Unit = postcard::from_bytes(unit).map_err(|e| UnitFailure {
            kind: skypipe_stage::FailureKind::BadInput,
            message: format!("{}: undecodable unit: {e}", self.name()),
        })?;
        // File readers refuse, before allocating, reads larger than the unit's estimate
        // (an isolated child's address-space limit, grown on retries, bounds them instead).
        let estimate = self
            .memory_estimate_mb(&unit)
            .filter(|_| reads_within_estimate);
        let _limit = skypipe_io::limits::MemoryLimitScope::enter(estimate.map(|mb| mb << 20));
        self.run(&unit, ctx)
    }

    fn memory_estimate_erased(&self, unit: &[u8]) -> Option<u64> {
        let unit: S::Unit = postcard::from_bytes(unit).ok()?;
        self.memory_estimate_mb(&unit)
    }
}

/// One stage of a run under its instance name (its ledger's name).
pub struct StageInstance<'a> {
    /// The instance name: the stage's name, or another name when a chain runs the same stage
    /// twice (`calibrate2`).
    pub name: String,
    pub(crate) stage: &'a dyn ErasedStage,
}

/// The stages a job runs: one for a stage binary, several for a chain.
#[derive(Default)]
pub struct StageSet<'a> {
    pub(crate) instances: Vec<StageInstance<'a>>,
}

impl<'a> StageSet<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set of one stage under its own name.
    pub fn single<S: Stage>(stage: &'a S) -> Self {
        Self::new().with(stage.name(), stage)
    }

    /// Adds `stage` under the instance name `name` (ledger `ledger/<name>.jsonl`).
    pub fn with<S: Stage>(mut self, name: &str, stage: &'a S) -> Self {
        self.instances.push(StageInstance {
            name: name.to_string(),
            stage,
        });
        self
    }

    /// Number of stage instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instance names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.instances.iter().map(|i| i.name.as_str())
    }

    /// Whether this is a chain (more than one stage instance).
    pub fn is_chain(&self) -> bool {
        self.instances.len() > 1
    }

    /// The name runs and reports use: the stage's, or `chain` for several.
    pub fn run_name(&self) -> &str {
        match self.instances.as_slice() {
            [one] => &one.name,
            _ => "chain",
        }
    }

    /// The memory estimate its stage declares for `unit`, MiB, if any.
    pub(crate) fn memory_estimate_mb(&self, unit: &ErasedUnit) -> Option<u64> {
        self.instances
            .get(unit.instance as usize)?
            .stage
            .memory_estimate_erased(&unit.bytes)
    }

    /// How a unit is named in logs and reports: `ID` in a one-stage run, `NAME[ID]` in a chain.
    pub(crate) fn label(&self, instance: usize, id: &UnitId) -> String {
        if self.is_chain() {
            format!("{}[{id}]", self.instances[instance].name)
        } else {
            id.to_string()
        }
    }

    /// Checks instance names: non-empty, unique, usable as file names.
    pub(crate) fn check(&self) -> Result<(), RunError> {
        if self.instances.is_empty() {
            return Err(RunError::NoStage);
        }
        for (i, inst) in self.instances.iter().enumerate() {
            let ok = !inst.name.is_empty()
                && inst
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(RunError::InstanceName(inst.name.clone()));
            }
            if self.instances[..i].iter().any(|o| o.name == inst.name) {
                return Err(RunError::InstanceTwice(inst.name.clone()));
            }
        }
        Ok(())
    }
}
