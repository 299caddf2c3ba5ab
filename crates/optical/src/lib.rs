//! Imaging kernels and the single-frame stage of skypipe.
//!
//! Pure kernels on row-major [`image::Image`]s, one job per module:
//! [`isr`] (overscan and trim, bias, flat, gain per amplifier, saturation and bad-pixel masks,
//! variance) with the readout geometry of [`amplifiers`] (sections, gains, read noises),
//! [`background`] (mesh background with interpolation), [`cosmic`] (cosmic-ray rejection),
//! [`detect`] (PSF-matched filter, footprints, watershed deblending) and [`measure`]
//! (centroids, aperture and PSF fluxes, moments, flags, PSF size). [`pipeline`] chains them
//! for one CCD, in memory. [`calibration`] fits a CCD's WCS and zero point to the reference
//! catalogue (kernels in `skypipe-astrometry`), and [`exposure`] one visit's CCDs at once. [`wcs`] is the TAN projection used for sky coordinates.
//! [`timing`] records the CPU time of each step for logs and benchmarks.
//! [`sim`] writes the simulated camera (`skypipe-sim image`), and [`singleframe`] is the
//! engine stage (`skypipe-singleframe`) that reads raw CCDs, runs the chain, writes the
//! calibrated exposure and source catalogue, and records each CCD in the registry.
//!
//! **Invariant:** the kernels do no I/O and know no MPI; inputs are validated when read
//! (`skypipe_io::fits`), so kernels only `debug_assert!`.
//!
//! ```
//! use skypipe_optical::image::Image;
//! use skypipe_optical::pipeline::{process, ChainParams, Instrument};
//! let raw = Image::filled(64, 64, 1000.0f32);
//! let inst = Instrument { gain: 1.0, read_noise: 5.0, saturate: 60000.0 };
//! let out = process(raw, None, None, &inst, &ChainParams::default());
//! assert!(out.sources.is_empty());
//! assert!(out.image.data.iter().all(|v| v.abs() < 1e-2));
//! ```

pub mod amplifiers;
pub mod background;
pub mod calibration;
pub mod cosmic;
pub mod detect;
pub mod exposure;
pub mod image;
pub mod ingest;
pub mod isr;
pub mod measure;
pub mod pipeline;
pub mod psfprofile;
pub mod sim;
pub mod singleframe;
pub mod timing;
pub mod wcs;

/// The CCD registry this stage writes (re-exported for callers and tests of the stage).
pub use skypipe_registry as registry;
