//! Helpers for the end-to-end tests: launching binaries under mpirun with a deadline, and
//! reading run directories.
#![allow(dead_code)]

pub mod cmb;
pub mod content;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Per-test deadline for one job.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The load-test binary built by Cargo for these tests.
pub fn loadtest_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-loadtest"))
}

/// `mpirun -n N` (oversubscribed, with its own timeout) around `bin args`, in its own process
/// group so that a test can kill the whole job.
pub fn mpirun(ranks: usize, bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "--timeout",
        "110",
        "-n",
    ])
    .arg(ranks.to_string())
    .arg(bin)
    .args(args)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
    .process_group(0);
    cmd
}

/// A binary alone (one rank, no mpirun).
pub fn direct(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .process_group(0);
    cmd
}

/// A job started in its own process group; dropping it (a test that panics) kills the group,
/// so a failed test leaves no ranks behind.
pub struct Job(Option<Child>);

impl Job {
    /// Starts `cmd` with its output captured.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Self(Some(
            cmd.spawn()
                .expect("spawn (is mpirun installed? run `make test`)"),
        ))
    }

    /// The process-group ID.
    pub fn pgid(&self) -> i32 {
        self.0.as_ref().expect("running").id() as i32
    }

    /// Waits for the job within [`DEADLINE`].
    pub fn wait(mut self) -> Output {
        wait_with_deadline(self.0.take().expect("running"), DEADLINE)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill_group(child.id() as i32, "KILL");
            let _ = child.wait();
        }
    }
}

/// Runs to completion within [`DEADLINE`], killing the process group if it hangs.
pub fn run(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("spawn (is mpirun installed? run `make test`)");
    wait_with_deadline(child, DEADLINE)
}

/// Waits for `child`, killing its process group after `deadline`.
pub fn wait_with_deadline(child: Child, deadline: Duration) -> Output {
    let pid = child.id() as i32;
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        if let Ok(out) = rx.try_recv() {
            return out.expect("wait for child");
        }
        if start.elapsed() > deadline {
            kill_group(pid, "KILL");
            let out = rx.recv().expect("child output").expect("wait");
            panic!(
                "job exceeded {deadline:?} and was killed\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (a name such as `TERM` or `KILL`) to every process of group `pgid`.
pub fn kill_group(pgid: i32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .status();
}

/// Sends `signal` to every process whose command line contains `pattern` (the ranks, as
/// Slurm signals every task at its time limit).
pub fn signal_processes(pattern: &str, signal: &str) {
    let _ = Command::new("pkill")
        .arg(format!("-{signal}"))
        .arg("-f")
        .arg(pattern)
        .status();
}

/// Exit code of a finished job (panics if it died by a signal).
pub fn code(status: &ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {status:?}"))
}

/// Combined text of a job's output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a workload file of `durations` (group = index / group_size).
pub fn write_workload(path: &Path, durations: &[f64], group_size: usize) {
    let group: Vec<usize> = (0..durations.len())
        .map(|i| i / group_size.max(1))
        .collect();
    let json = serde_json::json!({
        "format": "skypipe-engine-workload/1",
        "name": "test",
        "durations_s": durations,
        "group": group,
    });
    std::fs::write(path, json.to_string()).unwrap();
}

/// Every ledger record of `stage` in `run_dir`, as JSON values, in file order.
pub fn ledger(run_dir: &Path, stage: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("ledger").join(format!("{stage}.jsonl")))
        .unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ledger line {l}: {e}")))
        .collect()
}

/// How many ledger records each unit has with each outcome.
pub fn ledger_counts(run_dir: &Path, stage: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for r in ledger(run_dir, stage) {
        let key = (
            r["unit"].as_str().unwrap().to_string(),
            r["outcome"].as_str().unwrap().to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// All files under `dir` (recursively) with their bytes, keyed by path relative to `dir`.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The run report of a run directory.
pub fn report(run_dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(run_dir.join("run-report.json")).expect("run-report.json");
    serde_json::from_slice(&bytes).unwrap()
}

/// `skypipe-status --explain FILE`: the provenance chain behind an output (the command must
/// succeed).
pub fn explain(file: &Path) -> String {
    let status = Path::new(env!("CARGO_BIN_EXE_skypipe-status"));
    let out = run(direct(status, &["--explain", &file.to_string_lossy()]));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `path` made absolute as provenance records it.
pub fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .display()
        .to_string()
}
