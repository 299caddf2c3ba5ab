//! Unit quaternions for rotations, stored as `[f64; 4]` in **scalar-last** order `[x, y, z, w]`.
//!
//! A unit quaternion `q = [x, y, z, w] = [sin(a/2)·û, cos(a/2)]` is the active rotation by the
//! angle `a` (right-handed) about the unit axis `û`: [`rotate`] computes `q v q*`.
//! Products follow Hamilton's convention, so `mul(a, b)` rotates by `b` first and then by `a`.
//! `q` and `−q` are the same rotation; [`slerp`] therefore always takes the shorter arc.

/// A quaternion in scalar-last order `[x, y, z, w]` (vector part first, scalar part last).
pub type Quat = [f64; 4];

/// The identity rotation `[0, 0, 0, 1]` (scalar-last).
pub const IDENTITY: Quat = [0.0, 0.0, 0.0, 1.0];

/// Largest accepted `|‖q‖ − 1|` for a quaternion that must represent a rotation.
pub const UNIT_TOLERANCE: f64 = 1e-6;

/// Why a quaternion (scalar-last `[x, y, z, w]`) or rotation axis was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuatError {
    /// A component is NaN or infinite.
    #[error("quaternion {q:?} (scalar-last [x, y, z, w]) has a non-finite component")]
    NotFinite {
        /// The offending quaternion.
        q: Quat,
    },
    /// The norm differs from 1 by more than [`UNIT_TOLERANCE`].
    #[error(
        "quaternion {q:?} (scalar-last [x, y, z, w]) has norm {norm}, expected 1 within {UNIT_TOLERANCE:e}"
    )]
    NotUnit {
        /// The offending quaternion.
        q: Quat,
        /// Its Euclidean norm.
        norm: f64,
    },
    /// A zero quaternion cannot be normalised.
    #[error("cannot normalise the zero quaternion")]
    Zero,
    /// A rotation axis must be finite and non-zero.
    #[error("rotation axis {axis:?} is zero or not finite")]
    BadAxis {
        /// The offending axis.
        axis: [f64; 3],
    },
}

/// Hamilton product `a ⊗ b` (scalar-last): the rotation `b` followed by `a`.
#[inline(always)]
pub fn mul(a: Quat, b: Quat) -> Quat {
    let [ax, ay, az, aw] = a;
    let [bx, by, bz, bw] = b;
    [
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by + ay * bw + az * bx - ax * bz,
        aw * bz + az * bw + ax * by - ay * bx,
        aw * bw - ax * bx - ay * by - az * bz,
    ]
}

/// Conjugate `[−x, −y, −z, w]`: the inverse rotation of a unit quaternion.
#[inline(always)]
pub fn conj(q: Quat) -> Quat {
    [-q[0], -q[1], -q[2], q[3]]
}

/// Negation `−q`: a different quaternion for the same rotation.
#[inline(always)]
pub fn neg(q: Quat) -> Quat {
    [-q[0], -q[1], -q[2], -q[3]]
}

/// Four-dimensional dot product; for unit quaternions `|dot| = cos(½·angle between rotations)`.
#[inline(always)]
pub fn dot(a: Quat, b: Quat) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3]
}

/// Euclidean norm `‖q‖`.
#[inline]
pub fn norm(q: Quat) -> f64 {
    dot(q, q).sqrt()
}

/// `q / ‖q‖`; refuses zero and non-finite quaternions.
pub fn normalize(q: Quat) -> Result<Quat, QuatError> {
    if !q.iter().all(|c| c.is_finite()) {
        return Err(QuatError::NotFinite { q });
    }
    let n = norm(q);
    if n == 0.0 {
        return Err(QuatError::Zero);
    }
    Ok([q[0] / n, q[1] / n, q[2] / n, q[3] / n])
}

/// Checks that `q` is finite with `|‖q‖ − 1| ≤ UNIT_TOLERANCE`, as every rotation input must be.
pub fn check_unit(q: Quat) -> Result<(), QuatError> {
    if !q.iter().all(|c| c.is_finite()) {
        return Err(QuatError::NotFinite { q });
    }
    let n = norm(q);
    if (n - 1.0).abs() > UNIT_TOLERANCE {
        return Err(QuatError::NotUnit { q, norm: n });
    }
    Ok(())
}

