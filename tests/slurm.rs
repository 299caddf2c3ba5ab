//! `skypipe-slurm` end to end.
//!
//! - The generated scripts for 1, 4 and 100 nodes carry the directives that matter, the
//!   `srun --mpi=pmix` line and the resubmission logic; a chain dry run shows the
//!   dependencies; bad settings are refused; the walltime is estimated from the stage's own
//!   `--dry-run` and from an earlier run report.
//! - Against a real single-node Slurm (Debian `slurm-wlm` + `munge`, daemons started here
//!   with a private configuration, munge socket and ports, stopped by PID when the test
//!   ends): a small `skypipe-loadtest` job via `sbatch --wait`; a job whose time limit hits
//!   for real (Slurm's SIGTERM at the limit) and that the script resubmits; and a chain whose
//!   first stage is stopped by the `--signal` warning before its limit, resubmitted, and
//!   whose second stage waits for the continuation. Every unit is done exactly once.
//!   Fails, saying to run `make test` (which installs `slurm-wlm` and `munge` through
//!   `scripts/install-deps.sh test`), when not root or a Slurm program is missing; the test
//!   itself never installs anything.

mod common;

use common::{ledger, report, text, write_workload};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn slurm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-slurm"))
}

fn loadtest_bin() -> String {
    env!("CARGO_BIN_EXE_skypipe-loadtest").to_string()
}

fn status_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-status"))
}

/// A load-test configuration for `workload`, returned as an absolute path string.
fn loadtest_config(dir: &Path, name: &str, workload: &Path) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[run]\nfsync = false\nprogress_interval_s = 2.0\n[loadtest]\nworkload = \"{}\"\nwrite_outputs = true\n",
            workload.display()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// Runs `skypipe-slurm args` in `cwd` (with `env` added) and returns its output.
fn skypipe_slurm(cwd: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(slurm_bin())
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run skypipe-slurm")
}

fn sbatch_lines(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter(|l| l.starts_with("#SBATCH "))
        .collect()
}

fn srun_line(script: &str) -> &str {
    let lines: Vec<&str> = script.lines().filter(|l| l.starts_with("srun ")).collect();
    assert_eq!(lines.len(), 1, "one srun line: {script}");
    lines[0]
}

fn bash_syntax_ok(script: &str, dir: &Path) {
    let path = dir.join("check.sh");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(out.status.success(), "bash -n: {}\n{script}", text(&out));
}

/// The lines that make up the resubmission mechanism (checked in every generated script).
fn assert_resubmission_logic(script: &str, run_dir: &Path, max_attempts: u32) {
    for needle in [
        format!("SCRIPT={}/slurm/loadtest.sbatch\n", run_dir.display()),
        format!("ATTEMPTS_LOG={}/logs/loadtest.attempts\n", run_dir.display()),
        format!("MAX_ATTEMPTS={max_attempts}\n"),
        "ATTEMPT=${1:-1}\n".to_string(),
        "trap 'got_term=1; trapped=1' TERM\n".to_string(),
        "srun_pid=$!\n".to_string(),
        "grep -Eq 'JobState=TIMEOUT|Reason=TimeLimit'".to_string(),
        "if [ \"$ATTEMPT\" -ge \"$MAX_ATTEMPTS\" ]; then\n".to_string(),
        "next=$(sbatch --parsable --dependency=\"afterany:$JOB\" \"$SCRIPT\" \"$((ATTEMPT + 1))\")\n"
            .to_string(),
        "squeue --me --noheader --states=PENDING --format='%i %E'".to_string(),
        "scontrol update JobId=\"$id\" Dependency=\"$new\"".to_string(),
    ] {
        assert!(script.contains(&needle), "missing {needle:?} in\n{script}");
    }
}

/// `skypipe-slurm` with `args` split at whitespace (no argument here contains a space).
fn run_slurm(cwd: &Path, args: &str) -> Output {
    let args: Vec<&str> = args.split_whitespace().collect();
    skypipe_slurm(cwd, &args, &[])
}

