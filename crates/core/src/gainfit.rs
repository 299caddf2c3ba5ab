//! Gain fits of a timestream against a template, and an error that includes what the template
//! leaves unexplained.
//!
//! [`LineFit`] streams the least-squares line `y = g·x + b`. Its classical error assumes white
//! residuals; a sky (or 1/f noise) that the template does not model leaves a smooth residual
//! that is correlated with the template and biases `g` far beyond that error. [`ResidualStats`]
//! streams the fitted residuals in sample order and splits them into
//!
//! - a **white** part, from first differences of consecutive residuals (`σ² = ⟨Δr²⟩/2`, blind
//!   to anything smooth), giving `σ_white = σ / √Σ(x − x̄)²`;
//! - a **smooth excess**: the variance of residual means over blocks of `B` samples beyond the
//!   `σ²/B` that white noise explains, counted only when it exceeds that by four standard
//!   errors. Its RMS `s` is turned into a gain error `σ_sky = |g|·s / rms(x − x̄)`: the bias the
//!   fit would have if the unmodelled signal's power lay in the template's own harmonic with a
//!   random phase (the fit removed the in-phase part, so what remains estimates the part it
//!   absorbed). Unmodelled power spread over other scales makes it conservative.
//!
//! The reported error is `√(σ_white² + σ_sky²)`; the block length `B` is a twentieth of the
//! template's characteristic period `2π·rms(x − x̄)/rms(Δx)`, so the blocks resolve the
//! template's scale and average the white noise down.

/// Streaming least squares of `y = g·x + b` (Welford co-moments), with the template's
/// first-difference power for its characteristic period.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineFit {
    n: f64,
    mx: f64,
    my: f64,
    sxx: f64,
    sxy: f64,
    syy: f64,
    prev_x: Option<f64>,
    dxx: f64,
    ndx: f64,
}

/// Result of a [`LineFit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineSolution {
    /// Slope `g`.
    pub gain: f64,
    /// Intercept `b`.
    pub offset: f64,
    /// Standard error of `g` from the residual scatter (white-noise assumption).
    pub gain_error: f64,
    /// Number of points.
    pub n: u64,
    /// `Σ(x − x̄)²`.
    pub sxx: f64,
    /// Characteristic period of the template in samples, `2π·rms(x − x̄)/rms(Δx)`
    /// (infinite when consecutive `x` never differ).
    pub template_period: f64,
}

impl LineFit {
    /// Adds the point `(x, y)`; points are expected in sample order (for the period).
    #[inline]
    pub fn add(&mut self, x: f64, y: f64) {
        self.n += 1.0;
        let dx = x - self.mx;
        self.mx += dx / self.n;
        let dy = y - self.my;
        self.my += dy / self.n;
        self.sxx += dx * (x - self.mx);
        self.sxy += dx * (y - self.my);
        self.syy += dy * (y - self.my);
        if let Some(p) = self.prev_x {
            self.dxx += (x - p) * (x - p);
            self.ndx += 1.0;
        }
        self.prev_x = Some(x);
    }

    /// Adds the points `(xs[i], ys[i])` in order (lengths must match; checked by assert):
    /// the batch's co-moments about its own means, merged with Chan's update. Equal to
    /// [`Self::add`] point by point up to rounding (< 1e-10 relative in the tests), with one
    /// division per batch instead of two per point.
    pub fn add_batch(&mut self, xs: &[f64], ys: &[f64]) {
        assert_eq!(xs.len(), ys.len(), "LineFit::add_batch: length mismatch");
        let Some(&last) = xs.last() else {
            return;
        };
        let m = xs.len() as f64;
        let [sx, sy] = lane_sums(xs, ys, |x, y| [x, y]);
        let (bx, by) = (sx / m, sy / m);
        let [bxx, bxy, byy] = lane_sums(xs, ys, |x, y| {
            let (dx, dy) = (x - bx, y - by);
            [dx * dx, dx * dy, dy * dy]
        });
        let [mut dxx] = lane_sums(&xs[1..], &xs[..xs.len() - 1], |b, a| [(b - a) * (b - a)]);
        if let Some(p) = self.prev_x {
            dxx += (xs[0] - p) * (xs[0] - p);
            self.ndx += 1.0;
        }
        self.dxx += dxx;
        self.ndx += m - 1.0;
        self.prev_x = Some(last);
        let n = self.n + m;
        let (ddx, ddy) = (bx - self.mx, by - self.my);
        let f = self.n * m / n;
        self.sxx += bxx + ddx * ddx * f;
        self.sxy += bxy + ddx * ddy * f;
        self.syy += byy + ddy * ddy * f;
        self.mx += ddx * m / n;
        self.my += ddy * m / n;
        self.n = n;
    }

