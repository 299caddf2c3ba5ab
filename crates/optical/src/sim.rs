//! The built-in simulated imaging data set (`skypipe-sim image`): a seeded camera of several
//! CCDs observing one field in 2–3 bands, several dithered visits per band.
//!
//! Per visit: a Moffat PSF whose width changes between visits, a sky with a gradient, Poisson
//! and read noise, bias and flat-field structure, a few saturated stars, cosmic rays, and a
//! header WCS perturbed from the truth (offset, rotation, scale). Stars and galaxies (Moffat
//! profiles broadened and made elliptical for galaxies), with a few close star pairs to test
//! deblending. Files written under `--out` (layout in `docs/formats.md`, `## Imaging`):
//! `raw/vVVVV/cCC.fits`, `calib/bias-cCC.fits`, `calib/flat-cCC-B.fits`,
//! `truth/vVVVV/cCC.fits`, `reference.fits`, and `units.json` (the CCD units).
//!
//! [`render_ccd`] draws one CCD from a list of objects in pixel coordinates; the tests use it
//! directly to build fields with known content.

use crate::image::Image;
use crate::singleframe::{CCD_LIST_FORMAT, CcdInput, CcdList};
use crate::wcs::TanWcs;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use skypipe_io::fits::{Card, Column, FitsError, FitsWriter};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

/// Size of the simulated data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// 4 CCDs of 256×512, bands g and r, 2 visits per band (16 CCD units; for tests).
    Tiny,
    /// 4 CCDs of 512×1024 at the tiny set's density (4 times its stars per CCD), bands g and r,
    /// 2 visits per band (16 CCD units; for tests that need more stars per CCD, e.g. mosaic's
    /// joint astrometry).
    Small,
    /// 8 CCDs of 1024×2048, bands g, r, i, 2 visits per band (48 CCD units; for the demo).
    Demo,
    /// A crowded field: 2 CCDs of 1024×2048 with about 20,000 objects each (13 times the demo's
    /// density, many blended), bands g and r, 1 visit per band (4 CCD units; for benchmarks).
    Crowded,
}

/// Command-line options of this simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Data set size.
    #[arg(long, value_enum, default_value = "tiny")]
    pub size: Size,
    /// Random seed (the same seed writes the same files).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// An extra error of every raw header WCS, `ARCSEC,DEG,FRAC`: the pointing moved by
    /// ARCSEC (half in RA, half in Dec, each `ARCSEC/√2`), rotated by DEG about the boresight,
    /// pixel scale times `1 + FRAC`; the truth files keep the true WCS.
    #[arg(long, value_name = "ARCSEC,DEG,FRAC", value_parser = HeaderWcsError::parse)]
    pub wcs_error: Option<HeaderWcsError>,
    /// Position noise of the reference catalogue, milliarcseconds per coordinate.
    #[arg(long, value_name = "MAS", default_value_t = 20.0)]
    pub reference_noise_mas: f64,
    /// Amplifiers per CCD, 1 or 2 (2: DECam-like, A reads the left half, B the right, each with
    /// its own gain, read noise and bias level; keywords `DATASECA`, `GAINA`, …).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub amplifiers: usize,
    /// Overscan columns per amplifier (0: none, the raw frames are the data alone). With
    /// overscan the bias level drifts between exposures and along the rows, and the master
    /// bias holds only the bias structure (overscan-subtracted, zero level).
    #[arg(long, value_name = "COLS", default_value_t = 0)]
    pub overscan: usize,
    /// Extra bright stars (r from 18 to 19) absent in the first band (magnitude
    /// [`DROPOUT_MAG`] there), for forced photometry; left out of the reference catalogue.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub dropouts: usize,
}

/// The first-band magnitude of a dropout star (its flux there is below 10⁻²⁷ e-).
pub const DROPOUT_MAG: f64 = 99.0;

/// Options of the data set beyond size and seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataSetOptions {
    /// Extra error of the raw headers' WCS (none by default).
    pub wcs_error: HeaderWcsError,
    /// Position noise of the reference catalogue, mas per coordinate (default 20).
    pub reference_noise_mas: f64,
    /// Amplifiers per CCD, 1 (default) or 2 ([`read_out`]).
    pub amplifiers: usize,
    /// Overscan columns per amplifier (default 0).
    pub overscan: usize,
    /// Extra stars absent in the first band (default 0; drawn from their own generator, so the
    /// other objects do not change).
    pub dropouts: usize,
}

impl Default for DataSetOptions {
    fn default() -> Self {
        Self {
            wcs_error: HeaderWcsError::default(),
            reference_noise_mas: 20.0,
            amplifiers: 1,
            overscan: 0,
            dropouts: 0,
        }
    }
}

impl DataSetOptions {
    /// Whether the raw frames are written as before amplifiers existed: one amplifier, no
    /// overscan, one `GAIN`/`RDNOISE` (the files do not change).
    fn plain_readout(&self) -> bool {
        self.amplifiers == 1 && self.overscan == 0
    }
}

/// One simulated amplifier: gain, read noise and bias level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimAmplifier {
    /// e- per ADU.
    pub gain: f64,
    /// Read noise, e-.
    pub read_noise: f64,
    /// Bias level, ADU.
    pub bias_level: f64,
}

/// The simulated amplifiers: A (the camera's usual gain, read noise and bias level) and B.
pub const SIM_AMPLIFIERS: [SimAmplifier; 2] = [
    SimAmplifier {
        gain: 1.5,
        read_noise: 5.0,
        bias_level: 1000.0,
    },
    SimAmplifier {
        gain: 1.9,
        read_noise: 6.5,
        bias_level: 1150.0,
    },
];

/// Drift of the bias level along the rows, ADU per row (seen by the overscan).
const BIAS_ROW_DRIFT: f64 = 0.004;

/// A raw frame read out through amplifiers, with its header cards.
#[derive(Debug, Clone)]
pub struct ReadOutFrame {
    /// The raw frame, ADU: data and overscan columns.
    pub raw: Image<f32>,
    /// The readout keywords (`DATASEC…`, `BIASSEC…`, `GAIN…`, `RDNOISE…`, `SATURAT…`).
    pub cards: Vec<Card>,
    /// Column of the raw frame where the data start (0-based): the header WCS's reference
    /// pixel is moved by it.
    pub data_x0: usize,
}

