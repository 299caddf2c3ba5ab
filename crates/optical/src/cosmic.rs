//! Cosmic-ray rejection by a sharpness test against the PSF.
//!
//! A PSF-convolved source cannot be sharper than the PSF: for a Gaussian PSF of width σ the
//! centre of a source exceeds the mean of its two neighbours along an axis by at most
//! `exp(1 / (2σ²))`. A pixel is a cosmic ray when it exceeds `sharpness × that ratio ×` the
//! lower of its horizontal and vertical neighbour means by more than `nsigma` noise σ (the lower
//! pair, so that a pixel in a track is judged against the sky beside the track). Found pixels
//! are replaced by the median of the good pixels around them and the test is repeated, so
//! longer tracks are eaten from their ends; the mask is finally grown by one pixel.

use crate::image::{Image, mask};

/// Settings of the cosmic-ray test.
#[derive(Debug, Clone, Copy)]
pub struct CosmicRayParams {
    /// Smallest PSF FWHM (pixels) a real source can have; sets the sharpness limit.
    pub min_fwhm: f64,
    /// Margin over the PSF's sharpness (>1; larger is more conservative).
    pub sharpness: f64,
    /// Significance of the excess, in noise σ.
    pub nsigma: f64,
    /// Passes of detect-and-replace.
    pub passes: usize,
}

impl Default for CosmicRayParams {
    fn default() -> Self {
        Self {
            min_fwhm: 2.0,
            sharpness: 1.5,
            nsigma: 5.0,
            passes: 4,
        }
    }
}

