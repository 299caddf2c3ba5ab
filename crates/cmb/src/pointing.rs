//! `skypipe-pointing`: dense detector pointing for one observation per unit.
//!
//! For every detector of the focal plane the attitude is interpolated to each sample (slerp
//! along the shorter arc), composed with the detector offset, corrected for aberration by the
//! satellite velocity and rotated to the output frame ([`skypipe_core::pointing::PointingKernel`]),
//! then written as HEALPix pixels and I/Q/U weights (and optionally θ/φ/ψ and quaternions) to
//! `RUN_DIR/pointing/obs=NNNN.h5`. Samples are processed in chunks of `chunk_samples`, so
//! memory does not grow with the length of an observation.

use crate::model::{
    AttitudeData, CmbError, ConfigError, DATASET_OBSERVATION, DATASET_POINTING, DetectorSpec,
    FocalPlane, Frame, ObsUnit, ObservationList, POINTING_FORMAT, TimestreamInfo, obs_file_name,
    read_attitude, timestream_info, warn_if_obs_differs,
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
use skypipe_io::provenance::Provenance;
use skypipe_stage::{
    Connections, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure, fingerprint_of,
};
use std::path::{Path, PathBuf};

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
    pub ordering: Ordering,
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

/// The `[pointing]` keys that decide pixels, weights and angles: what a reader that expands
/// pointing from the attitude itself (`pointing = "expand"` in `[calibrate]` / `[mapmake]`)
/// needs to reproduce the pointing stage's double-precision outputs bit for bit. Defaults are
/// the pointing stage's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PointingGeometry {
    /// HEALPix nside (power of two). Default 2048.
    pub nside: u64,
    /// `ring` (default) or `nested`.
    pub ordering: Ordering,
    /// Output frame: `input`, `ecliptic`, `equatorial` or `galactic` (default).
    pub frame: OutputFrame,
    /// Correct aberration by the satellite velocity (default true).
    pub aberration: bool,
    /// Samples per chunk; the aberration velocity is taken at each chunk's middle sample, so
    /// this must equal the pointing stage's value for identical results. Default 65536.
    pub chunk_samples: usize,
}

impl Default for PointingGeometry {
    fn default() -> Self {
        PointingConfig::default().geometry()
    }
}

impl PointingGeometry {
    /// The output grid, or an error naming `table` (e.g. `calibrate.expand`).
    pub fn grid(&self, table: &str) -> Result<Healpix, ConfigError> {
        if self.chunk_samples == 0 {
            return Err(ConfigError::value(
                format!("{table}.chunk_samples"),
                "must be at least 1",
            ));
        }
        Healpix::new(self.nside, self.ordering).map_err(|source| ConfigError::Nside {
            key: format!("{table}.nside"),
            source,
        })
    }
}

/// Where `skypipe-calibrate` and `skypipe-mapmake` get pointing from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointingSource {
    /// The pointing stage's files (default).
    #[default]
    File,
    /// Expanded per chunk from the observation's attitude and the focal plane, with the
    /// `expand` sub-table's geometry: no pointing files are read.
    Expand,
}

impl PointingSource {
    /// Whether this is the default (left out of configuration fingerprints).
    pub fn is_file(&self) -> bool {
        *self == Self::File
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
            ordering: Ordering::Ring,
            frame: OutputFrame::Galactic,
            aberration: true,
            chunk_samples: 65536,
            angles: true,
            quats: false,
            output_precision: OutputPrecision::Double,
        }
    }
}

