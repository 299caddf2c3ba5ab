//! The contract between science code and the skypipe engine.
//!
//! A [`Stage`] names its work units ([`Stage::plan`]) and processes one unit at a time
//! ([`Stage::run`]). It never knows which rank it runs on or how many there are: the engine
//! (crate `skypipe-engine`) decides that, records every unit's [`Outcome`] or
//! [`UnitFailure`] in its ledger, and retries what [`FailureKind`] says may be retried.
//!
//! ```
//! use skypipe_stage::{Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, UnitId, WorkUnit};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Obs(u32);
//! impl WorkUnit for Obs {
//!     fn id(&self) -> UnitId { UnitId::new().with("obs", format_args!("{:04}", self.0)) }
//! }
//!
//! struct Count;
//! impl Stage for Count {
//!     type Unit = Obs;
//!     fn name(&self) -> &'static str { "count" }
//!     fn config_fingerprint(&self) -> String { "v1".into() }
//!     fn plan(&self) -> Result<Vec<PlannedUnit<Obs>>, PlanError> {
//!         Ok((0..3).map(|i| PlannedUnit::new(Obs(i))).collect())
//!     }
//!     fn run(&self, unit: &Obs, _ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
//!         if unit.0 == 2 { return Err(UnitFailure::bad_input("obs 2 is corrupt")); }
//!         Ok(Outcome::Done)
//!     }
//! }
//! assert_eq!(Obs(7).id().to_string(), "obs=0007");
//! ```

mod failure;
mod unit_id;

pub use failure::{FailureKind, Outcome, OutcomeKind, UnitFailure};
pub use unit_id::{ParseUnitIdError, UnitId};

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;

/// One unit of work: serialisable (it travels between ranks) and named by a stable [`UnitId`].
pub trait WorkUnit: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The unit's stable, human-readable identifier, e.g. `obs=0421` or `visit=12,ccd=34`.
    fn id(&self) -> UnitId;
}

/// A unit as planned, with an optional cost hint (any positive scale, larger = slower).
#[derive(Debug, Clone)]
pub struct PlannedUnit<U> {
    /// The unit itself.
    pub unit: U,
    /// Expected relative cost; with hints the engine starts the most expensive units first.
    pub cost_hint: Option<f64>,
}

impl<U> PlannedUnit<U> {
    /// A unit without a cost hint.
    pub fn new(unit: U) -> Self {
        Self {
            unit,
            cost_hint: None,
        }
    }

    /// A unit with a cost hint.
    pub fn with_cost(unit: U, cost: f64) -> Self {
        Self {
            unit,
            cost_hint: Some(cost),
        }
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

/// What a unit may know about how it is being run. Science code should not need more.
#[derive(Debug, Clone)]
pub struct UnitContext {
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    /// The run directory (ledger, reports and, by default, outputs).
    pub run_dir: PathBuf,
    /// The MPI rank running the unit (0 when run interactively); for log messages only.
    pub rank: usize,
    /// Whether outputs must be fsynced before they are renamed into place.
    pub durable: bool,
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
