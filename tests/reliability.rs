//! Reliability: no input takes down the job, no process outlives it, no stale temporary or
//! partial product survives (issue 14). Each test fails if its fault comes back.

mod common;

use common::cmb::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Replaces `attitude/{time,quat,velocity}` of an observation by chunked datasets of 2^33
/// rows that were never written (an 8 MB file declaring 256 GiB).
const HUGE_ATTITUDE: &str = r#"
import sys, h5py
with h5py.File(sys.argv[1], 'r+') as f:
    for name, width in (('time', None), ('quat', 4), ('velocity', 3)):
        attrs = dict(f['attitude/' + name].attrs)
        del f['attitude/' + name]
        shape = (2**33,) if width is None else (2**33, width)
        chunks = (4096,) if width is None else (4096, width)
        d = f.create_dataset('attitude/' + name, shape, 'f8', chunks=chunks)
        for k, v in attrs.items():
            d.attrs[k] = v
"#;

fn failure_message(run_dir: &Path, unit: &str) -> String {
    let report = report(run_dir);
    report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["unit"] == unit)
        .unwrap_or_else(|| panic!("{unit} not among the failures: {report}"))["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn huge_declared_hdf5_sizes_fail_their_unit_as_bad_input_isolated_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 4\n");
    let bad = tmp.path().join("data/obs/obs=0001.h5");
    python(HUGE_ATTITUDE, &[s(&bad)]);
    for (name, run) in [("plain", ""), ("isolated", "isolate = true\n")] {
        let cfg = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("[run]\nfsync = false\n{run}[pointing]\n{POINTING}\n"),
        )
        .unwrap();
        let run_dir = tmp.path().join(name);
        let out = run_stage("pointing", &s(&cfg), &list, &run_dir, 3, &[]);
        assert_eq!(code(&out.status), 2, "{name}: {}", text(&out));
        let mut expected = all_done(4);
        expected[1].1 = "bad-input".into();
        assert_eq!(outcomes(&run_dir, "pointing"), expected, "{name}");
        let m = failure_message(&run_dir, "obs=0001");
        assert!(
            m.contains(&s(&bad)) && m.contains("'attitude/time'") && m.contains("memory limit"),
            "{name}: {m}"
        );
    }
}

#[test]
fn an_isolated_unit_out_of_memory_is_recorded_with_the_file_it_was_reading() {
    // obs 1 holds 2^20 attitude rows: each dataset passes the check against the 40 MiB limit,
    // but together they do not fit, so its isolated unit dies while reading.
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 3\n");
    let big = tmp.path().join("data/obs/obs=0001.h5");
    let grow = r#"
import sys, h5py, numpy as np
n = 2**20
with h5py.File(sys.argv[1], 'r+') as f:
    t0 = f['attitude/time'][0]
    for name in ('time', 'quat', 'velocity'):
        attrs = dict(f['attitude/' + name].attrs)
        del f['attitude/' + name]
        if name == 'time':
            data = t0 + np.arange(n) / 8.0
        elif name == 'quat':
            data = np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
        else:
            data = np.zeros((n, 3))
        d = f.create_dataset('attitude/' + name, data=data)
        for k, v in attrs.items():
            d.attrs[k] = v
"#;
    python(grow, &[s(&big)]);
    let cfg = tmp.path().join("oom.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\nisolate = true\nmemory_limit_mb = 40\nmemory_cap_mb = 40\n[pointing]\n{POINTING}\n"
        ),
    )
    .unwrap();
    let run_dir = tmp.path().join("run");
    let out = run_stage("pointing", &s(&cfg), &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let mut expected = all_done(3);
    expected[1].1 = "out-of-memory".into();
    assert_eq!(outcomes(&run_dir, "pointing"), expected, "{}", text(&out));
    let m = failure_message(&run_dir, "obs=0001");
    assert!(m.contains(&format!("while reading {}", s(&big))), "{m}");
}

