//! Measurement of detected sources: windowed centroids, aperture and PSF-weighted fluxes with
//! errors, adaptive second moments, flags, and the PSF size from bright isolated stars.

use crate::image::{Image, mask};

/// σ of a Gaussian per unit FWHM.
pub const FWHM_TO_SIGMA: f64 = 1.0 / 2.354_820_045_030_949;

/// Source flags (bits of the catalogue's `FLAGS` column).
pub mod flags {
    /// The aperture reaches beyond the image or into the edge margin.
    pub const EDGE: u32 = 1;
    /// Saturated pixels within the source's segment or aperture core.
    pub const SATURATED: u32 = 2;
    /// Cosmic-ray (interpolated) pixels within the aperture core.
    pub const COSMIC_RAY: u32 = 4;
    /// The footprint held more than one source (deblended).
    pub const BLENDED: u32 = 8;
    /// Bad pixels within the aperture.
    pub const BAD_PIXELS: u32 = 16;
    /// The windowed centroid did not converge; the peak pixel is reported.
    pub const CENTROID_FAILED: u32 = 32;
    /// The adaptive moments did not converge; windowed moments are reported.
    pub const MOMENTS_FAILED: u32 = 64;
    /// Used to measure the PSF size.
    pub const PSF_STAR: u32 = 128;
    /// Every flag as (header keyword, bit, meaning), for the catalogue header.
    pub const NAMES: [(&str, u32, &str); 8] = [
        ("FL_EDGE", EDGE, "aperture reaches the edge"),
        ("FL_SAT", SATURATED, "saturated pixels"),
        ("FL_CR", COSMIC_RAY, "cosmic-ray pixels in the core"),
        ("FL_BLEND", BLENDED, "deblended"),
        ("FL_BAD", BAD_PIXELS, "bad pixels in the aperture"),
        ("FL_CENT", CENTROID_FAILED, "centroid failed"),
        ("FL_MOM", MOMENTS_FAILED, "adaptive moments failed"),
        ("FL_PSF", PSF_STAR, "used for the PSF size"),
    ];
}

/// Windowed centroid (SExtractor's XWIN): iterates `c ← c + 2 Σ w I (x − c) / Σ w I` with a
/// circular Gaussian window of `sigma` pixels, within 4σ, until the step is below 1e-5 px.
/// For a source symmetric about its centre the fixed point is that centre.
/// Returns `None` when it fails to converge or leaves the 2σ neighbourhood of the start.
pub fn windowed_centroid(img: &Image<f32>, x0: f64, y0: f64, sigma: f64) -> Option<(f64, f64)> {
    let (mut cx, mut cy) = (x0, y0);
    let r = 4.0 * sigma;
    let inv = 1.0 / (2.0 * sigma * sigma);
    let mut wx: Vec<f64> = Vec::new();
    for _ in 0..50 {
        let (xlo, xhi, ylo, yhi) = window(img, cx, cy, r)?;
        // The Gaussian window is separable: one exponential per column and per row.
        wx.clear();
        wx.extend((xlo..=xhi).map(|x| (-(x as f64 - cx).powi(2) * inv).exp()));
        let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for y in ylo..=yhi {
            let dy = y as f64 - cy;
            let wy = (-dy * dy * inv).exp();
            let row = &img.data[y * img.width..(y + 1) * img.width];
            for (k, x) in (xlo..=xhi).enumerate() {
                let dx = x as f64 - cx;
                if dx * dx + dy * dy > r * r {
                    continue;
                }
                let wi = wx[k] * wy * f64::from(row[x]);
                sw += wi;
                sx += wi * dx;
                sy += wi * dy;
            }
        }
        if sw <= 0.0 {
            return None;
        }
        let (stepx, stepy) = (2.0 * sx / sw, 2.0 * sy / sw);
        cx += stepx;
        cy += stepy;
        if (cx - x0).hypot(cy - y0) > 2.0 * sigma.max(1.0) {
            return None;
        }
        if stepx.hypot(stepy) < 1e-5 {
            return Some((cx, cy));
        }
    }
    None
}

