//! Files of the stage: the calexp read, warps and coadds (FITS, IMAGE / MASK / VARIANCE with the
//! patch WCS), the quicklook PNG and the coadd catalogue. Formats: `docs/formats.md`, `## Coadd`.
//! Every write goes through a temporary name (atomic); every error names the file.

use crate::config::WcsUsed;
use crate::detect::{CoaddPlanes, Detection};
use crate::patch::{PatchGrid, PatchKey};
use crate::stage::{WarpUnit, mask as coadd_mask};
use ndarray::Array2;
use skypipe_core::figure::Canvas;
use skypipe_core::warp::Warped;
use skypipe_io::Durability;
use skypipe_io::fits::{Card, Column, FitsError, FitsReader, FitsWriter, Hdu};
use skypipe_io::png::{PngError, write_png_rgb};
use skypipe_io::provenance::Provenance;
use skypipe_optical::image::mask;
use skypipe_optical::measure::flags;
use skypipe_registry::SkyPoint;
use skypipe_wcs::WcsError;
use std::path::{Path, PathBuf};

/// Errors of the stage's files, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CoaddError {
    /// Reading or writing a FITS file failed.
    #[error(transparent)]
    Fits(#[from] FitsError),
    /// A WCS could not be turned into header cards.
    #[error(transparent)]
    Wcs(#[from] WcsError),
    /// Writing the quicklook failed.
    #[error(transparent)]
    Png(#[from] PngError),
    /// A plane holds values it cannot hold.
    #[error("{path}: HDU '{hdu}': {message}")]
    Content {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The planes of a calibrated exposure.
#[derive(Debug, Clone)]
pub struct Calexp {
    /// Values, e-.
    pub image: Vec<f32>,
    /// Variances, e-².
    pub variance: Vec<f32>,
    /// Mask bits.
    pub mask: Vec<u32>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

fn flat(a: Array2<f32>) -> Vec<f32> {
    if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    }
}

/// Reads a mask plane stored as 32-bit integers (read as float32, exact below 2²⁴).
fn read_mask(
    r: &mut FitsReader,
    hdu: &'static str,
    shape: (usize, usize),
) -> Result<Vec<u32>, CoaddError> {
    let values = flat(r.image_f32_checked(Hdu::Name(hdu), Some(shape))?);
    values
        .into_iter()
        .map(|v| {
            if (0.0..16_777_216.0).contains(&v) && v.fract() == 0.0 {
                Ok(v as u32)
            } else {
                Err(CoaddError::Content {
                    path: r.path().to_path_buf(),
                    hdu,
                    message: format!("mask value {v} is not a bit set"),
                })
            }
        })
        .collect()
}

/// Reads a calexp's IMAGE, MASK and VARIANCE (shapes checked).
pub fn read_calexp(path: &Path) -> Result<Calexp, CoaddError> {
    let mut r = FitsReader::open(path)?;
    let image = r.image_f32_checked(Hdu::Name("IMAGE"), None)?;
    let (height, width) = image.dim();
    let variance = flat(r.image_f32_checked(Hdu::Name("VARIANCE"), Some((height, width)))?);
    let mask = read_mask(&mut r, "MASK", (height, width))?;
    Ok(Calexp {
        image: flat(image),
        variance,
        mask,
        width,
        height,
    })
}

fn wcs_cards(grid: &PatchGrid) -> Result<Vec<Card>, CoaddError> {
    Ok(skypipe_optical::wcs::cards_of_records(
        "patch WCS",
        &grid.wcs_records(),
    )?)
}

fn mask_cards(wcs: &[Card]) -> Vec<Card> {
    let mut cards = wcs.to_vec();
    for (name, bit) in mask::NAMES {
        cards.push(Card::int(
            &format!("MP_{name}"),
            i64::from(bit),
            "mask bit value",
        ));
    }
    cards.push(Card::int(
        "MP_NO_DATA",
        i64::from(coadd_mask::NO_DATA),
        "mask bit value: no input data",
    ));
    cards.push(Card::int(
        "MP_CLIPPED",
        i64::from(coadd_mask::CLIPPED),
        "mask bit value: an input was clipped",
    ));
    cards
}

fn array<T: Copy>(data: &[T], width: usize, height: usize) -> Array2<T> {
    Array2::from_shape_vec((height, width), data.to_vec()).expect("plane matches its grid")
}

fn patch_cards(p: PatchKey) -> [Card; 3] {
    [
        Card::int("TRACT", i64::from(p.tract), "sky-map tract"),
        Card::int("PATCHX", i64::from(p.x), "patch column in the tract"),
        Card::int("PATCHY", i64::from(p.y), "patch row in the tract"),
    ]
}

/// Writes the three planes with the patch WCS in each extension's header.
fn write_planes(
    w: &mut FitsWriter,
    grid: &PatchGrid,
    image: &[f32],
    variance: &[f32],
    mask: &[u32],
) -> Result<(), CoaddError> {
    let (width, height) = grid.shape();
    let wcs = wcs_cards(grid)?;
    let mut icards = wcs.clone();
    icards.push(Card::text(
        "BUNIT",
        "ct",
        "counts at the common zero point MAGZERO",
    ));
    w.image_f32("IMAGE", &array(image, width, height), &icards)?;
    let m: Vec<i32> = mask.iter().map(|&v| v as i32).collect();
    w.image_i32("MASK", &array(&m, width, height), &mask_cards(&wcs))?;
    let mut vcards = wcs;
    vcards.push(Card::text("BUNIT", "ct2", "variance"));
    w.image_f32("VARIANCE", &array(variance, width, height), &vcards)?;
    Ok(())
}

/// Header values of a warp.
#[derive(Debug, Clone)]
pub struct WarpMeta<'a> {
    /// The unit.
    pub unit: &'a WarpUnit,
    /// Common zero point, mag.
    pub zero_point: f64,
    /// Flux scale applied.
    pub flux_scale: f64,
    /// Weight in the coadd.
    pub weight: f64,
    /// Largest coarse-grid interpolation error found, CCD pixels.
    pub interpolation_error: f64,
    /// Coarse grid step, patch pixels.
    pub coarse_step: usize,
    /// PSF FWHM of the CCD, pixels.
    pub psf_fwhm: f64,
    /// The WCS the CCD was warped with.
    pub wcs: WcsUsed,
}

/// An output file to write: where, where it came from, and whether to sync it.
#[derive(Debug, Clone, Copy)]
pub struct OutputFile<'a> {
    /// Its final path.
    pub path: &'a Path,
    /// Its provenance, written into its primary header.
    pub provenance: &'a Provenance,
    /// Sync it before it is renamed into place.
    pub durable: bool,
}

impl OutputFile<'_> {
    /// Starts writing the file.
    pub fn create(&self) -> Result<FitsWriter, CoaddError> {
        Ok(FitsWriter::create(self.path, self.durable, None)?)
    }

    /// Adds the provenance to the primary header (a long input list as a table after the
    /// file's own extensions) and moves the file into place.
    pub fn commit(&self, mut w: FitsWriter) -> Result<(), CoaddError> {
        self.provenance.write_fits(&mut w)?;
        w.commit()?;
        Ok(())
    }
}

/// Writes a warp.
pub fn write_warp(
    out: &OutputFile<'_>,
    grid: &PatchGrid,
    warped: &Warped,
    meta: &WarpMeta,
) -> Result<(), CoaddError> {
    let u = meta.unit;
    let mut w = out.create()?;
    let mut cards = patch_cards(u.patch).to_vec();
    cards.extend([
        Card::int("VISIT", u.visit as i64, "visit of the input CCD"),
        Card::int("CCD", i64::from(u.ccd), "input CCD"),
        Card::text("BAND", &u.band, "filter band"),
        Card::real(
            "MAGZERO",
            meta.zero_point,
            "[mag] mag = MAGZERO - 2.5 log10(ct)",
        ),
        Card::real(
            "FLUXSCL",
            meta.flux_scale,
            "factor to the common zero point",
        ),
        Card::real(
            "WEIGHT",
            meta.weight,
            "[1/ct2] coadd weight: 1/median variance",
        ),
        Card::real(
            "INTERPER",
            meta.interpolation_error,
            "[pix] max coarse-grid mapping error found",
        ),
        Card::int(
            "COARSTEP",
            meta.coarse_step as i64,
            "[pix] coarse grid step",
        ),
        Card::real("PSFFWHM", meta.psf_fwhm, "[pix] PSF FWHM of the input CCD"),
        Card::text("RESAMPLE", "LANCZOS3", "resampling kernel"),
        Card::text(
            "WCSSRC",
            meta.wcs.card_value(),
            "WCS the CCD was warped with",
        ),
    ]);
    w.primary_keys(&cards)?;
    write_planes(&mut w, grid, &warped.image, &warped.variance, &warped.mask)?;
    out.commit(w)
}

/// Reads the planes of a warp or coadd on a grid of `(width, height)`.
pub fn read_planes(path: &Path, shape: (usize, usize)) -> Result<CoaddPlanes, CoaddError> {
    let (width, height) = shape;
    let mut r = FitsReader::open(path)?;
    let image = flat(r.image_f32_checked(Hdu::Name("IMAGE"), Some((height, width)))?);
    let variance = flat(r.image_f32_checked(Hdu::Name("VARIANCE"), Some((height, width)))?);
    let mask = read_mask(&mut r, "MASK", (height, width))?;
    Ok(CoaddPlanes {
        image,
        variance,
        mask,
        width,
        height,
    })
}

/// One input of a coadd, for its header.
#[derive(Debug, Clone, Copy)]
pub struct InputMeta {
    /// Visit.
    pub visit: u64,
    /// CCD.
    pub ccd: u32,
    /// Weight.
    pub weight: f64,
    /// Flux scale applied to it.
    pub flux_scale: f64,
    /// The WCS it was warped with.
    pub wcs: WcsUsed,
}

/// Header values of a coadd.
#[derive(Debug, Clone)]
pub struct CoaddMeta<'a> {
    /// The patch.
    pub patch: PatchKey,
    /// Band.
    pub band: &'a str,
    /// Common zero point, mag.
    pub zero_point: f64,
    /// Weighted mean PSF FWHM of the inputs, pixels.
    pub psf_fwhm: f64,
    /// 5σ point-source depth, mag.
    pub depth: f64,
    /// The inputs.
    pub inputs: &'a [InputMeta],
}

