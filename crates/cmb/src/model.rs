//! The CMB timestream data model: observation list, focal plane, observation files, maps and
//! gain tables, read and validated at the I/O boundary (layouts in `docs/formats.md`, `## CMB`).
//!
//! Every reader checks shapes and values and fails with an error naming the file and the
//! dataset: the stages turn it into a bad-input failure of the unit.

use serde::{Deserialize, Serialize};
use skypipe_core::attitude::{SampleClock, validate_attitude};
use skypipe_core::healpix;
use skypipe_core::quat::{self, Quat};
use skypipe_io::hdf5::{H5Error, H5Reader, H5Writer};
use skypipe_stage::{KeyError, UnitId, WorkUnit};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `format` of an observation list.
pub const OBSERVATIONS_FORMAT: &str = "skypipe-cmb-observations/1";
/// Root `format` attribute of an observation file.
pub const OBS_FORMAT: &str = "skypipe-cmb-obs/1";
/// Root `format` attribute of a focal-plane file.
pub const FOCALPLANE_FORMAT: &str = "skypipe-cmb-focalplane/1";
/// Root `format` attribute of a pointing output.
pub const POINTING_FORMAT: &str = "skypipe-cmb-pointing/1";
/// Root `format` attribute of a calibrated-timestream output.
pub const CALIBRATED_FORMAT: &str = "skypipe-cmb-calibrated/1";
/// Root `format` attribute of a HEALPix I/Q/U map file.
pub const MAP_FORMAT: &str = "skypipe-cmb-map/1";
/// Root `format` attribute of a gain table.
pub const GAINS_FORMAT: &str = "skypipe-cmb-gains/1";

/// Flag bit set by `skypipe-calibrate` on a sample whose raw value is NaN or infinite.
pub const FLAG_NONFINITE: u8 = 0x80;

/// Any error of the CMB data model: an HDF5 problem naming file and dataset, or a bad list.
#[derive(Debug, thiserror::Error)]
pub enum CmbError {
    /// Reading, validating or writing an HDF5 file.
    #[error(transparent)]
    H5(#[from] H5Error),
    /// Reading or validating a FITS file (a HEALPix sky model).
    #[error(transparent)]
    Fits(#[from] skypipe_io::fits::FitsError),
    /// The observation list is unreadable or inconsistent.
    #[error("{path}: {message}")]
    List {
        /// The list file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The sky model could not be read (it is read once, by the first unit that needs it).
    #[error("{path}: sky model: {source}")]
    SkyModel {
        /// The sky model file.
        path: PathBuf,
        /// Why it could not be read (shared by the units of a process, which read it once).
        #[source]
        source: std::sync::Arc<CmbError>,
    },
}

impl CmbError {
    /// Whether retrying could help (a failed write or commit), as opposed to bad input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CmbError::H5(H5Error::Write { .. } | H5Error::Commit(_))
        )
    }

    /// The unit failure for this error: transient for failed writes, bad-input otherwise.
    pub fn into_failure(self) -> skypipe_stage::UnitFailure {
        if self.is_transient() {
            skypipe_stage::UnitFailure::transient(self)
        } else {
            skypipe_stage::UnitFailure::bad_input(self)
        }
    }
}

/// A `[pointing]`, `[calibrate]` or `[mapmake]` table the stage refuses, or an input it reads
/// when it is built (observation list, focal plane, gain table); each names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of range, or conflicts with another key.
    #[error(transparent)]
    Value(#[from] KeyError),
    /// An `nside` that is not a valid HEALPix resolution.
    #[error("{key}: {source}")]
    Nside {
        /// The key, with its table.
        key: String,
        /// Why.
        #[source]
        source: skypipe_core::healpix::HealpixError,
    },
    /// A detector lacks what a key needs of it.
    #[error("{path}: detector {detector} has no freq_ghz (needed by {key} = true)")]
    NoFrequency {
        /// The focal plane.
        path: PathBuf,
        /// The detector.
        detector: String,
        /// The key that needs it.
        key: &'static str,
    },
    /// A `[[mapmake.split]]` that cannot be resolved against the list and focal plane.
    #[error("mapmake.split '{name}': {problem}")]
    Split {
        /// The split's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A split name that cannot name a directory and a unit.
    #[error("mapmake.split name '{0}' must be letters, digits, '-' and '_'")]
    SplitName(String),
    /// Two splits of one name.
    #[error("mapmake.split '{0}' is given twice")]
    SplitTwice(String),
    /// The observation list, focal plane or gain table cannot be read.
    #[error(transparent)]
    Input(#[from] CmbError),
}

impl ConfigError {
    /// A [`ConfigError::Value`].
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Value(KeyError::new(key, problem))
    }
}

/// A unit of the CMB stages: one observation (pointing period), `obs=0421`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObsUnit {
    /// Observation number.
    pub obs: u32,
}

impl WorkUnit for ObsUnit {
    fn id(&self) -> UnitId {
        UnitId::new().with("obs", format_args!("{:04}", self.obs))
    }
}

/// Dataset type of a raw observation file (attitude and timestreams; no stage writes it).
pub const DATASET_OBSERVATION: &str = "observation";
/// Dataset type of the pointing stage's files (`RUN_DIR/pointing/obs=NNNN.h5`).
pub const DATASET_POINTING: &str = "pointing";
/// Dataset type of the calibrate stage's files (`RUN_DIR/calibrate/obs=NNNN.h5`).
pub const DATASET_CALIBRATED: &str = "calibrated";
/// Dataset type of map-making's products (maps, quicklooks, summary, baselines).
pub const DATASET_MAP: &str = "map";

/// The file name of an observation's outputs: `obs=0421.h5`.
pub fn obs_file_name(obs: u32) -> String {
    format!("obs={obs:04}.h5")
}

/// The file of observation `obs` written by the stage `stage` (`pointing`, `calibrate`):
/// `dir/obs=NNNN.h5` when a directory is configured, else `RUN_DIR/<stage>/obs=NNNN.h5`.
pub fn stage_file(dir: Option<&Path>, run_dir: &Path, stage: &str, obs: u32) -> PathBuf {
    dir.map_or_else(|| run_dir.join(stage), Path::to_path_buf)
        .join(obs_file_name(obs))
}

/// Warns when an observation file's own `@obs` differs from the number the list gives it. The
/// list's number names the unit and its outputs (a merged or renumbered list is legal), but a
/// mismatch is more often a copy error, so it is said.
pub fn warn_if_obs_differs(raw: &H5Reader, obs: u32) {
    if let Ok(found) = raw.attr_i64("", "obs")
        && found != i64::from(obs)
    {
        tracing::warn!(
            "{}: @obs is {found} but the observation list names it obs={obs:04}; the list's number is used",
            raw.path().display()
        );
    }
}

/// One entry of the observation list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationEntry {
    /// Observation number (unit `obs=NNNN`).
    pub obs: u32,
    /// The observation file, relative to the list's directory (or absolute).
    pub file: PathBuf,
    /// Samples per detector, if known: the engine's cost hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
}

