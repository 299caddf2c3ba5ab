//! Raw exposures known before processing (schema version 3): each CCD's region predicted from
//! its raw header, so that later stages can plan their units while single-frame processing of
//! the same CCDs is still to come (a chain run plans every stage before any unit runs).
//!
//! `skypipe-ingest` writes these rows from the raw headers; `skypipe-singleframe` later records
//! the processed CCD in the `ccd` table, whose region (fitted WCS once calibrated) then takes
//! precedence. A planning query returns, per (visit, ccd), the processed row when there is one,
//! else the raw row if its region comes within a margin of the query region: the margin absorbs
//! the error of a raw header's WCS (tens of arcseconds for a real telescope's pointing).

use crate::registry::{CcdRecord, RecordError, Registry, RegistryError, sqlite};
use crate::sphere::{ConvexPolygon, GeometryError, SkyPoint, Vec3};
use rusqlite::{TransactionBehavior, params};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// What version 3 adds to version 2 (also the migration): raw CCDs with their header regions
/// and an R*Tree over the regions' bounding boxes (`raw_box.id` is `raw_ccd.id`).
pub(crate) const SCHEMA_V3: &str = "
CREATE TABLE raw_ccd (
    id       INTEGER PRIMARY KEY,
    visit    INTEGER NOT NULL CHECK (visit >= 0),
    ccd      INTEGER NOT NULL CHECK (ccd >= 0),
    band     TEXT    NOT NULL,
    ra0 REAL NOT NULL, dec0 REAL NOT NULL,
    ra1 REAL NOT NULL, dec1 REAL NOT NULL,
    ra2 REAL NOT NULL, dec2 REAL NOT NULL,
    ra3 REAL NOT NULL, dec3 REAL NOT NULL,
    raw_path TEXT    NOT NULL,
    UNIQUE (visit, ccd)
);
CREATE VIRTUAL TABLE raw_box USING rtree (id, min_x, max_x, min_y, max_y, min_z, max_z);
";

/// A raw CCD exposure as ingested: its identity, band, and the region its raw header's WCS
/// predicts.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCcdRecord {
    /// Visit (exposure) number.
    pub visit: u64,
    /// CCD number.
    pub ccd: u32,
    /// Filter band.
    pub band: String,
    /// Corners (outer pixel edges) in pixel order, from the raw header's WCS.
    pub corners: [SkyPoint; 4],
    /// The raw file.
    pub raw_path: PathBuf,
}

impl RawCcdRecord {
    /// Checks every field and returns the corners as a polygon.
    pub fn validate(&self) -> Result<ConvexPolygon, RecordError> {
        if self.band.is_empty() {
            return Err(RecordError::EmptyBand);
        }
        if i64::try_from(self.visit).is_err() {
            return Err(RecordError::VisitTooLarge(self.visit));
        }
        if self.raw_path.as_os_str().is_empty() || self.raw_path.to_str().is_none() {
            return Err(RecordError::BadPath {
                field: "raw",
                path: self.raw_path.clone(),
            });
        }
        Ok(ConvexPolygon::new(&self.corners)?)
    }
}

/// A CCD a later stage can plan a unit for.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanningCcd {
    /// Processed by single-frame processing: its recorded (fitted, once calibrated) region
    /// overlaps the query region.
    Processed(CcdRecord),
    /// Only ingested: its predicted region comes within the margin of the query region.
    Raw(RawCcdRecord),
}

impl PlanningCcd {
    /// Visit and CCD numbers.
    pub fn key(&self) -> (u64, u32) {
        match self {
            PlanningCcd::Processed(r) => (r.visit, r.ccd),
            PlanningCcd::Raw(r) => (r.visit, r.ccd),
        }
    }

    /// Filter band.
    pub fn band(&self) -> &str {
        match self {
            PlanningCcd::Processed(r) => &r.band,
            PlanningCcd::Raw(r) => &r.band,
        }
    }
}

/// Columns of a raw row, in the order [`Registry::raw_from_row`] reads them.
const RAW_COLUMNS: &str = "r.visit, r.ccd, r.band, r.ra0, r.dec0, r.ra1, r.dec1, r.ra2, r.dec2, \
     r.ra3, r.dec3, r.raw_path";

