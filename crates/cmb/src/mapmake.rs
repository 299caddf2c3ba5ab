//! `skypipe-mapmake`: binned and destriped HEALPix maps from calibrated timestreams.
//!
//! # Units
//! - `obs=NNNN`, one per observation, on the engine's balanced queue: read the observation's
//!   dense pointing (`RUN_DIR/pointing/obs=NNNN.h5`) and calibrated timestreams
//!   (`RUN_DIR/calibrate/obs=NNNN.h5`), validate them (clocks, shapes, nside, frame, finite
//!   unflagged samples, pixels in range), convert pixels to NESTED and keep them in this
//!   process's memory. A bad file fails its own unit with the file and detector named.
//! - `map=full`, after every observation, on every rank at once
//!   ([`skypipe_stage::PlannedUnit::on_all_ranks`]): each rank bins the observations it holds
//!   into sparse sub-maps ([`skypipe_core::binning`]), the sub-maps are summed over all ranks in
//!   bounded chunks, and the per-pixel 3×3 systems are solved (binned map); with destriping,
//!   per-detector baselines are solved by preconditioned conjugate gradient over all ranks
//!   ([`skypipe_core::destripe`]). Rank 0 of the unit writes the maps.
//! - `map=split-NAME`, one per `[[mapmake.split]]`: the same over the split's observations
//!   (after only their units) and detectors, on its `ranks` (default every rank), preferring
//!   the ranks that read its observations ([`skypipe_stage::PlannedUnit::prefer_ranks_of`]);
//!   outputs in `OUT_DIR/split-NAME/`, its `summary.json` naming the subset.
//!
//! # Resume
//! Data held in memory is an optimisation, never the record: when the map unit starts, its
//! ranks tell each other which observations they hold, and every observation that no rank holds
//! (the job was restarted, or an observation unit ran in an isolated child process) is read
//! again by the least-loaded rank (longest first). The map unit writes all its files atomically
//! and is recorded done only after they are in place; it is either done or redone whole.
//!
//! # Outputs (`RUN_DIR/mapmake/`)
//! `map_binned.fits` (and `map_destriped.fits` with destriping): one HEALPix table each with
//! `I_STOKES`, `Q_STOKES`, `U_STOKES` (K_CMB; only `I_STOKES` in intensity-only mode), `HITS`
//! and `RCOND`, readable by `healpy.read_map`; beside each, a labelled Mollweide quicklook PNG
//! per Stokes component (`map_binned.png` of I, `map_binned_Q.png`, `map_binned_U.png`); and
//! `summary.json` (observations, samples, pixels, destriper iterations and residual). With
//! destriping, each rank also writes the baselines of the observations it binned
//! (`baselines/obs=NNNN.h5`).
//! Unobserved pixels and pixels under the rcond cut are `UNSEEN` (−1.6375e30).

use crate::model::{
    CALIBRATED_FORMAT, CmbError, ConfigError, DATASET_CALIBRATED, DATASET_MAP, DATASET_OBSERVATION,
    DATASET_POINTING, DetectorSpec, FLAG_NONFINITE, FocalPlane, Frame, ObservationList,
    POINTING_FORMAT, TimestreamInfo, obs_file_name, stage_file, timestream_info,
};
use crate::pointing::{
    ChunkPointing, ObservationPointing, PointingGeometry, PointingSource, durability,
};
use crate::submaps::OwnedReduce;
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skypipe_core::binning::{BinAccumulator, BinnedMap, Components, SubmapLayout, UNSEEN};
use skypipe_core::destripe::{DestripeConfig, MAX_COARSE_GROUPS, Reduce, Timestream, destripe};
use skypipe_core::healpix::{Healpix, Ordering};
use skypipe_core::quicklook::{self, QuicklookError, Scale};
use skypipe_io::Durability;
use skypipe_io::fits::{
    Card, Column, ColumnSpec, ColumnType, HealpixHeader, write_healpix_map_blocks,
};
use skypipe_io::hdf5::{H5Error, H5Reader, H5Writer};
use skypipe_io::provenance::Provenance;
use skypipe_stage::{
    Collectives, Connections, FailureKind, Outcome, OutcomeKind, PlanError, PlannedUnit, Stage,
    UnitContext, UnitFailure, UnitId, WorkUnit, fingerprint_of,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Format tag of the baseline files (`RUN_DIR/mapmake/baselines/obs=NNNN.h5`).
pub const BASELINES_FORMAT: &str = "skypipe-cmb-baselines/1";

/// Output pixels gathered to the writing ranks per step (with I/Q/U: 6 values, 48 MiB).
const GATHER_PIXELS: usize = 1 << 20;

/// Which Stokes parameters the maps hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapComponents {
    /// I, Q and U (default).
    Iqu,
    /// Intensity only.
    I,
}

impl MapComponents {
    fn kernel(self) -> Components {
        match self {
            MapComponents::Iqu => Components::Iqu,
            MapComponents::I => Components::I,
        }
    }
}

/// Floating-point precision of the I/Q/U columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float64 (default).
    Double,
    /// float32, as the Planck releases: half the size, ~7 significant digits.
    Single,
}

/// The destriper's coarse space (`coarse_space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoarseSpace {
    /// One constant-offset template per detector and observation, times `coarse_segments`
    /// (default): spans the detector pairs' offset differences and, with short segments, the
    /// smooth sky-like offset patterns that weakly cross-linked scans leave nearly free.
    Detector,
    /// One constant-offset template per observation (all its detectors), times
    /// `coarse_segments`.
    Observation,
    /// No coarse level.
    None,
}

/// The `[mapmake]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapmakeConfig {
    /// The observation list. Default `data/cmb/observations.json`.
    pub observations: PathBuf,
    /// Directory of the pointing outputs. Default `RUN_DIR/pointing`.
    pub pointing_dir: Option<PathBuf>,
    /// `file` (default): pixels and weights from the pointing stage's files; `expand`:
    /// expanded per chunk from the observation's attitude and the focal plane with the
    /// `expand` geometry (bit for bit the pointing stage's double-precision values).
    #[serde(skip_serializing_if = "PointingSource::is_file")]
    pub pointing: PointingSource,
    /// The pointing geometry of `pointing = "expand"`: the `[pointing]` keys `nside`,
    /// `ordering`, `frame`, `aberration`, `chunk_samples` (defaults as there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expand: Option<PointingGeometry>,
    /// Directory of the calibrated timestreams. Default `RUN_DIR/calibrate`.
    pub calibrated_dir: Option<PathBuf>,
    /// Output directory. Default `RUN_DIR/mapmake`.
    pub out_dir: Option<PathBuf>,
    /// Expected nside of the pointing: an observation whose pointing differs fails its unit.
    /// Default: whatever the pointing files say, as long as they all agree.
    pub nside: Option<u64>,
    /// `iqu` (default) or `i`.
    pub components: MapComponents,
    /// Pixels whose 3×3 matrix has a smaller reciprocal condition number are cut (`UNSEEN`).
    /// Default 1e-3.
    pub rcond_min: f64,
    /// Sub-maps are the pixels of this lower-resolution NESTED grid (power of two, at most
    /// the map's nside): only sub-maps a rank touches are allocated and reduced. Default: the
    /// map's nside / 8 (sub-maps of 64 pixels), so that a partial sky is reduced with little
    /// waste; full-sky maps may take a coarser grid (MADAM's 16) for fewer, larger blocks.
    pub submap_nside: Option<u64>,
    /// Solve for baselines and write the destriped map (default true).
    pub destripe: bool,
    /// Baseline length (s). Default 1.
    pub baseline_s: f64,
    /// Conjugate-gradient tolerance on `‖r‖/‖b‖`. Default 1e-10.
    pub tolerance: f64,
    /// Conjugate-gradient iteration cap. Default 200.
    pub max_iterations: usize,
    /// Coarse space of the destriper's two-level preconditioner: `detector` (default) one
    /// constant-offset template per detector and observation, `observation` one per
    /// observation, `none` no coarse level. More than [`MAX_COARSE_GROUPS`] templates: fewer
    /// segments, then per observation, then no coarse level (with a warning).
    pub coarse_space: CoarseSpace,
    /// Each coarse template split in time into this many segments of equal length, each its
    /// own template. Default 20.
    pub coarse_segments: usize,
    /// Block-Jacobi preconditioner: the baselines of one observation (all detectors), in
    /// time windows of at most this many baselines, form one block inverted exactly; memory
    /// `8 · block_baselines` bytes per baseline, set-up `block_baselines²` operations per
    /// baseline. 0: the diagonal `σ²/n` alone. Default 1024.
    pub block_baselines: usize,
    /// Weight detectors by `1/σ²` from the focal plane's NET (default true); otherwise, or
    /// when a detector has no NET, every detector weighs 1.
    pub noise_weights: bool,
    /// Make the maps from the observations that succeeded when some failed (default false:
    /// the map unit then fails as dependency-failed and a rerun with `--retry-failed` redoes
    /// the failed observations and the map).
    pub allow_failed_observations: bool,
    /// Pixel ordering of the output files. Default `ring`.
    pub output_ordering: Ordering,
    /// `double` (default) or `single` precision I/Q/U columns (HITS are 32-bit integers and
    /// RCOND float32 either way).
    pub output_precision: Precision,
    /// Width of the quicklook PNGs in pixels (0: none). Default 1600.
    pub quicklook_width: u32,
    /// Maps over subsets (`[[mapmake.split]]`), each made beside the full map into
    /// `OUT_DIR/split-NAME/`. Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitConfig>,
}

/// One `[[mapmake.split]]`: a map over a subset of the observations and detectors. The
/// observation selectors given are intersected; none selects every observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Name (letters, digits, `-`, `_`): unit `map=split-NAME`, outputs in `split-NAME/`.
    pub name: String,
    /// These observation numbers. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observations: Option<Vec<u32>>,
    /// Observation numbers from the first to the last, inclusive. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obs_range: Option<[u32; 2]>,
    /// `1` or `2`: the first or second half of the list's observations by number (the first
    /// half has the extra one of an odd count). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_mission: Option<u8>,
    /// These detectors of the focal plane, by name. Default: every detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Vec<String>>,
    /// Ranks the split's map unit runs on. Default: every rank of the job (splits then run
    /// one after another); fewer lets splits run side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
}

/// A split resolved against the observation list and focal plane.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Split {
    name: String,
    observations: BTreeSet<u32>,
    /// `None`: every detector.
    detectors: Option<BTreeSet<String>>,
    ranks: Option<usize>,
}

