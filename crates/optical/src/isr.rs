//! Instrument signature removal: overscan subtraction and trimming per amplifier, saturation
//! and bad-pixel masks, bias and flat correction, conversion to electrons with each amplifier's
//! gain, and the variance plane with each amplifier's read noise.

use crate::amplifiers::{AmpRegion, Readout, Section};
use crate::image::{Image, mask};
use serde::{Deserialize, Serialize};
use skypipe_astrometry::linalg::NormalEquations;

/// How an amplifier's overscan level is estimated (`[singleframe.chain] overscan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverscanMethod {
    /// One level per amplifier: the 3σ-clipped mean of every overscan pixel (least noise; right
    /// when the bias level does not drift during the readout).
    Mean,
    /// One level per row: the median of that row's overscan pixels (follows a level that drifts
    /// or jumps during the readout), optionally smoothed by a polynomial along the rows
    /// (`overscan_fit_order`). Needs a serial overscan covering the data rows.
    #[default]
    MedianPerRow,
}

/// Clipping of the overscan estimates, σ.
const OVERSCAN_CLIP: f64 = 3.0;

/// The 3σ-clipped mean of the finite values: start from the median and the MAD's σ, then
/// iterate mean and standard deviation of the values kept until the set no longer changes.
/// `None` without finite values.
///
/// ```
/// let mut v = vec![10.0f32, 11.0, 9.0, 10.0, 500.0];
/// assert_eq!(skypipe_optical::isr::clipped_mean(&mut v), Some(10.0));
/// ```
pub fn clipped_mean(values: &mut [f32]) -> Option<f64> {
    let mut kept: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut centre = median_f64(&mut kept.clone());
    let mut deviations: Vec<f64> = kept.iter().map(|v| (v - centre).abs()).collect();
    let mut sigma = 1.4826 * median_f64(&mut deviations);
    let all = kept.clone();
    let mut n = usize::MAX;
    for _ in 0..20 {
        kept = all
            .iter()
            .copied()
            .filter(|v| sigma == 0.0 || (v - centre).abs() <= OVERSCAN_CLIP * sigma)
            .collect();
        if kept.is_empty() {
            return Some(centre);
        }
        let mean = kept.iter().sum::<f64>() / kept.len() as f64;
        let var = kept.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / kept.len() as f64;
        centre = mean;
        sigma = var.sqrt();
        if kept.len() == n {
            break;
        }
        n = kept.len();
    }
    Some(centre)
}

