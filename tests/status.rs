//! `skypipe-status` end to end: on a job running under mpirun (counts move, `running`
//! shown), after it is interrupted (pending units, resume command), after the resume, and on
//! a finished run with injected failures (counts by kind, reasons, retry command).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn status_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-status"))
}

/// Runs `skypipe-status` (it is fast and takes no lock, so no deadline machinery).
fn status(args: &[&str]) -> Output {
    Command::new(status_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skypipe-status")
}

/// `skypipe-status --json RUN_DIR` parsed, or `None` while the run directory has no ledger.
fn status_json(run_dir: &Path) -> Option<Value> {
    let out = status(&["--json", run_dir.to_str().unwrap()]);
    match out.status.code() {
        Some(0) => Some(
            serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("--json output does not parse: {e}\n{}", text(&out))),
        ),
        Some(1) => None,
        _ => panic!("unexpected exit\n{}", text(&out)),
    }
}

fn write_config(dir: &Path, workload: &Path, run: &str, inject: &str) -> String {
    let path = dir.join("loadtest.toml");
    std::fs::write(
        &path,
        format!(
            "[run]\nfsync = false\nprogress_interval_s = 0.2\n{run}\n[loadtest]\nworkload = \"{}\"\nwrite_outputs = true\n{inject}\n",
            workload.display()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn stage(status: &Value) -> &Value {
    let stages = status["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 1, "{status:#}");
    assert_eq!(stages[0]["stage"], "loadtest");
    &stages[0]
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn status_follows_a_running_job_its_interruption_and_its_resume() {
    const UNITS: u64 = 180;
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &vec![0.1; UNITS as usize], 10);
    let cfg = write_config(tmp.path(), &workload, "", "");
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_string_lossy().into_owned();
    let args = ["--config", cfg.as_str(), "--run-dir", rd.as_str()];

    let mut cmd = mpirun(3, &loadtest_bin(), &args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn mpirun");
    let pgid = child.id() as i32;
    // Kill the job's process group if an assertion fails before it ends.
    struct Guard(i32, bool);
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.1 {
                kill_group(self.0, "KILL");
            }
        }
    }
    let mut guard = Guard(pgid, false);

    let start = Instant::now();
    let mut running_done: Vec<u64> = Vec::new();
    let mut saw_progress_rate = false;
    let mut saw_ranks = false;
    let mut running_text = None;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no running status seen; observations {running_done:?}"
        );
        if let Some(s) = status_json(&run_dir) {
            let st = stage(&s);
            if st["running"] == true {
                assert_eq!(st["state"], "running");
                assert_eq!(st["planned"], UNITS);
                let done = n(&st["done"]);
                assert_eq!(n(&st["pending"]), UNITS - done - n(&st["failed"]));
                running_done.push(done);
                saw_progress_rate |= st["rate_source"] == "progress"
                    && st["rate_per_s"].as_f64().unwrap_or(0.0) > 0.0;
                saw_ranks |= st["ranks"] == 3;
                if done > 0 && running_text.is_none() {
                    let out = status(&[rd.as_str()]);
                    let t = String::from_utf8_lossy(&out.stdout).into_owned();
                    if t.contains("loadtest: running on 3 ranks") && t.contains("ETA") {
                        running_text = Some(t);
                    }
                }
            }
        }
        let moved = running_done.windows(2).any(|w| w[1] > w[0] && w[0] > 0);
        if moved && running_text.is_some() && saw_progress_rate && saw_ranks {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = running_text.unwrap();
    assert!(t.contains("180 planned:"), "{t}");
    assert!(t.contains("units/s (progress file"), "{t}");

    // Stop the ranks as Slurm would at a time limit.
    signal_processes(
        &format!("^{} --config {cfg}", loadtest_bin().display()),
        "TERM",
    );
    let out = wait_with_deadline(child, DEADLINE);
    guard.1 = true;
    assert_eq!(code(&out.status), 3, "{}", text(&out));
    let s = status_json(&run_dir).expect("ledger exists");
    let st = stage(&s);
    assert_eq!(st["running"], false);
    assert_eq!(st["state"], "incomplete");
    assert_eq!(st["last_exit_code"], 3);
    let done = n(&st["done"]);
    assert!(done > 0 && done < UNITS, "{st:#}");
    assert_eq!(n(&st["pending"]), UNITS - done);
    let done_in_ledger = ledger(&run_dir, "loadtest")
        .iter()
        .filter(|r| r["outcome"] == "done")
        .count() as u64;
    assert_eq!(done, done_in_ledger);
    let resume = st["resume_command"].as_str().expect("resume command");
    assert!(resume.starts_with("skypipe-loadtest --config "), "{resume}");
    assert!(
        resume.contains(&rd) && !resume.contains("--retry-failed"),
        "{resume}"
    );
    assert_eq!(st["eta_s"], Value::Null, "no ETA for a stopped job");
    let out = status(&[rd.as_str()]);
    assert_eq!(out.status.code(), Some(0));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("stopped before the end"), "{t}");
    assert!(t.contains(&format!("resume: {resume}")), "{t}");

    // Resume to the end.
    let out = run(mpirun(3, &loadtest_bin(), &args));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let s = status_json(&run_dir).unwrap();
    let st = stage(&s);
    assert_eq!(st["state"], "complete");
    assert_eq!(
        (n(&st["done"]), n(&st["pending"]), n(&st["failed"])),
        (UNITS, 0, 0)
    );
    assert_eq!(st["invocation"], 2);
    assert_eq!(st["last_exit_code"], 0);
    assert_eq!(st["lock"], "free");
}

#[test]
fn status_of_a_finished_run_counts_failures_by_kind_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &vec![0.001; 200], 10);
    let cfg = write_config(
        tmp.path(),
        &workload,
        "max_retries = 1",
        "[loadtest.inject]\nerror = [\"task=3\", \"task=150\"]\npanic = [\"task=77\"]\ntransient = [\"task=9\"]\ntransient_attempts = 5\n",
    );
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_string_lossy().into_owned();
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", &rd],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));

    let s = status_json(&run_dir).unwrap();
    assert_eq!(s["format"], "skypipe-status/1");
    let st = stage(&s);
    assert_eq!(st["state"], "failed");
    assert_eq!(st["running"], false);
    assert_eq!(st["last_exit_code"], 2);
    assert_eq!(
        (
            n(&st["planned"]),
            n(&st["done"]),
            n(&st["no_work"]),
            n(&st["failed"]),
            n(&st["pending"])
        ),
        (200, 196, 0, 4, 0)
    );
    assert_eq!(
        st["failed_by_kind"],
        serde_json::json!({"bad-input": 3, "transient": 1})
    );
    let failures: Vec<(String, String, String)> = st["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["unit"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let units: Vec<&str> = failures.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        units,
        vec!["task=3", "task=9", "task=77", "task=150"],
        "unit order"
    );
    for (unit, kind, reason) in [
        ("task=3", "bad-input", "task=3: injected bad-input error"),
        (
            "task=9",
            "transient",
            "task=9: injected transient failure (attempt 2)",
        ),
        ("task=77", "bad-input", "injected panic"),
        (
            "task=150",
            "bad-input",
            "task=150: injected bad-input error",
        ),
    ] {
        let f = failures.iter().find(|f| f.0 == unit).unwrap();
        assert_eq!(f.1, kind, "{unit}");
        assert!(f.2.contains(reason), "{unit}: {}", f.2);
    }
    let retry = st["retry_command"].as_str().unwrap();
    assert!(
        retry.contains(&cfg) && retry.ends_with("--retry-failed"),
        "{retry}"
    );

    let out = status(&["--max-failures", "2", rd.as_str()]);
    assert_eq!(out.status.code(), Some(0));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("loadtest: finished, 4 failed"), "{t}");
    assert!(
        t.contains("200 planned: 196 done, 0 no-work, 4 failed, 0 pending"),
        "{t}"
    );
    assert!(
        t.contains("failed by kind: 3 bad-input, 1 transient"),
        "{t}"
    );
    assert!(
        t.contains("task=3 [bad-input] task=3: injected bad-input error"),
        "{t}"
    );
    assert!(t.contains("... and 2 more"), "{t}");
    assert!(
        t.contains(&format!("retry the failed units: {retry}")),
        "{t}"
    );
    assert!(!t.contains("resume:"), "nothing pending: {t}");
}

#[test]
fn a_directory_without_a_ledger_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = status(&[tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ledger"),
        "{}",
        text(&out)
    );
    let out = status(&["--json", tmp.path().join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty());
}
