//! The files a skypipe run leaves in its run directory, defined once: the engine writes them
//! with these types, `skypipe-status` and the Slurm scripts read them with the same types.
//!
//! Layout (`ARCHITECTURE.md`, "Boundary"), per stage instance: `ledger/<stage>.jsonl` (one
//! [`LedgerRecord`] per line, last record of a unit wins), `ledger/<stage>.manifest.json`
//! ([`Manifest`]), `ledger/<stage>.progress.json` ([`Progress`]), `ledger/<stage>.lock` (held by
//! a running job) and `ledger/<stage>.report.json` (one stage's part of a chain run); per run,
//! `run-report.json` ([`Report`] is the part readers use).
//!
//! Every field added after the first format has a serde default and unknown fields are
//! ignored, so older ledgers still read and the engine can add fields without breaking readers.
//! No MPI, no HDF5; nothing here writes.

use serde::{Deserialize, Serialize};
pub use skypipe_stage::OutcomeKind;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The ledger format tag written in every manifest.
pub const LEDGER_FORMAT: &str = "skypipe-ledger/1";

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

/// One line of the ledger: a unit's final state in one invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRecord {
    /// The unit ID.
    pub unit: String,
    /// The outcome kind (`done`, `no-work`, `bad-input`, ...).
    pub outcome: OutcomeKind,
    /// How many attempts the unit took in this invocation.
    #[serde(default)]
    pub attempts: u32,
    /// Rank that ran the last attempt.
    #[serde(default)]
    pub rank: usize,
    /// Seconds the last attempt took.
    #[serde(default)]
    pub elapsed_s: f64,
    /// No-work reason or failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Which invocation of the stage on this run directory recorded it (1, 2, ...).
    #[serde(default)]
    pub invocation: u32,
    /// Unix time of recording, seconds.
    #[serde(default)]
    pub time: f64,
    /// The value the unit passed to the units that run after it, base64 of its postcard
    /// encoding (kept so that a resumed run can still hand it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Memory limit of each attempt, MiB, when the unit ran isolated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_limits_mb: Vec<u64>,
    /// Run-wide sequence number: the order in which the job recorded units, across every
    /// stage of a chain (continuing from the largest number in the ledgers it opened).
    #[serde(default)]
    pub seq: u64,
    /// Unix time the last attempt started, seconds (clock of the rank that ran it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<f64>,
    /// Every rank of a multi-rank unit's last attempt (empty for a one-rank unit: `rank`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<usize>,
    /// The earlier attempts of this invocation, which failed and were retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retried: Vec<AttemptRecord>,
    /// The files a `done` unit declared it writes, with their sizes when it was recorded
    /// (empty in older ledgers and for units that declare none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputRecord>,
}

impl LedgerRecord {
    /// A record of `unit` with `outcome` and `message`, recorded now in `invocation`; every
    /// other field empty, for the writer to fill in.
    pub fn new(
        unit: impl Into<String>,
        outcome: OutcomeKind,
        message: Option<String>,
        invocation: u32,
    ) -> Self {
        Self {
            unit: unit.into(),
            outcome,
            attempts: 0,
            rank: 0,
            elapsed_s: 0.0,
            message,
            invocation,
            time: unix_now(),
            value: None,
            memory_limits_mb: vec![],
            seq: 0,
            started: None,
            ranks: vec![],
            retried: vec![],
            outputs: vec![],
        }
    }

    /// Done and no-work count as success; every other outcome is a failure.
    pub fn is_success(&self) -> bool {
        self.outcome.is_success()
    }

    /// The recorded outputs that are no longer on disk with their recorded size, each with
    /// what is wrong with it.
    pub fn changed_outputs(&self) -> Vec<(&OutputRecord, OutputProblem)> {
        self.outputs
            .iter()
            .filter_map(|o| o.check().map(|p| (o, p)))
            .collect()
    }
}

/// One attempt of a unit that failed and was retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Rank that ran it.
    #[serde(default)]
    pub rank: usize,
    /// Every rank of a multi-rank unit (empty for one rank).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<usize>,
    /// Unix time it started, seconds.
    #[serde(default)]
    pub started: f64,
    /// Seconds it took.
    #[serde(default)]
    pub elapsed_s: f64,
    /// How it failed (`transient`, `out-of-memory`).
    pub outcome: OutcomeKind,
    /// The failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether an outcome kind, by its ledger name, counts as success (`done`, `no-work`).
