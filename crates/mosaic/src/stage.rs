//! The `mosaic` stage: one unit per tract (`tract=T`), planned from the registry.
//!
//! Planning reads the registry only (never a science file): every registered CCD that is not
//! rejected, placed in each tract of the sky map (`[mosaic.skymap]`) whose footprint its
//! region meets; the tracts so overlapped (or those of `[mosaic] tracts`) are the units. The
//! stage runs after `skypipe-singleframe` has filled the registry; catalogue and calexp paths
//! stored there relative are taken relative to the run directory (as in a chain run).
//!
//! A unit, on a rayon pool of `[mosaic] threads`:
//! 1. reads each CCD's source catalogue (`SOURCES`) and the WCS of its calibrated exposure
//!    (`IMAGE` HDU: the single-frame fitted TAN-SIP when calibrated, else the header WCS), and
//!    keeps bright (`bright`), unflagged point sources (second moments within 30 % of the
//!    CCD's median among bright sources), with their positions in the tract's tangent plane
//!    and the local Jacobian of the WCS;
//! 2. removes each CCD's offset from the reference catalogue (`[mosaic] reference`, read once
//!    per process) by voting within `max_offset_arcsec` ([`crossmatch::offset_by_voting`]);
//! 3. groups detections of one star on different CCDs and matches the groups to the reference
//!    within `match_radius_arcsec`;
//! 4. solves jointly ([`solve::solve_joint`]) for per-CCD corrections of order `order`, with
//!    `clip` / `iterations` rejection, and reports CCDs with fewer than `min_stars_per_ccd`
//!    usable detections as unsolved (they keep their single-frame WCS, no registry row);
//! 5. fits each solved CCD's corrected WCS (current WCS evaluated at `pixel + δ(pixel)`) as a
//!    TAN (order 1 on a TAN input) or TAN-SIP on a 16 × 16 grid over the CCD, and writes
//!    `mosaic/tract-TTTT.fits` atomically, then the registry's sky map and `mosaic_wcs` rows.
//!
//! A missing or unreadable catalogue or calexp fails the unit as bad input naming the file.
//!
//! A tract with at least `large_tract_ccds` CCDs is planned on up to `ranks_per_large_tract`
//! ranks ([`PlannedUnit::on_up_to_ranks`]): each rank reads a contiguous block of the CCDs
//! (step 1) and later fits their corrected WCS (step 5); the selected sources reach every
//! rank in CCD order, the unit's rank 0 alone resolves the CCD list, votes, matches, solves
//! (steps 2–4) and writes every output, so the outputs are the same bits as on one rank. Every
//! exchange carries each rank's failure, so a bad file on one rank fails the unit on all
//! ([`crate::ranks`]).

use crate::crossmatch::{group_detections, match_to_reference, offset_by_voting};
use crate::ranks;
use crate::solve::{
    CcdFrame, CcdOutcome, CcdResiduals, Correction, JointProblem, JointSolution, Observation,
    ReferencePosition, ResidualStats, SolveError, SolveParams, residual_stats, solve_joint,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use skypipe_astrometry::tansip::{self, FitParams, TanSip};
use skypipe_io::fits::{Card, Column, FitsError, FitsReader, FitsWriter, Hdu};
use skypipe_io::provenance::Provenance;
use skypipe_optical::calibration::{ReferenceCatalog, ReferenceError};
use skypipe_optical::measure::flags;
use skypipe_optical::singleframe::{
    DATASET_CALEXP, DATASET_REFERENCE, DATASET_REGISTERED, DATASET_SOURCES, output_paths,
    registered_path,
};
use skypipe_registry::{
    CcdStatus, MosaicWcs, Registry, RegistryError, SkyMap, SkyMapConfig, SkyMapError, Tract,
};
use skypipe_stage::{
    Connections, KeyError, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure,
    UnitId, UnsetKey, WorkUnit, fingerprint_of,
};
use skypipe_wcs::{Wcs, WcsError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Dataset type of a tract's mosaic solution (`mosaic/tract-TTTT.fits`).
pub const DATASET_MOSAIC_WCS: &str = "mosaic-wcs";

/// The output file of tract `tract`, relative to the run directory.
pub fn tract_output_path(tract: u32) -> PathBuf {
    PathBuf::from(format!("mosaic/tract-{tract:04}.fits"))
}

/// The selection of bright sources: a signal-to-noise or a magnitude cut.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Bright {
    /// `FLUX_PSF / FLUX_PSF_ERR` at least this (`bright = { snr = 50.0 }`).
    Snr(f64),
    /// Calibrated `MAG` at most this (`bright = { mag = 21.0 }`; needs calibrated catalogues).
    Mag(f64),
}

/// The `[mosaic]` table. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MosaicConfig {
    /// Registry database. Default `RUN_DIR/registry.sqlite3` (set by the binary).
    pub registry: Option<PathBuf>,
    /// Reference catalogue (table `REFCAT`, the format of `[singleframe.calibration]
    /// reference`). Required.
    pub reference: Option<PathBuf>,
    /// The sky map (`[mosaic.skymap]`), stored in the registry by the first unit.
    pub skymap: SkyMapConfig,
    /// Only these tracts (default: every tract a registered CCD overlaps).
    pub tracts: Option<Vec<u32>>,
    /// Match radius across CCDs and to the reference, arcsec. Default 1.
    pub match_radius_arcsec: f64,
    /// Largest offset of a CCD's WCS from the reference searched by voting, arcsec. Default 10.
    pub max_offset_arcsec: f64,
    /// Position error of the reference stars, milliarcseconds per coordinate. Default 20.
    pub reference_error_mas: f64,
    /// Polynomial order of the per-CCD corrections: 1 affine (default), up to 3.
    pub order: usize,
    /// Rejection threshold in units of the robust scatter. Default 3.
    pub clip: f64,
    /// At most this many solves (rejection rounds). Default 10.
    pub iterations: usize,
    /// A CCD with fewer usable star detections keeps its single-frame WCS. Default 10.
    pub min_stars_per_ccd: usize,
    /// Bright-source selection. Default `{ snr = 50.0 }`.
    pub bright: Bright,
    /// Threads inside a tract unit (rayon). Default 1. Results do not depend on it.
    pub threads: usize,
    /// Margin (arcsec) for CCDs known only from their raw headers (`skypipe-ingest`; a chain
    /// run plans mosaic before single-frame processing): their header region grown by this
    /// much. Default 60.
    pub plan_margin_arcsec: f64,
    /// A tract with at least this many CCDs is large: its unit runs on up to
    /// `ranks_per_large_tract` ranks. Default 500. Results do not depend on it.
    pub large_tract_ccds: usize,
    /// Ranks sharing a large tract's unit (reading catalogues and WCS, fitting the corrected
    /// WCS; at most what the job can give a unit). Default 4. Results do not depend on it.
    pub ranks_per_large_tract: usize,
}

