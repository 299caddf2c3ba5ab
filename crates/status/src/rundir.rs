//! Read-only access to the files a skypipe run leaves in its run directory.
//!
//! Only the stable parts of the layout are read (`ARCHITECTURE.md`, "Boundary"):
//! `ledger/<stage>.jsonl`, `ledger/<stage>.manifest.json`, `ledger/<stage>.progress.json`,
//! `ledger/<stage>.lock` and `run-report.json`. Fields this crate does not know are ignored,
//! so the engine can add some without breaking `skypipe-status`. Nothing here takes a lock for
//! longer than one non-blocking probe, and nothing is written.

use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors reading a run directory; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// The run directory has no `ledger/` directory, or it holds no stage.
    #[error("{path}: no ledger here (no skypipe stage has run in this directory)")]
    NoLedger {
        /// The ledger directory looked for.
        path: PathBuf,
    },
    /// Operating-system error.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A JSON file that does not parse.
    #[error("{path}: not valid JSON of the expected shape: {reason}")]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One ledger line: a unit's final state in one invocation (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    /// The unit ID.
    pub unit: String,
    /// Outcome kind: `done`, `no-work`, or a failure kind such as `bad-input`.
    pub outcome: String,
    /// Attempts the unit took in that invocation.
    #[serde(default)]
    pub attempts: u32,
    /// Seconds the last attempt took.
    #[serde(default)]
    pub elapsed_s: f64,
    /// No-work reason or failure message.
    #[serde(default)]
    pub message: Option<String>,
    /// Which invocation recorded it (1, 2, ...).
    #[serde(default)]
    pub invocation: u32,
    /// Unix time of recording, seconds.
    #[serde(default)]
    pub time: f64,
    /// Rank that ran the last attempt.
    #[serde(default)]
    pub rank: usize,
    /// Run-wide sequence number of the record across all stages.
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds when the last attempt started (`None` in older ledgers).
    #[serde(default)]
    pub started: Option<f64>,
    /// All ranks of a multi-rank unit; empty for a one-rank unit (whose rank is `rank`).
    #[serde(default)]
    pub ranks: Vec<usize>,
    /// Earlier attempts of this invocation that failed and were retried.
    #[serde(default)]
    pub retried: Vec<AttemptRecord>,
}

/// An earlier attempt of a unit that failed and was retried (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AttemptRecord {
    /// Rank that ran it.
    #[serde(default)]
    pub rank: usize,
    /// All ranks of a multi-rank unit; empty for a one-rank unit.
    #[serde(default)]
    pub ranks: Vec<usize>,
    /// Unix seconds when it started.
    #[serde(default)]
    pub started: f64,
    /// Seconds it took.
    #[serde(default)]
    pub elapsed_s: f64,
    /// Failure kind, e.g. `transient`.
    #[serde(default)]
    pub outcome: String,
    /// Failure message.
    #[serde(default)]
    pub message: Option<String>,
}

impl Record {
    /// Done and no-work count as success; every other outcome is a failure.
    pub fn is_success(&self) -> bool {
        is_success(&self.outcome)
    }
}

/// Whether an outcome kind counts as success (`done`, `no-work`).
pub fn is_success(outcome: &str) -> bool {
    matches!(outcome, "done" | "no-work")
}

/// What [`read_ledger`] found in one ledger file.
#[derive(Debug, Default, Clone)]
pub struct LedgerContents {
    /// Every complete record, in file order.
    pub records: Vec<Record>,
    /// Lines (1-based) that are not ledger records; a torn last line is not counted.
    pub bad_lines: Vec<usize>,
}

impl LedgerContents {
    /// The latest record of every unit (last record wins).
    pub fn latest(&self) -> HashMap<&str, &Record> {
        let mut map = HashMap::with_capacity(self.records.len());
        for r in &self.records {
            map.insert(r.unit.as_str(), r);
        }
        map
    }
}

/// Reads a ledger file (missing file: empty). Safe while a job appends to it: a last line
/// without its newline is a record still being written and is skipped; a malformed line in
/// the middle is reported in [`LedgerContents::bad_lines`] rather than failing the whole read.
pub fn read_ledger(path: &Path) -> Result<LedgerContents, RunDirError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LedgerContents::default()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut contents = LedgerContents::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        number += 1;
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) => contents.records.push(r),
            Err(_) => contents.bad_lines.push(number),
        }
    }
    Ok(contents)
}

