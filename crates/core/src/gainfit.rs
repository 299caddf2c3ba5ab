//! Gain fits of a timestream against a template, and an error that includes what the template
//! leaves unexplained.
//!
//! [`LineFit`] streams the least-squares line `y = g·x + b`. Its classical error assumes white
//! residuals; a sky (or 1/f noise) that the template does not model leaves a residual that is
//! correlated on the template's scales and biases `g` beyond that error. [`ResidualStats`]
//! streams the fitted residuals in sample order and splits the error into
//!
//! - a **white** part, from first differences of consecutive residuals (`σ² = ⟨Δr²⟩/2`, blind
//!   to anything smooth), giving `σ_white = σ / √Σ(x − x̄)²`;
//! - a **correlated** part. The residuals are averaged in blocks of `B` samples and the centred
//!   template summed over the same blocks (`T_k`). The bias `Σ(x − x̄)·n / Σ(x − x̄)²` of a
//!   correlated noise `n` has variance `Σ_{k,l} T_k T_l C(k − l) / (Σ(x − x̄)²)²`, with `C` the
//!   block means' autocovariance, estimated from the residual with a Bartlett lag window over
//!   one template period. The fit removed the residual's component along the template, so the
//!   component along the template's quadrature (the centred difference of `T`), which a signal
//!   of random phase shares equally, counts too when it is beyond white noise (3σ). The
//!   white-noise part of both is subtracted; `σ_sky` is the root of what remains.
//!
//! The reported error is `√(σ_white² + σ_sky²)`: an expectation over phases (a sky in phase
//! with the template hides in the gain). The block length `B` is a twentieth of the template's
//! characteristic period `2π·rms(x − x̄)/rms(Δx)`, so the blocks resolve the template's scale
//! and average the white noise down. The smooth excess's RMS (block-mean variance beyond the
//! `σ²/B` of white noise, when significant at 4σ) is reported as well.

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
    /// Mean of the template over the fitted points, `x̄`.
    pub template_mean: f64,
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
            template_mean: self.mx,
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
/// differences (white noise), block means of the residual and block sums of the centred
/// template (correlated noise and smooth excess).
#[derive(Debug, Clone, Default)]
pub struct ResidualStats {
    block: usize,
    template_mean: f64,
    n: u64,
    prev: Option<f64>,
    diff_sq: f64,
    n_diff: u64,
    block_sum: f64,
    template_sum: f64,
    block_n: usize,
    means: Vec<f64>,
    template_sums: Vec<f64>,
}

/// The gain error of a fit, split into its white and correlated parts (see the module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GainError {
    /// `√(white² + sky²)`: the error to quote.
    pub total: f64,
    /// From the white-noise level alone.
    pub white: f64,
    /// From the residual's correlations on the template's scales beyond white noise: the
    /// unmodelled sky and low-frequency noise (0 when there are fewer than 3 blocks).
    pub sky: f64,
    /// White noise per sample, in the units of `y`.
    pub noise_rms: f64,
    /// RMS of the smooth excess per sample, in the units of `y` (0 when not significant).
    pub excess_rms: f64,
}

impl ResidualStats {
    /// Statistics with residual blocks of `block` samples (at least 1), for a fit whose
    /// template has mean `template_mean` ([`LineSolution::template_mean`]).
    pub fn new(block: usize, template_mean: f64) -> Self {
        Self {
            block: block.max(1),
            template_mean,
            ..Self::default()
        }
    }

    /// Adds the next point: its template value `x` and fitted residual `r`.
    #[inline]
    pub fn add(&mut self, x: f64, r: f64) {
        self.n += 1;
        if let Some(p) = self.prev {
            self.diff_sq += (r - p) * (r - p);
            self.n_diff += 1;
        }
        self.prev = Some(r);
        self.block_sum += r;
        self.template_sum += x - self.template_mean;
        self.block_n += 1;
        if self.block_n == self.block {
            self.close_block();
        }
    }