impl PointingConfig {
    /// The keys that decide the pointing's values.
    pub fn geometry(&self) -> PointingGeometry {
        PointingGeometry {
            nside: self.nside,
            ordering: self.ordering,
            frame: self.frame,
            aberration: self.aberration,
            chunk_samples: self.chunk_samples,
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
    /// θ (rad), filled by [`ChunkPointing::fill_angles`].
    pub theta: Vec<f64>,
    /// φ (rad), filled by [`ChunkPointing::fill_angles`].
    pub phi: Vec<f64>,
    /// ψ (rad), filled by [`ChunkPointing::fill_angles`].
    pub psi: Vec<f64>,
}

impl ChunkPointing {
    /// θ, φ, ψ of every quaternion of the chunk ([`quat_to_angles`]).
    pub fn fill_angles(&mut self) {
        self.theta.clear();
        self.phi.clear();
        self.psi.clear();
        for q in &self.quats {
            let (a, b, c) = quat_to_angles(*q);
            self.theta.push(a);
            self.phi.push(b);
            self.psi.push(c);
        }
    }
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
            let v = self.data.velocities(
                clock.t0(),
                clock.rate(),
                clock.first_sample() + first + (len / 2) as u64,
                1,
            )[0];
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

/// One observation's pointing, ready to be expanded chunk by chunk from its attitude: the
/// function the pointing stage writes its files with and the readers (`pointing = "expand"`)
/// use instead of those files, so both give the same values by construction.
///
/// Chunks are aligned on multiples of `chunk_samples` (the aberration velocity of a chunk is
/// taken at its middle sample): [`ObservationPointing::expand_chunk`] computes aligned chunks,
/// [`DetectorExpander`] serves any range from them.
#[derive(Debug, Clone)]
pub struct ObservationPointing {
    attitude: Attitude,
    data: AttitudeData,
    out_frame: Frame,
    grid: Healpix,
    aberration: bool,
    chunk_samples: usize,
    detectors: Vec<(DetectorSpec, SampleClock, usize)>,
}

impl ObservationPointing {
    /// Reads and validates the attitude of the open observation file `raw` and every
    /// detector's clock (finite, the focal plane's rate, samples inside the attitude span).
    pub fn open(
        raw: &H5Reader,
        focal_plane: &FocalPlane,
        geometry: &PointingGeometry,
    ) -> Result<Self, CmbError> {
        let path = raw.path().to_path_buf();
        let grid = Healpix::new(geometry.nside, geometry.ordering)
            .map_err(|e| H5Error::invalid(&path, "@nside", e.to_string()))?;
        let data = read_attitude(raw)?;
        let attitude = Attitude::new(&data.times, &data.quats)
            .map_err(|e| H5Error::invalid(&path, "attitude", e.to_string()))?;
        let mut detectors = Vec::new();
        for det in &focal_plane.detectors {
            let group = format!("detectors/{}", det.name);
            let info = timestream_info(raw, &group, "signal", Some(det.rate_hz))?;
            let clock = info
                .clock()
                .map_err(|e| H5Error::invalid(&path, &group, e.to_string()))?;
            attitude
                .check_samples(&clock, 0, info.len)
                .map_err(|e| H5Error::invalid(&path, &format!("{group}/signal"), e.to_string()))?;
            detectors.push((det.clone(), clock, info.len));
        }
        Ok(Self {
            out_frame: geometry.frame.resolve(data.frame),
            attitude,
            data,
            grid,
            aberration: geometry.aberration,
            chunk_samples: geometry.chunk_samples.max(1),
            detectors,
        })
    }

    /// The attitude with its velocities.
    pub fn attitude(&self) -> &AttitudeData {
        &self.data
    }

    /// The frame of the pointing.
    pub fn out_frame(&self) -> Frame {
        self.out_frame
    }

    /// The pixel grid.
    pub fn grid(&self) -> Healpix {
        self.grid
    }

    /// Whether aberration is corrected.
    pub fn aberration(&self) -> bool {
        self.aberration
    }

    /// Samples per aligned chunk.
    pub fn chunk_samples(&self) -> usize {
        self.chunk_samples
    }

    /// Detector `d` (focal-plane order): its spec, clock and sample count.
    pub fn detector(&self, d: usize) -> (&DetectorSpec, SampleClock, usize) {
        let (spec, clock, len) = &self.detectors[d];
        (spec, *clock, *len)
    }

    /// Number of detectors.
    pub fn detector_count(&self) -> usize {
        self.detectors.len()
    }

    /// Computes aligned chunk `index` of detector `d` (samples `index·chunk_samples ..`, at
    /// most `chunk_samples` of them) into `out`, with θ/φ/ψ when `angles`; returns its first
    /// sample.
    pub fn expand_chunk(
        &self,
        d: usize,
        index: usize,
        angles: bool,
        out: &mut ChunkPointing,
    ) -> Result<usize, skypipe_core::pointing::PointingError> {
        let (det, clock, len) = self.detector(d);
        let start = (index * self.chunk_samples).min(len);
        let n = self.chunk_samples.min(len - start);
        let setup = PointingSetup {
            attitude: &self.attitude,
            data: &self.data,
            frame: self.data.frame.rotation_to(self.out_frame),
            aberration: self.aberration,
            grid: self.grid,
        };
        setup.chunk(det, &clock, start as u64, n, out)?;
        if angles {
            out.fill_angles();
        }
        Ok(start)
    }
}

/// Serves any sample range of one detector's expanded pointing, computing the aligned chunks
/// that cover it (the last one is kept, so consecutive ranges compute each chunk once).
#[derive(Debug)]
pub struct DetectorExpander<'a> {
    obs: &'a ObservationPointing,
    detector: usize,
    angles: bool,
    current: Option<(usize, usize)>,
    buf: ChunkPointing,
}

impl<'a> DetectorExpander<'a> {
    /// An expander of detector `d` of `obs`, with θ/φ/ψ when `angles`.
    pub fn new(obs: &'a ObservationPointing, d: usize, angles: bool) -> Self {
        Self {
            obs,
            detector: d,
            angles,
            current: None,
            buf: ChunkPointing::default(),
        }
    }

    /// Appends samples `start .. start + n` to `out` (whose vectors are cleared first).
    pub fn range(
        &mut self,
        start: usize,
        n: usize,
        out: &mut ChunkPointing,
    ) -> Result<(), skypipe_core::pointing::PointingError> {
        out.pixels.clear();
        out.weights.clear();
        out.quats.clear();
        out.theta.clear();
        out.phi.clear();
        out.psi.clear();
        let step = self.obs.chunk_samples;
        let end = start + n;
        let mut at = start;
        while at < end {
            let index = at / step;
            let first = match self.current {
                Some((i, first)) if i == index => first,
                _ => {
                    let first =
                        self.obs
                            .expand_chunk(self.detector, index, self.angles, &mut self.buf)?;
                    self.current = Some((index, first));
                    first
                }
            };
            let stop = end.min(first + self.buf.pixels.len());
            let r = at - first..stop - first;
            if r.is_empty() {
                // Beyond the detector's samples: let the kernel say so.
                let (_, clock, _) = self.obs.detector(self.detector);
                return self
                    .obs
                    .attitude
                    .check_samples(&clock, at as u64, end - at)
                    .map_err(Into::into);
            }
            out.pixels.extend_from_slice(&self.buf.pixels[r.clone()]);
            out.weights.extend_from_slice(&self.buf.weights[r.clone()]);
            out.quats.extend_from_slice(&self.buf.quats[r.clone()]);
            if self.angles {
                out.theta.extend_from_slice(&self.buf.theta[r.clone()]);
                out.phi.extend_from_slice(&self.buf.phi[r.clone()]);
                out.psi.extend_from_slice(&self.buf.psi[r]);
            }
            at = stop;
        }
        Ok(())
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
    pub fn new(config: PointingConfig) -> Result<Self, ConfigError> {
        let grid =
            Healpix::new(config.nside, config.ordering).map_err(|source| ConfigError::Nside {
                key: "pointing.nside".into(),
                source,
            })?;
        if config.chunk_samples == 0 {
            return Err(ConfigError::value(
                "pointing.chunk_samples",
                "must be at least 1",
            ));
        }
        let list = ObservationList::load(&config.observations)?;
        let focal_plane = FocalPlane::read(&list.focal_plane)?;
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

    /// Computes and writes the pointing of observation `obs` to `out` (atomically), with
    /// `provenance` in its `/provenance` attributes.
    pub fn process(
        &self,
        obs: u32,
        out: &Path,
        provenance: &Provenance,
        durability: Durability,
    ) -> Result<(), CmbError> {
        let entry = self.list.entry(obs).ok_or_else(|| CmbError::List {
            path: self.config.observations.clone(),
            message: format!("no observation {obs}"),
        })?;
        let r = H5Reader::open(&entry.file)?;
        warn_if_obs_differs(&r, obs);
        let path = r.path().to_path_buf();
        // Validates the attitude and every detector before computing anything.
        let expand = ObservationPointing::open(&r, &self.focal_plane, &self.config.geometry())?;
        drop(r);
        let (data, out_frame) = (expand.attitude(), expand.out_frame());
        let w = H5Writer::create(out, durability)?;
        w.attr_str("", "format", POINTING_FORMAT)?;
        w.attr_i64("", "obs", i64::from(obs))?;
        w.attr_i64("", "nside", self.grid.nside() as i64)?;
        w.attr_str("", "ordering", self.grid.ordering().header_name())?;
        w.attr_str("", "frame", out_frame.as_str())?;
        w.attr_str("", "attitude_frame", data.frame.as_str())?;
        w.attr_i64("", "aberration", i64::from(self.config.aberration))?;
        provenance.write_hdf5(&w)?;
        let mut buf = ChunkPointing::default();
        for d in 0..expand.detector_count() {
            let (det, clock, len) = expand.detector(d);
            let group = format!("detectors/{}", det.name);
            w.group(&group)?;
            let info = TimestreamInfo {
                t0: clock.t0(),
                first_sample: clock.first_sample(),
                rate_hz: clock.rate(),
                len,
            };
            info.write_clock(&w, &group)?;
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
            for index in 0..len.div_ceil(self.config.chunk_samples) {
                let start = expand
                    .expand_chunk(d, index, angles.is_some(), &mut buf)
                    .map_err(|e| {
                        H5Error::invalid(&path, &format!("{group}/signal"), e.to_string())
                    })?;
                pixels.write_pixels(start, &buf.pixels)?;
                weights.write_f64_3(start, &buf.weights)?;
                if let Some((t, p, s)) = &angles {
                    t.write_f64(start, &buf.theta)?;
                    p.write_f64(start, &buf.phi)?;
                    s.write_f64(start, &buf.psi)?;
                }
                if let Some(q) = &quats {
                    q.write_rows_2d(start, &buf.quats)?;
                }
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
        let provenance = Provenance::of_unit(self, unit, &ctx.run_dir);
        self.process(unit.obs, &out, &provenance, durability(ctx))
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
    fn expanded_ranges_are_cut_from_the_aligned_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = crate::sim::SimConfig::preset(crate::sim::Size::Tiny);
        c.observations = 1;
        c.obs_duration_s = 20.0;
        c.detector_pairs = 1;
        crate::sim::simulate(&c, dir.path()).unwrap();
        let list = ObservationList::load(&dir.path().join("observations.json")).unwrap();
        let fp = FocalPlane::read(&list.focal_plane).unwrap();
        let geometry = PointingGeometry {
            nside: 256,
            chunk_samples: 700,
            ..Default::default()
        };
        let raw = H5Reader::open(&list.observations[0].file).unwrap();
        let obs = ObservationPointing::open(&raw, &fp, &geometry).unwrap();
        let (_, clock, len) = obs.detector(1);
        assert!(
            clock.t0() < 1.0,
            "the simulator counts times from an integer epoch"
        );
        // The aligned chunks, end to end (aberration on: each chunk's velocity is its own).
        let mut whole = ChunkPointing::default();
        let mut buf = ChunkPointing::default();
        for index in 0..len.div_ceil(700) {
            let start = obs.expand_chunk(1, index, true, &mut buf).unwrap();
            assert_eq!(start, whole.pixels.len());
            whole.pixels.extend_from_slice(&buf.pixels);
            whole.weights.extend_from_slice(&buf.weights);
            whole.theta.extend_from_slice(&buf.theta);
            whole.psi.extend_from_slice(&buf.psi);
        }
        assert_eq!(whole.pixels.len(), len);
        // Ranges across chunk boundaries, of any length, are cut from them.
        let mut expander = DetectorExpander::new(&obs, 1, true);
        let mut start = 0;
        for n in [1, 699, 1, 1400, 333, 1000] {
            expander.range(start, n, &mut buf).unwrap();
            let r = start..start + n;
            assert_eq!(buf.pixels, whole.pixels[r.clone()]);
            assert_eq!(buf.weights, whole.weights[r.clone()]);
            assert_eq!(buf.theta, whole.theta[r.clone()]);
            assert_eq!(buf.psi, whole.psi[r]);
            start += n;
        }
        // A range beyond the detector's samples is refused.
        assert!(expander.range(len - 10, 20, &mut buf).is_err());
    }

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