/// Pixel bounds of a square of half-size `r` around (cx, cy), clipped to the image.
fn window(img: &Image<f32>, cx: f64, cy: f64, r: f64) -> Option<(usize, usize, usize, usize)> {
    if !(cx.is_finite() && cy.is_finite()) || img.is_empty() {
        return None;
    }
    let xlo = (cx - r).floor().max(0.0) as usize;
    let ylo = (cy - r).floor().max(0.0) as usize;
    let xhi = ((cx + r).ceil() as i64).min(img.width as i64 - 1);
    let yhi = ((cy + r).ceil() as i64).min(img.height as i64 - 1);
    if xhi < 0 || yhi < 0 || xlo as i64 > xhi || ylo as i64 > yhi {
        return None;
    }
    Some((xlo, xhi as usize, ylo, yhi as usize))
}

/// Fraction of pixel (x, y) (a unit square centred there) inside the circle of radius `r`
/// around (cx, cy): exact 0 or 1 away from the rim, 8×8 sub-sampling near it.
pub fn pixel_fraction(x: f64, y: f64, cx: f64, cy: f64, r: f64) -> f64 {
    // Whole pixels in or out, tested on squared distances: within 0.088 px of these limits
    // every sub-sample still lies on the same side, so rounding cannot change the result.
    let d2 = (x - cx).powi(2) + (y - cy).powi(2);
    let inner = r - std::f64::consts::FRAC_1_SQRT_2;
    if inner >= 0.0 && d2 <= inner * inner {
        return 1.0;
    }
    let outer = r + std::f64::consts::FRAC_1_SQRT_2;
    if d2 >= outer * outer {
        return 0.0;
    }
    let mut inside = 0;
    for j in 0..8 {
        for i in 0..8 {
            let sx = x - 0.5 + (i as f64 + 0.5) / 8.0;
            let sy = y - 0.5 + (j as f64 + 0.5) / 8.0;
            if (sx - cx).powi(2) + (sy - cy).powi(2) <= r * r {
                inside += 1;
            }
        }
    }
    f64::from(inside) / 64.0
}

/// Circular aperture flux and its error: `Σ f I`, `sqrt(Σ f² V)` with `f` the pixel fractions,
/// plus the OR of the mask bits of the pixels in the aperture and whether it left the image.
pub fn aperture_flux(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    cx: f64,
    cy: f64,
    r: f64,
) -> (f64, f64, u32, bool) {
    let outside = cx - r < -0.5
        || cy - r < -0.5
        || cx + r > img.width as f64 - 0.5
        || cy + r > img.height as f64 - 0.5;
    let Some((xlo, xhi, ylo, yhi)) = window(img, cx, cy, r + 1.0) else {
        return (0.0, 0.0, 0, true);
    };
    let (mut f, mut v, mut bits) = (0.0, 0.0, 0u32);
    for y in ylo..=yhi {
        for x in xlo..=xhi {
            let frac = pixel_fraction(x as f64, y as f64, cx, cy, r);
            if frac > 0.0 {
                let i = y * img.width + x;
                f += frac * f64::from(img.data[i]);
                v += frac * frac * f64::from(var.data[i]);
                bits |= m.data[i];
            }
        }
    }
    (f, v.sqrt(), bits, outside)
}

/// PSF-weighted flux with a circular Gaussian PSF model of `sigma` pixels centred at (cx, cy):
/// the least-squares amplitude `Σ P I / Σ P²` (P normalised to unit sum) and its error
/// `sqrt(Σ P² V) / Σ P²`, over 4σ.
pub fn psf_flux(img: &Image<f32>, var: &Image<f32>, cx: f64, cy: f64, sigma: f64) -> (f64, f64) {
    let r = 4.0 * sigma;
    let Some((xlo, xhi, ylo, yhi)) = window(img, cx, cy, r) else {
        return (0.0, 0.0);
    };
    let norm = 1.0 / (2.0 * std::f64::consts::PI * sigma * sigma);
    let inv = 1.0 / (2.0 * sigma * sigma);
    let (mut spi, mut spp, mut sppv) = (0.0, 0.0, 0.0);
    for y in ylo..=yhi {
        for x in xlo..=xhi {
            let r2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
            if r2 > r * r {
                continue;
            }
            let p = norm * (-r2 * inv).exp();
            let i = y * img.width + x;
            spi += p * f64::from(img.data[i]);
            spp += p * p;
            sppv += p * p * f64::from(var.data[i]);
        }
    }
    if spp <= 0.0 {
        return (0.0, 0.0);
    }
    (spi / spp, sppv.sqrt() / spp)
}

