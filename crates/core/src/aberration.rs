//! Relativistic aberration of directions by the observer's velocity `β = v/c`.
//!
//! Directions point from the observer towards the source. The instrument measures the
//! **apparent** direction `n'` (in the frame moving with the observer); the sky map needs the
//! **rest-frame** direction `n` (the frame in which `β` is measured, e.g. the solar-system
//! barycentre). They are related by
//!
//! `n' = (n + (γ + γ²/(γ+1)·(n·β))·β) / (γ·(1 + n·β))`   ([`to_apparent`]),
//!
//! and the inverse is the same formula with `−β` ([`to_rest`]). Apparent directions are pushed
//! towards `β` by about `|β|·sin θ` (θ the angle between `n` and `β`); `n ∥ β` is unchanged.

use crate::quat::{self, Quat};

/// Speed of light (km/s), exact by definition of the metre.
pub const C_KM_S: f64 = 299_792.458;

/// Why a velocity was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BetaError {
    /// A component is NaN or infinite.
    #[error("velocity {beta:?} (units of c) is not finite")]
    NotFinite {
        /// The offending vector (units of c).
        beta: [f64; 3],
    },
    /// `|β| ≥ 1`.
    #[error("velocity {beta:?} has |β| = {norm} ≥ 1 (units of c)")]
    NotSubluminal {
        /// The offending vector (units of c).
        beta: [f64; 3],
        /// Its norm.
        norm: f64,
    },
}

/// A velocity in units of `c`, with `|β| < 1` guaranteed and `γ` precomputed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beta {
    v: [f64; 3],
    gamma: f64,
    /// `γ²/(γ + 1)`, which equals `(γ − 1)/β²` without cancellation.
    g2: f64,
}

impl Beta {
    /// `β` (units of c), finite with `|β| < 1`.
    pub fn new(beta: [f64; 3]) -> Result<Self, BetaError> {
        if !beta.iter().all(|c| c.is_finite()) {
            return Err(BetaError::NotFinite { beta });
        }
        let b2 = dot3(beta, beta);
        if b2 >= 1.0 {
            return Err(BetaError::NotSubluminal {
                beta,
                norm: b2.sqrt(),
            });
        }
        let gamma = 1.0 / (1.0 - b2).sqrt();
        Ok(Self {
            v: beta,
            gamma,
            g2: gamma * gamma / (gamma + 1.0),
        })
    }

    /// `β = v / c` from a velocity in km/s.
    pub fn from_km_s(v: [f64; 3]) -> Result<Self, BetaError> {
        Self::new(v.map(|c| c / C_KM_S))
    }

    /// The zero velocity.
    pub fn zero() -> Self {
        Self {
            v: [0.0; 3],
            gamma: 1.0,
            g2: 0.5,
        }
    }

    /// The vector `β` (units of c).
    pub fn vector(&self) -> [f64; 3] {
        self.v
    }

    /// The velocity in km/s.
    pub fn km_s(&self) -> [f64; 3] {
        self.v.map(|c| c * C_KM_S)
    }

    /// Lorentz factor `γ = 1/√(1 − β²)`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// `γ − 1`, computed without cancellation for small `β`.
    pub fn gamma_minus_one(&self) -> f64 {
        self.g2 * dot3(self.v, self.v)
    }

    /// The same velocity expressed in a frame rotated by the unit quaternion `q`.
    pub fn rotated(&self, q: Quat) -> Self {
        Self {
            v: quat::rotate(q, self.v),
            ..*self
        }
    }
}

