//! Detection with a PSF-matched filter, footprints by connected components, and deblending of
//! blended peaks by a watershed with a prominence test.
//!
//! The filter is a Gaussian of the PSF's width, `K = k ⊗ k` with `Σk = 1`. The filtered image
//! `F = K * I` has variance `K² * V` (for independent pixels of variance `V`), so the
//! significance image `F / sqrt(K² * V)` is in units of its own noise whatever the filter or
//! the local noise: a threshold of 5 is a 5σ detection of a point source. Near the edges the
//! kernel is truncated and both sums use the same pixels, so the normalisation stays right.

use crate::image::{Image, mask};

/// A normalised 1-D Gaussian of standard deviation `sigma` (pixels), truncated at 3.5σ.
///
/// ```
/// let k = skypipe_optical::detect::gaussian_kernel(1.5);
/// assert_eq!(k.len() % 2, 1);
/// assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
/// ```
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (3.5 * sigma).ceil().max(1.0) as i64;
    let mut k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k.into_iter().map(|v| v as f32).collect()
}

/// Separable convolution of `img` with `k ⊗ k`, with zeros outside the image.
pub fn convolve_separable(img: &Image<f32>, k: &[f32]) -> Image<f32> {
    let (w, h) = (img.width, img.height);
    let r = k.len() / 2;
    let mut tmp = Image::filled(w, h, 0.0f32);
    for y in 0..h {
        let row = &img.data[y * w..(y + 1) * w];
        let out = &mut tmp.data[y * w..(y + 1) * w];
        for (x, o) in out.iter_mut().enumerate() {
            let lo = x.saturating_sub(r);
            let hi = (x + r + 1).min(w);
            let mut s = 0.0f32;
            for (xx, &v) in row[lo..hi].iter().enumerate() {
                s += v * k[lo + xx + r - x];
            }
            *o = s;
        }
    }
    let mut out = Image::filled(w, h, 0.0f32);
    for y in 0..h {
        let lo = y.saturating_sub(r);
        let hi = (y + r + 1).min(h);
        let dst = &mut out.data[y * w..(y + 1) * w];
        for yy in lo..hi {
            let kv = k[yy + r - y];
            let src = &tmp.data[yy * w..(yy + 1) * w];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += kv * s;
            }
        }
    }
    out
}

/// The significance image `(K * I) / sqrt(K² * V)` for a Gaussian filter of `sigma` pixels.
/// Pixels marked [`mask::BAD`] contribute nothing to either sum.
///
/// One streaming pass: each input row is filtered along x once (image and variance together)
/// into a ring of `2r + 1` rows, and each output row is the sum of the ring's rows along y, so
/// no full-size intermediate image is made. The sums run in the same order as
/// [`convolve_separable`]'s, so the result is the same to the bit.
pub fn significance(img: &Image<f32>, var: &Image<f32>, m: &Image<u32>, sigma: f64) -> Image<f32> {
    let mut out = Image::filled(img.width, img.height, 0.0f32);
    significance_into(img, var, m, sigma, 1, &mut out);
    out
}

/// [`significance`] into an existing image of the same shape, on `threads` threads (bands of
/// rows; 1 runs on the calling thread). The result does not depend on `threads`.
pub fn significance_into(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    sigma: f64,
    threads: usize,
    out: &mut Image<f32>,
) {
    debug_assert_eq!((img.width, img.height), (out.width, out.height));
    let k = gaussian_kernel(sigma);
    let k2: Vec<f32> = k.iter().map(|v| v * v).collect();
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        return;
    }
    let bands = threads.max(1).min(h);
    if bands == 1 {
        significance_rows(img, var, m, &k, &k2, 0, &mut out.data);
        return;
    }
    let rows_per_band = h.div_ceil(bands);
    use rayon::prelude::*;
    out.data
        .par_chunks_mut(rows_per_band * w)
        .enumerate()
        .for_each(|(b, chunk)| {
            significance_rows(img, var, m, &k, &k2, b * rows_per_band, chunk);
        });
}

