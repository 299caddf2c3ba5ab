//! `skypipe-sim cmb`: the built-in Planck-like data set (seeded, sized from tiny to benchmark).
//!
//! Scan: the spin axis follows the anti-sun direction along the ecliptic (~1°/day), held fixed
//! during each observation (a pointing period) with an optional precession about the anti-sun
//! direction; the boresight is 85° from the spin axis and spins at 1 rpm. Within an observation
//! the attitude is exactly a constant-rate rotation, so slerp between its 8 Hz samples
//! reproduces it. The satellite moves on a circular 1 AU orbit (~29.8 km/s, ecliptic).
//!
//! Sky: a smooth I/Q/U HEALPix map in galactic coordinates (a few seeded oscillating functions
//! of the angle to random axes), seen through the same pointing kernel `skypipe-pointing` uses
//! (aberration on), plus the relativistic solar + orbital dipole. Each detector of a few
//! polarised pairs sees `½(I + η(Q cos 2ψ + U sin 2ψ)) + ½ΔT_dipole` (K_CMB) plus white noise
//! and 1/f noise (a sum of equal-variance AR(1) processes with log-spaced corner frequencies,
//! whose spectrum is ∝ 1/f between them), scaled by a gain that drifts slowly from observation
//! to observation and offset: `raw = g·(signal + noise) + offset` (V).
//!
//! Output directory: `observations.json`, `focalplane.h5`, `obs/obs=NNNN.h5`, and the truth
//! `truth/sky.h5` (the map) and `truth/gains.h5` (gains and offsets, a gain table).

use crate::model::{
    AttitudeData, CmbError, DetectorSpec, FocalPlane, Frame, GainTable, OBS_FORMAT,
    OBSERVATIONS_FORMAT, ObservationEntry, ObservationList, SkyMap, direction, obs_file_name,
};
use crate::pointing::{ChunkPointing, PointingSetup};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use skypipe_core::attitude::{Attitude, SampleClock};
use skypipe_core::dipole::{DipoleModel, SolarVelocity, T_CMB, quadrupole_factor};
use skypipe_core::healpix::{Healpix, Ordering};
use skypipe_core::pointing::quat_to_angles;
use skypipe_core::quat::{self, Quat};
use skypipe_io::Durability;
use skypipe_io::hdf5::H5Writer;
use std::f64::consts::TAU;
use std::path::{Path, PathBuf};

/// Seconds per (Julian) year.
const YEAR_S: f64 = 365.25 * 86400.0;

/// Preset sizes of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// 4 observations of 60 s, 2 detector pairs (tests: seconds).
    Tiny,
    /// 24 observations of 10 min, 4 pairs.
    Small,
    /// 240 observations of 5 min, 4 pairs (benchmarks; raise `observations` for thousands).
    Bench,
}

/// Command-line options of this simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// TOML file overriding the preset's keys (see `configs/sim-cmb.toml`; unknown keys refused).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Preset size.
    #[arg(long, value_enum, default_value = "tiny")]
    pub size: Size,
    /// Random seed (overrides the config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of observations (overrides the config).
    #[arg(long)]
    pub observations: Option<u32>,
}

