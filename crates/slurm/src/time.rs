//! Slurm time limits: parsing, formatting and the walltime estimate.

use serde::Serialize;

/// Why a Slurm time limit was refused; each names the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not one of Slurm's time formats.
    #[error(
        "time `{0}`: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 90 or 01:30:00)"
    )]
    Format(String),
    /// A limit of zero seconds.
    #[error("time `{0}`: must be longer than zero")]
    Zero(String),
}

/// Parses a Slurm time limit (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`)
/// into seconds. `UNLIMITED` and `infinite` are refused: a time limit is the point here.
pub fn parse_time(text: &str) -> Result<u64, TimeError> {
    let t = text.trim();
    let err = || TimeError::Format(text.to_string());
    let number = |s: &str| -> Result<u64, TimeError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        s.parse::<u64>().map_err(|_| err())
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Result<_, _>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(err()),
    };
    if seconds == 0 {
        return Err(TimeError::Zero(text.to_string()));
    }
    Ok(seconds)
}

/// Formats seconds as Slurm's `HH:MM:SS`, or `D-HH:MM:SS` from one day on.
pub fn format_time(seconds: u64) -> String {
    let (d, rest) = (seconds / 86400, seconds % 86400);
    let (h, m, s) = (rest / 3600, (rest % 3600) / 60, rest % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// How a time limit was estimated; every input is kept so the script can show its working.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Units the job will run (pending units of the plan).
    pub units: u64,
    /// Wall seconds one rank spends per unit.
    pub unit_seconds: f64,
    /// Where `unit_seconds` came from (given, or the report it was measured in).
    pub unit_seconds_source: String,
    /// MPI ranks (nodes × tasks per node).
    pub ranks: u64,
    /// Expected makespan: `units × unit_seconds / ranks`, plus one unit for the tail.
    pub work_s: f64,
    /// Multiplies the expected makespan.
    pub safety_factor: f64,
    /// Seconds before the limit at which Slurm warns the ranks (`--signal`).
    pub signal_s: u64,
    /// Seconds added for job start-up (MPI launch, planning, reading the ledger).
    pub startup_s: u64,
    /// The time limit: `work × safety + signal + start-up`, rounded up to whole minutes.
    pub limit_s: u64,
}

impl Estimate {
    /// Estimates a time limit. With dynamic balance the makespan is close to the total work
    /// over the ranks, plus at most one unit started just before the end.
    pub fn new(
        units: u64,
        unit_seconds: f64,
        unit_seconds_source: String,
        ranks: u64,
        safety_factor: f64,
        signal_s: u64,
        startup_s: u64,
    ) -> Self {
        let ranks = ranks.max(1);
        let work_s = if units == 0 {
            0.0
        } else {
            units as f64 * unit_seconds / ranks as f64 + unit_seconds
        };
        let total = work_s * safety_factor + signal_s as f64 + startup_s as f64;
        let minutes = ((total / 60.0).ceil() as u64).max(1);
        Self {
            units,
            unit_seconds,
            unit_seconds_source,
            ranks,
            work_s,
            safety_factor,
            signal_s,
            startup_s,
            limit_s: minutes * 60,
        }
    }

    /// The working, as comment lines for the script.
    pub fn explain(&self) -> String {
        format!(
            "# Walltime: {} units x {:.3} s/unit ({}) / {} ranks + one unit = {:.1} s;\n#   x {:.2} safety + {} s warning + {} s start-up, rounded up to minutes = {}.\n",
            self.units,
            self.unit_seconds,
            self.unit_seconds_source,
            self.ranks,
            self.work_s,
            self.safety_factor,
            self.signal_s,
            self.startup_s,
            format_time(self.limit_s)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slurm_time_format_parses() {
        for (text, seconds) in [
            ("90", 5400),
            ("1:30", 90),
            ("01:30:00", 5400),
            ("2-12", 2 * 86400 + 12 * 3600),
            ("1-00:30", 86400 + 1800),
            ("1-02:03:04", 86400 + 7384),
        ] {
            assert_eq!(parse_time(text), Ok(seconds), "{text}");
        }
        for bad in ["", "UNLIMITED", "1:2:3:4", "a:10", "-5", "1-", "0", "1.5"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_time("0"), Err(TimeError::Zero("0".into())));
        for bad in ["1:2:3:4", "1.5"] {
            assert_eq!(parse_time(bad), Err(TimeError::Format(bad.into())));
        }
        assert_eq!(format_time(5400), "01:30:00");
        assert_eq!(format_time(86400 + 7384), "1-02:03:04");
    }

    #[test]
    fn estimate_adds_tail_safety_warning_and_startup_then_rounds_up() {
        // 1,000,000 units of 2 s on 100 nodes x 64 tasks: 312.5 + 2 = 314.5 s of work;
        // x 1.5 = 471.75, + 120 + 60 = 651.75 s -> 11 minutes.
        let e = Estimate::new(1_000_000, 2.0, "given".into(), 6400, 1.5, 120, 60);
        assert_eq!(e.work_s, 314.5);
        assert_eq!(e.limit_s, 660);
        assert!(e.explain().contains("= 00:11:00"), "{}", e.explain());
        // Nothing to do still asks for a minute.
        assert_eq!(
            Estimate::new(0, 2.0, "given".into(), 4, 1.5, 0, 0).limit_s,
            60
        );
    }
}
