//! Astrometric and photometric calibration of one CCD against the reference catalogue
//! (`[singleframe.calibration]`): the catalogue is read once per process, the stars over the
//! CCD's footprint (through the header WCS) plus a margin are matched to the measured sources
//! ([`skypipe_astrometry::matching`]), a TAN-SIP WCS is fitted with clipping
//! ([`skypipe_astrometry::tansip`]) and a zero point computed from the PSF fluxes
//! ([`skypipe_astrometry::photometry`]). A CCD with too few matches keeps its header WCS: that
//! is recorded (header keywords, a log line), not a failure.

use crate::measure::{Source, flags};
use crate::singleframe::ConfigError;
use crate::wcs::{Wcs, WcsError};
use serde::{Deserialize, Serialize};
use skypipe_astrometry::matching::{self, Affine, MatchParams, Star};
use skypipe_astrometry::photometry::{self, ZeroPoint};
use skypipe_astrometry::tansip::{self, FitParams, TanSip};
use skypipe_io::fits::{FitsError, FitsReader, Hdu};
use std::path::{Path, PathBuf};

/// The `[singleframe.calibration]` table. Calibration runs when `reference` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationParams {
    /// Reference catalogue (`reference.fits`, table `REFCAT`; `docs/formats.md`). Unset: no
    /// calibration (the header WCS is kept, no magnitudes).
    pub reference: Option<PathBuf>,
    /// SIP order of the fitted distortion: 0 or 1 fit pure TAN (CRVAL and CD). Default 2.
    /// Lowered for a CCD with fewer than four matches per unknown of an axis (`ASTORDER` in
    /// the outputs is the order used).
    pub sip_order: usize,
    /// Final match radius, arcsec. Default 1.
    pub match_radius_arcsec: f64,
    /// Matches beyond `clip` × the per-axis scatter are rejected, iteratively. Default 3.
    pub clip: f64,
    /// Largest error of the header WCS's pointing, arcsec: reference stars this far beyond the
    /// CCD's edges are used. Default 30.
    pub max_offset_arcsec: f64,
    /// Largest rotation error of the header WCS, degrees. Default 2.
    pub max_rotation_deg: f64,
    /// Largest fractional pixel-scale error of the header WCS. Default 0.03.
    pub max_scale_error: f64,
    /// Brightest sources used for pattern matching (and as many reference stars per area of
    /// sky, at most three times as many). Default 30.
    pub bright: usize,
    /// Fewer matches than this keep the header WCS. Default 10.
    pub min_matches: usize,
    /// Fewest stars for a zero point. Default 5.
    pub min_zero_point_stars: usize,
    /// Position error of the reference stars, milliarcseconds per coordinate: with each
    /// source's centroid error (PSF FWHM / (2.355 S/N)) it weights the matches. Default 20.
    pub reference_error_mas: f64,
    /// The exposure-wide step: per visit, one fit of every CCD's matches (common pointing,
    /// rotation, scale and a focal-plane distortion of order `exposure_order`) gives each CCD
    /// its final WCS, written by a follow-up unit per CCD. Default false (each CCD keeps its own
    /// fit). Needs `reference`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exposure_wide: bool,
    /// Order of the exposure-wide distortion polynomial in focal-plane coordinates (1: none),
    /// lowered for a visit with fewer than four matches per unknown of an axis. Default 3.
    #[serde(skip_serializing_if = "is_default_exposure_order")]
    pub exposure_order: usize,
}

const DEFAULT_EXPOSURE_ORDER: usize = 3;

/// The fingerprint of a configuration without the exposure-wide keys stays what it was.
fn is_default_exposure_order(order: &usize) -> bool {
    *order == DEFAULT_EXPOSURE_ORDER
}

impl Default for CalibrationParams {
    fn default() -> Self {
        Self {
            reference: None,
            sip_order: 2,
            match_radius_arcsec: 1.0,
            clip: 3.0,
            max_offset_arcsec: 30.0,
            max_rotation_deg: 2.0,
            max_scale_error: 0.03,
            bright: 30,
            min_matches: 10,
            min_zero_point_stars: 5,
            reference_error_mas: 20.0,
            exposure_wide: false,
            exposure_order: DEFAULT_EXPOSURE_ORDER,
        }
    }
}

