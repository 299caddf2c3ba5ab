//! The TAN-SIP world coordinate system and its least-squares fit.
//!
//! Pixel (x, y), FITS 1-based → `u = x − CRPIX1`, `v = y − CRPIX2` → distortion
//! `(u + A(u, v), v + B(u, v))` with `A = Σ A_p_q u^p v^q` over `2 ≤ p + q ≤ A_ORDER` → CD
//! matrix → intermediate world coordinates (ξ, η) in degrees → gnomonic (TAN) deprojection
//! about CRVAL with LONPOLE 180. The inverse polynomials `AP`, `BP` (`1 ≤ p + q ≤ AP_ORDER`)
//! map `(U, V) = CD⁻¹ (ξ, η)` back to `(u, v)` approximately; [`TanSip::sky_to_pixel`]
//! refines their answer with Newton steps on the forward transform, as WCSLIB does.

use crate::linalg::{NormalEquations, median};
use serde::{Deserialize, Serialize};

/// Exponents `(p, q)` of the polynomial terms with `min ≤ p + q ≤ order`, by total degree,
/// then by decreasing `p`.
pub fn terms(order: usize, min: usize) -> Vec<(usize, usize)> {
    let mut t = Vec::new();
    for d in min..=order {
        for q in 0..=d {
            t.push((d - q, q));
        }
    }
    t
}

fn poly(terms: &[(usize, usize)], coeffs: &[f64], u: f64, v: f64) -> f64 {
    terms
        .iter()
        .zip(coeffs)
        .map(|(&(p, q), c)| c * u.powi(p as i32) * v.powi(q as i32))
        .sum()
}

/// Gnomonic projection of (ra, dec) about `crval` (degrees) into (ξ, η) in degrees; `None` on
/// the far hemisphere.
pub fn project(crval: [f64; 2], sky: [f64; 2]) -> Option<[f64; 2]> {
    let (a, d) = (sky[0].to_radians(), sky[1].to_radians());
    let (a0, d0) = (crval[0].to_radians(), crval[1].to_radians());
    let cosc = d.sin() * d0.sin() + d.cos() * d0.cos() * (a - a0).cos();
    if cosc <= 0.0 {
        return None;
    }
    let xi = d.cos() * (a - a0).sin() / cosc;
    let eta = (d.sin() * d0.cos() - d.cos() * d0.sin() * (a - a0).cos()) / cosc;
    Some([xi.to_degrees(), eta.to_degrees()])
}

/// The inverse of [`project`]: (ξ, η) in degrees about `crval` → (ra in [0, 360), dec).
pub fn deproject(crval: [f64; 2], xieta: [f64; 2]) -> [f64; 2] {
    let (xi, eta) = (xieta[0].to_radians(), xieta[1].to_radians());
    let (a0, d0) = (crval[0].to_radians(), crval[1].to_radians());
    let denom = d0.cos() - eta * d0.sin();
    let ra = a0 + xi.atan2(denom);
    let dec = (d0.sin() + eta * d0.cos()).atan2((xi * xi + denom * denom).sqrt());
    [ra.to_degrees().rem_euclid(360.0), dec.to_degrees()]
}

/// SIP distortion polynomials: forward `A`, `B` (terms of [`terms`]`(order, 2)`) and inverse
/// `AP`, `BP` (terms of [`terms`]`(inverse_order, 1)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sip {
    /// `A_ORDER` = `B_ORDER` (≥ 2).
    pub order: usize,
    /// `A_p_q`, in the order of `terms(order, 2)`.
    pub a: Vec<f64>,
    /// `B_p_q`, likewise.
    pub b: Vec<f64>,
    /// `AP_ORDER` = `BP_ORDER`.
    pub inverse_order: usize,
    /// `AP_p_q`, in the order of `terms(inverse_order, 1)`.
    pub ap: Vec<f64>,
    /// `BP_p_q`, likewise.
    pub bp: Vec<f64>,
}

/// A TAN (gnomonic) WCS with a CD matrix and optional SIP distortion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TanSip {
    /// Reference pixel, 1-based.
    pub crpix: [f64; 2],
    /// Sky position of the reference pixel (ra, dec), degrees.
    pub crval: [f64; 2],
    /// `[[CD1_1, CD1_2], [CD2_1, CD2_2]]`, degrees per pixel.
    pub cd: [[f64; 2]; 2],
    /// The distortion, if any.
    pub sip: Option<Sip>,
}

