//! Raw frames with two amplifiers and overscan, end to end in process: one simulated CCD
//! exposed once and written twice — plain (one amplifier, trimmed) and read out through two
//! amplifiers of different gain, read noise and bias level with 32 overscan columns each
//! (`sim::read_out`, as `skypipe-sim image --amplifiers 2 --overscan 32` writes) — and both
//! processed by `process_ccd`. The two frames hold the same charge, so their calibrated
//! exposures must agree: same shape, the sky continuous across the amplifier boundary, the
//! variance stepping by the difference of the read noises squared, star fluxes on the truth,
//! the same sky positions through the moved header WCS. Master biases are accepted trimmed or
//! untrimmed; header defects fail with the file and the keyword.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_io::fits::{Card, FitsReader, FitsWriter, Hdu};
use skypipe_optical::image::Image;
use skypipe_optical::measure::flags;
use skypipe_optical::pipeline::ChainParams;
use skypipe_optical::sim::{
    CcdSpec, Object, SIM_AMPLIFIERS, calibration_frames, expose, read_out, wcs_header,
};
use skypipe_optical::singleframe::{CcdInput, output_paths, process_ccd};
use skypipe_optical::wcs::TanWcs;
use std::path::{Path, PathBuf};

const OVERSCAN: usize = 32;
/// Size of the CCD; the amplifier boundary is at the middle column.
const WIDTH: usize = 256;
const HEIGHT: usize = 512;

fn spec() -> CcdSpec {
    let a = SIM_AMPLIFIERS[0];
    CcdSpec {
        width: WIDTH,
        height: HEIGHT,
        psf_fwhm: 3.0,
        psf_beta: 3.5,
        sky: 400.0,
        sky_gradient: [0.06, -0.04],
        gain: a.gain,
        read_noise: a.read_noise,
        saturate: 60000.0,
        bias_level: a.bias_level,
        flat_amplitude: 0.05,
        cosmic_rays: 12,
    }
}

/// The header WCS of the data pixels.
fn tan() -> TanWcs {
    TanWcs {
        crpix: [128.5, 256.5],
        crval: [150.0, 2.0],
        cd: [[-4.7e-5, 1e-7], [1e-7, 4.7e-5]],
    }
}

fn to_array(img: &Image<f32>) -> ndarray::Array2<f32> {
    ndarray::Array2::from_shape_vec((img.height, img.width), img.data.clone()).unwrap()
}

fn write_image(path: &Path, img: &Image<f32>, cards: &[Card]) {
    let mut w = FitsWriter::create(path, false, Some(&to_array(img))).unwrap();
    w.primary_keys(cards).unwrap();
    w.commit().unwrap();
}