/// Second moments `(Ixx, Iyy, Ixy)` in pixels², adaptive (Bernstein & Jarvis): the elliptical
/// Gaussian weight is iterated to twice the weighted moments it measures, which converges to
/// the source's own covariance for a Gaussian source. `None` if it does not converge, or if
/// the weight's 3σ radius grows beyond `max_radius` pixels (in a crowded field the weight can
/// otherwise swallow the neighbours and grow to the size of the image).
pub fn adaptive_moments(
    img: &Image<f32>,
    cx: f64,
    cy: f64,
    sigma0: f64,
    max_radius: f64,
) -> Option<(f64, f64, f64)> {
    let (mut wxx, mut wyy, mut wxy) = (sigma0 * sigma0, sigma0 * sigma0, 0.0);
    for _ in 0..100 {
        let det = wxx * wyy - wxy * wxy;
        if det <= 0.0 || !det.is_finite() {
            return None;
        }
        let (ixx, iyy, ixy) = (wyy / det, wxx / det, -wxy / det);
        // Within 3σ of the weight: the weighted integrand (weight × source) is narrower still.
        let r = 3.0 * wxx.max(wyy).sqrt();
        if r > max_radius || r > 0.5 * img.width.min(img.height) as f64 + 10.0 {
            return None;
        }
        let (xlo, xhi, ylo, yhi) = window(img, cx, cy, r)?;
        let (mut s, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for y in ylo..=yhi {
            let dy = y as f64 - cy;
            // The run of this row inside the ellipse q ≤ 9 (a quadratic in dx), widened by a
            // pixel and a hair of q each side so that rounding cannot lose a pixel; the exact
            // test below still decides, so the sums are those over the whole window.
            let half_b = ixy * dy;
            let disc = half_b * half_b - ixx * (iyy * dy * dy - 9.0 - 1e-6);
            if disc.is_nan() || disc < 0.0 {
                continue;
            }
            let root = disc.sqrt();
            let from = cx + (-half_b - root) / ixx - 1.0;
            let to = cx + (-half_b + root) / ixx + 1.0;
            let xa = if from > xlo as f64 {
                from.floor() as usize
            } else {
                xlo
            };
            let xb = if to < xhi as f64 {
                to.ceil() as usize
            } else {
                xhi
            };
            if xa > xb {
                continue;
            }
            let row = &img.data[y * img.width + xa..=y * img.width + xb];
            for (x, &pixel) in (xa..=xb).zip(row) {
                let dx = x as f64 - cx;
                let q = ixx * dx * dx + iyy * dy * dy + 2.0 * ixy * dx * dy;
                if q > 9.0 {
                    continue;
                }
                let wi = (-0.5 * q).exp() * f64::from(pixel);
                s += wi;
                sxx += wi * dx * dx;
                syy += wi * dy * dy;
                sxy += wi * dx * dy;
            }
        }
        if s <= 0.0 {
            return None;
        }
        let (mxx, myy, mxy) = (2.0 * sxx / s, 2.0 * syy / s, 2.0 * sxy / s);
        if mxx <= 0.0 || myy <= 0.0 || mxx * myy <= mxy * mxy {
            return None;
        }
        let change = (mxx - wxx).abs() + (myy - wyy).abs() + (mxy - wxy).abs();
        wxx = mxx;
        wyy = myy;
        wxy = mxy;
        if change < 1e-4 * (wxx + wyy) {
            return Some((wxx, wyy, wxy));
        }
    }
    None
}

/// One measured source, in pixel coordinates with (0, 0) at the centre of the first pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Windowed centroid x.
    pub x: f64,
    /// Windowed centroid y.
    pub y: f64,
    /// Peak significance in the filtered image (σ).
    pub significance: f64,
    /// Aperture flux (e-), radius `aperture_radius`.
    pub flux_aper: f64,
    /// Its 1σ error.
    pub flux_aper_err: f64,
    /// PSF-weighted flux (e-), scaled by the aperture correction measured on the PSF stars.
    pub flux_psf: f64,
    /// Its 1σ error.
    pub flux_psf_err: f64,
    /// Second moment xx (pixels²).
    pub ixx: f64,
    /// Second moment yy (pixels²).
    pub iyy: f64,
    /// Second moment xy (pixels²).
    pub ixy: f64,
    /// Index of the footprint.
    pub footprint: usize,
    /// Bits from [`flags`].
    pub flags: u32,
}

