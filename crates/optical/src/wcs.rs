//! World coordinates of images: a raw exposure's header WCS is read and evaluated by WCSLIB
//! through [`skypipe_wcs`] (every celestial form WCSLIB reads: CD, PC+CDELT, CROTA2,
//! TAN-SIP, TPV, …), and written back into output headers as WCSLIB writes it.
//! [`TanWcs`] is the simulated camera's own WCS (pure TAN with a CD matrix), which the
//! simulator writes into the headers it makes and uses to place its objects.

use serde::{Deserialize, Serialize};
use skypipe_io::fits::{Card, CardValue};
pub use skypipe_wcs::{Wcs, WcsError};
use std::path::Path;

/// Reads the WCS of a FITS file's primary HDU (the header text through CFITSIO, parsed and
/// checked by WCSLIB). Errors name the file, the HDU and, where one is to blame, the keyword.
pub fn read_primary_wcs(path: &Path) -> Result<Wcs, WcsError> {
    let name = format!("{}: primary HDU", path.display());
    let text = header_text(path, None).map_err(|message| WcsError::Text {
        header: name.clone(),
        message,
    })?;
    Wcs::from_header(&name, &text)
}

/// [`read_primary_wcs`] for an image cut from the file's at 0-based column `dx`, row `dy` (a
/// raw frame trimmed to its data): every reference pixel (`CRPIX1`, `CRPIX2` and those of
/// alternate descriptions, `CRPIX1A`…) moves by `(-dx, -dy)`, so the WCS describes the cut image.
/// SIP and TPV distortions are relative to the reference pixel or to intermediate coordinates
/// and move with it.
pub fn read_primary_wcs_moved(path: &Path, dx: usize, dy: usize) -> Result<Wcs, WcsError> {
    if (dx, dy) == (0, 0) {
        return read_primary_wcs(path);
    }
    let name = format!("{}: primary HDU", path.display());
    let text = primary_header_text(path)
        .and_then(|t| move_reference_pixel(&t, dx as f64, dy as f64).map_err(|e| e.to_string()))
        .map_err(|message| WcsError::Text {
            header: name.clone(),
            message,
        })?;
    Wcs::from_header(&name, &text)
}

/// Why [`move_reference_pixel`] refused a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// A keyrecord is not ASCII.
    #[error("header text is not ASCII")]
    NotAscii,
    /// A `CRPIXj[a]` value is not a number.
    #[error("keyword {keyword} = '{value}' (record {record}) is not a number")]
    NotANumber {
        /// The keyword.
        keyword: String,
        /// Its value as written.
        value: String,
        /// The keyrecord's number, from 1.
        record: usize,
    },
}

/// The header text (80-character keyrecords) with every `CRPIXj[a]` value lowered by `dx` for
/// axis 1 and `dy` for axis 2. A value that is not a number is an error naming the keyword.
///
/// ```
/// let text = format!("{:<80}{:<80}", "CRPIX1  =                 10.5 / x", "CRPIX2B =                   20");
/// let moved = skypipe_optical::wcs::move_reference_pixel(&text, 4.0, 2.0).unwrap();
/// assert_eq!(moved.len(), 160);
/// assert!(moved.starts_with("CRPIX1  =                  6.5 /"));
/// assert!(moved[80..].starts_with("CRPIX2B =                   18 /"));
/// ```
pub fn move_reference_pixel(text: &str, dx: f64, dy: f64) -> Result<String, MoveError> {
    let mut out = String::with_capacity(text.len());
    for (i, record) in text.as_bytes().chunks(80).enumerate() {
        let record = std::str::from_utf8(record).map_err(|_| MoveError::NotAscii)?;
        let key = record.get(..8).unwrap_or(record).trim_end();
        let axis_shift = key.strip_prefix("CRPIX").and_then(|rest| {
            let mut chars = rest.chars();
            let shift = match chars.next()? {
                '1' => dx,
                '2' => dy,
                _ => return None,
            };
            let alt = chars.as_str();
            (alt.is_empty() || (alt.len() == 1 && alt.chars().all(|c| c.is_ascii_uppercase())))
                .then_some(shift)
        });
        match axis_shift {
            Some(shift) if record.get(8..10) == Some("= ") => {
                let value = record[10..].split('/').next().unwrap_or("").trim();
                let v: f64 =
                    value
                        .replace(['D', 'd'], "E")
                        .parse()
                        .map_err(|_| MoveError::NotANumber {
                            keyword: key.into(),
                            value: value.into(),
                            record: i + 1,
                        })?;
                let moved = format!(
                    "{key:<8}= {:>20} / moved by the trim of the raw frame",
                    v - shift
                );
                out.push_str(&format!("{:<80}", &moved[..moved.len().min(80)]));
            }
            _ => out.push_str(record),
        }
    }
    Ok(out)
}

