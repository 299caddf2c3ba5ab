//! Messages between the dispatcher (rank 0) and the workers, encoded with postcard.

use crate::stages::ErasedUnit;
use serde::{Deserialize, Serialize};
use skypipe_stage::{Input, Outcome, UnitFailure, UnitId};
use std::path::PathBuf;

/// Tag of dispatcher → worker messages.
pub(crate) const TAG_TO_WORKER: i32 = 11;
/// Tag of worker → dispatcher messages.
pub(crate) const TAG_TO_DISPATCHER: i32 = 12;

/// One unit handed to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Assignment {
    /// Index of the unit in the plan.
    pub index: u64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The unit's ID (for log lines).
    pub id: UnitId,
    /// The unit.
    pub unit: ErasedUnit,
    /// Outcomes and values of the units it runs after.
    pub inputs: Vec<Input>,
    /// Its declared input files whose writing unit ended no-work (absolute paths).
    pub unproduced: Vec<PathBuf>,
}

/// Dispatcher → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run these units, then report.
    Work(Vec<Assignment>),
    /// Run this unit together with `members` (ranks of the unit communicator), on a
    /// sub-communicator created with `tag`, then report.
    Multi {
        /// The unit.
        assignment: Assignment,
        /// The ranks taking part, ascending.
        members: Vec<i32>,
        /// Tag for MPI_Comm_create_group.
        tag: i32,
    },
    /// No more work: send [`ToDispatcher::Finished`] and exit with this code.
    Stop {
        /// The job's exit code, so every rank exits alike.
        exit_code: u8,
    },
}

/// What happened to one unit on a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UnitReport {
    /// Index of the unit in the plan.
    pub index: u64,
    /// Attempt number that produced this result.
    pub attempt: u32,
    /// Outcome or failure.
    pub result: Result<Outcome, UnitFailure>,
    /// Unix time the attempt started, seconds.
    pub started: f64,
    /// Wall seconds the attempt took.
    pub elapsed_s: f64,
    /// The value the unit set, if any (multi-rank units: only from their rank 0).
    pub value: Option<Vec<u8>>,
    /// The memory limit the attempt ran under, when isolated.
    pub memory_limit_mb: Option<u64>,
}

/// Busy time of one rank, sent when it stops.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankStats {
    /// The rank.
    pub rank: usize,
    /// Seconds spent inside units.
    pub busy_s: f64,
    /// Units attempted.
    pub units: u64,
}

/// Worker → dispatcher.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToDispatcher {
    /// Results of the last batch (empty at start); the worker now waits for more.
    Ready {
        /// One report per unit run.
        reports: Vec<UnitReport>,
        /// Units of the batch not run because a stop was requested.
        returned: Vec<u64>,
        /// The worker received SIGTERM/SIGINT.
        interrupted: bool,
    },
    /// Answer to [`ToWorker::Stop`].
    Finished(RankStats),
}