    fn close_block(&mut self) {
        self.means.push(self.block_sum / self.block as f64);
        self.template_sums.push(self.template_sum);
        self.block_sum = 0.0;
        self.template_sum = 0.0;
        self.block_n = 0;
    }

    /// Adds the points with template values `xs` and residuals `rs` in order: the same sums,
    /// in the same order, as [`Self::add`] per point (bit for bit), without a branch per
    /// point. Lengths must match (checked by assert).
    pub fn add_batch(&mut self, xs: &[f64], rs: &[f64]) {
        assert_eq!(
            xs.len(),
            rs.len(),
            "ResidualStats::add_batch: length mismatch"
        );
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
        let mut at = 0;
        while at < rs.len() {
            let take = (self.block - self.block_n).min(rs.len() - at);
            let (mut sum, mut tsum) = (self.block_sum, self.template_sum);
            for (&x, &r) in xs[at..at + take].iter().zip(&rs[at..at + take]) {
                sum += r;
                tsum += x - self.template_mean;
            }
            self.block_sum = sum;
            self.template_sum = tsum;
            self.block_n += take;
            if self.block_n == self.block {
                self.close_block();
            }
            at += take;
        }
    }

    /// The gain error of `fit` (whose points were added): the white part from the first
    /// differences; the correlated part from the residual's block-mean autocovariance,
    /// lag-windowed over one template period and projected on the template's block sums.
    pub fn gain_error(&self, fit: &LineSolution) -> GainError {
        let noise_var = if self.n_diff > 0 {
            self.diff_sq / (2.0 * self.n_diff as f64)
        } else {
            0.0
        };
        let white = (noise_var / fit.sxx).sqrt();
        let nb = self.means.len();
        let (mut excess_var, mut sky) = (0.0, 0.0);
        if nb >= 3 {
            let mean = self.means.iter().sum::<f64>() / nb as f64;
            let centred: Vec<f64> = self.means.iter().map(|m| m - mean).collect();
            let var = centred.iter().map(|c| c * c).sum::<f64>() / (nb - 1) as f64;
            let expected = noise_var / self.block as f64;
            // Standard error of a sample variance of nb Gaussian means: √(2/(nb − 1)).
            let threshold = expected * (1.0 + 4.0 * (2.0 / (nb - 1) as f64).sqrt());
            if var > threshold {
                excess_var = var - expected;
            }
            let per_period = (fit.template_period / self.block as f64).round();
            let max_lag = (per_period.clamp(1.0, nb as f64) as usize).min(nb - 1);
            let projected = projected_variance(&centred, &self.template_sums, max_lag);
            let quadrature = quadrature_projection(&centred, &self.template_sums);
            let white_part = expected * self.template_sums.iter().map(|t| t * t).sum::<f64>();
            // The quadrature counts only where white noise cannot explain it (3σ).
            let quadrature_var = quadrature * quadrature;
            let quadrature_var = if quadrature_var > 9.0 * white_part {
                quadrature_var
            } else {
                0.0
            };
            let bias_var = projected.max(quadrature_var) - white_part;
            sky = bias_var.max(0.0).sqrt() / fit.sxx;
        }
        GainError {
            total: white.hypot(sky),
            white,
            sky,
            noise_rms: noise_var.sqrt(),
            excess_rms: excess_var.sqrt(),
        }
    }
}

/// `Σ_k Q_k m_k`: the residual block means `centred` projected on the template's quadrature
/// `Q` (the centred difference of the block sums `T`, scaled to the norm of `T`). The fit
/// removed the residual's component along `T` but not along `Q`; for an unmodelled signal of
/// random phase on the template's scale the two projections have the same expected square.
fn quadrature_projection(centred: &[f64], template_sums: &[f64]) -> f64 {
    let nb = template_sums.len();
    if nb < 3 {
        return 0.0;
    }
    let slope = |k: usize| (template_sums[k + 1] - template_sums[k - 1]) / 2.0;
    let slope_norm = (1..nb - 1).map(|k| slope(k) * slope(k)).sum::<f64>();
    if slope_norm <= 0.0 {
        return 0.0;
    }
    let norm = template_sums.iter().map(|t| t * t).sum::<f64>();
    let scale = (norm / slope_norm).sqrt();
    (1..nb - 1).map(|k| slope(k) * centred[k]).sum::<f64>() * scale
}

