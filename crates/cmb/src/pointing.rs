//! `skypipe-pointing`: dense detector pointing for one observation per unit.
//!
//! For every detector of the focal plane the attitude is interpolated to each sample (slerp
//! along the shorter arc), composed with the detector offset, corrected for aberration by the
//! satellite velocity and rotated to the output frame ([`skypipe_core::pointing::PointingKernel`]),
//! then written as HEALPix pixels and I/Q/U weights (and optionally θ/φ/ψ and quaternions) to
//! `RUN_DIR/pointing/obs=NNNN.h5`. Samples are processed in chunks of `chunk_samples`, so
//! memory does not grow with the length of an observation.

use crate::model::{
    AttitudeData, CmbError, DATASET_OBSERVATION, DATASET_POINTING, DetectorSpec, FocalPlane, Frame,
    ObsUnit, ObservationList, POINTING_FORMAT, obs_file_name, ordering_name, read_attitude,
    timestream_info, warn_if_obs_differs,
};
use serde::{Deserialize, Serialize};
use skypipe_core::aberration::Beta;
use skypipe_core::attitude::{Attitude, SampleClock};
use skypipe_core::healpix::{Healpix, Ordering};
use skypipe_core::pointing::{
    Corrections, Detector, PointingKernel, PointingOutput, quat_to_angles,
};
use skypipe_core::quat::Quat;
use skypipe_io::Durability;
use skypipe_io::hdf5::{H5Error, H5OutDataset, H5Reader, H5Writer};
use skypipe_stage::{
    Connections, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, fingerprint_of,
};
use std::path::{Path, PathBuf};

/// HEALPix ordering as written in configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderingName {
    /// RING.
    Ring,
    /// NESTED.
    Nested,
}

impl From<OrderingName> for Ordering {
    fn from(o: OrderingName) -> Self {
        match o {
            OrderingName::Ring => Ordering::Ring,
            OrderingName::Nested => Ordering::Nested,
        }
    }
}

/// The output frame of the pointing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFrame {
    /// The attitude's own frame (no rotation).
    Input,
    /// J2000 mean ecliptic.
    Ecliptic,
    /// FK5 J2000 equatorial.
    Equatorial,
    /// Galactic.
    Galactic,
}

impl OutputFrame {
    /// The output frame for an attitude in `input`.
    pub fn resolve(self, input: Frame) -> Frame {
        match self {
            OutputFrame::Input => input,
            OutputFrame::Ecliptic => Frame::Ecliptic,
            OutputFrame::Equatorial => Frame::Equatorial,
            OutputFrame::Galactic => Frame::Galactic,
        }
    }
}

/// The `[pointing]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PointingConfig {
    /// The observation list (`skypipe-cmb-observations/1`). Default `data/cmb/observations.json`.
    pub observations: PathBuf,
    /// HEALPix nside (power of two). Default 2048.
    pub nside: u64,
    /// `ring` (default) or `nested`.
    pub ordering: OrderingName,
    /// Output frame: `input`, `ecliptic`, `equatorial` or `galactic` (default).
    pub frame: OutputFrame,
    /// Correct aberration by the satellite velocity (default true).
    pub aberration: bool,
    /// Samples per chunk (bounds memory). Default 65536.
    pub chunk_samples: usize,
    /// Also write θ, φ, ψ per sample (default true; `skypipe-calibrate` needs θ and φ).
    pub angles: bool,
    /// Also write the detector quaternion per sample (default false).
    pub quats: bool,
    /// `double` (default: pixels int64, weights and angles float64) or `single` (pixels int32
    /// when `12·nside² < 2³¹`, i.e. nside ≤ 8192, else int64; weights and θ, φ, ψ float32;
    /// quaternions stay float64): about half the bytes. Readers accept either layout.
    #[serde(skip_serializing_if = "OutputPrecision::is_double")]
    pub output_precision: OutputPrecision,
}

