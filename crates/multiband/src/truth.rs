//! A multiband catalogue against the imaging simulator's truth (`skypipe-sim image`): each
//! catalogue object matched to the nearest true object, the astrometric residuals of bright
//! stars and the photometric residuals of stars per band, their summary figures, and a plot of
//! both (`skypipe-sim residuals`, drawn by the demo). Matching and statistics are pure
//! ([`residuals`]); reading the truth and writing the picture are the I/O edge
//! ([`read_truth`], [`residual_plot`]).

use crate::output::{Catalog, MultibandError, read_catalog};
use skypipe_core::figure::{Canvas, stack};
use skypipe_core::plot::{Axes, Series, scatter, symmetric_range};
use skypipe_io::Durability;
use skypipe_io::fits::{FitsError, FitsReader, Hdu};
use skypipe_io::png::{PngError, write_png_rgb};
use skypipe_optical::wcs::TanWcs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Magnitudes at or above this mark a band the object is absent from (the simulator's
/// dropouts).
const ABSENT_MAG: f64 = 90.0;

/// Milliarcseconds per degree.
const MAS_PER_DEG: f64 = 3.6e6;

/// Errors of the comparison, each naming its file.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// Reading a truth file failed.
    #[error(transparent)]
    Fits(#[from] FitsError),
    /// Reading the catalogue failed.
    #[error(transparent)]
    Catalog(#[from] MultibandError),
    /// Writing the picture failed.
    #[error(transparent)]
    Png(#[from] PngError),
    /// The data directory holds no truth file.
    #[error(
        "{0}: no truth files (truth/vVVVV/cCC.fits) under it: is it a `skypipe-sim image` directory?"
    )]
    NoTruth(PathBuf),
    /// Listing a directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// One simulated object: its true position and magnitude per band.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthObject {
    /// The simulator's object ID.
    pub id: i64,
    /// True RA, degrees.
    pub ra: f64,
    /// True Dec, degrees.
    pub dec: f64,
    /// A point source (the simulator's stars), not a galaxy.
    pub star: bool,
    /// True magnitude per band (≥ 90: absent in that band).
    pub mags: BTreeMap<String, f64>,
}

/// What [`residuals`] selects and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    /// Largest distance of a match, arcsec.
    pub match_radius_arcsec: f64,
    /// Stars brighter than this (true magnitude in the object's reference band) give the
    /// astrometric residuals and the photometric summary.
    pub bright_mag: f64,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            match_radius_arcsec: 1.0,
            bright_mag: 20.5,
        }
    }
}

/// Residuals of one catalogue against the truth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Residuals {
    /// Catalogue objects.
    pub objects: usize,
    /// Of those, matched to a true object within the radius.
    pub matched: usize,
    /// Bright matched stars: (Δα cos δ, Δδ), milliarcseconds, catalogue − truth.
    pub astrometric_mas: Vec<(f64, f64)>,
    /// Per band, matched stars unflagged in it: (true magnitude, PSF magnitude − true).
    pub photometric: BTreeMap<String, Vec<(f64, f64)>>,
    /// Bright-star cut used, magnitudes.
    pub bright_mag: f64,
}

impl Residuals {
    /// Root-mean-square astrometric offset (over both axes' sum of squares), mas.
    pub fn astrometric_rms_mas(&self) -> f64 {
        let n = self.astrometric_mas.len() as f64;
        (self
            .astrometric_mas
            .iter()
            .map(|(a, d)| a * a + d * d)
            .sum::<f64>()
            / n)
            .sqrt()
    }

    /// Median distance of the astrometric offsets from zero, mas (robust against the few
    /// mismatches and blends that dominate the RMS).
    pub fn astrometric_median_mas(&self) -> f64 {
        let mut d: Vec<f64> = self
            .astrometric_mas
            .iter()
            .map(|(a, d)| a.hypot(*d))
            .collect();
        median(&mut d)
    }