/// Resolves `config` against the list's observation numbers and the focal plane's detector
/// names, or says what is wrong (naming the split).
fn resolve_split(
    config: &SplitConfig,
    observations: &[u32],
    detectors: &[&str],
) -> Result<Split, ConfigError> {
    let name = &config.name;
    let bad = |problem: String| {
        Err(ConfigError::Split {
            name: name.clone(),
            problem,
        })
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::SplitName(name.clone()));
    }
    let mut sorted = observations.to_vec();
    sorted.sort_unstable();
    let mut chosen: BTreeSet<u32> = sorted.iter().copied().collect();
    if let Some(list) = &config.observations {
        if let Some(o) = list.iter().find(|o| !chosen.contains(o)) {
            return bad(format!("observation {o} is not in the observation list"));
        }
        chosen = list.iter().copied().collect();
    }
    if let Some([first, last]) = config.obs_range {
        if first > last {
            return bad(format!("obs_range [{first}, {last}] is empty"));
        }
        chosen.retain(|o| (first..=last).contains(o));
    }
    if let Some(half) = config.half_mission {
        let first_half = sorted.len().div_ceil(2);
        let part: BTreeSet<u32> = match half {
            1 => sorted[..first_half].iter().copied().collect(),
            2 => sorted[first_half..].iter().copied().collect(),
            _ => return bad(format!("half_mission must be 1 or 2, got {half}")),
        };
        chosen.retain(|o| part.contains(o));
    }
    if chosen.is_empty() {
        return bad("selects no observation".into());
    }
    let detectors = match &config.detectors {
        None => None,
        Some(names) if names.is_empty() => return bad("detectors is empty".into()),
        Some(names) => {
            if let Some(n) = names.iter().find(|n| !detectors.contains(&n.as_str())) {
                return bad(format!("detector '{n}' is not in the focal plane"));
            }
            Some(names.iter().cloned().collect())
        }
    };
    if config.ranks == Some(0) {
        return bad("ranks must be at least 1".into());
    }
    Ok(Split {
        name: name.clone(),
        observations: chosen,
        detectors,
        ranks: config.ranks,
    })
}

impl Default for MapmakeConfig {
    fn default() -> Self {
        Self {
            observations: PathBuf::from("data/cmb/observations.json"),
            pointing_dir: None,
            pointing: PointingSource::File,
            expand: None,
            calibrated_dir: None,
            out_dir: None,
            nside: None,
            components: MapComponents::Iqu,
            rcond_min: 1e-3,
            submap_nside: None,
            destripe: true,
            baseline_s: 1.0,
            tolerance: 1e-10,
            max_iterations: 200,
            coarse_space: CoarseSpace::Detector,
            coarse_segments: 20,
            block_baselines: 1024,
            noise_weights: true,
            allow_failed_observations: false,
            output_ordering: Ordering::Ring,
            output_precision: Precision::Double,
            quicklook_width: 1600,
            split: Vec::new(),
        }
    }
}

/// A unit of `skypipe-mapmake`: one observation to read, the map made from all of them, or
/// a split's map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapUnit {
    /// Read and validate one observation (`obs=NNNN`).
    Obs {
        /// Observation number.
        obs: u32,
    },
    /// Bin (and destripe) every observation into the maps (`map=full`).
    Map,
    /// Bin (and destripe) a split's subset into its maps (`map=split-NAME`).
    Split {
        /// The split's name.
        name: String,
    },
}

impl WorkUnit for MapUnit {
    fn id(&self) -> UnitId {
        match self {
            MapUnit::Obs { obs } => UnitId::new().with("obs", format_args!("{obs:04}")),
            MapUnit::Map => UnitId::new().with("map", "full"),
            MapUnit::Split { name } => UnitId::new().with("map", format_args!("split-{name}")),
        }
    }
}

/// What an observation unit passes to the map unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObsSummary {
    /// Observation number.
    pub obs: u32,
    /// nside of its pointing.
    pub nside: u64,
    /// Frame of its pointing (`galactic`, ...).
    pub frame: String,
    /// Sample rate (Hz) shared by its detectors.
    pub rate_hz: f64,
    /// Samples over all detectors.
    pub samples: u64,
    /// Unflagged samples over all detectors.
    pub good_samples: u64,
}

/// What the map unit reports (its value, and `summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapSummary {
    /// HEALPix nside of the maps.
    pub nside: u64,
    /// Coordinate frame.
    pub frame: String,
    /// Observations binned.
    pub observations: usize,
    /// Observations left out because their unit failed (`allow_failed_observations`).
    pub missing_observations: Vec<String>,
    /// Unflagged samples binned.
    pub samples: u64,
    /// Pixels with at least one hit.
    pub observed_pixels: u64,
    /// Observed pixels under the rcond cut.
    pub cut_pixels: u64,
    /// Ranks the map was made on.
    pub ranks: usize,
    /// Observations read again by the map unit (not held in memory from their own units).
    pub reread_observations: usize,
    /// Unflagged samples each rank of the map unit binned: the load balance.
    pub samples_per_rank: Vec<u64>,
    /// Sub-maps each rank hits (its accumulators hold exactly these).
    pub submaps_per_rank: Vec<u64>,
    /// Sub-maps that some rank hits (the union, split among the ranks as owners).
    #[serde(default)]
    pub observed_submaps: u64,
    /// Sub-maps each rank owns: it sums them over the ranks hitting them, solves them and
    /// sends them to the writers.
    #[serde(default)]
    pub owned_submaps_per_rank: Vec<u64>,
    /// The most sub-maps each rank held at once: its hits plus its owned share of each map
    /// written (the binned matrix, and with destriping the destriped right-hand side).
    #[serde(default)]
    pub peak_submaps_per_rank: Vec<u64>,
    /// Peak resident memory of each rank's process (`VmHWM`, MiB) at the end of the map unit.
    #[serde(default)]
    pub peak_memory_mb_per_rank: Vec<f64>,
    /// Sub-maps where at least two ranks hold samples: their blocks travel between ranks in
    /// each reduction.
    pub shared_submaps: u64,
    /// Pixels per sub-map.
    pub submap_pixels: u64,
    /// Sub-maps in the sky.
    pub submaps: u64,
    /// Baseline length in samples (0 without destriping).
    pub baseline_samples: usize,
    /// Conjugate-gradient iterations (0 without destriping).
    pub iterations: usize,
    /// Final relative CG residual.
    pub residual: f64,
    /// Relative CG residual `‖r‖/‖b‖` before the first iteration (after the coarse start)
    /// and after each one (empty without destriping).
    pub residual_history: Vec<f64>,
    /// Templates in the destriper's coarse space (0: the diagonal preconditioner alone).
    pub coarse_templates: usize,
    /// Whether the CG reached its tolerance.
    pub converged: bool,
    /// Files written, relative to the output directory.
    pub files: Vec<String>,
    /// The subset of a split's map (absent for the full map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSummary>,
    /// Wall time of the map unit on its rank 0 (s): reading the observations no rank held
    /// and agreeing on errors, binning + reductions + destriping, writing the outputs.
    pub seconds: [f64; 3],
}

/// The subset a split's map was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// The split's name.
    pub name: String,
    /// Its observations (those selected; failed ones are in `missing_observations`).
    pub observations: Vec<u32>,
    /// Its detectors (every detector of the focal plane when it names none).
    pub detectors: Vec<String>,
}

/// Writes `OUT_DIR/baselines/obs=NNNN.h5` for each observation of `local`: one baseline
/// amplitude (K_CMB) per `baseline_samples` samples of each of its detectors, taken in turn
/// from `baselines` (in the order of this rank's timestreams), the offsets subtracted by the
/// destriper (solved from every observation of the map, as `provenance` says).
fn write_baselines(
    ctx: &UnitContext,
    out_dir: &Path,
    local: &[LocalObs<'_>],
    baselines: Vec<Vec<f64>>,
    baseline_samples: usize,
    provenance: &Provenance,
) -> Result<(), UnitFailure> {
    let mut amplitudes = baselines.into_iter();
    for (data, detectors) in local {
        let obs = data.summary.obs;
        let per_detector: Vec<Vec<f64>> = amplitudes.by_ref().take(detectors.len()).collect();
        let path = out_dir.join("baselines").join(obs_file_name(obs));
        let write = || -> Result<(), H5Error> {
            let w = H5Writer::create(&path, durability(ctx))?;
            w.attr_str("", "format", BASELINES_FORMAT)?;
            w.attr_i64("", "obs", i64::from(obs))?;
            w.attr_i64("", "baseline_samples", baseline_samples as i64)?;
            provenance.write_hdf5(&w)?;
            for (det, a) in detectors.iter().zip(&per_detector) {
                let name = format!("detectors/{}/baselines", det.name);
                w.write_1d(&name, a)?;
            }
            w.commit().map(|_| ())
        };
        write().map_err(|e| UnitFailure::transient(e.to_string()))?;
    }
    Ok(())
}

/// One map file to write: where, which map, and what goes into its header besides the map.
#[derive(Clone, Copy)]
struct MapFile<'a> {
    path: &'a Path,
    /// `binned` or `destriped`.
    kind: &'a str,
    /// Hit counts as 64-bit integers (some pixel has more than `i32::MAX`).
    wide_hits: bool,
    provenance: &'a Provenance,
}

/// One detector's validated data, pixels in NESTED order.
#[derive(Debug, Clone)]
struct DetectorData {
    name: String,
    pixels: Vec<u64>,
    weights: Vec<[f64; 3]>,
    signal: Vec<f64>,
    flags: Vec<u8>,
    inv_var: f64,
}

/// The destriper's coarse space `(groups, detectors per group, segments)` for `observations`
/// observations of at most `detectors` detectors: the configured one if it has at most
/// [`MAX_COARSE_GROUPS`] templates, else fewer segments, then one template per observation,
/// then none (`groups` 0), with a warning.
fn coarse_layout(
    space: CoarseSpace,
    segments: usize,
    observations: usize,
    detectors: usize,
) -> (usize, usize, usize) {
    let per_detector = observations * detectors.max(1);
    let fit = |templates: usize| (MAX_COARSE_GROUPS / templates.max(1)).min(segments);
    let layout = match space {
        CoarseSpace::None => return (0, 0, segments),
        CoarseSpace::Detector if fit(per_detector) >= 1 => {
            (observations, detectors.max(1), fit(per_detector))
        }
        _ if fit(observations) >= 1 => (observations, 0, fit(observations)),
        _ => (0, 0, segments),
    };
    let templates = layout.0 * layout.1.max(1) * layout.2;
    let wanted = match space {
        CoarseSpace::Detector => per_detector * segments,
        _ => observations * segments,
    };
    if templates < wanted {
        tracing::warn!(
            wanted,
            templates,
            max = MAX_COARSE_GROUPS,
            "destriper: coarse space too large, reduced"
        );
    }
    layout
}

/// One observation held in memory.
#[derive(Debug, Clone)]
struct ObsData {
    summary: ObsSummary,
    detectors: Vec<DetectorData>,
}

impl ObsData {
    /// Its detectors in `selection` (every detector for `None`), in focal-plane order.
    fn detectors_in<'a>(&'a self, selection: Option<&BTreeSet<String>>) -> Vec<&'a DetectorData> {
        self.detectors
            .iter()
            .filter(|d| selection.is_none_or(|s| s.contains(&d.name)))
            .collect()
    }
}

impl DetectorData {
    /// Its timestream, in the destriper's group `group`.
    fn timestream(&self, group: usize) -> Timestream<'_> {
        Timestream {
            pixels: &self.pixels,
            weights: &self.weights,
            signal: &self.signal,
            flags: Some(&self.flags),
            inv_var: self.inv_var,
            group,
        }
    }

    /// Converts its unflagged pixels from `grid`'s ordering to NESTED (they were checked to
    /// be below `npix`).
    fn convert_to_nested(&mut self, grid: Healpix) {
        if grid.ordering() == Ordering::Ring {
            for (p, &f) in self.pixels.iter_mut().zip(&self.flags) {
                if f == 0 {
                    *p = grid.to_nested(*p).expect("pixel checked below npix");
                }
            }
        }
    }
}

