//! The `coadd` stage (`skypipe-coadd`): every CCD found in the registry is warped onto every
//! sky-map patch it overlaps, the warps of a patch are combined per band, and sources are
//! detected on the coadd.
//!
//! Units (IDs `tract=T,patch=X,Y,visit=V,ccd=C`, `tract=T,patch=X,Y,band=B`,
//! `tract=T,patch=X,Y,band=B,step=detect`):
//! - **warp** (patch, CCD): the calexp's image, variance and mask resampled onto the patch's
//!   outer grid with the core crate's Lanczos3 kernel ([`skypipe_core::warp`]), the CCD → patch
//!   mapping evaluated exactly (WCSLIB for the CCD, the tract's TAN for the patch) on a coarse
//!   grid and interpolated, scaled to the common zero point. A CCD without data on the patch
//!   (or without a zero point, by default) ends no-work and writes nothing.
//! - **coadd** (patch, band), after that patch's warps in the band, whose values (file, weight,
//!   PSF) it receives: the clipped weighted mean ([`kernels::stack`]), variance, input-count
//!   and mask maps, a quicklook PNG, and the registry's warp and coadd rows. A failed warp
//!   makes it dependency-failed; no barrier between patches.
//! - **detect** (patch, band), after its coadd: detection and measurement with the optical
//!   crate's kernels ([`detect`]), a FITS catalogue with RA/Dec from the patch WCS.
//!
//! Planning reads only the registry (CCDs, their bands, regions and calexp paths): these
//! stages run after `skypipe-singleframe` has filled it; planning from predicted raw regions
//! in a chain is not supported. Outputs under `RUN_DIR/coadd/` ([`stage::paths`]); formats in
//! `docs/formats.md`, `## Coadd`.

pub mod config;
pub mod detect;
pub mod kernels;
pub mod output;
pub mod patch;
pub mod stage;

pub use config::{CoaddConfig, CoaddFile, DetectionConfig, MissingZeroPoint, WcsSource};
pub use stage::{Coadd, CoaddUnit, WarpUnit};
