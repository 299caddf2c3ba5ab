//! The `skypipe-coadd` configuration file: `[run]` and `[coadd]` (with `[coadd.skymap]` and
//! `[coadd.detection]`). Unknown keys are refused.

use serde::{Deserialize, Serialize};
use skypipe_registry::{SkyMapConfig, SkyMapError};
use skypipe_stage::KeyError;
use std::path::PathBuf;

/// The configuration file: the engine's `[run]` table (type `R`, the engine's `RunOptions` in
/// the binary) and `[coadd]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoaddFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub coadd: CoaddConfig,
}

/// Where a CCD's WCS comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WcsSource {
    /// The registry's fitted WCS of the CCD, or its calexp's header WCS when uncalibrated.
    #[default]
    Singleframe,
    /// The registry's `mosaic_wcs` row of the CCD in the patch's tract (`skypipe-mosaic`); a CCD
    /// the mosaic left unsolved (too few stars) keeps its single-frame WCS, flagged in the warp
    /// (`WCSSRC`) and the coadd (`INWCSn`, `NWCSFALL`).
    Mosaic,
}

/// The WCS a warp was actually made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WcsUsed {
    /// The single-frame WCS, as configured (`wcs = "singleframe"`).
    Singleframe,
    /// Mosaic's corrected WCS.
    Mosaic,
    /// The single-frame WCS because the mosaic of the tract left the CCD unsolved
    /// (`wcs = "mosaic"`).
    SingleframeFallback,
}

impl WcsUsed {
    /// The FITS card value (`WCSSRC`, `INWCSn`).
    pub fn card_value(self) -> &'static str {
        match self {
            WcsUsed::Singleframe => "singleframe",
            WcsUsed::Mosaic => "mosaic",
            WcsUsed::SingleframeFallback => "singleframe-fallback",
        }
    }
}

/// What a warp does with a CCD that has no zero point in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingZeroPoint {
    /// The warp unit ends no-work, naming the reason.
    #[default]
    Skip,
    /// The CCD is taken to be at the common zero point already (flux scale 1).
    Unscaled,
}

/// The `[coadd]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoaddConfig {
    /// Registry database (filled by `skypipe-singleframe`). Default `RUN_DIR/registry.sqlite3`.
    /// Relative calexp paths in it are taken relative to its directory.
    pub registry: Option<PathBuf>,
    /// The sky map (`[coadd.skymap]`); stored in the registry, which refuses a different one.
    pub skymap: SkyMapConfig,
    /// Only these tracts (empty: all).
    pub tracts: Vec<u32>,
    /// Only these patches, as `"x,y"` (empty: all).
    pub patches: Vec<String>,
    /// Only these bands (empty: all).
    pub bands: Vec<String>,
    /// Common zero point of warps and coadds, mag (`mag = zero_point − 2.5 log10(value)`).
    pub zero_point: f64,
    /// CCDs without a zero point: `"skip"` (no-work) or `"unscaled"`.
    pub missing_zero_point: MissingZeroPoint,
    /// Source of the CCDs' WCS: `"singleframe"` or `"mosaic"`.
    pub wcs: WcsSource,
    /// Spacing (patch pixels) of the coarse grid on which the CCD → patch mapping is evaluated
    /// exactly.
    pub coarse_step: usize,
    /// Clipping threshold, σ.
    pub clip_sigma: f64,
    /// Clipping rounds.
    pub clip_iterations: u32,
    /// Fraction of the pixel value added in quadrature to an input's σ when clipping.
    pub clip_amplitude_fraction: f64,
    /// Margin, arcsec, by which a CCD known only from its raw header (ingested by
    /// `skypipe-ingest`, not yet processed: a chain run) is grown when planning its warps: the
    /// raw header WCS's pointing error. A warp planned this way whose CCD turns out not to reach
    /// the patch finds no data and is no-work.
    pub plan_margin_arcsec: f64,
    /// Keep the warps (default). When false, each detect unit deletes its patch's warps in its
    /// band: it runs only after the coadd is recorded done, so a resumed run never needs them
    /// (warps are then not declared as outputs, so resuming does not remake them).
    pub keep_warps: bool,
    /// Detection on the coadd (`[coadd.detection]`).
    pub detection: DetectionConfig,
}