/// Sets the integer value of header card `key` in the first header of a FITS file.
fn set_card(bytes: &mut [u8], key: &str, value: i64) {
    let prefix = format!("{key:<8}=");
    let card = bytes
        .chunks_mut(80)
        .find(|c| c.starts_with(prefix.as_bytes()))
        .unwrap_or_else(|| panic!("no card {key}"));
    card.copy_from_slice(format!("{:<80}", format!("{key:<8}= {value:>20}")).as_bytes());
}

#[test]
fn huge_declared_fits_image_fails_its_unit_as_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sim = run(direct(
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim")),
        &["image", "--out", &s(&data), "--size", "tiny", "--seed", "7"],
    ));
    assert_eq!(code(&sim.status), 0, "{}", text(&sim));
    let list = data.join("units.json");
    let mut units: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    let raw = data.join(units["units"][0]["raw"].as_str().unwrap());
    let mut bytes = std::fs::read(&raw).unwrap();
    set_card(&mut bytes, "NAXIS1", 1 << 20);
    set_card(&mut bytes, "NAXIS2", 1 << 20);
    let huge = data.join("huge.fits");
    std::fs::write(&huge, &bytes).unwrap();
    units["units"][0]["raw"] = s(&huge).into();
    let bad_list = data.join("bad-units.json");
    std::fs::write(&bad_list, serde_json::to_vec(&units).unwrap()).unwrap();
    let cfg = tmp.path().join("sf.toml");
    std::fs::write(&cfg, "[run]\nfsync = false\n").unwrap();
    let run_dir = tmp.path().join("run");
    let out = run(mpirun(
        3,
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-singleframe")),
        &[
            "--config",
            &s(&cfg),
            "--input",
            &s(&bad_list),
            "--run-dir",
            &s(&run_dir),
        ],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let records = ledger(&run_dir, "singleframe");
    let failed: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["outcome"] != "done").collect();
    assert_eq!(failed.len(), 1, "{records:?}");
    assert_eq!(failed[0]["outcome"], "bad-input");
    let m = failed[0]["message"].as_str().unwrap();
    assert!(
        m.contains("huge.fits") && m.contains("primary HDU") && m.contains("declares"),
        "{m}"
    );
}

/// Processes whose command line mentions `needle` (other than this test).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("reliability-") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The process IDs of the 3 ranks of the job writing `run_dir` (not mpirun, not children).
fn ranks_of(run_dir: &Path) -> Vec<i32> {
    let ranks: Vec<i32> = processes_mentioning(&format!("--run-dir {}", run_dir.display()))
        .iter()
        .filter(|p| !p.contains("--isolated-unit") && !p.contains("mpirun"))
        .map(|p| p.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ranks.len(), 3, "{ranks:?}");
    ranks
}

fn signal_pid(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn isolated_children(run_dir: &Path) -> Vec<String> {
    processes_mentioning(&format!("--isolated-unit {}", run_dir.display()))
}

fn start_long_isolated_job(dir: &Path, name: &str) -> (Job, PathBuf) {
    let workload = dir.join(format!("{name}.json"));
    write_workload(&workload, &[30.0; 8], 1);
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\nisolate = true\nstop_grace_s = 1.0\n[loadtest]\nworkload = \"{}\"\nwrite_outputs = true\n",
            workload.display()
        ),
    )
    .unwrap();
    let run_dir = dir.join(name);
    let job = Job::spawn(mpirun(
        3,
        &loadtest_bin(),
        &["--config", &s(&cfg), "--run-dir", &s(&run_dir)],
    ));
    let start = Instant::now();
    while isolated_children(&run_dir).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "isolated units never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (job, run_dir)
}

