//! The SQLite registry of processed CCDs: schema, batched upserts and indexed queries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior, params};

use crate::raw::SCHEMA_V3;
use crate::skymap::{SkyMapConfig, SkyMapError};
use crate::sphere::{ConvexPolygon, GeometryError, SkyPoint};

/// Schema version this build writes and reads. Opening an older (version 1 or 2) file for
/// writing migrates it (one transaction); a newer version is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The version-1 schema: `ccd` and its index. A new file gets this plus [`SCHEMA_V2`] and
/// [`SCHEMA_V3`], so a migrated older file and a new file have the same tables.
///
/// `ccd_box` is an R*Tree over each CCD's 3-D unit-vector bounding box (see
/// [`ConvexPolygon::bounding_box`]); its `id` is the `ccd` row's `id`.
const SCHEMA_V1: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE ccd (
    id            INTEGER PRIMARY KEY,
    visit         INTEGER NOT NULL CHECK (visit >= 0),
    ccd           INTEGER NOT NULL CHECK (ccd >= 0),
    band          TEXT    NOT NULL,
    exposure_time REAL    NOT NULL,
    psf_fwhm      REAL    NOT NULL,
    ra0 REAL NOT NULL, dec0 REAL NOT NULL,
    ra1 REAL NOT NULL, dec1 REAL NOT NULL,
    ra2 REAL NOT NULL, dec2 REAL NOT NULL,
    ra3 REAL NOT NULL, dec3 REAL NOT NULL,
    calexp_path   TEXT    NOT NULL,
    catalog_path  TEXT    NOT NULL,
    wcs           TEXT,
    zero_point    REAL,
    status        TEXT    NOT NULL CHECK (status IN ('processed', 'calibrated', 'rejected')),
    UNIQUE (visit, ccd)
);
CREATE INDEX ccd_band ON ccd (band);
CREATE VIRTUAL TABLE ccd_box USING rtree (id, min_x, max_x, min_y, max_y, min_z, max_z);
";

/// What version 2 adds to version 1 (also the migration, with the version update): the
/// astrometric/photometric fit per CCD, mosaic's corrected WCS per (CCD, tract), the sky map
/// (configuration and tracts, with an R*Tree over the tract footprints) and the coadd-chain
/// products per patch. `ccd.wcs`, `ccd.zero_point` and the corners hold the fitted values once
/// a fit is recorded; `ccd_fit` holds the rest of the fit.
pub(crate) const SCHEMA_V2: &str = "
CREATE TABLE ccd_fit (
    ccd_id              INTEGER PRIMARY KEY REFERENCES ccd (id),
    zero_point_err      REAL    NOT NULL CHECK (zero_point_err >= 0),
    astrometric_scatter REAL    NOT NULL CHECK (astrometric_scatter >= 0),
    matches             INTEGER NOT NULL CHECK (matches >= 0)
);
CREATE TABLE mosaic_wcs (
    ccd_id INTEGER NOT NULL REFERENCES ccd (id),
    tract  INTEGER NOT NULL REFERENCES tract (id),
    wcs    TEXT    NOT NULL,
    PRIMARY KEY (ccd_id, tract)
);
CREATE TABLE skymap (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    rings       INTEGER NOT NULL,
    pixel_scale REAL    NOT NULL,
    patch_size  INTEGER NOT NULL,
    border      INTEGER NOT NULL
);
CREATE TABLE tract (
    id        INTEGER PRIMARY KEY,
    ra        REAL    NOT NULL,
    dec       REAL    NOT NULL,
    patches_x INTEGER NOT NULL CHECK (patches_x > 0),
    patches_y INTEGER NOT NULL CHECK (patches_y > 0)
);
CREATE VIRTUAL TABLE tract_box USING rtree (id, min_x, max_x, min_y, max_y, min_z, max_z);
CREATE TABLE warp (
    tract       INTEGER NOT NULL REFERENCES tract (id),
    patch_x     INTEGER NOT NULL CHECK (patch_x >= 0),
    patch_y     INTEGER NOT NULL CHECK (patch_y >= 0),
    ccd_id      INTEGER NOT NULL REFERENCES ccd (id),
    path        TEXT    NOT NULL,
    good_pixels INTEGER NOT NULL CHECK (good_pixels >= 0),
    PRIMARY KEY (tract, patch_x, patch_y, ccd_id)
);
CREATE TABLE coadd (
    tract   INTEGER NOT NULL REFERENCES tract (id),
    patch_x INTEGER NOT NULL CHECK (patch_x >= 0),
    patch_y INTEGER NOT NULL CHECK (patch_y >= 0),
    band    TEXT    NOT NULL,
    path    TEXT    NOT NULL,
    inputs  INTEGER NOT NULL CHECK (inputs >= 0),
    depth   REAL    NOT NULL,
    PRIMARY KEY (tract, patch_x, patch_y, band)
);
CREATE TABLE multiband (
    tract   INTEGER NOT NULL REFERENCES tract (id),
    patch_x INTEGER NOT NULL CHECK (patch_x >= 0),
    patch_y INTEGER NOT NULL CHECK (patch_y >= 0),
    path    TEXT    NOT NULL,
    objects INTEGER NOT NULL CHECK (objects >= 0),
    PRIMARY KEY (tract, patch_x, patch_y)
);
";