/// Reads the WCS of the image extension `extname` of a FITS file (e.g. a calibrated exposure's
/// `IMAGE`). Errors name the file, the HDU and, where one is to blame, the keyword.
pub fn read_hdu_wcs(path: &Path, extname: &str) -> Result<Wcs, WcsError> {
    let name = format!("{}: HDU '{extname}'", path.display());
    let text = header_text(path, Some(extname)).map_err(|message| WcsError::Text {
        header: name.clone(),
        message,
    })?;
    Wcs::from_header(&name, &text)
}

/// The primary header's keyrecords (80 characters each), as CFITSIO's `fits_hdr2str` gives them.
fn primary_header_text(path: &Path) -> Result<String, String> {
    header_text(path, None)
}

/// The keyrecords of extension `extname` (the primary HDU for `None`).
fn header_text(path: &Path, extname: Option<&str>) -> Result<String, String> {
    let mut file = fitsio::FitsFile::open(path).map_err(|e| e.to_string())?;
    if let Some(extname) = extname {
        file.hdu(extname)
            .map_err(|e| format!("no readable HDU '{extname}' ({e})"))?;
    }
    let mut text: *mut std::ffi::c_char = std::ptr::null_mut();
    let (mut nkeys, mut status) = (0, 0);
    // SAFETY: the file is open at the requested HDU; ffhdr2str allocates `text` (nkeys × 80
    // characters, NUL-terminated), which is copied and freed with fffree below.
    unsafe {
        fitsio::sys::ffhdr2str(
            file.as_raw(),
            0,
            std::ptr::null_mut(),
            0,
            &mut text,
            &mut nkeys,
            &mut status,
        );
    }
    if status != 0 || text.is_null() {
        return Err(format!(
            "CFITSIO could not read the header (status {status})"
        ));
    }
    // SAFETY: `text` is a NUL-terminated string allocated by CFITSIO, freed once.
    let copy = unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    let mut free_status = 0;
    // SAFETY: as above.
    unsafe { fitsio::sys::fffree(text.cast(), &mut free_status) };
    Ok(copy)
}

/// The header cards of `wcs` as WCSLIB writes them (`wcshdo`), ready for an output HDU;
/// commentary records are left out.
pub fn header_cards(wcs: &Wcs) -> Result<Vec<Card>, WcsError> {
    let mut cards = Vec::new();
    for record in wcs.to_records()? {
        if let Some(card) = card_of_record(&record) {
            cards.push(card.map_err(|message| WcsError::Keyword {
                header: wcs.header_name().to_string(),
                keyword: record.get(..8).unwrap_or(&record).trim_end().to_string(),
                message,
            })?);
        }
    }
    Ok(cards)
}

/// Header cards of FITS keyrecords (e.g. a fitted WCS's); commentary records are left out.
/// Errors name `header` and the keyword.
pub fn cards_of_records(header: &str, records: &[String]) -> Result<Vec<Card>, WcsError> {
    let mut cards = Vec::new();
    for record in records {
        if let Some(card) = card_of_record(record) {
            cards.push(card.map_err(|message| WcsError::Keyword {
                header: header.to_string(),
                keyword: record.get(..8).unwrap_or(record).trim_end().to_string(),
                message,
            })?);
        }
    }
    Ok(cards)
}

/// Parses a valued keyrecord (`KEYWORD = value / comment`); `None` for commentary records.
fn card_of_record(record: &str) -> Option<Result<Card, String>> {
    if record.get(8..10) != Some("= ") {
        return None;
    }
    let key = record[..8].trim_end().to_string();
    let rest = record[10..].trim_start();
    let (value, comment) = if let Some(quoted) = rest.strip_prefix('\'') {
        // A string: '' inside is a quote; the comment follows the closing quote.
        let mut value = String::new();
        let mut chars = quoted.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|p| p.1) == Some('\'') {
                    value.push('\'');
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            } else {
                value.push(c);
            }
        }
        let Some(end) = end else {
            return Some(Err(format!(
                "unterminated string in \"{}\"",
                record.trim_end()
            )));
        };
        let comment = quoted[end..].trim_start().strip_prefix('/').unwrap_or("");
        (CardValue::Text(value.trim_end().to_string()), comment)
    } else {
        let (v, comment) = rest.split_once('/').unwrap_or((rest, ""));
        let v = v.trim();
        let parsed = if v.contains(['.', 'E', 'e', 'D', 'd']) {
            v.replace(['D', 'd'], "E").parse().map(CardValue::Real).ok()
        } else {
            v.parse().map(CardValue::Int).ok()
        };
        let Some(value) = parsed else {
            return Some(Err(format!(
                "unreadable value in \"{}\"",
                record.trim_end()
            )));
        };
        (value, comment)
    };
    Some(Ok(Card {
        key,
        value,
        comment: comment.trim().to_string(),
    }))
}

