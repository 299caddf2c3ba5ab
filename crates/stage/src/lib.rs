//! The contract between science code and the skypipe engine.
//!
//! A [`Stage`] names its work units ([`Stage::plan`]) and processes one unit at a time
//! ([`Stage::run`]). A planned unit may run after other units ([`PlannedUnit::after`]) and
//! receive the values they set ([`UnitContext::input_values`]): that is how a stage gathers
//! over any subset of its units (all CCDs of a visit) and scatters the result to a follow-up
//! phase, with no barrier for the rest. A unit may also run on several ranks at once
//! ([`PlannedUnit::on_ranks`], [`PlannedUnit::on_up_to_ranks`], [`UnitContext::collectives`]). It never knows which rank it runs on or how many there are: the engine
//! (crate `skypipe-engine`) decides that, records every unit's [`Outcome`] or
//! [`UnitFailure`] in its ledger, and retries what [`FailureKind`] says may be retried.
//!
//! ```
//! use skypipe_stage::{Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, UnitId, WorkUnit};
//! use serde::{Deserialize, Serialize};
//!
//! /// One CCD of a visit, or the visit-wide solution gathered from them.
//! #[derive(Clone, Serialize, Deserialize)]
//! enum Unit { Ccd { visit: u32, ccd: u32 }, Solve { visit: u32 } }
//!
//! impl WorkUnit for Unit {
//!     fn id(&self) -> UnitId {
//!         match self {
//!             Unit::Ccd { visit, ccd } => UnitId::new().with("visit", visit).with("ccd", ccd),
//!             Unit::Solve { visit } => UnitId::new().with("solve", visit),
//!         }
//!     }
//! }
//!
//! struct Visits;
//! impl Stage for Visits {
//!     type Unit = Unit;
//!     fn name(&self) -> &'static str { "visits" }
//!     fn config_fingerprint(&self) -> String { "v1".into() }
//!     fn plan(&self) -> Result<Vec<PlannedUnit<Unit>>, PlanError> {
//!         let mut plan = Vec::new();
//!         for visit in 0..2 {
//!             let ccds: Vec<Unit> = (0..4).map(|ccd| Unit::Ccd { visit, ccd }).collect();
//!             // The visit's solution runs after (and gathers) its own CCDs only.
//!             let members: Vec<UnitId> = ccds.iter().map(WorkUnit::id).collect();
//!             plan.extend(ccds.into_iter().map(PlannedUnit::new));
//!             plan.push(PlannedUnit::new(Unit::Solve { visit }).after(members));
//!         }
//!         Ok(plan)
//!     }
//!     fn run(&self, unit: &Unit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
//!         match unit {
//!             Unit::Ccd { ccd, .. } if *ccd == 3 => Ok(Outcome::NoWork { reason: "too few stars".into() }),
//!             Unit::Ccd { ccd, .. } => {
//!                 ctx.set_value(&(f64::from(*ccd) * 0.5)); // e.g. a match-list summary
//!                 Ok(Outcome::Done)
//!             }
//!             Unit::Solve { .. } => {
//!                 let parts: Vec<(UnitId, f64)> = ctx.input_values()?;
//!                 assert_eq!(parts.len(), 3); // the no-work CCD passes no value
//!                 ctx.set_value(&parts.iter().map(|(_, v)| v).sum::<f64>());
//!                 Ok(Outcome::Done)
//!             }
//!         }
//!     }
//! }
//! assert_eq!(Visits.plan().unwrap().len(), 10);
//! ```

mod config_key;
mod connections;
mod context;
mod failure;
mod unit_id;

pub use config_key::{KeyError, UnsetKey};
pub use connections::{Connections, Dataset};
pub use context::{Collectives, Input, SoloCollectives, UnitContext};
pub use failure::{FailureKind, Outcome, OutcomeKind, UnitFailure, storage_failure};
pub use unit_id::{ParseUnitIdError, UnitId};

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// One unit of work: serialisable (it travels between ranks) and named by a stable [`UnitId`].
pub trait WorkUnit: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The unit's stable, human-readable identifier, e.g. `obs=0421` or `visit=12,ccd=34`.
    fn id(&self) -> UnitId;
}

/// [`PlannedUnit::ranks`] value meaning "every rank the job can give a unit"; the engine
/// resolves it when it plans (a stage never learns the number of ranks).
pub const ALL_RANKS: usize = usize::MAX;

/// A unit as planned: optional cost hint, the units it must run after, and how many ranks
/// it runs on.
#[derive(Debug, Clone)]
pub struct PlannedUnit<U> {
    /// The unit itself.
    pub unit: U,
    /// Expected relative cost; with hints the engine starts the most expensive units first.
    pub cost_hint: Option<f64>,
    /// Units that must end (done or no-work) before this one starts; their values reach it
    /// through [`UnitContext::inputs`]. If one fails, this unit is recorded
    /// dependency-failed and not run. Nothing else waits: there is no stage-wide barrier.
    pub after: Vec<UnitId>,
    /// Ranks the unit runs on at once (default 1). With more than one, every rank runs
    /// [`Stage::run`] with [`UnitContext::collectives`] over exactly those ranks; [`ALL_RANKS`]
    /// for every rank of the job.
    pub ranks: usize,
    /// Whether [`PlannedUnit::ranks`] is a cap rather than a requirement (default false): the
    /// engine gives the unit `min(ranks, ranks of the job)` (see [`PlannedUnit::on_up_to_ranks`]).
    pub ranks_capped: bool,
    /// Run once every input has ended, even if some failed (default false): a gather that can
    /// work with the members that succeeded (a visit's registry rows without a broken CCD).
    /// Failed inputs appear in [`UnitContext::inputs`] with their outcome and no value.
    pub tolerate_failed_inputs: bool,
    /// Units whose ranks a multi-rank unit prefers (default none): when the engine gathers
    /// ranks for it, the ranks that ran the most of these units in this invocation come first
    /// (they may still hold those units' data in memory). A hint only: the stage never learns
    /// which ranks ran what, and a unit whose preferred ranks are taken runs elsewhere.
    pub affinity: Vec<UnitId>,
}