    /// Per band: median magnitude residual of stars brighter than the cut, and their number.
    pub fn bright_median_dmag(&self) -> BTreeMap<String, (f64, usize)> {
        self.photometric
            .iter()
            .map(|(band, points)| {
                let mut d: Vec<f64> = points
                    .iter()
                    .filter(|(mag, _)| *mag < self.bright_mag)
                    .map(|(_, dm)| *dm)
                    .collect();
                (band.clone(), (median(&mut d), d.len()))
            })
            .collect()
    }
}

/// Median of `values` (sorted in place); NaN when empty.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => 0.5 * (values[n / 2 - 1] + values[n / 2]),
    }
}

/// Index of the true object nearest to `(ra, dec)` within `radius_deg`, among `truth` sorted by
/// Dec (`decs` their Decs).
fn nearest(
    truth: &[TruthObject],
    decs: &[f64],
    ra: f64,
    dec: f64,
    radius_deg: f64,
) -> Option<usize> {
    let start = decs.partition_point(|d| *d < dec - radius_deg);
    let cos_dec = dec.to_radians().cos();
    let mut best: Option<(usize, f64)> = None;
    for (k, t) in truth.iter().enumerate().skip(start) {
        if t.dec > dec + radius_deg {
            break;
        }
        let dra = ((t.ra - ra + 180.0).rem_euclid(360.0) - 180.0) * cos_dec;
        let d2 = dra * dra + (t.dec - dec).powi(2);
        if d2 <= radius_deg * radius_deg && best.is_none_or(|(_, b)| d2 < b) {
            best = Some((k, d2));
        }
    }
    best.map(|(k, _)| k)
}

/// Matches every catalogue object to the nearest true object and collects the residuals:
/// astrometric for matched stars brighter than `bright_mag` in the object's reference band,
/// photometric (`MAGZERO − 2.5 log10 FLUX_PSF` − true) for matched stars in every band where
/// they are present, unflagged and with a positive flux.
pub fn residuals(
    catalog: &Catalog,
    zero_point: f64,
    truth: &[TruthObject],
    selection: Selection,
) -> Residuals {
    let mut sorted = truth.to_vec();
    sorted.sort_by(|a, b| a.dec.total_cmp(&b.dec));
    let decs: Vec<f64> = sorted.iter().map(|t| t.dec).collect();
    let radius = selection.match_radius_arcsec / 3600.0;
    let mut out = Residuals {
        objects: catalog.len(),
        bright_mag: selection.bright_mag,
        ..Residuals::default()
    };
    for k in 0..catalog.len() {
        let (ra, dec) = (catalog.ra[k], catalog.dec[k]);
        let Some(m) = nearest(&sorted, &decs, ra, dec, radius) else {
            continue;
        };
        out.matched += 1;
        let t = &sorted[m];
        if !t.star {
            continue;
        }
        let ref_mag = t
            .mags
            .get(&catalog.ref_band[k])
            .copied()
            .unwrap_or(f64::NAN);
        if ref_mag < selection.bright_mag {
            let dra = ((ra - t.ra + 180.0).rem_euclid(360.0) - 180.0) * t.dec.to_radians().cos();
            out.astrometric_mas
                .push((dra * MAS_PER_DEG, (dec - t.dec) * MAS_PER_DEG));
        }
        for (band, columns) in &catalog.bands {
            let Some(&true_mag) = t.mags.get(band) else {
                continue;
            };
            let flux = columns.flux_psf[k];
            if true_mag >= ABSENT_MAG || columns.flags[k] != 0 || flux.is_nan() || flux <= 0.0 {
                continue;
            }
            let measured = zero_point - 2.5 * flux.log10();
            out.photometric
                .entry(band.clone())
                .or_default()
                .push((true_mag, measured - true_mag));
        }
    }
    out
}

/// Header card `key` of the primary HDU of a truth file.
fn primary(r: &mut FitsReader, key: &str) -> Result<f64, FitsError> {
    r.key_f64(Hdu::Primary, key)
}

