//! The `skypipe-multiband` configuration file: `[run]` and `[multiband]` (with
//! `[multiband.skymap]`). Unknown keys are refused.

use serde::{Deserialize, Serialize};
use skypipe_registry::SkyMapConfig;
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
    pub fn validate(&self) -> Result<(), String> {
        self.skymap
            .validate()
            .map_err(|e| format!("multiband.{e}"))?;
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
                return Err(format!("multiband.{k} must be finite and > 0, got {v}"));
            }
        }
        if self.background_cell < 8 {
            return Err("multiband.background_cell must be at least 8".into());
        }
        self.patch_filter()?;
        Ok(())
    }

    /// The `patches` filter as (x, y) pairs.
    pub fn patch_filter(&self) -> Result<Vec<(u32, u32)>, String> {
        self.patches
            .iter()
            .map(|s| {
                s.split_once(',')
                    .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
                    .ok_or_else(|| format!("multiband.patches: '{s}' is not \"x,y\""))
            })
            .collect()
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
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("multiband.match_radius_arcsec")
        );
        let bad = MultibandConfig {
            patches: vec!["1;2".into()],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("multiband.patches"));
    }
}