/// Output rows `y0 .. y0 + out.len() / width` of the significance image: compiled a second
/// time for AVX2 and chosen at run time where the CPU has it (8 lanes instead of 4; separate
/// multiplies and adds either way, so the same bits).
fn significance_rows(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    k: &[f32],
    k2: &[f32],
    y0: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { significance_rows_avx2(img, var, m, k, k2, y0, out) };
        return;
    }
    significance_rows_generic(img, var, m, k, k2, y0, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn significance_rows_avx2(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    k: &[f32],
    k2: &[f32],
    y0: usize,
    out: &mut [f32],
) {
    significance_rows_generic(img, var, m, k, k2, y0, out);
}

#[inline(always)]
fn significance_rows_generic(
    img: &Image<f32>,
    var: &Image<f32>,
    m: &Image<u32>,
    k: &[f32],
    k2: &[f32],
    y0: usize,
    out: &mut [f32],
) {
    let (w, h) = (img.width, img.height);
    let r = k.len() / 2;
    let n = k.len();
    let y1 = y0 + out.len() / w;
    // Rows padded with r zeros on each side (BAD pixels zeroed), and the ring of x-filtered rows.
    let mut pad_i = vec![0.0f32; w + 2 * r];
    let mut pad_v = vec![0.0f32; w + 2 * r];
    let mut ring_i = vec![0.0f32; n * w];
    let mut ring_v = vec![0.0f32; n * w];
    let mut acc_v = vec![0.0f32; w];
    let first = y0.saturating_sub(r);
    let mut next = first; // next input row to filter along x
    for y in y0..y1 {
        let lo = y.saturating_sub(r);
        let hi = (y + r + 1).min(h);
        while next < hi {
            let row = next * w..(next + 1) * w;
            for (((pi, pv), (&v, &s)), &mm) in pad_i[r..r + w]
                .iter_mut()
                .zip(&mut pad_v[r..r + w])
                .zip(img.data[row.clone()].iter().zip(&var.data[row.clone()]))
                .zip(&m.data[row])
            {
                let bad = mm & mask::BAD != 0;
                *pi = if bad { 0.0 } else { v };
                *pv = if bad { 0.0 } else { s };
            }
            let slot = (next % n) * w;
            filter_row(&pad_i, k, &mut ring_i[slot..slot + w]);
            filter_row(&pad_v, k2, &mut ring_v[slot..slot + w]);
            next += 1;
        }
        let dst = &mut out[(y - y0) * w..(y - y0 + 1) * w];
        dst.fill(0.0);
        acc_v.fill(0.0);
        for yy in lo..hi {
            let (kv, kv2) = (k[yy + r - y], k2[yy + r - y]);
            let slot = (yy % n) * w;
            for (d, &s) in dst.iter_mut().zip(&ring_i[slot..slot + w]) {
                *d += kv * s;
            }
            for (d, &s) in acc_v.iter_mut().zip(&ring_v[slot..slot + w]) {
                *d += kv2 * s;
            }
        }
        for (o, &v) in dst.iter_mut().zip(&acc_v) {
            *o = if v > 0.0 { *o / v.sqrt() } else { 0.0 };
        }
    }
}

/// `out[x] = Σ_t pad[x + t] k[t]`, summed in tap order (zeros beyond the row change nothing).
#[inline(always)]
fn filter_row(pad: &[f32], k: &[f32], out: &mut [f32]) {
    let w = out.len();
    out.fill(0.0);
    for (t, &kt) in k.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&pad[t..t + w]) {
            *o += v * kt;
        }
    }
}

/// One detected (possibly deblended) source: its peak in the significance image.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// Column of the peak pixel.
    pub x: usize,
    /// Row of the peak pixel.
    pub y: usize,
    /// Significance at the peak (σ).
    pub significance: f32,
    /// Index of the footprint (connected component) it belongs to.
    pub footprint: usize,
    /// Number of pixels of its deblended segment.
    pub area: usize,
}