/// Everything the simulation depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Random seed.
    pub seed: u64,
    /// Number of observations (files).
    pub observations: u32,
    /// Length of one observation (s).
    pub obs_duration_s: f64,
    /// Start time of observation 0 (s, Unix-like).
    pub start_time_s: f64,
    /// Polarised detector pairs (two orthogonal detectors each).
    pub detector_pairs: u32,
    /// Detector sample rate (Hz).
    pub rate_hz: f64,
    /// Attitude sample rate (Hz).
    pub attitude_rate_hz: f64,
    /// Spin rate (rpm).
    pub spin_rpm: f64,
    /// Angle between the boresight and the spin axis (deg).
    pub boresight_angle_deg: f64,
    /// Half-opening of the spin axis's precession about the anti-sun direction (deg; 0: none).
    pub precession_deg: f64,
    /// Precession period (days).
    pub precession_period_days: f64,
    /// Orbital speed about the Sun (km/s).
    pub orbit_speed_km_s: f64,
    /// Distance of the detector pairs from the boresight (deg).
    pub focalplane_radius_deg: f64,
    /// Polarisation efficiency of every detector.
    pub pol_efficiency: f64,
    /// nside of the sky map (RING, galactic).
    pub sky_nside: u64,
    /// Amplitude of the I anisotropies (µK_CMB; 0 for none).
    pub sky_i_uk: f64,
    /// Amplitude of the Q and U anisotropies (µK_CMB).
    pub sky_pol_uk: f64,
    /// Noise-equivalent temperature (µK_CMB √s; 0: noiseless).
    pub net_uk_sqrt_s: f64,
    /// 1/f knee frequency (Hz; 0: white noise only).
    pub fknee_hz: f64,
    /// Include the solar dipole.
    pub solar_dipole: bool,
    /// Include the orbital dipole.
    pub orbital_dipole: bool,
    /// Mean gain (V / K_CMB).
    pub gain: f64,
    /// Relative spread of the detectors' gains.
    pub gain_spread: f64,
    /// Relative random-walk step of each gain from one observation to the next.
    pub gain_drift: f64,
    /// RMS of the offsets (V).
    pub offset_v: f64,
    /// Centre frequency of every detector (GHz), written to the focal plane when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freq_ghz: Option<f64>,
    /// Add the kinematic quadrupole at `freq_ghz` to the simulated dipole (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub quadrupole: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl SimConfig {
    /// The preset of `size`.
    pub fn preset(size: Size) -> Self {
        let base = Self {
            seed: 1,
            observations: 4,
            obs_duration_s: 60.0,
            start_time_s: 1.6e9,
            detector_pairs: 2,
            rate_hz: 180.37,
            attitude_rate_hz: 8.0,
            spin_rpm: 1.0,
            boresight_angle_deg: 85.0,
            precession_deg: 0.0,
            precession_period_days: 182.6,
            orbit_speed_km_s: 29.78,
            focalplane_radius_deg: 1.5,
            pol_efficiency: 0.95,
            sky_nside: 64,
            sky_i_uk: 100.0,
            sky_pol_uk: 5.0,
            net_uk_sqrt_s: 50.0,
            fknee_hz: 0.05,
            solar_dipole: true,
            orbital_dipole: true,
            gain: 1.0,
            gain_spread: 0.05,
            gain_drift: 1e-3,
            offset_v: 0.01,
            freq_ghz: None,
            quadrupole: false,
        };
        match size {
            Size::Tiny => base,
            Size::Small => Self {
                observations: 24,
                obs_duration_s: 600.0,
                detector_pairs: 4,
                sky_nside: 128,
                ..base
            },
            Size::Bench => Self {
                observations: 240,
                obs_duration_s: 300.0,
                detector_pairs: 4,
                sky_nside: 256,
                ..base
            },
        }
    }

    /// The preset overridden by the keys of a TOML file (unknown keys refused).
    pub fn from_toml(size: Size, text: &str) -> Result<Self, SimConfigError> {
        let mut table = toml::Table::try_from(Self::preset(size))?;
        let overlay: toml::Table = toml::from_str(text)?;
        for (k, v) in overlay {
            table.insert(k, v);
        }
        Ok(table.try_into()?)
    }

    fn check(&self) -> Result<(), SimConfigError> {
        let positive = [
            ("obs_duration_s", self.obs_duration_s),
            ("rate_hz", self.rate_hz),
            ("attitude_rate_hz", self.attitude_rate_hz),
            ("gain", self.gain),
            ("precession_period_days", self.precession_period_days),
        ];
        let bad = |key: &str, problem: String| {
            Err(SimConfigError::Value {
                key: key.into(),
                problem,
            })
        };
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(k, format!("must be > 0, got {v}"));
            }
        }
        if self.observations == 0 || self.detector_pairs == 0 {
            return bad(
                "observations and detector_pairs",
                "must be at least 1".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.pol_efficiency) {
            return bad("pol_efficiency", "must be in [0, 1]".into());
        }
        Healpix::new(self.sky_nside, Ordering::Ring).map_err(SimConfigError::SkyNside)?;
        if let Some(f) = self.freq_ghz
            && !(f.is_finite() && f >= 0.0)
        {
            return bad("freq_ghz", format!("must be finite and ≥ 0, got {f}"));
        }
        if self.quadrupole && self.freq_ghz.is_none() {
            return bad("quadrupole = true", "needs freq_ghz".into());
        }
        if self.obs_duration_s * self.rate_hz < 10.0 {
            return bad("observations", "must hold at least 10 samples".into());
        }
        Ok(())
    }
}

