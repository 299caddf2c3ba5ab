//! Running without MPI: one unit for debugging (`--unit ID`) and the plan listing (`--dry-run`).

use crate::execute::run_unit;
use crate::ledger::{LedgerPaths, latest_by_unit, read_records};
use crate::plan::{plan_stage, select};
use crate::report::{EXIT_CANNOT_START, EXIT_OK, EXIT_UNITS_FAILED};
use skypipe_stage::{Outcome, Stage, UnitContext, UnitId};
use std::io::Write;
use std::path::Path;

/// Runs the unit `id` in this process, exactly as a rank would, without touching the ledger.
/// Prints one line with the outcome and returns the exit code.
pub fn run_one<S: Stage>(stage: &S, id: &str, run_dir: &Path, durable: bool) -> u8 {
    let wanted: UnitId = match id.parse() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: --unit: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let plan = match plan_stage(stage) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let Some(index) = plan.ids.iter().position(|i| i == wanted.as_str()) else {
        let examples: Vec<&str> = plan.ids.iter().take(3).map(String::as_str).collect();
        eprintln!(
            "error: {}: no unit {wanted} in the plan of {} units (e.g. {})",
            stage.name(),
            plan.ids.len(),
            examples.join(", ")
        );
        return EXIT_CANNOT_START;
    };
    let ctx = UnitContext {
        attempt: 1,
        run_dir: run_dir.to_path_buf(),
        rank: 0,
        durable,
    };
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
    let plan = match plan_stage(stage) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CANNOT_START;
        }
    };
    let previous = match run_dir {
        Some(dir) => match read_records(&LedgerPaths::new(dir, stage.name()).records) {
            Ok(records) => latest_by_unit(records),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_CANNOT_START;
            }
        },
        None => Default::default(),
    };
    let selection = select(&plan.ids, &plan.hints, &previous, retry_failed);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# unit\tstate\tcost_hint");
    for (i, id) in plan.ids.iter().enumerate() {
        let state = previous.get(id).map_or("pending", |r| r.outcome.as_str());
        let hint = plan.hints[i].map_or("-".to_string(), |h| format!("{h}"));
        let _ = writeln!(out, "{id}\t{state}\t{hint}");
    }
    let failed_earlier = plan
        .ids
        .iter()
        .filter(|id| previous.get(*id).is_some_and(|r| !r.outcome.is_success()))
        .count();
    let _ = writeln!(
        out,
        "# {}: {} units planned, {} already done, {failed_earlier} failed earlier, {} would run",
        stage.name(),
        plan.ids.len(),
        selection.skipped_done,
        selection.order.len()
    );
    EXIT_OK
}
