//! Sine and cosine without branches, for loops the compiler can vectorise.
//!
//! [`sin_cos`] reduces the angle by the nearest multiple `k` of `π/2` (Cody–Waite: `π/2` split
//! into a 33-bit head, exact when multiplied by `|k| < 2²⁰`, and a tail), evaluates the Taylor
//! series of `sin` and `cos` on the reduced angle `|r| ≤ π/4` (through `r¹⁵` and `r¹⁶`: the
//! first omitted terms are below 5e-17 and 2e-18) and picks the quadrant by bit operations on
//! `k`. The result is within 5e-16 of the exact value for `|x| ≤` [`SIN_COS_MAX_ARG`] (tested
//! against libm over that range), i.e. a direction built from it is off by at most about
//! 1e-15 rad. There is no branch, table or call, so the same instructions run for every lane.
//! Outside the range (or for non-finite `x`) the result is meaningless: callers check the
//! range first, see [`within_sin_cos_range`].

/// The largest `|x|` for which [`sin_cos`] is accurate (`2²⁰ · π/2`, ≈ 1.6e6 rad).
pub const SIN_COS_MAX_ARG: f64 = 1_647_099.0;

/// `2/π`.
const TWO_OVER_PI: f64 = std::f64::consts::FRAC_2_PI;
/// The first 33 bits of `π/2`: `k · PIO2_HEAD` is exact for `|k| < 2²⁰`.
const PIO2_HEAD: f64 = 1.570_796_326_734_125_6;
/// `π/2 − PIO2_HEAD`, rounded.
const PIO2_TAIL: f64 = 6.077_100_506_506_192e-11;
/// `1.5 · 2⁵²`: adding and subtracting it rounds to the nearest integer (for `|y| < 2⁵¹`) and
/// leaves that integer in the low bits of the sum.
const ROUNDER: f64 = 6_755_399_441_055_744.0;

/// `(−1)ⁿ / (2n + 1)!` for `n = 1 ..= 7`: the Taylor coefficients of `sin` after `r`.
const SIN_COEFFS: [f64; 7] = [
    -1.0 / 6.0,
    1.0 / 120.0,
    -1.0 / 5_040.0,
    1.0 / 362_880.0,
    -1.0 / 39_916_800.0,
    1.0 / 6_227_020_800.0,
    -1.0 / 1_307_674_368_000.0,
];
/// `(−1)ⁿ / (2n)!` for `n = 2 ..= 8`: the Taylor coefficients of `cos` after `1 − r²/2`.
const COS_COEFFS: [f64; 7] = [
    1.0 / 24.0,
    -1.0 / 720.0,
    1.0 / 40_320.0,
    -1.0 / 3_628_800.0,
    1.0 / 479_001_600.0,
    -1.0 / 87_178_291_200.0,
    1.0 / 20_922_789_888_000.0,
];

/// Whether every angle of `xs` is within the range of [`sin_cos`] (false for non-finite ones).
#[inline]
pub fn within_sin_cos_range(xs: &[f64]) -> bool {
    xs.iter()
        .fold(0.0f64, |m, &x| if x.abs() > m { x.abs() } else { m })
        <= SIN_COS_MAX_ARG
        && xs.iter().all(|x| !x.is_nan())
}

/// `(sin x, cos x)` within 5e-16 for `|x| ≤` [`SIN_COS_MAX_ARG`], without branches (see the
/// module).
///
/// ```
/// use skypipe_core::trig::sin_cos;
/// let (s, c) = sin_cos(std::f64::consts::FRAC_PI_6);
/// assert!((s - 0.5).abs() < 2e-16 && (c - 0.75f64.sqrt()).abs() < 2e-16);
/// ```
#[inline(always)]
pub fn sin_cos(x: f64) -> (f64, f64) {
    let shifted = x * TWO_OVER_PI + ROUNDER;
    let k = shifted - ROUNDER;
    let quadrant = shifted.to_bits();
    let r = (x - k * PIO2_HEAD) - k * PIO2_TAIL;
    let r2 = r * r;
    let mut ps = SIN_COEFFS[6];
    for &c in SIN_COEFFS[..6].iter().rev() {
        ps = ps * r2 + c;
    }
    let mut pc = COS_COEFFS[6];
    for &c in COS_COEFFS[..6].iter().rev() {
        pc = pc * r2 + c;
    }
    let s = r + r * r2 * ps;
    let c = (1.0 - 0.5 * r2) + r2 * r2 * pc;
    // Quadrant k mod 4: (sin, cos) = (s, c), (c, −s), (−s, −c), (−c, s).
    let swap = 0u64.wrapping_sub(quadrant & 1);
    let (sb, cb) = (s.to_bits(), c.to_bits());
    let sin_bits = ((sb & !swap) | (cb & swap)) ^ ((quadrant & 2) << 62);
    let cos_bits = ((cb & !swap) | (sb & swap)) ^ ((quadrant.wrapping_add(1) & 2) << 62);
    (f64::from_bits(sin_bits), f64::from_bits(cos_bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};

    fn check(x: f64, tol: f64) {
        let (s, c) = sin_cos(x);
        let (es, ec) = x.sin_cos();
        assert!(
            (s - es).abs() <= tol && (c - ec).abs() <= tol,
            "x = {x:e}: ({s:e}, {c:e}) vs libm ({es:e}, {ec:e})"
        );
    }

    #[test]
    fn matches_libm_on_pointing_angles_and_far_out() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200_000 {
            check(rng.random_range(-2.0 * PI..=2.0 * PI), 4e-16);
        }
        for _ in 0..100_000 {
            check(rng.random_range(-SIN_COS_MAX_ARG..=SIN_COS_MAX_ARG), 5e-16);
        }
        // Quadrant boundaries and their neighbours, where the reduced angle is ±π/4 or 0.
        for k in -40i32..=40 {
            for base in [k as f64 * FRAC_PI_2, k as f64 * FRAC_PI_2 + FRAC_PI_4] {
                let mut x = base;
                for _ in 0..4 {
                    check(x, 4e-16);
                    check(-x, 4e-16);
                    x = x.next_up();
                }
            }
        }
        check(SIN_COS_MAX_ARG, 5e-16);
        check(-SIN_COS_MAX_ARG, 5e-16);
    }

    #[test]
    fn exact_values_and_symmetries() {
        assert_eq!(sin_cos(0.0), (0.0, 1.0));
        let (s, c) = sin_cos(FRAC_PI_2);
        assert!((s - 1.0).abs() < 2e-16 && c.abs() < 1e-16);
        let (s, c) = sin_cos(PI);
        assert!(s.abs() < 2e-16 && (c + 1.0).abs() < 2e-16);
        let (s, c) = sin_cos(-3.0 * FRAC_PI_4);
        let h = 0.5f64.sqrt();
        assert!((s + h).abs() < 3e-16 && (c + h).abs() < 3e-16);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..10_000 {
            let x: f64 = rng.random_range(-10.0..10.0);
            let (s, c) = sin_cos(x);
            let (sn, cn) = sin_cos(-x);
            assert_eq!((s, c), (-sn, cn), "odd sine, even cosine at {x}");
            assert!((s * s + c * c - 1.0).abs() < 8e-16);
        }
    }

    #[test]
    fn range_check() {
        assert!(within_sin_cos_range(&[0.0, -PI, 3.0, SIN_COS_MAX_ARG]));
        assert!(within_sin_cos_range(&[]));
        assert!(!within_sin_cos_range(&[0.0, 2e6]));
        assert!(!within_sin_cos_range(&[f64::NAN]));
        assert!(!within_sin_cos_range(&[1.0, f64::INFINITY]));
    }
}
