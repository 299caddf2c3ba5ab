use super::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f64::consts::PI;

const NO_DATA: u32 = 1 << 31;

fn gaussian_noise(rng: &mut ChaCha8Rng, n: usize, sigma: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            (sigma * (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()) as f32
        })
        .collect()
}

fn map_of(width: usize, height: usize, step: usize, f: impl Fn(f64, f64) -> [f64; 2]) -> CoarseMap {
    CoarseMap::new(width, height, step, |p| {
        p.iter().map(|q| f(q[0], q[1])).collect()
    })
    .unwrap()
}

struct Planes {
    image: Vec<f32>,
    variance: Vec<f32>,
    mask: Vec<u32>,
    width: usize,
    height: usize,
}

impl Planes {
    fn new(image: Vec<f32>, width: usize, height: usize) -> Self {
        let n = width * height;
        Self {
            image,
            variance: vec![1.0; n],
            mask: vec![0; n],
            width,
            height,
        }
    }
    fn source(&self) -> Source<'_> {
        Source {
            image: &self.image,
            variance: &self.variance,
            mask: &self.mask,
            width: self.width,
            height: self.height,
        }
    }
}

#[test]
fn lanczos3_known_values() {
    assert_eq!(lanczos3(0.0), 1.0);
    for k in [1.0, 2.0, 3.0, 3.5, -1.0, -2.0] {
        assert!(lanczos3(k).abs() < 1e-15, "L({k}) = {}", lanczos3(k));
    }
    // sinc(½) sinc(⅙) = (2/π)(3/π) and sinc(3/2) sinc(½) = −(2/3π)(2/π).
    assert!((lanczos3(0.5) - 6.0 / (PI * PI)).abs() < 1e-14);
    assert!((lanczos3(1.5) + 4.0 / (3.0 * PI * PI)).abs() < 1e-14);
    assert!((lanczos3(-0.7) - lanczos3(0.7)).abs() < 1e-15);
    // Tabulated weights against the exact kernel, normalised, over the fractional offsets.
    let mut worst: f64 = 0.0;
    for i in 0..20_000 {
        let f = i as f64 / 20_000.0;
        let w = weights_at(table(), f);
        let exact: Vec<f64> = (0..6).map(|k| lanczos3(f + 2.0 - k as f64)).collect();
        let sum: f64 = exact.iter().sum();
        for k in 0..6 {
            worst = worst.max((w[k] - exact[k] / sum).abs());
        }
    }
    assert!(worst < 1e-5, "tabulated weight error {worst}");
    for x in [0.0, 0.25, 0.5, 0.999, 17.3, -4.6] {
        let (w, first) = lanczos3_weights(x);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(first, x.floor() as i64 - 2);
        // Unnormalised weights are the kernel at the tap offsets.
        let raw: Vec<f64> = (0..6).map(|k| lanczos3(x - (first + k) as f64)).collect();
        let s: f64 = raw.iter().sum();
        for k in 0..6 {
            assert!((w[k] - raw[k] / s).abs() < 1e-5, "x {x} tap {k}");
        }
    }
    assert_eq!(lanczos3_weights(5.0).0, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn identity_mapping_returns_the_input() {
    let (w, h) = (40, 30);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut p = Planes::new(gaussian_noise(&mut rng, w * h, 10.0), w, h);
    p.image.iter_mut().for_each(|v| *v += 100.0);
    p.variance = (0..w * h).map(|i| 1.0 + i as f32 * 0.01).collect();
    p.mask[5 * w + 7] = 2;
    let map = map_of(w, h, 16, |x, y| [x, y]);
    let out = warp(&p.source(), &map, &WarpParams::default()).unwrap();
    for i in 0..w * h {
        assert!(
            (out.image[i] - p.image[i]).abs() <= 1e-6 * p.image[i].abs(),
            "pixel {i}"
        );
        assert!((out.variance[i] - p.variance[i]).abs() <= 1e-6 * p.variance[i]);
    }
    assert_eq!(out.mask, p.mask);
}

#[test]
fn integer_shift_returns_the_shifted_input() {
    let (w, h) = (32, 24);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let p = Planes::new(gaussian_noise(&mut rng, w * h, 1.0), w, h);
    let map = map_of(w, h, 8, |x, y| [x + 3.0, y - 2.0]);
    let out = warp(&p.source(), &map, &WarpParams::default()).unwrap();
    for y in 0..h {
        for x in 0..w {
            let o = y * w + x;
            if x + 3 < w && y >= 2 {
                assert_eq!(out.image[o], p.image[(y - 2) * w + x + 3], "({x}, {y})");
                assert_eq!(out.mask[o], 0);
            } else {
                assert!(out.image[o].is_nan() && out.variance[o].is_nan());
                assert_eq!(out.mask[o], NO_DATA);
            }
        }
    }
}

#[test]
fn subpixel_shift_of_a_band_limited_image_matches_the_analytic_one() {
    let (w, h) = (96, 96);
    let f = |x: f64, y: f64| (2.0 * PI * x / 11.0 + 0.3).cos() * (2.0 * PI * y / 17.0).sin() + 2.0;
    let image = (0..w * h)
        .map(|i| f((i % w) as f64, (i / w) as f64) as f32)
        .collect();
    let p = Planes::new(image, w, h);
    let (dx, dy) = (0.37, -0.61);
    let map = map_of(w, h, 32, |x, y| [x + dx, y + dy]);
    let params = WarpParams {
        flux_scaling: FluxScaling::None,
        ..WarpParams::default()
    };
    let out = warp(&p.source(), &map, &params).unwrap();
    let mut worst: f64 = 0.0;
    for y in 4..h - 4 {
        for x in 4..w - 4 {
            let want = f(x as f64 + dx, y as f64 + dy);
            worst = worst.max((f64::from(out.image[y * w + x]) - want).abs());
        }
    }
    // Lanczos3 passes a period of 11 pixels with an amplitude error below 1 %.
    assert!(worst < 1e-2, "worst error {worst} (signal amplitude 1)");
    assert!(worst > 0.0);
}

/// Gaussian stars (σ = 2 px) in a source, warped by `src = c + a R(θ) (t − c) + shift`.
fn star_flux_ratios(a: f64, theta: f64, shift: [f64; 2], scaling: FluxScaling) -> Vec<f64> {
    let (w, h) = (160, 160);
    let stars = [
        (40.3, 50.7, 1000.0),
        (100.6, 60.2, 300.0),
        (70.1, 110.9, 5000.0),
        (115.0, 115.0, 50.0),
    ];
    let sigma = 2.0;
    let mut image = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut v = 0.0;
            for &(sx, sy, flux) in &stars {
                let r2 = (x as f64 - sx).powi(2) + (y as f64 - sy).powi(2);
                v += flux / (2.0 * PI * sigma * sigma) * (-r2 / (2.0 * sigma * sigma)).exp();
            }
            image[y * w + x] = v as f32;
        }
    }
    let p = Planes::new(image, w, h);
    let c = 80.0;
    let (s, co) = theta.sin_cos();
    let forward = |x: f64, y: f64| {
        let (u, v) = (x - c, y - c);
        [
            c + a * (co * u - s * v) + shift[0],
            c + a * (s * u + co * v) + shift[1],
        ]
    };
    let map = map_of(w, h, 32, forward);
    let params = WarpParams {
        flux_scaling: scaling,
        ..WarpParams::default()
    };
    let out = warp(&p.source(), &map, &params).unwrap();
    stars
        .iter()
        .map(|&(sx, sy, flux)| {
            // Star position in the target: invert the similarity.
            let (u, v) = ((sx - shift[0] - c) / a, (sy - shift[1] - c) / a);
            let (tx, ty) = (c + co * u + s * v, c - s * u + co * v);
            let r = 8.0 * sigma / a; // ±8σ box in target pixels
            let mut sum = 0.0;
            for y in (ty - r).floor() as usize..=(ty + r).ceil() as usize {
                for x in (tx - r).floor() as usize..=(tx + r).ceil() as usize {
                    sum += f64::from(out.image[y * w + x]);
                }
            }
            sum / flux
        })
        .collect()
}