/// Detection settings.
#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Threshold on the significance image (σ).
    pub threshold: f64,
    /// Smallest footprint, pixels.
    pub min_pixels: usize,
    /// A secondary peak is kept when it rises this many σ above the saddle joining it to a
    /// brighter peak…
    pub deblend_nsigma: f64,
    /// …and by at least this fraction of the brighter peak's significance.
    pub deblend_contrast: f64,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self {
            threshold: 5.0,
            min_pixels: 5,
            deblend_nsigma: 4.0,
            deblend_contrast: 0.01,
        }
    }
}

/// What [`detect`] found.
#[derive(Debug, Clone)]
pub struct Detections {
    /// Sources, ordered by footprint then by decreasing significance.
    pub peaks: Vec<Peak>,
    /// Per footprint, the number of sources it was split into.
    pub children: Vec<usize>,
    /// Per pixel, 1 + index into `peaks` of the segment it belongs to, 0 outside footprints.
    pub segments: Image<u32>,
}

/// Thresholds the significance image, groups pixels into 8-connected footprints, drops those
/// smaller than `min_pixels`, and splits each footprint by a watershed from its peaks, merging
/// a peak into a brighter neighbour when its prominence is below the deblending limits.
/// Marks the footprints [`mask::DETECTED`].
pub fn detect(sig: &Image<f32>, m: &mut Image<u32>, p: &DetectParams) -> Detections {
    detect_peaks_above(sig, m, p, f64::NEG_INFINITY)
}