/// Every object of every truth file under `data/truth/` (`vVVVV/cCC.fits`: the true TAN WCS
/// in `TCRPIXn`/`TCRVALn`/`TCDi_j`, the band in `BAND`, table `OBJECTS` with `ID`, 1-based
/// `X`/`Y`, `MAG`, `TYPE`), one entry per object ID with its magnitude in each band it was
/// seen in.
pub fn read_truth(data: &Path) -> Result<Vec<TruthObject>, TruthError> {
    let mut objects: BTreeMap<i64, TruthObject> = BTreeMap::new();
    for path in truth_files(&data.join("truth"))? {
        let mut r = FitsReader::open(&path)?;
        let band = r.key_string(Hdu::Primary, "BAND")?;
        let wcs = TanWcs {
            crpix: [primary(&mut r, "TCRPIX1")?, primary(&mut r, "TCRPIX2")?],
            crval: [primary(&mut r, "TCRVAL1")?, primary(&mut r, "TCRVAL2")?],
            cd: [
                [primary(&mut r, "TCD1_1")?, primary(&mut r, "TCD1_2")?],
                [primary(&mut r, "TCD2_1")?, primary(&mut r, "TCD2_2")?],
            ],
        };
        let table = Hdu::Name("OBJECTS");
        let ids = r.column_i64(table, "ID")?;
        let xs = r.column_f64(table, "X")?;
        let ys = r.column_f64(table, "Y")?;
        let mags = r.column_f64(table, "MAG")?;
        let kinds = r.column_string(table, "TYPE")?;
        for k in 0..ids.len() {
            let entry = objects.entry(ids[k]).or_insert_with(|| {
                let (ra, dec) = wcs.pixel_to_sky(xs[k], ys[k]);
                TruthObject {
                    id: ids[k],
                    ra,
                    dec,
                    star: kinds[k].trim() == "star",
                    mags: BTreeMap::new(),
                }
            });
            entry.mags.insert(band.clone(), mags[k]);
        }
    }
    if objects.is_empty() {
        return Err(TruthError::NoTruth(data.to_path_buf()));
    }
    Ok(objects.into_values().collect())
}

/// The `*.fits` files one directory level below `dir`, sorted.
fn truth_files(dir: &Path) -> Result<Vec<PathBuf>, TruthError> {
    let list = |d: &Path| -> Result<Vec<PathBuf>, TruthError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|source| TruthError::Io {
                path: d.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        Ok(paths)
    };
    let mut files = Vec::new();
    for visit in list(dir)?.into_iter().filter(|p| p.is_dir()) {
        files.extend(
            list(&visit)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "fits")),
        );
    }
    Ok(files)
}

/// Colours of the bands in the photometric panel, in catalogue order.
const BAND_COLOURS: [[u8; 3]; 6] = [
    [30, 140, 30],
    [210, 40, 40],
    [120, 40, 160],
    [40, 90, 200],
    [200, 140, 0],
    [90, 90, 90],
];