pub(crate) fn invert(m: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [
        [m[1][1] / det, -m[0][1] / det],
        [-m[1][0] / det, m[0][0] / det],
    ]
}

pub(crate) fn apply(m: [[f64; 2]; 2], v: [f64; 2]) -> [f64; 2] {
    [
        m[0][0] * v[0] + m[0][1] * v[1],
        m[1][0] * v[0] + m[1][1] * v[1],
    ]
}

impl TanSip {
    /// Distorted offsets `(u + A, v + B)` of offsets (u, v) from CRPIX.
    fn distort(&self, u: f64, v: f64) -> [f64; 2] {
        match &self.sip {
            None => [u, v],
            Some(s) => {
                let t = terms(s.order, 2);
                [u + poly(&t, &s.a, u, v), v + poly(&t, &s.b, u, v)]
            }
        }
    }

    /// (ra, dec) in degrees of 1-based pixel (x, y).
    pub fn pixel_to_sky(&self, pixel: [f64; 2]) -> [f64; 2] {
        let d = self.distort(pixel[0] - self.crpix[0], pixel[1] - self.crpix[1]);
        deproject(self.crval, apply(self.cd, d))
    }

    /// 1-based pixel of (ra, dec) in degrees; `None` on the far hemisphere. The inverse
    /// polynomials give the start, Newton steps on the forward transform the answer (to
    /// 1e-10 pixels where the distortion is invertible).
    pub fn sky_to_pixel(&self, sky: [f64; 2]) -> Option<[f64; 2]> {
        let xieta = project(self.crval, sky)?;
        let target = apply(invert(self.cd), xieta);
        let Some(s) = &self.sip else {
            return Some([target[0] + self.crpix[0], target[1] + self.crpix[1]]);
        };
        let t = terms(s.inverse_order, 1);
        let (mut u, mut v) = (
            target[0] + poly(&t, &s.ap, target[0], target[1]),
            target[1] + poly(&t, &s.bp, target[0], target[1]),
        );
        for _ in 0..20 {
            let f = self.distort(u, v);
            let (r0, r1) = (f[0] - target[0], f[1] - target[1]);
            if r0.abs() < 1e-11 && r1.abs() < 1e-11 {
                break;
            }
            let h = 1e-3;
            let fu = self.distort(u + h, v);
            let fv = self.distort(u, v + h);
            let j = [
                [(fu[0] - f[0]) / h, (fv[0] - f[0]) / h],
                [(fu[1] - f[1]) / h, (fv[1] - f[1]) / h],
            ];
            let step = apply(invert(j), [r0, r1]);
            u -= step[0];
            v -= step[1];
        }
        Some([u + self.crpix[0], v + self.crpix[1]])
    }

    /// FITS keyrecords (80 characters each) of this WCS: `WCSAXES`, `CTYPEi` (`RA---TAN-SIP`
    /// with a distortion, else `RA---TAN`), `CUNITi`, `RADESYS = 'ICRS'`, `CRPIXi`, `CRVALi`,
    /// `CDi_j`, and with a distortion `A_ORDER`, `A_p_q`, `B_ORDER`, `B_p_q`, `AP_ORDER`,
    /// `AP_p_q`, `BP_ORDER`, `BP_p_q`. Reals carry 17 significant digits.
    pub fn keyrecords(&self) -> Vec<String> {
        let suffix = if self.sip.is_some() { "-SIP" } else { "" };
        let text = |k: &str, v: &str, c: &str| format!("{k:<8}= {:<20} / {c}", format!("'{v}'"));
        let real = |k: &str, v: f64, c: &str| format!("{k:<8}= {v:>20.16E} / {c}");
        let int = |k: &str, v: usize, c: &str| format!("{k:<8}= {v:>20} / {c}");
        let mut r = vec![
            int("WCSAXES", 2, "number of WCS axes"),
            text(
                "CTYPE1",
                &format!("RA---TAN{suffix}"),
                "gnomonic projection",
            ),
            text(
                "CTYPE2",
                &format!("DEC--TAN{suffix}"),
                "gnomonic projection",
            ),
            text("CUNIT1", "deg", ""),
            text("CUNIT2", "deg", ""),
            text("RADESYS", "ICRS", ""),
            real("CRPIX1", self.crpix[0], "reference pixel x"),
            real("CRPIX2", self.crpix[1], "reference pixel y"),
            real("CRVAL1", self.crval[0], "[deg] RA at the reference pixel"),
            real("CRVAL2", self.crval[1], "[deg] Dec at the reference pixel"),
            real("CD1_1", self.cd[0][0], "[deg/pix]"),
            real("CD1_2", self.cd[0][1], "[deg/pix]"),
            real("CD2_1", self.cd[1][0], "[deg/pix]"),
            real("CD2_2", self.cd[1][1], "[deg/pix]"),
        ];
        if let Some(s) = &self.sip {
            for (name, order, min, coeffs) in [
                ("A", s.order, 2, &s.a),
                ("B", s.order, 2, &s.b),
                ("AP", s.inverse_order, 1, &s.ap),
                ("BP", s.inverse_order, 1, &s.bp),
            ] {
                r.push(int(&format!("{name}_ORDER"), order, "SIP polynomial order"));
                for (&(p, q), c) in terms(order, min).iter().zip(coeffs) {
                    r.push(real(&format!("{name}_{p}_{q}"), *c, "SIP coefficient"));
                }
            }
        }
        r.into_iter().map(|s| format!("{s:<80.80}")).collect()
    }
}

