//! The skypipe engine: spreads a [`Stage`](skypipe_stage::Stage)'s units over MPI ranks.
//!
//! - **Dynamic balance.** Rank 0 hands out units on demand from its main thread and runs units
//!   in a second thread, so with two ranks both compute. Short units travel in batches sized
//!   from their observed duration; cost hints start the longest units first.
//! - **Failure isolation.** A unit that errors or panics is recorded with its kind and error
//!   chain; every other unit still runs; transient failures are retried.
//! - **Resume.** Rank 0 appends each unit's outcome to a ledger in the run directory after
//!   the unit's outputs are committed; a rerun skips what is recorded done.
//! - **Operations.** `--unit ID` runs one unit in-process, `--dry-run` lists the plan, rank 0
//!   prints progress, SIGTERM stops cleanly with exit code 3, and `run-report.json` records
//!   per-rank busy time, the slowest units and every failure.
//!
//! A binary flattens [`EngineArgs`] into its clap parser, reads its configuration with
//! [`load_config`] (the `[run]` table is [`RunOptions`]) and calls [`launch`]:
//!
//! ```no_run
//! # use skypipe_stage::*;
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct U;
//! # impl WorkUnit for U { fn id(&self) -> UnitId { UnitId::new().with("u", 1) } }
//! # struct MyStage;
//! # impl Stage for MyStage { type Unit = U; fn name(&self) -> &'static str { "my" }
//! #   fn config_fingerprint(&self) -> String { String::new() }
//! #   fn plan(&self) -> Result<Vec<PlannedUnit<U>>, PlanError> { Ok(vec![]) }
//! #   fn run(&self, _: &U, _: &UnitContext) -> Result<Outcome, UnitFailure> { Ok(Outcome::Done) } }
//! let args = skypipe_engine::EngineArgs::default();
//! let run = skypipe_engine::RunOptions::default();
//! let launched = skypipe_engine::launch(&MyStage, &run, &args);
//! std::process::exit(i32::from(launched.exit_code));
//! ```

mod chain;
mod collectives;
mod driver;
mod error;
mod execute;
mod follow;
mod graph;
pub mod hugepages;
mod interactive;
mod isolation;
mod launch;
pub mod ledger;
mod options;
mod plan;
mod protocol;
mod report;
mod reservation;
mod signals;
mod stages;
mod state;
#[cfg(test)]
mod testutil;

pub use chain::{ChainError, ChainFile, ChainMember};
pub use follow::{STOP_FILE, UNIT_LIST_FORMAT};
pub use hugepages::HugePageAlloc;
pub use launch::{
    ConfigError, EngineArgs, Launched, init_logging, launch, launch_stages, load_config, run_binary,
};
pub use options::{OptionsError, RunOptions, Schedule};
pub use protocol::RankStats;
pub use report::{
    EXIT_CANNOT_START, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNITS_FAILED, RankUsage, RunReport,
    RunSummary, StageReport, UnitResult,
};
pub use signals::stop_requested;
pub use stages::{StageInstance, StageSet};