#[test]
fn isolated_children_die_with_their_rank() {
    let tmp = tempfile::tempdir().unwrap();
    // SIGTERM to the ranks alone (as mpirun forwards it), not to their children.
    let (job, run_dir) = start_long_isolated_job(tmp.path(), "term");
    for rank in ranks_of(&run_dir) {
        signal_pid(rank, "TERM");
    }
    let out = job.wait();
    assert_eq!(code(&out.status), 3, "{}", text(&out));
    let after_exit = snapshot(&run_dir);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(isolated_children(&run_dir), Vec::<String>::new());
    assert_eq!(
        snapshot(&run_dir),
        after_exit,
        "written after the job exited"
    );

    // kill -9 of a rank: its isolated child dies with it.
    let (job, run_dir) = start_long_isolated_job(tmp.path(), "kill");
    let ranks = ranks_of(&run_dir);
    signal_pid(ranks[1], "KILL");
    let _ = job.wait();
    let start = Instant::now();
    while !isolated_children(&run_dir).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "children outlived the job: {:?}",
            isolated_children(&run_dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn follow_inbox_rejects_fifos_bad_costs_and_late_lists_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.001; 6], 6);
    let hold = tmp.path().join("hold");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\n[loadtest]\nworkload = \"{}\"\n[loadtest.inject]\nhold = [\"task=0\"]\nhold_dir = \"{}\"\n",
            workload.display(),
            hold.display()
        ),
    )
    .unwrap();
    let inbox = tmp.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let fifo = inbox.join("pipe.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let list = |index: u32, extra: &str| {
        format!(
            "{{\"format\": \"skypipe-unit-list/1\", \"units\": [{{\"unit\": {{\"Task\": {{\"index\": {index}, \"group\": 9, \"duration_s\": 0.001}}}}{extra}}}]}}"
        )
    };
    std::fs::write(inbox.join("negative.json"), list(50, ", \"cost\": -1e308")).unwrap();
    let run_dir = tmp.path().join("run");
    let job = Job::spawn(mpirun(
        2,
        &loadtest_bin(),
        &[
            "--config",
            &s(&cfg),
            "--run-dir",
            &s(&run_dir),
            "--follow",
            &s(&inbox),
        ],
    ));
    wait_for("task=0 started", || hold.join("task=0.started").exists());
    std::fs::write(inbox.join("STOP"), "").unwrap();
    // The dispatcher sees STOP on its next scan; a list dropped afterwards is never run.
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(inbox.join("late.json"), list(60, "")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(hold.join("task=0.release"), "").unwrap();
    let out = job.wait();
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let reason = |name: &str| {
        std::fs::read_to_string(inbox.join(format!("{name}.rejected")))
            .unwrap_or_else(|e| panic!("{name}.rejected: {e}\n{}", text(&out)))
    };
    assert!(reason("pipe.json").contains("a FIFO"));
    let negative = reason("negative.json");
    assert!(
        negative.contains("cost -1e308") && negative.len() < 300,
        "{negative}"
    );
    assert!(reason("late.json").contains("after STOP"));
    assert_eq!(ledger(&run_dir, "loadtest").len(), 6);
    assert_eq!(
        report(&run_dir)["rejected_lists"].as_array().unwrap().len(),
        3
    );
}

/// A tiny, full tmpfs mounted at a directory for one test, unmounted when dropped.
struct TinyFilesystem(PathBuf);

impl TinyFilesystem {
    fn mount_full(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (the full-disk test runs as root)");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {}",
            dir.display()
        );
        // Fill it: an output cannot even be created (HDF5 and CFITSIO fail writing headers).
        let filler = vec![0_u8; 4096];
        let mut f = std::fs::File::create(dir.join("filler")).unwrap();
        while std::io::Write::write_all(&mut f, &filler).is_ok() {}
        Self(dir.to_path_buf())
    }
}

impl Drop for TinyFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_outputs_as_transient_in_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 2\n");
    let run_dir = tmp.path().join("run");
    let cfg = tmp.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!("[run]\nfsync = false\nmax_retries = 1\n[pointing]\n{POINTING}\n"),
    )
    .unwrap();
    let full = TinyFilesystem::mount_full(&run_dir.join("pointing"), "24k");
    let out = run_stage("pointing", &s(&cfg), &list, &run_dir, 2, &[]);
    drop(full);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    for (unit, outcome) in outcomes(&run_dir, "pointing") {
        assert_eq!(outcome, "transient", "{unit}: {}", text(&out));
        let m = failure_message(&run_dir, &unit);
        assert!(
            m.contains("No space left") || m.contains("errno = 28"),
            "{m}"
        );
    }

    let data = tmp.path().join("image");
    let sim = run(direct(
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim")),
        &["image", "--out", &s(&data), "--size", "tiny", "--seed", "7"],
    ));
    assert_eq!(code(&sim.status), 0, "{}", text(&sim));
    let cfg = tmp.path().join("sf.toml");
    std::fs::write(&cfg, "[run]\nfsync = false\nmax_retries = 0\n").unwrap();
    let run_dir = tmp.path().join("sf");
    let full = TinyFilesystem::mount_full(&run_dir.join("singleframe"), "24k");
    let out = run(mpirun(
        2,
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-singleframe")),
        &[
            "--config",
            &s(&cfg),
            "--input",
            &s(&data.join("units.json")),
            "--run-dir",
            &s(&run_dir),
        ],
    ));
    drop(full);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    for r in ledger(&run_dir, "singleframe") {
        if r["unit"].as_str().unwrap().contains("ccd=") {
            assert_eq!(r["outcome"], "transient", "{r}");
        }
    }
}