/// Settings of [`fit_tan_sip`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitParams {
    /// SIP order: 0 or 1 fits pure TAN (CRVAL and CD), ≥ 2 adds `A`/`B` polynomials.
    pub order: usize,
    /// Matches whose residual exceeds `clip` × the per-axis scatter are rejected, iteratively.
    pub clip: f64,
    /// At most this many rejection rounds.
    pub max_iterations: usize,
}

impl Default for FitParams {
    fn default() -> Self {
        Self {
            order: 2,
            clip: 3.0,
            max_iterations: 10,
        }
    }
}

/// A fitted solution.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// The WCS.
    pub wcs: TanSip,
    /// Which of the input matches the final fit used (the others were clipped).
    pub used: Vec<bool>,
    /// Matches used.
    pub n_used: usize,
    /// RMS of the 2-D residuals of the used matches on the sky, arcseconds.
    pub rms_arcsec: f64,
}

/// Fits a TAN-SIP WCS to matches (1-based `pixels`, `sky` (ra, dec) in degrees, `sigma` the
/// 1σ position error of each match in any unit common to all, or empty for equal weights)
/// with CRPIX fixed at `crpix`, starting from `crval` (e.g. the approximate WCS at `crpix`); the inverse
/// polynomials are fitted on a grid over `bounds` (`[[xmin, xmax], [ymin, ymax]]`, the image),
/// one order above the forward ones. Clipping acts on residuals divided by `sigma`. `None`
/// when fewer matches than twice the unknowns of
/// one axis survive, or the system is singular.
pub fn fit_tan_sip(
    pixels: &[[f64; 2]],
    sky: &[[f64; 2]],
    sigma: &[f64],
    crpix: [f64; 2],
    crval: [f64; 2],
    bounds: [[f64; 2]; 2],
    p: &FitParams,
) -> Option<Fit> {
    let order = p.order.max(1);
    let t = terms(order, 0);
    let scale = (bounds[0][1] - bounds[0][0])
        .abs()
        .max((bounds[1][1] - bounds[1][0]).abs())
        .max(1.0)
        / 2.0;
    let sig = |i: usize| sigma.get(i).copied().unwrap_or(1.0);
    let mut used = vec![true; pixels.len()];
    let mut crval = crval;
    let mut rounds = 0;
    loop {
        let n_used = used.iter().filter(|u| **u).count();
        if n_used < 2 * t.len() {
            return None;
        }
        // Re-centre the projection until the constant terms vanish.
        let mut coeffs = Vec::new();
        for _ in 0..6 {
            let mut ne = NormalEquations::new(t.len(), 2);
            for (i, ((px, s), _)) in pixels
                .iter()
                .zip(sky)
                .zip(&used)
                .enumerate()
                .filter(|(_, (_, u))| **u)
            {
                let xe = project(crval, *s)?;
                let (u, v) = ((px[0] - crpix[0]) / scale, (px[1] - crpix[1]) / scale);
                let row: Vec<f64> = t
                    .iter()
                    .map(|&(p, q)| u.powi(p as i32) * v.powi(q as i32))
                    .collect();
                ne.add(&row, &xe, 1.0 / (sig(i) * sig(i)));
            }
            coeffs = ne.solve()?;
            let c0 = [coeffs[0][0], coeffs[1][0]];
            crval = deproject(crval, c0);
            if c0[0].abs().max(c0[1].abs()) < 1e-12 {
                break;
            }
        }
        // Linear terms → CD; higher terms → CD · (A, B).
        let cd = [
            [coeffs[0][1] / scale, coeffs[0][2] / scale],
            [coeffs[1][1] / scale, coeffs[1][2] / scale],
        ];
        let cdi = invert(cd);
        let sip = (order >= 2).then(|| {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (k, &(pp, qq)) in t.iter().enumerate().skip(3) {
                let f = scale.powi((pp + qq) as i32);
                let ab = apply(cdi, [coeffs[0][k] / f, coeffs[1][k] / f]);
                a.push(ab[0]);
                b.push(ab[1]);
            }
            Sip {
                order,
                a,
                b,
                inverse_order: 0,
                ap: Vec::new(),
                bp: Vec::new(),
            }
        });
        let mut wcs = TanSip {
            crpix,
            crval,
            cd,
            sip,
        };
        // Residuals on the sky (tangent plane about CRVAL), arcsec.
        let resid: Vec<f64> = pixels
            .iter()
            .zip(sky)
            .map(|(px, s)| {
                let m = wcs.pixel_to_sky(*px);
                let (a, b) = (project(crval, m), project(crval, *s));
                match (a, b) {
                    (Some(a), Some(b)) => 3600.0 * (a[0] - b[0]).hypot(a[1] - b[1]),
                    _ => f64::INFINITY,
                }
            })
            .collect();
        let kept: Vec<f64> = resid
            .iter()
            .zip(&used)
            .filter(|(_, u)| **u)
            .map(|(r, _)| r * r)
            .collect();
        // Per-axis scale of the normalised residuals, as for a 2-D Gaussian, from the median
        // of their squares over every match (median of χ²₂ is 2 ln 2): robust to outliers,
        // and not shrunk by earlier rejections.
        let normalised: Vec<f64> = resid.iter().enumerate().map(|(i, r)| r / sig(i)).collect();
        let all: Vec<f64> = normalised.iter().map(|r| r * r).collect();
        let scatter = (median(&all) / (2.0 * std::f64::consts::LN_2)).sqrt();
        let limit = p.clip * scatter.max(1e-300);
        let new_used: Vec<bool> = normalised.iter().map(|r| *r <= limit).collect();
        rounds += 1;
        if new_used == used || rounds >= p.max_iterations {
            let n_used = used.iter().filter(|u| **u).count();
            let rms_arcsec = (kept.iter().sum::<f64>() / kept.len() as f64).sqrt();
            if let Some(s) = &mut wcs.sip {
                fit_inverse(s, bounds, crpix);
            }
            return Some(Fit {
                wcs,
                used,
                n_used,
                rms_arcsec,
            });
        }
        used = new_used;
    }
}