/// A simulation configuration refused; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    /// The file is not TOML, or has an unknown key or a value of the wrong type.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// The preset could not be turned into a TOML table to overlay the file on.
    #[error(transparent)]
    Preset(#[from] toml::ser::Error),
    /// A key's value is out of range.
    #[error("{key} {problem}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong, as the rest of a sentence.
        problem: String,
    },
    /// `sky_nside` is not a valid HEALPix resolution.
    #[error("sky_nside: {0}")]
    SkyNside(#[source] skypipe_core::healpix::HealpixError),
}

/// A seeded generator for one purpose (`stream`) and indices, independent of the order in which
/// observations are simulated.
fn rng(seed: u64, stream: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for x in [stream, a, b] {
        h = (h ^ x).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
    }
    ChaCha8Rng::seed_from_u64(h)
}

fn gauss(r: &mut ChaCha8Rng) -> f64 {
    r.sample(StandardNormal)
}

/// The focal plane of `pairs` polarised pairs on a ring of `radius_deg` about the boresight.
pub fn focal_plane(c: &SimConfig, gains: &[f64]) -> FocalPlane {
    let mut detectors = Vec::new();
    for k in 0..c.detector_pairs {
        let phi = TAU * f64::from(k) / f64::from(c.detector_pairs);
        let radius = if c.detector_pairs == 1 {
            0.0
        } else {
            c.focalplane_radius_deg.to_radians()
        };
        let q = quat::from_axis_angle([-phi.sin(), phi.cos(), 0.0], radius)
            .expect("unit axis in the xy plane");
        let base_angle = if k % 2 == 0 { 0.0 } else { 45.0 };
        for (j, (suffix, extra)) in [("a", 0.0), ("b", 90.0)].into_iter().enumerate() {
            detectors.push(DetectorSpec {
                name: format!("d{k:02}{suffix}"),
                quat: q,
                pol_angle_deg: base_angle + extra,
                pol_efficiency: c.pol_efficiency,
                rate_hz: c.rate_hz,
                net_k_sqrt_s: c.net_uk_sqrt_s * 1e-6,
                fknee_hz: c.fknee_hz,
                gain: Some(gains[2 * k as usize + j]),
                freq_ghz: c.freq_ghz,
            });
        }
    }
    FocalPlane { detectors }
}

/// The smooth sky map of the simulation (galactic, RING, K_CMB).
pub fn sky_map(c: &SimConfig) -> SkyMap {
    let grid = Healpix::new(c.sky_nside, Ordering::Ring).expect("checked nside");
    let mut r = rng(c.seed, 1, 0, 0);
    // Per Stokes parameter: 6 terms amplitude · cos(ℓ·angle(n, u) + phase).
    // (axis, ℓ, phase, amplitude) per term.
    type Term = ([f64; 3], f64, f64, f64);
    let terms: Vec<Vec<Term>> = (0..3)
        .map(|_| {
            (0..6)
                .map(|_| {
                    let z: f64 = r.random_range(-1.0..1.0);
                    let ph: f64 = r.random_range(0.0..TAU);
                    let s = (1.0 - z * z).sqrt();
                    let u = [s * ph.cos(), s * ph.sin(), z];
                    let ell = f64::from(r.random_range(2u32..9));
                    (
                        u,
                        ell,
                        r.random_range(0.0..TAU),
                        gauss(&mut r) / 6f64.sqrt(),
                    )
                })
                .collect()
        })
        .collect();
    let amp = [c.sky_i_uk * 1e-6, c.sky_pol_uk * 1e-6, c.sky_pol_uk * 1e-6];
    let iqu = (0..grid.npix())
        .map(|p| {
            let n = grid.pix2vec(p).expect("pixel in range");
            let mut v = [0.0; 3];
            for s in 0..3 {
                for (u, ell, phase, a) in &terms[s] {
                    let cosang = (n[0] * u[0] + n[1] * u[1] + n[2] * u[2]).clamp(-1.0, 1.0);
                    v[s] += amp[s] * a * (ell * cosang.acos() + phase).cos();
                }
            }
            v
        })
        .collect();
    SkyMap {
        nside: c.sky_nside,
        ordering: Ordering::Ring,
        frame: Frame::Galactic,
        iqu,
    }
}