/// [`detect`] for a pass that wants only the sources whose significance reaches `min_peak`
/// (and the [`mask::DETECTED`] footprints): a footprint whose highest significance is below
/// `min_peak` is marked DETECTED and keeps its index, but is not deblended, has no sources
/// (0 in `children`) and no pixels in `segments`. The sources at or above `min_peak`, their
/// segments and the mask are those [`detect`] gives.
pub fn detect_peaks_above(
    sig: &Image<f32>,
    m: &mut Image<u32>,
    p: &DetectParams,
    min_peak: f64,
) -> Detections {
    let (w, h) = (sig.width, sig.height);
    let thr = p.threshold as f32;
    // Connected components by flood fill.
    let mut comp = vec![u32::MAX; w * h];
    let mut footprints: Vec<Vec<usize>> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if sig.data[start] < thr || comp[start] != u32::MAX {
            continue;
        }
        let id = footprints.len() as u32;
        let mut pix = Vec::new();
        comp[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            pix.push(i);
            let (x, y) = (i % w, i / w);
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = yy * w + xx;
                    if comp[j] == u32::MAX && sig.data[j] >= thr {
                        comp[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        footprints.push(pix);
    }
    let mut segments = Image::filled(w, h, 0u32);
    let mut peaks = Vec::new();
    let mut children = Vec::new();
    // The component labels are no longer needed: their storage becomes the basin labels.
    let mut basin = comp;
    basin.fill(u32::MAX);
    for mut pix in footprints {
        if pix.len() < p.min_pixels {
            continue;
        }
        let fp = children.len();
        let highest = pix
            .iter()
            .map(|&i| sig.data[i])
            .fold(f32::NEG_INFINITY, f32::max);
        if f64::from(highest) < min_peak {
            for &i in &pix {
                m.data[i] |= mask::DETECTED;
            }
            children.push(0);
            continue;
        }
        pix.sort_by(|&a, &b| sig.data[b].total_cmp(&sig.data[a]).then(a.cmp(&b)));
        // Union-find over basins; each basin remembers its peak pixel.
        let mut parent: Vec<usize> = Vec::new();
        let mut peak_of: Vec<usize> = Vec::new();
        fn root(parent: &mut [usize], mut b: usize) -> usize {
            while parent[b] != b {
                parent[b] = parent[parent[b]];
                b = parent[b];
            }
            b
        }
        let mut roots: Vec<usize> = Vec::with_capacity(8);
        for &i in &pix {
            let (x, y) = (i % w, i / w);
            let v = sig.data[i];
            roots.clear();
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = yy * w + xx;
                    if basin[j] != u32::MAX {
                        let r = root(&mut parent, basin[j] as usize);
                        if !roots.contains(&r) {
                            roots.push(r);
                        }
                    }
                }
            }
            if roots.is_empty() {
                parent.push(parent.len());
                peak_of.push(i);
                basin[i] = (parent.len() - 1) as u32;
                continue;
            }
            roots.sort_by(|&a, &b| sig.data[peak_of[b]].total_cmp(&sig.data[peak_of[a]]));
            let main = roots[0];
            let main_peak = sig.data[peak_of[main]];
            for &r in &roots[1..] {
                let rise = sig.data[peak_of[r]] - v;
                let needed = (p.deblend_nsigma as f32).max(p.deblend_contrast as f32 * main_peak);
                if rise < needed {
                    parent[r] = main;
                }
            }
            basin[i] = main as u32;
        }
        let mut index_of_root = std::collections::HashMap::new();
        let first = peaks.len();
        for (b, &i) in peak_of.iter().enumerate() {
            if root(&mut parent, b) == b {
                index_of_root.insert(b, peaks.len());
                peaks.push(Peak {
                    x: i % w,
                    y: i / w,
                    significance: sig.data[i],
                    footprint: fp,
                    area: 0,
                });
            }
        }
        for &i in &pix {
            let r = root(&mut parent, basin[i] as usize);
            let k = index_of_root[&r];
            peaks[k].area += 1;
            segments.data[i] = (k + 1) as u32;
            m.data[i] |= mask::DETECTED;
            basin[i] = u32::MAX;
        }
        children.push(peaks.len() - first);
        // Order this footprint's peaks by decreasing significance, keeping segment labels.
        let mut order: Vec<usize> = (first..peaks.len()).collect();
        order.sort_by(|&a, &b| peaks[b].significance.total_cmp(&peaks[a].significance));
        let remap: std::collections::HashMap<usize, usize> = order
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, first + new))
            .collect();
        let reordered: Vec<Peak> = order.iter().map(|&o| peaks[o].clone()).collect();
        peaks.truncate(first);
        peaks.extend(reordered);
        for &i in &pix {
            let old = segments.data[i] as usize - 1;
            segments.data[i] = (remap[&old] + 1) as u32;
        }
    }
    Detections {
        peaks,
        children,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// Slow reference: direct 2-D convolution with zeros outside.
    fn convolve_slow(img: &Image<f32>, k: &[f32]) -> Image<f32> {
        let r = (k.len() / 2) as i64;
        let mut out = Image::filled(img.width, img.height, 0.0f32);
        for y in 0..img.height as i64 {
            for x in 0..img.width as i64 {
                let mut s = 0.0f64;
                for dy in -r..=r {
                    for dx in -r..=r {
                        let (xx, yy) = (x + dx, y + dy);
                        if xx >= 0 && yy >= 0 && xx < img.width as i64 && yy < img.height as i64 {
                            s += f64::from(img.get(xx as usize, yy as usize))
                                * f64::from(k[(dx + r) as usize])
                                * f64::from(k[(dy + r) as usize]);
                        }
                    }
                }
                out.set(x as usize, y as usize, s as f32);
            }
        }
        out
    }

    #[test]
    fn separable_convolution_matches_the_direct_sum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = Normal::new(0.0f32, 1.0).unwrap();
        for (w, h) in [(1, 1), (3, 7), (17, 9), (2, 30)] {
            let img = Image::from_vec(w, h, (0..w * h).map(|_| n.sample(&mut rng)).collect());
            let k = gaussian_kernel(1.3);
            let a = convolve_separable(&img, &k);
            let b = convolve_slow(&img, &k);
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!((x - y).abs() < 1e-5, "{w}x{h}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn streamed_significance_is_the_two_full_convolutions_to_the_bit() {
        // Reference: convolve the masked image and variance as whole images, then divide.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = Normal::new(0.0f32, 3.0).unwrap();
        for (w, h, sigma) in [(37, 23, 1.4), (5, 40, 2.2), (64, 3, 0.9), (1, 1, 1.0)] {
            let img = Image::from_vec(w, h, (0..w * h).map(|_| n.sample(&mut rng)).collect());
            let var = Image::from_vec(
                w,
                h,
                (0..w * h).map(|_| 9.0 + n.sample(&mut rng).abs()).collect(),
            );
            let mut m = Image::filled(w, h, 0u32);
            for i in (0..w * h).step_by(7) {
                m.data[i] = mask::BAD;
            }
            let (mut i2, mut v2) = (img.clone(), var.clone());
            for i in 0..w * h {
                if m.data[i] & mask::BAD != 0 {
                    i2.data[i] = 0.0;
                    v2.data[i] = 0.0;
                }
            }
            let k = gaussian_kernel(sigma);
            let k2: Vec<f32> = k.iter().map(|v| v * v).collect();
            let f = convolve_separable(&i2, &k);
            let fv = convolve_separable(&v2, &k2);
            let want: Vec<f32> = f
                .data
                .iter()
                .zip(&fv.data)
                .map(|(&a, &b)| if b > 0.0 { a / b.sqrt() } else { 0.0 })
                .collect();
            assert_eq!(significance(&img, &var, &m, sigma).data, want, "{w}x{h}");
            for threads in [2, 3, 8] {
                let mut out = Image::filled(w, h, f32::NAN);
                significance_into(&img, &var, &m, sigma, threads, &mut out);
                assert_eq!(out.data, want, "{w}x{h}, {threads} threads");
            }
        }
    }

    #[test]
    fn significance_of_pure_noise_has_unit_variance() {
        let (w, h) = (256, 256);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let n = Normal::new(0.0f32, 7.0).unwrap();
        let img = Image::from_vec(w, h, (0..w * h).map(|_| n.sample(&mut rng)).collect());
        let var = Image::filled(w, h, 49.0f32);
        let m = Image::filled(w, h, 0u32);
        let s = significance(&img, &var, &m, 1.5);
        let mean: f64 = s.data.iter().map(|&v| f64::from(v)).sum::<f64>() / (w * h) as f64;
        let var_s: f64 = s
            .data
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / (w * h) as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var_s - 1.0).abs() < 0.05, "{var_s}");
    }

    #[test]
    fn point_source_significance_is_flux_over_matched_noise() {
        // A Gaussian source of flux F and width σ on noise σ_n: the matched filter gives
        // S/N = F / (σ_n sqrt(4π σ²)) (analytic, continuous limit).
        let (w, h, s) = (41, 41, 1.7f64);
        let flux = 1000.0;
        let mut img = Image::filled(w, h, 0.0f32);
        for y in 0..h {
            for x in 0..w {
                let r2 = ((x as f64 - 20.0).powi(2) + (y as f64 - 20.0).powi(2)) / (2.0 * s * s);
                img.set(
                    x,
                    y,
                    (flux / (2.0 * std::f64::consts::PI * s * s) * (-r2).exp()) as f32,
                );
            }
        }
        let var = Image::filled(w, h, 4.0f32);
        let m = Image::filled(w, h, 0u32);
        let sig = significance(&img, &var, &m, s);
        let expected = flux / (2.0 * (4.0 * std::f64::consts::PI * s * s).sqrt());
        let got = f64::from(sig.get(20, 20));
        assert!((got / expected - 1.0).abs() < 0.01, "{got} vs {expected}");
    }

    #[test]
    fn a_pass_for_bright_peaks_keeps_their_sources_segments_and_the_whole_mask() {
        // Noise with bright and faint blobs, some blended, on a significance-like image.
        let (w, h) = (120, 90);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = Normal::new(0.0f32, 1.0).unwrap();
        let mut sig = Image::from_vec(w, h, (0..w * h).map(|_| n.sample(&mut rng)).collect());
        let blobs = [
            (20.0, 20.0, 80.0),
            (26.0, 22.0, 45.0),
            (60.0, 40.0, 12.0),
            (90.0, 70.0, 31.0),
            (95.0, 20.0, 8.0),
            (40.0, 75.0, 29.9),
        ];
        for y in 0..h {
            for x in 0..w {
                let v: f64 = blobs
                    .iter()
                    .map(|&(cx, cy, a)| {
                        a * (-((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)) / 8.0).exp()
                    })
                    .sum();
                sig.data[y * w + x] += v as f32;
            }
        }
        let p = DetectParams::default();
        let mut m_all = Image::filled(w, h, 0u32);
        let all = detect(&sig, &mut m_all, &p);
        let mut m_bright = Image::filled(w, h, 0u32);
        let bright = detect_peaks_above(&sig, &mut m_bright, &p, 30.0);
        assert_eq!(m_bright.data, m_all.data);
        assert_eq!(bright.children.len(), all.children.len());
        let kept: Vec<&Peak> = all
            .peaks
            .iter()
            .filter(|k| k.significance >= 30.0)
            .collect();
        assert!(kept.len() >= 3 && kept.len() < all.peaks.len());
        for (i, k) in all.peaks.iter().enumerate() {
            let Some(j) = bright.peaks.iter().position(|b| (b.x, b.y) == (k.x, k.y)) else {
                assert!(
                    k.significance < 30.0,
                    "bright peak lost at {}, {}",
                    k.x,
                    k.y
                );
                continue;
            };
            let b = &bright.peaks[j];
            assert_eq!(
                (b.footprint, b.area, b.significance),
                (k.footprint, k.area, k.significance)
            );
            assert_eq!(bright.children[b.footprint], all.children[k.footprint]);
            let seg = |d: &Detections, label: usize| -> Vec<usize> {
                (0..w * h)
                    .filter(|&q| d.segments.data[q] as usize == label + 1)
                    .collect()
            };
            assert_eq!(seg(&bright, j), seg(&all, i));
        }
    }

    #[test]
    fn two_peaks_are_split_and_a_plateau_is_not() {
        let (w, h) = (40, 20);
        let mut sig = Image::filled(w, h, 0.0f32);
        let bump = |x: f64, y: f64, cx: f64, a: f64| {
            a * (-((x - cx).powi(2) + (y - 10.0).powi(2)) / 8.0).exp()
        };
        for y in 0..h {
            for x in 0..w {
                let v = bump(x as f64, y as f64, 12.0, 60.0) + bump(x as f64, y as f64, 19.0, 40.0);
                sig.set(x, y, v as f32);
            }
        }
        let mut m = Image::filled(w, h, 0u32);
        let d = detect(&sig, &mut m, &DetectParams::default());
        assert_eq!(d.children, vec![2]);
        assert_eq!((d.peaks[0].x, d.peaks[0].y), (12, 10));
        assert_eq!((d.peaks[1].x, d.peaks[1].y), (19, 10));
        let total: usize = d.peaks.iter().map(|p| p.area).sum();
        assert_eq!(
            total,
            m.data.iter().filter(|&&v| v & mask::DETECTED != 0).count()
        );
        assert_eq!(d.segments.get(12, 10), 1);
        assert_eq!(d.segments.get(19, 10), 2);
        // A flat-topped (saturated) source with noise-free ripples below the prominence limit.
        let mut flat = Image::filled(w, h, 0.0f32);
        for y in 5..15 {
            for x in 5..30 {
                flat.set(x, y, 100.0 + ((x * 7 + y * 3) % 3) as f32);
            }
        }
        let mut m = Image::filled(w, h, 0u32);
        let d = detect(&flat, &mut m, &DetectParams::default());
        assert_eq!(d.children, vec![1]);
        // Below min_pixels nothing is kept.
        let mut tiny = Image::filled(w, h, 0.0f32);
        tiny.set(3, 3, 50.0);
        let d = detect(
            &tiny,
            &mut Image::filled(w, h, 0u32),
            &DetectParams::default(),
        );
        assert!(d.peaks.is_empty());
    }
}