impl Default for MosaicConfig {
    fn default() -> Self {
        Self {
            registry: None,
            reference: None,
            skymap: SkyMapConfig::default(),
            tracts: None,
            match_radius_arcsec: 1.0,
            max_offset_arcsec: 10.0,
            reference_error_mas: 20.0,
            order: 1,
            clip: 3.0,
            iterations: 10,
            min_stars_per_ccd: 10,
            bright: Bright::Snr(50.0),
            threads: 1,
            plan_margin_arcsec: 60.0,
            large_tract_ccds: 500,
            ranks_per_large_tract: 4,
        }
    }
}

impl MosaicConfig {
    /// Checks values that types cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (k, v) in [
            ("match_radius_arcsec", self.match_radius_arcsec),
            ("max_offset_arcsec", self.max_offset_arcsec),
            ("reference_error_mas", self.reference_error_mas),
            ("clip", self.clip),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::value(
                    format!("mosaic.{k}"),
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if !(self.plan_margin_arcsec.is_finite() && self.plan_margin_arcsec >= 0.0) {
            return Err(ConfigError::value(
                "mosaic.plan_margin_arcsec",
                format!("must be finite and ≥ 0, got {}", self.plan_margin_arcsec),
            ));
        }
        if !(1..=3).contains(&self.order) {
            return Err(ConfigError::value(
                "mosaic.order",
                format!("must be 1, 2 or 3, got {}", self.order),
            ));
        }
        if self.iterations == 0 || self.threads == 0 || self.min_stars_per_ccd == 0 {
            return Err(ConfigError::value(
                "mosaic.iterations, mosaic.threads and mosaic.min_stars_per_ccd",
                "must be ≥ 1",
            ));
        }
        if self.large_tract_ccds == 0 || self.ranks_per_large_tract == 0 {
            return Err(ConfigError::value(
                "mosaic.large_tract_ccds and mosaic.ranks_per_large_tract",
                "must be ≥ 1",
            ));
        }
        match self.bright {
            Bright::Snr(v) | Bright::Mag(v) if !v.is_finite() => {
                return Err(ConfigError::value(
                    "mosaic.bright",
                    format!("must be finite, got {v}"),
                ));
            }
            _ => {}
        }
        self.skymap.validate().map_err(ConfigError::SkyMap)
    }
}

/// A `[mosaic]` table the stage refuses; each names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of range.
    #[error(transparent)]
    Value(#[from] KeyError),
    /// A key that has no default is not set.
    #[error(transparent)]
    Missing(#[from] UnsetKey),
    /// `[mosaic.skymap]` is not a valid sky map.
    #[error("mosaic.skymap: {0}")]
    SkyMap(#[source] SkyMapError),
}

impl ConfigError {
    /// A [`ConfigError::Value`].
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Value(KeyError::new(key, problem))
    }
}

/// The `skypipe-mosaic` configuration file: `[run]` (the engine's options, type `R`) and
/// `[mosaic]`. Unknown keys are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MosaicFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub mosaic: MosaicConfig,
}

/// One CCD of a tract unit, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TractCcd {
    /// Visit.
    pub visit: u64,
    /// CCD.
    pub ccd: u32,
    /// PSF FWHM, pixels (weights the centroids).
    pub psf_fwhm: f64,
    /// Calibrated exposure (its `IMAGE` HDU's WCS is the current WCS).
    pub calexp: PathBuf,
    /// Source catalogue.
    pub catalog: PathBuf,
    /// For a CCD planned from its ingested raw region (a chain run, before single-frame
    /// processing): its visit's registry marker, which the unit reads so that it runs once the
    /// CCD's registry row exists; the row then gives the PSF FWHM (`psf_fwhm` is NaN until
    /// then), and a CCD without one (not processed, or rejected) is left out.
    #[serde(default)]
    pub registered: Option<PathBuf>,
}

/// A unit: one tract and the CCDs overlapping it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MosaicUnit {
    /// Tract id.
    pub tract: u32,
    /// The CCDs, ordered by (visit, ccd).
    pub ccds: Vec<TractCcd>,
}

impl WorkUnit for MosaicUnit {
    fn id(&self) -> UnitId {
        UnitId::new().with("tract", self.tract)
    }
}

