//! One astrometric solution for a whole exposure (all CCDs of a visit) and the per-CCD TAN-SIP
//! WCSs it implies.
//!
//! Each CCD sits in the focal plane through a [`Placement`] (an affine map from its 1-based
//! pixels to focal-plane coordinates, in nominal pixels; the caller derives it from the camera
//! geometry). The exposure model maps a focal-plane point `X` to the sky as a TAN-SIP WCS with
//! `CRPIX` at the focal-plane origin: `(ξ, η) = CD · (X + D(X))`, `D` a polynomial of order
//! 2..n shared by every CCD (the optical distortion), `CD` the common rotation and scale,
//! `CRVAL` the boresight. [`fit_exposure`] fits it to the matches of every CCD at once, with
//! iterative clipping, so a CCD with few or no matches of its own is still placed by the
//! others; [`ExposureFit::ccd_wcs`] writes the model, composed with one CCD's placement, as that
//! CCD's TAN-SIP exactly (`CRPIX` at the focal-plane origin in the CCD's pixel frame, `CD` =
//! the model's `CD` times the placement's matrix, SIP = the distortion in the CCD's frame).

use crate::tansip::{self, FitParams, Sip, TanSip, apply, fit_inverse, invert, terms};

/// Where a CCD sits in the focal plane: focal-plane point `X = matrix · p + offset` of the
/// 1-based pixel `p`, in nominal pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Linear part (a rotation, possibly with a flip, for a rigid camera).
    pub matrix: [[f64; 2]; 2],
    /// Focal-plane point of pixel (0, 0).
    pub offset: [f64; 2],
}

impl Placement {
    /// The focal-plane point of 1-based pixel `p`.
    pub fn to_focal(&self, p: [f64; 2]) -> [f64; 2] {
        let m = apply(self.matrix, p);
        [m[0] + self.offset[0], m[1] + self.offset[1]]
    }

    /// A rigid placement: pixel `centre` lands on focal-plane point `focal_centre`, and the
    /// linear part is the orthogonal matrix nearest to `jacobian` (the CCD's local map from
    /// pixels to focal-plane units, e.g. from its header WCS) with the same handedness. The
    /// jacobian's scale and shear are dropped: every pixel of a rigid camera has the same
    /// size, and differences of plate scale across the field are the shared distortion's.
    /// `None` for a singular jacobian.
    pub fn rigid(
        centre: [f64; 2],
        focal_centre: [f64; 2],
        jacobian: [[f64; 2]; 2],
    ) -> Option<Self> {
        let j = jacobian;
        let det = j[0][0] * j[1][1] - j[0][1] * j[1][0];
        if !(det.is_finite() && det != 0.0) {
            return None;
        }
        // With a flip, J · diag(1, −1) has a positive determinant: its nearest rotation R
        // gives Q = R · diag(1, −1).
        let flip = if det < 0.0 { -1.0 } else { 1.0 };
        let k = [[j[0][0], j[0][1] * flip], [j[1][0], j[1][1] * flip]];
        let angle = (k[1][0] - k[0][1]).atan2(k[0][0] + k[1][1]);
        let (c, s) = (angle.cos(), angle.sin());
        let matrix = [[c, -s * flip], [s, c * flip]];
        let m = apply(matrix, centre);
        Some(Self {
            matrix,
            offset: [focal_centre[0] - m[0], focal_centre[1] - m[1]],
        })
    }

    /// The four outer corners of a `size` = (width, height) CCD in the focal plane.
    pub fn corners(&self, size: [f64; 2]) -> [[f64; 2]; 4] {
        let (w, h) = (size[0] + 0.5, size[1] + 0.5);
        [[0.5, 0.5], [w, 0.5], [w, h], [0.5, h]].map(|p| self.to_focal(p))
    }
}

/// One CCD's part of an exposure fit: its placement, size and matches.
#[derive(Debug, Clone, PartialEq)]
pub struct CcdMatches {
    /// Where it sits in the focal plane.
    pub placement: Placement,
    /// (width, height), pixels.
    pub size: [f64; 2],
    /// 1-based pixel positions of the matched sources.
    pub pixels: Vec<[f64; 2]>,
    /// (ra, dec) of their reference stars, degrees.
    pub sky: Vec<[f64; 2]>,
    /// 1σ position error of each match, pixels (per coordinate).
    pub sigma: Vec<f64>,
}

/// How one CCD's matches fared in the exposure fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CcdResiduals {
    /// Matches kept by the clipping.
    pub n_used: usize,
    /// RMS of their 2-D residuals, arcsec (NaN without matches).
    pub rms_arcsec: f64,
}

