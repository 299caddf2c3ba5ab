//! Memory-isolated units: each unit runs in a re-executed child of the binary, under an
//! address-space limit (RLIMIT_AS), so a unit that runs out of memory or crashes inside a C
//! library kills only itself. The rank that launched it records what happened and the MPI
//! job lives on.
//!
//! The child is the same binary with the same arguments plus `--isolated-unit FILE`: it reads
//! the assignment from `FILE.request`, runs it exactly as a rank would, writes the report to
//! `FILE.report`, and never initialises MPI.

use crate::execute::{RankContext, run_assignment};
use crate::protocol::{Assignment, RankStats, UnitReport};
use crate::stages::StageSet;
use serde::{Deserialize, Serialize};
use skypipe_stage::{FailureKind, UnitFailure};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// How units are isolated on this rank.
#[derive(Debug, Clone)]
pub(crate) struct Isolation {
    /// The binary to re-execute.
    pub exe: PathBuf,
    /// Its arguments (those of this process).
    pub args: Vec<OsString>,
    /// Address-space limit of the first attempt of a unit whose stage declares no memory
    /// estimate, MiB (0: none).
    pub limit_mb: u64,
    /// Added to a unit's declared estimate for its first attempt: the process's own address
    /// space (binary, libraries, stacks, allocator arenas), MiB.
    pub overhead_mb: u64,
    /// Factor applied to the limit after each out-of-memory failure.
    pub growth: f64,
    /// Largest limit, MiB; `None`: four times the unit's first limit.
    pub cap_mb: Option<u64>,
}

impl Isolation {
    /// The first attempt's limit of a unit with memory estimate `estimate_mb`, if any: the
    /// estimate plus the process overhead when the stage declares one, else `limit_mb`; never
    /// above the cap.
    pub fn first_limit(&self, estimate_mb: Option<u64>) -> Option<u64> {
        let first = match estimate_mb {
            Some(e) => e.saturating_add(self.overhead_mb),
            None if self.limit_mb == 0 => return None,
            None => self.limit_mb,
        };
        Some(self.cap_mb.map_or(first, |cap| first.min(cap)))
    }

    /// The limit of attempt `attempt` (1-based) of a unit whose first limit is `first_mb`:
    /// grown by the factor per attempt, up to the cap.
    pub fn limit_at(&self, first_mb: u64, attempt: u32) -> u64 {
        let cap = self
            .cap_mb
            .unwrap_or(first_mb.saturating_mul(4))
            .max(first_mb);
        let grown = first_mb as f64 * self.growth.powi(attempt.saturating_sub(1) as i32);
        (grown.round() as u64).min(cap)
    }

    /// Whether an out-of-memory failure at `attempt` of a unit whose first limit was
    /// `first_mb` may be retried with a larger limit.
    pub fn may_grow(&self, first_mb: u64, attempt: u32) -> bool {
        self.limit_at(first_mb, attempt + 1) > self.limit_at(first_mb, attempt)
    }
}