/// The numeric precision of the pointing outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputPrecision {
    /// Pixels int64, weights and angles float64.
    #[default]
    Double,
    /// Pixels int32 where nside allows, weights and angles float32.
    Single,
}

impl OutputPrecision {
    fn is_double(&self) -> bool {
        *self == Self::Double
    }
}

/// Whether every pixel index of an nside fits an int32 (`12·nside² < 2³¹`).
pub fn pixels_fit_i32(nside: u64) -> bool {
    12u128 * u128::from(nside) * u128::from(nside) < 1u128 << 31
}

/// One pointing output dataset, written in the configured precision.
enum OutDataset {
    Double(H5OutDataset),
    Single(H5OutDataset),
}

impl OutDataset {
    fn create_float(
        w: &H5Writer,
        name: &str,
        shape: &[usize],
        single: bool,
    ) -> Result<Self, H5Error> {
        Ok(if single {
            Self::Single(w.dataset::<f32>(name, shape)?)
        } else {
            Self::Double(w.dataset::<f64>(name, shape)?)
        })
    }

    fn dataset(&self) -> &H5OutDataset {
        match self {
            Self::Double(d) | Self::Single(d) => d,
        }
    }

    fn write_f64(&self, start: usize, data: &[f64]) -> Result<(), H5Error> {
        match self {
            Self::Double(d) => d.write_rows(start, data),
            Self::Single(d) => {
                let narrow: Vec<f32> = data.iter().map(|&v| v as f32).collect();
                d.write_rows(start, &narrow)
            }
        }
    }

    fn write_f64_3(&self, start: usize, data: &[[f64; 3]]) -> Result<(), H5Error> {
        match self {
            Self::Double(d) => d.write_rows_2d(start, data),
            Self::Single(d) => {
                let narrow: Vec<[f32; 3]> = data.iter().map(|r| r.map(|v| v as f32)).collect();
                d.write_rows_2d(start, &narrow)
            }
        }
    }

    fn write_pixels(&self, start: usize, data: &[u64]) -> Result<(), H5Error> {
        match self {
            Self::Double(d) => d.write_rows(start, data),
            Self::Single(d) => {
                // The grid's pixels are below 12·nside² < 2³¹ (checked before choosing int32).
                let narrow: Vec<i32> = data.iter().map(|&p| p as i32).collect();
                d.write_rows(start, &narrow)
            }
        }
    }
}

impl Default for PointingConfig {
    fn default() -> Self {
        Self {
            observations: PathBuf::from("data/cmb/observations.json"),
            nside: 2048,
            ordering: OrderingName::Ring,
            frame: OutputFrame::Galactic,
            aberration: true,
            chunk_samples: 65536,
            angles: true,
            quats: false,
            output_precision: OutputPrecision::Double,
        }
    }
}

/// Pointing of one chunk of samples of one detector.
#[derive(Debug, Default, Clone)]
pub struct ChunkPointing {
    /// Pixels.
    pub pixels: Vec<u64>,
    /// `(I, Q, U)` weights.
    pub weights: Vec<[f64; 3]>,
    /// Detector quaternions (detector → output frame, after aberration).
    pub quats: Vec<Quat>,
}

/// Everything needed to compute one detector's pointing in an observation.
#[derive(Debug, Clone, Copy)]
pub struct PointingSetup<'a> {
    /// Validated attitude (kernel form).
    pub attitude: &'a Attitude,
    /// Attitude with velocities.
    pub data: &'a AttitudeData,
    /// Rotation from the attitude frame to the output frame.
    pub frame: Quat,
    /// Correct aberration by the satellite velocity.
    pub aberration: bool,
    /// The output grid.
    pub grid: Healpix,
}