    /// Number of points added.
    pub fn len(&self) -> u64 {
        self.n as u64
    }

    /// Whether no point was added.
    pub fn is_empty(&self) -> bool {
        self.n == 0.0
    }

    /// The fitted line, or `None` with fewer than 3 points or a constant `x`.
    pub fn solve(&self) -> Option<LineSolution> {
        if self.n < 3.0 || self.sxx <= 0.0 {
            return None;
        }
        let gain = self.sxy / self.sxx;
        let resid = (self.syy - self.sxy * gain).max(0.0);
        let rms_x = (self.sxx / self.n).sqrt();
        let rms_dx = if self.ndx > 0.0 {
            (self.dxx / self.ndx).sqrt()
        } else {
            0.0
        };
        Some(LineSolution {
            gain,
            offset: self.my - gain * self.mx,
            gain_error: (resid / (self.n - 2.0) / self.sxx).sqrt(),
            n: self.n as u64,
            sxx: self.sxx,
            template_period: std::f64::consts::TAU * rms_x / rms_dx,
        })
    }
}

/// Independent partial sums per lane, so the additions of a batch vectorise.
const LANES: usize = 4;

/// `Σ_i term(xs[i], ys[i])` for each of the `K` components of `term`, summed in [`LANES`]
/// interleaved partial sums (then added in lane order): no dependency chain from one point to
/// the next, so the loop vectorises. The lengths must match (the shorter one is used).
#[inline(always)]
fn lane_sums<const K: usize>(
    xs: &[f64],
    ys: &[f64],
    term: impl Fn(f64, f64) -> [f64; K],
) -> [f64; K] {
    let n = xs.len().min(ys.len());
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let mut acc = [[0.0f64; K]; LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (x, y) in xc.zip(yc) {
        for lane in 0..LANES {
            let t = term(x[lane], y[lane]);
            for k in 0..K {
                acc[lane][k] += t[k];
            }
        }
    }
    for (lane, (&x, &y)) in xr.iter().zip(yr).enumerate() {
        let t = term(x, y);
        for k in 0..K {
            acc[lane][k] += t[k];
        }
    }
    std::array::from_fn(|k| acc.iter().map(|a| a[k]).sum())
}

/// Whether a sample enters a fit: unflagged, with a finite raw value and template.
#[inline(always)]
fn fit_sample(raw: f64, flag: u8, template: f64) -> bool {
    flag == 0 && raw.is_finite() && template.is_finite()
}

/// The samples of a chunk that enter a fit (flag 0, finite raw value and template), in order:
/// templates into `xs`, raw values into `ys` (both cleared first). Branch-free: every sample is
/// written and the write position advances only for the kept ones. Lengths must match
/// (checked by assert).
pub fn fit_points(
    raw: &[f64],
    flags: &[u8],
    template: &[f64],
    xs: &mut Vec<f64>,
    ys: &mut Vec<f64>,
) {
    assert!(
        raw.len() == flags.len() && raw.len() == template.len(),
        "fit_points: length mismatch"
    );
    xs.clear();
    ys.clear();
    xs.resize(raw.len(), 0.0);
    ys.resize(raw.len(), 0.0);
    let mut kept = 0;
    for ((&r, &f), &t) in raw.iter().zip(flags).zip(template) {
        xs[kept] = t;
        ys[kept] = r;
        kept += usize::from(fit_sample(r, f, t));
    }
    xs.truncate(kept);
    ys.truncate(kept);
}

impl LineSolution {
    /// The residual block length for [`ResidualStats`]: a twentieth of the template period,
    /// at least 1 and at most an eighth of the points.
    pub fn block_len(&self) -> usize {
        let cap = (self.n / 8).max(1) as f64;
        (self.template_period / 20.0).clamp(1.0, cap).round() as usize
    }
}

/// Streaming statistics of fitted residuals `r = y − g·x − b`, in sample order: first
/// differences (white noise) and block means (smooth excess).
#[derive(Debug, Clone, Default)]
pub struct ResidualStats {
    block: usize,
    n: u64,
    prev: Option<f64>,
    diff_sq: f64,
    n_diff: u64,
    block_sum: f64,
    block_n: usize,
    means: Vec<f64>,
}

/// The gain error of a fit, split into its white and smooth-excess parts (see the module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GainError {
    /// `√(white² + sky²)`: the error to quote.
    pub total: f64,
    /// From the white-noise level alone.
    pub white: f64,
    /// From the significant smooth excess of the residual (0 when not significant).
    pub sky: f64,
    /// White noise per sample, in the units of `y`.
    pub noise_rms: f64,
    /// RMS of the smooth excess per sample, in the units of `y` (0 when not significant).
    pub excess_rms: f64,
}