/// Columns read for a record, in the order `Registry::record_from_row` expects.
const COLUMNS: &str = "c.visit, c.ccd, c.band, c.exposure_time, c.psf_fwhm, \
     c.ra0, c.dec0, c.ra1, c.dec1, c.ra2, c.dec2, c.ra3, c.dec3, \
     c.calexp_path, c.catalog_path, c.wcs, c.zero_point, c.status";

/// Index of the first corner column in [`COLUMNS`].
const CORNER_COL: usize = 5;

const UPSERT: &str = "
INSERT INTO ccd (visit, ccd, band, exposure_time, psf_fwhm,
                 ra0, dec0, ra1, dec1, ra2, dec2, ra3, dec3,
                 calexp_path, catalog_path, wcs, zero_point, status)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
ON CONFLICT (visit, ccd) DO UPDATE SET
    band = excluded.band, exposure_time = excluded.exposure_time,
    psf_fwhm = excluded.psf_fwhm,
    ra0 = excluded.ra0, dec0 = excluded.dec0, ra1 = excluded.ra1, dec1 = excluded.dec1,
    ra2 = excluded.ra2, dec2 = excluded.dec2, ra3 = excluded.ra3, dec3 = excluded.dec3,
    calexp_path = excluded.calexp_path, catalog_path = excluded.catalog_path,
    wcs = excluded.wcs, zero_point = excluded.zero_point, status = excluded.status
RETURNING id";

/// Box filter shared by the overlap queries: ?1..?6 are the query box's x, y, z min/max.
///
/// `CROSS JOIN` fixes the loop order (SQLite never reorders it): R*Tree outside, primary-key
/// lookups inside. With a plain JOIN and a band condition the planner was seen to walk the band
/// index and probe the R*Tree per row, i.e. a scan of the whole band.
const BOX_FILTER: &str = "FROM ccd_box AS b CROSS JOIN ccd AS c ON c.id = b.id
     WHERE b.max_x >= ?1 AND b.min_x <= ?2
       AND b.max_y >= ?3 AND b.min_y <= ?4
       AND b.max_z >= ?5 AND b.min_z <= ?6";

