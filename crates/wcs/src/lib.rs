//! A small safe binding to WCSLIB (Calabretta's reference implementation of FITS WCS, Debian
//! `wcslib-dev`): FITS image-header text in, pixel ↔ sky transforms, header keyrecords out.
//!
//! Every celestial image WCS that WCSLIB reads is accepted: a `CDi_j` matrix, `PCi_j` with
//! `CDELTi`, `CROTA2`, TAN-SIP (`CTYPEi = '…-TAN-SIP'` with `A_p_q`/`B_p_q` and, if given,
//! `AP_p_q`/`BP_p_q`), TPV (`'…-TPV'` with `PVi_m`) and the other projections of the standard.
//! SIP coefficients in a header whose `CTYPE` lacks the `-SIP` suffix are refused rather
//! than ignored: tools disagree on whether to apply them, so such a header is ambiguous.
//!
//! Pixel coordinates are FITS 1-based (the centre of the first pixel is (1, 1)); sky
//! coordinates are (longitude, latitude) in degrees, longitude in [0, 360).
//!
//! ```
//! use skypipe_wcs::Wcs;
//! let card = |k: &str, v: &str| format!("{k:<8}= {v:>20}{:50}", "");
//! let header = [
//!     card("CTYPE1", "'RA---TAN'"), card("CTYPE2", "'DEC--TAN'"),
//!     card("CRPIX1", "100.0"), card("CRPIX2", "200.0"),
//!     card("CRVAL1", "10.0"), card("CRVAL2", "20.0"),
//!     card("CD1_1", "-1.0E-4"), card("CD2_2", "1.0E-4"),
//! ].concat();
//! let wcs = Wcs::from_header("example", &header).unwrap();
//! let sky = wcs.pixel_to_sky(&[[100.0, 200.0]]).unwrap();
//! assert!((sky[0].unwrap()[0] - 10.0).abs() < 1e-12);
//! ```

use std::ffi::{CStr, c_char, c_int};
use std::fmt;

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_docs,
    clippy::all
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/wcslib.rs"));
}

/// Length of a FITS keyrecord.
pub const RECORD_LEN: usize = 80;

/// What went wrong, naming the header (e.g. `file.fits[0]`) and, where one is to blame, the
/// keyword.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum WcsError {
    /// A keyword is missing, malformed, or has a value WCSLIB refuses.
    #[error("{header}: WCS keyword {keyword}: {message}")]
    Keyword {
        /// The header.
        header: String,
        /// The keyword (or keywords, e.g. `CTYPE1/CTYPE2`).
        keyword: String,
        /// Why.
        message: String,
    },
    /// The header text itself is not a sequence of 80-character ASCII keyrecords.
    #[error("{header}: not a FITS header: {message}")]
    Text {
        /// The header.
        header: String,
        /// Why.
        message: String,
    },
    /// A transform failed for a reason other than an individual point being out of range.
    #[error("{header}: WCS transform failed: {message}")]
    Transform {
        /// The header.
        header: String,
        /// WCSLIB's message.
        message: String,
    },
}

/// The WCSLIB status codes that name a header problem (wcs.h, `wcs_errmsg_enum`).
const SINGULAR_MTX: c_int = 3;
const BAD_CTYPE: c_int = 4;
const BAD_PARAM: c_int = 5;
const BAD_COORD_TRANS: c_int = 6;
const ILL_COORD_TRANS: c_int = 7;
/// Some pixel coordinates were invalid (per-point status set).
const BAD_PIX: c_int = 8;
/// Some world coordinates were invalid (per-point status set).
const BAD_WORLD: c_int = 9;

/// The keyword(s) a `wcsset` status points at.
fn keyword_of_status(status: c_int) -> &'static str {
    match status {
        SINGULAR_MTX => "CDi_j/PCi_j",
        BAD_CTYPE => "CTYPE1/CTYPE2",
        BAD_PARAM => "PVi_m",
        BAD_COORD_TRANS | ILL_COORD_TRANS => "CTYPE1/CTYPE2/LONPOLE/LATPOLE",
        _ => "WCS",
    }
}

