//! The photometric zero point of a CCD: a clipped, weighted mean of `reference − instrumental`
//! magnitudes.

/// A zero point `ZP` such that `mag = ZP − 2.5 log10(flux)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZeroPoint {
    /// The zero point, mag.
    pub zero_point: f64,
    /// Its 1σ error: the formal error of the weighted mean, scaled up by √(χ²/dof) when the
    /// scatter exceeds the errors.
    pub error: f64,
    /// Stars used (after clipping).
    pub n_used: usize,
    /// Weighted RMS of the used differences about the zero point, mag.
    pub scatter: f64,
}

/// Instrumental magnitude `−2.5 log10(flux)` and its error from the flux error; `None` for a
/// non-positive or non-finite flux.
pub fn instrumental(flux: f64, flux_err: f64) -> Option<(f64, f64)> {
    (flux.is_finite() && flux > 0.0 && flux_err.is_finite()).then(|| {
        (
            -2.5 * flux.log10(),
            2.5 / std::f64::consts::LN_10 * flux_err / flux,
        )
    })
}

/// Clipped weighted mean of `reference − instrumental` (weights `1/(err² + floor²)`):
/// differences beyond `clip` × the robust scatter (1.4826 × MAD, at least `floor`) from the
/// current zero point are dropped until none is. Non-finite entries are ignored. `None` with
/// fewer than `min_stars` stars left.
pub fn zero_point(
    reference: &[f64],
    instrumental: &[f64],
    instrumental_err: &[f64],
    clip: f64,
    floor: f64,
    min_stars: usize,
) -> Option<ZeroPoint> {
    let data: Vec<(f64, f64)> = reference
        .iter()
        .zip(instrumental)
        .zip(instrumental_err)
        .filter(|((r, i), e)| r.is_finite() && i.is_finite() && e.is_finite())
        .map(|((r, i), e)| (r - i, 1.0 / (e * e + floor * floor)))
        .collect();
    let mut used = vec![true; data.len()];
    let diffs: Vec<f64> = data.iter().map(|d| d.0).collect();
    let mut centre = crate::linalg::median(&diffs);
    for _ in 0..20 {
        let kept: Vec<f64> = data
            .iter()
            .zip(&used)
            .filter(|(_, u)| **u)
            .map(|(d, _)| (d.0 - centre).abs())
            .collect();
        if kept.len() < min_stars.max(1) {
            return None;
        }
        let sigma = (1.4826 * crate::linalg::median(&kept)).max(floor);
        let new_used: Vec<bool> = data
            .iter()
            .map(|d| (d.0 - centre).abs() <= clip * sigma)
            .collect();
        let (sw, swd) = data
            .iter()
            .zip(&new_used)
            .filter(|(_, u)| **u)
            .fold((0.0, 0.0), |(sw, swd), (d, _)| (sw + d.1, swd + d.1 * d.0));
        if sw == 0.0 {
            return None;
        }
        let new_centre = swd / sw;
        let settled = new_used == used && (new_centre - centre).abs() < 1e-12;
        used = new_used;
        centre = new_centre;
        if settled {
            break;
        }
    }
    let used_data: Vec<&(f64, f64)> = data
        .iter()
        .zip(&used)
        .filter(|(_, u)| **u)
        .map(|(d, _)| d)
        .collect();
    let n = used_data.len();
    if n < min_stars.max(1) {
        return None;
    }
    let sw: f64 = used_data.iter().map(|d| d.1).sum();
    let chi2: f64 = used_data.iter().map(|d| d.1 * (d.0 - centre).powi(2)).sum();
    let inflation = if n > 1 {
        (chi2 / (n - 1) as f64).sqrt().max(1.0)
    } else {
        1.0
    };
    Some(ZeroPoint {
        zero_point: centre,
        error: inflation / sw.sqrt(),
        n_used: n,
        scatter: (chi2 / sw).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instrumental_magnitudes() {
        let (m, e) = instrumental(100.0, 1.0).unwrap();
        assert!((m + 5.0).abs() < 1e-12 && (e - 0.010857).abs() < 1e-6);
        assert!(instrumental(-1.0, 1.0).is_none());
    }

    #[test]
    fn weighted_mean_with_outliers_clipped() {
        // Differences 30 ± 0.01 with two outliers; weights favour the precise ones.
        let r: Vec<f64> = (0..20).map(|i| 20.0 + i as f64 * 0.1).collect();
        let mut inst: Vec<f64> = r
            .iter()
            .enumerate()
            .map(|(i, r)| r - 30.0 - if i % 2 == 0 { 0.01 } else { -0.01 })
            .collect();
        inst[3] -= 1.0;
        inst[7] += 0.5;
        let err = vec![0.01; 20];
        let z = zero_point(&r, &inst, &err, 3.0, 0.0, 5).unwrap();
        assert_eq!(z.n_used, 18);
        // Outliers 3 and 7 both had −0.01: ten +0.01 and eight −0.01 remain.
        assert!((z.zero_point - (30.0 + 0.02 / 18.0)).abs() < 1e-9, "{z:?}");
        // Scatter 0.01 = the errors: the error is the formal one, 0.01/√18.
        assert!((z.error - 0.01 / 18f64.sqrt()).abs() < 3e-4, "{z:?}");
        assert!((z.scatter - 0.01).abs() < 1e-3, "{z:?}");
    }

    #[test]
    fn error_is_inflated_by_excess_scatter_and_too_few_stars_fail() {
        let r = [20.0, 21.0, 22.0, 23.0];
        let inst = [-10.1, -8.9, -8.1, -6.9];
        let z = zero_point(&r, &inst, &[0.001; 4], 5.0, 0.0, 3).unwrap();
        assert!((z.zero_point - 30.0).abs() < 1e-9);
        assert!(z.error > 0.04, "{z:?}");
        assert!(zero_point(&r[..2], &inst[..2], &[0.01; 2], 3.0, 0.0, 3).is_none());
    }
}