/// Everything that can go wrong in the registry; every variant names the database file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite reported an error (cannot open, locked past the timeout, disk full, ...).
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite refused to switch the database to WAL mode.
    #[error("{path}: cannot enable WAL mode (journal_mode stays {mode:?})")]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported instead.
        mode: String,
    },
    /// The file is an SQLite database, but not a skypipe registry.
    #[error("{path}: not a skypipe registry (tables exist but no schema_version table)")]
    NotARegistry {
        /// The database file.
        path: PathBuf,
    },
    /// The registry's schema version is newer than this build knows (or the version table is
    /// empty).
    #[error(
        "{path}: registry schema version {} is not one this build reads (it reads version {expected} and migrates older ones; a newer registry needs a newer skypipe)",
        found.map_or_else(|| "missing".to_string(), |v| v.to_string())
    )]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The version found (`None` when the version table is empty).
        found: Option<i64>,
        /// The version this build reads ([`SCHEMA_VERSION`]).
        expected: i64,
    },
    /// A read-only open found an older schema version; a writing open migrates it.
    #[error(
        "{path}: registry schema version {found} predates version {expected}; open it for writing once (any writing stage) to migrate it"
    )]
    NeedsMigration {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The version this build reads ([`SCHEMA_VERSION`]).
        expected: i64,
    },
    /// A row refers to a (visit, ccd) that is not in the registry; nothing of the batch was
    /// written.
    #[error("{path}: visit={visit},ccd={ccd} is not in the registry")]
    UnknownCcd {
        /// The database file.
        path: PathBuf,
        /// Visit asked for.
        visit: u64,
        /// CCD asked for.
        ccd: u32,
    },
    /// The registry holds no sky map yet ([`Registry::set_skymap`]).
    #[error("{path}: no sky map stored in the registry")]
    NoSkyMap {
        /// The database file.
        path: PathBuf,
    },
    /// A different sky map is already stored: products keyed by patch would change meaning.
    #[error("{path}: the registry already holds sky map {stored:?}, refusing {given:?}")]
    SkyMapConflict {
        /// The database file.
        path: PathBuf,
        /// The stored configuration.
        stored: SkyMapConfig,
        /// The configuration given.
        given: SkyMapConfig,
    },
    /// The stored sky map configuration is invalid (the file was edited by hand?).
    #[error("{path}: stored sky map is corrupt: {source}")]
    CorruptSkyMap {
        /// The database file.
        path: PathBuf,
        /// Why the configuration is refused.
        #[source]
        source: SkyMapError,
    },
    /// A patch that the stored sky map does not have; nothing of the batch was written.
    #[error("{path}: tract {tract} patch {x},{y} is not in the sky map")]
    UnknownPatch {
        /// The database file.
        path: PathBuf,
        /// Tract id.
        tract: u32,
        /// Patch column.
        x: u32,
        /// Patch row.
        y: u32,
    },
    /// A per-patch product row is invalid; nothing of the batch was written.
    #[error("{path}: tract {tract} patch {x},{y}: {source}")]
    InvalidPatchRow {
        /// The database file.
        path: PathBuf,
        /// Tract id.
        tract: u32,
        /// Patch column.
        x: u32,
        /// Patch row.
        y: u32,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// A record handed to [`Registry::insert_ccds`] is invalid; nothing of the batch was written.
    #[error("{path}: visit={visit},ccd={ccd}: {source}")]
    InvalidRecord {
        /// The database file.
        path: PathBuf,
        /// Visit of the offending record.
        visit: u64,
        /// CCD of the offending record.
        ccd: u32,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// A stored row cannot be turned back into a record (the file was edited by hand?).
    #[error("{path}: stored row visit={visit},ccd={ccd} is corrupt: {reason}")]
    CorruptRow {
        /// The database file.
        path: PathBuf,
        /// Visit column of the row.
        visit: i64,
        /// CCD column of the row.
        ccd: i64,
        /// What could not be decoded.
        reason: String,
    },
}

/// Why a [`CcdRecord`] was refused before anything was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// The four corners do not form a convex spherical quadrilateral.
    #[error("corners: {0}")]
    Corners(#[from] GeometryError),
    /// A quantity that must be finite and strictly positive is not.
    #[error("{field} is {value}, expected a finite positive number")]
    NotPositive {
        /// Name of the field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// The zero point is NaN or infinite.
    #[error("zero point is {0}, expected a finite number")]
    ZeroPointNotFinite(f64),
    /// The band name is empty.
    #[error("band is empty")]
    EmptyBand,
    /// The visit number does not fit SQLite's signed 64-bit integer.
    #[error("visit {0} is larger than {max}", max = i64::MAX)]
    VisitTooLarge(u64),
    /// A path is empty or not valid UTF-8 (the registry stores paths as text).
    #[error("{field} path {path:?} is empty or not valid UTF-8")]
    BadPath {
        /// Name of the field.
        field: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A quantity that must be finite and non-negative is not.
    #[error("{field} is {value}, expected a finite number >= 0")]
    Negative {
        /// Name of the field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A text field (WCS header, band) is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Status [`CcdStatus::Calibrated`] without a [`Calibration`].
    #[error("status is 'calibrated' but no calibration is given")]
    MissingCalibration,
}

/// Processing state of a CCD, as later stages need to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CcdStatus {
    /// Single-frame processing is done: calibrated exposure and source catalogue written.
    Processed,
    /// The exposure-wide calibration (fitted WCS and zero point) is attached.
    Calibrated,
    /// Excluded from later stages (e.g. calibration found too few stars); kept for the record.
    Rejected,
}

impl CcdStatus {
    /// The text stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CcdStatus::Processed => "processed",
            CcdStatus::Calibrated => "calibrated",
            CcdStatus::Rejected => "rejected",
        }
    }

    /// Parses the text stored in the `status` column.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "processed" => Some(CcdStatus::Processed),
            "calibrated" => Some(CcdStatus::Calibrated),
            "rejected" => Some(CcdStatus::Rejected),
            _ => None,
        }
    }
}