impl ResidualStats {
    /// Statistics with residual blocks of `block` samples (at least 1).
    pub fn new(block: usize) -> Self {
        Self {
            block: block.max(1),
            ..Self::default()
        }
    }

    /// Adds the next residual.
    #[inline]
    pub fn add(&mut self, r: f64) {
        self.n += 1;
        if let Some(p) = self.prev {
            self.diff_sq += (r - p) * (r - p);
            self.n_diff += 1;
        }
        self.prev = Some(r);
        self.block_sum += r;
        self.block_n += 1;
        if self.block_n == self.block {
            self.means.push(self.block_sum / self.block as f64);
            self.block_sum = 0.0;
            self.block_n = 0;
        }
    }

    /// Adds the residuals `rs` in order: the same sums, in the same order, as [`Self::add`]
    /// per residual (bit for bit), without a branch per residual.
    pub fn add_batch(&mut self, rs: &[f64]) {
        let Some(&last) = rs.last() else {
            return;
        };
        let mut diff_sq = self.diff_sq;
        if let Some(p) = self.prev {
            diff_sq += (rs[0] - p) * (rs[0] - p);
            self.n_diff += 1;
        }
        for w in rs.windows(2) {
            diff_sq += (w[1] - w[0]) * (w[1] - w[0]);
        }
        self.diff_sq = diff_sq;
        self.n_diff += rs.len() as u64 - 1;
        self.prev = Some(last);
        self.n += rs.len() as u64;
        let mut rest = rs;
        while !rest.is_empty() {
            let take = (self.block - self.block_n).min(rest.len());
            let mut sum = self.block_sum;
            for &r in &rest[..take] {
                sum += r;
            }
            self.block_sum = sum;
            self.block_n += take;
            if self.block_n == self.block {
                self.means.push(self.block_sum / self.block as f64);
                self.block_sum = 0.0;
                self.block_n = 0;
            }
            rest = &rest[take..];
        }
    }

