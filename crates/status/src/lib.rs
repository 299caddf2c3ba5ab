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
//! - [`rundir`]: the tolerant readers of run-directory files, also used by the Slurm
//!   batch-script crate (`skypipe-slurm-scripts`, behind `skypipe-slurm`) to count the units
//!   left and read earlier unit durations.
//!
//! ```no_run
//! let status = skypipe_status::run_status(std::path::Path::new("runs/night1"))?;
//! print!("{}", status.text(20));
//! for stage in &status.stages {
//!     println!("{}: {} pending", stage.stage, stage.pending.unwrap_or(0));
//! }
//! # Ok::<(), skypipe_status::rundir::RunDirError>(())
//! ```

pub mod rundir;
pub mod status;
pub mod timeline;

pub use status::{RunStatus, StageStatus, State, run_status};

/// Quotes `word` for a POSIX shell when it needs it (`'...'`, with `'` written `'\''`).
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(super::shell_quote("--run-dir=/a/b"), "--run-dir=/a/b");
        assert_eq!(super::shell_quote("a b"), "'a b'");
        assert_eq!(super::shell_quote("it's"), "'it'\\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }
}
