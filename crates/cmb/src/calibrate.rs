//! `skypipe-calibrate`: calibration to K_CMB and dipole removal, one observation per unit.
//!
//! Per detector, the raw timestream `d` (V) is modelled as `d = g·T + b + noise` where the
//! template `T` (K_CMB) is the detector's response to the total (solar + orbital) relativistic
//! dipole, `½·ΔT_dipole` (the I weight of the pointing convention is ½), plus, when a sky model
//! is given, `w·m` with the stored pointing weights. The gain `g` (V/K_CMB) and offset `b` (V)
//! come from a gain table or from a least-squares fit over the unflagged, finite samples. The
//! output is `(d − b)/g − ½·ΔT_dipole`: calibrated, dipole-subtracted, in K_CMB, in the same
//! response convention as the pointing weights. NaN or infinite raw samples are written as 0
//! and flagged ([`crate::model::FLAG_NONFINITE`]); they never enter the fit.
//!
//! Memory is bounded: a fit reads the inputs twice in chunks (sums, then output).

use crate::model::{
    AttitudeData, CALIBRATED_FORMAT, CmbError, DATASET_CALIBRATED, DATASET_OBSERVATION,
    DATASET_POINTING, FLAG_NONFINITE, FocalPlane, Frame, GainTable, ObsUnit, ObservationList,
    SkyMap, direction, obs_file_name, parse_ordering, read_attitude, stage_file, timestream_info,
};
use crate::pointing::{durability, plan_list};
use serde::{Deserialize, Serialize};
use skypipe_core::aberration::{Beta, to_apparent};
use skypipe_core::dipole::{T_CMB, dipole, solar_velocity_galactic_km_s};
use skypipe_core::quat::{self, Quat};
use skypipe_io::Durability;
use skypipe_io::hdf5::{H5Dataset, H5Error, H5Reader, H5Writer};
use skypipe_stage::{
    Connections, FailureKind, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure,
    fingerprint_of,
};
use std::path::{Path, PathBuf};

/// Where gains come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GainMode {
    /// Fitted per detector per observation against the dipole template (default).
    Fit,
    /// Read from `gain_table`.
    Table,
}

/// The `[calibrate]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrateConfig {
    /// The observation list. Default `data/cmb/observations.json`.
    pub observations: PathBuf,
    /// Directory of the pointing outputs. Default `RUN_DIR/pointing`.
    pub pointing_dir: Option<PathBuf>,
    /// `fit` (default) or `table`.
    pub gains: GainMode,
    /// Gain table (`skypipe-cmb-gains/1`), required with `gains = "table"`.
    pub gain_table: Option<PathBuf>,
    /// Optional sky map (`skypipe-cmb-map/1`) added to the template; its nside, ordering and
    /// frame must match the pointing.
    pub sky_model: Option<PathBuf>,
    /// Include the solar dipole (default true).
    pub solar_dipole: bool,
    /// Include the orbital dipole (default true).
    pub orbital_dipole: bool,
    /// CMB monopole (K). Default 2.72548.
    pub t_cmb: f64,
    /// Samples per chunk (bounds memory). Default 65536.
    pub chunk_samples: usize,
    /// Fewer good samples than this in a detector fails the unit. Default 100.
    pub min_good_samples: usize,
    /// Detectors with at most this many samples are read once and kept in memory between the
    /// fit and the output (about 25 bytes per sample); longer ones are read twice in chunks.
    /// Default 2 000 000 (≈ 50 MB).
    pub cache_samples: usize,
}

impl Default for CalibrateConfig {
    fn default() -> Self {
        Self {
            observations: PathBuf::from("data/cmb/observations.json"),
            pointing_dir: None,
            gains: GainMode::Fit,
            gain_table: None,
            sky_model: None,
            solar_dipole: true,
            orbital_dipole: true,
            t_cmb: T_CMB,
            chunk_samples: 65536,
            min_good_samples: 100,
            cache_samples: 2_000_000,
        }
    }
}

