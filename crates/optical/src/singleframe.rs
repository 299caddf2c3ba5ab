//! The `singleframe` stage: one unit per CCD (ISR → detection → measurement, outputs written
//! atomically) and one registry unit per visit, after that visit's CCDs, that records them in
//! the SQLite registry in one transaction.
//!
//! Units: `visit=V,ccd=C` for a CCD; `visit=V,step=registry` for a visit's registry rows. A
//! CCD unit passes its registry record to the registry unit as its value, so only registry
//! units write the database, and a failed CCD blocks only its own visit's registry unit.
//! Planning reads the CCD list (`skypipe-ccd-list/1`), never a science file.
//!
//! With `[singleframe.calibration] exposure_wide = true`, two more units per visit: after the
//! visit's CCDs (tolerating failed ones), `visit=V,step=exposure` gathers their matches (in
//! their values) and fits one exposure-wide solution ([`crate::exposure`]); after it, one
//! `visit=V,ccd=C,step=wcs` per CCD writes that CCD's final WCS. The CCD units then write
//! intermediate products (`singleframe/prelim/…`, dataset types `calexp-prelim` and
//! `sources-prelim`, with the CCD's own fit), which the follow-up copies into the final
//! `calexp`/`sources` with the exposure-wide WCS and recomputed `RA`/`DEC`: every file has one
//! writer, so the engine's ordering by files and resume's check of recorded outputs hold as for
//! any unit. The registry unit runs after the CCDs and the follow-ups. Nothing waits for
//! another visit.
//!
//! Outputs under `RUN_DIR/singleframe/`: `calexp/vVVVV/cCC.fits` (IMAGE, MASK, VARIANCE) and
//! `src/vVVVV/cCC.fits` (table SOURCES); the registry at `RUN_DIR/registry.sqlite3` unless
//! configured. Formats: `docs/formats.md`, `## Imaging`.

use crate::amplifiers::{Readout, ReadoutKeywords};
use crate::calibration::{
    self, CalibrationParams, CcdCalibration, Match, ReferenceCatalog, ReferenceError,
};
use crate::exposure::{self, CcdForExposure};
use crate::image::{Image, mask};
use crate::isr::OverscanMethod;
use crate::measure::flags;
use crate::pipeline::{self, ChainOutput, ChainParams};
use crate::timing::Laps;
use crate::wcs::{Wcs, WcsError};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use skypipe_io::fits::{Card, Column, FitsError, FitsReader, FitsWriter, Hdu};
use skypipe_io::provenance::Provenance;
use skypipe_registry::{CcdFit, CcdRecord, CcdStatus, Registry, SkyPoint};
use skypipe_stage::{
    Connections, KeyError, Outcome, PlanError, PlannedUnit, Stage, UnitContext, UnitFailure,
    UnitId, UnsetKey, WorkUnit, fingerprint_of,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Dataset type of a raw CCD exposure (a prerequisite: no stage writes it).
pub const DATASET_RAW: &str = "raw";
/// Dataset type of a master bias or flat named by the CCD list (a prerequisite).
pub const DATASET_CALIBRATION: &str = "ccd-calibration";
/// Dataset type of a variance image named by the CCD list (a prerequisite).
pub const DATASET_VARIANCE: &str = "variance";
/// Dataset type of the astrometric/photometric reference catalogue (a prerequisite).
pub const DATASET_REFERENCE: &str = "reference-catalog";
/// Dataset type of a calibrated exposure (`singleframe/calexp/…`).
pub const DATASET_CALEXP: &str = "calexp";
/// Dataset type of a visit's registry marker (`singleframe/registered/vVVVV.json`): its rows
/// are in the registry.
pub const DATASET_REGISTERED: &str = "registered-visit";
/// Dataset type of a source catalogue (`singleframe/src/…`).
pub const DATASET_SOURCES: &str = "sources";
/// Dataset type of a CCD unit's calibrated exposure before the exposure-wide WCS
/// (`singleframe/prelim/calexp/…`; only with `exposure_wide`).
pub const DATASET_CALEXP_PRELIM: &str = "calexp-prelim";
/// Dataset type of a CCD unit's catalogue before the exposure-wide WCS
/// (`singleframe/prelim/src/…`; only with `exposure_wide`).
pub const DATASET_SOURCES_PRELIM: &str = "sources-prelim";

/// Format tag of the CCD list file.
pub const CCD_LIST_FORMAT: &str = "skypipe-ccd-list/1";

/// One raw CCD exposure to process, as listed in the CCD list (paths relative to the list).
/// Unknown keys are ignored (a data file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CcdInput {
    /// Visit (exposure) number.
    pub visit: u64,
    /// CCD number.
    pub ccd: u32,
    /// Filter band.
    pub band: String,
    /// Raw image (FITS, primary HDU; optional `VARIANCE` extension).
    pub raw: PathBuf,
    /// Master bias, if the image is not yet bias-corrected.
    #[serde(default)]
    pub bias: Option<PathBuf>,
    /// Master flat, if the image is not yet flat-fielded.
    #[serde(default)]
    pub flat: Option<PathBuf>,
    /// A variance image (FITS primary HDU, in the raw image's units squared), if given.
    #[serde(default)]
    pub variance: Option<PathBuf>,
}

/// The CCD list file (`skypipe-ccd-list/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CcdList {
    /// Must be [`CCD_LIST_FORMAT`].
    pub format: String,
    /// The CCDs.
    pub units: Vec<CcdInput>,
}

/// The `skypipe-singleframe` configuration file: the engine's `[run]` table (type `R`, the
/// engine's `RunOptions` in the binary) and `[singleframe]`. Unknown keys are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleframeFile<R> {
    /// Engine options.
    #[serde(default)]
    pub run: R,
    /// Stage options.
    #[serde(default)]
    pub singleframe: SingleframeConfig,
}

/// The `[singleframe]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SingleframeConfig {
    /// CCD list file (`skypipe-ccd-list/1`, e.g. `units.json` from `skypipe-sim image`).
    pub input: Option<PathBuf>,
    /// Registry database. Default `RUN_DIR/registry.sqlite3`.
    pub registry: Option<PathBuf>,
    /// Threads per CCD unit (a rayon pool inside the unit). Default 1: MPI ranks already fill
    /// the cores; more helps when there are fewer ranks than cores (e.g. `--unit`). Results do
    /// not depend on it, so it is not part of the configuration fingerprint.
    pub threads: usize,
    /// Science settings of the chain.
    pub chain: ChainParams,
    /// Astrometric and photometric calibration against a reference catalogue
    /// (`[singleframe.calibration]`; runs when its `reference` is set).
    pub calibration: CalibrationParams,
}

impl Default for SingleframeConfig {
    fn default() -> Self {
        Self {
            input: None,
            registry: None,
            threads: 1,
            chain: ChainParams::default(),
            calibration: CalibrationParams::default(),
        }
    }
}

/// A unit of the stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SingleframeUnit {
    /// Process one CCD (paths already resolved).
    Ccd(CcdInput),
    /// Record a visit's processed CCDs in the registry.
    Registry {
        /// The visit.
        visit: u64,
    },
    /// Fit a visit's exposure-wide astrometric solution (with `exposure_wide`).
    Exposure {
        /// The visit.
        visit: u64,
    },
    /// Write one CCD's final WCS from its visit's solution (with `exposure_wide`).
    FinalWcs {
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
    },
}