/// Gains and offsets per observation (rows) and detector (columns, focal-plane order).
fn gains_and_offsets(c: &SimConfig) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let ndet = 2 * c.detector_pairs as usize;
    let mut gains = vec![vec![0.0; ndet]; c.observations as usize];
    let mut offsets = gains.clone();
    for d in 0..ndet {
        let mut r = rng(c.seed, 2, d as u64, 0);
        let base = c.gain * (1.0 + c.gain_spread * gauss(&mut r));
        let mut walk = 0.0;
        for o in 0..c.observations as usize {
            gains[o][d] = base * (1.0 + walk);
            offsets[o][d] = c.offset_v * gauss(&mut r);
            walk += c.gain_drift * gauss(&mut r);
        }
    }
    (gains, offsets)
}

/// The attitude of observation `i`: times, quaternions and velocity (ecliptic).
pub fn attitude(c: &SimConfig, i: u32) -> AttitudeData {
    let t_start = c.start_time_s + f64::from(i) * c.obs_duration_s;
    let n = (c.obs_duration_s * c.attitude_rate_hz).ceil() as usize + 1;
    let lambda = |t: f64| 1.0 + TAU * (t - c.start_time_s) / YEAR_S;
    let ls = lambda(t_start);
    let anti_sun = [ls.cos(), ls.sin(), 0.0];
    let p = c.precession_deg.to_radians();
    let ph = TAU * (t_start - c.start_time_s) / (c.precession_period_days * 86400.0);
    let east = [-ls.sin(), ls.cos(), 0.0];
    let s: [f64; 3] = [0, 1, 2].map(|k| {
        p.cos() * anti_sun[k] + p.sin() * (ph.cos() * [0.0, 0.0, 1.0][k] + ph.sin() * east[k])
    });
    let q_axis = quat::mul(
        quat::from_axis_angle([0.0, 0.0, 1.0], s[1].atan2(s[0])).expect("unit axis"),
        quat::from_axis_angle([0.0, 1.0, 0.0], s[2].clamp(-1.0, 1.0).acos()).expect("unit axis"),
    );
    let tilt = quat::from_axis_angle([0.0, 1.0, 0.0], c.boresight_angle_deg.to_radians())
        .expect("unit axis");
    let omega = c.spin_rpm * TAU / 60.0;
    let phase0 = 0.7 * f64::from(i);
    let mut times = Vec::with_capacity(n);
    let mut quats: Vec<Quat> = Vec::with_capacity(n);
    let mut velocity = Vec::with_capacity(n);
    for k in 0..n {
        let rel = k as f64 / c.attitude_rate_hz;
        let t = t_start + rel;
        times.push(t);
        let spin = quat::from_axis_angle([0.0, 0.0, 1.0], (omega * rel + phase0) % TAU)
            .expect("unit axis");
        quats.push(quat::mul(quat::mul(q_axis, spin), tilt));
        let l = lambda(t);
        velocity.push([
            -c.orbit_speed_km_s * l.sin(),
            c.orbit_speed_km_s * l.cos(),
            0.0,
        ]);
    }
    AttitudeData {
        times,
        quats,
        velocity,
        frame: Frame::Ecliptic,
    }
}