fn median_f64(v: &mut [f64]) -> f64 {
    let (n, mid) = (v.len(), v.len() / 2);
    let (lower, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    if n % 2 == 1 {
        *m
    } else {
        let m = *m;
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (m + below)
    }
}

/// The overscan level of each raw row `rows.0..rows.1`, from the overscan `section` of `raw`
/// (ADU): [`OverscanMethod::Mean`] gives one clipped mean of the whole section for every row;
/// [`OverscanMethod::MedianPerRow`] the median of each row's overscan pixels (rows of `rows`
/// must lie in the section's rows), smoothed by a 3σ-clipped least-squares polynomial of order
/// `fit_order` along the rows when given. A row without a finite overscan pixel gets NaN
/// (its data become bad pixels), unless a fit fills it.
pub fn overscan_levels(
    raw: &Image<f32>,
    section: &Section,
    rows: (usize, usize),
    method: OverscanMethod,
    fit_order: Option<usize>,
) -> Vec<f32> {
    let n = rows.1 - rows.0;
    match method {
        OverscanMethod::Mean => {
            let mut values: Vec<f32> = (section.y0..section.y1)
                .flat_map(|y| {
                    raw.data[y * raw.width + section.x0..y * raw.width + section.x1].iter()
                })
                .copied()
                .collect();
            let level = clipped_mean(&mut values).map_or(f32::NAN, |v| v as f32);
            vec![level; n]
        }
        OverscanMethod::MedianPerRow => {
            debug_assert!(section.y0 <= rows.0 && rows.1 <= section.y1);
            let medians: Vec<f64> = (rows.0..rows.1)
                .map(|y| {
                    let mut row: Vec<f64> = raw.data
                        [y * raw.width + section.x0..y * raw.width + section.x1]
                        .iter()
                        .filter(|v| v.is_finite())
                        .map(|&v| f64::from(v))
                        .collect();
                    if row.is_empty() {
                        f64::NAN
                    } else {
                        median_f64(&mut row)
                    }
                })
                .collect();
            match fit_order {
                None => medians.iter().map(|&v| v as f32).collect(),
                Some(order) => polynomial_smooth(&medians, order)
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
            }
        }
    }
}

/// A least-squares polynomial of `order` in the index (mapped to [-1, 1]) through the finite
/// values, refitted without points beyond 3σ of the residuals until none is rejected; evaluated
/// at every index. Too few points for the order: the values unchanged.
pub fn polynomial_smooth(values: &[f64], order: usize) -> Vec<f64> {
    let n = values.len();
    let t = |i: usize| {
        if n > 1 {
            2.0 * i as f64 / (n - 1) as f64 - 1.0
        } else {
            0.0
        }
    };
    let powers = |x: f64| (0..=order).map(|k| x.powi(k as i32)).collect::<Vec<f64>>();
    let mut use_point: Vec<bool> = values.iter().map(|v| v.is_finite()).collect();
    let mut coeffs: Option<Vec<f64>> = None;
    for _ in 0..10 {
        if use_point.iter().filter(|u| **u).count() <= order {
            break;
        }
        let mut ne = NormalEquations::new(order + 1, 1);
        for (i, v) in values.iter().enumerate() {
            if use_point[i] {
                ne.add(&powers(t(i)), &[*v], 1.0);
            }
        }
        let Some(sol) = ne.solve() else { break };
        let c = sol.into_iter().next().expect("one right-hand side");
        let eval = |i: usize| powers(t(i)).iter().zip(&c).map(|(p, c)| p * c).sum::<f64>();
        let residuals: Vec<f64> = (0..n)
            .filter(|&i| use_point[i])
            .map(|i| values[i] - eval(i))
            .collect();
        let rms = (residuals.iter().map(|r| r * r).sum::<f64>() / residuals.len() as f64).sqrt();
        let next: Vec<bool> = (0..n)
            .map(|i| values[i].is_finite() && (values[i] - eval(i)).abs() <= OVERSCAN_CLIP * rms)
            .collect();
        let done = next == use_point || rms == 0.0;
        coeffs = Some(c);
        if done {
            break;
        }
        use_point = next;
    }
    match coeffs {
        Some(c) => (0..n)
            .map(|i| powers(t(i)).iter().zip(&c).map(|(p, c)| p * c).sum())
            .collect(),
        None => values.to_vec(),
    }
}

/// The `section` of `img`, as an image of its own.
pub fn cut<T: Copy>(img: &Image<T>, section: &Section) -> Image<T> {
    let mut data = Vec::with_capacity(section.area());
    for y in section.y0..section.y1 {
        data.extend_from_slice(&img.data[y * img.width + section.x0..y * img.width + section.x1]);
    }
    Image::from_vec(section.width(), section.height(), data)
}

/// Settings of the overscan correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OverscanParams {
    /// Estimator.
    pub method: OverscanMethod,
    /// Polynomial order along the rows (per-row method only).
    pub fit_order: Option<usize>,
}

/// A raw frame after overscan subtraction and trimming.
#[derive(Debug, Clone)]
pub struct Trimmed {
    /// The trimmed image, ADU, each amplifier's overscan level subtracted.
    pub image: Image<f32>,
    /// Its mask: saturated (each amplifier's level, on the raw values) and non-finite pixels.
    pub mask: Image<u32>,
    /// Saturated pixels (before growing).
    pub saturated_pixels: usize,
    /// Each amplifier's part of the trimmed image.
    pub regions: Vec<AmpRegion>,
    /// Mean overscan level subtracted from each region, ADU (0 without overscan).
    pub overscan_levels: Vec<f64>,
}