/// Finds cosmic rays in the background-subtracted image `img` (variance `var`), marks them and
/// their 8 neighbours [`mask::CR`], and replaces the marked pixels by the median of the
/// unmarked pixels in the 5×5 box around them. Saturated pixels are never cosmic rays.
/// Returns the number of cosmic-ray pixels found (before growing).
pub fn reject_cosmic_rays(
    img: &mut Image<f32>,
    var: &Image<f32>,
    m: &mut Image<u32>,
    p: &CosmicRayParams,
) -> usize {
    let (w, h) = (img.width, img.height);
    if w < 3 || h < 3 {
        return 0;
    }
    let sigma = p.min_fwhm / 2.354_820_045;
    let limit = (p.sharpness * (1.0 / (2.0 * sigma * sigma)).exp()) as f32;
    let mut last_hits: Vec<usize> = Vec::new();
    let nsig = p.nsigma as f32;
    // (v / nsig)² below 0.99 var is far from the exact test's boundary: skipped without a sqrt.
    let quick = 0.99 * f64::from(nsig) * f64::from(nsig);
    let test = |img: &Image<f32>, m: &Image<u32>, i: usize| -> bool {
        if m.data[i] & (mask::SAT | mask::CR | mask::BAD) != 0 {
            return false;
        }
        let v = img.data[i];
        if v <= 0.0 || f64::from(v) * f64::from(v) < quick * f64::from(var.data[i].max(0.0)) {
            return false;
        }
        let s = var.data[i].max(0.0).sqrt();
        if v <= nsig * s {
            return false;
        }
        let horizontal = 0.5 * (img.data[i - 1] + img.data[i + 1]);
        let vertical = 0.5 * (img.data[i - w] + img.data[i + w]);
        let lower = horizontal.min(vertical).max(0.0);
        v - limit * lower > nsig * s
    };
    let mut hits: Vec<usize> = Vec::new();
    let mut candidates: Vec<usize> = Vec::new();
    let mut total = 0;
    for pass in 0..p.passes {
        hits.clear();
        if pass == 0 {
            for y in 1..h - 1 {
                for i in y * w + 1..(y + 1) * w - 1 {
                    if test(img, m, i) {
                        hits.push(i);
                    }
                }
            }
        } else {
            // A pixel's test reads only itself and its four neighbours, so after a pass only
            // the neighbours of the pixels it replaced can change their answer.
            candidates.clear();
            for &i in &last_hits {
                let (x, y) = (i % w, i / w);
                for (ok, j) in [
                    (y > 1, i.wrapping_sub(w)),
                    (x > 1, i.wrapping_sub(1)),
                    (x + 2 < w, i + 1),
                    (y + 2 < h, i + w),
                ] {
                    if ok {
                        candidates.push(j);
                    }
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
            for &i in &candidates {
                if test(img, m, i) {
                    hits.push(i);
                }
            }
        }
        if hits.is_empty() {
            break;
        }
        total += hits.len();
        for &i in &hits {
            m.data[i] |= mask::CR;
        }
        for &i in &hits {
            img.data[i] = replacement(img, m, i % w, i / w, mask::CR);
        }
        std::mem::swap(&mut hits, &mut last_hits);
    }
    // Grow by one pixel and repair the ring too (it holds the CR's spill-over).
    let core: Vec<usize> = (0..w * h).filter(|&i| m.data[i] & mask::CR != 0).collect();
    let mut ring = Vec::new();
    for &i in &core {
        let (x, y) = (i % w, i / w);
        for yy in y.saturating_sub(1)..(y + 2).min(h) {
            for xx in x.saturating_sub(1)..(x + 2).min(w) {
                let j = yy * w + xx;
                if m.data[j] & (mask::CR | mask::SAT) == 0 {
                    ring.push(j);
                }
            }
        }
    }
    for &j in &ring {
        m.data[j] |= mask::CR;
    }
    for &j in &ring {
        let repaired = replacement(img, m, j % w, j / w, mask::CR);
        // Only pull the ring down: a ring pixel on a real source keeps its value.
        if repaired < img.data[j] {
            img.data[j] = repaired;
        }
    }
    total
}

/// Median of the pixels in the 5×5 box around (x, y) without any of the `avoid` bits; 0 when
/// there are none.
fn replacement(img: &Image<f32>, m: &Image<u32>, x: usize, y: usize, avoid: u32) -> f32 {
    let (w, h) = (img.width, img.height);
    let mut vals: Vec<f32> = Vec::with_capacity(25);
    for yy in y.saturating_sub(2)..(y + 3).min(h) {
        for xx in x.saturating_sub(2)..(x + 3).min(w) {
            let j = yy * w + xx;
            if m.data[j] & (avoid | mask::BAD) == 0 {
                vals.push(img.data[j]);
            }
        }
    }
    if vals.is_empty() {
        return 0.0;
    }
    let mid = vals.len() / 2;
    *vals.select_nth_unstable_by(mid, f32::total_cmp).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_star(img: &mut Image<f32>, cx: f64, cy: f64, flux: f64, fwhm: f64) {
        let s = fwhm / 2.354_820_045;
        for y in 0..img.height {
            for x in 0..img.width {
                let r2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
                let v = flux / (2.0 * std::f64::consts::PI * s * s) * (-r2 / (2.0 * s * s)).exp();
                img.data[y * img.width + x] += v as f32;
            }
        }
    }

    #[test]
    fn tracks_are_found_and_stars_are_not() {
        let (w, h) = (60, 40);
        let mut img = Image::filled(w, h, 0.0f32);
        let var = Image::filled(w, h, 100.0f32);
        // A bright and a faint star, sharpest allowed PSF.
        gaussian_star(&mut img, 15.3, 20.0, 200_000.0, 2.2);
        gaussian_star(&mut img, 40.0, 10.6, 600.0, 2.2);
        // A single-pixel hit and a 4-pixel diagonal-ish track.
        img.set(30, 30, 800.0);
        for k in 0..4 {
            img.set(45 + k, 30 + k / 2, 600.0);
        }
        let mut m = Image::filled(w, h, 0u32);
        let found = reject_cosmic_rays(&mut img, &var, &mut m, &CosmicRayParams::default());
        assert_eq!(found, 5);
        assert_ne!(m.get(30, 30) & mask::CR, 0);
        for k in 0..4 {
            assert_ne!(m.get(45 + k, 30 + k / 2) & mask::CR, 0);
            assert!(img.get(45 + k, 30 + k / 2).abs() < 1.0);
        }
        for (sx, sy) in [(15, 20), (40, 11)] {
            for y in sy - 3..sy + 4 {
                for x in sx - 3..sx + 4 {
                    assert_eq!(m.get(x, y) & mask::CR, 0, "star pixel ({x},{y}) flagged");
                }
            }
        }
    }
}