/// The clock of every detector in observation `i` on its integer epoch (the whole second at or
/// before the observation's start): the epoch (Unix s), the time of sample 0 since the epoch
/// (0.01 s into the observation: a small number, exact to 1e-18 s) and the sample count.
fn detector_clock(c: &SimConfig, i: u32) -> (f64, f64, usize) {
    let t_start = c.start_time_s + f64::from(i) * c.obs_duration_s;
    let epoch = t_start.floor();
    let len = ((c.obs_duration_s - 0.02) * c.rate_hz).floor() as usize;
    (epoch, t_start - epoch + 0.01, len)
}

/// 1/f noise as a sum of AR(1) processes (equal variance, log-spaced corners).
struct OneOverF {
    a: Vec<f64>,
    b: Vec<f64>,
    x: Vec<f64>,
}

impl OneOverF {
    fn new(sigma: f64, fknee: f64, rate: f64, duration: f64, r: &mut ChaCha8Rng) -> Self {
        if fknee <= 0.0 || sigma <= 0.0 {
            return Self {
                a: vec![],
                b: vec![],
                x: vec![],
            };
        }
        // Corners from 1/(10 T) to min(10 fknee, rate/10), factor e apart: the sum of
        // Lorentzians of variance K each has PSD ≈ K / (f ln r) = white PSD · fknee / f with
        // K = 2σ² fknee ln r / rate (one-sided white PSD 2σ²/rate).
        let f_lo = 0.1 / duration;
        let f_hi = (10.0 * fknee).min(rate / 10.0).max(f_lo * 2.0);
        let ln_r = 1.0;
        let n = ((f_hi / f_lo).ln() / ln_r).ceil() as usize + 1;
        let var = 2.0 * sigma * sigma * fknee * ln_r / rate;
        let mut out = Self {
            a: vec![],
            b: vec![],
            x: vec![],
        };
        for j in 0..n {
            let f = f_lo * (ln_r * j as f64).exp();
            let a = (-TAU * f / rate).exp();
            out.a.push(a);
            out.b.push((var * (1.0 - a * a)).sqrt());
            out.x.push(var.sqrt() * gauss(r));
        }
        out
    }

    fn next(&mut self, r: &mut ChaCha8Rng) -> f64 {
        let mut sum = 0.0;
        for j in 0..self.a.len() {
            self.x[j] = self.a[j] * self.x[j] + self.b[j] * gauss(r);
            sum += self.x[j];
        }
        sum
    }
}