impl CalibrationParams {
    /// Checks values that types cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (k, v) in [
            ("match_radius_arcsec", self.match_radius_arcsec),
            ("clip", self.clip),
            ("max_offset_arcsec", self.max_offset_arcsec),
            ("max_rotation_deg", self.max_rotation_deg),
            ("max_scale_error", self.max_scale_error),
            ("reference_error_mas", self.reference_error_mas),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::value(
                    format!("singleframe.calibration.{k}"),
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if self.sip_order > 6 {
            return Err(ConfigError::value(
                "singleframe.calibration.sip_order",
                format!("must be at most 6, got {}", self.sip_order),
            ));
        }
        if self.exposure_order > 6 {
            return Err(ConfigError::value(
                "singleframe.calibration.exposure_order",
                format!("must be at most 6, got {}", self.exposure_order),
            ));
        }
        if self.exposure_wide && self.reference.is_none() {
            return Err(ConfigError::value(
                "singleframe.calibration.exposure_wide",
                "needs singleframe.calibration.reference",
            ));
        }
        if self.bright < 3 {
            return Err(ConfigError::value(
                "singleframe.calibration.bright",
                "must be at least 3",
            ));
        }
        if self.min_matches < 4 || self.min_zero_point_stars < 1 {
            return Err(ConfigError::value(
                "singleframe.calibration.min_matches",
                "must be ≥ 4 and min_zero_point_stars ≥ 1",
            ));
        }
        Ok(())
    }
}

/// Why the reference catalogue could not be read; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file, its `REFCAT` table or a column could not be read.
    #[error("{path}: reference catalogue: {source}")]
    Fits {
        /// The catalogue.
        path: PathBuf,
        /// Cause (names the HDU or column).
        #[source]
        source: Box<FitsError>,
    },
    /// A position is NaN or infinite.
    #[error("{path}: reference catalogue: RA and DEC must be finite")]
    NonFinite {
        /// The catalogue.
        path: PathBuf,
    },
}

/// The reference catalogue: positions and magnitudes per band.
pub struct ReferenceCatalog {
    /// The file it was read from.
    pub path: PathBuf,
    /// RA, degrees.
    pub ra: Vec<f64>,
    /// Dec, degrees.
    pub dec: Vec<f64>,
    /// `(band, MAG_<BAND>)` for every magnitude column.
    pub mags: Vec<(String, Vec<f64>)>,
}

impl std::fmt::Debug for ReferenceCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReferenceCatalog({}: {} stars)",
            self.path.display(),
            self.ra.len()
        )
    }
}

