//! What a unit reads and writes, declared before anything runs.
//!
//! A stage names, for each of its units, the datasets (files) it reads and writes, each with a
//! dataset type (`pointing`, `calibrated`, `calexp`) and the path its data model gives it. The
//! engine matches one unit's inputs to another unit's outputs by path, across every stage of a
//! chain run, so `calibrate[obs=0007]` starts the moment `pointing[obs=0007]` has written its
//! file, and an input that nothing will write and that is not on disk is found at planning
//! time instead of an hour into the run.

use std::path::{Path, PathBuf};

/// One file a unit reads or writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dataset {
    /// The dataset type, e.g. `pointing` or `calibrated`: what kind of product the file is.
    pub kind: String,
    /// The file, as the data model names it (under the run directory unless configured).
    pub path: PathBuf,
    /// An input that no stage makes (raw data, a focal plane): when it is missing, the unit
    /// reading it has bad input. A missing product of another stage means that stage's unit
    /// failed or was not run: the reader is dependency-failed.
    pub prerequisite: bool,
}

/// The declared inputs and outputs of one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connections {
    /// Files the unit reads: written by another planned unit, or already on disk.
    pub inputs: Vec<Dataset>,
    /// Files the unit writes (each written by exactly one unit of a run).
    pub outputs: Vec<Dataset>,
}

impl Connections {
    /// No declared inputs or outputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file the unit reads that another stage writes.
    pub fn input(mut self, kind: &str, path: impl AsRef<Path>) -> Self {
        self.inputs.push(Dataset {
            kind: kind.to_string(),
            path: path.as_ref().to_path_buf(),
            prerequisite: false,
        });
        self
    }

    /// Adds a file the unit reads that no stage writes (raw data).
    pub fn prerequisite(mut self, kind: &str, path: impl AsRef<Path>) -> Self {
        self.inputs.push(Dataset {
            kind: kind.to_string(),
            path: path.as_ref().to_path_buf(),
            prerequisite: true,
        });
        self
    }

    /// Adds a file the unit writes.
    pub fn output(mut self, kind: &str, path: impl AsRef<Path>) -> Self {
        self.outputs.push(Dataset {
            kind: kind.to_string(),
            path: path.as_ref().to_path_buf(),
            prerequisite: false,
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_order_and_kinds() {
        let c = Connections::new()
            .prerequisite("raw", "/d/obs=0001.h5")
            .input("pointing", "/r/pointing/obs=0001.h5")
            .output("calibrated", "/r/calibrate/obs=0001.h5");
        assert_eq!(c.inputs.len(), 2);
        assert_eq!(c.inputs[1].kind, "pointing");
        assert!(c.inputs[0].prerequisite && !c.inputs[1].prerequisite);
        assert_eq!(c.outputs[0].path, Path::new("/r/calibrate/obs=0001.h5"));
    }
}
