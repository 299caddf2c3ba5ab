//! Looking at skypipe runs from outside: read-only views of a run directory. No MPI.
//!
//! - [`status`]: what `skypipe-status RUN_DIR` prints. [`run_status`] reads the run
//!   directory's ledger files (`ledger/<stage>.jsonl`, `.manifest.json`, `.progress.json`),
//!   probes each stage's ledger lock without blocking to tell whether a job is running, and
//!   reads `run-report.json` for the commands that resume or retry the run. It writes
//!   nothing and holds no lock, so it is safe on a login node while a job runs.
//! - [`timeline`]: the per-rank timeline picture of a run (`skypipe-status RUN_DIR
//!   --timeline FILE`, and `RUN_DIR/timeline.svg` written by [`timeline::write_run_timeline`]
//!   at the end of every run), drawn by the `skypipe-timeline` crate.
//! - [`explain`]: `skypipe-status --explain FILE`, the provenance chain behind an output
//!   (what wrote it, from which inputs, and what wrote those).
//! - [`rundir`]: the run-directory types and readers of the `skypipe-rundir` crate,
//!   re-exported for the Slurm batch-script crate (`skypipe-slurm-scripts`, behind
//!   `skypipe-slurm`), which counts the units left and reads earlier unit durations.
//!
//! ```no_run
//! let status = skypipe_status::run_status(std::path::Path::new("runs/night1"))?;
//! print!("{}", status.text(20));
//! for stage in &status.stages {
//!     println!("{}: {} pending", stage.stage, stage.pending.unwrap_or(0));
//! }
//! # Ok::<(), skypipe_status::rundir::RunDirError>(())
//! ```

pub mod explain;
pub mod status;
pub mod timeline;

pub use skypipe_rundir as rundir;
pub use skypipe_rundir::shell_quote;
pub use status::{RunStatus, StageStatus, State, run_status};