/// The first ISR step: per amplifier, the overscan levels of its rows from the raw frame; the
/// frame cut to the readout's trim (each amplifier's pixels keep their places, so the header
/// WCS only needs its reference pixel moved by the trim's origin); saturation and non-finite
/// pixels masked on the raw values with each amplifier's level; then each amplifier's levels
/// subtracted row by row. A plain frame (no overscan, nothing to trim) is moved, not copied.
pub fn overscan_and_trim(raw: Image<f32>, readout: &Readout, params: &OverscanParams) -> Trimmed {
    debug_assert_eq!((raw.width, raw.height), (readout.width, readout.height));
    let trim = readout.trim;
    let mut regions = Vec::new();
    let mut levels = Vec::new();
    for a in &readout.amplifiers {
        let Some(kept) = a.data.intersect(&trim) else {
            continue;
        };
        let row_levels = a.overscan.map(|o| {
            overscan_levels(
                &raw,
                &o,
                (kept.y0, kept.y1),
                params.method,
                params.fit_order,
            )
        });
        regions.push(AmpRegion {
            region: Section {
                x0: kept.x0 - trim.x0,
                x1: kept.x1 - trim.x0,
                y0: kept.y0 - trim.y0,
                y1: kept.y1 - trim.y0,
            },
            instrument: a.instrument,
        });
        levels.push(row_levels);
    }
    let mut image = if trim == Section::whole(raw.width, raw.height) {
        raw
    } else {
        cut(&raw, &trim)
    };
    let mut mask = Image::filled(image.width, image.height, 0u32);
    let saturated_pixels = mask_saturated_and_bad_regions(&image, &regions, &mut mask);
    let mut means = Vec::with_capacity(regions.len());
    for (r, l) in regions.iter().zip(&levels) {
        match l {
            Some(l) => {
                subtract_row_levels(&mut image, &r.region, l);
                means.push(l.iter().map(|&v| f64::from(v)).sum::<f64>() / l.len().max(1) as f64);
            }
            None => means.push(0.0),
        }
    }
    Trimmed {
        image,
        mask,
        saturated_pixels,
        regions,
        overscan_levels: means,
    }
}

/// Subtracts `levels[i]` from row `region.y0 + i` of the region.
pub fn subtract_row_levels(img: &mut Image<f32>, region: &Section, levels: &[f32]) {
    debug_assert_eq!(levels.len(), region.height());
    let w = img.width;
    for (y, level) in (region.y0..region.y1).zip(levels) {
        for v in &mut img.data[y * w + region.x0..y * w + region.x1] {
            *v -= level;
        }
    }
}

/// Marks pixels of the raw image (ADU) at or above `saturate` as [`mask::SAT`], together with
/// their 8 neighbours (charge spills a little), and non-finite pixels as [`mask::BAD`].
/// Returns the number of saturated pixels (before growing).
///
/// ```
/// use skypipe_optical::image::{Image, mask};
/// let raw = Image::from_vec(3, 3, vec![0.0, 0.0, 0.0, 0.0, 70000.0, 0.0, 0.0, 0.0, f32::NAN]);
/// let mut m = Image::filled(3, 3, 0u32);
/// assert_eq!(skypipe_optical::isr::mask_saturated_and_bad(&raw, 65000.0, &mut m), 1);
/// assert!(m.data.iter().all(|v| v & mask::SAT != 0));
/// assert_ne!(m.get(2, 2) & mask::BAD, 0);
/// ```
pub fn mask_saturated_and_bad(raw: &Image<f32>, saturate: f32, m: &mut Image<u32>) -> usize {
    let whole = AmpRegion {
        region: Section::whole(raw.width, raw.height),
        instrument: crate::pipeline::Instrument {
            gain: 1.0,
            read_noise: 0.0,
            saturate,
        },
    };
    mask_saturated_and_bad_regions(raw, &[whole], m)
}

