//! Schema-version-2 rows: per-CCD fits, mosaic WCS, the stored sky map and per-patch products,
//! with the registry-driven planning queries (patch → CCDs, CCD → patches).

use std::path::PathBuf;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::registry::{CcdRecord, RecordError, Registry, RegistryError};
use crate::skymap::{PatchId, SkyMap, SkyMapConfig, Tract};
use crate::sphere::{ConvexPolygon, SkyPoint};

/// The astrometric and photometric fit of one CCD (single-frame calibration).
#[derive(Debug, Clone, PartialEq)]
pub struct CcdFit {
    /// Visit of the CCD (must already be in the registry).
    pub visit: u64,
    /// CCD number.
    pub ccd: u32,
    /// Fitted WCS as FITS header cards (TAN-SIP).
    pub wcs: String,
    /// The CCD's corners through the fitted WCS; they replace the recorded sky region.
    pub corners: [SkyPoint; 4],
    /// Photometric zero point, magnitudes.
    pub zero_point: f64,
    /// Uncertainty of the zero point, magnitudes.
    pub zero_point_err: f64,
    /// RMS astrometric residual of the matched stars, arcsec.
    pub astrometric_scatter: f64,
    /// Number of reference stars matched in the fit.
    pub matches: u32,
}

impl CcdFit {
    fn validate(&self) -> Result<ConvexPolygon, RecordError> {
        if self.wcs.trim().is_empty() {
            return Err(RecordError::Empty("wcs"));
        }
        if !self.zero_point.is_finite() {
            return Err(RecordError::ZeroPointNotFinite(self.zero_point));
        }
        non_negative("zero point error", self.zero_point_err)?;
        non_negative("astrometric scatter", self.astrometric_scatter)?;
        Ok(ConvexPolygon::new(&self.corners)?)
    }
}

/// Mosaic's corrected WCS of one CCD in the frame of one tract.
#[derive(Debug, Clone, PartialEq)]
pub struct MosaicWcs {
    /// Visit of the CCD.
    pub visit: u64,
    /// CCD number.
    pub ccd: u32,
    /// Tract whose joint fit produced this WCS.
    pub tract: u32,
    /// The WCS as FITS header cards.
    pub wcs: String,
}

/// One CCD resampled onto one patch.
#[derive(Debug, Clone, PartialEq)]
pub struct WarpRecord {
    /// The patch.
    pub patch: PatchId,
    /// Visit of the input CCD.
    pub visit: u64,
    /// Input CCD.
    pub ccd: u32,
    /// Path of the warped image.
    pub path: PathBuf,
    /// Number of valid (unmasked) pixels it contributes to the patch.
    pub good_pixels: u64,
}

/// The coadd of one patch in one band.
#[derive(Debug, Clone, PartialEq)]
pub struct CoaddRecord {
    /// The patch.
    pub patch: PatchId,
    /// Filter band.
    pub band: String,
    /// Path of the coadded image.
    pub path: PathBuf,
    /// Number of warps combined.
    pub inputs: u32,
    /// 5σ point-source depth, magnitudes.
    pub depth: f64,
}

/// The multiband object catalogue of one patch.
#[derive(Debug, Clone, PartialEq)]
pub struct MultibandRecord {
    /// The patch.
    pub patch: PatchId,
    /// Path of the catalogue.
    pub path: PathBuf,
    /// Number of objects in it.
    pub objects: u64,
}

fn non_negative(field: &'static str, value: f64) -> Result<(), RecordError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(RecordError::Negative { field, value })
    }
}

/// A product's path as stored: absolute (made so against the writer's working directory), so
/// that a reader in another directory finds the file a writer given a relative run directory
/// wrote.
fn path_text(field: &'static str, path: &std::path::Path) -> Result<String, RecordError> {
    let bad = || RecordError::BadPath {
        field,
        path: path.to_path_buf(),
    };
    let absolute = std::path::absolute(path).map_err(|_| bad())?;
    absolute
        .to_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(bad)
}

/// `u64` → SQLite integer, refusing what does not fit.
fn to_i64(v: u64) -> Result<i64, RecordError> {
    i64::try_from(v).map_err(|_| RecordError::VisitTooLarge(v))
}