#[inline(always)]
pub(crate) fn dot3(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[inline(always)]
fn aberrate(n: [f64; 3], beta: &Beta, sign: f64) -> [f64; 3] {
    let b = beta.v.map(|c| sign * c);
    let nb = dot3(n, b);
    let k = beta.gamma + beta.g2 * nb;
    let inv = 1.0 / (beta.gamma * (1.0 + nb));
    [
        (n[0] + k * b[0]) * inv,
        (n[1] + k * b[1]) * inv,
        (n[2] + k * b[2]) * inv,
    ]
}

/// Apparent direction seen by an observer moving at `beta`, of a source in rest-frame direction
/// `n` (unit vector; the result is a unit vector).
#[inline]
pub fn to_apparent(n: [f64; 3], beta: &Beta) -> [f64; 3] {
    aberrate(n, beta, 1.0)
}

/// Rest-frame direction of a source seen in apparent direction `n_apparent` (unit vector) by an
/// observer moving at `beta`: the correction the pointing applies before pixelisation.
///
/// ```
/// use skypipe_core::aberration::{Beta, to_rest};
/// // 30 km/s along x̂; a source seen along ŷ lies ≈ 20.6″ further from x̂ in the rest frame.
/// let beta = Beta::from_km_s([30.0, 0.0, 0.0]).unwrap();
/// let n = to_rest([0.0, 1.0, 0.0], &beta);
/// let shift = (-n[0]).asin().to_degrees() * 3600.0;
/// assert!((shift - 20.64).abs() < 0.01);
/// ```
#[inline]
pub fn to_rest(n_apparent: [f64; 3], beta: &Beta) -> [f64; 3] {
    aberrate(n_apparent, beta, -1.0)
}

/// Rotates the pair (direction `d`, tangent `o` at `d`) by the smallest rotation taking `d` to
/// `n` (both unit, not antipodal). Returns `(n, o')` and that rotation as a unit quaternion.
///
/// Aberration is conformal and moves points along great circles through `β`; this rotation
/// carries tangent directions at `d` to the directions the aberration map gives them at `n`, so
/// polarisation angles follow the corrected direction.
#[inline(always)]
pub(crate) fn carry_frame(d: [f64; 3], o: [f64; 3], n: [f64; 3]) -> ([f64; 3], Quat) {
    let c = dot3(d, n);
    let w = cross(d, n); // sin α · axis
    let wo = cross(w, o);
    let f = dot3(w, o) / (1.0 + c);
    let o2 = [
        o[0] * c + wo[0] + w[0] * f,
        o[1] * c + wo[1] + w[1] * f,
        o[2] * c + wo[2] + w[2] * f,
    ];
    let s = 1.0 / (2.0 * (1.0 + c)).sqrt();
    (o2, [w[0] * s, w[1] * s, w[2] * s, (1.0 + c) * s])
}

#[inline(always)]
pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unit(v: [f64; 3]) -> [f64; 3] {
        let n = dot3(v, v).sqrt();
        v.map(|c| c / n)
    }

    fn angle(a: [f64; 3], b: [f64; 3]) -> f64 {
        let c = cross(a, b);
        dot3(c, c).sqrt().atan2(dot3(a, b))
    }

    #[test]
    fn rejects_bad_velocities() {
        assert!(matches!(
            Beta::new([1.0, 0.0, 0.0]),
            Err(BetaError::NotSubluminal { .. })
        ));
        assert!(matches!(
            Beta::new([0.6, 0.8, 0.0]),
            Err(BetaError::NotSubluminal { .. })
        ));
        assert!(matches!(
            Beta::new([f64::NAN, 0.0, 0.0]),
            Err(BetaError::NotFinite { .. })
        ));
        assert!(matches!(
            Beta::from_km_s([C_KM_S, 0.0, 0.0]),
            Err(BetaError::NotSubluminal { .. })
        ));
        assert!(Beta::new([0.6, 0.79, 0.0]).is_ok());
    }

    #[test]
    fn gamma_is_accurate_for_small_and_large_speeds() {
        let b = Beta::from_km_s([369.816, 0.0, 0.0]).unwrap();
        let beta: f64 = 369.816 / C_KM_S;
        // γ − 1 = β²/2 + 3β⁴/8 + 5β⁶/16 + …
        let series = beta * beta / 2.0 + 3.0 * beta.powi(4) / 8.0 + 5.0 * beta.powi(6) / 16.0;
        assert!((b.gamma_minus_one() - series).abs() < 1e-20);
        let b = Beta::new([0.0, 0.6, 0.0]).unwrap();
        assert!((b.gamma() - 1.25).abs() < 1e-15);
        assert!((b.gamma_minus_one() - 0.25).abs() < 1e-15);
        assert_eq!(Beta::zero(), Beta::new([0.0; 3]).unwrap());
    }

    #[test]
    fn parallel_directions_are_unchanged() {
        let beta = Beta::new([0.0, 0.0, 1e-4]).unwrap();
        for (n, a) in [
            ([0.0, 0.0, 1.0], to_apparent([0.0, 0.0, 1.0], &beta)),
            ([0.0, 0.0, -1.0], to_rest([0.0, 0.0, -1.0], &beta)),
        ] {
            assert!(
                a[0] == 0.0 && a[1] == 0.0 && (a[2] - n[2]).abs() < 1e-15,
                "{a:?}"
            );
        }
        let fast = Beta::new([0.0, 0.0, -0.9]).unwrap();
        let n = to_apparent([0.0, 0.0, 1.0], &fast);
        assert!(n[0] == 0.0 && n[1] == 0.0 && (n[2] - 1.0).abs() < 1e-15);
    }

    #[test]
    fn exact_aberration_angle() {
        // cos θ' = (cos θ + β)/(1 + β cos θ) (θ from β), for a large β where it is not small.
        let beta = Beta::new([0.5, 0.0, 0.0]).unwrap();
        for theta in [0.3f64, 1.0, std::f64::consts::FRAC_PI_2, 2.5, 3.0] {
            let n = [theta.cos(), theta.sin(), 0.0];
            let a = to_apparent(n, &beta);
            let expected = (theta.cos() + 0.5) / (1.0 + 0.5 * theta.cos());
            assert!((a[0] - expected).abs() < 1e-15, "{theta}");
            assert!(a[1] > 0.0 && a[2] == 0.0);
            assert!((dot3(a, a) - 1.0).abs() < 1e-15);
        }
    }

    #[test]
    fn small_angle_shift_is_beta_sin_theta() {
        // Analytic, first order in β: the apparent direction moves towards β by β·sin θ
        // (θ measured from β); the remainder is O(β²).
        let b = 30.0 / C_KM_S; // Earth's orbital speed
        let beta = Beta::new([0.0, 0.0, b]).unwrap();
        for theta in [0.1f64, 0.7, std::f64::consts::FRAC_PI_2, 2.2, 3.0] {
            let n = [theta.sin(), 0.0, theta.cos()];
            let shift = angle(n, to_apparent(n, &beta));
            assert!((shift - b * theta.sin()).abs() < b * b, "{theta}: {shift}");
            // Towards β: the apparent colatitude is smaller.
            assert!(to_apparent(n, &beta)[2] > n[2]);
            assert!((angle(n, to_rest(n, &beta)) - b * theta.sin()).abs() < b * b);
        }
    }

    proptest! {
        #[test]
        fn rest_and_apparent_are_inverse(
            n in prop::array::uniform3(-1.0f64..1.0).prop_filter("n", |v| dot3(*v, *v) > 1e-2),
            b in prop::array::uniform3(-0.5f64..0.5),
        ) {
            let n = unit(n);
            let beta = Beta::new(b).unwrap();
            let a = to_apparent(n, &beta);
            prop_assert!((dot3(a, a) - 1.0).abs() < 1e-14);
            let back = to_rest(a, &beta);
            prop_assert!((0..3).all(|i| (back[i] - n[i]).abs() < 1e-14));
            // Points stay on the great circle through β (coplanar n, n', β).
            prop_assert!(dot3(cross(n, a), b).abs() < 1e-14);
        }

        #[test]
        fn carried_frame_follows_the_aberration_map(
            d in prop::array::uniform3(-1.0f64..1.0).prop_filter("d", |v| dot3(*v, *v) > 1e-2),
            t in prop::array::uniform3(-1.0f64..1.0),
            b in prop::array::uniform3(-1e-3f64..1e-3),
        ) {
            // The tangent o at d is carried to the direction of the image of a short step along o.
            let d = unit(d);
            let along = dot3(t, d);
            let o = [t[0] - along * d[0], t[1] - along * d[1], t[2] - along * d[2]];
            prop_assume!(dot3(o, o) > 1e-2);
            let o = unit(o);
            let beta = Beta::new(b).unwrap();
            let n = to_rest(d, &beta);
            let (o2, q) = carry_frame(d, o, n);
            let h = 1e-6;
            let step = to_rest(unit([d[0] + h * o[0], d[1] + h * o[1], d[2] + h * o[2]]), &beta);
            let numeric = unit([step[0] - n[0], step[1] - n[1], step[2] - n[2]]);
            prop_assert!((0..3).all(|i| (o2[i] - numeric[i]).abs() < 1e-5));
            prop_assert!(dot3(o2, n).abs() < 1e-14 && (dot3(o2, o2) - 1.0).abs() < 1e-14);
            // The quaternion is the same rotation.
            let rd = quat::rotate(q, d);
            let ro = quat::rotate(q, o);
            prop_assert!((0..3).all(|i| (rd[i] - n[i]).abs() < 1e-14 && (ro[i] - o2[i]).abs() < 1e-14));
            prop_assert!((quat::norm(q) - 1.0).abs() < 1e-14);
        }
    }
}
