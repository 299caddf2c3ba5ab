//! The refusals every stage's configuration shares: a key whose value is out of range, and a
//! key without default that is not set.

/// A configuration key whose value is refused, read as one sentence: `{key} {problem}`
/// (`coadd.clip_sigma must be positive`). Each stage's own configuration error wraps it
/// beside the refusals only that stage has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct KeyError {
    /// The key or keys, with their table (`coadd.clip_sigma`).
    pub key: String,
    /// What is wrong, as the rest of a sentence (`must be at least 1`).
    pub problem: String,
}

impl KeyError {
    /// The refusal of `key` for `problem`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A configuration key that has no default and is not set: `{key} is not set ({what})`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is not set ({what})")]
pub struct UnsetKey {
    /// The key, with its table (`mosaic.reference`).
    pub key: &'static str,
    /// What it names (`the reference catalogue, e.g. reference.fits`).
    pub what: &'static str,
}
