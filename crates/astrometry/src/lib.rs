//! Astrometric and photometric calibration of one CCD against a reference catalogue, as pure
//! kernels (no I/O, no MPI):
//!
//! - [`matching`]: pattern matching of detected sources to reference stars projected into
//!   pixels through an approximate WCS (triangles among the brightest of each list vote for
//!   vertex correspondences; a similarity transform fitted to the winners; then iterative
//!   nearest-neighbour matching), robust to offsets of many pixels, rotations of degrees and
//!   scale errors of per cents;
//! - [`tansip`]: the TAN-SIP WCS (gnomonic projection, CD matrix, SIP distortion polynomials
//!   with their inverse), its FITS keyrecords, and its least-squares fit from matches with
//!   iterative sigma-clipping;
//! - [`photometry`]: a clipped weighted zero point with its error;
//! - [`exposure`]: one solution for all CCDs of an exposure (common pointing, rotation, scale
//!   and a distortion polynomial in focal-plane coordinates) and the per-CCD TAN-SIP it implies.

pub mod exposure;
pub mod linalg;
pub mod matching;
pub mod photometry;
pub mod tansip;
