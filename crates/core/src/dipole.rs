//! The relativistic CMB dipole seen by a moving observer.
//!
//! An observer moving at `β` through a black body of temperature `T0` sees, in apparent
//! direction `n̂` (unit vector towards the sky, in the observer's frame), the thermodynamic
//! temperature `T(n̂) = T0 / (γ (1 − β·n̂))`. [`dipole`] returns `ΔT = T − T0` in kelvin,
//! evaluated without cancellation. In terms of the rest-frame direction `n̂₀` of the same photons
//! (after [`crate::aberration::to_rest`]) the same value is `T0 (γ (1 + β·n̂₀) − 1)`
//! ([`dipole_rest_direction`]).
//!
//! Along the velocity this is `T0 (√((1+β)/(1−β)) − 1) = T0 (β + β²/2 + β³/2 + …)`; the
//! Planck amplitude `A = 3362.08 µK` is the first-order coefficient `T0·β`.
//!
//! A detector that measures intensity in a band centred on `ν` and is calibrated to K_CMB with
//! the black-body derivative sees the second-order term scaled by `q(ν) = (x/2)·coth(x/2)`,
//! `x = hν/(k T0)`: the **kinematic quadrupole** adds `T0 (q(ν) − 1)(β·n̂)²` to the thermodynamic
//! dipole above (the definition of TOAST's `dipole(..., freq=ν)`, whose second-order expansion
//! is `T0 (β·n̂ + q (β·n̂)²)`). [`quadrupole_factor`] gives `q − 1`; [`DipoleModel`] evaluates the
//! whole model (solar + orbital velocity, aberration, quadrupole) along stored directions.

use crate::aberration::{Beta, C_KM_S, dot3, to_apparent};
use crate::frames;
use crate::quat::{self, Quat};
use crate::trig;

/// Planck constant (J s), exact in the SI since 2019.
pub const PLANCK_H: f64 = 6.626_070_15e-34;
/// Boltzmann constant (J/K), exact in the SI since 2019.
pub const BOLTZMANN_K: f64 = 1.380_649e-23;

/// CMB monopole temperature (K), Fixsen 2009.
pub const T_CMB: f64 = 2.72548;

/// Solar dipole amplitude `T0·β` (K), Planck 2018 (I, table 3).
pub const SOLAR_DIPOLE_AMPLITUDE: f64 = 3362.08e-6;
/// Galactic longitude of the solar dipole (deg), Planck 2018.
pub const SOLAR_DIPOLE_L_DEG: f64 = 264.021;
/// Galactic latitude of the solar dipole (deg), Planck 2018.
pub const SOLAR_DIPOLE_B_DEG: f64 = 48.253;

/// `ΔT = T0 / (γ (1 − β·n̂)) − T0` (K) for the apparent unit direction `n` and velocity `beta`.
///
/// ```
/// use skypipe_core::aberration::Beta;
/// use skypipe_core::dipole::{dipole, T_CMB};
/// let beta = Beta::from_km_s([369.816, 0.0, 0.0]).unwrap();
/// let dt = dipole([1.0, 0.0, 0.0], &beta, T_CMB);
/// assert!((dt * 1e6 - 3364.156).abs() < 0.001); // 3362.08 µK to first order, + T0·β²/2 + …
/// ```
#[inline]
pub fn dipole(n: [f64; 3], beta: &Beta, t0: f64) -> f64 {
    // 1/(γ(1−x)) − 1 = (γx − (γ−1)) / (γ(1−x)), x = β·n.
    let x = dot3(beta.vector(), n);
    let g = beta.gamma();
    t0 * (g * x - beta.gamma_minus_one()) / (g * (1.0 - x))
}

/// `ΔT = T0 (γ (1 + β·n̂₀) − 1)` (K) for the **rest-frame** unit direction `n0` of the photons;
/// equal to [`dipole`] at the corresponding apparent direction.
#[inline]
pub fn dipole_rest_direction(n0: [f64; 3], beta: &Beta, t0: f64) -> f64 {
    let x = dot3(beta.vector(), n0);
    t0 * (beta.gamma_minus_one() + beta.gamma() * x)
}

/// [`dipole`] for every direction of `dirs`, into `out` (lengths must match; checked by assert).
pub fn dipole_batch(dirs: &[[f64; 3]], beta: &Beta, t0: f64, out: &mut [f64]) {
    assert_eq!(dirs.len(), out.len(), "dipole_batch: length mismatch");
    for (n, o) in dirs.iter().zip(out.iter_mut()) {
        *o = dipole(*n, beta, t0);
    }
}