/// The fitted exposure model.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureFit {
    /// Focal plane → sky: a TAN-SIP WCS with `CRPIX` = (0, 0) at the focal-plane origin.
    pub model: TanSip,
    /// Per CCD, in the order given.
    pub ccds: Vec<CcdResiduals>,
    /// Matches used in all.
    pub n_used: usize,
    /// RMS of the used matches' 2-D residuals, arcsec.
    pub rms_arcsec: f64,
    /// Focal-plane positions of the used matches: where the distortion is constrained.
    pub used_focal: Vec<[f64; 2]>,
}

/// Fits the exposure model to the matches of every CCD: SIP order at most `p.order`, lowered
/// until at least four matches per unknown of an axis survive the clipping (order 1: no
/// distortion), starting from the boresight guess `crval`. `None` when even order 1 has too
/// few matches or the system is singular.
pub fn fit_exposure(ccds: &[CcdMatches], crval: [f64; 2], p: &FitParams) -> Option<ExposureFit> {
    let mut focal = Vec::new();
    let mut sky = Vec::new();
    let mut sigma = Vec::new();
    let mut owner = Vec::new();
    let mut bounds = [[f64::INFINITY, f64::NEG_INFINITY]; 2];
    for (k, c) in ccds.iter().enumerate() {
        for corner in c.placement.corners(c.size) {
            for a in 0..2 {
                bounds[a][0] = bounds[a][0].min(corner[a]);
                bounds[a][1] = bounds[a][1].max(corner[a]);
            }
        }
        for ((px, s), e) in c.pixels.iter().zip(&c.sky).zip(&c.sigma) {
            focal.push(c.placement.to_focal(*px));
            sky.push(*s);
            sigma.push(*e);
            owner.push(k);
        }
    }
    if focal.is_empty() {
        return None;
    }
    let mut order = p.order.max(1);
    let fit = loop {
        let fp = FitParams { order, ..*p };
        match tansip::fit_tan_sip(&focal, &sky, &sigma, [0.0, 0.0], crval, bounds, &fp) {
            Some(f) if order == 1 || f.n_used >= 4 * terms(order, 0).len() => break f,
            _ if order > 1 => order -= 1,
            _ => return None,
        }
    };
    let mut per = vec![(0usize, 0.0f64); ccds.len()];
    let mut used_focal = Vec::with_capacity(fit.n_used);
    for i in (0..focal.len()).filter(|&i| fit.used[i]) {
        let m = fit.wcs.pixel_to_sky(focal[i]);
        let r = arcsec_between(fit.wcs.crval, m, sky[i]);
        per[owner[i]].0 += 1;
        per[owner[i]].1 += r * r;
        used_focal.push(focal[i]);
    }
    Some(ExposureFit {
        model: fit.wcs,
        ccds: per
            .into_iter()
            .map(|(n, s)| CcdResiduals {
                n_used: n,
                rms_arcsec: if n > 0 {
                    (s / n as f64).sqrt()
                } else {
                    f64::NAN
                },
            })
            .collect(),
        n_used: fit.n_used,
        rms_arcsec: fit.rms_arcsec,
        used_focal,
    })
}

/// Distance in arcsec between two sky points, on the tangent plane about `centre`.
fn arcsec_between(centre: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    match (tansip::project(centre, a), tansip::project(centre, b)) {
        (Some(a), Some(b)) => 3600.0 * (a[0] - b[0]).hypot(a[1] - b[1]),
        _ => f64::INFINITY,
    }
}

