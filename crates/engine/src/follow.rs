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

/// Parses a unit list file.
pub(crate) fn parse_list<U: DeserializeOwned>(path: &Path) -> Result<Vec<PlannedUnit<U>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let list: UnitList<U> = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a unit list: {e}", path.display()))?;
    if list.format != UNIT_LIST_FORMAT {
        return Err(format!(
            "{}: key 'format' is \"{}\", expected \"{UNIT_LIST_FORMAT}\"",
            path.display(),
            list.format
        ));
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
    pub fn new(dir: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("--follow {}: {e}", dir.display()))?;
        Ok(Self {
            dir,
            seen: HashSet::new(),
            stopped: false,
            rejected: Vec::new(),
        })
    }

    /// New list files, in name order; notes the stop file (checked before the listing, so a
    /// list dropped before `STOP` is always taken).
    pub fn scan(&mut self) -> Vec<PathBuf> {
        if self.stopped {
            return Vec::new();
        }
        if self.dir.join(STOP_FILE).exists() {
            self.stopped = true;
        }
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
        let err = parse_list::<Obs>(&bad).unwrap_err();
        assert!(err.contains("b.json") && err.contains("obs"), "{err}");
        std::fs::write(&bad, r#"{"format":"other","units":[]}"#).unwrap();
        assert!(parse_list::<Obs>(&bad).unwrap_err().contains("'format'"));
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
