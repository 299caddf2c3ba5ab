//! The text of a stage's batch script.

use crate::{JobPlan, format_time};
use skypipe_status::shell_quote;
use std::fmt::Write as _;

/// The batch script of one job: `#SBATCH` directives, then a bash body that runs the stage
/// under `srun --mpi=<plugin>` and, when the ranks exit 3 (interrupted) because of the time
/// limit, submits the same script again after this job to finish the rest, at most
/// `max_attempts` jobs in all.
///
/// How the script tells a time limit from a user's `scancel`: Slurm's `--signal=TERM@N`
/// warning goes to the ranks only, so the batch shell sees srun exit 3 without having been
/// signalled itself; at the hard limit the shell gets SIGTERM too and `scontrol show job`
/// says `Reason=TimeLimit`; a plain `scancel` signals the shell with any other reason, and
/// the script then stops without resubmitting.
pub fn render_script(job: &JobPlan) -> String {
    let s = &job.settings;
    let mut out = String::from("#!/bin/bash\n");
    let mut directive = |line: String| {
        let _ = writeln!(out, "#SBATCH {line}");
    };
    directive(format!("--job-name={}", job.job_name()));
    directive(format!("--nodes={}", s.nodes));
    if s.overcommit {
        // Slurm refuses --ntasks-per-node above a node's CPU count even with --overcommit,
        // but accepts the same number of ranks as --ntasks.
        directive(format!("--ntasks={}", s.ranks()));
    } else {
        directive(format!("--ntasks-per-node={}", s.ntasks_per_node));
    }
    directive(format!("--time={}", format_time(job.time_s)));
    if let Some(p) = &s.partition {
        directive(format!("--partition={p}"));
    }
    if let Some(a) = &s.account {
        directive(format!("--account={a}"));
    }
    directive(format!("--output={}", job.output.display()));
    directive(format!("--chdir={}", job.workdir.display()));
    if s.signal_s > 0 {
        directive(format!("--signal=TERM@{}", s.signal_s));
    }
    if s.overcommit {
        directive("--overcommit".to_string());
    }
    for d in &s.directives {
        directive(d.clone());
    }

    let _ = writeln!(
        out,
        "#\n# skypipe stage `{}` under Slurm, written by skypipe-slurm {}.",
        job.stage,
        env!("CARGO_PKG_VERSION")
    );
    match &job.estimate {
        Some(e) => out.push_str(&e.explain()),
        None => {
            let _ = writeln!(out, "# Walltime: {} as given.", format_time(job.time_s));
        }
    }
    let warning = if s.signal_s > 0 {
        format!(
            "{} s before the limit (--signal) and again at the limit",
            s.signal_s
        )
    } else {
        "at the limit".to_string()
    };
    let _ = write!(
        out,
        "\
# Time limit: Slurm sends SIGTERM to the ranks {warning}.
# They stop dispatch, flush the ledger and exit 3; this script then submits itself again, to
# start after this job ends, and the new job resumes from the ledger (attempt N+1, at most
# {max} jobs in all). Later stages of a chain that waited for this job are moved to wait for
# the new one. A plain `scancel` stops for good; `scancel --signal=TERM <job>` stops and
# continues in a new job. Progress: skypipe-status {run_dir}
# Details: docs/slurm.md in the skypipe sources.

set -u
RUN_DIR={run_dir_q}
SCRIPT={script_q}
ATTEMPTS_LOG={attempts_q}
MAX_ATTEMPTS={max}
ATTEMPT=${{1:-1}}
JOB=${{SLURM_JOB_ID:?this script runs under sbatch}}

log_event() {{
    printf '%s\\tjob=%s\\tattempt=%s' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"$JOB\" \"$ATTEMPT\" >>\"$ATTEMPTS_LOG\"
    printf '\\t%s' \"$@\" >>\"$ATTEMPTS_LOG\"
    printf '\\n' >>\"$ATTEMPTS_LOG\"
    echo \"skypipe-slurm: job $JOB attempt $ATTEMPT/$MAX_ATTEMPTS: $*\" >&2
}}

# Slurm's SIGTERM at the hard time limit reaches this shell as well as the ranks: note it and
# keep waiting for srun while the ranks flush (they need less than KillWait, default 30 s).
got_term=0
trapped=0
trap 'got_term=1; trapped=1' TERM
",
        max = s.max_attempts,
        run_dir = job.run_dir.display(),
        run_dir_q = shell_quote(&job.run_dir.to_string_lossy()),
        script_q = shell_quote(&job.script.to_string_lossy()),
        attempts_q = shell_quote(&job.attempts_log.to_string_lossy()),
    );
    if !s.setup.is_empty() {
        out.push_str("\n# Set-up ([slurm] setup).\n");
        for line in &s.setup {
            let _ = writeln!(out, "{line}");
        }
    }
    let mut srun = vec!["srun".to_string(), format!("--mpi={}", s.mpi)];
    if s.overcommit {
        srun.push("--overcommit".to_string());
    }
    srun.extend(s.srun_args.iter().cloned());
    srun.push(job.bin.to_string_lossy().into_owned());
    srun.extend(job.args.iter().cloned());
    let srun: Vec<String> = srun.iter().map(|a| shell_quote(a)).collect();
    let _ = write!(
        out,
        "
log_event event=start \"nodes=${{SLURM_JOB_NUM_NODES:-?}}\" \"tasks=${{SLURM_NTASKS:-?}}\"
{srun} &
srun_pid=$!
# `wait` returns early when the trap runs; wait again until srun itself has exited.
rc=-1
while :; do
    trapped=0
    wait \"$srun_pid\"
    r=$?
    if [ \"$r\" -eq 127 ] && [ \"$rc\" -ne -1 ]; then break; fi
    rc=$r
    [ \"$trapped\" -eq 1 ] || break
done

case \"$rc\" in
0)
    log_event event=end exit=0 action=finished
    exit 0
    ;;
2)
    log_event event=end exit=2 action=finished-with-failures
    echo \"skypipe-slurm: some units failed; see: skypipe-status $RUN_DIR\" >&2
    exit 2
    ;;
3)
    ;;
*)
    log_event event=end \"exit=$rc\" action=stopped
    exit \"$rc\"
    ;;