/// The two panels: astrometric residuals of bright stars (Δδ against Δα cos δ, mas) and
/// photometric residuals of stars (Δmag against true magnitude, one colour per band).
pub fn draw(residuals: &Residuals, width: u32) -> Canvas {
    let height = width * 3 / 4;
    let flat: Vec<f64> = residuals
        .astrometric_mas
        .iter()
        .flat_map(|(a, d)| [*a, *d])
        .collect();
    let astro_range = symmetric_range(&flat, 0.98, 5.0);
    let astrometry = scatter(
        width,
        height,
        &format!(
            "astrometry vs truth: {} stars < {} mag, median {:.1} mas, RMS {:.1} mas",
            residuals.astrometric_mas.len(),
            residuals.bright_mag,
            residuals.astrometric_median_mas(),
            residuals.astrometric_rms_mas()
        ),
        &Axes {
            x_label: "RA offset x cos(Dec) [mas]".into(),
            y_label: "Dec offset [mas]".into(),
            x_range: astro_range,
            y_range: astro_range,
            zero_line: true,
        },
        &[Series {
            label: "stars".into(),
            colour: [40, 90, 200],
            points: residuals.astrometric_mas.clone(),
        }],
    );
    let mags: Vec<f64> = residuals
        .photometric
        .values()
        .flat_map(|p| p.iter().map(|(m, _)| *m))
        .collect();
    let lo = mags.iter().copied().fold(f64::INFINITY, f64::min).floor();
    let hi = mags
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil();
    let x_range = if lo < hi { (lo, hi) } else { (15.0, 25.0) };
    let dmags: Vec<f64> = residuals
        .photometric
        .values()
        .flat_map(|p| p.iter().map(|(_, d)| *d))
        .collect();
    let medians = residuals.bright_median_dmag();
    let summary: Vec<String> = medians
        .iter()
        .map(|(b, (m, _))| format!("{b} {m:+.3}"))
        .collect();
    let series: Vec<Series> = residuals
        .photometric
        .iter()
        .zip(BAND_COLOURS.iter().cycle())
        .map(|((band, points), colour)| Series {
            label: band.clone(),
            colour: *colour,
            points: points.clone(),
        })
        .collect();
    let photometry = scatter(
        width,
        height,
        &format!(
            "photometry vs truth: median dmag (< {} mag) {}",
            residuals.bright_mag,
            summary.join(", ")
        ),
        &Axes {
            x_label: "true magnitude".into(),
            y_label: "PSF mag - true [mag]".into(),
            x_range,
            y_range: symmetric_range(&dmags, 0.95, 0.05),
            zero_line: true,
        },
        &series,
    );
    stack(&[astrometry, photometry])
}

/// Figures of one comparison, as `skypipe-sim residuals` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The residuals themselves.
    pub residuals: Residuals,
    /// The picture written.
    pub picture: PathBuf,
}

