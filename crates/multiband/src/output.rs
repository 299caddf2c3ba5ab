//! Files of the stage: the coadd catalogues read by merge-detections, and the patch and tract
//! object catalogues written (FITS binary tables). Formats: `docs/formats.md`, `## Multiband`.
//! Every write goes through a temporary name (atomic); every error names the file.

use crate::kernels::flag;
use skypipe_coadd::output::OutputFile;
use skypipe_io::fits::{Card, Column, FitsError, FitsReader, Hdu};
use std::path::Path;

/// Errors of the stage's files, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum MultibandError {
    /// Reading or writing a FITS file failed.
    #[error(transparent)]
    Fits(#[from] FitsError),
    /// Reading a coadd failed.
    #[error(transparent)]
    Coadd(#[from] skypipe_coadd::output::CoaddError),
    /// A file holds values it cannot hold.
    #[error("{path}: {message}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The detections of one band's coadd catalogue (`coadd-sources`).
#[derive(Debug, Clone, PartialEq)]
pub struct BandDetections {
    /// 0-based patch pixel positions and detection significance.
    pub peaks: Vec<(f64, f64, f64)>,
    /// The PSF FWHM the catalogue was measured with, pixels.
    pub psf_fwhm: f64,
    /// The coadd's zero point, mag.
    pub zero_point: f64,
}

/// Reads a coadd catalogue's positions (`X`, `Y`, 1-based), `DET_SIGNIF`, `PSFFWHM` and
/// `MAGZERO`.
pub fn read_detections(path: &Path) -> Result<BandDetections, MultibandError> {
    let mut r = FitsReader::open(path)?;
    let hdu = Hdu::Name("SOURCES");
    let x = r.column_f64(hdu, "X")?;
    let y = r.column_f64(hdu, "Y")?;
    let s = r.column_f64(hdu, "DET_SIGNIF")?;
    let psf_fwhm = r.key_f64(hdu, "PSFFWHM")?;
    let zero_point = r.key_f64(hdu, "MAGZERO")?;
    if !(psf_fwhm.is_finite() && psf_fwhm > 0.0) {
        return Err(MultibandError::Content {
            path: path.display().to_string(),
            message: format!("PSFFWHM {psf_fwhm} is not a positive size"),
        });
    }
    if let Some(k) = (0..x.len()).find(|&k| !(x[k].is_finite() && y[k].is_finite())) {
        return Err(MultibandError::Content {
            path: path.display().to_string(),
            message: format!("row {} has no finite position", k + 1),
        });
    }
    Ok(BandDetections {
        peaks: (0..x.len())
            .map(|k| (x[k] - 1.0, y[k] - 1.0, s[k]))
            .collect(),
        psf_fwhm,
        zero_point,
    })
}

/// The forced photometry columns of one band.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BandColumns {
    /// Aperture flux at the reference position.
    pub flux_aper: Vec<f64>,
    /// Its error.
    pub flux_aper_err: Vec<f64>,
    /// Aperture-corrected PSF flux at the reference position.
    pub flux_psf: Vec<f64>,
    /// Its error.
    pub flux_psf_err: Vec<f64>,
    /// Bits of [`flag`].
    pub flags: Vec<i32>,
}

impl BandColumns {
    /// `n` rows of a missing band: `NaN` fluxes, the MISSING flag.
    pub fn missing(n: usize) -> Self {
        Self {
            flux_aper: vec![f64::NAN; n],
            flux_aper_err: vec![f64::NAN; n],
            flux_psf: vec![f64::NAN; n],
            flux_psf_err: vec![f64::NAN; n],
            flags: vec![flag::MISSING as i32; n],
        }
    }

    fn extend(&mut self, o: BandColumns) {
        self.flux_aper.extend(o.flux_aper);
        self.flux_aper_err.extend(o.flux_aper_err);
        self.flux_psf.extend(o.flux_psf);
        self.flux_psf_err.extend(o.flux_psf_err);
        self.flags.extend(o.flags);
    }
}

/// The rows of an object catalogue (patch or tract).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Object ids, unique within the tract.
    pub id: Vec<i64>,
    /// Patch of each object (column, row).
    pub patch: Vec<(i32, i32)>,
    /// Reference RA, deg.
    pub ra: Vec<f64>,
    /// Reference Dec, deg.
    pub dec: Vec<f64>,
    /// Reference position on the patch grid, 1-based pixels.
    pub x: Vec<f64>,
    /// y.
    pub y: Vec<f64>,
    /// Reference band.
    pub ref_band: Vec<String>,
    /// Reference-band second moments, pixels².
    pub ixx: Vec<f64>,
    /// yy.
    pub iyy: Vec<f64>,
    /// xy.
    pub ixy: Vec<f64>,
    /// Bands, with their columns.
    pub bands: Vec<(String, BandColumns)>,
}