/// Measurement settings.
#[derive(Debug, Clone, Copy)]
pub struct MeasureParams {
    /// PSF FWHM (pixels): sets the centroid window, the PSF model and the aperture.
    pub fwhm: f64,
    /// Aperture radius (pixels).
    pub aperture_radius: f64,
    /// Peaks below this significance are skipped (0 measures every peak).
    pub min_significance: f64,
}

/// Measures every peak of `det` on the background-subtracted image.
pub fn measure(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    det: &crate::detect::Detections,
    p: &MeasureParams,
) -> Vec<Source> {
    measure_threads(img, var, m, det, p, 1)
}

/// [`measure`] with the peaks shared among `threads` threads of the current rayon pool
/// (1: on the calling thread). The sources come out in the same order whatever `threads`.
pub fn measure_threads(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    det: &crate::detect::Detections,
    p: &MeasureParams,
    threads: usize,
) -> Vec<Source> {
    measure_selected(img, var, m, det, p, threads, true).1
}

/// The peaks of `det` at or above `p.min_significance`, in order, and their sources
/// ([`measure_peak`] with `full`), the peaks shared among `threads` threads.
fn measure_selected<'d>(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    det: &'d crate::detect::Detections,
    p: &MeasureParams,
    threads: usize,
    full: bool,
) -> (Vec<&'d crate::detect::Peak>, Vec<Source>) {
    let peaks: Vec<&crate::detect::Peak> = det
        .peaks
        .iter()
        .filter(|pk| f64::from(pk.significance) >= p.min_significance)
        .collect();
    let one = |pk: &&crate::detect::Peak| measure_peak(img, var, m, det, pk, p, full);
    let sources = if threads > 1 {
        use rayon::prelude::*;
        peaks.par_iter().map(one).collect()
    } else {
        peaks.iter().map(one).collect()
    };
    (peaks, sources)
}

/// Measures one peak. Without `full`, the PSF flux and the adaptive moments are left out
/// (zero flux, the PSF's moments, no [`flags::MOMENTS_FAILED`]): [`psf_from_bright_peaks`]
/// takes the moments of the PSF-star candidates only.
fn measure_peak(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    det: &crate::detect::Detections,
    pk: &crate::detect::Peak,
    p: &MeasureParams,
    full: bool,
) -> Source {
    let sigma = p.fwhm * FWHM_TO_SIGMA;
    let core = p.fwhm.max(1.5);
    let mut fl = 0;
    let (x, y) = match windowed_centroid(img, pk.x as f64, pk.y as f64, sigma) {
        Some(c) => c,
        None => {
            fl |= flags::CENTROID_FAILED;
            (pk.x as f64, pk.y as f64)
        }
    };
    let (fa, fae, bits, outside) = aperture_flux(img, var, m, x, y, p.aperture_radius);
    let core_bits = mask_bits_within(m, x, y, core);
    let (fp, fpe) = if full {
        psf_flux(img, var, x, y, sigma)
    } else {
        (0.0, 0.0)
    };
    let (ixx, iyy, ixy) = if full {
        match peak_moments(img, pk, x, y, sigma) {
            Some(mo) => mo,
            None => {
                fl |= flags::MOMENTS_FAILED;
                (sigma * sigma, sigma * sigma, 0.0)
            }
        }
    } else {
        (sigma * sigma, sigma * sigma, 0.0)
    };
    if outside || bits & mask::EDGE != 0 {
        fl |= flags::EDGE;
    }
    if core_bits & mask::SAT != 0 || segment_has(det, m, pk, mask::SAT) {
        fl |= flags::SATURATED;
    }
    if core_bits & mask::CR != 0 {
        fl |= flags::COSMIC_RAY;
    }
    if bits & mask::BAD != 0 {
        fl |= flags::BAD_PIXELS;
    }
    if det.children[pk.footprint] > 1 {
        fl |= flags::BLENDED;
    }
    Source {
        x,
        y,
        significance: f64::from(pk.significance),
        flux_aper: fa,
        flux_aper_err: fae,
        flux_psf: fp,
        flux_psf_err: fpe,
        ixx,
        iyy,
        ixy,
        footprint: pk.footprint,
        flags: fl,
    }
}

