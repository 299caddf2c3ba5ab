//! The `coadd` stage: units, planning from the registry, connections, and the three unit
//! kinds (warp, coadd, detect).

use crate::config::{CoaddConfig, ConfigError, MissingZeroPoint, WcsSource, WcsUsed};
use crate::kernels::{self, ClipParams, StackInput};
use crate::output::{self, CoaddError};
use crate::patch::{PatchGrid, PatchKey};
use serde::{Deserialize, Serialize};
use skypipe_core::warp::{self, CoarseMap, FluxScaling, Source, WarpParams};
use skypipe_io::provenance::Provenance;
use skypipe_optical::singleframe::{
    DATASET_CALEXP, DATASET_REGISTERED, output_paths, registered_path,
};
use skypipe_registry::{CcdRecord, CoaddRecord, Registry, SkyMap, SkyPoint, WarpRecord};
use skypipe_stage::{
    Connections, FailureKind, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure,
    UnitId, WorkUnit, fingerprint_of,
};
use skypipe_wcs::Wcs;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Dataset type of a warp (`coadd/warp/…`).
pub const DATASET_WARP: &str = "warp";
/// Dataset type of a coadd (`coadd/coadd/…`).
pub const DATASET_COADD: &str = "coadd";
/// Dataset type of a coadd's quicklook PNG.
pub const DATASET_QUICKLOOK: &str = "coadd-quicklook";
/// Dataset type of a coadd's source catalogue (`coadd/src/…`).
pub const DATASET_COADD_SOURCES: &str = "coadd-sources";
/// Dataset type of mosaic's per-tract WCS file, read with `wcs = "mosaic"`.
pub const DATASET_MOSAIC_WCS: &str = "mosaic-wcs";

/// Mask bits of warps and coadds: the calexp's bits (`MP_*` cards) plus these two.
pub mod mask {
    /// No input data at the pixel.
    pub const NO_DATA: u32 = 1 << 8;
    /// An input was clipped at the pixel (coadds only).
    pub const CLIPPED: u32 = 1 << 9;
    /// Input pixels with these bits are left out of a coadd: saturated, bad, no data.
    pub const REJECTED: u32 =
        skypipe_optical::image::mask::SAT | skypipe_optical::image::mask::BAD | NO_DATA;
}

/// One CCD to warp onto one patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarpUnit {
    /// The patch.
    pub patch: PatchKey,
    /// Visit.
    pub visit: u64,
    /// CCD.
    pub ccd: u32,
    /// Band.
    pub band: String,
    /// The calibrated exposure (absolute, or relative to the working directory).
    pub calexp: PathBuf,
    /// For a CCD planned from its ingested raw region (not yet processed when planned): its
    /// visit's registry marker, which the warp reads so that it runs once the CCD's registry
    /// row exists.
    pub registered: Option<PathBuf>,
}

/// A unit of the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoaddUnit {
    /// Warp one CCD onto one patch.
    Warp(WarpUnit),
    /// Combine a patch's warps in one band.
    Coadd {
        /// The patch.
        patch: PatchKey,
        /// Band.
        band: String,
    },
    /// Detect and measure sources on a coadd.
    Detect {
        /// The patch.
        patch: PatchKey,
        /// Band.
        band: String,
    },
}

fn patch_id(p: PatchKey) -> UnitId {
    UnitId::new()
        .with("tract", p.tract)
        .with("patch", format!("{},{}", p.x, p.y))
}

impl WorkUnit for CoaddUnit {
    fn id(&self) -> UnitId {
        match self {
            CoaddUnit::Warp(w) => patch_id(w.patch).with("visit", w.visit).with("ccd", w.ccd),
            CoaddUnit::Coadd { patch, band } => patch_id(*patch).with("band", band),
            CoaddUnit::Detect { patch, band } => {
                patch_id(*patch).with("band", band).with("step", "detect")
            }
        }
    }
}

/// What a warp unit hands to its coadd unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarpValue {
    /// Visit.
    pub visit: u64,
    /// CCD.
    pub ccd: u32,
    /// The warp file, relative to the run directory.
    pub path: PathBuf,
    /// Pixels with data.
    pub good_pixels: u64,
    /// The input's weight in the coadd (inverse median variance).
    pub weight: f64,
    /// Factor applied to put the CCD at the common zero point.
    pub flux_scale: f64,
    /// PSF FWHM of the CCD, pixels (registry).
    pub psf_fwhm: f64,
    /// The WCS the warp was made with.
    pub wcs: WcsUsed,
}