/// Solar velocity with respect to the CMB (km/s) in galactic coordinates, from the Planck 2018
/// dipole: speed `c·A/T0` (≈ 369.816 km/s) towards `(l, b) = (264.021°, 48.253°)`.
pub fn solar_velocity_galactic_km_s() -> [f64; 3] {
    SolarVelocity::planck_2018().galactic_km_s()
}

/// The solar system's velocity with respect to the CMB: a speed and a galactic direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolarVelocity {
    /// Speed (km/s).
    pub speed_km_s: f64,
    /// Galactic longitude of the direction of motion (deg).
    pub l_deg: f64,
    /// Galactic latitude of the direction of motion (deg).
    pub b_deg: f64,
}

impl SolarVelocity {
    /// Planck 2018: `c·A/T0` with `A` = [`SOLAR_DIPOLE_AMPLITUDE`], `T0` = [`T_CMB`]
    /// (≈ 369.816 km/s), towards ([`SOLAR_DIPOLE_L_DEG`], [`SOLAR_DIPOLE_B_DEG`]).
    pub fn planck_2018() -> Self {
        Self::from_amplitude(
            SOLAR_DIPOLE_AMPLITUDE,
            T_CMB,
            SOLAR_DIPOLE_L_DEG,
            SOLAR_DIPOLE_B_DEG,
        )
    }

    /// The velocity whose first-order dipole amplitude `T0·β` is `amplitude_k` (K) for the
    /// monopole `t0` (K): speed `c·amplitude/t0`.
    pub fn from_amplitude(amplitude_k: f64, t0: f64, l_deg: f64, b_deg: f64) -> Self {
        Self {
            speed_km_s: C_KM_S * amplitude_k / t0,
            l_deg,
            b_deg,
        }
    }

    /// The velocity vector (km/s) in galactic coordinates.
    pub fn galactic_km_s(&self) -> [f64; 3] {
        frames::lonlat_deg_to_vec(self.l_deg, self.b_deg).map(|c| c * self.speed_km_s)
    }
}

/// `q(ν) − 1` of the kinematic quadrupole, `q = (x/2)·coth(x/2)`, `x = hν/(k T0)`, for the
/// band centre `freq_hz` (Hz) and the monopole `t0` (K); 0 at zero frequency. About 0.023 at
/// 30 GHz, 0.52 at 150 GHz, 3.8 at 545 GHz (T0 = 2.72548 K).
pub fn quadrupole_factor(freq_hz: f64, t0: f64) -> f64 {
    let x = PLANCK_H * freq_hz / (BOLTZMANN_K * t0);
    let h = 0.5 * x;
    if h.abs() < 0.1 {
        // h coth h − 1 = h²/3 − h⁴/45 + 2h⁶/945 − h⁸/4725 + 2h¹⁰/93555 − …: no cancellation
        // near 0; the next term is below 1e-15 of the sum for |h| < 0.1.
        let h2 = h * h;
        h2 * (1.0 / 3.0
            + h2 * (-1.0 / 45.0 + h2 * (2.0 / 945.0 + h2 * (-1.0 / 4725.0 + h2 * (2.0 / 93555.0)))))
    } else {
        h / h.tanh() - 1.0
    }
}

/// The dipole seen along stored directions: the relativistic dipole of the solar plus (when
/// enabled) the observer's orbital velocity, with an optional kinematic quadrupole.
///
/// Directions are given in the *output* frame (that of the stored pointing); orbital velocities
/// in the *attitude* frame, rotated by `to_output`. When the directions were corrected for
/// aberration (rest-frame directions), the apparent direction is recovered first with the
/// orbital velocity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DipoleModel {
    to_output: Quat,
    solar: [f64; 3],
    orbital: bool,
    aberration: bool,
    t_cmb: f64,
    quadrupole: f64,
}

impl DipoleModel {
    /// A model with the rotation `to_output` (attitude frame → output frame), the solar velocity
    /// `solar_km_s` already in the output frame (zeros: no solar dipole), the orbital velocity
    /// included when `orbital`, stored directions aberration-corrected when `aberration`, the
    /// monopole `t_cmb` (K) and no quadrupole.
    pub fn new(
        to_output: Quat,
        solar_km_s: [f64; 3],
        orbital: bool,
        aberration: bool,
        t_cmb: f64,
    ) -> Self {
        Self {
            to_output,
            solar: solar_km_s,
            orbital,
            aberration,
            t_cmb,
            quadrupole: 0.0,
        }
    }

