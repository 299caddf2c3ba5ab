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
        let (mut sx, mut sy) = (0.0, 0.0);
        for (&x, &y) in xs.iter().zip(ys) {
            sx += x;
            sy += y;
        }
        let (bx, by) = (sx / m, sy / m);
        let (mut bxx, mut bxy, mut byy, mut dxx) = (0.0, 0.0, 0.0, 0.0);
        for (&x, &y) in xs.iter().zip(ys) {
            let (dx, dy) = (x - bx, y - by);
            bxx += dx * dx;
            bxy += dx * dy;
            byy += dy * dy;
        }
        for w in xs.windows(2) {
            dxx += (w[1] - w[0]) * (w[1] - w[0]);
        }
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
        debug_assert!(raw.len() == flags.len() && raw.len() == subtract.len());
        out.clear();
        out_flags.clear();
        for ((&v, &f), &s) in raw.iter().zip(flags).zip(subtract) {
            if v.is_finite() {
                out.push((v - self.offset) / self.gain - s);
                out_flags.push(f);
            } else {
                out.push(0.0);
                out_flags.push(f | nonfinite_flag);
            }
        }
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
}