/// Results of the exposure-wide calibration (the next issue), stored in nullable columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Fitted WCS, serialised as FITS header cards (the format is the calibration stage's).
    pub wcs: String,
    /// Photometric zero point, in magnitudes.
    pub zero_point: f64,
}

/// One processed CCD: what later stages need to plan without opening science files.
#[derive(Debug, Clone, PartialEq)]
pub struct CcdRecord {
    /// Visit (exposure) number.
    pub visit: u64,
    /// CCD number within the camera.
    pub ccd: u32,
    /// Filter band name, e.g. `"r"`.
    pub band: String,
    /// Exposure time in seconds.
    pub exposure_time: f64,
    /// PSF full width at half maximum, in pixels.
    pub psf_fwhm: f64,
    /// The CCD's four corners on the sky (either winding), stored as given.
    pub corners: [SkyPoint; 4],
    /// Path of the calibrated exposure (FITS).
    pub calexp_path: PathBuf,
    /// Path of the source catalogue (FITS table).
    pub catalog_path: PathBuf,
    /// Fitted WCS and zero point, once calibrated.
    pub calibration: Option<Calibration>,
    /// Processing state.
    pub status: CcdStatus,
}

impl CcdRecord {
    /// Checks every field and returns the corners as a polygon.
    pub fn validate(&self) -> Result<ConvexPolygon, RecordError> {
        if i64::try_from(self.visit).is_err() {
            return Err(RecordError::VisitTooLarge(self.visit));
        }
        if self.band.is_empty() {
            return Err(RecordError::EmptyBand);
        }
        for (field, value) in [
            ("exposure time", self.exposure_time),
            ("psf fwhm", self.psf_fwhm),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(RecordError::NotPositive { field, value });
            }
        }
        for (field, path) in [
            ("calexp", &self.calexp_path),
            ("catalog", &self.catalog_path),
        ] {
            if path.to_str().is_none_or(str::is_empty) {
                return Err(RecordError::BadPath {
                    field,
                    path: path.clone(),
                });
            }
        }
        match &self.calibration {
            Some(cal) if !cal.zero_point.is_finite() => {
                return Err(RecordError::ZeroPointNotFinite(cal.zero_point));
            }
            None if self.status == CcdStatus::Calibrated => {
                return Err(RecordError::MissingCalibration);
            }
            _ => {}
        }
        Ok(self.region()?)
    }

    /// The corners as a convex polygon.
    pub fn region(&self) -> Result<ConvexPolygon, GeometryError> {
        ConvexPolygon::new(&self.corners)
    }
}

/// A connection to the registry database.
///
/// One process (rank 0) opens it with [`Registry::open`] and writes in batches; any number of
/// other processes open it with [`Registry::open_read_only`] and read while it writes (WAL).
/// WAL coordinates through shared memory, so every connection must be on the writer's host:
/// ranks on other nodes should get query results from the planning rank, not open the file
/// over a network filesystem.
#[derive(Debug)]
pub struct Registry {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// The stored sky map once read (it never changes once stored).
    pub(crate) skymap_cache: std::cell::OnceCell<crate::skymap::SkyMap>,
}