    /// The same model with the kinematic quadrupole `T0 (q − 1)(β·n̂)²`, `q_minus_one` from
    /// [`quadrupole_factor`] (0: none).
    pub fn with_quadrupole(self, q_minus_one: f64) -> Self {
        Self {
            quadrupole: q_minus_one,
            ..self
        }
    }

    /// The quadrupole coefficient `q − 1` (0 without quadrupole).
    pub fn quadrupole(&self) -> f64 {
        self.quadrupole
    }

    /// `ΔT` (K) along the unit direction `n` (output frame) for the orbital velocity `v_km_s`
    /// (attitude frame): the apparent direction is recovered from an aberration-corrected one,
    /// then the relativistic dipole of the total velocity applies, plus the quadrupole term.
    #[inline]
    pub fn delta_t(&self, n: [f64; 3], v_km_s: [f64; 3]) -> f64 {
        let v = quat::rotate(self.to_output, v_km_s);
        let n_app = if self.aberration {
            to_apparent(n, &Beta::from_km_s(v).unwrap_or(Beta::zero()))
        } else {
            n
        };
        let total = if self.orbital {
            [0, 1, 2].map(|i| self.solar[i] + v[i])
        } else {
            self.solar
        };
        let beta = Beta::from_km_s(total).unwrap_or(Beta::zero());
        let dt = dipole(n_app, &beta, self.t_cmb);
        if self.quadrupole == 0.0 {
            dt
        } else {
            let x = dot3(beta.vector(), n_app);
            dt + self.t_cmb * self.quadrupole * x * x
        }
    }
}

/// Samples between two exact evaluations of the velocity terms in
/// [`DipoleModel::delta_t_chunk`]; in between they are interpolated linearly.
pub const VELOCITY_KNOT_SPACING: usize = 256;

/// The velocity terms of [`DipoleModel::delta_t`] at one sample: the orbital `β` (output frame)
/// with `γ` and `γ²/(γ+1)` (for aberration), and the total `β` with `γ` and `γ − 1`.
#[derive(Debug, Clone, Copy)]
struct VelocityTerms([f64; 10]);

impl VelocityTerms {
    fn new(model: &DipoleModel, v_km_s: [f64; 3]) -> Self {
        let v = quat::rotate(model.to_output, v_km_s);
        let orbital = Beta::from_km_s(v).unwrap_or(Beta::zero());
        let total = if model.orbital {
            [0, 1, 2].map(|i| model.solar[i] + v[i])
        } else {
            model.solar
        };
        let total = Beta::from_km_s(total).unwrap_or(Beta::zero());
        let (o, t) = (orbital.vector(), total.vector());
        Self([
            o[0],
            o[1],
            o[2],
            orbital.gamma(),
            orbital.gamma() * orbital.gamma() / (orbital.gamma() + 1.0),
            t[0],
            t[1],
            t[2],
            total.gamma(),
            total.gamma_minus_one(),
        ])
    }
}

