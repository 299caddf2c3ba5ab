//! `skypipe-calibrate`: calibration to K_CMB and dipole removal, one observation per unit.
//!
//! Per detector, the raw timestream `d` (V) is modelled as `d = g·T + b + noise` where the
//! template `T` (K_CMB) is the detector's response to the total (solar + orbital) relativistic
//! dipole, `½·ΔT_dipole` (the I weight of the pointing convention is ½), optionally with the
//! kinematic quadrupole at the detector's centre frequency, plus, when a sky model is given,
//! `w·m` with the stored pointing weights. The gain `g` (V/K_CMB) and offset `b` (V) come from
//! a gain table or from a least-squares fit over the unflagged, finite samples. The output is
//! `(d − b)/g − ½·ΔT_dipole`: calibrated, dipole-subtracted, in K_CMB, in the same response
//! convention as the pointing weights. NaN or infinite raw samples are written as 0 and flagged
//! ([`crate::model::FLAG_NONFINITE`]); they never enter the fit.
//!
//! A fitted gain's error ([`skypipe_core::gainfit`]) adds to the white-noise error the bias
//! that the unmodelled smooth residual (sky, 1/f noise) can cause; when that dominates, the
//! unit logs a warning: without a sky model the sky leaks into the fit, and `sky_model` (the
//! true sky, or the map of a previous calibrate → mapmake pass) is the way to a correct gain.
//!
//! A unit reads and validates its inputs first ([`Calibrate::process`]: the observation, the
//! pointing, every detector's datasets), then streams each detector through the kernels
//! (dipole model, line fit, calibration, residual statistics) chunk by chunk, writing as it
//! goes. Memory is bounded: a fit reads the inputs twice in chunks (sums, then output) unless
//! the detector is short enough to cache. The dipole response of a chunk comes from
//! [`DipoleModel::delta_t_chunk`] (velocity terms exact every 256 samples, interpolated in
//! between: within 1e-13 K of a per-sample evaluation). Pointing files of either precision
//! (`[pointing] output_precision`) are read; the stored types are checked when opening.

use crate::model::{
    AttitudeData, CALIBRATED_FORMAT, CmbError, ConfigError, DATASET_CALIBRATED, DATASET_MAP,
    DATASET_OBSERVATION, DATASET_POINTING, DetectorSpec, FLAG_NONFINITE, FocalPlane, Frame,
    GainTable, ObsUnit, ObservationList, SkyMap, TimestreamInfo, read_attitude, stage_file,
    timestream_info, warn_if_obs_differs,
};
use crate::pointing::{
    ChunkPointing, DetectorExpander, ObservationPointing, PointingGeometry, PointingSource,
    durability, plan_list,
};
use serde::{Deserialize, Serialize};
use skypipe_core::aberration::C_KM_S;
use skypipe_core::dipole::{DipoleModel, SolarVelocity, T_CMB, quadrupole_factor};
use skypipe_core::gainfit::{Calibration, GainError, LineFit, ResidualStats, fit_points};
use skypipe_core::healpix::{Healpix, Ordering};
use skypipe_core::quat;
use skypipe_io::Durability;
use skypipe_io::hdf5::{H5Dataset, H5Error, H5Reader, H5Writer};
use skypipe_io::provenance::Provenance;
use skypipe_stage::{
    Connections, FailureKind, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure,
    fingerprint_of,
};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where gains come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GainMode {
    /// Fitted per detector per observation against the dipole template (default).
    Fit,
    /// Read from `gain_table`.
    Table,
}

