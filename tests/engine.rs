//! End-to-end tests of the engine through `skypipe-loadtest` under mpirun.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Writes a config for the load test and returns its path.
fn config(dir: &Path, workload: &Path, extra_run: &str, extra_loadtest: &str) -> String {
    let path = dir.join("loadtest.toml");
    std::fs::write(
        &path,
        format!(
            "[run]\nfsync = false\nprogress_interval_s = 0.2\n{extra_run}\n[loadtest]\nworkload = \"{}\"\nwrite_outputs = true\n{extra_loadtest}\n",
            workload.display()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn done_units(run_dir: &Path) -> BTreeSet<String> {
    ledger(run_dir, "loadtest")
        .into_iter()
        .filter(|r| r["outcome"] == "done")
        .map(|r| r["unit"].as_str().unwrap().to_string())
        .collect()
}

fn assert_no_temporaries(dir: &Path) {
    let temps: Vec<String> = files(dir)
        .into_keys()
        .filter(|k| k.contains(".skypipe-tmp."))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

/// Four ranks (oversubscribed on a 2-core machine, so ranks are descheduled while the SIGTERM
/// arrives): an interruption and a resume leave every unit recorded exactly once.
#[test]
fn three_thousand_units_on_four_oversubscribed_ranks_run_exactly_once_across_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &vec![0.002; 3000], 100);
    let cfg = config(tmp.path(), &workload, "", "");
    let run_dir = tmp.path().join("run");
    let run_dir_s = run_dir.to_string_lossy().into_owned();
    let args = ["--config", cfg.as_str(), "--run-dir", run_dir_s.as_str()];

    // First invocation: SIGTERM every rank part-way, as Slurm does at the time limit.
    let mut first = mpirun(4, &loadtest_bin(), &args);
    first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = first.spawn().unwrap();
    let ledger_path = run_dir.join("ledger/loadtest.jsonl");
    let start = std::time::Instant::now();
    while std::fs::metadata(&ledger_path)
        .map(|m| m.len())
        .unwrap_or(0)
        < 20_000
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal_processes(
        &format!("^{} --config {cfg}", loadtest_bin().display()),
        "TERM",
    );
    let out = wait_with_deadline(child, DEADLINE);
    assert_eq!(code(&out.status), 3, "{}", text(&out));
    let after_first = done_units(&run_dir);
    assert!(
        !after_first.is_empty() && after_first.len() < 3000,
        "{}",
        after_first.len()
    );
    assert_no_temporaries(&run_dir);

    // Resume: only the rest runs.
    let out = run(mpirun(4, &loadtest_bin(), &args));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let records = ledger(&run_dir, "loadtest");
    assert_eq!(records.len(), 3000, "every unit recorded once");
    let units: BTreeSet<&str> = records
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units.len(), 3000, "no unit recorded twice");
    assert!(records.iter().all(|r| r["outcome"] == "done"));
    for r in &records {
        let unit = r["unit"].as_str().unwrap();
        let expected_invocation = if after_first.contains(unit) { 1 } else { 2 };
        assert_eq!(
            r["invocation"], expected_invocation,
            "{unit} ran in the wrong invocation"
        );
    }
    let outputs = files(&run_dir.join("loadtest"));
    assert_eq!(outputs.len(), 3000);
    assert_eq!(
        outputs["task=2999.out"],
        b"task=2999\tgroup=29\tduration_s=0.002\n".to_vec()
    );
    let rep = report(&run_dir);
    assert_eq!(rep["skipped_done"], after_first.len());
    assert_eq!(rep["ran"], 3000 - after_first.len());
    assert_eq!(rep["per_rank"].as_array().unwrap().len(), 4);
}

#[test]
fn failing_and_panicking_units_are_isolated_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &vec![0.001; 200], 10);
    let cfg = config(
        tmp.path(),
        &workload,
        "max_retries = 2",
        "[loadtest.inject]\nerror = [\"task=3\", \"task=150\"]\npanic = [\"task=77\"]\ntransient = [\"task=5\", \"task=6\"]\ntransient_attempts = 2\n",
    );
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_string_lossy().into_owned();
    let out = run(mpirun(
        3,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", &rd],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("task=77 [bad-input] panicked: task=77: injected panic"),
        "{stderr}"
    );
    assert!(stderr.contains("--retry-failed"), "{stderr}");

    let counts = ledger_counts(&run_dir, "loadtest");
    assert_eq!(counts.len(), 200, "one record per unit: {counts:?}");
    for (unit, kind) in [
        ("task=3", "bad-input"),
        ("task=150", "bad-input"),
        ("task=77", "bad-input"),
    ] {
        assert_eq!(
            counts.get(&(unit.to_string(), kind.to_string())),
            Some(&1),
            "{unit}"
        );
    }
    let records = ledger(&run_dir, "loadtest");
    for r in &records {
        let unit = r["unit"].as_str().unwrap();
        if !["task=3", "task=150", "task=77"].contains(&unit) {
            assert_eq!(r["outcome"], "done", "{unit}");
        }
        if unit == "task=5" || unit == "task=6" {
            assert_eq!(
                r["attempts"], 3,
                "transient units succeed on their third attempt"
            );
        }
    }
    let rep = report(&run_dir);
    assert_eq!(rep["exit_code"], 2);
    assert_eq!(rep["retries"], 4);
    let failures: BTreeSet<(String, String)> = rep["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["unit"].as_str().unwrap().to_string(),
                f["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ["task=3", "task=150", "task=77"]
        .iter()
        .map(|u| (u.to_string(), "bad-input".to_string()))
        .collect();
    assert_eq!(failures, expected);

    // A rerun without --retry-failed runs nothing and still reports the failures.
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", &rd],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    assert_eq!(ledger(&run_dir, "loadtest").len(), 200);
    assert_eq!(report(&run_dir)["failures"].as_array().unwrap().len(), 3);

    // With too few retries, a transient unit fails as transient.
    let cfg2 = config(
        tmp.path(),
        &workload,
        "max_retries = 1",
        "[loadtest.inject]\ntransient = [\"task=9\"]\ntransient_attempts = 5\n",
    );
    let rd2 = tmp.path().join("run2").to_string_lossy().into_owned();
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &cfg2, "--run-dir", &rd2],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let rep = report(Path::new(&rd2));
    assert_eq!(rep["failures"][0]["unit"], "task=9");
    assert_eq!(rep["failures"][0]["outcome"], "transient");
    assert_eq!(rep["failures"][0]["attempts"], 2);
}

#[test]
fn sigkill_mid_run_then_resume_gives_byte_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    let durations: Vec<f64> = (0..600)
        .map(|i| 0.001 + 0.002 * ((i * 7 % 5) as f64))
        .collect();
    write_workload(&workload, &durations, 25);
    let cfg = config(tmp.path(), &workload, "ledger_sync_interval_s = 0.05", "");
    let reference = tmp.path().join("reference");
    let out = run(mpirun(
        3,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", reference.to_str().unwrap()],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    let killed = tmp.path().join("killed");
    let killed_s = killed.to_string_lossy().into_owned();
    let mut cmd = mpirun(
        3,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", &killed_s],
    );
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let ledger_path = killed.join("ledger/loadtest.jsonl");
    let start = std::time::Instant::now();
    while std::fs::metadata(&ledger_path)
        .map(|m| m.len())
        .unwrap_or(0)
        < 5_000
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_group(child.id() as i32, "KILL");
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    let first = done_units(&killed);
    assert!(first.len() < 600, "the kill came too late to test anything");

    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", &killed_s],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert_eq!(
        files(&reference.join("loadtest")),
        files(&killed.join("loadtest")),
        "outputs after kill + resume differ from an uninterrupted run"
    );
    assert_no_temporaries(&killed);
    let records = ledger(&killed, "loadtest");
    let units: BTreeSet<&str> = records
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units.len(), 600);
    assert_eq!(records.len(), 600, "a unit was recorded twice");
    for r in records.iter().filter(|r| r["invocation"] == 2) {
        assert!(
            !first.contains(r["unit"].as_str().unwrap()),
            "resume redid a unit recorded done"
        );
    }
}

