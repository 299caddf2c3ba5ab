//! End-to-end tests of the engine's second half: dependencies without barriers, gathers over
//! subsets, multi-rank units on sub-communicators, memory-isolated units and follow mode.
//! Ordering claims are proved by the order of ledger records (event order), never by timing.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn write_config(dir: &Path, name: &str, run: &str, loadtest: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[run]\nfsync = false\nprogress_interval_s = 0.2\n{run}\n[loadtest]\nwrite_outputs = true\n{loadtest}\n"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// Ledger unit IDs in record order.
fn order(run_dir: &Path) -> Vec<String> {
    ledger(run_dir, "loadtest")
        .iter()
        .map(|r| r["unit"].as_str().unwrap().to_string())
        .collect()
}

fn outcome_of(run_dir: &Path) -> BTreeMap<String, String> {
    ledger(run_dir, "loadtest")
        .into_iter()
        .map(|r| {
            (
                r["unit"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn position(order: &[String], unit: &str) -> usize {
    order
        .iter()
        .position(|u| u == unit)
        .unwrap_or_else(|| panic!("{unit} not in the ledger: {order:?}"))
}

/// Starts a load test under mpirun in the background.
fn spawn(ranks: usize, args: &[&str]) -> Job {
    Job::spawn(mpirun(ranks, &loadtest_bin(), args))
}

#[test]
fn a_group_gather_waits_only_for_its_own_units_and_a_failed_gather_fails_only_its_follow_ups() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    // 5 groups of 6 tasks; durations distinct so the sums identify the members.
    let durations: Vec<f64> = (0..30).map(|i| 0.001 * (1 + i % 7) as f64).collect();
    write_workload(&workload, &durations, 6);
    let hold = tmp.path().join("hold");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        "",
        &format!(
            "workload = \"{}\"\ngather = true\nfollow_up = true\n[loadtest.inject]\nhold = [\"task=0\"]\nhold_dir = \"{}\"\nerror = [\"group=3\"]\n",
            workload.display(),
            hold.display()
        ),
    );
    let run_dir = tmp.path().join("run");
    let child = spawn(
        3,
        &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
    );
    // While task=0 (group 0) is held, every other group is gathered and followed up.
    wait_until("task=0 is held", || hold.join("task=0.started").exists());
    wait_until("the other groups finish", || {
        let o = outcome_of(&run_dir);
        [1, 2, 4]
            .iter()
            .all(|g| o.get(&format!("group={g}")).is_some_and(|s| s == "done"))
            && (6..30).filter(|t| !(18..24).contains(t)).all(|t| {
                o.get(&format!("task={t},phase=2"))
                    .is_some_and(|s| s == "done")
            })
            && o.get("group=3").is_some_and(|s| s == "bad-input")
    });
    assert!(
        !outcome_of(&run_dir).contains_key("task=0"),
        "the held unit was recorded"
    );
    std::fs::write(hold.join("task=0.release"), "").unwrap();
    let out = child.wait();
    assert_eq!(code(&out.status), 2, "{}", text(&out));

    let order = order(&run_dir);
    let outcomes = outcome_of(&run_dir);
    assert_eq!(order.len(), 30 + 5 + 30, "each unit recorded once");
    for g in [1, 2, 4] {
        assert!(
            position(&order, &format!("group={g}")) < position(&order, "task=0"),
            "group {g} waited for group 0"
        );
    }
    assert!(position(&order, "group=0") > position(&order, "task=0"));
    for t in 18..24 {
        assert_eq!(
            outcomes[&format!("task={t},phase=2")],
            "dependency-failed",
            "task {t}"
        );
    }
    for t in (0..30).filter(|t| !(18..24).contains(t)) {
        assert_eq!(outcomes[&format!("task={t},phase=2")], "done", "task {t}");
    }
    // The gathered values are right: each group's sum over exactly its members.
    let outputs = files(&run_dir.join("loadtest"));
    for g in [0usize, 1, 2, 4] {
        let sum: f64 = durations[g * 6..g * 6 + 6].iter().sum();
        let text = String::from_utf8(outputs[&format!("group={g}.out")].clone()).unwrap();
        let members: Vec<String> = (g * 6..g * 6 + 6).map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            format!(
                "group={g}\ttasks=6\tsum_s={sum}\tmembers={}\n",
                members.join(",")
            )
        );
        let follow =
            String::from_utf8(outputs[&format!("task={},phase=2.out", g * 6 + 1)].clone()).unwrap();
        assert_eq!(
            follow,
            format!(
                "task={},phase=2\tgroup={g}\tgroup_tasks=6\tgroup_sum_s={sum}\n",
                g * 6 + 1
            )
        );
    }
    assert!(!outputs.contains_key("group=3.out"));
}

#[test]
fn a_chain_of_units_runs_without_stage_barriers() {
    // warp(p, i) -> coadd(p) -> detect(p, i): tasks, group gathers and follow-ups; one warp of
    // patch 2 is slow (held). Every other patch's coadd and detections end before it does.
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.002; 24], 4);
    let hold = tmp.path().join("hold");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        "",
        &format!(
            "workload = \"{}\"\ngather = true\nfollow_up = true\n[loadtest.inject]\nhold = [\"task=9\"]\nhold_dir = \"{}\"\n",
            workload.display(),
            hold.display()
        ),
    );
    let run_dir = tmp.path().join("run");
    let child = spawn(
        2,
        &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
    );
    wait_until("the slow warp starts", || {
        hold.join("task=9.started").exists()
    });
    wait_until("every other patch is coadded and detected", || {
        let o = outcome_of(&run_dir);
        (0..6)
            .filter(|&p| p != 2)
            .all(|p| o.contains_key(&format!("group={p}")))
            && (0..24)
                .filter(|t| t / 4 != 2)
                .all(|t| o.contains_key(&format!("task={t},phase=2")))
    });
    std::fs::write(hold.join("task=9.release"), "").unwrap();
    let out = child.wait();
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let order = order(&run_dir);
    let slow = position(&order, "task=9");
    for p in (0..6).filter(|&p| p != 2) {
        assert!(
            position(&order, &format!("group={p}")) < slow,
            "coadd of patch {p} waited for the slow warp"
        );
    }
    assert!(position(&order, "group=2") > slow);
    for i in 8..12 {
        assert!(position(&order, &format!("task={i},phase=2")) > position(&order, "group=2"));
    }
}