/// Errors of a tract unit, each naming the file (or the registry).
#[derive(Debug, thiserror::Error)]
pub enum MosaicError {
    /// A FITS file could not be read or written.
    #[error(transparent)]
    Fits(#[from] FitsError),
    /// A WCS could not be read or evaluated.
    #[error(transparent)]
    Wcs(#[from] WcsError),
    /// A catalogue has unusable content.
    #[error("{path}: table SOURCES: {message}")]
    Catalogue {
        /// The catalogue.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The reference catalogue could not be read (names the file; shared by the units of a
    /// process, which read it once).
    #[error(transparent)]
    Reference(Arc<ReferenceError>),
    /// The registry refused a read or write.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The joint solution failed.
    #[error("tract {tract}: {source}")]
    Solve {
        /// The tract.
        tract: u32,
        /// Why.
        source: SolveError,
    },
}

/// The stage.
#[derive(Debug)]
pub struct Mosaic {
    config: MosaicConfig,
    registry: PathBuf,
    reference: PathBuf,
    skymap: SkyMap,
    refcat: OnceLock<Result<Arc<ReferenceCatalog>, Arc<ReferenceError>>>,
}

impl Mosaic {
    /// Checks the configuration (naming the key) and builds the stage.
    pub fn new(config: MosaicConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let registry = config
            .registry
            .clone()
            .ok_or(ConfigError::Missing(UnsetKey {
                key: "mosaic.registry",
                what: "the run directory's registry.sqlite3 by default",
            }))?;
        let reference = config
            .reference
            .clone()
            .ok_or(ConfigError::Missing(UnsetKey {
                key: "mosaic.reference",
                what: "the reference catalogue, e.g. reference.fits",
            }))?;
        let skymap = SkyMap::new(config.skymap).map_err(ConfigError::SkyMap)?;
        Ok(Self {
            config,
            registry,
            reference,
            skymap,
            refcat: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MosaicConfig {
        &self.config
    }

    fn refcat(&self) -> Result<Arc<ReferenceCatalog>, MosaicError> {
        self.refcat
            .get_or_init(|| {
                ReferenceCatalog::read(&self.reference)
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .clone()
            .map_err(MosaicError::Reference)
    }

    fn solve_params(&self) -> SolveParams {
        SolveParams {
            order: self.config.order,
            clip: self.config.clip,
            iterations: self.config.iterations,
            min_stars_per_ccd: self.config.min_stars_per_ccd,
        }
    }
}

impl Mosaic {
    /// `unit` with its CCDs planned from raw regions replaced by their registry rows: kept
    /// when processed, not rejected and overlapping the tract, with the row's PSF FWHM and
    /// paths.
    fn with_registered_ccds(&self, unit: &MosaicUnit) -> Result<MosaicUnit, UnitFailure> {
        if unit.ccds.iter().all(|c| c.registered.is_none()) {
            return Ok(unit.clone());
        }
        let reg = Registry::open_read_only(&self.registry).map_err(UnitFailure::transient)?;
        let mut ccds = Vec::with_capacity(unit.ccds.len());
        for c in &unit.ccds {
            if c.registered.is_none() {
                ccds.push(c.clone());
                continue;
            }
            let Some(r) = reg.get(c.visit, c.ccd).map_err(UnitFailure::transient)? else {
                continue;
            };
            let region = r.region().map_err(|e| {
                UnitFailure::bad_input(format!(
                    "{}: visit {} ccd {}: {e}",
                    self.registry.display(),
                    r.visit,
                    r.ccd
                ))
            })?;
            if r.status == CcdStatus::Rejected
                || !self
                    .skymap
                    .tracts_overlapping(&region)
                    .iter()
                    .any(|t| t.id == unit.tract)
            {
                continue;
            }
            ccds.push(TractCcd {
                visit: r.visit,
                ccd: r.ccd,
                psf_fwhm: r.psf_fwhm,
                calexp: r.calexp_path.clone(),
                catalog: r.catalog_path.clone(),
                registered: c.registered.clone(),
            });
        }
        Ok(MosaicUnit {
            tract: unit.tract,
            ccds,
        })
    }
}

impl Stage for Mosaic {
    type Unit = MosaicUnit;

    fn name(&self) -> &'static str {
        "mosaic"
    }

    /// Everything but `registry`, `threads`, `large_tract_ccds` and `ranks_per_large_tract`
    /// (they change how a tract is computed, not what).
    fn config_fingerprint(&self) -> String {
        let c = &self.config;
        fingerprint_of(&(
            &c.reference,
            &c.skymap,
            &c.tracts,
            c.match_radius_arcsec,
            c.max_offset_arcsec,
            c.reference_error_mas,
            c.order,
            c.clip,
            c.iterations,
            c.min_stars_per_ccd,
            &c.bright,
        ))
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<MosaicUnit>>, PlanError> {
        let reg =
            Registry::open_read_only(&self.registry).map_err(|e| PlanError::from_error(&e))?;
        let records = reg.all().map_err(|e| PlanError::from_error(&e))?;
        let mut tracts: BTreeMap<u32, Vec<TractCcd>> = BTreeMap::new();
        for r in records {
            if r.status == CcdStatus::Rejected {
                continue;
            }
            let region = r.region().map_err(|e| {
                PlanError(format!(
                    "{}: visit {} ccd {}: {e}",
                    self.registry.display(),
                    r.visit,
                    r.ccd
                ))
            })?;
            for t in self.skymap.tracts_overlapping(&region) {
                tracts.entry(t.id).or_default().push(TractCcd {
                    visit: r.visit,
                    ccd: r.ccd,
                    psf_fwhm: r.psf_fwhm,
                    calexp: r.calexp_path.clone(),
                    catalog: r.catalog_path.clone(),
                    registered: None,
                });
            }
        }
        // CCDs only ingested (a chain run plans before single-frame processing): their raw
        // header regions grown by the margin; products where single-frame processing puts them.
        let margin = self.config.plan_margin_arcsec / 3600.0;
        for raw in reg.raw_ccds().map_err(|e| PlanError::from_error(&e))? {
            if reg
                .get(raw.visit, raw.ccd)
                .map_err(|e| PlanError::from_error(&e))?
                .is_some()
            {
                continue;
            }
            let region = raw
                .validate()
                .and_then(|r| skypipe_registry::grow(&r, margin).map_err(Into::into))
                .map_err(|e| {
                    PlanError(format!(
                        "{}: raw visit {} ccd {}: bad region: {e}",
                        self.registry.display(),
                        raw.visit,
                        raw.ccd
                    ))
                })?;
            let (calexp, catalog) = output_paths(raw.visit, raw.ccd);
            for t in self.skymap.tracts_overlapping(&region) {
                tracts.entry(t.id).or_default().push(TractCcd {
                    visit: raw.visit,
                    ccd: raw.ccd,
                    psf_fwhm: f64::NAN,
                    calexp: calexp.clone(),
                    catalog: catalog.clone(),
                    registered: Some(registered_path(raw.visit)),
                });
            }
        }
        if let Some(only) = &self.config.tracts {
            tracts.retain(|t, _| only.contains(t));
        }
        Ok(tracts
            .into_iter()
            .map(|(tract, mut ccds)| {
                ccds.sort_by_key(|c| (c.visit, c.ccd));
                let n = ccds.len();
                let planned = PlannedUnit::new(MosaicUnit { tract, ccds }).cost(n as f64);
                if n >= self.config.large_tract_ccds {
                    planned.on_up_to_ranks(self.config.ranks_per_large_tract)
                } else {
                    planned
                }
            })
            .collect())
    }

    /// A tract unit reads the catalogue and calibrated exposure of each of its CCDs (products
    /// of `singleframe`) and the reference catalogue, and writes `mosaic/tract-TTTT.fits`.
    fn connections(&self, unit: &MosaicUnit, run_dir: &Path) -> Connections {
        let mut c = Connections::new().prerequisite(DATASET_REFERENCE, &self.reference);
        let mut markers = std::collections::BTreeSet::new();
        for ccd in &unit.ccds {
            c = c
                .input(DATASET_SOURCES, run_dir.join(&ccd.catalog))
                .input(DATASET_CALEXP, run_dir.join(&ccd.calexp));
            if let Some(marker) = &ccd.registered {
                markers.insert(run_dir.join(marker));
            }
        }
        for marker in markers {
            c = c.input(DATASET_REGISTERED, marker);
        }
        c.output(
            DATASET_MOSAIC_WCS,
            run_dir.join(tract_output_path(unit.tract)),
        )
    }

    /// On several ranks (a large tract), each reads a block of the CCDs and later fits their
    /// corrected WCS; the unit's rank 0 resolves the CCD list, solves and writes every output
    /// ([`crate::ranks`]). The outputs are the same bits on any number of ranks.
    fn run(&self, unit: &MosaicUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let tract = self.skymap.tract(unit.tract).ok_or_else(|| {
            UnitFailure::bad_input(format!("tract {} is not in the sky map", unit.tract))
        })?;
        let coll = ctx.collectives();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads)
            .build()
            .map_err(UnitFailure::transient);
        let unit = &ranks::from_rank_zero(coll, || self.with_registered_ccds(unit))?;
        if unit.ccds.is_empty() {
            return Ok(Outcome::NoWork {
                reason: format!("no processed CCD overlaps tract {}", unit.tract),
            });
        }
        // Every rank reads its block of CCDs and keeps their WCS; the selected sources of every
        // CCD reach every rank, in CCD order.
        let mine = ranks::block(unit.ccds.len(), coll.size(), coll.rank());
        let run_dir = ctx.run_dir.as_path();
        let mut phases = PhaseTimes::start();
        let read = pool.as_ref().map_err(Clone::clone).and_then(|pool| {
            pool.install(|| self.read_ccds(&unit.ccds[mine.clone()], &tract, run_dir))
        });
        let (wcs, sources): (Vec<Wcs>, Result<Vec<CcdSources>, UnitFailure>) = match read {
            Ok(data) => {
                let (wcs, sources) = data.into_iter().map(|d| (d.wcs, d.sources)).unzip();
                (wcs, Ok(sources))
            }
            Err(e) => (Vec::new(), Err(e)),
        };
        let sources = ranks::gather_blocks(coll, sources)?;
        phases.read_s = phases.lap();
        // Every rank's pool was built, or the exchange above failed on every rank.
        let pool = pool?;
        let solution = ranks::from_rank_zero(coll, || {
            pool.install(|| self.solve_sources(unit.tract, &tract, &sources))
                .map_err(failure_of)
        })?;
        phases.solve_s = phases.lap();
        let fitted = pool.install(|| {
            self.fit_ccds(wcs, &sources[mine.clone()], &solution.ccds[mine])
                .map_err(failure_of)
        });
        let ccds = ranks::gather_blocks(coll, fitted)?;
        phases.fit_s = phases.lap();
        if coll.rank() != 0 {
            return Ok(Outcome::Done);
        }
        let solved = TractResult {
            ccds,
            summary: solution.summary,
        };
        self.write_outputs(unit, &solved, ctx)?;
        phases.write_s = phases.lap();
        log_tract(unit.tract, &solved);
        tracing::debug!(
            "mosaic[tract={}]: {} CCDs on {} ranks: read {:.3} s, solve {:.3} s, fit {:.3} s, \
             write {:.3} s",
            unit.tract,
            unit.ccds.len(),
            coll.size(),
            phases.read_s,
            phases.solve_s,
            phases.fit_s,
            phases.write_s
        );
        Ok(Outcome::Done)
    }
}

/// Wall-clock seconds of a tract unit's phases on its rank 0 (each up to the end of the
/// exchange that follows it), logged at debug level: which part a large tract's ranks share.
struct PhaseTimes {
    last: std::time::Instant,
    read_s: f64,
    solve_s: f64,
    fit_s: f64,
    write_s: f64,
}

impl PhaseTimes {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            read_s: 0.0,
            solve_s: 0.0,
            fit_s: 0.0,
            write_s: 0.0,
        }
    }

    /// Seconds since the previous lap (or the start).
    fn lap(&mut self) -> f64 {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        elapsed
    }
}

/// A unit's failure from a tract error: transient for a failed write, else bad input.
fn failure_of(e: MosaicError) -> UnitFailure {
    match e {
        MosaicError::Fits(FitsError::Write { .. } | FitsError::Io(_)) => UnitFailure::transient(e),
        _ => UnitFailure::bad_input(e),
    }
}

impl Mosaic {
    /// Writes `mosaic/tract-TTTT.fits` (with its provenance), then the registry's sky map and
    /// `mosaic_wcs` rows.
    fn write_outputs(
        &self,
        unit: &MosaicUnit,
        solved: &TractResult,
        ctx: &UnitContext,
    ) -> Result<(), UnitFailure> {
        let tract = unit.tract;
        let path = ctx.run_dir.join(tract_output_path(tract));
        // The CCDs this unit read (in a chain run, those its registered visits brought in).
        let provenance = Provenance::of_unit(self, unit, &ctx.run_dir);
        let out = TractFile {
            path: &path,
            provenance: &provenance,
            durable: ctx.durable,
        };
        write_tract(&out, tract, solved, self.config.order).map_err(UnitFailure::transient)?;
        let rows: Vec<MosaicWcs> = solved
            .ccds
            .iter()
            .filter_map(|c| {
                c.corrected.as_ref().map(|w| MosaicWcs {
                    visit: c.visit,
                    ccd: c.ccd,
                    tract,
                    wcs: w.keyrecords().concat(),
                })
            })
            .collect();
        let mut reg = Registry::open(&self.registry).map_err(UnitFailure::transient)?;
        reg.set_skymap(&self.skymap).map_err(|e| match e {
            RegistryError::SkyMapConflict { .. } => UnitFailure::bad_input(e),
            _ => UnitFailure::transient(e),
        })?;
        reg.record_mosaic_wcs(&rows).map_err(UnitFailure::transient)
    }
}

/// A CCD's inputs as the rank reading it keeps them: its WCS (WCSLIB's, which stays on that
/// rank) and what every rank of the unit receives.
struct CcdData {
    wcs: Wcs,
    sources: CcdSources,
}

/// A CCD's size and selected sources, sent to every rank of the unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CcdSources {
    visit: u64,
    ccd: u32,
    width: f64,
    height: f64,
    sip_order: usize,
    detections: Vec<Detection>,
}

/// A selected source.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Detection {
    pixel: [f64; 2],
    position: [f64; 2],
    jacobian: [[f64; 2]; 2],
    sigma: f64,
}

/// What the unit made of one CCD.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CcdResult {
    visit: u64,
    ccd: u32,
    /// The corrected WCS, when solved.
    corrected: Option<TanSip>,
    /// The WCS kept when unsolved (WCSLIB's keyrecords of the current WCS), else empty.
    kept: String,
    /// Why unsolved; empty when solved.
    note: String,
    residuals: CcdResiduals,
    /// Largest difference between the fitted corrected WCS and the correction it represents,
    /// pixels.
    representation_px: f64,
}

/// What the unit made of its tract.
struct TractResult {
    ccds: Vec<CcdResult>,
    summary: TractSummary,
}

/// The joint solution's statistics of a tract.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TractSummary {
    stats: ResidualStats,
    n_stars: usize,
    n_reference_stars: usize,
    solution_chi2: f64,
    solution_dof: f64,
    iterations: usize,
}

/// The joint solution of a tract, as the unit's rank 0 finds it and sends to every rank.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TractSolution {
    /// Per CCD, in the unit's order.
    ccds: Vec<CcdSolution>,
    summary: TractSummary,
}

