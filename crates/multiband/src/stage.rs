//! The `multiband` stage: units, planning from the registry's coadd rows, connections, and
//! the six unit kinds.

use crate::config::{ConfigError, MultibandConfig};
use crate::kernels::{self, MeasureAt, Measurement, Peak, flag};
use crate::output::{self, BandColumns, Catalog, Missing, MultibandError};
use serde::{Deserialize, Serialize};
use skypipe_coadd::Coadd;
use skypipe_coadd::output::OutputFile;
use skypipe_coadd::patch::{PatchGrid, PatchKey};
use skypipe_coadd::stage::{
    DATASET_COADD, DATASET_COADD_SOURCES, mask as coadd_mask, paths as coadd_paths,
};
use skypipe_io::fits::Card;
use skypipe_io::provenance::Provenance;
use skypipe_registry::{MultibandRecord, Registry, SkyMap};
use skypipe_stage::{
    Connections, FailureKind, Outcome, OutcomeKind, PlanError, PlannedUnit, Stage, UnitContext,
    UnitFailure, UnitId, WorkUnit, fingerprint_of,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Dataset type of a patch's object catalogue (`multiband/tTTTT/pXXX-YYY.fits`).
pub const DATASET_PATCH_CATALOG: &str = "multiband-patch";
/// Dataset type of a tract's object catalogue (`multiband/tTTTT.fits`).
pub const DATASET_TRACT_CATALOG: &str = "multiband-tract";

/// One band's inputs of a patch, from the registry's coadd row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandInput {
    /// Band.
    pub band: String,
    /// The coadd (`coadd/coadd/…/BAND.fits` of the coadd run).
    pub coadd: PathBuf,
    /// The coadd's detection catalogue (`coadd/src/…/BAND.fits` of the coadd run).
    pub catalog: PathBuf,
}

/// A unit of the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MultibandUnit {
    /// Merge the detections of every band of a patch into objects.
    MergeDetections {
        /// The patch.
        patch: PatchKey,
        /// Its bands.
        inputs: Vec<BandInput>,
    },
    /// Measure the merged objects on one band's coadd.
    Measure {
        /// The patch.
        patch: PatchKey,
        /// The band and its files.
        input: BandInput,
    },
    /// Choose each object's reference band, position and shape.
    MergeMeasurements {
        /// The patch.
        patch: PatchKey,
        /// Its bands.
        bands: Vec<String>,
    },
    /// Forced photometry at the reference positions on one band's coadd.
    Forced {
        /// The patch.
        patch: PatchKey,
        /// The band and its files.
        input: BandInput,
    },
    /// Write the patch's object catalogue.
    PatchCatalog {
        /// The patch.
        patch: PatchKey,
        /// Its bands and their files (the catalogue's provenance).
        inputs: Vec<BandInput>,
    },
    /// Concatenate the patch catalogues of a tract.
    TractCatalog {
        /// Tract id.
        tract: u32,
    },
}

fn patch_id(p: PatchKey) -> UnitId {
    UnitId::new()
        .with("tract", p.tract)
        .with("patch", format!("{},{}", p.x, p.y))
}

impl WorkUnit for MultibandUnit {
    fn id(&self) -> UnitId {
        match self {
            MultibandUnit::MergeDetections { patch, .. } => {
                patch_id(*patch).with("step", "merge-detections")
            }
            MultibandUnit::Measure { patch, input } => patch_id(*patch)
                .with("band", &input.band)
                .with("step", "measure"),
            MultibandUnit::MergeMeasurements { patch, .. } => {
                patch_id(*patch).with("step", "merge-measurements")
            }
            MultibandUnit::Forced { patch, input } => patch_id(*patch)
                .with("band", &input.band)
                .with("step", "forced"),
            MultibandUnit::PatchCatalog { patch, .. } => patch_id(*patch).with("step", "catalog"),
            MultibandUnit::TractCatalog { tract } => {
                UnitId::new().with("tract", tract).with("step", "catalog")
            }
        }
    }
}

/// An object of a patch as merge-detections hands it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedRow {
    /// Object id, unique in the tract ([`object_id`]).
    pub id: i64,
    /// Merged position, 0-based patch pixels.
    pub x: f64,
    /// y.
    pub y: f64,
    /// Other objects within twice the match radius.
    pub blended: bool,
}

/// An object's reference band, position and shape (merge-measurements).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRow {
    /// Object id.
    pub id: i64,
    /// Reference position, 0-based patch pixels.
    pub x: f64,
    /// y.
    pub y: f64,
    /// Reference band (empty when no band was measured).
    pub band: String,
    /// Reference-band second moments, pixels².
    pub ixx: f64,
    /// yy.
    pub iyy: f64,
    /// xy.
    pub ixy: f64,
    /// Other objects within twice the match radius.
    pub blended: bool,
}