/// Writes the plain and the two-amplifier exposure of one scene under `dir`; returns their
/// units and the stars (x, y, flux in e-, 0-based data pixels).
fn scene(dir: &Path, seed: u64) -> (CcdInput, CcdInput, Vec<Object>) {
    let spec = spec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stars: Vec<Object> = Vec::new();
    while stars.len() < 40 {
        let (x, y) = (
            rng.random_range(12.0..WIDTH as f64 - 12.0),
            rng.random_range(12.0..HEIGHT as f64 - 12.0),
        );
        if stars.iter().all(|s| (s.x - x).hypot(s.y - y) > 15.0) {
            let flux = 10f64.powf(rng.random_range(4.0..5.3));
            stars.push(Object::star(x, y, flux));
        }
    }
    let (bias, flat) = calibration_frames(&spec, &mut rng);
    let exposure_seed = rng.random::<u64>();
    let (plain_raw, _) = expose(
        &spec,
        &stars,
        &bias,
        &flat,
        &mut ChaCha8Rng::seed_from_u64(exposure_seed),
    );
    // The same charge (the same generator draws), read out through two amplifiers.
    let charge = CcdSpec {
        gain: 1.0,
        read_noise: 0.0,
        saturate: f64::INFINITY,
        ..spec.clone()
    };
    let zero = Image::filled(WIDTH, HEIGHT, 0.0f32);
    let (electrons, _) = expose(
        &charge,
        &stars,
        &zero,
        &flat,
        &mut ChaCha8Rng::seed_from_u64(exposure_seed),
    );
    let mut structure = bias.clone();
    structure
        .data
        .iter_mut()
        .for_each(|v| *v -= spec.bias_level as f32);
    let frame = read_out(
        &electrons,
        &structure,
        2,
        OVERSCAN,
        13.0,
        spec.saturate,
        &mut rng,
    );
    assert_eq!(frame.data_x0, OVERSCAN);

    let common = vec![
        Card::text("BAND", "r", ""),
        Card::real("EXPTIME", 30.0, "[s]"),
    ];
    let mut plain_cards = common.clone();
    plain_cards.extend([
        Card::real("GAIN", spec.gain, ""),
        Card::real("RDNOISE", spec.read_noise, ""),
        Card::real("SATURATE", spec.saturate, ""),
    ]);
    plain_cards.extend(wcs_header(&tan()));
    let mut amp_cards = common;
    amp_cards.extend(frame.cards.iter().cloned());
    let mut moved = tan();
    moved.crpix[0] += OVERSCAN as f64;
    amp_cards.extend(wcs_header(&moved));
    let path = |name: &str| dir.join(name);
    write_image(&path("plain.fits"), &plain_raw, &plain_cards);
    write_image(&path("amps.fits"), &frame.raw, &amp_cards);
    write_image(&path("bias.fits"), &bias, &[]);
    write_image(&path("structure.fits"), &structure, &[]);
    write_image(&path("flat.fits"), &flat, &[]);
    let unit = |raw: &str, bias: &str| CcdInput {
        visit: 1,
        ccd: 0,
        band: "r".into(),
        raw: path(raw),
        bias: Some(path(bias)),
        flat: Some(path("flat.fits")),
        variance: None,
    };
    (
        unit("plain.fits", "bias.fits"),
        unit("amps.fits", "structure.fits"),
        stars,
    )
}

struct Calexp {
    width: usize,
    image: Vec<f32>,
    mask: Vec<i32>,
    variance: Vec<f32>,
}

fn read_calexp(run_dir: &Path, visit: u64, ccd: u32) -> Calexp {
    let mut r = FitsReader::open(run_dir.join(output_paths(visit, ccd).0)).unwrap();
    let image = r.image_f32(Hdu::Name("IMAGE")).unwrap();
    let variance = r.image_f32(Hdu::Name("VARIANCE")).unwrap();
    let mask = r.image_f32(Hdu::Name("MASK")).unwrap();
    assert_eq!(image.dim(), (HEIGHT, WIDTH));
    Calexp {
        width: image.ncols(),
        image: image.iter().copied().collect(),
        mask: mask.iter().map(|&v| v as i32).collect(),
        variance: variance.iter().copied().collect(),
    }
}

/// Mean image and median variance of the unmasked pixels of columns `x0..x1`.
fn strip(c: &Calexp, x0: usize, x1: usize) -> (f64, f64) {
    let mut values = Vec::new();
    let mut variances = Vec::new();
    for (i, (&v, &var)) in c.image.iter().zip(&c.variance).enumerate() {
        if (x0..x1).contains(&(i % c.width)) && c.mask[i] == 0 {
            values.push(f64::from(v));
            variances.push(f64::from(var));
        }
    }
    variances.sort_by(f64::total_cmp);
    (
        values.iter().sum::<f64>() / values.len() as f64,
        variances[variances.len() / 2],
    )
}

