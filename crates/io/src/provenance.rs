//! Provenance of an output file: the software that wrote it, the stage and unit, the
//! configuration's fingerprint and the files it was made from. Written into FITS primary
//! headers and HDF5 attributes by the stages, read back by `skypipe-status --explain`.
//!
//! FITS (primary header): `SKYPIPE` (software and version, with the git commit when built from
//! a checkout), `SPSTAGE`, `SPUNIT`, `SPCONFIG` (configuration fingerprint), `SPNINPUT`; up to
//! [`MAX_INPUT_CARDS`] inputs as `SPIN0001`, `SPIN0002`, … (`KIND PATH`, long-string convention
//! where needed), more in a binary-table extension `PROVENANCE` (columns `KIND`, `PATH`).
//! HDF5: attributes `software`, `stage`, `unit`, `config_fingerprint` and `inputs` (strings
//! `KIND PATH`) of the group `/provenance`.

use crate::fits::{Card, Column, FitsError, FitsReader, FitsWriter, Hdu};
use crate::hdf5::{H5Error, H5Reader, H5Writer};
use hdf5::types::VarLenUnicode;
use skypipe_stage::{Stage, WorkUnit};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// At most this many inputs go into header cards; a longer list goes into the `PROVENANCE`
/// table extension.
pub const MAX_INPUT_CARDS: usize = 64;

/// Name of the FITS table extension holding a long input list.
pub const PROVENANCE_HDU: &str = "PROVENANCE";

/// HDF5 group holding the provenance attributes.
pub const PROVENANCE_GROUP: &str = "provenance";

static COMMIT: OnceLock<&'static str> = OnceLock::new();

/// Records the git commit the running binary was built from (called once by each binary's
/// `main` with what its build script found; `None` outside a checkout).
pub fn set_build_commit(commit: Option<&'static str>) {
    if let Some(c) = commit.filter(|c| !c.is_empty()) {
        let _ = COMMIT.set(c);
    }
}

/// The software that writes outputs: `skypipe 0.1.0 (git 1a2b3c4d5e6f)`, or without the
/// commit when it is unknown.
pub fn software() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match COMMIT.get() {
        Some(c) => format!("skypipe {version} (git {c})"),
        None => format!("skypipe {version}"),
    }
}

/// One file an output was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceInput {
    /// Dataset type (as the stage's connections name it, e.g. `calibrated`, `calexp`).
    pub kind: String,
    /// Absolute path when the file existed at writing time, else as given.
    pub path: PathBuf,
}

/// Where an output came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Software and version that wrote the file ([`software`]).
    pub software: String,
    /// Stage (instance) that wrote it.
    pub stage: String,
    /// Unit ID of the unit that wrote it.
    pub unit: String,
    /// Fingerprint of the stage's configuration.
    pub config_fingerprint: String,
    /// Files it was made from.
    pub inputs: Vec<ProvenanceInput>,
}

impl Provenance {
    /// Provenance of an output of `unit` of `stage`, made from `inputs` (kind, path); paths
    /// are made absolute where the file exists.
    pub fn new<P: AsRef<Path>>(
        stage: &str,
        unit: &str,
        config_fingerprint: &str,
        inputs: impl IntoIterator<Item = (String, P)>,
    ) -> Self {
        Self {
            software: software(),
            stage: stage.to_string(),
            unit: unit.to_string(),
            config_fingerprint: config_fingerprint.to_string(),
            inputs: inputs
                .into_iter()
                .map(|(kind, path)| {
                    let path = path.as_ref();
                    ProvenanceInput {
                        kind,
                        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
                    }
                })
                .collect(),
        }
    }

    /// Provenance of the outputs of `unit` of `stage`: the stage, the unit, the stage's
    /// configuration fingerprint and the files its connections declare as inputs.
    pub fn of_unit<S: Stage>(stage: &S, unit: &S::Unit, run_dir: &Path) -> Self {
        Self::new(
            stage.name(),
            &unit.id().to_string(),
            &stage.config_fingerprint(),
            stage
                .connections(unit, run_dir)
                .inputs
                .into_iter()
                .map(|d| (d.kind, d.path)),
        )
    }