#[test]
fn one_unit_in_process_matches_mpirun_and_results_do_not_depend_on_rank_count() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    let durations: Vec<f64> = (0..60).map(|i| 0.0005 * (i % 4) as f64).collect();
    write_workload(&workload, &durations, 7);
    let cfg = config(
        tmp.path(),
        &workload,
        "",
        "[loadtest.inject]\nerror = [\"task=11\"]\n",
    );
    let mut outputs = Vec::new();
    let mut outcome_sets = Vec::new();
    for ranks in [1, 2, 3] {
        let rd = tmp.path().join(format!("run{ranks}"));
        let out = run(mpirun(
            ranks,
            &loadtest_bin(),
            &["--config", &cfg, "--run-dir", rd.to_str().unwrap()],
        ));
        assert_eq!(code(&out.status), 2, "{}", text(&out));
        outputs.push(files(&rd.join("loadtest")));
        outcome_sets.push(ledger_counts(&rd, "loadtest"));
    }
    assert_eq!(outputs[0].len(), 59);
    assert!(
        outputs.iter().all(|o| *o == outputs[0]),
        "outputs differ between 1, 2, 3 ranks"
    );
    assert!(
        outcome_sets.iter().all(|o| *o == outcome_sets[0]),
        "outcomes differ between 1, 2, 3 ranks"
    );

    let rd = tmp.path().join("single");
    let out = run(direct(
        &loadtest_bin(),
        &[
            "--config",
            &cfg,
            "--run-dir",
            rd.to_str().unwrap(),
            "--unit",
            "task=37",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("loadtest[task=37] done"),
        "{}",
        text(&out)
    );
    let single = files(&rd.join("loadtest"));
    assert_eq!(single.len(), 1);
    assert_eq!(single["task=37.out"], outputs[0]["task=37.out"]);
    assert!(
        !rd.join("ledger").exists(),
        "--unit must not touch the ledger"
    );

    let out = run(direct(
        &loadtest_bin(),
        &[
            "--config",
            &cfg,
            "--run-dir",
            rd.to_str().unwrap(),
            "--unit",
            "task=11",
        ],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("bad-input: task=11: injected bad-input error")
    );

    let out = run(direct(
        &loadtest_bin(),
        &[
            "--config",
            &cfg,
            "--run-dir",
            rd.to_str().unwrap(),
            "--unit",
            "task=999",
        ],
    ));
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit task=999"));
}

#[test]
fn bad_configurations_and_workloads_stop_before_any_unit_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let rd = tmp.path().join("run");
    let rd = rd.to_str().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.0; 5], 1);

    let bad_key = tmp.path().join("bad_key.toml");
    std::fs::write(&bad_key, "[run]\nmax_retrys = 3\n").unwrap();
    let out = run(direct(
        &loadtest_bin(),
        &["--config", bad_key.to_str().unwrap(), "--run-dir", rd],
    ));
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad_key.toml") && err.contains("max_retrys"),
        "{err}"
    );

    let bad_value = tmp.path().join("bad_value.toml");
    std::fs::write(&bad_value, "[run]\nprogress_interval_s = -1\n").unwrap();
    let out = run(direct(
        &loadtest_bin(),
        &["--config", bad_value.to_str().unwrap(), "--run-dir", rd],
    ));
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run.progress_interval_s"));

    let malformed = tmp.path().join("malformed.json");
    std::fs::write(
        &malformed,
        r#"{"format":"skypipe-engine-workload/1","durations_s":[0.1,"x"],"group":[0,0]}"#,
    )
    .unwrap();
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--workload", malformed.to_str().unwrap(), "--run-dir", rd],
    ));
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("malformed.json: key 'durations_s': element 1"),
        "{err}"
    );
    assert!(ledger(Path::new(rd), "loadtest").is_empty());

    // A changed configuration is refused on resume unless allowed.
    let w = workload.to_str().unwrap();
    let out = run(direct(&loadtest_bin(), &["--workload", w, "--run-dir", rd]));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let out = run(direct(
        &loadtest_bin(),
        &["--workload", w, "--run-dir", rd, "--time-scale", "2"],
    ));
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-config-change"),
        "{}",
        text(&out)
    );
    let out = run(direct(
        &loadtest_bin(),
        &[
            "--workload",
            w,
            "--run-dir",
            rd,
            "--time-scale",
            "2",
            "--allow-config-change",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    // The dry run lists units and their states without running anything.
    let out = run(direct(
        &loadtest_bin(),
        &[
            "--workload",
            w,
            "--run-dir",
            rd,
            "--time-scale",
            "2",
            "--dry-run",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("task=4\tdone"), "{listing}");
    assert!(
        listing.contains("5 units planned, 5 already done, 0 failed earlier, 0 would run"),
        "{listing}"
    );
}