pub fn is_success(outcome: &str) -> bool {
    matches!(outcome, "done" | "no-work")
}

/// An output file of a done unit as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The file's path as the stage declared it.
    pub path: PathBuf,
    /// Its size in bytes when the unit was recorded.
    pub bytes: u64,
}

/// What is wrong with a recorded output now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputProblem {
    /// The file is gone (or cannot be looked at).
    Missing,
    /// The file has another size than recorded.
    Size {
        /// Its size now.
        now: u64,
    },
}

impl std::fmt::Display for OutputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputProblem::Missing => f.write_str("missing"),
            OutputProblem::Size { now } => write!(f, "{now} bytes now"),
        }
    }
}

impl OutputRecord {
    /// Records `path` with its size now (`None` when it cannot be looked at).
    pub fn of(path: &Path) -> Option<Self> {
        fs::metadata(path).ok().map(|m| Self {
            path: path.to_path_buf(),
            bytes: m.len(),
        })
    }

    /// `None` when the file is on disk with its recorded size, else what differs (one stat).
    pub fn check(&self) -> Option<OutputProblem> {
        match fs::metadata(&self.path) {
            Ok(m) if m.len() == self.bytes => None,
            Ok(m) => Some(OutputProblem::Size { now: m.len() }),
            Err(_) => Some(OutputProblem::Missing),
        }
    }
}

/// What [`read_ledger`] found in one ledger file.
#[derive(Debug, Default, Clone)]
pub struct LedgerContents {
    /// Every complete record, in file order.
    pub records: Vec<LedgerRecord>,
    /// Lines (1-based) that are not ledger records, with the parser's message; a torn last
    /// line is not counted.
    pub bad_lines: Vec<(usize, String)>,
}

impl LedgerContents {
    /// The latest record of every unit (last record wins).
    pub fn latest(&self) -> HashMap<&str, &LedgerRecord> {
        let mut map = HashMap::with_capacity(self.records.len());
        for r in &self.records {
            map.insert(r.unit.as_str(), r);
        }
        map
    }
}

/// The latest record of every unit, by value.
pub fn latest_by_unit(records: Vec<LedgerRecord>) -> HashMap<String, LedgerRecord> {
    let mut map = HashMap::with_capacity(records.len());
    for r in records {
        map.insert(r.unit.clone(), r);
    }
    map
}

/// Reads a ledger file (missing file: empty). Safe while a job appends to it: a last line
/// without its newline is a record still being written and is skipped; a malformed line in
/// the middle is reported in [`LedgerContents::bad_lines`] rather than failing the whole read
/// (the engine refuses such a ledger; `skypipe-status` reports it).
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
        match serde_json::from_slice::<LedgerRecord>(&line) {
            Ok(r) => contents.records.push(r),
            Err(e) => contents.bad_lines.push((number, e.to_string())),
        }
    }
    Ok(contents)
}

/// `ledger/<stage>.manifest.json`: ties a ledger to one configuration and the latest plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`LEDGER_FORMAT`].
    #[serde(default)]
    pub format: String,
    /// Stage name.
    pub stage: String,
    /// Fingerprint of the stage configuration the ledger was written with.
    #[serde(default)]
    pub config_fingerprint: String,
    /// Number of invocations that have opened this ledger for writing.
    #[serde(default)]
    pub invocations: u32,
    /// Number of units planned by the latest invocation.
    pub planned_units: usize,
    /// Unix time the latest invocation started.
    #[serde(default)]
    pub started: f64,
}

/// `ledger/<stage>.progress.json`: rank 0's latest progress line (unknown fields ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The parts of `run-report.json` that readers use (unknown fields ignored); the engine
/// writes the full report (`skypipe-run-report/1`).
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
    /// Busy rank-seconds over `makespan × ranks` (0 to 1).
    #[serde(default)]
    pub utilisation: Option<f64>,
    /// The command that resumes the run and retries its failures.
    #[serde(default)]
    pub retry_command: Option<String>,
    /// Per stage instance: what its units did in that invocation (one entry for a stage's
    /// own run, one per instance for a chain run).
    #[serde(default)]
    pub stages: Vec<StagePart>,
}