impl ReferenceCatalog {
    /// Reads table `REFCAT` (`RA`, `DEC`, `MAG_<BAND>`; other columns ignored). Errors name
    /// the file.
    pub fn read(path: &Path) -> Result<Self, ReferenceError> {
        let e = |source: FitsError| ReferenceError::Fits {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let mut r = FitsReader::open(path).map_err(e)?;
        let hdu = Hdu::Name("REFCAT");
        let ra = r.column_f64(hdu, "RA").map_err(e)?;
        let dec = r.column_f64(hdu, "DEC").map_err(e)?;
        let mut mags = Vec::new();
        for name in r.column_names(hdu).map_err(e)? {
            if let Some(band) = name.strip_prefix("MAG_") {
                let m = r.column_f64(hdu, &name).map_err(e)?;
                mags.push((band.to_lowercase(), m));
            }
        }
        if ra.iter().chain(&dec).any(|v| !v.is_finite()) {
            return Err(ReferenceError::NonFinite {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            ra,
            dec,
            mags,
        })
    }

    fn band(&self, band: &str) -> Option<&[f64]> {
        let band = band.to_lowercase();
        self.mags
            .iter()
            .find(|(b, _)| *b == band)
            .map(|(_, m)| m.as_slice())
    }
}

/// The fitted astrometric solution.
#[derive(Debug)]
pub struct Astrometry {
    /// The fitted WCS.
    pub tan_sip: TanSip,
    /// The same, read back by WCSLIB from its keyrecords (what the outputs carry).
    pub wcs: Wcs,
    /// Matches used by the fit.
    pub n_matches: usize,
    /// RMS of the 2-D residuals of those matches, arcsec.
    pub rms_arcsec: f64,
}

/// Why a CCD's header WCS is kept (no astrometric fit).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AstrometryError {
    /// Pattern matching found no correspondence.
    #[error("no pattern match between {sources} sources and {references} reference stars")]
    NoPatternMatch {
        /// Sources offered.
        sources: usize,
        /// Reference stars over the CCD.
        references: usize,
    },
    /// Too few matches for even a pure TAN fit.
    #[error("{matches} matches are too few for a fit of pure TAN")]
    TooFewForTan {
        /// Matches.
        matches: usize,
    },
    /// No fit at all.
    #[error("no fit")]
    NoFit,
    /// Fewer matches than `min_matches` survived clipping.
    #[error("{used} matches after clipping, fewer than min_matches = {min}")]
    Clipped {
        /// Matches kept.
        used: usize,
        /// `[singleframe.calibration] min_matches`.
        min: usize,
    },
    /// WCSLIB refuses the fitted WCS's keyrecords.
    #[error("the fitted WCS is refused by WCSLIB: {0}")]
    Refused(#[source] WcsError),
}

/// Why a CCD has no zero point.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZeroPointError {
    /// No astrometric fit, so no matches.
    #[error("no matches ({0})")]
    NoMatches(#[source] AstrometryError),
    /// The reference catalogue has no magnitudes in the CCD's band.
    #[error("{path}: no column MAG_{band}")]
    NoBand {
        /// The reference catalogue.
        path: PathBuf,
        /// The band, upper case.
        band: String,
    },
    /// Too few stars with magnitudes after clipping.
    #[error("fewer than {min} stars with magnitudes after clipping")]
    TooFewStars {
        /// `[singleframe.calibration] min_zero_point_stars`.
        min: usize,
    },
}

/// What calibration made of one CCD.
#[derive(Debug)]
pub struct CcdCalibration {
    /// The fitted WCS, or why the header WCS is kept.
    pub astrometry: Result<Astrometry, AstrometryError>,
    /// The zero point (e- in the exposure: `mag = ZP − 2.5 log10(FLUX_PSF)`), or why none.
    pub zero_point: Result<ZeroPoint, ZeroPointError>,
    /// The matches the last fit kept after clipping (also when the fit was then refused for
    /// having fewer than `min_matches`); empty when there was no fit (pattern matching found
    /// none, or too few to fit: such unchecked candidates could be false). The exposure-wide
    /// step gathers them.
    pub matches: Vec<Match>,
}

/// A source matched to a reference star.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// Source position, 1-based pixels.
    pub x: f64,
    /// Source position, 1-based pixels.
    pub y: f64,
    /// Reference star RA, degrees.
    pub ra: f64,
    /// Reference star Dec, degrees.
    pub dec: f64,
    /// 1σ position error per coordinate, pixels (the fit's weight).
    pub sigma: f64,
}

/// Flags that make a source's position unfit for the astrometric fit.
const UNFIT: u32 =
    flags::SATURATED | flags::COSMIC_RAY | flags::BAD_PIXELS | flags::CENTROID_FAILED;

/// Flags that also make its flux unfit for the zero point.
const UNFIT_FLUX: u32 = UNFIT | flags::EDGE | flags::BLENDED;

fn sky_of(wcs: &Wcs, p: [f64; 2]) -> Result<[f64; 2], WcsError> {
    wcs.pixel_to_sky(&[p])?[0].ok_or_else(|| WcsError::Text {
        header: wcs.header_name().to_string(),
        message: format!("no sky position for pixel ({}, {})", p[0], p[1]),
    })
}

fn unit_vector(ra: f64, dec: f64) -> [f64; 3] {
    let (a, d) = (ra.to_radians(), dec.to_radians());
    [d.cos() * a.cos(), d.cos() * a.sin(), d.sin()]
}

/// What calibration needs to know of a CCD.
#[derive(Debug, Clone, Copy)]
pub struct CcdToCalibrate<'a> {
    /// The header WCS.
    pub header: &'a Wcs,
    /// Filter band (selects `MAG_<BAND>`).
    pub band: &'a str,
    /// Measured sources (0-based positions).
    pub sources: &'a [Source],
    /// PSF FWHM, pixels.
    pub psf_fwhm: f64,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
}