/// The adaptive moments of a peak's source centred at (x, y), the weight allowed to reach
/// well past the source's own segment, never far past it.
fn peak_moments(
    img: &Image<f32>,
    pk: &crate::detect::Peak,
    x: f64,
    y: f64,
    sigma: f64,
) -> Option<(f64, f64, f64)> {
    let seg_radius = (pk.area as f64 / std::f64::consts::PI).sqrt();
    adaptive_moments(img, x, y, sigma, 2.0 * seg_radius + 6.0 * sigma)
}

/// The first pass's PSF size: the peaks of `det` at or above `p.min_significance` measured as
/// [`measure_threads`] does but without PSF fluxes, and adaptive moments taken only of the
/// sources [`psf_fwhm_from_stars`] could use (unflagged, aperture S/N ≥ `min_snr`, isolated);
/// then the size from them as [`psf_fwhm_from_stars`] gives it, the same stars flagged
/// [`flags::PSF_STAR`]. The other sources carry the PSF's moments and no PSF flux.
#[allow(clippy::too_many_arguments)]
pub fn psf_from_bright_peaks(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    det: &crate::detect::Detections,
    p: &MeasureParams,
    min_snr: f64,
    isolation: f64,
    threads: usize,
) -> (Vec<Source>, Option<f64>) {
    let (peaks, mut sources) = measure_selected(img, var, m, det, p, threads, false);
    let sigma = p.fwhm * FWHM_TO_SIGMA;
    let mut cand = Vec::new();
    for i in star_candidates(
        &sources,
        min_snr,
        isolation,
        STAR_BAD & !flags::MOMENTS_FAILED,
    ) {
        let s = &mut sources[i];
        match peak_moments(img, peaks[i], s.x, s.y, sigma) {
            Some((ixx, iyy, ixy)) => {
                (s.ixx, s.iyy, s.ixy) = (ixx, iyy, ixy);
                cand.push((i, ((ixx + iyy) / 2.0).sqrt()));
            }
            None => s.flags |= flags::MOMENTS_FAILED,
        }
    }
    let fwhm = size_from_candidates(&mut sources, &cand);
    (sources, fwhm)
}

/// Flags that keep a source out of the PSF stars.
const STAR_BAD: u32 = flags::EDGE
    | flags::SATURATED
    | flags::COSMIC_RAY
    | flags::BLENDED
    | flags::BAD_PIXELS
    | flags::CENTROID_FAILED
    | flags::MOMENTS_FAILED;

/// Indices, in order, of the sources without any of the `bad` flags, with aperture S/N ≥
/// `min_snr` and no neighbour brighter than 1 % of them within `isolation` pixels.
fn star_candidates(sources: &[Source], min_snr: f64, isolation: f64, bad: u32) -> Vec<usize> {
    let neighbours = NeighbourIndex::new(sources.iter().map(|o| o.x));
    let mut cand = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        if s.flags & bad != 0 || s.flux_aper_err <= 0.0 || s.flux_aper / s.flux_aper_err < min_snr {
            continue;
        }
        let crowded = neighbours.any_within(
            i,
            (s.x, s.y),
            isolation,
            |j| (sources[j].x, sources[j].y),
            |j| sources[j].flux_aper > 0.01 * s.flux_aper,
        );
        if !crowded {
            cand.push(i);
        }
    }
    cand
}

/// OR of the mask bits of the pixels whose centres lie within `r` of (cx, cy).
fn mask_bits_within(m: &Image<u32>, cx: f64, cy: f64, r: f64) -> u32 {
    let xlo = (cx - r).floor().max(0.0) as usize;
    let ylo = (cy - r).floor().max(0.0) as usize;
    let xhi = ((cx + r).ceil().max(0.0) as usize).min(m.width.saturating_sub(1));
    let yhi = ((cy + r).ceil().max(0.0) as usize).min(m.height.saturating_sub(1));
    let mut bits = 0;
    for y in ylo..=yhi {
        for x in xlo..=xhi {
            if (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2) <= r * r {
                bits |= m.data[y * m.width + x];
            }
        }
    }
    bits
}

/// Whether any pixel of the peak's segment carries `bit` (checked in the segment's bounding
/// neighbourhood, which is small for all but the largest sources).
fn segment_has(
    det: &crate::detect::Detections,
    m: &Image<u32>,
    pk: &crate::detect::Peak,
    bit: u32,
) -> bool {
    let label = det.segments.get(pk.x, pk.y);
    let r = ((pk.area as f64).sqrt() as usize + 2).min(200);
    let (w, h) = (m.width, m.height);
    for y in pk.y.saturating_sub(r)..(pk.y + r + 1).min(h) {
        for x in pk.x.saturating_sub(r)..(pk.x + r + 1).min(w) {
            let i = y * w + x;
            if det.segments.data[i] == label && m.data[i] & bit != 0 {
                return true;
            }
        }
    }
    false
}

