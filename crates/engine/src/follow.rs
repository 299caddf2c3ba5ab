//! Follow mode (`--follow DIR`): a running job also takes unit lists dropped into a
//! directory, until a `STOP` file appears there — the "leave the pool running and add jobs to
//! its queue" way of working.
//!
//! A unit list is a JSON file named `*.json`, written atomically (a temporary name starting
//! with `.`, then renamed), of the form
//! `{"format": "skypipe-unit-list/1", "units": [{"unit": U, "after": ["id", ...], "cost": 1.5, "ranks": 1}, ...]}`
//! where `U` is the stage's unit in its serde JSON form and the other keys are optional.
//! Units already planned (same ID) are skipped, so adding a list twice does nothing. A list
//! that cannot be used is rejected whole: `NAME.rejected` is written beside it with the reason.
//! Only regular files are read, opened without blocking (a FIFO or directory named `*.json`
//! is rejected, never waited on); costs must be finite and non-negative; a list dropped after
//! `STOP` is rejected too (it would never run), as is one still there when the job ends.

use crate::error::RunError;
use crate::plan::PlanningError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use skypipe_stage::{PlannedUnit, UnitId};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The format tag of unit lists.
pub const UNIT_LIST_FORMAT: &str = "skypipe-unit-list/1";

/// Name of the file that ends follow mode.
pub const STOP_FILE: &str = "STOP";

#[derive(Deserialize)]
struct UnitList<U> {
    format: String,
    units: Vec<Entry<U>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<U> {
    unit: U,
    #[serde(default)]
    after: Vec<UnitId>,
    cost: Option<f64>,
    #[serde(default = "one")]
    ranks: usize,
    #[serde(default)]
    tolerate_failed_inputs: bool,
}

fn one() -> usize {
    1
}

/// A number as a person would want to read it in a message: `1.5`, `-1e308`, not 309 digits.
pub(crate) fn readable_number(x: f64) -> String {
    if x == 0.0 || (1e-4..1e9).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// A unit list rejected whole; each names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnitListError {
    /// The file cannot be opened or read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The list.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The name is not a regular file's (a FIFO, directory, device...).
    #[error(
        "{}: not a regular file ({kind}); unit lists must be regular files",
        .path.display()
    )]
    NotAFile {
        /// The list.
        path: PathBuf,
        /// What it is instead (`a FIFO`).
        kind: &'static str,
    },
    /// The JSON is not a unit list of the stage's units.
    #[error("{}: not a unit list: {source}", .path.display())]
    Json {
        /// The list.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The `format` key is not [`UNIT_LIST_FORMAT`].
    #[error("{}: key 'format' is \"{found}\", expected \"{UNIT_LIST_FORMAT}\"", .path.display())]
    Format {
        /// The list.
        path: PathBuf,
        /// The format it gives.
        found: String,
    },
    /// A cost is negative or not finite.
    #[error(
        "{}: unit {unit} has cost {}; a cost must be a finite number ≥ 0",
        .path.display(),
        readable_number(*.cost)
    )]
    Cost {
        /// The list.
        path: PathBuf,
        /// 1-based position of the unit in the list.
        unit: usize,
        /// Its cost.
        cost: f64,
    },
    /// The units do not fit the plan (an unknown dependency, a file written twice...).
    #[error("{}: {source}", .path.display())]
    Plan {
        /// The list.
        path: PathBuf,
        /// Why the plan refuses them.
        #[source]
        source: PlanningError,
    },
    /// The units close a dependency cycle.
    #[error("{}: unit {unit} is on a dependency cycle", .path.display())]
    Cycle {
        /// The list.
        path: PathBuf,
        /// A unit on the cycle.
        unit: String,
    },
}

