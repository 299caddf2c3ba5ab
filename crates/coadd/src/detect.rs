//! Detection and measurement on a coadd with the optical crate's kernels: background,
//! PSF-matched detection with deblending, measurement, PSF size from the bright stars,
//! aperture correction. Pure (no I/O).

use crate::config::DetectionConfig;
use crate::stage::mask as coadd_mask;
use skypipe_optical::background::Background;
use skypipe_optical::detect::{self, DetectParams};
use skypipe_optical::image::{Image, mask};
use skypipe_optical::measure::{self, FWHM_TO_SIGMA, MeasureParams, Source};

/// A coadd's planes, row-major.
#[derive(Debug, Clone)]
pub struct CoaddPlanes {
    /// Values (`NaN` without data).
    pub image: Vec<f32>,
    /// Variances (`NaN` without data).
    pub variance: Vec<f32>,
    /// Mask bits.
    pub mask: Vec<u32>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

/// The sources of a coadd and the settings they were measured with.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Measured sources (0-based pixel positions).
    pub sources: Vec<Source>,
    /// PSF FWHM used, pixels: measured on the coadd's stars, else the inputs' mean.
    pub psf_fwhm: f64,
    /// Whether `psf_fwhm` was measured on the coadd.
    pub psf_measured: bool,
    /// Aperture radius of `flux_aper`, pixels.
    pub aperture_radius: f64,
    /// Aperture correction applied to the PSF fluxes.
    pub aperture_correction: f64,
}

/// Detects and measures sources on a coadd. Pixels without data (or with a finite value but no
/// finite positive variance) are set to 0 and marked BAD for the kernels, which then ignore
/// them; the background is re-estimated and subtracted (the inputs' were already, so this
/// removes only what is left). `psf_fwhm` is the first guess (the inputs' weighted mean).
pub fn detect_and_measure(c: &CoaddPlanes, psf_fwhm: f64, p: &DetectionConfig) -> Detection {
    let (w, h) = (c.width, c.height);
    let mut img = Image::from_vec(w, h, c.image.clone());
    let mut var = Image::from_vec(w, h, c.variance.clone());
    let mut m = Image::from_vec(w, h, c.mask.clone());
    for k in 0..w * h {
        let usable = img.data[k].is_finite() && var.data[k].is_finite() && var.data[k] > 0.0;
        if !usable || m.data[k] & coadd_mask::NO_DATA != 0 {
            img.data[k] = 0.0;
            var.data[k] = f32::MAX.sqrt();
            m.data[k] |= mask::BAD;
        }
        // The kernels know only the calexp's bits.
        m.data[k] &= !(coadd_mask::NO_DATA | coadd_mask::CLIPPED | mask::DETECTED);
    }
    let bg = Background::estimate(&img, &m, p.background_cell);
    bg.subtract_from(&mut img);
    let dp = DetectParams {
        threshold: p.threshold,
        min_pixels: p.min_pixels,
        deblend_nsigma: p.deblend_nsigma,
        deblend_contrast: p.deblend_contrast,
    };
    // First pass at the inputs' FWHM for the PSF size, then the final detection at it.
    let sig = detect::significance(&img, &var, &m, psf_fwhm * FWHM_TO_SIGMA);
    let mut first_mask = m.clone();
    let det = detect::detect(&sig, &mut first_mask, &dp);
    let mp = MeasureParams {
        fwhm: psf_fwhm,
        aperture_radius: p.aperture_fwhm * psf_fwhm,
        min_significance: p.psf_min_snr,
    };
    let mut bright = measure::measure(&img, &var, &first_mask, &det, &mp);
    let measured = measure::psf_fwhm_from_stars(&mut bright, p.psf_min_snr, 5.0 * psf_fwhm);
    let fwhm = measured.unwrap_or(psf_fwhm);
    let sig = detect::significance(&img, &var, &m, fwhm * FWHM_TO_SIGMA);
    let det = detect::detect(&sig, &mut m, &dp);
    let mp = MeasureParams {
        fwhm,
        aperture_radius: p.aperture_fwhm * fwhm,
        min_significance: 0.0,
    };
    let mut sources = measure::measure(&img, &var, &m, &det, &mp);
    if measured.is_some() {
        measure::psf_fwhm_from_stars(&mut sources, p.psf_min_snr, 5.0 * fwhm);
    }
    let aperture_correction = measure::apply_aperture_correction(&mut sources);
    Detection {
        sources,
        psf_fwhm: fwhm,
        psf_measured: measured.is_some(),
        aperture_radius: p.aperture_fwhm * fwhm,
        aperture_correction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// A Gaussian star of known flux on unit white noise with a no-data corner: it is found
    /// once, at its position, with its flux.
    #[test]
    fn a_star_on_a_coadd_with_a_hole_is_found_and_measured() {
        let (w, h) = (96usize, 96usize);
        let (x0, y0, flux, sigma) = (50.3, 44.6, 20_000.0, 1.4);
        let mut image = vec![0f32; w * h];
        let mut mask = vec![0u32; w * h];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for y in 0..h {
            for x in 0..w {
                let r2 = (x as f64 - x0).powi(2) + (y as f64 - y0).powi(2);
                let g = flux / (2.0 * std::f64::consts::PI * sigma * sigma)
                    * (-r2 / (2.0 * sigma * sigma)).exp();
                image[y * w + x] = (g + rng.sample::<f64, _>(StandardNormal)) as f32;
                if x < 10 && y < 10 {
                    image[y * w + x] = f32::NAN;
                    mask[y * w + x] = coadd_mask::NO_DATA;
                }
            }
        }
        let variance = vec![1.0f32; w * h];
        let planes = CoaddPlanes {
            image,
            variance,
            mask,
            width: w,
            height: h,
        };
        let d = detect_and_measure(&planes, 3.0, &DetectionConfig::default());
        assert_eq!(d.sources.len(), 1, "{:?}", d.sources);
        let s = &d.sources[0];
        assert!((s.x - x0).hypot(s.y - y0) < 0.05, "{s:?}");
        assert!((s.flux_aper / flux - 1.0).abs() < 0.005, "{s:?}");
    }
}