/// `Σ_{k,l} T_k T_l Ĉ(k − l)`: the variance of `Σ_k T_k ν_k` for block means `ν` whose
/// autocovariance `Ĉ` is estimated from `centred` (biased estimator, Bartlett lag window up to
/// `max_lag`).
fn projected_variance(centred: &[f64], template_sums: &[f64], max_lag: usize) -> f64 {
    let nb = centred.len();
    let mut total = 0.0;
    for lag in 0..=max_lag.min(nb.saturating_sub(1)) {
        let cov = centred[..nb - lag]
            .iter()
            .zip(&centred[lag..])
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / nb as f64;
        let pairs = template_sums[..nb - lag]
            .iter()
            .zip(&template_sums[lag..])
            .map(|(a, b)| a * b)
            .sum::<f64>();
        let window = 1.0 - lag as f64 / (max_lag + 1) as f64;
        let both_sides = if lag == 0 { 1.0 } else { 2.0 };
        total += both_sides * window * cov * pairs;
    }
    total
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

    /// The samples that enter a fit (flag 0, finite raw value and template; see
    /// [`fit_points`]), in order: their template values into `xs` and their fit residuals
    /// `raw − gain·template − offset` into `residuals` (both cleared first). Branch-free like
    /// [`fit_points`]; lengths must match (checked by assert).
    pub fn fit_residuals(
        &self,
        raw: &[f64],
        flags: &[u8],
        template: &[f64],
        xs: &mut Vec<f64>,
        residuals: &mut Vec<f64>,
    ) {
        assert!(
            raw.len() == flags.len() && raw.len() == template.len(),
            "fit_residuals: length mismatch"
        );
        xs.clear();
        residuals.clear();
        xs.resize(raw.len(), 0.0);
        residuals.resize(raw.len(), 0.0);
        let mut kept = 0;
        for ((&r, &f), &t) in raw.iter().zip(flags).zip(template) {
            xs[kept] = t;
            residuals[kept] = r - self.gain * t - self.offset;
            kept += usize::from(fit_sample(r, f, t));
        }
        xs.truncate(kept);
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

    /// Fits `y = g·t + b + sky + noise` over 10 periods of a sinusoidal template (white noise
    /// `noise`, plus a random walk of step `walk` per sample: low-frequency noise) and
    /// returns (fitted gain, error).
    fn fit_with(
        sky_amp: f64,
        sky_phase: f64,
        noise: f64,
        walk: f64,
        seed: u64,
    ) -> (f64, GainError) {
        let period = 2000.0;
        let n = 20_000;
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let w = std::f64::consts::TAU / period;
        let mut drift = 0.0;
        let data: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let ph = w * i as f64;
                let t = 1e-3 * ph.cos();
                // Sky: harmonic 1 at a phase to the template, plus harmonic 3.
                let sky = sky_amp * ((ph + sky_phase).cos() + 0.5 * (3.0 * ph + 1.0).cos());
                drift += walk * gauss(&mut r);
                (t, 2.0 * (t + sky + drift + noise * gauss(&mut r)) + 0.3)
            })
            .collect();
        let mut f = LineFit::default();
        for &(t, y) in &data {
            f.add(t, y);
        }
        let s = f.solve().unwrap();
        let mut st = ResidualStats::new(s.block_len(), s.template_mean);
        for &(t, y) in &data {
            st.add(t, y - s.gain * t - s.offset);
        }
        (s.gain, st.gain_error(&s))
    }

    fn rms(values: &[f64]) -> f64 {
        (values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64).sqrt()
    }

    #[test]
    fn white_residuals_give_the_white_error() {
        let mut pulls = Vec::new();
        let mut inflated = 0;
        for seed in 0..200 {
            let (g, e) = fit_with(0.0, 0.0, 1e-3, 0.0, seed);
            if e.total > 1.5 * e.white {
                inflated += 1;
            }
            pulls.push((g - 2.0) / e.total);
            // Noise per sample in y units: 2·1e-3.
            assert!((e.noise_rms / 2e-3 - 1.0).abs() < 0.05, "{e:?}");
        }
        assert!(
            inflated <= 6,
            "{inflated} of 200 errors inflated beyond 1.5× white"
        );
        let sd = rms(&pulls);
        assert!((sd - 1.0).abs() < 0.15, "pull σ {sd}");
    }

    #[test]
    fn low_frequency_noise_is_in_the_error() {
        let (mut pulls, mut white_pulls, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for seed in 0..120 {
            let (g, e) = fit_with(0.0, 0.0, 1e-3, 4e-6, seed);
            pulls.push((g - 2.0) / e.total);
            white_pulls.push((g - 2.0) / e.white);
            ratios.push(e.total / e.white);
        }
        // The white error alone understates the scatter; the total error matches it.
        let (sd, white_sd) = (rms(&pulls), rms(&white_pulls));
        assert!(white_sd > 1.6, "white pull σ {white_sd}");
        assert!((0.75..1.35).contains(&sd), "pull σ {sd}, white {white_sd}");
        ratios.sort_by(f64::total_cmp);
        assert!(ratios[60] > 1.4, "median total/white {}", ratios[60]);
    }

    #[test]
    fn an_unmodelled_sky_is_seen_and_its_bias_estimated() {
        let (mut biases, mut errors, mut ratios, mut worst) =
            (Vec::new(), Vec::new(), Vec::new(), 0.0f64);
        for k in 0..24 {
            // Sky 5 % of the template, noise 10 % per sample: bias ≈ 0.05·cos(phase)·g.
            let phase = std::f64::consts::TAU * (k as f64 + 0.5) / 24.0;
            let (g, e) = fit_with(5e-5, phase, 1e-4, 0.0, k);
            let bias = g - 2.0;
            ratios.push(e.sky / e.white);
            biases.push(bias);
            errors.push(e.total);
            // The white error alone does not cover it.
            worst = worst.max(bias.abs() / e.white);
        }
        // Over the phases, the error is the bias's scale (its random-phase expectation; a sky
        // in phase with the template hides in the gain, so single pulls run high there).
        let scale = rms(&biases) / rms(&errors);
        assert!(
            (0.6..1.6).contains(&scale),
            "bias/error {scale}: {biases:?} {errors:?}"
        );
        ratios.sort_by(f64::total_cmp);
        assert!(ratios[12] > 10.0, "sky part seen: {ratios:?}");
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
        let (mut xs, mut rs) = (vec![2.0; 3], vec![1.0; 5]);
        cal.fit_residuals(&raw, &flags, &template, &mut xs, &mut rs);
        assert_eq!(xs, good.iter().map(|&k| template[k]).collect::<Vec<_>>());
        let expected: Vec<f64> = good
            .iter()
            .map(|&k| raw[k] - cal.gain * template[k] - cal.offset)
            .collect();
        assert_eq!(rs, expected);
        // Residual statistics: batches of any size give the per-residual sums bit for bit.
        let mut one = ResidualStats::new(40, 0.1);
        for (&x, &r) in xs.iter().zip(&rs) {
            one.add(x, r);
        }
        let mut batched = ResidualStats::new(40, 0.1);
        let cuts = [0, 1, 1, 39, 41, 200, 1000, rs.len()];
        for w in cuts.windows(2) {
            batched.add_batch(&xs[w[0]..w[1]], &rs[w[0]..w[1]]);
        }
        assert_eq!(batched.means, one.means);
        assert_eq!(batched.template_sums, one.template_sums);
        assert_eq!(
            (
                batched.n,
                batched.n_diff,
                batched.diff_sq,
                batched.block_sum
            ),
            (one.n, one.n_diff, one.diff_sq, one.block_sum)
        );
        assert_eq!(batched.template_sum, one.template_sum);
        assert_eq!((batched.prev, batched.block_n), (one.prev, one.block_n));
    }
}