impl WorkUnit for SingleframeUnit {
    fn id(&self) -> UnitId {
        match self {
            SingleframeUnit::Ccd(c) => ccd_id(c.visit, c.ccd),
            SingleframeUnit::Registry { visit } => {
                UnitId::new().with("visit", visit).with("step", "registry")
            }
            SingleframeUnit::Exposure { visit } => exposure_id(*visit),
            SingleframeUnit::FinalWcs { visit, ccd } => final_wcs_id(*visit, *ccd),
        }
    }
}

fn exposure_id(visit: u64) -> UnitId {
    UnitId::new().with("visit", visit).with("step", "exposure")
}

fn final_wcs_id(visit: u64, ccd: u32) -> UnitId {
    UnitId::new()
        .with("visit", visit)
        .with("ccd", ccd)
        .with("step", "wcs")
}

fn ccd_id(visit: u64, ccd: u32) -> UnitId {
    UnitId::new().with("visit", visit).with("ccd", ccd)
}

/// What a CCD unit hands to its visit's registry unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CcdSummary {
    /// Visit.
    pub visit: u64,
    /// CCD.
    pub ccd: u32,
    /// Band.
    pub band: String,
    /// Exposure time, s.
    pub exposure_time: f64,
    /// PSF FWHM, pixels: the header's `PSFFWHM` (the stars' radial-profile FWHM when fitted).
    pub psf_fwhm: f64,
    /// Corners (ra, dec) in degrees, in pixel order (1,1), (W,1), (W,H), (1,H) (outer edges).
    pub corners: [(f64, f64); 4],
    /// Calibrated exposure.
    pub calexp: PathBuf,
    /// Source catalogue.
    pub catalog: PathBuf,
    /// Number of sources.
    pub sources: usize,
    /// The fitted WCS, when calibration ran and succeeded.
    pub astrometry: Option<AstrometrySummary>,
    /// The zero point, when calibration ran and found one.
    pub zero_point: Option<ZeroPointSummary>,
}

/// What a CCD unit hands to its visit's exposure unit (with `exposure_wide`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CcdForVisit {
    /// The CCD's summary (its intermediate products and own fit).
    pub summary: CcdSummary,
    /// The raw header's WCS as FITS keyrecords (the camera geometry).
    pub header_wcs: String,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
    /// Its matches to the reference catalogue.
    pub matches: Vec<Match>,
}

/// The exposure unit's value: the visit's solution, for its follow-up units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitWcs {
    /// The visit.
    pub visit: u64,
    /// Matches used by the visit's fit.
    pub n_matches: usize,
    /// RMS of their 2-D residuals, arcsec.
    pub rms_arcsec: f64,
    /// Order of the fitted distortion (1: none).
    pub order: usize,
    /// Per CCD that reached the exposure unit.
    pub ccds: Vec<CcdFinalWcs>,
}

/// One CCD's part of [`VisitWcs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CcdFinalWcs {
    /// The CCD's summary from its own unit.
    pub summary: CcdSummary,
    /// Its raw header's WCS (keyrecords).
    pub header_wcs: String,
    /// Its final WCS, or why the visit cannot place it.
    pub wcs: Result<AstrometrySummary, String>,
}

/// The astrometric solution of a CCD, for the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AstrometrySummary {
    /// The fitted TAN-SIP WCS as FITS keyrecords (80 characters each, concatenated).
    pub wcs: String,
    /// Matches used by the fit.
    pub n_matches: usize,
    /// RMS of the 2-D residuals of the matches, arcsec.
    pub rms_arcsec: f64,
}

/// The photometric zero point of a CCD, for the registry: `mag = zero_point − 2.5 log10(e-)`
/// (electrons in the exposure, `FLUX_PSF`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroPointSummary {
    /// Zero point, mag.
    pub zero_point: f64,
    /// Its 1σ error, mag.
    pub error: f64,
    /// Stars used.
    pub n_stars: usize,
}

/// A `[singleframe]` table the stage refuses; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of range, or conflicts with another key.
    #[error(transparent)]
    Value(#[from] KeyError),
    /// A key that has no default is not set.
    #[error(transparent)]
    Missing(#[from] UnsetKey),
}

impl ConfigError {
    /// A [`ConfigError::Value`].
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Value(KeyError::new(key, problem))
    }
}

/// A CCD list ([`Singleframe::read_list`]) that cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The list.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a CCD list in JSON.
    #[error("{path}: not a CCD list: {source}")]
    Json {
        /// The list.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The list's `format` is not [`CCD_LIST_FORMAT`].
    #[error("{path}: format '{found}', expected '{CCD_LIST_FORMAT}'")]
    Format {
        /// The list.
        path: PathBuf,
        /// Its `format`.
        found: String,
    },
    /// A CCD appears twice.
    #[error("{path}: visit {visit} ccd {ccd} is listed twice")]
    Twice {
        /// The list.
        path: PathBuf,
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
    },
}