/// Fits `AP`, `BP` (one order above `A`, `B`) on a 25 × 25 grid over `bounds`.
pub(crate) fn fit_inverse(s: &mut Sip, bounds: [[f64; 2]; 2], crpix: [f64; 2]) {
    let order = s.order + 1;
    let ti = terms(order, 1);
    let tf = terms(s.order, 2);
    let scale = (bounds[0][1] - bounds[0][0])
        .abs()
        .max((bounds[1][1] - bounds[1][0]).abs())
        .max(1.0)
        / 2.0;
    let mut ne = NormalEquations::new(ti.len(), 2);
    let n = 25;
    for i in 0..n {
        for j in 0..n {
            let x = bounds[0][0] + (bounds[0][1] - bounds[0][0]) * i as f64 / (n - 1) as f64;
            let y = bounds[1][0] + (bounds[1][1] - bounds[1][0]) * j as f64 / (n - 1) as f64;
            let (u, v) = (x - crpix[0], y - crpix[1]);
            let (uu, vv) = (u + poly(&tf, &s.a, u, v), v + poly(&tf, &s.b, u, v));
            let row: Vec<f64> = ti
                .iter()
                .map(|&(p, q)| (uu / scale).powi(p as i32) * (vv / scale).powi(q as i32))
                .collect();
            ne.add(&row, &[u - uu, v - vv], 1.0);
        }
    }
    if let Some(c) = ne.solve() {
        let unscale = |k: usize, c: f64| c / scale.powi((ti[k].0 + ti[k].1) as i32);
        s.inverse_order = order;
        s.ap = c[0]
            .iter()
            .enumerate()
            .map(|(k, c)| unscale(k, *c))
            .collect();
        s.bp = c[1]
            .iter()
            .enumerate()
            .map(|(k, c)| unscale(k, *c))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal, Uniform};

    fn truth() -> TanSip {
        let s = 0.2 / 3600.0;
        let r = 0.7f64.to_radians();
        let mut sip = Sip {
            order: 3,
            a: vec![0.0; 7],
            b: vec![0.0; 7],
            inverse_order: 0,
            ap: vec![],
            bp: vec![],
        };
        // A_2_0, A_0_2, A_2_1 and B_1_1, B_0_3: up to several pixels at the corners.
        sip.a[0] = 2e-6;
        sip.a[2] = -1e-6;
        sip.a[4] = 3e-9;
        sip.b[1] = 1.5e-6;
        sip.b[6] = -2e-9;
        TanSip {
            crpix: [512.5, 1024.5],
            crval: [150.1, 2.2],
            cd: [
                [-s * r.cos() * 1.002, s * r.sin()],
                [s * r.sin(), s * r.cos()],
            ],
            sip: Some(sip),
        }
    }

    #[test]
    fn projection_round_trips_and_knows_its_hemisphere() {
        let c = [359.9, -45.0];
        for s in [[0.1, -44.5], [359.0, -46.0], [359.9, -45.0]] {
            let xe = project(c, s).unwrap();
            let back = deproject(c, xe);
            assert!((back[0] - s[0]).abs() < 1e-11 && (back[1] - s[1]).abs() < 1e-11);
        }
        assert!(project(c, [179.9, 45.0]).is_none());
        // One degree along a meridian from the equator: ξ = 0, η = tan(1°) in degrees.
        let xe = project([10.0, 0.0], [10.0, 1.0]).unwrap();
        assert!(
            xe[0].abs() < 1e-15 && (xe[1] - 1f64.to_radians().tan().to_degrees()).abs() < 1e-12
        );
    }

    #[test]
    fn sky_to_pixel_inverts_pixel_to_sky_with_distortion() {
        let mut w = truth();
        if let Some(s) = &mut w.sip {
            fit_inverse(s, [[0.5, 1024.5], [0.5, 2048.5]], w.crpix);
        }
        for p in [[1.0, 1.0], [1024.0, 2048.0], [300.25, 1700.75]] {
            let q = w.sky_to_pixel(w.pixel_to_sky(p)).unwrap();
            assert!(
                (q[0] - p[0]).abs() < 1e-8 && (q[1] - p[1]).abs() < 1e-8,
                "{p:?} {q:?}"
            );
        }
    }

    fn matches(w: &TanSip, n: usize, noise_px: f64, seed: u64) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ux = Uniform::new(0.5, 1024.5).unwrap();
        let uy = Uniform::new(0.5, 2048.5).unwrap();
        let g = Normal::new(0.0, noise_px.max(1e-300)).unwrap();
        let mut px = Vec::new();
        let mut sky = Vec::new();
        for _ in 0..n {
            let p = [ux.sample(&mut rng), uy.sample(&mut rng)];
            sky.push(w.pixel_to_sky(p));
            let e = if noise_px > 0.0 {
                [g.sample(&mut rng), g.sample(&mut rng)]
            } else {
                [0.0, 0.0]
            };
            px.push([p[0] + e[0], p[1] + e[1]]);
        }
        (px, sky)
    }

    #[test]
    fn recovers_a_known_distortion_exactly_from_noiseless_matches() {
        let w = truth();
        let (px, sky) = matches(&w, 200, 0.0, 1);
        let start = [w.crval[0] + 0.01, w.crval[1] - 0.01];
        let p = FitParams {
            order: 3,
            ..FitParams::default()
        };
        let f = fit_tan_sip(
            &px,
            &sky,
            &[],
            w.crpix,
            start,
            [[0.5, 1024.5], [0.5, 2048.5]],
            &p,
        )
        .unwrap();
        assert!(f.rms_arcsec < 1e-6, "{}", f.rms_arcsec);
        assert!((f.wcs.crval[0] - w.crval[0]).abs() < 1e-10);
        for (a, b) in f.wcs.cd.iter().flatten().zip(w.cd.iter().flatten()) {
            assert!((a - b).abs() < 1e-14, "{a} {b}");
        }
        let (fs, ts) = (f.wcs.sip.unwrap(), w.sip.unwrap());
        for (a, b) in fs.a.iter().zip(&ts.a).chain(fs.b.iter().zip(&ts.b)) {
            assert!((a - b).abs() < 1e-12, "{a} {b}");
        }
        assert_eq!(fs.inverse_order, 4);
    }

    #[test]
    fn clips_outliers_and_reports_the_scatter_of_the_rest() {
        let w = truth();
        let (mut px, sky) = matches(&w, 300, 0.05, 2);
        for p in px.iter_mut().take(15) {
            p[0] += 7.0;
        }
        let p = FitParams {
            order: 3,
            ..FitParams::default()
        };
        let f = fit_tan_sip(
            &px,
            &sky,
            &[],
            w.crpix,
            w.crval,
            [[0.5, 1024.5], [0.5, 2048.5]],
            &p,
        )
        .unwrap();
        assert!(f.used[..15].iter().all(|u| !u), "outliers kept");
        assert!(f.n_used >= 280, "{}", f.n_used);
        // 2-D RMS of 0.05 px per axis noise: 0.05 √2 px × 0.2″/px ≈ 0.014″.
        assert!((f.rms_arcsec - 0.0141).abs() < 0.002, "{}", f.rms_arcsec);
        // The fitted WCS is within the noise's averaging of the truth: 0.05 px per match
        // over 285 matches and 20 unknowns is ~0.02 px RMS on the image, more at the corners.
        let (mut sum, mut worst, mut n) = (0.0, 0.0f64, 0);
        for i in 0..=10 {
            for j in 0..=10 {
                let q = [1.0 + 102.3 * i as f64, 1.0 + 204.7 * j as f64];
                let a = f.wcs.sky_to_pixel(w.pixel_to_sky(q)).unwrap();
                let d = (a[0] - q[0]).hypot(a[1] - q[1]);
                sum += d * d;
                worst = worst.max(d);
                n += 1;
            }
        }
        let rms = (sum / n as f64).sqrt();
        assert!(rms < 0.03 && worst < 0.12, "rms {rms} worst {worst}");
    }

    #[test]
    fn too_few_matches_give_no_fit() {
        let w = truth();
        let (px, sky) = matches(&w, 11, 0.0, 3);
        let p = FitParams::default();
        assert!(
            fit_tan_sip(
                &px,
                &sky,
                &[],
                w.crpix,
                w.crval,
                [[0.5, 1024.5], [0.5, 2048.5]],
                &p
            )
            .is_none()
        );
    }

    #[test]
    fn keyrecords_are_read_by_wcslib_to_the_same_transform() {
        let mut w = truth();
        if let Some(s) = &mut w.sip {
            fit_inverse(s, [[0.5, 1024.5], [0.5, 2048.5]], w.crpix);
        }
        let text: String = w.keyrecords().concat();
        assert!(w.keyrecords().iter().all(|r| r.len() == 80));
        let lib = skypipe_wcs::Wcs::from_header("test", &text).unwrap();
        assert_eq!(lib.ctypes(), ["RA---TAN-SIP", "DEC--TAN-SIP"]);
        let pix = [[1.0, 1.0], [1024.0, 2048.0], [700.5, 99.25]];
        let sky = lib.pixel_to_sky(&pix).unwrap();
        for (p, s) in pix.iter().zip(sky) {
            let s = s.unwrap();
            let ours = w.pixel_to_sky(*p);
            let d = 3600.0 * ((s[0] - ours[0]) * s[1].to_radians().cos()).hypot(s[1] - ours[1]);
            assert!(d < 1e-7, "{p:?}: {d} arcsec");
        }
        let pure = TanSip { sip: None, ..w };
        let text: String = pure.keyrecords().concat();
        let lib = skypipe_wcs::Wcs::from_header("test", &text).unwrap();
        assert_eq!(lib.ctypes(), ["RA---TAN", "DEC--TAN"]);
    }
}
