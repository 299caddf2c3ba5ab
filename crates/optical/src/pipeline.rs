//! The whole single-frame chain on one CCD, in memory: ISR → masks → variance → background →
//! cosmic rays → PSF size → PSF-matched detection → deblending → measurement.
//! No I/O here; the stage reads the inputs and writes the outputs around it.

use crate::amplifiers::Readout;
use crate::background::Background;
use crate::cosmic::{self, CosmicRayParams};
use crate::detect::{self, DetectParams};
use crate::image::{Image, mask};
use crate::isr::{self, OverscanMethod, OverscanParams};
use crate::measure::{self, FWHM_TO_SIGMA, MeasureParams, Source};
use crate::psfprofile::{self, ProfileFit};
use crate::singleframe::ConfigError;
use crate::timing::{Laps, StepTime};
use serde::{Deserialize, Serialize};

/// Settings of the chain (the `[singleframe]` table's science part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainParams {
    /// Background mesh cell, pixels. Default 64.
    pub background_cell: usize,
    /// Detection threshold on the PSF-filtered image, σ. Default 5.
    pub threshold: f64,
    /// Smallest footprint, pixels. Default 5.
    pub min_pixels: usize,
    /// Deblending: a secondary peak must rise this many σ above its saddle. Default 4.
    pub deblend_nsigma: f64,
    /// Deblending: …and this fraction of the brighter peak. Default 0.01.
    pub deblend_contrast: f64,
    /// FWHM (pixels) assumed for the first detection pass, before the PSF is measured. Default 3.
    pub initial_fwhm: f64,
    /// Aperture radius in units of the measured FWHM. Default 4.
    pub aperture_fwhm: f64,
    /// Margin (pixels) flagged EDGE. Default 4.
    pub edge: usize,
    /// Cosmic rays: smallest possible PSF FWHM (pixels). Default 2.
    pub cr_min_fwhm: f64,
    /// Cosmic rays: significance of the excess, σ. Default 5.
    pub cr_nsigma: f64,
    /// PSF stars: smallest aperture S/N. Default 30.
    pub psf_min_snr: f64,
    /// Overscan level of each amplifier of a raw frame with overscan sections (`BIASSEC…`):
    /// `"median-per-row"` (default) or `"mean"`. Left out of the configuration fingerprint
    /// while at its default.
    #[serde(skip_serializing_if = "is_default_overscan")]
    pub overscan: OverscanMethod,
    /// Order of a polynomial fitted along the rows to the per-row overscan medians (unset: the
    /// medians as they are). Only with `overscan = "median-per-row"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overscan_fit_order: Option<usize>,
}

fn is_default_overscan(m: &OverscanMethod) -> bool {
    *m == OverscanMethod::default()
}

impl Default for ChainParams {
    fn default() -> Self {
        Self {
            background_cell: 64,
            threshold: 5.0,
            min_pixels: 5,
            deblend_nsigma: 4.0,
            deblend_contrast: 0.01,
            initial_fwhm: 3.0,
            aperture_fwhm: 4.0,
            edge: 4,
            cr_min_fwhm: 2.0,
            cr_nsigma: 5.0,
            psf_min_snr: 30.0,
            overscan: OverscanMethod::default(),
            overscan_fit_order: None,
        }
    }
}