/// What a unit hands to the units that run after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MultibandValue {
    /// merge-detections: the patch's objects, the PSF FWHM per band and the zero point.
    Merged {
        /// Objects.
        objects: Vec<MergedRow>,
        /// (band, PSF FWHM in pixels) of each band's coadd catalogue.
        psf_fwhm: Vec<(String, f64)>,
        /// Zero point of the coadds, mag.
        zero_point: f64,
    },
    /// measure: one band's measurements, in the order of the merged objects.
    Measured {
        /// Band.
        band: String,
        /// Measurements (PSF fluxes aperture-corrected).
        rows: Vec<Measurement>,
    },
    /// merge-measurements: the reference rows and what was left out.
    Reference {
        /// One row per object.
        objects: Vec<ReferenceRow>,
        /// (band, PSF FWHM in pixels).
        psf_fwhm: Vec<(String, f64)>,
        /// Zero point, mag.
        zero_point: f64,
        /// (band, reason) of the bands whose measurement failed.
        excluded: Vec<(String, String)>,
    },
    /// forced: one band's forced photometry, in the order of the reference rows.
    Forced {
        /// Band.
        band: String,
        /// Measurements (PSF fluxes aperture-corrected).
        rows: Vec<Measurement>,
    },
    /// catalog: the patch catalogue written.
    Patch {
        /// The catalogue, relative to the run directory.
        path: PathBuf,
        /// (band, reason) of each band missing from it.
        missing: Vec<(String, String)>,
    },
}

/// Output paths, relative to the run directory.
pub mod paths {
    use super::PatchKey;
    use std::path::PathBuf;

    /// `multiband/tTTTT/pXXX-YYY.fits`.
    pub fn patch_catalog(p: PatchKey) -> PathBuf {
        PathBuf::from(format!(
            "multiband/t{:04}/p{:03}-{:03}.fits",
            p.tract, p.x, p.y
        ))
    }

    /// `multiband/tTTTT.fits`.
    pub fn tract_catalog(tract: u32) -> PathBuf {
        PathBuf::from(format!("multiband/t{tract:04}.fits"))
    }
}

/// The tract-unique id of object `k` of a patch: tract (bits 43–62), patch column (33–42),
/// patch row (23–32), `k` (0–22).
pub fn object_id(p: PatchKey, k: usize) -> Option<i64> {
    (p.tract < 1 << 20 && p.x < 1 << 10 && p.y < 1 << 10 && k < 1 << 23).then(|| {
        (i64::from(p.tract) << 43) | (i64::from(p.x) << 33) | (i64::from(p.y) << 23) | k as i64
    })
}

/// The stage.
#[derive(Debug, Clone)]
pub struct Multiband {
    config: MultibandConfig,
    /// The `patches` key parsed (empty: every patch).
    patches: Vec<(u32, u32)>,
    registry: PathBuf,
    skymap: SkyMap,
    upstream: Option<UpstreamCoadd>,
}

/// The coadd stage of the same chain, whose plan (not yet the registry's coadd rows) says
/// which patches and bands will have coadds.
#[derive(Debug, Clone)]
struct UpstreamCoadd {
    stage: Coadd,
    run_dir: PathBuf,
}

fn failure(e: MultibandError) -> UnitFailure {
    match &e {
        MultibandError::Fits(skypipe_io::fits::FitsError::Write { .. })
        | MultibandError::Fits(skypipe_io::fits::FitsError::Io(_)) => UnitFailure::transient(e),
        _ => UnitFailure::bad_input(e),
    }
}

fn values(ctx: &UnitContext) -> Result<Vec<(UnitId, MultibandValue)>, UnitFailure> {
    ctx.input_values()
}

/// Inputs that failed, as (unit, outcome).
fn failed_inputs(ctx: &UnitContext) -> Vec<(UnitId, OutcomeKind)> {
    ctx.inputs()
        .iter()
        .filter(|i| !i.outcome.is_success())
        .map(|i| (i.unit.clone(), i.outcome))
        .collect()
}

/// Whether an input of `band` (`None`: a patch-level input) ended no-work: in a chain, a band
/// of the patch without a coadd, or a patch without any.
fn no_work_input(ctx: &UnitContext, band: Option<&str>) -> bool {
    ctx.inputs()
        .iter()
        .any(|i| i.outcome == OutcomeKind::NoWork && i.unit.get("band") == band)
}

fn dependency_failed(what: String) -> UnitFailure {
    UnitFailure::new(FailureKind::DependencyFailed, what)
}

