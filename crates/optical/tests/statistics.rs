//! The whole chain on one simulated CCD, in process, against the simulator's truth: detection
//! completeness and purity, deblending of close pairs, centroids, aperture fluxes, background,
//! cosmic rays and saturation. One 1024×1024 field with ≥ 300 objects above S/N 10.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_optical::image::mask;
use skypipe_optical::measure::flags;
use skypipe_optical::pipeline::{
    ChainOutput, ChainParams, Instrument, process, process_with_variance,
};
use skypipe_optical::sim::{CcdSpec, Kind, Object, RenderedCcd, render_ccd};
use std::sync::OnceLock;

const SIZE: usize = 1024;

struct Field {
    spec: CcdSpec,
    objects: Vec<Object>,
    /// Index pairs of close star pairs.
    pairs: Vec<(usize, usize)>,
    saturated: Vec<usize>,
    cosmic_rays: Vec<(usize, usize)>,
    rendered: RenderedCcd,
    out: ChainOutput,
}

fn spec() -> CcdSpec {
    CcdSpec {
        width: SIZE,
        height: SIZE,
        psf_fwhm: 3.2,
        psf_beta: 3.5,
        sky: 300.0,
        sky_gradient: [0.12, -0.08],
        gain: 1.5,
        read_noise: 5.0,
        saturate: 60000.0,
        bias_level: 1000.0,
        flat_amplitude: 0.05,
        cosmic_rays: 120,
    }
}

/// Random positions at least `min_sep` from every other object, away from the edges.
fn place(rng: &mut ChaCha8Rng, taken: &[Object], min_sep: f64) -> (f64, f64) {
    loop {
        let x = rng.random_range(8.0..SIZE as f64 - 8.0);
        let y = rng.random_range(8.0..SIZE as f64 - 8.0);
        if taken.iter().all(|o| (o.x - x).hypot(o.y - y) > min_sep) {
            return (x, y);
        }
    }
}

fn field() -> &'static Field {
    static FIELD: OnceLock<Field> = OnceLock::new();
    FIELD.get_or_init(|| {
        let spec = spec();
        let mut rng = ChaCha8Rng::seed_from_u64(2026);
        let mut objects: Vec<Object> = Vec::new();
        let mut saturated = Vec::new();
        for _ in 0..6 {
            let (x, y) = place(&mut rng, &objects, 60.0);
            saturated.push(objects.len());
            objects.push(Object::star(x, y, rng.random_range(2e6..6e6)));
        }
        let mut pairs = Vec::new();
        for _ in 0..20 {
            let (x, y) = place(&mut rng, &objects, 40.0);
            let sep = rng.random_range(2.5..3.0) * spec.psf_fwhm;
            let a: f64 = rng.random_range(0.0..std::f64::consts::PI);
            let f = rng.random_range(1e4..4e4);
            pairs.push((objects.len(), objects.len() + 1));
            objects.push(Object::star(x, y, f));
            objects.push(Object::star(
                x + sep * a.cos(),
                y + sep * a.sin(),
                f * rng.random_range(0.4..1.0),
            ));
        }
        for i in 0..750 {
            let (x, y) = place(&mut rng, &objects, 14.0);
            if i % 3 == 2 {
                let flux = 10f64.powf(rng.random_range(2.7..4.7));
                objects.push(Object {
                    x,
                    y,
                    flux,
                    kind: Kind::Galaxy,
                    size: rng.random_range(0.5..2.5),
                    q: rng.random_range(0.5..1.0),
                    theta: rng.random_range(0.0..3.1),
                });
            } else {
                let flux = 10f64.powf(rng.random_range(2.3..5.9));
                objects.push(Object::star(x, y, flux));
            }
        }
        let r = render_ccd(&spec, &objects, &mut rng);
        let inst = Instrument {
            gain: spec.gain as f32,
            read_noise: spec.read_noise as f32,
            saturate: spec.saturate as f32,
        };
        let out = process(
            r.raw.clone(),
            Some(&r.bias),
            Some(&r.flat),
            &inst,
            &ChainParams::default(),
        );
        Field {
            spec,
            objects,
            pairs,
            saturated,
            cosmic_rays: r.cosmic_rays.clone(),
            rendered: r,
            out,
        }
    })
}