/// The HDF5 group of detector `name` in the pointing and calibrated files.
fn detector_group(name: &str) -> String {
    format!("detectors/{name}")
}

/// One observation's input files, open: the reading side of [`Mapmake::load`], each read
/// paired with the checks that name the file at fault.
struct ObsFiles {
    /// The calibrated timestreams.
    cal: H5Reader,
    /// The pointing file, or with `pointing = "expand"` the raw observation file.
    pt: H5Reader,
    /// The pointing expanded from the raw observation file (`pointing = "expand"`).
    expanded: Option<ObservationPointing>,
}

/// The pointing's grid and frame, as an observation's files give them.
struct ObsHeader {
    /// nside and ordering of the pointing's pixels.
    grid: Healpix,
    /// Coordinate frame of the pointing.
    frame: Frame,
    /// The frame as the pointing file spells it (the expander's name when expanded).
    frame_text: String,
}

impl ObsFiles {
    /// Checks that each file holds observation `obs` in its format (the pointing file only
    /// when the pointing is read from it).
    fn check_identity(&self, obs: u32) -> Result<(), CmbError> {
        let checked: &[(&H5Reader, &str)] = if self.expanded.is_some() {
            &[(&self.cal, CALIBRATED_FORMAT)]
        } else {
            &[(&self.pt, POINTING_FORMAT), (&self.cal, CALIBRATED_FORMAT)]
        };
        for &(r, format) in checked {
            let found = r.attr_str("", "format")?;
            if found != format {
                return Err(H5Error::invalid(
                    r.path(),
                    "@format",
                    format!("'{found}', expected '{format}'"),
                )
                .into());
            }
            let found = r.attr_i64("", "obs")?;
            if found != i64::from(obs) {
                return Err(H5Error::invalid(
                    r.path(),
                    "@obs",
                    format!("holds observation {found}, expected {obs}"),
                )
                .into());
            }
        }
        Ok(())
    }

    /// The pointing's grid and frame: the expander's, or the pointing file's `@nside`,
    /// `@ordering` and `@frame`, each checked to be valid.
    fn read_header(&self) -> Result<ObsHeader, CmbError> {
        if let Some(e) = &self.expanded {
            let frame = e.out_frame();
            return Ok(ObsHeader {
                grid: e.grid(),
                frame,
                frame_text: frame.as_str().to_string(),
            });
        }
        let (pt, path) = (&self.pt, self.pt.path());
        let nside_attr = pt.attr_i64("", "nside")?;
        let ordering_text = pt.attr_str("", "ordering")?;
        let ordering = Ordering::parse_header(&ordering_text).ok_or_else(|| {
            H5Error::invalid(
                path,
                "@ordering",
                format!("unknown ordering '{ordering_text}'"),
            )
        })?;
        let grid = u64::try_from(nside_attr)
            .ok()
            .and_then(|n| Healpix::new(n, ordering).ok())
            .ok_or_else(|| {
                H5Error::invalid(
                    path,
                    "@nside",
                    format!("{nside_attr} is not a valid HEALPix nside"),
                )
            })?;
        let frame_text = pt.attr_str("", "frame")?;
        let frame = Frame::parse(&frame_text).ok_or_else(|| {
            H5Error::invalid(path, "@frame", format!("unknown frame '{frame_text}'"))
        })?;
        Ok(ObsHeader {
            grid,
            frame,
            frame_text,
        })
    }

    /// Checks that the calibrated file's `@frame` (the frame of the pointing it was
    /// calibrated with) is the pointing's.
    fn check_frame(&self, header: &ObsHeader) -> Result<(), CmbError> {
        let cal_frame = self.cal.attr_str("", "frame")?;
        if Frame::parse(&cal_frame) != Some(header.frame) {
            return Err(H5Error::invalid(
                self.cal.path(),
                "@frame",
                format!(
                    "calibrated with pointing in '{cal_frame}', but {} is in '{}'",
                    self.pt.path().display(),
                    header.frame_text
                ),
            )
            .into());
        }
        Ok(())
    }

    /// The clock and length of detector `d`'s pointing (read, or the expander's) and of its
    /// calibrated timestream, in this order.
    fn read_clocks(&self, d: usize, det: &DetectorSpec) -> Result<[TimestreamInfo; 2], CmbError> {
        let group = detector_group(&det.name);
        let pointing = match &self.expanded {
            Some(e) => {
                let (_, clock, len) = e.detector(d);
                TimestreamInfo {
                    t0: clock.t0(),
                    first_sample: clock.first_sample(),
                    rate_hz: clock.rate(),
                    len,
                }
            }
            None => timestream_info(&self.pt, &group, "pixels", Some(det.rate_hz))?,
        };
        let calibrated = timestream_info(&self.cal, &group, "signal", Some(det.rate_hz))?;
        Ok([pointing, calibrated])
    }