/// `coeffs` (terms `terms(order, 2)`) of a polynomial in (X, Y), rewritten as a polynomial in
/// (u, v) with `(X, Y) = m · (u, v)`: every term keeps its total degree.
fn compose_linear(order: usize, coeffs: &[f64], m: [[f64; 2]; 2]) -> Vec<f64> {
    let t = terms(order, 2);
    let mut out = vec![0.0; t.len()];
    let index = |p: usize, q: usize| t.iter().position(|&x| x == (p, q)).expect("same degree");
    for (&(p, q), &c) in t.iter().zip(coeffs) {
        if c == 0.0 {
            continue;
        }
        // (m00 u + m01 v)^p (m10 u + m11 v)^q, expanded binomially.
        for i in 0..=p {
            let a = c * binomial(p, i) * m[0][0].powi(i as i32) * m[0][1].powi((p - i) as i32);
            for j in 0..=q {
                let b = binomial(q, j) * m[1][0].powi(j as i32) * m[1][1].powi((q - j) as i32);
                out[index(i + j, p + q - i - j)] += a * b;
            }
        }
    }
    out
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

impl ExposureFit {
    /// The TAN-SIP WCS of a CCD at `placement` with `size` = (width, height): the model
    /// composed with the placement, exactly. `CRPIX` is the focal-plane origin in the CCD's
    /// pixels (usually off the CCD), `CRVAL` the model's; the inverse polynomials are fitted
    /// over the CCD.
    pub fn ccd_wcs(&self, placement: &Placement, size: [f64; 2]) -> TanSip {
        let m = placement.matrix;
        let mi = invert(m);
        let o = apply(mi, placement.offset);
        let crpix = [-o[0], -o[1]];
        let c = self.model.cd;
        let cd = [
            [
                c[0][0] * m[0][0] + c[0][1] * m[1][0],
                c[0][0] * m[0][1] + c[0][1] * m[1][1],
            ],
            [
                c[1][0] * m[0][0] + c[1][1] * m[1][0],
                c[1][0] * m[0][1] + c[1][1] * m[1][1],
            ],
        ];
        let sip = self.model.sip.as_ref().map(|s| {
            // u + a(u) = m⁻¹ (X + D(X)) with X = m u: a(u) = m⁻¹ D(m u).
            let da = compose_linear(s.order, &s.a, m);
            let db = compose_linear(s.order, &s.b, m);
            let (mut a, mut b) = (Vec::with_capacity(da.len()), Vec::with_capacity(db.len()));
            for (x, y) in da.into_iter().zip(db) {
                let r = apply(mi, [x, y]);
                a.push(r[0]);
                b.push(r[1]);
            }
            let mut sip = Sip {
                order: s.order,
                a,
                b,
                inverse_order: 0,
                ap: Vec::new(),
                bp: Vec::new(),
            };
            fit_inverse(
                &mut sip,
                [[0.5, size[0] + 0.5], [0.5, size[1] + 0.5]],
                crpix,
            );
            sip
        });
        TanSip {
            crpix,
            crval: self.model.crval,
            cd,
            sip,
        }
    }

    /// Whether the model's distortion is interpolated, not extrapolated, at the centre of a
    /// CCD at `placement`: each of the four quadrants about that centre (in the focal plane)
    /// holds a used match. Always true without distortion, whose linear model extrapolates
    /// safely.
    pub fn covers(&self, placement: &Placement, size: [f64; 2]) -> bool {
        if self.model.sip.is_none() {
            return true;
        }
        let c = placement.to_focal([(size[0] + 1.0) / 2.0, (size[1] + 1.0) / 2.0]);
        let mut quadrants = [false; 4];
        for f in &self.used_focal {
            quadrants[usize::from(f[0] >= c[0]) + 2 * usize::from(f[1] >= c[1])] = true;
        }
        quadrants.iter().all(|q| *q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal, Uniform};

    const SIZE: [f64; 2] = [400.0, 800.0];

    /// A 2 × 2 camera of 400 × 800 CCDs with 40-pixel gaps, slightly rotated each, and one
    /// flipped in x (read out from the other side).
    fn camera() -> Vec<Placement> {
        let mut out = Vec::new();
        for (k, (col, row)) in [(0, 0), (1, 0), (0, 1), (1, 1)].into_iter().enumerate() {
            let angle = (0.002 * k as f64 - 0.003).to_radians();
            let (c, s) = (angle.cos(), angle.sin());
            let centre_focal = [
                (col as f64 - 0.5) * (SIZE[0] + 40.0),
                (row as f64 - 0.5) * (SIZE[1] + 40.0),
            ];
            let flip = if k == 3 { -1.0 } else { 1.0 };
            let j = [[c * flip, -s], [s * flip, c]];
            out.push(Placement::rigid([200.5, 400.5], centre_focal, j).expect("regular jacobian"));
        }
        out
    }

    /// The true exposure model: rotated, scaled, with a cubic distortion of a few pixels at
    /// the focal plane's edge.
    fn model() -> TanSip {
        let s = 0.2 / 3600.0;
        let r = 0.3f64.to_radians();
        let mut a = vec![0.0; 7];
        let mut b = vec![0.0; 7];
        a[0] = 3e-6;
        a[3] = 2e-9; // A_3_0
        a[5] = 2e-9; // A_1_2
        b[1] = -1e-6;
        b[4] = 2e-9; // B_2_1
        b[6] = 2e-9; // B_0_3
        TanSip {
            crpix: [0.0, 0.0],
            crval: [150.0, 2.0],
            cd: [[-s * r.cos(), s * r.sin()], [s * r.sin(), s * r.cos()]],
            sip: Some(Sip {
                order: 3,
                a,
                b,
                inverse_order: 0,
                ap: vec![],
                bp: vec![],
            }),
        }
    }

    fn matches(counts: [usize; 4], noise_px: f64, seed: u64) -> Vec<CcdMatches> {
        let truth = model();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ux = Uniform::new(0.5, SIZE[0] + 0.5).unwrap();
        let uy = Uniform::new(0.5, SIZE[1] + 0.5).unwrap();
        let g = Normal::new(0.0, noise_px.max(1e-300)).unwrap();
        camera()
            .into_iter()
            .zip(counts)
            .map(|(placement, n)| {
                let mut m = CcdMatches {
                    placement,
                    size: SIZE,
                    pixels: vec![],
                    sky: vec![],
                    sigma: vec![],
                };
                for _ in 0..n {
                    let p = [ux.sample(&mut rng), uy.sample(&mut rng)];
                    m.sky.push(truth.pixel_to_sky(placement.to_focal(p)));
                    let e = if noise_px > 0.0 {
                        [g.sample(&mut rng), g.sample(&mut rng)]
                    } else {
                        [0.0; 2]
                    };
                    m.pixels.push([p[0] + e[0], p[1] + e[1]]);
                    m.sigma.push(noise_px.max(0.01));
                }
                m
            })
            .collect()
    }

    /// Largest distance (pixels) between the CCD WCS's sky positions and the truth's, on a grid
    /// over the CCD.
    fn worst_px(w: &TanSip, placement: &Placement) -> f64 {
        let truth = model();
        let mut worst = 0.0f64;
        for i in 0..=8 {
            for j in 0..=8 {
                let p = [
                    0.5 + SIZE[0] * i as f64 / 8.0,
                    0.5 + SIZE[1] * j as f64 / 8.0,
                ];
                let want = truth.pixel_to_sky(placement.to_focal(p));
                let got = w.pixel_to_sky(p);
                worst = worst.max(arcsec_between(truth.crval, want, got) / 0.2);
            }
        }
        worst
    }

    #[test]
    fn rigid_placement_keeps_rotation_and_handedness_and_drops_scale() {
        let r = 0.1f64;
        let (c, s) = (r.cos(), r.sin());
        // Scaled by 1.01 with a little shear, flipped in x.
        let j = [[-1.01 * c, -1.01 * s + 0.001], [-1.01 * s, 1.01 * c]];
        let p = Placement::rigid([10.0, 20.0], [100.0, -50.0], j).unwrap();
        let q = p.matrix;
        assert!((q[0][0] * q[1][1] - q[0][1] * q[1][0] + 1.0).abs() < 1e-12);
        assert!(
            (q[0][0] + c).abs() < 1e-3 && (q[1][0] + s).abs() < 1e-3,
            "{q:?}"
        );
        let f = p.to_focal([10.0, 20.0]);
        assert!((f[0] - 100.0).abs() < 1e-12 && (f[1] + 50.0).abs() < 1e-12);
        assert!(Placement::rigid([0.0; 2], [0.0; 2], [[1.0, 2.0], [2.0, 4.0]]).is_none());
    }

    #[test]
    fn ccd_wcs_is_the_model_composed_with_the_placement_and_wcslib_reads_it() {
        let fit = ExposureFit {
            model: model(),
            ccds: vec![],
            n_used: 0,
            rms_arcsec: 0.0,
            used_focal: vec![],
        };
        for placement in camera() {
            let w = fit.ccd_wcs(&placement, SIZE);
            assert!(worst_px(&w, &placement) < 1e-9, "{w:?}");
            let lib = skypipe_wcs::Wcs::from_header("ccd", &w.keyrecords().concat()).unwrap();
            let pix = [[1.0, 1.0], [400.0, 800.0], [123.5, 456.5]];
            for (p, s) in pix.iter().zip(lib.pixel_to_sky(&pix).unwrap()) {
                let d = arcsec_between(w.crval, w.pixel_to_sky(*p), s.unwrap());
                assert!(d < 1e-7, "{p:?}: {d} arcsec");
                let back = w.sky_to_pixel(s.unwrap()).unwrap();
                assert!((back[0] - p[0]).hypot(back[1] - p[1]) < 1e-7);
            }
        }
    }

    #[test]
    fn recovers_the_model_exactly_and_places_a_ccd_without_stars() {
        // CCD 1 has no match at all, CCD 2 only three.
        let m = matches([150, 0, 3, 150], 0.0, 1);
        let p = FitParams {
            order: 3,
            ..FitParams::default()
        };
        let fit = fit_exposure(&m, [150.01, 1.99], &p).unwrap();
        assert!(fit.rms_arcsec < 1e-6, "{}", fit.rms_arcsec);
        // (Noise-free residuals are rounding errors: clipping at 3σ of those drops some.)
        assert!(fit.n_used > 200, "{}", fit.n_used);
        assert_eq!(fit.ccds[1].n_used, 0);
        assert!(fit.ccds[1].rms_arcsec.is_nan());
        for c in &m {
            let w = fit.ccd_wcs(&c.placement, c.size);
            assert!(
                worst_px(&w, &c.placement) < 1e-6,
                "{}",
                worst_px(&w, &c.placement)
            );
        }
        // Without noise even the extrapolation is exact, but CCD 1's outer quadrant holds no
        // match: its distortion is extrapolated there.
        assert!(fit.covers(&m[0].placement, SIZE) && fit.covers(&m[3].placement, SIZE));
        assert!(!fit.covers(&m[1].placement, SIZE));
    }

    #[test]
    fn a_ccd_with_few_stars_is_placed_better_than_its_own_fit_could() {
        let m = matches([120, 120, 120, 7], 0.05, 2);
        let p = FitParams {
            order: 3,
            ..FitParams::default()
        };
        let fit = fit_exposure(&m, [150.0, 2.0], &p).unwrap();
        let poor = &m[3];
        let w = fit.ccd_wcs(&poor.placement, poor.size);
        let exposure_err = worst_px(&w, &poor.placement);
        assert!(exposure_err < 0.05, "{exposure_err}");
        // Its own seven matches fit at best a pure TAN, with the noise of seven stars and none
        // of the distortion.
        let centre = [(SIZE[0] + 1.0) / 2.0, (SIZE[1] + 1.0) / 2.0];
        let own = tansip::fit_tan_sip(
            &poor.pixels,
            &poor.sky,
            &poor.sigma,
            centre,
            poor.sky[0],
            [[0.5, SIZE[0] + 0.5], [0.5, SIZE[1] + 0.5]],
            &FitParams {
                order: 1,
                ..FitParams::default()
            },
        );
        let own_err = own.map_or(f64::INFINITY, |f| worst_px(&f.wcs, &poor.placement));
        assert!(
            own_err > 3.0 * exposure_err,
            "own {own_err} exposure {exposure_err}"
        );
    }

    #[test]
    fn clips_a_bad_match_and_lowers_the_order_for_few_matches() {
        let mut m = matches([60, 60, 60, 60], 0.02, 3);
        m[1].pixels[0][0] += 5.0;
        let p = FitParams {
            order: 3,
            ..FitParams::default()
        };
        let fit = fit_exposure(&m, [150.0, 2.0], &p).unwrap();
        // The 5-pixel outlier is dropped (with the odd 3σ match of the Gaussian noise), and
        // the model stays on the truth.
        assert!(
            fit.ccds[1].n_used <= 59 && fit.n_used >= 230,
            "{:?}",
            fit.ccds
        );
        assert!(fit.rms_arcsec < 0.01, "{}", fit.rms_arcsec);
        let w = fit.ccd_wcs(&m[1].placement, SIZE);
        assert!(worst_px(&w, &m[1].placement) < 0.03);
        assert_eq!(fit.model.sip.as_ref().map(|s| s.order), Some(3));
        // 30 matches: order 3 has 10 unknowns per axis, order 2 six → order 2 (≥ 24 matches).
        let few = matches([10, 10, 5, 5], 0.0, 4);
        let fit = fit_exposure(&few, [150.0, 2.0], &p).unwrap();
        assert_eq!(fit.model.sip.as_ref().map(|s| s.order), Some(2));
        assert!(fit_exposure(&matches([1, 1, 1, 0], 0.0, 5), [150.0, 2.0], &p).is_none());
    }

    #[test]
    fn a_ccd_outside_the_matched_area_is_not_covered_unless_the_model_is_linear() {
        let m = matches([100, 0, 100, 0], 0.0, 6);
        let fit = fit_exposure(&m, [150.0, 2.0], &FitParams::default()).unwrap();
        assert!(fit.covers(&m[0].placement, SIZE));
        assert!(!fit.covers(&m[1].placement, SIZE));
        let linear = FitParams {
            order: 1,
            ..FitParams::default()
        };
        let fit = fit_exposure(&m, [150.0, 2.0], &linear).unwrap();
        assert!(fit.covers(&m[1].placement, SIZE));
    }
}