/// Calibrates one CCD; `unit` names it in log lines.
pub fn calibrate_ccd(
    refcat: &ReferenceCatalog,
    ccd: &CcdToCalibrate<'_>,
    p: &CalibrationParams,
    unit: &str,
) -> Result<CcdCalibration, WcsError> {
    let CcdToCalibrate {
        header,
        band,
        sources,
        psf_fwhm,
        width,
        height,
    } = *ccd;
    let (w, h) = (width as f64, height as f64);
    let crpix = [(w + 1.0) / 2.0, (h + 1.0) / 2.0];
    let centre = sky_of(header, crpix)?;
    let east = sky_of(header, [crpix[0] + 1.0, crpix[1]])?;
    let north = sky_of(header, [crpix[0], crpix[1] + 1.0])?;
    let c = tansip::project(centre, east).unwrap_or([0.0; 2]);
    let d = tansip::project(centre, north).unwrap_or([0.0; 2]);
    let scale = (c[0] * d[1] - c[1] * d[0]).abs().sqrt(); // deg / pixel
    if !(scale.is_finite() && scale > 0.0) {
        return Err(WcsError::Text {
            header: header.header_name().to_string(),
            message: "singular pixel scale at the CCD centre".into(),
        });
    }
    let margin_px = p.max_offset_arcsec / 3600.0 / scale;
    // Candidates within the CCD's circumscribed circle plus the margin, then through WCSLIB.
    let radius = ((w * w + h * h).sqrt() / 2.0 + margin_px) * scale;
    let cos_radius = radius.to_radians().cos();
    let u0 = unit_vector(centre[0], centre[1]);
    let near: Vec<usize> = (0..refcat.ra.len())
        .filter(|&i| {
            let u = unit_vector(refcat.ra[i], refcat.dec[i]);
            u[0] * u0[0] + u[1] * u0[1] + u[2] * u0[2] >= cos_radius
        })
        .collect();
    let sky: Vec<[f64; 2]> = near
        .iter()
        .map(|&i| [refcat.ra[i], refcat.dec[i]])
        .collect();
    let pix = header.sky_to_pixel(&sky)?;
    let mags = refcat.band(band);
    let mut refs: Vec<(usize, Star)> = Vec::new();
    for (&i, px) in near.iter().zip(&pix) {
        let Some(px) = px else { continue };
        let inside = px[0] > 0.5 - margin_px
            && px[0] < w + 0.5 + margin_px
            && px[1] > 0.5 - margin_px
            && px[1] < h + 0.5 + margin_px;
        if inside {
            let m = mags.map_or(0.0, |m| m[i]);
            let brightness = if m.is_finite() { -m } else { f64::NEG_INFINITY };
            refs.push((
                i,
                Star {
                    x: px[0],
                    y: px[1],
                    brightness,
                },
            ));
        }
    }
    let good: Vec<usize> = (0..sources.len())
        .filter(|&i| sources[i].flags & UNFIT == 0 && sources[i].flux_psf > 0.0)
        .collect();
    let src: Vec<Star> = good
        .iter()
        .map(|&i| Star {
            x: sources[i].x + 1.0,
            y: sources[i].y + 1.0,
            brightness: sources[i].flux_psf,
        })
        .collect();
    let ref_stars: Vec<Star> = refs.iter().map(|r| r.1).collect();
    // 1σ position error per coordinate of each good source against its reference, pixels;
    // a blended source's centroid is pulled by its neighbour: three times the error.
    let ref_px = p.reference_error_mas / 1000.0 / 3600.0 / scale;
    let src_sigma: Vec<f64> = good
        .iter()
        .map(|&i| {
            let s = &sources[i];
            let snr = (s.flux_psf / s.flux_psf_err).max(1.0);
            let centroid = psf_fwhm / (2.355 * snr);
            let blend = if s.flags & flags::BLENDED != 0 {
                3.0
            } else {
                1.0
            };
            blend * (centroid * centroid + ref_px * ref_px).sqrt()
        })
        .collect();
    let astrometry = fit(
        refcat,
        &src,
        &src_sigma,
        &refs,
        &ref_stars,
        header,
        crpix,
        centre,
        scale,
        [w, h],
        margin_px,
        p,
    );
    let (astrometry, pairs) = astrometry;
    let matches: Vec<Match> = pairs
        .iter()
        .map(|&(i, j)| Match {
            x: src[i].x,
            y: src[i].y,
            ra: refcat.ra[refs[j].0],
            dec: refcat.dec[refs[j].0],
            sigma: src_sigma[i],
        })
        .collect();
    let zero_point = match (&astrometry, mags) {
        (Err(e), _) => Err(ZeroPointError::NoMatches(e.clone())),
        (_, None) => Err(ZeroPointError::NoBand {
            path: refcat.path.clone(),
            band: band.to_uppercase(),
        }),
        (Ok(_), Some(mags)) => {
            let mut rm = Vec::new();
            let mut im = Vec::new();
            let mut ie = Vec::new();
            for &(s, r) in &pairs {
                let source = &sources[good[s]];
                if source.flags & UNFIT_FLUX != 0 {
                    continue;
                }
                if let Some((m, e)) = photometry::instrumental(source.flux_psf, source.flux_psf_err)
                {
                    rm.push(mags[refs[r].0]);
                    im.push(m);
                    ie.push(e);
                }
            }
            photometry::zero_point(&rm, &im, &ie, p.clip, 0.002, p.min_zero_point_stars).ok_or(
                ZeroPointError::TooFewStars {
                    min: p.min_zero_point_stars,
                },
            )
        }
    };
    if let Err(why) = &astrometry {
        tracing::warn!("{unit}: header WCS kept: {why}");
    }
    if let Err(why) = &zero_point {
        tracing::warn!("{unit}: no zero point: {why}");
    }
    Ok(CcdCalibration {
        astrometry,
        zero_point,
        matches,
    })
}