#[test]
fn a_multi_rank_unit_reduces_over_exactly_its_ranks_while_others_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.003; 60], 60);
    let hold = tmp.path().join("hold");
    let mut results = Vec::new();
    for (ranks, k) in [(4, 2), (3, 2), (2, 2), (4, 3)] {
        let cfg = write_config(
            tmp.path(),
            &format!("c{ranks}{k}.toml"),
            "",
            &format!(
                "workload = \"{}\"\ncollective_ranks = {k}\n[loadtest.inject]\nhold = [\"collective=1\"]\nhold_dir = \"{}\"\n",
                workload.display(),
                hold.display()
            ),
        );
        let _ = std::fs::remove_dir_all(&hold);
        let run_dir = tmp.path().join(format!("run{ranks}{k}"));
        let child = spawn(
            ranks,
            &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
        );
        wait_until("the multi-rank unit starts", || {
            hold.join("collective=1.started").exists()
        });
        if ranks > k {
            // The ranks outside the unit keep completing ordinary units meanwhile.
            let before = ledger(&run_dir, "loadtest").len();
            wait_until("other ranks complete units", || {
                ledger(&run_dir, "loadtest").len() >= before + 5
            });
        }
        std::fs::write(hold.join("collective=1.release"), "").unwrap();
        let out = child.wait();
        assert_eq!(code(&out.status), 0, "{}", text(&out));
        let outputs = files(&run_dir.join("loadtest"));
        assert_eq!(outputs.len(), 61);
        let expected_sum = (k * (k + 1) / 2) as f64;
        let text = String::from_utf8(outputs["collective=1.out"].clone()).unwrap();
        assert_eq!(
            text,
            format!("collective=1\tranks={k}\tsum={expected_sum}\tcount={k}\n")
        );
        results.push((k, text));
    }
    assert_eq!(
        results[0].1, results[1].1,
        "result depends on where the unit landed"
    );
    assert_eq!(
        results[1].1, results[2].1,
        "result depends on where the unit landed"
    );
}