/// One CCD's part of the joint solution: what fitting its corrected WCS needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CcdSolution {
    outcome: CcdOutcome,
    residuals: CcdResiduals,
    /// The offset from the reference removed before the solve, pixels.
    shift: [f64; 2],
    frame: CcdFrame,
}

/// Centroid error floor, pixels (added in quadrature to [`centroid_sigma_px`]'s noise term).
const CENTROID_FLOOR_PX: f64 = 0.005;
/// Point sources: second-moment trace within this fraction of the CCD's median.
const PSF_SIZE_TOLERANCE: f64 = 0.3;
/// Flags that do not disqualify a source (informational).
const HARMLESS_FLAGS: u32 = flags::PSF_STAR;
/// Fewest source–reference pairs for a CCD's offset vote.
const MIN_OFFSET_PAIRS: usize = 5;
/// Side of the grid on which a corrected WCS is fitted.
const WCS_GRID: usize = 16;

/// 1σ centroid error per coordinate of a point source, pixels: `√2 σ_PSF / (S/N)` (a Gaussian
/// PSF on a background-limited image, `σ_PSF = FWHM / 2.355`) and a floor in quadrature.
pub fn centroid_sigma_px(psf_fwhm: f64, snr: f64) -> f64 {
    (std::f64::consts::SQRT_2 * psf_fwhm / (2.354_820_045 * snr)).hypot(CENTROID_FLOOR_PX)
}

