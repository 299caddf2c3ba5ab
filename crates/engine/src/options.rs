//! The `[run]` section shared by every binary's TOML configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How units are assigned to ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Units are handed out on demand to whichever rank is free (the default).
    #[default]
    Dynamic,
    /// Unit `i` goes to rank `i mod W`, like the HSC pool's `mapNoBalance`; for benchmarks only.
    Static,
}

/// Engine settings: the `[run]` table of every stage's configuration file.
///
/// Changing these never invalidates a run directory; only the stage's own settings do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunOptions {
    /// Run directory for the ledger, reports and (by default) outputs. Default: none, so
    /// `--run-dir` must be given.
    pub dir: Option<PathBuf>,
    /// `dynamic` (default) or `static`.
    pub schedule: Schedule,
    /// How many times a transient failure is retried before the unit is recorded failed.
    /// Default 2.
    pub max_retries: u32,
    /// Seconds between progress lines printed by rank 0. Default 10.
    pub progress_interval_s: f64,
    /// Whether outputs and the ledger are fsynced (true, the default) or only renamed into
    /// place (still atomic if the job dies, not if the machine does).
    pub fsync: bool,
    /// Seconds between durable ledger commits; records in between are lost if the job is
    /// killed, and those units run again on resume. Default 0.5.
    pub ledger_sync_interval_s: f64,
    /// Seconds rank 0 waits, after SIGTERM/SIGINT, for units already running to report before
    /// it exits anyway. Default 20 (Slurm's default KillWait is 30).
    pub stop_grace_s: f64,
    /// Most units sent in one dispatch message. Short units are batched (about 2 ms of
    /// expected work per message) to amortise messaging; 1 turns batching off. Default 1024.
    pub max_batch: usize,
    /// Run each single-rank unit in its own child process, so that a unit that runs out of
    /// memory or crashes in a C library fails alone. Default false (costs a process start per
    /// unit; see docs/benchmarks.md).
    pub isolate: bool,
    /// With `isolate`: address-space limit of the first attempt of a unit whose stage declares
    /// no memory estimate, MiB; 0 (default) for none. A unit with an estimate starts at its
    /// estimate plus `memory_overhead_mb`.
    pub memory_limit_mb: u64,
    /// With `isolate`: added to a unit's declared memory estimate for its first attempt, for
    /// the process's own address space (binary, libraries, thread stacks, allocator arenas),
    /// MiB. Default 512.
    pub memory_overhead_mb: u64,
    /// With `isolate`: factor applied to the limit after each out-of-memory failure. Default 2.
    pub memory_growth: f64,
    /// With `isolate`: the largest limit any attempt may use, MiB; 0 (default) means four
    /// times the unit's first limit.
    pub memory_cap_mb: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            dir: None,
            schedule: Schedule::Dynamic,
            max_retries: 2,
            progress_interval_s: 10.0,
            fsync: true,
            ledger_sync_interval_s: 0.5,
            stop_grace_s: 20.0,
            max_batch: 1024,
            isolate: false,
            memory_limit_mb: 0,
            memory_overhead_mb: 512,
            memory_growth: 2.0,
            memory_cap_mb: 0,
        }
    }
}

impl RunOptions {
    /// Checks values that TOML types cannot, naming the offending key.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let positive = [
            ("run.progress_interval_s", self.progress_interval_s),
            ("run.ledger_sync_interval_s", self.ledger_sync_interval_s),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(OptionsError::NotPositive { key, value });
            }
        }
        if !(self.stop_grace_s.is_finite() && self.stop_grace_s >= 0.0) {
            return Err(OptionsError::StopGrace(self.stop_grace_s));
        }
        if !(self.memory_growth.is_finite() && self.memory_growth >= 1.0) {
            return Err(OptionsError::MemoryGrowth(self.memory_growth));
        }
        if self.memory_cap_mb != 0 && self.memory_cap_mb < self.memory_limit_mb {
            return Err(OptionsError::CapBelowLimit {
                cap_mb: self.memory_cap_mb,
                limit_mb: self.memory_limit_mb,
            });
        }
        if self.memory_limit_mb != 0 && !self.isolate {
            return Err(OptionsError::LimitWithoutIsolate);
        }
        if self.max_batch == 0 {
            return Err(OptionsError::MaxBatch);
        }
        Ok(())
    }
}

/// A `[run]` value that TOML types cannot refuse; each names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    /// An interval that must be a positive number of seconds is not.
    #[error("{key} must be a positive number of seconds, got {value}")]
    NotPositive {
        /// The key, with its table (`run.progress_interval_s`).
        key: &'static str,
        /// Its value.
        value: f64,
    },
    /// `run.stop_grace_s` is negative or not finite.
    #[error("run.stop_grace_s must be zero or a positive number of seconds, got {0}")]
    StopGrace(f64),
    /// `run.memory_growth` is below 1 or not finite.
    #[error("run.memory_growth must be at least 1, got {0}")]
    MemoryGrowth(f64),
    /// `run.memory_cap_mb` is below `run.memory_limit_mb`.
    #[error("run.memory_cap_mb ({cap_mb}) is below run.memory_limit_mb ({limit_mb})")]
    CapBelowLimit {
        /// `run.memory_cap_mb`.
        cap_mb: u64,
        /// `run.memory_limit_mb`.
        limit_mb: u64,
    },
    /// `run.memory_limit_mb` is set without `run.isolate`.
    #[error("run.memory_limit_mb needs run.isolate = true")]
    LimitWithoutIsolate,
    /// `run.max_batch` is 0.
    #[error("run.max_batch must be at least 1")]
    MaxBatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_keys_are_refused() {
        let opts: RunOptions = toml::from_str("schedule = \"static\"").unwrap();
        assert_eq!(opts.schedule, Schedule::Static);
        assert_eq!(opts.max_retries, 2);
        let err = toml::from_str::<RunOptions>("max_retry = 3").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_retry`"),
            "{err}"
        );
        let bad = RunOptions {
            progress_interval_s: 0.0,
            ..RunOptions::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            OptionsError::NotPositive {
                key: "run.progress_interval_s",
                value: 0.0
            }
        );
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "run.progress_interval_s must be a positive number of seconds, got 0"
        );
    }
}