impl Catalog {
    /// Number of objects.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Whether it holds no object.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// Appends `other`'s rows; its bands not in `self` are added (earlier rows missing them),
    /// and bands of `self` it lacks are missing in its rows.
    pub fn append(&mut self, other: Catalog) {
        let (before, added) = (self.len(), other.len());
        for (band, _) in &other.bands {
            if !self.bands.iter().any(|(b, _)| b == band) {
                self.bands
                    .push((band.clone(), BandColumns::missing(before)));
            }
        }
        let mut theirs = other.bands;
        for (band, cols) in &mut self.bands {
            match theirs.iter().position(|(b, _)| b == band) {
                Some(k) => cols.extend(theirs.swap_remove(k).1),
                None => cols.extend(BandColumns::missing(added)),
            }
        }
        self.id.extend(other.id);
        self.patch.extend(other.patch);
        self.ra.extend(other.ra);
        self.dec.extend(other.dec);
        self.x.extend(other.x);
        self.y.extend(other.y);
        self.ref_band.extend(other.ref_band);
        self.ixx.extend(other.ixx);
        self.iyy.extend(other.iyy);
        self.ixy.extend(other.ixy);
    }
}

/// A (patch, band) missing from a catalogue, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    /// Patch as `"x,y"`.
    pub patch: String,
    /// Band (`*`: every band of the patch).
    pub band: String,
    /// Why (the failed unit and its outcome).
    pub reason: String,
}

const TABLE: &str = "OBJECTS";

/// Writes an object catalogue: table `OBJECTS` with the flag bits in its header, `extra`
/// header cards, and table `MISSING` (patch, band, reason) listing what is missing.
pub fn write_catalog(
    out: &OutputFile<'_>,
    c: &Catalog,
    zero_point: f64,
    extra: &[Card],
    missing: &[Missing],
) -> Result<(), MultibandError> {
    let unit = skypipe_optical::singleframe::FLUX_UNIT;
    let mut columns = vec![
        Column::i64("ID", "", c.id.clone()),
        Column::i32("PATCH_X", "", c.patch.iter().map(|p| p.0).collect()),
        Column::i32("PATCH_Y", "", c.patch.iter().map(|p| p.1).collect()),
        Column::f64("RA", "deg", c.ra.clone()),
        Column::f64("DEC", "deg", c.dec.clone()),
        Column::f64("X", "pix", c.x.clone()),
        Column::f64("Y", "pix", c.y.clone()),
        Column::text("REF_BAND", c.ref_band.clone()),
        Column::f64("IXX", "pix2", c.ixx.clone()),
        Column::f64("IYY", "pix2", c.iyy.clone()),
        Column::f64("IXY", "pix2", c.ixy.clone()),
    ];
    for (band, b) in &c.bands {
        let name = |k: &str| format!("{k}_{}", band.to_uppercase());
        columns.extend([
            Column::f64(&name("FLUX_APER"), unit, b.flux_aper.clone()),
            Column::f64(&name("FLUX_APER_ERR"), unit, b.flux_aper_err.clone()),
            Column::f64(&name("FLUX_PSF"), unit, b.flux_psf.clone()),
            Column::f64(&name("FLUX_PSF_ERR"), unit, b.flux_psf_err.clone()),
            Column::i32(&name("FLAGS"), "", b.flags.clone()),
        ]);
    }
    let bands: Vec<&str> = c.bands.iter().map(|(b, _)| b.as_str()).collect();
    let mut cards = vec![Card::text(
        "BANDS",
        &bands.join(","),
        "bands of the flux columns",
    )];
    // A tract catalogue none of whose patches succeeded has no zero point (and no rows).
    if zero_point.is_finite() {
        cards.push(Card::real(
            "MAGZERO",
            zero_point,
            "[mag] mag = MAGZERO - 2.5 log10(flux)",
        ));
    }
    cards.push(Card::int(
        "NMISSING",
        missing.len() as i64,
        "rows of table MISSING",
    ));
    cards.extend_from_slice(extra);
    for (key, bit, what) in flag::NAMES {
        cards.push(Card::int(key, i64::from(bit), what));
    }
    let mut w = out.create()?;
    w.primary_keys(extra)?;
    w.table(TABLE, &columns, &cards)?;
    w.table(
        "MISSING",
        &[
            Column::text("PATCH", missing.iter().map(|m| m.patch.clone()).collect()),
            Column::text("BAND", missing.iter().map(|m| m.band.clone()).collect()),
            Column::text("REASON", missing.iter().map(|m| m.reason.clone()).collect()),
        ],
        &[],
    )?;
    Ok(out.commit(w)?)
}

