//! Reading workload files.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The format tag a workload file must carry.
pub const WORKLOAD_FORMAT: &str = "skypipe-engine-workload/1";

/// A workload: one duration and one group per task.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The `name` key, if any.
    pub name: Option<String>,
    /// Seconds per task, in submission order.
    pub durations_s: Vec<f64>,
    /// Group of each task.
    pub group: Vec<i64>,
}

/// A workload file that cannot be used; names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file cannot be read.
    #[error("{path}: cannot read the workload: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: not a JSON workload: {source}")]
    Json {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A key is missing or has the wrong type or values.
    #[error("{path}: key '{key}': {problem}")]
    Key {
        /// File.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl Workload {
    /// The workload's tasks, in submission order.
    pub fn tasks(&self) -> Vec<crate::Task> {
        self.durations_s
            .iter()
            .zip(&self.group)
            .enumerate()
            .map(|(i, (&duration_s, &group))| crate::Task {
                index: i as u32,
                group,
                duration_s,
            })
            .collect()
    }

    /// Reads and checks a workload file.
    pub fn load(path: &Path) -> Result<Self, WorkloadError> {
        let bytes = std::fs::read(path).map_err(|source| WorkloadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|source| WorkloadError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_json(&value).map_err(|(key, problem)| WorkloadError::Key {
            path: path.to_path_buf(),
            key,
            problem,
        })
    }

    fn from_json(value: &Value) -> Result<Self, (&'static str, String)> {
        let object = value
            .as_object()
            .ok_or(("(top level)", "expected a JSON object".to_string()))?;
        match object.get("format") {
            Some(Value::String(f)) if f == WORKLOAD_FORMAT => {}
            Some(other) => {
                return Err((
                    "format",
                    format!("expected \"{WORKLOAD_FORMAT}\", found {other}"),
                ));
            }
            None => {
                return Err((
                    "format",
                    format!("missing (expected \"{WORKLOAD_FORMAT}\")"),
                ));
            }
        }
        let durations = array(object.get("durations_s"), "durations_s")?;
        let mut durations_s = Vec::with_capacity(durations.len());
        for (i, d) in durations.iter().enumerate() {
            match d.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => durations_s.push(x),
                _ => {
                    return Err((
                        "durations_s",
                        format!("element {i} is {d}, expected a non-negative number of seconds"),
                    ));
                }
            }
        }
        let groups = array(object.get("group"), "group")?;
        let mut group = Vec::with_capacity(groups.len());
        for (i, g) in groups.iter().enumerate() {
            group.push(
                g.as_i64()
                    .ok_or(("group", format!("element {i} is {g}, expected an integer")))?,
            );
        }
        if group.len() != durations_s.len() {
            return Err((
                "group",
                format!(
                    "has {} elements but durations_s has {}",
                    group.len(),
                    durations_s.len()
                ),
            ));
        }
        Ok(Self {
            name: object
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string),
            durations_s,
            group,
        })
    }
}

fn array<'a>(
    value: Option<&'a Value>,
    key: &'static str,
) -> Result<&'a Vec<Value>, (&'static str, String)> {
    match value {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err((key, format!("expected an array, found {other}"))),
        None => Err((key, "missing".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Workload, WorkloadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        std::fs::write(&path, text).unwrap();
        Workload::load(&path)
    }

    #[test]
    fn reads_a_workload_and_ignores_unknown_keys() {
        let w = load(r#"{"format":"skypipe-engine-workload/1","name":"x","seed":4,"durations_s":[0,0.5],"group":[1,2]}"#).unwrap();
        assert_eq!(w.durations_s, vec![0.0, 0.5]);
        assert_eq!(w.group, vec![1, 2]);
        assert_eq!(w.name.as_deref(), Some("x"));
    }

    #[test]
    fn malformed_workloads_name_file_and_key() {
        let cases = [
            (r#"{"durations_s":[0],"group":[0]}"#, "key 'format'"),
            (
                r#"{"format":"skypipe-engine-workload/1","group":[0]}"#,
                "key 'durations_s': missing",
            ),
            (
                r#"{"format":"skypipe-engine-workload/1","durations_s":[-1],"group":[0]}"#,
                "key 'durations_s': element 0",
            ),
            (
                r#"{"format":"skypipe-engine-workload/1","durations_s":[1,2],"group":[0]}"#,
                "key 'group': has 1 elements",
            ),
            (
                r#"{"format":"skypipe-engine-workload/1","durations_s":"x","group":[0]}"#,
                "expected an array",
            ),
            ("{not json", "not a JSON workload"),
        ];
        for (text, expected) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains("w.json") && err.contains(expected), "{err}");
        }
        let err = Workload::load(Path::new("/nonexistent/w.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/w.json: cannot read"), "{err}");
    }

    #[test]
    fn the_shipped_workloads_load() {
        for name in ["empty", "skewed", "groups"] {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../workloads/{name}.json"));
            let w = Workload::load(&path).unwrap();
            assert!(!w.durations_s.is_empty());
        }
    }
}