/// The `[calibrate]` table. Keys added after the first release are left out of the
/// configuration fingerprint while they hold their defaults, so run directories made before
/// them still resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrateConfig {
    /// The observation list. Default `data/cmb/observations.json`.
    pub observations: PathBuf,
    /// Directory of the pointing outputs. Default `RUN_DIR/pointing`.
    pub pointing_dir: Option<PathBuf>,
    /// `file` (default): θ, φ (and pixels and weights with a sky model) from the pointing
    /// stage's files; `expand`: expanded per chunk from the observation's attitude and the
    /// focal plane with the `expand` geometry, bit for bit the pointing stage's
    /// double-precision values, without reading pointing files.
    #[serde(skip_serializing_if = "PointingSource::is_file")]
    pub pointing: PointingSource,
    /// The pointing geometry of `pointing = "expand"`: the `[pointing]` keys `nside`,
    /// `ordering`, `frame`, `aberration`, `chunk_samples` (defaults as there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expand: Option<PointingGeometry>,
    /// Directory of this stage's outputs. Default `RUN_DIR/calibrate` (a second pass, e.g. with
    /// the first pass's map as sky model, writes elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<PathBuf>,
    /// `fit` (default) or `table`.
    pub gains: GainMode,
    /// Gain table (`skypipe-cmb-gains/1`), required with `gains = "table"`.
    pub gain_table: Option<PathBuf>,
    /// Optional sky model added to the template: a `skypipe-cmb-map/1` HDF5 file or a HEALPix
    /// FITS map (as `skypipe-mapmake` or healpy write it; unseen pixels leave their samples out
    /// of the fit). Its nside and frame must match the pointing's; RING or NESTED either way.
    pub sky_model: Option<PathBuf>,
    /// Include the solar dipole (default true).
    pub solar_dipole: bool,
    /// Include the orbital dipole (default true).
    pub orbital_dipole: bool,
    /// CMB monopole (K). Default 2.72548.
    pub t_cmb: f64,
    /// Solar speed with respect to the CMB (km/s). Default `c·3362.08 µK / 2.72548 K`
    /// ≈ 369.816 km/s (Planck 2018). Exclusive with `solar_amplitude_uk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solar_speed_km_s: Option<f64>,
    /// Solar dipole amplitude `T0·β` (µK): speed `c·A/t_cmb`. Exclusive with `solar_speed_km_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solar_amplitude_uk: Option<f64>,
    /// Galactic longitude of the solar velocity (deg). Default 264.021 (Planck 2018).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solar_l_deg: Option<f64>,
    /// Galactic latitude of the solar velocity (deg). Default 48.253 (Planck 2018).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solar_b_deg: Option<f64>,
    /// Add the kinematic quadrupole `T0 (q(ν) − 1)(β·n̂)²` at each detector's centre
    /// frequency (focal-plane attribute `freq_ghz`, required then). Default false.
    #[serde(skip_serializing_if = "is_false")]
    pub quadrupole: bool,
    /// Samples per chunk (bounds memory). Default 65536.
    pub chunk_samples: usize,
    /// Fewer good samples than this in a detector fails the unit. Default 100.
    pub min_good_samples: usize,
    /// Detectors with at most this many samples are read once and kept in memory between the
    /// fit and the output (about 25 bytes per sample); longer ones are read twice in chunks.
    /// Default 2 000 000 (≈ 50 MB).
    pub cache_samples: usize,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for CalibrateConfig {
    fn default() -> Self {
        Self {
            observations: PathBuf::from("data/cmb/observations.json"),
            pointing_dir: None,
            pointing: PointingSource::File,
            expand: None,
            output_dir: None,
            gains: GainMode::Fit,
            gain_table: None,
            sky_model: None,
            solar_dipole: true,
            orbital_dipole: true,
            t_cmb: T_CMB,
            solar_speed_km_s: None,
            solar_amplitude_uk: None,
            solar_l_deg: None,
            solar_b_deg: None,
            quadrupole: false,
            chunk_samples: 65536,
            min_good_samples: 100,
            cache_samples: 2_000_000,
        }
    }
}

impl CalibrateConfig {
    /// The solar velocity the keys describe (Planck 2018 unless set).
    pub fn solar_velocity(&self) -> Result<SolarVelocity, ConfigError> {
        let mut v = SolarVelocity::planck_2018();
        let l = self.solar_l_deg.unwrap_or(v.l_deg);
        let b = self.solar_b_deg.unwrap_or(v.b_deg);
        if !(l.is_finite() && b.is_finite() && (-90.0..=90.0).contains(&b)) {
            return Err(ConfigError::value(
                "calibrate.solar_l_deg / solar_b_deg",
                format!("must be finite with |b| ≤ 90, got ({l}, {b})"),
            ));
        }
        match (self.solar_speed_km_s, self.solar_amplitude_uk) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::value(
                    "calibrate.solar_speed_km_s and calibrate.solar_amplitude_uk",
                    "are exclusive",
                ));
            }
            (Some(speed), None) => v.speed_km_s = speed,
            (None, Some(a)) => v = SolarVelocity::from_amplitude(a * 1e-6, self.t_cmb, l, b),
            (None, None) => {}
        }
        if !(v.speed_km_s.is_finite() && v.speed_km_s >= 0.0 && v.speed_km_s < C_KM_S) {
            return Err(ConfigError::value(
                "calibrate.solar_speed_km_s / solar_amplitude_uk",
                format!("give a solar speed of {} km/s, not in [0, c)", v.speed_km_s),
            ));
        }
        v.l_deg = l;
        v.b_deg = b;
        Ok(v)
    }
}

/// The calibration stage.
#[derive(Debug, Clone)]
pub struct Calibrate {
    config: CalibrateConfig,
    list: ObservationList,
    focal_plane: FocalPlane,
    table: Option<GainTable>,
    /// The sky model, read by the first unit that needs it: in a chain it is the map an
    /// earlier stage writes (declared as an input, so those units run after it).
    sky: OnceLock<Result<SkyMap, Arc<CmbError>>>,
    solar: SolarVelocity,
    /// `q(ν) − 1` per detector (focal-plane order), 0 without the quadrupole.
    quadrupole: Vec<f64>,
}

/// An observation's validated inputs: the open files, the attitude, the pointing's grid and the
/// dipole model in the pointing's frame.
struct OpenObservation {
    obs: u32,
    raw: H5Reader,
    /// The pointing file (`pointing = "file"`).
    pt: Option<H5Reader>,
    /// The pointing expanded from the attitude (`pointing = "expand"`).
    expanded: Option<ObservationPointing>,
    att: AttitudeData,
    pt_frame: Frame,
    /// The pointing's pixel grid, when a sky model needs it.
    grid: Option<Healpix>,
    model: DipoleModel,
}

/// One detector's inputs, opened for chunked reads.
struct DetectorInputs<'a> {
    spec: &'a DetectorSpec,
    /// `q(ν) − 1` of this detector.
    quadrupole: f64,
    info: TimestreamInfo,
    raw: H5Dataset<'a>,
    flags: H5Dataset<'a>,
    pointing: DetectorPointing<'a>,
    /// The file named in pointing errors: the pointing file, or the observation when expanded.
    pointing_path: &'a Path,
    group: String,
    table_entry: Option<(f64, Option<f64>)>,
}

