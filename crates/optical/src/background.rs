//! Sky background on a mesh: a sigma-clipped estimate per cell, a 3×3 median filter over the
//! cells, and bilinear interpolation between cell centres (extrapolated linearly at the
//! borders, so a sky gradient is followed to the edge).

use crate::image::{Image, mask};

/// Pixels with any of these mask bits are left out of the background estimate.
const IGNORED: u32 = mask::SAT | mask::BAD | mask::CR | mask::DETECTED;

/// The background of one mesh cell: sigma-clipped (3σ, until stable or 10 rounds); when the
/// clipped distribution is nearly symmetric, the mode estimate `2.5 median − 1.5 mean`
/// (as SExtractor), else the median. Returns `(level, rms)`, or `None` with fewer than 10 values.
///
/// The values are sorted once (left sorted on return); each round's median is then read off
/// and its clipped set is a contiguous run found by binary search.
pub fn clipped_level(values: &mut [f32]) -> Option<(f64, f64)> {
    if values.len() < 10 {
        return None;
    }
    sort_total(values);
    let (mut a, mut b) = (0, values.len());
    let (mut med, mut mean, mut sd) = (0.0, 0.0, 0.0);
    for _ in 0..10 {
        let v = &values[a..b];
        let n = v.len();
        med = sorted_median(v);
        mean = sum_f64(v) / n as f64;
        sd = (sum_sq_dev(v, mean) / n as f64).sqrt();
        let (lo, hi) = (med - 3.0 * sd, med + 3.0 * sd);
        let first = v.partition_point(|&x| f64::from(x) < lo);
        let end = v.partition_point(|&x| f64::from(x) <= hi);
        let k = end.saturating_sub(first);
        if k == n || k < 10 {
            break;
        }
        (a, b) = (a + first, a + end);
    }
    let level = if sd > 0.0 && (mean - med).abs() < 0.3 * sd {
        2.5 * med - 1.5 * mean
    } else {
        med
    };
    Some((level, sd))
}

/// The median of sorted values (the mean of the two middle ones for an even count).
fn sorted_median(v: &[f32]) -> f64 {
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        f64::from(v[mid])
    } else {
        0.5 * (f64::from(v[mid]) + f64::from(v[mid - 1]))
    }
}

/// Sorts in [`f32::total_cmp`] order by an LSD radix sort of the order-preserving bit keys
/// (three 11-bit digits, counted in one pass; a digit that every key shares is skipped).
fn sort_total(values: &mut [f32]) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    const DIGIT: u32 = (BUCKETS - 1) as u32;
    let key = |x: f32| {
        let b = x.to_bits();
        if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        }
    };
    let n = values.len();
    if n == 0 {
        return;
    }
    let mut count = [[0u32; BUCKETS]; 3];
    let mut keys: Vec<u32> = Vec::with_capacity(n);
    for &x in values.iter() {
        let k = key(x);
        count[0][(k & DIGIT) as usize] += 1;
        count[1][((k >> BITS) & DIGIT) as usize] += 1;
        count[2][(k >> (2 * BITS)) as usize] += 1;
        keys.push(k);
    }
    let mut other = vec![0u32; n];
    for (digit, count) in count.iter_mut().enumerate() {
        let shift = digit as u32 * BITS;
        let d = |k: u32| ((k >> shift) & DIGIT) as usize;
        if count[d(keys[0])] as usize == n {
            continue; // every key has the same digit here
        }
        let mut start = 0u32;
        for c in count.iter_mut() {
            let here = *c;
            *c = start;
            start += here;
        }
        for &k in &keys {
            let slot = &mut count[d(k)];
            other[*slot as usize] = k;
            *slot += 1;
        }
        std::mem::swap(&mut keys, &mut other);
    }
    for (v, &k) in values.iter_mut().zip(&keys) {
        *v = f32::from_bits(if k & 0x8000_0000 != 0 {
            k & 0x7FFF_FFFF
        } else {
            !k
        });
    }
}