/// Writes a coadd: IMAGE, MASK, VARIANCE and NINPUT (inputs used per pixel).
pub fn write_coadd(
    out: &OutputFile<'_>,
    grid: &PatchGrid,
    stacked: &crate::kernels::Stacked,
    meta: &CoaddMeta,
) -> Result<(), CoaddError> {
    let mut w = out.create()?;
    let mut cards = patch_cards(meta.patch).to_vec();
    cards.extend([
        Card::text("BAND", meta.band, "filter band"),
        Card::real(
            "MAGZERO",
            meta.zero_point,
            "[mag] mag = MAGZERO - 2.5 log10(ct)",
        ),
        Card::real(
            "PSFFWHM",
            meta.psf_fwhm,
            "[pix] weighted mean input PSF FWHM",
        ),
        Card::real("DEPTH", meta.depth, "[mag] 5 sigma point-source depth"),
        Card::int("NINPUTS", meta.inputs.len() as i64, "warps combined"),
        Card::int(
            "NWCSFALL",
            meta.inputs
                .iter()
                .filter(|i| i.wcs == WcsUsed::SingleframeFallback)
                .count() as i64,
            "inputs warped with single-frame WCS (mosaic unsolved)",
        ),
    ]);
    for (k, i) in meta.inputs.iter().enumerate() {
        let n = k + 1;
        cards.extend([
            Card::int(&format!("INVIS{n}"), i.visit as i64, "input visit"),
            Card::int(&format!("INCCD{n}"), i64::from(i.ccd), "input CCD"),
            Card::real(&format!("INWGT{n}"), i.weight, "input weight"),
            Card::real(&format!("INSCL{n}"), i.flux_scale, "input flux scale"),
            Card::text(&format!("INWCS{n}"), i.wcs.card_value(), "input WCS source"),
        ]);
    }
    w.primary_keys(&cards)?;
    write_planes(
        &mut w,
        grid,
        &stacked.image,
        &stacked.variance,
        &stacked.mask,
    )?;
    let (width, height) = grid.shape();
    let count: Vec<i32> = stacked.count.iter().map(|&c| i32::from(c)).collect();
    w.image_i32("NINPUT", &array(&count, width, height), &wcs_cards(grid)?)?;
    out.commit(w)
}