/// `ledger/<stage>.manifest.json`: the configuration fingerprint and the latest plan size.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Stage name.
    pub stage: String,
    /// Invocations that have opened the ledger for writing.
    #[serde(default)]
    pub invocations: u32,
    /// Units planned by the latest invocation.
    pub planned_units: usize,
    /// Unix time the latest invocation started.
    #[serde(default)]
    pub started: f64,
}

/// `ledger/<stage>.progress.json`: rank 0's latest progress line (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Progress {
    /// Invocation that wrote it.
    #[serde(default)]
    pub invocation: u32,
    /// Unix time it was written.
    pub time: f64,
    /// Units this invocation set out to run.
    #[serde(default)]
    pub to_run: Option<u64>,
    /// Units ended so far in this invocation.
    #[serde(default)]
    pub ended: Option<u64>,
    /// Units running at that moment.
    #[serde(default)]
    pub running: Option<u64>,
    /// Units ended per second in this invocation.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Seconds left at that rate.
    #[serde(default)]
    pub eta_s: Option<f64>,
    /// MPI ranks of the job.
    #[serde(default)]
    pub ranks: Option<u64>,
}

/// The parts of `run-report.json` that `skypipe-status` uses (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Stage the report belongs to (the run directory holds one report, the latest stage's).
    pub stage: String,
    /// Invocation it reports on.
    #[serde(default)]
    pub invocation: u32,
    /// Exit code of that invocation.
    #[serde(default)]
    pub exit_code: Option<u8>,
    /// Whether SIGTERM/SIGINT stopped it.
    #[serde(default)]
    pub interrupted: bool,
    /// Ranks it ran on.
    #[serde(default)]
    pub ranks: usize,
    /// Seconds from first dispatch to last result.
    #[serde(default)]
    pub makespan_s: f64,
    /// Units that ended in that invocation.
    #[serde(default)]
    pub ran: usize,
    /// The command that resumes the run and retries its failures.
    #[serde(default)]
    pub retry_command: Option<String>,
}

impl Report {
    /// Measured wall time per unit per rank, `makespan × ranks / ran`: what one rank spends
    /// on one unit including dispatch and I/O overheads. `None` when nothing ran.
    pub fn unit_seconds(&self) -> Option<f64> {
        let s = self.makespan_s * self.ranks as f64 / self.ran as f64;
        (self.ran > 0 && self.ranks > 0 && s.is_finite() && s > 0.0).then_some(s)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, RunDirError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RunDirError::Json {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Reads `ledger/<stage>.manifest.json`, if there is one.
pub fn read_manifest(path: &Path) -> Result<Option<Manifest>, RunDirError> {
    read_json(path)
}

/// Reads `ledger/<stage>.progress.json`, if there is one.
pub fn read_progress(path: &Path) -> Result<Option<Progress>, RunDirError> {
    read_json(path)
}

/// Reads `run-report.json` (a path to the file or to the run directory holding it).
pub fn read_report(path: &Path) -> Result<Option<Report>, RunDirError> {
    if path.is_dir() {
        read_json(&path.join("run-report.json"))
    } else {
        read_json(path)
    }
}

/// The files of one stage in a run directory.
#[derive(Debug, Clone)]
pub struct StageFiles {
    /// Stage name.
    pub stage: String,
    /// `ledger/<stage>.jsonl`
    pub records: PathBuf,
    /// `ledger/<stage>.manifest.json`
    pub manifest: PathBuf,
    /// `ledger/<stage>.progress.json`
    pub progress: PathBuf,
    /// `ledger/<stage>.lock`
    pub lock: PathBuf,
}

impl StageFiles {
    /// The files of `stage` under `run_dir`.
    pub fn new(run_dir: &Path, stage: &str) -> Self {
        let dir = run_dir.join("ledger");
        Self {
            stage: stage.to_string(),
            records: dir.join(format!("{stage}.jsonl")),
            manifest: dir.join(format!("{stage}.manifest.json")),
            progress: dir.join(format!("{stage}.progress.json")),
            lock: dir.join(format!("{stage}.lock")),
        }
    }
}

/// The stages that have a ledger or a manifest under `run_dir/ledger`, sorted by name.
pub fn stages(run_dir: &Path) -> Result<Vec<String>, RunDirError> {
    let dir = run_dir.join("ledger");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RunDirError::NoLedger { path: dir });
        }
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stage = name
            .strip_suffix(".manifest.json")
            .or_else(|| name.strip_suffix(".jsonl"));
        if let Some(stage) = stage
            && !stage.is_empty()
        {
            names.insert(stage.to_string());
        }
    }
    if names.is_empty() {
        return Err(RunDirError::NoLedger { path: dir });
    }
    Ok(names.into_iter().collect())
}