/// Matching and fit: the solution (or why none), and the pairs `(index into src, index into
/// refs)` the last fit kept (empty when there was no fit).
#[allow(clippy::too_many_arguments)]
fn fit(
    refcat: &ReferenceCatalog,
    src: &[Star],
    src_sigma: &[f64],
    refs: &[(usize, Star)],
    ref_stars: &[Star],
    header: &Wcs,
    crpix: [f64; 2],
    crval: [f64; 2],
    scale: f64,
    size: [f64; 2],
    margin_px: f64,
    p: &CalibrationParams,
) -> (Result<Astrometry, AstrometryError>, Vec<(usize, usize)>) {
    let mut kept = Vec::new();
    let result = fit_kept(
        refcat, src, src_sigma, refs, ref_stars, header, crpix, crval, scale, size, margin_px, p,
        &mut kept,
    );
    (result, kept)
}

/// [`fit`], leaving the pairs of the last fit in `kept`.
#[allow(clippy::too_many_arguments)]
fn fit_kept(
    refcat: &ReferenceCatalog,
    src: &[Star],
    src_sigma: &[f64],
    refs: &[(usize, Star)],
    ref_stars: &[Star],
    header: &Wcs,
    crpix: [f64; 2],
    crval: [f64; 2],
    scale: f64,
    size: [f64; 2],
    margin_px: f64,
    p: &CalibrationParams,
    kept: &mut Vec<(usize, usize)>,
) -> Result<Astrometry, AstrometryError> {
    let radius = p.match_radius_arcsec / 3600.0 / scale;
    // As many references as the sources' `bright` on the same area of sky.
    let area = (size[0] + 2.0 * margin_px) * (size[1] + 2.0 * margin_px) / (size[0] * size[1]);
    let mp = MatchParams {
        bright: p.bright,
        bright_refs: ((p.bright as f64 * area).ceil() as usize).min(3 * p.bright),
        max_scale_error: p.max_scale_error,
        max_rotation_deg: p.max_rotation_deg,
        radius,
    };
    let found =
        matching::match_lists(src, ref_stars, &mp).ok_or(AstrometryError::NoPatternMatch {
            sources: src.len(),
            references: refs.len(),
        })?;
    let bounds = [[0.5, size[0] + 0.5], [0.5, size[1] + 0.5]];
    // The SIP order is lowered until the fit keeps at least four matches per unknown of an
    // axis (a polynomial fitted to fewer strays between and beyond the stars).
    let fit_with = |px: &[[f64; 2]], sky: &[[f64; 2]], sigma: &[f64]| {
        let mut order = p.sip_order.max(1);
        loop {
            let fp = FitParams {
                order,
                clip: p.clip,
                max_iterations: 10,
            };
            let f = tansip::fit_tan_sip(px, sky, sigma, crpix, crval, bounds, &fp);
            match f {
                Some(f) if order == 1 || f.n_used >= 4 * tansip::terms(order, 0).len() => {
                    return Some(f);
                }
                _ if order > 1 => order -= 1,
                _ => return None,
            }
        }
    };
    let sky_of_ref = |j: usize| [refcat.ra[refs[j].0], refcat.dec[refs[j].0]];
    let mut pairs = found.pairs;
    let mut solution = None;
    // Fit; then match again through the fitted WCS and refit, twice.
    for round in 0..3 {
        let px: Vec<[f64; 2]> = pairs.iter().map(|&(i, _)| [src[i].x, src[i].y]).collect();
        let sky: Vec<[f64; 2]> = pairs.iter().map(|&(_, j)| sky_of_ref(j)).collect();
        let sigma: Vec<f64> = pairs.iter().map(|&(i, _)| src_sigma[i]).collect();
        let f = fit_with(&px, &sky, &sigma).ok_or(AstrometryError::TooFewForTan {
            matches: pairs.len(),
        })?;
        let used: Vec<(usize, usize)> = pairs
            .iter()
            .zip(&f.used)
            .filter(|(_, u)| **u)
            .map(|(p, _)| *p)
            .collect();
        if round == 2 {
            solution = Some((f, used));
            break;
        }
        let projected: Vec<Star> = refs
            .iter()
            .map(|(i, s)| {
                let q = f
                    .wcs
                    .sky_to_pixel([refcat.ra[*i], refcat.dec[*i]])
                    .unwrap_or([f64::NAN; 2]);
                Star {
                    x: q[0],
                    y: q[1],
                    brightness: s.brightness,
                }
            })
            .collect();
        let identity = Affine([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        pairs = matching::nearest_pairs(src, &projected, &identity, radius);
    }
    let (f, used) = solution.ok_or(AstrometryError::NoFit)?;
    *kept = used;
    if f.n_used < p.min_matches {
        return Err(AstrometryError::Clipped {
            used: f.n_used,
            min: p.min_matches,
        });
    }
    let name = format!("fitted WCS (from {})", header.header_name());
    let wcs =
        Wcs::from_header(&name, &f.wcs.keyrecords().concat()).map_err(AstrometryError::Refused)?;
    Ok(Astrometry {
        tan_sip: f.wcs,
        wcs,
        n_matches: f.n_used,
        rms_arcsec: f.rms_arcsec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_naming_the_key() {
        assert!(CalibrationParams::default().validate().is_ok());
        let bad = CalibrationParams {
            match_radius_arcsec: 0.0,
            ..CalibrationParams::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(
            matches!(&e, ConfigError::Value(k) if k.key == "singleframe.calibration.match_radius_arcsec"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("singleframe.calibration.match_radius_arcsec must be finite"),
            "{e}"
        );
        let bad = CalibrationParams {
            sip_order: 9,
            ..CalibrationParams::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("sip_order")
        );
        let e: Result<CalibrationParams, _> = toml_like("unknown = 1");
        assert!(e.is_err());
    }

    fn toml_like(text: &str) -> Result<CalibrationParams, serde_json::Error> {
        let (k, v) = text.split_once(" = ").unwrap();
        serde_json::from_str(&format!("{{\"{k}\": {v}}}"))
    }

    #[test]
    fn header_wcs_errors_parse() {
        let e = crate::sim::HeaderWcsError::parse("20, 0.5,0.01").unwrap();
        assert_eq!(
            (e.offset_arcsec, e.rotation_deg, e.scale),
            (20.0, 0.5, 0.01)
        );
        assert!(crate::sim::HeaderWcsError::parse("20,0.5").is_err());
        assert!(crate::sim::HeaderWcsError::parse("20,x,0.01").is_err());
        assert!(crate::sim::HeaderWcsError::parse("20,0.5,-0.9").is_err());
    }
}