#[test]
fn scripts_for_1_4_and_100_nodes_have_the_expected_directives() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let workload = dir.join("w.json");
    write_workload(&workload, &[0.1; 10], 5);
    let cfg = loadtest_config(dir, "c.toml", &workload);
    let run_dir = dir.join("run");
    let rd = run_dir.to_string_lossy().into_owned();
    let lt = loadtest_bin();
    let cwd = dir.display().to_string();
    let output = format!("#SBATCH --output={rd}/logs/loadtest-%j.out");
    let chdir = format!("#SBATCH --chdir={cwd}");

    // (flags, expected #SBATCH lines, srun options, max attempts)
    let cases = [
        (
            // 100 units x 3 s / 2 ranks + 3 = 153 s; x 1.5 + 60 + 60 = 349.5 s -> 6 min.
            "--nodes 1 --ntasks-per-node 2 --units 100 --unit-seconds 3 --job-name sky1 \
             --partition debug --account m0001 --signal-seconds 60",
            [
                "#SBATCH --job-name=sky1",
                "#SBATCH --nodes=1",
                "#SBATCH --ntasks-per-node=2",
                "#SBATCH --time=00:06:00",
                "#SBATCH --partition=debug",
                "#SBATCH --account=m0001",
                &output,
                &chdir,
                "#SBATCH --signal=TERM@60",
            ],
            "",
            5,
        ),
        (
            // 10,000 units x 4 s / 128 ranks + 4 = 316.5 s; x 1.5 + 120 + 60 = 654.75 s
            // -> 11 min.
            "-N 4 --ntasks-per-node 32 --units 10000 --unit-seconds 4 -p regular -A m0002 \
             --max-attempts 3",
            [
                "#SBATCH --job-name=skypipe-loadtest",
                "#SBATCH --nodes=4",
                "#SBATCH --ntasks-per-node=32",
                "#SBATCH --time=00:11:00",
                "#SBATCH --partition=regular",
                "#SBATCH --account=m0002",
                &output,
                &chdir,
                "#SBATCH --signal=TERM@120",
            ],
            "",
            3,
        ),
        (
            // 20,000,000 units x 30 s / 6400 ranks + 30 = 93,780 s; x 1.5 + 120 + 60
            // = 140,850 s -> 2348 min = 1 day 15:08.
            "--nodes 100 --ntasks-per-node 64 --units 20000000 --unit-seconds 30 -J big \
             -p regular -A m0003 --srun-arg=--cpu-bind=cores",
            [
                "#SBATCH --job-name=big",
                "#SBATCH --nodes=100",
                "#SBATCH --ntasks-per-node=64",
                "#SBATCH --time=1-15:08:00",
                "#SBATCH --partition=regular",
                "#SBATCH --account=m0003",
                &output,
                &chdir,
                "#SBATCH --signal=TERM@120",
            ],
            "--cpu-bind=cores ",
            5,
        ),
    ];
    for (flags, expected, srun_options, attempts) in cases {
        let out = run_slurm(
            dir,
            &format!("--dry-run {flags} {lt} --config {cfg} --run-dir {rd}"),
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.starts_with("#!/bin/bash\n"), "{script}");
        assert_eq!(sbatch_lines(&script), expected, "{flags}\n{script}");
        assert_eq!(
            srun_line(&script),
            format!("srun --mpi=pmix {srun_options}{lt} --config {cfg} --run-dir {rd} &"),
            "{flags}"
        );
        assert_resubmission_logic(&script, &run_dir, attempts);
        bash_syntax_ok(&script, dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("would write {rd}/slurm/loadtest.sbatch")),
            "{stderr}"
        );
    }
    assert!(!run_dir.exists(), "a dry run writes nothing");
}