/// Measures the PSF FWHM (pixels) from bright, unflagged, isolated sources: the adaptive size
/// `sqrt((Ixx + Iyy) / 2)` of each, then the stellar locus (sources within 15% of the 20th
/// percentile of sizes; galaxies are larger). Marks the sources used with
/// [`flags::PSF_STAR`]. `None` with fewer than 3 candidates.
pub fn psf_fwhm_from_stars(sources: &mut [Source], min_snr: f64, isolation: f64) -> Option<f64> {
    let cand: Vec<(usize, f64)> = star_candidates(sources, min_snr, isolation, STAR_BAD)
        .into_iter()
        .map(|i| (i, ((sources[i].ixx + sources[i].iyy) / 2.0).sqrt()))
        .collect();
    size_from_candidates(sources, &cand)
}

/// The stellar locus of the `(index, size)` candidates, its median size as a FWHM, and its
/// stars flagged [`flags::PSF_STAR`]; `None` with fewer than 3 candidates.
fn size_from_candidates(sources: &mut [Source], cand: &[(usize, f64)]) -> Option<f64> {
    if cand.len() < 3 {
        return None;
    }
    let stars = stellar_locus(cand);
    let mut locus: Vec<f64> = stars.iter().map(|c| c.1).collect();
    locus.sort_by(f64::total_cmp);
    let size = locus[locus.len() / 2];
    for c in &stars {
        sources[c.0].flags |= flags::PSF_STAR;
    }
    Some(size / FWHM_TO_SIGMA)
}

/// Positions sorted by x, so that the neighbours of a point within a radius are a contiguous
/// run of them.
pub struct NeighbourIndex {
    by_x: Vec<(f64, usize)>,
}

impl NeighbourIndex {
    /// The index of items with these x coordinates (item `j` is the `j`th).
    pub fn new(xs: impl Iterator<Item = f64>) -> Self {
        let mut by_x: Vec<(f64, usize)> = xs.enumerate().map(|(j, x)| (x, j)).collect();
        by_x.sort_by(|a, b| a.0.total_cmp(&b.0));
        NeighbourIndex { by_x }
    }

    /// Whether an item other than `i`, at `position(j)` closer than `radius` to `at`, has
    /// `counts(j)`.
    pub fn any_within(
        &self,
        i: usize,
        at: (f64, f64),
        radius: f64,
        position: impl Fn(usize) -> (f64, f64),
        counts: impl Fn(usize) -> bool,
    ) -> bool {
        // One pixel of slack each side keeps every item the exact test below could accept.
        let start = self.by_x.partition_point(|&(x, _)| x < at.0 - radius - 1.0);
        self.by_x[start..]
            .iter()
            .take_while(|&&(x, _)| x <= at.0 + radius + 1.0)
            .any(|&(_, j)| {
                let (x, y) = position(j);
                j != i && (x - at.0).hypot(y - at.1) < radius && counts(j)
            })
    }
}

/// The stellar locus of `(index, size)` candidates (at least one): those whose size lies
/// within 15 % of the candidates' 20th-percentile size (galaxies and blends are larger).
pub fn stellar_locus(candidates: &[(usize, f64)]) -> Vec<(usize, f64)> {
    let mut sizes: Vec<f64> = candidates.iter().map(|c| c.1).collect();
    sizes.sort_by(f64::total_cmp);
    let p20 = sizes[sizes.len() / 5];
    candidates
        .iter()
        .filter(|c| c.1 >= 0.85 * p20 && c.1 <= 1.15 * p20)
        .copied()
        .collect()
}