/// Rotates the 3-vector `v` by the unit quaternion `q`: `q v q*`.
#[inline(always)]
pub fn rotate(q: Quat, v: [f64; 3]) -> [f64; 3] {
    let [x, y, z, w] = q;
    // t = 2 u × v;  v' = v + w t + u × t  (u = vector part)
    let tx = 2.0 * (y * v[2] - z * v[1]);
    let ty = 2.0 * (z * v[0] - x * v[2]);
    let tz = 2.0 * (x * v[1] - y * v[0]);
    [
        v[0] + w * tx + (y * tz - z * ty),
        v[1] + w * ty + (z * tx - x * tz),
        v[2] + w * tz + (x * ty - y * tx),
    ]
}

/// The rotation by `angle` radians (right-handed) about `axis` (normalised here; must be non-zero).
pub fn from_axis_angle(axis: [f64; 3], angle: f64) -> Result<Quat, QuatError> {
    let n = (axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]).sqrt();
    if !(n.is_finite() && n > 0.0 && angle.is_finite()) {
        return Err(QuatError::BadAxis { axis });
    }
    let (s, c) = (0.5 * angle).sin_cos();
    let k = s / n;
    Ok([axis[0] * k, axis[1] * k, axis[2] * k, c])
}

/// The rotation matrix `R` of a unit quaternion, row-major: `R·v == rotate(q, v)`.
pub fn to_matrix(q: Quat) -> [[f64; 3]; 3] {
    let [x, y, z, w] = q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// The unit quaternion (with `w ≥ 0`) of a proper rotation matrix (row-major), by Shepperd's method.
///
/// The input must be orthonormal with determinant +1; this is not checked.
pub fn from_matrix(m: [[f64; 3]; 3]) -> Quat {
    let tr = m[0][0] + m[1][1] + m[2][2];
    // Pick the largest of 4w², 4x², 4y², 4z² to divide by, for accuracy.
    let q = if tr >= m[0][0] && tr >= m[1][1] && tr >= m[2][2] {
        let s = 2.0 * (1.0 + tr).sqrt(); // 4w
        [
            (m[2][1] - m[1][2]) / s,
            (m[0][2] - m[2][0]) / s,
            (m[1][0] - m[0][1]) / s,
            0.25 * s,
        ]
    } else if m[0][0] >= m[1][1] && m[0][0] >= m[2][2] {
        let s = 2.0 * (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt(); // 4x
        [
            0.25 * s,
            (m[0][1] + m[1][0]) / s,
            (m[0][2] + m[2][0]) / s,
            (m[2][1] - m[1][2]) / s,
        ]
    } else if m[1][1] >= m[2][2] {
        let s = 2.0 * (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt(); // 4y
        [
            (m[0][1] + m[1][0]) / s,
            0.25 * s,
            (m[1][2] + m[2][1]) / s,
            (m[0][2] - m[2][0]) / s,
        ]
    } else {
        let s = 2.0 * (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt(); // 4z
        [
            (m[0][2] + m[2][0]) / s,
            (m[1][2] + m[2][1]) / s,
            0.25 * s,
            (m[1][0] - m[0][1]) / s,
        ]
    };
    if q[3] < 0.0 { neg(q) } else { q }
}

/// The rotation angle between two unit quaternions in 4-D, `Ω ∈ [0, π]`, computed stably.
///
/// `Ω = 2·atan2(‖b − a‖, ‖b + a‖)`; the rotation taking `a` to `b` turns by `2Ω` (or `2π − 2Ω`).
#[inline]
pub(crate) fn arc(a: Quat, b: Quat) -> f64 {
    let d = [b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]];
    let s = [b[0] + a[0], b[1] + a[1], b[2] + a[2], b[3] + a[3]];
    2.0 * dot(d, d).sqrt().atan2(dot(s, s).sqrt())
}

/// Spherical linear interpolation between unit quaternions along the **shorter** path.
///
/// `t = 0` returns `q0` exactly and `t = 1` returns `q1` exactly, or `−q1` (the same rotation)
/// when `q0·q1 < 0`: then `q1` is negated first, so `slerp(q0, q1, t)` and `slerp(q0, −q1, t)`
/// are bit-for-bit equal. Between the ends the rotation turns at a constant rate about a fixed
/// axis. Inputs must be unit quaternions (not checked here; see [`check_unit`]).
///
/// ```
/// use skypipe_core::quat::{from_axis_angle, neg, slerp};
/// let q0 = from_axis_angle([0.0, 0.0, 1.0], 0.0).unwrap();
/// let q1 = from_axis_angle([0.0, 0.0, 1.0], 1.0).unwrap();
/// let half = from_axis_angle([0.0, 0.0, 1.0], 0.5).unwrap();
/// let q = slerp(q0, neg(q1), 0.5); // −q1 is the same rotation: still the short way
/// assert!((0..4).all(|i| (q[i] - half[i]).abs() < 1e-15));
/// ```
#[inline]
pub fn slerp(q0: Quat, q1: Quat, t: f64) -> Quat {
    let q1 = if dot(q0, q1) < 0.0 { neg(q1) } else { q1 };
    let omega = arc(q0, q1);
    if omega == 0.0 {
        return q0;
    }
    // Divisions (not a reciprocal) keep the ends exact: sin(Ω)/sin(Ω) == 1 and sin(0) == 0.
    let sin_omega = omega.sin();
    let a = ((1.0 - t) * omega).sin() / sin_omega;
    let b = (t * omega).sin() / sin_omega;
    [
        a * q0[0] + b * q1[0],
        a * q0[1] + b * q1[1],
        a * q0[2] + b * q1[2],
        a * q0[3] + b * q1[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::{FRAC_PI_2, PI};

    const ATOL: f64 = 1e-14;

    fn close3(a: [f64; 3], b: [f64; 3], tol: f64) -> bool {
        (0..3).all(|i| (a[i] - b[i]).abs() <= tol)
    }

    fn close4(a: Quat, b: Quat, tol: f64) -> bool {
        (0..4).all(|i| (a[i] - b[i]).abs() <= tol)
    }

    /// Same rotation: equal up to sign.
    fn same_rotation(a: Quat, b: Quat, tol: f64) -> bool {
        close4(a, b, tol) || close4(a, neg(b), tol)
    }

    fn unit_quat() -> impl Strategy<Value = Quat> {
        // Uniform on S³ up to the Gaussian approximation; normalise a random 4-vector.
        prop::array::uniform4(-1.0f64..1.0)
            .prop_filter("not tiny", |q| norm(*q) > 1e-3)
            .prop_map(|q| normalize(q).unwrap())
    }

    #[test]
    fn quarter_turn_about_z_takes_x_to_y() {
        // Analytic: a right-handed 90° rotation about ẑ maps x̂ → ŷ and ŷ → −x̂.
        let q = from_axis_angle([0.0, 0.0, 1.0], FRAC_PI_2).unwrap();
        assert!(close3(rotate(q, [1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], ATOL));
        assert!(close3(rotate(q, [0.0, 1.0, 0.0]), [-1.0, 0.0, 0.0], ATOL));
        assert!(close3(rotate(q, [0.0, 0.0, 1.0]), [0.0, 0.0, 1.0], ATOL));
        // Scalar-last layout: [sin(π/4)·ẑ, cos(π/4)].
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!(close4(q, [0.0, 0.0, h, h], ATOL));
    }

    #[test]
    fn product_applies_right_factor_first() {
        // x̂ --(90° about ẑ)--> ŷ --(90° about x̂)--> ẑ.
        let rz = from_axis_angle([0.0, 0.0, 1.0], FRAC_PI_2).unwrap();
        let rx = from_axis_angle([1.0, 0.0, 0.0], FRAC_PI_2).unwrap();
        assert!(close3(
            rotate(mul(rx, rz), [1.0, 0.0, 0.0]),
            [0.0, 0.0, 1.0],
            ATOL
        ));
    }

    #[test]
    fn matrix_of_quarter_turn_about_x() {
        let q = from_axis_angle([1.0, 0.0, 0.0], FRAC_PI_2).unwrap();
        let m = to_matrix(q);
        let expected = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
        for i in 0..3 {
            assert!(close3(m[i], expected[i], ATOL), "{m:?}");
        }
    }

    #[test]
    fn from_matrix_covers_every_branch() {
        // Rotations by ~π about each axis make x², y² or z² the largest term.
        for axis in [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 1.0, 1.0],
        ] {
            for angle in [0.1, 2.0, PI - 1e-3, PI] {
                let q = from_axis_angle(axis, angle).unwrap();
                let back = from_matrix(to_matrix(q));
                assert!(same_rotation(q, back, 1e-13), "{q:?} vs {back:?}");
                assert!(back[3] >= 0.0);
            }
        }
    }

    #[test]
    fn rejects_bad_quaternions_and_axes() {
        assert_eq!(normalize([0.0; 4]), Err(QuatError::Zero));
        assert!(matches!(
            normalize([f64::NAN, 0.0, 0.0, 1.0]),
            Err(QuatError::NotFinite { .. })
        ));
        assert!(matches!(
            check_unit([0.0, 0.0, 0.0, 1.0 + 2e-6]),
            Err(QuatError::NotUnit { .. })
        ));
        assert!(matches!(
            check_unit([0.0, 0.0, f64::INFINITY, 1.0]),
            Err(QuatError::NotFinite { .. })
        ));
        assert!(check_unit([0.0, 0.0, 0.0, 1.0 + 0.9e-6]).is_ok());
        assert!(matches!(
            from_axis_angle([0.0; 3], 1.0),
            Err(QuatError::BadAxis { .. })
        ));
        assert!(matches!(
            from_axis_angle([1.0, 0.0, 0.0], f64::NAN),
            Err(QuatError::BadAxis { .. })
        ));
        let e = check_unit([0.0, 0.0, 0.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("scalar-last") && e.contains("norm 2"), "{e}");
    }

    #[test]
    fn slerp_takes_short_way_when_q1_is_negated() {
        // The trap seen in peers: q0 → −q1 the long way round. Rotations 0° and 20° about ẑ:
        // the midpoint must be 10°, not 190°.
        let q0 = from_axis_angle([0.0, 0.0, 1.0], 0.0).unwrap();
        let q1 = from_axis_angle([0.0, 0.0, 1.0], 20f64.to_radians()).unwrap();
        let mid = slerp(q0, neg(q1), 0.5);
        let v = rotate(mid, [1.0, 0.0, 0.0]);
        assert!(
            (v[1].atan2(v[0]) - 10f64.to_radians()).abs() < 1e-14,
            "{v:?}"
        );
    }

    #[test]
    fn slerp_of_identical_quaternions_is_constant() {
        let q = normalize([0.1, -0.2, 0.3, 0.9]).unwrap();
        for t in [0.0, 0.3, 1.0] {
            assert_eq!(slerp(q, q, t), q);
        }
    }

    proptest! {
        #[test]
        fn slerp_endpoints_are_exact(q0 in unit_quat(), q1 in unit_quat()) {
            prop_assert_eq!(slerp(q0, q1, 0.0), q0);
            let end = slerp(q0, q1, 1.0);
            prop_assert!(end == q1 || end == neg(q1));
        }

        #[test]
        fn slerp_keeps_unit_norm(q0 in unit_quat(), q1 in unit_quat(), t in 0.0f64..=1.0) {
            prop_assert!((norm(slerp(q0, q1, t)) - 1.0).abs() < 1e-14);
        }

        #[test]
        fn slerp_ignores_the_sign_of_either_end(q0 in unit_quat(), q1 in unit_quat(), t in 0.0f64..=1.0) {
            let q = slerp(q0, q1, t);
            prop_assert_eq!(slerp(q0, neg(q1), t), q);
            prop_assert!(same_rotation(slerp(neg(q0), q1, t), q, 1e-15));
        }

        #[test]
        fn slerp_is_a_constant_rate_rotation_about_a_fixed_axis(
            q0 in unit_quat(),
            axis in prop::array::uniform3(-1.0f64..1.0).prop_filter("axis", |a| a.iter().map(|c| c*c).sum::<f64>() > 1e-4),
            angle in -3.1f64..3.1,
            t in 0.0f64..=1.0,
        ) {
            // q(t) = R(axis, t·angle) ⊗ q0 exactly; |angle| < π so this is the shorter path.
            let q1 = mul(from_axis_angle(axis, angle).unwrap(), q0);
            let expected = mul(from_axis_angle(axis, t * angle).unwrap(), q0);
            prop_assert!(same_rotation(slerp(q0, q1, t), expected, 1e-13));
        }

        #[test]
        fn rotation_keeps_length_and_matches_matrix(q in unit_quat(), v in prop::array::uniform3(-10.0f64..10.0)) {
            let r = rotate(q, v);
            let m = to_matrix(q);
            let mv = [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2]);
            prop_assert!(close3(r, mv, 1e-13));
            let n0 = (v[0]*v[0] + v[1]*v[1] + v[2]*v[2]).sqrt();
            let n1 = (r[0]*r[0] + r[1]*r[1] + r[2]*r[2]).sqrt();
            prop_assert!((n0 - n1).abs() < 1e-13);
            // The conjugate undoes the rotation.
            prop_assert!(close3(rotate(conj(q), r), v, 1e-13));
        }

        #[test]
        fn matrix_round_trip(q in unit_quat()) {
            prop_assert!(same_rotation(from_matrix(to_matrix(q)), q, 1e-14));
        }
    }
}