impl Registry {
    /// Opens the registry for writing, creating the file and schema if absent.
    ///
    /// A version-1 or version-2 file is migrated to version 3 in one transaction (the newer
    /// tables are added, existing rows are untouched); a newer version is refused with
    /// [`RegistryError::SchemaVersion`].
    ///
    /// Sets WAL mode (readers never block the writer or each other) and `synchronous = FULL`
    /// (a committed batch survives power loss, as the resume ledger assumes).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(sqlite(&path))?;
        let mut reg = Self {
            conn,
            path,
            skymap_cache: Default::default(),
        };
        reg.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite(&reg.path))?;
        // Schema first: a file that is not a registry is refused before anything changes it.
        reg.ensure_schema()?;
        let mode: String = reg
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sqlite(&reg.path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(RegistryError::NoWal {
                path: reg.path,
                mode,
            });
        }
        reg.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite(&reg.path))?;
        reg.tune()?;
        Ok(reg)
    }

    /// Opens an existing registry read-only (other ranks, the status tool). An older schema
    /// version is refused with [`RegistryError::NeedsMigration`] (a reader never migrates).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(sqlite(&path))?;
        let reg = Self {
            conn,
            path,
            skymap_cache: Default::default(),
        };
        reg.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite(&reg.path))?;
        match reg.stored_version()? {
            Some(v) => reg.check_version(v)?,
            None => return Err(reg.missing_version_error()?),
        }
        reg.tune()?;
        Ok(reg)
    }

    /// Per-connection settings for query speed: a page cache large enough for a survey's
    /// registry (64 MiB; 100,000 CCDs take about 25 MiB) and memory-mapped reads (256 MiB),
    /// since overlap queries look up scattered rows by primary key.
    fn tune(&self) -> Result<(), RegistryError> {
        self.conn
            .pragma_update(None, "cache_size", -65536)
            .map_err(self.err())?;
        self.conn
            .pragma_update(None, "mmap_size", 268_435_456)
            .map_err(self.err())?;
        self.conn
            .pragma_update(None, "foreign_keys", true)
            .map_err(self.err())?;
        Ok(())
    }

    /// The database file this registry was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `records` in one transaction, replacing any existing row with the same
    /// (visit, ccd): rerunning a unit updates its row instead of duplicating it.
    ///
    /// Every record is validated first; if one is invalid, nothing is written. Within a batch,
    /// a later record with the same (visit, ccd) wins.
    pub fn insert_ccds(&mut self, records: &[CcdRecord]) -> Result<(), RegistryError> {
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
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(path))?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(sqlite(path))?;
            let mut put_box = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO ccd_box (id, min_x, max_x, min_y, max_y, min_z, max_z)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sqlite(path))?;
            // A rerun of single-frame processing replaces the row: any earlier fit is stale.
            let mut drop_fit = tx
                .prepare_cached("DELETE FROM ccd_fit WHERE ccd_id = ?1")
                .map_err(sqlite(path))?;
            for (r, bb) in records.iter().zip(&boxes) {
                let c = &r.corners;
                let id: i64 = upsert
                    .query_row(
                        params![
                            r.visit as i64, // checked by validate()
                            r.ccd,
                            r.band,
                            r.exposure_time,
                            r.psf_fwhm,
                            c[0].ra(),
                            c[0].dec(),
                            c[1].ra(),
                            c[1].dec(),
                            c[2].ra(),
                            c[2].dec(),
                            c[3].ra(),
                            c[3].dec(),
                            r.calexp_path.to_str(),
                            r.catalog_path.to_str(),
                            r.calibration.as_ref().map(|cal| cal.wcs.as_str()),
                            r.calibration.as_ref().map(|cal| cal.zero_point),
                            r.status.as_str(),
                        ],
                        |row| row.get(0),
                    )
                    .map_err(sqlite(path))?;
                put_box
                    .execute(params![
                        id, bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2]
                    ])
                    .map_err(sqlite(path))?;
                drop_fit.execute([id]).map_err(sqlite(path))?;
            }
        }
        tx.commit().map_err(sqlite(path))
    }

    /// Every CCD whose region intersects `region` (touching counts), ordered by (visit, ccd),
    /// whatever its status (callers skip [`CcdStatus::Rejected`] rows as they see fit).
    ///
    /// Candidates come from the R*Tree of bounding boxes; each is then checked exactly with
    /// [`ConvexPolygon::intersects`].
    pub fn overlapping(&self, region: &ConvexPolygon) -> Result<Vec<CcdRecord>, RegistryError> {
        self.overlap_query(region, None)
    }

    /// [`Registry::overlapping`] restricted to one band.
    pub fn overlapping_in_band(
        &self,
        region: &ConvexPolygon,
        band: &str,
    ) -> Result<Vec<CcdRecord>, RegistryError> {
        self.overlap_query(region, Some(band))
    }

    /// The record for one (visit, ccd), if present.
    pub fn get(&self, visit: u64, ccd: u32) -> Result<Option<CcdRecord>, RegistryError> {
        let Ok(visit) = i64::try_from(visit) else {
            return Ok(None);
        };
        self.select("WHERE c.visit = ?1 AND c.ccd = ?2", params![visit, ccd])
            .map(|mut v| v.pop())
    }

    /// All CCDs of a visit, ordered by ccd.
    pub fn by_visit(&self, visit: u64) -> Result<Vec<CcdRecord>, RegistryError> {
        let Ok(visit) = i64::try_from(visit) else {
            return Ok(Vec::new());
        };
        self.select("WHERE c.visit = ?1", params![visit])
    }

    /// All CCDs in a band, ordered by (visit, ccd).
    pub fn by_band(&self, band: &str) -> Result<Vec<CcdRecord>, RegistryError> {
        self.select("WHERE c.band = ?1", params![band])
    }

    /// Every CCD, ordered by (visit, ccd).
    pub fn all(&self) -> Result<Vec<CcdRecord>, RegistryError> {
        self.select("", params![])
    }

    /// Number of CCDs recorded.
    pub fn count(&self) -> Result<u64, RegistryError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM ccd", [], |r| r.get(0))
            .map_err(sqlite(&self.path))?;
        Ok(n.max(0) as u64)
    }

    fn overlap_query(
        &self,
        region: &ConvexPolygon,
        band: Option<&str>,
    ) -> Result<Vec<CcdRecord>, RegistryError> {
        let bb = region.bounding_box();
        let sql = match band {
            None => format!("SELECT {COLUMNS} {BOX_FILTER}"),
            Some(_) => format!("SELECT {COLUMNS} {BOX_FILTER} AND c.band = ?7"),
        };
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let box_params = [
            bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2],
        ];
        let mut rows = match band {
            None => stmt.query(rusqlite::params_from_iter(box_params)),
            Some(b) => {
                let p = params![
                    box_params[0],
                    box_params[1],
                    box_params[2],
                    box_params[3],
                    box_params[4],
                    box_params[5],
                    b
                ];
                stmt.query(p)
            }
        }
        .map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            let poly = self.region_from_row(row)?;
            if poly.intersects(region) {
                out.push(self.record_from_row(row)?);
            }
        }
        out.sort_by_key(|r| (r.visit, r.ccd));
        Ok(out)
    }

    fn select(
        &self,
        where_clause: &str,
        p: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<CcdRecord>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM ccd AS c {where_clause} ORDER BY c.visit, c.ccd");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let mut rows = stmt.query(p).map_err(self.err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            out.push(self.record_from_row(row)?);
        }
        Ok(out)
    }

    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
        sqlite(&self.path)
    }

    fn corrupt(&self, row: &Row<'_>, reason: String) -> RegistryError {
        RegistryError::CorruptRow {
            path: self.path.clone(),
            visit: row.get(0).unwrap_or(-1),
            ccd: row.get(1).unwrap_or(-1),
            reason,
        }
    }

    fn corners_from_row(&self, row: &Row<'_>) -> Result<[SkyPoint; 4], RegistryError> {
        let mut corners = [SkyPoint::new(0.0, 0.0).expect("valid constant"); 4];
        for (k, corner) in corners.iter_mut().enumerate() {
            let ra: f64 = row.get(CORNER_COL + 2 * k).map_err(self.err())?;
            let dec: f64 = row.get(CORNER_COL + 2 * k + 1).map_err(self.err())?;
            *corner = SkyPoint::new(ra, dec)
                .map_err(|e| self.corrupt(row, format!("corner {k}: {e}")))?;
        }
        Ok(corners)
    }

    fn region_from_row(&self, row: &Row<'_>) -> Result<ConvexPolygon, RegistryError> {
        let corners = self.corners_from_row(row)?;
        ConvexPolygon::new(&corners).map_err(|e| self.corrupt(row, format!("corners: {e}")))
    }

    fn record_from_row(&self, row: &Row<'_>) -> Result<CcdRecord, RegistryError> {
        let e = self.err();
        let visit: i64 = row.get(0).map_err(&e)?;
        let ccd: i64 = row.get(1).map_err(&e)?;
        let visit = u64::try_from(visit)
            .map_err(|_| self.corrupt(row, format!("negative visit {visit}")))?;
        let ccd =
            u32::try_from(ccd).map_err(|_| self.corrupt(row, format!("ccd {ccd} out of range")))?;
        let wcs: Option<String> = row.get(15).map_err(&e)?;
        let zero_point: Option<f64> = row.get(16).map_err(&e)?;
        let calibration = match (wcs, zero_point) {
            (Some(wcs), Some(zero_point)) => Some(Calibration { wcs, zero_point }),
            (None, None) => None,
            _ => {
                return Err(self.corrupt(row, "only one of wcs and zero_point is set".into()));
            }
        };
        let status: String = row.get(17).map_err(&e)?;
        let status = CcdStatus::parse(&status)
            .ok_or_else(|| self.corrupt(row, format!("unknown status {status:?}")))?;
        Ok(CcdRecord {
            visit,
            ccd,
            band: row.get(2).map_err(&e)?,
            exposure_time: row.get(3).map_err(&e)?,
            psf_fwhm: row.get(4).map_err(&e)?,
            corners: self.corners_from_row(row)?,
            calexp_path: PathBuf::from(row.get::<_, String>(13).map_err(&e)?),
            catalog_path: PathBuf::from(row.get::<_, String>(14).map_err(&e)?),
            calibration,
            status,
        })
    }

    /// The stored schema version, or `None` when there is no version table.
    fn stored_version(&self) -> Result<Option<i64>, RegistryError> {
        let has_table: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        if !has_table {
            return Ok(None);
        }
        let v: Option<i64> = self
            .conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(self.err())?;
        match v {
            Some(v) => Ok(Some(v)),
            None => Err(RegistryError::SchemaVersion {
                path: self.path.clone(),
                found: None,
                expected: SCHEMA_VERSION,
            }),
        }
    }

    fn check_version(&self, found: i64) -> Result<(), RegistryError> {
        if found == SCHEMA_VERSION {
            Ok(())
        } else if (1..SCHEMA_VERSION).contains(&found) {
            Err(RegistryError::NeedsMigration {
                path: self.path.clone(),
                found,
                expected: SCHEMA_VERSION,
            })
        } else {
            Err(RegistryError::SchemaVersion {
                path: self.path.clone(),
                found: Some(found),
                expected: SCHEMA_VERSION,
            })
        }
    }

    /// The error for a database without a version table: empty (read-only open of a file that
    /// is not yet a registry) or holding someone else's tables.
    fn missing_version_error(&self) -> Result<RegistryError, RegistryError> {
        Ok(if self.table_count()? > 0 {
            RegistryError::NotARegistry {
                path: self.path.clone(),
            }
        } else {
            RegistryError::SchemaVersion {
                path: self.path.clone(),
                found: None,
                expected: SCHEMA_VERSION,
            }
        })
    }

    fn table_count(&self) -> Result<i64, RegistryError> {
        self.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// Creates the schema in an empty database, or checks the version of an existing one.
    fn ensure_schema(&mut self) -> Result<(), RegistryError> {
        let path = self.path.clone();
        // IMMEDIATE: two processes opening a new file at once cannot both create the schema.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        let existing = {
            let has_table: bool = tx
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sqlite(&path))?;
            if has_table {
                let v: Option<i64> = tx
                    .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
                    .map_err(sqlite(&path))?;
                Some(v)
            } else {
                None
            }
        };
        match existing {
            Some(Some(v @ (1 | 2))) => {
                // Migrations 1 -> 2 -> 3: each adds tables, all in this same transaction.
                if v == 1 {
                    tx.execute_batch(SCHEMA_V2).map_err(sqlite(&path))?;
                }
                tx.execute_batch(SCHEMA_V3).map_err(sqlite(&path))?;
                tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
                    .map_err(sqlite(&path))?;
                tx.commit().map_err(sqlite(&path))
            }
            Some(Some(v)) => {
                tx.commit().map_err(sqlite(&path))?;
                self.check_version(v)
            }
            Some(None) => Err(RegistryError::SchemaVersion {
                path,
                found: None,
                expected: SCHEMA_VERSION,
            }),
            None => {
                let tables: i64 = tx
                    .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                    .map_err(sqlite(&path))?;
                if tables > 0 {
                    return Err(RegistryError::NotARegistry { path });
                }
                tx.execute_batch(SCHEMA_V1).map_err(sqlite(&path))?;
                tx.execute_batch(SCHEMA_V2).map_err(sqlite(&path))?;
                tx.execute_batch(SCHEMA_V3).map_err(sqlite(&path))?;
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(sqlite(&path))?;
                tx.commit().map_err(sqlite(&path))
            }
        }
    }

    /// Number of rows the R*Tree returns for a box (used by tests of the index).
    #[cfg(test)]
    fn candidate_count(&self, bb: &crate::sphere::Box3) -> usize {
        let sql = format!("SELECT count(*) {BOX_FILTER}");
        self.conn
            .query_row(
                &sql,
                params![
                    bb.min[0], bb.max[0], bb.min[1], bb.max[1], bb.min[2], bb.max[2]
                ],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as usize
    }
}

