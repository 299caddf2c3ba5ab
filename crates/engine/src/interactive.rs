//! Running without MPI: one unit for debugging (`--unit ID`) and the plan listing (`--dry-run`).

use crate::execute::run_unit;
use crate::ledger::{LedgerPaths, LedgerRecord, latest_by_unit, read_records};
use crate::plan::plan_stage;
use crate::report::{EXIT_CANNOT_START, EXIT_OK, EXIT_UNITS_FAILED};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use skypipe_stage::{Input, Outcome, Stage, UnitContext, UnitId};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

fn previous_records(stage: &str, run_dir: &Path) -> Result<HashMap<String, LedgerRecord>, String> {
    read_records(&LedgerPaths::new(run_dir, stage).records)
        .map(latest_by_unit)
        .map_err(|e| e.to_string())
}

/// Runs the unit `id` in this process, exactly as a rank would, without recording it in the
/// ledger. A unit that runs after others gets their outcomes and values from the run
/// directory's ledger; a multi-rank unit runs alone (collectives over one rank).
/// Prints one line with the outcome and returns the exit code.
pub fn run_one<S: Stage>(stage: &S, id: &str, run_dir: &Path, durable: bool) -> u8 {
    let wanted: UnitId = match id.parse() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: --unit: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let plan = match plan_stage(stage, usize::MAX) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let Some(&index) = plan.index.get(&wanted) else {
        let examples: Vec<String> = plan.ids.iter().take(3).map(UnitId::to_string).collect();
        eprintln!(
            "error: {}: no unit {wanted} in the plan of {} units (e.g. {})",
            stage.name(),
            plan.ids.len(),
            examples.join(", ")
        );
        return EXIT_CANNOT_START;
    };
    let mut inputs = Vec::new();
    if !plan.after[index].is_empty() {
        let previous = match previous_records(stage.name(), run_dir) {
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
                        "error: {}: unit {wanted} runs after {input}, which is not recorded done in {}",
                        stage.name(),
                        run_dir.display()
                    );
                    return EXIT_CANNOT_START;
                }
            }
        }
    }
    let ctx = UnitContext::new(1, run_dir, 0, durable).with_inputs(inputs);
    let (result, elapsed) = run_unit(stage, &plan.units[index], &ctx);
    let mut out = std::io::stdout().lock();
    match result {
        Ok(Outcome::Done) => {
            let _ = writeln!(out, "{}[{wanted}] done in {elapsed:.3} s", stage.name());
            EXIT_OK
        }
        Ok(Outcome::NoWork { reason }) => {
            let _ = writeln!(
                out,
                "{}[{wanted}] no-work in {elapsed:.3} s: {reason}",
                stage.name()
            );
            EXIT_OK
        }
        Err(f) => {
            let _ = writeln!(out, "{}[{wanted}] {f}", stage.name());
            EXIT_UNITS_FAILED
        }
    }
}

/// Lists the planned units with their ledger state and what a run would do. Reads the ledger
/// (if any) without locking it, so it is safe while a job runs.
pub fn dry_run<S: Stage>(stage: &S, run_dir: Option<&Path>, retry_failed: bool) -> u8 {
    let plan = match plan_stage(stage, usize::MAX) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let previous = match run_dir.map(|d| previous_records(stage.name(), d)) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
        None => HashMap::new(),
    };
    let all: Vec<usize> = (0..plan.units.len()).collect();
    let (_, selection) = plan.node_specs(&all, &previous, retry_failed);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# unit\tstate\tcost_hint\tranks\tafter");
    for (i, id) in plan.ids.iter().enumerate() {
        let state = previous
            .get(id.as_str())
            .map_or("pending", |r| r.outcome.as_str());
        let hint = plan.hints[i].map_or("-".to_string(), |h| format!("{h}"));
        let after = plan.after[i]
            .iter()
            .map(|&a| plan.ids[a].to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{id}\t{state}\t{hint}\t{}\t{}",
            if plan.ranks[i] == usize::MAX {
                "all".to_string()
            } else {
                plan.ranks[i].to_string()
            },
            if after.is_empty() { "-" } else { &after }
        );
    }
    let failed_earlier = plan
        .ids
        .iter()
        .filter(|id| {
            previous
                .get(id.as_str())
                .is_some_and(|r| !r.outcome.is_success())
        })
        .count();
    let _ = writeln!(
        out,
        "# {}: {} units planned, {} already done, {failed_earlier} failed earlier, {} would run",
        stage.name(),
        plan.ids.len(),
        selection.skipped_done,
        selection.to_run
    );
    EXIT_OK
}
