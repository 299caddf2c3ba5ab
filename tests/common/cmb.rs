//! Helpers for the CMB chain tests: simulating a data set, writing stage configurations,
//! running stages, and checking results with Debian's Python (`/usr/bin/python3`).

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CMB stage binaries built by Cargo for these tests.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "sim" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-sim")),
        "pointing" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-pointing")),
        "calibrate" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-calibrate")),
        "mapmake" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-mapmake")),
        "run" => PathBuf::from(env!("CARGO_BIN_EXE_skypipe-run")),
        _ => unreachable!(),
    }
}

/// A path as a `String` (for argument lists).
pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Simulates a tiny data set in `dir/data` with extra TOML keys; returns the observation list.
pub fn simulate(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("sim.toml");
    std::fs::write(&cfg, extra).unwrap();
    let data = dir.join("data");
    let out = run(direct(
        &bin("sim"),
        &[
            "cmb",
            "--out",
            &s(&data),
            "--config",
            &s(&cfg),
            "--size",
            "tiny",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    data.join("observations.json")
}

/// Writes a stage config (`[run]` without fsync, then the stage table) and returns its path.
pub fn stage_config(dir: &Path, name: &str, table: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[run]\nfsync = false\nprogress_interval_s = 60.0\n[{table}]\n{body}\n"),
    )
    .unwrap();
    s(&path)
}

/// Runs `stage` over the list into `run_dir` on `ranks` ranks (0: directly, without mpirun).
pub fn run_stage(
    stage: &str,
    config: &str,
    list: &Path,
    run_dir: &Path,
    ranks: usize,
    extra: &[&str],
) -> std::process::Output {
    let list_s = s(list);
    let run_s = s(run_dir);
    let mut args = vec![
        "--config",
        config,
        "--observations",
        &list_s,
        "--run-dir",
        &run_s,
    ];
    args.extend_from_slice(extra);
    if ranks == 0 {
        run(direct(&bin(stage), &args))
    } else {
        run(mpirun(ranks, &bin(stage), &args))
    }
}

/// Runs a Python script with `/usr/bin/python3` (Debian's numpy, h5py, healpy); panics with
/// its output unless it exits 0. Returns stdout.
pub fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("/usr/bin/python3 (run `make test` to install python3-h5py and python3-healpy)");
    assert!(out.status.success(), "python failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(unit, outcome)` of every ledger record of `stage`, sorted.
pub fn outcomes(run_dir: &Path, stage: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ledger(run_dir, stage)
        .into_iter()
        .map(|r| {
            (
                r["unit"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `obs=0000 … obs=N-1`, all done.
pub fn all_done(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("obs={i:04}"), "done".to_string()))
        .collect()
}

/// The `[pointing]` table of the chain tests: nside 64 in the simulation's (galactic) frame.
pub const POINTING: &str =
    "nside = 64\nframe = \"galactic\"\naberration = true\nchunk_samples = 5000";