/// Errors of a CCD unit, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CcdError {
    /// Reading or writing a FITS file failed.
    #[error(transparent)]
    Fits(#[from] FitsError),
    /// The header WCS is missing or refused (names the file, HDU and keyword).
    #[error(transparent)]
    Wcs(#[from] WcsError),
    /// The reference catalogue could not be read (names the file; shared by the units of a
    /// process, which read it once).
    #[error(transparent)]
    Reference(Arc<ReferenceError>),
    /// The header has an unusable value.
    #[error("{path}: primary HDU: {message}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Decodes the value of input `unit` (postcard, as the engine carries values).
fn decode_value<T: serde::de::DeserializeOwned>(
    unit: &UnitId,
    bytes: &[u8],
) -> Result<T, UnitFailure> {
    postcard::from_bytes(bytes).map_err(|e| {
        UnitFailure::bad_input(format!(
            "the value of input unit {unit} cannot be decoded: {e}"
        ))
    })
}

/// The stage.
#[derive(Debug, Clone)]
pub struct Singleframe {
    config: SingleframeConfig,
    input: PathBuf,
    /// The reference catalogue, read by the first CCD unit that needs it.
    refcat: OnceLock<Result<Arc<ReferenceCatalog>, Arc<ReferenceError>>>,
}

impl Singleframe {
    /// Checks the configuration (naming the key) and builds the stage.
    pub fn new(config: SingleframeConfig) -> Result<Self, ConfigError> {
        let input = config.input.clone().ok_or(ConfigError::Missing(UnsetKey {
            key: "singleframe.input",
            what: "the CCD list, e.g. units.json; or --input",
        }))?;
        config.chain.validate()?;
        if config.threads == 0 {
            return Err(ConfigError::value(
                "singleframe.threads",
                "must be at least 1",
            ));
        }
        config.calibration.validate()?;
        Ok(Self {
            config,
            input,
            refcat: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SingleframeConfig {
        &self.config
    }

    /// Reads the CCD list, resolving its paths against the list's directory.
    pub fn read_list(path: &Path) -> Result<Vec<CcdInput>, ListError> {
        let text = std::fs::read(path).map_err(|source| ListError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let list: CcdList = serde_json::from_slice(&text).map_err(|source| ListError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if list.format != CCD_LIST_FORMAT {
            return Err(ListError::Format {
                path: path.to_path_buf(),
                found: list.format,
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(list.units.len());
        for u in list.units {
            if !seen.insert((u.visit, u.ccd)) {
                return Err(ListError::Twice {
                    path: path.to_path_buf(),
                    visit: u.visit,
                    ccd: u.ccd,
                });
            }
            out.push(CcdInput {
                raw: resolve(&u.raw),
                bias: u.bias.as_ref().map(resolve),
                flat: u.flat.as_ref().map(resolve),
                variance: u.variance.as_ref().map(resolve),
                ..u
            });
        }
        Ok(out)
    }

    fn registry_path(&self, run_dir: &Path) -> PathBuf {
        self.config
            .registry
            .clone()
            .unwrap_or_else(|| run_dir.join("registry.sqlite3"))
    }

    /// The reference catalogue when calibration is configured, read once per process.
    fn reference(&self) -> Result<Option<Arc<ReferenceCatalog>>, CcdError> {
        let Some(path) = &self.config.calibration.reference else {
            return Ok(None);
        };
        self.refcat
            .get_or_init(|| ReferenceCatalog::read(path).map(Arc::new).map_err(Arc::new))
            .clone()
            .map(Some)
            .map_err(CcdError::Reference)
    }

    fn exposure_wide(&self) -> bool {
        self.config.calibration.exposure_wide
    }

    fn run_ccd(&self, c: &CcdInput, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let refcat = self.reference().map_err(UnitFailure::bad_input)?;
        let paths = if self.exposure_wide() {
            prelim_paths(c.visit, c.ccd)
        } else {
            output_paths(c.visit, c.ccd)
        };
        let unit = SingleframeUnit::Ccd(c.clone());
        let provenance = self.provenance(&unit, &ctx.run_dir);
        let ccd = process_ccd_into(
            c,
            &self.config.chain,
            refcat.as_deref().map(|r| (r, &self.config.calibration)),
            self.config.threads,
            &ctx.run_dir,
            ctx.durable,
            paths,
            Some(&provenance),
        )
        .map_err(ccd_failure)?;
        if self.exposure_wide() {
            ctx.set_value(&ccd);
        } else {
            ctx.set_value(&ccd.summary);
        }
        Ok(Outcome::Done)
    }

    /// Provenance of `unit`'s outputs: this stage, the unit, the configuration's fingerprint
    /// and the inputs its connections declare.
    fn provenance(&self, unit: &SingleframeUnit, run_dir: &Path) -> Provenance {
        Provenance::of_unit(self, unit, run_dir)
    }

    /// The exposure-wide fit of a visit from its CCDs' values.
    fn run_exposure(&self, visit: u64, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let values: Vec<(UnitId, CcdForVisit)> = ctx.input_values()?;
        if values.is_empty() {
            return Ok(Outcome::NoWork {
                reason: format!("no CCD of visit {visit} was processed"),
            });
        }
        let mut headers = Vec::with_capacity(values.len());
        for (id, v) in &values {
            let name = format!("header WCS of {id} ({})", v.summary.calexp.display());
            headers.push(Wcs::from_header(&name, &v.header_wcs).map_err(UnitFailure::bad_input)?);
        }
        let ccds: Vec<CcdForExposure<'_>> = values
            .iter()
            .zip(&headers)
            .map(|((_, v), header)| CcdForExposure {
                ccd: v.summary.ccd,
                header,
                width: v.width,
                height: v.height,
                matches: &v.matches,
            })
            .collect();
        let solution = exposure::solve_visit(visit, &ccds, &self.config.calibration)
            .map_err(UnitFailure::bad_input)?;
        tracing::info!(
            "visit {visit}: exposure-wide WCS from {} matches over {} CCDs, RMS {:.4}\", order {}",
            solution.n_matches,
            ccds.len(),
            solution.rms_arcsec,
            solution.order
        );
        let ccds = values
            .into_iter()
            .zip(solution.ccds)
            .map(|((_, v), (_, placed))| CcdFinalWcs {
                summary: v.summary,
                header_wcs: v.header_wcs,
                wcs: placed
                    .map(|s| AstrometrySummary {
                        wcs: s.tan_sip.keyrecords().concat(),
                        n_matches: s.n_matches,
                        rms_arcsec: s.rms_arcsec,
                    })
                    .map_err(|e| e.to_string()),
            })
            .collect();
        ctx.set_value(&VisitWcs {
            visit,
            n_matches: solution.n_matches,
            rms_arcsec: solution.rms_arcsec,
            order: solution.order,
            ccds,
        });
        Ok(Outcome::Done)
    }

    /// Writes one CCD's final products with its visit's WCS.
    fn run_final_wcs(
        &self,
        visit: u64,
        ccd: u32,
        ctx: &UnitContext,
    ) -> Result<Outcome, UnitFailure> {
        let values: Vec<(UnitId, VisitWcs)> = ctx.input_values()?;
        let Some((_, solution)) = values.into_iter().next() else {
            return Ok(Outcome::NoWork {
                reason: format!("visit {visit} has no exposure-wide solution"),
            });
        };
        let Some(mine) = solution.ccds.iter().find(|c| c.summary.ccd == ccd) else {
            return Ok(Outcome::NoWork {
                reason: format!("ccd {ccd} did not reach the exposure unit of visit {visit}"),
            });
        };
        let wcs = match &mine.wcs {
            Ok(w) => w,
            Err(reason) => {
                return Ok(Outcome::NoWork {
                    reason: reason.clone(),
                });
            }
        };
        let provenance = self.provenance(&SingleframeUnit::FinalWcs { visit, ccd }, &ctx.run_dir);
        let summary =
            write_final_products(&ctx.run_dir, &solution, mine, wcs, &provenance, ctx.durable)
                .map_err(ccd_failure)?;
        ctx.set_value(&summary);
        Ok(Outcome::Done)
    }

    /// The summaries a registry unit records: its CCDs' values or, with `exposure_wide`, each
    /// CCD's follow-up's (final products and WCS) where it has one, else the CCD unit's own
    /// (intermediate products, own fit: its visit could not place it, or its exposure unit
    /// failed).
    fn registry_summaries(&self, ctx: &UnitContext) -> Result<Vec<CcdSummary>, UnitFailure> {
        if !self.exposure_wide() {
            return Ok(ctx
                .input_values::<CcdSummary>()?
                .into_iter()
                .map(|v| v.1)
                .collect());
        }
        let mut own = Vec::new();
        let mut finals = Vec::new();
        for input in ctx.inputs() {
            let Some(bytes) = &input.value else { continue };
            if input.unit.get("step") == Some("wcs") {
                finals.push(decode_value::<CcdSummary>(&input.unit, bytes)?);
            } else {
                own.push(decode_value::<CcdForVisit>(&input.unit, bytes)?.summary);
            }
        }
        Ok(own
            .into_iter()
            .map(|s| finals.iter().find(|f| f.ccd == s.ccd).cloned().unwrap_or(s))
            .collect())
    }

    fn run_registry(&self, visit: u64, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        let values = self.registry_summaries(ctx)?;
        if values.is_empty() {
            return Ok(Outcome::NoWork {
                reason: format!("no CCD of visit {visit} was processed"),
            });
        }
        let mut records = Vec::with_capacity(values.len());
        let mut fits = Vec::new();
        for s in values {
            let mut corners = Vec::with_capacity(4);
            for (ra, dec) in s.corners {
                corners.push(SkyPoint::new(ra, dec).map_err(UnitFailure::bad_input)?);
            }
            let corners = [corners[0], corners[1], corners[2], corners[3]];
            // A CCD is recorded calibrated when both its WCS fit and its zero point exist.
            if let (Some(a), Some(z)) = (&s.astrometry, &s.zero_point) {
                fits.push(CcdFit {
                    visit: s.visit,
                    ccd: s.ccd,
                    wcs: a.wcs.clone(),
                    corners,
                    zero_point: z.zero_point,
                    zero_point_err: z.error,
                    astrometric_scatter: a.rms_arcsec,
                    matches: a.n_matches as u32,
                });
            }
            records.push(CcdRecord {
                visit: s.visit,
                ccd: s.ccd,
                band: s.band,
                exposure_time: s.exposure_time,
                psf_fwhm: s.psf_fwhm,
                corners,
                calexp_path: s.calexp,
                catalog_path: s.catalog,
                calibration: None,
                status: CcdStatus::Processed,
            });
        }
        let mut reg =
            Registry::open(self.registry_path(&ctx.run_dir)).map_err(UnitFailure::transient)?;
        reg.insert_ccds(&records).map_err(UnitFailure::transient)?;
        if !fits.is_empty() {
            reg.record_fits(&fits).map_err(UnitFailure::transient)?;
        }
        // The visit's marker, written once its rows are committed: the file through which
        // stages planned from ingested raw regions wait for the visit's registry rows.
        let ccds: Vec<u32> = records.iter().map(|r| r.ccd).collect();
        let marker = serde_json::json!({ "visit": visit, "ccds": ccds });
        let durability = if ctx.durable {
            skypipe_io::Durability::Synced
        } else {
            skypipe_io::Durability::ProcessCrashOnly
        };
        skypipe_io::write_atomic(
            ctx.run_dir.join(registered_path(visit)),
            marker.to_string().as_bytes(),
            durability,
        )
        .map_err(UnitFailure::bad_input)?;
        Ok(Outcome::Done)
    }
}

impl Stage for Singleframe {
    type Unit = SingleframeUnit;

    fn name(&self) -> &'static str {
        "singleframe"
    }

    fn config_fingerprint(&self) -> String {
        if self.config.calibration.reference.is_some() {
            fingerprint_of(&(&self.config.chain, &self.config.calibration))
        } else {
            fingerprint_of(&self.config.chain)
        }
    }

    fn plan(&self) -> Result<Vec<PlannedUnit<SingleframeUnit>>, PlanError> {
        let ccds = Self::read_list(&self.input).map_err(|e| PlanError::from_error(&e))?;
        let mut visits: std::collections::BTreeMap<u64, Vec<UnitId>> = Default::default();
        let mut plan = Vec::with_capacity(ccds.len() + 8);
        for c in ccds {
            visits
                .entry(c.visit)
                .or_default()
                .push(ccd_id(c.visit, c.ccd));
            plan.push(PlannedUnit::new(SingleframeUnit::Ccd(c)));
        }
        for (visit, members) in visits {
            let mut registry_after = members.clone();
            if self.exposure_wide() {
                plan.push(
                    PlannedUnit::new(SingleframeUnit::Exposure { visit })
                        .after(members.iter().cloned())
                        .tolerating_failed_inputs(),
                );
                for m in &members {
                    let ccd: u32 = m
                        .get("ccd")
                        .and_then(|c| c.parse().ok())
                        .expect("CCD ids carry their number");
                    plan.push(
                        PlannedUnit::new(SingleframeUnit::FinalWcs { visit, ccd })
                            .after([exposure_id(visit)]),
                    );
                    registry_after.push(final_wcs_id(visit, ccd));
                }
            }
            plan.push(
                PlannedUnit::new(SingleframeUnit::Registry { visit })
                    .after(registry_after)
                    .tolerating_failed_inputs(),
            );
        }
        Ok(plan)
    }

    /// A CCD unit reads its raw file and the bias, flat and variance files the list names (all
    /// prerequisites: a missing one is bad input at planning time) and writes its calexp and
    /// catalogue (with `exposure_wide`, the intermediate ones). A follow-up unit reads its
    /// CCD's intermediate calexp and catalogue and writes the final ones. Registry and exposure
    /// units declare no file: they receive values, and the registry database is not a per-unit
    /// dataset.
    fn connections(&self, unit: &SingleframeUnit, run_dir: &Path) -> Connections {
        if let SingleframeUnit::FinalWcs { visit, ccd } = unit {
            let (pre_calexp, pre_catalog) = prelim_paths(*visit, *ccd);
            let (calexp, catalog) = output_paths(*visit, *ccd);
            return Connections::new()
                .input(DATASET_CALEXP_PRELIM, run_dir.join(pre_calexp))
                .input(DATASET_SOURCES_PRELIM, run_dir.join(pre_catalog))
                .output(DATASET_CALEXP, run_dir.join(calexp))
                .output(DATASET_SOURCES, run_dir.join(catalog));
        }
        let c = match unit {
            SingleframeUnit::Ccd(c) => c,
            SingleframeUnit::Registry { visit } => {
                return Connections::new()
                    .output(DATASET_REGISTERED, run_dir.join(registered_path(*visit)));
            }
            _ => return Connections::new(),
        };
        let mut conn = Connections::new().prerequisite(DATASET_RAW, &c.raw);
        for p in [&c.bias, &c.flat].into_iter().flatten() {
            conn = conn.prerequisite(DATASET_CALIBRATION, p);
        }
        if let Some(v) = &c.variance {
            conn = conn.prerequisite(DATASET_VARIANCE, v);
        }
        if let Some(reference) = &self.config.calibration.reference {
            conn = conn.prerequisite(DATASET_REFERENCE, reference);
        }
        if self.exposure_wide() {
            let (calexp, catalog) = prelim_paths(c.visit, c.ccd);
            conn.output(DATASET_CALEXP_PRELIM, run_dir.join(calexp))
                .output(DATASET_SOURCES_PRELIM, run_dir.join(catalog))
        } else {
            let (calexp, catalog) = output_paths(c.visit, c.ccd);
            conn.output(DATASET_CALEXP, run_dir.join(calexp))
                .output(DATASET_SOURCES, run_dir.join(catalog))
        }
    }

    fn run(&self, unit: &SingleframeUnit, ctx: &UnitContext) -> Result<Outcome, UnitFailure> {
        match unit {
            SingleframeUnit::Ccd(c) => self.run_ccd(c, ctx),
            SingleframeUnit::Registry { visit } => self.run_registry(*visit, ctx),
            SingleframeUnit::Exposure { visit } => self.run_exposure(*visit, ctx),
            SingleframeUnit::FinalWcs { visit, ccd } => self.run_final_wcs(*visit, *ccd, ctx),
        }
    }
}

/// A CCD or follow-up unit's error as a unit failure: failed writes are transient, the rest
/// bad input.
fn ccd_failure(e: CcdError) -> UnitFailure {
    match &e {
        CcdError::Fits(FitsError::Write { .. } | FitsError::Io(_)) => UnitFailure::transient(e),
        _ => UnitFailure::bad_input(e),
    }
}

/// Path of a visit's registry marker (`{"visit": V, "ccds": [...]}`, written by its registry
/// unit after the visit's rows are committed), relative to the run directory.
pub fn registered_path(visit: u64) -> PathBuf {
    PathBuf::from(format!("singleframe/registered/v{visit:04}.json"))
}

/// Output paths of a CCD, relative to the run directory.
pub fn output_paths(visit: u64, ccd: u32) -> (PathBuf, PathBuf) {
    (
        PathBuf::from(format!("singleframe/calexp/v{visit:04}/c{ccd:02}.fits")),
        PathBuf::from(format!("singleframe/src/v{visit:04}/c{ccd:02}.fits")),
    )
}

/// Paths of a CCD unit's intermediate calexp and catalogue with `exposure_wide`, relative to
/// the run directory (the follow-up writes the final ones at [`output_paths`]).
pub fn prelim_paths(visit: u64, ccd: u32) -> (PathBuf, PathBuf) {
    (
        PathBuf::from(format!(
            "singleframe/prelim/calexp/v{visit:04}/c{ccd:02}.fits"
        )),
        PathBuf::from(format!("singleframe/prelim/src/v{visit:04}/c{ccd:02}.fits")),
    )
}

/// What the raw file's header says.
#[derive(Debug)]
pub struct RawHeader {
    /// Band (`BAND`, else `FILTER`).
    pub band: String,
    /// `EXPTIME`, s.
    pub exptime: f64,
    /// The readout: amplifiers with their sections, gains, read noises and saturation levels,
    /// and the trim ([`Readout::from_keywords`]).
    pub readout: Readout,
    /// The header WCS (any celestial form WCSLIB reads: CD, PC+CDELT, CROTA2, TAN-SIP, TPV, …),
    /// its reference pixel moved by the trim so that it describes the trimmed image.
    pub wcs: Wcs,
}

/// Reads and checks the keywords of a raw exposure's primary HDU: band, exposure time, the
/// readout geometry (sections and per-amplifier gains, read noises and saturation levels;
/// errors name the file and the keyword) and the header WCS, moved to the trimmed image.
pub fn read_raw_header(r: &mut FitsReader) -> Result<RawHeader, CcdError> {
    let p = Hdu::Primary;
    let band = match r.key_string_opt(p, "BAND")? {
        Some(b) => b,
        None => r.key_string(p, "FILTER")?,
    };
    let exptime = r.key_f64(p, "EXPTIME")?;
    let path = r.path().to_path_buf();
    let bad = |message: String| CcdError::Header {
        path: path.clone(),
        message,
    };
    if exptime < 0.0 {
        return Err(bad(format!("EXPTIME must be ≥ 0 (got {exptime})")));
    }
    let axis = |r: &mut FitsReader, key: &str| -> Result<usize, CcdError> {
        let n = r.key_i64(p, key)?;
        usize::try_from(n).map_err(|_| bad(format!("keyword {key} = {n} is not a size")))
    };
    let (width, height) = (axis(r, "NAXIS1")?, axis(r, "NAXIS2")?);
    let mut keys = ReadoutKeywords::default();
    for key in ReadoutKeywords::section_keys() {
        if let Some(v) = r.key_string_opt(p, &key)? {
            keys.sections.insert(key, v);
        }
    }
    for key in ReadoutKeywords::number_keys() {
        if let Some(v) = r.key_f64_opt(p, &key)? {
            keys.numbers.insert(key, v);
        }
    }
    let readout = Readout::from_keywords(width, height, &keys).map_err(|e| bad(e.to_string()))?;
    let wcs = crate::wcs::read_primary_wcs_moved(&path, readout.trim.x0, readout.trim.y0)?;
    Ok(RawHeader {
        band,
        exptime,
        readout,
        wcs,
    })
}

/// A master bias or flat, or a variance image, in the trimmed shape: given trimmed, it is used
/// as it is; given in the raw frame's shape, it is cut to the trim. Any other shape is an error
/// naming the file and both accepted shapes.
fn to_trimmed(
    img: Array2<f32>,
    readout: &Readout,
    path: &Path,
    hdu: Hdu<'_>,
) -> Result<Image<f32>, CcdError> {
    let (tw, th) = readout.trimmed_shape();
    let (rows, cols) = img.dim();
    if (cols, rows) == (tw, th) {
        return Ok(to_image(img));
    }
    if (cols, rows) == (readout.width, readout.height) {
        return Ok(crate::isr::cut(&to_image(img), &readout.trim));
    }
    let expected = if readout.is_plain() {
        format!("[{th}, {tw}] (as the science image)")
    } else {
        format!(
            "[{th}, {tw}] (trimmed to {}) or [{}, {}] (untrimmed, as the raw frame)",
            readout.trim.to_fits(),
            readout.height,
            readout.width
        )
    };
    Err(CcdError::Fits(FitsError::Shape {
        path: path.to_path_buf(),
        hdu: hdu.to_string(),
        found: vec![rows, cols],
        expected,
    }))
}

fn to_image(a: Array2<f32>) -> Image<f32> {
    let (h, w) = a.dim();
    let data = if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    };
    Image::from_vec(w, h, data)
}

/// Moves an image's pixels into an array (no copy), leaving the image without data.
fn take_array<T>(img: &mut Image<T>) -> Array2<T> {
    Array2::from_shape_vec((img.height, img.width), std::mem::take(&mut img.data))
        .expect("image shape matches its data")
}

/// Reads one CCD's inputs (validated), runs the chain on `threads` threads, writes the
/// calibrated exposure and the catalogue under `run_dir`, and returns the registry summary.
/// The CPU time of every step (`read`, the chain's steps, `write`) is logged at debug level
/// (`RUST_LOG=skypipe_optical=debug`) as `steps (cpu s): read=… isr=… … write=…`.
pub fn process_ccd(
    c: &CcdInput,
    chain: &ChainParams,
    threads: usize,
    run_dir: &Path,
    durable: bool,
) -> Result<CcdSummary, CcdError> {
    process_ccd_calibrated(c, chain, None, threads, run_dir, durable)
}

/// [`process_ccd`] followed, when `calibration` is given, by the astrometric and photometric
/// calibration against the reference catalogue (step `calibration`): the outputs then carry
/// the fitted WCS (the header WCS in HDU `HDRWCS` of the calibrated exposure), the catalogue
/// `RA`/`DEC` from it, calibrated magnitudes and the calibration keywords.
pub fn process_ccd_calibrated(
    c: &CcdInput,
    chain: &ChainParams,
    calibration: Option<(&ReferenceCatalog, &CalibrationParams)>,
    threads: usize,
    run_dir: &Path,
    durable: bool,
) -> Result<CcdSummary, CcdError> {
    let paths = output_paths(c.visit, c.ccd);
    process_ccd_into(
        c,
        chain,
        calibration,
        threads,
        run_dir,
        durable,
        paths,
        None,
    )
    .map(|v| v.summary)
}

/// [`process_ccd_calibrated`] writing the calexp and catalogue at `paths` (relative to
/// `run_dir`), with `provenance` in their primary headers, returning what the exposure-wide
/// step needs of the CCD.
#[allow(clippy::too_many_arguments)]
fn process_ccd_into(
    c: &CcdInput,
    chain: &ChainParams,
    calibration: Option<(&ReferenceCatalog, &CalibrationParams)>,
    threads: usize,
    run_dir: &Path,
    durable: bool,
    paths: (PathBuf, PathBuf),
    provenance: Option<&Provenance>,
) -> Result<CcdForVisit, CcdError> {
    let mut laps = Laps::start();
    let mut r = FitsReader::open(&c.raw)?;
    let mut header = read_raw_header(&mut r)?;
    let header_band = band_from_list(c, &mut header);
    if chain.overscan == OverscanMethod::MedianPerRow {
        header
            .readout
            .check_overscan_rows()
            .map_err(|e| CcdError::Header {
                path: c.raw.clone(),
                message: e.to_string(),
            })?;
    }
    let raw_shape = Some((header.readout.height, header.readout.width));
    let raw = to_image(r.image_f32_checked(Hdu::Primary, raw_shape)?);
    let mut variance_in = if r.has_hdu("VARIANCE") {
        let v = r.image_f32_checked(Hdu::Name("VARIANCE"), None)?;
        Some(to_trimmed(
            v,
            &header.readout,
            &c.raw,
            Hdu::Name("VARIANCE"),
        )?)
    } else {
        None
    };
    drop(r);
    let read_aux = |p: &Option<PathBuf>| -> Result<Option<Image<f32>>, CcdError> {
        match p {
            None => Ok(None),
            Some(p) => {
                let img = FitsReader::open(p)?.image_f32_checked(Hdu::Primary, None)?;
                Ok(Some(to_trimmed(img, &header.readout, p, Hdu::Primary)?))
            }
        }
    };
    let bias = read_aux(&c.bias)?;
    let flat = read_aux(&c.flat)?;
    if let Some(v) = read_aux(&c.variance)? {
        variance_in = Some(v);
    }
    laps.lap("read");
    let mut out = pipeline::process_with_variance(
        raw,
        bias.as_ref(),
        flat.as_ref(),
        variance_in.as_ref(),
        &header.readout,
        chain,
        threads,
    );
    drop((bias, flat, variance_in));
    let mut steps = laps.steps;
    steps.extend(out.timings.iter().copied());
    let mut laps = Laps::start();
    let cal = match calibration {
        None => None,
        Some((refcat, p)) => {
            let unit = format!("singleframe[{}]", ccd_id(c.visit, c.ccd));
            let ccd = calibration::CcdToCalibrate {
                header: &header.wcs,
                band: &header.band,
                sources: &out.sources,
                psf_fwhm: out.psf_fwhm,
                width: out.image.width,
                height: out.image.height,
            };
            let cal = calibration::calibrate_ccd(refcat, &ccd, p, &unit)?;
            laps.lap("calibration");
            Some(cal)
        }
    };
    let (calexp_rel, catalog_rel) = paths;
    let (width, height) = (out.image.width, out.image.height);
    let history = header_band.as_deref();
    write_calexp(
        &run_dir.join(&calexp_rel),
        c,
        &header,
        cal.as_ref(),
        history,
        &mut out,
        durable,
        provenance,
    )?;
    write_catalog(
        &run_dir.join(&catalog_rel),
        c,
        &header,
        cal.as_ref(),
        history,
        &out,
        durable,
        provenance,
    )?;
    laps.lap("write");
    steps.extend(laps.steps);
    tracing::debug!(
        visit = c.visit,
        ccd = c.ccd,
        "steps (cpu s): {}",
        crate::timing::summary(&steps)
    );
    let corners = corners_on_sky(output_wcs(&header, cal.as_ref()), width, height, &c.raw)?;
    let astrometry = cal.as_ref().and_then(|k| k.astrometry.as_ref().ok());
    let zero_point = cal.as_ref().and_then(|k| k.zero_point.as_ref().ok());
    let summary = CcdSummary {
        visit: c.visit,
        ccd: c.ccd,
        band: header.band.clone(),
        exposure_time: header.exptime,
        psf_fwhm: reported_psf_fwhm(&out),
        corners,
        calexp: calexp_rel,
        catalog: catalog_rel,
        sources: out.sources.len(),
        astrometry: astrometry.map(|a| AstrometrySummary {
            wcs: a.tan_sip.keyrecords().concat(),
            n_matches: a.n_matches,
            rms_arcsec: a.rms_arcsec,
        }),
        zero_point: zero_point.map(|z| ZeroPointSummary {
            zero_point: z.zero_point,
            error: z.error,
            n_stars: z.n_used,
        }),
    };
    Ok(CcdForVisit {
        summary,
        header_wcs: header.wcs.to_records()?.concat(),
        width,
        height,
        matches: cal.map(|k| k.matches).unwrap_or_default(),
    })
}

/// Splits concatenated 80-character keyrecords.
fn records_of(text: &str) -> Vec<String> {
    text.as_bytes()
        .chunks(80)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

/// Writes a CCD's final calexp and catalogue: copies of its intermediate ones with the WCS
/// cards replaced by the visit's solution for it (`WCSFIT = 1`, the astrometry keywords of the
/// visit's fit, `HDRWCS` kept or added), and the catalogue's `RA`/`DEC` from that WCS. Returns
/// the CCD's registry summary with the final products.
fn write_final_products(
    run_dir: &Path,
    visit: &VisitWcs,
    ccd: &CcdFinalWcs,
    wcs: &AstrometrySummary,
    provenance: &Provenance,
    durable: bool,
) -> Result<CcdSummary, CcdError> {
    let s = &ccd.summary;
    let (pre_calexp, pre_catalog) = prelim_paths(s.visit, s.ccd);
    let (calexp_rel, catalog_rel) = output_paths(s.visit, s.ccd);
    let header_name = format!("{}: raw header WCS", run_dir.join(&pre_calexp).display());
    let header = Wcs::from_header(&header_name, &ccd.header_wcs)?;
    let final_name = format!("exposure-wide WCS of visit {} ccd {}", s.visit, s.ccd);
    let final_wcs = Wcs::from_header(&final_name, &wcs.wcs)?;
    let new_cards = crate::wcs::cards_of_records(&final_name, &records_of(&wcs.wcs))?;
    // The WCS cards the CCD unit wrote: its own fit's, else the header's.
    let old_cards = match &s.astrometry {
        Some(a) => crate::wcs::cards_of_records(&final_name, &records_of(&a.wcs))?,
        None => crate::wcs::header_cards(&header)?,
    };
    let mut stale: Vec<&str> = old_cards.iter().map(|c| c.key.as_str()).collect();
    stale.extend(new_cards.iter().map(|c| c.key.as_str()));
    stale.push("ASTNOTE");
    let fit_cards = [
        Card::int("WCSFIT", 1, "1: the exposure-wide WCS is attached"),
        Card::int("ASTFIT", 1, "1: WCS fitted to the reference catalogue"),
        Card::int(
            "ASTNMAT",
            wcs.n_matches as i64,
            "this CCD's matches in the visit's fit",
        ),
        Card::real(
            "ASTRMS",
            wcs.rms_arcsec,
            "[arcsec] 2-D RMS of match residuals",
        ),
        Card::int(
            "ASTORDER",
            visit.order as i64,
            "order of the exposure-wide distortion",
        ),
        Card::int(
            "EXPNMAT",
            visit.n_matches as i64,
            "matches in the visit's fit",
        ),
        Card::real(
            "EXPRMS",
            visit.rms_arcsec,
            "[arcsec] 2-D RMS of the visit's fit",
        ),
    ];
    let src_calexp = run_dir.join(&pre_calexp);
    let has_hdrwcs = FitsReader::open(&src_calexp)?.has_hdu("HDRWCS");
    let mut w = FitsWriter::edit_copy(&src_calexp, run_dir.join(&calexp_rel), durable)?;
    w.delete_keys(Hdu::Primary, &["ASTNOTE"])?;
    w.set_keys(Hdu::Primary, &fit_cards)?;
    for hdu in ["IMAGE", "MASK", "VARIANCE"] {
        w.delete_keys(Hdu::Name(hdu), &stale)?;
        w.set_keys(Hdu::Name(hdu), &new_cards)?;
    }
    provenance.write_fits(&mut w)?;
    if !has_hdrwcs {
        // The header WCS the solution replaces (SIP cards cannot live in an alternate WCS).
        w.image_f32(
            "HDRWCS",
            &Array2::zeros((0, 0)),
            &crate::wcs::header_cards(&header)?,
        )?;
    }
    w.commit()?;

    let src_catalog = run_dir.join(&pre_catalog);
    let mut r = FitsReader::open(&src_catalog)?;
    let table = Hdu::Name("SOURCES");
    let x = r.column_f64(table, "X")?;
    let y = r.column_f64(table, "Y")?;
    drop(r);
    let pixels: Vec<[f64; 2]> = x.iter().zip(&y).map(|(x, y)| [*x, *y]).collect();
    let sky = sky_of(&final_wcs, &pixels, &src_catalog)?;
    let mut w = FitsWriter::edit_copy(&src_catalog, run_dir.join(&catalog_rel), durable)?;
    for hdu in [Hdu::Primary, table] {
        w.delete_keys(hdu, &["ASTNOTE"])?;
        w.set_keys(hdu, &fit_cards)?;
    }
    w.delete_keys(Hdu::Primary, &stale)?;
    w.set_keys(Hdu::Primary, &new_cards)?;
    provenance.write_fits(&mut w)?;
    w.set_column_f64(table, "RA", &sky.iter().map(|p| p.0).collect::<Vec<_>>())?;
    w.set_column_f64(table, "DEC", &sky.iter().map(|p| p.1).collect::<Vec<_>>())?;
    w.commit()?;

    let (width, height) = image_size(&src_calexp)?;
    let corners = corners_on_sky(&final_wcs, width, height, &src_calexp)?;
    Ok(CcdSummary {
        corners,
        calexp: calexp_rel,
        catalog: catalog_rel,
        astrometry: Some(wcs.clone()),
        ..s.clone()
    })
}

/// (width, height) of a calexp's IMAGE, from its header.
fn image_size(path: &Path) -> Result<(usize, usize), CcdError> {
    let mut r = FitsReader::open(path)?;
    let w = r.key_i64(Hdu::Name("IMAGE"), "NAXIS1")?;
    let h = r.key_i64(Hdu::Name("IMAGE"), "NAXIS2")?;
    Ok((w.max(0) as usize, h.max(0) as usize))
}

/// The WCS the outputs carry: the fitted one if calibration found it, else the header's.
fn output_wcs<'a>(header: &'a RawHeader, cal: Option<&'a CcdCalibration>) -> &'a Wcs {
    match cal.map(|k| &k.astrometry) {
        Some(Ok(a)) => &a.wcs,
        _ => &header.wcs,
    }
}

/// The WCS cards of the outputs: the fitted TAN-SIP as [`TanSip::keyrecords`] writes it, else
/// the header WCS as WCSLIB writes it.
///
/// [`TanSip::keyrecords`]: skypipe_astrometry::tansip::TanSip::keyrecords
fn output_wcs_cards(h: &RawHeader, cal: Option<&CcdCalibration>) -> Result<Vec<Card>, CcdError> {
    match cal.map(|k| &k.astrometry) {
        Some(Ok(a)) => Ok(crate::wcs::cards_of_records(
            a.wcs.header_name(),
            &a.tan_sip.keyrecords(),
        )?),
        _ => Ok(crate::wcs::header_cards(&h.wcs)?),
    }
}

/// Calibration keywords (none without calibration).
fn calibration_cards(cal: Option<&CcdCalibration>) -> Vec<Card> {
    let Some(cal) = cal else {
        return Vec::new();
    };
    let mut cards = Vec::new();
    match &cal.astrometry {
        Ok(a) => cards.extend([
            Card::int("ASTFIT", 1, "1: WCS fitted to the reference catalogue"),
            Card::int("ASTNMAT", a.n_matches as i64, "astrometric matches used"),
            Card::real(
                "ASTRMS",
                a.rms_arcsec,
                "[arcsec] 2-D RMS of match residuals",
            ),
            Card::int(
                "ASTORDER",
                a.tan_sip.sip.as_ref().map_or(1, |s| s.order) as i64,
                "SIP order of the fitted WCS (1: pure TAN)",
            ),
        ]),
        Err(why) => cards.extend([
            Card::int("ASTFIT", 0, "0: header WCS kept (no fit)"),
            Card::int("ASTNMAT", 0, "astrometric matches used"),
            Card::text(
                "ASTNOTE",
                &truncate(&why.to_string()),
                "why the header WCS was kept",
            ),
        ]),
    }
    match &cal.zero_point {
        Ok(z) => cards.extend([
            Card::int("PHOTFIT", 1, "1: zero point from the reference catalogue"),
            Card::real(
                "MAGZERO",
                z.zero_point,
                "[mag] mag = MAGZERO - 2.5 log10(e-)",
            ),
            Card::real("MAGZERR", z.error, "[mag] error of MAGZERO"),
            Card::int("PHOTNMAT", z.n_used as i64, "stars used for MAGZERO"),
        ]),
        Err(why) => cards.extend([
            Card::int("PHOTFIT", 0, "0: no zero point"),
            Card::text(
                "PHOTNOTE",
                &truncate(&why.to_string()),
                "why there is no zero point",
            ),
        ]),
    }
    cards
}

/// A header string value fits in one card (68 characters).
fn truncate(s: &str) -> String {
    s.chars().take(68).collect()
}

/// The CCD list's band wins over the header's: when they differ, logs a warning naming the unit
/// and both values, sets `header.band` to the list's, and returns the header's value (written to
/// the outputs' primary HDU as `HDRBAND`).
fn band_from_list(c: &CcdInput, header: &mut RawHeader) -> Option<String> {
    if header.band == c.band {
        return None;
    }
    tracing::warn!(
        "visit={},ccd={}: the CCD list's band '{}' overrides the header's '{}' ({})",
        c.visit,
        c.ccd,
        c.band,
        header.band,
        c.raw.display()
    );
    Some(std::mem::replace(&mut header.band, c.band.clone()))
}

/// Sky positions (ra, dec) of 1-based pixels through the header WCS; a pixel without one
/// (outside the projection's domain) is a header error naming the file.
fn sky_of(wcs: &Wcs, pixels: &[[f64; 2]], raw: &Path) -> Result<Vec<(f64, f64)>, CcdError> {
    let sky = wcs.pixel_to_sky(pixels)?;
    pixels
        .iter()
        .zip(sky)
        .map(|(p, s)| {
            s.map(|s| (s[0], s[1])).ok_or_else(|| CcdError::Header {
                path: raw.to_path_buf(),
                message: format!(
                    "the WCS gives no sky position for pixel ({}, {})",
                    p[0], p[1]
                ),
            })
        })
        .collect()
}

/// The sky positions of the outer corners of a `width` × `height` image, in the order of
/// [`CcdSummary::corners`].
fn corners_on_sky(
    wcs: &Wcs,
    width: usize,
    height: usize,
    raw: &Path,
) -> Result<[(f64, f64); 4], CcdError> {
    let (w, h) = (width as f64, height as f64);
    let pixels = [
        [0.5, 0.5],
        [w + 0.5, 0.5],
        [w + 0.5, h + 0.5],
        [0.5, h + 0.5],
    ];
    let sky = sky_of(wcs, &pixels, raw)?;
    Ok([sky[0], sky[1], sky[2], sky[3]])
}

/// The PSF FWHM a CCD reports (header `PSFFWHM`, registry): the half-maximum width of the
/// stars' radial profile when it was fitted, else the moment width that drove the chain.
fn reported_psf_fwhm(out: &ChainOutput) -> f64 {
    out.psf_profile.map_or(out.psf_fwhm, |p| p.fwhm)
}

fn common_cards(
    c: &CcdInput,
    h: &RawHeader,
    cal: Option<&CcdCalibration>,
    header_band: Option<&str>,
    out: &ChainOutput,
) -> Vec<Card> {
    let mut cards = vec![
        Card::int("VISIT", c.visit as i64, "visit (exposure) number"),
        Card::int("CCD", i64::from(c.ccd), "CCD number"),
        Card::text("BAND", &h.band, "filter band"),
        Card::text("FILTER", &h.band, "filter band"),
        Card::real("EXPTIME", h.exptime, "[s] exposure time"),
        Card::real(
            "PSFFWHM",
            reported_psf_fwhm(out),
            "[pix] FWHM of the stars' radial profile",
        ),
        Card::int(
            "PSFMEAS",
            i64::from(out.psf_profile.is_some()),
            "1 if PSFFWHM was measured",
        ),
        Card::real(
            "PSFGWID",
            out.psf_fwhm,
            "[pix] Gaussian-equivalent FWHM from moments",
        ),
        Card::real(
            "APCORR",
            out.aperture_correction,
            "aperture/PSF flux ratio applied",
        ),
        Card::real(
            "BKGRMS",
            out.background.typical_rms(),
            "[e-] typical sky noise",
        ),
        Card::int(
            "NCRPIX",
            out.cosmic_ray_pixels as i64,
            "cosmic-ray pixels found",
        ),
        Card::int("NSATPIX", out.saturated_pixels as i64, "saturated pixels"),
        Card::int("WCSFIT", 0, "1 once the exposure-wide WCS fit is attached"),
        Card::int("ZPFIT", 0, "1 once the photometric zero point is attached"),
    ];
    // The overscan level subtracted per amplifier (`OVSCN` for a single-amplifier frame).
    for (amp, level) in h.readout.amplifiers.iter().zip(&out.overscan_levels) {
        if amp.overscan.is_some() {
            cards.push(Card::real(
                &format!("OVSCN{}", amp.name),
                *level,
                "[adu] mean overscan level subtracted",
            ));
        }
    }
    cards.extend(calibration_cards(cal));
    if let Some(hb) = header_band {
        cards.push(Card::text(
            "HDRBAND",
            hb,
            "raw header's band; BAND is the CCD list's",
        ));
    }
    cards
}

/// Writes the calibrated exposure, moving the image, mask and variance planes out of `out`
/// (they are not needed afterwards; this saves a copy of each).
#[allow(clippy::too_many_arguments)]
fn write_calexp(
    path: &Path,
    c: &CcdInput,
    h: &RawHeader,
    cal: Option<&CcdCalibration>,
    header_band: Option<&str>,
    out: &mut ChainOutput,
    durable: bool,
    provenance: Option<&Provenance>,
) -> Result<(), CcdError> {
    let wcs_cards = output_wcs_cards(h, cal)?;
    let mut w = FitsWriter::create(path, durable, None)?;
    w.primary_keys(&common_cards(c, h, cal, header_band, out))?;
    if let Some(p) = provenance {
        p.write_fits(&mut w)?;
    }
    let mut img_cards = wcs_cards.clone();
    img_cards.push(Card::text("BUNIT", "electron", "background subtracted"));
    img_cards.push(Card::real(
        "GAIN",
        1.0,
        "[e-/electron] the image is in electrons",
    ));
    w.image_f32("IMAGE", &take_array(&mut out.image), &img_cards)?;
    // The same bits as i32 (FITS has no unsigned 32-bit images), converted in place.
    let mut mask_i32 = Image::from_vec(
        out.mask.width,
        out.mask.height,
        std::mem::take(&mut out.mask.data)
            .into_iter()
            .map(|v| v as i32)
            .collect(),
    );
    let mut mcards = wcs_cards.clone();
    for (name, bit) in mask::NAMES {
        mcards.push(Card::int(
            &format!("MP_{name}"),
            i64::from(bit),
            "mask bit value",
        ));
    }
    w.image_i32("MASK", &take_array(&mut mask_i32), &mcards)?;
    let mut vcards = wcs_cards;
    vcards.push(Card::text("BUNIT", "electron2", "variance"));
    w.image_f32("VARIANCE", &take_array(&mut out.variance), &vcards)?;
    if matches!(cal.map(|k| &k.astrometry), Some(Ok(_))) {
        // The header WCS the fit started from (SIP cards cannot live in an alternate WCS).
        let hcards = crate::wcs::header_cards(&h.wcs)?;
        w.image_f32("HDRWCS", &Array2::zeros((0, 0)), &hcards)?;
    }
    w.commit()?;
    Ok(())
}

/// `TUNITn` of the catalogue's flux columns: electron counts as the FITS standard spells counts
/// (`ct`; `electron` is not a FITS unit string and astropy warns about it per column).
pub const FLUX_UNIT: &str = "ct";

#[allow(clippy::too_many_arguments)]
fn write_catalog(
    path: &Path,
    c: &CcdInput,
    h: &RawHeader,
    cal: Option<&CcdCalibration>,
    header_band: Option<&str>,
    out: &ChainOutput,
    durable: bool,
    provenance: Option<&Provenance>,
) -> Result<(), CcdError> {
    let s = &out.sources;
    let pixels: Vec<[f64; 2]> = s.iter().map(|s| [s.x + 1.0, s.y + 1.0]).collect();
    let sky = sky_of(output_wcs(h, cal), &pixels, &c.raw)?;
    let col = |f: &dyn Fn(&crate::measure::Source) -> f64| s.iter().map(f).collect::<Vec<f64>>();
    let columns = vec![
        Column::i64("ID", "", (1..=s.len() as i64).collect()),
        Column::f64("X", "pix", col(&|s| s.x + 1.0)),
        Column::f64("Y", "pix", col(&|s| s.y + 1.0)),
        Column::f64("RA", "deg", sky.iter().map(|p| p.0).collect()),
        Column::f64("DEC", "deg", sky.iter().map(|p| p.1).collect()),
        Column::f64("FLUX_APER", FLUX_UNIT, col(&|s| s.flux_aper)),
        Column::f64("FLUX_APER_ERR", FLUX_UNIT, col(&|s| s.flux_aper_err)),
        Column::f64("FLUX_PSF", FLUX_UNIT, col(&|s| s.flux_psf)),
        Column::f64("FLUX_PSF_ERR", FLUX_UNIT, col(&|s| s.flux_psf_err)),
        Column::f64("IXX", "pix2", col(&|s| s.ixx)),
        Column::f64("IYY", "pix2", col(&|s| s.iyy)),
        Column::f64("IXY", "pix2", col(&|s| s.ixy)),
        Column::f64("DET_SIGNIF", "", col(&|s| s.significance)),
        Column::i64(
            "FOOTPRINT",
            "",
            s.iter().map(|s| s.footprint as i64).collect(),
        ),
        Column::i32("FLAGS", "", s.iter().map(|s| s.flags as i32).collect()),
    ];
    let mut columns = columns;
    if let Some(cal) = cal {
        // Calibrated magnitudes from FLUX_PSF (NaN without a zero point or a positive flux).
        let zp = cal.zero_point.as_ref().map_or(f64::NAN, |z| z.zero_point);
        let inst: Vec<(f64, f64)> = s
            .iter()
            .map(|s| {
                skypipe_astrometry::photometry::instrumental(s.flux_psf, s.flux_psf_err)
                    .unwrap_or((f64::NAN, f64::NAN))
            })
            .collect();
        columns.push(Column::f64(
            "MAG",
            "mag",
            inst.iter().map(|m| zp + m.0).collect(),
        ));
        columns.push(Column::f64(
            "MAG_ERR",
            "mag",
            inst.iter().map(|m| m.1).collect(),
        ));
    }
    let mut cards = common_cards(c, h, cal, header_band, out);
    cards.push(Card::real(
        "APRAD",
        out.aperture_radius,
        "[pix] FLUX_APER radius",
    ));
    for (key, bit, what) in flags::NAMES {
        cards.push(Card::int(key, i64::from(bit), what));
    }
    // With WCS cards the primary HDU is a 0×0 image (NAXIS = 2, no data), not NAXIS = 0:
    // astropy warns about a 2-axis WCS in a header of no axes.
    let no_pixels = Array2::zeros((0, 0));
    let mut w = FitsWriter::create(path, durable, cal.is_some().then_some(&no_pixels))?;
    let mut primary = common_cards(c, h, cal, header_band, out);
    if cal.is_some() {
        primary.extend(output_wcs_cards(h, cal)?);
    }
    w.primary_keys(&primary)?;
    if let Some(p) = provenance {
        p.write_fits(&mut w)?;
    }
    w.table("SOURCES", &columns, &cards)?;
    w.commit()?;
    Ok(())
}