impl Multiband {
    /// Checks the configuration (naming the key) and builds the stage; the registry defaults to
    /// `RUN_DIR/registry.sqlite3`.
    pub fn new(config: MultibandConfig, run_dir: Option<&Path>) -> Result<Self, ConfigError> {
        config.validate()?;
        let registry = match (&config.registry, run_dir) {
            (Some(r), _) => r.clone(),
            (None, Some(d)) => d.join("registry.sqlite3"),
            (None, None) => return Err(ConfigError::NoRegistry),
        };
        let skymap = SkyMap::new(config.skymap).map_err(ConfigError::SkyMap)?;
        Ok(Self {
            patches: config.patch_filter()?,
            config,
            registry,
            skymap,
            upstream: None,
        })
    }

    /// Plans from `coadd`'s plan instead of the registry's coadd rows, for a chain that runs
    /// that coadd stage in `run_dir` before this one: its coadds need not exist yet, and a
    /// coadd that ends no-work (no CCD left data on the patch) leaves its band out of the
    /// patch. The sky maps must be the same.
    pub fn planning_after(mut self, coadd: Coadd, run_dir: &Path) -> Result<Self, ConfigError> {
        if coadd.config().skymap != self.config.skymap {
            return Err(ConfigError::SkyMapDiffers {
                ours: self.config.skymap,
                coadd: coadd.config().skymap,
            });
        }
        self.upstream = Some(UpstreamCoadd {
            stage: coadd,
            run_dir: std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf()),
        });
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &MultibandConfig {
        &self.config
    }

    /// The patch's pixel grid; bad input when the sky map has no such patch.
    fn grid(&self, p: PatchKey) -> Result<PatchGrid, UnitFailure> {
        let tract = self
            .skymap
            .tract(p.tract)
            .filter(|t| p.x < t.patches_x && p.y < t.patches_y)
            .ok_or_else(|| UnitFailure::bad_input(format!("patch {p:?} is not in the sky map")))?;
        Ok(PatchGrid::new(tract, p.x, p.y))
    }

    /// The bands of every patch with coadds in the registry (in the configured tracts,
    /// patches and bands), with their coadd and catalogue files.
    pub fn planned_patches(&self) -> Result<BTreeMap<PatchKey, Vec<BandInput>>, PlanError> {
        if let Some(up) = &self.upstream {
            return self.planned_after_coadd(up);
        }
        if !self.registry.is_file() {
            return Err(PlanError(format!(
                "{}: no registry (run skypipe-coadd first; or set multiband.registry)",
                self.registry.display()
            )));
        }
        let reg =
            Registry::open_read_only(&self.registry).map_err(|e| PlanError::from_error(&e))?;
        if let Some(stored) = reg.skymap().map_err(|e| PlanError::from_error(&e))?
            && stored.config() != self.skymap.config()
        {
            return Err(PlanError(format!(
                "{}: the registry's sky map {:?} differs from [multiband.skymap] {:?}",
                self.registry.display(),
                stored.config(),
                self.skymap.config()
            )));
        }
        let mut out: BTreeMap<PatchKey, Vec<BandInput>> = BTreeMap::new();
        for rec in reg.all_coadds().map_err(|e| PlanError::from_error(&e))? {
            let p: PatchKey = rec.patch.into();
            if !self.selected(p, &rec.band) {
                continue;
            }
            let coadd = if rec.path.is_absolute() {
                rec.path.clone()
            } else {
                self.registry
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(&rec.path)
            };
            // The coadd run's directory: the coadd path without its run-relative part.
            let relative = coadd_paths::coadd(p, &rec.band);
            let base = coadd
                .to_str()
                .zip(relative.to_str())
                .and_then(|(c, r)| c.strip_suffix(r))
                .ok_or_else(|| {
                    PlanError(format!(
                        "{}: coadd row of patch {p:?} band {}: path {} does not end in {}",
                        self.registry.display(),
                        rec.band,
                        coadd.display(),
                        relative.display()
                    ))
                })?;
            out.entry(p).or_default().push(BandInput {
                band: rec.band.clone(),
                catalog: Path::new(base).join(coadd_paths::catalog(p, &rec.band)),
                coadd,
            });
        }
        Ok(out)
    }

    /// [`Multiband::planned_patches`] from the plan of the chain's coadd stage.
    fn planned_after_coadd(
        &self,
        up: &UpstreamCoadd,
    ) -> Result<BTreeMap<PatchKey, Vec<BandInput>>, PlanError> {
        let mut out: BTreeMap<PatchKey, Vec<BandInput>> = BTreeMap::new();
        for (p, band) in up.stage.planned_coadds()? {
            if self.selected(p, &band) {
                out.entry(p).or_default().push(BandInput {
                    coadd: up.run_dir.join(coadd_paths::coadd(p, &band)),
                    catalog: up.run_dir.join(coadd_paths::catalog(p, &band)),
                    band,
                });
            }
        }
        Ok(out)
    }