impl<U> PlannedUnit<U> {
    /// A unit with no hint, no dependencies, on one rank.
    pub fn new(unit: U) -> Self {
        Self {
            unit,
            cost_hint: None,
            after: Vec::new(),
            ranks: 1,
            ranks_capped: false,
            tolerate_failed_inputs: false,
            affinity: Vec::new(),
        }
    }

    /// Sets the cost hint.
    pub fn cost(mut self, cost: f64) -> Self {
        self.cost_hint = Some(cost);
        self
    }

    /// Runs after these units (a group's gather after its members, a follow-up after the gather).
    pub fn after(mut self, units: impl IntoIterator<Item = UnitId>) -> Self {
        self.after.extend(units);
        self
    }

    /// Runs on `ranks` ranks at once with collectives among them; a job that cannot give a
    /// unit that many ranks refuses the plan.
    pub fn on_ranks(mut self, ranks: usize) -> Self {
        self.ranks = ranks;
        self.ranks_capped = false;
        self
    }

    /// Runs on up to `ranks` ranks at once: the engine resolves the cap, when it plans, to
    /// the smaller of `ranks` and the most ranks the job can give a unit (a stage never learns
    /// the number of ranks), so the same plan runs on any job. Run alone (`--unit`), it runs
    /// on one. For work that shares well over a few ranks (a large tract's CCDs).
    pub fn on_up_to_ranks(mut self, ranks: usize) -> Self {
        self.ranks = ranks;
        self.ranks_capped = true;
        self
    }

    /// Runs on every rank of the job at once ([`ALL_RANKS`]): a reduction over all the data
    /// the job holds (a map made from every observation). Run alone (`--unit`), it runs on one.
    pub fn on_all_ranks(mut self) -> Self {
        self.ranks = ALL_RANKS;
        self.ranks_capped = false;
        self
    }

    /// Prefers the ranks that ran these units (see [`PlannedUnit::affinity`]).
    pub fn prefer_ranks_of(mut self, units: impl IntoIterator<Item = UnitId>) -> Self {
        self.affinity.extend(units);
        self
    }

    /// Runs once its inputs have ended, whether or not they all succeeded.
    pub fn tolerating_failed_inputs(mut self) -> Self {
        self.tolerate_failed_inputs = true;
        self
    }
}

/// Why a stage could not produce its list of units; the run stops before any unit starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

impl PlanError {
    /// A planning error from any displayable cause, keeping its whole source chain.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        Self(failure::error_chain(err))
    }
}

/// A pipeline stage: a list of units and the function that processes one of them.
///
/// `run` must be idempotent: the same unit run twice writes the same outputs, because a unit
/// that finished but was not yet recorded when a job died runs again on resume.
pub trait Stage: Send + Sync {
    /// The stage's unit type.
    type Unit: WorkUnit;

    /// Short stage name used in the ledger, reports and log lines (`pointing`, `loadtest`).
    fn name(&self) -> &'static str;

    /// A fingerprint of everything in the configuration that changes outputs; resuming a run
    /// whose fingerprint differs is refused unless the user asks for it.
    fn config_fingerprint(&self) -> String;

    /// The units of this run, in submission order. Must not open science files.
    fn plan(&self) -> Result<Vec<PlannedUnit<Self::Unit>>, PlanError>;

    /// Process one unit, writing its outputs atomically.
    fn run(&self, unit: &Self::Unit, ctx: &UnitContext) -> Result<Outcome, UnitFailure>;

    /// The files `unit` reads and writes when run in `run_dir` (default: none declared).
    /// Paths must be the ones [`Stage::run`] uses (one data-model function for both), since
    /// the engine orders units of different stages by them and checks before any unit runs
    /// that every input will exist.
    fn connections(&self, _unit: &Self::Unit, _run_dir: &Path) -> Connections {
        Connections::new()
    }

    /// The most memory one run of `unit` may need, MiB, when the stage can say. File readers
    /// refuse (as bad input naming the file) any read larger than the unit's limit before
    /// allocating it: this estimate when given, else the isolated unit's `[run]
    /// memory_limit_mb`, else the machine's memory.
    fn memory_estimate_mb(&self, _unit: &Self::Unit) -> Option<u64> {
        None
    }
}

/// A stable fingerprint of a serialisable configuration (FNV-1a 64 of its JSON form).
pub fn fingerprint_of<T: Serialize>(config: &T) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Cfg {
        nside: u32,
        ordering: &'static str,
    }

    #[test]
    fn fingerprint_changes_with_config_and_is_stable() {
        let a = fingerprint_of(&Cfg {
            nside: 256,
            ordering: "ring",
        });
        let b = fingerprint_of(&Cfg {
            nside: 512,
            ordering: "ring",
        });
        assert_eq!(
            a,
            fingerprint_of(&Cfg {
                nside: 256,
                ordering: "ring"
            })
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