    /// Checks that detector `name`'s pointing and calibrated clocks (of
    /// [`ObsFiles::read_clocks`]) agree, and that its rate is `rate_hz`, the first
    /// detector's (one baseline length per map).
    fn check_clocks(
        &self,
        name: &str,
        [pinfo, cinfo]: [TimestreamInfo; 2],
        rate_hz: f64,
    ) -> Result<(), CmbError> {
        let group = detector_group(name);
        if pinfo != cinfo {
            return Err(H5Error::invalid(
                self.cal.path(),
                &group,
                format!(
                    "clock/length (t0 {}, {} Hz, {} samples) differs from the pointing's in {} (t0 {}, {} Hz, {} samples)",
                    cinfo.t0,
                    cinfo.rate_hz,
                    cinfo.len,
                    self.pt.path().display(),
                    pinfo.t0,
                    pinfo.rate_hz,
                    pinfo.len
                ),
            )
            .into());
        }
        if (rate_hz - pinfo.rate_hz).abs() > 1e-9 * rate_hz {
            return Err(H5Error::invalid(
                self.pt.path(),
                &format!("{group}@rate_hz"),
                format!(
                    "{} Hz differs from the other detectors' {rate_hz} Hz (one baseline length per map)",
                    pinfo.rate_hz
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Reads the `len` samples of detector `d` (named `name`, weighing `inv_var`): pixels
    /// and weights (from the pointing file, or expanded), signal and flags, pixels as stored.
    fn read_detector(
        &self,
        d: usize,
        name: &str,
        len: usize,
        inv_var: f64,
    ) -> Result<DetectorData, CmbError> {
        let group = detector_group(name);
        let len = Some(len);
        let (pixels, weights) = match &self.expanded {
            Some(e) => expand_detector(e, d, self.pt.path(), &group)?,
            None => {
                let pt = &self.pt;
                // Pointing files hold int64 or int32 pixels and float64 or float32 weights.
                pt.dataset(&format!("{group}/pixels"), &[len])?
                    .require_numeric(true)?;
                pt.dataset(&format!("{group}/weights"), &[len, Some(3)])?
                    .require_numeric(false)?;
                let pixels: Vec<u64> = pt.read_1d(&format!("{group}/pixels"), len)?;
                let weights: Vec<[f64; 3]> = pt.read_2d(&format!("{group}/weights"), len)?;
                (pixels, weights)
            }
        };
        let signal: Vec<f64> = self.cal.read_1d(&format!("{group}/signal"), len)?;
        let flags: Vec<u8> = self.cal.read_1d(&format!("{group}/flags"), len)?;
        Ok(DetectorData {
            name: name.to_string(),
            pixels,
            weights,
            signal,
            flags,
            inv_var,
        })
    }

    /// Checks every unflagged sample of `data` (as read, of a grid of `npix` pixels): pixel
    /// below `npix`, finite weights and signal. Returns how many there are.
    fn check_samples(&self, data: &DetectorData, npix: u64) -> Result<u64, CmbError> {
        let group = detector_group(&data.name);
        let DetectorData {
            pixels,
            weights,
            signal,
            flags,
            ..
        } = data;
        let mut good_samples = 0;
        for i in 0..pixels.len() {
            if flags[i] != 0 {
                continue;
            }
            if pixels[i] >= npix {
                return Err(H5Error::invalid(
                    self.pt.path(),
                    &format!("{group}/pixels"),
                    format!("sample {i}: pixel {} is not below npix {npix}", pixels[i]),
                )
                .into());
            }
            if !weights[i].iter().all(|w| w.is_finite()) {
                return Err(H5Error::invalid(
                    self.pt.path(),
                    &format!("{group}/weights"),
                    format!("sample {i}: weights {:?} are not finite", weights[i]),
                )
                .into());
            }
            if !signal[i].is_finite() {
                return Err(H5Error::invalid(
                    self.cal.path(),
                    &format!("{group}/signal"),
                    format!(
                        "sample {i}: unflagged value {} is not finite (flag it, e.g. with {FLAG_NONFINITE:#x})",
                        signal[i]
                    ),
                )
                .into());
            }
            good_samples += 1;
        }
        Ok(good_samples)
    }
}

/// An observation this rank bins in a map unit, with its detectors in the map's selection.
type LocalObs<'a> = (&'a ObsData, Vec<&'a DetectorData>);

/// A map unit's inputs, as the engine hands them over.
struct MapInputs {
    /// Its observations' summaries (their units' values), in observation order.
    summaries: Vec<ObsSummary>,
    /// Samples of each of those observations, by number.
    wanted: BTreeMap<u32, u64>,
    /// Its observation units that failed (`allow_failed_observations`).
    missing: Vec<String>,
    /// The NESTED grid every observation shares.
    grid: Healpix,
}

/// What a map unit's ranks agreed on before binning ([`Mapmake::plan_binning`]).
struct Binning {
    /// The sub-maps of the map's grid.
    layout: SubmapLayout,
    /// The destriper's settings (`None`: the binned map alone).
    destripe: Option<DestripeConfig>,
    /// `[unflagged samples, hit sub-maps]` of each rank's timestreams, in rank order.
    extents: Vec<[u64; 2]>,
    /// Observations read again because no rank held them.
    reread: usize,
}

/// The figures of the destriper's conjugate gradient, for the summary.
struct SolverFigures {
    /// Iterations (0 without destriping).
    iterations: usize,
    /// Final relative residual.
    residual: f64,
    /// Whether the tolerance was reached (true without destriping).
    converged: bool,
    /// Relative residual before the first iteration and after each one.
    residual_history: Vec<f64>,
    /// Templates in the coarse space.
    coarse_templates: usize,
}

/// What the solve phase of a map unit gives this rank ([`Mapmake::solve`]).
struct Solution {
    /// This rank's owned share of the binned map.
    binned: BinnedMap,
    /// This rank's owned share of the destriped map (with destriping).
    destriped: Option<BinnedMap>,
    /// Baseline amplitudes of each of this rank's timestreams, in their order (empty
    /// without destriping).
    baselines: Vec<Vec<f64>>,
    /// The destriper's figures.
    figures: SolverFigures,
}

/// The `skypipe-mapmake` stage.
#[derive(Debug)]
pub struct Mapmake {
    config: MapmakeConfig,
    list: ObservationList,
    focal_plane: FocalPlane,
    /// The configured splits, resolved.
    splits: Vec<Split>,
    /// Observations read by this process's units, kept for the map units.
    held: Mutex<BTreeMap<u32, ObsData>>,
}

impl Mapmake {
    /// Loads the observation list and focal plane and checks the configuration.
    pub fn new(config: MapmakeConfig) -> Result<Self, ConfigError> {
        if !(config.rcond_min.is_finite() && (0.0..1.0).contains(&config.rcond_min)) {
            return Err(ConfigError::value(
                "mapmake.rcond_min",
                format!("must be in [0, 1), got {}", config.rcond_min),
            ));
        }
        if let Some(sub) = config.submap_nside
            && !sub.is_power_of_two()
        {
            return Err(ConfigError::value(
                "mapmake.submap_nside",
                format!("must be a power of two, got {sub}"),
            ));
        }
        if let Some(n) = config.nside {
            Healpix::new(n, Ordering::Nested).map_err(|source| ConfigError::Nside {
                key: "mapmake.nside".into(),
                source,
            })?;
            if let Some(sub) = config.submap_nside
                && sub > n
            {
                return Err(ConfigError::value(
                    format!("mapmake.submap_nside {sub}"),
                    format!("exceeds mapmake.nside {n}"),
                ));
            }
        }
        if !(1..=MAX_COARSE_GROUPS).contains(&config.coarse_segments) {
            return Err(ConfigError::value(
                "mapmake.coarse_segments",
                format!(
                    "must be in 1..={MAX_COARSE_GROUPS}, got {}",
                    config.coarse_segments
                ),
            ));
        }
        let widths = quicklook::MIN_WIDTH..=quicklook::MAX_WIDTH;
        if config.quicklook_width != 0 && !widths.contains(&config.quicklook_width) {
            return Err(ConfigError::value(
                "mapmake.quicklook_width",
                format!(
                    "must be 0 or in {}..={}, got {}",
                    quicklook::MIN_WIDTH,
                    quicklook::MAX_WIDTH,
                    config.quicklook_width
                ),
            ));
        }
        if !(config.baseline_s.is_finite() && config.baseline_s > 0.0) {
            return Err(ConfigError::value(
                "mapmake.baseline_s",
                format!("must be > 0, got {}", config.baseline_s),
            ));
        }
        if !(config.tolerance.is_finite() && config.tolerance >= 0.0) {
            return Err(ConfigError::value(
                "mapmake.tolerance",
                format!("must be >= 0, got {}", config.tolerance),
            ));
        }
        match (config.pointing, &config.expand) {
            (PointingSource::Expand, Some(g)) => {
                g.grid("mapmake.expand")?;
            }
            (PointingSource::File, Some(_)) => {
                return Err(ConfigError::value(
                    "mapmake.expand",
                    "is set but mapmake.pointing is not \"expand\"",
                ));
            }
            _ => {}
        }
        let list = ObservationList::load(&config.observations)?;
        let focal_plane = FocalPlane::read(&list.focal_plane)?;
        let numbers: Vec<u32> = list.observations.iter().map(|o| o.obs).collect();
        let names: Vec<&str> = focal_plane
            .detectors
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        let mut splits: Vec<Split> = Vec::with_capacity(config.split.len());
        for c in &config.split {
            let split = resolve_split(c, &numbers, &names)?;
            if splits.iter().any(|s| s.name == split.name) {
                return Err(ConfigError::SplitTwice(split.name));
            }
            splits.push(split);
        }
        Ok(Self {
            config,
            list,
            focal_plane,
            splits,
            held: Mutex::new(BTreeMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MapmakeConfig {
        &self.config
    }

    /// The sub-map grid's nside for a map of `nside`.
    fn submap_nside(&self, nside: u64) -> u64 {
        self.config.submap_nside.unwrap_or((nside / 8).max(1))
    }

    /// The pointing file of `obs`.
    pub fn pointing_path(&self, run_dir: &Path, obs: u32) -> PathBuf {
        stage_file(
            self.config.pointing_dir.as_deref(),
            run_dir,
            "pointing",
            obs,
        )
    }

    /// The calibrated file of `obs`.
    pub fn calibrated_path(&self, run_dir: &Path, obs: u32) -> PathBuf {
        stage_file(
            self.config.calibrated_dir.as_deref(),
            run_dir,
            "calibrate",
            obs,
        )
    }

    /// The output directory.
    pub fn out_dir(&self, run_dir: &Path) -> PathBuf {
        self.config
            .out_dir
            .clone()
            .unwrap_or_else(|| run_dir.join("mapmake"))
    }

    /// The output directory of split `name`: `OUT_DIR/split-NAME`.
    pub fn split_dir(&self, run_dir: &Path, name: &str) -> PathBuf {
        self.out_dir(run_dir).join(format!("split-{name}"))
    }

    /// Provenance of a map unit's files (the full map's when `split` is `None`): the files
    /// of its observations' units — calibrated timestreams, and pointing or raw
    /// observations — in observation order.
    fn map_provenance(
        &self,
        split: Option<&Split>,
        observations: impl Iterator<Item = u32>,
        run_dir: &Path,
    ) -> Provenance {
        let unit = split.map_or(MapUnit::Map, |s| MapUnit::Split {
            name: s.name.clone(),
        });
        let inputs = observations
            .flat_map(|obs| self.connections(&MapUnit::Obs { obs }, run_dir).inputs)
            .map(|d| (d.kind, d.path));
        Provenance::new(
            self.name(),
            &unit.id().to_string(),
            &self.config_fingerprint(),
            inputs,
        )
    }

    /// The resolved split named `name`.
    fn split(&self, name: &str) -> Result<&Split, UnitFailure> {
        self.splits.iter().find(|s| s.name == name).ok_or_else(|| {
            UnitFailure::bad_input(format!(
                "no [[mapmake.split]] named '{name}' in the configuration"
            ))
        })
    }

    /// `1/σ²` per sample of a detector from its NET and rate, or 1 (uniform weights).
    fn inv_var(&self, net_k_sqrt_s: f64, rate_hz: f64) -> f64 {
        let uniform = !self.config.noise_weights
            || self
                .focal_plane
                .detectors
                .iter()
                .any(|d| !(d.net_k_sqrt_s.is_finite() && d.net_k_sqrt_s > 0.0));
        if uniform {
            1.0
        } else {
            1.0 / (net_k_sqrt_s * net_k_sqrt_s * rate_hz)
        }
    }

    /// Reads and validates one observation (pixels converted to NESTED): opens its files and
    /// checks their headers against each other and the configuration, then reads each
    /// detector and checks its samples before the next. Errors name the file at fault.
    fn load(&self, run_dir: &Path, obs: u32) -> Result<ObsData, CmbError> {
        let files = self.open_observation(run_dir, obs)?;
        files.check_identity(obs)?;
        let header = files.read_header()?;
        self.check_nside(files.pt.path(), header.grid.nside())?;
        files.check_frame(&header)?;
        let mut detectors = Vec::with_capacity(self.focal_plane.detectors.len());
        let (mut rate, mut good_samples) = (None, 0);
        for (d, det) in self.focal_plane.detectors.iter().enumerate() {
            let clocks = files.read_clocks(d, det)?;
            files.check_clocks(&det.name, clocks, *rate.get_or_insert(clocks[0].rate_hz))?;
            let inv_var = self.inv_var(det.net_k_sqrt_s, clocks[0].rate_hz);
            let mut data = files.read_detector(d, &det.name, clocks[0].len, inv_var)?;
            good_samples += files.check_samples(&data, header.grid.npix())?;
            data.convert_to_nested(header.grid);
            detectors.push(data);
        }
        Ok(ObsData {
            summary: ObsSummary {
                obs,
                nside: header.grid.nside(),
                frame: header.frame.as_str().to_string(),
                rate_hz: rate.unwrap_or(0.0),
                samples: detectors.iter().map(|d| d.pixels.len() as u64).sum(),
                good_samples,
            },
            detectors,
        })
    }

    /// Opens the input files of `obs`: its calibrated timestreams, and its pointing file or,
    /// with `pointing = "expand"`, its raw observation file with the pointing expander.
    fn open_observation(&self, run_dir: &Path, obs: u32) -> Result<ObsFiles, CmbError> {
        let cal = H5Reader::open(self.calibrated_path(run_dir, obs))?;
        let (pt, expanded) = match self.config.pointing {
            PointingSource::File => (H5Reader::open(self.pointing_path(run_dir, obs))?, None),
            PointingSource::Expand => {
                let entry = self.list.entry(obs).ok_or_else(|| CmbError::List {
                    path: self.config.observations.clone(),
                    message: format!("no observation {obs}"),
                })?;
                let raw = H5Reader::open(&entry.file)?;
                let geometry = self.config.expand.clone().unwrap_or_default();
                let e = ObservationPointing::open(&raw, &self.focal_plane, &geometry)?;
                (raw, Some(e))
            }
        };
        Ok(ObsFiles { cal, pt, expanded })
    }

    /// Checks the pointing's `nside` (read from `path`) against `mapmake.nside` and
    /// `mapmake.submap_nside`.
    fn check_nside(&self, path: &Path, nside: u64) -> Result<(), CmbError> {
        if let Some(expected) = self.config.nside
            && expected != nside
        {
            return Err(H5Error::invalid(
                path,
                "@nside",
                format!("pointing has nside {nside}, but mapmake.nside is {expected}"),
            )
            .into());
        }
        if let Some(sub) = self.config.submap_nside
            && sub > nside
        {
            return Err(H5Error::invalid(
                path,
                "@nside",
                format!("pointing nside {nside} is below mapmake.submap_nside {sub}"),
            )
            .into());
        }
        Ok(())
    }

    fn run_obs(&self, obs: u32, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        if self.list.entry(obs).is_none() {
            return Err(UnitFailure::bad_input(format!(
                "{}: no observation {obs}",
                self.config.observations.display()
            )));
        }
        let mut needed = vec![(self.calibrated_path(&ctx.run_dir, obs), "skypipe-calibrate")];
        if self.config.pointing == PointingSource::File {
            needed.push((self.pointing_path(&ctx.run_dir, obs), "skypipe-pointing"));
        }
        for (path, producer) in needed {
            if !path.exists() {
                return Err(UnitFailure::new(
                    FailureKind::DependencyFailed,
                    format!(
                        "{}: missing (run {producer} first; did its unit fail?)",
                        path.display()
                    ),
                ));
            }
        }
        let data = self
            .load(&ctx.run_dir, obs)
            .map_err(CmbError::into_failure)?;
        ctx.set_value(&data.summary);
        self.held
            .lock()
            .expect("no unit panics while holding the lock")
            .insert(obs, data);
        Ok(Outcome::Done)
    }

    /// The map unit of the full map (`split` `None`) or of a split: the maps of its
    /// observations (its unit's inputs) and detectors. Every rank goes through the same
    /// phases, making the same collective calls in the same order: gather
    /// ([`Mapmake::gather_observations`], [`Mapmake::plan_binning`]), solve
    /// ([`Mapmake::solve`]), write (baselines, [`Mapmake::stage_maps`], and on rank 0
    /// [`Mapmake::publish`] with the summary).
    fn run_map(&self, ctx: &UnitContext, split: Option<&Split>) -> Result<Outcome, UnitFailure> {
        let selection = split.and_then(|s| s.detectors.as_ref());
        let coll = ctx.collectives();
        let started = std::time::Instant::now();
        let inputs = self.map_inputs(ctx)?;
        // 1. Gather: each observation from the rank holding it, or read again.
        let (mine, reread) = self.gather_observations(ctx, &inputs.wanted)?;
        let read_s = started.elapsed().as_secs_f64();
        let held = self.held.lock().expect("no panic while locked");
        let local: Vec<LocalObs<'_>> = mine
            .keep
            .iter()
            .chain(&mine.read)
            .map(|o| (&held[o], held[o].detectors_in(selection)))
            .collect();
        let (timestreams, binning) = self.plan_binning(coll, &inputs, &local, reread);
        // 2. Solve: this rank's share of the maps.
        let mut reduce = OwnedReduce::new(coll);
        let destripe = binning.destripe.as_ref();
        let solution = self.solve(&timestreams, binning.layout, destripe, &mut reduce)?;
        // 3. Write: every rank writes the baselines of the observations it binned, in parallel.
        let out_dir = match split {
            Some(s) => self.split_dir(&ctx.run_dir, &s.name),
            None => self.out_dir(&ctx.run_dir),
        };
        let provenance = self.map_provenance(split, inputs.wanted.keys().copied(), &ctx.run_dir);
        if let Some(cfg) = destripe {
            let (baselines, length) = (solution.baselines, cfg.baseline_length);
            // Every rank learns whether any rank failed to write (a full disk on one node),
            // before the collectives that send the maps to their writers.
            let written = write_baselines(ctx, &out_dir, &local, baselines, length, &provenance);
            agree_on_writes(coll, written.err())?;
        }
        drop(timestreams);
        drop(held);
        let solve_s = started.elapsed().as_secs_f64() - read_s;
        let mut totals = [
            solution.binned.observed_pixels().count() as u64,
            solution.binned.cut_pixels().len() as u64,
            binning.extents[coll.rank()][0],
        ];
        coll.all_reduce_sum_u64(&mut totals);
        tracing::info!(
            read_s,
            solve_s,
            "map unit: inputs read and shared, maps solved"
        );
        let figures = solution.figures;
        let mut summary = self.map_summary(split, inputs, &binning, &reduce, figures, totals);
        if !summary.converged && coll.rank() == 0 {
            tracing::warn!(
                iterations = summary.iterations,
                residual = summary.residual,
                "the destriper did not reach its tolerance"
            );
        }
        // Rank 0 writes the binned map and the summary, the last rank the destriped map: every
        // rank sends its owned pieces to them in bounded steps, so the two writes overlap.
        let mut maps = vec![(solution.binned, 0, "binned")];
        if let Some(d) = solution.destriped {
            maps.push((d, coll.size() - 1, "destriped"));
        }
        let staging = out_dir.join(STAGING_DIR);
        let dur = durability(ctx);
        self.stage_maps(coll, &staging, maps, &summary, &provenance, dur)?;
        account_memory(coll, &reduce, &mut summary);
        if coll.rank() != 0 {
            return agree_on_writes(coll, None).map(|()| Outcome::Done);
        }
        let write_s = started.elapsed().as_secs_f64() - read_s - solve_s;
        summary.seconds = [read_s, solve_s, write_s];
        self.publish(coll, &staging, &out_dir, &mut summary, dur)?;
        ctx.set_value(&summary);
        Ok(Outcome::Done)
    }

    /// A map unit's inputs: its observations' summaries, the observation units that failed,
    /// and the grid the observations share ([`Mapmake::check_consistent`]).
    fn map_inputs(&self, ctx: &UnitContext) -> Result<MapInputs, UnitFailure> {
        let summaries: Vec<ObsSummary> = ctx
            .input_values::<ObsSummary>()?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let missing: Vec<String> = ctx
            .inputs()
            .iter()
            .filter(|i| !matches!(i.outcome, OutcomeKind::Done | OutcomeKind::NoWork))
            .map(|i| i.unit.to_string())
            .collect();
        let grid = self.check_consistent(&ctx.run_dir, &summaries)?;
        let wanted = summaries.iter().map(|s| (s.obs, s.samples)).collect();
        Ok(MapInputs {
            summaries,
            wanted,
            missing,
            grid,
        })
    }

    /// The gather phase of a map unit (two collectives): its ranks tell each other which of
    /// the `wanted` observations they hold, each observation stays on the lowest rank holding
    /// it, the rest are read into memory by the ranks [`assign_observations`] gives them, and
    /// every rank learns of any read error. Returns this rank's assignment and how many
    /// observations were read again over all ranks.
    fn gather_observations(
        &self,
        ctx: &UnitContext,
        wanted: &BTreeMap<u32, u64>,
    ) -> Result<(Assignment, usize), UnitFailure> {
        let coll = ctx.collectives();
        let mine: Vec<u32> = {
            let held = self.held.lock().expect("no panic while locked");
            held.keys()
                .copied()
                .filter(|o| wanted.contains_key(o))
                .collect()
        };
        let gathered: Vec<Vec<u32>> = all_gather_json(coll, &mine);
        let mut assignment = assign_observations(&gathered, wanted);
        let reread = assignment.iter().map(|a| a.read.len()).sum::<usize>();
        let me = assignment.swap_remove(coll.rank());
        let mut load_errors = Vec::new();
        for &obs in &me.read {
            match self.load(&ctx.run_dir, obs) {
                Ok(data) => {
                    self.held
                        .lock()
                        .expect("no panic while locked")
                        .insert(obs, data);
                }
                Err(e) => load_errors.push(format!("obs={obs:04}: {e}")),
            }
        }
        agree(coll, load_errors)?;
        Ok((me, reread))
    }

    /// What the map unit's ranks agree on before binning, in two collectives: the most
    /// detectors any rank bins of one observation (which sizes the destriper's coarse space),
    /// then every rank's unflagged samples and hit sub-maps. Returns this rank's timestreams
    /// of `local` and the [`Binning`]; a timestream's group (preconditioner block and coarse
    /// template) is its observation's position among `inputs`', alike on every rank.
    fn plan_binning<'a>(
        &self,
        coll: &dyn Collectives,
        inputs: &MapInputs,
        local: &'a [LocalObs<'a>],
        reread: usize,
    ) -> (Vec<Timestream<'a>>, Binning) {
        let position: BTreeMap<u32, usize> = inputs
            .wanted
            .keys()
            .enumerate()
            .map(|(i, &o)| (o, i))
            .collect();
        let local_detectors = local.iter().map(|(_, d)| d.len()).max().unwrap_or(0);
        let most_detectors = all_gather_json(coll, &local_detectors)
            .into_iter()
            .max()
            .unwrap_or(0);
        let (coarse_groups, coarse_detectors, coarse_segments) = coarse_layout(
            self.config.coarse_space,
            self.config.coarse_segments,
            inputs.wanted.len(),
            most_detectors,
        );
        let timestreams: Vec<Timestream<'a>> = local
            .iter()
            .flat_map(|(data, detectors)| {
                let at = position[&data.summary.obs];
                detectors.iter().map(move |d| d.timestream(at))
            })
            .collect();
        let grid = inputs.grid;
        let layout = SubmapLayout::new(
            grid.npix(),
            (grid.nside() / self.submap_nside(grid.nside())).pow(2),
        )
        .expect("nside and submap_nside are powers of two");
        let (samples, submaps) = local_extent(&timestreams, layout);
        let extents: Vec<[u64; 2]> = all_gather_json(coll, &[samples, submaps as u64]);
        let rate = inputs.summaries.first().map_or(1.0, |s| s.rate_hz);
        let baseline_length = ((self.config.baseline_s * rate).round() as usize).max(1);
        let destripe = self.config.destripe.then_some(DestripeConfig {
            baseline_length,
            tolerance: self.config.tolerance,
            max_iterations: self.config.max_iterations,
            rcond_min: self.config.rcond_min,
            coarse_groups,
            coarse_segments,
            coarse_detectors,
            block_baselines: self.config.block_baselines,
        });
        let binning = Binning {
            layout,
            destripe,
            extents,
            reread,
        };
        (timestreams, binning)
    }

    /// The solve phase of a map unit, without file I/O: bins `timestreams` into `layout`'s
    /// sub-maps and reduces them to their owner ranks over `reduce` (with `destriping`, by
    /// the destriper, which solves the baselines first), then solves this rank's owned
    /// pixels.
    fn solve(
        &self,
        timestreams: &[Timestream<'_>],
        layout: SubmapLayout,
        destriping: Option<&DestripeConfig>,
        reduce: &mut OwnedReduce<'_>,
    ) -> Result<Solution, UnitFailure> {
        let comps = self.config.components.kernel();
        let (baselines, figures) = match destriping {
            Some(cfg) => {
                let out = destripe(timestreams, layout, comps, cfg, reduce)
                    .map_err(|e| UnitFailure::bad_input(format!("destriping: {e}")))?;
                tracing::info!(
                    iterations = out.iterations,
                    coarse_templates = out.coarse_dimension,
                    residuals = ?out.residual_history,
                    "destriper: relative residual per iteration"
                );
                let figures = SolverFigures {
                    iterations: out.iterations,
                    residual: out.residual,
                    converged: out.converged,
                    residual_history: out.residual_history,
                    coarse_templates: out.coarse_dimension,
                };
                (out.baselines, figures)
            }
            None => {
                let mut acc = BinAccumulator::new(layout, comps);
                for ts in timestreams {
                    acc.accumulate(ts.pixels, ts.weights, ts.signal, ts.flags, ts.inv_var)
                        .map_err(|e| UnitFailure::bad_input(format!("binning: {e}")))?;
                }
                reduce.reduce_map(acc.map_mut());
                let figures = SolverFigures {
                    iterations: 0,
                    residual: 0.0,
                    converged: true,
                    residual_history: Vec::new(),
                    coarse_templates: 0,
                };
                (Vec::new(), figures)
            }
        };
        // This rank's share of the maps: the sums it owns, solved here.
        let mut owned = reduce.take_owned().into_iter();
        let matrix = owned.next().expect("the binned matrix was reduced");
        let binned = BinAccumulator::from_map(comps, matrix)
            .expect("the matrix has the components' stride")
            .solve(self.config.rcond_min);
        let destriped = owned.next().map(|rhs| {
            binned
                .solve_rhs(&rhs)
                .expect("the right-hand side has the components' values")
        });
        Ok(Solution {
            binned,
            destriped,
            baselines,
            figures,
        })
    }

    /// The summary of a map unit (its value and `summary.json`) from its `inputs`, the
    /// agreed `binning`, the reduction's sub-map counts, the destriper's `figures` and the
    /// `totals` over all ranks (`[observed pixels, cut pixels, samples]`); the per-rank
    /// memory figures, the files and the timings are filled in as they are known.
    fn map_summary(
        &self,
        split: Option<&Split>,
        inputs: MapInputs,
        binning: &Binning,
        reduce: &OwnedReduce<'_>,
        figures: SolverFigures,
        totals: [u64; 3],
    ) -> MapSummary {
        let selection = split.and_then(|s| s.detectors.as_ref());
        let MapInputs {
            summaries,
            missing,
            grid,
            ..
        } = inputs;
        let layout = binning.layout;
        MapSummary {
            nside: grid.nside(),
            frame: summaries
                .first()
                .map_or("galactic".to_string(), |s| s.frame.clone()),
            observations: summaries.len(),
            missing_observations: missing,
            samples: totals[2],
            observed_pixels: totals[0],
            cut_pixels: totals[1],
            // One extent per rank of the unit.
            ranks: binning.extents.len(),
            reread_observations: binning.reread,
            samples_per_rank: binning.extents.iter().map(|e| e[0]).collect(),
            submaps_per_rank: binning.extents.iter().map(|e| e[1]).collect(),
            observed_submaps: reduce.union_submaps() as u64,
            owned_submaps_per_rank: Vec::new(),
            peak_submaps_per_rank: Vec::new(),
            peak_memory_mb_per_rank: Vec::new(),
            shared_submaps: reduce.shared_submaps() as u64,
            submap_pixels: layout.submap_size() as u64,
            submaps: layout.n_submaps() as u64,
            baseline_samples: binning.destripe.map_or(0, |c| c.baseline_length),
            iterations: figures.iterations,
            residual: figures.residual,
            converged: figures.converged,
            residual_history: figures.residual_history,
            coarse_templates: figures.coarse_templates,
            files: Vec::new(),
            split: split.map(|s| SplitSummary {
                name: s.name.clone(),
                observations: summaries.iter().map(|o| o.obs).collect(),
                detectors: self
                    .focal_plane
                    .detectors
                    .iter()
                    .filter(|d| selection.is_none_or(|names| names.contains(&d.name)))
                    .map(|d| d.name.clone())
                    .collect(),
            }),
            seconds: [0.0; 3],
        }
    }

    /// Writes every map `(this rank's owned share, writing rank, kind)` into `staging`
    /// ([`Mapmake::write_maps_gathered`]), and every rank joins the agreement on the writes,
    /// so the product appears whole or not at all; on a failure anywhere, rank 0 removes
    /// `staging`.
    fn stage_maps(
        &self,
        coll: &dyn Collectives,
        staging: &Path,
        maps: Vec<(BinnedMap, usize, &str)>,
        summary: &MapSummary,
        provenance: &Provenance,
        dur: Durability,
    ) -> Result<(), UnitFailure> {
        let staged = self.write_maps_gathered(coll, staging, &maps, summary, provenance, dur);
        drop(maps);
        agree_on_writes(coll, staged.err()).inspect_err(|_| {
            if coll.rank() == 0 {
                let _ = std::fs::remove_dir_all(staging);
            }
        })
    }

    /// The publish step, on rank 0: moves the staged maps into `out_dir`, then writes the
    /// summary (the manifest, written last, listing only what exists); on any failure it
    /// removes what it moved. It then removes `staging` and joins the other ranks'
    /// agreement on the writes.
    fn publish(
        &self,
        coll: &dyn Collectives,
        staging: &Path,
        out_dir: &Path,
        summary: &mut MapSummary,
        dur: Durability,
    ) -> Result<(), UnitFailure> {
        let kinds: &[&str] = if self.config.destripe {
            &["binned", "destriped"]
        } else {
            &["binned"]
        };
        let nnz = self.config.components.kernel().nnz();
        let mut names = Vec::new();
        for name in kinds {
            names.push(format!("map_{name}.fits"));
            if self.config.quicklook_width > 0 {
                names.extend(quicklook_names(name, nnz).into_iter().map(|(_, file)| file));
            }
        }
        let published = publish_maps(staging, out_dir, &names, summary, self.config.destripe, dur);
        if published.is_err() {
            for name in &names {
                let _ = std::fs::remove_file(out_dir.join(name));
            }
        }
        let _ = std::fs::remove_dir_all(staging);
        agree_on_writes(coll, published.err())?;
        tracing::info!(
            observations = summary.observations,
            samples = summary.samples,
            pixels = summary.observed_pixels,
            iterations = summary.iterations,
            residual = summary.residual,
            "maps written to {}",
            out_dir.display()
        );
        Ok(())
    }

    /// Every observation must share nside, frame and sample rate.
    fn check_consistent(
        &self,
        run_dir: &Path,
        summaries: &[ObsSummary],
    ) -> Result<Healpix, UnitFailure> {
        let Some(first) = summaries.first() else {
            return Err(UnitFailure::bad_input(
                "no observation was read successfully: nothing to map",
            ));
        };
        let describe = |s: &ObsSummary| {
            format!(
                "{} (nside {}, frame {}, {} Hz)",
                self.pointing_path(run_dir, s.obs).display(),
                s.nside,
                s.frame,
                s.rate_hz
            )
        };
        let differing: Vec<String> = summaries
            .iter()
            .filter(|s| {
                s.nside != first.nside
                    || s.frame != first.frame
                    || (s.rate_hz - first.rate_hz).abs() > 1e-9 * first.rate_hz
            })
            .map(describe)
            .collect();
        if !differing.is_empty() {
            return Err(UnitFailure::bad_input(format!(
                "observations disagree on nside, frame or sample rate: {} differ from {}",
                differing.join(", "),
                describe(first)
            )));
        }
        Ok(Healpix::new(first.nside, Ordering::Nested).expect("checked by the obs unit"))
    }

    /// Writes every map `(this rank's owned share, writing rank, kind)` into `staging`, and
    /// its quicklook: every rank sends the records of the pixels it owns to the writing rank,
    /// [`GATHER_PIXELS`] output pixels at a time, while a thread on the writing rank writes the
    /// FITS file from them. Memory on a writer: one gathered step in flight and one queued,
    /// plus the FITS writer's block, never the whole map. Every rank makes the same
    /// collective calls whatever fails; the error is this rank's own.
    fn write_maps_gathered(
        &self,
        coll: &dyn Collectives,
        staging: &Path,
        maps: &[(BinnedMap, usize, &str)],
        summary: &MapSummary,
        provenance: &Provenance,
        dur: Durability,
    ) -> Result<(), UnitFailure> {
        let me = coll.rank();
        let nnz = self.config.components.kernel().nnz();
        let nside = summary.nside;
        let npix = (12 * nside * nside) as usize;
        // Hit counts as 32-bit integers unless a pixel has more (never in practice).
        let binned = &maps[0].0;
        let local_max = binned
            .observed_pixels()
            .map(|p| binned.hits(p))
            .fold(0.0, f64::max);
        let max_hits = coll
            .all_gather_bytes(&local_max.to_le_bytes())
            .iter()
            .map(|b| f64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
            .fold(0.0, f64::max);
        let wide_hits = max_hits > f64::from(i32::MAX);
        let nested = self.config.output_ordering == Ordering::Nested;
        let ring = Healpix::new(nside, Ordering::Ring).expect("valid nside");
        let written = std::thread::scope(|scope| {
            let mut senders = Vec::new();
            let mut writers = Vec::new();
            for &(_, root, kind) in maps {
                if root != me {
                    senders.push(None);
                    continue;
                }
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<f64>>(1);
                let path = staging.join(format!("map_{kind}.fits"));
                writers.push(scope.spawn(move || {
                    let map = MapFile {
                        path: &path,
                        kind,
                        wide_hits,
                        provenance,
                    };
                    self.write_map(&map, summary, dur, || rx.recv().ok())
                }));
                senders.push(Some(tx));
            }
            for first in (0..npix).step_by(GATHER_PIXELS) {
                let n = GATHER_PIXELS.min(npix - first);
                let pixels: Vec<u64> = (first as u64..(first + n) as u64)
                    .into_par_iter()
                    .map(|p| {
                        if nested {
                            p
                        } else {
                            ring.to_nested(p).expect("pixel below npix")
                        }
                    })
                    .collect();
                for ((map, root, _), tx) in maps.iter().zip(&senders) {
                    let mut records = owned_records(map, &pixels, nnz);
                    coll.reduce_sum_f64(*root, &mut records);
                    if let Some(tx) = tx {
                        // A writer that failed has stopped listening: its error is below.
                        let _ = tx.send(records);
                    }
                }
            }
            drop(senders);
            writers
                .into_iter()
                .try_for_each(|w| w.join().expect("the map writer does not panic"))
        });
        let quicklooks = if self.config.quicklook_width > 0 {
            self.write_quicklooks_gathered(coll, staging, maps, summary, dur)
        } else {
            Ok(())
        };
        written.and(quicklooks)
    }

    /// The quicklooks of [`Mapmake::write_maps_gathered`]: every rank finds the pixels the
    /// image samples (a few per image pixel), and sends the I (Q, U) of those it owns to the
    /// writer, which draws one labelled quicklook per Stokes component.
    fn write_quicklooks_gathered(
        &self,
        coll: &dyn Collectives,
        staging: &Path,
        maps: &[(BinnedMap, usize, &str)],
        summary: &MapSummary,
        dur: Durability,
    ) -> Result<(), UnitFailure> {
        let width = self.config.quicklook_width;
        let nside = summary.nside;
        let nnz = self.config.components.kernel().nnz();
        let grid = Healpix::new(nside, Ordering::Nested).expect("the map's nside is valid");
        let pixel_at = |theta: f64, phi: f64| {
            grid.ang2pix(theta, phi.rem_euclid(std::f64::consts::TAU))
                .ok()
        };
        let sampled = Mutex::new(Vec::new());
        // A fixed scale: only the pixels asked for matter here.
        let _ = quicklook::render(width, Scale::Fixed { min: 0.0, max: 1.0 }, |theta, phi| {
            if let Some(p) = pixel_at(theta, phi) {
                sampled.lock().expect("no panic while locked").push(p);
            }
            None
        });
        let mut sampled = sampled.into_inner().expect("no panic while locked");
        sampled.sort_unstable();
        sampled.dedup();
        let stride = nnz + 1;
        let mut result = Ok(());
        for (map, root, kind) in maps {
            // [I (Q, U), solved] per sampled pixel, from its owner.
            let mut values = vec![0.0; stride * sampled.len()];
            for (v, &p) in values.chunks_exact_mut(stride).zip(&sampled) {
                if let Some(m) = map.value(p) {
                    v[..nnz].copy_from_slice(&m[..nnz]);
                    v[nnz] = 1.0;
                }
            }
            coll.reduce_sum_f64(*root, &mut values);
            if *root != coll.rank() {
                continue;
            }
            for (component, file) in quicklook_names(kind, nnz) {
                if result.is_err() {
                    break;
                }
                let value = |theta: f64, phi: f64| {
                    let k = sampled.binary_search(&pixel_at(theta, phi)?).ok()?;
                    let record = &values[stride * k..stride * (k + 1)];
                    (record[nnz] > 0.0).then_some(record[component])
                };
                let title = format!(
                    "skypipe-mapmake {kind} {}  {}  nside {nside}",
                    STOKES[component], summary.frame
                );
                result = write_quicklook(&staging.join(file), value, width, &title, dur);
            }
        }
        result
    }

    /// Writes one map from its gathered records (`[I (Q, U), hits, rcond, solved]` per output
    /// pixel, in output order, as `next_records` yields them), block by block.
    fn write_map(
        &self,
        map: &MapFile<'_>,
        summary: &MapSummary,
        dur: Durability,
        mut next_records: impl FnMut() -> Option<Vec<f64>>,
    ) -> Result<(), UnitFailure> {
        let MapFile {
            path,
            kind,
            wide_hits,
            provenance,
        } = *map;
        let nside = summary.nside;
        let nested = self.config.output_ordering == Ordering::Nested;
        let single = self.config.output_precision == Precision::Single;
        let nnz = self.config.components.kernel().nnz();
        let stride = nnz + 3;
        let names = ["I_STOKES", "Q_STOKES", "U_STOKES"];
        let mut specs: Vec<ColumnSpec> = names[..nnz]
            .iter()
            .map(|name| {
                let kind = if single {
                    ColumnType::F32
                } else {
                    ColumnType::F64
                };
                ColumnSpec::new(name, "K_CMB", kind)
            })
            .collect();
        let hits_kind = if wide_hits {
            ColumnType::I64
        } else {
            ColumnType::I32
        };
        specs.push(ColumnSpec::new("HITS", "", hits_kind));
        specs.push(ColumnSpec::new("RCOND", "", ColumnType::F32));
        // Records gathered but not yet written, from the next pixel to write on.
        let mut pending: Vec<f64> = Vec::new();
        let fill = |_first: usize, n: usize| -> Vec<Column> {
            while pending.len() < n * stride {
                match next_records() {
                    Some(more) => pending.extend_from_slice(&more),
                    // Short columns: the writer refuses the block.
                    None => break,
                }
            }
            let records: Vec<f64> = pending.drain(..(n * stride).min(pending.len())).collect();
            let records = records.chunks_exact(stride);
            let mut block: Vec<Column> = (0..nnz)
                .map(|c| {
                    let value = |r: &[f64]| if r[nnz + 2] > 0.0 { r[c] } else { UNSEEN };
                    if single {
                        let v = records.clone().map(|r| value(r) as f32).collect();
                        Column::f32(names[c], "K_CMB", v)
                    } else {
                        Column::f64(names[c], "K_CMB", records.clone().map(value).collect())
                    }
                })
                .collect();
            block.push(if wide_hits {
                Column::i64("HITS", "", records.clone().map(|r| r[nnz] as i64).collect())
            } else {
                Column::i32("HITS", "", records.clone().map(|r| r[nnz] as i32).collect())
            });
            block.push(Column::f32(
                "RCOND",
                "",
                records.map(|r| r[nnz + 1] as f32).collect(),
            ));
            block
        };
        let coordsys = Frame::parse(&summary.frame).map_or("C", Frame::coordsys);
        let header = HealpixHeader {
            nside,
            nested,
            coordsys,
            cards: vec![
                Card::text("CREATOR", "skypipe-mapmake", "software"),
                Card::text("MAPTYPE", kind, "binned or destriped"),
                Card::text("TEMPTYPE", "THERMO", "thermodynamic temperature"),
                Card::int("NOBS", summary.observations as i64, "observations binned"),
                Card::int(
                    "NMISSING",
                    summary.missing_observations.len() as i64,
                    "observations whose unit failed",
                ),
                Card::int("NSAMPLES", summary.samples as i64, "samples binned"),
                Card::real("RCONDMIN", self.config.rcond_min, "rcond cut"),
                Card::int(
                    "BASELINE",
                    summary.baseline_samples as i64,
                    "destriper baseline (samples)",
                ),
                Card::int("CGITER", summary.iterations as i64, "CG iterations"),
                Card::real("CGRESID", summary.residual, "final relative CG residual"),
                Card::text(
                    "ORIGORD",
                    Ordering::Nested.header_name(),
                    "ordering the map was made in",
                ),
            ],
            provenance: Some(provenance),
        };
        write_healpix_map_blocks(path, &header, &specs, fill, dur)
            .map_err(|e| UnitFailure::transient(format!("{}: {e}", path.display())))
    }
}

/// Unflagged samples and the sub-maps they touch (ascending) in this rank's timestreams.
/// One detector's pixels and weights expanded from the attitude, aligned chunk by chunk.
fn expand_detector(
    e: &ObservationPointing,
    d: usize,
    path: &Path,
    group: &str,
) -> Result<(Vec<u64>, Vec<[f64; 3]>), CmbError> {
    let (_, _, len) = e.detector(d);
    let (mut pixels, mut weights) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let mut buf = ChunkPointing::default();
    for index in 0..len.div_ceil(e.chunk_samples()) {
        e.expand_chunk(d, index, false, &mut buf)
            .map_err(|err| H5Error::invalid(path, &format!("{group}/signal"), err.to_string()))?;
        pixels.extend_from_slice(&buf.pixels);
        weights.extend_from_slice(&buf.weights);
    }
    Ok((pixels, weights))
}

fn local_extent(timestreams: &[Timestream<'_>], layout: SubmapLayout) -> (u64, usize) {
    let mut touched = vec![false; layout.n_submaps()];
    let mut samples = 0;
    for ts in timestreams {
        for (i, &p) in ts.pixels.iter().enumerate() {
            if ts.flags.is_none_or(|f| f[i] == 0) {
                touched[layout.split(p).0] = true;
                samples += 1;
            }
        }
    }
    (samples, touched.iter().filter(|&&t| t).count())
}

/// The peak resident memory of this process (`VmHWM` of `/proc/self/status`) in MiB, 0 where
/// it is not available.
fn peak_memory_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(0.0)
}

/// Each output pixel's record as the owner contributes it to the gather: `[I (Q, U), hits,
/// rcond, solved]`, all zero for pixels this rank does not own (or that have no hits), so the
/// sum over ranks is the owner's record exactly.
fn owned_records(map: &BinnedMap, nested_pixels: &[u64], nnz: usize) -> Vec<f64> {
    let mut records = vec![0.0; nested_pixels.len() * (nnz + 3)];
    records
        .par_chunks_mut(nnz + 3)
        .zip(nested_pixels)
        .for_each(|(r, &p)| {
            let hits = map.hits(p);
            if hits > 0.0 {
                if let Some(v) = map.value(p) {
                    r[..nnz].copy_from_slice(&v[..nnz]);
                    r[nnz + 2] = 1.0;
                }
                r[nnz] = hits;
                r[nnz + 1] = map.rcond(p);
            }
        });
    records
}

/// Stokes component names, in map column order.
const STOKES: [&str; 3] = ["I", "Q", "U"];

/// The quicklook PNGs of map `kind` with `nnz` Stokes components: `(component, file name)`,
/// `map_KIND.png` for I and `map_KIND_Q.png`, `map_KIND_U.png` for Q and U.
fn quicklook_names(kind: &str, nnz: usize) -> Vec<(usize, String)> {
    (0..nnz)
        .map(|c| match c {
            0 => (c, format!("map_{kind}.png")),
            _ => (c, format!("map_{kind}_{}.png", STOKES[c])),
        })
        .collect()
}

/// Writes the labelled Mollweide quicklook of one Stokes component (`value` at colatitude and
/// longitude, in K_CMB) with `title` above it.
fn write_quicklook(
    path: &Path,
    value: impl Fn(f64, f64) -> Option<f64>,
    width: u32,
    title: &str,
    dur: Durability,
) -> Result<(), UnitFailure> {
    let sample = &value;
    let percentiles = Scale::Percentile {
        low: 2.0,
        high: 98.0,
    };
    let image = match quicklook::render(width, percentiles, sample) {
        // Nothing solved anywhere: an all-grey map on an arbitrary scale.
        Err(QuicklookError::NothingSeen) => {
            quicklook::render(width, Scale::Fixed { min: 0.0, max: 1.0 }, sample)
        }
        other => other,
    }
    .map_err(|e| UnitFailure::bad_input(format!("quicklook: {e}")))?;
    let limits = format!("{:.6e} {:.6e}", image.min, image.max);
    let figure = quicklook::labelled(&image, title, "K_CMB");
    skypipe_io::png::write_png_rgb(
        path,
        figure.width,
        figure.height,
        &figure.rgb,
        &[("Title", &format!("{title} (K_CMB)")), ("Limits", &limits)],
        dur,
    )
    .map_err(|e| UnitFailure::transient(format!("{}: {e}", path.display())))
}

/// The observations one rank of the map unit bins: those it holds and keeps, and those it
/// must read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Held in memory already.
    pub keep: Vec<u32>,
    /// To read from disk.
    pub read: Vec<u32>,
}

/// Splits the wanted observations (`obs → samples`) over ranks given what each rank holds:
/// an observation held by several ranks stays with the lowest; observations no rank holds go,
/// longest first, to the rank with the fewest samples so far (ties to the lowest rank).
/// Deterministic, so every rank computes the same split.
pub fn assign_observations(held: &[Vec<u32>], wanted: &BTreeMap<u32, u64>) -> Vec<Assignment> {
    let mut out = vec![Assignment::default(); held.len()];
    let mut load = vec![0u64; held.len()];
    let mut taken = BTreeSet::new();
    for (rank, obs_list) in held.iter().enumerate() {
        for &obs in obs_list {
            if let Some(&samples) = wanted.get(&obs)
                && taken.insert(obs)
            {
                out[rank].keep.push(obs);
                load[rank] += samples;
            }
        }
    }
    let mut rest: Vec<(u32, u64)> = wanted
        .iter()
        .filter(|(o, _)| !taken.contains(*o))
        .map(|(&o, &s)| (o, s))
        .collect();
    rest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (obs, samples) in rest {
        let rank = (0..load.len())
            .min_by_key(|&r| (load[r], r))
            .expect("at least one rank");
        out[rank].read.push(obs);
        load[rank] += samples;
    }
    for a in &mut out {
        a.keep.sort_unstable();
        a.read.sort_unstable();
    }
    out
}

/// Every rank shares its errors; if any rank has one, every rank fails with all of them (so
/// no rank goes on to a collective the others will never join).
fn agree(coll: &dyn Collectives, errors: Vec<String>) -> Result<(), UnitFailure> {
    let all: Vec<String> = all_gather_json(coll, &errors).concat();
    if all.is_empty() {
        Ok(())
    } else {
        Err(UnitFailure::bad_input(all.join("; ")))
    }
}

/// Directory inside the output directory where the maps are written before they are moved
/// into place together.
const STAGING_DIR: &str = ".maps.staging";

/// Moves the staged map files `names` into `out_dir` (removing an old `summary.json` first, so
/// no summary ever lists maps of two runs), then writes the summary listing the files that
/// exist.
fn publish_maps(
    staging: &Path,
    out_dir: &Path,
    names: &[String],
    summary: &mut MapSummary,
    destripe: bool,
    dur: Durability,
) -> Result<(), UnitFailure> {
    let fail = |path: &Path, e: std::io::Error| {
        UnitFailure::transient(format!(
            "{}: moving the map into place: {e}",
            path.display()
        ))
    };
    let manifest = out_dir.join("summary.json");
    match std::fs::remove_file(&manifest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&manifest, e)),
    }
    for name in names {
        let target = out_dir.join(name);
        std::fs::rename(staging.join(name), &target).map_err(|e| fail(&target, e))?;
    }
    summary.files = names
        .iter()
        .filter(|n| out_dir.join(n).is_file())
        .cloned()
        .collect();
    if destripe && out_dir.join("baselines").is_dir() {
        summary.files.push("baselines/".to_string());
    }
    let json = serde_json::to_vec_pretty(summary).expect("a summary encodes");
    skypipe_io::write_atomic(&manifest, &json, dur)
        .map_err(|e| UnitFailure::transient(format!("{}: {e}", out_dir.display())))?;
    Ok(())
}

/// Every rank of the map unit learns whether any rank failed to write its part; the first
/// failure (transient: writes can succeed on retry) is returned on every rank.
fn agree_on_writes(coll: &dyn Collectives, mine: Option<UnitFailure>) -> Result<(), UnitFailure> {
    // Never an empty buffer: MPI_Allgatherv refuses all-empty contributions.
    let mine = serde_json::to_vec(&mine.map(|f| f.message)).expect("strings encode");
    let failures: Vec<String> = coll
        .all_gather_bytes(&mine)
        .iter()
        .filter_map(|b| serde_json::from_slice::<Option<String>>(b).ok().flatten())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(UnitFailure::transient(failures.join("; ")))
    }
}

/// Every rank's `value`, in rank order: one all-gather of their JSON encodings.
fn all_gather_json<T: Serialize + DeserializeOwned>(coll: &dyn Collectives, value: &T) -> Vec<T> {
    coll.all_gather_bytes(&serde_json::to_vec(value).expect("the value encodes"))
        .iter()
        .map(|b| serde_json::from_slice(b).expect("every rank sends the same type"))
        .collect()
}

/// Fills in `summary`'s per-rank memory figures (one collective): the sub-maps each rank
/// owned and the most it held at once, and its process's peak resident memory (each rank
/// logs its own).
fn account_memory(coll: &dyn Collectives, reduce: &OwnedReduce<'_>, summary: &mut MapSummary) {
    // The memory this rank's process needed (its high-water mark, maps written).
    let peak_mb = peak_memory_mb();
    tracing::info!(
        peak_memory_mb = peak_mb,
        hit_submaps = summary.submaps_per_rank[coll.rank()],
        owned_submaps = reduce.owned_submaps(),
        peak_submaps = reduce.peak_submaps(),
        exchanged_values = reduce.sent_values(),
        "map unit: memory of this rank"
    );
    let mine = [
        reduce.owned_submaps() as f64,
        reduce.peak_submaps() as f64,
        peak_mb,
    ];
    let accounting: Vec<[f64; 3]> = all_gather_json(coll, &mine);
    summary.owned_submaps_per_rank = accounting.iter().map(|a| a[0] as u64).collect();
    summary.peak_submaps_per_rank = accounting.iter().map(|a| a[1] as u64).collect();
    summary.peak_memory_mb_per_rank = accounting.iter().map(|a| a[2]).collect();
}

impl Stage for Mapmake {
    type Unit = MapUnit;

    fn name(&self) -> &'static str {
        "mapmake"
    }

    fn config_fingerprint(&self) -> String {
        fingerprint_of(&self.config)
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<MapUnit>>, PlanError> {
        let mut plan: Vec<PlannedUnit<MapUnit>> = self
            .list
            .observations
            .iter()
            .map(|o| {
                let unit = PlannedUnit::new(MapUnit::Obs { obs: o.obs });
                match o.samples {
                    Some(s) => unit.cost(s as f64),
                    None => unit,
                }
            })
            .collect();
        let members: Vec<UnitId> = plan.iter().map(|p| p.unit.id()).collect();
        let tolerant = |map: PlannedUnit<MapUnit>| {
            if self.config.allow_failed_observations {
                map.tolerating_failed_inputs()
            } else {
                map
            }
        };
        plan.push(tolerant(
            PlannedUnit::new(MapUnit::Map).after(members).on_all_ranks(),
        ));
        for split in &self.splits {
            let members: Vec<UnitId> = split
                .observations
                .iter()
                .map(|&obs| MapUnit::Obs { obs }.id())
                .collect();
            let unit = PlannedUnit::new(MapUnit::Split {
                name: split.name.clone(),
            })
            .after(members.clone())
            .prefer_ranks_of(members);
            plan.push(tolerant(match split.ranks {
                Some(r) => unit.on_ranks(r),
                None => unit.on_all_ranks(),
            }));
        }
        Ok(plan)
    }

    fn run(&self, unit: &MapUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        match unit {
            MapUnit::Obs { obs } => self.run_obs(*obs, ctx),
            MapUnit::Map => {
                let result = self.run_map(ctx, None);
                // With splits, a later map unit on this rank may still use the data.
                if result.is_ok() && self.splits.is_empty() {
                    self.held.lock().expect("no panic while locked").clear();
                }
                result
            }
            MapUnit::Split { name } => self.run_map(ctx, Some(self.split(name)?)),
        }
    }

    fn connections(&self, unit: &MapUnit, run_dir: &Path) -> Connections {
        // A map unit declares no input file: its observations reach it as values of their
        // units (whose files its provenance names, `Mapmake::map_provenance`).
        let maps = |dir: PathBuf| {
            let c = Connections::new().output(DATASET_MAP, dir.join("map_binned.fits"));
            if self.config.destripe {
                c.output(DATASET_MAP, dir.join("map_destriped.fits"))
            } else {
                c
            }
        };
        match unit {
            &MapUnit::Obs { obs } => {
                let c = match (self.config.pointing, self.list.entry(obs)) {
                    (PointingSource::File, _) => {
                        Connections::new().input(DATASET_POINTING, self.pointing_path(run_dir, obs))
                    }
                    (PointingSource::Expand, Some(entry)) => {
                        Connections::new().prerequisite(DATASET_OBSERVATION, &entry.file)
                    }
                    (PointingSource::Expand, None) => Connections::new(),
                };
                c.input(DATASET_CALIBRATED, self.calibrated_path(run_dir, obs))
            }
            MapUnit::Map => maps(self.out_dir(run_dir)),
            MapUnit::Split { name } => maps(self.split_dir(run_dir, name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_config(name: &str) -> SplitConfig {
        SplitConfig {
            name: name.into(),
            observations: None,
            obs_range: None,
            half_mission: None,
            detectors: None,
            ranks: None,
        }
    }

    #[test]
    fn splits_select_observations_by_list_range_and_half_and_detectors_by_name() {
        let obs = [7, 3, 5, 1, 9];
        let dets = ["a", "b", "c"];
        let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
        let all = resolve_split(&split_config("all"), &obs, &dets).unwrap();
        assert_eq!(all.observations, set(&[1, 3, 5, 7, 9]));
        assert_eq!(all.detectors, None);
        let half = |h| {
            let c = SplitConfig {
                half_mission: Some(h),
                ..split_config("hm")
            };
            resolve_split(&c, &obs, &dets).map(|s| s.observations)
        };
        assert_eq!(
            half(1).unwrap(),
            set(&[1, 3, 5]),
            "the odd one in the first half"
        );
        assert_eq!(half(2).unwrap(), set(&[7, 9]));
        assert!(
            half(3)
                .unwrap_err()
                .to_string()
                .contains("half_mission must be 1 or 2")
        );
        let c = SplitConfig {
            observations: Some(vec![9, 1, 5]),
            obs_range: Some([2, 9]),
            detectors: Some(vec!["c".into(), "a".into()]),
            ranks: Some(2),
            ..split_config("mixed_1")
        };
        let mixed = resolve_split(&c, &obs, &dets).unwrap();
        assert_eq!(mixed.observations, set(&[5, 9]), "selectors intersect");
        assert_eq!(
            mixed.detectors,
            Some(["a".to_string(), "c".to_string()].into_iter().collect())
        );
        assert_eq!(mixed.ranks, Some(2));
        let error = |c: SplitConfig| resolve_split(&c, &obs, &dets).unwrap_err().to_string();
        assert!(error(split_config("a/b")).contains("letters, digits"));
        let unknown_obs = SplitConfig {
            observations: Some(vec![4]),
            ..split_config("x")
        };
        assert!(error(unknown_obs).contains("observation 4 is not in the observation list"));
        let empty = SplitConfig {
            obs_range: Some([10, 20]),
            ..split_config("x")
        };
        assert!(error(empty).contains("'x': selects no observation"));
        let unknown_det = SplitConfig {
            detectors: Some(vec!["z".into()]),
            ..split_config("x")
        };
        assert!(error(unknown_det).contains("detector 'z' is not in the focal plane"));
        let no_ranks = SplitConfig {
            ranks: Some(0),
            ..split_config("x")
        };
        assert!(error(no_ranks).contains("ranks must be at least 1"));
    }

    #[test]
    fn coarse_layout_fits_the_templates_under_the_cap() {
        // The demo: 12 observations of 8 detectors, 20 segments each.
        assert_eq!(coarse_layout(CoarseSpace::Detector, 20, 12, 8), (12, 8, 20));
        // 100 × 8 × 20 > 4096: as many segments as fit (5).
        assert_eq!(
            coarse_layout(CoarseSpace::Detector, 20, 100, 8),
            (100, 8, 5)
        );
        // Not even one template per detector: per observation, segments that fit.
        assert_eq!(
            coarse_layout(CoarseSpace::Detector, 20, 1000, 8),
            (1000, 0, 4)
        );
        assert_eq!(
            coarse_layout(CoarseSpace::Observation, 3, 12, 8),
            (12, 0, 3)
        );
        assert_eq!(coarse_layout(CoarseSpace::Observation, 1, 5000, 8).0, 0);
        assert_eq!(coarse_layout(CoarseSpace::None, 20, 12, 8).0, 0);
    }

    #[test]
    fn held_observations_stay_and_the_rest_are_balanced_longest_first() {
        let wanted: BTreeMap<u32, u64> =
            [(0, 100), (1, 100), (2, 300), (3, 50), (4, 200), (5, 10)].into();
        // Rank 1 and 2 both hold obs 1 (a retried unit): the lowest keeps it.
        let held = vec![vec![0], vec![1, 9], vec![1]];
        let a = assign_observations(&held, &wanted);
        assert_eq!(a[0].keep, vec![0]);
        assert_eq!(a[1].keep, vec![1], "obs 9 is not wanted");
        assert!(a[2].keep.is_empty());
        // Loads 100, 100, 0: obs 2 (300) → rank 2; obs 4 (200) → rank 0 (tie, lowest);
        // obs 3 (50) → rank 1; obs 5 (10) → rank 1 (150 < 300).
        assert_eq!(a[2].read, vec![2]);
        assert_eq!(a[0].read, vec![4]);
        assert_eq!(a[1].read, vec![3, 5]);
        let mut all: Vec<u32> = a
            .iter()
            .flat_map(|x| x.keep.iter().chain(&x.read))
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            vec![0, 1, 2, 3, 4, 5],
            "every wanted observation exactly once"
        );
    }

    #[test]
    fn nothing_held_spreads_reads_over_every_rank() {
        let wanted: BTreeMap<u32, u64> = (0..8).map(|o| (o, 100)).collect();
        let a = assign_observations(&[vec![], vec![], vec![]], &wanted);
        let counts: Vec<usize> = a.iter().map(|x| x.read.len()).collect();
        assert_eq!(counts, vec![3, 3, 2]);
    }
}