#[test]
fn flux_of_gaussian_stars_is_conserved_under_rotation_scale_and_shift() {
    for (a, theta, shift) in [
        (0.9, 0.3, [1.3, -2.7]),
        (1.0, 1.1, [0.5, 0.25]),
        (1.1, -0.8, [-3.1, 2.2]),
        (0.95, 2.5, [0.0, 0.0]),
    ] {
        for scaling in [FluxScaling::Fixed, FluxScaling::Local] {
            for ratio in star_flux_ratios(a, theta, shift, scaling) {
                assert!(
                    (ratio - 1.0).abs() < 0.005,
                    "a {a} θ {theta} {scaling:?}: ratio {ratio}"
                );
            }
        }
    }
    // Without area scaling the flux changes by the area ratio a², as it must.
    let ratio = star_flux_ratios(1.1, 0.3, [0.0, 0.0], FluxScaling::None)[0];
    assert!((ratio * 1.21 - 1.0).abs() < 0.005, "unscaled ratio {ratio}");
}

#[test]
fn parallel_rows_give_the_single_threaded_result() {
    let (w, h) = (50, 37);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut p = Planes::new(gaussian_noise(&mut rng, w * h, 3.0), w, h);
    p.mask[300] = 8;
    let map = map_of(w, h, 16, |x, y| {
        [0.97 * x + 0.1 * y + 0.3, -0.1 * x + 0.97 * y + 2.2]
    });
    let params = WarpParams {
        flux_scaling: FluxScaling::Local,
        ..WarpParams::default()
    };
    let one = warp(&p.source(), &map, &params).unwrap();
    for rows in [1, 5, 37, 100] {
        let many = warp_parallel(&p.source(), &map, &params, rows).unwrap();
        assert_eq!(
            format!("{many:?}"),
            format!("{one:?}"),
            "{rows} rows per chunk"
        ); // NaN-equal
    }
}