#[test]
fn a_rerun_removes_the_temporaries_of_killed_writers_and_keeps_live_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.001; 4], 4);
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\n[loadtest]\nworkload = \"{}\"\nwrite_outputs = true\n",
            workload.display()
        ),
    )
    .unwrap();
    let run_dir = tmp.path().join("run");
    let host = skypipe_io::host_name();
    let dead_pid = 0x7fff_fff0_u32; // above Linux's pid_max: never alive
    let dead = run_dir.join(format!(
        "loadtest/.task=1.out.skypipe-tmp.{host}.{dead_pid}.0"
    ));
    let live = run_dir.join(format!(
        "other/.x.h5.skypipe-tmp.{host}.{}.0",
        std::process::id()
    ));
    let scratch_host = host.replace(['.', '/'], "_");
    let request = run_dir.join(format!(
        "isolation/{scratch_host}-rank1-{dead_pid}-7.request"
    ));
    for p in [&dead, &live, &request] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"left behind").unwrap();
    }
    let out = run(mpirun(
        2,
        &loadtest_bin(),
        &["--config", &s(&cfg), "--run-dir", &s(&run_dir)],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert!(!dead.exists() && !request.exists(), "{}", text(&out));
    assert!(live.exists(), "a live writer's temporary was removed");
}

#[test]
fn a_failed_map_unit_leaves_no_partial_map_product() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 3\n");
    let run_dir = tmp.path().join("run");
    let pcfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let ccfg = stage_config(tmp.path(), "c.toml", "calibrate", "");
    for (stage, cfg) in [("pointing", &pcfg), ("calibrate", &ccfg)] {
        let out = run_stage(stage, cfg, &list, &run_dir, 2, &[]);
        assert_eq!(code(&out.status), 0, "{stage}: {}", text(&out));
    }
    let mcfg = tmp.path().join("m.toml");
    std::fs::write(
        &mcfg,
        format!(
            "[run]\nfsync = false\nmax_retries = 0\n[mapmake]\npointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\nquicklook_width = 200\n",
            run_dir.join("pointing").display(),
            run_dir.join("calibrate").display()
        ),
    )
    .unwrap();
    // The destriped map cannot be put in place: a directory holds its name.
    let maps = run_dir.join("mapmake");
    std::fs::create_dir_all(maps.join("map_destriped.fits/blocker")).unwrap();
    let out = run_stage("mapmake", &s(&mcfg), &list, &run_dir, 3, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let failed: Vec<(String, String)> = outcomes(&run_dir, "mapmake")
        .into_iter()
        .filter(|(_, o)| o != "done")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].0.contains("map"), "{failed:?}");
    for name in [
        "map_binned.fits",
        "map_binned.png",
        "map_binned_Q.png",
        "map_destriped.png",
        "summary.json",
    ] {
        assert!(
            !maps.join(name).exists(),
            "{name} left by a failed map unit"
        );
    }
    assert!(!text(&out).contains("maps written"), "{}", text(&out));
    // Once the obstacle is gone, a rerun writes the whole product, listed in the summary.
    std::fs::remove_dir_all(maps.join("map_destriped.fits")).unwrap();
    let out = run_stage(
        "mapmake",
        &s(&mcfg),
        &list,
        &run_dir,
        3,
        &["--retry-failed"],
    );
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(maps.join("summary.json")).unwrap()).unwrap();
    for f in summary["files"].as_array().unwrap() {
        assert!(
            maps.join(f.as_str().unwrap()).exists(),
            "{f} listed but missing"
        );
    }
    assert!(maps.join("map_destriped.fits").is_file());
}