impl DipoleModel {
    /// `scale·ΔT` (K) for every sample of a chunk, into `out` (resized to the chunk): the
    /// direction of sample `k` is `(θ, φ) = (theta[k], phi[k])` (output frame), and
    /// `velocity_at(k)` gives its orbital velocity (km/s, attitude frame).
    ///
    /// The velocity terms (rotation to the output frame, `β`, `γ` of the orbital and total
    /// velocities) are evaluated exactly every [`VELOCITY_KNOT_SPACING`] samples and at the
    /// chunk's last sample, and interpolated linearly in between; `velocity_at` is called only
    /// there. For a piecewise-linear orbital velocity this differs from [`Self::delta_t`] per
    /// sample by rounding plus the curvature of the orbit across a knot interval: for 30 km/s
    /// on a 6.4-day circular orbit sampled at 180 Hz (57× a yearly orbit's curvature) below
    /// 1e-13 K (tested); `theta` and `phi` must have the same length.
    ///
    /// The per-sample loop has no branch and no call, so it vectorises: the direction comes
    /// from the polynomial [`trig::sin_cos`] (within 5e-16 of libm; libm's `sin_cos` is used
    /// instead for a chunk with an angle beyond [`trig::SIN_COS_MAX_ARG`]), and the aberrated
    /// direction's normalisation and the dipole share one division.
    pub fn delta_t_chunk(
        &self,
        theta: &[f64],
        phi: &[f64],
        velocity_at: impl Fn(usize) -> [f64; 3],
        scale: f64,
        out: &mut Vec<f64>,
    ) {
        assert_eq!(theta.len(), phi.len(), "delta_t_chunk: length mismatch");
        let n = theta.len();
        out.clear();
        out.resize(n, 0.0);
        if n == 0 {
            return;
        }
        let polynomial = trig::within_sin_cos_range(theta) && trig::within_sin_cos_range(phi);
        let kernel = match (polynomial, self.aberration, self.quadrupole != 0.0) {
            (true, true, true) => run_segment::<true, true, true>,
            (true, true, false) => run_segment::<true, true, false>,
            (true, false, true) => run_segment::<true, false, true>,
            (true, false, false) => run_segment::<true, false, false>,
            (false, true, true) => run_segment::<false, true, true>,
            (false, true, false) => run_segment::<false, true, false>,
            (false, false, true) => run_segment::<false, false, true>,
            (false, false, false) => run_segment::<false, false, false>,
        };
        let mut lo = 0;
        let mut a = VelocityTerms::new(self, velocity_at(0));
        loop {
            let hi = (lo + VELOCITY_KNOT_SPACING).min(n - 1);
            let b = if hi == lo {
                a
            } else {
                VelocityTerms::new(self, velocity_at(hi))
            };
            let slope: [f64; 10] = std::array::from_fn(|i| b.0[i] - a.0[i]);
            let inv_span = if hi == lo {
                0.0
            } else {
                1.0 / (hi - lo) as f64
            };
            let last = if hi == n - 1 { hi + 1 } else { hi };
            let terms = SegmentTerms {
                start: a.0,
                slope,
                inv_span,
                t_cmb: self.t_cmb,
                quadrupole: self.t_cmb * self.quadrupole,
                scale,
            };
            kernel(&theta[lo..last], &phi[lo..last], &terms, &mut out[lo..last]);
            if hi == n - 1 {
                break;
            }
            lo = hi;
            a = b;
        }
    }
}

/// The constants of one knot interval of [`DipoleModel::delta_t_chunk`].
struct SegmentTerms {
    /// The velocity terms ([`VelocityTerms`]) at the interval's first sample.
    start: [f64; 10],
    /// Their change across the interval.
    slope: [f64; 10],
    /// `1 / (samples between the knots)` (0 for a one-sample chunk).
    inv_span: f64,
    /// `T0` (K).
    t_cmb: f64,
    /// `T0 (q − 1)` (K).
    quadrupole: f64,
    /// The factor applied to `ΔT`.
    scale: f64,
}

/// [`segment`] compiled for AVX2 when the processor has it (run-time check), else for the
/// baseline: the same operations in the same order (no fused multiply-add), so the same bits.
fn run_segment<const POLYNOMIAL: bool, const ABERRATION: bool, const QUADRUPOLE: bool>(
    theta: &[f64],
    phi: &[f64],
    terms: &SegmentTerms,
    out: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor supports AVX2 (checked just above).
        unsafe { segment_avx2::<POLYNOMIAL, ABERRATION, QUADRUPOLE>(theta, phi, terms, out) };
        return;
    }
    segment::<POLYNOMIAL, ABERRATION, QUADRUPOLE>(theta, phi, terms, out);
}

/// [`segment`] with AVX2 instructions (four samples per instruction instead of two).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn segment_avx2<const POLYNOMIAL: bool, const ABERRATION: bool, const QUADRUPOLE: bool>(
    theta: &[f64],
    phi: &[f64],
    terms: &SegmentTerms,
    out: &mut [f64],
) {
    segment::<POLYNOMIAL, ABERRATION, QUADRUPOLE>(theta, phi, terms, out);
}