/// Wraps an SQLite error with the database path.
pub(crate) fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
    move |source| RegistryError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sphere::ConvexPolygon;

    fn record(visit: u64, ccd: u32, ra: f64, dec: f64) -> CcdRecord {
        let p = |r, d| SkyPoint::new(r, d).unwrap();
        CcdRecord {
            visit,
            ccd,
            band: "r".into(),
            exposure_time: 30.0,
            psf_fwhm: 3.0,
            corners: [
                p(ra, dec),
                p(ra + 0.1, dec),
                p(ra + 0.1, dec + 0.2),
                p(ra, dec + 0.2),
            ],
            calexp_path: "c.fits".into(),
            catalog_path: "s.fits".into(),
            calibration: None,
            status: CcdStatus::Processed,
        }
    }

    /// The overlap query is answered from the R*Tree and looks rows up by primary key:
    /// no full scan of `ccd`.
    #[test]
    fn overlap_query_uses_the_rtree_not_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("r.sqlite3")).unwrap();
        for band in [false, true] {
            let extra = if band { " AND c.band = ?7" } else { "" };
            let sql = format!("EXPLAIN QUERY PLAN SELECT {COLUMNS} {BOX_FILTER}{extra}");
            let mut stmt = reg.conn.prepare(&sql).unwrap();
            let mut rows = stmt.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get::<_, String>(3).unwrap());
            }
            let plan = plan.join("\n");
            assert!(plan.contains("SCAN b VIRTUAL TABLE INDEX"), "{plan}");
            assert!(
                plan.contains("SEARCH c USING INTEGER PRIMARY KEY"),
                "{plan}"
            );
            assert!(!plan.contains("SCAN c"), "{plan}");
        }
    }

    /// On a grid of CCDs the box filter returns a small neighbourhood, not the table.
    #[test]
    fn rtree_prunes_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path().join("r.sqlite3")).unwrap();
        let recs: Vec<CcdRecord> = (0..40)
            .flat_map(|i| (0..25).map(move |j| record(i, j, i as f64 * 0.1, j as f64 * 0.2)))
            .collect();
        reg.insert_ccds(&recs).unwrap();
        assert_eq!(reg.count().unwrap(), 1000);
        // A query strictly inside CCD (10, 10) at RA 1.0-1.1, Dec 2.0-2.2.
        let q =
            ConvexPolygon::from_radec(&[(1.04, 2.08), (1.06, 2.08), (1.06, 2.12), (1.04, 2.12)])
                .unwrap();
        let candidates = reg.candidate_count(&q.bounding_box());
        assert_eq!(
            candidates, 1,
            "the box filter should select only the CCD holding the query"
        );
        let hits = reg.overlapping(&q).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].visit, hits[0].ccd), (10, 10));
    }
}