/// The simulated camera's WCS: gnomonic (TAN) projection with a CD matrix, LONPOLE 180.
/// Pixel coordinates are FITS 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TanWcs {
    /// Reference pixel (x, y), 1-based.
    pub crpix: [f64; 2],
    /// Reference sky position (ra, dec), degrees.
    pub crval: [f64; 2],
    /// Linear transformation pixel → intermediate coordinates, degrees per pixel,
    /// `[[CD1_1, CD1_2], [CD2_1, CD2_2]]`.
    pub cd: [[f64; 2]; 2],
}

impl TanWcs {
    /// 1-based pixel of sky position (ra, dec) in degrees; `None` on the far hemisphere.
    pub fn sky_to_pixel(&self, ra: f64, dec: f64) -> Option<(f64, f64)> {
        let (a, d) = (ra.to_radians(), dec.to_radians());
        let (a0, d0) = (self.crval[0].to_radians(), self.crval[1].to_radians());
        let cosc = d.sin() * d0.sin() + d.cos() * d0.cos() * (a - a0).cos();
        if cosc <= 0.0 {
            return None;
        }
        let xi = (d.cos() * (a - a0).sin() / cosc).to_degrees();
        let eta = ((d.sin() * d0.cos() - d.cos() * d0.sin() * (a - a0).cos()) / cosc).to_degrees();
        let [[a11, a12], [a21, a22]] = self.cd;
        let det = a11 * a22 - a12 * a21;
        let dx = (a22 * xi - a12 * eta) / det;
        let dy = (-a21 * xi + a11 * eta) / det;
        Some((self.crpix[0] + dx, self.crpix[1] + dy))
    }

    /// Sky position (ra, dec) in degrees of 1-based pixel `(x, y)`, RA in `[0, 360)`.
    pub fn pixel_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        let (dx, dy) = (x - self.crpix[0], y - self.crpix[1]);
        let [[a11, a12], [a21, a22]] = self.cd;
        let xi = (a11 * dx + a12 * dy).to_radians();
        let eta = (a21 * dx + a22 * dy).to_radians();
        let (a0, d0) = (self.crval[0].to_radians(), self.crval[1].to_radians());
        let denominator = d0.cos() - eta * d0.sin();
        let ra = a0 + xi.atan2(denominator);
        let dec = (d0.sin() + eta * d0.cos()).atan2(xi.hypot(denominator));
        (ra.to_degrees().rem_euclid(360.0), dec.to_degrees())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_io::fits::FitsWriter;

    fn tan() -> TanWcs {
        let s = 0.2 / 3600.0;
        let t = 0.3f64.to_radians();
        TanWcs {
            crpix: [-500.5, 1024.0],
            crval: [359.95, -30.0],
            cd: [[-s * t.cos(), s * t.sin()], [s * t.sin(), s * t.cos()]],
        }
    }

