//! Running without MPI: one unit for debugging (`--unit ID`) and the plan listing (`--dry-run`).

use crate::error::RunError;
use crate::execute::run_unit;
use crate::ledger::{
    LedgerError, LedgerPaths, LedgerRecord, latest_by_unit, read_manifest, read_records,
};
use crate::plan::{Plan, plan_stages};
use crate::report::{EXIT_CANNOT_START, EXIT_OK, EXIT_UNITS_FAILED};
use crate::stages::StageSet;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use skypipe_stage::{Input, Outcome, ParseUnitIdError, UnitContext, UnitId};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

fn previous_records(
    stage: &str,
    run_dir: &Path,
) -> Result<HashMap<String, LedgerRecord>, LedgerError> {
    read_records(&LedgerPaths::new(run_dir, stage).records).map(latest_by_unit)
}

/// The ledgers of every stage instance, read without locking.
fn all_previous(
    stages: &StageSet<'_>,
    run_dir: &Path,
) -> Result<Vec<HashMap<String, LedgerRecord>>, LedgerError> {
    stages
        .instances
        .iter()
        .map(|inst| previous_records(&inst.name, run_dir))
        .collect()
}

/// A `--unit` argument that names no planned unit.
#[derive(Debug, thiserror::Error)]
enum UnitArgError {
    /// `STAGE[ID]` names a stage instance not in the run.
    #[error("--unit: no stage '{0}' in this run")]
    NoStage(String),
    /// A chain's unit is named without its stage instance.
    #[error("--unit: in a chain, name the stage too, e.g. {example}")]
    StageNeeded {
        /// A planned unit's label, or `STAGE[ID]` when nothing is planned.
        example: String,
    },
    /// The ID does not parse.
    #[error("--unit: {0}")]
    BadId(#[source] ParseUnitIdError),
    /// The stage instance plans no unit with this ID.
    #[error(
        "{stage}: no unit {id} in the plan of {planned} units (e.g. {})",
        .examples.join(", ")
    )]
    NotPlanned {
        /// The stage instance.
        stage: String,
        /// The ID asked for.
        id: UnitId,
        /// How many units are planned.
        planned: usize,
        /// The labels of the first few planned units.
        examples: Vec<String>,
    },
}

/// Finds the unit a `--unit` argument names: `ID` for one stage, `STAGE[ID]` in a chain.
fn find_unit(stages: &StageSet<'_>, plan: &Plan, wanted: &str) -> Result<usize, UnitArgError> {
    let (instance, id) = match wanted.strip_suffix(']').and_then(|w| w.split_once('[')) {
        Some((name, id)) => {
            let k = stages
                .names()
                .position(|n| n == name)
                .ok_or_else(|| UnitArgError::NoStage(name.to_string()))?;
            (k, id)
        }
        None if stages.is_chain() => {
            let example = if plan.ids.is_empty() {
                "STAGE[ID]".to_string()
            } else {
                plan.label(stages, 0)
            };
            return Err(UnitArgError::StageNeeded { example });
        }
        None => (0, wanted),
    };
    let id: UnitId = id.parse().map_err(UnitArgError::BadId)?;
    plan.index
        .get(&(instance as u32, id.clone()))
        .copied()
        .ok_or_else(|| UnitArgError::NotPlanned {
            stage: stages.instances[instance].name.clone(),
            id,
            planned: plan.ids.len(),
            examples: (0..plan.ids.len().min(3))
                .map(|i| plan.label(stages, i))
                .collect(),
        })
}

/// Runs the unit `id` in this process, exactly as a rank would, without recording it in the
/// ledger. A unit that runs after others gets their outcomes and values from the run
/// directory's ledger; a multi-rank unit runs alone (collectives over one rank).
/// Prints one line with the outcome and returns the exit code.
pub(crate) fn run_one(stages: &StageSet<'_>, id: &str, run_dir: &Path, durable: bool) -> u8 {
    let plan = match plan_stages(stages, run_dir, usize::MAX) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let index = match find_unit(stages, &plan, id) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let label = plan.label(stages, index);
    let name = &stages.instances[plan.instance(index)].name;
    let mut inputs = Vec::new();
    if !plan.after[index].is_empty() {
        let previous = match previous_records(name, run_dir) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_CANNOT_START;
            }
        };
        for &a in &plan.after[index] {
            let input = &plan.ids[a];
            match previous.get(input.as_str()) {
                Some(r) if r.outcome.is_success() || plan.tolerant[index] => inputs.push(Input {
                    unit: input.clone(),
                    outcome: r.outcome,
                    value: r.value.as_deref().and_then(|v| BASE64.decode(v).ok()),
                }),
                _ => {
                    eprintln!(
                        "error: {name}: unit {label} runs after {input}, which is not recorded done in {}",
                        run_dir.display()
                    );
                    return EXIT_CANNOT_START;
                }
            }
        }
    }
    let ctx = UnitContext::new(1, run_dir, 0, durable).with_inputs(inputs);
    let (result, elapsed) = run_unit(stages, &plan.units[index], &plan.ids[index], &ctx, true);
    let mut out = std::io::stdout().lock();
    let shown = if stages.is_chain() {
        label
    } else {
        format!("{name}[{label}]")
    };
    match result {
        Ok(Outcome::Done) => {
            let _ = writeln!(out, "{shown} done in {elapsed:.3} s");
            EXIT_OK
        }
        Ok(Outcome::NoWork { reason }) => {
            let _ = writeln!(out, "{shown} no-work in {elapsed:.3} s: {reason}");
            EXIT_OK
        }
        Err(f) => {
            let _ = writeln!(out, "{shown} {f}");
            EXIT_UNITS_FAILED
        }
    }
}