/// What the parent hands the child.
#[derive(Serialize, Deserialize)]
struct Request {
    assignment: Assignment,
    run_dir: PathBuf,
    rank: usize,
    durable: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs one assignment in a child process under the attempt's memory limit. Returns `None`
/// when the child was stopped by SIGTERM/SIGINT during a clean stop of the job (the unit is
/// then handed back unrun, not recorded as failed).
pub(crate) fn run_isolated(
    iso: &Isolation,
    assignment: Assignment,
    estimate_mb: Option<u64>,
    base: &RankContext,
    stats: &mut RankStats,
) -> Option<UnitReport> {
    let index = assignment.index;
    let attempt = assignment.attempt;
    let limit = iso
        .first_limit(estimate_mb)
        .map(|first| iso.limit_at(first, attempt));
    let scratch = base.run_dir.join("isolation");
    let stem = scratch.join(format!(
        "{}-rank{}-{}-{}",
        scratch_host(),
        base.rank,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let start = Instant::now();
    let started = crate::ledger::unix_now();
    let outcome = spawn_child(
        iso,
        &stem,
        limit,
        Request {
            assignment,
            run_dir: base.run_dir.clone(),
            rank: base.rank,
            durable: base.durable,
        },
    );
    let _ = std::fs::remove_file(stem.with_extension("request"));
    let _ = std::fs::remove_file(stem.with_extension("report"));
    let elapsed_s = start.elapsed().as_secs_f64();
    stats.busy_s += elapsed_s;
    stats.units += 1;
    let limit_text = limit.map_or("no memory limit".to_string(), |l| {
        format!("memory limit {l} MiB")
    });
    let failure = |kind, message: String| UnitReport {
        index,
        attempt,
        result: Err(UnitFailure { kind, message }),
        started,
        elapsed_s,
        value: None,
        memory_limit_mb: limit,
    };
    Some(match outcome {
        Ok(mut report) => {
            report.started = started;
            report.elapsed_s = elapsed_s;
            report.memory_limit_mb = limit;
            report
        }
        Err(ChildFailure::Stopped) => return None,
        Err(ChildFailure::OutOfMemory(detail)) => failure(
            FailureKind::OutOfMemory,
            format!("out of memory at {limit_text}: {detail}"),
        ),
        Err(ChildFailure::Crashed(detail)) => failure(
            FailureKind::BadInput,
            format!("isolated unit crashed ({limit_text}): {detail}"),
        ),
        Err(ChildFailure::Launch(detail)) => failure(
            FailureKind::Transient,
            format!("cannot run the isolated unit: {detail}"),
        ),
    })
}

/// This machine's name as isolation files record it (dots would read as an extension).
fn scratch_host() -> String {
    skypipe_io::host_name().replace(['.', '/'], "_")
}

/// Removes the `isolation/HOST-rankR-PID-N.{request,report}` files of `run_dir` left by ranks
/// of this machine that no longer exist (a rank killed while its unit ran); returns how many.
pub(crate) fn remove_dead_scratch(run_dir: &Path) -> usize {
    let host = scratch_host();
    let Ok(entries) = std::fs::read_dir(run_dir.join("isolation")) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let mut parts = stem.rsplitn(4, '-');
        let (_, pid, _, writer_host) = (parts.next(), parts.next(), parts.next(), parts.next());
        let pid = pid.and_then(|p| p.parse::<u32>().ok());
        if writer_host == Some(host.as_str())
            && pid.is_some_and(|p| !skypipe_io::process_alive(p))
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

enum ChildFailure {
    Stopped,
    OutOfMemory(String),
    Crashed(String),
    Launch(String),
}

fn spawn_child(
    iso: &Isolation,
    stem: &Path,
    limit_mb: Option<u64>,
    request: Request,
) -> Result<UnitReport, ChildFailure> {
    let request_path = stem.with_extension("request");
    let report_path = stem.with_extension("report");
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ChildFailure::Launch(format!("{}: {e}", dir.display())))?;
    }
    let bytes = postcard::to_stdvec(&request).expect("requests always encode");
    std::fs::write(&request_path, bytes)
        .map_err(|e| ChildFailure::Launch(format!("{}: {e}", request_path.display())))?;
    let mut cmd = Command::new(&iso.exe);
    cmd.args(&iso.args)
        .arg("--isolated-unit")
        .arg(stem)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let parent = std::process::id() as libc::pid_t;
    let address_space = limit_mb.map(|limit| limit.saturating_mul(1 << 20));
    // SAFETY: prctl, getppid and setrlimit are async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The child dies with the thread that started it (a rank killed by SIGKILL, or
            // exiting after its stop grace), so it never writes after the ledger is closed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "the rank died while starting the unit",
                ));
            }
            if let Some(bytes) = address_space {
                let rlim = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &rlim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ChildFailure::Launch(format!("{}: {e}", iso.exe.display())))?;
    let reader = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let status = wait_stopping_on_signal(&mut child)?;
    let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    let (stderr, reading) = split_read_trace(&stderr);
    let tail: String = {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        match reading {
            Some(file) => format!("while reading {file}: {tail}"),
            None => tail,
        }
    };
    let alloc_failed = stderr.contains("memory allocation of") || stderr.contains("out of memory");
    if status.success() {
        eprint!("{stderr}");
        let bytes = std::fs::read(&report_path)
            .map_err(|e| ChildFailure::Crashed(format!("no report ({e}); stderr: {tail}")))?;
        return postcard::from_bytes(&bytes)
            .map_err(|e| ChildFailure::Crashed(format!("unreadable report: {e}")));
    }
    if alloc_failed {
        return Err(ChildFailure::OutOfMemory(tail));
    }
    match status.signal() {
        Some(libc::SIGTERM | libc::SIGINT) if crate::signals::stop_requested() => {
            Err(ChildFailure::Stopped)
        }
        Some(libc::SIGKILL) => Err(ChildFailure::OutOfMemory(format!(
            "killed by SIGKILL (the kernel's out-of-memory killer?); stderr: {tail}"
        ))),
        Some(signal) => Err(ChildFailure::Crashed(format!(
            "killed by signal {signal}; stderr: {tail}"
        ))),
        None => Err(ChildFailure::Crashed(format!(
            "exit status {}; stderr: {tail}",
            status.code().unwrap_or(-1)
        ))),
    }
}