impl PointingSetup<'_> {
    /// Computes samples `first .. first + len` of `det` on `clock` into `out` (resized). The
    /// aberration uses the velocity at the middle sample of the chunk.
    pub fn chunk(
        &self,
        det: &DetectorSpec,
        clock: &SampleClock,
        first: u64,
        len: usize,
        out: &mut ChunkPointing,
    ) -> Result<(), skypipe_core::pointing::PointingError> {
        out.pixels.resize(len, 0);
        out.weights.resize(len, [0.0; 3]);
        out.quats.resize(len, [0.0; 4]);
        let aberration = if self.aberration && len > 0 {
            let v = self
                .data
                .velocities(clock.t0(), clock.rate(), first + (len / 2) as u64, 1)[0];
            Some(Beta::from_km_s(v).unwrap_or(Beta::zero()))
        } else {
            None
        };
        let corrections = Corrections {
            aberration,
            frame: Some(self.frame),
        };
        let detector = Detector {
            offset: det.offset(),
            pol_efficiency: det.pol_efficiency,
        };
        let kernel = PointingKernel::new(&detector, &corrections, self.grid)?;
        kernel.run(
            self.attitude,
            clock,
            first,
            PointingOutput {
                pixels: &mut out.pixels,
                weights: &mut out.weights,
                quats: Some(&mut out.quats),
            },
        )
    }
}

/// The pointing stage.
#[derive(Debug, Clone)]
pub struct Pointing {
    config: PointingConfig,
    list: ObservationList,
    focal_plane: FocalPlane,
    grid: Healpix,
}

