//! The durable record of unit outcomes in a run directory.
//!
//! Layout, per stage: `RUN_DIR/ledger/<stage>.jsonl` (one JSON record per line, appended by
//! rank 0 only, last record of a unit wins), `RUN_DIR/ledger/<stage>.manifest.json` (format,
//! stage, configuration fingerprint) and `RUN_DIR/ledger/<stage>.lock` (held while a job runs).
//! A record is appended only after the unit's outputs were committed, so a unit recorded done
//! has whole outputs. A torn last line (the job died mid-write) is ignored and cut on open.
//! The record, manifest and path types are `skypipe-rundir`'s (re-exported here); this module
//! is the writer: lock, fingerprint check, appends and their sync cadence.

use skypipe_io::{Durability, write_atomic};
pub use skypipe_rundir::{
    AttemptRecord, LEDGER_FORMAT, LedgerPaths, LedgerRecord, Manifest, OutputRecord,
    latest_by_unit, unix_now,
};
use skypipe_rundir::{RunDirError, read_ledger};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors opening or reading a ledger; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Operating-system error.
    #[error("{path}: {source}")]
    Io {
        /// The ledger file concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A line that is not a ledger record (other than a torn last line).
    #[error("{path}: line {line} is not a ledger record: {reason}")]
    Corrupt {
        /// The ledger file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parser message.
        reason: String,
    },
    /// The run directory was written with a different configuration.
    #[error(
        "{path}: this run directory was written by {stage} with configuration fingerprint {found}, but the configuration now gives {expected}; use a new run directory, or pass --allow-config-change to resume anyway"
    )]
    ConfigChanged {
        /// Manifest path.
        path: PathBuf,
        /// Stage name.
        stage: String,
        /// Fingerprint in the manifest.
        found: String,
        /// Fingerprint of the current configuration.
        expected: String,
    },
    /// Another process holds the ledger lock.
    #[error("{path}: another job is using this run directory for stage {stage} (lock held)")]
    Locked {
        /// Lock path.
        path: PathBuf,
        /// Stage name.
        stage: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every complete record of a ledger file (missing file: none). Safe while a job
/// appends: a torn last line is ignored; any other line that is not a record is an error.
pub fn read_records(path: &Path) -> Result<Vec<LedgerRecord>, LedgerError> {
    let contents = read_ledger(path).map_err(|e| from_rundir(path, e))?;
    if let Some((line, reason)) = contents.bad_lines.into_iter().next() {
        return Err(LedgerError::Corrupt {
            path: path.to_path_buf(),
            line,
            reason,
        });
    }
    Ok(contents.records)
}

/// Reads a manifest, if there is one.
pub fn read_manifest(path: &Path) -> Result<Option<Manifest>, LedgerError> {
    skypipe_rundir::read_manifest(path).map_err(|e| from_rundir(path, e))
}

fn from_rundir(path: &Path, e: RunDirError) -> LedgerError {
    match e {
        RunDirError::Io { path, source } => LedgerError::Io { path, source },
        other => LedgerError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            reason: other.to_string(),
        },
    }
}

/// An open ledger, appended to by rank 0.
pub struct Ledger {
    paths: LedgerPaths,
    writer: BufWriter<File>,
    _lock: File,
    durable: bool,
    sync_interval: Duration,
    last_sync: Instant,
    invocation: u32,
    previous: HashMap<String, LedgerRecord>,
    last_seq: u64,
    dirty: bool,
}