/// Reads the truth under `data` and the multiband catalogue `catalog`, computes the residuals
/// with the default [`Selection`] and writes their picture (PNG, `width` pixels wide) to `out`.
pub fn residual_plot(
    data: &Path,
    catalog: &Path,
    out: &Path,
    width: u32,
) -> Result<Summary, TruthError> {
    let truth = read_truth(data)?;
    let (cat, _) = read_catalog(catalog)?;
    let zero_point = FitsReader::open(catalog)?.key_f64(Hdu::Name("OBJECTS"), "MAGZERO")?;
    let residuals = residuals(&cat, zero_point, &truth, Selection::default());
    let canvas = draw(&residuals, width);
    let source = catalog.display().to_string();
    write_png_rgb(
        out,
        canvas.width,
        canvas.height,
        &canvas.rgb,
        &[
            ("Title", "skypipe residuals against truth"),
            ("Source", &source),
        ],
        Durability::Synced,
    )?;
    Ok(Summary {
        residuals,
        picture: out.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::BandColumns;

    fn star(id: i64, ra: f64, dec: f64, g: f64, r: f64) -> TruthObject {
        TruthObject {
            id,
            ra,
            dec,
            star: true,
            mags: [("g".to_string(), g), ("r".to_string(), r)].into(),
        }
    }

    /// A catalogue of the given positions with PSF fluxes of the given magnitudes at ZP 27.
    fn catalog(rows: &[(f64, f64, f64, f64)]) -> Catalog {
        let flux = |m: f64| 10f64.powf(0.4 * (27.0 - m));
        let band = |pick: fn(&(f64, f64, f64, f64)) -> f64| BandColumns {
            flux_aper: rows.iter().map(|r| flux(pick(r))).collect(),
            flux_aper_err: vec![1.0; rows.len()],
            flux_psf: rows.iter().map(|r| flux(pick(r))).collect(),
            flux_psf_err: vec![1.0; rows.len()],
            flags: vec![0; rows.len()],
        };
        Catalog {
            id: (0..rows.len() as i64).collect(),
            patch: vec![(0, 0); rows.len()],
            ra: rows.iter().map(|r| r.0).collect(),
            dec: rows.iter().map(|r| r.1).collect(),
            x: vec![0.0; rows.len()],
            y: vec![0.0; rows.len()],
            ref_band: vec!["r".into(); rows.len()],
            ixx: vec![0.0; rows.len()],
            iyy: vec![0.0; rows.len()],
            ixy: vec![0.0; rows.len()],
            bands: vec![("g".into(), band(|r| r.2)), ("r".into(), band(|r| r.3))],
        }
    }

    /// Known offsets come back in mas and mag, across RA = 0; an object beyond the radius is
    /// unmatched; a band where the star is absent gives no photometric point.
    #[test]
    fn residuals_are_the_known_offsets() {
        let mas = 1.0 / MAS_PER_DEG;
        let dec: f64 = 30.0;
        let cos = dec.to_radians().cos();
        let truth = vec![
            star(1, 359.99999, dec, 18.0, 17.5),
            star(2, 0.00002, dec + 0.001, 19.0, 99.0),
            star(3, 10.0, -5.0, 22.0, 21.0),
        ];
        let cat = catalog(&[
            // 20 mas east (across RA = 0) and 10 mas north; g 0.01 mag faint, r exact.
            (
                (359.99999 + 20.0 * mas / cos).rem_euclid(360.0),
                dec + 10.0 * mas,
                18.01,
                17.5,
            ),
            (0.00002, dec + 0.001, 19.0, 30.0),
            (10.0, -5.0 + 2.0 / 3600.0, 22.0, 21.0),
        ]);
        let res = residuals(&cat, 27.0, &truth, Selection::default());
        assert_eq!((res.objects, res.matched), (3, 2));
        // Star 2's reference-band (r) magnitude is absent (99): no astrometric point.
        assert_eq!(res.astrometric_mas.len(), 1);
        let (a, d) = res.astrometric_mas[0];
        assert!(
            (a - 20.0).abs() < 1e-3 && (d - 10.0).abs() < 1e-3,
            "{a} {d}"
        );
        let g = &res.photometric["g"];
        assert_eq!(g.len(), 2);
        assert!(
            (g[0].1 - 0.01).abs() < 1e-9 || (g[1].1 - 0.01).abs() < 1e-9,
            "{g:?}"
        );
        assert_eq!(res.photometric["r"].len(), 1);
        assert!(res.photometric["r"][0].1.abs() < 1e-9);
        assert!((res.astrometric_rms_mas() - 500f64.sqrt()).abs() < 1e-3);
        assert!((res.astrometric_median_mas() - 500f64.sqrt()).abs() < 1e-3);
        let medians = res.bright_median_dmag();
        assert_eq!(medians["r"].1, 1);
    }

    /// A galaxy matches but gives no residual; flagged bands are left out.
    #[test]
    fn galaxies_and_flagged_bands_are_left_out() {
        let mut galaxy = star(1, 150.0, 2.0, 18.0, 17.0);
        galaxy.star = false;
        let truth = vec![galaxy, star(2, 150.01, 2.0, 18.0, 17.0)];
        let mut cat = catalog(&[(150.0, 2.0, 18.0, 17.0), (150.01, 2.0, 18.0, 17.0)]);
        cat.bands[0].1.flags[1] = 1;
        let res = residuals(&cat, 27.0, &truth, Selection::default());
        assert_eq!(res.matched, 2);
        assert_eq!(res.astrometric_mas.len(), 1);
        assert!(!res.photometric.contains_key("g"));
        assert_eq!(res.photometric["r"].len(), 1);
    }

    /// The picture has both panels, one above the other.
    #[test]
    fn the_picture_holds_both_panels() {
        let truth = vec![star(1, 150.0, 2.0, 18.0, 17.0)];
        let cat = catalog(&[(150.0, 2.0, 18.02, 16.99)]);
        let res = residuals(&cat, 27.0, &truth, Selection::default());
        let canvas = draw(&res, 640);
        assert_eq!(canvas.width, 640);
        assert!(canvas.height > 2 * 480, "{}", canvas.height);
    }
}