#[test]
fn walltime_comes_from_the_stage_dry_run_and_from_an_earlier_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let workload = dir.join("w.json");
    write_workload(&workload, &[0.1; 300], 10);
    let cfg = loadtest_config(dir, "c.toml", &workload);
    let run_dir = dir.join("run");
    let rd = run_dir.to_string_lossy().into_owned();
    let lt = loadtest_bin();
    let stage = format!("{lt} --config {cfg} --run-dir {rd}");

    // 300 units listed by `skypipe-loadtest --dry-run`; the ledger records 120 done and one
    // failed.
    let ledger_dir = run_dir.join("ledger");
    std::fs::create_dir_all(&ledger_dir).unwrap();
    let record = |unit: usize, outcome: &str| {
        format!(
            "{{\"unit\":\"task={unit}\",\"outcome\":\"{outcome}\",\"attempts\":1,\"rank\":0,\"elapsed_s\":0.1,\"invocation\":1,\"time\":{unit}.0}}\n"
        )
    };
    let mut lines: String = (0..120).map(|i| record(i, "done")).collect();
    lines += &record(120, "bad-input");
    std::fs::write(ledger_dir.join("loadtest.jsonl"), lines).unwrap();
    let flags =
        "--dry-run --ntasks-per-node 8 --unit-seconds 20 --safety-factor 2 --signal-seconds 0";
    // 179 pending x 20 s / 8 ranks + 20 = 467.5 s; x 2 + 0 + 60 = 995 s -> 17 min.
    let out = run_slurm(dir, &format!("{flags} {stage}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("#SBATCH --time=00:17:00\n"), "{script}");
    assert!(
        script.contains("# Walltime: 179 units x 20.000 s/unit (given) / 8 ranks"),
        "{script}"
    );
    assert!(!script.contains("#SBATCH --signal"), "{script}");
    // With --retry-failed the failed unit counts too.
    let out = run_slurm(dir, &format!("{flags} {stage} --retry-failed"));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("# Walltime: 180 units x 20.000 s/unit"),
        "{script}"
    );

    // Per-unit time measured in an earlier report: makespan 50 s x 4 ranks / 100 units = 2 s.
    let earlier = dir.join("earlier");
    std::fs::create_dir_all(&earlier).unwrap();
    let rep = serde_json::json!({
        "format": "skypipe-run-report/1", "stage": "loadtest", "invocation": 1, "exit_code": 0,
        "ranks": 4, "makespan_s": 50.0, "ran": 100, "retry_command": "x",
    });
    std::fs::write(earlier.join("run-report.json"), rep.to_string()).unwrap();
    // 179 x 2 / 2 + 2 = 181 s; x 1.5 + 120 + 60 = 451.5 s -> 8 min.
    let out = run_slurm(
        dir,
        &format!(
            "--dry-run --ntasks-per-node 2 --from-report {} {stage}",
            earlier.display()
        ),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("#SBATCH --time=00:08:00\n"), "{script}");
    assert!(
        script.contains("makespan 50.0 s x 4 ranks / 100 units"),
        "{script}"
    );
    // Another stage's report is refused.
    let mut other = rep.clone();
    other["stage"] = "mosaic".into();
    std::fs::write(earlier.join("run-report.json"), other.to_string()).unwrap();
    let out = run_slurm(
        dir,
        &format!("--dry-run --from-report {} {stage}", earlier.display()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stage mosaic's"),
        "{}",
        text(&out)
    );

    // The run directory's own report is used when it is this stage's.
    std::fs::write(run_dir.join("run-report.json"), rep.to_string()).unwrap();
    let out = run_slurm(dir, &format!("--dry-run --ntasks-per-node 2 {stage}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("#SBATCH --time=00:08:00\n"));

    // Neither a time, nor a unit time, nor a usable report: refused, saying what to give.
    let fresh = dir.join("fresh").display().to_string();
    let out = run_slurm(
        dir,
        &format!("--dry-run {lt} --config {cfg} --run-dir {fresh}"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--unit-seconds"),
        "{}",
        text(&out)
    );
    // A stage whose dry run fails (missing workload) says so.
    let bad = loadtest_config(dir, "bad.toml", &dir.join("missing.json"));
    let out = run_slurm(
        dir,
        &format!("--dry-run --unit-seconds 1 {lt} --config {bad} --run-dir {fresh}"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot count the units") && err.contains("missing.json"),
        "{err}"
    );
}

#[test]
fn chains_settings_files_and_bad_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let workload = dir.join("w.json");
    write_workload(&workload, &[0.1; 10], 5);
    let cfg = loadtest_config(dir, "c.toml", &workload);
    let lt = loadtest_bin();
    let a = dir.join("a").display().to_string();
    let b = dir.join("b").display().to_string();

    // A settings file: [slurm] for all, [stage.slurm] per stage, flags over both.
    let settings = dir.join("slurm.toml");
    std::fs::write(
        &settings,
        format!(
            "[slurm]\nnodes = 2\nntasks_per_node = 4\ntime = \"30\"\npartition = \"debug\"\n\
             account = \"m9\"\nsetup = [\"export OMP_NUM_THREADS=1\"]\ndirectives = [\"--qos=low\"]\n\n\
             [[stage]]\ncommand = [\"{lt}\", \"--config\", \"{cfg}\", \"--run-dir\", \"{a}\"]\n\n\
             [[stage]]\ncommand = [\"{lt}\", \"--config\", \"{cfg}\", \"--run-dir\", \"{b}\"]\n\
             [stage.slurm]\nnodes = 8\ntime = \"2:00:00\"\n"
        ),
    )
    .unwrap();
    let out = run_slurm(
        dir,
        &format!("--dry-run -f {} --account m7", settings.display()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let scripts: Vec<&str> = stdout.split("# ==> ").skip(1).collect();
    assert_eq!(scripts.len(), 2, "{stdout}");
    assert!(scripts[0].starts_with(&format!("{a}/slurm/loadtest.sbatch <==\n")));
    assert!(scripts[1].starts_with(&format!("{b}/slurm/loadtest.sbatch <==\n")));
    for (script, nodes, time) in [(scripts[0], 2, "00:30:00"), (scripts[1], 8, "02:00:00")] {
        let lines = sbatch_lines(script);
        for needle in [
            format!("#SBATCH --nodes={nodes}"),
            "#SBATCH --ntasks-per-node=4".to_string(),
            format!("#SBATCH --time={time}"),
            "#SBATCH --partition=debug".to_string(),
            "#SBATCH --account=m7".to_string(),
            "#SBATCH --qos=low".to_string(),
        ] {
            assert!(lines.contains(&needle.as_str()), "{needle} in {lines:?}");
        }
        assert!(script.contains("\nexport OMP_NUM_THREADS=1\n"), "{script}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("sbatch --parsable {a}/slurm/loadtest.sbatch")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "sbatch --parsable '--dependency=afterok:<previous job>' --kill-on-invalid-dep=yes {b}/slurm/loadtest.sbatch"
        )),
        "{stderr}"
    );

    // The same chain from the command line with --then; --no-submit writes the scripts.
    let out = run_slurm(
        dir,
        &format!(
            "--no-submit --time 10 {lt} --config {cfg} --run-dir {a} --then {lt} --config {cfg} --run-dir {b}"
        ),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for run in [&a, &b] {
        let script = Path::new(run).join("slurm/loadtest.sbatch");
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "executable");
        assert!(
            Path::new(run).join("logs").is_dir(),
            "logs directory made for Slurm"
        );
        bash_syntax_ok(&std::fs::read_to_string(&script).unwrap(), dir);
    }

    // Refused, naming what is wrong.
    let bad_key = dir.join("bad.toml");
    std::fs::write(&bad_key, "[slurm]\nnode = 2\n").unwrap();
    let stage_a = format!("{lt} --config {cfg} --run-dir {a}");
    let stage_b = format!("{lt} --config {cfg} --run-dir {b}");
    for (args, needle) in [
        (
            format!("-f {} --time 5 {stage_a}", bad_key.display()),
            "unknown field `node`",
        ),
        (format!("--time soon {stage_a}"), "slurm.time"),
        (
            format!("--time 5 --account m$HOME {stage_a}"),
            "slurm.account",
        ),
        (format!("--time 5 {lt} --config {cfg}"), "--run-dir"),
        (format!("--time 5 {stage_a} --dry-run"), "does not belong"),
        (
            format!("--time 5 {stage_a} --then {stage_a}"),
            "appears twice",
        ),
        (
            format!("--units 5 --time 5 {stage_a} --then {stage_b}"),
            "apply to one stage",
        ),
        (
            format!("--time 5 skypipe-no-such-stage --config {cfg} --run-dir {a}"),
            "not found on PATH",
        ),
    ] {
        let out = run_slurm(dir, &format!("--dry-run {args}"));
        assert_eq!(out.status.code(), Some(1), "{args}\n{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args}: expected {needle:?} in {err}");
    }
    let out = skypipe_slurm(
        dir,
        &[
            "--dry-run",
            "--time",
            "5",
            "--partition",
            "a b",
            &lt,
            "--config",
            &cfg,
            "--run-dir",
            &a,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("slurm.partition"),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------
// A real Slurm on this machine.

/// How long one scenario may take before the test gives up (the jobs need about 2 min).
const SLURM_DEADLINE: Duration = Duration::from_secs(300);

fn sh(cmd: &str, args: &[&str]) -> Option<Output> {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
}

fn stdout_of(cmd: &str, args: &[&str]) -> Option<String> {
    sh(cmd, args)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The programs the real-Slurm test runs (Debian `slurm-wlm`, `munge`, `util-linux`).
const SLURM_PROGRAMS: [&str; 10] = [
    "/usr/sbin/slurmctld",
    "/usr/sbin/slurmd",
    "/usr/sbin/munged",
    "runuser",
    "sinfo",
    "squeue",
    "scontrol",
    "scancel",
    "sbatch",
    "srun",
];

/// Whether `program` (an absolute path, or a name looked up on `PATH`) is an executable file.
fn program_exists(program: &str) -> bool {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// Panics, saying what is missing and how to get it, unless this machine can host a private
/// Slurm: root (slurmd and munged start as root), the Slurm and munge programs, and the
/// `slurm` and `munge` users the packages create. The test never installs anything itself:
/// `make test` runs `scripts/install-deps.sh test` first, which does.
fn require_slurm_host() {
    let how = "run `make test` (it installs the test dependencies with \
               `scripts/install-deps.sh test`), or `scripts/install-deps.sh test` by hand, as root";
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    assert_eq!(
        uid,
        Some(0),
        "the real-Slurm test must run as root (slurmd and munged start as root): {how}"
    );
    let mut missing: Vec<String> = SLURM_PROGRAMS
        .iter()
        .filter(|p| !program_exists(p))
        .map(|p| p.to_string())
        .collect();
    for user in ["slurm", "munge"] {
        if stdout_of("id", &["-u", user]).is_none() {
            missing.push(format!("user {user}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the real-Slurm test needs Debian's slurm-wlm and munge; missing: {}. {how}",
        missing.join(", ")
    );
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

/// Stops one process by PID: SIGTERM, up to 10 s, then SIGKILL.
fn stop_pid(pid: u32) {
    let _ = sh("kill", &["-TERM", &pid.to_string()]);
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        let _ = sh("kill", &["-KILL", &pid.to_string()]);
    }
}

/// Two TCP ports free at the moment (both held while choosing, so they differ).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let b = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A single-node Slurm cluster of our own: munged on a private socket, slurmctld and slurmd
/// on free ports, state, spool, logs and PID files in a temporary directory. Dropping it
/// cancels the jobs, waits for them to end, and stops the daemons by PID.
struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    pid_files: Vec<PathBuf>,
}

impl Cluster {
    /// Starts the daemons; panics saying what to install when this machine cannot host them.
    fn start() -> Cluster {
        require_slurm_host();
        let began = Instant::now();
        let host = stdout_of("hostname", &["-s"]).expect("hostname -s");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dir = tempfile::Builder::new()
            .prefix("skypipe-slurm-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        let id = |user: &str, flag: &str| -> u32 {
            stdout_of("id", &[flag, user])
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no user {user}"))
        };
        let (munge_uid, munge_gid) = (id("munge", "-u"), id("munge", "-g"));
        let (slurm_uid, slurm_gid) = (id("slurm", "-u"), id("slurm", "-g"));
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        // munged insists on a private key and a socket directory everyone can traverse.
        let mut key = vec![0u8; 1024];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut key)
                .unwrap();
        }
        let key_path = d.join("munge/munge.key");
        std::fs::write(&key_path, &key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&key_path, Some(munge_uid), Some(munge_gid)).unwrap();
        std::os::unix::fs::chown(d.join("munge"), Some(munge_uid), Some(munge_gid)).unwrap();
        std::fs::set_permissions(d.join("munge"), std::fs::Permissions::from_mode(0o711)).unwrap();
        for sub in ["state", "log"] {
            std::os::unix::fs::chown(d.join(sub), Some(slurm_uid), Some(slurm_gid)).unwrap();
        }
        let mut cluster = Cluster {
            env: vec![],
            pid_files: vec![
                d.join("munge/munged.pid"),
                d.join("slurmctld.pid"),
                d.join("slurmd.pid"),
            ],
            dir,
        };
        let d = cluster.dir.path().to_path_buf();
        let socket = d.join("munge/munge.sock");
        let out = Command::new("runuser")
            .args(["-u", "munge", "--", "/usr/sbin/munged"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key_path.display()))
            .arg(format!(
                "--pid-file={}",
                d.join("munge/munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("munge/munged.log").display()
            ))
            .arg(format!(
                "--seed-file={}",
                d.join("munge/munged.seed").display()
            ))
            .stdin(Stdio::null())
            .output()
            .expect("start munged");
        assert!(out.status.success(), "munged: {}", text(&out));

        let conf = d.join("slurm.conf");
        let (ctld_port, slurmd_port) = free_ports();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=skypipetest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
                 SlurmUser=slurm\nSlurmdUser=root\nAuthType=auth/munge\nCredType=cred/munge\n\
                 AuthInfo=socket={socket}\nMpiDefault=pmix\nProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
                 SchedulerType=sched/backfill\nReturnToService=2\nKillWait=30\nMinJobAge=600\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                socket = socket.display(),
                d = d.display(),
            ),
        )
        .unwrap();
        cluster.env = vec![
            ("SLURM_CONF".into(), conf.to_string_lossy().into_owned()),
            ("OMPI_ALLOW_RUN_AS_ROOT".into(), "1".into()),
            ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM".into(), "1".into()),
        ];
        for daemon in ["/usr/sbin/slurmctld", "/usr/sbin/slurmd"] {
            let out = cluster
                .command(daemon)
                .arg("-f")
                .arg(&conf)
                .output()
                .expect(daemon);
            assert!(
                out.status.success(),
                "{daemon}: {}\n{}",
                text(&out),
                cluster.logs()
            );
        }
        let start = Instant::now();
        loop {
            let state = cluster
                .command("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .ok();
            if state.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the node never became idle\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "slurm test: cluster up in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Tails of the daemon logs, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for log in ["log/slurmctld.log", "log/slurmd.log", "munge/munged.log"] {
            let text = std::fs::read_to_string(self.path().join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!("--- {log}\n");
            for l in tail.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// The job IDs in the queue (any state).
    fn queue(&self) -> Vec<String> {
        let out = self
            .command("squeue")
            .args(["-h", "-o", "%i %T %r"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until the queue is empty.
    fn wait_for_empty_queue(&self, deadline: Duration, what: &str) {
        let start = Instant::now();
        loop {
            let q = self.queue();
            if q.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "{what}: jobs still queued after {deadline:?}: {q:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `scontrol show job ID` as key → value.
    fn job(&self, id: &str) -> BTreeMap<String, String> {
        let out = self
            .command("scontrol")
            .args(["show", "job", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Cancel whatever is left and give the jobs KillWait to end, then stop the daemons.
        if !self.queue().is_empty() {
            let ids: Vec<String> = self
                .queue()
                .iter()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect();
            let _ = self.command("scancel").args(&ids).output();
            let start = Instant::now();
            while !self.queue().is_empty() && start.elapsed() < Duration::from_secs(45) {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for pid_file in self.pid_files.iter().rev() {
            let pid = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                stop_pid(pid);
            }
        }
        // Any process still running from this cluster's directory (a job's ranks whose
        // slurmstepd was gone) is stopped by PID too.
        let marker = self.path().to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if pid != std::process::id() && String::from_utf8_lossy(&cmdline).contains(&marker)
                {
                    stop_pid(pid);
                }
            }
        }
    }
}

/// The attempts log of a run directory, one map per line.
fn attempts(run_dir: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(run_dir.join("logs/loadtest.attempts")).unwrap_or_default();
    text.lines()
        .map(|l| {
            l.split('\t')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Checks a ledger: `units` units, each recorded done exactly once; returns how many were
/// done per invocation.
fn exactly_once(run_dir: &Path, units: usize) -> BTreeMap<u64, usize> {
    let records = ledger(run_dir, "loadtest");
    let distinct: BTreeSet<&str> = records
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    assert_eq!(
        distinct.len(),
        units,
        "{}: every unit recorded",
        run_dir.display()
    );
    assert_eq!(
        records.len(),
        units,
        "{}: no unit recorded twice",
        run_dir.display()
    );
    assert!(records.iter().all(|r| r["outcome"] == "done"));
    let outputs = std::fs::read_dir(run_dir.join("loadtest")).unwrap().count();
    assert_eq!(outputs, units, "one output per unit");
    let mut per_invocation = BTreeMap::new();
    for r in &records {
        *per_invocation
            .entry(r["invocation"].as_u64().unwrap())
            .or_insert(0) += 1;
    }
    per_invocation
}

/// `skypipe-slurm ARGS` (split at whitespace) that submits; returns the job IDs it printed.
fn submit(cluster: &Cluster, args: &str) -> Vec<String> {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = skypipe_slurm(cluster.path(), &args, &cluster.env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        cluster.logs()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("job "))
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect()
}

#[test]
fn real_slurm_runs_jobs_and_resubmits_them_after_time_limits() {
    let cluster = Cluster::start();
    let started = Instant::now();
    let d = cluster.path().to_path_buf();
    let lt = loadtest_bin();

    // 1. The hard time limit. 420 one-second units on 4 ranks need 105 s, more than the
    //    one-minute limit plus Slurm's 30 s enforcement period, so Slurm's SIGTERM at the
    //    limit stops the job for real; no early warning (--signal-seconds 0). Submitted
    //    first, it runs while the other scenarios use the node's other CPU.
    let wc = d.join("limit.json");
    write_workload(&wc, &[1.0; 420], 10);
    let cfg_c = loadtest_config(&d, "limit.toml", &wc);
    let run_c = d.join("run-limit");
    let ids_c = submit(
        &cluster,
        &format!(
            "--ntasks-per-node 4 --overcommit --time 1 --signal-seconds 0 {lt} --config {cfg_c} --run-dir {}",
            run_c.display()
        ),
    );
    assert_eq!(ids_c.len(), 1);

    // 2. A small job with the generated script via `sbatch --wait`; its time limit is
    //    estimated from the units the stage's --dry-run lists.
    let ws = d.join("small.json");
    write_workload(&ws, &[0.2; 40], 10);
    let cfg_s = loadtest_config(&d, "small.toml", &ws);
    let run_s = d.join("run-small");
    let args = format!(
        "--no-submit --ntasks-per-node 4 --overcommit --unit-seconds 0.2 {lt} --config {cfg_s} --run-dir {}",
        run_s.display()
    );
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = skypipe_slurm(&d, &args, &cluster.env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let script = run_s.join("slurm/loadtest.sbatch");
    let script_text = std::fs::read_to_string(&script).unwrap();
    assert!(
        script_text.contains("#SBATCH --time=00:04:00\n"),
        "{script_text}"
    );
    let mut sbatch = cluster.command("sbatch");
    sbatch
        .arg("--wait")
        .arg(&script)
        .current_dir(&d)
        .process_group(0);
    let out = common::wait_with_deadline(
        sbatch
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        SLURM_DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        cluster.logs()
    );
    let job_s = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(exactly_once(&run_s, 40).len(), 1);
    let rep = report(&run_s);
    assert_eq!(rep["exit_code"], 0);
    assert_eq!(
        rep["ranks"], 4,
        "srun --mpi=pmix started 4 ranks of one MPI job"
    );
    assert_eq!(rep["ran"], 40);
    let log = std::fs::read_to_string(run_s.join(format!("logs/loadtest-{job_s}.out")))
        .unwrap_or_else(|e| panic!("job log: {e}"));
    assert!(log.contains("makespan_s: "), "{log}");
    let a = attempts(&run_s);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        (a[1]["exit"].as_str(), a[1]["action"].as_str()),
        ("0", "finished")
    );
    eprintln!(
        "slurm test: small job done at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // 3. A chain: stage A (240 one-second units on 4 ranks, 60 s of work) under a one-minute
    //    limit with the --signal warning 5 s before it, which Slurm sends at its first limit
    //    check at least 25 s into the job; then stage B, which must wait for A's last job.
    let wa = d.join("chain-a.json");
    write_workload(&wa, &[1.0; 240], 10);
    let cfg_a = loadtest_config(&d, "chain-a.toml", &wa);
    let run_a = d.join("run-chain-a");
    let run_b = d.join("run-chain-b");
    let ids_ab = submit(
        &cluster,
        &format!(
            "--ntasks-per-node 4 --overcommit --time 1 --signal-seconds 5 --max-attempts 6 \
             {lt} --config {cfg_a} --run-dir {} --then {lt} --config {cfg_s} --run-dir {}",
            run_a.display(),
            run_b.display()
        ),
    );
    assert_eq!(ids_ab.len(), 2);
    assert_eq!(
        cluster.job(&ids_ab[1])["Dependency"],
        format!("afterok:{}(unfulfilled)", ids_ab[0])
    );

    // While the time-limited job runs, skypipe-status sees it running under Slurm.
    let start = Instant::now();
    loop {
        let out = Command::new(status_bin())
            .arg("--json")
            .arg(&run_c)
            .output()
            .unwrap();
        if out.status.success() {
            let s: Value = serde_json::from_slice(&out.stdout).unwrap();
            if s["stages"][0]["running"] == true && s["stages"][0]["done"].as_u64() > Some(0) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "never saw the job running"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    cluster.wait_for_empty_queue(SLURM_DEADLINE, "time-limit scenarios");
    eprintln!(
        "slurm test: all jobs done at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The hard limit: the first job was killed by Slurm's time limit, its ranks exited 3,
    // Slurm recorded exit code 3, the script resubmitted, the continuation finished the rest.
    let a_c = attempts(&run_c);
    let ends: Vec<&BTreeMap<String, String>> = a_c.iter().filter(|e| e["event"] == "end").collect();
    assert!(ends.len() >= 2, "{a_c:?}");
    assert_eq!(ends[0]["job"], ids_c[0]);
    assert_eq!(
        (
            ends[0]["exit"].as_str(),
            ends[0]["reason"].as_str(),
            ends[0]["action"].as_str()
        ),
        ("3", "time-limit", "resubmitted"),
        "{a_c:?}"
    );
    let last = ends.last().unwrap();
    assert_eq!(
        (last["exit"].as_str(), last["action"].as_str()),
        ("0", "finished"),
        "{a_c:?}"
    );
    let first_job = cluster.job(&ids_c[0]);
    assert_eq!(
        first_job.get("JobState").map(String::as_str),
        Some("TIMEOUT"),
        "{first_job:?}"
    );
    assert_eq!(
        first_job.get("ExitCode").map(String::as_str),
        Some("3:0"),
        "{first_job:?}"
    );
    let log =
        std::fs::read_to_string(run_c.join(format!("logs/loadtest-{}.out", ids_c[0]))).unwrap();
    assert!(log.contains("DUE TO TIME LIMIT"), "{log}");
    let per_invocation = exactly_once(&run_c, 420);
    assert!(per_invocation.len() >= 2, "{per_invocation:?}");
    let rep = report(&run_c);
    assert_eq!(rep["exit_code"], 0);
    assert_eq!(
        rep["skipped_done"],
        420 - per_invocation.values().last().unwrap()
    );

    // The warning: stage A was stopped before its limit, resubmitted until done, and stage B
    // was moved to wait for each continuation, then ran after A's last unit.
    let a_a = attempts(&run_a);
    let ends: Vec<&BTreeMap<String, String>> = a_a.iter().filter(|e| e["event"] == "end").collect();
    assert!(ends.len() >= 2, "{a_a:?}");
    for e in &ends[..ends.len() - 1] {
        assert_eq!(
            (e["exit"].as_str(), e["action"].as_str()),
            ("3", "resubmitted"),
            "{a_a:?}"
        );
        assert!(
            ["signal", "time-limit"].contains(&e["reason"].as_str()),
            "{a_a:?}"
        );
        let moved = a_a
            .iter()
            .filter(|m| m["event"] == "moved-dependency" && m["job"] == e["job"]);
        assert_eq!(
            moved.count(),
            1,
            "stage B moved once per resubmission: {a_a:?}"
        );
    }
    let last = ends.last().unwrap();
    assert_eq!(
        (last["exit"].as_str(), last["action"].as_str()),
        ("0", "finished"),
        "{a_a:?}"
    );
    assert!(
        ends.iter().any(|e| e["reason"] == "signal"),
        "the --signal warning came before the hard limit: {a_a:?}"
    );
    let per_invocation = exactly_once(&run_a, 240);
    assert_eq!(
        per_invocation.len(),
        ends.len(),
        "one invocation per job: {per_invocation:?}"
    );
    exactly_once(&run_b, 40);
    let last_a = ledger(&run_a, "loadtest")
        .iter()
        .map(|r| r["time"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let first_b = ledger(&run_b, "loadtest")
        .iter()
        .map(|r| r["time"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert!(first_b > last_a, "stage B ran before stage A had finished");
    let b_job = cluster.job(&ids_ab[1]);
    assert_eq!(
        b_job.get("JobState").map(String::as_str),
        Some("COMPLETED"),
        "{b_job:?}"
    );

    // skypipe-status on the finished runs.
    let out = Command::new(status_bin()).arg(&run_c).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("loadtest: complete"), "{t}");
    assert!(t.contains("action=finished"), "{t}");
    eprintln!(
        "slurm test: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