    /// Whether the configured tracts, patches and bands include this patch and band.
    fn selected(&self, p: PatchKey, band: &str) -> bool {
        (self.config.tracts.is_empty() || self.config.tracts.contains(&p.tract))
            && (self.patches.is_empty() || self.patches.contains(&(p.x, p.y)))
            && (self.config.bands.is_empty() || self.config.bands.iter().any(|b| b == band))
    }

    fn run_merge_detections(
        &self,
        patch: PatchKey,
        inputs: &[BandInput],
        ctx: &UnitContext,
    ) -> Result<MultibandValue, UnitFailure> {
        self.grid(patch)?;
        let mut peaks = Vec::new();
        let mut psf_fwhm = Vec::new();
        let mut zero_point = None;
        for (b, input) in inputs.iter().enumerate() {
            if ctx.unproduced(&input.catalog) {
                tracing::info!(band = %input.band, "no coadd in this band: merged without it");
                continue;
            }
            let det = output::read_detections(&input.catalog).map_err(failure)?;
            match zero_point {
                None => zero_point = Some(det.zero_point),
                Some(z) if (z - det.zero_point).abs() > 1e-9 => {
                    return Err(UnitFailure::bad_input(format!(
                        "{}: MAGZERO {} differs from the other bands' {z}",
                        input.catalog.display(),
                        det.zero_point
                    )));
                }
                Some(_) => {}
            }
            psf_fwhm.push((input.band.clone(), det.psf_fwhm));
            peaks.extend(det.peaks.iter().map(|&(x, y, significance)| Peak {
                band: b,
                x,
                y,
                significance,
            }));
        }
        let radius = self.config.match_radius_arcsec / self.config.skymap.pixel_scale;
        let merged = kernels::merge_peaks(&peaks, radius);
        let (size, border) = (self.config.skymap.patch_size, self.config.skymap.border);
        let mut objects = Vec::new();
        for o in merged
            .iter()
            .filter(|o| kernels::in_inner_region(o.x, o.y, border, size))
        {
            let id = object_id(patch, objects.len()).ok_or_else(|| {
                UnitFailure::bad_input(format!(
                    "patch {patch:?}: more objects or patches than object ids can number"
                ))
            })?;
            objects.push(MergedRow {
                id,
                x: o.x,
                y: o.y,
                blended: o.blended,
            });
        }
        Ok(MultibandValue::Merged {
            objects,
            psf_fwhm,
            zero_point: zero_point.unwrap_or(f64::NAN),
        })
    }

    fn psf_of(psf_fwhm: &[(String, f64)], band: &str) -> Result<f64, UnitFailure> {
        psf_fwhm
            .iter()
            .find(|(b, _)| b == band)
            .map(|(_, f)| *f)
            .ok_or_else(|| UnitFailure::bad_input(format!("no PSF size for band {band}")))
    }

    /// Measures at `positions` on a band's coadd and applies the aperture correction.
    fn measure_coadd(
        &self,
        patch: PatchKey,
        coadd: &Path,
        positions: impl Iterator<Item = (f64, f64)>,
        settings: &MeasureAt,
    ) -> Result<Vec<Measurement>, UnitFailure> {
        let grid = self.grid(patch)?;
        let planes = skypipe_coadd::output::read_planes(coadd, grid.shape())
            .map_err(|e| failure(e.into()))?;
        let prepared = kernels::prepare(
            &planes.image,
            &planes.variance,
            &planes.mask,
            grid.shape(),
            coadd_mask::NO_DATA,
            self.config.background_cell,
        );
        drop(planes);
        let mut rows: Vec<Measurement> = positions
            .map(|(x, y)| kernels::measure_at(&prepared, x, y, settings))
            .collect();
        let correction = kernels::aperture_correction(
            &rows,
            self.config.aperture_correction_min_snr,
            2.0 * self.aperture_radius(),
        );
        tracing::debug!(
            "{}: aperture correction {:.4} from {} stars",
            coadd.display(),
            correction.factor,
            correction.stars
        );
        for m in &mut rows {
            m.flux_psf *= correction.factor;
            m.flux_psf_err *= correction.factor;
        }
        Ok(rows)
    }

    fn aperture_radius(&self) -> f64 {
        self.config.aperture_radius_arcsec / self.config.skymap.pixel_scale
    }