#[test]
fn zero_point_factor_scales_value_and_variance() {
    let (w, h) = (20, 20);
    let p = Planes::new(vec![3.0; w * h], w, h);
    let map = map_of(w, h, 8, |x, y| [x + 0.5, y + 0.25]);
    let params = WarpParams {
        flux_scale: 2.0,
        ..WarpParams::default()
    };
    let out = warp(&p.source(), &map, &params).unwrap();
    let centre = 10 * w + 10;
    assert!((out.image[centre] - 6.0).abs() < 1e-5);
    let (wx, _) = lanczos3_weights(10.5);
    let (wy, _) = lanczos3_weights(10.25);
    let sum2 = |w: &[f64; 6]| w.iter().map(|v| v * v).sum::<f64>();
    let want = 4.0 * sum2(&wx) * sum2(&wy);
    assert!(
        (f64::from(out.variance[centre]) - want).abs() < 1e-5,
        "{} vs {want}",
        out.variance[centre]
    );
}

#[test]
fn variance_of_pure_noise_is_propagated() {
    let (w, h) = (200, 200);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut p = Planes::new(gaussian_noise(&mut rng, w * h, 2.0), w, h);
    p.variance = vec![4.0; w * h];
    let empirical = |v: &[f32], lo: usize, hi: usize| {
        let vals: Vec<f64> = (lo..hi)
            .flat_map(|y| (lo..hi).map(move |x| (x, y)))
            .map(|(x, y)| f64::from(v[y * w + x]))
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64
    };
    // Identity: the variance plane and the noise are unchanged.
    let out = warp(
        &p.source(),
        &map_of(w, h, 32, |x, y| [x, y]),
        &WarpParams::default(),
    )
    .unwrap();
    assert!(out.variance.iter().all(|&v| v == 4.0));
    assert_eq!(empirical(&out.image, 0, w), empirical(&p.image, 0, w));
    // Half-pixel shift: the propagated variance matches the noise actually measured
    // (1 % statistical error for 38,000 pixels; the per-pixel variance is exact, only
    // covariances between pixels are left out).
    let out = warp(
        &p.source(),
        &map_of(w, h, 32, |x, y| [x + 0.5, y + 0.5]),
        &WarpParams::default(),
    )
    .unwrap();
    let propagated = f64::from(out.variance[100 * w + 100]);
    assert!(
        propagated < 4.0 * 0.7,
        "a half-pixel shift smooths white noise"
    );
    let measured = empirical(&out.image, 4, w - 4);
    assert!(
        (measured / propagated - 1.0).abs() < 0.03,
        "measured {measured}, propagated {propagated}"
    );
}