#[test]
fn a_unit_over_its_memory_limit_fails_alone_and_is_retried_with_a_larger_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.0; 12], 12);
    let loadtest = format!(
        "workload = \"{}\"\n[loadtest.inject]\nallocate = [\"task=5\"]\nallocate_mb = 300\n",
        workload.display()
    );
    // Limits 120 -> 240 -> 480 MiB: the third attempt fits.
    let cfg = write_config(
        tmp.path(),
        "grow.toml",
        "isolate = true\nmemory_limit_mb = 120\nmemory_cap_mb = 480",
        &loadtest,
    );
    let run_dir = tmp.path().join("grow");
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let records = ledger(&run_dir, "loadtest");
    assert_eq!(records.len(), 12);
    let r5 = records.iter().find(|r| r["unit"] == "task=5").unwrap();
    assert_eq!(r5["outcome"], "done");
    assert_eq!(r5["memory_limits_mb"], serde_json::json!([120, 240, 480]));
    assert_eq!(report(&run_dir)["retries"], 2);

    // With the cap too low it fails as out-of-memory; the others complete; exit code 2.
    let cfg = write_config(
        tmp.path(),
        "cap.toml",
        "isolate = true\nmemory_limit_mb = 120\nmemory_cap_mb = 240",
        &loadtest,
    );
    let run_dir = tmp.path().join("cap");
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let outcomes = outcome_of(&run_dir);
    assert_eq!(outcomes["task=5"], "out-of-memory");
    assert_eq!(outcomes.values().filter(|o| *o == "done").count(), 11);
    let rep = report(&run_dir);
    assert_eq!(
        rep["failures"][0]["memory_limits_mb"],
        serde_json::json!([120, 240])
    );
    assert!(
        rep["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("out of memory at memory limit 240 MiB"),
        "{rep}"
    );
}

fn task_list(tasks: impl IntoIterator<Item = u32>) -> String {
    let units: Vec<serde_json::Value> = tasks
        .into_iter()
        .map(|i| serde_json::json!({"unit": {"Task": {"index": i, "group": 7, "duration_s": 0.001}}}))
        .collect();
    serde_json::json!({"format": "skypipe-unit-list/1", "units": units}).to_string()
}

fn drop_atomically(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, dir.join(name)).unwrap();
}