/// Reads out a CCD exposed in electrons (`electrons`: flat-fielded charge with its Poisson and
/// cosmic-ray noise, no bias, no read noise) through `n_amplifiers` (1 or 2) of
/// [`SIM_AMPLIFIERS`], each with `overscan` overscan columns on its outer side
/// (`[overscan A | data A | data B | overscan B]`). Each amplifier adds its bias level (plus
/// `level_offset` and a drift along the rows when there is overscan, which the overscan sees)
/// and `structure` (the master bias's pattern, which it does not), its read noise, divides by
/// its gain and clips at `saturate` ADU.
pub fn read_out(
    electrons: &Image<f32>,
    structure: &Image<f32>,
    n_amplifiers: usize,
    overscan: usize,
    level_offset: f64,
    saturate: f64,
    rng: &mut ChaCha8Rng,
) -> ReadOutFrame {
    debug_assert!(n_amplifiers == 1 || n_amplifiers == 2);
    let (w, h) = (electrons.width, electrons.height);
    let data_x0 = if n_amplifiers == 2 { overscan } else { 0 };
    let raw_w = w + n_amplifiers * overscan;
    let mut raw = Image::filled(raw_w, h, 0.0f32);
    // Per amplifier: its data columns (in the exposure) and overscan columns (in the frame).
    let split = if n_amplifiers == 2 { w / 2 } else { w };
    let layout: Vec<(usize, std::ops::Range<usize>, std::ops::Range<usize>)> = if n_amplifiers == 2
    {
        vec![
            (0, 0..split, 0..overscan),
            (1, split..w, overscan + w..raw_w),
        ]
    } else {
        vec![(0, 0..w, w..raw_w)]
    };
    let drift = if overscan > 0 { BIAS_ROW_DRIFT } else { 0.0 };
    let offset = if overscan > 0 { level_offset } else { 0.0 };
    let mut cards = Vec::new();
    for (a, data, os) in &layout {
        let amp = SIM_AMPLIFIERS[*a];
        for y in 0..h {
            let level = amp.bias_level + offset + drift * y as f64;
            for x in data.clone() {
                let z: f64 = rng.sample(StandardNormal);
                let e = f64::from(electrons.get(x, y)) + amp.read_noise * z;
                let v = level + f64::from(structure.get(x, y)) + e / amp.gain;
                raw.set(x + data_x0, y, v.min(saturate) as f32);
            }
            for x in os.clone() {
                let z: f64 = rng.sample(StandardNormal);
                raw.set(x, y, (level + amp.read_noise * z / amp.gain) as f32);
            }
        }
        let suffix = if n_amplifiers == 2 {
            ["A", "B"][*a]
        } else {
            ""
        };
        let section =
            |cols: &std::ops::Range<usize>| format!("[{}:{},1:{h}]", cols.start + 1, cols.end);
        let data_cols = data.start + data_x0..data.end + data_x0;
        cards.push(Card::text(
            &format!("DATASEC{suffix}"),
            &section(&data_cols),
            "data section",
        ));
        if overscan > 0 {
            cards.push(Card::text(
                &format!("BIASSEC{suffix}"),
                &section(os),
                "overscan section",
            ));
        }
        cards.push(Card::real(&format!("GAIN{suffix}"), amp.gain, "[e-/ADU]"));
        cards.push(Card::real(
            &format!("RDNOISE{suffix}"),
            amp.read_noise,
            "[e-] read noise",
        ));
        let sat_key = if suffix.is_empty() {
            "SATURATE".to_string()
        } else {
            format!("SATURAT{suffix}")
        };
        cards.push(Card::real(&sat_key, saturate, "[ADU] saturation level"));
    }
    if n_amplifiers == 2 {
        cards.push(Card::text(
            "TRIMSEC",
            &format!("[{}:{},1:{h}]", data_x0 + 1, data_x0 + w),
            "the calibrated image",
        ));
    }
    ReadOutFrame {
        raw,
        cards,
        data_x0,
    }
}

/// The master bias the simulator writes for a readout: with overscan, the structure alone
/// (zero level: overscan-subtracted); without, each amplifier's level plus the structure.
fn master_bias(structure: &Image<f32>, n_amplifiers: usize, overscan: usize) -> Image<f32> {
    let mut bias = structure.clone();
    if overscan == 0 {
        let split = if n_amplifiers == 2 {
            bias.width / 2
        } else {
            bias.width
        };
        for y in 0..bias.height {
            for x in 0..bias.width {
                let a = usize::from(x >= split);
                let v = bias.get(x, y) + SIM_AMPLIFIERS[a].bias_level as f32;
                bias.set(x, y, v);
            }
        }
    }
    bias
}

/// A deliberate error of the raw headers' WCS (`skypipe-sim image --wcs-error`), on top of the
/// small pointing error every simulated header has.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeaderWcsError {
    /// Pointing offset, arcsec (split equally between RA and Dec).
    pub offset_arcsec: f64,
    /// Rotation about the boresight, degrees.
    pub rotation_deg: f64,
    /// Fractional pixel-scale error.
    pub scale: f64,
}

/// Why a `--wcs-error` value was refused; each quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseHeaderWcsError {
    /// A part is not a number.
    #[error("'{text}': {source} (expected ARCSEC,DEG,FRAC)")]
    Number {
        /// The text given.
        text: String,
        /// Cause.
        #[source]
        source: std::num::ParseFloatError,
    },
    /// Not three finite numbers, or a scale error of -0.5 or less.
    #[error("'{text}': expected three finite numbers ARCSEC,DEG,FRAC with FRAC > -0.5")]
    Values {
        /// The text given.
        text: String,
    },
}

impl HeaderWcsError {
    /// Parses `ARCSEC,DEG,FRAC`.
    pub fn parse(s: &str) -> Result<Self, ParseHeaderWcsError> {
        let v: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|source| ParseHeaderWcsError::Number {
                text: s.into(),
                source,
            })?;
        match v[..] {
            [offset_arcsec, rotation_deg, scale]
                if v.iter().all(|x| x.is_finite()) && scale > -0.5 =>
            {
                Ok(Self {
                    offset_arcsec,
                    rotation_deg,
                    scale,
                })
            }
            _ => Err(ParseHeaderWcsError::Values { text: s.into() }),
        }
    }

    /// The header WCS of a CCD made wrong by this error: `header(dra, ddec, drot, scale)`
    /// builds it from offsets in degrees, a rotation in radians and a scale factor.
    fn apply(&self, dec: f64, header: impl Fn(f64, f64, f64, f64) -> TanWcs) -> TanWcs {
        let d = self.offset_arcsec / 2f64.sqrt() / 3600.0;
        header(
            d / dec.to_radians().cos(),
            d,
            self.rotation_deg.to_radians(),
            1.0 + self.scale,
        )
    }
}

/// Kind of a simulated object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A point source (the PSF).
    Star,
    /// An extended source: a broader, elliptical Moffat.
    Galaxy,
}