    fn run_measure(
        &self,
        patch: PatchKey,
        input: &BandInput,
        ctx: &UnitContext,
    ) -> Result<MultibandValue, UnitFailure> {
        let Some((
            _,
            MultibandValue::Merged {
                objects, psf_fwhm, ..
            },
        )) = values(ctx)?.into_iter().next()
        else {
            return Err(dependency_failed("merge-detections left no objects".into()));
        };
        let settings = MeasureAt {
            fwhm: Self::psf_of(&psf_fwhm, &input.band)?,
            aperture_radius: self.aperture_radius(),
            recentre: true,
        };
        let mut rows = self.measure_coadd(
            patch,
            &input.coadd,
            objects.iter().map(|o| (o.x, o.y)),
            &settings,
        )?;
        for (m, o) in rows.iter_mut().zip(&objects) {
            if o.blended {
                m.flags |= flag::BLENDED;
            }
        }
        Ok(MultibandValue::Measured {
            band: input.band.clone(),
            rows,
        })
    }

    fn run_merge_measurements(
        &self,
        bands: &[String],
        ctx: &UnitContext,
    ) -> Result<Option<MultibandValue>, UnitFailure> {
        let mut merged = None;
        let mut measured: BTreeMap<String, Vec<Measurement>> = BTreeMap::new();
        for (_, v) in values(ctx)? {
            match v {
                MultibandValue::Merged {
                    objects,
                    psf_fwhm,
                    zero_point,
                } => merged = Some((objects, psf_fwhm, zero_point)),
                MultibandValue::Measured { band, rows } => {
                    measured.insert(band, rows);
                }
                _ => {}
            }
        }
        let Some((objects, psf_fwhm, zero_point)) = merged else {
            if no_work_input(ctx, None) {
                return Ok(None);
            }
            return Err(dependency_failed(
                "merge-detections of the patch failed".into(),
            ));
        };
        let excluded: Vec<(String, String)> = failed_inputs(ctx)
            .into_iter()
            .filter_map(|(unit, outcome)| {
                unit.get("band")
                    .map(|b| (b.to_string(), format!("{unit}: {}", outcome.as_str())))
            })
            .collect();
        let mut rows = Vec::with_capacity(objects.len());
        for (k, o) in objects.iter().enumerate() {
            let per_band: Vec<Option<&Measurement>> = bands
                .iter()
                .map(|b| measured.get(b).and_then(|r| r.get(k)))
                .collect();
            let snr: Vec<Option<f64>> = per_band.iter().map(|m| m.map(|m| m.snr())).collect();
            let reference = kernels::reference_band(
                bands,
                &snr,
                &self.config.reference_priority,
                self.config.reference_min_snr,
            );
            let row = match reference.and_then(|b| per_band[b].map(|m| (b, m))) {
                Some((b, m)) => ReferenceRow {
                    id: o.id,
                    x: m.x,
                    y: m.y,
                    band: bands[b].clone(),
                    ixx: m.ixx,
                    iyy: m.iyy,
                    ixy: m.ixy,
                    blended: o.blended,
                },
                None => ReferenceRow {
                    id: o.id,
                    x: o.x,
                    y: o.y,
                    band: String::new(),
                    ixx: f64::NAN,
                    iyy: f64::NAN,
                    ixy: f64::NAN,
                    blended: o.blended,
                },
            };
            rows.push(row);
        }
        Ok(Some(MultibandValue::Reference {
            objects: rows,
            psf_fwhm,
            zero_point,
            excluded,
        }))
    }

    fn run_forced(
        &self,
        patch: PatchKey,
        input: &BandInput,
        ctx: &UnitContext,
    ) -> Result<MultibandValue, UnitFailure> {
        let Some((
            _,
            MultibandValue::Reference {
                objects, psf_fwhm, ..
            },
        )) = values(ctx)?.into_iter().next()
        else {
            return Err(dependency_failed(
                "merge-measurements left no objects".into(),
            ));
        };
        let settings = MeasureAt {
            fwhm: Self::psf_of(&psf_fwhm, &input.band)?,
            aperture_radius: self.aperture_radius(),
            recentre: false,
        };
        let mut rows = self.measure_coadd(
            patch,
            &input.coadd,
            objects.iter().map(|o| (o.x, o.y)),
            &settings,
        )?;
        for (m, o) in rows.iter_mut().zip(&objects) {
            m.flags &= !(flag::CENTROID_FAILED | flag::MOMENTS_FAILED);
            if o.blended {
                m.flags |= flag::BLENDED;
            }
        }
        Ok(MultibandValue::Forced {
            band: input.band.clone(),
            rows,
        })
    }