fn arcsec_of(centre: [f64; 2], sky: [f64; 2]) -> Option<[f64; 2]> {
    tansip::project(centre, sky).map(|p| [p[0] * 3600.0, p[1] * 3600.0])
}

fn catalogue_error(path: &Path, message: impl Into<String>) -> MosaicError {
    MosaicError::Catalogue {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Mosaic {
    /// Reads one CCD: the current WCS and size from the calexp, the selected sources from the
    /// catalogue with their tangent-plane positions about `centre`.
    fn read_ccd(
        &self,
        c: &TractCcd,
        centre: [f64; 2],
        run_dir: &Path,
    ) -> Result<CcdData, MosaicError> {
        let calexp = run_dir.join(&c.calexp);
        let catalog = run_dir.join(&c.catalog);
        let mut r = FitsReader::open(&calexp)?;
        let image = Hdu::Name("IMAGE");
        let width = r.key_i64(image, "NAXIS1")? as f64;
        let height = r.key_i64(image, "NAXIS2")? as f64;
        let sip_order = r.key_f64_opt(image, "A_ORDER")?.map_or(1, |v| v as usize);
        drop(r);
        let wcs = skypipe_optical::wcs::read_hdu_wcs(&calexp, "IMAGE")?;
        let mut r = FitsReader::open(&catalog)?;
        let t = Hdu::Name("SOURCES");
        let x = r.column_f64(t, "X")?;
        let y = r.column_f64(t, "Y")?;
        let flux = r.column_f64(t, "FLUX_PSF")?;
        let flux_err = r.column_f64(t, "FLUX_PSF_ERR")?;
        let flag = r.column_i64(t, "FLAGS")?;
        let ixx = r.column_f64(t, "IXX")?;
        let iyy = r.column_f64(t, "IYY")?;
        let mag = match self.config.bright {
            Bright::Mag(_) => Some(r.column_f64(t, "MAG")?),
            Bright::Snr(_) => None,
        };
        let n = x.len();
        if [
            y.len(),
            flux.len(),
            flux_err.len(),
            flag.len(),
            ixx.len(),
            iyy.len(),
        ]
        .iter()
        .any(|&l| l != n)
        {
            return Err(catalogue_error(&catalog, "columns of different lengths"));
        }
        let bright: Vec<usize> = (0..n)
            .filter(|&i| {
                let clean = (flag[i] as u32) & !HARMLESS_FLAGS == 0 && flag[i] >= 0;
                let ok = x[i].is_finite() && y[i].is_finite() && flux[i] > 0.0 && flux_err[i] > 0.0;
                let passes = match (self.config.bright, &mag) {
                    (Bright::Snr(s), _) => flux[i] / flux_err[i] >= s,
                    (Bright::Mag(m), Some(mag)) => mag[i] <= m,
                    (Bright::Mag(_), None) => false,
                };
                clean && ok && passes
            })
            .collect();
        let traces: Vec<f64> = bright.iter().map(|&i| ixx[i] + iyy[i]).collect();
        let typical = skypipe_astrometry::linalg::median(&traces);
        let kept: Vec<usize> = bright
            .into_iter()
            .zip(&traces)
            .filter(|(_, tr)| ((*tr / typical) - 1.0).abs() <= PSF_SIZE_TOLERANCE)
            .map(|(i, _)| i)
            .collect();
        // Each source and its four neighbours half a pixel away (central differences).
        let h = 0.5;
        let mut pixels = Vec::with_capacity(kept.len() * 5);
        for &i in &kept {
            let p = [x[i], y[i]];
            pixels.extend([
                p,
                [p[0] + h, p[1]],
                [p[0] - h, p[1]],
                [p[0], p[1] + h],
                [p[0], p[1] - h],
            ]);
        }
        let sky = wcs.pixel_to_sky(&pixels)?;
        let mut detections = Vec::with_capacity(kept.len());
        for (k, &i) in kept.iter().enumerate() {
            let plane: Option<Vec<[f64; 2]>> = sky[5 * k..5 * k + 5]
                .iter()
                .map(|s| s.and_then(|s| arcsec_of(centre, s)))
                .collect();
            let Some(q) = plane else { continue };
            let jacobian = [
                [
                    (q[1][0] - q[2][0]) / (2.0 * h),
                    (q[3][0] - q[4][0]) / (2.0 * h),
                ],
                [
                    (q[1][1] - q[2][1]) / (2.0 * h),
                    (q[3][1] - q[4][1]) / (2.0 * h),
                ],
            ];
            let scale = (jacobian[0][0] * jacobian[1][1] - jacobian[0][1] * jacobian[1][0])
                .abs()
                .sqrt();
            let snr = flux[i] / flux_err[i];
            let sigma_px = centroid_sigma_px(c.psf_fwhm, snr);
            detections.push(Detection {
                pixel: [x[i], y[i]],
                position: q[0],
                jacobian,
                sigma: sigma_px * scale,
            });
        }
        Ok(CcdData {
            wcs,
            sources: CcdSources {
                visit: c.visit,
                ccd: c.ccd,
                width,
                height,
                sip_order,
                detections,
            },
        })
    }

    /// Reads `ccds` (in parallel on the current pool), in their order.
    fn read_ccds(
        &self,
        ccds: &[TractCcd],
        tract: &Tract,
        run_dir: &Path,
    ) -> Result<Vec<CcdData>, UnitFailure> {
        let centre = [tract.centre.ra(), tract.centre.dec()];
        ccds.par_iter()
            .map(|c| self.read_ccd(c, centre, run_dir))
            .collect::<Result<_, _>>()
            .map_err(failure_of)
    }

    /// The joint solution of tract `tract_id` from every CCD's selected sources: offsets from
    /// the reference catalogue, stars matched across CCDs and to the reference, the solve and
    /// its residual statistics.
    fn solve_sources(
        &self,
        tract_id: u32,
        tract: &Tract,
        sources: &[CcdSources],
    ) -> Result<TractSolution, MosaicError> {
        let refcat = self.refcat()?;
        let centre = [tract.centre.ra(), tract.centre.dec()];
        let mut data = sources.to_vec();
        // Reference stars over the CCDs' detections plus the search margin.
        let margin = self.config.max_offset_arcsec + self.config.match_radius_arcsec;
        let mut lo = [f64::INFINITY; 2];
        let mut hi = [f64::NEG_INFINITY; 2];
        for d in data.iter().flat_map(|c| &c.detections) {
            for k in 0..2 {
                lo[k] = lo[k].min(d.position[k] - margin);
                hi[k] = hi[k].max(d.position[k] + margin);
            }
        }
        let references: Vec<[f64; 2]> = refcat
            .ra
            .par_iter()
            .zip(&refcat.dec)
            .filter_map(|(ra, dec)| arcsec_of(centre, [*ra, *dec]))
            .filter(|p| (0..2).all(|k| p[k] >= lo[k] && p[k] <= hi[k]))
            .collect();
        // Each CCD's offset from the reference, as a pixel shift through its mean Jacobian.
        let shifts: Vec<[f64; 2]> = data
            .par_iter_mut()
            .map(|c| {
                let positions: Vec<[f64; 2]> = c.detections.iter().map(|d| d.position).collect();
                let vote = offset_by_voting(
                    &positions,
                    &references,
                    self.config.max_offset_arcsec,
                    self.config.match_radius_arcsec,
                    MIN_OFFSET_PAIRS,
                );
                let Some((offset, _)) = vote else {
                    tracing::warn!(
                        "mosaic[tract={}]: visit {} ccd {}: no offset from the reference found \
                         (fewer than {MIN_OFFSET_PAIRS} pairs within {} arcsec); none applied",
                        tract_id,
                        c.visit,
                        c.ccd,
                        self.config.max_offset_arcsec
                    );
                    return [0.0; 2];
                };
                let n = c.detections.len() as f64;
                let mut j = [[0.0; 2]; 2];
                for d in &c.detections {
                    for (r, row) in j.iter_mut().enumerate() {
                        row[0] += d.jacobian[r][0] / n;
                        row[1] += d.jacobian[r][1] / n;
                    }
                }
                let det = j[0][0] * j[1][1] - j[0][1] * j[1][0];
                let shift = [
                    (j[1][1] * offset[0] - j[0][1] * offset[1]) / det,
                    (-j[1][0] * offset[0] + j[0][0] * offset[1]) / det,
                ];
                for d in &mut c.detections {
                    for r in 0..2 {
                        d.position[r] += d.jacobian[r][0] * shift[0] + d.jacobian[r][1] * shift[1];
                    }
                }
                shift
            })
            .collect();
        // Stars: detections grouped across CCDs, groups matched to the reference.
        let mut points = Vec::new();
        let mut owner = Vec::new();
        for (c, d) in data.iter().enumerate() {
            for (k, det) in d.detections.iter().enumerate() {
                points.push(det.position);
                owner.push((c, k));
            }
        }
        let ccd_of: Vec<usize> = owner.iter().map(|o| o.0).collect();
        let groups = group_detections(&points, &ccd_of, self.config.match_radius_arcsec);
        let centres: Vec<[f64; 2]> = groups
            .iter()
            .map(|g| {
                let n = g.len() as f64;
                [
                    g.iter().map(|&i| points[i][0]).sum::<f64>() / n,
                    g.iter().map(|&i| points[i][1]).sum::<f64>() / n,
                ]
            })
            .collect();
        let matched = match_to_reference(&centres, &references, self.config.match_radius_arcsec);
        let ref_sigma = self.config.reference_error_mas / 1000.0;
        let mut problem = JointProblem {
            ccds: data
                .iter()
                .map(|d| CcdFrame::of_size(d.width, d.height))
                .collect(),
            n_stars: 0,
            observations: Vec::new(),
            references: Vec::new(),
        };
        for (g, m) in groups.iter().zip(&matched) {
            if g.len() < 2 && m.is_none() {
                continue;
            }
            let star = problem.n_stars;
            problem.n_stars += 1;
            for &i in g {
                let (c, k) = owner[i];
                let d = &data[c].detections[k];
                problem.observations.push(Observation {
                    ccd: c,
                    star,
                    pixel: d.pixel,
                    position: d.position,
                    jacobian: d.jacobian,
                    sigma: d.sigma,
                });
            }
            if let Some(j) = m {
                problem.references.push(ReferencePosition {
                    star,
                    position: references[*j],
                    sigma: ref_sigma,
                });
            }
        }
        let solution =
            solve_joint(&problem, &self.solve_params()).map_err(|source| MosaicError::Solve {
                tract: tract_id,
                source,
            })?;
        // "Before" means the WCS as single-frame left it: without the offsets removed above.
        let (stats, per_ccd) = before_without_shift(&problem, &solution, &shifts);
        let ccds = solution
            .ccds
            .into_iter()
            .zip(per_ccd)
            .zip(shifts)
            .zip(&problem.ccds)
            .map(|(((outcome, residuals), shift), frame)| CcdSolution {
                outcome,
                residuals,
                shift,
                frame: *frame,
            })
            .collect();
        Ok(TractSolution {
            ccds,
            summary: TractSummary {
                stats,
                n_stars: problem.n_stars,
                n_reference_stars: problem.references.len(),
                solution_chi2: solution.chi2,
                solution_dof: solution.dof,
                iterations: solution.iterations,
            },
        })
    }

    /// The corrected WCS of each CCD of a block (`wcs`, `sources` and `solved` side by side,
    /// in parallel on the current pool), in order.
    fn fit_ccds(
        &self,
        wcs: Vec<Wcs>,
        sources: &[CcdSources],
        solved: &[CcdSolution],
    ) -> Result<Vec<CcdResult>, MosaicError> {
        wcs.into_par_iter()
            .zip(sources)
            .zip(solved)
            .map(|((wcs, d), solved)| self.ccd_result(&wcs, d, solved))
            .collect()
    }

    fn ccd_result(
        &self,
        wcs: &Wcs,
        d: &CcdSources,
        solved: &CcdSolution,
    ) -> Result<CcdResult, MosaicError> {
        let residuals = solved.residuals;
        let keep = |note: String| -> Result<CcdResult, MosaicError> {
            Ok(CcdResult {
                visit: d.visit,
                ccd: d.ccd,
                corrected: None,
                kept: wcs.to_records()?.concat(),
                note,
                residuals,
                representation_px: 0.0,
            })
        };
        let correction = match &solved.outcome {
            CcdOutcome::Solved(c) => c.clone().shifted(solved.shift),
            CcdOutcome::Unsolved(why) => return keep(why.clone()),
        };
        match corrected_wcs(
            wcs,
            &correction,
            solved.frame,
            d.width,
            d.height,
            self.config.order.max(d.sip_order),
        )? {
            Some((corrected, representation_px)) => Ok(CcdResult {
                visit: d.visit,
                ccd: d.ccd,
                corrected: Some(corrected),
                kept: String::new(),
                note: String::new(),
                residuals,
                representation_px,
            }),
            None => keep("the corrected WCS could not be fitted as TAN-SIP".into()),
        }
    }
}

/// Residual statistics "before" are those of the WCS single-frame left, i.e. without the
/// offsets removed by voting (the solver saw the shifted positions).
fn before_without_shift(
    problem: &JointProblem,
    solution: &JointSolution,
    shifts: &[[f64; 2]],
) -> (ResidualStats, Vec<CcdResiduals>) {
    let (after, after_ccd) = residual_stats(problem, solution);
    let mut unshifted = problem.clone();
    for o in &mut unshifted.observations {
        let s = shifts[o.ccd];
        for r in 0..2 {
            o.position[r] -= o.jacobian[r][0] * s[0] + o.jacobian[r][1] * s[1];
        }
    }
    let (before, before_ccd) = residual_stats(&unshifted, solution);
    let stats = ResidualStats {
        internal_before_arcsec: before.internal_before_arcsec,
        internal_before_px: before.internal_before_px,
        reference_before_arcsec: before.reference_before_arcsec,
        reference_before_px: before.reference_before_px,
        ..after
    };
    let ccds = after_ccd
        .into_iter()
        .zip(before_ccd)
        .map(|(a, b)| CcdResiduals {
            before_px: b.before_px,
            ..a
        })
        .collect();
    (stats, ccds)
}

/// The corrected WCS of a CCD — `wcs` evaluated at `pixel + δ(pixel)` — fitted as TAN-SIP of
/// `order` (1: pure TAN) on a grid over the CCD, with CRPIX at the CCD's centre; returns it with
/// the largest difference from the correction it represents over the grid, pixels. `None` when
/// the fit fails.
pub fn corrected_wcs(
    wcs: &Wcs,
    correction: &Correction,
    frame: CcdFrame,
    width: f64,
    height: f64,
    order: usize,
) -> Result<Option<(TanSip, f64)>, WcsError> {
    let n = WCS_GRID;
    let mut pixels = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            pixels.push([
                0.5 + width * i as f64 / (n - 1) as f64,
                0.5 + height * j as f64 / (n - 1) as f64,
            ]);
        }
    }
    let moved: Vec<[f64; 2]> = pixels.iter().map(|p| correction.apply(*p)).collect();
    let sky: Option<Vec<[f64; 2]>> = wcs.pixel_to_sky(&moved)?.into_iter().collect();
    let Some(sky) = sky else {
        return Ok(None);
    };
    let centre_sky = wcs.pixel_to_sky(&[correction.apply(frame.centre)])?[0];
    let Some(crval) = centre_sky else {
        return Ok(None);
    };
    let params = FitParams {
        order,
        clip: f64::INFINITY,
        max_iterations: 1,
    };
    let bounds = [[0.5, width + 0.5], [0.5, height + 0.5]];
    let Some(fit) = tansip::fit_tan_sip(&pixels, &sky, &[], frame.centre, crval, bounds, &params)
    else {
        return Ok(None);
    };
    let scale = (fit.wcs.cd[0][0] * fit.wcs.cd[1][1] - fit.wcs.cd[0][1] * fit.wcs.cd[1][0])
        .abs()
        .sqrt()
        * 3600.0;
    let worst = pixels
        .iter()
        .zip(&sky)
        .map(|(p, s)| {
            let f = fit.wcs.pixel_to_sky(*p);
            match (tansip::project(*s, f), true) {
                (Some(d), _) => 3600.0 * d[0].hypot(d[1]) / scale,
                (None, _) => f64::INFINITY,
            }
        })
        .fold(0.0, f64::max);
    Ok(Some((fit.wcs, worst)))
}