impl Pointing {
    /// Checks the configuration and reads the observation list and the focal plane (errors
    /// here stop the run before any unit starts).
    pub fn new(config: PointingConfig) -> Result<Self, String> {
        let grid = Healpix::new(config.nside, config.ordering.into())
            .map_err(|e| format!("pointing.nside: {e}"))?;
        if config.chunk_samples == 0 {
            return Err("pointing.chunk_samples must be at least 1".into());
        }
        let list = ObservationList::load(&config.observations).map_err(|e| e.to_string())?;
        let focal_plane = FocalPlane::read(&list.focal_plane).map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            list,
            focal_plane,
            grid,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PointingConfig {
        &self.config
    }

    /// Computes and writes the pointing of observation `obs` to `out` (atomically).
    pub fn process(&self, obs: u32, out: &Path, durability: Durability) -> Result<(), CmbError> {
        let entry = self.list.entry(obs).ok_or_else(|| CmbError::List {
            path: self.config.observations.clone(),
            message: format!("no observation {obs}"),
        })?;
        let r = H5Reader::open(&entry.file)?;
        warn_if_obs_differs(&r, obs);
        let path = r.path().to_path_buf();
        let data = read_attitude(&r)?;
        let attitude = Attitude::new(&data.times, &data.quats)
            .map_err(|e| H5Error::invalid(&path, "attitude", e.to_string()))?;
        let out_frame = self.config.frame.resolve(data.frame);
        // Validate every detector before computing anything.
        let mut clocks = Vec::new();
        for det in &self.focal_plane.detectors {
            let group = format!("detectors/{}", det.name);
            let info = timestream_info(&r, &group, "signal", Some(det.rate_hz))?;
            let clock = SampleClock::new(info.t0, info.rate_hz)
                .map_err(|e| H5Error::invalid(&path, &group, e.to_string()))?;
            attitude
                .check_samples(&clock, 0, info.len)
                .map_err(|e| H5Error::invalid(&path, &format!("{group}/signal"), e.to_string()))?;
            clocks.push((clock, info.len));
        }
        drop(r);
        let setup = PointingSetup {
            attitude: &attitude,
            data: &data,
            frame: data.frame.rotation_to(out_frame),
            aberration: self.config.aberration,
            grid: self.grid,
        };
        let w = H5Writer::create(out, durability)?;
        w.attr_str("", "format", POINTING_FORMAT)?;
        w.attr_i64("", "obs", i64::from(obs))?;
        w.attr_i64("", "nside", self.grid.nside() as i64)?;
        w.attr_str("", "ordering", ordering_name(self.grid.ordering()))?;
        w.attr_str("", "frame", out_frame.as_str())?;
        w.attr_str("", "attitude_frame", data.frame.as_str())?;
        w.attr_i64("", "aberration", i64::from(self.config.aberration))?;
        let mut buf = ChunkPointing::default();
        for (det, &(clock, len)) in self.focal_plane.detectors.iter().zip(&clocks) {
            let group = format!("detectors/{}", det.name);
            w.group(&group)?;
            w.attr_f64(&group, "t0", clock.t0())?;
            w.attr_f64(&group, "rate_hz", clock.rate())?;
            w.attr_f64(&group, "pol_efficiency", det.pol_efficiency)?;
            let single = self.config.output_precision == OutputPrecision::Single;
            let pixels_name = format!("{group}/pixels");
            let pixels = if single && pixels_fit_i32(self.grid.nside()) {
                OutDataset::Single(w.dataset::<i32>(&pixels_name, &[len])?)
            } else {
                OutDataset::Double(w.dataset::<u64>(&pixels_name, &[len])?)
            };
            let weights =
                OutDataset::create_float(&w, &format!("{group}/weights"), &[len, 3], single)?;
            weights.dataset().attr_str("columns", "I,Q,U")?;
            let angles = if self.config.angles {
                let mk = |n: &str| -> Result<_, H5Error> {
                    let d = OutDataset::create_float(&w, &format!("{group}/{n}"), &[len], single)?;
                    d.dataset().attr_str("units", "rad")?;
                    Ok(d)
                };
                Some((mk("theta")?, mk("phi")?, mk("psi")?))
            } else {
                None
            };
            let quats = if self.config.quats {
                Some(w.dataset::<f64>(&format!("{group}/quat"), &[len, 4])?)
            } else {
                None
            };
            let mut start = 0usize;
            let (mut th, mut ph, mut ps) = (Vec::new(), Vec::new(), Vec::new());
            while start < len {
                let n = self.config.chunk_samples.min(len - start);
                setup
                    .chunk(det, &clock, start as u64, n, &mut buf)
                    .map_err(|e| {
                        H5Error::invalid(&path, &format!("{group}/signal"), e.to_string())
                    })?;
                pixels.write_pixels(start, &buf.pixels)?;
                weights.write_f64_3(start, &buf.weights)?;
                if let Some((t, p, s)) = &angles {
                    th.clear();
                    ph.clear();
                    ps.clear();
                    for q in &buf.quats {
                        let (a, b, c) = quat_to_angles(*q);
                        th.push(a);
                        ph.push(b);
                        ps.push(c);
                    }
                    t.write_f64(start, &th)?;
                    p.write_f64(start, &ph)?;
                    s.write_f64(start, &ps)?;
                }
                if let Some(q) = &quats {
                    q.write_rows_2d(start, &buf.quats)?;
                }
                start += n;
            }
        }
        w.commit()?;
        Ok(())
    }
}

/// `RUN_DIR/pointing/obs=NNNN.h5`.
pub fn output_path(run_dir: &Path, obs: u32) -> PathBuf {
    run_dir.join("pointing").join(obs_file_name(obs))
}

/// The planned units of an observation list (cost hint: samples per detector).
pub fn plan_list(list: &ObservationList) -> Vec<PlannedUnit<ObsUnit>> {
    list.observations
        .iter()
        .map(|o| {
            let unit = PlannedUnit::new(ObsUnit { obs: o.obs });
            match o.samples {
                Some(s) => unit.cost(s as f64),
                None => unit,
            }
        })
        .collect()
}

/// Durability of a unit's outputs.
pub fn durability(ctx: &UnitContext) -> Durability {
    if ctx.durable {
        Durability::Synced
    } else {
        Durability::ProcessCrashOnly
    }
}

impl Stage for Pointing {
    type Unit = ObsUnit;

    fn name(&self) -> &'static str {
        "pointing"
    }