impl Registry {
    fn sql(&self) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
        |source| RegistryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The `ccd` row id of (visit, ccd), or [`RegistryError::UnknownCcd`].
    fn ccd_id(&self, visit: u64, ccd: u32) -> Result<i64, RegistryError> {
        let unknown = || RegistryError::UnknownCcd {
            path: self.path.clone(),
            visit,
            ccd,
        };
        let v = i64::try_from(visit).map_err(|_| unknown())?;
        self.conn
            .query_row(
                "SELECT id FROM ccd WHERE visit = ?1 AND ccd = ?2",
                params![v, ccd],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?
            .ok_or_else(unknown)
    }

    /// Records fits in one transaction: each CCD's corners, R*Tree box, `wcs` and `zero_point`
    /// become the fitted ones, its status `calibrated`, and `ccd_fit` keeps the zero-point
    /// error, astrometric scatter and match count. Every fit is validated and every CCD looked
    /// up first; on any error nothing is written. Rerunning replaces the earlier fit.
    pub fn record_fits(&mut self, fits: &[CcdFit]) -> Result<(), RegistryError> {
        let mut rows = Vec::with_capacity(fits.len());
        for f in fits {
            let poly = f
                .validate()
                .map_err(|source| RegistryError::InvalidRecord {
                    path: self.path.clone(),
                    visit: f.visit,
                    ccd: f.ccd,
                    source,
                })?;
            rows.push((self.ccd_id(f.visit, f.ccd)?, poly.bounding_box()));
        }
        let path = self.path.clone();
        let err = |source| RegistryError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE ccd SET ra0 = ?2, dec0 = ?3, ra1 = ?4, dec1 = ?5, ra2 = ?6, dec2 = ?7,
                         ra3 = ?8, dec3 = ?9, wcs = ?10, zero_point = ?11, status = 'calibrated'
                     WHERE id = ?1",
                )
                .map_err(err)?;
            let mut put_box = tx
                .prepare_cached(
                    "UPDATE ccd_box SET min_x = ?2, max_x = ?3, min_y = ?4, max_y = ?5,
                         min_z = ?6, max_z = ?7 WHERE id = ?1",
                )
                .map_err(err)?;
            let mut put_fit = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO ccd_fit
                         (ccd_id, zero_point_err, astrometric_scatter, matches)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for (f, (id, bb)) in fits.iter().zip(&rows) {
                let c = &f.corners;
                update
                    .execute(params![
                        id,
                        c[0].ra(),
                        c[0].dec(),
                        c[1].ra(),
                        c[1].dec(),
                        c[2].ra(),
                        c[2].dec(),
                        c[3].ra(),
                        c[3].dec(),
                        f.wcs,
                        f.zero_point
                    ])
                    .map_err(err)?;
                put_box
                    .execute(params![
                        id, bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2]
                    ])
                    .map_err(err)?;
                put_fit
                    .execute(params![
                        id,
                        f.zero_point_err,
                        f.astrometric_scatter,
                        f.matches
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// The recorded fit of (visit, ccd), or `None` when none is recorded (or the CCD is unknown).
    pub fn fit(&self, visit: u64, ccd: u32) -> Result<Option<CcdFit>, RegistryError> {
        let Some(rec) = self.get(visit, ccd)? else {
            return Ok(None);
        };
        let id = self.ccd_id(visit, ccd)?;
        let extra: Option<(f64, f64, i64)> = self
            .conn
            .query_row(
                "SELECT zero_point_err, astrometric_scatter, matches FROM ccd_fit WHERE ccd_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.sql())?;
        let (Some((zero_point_err, astrometric_scatter, matches)), Some(cal)) =
            (extra, rec.calibration.clone())
        else {
            return Ok(None);
        };
        let matches = u32::try_from(matches).map_err(|_| RegistryError::CorruptRow {
            path: self.path.clone(),
            visit: visit as i64,
            ccd: i64::from(ccd),
            reason: format!("ccd_fit.matches {matches} out of range"),
        })?;
        Ok(Some(CcdFit {
            visit,
            ccd,
            wcs: cal.wcs,
            corners: rec.corners,
            zero_point: cal.zero_point,
            zero_point_err,
            astrometric_scatter,
            matches,
        }))
    }

    /// Records mosaic's corrected WCS for (CCD, tract) rows in one transaction (replacing
    /// earlier ones). The sky map must be stored and hold each tract.
    pub fn record_mosaic_wcs(&mut self, rows: &[MosaicWcs]) -> Result<(), RegistryError> {
        let map = self.require_skymap()?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in rows {
            if map.tract(r.tract).is_none() {
                return Err(self.unknown_patch(PatchId {
                    tract: r.tract,
                    x: 0,
                    y: 0,
                }));
            }
            if r.wcs.trim().is_empty() {
                return Err(RegistryError::InvalidRecord {
                    path: self.path.clone(),
                    visit: r.visit,
                    ccd: r.ccd,
                    source: RecordError::Empty("wcs"),
                });
            }
            ids.push(self.ccd_id(r.visit, r.ccd)?);
        }
        self.batch(
            "INSERT OR REPLACE INTO mosaic_wcs (ccd_id, tract, wcs) VALUES (?1, ?2, ?3)",
            rows.iter()
                .zip(ids)
                .map(|(r, id)| vec![id.into(), i64::from(r.tract).into(), r.wcs.clone().into()]),
        )
    }

    /// Mosaic's corrected WCS of (visit, ccd) in `tract`, if recorded.
    pub fn mosaic_wcs(
        &self,
        visit: u64,
        ccd: u32,
        tract: u32,
    ) -> Result<Option<String>, RegistryError> {
        let Ok(id) = self.ccd_id(visit, ccd) else {
            return Ok(None);
        };
        self.conn
            .query_row(
                "SELECT wcs FROM mosaic_wcs WHERE ccd_id = ?1 AND tract = ?2",
                params![id, tract],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())
    }

    /// Stores the sky map (configuration and every tract with its footprint box) in one
    /// transaction. Storing the same configuration again is a no-op; a different one is
    /// refused with [`RegistryError::SkyMapConflict`].
    pub fn set_skymap(&mut self, map: &SkyMap) -> Result<(), RegistryError> {
        if let Some(stored) = self.skymap_config()? {
            if stored == *map.config() {
                return Ok(());
            }
            return Err(RegistryError::SkyMapConflict {
                path: self.path.clone(),
                stored,
                given: *map.config(),
            });
        }
        let path = self.path.clone();
        let err = |source| RegistryError::Sqlite {
            path: path.clone(),
            source,
        };
        let c = map.config();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "INSERT INTO skymap (id, rings, pixel_scale, patch_size, border)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![c.rings, c.pixel_scale, c.patch_size, c.border],
        )
        .map_err(err)?;
        {
            let mut put = tx
                .prepare("INSERT INTO tract (id, ra, dec, patches_x, patches_y) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(err)?;
            let mut put_box = tx
                .prepare(
                    "INSERT INTO tract_box (id, min_x, max_x, min_y, max_y, min_z, max_z)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            for t in map.tracts() {
                put.execute(params![
                    t.id,
                    t.centre.ra(),
                    t.centre.dec(),
                    t.patches_x,
                    t.patches_y
                ])
                .map_err(err)?;
                let bb = t.footprint().bounding_box();
                put_box
                    .execute(params![
                        t.id, bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2]
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn skymap_config(&self) -> Result<Option<SkyMapConfig>, RegistryError> {
        self.conn
            .query_row(
                "SELECT rings, pixel_scale, patch_size, border FROM skymap WHERE id = 1",
                [],
                |r| {
                    Ok(SkyMapConfig {
                        rings: r.get(0)?,
                        pixel_scale: r.get(1)?,
                        patch_size: r.get(2)?,
                        border: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(self.sql())
    }

    /// The stored sky map, or `None` when none is stored.
    pub fn skymap(&self) -> Result<Option<SkyMap>, RegistryError> {
        self.skymap_config()?
            .map(|c| {
                SkyMap::new(c).map_err(|source| RegistryError::CorruptSkyMap {
                    path: self.path.clone(),
                    source,
                })
            })
            .transpose()
    }

    /// The stored sky map, read once per connection (a stored map never changes).
    fn require_skymap(&self) -> Result<&SkyMap, RegistryError> {
        if let Some(map) = self.skymap_cache.get() {
            return Ok(map);
        }
        let map = self.skymap()?.ok_or_else(|| RegistryError::NoSkyMap {
            path: self.path.clone(),
        })?;
        Ok(self.skymap_cache.get_or_init(|| map))
    }

    fn unknown_patch(&self, p: PatchId) -> RegistryError {
        RegistryError::UnknownPatch {
            path: self.path.clone(),
            tract: p.tract,
            x: p.x,
            y: p.y,
        }
    }

    /// The tract of a patch in the stored sky map, or [`RegistryError::UnknownPatch`].
    fn tract_of_patch(&self, map: &SkyMap, p: PatchId) -> Result<Tract, RegistryError> {
        map.tract(p.tract)
            .filter(|t| p.x < t.patches_x && p.y < t.patches_y)
            .ok_or_else(|| self.unknown_patch(p))
    }

    /// Planning query, patch → CCDs: every CCD whose (fitted, once recorded) region intersects
    /// the patch's outer region, ordered by (visit, ccd). R*Tree prefilter on unit-vector boxes,
    /// then the exact polygon test ([`Registry::overlapping`]).
    pub fn ccds_overlapping_patch(&self, patch: PatchId) -> Result<Vec<CcdRecord>, RegistryError> {
        let map = self.require_skymap()?;
        let tract = self.tract_of_patch(map, patch)?;
        self.overlapping(&tract.patch_outer(patch.x, patch.y))
    }

    /// [`Registry::ccds_overlapping_patch`] restricted to one band (a coadd's inputs).
    pub fn ccds_overlapping_patch_in_band(
        &self,
        patch: PatchId,
        band: &str,
    ) -> Result<Vec<CcdRecord>, RegistryError> {
        let map = self.require_skymap()?;
        let tract = self.tract_of_patch(map, patch)?;
        self.overlapping_in_band(&tract.patch_outer(patch.x, patch.y), band)
    }

    /// Planning query, CCD → patches: every (tract, patch) whose outer region intersects the
    /// CCD's region, sorted. The `tract_box` R*Tree selects candidate tracts, the exact tract
    /// footprint test keeps those that meet the CCD, and [`Tract::patches_overlapping`] tests
    /// the patches of each exactly.
    pub fn patches_of_ccd(&self, visit: u64, ccd: u32) -> Result<Vec<PatchId>, RegistryError> {
        let rec = self.get(visit, ccd)?.ok_or(RegistryError::UnknownCcd {
            path: self.path.clone(),
            visit,
            ccd,
        })?;
        let region = rec.region().map_err(|e| RegistryError::CorruptRow {
            path: self.path.clone(),
            visit: visit as i64,
            ccd: i64::from(ccd),
            reason: format!("corners: {e}"),
        })?;
        let map = self.require_skymap()?;
        let bb = region.bounding_box();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id FROM tract_box
                 WHERE max_x >= ?1 AND min_x <= ?2 AND max_y >= ?3 AND min_y <= ?4
                   AND max_z >= ?5 AND min_z <= ?6",
            )
            .map_err(self.sql())?;
        let ids = stmt
            .query_map(
                params![
                    bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2]
                ],
                |r| r.get::<_, i64>(0),
            )
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for id in ids {
            let tract = u32::try_from(id)
                .ok()
                .and_then(|id| map.tract(id))
                .ok_or_else(|| RegistryError::CorruptSkyMap {
                    path: self.path.clone(),
                    source: crate::skymap::SkyMapError::UnknownTract(id),
                })?;
            if tract.footprint().intersects(&region) {
                out.extend(tract.patches_overlapping(&region));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Runs one statement per row in one transaction.
    fn batch(
        &mut self,
        sql: &str,
        rows: impl Iterator<Item = Vec<rusqlite::types::Value>>,
    ) -> Result<(), RegistryError> {
        let path = self.path.clone();
        let err = |source| RegistryError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut stmt = tx.prepare_cached(sql).map_err(err)?;
            for row in rows {
                stmt.execute(rusqlite::params_from_iter(row)).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Checks that a patch exists in the stored sky map.
    fn check_patch(&self, map: &SkyMap, p: PatchId) -> Result<(), RegistryError> {
        self.tract_of_patch(map, p).map(|_| ())
    }

    fn patch_row_error(&self, p: PatchId, source: RecordError) -> RegistryError {
        RegistryError::InvalidPatchRow {
            path: self.path.clone(),
            tract: p.tract,
            x: p.x,
            y: p.y,
            source,
        }
    }

    /// Records warps in one transaction (replacing earlier rows for the same patch and CCD).
    /// Each patch must be in the stored sky map and each CCD in the registry.
    pub fn record_warps(&mut self, rows: &[WarpRecord]) -> Result<(), RegistryError> {
        let map = self.require_skymap()?;
        let mut values = Vec::with_capacity(rows.len());
        for r in rows {
            self.check_patch(map, r.patch)?;
            let path = path_text("warp", &r.path).map_err(|e| self.patch_row_error(r.patch, e))?;
            let good = to_i64(r.good_pixels).map_err(|e| self.patch_row_error(r.patch, e))?;
            let id = self.ccd_id(r.visit, r.ccd)?;
            values.push(patch_values(
                r.patch,
                [id.into(), path.to_string().into(), good.into()],
            ));
        }
        self.batch(
            "INSERT OR REPLACE INTO warp (tract, patch_x, patch_y, ccd_id, path, good_pixels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            values.into_iter(),
        )
    }

    /// The warps of a patch, ordered by (visit, ccd).
    pub fn warps(&self, patch: PatchId) -> Result<Vec<WarpRecord>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.visit, c.ccd, w.path, w.good_pixels FROM warp AS w
                 JOIN ccd AS c ON c.id = w.ccd_id
                 WHERE w.tract = ?1 AND w.patch_x = ?2 AND w.patch_y = ?3
                 ORDER BY c.visit, c.ccd",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![patch.tract, patch.x, patch.y], |r| {
                Ok(WarpRecord {
                    patch,
                    visit: get_u64(r, 0)?,
                    ccd: r.get(1)?,
                    path: PathBuf::from(r.get::<_, String>(2)?),
                    good_pixels: get_u64(r, 3)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Records coadds in one transaction (replacing earlier rows for the same patch and band).
    pub fn record_coadds(&mut self, rows: &[CoaddRecord]) -> Result<(), RegistryError> {
        let map = self.require_skymap()?;
        let mut values = Vec::with_capacity(rows.len());
        for r in rows {
            self.check_patch(map, r.patch)?;
            let bad = |e| self.patch_row_error(r.patch, e);
            if r.band.is_empty() {
                return Err(bad(RecordError::EmptyBand));
            }
            if !r.depth.is_finite() {
                return Err(bad(RecordError::NotPositive {
                    field: "depth",
                    value: r.depth,
                }));
            }
            let path = path_text("coadd", &r.path).map_err(bad)?;
            values.push(patch_values(
                r.patch,
                [
                    r.band.clone().into(),
                    path.to_string().into(),
                    i64::from(r.inputs).into(),
                    r.depth.into(),
                ],
            ));
        }
        self.batch(
            "INSERT OR REPLACE INTO coadd (tract, patch_x, patch_y, band, path, inputs, depth)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            values.into_iter(),
        )
    }

    /// The coadds of a patch, ordered by band.
    pub fn coadds(&self, patch: PatchId) -> Result<Vec<CoaddRecord>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT band, path, inputs, depth FROM coadd
                 WHERE tract = ?1 AND patch_x = ?2 AND patch_y = ?3 ORDER BY band",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![patch.tract, patch.x, patch.y], |r| {
                Ok(CoaddRecord {
                    patch,
                    band: r.get(0)?,
                    path: PathBuf::from(r.get::<_, String>(1)?),
                    inputs: r.get(2)?,
                    depth: r.get(3)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Every coadd row, ordered by (tract, patch, band).
    pub fn all_coadds(&self) -> Result<Vec<CoaddRecord>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT tract, patch_x, patch_y, band, path, inputs, depth FROM coadd
                 ORDER BY tract, patch_x, patch_y, band",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(CoaddRecord {
                    patch: PatchId {
                        tract: r.get(0)?,
                        x: r.get(1)?,
                        y: r.get(2)?,
                    },
                    band: r.get(3)?,
                    path: PathBuf::from(r.get::<_, String>(4)?),
                    inputs: r.get(5)?,
                    depth: r.get(6)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Records multiband catalogues in one transaction (replacing earlier rows for the patch).
    pub fn record_multiband(&mut self, rows: &[MultibandRecord]) -> Result<(), RegistryError> {
        let map = self.require_skymap()?;
        let mut values = Vec::with_capacity(rows.len());
        for r in rows {
            self.check_patch(map, r.patch)?;
            let bad = |e| self.patch_row_error(r.patch, e);
            let path = path_text("multiband", &r.path).map_err(bad)?;
            let objects = to_i64(r.objects).map_err(bad)?;
            values.push(patch_values(
                r.patch,
                [path.to_string().into(), objects.into()],
            ));
        }
        self.batch(
            "INSERT OR REPLACE INTO multiband (tract, patch_x, patch_y, path, objects)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            values.into_iter(),
        )
    }

    /// The multiband catalogue of a patch, if recorded.
    pub fn multiband(&self, patch: PatchId) -> Result<Option<MultibandRecord>, RegistryError> {
        self.conn
            .query_row(
                "SELECT path, objects FROM multiband
                 WHERE tract = ?1 AND patch_x = ?2 AND patch_y = ?3",
                params![patch.tract, patch.x, patch.y],
                |r| {
                    Ok(MultibandRecord {
                        patch,
                        path: PathBuf::from(r.get::<_, String>(0)?),
                        objects: get_u64(r, 1)?,
                    })
                },
            )
            .optional()
            .map_err(self.sql())
    }
}

/// Patch key columns followed by `rest`.
fn patch_values<const N: usize>(
    p: PatchId,
    rest: [rusqlite::types::Value; N],
) -> Vec<rusqlite::types::Value> {
    let mut v: Vec<rusqlite::types::Value> = vec![
        i64::from(p.tract).into(),
        i64::from(p.x).into(),
        i64::from(p.y).into(),
    ];
    v.extend(rest);
    v
}

/// Reads a non-negative integer column (the CHECK constraints keep them so).
fn get_u64(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}
