//! Pure coadd kernels: the per-pixel clipped weighted mean of a stack of warps with its
//! variance, input-count and mask maps, per-input weights, the point-source depth and the asinh
//! quicklook. No I/O.
//!
//! # Combination
//! Every warp `i` carries one weight `wᵢ = 1 / median(varianceᵢ)` over its good pixels: the
//! inverse of its typical sky variance. The weight is per input, not per pixel, so a star's
//! own photon noise (larger in the sharper input's core) does not tilt the combination: the
//! coadd is then a linear combination of the inputs wherever the same inputs are used, and
//! the flux of a star is the weighted mean of its fluxes in the inputs whatever their PSFs.
//!
//! At each pixel the usable inputs are those with a finite value, a finite positive variance
//! and none of the `reject_bits` in their mask. With at least [`MIN_INPUTS_TO_CLIP`] of them,
//! `iterations` rounds of clipping follow: the centre is the median of the used values in the
//! first round and their weighted mean afterwards, and an input is dropped when
//! `|vᵢ − centre| > sigma · sqrt(σᵢ² + (amplitude_fraction · centre)²)` (the second term, as
//! SWarp's `CLIP_AMPFRAC`, tolerates the differences that PSF changes between inputs make on
//! bright sources). Clipping never drops the last inputs: a round that would keep fewer than
//! two ends the clipping. The value is `Σ wᵢvᵢ / Σ wᵢ` and the variance
//! `Σ wᵢ²σᵢ² / (Σ wᵢ)²` over the inputs kept; the mask is the OR of their mask bits, plus
//! `clipped_bit` where an input was clipped; a pixel without usable inputs has value and
//! variance `NaN`, count 0 and mask `no_data_bit`.

use skypipe_core::figure::{
    self as figure, Canvas, PAPER_RGB, bar_thickness, colour_bar, format_value, title_strip,
};

/// Fewest usable inputs at a pixel for clipping to run (with two, an outlier cannot be told
/// from the other input).
pub const MIN_INPUTS_TO_CLIP: usize = 3;

/// Clipping settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipParams {
    /// Rejection threshold in units of the combined noise and amplitude term.
    pub sigma: f64,
    /// Clipping rounds (0: plain weighted mean).
    pub iterations: u32,
    /// Fraction of the centre value added in quadrature to an input's σ.
    pub amplitude_fraction: f64,
    /// Inputs with any of these mask bits at a pixel are not used there.
    pub reject_bits: u32,
    /// Mask bit of pixels without usable input.
    pub no_data_bit: u32,
    /// Mask bit of pixels where an input was clipped.
    pub clipped_bit: u32,
}

/// One warp in the stack: planes of the same length (the patch grid) and its weight.
#[derive(Debug, Clone, Copy)]
pub struct StackInput<'a> {
    /// Pixel values.
    pub image: &'a [f32],
    /// Per-pixel variances.
    pub variance: &'a [f32],
    /// Per-pixel mask bits.
    pub mask: &'a [u32],
    /// Weight of the whole input (see [`input_weight`]).
    pub weight: f64,
}

/// The combined planes.
#[derive(Debug, Clone, PartialEq)]
pub struct Stacked {
    /// Clipped weighted mean (`NaN` without data).
    pub image: Vec<f32>,
    /// Its variance (`NaN` without data).
    pub variance: Vec<f32>,
    /// Inputs used at each pixel (after clipping).
    pub count: Vec<u16>,
    /// OR of the used inputs' bits, plus the clipped and no-data bits.
    pub mask: Vec<u32>,
}

/// The weight of one input: the inverse of the median variance over its pixels with a finite
/// positive variance and none of `reject_bits`; `None` when it has no such pixel.
pub fn input_weight(variance: &[f32], mask: &[u32], reject_bits: u32) -> Option<f64> {
    let mut good: Vec<f32> = variance
        .iter()
        .zip(mask)
        .filter(|&(&v, &m)| v.is_finite() && v > 0.0 && m & reject_bits == 0)
        .map(|(&v, _)| v)
        .collect();
    if good.is_empty() {
        return None;
    }
    let mid = good.len() / 2;
    let (_, median, _) = good.select_nth_unstable_by(mid, f32::total_cmp);
    Some(1.0 / f64::from(*median))
}

