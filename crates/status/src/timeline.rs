//! The per-rank timeline of a run directory: ledger records → [`skypipe_timeline::Timeline`].
//!
//! Every stage's ledger is read (read-only, like the rest of `skypipe-status`); for each stage
//! the records of its latest invocation are drawn, one bar per attempt: the retried attempts
//! a record lists, then its last attempt. An attempt ends at `started + elapsed_s`; records
//! of older ledgers without `started` are drawn as ending when they were recorded. Bars are
//! coloured by outcome when one stage is drawn and by stage when several are (failed and
//! retried attempts are then outlined). The rows' busy time and utilisation are those of
//! `run-report.json` when it reports the invocation drawn (the engine's own measurement),
//! otherwise the attempts' seconds over the drawn span. [`write_run_timeline`] writes
//! `RUN_DIR/timeline.svg` at the end of a run.

use crate::rundir::{self, LedgerPaths, LedgerRecord, LockProbe, RunDirError, unix_now};
use serde::Deserialize;
use skypipe_timeline::{Bar, Category, RowStats};
pub use skypipe_timeline::{RenderOptions, Timeline};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// File name of the timeline written beside `run-report.json`.
pub const RUN_TIMELINE_FILE: &str = "timeline.svg";

/// Errors drawing a run directory's timeline; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The run directory could not be read.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The picture could not be drawn.
    #[error("{path}: {source}")]
    Render {
        /// The picture being written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: skypipe_timeline::TimelineError,
    },
    /// The picture could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The picture being written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The output name ends in neither `.svg` nor `.png`.
    #[error("{path}: the timeline is written as .svg or .png; name the file with one of these")]
    Format {
        /// The output path given.
        path: PathBuf,
    },
}

/// What the bars' colours show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColourBy {
    /// By outcome for one stage, by stage for several.
    #[default]
    Auto,
    /// By outcome: done, no-work, retried, each failure kind.
    Outcome,
    /// By stage, failed and retried attempts outlined.
    Stage,
}

/// One attempt found in the ledger, in Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Stage.
    pub stage: String,
    /// Unit ID.
    pub unit: String,
    /// Ranks it ran on, ascending (one for a one-rank unit).
    pub ranks: Vec<usize>,
    /// Unix start time.
    pub start: f64,
    /// Seconds it took.
    pub elapsed_s: f64,
    /// Outcome kind of the attempt (`done`, `no-work`, a failure kind).
    pub outcome: String,
    /// Whether it failed and the unit was tried again.
    pub retried: bool,
    /// 1-based attempt number within its invocation.
    pub attempt: u32,
    /// Whether the start time was estimated (older ledger: recording time − elapsed).
    pub start_estimated: bool,
}

impl Attempt {
    /// Unix end time.
    pub fn end(&self) -> f64 {
        self.start + self.elapsed_s
    }
}

fn unit_ranks(rank: usize, ranks: &[usize]) -> Vec<usize> {
    if ranks.is_empty() {
        vec![rank]
    } else {
        let mut r = ranks.to_vec();
        r.sort_unstable();
        r.dedup();
        r
    }
}

/// The attempts a ledger record stands for: its retried attempts, then its last one (none
/// for a unit that never ran, such as a dependency-failed one recorded with 0 attempts).
pub fn record_attempts(stage: &str, record: &LedgerRecord) -> Vec<Attempt> {
    let mut out = Vec::with_capacity(record.retried.len() + 1);
    if record.attempts == 0 && record.retried.is_empty() {
        return out;
    }
    for (k, a) in record.retried.iter().enumerate() {
        out.push(Attempt {
            stage: stage.to_string(),
            unit: record.unit.clone(),
            ranks: unit_ranks(a.rank, &a.ranks),
            start: a.started,
            elapsed_s: a.elapsed_s.max(0.0),
            outcome: a.outcome.to_string(),
            retried: true,
            attempt: k as u32 + 1,
            start_estimated: false,
        });
    }
    let elapsed = record.elapsed_s.max(0.0);
    out.push(Attempt {
        stage: stage.to_string(),
        unit: record.unit.clone(),
        ranks: unit_ranks(record.rank, &record.ranks),
        start: record.started.unwrap_or(record.time - elapsed),
        elapsed_s: elapsed,
        outcome: record.outcome.to_string(),
        retried: false,
        attempt: record.attempts.max(record.retried.len() as u32 + 1),
        start_estimated: record.started.is_none(),
    });
    out
}