#[test]
fn mask_bits_propagate_and_edges_get_no_data() {
    let (w, h) = (40, 40);
    let mut p = Planes::new(vec![1.0; w * h], w, h);
    p.mask[20 * w + 20] = 4;
    let map = map_of(w, h, 16, |x, y| [x + 0.5, y]);
    let params = WarpParams::default();
    let out = warp(&p.source(), &map, &params).unwrap();
    for y in 0..h {
        for x in 0..w {
            let o = y * w + x;
            let sx = x as f64 + 0.5;
            if x < 2 || x + 3 >= w {
                assert_eq!(out.mask[o], NO_DATA, "({x}, {y})");
                assert!(out.image[o].is_nan());
                continue;
            }
            // Weight of source (20, 20) in this output pixel, along x only (y is exact).
            let (wx, first) = lanczos3_weights(sx);
            let k = 20 - first;
            let weight = if y == 20 && (0..6).contains(&k) {
                wx[k as usize].abs()
            } else {
                0.0
            };
            let want = if weight >= params.mask_weight_threshold {
                4
            } else {
                0
            };
            assert_eq!(out.mask[o], want, "({x}, {y}) weight {weight}");
            assert!((out.image[o] - 1.0).abs() < 1e-6);
        }
    }
    // Pixels 17..=22 of row 20 see the bad pixel with weight ≥ 1 % (taps at −2.5 … +2.5 px;
    // the ±2.5 taps weigh 0.024).
    assert_eq!((0..w).filter(|&x| out.mask[20 * w + x] == 4).count(), 6);
    // An undefined source position is no data too.
    let map = map_of(w, h, 16, |x, y| {
        if x > 30.0 {
            [f64::NAN, f64::NAN]
        } else {
            [x, y]
        }
    });
    let out = warp(&p.source(), &map, &params).unwrap();
    assert_eq!(out.mask[10 * w + 39], NO_DATA);
    assert_eq!(out.image[10 * w + 5], 1.0);
}

#[test]
fn shapes_are_checked() {
    let p = Planes::new(vec![0.0; 10], 4, 3);
    let map = map_of(4, 3, 2, |x, y| [x, y]);
    assert!(matches!(
        warp(&p.source(), &map, &WarpParams::default()),
        Err(WarpError::Shape {
            plane: "image",
            len: 10,
            ..
        })
    ));
    assert!(matches!(
        CoarseMap::new(4, 3, 0, |p| p.to_vec()),
        Err(WarpError::Grid { .. })
    ));
    assert!(matches!(
        CoarseMap::new(4, 3, 2, |_| Vec::new()),
        Err(WarpError::MappingLength { .. })
    ));
}

/// Gnomonic (TAN) pixel ↔ sky with tangent point `(ra0, dec0)` (radians), pixel scale `scale`
/// (radians), rotation `rot` and reference pixel `crpix`.
#[derive(Clone, Copy)]
struct Tan {
    ra0: f64,
    dec0: f64,
    scale: f64,
    rot: f64,
    crpix: [f64; 2],
}