/// Writes the quicklook PNG (the labelled figure of [`crate::kernels::labelled_quicklook`])
/// with its stretch in text chunks.
pub fn write_quicklook(
    path: &Path,
    figure: &Canvas,
    (lo, hi, soft): (f64, f64, f64),
    durable: bool,
) -> Result<(), CoaddError> {
    let (lo, hi, soft) = (lo.to_string(), hi.to_string(), soft.to_string());
    write_png_rgb(
        path,
        figure.width,
        figure.height,
        &figure.rgb,
        &[
            ("Stretch", "asinh((v - lo) / softening), lo to hi"),
            ("lo", &lo),
            ("hi", &hi),
            ("softening", &soft),
        ],
        if durable {
            Durability::Synced
        } else {
            Durability::ProcessCrashOnly
        },
    )?;
    Ok(())
}

/// Writes a coadd's catalogue: table `SOURCES` (1-based pixel positions, RA/DEC from the
/// patch WCS, fluxes in counts at the common zero point, magnitudes).
pub fn write_catalog(
    out: &OutputFile<'_>,
    patch: PatchKey,
    band: &str,
    zero_point: f64,
    d: &Detection,
    sky: &[SkyPoint],
) -> Result<(), CoaddError> {
    let s = &d.sources;
    let col = |f: &dyn Fn(&skypipe_optical::measure::Source) -> f64| {
        s.iter().map(f).collect::<Vec<f64>>()
    };
    let mag = |f: f64| {
        if f > 0.0 {
            zero_point - 2.5 * f.log10()
        } else {
            f64::NAN
        }
    };
    let unit = skypipe_optical::singleframe::FLUX_UNIT;
    let columns = vec![
        Column::i64("ID", "", (1..=s.len() as i64).collect()),
        Column::f64("X", "pix", col(&|s| s.x + 1.0)),
        Column::f64("Y", "pix", col(&|s| s.y + 1.0)),
        Column::f64("RA", "deg", sky.iter().map(|p| p.ra()).collect()),
        Column::f64("DEC", "deg", sky.iter().map(|p| p.dec()).collect()),
        Column::f64("FLUX_APER", unit, col(&|s| s.flux_aper)),
        Column::f64("FLUX_APER_ERR", unit, col(&|s| s.flux_aper_err)),
        Column::f64("FLUX_PSF", unit, col(&|s| s.flux_psf)),
        Column::f64("FLUX_PSF_ERR", unit, col(&|s| s.flux_psf_err)),
        Column::f64("MAG", "mag", col(&|s| mag(s.flux_psf))),
        Column::f64(
            "MAG_ERR",
            "mag",
            col(&|s| 2.5 / std::f64::consts::LN_10 * s.flux_psf_err / s.flux_psf.abs()),
        ),
        Column::f64("IXX", "pix2", col(&|s| s.ixx)),
        Column::f64("IYY", "pix2", col(&|s| s.iyy)),
        Column::f64("IXY", "pix2", col(&|s| s.ixy)),
        Column::f64("DET_SIGNIF", "", col(&|s| s.significance)),
        Column::i32("FLAGS", "", s.iter().map(|s| s.flags as i32).collect()),
    ];
    let mut cards = patch_cards(patch).to_vec();
    cards.extend([
        Card::text("BAND", band, "filter band"),
        Card::real(
            "MAGZERO",
            zero_point,
            "[mag] MAG = MAGZERO - 2.5 log10(FLUX_PSF)",
        ),
        Card::real("PSFFWHM", d.psf_fwhm, "[pix] PSF FWHM used"),
        Card::int(
            "PSFMEAS",
            i64::from(d.psf_measured),
            "1 if measured on the coadd",
        ),
        Card::real("APRAD", d.aperture_radius, "[pix] FLUX_APER radius"),
        Card::real(
            "APCORR",
            d.aperture_correction,
            "aperture/PSF flux ratio applied",
        ),
    ]);
    for (key, bit, what) in flags::NAMES {
        cards.push(Card::int(key, i64::from(bit), what));
    }
    let mut w = out.create()?;
    w.primary_keys(&patch_cards(patch))?;
    w.table("SOURCES", &columns, &cards)?;
    out.commit(w)
}