/// [`mask_saturated_and_bad`] with each amplifier's saturation level in its region (the mask
/// grows across region borders: charge spills).
pub fn mask_saturated_and_bad_regions(
    raw: &Image<f32>,
    regions: &[AmpRegion],
    m: &mut Image<u32>,
) -> usize {
    debug_assert_eq!((raw.width, raw.height), (m.width, m.height));
    let (w, h) = (raw.width, raw.height);
    let mut count = 0;
    for r in regions {
        let saturate = r.instrument.saturate;
        let s = r.region;
        for y in s.y0..s.y1 {
            for (x, &v) in raw.data[y * w + s.x0..y * w + s.x1].iter().enumerate() {
                let x = x + s.x0;
                if v.is_finite() && v < saturate {
                    continue;
                }
                if !v.is_finite() {
                    m.data[y * w + x] |= mask::BAD;
                } else if v >= saturate {
                    count += 1;
                    for yy in y.saturating_sub(1)..(y + 2).min(h) {
                        for xx in x.saturating_sub(1)..(x + 2).min(w) {
                            m.data[yy * w + xx] |= mask::SAT;
                        }
                    }
                }
            }
        }
    }
    count
}

/// The flat value at pixel `i` as a divisor: 1 without a flat or where it is not finite and
/// positive (those pixels are marked bad by [`bias_flat_gain`]).
fn flat_at(flat: Option<&Image<f32>>, i: usize) -> f32 {
    let f = flat.map_or(1.0, |f| f.data[i]);
    if f.is_finite() && f > 0.0 { f } else { 1.0 }
}

/// Calls `f(i, instrument)` for every pixel index of every region.
fn for_each_pixel(width: usize, regions: &[AmpRegion], mut f: impl FnMut(usize, &AmpRegion)) {
    for r in regions {
        let s = r.region;
        for y in s.y0..s.y1 {
            for i in y * width + s.x0..y * width + s.x1 {
                f(i, r);
            }
        }
    }
}

/// Bias subtraction, flat division and conversion from ADU to electrons with each amplifier's
/// gain, in place: `out = (raw - bias) / flat * gain` (the regions tile the image). Pixels
/// whose flat is not finite and positive, or that are not finite, are set to 0 and marked
/// [`mask::BAD`].
pub fn bias_flat_gain(
    img: &mut Image<f32>,
    bias: Option<&Image<f32>>,
    flat: Option<&Image<f32>>,
    regions: &[AmpRegion],
    m: &mut Image<u32>,
) {
    for_each_pixel(img.width, regions, |i, r| {
        let mut v = img.data[i];
        if let Some(b) = bias {
            v -= b.data[i];
        }
        if let Some(f) = flat {
            let fv = f.data[i];
            if fv.is_finite() && fv > 0.0 {
                v /= fv;
            } else {
                v = f32::NAN;
            }
        }
        v *= r.instrument.gain;
        if v.is_finite() {
            img.data[i] = v;
        } else {
            img.data[i] = 0.0;
            m.data[i] |= mask::BAD;
        }
    });
}

/// The variance plane in e-², from the calibrated image in electrons (sky included): Poisson
/// noise of the collected electrons plus each amplifier's read noise, both divided by the flat
/// as the image was: `var = max(img, 0) / flat + (read_noise / flat)²`. Bad pixels get the
/// median variance.
pub fn variance_plane(
    img: &Image<f32>,
    flat: Option<&Image<f32>>,
    regions: &[AmpRegion],
    m: &Image<u32>,
) -> Image<f32> {
    let mut var = Image::filled(img.width, img.height, 0.0f32);
    for_each_pixel(img.width, regions, |i, r| {
        let f = flat_at(flat, i);
        let rn2 = r.instrument.read_noise * r.instrument.read_noise;
        var.data[i] = img.data[i].max(0.0) / f + rn2 / (f * f);
    });
    let largest_rn2 = regions
        .iter()
        .map(|r| r.instrument.read_noise * r.instrument.read_noise)
        .fold(0.0f32, f32::max);
    fill_bad_with_median(&mut var, m, largest_rn2.max(1.0));
    var
}