/// Scales every PSF flux by the median aperture/PSF flux ratio of the PSF stars (the aperture
/// correction), so both fluxes measure the same total flux; returns the factor (1 without stars).
pub fn apply_aperture_correction(sources: &mut [Source]) -> f64 {
    let mut ratios: Vec<f64> = sources
        .iter()
        .filter(|s| s.flags & flags::PSF_STAR != 0 && s.flux_psf > 0.0)
        .map(|s| s.flux_aper / s.flux_psf)
        .collect();
    if ratios.is_empty() {
        return 1.0;
    }
    ratios.sort_by(f64::total_cmp);
    let c = ratios[ratios.len() / 2];
    for s in sources.iter_mut() {
        s.flux_psf *= c;
        s.flux_psf_err *= c;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn gaussian(
        w: usize,
        h: usize,
        cx: f64,
        cy: f64,
        flux: f64,
        sxx: f64,
        syy: f64,
        sxy: f64,
    ) -> Image<f32> {
        // Pixel values sampled 10×10 per pixel (an accurate pixel integral).
        let det = sxx * syy - sxy * sxy;
        let (ixx, iyy, ixy) = (syy / det, sxx / det, -sxy / det);
        let norm = flux / (2.0 * std::f64::consts::PI * det.sqrt());
        let mut img = Image::filled(w, h, 0.0f32);
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                for j in 0..10 {
                    for i in 0..10 {
                        let dx = x as f64 - 0.45 + i as f64 / 10.0 - cx;
                        let dy = y as f64 - 0.45 + j as f64 / 10.0 - cy;
                        s += (-0.5 * (ixx * dx * dx + iyy * dy * dy + 2.0 * ixy * dx * dy)).exp();
                    }
                }
                img.set(x, y, (norm * s / 100.0) as f32);
            }
        }
        img
    }

    #[test]
    fn first_pass_psf_size_is_that_of_the_full_measurement() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        // Stars of σ 1.5 px (bright and faint, a blended pair, one at the edge), two wider
        // galaxies, on noise of σ 3.
        let (w, h) = (220, 180);
        let mut img = Image::filled(w, h, 0.0f32);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let noise = Normal::new(0.0f32, 3.0).unwrap();
        img.data
            .iter_mut()
            .for_each(|v| *v = noise.sample(&mut rng));
        let objects: [(f64, f64, f64, f64); 11] = [
            (30.3, 30.6, 2e4, 2.25),
            (80.1, 40.2, 5e4, 2.25),
            (150.7, 35.4, 3e4, 2.25),
            (40.2, 120.9, 8e3, 2.25),
            (110.5, 100.5, 4e4, 2.25),
            (114.0, 101.0, 2e4, 2.25),
            (190.4, 150.3, 1.5e4, 2.25),
            (2.0, 90.0, 3e4, 2.25),
            (170.2, 90.8, 6e2, 2.25),
            (60.5, 160.2, 3e4, 9.0),
            (140.0, 150.0, 2e4, 6.0),
        ];
        for &(cx, cy, flux, s2) in &objects {
            let g = gaussian(
                31,
                31,
                15.0 + cx.fract(),
                15.0 + cy.fract(),
                flux,
                s2,
                s2,
                0.0,
            );
            for y in 0..31 {
                for x in 0..31 {
                    let (ix, iy) = (
                        cx.trunc() as i64 - 15 + x as i64,
                        cy.trunc() as i64 - 15 + y as i64,
                    );
                    if (0..w as i64).contains(&ix) && (0..h as i64).contains(&iy) {
                        img.data[iy as usize * w + ix as usize] += g.get(x, y);
                    }
                }
            }
        }
        let var = Image::filled(w, h, 9.0f32);
        let mut m = Image::filled(w, h, 0u32);
        let sig = crate::detect::significance(&img, &var, &m, 1.3);
        let det = crate::detect::detect(&sig, &mut m, &crate::detect::DetectParams::default());
        let p = MeasureParams {
            fwhm: 3.0,
            aperture_radius: 12.0,
            min_significance: 30.0,
        };
        let mut full = measure(&img, &var, &m, &det, &p);
        let want = psf_fwhm_from_stars(&mut full, 30.0, 15.0);
        for threads in [1, 2] {
            let (lazy, got) = psf_from_bright_peaks(&img, &var, &m, &det, &p, 30.0, 15.0, threads);
            assert!(want.is_some());
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits));
            assert_eq!(lazy.len(), full.len());
            for (a, b) in lazy.iter().zip(&full) {
                assert_eq!(
                    (a.x, a.y, a.flux_aper, a.flux_aper_err),
                    (b.x, b.y, b.flux_aper, b.flux_aper_err)
                );
                assert_eq!(a.flags & flags::PSF_STAR, b.flags & flags::PSF_STAR);
                if a.flags & flags::PSF_STAR != 0 {
                    assert_eq!((a.ixx, a.iyy, a.ixy), (b.ixx, b.iyy, b.ixy));
                }
            }
        }
        assert!(
            full.iter()
                .filter(|s| s.flags & flags::PSF_STAR != 0)
                .count()
                >= 3
        );
    }

    #[test]
    fn centroid_of_a_symmetric_source_is_its_centre() {
        for (cx, cy) in [(20.0, 20.0), (20.37, 19.81), (19.5, 20.5)] {
            let img = gaussian(41, 41, cx, cy, 1e4, 1.6, 1.6, 0.0);
            let (x, y) = windowed_centroid(&img, 20.0, 20.0, 1.3).unwrap();
            assert!(
                (x - cx).abs() < 2e-3 && (y - cy).abs() < 2e-3,
                "{x},{y} vs {cx},{cy}"
            );
        }
        let empty = Image::filled(10, 10, 0.0f32);
        assert!(windowed_centroid(&empty, 5.0, 5.0, 1.0).is_none());
    }

    #[test]
    fn pixel_fractions_sum_to_the_circle_area() {
        for r in [1.0, 2.5, 7.3] {
            let mut total = 0.0;
            for y in -10..=10 {
                for x in -10..=10 {
                    total += pixel_fraction(x as f64, y as f64, 0.3, -0.2, r);
                }
            }
            let area = std::f64::consts::PI * r * r;
            assert!(
                (total / area - 1.0).abs() < 0.01,
                "r={r}: {total} vs {area}"
            );
        }
    }

    #[test]
    fn aperture_flux_of_a_gaussian_matches_the_enclosed_fraction() {
        // Enclosed fraction of a circular Gaussian within r: 1 − exp(−r²/2σ²) (analytic), with
        // σ² + 1/12 for the pixel-integrated profile.
        let s2 = 2.0;
        let img = gaussian(61, 61, 30.2, 29.7, 5000.0, s2, s2, 0.0);
        let var = Image::filled(61, 61, 1.0f32);
        let m = Image::filled(61, 61, 0u32);
        for r in [4.0, 6.0, 9.0] {
            let (f, e, bits, outside) = aperture_flux(&img, &var, &m, 30.2, 29.7, r);
            let expected = 5000.0 * (1.0 - (-r * r / (2.0 * (s2 + 1.0 / 12.0))).exp());
            assert!(
                (f / expected - 1.0).abs() < 0.005,
                "r={r}: {f} vs {expected}"
            );
            assert!((e * e / (std::f64::consts::PI * r * r) - 1.0).abs() < 0.1);
            assert_eq!((bits, outside), (0, false));
        }
        assert!(aperture_flux(&img, &var, &m, 2.0, 30.0, 5.0).3);
    }

    #[test]
    fn psf_flux_with_the_right_model_is_the_flux() {
        let img = gaussian(41, 41, 20.1, 20.3, 3000.0, 1.44, 1.44, 0.0);
        let var = Image::filled(41, 41, 1.0f32);
        // The pixel-integrated Gaussian has variance σ² + 1/12.
        let (f, e) = psf_flux(&img, &var, 20.1, 20.3, (1.44f64 + 1.0 / 12.0).sqrt());
        assert!((f / 3000.0 - 1.0).abs() < 0.01, "{f}");
        // Error for unit variance: 1 / sqrt(Σ P²) ≈ sqrt(4π σ²).
        assert!(
            (e / (4.0 * std::f64::consts::PI * (1.44 + 1.0 / 12.0f64)).sqrt() - 1.0).abs() < 0.02,
            "{e}"
        );
    }

    #[test]
    fn adaptive_moments_recover_an_elliptical_gaussian() {
        let img = gaussian(61, 61, 30.0, 30.0, 1e4, 4.0, 2.0, 0.8);
        let (xx, yy, xy) = adaptive_moments(&img, 30.0, 30.0, 1.5, 100.0).unwrap();
        // A weight that must grow past the limit fails instead.
        assert!(adaptive_moments(&img, 30.0, 30.0, 1.5, 4.0).is_none());
        // Pixelisation adds 1/12 px² to each diagonal moment.
        assert!((xx - 4.0 - 1.0 / 12.0).abs() < 0.02, "{xx}");
        assert!((yy - 2.0 - 1.0 / 12.0).abs() < 0.02, "{yy}");
        assert!((xy - 0.8).abs() < 0.02, "{xy}");
    }
}