impl Kind {
    /// The name used in the truth tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Star => "star",
            Kind::Galaxy => "galaxy",
        }
    }
}

/// One object on a CCD, in 0-based pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Centre x.
    pub x: f64,
    /// Centre y.
    pub y: f64,
    /// Total flux, electrons.
    pub flux: f64,
    /// Star or galaxy.
    pub kind: Kind,
    /// Intrinsic size added in quadrature to the Moffat α (galaxies), pixels.
    pub size: f64,
    /// Axis ratio b/a (1 for stars).
    pub q: f64,
    /// Position angle of the major axis, radians.
    pub theta: f64,
}

impl Object {
    /// A star.
    pub fn star(x: f64, y: f64, flux: f64) -> Self {
        Self {
            x,
            y,
            flux,
            kind: Kind::Star,
            size: 0.0,
            q: 1.0,
            theta: 0.0,
        }
    }
}

/// How to draw one CCD.
#[derive(Debug, Clone)]
pub struct CcdSpec {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// PSF FWHM, pixels.
    pub psf_fwhm: f64,
    /// Moffat β of the PSF.
    pub psf_beta: f64,
    /// Sky at the CCD centre, e- per pixel (before the flat).
    pub sky: f64,
    /// Fractional sky change across the CCD along x and y.
    pub sky_gradient: [f64; 2],
    /// e- per ADU.
    pub gain: f64,
    /// Read noise, e-.
    pub read_noise: f64,
    /// Saturation of the raw image, ADU.
    pub saturate: f64,
    /// Bias level, ADU.
    pub bias_level: f64,
    /// Amplitude of the flat-field structure (0 for a flat of ones).
    pub flat_amplitude: f64,
    /// Number of cosmic-ray tracks.
    pub cosmic_rays: usize,
}

impl CcdSpec {
    /// The true sky (e- per pixel, before the flat) at 0-based pixel (x, y).
    pub fn sky_at(&self, x: f64, y: f64) -> f64 {
        self.sky
            * (1.0
                + self.sky_gradient[0] * (x / self.width as f64 - 0.5)
                + self.sky_gradient[1] * (y / self.height as f64 - 0.5))
    }

    /// Expected matched-filter S/N of an object: `F / sqrt(F + 4π σ² (sky + rn²))`, with σ
    /// the Gaussian-equivalent width of the PSF (and the object's size).
    pub fn expected_snr(&self, o: &Object) -> f64 {
        let s = self.psf_fwhm / 2.354_820_045;
        let s2 = s * s + o.size * o.size / (q_safe(o.q));
        let noise = 4.0 * PI * s2 * (self.sky_at(o.x, o.y) + self.read_noise.powi(2));
        o.flux / (o.flux + noise).sqrt()
    }
}

fn q_safe(q: f64) -> f64 {
    q.clamp(0.2, 1.0)
}

/// A drawn CCD: the raw image (ADU) and its calibration frames.
#[derive(Debug, Clone)]
pub struct RenderedCcd {
    /// Raw image, ADU, clipped at saturation.
    pub raw: Image<f32>,
    /// Master bias, ADU.
    pub bias: Image<f32>,
    /// Master flat (mean ≈ 1).
    pub flat: Image<f32>,
    /// Pixels hit by cosmic rays (0-based x, y).
    pub cosmic_rays: Vec<(usize, usize)>,
}

/// Moffat α for a FWHM and β.
pub fn moffat_alpha(fwhm: f64, beta: f64) -> f64 {
    fwhm / (2.0 * (2f64.powf(1.0 / beta) - 1.0).sqrt())
}

/// Adds the object's pixel-integrated profile (normalised to its flux over the full stamp,
/// including pixels off the CCD) to `img` (electrons).
pub fn add_object(img: &mut Image<f64>, o: &Object, psf_fwhm: f64, psf_beta: f64) {
    let alpha_psf = moffat_alpha(psf_fwhm, psf_beta);
    let (alpha, beta) = match o.kind {
        Kind::Star => (alpha_psf, psf_beta),
        Kind::Galaxy => ((alpha_psf * alpha_psf + o.size * o.size).sqrt(), 2.5),
    };
    let q = q_safe(o.q);
    let (c, s) = (o.theta.cos(), o.theta.sin());
    let rmax = (12.0 * alpha / q.sqrt()).min(90.0).ceil();
    let (x0, x1) = ((o.x - rmax).floor() as i64, (o.x + rmax).ceil() as i64);
    let (y0, y1) = ((o.y - rmax).floor() as i64, (o.y + rmax).ceil() as i64);
    let nsub = 5;
    let mut stamp: Vec<(i64, i64, f64)> = Vec::new();
    let mut total = 0.0;
    for py in y0..=y1 {
        for px in x0..=x1 {
            let near = ((px as f64 - o.x).hypot(py as f64 - o.y)) < 2.5 * alpha / q.sqrt();
            let n = if near { nsub } else { 1 };
            let mut v = 0.0;
            for j in 0..n {
                for i in 0..n {
                    let dx = px as f64 - 0.5 + (i as f64 + 0.5) / n as f64 - o.x;
                    let dy = py as f64 - 0.5 + (j as f64 + 0.5) / n as f64 - o.y;
                    // Rotate into the major/minor frame; stretch the minor axis.
                    let u = c * dx + s * dy;
                    let w = (-s * dx + c * dy) / q;
                    let r2 = (u * u + w * w) / (alpha * alpha);
                    v += (1.0 + r2).powf(-beta);
                }
            }
            v /= (n * n) as f64;
            total += v;
            stamp.push((px, py, v));
        }
    }
    if total <= 0.0 {
        return;
    }
    let scale = o.flux / total;
    for (px, py, v) in stamp {
        if px >= 0 && py >= 0 && (px as usize) < img.width && (py as usize) < img.height {
            let i = py as usize * img.width + px as usize;
            img.data[i] += v * scale;
        }
    }
}

/// Master bias (ADU: level, a column pattern and a row gradient; no randomness, so the same
/// for every band) and master flat (mean ≈ 1: a smooth pattern, vignetting and 0.1% pixel
/// response; seeded by `rng`) of a CCD.
pub fn calibration_frames(spec: &CcdSpec, rng: &mut ChaCha8Rng) -> (Image<f32>, Image<f32>) {
    let (w, h) = (spec.width, spec.height);
    let mut flat = Image::filled(w, h, 1.0f32);
    let mut bias = Image::filled(w, h, 0.0f32);
    let phase: f64 = rng.random_range(0.0..2.0 * PI);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
            let r2 = (fx - 0.5).powi(2) + (fy - 0.5).powi(2);
            let pixel: f64 = rng.sample(StandardNormal);
            let f = 1.0
                + spec.flat_amplitude
                    * (0.5 * (2.0 * PI * fx + phase).sin() * (PI * fy).cos() - r2 + 0.02 * pixel);
            flat.set(x, y, f as f32);
            let b = spec.bias_level + 3.0 * (x as f64 / 7.0).sin() + 0.002 * y as f64;
            bias.set(x, y, b as f32);
        }
    }
    (bias, flat)
}

