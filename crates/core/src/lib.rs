//! Pure science kernels shared by the skypipe stages. No I/O, no MPI: functions on values and
//! slices, so every kernel can be tested against analytic values, properties and independent
//! references.
//!
//! # Modules and how they meet
//! - [`quat`]: rotations as unit quaternions, `slerp` along the shorter arc.
//! - [`attitude`]: a validated boresight attitude series ([`attitude::Attitude`]) interpolated to
//!   detector samples given by a [`attitude::SampleClock`] (start time + exact rate).
//! - [`healpix`]: HEALPix pixels of directions, bit-for-bit equal to healpy.
//! - [`pointing`]: detector line of sight, polarisation angle, Stokes weights, and the fused
//!   per-detector chunk kernel [`pointing::PointingKernel`] (attitude → pixels + weights).
//! - [`aberration`]: relativistic aberration by the observer velocity ([`aberration::Beta`]).
//! - [`frames`]: the fixed ecliptic (J2000) → galactic rotation.
//! - [`dipole`]: the relativistic CMB dipole, the kinematic quadrupole, a configurable solar
//!   velocity (Planck 2018 by default) and the dipole model along stored pointing.
//! - [`gainfit`]: gain fits against a template with an error that includes the unmodelled
//!   residual.
//! - [`binning`]: noise-weighted I/Q/U accumulation into sparse sub-maps (only touched blocks
//!   allocated, reducible in bounded chunks) and the per-pixel 3×3 solve with an rcond cut.
//! - [`dense`]: cache-blocked Cholesky factorisation and solve of dense symmetric systems.
//! - [`destripe`]: baseline offsets by preconditioned conjugate gradient, with the map
//!   reduction pluggable ([`destripe::Reduce`]) so each iteration can reduce over MPI ranks.
//! - [`trig`]: a branch-free polynomial `sin_cos` (within 5e-16 of libm) for vectorised loops.
//! - [`warp`]: Lanczos3 resampling of image, variance and mask onto another pixel grid through
//!   a coarsely sampled mapping ([`warp::CoarseMap`]), flux-conserving.
//!
//! # Conventions
//! - **Quaternions** are `[f64; 4]` in **scalar-last** order `[x, y, z, w]`. `rotate(q, v)` is
//!   the active rotation `q v q*`; `mul(a, b)` applies `b` first. `q` and `−q` are the same
//!   rotation.
//! - **Attitude**: the boresight quaternion takes boresight-frame vectors to the sky frame of the
//!   attitude file (e.g. J2000 ecliptic). A detector's offset quaternion takes detector-frame
//!   vectors to the boresight frame, so `q_det = q_bore ⊗ q_offset`. The detector looks along
//!   its `ẑ` and is polarisation-sensitive along its `x̂`.
//! - **Time**: seconds as `f64`; sample `i` of a detector is at `t0 + i / rate` exactly (the rate
//!   is given, never inferred from time differences). Samples outside the attitude span are
//!   errors, not extrapolations.
//! - **Sky coordinates**: colatitude `θ` from `+ẑ`, longitude `φ` from `+x̂` towards `+ŷ`;
//!   HEALPix pixels as `u64`, RING or NESTED.
//! - **Polarisation**: `ψ` in the HEALPix/COSMO convention (from the meridian `e_θ` towards
//!   `e_φ`), detector response `½ (I + η (Q cos 2ψ + U sin 2ψ))`, weights `f64`.
//! - **Units**: velocities as `β = v/c` ([`aberration::Beta`]) or km/s; temperatures in K
//!   (thermodynamic); angles in radians unless a name says `_deg`.
//!
//! # Example
//! ```
//! use skypipe_core::attitude::{Attitude, SampleClock};
//! use skypipe_core::healpix::{Healpix, Ordering};
//! use skypipe_core::pointing::{Corrections, Detector, PointingKernel, PointingOutput};
//! use skypipe_core::{aberration::Beta, frames, quat};
//!
//! // A boresight spinning at 1 rpm about x̂, attitude at 8 Hz for 2 s.
//! let times: Vec<f64> = (0..=16).map(|i| i as f64 / 8.0).collect();
//! let quats: Vec<_> = times
//!     .iter()
//!     .map(|t| quat::from_axis_angle([1.0, 0.0, 0.0], t * std::f64::consts::TAU / 60.0).unwrap())
//!     .collect();
//! let attitude = Attitude::new(&times, &quats)?;
//! let det = Detector { offset: quat::IDENTITY, pol_efficiency: 0.9 };
//! let corrections = Corrections {
//!     aberration: Some(Beta::from_km_s([0.0, 30.0, 0.0])?),
//!     frame: Some(frames::ecliptic_to_galactic()),
//! };
//! let kernel = PointingKernel::new(&det, &corrections, Healpix::new(2048, Ordering::Ring)?)?;
//! let clock = SampleClock::new(0.0, 180.37)?;
//! let (mut pixels, mut weights) = (vec![0u64; 360], vec![[0.0; 3]; 360]);
//! kernel.run(&attitude, &clock, 0, PointingOutput { pixels: &mut pixels, weights: &mut weights, quats: None })?;
//! assert!(weights.iter().all(|w| w[0] == 0.5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod aberration;
pub mod attitude;
pub mod binning;
pub mod dense;
pub mod destripe;
pub mod dipole;
pub mod figure;
pub mod frames;
pub mod gainfit;
pub mod healpix;
pub mod plot;
pub mod pointing;
pub mod quat;
pub mod quicklook;
pub mod trig;
pub mod warp;