/// Reads a regular file without ever blocking on it (a FIFO or device named `*.json`).
fn read_regular_file(path: &Path) -> Result<Vec<u8>, UnitListError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| UnitListError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(UnitListError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).map_err(read_error)?;
    Ok(bytes)
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// Parses a unit list file.
pub(crate) fn parse_list<U: DeserializeOwned>(
    path: &Path,
) -> Result<Vec<PlannedUnit<U>>, UnitListError> {
    let bytes = read_regular_file(path)?;
    let list: UnitList<U> =
        serde_json::from_slice(&bytes).map_err(|source| UnitListError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    if list.format != UNIT_LIST_FORMAT {
        return Err(UnitListError::Format {
            path: path.to_path_buf(),
            found: list.format,
        });
    }
    for (i, e) in list.units.iter().enumerate() {
        if let Some(cost) = e.cost
            && !(cost.is_finite() && cost >= 0.0)
        {
            return Err(UnitListError::Cost {
                path: path.to_path_buf(),
                unit: i + 1,
                cost,
            });
        }
    }
    Ok(list
        .units
        .into_iter()
        .map(|e| {
            let mut p = PlannedUnit::new(e.unit).after(e.after).on_ranks(e.ranks);
            p.cost_hint = e.cost;
            p.tolerate_failed_inputs = e.tolerate_failed_inputs;
            p
        })
        .collect())
}

/// The follow directory and what has been taken from it.
pub(crate) struct Follow {
    /// The directory.
    pub dir: PathBuf,
    seen: HashSet<OsString>,
    /// Whether the stop file has been seen (then no more lists are taken).
    pub stopped: bool,
    /// Lists rejected, with reasons.
    pub rejected: Vec<String>,
}

impl Follow {
    /// Follows `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Result<Self, RunError> {
        if let Err(source) = std::fs::create_dir_all(&dir) {
            return Err(RunError::FollowDir { dir, source });
        }
        Ok(Self {
            dir,
            seen: HashSet::new(),
            stopped: false,
            rejected: Vec::new(),
        })
    }

    /// New list files, in name order; notes the stop file (checked before the listing, so a
    /// list dropped before `STOP` is always taken). Lists that arrive after `STOP` are
    /// rejected here, with the reason, since nothing will run them.
    pub fn scan(&mut self) -> Vec<PathBuf> {
        let stopped_before = self.stopped;
        if !self.stopped && self.dir.join(STOP_FILE).exists() {
            self.stopped = true;
        }
        let fresh = self.list_new();
        if !stopped_before {
            return fresh;
        }
        for path in fresh {
            self.reject_late(&path);
        }
        Vec::new()
    }

    /// Rejects lists still unread when the job ends; returns every rejection reason.
    pub fn finish(&mut self) -> Vec<String> {
        for path in self.list_new() {
            self.reject_late(&path);
        }
        std::mem::take(&mut self.rejected)
    }

    fn reject_late(&mut self, path: &Path) {
        let reason = match self.stopped {
            true => format!(
                "{}: dropped after {STOP_FILE}; not taken (drop it into the inbox of a new job)",
                path.display()
            ),
            false => format!(
                "{}: arrived as the job ended; not taken (drop it into the inbox of a new job)",
                path.display()
            ),
        };
        self.reject(path, reason);
    }

    /// `*.json` files not seen before, in name order, marked seen.
    fn list_new(&mut self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut fresh: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .filter(|p| !self.seen.contains(p.file_name().expect("listed file")))
            .collect();
        fresh.sort();
        for p in &fresh {
            self.seen
                .insert(p.file_name().expect("listed file").to_owned());
        }
        fresh
    }

    /// Records a rejected list and writes `NAME.rejected` with the reason.
    pub fn reject(&mut self, path: &Path, reason: String) {
        tracing::error!("rejected unit list: {reason}");
        let mut marker = path.as_os_str().to_owned();
        marker.push(".rejected");
        let _ = skypipe_io::write_atomic(
            PathBuf::from(marker),
            format!("{reason}\n").as_bytes(),
            skypipe_io::Durability::ProcessCrashOnly,
        );
        self.rejected.push(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    struct Obs {
        obs: u32,
    }

    #[test]
    fn lists_parse_and_bad_ones_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.json");
        std::fs::write(&good, r#"{"format":"skypipe-unit-list/1","units":[{"unit":{"obs":1}},{"unit":{"obs":2},"after":["obs=1"],"cost":2.0}]}"#).unwrap();
        let units: Vec<PlannedUnit<Obs>> = parse_list(&good).unwrap();
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].after, vec!["obs=1".parse::<UnitId>().unwrap()]);
        assert_eq!(units[1].cost_hint, Some(2.0));
        let bad = dir.path().join("b.json");
        std::fs::write(
            &bad,
            r#"{"format":"skypipe-unit-list/1","units":[{"unit":{"obz":1}}]}"#,
        )
        .unwrap();
        let err = parse_list::<Obs>(&bad).unwrap_err().to_string();
        assert!(err.contains("b.json") && err.contains("obs"), "{err}");
        std::fs::write(&bad, r#"{"format":"other","units":[]}"#).unwrap();
        assert!(matches!(
            parse_list::<Obs>(&bad),
            Err(UnitListError::Format { found, .. }) if found == "other"
        ));
    }

    #[test]
    fn fifos_and_negative_costs_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = parse_list::<Obs>(&fifo).unwrap_err().to_string();
        assert!(err.contains("pipe.json") && err.contains("a FIFO"), "{err}");
        let costly = dir.path().join("cost.json");
        std::fs::write(
            &costly,
            r#"{"format":"skypipe-unit-list/1","units":[{"unit":{"obs":1},"cost":-1e308}]}"#,
        )
        .unwrap();
        let err = parse_list::<Obs>(&costly).unwrap_err().to_string();
        assert!(err.contains("cost -1e308"), "{err}");
        assert!(err.len() < 200, "{err}");
        assert_eq!(readable_number(2.5), "2.5");
    }

    #[test]
    fn lists_dropped_after_stop_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut follow = Follow::new(dir.path().join("inbox")).unwrap();
        let inbox = follow.dir.clone();
        std::fs::write(inbox.join(STOP_FILE), "").unwrap();
        assert!(follow.scan().is_empty());
        std::fs::write(inbox.join("late.json"), "{}").unwrap();
        assert!(follow.scan().is_empty());
        std::fs::write(inbox.join("later.json"), "{}").unwrap();
        let reasons = follow.finish();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        for name in ["late.json", "later.json"] {
            let text = std::fs::read_to_string(inbox.join(format!("{name}.rejected"))).unwrap();
            assert!(text.contains(name) && text.contains("after STOP"), "{text}");
        }
    }

    #[test]
    fn scan_takes_each_list_once_skips_temporaries_and_sees_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut follow = Follow::new(dir.path().join("inbox")).unwrap();
        let inbox = follow.dir.clone();
        std::fs::write(inbox.join("2.json"), "{}").unwrap();
        std::fs::write(inbox.join("1.json"), "{}").unwrap();
        std::fs::write(inbox.join(".3.json.tmp"), "{}").unwrap();
        let names: Vec<String> = follow
            .scan()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["1.json", "2.json"]);
        assert!(follow.scan().is_empty());
        std::fs::write(inbox.join("4.json"), "{}").unwrap();
        std::fs::write(inbox.join(STOP_FILE), "").unwrap();
        assert_eq!(follow.scan().len(), 1);
        assert!(follow.stopped);
        follow.reject(&inbox.join("4.json"), "bad".into());
        assert_eq!(
            std::fs::read_to_string(inbox.join("4.json.rejected")).unwrap(),
            "bad\n"
        );
    }
}