    #[test]
    fn simulated_headers_read_back_through_wcslib_to_the_simulators_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.fits");
        let w = tan();
        let mut f = FitsWriter::create(&path, false, None).unwrap();
        f.primary_keys(&crate::sim::wcs_header(&w)).unwrap();
        f.commit().unwrap();
        let wcs = read_primary_wcs(&path).unwrap();
        let pixels = [[1.0, 1.0], [2048.0, 4096.0], [3000.5, -200.25]];
        let sky = wcs.pixel_to_sky(&pixels).unwrap();
        for (p, s) in pixels.iter().zip(sky) {
            let s = s.unwrap();
            let (x, y) = w.sky_to_pixel(s[0], s[1]).unwrap();
            assert!(
                (x - p[0]).abs() < 1e-7 && (y - p[1]).abs() < 1e-7,
                "{p:?} -> {x},{y}"
            );
        }
        assert_eq!(w.sky_to_pixel(w.crval[0] + 180.0, 30.0), None);
        // The inverse projection agrees with WCSLIB too.
        for (p, s) in pixels.iter().zip(wcs.pixel_to_sky(&pixels).unwrap()) {
            let s = s.unwrap();
            let (ra, dec) = w.pixel_to_sky(p[0], p[1]);
            let dra = ((ra - s[0] + 180.0).rem_euclid(360.0) - 180.0) * dec.to_radians().cos();
            assert!(
                dra.abs() < 1e-11 && (dec - s[1]).abs() < 1e-11,
                "{p:?}: {ra},{dec} vs {s:?}"
            );
        }
    }

    #[test]
    fn written_cards_read_back_to_the_same_transform() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.fits"), dir.path().join("b.fits"));
        let mut f = FitsWriter::create(&a, false, None).unwrap();
        f.primary_keys(&crate::sim::wcs_header(&tan())).unwrap();
        f.commit().unwrap();
        let wa = read_primary_wcs(&a).unwrap();
        let mut f = FitsWriter::create(&b, false, None).unwrap();
        f.primary_keys(&header_cards(&wa).unwrap()).unwrap();
        f.commit().unwrap();
        let wb = read_primary_wcs(&b).unwrap();
        let p = [[10.0, 20.0], [4000.0, -3000.0]];
        let (sa, sb) = (wa.pixel_to_sky(&p).unwrap(), wb.pixel_to_sky(&p).unwrap());
        for (x, y) in sa.iter().zip(&sb) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert!((x[0] - y[0]).abs() < 1e-11 && (x[1] - y[1]).abs() < 1e-11);
        }
    }

    #[test]
    fn sip_headers_are_read_applied_and_written_back_natively() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("sip.fits"), dir.path().join("out.fits"));
        let mut cards = crate::sim::wcs_header(&tan());
        for c in cards.iter_mut() {
            if let CardValue::Text(t) = &mut c.value
                && t.ends_with("--TAN")
            {
                t.push_str("-SIP");
            }
        }
        cards.extend([
            Card::int("A_ORDER", 2, ""),
            Card::real("A_2_0", 3e-6, ""),
            Card::int("B_ORDER", 2, ""),
            Card::real("B_0_2", -2e-6, ""),
        ]);
        let mut f = FitsWriter::create(&a, false, None).unwrap();
        f.primary_keys(&cards).unwrap();
        f.commit().unwrap();
        let sip = read_primary_wcs(&a).unwrap();
        assert_eq!(sip.ctypes(), ["RA---TAN-SIP", "DEC--TAN-SIP"]);
        // At pixel (2000, 1024), u = 2500.5 from CRPIX1: A moves x by 3e-6 u² ≈ 18.8 pixels.
        let s = sip.pixel_to_sky(&[[2000.0, 1024.0]]).unwrap()[0].unwrap();
        let (x, y) = tan().sky_to_pixel(s[0], s[1]).unwrap();
        let u: f64 = 2000.0 + 500.5;
        assert!(
            (x - (2000.0 + 3e-6 * u * u)).abs() < 1e-6 && (y - 1024.0).abs() < 1e-6,
            "{x} {y}"
        );
        let written = header_cards(&sip).unwrap();
        assert!(written.iter().any(|c| c.key == "A_2_0"), "{written:?}");
        let mut f = FitsWriter::create(&b, false, None).unwrap();
        f.primary_keys(&written).unwrap();
        f.commit().unwrap();
        let again = read_primary_wcs(&b)
            .unwrap()
            .pixel_to_sky(&[[2000.0, 1024.0]])
            .unwrap();
        let t = again[0].unwrap();
        assert!((t[0] - s[0]).abs() < 1e-11 && (t[1] - s[1]).abs() < 1e-11);
    }

    #[test]
    fn records_parse_into_cards() {
        let c =
            card_of_record(&format!("{:<80}", "CTYPE1  = 'RA---TAN-SIP'  / it''s TAN")).unwrap();
        assert_eq!(c.unwrap().value, CardValue::Text("RA---TAN-SIP".into()));
        let c = card_of_record(&format!("{:<80}", "CRVAL1  =  1.5D+02 / deg")).unwrap();
        assert_eq!(c.unwrap().value, CardValue::Real(150.0));
        let c = card_of_record(&format!("{:<80}", "WCSAXES =                    2")).unwrap();
        assert_eq!(c.unwrap().value, CardValue::Int(2));
        assert!(card_of_record(&format!("{:<80}", "COMMENT a note")).is_none());
        assert!(
            card_of_record(&format!("{:<80}", "CRVAL1  = abc"))
                .unwrap()
                .is_err()
        );
    }
}
