//! Wall and CPU time of the steps of a unit, for logs and benchmarks (never for decisions).

/// Wall and CPU seconds of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTime {
    /// Name of the step.
    pub step: &'static str,
    /// Elapsed wall time, seconds.
    pub wall_s: f64,
    /// CPU time of the whole process (every thread) during the step, seconds.
    pub cpu_s: f64,
}

/// CPU time used so far by this process (all threads), seconds.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant POSIX clock.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A stopwatch that records one [`StepTime`] per [`Laps::lap`].
#[derive(Debug)]
pub struct Laps {
    wall: std::time::Instant,
    cpu: f64,
    /// The steps recorded so far, in order.
    pub steps: Vec<StepTime>,
}

impl Laps {
    /// Starts the clocks.
    pub fn start() -> Self {
        Self {
            wall: std::time::Instant::now(),
            cpu: process_cpu_seconds(),
            steps: Vec::new(),
        }
    }

    /// Records the time since the previous lap (or the start) as `step`.
    pub fn lap(&mut self, step: &'static str) {
        let cpu = process_cpu_seconds();
        self.steps.push(StepTime {
            step,
            wall_s: self.wall.elapsed().as_secs_f64(),
            cpu_s: cpu - self.cpu,
        });
        self.wall = std::time::Instant::now();
        self.cpu = cpu;
    }
}

/// `name=CPU` for each step (CPU seconds, 4 decimals), space separated, for a log line.
pub fn summary(steps: &[StepTime]) -> String {
    steps
        .iter()
        .map(|s| format!("{}={:.4}", s.step, s.cpu_s))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_count_cpu_time_spent_working() {
        let mut laps = Laps::start();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_secs_f64() < 0.05 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        laps.lap("spin");
        let s = laps.steps[0];
        // The process's CPU time includes the tests running alongside on the other cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            s.wall_s >= 0.05 && s.cpu_s > 0.0 && s.cpu_s <= cores * s.wall_s + 0.01,
            "{s:?}"
        );
        assert_eq!(summary(&laps.steps), format!("spin={:.4}", s.cpu_s));
    }
}