/// The dipole seen along stored pointing directions.
#[derive(Debug, Clone, Copy)]
pub struct DipoleModel {
    frame: Quat,
    solar: [f64; 3],
    orbital: bool,
    aberration: bool,
    t_cmb: f64,
}

impl DipoleModel {
    /// Directions in `out_frame` (aberration-corrected by the orbital velocity when
    /// `aberration`), velocities in `attitude_frame`.
    pub fn new(
        attitude_frame: Frame,
        out_frame: Frame,
        aberration: bool,
        solar: bool,
        orbital: bool,
        t_cmb: f64,
    ) -> Self {
        let solar = if solar {
            quat::rotate(
                Frame::Galactic.rotation_to(out_frame),
                solar_velocity_galactic_km_s(),
            )
        } else {
            [0.0; 3]
        };
        Self {
            frame: attitude_frame.rotation_to(out_frame),
            solar,
            orbital,
            aberration,
            t_cmb,
        }
    }

    /// `ΔT` (K) at colatitude `theta`, longitude `phi` (rad, output frame) for the satellite
    /// velocity `v_km_s` (attitude frame): the photons' apparent direction is recovered from the
    /// aberration-corrected one, then the relativistic dipole of the total velocity applies.
    #[inline]
    pub fn delta_t(&self, theta: f64, phi: f64, v_km_s: [f64; 3]) -> f64 {
        let n = direction(theta, phi);
        let v = quat::rotate(self.frame, v_km_s);
        let n_app = if self.aberration {
            to_apparent(n, &Beta::from_km_s(v).unwrap_or(Beta::zero()))
        } else {
            n
        };
        let total = if self.orbital {
            [0, 1, 2].map(|i| self.solar[i] + v[i])
        } else {
            self.solar
        };
        dipole(
            n_app,
            &Beta::from_km_s(total).unwrap_or(Beta::zero()),
            self.t_cmb,
        )
    }
}

/// Streaming least squares of `y = g·x + b` (Welford co-moments).
#[derive(Debug, Clone, Copy, Default)]
pub struct LineFit {
    n: f64,
    mx: f64,
    my: f64,
    sxx: f64,
    sxy: f64,
    syy: f64,
}

/// Result of a [`LineFit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineSolution {
    /// Slope `g`.
    pub gain: f64,
    /// Intercept `b`.
    pub offset: f64,
    /// Standard error of `g` from the residual scatter (white-noise assumption).
    pub gain_error: f64,
    /// Number of points.
    pub n: u64,
}

impl LineFit {
    /// Adds the point `(x, y)`.
    #[inline]
    pub fn add(&mut self, x: f64, y: f64) {
        self.n += 1.0;
        let dx = x - self.mx;
        self.mx += dx / self.n;
        let dy = y - self.my;
        self.my += dy / self.n;
        self.sxx += dx * (x - self.mx);
        self.sxy += dx * (y - self.my);
        self.syy += dy * (y - self.my);
    }

    /// The fitted line, or `None` with fewer than 3 points or a constant `x`.
    pub fn solve(&self) -> Option<LineSolution> {
        if self.n < 3.0 || self.sxx <= 0.0 {
            return None;
        }
        let gain = self.sxy / self.sxx;
        let resid = (self.syy - self.sxy * gain).max(0.0);
        Some(LineSolution {
            gain,
            offset: self.my - gain * self.mx,
            gain_error: (resid / (self.n - 2.0) / self.sxx).sqrt(),
            n: self.n as u64,
        })
    }
}

/// The calibration stage.
#[derive(Debug, Clone)]
pub struct Calibrate {
    config: CalibrateConfig,
    list: ObservationList,
    focal_plane: FocalPlane,
    table: Option<GainTable>,
    sky: Option<SkyMap>,
}