fn enable_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: sets a global flag once; no other state is touched.
    ONCE.call_once(|| unsafe {
        ffi::wcserr_enable(1);
    });
}

/// The keyword of an 80-character keyrecord (columns 1–8, trimmed).
fn record_key(record: &str) -> &str {
    record.get(..8).unwrap_or(record).trim_end()
}

/// The value text of a keyrecord with a value indicator (`= ` in columns 9–10).
fn record_value(record: &str) -> Option<&str> {
    if record.get(8..10) != Some("= ") {
        return None;
    }
    let v = &record[10..];
    let v = if let Some(rest) = v.trim_start().strip_prefix('\'') {
        rest.split('\'').next().unwrap_or("")
    } else {
        v.split('/').next().unwrap_or("")
    };
    Some(v.trim())
}

/// Whether `key` is a SIP keyword (`A_ORDER`, `B_ORDER`, `A_p_q`, `B_p_q`, `AP_p_q`, `BP_p_q`).
fn is_sip_key(key: &str) -> bool {
    ["A_", "B_", "AP_", "BP_"].iter().any(|p| {
        key.strip_prefix(p).is_some_and(|rest| {
            rest == "ORDER"
                || rest
                    .split_once('_')
                    .is_some_and(|(i, j)| i.parse::<u32>().is_ok() && j.parse::<u32>().is_ok())
        })
    })
}

/// One parsed WCS (the primary, alternate `' '`), set up and ready to evaluate.
///
/// Not `Sync`: WCSLIB evaluates distortions in scratch memory inside the struct, so one
/// `Wcs` must not be used from two threads at once. It may move between threads (`Send`).
pub struct Wcs {
    header: String,
    /// The array wcspih allocated, freed with wcsvfree.
    all: *mut ffi::wcsprm,
    nwcs: c_int,
    /// The primary WCS inside `all`.
    wcs: *mut ffi::wcsprm,
}

// SAFETY: the wcsprm structs are owned by this value alone and WCSLIB keeps no per-thread
// state for them; `Wcs` is not `Sync`, so they are never used from two threads at once.
unsafe impl Send for Wcs {}

impl fmt::Debug for Wcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wcs")
            .field("header", &self.header)
            .field("ctype", &self.ctypes())
            .finish()
    }
}

impl Drop for Wcs {
    fn drop(&mut self) {
        // SAFETY: `all`/`nwcs` are exactly what wcspih returned, freed once.
        unsafe {
            ffi::wcsvfree(&mut self.nwcs, &mut self.all);
        }
    }
}