    fn run_patch_catalog(
        &self,
        patch: PatchKey,
        inputs: &[BandInput],
        ctx: &UnitContext,
    ) -> Result<Outcome, UnitFailure> {
        let mut reference = None;
        let mut forced: BTreeMap<String, Vec<Measurement>> = BTreeMap::new();
        for (_, v) in values(ctx)? {
            match v {
                MultibandValue::Reference {
                    objects,
                    zero_point,
                    excluded,
                    ..
                } => reference = Some((objects, zero_point, excluded)),
                MultibandValue::Forced { band, rows } => {
                    forced.insert(band, rows);
                }
                _ => {}
            }
        }
        let Some((objects, zero_point, excluded)) = reference else {
            if no_work_input(ctx, None) {
                return Ok(Outcome::NoWork {
                    reason: "the patch has no coadd in any band".into(),
                });
            }
            return Err(dependency_failed(
                "merge-measurements of the patch failed".into(),
            ));
        };
        let grid = self.grid(patch)?;
        let failed = failed_inputs(ctx);
        let n = objects.len();
        let mut missing = Vec::new();
        let mut columns = Vec::new();
        for band in inputs.iter().map(|i| &i.band) {
            match forced.remove(band) {
                Some(rows) => columns.push((
                    band.clone(),
                    BandColumns {
                        flux_aper: rows.iter().map(|m| m.flux_aper).collect(),
                        flux_aper_err: rows.iter().map(|m| m.flux_aper_err).collect(),
                        flux_psf: rows.iter().map(|m| m.flux_psf).collect(),
                        flux_psf_err: rows.iter().map(|m| m.flux_psf_err).collect(),
                        flags: rows.iter().map(|m| m.flags as i32).collect(),
                    },
                )),
                // In a chain, a band planned for the patch that got no coadd (no CCD left
                // data on it) is left out, as when planning from the registry's coadd rows.
                // Forced photometry ends no-work only for a band without a coadd.
                None if no_work_input(ctx, Some(band)) => {}
                None => {
                    let reason = failed
                        .iter()
                        .find(|(u, _)| u.get("band") == Some(band.as_str()))
                        .map_or_else(
                            || "forced photometry set no value".to_string(),
                            |(u, o)| format!("{u}: {}", o.as_str()),
                        );
                    missing.push((band.clone(), reason));
                    columns.push((band.clone(), BandColumns::missing(n)));
                }
            }
        }
        let sky: Vec<_> = objects.iter().map(|o| grid.sky_of(o.x, o.y)).collect();
        let catalog = Catalog {
            id: objects.iter().map(|o| o.id).collect(),
            patch: vec![(patch.x as i32, patch.y as i32); n],
            ra: sky.iter().map(|s| s.ra()).collect(),
            dec: sky.iter().map(|s| s.dec()).collect(),
            x: objects.iter().map(|o| o.x + 1.0).collect(),
            y: objects.iter().map(|o| o.y + 1.0).collect(),
            ref_band: objects.iter().map(|o| o.band.clone()).collect(),
            ixx: objects.iter().map(|o| o.ixx).collect(),
            iyy: objects.iter().map(|o| o.iyy).collect(),
            ixy: objects.iter().map(|o| o.ixy).collect(),
            bands: columns,
        };
        let patch_text = format!("{},{}", patch.x, patch.y);
        let missing_rows: Vec<Missing> = missing
            .iter()
            .map(|(band, reason)| Missing {
                patch: patch_text.clone(),
                band: band.clone(),
                reason: reason.clone(),
            })
            .collect();
        let excluded_bands: Vec<&str> = excluded.iter().map(|(b, _)| b.as_str()).collect();
        let cards = [
            Card::int("TRACT", i64::from(patch.tract), "sky-map tract"),
            Card::int("PATCH_X", i64::from(patch.x), "patch column"),
            Card::int("PATCH_Y", i64::from(patch.y), "patch row"),
            Card::text(
                "REFEXCL",
                &excluded_bands.join(","),
                "bands left out of the reference choice",
            ),
        ];
        let rel = paths::patch_catalog(patch);
        let provenance = self.provenance(
            &MultibandUnit::PatchCatalog {
                patch,
                inputs: inputs.to_vec(),
            },
            inputs.iter().flat_map(|i| {
                [
                    (DATASET_COADD_SOURCES, i.catalog.clone()),
                    (DATASET_COADD, i.coadd.clone()),
                ]
            }),
        );
        let out = OutputFile {
            path: &ctx.run_dir.join(&rel),
            provenance: &provenance,
            durable: ctx.durable,
        };
        output::write_catalog(&out, &catalog, zero_point, &cards, &missing_rows)
            .map_err(failure)?;
        let mut reg = Registry::open(&self.registry).map_err(UnitFailure::transient)?;
        reg.record_multiband(&[MultibandRecord {
            patch: patch.into(),
            path: ctx.run_dir.join(&rel),
            objects: n as u64,
        }])
        .map_err(UnitFailure::transient)?;
        ctx.set_value(&MultibandValue::Patch { path: rel, missing });
        Ok(Outcome::Done)
    }