/// Exposes a CCD: objects and sky in electrons, times the flat, Poisson noise, cosmic rays
/// (straight tracks of 1–6 pixels, 400–5000 e- each), read noise, then
/// `raw = bias + charge / gain` clipped at saturation. Returns the raw image (ADU) and the
/// cosmic-ray pixels.
pub fn expose(
    spec: &CcdSpec,
    objects: &[Object],
    bias: &Image<f32>,
    flat: &Image<f32>,
    rng: &mut ChaCha8Rng,
) -> (Image<f32>, Vec<(usize, usize)>) {
    let (w, h) = (spec.width, spec.height);
    let mut e = Image::filled(w, h, 0.0f64);
    for o in objects {
        add_object(&mut e, o, spec.psf_fwhm, spec.psf_beta);
    }
    let mut cr = Image::filled(w, h, 0.0f64);
    let mut cosmic = Vec::new();
    for _ in 0..spec.cosmic_rays {
        let len = rng.random_range(1..=6usize);
        let ang: f64 = rng.random_range(0.0..PI);
        let (sx, sy) = (
            rng.random_range(0.0..w as f64),
            rng.random_range(0.0..h as f64),
        );
        let amp: f64 = rng.random_range(400.0..5000.0);
        for k in 0..len {
            let x = (sx + k as f64 * ang.cos()).round();
            let y = (sy + k as f64 * ang.sin()).round();
            if x >= 0.0 && y >= 0.0 && (x as usize) < w && (y as usize) < h {
                let (x, y) = (x as usize, y as usize);
                if cr.get(x, y) == 0.0 {
                    cosmic.push((x, y));
                }
                cr.set(x, y, amp);
            }
        }
    }
    let mut raw = Image::filled(w, h, 0.0f32);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let lambda = f64::from(flat.data[i]) * (spec.sky_at(x as f64, y as f64) + e.data[i]);
            let mut n = poisson(lambda.max(0.0), rng) + cr.data[i];
            let z: f64 = rng.sample(StandardNormal);
            n += spec.read_noise * z;
            raw.data[i] = (f64::from(bias.data[i]) + n / spec.gain).min(spec.saturate) as f32;
        }
    }
    (raw, cosmic)
}

/// Draws a CCD with its own calibration frames: [`calibration_frames`] then [`expose`].
pub fn render_ccd(spec: &CcdSpec, objects: &[Object], rng: &mut ChaCha8Rng) -> RenderedCcd {
    let (bias, flat) = calibration_frames(spec, rng);
    let (raw, cosmic_rays) = expose(spec, objects, &bias, &flat, rng);
    RenderedCcd {
        raw,
        bias,
        flat,
        cosmic_rays,
    }
}

/// A Poisson deviate (normal approximation above 1000, where it is accurate to well below the
/// noise itself).
fn poisson(lambda: f64, rng: &mut ChaCha8Rng) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda > 1000.0 {
        let z: f64 = rng.sample(StandardNormal);
        return lambda + lambda.sqrt() * z;
    }
    Poisson::new(lambda).map_or(lambda, |p| p.sample(rng))
}

/// An object on the sky with a magnitude per band.
#[derive(Debug, Clone)]
struct SkyObject {
    id: i64,
    ra: f64,
    dec: f64,
    mags: Vec<f64>,
    kind: Kind,
    size: f64,
    q: f64,
    theta: f64,
    pair: i64,
}

/// The camera and survey of one data set size.
#[derive(Debug, Clone)]
struct Survey {
    ccd_cols: usize,
    ccd_rows: usize,
    width: usize,
    height: usize,
    bands: Vec<&'static str>,
    visits_per_band: usize,
    objects_per_ccd: usize,
}

const PIXEL_SCALE_DEG: f64 = 0.2 / 3600.0;
const GAP: f64 = 40.0;
const FIELD: (f64, f64) = (150.0, 2.0);
/// Zero points: e- in one exposure for magnitude 0 is 10^(0.4 ZP).
const ZERO_POINTS: [(&str, f64); 3] = [("g", 30.0), ("r", 30.2), ("i", 29.9)];
const SKY: [(&str, f64); 3] = [("g", 200.0), ("r", 350.0), ("i", 500.0)];
const EXPTIME: f64 = 30.0;

fn survey(size: Size) -> Survey {
    match size {
        Size::Tiny => Survey {
            ccd_cols: 2,
            ccd_rows: 2,
            width: 256,
            height: 512,
            bands: vec!["g", "r"],
            visits_per_band: 2,
            objects_per_ccd: 250,
        },
        Size::Small => Survey {
            ccd_cols: 2,
            ccd_rows: 2,
            width: 512,
            height: 1024,
            bands: vec!["g", "r"],
            visits_per_band: 2,
            objects_per_ccd: 1000,
        },
        Size::Demo => Survey {
            ccd_cols: 4,
            ccd_rows: 2,
            width: 1024,
            height: 2048,
            bands: vec!["g", "r", "i"],
            visits_per_band: 2,
            objects_per_ccd: 1500,
        },
        Size::Crowded => Survey {
            ccd_cols: 2,
            ccd_rows: 1,
            width: 1024,
            height: 2048,
            bands: vec!["g", "r"],
            visits_per_band: 1,
            objects_per_ccd: 20_000,
        },
    }
}

fn lookup(table: &[(&str, f64)], band: &str) -> f64 {
    table.iter().find(|(b, _)| *b == band).map_or(30.0, |t| t.1)
}

/// The true WCS of CCD `(col, row)` for a pointing and rotation.
fn ccd_wcs(s: &Survey, col: usize, row: usize, ra: f64, dec: f64, rot: f64, scale: f64) -> TanWcs {
    // Focal plane: CCDs on a grid with gaps, boresight at the centre of the grid.
    let fp_w = s.ccd_cols as f64 * s.width as f64 + (s.ccd_cols - 1) as f64 * GAP;
    let fp_h = s.ccd_rows as f64 * s.height as f64 + (s.ccd_rows - 1) as f64 * GAP;
    let ox = col as f64 * (s.width as f64 + GAP);
    let oy = row as f64 * (s.height as f64 + GAP);
    let (c, sn) = (rot.cos(), rot.sin());
    TanWcs {
        crpix: [fp_w / 2.0 - ox + 0.5, fp_h / 2.0 - oy + 0.5],
        crval: [ra, dec],
        cd: [[-scale * c, scale * sn], [scale * sn, scale * c]],
    }
}