impl Registry {
    /// Records raw CCDs in one transaction, replacing any earlier row of the same (visit, ccd)
    /// (re-ingesting is harmless). Every record is validated first; if one is invalid, nothing
    /// is written.
    pub fn insert_raw_ccds(&mut self, records: &[RawCcdRecord]) -> Result<(), RegistryError> {
        let boxes = records
            .iter()
            .map(|r| {
                r.validate()
                    .map(|poly| poly.bounding_box())
                    .map_err(|source| RegistryError::InvalidRecord {
                        path: self.path.clone(),
                        visit: r.visit,
                        ccd: r.ccd,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO raw_ccd (visit, ccd, band, ra0, dec0, ra1, dec1, ra2, dec2,
                                          ra3, dec3, raw_path)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (visit, ccd) DO UPDATE SET
                         band = excluded.band,
                         ra0 = excluded.ra0, dec0 = excluded.dec0,
                         ra1 = excluded.ra1, dec1 = excluded.dec1,
                         ra2 = excluded.ra2, dec2 = excluded.dec2,
                         ra3 = excluded.ra3, dec3 = excluded.dec3,
                         raw_path = excluded.raw_path
                     RETURNING id",
                )
                .map_err(sqlite(&path))?;
            let mut put_box = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO raw_box (id, min_x, max_x, min_y, max_y, min_z, max_z)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sqlite(&path))?;
            for (r, bb) in records.iter().zip(&boxes) {
                let c = &r.corners;
                let id: i64 = upsert
                    .query_row(
                        params![
                            r.visit as i64, // checked by validate()
                            r.ccd,
                            r.band,
                            c[0].ra(),
                            c[0].dec(),
                            c[1].ra(),
                            c[1].dec(),
                            c[2].ra(),
                            c[2].dec(),
                            c[3].ra(),
                            c[3].dec(),
                            r.raw_path.to_str(),
                        ],
                        |row| row.get(0),
                    )
                    .map_err(sqlite(&path))?;
                put_box
                    .execute(params![
                        id, bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2]
                    ])
                    .map_err(sqlite(&path))?;
            }
        }
        tx.commit().map_err(sqlite(&path))
    }