/// Waits for the child; when the job is asked to stop, passes SIGTERM on to it (the unit is
/// then handed back unrun), so that no isolated unit outlives its rank's clean stop.
fn wait_stopping_on_signal(
    child: &mut std::process::Child,
) -> Result<std::process::ExitStatus, ChildFailure> {
    let mut signalled = false;
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(ChildFailure::Launch(e.to_string())),
        }
        if !signalled && crate::signals::stop_requested() {
            // SAFETY: kill only sends a signal to our own, not yet reaped, child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            signalled = true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Separates the child's read trace (see [`skypipe_io::limits`]) from the rest of its standard
/// error; returns the rest and the last file it started reading.
fn split_read_trace(stderr: &str) -> (String, Option<String>) {
    let mut rest = String::with_capacity(stderr.len());
    let mut reading = None;
    for line in stderr.lines() {
        match line.strip_prefix(skypipe_io::limits::READ_TRACE_PREFIX) {
            Some(file) => reading = Some(file.to_string()),
            None => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    (rest, reading)
}

/// The child side: runs the unit described by `STEM.request` and writes `STEM.report`.
/// Returns the process exit code.
pub(crate) fn child_main(stages: &StageSet<'_>, stem: &Path) -> u8 {
    skypipe_io::limits::enable_read_trace();
    let request_path = stem.with_extension("request");
    let bytes = match std::fs::read(&request_path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", request_path.display());
            return 1;
        }
    };
    let request: Request = match postcard::from_bytes(&bytes) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", request_path.display());
            return 1;
        }
    };
    let base = RankContext {
        run_dir: request.run_dir,
        rank: request.rank,
        durable: request.durable,
        isolation: None,
        isolated_child: true,
    };
    let mut stats = RankStats::default();
    let report = run_assignment(stages, request.assignment, &base, None, &mut stats);
    let bytes = postcard::to_stdvec(&report).expect("reports always encode");
    match std::fs::write(stem.with_extension("report"), bytes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}: {e}", stem.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_by_the_factor_up_to_the_cap() {
        let iso = Isolation {
            exe: PathBuf::new(),
            args: vec![],
            limit_mb: 100,
            overhead_mb: 50,
            growth: 2.0,
            cap_mb: Some(300),
        };
        assert_eq!(iso.first_limit(None), Some(100));
        let limits: Vec<u64> = (1..=4).map(|a| iso.limit_at(100, a)).collect();
        assert_eq!(limits, vec![100, 200, 300, 300]);
        assert!(iso.may_grow(100, 1) && iso.may_grow(100, 2));
        assert!(!iso.may_grow(100, 3));
        let unlimited = Isolation { limit_mb: 0, ..iso };
        assert_eq!(unlimited.first_limit(None), None);
    }

    #[test]
    fn a_declared_estimate_sets_the_first_limit_and_the_default_cap_is_four_times_it() {
        let iso = Isolation {
            exe: PathBuf::new(),
            args: vec![],
            limit_mb: 1000,
            overhead_mb: 50,
            growth: 2.0,
            cap_mb: None,
        };
        assert_eq!(iso.first_limit(Some(30)), Some(80));
        let limits: Vec<u64> = (1..=4).map(|a| iso.limit_at(80, a)).collect();
        assert_eq!(limits, vec![80, 160, 320, 320]);
        assert!(!iso.may_grow(80, 3));
        let capped = Isolation {
            cap_mb: Some(60),
            ..iso
        };
        assert_eq!(capped.first_limit(Some(30)), Some(60));
        assert!(!capped.may_grow(60, 1));
    }
}