/// Corrupts copies of `obs=0000..0004.h5` in `dir`, one kind each (the dataset edited is
/// `detectors/d00a/NAME`); `obs=0005.h5` stays whole. Returns the kinds, by observation.
fn corrupt_hdf5_corpus(dir: &Path, name: &str) -> [&'static str; 5] {
    let script = r#"
import sys, os, h5py, numpy as np
d, name = sys.argv[1], sys.argv[2]
f = lambda i: f'{d}/obs={i:04d}.h5'
data = open(f(0), 'rb').read()
open(f(0), 'wb').write(data[:len(data) // 2])           # truncated
open(f(1), 'wb').close()                                 # zero length
with h5py.File(f(2), 'r+') as h:                         # missing dataset
    del h['detectors/d00a/' + name]
with h5py.File(f(3), 'r+') as h:                         # wrong dtype
    n = h['detectors/d00a/' + name].shape[0]
    del h['detectors/d00a/' + name]
    h.create_dataset('detectors/d00a/' + name, data=np.array([b'x'] * n))
with h5py.File(f(4), 'r+') as h:                         # huge declared size
    del h['detectors/d00a/' + name]
    h.create_dataset('detectors/d00a/' + name, (2**33,), 'f8', chunks=(4096,))
"#;
    python(script, &[s(dir), name.to_string()]);
    [
        "truncated",
        "zero length",
        "missing dataset",
        "wrong dtype",
        "huge declared size",
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every observation unit of `stage` but obs 5 failed, naming its file; obs 5 done.
fn assert_corpus_outcome(
    out: &std::process::Output,
    run_dir: &Path,
    stage: &str,
    dir: &Path,
    kinds: [&str; 5],
) {
    assert_eq!(code(&out.status), 2, "{stage}: {}", text(out));
    let states = outcomes(run_dir, stage);
    let report = report(run_dir);
    let failures = report["failures"].as_array().unwrap();
    for (i, kind) in kinds.iter().enumerate() {
        let unit = format!("obs={i:04}");
        let file = s(&dir.join(format!("{unit}.h5")));
        let f = failures
            .iter()
            .find(|f| f["unit"] == unit.as_str())
            .unwrap_or_else(|| panic!("{stage} {unit} ({kind}) did not fail: {states:?}"));
        let m = f["message"].as_str().unwrap();
        assert!(m.contains(&file), "{stage} {unit} ({kind}): {m}");
        assert_eq!(f["outcome"], "bad-input", "{stage} {unit} ({kind}): {m}");
    }
    assert!(
        states.contains(&("obs=0005".to_string(), "done".to_string())),
        "{stage}: {states:?}"
    );
}

#[test]
fn corrupt_hdf5_inputs_fail_only_their_unit_in_calibrate_and_mapmake() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 6\n");
    let clean = tmp.path().join("clean");
    let pcfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let ccfg = stage_config(tmp.path(), "c.toml", "calibrate", "");
    for (stage, cfg) in [("pointing", &pcfg), ("calibrate", &ccfg)] {
        let out = run_stage(stage, cfg, &list, &clean, 2, &[]);
        assert_eq!(code(&out.status), 0, "{stage}: {}", text(&out));
    }
    // calibrate, reading corrupt pointing files.
    let bad_pointing = tmp.path().join("bad-pointing");
    copy_dir(&clean.join("pointing"), &bad_pointing);
    let kinds = corrupt_hdf5_corpus(&bad_pointing, "theta");
    let cfg = stage_config(
        tmp.path(),
        "c2.toml",
        "calibrate",
        &format!("pointing_dir = \"{}\"", bad_pointing.display()),
    );
    let run_dir = tmp.path().join("calibrate-corpus");
    let out = run_stage("calibrate", &cfg, &list, &run_dir, 2, &[]);
    assert_corpus_outcome(&out, &run_dir, "calibrate", &bad_pointing, kinds);
    // mapmake, reading corrupt calibrated files.
    let bad_calibrated = tmp.path().join("bad-calibrated");
    copy_dir(&clean.join("calibrate"), &bad_calibrated);
    let kinds = corrupt_hdf5_corpus(&bad_calibrated, "signal");
    let cfg = stage_config(
        tmp.path(),
        "m.toml",
        "mapmake",
        &format!(
            "pointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\nquicklook_width = 0",
            clean.join("pointing").display(),
            bad_calibrated.display()
        ),
    );
    let run_dir = tmp.path().join("mapmake-corpus");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_corpus_outcome(&out, &run_dir, "mapmake", &bad_calibrated, kinds);
}

/// Puts one non-finite or out-of-range value into an unflagged sample of `detectors/d00a` in
/// each file named by an argument `path:kind:flags` (kind one of `theta`, `weights`, `pixels`,
/// `signal`); the sample is the first one the clean calibrated file `flags` leaves unflagged.
const POISON_SAMPLES: &str = r#"
import sys, h5py, numpy as np
for arg in sys.argv[1:]:
    path, kind, flags = arg.split(':')
    with h5py.File(flags, 'r') as h:
        k = int(np.flatnonzero(h['detectors/d00a/flags'][:] == 0)[0])
    with h5py.File(path, 'r+') as h:
        d = h['detectors/d00a/' + kind]
        if kind == 'pixels':
            d[k] = 12 * h.attrs['nside'] ** 2
        elif kind == 'weights':
            d[k, :] = np.nan
        else:
            d[k] = np.nan
"#;

/// `stage` exited 2, each of `failed` (unit, file) failed as bad-input naming its file, and
/// every unit in `done` was done.
fn assert_failed_and_done(
    out: &std::process::Output,
    run_dir: &Path,
    stage: &str,
    failed: &[(&str, &Path)],
    done: &[&str],
) {
    assert_eq!(code(&out.status), 2, "{stage}: {}", text(out));
    let states = outcomes(run_dir, stage);
    let report = report(run_dir);
    let failures = report["failures"].as_array().unwrap();
    for (unit, file) in failed {
        let f = failures
            .iter()
            .find(|f| f["unit"] == *unit)
            .unwrap_or_else(|| panic!("{stage} {unit} did not fail: {states:?}"));
        let m = f["message"].as_str().unwrap();
        assert!(m.contains(&s(file)), "{stage} {unit}: {m}");
        assert_eq!(f["outcome"], "bad-input", "{stage} {unit}: {m}");
    }
    for unit in done {
        assert!(
            states.contains(&(unit.to_string(), "done".to_string())),
            "{stage} {unit} not done: {states:?}"
        );
    }
}

#[test]
fn non_finite_and_out_of_range_samples_fail_only_their_unit_in_calibrate_and_mapmake() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 4\n");
    let sky = tmp.path().join("data/truth/sky.h5");
    let sky_line = format!("sky_model = \"{}\"", sky.display());
    let clean = tmp.path().join("clean");
    let pcfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let ccfg = stage_config(tmp.path(), "c.toml", "calibrate", &sky_line);
    for (stage, cfg) in [("pointing", &pcfg), ("calibrate", &ccfg)] {
        let out = run_stage(stage, cfg, &list, &clean, 2, &[]);
        assert_eq!(code(&out.status), 0, "{stage}: {}", text(&out));
    }
    let bad_pointing = tmp.path().join("bad-pointing");
    copy_dir(&clean.join("pointing"), &bad_pointing);
    let bad_calibrated = tmp.path().join("bad-calibrated");
    copy_dir(&clean.join("calibrate"), &bad_calibrated);
    let p = |i: u32| bad_pointing.join(format!("obs={i:04}.h5"));
    let c = |i: u32| bad_calibrated.join(format!("obs={i:04}.h5"));
    let flags = |i: u32| s(&clean.join(format!("calibrate/obs={i:04}.h5")));
    python(
        POISON_SAMPLES,
        &[
            format!("{}:theta:{}", s(&p(0)), flags(0)),
            format!("{}:weights:{}", s(&p(1)), flags(1)),
            format!("{}:pixels:{}", s(&p(2)), flags(2)),
            format!("{}:signal:{}", s(&c(0)), flags(0)),
        ],
    );
    // calibrate with the sky model reads θ, φ, pixels and weights of every sample.
    let cfg = stage_config(
        tmp.path(),
        "c2.toml",
        "calibrate",
        &format!("{sky_line}\npointing_dir = \"{}\"", bad_pointing.display()),
    );
    let run_dir = tmp.path().join("calibrate-nan");
    let out = run_stage("calibrate", &cfg, &list, &run_dir, 2, &[]);
    assert_failed_and_done(
        &out,
        &run_dir,
        "calibrate",
        &[
            ("obs=0000", &p(0)),
            ("obs=0001", &p(1)),
            ("obs=0002", &p(2)),
        ],
        &["obs=0003"],
    );
    let m = failure_message(&run_dir, "obs=0001");
    assert!(m.contains("weights"), "{m}");
    // mapmake reads pixels, weights and signal (not θ: obs 0's pointing binds).
    let cfg = stage_config(
        tmp.path(),
        "m.toml",
        "mapmake",
        &format!(
            "pointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\nquicklook_width = 0",
            bad_pointing.display(),
            clean.join("calibrate").display()
        ),
    );
    let run_dir = tmp.path().join("mapmake-bad-pointing");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_failed_and_done(
        &out,
        &run_dir,
        "mapmake",
        &[("obs=0001", &p(1)), ("obs=0002", &p(2))],
        &["obs=0000", "obs=0003"],
    );
    let cfg = stage_config(
        tmp.path(),
        "m2.toml",
        "mapmake",
        &format!(
            "pointing_dir = \"{}\"\ncalibrated_dir = \"{}\"\nquicklook_width = 0",
            clean.join("pointing").display(),
            bad_calibrated.display()
        ),
    );
    let run_dir = tmp.path().join("mapmake-bad-calibrated");
    let out = run_stage("mapmake", &cfg, &list, &run_dir, 2, &[]);
    assert_failed_and_done(
        &out,
        &run_dir,
        "mapmake",
        &[("obs=0000", &c(0))],
        &["obs=0001", "obs=0002", "obs=0003"],
    );
}

/// A FITS header block: `cards` (key, value) then `END`, padded to 2880 bytes.
fn fits_header(cards: &[(&str, &str)]) -> Vec<u8> {
    let mut h: Vec<u8> = cards
        .iter()
        .flat_map(|(k, v)| format!("{:<80}", format!("{k:<8}= {v:>20}")).into_bytes())
        .collect();
    h.extend(format!("{:<80}", "END").bytes());
    h.resize(h.len().div_ceil(2880) * 2880, b' ');
    h
}

#[test]
fn corrupt_fits_sky_models_fail_every_calibrate_unit_naming_the_map() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), "observations = 2\n");
    let run_dir = tmp.path().join("run");
    let pcfg = stage_config(tmp.path(), "p.toml", "pointing", POINTING);
    let out = run_stage("pointing", &pcfg, &list, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    // A HEALPix map stored as a float32 primary image rather than the binary table the reader
    // takes, one with an invalid BITPIX, and an empty file.
    let npix = 12 * 64 * 64;
    let image = [
        ("SIMPLE", "T"),
        ("BITPIX", "-32"),
        ("NAXIS", "1"),
        ("NAXIS1", &npix.to_string()),
    ];
    let mut as_image = fits_header(&image);
    as_image.resize(
        as_image.len() + (4 * npix as usize).div_ceil(2880) * 2880,
        0,
    );
    let mut bad_bitpix = as_image.clone();
    bad_bitpix[..2880].copy_from_slice(&fits_header(&[
        ("SIMPLE", "T"),
        ("BITPIX", "20"),
        ("NAXIS", "1"),
        ("NAXIS1", &npix.to_string()),
    ]));
    for (name, bytes) in [
        ("image.fits", as_image),
        ("bitpix.fits", bad_bitpix),
        ("empty.fits", Vec::new()),
    ] {
        let sky = tmp.path().join(name);
        std::fs::write(&sky, bytes).unwrap();
        let cfg = stage_config(
            tmp.path(),
            "c.toml",
            "calibrate",
            &format!(
                "sky_model = \"{}\"\npointing_dir = \"{}\"",
                sky.display(),
                run_dir.join("pointing").display()
            ),
        );
        let cal_dir = tmp.path().join(format!("calibrate-{name}"));
        let out = run_stage("calibrate", &cfg, &list, &cal_dir, 2, &[]);
        assert_failed_and_done(
            &out,
            &cal_dir,
            "calibrate",
            &[("obs=0000", &sky), ("obs=0001", &sky)],
            &[],
        );
    }
}