/// What a coadd unit hands to its detect unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoaddValue {
    /// The coadd file, relative to the run directory.
    pub path: PathBuf,
    /// Weighted mean PSF FWHM of the inputs, pixels.
    pub psf_fwhm: f64,
}

/// Output paths of a patch, relative to the run directory.
pub mod paths {
    use super::PatchKey;
    use std::path::PathBuf;

    fn dir(kind: &str, p: PatchKey) -> String {
        format!("coadd/{kind}/t{:04}/p{:03}-{:03}", p.tract, p.x, p.y)
    }

    /// `coadd/warp/tTTTT/pXXX-YYY/vVVVV-cCC.fits`.
    pub fn warp(p: PatchKey, visit: u64, ccd: u32) -> PathBuf {
        PathBuf::from(format!("{}/v{visit:04}-c{ccd:02}.fits", dir("warp", p)))
    }

    /// `coadd/coadd/tTTTT/pXXX-YYY/BAND.fits`.
    pub fn coadd(p: PatchKey, band: &str) -> PathBuf {
        PathBuf::from(format!("{}/{band}.fits", dir("coadd", p)))
    }

    /// `coadd/coadd/tTTTT/pXXX-YYY/BAND.png`.
    pub fn quicklook(p: PatchKey, band: &str) -> PathBuf {
        PathBuf::from(format!("{}/{band}.png", dir("coadd", p)))
    }

    /// `coadd/src/tTTTT/pXXX-YYY/BAND.fits`.
    pub fn catalog(p: PatchKey, band: &str) -> PathBuf {
        PathBuf::from(format!("{}/{band}.fits", dir("src", p)))
    }

    /// `mosaic/tract-TTTT.fits` (written by `skypipe-mosaic`).
    pub fn mosaic(tract: u32) -> PathBuf {
        PathBuf::from(format!("mosaic/tract-{tract:04}.fits"))
    }
}

/// The stage.
#[derive(Debug, Clone)]
pub struct Coadd {
    config: CoaddConfig,
    registry: PathBuf,
    skymap: SkyMap,
}