/// The variance plane in e-² from an input variance in ADU² (the raw frame's), with each
/// amplifier's gain and the flat: `var_in × (gain / flat)²`. A pixel whose input variance is
/// not finite and positive is marked [`mask::BAD`] and gets a huge variance.
pub fn variance_from_input(
    variance_in: &Image<f32>,
    flat: Option<&Image<f32>>,
    regions: &[AmpRegion],
    m: &mut Image<u32>,
) -> Image<f32> {
    let mut var = variance_in.clone();
    for_each_pixel(var.width, regions, |i, r| {
        let g = r.instrument.gain / flat_at(flat, i);
        let x = var.data[i];
        if x.is_finite() && x > 0.0 {
            var.data[i] = x * g * g;
        } else {
            var.data[i] = f32::MAX.sqrt();
            m.data[i] |= mask::BAD;
        }
    });
    var
}

/// Sets the variance of bad pixels to the median of the good ones (`fallback` if none).
fn fill_bad_with_median(var: &mut Image<f32>, m: &Image<u32>, fallback: f32) {
    if m.data.iter().all(|mm| mm & mask::BAD == 0) {
        return;
    }
    let mut good: Vec<f32> = var
        .data
        .iter()
        .zip(&m.data)
        .filter(|(_, mm)| *mm & mask::BAD == 0)
        .map(|(v, _)| *v)
        .collect();
    let fill = if good.is_empty() {
        fallback
    } else {
        let mid = good.len() / 2;
        *good.select_nth_unstable_by(mid, f32::total_cmp).1
    };
    for (v, mm) in var.data.iter_mut().zip(&m.data) {
        if mm & mask::BAD != 0 {
            *v = fill;
        }
    }
}