/// `run-report.json`'s per-rank figures (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
struct ReportRanks {
    stage: String,
    #[serde(default)]
    invocation: u32,
    #[serde(default)]
    ranks: usize,
    #[serde(default)]
    makespan_s: f64,
    #[serde(default)]
    utilisation: f64,
    #[serde(default)]
    per_rank: Vec<RankUsage>,
}

#[derive(Debug, Clone, Deserialize)]
struct RankUsage {
    rank: usize,
    #[serde(default)]
    busy_s: f64,
    #[serde(default)]
    utilisation: f64,
}

/// What was read from a run directory for its timeline.
#[derive(Debug, Clone, Default)]
pub struct RunAttempts {
    /// Every attempt drawn, stage by stage.
    pub attempts: Vec<Attempt>,
    /// Stages drawn and the invocation of each.
    pub stages: Vec<(String, u32)>,
    /// Ranks of the job (largest of the report's, the progress files' and the ledger's).
    pub ranks: usize,
    /// Stages whose ledger lock a running job holds.
    pub running: Vec<String>,
    /// Ledger lines that are not records (stage, line).
    pub bad_lines: Vec<(String, usize)>,
}

/// Reads the attempts of the latest invocation of every stage under `run_dir`; with
/// `probe_locks`, also which stages a running job holds.
pub fn read_attempts(run_dir: &Path, probe_locks: bool) -> Result<RunAttempts, RunDirError> {
    let mut out = RunAttempts::default();
    for stage in rundir::stages(run_dir)? {
        let files = LedgerPaths::new(run_dir, &stage);
        let ledger = rundir::read_ledger(&files.records)?;
        out.bad_lines
            .extend(ledger.bad_lines.iter().map(|l| (stage.clone(), l.0)));
        if probe_locks && rundir::probe_lock(&files.lock) == LockProbe::Held {
            out.running.push(stage.clone());
        }
        if let Ok(Some(p)) = rundir::read_progress(&files.progress)
            && let Some(r) = p.ranks
        {
            out.ranks = out.ranks.max(r as usize);
        }
        let Some(latest) = ledger.records.iter().map(|r| r.invocation).max() else {
            continue;
        };
        out.stages.push((stage.clone(), latest));
        for r in ledger.records.iter().filter(|r| r.invocation == latest) {
            out.attempts.extend(record_attempts(&stage, r));
        }
    }
    let ledger_ranks = out
        .attempts
        .iter()
        .filter_map(|a| a.ranks.last())
        .max()
        .map_or(0, |r| r + 1);
    out.ranks = out.ranks.max(ledger_ranks);
    Ok(out)
}

const OUTCOME_COLOURS: [(&str, &str); 7] = [
    ("done", "#4c9a2a"),
    ("no-work", "#9ecae1"),
    ("retried", "#ff9f1c"),
    ("bad-input", "#d62728"),
    ("transient", "#e377c2"),
    ("out-of-memory", "#7b3294"),
    ("dependency-failed", "#8c564b"),
];
const OTHER_FAILURE_COLOUR: &str = "#555555";
const STAGE_COLOURS: [&str; 9] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f",
    "#ff7f0e",
];

fn legend_name(a: &Attempt) -> String {
    if a.retried {
        "retried".to_string()
    } else {
        a.outcome.clone()
    }
}