fn write_observation(
    c: &SimConfig,
    i: u32,
    fp: &FocalPlane,
    sky: &SkyMap,
    gains: &[f64],
    offsets: &[f64],
    path: &Path,
) -> Result<usize, CmbError> {
    // Times on the observation's integer epoch, as written.
    let (epoch, t0, len) = detector_clock(c, i);
    let mut att = attitude(c, i);
    for t in &mut att.times {
        *t -= epoch;
    }
    let kernel_att = Attitude::new(&att.times, &att.quats)
        .map_err(|e| skypipe_io::hdf5::H5Error::invalid(path, "attitude", e.to_string()))?;
    let grid = Healpix::new(sky.nside, sky.ordering).expect("checked nside");
    let setup = PointingSetup {
        attitude: &kernel_att,
        data: &att,
        frame: att.frame.rotation_to(sky.frame),
        aberration: true,
        grid,
    };
    let solar = if c.solar_dipole {
        quat::rotate(
            Frame::Galactic.rotation_to(sky.frame),
            SolarVelocity::planck_2018().galactic_km_s(),
        )
    } else {
        [0.0; 3]
    };
    let model = DipoleModel::new(
        att.frame.rotation_to(sky.frame),
        solar,
        c.orbital_dipole,
        true,
        T_CMB,
    )
    .with_quadrupole(match (c.quadrupole, c.freq_ghz) {
        (true, Some(f)) => quadrupole_factor(f * 1e9, T_CMB),
        _ => 0.0,
    });
    let clock = SampleClock::new(t0, c.rate_hz).expect("finite clock");
    let w = H5Writer::create(path, Durability::ProcessCrashOnly)?;
    w.attr_str("", "format", OBS_FORMAT)?;
    w.attr_i64("", "obs", i64::from(i))?;
    w.attr_i64("", "epoch", epoch as i64)?;
    w.write_1d("attitude/time", &att.times)?;
    w.write_2d("attitude/quat", &att.quats)?;
    w.write_2d("attitude/velocity", &att.velocity)?;
    w.attr_str("attitude", "frame", att.frame.as_str())?;
    w.attr_str("attitude/time", "units", "s")?;
    w.attr_str("attitude/quat", "order", "x,y,z,w")?;
    w.attr_str("attitude/velocity", "units", "km/s")?;
    let chunk = 65536;
    let mut buf = ChunkPointing::default();
    for (d, det) in fp.detectors.iter().enumerate() {
        let group = format!("detectors/{}", det.name);
        w.group(&group)?;
        w.attr_f64(&group, "t0", t0)?;
        w.attr_f64(&group, "rate_hz", c.rate_hz)?;
        let sig = w.dataset::<f64>(&format!("{group}/signal"), &[len])?;
        sig.attr_str("units", "V")?;
        w.write_1d(&format!("{group}/flags"), &vec![0u8; len])?;
        let mut r = rng(c.seed, 3, u64::from(i), d as u64);
        let sigma = det.net_k_sqrt_s * c.rate_hz.sqrt();
        let mut pink = OneOverF::new(sigma, det.fknee_hz, c.rate_hz, c.obs_duration_s, &mut r);
        let mut start = 0;
        let mut out = Vec::new();
        while start < len {
            let n = chunk.min(len - start);
            setup
                .chunk(det, &clock, start as u64, n, &mut buf)
                .map_err(|e| skypipe_io::hdf5::H5Error::invalid(path, &group, e.to_string()))?;
            let vel = att.velocities(t0, c.rate_hz, start as u64, n);
            out.clear();
            for (k, v) in vel.iter().enumerate() {
                let (theta, phi, _) = quat_to_angles(buf.quats[k]);
                let m = sky.iqu[buf.pixels[k] as usize];
                let wgt = buf.weights[k];
                let mut s = wgt[0] * m[0] + wgt[1] * m[1] + wgt[2] * m[2];
                s += 0.5 * model.delta_t(direction(theta, phi), *v);
                if sigma > 0.0 {
                    s += sigma * gauss(&mut r) + pink.next(&mut r);
                }
                out.push(gains[d] * s + offsets[d]);
            }
            sig.write_rows(start, &out)?;
            start += n;
        }
    }
    w.commit()?;
    Ok(len)
}

/// Writes the whole data set described by `c` under `out`.
pub fn simulate(c: &SimConfig, out: &Path) -> Result<ObservationList, CmbError> {
    let (gains, offsets) = gains_and_offsets(c);
    let fp = focal_plane(c, &gains[0]);
    let dur = Durability::ProcessCrashOnly;
    fp.write(&out.join("focalplane.h5"), dur)?;
    let sky = sky_map(c);
    sky.write(&out.join("truth/sky.h5"), dur)?;
    let mut table = GainTable {
        obs: (0..c.observations).collect(),
        ..Default::default()
    };
    for (d, det) in fp.detectors.iter().enumerate() {
        table
            .gain
            .insert(det.name.clone(), gains.iter().map(|g| g[d]).collect());
        table
            .offset
            .insert(det.name.clone(), offsets.iter().map(|o| o[d]).collect());
    }
    table.write(&out.join("truth/gains.h5"), dur)?;
    let entries: Vec<ObservationEntry> = (0..c.observations)
        .into_par_iter()
        .map(|i| {
            let file = PathBuf::from("obs").join(obs_file_name(i));
            let samples = write_observation(
                c,
                i,
                &fp,
                &sky,
                &gains[i as usize],
                &offsets[i as usize],
                &out.join(&file),
            )?;
            Ok(ObservationEntry {
                obs: i,
                file,
                samples: Some(samples as u64),
            })
        })
        .collect::<Result<_, CmbError>>()?;
    let list = ObservationList {
        format: OBSERVATIONS_FORMAT.to_string(),
        focal_plane: PathBuf::from("focalplane.h5"),
        observations: entries,
    };
    let json = serde_json::to_string_pretty(&list).expect("serialisable list");
    skypipe_io::write_atomic(out.join("observations.json"), json.as_bytes(), dur)
        .map_err(skypipe_io::hdf5::H5Error::from)?;
    let toml_text = toml::to_string(c).expect("serialisable config");
    skypipe_io::write_atomic(out.join("sim-config.toml"), toml_text.as_bytes(), dur)
        .map_err(skypipe_io::hdf5::H5Error::from)?;
    Ok(list)
}