    /// The gain error of `fit` (whose residuals were added): white part from the first
    /// differences, smooth part from the block means when significant at 4σ.
    pub fn gain_error(&self, fit: &LineSolution) -> GainError {
        let noise_var = if self.n_diff > 0 {
            self.diff_sq / (2.0 * self.n_diff as f64)
        } else {
            0.0
        };
        let white = (noise_var / fit.sxx).sqrt();
        let nb = self.means.len();
        let mut excess_var = 0.0;
        if nb >= 3 {
            let mean = self.means.iter().sum::<f64>() / nb as f64;
            let var = self
                .means
                .iter()
                .map(|m| (m - mean) * (m - mean))
                .sum::<f64>()
                / (nb - 1) as f64;
            let expected = noise_var / self.block as f64;
            // Standard error of a sample variance of nb Gaussian means: √(2/(nb − 1)).
            let threshold = expected * (1.0 + 4.0 * (2.0 / (nb - 1) as f64).sqrt());
            if var > threshold {
                excess_var = var - expected;
            }
        }
        let excess_rms = excess_var.sqrt();
        let rms_x = (fit.sxx / fit.n as f64).sqrt();
        let sky = excess_rms / rms_x;
        GainError {
            total: white.hypot(sky),
            white,
            sky,
            noise_rms: noise_var.sqrt(),
            excess_rms,
        }
    }
}

/// A gain (units of the raw data per K) and offset (units of the raw data).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Gain.
    pub gain: f64,
    /// Offset.
    pub offset: f64,
}

impl Calibration {
    /// Calibrates raw samples: `(raw − offset)/gain − subtract` into `out`; a non-finite raw
    /// sample becomes 0 with `nonfinite_flag` or-ed into its flag. Lengths must match.
    pub fn apply(
        &self,
        raw: &[f64],
        flags: &[u8],
        subtract: &[f64],
        nonfinite_flag: u8,
        out: &mut Vec<f64>,
        out_flags: &mut Vec<u8>,
    ) {
        assert!(
            raw.len() == flags.len() && raw.len() == subtract.len(),
            "Calibration::apply: length mismatch"
        );
        out.clear();
        out_flags.clear();
        out.resize(raw.len(), 0.0);
        out_flags.resize(raw.len(), 0);
        let outputs = out.iter_mut().zip(out_flags.iter_mut());
        for ((o, of), ((&v, &f), &s)) in outputs.zip(raw.iter().zip(flags).zip(subtract)) {
            let finite = v.is_finite();
            *o = if finite {
                (v - self.offset) / self.gain - s
            } else {
                0.0
            };
            *of = if finite { f } else { f | nonfinite_flag };
        }
    }

