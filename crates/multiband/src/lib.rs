//! The `multiband` stage (`skypipe-multiband`): per sky-map patch, the detections of every
//! band's coadd merged into objects, each object measured in every band, a reference band
//! chosen per object, forced photometry at the reference positions in every band, and patch and
//! tract object catalogues.
//!
//! Units (IDs `tract=T,patch=X,Y,step=merge-detections`, `…,band=B,step=measure`,
//! `…,step=merge-measurements`, `…,band=B,step=forced`, `…,step=catalog`,
//! `tract=T,step=catalog`), each starting when its own inputs are done:
//! - **merge-detections** (patch): the coadd catalogues of its bands (`coadd-sources`) matched
//!   by position ([`kernels::merge_peaks`]); objects outside the patch's inner region are
//!   dropped ([`kernels::in_inner_region`]) so that a tract catalogue has each object once.
//! - **measure** (patch, band), after merge-detections: centroid, aperture and PSF-weighted
//!   fluxes with errors, adaptive moments and flags on the band's coadd
//!   ([`kernels::measure_at`], the optical crate's measurement kernels).
//! - **merge-measurements** (patch), after its measures (tolerating failed ones): the reference
//!   band per object ([`kernels::reference_band`]) and its position and shape.
//! - **forced** (patch, band), after merge-measurements: fluxes at the reference positions.
//! - **catalog** (patch), after the forced units (tolerating failed ones): the patch's FITS
//!   catalogue, missing bands listed, and its registry row.
//! - **catalog** (tract), after its patch catalogues (tolerating failed ones): their
//!   concatenation, with what is missing listed.
//!
//! Intermediate results travel as unit values ([`stage::MultibandValue`]). Planning reads
//! only the registry's coadd rows. Outputs under `RUN_DIR/multiband/` ([`stage::paths`]);
//! formats in `docs/formats.md`, `## Multiband`.

pub mod config;
pub mod kernels;
pub mod output;
pub mod stage;
pub mod truth;

pub use config::{MultibandConfig, MultibandFile};
pub use stage::{Multiband, MultibandUnit, MultibandValue};
