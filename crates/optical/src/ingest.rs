//! Ingest: the raw CCDs of a CCD list enter the registry with the sky regions their raw
//! headers predict, before any of them is processed (`skypipe-ingest`).
//!
//! Later stages (mosaic, coadd) plan from the registry. In a chain run every stage is planned
//! before any unit runs, so the CCDs single-frame processing is about to produce are not in the
//! registry yet: their ingested regions (grown by a margin for the header WCS's error) stand in
//! for them ([`skypipe_registry::Registry::planning_ccds_overlapping`]). Ingest reads only each
//! raw file's primary header (keywords and WCS), never its pixels.

use crate::singleframe::{CcdError, CcdInput};
use crate::wcs::read_primary_wcs;
use rayon::prelude::*;
use skypipe_io::fits::{FitsReader, Hdu};
use skypipe_registry::{RawCcdRecord, Registry, RegistryError, SkyPoint};
use std::path::{Path, PathBuf};

/// A raw CCD that could not be ingested, with the reason (naming the file).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestFailure {
    /// Visit.
    pub visit: u64,
    /// CCD.
    pub ccd: u32,
    /// What went wrong, naming the file and the keyword where one is to blame.
    pub message: String,
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSummary {
    /// CCDs recorded in the registry.
    pub ingested: usize,
    /// CCDs refused, each with its reason; the others were recorded.
    pub failed: Vec<IngestFailure>,
}

/// The registry record of one raw CCD: the band of the CCD list (it wins over the header's, as
/// in single-frame processing) and the outer corners of its `NAXIS1` × `NAXIS2` pixels through
/// the primary header's WCS.
pub fn raw_record(c: &CcdInput) -> Result<RawCcdRecord, CcdError> {
    let path = &c.raw;
    let header = |message: String| CcdError::Header {
        path: path.clone(),
        message,
    };
    let mut reader = FitsReader::open(path)?;
    let mut size = |key: &str| -> Result<f64, CcdError> {
        let n = reader.key_i64(Hdu::Primary, key)?;
        if n <= 0 {
            return Err(header(format!(
                "{key} = {n}, expected a positive image size"
            )));
        }
        Ok(n as f64)
    };
    let (w, h) = (size("NAXIS1")?, size("NAXIS2")?);
    let wcs = read_primary_wcs(path)?;
    let pixels = [
        [0.5, 0.5],
        [w + 0.5, 0.5],
        [w + 0.5, h + 0.5],
        [0.5, h + 0.5],
    ];
    let sky = wcs.pixel_to_sky(&pixels)?;
    let mut corners = Vec::with_capacity(4);
    for (k, s) in sky.iter().enumerate() {
        let [ra, dec] = s.ok_or_else(|| {
            header(format!(
                "corner {k} of the image has no sky position through its WCS"
            ))
        })?;
        corners.push(SkyPoint::new(ra, dec).map_err(|e| header(format!("corner {k}: {e}")))?);
    }
    Ok(RawCcdRecord {
        visit: c.visit,
        ccd: c.ccd,
        band: c.band.clone(),
        corners: [corners[0], corners[1], corners[2], corners[3]],
        raw_path: c.raw.clone(),
    })
}

/// Ingests every CCD of `ccds` into the registry at `registry` (created if absent), reading
/// headers on `threads` threads. A CCD whose header cannot be read or placed is reported and
/// left out; the others are recorded in one transaction. The error is the registry's own
/// (cannot open or write it).
pub fn ingest(
    ccds: &[CcdInput],
    registry: &Path,
    threads: usize,
) -> Result<IngestSummary, RegistryError> {
    let read = |c: &CcdInput| raw_record(c).map_err(|e| (c.visit, c.ccd, e.to_string()));
    let results: Vec<Result<RawCcdRecord, (u64, u32, String)>> =
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
        {
            Ok(pool) => pool.install(|| ccds.par_iter().map(read).collect()),
            Err(_) => ccds.iter().map(read).collect(),
        };
    let mut records = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(rec) => records.push(rec),
            Err((visit, ccd, message)) => failed.push(IngestFailure {
                visit,
                ccd,
                message,
            }),
        }
    }
    let mut reg = Registry::open(registry)?;
    // A record the registry refuses (e.g. corners that are not a convex quadrilateral) is a
    // failure of that CCD alone: validate each before the one batch.
    records.retain(|rec| match rec.validate() {
        Ok(_) => true,
        Err(e) => {
            failed.push(IngestFailure {
                visit: rec.visit,
                ccd: rec.ccd,
                message: format!("{}: {e}", rec.raw_path.display()),
            });
            false
        }
    });
    reg.insert_raw_ccds(&records)?;
    failed.sort_by_key(|f| (f.visit, f.ccd));
    Ok(IngestSummary {
        ingested: records.len(),
        failed,
    })
}

