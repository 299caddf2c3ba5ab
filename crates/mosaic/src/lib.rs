//! The `mosaic` stage: a joint astrometric solution per tract.
//!
//! - [`crossmatch`]: matching in the tract's tangent plane (a CCD's offset from the reference
//!   catalogue by voting, detections grouped into stars across CCDs, stars matched to the
//!   reference), pure kernels;
//! - [`solve`]: the joint least-squares solution (per-CCD polynomial corrections of the pixel
//!   coordinates and star positions, stars eliminated by a Schur complement, iterative
//!   rejection) and its residual statistics, pure kernels;
//! - [`ranks`]: a large tract's unit shared among several ranks (blocks of CCDs, results and
//!   failures exchanged in rank order);
//! - [`stage`]: the engine stage `skypipe-mosaic` (one unit per tract, planned from the
//!   registry; catalogues and WCS read, corrected WCS written to `mosaic/tract-TTTT.fits` and
//!   the registry).
//!
//! **Invariant:** `crossmatch` and `solve` do no I/O and know no MPI.

pub mod crossmatch;
pub mod ranks;
pub mod solve;
pub mod stage;

pub use stage::{Mosaic, MosaicConfig, MosaicFile, MosaicUnit, tract_output_path};
