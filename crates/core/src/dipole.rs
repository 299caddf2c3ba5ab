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

use crate::aberration::{Beta, C_KM_S, dot3};
use crate::frames;

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
    let speed = C_KM_S * SOLAR_DIPOLE_AMPLITUDE / T_CMB;
    frames::lonlat_deg_to_vec(SOLAR_DIPOLE_L_DEG, SOLAR_DIPOLE_B_DEG).map(|c| c * speed)
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