/// The registry path of a single-frame configuration: `[singleframe] registry`, else
/// `RUN_DIR/registry.sqlite3` — the same rule the stage follows.
pub fn default_registry(configured: Option<&Path>, run_dir: &Path) -> PathBuf {
    configured.map_or_else(|| run_dir.join("registry.sqlite3"), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Size, write_data_set};
    use crate::singleframe::Singleframe;
    use skypipe_registry::{ConvexPolygon, PlanningCcd};

    /// The tiny simulated data set ingests whole; each CCD's region holds its centre's true
    /// position; a corrupt header is reported by file while the rest is recorded.
    #[test]
    fn ingest_records_header_regions_and_reports_bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_data_set(dir.path(), Size::Tiny, 3).unwrap();
        let mut ccds = Singleframe::read_list(&dir.path().join("units.json")).unwrap();
        assert_eq!(ccds.len(), n);
        // Break one raw file's WCS (CTYPE1 of a projection WCSLIB does not know).
        let broken = ccds[1].clone();
        let bytes = std::fs::read(&broken.raw).unwrap();
        let text = String::from_utf8_lossy(&bytes[..2880 * 4]).into_owned();
        let at = text.find("CTYPE1  = 'RA---TAN'").unwrap();
        let mut bad = bytes.clone();
        bad[at..at + 20].copy_from_slice(b"CTYPE1  = 'RA---XYZ'");
        let bad_path = dir.path().join("broken.fits");
        std::fs::write(&bad_path, bad).unwrap();
        ccds[1].raw = bad_path.clone();

        let registry = dir.path().join("registry.sqlite3");
        let summary = ingest(&ccds, &registry, 2).unwrap();
        assert_eq!(summary.ingested, n - 1);
        assert_eq!(summary.failed.len(), 1);
        assert_eq!(
            (summary.failed[0].visit, summary.failed[0].ccd),
            (broken.visit, broken.ccd)
        );
        assert!(
            summary.failed[0].message.contains("broken.fits"),
            "{}",
            summary.failed[0].message
        );
        let reg = Registry::open_read_only(&registry).unwrap();
        assert_eq!(reg.raw_count().unwrap(), (n - 1) as u64);
        // Each recorded CCD is found by a tiny region at its own header centre.
        for c in ccds.iter().filter(|c| c.raw != bad_path) {
            let wcs = read_primary_wcs(&c.raw).unwrap();
            let w = FitsReader::open(&c.raw)
                .unwrap()
                .key_i64(Hdu::Primary, "NAXIS1")
                .unwrap();
            let h = FitsReader::open(&c.raw)
                .unwrap()
                .key_i64(Hdu::Primary, "NAXIS2")
                .unwrap();
            let [ra, dec] = wcs
                .pixel_to_sky(&[[w as f64 / 2.0, h as f64 / 2.0]])
                .unwrap()[0]
                .unwrap();
            let d = 1e-4;
            let probe = ConvexPolygon::from_radec(&[
                (ra - d, dec - d),
                (ra + d, dec - d),
                (ra + d, dec + d),
                (ra - d, dec + d),
            ])
            .unwrap();
            let hits = reg
                .planning_ccds_overlapping(&probe, Some(&c.band), 0.0)
                .unwrap();
            assert!(
                hits.iter().any(
                    |p| matches!(p, PlanningCcd::Raw(r) if (r.visit, r.ccd) == (c.visit, c.ccd))
                ),
                "visit={},ccd={} not found at its centre",
                c.visit,
                c.ccd
            );
        }
        // Ingesting again replaces the rows.
        ingest(&ccds, &registry, 1).unwrap();
        assert_eq!(reg.raw_count().unwrap(), (n - 1) as u64);
    }
}