    /// The fit residuals `raw − gain·template − offset` of the samples that enter a fit (flag
    /// 0, finite raw value and template; see [`fit_points`]), in order, into `residuals`
    /// (cleared first). Branch-free like [`fit_points`]; lengths must match (checked by
    /// assert).
    pub fn fit_residuals(
        &self,
        raw: &[f64],
        flags: &[u8],
        template: &[f64],
        residuals: &mut Vec<f64>,
    ) {
        assert!(
            raw.len() == flags.len() && raw.len() == template.len(),
            "fit_residuals: length mismatch"
        );
        residuals.clear();
        residuals.resize(raw.len(), 0.0);
        let mut kept = 0;
        for ((&r, &f), &t) in raw.iter().zip(flags).zip(template) {
            residuals[kept] = r - self.gain * t - self.offset;
            kept += usize::from(fit_sample(r, f, t));
        }
        residuals.truncate(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn batches_equal_points_added_one_by_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let xs: Vec<f64> = (0..5000)
            .map(|k| 1e-3 * (k as f64 * 0.01).sin() + 2.0)
            .collect();
        let ys: Vec<f64> = xs
            .iter()
            .map(|&x| 3.0 * x - 0.5 + 1e-4 * gauss(&mut rng))
            .collect();
        let mut one = LineFit::default();
        for (&x, &y) in xs.iter().zip(&ys) {
            one.add(x, y);
        }
        let mut batched = LineFit::default();
        for (a, b) in [(0, 1), (1, 1), (1, 700), (700, 4096), (4096, 5000)] {
            batched.add_batch(&xs[a..b], &ys[a..b]);
        }
        let (p, q) = (one.solve().unwrap(), batched.solve().unwrap());
        assert_eq!(p.n, q.n);
        // A template with a mean 2000× its spread: rounding differs by ≈ 2e-12 relative (the
        // gain's statistical error here is ≈ 1e-3 relative).
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * a.abs().max(b.abs());
        assert!(close(p.gain, q.gain), "{} {}", p.gain, q.gain);
        assert!(close(p.offset, q.offset), "{} {}", p.offset, q.offset);
        assert!(close(p.sxx, q.sxx) && close(p.gain_error, q.gain_error));
        assert!(close(p.template_period, q.template_period));
    }

    /// A standard normal by Box–Muller.
    fn gauss(r: &mut ChaCha8Rng) -> f64 {
        let u: f64 = r.random_range(f64::EPSILON..1.0);
        let v: f64 = r.random_range(0.0..1.0);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    #[test]
    fn line_fit_recovers_an_exact_line_and_reports_scatter() {
        let mut f = LineFit::default();
        for i in 0..1000 {
            let x = ((i as f64) * 0.37).sin() * 1e-3;
            f.add(x, 1.25 * x + 0.1);
        }
        let s = f.solve().unwrap();
        assert!(
            (s.gain - 1.25).abs() < 1e-12 && (s.offset - 0.1).abs() < 1e-14,
            "{s:?}"
        );
        assert!(s.gain_error < 1e-8, "{}", s.gain_error);
        // Period of sin(0.37 i): 2π/0.37 samples (rms(Δx)/rms(x) = 2 sin(0.185)).
        let want = std::f64::consts::TAU / (2.0 * (0.185f64).sin());
        assert!(
            (s.template_period / want - 1.0).abs() < 1e-2,
            "{}",
            s.template_period
        );
        // Alternating ±σ scatter: the reported error is σ / √Σ(x − x̄)².
        let mut f = LineFit::default();
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i as f64) * 0.37).sin() * 1e-3)
            .collect();
        for (i, &x) in xs.iter().enumerate() {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            f.add(x, 1.25 * x + 0.1 + 1e-4 * sign);
        }
        let mean = xs.iter().sum::<f64>() / 1000.0;
        let sxx: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        let s = f.solve().unwrap();
        let expected = 1e-4 / sxx.sqrt();
        assert!(
            (s.gain_error / expected - 1.0).abs() < 0.01,
            "{} vs {expected}",
            s.gain_error
        );
        assert!((s.gain - 1.25).abs() < 3.0 * expected, "{s:?}");
        let mut f = LineFit::default();
        for i in 0..3 {
            f.add(1.0, i as f64);
        }
        assert!(f.solve().is_none(), "constant template");
    }

    /// Fits `y = g·t + b + sky + noise` over `periods` periods of a sinusoidal template and
    /// returns (fitted gain, error).
    fn fit_with(sky_amp: f64, sky_phase: f64, noise: f64, seed: u64) -> (f64, GainError) {
        let period = 2000.0;
        let n = 20_000;
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let w = std::f64::consts::TAU / period;
        let data: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let ph = w * i as f64;
                let t = 1e-3 * ph.cos();
                // Sky: harmonic 1 at a phase to the template, plus harmonic 3.
                let sky = sky_amp * ((ph + sky_phase).cos() + 0.5 * (3.0 * ph + 1.0).cos());
                (t, 2.0 * (t + sky + noise * gauss(&mut r)) + 0.3)
            })
            .collect();
        let mut f = LineFit::default();
        for &(t, y) in &data {
            f.add(t, y);
        }
        let s = f.solve().unwrap();
        let mut st = ResidualStats::new(s.block_len());
        for &(t, y) in &data {
            st.add(y - s.gain * t - s.offset);
        }
        (s.gain, st.gain_error(&s))
    }

    #[test]
    fn white_residuals_give_the_white_error() {
        let mut pulls = Vec::new();
        let mut false_alarms = 0;
        for seed in 0..200 {
            let (g, e) = fit_with(0.0, 0.0, 1e-3, seed);
            if e.sky > 0.0 {
                false_alarms += 1;
            }
            pulls.push((g - 2.0) / e.total);
            // Noise per sample in y units: 2·1e-3.
            assert!((e.noise_rms / 2e-3 - 1.0).abs() < 0.05, "{e:?}");
        }
        assert!(false_alarms <= 2, "{false_alarms} false excesses in 200");
        let var = pulls.iter().map(|p| p * p).sum::<f64>() / pulls.len() as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.15, "pull σ {}", var.sqrt());
    }

    #[test]
    fn an_unmodelled_sky_is_seen_and_its_bias_covered() {
        let mut worst: f64 = 0.0;
        for (k, phase) in [0.3f64, 1.0, 2.0, 2.8, 4.0, 5.5].iter().enumerate() {
            // Sky 5 % of the template, noise 10 % per sample: bias ≈ 0.05·cos(phase)·g.
            let (g, e) = fit_with(5e-5, *phase, 1e-4, k as u64);
            let bias = g - 2.0;
            assert!(e.sky > 10.0 * e.white, "{e:?}");
            assert!(bias.abs() < 2.0 * e.total, "{phase}: bias {bias} vs {e:?}");
            // The white error alone does not cover it.
            worst = worst.max(bias.abs() / e.white);
        }
        assert!(worst > 20.0, "{worst}");
    }

    #[test]
    fn calibrate_samples_flags_non_finite_values() {
        let (mut out, mut fl) = (Vec::new(), Vec::new());
        let c = Calibration {
            gain: 2.0,
            offset: 1.0,
        };
        c.apply(
            &[3.0, f64::NAN, 5.0],
            &[0, 1, 2],
            &[0.5, 0.0, 1.0],
            0x80,
            &mut out,
            &mut fl,
        );
        assert_eq!(out, vec![0.5, 0.0, 1.0]);
        assert_eq!(fl, vec![0, 0x81, 2]);
    }

    #[test]
    fn batched_selection_and_residuals_equal_the_per_sample_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 3001;
        let raw: Vec<f64> = (0..n)
            .map(|k| match k % 97 {
                3 => f64::NAN,
                50 => f64::INFINITY,
                _ => 2.0 * gauss(&mut rng) + 1.0,
            })
            .collect();
        let flags: Vec<u8> = (0..n).map(|k| u8::from(k % 13 == 4)).collect();
        let template: Vec<f64> = (0..n)
            .map(|k| {
                if k % 31 == 7 {
                    f64::NAN
                } else {
                    (k as f64 * 0.01).sin()
                }
            })
            .collect();
        let good: Vec<usize> = (0..n)
            .filter(|&k| flags[k] == 0 && raw[k].is_finite() && template[k].is_finite())
            .collect();
        assert!(good.len() > n / 2 && good.len() < n);
        let (mut xs, mut ys) = (vec![9.0], Vec::new());
        fit_points(&raw, &flags, &template, &mut xs, &mut ys);
        assert_eq!(xs, good.iter().map(|&k| template[k]).collect::<Vec<_>>());
        assert_eq!(ys, good.iter().map(|&k| raw[k]).collect::<Vec<_>>());
        let cal = Calibration {
            gain: 1.7,
            offset: -0.3,
        };
        let mut rs = vec![1.0; 5];
        cal.fit_residuals(&raw, &flags, &template, &mut rs);
        let expected: Vec<f64> = good
            .iter()
            .map(|&k| raw[k] - cal.gain * template[k] - cal.offset)
            .collect();
        assert_eq!(rs, expected);
        // Residual statistics: batches of any size give the per-residual sums bit for bit.
        let mut one = ResidualStats::new(40);
        for &r in &rs {
            one.add(r);
        }
        let mut batched = ResidualStats::new(40);
        let cuts = [0, 1, 1, 39, 41, 200, 1000, rs.len()];
        for w in cuts.windows(2) {
            batched.add_batch(&rs[w[0]..w[1]]);
        }
        assert_eq!(batched.means, one.means);
        assert_eq!(
            (
                batched.n,
                batched.n_diff,
                batched.diff_sq,
                batched.block_sum
            ),
            (one.n, one.n_diff, one.diff_sq, one.block_sum)
        );
        assert_eq!((batched.prev, batched.block_n), (one.prev, one.block_n));
    }
}