impl Wcs {
    /// Parses the primary WCS of an image header: `text` is the header's keyrecords, 80
    /// characters each, concatenated (as CFITSIO's `fits_hdr2str` gives them; an `END`
    /// record and what follows it are ignored). `header` names it in errors (e.g. the file
    /// and HDU).
    pub fn from_header(header: &str, text: &str) -> Result<Self, WcsError> {
        enable_messages();
        let name = header.to_string();
        let text_err = |message: String| WcsError::Text {
            header: name.clone(),
            message,
        };
        if !text.is_ascii() || text.bytes().any(|b| !(0x20..=0x7e).contains(&b)) {
            return Err(text_err(
                "characters outside printable ASCII (0x20–0x7e)".into(),
            ));
        }
        if !text.len().is_multiple_of(RECORD_LEN) {
            return Err(text_err(format!(
                "length {} is not a multiple of {RECORD_LEN}",
                text.len()
            )));
        }
        let records: Vec<&str> = text
            .as_bytes()
            .chunks(RECORD_LEN)
            .map(|c| std::str::from_utf8(c).expect("checked ASCII"))
            .take_while(|r| record_key(r) != "END")
            .collect();
        let keyword_err = |keyword: &str, message: String| WcsError::Keyword {
            header: name.clone(),
            keyword: keyword.to_string(),
            message,
        };
        let ctype = |axis: &str| {
            records
                .iter()
                .find(|r| record_key(r) == axis)
                .and_then(|r| record_value(r))
                .unwrap_or("")
        };
        if let Some(sip) = records.iter().find(|r| is_sip_key(record_key(r))) {
            for axis in ["CTYPE1", "CTYPE2"] {
                if !ctype(axis).ends_with("-SIP") {
                    return Err(keyword_err(
                        axis,
                        format!(
                            "'{}' has no '-SIP' suffix but the header has SIP keyword {}: \
                             ambiguous (tools differ on whether to apply it); add the suffix \
                             or remove the SIP keywords",
                            ctype(axis),
                            record_key(sip)
                        ),
                    ));
                }
            }
        }
        // WCSLIB gives missing keywords defaults (CRVAL 0, CRPIX 0, CDELT 1): for the keywords
        // that fix where the image is and its scale, a default is a broken header, not a WCS.
        let has = |key: &str| records.iter().any(|r| record_key(r) == key);
        if has("CTYPE1") || has("CTYPE2") {
            for axis in 1..=2 {
                for key in [format!("CRPIX{axis}"), format!("CRVAL{axis}")] {
                    if !has(&key) {
                        return Err(keyword_err(&key, "missing".into()));
                    }
                }
                let scale = [
                    format!("CDELT{axis}"),
                    format!("CD{axis}_1"),
                    format!("CD{axis}_2"),
                ];
                if !scale.iter().any(|k| has(k)) {
                    return Err(keyword_err(
                        &format!("CDELT{axis}"),
                        format!("missing (and no CD{axis}_j): the pixel scale is not given"),
                    ));
                }
            }
        }
        let (all, nwcs, nreject) = parse(&records)?;
        let mut owned = Self {
            header: name.clone(),
            all,
            nwcs,
            wcs: std::ptr::null_mut(),
        };
        if nreject > 0 {
            // Find the keyrecord WCSLIB refuses: the one whose removal lowers the count.
            for skip in 0..records.len() {
                let rest: Vec<&str> = records
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| (i != skip).then_some(*r))
                    .collect();
                if let Ok((mut one, mut n, rejected)) = parse(&rest) {
                    // SAFETY: freeing what wcspih just returned.
                    unsafe { ffi::wcsvfree(&mut n, &mut one) };
                    if rejected < nreject {
                        let r = records[skip];
                        return Err(keyword_err(
                            record_key(r),
                            format!("WCSLIB refuses the keyrecord \"{}\"", r.trim_end()),
                        ));
                    }
                }
            }
            return Err(keyword_err(
                "WCS",
                format!("WCSLIB refuses {nreject} WCS keyrecord(s)"),
            ));
        }
        // SAFETY: `all` points to `nwcs` structs allocated by wcspih.
        let primary = (0..nwcs as usize)
            .map(|i| unsafe { all.add(i) })
            .find(|w| unsafe { (**w).alt[0] } as u8 == b' ');
        let Some(primary) = primary else {
            return Err(keyword_err(
                "CTYPE1/CTYPE2",
                "no primary WCS keywords (CTYPEi, CRVALi, CRPIXi, …)".into(),
            ));
        };
        owned.wcs = primary;
        // SAFETY: `primary` is a valid, initialised wcsprm owned by `owned`.
        let status = unsafe { ffi::wcsset(primary) };
        if status != 0 {
            return Err(keyword_err(
                keyword_of_status(status),
                format!("WCSLIB refuses it: {}", owned.message(status)),
            ));
        }
        // SAFETY: as above; the struct is set up.
        let (naxis, lng, lat) = unsafe { ((*primary).naxis, (*primary).lng, (*primary).lat) };
        let ctypes = owned.ctypes();
        if naxis != 2 || lng < 0 || lat < 0 {
            return Err(keyword_err(
                "CTYPE1/CTYPE2",
                format!(
                    "not a 2-axis celestial image WCS ({naxis} axes, CTYPE {ctypes:?}); \
                     expected e.g. 'RA---TAN'/'DEC--TAN'"
                ),
            ));
        }
        Ok(owned)
    }

    /// The header's name as given to [`Wcs::from_header`].
    pub fn header_name(&self) -> &str {
        &self.header
    }

    /// `CTYPEi` of the axes, as WCSLIB holds them after translation: a SIP header keeps its
    /// `-SIP` suffix, a TPV header reads `'RA---TAN'` (TPV is held as TAN with a distortion).
    pub fn ctypes(&self) -> Vec<String> {
        if self.wcs.is_null() {
            return Vec::new();
        }
        // SAFETY: `wcs` is a valid wcsprm; ctype has naxis NUL-terminated entries.
        unsafe {
            let w = &*self.wcs;
            (0..w.naxis.max(0) as usize)
                .map(|i| {
                    CStr::from_ptr((*w.ctype.add(i)).as_ptr())
                        .to_string_lossy()
                        .trim_end()
                        .to_string()
                })
                .collect()
        }
    }

    /// WCSLIB's message for the last error, or the status number.
    fn message(&self, status: c_int) -> String {
        // SAFETY: `wcs` is valid; `err` is null or a wcserr with a NUL-terminated message.
        unsafe {
            let err = (*self.wcs).err;
            if err.is_null() || (*err).msg.is_null() {
                format!("status {status}")
            } else {
                CStr::from_ptr((*err).msg).to_string_lossy().into_owned()
            }
        }
    }

    /// Sky positions `[lon, lat]` (degrees, lon in [0, 360)) of 1-based pixels `[x, y]`;
    /// `None` where a pixel has no sky position (e.g. beyond a projection's boundary).
    pub fn pixel_to_sky(&self, pixels: &[[f64; 2]]) -> Result<Vec<Option<[f64; 2]>>, WcsError> {
        let n = pixels.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let ncoord = self.count(n)?;
        let pixcrd: Vec<f64> = pixels.iter().flatten().copied().collect();
        let (mut imgcrd, mut world) = (vec![0.0; 2 * n], vec![0.0; 2 * n]);
        let (mut phi, mut theta, mut stat) = (vec![0.0; n], vec![0.0; n], vec![0 as c_int; n]);
        // SAFETY: every array holds ncoord × nelem (= 2) doubles, or ncoord values.
        let status = unsafe {
            ffi::wcsp2s(
                self.wcs,
                ncoord,
                2,
                pixcrd.as_ptr(),
                imgcrd.as_mut_ptr(),
                phi.as_mut_ptr(),
                theta.as_mut_ptr(),
                world.as_mut_ptr(),
                stat.as_mut_ptr(),
            )
        };
        if status != 0 && status != BAD_PIX {
            return Err(self.transform_err(status));
        }
        let (lng, lat) = self.lng_lat();
        Ok((0..n)
            .map(|i| {
                let w = &world[2 * i..2 * i + 2];
                (stat[i] == 0).then(|| [w[lng].rem_euclid(360.0), w[lat]])
            })
            .collect())
    }

    /// 1-based pixels `[x, y]` of sky positions `[lon, lat]` (degrees); `None` where a
    /// position has no pixel (e.g. the far hemisphere of TAN).
    pub fn sky_to_pixel(&self, sky: &[[f64; 2]]) -> Result<Vec<Option<[f64; 2]>>, WcsError> {
        let n = sky.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let ncoord = self.count(n)?;
        let (lng, lat) = self.lng_lat();
        let mut world = vec![0.0; 2 * n];
        for (i, s) in sky.iter().enumerate() {
            world[2 * i + lng] = s[0];
            world[2 * i + lat] = s[1];
        }
        let (mut imgcrd, mut pixcrd) = (vec![0.0; 2 * n], vec![0.0; 2 * n]);
        let (mut phi, mut theta, mut stat) = (vec![0.0; n], vec![0.0; n], vec![0 as c_int; n]);
        // SAFETY: every array holds ncoord × nelem (= 2) doubles, or ncoord values.
        let status = unsafe {
            ffi::wcss2p(
                self.wcs,
                ncoord,
                2,
                world.as_ptr(),
                phi.as_mut_ptr(),
                theta.as_mut_ptr(),
                imgcrd.as_mut_ptr(),
                pixcrd.as_mut_ptr(),
                stat.as_mut_ptr(),
            )
        };
        if status != 0 && status != BAD_WORLD {
            return Err(self.transform_err(status));
        }
        Ok((0..n)
            .map(|i| (stat[i] == 0).then(|| [pixcrd[2 * i], pixcrd[2 * i + 1]]))
            .collect())
    }

    /// The WCS as FITS keyrecords (80 characters each, no `END`), written by WCSLIB's
    /// `wcshdo` at full double precision; SIP and TPV are written in their native form.
    pub fn to_records(&self) -> Result<Vec<String>, WcsError> {
        let mut nkeyrec: c_int = 0;
        let mut text: *mut c_char = std::ptr::null_mut();
        // SAFETY: wcshdo allocates `text` (nkeyrec × 80 chars, NUL-terminated), freed below.
        let status =
            unsafe { ffi::wcshdo(ffi::WCSHDO_P17 as c_int, self.wcs, &mut nkeyrec, &mut text) };
        if status != 0 {
            if !text.is_null() {
                // SAFETY: allocated by wcshdo.
                unsafe { ffi::wcsdealloc(text.cast()) };
            }
            return Err(self.transform_err(status));
        }
        // SAFETY: `text` holds nkeyrec × 80 bytes.
        let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), nkeyrec as usize * 80) };
        let records = bytes
            .chunks(RECORD_LEN)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        // SAFETY: allocated by wcshdo, freed once.
        unsafe { ffi::wcsdealloc(text.cast()) };
        Ok(records)
    }

    fn count(&self, n: usize) -> Result<c_int, WcsError> {
        c_int::try_from(n).map_err(|_| WcsError::Transform {
            header: self.header.clone(),
            message: format!("{n} points in one call (at most {})", c_int::MAX),
        })
    }

    fn lng_lat(&self) -> (usize, usize) {
        // SAFETY: set up in from_header, which checked both are 0 or 1.
        unsafe { ((*self.wcs).lng as usize, (*self.wcs).lat as usize) }
    }

    fn transform_err(&self, status: c_int) -> WcsError {
        WcsError::Transform {
            header: self.header.clone(),
            message: self.message(status),
        }
    }
}