impl Default for CoaddConfig {
    fn default() -> Self {
        Self {
            registry: None,
            skymap: SkyMapConfig::default(),
            tracts: Vec::new(),
            patches: Vec::new(),
            bands: Vec::new(),
            zero_point: 27.0,
            missing_zero_point: MissingZeroPoint::Skip,
            wcs: WcsSource::Singleframe,
            coarse_step: 16,
            clip_sigma: 3.0,
            clip_iterations: 2,
            clip_amplitude_fraction: 0.3,
            plan_margin_arcsec: 60.0,
            keep_warps: true,
            detection: DetectionConfig::default(),
        }
    }
}

/// The `[coadd.detection]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Background mesh cell, pixels.
    pub background_cell: usize,
    /// Detection threshold on the PSF-filtered image, σ.
    pub threshold: f64,
    /// Smallest footprint, pixels.
    pub min_pixels: usize,
    /// Deblending: a secondary peak must rise this many σ above its saddle.
    pub deblend_nsigma: f64,
    /// Deblending: …and this fraction of the brighter peak.
    pub deblend_contrast: f64,
    /// Aperture radius in units of the PSF FWHM.
    pub aperture_fwhm: f64,
    /// PSF stars: smallest aperture S/N.
    pub psf_min_snr: f64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            background_cell: 64,
            threshold: 5.0,
            min_pixels: 5,
            deblend_nsigma: 4.0,
            deblend_contrast: 0.01,
            aperture_fwhm: 4.0,
            psf_min_snr: 30.0,
        }
    }
}

impl CoaddConfig {
    /// Checks values that types cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.skymap.validate().map_err(ConfigError::SkyMap)?;
        let positive = [
            ("zero_point", self.zero_point),
            ("clip_sigma", self.clip_sigma),
            ("detection.threshold", self.detection.threshold),
            ("detection.deblend_nsigma", self.detection.deblend_nsigma),
            ("detection.aperture_fwhm", self.detection.aperture_fwhm),
            ("detection.psf_min_snr", self.detection.psf_min_snr),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::value(
                    format!("coadd.{k}"),
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if !(self.clip_amplitude_fraction.is_finite() && self.clip_amplitude_fraction >= 0.0) {
            return Err(ConfigError::value(
                "coadd.clip_amplitude_fraction",
                format!(
                    "must be finite and ≥ 0, got {}",
                    self.clip_amplitude_fraction
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.detection.deblend_contrast) {
            return Err(ConfigError::value(
                "coadd.detection.deblend_contrast",
                format!("must be in [0, 1), got {}", self.detection.deblend_contrast),
            ));
        }
        if !(self.plan_margin_arcsec.is_finite() && self.plan_margin_arcsec >= 0.0) {
            return Err(ConfigError::value(
                "coadd.plan_margin_arcsec",
                format!("must be finite and ≥ 0, got {}", self.plan_margin_arcsec),
            ));
        }
        if self.coarse_step == 0 {
            return Err(ConfigError::value(
                "coadd.coarse_step",
                "must be at least 1",
            ));
        }
        if self.detection.background_cell < 8 {
            return Err(ConfigError::value(
                "coadd.detection.background_cell",
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

/// A `[coadd]` table the stage refuses; each names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of range.
    #[error(transparent)]
    Value(#[from] KeyError),
    /// `[coadd.skymap]` is not a valid sky map.
    #[error("coadd.{0}")]
    SkyMap(#[source] SkyMapError),
    /// An entry of `patches` is not `"x,y"`.
    #[error("coadd.patches: '{0}' is not \"x,y\"")]
    Patch(String),
    /// Neither `registry` nor a run directory is given.
    #[error("coadd.registry is not set and there is no run directory to find it in")]
    NoRegistry,
}

impl ConfigError {
    /// A [`ConfigError::Value`].
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Value(KeyError::new(key, problem))
    }
}