    fn config_fingerprint(&self) -> String {
        fingerprint_of(&self.config)
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<ObsUnit>>, PlanError> {
        Ok(plan_list(&self.list))
    }

    fn run(&self, unit: &ObsUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let out = output_path(&ctx.run_dir, unit.obs);
        self.process(unit.obs, &out, durability(ctx))
            .map_err(CmbError::into_failure)?;
        Ok(Outcome::Done)
    }

    fn connections(&self, unit: &ObsUnit, run_dir: &Path) -> Connections {
        let mut c = Connections::new();
        if let Some(entry) = self.list.entry(unit.obs) {
            c = c.prerequisite(DATASET_OBSERVATION, &entry.file);
        }
        c.output(DATASET_POINTING, output_path(run_dir, unit.obs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_core::quat::from_axis_angle;

    fn setup_data() -> (AttitudeData, DetectorSpec) {
        let times: Vec<f64> = (0..=80).map(|k| 1.7e9 + f64::from(k) / 8.0).collect();
        let quats = times
            .iter()
            .map(|t| from_axis_angle([1.0, 0.0, 0.0], (t - 1.7e9) * TAU_PER_MIN).unwrap())
            .collect();
        let data = AttitudeData {
            velocity: vec![[0.0, 29.8, 0.0]; times.len()],
            times,
            quats,
            frame: Frame::Ecliptic,
        };
        let det = DetectorSpec {
            name: "d".into(),
            quat: from_axis_angle([0.0, 1.0, 0.0], 0.02).unwrap(),
            pol_angle_deg: 22.5,
            pol_efficiency: 0.9,
            rate_hz: 100.0,
            net_k_sqrt_s: 0.0,
            fknee_hz: 0.0,
            gain: None,
            freq_ghz: None,
        };
        (data, det)
    }

    const TAU_PER_MIN: f64 = std::f64::consts::TAU / 60.0;

    #[test]
    fn chunked_pointing_equals_one_pass() {
        let (data, det) = setup_data();
        let attitude = Attitude::new(&data.times, &data.quats).unwrap();
        let clock = SampleClock::new(1.7e9 + 0.01, 100.0).unwrap();
        let setup = PointingSetup {
            attitude: &attitude,
            data: &data,
            frame: Frame::Ecliptic.rotation_to(Frame::Galactic),
            aberration: false,
            grid: Healpix::new(256, Ordering::Nested).unwrap(),
        };
        let mut whole = ChunkPointing::default();
        setup.chunk(&det, &clock, 0, 900, &mut whole).unwrap();
        let mut part = ChunkPointing::default();
        let mut start = 0;
        for n in [1, 63, 64, 65, 200, 507] {
            setup
                .chunk(&det, &clock, start as u64, n, &mut part)
                .unwrap();
            assert_eq!(part.pixels, whole.pixels[start..start + n]);
            assert_eq!(part.weights, whole.weights[start..start + n]);
            assert_eq!(part.quats, whole.quats[start..start + n]);
            start += n;
        }
        assert_eq!(start, 900);
        // Samples beyond the attitude span are refused, not extrapolated.
        let e = setup.chunk(&det, &clock, 0, 1001, &mut part).unwrap_err();
        assert!(e.to_string().contains("outside the attitude span"), "{e}");
        // Aberration moves directions by about |β| = 1e-4 rad.
        let ab = PointingSetup {
            aberration: true,
            ..setup
        };
        let mut moved = ChunkPointing::default();
        ab.chunk(&det, &clock, 0, 900, &mut moved).unwrap();
        let shift = |a: Quat, b: Quat| {
            let (da, _) = skypipe_core::pointing::los_and_orientation(a);
            let (db, _) = skypipe_core::pointing::los_and_orientation(b);
            (da[0] * db[0] + da[1] * db[1] + da[2] * db[2])
                .min(1.0)
                .acos()
        };
        let max = (0..900)
            .map(|k| shift(moved.quats[k], whole.quats[k]))
            .fold(0.0, f64::max);
        assert!(max > 5e-5 && max < 1.1e-4, "{max}");
    }
}
