//! Unit outcomes and failures, as listed in the project conventions.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A unit that finished without error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Outputs written.
    Done,
    /// Nothing to do for this unit (e.g. too few stars to calibrate); dependants skip it.
    NoWork {
        /// Why there was nothing to do.
        reason: String,
    },
}

/// The kinds of failure a unit can have; each tells the engine what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The unit's input is wrong (corrupt file, NaNs, wrong shape); retrying will not help.
    /// A unit that panics is recorded with this kind too, its message starting with `panicked`.
    BadInput,
    /// May succeed if tried again (an I/O hiccup); retried up to the configured limit.
    Transient,
    /// Killed at its memory limit; retried with a larger limit up to a cap.
    OutOfMemory,
    /// An input unit failed, so this unit was not run.
    DependencyFailed,
}

impl FailureKind {
    /// Whether the engine may try the unit again.
    pub fn is_retryable(self) -> bool {
        matches!(self, FailureKind::Transient | FailureKind::OutOfMemory)
    }
}

/// Every state a unit can end a run in; the ledger's `outcome` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// Outputs written.
    Done,
    /// Nothing to do; counts as success.
    NoWork,
    /// See [`FailureKind::BadInput`].
    BadInput,
    /// See [`FailureKind::Transient`] (recorded once the retries are used up).
    Transient,
    /// See [`FailureKind::OutOfMemory`].
    OutOfMemory,
    /// See [`FailureKind::DependencyFailed`].
    DependencyFailed,
}

impl OutcomeKind {
    /// Done and no-work count as success; everything else is a failure.
    pub fn is_success(self) -> bool {
        matches!(self, OutcomeKind::Done | OutcomeKind::NoWork)
    }

    /// The kebab-case name used in the ledger and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Done => "done",
            OutcomeKind::NoWork => "no-work",
            OutcomeKind::BadInput => "bad-input",
            OutcomeKind::Transient => "transient",
            OutcomeKind::OutOfMemory => "out-of-memory",
            OutcomeKind::DependencyFailed => "dependency-failed",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<FailureKind> for OutcomeKind {
    fn from(kind: FailureKind) -> Self {
        match kind {
            FailureKind::BadInput => OutcomeKind::BadInput,
            FailureKind::Transient => OutcomeKind::Transient,
            FailureKind::OutOfMemory => OutcomeKind::OutOfMemory,
            FailureKind::DependencyFailed => OutcomeKind::DependencyFailed,
        }
    }
}

impl From<&Outcome> for OutcomeKind {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Done => OutcomeKind::Done,
            Outcome::NoWork { .. } => OutcomeKind::NoWork,
        }
    }
}

/// A unit's failure: its kind and the full error chain as text (it crosses ranks as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind_text}: {message}", kind_text = OutcomeKind::from(self.kind))]
pub struct UnitFailure {
    /// What kind of failure this is.
    pub kind: FailureKind,
    /// The error chain, outermost first, joined by `: `; names the file where there is one.
    pub message: String,
}

impl UnitFailure {
    /// A failure of the given kind from any error, keeping its whole `source()` chain.
    ///
    /// A bad-input failure whose chain shows the storage failing (no space left, quota
    /// exceeded, I/O error: see [`storage_failure`]) becomes transient: a full disk says
    /// nothing about the data, and the unit may succeed once space is freed.
    pub fn new(
        kind: FailureKind,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let err = err.into();
        let message = error_chain(err.as_ref());
        let kind = match kind {
            FailureKind::BadInput if storage_failure(err.as_ref(), &message) => {
                FailureKind::Transient
            }
            other => other,
        };
        Self { kind, message }
    }

    /// The unit's input is wrong.
    pub fn bad_input(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(FailureKind::BadInput, err)
    }

    /// A failure that may go away if the unit is tried again.
    pub fn transient(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(FailureKind::Transient, err)
    }
}

/// The OS errors that mean the storage failed, not the data: ENOSPC, EDQUOT, EIO.
const STORAGE_ERRNOS: [i32; 3] = [28, 122, 5];

/// The texts C libraries (HDF5, CFITSIO, SQLite) give for the same errors, when they pass on
/// only a message.
const STORAGE_TEXTS: [&str; 6] = [
    "No space left on device",
    "Disk quota exceeded",
    "Input/output error",
    "errno = 28,",
    "errno = 122,",
    "database or disk is full",
];

/// Whether an error (its `source()` chain, or its text for errors from C libraries) shows
/// the storage failing: no space left, quota exceeded, or an I/O error.
pub fn storage_failure(err: &(dyn std::error::Error + 'static), message: &str) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .raw_os_error()
                .is_some_and(|code| STORAGE_ERRNOS.contains(&code))
        {
            return true;
        }
        source = e.source();
    }
    STORAGE_TEXTS.iter().any(|t| message.contains(t))
}

/// Formats an error and its sources as `outer: inner: innermost`, skipping repeats.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("/data/att_0421.h5: cannot read dataset 'quat'")]
    struct Outer {
        #[source]
        inner: std::io::Error,
    }

    #[test]
    fn failure_keeps_the_error_chain() {
        let err = Outer {
            inner: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file truncated"),
        };
        let failure = UnitFailure::bad_input(err);
        assert_eq!(
            failure.message,
            "/data/att_0421.h5: cannot read dataset 'quat': file truncated"
        );
        assert_eq!(
            failure.to_string(),
            "bad-input: /data/att_0421.h5: cannot read dataset 'quat': file truncated"
        );
    }

    #[test]
    fn a_full_disk_is_transient_not_bad_input() {
        let full = Outer {
            inner: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(UnitFailure::bad_input(full).kind, FailureKind::Transient);
        let hdf5 = "/run/pointing/obs=0001.h5: cannot write 'signal': H5Dwrite(): file write \
                    failed: errno = 28, error message = 'No space left on device'";
        assert_eq!(UnitFailure::bad_input(hdf5).kind, FailureKind::Transient);
        let corrupt = Outer {
            inner: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file truncated"),
        };
        assert_eq!(UnitFailure::bad_input(corrupt).kind, FailureKind::BadInput);
    }

    #[test]
    fn kinds_serialise_as_in_the_conventions() {
        let all = [
            (OutcomeKind::Done, "done"),
            (OutcomeKind::NoWork, "no-work"),
            (OutcomeKind::BadInput, "bad-input"),
            (OutcomeKind::Transient, "transient"),
            (OutcomeKind::OutOfMemory, "out-of-memory"),
            (OutcomeKind::DependencyFailed, "dependency-failed"),
        ];
        for (kind, text) in all {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{text}\""));
            assert_eq!(kind.as_str(), text);
        }
        assert!(OutcomeKind::NoWork.is_success());
        assert!(!OutcomeKind::Transient.is_success());
        assert!(FailureKind::Transient.is_retryable());
        assert!(!FailureKind::BadInput.is_retryable());
    }
}