    /// Writes it into the primary header of `file` (and a `PROVENANCE` table when the input
    /// list is long).
    pub fn write_fits(&self, file: &mut FitsWriter) -> Result<(), FitsError> {
        let mut cards = vec![
            Card::text("SKYPIPE", &self.software, "software that wrote this file"),
            Card::text("SPSTAGE", &self.stage, "skypipe stage that wrote this file"),
            Card::text("SPUNIT", &self.unit, "unit that wrote this file"),
            Card::text(
                "SPCONFIG",
                &self.config_fingerprint,
                "configuration fingerprint",
            ),
            Card::int("SPNINPUT", self.inputs.len() as i64, "input files"),
        ];
        // Input cards of an earlier provenance (a file edited from a copy) that this list
        // does not overwrite.
        let first_stale = if self.inputs.len() <= MAX_INPUT_CARDS {
            self.inputs.len() + 1
        } else {
            1
        };
        let stale: Vec<String> = (first_stale..=MAX_INPUT_CARDS)
            .map(|i| format!("SPIN{i:04}"))
            .collect();
        file.delete_keys(
            Hdu::Primary,
            &stale.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        if self.inputs.len() <= MAX_INPUT_CARDS {
            for (i, input) in self.inputs.iter().enumerate() {
                cards.push(Card::text(
                    &format!("SPIN{:04}", i + 1),
                    &input_text(input),
                    "input: dataset type and path",
                ));
            }
            file.set_keys(Hdu::Primary, &cards)
        } else {
            file.set_keys(Hdu::Primary, &cards)?;
            file.table(
                PROVENANCE_HDU,
                &[
                    Column::text("KIND", self.inputs.iter().map(|i| i.kind.clone()).collect()),
                    Column::text(
                        "PATH",
                        self.inputs
                            .iter()
                            .map(|i| i.path.display().to_string())
                            .collect(),
                    ),
                ],
                &[],
            )
        }
    }

    /// Reads it from a FITS file's primary header; `None` when the file has none.
    pub fn read_fits(path: &Path) -> Result<Option<Self>, FitsError> {
        let mut file = FitsReader::open(path)?;
        let Some(software) = file.key_long_string_opt(Hdu::Primary, "SKYPIPE")? else {
            return Ok(None);
        };
        let stage = file.key_long_string_opt(Hdu::Primary, "SPSTAGE")?;
        let unit = file.key_long_string_opt(Hdu::Primary, "SPUNIT")?;
        let config = file.key_long_string_opt(Hdu::Primary, "SPCONFIG")?;
        let n = file.key_i64(Hdu::Primary, "SPNINPUT")?.max(0) as usize;
        let inputs = if n <= MAX_INPUT_CARDS {
            (1..=n)
                .map(|i| {
                    let key = format!("SPIN{i:04}");
                    let text = file
                        .key_long_string_opt(Hdu::Primary, &key)?
                        .unwrap_or_default();
                    Ok(parse_input(&text))
                })
                .collect::<Result<Vec<_>, FitsError>>()?
        } else {
            let hdu = Hdu::Name(PROVENANCE_HDU);
            let kinds = file.column_string(hdu, "KIND")?;
            let paths = file.column_string(hdu, "PATH")?;
            kinds
                .into_iter()
                .zip(paths)
                .map(|(kind, path)| ProvenanceInput {
                    kind: kind.trim().to_string(),
                    path: PathBuf::from(path.trim()),
                })
                .collect()
        };
        Ok(Some(Self {
            software,
            stage: stage.unwrap_or_default(),
            unit: unit.unwrap_or_default(),
            config_fingerprint: config.unwrap_or_default(),
            inputs,
        }))
    }

    /// Writes it as attributes of `/provenance` in `file`.
    pub fn write_hdf5(&self, file: &H5Writer) -> Result<(), H5Error> {
        let group = PROVENANCE_GROUP;
        file.attr_str(group, "software", &self.software)?;
        file.attr_str(group, "stage", &self.stage)?;
        file.attr_str(group, "unit", &self.unit)?;
        file.attr_str(group, "config_fingerprint", &self.config_fingerprint)?;
        let inputs = self
            .inputs
            .iter()
            .map(|i| {
                input_text(i)
                    .parse::<VarLenUnicode>()
                    .map_err(|e| H5Error::invalid(file.path(), "provenance@inputs", e.to_string()))
            })
            .collect::<Result<Vec<_>, H5Error>>()?;
        file.attr_vec(group, "inputs", &inputs)
    }

    /// Reads it from an HDF5 file's `/provenance` attributes; `None` when the file has none.
    pub fn read_hdf5(path: &Path) -> Result<Option<Self>, H5Error> {
        let file = H5Reader::open(path)?;
        if !file.exists(PROVENANCE_GROUP) {
            return Ok(None);
        }
        let group = PROVENANCE_GROUP;
        let inputs: Vec<VarLenUnicode> = file.attr_vec(group, "inputs", None)?;
        Ok(Some(Self {
            software: file.attr_str(group, "software")?,
            stage: file.attr_str(group, "stage")?,
            unit: file.attr_str(group, "unit")?,
            config_fingerprint: file.attr_str(group, "config_fingerprint")?,
            inputs: inputs.iter().map(|s| parse_input(s.as_str())).collect(),
        }))
    }

    /// Reads the provenance of a FITS or HDF5 file (by its first bytes); `Ok(None)` for a
    /// file of either kind without provenance, an error for any other file.
    pub fn read(path: &Path) -> Result<Option<Self>, ProvenanceError> {
        let mut head = [0u8; 8];
        let n = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .map_err(|source| ProvenanceError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        if n >= 6 && head.starts_with(b"SIMPLE") {
            Ok(Self::read_fits(path)?)
        } else if n == 8 && head == *b"\x89HDF\r\n\x1a\n" {
            Ok(Self::read_hdf5(path)?)
        } else {
            Err(ProvenanceError::NotFitsOrHdf5 {
                path: path.to_path_buf(),
            })
        }
    }
}

/// Why [`Provenance::read`] could not read a file's provenance; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// The file could not be opened or its first bytes read.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither FITS nor HDF5.
    #[error("{path}: neither a FITS nor an HDF5 file, so it carries no provenance")]
    NotFitsOrHdf5 {
        /// The file.
        path: PathBuf,
    },
    /// A FITS file whose provenance cards are unreadable.
    #[error(transparent)]
    Fits(#[from] FitsError),
    /// An HDF5 file whose provenance attributes are unreadable.
    #[error(transparent)]
    H5(#[from] H5Error),
}

fn input_text(input: &ProvenanceInput) -> String {
    format!("{} {}", input.kind, input.path.display())
}

fn parse_input(text: &str) -> ProvenanceInput {
    let text = text.trim();
    let (kind, path) = text.split_once(' ').unwrap_or(("", text));
    ProvenanceInput {
        kind: kind.to_string(),
        path: PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;

    fn sample(inputs: usize) -> Provenance {
        Provenance {
            software: software(),
            stage: "calibrate".into(),
            unit: "obs=7".into(),
            config_fingerprint: "0123456789abcdef".into(),
            inputs: (0..inputs)
                .map(|i| ProvenanceInput {
                    kind: "pointing".into(),
                    path: PathBuf::from(format!(
                        "/a/rather/long/run/directory/path/that/needs/the/long/string/convention/pointing/obs={i:04}.h5"
                    )),
                })
                .collect(),
        }
    }

    #[test]
    fn fits_provenance_round_trips_in_cards_and_in_a_table() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 3, MAX_INPUT_CARDS + 1] {
            let path = dir.path().join(format!("f{n}.fits"));
            let mut w = FitsWriter::create(&path, false, None).unwrap();
            let p = sample(n);
            p.write_fits(&mut w).unwrap();
            w.commit().unwrap();
            assert_eq!(Provenance::read(&path).unwrap(), Some(p));
            let mut r = FitsReader::open(&path).unwrap();
            assert_eq!(r.has_hdu(PROVENANCE_HDU), n > MAX_INPUT_CARDS);
        }
    }

    #[test]
    fn hdf5_provenance_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.h5");
        let w = H5Writer::create(&path, Durability::ProcessCrashOnly).unwrap();
        let p = sample(2);
        p.write_hdf5(&w).unwrap();
        w.write_1d("data", &[1.0f64]).unwrap();
        w.commit().unwrap();
        assert_eq!(Provenance::read(&path).unwrap(), Some(p));
    }

    #[test]
    fn files_without_provenance_or_of_other_kinds_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let h5 = dir.path().join("plain.h5");
        let w = H5Writer::create(&h5, Durability::ProcessCrashOnly).unwrap();
        w.write_1d("x", &[1i64]).unwrap();
        w.commit().unwrap();
        assert_eq!(Provenance::read(&h5).unwrap(), None);
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello world").unwrap();
        assert!(
            Provenance::read(&text)
                .unwrap_err()
                .to_string()
                .contains("neither a FITS nor an HDF5")
        );
    }

    #[test]
    fn inputs_that_exist_are_recorded_by_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.fits");
        std::fs::write(&file, b"x").unwrap();
        let p = Provenance::new(
            "s",
            "u=1",
            "f",
            [
                ("raw".to_string(), file.clone()),
                ("raw".to_string(), PathBuf::from("gone")),
            ],
        );
        assert_eq!(p.inputs[0].path, std::fs::canonicalize(&file).unwrap());
        assert_eq!(p.inputs[1].path, PathBuf::from("gone"));
    }
}