/// Marks the pixels within `edge` pixels of the boundary as [`mask::EDGE`].
pub fn mask_edges(m: &mut Image<u32>, edge: usize) {
    let (w, h) = (m.width, m.height);
    for (y, row) in m.data.chunks_exact_mut(w.max(1)).enumerate() {
        if y < edge || y + edge >= h {
            row.iter_mut().for_each(|v| *v |= mask::EDGE);
        } else {
            let e = edge.min(w);
            row[..e].iter_mut().for_each(|v| *v |= mask::EDGE);
            row[w - e..].iter_mut().for_each(|v| *v |= mask::EDGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amplifiers::{Amplifier, ReadoutKeywords};
    use crate::pipeline::Instrument;

    fn one_region(w: usize, h: usize, gain: f32, read_noise: f32) -> Vec<AmpRegion> {
        vec![AmpRegion {
            region: Section::whole(w, h),
            instrument: Instrument {
                gain,
                read_noise,
                saturate: f32::MAX,
            },
        }]
    }

    #[test]
    fn bias_flat_gain_inverts_the_instrument() {
        // Known values: raw = bias + flat * signal / gain.
        let signal = [100.0f32, 2000.0, 0.0, 55.5];
        let bias = Image::from_vec(2, 2, vec![1000.0, 1010.0, 990.0, 1003.0]);
        let flat = Image::from_vec(2, 2, vec![1.0, 1.1, 0.9, 1.02]);
        let gain = 2.5;
        let raw: Vec<f32> = (0..4)
            .map(|i| bias.data[i] + flat.data[i] * signal[i] / gain)
            .collect();
        let mut img = Image::from_vec(2, 2, raw);
        let mut m = Image::filled(2, 2, 0);
        bias_flat_gain(
            &mut img,
            Some(&bias),
            Some(&flat),
            &one_region(2, 2, gain, 0.0),
            &mut m,
        );
        for (got, want) in img.data.iter().zip(signal) {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
        assert!(m.data.iter().all(|&v| v == 0));
    }

    #[test]
    fn zero_flat_and_nan_become_bad() {
        let mut img = Image::from_vec(3, 1, vec![5.0, f32::NAN, 7.0]);
        let flat = Image::from_vec(3, 1, vec![1.0, 1.0, 0.0]);
        let mut m = Image::filled(3, 1, 0);
        bias_flat_gain(
            &mut img,
            None,
            Some(&flat),
            &one_region(3, 1, 1.0, 0.0),
            &mut m,
        );
        assert_eq!(img.data, vec![5.0, 0.0, 0.0]);
        assert_eq!(m.data, vec![0, mask::BAD, mask::BAD]);
    }

    #[test]
    fn variance_is_poisson_plus_read_noise() {
        let img = Image::from_vec(3, 1, vec![400.0, -10.0, 100.0]);
        let flat = Image::from_vec(3, 1, vec![1.0, 1.0, 2.0]);
        let m = Image::filled(3, 1, 0);
        let v = variance_plane(&img, Some(&flat), &one_region(3, 1, 1.0, 5.0), &m);
        assert_eq!(v.data, vec![425.0, 25.0, 50.0 + 6.25]);
    }

    #[test]
    fn saturation_grows_by_one_pixel() {
        let mut raw = Image::filled(5, 5, 10.0f32);
        raw.set(0, 0, 100.0);
        let mut m = Image::filled(5, 5, 0);
        assert_eq!(mask_saturated_and_bad(&raw, 100.0, &mut m), 1);
        let sat: usize = m.data.iter().filter(|&&v| v & mask::SAT != 0).count();
        assert_eq!(sat, 4);
        mask_edges(&mut m, 1);
        assert_eq!(m.get(2, 2), 0);
        assert_ne!(m.get(4, 2) & mask::EDGE, 0);
    }

    #[test]
    fn clipped_mean_and_polynomial_smoothing_reject_outliers() {
        // Median of an even count, and clipping of a hot pixel and NaN.
        let mut v = vec![4.0f32, 1.0, 3.0, 2.0];
        assert_eq!(clipped_mean(&mut v), Some(2.5));
        let mut v = vec![100.0f32, 101.0, 99.0, 100.0, 100.0, f32::NAN, 1e6];
        assert_eq!(clipped_mean(&mut v), Some(100.0));
        assert_eq!(clipped_mean(&mut [f32::NAN]), None);
        // A straight line with one outlier and a gap is recovered exactly by an order-1 fit.
        let mut y: Vec<f64> = (0..21).map(|i| 5.0 + 0.5 * i as f64).collect();
        y[7] = 1000.0;
        y[12] = f64::NAN;
        let fit = polynomial_smooth(&y, 1);
        for (i, f) in fit.iter().enumerate() {
            assert!((f - (5.0 + 0.5 * i as f64)).abs() < 1e-9, "{i}: {f}");
        }
        // Too few points for the order: unchanged.
        assert_eq!(polynomial_smooth(&[1.0, 2.0], 3), vec![1.0, 2.0]);
    }

    #[test]
    fn overscan_levels_per_method() {
        // 6 × 4 frame: columns 0..4 data, 4..6 overscan; overscan level 100 + 10 y, one hot
        // overscan pixel.
        let mut raw = Image::filled(6, 4, 0.0f32);
        for y in 0..4 {
            for x in 4..6 {
                raw.set(x, y, 100.0 + 10.0 * y as f32);
            }
        }
        let os = Section {
            x0: 4,
            x1: 6,
            y0: 0,
            y1: 4,
        };
        let per_row = overscan_levels(&raw, &os, (1, 4), OverscanMethod::MedianPerRow, None);
        assert_eq!(per_row, vec![110.0, 120.0, 130.0]);
        let fitted = overscan_levels(&raw, &os, (0, 4), OverscanMethod::MedianPerRow, Some(1));
        for (got, want) in fitted.iter().zip([100.0, 110.0, 120.0, 130.0]) {
            assert!((got - want).abs() < 1e-4, "{fitted:?}");
        }
        let mean = overscan_levels(&raw, &os, (0, 2), OverscanMethod::Mean, None);
        assert_eq!(mean, vec![115.0, 115.0]);
        // A row of NaN overscan has no level (its data become bad pixels).
        raw.set(4, 2, f32::NAN);
        raw.set(5, 2, f32::NAN);
        let nan = overscan_levels(&raw, &os, (0, 4), OverscanMethod::MedianPerRow, None);
        assert!(nan[2].is_nan() && nan[3] == 130.0);
    }

    /// Two amplifiers of a 10 × 3 frame (overscan A | data A | data B | overscan B), with
    /// known bias levels, gains, read noises and saturation.
    fn two_amplifier_frame() -> (Image<f32>, Readout) {
        let mut k = ReadoutKeywords::default();
        for (key, v) in [
            ("BIASSECA", "[1:2,1:3]"),
            ("DATASECA", "[3:5,1:3]"),
            ("DATASECB", "[6:8,1:3]"),
            ("BIASSECB", "[9:10,1:3]"),
        ] {
            k.sections.insert(key.into(), v.into());
        }
        for (key, v) in [
            ("GAINA", 2.0),
            ("GAINB", 4.0),
            ("RDNOISEA", 3.0),
            ("RDNOISEB", 5.0),
            ("SATURATA", 1500.0),
            ("SATURATB", 3000.0),
        ] {
            k.numbers.insert(key.into(), v);
        }
        let readout = Readout::from_keywords(10, 3, &k).unwrap();
        // Signal 200 e- everywhere: A reads 1000 + 200 / 2, B reads 2000 + 200 / 4.
        let mut raw = Image::filled(10, 3, 0.0f32);
        for y in 0..3 {
            for x in 0..10 {
                let v = match x {
                    0 | 1 => 1000.0,
                    2..=4 => 1100.0,
                    5..=7 => 2050.0,
                    _ => 2000.0,
                };
                raw.set(x, y, v);
            }
        }
        (raw, readout)
    }

    #[test]
    fn two_amplifiers_are_trimmed_levelled_and_gained_to_one_sky() {
        let (mut raw, readout) = two_amplifier_frame();
        raw.set(6, 1, 3500.0); // saturated for B, not for A's level
        raw.set(3, 0, 1600.0); // saturated for A
        let mut t = overscan_and_trim(raw, &readout, &OverscanParams::default());
        assert_eq!((t.image.width, t.image.height), (6, 3));
        assert_eq!(t.overscan_levels, vec![1000.0, 2000.0]);
        assert_eq!(t.saturated_pixels, 2);
        assert_ne!(t.mask.get(1, 0) & mask::SAT, 0);
        assert_ne!(t.mask.get(4, 1) & mask::SAT, 0);
        assert_eq!(t.mask.get(0, 2), 0);
        // ADU above the overscan: 100 in A, 50 in B (the saturated pixels aside).
        assert_eq!(t.image.get(0, 2), 100.0);
        assert_eq!(t.image.get(3, 2), 50.0);
        bias_flat_gain(&mut t.image, None, None, &t.regions, &mut t.mask);
        for y in 0..3 {
            for x in 0..6 {
                if t.mask.get(x, y) & mask::SAT == 0 {
                    assert_eq!(t.image.get(x, y), 200.0, "({x}, {y})");
                }
            }
        }
        // Variance: 200 e- of Poisson noise plus each amplifier's read noise squared.
        let v = variance_plane(&t.image, None, &t.regions, &t.mask);
        assert_eq!(v.get(0, 2), 209.0);
        assert_eq!(v.get(5, 2), 225.0);
        // An input variance in ADU² is converted with each amplifier's gain.
        let vin = Image::filled(6, 3, 10.0f32);
        let v = variance_from_input(&vin, None, &t.regions, &mut t.mask);
        assert_eq!((v.get(2, 0), v.get(3, 0)), (40.0, 160.0));
    }

    #[test]
    fn a_plain_frame_is_unchanged_by_the_overscan_step() {
        let raw = Image::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0]);
        let inst = Instrument {
            gain: 1.0,
            read_noise: 1.0,
            saturate: 5.5,
        };
        let readout = Readout::single(3, 2, inst);
        let t = overscan_and_trim(raw.clone(), &readout, &OverscanParams::default());
        assert_eq!(t.image.data[..4], raw.data[..4]);
        assert_eq!(t.overscan_levels, vec![0.0]);
        assert_eq!(t.saturated_pixels, 1);
        assert_ne!(t.mask.get(1, 1) & mask::BAD, 0);
        assert_eq!(
            readout.amplifiers,
            vec![Amplifier {
                name: String::new(),
                data: Section::whole(3, 2),
                overscan: None,
                instrument: inst,
            }]
        );
    }
}