/// What a non-blocking probe of a ledger lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockProbe {
    /// No lock file: no job has opened this ledger for writing.
    Absent,
    /// The lock is free: no job holds the ledger now (as far as this host can see).
    Free,
    /// Another process holds the lock: a job is running.
    Held,
    /// The lock could not be tested (e.g. a file system without `flock`).
    Untestable(String),
}

/// Tests whether a job holds `lock` (rank 0 of a running job keeps an exclusive `flock` on
/// it) with a non-blocking shared lock attempt that is released at once. The file is opened
/// read-only, so this works on another user's run directory. The probe holds the lock for
/// microseconds; a job starting in exactly that window refuses to start ("lock held", exit 1)
/// and can simply be resubmitted.
pub fn probe_lock(lock: &Path) -> LockProbe {
    let file = match File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return LockProbe::Absent,
        Err(e) => return LockProbe::Untestable(e.to_string()),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            LockProbe::Free
        }
        Err(fs::TryLockError::WouldBlock) => LockProbe::Held,
        Err(fs::TryLockError::Error(e)) => LockProbe::Untestable(e.to_string()),
    }
}

/// Now as Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn torn_last_line_is_skipped_and_bad_middle_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        fs::write(
            &path,
            concat!(
                "{\"unit\":\"a=1\",\"outcome\":\"done\",\"invocation\":1,\"time\":1.0,\"new_field\":[1]}\n",
                "garbage\n",
                "{\"unit\":\"a=1\",\"outcome\":\"bad-input\",\"message\":\"m\",\"invocation\":2,\"time\":2.0}\n",
                "{\"unit\":\"a=2\",\"outc"
            ),
        )
        .unwrap();
        let c = read_ledger(&path).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.bad_lines, vec![2]);
        let latest = c.latest();
        assert_eq!(latest["a=1"].outcome, "bad-input");
        assert!(!latest["a=1"].is_success());
        assert!(
            read_ledger(&dir.path().join("missing.jsonl"))
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[test]
    fn stages_are_found_by_ledger_or_manifest_and_no_ledger_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            stages(dir.path()),
            Err(RunDirError::NoLedger { .. })
        ));
        let ledger = dir.path().join("ledger");
        fs::create_dir(&ledger).unwrap();
        fs::write(ledger.join("b.lock"), "").unwrap();
        assert!(matches!(
            stages(dir.path()),
            Err(RunDirError::NoLedger { .. })
        ));
        fs::write(ledger.join("b.jsonl"), "").unwrap();
        fs::write(ledger.join("a.manifest.json"), "{}").unwrap();
        fs::write(ledger.join("a.progress.json"), "{}").unwrap();
        assert_eq!(stages(dir.path()).unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn a_lock_held_by_another_open_file_is_seen_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        assert_eq!(probe_lock(&path), LockProbe::Absent);
        let holder = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(probe_lock(&path), LockProbe::Free);
        // The probe released its lock: an exclusive lock can still be taken.
        holder.try_lock().unwrap();
        assert_eq!(probe_lock(&path), LockProbe::Held);
        holder.unlock().unwrap();
        assert_eq!(probe_lock(&path), LockProbe::Free);
    }

    #[test]
    fn report_unit_seconds_is_makespan_times_ranks_over_ran() {
        let r: Report = serde_json::from_str(
            r#"{"stage":"s","invocation":1,"ranks":4,"makespan_s":10.0,"ran":20,"future":true}"#,
        )
        .unwrap();
        assert_eq!(r.unit_seconds(), Some(2.0));
        let none: Report = serde_json::from_str(r#"{"stage":"s","ranks":4,"ran":0}"#).unwrap();
        assert_eq!(none.unit_seconds(), None);
    }
}