/// Index of the nearest source within `radius` pixels of (x, y).
fn nearest(out: &ChainOutput, x: f64, y: f64, radius: f64) -> Option<usize> {
    out.sources
        .iter()
        .enumerate()
        .map(|(i, s)| (i, (s.x - x).hypot(s.y - y)))
        .filter(|(_, d)| *d <= radius)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

fn match_radius(o: &Object) -> f64 {
    match o.kind {
        Kind::Star => 2.0,
        Kind::Galaxy => 3.0 + o.size,
    }
}

#[test]
fn detection_completeness_and_purity() {
    let f = field();
    let bright: Vec<&Object> = f
        .objects
        .iter()
        .filter(|o| f.spec.expected_snr(o) >= 10.0)
        .collect();
    assert!(
        bright.len() >= 300,
        "only {} objects above S/N 10",
        bright.len()
    );
    let found = bright
        .iter()
        .filter(|o| nearest(&f.out, o.x, o.y, match_radius(o)).is_some())
        .count();
    let completeness = found as f64 / bright.len() as f64;
    // Purity: every detection lies near a true object (of any S/N).
    let real = f
        .out
        .sources
        .iter()
        .filter(|s| {
            f.objects
                .iter()
                .any(|o| (s.x - o.x).hypot(s.y - o.y) <= match_radius(o) + 1.0)
        })
        .count();
    let purity = real as f64 / f.out.sources.len() as f64;
    eprintln!(
        "objects {} (S/N ≥ 10: {}), sources {}, completeness {completeness:.4}, purity {purity:.4}, PSF FWHM {:.3} (true {})",
        f.objects.len(),
        bright.len(),
        f.out.sources.len(),
        f.out.psf_fwhm,
        f.spec.psf_fwhm
    );
    assert!(completeness >= 0.95, "completeness {completeness}");
    assert!(purity >= 0.99, "purity {purity}");
}

#[test]
fn the_psf_size_is_measured() {
    let f = field();
    assert!(f.out.psf_measured);
    // The width that drives the chain is the FWHM of the Gaussian that the adaptive moments
    // fit: for a Moffat of β = 3.5 that is about 13% above the Moffat's own FWHM (its wings
    // are broader).
    let ratio = f.out.psf_fwhm / f.spec.psf_fwhm;
    assert!(
        (1.05..1.2).contains(&ratio),
        "measured {} true {}",
        f.out.psf_fwhm,
        f.spec.psf_fwhm
    );
    // The profile fit to the PSF stars measures the Moffat's half-maximum width itself.
    let profile = f.out.psf_profile.expect("profile fitted");
    eprintln!(
        "profile FWHM {:.4} β {:.3} from {} stars (true {} β {})",
        profile.fwhm, profile.beta, profile.stars, f.spec.psf_fwhm, f.spec.psf_beta
    );
    let cpu = |name: &str| -> f64 {
        f.out
            .timings
            .iter()
            .filter(|t| t.step == name || name.is_empty())
            .map(|t| t.cpu_s)
            .sum()
    };
    eprintln!(
        "psf_profile CPU {:.4} s of {:.3} s for the chain",
        cpu("psf_profile"),
        cpu("")
    );
    assert!(
        (profile.fwhm / f.spec.psf_fwhm - 1.0).abs() < 0.03,
        "profile {profile:?} true {}",
        f.spec.psf_fwhm
    );
}

#[test]
fn blended_pairs_are_split() {
    let f = field();
    let mut split = 0;
    for &(a, b) in &f.pairs {
        let (oa, ob) = (&f.objects[a], &f.objects[b]);
        let da = nearest(&f.out, oa.x, oa.y, 1.5);
        let db = nearest(&f.out, ob.x, ob.y, 1.5);
        if let (Some(da), Some(db)) = (da, db)
            && da != db
        {
            assert_ne!(f.out.sources[da].flags & flags::BLENDED, 0);
            split += 1;
        }
    }
    eprintln!("pairs split: {split} of {}", f.pairs.len());
    assert!(
        split as f64 >= 0.9 * f.pairs.len() as f64,
        "{split} of {}",
        f.pairs.len()
    );
}

/// Bright, unsaturated stars with no other object within 20 pixels.
fn isolated_bright_stars(f: &Field, min_flux: f64) -> Vec<(&Object, usize)> {
    f.objects
        .iter()
        .filter(|o| o.kind == Kind::Star && o.flux >= min_flux && o.flux < 1e6)
        .filter(|o| {
            f.objects
                .iter()
                .all(|p| std::ptr::eq(*o, p) || (p.x - o.x).hypot(p.y - o.y) > 20.0)
        })
        .filter(|o| {
            o.x > 20.0 && o.y > 20.0 && o.x < SIZE as f64 - 20.0 && o.y < SIZE as f64 - 20.0
        })
        .filter_map(|o| nearest(&f.out, o.x, o.y, 1.0).map(|i| (o, i)))
        .filter(|(_, i)| f.out.sources[*i].flags & (flags::COSMIC_RAY | flags::SATURATED) == 0)
        .collect()
}

#[test]
fn centroids_of_bright_isolated_stars_are_within_two_hundredths_of_a_pixel() {
    let f = field();
    // S/N ≳ 300: the centroid noise is then ≈ 0.005 px.
    let stars = isolated_bright_stars(f, 1e5);
    assert!(stars.len() >= 20, "{} stars", stars.len());
    let mut worst: f64 = 0.0;
    for (o, i) in &stars {
        let s = &f.out.sources[*i];
        worst = worst.max((s.x - o.x).abs()).max((s.y - o.y).abs());
    }
    eprintln!("{} stars, worst centroid offset {worst:.4} px", stars.len());
    let rms = (stars
        .iter()
        .map(|(o, i)| (f.out.sources[*i].x - o.x).powi(2) + (f.out.sources[*i].y - o.y).powi(2))
        .sum::<f64>()
        / (2 * stars.len()) as f64)
        .sqrt();
    eprintln!("centroid rms {rms:.4} px");
    assert!(worst < 0.02, "worst {worst}");
}

#[test]
fn aperture_fluxes_are_within_one_percent_of_the_truth() {
    let f = field();
    let stars = isolated_bright_stars(f, 1e5);
    let mut ratios = Vec::new();
    for (o, i) in &stars {
        let s = &f.out.sources[*i];
        if s.flux_aper_err / s.flux_aper < 0.0033 {
            ratios.push(s.flux_aper / o.flux);
        }
    }
    assert!(ratios.len() >= 10, "{} stars", ratios.len());
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    eprintln!(
        "{} stars: aperture/true flux median {median:.5}, range {:.5}..{:.5}",
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1]
    );
    assert!((median - 1.0).abs() < 0.003, "median {median}");
    for r in &ratios {
        assert!((r - 1.0).abs() < 0.01, "ratio {r}");
    }
    // PSF fluxes carry the aperture correction, so they agree on average too.
    let psf: Vec<f64> = stars
        .iter()
        .map(|(o, i)| f.out.sources[*i].flux_psf / o.flux)
        .collect();
    let mean = psf.iter().sum::<f64>() / psf.len() as f64;
    assert!((mean - 1.0).abs() < 0.01, "PSF flux ratio {mean}");
}