/// Writes the data set; returns the process exit code (0 done, 1 error).
pub fn run(args: &SimArgs) -> u8 {
    let mut config = match &args.config {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| SimConfig::from_toml(args.size, &t).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return 1;
            }
        },
        None => SimConfig::preset(args.size),
    };
    if let Some(s) = args.seed {
        config.seed = s;
    }
    if let Some(n) = args.observations {
        config.observations = n;
    }
    if let Err(e) = config.check() {
        eprintln!("error: invalid simulation configuration: {e}");
        return 1;
    }
    match simulate(&config, &args.out) {
        Ok(list) => {
            let samples: u64 = list.observations.iter().filter_map(|o| o.samples).sum();
            eprintln!(
                "wrote {} observations ({} samples per detector, {} detectors) to {}",
                list.observations.len(),
                samples,
                2 * config.detector_pairs,
                args.out.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_geometry_is_planck_like() {
        let c = SimConfig::preset(Size::Tiny);
        let att = attitude(&c, 0);
        let bore: Vec<[f64; 3]> = att
            .quats
            .iter()
            .map(|q| quat::rotate(*q, [0.0, 0.0, 1.0]))
            .collect();
        // Spin axis = anti-sun; boresight at 85° from it; 1 rpm: 0.75° per 1/8 s.
        let l = 1.0f64;
        let axis = [l.cos(), l.sin(), 0.0];
        for b in &bore {
            let ang = (b[0] * axis[0] + b[1] * axis[1] + b[2] * axis[2])
                .acos()
                .to_degrees();
            assert!((ang - 85.0).abs() < 1e-9, "{ang}");
        }
        let step = (bore[0][0] * bore[1][0] + bore[0][1] * bore[1][1] + bore[0][2] * bore[1][2])
            .clamp(-1.0, 1.0)
            .acos()
            .to_degrees();
        let expected = 2.0
            * (85f64.to_radians().sin() * (0.375f64).to_radians().sin())
                .asin()
                .to_degrees();
        assert!((step - expected).abs() < 1e-9, "{step} vs {expected}");
        let v = att.velocity[0];
        assert!(((v[0] * v[0] + v[1] * v[1]).sqrt() - 29.78).abs() < 1e-12);
        // The velocity is perpendicular to the Sun direction.
        assert!((v[0] * axis[0] + v[1] * axis[1]).abs() < 1e-9);
    }

    #[test]
    fn config_overlay_refuses_unknown_keys() {
        let c =
            SimConfig::from_toml(Size::Tiny, "observations = 7\nnet_uk_sqrt_s = 0.0\n").unwrap();
        assert_eq!(
            (c.observations, c.net_uk_sqrt_s, c.obs_duration_s),
            (7, 0.0, 60.0)
        );
        let e = SimConfig::from_toml(Size::Tiny, "observation = 7\n").unwrap_err();
        assert!(matches!(e, SimConfigError::Toml(_)), "{e}");
        assert!(e.to_string().contains("observation"), "{e}");
    }

    #[test]
    fn one_over_f_has_the_requested_variance_scale() {
        // Variance per corner K = 2σ² fknee ln r / rate; with white σ = 1, fknee = rate/100 the
        // 1/f part's total variance is n·K.
        let mut r = rng(5, 0, 0, 0);
        let mut p = OneOverF::new(1.0, 1.0, 100.0, 1000.0, &mut r);
        let n = p.a.len() as f64;
        let expected = n * 2.0 * 1.0 / 100.0;
        let samples: Vec<f64> = (0..200_000).map(|_| p.next(&mut r)).collect();
        let var = samples.iter().map(|x| x * x).sum::<f64>() / samples.len() as f64;
        assert!(
            var > 0.3 * expected && var < 3.0 * expected,
            "{var} vs {expected}"
        );
    }
}