/// One detector's inputs, opened for chunked reads.
struct DetectorInputs<'a> {
    raw: H5Dataset<'a>,
    flags: H5Dataset<'a>,
    theta: H5Dataset<'a>,
    phi: H5Dataset<'a>,
    sky: Option<(H5Dataset<'a>, H5Dataset<'a>)>,
    pointing_path: &'a Path,
    group: String,
    /// `(t0, rate_hz)` of the timestream.
    clock: (f64, f64),
}

/// One chunk of one detector: raw samples, flags, dipole response `½ΔT` and template.
#[derive(Default, Clone)]
struct Chunk {
    raw: Vec<f64>,
    flags: Vec<u8>,
    dipole: Vec<f64>,
    template: Vec<f64>,
}

impl Calibrate {
    /// Checks the configuration and reads the list, focal plane, gain table and sky model.
    pub fn new(config: CalibrateConfig) -> Result<Self, String> {
        if config.chunk_samples == 0 {
            return Err("calibrate.chunk_samples must be at least 1".into());
        }
        if !(config.t_cmb.is_finite() && config.t_cmb > 0.0) {
            return Err(format!("calibrate.t_cmb must be > 0, got {}", config.t_cmb));
        }
        let table = match (config.gains, &config.gain_table) {
            (GainMode::Table, Some(p)) => Some(GainTable::read(p).map_err(|e| e.to_string())?),
            (GainMode::Table, None) => {
                return Err("calibrate.gains = \"table\" needs calibrate.gain_table".into());
            }
            (GainMode::Fit, _) => None,
        };
        let sky = match &config.sky_model {
            Some(p) => Some(SkyMap::read(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let list = ObservationList::load(&config.observations).map_err(|e| e.to_string())?;
        let focal_plane = FocalPlane::read(&list.focal_plane).map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            list,
            focal_plane,
            table,
            sky,
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

    fn read_chunk(
        &self,
        inputs: &DetectorInputs<'_>,
        model: &DipoleModel,
        att: &AttitudeData,
        start: usize,
        n: usize,
        chunk: &mut Chunk,
    ) -> Result<(), CmbError> {
        let range = start..start + n;
        chunk.raw = inputs.raw.read_rows(range.clone())?;
        chunk.flags = inputs.flags.read_rows(range.clone())?;
        let theta: Vec<f64> = inputs.theta.read_rows(range.clone())?;
        let phi: Vec<f64> = inputs.phi.read_rows(range.clone())?;
        let vel = att.velocities(inputs.clock.0, inputs.clock.1, start as u64, n);
        chunk.dipole.clear();
        for k in 0..n {
            if !(theta[k].is_finite() && phi[k].is_finite()) {
                return Err(H5Error::invalid(
                    inputs.pointing_path,
                    &format!("{}/theta", inputs.group),
                    format!("sample {} has θ = {}, φ = {}", start + k, theta[k], phi[k]),
                )
                .into());
            }
            chunk
                .dipole
                .push(0.5 * model.delta_t(theta[k], phi[k], vel[k]));
        }
        chunk.template.clone_from(&chunk.dipole);
        if let (Some((pix_ds, w_ds)), Some(sky)) = (&inputs.sky, &self.sky) {
            let pixels: Vec<u64> = pix_ds.read_rows(range.clone())?;
            let weights: Vec<[f64; 3]> = w_ds.read_rows_2d(range)?;
            for k in 0..n {
                let m = sky.iqu.get(pixels[k] as usize).ok_or_else(|| {
                    H5Error::invalid(
                        inputs.pointing_path,
                        &format!("{}/pixels", inputs.group),
                        format!("pixel {} beyond the sky model", pixels[k]),
                    )
                })?;
                let w = weights[k];
                chunk.template[k] += w[0] * m[0] + w[1] * m[1] + w[2] * m[2];
            }
        }
        Ok(())
    }

    /// Calibrates observation `obs` with pointing from `pointing` into `out` (atomically).
    pub fn process(
        &self,
        obs: u32,
        pointing: &Path,
        out: &Path,
        durability: Durability,
    ) -> Result<(), CmbError> {
        let entry = self.list.entry(obs).ok_or_else(|| CmbError::List {
            path: self.config.observations.clone(),
            message: format!("no observation {obs}"),
        })?;
        let raw = H5Reader::open(&entry.file)?;
        let att = read_attitude(&raw)?;
        let pt = H5Reader::open(pointing)?;
        let pt_path = pt.path().to_path_buf();
        let fr = pt.attr_str("", "frame")?;
        let pt_frame = Frame::parse(&fr)
            .ok_or_else(|| H5Error::invalid(&pt_path, "@frame", format!("unknown frame '{fr}'")))?;
        let aberration = pt.attr_i64("", "aberration")? != 0;
        if let Some(sky) = &self.sky {
            let nside = pt.attr_i64("", "nside")?;
            let ord = parse_ordering(&pt.attr_str("", "ordering")?);
            if nside != sky.nside as i64 || ord != Some(sky.ordering) || pt_frame != sky.frame {
                return Err(H5Error::invalid(
                    &pt_path,
                    "@nside",
                    format!(
                        "pointing grid (nside {nside}, {ord:?}, {}) differs from the sky model's (nside {}, {:?}, {})",
                        pt_frame.as_str(),
                        sky.nside,
                        sky.ordering,
                        sky.frame.as_str()
                    ),
                )
                .into());
            }
        }
        let model = DipoleModel::new(
            att.frame,
            pt_frame,
            aberration,
            self.config.solar_dipole,
            self.config.orbital_dipole,
            self.config.t_cmb,
        );
        // Validate every detector's inputs before writing.
        let mut all = Vec::new();
        for det in &self.focal_plane.detectors {
            let group = format!("detectors/{}", det.name);
            let info = timestream_info(&raw, &group, "signal", Some(det.rate_hz))?;
            let pinfo = timestream_info(&pt, &group, "theta", None)?;
            if pinfo != info {
                return Err(H5Error::invalid(
                    &pt_path,
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
            let len = Some(info.len);
            let inputs = DetectorInputs {
                raw: raw.dataset(&format!("{group}/signal"), &[len])?,
                flags: raw.dataset(&format!("{group}/flags"), &[len])?,
                theta: pt.dataset(&format!("{group}/theta"), &[len])?,
                phi: pt.dataset(&format!("{group}/phi"), &[len])?,
                sky: if self.sky.is_some() {
                    Some((
                        pt.dataset(&format!("{group}/pixels"), &[len])?,
                        pt.dataset(&format!("{group}/weights"), &[len, Some(3)])?,
                    ))
                } else {
                    None
                },
                pointing_path: &pt_path,
                group,
                clock: (info.t0, info.rate_hz),
            };
            let table_entry = match &self.table {
                Some(t) => Some(t.lookup(obs, &det.name).ok_or_else(|| {
                    H5Error::invalid(
                        self.config.gain_table.as_deref().unwrap_or(Path::new("")),
                        &format!("detectors/{}/gain", det.name),
                        format!("no gain for observation {obs}, detector {}", det.name),
                    )
                })?),
                None => None,
            };
            all.push((det, info, inputs, table_entry));
        }
        let w = H5Writer::create(out, durability)?;
        w.attr_str("", "format", CALIBRATED_FORMAT)?;
        w.attr_i64("", "obs", i64::from(obs))?;
        w.attr_str("", "frame", pt_frame.as_str())?;
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
        let mut chunk = Chunk::default();
        let step = self.config.chunk_samples;
        for (_, info, inputs, table_entry) in &all {
            let len = info.len;
            let good = |c: &Chunk, k: usize| c.flags[k] == 0 && c.raw[k].is_finite();
            // Pass 1: gain and offset.
            let needs_pass = !matches!(table_entry, Some((_, Some(_))));
            let mut fit = LineFit::default();
            let mut resid = (0.0f64, 0u64);
            let use_cache = needs_pass && len <= self.config.cache_samples;
            let mut cache: Vec<Chunk> = Vec::new();
            if needs_pass {
                let mut start = 0;
                while start < len {
                    let n = step.min(len - start);
                    self.read_chunk(inputs, &model, &att, start, n, &mut chunk)?;
                    if use_cache {
                        cache.push(chunk.clone());
                    }
                    for k in 0..n {
                        if good(&chunk, k) {
                            match table_entry {
                                Some((g, _)) => {
                                    resid.0 += chunk.raw[k] - g * chunk.template[k];
                                    resid.1 += 1;
                                }
                                None => fit.add(chunk.template[k], chunk.raw[k]),
                            }
                        }
                    }
                    start += n;
                }
            }
            let (gain, offset, gain_error, n_good) = match table_entry {
                Some((g, Some(b))) => (*g, *b, f64::NAN, None),
                Some((g, None)) => {
                    if (resid.1 as usize) < self.config.min_good_samples.max(1) {
                        return Err(self.too_few(inputs, resid.1));
                    }
                    (*g, resid.0 / resid.1 as f64, f64::NAN, Some(resid.1))
                }
                None => {
                    let sol = fit
                        .solve()
                        .filter(|s| s.n as usize >= self.config.min_good_samples);
                    let Some(sol) = sol else {
                        return Err(self.too_few(inputs, fit.n as u64));
                    };
                    if !(sol.gain.is_finite() && sol.gain != 0.0) {
                        return Err(H5Error::invalid(
                            raw.path(),
                            &format!("{}/signal", inputs.group),
                            format!("fitted gain {} is unusable", sol.gain),
                        )
                        .into());
                    }
                    (sol.gain, sol.offset, sol.gain_error, Some(sol.n))
                }
            };
            // Pass 2: calibrated, dipole-subtracted output.
            let group = &inputs.group;
            w.group(group)?;
            w.attr_f64(group, "t0", info.t0)?;
            w.attr_f64(group, "rate_hz", info.rate_hz)?;
            w.attr_f64(group, "gain", gain)?;
            w.attr_f64(group, "offset", offset)?;
            if gain_error.is_finite() {
                w.attr_f64(group, "gain_error", gain_error)?;
            }
            if let Some(n) = n_good {
                w.attr_i64(group, "n_good", n as i64)?;
            }
            let sig = w.dataset::<f64>(&format!("{group}/signal"), &[len])?;
            sig.attr_str("units", "K_CMB")?;
            let flg = w.dataset::<u8>(&format!("{group}/flags"), &[len])?;
            let mut start = 0;
            let (mut cal, mut fl) = (Vec::new(), Vec::new());
            let mut cached = cache.into_iter();
            while start < len {
                let n = step.min(len - start);
                match cached.next() {
                    Some(c) => chunk = c,
                    None => self.read_chunk(inputs, &model, &att, start, n, &mut chunk)?,
                }
                cal.clear();
                fl.clear();
                for k in 0..n {
                    let v = chunk.raw[k];
                    if v.is_finite() {
                        cal.push((v - offset) / gain - chunk.dipole[k]);
                        fl.push(chunk.flags[k]);
                    } else {
                        cal.push(0.0);
                        fl.push(chunk.flags[k] | FLAG_NONFINITE);
                    }
                }
                sig.write_rows(start, &cal)?;
                flg.write_rows(start, &fl)?;
                start += n;
            }
        }
        w.commit()?;
        Ok(())
    }

    fn too_few(&self, inputs: &DetectorInputs<'_>, n: u64) -> CmbError {
        H5Error::invalid(
            inputs.raw_path(),
            &format!("{}/signal", inputs.group),
            format!(
                "only {n} unflagged finite samples (at least {} needed for calibration)",
                self.config.min_good_samples
            ),
        )
        .into()
    }
}

impl DetectorInputs<'_> {
    fn raw_path(&self) -> &Path {
        self.raw.file_path()
    }
}

/// `RUN_DIR/calibrate/obs=NNNN.h5`.
pub fn output_path(run_dir: &Path, obs: u32) -> PathBuf {
    run_dir.join("calibrate").join(obs_file_name(obs))
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
        if !pointing.exists() {
            return Err(UnitFailure::new(
                FailureKind::DependencyFailed,
                format!(
                    "{}: pointing output missing (run skypipe-pointing first; did its unit fail?)",
                    pointing.display()
                ),
            ));
        }
        let out = output_path(&ctx.run_dir, unit.obs);
        self.process(unit.obs, &pointing, &out, durability(ctx))
            .map_err(CmbError::into_failure)?;
        Ok(Outcome::Done)
    }

    fn connections(&self, unit: &ObsUnit, run_dir: &Path) -> Connections {
        let mut c = Connections::new();
        if let Some(entry) = self.list.entry(unit.obs) {
            c = c.prerequisite(DATASET_OBSERVATION, &entry.file);
        }
        c.input(DATASET_POINTING, self.pointing_path(run_dir, unit.obs))
            .output(DATASET_CALIBRATED, output_path(run_dir, unit.obs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit_recovers_an_exact_line_and_reports_scatter() {
        let mut f = LineFit::default();
        for i in 0..1000 {
            let x = ((i as f64) * 0.37).sin() * 1e-3;
            f.add(x, 1.25 * x + 0.1);
        }
        let s = f.solve().unwrap();
        assert!(
            (s.gain - 1.25).abs() < 1e-12 && (s.offset - 0.1).abs() < 1e-14,
            "{s:?}"
        );
        assert!(s.gain_error < 1e-8, "{}", s.gain_error);
        // Alternating ±σ scatter: the reported error is σ / √Σ(x − x̄)².
        let mut f = LineFit::default();
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i as f64) * 0.37).sin() * 1e-3)
            .collect();
        for (i, &x) in xs.iter().enumerate() {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            f.add(x, 1.25 * x + 0.1 + 1e-4 * sign);
        }
        let mean = xs.iter().sum::<f64>() / 1000.0;
        let sxx: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        let s = f.solve().unwrap();
        let expected = 1e-4 / sxx.sqrt();
        assert!(
            (s.gain_error / expected - 1.0).abs() < 0.01,
            "{} vs {expected}",
            s.gain_error
        );
        assert!((s.gain - 1.25).abs() < 3.0 * expected, "{s:?}");
        let mut f = LineFit::default();
        for i in 0..3 {
            f.add(1.0, i as f64);
        }
        assert!(f.solve().is_none(), "constant template");
    }

    #[test]
    fn dipole_model_without_orbit_is_the_solar_dipole() {
        let m = DipoleModel::new(Frame::Ecliptic, Frame::Galactic, false, true, false, T_CMB);
        // Towards the solar apex (l, b) = (264.021°, 48.253°): T0(√((1+β)/(1−β)) − 1).
        let theta = (90.0f64 - 48.253).to_radians();
        let phi = 264.021f64.to_radians();
        let dt = m.delta_t(theta, phi, [10.0, 20.0, 30.0]);
        let b: f64 = 3362.08e-6 / T_CMB;
        let exact = T_CMB * (((1.0 + b) / (1.0 - b)).sqrt() - 1.0);
        assert!((dt - exact).abs() < 1e-12, "{dt} vs {exact}");
        // Aberration round trip: with aberration, the rest direction is mapped back first.
        let m2 = DipoleModel::new(Frame::Galactic, Frame::Galactic, true, false, true, T_CMB);
        let v = [0.0, 0.0, 30.0];
        let n_rest =
            skypipe_core::aberration::to_rest([1.0, 0.0, 0.0], &Beta::from_km_s(v).unwrap());
        let th = n_rest[2].acos();
        let ph = n_rest[1].atan2(n_rest[0]);
        // Perpendicular to v only the second-order term T0 (1/γ − 1) remains.
        let beta = Beta::from_km_s(v).unwrap();
        let second_order = T_CMB * (1.0 / beta.gamma() - 1.0);
        let dt = m2.delta_t(th, ph, v);
        assert!((dt - second_order).abs() < 1e-15, "{dt} vs {second_order}");
    }
}