fn wcs_cards(w: &TanWcs, prefix: &str) -> Vec<Card> {
    let k = |n: &str| format!("{prefix}{n}");
    let mut cards = Vec::new();
    if prefix.is_empty() {
        cards.push(Card::text("CTYPE1", "RA---TAN", "gnomonic projection"));
        cards.push(Card::text("CTYPE2", "DEC--TAN", "gnomonic projection"));
        cards.push(Card::text("CUNIT1", "deg", ""));
        cards.push(Card::text("CUNIT2", "deg", ""));
        cards.push(Card::text("RADESYS", "ICRS", ""));
    }
    cards.extend([
        Card::real(&k("CRPIX1"), w.crpix[0], "reference pixel x"),
        Card::real(&k("CRPIX2"), w.crpix[1], "reference pixel y"),
        Card::real(&k("CRVAL1"), w.crval[0], "[deg] RA at the reference pixel"),
        Card::real(&k("CRVAL2"), w.crval[1], "[deg] Dec at the reference pixel"),
        Card::real(&k("CD1_1"), w.cd[0][0], "[deg/pix]"),
        Card::real(&k("CD1_2"), w.cd[0][1], "[deg/pix]"),
        Card::real(&k("CD2_1"), w.cd[1][0], "[deg/pix]"),
        Card::real(&k("CD2_2"), w.cd[1][1], "[deg/pix]"),
    ]);
    cards
}

/// Header cards of the WCS in standard FITS form (`CTYPEn`, `CRPIXn`, `CRVALn`, `CDi_j`).
pub fn wcs_header(w: &TanWcs) -> Vec<Card> {
    wcs_cards(w, "")
}

/// Draws a magnitude from `p(m) ∝ 10^(slope m)` on `[lo, hi]`.
fn power_law_mag(rng: &mut ChaCha8Rng, lo: f64, hi: f64, slope: f64) -> f64 {
    let u: f64 = rng.random_range(0.0..1.0);
    let (a, b) = (10f64.powf(slope * lo), 10f64.powf(slope * hi));
    (a + u * (b - a)).log10() / slope
}

fn sky_objects(s: &Survey, rng: &mut ChaCha8Rng, dropouts: usize, seed: u64) -> Vec<SkyObject> {
    let fp_w = s.ccd_cols as f64 * s.width as f64 + (s.ccd_cols - 1) as f64 * GAP;
    let fp_h = s.ccd_rows as f64 * s.height as f64 + (s.ccd_rows - 1) as f64 * GAP;
    let margin = 300.0;
    let (hw, hh) = (
        (fp_w / 2.0 + margin) * PIXEL_SCALE_DEG,
        (fp_h / 2.0 + margin) * PIXEL_SCALE_DEG,
    );
    let area_factor =
        ((fp_w + 2.0 * margin) * (fp_h + 2.0 * margin)) / (s.width as f64 * s.height as f64);
    let n = (s.objects_per_ccd as f64 * area_factor) as usize;
    let nb = s.bands.len();
    let cosd = FIELD.1.to_radians().cos();
    let mut out: Vec<SkyObject> = Vec::with_capacity(n + n / 10);
    let color = |rng: &mut ChaCha8Rng, m_r: f64| -> Vec<f64> {
        let gr: f64 = rng.random_range(0.2..1.2);
        let ri: f64 = rng.random_range(0.0..0.5);
        (0..nb)
            .map(|b| match b {
                0 => m_r + gr,
                1 => m_r,
                _ => m_r - ri,
            })
            .collect()
    };
    for _ in 0..n {
        let ra = FIELD.0 + rng.random_range(-hw..hw) / cosd;
        let dec = FIELD.1 + rng.random_range(-hh..hh);
        let star = rng.random_bool(0.5);
        let id = out.len() as i64;
        if star {
            let m = power_law_mag(rng, 16.0, 24.5, 0.25);
            let mags = color(rng, m);
            out.push(SkyObject {
                id,
                ra,
                dec,
                mags,
                kind: Kind::Star,
                size: 0.0,
                q: 1.0,
                theta: 0.0,
                pair: -1,
            });
            // A few close pairs (2.3–3 × a typical FWHM apart), for deblending.
            if rng.random_bool(0.04) && m < 21.0 {
                let sep = rng.random_range(2.3..3.0) * 3.2 * PIXEL_SCALE_DEG;
                let ang: f64 = rng.random_range(0.0..2.0 * PI);
                let m2 = m + rng.random_range(0.0..1.0);
                let mags = color(rng, m2);
                let id2 = id + 1;
                out[id as usize].pair = id2;
                out.push(SkyObject {
                    id: id2,
                    ra: ra + sep * ang.cos() / cosd,
                    dec: dec + sep * ang.sin(),
                    mags,
                    kind: Kind::Star,
                    size: 0.0,
                    q: 1.0,
                    theta: 0.0,
                    pair: id,
                });
            }
        } else {
            let m = power_law_mag(rng, 18.0, 24.5, 0.3);
            let mags = color(rng, m);
            out.push(SkyObject {
                id,
                ra,
                dec,
                mags,
                kind: Kind::Galaxy,
                size: rng.random_range(0.5..3.0),
                q: rng.random_range(0.4..1.0),
                theta: rng.random_range(0.0..PI),
                pair: -1,
            });
        }
    }
    // A few saturated stars: about two per CCD.
    let nsat = 2 * s.ccd_cols * s.ccd_rows;
    for _ in 0..nsat {
        let id = out.len() as i64;
        let m = rng.random_range(12.5..14.0);
        let mags = color(rng, m);
        out.push(SkyObject {
            id,
            ra: FIELD.0 + rng.random_range(-hw..hw) / cosd,
            dec: FIELD.1 + rng.random_range(-hh..hh),
            mags,
            kind: Kind::Star,
            size: 0.0,
            q: 1.0,
            theta: 0.0,
            pair: -1,
        });
    }
    // Dropouts: their own generator, so that the objects above do not depend on their number.
    let mut drng = ChaCha8Rng::seed_from_u64(seed ^ 0xd20b_0075);
    for _ in 0..dropouts {
        let id = out.len() as i64;
        let m = drng.random_range(18.0..19.0);
        let mut mags = color(&mut drng, m);
        mags[0] = DROPOUT_MAG;
        out.push(SkyObject {
            id,
            ra: FIELD.0 + drng.random_range(-hw..hw) / cosd,
            dec: FIELD.1 + drng.random_range(-hh..hh),
            mags,
            kind: Kind::Star,
            size: 0.0,
            q: 1.0,
            theta: 0.0,
            pair: -1,
        });
    }
    out
}