/// Combines `inputs` pixel by pixel (see the module documentation). Every plane must have
/// `len` values.
pub fn stack(inputs: &[StackInput], len: usize, p: &ClipParams) -> Stacked {
    for i in inputs {
        debug_assert!(i.image.len() == len && i.variance.len() == len && i.mask.len() == len);
    }
    let mut out = Stacked {
        image: vec![f32::NAN; len],
        variance: vec![f32::NAN; len],
        count: vec![0; len],
        mask: vec![p.no_data_bit; len],
    };
    // Per-pixel scratch: (value, variance, mask, weight, kept).
    let mut px: Vec<(f64, f64, u32, f64, bool)> = Vec::with_capacity(inputs.len());
    let mut sorted: Vec<f64> = Vec::with_capacity(inputs.len());
    for k in 0..len {
        px.clear();
        for i in inputs {
            let (v, var, m) = (i.image[k], i.variance[k], i.mask[k]);
            if v.is_finite() && var.is_finite() && var > 0.0 && m & p.reject_bits == 0 {
                px.push((f64::from(v), f64::from(var), m, i.weight, true));
            }
        }
        if px.is_empty() {
            continue;
        }
        let mut clipped = false;
        if px.len() >= MIN_INPUTS_TO_CLIP {
            for round in 0..p.iterations {
                let centre = if round == 0 {
                    sorted.clear();
                    sorted.extend(px.iter().map(|q| q.0));
                    median(&mut sorted)
                } else {
                    weighted_mean(&px).0
                };
                let amp = p.amplitude_fraction * centre;
                let keep = |q: &(f64, f64, u32, f64, bool)| {
                    (q.0 - centre).abs() <= p.sigma * (q.1 + amp * amp).sqrt()
                };
                let survivors = px.iter().filter(|q| q.4 && keep(q)).count();
                let current = px.iter().filter(|q| q.4).count();
                if survivors < 2 || survivors == current {
                    break;
                }
                for q in px.iter_mut() {
                    if q.4 && !keep(q) {
                        q.4 = false;
                        clipped = true;
                    }
                }
            }
        }
        let (mean, variance, n, bits) = weighted_mean(&px);
        out.image[k] = mean as f32;
        out.variance[k] = variance as f32;
        out.count[k] = n.min(usize::from(u16::MAX)) as u16;
        out.mask[k] = bits | if clipped { p.clipped_bit } else { 0 };
    }
    out
}

/// Weighted mean, its variance, the number of kept entries and the OR of their masks.
fn weighted_mean(px: &[(f64, f64, u32, f64, bool)]) -> (f64, f64, usize, u32) {
    let (mut sw, mut swv, mut sw2var, mut n, mut bits) = (0.0, 0.0, 0.0, 0, 0);
    for &(v, var, m, w, kept) in px {
        if kept {
            sw += w;
            swv += w * v;
            sw2var += w * w * var;
            n += 1;
            bits |= m;
        }
    }
    (swv / sw, sw2var / (sw * sw), n, bits)
}

/// Median of a non-empty slice (mean of the two middle values for an even length).
fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// 5σ point-source depth (mag) of an image at zero point `zero_point`: a Gaussian PSF of
/// `psf_fwhm` pixels has the noise-equivalent area `4π σ²`, so the PSF-flux error on sky of
/// per-pixel variance `sky_variance` is `sqrt(4π σ² · sky_variance)`. `None` unless both are
/// finite and positive.
pub fn point_source_depth(zero_point: f64, sky_variance: f64, psf_fwhm: f64) -> Option<f64> {
    if !(sky_variance.is_finite() && sky_variance > 0.0 && psf_fwhm.is_finite() && psf_fwhm > 0.0) {
        return None;
    }
    let sigma = psf_fwhm / (8.0 * std::f64::consts::LN_2).sqrt();
    let area = 4.0 * std::f64::consts::PI * sigma * sigma;
    Some(zero_point - 2.5 * (5.0 * (area * sky_variance).sqrt()).log10())
}