/// (x, y, ra, dec, flux_psf) of the sources of a catalogue without a problem flag (a PSF star
/// is fine).
fn sources(run_dir: &Path, visit: u64, ccd: u32) -> Vec<[f64; 5]> {
    let mut r = FitsReader::open(run_dir.join(output_paths(visit, ccd).1)).unwrap();
    let h = Hdu::Name("SOURCES");
    let cols: Vec<Vec<f64>> = ["X", "Y", "RA", "DEC", "FLUX_PSF"]
        .iter()
        .map(|c| r.column_f64(h, c).unwrap())
        .collect();
    let flags = r.column_i64(h, "FLAGS").unwrap();
    (0..flags.len())
        .filter(|&i| flags[i] & !i64::from(flags::PSF_STAR) == 0)
        .map(|i| [cols[0][i], cols[1][i], cols[2][i], cols[3][i], cols[4][i]])
        .collect()
}

fn nearest(list: &[[f64; 5]], x: f64, y: f64) -> Option<&[f64; 5]> {
    list.iter()
        .filter(|s| (s[0] - x).hypot(s[1] - y) < 1.0)
        .min_by(|a, b| {
            (a[0] - x)
                .hypot(a[1] - y)
                .total_cmp(&(b[0] - x).hypot(b[1] - y))
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn two_amplifiers_with_overscan_give_the_plain_frames_calexp() {
    let tmp = tempfile::tempdir().unwrap();
    let mean_overscan = ChainParams {
        overscan: skypipe_optical::isr::OverscanMethod::Mean,
        ..ChainParams::default()
    };
    let fitted_rows = ChainParams {
        overscan_fit_order: Some(1),
        ..ChainParams::default()
    };
    let rn_step = SIM_AMPLIFIERS[1].read_noise.powi(2) - SIM_AMPLIFIERS[0].read_noise.powi(2);
    let (mut flux_ratios, mut flux_vs_plain) = (vec![], vec![]);
    for (k, chain) in [ChainParams::default(), mean_overscan, fitted_rows]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("scene{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (plain, amps, stars) = scene(&dir, 100 + k as u64);
        let (plain_run, amp_run) = (dir.join("run-plain"), dir.join("run-amps"));
        process_ccd(&plain, &chain, 1, &plain_run, false).unwrap();
        process_ccd(&amps, &chain, 1, &amp_run, false).unwrap();
        let (pc, ac) = (read_calexp(&plain_run, 1, 0), read_calexp(&amp_run, 1, 0));
        // Across the amplifier boundary (columns 124..128 | 128..132): the sky steps as in
        // the plain frame (continuous: the gains and overscan levels are right), the variance
        // by the difference of the read noises squared.
        let b = WIDTH / 2;
        let (pl, pr) = (strip(&pc, b - 4, b), strip(&pc, b, b + 4));
        let (al, ar) = (strip(&ac, b - 4, b), strip(&ac, b, b + 4));
        let sky_step = (ar.0 - al.0) - (pr.0 - pl.0);
        assert!(
            sky_step.abs() < 1.0,
            "{k}: sky step {sky_step} e- at the boundary"
        );
        let var_step = (ar.1 - al.1) - (pr.1 - pl.1);
        assert!(
            (var_step - rn_step).abs() < 3.0,
            "{k}: variance step {var_step}, expected {rn_step}"
        );
        // The whole image: the same sky after background subtraction.
        let whole = strip(&ac, 0, WIDTH).0 - strip(&pc, 0, WIDTH).0;
        assert!(whole.abs() < 0.5, "{k}: mean sky differs by {whole} e-");
        // Stars: fluxes on the truth and on the plain frame's, same positions and sky
        // coordinates (the header WCS moved by the trim).
        let (ps, as_) = (sources(&plain_run, 1, 0), sources(&amp_run, 1, 0));
        let mut matched = 0;
        for star in &stars {
            let (x, y) = (star.x + 1.0, star.y + 1.0);
            let (Some(sp), Some(sa)) = (nearest(&ps, x, y), nearest(&as_, x, y)) else {
                continue;
            };
            matched += 1;
            flux_ratios.push(sa[4] / star.flux);
            flux_vs_plain.push(sa[4] / sp[4]);
            assert!(
                (sa[0] - sp[0]).hypot(sa[1] - sp[1]) < 0.05,
                "{sa:?} vs {sp:?}"
            );
            let dra = (sa[2] - sp[2]) * sa[3].to_radians().cos() * 3600.0;
            let ddec = (sa[3] - sp[3]) * 3600.0;
            assert!(
                dra.hypot(ddec) < 0.01,
                "{dra}\" {ddec}\" for {sa:?} vs {sp:?}"
            );
        }
        assert!(
            matched >= 25,
            "{k}: {matched} of {} stars matched",
            stars.len()
        );
        // The calibrated exposure's WCS is the plain frame's: the reference pixel moved back.
        let crpix = |run: &Path| {
            FitsReader::open(run.join(output_paths(1, 0).0))
                .unwrap()
                .key_f64(Hdu::Name("IMAGE"), "CRPIX1")
                .unwrap()
        };
        assert!((crpix(&amp_run) - crpix(&plain_run)).abs() < 1e-9);
        // The overscan level subtracted per amplifier is recorded (bias 1000 and 1150 ADU plus
        // the exposure's offset and drift); a frame without overscan records none.
        let level = |run: &Path, key: &str| {
            FitsReader::open(run.join(output_paths(1, 0).0))
                .unwrap()
                .key_f64_opt(Hdu::Primary, key)
                .unwrap()
        };
        let (a, b) = (
            level(&amp_run, "OVSCNA").expect("OVSCNA"),
            level(&amp_run, "OVSCNB").expect("OVSCNB"),
        );
        assert!((1000.0..1200.0).contains(&a), "{k}: OVSCNA {a}");
        assert!(
            ((b - a) - 150.0).abs() < 10.0,
            "{k}: OVSCNA {a}, OVSCNB {b}"
        );
        assert_eq!(level(&plain_run, "OVSCNA"), None);
    }
    let ratio = median(flux_ratios);
    let vs_plain = median(flux_vs_plain);
    assert!(
        (ratio - 1.0).abs() < 0.02,
        "PSF flux / truth: median {ratio}"
    );
    assert!(
        (vs_plain - 1.0).abs() < 0.005,
        "PSF flux / plain: median {vs_plain}"
    );
}

/// Writes `image` with `cards` (plus the simulator's WCS) as a raw frame.
fn write_raw(path: &Path, image: &ndarray::Array2<f32>, cards: &[Card]) {
    let wcs = skypipe_optical::wcs::TanWcs {
        crpix: [40.0, 10.0],
        crval: [150.0, 2.0],
        cd: [[-5e-5, 0.0], [0.0, 5e-5]],
    };
    let mut all = vec![Card::text("BAND", "g", ""), Card::real("EXPTIME", 30.0, "")];
    all.extend(cards.iter().cloned());
    all.extend(skypipe_optical::sim::wcs_header(&wcs));
    let mut w = FitsWriter::create(path, false, Some(image)).unwrap();
    w.primary_keys(&all).unwrap();
    w.commit().unwrap();
}

fn unit(raw: PathBuf, bias: Option<PathBuf>) -> CcdInput {
    CcdInput {
        visit: 1,
        ccd: 0,
        band: "g".into(),
        raw,
        bias,
        flat: None,
        variance: None,
    }
}

#[test]
fn master_bias_is_trimmed_or_untrimmed_and_header_defects_name_file_and_keyword() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    // A 100 × 40 frame: overscan A | data A | data B | overscan B; 400 e- of sky.
    let mut raw = ndarray::Array2::<f32>::zeros((40, 100));
    for ((_, x), v) in raw.indexed_iter_mut() {
        *v = match x {
            0..10 => 1000.0,
            10..50 => 1000.0 + 5.0 + 400.0 / 2.0,
            50..90 => 2000.0 + 5.0 + 400.0 / 4.0,
            _ => 2000.0,
        };
    }
    let good: Vec<Card> = vec![
        Card::text("BIASSECA", "[1:10,1:40]", ""),
        Card::text("DATASECA", "[11:50,1:40]", ""),
        Card::text("DATASECB", "[51:90,1:40]", ""),
        Card::text("BIASSECB", "[91:100,1:40]", ""),
        Card::real("GAINA", 2.0, ""),
        Card::real("GAINB", 4.0, ""),
        Card::real("RDNOISEA", 3.0, ""),
        Card::real("RDNOISEB", 4.0, ""),
    ];
    let raw_path = tmp.path().join("raw.fits");
    write_raw(&raw_path, &raw, &good);
    // The master bias (5 ADU of structure), trimmed and untrimmed.
    let trimmed_bias = tmp.path().join("bias-trimmed.fits");
    let untrimmed_bias = tmp.path().join("bias-untrimmed.fits");
    let wrong_bias = tmp.path().join("bias-wrong.fits");
    for (path, shape) in [
        (&trimmed_bias, (40, 80)),
        (&untrimmed_bias, (40, 100)),
        (&wrong_bias, (40, 90)),
    ] {
        let img = ndarray::Array2::<f32>::from_elem(shape, 5.0);
        FitsWriter::create(path, false, Some(&img))
            .unwrap()
            .commit()
            .unwrap();
    }
    let chain = ChainParams {
        overscan: skypipe_optical::isr::OverscanMethod::Mean,
        ..ChainParams::default()
    };
    let mut images = Vec::new();
    for bias in [&trimmed_bias, &untrimmed_bias] {
        process_ccd(
            &unit(raw_path.clone(), Some(bias.clone())),
            &chain,
            1,
            &run_dir,
            false,
        )
        .unwrap();
        let mut r = FitsReader::open(run_dir.join(output_paths(1, 0).0)).unwrap();
        assert_eq!(r.key_f64(Hdu::Name("IMAGE"), "CRPIX1").unwrap(), 30.0);
        images.push(r.image_f32(Hdu::Name("IMAGE")).unwrap());
    }
    assert_eq!(images[0].dim(), (40, 80));
    assert_eq!(images[0], images[1]);
    let e = process_ccd(
        &unit(raw_path.clone(), Some(wrong_bias)),
        &chain,
        1,
        &run_dir,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bias-wrong.fits")
            && e.contains("[40, 90]")
            && e.contains("[40, 80]")
            && e.contains("[40, 100]"),
        "{e}"
    );

    // Header defects: each fails naming the file and the keyword.
    let replace = |key: &str, card: Card| -> Vec<Card> {
        let mut cards: Vec<Card> = good.iter().filter(|c| c.key != key).cloned().collect();
        cards.push(card);
        cards
    };
    let defects = [
        (
            "outside",
            replace("BIASSECB", Card::text("BIASSECB", "[91:101,1:40]", "")),
            "BIASSECB",
        ),
        (
            "overlap",
            replace("DATASECB", Card::text("DATASECB", "[45:90,1:40]", "")),
            "DATASECB",
        ),
        (
            "no-datasecb",
            good.iter()
                .filter(|c| !["DATASECB", "BIASSECB", "RDNOISEB"].contains(&c.key.as_str()))
                .cloned()
                .collect(),
            "GAINB",
        ),
        (
            "zero-gain",
            replace("GAINA", Card::real("GAINA", 0.0, "")),
            "GAINA",
        ),
        (
            "flipped",
            replace("DATASECA", Card::text("DATASECA", "[50:11,1:40]", "")),
            "DATASECA",
        ),
        (
            "short-overscan",
            replace("BIASSECA", Card::text("BIASSECA", "[1:10,1:20]", "")),
            "BIASSECA",
        ),
    ];
    for (name, cards, keyword) in defects {
        let path = tmp.path().join(format!("{name}.fits"));
        write_raw(&path, &raw, &cards);
        let e = process_ccd(
            &unit(path, None),
            &ChainParams::default(),
            1,
            &run_dir,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("{name}.fits")) && e.contains(keyword),
            "{name}: {e}"
        );
    }
}