/// Builds the timeline of a run directory (read-only; safe while a job runs). `finished`:
/// the caller knows no job is running (the engine at the end of its run, holding the lock).
pub fn run_timeline(
    run_dir: &Path,
    colour_by: ColourBy,
    finished: bool,
) -> Result<Timeline, RunDirError> {
    let read = read_attempts(run_dir, !finished)?;
    let report: Option<ReportRanks> = match fs::read(run_dir.join("run-report.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(_) => None,
    };
    Ok(build_timeline(
        run_dir,
        read,
        report.as_ref(),
        colour_by,
        unix_now(),
    ))
}

fn build_timeline(
    run_dir: &Path,
    read: RunAttempts,
    report: Option<&ReportRanks>,
    colour_by: ColourBy,
    now: f64,
) -> Timeline {
    let by_stage = match colour_by {
        ColourBy::Auto => read.stages.len() > 1,
        ColourBy::Outcome => false,
        ColourBy::Stage => true,
    };
    // The report applies when one stage is drawn and it reports that stage's invocation.
    let report = report.filter(|r| {
        read.stages.len() == 1
            && read.stages[0] == (r.stage.clone(), r.invocation)
            && read.running.is_empty()
    });
    let ranks = read.ranks.max(report.map_or(0, |r| r.ranks)).max(1);
    let origin = read
        .attempts
        .iter()
        .map(|a| a.start)
        .fold(f64::INFINITY, f64::min);
    let origin = if origin.is_finite() { origin } else { now };
    let last_end = read
        .attempts
        .iter()
        .map(|a| a.end() - origin)
        .fold(0.0f64, f64::max);

    // Legend: outcomes in a fixed order (then unknown kinds), or stages in run order.
    let mut categories: Vec<Category> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    if by_stage {
        let mut order: Vec<(f64, String)> = read
            .stages
            .iter()
            .map(|(s, _)| {
                let first = read
                    .attempts
                    .iter()
                    .filter(|a| &a.stage == s)
                    .map(|a| a.start)
                    .fold(f64::INFINITY, f64::min);
                (first, s.clone())
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (i, (_, s)) in order.into_iter().enumerate() {
            index.insert(s.clone(), categories.len());
            categories.push(Category::new(s, STAGE_COLOURS[i % STAGE_COLOURS.len()]));
        }
    } else {
        for (name, colour) in OUTCOME_COLOURS {
            index.insert(name.to_string(), categories.len());
            categories.push(if rundir::is_success(name) {
                Category::new(name, colour)
            } else {
                Category::emphasised(name, colour)
            });
        }
        let mut others: Vec<String> = read
            .attempts
            .iter()
            .map(legend_name)
            .filter(|n| !index.contains_key(n))
            .collect();
        others.sort();
        others.dedup();
        for name in others {
            index.insert(name.clone(), categories.len());
            categories.push(Category::emphasised(name, OTHER_FAILURE_COLOUR));
        }
    }

    let mut busy = vec![0.0f64; ranks];
    let mut counts = vec![0u64; ranks];
    let mut estimated = 0usize;
    let mut bars = Vec::with_capacity(read.attempts.len());
    for a in &read.attempts {
        for &r in &a.ranks {
            if r < ranks {
                busy[r] += a.elapsed_s;
                counts[r] += 1;
            }
        }
        estimated += usize::from(a.start_estimated);
        let key = if by_stage {
            a.stage.clone()
        } else {
            legend_name(a)
        };
        let rank_text = match a.ranks.as_slice() {
            [r] => format!("rank {r}"),
            rs => format!(
                "ranks {}",
                rs.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let outcome = if a.retried {
            format!("{}, retried", a.outcome)
        } else {
            a.outcome.clone()
        };
        let start = a.start - origin;
        let hover = format!(
            "{} · {rank_text} · {} · {outcome} · stage {}, attempt {} · {:.3}–{:.3} s",
            a.unit,
            skypipe_timeline::short_seconds(a.elapsed_s),
            a.stage,
            a.attempt,
            start,
            start + a.elapsed_s
        );
        let mut bar = Bar::new(
            start,
            start + a.elapsed_s,
            a.ranks.clone(),
            index.get(&key).copied().unwrap_or(0),
            hover,
        );
        bar.outline = by_stage && (a.retried || !rundir::is_success(&a.outcome));
        bar.data = vec![
            ("stage".to_string(), a.stage.clone()),
            ("outcome".to_string(), a.outcome.clone()),
            ("retried".to_string(), a.retried.to_string()),
        ];
        bars.push(bar);
    }

    let makespan = report.map_or(last_end, |r| r.makespan_s);
    let rows: Vec<RowStats> = (0..ranks)
        .map(|r| {
            let from_report = report.and_then(|rep| rep.per_rank.iter().find(|u| u.rank == r));
            match from_report {
                Some(u) => RowStats {
                    busy_s: u.busy_s,
                    utilisation: u.utilisation,
                    attempts: counts[r],
                    note: format!(
                        "busy time from run-report.json; the ledger's attempts on this rank add up to {} s",
                        busy[r]
                    ),
                },
                None => RowStats {
                    busy_s: busy[r],
                    utilisation: if makespan > 0.0 { busy[r] / makespan } else { 0.0 },
                    attempts: counts[r],
                    note: "busy time from the ledger's attempts".to_string(),
                },
            }
        })
        .collect();
    let utilisation = match report {
        Some(r) => r.utilisation,
        None if makespan > 0.0 => busy.iter().sum::<f64>() / (makespan * ranks as f64),
        None => 0.0,
    };

    let mut stages_in_order = read.stages.clone();
    let first_start = |stage: &str| {
        read.attempts
            .iter()
            .filter(|a| a.stage == stage)
            .map(|a| a.start)
            .fold(f64::INFINITY, f64::min)
    };
    stages_in_order.sort_by(|a, b| first_start(&a.0).total_cmp(&first_start(&b.0)));
    let stages_text = match stages_in_order.as_slice() {
        [] => "no unit recorded yet".to_string(),
        [(s, i)] => format!("stage {s}, invocation {i}"),
        many => format!(
            "stages {} (latest invocation of each)",
            many.iter()
                .map(|(s, i)| format!("{s} #{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let name = run_dir.file_name().map_or_else(
        || run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut notes = Vec::new();
    let mut now_s = None;
    if !read.running.is_empty() {
        notes.push(format!(
            "a job is running ({}): units still running are not drawn yet; the dashed line is now",
            read.running.join(", ")
        ));
        now_s = Some(now - origin);
    }
    if estimated > 0 {
        notes.push(format!(
            "{estimated} attempts from an older ledger without start times: drawn ending when recorded; earlier attempts of retried units not shown"
        ));
    }
    if !read.bad_lines.is_empty() {
        notes.push(format!(
            "{} ledger lines were not records and are not drawn",
            read.bad_lines.len()
        ));
    }
    Timeline {
        title: format!("skypipe run {name}: {stages_text}"),
        notes,
        categories,
        bars,
        rows,
        makespan_s: makespan,
        utilisation,
        now_s,
        outline_label: by_stage.then(|| "failed or retried attempt".to_string()),
    }
}

/// Draws the timeline of `run_dir` into `out` (`.svg` or `.png`, by its extension), written
/// to a temporary name beside it, synced, then renamed. Returns `out`. `finished` as in
/// [`run_timeline`].
pub fn write_timeline(
    run_dir: &Path,
    out: &Path,
    colour_by: ColourBy,
    options: &RenderOptions,
    finished: bool,
) -> Result<PathBuf, TimelineError> {
    let extension = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let png = match extension.as_deref() {
        Some("svg") => false,
        Some("png") => true,
        _ => {
            return Err(TimelineError::Format {
                path: out.to_path_buf(),
            });
        }
    };
    let timeline = run_timeline(run_dir, colour_by, finished)?;
    let bytes = if png {
        skypipe_timeline::render_png(&timeline, options).map_err(|source| {
            TimelineError::Render {
                path: out.to_path_buf(),
                source,
            }
        })?
    } else {
        skypipe_timeline::render_svg(&timeline, options).into_bytes()
    };
    let io_err = |source| TimelineError::Io {
        path: out.to_path_buf(),
        source,
    };
    // Named like skypipe-io's temporaries, so a stale one is recognised and cleaned up.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(out.file_name().unwrap_or_default());
    tmp_name.push(format!(".skypipe-tmp.{}.0", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let mut file = fs::File::create(&tmp).map_err(io_err)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, out).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(e)
    })?;
    Ok(out.to_path_buf())
}

/// Writes `RUN_DIR/timeline.svg` (every stage's ledger, `run-report.json` when present):
/// what the engine calls at the end of every run, after writing `run-report.json` (its own
/// ledger lock is not taken for a running job). Returns the file's path.
pub fn write_run_timeline(run_dir: &Path) -> Result<PathBuf, TimelineError> {
    write_timeline(
        run_dir,
        &run_dir.join(RUN_TIMELINE_FILE),
        ColourBy::Auto,
        &RenderOptions::default(),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: serde_json::Value) -> LedgerRecord {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn records_give_their_retried_attempts_then_the_last_one() {
        let r = record(serde_json::json!({
            "unit": "task=3", "outcome": "done", "attempts": 3, "rank": 2, "elapsed_s": 0.5,
            "invocation": 1, "time": 110.0, "seq": 7, "started": 109.0,
            "retried": [
                {"rank": 1, "started": 100.0, "elapsed_s": 1.0, "outcome": "transient", "message": "m"},
                {"rank": 0, "ranks": [3, 0], "started": 105.0, "elapsed_s": 2.0, "outcome": "transient"}
            ]
        }));
        let a = record_attempts("s", &r);
        assert_eq!(a.len(), 3);
        assert_eq!(
            (a[0].ranks.clone(), a[0].start, a[0].end()),
            (vec![1], 100.0, 101.0)
        );
        assert!(a[0].retried && a[1].retried && !a[2].retried);
        assert_eq!(a[1].ranks, vec![0, 3]);
        assert_eq!(
            (a[2].ranks.clone(), a[2].start, a[2].attempt),
            (vec![2], 109.0, 3)
        );
        assert!(!a[2].start_estimated);

        let old = record(serde_json::json!({
            "unit": "task=4", "outcome": "bad-input", "attempts": 1, "rank": 1,
            "elapsed_s": 0.25, "invocation": 1, "time": 50.0
        }));
        let a = record_attempts("s", &old);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].start, a[0].end()), (49.75, 50.0));
        assert!(a[0].start_estimated);

        let not_run = record(serde_json::json!({
            "unit": "group=0", "outcome": "dependency-failed", "attempts": 0, "rank": 0,
            "elapsed_s": 0.0, "invocation": 1, "time": 50.0
        }));
        assert!(record_attempts("s", &not_run).is_empty());
    }

    fn attempt(stage: &str, rank: usize, start: f64, elapsed: f64, outcome: &str) -> Attempt {
        Attempt {
            stage: stage.into(),
            unit: format!("u={start}"),
            ranks: vec![rank],
            start,
            elapsed_s: elapsed,
            outcome: outcome.into(),
            retried: false,
            attempt: 1,
            start_estimated: false,
        }
    }

    #[test]
    fn one_stage_colours_by_outcome_and_takes_the_reports_utilisation() {
        let read = RunAttempts {
            attempts: vec![
                attempt("s", 0, 1000.0, 2.0, "done"),
                attempt("s", 1, 1000.5, 1.0, "bad-input"),
                attempt("s", 1, 1002.0, 0.5, "weird-kind"),
            ],
            stages: vec![("s".into(), 2)],
            ranks: 2,
            ..Default::default()
        };
        let report: ReportRanks = serde_json::from_value(serde_json::json!({
            "stage": "s", "invocation": 2, "ranks": 2, "makespan_s": 2.6, "utilisation": 0.6,
            "per_rank": [{"rank": 0, "busy_s": 2.01, "utilisation": 0.773}, {"rank": 1, "busy_s": 1.5, "utilisation": 0.577}]
        }))
        .unwrap();
        let t = build_timeline(
            Path::new("/r/run1"),
            read.clone(),
            Some(&report),
            ColourBy::Auto,
            0.0,
        );
        assert_eq!(t.title, "skypipe run run1: stage s, invocation 2");
        assert_eq!(t.makespan_s, 2.6);
        assert_eq!(t.rows[0].utilisation, 0.773);
        assert_eq!(t.rows[1].busy_s, 1.5);
        assert_eq!(t.utilisation, 0.6);
        let names: Vec<&str> = t
            .bars
            .iter()
            .map(|b| t.categories[b.category].name.as_str())
            .collect();
        assert_eq!(names, vec!["done", "bad-input", "weird-kind"]);
        assert_eq!((t.bars[1].start_s, t.bars[1].end_s), (0.5, 1.5));
        assert!(t.bars.iter().all(|b| !b.outline));

        // A report of another invocation is not used: figures come from the ledger.
        let mut stale = report.clone();
        stale.invocation = 1;
        let t = build_timeline(Path::new("r"), read, Some(&stale), ColourBy::Auto, 0.0);
        assert_eq!(t.makespan_s, 2.5);
        assert_eq!(t.rows[1].busy_s, 1.5);
        assert!((t.rows[0].utilisation - 2.0 / 2.5).abs() < 1e-12);
        assert!((t.utilisation - 3.5 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn several_stages_colour_by_stage_in_run_order_and_outline_failures() {
        let read = RunAttempts {
            attempts: vec![
                attempt("zeta", 0, 10.0, 1.0, "done"),
                attempt("alpha", 0, 20.0, 1.0, "transient"),
            ],
            stages: vec![("alpha".into(), 1), ("zeta".into(), 3)],
            ranks: 1,
            running: vec!["alpha".into()],
            ..Default::default()
        };
        let t = build_timeline(Path::new("r"), read, None, ColourBy::Auto, 25.0);
        let names: Vec<&str> = t.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["zeta", "alpha"]);
        assert!(!t.bars[0].outline && t.bars[1].outline);
        assert_eq!(t.now_s, Some(15.0));
        assert!(t.notes[0].contains("a job is running (alpha)"));
        assert!(
            t.title.contains("stages zeta #3, alpha #1"),
            "run order: {}",
            t.title
        );
    }

    #[test]
    fn output_format_follows_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_timeline(
            dir.path(),
            &dir.path().join("t.pdf"),
            ColourBy::Auto,
            &RenderOptions::default(),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, TimelineError::Format { .. }), "{err}");
    }
}