/// One knot interval of [`DipoleModel::delta_t_chunk`]: velocity terms `start + u·slope` at
/// `u = i·inv_span`. `POLYNOMIAL` selects [`trig::sin_cos`] over libm's; `ABERRATION`
/// recovers the apparent direction `n = (d + k·β_o) / D`, `k = γ_o + γ_o²/(γ_o+1)·(d·β_o)`,
/// `D = γ_o (1 + d·β_o)`; with `X = β·(d + k·β_o)`, `β·n = X/D` and
/// `ΔT = T0 (γX − (γ−1)D) / (γ (D − X))`.
#[inline(always)]
fn segment<const POLYNOMIAL: bool, const ABERRATION: bool, const QUADRUPOLE: bool>(
    theta: &[f64],
    phi: &[f64],
    terms: &SegmentTerms,
    out: &mut [f64],
) {
    let (t0, quad, scale) = (terms.t_cmb, terms.quadrupole, terms.scale);
    let (a, slope, inv_span) = (&terms.start, &terms.slope, terms.inv_span);
    let sin_cos = |x: f64| {
        if POLYNOMIAL {
            trig::sin_cos(x)
        } else {
            x.sin_cos()
        }
    };
    let n = out.len().min(theta.len()).min(phi.len());
    let (theta, phi, out) = (&theta[..n], &phi[..n], &mut out[..n]);
    for (i, ((o, &th), &ph)) in out.iter_mut().zip(theta).zip(phi).enumerate() {
        // Chunks are at most a knot interval long, so `i` fits an i32 (exact in f64).
        let u = (i as i32) as f64 * inv_span;
        let c: [f64; 10] = std::array::from_fn(|j| a[j] + u * slope[j]);
        let (st, ct) = sin_cos(th);
        let (sp, cp) = sin_cos(ph);
        let d = [st * cp, st * sp, ct];
        let (x, den) = if ABERRATION {
            let nb = d[0] * c[0] + d[1] * c[1] + d[2] * c[2];
            let k = c[3] + c[4] * nb;
            let e = [d[0] + k * c[0], d[1] + k * c[1], d[2] + k * c[2]];
            (c[5] * e[0] + c[6] * e[1] + c[7] * e[2], c[3] * (1.0 + nb))
        } else {
            (c[5] * d[0] + c[6] * d[1] + c[7] * d[2], 1.0)
        };
        let g = c[8];
        let mut dt = t0 * (g * x - c[9] * den) / (g * (den - x));
        if QUADRUPOLE {
            let bn = x / den;
            dt += quad * bn * bn;
        }
        *o = scale * dt;
    }
}

/// Solar velocity with respect to the CMB (km/s) in J2000 mean ecliptic coordinates.
pub fn solar_velocity_ecliptic_km_s() -> [f64; 3] {
    let to_ecl = crate::quat::conj(frames::ecliptic_to_galactic());
    crate::quat::rotate(to_ecl, solar_velocity_galactic_km_s())
}