    /// Provenance of a catalogue written by `unit`, made from `inputs` (dataset type, path):
    /// catalogue units receive their data as values, so their connections name no input.
    fn provenance(
        &self,
        unit: &MultibandUnit,
        inputs: impl IntoIterator<Item = (&'static str, PathBuf)>,
    ) -> Provenance {
        Provenance::new(
            self.name(),
            &unit.id().to_string(),
            &self.config_fingerprint(),
            inputs
                .into_iter()
                .map(|(kind, path)| (kind.to_string(), path)),
        )
    }

    fn run_tract_catalog(&self, tract: u32, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let mut catalog = Catalog::default();
        let mut missing = Vec::new();
        let mut zero_point = f64::NAN;
        let mut patch_files = Vec::new();
        let decoded: BTreeMap<UnitId, MultibandValue> = values(ctx)?.into_iter().collect();
        for input in ctx.inputs() {
            if input.outcome == OutcomeKind::NoWork {
                continue;
            }
            let patch = input.unit.get("patch").unwrap_or("?").to_string();
            let Some(MultibandValue::Patch { path, .. }) = decoded.get(&input.unit) else {
                missing.push(Missing {
                    patch,
                    band: "*".into(),
                    reason: format!("{}: {}", input.unit, input.outcome.as_str()),
                });
                continue;
            };
            let file = ctx.run_dir.join(path);
            let (c, m) = output::read_catalog(&file).map_err(failure)?;
            zero_point = skypipe_io::fits::FitsReader::open(&file)
                .and_then(|mut r| r.key_f64(skypipe_io::fits::Hdu::Name("OBJECTS"), "MAGZERO"))
                .map_err(|e| failure(e.into()))?;
            catalog.append(c);
            missing.extend(m);
            patch_files.push((DATASET_PATCH_CATALOG, file));
        }
        let cards = [Card::int("TRACT", i64::from(tract), "sky-map tract")];
        let provenance = self.provenance(&MultibandUnit::TractCatalog { tract }, patch_files);
        let out = OutputFile {
            path: &ctx.run_dir.join(paths::tract_catalog(tract)),
            provenance: &provenance,
            durable: ctx.durable,
        };
        output::write_catalog(&out, &catalog, zero_point, &cards, &missing).map_err(failure)?;
        Ok(Outcome::Done)
    }
}

impl Stage for Multiband {
    type Unit = MultibandUnit;

    fn name(&self) -> &'static str {
        "multiband"
    }

    fn config_fingerprint(&self) -> String {
        fingerprint_of(&self.config)
    }

    /// Per patch with coadds: merge-detections; measure per band after it; merge-measurements
    /// after the measures (tolerating failed ones) and merge-detections; forced per band after
    /// merge-measurements; the patch catalogue after merge-measurements and the forced units
    /// (tolerating failed ones). Per tract: the tract catalogue after its patch catalogues
    /// (tolerating failed ones). No barrier between patches.
    fn plan(&self) -> Result<Vec<PlannedUnit<MultibandUnit>>, PlanError> {
        let patches = self.planned_patches()?;
        let mut plan = Vec::new();
        let mut tracts: BTreeMap<u32, Vec<UnitId>> = BTreeMap::new();
        for (patch, inputs) in patches {
            let bands: Vec<String> = inputs.iter().map(|i| i.band.clone()).collect();
            let merge = MultibandUnit::MergeDetections {
                patch,
                inputs: inputs.clone(),
            };
            let merge_id = merge.id();
            plan.push(PlannedUnit::new(merge));
            let mut measures = vec![merge_id.clone()];
            for input in &inputs {
                let unit = MultibandUnit::Measure {
                    patch,
                    input: input.clone(),
                };
                measures.push(unit.id());
                plan.push(PlannedUnit::new(unit).after([merge_id.clone()]));
            }
            let reference = MultibandUnit::MergeMeasurements { patch, bands };
            let reference_id = reference.id();
            plan.push(
                PlannedUnit::new(reference)
                    .after(measures)
                    .tolerating_failed_inputs(),
            );
            let mut forced = vec![reference_id.clone()];
            for input in &inputs {
                let unit = MultibandUnit::Forced {
                    patch,
                    input: input.clone(),
                };
                forced.push(unit.id());
                plan.push(PlannedUnit::new(unit).after([reference_id.clone()]));
            }
            let catalog = MultibandUnit::PatchCatalog { patch, inputs };
            tracts.entry(patch.tract).or_default().push(catalog.id());
            plan.push(
                PlannedUnit::new(catalog)
                    .after(forced)
                    .tolerating_failed_inputs(),
            );
        }
        for (tract, members) in tracts {
            plan.push(
                PlannedUnit::new(MultibandUnit::TractCatalog { tract })
                    .after(members)
                    .tolerating_failed_inputs(),
            );
        }
        Ok(plan)
    }