impl Ledger {
    /// Opens (creating if needed) the ledger of `stage` in `run_dir`, takes its lock, checks
    /// the configuration fingerprint and reads the earlier records. The manifest is written
    /// by [`Ledger::write_manifest`] once the plan is known, so a run that cannot start leaves
    /// the directory's fingerprint as it was.
    pub fn open(
        run_dir: &Path,
        stage: &str,
        fingerprint: &str,
        allow_config_change: bool,
        durable: bool,
        sync_interval: Duration,
    ) -> Result<Self, LedgerError> {
        let paths = LedgerPaths::new(run_dir, stage);
        let dir = paths.records.parent().expect("ledger dir");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&paths.lock)
            .map_err(io_err(&paths.lock))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LedgerError::Locked {
                    path: paths.lock.clone(),
                    stage: stage.to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&paths.lock)(e)),
        }
        let manifest = read_manifest(&paths.manifest)?;
        let invocations = match &manifest {
            Some(m) if m.config_fingerprint != fingerprint && !allow_config_change => {
                return Err(LedgerError::ConfigChanged {
                    path: paths.manifest.clone(),
                    stage: stage.to_string(),
                    found: m.config_fingerprint.clone(),
                    expected: fingerprint.to_string(),
                });
            }
            Some(m) => m.invocations,
            None => 0,
        };
        let records = read_records(&paths.records)?;
        let last_seq = records.iter().map(|r| r.seq).max().unwrap_or(0);
        let previous = latest_by_unit(records);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&paths.records)
            .map_err(io_err(&paths.records))?;
        cut_torn_tail(&file).map_err(io_err(&paths.records))?;
        let ledger = Self {
            writer: BufWriter::with_capacity(1 << 16, file),
            paths,
            _lock: lock,
            durable,
            sync_interval,
            last_sync: Instant::now(),
            invocation: invocations + 1,
            previous,
            last_seq,
            dirty: false,
        };
        Ok(ledger)
    }

    /// Rewrites the manifest (atomically) with the number of planned units.
    pub fn write_manifest(
        &self,
        stage: &str,
        fingerprint: &str,
        planned: usize,
    ) -> Result<(), LedgerError> {
        let manifest = Manifest {
            format: LEDGER_FORMAT.to_string(),
            stage: stage.to_string(),
            config_fingerprint: fingerprint.to_string(),
            invocations: self.invocation,
            planned_units: planned,
            started: unix_now(),
        };
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_atomic(&self.paths.manifest, &bytes, self.durability())
            .map_err(|e| io_err(&self.paths.manifest)(io::Error::other(e)))?;
        Ok(())
    }

    fn durability(&self) -> Durability {
        if self.durable {
            Durability::Synced
        } else {
            Durability::ProcessCrashOnly
        }
    }

    /// The files of this ledger.
    pub fn paths(&self) -> &LedgerPaths {
        &self.paths
    }

    /// This invocation's number (1 for the first run on a directory).
    pub fn invocation(&self) -> u32 {
        self.invocation
    }

    /// Each unit's latest record from earlier invocations.
    pub fn previous(&self) -> &HashMap<String, LedgerRecord> {
        &self.previous
    }

    /// The largest sequence number recorded in this ledger before it was opened.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends a record; commits durably when the sync interval has passed.
    pub fn append(&mut self, record: &LedgerRecord) -> Result<(), LedgerError> {
        serde_json::to_writer(&mut self.writer, record)
            .map_err(|e| io_err(&self.paths.records)(io::Error::other(e)))?;
        self.writer
            .write_all(b"\n")
            .map_err(io_err(&self.paths.records))?;
        self.dirty = true;
        self.commit_if_due()
    }

    /// Commits if records are waiting and the sync interval has passed since the last commit;
    /// call it regularly so that records never wait long for readers such as `skypipe-status`.
    pub fn commit_if_due(&mut self) -> Result<(), LedgerError> {
        if self.dirty && self.last_sync.elapsed() >= self.sync_interval {
            self.commit()?;
        }
        Ok(())
    }

    /// Writes buffered records and (when durable) syncs them to disk.
    pub fn commit(&mut self) -> Result<(), LedgerError> {
        self.writer.flush().map_err(io_err(&self.paths.records))?;
        if self.durable {
            self.writer
                .get_ref()
                .sync_data()
                .map_err(io_err(&self.paths.records))?;
        }
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

/// Cuts a partial last line left by a job that died mid-append.
fn cut_torn_tail(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(0))?;
    let mut keep = 0u64;
    let mut pos = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)? as u64;
        if n == 0 {
            break;
        }
        pos += n;
        if buf.last() == Some(&b'\n') {
            keep = pos;
        }
    }
    if keep < len {
        file.set_len(keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_stage::OutcomeKind;

    fn record(unit: &str, outcome: OutcomeKind) -> LedgerRecord {
        let mut r = LedgerRecord::new(unit, outcome, None, 1);
        r.attempts = 1;
        r.elapsed_s = 0.5;
        r
    }

    fn open(dir: &Path, fp: &str, allow: bool) -> Result<Ledger, LedgerError> {
        Ledger::open(dir, "demo", fp, allow, true, Duration::from_secs(60))
    }

    #[test]
    fn records_survive_reopen_and_last_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut l = open(dir.path(), "fp1", false).unwrap();
            l.write_manifest("demo", "fp1", 2).unwrap();
            assert_eq!(l.invocation(), 1);
            l.append(&record("obs=1", OutcomeKind::BadInput)).unwrap();
            l.append(&record("obs=2", OutcomeKind::Done)).unwrap();
            l.commit().unwrap();
        }
        let mut l = open(dir.path(), "fp1", false).unwrap();
        assert_eq!(l.invocation(), 2);
        assert_eq!(l.previous()["obs=1"].outcome, OutcomeKind::BadInput);
        l.append(&record("obs=1", OutcomeKind::Done)).unwrap();
        l.commit().unwrap();
        let latest = latest_by_unit(read_records(&l.paths().records).unwrap());
        assert_eq!(latest["obs=1"].outcome, OutcomeKind::Done);
        assert_eq!(latest.len(), 2);
    }

    #[test]
    fn torn_last_line_is_ignored_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let paths = {
            let mut l = open(dir.path(), "fp", false).unwrap();
            l.append(&record("obs=1", OutcomeKind::Done)).unwrap();
            l.commit().unwrap();
            l.paths().clone()
        };
        let mut f = OpenOptions::new()
            .append(true)
            .open(&paths.records)
            .unwrap();
        f.write_all(b"{\"unit\":\"obs=2\",\"outc").unwrap();
        drop(f);
        assert_eq!(read_records(&paths.records).unwrap().len(), 1);
        let mut l = open(dir.path(), "fp", false).unwrap();
        l.append(&record("obs=3", OutcomeKind::Done)).unwrap();
        l.commit().unwrap();
        let units: Vec<String> = read_records(&paths.records)
            .unwrap()
            .into_iter()
            .map(|r| r.unit)
            .collect();
        assert_eq!(units, vec!["obs=1", "obs=3"]);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let paths = LedgerPaths::new(dir.path(), "demo");
        fs::create_dir_all(paths.records.parent().unwrap()).unwrap();
        fs::write(&paths.records, "garbage\n{}\n").unwrap();
        let err = read_records(&paths.records).unwrap_err().to_string();
        assert!(err.contains("demo.jsonl: line 1"), "{err}");
    }

    #[test]
    fn changed_configuration_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), "aaaa", false).unwrap();
        first.write_manifest("demo", "aaaa", 0).unwrap();
        drop(first);
        let err = open(dir.path(), "bbbb", false).err().unwrap().to_string();
        assert!(err.contains("--allow-config-change"), "{err}");
        assert!(err.contains("aaaa") && err.contains("bbbb"), "{err}");
        assert!(open(dir.path(), "bbbb", true).is_ok());
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), "fp", false).unwrap();
        let err = open(dir.path(), "fp", false).err().unwrap();
        assert!(matches!(err, LedgerError::Locked { .. }), "{err}");
    }
}