/// The observer's total velocity: solar (w.r.t. the CMB) plus orbital (w.r.t. the Sun), both in
/// km/s in the same frame. Added as vectors; the relativistic correction is `O(β_sun·β_orb)`
/// ≈ 1e-8 relative and is neglected.
pub fn total_beta(
    solar_km_s: [f64; 3],
    orbital_km_s: [f64; 3],
) -> Result<Beta, crate::aberration::BetaError> {
    Beta::from_km_s([0, 1, 2].map(|i| solar_km_s[i] + orbital_km_s[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V_SUN: f64 = 369.816; // km/s, Planck 2018 (c·A/T0)

    #[test]
    fn avx2_and_baseline_segments_give_the_same_bits() {
        let terms = SegmentTerms {
            start: std::array::from_fn(|i| 1e-4 * (i as f64 + 1.0)),
            slope: std::array::from_fn(|i| 1e-9 * (i as f64 - 4.0)),
            inv_span: 1.0 / 256.0,
            t_cmb: T_CMB,
            quadrupole: 0.5 * T_CMB,
            scale: 0.5,
        };
        let theta: Vec<f64> = (0..257).map(|k| 0.012 * k as f64).collect();
        let phi: Vec<f64> = (0..257).map(|k| 6.0 - 0.047 * k as f64).collect();
        let (mut base, mut fast) = (vec![0.0; 257], vec![0.0; 257]);
        segment::<true, true, true>(&theta, &phi, &terms, &mut base);
        run_segment::<true, true, true>(&theta, &phi, &terms, &mut fast);
        assert_eq!(base, fast);
        segment::<true, false, false>(&theta, &phi, &terms, &mut base);
        run_segment::<true, false, false>(&theta, &phi, &terms, &mut fast);
        assert_eq!(base, fast);
        assert!(base.iter().all(|v| v.is_finite() && *v != 0.0));
    }

    #[test]
    fn chunk_kernel_matches_per_sample_evaluation() {
        // A circular orbit at 30 km/s with a period of 1e8 samples (6.4 days at 180 Hz: 57×
        // the curvature of a yearly orbit), aberration and quadrupole on.
        let to_output = quat::from_axis_angle([0.3, -0.2, 1.0], 0.7).unwrap();
        let solar = solar_velocity_galactic_km_s();
        for (aberration, orbital, q) in [(true, true, 0.52), (false, true, 0.0), (true, false, 0.0)]
        {
            let model =
                DipoleModel::new(to_output, solar, orbital, aberration, T_CMB).with_quadrupole(q);
            let velocity_at = |k: usize| {
                let a = k as f64 * std::f64::consts::TAU / 1e8;
                [30.0 * a.cos(), 30.0 * a.sin(), 0.5]
            };
            for n in [1usize, 2, 255, 256, 257, 1000, 4097] {
                let theta: Vec<f64> = (0..n)
                    .map(|k| 0.1 + 3.0 * ((k as f64) * 0.37).sin().abs())
                    .collect();
                let phi: Vec<f64> = (0..n).map(|k| (k as f64) * 0.011 - 2.0).collect();
                let mut out = Vec::new();
                model.delta_t_chunk(&theta, &phi, velocity_at, 0.5, &mut out);
                assert_eq!(out.len(), n);
                for k in 0..n {
                    let (st, ct) = theta[k].sin_cos();
                    let (sp, cp) = phi[k].sin_cos();
                    let exact = 0.5 * model.delta_t([st * cp, st * sp, ct], velocity_at(k));
                    assert!(
                        (out[k] - exact).abs() < 1e-13,
                        "n {n} k {k}: {} vs {exact}",
                        out[k]
                    );
                }
            }
        }
    }

    #[test]
    fn planck_solar_dipole_speed() {
        let v = solar_velocity_galactic_km_s();
        let speed = dot3(v, v).sqrt();
        assert!((speed - V_SUN).abs() < 5e-4, "{speed}");
        // Direction (l, b) = (264.021°, 48.253°).
        let (l, b) = frames::vec_to_lonlat_deg(v.map(|c| c / speed));
        assert!((l - 264.021).abs() < 1e-10 && (b - 48.253).abs() < 1e-10);
        // Ecliptic direction: astropy 5.2.1 Galactic(264.021°, 48.253°) →
        // BarycentricMeanEcliptic = (171.668363250526°, −11.152104314908°)
        // (crates/core/scripts/astropy_ecliptic_galactic.py). 0.1″ = 2.8e-5°.
        let e = solar_velocity_ecliptic_km_s();
        assert!((dot3(e, e).sqrt() - speed).abs() < 1e-10);
        let (lon, lat) = frames::vec_to_lonlat_deg(e.map(|c| c / speed));
        assert!((lon - 171.668363250526).abs() < 3e-5, "{lon}");
        assert!((lat - -11.152104314908).abs() < 3e-5, "{lat}");
    }

    #[test]
    fn along_the_velocity_first_order_is_the_planck_amplitude() {
        let beta = Beta::from_km_s([0.0, 0.0, V_SUN]).unwrap();
        let b = V_SUN / C_KM_S;
        // First order T0·β = 3362.08 µK (the quoted amplitude).
        assert!((T_CMB * b * 1e6 - 3362.08).abs() < 0.005);
        // Exact: T0 (√((1+β)/(1−β)) − 1) = 3364.1559 µK (mpmath, 30 digits: 3364.155861…).
        let dt = dipole([0.0, 0.0, 1.0], &beta, T_CMB);
        let exact = T_CMB * (((1.0 + b) / (1.0 - b)).sqrt() - 1.0);
        assert!((dt - exact).abs() < 1e-15, "{dt} vs {exact}");
        assert!((dt * 1e6 - 3364.155861).abs() < 1e-6, "{}", dt * 1e6);
        // Beyond first order: T0 (β²/2 + β³/2 + …) = 2.0763 µK.
        assert!(((dt - T_CMB * b) * 1e6 - 2.07625).abs() < 1e-4);
    }

    #[test]
    fn opposite_and_perpendicular_directions() {
        let beta = Beta::from_km_s([0.0, V_SUN, 0.0]).unwrap();
        let b = V_SUN / C_KM_S;
        // Opposite: T0 (√((1−β)/(1+β)) − 1) = −3360.008484 µK (mpmath).
        let dt = dipole([0.0, -1.0, 0.0], &beta, T_CMB);
        let exact = T_CMB * (((1.0 - b) / (1.0 + b)).sqrt() - 1.0);
        assert!((dt - exact).abs() < 1e-15);
        assert!((dt * 1e6 + 3360.008484).abs() < 1e-6, "{}", dt * 1e6);
        // Perpendicular (apparent): T0 (1/γ − 1) = −T0 β²/2 − … = −2.0736868 µK (mpmath).
        // (Evaluating T0 (√(1 − β²) − 1) in f64 loses 8 digits to cancellation; compare with the
        // 30-digit value instead.)
        let dt = dipole([1.0, 0.0, 0.0], &beta, T_CMB);
        assert!(
            (dt * 1e6 + 2.073_686_769_981_741).abs() < 1e-14,
            "{}",
            dt * 1e6
        );
        // Perpendicular in the rest frame: T0 (γ − 1) = +2.0736883 µK (mpmath).
        let dt = dipole_rest_direction([1.0, 0.0, 0.0], &beta, T_CMB);
        assert!(
            (dt * 1e6 - 2.073_688_347_751_562).abs() < 1e-14,
            "{}",
            dt * 1e6
        );
    }

    #[test]
    fn zero_velocity_gives_zero() {
        assert_eq!(dipole([0.0, 0.6, 0.8], &Beta::zero(), T_CMB), 0.0);
        assert_eq!(
            dipole_rest_direction([0.0, 0.6, 0.8], &Beta::zero(), T_CMB),
            0.0
        );
    }

    #[test]
    fn batch_matches_scalar_and_total_velocity_adds() {
        let beta = total_beta(solar_velocity_ecliptic_km_s(), [0.0, 30.0, 0.0]).unwrap();
        let dirs = [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, -1.0]];
        let mut out = [0.0; 3];
        dipole_batch(&dirs, &beta, T_CMB, &mut out);
        for (n, o) in dirs.iter().zip(out) {
            assert_eq!(o, dipole(*n, &beta, T_CMB));
        }
        let e = solar_velocity_ecliptic_km_s();
        assert!((beta.km_s()[1] - (e[1] + 30.0)).abs() < 1e-10);
        assert!(total_beta([C_KM_S, 0.0, 0.0], [0.0; 3]).is_err());
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn batch_refuses_mismatched_lengths() {
        dipole_batch(&[[1.0, 0.0, 0.0]], &Beta::zero(), T_CMB, &mut [0.0; 2]);
    }

    #[test]
    fn model_without_orbit_is_the_solar_dipole() {
        // Solar only, ecliptic attitude, galactic directions: the orbital velocity is ignored.
        let solar = SolarVelocity::planck_2018().galactic_km_s();
        let to_gal = frames::ecliptic_to_galactic();
        let m = DipoleModel::new(to_gal, solar, false, false, T_CMB);
        // Towards the solar apex: T0(√((1+β)/(1−β)) − 1).
        let apex = frames::lonlat_deg_to_vec(SOLAR_DIPOLE_L_DEG, SOLAR_DIPOLE_B_DEG);
        let dt = m.delta_t(apex, [10.0, 20.0, 30.0]);
        let b: f64 = SOLAR_DIPOLE_AMPLITUDE / T_CMB;
        let exact = T_CMB * (((1.0 + b) / (1.0 - b)).sqrt() - 1.0);
        assert!((dt - exact).abs() < 1e-15, "{dt} vs {exact}");
        // A configured velocity (TOAST's default 370.08 km/s towards (263.99°, 48.25°)).
        let toast = SolarVelocity {
            speed_km_s: 370.08,
            l_deg: 263.99,
            b_deg: 48.25,
        };
        let m = DipoleModel::new(quat::IDENTITY, toast.galactic_km_s(), false, false, T_CMB);
        let n = frames::lonlat_deg_to_vec(263.99, 48.25);
        let b = 370.08 / C_KM_S;
        let exact = T_CMB * (((1.0 + b) / (1.0 - b)).sqrt() - 1.0);
        assert!((m.delta_t(n, [0.0; 3]) - exact).abs() < 1e-15);
        // Amplitude form: c·A/T0.
        let v = SolarVelocity::from_amplitude(3366.6e-6, 2.7255, 0.0, 90.0);
        assert!((v.speed_km_s - C_KM_S * 3366.6e-6 / 2.7255).abs() < 1e-12);
        let g = v.galactic_km_s();
        assert!(g[0].abs() < 1e-12 && (g[2] - v.speed_km_s).abs() < 1e-12);
    }

    #[test]
    fn model_with_aberration_maps_rest_directions_back() {
        let m = DipoleModel::new(quat::IDENTITY, [0.0; 3], true, true, T_CMB);
        let v = [0.0, 0.0, 30.0];
        let beta = Beta::from_km_s(v).unwrap();
        let n_rest = crate::aberration::to_rest([1.0, 0.0, 0.0], &beta);
        // Perpendicular to v (apparent) only the second-order term T0 (1/γ − 1) remains.
        let second_order = T_CMB * (1.0 / beta.gamma() - 1.0);
        let dt = m.delta_t(n_rest, v);
        assert!((dt - second_order).abs() < 1e-15, "{dt} vs {second_order}");
        // Orbital velocity rotated into the output frame.
        let q = frames::ecliptic_to_galactic();
        let m = DipoleModel::new(q, [0.0; 3], true, false, T_CMB);
        let n = quat::rotate(q, [0.0, 0.0, 1.0]);
        let exact = dipole([0.0, 0.0, 1.0], &beta, T_CMB);
        assert!((m.delta_t(n, v) - exact).abs() < 1e-15);
    }

    #[test]
    fn quadrupole_factor_is_x_coth_x_over_two() {
        assert_eq!(quadrupole_factor(0.0, T_CMB), 0.0);
        // Independent: q = (x/2)(eˣ + 1)/(eˣ − 1), x = hν/kT0 (TOAST's form).
        for ghz in [30.0, 150.0, 545.0] {
            let x = PLANCK_H * ghz * 1e9 / (BOLTZMANN_K * T_CMB);
            let q = 0.5 * x * (x.exp() + 1.0) / (x.exp() - 1.0);
            let got = quadrupole_factor(ghz * 1e9, T_CMB);
            assert!(((got + 1.0) - q).abs() < 1e-14 * q, "{ghz}: {got} vs {q}");
        }
        assert!((quadrupole_factor(150e9, T_CMB) - 0.5233).abs() < 1e-3);
        // The series branch joins the closed form: x²/12 for small x.
        let x = 1e-5;
        let f = x * BOLTZMANN_K * T_CMB / PLANCK_H;
        assert!((quadrupole_factor(f, T_CMB) / (x * x / 12.0) - 1.0).abs() < 1e-9);
        // Both sides of the switch at x/2 = 0.1 agree with the closed form in long double
        // precision terms: compare with the closed form where it is still accurate to ~1e-13.
        for x in [0.1999, 0.2001, 0.5] {
            let f = x * BOLTZMANN_K * T_CMB / PLANCK_H;
            let h: f64 = x / 2.0;
            let closed = h / h.tanh() - 1.0;
            assert!(
                (quadrupole_factor(f, T_CMB) / closed - 1.0).abs() < 1e-12,
                "{x}"
            );
        }
    }

    #[test]
    fn model_quadrupole_adds_t0_q_minus_one_beta_n_squared() {
        let solar = SolarVelocity::planck_2018().galactic_km_s();
        let base = DipoleModel::new(quat::IDENTITY, solar, true, false, T_CMB);
        let qm1 = quadrupole_factor(150e9, T_CMB);
        let quad = base.with_quadrupole(qm1);
        assert_eq!(base.quadrupole(), 0.0);
        let v = [1.0, -29.0, 3.0];
        let total = [0, 1, 2].map(|i| solar[i] + v[i]);
        let beta = Beta::from_km_s(total).unwrap();
        for n in [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, -1.0]] {
            let x = dot3(beta.vector(), n);
            let extra = quad.delta_t(n, v) - base.delta_t(n, v);
            let want = T_CMB * qm1 * x * x;
            assert!(
                (extra - want).abs() < 1e-18 + 1e-12 * want,
                "{extra} vs {want}"
            );
        }
        // ≈ 2.9 µK along the velocity at 150 GHz (T0 (q − 1) β²).
        let b = dot3(beta.vector(), beta.vector()).sqrt();
        let n = beta.vector().map(|c| c / b);
        let extra = quad.delta_t(n, v) - base.delta_t(n, v);
        assert!((extra * 1e6 - T_CMB * qm1 * b * b * 1e6).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn apparent_and_rest_forms_agree(
            n in prop::array::uniform3(-1.0f64..1.0).prop_filter("n", |v| dot3(*v, *v) > 1e-2),
            b in prop::array::uniform3(-0.3f64..0.3),
        ) {
            let l = dot3(n, n).sqrt();
            let n0 = n.map(|c| c / l);
            let beta = Beta::new(b).unwrap();
            let apparent = crate::aberration::to_apparent(n0, &beta);
            let a = dipole(apparent, &beta, T_CMB);
            let r = dipole_rest_direction(n0, &beta, T_CMB);
            prop_assert!((a - r).abs() < 1e-14 * T_CMB * (1.0 + r.abs()));
            // Against the textbook form, for large β where cancellation does not matter.
            let textbook = T_CMB / (beta.gamma() * (1.0 - dot3(b, apparent))) - T_CMB;
            prop_assert!((a - textbook).abs() < 1e-13);
        }
    }
}