/// Where one detector's pointing comes from.
enum DetectorPointing<'a> {
    /// Datasets of the pointing file: θ, φ, and pixels and weights when a sky model needs them.
    File {
        theta: H5Dataset<'a>,
        phi: H5Dataset<'a>,
        sky: Option<(H5Dataset<'a>, H5Dataset<'a>)>,
    },
    /// Expanded from the attitude, with the time spent expanding.
    Expand(RefCell<(DetectorExpander<'a>, ChunkPointing, Duration)>),
}

/// A chunk's pixels and weights, read or expanded when a sky model needs them.
type SkyPointing = (Vec<u64>, Vec<[f64; 3]>);

/// One chunk of one detector: raw samples, flags, dipole response `½ΔT` and, with a sky
/// model, the template (dipole plus sky; NaN where the sky model has no value).
#[derive(Default, Clone)]
struct Chunk {
    raw: Vec<f64>,
    flags: Vec<u8>,
    dipole: Vec<f64>,
    /// Empty without a sky model (the template is then the dipole response).
    sky_template: Vec<f64>,
}

impl Chunk {
    /// The fit template: the dipole response, plus the sky with a sky model.
    fn template(&self) -> &[f64] {
        if self.sky_template.is_empty() {
            &self.dipole
        } else {
            &self.sky_template
        }
    }
}

/// The gain and offset of a detector, with how they were found.
struct DetectorGain {
    cal: Calibration,
    /// The fit, when fitted.
    fit: Option<skypipe_core::gainfit::LineSolution>,
    n_good: Option<u64>,
    /// Samples left out of the fit because the sky model has no value there.
    n_unseen: u64,
}

impl Calibrate {
    /// Checks the configuration and reads the list, focal plane and gain table (the sky model
    /// is read by the first unit that needs it).
    pub fn new(config: CalibrateConfig) -> Result<Self, ConfigError> {
        if config.chunk_samples == 0 {
            return Err(ConfigError::value(
                "calibrate.chunk_samples",
                "must be at least 1",
            ));
        }
        if !(config.t_cmb.is_finite() && config.t_cmb > 0.0) {
            return Err(ConfigError::value(
                "calibrate.t_cmb",
                format!("must be > 0, got {}", config.t_cmb),
            ));
        }
        let solar = config.solar_velocity()?;
        match (config.pointing, &config.expand) {
            (PointingSource::Expand, Some(g)) => {
                g.grid("calibrate.expand")?;
            }
            (PointingSource::File, Some(_)) => {
                return Err(ConfigError::value(
                    "calibrate.expand",
                    "is set but calibrate.pointing is not \"expand\"",
                ));
            }
            _ => {}
        }
        let table = match (config.gains, &config.gain_table) {
            (GainMode::Table, Some(p)) => Some(GainTable::read(p)?),
            (GainMode::Table, None) => {
                return Err(ConfigError::value(
                    "calibrate.gains = \"table\"",
                    "needs calibrate.gain_table",
                ));
            }
            (GainMode::Fit, _) => None,
        };
        let list = ObservationList::load(&config.observations)?;
        let focal_plane = FocalPlane::read(&list.focal_plane)?;
        let quadrupole = focal_plane
            .detectors
            .iter()
            .map(|d| match (config.quadrupole, d.freq_ghz) {
                (false, _) => Ok(0.0),
                (true, Some(f)) => Ok(quadrupole_factor(f * 1e9, config.t_cmb)),
                (true, None) => Err(ConfigError::NoFrequency {
                    path: list.focal_plane.clone(),
                    detector: d.name.clone(),
                    key: "calibrate.quadrupole",
                }),
            })
            .collect::<Result<Vec<f64>, ConfigError>>()?;
        Ok(Self {
            config,
            list,
            focal_plane,
            table,
            sky: OnceLock::new(),
            solar,
            quadrupole,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CalibrateConfig {
        &self.config
    }

    /// The pointing file of `obs` for a run directory.
    pub fn pointing_path(&self, run_dir: &Path, obs: u32) -> PathBuf {
        stage_file(
            self.config.pointing_dir.as_deref(),
            run_dir,
            "pointing",
            obs,
        )
    }

    /// The output file of `obs` for a run directory: `output_dir/obs=NNNN.h5`, by default
    /// `RUN_DIR/calibrate/obs=NNNN.h5`.
    pub fn output_path(&self, run_dir: &Path, obs: u32) -> PathBuf {
        stage_file(self.config.output_dir.as_deref(), run_dir, "calibrate", obs)
    }

    /// The sky model, if configured, read once by the first unit that needs it.
    fn sky_model(&self) -> Result<Option<&SkyMap>, CmbError> {
        let Some(path) = &self.config.sky_model else {
            return Ok(None);
        };
        match self
            .sky
            .get_or_init(|| SkyMap::load(path).map_err(Arc::new))
        {
            Ok(map) => Ok(Some(map)),
            Err(source) => Err(CmbError::SkyModel {
                path: path.clone(),
                source: Arc::clone(source),
            }),
        }
    }

    /// Opens and validates an observation and its pointing (attitude, frames, the sky model's
    /// grid) and builds the dipole model in the pointing's frame.
    fn open_observation(&self, obs: u32, pointing: &Path) -> Result<OpenObservation, CmbError> {
        let entry = self.list.entry(obs).ok_or_else(|| CmbError::List {
            path: self.config.observations.clone(),
            message: format!("no observation {obs}"),
        })?;
        let raw = H5Reader::open(&entry.file)?;
        warn_if_obs_differs(&raw, obs);
        let (pt, expanded, att, pt_frame, aberration, nside, ordering, pt_path) =
            match (&self.config.pointing, &self.config.expand) {
                (PointingSource::Expand, geometry) => {
                    let geometry = geometry.clone().unwrap_or_default();
                    let e = ObservationPointing::open(&raw, &self.focal_plane, &geometry)?;
                    let (att, frame, ab, grid) = (
                        e.attitude().clone(),
                        e.out_frame(),
                        e.aberration(),
                        e.grid(),
                    );
                    let path = raw.path().to_path_buf();
                    let (nside, ordering) = (grid.nside() as i64, Some(grid.ordering()));
                    (None, Some(e), att, frame, ab, nside, ordering, path)
                }
                (PointingSource::File, _) => {
                    let att = read_attitude(&raw)?;
                    let pt = H5Reader::open(pointing)?;
                    let pt_path = pt.path().to_path_buf();
                    let fr = pt.attr_str("", "frame")?;
                    let pt_frame = Frame::parse(&fr).ok_or_else(|| {
                        H5Error::invalid(&pt_path, "@frame", format!("unknown frame '{fr}'"))
                    })?;
                    let aberration = pt.attr_i64("", "aberration")? != 0;
                    let (nside, ordering) = if self.config.sky_model.is_some() {
                        (
                            pt.attr_i64("", "nside")?,
                            Ordering::parse_header(&pt.attr_str("", "ordering")?),
                        )
                    } else {
                        (0, None)
                    };
                    (
                        Some(pt),
                        None,
                        att,
                        pt_frame,
                        aberration,
                        nside,
                        ordering,
                        pt_path,
                    )
                }
            };
        let mut grid = None;
        if let Some(sky) = self.sky_model()? {
            let ord = ordering;
            let Some(ordering) = ord.filter(|_| nside == sky.nside as i64 && pt_frame == sky.frame)
            else {
                return Err(H5Error::invalid(
                    &pt_path,
                    "@nside",
                    format!(
                        "pointing grid (nside {nside}, {ord:?}, {}) differs from the sky model's (nside {}, {}) in {}",
                        pt_frame.as_str(),
                        sky.nside,
                        sky.frame.as_str(),
                        self.config.sky_model.as_deref().unwrap_or(Path::new("")).display()
                    ),
                )
                .into());
            };
            grid = Some(
                Healpix::new(sky.nside, ordering)
                    .map_err(|e| H5Error::invalid(&pt_path, "@nside", e.to_string()))?,
            );
        }
        let solar = if self.config.solar_dipole {
            quat::rotate(
                Frame::Galactic.rotation_to(pt_frame),
                self.solar.galactic_km_s(),
            )
        } else {
            [0.0; 3]
        };
        let model = DipoleModel::new(
            att.frame.rotation_to(pt_frame),
            solar,
            self.config.orbital_dipole,
            aberration,
            self.config.t_cmb,
        );
        Ok(OpenObservation {
            obs,
            raw,
            pt,
            expanded,
            att,
            pt_frame,
            grid,
            model,
        })
    }

    /// Opens and validates every detector's datasets (clock and length agree between the raw
    /// timestream and the pointing, a gain table row exists) before anything is written.
    fn detector_inputs<'a>(
        &'a self,
        open: &'a OpenObservation,
    ) -> Result<Vec<DetectorInputs<'a>>, CmbError> {
        let raw = &open.raw;
        let mut all = Vec::new();
        for (d, (det, &quadrupole)) in self
            .focal_plane
            .detectors
            .iter()
            .zip(&self.quadrupole)
            .enumerate()
        {
            let group = format!("detectors/{}", det.name);
            let info = timestream_info(raw, &group, "signal", Some(det.rate_hz))?;
            let len = Some(info.len);
            let (pt, pointing) = match (&open.pt, &open.expanded) {
                (_, Some(e)) => {
                    let expander = DetectorExpander::new(e, d, true);
                    let state = (expander, ChunkPointing::default(), Duration::ZERO);
                    (raw, DetectorPointing::Expand(RefCell::new(state)))
                }
                (Some(pt), None) => {
                    let theta = pt.dataset(&format!("{group}/theta"), &[len])?;
                    let phi = pt.dataset(&format!("{group}/phi"), &[len])?;
                    theta.require_numeric(false)?;
                    phi.require_numeric(false)?;
                    let sky = if self.config.sky_model.is_some() {
                        let pixels = pt.dataset(&format!("{group}/pixels"), &[len])?;
                        let weights = pt.dataset(&format!("{group}/weights"), &[len, Some(3)])?;
                        pixels.require_numeric(true)?;
                        weights.require_numeric(false)?;
                        Some((pixels, weights))
                    } else {
                        None
                    };
                    (pt, DetectorPointing::File { theta, phi, sky })
                }
                (None, None) => unreachable!("an observation is opened with one pointing source"),
            };
            let pinfo = match pointing {
                DetectorPointing::File { .. } => timestream_info(pt, &group, "theta", None)?,
                DetectorPointing::Expand(_) => info,
            };
            if pinfo != info {
                return Err(H5Error::invalid(
                    pt.path(),
                    &group,
                    format!(
                        "pointing clock/length (t0 {}, {} Hz, {} samples) differs from the raw timestream's in {} (t0 {}, {} Hz, {} samples)",
                        pinfo.t0,
                        pinfo.rate_hz,
                        pinfo.len,
                        raw.path().display(),
                        info.t0,
                        info.rate_hz,
                        info.len
                    ),
                )
                .into());
            }
            let table_entry = match &self.table {
                Some(t) => Some(t.lookup(open.obs, &det.name).ok_or_else(|| {
                    H5Error::invalid(
                        self.config.gain_table.as_deref().unwrap_or(Path::new("")),
                        &format!("detectors/{}/gain", det.name),
                        format!(
                            "no gain for observation {}, detector {}",
                            open.obs, det.name
                        ),
                    )
                })?),
                None => None,
            };
            all.push(DetectorInputs {
                spec: det,
                quadrupole,
                info,
                raw: raw.dataset(&format!("{group}/signal"), &[len])?,
                flags: raw.dataset(&format!("{group}/flags"), &[len])?,
                pointing,
                pointing_path: pt.path(),
                group,
                table_entry,
            });
        }
        Ok(all)
    }

    /// Reads samples `start .. start + n` of a detector and evaluates its dipole response and
    /// template into `chunk`.
    fn read_chunk(
        &self,
        inputs: &DetectorInputs<'_>,
        open: &OpenObservation,
        start: usize,
        n: usize,
        chunk: &mut Chunk,
    ) -> Result<(), CmbError> {
        let range = start..start + n;
        chunk.raw = inputs.raw.read_rows(range.clone())?;
        chunk.flags = inputs.flags.read_rows(range.clone())?;
        let (theta, phi, sky_pointing): (Vec<f64>, Vec<f64>, Option<SkyPointing>) =
            match &inputs.pointing {
                DetectorPointing::File { theta, phi, sky } => {
                    let theta = theta.read_rows(range.clone())?;
                    let phi = phi.read_rows(range.clone())?;
                    let sky = match sky {
                        Some((p, w)) if self.config.sky_model.is_some() => {
                            Some((p.read_rows(range.clone())?, w.read_rows_2d(range.clone())?))
                        }
                        _ => None,
                    };
                    (theta, phi, sky)
                }
                DetectorPointing::Expand(state) => {
                    let mut state = state.borrow_mut();
                    let (expander, buf, spent) = &mut *state;
                    let t = Instant::now();
                    expander.range(start, n, buf).map_err(|e| {
                        H5Error::invalid(
                            inputs.pointing_path,
                            &format!("{}/signal", inputs.group),
                            e.to_string(),
                        )
                    })?;
                    *spent += t.elapsed();
                    let sky = self.config.sky_model.is_some().then(|| {
                        (
                            std::mem::take(&mut buf.pixels),
                            std::mem::take(&mut buf.weights),
                        )
                    });
                    (
                        std::mem::take(&mut buf.theta),
                        std::mem::take(&mut buf.phi),
                        sky,
                    )
                }
            };
        if let Some(k) = (0..n).find(|&k| !(theta[k].is_finite() && phi[k].is_finite())) {
            return Err(H5Error::invalid(
                inputs.pointing_path,
                &format!("{}/theta", inputs.group),
                format!("sample {} has θ = {}, φ = {}", start + k, theta[k], phi[k]),
            )
            .into());
        }
        let model = open.model.with_quadrupole(inputs.quadrupole);
        let (t0, rate, first) = (
            inputs.info.t0,
            inputs.info.rate_hz,
            inputs.info.first_sample,
        );
        model.delta_t_chunk(
            &theta,
            &phi,
            |k| open.att.velocity_at(t0, rate, first + (start + k) as u64),
            0.5,
            &mut chunk.dipole,
        );
        chunk.sky_template.clear();
        if let (Some((pixels, weights)), Some(sky), Some(grid)) =
            (sky_pointing, self.sky_model()?, &open.grid)
        {
            chunk.sky_template.extend_from_slice(&chunk.dipole);
            for k in 0..n {
                let p = pixels[k];
                let in_sky = if grid.ordering() == sky.ordering {
                    Ok(p)
                } else if sky.ordering == Ordering::Nested {
                    grid.to_nested(p)
                } else {
                    grid.to_ring(p)
                };
                let m = in_sky
                    .ok()
                    .and_then(|q| sky.iqu.get(q as usize))
                    .ok_or_else(|| {
                        H5Error::invalid(
                            inputs.pointing_path,
                            &format!("{}/pixels", inputs.group),
                            format!("pixel {p} of sample {} beyond the sky model", start + k),
                        )
                    })?;
                let w = weights[k];
                if !w.iter().all(|x| x.is_finite()) {
                    return Err(H5Error::invalid(
                        inputs.pointing_path,
                        &format!("{}/weights", inputs.group),
                        format!("sample {}: weights {w:?} are not finite", start + k),
                    )
                    .into());
                }
                chunk.sky_template[k] += w[0] * m[0] + w[1] * m[1] + w[2] * m[2];
            }
        }
        Ok(())
    }

    /// Pass 1: the detector's gain and offset (from the table, or fitted), keeping the chunks
    /// in `cache` when the detector is short enough.
    fn find_gain(
        &self,
        inputs: &DetectorInputs<'_>,
        open: &OpenObservation,
        cache: &mut Vec<Chunk>,
    ) -> Result<DetectorGain, CmbError> {
        if let Some((g, Some(b))) = inputs.table_entry {
            return Ok(DetectorGain {
                cal: Calibration { gain: g, offset: b },
                fit: None,
                n_good: None,
                n_unseen: 0,
            });
        }
        let len = inputs.info.len;
        let step = self.config.chunk_samples;
        let use_cache = len <= self.config.cache_samples;
        let mut fit = LineFit::default();
        let mut resid = (0.0f64, 0u64);
        let mut n_unseen = 0u64;
        let mut chunk = Chunk::default();
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < len {
            let n = step.min(len - start);
            self.read_chunk(inputs, open, start, n, &mut chunk)?;
            let template = chunk.template();
            fit_points(&chunk.raw, &chunk.flags, template, &mut xs, &mut ys);
            if !chunk.sky_template.is_empty() {
                n_unseen += template.iter().filter(|t| !t.is_finite()).count() as u64;
            }
            match inputs.table_entry {
                Some((g, _)) => {
                    for (&x, &y) in xs.iter().zip(&ys) {
                        resid.0 += y - g * x;
                    }
                    resid.1 += xs.len() as u64;
                }
                None => fit.add_batch(&xs, &ys),
            }
            if use_cache {
                cache.push(std::mem::take(&mut chunk));
            }
            start += n;
        }
        if let Some((g, None)) = inputs.table_entry {
            if (resid.1 as usize) < self.config.min_good_samples.max(1) {
                return Err(self.too_few(inputs, resid.1, n_unseen));
            }
            return Ok(DetectorGain {
                cal: Calibration {
                    gain: g,
                    offset: resid.0 / resid.1 as f64,
                },
                fit: None,
                n_good: Some(resid.1),
                n_unseen,
            });
        }
        let sol = fit
            .solve()
            .filter(|s| s.n as usize >= self.config.min_good_samples);
        let Some(sol) = sol else {
            return Err(self.too_few(inputs, fit.len(), n_unseen));
        };
        if !(sol.gain.is_finite() && sol.gain != 0.0) {
            return Err(H5Error::invalid(
                inputs.raw.file_path(),
                &format!("{}/signal", inputs.group),
                format!("fitted gain {} is unusable", sol.gain),
            )
            .into());
        }
        Ok(DetectorGain {
            cal: Calibration {
                gain: sol.gain,
                offset: sol.offset,
            },
            fit: Some(sol),
            n_good: Some(sol.n),
            n_unseen,
        })
    }

    /// Calibrates observation `obs` with pointing from `pointing` into `out` (atomically),
    /// with `provenance` in its `/provenance` attributes.
    pub fn process(
        &self,
        obs: u32,
        pointing: &Path,
        out: &Path,
        provenance: &Provenance,
        durability: Durability,
    ) -> Result<(), CmbError> {
        // Read and validate every input before writing anything.
        let started = Instant::now();
        let open = self.open_observation(obs, pointing)?;
        let inputs = self.detector_inputs(&open)?;
        let w = H5Writer::create(out, durability)?;
        self.write_header(&w, &open)?;
        provenance.write_hdf5(&w)?;
        let mut fitted = Vec::new();
        for det in &inputs {
            let mut cache = Vec::new();
            let gain = self.find_gain(det, &open, &mut cache)?;
            if let Some(error) = self.write_detector(&w, det, &open, &gain, cache)? {
                fitted.push((det.spec.name.as_str(), gain.cal.gain, error));
            }
        }
        w.commit()?;
        self.report_gain_errors(obs, &fitted);
        let expanding: Duration = inputs
            .iter()
            .filter_map(|d| match &d.pointing {
                DetectorPointing::Expand(state) => Some(state.borrow().2),
                DetectorPointing::File { .. } => None,
            })
            .sum();
        if open.expanded.is_some() {
            tracing::info!(
                "obs={obs:04}: pointing expanded in {:.3} s of the unit's {:.3} s",
                expanding.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// The root attributes of an output.
    fn write_header(&self, w: &H5Writer, open: &OpenObservation) -> Result<(), CmbError> {
        w.attr_str("", "format", CALIBRATED_FORMAT)?;
        w.attr_i64("", "obs", i64::from(open.obs))?;
        w.attr_str("", "frame", open.pt_frame.as_str())?;
        w.attr_str(
            "",
            "gains",
            match self.config.gains {
                GainMode::Fit => "fit",
                GainMode::Table => "table",
            },
        )?;
        w.attr_i64("", "solar_dipole", i64::from(self.config.solar_dipole))?;
        w.attr_i64("", "orbital_dipole", i64::from(self.config.orbital_dipole))?;
        w.attr_f64("", "t_cmb", self.config.t_cmb)?;
        w.attr_f64("", "solar_speed_km_s", self.solar.speed_km_s)?;
        w.attr_f64("", "solar_l_deg", self.solar.l_deg)?;
        w.attr_f64("", "solar_b_deg", self.solar.b_deg)?;
        w.attr_i64("", "quadrupole", i64::from(self.config.quadrupole))?;
        if let Some(p) = &self.config.sky_model {
            w.attr_str("", "sky_model", &p.to_string_lossy())?;
        }
        Ok(())
    }

    /// Pass 2: the calibrated, dipole-subtracted samples of one detector, the residual
    /// statistics of a fit, and the detector's attributes. Returns the fitted gain's error.
    fn write_detector(
        &self,
        w: &H5Writer,
        inputs: &DetectorInputs<'_>,
        open: &OpenObservation,
        gain: &DetectorGain,
        cache: Vec<Chunk>,
    ) -> Result<Option<GainError>, CmbError> {
        let (info, group) = (&inputs.info, &inputs.group);
        let cal = gain.cal;
        w.group(group)?;
        info.write_clock(w, group)?;
        w.attr_f64(group, "gain", cal.gain)?;
        w.attr_f64(group, "offset", cal.offset)?;
        if let Some(n) = gain.n_good {
            w.attr_i64(group, "n_good", n as i64)?;
        }
        if self.config.quadrupole {
            w.attr_f64(group, "freq_ghz", inputs.spec.freq_ghz.unwrap_or(0.0))?;
            w.attr_f64(group, "quadrupole_factor", inputs.quadrupole)?;
        }
        let len = info.len;
        let step = self.config.chunk_samples;
        let sig = w.dataset::<f64>(&format!("{group}/signal"), &[len])?;
        sig.attr_str("units", "K_CMB")?;
        let flg = w.dataset::<u8>(&format!("{group}/flags"), &[len])?;
        let mut stats = gain
            .fit
            .map(|f| ResidualStats::new(f.block_len(), f.template_mean));
        let mut chunk = Chunk::default();
        let (mut out, mut out_flags) = (Vec::new(), Vec::new());
        let (mut xs, mut residuals) = (Vec::new(), Vec::new());
        let mut cached = cache.into_iter();
        let mut start = 0;
        while start < len {
            let n = step.min(len - start);
            match cached.next() {
                Some(c) => chunk = c,
                None => self.read_chunk(inputs, open, start, n, &mut chunk)?,
            }
            cal.apply(
                &chunk.raw,
                &chunk.flags,
                &chunk.dipole,
                FLAG_NONFINITE,
                &mut out,
                &mut out_flags,
            );
            if let Some(st) = &mut stats {
                let template = chunk.template();
                cal.fit_residuals(&chunk.raw, &chunk.flags, template, &mut xs, &mut residuals);
                st.add_batch(&xs, &residuals);
            }
            sig.write_rows(start, &out)?;
            flg.write_rows(start, &out_flags)?;
            start += n;
        }
        if gain.n_unseen > 0 {
            w.attr_i64(group, "n_sky_unseen", gain.n_unseen as i64)?;
        }
        let error = stats.zip(gain.fit).map(|(st, fit)| st.gain_error(&fit));
        if let Some(e) = &error {
            write_gain_error(w, &inputs.group, cal.gain, e)?;
        }
        Ok(error)
    }

    /// One log line per observation on its fitted gains' errors: a warning when their median
    /// exceeds [`WARN_GAIN_ERROR_RATIO`] times the white-noise error (the template leaves
    /// signal unmodelled: the sky, or low-frequency noise), else at info level.
    fn report_gain_errors(&self, obs: u32, fitted: &[(&str, f64, GainError)]) {
        if fitted.is_empty() {
            return;
        }
        let mut ratios: Vec<f64> = fitted.iter().map(|(_, _, e)| e.total / e.white).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let mut relative: Vec<f64> = fitted.iter().map(|(_, g, e)| e.total / g.abs()).collect();
        relative.sort_by(f64::total_cmp);
        let worst = fitted
            .iter()
            .max_by(|a, b| (a.2.total / a.2.white).total_cmp(&(b.2.total / b.2.white)))
            .map(|(name, _, e)| format!("{name} {:.1}×", e.total / e.white))
            .unwrap_or_default();
        let summary = format!(
            "obs={obs:04}: {} fitted gains, median relative error {:.2e}, {median:.1}× the white-noise error (largest {worst})",
            fitted.len(),
            relative[relative.len() / 2],
        );
        if median > WARN_GAIN_ERROR_RATIO {
            tracing::warn!(
                "{summary}: the residual holds signal the template does not model, the sky or low-frequency noise{}",
                if self.config.sky_model.is_some() {
                    " (the sky model does not explain it)"
                } else {
                    "; a sky model (calibrate.sky_model) removes the sky's part"
                }
            );
        } else {
            tracing::info!("{summary}");
        }
    }

    fn too_few(&self, inputs: &DetectorInputs<'_>, n: u64, n_unseen: u64) -> CmbError {
        let unseen = if n_unseen > 0 {
            format!(
                "; {n_unseen} samples fall on pixels that the sky model {} leaves unseen",
                self.config
                    .sky_model
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            )
        } else {
            String::new()
        };
        H5Error::invalid(
            inputs.raw.file_path(),
            &format!("{}/signal", inputs.group),
            format!(
                "only {n} unflagged finite samples (at least {} needed for calibration){unseen}",
                self.config.min_good_samples
            ),
        )
        .into()
    }
}

/// A detector whose gain error exceeds this multiple of its white-noise error gets
/// `gain_warning = 1`.
pub const FLAG_GAIN_ERROR_RATIO: f64 = 3.0;

/// An observation whose fitted gains' median error exceeds this multiple of their white-noise
/// errors is reported with a warning. Low-frequency noise alone gives `√(1 + P₁/f(f)/P_white)`
/// at the template's frequency (2 for a knee at three times the spin frequency).
pub const WARN_GAIN_ERROR_RATIO: f64 = 4.0;

/// The error attributes of a fitted gain `gain` in `group`.
fn write_gain_error(w: &H5Writer, group: &str, gain: f64, e: &GainError) -> Result<(), CmbError> {
    w.attr_f64(group, "gain_error", e.total)?;
    w.attr_f64(group, "gain_error_white", e.white)?;
    w.attr_f64(group, "gain_error_sky", e.sky)?;
    w.attr_f64(group, "noise_rms", e.noise_rms / gain.abs())?;
    w.attr_f64(group, "excess_rms", e.excess_rms / gain.abs())?;
    let flagged = e.total > FLAG_GAIN_ERROR_RATIO * e.white;
    w.attr_i64(group, "gain_warning", i64::from(flagged))?;
    Ok(())
}

impl Stage for Calibrate {
    type Unit = ObsUnit;

    fn name(&self) -> &'static str {
        "calibrate"
    }

    fn config_fingerprint(&self) -> String {
        fingerprint_of(&self.config)
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<ObsUnit>>, PlanError> {
        Ok(plan_list(&self.list))
    }

    fn run(&self, unit: &ObsUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let pointing = self.pointing_path(&ctx.run_dir, unit.obs);
        if self.config.pointing == PointingSource::File && !pointing.exists() {
            return Err(UnitFailure::new(
                FailureKind::DependencyFailed,
                format!(
                    "{}: pointing output missing (run skypipe-pointing first; did its unit fail?)",
                    pointing.display()
                ),
            ));
        }
        let out = self.output_path(&ctx.run_dir, unit.obs);
        let provenance = Provenance::of_unit(self, unit, &ctx.run_dir);
        self.process(unit.obs, &pointing, &out, &provenance, durability(ctx))
            .map_err(CmbError::into_failure)?;
        Ok(Outcome::Done)
    }

    fn connections(&self, unit: &ObsUnit, run_dir: &Path) -> Connections {
        let mut c = Connections::new();
        if let Some(entry) = self.list.entry(unit.obs) {
            c = c.prerequisite(DATASET_OBSERVATION, &entry.file);
        }
        if let Some(sky) = &self.config.sky_model {
            c = c.input(DATASET_MAP, sky);
        }
        if self.config.pointing == PointingSource::File {
            c = c.input(DATASET_POINTING, self.pointing_path(run_dir, unit.obs));
        }
        c.output(DATASET_CALIBRATED, self.output_path(run_dir, unit.obs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_core::dipole::SOLAR_DIPOLE_L_DEG;

    #[test]
    fn solar_velocity_keys() {
        let c = CalibrateConfig::default();
        assert_eq!(c.solar_velocity().unwrap(), SolarVelocity::planck_2018());
        let c = CalibrateConfig {
            solar_speed_km_s: Some(370.08),
            solar_l_deg: Some(263.99),
            solar_b_deg: Some(48.25),
            ..Default::default()
        };
        let v = c.solar_velocity().unwrap();
        assert_eq!((v.speed_km_s, v.l_deg, v.b_deg), (370.08, 263.99, 48.25));
        let c = CalibrateConfig {
            solar_amplitude_uk: Some(3366.6),
            t_cmb: 2.7255,
            ..Default::default()
        };
        let v = c.solar_velocity().unwrap();
        assert!((v.speed_km_s - C_KM_S * 3366.6e-6 / 2.7255).abs() < 1e-12);
        assert_eq!(v.l_deg, SOLAR_DIPOLE_L_DEG);
        let both = CalibrateConfig {
            solar_amplitude_uk: Some(3366.6),
            solar_speed_km_s: Some(370.0),
            ..Default::default()
        };
        assert!(
            both.solar_velocity()
                .unwrap_err()
                .to_string()
                .contains("exclusive")
        );
        let bad = CalibrateConfig {
            solar_b_deg: Some(95.0),
            ..Default::default()
        };
        assert!(bad.solar_velocity().is_err());
    }

    #[test]
    fn new_keys_at_their_defaults_keep_the_fingerprint() {
        // The fingerprint of a configuration without the keys added for the dipole model and
        // output_dir is the one earlier releases computed (resume across the upgrade).
        let json = serde_json::to_string(&CalibrateConfig::default()).unwrap();
        for key in [
            "output_dir",
            "solar_speed_km_s",
            "solar_amplitude_uk",
            "solar_l_deg",
            "solar_b_deg",
            "quadrupole",
        ] {
            assert!(!json.contains(key), "{key} in {json}");
        }
        let set = CalibrateConfig {
            quadrupole: true,
            ..Default::default()
        };
        assert!(serde_json::to_string(&set).unwrap().contains("quadrupole"));
    }
}
