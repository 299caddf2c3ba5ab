//! Throughput of the single-frame chain on a demo-size CCD (1024×2048), one thread: Mpix/s of
//! background + detection + measurement, of the in-memory chain (ISR, masks, cosmic rays,
//! background, PSF, detection, measurement), and of the whole unit (read the raw FITS files,
//! chain, write the calibrated exposure and catalogue). Prints figures; asserts nothing.
//!
//! `cargo bench -p skypipe-optical --bench optical_chain` (best of 5 runs each). With
//! `OPTICAL_BENCH_DIR=DIR` it also leaves the simulated raw CCD, bias and flat and a truth table
//! in DIR, with `calibrated.fits` (bias-, flat- and gain-corrected, e-, sky kept) for running
//! other tools on the same pixels. The comparison with SExtractor in CPU time per CCD, whole
//! `skypipe-singleframe --unit` processes on many CCDs, is `benches/optical_sextractor.sh`.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_io::fits::{Card, Column, FitsWriter};
use skypipe_optical::background::Background;
use skypipe_optical::detect::{self, DetectParams};
use skypipe_optical::image::Image;
use skypipe_optical::measure::{self, FWHM_TO_SIGMA, MeasureParams};
use skypipe_optical::pipeline::{ChainParams, Instrument, process};
use skypipe_optical::sim::{CcdSpec, Kind, Object, render_ccd, wcs_header};
use skypipe_optical::singleframe::{CcdInput, process_ccd};
use skypipe_optical::wcs::TanWcs;
use std::time::Instant;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(v);
    }
    (best, last.expect("n > 0"))
}

fn array(img: &Image<f32>) -> ndarray::Array2<f32> {
    ndarray::Array2::from_shape_vec((img.height, img.width), img.data.clone()).unwrap()
}