/// An 8-bit grey asinh stretch of an image (row 0 first in `image`, so the output's rows are
/// flipped to put row 0 at the bottom, as FITS viewers show it), as RGB bytes: value `v` maps to
/// `asinh((v − lo) / softening) / asinh((hi − lo) / softening)` clamped to [0, 1], with
/// `lo` = median − 2·noise, `hi` = the 99.5th percentile, `softening` = 3·noise, where `noise`
/// is `median(variance)`'s square root. `NaN` pixels are black. Returns the bytes and
/// `(lo, hi, softening)`.
pub fn asinh_quicklook(
    image: &[f32],
    variance: &[f32],
    width: usize,
    height: usize,
) -> (Vec<u8>, (f64, f64, f64)) {
    debug_assert_eq!(image.len(), width * height);
    let mut finite: Vec<f64> = image
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    let mut vars: Vec<f64> = variance
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .map(|&v| f64::from(v))
        .collect();
    let noise = if vars.is_empty() {
        1.0
    } else {
        median(&mut vars).sqrt()
    };
    let (lo, hi) = if finite.is_empty() {
        (0.0, 1.0)
    } else {
        finite.sort_unstable_by(f64::total_cmp);
        let n = finite.len();
        let med = median(&mut finite);
        let top = finite[((n - 1) as f64 * 0.995).round() as usize];
        (med - 2.0 * noise, top)
    };
    let soft = 3.0 * noise;
    let span = ((hi - lo).max(soft) / soft).asinh();
    let mut rgb = Vec::with_capacity(width * height * 3);
    for row in (0..height).rev() {
        for &v in &image[row * width..(row + 1) * width] {
            let g = if v.is_finite() {
                let t = ((f64::from(v) - lo) / soft).asinh() / span;
                (t.clamp(0.0, 1.0) * 255.0).round() as u8
            } else {
                0
            };
            rgb.extend([g, g, g]);
        }
    }
    (rgb, (lo, hi, soft))
}

/// The value an asinh quicklook with stretch `(lo, hi, softening)` (as [`asinh_quicklook`]
/// returns it) draws with grey level `t ∈ [0, 1]` (0 black, 1 white): the inverse of its stretch,
/// `lo + softening · sinh(t · asinh(max(hi − lo, softening) / softening))`, exactly `lo` at 0
/// and `lo + max(hi − lo, softening)` at 1.
pub fn asinh_stretch_value(t: f64, (lo, hi, soft): (f64, f64, f64)) -> f64 {
    let range = (hi - lo).max(soft);
    if t <= 0.0 {
        lo
    } else if t >= 1.0 {
        lo + range
    } else {
        lo + soft * (t * (range / soft).asinh()).sinh()
    }
}