/// `Σ x` in f64 over eight interleaved partial sums (no loop-carried dependency on one add).
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ (x − mean)²` in f64, eight partial sums as [`sum_f64`].
fn sum_sq_dev(v: &[f32], mean: f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let d = f64::from(x) - mean;
            *a += d * d;
        }
    }
    acc.iter().sum::<f64>() + tail
}

fn median(v: &mut [f32]) -> f64 {
    let mid = v.len() / 2;
    let upper = f64::from(*v.select_nth_unstable_by(mid, f32::total_cmp).1);
    if v.len() % 2 == 1 {
        upper
    } else {
        let lower = v[..mid].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        0.5 * (upper + f64::from(lower))
    }
}

/// The background model: cell levels and the cell size, with [`Background::at`] to evaluate it.
#[derive(Debug, Clone)]
pub struct Background {
    /// Nominal cell size in pixels (cells are resized to tile the image evenly).
    pub cell: usize,
    /// Number of cells along x.
    pub nx: usize,
    /// Number of cells along y.
    pub ny: usize,
    /// Level of each cell (row-major, `ny × nx`).
    pub levels: Vec<f64>,
    /// Clipped RMS of each cell.
    pub rms: Vec<f64>,
    width: usize,
    height: usize,
}

impl Background {
    /// Estimates the background of `img` on cells of `cell` pixels, ignoring masked pixels.
    /// Cells without enough good pixels take the median of the others.
    pub fn estimate(img: &Image<f32>, m: &Image<u32>, cell: usize) -> Self {
        Self::estimate_threads(img, m, cell, 1)
    }

    /// [`Background::estimate`] with the cells shared among `threads` threads of the current
    /// rayon pool (1: on the calling thread). The result does not depend on `threads`.
    pub fn estimate_threads(img: &Image<f32>, m: &Image<u32>, cell: usize, threads: usize) -> Self {
        let cell = cell.max(8);
        // Cells of nearly equal size (the remainder is spread), so cell centres are evenly
        // spaced and the median filter below keeps a linear gradient.
        let nx = ((img.width + cell / 2) / cell).max(1);
        let ny = ((img.height + cell / 2) / cell).max(1);
        let one_cell = |buf: &mut Vec<f32>, c: usize| {
            let (cx, cy) = (c % nx, c / nx);
            buf.clear();
            let (x0, x1) = (bound(cx, nx, img.width), bound(cx + 1, nx, img.width));
            for y in bound(cy, ny, img.height)..bound(cy + 1, ny, img.height) {
                let row = y * img.width;
                // Branch-free: every value is stored, the count advances only past kept ones.
                let start = buf.len();
                buf.resize(start + x1 - x0, 0.0);
                let dst = &mut buf[start..];
                let mut kept = 0;
                for (&v, &mm) in img.data[row + x0..row + x1]
                    .iter()
                    .zip(&m.data[row + x0..row + x1])
                {
                    dst[kept] = v;
                    kept += usize::from(mm & IGNORED == 0);
                }
                buf.truncate(start + kept);
            }
            clipped_level(buf)
        };
        let cells: Vec<Option<(f64, f64)>> = if threads > 1 {
            use rayon::prelude::*;
            (0..nx * ny)
                .into_par_iter()
                .map_init(|| Vec::with_capacity(cell * cell), one_cell)
                .collect()
        } else {
            let mut buf = Vec::with_capacity(cell * cell);
            (0..nx * ny).map(|c| one_cell(&mut buf, c)).collect()
        };
        let mut levels = vec![f64::NAN; nx * ny];
        let mut rms = vec![f64::NAN; nx * ny];
        for (c, lr) in cells.into_iter().enumerate() {
            if let Some((l, r)) = lr {
                levels[c] = l;
                rms[c] = r;
            }
        }
        fill_missing(&mut levels);
        fill_missing(&mut rms);
        let levels = median3x3(&levels, nx, ny);
        Self {
            cell,
            nx,
            ny,
            levels,
            rms,
            width: img.width,
            height: img.height,
        }
    }

    /// Centre of cell `c` along an axis of `len` pixels (the last cell may be partial).
    fn centre(&self, c: usize, n: usize, len: usize) -> f64 {
        0.5 * (bound(c, n, len) + bound(c + 1, n, len)) as f64 - 0.5
    }

    /// Interpolation weights along one axis: the two cells and the fraction of the second.
    fn axis(&self, p: f64, n: usize, len: usize) -> (usize, usize, f64) {
        if n == 1 {
            return (0, 0, 0.0);
        }
        let mut c0 = 0;
        while c0 + 2 < n && self.centre(c0 + 1, n, len) <= p {
            c0 += 1;
        }
        let (a, b) = (self.centre(c0, n, len), self.centre(c0 + 1, n, len));
        (c0, c0 + 1, (p - a) / (b - a))
    }

    /// The background at pixel (x, y): bilinear between cell centres, linear beyond the outer
    /// centres.
    pub fn at(&self, x: f64, y: f64) -> f64 {
        let (x0, x1, fx) = self.axis(x, self.nx, self.width);
        let (y0, y1, fy) = self.axis(y, self.ny, self.height);
        let l = |cx: usize, cy: usize| self.levels[cy * self.nx + cx];
        let top = l(x0, y0) * (1.0 - fx) + l(x1, y0) * fx;
        let bottom = l(x0, y1) * (1.0 - fx) + l(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// The background image.
    pub fn render(&self) -> Image<f32> {
        let mut out = Image::filled(self.width, self.height, 0.0f32);
        self.for_each_row(&mut out.data, |o, b| *o = b);
        out
    }

    /// Subtracts the model from `img` (same shape as the estimate) in place, row by row,
    /// without making the background image: the same values as `img − render()`.
    pub fn subtract_from(&self, img: &mut Image<f32>) {
        debug_assert_eq!((img.width, img.height), (self.width, self.height));
        self.for_each_row(&mut img.data, |o, b| *o -= b);
    }

    /// Calls `f(pixel, model value)` for every pixel of a row-major image of the model's shape.
    /// The interpolations along x depend only on the pair of cell rows, so they are made once
    /// per pair and each pixel costs one interpolation along y.
    fn for_each_row(&self, data: &mut [f32], mut f: impl FnMut(&mut f32, f32)) {
        let xs: Vec<(usize, usize, f64)> = (0..self.width)
            .map(|x| self.axis(x as f64, self.nx, self.width))
            .collect();
        let l = |cx: usize, cy: usize| self.levels[cy * self.nx + cx];
        let (mut top, mut bottom) = (vec![0.0f64; self.width], vec![0.0f64; self.width]);
        let mut rows = None;
        for (y, row) in data.chunks_exact_mut(self.width).enumerate() {
            let (y0, y1, fy) = self.axis(y as f64, self.ny, self.height);
            if rows != Some((y0, y1)) {
                for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                    top[x] = l(x0, y0) * (1.0 - fx) + l(x1, y0) * fx;
                    bottom[x] = l(x0, y1) * (1.0 - fx) + l(x1, y1) * fx;
                }
                rows = Some((y0, y1));
            }
            for ((o, &t), &b) in row.iter_mut().zip(&top).zip(&bottom) {
                f(o, (t * (1.0 - fy) + b * fy) as f32);
            }
        }
    }

    /// Median over cells of the clipped RMS (a typical sky noise per pixel).
    pub fn typical_rms(&self) -> f64 {
        let mut v: Vec<f32> = self.rms.iter().map(|&r| r as f32).collect();
        median(&mut v)
    }
}

/// First pixel of cell `c` of `n` cells along an axis of `len` pixels.
fn bound(c: usize, n: usize, len: usize) -> usize {
    c * len / n
}

fn fill_missing(v: &mut [f64]) {
    let mut good: Vec<f32> = v
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| x as f32)
        .collect();
    let fill = if good.is_empty() {
        0.0
    } else {
        median(&mut good)
    };
    for x in v.iter_mut() {
        if !x.is_finite() {
            *x = fill;
        }
    }
}

/// 3×3 median filter of the cell grid. At the borders the window shrinks to stay symmetric
/// about the cell (1×3 along an edge, the cell itself at a corner), so a linear gradient is
/// kept exactly while a bright star that biases one cell is replaced by its neighbours' level.
fn median3x3(v: &[f64], nx: usize, ny: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    let mut buf: Vec<f32> = Vec::with_capacity(9);
    let span = |c: usize, n: usize| {
        if c == 0 || c + 1 == n {
            c..c + 1
        } else {
            c - 1..c + 2
        }
    };
    for cy in 0..ny {
        for cx in 0..nx {
            buf.clear();
            for yy in span(cy, ny) {
                for xx in span(cx, nx) {
                    buf.push(v[yy * nx + xx] as f32);
                }
            }
            out[cy * nx + cx] = median(&mut buf);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn clipped_level_ignores_outliers() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = Normal::new(100.0f32, 5.0).unwrap();
        let mut v: Vec<f32> = (0..4000).map(|_| n.sample(&mut rng)).collect();
        for x in v.iter_mut().take(100) {
            *x = 10_000.0;
        }
        let (level, rms) = clipped_level(&mut v).unwrap();
        assert!((level - 100.0).abs() < 0.5, "{level}");
        assert!((rms - 5.0).abs() < 0.3, "{rms}");
        assert!(clipped_level(&mut [1.0; 5]).is_none());
    }

    #[test]
    fn radix_sort_is_total_order() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = Normal::new(0.0f32, 1e3).unwrap();
        let mut v: Vec<f32> = (0..5000).map(|_| n.sample(&mut rng)).collect();
        v.extend([0.0, -0.0, f32::MAX, f32::MIN, 1e-40, -1e-40, 350.25, 350.25]);
        // A sky-like cell: every key shares its top digit (skipped), and an empty one.
        let sky: Vec<f32> = (0..4096)
            .map(|i| 1000.0 + (i * 7919 % 4001) as f32 * 0.01)
            .collect();
        for mut v in [v, sky, Vec::new()] {
            let mut want = v.clone();
            want.sort_by(f32::total_cmp);
            sort_total(&mut v);
            assert_eq!(
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn median_of_known_values() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_gradient_is_recovered_to_the_edges() {
        let (w, h) = (200, 130);
        let sky = |x: f64, y: f64| 500.0 + 0.3 * x - 0.2 * y;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let n = Normal::new(0.0f32, 3.0).unwrap();
        let data: Vec<f32> = (0..w * h)
            .map(|i| sky((i % w) as f64, (i / w) as f64) as f32 + n.sample(&mut rng))
            .collect();
        let img = Image::from_vec(w, h, data);
        let m = Image::filled(w, h, 0);
        let bg = Background::estimate(&img, &m, 32);
        let model = bg.render();
        let (mut worst, mut sum): (f64, f64) = (0.0, 0.0);
        for y in 0..h {
            for x in 0..w {
                let d = f64::from(model.get(x, y)) - sky(x as f64, y as f64);
                worst = worst.max(d.abs());
                sum += d;
                assert!((bg.at(x as f64, y as f64) - f64::from(model.get(x, y))).abs() < 1e-3);
            }
        }
        // The mode estimate of a cell is noisier than its mean (≈0.3 here), and extrapolation
        // to the corners amplifies it; a border clamped to the outer cell centres would be off
        // by 0.3 × 16 ≈ 5, and a biased estimator would move the mean.
        assert!(worst < 1.5, "worst {worst}");
        let mean = sum / (w * h) as f64;
        assert!(mean.abs() < 0.15, "mean {mean}");
    }
}
