//! The `skypipe-multiband` configuration file: `[run]` and `[multiband]` (with
//! `[multiband.skymap]`). Unknown keys are refused.

use serde::{Deserialize, Serialize};
use skypipe_registry::{SkyMapConfig, SkyMapError};
use skypipe_stage::KeyError;
use std::path::PathBuf;

/// The configuration file: the engine's `[run]` table (type `R`, the engine's `RunOptions` in
/// the binary) and `[multiband]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultibandFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub multiband: MultibandConfig,
}

/// The `[multiband]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultibandConfig {
    /// Registry database with the coadd rows (`skypipe-coadd`). Default
    /// `RUN_DIR/registry.sqlite3`; relative coadd paths in it are relative to its directory.
    pub registry: Option<PathBuf>,
    /// The sky map (`[multiband.skymap]`): must be the registry's.
    pub skymap: SkyMapConfig,
    /// Only these tracts (empty: all with coadds).
    pub tracts: Vec<u32>,
    /// Only these patches, as `"x,y"` (empty: all).
    pub patches: Vec<String>,
    /// Only these bands (empty: all with coadds).
    pub bands: Vec<String>,
    /// Radius within which detections of different bands are one object, arcsec.
    pub match_radius_arcsec: f64,
    /// Aperture radius of the aperture fluxes (measurement and forced), arcsec.
    pub aperture_radius_arcsec: f64,
    /// Background mesh cell of the re-estimated coadd background, pixels.
    pub background_cell: usize,
    /// Reference band: the first of these bands with PSF S/N at least `reference_min_snr`,
    /// else the band of highest S/N.
    pub reference_priority: Vec<String>,
    /// S/N a priority band needs to be the reference band.
    pub reference_min_snr: f64,
    /// Smallest PSF S/N of the unflagged objects whose median aperture/PSF flux ratio is the
    /// band's aperture correction.
    pub aperture_correction_min_snr: f64,
}

impl Default for MultibandConfig {
    fn default() -> Self {
        Self {
            registry: None,
            skymap: SkyMapConfig::default(),
            tracts: Vec::new(),
            patches: Vec::new(),
            bands: Vec::new(),
            match_radius_arcsec: 0.6,
            aperture_radius_arcsec: 2.4,
            background_cell: 64,
            reference_priority: ["i", "r", "z", "y", "g"].map(String::from).to_vec(),
            reference_min_snr: 10.0,
            aperture_correction_min_snr: 50.0,
        }
    }
}

impl MultibandConfig {
    /// Checks values that types cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.skymap.validate().map_err(ConfigError::SkyMap)?;
        let positive = [
            ("match_radius_arcsec", self.match_radius_arcsec),
            ("aperture_radius_arcsec", self.aperture_radius_arcsec),
            ("reference_min_snr", self.reference_min_snr),
            (
                "aperture_correction_min_snr",
                self.aperture_correction_min_snr,
            ),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::value(
                    format!("multiband.{k}"),
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if self.background_cell < 8 {
            return Err(ConfigError::value(
                "multiband.background_cell",
                "must be at least 8",
            ));
        }
        self.patch_filter()?;
        Ok(())
    }

    /// The `patches` filter as (x, y) pairs.
    pub fn patch_filter(&self) -> Result<Vec<(u32, u32)>, ConfigError> {
        self.patches
            .iter()
            .map(|s| {
                s.split_once(',')
                    .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
                    .ok_or_else(|| ConfigError::Patch(s.clone()))
            })
            .collect()
    }
}

/// A `[multiband]` table the stage refuses; each names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of range.
    #[error(transparent)]
    Value(#[from] KeyError),
    /// `[multiband.skymap]` is not a valid sky map.
    #[error("multiband.{0}")]
    SkyMap(#[source] SkyMapError),
    /// An entry of `patches` is not `"x,y"`.
    #[error("multiband.patches: '{0}' is not \"x,y\"")]
    Patch(String),
    /// Neither `registry` nor a run directory is given.
    #[error("multiband.registry is not set and there is no run directory to find it in")]
    NoRegistry,
    /// The chain's coadd stage, which this stage plans after, uses another sky map.
    #[error("[multiband.skymap] {ours:?} differs from the chain's [coadd.skymap] {coadd:?}")]
    SkyMapDiffers {
        /// `[multiband.skymap]`.
        ours: SkyMapConfig,
        /// The coadd stage's `[coadd.skymap]`.
        coadd: SkyMapConfig,
    },
}

impl ConfigError {
    /// A [`ConfigError::Value`].
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Value(KeyError::new(key, problem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key is named in errors; the defaults validate.
    #[test]
    fn validation_names_the_key() {
        assert!(MultibandConfig::default().validate().is_ok());
        let bad = MultibandConfig {
            match_radius_arcsec: 0.0,
            ..Default::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::value(
                "multiband.match_radius_arcsec",
                "must be finite and > 0, got 0"
            )
        );
        assert_eq!(
            err.to_string(),
            "multiband.match_radius_arcsec must be finite and > 0, got 0"
        );
        let bad = MultibandConfig {
            patches: vec!["1;2".into()],
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "multiband.patches: '1;2' is not \"x,y\""
        );
    }
}