esac

# Exit 3: the ranks were interrupted and the ledger is consistent. Why?
if [ \"$got_term\" -eq 0 ]; then
    reason=signal      # the --signal warning before the limit, or scancel --signal=TERM
elif scontrol show job \"$JOB\" 2>/dev/null | grep -Eq 'JobState=TIMEOUT|Reason=TimeLimit'; then
    reason=time-limit  # Slurm's SIGTERM at the hard limit
else
    log_event event=end exit=3 reason=cancelled action=stopped
    echo \"skypipe-slurm: cancelled; to resume: sbatch $SCRIPT\" >&2
    exit 3
fi
if [ \"$ATTEMPT\" -ge \"$MAX_ATTEMPTS\" ]; then
    log_event event=end exit=3 \"reason=$reason\" action=gave-up
    echo \"skypipe-slurm: $MAX_ATTEMPTS attempts used; to resume: sbatch $SCRIPT\" >&2
    exit 3
fi
next=$(sbatch --parsable --dependency=\"afterany:$JOB\" \"$SCRIPT\" \"$((ATTEMPT + 1))\")
next=${{next%%;*}}
case \"$next\" in
'' | *[!0-9]*)
    log_event event=end exit=3 \"reason=$reason\" action=resubmit-failed
    echo \"skypipe-slurm: resubmission failed; to resume: sbatch $SCRIPT\" >&2
    exit 3
    ;;
esac
# Later stages of a chain wait for this job with afterok: make them wait for the new job.
squeue --me --noheader --states=PENDING --format='%i %E' 2>/dev/null |
    while read -r id dep; do
        old=$(printf '%s' \"$dep\" | sed -e 's/([^)]*)//g')
        new=$(printf '%s' \"$old\" | sed -E \"s/(^|[,?])afterok:$JOB([,?]|\\$)/\\1afterok:$next\\2/\")
        if [ \"$new\" != \"$old\" ] && scontrol update JobId=\"$id\" Dependency=\"$new\"; then
            log_event event=moved-dependency \"dependent=$id\" \"next_job=$next\"
        fi
    done
log_event event=end exit=3 \"reason=$reason\" action=resubmitted \"next_job=$next\"
exit 3
",
        srun = srun.join(" "),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobPlan, SlurmSettings};

    fn job(settings: SlurmSettings) -> JobPlan {
        JobPlan {
            stage: "demo".into(),
            bin: "/opt/sky/bin/skypipe-demo".into(),
            args: vec![
                "--config".into(),
                "/w/demo config.toml".into(),
                "--run-dir".into(),
                "/w/run".into(),
            ],
            run_dir: "/w/run".into(),
            workdir: "/w".into(),
            script: "/w/run/slurm/demo.sbatch".into(),
            output: "/w/run/logs/demo-%j.out".into(),
            attempts_log: "/w/run/logs/demo.attempts".into(),
            settings: settings.resolve().unwrap(),
            time_s: 5400,
            estimate: None,
        }
    }

    #[test]
    fn optional_directives_appear_only_when_set() {
        let plain = render_script(&job(SlurmSettings::default()));
        assert!(!plain.contains("--partition"), "{plain}");
        assert!(!plain.contains("--account"), "{plain}");
        assert!(!plain.contains("--overcommit"), "{plain}");
        assert!(plain.contains("#SBATCH --ntasks-per-node=1\n"), "{plain}");
        assert!(plain.contains("#SBATCH --signal=TERM@120\n"), "{plain}");
        assert!(
            plain.contains(
                "srun --mpi=pmix /opt/sky/bin/skypipe-demo --config '/w/demo config.toml' --run-dir /w/run &\n"
            ),
            "{plain}"
        );
        let full = render_script(&job(SlurmSettings {
            partition: Some("debug".into()),
            account: Some("m42".into()),
            overcommit: Some(true),
            signal_s: Some(0),
            directives: Some(vec!["--qos=low".into()]),
            setup: Some(vec!["module load openmpi".into()]),
            srun_args: Some(vec!["--cpu-bind=cores".into()]),
            ..Default::default()
        }));
        for line in [
            "#SBATCH --partition=debug\n",
            "#SBATCH --account=m42\n",
            "#SBATCH --overcommit\n",
            "#SBATCH --ntasks=1\n",
            "#SBATCH --qos=low\n",
            "\nmodule load openmpi\n",
            "srun --mpi=pmix --overcommit --cpu-bind=cores /opt/sky/bin/skypipe-demo",
        ] {
            assert!(full.contains(line), "missing {line:?} in\n{full}");
        }
        assert!(!full.contains("#SBATCH --signal"), "{full}");
        assert!(
            full.contains("SIGTERM to the ranks at the limit.\n"),
            "{full}"
        );
    }
}