/// Writes the whole data set; the error names the file that could not be written.
pub fn write_data_set(out: &Path, size: Size, seed: u64) -> Result<usize, FitsError> {
    write_data_set_with(out, size, seed, &DataSetOptions::default())
}

/// [`write_data_set`] with options (header WCS error, reference catalogue noise).
pub fn write_data_set_with(
    out: &Path,
    size: Size,
    seed: u64,
    options: &DataSetOptions,
) -> Result<usize, FitsError> {
    let wcs_error = options.wcs_error;
    let s = survey(size);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let objects = sky_objects(&s, &mut rng, options.dropouts, seed);
    let nccd = s.ccd_cols * s.ccd_rows;
    let nb = s.bands.len();
    let gain = 1.5;
    let read_noise = 5.0;
    let saturate = 60000.0;

    // Reference catalogue: stars brighter than r = 21.5, positions with the configured noise.
    let stars: Vec<&SkyObject> = objects
        .iter()
        .filter(|o| o.kind == Kind::Star && o.mags[1.min(nb - 1)] < 21.5 && o.mags[0] < DROPOUT_MAG)
        .collect();
    let cosd = FIELD.1.to_radians().cos();
    let noise = options.reference_noise_mas / 1000.0 / 3600.0;
    let mut cols = vec![
        Column::i64("ID", "", stars.iter().map(|o| o.id).collect()),
        Column::f64(
            "RA",
            "deg",
            stars
                .iter()
                .map(|o| {
                    let z: f64 = rng.sample(StandardNormal);
                    o.ra + z * noise / cosd
                })
                .collect(),
        ),
        Column::f64(
            "DEC",
            "deg",
            stars
                .iter()
                .map(|o| {
                    let z: f64 = rng.sample(StandardNormal);
                    o.dec + z * noise
                })
                .collect(),
        ),
    ];
    for (b, band) in s.bands.iter().enumerate() {
        cols.push(Column::f64(
            &format!("MAG_{}", band.to_uppercase()),
            "mag",
            stars.iter().map(|o| o.mags[b]).collect(),
        ));
    }
    let mut w = FitsWriter::create(out.join("reference.fits"), false, None)?;
    w.table(
        "REFCAT",
        &cols,
        &[Card::text(
            "BANDS",
            &s.bands.join(","),
            "magnitude columns MAG_<BAND>",
        )],
    )?;
    w.commit()?;

    // Calibration frames: one bias per CCD, one flat per CCD and band (the flat's structure
    // depends on the CCD; its seed on the CCD and band).
    let base = CcdSpec {
        width: s.width,
        height: s.height,
        psf_fwhm: 3.0,
        psf_beta: 3.5,
        sky: 300.0,
        sky_gradient: [0.0, 0.0],
        gain,
        read_noise,
        saturate,
        bias_level: 1000.0,
        flat_amplitude: 0.05,
        cosmic_rays: 0,
    };

    let mut units = Vec::new();
    let mut visit = 0u64;
    for (b, band) in s.bands.iter().enumerate() {
        for _ in 0..s.visits_per_band {
            visit += 1;
            let dra = rng.random_range(-20.0..20.0) / 3600.0 / cosd;
            let ddec = rng.random_range(-20.0..20.0) / 3600.0;
            let rot: f64 = rng.random_range(-0.05f64..0.05).to_radians();
            let fwhm = rng.random_range(2.6..3.8);
            let sky = lookup(&SKY, band) * rng.random_range(0.8..1.2);
            let grad = [rng.random_range(-0.1..0.1), rng.random_range(-0.1..0.1)];
            // Header WCS: the pointing as the telescope reports it.
            let hdr_dra = rng.random_range(-2.0..2.0) / 3600.0;
            let hdr_ddec = rng.random_range(-2.0..2.0) / 3600.0;
            let hdr_rot: f64 = rng.random_range(-0.02f64..0.02).to_radians();
            let hdr_scale = 1.0 + rng.random_range(-3e-4..3e-4);
            let zp = lookup(&ZERO_POINTS, band);
            // CCDs are drawn in parallel; each has its own seeded generators, so the files
            // do not depend on the number of threads.
            let drawn_ccds: Vec<Result<CcdInput, FitsError>> = (0..nccd)
                .into_par_iter()
                .map(|ccd| -> Result<CcdInput, FitsError> {
                    let (col, row) = (ccd % s.ccd_cols, ccd / s.ccd_cols);
                    let (ra, dec) = (FIELD.0 + dra, FIELD.1 + ddec);
                    let truth_wcs = ccd_wcs(&s, col, row, ra, dec, rot, PIXEL_SCALE_DEG);
                    let mut readout: Option<(Vec<Card>, usize)> = None;
                    let header_wcs = wcs_error.apply(dec, |era, edec, erot, escale| {
                        ccd_wcs(
                            &s,
                            col,
                            row,
                            ra + hdr_dra + era,
                            dec + hdr_ddec + edec,
                            rot + hdr_rot + erot,
                            PIXEL_SCALE_DEG * hdr_scale * escale,
                        )
                    });
                    let spec = CcdSpec {
                        psf_fwhm: fwhm,
                        sky,
                        sky_gradient: grad,
                        cosmic_rays: (s.width * s.height) / 8000,
                        ..base.clone()
                    };
                    let mut on_ccd: Vec<(i64, Object, f64, i64)> = Vec::new();
                    let mut drawn: Vec<Object> = Vec::new();
                    for o in &objects {
                        let Some((x1, y1)) = truth_wcs.sky_to_pixel(o.ra, o.dec) else {
                            continue;
                        };
                        let (x, y) = (x1 - 1.0, y1 - 1.0);
                        let m = 80.0;
                        if x < -m || y < -m || x > s.width as f64 + m || y > s.height as f64 + m {
                            continue;
                        }
                        let obj = Object {
                            x,
                            y,
                            flux: 10f64.powf(0.4 * (zp - o.mags[b])),
                            kind: o.kind,
                            size: o.size,
                            q: o.q,
                            theta: o.theta,
                        };
                        if x >= -0.5
                            && y >= -0.5
                            && x < s.width as f64 - 0.5
                            && y < s.height as f64 - 0.5
                        {
                            on_ccd.push((o.id, obj.clone(), o.mags[b], o.pair));
                        }
                        drawn.push(obj);
                    }
                    let mut frng = ChaCha8Rng::seed_from_u64(
                        seed ^ 0x5eed_f1a7 ^ ((ccd as u64) << 8) ^ b as u64,
                    );
                    let (bias, flat) = calibration_frames(&base, &mut frng);
                    let mut crng = ChaCha8Rng::seed_from_u64(
                        seed.wrapping_mul(1_000_003) ^ (visit << 16) ^ ccd as u64,
                    );
                    let (raw, master) = if options.plain_readout() {
                        (expose(&spec, &drawn, &bias, &flat, &mut crng), bias.clone())
                    } else {
                        // The same charge as a plain frame (the same generator draws), then
                        // read out through the amplifiers.
                        let charge = CcdSpec {
                            gain: 1.0,
                            read_noise: 0.0,
                            saturate: f64::INFINITY,
                            ..spec.clone()
                        };
                        let zero = Image::filled(s.width, s.height, 0.0f32);
                        let (electrons, cosmic) = expose(&charge, &drawn, &zero, &flat, &mut crng);
                        let mut structure = bias.clone();
                        for v in &mut structure.data {
                            *v -= base.bias_level as f32;
                        }
                        let mut arng = ChaCha8Rng::seed_from_u64(
                            seed.wrapping_mul(7_919) ^ (visit << 20) ^ ((ccd as u64) << 4) ^ 0xa3,
                        );
                        let offset = arng.random_range(-20.0..20.0);
                        let frame = read_out(
                            &electrons,
                            &structure,
                            options.amplifiers,
                            options.overscan,
                            offset,
                            saturate,
                            &mut arng,
                        );
                        readout = Some((frame.cards, frame.data_x0));
                        (
                            (frame.raw, cosmic),
                            master_bias(&structure, options.amplifiers, options.overscan),
                        )
                    };

                    let raw_rel = format!("raw/v{visit:04}/c{ccd:02}.fits");
                    let bias_rel = format!("calib/bias-c{ccd:02}.fits");
                    let flat_rel = format!("calib/flat-c{ccd:02}-{band}.fits");
                    let truth_rel = format!("truth/v{visit:04}/c{ccd:02}.fits");
                    let mut cards = vec![
                        Card::int("VISIT", visit as i64, "visit (exposure) number"),
                        Card::int("CCD", ccd as i64, "CCD number in the camera"),
                        Card::text("BAND", band, "filter band"),
                        Card::text("FILTER", band, "filter band (alias of BAND)"),
                        Card::real("EXPTIME", EXPTIME, "[s] exposure time"),
                    ];
                    let mut header_wcs = header_wcs;
                    match &readout {
                        None => cards.extend([
                            Card::real("GAIN", gain, "[e-/ADU]"),
                            Card::real("RDNOISE", read_noise, "[e-] read noise"),
                            Card::real("SATURATE", saturate, "[ADU] saturation level"),
                        ]),
                        Some((amp_cards, data_x0)) => {
                            cards.extend(amp_cards.iter().cloned());
                            // The header WCS describes the raw frame, overscan included.
                            header_wcs.crpix[0] += *data_x0 as f64;
                        }
                    }
                    cards.push(Card::text("BUNIT", "adu", ""));
                    cards.extend(wcs_header(&header_wcs));
                    let mut wr =
                        FitsWriter::create(out.join(&raw_rel), false, Some(&to_array(&raw.0)))?;
                    wr.primary_keys(&cards)?;
                    wr.commit()?;
                    if b == 0 && visit == 1 {
                        let mut wb = FitsWriter::create(
                            out.join(&bias_rel),
                            false,
                            Some(&to_array(&master)),
                        )?;
                        wb.primary_keys(&[
                            Card::int("CCD", ccd as i64, "CCD number"),
                            Card::text("OBSTYPE", "bias", "master bias [ADU]"),
                        ])?;
                        wb.commit()?;
                    }
                    if !out.join(&flat_rel).exists() {
                        let mut wf =
                            FitsWriter::create(out.join(&flat_rel), false, Some(&to_array(&flat)))?;
                        wf.primary_keys(&[
                            Card::int("CCD", ccd as i64, "CCD number"),
                            Card::text("BAND", band, "filter band"),
                            Card::text("OBSTYPE", "flat", "master flat, mean about 1"),
                        ])?;
                        wf.commit()?;
                    }
                    // Truth.
                    let mut tw = FitsWriter::create(out.join(&truth_rel), false, None)?;
                    let mut tcards = vec![
                        Card::int("VISIT", visit as i64, ""),
                        Card::int("CCD", ccd as i64, ""),
                        Card::text("BAND", band, ""),
                        Card::real("PSFFWHM", fwhm, "[pix] true PSF FWHM (Moffat)"),
                        Card::real("PSFBETA", spec.psf_beta, "Moffat beta"),
                        Card::real("SKY0", sky, "[e-/pix] sky at the CCD centre"),
                        Card::real("SKYGX", grad[0], "fractional sky change across x"),
                        Card::real("SKYGY", grad[1], "fractional sky change across y"),
                        Card::real("ZP", zp, "[mag] e- = 10^(0.4 (ZP - mag))"),
                    ];
                    tcards.extend(wcs_cards(&truth_wcs, "T"));
                    tw.primary_keys(&tcards)?;
                    tw.table(
                        "OBJECTS",
                        &[
                            Column::i64("ID", "", on_ccd.iter().map(|t| t.0).collect()),
                            Column::f64("X", "pix", on_ccd.iter().map(|t| t.1.x + 1.0).collect()),
                            Column::f64("Y", "pix", on_ccd.iter().map(|t| t.1.y + 1.0).collect()),
                            Column::f64(
                                "FLUX",
                                crate::singleframe::FLUX_UNIT,
                                on_ccd.iter().map(|t| t.1.flux).collect(),
                            ),
                            Column::f64("MAG", "mag", on_ccd.iter().map(|t| t.2).collect()),
                            Column::f64(
                                "SNR",
                                "",
                                on_ccd.iter().map(|t| spec.expected_snr(&t.1)).collect(),
                            ),
                            Column::text(
                                "TYPE",
                                on_ccd
                                    .iter()
                                    .map(|t| t.1.kind.as_str().to_string())
                                    .collect(),
                            ),
                            Column::i64("PAIR", "", on_ccd.iter().map(|t| t.3).collect()),
                        ],
                        &[],
                    )?;
                    tw.table(
                        "COSMICS",
                        &[
                            Column::f64(
                                "X",
                                "pix",
                                raw.1.iter().map(|c| c.0 as f64 + 1.0).collect(),
                            ),
                            Column::f64(
                                "Y",
                                "pix",
                                raw.1.iter().map(|c| c.1 as f64 + 1.0).collect(),
                            ),
                        ],
                        &[],
                    )?;
                    tw.commit()?;
                    Ok(CcdInput {
                        visit,
                        ccd: ccd as u32,
                        band: band.to_string(),
                        raw: raw_rel.into(),
                        bias: Some(bias_rel.into()),
                        flat: Some(flat_rel.into()),
                        variance: None,
                    })
                })
                .collect();
            for unit in drawn_ccds {
                units.push(unit?);
            }
        }
    }
    let n = units.len();
    let list = CcdList {
        format: CCD_LIST_FORMAT.into(),
        units,
    };
    let json = serde_json::to_vec_pretty(&list).expect("a list always serialises");
    skypipe_io::write_atomic(
        out.join("units.json"),
        &json,
        skypipe_io::Durability::ProcessCrashOnly,
    )?;
    Ok(n)
}