/// One stage instance's part of a run report (`run-report.json`'s `stages`).
#[derive(Debug, Clone, Deserialize)]
pub struct StagePart {
    /// Instance name.
    pub stage: String,
    /// Units that ended in the invocation.
    #[serde(default)]
    pub ran: usize,
    /// Seconds spent in its units (a multi-rank unit counts its wall time once).
    #[serde(default)]
    pub busy_s: f64,
    /// Unix time its first unit started, if any ran.
    #[serde(default)]
    pub first_start: Option<f64>,
    /// Unix time its last unit ended, if any ran.
    #[serde(default)]
    pub last_end: Option<f64>,
}

impl StagePart {
    /// Seconds from its first unit's start to its last unit's end, if any ran.
    pub fn span_s(&self) -> Option<f64> {
        match (self.first_start, self.last_end) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        }
    }
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

/// The files of one stage instance in a run directory.
#[derive(Debug, Clone)]
pub struct LedgerPaths {
    /// Stage (instance) name.
    pub stage: String,
    /// `ledger/<stage>.jsonl`
    pub records: PathBuf,
    /// `ledger/<stage>.manifest.json`
    pub manifest: PathBuf,
    /// `ledger/<stage>.progress.json`, rewritten by rank 0 at every progress line.
    pub progress: PathBuf,
    /// `ledger/<stage>.lock`, held by a running job.
    pub lock: PathBuf,
    /// `ledger/<stage>.report.json`, the stage's part of a chain run's report.
    pub report: PathBuf,
}

impl LedgerPaths {
    /// The files of `stage` under `run_dir`.
    pub fn new(run_dir: &Path, stage: &str) -> Self {
        let dir = run_dir.join("ledger");
        Self {
            stage: stage.to_string(),
            records: dir.join(format!("{stage}.jsonl")),
            manifest: dir.join(format!("{stage}.manifest.json")),
            progress: dir.join(format!("{stage}.progress.json")),
            lock: dir.join(format!("{stage}.lock")),
            report: dir.join(format!("{stage}.report.json")),
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

/// Quotes `word` for a POSIX shell when it needs it (`'...'`, with `'` written `'\''`), as
/// the resume and retry commands in reports and `skypipe-status` are printed.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// `words` quoted for a shell and joined by spaces: a command line to paste.
pub fn shell_command<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
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
        assert_eq!(c.bad_lines.len(), 1);
        assert_eq!(c.bad_lines[0].0, 2);
        let latest = c.latest();
        assert_eq!(latest["a=1"].outcome, OutcomeKind::BadInput);
        assert!(!latest["a=1"].is_success());
        assert!(
            read_ledger(&dir.path().join("missing.jsonl"))
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[test]
    fn an_old_ledger_line_without_newer_fields_reads_with_defaults() {
        // A record as the first engine wrote it: no seq, started, ranks, retried, outputs.
        let old = r#"{"unit":"obs=1","outcome":"done","attempts":1,"rank":2,"elapsed_s":0.5,"invocation":1,"time":10.0}"#;
        let r: LedgerRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.rank, 2);
        assert_eq!(r.seq, 0);
        assert_eq!(r.started, None);
        assert!(r.ranks.is_empty() && r.retried.is_empty() && r.outputs.is_empty());
        assert!(r.changed_outputs().is_empty());
        // And a new record round-trips, outputs included.
        let mut new = LedgerRecord::new("obs=2", OutcomeKind::Done, None, 3);
        new.time = 12.5; // serde_json's default float parsing may differ in the last bit
        new.outputs.push(OutputRecord {
            path: "a/b.h5".into(),
            bytes: 7,
        });
        let line = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<LedgerRecord>(&line).unwrap(), new);
    }

    #[test]
    fn outputs_are_checked_for_presence_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        fs::write(&path, b"12345").unwrap();
        let mut r = LedgerRecord::new("u=1", OutcomeKind::Done, None, 1);
        r.outputs.push(OutputRecord::of(&path).unwrap());
        assert!(r.changed_outputs().is_empty());
        fs::write(&path, b"12").unwrap();
        assert_eq!(r.changed_outputs()[0].1, OutputProblem::Size { now: 2 });
        fs::remove_file(&path).unwrap();
        assert_eq!(r.changed_outputs()[0].1, OutputProblem::Missing);
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

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("--run-dir=/a/b"), "--run-dir=/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_command(&["x", "a b"]), "x 'a b'");
    }
}