impl ChainParams {
    /// Checks values that types cannot, naming the key (under `singleframe.`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("threshold", self.threshold),
            ("deblend_nsigma", self.deblend_nsigma),
            ("initial_fwhm", self.initial_fwhm),
            ("aperture_fwhm", self.aperture_fwhm),
            ("cr_min_fwhm", self.cr_min_fwhm),
            ("cr_nsigma", self.cr_nsigma),
            ("psf_min_snr", self.psf_min_snr),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::value(
                    format!("singleframe.{k}"),
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.deblend_contrast) {
            return Err(ConfigError::value(
                "singleframe.deblend_contrast",
                format!("must be in [0, 1), got {}", self.deblend_contrast),
            ));
        }
        if self.background_cell < 8 {
            return Err(ConfigError::value(
                "singleframe.background_cell",
                "must be at least 8",
            ));
        }
        match (self.overscan, self.overscan_fit_order) {
            (OverscanMethod::Mean, Some(_)) => {
                return Err(ConfigError::value(
                    "singleframe.chain.overscan_fit_order",
                    "applies to overscan = \"median-per-row\" only",
                ));
            }
            (_, Some(order)) if order > 5 => {
                return Err(ConfigError::value(
                    "singleframe.chain.overscan_fit_order",
                    format!("must be at most 5, got {order}"),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The overscan settings of the ISR.
    pub fn overscan_params(&self) -> OverscanParams {
        OverscanParams {
            method: self.overscan,
            fit_order: self.overscan_fit_order,
        }
    }
}

/// The electrical description of one amplifier (of the whole frame when it has one), from the
/// raw header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instrument {
    /// e- per ADU.
    pub gain: f32,
    /// Read noise, e-.
    pub read_noise: f32,
    /// Saturation level of the raw image, ADU.
    pub saturate: f32,
}

/// Everything the chain produces for one CCD.
#[derive(Debug, Clone)]
pub struct ChainOutput {
    /// Calibrated, background-subtracted image, e-.
    pub image: Image<f32>,
    /// Mask plane (bits of [`mask`]).
    pub mask: Image<u32>,
    /// Variance plane, e-².
    pub variance: Image<f32>,
    /// The background model that was subtracted, e-.
    pub background: Background,
    /// PSF width that drives detection, centroids, PSF fluxes and the aperture, pixels: the
    /// Gaussian-equivalent FWHM of the stars' adaptive second moments (`2.3548 σ`,
    /// σ² = (Ixx + Iyy) / 2), not the profile's half-maximum width (for a Moffat β = 3 PSF it
    /// is about 12–14 % larger; see `psf_profile`); the initial guess when too few stars were
    /// found.
    pub psf_fwhm: f64,
    /// Whether `psf_fwhm` was measured (false: fell back to the initial guess).
    pub psf_measured: bool,
    /// The PSF stars' radial profile (a pixel-integrated Moffat fitted to them), whose `fwhm`
    /// is the PSF's half-maximum width; `None` without PSF stars.
    pub psf_profile: Option<ProfileFit>,
    /// Aperture correction applied to the PSF fluxes.
    pub aperture_correction: f64,
    /// Radius of the aperture fluxes, pixels.
    pub aperture_radius: f64,
    /// Measured sources.
    pub sources: Vec<Source>,
    /// Cosmic-ray pixels found.
    pub cosmic_ray_pixels: usize,
    /// Saturated pixels found.
    pub saturated_pixels: usize,
    /// Mean overscan level subtracted from each amplifier, ADU, in amplifier order (0 for an
    /// amplifier without overscan).
    pub overscan_levels: Vec<f64>,
    /// Wall and CPU time of each step, in order (for benchmarks and logs).
    pub timings: Vec<StepTime>,
}

/// Runs the chain on a raw image (ADU, one amplifier, nothing to trim) with optional master
/// bias and flat (same shape).
pub fn process(
    raw: Image<f32>,
    bias: Option<&Image<f32>>,
    flat: Option<&Image<f32>>,
    inst: &Instrument,
    p: &ChainParams,
) -> ChainOutput {
    let readout = Readout::single(raw.width, raw.height, *inst);
    process_with_variance(raw, bias, flat, None, &readout, p, 1)
}

/// [`process`] for a raw frame read out as `readout` says (amplifiers with their gains, read
/// noises, saturation levels and overscans; the trim), with master bias, flat and input
/// variance in the trimmed shape, on `threads` threads (1: all on the calling thread, no
/// thread pool; the results do not depend on it). The input variance (in the raw image's units
/// squared) is used instead of the Poisson + read-noise model, converted to e-² with each
/// amplifier's gain and the flat. The outputs are in the trimmed shape.
///
/// Steps, each timed in [`ChainOutput::timings`]: `isr` (overscan, trim, masks, bias, flat,
/// gain, variance), `background`, `cosmic_rays`, `psf`
/// (first detection at the initial FWHM, measurement of the bright peaks, PSF size),
/// `background2` (with that pass's footprints masked), `detection`, `measurement`,
/// `psf_profile` (the profile fit to the PSF stars). A later
/// step that needs the final catalogue (e.g. an astrometric fit) comes after `measurement`.
pub fn process_with_variance(
    raw: Image<f32>,
    bias: Option<&Image<f32>>,
    flat: Option<&Image<f32>>,
    variance_in: Option<&Image<f32>>,
    readout: &Readout,
    p: &ChainParams,
    threads: usize,
) -> ChainOutput {
    if threads > 1
        && let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build()
    {
        return pool.install(|| chain(raw, bias, flat, variance_in, readout, p, threads));
    }
    chain(raw, bias, flat, variance_in, readout, p, 1)
}

fn chain(
    raw: Image<f32>,
    bias: Option<&Image<f32>>,
    flat: Option<&Image<f32>>,
    variance_in: Option<&Image<f32>>,
    readout: &Readout,
    p: &ChainParams,
    threads: usize,
) -> ChainOutput {
    let mut laps = Laps::start();
    let isr::Trimmed {
        image: mut img,
        mask: mut m,
        saturated_pixels,
        regions,
        overscan_levels,
    } = isr::overscan_and_trim(raw, readout, &p.overscan_params());
    let (w, h) = (img.width, img.height);
    isr::mask_edges(&mut m, p.edge);
    isr::bias_flat_gain(&mut img, bias, flat, &regions, &mut m);
    let variance = match variance_in {
        None => isr::variance_plane(&img, flat, &regions, &m),
        Some(v) => isr::variance_from_input(v, flat, &regions, &mut m),
    };
    laps.lap("isr");

    // Background, then cosmic rays on the subtracted image.
    let bg = Background::estimate_threads(&img, &m, p.background_cell, threads);
    bg.subtract_from(&mut img);
    laps.lap("background");
    let crp = CosmicRayParams {
        min_fwhm: p.cr_min_fwhm,
        nsigma: p.cr_nsigma,
        ..CosmicRayParams::default()
    };
    let cosmic_ray_pixels = cosmic::reject_cosmic_rays(&mut img, &variance, &mut m, &crp);
    laps.lap("cosmic_rays");

    let dp = DetectParams {
        threshold: p.threshold,
        min_pixels: p.min_pixels,
        deblend_nsigma: p.deblend_nsigma,
        deblend_contrast: p.deblend_contrast,
    };
    // A first pass at the initial FWHM finds the bright stars and measures the PSF (the
    // adaptive moments of a bright star do not depend on the filter that found it). Only
    // peaks bright enough to be PSF stars are measured here; this pass's footprints mask the
    // sources for the second background estimate. Nothing before it sets DETECTED, so
    // clearing that bit afterwards gives the final detection the mask it would have had.
    let mut sig = Image::filled(w, h, 0.0f32);
    detect::significance_into(
        &img,
        &variance,
        &m,
        p.initial_fwhm * FWHM_TO_SIGMA,
        threads,
        &mut sig,
    );
    // Fainter footprints are only masked: none of their peaks could be measured below.
    let det = detect::detect_peaks_above(&sig, &mut m, &dp, p.psf_min_snr);
    let mp = MeasureParams {
        fwhm: p.initial_fwhm,
        aperture_radius: p.aperture_fwhm * p.initial_fwhm,
        min_significance: p.psf_min_snr,
    };
    let (bright, measured) = measure::psf_from_bright_peaks(
        &img,
        &variance,
        &m,
        &det,
        &mp,
        p.psf_min_snr,
        5.0 * p.initial_fwhm,
        threads,
    );
    drop(det);
    let psf_measured = measured.is_some();
    let fwhm = measured.unwrap_or(p.initial_fwhm);
    laps.lap("psf");
    // Background again with the detected footprints masked, then final detection.
    let residual = Background::estimate_threads(&img, &m, p.background_cell, threads);
    residual.subtract_from(&mut img);
    let mut bg = bg;
    for (l, r) in bg.levels.iter_mut().zip(&residual.levels) {
        *l += r;
    }
    for v in m.data.iter_mut() {
        *v &= !mask::DETECTED;
    }
    laps.lap("background2");

    detect::significance_into(&img, &variance, &m, fwhm * FWHM_TO_SIGMA, threads, &mut sig);
    let det = detect::detect(&sig, &mut m, &dp);
    drop(sig);
    laps.lap("detection");
    let mp = MeasureParams {
        fwhm,
        aperture_radius: p.aperture_fwhm * fwhm,
        min_significance: 0.0,
    };
    let mut sources = measure::measure_threads(&img, &variance, &m, &det, &mp, threads);
    if psf_measured {
        measure::psf_fwhm_from_stars(&mut sources, p.psf_min_snr, 5.0 * fwhm);
    }
    let aperture_correction = measure::apply_aperture_correction(&mut sources);
    laps.lap("measurement");
    // The profile is fitted to the final catalogue's PSF stars or, when that pass found too
    // few isolated ones (fainter neighbours now count), to the first pass's.
    let fit_radius = 2.5 * fwhm;
    let psf_profile = if psf_measured {
        psfprofile::fit_profile(&img, &variance, &m, &sources, fit_radius, fwhm)
            .or_else(|| psfprofile::fit_profile(&img, &variance, &m, &bright, fit_radius, fwhm))
    } else {
        None
    };
    laps.lap("psf_profile");
    ChainOutput {
        image: img,
        mask: m,
        variance,
        background: bg,
        psf_fwhm: fwhm,
        psf_measured,
        psf_profile,
        aperture_correction,
        aperture_radius: p.aperture_fwhm * fwhm,
        sources,
        cosmic_ray_pixels,
        saturated_pixels,
        overscan_levels,
        timings: laps.steps,
    }
}