#[test]
fn background_residual_is_consistent_with_zero() {
    let f = field();
    let model = f.out.background.render();
    let n = (SIZE * SIZE) as f64;
    let mut sum = 0.0;
    for y in 0..SIZE {
        for x in 0..SIZE {
            sum += f64::from(model.get(x, y)) - f.spec.sky_at(x as f64, y as f64);
        }
    }
    let mean = sum / n;
    let sigma_pix = (f.spec.sky + f.spec.read_noise.powi(2)).sqrt();
    // Residual over empty sky in the subtracted image, excluding detections and masks.
    let (mut s, mut k) = (0.0, 0usize);
    for (i, v) in f.out.image.data.iter().enumerate() {
        if f.out.mask.data[i] & (mask::DETECTED | mask::SAT | mask::CR | mask::BAD) == 0 {
            s += f64::from(*v);
            k += 1;
        }
    }
    let sky_mean = s / k as f64;
    eprintln!(
        "background model − truth: mean {mean:.3} e-; subtracted sky mean {sky_mean:.3} e- (σ per pixel {sigma_pix:.1})"
    );
    assert!(mean.abs() < 0.05 * sigma_pix, "model bias {mean}");
    // Undetected faint objects push the mean of the "empty" pixels slightly positive; it
    // stays a small fraction of the per-pixel noise.
    assert!(sky_mean.abs() < 0.05 * sigma_pix, "sky mean {sky_mean}");
}