fn main() {
    let (w, h) = (1024usize, 2048usize);
    let spec = CcdSpec {
        width: w,
        height: h,
        psf_fwhm: 3.2,
        psf_beta: 3.5,
        sky: 350.0,
        sky_gradient: [0.08, -0.05],
        gain: 1.5,
        read_noise: 5.0,
        saturate: 60000.0,
        bias_level: 1000.0,
        flat_amplitude: 0.05,
        cosmic_rays: 250,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut objects = Vec::new();
    for i in 0..1500 {
        let (x, y) = (
            rng.random_range(0.0..w as f64),
            rng.random_range(0.0..h as f64),
        );
        if i % 2 == 0 {
            objects.push(Object::star(x, y, 10f64.powf(rng.random_range(2.3..5.9))));
        } else {
            objects.push(Object {
                x,
                y,
                flux: 10f64.powf(rng.random_range(2.5..4.7)),
                kind: Kind::Galaxy,
                size: rng.random_range(0.5..3.0),
                q: rng.random_range(0.4..1.0),
                theta: rng.random_range(0.0..3.1),
            });
        }
    }
    let r = render_ccd(&spec, &objects, &mut rng);
    let inst = Instrument {
        gain: 1.5,
        read_noise: 5.0,
        saturate: 60000.0,
    };
    let p = ChainParams::default();
    let mpix = (w * h) as f64 / 1e6;

    // The in-memory chain.
    let (t_chain, out) = best_of(5, || {
        process(r.raw.clone(), Some(&r.bias), Some(&r.flat), &inst, &p)
    });

    // Background + detection + measurement alone, on the calibrated image, at the known PSF.
    let mut cal = r.raw.clone();
    let mut m = Image::filled(w, h, 0u32);
    let regions = skypipe_optical::amplifiers::Readout::single(w, h, inst).regions();
    skypipe_optical::isr::bias_flat_gain(&mut cal, Some(&r.bias), Some(&r.flat), &regions, &mut m);
    let var = skypipe_optical::isr::variance_plane(&cal, Some(&r.flat), &regions, &m);
    let fwhm = out.psf_fwhm;
    let (t_core, n_core) = best_of(5, || {
        let mut img = cal.clone();
        let mut mm = m.clone();
        let bg = Background::estimate(&img, &mm, p.background_cell);
        bg.subtract_from(&mut img);
        let sig = detect::significance(&img, &var, &mm, fwhm * FWHM_TO_SIGMA);
        let det = detect::detect(&sig, &mut mm, &DetectParams::default());
        let mp = MeasureParams {
            fwhm,
            aperture_radius: p.aperture_fwhm * fwhm,
            min_significance: 0.0,
        };
        measure::measure(&img, &var, &mm, &det, &mp).len()
    });

    // Where the core time goes (one run).
    {
        let mut img = cal.clone();
        let mut mm = m.clone();
        let t = Instant::now();
        let bg = Background::estimate(&img, &mm, p.background_cell);
        bg.subtract_from(&mut img);
        let t_bg = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sig = detect::significance(&img, &var, &mm, fwhm * FWHM_TO_SIGMA);
        let t_sig = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let det = detect::detect(&sig, &mut mm, &DetectParams::default());
        let t_det = t.elapsed().as_secs_f64();
        let mp = MeasureParams {
            fwhm,
            aperture_radius: p.aperture_fwhm * fwhm,
            min_significance: 0.0,
        };
        let t = Instant::now();
        let n = measure::measure(&img, &var, &mm, &det, &mp).len();
        let t_meas = t.elapsed().as_secs_f64();
        println!(
            "core split: background {t_bg:.3} s, filter {t_sig:.3} s, footprints+deblend {t_det:.3} s, measurement {t_meas:.3} s ({n} sources)"
        );
    }

    // The whole unit, through FITS files.
    let dir = match std::env::var_os("OPTICAL_BENCH_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("optical-bench-{}", std::process::id())),
    };
    let s = 0.2 / 3600.0;
    let wcs = TanWcs {
        crpix: [512.0, 1024.0],
        crval: [150.0, 2.0],
        cd: [[-s, 0.0], [0.0, s]],
    };
    let mut cards = vec![
        Card::text("BAND", "r", ""),
        Card::real("EXPTIME", 30.0, ""),
        Card::real("GAIN", 1.5, ""),
        Card::real("RDNOISE", 5.0, ""),
        Card::real("SATURATE", 60000.0, ""),
    ];
    cards.extend(wcs_header(&wcs));
    for (name, img) in [
        ("raw", &r.raw),
        ("bias", &r.bias),
        ("flat", &r.flat),
        ("calibrated", &cal),
    ] {
        let mut f =
            FitsWriter::create(dir.join(format!("{name}.fits")), false, Some(&array(img))).unwrap();
        if name == "raw" || name == "calibrated" {
            f.primary_keys(&cards).unwrap();
        }
        f.commit().unwrap();
    }
    let mut t = FitsWriter::create(dir.join("truth.fits"), false, None).unwrap();
    t.table(
        "OBJECTS",
        &[
            Column::f64("X", "pix", objects.iter().map(|o| o.x + 1.0).collect()),
            Column::f64("Y", "pix", objects.iter().map(|o| o.y + 1.0).collect()),
            Column::f64("FLUX", "electron", objects.iter().map(|o| o.flux).collect()),
            Column::f64(
                "SNR",
                "",
                objects.iter().map(|o| spec.expected_snr(o)).collect(),
            ),
        ],
        &[],
    )
    .unwrap();
    t.commit().unwrap();
    let input = CcdInput {
        visit: 1,
        ccd: 0,
        band: "r".into(),
        raw: dir.join("raw.fits"),
        bias: Some(dir.join("bias.fits")),
        flat: Some(dir.join("flat.fits")),
        variance: None,
    };
    let run_dir = dir.join("run");
    let (t_unit, summary) = best_of(5, || process_ccd(&input, &p, 1, &run_dir, false).unwrap());

    println!(
        "CCD {w}x{h} ({mpix:.2} Mpix), {} objects drawn, one thread",
        objects.len()
    );
    println!(
        "background+detection+measurement: {:.3} s, {:.1} Mpix/s ({} sources)",
        t_core,
        mpix / t_core,
        n_core
    );
    println!(
        "in-memory chain (ISR, masks, CR, background x2, PSF, detection, measurement): {:.3} s, {:.1} Mpix/s ({} sources, PSF FWHM {:.2})",
        t_chain,
        mpix / t_chain,
        out.sources.len(),
        out.psf_fwhm
    );
    println!(
        "whole unit (read FITS, chain, write calexp + catalogue): {:.3} s, {:.1} Mpix/s ({} sources)",
        t_unit,
        mpix / t_unit,
        summary.sources
    );
    let steps: Vec<String> = out
        .timings
        .iter()
        .map(|t| format!("{} {:.3}", t.step, t.wall_s))
        .collect();
    println!("chain steps (s): {}", steps.join(", "));
    println!("files for SExtractor: {}", dir.display());
}