#[test]
fn corrupt_fits_images_fail_only_their_ccd_in_singleframe() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sim = run(direct(
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim")),
        &["image", "--out", &s(&data), "--size", "tiny", "--seed", "7"],
    ));
    assert_eq!(code(&sim.status), 0, "{}", text(&sim));
    let list = data.join("units.json");
    let mut units: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    units["units"].as_array_mut().unwrap().truncate(5);
    let file = |u: &serde_json::Value, key: &str| data.join(u[key].as_str().unwrap());
    let corrupt = |from: &Path, name: &str, edit: &dyn Fn(&mut Vec<u8>)| -> PathBuf {
        let mut bytes = std::fs::read(from).unwrap();
        edit(&mut bytes);
        let to = data.join(name);
        std::fs::write(&to, bytes).unwrap();
        to
    };
    let u = units["units"].as_array().unwrap().clone();
    // CCD 0: a raw image with an invalid BITPIX; 1: an empty bias; 2: a float32 flat whose
    // header says float64 (twice the bytes the file holds); 3: a variance image whose header
    // says 64-bit integers; 4: whole.
    let bad = [
        (
            "raw",
            corrupt(&file(&u[0], "raw"), "raw-bitpix.fits", &|b| {
                set_card(b, "BITPIX", 20)
            }),
        ),
        (
            "bias",
            corrupt(&file(&u[1], "bias"), "bias-empty.fits", &|b| b.clear()),
        ),
        (
            "flat",
            corrupt(&file(&u[2], "flat"), "flat-f64.fits", &|b| {
                set_card(b, "BITPIX", -64)
            }),
        ),
        (
            "variance",
            corrupt(&file(&u[3], "flat"), "variance-i64.fits", &|b| {
                set_card(b, "BITPIX", 64)
            }),
        ),
    ];
    for (i, (key, path)) in bad.iter().enumerate() {
        units["units"][i][*key] = s(path).into();
    }
    let bad_list = data.join("bad-units.json");
    std::fs::write(&bad_list, serde_json::to_vec(&units).unwrap()).unwrap();
    let cfg = tmp.path().join("sf.toml");
    std::fs::write(&cfg, "[run]\nfsync = false\n").unwrap();
    let run_dir = tmp.path().join("run");
    let out = run(mpirun(
        3,
        &PathBuf::from(env!("CARGO_BIN_EXE_skypipe-singleframe")),
        &[
            "--config",
            &s(&cfg),
            "--input",
            &s(&bad_list),
            "--run-dir",
            &s(&run_dir),
        ],
    ));
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    let records = ledger(&run_dir, "singleframe");
    // Visit 1's registry unit has no calibrated CCD left (no-work); visit 2 is whole.
    let failed: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["outcome"] != "done" && r["outcome"] != "no-work")
        .collect();
    assert_eq!(failed.len(), bad.len(), "{records:?}");
    assert!(
        records
            .iter()
            .any(|r| r["unit"] == "visit=2,ccd=0" && r["outcome"] == "done"),
        "{records:?}"
    );
    for (key, path) in &bad {
        let name = path.file_name().unwrap().to_str().unwrap();
        let f = failed
            .iter()
            .find(|r| r["message"].as_str().unwrap().contains(name))
            .unwrap_or_else(|| panic!("no failure names the bad {key} {name}: {failed:?}"));
        assert_eq!(f["outcome"], "bad-input", "{key}: {f}");
    }
}