#[test]
fn cosmic_rays_are_flagged_and_not_detected() {
    let f = field();
    assert!(f.cosmic_rays.len() > 100);
    let masked = f
        .cosmic_rays
        .iter()
        .filter(|&&(x, y)| f.out.mask.get(x, y) & mask::CR != 0)
        .count();
    // A hit on a saturated star cannot be told apart and is left to the SAT mask.
    let unmasked: Vec<_> = f
        .cosmic_rays
        .iter()
        .filter(|&&(x, y)| f.out.mask.get(x, y) & (mask::CR | mask::SAT) == 0)
        .collect();
    eprintln!(
        "cosmic-ray pixels {} masked {masked}, missed {unmasked:?}",
        f.cosmic_rays.len()
    );
    assert!(
        masked as f64 >= 0.97 * f.cosmic_rays.len() as f64,
        "{masked} of {}",
        f.cosmic_rays.len()
    );
    // No source sits on a cosmic ray unless a true object is there too.
    for s in &f.out.sources {
        let on_cr = f
            .cosmic_rays
            .iter()
            .any(|&(x, y)| (s.x - x as f64).hypot(s.y - y as f64) < 2.0);
        let real = f
            .objects
            .iter()
            .any(|o| (s.x - o.x).hypot(s.y - o.y) < match_radius(o) + 1.0);
        assert!(
            !on_cr || real,
            "source at ({:.1}, {:.1}) is a cosmic ray",
            s.x,
            s.y
        );
    }
}

#[test]
fn saturated_stars_are_masked_and_flagged() {
    let f = field();
    for &i in &f.saturated {
        let o = &f.objects[i];
        assert_ne!(
            f.out.mask.get(o.x.round() as usize, o.y.round() as usize) & mask::SAT,
            0
        );
        let s = nearest(&f.out, o.x, o.y, 3.0).expect("saturated star detected");
        assert_ne!(f.out.sources[s].flags & flags::SATURATED, 0);
    }
    assert!(f.out.saturated_pixels > 0);
}

#[test]
fn threads_inside_a_ccd_change_nothing() {
    let f = field();
    let r = &f.rendered;
    let inst = Instrument {
        gain: f.spec.gain as f32,
        read_noise: f.spec.read_noise as f32,
        saturate: f.spec.saturate as f32,
    };
    let out = process_with_variance(
        r.raw.clone(),
        Some(&r.bias),
        Some(&r.flat),
        None,
        &skypipe_optical::amplifiers::Readout::single(r.raw.width, r.raw.height, inst),
        &ChainParams::default(),
        3,
    );
    assert_eq!(out.sources, f.out.sources);
    assert_eq!(out.image, f.out.image);
    assert_eq!(out.mask, f.out.mask);
    assert_eq!(out.background.levels, f.out.background.levels);
}