fn log_tract(tract: u32, r: &TractResult) {
    let s = &r.summary.stats;
    let solved = r.ccds.iter().filter(|c| c.corrected.is_some()).count();
    tracing::info!(
        "mosaic[tract={tract}]: {solved}/{} CCDs solved, {} stars ({} reference), χ²/dof = {:.1}/{:.0} \
         after {} solves; internal RMS {:.4}″ → {:.4}″ ({:.4} → {:.4} px, {} detections); \
         against the reference {:.4}″ → {:.4}″ ({:.4} → {:.4} px, {} detections)",
        r.ccds.len(),
        r.summary.n_stars,
        r.summary.n_reference_stars,
        r.summary.solution_chi2,
        r.summary.solution_dof,
        r.summary.iterations,
        s.internal_before_arcsec,
        s.internal_after_arcsec,
        s.internal_before_px,
        s.internal_after_px,
        s.n_internal,
        s.reference_before_arcsec,
        s.reference_after_arcsec,
        s.reference_before_px,
        s.reference_after_px,
        s.n_reference,
    );
    for c in r.ccds.iter().filter(|c| c.corrected.is_none()) {
        tracing::warn!(
            "mosaic[tract={tract}]: visit {} ccd {} keeps its single-frame WCS: {}",
            c.visit,
            c.ccd,
            c.note
        );
    }
}