/// The observation list (`observations.json`) the stages plan from; no science file is opened
/// to plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationList {
    /// Must be [`OBSERVATIONS_FORMAT`].
    pub format: String,
    /// The focal-plane file, relative to the list's directory (or absolute).
    pub focal_plane: PathBuf,
    /// The observations, in submission order.
    pub observations: Vec<ObservationEntry>,
}

impl ObservationList {
    /// Reads a list; relative paths are resolved against the list's directory. Refuses a wrong
    /// format, an empty list and duplicate observation numbers.
    pub fn load(path: &Path) -> Result<Self, CmbError> {
        let err = |message: String| CmbError::List {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut list: ObservationList =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if list.format != OBSERVATIONS_FORMAT {
            return Err(err(format!(
                "format is '{}', expected '{OBSERVATIONS_FORMAT}'",
                list.format
            )));
        }
        if list.observations.is_empty() {
            return Err(err("the list has no observations".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for o in &list.observations {
            if !seen.insert(o.obs) {
                return Err(err(format!("observation {} is listed twice", o.obs)));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        list.focal_plane = base.join(&list.focal_plane);
        for o in &mut list.observations {
            o.file = base.join(&o.file);
        }
        Ok(list)
    }

    /// The entry of observation `obs`.
    pub fn entry(&self, obs: u32) -> Option<&ObservationEntry> {
        self.observations.iter().find(|o| o.obs == obs)
    }
}

pub use skypipe_core::frames::Frame;

/// One detector of the focal plane.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorSpec {
    /// Name (the group name in every file).
    pub name: String,
    /// Offset quaternion `[x, y, z, w]`: detector frame → boresight frame, before the
    /// polarisation angle.
    pub quat: Quat,
    /// Polarisation angle (deg): the detector frame is `quat ⊗ R_z(pol_angle)`.
    pub pol_angle_deg: f64,
    /// Polarisation efficiency η in [0, 1].
    pub pol_efficiency: f64,
    /// Nominal sample rate (Hz); each timestream carries its own exact `rate_hz`, which must
    /// equal it.
    pub rate_hz: f64,
    /// Noise-equivalent temperature (K_CMB √s).
    pub net_k_sqrt_s: f64,
    /// 1/f knee frequency (Hz), 0 for white noise.
    pub fknee_hz: f64,
    /// Nominal gain (V / K_CMB), if known.
    pub gain: Option<f64>,
    /// Centre frequency of the band (GHz), if known: the detector's attribute `freq_ghz`, else
    /// the file's root attribute `freq_ghz` (the whole focal plane). Needed by the kinematic
    /// quadrupole of `skypipe-calibrate`.
    pub freq_ghz: Option<f64>,
}

impl DetectorSpec {
    /// The full offset quaternion `quat ⊗ R_z(pol_angle)` used by the pointing kernel.
    pub fn offset(&self) -> Quat {
        let rz = quat::from_axis_angle([0.0, 0.0, 1.0], self.pol_angle_deg.to_radians())
            .expect("ẑ is a unit axis");
        quat::mul(self.quat, rz)
    }
}

/// The focal plane: detectors sorted by name.
#[derive(Debug, Clone, PartialEq)]
pub struct FocalPlane {
    /// The detectors, sorted by name.
    pub detectors: Vec<DetectorSpec>,
}

fn finite(path: &Path, name: &str, v: f64) -> Result<f64, H5Error> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(H5Error::invalid(
            path,
            name,
            format!("value {v} is not finite"),
        ))
    }
}

impl FocalPlane {
    /// Reads and validates a focal-plane file (`/detectors/<name>` groups with attributes).
    pub fn read(path: &Path) -> Result<Self, CmbError> {
        let r = H5Reader::open(path)?;
        let names = r.group_names("detectors")?;
        if names.is_empty() {
            return Err(H5Error::invalid(path, "detectors", "no detector groups").into());
        }
        let frequency = |group: &str, name: &str| -> Result<Option<f64>, H5Error> {
            if !r.has_attr(group, "freq_ghz") {
                return Ok(None);
            }
            let f = r.attr_f64(group, "freq_ghz")?;
            if !(f.is_finite() && f >= 0.0) {
                return Err(H5Error::invalid(
                    path,
                    name,
                    format!("frequency {f} GHz must be finite and ≥ 0"),
                ));
            }
            Ok(Some(f))
        };
        let plane_freq = frequency("", "@freq_ghz")?;
        let mut detectors = Vec::new();
        for name in names {
            let g = format!("detectors/{name}");
            let q = r.attr_vec::<f64>(&g, "quat", Some(4))?;
            let q = [q[0], q[1], q[2], q[3]];
            quat::check_unit(q)
                .map_err(|e| H5Error::invalid(path, &format!("{g}@quat"), e.to_string()))?;
            let pol_efficiency = finite(path, &g, r.attr_f64(&g, "pol_efficiency")?)?;
            if !(0.0..=1.0).contains(&pol_efficiency) {
                return Err(H5Error::invalid(
                    path,
                    &format!("{g}@pol_efficiency"),
                    format!("{pol_efficiency} is not in [0, 1]"),
                )
                .into());
            }
            let rate_hz = finite(path, &g, r.attr_f64(&g, "rate_hz")?)?;
            if rate_hz <= 0.0 {
                return Err(H5Error::invalid(path, &format!("{g}@rate_hz"), "must be > 0").into());
            }
            let opt = |attr: &str| -> Result<Option<f64>, H5Error> {
                if r.has_attr(&g, attr) {
                    Ok(Some(finite(
                        path,
                        &format!("{g}@{attr}"),
                        r.attr_f64(&g, attr)?,
                    )?))
                } else {
                    Ok(None)
                }
            };
            detectors.push(DetectorSpec {
                quat: q,
                pol_angle_deg: finite(path, &g, r.attr_f64(&g, "pol_angle_deg")?)?,
                pol_efficiency,
                rate_hz,
                net_k_sqrt_s: opt("net_k_sqrt_s")?.unwrap_or(0.0),
                fknee_hz: opt("fknee_hz")?.unwrap_or(0.0),
                gain: opt("gain")?,
                freq_ghz: frequency(&g, &format!("{g}@freq_ghz"))?.or(plane_freq),
                name,
            });
        }
        Ok(Self { detectors })
    }

    /// Writes the focal plane to `path` atomically.
    pub fn write(&self, path: &Path, durability: skypipe_io::Durability) -> Result<(), CmbError> {
        let w = H5Writer::create(path, durability)?;
        w.attr_str("", "format", FOCALPLANE_FORMAT)?;
        for d in &self.detectors {
            let g = format!("detectors/{}", d.name);
            w.group(&g)?;
            w.attr_vec(&g, "quat", &d.quat)?;
            w.attr_f64(&g, "pol_angle_deg", d.pol_angle_deg)?;
            w.attr_f64(&g, "pol_efficiency", d.pol_efficiency)?;
            w.attr_f64(&g, "rate_hz", d.rate_hz)?;
            w.attr_f64(&g, "net_k_sqrt_s", d.net_k_sqrt_s)?;
            w.attr_f64(&g, "fknee_hz", d.fknee_hz)?;
            if let Some(gain) = d.gain {
                w.attr_f64(&g, "gain", gain)?;
            }
            if let Some(f) = d.freq_ghz {
                w.attr_f64(&g, "freq_ghz", f)?;
            }
        }
        w.commit()?;
        Ok(())
    }
}

/// A validated attitude: times, boresight quaternions and satellite velocities.
#[derive(Debug, Clone)]
pub struct AttitudeData {
    /// Times (s), strictly increasing.
    pub times: Vec<f64>,
    /// Unit quaternions (scalar-last), boresight frame → `frame`.
    pub quats: Vec<Quat>,
    /// Satellite velocity with respect to the solar-system barycentre (km/s, in `frame`).
    pub velocity: Vec<[f64; 3]>,
    /// The frame of quaternions and velocities.
    pub frame: Frame,
}

/// Reads and validates `/attitude` of an observation file: shapes agree, no NaN, unit
/// quaternions, strictly increasing times, a known frame.
pub fn read_attitude(r: &H5Reader) -> Result<AttitudeData, CmbError> {
    let path = r.path();
    let times: Vec<f64> = r.read_1d("attitude/time", None)?;
    let n = times.len();
    let quats: Vec<[f64; 4]> = r.read_2d("attitude/quat", Some(n))?;
    let velocity: Vec<[f64; 3]> = r.read_2d("attitude/velocity", Some(n))?;
    let frame_text = r.attr_str("attitude", "frame")?;
    let frame = Frame::parse(&frame_text).ok_or_else(|| {
        H5Error::invalid(
            path,
            "attitude@frame",
            format!("unknown frame '{frame_text}' (ecliptic, equatorial or galactic)"),
        )
    })?;
    if let Some(i) = quats.iter().position(|q| q.iter().any(|c| !c.is_finite())) {
        return Err(H5Error::invalid(
            path,
            "attitude/quat",
            format!("quaternion {i} is {:?}, not finite", quats[i]),
        )
        .into());
    }
    if let Some(i) = velocity
        .iter()
        .position(|v| v.iter().any(|c| !c.is_finite()))
    {
        return Err(H5Error::invalid(
            path,
            "attitude/velocity",
            format!("velocity {i} is {:?}, not finite", velocity[i]),
        )
        .into());
    }
    validate_attitude(&times, &quats).map_err(|e| {
        let name = match e {
            skypipe_core::attitude::AttitudeError::BadQuaternion { .. } => "attitude/quat",
            _ => "attitude/time",
        };
        H5Error::invalid(path, name, e.to_string())
    })?;
    Ok(AttitudeData {
        times,
        quats,
        velocity,
        frame,
    })
}

impl AttitudeData {
    /// The velocity (km/s) at sample `sample` of a clock `t_i = t0 + i / rate`, interpolated
    /// exactly as [`Self::velocities`] does (binary search for the attitude interval).
    pub fn velocity_at(&self, t0: f64, rate: f64, sample: u64) -> [f64; 3] {
        let n = self.times.len();
        if n == 1 {
            return self.velocity[0];
        }
        let s = sample as f64 / rate;
        let j = self
            .times
            .partition_point(|&t| t - t0 <= s)
            .saturating_sub(1)
            .min(n - 2);
        let (r0, r1) = (self.times[j] - t0, self.times[j + 1] - t0);
        let u = ((s - r0) / (r1 - r0)).clamp(0.0, 1.0);
        let (a, b) = (self.velocity[j], self.velocity[j + 1]);
        [0, 1, 2].map(|c| a[c] + u * (b[c] - a[c]))
    }

    /// Velocities (km/s) linearly interpolated at samples `first .. first + len` of a clock
    /// `t_i = t0 + i / rate` (samples must lie within the attitude span; the ends are clamped).
    pub fn velocities(&self, t0: f64, rate: f64, first: u64, len: usize) -> Vec<[f64; 3]> {
        let rel: Vec<f64> = self.times.iter().map(|t| t - t0).collect();
        let n = rel.len();
        if n == 1 {
            return vec![self.velocity[0]; len];
        }
        let mut out = Vec::with_capacity(len);
        let s0 = first as f64 / rate;
        let mut j = rel
            .partition_point(|&x| x <= s0)
            .saturating_sub(1)
            .min(n - 2);
        for k in 0..len {
            let s = (first + k as u64) as f64 / rate;
            while j < n - 2 && rel[j + 1] <= s {
                j += 1;
            }
            let u = ((s - rel[j]) / (rel[j + 1] - rel[j])).clamp(0.0, 1.0);
            let (a, b) = (self.velocity[j], self.velocity[j + 1]);
            out.push([0, 1, 2].map(|c| a[c] + u * (b[c] - a[c])));
        }
        out
    }
}

/// The clock and length of one detector's timestream in an observation file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestreamInfo {
    /// Reference time (s): sample `i` is at `t0 + (first_sample + i) / rate_hz`, on the same
    /// time axis as `attitude/time` (Unix seconds, or seconds since the file's `@epoch`).
    pub t0: f64,
    /// Integer sample offset from `t0` (attribute `first_sample`; 0 when absent, as in files
    /// written before it).
    pub first_sample: u64,
    /// Exact sample rate (Hz).
    pub rate_hz: f64,
    /// Number of samples.
    pub len: usize,
}

/// Reads the clock attributes (`t0`, `rate_hz`) of `group` and the length of its `dataset`
/// (without reading the samples); the rate must equal `nominal_rate` (the focal plane's).
pub fn timestream_info(
    r: &H5Reader,
    group: &str,
    dataset: &str,
    nominal_rate: Option<f64>,
) -> Result<TimestreamInfo, CmbError> {
    let path = r.path();
    let t0 = finite(path, &format!("{group}@t0"), r.attr_f64(group, "t0")?)?;
    let rate_hz = finite(
        path,
        &format!("{group}@rate_hz"),
        r.attr_f64(group, "rate_hz")?,
    )?;
    if rate_hz <= 0.0 {
        return Err(H5Error::invalid(path, &format!("{group}@rate_hz"), "must be > 0").into());
    }
    if let Some(nominal) = nominal_rate
        && (rate_hz - nominal).abs() > 1e-9 * nominal
    {
        return Err(H5Error::invalid(
            path,
            &format!("{group}@rate_hz"),
            format!("{rate_hz} Hz differs from the focal plane's {nominal} Hz"),
        )
        .into());
    }
    let first_sample = if r.has_attr(group, "first_sample") {
        let f = r.attr_i64(group, "first_sample")?;
        u64::try_from(f)
            .ok()
            .filter(|&f| f < 1 << 53)
            .ok_or_else(|| {
                H5Error::invalid(
                    path,
                    &format!("{group}@first_sample"),
                    format!("{f} is not in [0, 2^53)"),
                )
            })?
    } else {
        0
    };
    let name = format!("{group}/{dataset}");
    let len = r.dataset(&name, &[None])?.rows();
    Ok(TimestreamInfo {
        t0,
        first_sample,
        rate_hz,
        len,
    })
}

impl TimestreamInfo {
    /// The sample clock (`t0`, `first_sample`, `rate_hz`).
    pub fn clock(&self) -> Result<SampleClock, skypipe_core::attitude::AttitudeError> {
        SampleClock::with_first_sample(self.t0, self.first_sample, self.rate_hz)
    }

    /// Writes the clock attributes (`t0`, `rate_hz`, and `first_sample` when not 0) to `group`.
    pub fn write_clock(&self, w: &H5Writer, group: &str) -> Result<(), H5Error> {
        w.attr_f64(group, "t0", self.t0)?;
        w.attr_f64(group, "rate_hz", self.rate_hz)?;
        if self.first_sample != 0 {
            w.attr_i64(group, "first_sample", self.first_sample as i64)?;
        }
        Ok(())
    }
}

/// A HEALPix I/Q/U map in K_CMB.
#[derive(Debug, Clone, PartialEq)]
pub struct SkyMap {
    /// nside.
    pub nside: u64,
    /// Pixel ordering.
    pub ordering: healpix::Ordering,
    /// Frame of the pixelisation.
    pub frame: Frame,
    /// `[I, Q, U]` per pixel (K_CMB, COSMO polarisation convention). A pixel a FITS map leaves
    /// unseen (healpy's `UNSEEN`, or NaN) holds NaN.
    pub iqu: Vec<[f64; 3]>,
}

/// healpy's `UNSEEN` marker of pixels without a value.
const HEALPY_UNSEEN: f64 = -1.6375e30;

/// Whether a map value read from FITS marks an unseen pixel (`UNSEEN`, also after a round trip
/// through float32, or not finite).
fn is_unseen(v: f64) -> bool {
    !v.is_finite() || (v / HEALPY_UNSEEN - 1.0).abs() < 1e-6
}

impl SkyMap {
    /// Reads a map file (`/map` `[npix, 3]`, attributes `nside`, `ordering`, `frame`).
    pub fn read(path: &Path) -> Result<Self, CmbError> {
        let r = H5Reader::open(path)?;
        let nside = r.attr_i64("map", "nside")?;
        let grid = u64::try_from(nside)
            .ok()
            .and_then(|n| healpix::Healpix::new(n, healpix::Ordering::Ring).ok())
            .ok_or_else(|| H5Error::invalid(path, "map@nside", format!("bad nside {nside}")))?;
        let ord = r.attr_str("map", "ordering")?;
        let ordering = healpix::Ordering::parse_header(&ord)
            .ok_or_else(|| H5Error::invalid(path, "map@ordering", format!("unknown '{ord}'")))?;
        let fr = r.attr_str("map", "frame")?;
        let frame = Frame::parse(&fr)
            .ok_or_else(|| H5Error::invalid(path, "map@frame", format!("unknown '{fr}'")))?;
        let iqu: Vec<[f64; 3]> = r.read_2d("map", Some(grid.npix() as usize))?;
        if let Some(i) = iqu.iter().position(|p| p.iter().any(|v| !v.is_finite())) {
            return Err(H5Error::invalid(path, "map", format!("pixel {i} is not finite")).into());
        }
        Ok(Self {
            nside: grid.nside(),
            ordering,
            frame,
            iqu,
        })
    }

    /// Reads a sky model: a HEALPix FITS map (recognised by its `SIMPLE` header) as
    /// `skypipe-mapmake` or `healpy.write_map` write it ([`SkyMap::read_fits`]), else a
    /// `skypipe-cmb-map/1` HDF5 file ([`SkyMap::read`]).
    pub fn load(path: &Path) -> Result<Self, CmbError> {
        let mut head = [0u8; 9];
        let is_fits = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && &head == b"SIMPLE  =";
        if is_fits {
            Self::read_fits(path)
        } else {
            Self::read(path)
        }
    }

    /// Reads a full-sky HEALPix FITS map in healpy's layout: the first binary table named
    /// `HEALPIX` (`skypipe-mapmake`) or `xtension` (healpy), keywords `NSIDE`, `ORDERING`
    /// (RING/NESTED), `COORDSYS` (G/E/C), implicit indexing, one value per pixel in scalar or
    /// vector (`1024D`) columns. I is the column `I_STOKES` (or `TEMPERATURE`, `I`); Q and U
    /// (`Q_STOKES`/`Q_POLARISATION`/`Q`, likewise U) are read when present, else 0. Unseen
    /// pixels become NaN. Units are taken as K_CMB.
    pub fn read_fits(path: &Path) -> Result<Self, CmbError> {
        use skypipe_io::fits::{FitsError, FitsReader, Hdu};
        let mut r = FitsReader::open(path)?;
        let name = ["HEALPIX", "xtension"]
            .into_iter()
            .find(|n| r.has_hdu(n))
            .ok_or_else(|| FitsError::Hdu {
                path: path.to_path_buf(),
                hdu: "HEALPIX".into(),
                message: "no HEALPix table (extension 'HEALPIX' or 'xtension')".into(),
            })?;
        let hdu = Hdu::Name(name);
        let bad = |key: &str, message: String| FitsError::BadKey {
            path: path.to_path_buf(),
            hdu: hdu.to_string(),
            key: key.into(),
            message,
        };
        let nside = r.key_i64(hdu, "NSIDE")?;
        let grid = u64::try_from(nside)
            .ok()
            .and_then(|n| healpix::Healpix::new(n, healpix::Ordering::Ring).ok())
            .ok_or_else(|| bad("NSIDE", format!("bad nside {nside}")))?;
        let ord = r.key_string(hdu, "ORDERING")?;
        let ordering = healpix::Ordering::parse_header(&ord)
            .ok_or_else(|| bad("ORDERING", format!("unknown '{ord}'")))?;
        let coord = r.key_string(hdu, "COORDSYS")?;
        let Some(frame) = Frame::parse_coordsys(&coord) else {
            return Err(bad("COORDSYS", format!("unknown '{coord}' (G, E or C)")).into());
        };
        if let Some(scheme) = r.key_string_opt(hdu, "INDXSCHM")?
            && !scheme.eq_ignore_ascii_case("IMPLICIT")
        {
            return Err(bad(
                "INDXSCHM",
                format!("'{scheme}': only full-sky (IMPLICIT) maps are supported"),
            )
            .into());
        }
        let columns = r.column_names(hdu)?;
        let find = |names: &[&str]| {
            columns
                .iter()
                .find(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
                .cloned()
        };
        let npix = grid.npix() as usize;
        let mut read = |column: Option<String>, required: bool| -> Result<Vec<f64>, CmbError> {
            let Some(c) = column else {
                if required {
                    return Err(FitsError::Column {
                        path: path.to_path_buf(),
                        hdu: hdu.to_string(),
                        column: "I_STOKES".into(),
                        message: format!("no intensity column among {columns:?}"),
                    }
                    .into());
                }
                return Ok(vec![0.0; npix]);
            };
            let v = r.column_f64(hdu, &c)?;
            if v.len() != npix {
                return Err(FitsError::Column {
                    path: path.to_path_buf(),
                    hdu: hdu.to_string(),
                    column: c,
                    message: format!("{} values, expected 12·nside² = {npix}", v.len()),
                }
                .into());
            }
            Ok(v)
        };
        let i = read(find(&["I_STOKES", "TEMPERATURE", "I"]), true)?;
        let q = read(find(&["Q_STOKES", "Q_POLARISATION", "Q"]), false)?;
        let u = read(find(&["U_STOKES", "U_POLARISATION", "U"]), false)?;
        let iqu = (0..npix)
            .map(|p| {
                if is_unseen(i[p]) || is_unseen(q[p]) || is_unseen(u[p]) {
                    [f64::NAN; 3]
                } else {
                    [i[p], q[p], u[p]]
                }
            })
            .collect();
        Ok(Self {
            nside: grid.nside(),
            ordering,
            frame,
            iqu,
        })
    }

    /// Writes the map atomically.
    pub fn write(&self, path: &Path, durability: skypipe_io::Durability) -> Result<(), CmbError> {
        let w = H5Writer::create(path, durability)?;
        w.attr_str("", "format", MAP_FORMAT)?;
        w.write_2d("map", &self.iqu)?;
        w.attr_i64("map", "nside", self.nside as i64)?;
        w.attr_str("map", "ordering", self.ordering.header_name())?;
        w.attr_str("map", "frame", self.frame.as_str())?;
        w.attr_str("map", "units", "K_CMB")?;
        w.attr_str("map", "columns", "I,Q,U")?;
        w.commit()?;
        Ok(())
    }
}

/// Gains (V / K_CMB) and optional offsets (V) per observation and detector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GainTable {
    /// Observation numbers (rows).
    pub obs: Vec<u32>,
    /// Per detector name: gain per row.
    pub gain: BTreeMap<String, Vec<f64>>,
    /// Per detector name: offset per row (may be absent for a detector).
    pub offset: BTreeMap<String, Vec<f64>>,
}

impl GainTable {
    /// Reads a gain table (`/obs`, `/detectors/<name>/gain`, optional `.../offset`).
    pub fn read(path: &Path) -> Result<Self, CmbError> {
        let r = H5Reader::open(path)?;
        let obs: Vec<i64> = r.read_1d("obs", None)?;
        let n = obs.len();
        let obs = obs
            .iter()
            .map(|&o| u32::try_from(o))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| H5Error::invalid(path, "obs", "observation numbers must be in u32"))?;
        let mut table = GainTable {
            obs,
            ..Default::default()
        };
        for name in r.group_names("detectors")? {
            let g = format!("detectors/{name}/gain");
            let gains: Vec<f64> = r.read_1d(&g, Some(n))?;
            if let Some(i) = gains.iter().position(|g| !g.is_finite() || *g == 0.0) {
                return Err(
                    H5Error::invalid(path, &g, format!("row {i}: gain {}", gains[i])).into(),
                );
            }
            table.gain.insert(name.clone(), gains);
            let o = format!("detectors/{name}/offset");
            if r.exists(&o) {
                table.offset.insert(name.clone(), r.read_1d(&o, Some(n))?);
            }
        }
        Ok(table)
    }

    /// Writes the table atomically.
    pub fn write(&self, path: &Path, durability: skypipe_io::Durability) -> Result<(), CmbError> {
        let w = H5Writer::create(path, durability)?;
        w.attr_str("", "format", GAINS_FORMAT)?;
        let obs: Vec<i64> = self.obs.iter().map(|&o| i64::from(o)).collect();
        w.write_1d("obs", &obs)?;
        for (name, gains) in &self.gain {
            w.write_1d(&format!("detectors/{name}/gain"), gains)?;
            w.attr_str(&format!("detectors/{name}/gain"), "units", "V/K_CMB")?;
            if let Some(off) = self.offset.get(name) {
                w.write_1d(&format!("detectors/{name}/offset"), off)?;
                w.attr_str(&format!("detectors/{name}/offset"), "units", "V")?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Gain and offset of `detector` in observation `obs`.
    pub fn lookup(&self, obs: u32, detector: &str) -> Option<(f64, Option<f64>)> {
        let row = self.obs.iter().position(|&o| o == obs)?;
        let g = self.gain.get(detector)?[row];
        let off = self.offset.get(detector).map(|o| o[row]);
        Some((g, off))
    }
}

/// Direction (unit vector) of colatitude `theta` and longitude `phi` (rad).
#[inline]
pub fn direction(theta: f64, phi: f64) -> [f64; 3] {
    let (st, ct) = theta.sin_cos();
    let (sp, cp) = phi.sin_cos();
    [st * cp, st * sp, ct]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rotations_compose_and_invert() {
        let v = [0.3, -0.5, 0.81];
        let q = Frame::Ecliptic.rotation_to(Frame::Galactic);
        let g = quat::rotate(q, v);
        let g2 = quat::rotate(skypipe_core::frames::ecliptic_to_galactic(), v);
        let back = quat::rotate(Frame::Galactic.rotation_to(Frame::Ecliptic), g);
        let via_eq = quat::rotate(
            Frame::Equatorial.rotation_to(Frame::Galactic),
            quat::rotate(Frame::Ecliptic.rotation_to(Frame::Equatorial), v),
        );
        for i in 0..3 {
            assert!((g[i] - g2[i]).abs() < 1e-15);
            assert!((back[i] - v[i]).abs() < 1e-15);
            assert!((via_eq[i] - g[i]).abs() < 1e-12);
        }
        assert_eq!(Frame::Galactic.rotation_to(Frame::Galactic), quat::IDENTITY);
    }

    #[test]
    fn clocks_are_read_with_and_without_an_integer_sample_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.h5");
        let w = H5Writer::create(&path, skypipe_io::Durability::ProcessCrashOnly).unwrap();
        // Today's layout: a float64 Unix t0 only.
        w.group("detectors/old").unwrap();
        w.attr_f64("detectors/old", "t0", 1.7e9 + 0.25).unwrap();
        w.attr_f64("detectors/old", "rate_hz", 4.0).unwrap();
        w.write_1d("detectors/old/signal", &[0.0f64; 8]).unwrap();
        // On an integer epoch: t0 = 0 and an integer sample offset.
        w.group("detectors/new").unwrap();
        w.attr_f64("detectors/new", "t0", 0.0).unwrap();
        w.attr_i64("detectors/new", "first_sample", 10_823).unwrap();
        w.attr_f64("detectors/new", "rate_hz", 4.0).unwrap();
        w.write_1d("detectors/new/signal", &[0.0f64; 8]).unwrap();
        w.group("detectors/bad").unwrap();
        w.attr_f64("detectors/bad", "t0", 0.0).unwrap();
        w.attr_i64("detectors/bad", "first_sample", -1).unwrap();
        w.attr_f64("detectors/bad", "rate_hz", 4.0).unwrap();
        w.write_1d("detectors/bad/signal", &[0.0f64; 8]).unwrap();
        w.commit().unwrap();
        let r = H5Reader::open(&path).unwrap();
        let old = timestream_info(&r, "detectors/old", "signal", Some(4.0)).unwrap();
        assert_eq!((old.t0, old.first_sample, old.len), (1.7e9 + 0.25, 0, 8));
        assert_eq!(
            old.clock().unwrap(),
            SampleClock::new(1.7e9 + 0.25, 4.0).unwrap()
        );
        let new = timestream_info(&r, "detectors/new", "signal", Some(4.0)).unwrap();
        assert_eq!(new.first_sample, 10_823);
        assert_eq!(new.clock().unwrap().time(1), 10_824.0 / 4.0);
        let e = timestream_info(&r, "detectors/bad", "signal", None).unwrap_err();
        assert!(e.to_string().contains("first_sample"), "{e}");
    }

    #[test]
    fn velocities_interpolate_linearly_and_clamp() {
        let att = AttitudeData {
            times: vec![10.0, 11.0, 12.0],
            quats: vec![quat::IDENTITY; 3],
            velocity: vec![[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]],
            frame: Frame::Ecliptic,
        };
        let v = att.velocities(10.0, 4.0, 0, 9);
        assert_eq!(v[0], [0.0, 0.0, 0.0]);
        assert_eq!(v[2], [0.5, 1.0, 1.5]);
        assert_eq!(v[4], [1.0, 2.0, 3.0]);
        assert_eq!(v[6], [2.0, 2.0, 2.0]);
        assert_eq!(v[8], [3.0, 2.0, 1.0]);
        assert_eq!(att.velocities(10.0, 4.0, 5, 2), v[5..7].to_vec());
        for (k, vk) in v.iter().enumerate() {
            assert_eq!(att.velocity_at(10.0, 4.0, k as u64), *vk);
        }
    }

    #[test]
    fn fits_sky_models_are_read_in_healpy_layout() {
        use skypipe_io::fits::{Column, HealpixHeader, write_healpix_map};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.fits");
        let mut i: Vec<f64> = (0..48).map(|p| p as f64 * 1e-6).collect();
        i[5] = HEALPY_UNSEEN;
        let q = vec![1e-7f32; 48];
        let header = HealpixHeader {
            nside: 2,
            nested: true,
            coordsys: "E",
            cards: vec![],
            provenance: None,
        };
        let cols = vec![
            Column::f64("I_STOKES", "K_CMB", i),
            Column::f32("Q_STOKES", "K_CMB", q),
        ];
        write_healpix_map(
            &path,
            &header,
            cols,
            skypipe_io::Durability::ProcessCrashOnly,
        )
        .unwrap();
        let m = SkyMap::load(&path).unwrap();
        assert_eq!(
            (m.nside, m.ordering, m.frame),
            (2, healpix::Ordering::Nested, Frame::Ecliptic)
        );
        assert_eq!(m.iqu.len(), 48);
        assert_eq!(m.iqu[7], [7e-6, f64::from(1e-7f32), 0.0]);
        assert!(m.iqu[5].iter().all(|v| v.is_nan()));
        // No intensity column: refused, naming the file.
        let header = HealpixHeader {
            nside: 1,
            nested: false,
            coordsys: "G",
            cards: vec![],
            provenance: None,
        };
        let hits = Column::i32("HITS", "", vec![1; 12]);
        write_healpix_map(
            &path,
            &header,
            vec![hits],
            skypipe_io::Durability::ProcessCrashOnly,
        )
        .unwrap();
        let e = SkyMap::load(&path).unwrap_err().to_string();
        assert!(e.contains("map.fits") && e.contains("intensity"), "{e}");
    }

    #[test]
    fn observation_list_resolves_paths_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("observations.json");
        std::fs::write(&p, format!(r#"{{"format":"{OBSERVATIONS_FORMAT}","focal_plane":"fp.h5","observations":[{{"obs":1,"file":"obs/obs=0001.h5","samples":10,"extra":1}}]}}"#)).unwrap();
        let l = ObservationList::load(&p).unwrap();
        assert_eq!(l.focal_plane, dir.path().join("fp.h5"));
        assert_eq!(l.entry(1).unwrap().file, dir.path().join("obs/obs=0001.h5"));
        std::fs::write(&p, format!(r#"{{"format":"{OBSERVATIONS_FORMAT}","focal_plane":"fp.h5","observations":[{{"obs":1,"file":"a"}},{{"obs":1,"file":"b"}}]}}"#)).unwrap();
        let e = ObservationList::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("observations.json") && e.contains("listed twice"),
            "{e}"
        );
        assert_eq!(ObsUnit { obs: 421 }.id().to_string(), "obs=0421");
    }
}