/// The published coadd quicklook: `title` above the asinh image (`rgb`, `width × height`, from
/// [`asinh_quicklook`]), and below it a grey colour bar of the stretch with tick labels at
/// black, mid-grey and white (the values [`asinh_stretch_value`] gives there, 3 significant
/// digits) and `unit` beneath.
pub fn labelled_quicklook(
    rgb: Vec<u8>,
    width: usize,
    height: usize,
    stretch: (f64, f64, f64),
    title: &str,
    unit: &str,
) -> Canvas {
    let width = width as u32;
    let ticks: Vec<(f64, String)> = [0.0, 0.5, 1.0]
        .into_iter()
        .map(|t| (t, format_value(asinh_stretch_value(t, stretch))))
        .collect();
    let grey = |t: f64| {
        let g = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
        [g, g, g]
    };
    let gap = Canvas::new(width, bar_thickness(width), PAPER_RGB);
    figure::stack(&[
        title_strip(width, title),
        Canvas::from_rgb(width, height as u32, rgb),
        gap,
        colour_bar(width, grey, &ticks, unit),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;
    use skypipe_core::figure::bar_columns;

    const PARAMS: ClipParams = ClipParams {
        sigma: 3.0,
        iterations: 2,
        amplitude_fraction: 0.3,
        reject_bits: 1 | 2,
        no_data_bit: 1 << 8,
        clipped_bit: 1 << 9,
    };

    fn input<'a>(image: &'a [f32], variance: &'a [f32], mask: &'a [u32], w: f64) -> StackInput<'a> {
        StackInput {
            image,
            variance,
            mask,
            weight: w,
        }
    }

    #[test]
    fn weighted_mean_and_variance_of_known_values() {
        // Two pixels, three inputs with weights 1, 2, 1; no clipping (values agree).
        let (a, b, c) = ([1.0f32, 10.0], [2.0f32, 10.0], [3.0f32, 10.0]);
        let var = [4.0f32, 4.0];
        let m = [0u32, 8];
        let out = stack(
            &[
                input(&a, &var, &[0, 0], 1.0),
                input(&b, &var, &m, 2.0),
                input(&c, &var, &[0, 16], 1.0),
            ],
            2,
            &PARAMS,
        );
        // (1 + 4 + 3) / 4 = 2; variance (1 + 4 + 1)·4 / 16 = 1.5.
        assert_eq!(out.image, vec![2.0, 10.0]);
        assert_eq!(out.variance, vec![1.5, 1.5]);
        assert_eq!(out.count, vec![3, 3]);
        assert_eq!(out.mask, vec![0, 8 | 16]);
    }

    #[test]
    fn rejected_bits_and_missing_data() {
        let nan = f32::NAN;
        let (a, b) = ([5.0f32, nan, 1.0], [7.0f32, nan, 3.0]);
        let var = [1.0f32, 1.0, 1.0];
        let out = stack(
            &[
                input(&a, &var, &[0, 0, 2], 1.0),
                input(&b, &var, &[0, 0, 0], 1.0),
            ],
            3,
            &PARAMS,
        );
        assert_eq!(out.image[0], 6.0);
        assert_eq!(out.variance[0], 0.5);
        assert!(out.image[1].is_nan() && out.variance[1].is_nan());
        assert_eq!((out.count[1], out.mask[1]), (0, PARAMS.no_data_bit));
        // Pixel 2: the first input is BAD (2), so only the second is used.
        assert_eq!((out.image[2], out.count[2], out.mask[2]), (3.0, 1, 0));
    }

    #[test]
    fn a_cosmic_ray_in_one_input_is_clipped() {
        // Five inputs of unit noise around 100; one has a cosmic ray of 5000 at pixel 1.
        let var = [1.0f32; 3];
        let rows: Vec<[f32; 3]> = (0..5)
            .map(|i| {
                let d = (i as f32 - 2.0) * 0.5;
                [100.0 + d, if i == 3 { 5000.0 } else { 100.0 - d }, 0.0 + d]
            })
            .collect();
        let mask = [0u32; 3];
        let inputs: Vec<StackInput> = rows.iter().map(|r| input(r, &var, &mask, 1.0)).collect();
        let out = stack(&inputs, 3, &PARAMS);
        assert_eq!(out.count, vec![5, 4, 5]);
        assert_eq!(out.mask[1], PARAMS.clipped_bit);
        // The four remaining values 101, 100.5, 99.5 (i = 0, 1, 2, 4 → 101, 100.5, 100, 99).
        assert!((out.image[1] - (101.0 + 100.5 + 100.0 + 99.0) / 4.0).abs() < 1e-5);
        assert!((out.variance[1] - 0.25).abs() < 1e-7);
        assert_eq!(out.mask[0], 0);
        // Without clipping the ray would survive in the mean.
        let plain = stack(
            &inputs,
            3,
            &ClipParams {
                iterations: 0,
                ..PARAMS
            },
        );
        assert!(plain.image[1] > 1000.0);
    }

    #[test]
    fn psf_differences_on_a_bright_star_are_not_clipped() {
        // A star core of 10 000 e- in a sharp input and 5 000 e- in two broader ones (a
        // difference of hundreds of σ): the amplitude term keeps all three.
        let (a, b, c) = ([10_000.0f32], [5_000.0f32], [5_500.0f32]);
        let var = [100.0f32];
        let m = [0u32];
        let out = stack(
            &[
                input(&a, &var, &m, 1.0),
                input(&b, &var, &m, 1.0),
                input(&c, &var, &m, 1.0),
            ],
            1,
            &PARAMS,
        );
        assert_eq!((out.count[0], out.mask[0]), (3, 0));
        assert!((out.image[0] - 20_500.0 / 3.0).abs() < 1e-2);
    }

    #[test]
    fn two_inputs_are_never_clipped() {
        let (a, b) = ([0.0f32], [1000.0f32]);
        let (var, m) = ([1.0f32], [0u32]);
        let out = stack(
            &[input(&a, &var, &m, 1.0), input(&b, &var, &m, 3.0)],
            1,
            &PARAMS,
        );
        assert_eq!((out.count[0], out.image[0]), (2, 750.0));
    }

    #[test]
    fn coadd_noise_falls_as_one_over_sqrt_n() {
        let len = 40_000;
        let mut rng = ChaCha8Rng::seed_from_u64(18);
        let planes: Vec<Vec<f32>> = (0..16)
            .map(|_| {
                (0..len)
                    .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
                    .collect()
            })
            .collect();
        let var = vec![1.0f32; len];
        let mask = vec![0u32; len];
        for n in [1usize, 4, 16] {
            let inputs: Vec<StackInput> = planes[..n]
                .iter()
                .map(|p| input(p, &var, &mask, 1.0))
                .collect();
            let out = stack(&inputs, len, &PARAMS);
            let mean = out.image.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
            let sd = (out
                .image
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / (len - 1) as f64)
                .sqrt();
            let expected = 1.0 / (n as f64).sqrt();
            assert!(
                (sd / expected - 1.0).abs() < 0.05,
                "N = {n}: σ = {sd}, expected {expected}"
            );
            // The variance map says the same wherever nothing was clipped.
            let unclipped = out.count.iter().filter(|&&c| usize::from(c) == n).count();
            assert!(
                unclipped > len * 9 / 10,
                "N = {n}: {unclipped} pixels unclipped"
            );
            assert!(out.count.iter().zip(&out.variance).all(|(&c, &v)| {
                usize::from(c) != n || (f64::from(v) - expected * expected).abs() < 1e-6
            }));
        }
    }

    #[test]
    fn input_weight_is_the_inverse_median_good_variance() {
        let var = [1.0f32, 2.0, 4.0, 100.0, f32::NAN, 0.0];
        let mask = [0u32, 0, 0, 2, 0, 0];
        assert_eq!(input_weight(&var, &mask, 2), Some(0.5));
        assert_eq!(input_weight(&var[4..], &mask[4..], 2), None);
    }

    #[test]
    fn depth_of_known_noise() {
        // σ_psf = FWHM / 2.3548; for FWHM = 2.3548 (σ = 1), area 4π; variance 1/(4π) gives a
        // flux error of 1, so the 5σ depth is zp − 2.5 log10(5).
        let fwhm = (8.0 * std::f64::consts::LN_2).sqrt();
        let d = point_source_depth(27.0, 1.0 / (4.0 * std::f64::consts::PI), fwhm).unwrap();
        assert!((d - (27.0 - 2.5 * 5f64.log10())).abs() < 1e-12);
        assert!(point_source_depth(27.0, f64::NAN, 3.0).is_none());
    }

    #[test]
    fn the_labelled_quicklook_bar_inverts_the_stretch() {
        let stretch = (48.0, 1000.0, 3.0);
        // The ends of the bar are lo and hi; the middle is where the stretch gives 127.5.
        assert!((asinh_stretch_value(0.0, stretch) - 48.0).abs() < 1e-12);
        assert!((asinh_stretch_value(1.0, stretch) - 1000.0).abs() < 1e-9);
        let mid = asinh_stretch_value(0.5, stretch);
        let span = (952.0f64 / 3.0).asinh();
        assert!((((mid - 48.0) / 3.0).asinh() / span - 0.5).abs() < 1e-12);
        // A 400 × 2 quicklook: title, image, gap, bar; the bar runs black to white and is
        // labelled with the formatted values.
        let image: Vec<f32> = (0..800).map(|k| (k % 400) as f32 * 2.5).collect();
        let (rgb, stretch) = asinh_quicklook(&image, &[1.0; 800], 400, 2);
        let fig = labelled_quicklook(rgb.clone(), 400, 2, stretch, "tract 0 patch 1,2 r", "ct");
        let title = title_strip(400, "tract 0 patch 1,2 r");
        let ticks: Vec<(f64, String)> = [0.0, 0.5, 1.0]
            .into_iter()
            .map(|t| (t, format_value(asinh_stretch_value(t, stretch))))
            .collect();
        assert_eq!(ticks[2].1, format_value(stretch.1));
        let bar = colour_bar(
            400,
            |t| {
                let g = (t * 255.0).round() as u8;
                [g, g, g]
            },
            &ticks,
            "ct",
        );
        let rows = |c: &Canvas| c.rgb.len();
        let (t, i, g) = (
            rows(&title),
            rgb.len(),
            400 * 3 * bar_thickness(400) as usize,
        );
        assert_eq!(fig.rgb[..t], title.rgb[..]);
        assert_eq!(fig.rgb[t..t + i], rgb[..]);
        assert!(fig.rgb[t + i..t + i + g].iter().all(|&b| b == 255));
        assert_eq!(fig.rgb[t + i + g..], bar.rgb[..]);
        let y = fig.height - bar.height;
        let (left, right) = bar_columns(400);
        let greys: Vec<u8> = (left..right).map(|x| fig.pixel(x, y).unwrap()[0]).collect();
        assert_eq!((greys[0], greys[greys.len() - 1]), (0, 255));
        assert!(greys.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn quicklook_stretch_orders_and_flips() {
        // 2 × 2: bottom row (row 0) dark and bright, top row NaN and mid.
        let image = [0.0f32, 1000.0, f32::NAN, 50.0];
        let var = [1.0f32; 4];
        let (rgb, (lo, hi, soft)) = asinh_quicklook(&image, &var, 2, 2);
        assert_eq!(rgb.len(), 12);
        assert_eq!((lo, hi, soft), (50.0 - 2.0, 1000.0, 3.0));
        // Output row 0 is image row 1: NaN → 0, then 50 → small but above black.
        assert_eq!(rgb[0], 0);
        assert!(rgb[3] > 0 && rgb[3] < 128, "{rgb:?}");
        // Output row 1 is image row 0: 0 is below lo → black; 1000 = hi → white.
        assert_eq!((rgb[6], rgb[9]), (0, 255));
        assert!(rgb.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}
