//! CMB timestream processing for skypipe: the data model, the built-in simulator and the
//! `pointing`, `calibrate` and `mapmake` stages.
//!
//! # Data flow
//! An observation list (`observations.json`, [`model::ObservationList`]) names one HDF5 file per
//! observation (attitude at 8 Hz with satellite velocity, raw timestreams per detector) and a
//! focal-plane file. [`sim`] writes such a data set with its truth. [`pointing::Pointing`] turns
//! each observation into dense detector pointing (`RUN_DIR/pointing/obs=NNNN.h5`: HEALPix pixels,
//! I/Q/U weights, θ/φ/ψ); [`calibrate::Calibrate`] reads raw timestreams and that pointing,
//! fits or looks up gains against the relativistic dipole, and writes calibrated,
//! dipole-subtracted timestreams (`RUN_DIR/calibrate/obs=NNNN.h5`); [`mapmake::Mapmake`] bins
//! them over all ranks into binned and destriped HEALPix maps (`RUN_DIR/mapmake/`). Layouts:
//! `docs/formats.md`.
//!
//! # Invariants
//! - Planning reads only the observation list; science files are opened inside units.
//! - Every input is validated at the I/O boundary ([`model`]); a bad file fails its unit with
//!   an error naming the file and the dataset, and the other units go on.
//! - Outputs are written under a temporary name and renamed; identical inputs and
//!   configuration give byte-identical outputs (their provenance names the inputs by
//!   absolute path, so runs in two directories differ there and only there).
//! - Memory per unit is bounded by `chunk_samples`, not by the length of an observation.
//!
//! ```no_run
//! use skypipe_cmb::model::ObsUnit;
//! use skypipe_cmb::pointing::{Pointing, PointingConfig};
//! use skypipe_io::provenance::Provenance;
//! let stage = Pointing::new(PointingConfig { nside: 256, ..Default::default() })?;
//! let provenance = Provenance::of_unit(&stage, &ObsUnit { obs: 0 }, std::path::Path::new("run"));
//! stage.process(0, std::path::Path::new("run/pointing/obs=0000.h5"), &provenance, skypipe_io::Durability::Synced)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod calibrate;
pub mod mapmake;
pub mod model;
pub mod pointing;
pub mod sim;
pub mod submaps;

use serde::{Deserialize, Serialize};

/// The `skypipe-pointing` configuration file: the engine's `[run]` table (type `R`, the
/// engine's `RunOptions` in the binary) and `[pointing]`. Unknown keys are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointingFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub pointing: pointing::PointingConfig,
}

/// The `skypipe-calibrate` configuration file: `[run]` and `[calibrate]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrateFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub calibrate: calibrate::CalibrateConfig,
}

/// The `skypipe-mapmake` configuration file: `[run]` and `[mapmake]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapmakeFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub mapmake: mapmake::MapmakeConfig,
}
