//! Why a run stops before its first unit, or stops early: the errors of rank 0's set-up.

use crate::ledger::LedgerError;
use crate::plan::PlanningError;
use std::path::PathBuf;

/// A run that cannot start, or must stop; the binary exits with code 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// `--follow` was given to a chain.
    #[error("--follow runs one stage, not a chain")]
    FollowChain,
    /// The run has no stage instance.
    #[error("no stage to run")]
    NoStage,
    /// A stage instance name cannot name a ledger file.
    #[error("stage instance name '{0}' must be letters, digits, '-' or '_'")]
    InstanceName(String),
    /// Two stage instances have one name.
    #[error("stage instance name '{0}' is used twice in the chain")]
    InstanceTwice(String),
    /// The `--follow` directory cannot be created.
    #[error("--follow {}: {source}", .dir.display())]
    FollowDir {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A ledger or manifest cannot be opened, read or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The plan is refused.
    #[error(transparent)]
    Planning(#[from] PlanningError),
    /// The run directory was written with another configuration (found by `--dry-run`, which
    /// reports what the run would do).
    #[error(
        "{}: this run directory was written by {stage} with configuration fingerprint {found}, but the configuration now gives {expected}; the run would be refused (use a new run directory, or --allow-config-change)",
        .path.display()
    )]
    ConfigChanged {
        /// The manifest.
        path: PathBuf,
        /// The stage instance.
        stage: String,
        /// The fingerprint in the manifest.
        found: String,
        /// The fingerprint of the configuration now.
        expected: String,
    },
    /// A ledger could not be written during the run, which then stopped.
    #[error("the ledger could not be written: {0}")]
    LedgerWrite(#[source] LedgerError),
}