#[test]
fn follow_mode_takes_unit_lists_until_stopped_and_rejects_a_malformed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.005; 20], 20);
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        "",
        &format!("workload = \"{}\"\n", workload.display()),
    );
    let inbox: PathBuf = tmp.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let run_dir = tmp.path().join("run");
    let child = spawn(
        3,
        &[
            "--config",
            &cfg,
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--follow",
            inbox.to_str().unwrap(),
        ],
    );
    wait_until("the initial units end", || {
        ledger(&run_dir, "loadtest").len() >= 20
    });
    drop_atomically(&inbox, "a.json", &task_list(100..130));
    wait_until("list a is done", || {
        ledger(&run_dir, "loadtest").len() >= 50
    });
    drop_atomically(
        &inbox,
        "b.json",
        "{\"format\": \"skypipe-unit-list/1\", \"units\": [{\"unit\": {\"Task\": {\"index\": \"x\"}}}]}",
    );
    // c overlaps a (its units are taken once) and adds 10 more.
    drop_atomically(&inbox, "c.json", &task_list(120..140));
    std::fs::write(inbox.join("STOP"), "").unwrap();
    let out = child.wait();
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let records = ledger(&run_dir, "loadtest");
    let units: BTreeSet<String> = records
        .iter()
        .map(|r| r["unit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(records.len(), 60, "each unit exactly once");
    assert_eq!(units.len(), 60);
    assert!(units.contains("task=139") && units.contains("task=100") && units.contains("task=19"));
    assert!(records.iter().all(|r| r["outcome"] == "done"));
    let rejected = std::fs::read_to_string(inbox.join("b.json.rejected")).unwrap();
    assert!(
        rejected.contains("b.json") && rejected.contains("not a unit list"),
        "{rejected}"
    );
    let rep = report(&run_dir);
    assert_eq!(rep["rejected_lists"].as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected unit list"));
    // The manifest counts the units of the lists too (skypipe-status: 60 planned, 0 pending).
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("ledger/loadtest.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["planned_units"], 60);
}

#[test]
fn a_run_stopped_inside_a_multi_rank_unit_reports_its_real_makespan_and_busy_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.003; 6], 6);
    let hold = tmp.path().join("hold");
    let cfg = write_config(
        tmp.path(),
        "stop.toml",
        "stop_grace_s = 0.5",
        &format!(
            "workload = \"{}\"\ncollective_ranks = 2\n[loadtest.inject]\nhold = [\"collective=1\"]\nhold_dir = \"{}\"\n",
            workload.display(),
            hold.display()
        ),
    );
    let run_dir = tmp.path().join("run");
    let child = spawn(
        3,
        &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
    );
    wait_until("the multi-rank unit starts", || {
        hold.join("collective=1.started").exists()
    });
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let held = started.elapsed().as_secs_f64();
    signal_processes(
        &format!("^{} --config {cfg}", loadtest_bin().display()),
        "TERM",
    );
    let out = child.wait();
    assert_eq!(code(&out.status), 3, "{}", text(&out));
    let r = report(&run_dir);
    assert_eq!(r["interrupted"], true, "{r}");
    let makespan = r["makespan_s"].as_f64().unwrap();
    assert!(
        makespan >= held,
        "makespan {makespan} s < {held} s held: {r}"
    );
    let per_rank = r["per_rank"].as_array().unwrap();
    assert_eq!(per_rank.len(), 3, "{r}");
    let busy: f64 = per_rank.iter().map(|p| p["busy_s"].as_f64().unwrap()).sum();
    assert!(
        busy >= 2.0 * held,
        "two ranks held {held} s, busy {busy} s: {r}"
    );
    let utilisation = r["utilisation"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&utilisation) && utilisation > 0.0,
        "{r}"
    );
    for p in per_rank {
        let u = p["utilisation"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&u), "{r}");
    }
}

#[test]
fn a_multi_rank_unit_runs_on_the_ranks_that_ran_its_affinity_units() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    // Three groups of 20 short tasks; the two-rank unit runs after group 0's and prefers
    // the ranks that ran them: among equals the lowest, which the first free ranks (the
    // choice without affinity) rarely are, so three runs tell the two apart.
    write_workload(&workload, &[0.003; 60], 20);
    for run in 0..3 {
        let cfg = write_config(
            tmp.path(),
            &format!("c{run}.toml"),
            "",
            &format!(
                "workload = \"{}\"\ncollective_ranks = 2\ncollective_affinity_group = 0\n",
                workload.display()
            ),
        );
        let run_dir = tmp.path().join(format!("run{run}"));
        let out = spawn(
            4,
            &["--config", &cfg, "--run-dir", run_dir.to_str().unwrap()],
        )
        .wait();
        assert_eq!(code(&out.status), 0, "{}", text(&out));
        let records = ledger(&run_dir, "loadtest");
        // From the ledger: how many of group 0's tasks each rank ran.
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &records {
            let unit = r["unit"].as_str().unwrap();
            if let Some(n) = unit.strip_prefix("task=")
                && n.parse::<usize>().unwrap() < 20
            {
                *counts.entry(r["rank"].as_u64().unwrap()).or_default() += 1;
            }
        }
        let mut ranked: Vec<(u64, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let preferred: BTreeSet<u64> = ranked.iter().take(2).map(|(r, _)| *r).collect();
        let collective = records
            .iter()
            .find(|r| r["unit"] == "collective=1")
            .expect("the collective unit is recorded");
        assert_eq!(collective["outcome"], "done", "{collective}");
        let ran: BTreeSet<u64> = collective["ranks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(
            preferred.is_subset(&ran),
            "run {run}: the unit ran on {ran:?}, group 0's tasks by rank {ranked:?}"
        );
    }
}