    /// merge-detections reads each band's coadd catalogue; measure and forced read their
    /// coadd; the catalogue units write their catalogues (the intermediate results travel as
    /// unit values).
    fn connections(&self, unit: &MultibandUnit, run_dir: &Path) -> Connections {
        match unit {
            MultibandUnit::MergeDetections { inputs, .. } => {
                inputs.iter().fold(Connections::new(), |c, i| {
                    c.input(DATASET_COADD_SOURCES, &i.catalog)
                })
            }
            MultibandUnit::Measure { input, .. } | MultibandUnit::Forced { input, .. } => {
                Connections::new().input(DATASET_COADD, &input.coadd)
            }
            MultibandUnit::MergeMeasurements { .. } => Connections::new(),
            MultibandUnit::PatchCatalog { patch, .. } => Connections::new().output(
                DATASET_PATCH_CATALOG,
                run_dir.join(paths::patch_catalog(*patch)),
            ),
            MultibandUnit::TractCatalog { tract } => Connections::new().output(
                DATASET_TRACT_CATALOG,
                run_dir.join(paths::tract_catalog(*tract)),
            ),
        }
    }

    fn run(&self, unit: &MultibandUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        if let MultibandUnit::Measure { input, .. } | MultibandUnit::Forced { input, .. } = unit
            && ctx.unproduced(&input.coadd)
        {
            return Ok(Outcome::NoWork {
                reason: format!("the patch has no coadd in band {}", input.band),
            });
        }
        if let MultibandUnit::MergeDetections { inputs, .. } = unit
            && inputs.iter().all(|i| ctx.unproduced(&i.catalog))
        {
            return Ok(Outcome::NoWork {
                reason: "the patch has no coadd in any band".into(),
            });
        }
        let value = match unit {
            MultibandUnit::MergeDetections { patch, inputs } => {
                self.run_merge_detections(*patch, inputs, ctx)?
            }
            MultibandUnit::Measure { patch, input } => self.run_measure(*patch, input, ctx)?,
            MultibandUnit::MergeMeasurements { bands, .. } => {
                match self.run_merge_measurements(bands, ctx)? {
                    Some(value) => value,
                    None => {
                        return Ok(Outcome::NoWork {
                            reason: "the patch has no coadd in any band".into(),
                        });
                    }
                }
            }
            MultibandUnit::Forced { patch, input } => self.run_forced(*patch, input, ctx)?,
            MultibandUnit::PatchCatalog { patch, inputs } => {
                return self.run_patch_catalog(*patch, inputs, ctx);
            }
            MultibandUnit::TractCatalog { tract } => return self.run_tract_catalog(*tract, ctx),
        };
        ctx.set_value(&value);
        Ok(Outcome::Done)
    }

    /// Measure and forced hold a coadd's three planes and their prepared copies (about 40
    /// bytes a pixel); the other units hold catalogues only.
    fn memory_estimate_mb(&self, unit: &MultibandUnit) -> Option<u64> {
        let side = u64::from(self.config.skymap.patch_size + 2 * self.config.skymap.border);
        let pixels = side * side;
        Some(match unit {
            MultibandUnit::Measure { .. } | MultibandUnit::Forced { .. } => {
                64 + ((40 * pixels) >> 20)
            }
            MultibandUnit::MergeDetections { inputs, .. } => 64 + 16 * inputs.len() as u64,
            MultibandUnit::MergeMeasurements { .. } | MultibandUnit::PatchCatalog { .. } => 128,
            MultibandUnit::TractCatalog { .. } => 512,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Object ids of different patches and indices differ and decode to their parts; too large
    /// parts have none.
    #[test]
    fn object_ids_are_unique_per_tract() {
        let p = |tract, x, y| PatchKey { tract, x, y };
        let a = object_id(p(3, 1, 2), 5).unwrap();
        assert_eq!(a >> 43, 3);
        assert_eq!((a >> 33) & 1023, 1);
        assert_eq!((a >> 23) & 1023, 2);
        assert_eq!(a & ((1 << 23) - 1), 5);
        assert_ne!(a, object_id(p(3, 2, 1), 5).unwrap());
        assert!(object_id(p(3, 1024, 0), 0).is_none());
        assert!(object_id(p(3, 0, 0), 1 << 23).is_none());
    }
}