/// Refuses, as a real run would, a run directory whose ledger was written with another
/// configuration.
fn check_fingerprints(stages: &StageSet<'_>, run_dir: &Path) -> Result<(), RunError> {
    for inst in &stages.instances {
        let path = LedgerPaths::new(run_dir, &inst.name).manifest;
        if let Some(m) = read_manifest(&path)?
            && m.config_fingerprint != inst.stage.fingerprint()
        {
            return Err(RunError::ConfigChanged {
                stage: inst.name.clone(),
                found: m.config_fingerprint,
                expected: inst.stage.fingerprint(),
                path,
            });
        }
    }
    Ok(())
}

/// Lists the planned units with their ledger state and what a run would do. Reads the ledger
/// (if any) without locking it, so it is safe while a job runs. Without a run directory, file
/// connections are resolved against the current directory.
pub(crate) fn dry_run(
    stages: &StageSet<'_>,
    run_dir: Option<&Path>,
    retry_failed: bool,
    verify: bool,
    allow_config_change: bool,
) -> u8 {
    let dir = run_dir.unwrap_or(Path::new("."));
    let checked = stages
        .check()
        .and_then(|()| match (run_dir, allow_config_change) {
            (Some(d), false) => check_fingerprints(stages, d),
            _ => Ok(()),
        })
        .and_then(|()| plan_stages(stages, dir, usize::MAX).map_err(RunError::from));
    let plan = match checked {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let previous = match run_dir.map(|d| all_previous(stages, d)) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
        None => vec![HashMap::new(); stages.len()],
    };
    let all: Vec<usize> = (0..plan.units.len()).collect();
    let (_, selection) = plan.node_specs(stages, &all, &previous, retry_failed, verify);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# unit\tstate\tcost_hint\tranks\tafter");
    for i in 0..plan.units.len() {
        let state = previous[plan.instance(i)].get(plan.ids[i].as_str()).map_or(
            if plan.missing_inputs.contains_key(&i) {
                "missing-input"
            } else {
                "pending"
            },
            |r| r.outcome.as_str(),
        );
        let hint = plan.hints[i].map_or("-".to_string(), |h| format!("{h}"));
        let after = plan.after[i]
            .iter()
            .chain(&plan.needs[i])
            .map(|&a| plan.label(stages, a))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{}\t{state}\t{hint}\t{}\t{}",
            plan.label(stages, i),
            match (plan.ranks[i], plan.capped[i]) {
                (usize::MAX, _) => "all".to_string(),
                (ranks, true) => format!("≤{ranks}"),
                (ranks, false) => ranks.to_string(),
            },
            if after.is_empty() { "-" } else { &after }
        );
    }
    for (i, _, reason) in &selection.missing {
        let _ = writeln!(out, "# {}: {reason}", plan.label(stages, *i));
    }
    let failed_earlier = (0..plan.units.len())
        .filter(|&i| {
            previous[plan.instance(i)]
                .get(plan.ids[i].as_str())
                .is_some_and(|r| !r.outcome.is_success())
        })
        .count();
    let _ = writeln!(
        out,
        "# {}: {} units planned, {} already done, {failed_earlier} failed earlier, {} would run{}",
        stages.run_name(),
        plan.ids.len(),
        selection.skipped_done,
        selection.to_run,
        match selection.missing.len() {
            0 => String::new(),
            n => format!(", {n} fail at once (input missing)"),
        }
    );
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Files;

    /// `--unit` finds `ID` alone, `STAGE[ID]` in a chain, and says what is wrong otherwise.
    #[test]
    fn unit_arguments_are_found_or_refused_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let first = Files::new("first", None, "mid", 2);
        let second = Files::new("second", Some("mid"), "out", 2);
        let single = StageSet::single(&first);
        let plan = plan_stages(&single, dir.path(), 1).unwrap();
        assert_eq!(find_unit(&single, &plan, "u=1").unwrap(), 1);
        let err = find_unit(&single, &plan, "u=7").unwrap_err();
        assert!(matches!(&err, UnitArgError::NotPlanned { planned: 2, .. }));
        assert_eq!(
            err.to_string(),
            "first: no unit u=7 in the plan of 2 units (e.g. u=0, u=1)"
        );
        assert!(matches!(
            find_unit(&single, &plan, "u"),
            Err(UnitArgError::BadId(_))
        ));

        let chain = StageSet::new()
            .with("first", &first)
            .with("second", &second);
        let plan = plan_stages(&chain, dir.path(), 1).unwrap();
        assert_eq!(find_unit(&chain, &plan, "second[u=0]").unwrap(), 2);
        assert_eq!(
            find_unit(&chain, &plan, "u=0").unwrap_err().to_string(),
            "--unit: in a chain, name the stage too, e.g. first[u=0]"
        );
        assert_eq!(
            find_unit(&chain, &plan, "third[u=0]")
                .unwrap_err()
                .to_string(),
            "--unit: no stage 'third' in this run"
        );
    }
}