fn to_array(img: &Image<f32>) -> ndarray::Array2<f32> {
    ndarray::Array2::from_shape_vec((img.height, img.width), img.data.clone())
        .expect("image shape matches its data")
}

/// Writes the data set; returns the process exit code.
pub fn run(args: &SimArgs) -> u8 {
    let options = DataSetOptions {
        wcs_error: args.wcs_error.unwrap_or_default(),
        reference_noise_mas: args.reference_noise_mas,
        amplifiers: args.amplifiers,
        overscan: args.overscan,
        dropouts: args.dropouts,
    };
    if !(1..=2).contains(&options.amplifiers) {
        eprintln!("error: --amplifiers must be 1 or 2");
        return 1;
    }
    if !(options.reference_noise_mas.is_finite() && options.reference_noise_mas >= 0.0) {
        eprintln!("error: --reference-noise-mas must be finite and ≥ 0");
        return 1;
    }
    match write_data_set_with(&args.out, args.size, args.seed, &options) {
        Ok(n) => {
            println!(
                "wrote {n} CCD units to {} (list: {})",
                args.out.display(),
                args.out.join("units.json").display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_stars_hold_their_flux() {
        let mut img = Image::filled(101, 101, 0.0f64);
        add_object(&mut img, &Object::star(50.3, 49.8, 1e5), 3.0, 3.5);
        let total: f64 = img.data.iter().sum();
        assert!((total / 1e5 - 1.0).abs() < 1e-9, "{total}");
        // Centroid of the rendered star equals its position (symmetric profile).
        let cx: f64 = img
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| (i % 101) as f64 * v)
            .sum::<f64>()
            / total;
        let cy: f64 = img
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| (i / 101) as f64 * v)
            .sum::<f64>()
            / total;
        assert!(
            (cx - 50.3).abs() < 1e-3 && (cy - 49.8).abs() < 1e-3,
            "{cx},{cy}"
        );
        // Half the flux falls within... the FWHM is right: the peak halves at FWHM/2.
        let a = moffat_alpha(3.0, 3.5);
        let half = (1.0 + (1.5f64 / a).powi(2)).powf(-3.5);
        assert!((half - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_calibrated_frame_has_the_right_sky_and_noise() {
        let spec = CcdSpec {
            width: 64,
            height: 64,
            psf_fwhm: 3.0,
            psf_beta: 3.5,
            sky: 400.0,
            sky_gradient: [0.0, 0.0],
            gain: 2.0,
            read_noise: 5.0,
            saturate: 1e9,
            bias_level: 1000.0,
            flat_amplitude: 0.05,
            cosmic_rays: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let r = render_ccd(&spec, &[], &mut rng);
        let n = (64 * 64) as f64;
        let cal: Vec<f64> = (0..64 * 64)
            .map(|i| f64::from(r.raw.data[i] - r.bias.data[i]) / f64::from(r.flat.data[i]) * 2.0)
            .collect();
        let mean = cal.iter().sum::<f64>() / n;
        let var = cal.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 400.0).abs() < 1.5, "{mean}");
        // Poisson 400 + read noise 25 (flat ≈ 1).
        assert!((var / 425.0 - 1.0).abs() < 0.08, "{var}");
    }

    #[test]
    fn read_out_frames_calibrate_back_to_the_charge() {
        use crate::amplifiers::{Readout, ReadoutKeywords};
        use crate::isr::{self, OverscanParams};
        use skypipe_io::fits::CardValue;
        let (w, h, overscan) = (64, 200, 16);
        let electrons = Image::filled(w, h, 300.0f32);
        let structure = Image::filled(w, h, 2.0f32);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let f = read_out(&electrons, &structure, 2, overscan, 10.0, 1e9, &mut rng);
        assert_eq!(
            (f.raw.width, f.raw.height, f.data_x0),
            (w + 32, h, overscan)
        );
        let mut keys = ReadoutKeywords::default();
        for c in &f.cards {
            match &c.value {
                CardValue::Text(t) => {
                    keys.sections.insert(c.key.clone(), t.clone());
                }
                CardValue::Real(v) => {
                    keys.numbers.insert(c.key.clone(), *v);
                }
                CardValue::Int(_) => panic!("{}: no readout card is an integer", c.key),
            }
        }
        let names: Vec<&str> = f.cards.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            names,
            [
                "DATASECA", "BIASSECA", "GAINA", "RDNOISEA", "SATURATA", "DATASECB", "BIASSECB",
                "GAINB", "RDNOISEB", "SATURATB", "TRIMSEC"
            ]
        );
        let readout = Readout::from_keywords(w + 32, h, &keys).unwrap();
        assert_eq!(readout.trimmed_shape(), (w, h));
        let mut t = isr::overscan_and_trim(f.raw, &readout, &OverscanParams::default());
        let bias = Image::filled(w, h, 2.0f32);
        isr::bias_flat_gain(&mut t.image, Some(&bias), None, &t.regions, &mut t.mask);
        for (r, amp) in t.regions.iter().zip(SIM_AMPLIFIERS) {
            let s = r.region;
            let n = s.area() as f64;
            let mean = (s.y0..s.y1)
                .flat_map(|y| (s.x0..s.x1).map(move |x| (x, y)))
                .map(|(x, y)| f64::from(t.image.get(x, y)))
                .sum::<f64>()
                / n;
            // Read noise of the data plus that of the per-row overscan medians.
            let err = amp.read_noise * (1.0 / n + 1.6 / (overscan as f64 * h as f64)).sqrt();
            assert!((mean - 300.0).abs() < 5.0 * err, "{mean} ± {err}");
        }
    }
}