/// Reads an object catalogue written by [`write_catalog`] (table `OBJECTS`, bands from its
/// `BANDS` card) and its `MISSING` rows.
pub fn read_catalog(path: &Path) -> Result<(Catalog, Vec<Missing>), MultibandError> {
    let mut r = FitsReader::open(path)?;
    let hdu = Hdu::Name(TABLE);
    let bands = r.key_string(hdu, "BANDS")?;
    let px = r.column_i64(hdu, "PATCH_X")?;
    let py = r.column_i64(hdu, "PATCH_Y")?;
    let mut c = Catalog {
        id: r.column_i64(hdu, "ID")?,
        patch: px
            .iter()
            .zip(&py)
            .map(|(&x, &y)| (x as i32, y as i32))
            .collect(),
        ra: r.column_f64(hdu, "RA")?,
        dec: r.column_f64(hdu, "DEC")?,
        x: r.column_f64(hdu, "X")?,
        y: r.column_f64(hdu, "Y")?,
        ref_band: r.column_string(hdu, "REF_BAND")?,
        ixx: r.column_f64(hdu, "IXX")?,
        iyy: r.column_f64(hdu, "IYY")?,
        ixy: r.column_f64(hdu, "IXY")?,
        bands: Vec::new(),
    };
    for band in bands.split(',').filter(|b| !b.is_empty()) {
        let name = |k: &str| format!("{k}_{}", band.to_uppercase());
        let cols = BandColumns {
            flux_aper: r.column_f64(hdu, &name("FLUX_APER"))?,
            flux_aper_err: r.column_f64(hdu, &name("FLUX_APER_ERR"))?,
            flux_psf: r.column_f64(hdu, &name("FLUX_PSF"))?,
            flux_psf_err: r.column_f64(hdu, &name("FLUX_PSF_ERR"))?,
            flags: r
                .column_i64(hdu, &name("FLAGS"))?
                .into_iter()
                .map(|f| f as i32)
                .collect(),
        };
        c.bands.push((band.to_string(), cols));
    }
    let m = Hdu::Name("MISSING");
    let (patch, band, reason) = (
        r.column_string(m, "PATCH")?,
        r.column_string(m, "BAND")?,
        r.column_string(m, "REASON")?,
    );
    let missing = (0..patch.len())
        .map(|k| Missing {
            patch: patch[k].clone(),
            band: band[k].clone(),
            reason: reason[k].clone(),
        })
        .collect();
    Ok((c, missing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_io::provenance::Provenance;

    fn one(id: i64, bands: &[&str]) -> Catalog {
        Catalog {
            id: vec![id],
            patch: vec![(1, 2)],
            ra: vec![150.0],
            dec: vec![2.0],
            x: vec![10.0],
            y: vec![20.0],
            ref_band: vec!["r".into()],
            ixx: vec![1.0],
            iyy: vec![1.5],
            ixy: vec![0.1],
            bands: bands
                .iter()
                .map(|b| {
                    (
                        b.to_string(),
                        BandColumns {
                            flux_aper: vec![100.0],
                            flux_aper_err: vec![1.0],
                            flux_psf: vec![99.0],
                            flux_psf_err: vec![0.9],
                            flags: vec![0],
                        },
                    )
                })
                .collect(),
        }
    }

    /// Writes `c` to `path` as the tract catalogue unit of tract 1 would (not synced).
    fn write_test_catalog(path: &Path, c: &Catalog, zero_point: f64, missing: &[Missing]) {
        let provenance = Provenance::new(
            "multiband",
            "tract=1,step=catalog",
            "f",
            [("multiband-patch".to_string(), "p.fits")],
        );
        let out = OutputFile {
            path,
            provenance: &provenance,
            durable: false,
        };
        write_catalog(&out, c, zero_point, &[], missing).unwrap();
    }

    /// Appending catalogues with different bands fills the gaps as missing; a written catalogue
    /// reads back equal, with its MISSING rows.
    #[test]
    fn catalogues_append_and_round_trip() {
        let mut c = one(1, &["g", "r"]);
        c.append(one(2, &["r", "i"]));
        assert_eq!(c.len(), 2);
        let names: Vec<&str> = c.bands.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(names, ["g", "r", "i"]);
        assert_eq!(c.bands[0].1.flags, vec![0, flag::MISSING as i32]);
        assert_eq!(c.bands[2].1.flags, vec![flag::MISSING as i32, 0]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cat.fits");
        let missing = vec![Missing {
            patch: "1,2".into(),
            band: "i".into(),
            reason: "unit x: bad-input".into(),
        }];
        write_test_catalog(&path, &c, 27.0, &missing);
        assert_eq!(
            Provenance::read(&path).unwrap().map(|p| p.unit),
            Some("tract=1,step=catalog".to_string())
        );
        let (back, m) = read_catalog(&path).unwrap();
        assert_eq!(m, missing);
        assert_eq!(back.id, c.id);
        assert_eq!(back.ref_band, c.ref_band);
        assert_eq!(back.bands[1], c.bands[1]);
        assert!(back.bands[0].1.flux_psf[1].is_nan());
    }

    /// A tract catalogue none of whose patches succeeded (no rows, zero point unknown) is
    /// still written, without `MAGZERO`, listing what is missing.
    #[test]
    fn an_empty_catalogue_without_zero_point_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tract.fits");
        let missing = vec![Missing {
            patch: "2,2".into(),
            band: String::new(),
            reason: "unit tract=1,patch=2,2,step=catalog: dependency-failed".into(),
        }];
        write_test_catalog(&path, &Catalog::default(), f64::NAN, &missing);
        let (back, m) = read_catalog(&path).unwrap();
        assert_eq!(back.len(), 0);
        assert_eq!(m, missing);
        let mut r = FitsReader::open(&path).unwrap();
        assert_eq!(r.key_f64_opt(Hdu::Name(TABLE), "MAGZERO").unwrap(), None);
    }
}