    /// Number of raw CCDs ingested.
    pub fn raw_count(&self) -> Result<u64, RegistryError> {
        self.conn
            .query_row("SELECT count(*) FROM raw_ccd", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Every raw CCD ingested, ordered by (visit, ccd).
    pub fn raw_ccds(&self) -> Result<Vec<RawCcdRecord>, RegistryError> {
        let sql = format!("SELECT {RAW_COLUMNS} FROM raw_ccd AS r ORDER BY r.visit, r.ccd");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            out.push(self.raw_from_row(row)?);
        }
        Ok(out)
    }

    /// Every raw CCD whose predicted region intersects `region` (touching counts), ordered by
    /// (visit, ccd), optionally in one band: R*Tree prefilter, then the exact polygon test.
    pub fn raw_ccds_overlapping(
        &self,
        region: &ConvexPolygon,
        band: Option<&str>,
    ) -> Result<Vec<RawCcdRecord>, RegistryError> {
        let bb = region.bounding_box();
        let sql = format!(
            "SELECT {RAW_COLUMNS} FROM raw_box AS b CROSS JOIN raw_ccd AS r ON r.id = b.id
             WHERE b.max_x >= ?1 AND b.min_x <= ?2 AND b.max_y >= ?3 AND b.min_y <= ?4
               AND b.max_z >= ?5 AND b.min_z <= ?6 AND (?7 IS NULL OR r.band = ?7)"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let mut rows = stmt
            .query(params![
                bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2], band
            ])
            .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            let rec = self.raw_from_row(row)?;
            let poly = ConvexPolygon::new(&rec.corners).map_err(|e| self.corrupt_raw(&rec, e))?;
            if poly.intersects(region) {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| (r.visit, r.ccd));
        Ok(out)
    }

    /// Planning query for a stage that may run before single-frame processing has finished
    /// (a chain run): every CCD, optionally of one band, that overlaps `region` — processed
    /// CCDs by their recorded region, CCDs only ingested by their predicted region grown by
    /// `margin_arcsec` (so a raw header's pointing error cannot drop an input). Ordered by
    /// (visit, ccd); a CCD appears once, processed if it is.
    pub fn planning_ccds_overlapping(
        &self,
        region: &ConvexPolygon,
        band: Option<&str>,
        margin_arcsec: f64,
    ) -> Result<Vec<PlanningCcd>, RegistryError> {
        let processed = match band {
            Some(b) => self.overlapping_in_band(region, b)?,
            None => self.overlapping(region)?,
        };
        // Processed CCDs anywhere (not only near the region) shadow their raw rows: a CCD whose
        // fitted region moved away from the query is not an input.
        let grown =
            grow(region, margin_arcsec / 3600.0).map_err(|e| RegistryError::InvalidRecord {
                path: self.path.clone(),
                visit: 0,
                ccd: 0,
                source: RecordError::Corners(e),
            })?;
        let raw = self.raw_ccds_overlapping(&grown, band)?;
        let mut seen: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut out: Vec<PlanningCcd> = Vec::with_capacity(processed.len() + raw.len());
        for p in processed {
            seen.insert((p.visit, p.ccd));
            out.push(PlanningCcd::Processed(p));
        }
        for r in raw {
            if seen.contains(&(r.visit, r.ccd)) || self.get(r.visit, r.ccd)?.is_some() {
                continue;
            }
            out.push(PlanningCcd::Raw(r));
        }
        out.sort_by_key(PlanningCcd::key);
        Ok(out)
    }

    fn raw_from_row(&self, row: &rusqlite::Row<'_>) -> Result<RawCcdRecord, RegistryError> {
        let e = self.err();
        let visit: i64 = row.get(0).map_err(&e)?;
        let ccd: i64 = row.get(1).map_err(&e)?;
        let corrupt = |reason: String| RegistryError::CorruptRow {
            path: self.path.clone(),
            visit,
            ccd,
            reason,
        };
        let mut corners = [SkyPoint::new(0.0, 0.0).expect("valid point"); 4];
        for (k, corner) in corners.iter_mut().enumerate() {
            let ra: f64 = row.get(3 + 2 * k).map_err(&e)?;
            let dec: f64 = row.get(4 + 2 * k).map_err(&e)?;
            *corner =
                SkyPoint::new(ra, dec).map_err(|err| corrupt(format!("corner {k}: {err}")))?;
        }
        Ok(RawCcdRecord {
            visit: u64::try_from(visit).map_err(|_| corrupt("negative visit".into()))?,
            ccd: u32::try_from(ccd).map_err(|_| corrupt("ccd out of range".into()))?,
            band: row.get(2).map_err(&e)?,
            corners,
            raw_path: PathBuf::from(row.get::<_, String>(11).map_err(&e)?),
        })
    }

    fn corrupt_raw(&self, rec: &RawCcdRecord, e: GeometryError) -> RegistryError {
        RegistryError::CorruptRow {
            path: self.path.clone(),
            visit: rec.visit as i64,
            ccd: i64::from(rec.ccd),
            reason: format!("raw corners: {e}"),
        }
    }
}

/// `region` grown by `margin_deg` on every side: every point within `margin_deg` of the
/// region lies inside the result (a slight over-estimate away from the region's centre).
///
/// Works in the gnomonic projection about the vertices' mean direction, where the edges are
/// straight lines: each edge is moved outward by `tan(margin)·sec²(r)` (r the largest angular
/// distance of the grown region from the centre; the gnomonic scale is at least 1 and at most
/// `sec²(r)`, so the shift is at least the margin on the sphere), and consecutive moved edges
/// are intersected. Regions more than 60° across are refused by the projection's error growth;
/// a CCD or a patch is far smaller.
pub fn grow(region: &ConvexPolygon, margin_deg: f64) -> Result<ConvexPolygon, GeometryError> {
    if margin_deg <= 0.0 {
        return Ok(region.clone());
    }
    let vs = region.unit_vectors();
    let sum = vs.iter().fold(Vec3::new(0.0, 0.0, 0.0), |a, &v| a + v);
    let c = sum.scale(1.0 / sum.norm());
    // An orthonormal basis (e1, e2) of the tangent plane at c.
    let helper = if c.z.abs() < 0.9 {
        Vec3::new(0.0, 0.0, 1.0)
    } else {
        Vec3::new(1.0, 0.0, 0.0)
    };
    let e1 = helper.cross(c);
    let e1 = e1.scale(1.0 / e1.norm());
    let e2 = c.cross(e1);
    let project = |v: Vec3| {
        let w = v.dot(c);
        (v.dot(e1) / w, v.dot(e2) / w)
    };
    let pts: Vec<(f64, f64)> = vs.iter().map(|&v| project(v)).collect();
    let n = pts.len();
    // Orientation: positive signed area means counter-clockwise in (e1, e2).
    let area: f64 = (0..n)
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    let ccw = area > 0.0;
    let m = margin_deg.to_radians();
    let r_max = vs
        .iter()
        .map(|v| v.dot(c).clamp(-1.0, 1.0).acos())
        .fold(0.0, f64::max)
        + 2.0 * m;
    let shift = m.tan() / r_max.cos().powi(2);
    // Each edge i (from vertex i to i+1) as a line: point + t·direction, moved outward.
    let lines: Vec<((f64, f64), (f64, f64))> = (0..n)
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let len = (dx * dx + dy * dy).sqrt();
            let (ox, oy) = if ccw {
                (dy / len, -dx / len)
            } else {
                (-dy / len, dx / len)
            };
            ((a.0 + ox * shift, a.1 + oy * shift), (dx, dy))
        })
        .collect();
    let mut grown = Vec::with_capacity(n);
    for i in 0..n {
        // Vertex i+1 is where moved edge i meets moved edge i+1.
        let (p, d) = lines[i];
        let (q, e) = lines[(i + 1) % n];
        let det = d.0 * e.1 - d.1 * e.0;
        let t = ((q.0 - p.0) * e.1 - (q.1 - p.1) * e.0) / det;
        let (x, y) = (p.0 + t * d.0, p.1 + t * d.1);
        let v = c + e1.scale(x) + e2.scale(y);
        // A direction in the tangent plane always has a sky position: `v` is never zero.
        grown.push(SkyPoint::from_vector(v).expect("non-zero vector"));
    }
    // Keep the original vertex order: vertex i+1 was produced at index i.
    grown.rotate_right(1);
    ConvexPolygon::new(&grown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::CcdStatus;

    fn raw(visit: u64, ccd: u32, ra: f64, dec: f64, band: &str) -> RawCcdRecord {
        let p = |a: f64, d: f64| SkyPoint::new(a.rem_euclid(360.0), d).unwrap();
        RawCcdRecord {
            visit,
            ccd,
            band: band.into(),
            corners: [
                p(ra, dec),
                p(ra + 0.1, dec),
                p(ra + 0.1, dec + 0.2),
                p(ra, dec + 0.2),
            ],
            raw_path: format!("raw/v{visit}/c{ccd}.fits").into(),
        }
    }

    fn processed(r: &RawCcdRecord, dra: f64) -> CcdRecord {
        let shift = |p: SkyPoint| SkyPoint::new((p.ra() + dra).rem_euclid(360.0), p.dec()).unwrap();
        CcdRecord {
            visit: r.visit,
            ccd: r.ccd,
            band: r.band.clone(),
            exposure_time: 30.0,
            psf_fwhm: 3.0,
            corners: r.corners.map(shift),
            calexp_path: "calexp.fits".into(),
            catalog_path: "src.fits".into(),
            calibration: None,
            status: CcdStatus::Processed,
        }
    }

    fn square(ra: f64, dec: f64, side: f64) -> ConvexPolygon {
        ConvexPolygon::from_radec(&[
            (ra, dec),
            ((ra + side).rem_euclid(360.0), dec),
            ((ra + side).rem_euclid(360.0), dec + side),
            (ra, dec + side),
        ])
        .unwrap()
    }

    /// Every point within the margin of the region is inside the grown region, and the grown
    /// region is not much larger (points at 1.5 margins outside the edge midpoints are out).
    #[test]
    fn grown_regions_hold_every_point_within_the_margin() {
        for (ra, dec) in [
            (10.0_f64, 0.0_f64),
            (359.95, -30.0),
            (120.0, 89.5),
            (200.0, -88.0),
        ] {
            let region = square(ra, dec, 0.2);
            let margin = 30.0 / 3600.0;
            let grown = grow(&region, margin).unwrap();
            let vs = region.unit_vectors();
            for i in 0..vs.len() {
                let (a, b) = (vs[i], vs[(i + 1) % vs.len()]);
                let normal = a.cross(b);
                let normal = normal.scale(1.0 / normal.norm());
                for k in 0..=10 {
                    let t = k as f64 / 10.0;
                    let on_edge = a.scale(1.0 - t) + b.scale(t);
                    let on_edge = on_edge.scale(1.0 / on_edge.norm());
                    // Step outward (away from the centre) by the margin and by 1.5 margins.
                    let centre_side = region.contains_vector(
                        (on_edge + normal.scale(1e-6))
                            .scale(1.0 / (on_edge + normal.scale(1e-6)).norm()),
                    );
                    let out_dir = if centre_side {
                        normal.scale(-1.0)
                    } else {
                        normal
                    };
                    let step = |ang: f64| {
                        let v = on_edge.scale(ang.cos()) + out_dir.scale(ang.sin());
                        v.scale(1.0 / v.norm())
                    };
                    let m = margin.to_radians();
                    assert!(
                        grown.contains_vector(step(0.999 * m)),
                        "({ra},{dec}) edge {i} t={t}"
                    );
                    if k == 5 {
                        assert!(
                            !grown.contains_vector(step(1.5 * m)),
                            "({ra},{dec}) edge {i}: grown too far"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn planning_returns_processed_rows_first_and_raw_rows_within_the_margin() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path().join("r.sqlite3")).unwrap();
        // Raw CCDs along RA across 0: at 359.8, 359.95 (straddles 0), 0.3 and 5.0.
        let raws = [
            raw(1, 0, 359.8, 0.0, "r"),
            raw(1, 1, 359.95, 0.0, "r"),
            raw(2, 0, 0.3, 0.0, "g"),
            raw(2, 1, 5.0, 0.0, "g"),
        ];
        reg.insert_raw_ccds(&raws).unwrap();
        assert_eq!(reg.raw_count().unwrap(), 4);
        assert_eq!(reg.raw_ccds().unwrap(), raws.to_vec());
        // The query region: RA 0.0–0.29 (the CCD at 0.3 starts 0.01° = 36″ away from it).
        let q = square(0.0, 0.0, 0.29);
        let keys = |v: Vec<PlanningCcd>| v.iter().map(PlanningCcd::key).collect::<Vec<_>>();
        assert_eq!(
            keys(reg.planning_ccds_overlapping(&q, None, 0.0).unwrap()),
            vec![(1, 1)]
        );
        assert_eq!(
            keys(reg.planning_ccds_overlapping(&q, None, 40.0).unwrap()),
            vec![(1, 1), (2, 0)]
        );
        assert_eq!(
            keys(reg.planning_ccds_overlapping(&q, Some("g"), 40.0).unwrap()),
            vec![(2, 0)]
        );
        // Once processed, the recorded region decides, without a margin: (1, 1) moved away is no
        // input; (2, 0) fitted 0.05° closer overlaps, now as a processed row.
        reg.insert_ccds(&[processed(&raws[1], -0.5), processed(&raws[2], -0.05)])
            .unwrap();
        let got = reg.planning_ccds_overlapping(&q, None, 40.0).unwrap();
        assert_eq!(keys(got.clone()), vec![(2, 0)]);
        assert!(matches!(got[0], PlanningCcd::Processed(_)));
        // Re-ingesting replaces rows instead of duplicating them.
        reg.insert_raw_ccds(&raws).unwrap();
        assert_eq!(reg.raw_count().unwrap(), 4);
    }

    #[test]
    fn invalid_raw_records_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path().join("r.sqlite3")).unwrap();
        let good = raw(1, 0, 10.0, 0.0, "r");
        let mut bad = raw(1, 1, 10.0, 0.0, "");
        let err = reg
            .insert_raw_ccds(&[good.clone(), bad.clone()])
            .unwrap_err();
        assert!(err.to_string().contains("visit=1,ccd=1"), "{err}");
        bad.band = "r".into();
        bad.corners = [bad.corners[0]; 4];
        assert!(reg.insert_raw_ccds(&[bad]).is_err());
        assert_eq!(reg.raw_count().unwrap(), 0);
        reg.insert_raw_ccds(&[good]).unwrap();
        assert_eq!(reg.raw_count().unwrap(), 1);
    }
}
