//! SQLite registry of processed CCDs and their sky regions.
//!
//! `skypipe-singleframe` records every processed CCD here (one writer, rank 0, in batched
//! transactions); later stages such as `coadd` plan their units by asking which CCDs overlap a
//! patch, without opening a single science file.
//!
//! Three layers:
//! - [`sphere`]: pure spherical geometry — [`SkyPoint`], unit vectors, [`ConvexPolygon`]
//!   (exact point-in-polygon and polygon–polygon intersection, correct across RA = 0/360 and at
//!   the poles) and the 3-D [`Box3`] bounding box used by the index.
//! - [`skymap`]: pure geometry of the sky map — tracts in Dec rings with polar caps, each with
//!   its own TAN projection and a grid of bordered patches — and lookups by position or polygon.
//! - [`Registry`]: the database (schema version 3; see `docs/formats.md`). A `ccd` table keyed by (visit, ccd), and an SQLite R*Tree over
//!   each CCD's bounding box in unit-vector space. An overlap query asks the R*Tree for
//!   candidates whose box meets the query polygon's box, then keeps those that
//!   [`ConvexPolygon::intersects`] the query. Boxes in 3-D have no seam at RA = 0 and no
//!   singularity at the poles, and they include the bulge of great-circle arcs, so the filter
//!   never drops a true overlap.
//!
//! Version 2 adds per-CCD fits ([`CcdFit`]), mosaic's WCS per (CCD, tract) ([`MosaicWcs`]),
//! the stored sky map ([`Registry::set_skymap`]), per-patch products ([`WarpRecord`],
//! [`CoaddRecord`], [`MultibandRecord`]) and the planning queries
//! [`Registry::ccds_overlapping_patch`] and [`Registry::patches_of_ccd`]. A writing open
//! migrates a version-1 file in one transaction.
//!
//! Version 3 adds raw CCDs with the regions their raw headers predict ([`RawCcdRecord`],
//! written by `skypipe-ingest`) and the planning query
//! [`Registry::planning_ccds_overlapping`], which lets a stage plan units for CCDs that
//! single-frame processing has not reached yet (a chain run): processed rows by their recorded
//! region, raw rows by their predicted region grown by a margin.
//!
//! **Invariant:** `sphere` and `skymap` do no I/O. **Invariant:** an overlap query never scans the `ccd`
//! table; its answer equals the exact geometric test applied to every row.
//!
//! ```
//! use skypipe_registry::{CcdRecord, CcdStatus, ConvexPolygon, Registry, SkyPoint};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut reg = Registry::open(dir.path().join("registry.sqlite3"))?;
//! let corner = |ra, dec| SkyPoint::new(ra, dec);
//! reg.insert_ccds(&[CcdRecord {
//!     visit: 12,
//!     ccd: 34,
//!     band: "r".into(),
//!     exposure_time: 30.0,
//!     psf_fwhm: 3.2,
//!     corners: [corner(359.9, 0.0)?, corner(0.1, 0.0)?, corner(0.1, 0.2)?, corner(359.9, 0.2)?],
//!     calexp_path: "calexp/v12_c34.fits".into(),
//!     catalog_path: "src/v12_c34.fits".into(),
//!     calibration: None,
//!     status: CcdStatus::Processed,
//! }])?;
//! let patch = ConvexPolygon::from_radec(&[(0.05, 0.1), (1.0, 0.1), (1.0, 1.0), (0.05, 1.0)])?;
//! let hits = reg.overlapping(&patch)?;
//! assert_eq!((hits[0].visit, hits[0].ccd), (12, 34));
//! assert_eq!(reg.count()?, 1);
//! # Ok(()) }
//! ```

mod products;
mod raw;
mod registry;
pub mod skymap;
pub mod sphere;

pub use products::{CcdFit, CoaddRecord, MosaicWcs, MultibandRecord, WarpRecord};
pub use raw::{PlanningCcd, RawCcdRecord, grow};
pub use registry::{
    Calibration, CcdRecord, CcdStatus, RecordError, Registry, RegistryError, SCHEMA_VERSION,
};
pub use skymap::{PatchId, SkyMap, SkyMapConfig, SkyMapError, Tract};
pub use sphere::{Box3, ConvexPolygon, GeometryError, PointError, SkyPoint, Vec3};