/// Runs wcspih on `records`; returns the allocated array, its length and the number of
/// rejected keyrecords.
fn parse(records: &[&str]) -> Result<(*mut ffi::wcsprm, c_int, c_int), WcsError> {
    let mut buf: Vec<u8> = records.iter().flat_map(|r| r.bytes()).collect();
    buf.push(0);
    let nkeyrec = c_int::try_from(records.len()).map_err(|_| WcsError::Text {
        header: String::new(),
        message: "too many keyrecords".into(),
    })?;
    let (mut nreject, mut nwcs): (c_int, c_int) = (0, 0);
    let mut wcs: *mut ffi::wcsprm = std::ptr::null_mut();
    // SAFETY: `buf` holds nkeyrec × 80 bytes (plus a NUL); ctrl = 0 leaves it unchanged.
    let status = unsafe {
        ffi::wcspih(
            buf.as_mut_ptr().cast(),
            nkeyrec,
            ffi::WCSHDR_all as c_int,
            0,
            &mut nreject,
            &mut nwcs,
            &mut wcs,
        )
    };
    if status != 0 {
        return Err(WcsError::Text {
            header: String::new(),
            message: format!("WCSLIB's header parser failed (status {status})"),
        });
    }
    Ok((wcs, nwcs, nreject))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(k: &str, v: &str) -> String {
        format!("{:<80}", format!("{k:<8}= {v:>20}"))
    }

    fn tan(extra: &[String]) -> String {
        let mut h = vec![
            card("CTYPE1", "'RA---TAN'"),
            card("CTYPE2", "'DEC--TAN'"),
            card("CRPIX1", "100.0"),
            card("CRPIX2", "200.0"),
            card("CRVAL1", "10.0"),
            card("CRVAL2", "20.0"),
            card("CD1_1", "-1.0E-4"),
            card("CD2_2", "1.0E-4"),
        ];
        h.extend_from_slice(extra);
        h.concat()
    }

    #[test]
    fn known_value_from_astropy() {
        // astropy 5.2.1 (Debian 12): CRPIX (100, 200), CRVAL (10, 20),
        // CD = [[-1e-4, 0], [0, 1e-4]]: all_pix2world(600, 900, 1) = (9.946767456, 20.069991994).
        let w = Wcs::from_header("t", &tan(&[])).unwrap();
        let s = w.pixel_to_sky(&[[600.0, 900.0]]).unwrap()[0].unwrap();
        assert!((s[0] - 9.946_767_456).abs() < 1e-8, "{s:?}");
        assert!((s[1] - 20.069_991_994).abs() < 1e-8, "{s:?}");
        let p = w.sky_to_pixel(&[s]).unwrap()[0].unwrap();
        assert!((p[0] - 600.0).abs() < 1e-8 && (p[1] - 900.0).abs() < 1e-8);
    }

    #[test]
    fn far_hemisphere_has_no_pixel() {
        let w = Wcs::from_header("t", &tan(&[])).unwrap();
        assert_eq!(w.sky_to_pixel(&[[190.0, -20.0]]).unwrap(), vec![None]);
    }

    #[test]
    fn malformed_value_names_the_keyword() {
        let h = tan(&[card("CRPIX1", "'abc'")]);
        let e = Wcs::from_header("f.fits[0]", &h).unwrap_err();
        match &e {
            WcsError::Keyword {
                header, keyword, ..
            } => assert_eq!((header.as_str(), keyword.as_str()), ("f.fits[0]", "CRPIX1")),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn singular_matrix_and_unknown_projection_are_refused() {
        let h = tan(&[card("CD1_1", "0.0"), card("CD2_2", "0.0")]);
        let e = Wcs::from_header("f", &h).unwrap_err().to_string();
        assert!(e.contains("CDi_j/PCi_j"), "{e}");
        let h = tan(&[card("CTYPE1", "'RA---XYZ'"), card("CTYPE2", "'DEC--XYZ'")]);
        let e = Wcs::from_header("f", &h).unwrap_err().to_string();
        assert!(e.contains("CTYPE1"), "{e}");
    }

    #[test]
    fn missing_reference_or_scale_is_refused_not_defaulted() {
        let h: String = tan(&[])
            .as_bytes()
            .chunks(RECORD_LEN)
            .map(|r| std::str::from_utf8(r).unwrap())
            .filter(|r| record_key(r) != "CRVAL1")
            .collect();
        let e = Wcs::from_header("f", &h).unwrap_err().to_string();
        assert!(e.contains("CRVAL1") && e.contains("missing"), "{e}");
        let h: String = tan(&[])
            .as_bytes()
            .chunks(RECORD_LEN)
            .map(|r| std::str::from_utf8(r).unwrap())
            .filter(|r| record_key(r) != "CD2_2")
            .collect();
        let e = Wcs::from_header("f", &h).unwrap_err().to_string();
        assert!(e.contains("CDELT2"), "{e}");
    }

    #[test]
    fn sip_without_suffix_is_ambiguous_and_refused() {
        let h = tan(&[card("A_ORDER", "2"), card("A_2_0", "1.0E-6")]);
        let e = Wcs::from_header("f", &h).unwrap_err().to_string();
        assert!(e.contains("CTYPE1") && e.contains("A_ORDER"), "{e}");
    }

    #[test]
    fn missing_wcs_and_linear_axes_are_refused() {
        let e = Wcs::from_header("f", &card("EXPTIME", "30.0")).unwrap_err();
        assert!(e.to_string().contains("CTYPE1"), "{e}");
        let h: String = tan(&[card("CTYPE1", "'X'"), card("CTYPE2", "'Y'")]);
        let e = Wcs::from_header("f", &h).unwrap_err();
        assert!(e.to_string().contains("celestial"), "{e}");
    }

    #[test]
    fn text_that_is_not_a_header_is_refused() {
        assert!(matches!(
            Wcs::from_header("f", "CTYPE1"),
            Err(WcsError::Text { .. })
        ));
    }
}
