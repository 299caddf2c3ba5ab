//! A stage for the engine's unit tests: numbered units that declare the files they read and
//! write, and optionally one two-rank unit.

use serde::{Deserialize, Serialize};
use skypipe_stage::{
    Connections, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, UnitId, WorkUnit,
};
use std::path::Path;

/// Unit `u=N`.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct U(pub u32);

impl WorkUnit for U {
    fn id(&self) -> UnitId {
        UnitId::new().with("u", self.0)
    }
}

/// `units` units named `name`; unit `u=i` reads `RUN_DIR/reads/i` (if any) and writes
/// `RUN_DIR/writes/i`; with `wide`, one more unit `u=99` on two ranks.
pub(crate) struct Files {
    pub name: &'static str,
    pub reads: Option<&'static str>,
    pub writes: &'static str,
    pub units: u32,
    pub wide: bool,
}

impl Files {
    /// One-rank units only.
    pub fn new(
        name: &'static str,
        reads: Option<&'static str>,
        writes: &'static str,
        units: u32,
    ) -> Self {
        Self {
            name,
            reads,
            writes,
            units,
            wide: false,
        }
    }
}

impl Stage for Files {
    type Unit = U;
    fn name(&self) -> &'static str {
        self.name
    }
    fn config_fingerprint(&self) -> String {
        "fp".into()
    }
    fn plan(&self) -> Result<Vec<PlannedUnit<U>>, PlanError> {
        let mut plan: Vec<PlannedUnit<U>> =
            (0..self.units).map(|i| PlannedUnit::new(U(i))).collect();
        if self.wide {
            plan.push(PlannedUnit::new(U(99)).on_ranks(2));
        }
        Ok(plan)
    }
    fn run(&self, _: &U, _: &UnitContext) -> Result<Outcome, UnitFailure> {
        Ok(Outcome::Done)
    }
    fn connections(&self, u: &U, run_dir: &Path) -> Connections {
        let c =
            Connections::new().output(self.writes, run_dir.join(self.writes).join(u.0.to_string()));
        match self.reads {
            Some(r) => c.input(r, run_dir.join(r).join(u.0.to_string())),
            None => c,
        }
    }
}