impl Coadd {
    /// Checks the configuration (naming the key) and builds the stage; the registry defaults to
    /// `RUN_DIR/registry.sqlite3`.
    pub fn new(config: CoaddConfig, run_dir: Option<&Path>) -> Result<Self, ConfigError> {
        config.validate()?;
        let registry = match (&config.registry, run_dir) {
            (Some(r), _) => r.clone(),
            (None, Some(d)) => d.join("registry.sqlite3"),
            (None, None) => return Err(ConfigError::NoRegistry),
        };
        let skymap = SkyMap::new(config.skymap).map_err(ConfigError::SkyMap)?;
        Ok(Self {
            config,
            registry,
            skymap,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CoaddConfig {
        &self.config
    }

    /// The (patch, band) pairs this stage's plan makes a coadd of: the pairs of its planned
    /// warps, including those of CCDs known only from their raw regions.
    pub fn planned_coadds(&self) -> Result<BTreeSet<(PatchKey, String)>, PlanError> {
        Ok(self
            .planned_warps()?
            .into_iter()
            .map(|w| (w.patch, w.band))
            .collect())
    }

    /// The registry database this stage plans from.
    pub fn registry_path(&self) -> &Path {
        &self.registry
    }

    /// A registry path as stored (relative ones are relative to the registry's directory).
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.registry.parent().unwrap_or(Path::new(".")).join(p)
        }
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

    /// The warps to make: for every CCD of the registry (in the configured bands), every patch
    /// whose outer region its recorded region overlaps (in the configured tracts and
    /// patches), sorted by (patch, band, visit, ccd).
    pub fn planned_warps(&self) -> Result<Vec<WarpUnit>, PlanError> {
        if !self.registry.is_file() {
            return Err(PlanError(format!(
                "{}: no registry (run skypipe-singleframe first; or set coadd.registry)",
                self.registry.display()
            )));
        }
        let reg =
            Registry::open_read_only(&self.registry).map_err(|e| PlanError::from_error(&e))?;
        if let Some(stored) = reg.skymap().map_err(|e| PlanError::from_error(&e))?
            && stored.config() != self.skymap.config()
        {
            return Err(PlanError(format!(
                "{}: the registry's sky map {:?} differs from [coadd.skymap] {:?}",
                self.registry.display(),
                stored.config(),
                self.skymap.config()
            )));
        }
        let patches = self
            .config
            .patch_filter()
            .map_err(|e| PlanError::from_error(&e))?;
        let bands = &self.config.bands;
        let mut warps = Vec::new();
        for rec in reg.all().map_err(|e| PlanError::from_error(&e))? {
            if !bands.is_empty() && !bands.contains(&rec.band) {
                continue;
            }
            let region = rec.region().map_err(|e| {
                PlanError(format!(
                    "{}: visit {} ccd {}: bad region: {e}",
                    self.registry.display(),
                    rec.visit,
                    rec.ccd
                ))
            })?;
            for p in self.skymap.patches_overlapping(&region) {
                if (!self.config.tracts.is_empty() && !self.config.tracts.contains(&p.tract))
                    || (!patches.is_empty() && !patches.contains(&(p.x, p.y)))
                {
                    continue;
                }
                warps.push(WarpUnit {
                    patch: p.into(),
                    visit: rec.visit,
                    ccd: rec.ccd,
                    band: rec.band.clone(),
                    calexp: self.resolve(&rec.calexp_path),
                    registered: None,
                });
            }
        }
        // CCDs only ingested (a chain run plans before single-frame processing): their raw
        // header regions grown by the margin; outputs where single-frame processing will put them.
        let processed: BTreeSet<(u64, u32)> = warps.iter().map(|w| (w.visit, w.ccd)).collect();
        let margin = self.config.plan_margin_arcsec / 3600.0;
        for raw in reg.raw_ccds().map_err(|e| PlanError::from_error(&e))? {
            if processed.contains(&(raw.visit, raw.ccd))
                || reg
                    .get(raw.visit, raw.ccd)
                    .map_err(|e| PlanError::from_error(&e))?
                    .is_some()
                || (!bands.is_empty() && !bands.contains(&raw.band))
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
            for p in self.skymap.patches_overlapping(&region) {
                if (!self.config.tracts.is_empty() && !self.config.tracts.contains(&p.tract))
                    || (!patches.is_empty() && !patches.contains(&(p.x, p.y)))
                {
                    continue;
                }
                let (calexp, _) = output_paths(raw.visit, raw.ccd);
                warps.push(WarpUnit {
                    patch: p.into(),
                    visit: raw.visit,
                    ccd: raw.ccd,
                    band: raw.band.clone(),
                    calexp: self.resolve(&calexp),
                    registered: Some(self.resolve(&registered_path(raw.visit))),
                });
            }
        }
        warps.sort_by(|a, b| {
            (a.patch, &a.band, a.visit, a.ccd).cmp(&(b.patch, &b.band, b.visit, b.ccd))
        });
        Ok(warps)
    }

    /// The CCD's single-frame WCS: the registry's fitted WCS, or its calexp's header WCS when
    /// single-frame processing did not calibrate it.
    fn singleframe_wcs(&self, w: &WarpUnit, rec: &CcdRecord) -> Result<Wcs, UnitFailure> {
        match &rec.calibration {
            Some(c) => Wcs::from_header(
                &format!(
                    "{}: fitted WCS of visit {} ccd {}",
                    self.registry.display(),
                    w.visit,
                    w.ccd
                ),
                &c.wcs,
            )
            .map_err(UnitFailure::bad_input),
            None => skypipe_optical::wcs::read_hdu_wcs(&w.calexp, "IMAGE")
                .map_err(UnitFailure::bad_input),
        }
    }

    fn run_warp(&self, w: &WarpUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let reg = Registry::open_read_only(&self.registry).map_err(UnitFailure::transient)?;
        let rec = reg
            .get(w.visit, w.ccd)
            .map_err(UnitFailure::transient)?
            .ok_or_else(|| {
                UnitFailure::bad_input(format!(
                    "{}: visit {} ccd {} is not in the registry",
                    self.registry.display(),
                    w.visit,
                    w.ccd
                ))
            })?;
        let flux_scale = match (&rec.calibration, self.config.missing_zero_point) {
            (Some(c), _) => 10f64.powf(0.4 * (self.config.zero_point - c.zero_point)),
            (None, MissingZeroPoint::Unscaled) => 1.0,
            (None, MissingZeroPoint::Skip) => {
                return Ok(Outcome::NoWork {
                    reason: format!(
                        "visit {} ccd {} has no zero point in {} (coadd.missing_zero_point = \"skip\")",
                        w.visit,
                        w.ccd,
                        self.registry.display()
                    ),
                });
            }
        };
        let mosaic_text = match self.config.wcs {
            WcsSource::Singleframe => None,
            WcsSource::Mosaic => reg
                .mosaic_wcs(w.visit, w.ccd, w.patch.tract)
                .map_err(UnitFailure::transient)?,
        };
        let (wcs, wcs_used) = match (self.config.wcs, mosaic_text) {
            (_, Some(text)) => (
                Wcs::from_header(
                    &format!(
                        "{}: mosaic WCS of visit {} ccd {} in tract {}",
                        self.registry.display(),
                        w.visit,
                        w.ccd,
                        w.patch.tract
                    ),
                    &text,
                )
                .map_err(UnitFailure::bad_input)?,
                WcsUsed::Mosaic,
            ),
            (WcsSource::Singleframe, None) => {
                (self.singleframe_wcs(w, &rec)?, WcsUsed::Singleframe)
            }
            (WcsSource::Mosaic, None) => {
                // The warp ran after its tract's mosaic (a declared input), which recorded no
                // corrected WCS for this CCD: it was left unsolved.
                tracing::warn!(
                    "visit {} ccd {}: the mosaic of tract {} left it unsolved; warping with its \
                     single-frame WCS (WCSSRC = 'singleframe-fallback')",
                    w.visit,
                    w.ccd,
                    w.patch.tract
                );
                (self.singleframe_wcs(w, &rec)?, WcsUsed::SingleframeFallback)
            }
        };
        drop(reg);
        let grid = self.grid(w.patch)?;
        let calexp = output::read_calexp(&w.calexp).map_err(failure)?;
        let (warped, interpolation_error) =
            warp_onto_patch(&grid, &wcs, &calexp, flux_scale, self.config.coarse_step)
                .map_err(UnitFailure::bad_input)?;
        drop(calexp);
        let good_pixels = warped
            .mask
            .iter()
            .zip(&warped.image)
            .filter(|&(&m, v)| m & mask::NO_DATA == 0 && v.is_finite())
            .count() as u64;
        let Some(weight) = kernels::input_weight(&warped.variance, &warped.mask, mask::REJECTED)
        else {
            return Ok(Outcome::NoWork {
                reason: format!(
                    "visit {} ccd {} leaves no good pixel on the patch",
                    w.visit, w.ccd
                ),
            });
        };
        let rel = paths::warp(w.patch, w.visit, w.ccd);
        let meta = output::WarpMeta {
            unit: w,
            zero_point: self.config.zero_point,
            flux_scale,
            weight,
            interpolation_error,
            coarse_step: self.config.coarse_step,
            psf_fwhm: rec.psf_fwhm,
            wcs: wcs_used,
        };
        let provenance = Provenance::of_unit(self, &CoaddUnit::Warp(w.clone()), &ctx.run_dir);
        let out = output::OutputFile {
            path: &ctx.run_dir.join(&rel),
            provenance: &provenance,
            durable: ctx.durable,
        };
        output::write_warp(&out, &grid, &warped, &meta).map_err(failure)?;
        ctx.set_value(&WarpValue {
            visit: w.visit,
            ccd: w.ccd,
            path: rel,
            good_pixels,
            weight,
            flux_scale,
            psf_fwhm: rec.psf_fwhm,
            wcs: wcs_used,
        });
        Ok(Outcome::Done)
    }

    fn run_coadd(
        &self,
        patch: PatchKey,
        band: &str,
        ctx: &UnitContext,
    ) -> Result<Outcome, UnitFailure> {
        let mut values: Vec<(UnitId, WarpValue)> = ctx.input_values()?;
        if values.is_empty() {
            return Ok(Outcome::NoWork {
                reason: format!("no CCD of band {band} left data on the patch"),
            });
        }
        values.sort_by_key(|(_, v)| (v.visit, v.ccd));
        let grid = self.grid(patch)?;
        let (width, height) = grid.shape();
        let mut warps = Vec::with_capacity(values.len());
        for (_, v) in &values {
            warps.push(
                output::read_planes(&ctx.run_dir.join(&v.path), (width, height))
                    .map_err(failure)?,
            );
        }
        let inputs: Vec<StackInput> = warps
            .iter()
            .zip(&values)
            .map(|(w, (_, v))| StackInput {
                image: &w.image,
                variance: &w.variance,
                mask: &w.mask,
                weight: v.weight,
            })
            .collect();
        let clip = ClipParams {
            sigma: self.config.clip_sigma,
            iterations: self.config.clip_iterations,
            amplitude_fraction: self.config.clip_amplitude_fraction,
            reject_bits: mask::REJECTED,
            no_data_bit: mask::NO_DATA,
            clipped_bit: mask::CLIPPED,
        };
        let stacked = kernels::stack(&inputs, width * height, &clip);
        drop(inputs);
        drop(warps);
        let weight_sum: f64 = values.iter().map(|(_, v)| v.weight).sum();
        let psf_fwhm = values
            .iter()
            .map(|(_, v)| v.weight * v.psf_fwhm)
            .sum::<f64>()
            / weight_sum;
        let sky_variance = {
            let mut v: Vec<f32> = stacked
                .variance
                .iter()
                .copied()
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            if v.is_empty() {
                f64::NAN
            } else {
                let mid = v.len() / 2;
                f64::from(*v.select_nth_unstable_by(mid, f32::total_cmp).1)
            }
        };
        let depth = kernels::point_source_depth(self.config.zero_point, sky_variance, psf_fwhm)
            .unwrap_or(0.0);
        let rel = paths::coadd(patch, band);
        let inputs_meta: Vec<output::InputMeta> = values
            .iter()
            .map(|(_, v)| output::InputMeta {
                visit: v.visit,
                ccd: v.ccd,
                weight: v.weight,
                flux_scale: v.flux_scale,
                wcs: v.wcs,
            })
            .collect();
        let meta = output::CoaddMeta {
            patch,
            band,
            zero_point: self.config.zero_point,
            psf_fwhm,
            depth,
            inputs: &inputs_meta,
        };
        let provenance = self.coadd_provenance(patch, band, &values, &ctx.run_dir);
        let out = output::OutputFile {
            path: &ctx.run_dir.join(&rel),
            provenance: &provenance,
            durable: ctx.durable,
        };
        output::write_coadd(&out, &grid, &stacked, &meta).map_err(failure)?;
        let (rgb, stretch) =
            kernels::asinh_quicklook(&stacked.image, &stacked.variance, width, height);
        let title = format!(
            "tract {} patch {},{} band {band}",
            patch.tract, patch.x, patch.y
        );
        let figure = kernels::labelled_quicklook(rgb, width, height, stretch, &title, "ct");
        output::write_quicklook(
            &ctx.run_dir.join(paths::quicklook(patch, band)),
            &figure,
            stretch,
            ctx.durable,
        )
        .map_err(failure)?;
        let mut reg = Registry::open(&self.registry).map_err(UnitFailure::transient)?;
        reg.set_skymap(&self.skymap)
            .map_err(|e| UnitFailure::new(FailureKind::BadInput, e))?;
        let warp_rows: Vec<WarpRecord> = values
            .iter()
            .map(|(_, v)| WarpRecord {
                patch: patch.into(),
                visit: v.visit,
                ccd: v.ccd,
                path: ctx.run_dir.join(&v.path),
                good_pixels: v.good_pixels,
            })
            .collect();
        reg.record_warps(&warp_rows)
            .map_err(UnitFailure::transient)?;
        reg.record_coadds(&[CoaddRecord {
            patch: patch.into(),
            band: band.to_string(),
            path: ctx.run_dir.join(&rel),
            inputs: values.len() as u32,
            depth,
        }])
        .map_err(UnitFailure::transient)?;
        ctx.set_value(&CoaddValue {
            path: rel,
            psf_fwhm,
        });
        Ok(Outcome::Done)
    }

    /// Provenance of a coadd: the coadd unit and the warps it combined (which a coadd unit
    /// receives as values, so its connections do not name them).
    fn coadd_provenance(
        &self,
        patch: PatchKey,
        band: &str,
        warps: &[(UnitId, WarpValue)],
        run_dir: &Path,
    ) -> Provenance {
        let unit = CoaddUnit::Coadd {
            patch,
            band: band.to_string(),
        };
        Provenance::new(
            self.name(),
            &unit.id().to_string(),
            &self.config_fingerprint(),
            warps
                .iter()
                .map(|(_, v)| (DATASET_WARP.to_string(), run_dir.join(&v.path))),
        )
    }

    fn run_detect(
        &self,
        patch: PatchKey,
        band: &str,
        ctx: &UnitContext,
    ) -> Result<Outcome, UnitFailure> {
        let values: Vec<(UnitId, CoaddValue)> = ctx.input_values()?;
        let Some((_, v)) = values.into_iter().next() else {
            return Ok(Outcome::NoWork {
                reason: format!("patch has no coadd in band {band}"),
            });
        };
        let grid = self.grid(patch)?;
        let coadd =
            output::read_planes(&ctx.run_dir.join(&v.path), grid.shape()).map_err(failure)?;
        let result = crate::detect::detect_and_measure(&coadd, v.psf_fwhm, &self.config.detection);
        let sky: Vec<SkyPoint> = result
            .sources
            .iter()
            .map(|s| grid.sky_of(s.x, s.y))
            .collect();
        let unit = CoaddUnit::Detect {
            patch,
            band: band.to_string(),
        };
        let out = output::OutputFile {
            path: &ctx.run_dir.join(paths::catalog(patch, band)),
            provenance: &Provenance::of_unit(self, &unit, &ctx.run_dir),
            durable: ctx.durable,
        };
        output::write_catalog(&out, patch, band, self.config.zero_point, &result, &sky)
            .map_err(failure)?;
        if !self.config.keep_warps {
            self.delete_warps(patch, band)?;
        }
        Ok(Outcome::Done)
    }

    /// Deletes the warp files of `patch` in `band` (`keep_warps = false`), found through the
    /// registry's warp rows that the coadd unit recorded; a file already gone is fine.
    fn delete_warps(&self, patch: PatchKey, band: &str) -> Result<(), UnitFailure> {
        let reg = Registry::open_read_only(&self.registry).map_err(UnitFailure::transient)?;
        for row in reg.warps(patch.into()).map_err(UnitFailure::transient)? {
            let in_band = reg
                .get(row.visit, row.ccd)
                .map_err(UnitFailure::transient)?
                .is_some_and(|r| r.band == band);
            if !in_band {
                continue;
            }
            match std::fs::remove_file(&row.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(UnitFailure::transient(format!(
                        "{}: cannot delete warp: {e}",
                        row.path.display()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Warps a calexp with WCS `wcs` onto `grid` (Lanczos3, per-pixel area scaling, times
/// `flux_scale`), the mapping evaluated exactly every `step` patch pixels; returns the warp and
/// the largest coarse-grid interpolation error (CCD pixels) at probe pixels whose source lies on
/// the CCD (a fitted SIP polynomial is not meant to be evaluated far beyond it).
pub fn warp_onto_patch(
    grid: &PatchGrid,
    wcs: &Wcs,
    calexp: &output::Calexp,
    flux_scale: f64,
    step: usize,
) -> Result<(warp::Warped, f64), warp::WarpError> {
    // 0-based patch pixel → sky (tract TAN) → 1-based CCD pixel (WCSLIB) → 0-based.
    let exact = |points: &[[f64; 2]]| -> Vec<[f64; 2]> {
        let sky: Vec<[f64; 2]> = points
            .iter()
            .map(|p| {
                let s = grid.sky_of(p[0], p[1]);
                [s.ra(), s.dec()]
            })
            .collect();
        match wcs.sky_to_pixel(&sky) {
            Ok(pix) => pix
                .iter()
                .map(|p| p.map_or([f64::NAN; 2], |p| [p[0] - 1.0, p[1] - 1.0]))
                .collect(),
            Err(_) => vec![[f64::NAN; 2]; points.len()],
        }
    };
    let (width, height) = grid.shape();
    let map = CoarseMap::new(width, height, step, exact)?;
    let (cw, ch) = (calexp.width as f64, calexp.height as f64);
    let probes = map.probe_points(7);
    let on_ccd: Vec<[f64; 2]> = probes
        .iter()
        .zip(exact(&probes))
        .filter(|(_, s)| s[0] > -0.5 && s[0] < cw - 0.5 && s[1] > -0.5 && s[1] < ch - 0.5)
        .map(|(p, _)| *p)
        .collect();
    let interpolation_error = map.max_interpolation_error(&on_ccd, exact)?;
    let params = WarpParams {
        flux_scale,
        flux_scaling: FluxScaling::Local,
        no_data_bit: mask::NO_DATA,
        mask_weight_threshold: 0.01,
    };
    let source = Source {
        image: &calexp.image,
        variance: &calexp.variance,
        mask: &calexp.mask,
        width: calexp.width,
        height: calexp.height,
    };
    Ok((warp::warp(&source, &map, &params)?, interpolation_error))
}

/// Write and I/O failures are transient; anything else about a file is bad input.
fn failure(e: CoaddError) -> UnitFailure {
    match &e {
        CoaddError::Fits(skypipe_io::fits::FitsError::Write { .. })
        | CoaddError::Fits(skypipe_io::fits::FitsError::Io(_))
        | CoaddError::Png(_) => UnitFailure::transient(e),
        _ => UnitFailure::bad_input(e),
    }
}

impl Stage for Coadd {
    type Unit = CoaddUnit;

    fn name(&self) -> &'static str {
        "coadd"
    }

    fn config_fingerprint(&self) -> String {
        fingerprint_of(&self.config)
    }

    /// Warps from [`Coadd::planned_warps`]; one coadd per (patch, band) after its warps, whose
    /// values it receives (a failed warp makes it dependency-failed); one detect unit after
    /// each coadd.
    fn plan(&self) -> Result<Vec<PlannedUnit<CoaddUnit>>, PlanError> {
        let warps = self.planned_warps()?;
        let mut groups: BTreeMap<(PatchKey, String), Vec<UnitId>> = BTreeMap::new();
        let mut plan = Vec::with_capacity(warps.len() * 3 / 2 + 2);
        for w in warps {
            let unit = CoaddUnit::Warp(w.clone());
            groups
                .entry((w.patch, w.band.clone()))
                .or_default()
                .push(unit.id());
            plan.push(PlannedUnit::new(unit));
        }
        for ((patch, band), members) in groups {
            let coadd = CoaddUnit::Coadd {
                patch,
                band: band.clone(),
            };
            let coadd_id = coadd.id();
            plan.push(PlannedUnit::new(coadd).after(members));
            plan.push(PlannedUnit::new(CoaddUnit::Detect { patch, band }).after([coadd_id]));
        }
        Ok(plan)
    }

    /// A warp reads its calexp (and, with `wcs = "mosaic"`, its tract's mosaic file) and
    /// writes its warp (declared only with `keep_warps`: detect deletes it otherwise); a coadd writes the coadd and its quicklook (its warps reach it as
    /// values, since a warp that finds no data writes none); a detect reads the coadd and
    /// writes the catalogue.
    fn connections(&self, unit: &CoaddUnit, run_dir: &Path) -> Connections {
        match unit {
            CoaddUnit::Warp(w) => {
                let mut c = Connections::new().input(DATASET_CALEXP, &w.calexp);
                if let Some(marker) = &w.registered {
                    c = c.input(DATASET_REGISTERED, marker);
                }
                if self.config.wcs == WcsSource::Mosaic {
                    c = c.input(
                        DATASET_MOSAIC_WCS,
                        run_dir.join(paths::mosaic(w.patch.tract)),
                    );
                }
                if self.config.keep_warps {
                    c.output(
                        DATASET_WARP,
                        run_dir.join(paths::warp(w.patch, w.visit, w.ccd)),
                    )
                } else {
                    c
                }
            }
            CoaddUnit::Coadd { patch, band } => Connections::new()
                .output(DATASET_COADD, run_dir.join(paths::coadd(*patch, band)))
                .output(
                    DATASET_QUICKLOOK,
                    run_dir.join(paths::quicklook(*patch, band)),
                ),
            CoaddUnit::Detect { patch, band } => Connections::new()
                .input(DATASET_COADD, run_dir.join(paths::coadd(*patch, band)))
                .output(
                    DATASET_COADD_SOURCES,
                    run_dir.join(paths::catalog(*patch, band)),
                ),
        }
    }

    fn run(&self, unit: &CoaddUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        match unit {
            CoaddUnit::Warp(w) => self.run_warp(w, ctx),
            CoaddUnit::Coadd { patch, band } => self.run_coadd(*patch, band, ctx),
            CoaddUnit::Detect { patch, band } => self.run_detect(*patch, band, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_registry::{CcdRecord, CcdStatus, PatchId, SkyMapConfig};

    /// Registry-driven planning equals a brute-force overlap of every CCD region with every
    /// patch of every tract near it, on CCDs straddling RA = 0 (where one tract, centred on
    /// RA 0, holds CCDs from both sides).
    #[test]
    fn planning_across_ra_zero_equals_brute_force() {
        let config = SkyMapConfig {
            rings: 359,
            pixel_scale: 0.2,
            patch_size: 1000,
            border: 50,
        };
        let tmp = tempfile::tempdir().unwrap();
        let registry = tmp.path().join("registry.sqlite3");
        let mut records = Vec::new();
        // A 4 x 2 mosaic of 0.05° x 0.1° CCDs rotated by 10°, centred on RA 0, Dec 0.3.
        let (s, c) = 10f64.to_radians().sin_cos();
        for (k, (cx, cy)) in [-0.15, -0.05, 0.05, 0.15]
            .iter()
            .flat_map(|&x| [0.25, 0.36].map(|y| (x, y)))
            .enumerate()
        {
            let corners = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)].map(|(u, v)| {
                let (dx, dy) = (0.025 * u, 0.05 * v);
                let (ra, dec) = (cx + dx * c - dy * s, cy + dx * s + dy * c);
                SkyPoint::new(f64::rem_euclid(ra, 360.0), dec).unwrap()
            });
            records.push(CcdRecord {
                visit: 1,
                ccd: k as u32,
                band: "r".into(),
                exposure_time: 30.0,
                psf_fwhm: 3.0,
                corners,
                calexp_path: format!("c{k}.fits").into(),
                catalog_path: format!("s{k}.fits").into(),
                calibration: None,
                status: CcdStatus::Processed,
            });
        }
        Registry::open(&registry)
            .unwrap()
            .insert_ccds(&records)
            .unwrap();
        let stage = Coadd::new(
            CoaddConfig {
                skymap: config,
                ..CoaddConfig::default()
            },
            Some(tmp.path()),
        )
        .unwrap();
        let planned: BTreeSet<(PatchId, u32)> = stage
            .planned_warps()
            .unwrap()
            .iter()
            .map(|w| (w.patch.into(), w.ccd))
            .collect();
        let map = SkyMap::new(config).unwrap();
        let mut brute = BTreeSet::new();
        for rec in &records {
            let region = rec.region().unwrap();
            for t in map.tracts() {
                if t.centre.separation(rec.corners[0]) > 3.0 {
                    continue;
                }
                for y in 0..t.patches_y {
                    for x in 0..t.patches_x {
                        if t.patch_outer(x, y).intersects(&region) {
                            brute.insert((PatchId { tract: t.id, x, y }, rec.ccd));
                        }
                    }
                }
            }
        }
        assert_eq!(planned, brute);
        // The tract centred on RA 0 gets CCDs from both sides of it, over several patches.
        let zero = map.tract_of(SkyPoint::new(0.0, 0.3).unwrap());
        assert_eq!(map.tract(zero).unwrap().centre.ra(), 0.0);
        let in_zero: Vec<&(PatchId, u32)> = planned.iter().filter(|p| p.0.tract == zero).collect();
        let ccds: BTreeSet<u32> = in_zero.iter().map(|p| p.1).collect();
        let patches: BTreeSet<PatchId> = in_zero.iter().map(|p| p.0).collect();
        assert_eq!(ccds.len(), records.len(), "{in_zero:?}");
        assert!(patches.len() >= 4, "{patches:?}");
    }

    /// A CCD whose WCS is the patch's own, shifted by whole pixels, warps to a copy of itself
    /// (shifted, scaled by the flux factor): the stage's pixel conventions (0/1-based, pixel
    /// centres, tract origin) agree with WCSLIB's.
    #[test]
    fn a_ccd_on_the_patch_grid_warps_to_itself() {
        let map = SkyMap::new(SkyMapConfig {
            rings: 359,
            pixel_scale: 0.2,
            patch_size: 100,
            border: 10,
        })
        .unwrap();
        let id = map.locate(SkyPoint::new(150.0, 2.0).unwrap());
        let grid = PatchGrid::new(map.tract(id.tract).unwrap(), id.x, id.y);
        // CCD pixel (i, j) is patch pixel (i + 7, j + 4).
        let (dx, dy) = (7usize, 4usize);
        let records: Vec<String> = grid
            .wcs_records()
            .into_iter()
            .map(|r| {
                let shift = |k: &str, d: usize| {
                    let v: f64 = r[10..30].trim().parse().unwrap();
                    format!(
                        "{:<80}",
                        format!("{k:<8}= {:>20}", format!("{:E}", v - d as f64))
                    )
                };
                match &r[..8] {
                    "CRPIX1  " => shift("CRPIX1", dx),
                    "CRPIX2  " => shift("CRPIX2", dy),
                    _ => r,
                }
            })
            .collect();
        let wcs = Wcs::from_header("shifted patch", &records.concat()).unwrap();
        let (cw, ch) = (60usize, 50usize);
        let calexp = output::Calexp {
            image: (0..cw * ch).map(|k| (k % 97) as f32 - 30.0).collect(),
            variance: (0..cw * ch).map(|k| 1.0 + (k % 13) as f32).collect(),
            mask: (0..cw * ch).map(|k| u32::from(k % 31 == 0) * 4).collect(),
            width: cw,
            height: ch,
        };
        let (warped, error) = warp_onto_patch(&grid, &wcs, &calexp, 2.0, 16).unwrap();
        assert!(error < 1e-6, "{error}");
        let (w, _) = grid.shape();
        for j in 0..ch {
            for i in 0..cw {
                let (k, o) = (j * cw + i, (j + dy) * w + i + dx);
                assert!(
                    (warped.image[o] - 2.0 * calexp.image[k]).abs() < 1e-3,
                    "({i}, {j})"
                );
                assert!((warped.variance[o] - 4.0 * calexp.variance[k]).abs() < 1e-3);
                assert_eq!(warped.mask[o], calexp.mask[k]);
            }
        }
        // Outside the CCD: no data.
        assert!(warped.image[0].is_nan() && warped.mask[0] == mask::NO_DATA);
    }
}