impl Tan {
    fn to_sky(self, x: f64, y: f64) -> (f64, f64) {
        let (s, c) = self.rot.sin_cos();
        let (u, v) = (
            (x - self.crpix[0]) * self.scale,
            (y - self.crpix[1]) * self.scale,
        );
        let (xi, eta) = (c * u - s * v, s * u + c * v);
        let rho = xi.hypot(eta);
        if rho == 0.0 {
            return (self.ra0, self.dec0);
        }
        let cc = rho.atan();
        let dec = (cc.cos() * self.dec0.sin() + eta * cc.sin() * self.dec0.cos() / rho).asin();
        let ra = self.ra0
            + (xi * cc.sin())
                .atan2(rho * self.dec0.cos() * cc.cos() - eta * self.dec0.sin() * cc.sin());
        (ra, dec)
    }
    fn to_pixel(self, ra: f64, dec: f64) -> [f64; 2] {
        let cosc =
            self.dec0.sin() * dec.sin() + self.dec0.cos() * dec.cos() * (ra - self.ra0).cos();
        let xi = dec.cos() * (ra - self.ra0).sin() / cosc;
        let eta = (self.dec0.cos() * dec.sin()
            - self.dec0.sin() * dec.cos() * (ra - self.ra0).cos())
            / cosc;
        let (s, c) = self.rot.sin_cos();
        let (u, v) = (c * xi + s * eta, -s * xi + c * eta);
        [
            u / self.scale + self.crpix[0],
            v / self.scale + self.crpix[1],
        ]
    }
}

#[test]
fn coarse_grid_error_of_tan_like_mapping() {
    let arcsec = PI / 180.0 / 3600.0;
    // A 1024² patch at 0.2″ whose tangent point is 3° from the CCD's; CCD at 0.26″, rotated.
    let patch = Tan {
        ra0: 0.3,
        dec0: -0.5,
        scale: 0.2 * arcsec,
        rot: 0.0,
        crpix: [-5000.0, 4000.0],
    };
    let ccd = Tan {
        ra0: 0.3 + 0.05,
        dec0: -0.5 + 0.02,
        scale: 0.26 * arcsec,
        rot: 0.4,
        crpix: [512.0, 1024.0],
    };
    let exact = |x: f64, y: f64| {
        let (ra, dec) = patch.to_sky(x, y);
        ccd.to_pixel(ra, dec)
    };
    let batch = |p: &[[f64; 2]]| p.iter().map(|q| exact(q[0], q[1])).collect::<Vec<_>>();
    let error_at = |step: usize| {
        let map = CoarseMap::new(1024, 1024, step, batch).unwrap();
        map.max_interpolation_error(&map.probe_points(4), batch)
            .unwrap()
    };
    let (e16, e32, e64) = (error_at(16), error_at(32), error_at(64));
    // Bilinear interpolation errs by at most step²·max|∂²f|/8; the second derivatives, from
    // finite differences over the patch, bound each step's error.
    let mut d2: f64 = 0.0;
    for &(x, y) in &[
        (0.0, 0.0),
        (1023.0, 0.0),
        (0.0, 1023.0),
        (1023.0, 1023.0),
        (512.0, 512.0),
    ] {
        let hh = 8.0;
        for (ax, ay) in [(1.0, 0.0), (0.0, 1.0)] {
            let (p, m, c) = (
                exact(x + ax * hh, y + ay * hh),
                exact(x - ax * hh, y - ay * hh),
                exact(x, y),
            );
            for n in 0..2 {
                d2 = d2.max(((p[n] + m[n] - 2.0 * c[n]) / (hh * hh)).abs());
            }
        }
    }
    for (step, e) in [(16usize, e16), (32, e32), (64, e64)] {
        let bound = 2.0 * (step * step) as f64 * d2 / 8.0; // ×2: mixed terms of the bilinear cell
        assert!(e <= bound, "step {step}: error {e} above bound {bound}");
    }
    assert!(e32 < 1e-3, "step 32 error {e32} px");
    assert!(
        e16 > 0.0 && (e64 / e16) > 8.0 && (e64 / e16) < 32.0,
        "quadratic in the step: {e16} {e64}"
    );
}