/// A finite value for a header card (NaN, when a statistic has no detections, becomes −1).
fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { -1.0 }
}

/// Where a tract file goes, where it came from, and whether to sync it.
struct TractFile<'a> {
    path: &'a Path,
    provenance: &'a Provenance,
    durable: bool,
}

/// Writes `mosaic/tract-TTTT.fits`: the solution's statistics and provenance in the primary
/// header, one row per CCD in table `MOSAIC`.
fn write_tract(
    out: &TractFile<'_>,
    tract: u32,
    r: &TractResult,
    order: usize,
) -> Result<(), FitsError> {
    let s = &r.summary.stats;
    let solved = r.ccds.iter().filter(|c| c.corrected.is_some()).count();
    let representation = r
        .ccds
        .iter()
        .map(|c| c.representation_px)
        .fold(0.0, f64::max);
    let primary = vec![
        Card::int("TRACT", i64::from(tract), "tract id"),
        Card::int("NCCD", r.ccds.len() as i64, "CCDs overlapping the tract"),
        Card::int("NSOLVED", solved as i64, "CCDs with a corrected WCS"),
        Card::int(
            "MOSORDER",
            order as i64,
            "polynomial order of the corrections",
        ),
        Card::int("NSTARS", r.summary.n_stars as i64, "stars in the joint fit"),
        Card::int(
            "NREFSTAR",
            r.summary.n_reference_stars as i64,
            "of which matched to the reference",
        ),
        Card::real(
            "CHI2",
            finite(r.summary.solution_chi2),
            "chi-square of the final solve",
        ),
        Card::real("DOF", r.summary.solution_dof, "its degrees of freedom"),
        Card::int(
            "NITER",
            r.summary.iterations as i64,
            "solves (rejection rounds)",
        ),
        Card::int(
            "NINTERN",
            s.n_internal as i64,
            "detections of stars seen twice or more",
        ),
        Card::real(
            "INTBEFA",
            finite(s.internal_before_arcsec),
            "[arcsec] internal RMS before",
        ),
        Card::real(
            "INTAFTA",
            finite(s.internal_after_arcsec),
            "[arcsec] internal RMS after",
        ),
        Card::real(
            "INTBEFP",
            finite(s.internal_before_px),
            "[pix] internal RMS before",
        ),
        Card::real(
            "INTAFTP",
            finite(s.internal_after_px),
            "[pix] internal RMS after",
        ),
        Card::int(
            "NREFDET",
            s.n_reference as i64,
            "detections of reference stars",
        ),
        Card::real(
            "REFBEFA",
            finite(s.reference_before_arcsec),
            "[arcsec] RMS vs reference before",
        ),
        Card::real(
            "REFAFTA",
            finite(s.reference_after_arcsec),
            "[arcsec] RMS vs reference after",
        ),
        Card::real(
            "REFBEFP",
            finite(s.reference_before_px),
            "[pix] RMS vs reference before",
        ),
        Card::real(
            "REFAFTP",
            finite(s.reference_after_px),
            "[pix] RMS vs reference after",
        ),
        Card::real(
            "REPRMAX",
            representation,
            "[pix] max WCS fit error of a correction",
        ),
    ];
    let ccds = &r.ccds;
    let columns = vec![
        Column::i64("VISIT", "", ccds.iter().map(|c| c.visit as i64).collect()),
        Column::i64("CCD", "", ccds.iter().map(|c| i64::from(c.ccd)).collect()),
        Column::i32(
            "SOLVED",
            "",
            ccds.iter()
                .map(|c| i32::from(c.corrected.is_some()))
                .collect(),
        ),
        Column::i64(
            "NMATCH",
            "",
            ccds.iter().map(|c| c.residuals.n as i64).collect(),
        ),
        Column::f64(
            "RMS_BEFORE",
            "pix",
            ccds.iter().map(|c| finite(c.residuals.before_px)).collect(),
        ),
        Column::f64(
            "RMS_AFTER",
            "pix",
            ccds.iter().map(|c| finite(c.residuals.after_px)).collect(),
        ),
        Column::text(
            "NOTE",
            ccds.iter()
                .map(|c| {
                    if c.note.is_empty() {
                        "solved".to_string()
                    } else {
                        c.note.clone()
                    }
                })
                .collect(),
        ),
        Column::text(
            "WCS",
            ccds.iter()
                .map(|c| match &c.corrected {
                    Some(w) => w.keyrecords().concat(),
                    None => c.kept.clone(),
                })
                .collect(),
        ),
    ];
    let mut w = FitsWriter::create(out.path, out.durable, None)?;
    w.primary_keys(&primary)?;
    w.table("MOSAIC", &columns, &[])?;
    out.provenance.write_fits(&mut w)?;
    w.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sip: bool) -> String {
        let t = TanSip {
            crpix: [128.5, 256.5],
            crval: [150.0, 2.0],
            cd: [[-5.5e-5, 1.0e-7], [1.2e-7, 5.5e-5]],
            sip: sip.then(|| tansip::Sip {
                order: 2,
                a: vec![2e-6, -1e-6, 3e-6],
                b: vec![-1e-6, 2e-6, 1e-6],
                inverse_order: 0,
                ap: Vec::new(),
                bp: Vec::new(),
            }),
        };
        t.keyrecords().concat()
    }

    #[test]
    fn corrected_wcs_represents_the_correction_exactly() {
        for sip in [false, true] {
            let wcs = Wcs::from_header("test", &header(sip)).unwrap();
            let frame = CcdFrame::of_size(256.0, 512.0);
            let mut k = Correction::identity(frame, 1);
            k.dx = vec![1.7, 0.02, -0.01];
            k.dy = vec![-0.8, 0.015, 0.03];
            let order = if sip { 2 } else { 1 };
            let (fit, worst) = corrected_wcs(&wcs, &k, frame, 256.0, 512.0, order)
                .unwrap()
                .unwrap();
            assert!(worst < 1e-4, "sip {sip}: {worst} px");
            assert_eq!(fit.sip.is_some(), sip);
            // WCSLIB on the written keyrecords gives the current WCS at the corrected pixel.
            let written = Wcs::from_header("fit", &fit.keyrecords().concat()).unwrap();
            for p in [[1.0, 1.0], [256.0, 512.0], [77.5, 301.0]] {
                let a = written.pixel_to_sky(&[p]).unwrap()[0].unwrap();
                let b = wcs.pixel_to_sky(&[k.apply(p)]).unwrap()[0].unwrap();
                let d = ((a[0] - b[0]) * 2f64.to_radians().cos()).hypot(a[1] - b[1]) * 3.6e6;
                assert!(d < 0.05, "sip {sip}: {p:?} {d} mas");
            }
        }
    }

    #[test]
    fn how_a_tract_is_shared_among_ranks_is_checked_and_not_fingerprinted() {
        let config = MosaicConfig {
            registry: Some("registry.sqlite3".into()),
            reference: Some("reference.fits".into()),
            ..MosaicConfig::default()
        };
        let fingerprint = |c: &MosaicConfig| Mosaic::new(c.clone()).unwrap().config_fingerprint();
        let shared = MosaicConfig {
            large_tract_ccds: 3,
            ranks_per_large_tract: 2,
            ..config.clone()
        };
        assert_eq!(fingerprint(&config), fingerprint(&shared));
        let affine_to_quadratic = MosaicConfig {
            order: 2,
            ..config.clone()
        };
        assert_ne!(fingerprint(&config), fingerprint(&affine_to_quadratic));
        let no_ranks = MosaicConfig {
            ranks_per_large_tract: 0,
            ..config
        };
        let err = Mosaic::new(no_ranks).unwrap_err();
        assert!(
            err.to_string()
                .contains("ranks_per_large_tract must be ≥ 1"),
            "{err}"
        );
    }

    #[test]
    fn output_path_and_centroid_errors() {
        assert_eq!(
            tract_output_path(7),
            PathBuf::from("mosaic/tract-0007.fits")
        );
        // √2 σ_PSF / (S/N): σ_PSF = 1 px at S/N 100 → 0.0141 px, with the floor in quadrature.
        let s = centroid_sigma_px(2.354_820_045, 100.0);
        assert!((s - 0.014_142_136f64.hypot(0.005)).abs() < 1e-8, "{s}");
        assert!(centroid_sigma_px(3.0, 1e6) >= CENTROID_FLOOR_PX);
    }
}
