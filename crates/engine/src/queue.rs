//! The dispatcher's bookkeeping, free of MPI so it can be tested directly.
//!
//! Units are identified by their index in the plan. The queue hands out batches on demand:
//! a batch is one unit until the units are seen to be short, then as many as fit in
//! [`BATCH_TARGET`] of expected work, never more than a fair share of what is left, so
//! dispatch cost is amortised for tiny units without hurting balance for long ones.

use crate::options::Schedule;
use std::collections::VecDeque;
use std::time::Duration;

/// Expected work per batch once unit durations are known.
pub const BATCH_TARGET: Duration = Duration::from_millis(2);
/// Upper bound on units per batch.
pub const MAX_BATCH: usize = 1024;

/// Pending units and the per-rank counts of units in flight.
#[derive(Debug)]
pub struct WorkQueue {
    /// Dynamic: one shared queue. Static: one queue per rank.
    queues: Vec<VecDeque<usize>>,
    schedule: Schedule,
    in_flight: Vec<usize>,
    attempts: Vec<u32>,
    mean_elapsed_s: Option<f64>,
    ranks: usize,
}

impl WorkQueue {
    /// A queue over `order` (plan indices, in dispatch order) for `ranks` ranks.
    /// `total_units` is the plan length (for attempt bookkeeping).
    pub fn new(order: Vec<usize>, total_units: usize, ranks: usize, schedule: Schedule) -> Self {
        assert!(ranks > 0, "at least one rank");
        let queues = match schedule {
            Schedule::Dynamic => vec![order.into_iter().collect()],
            Schedule::Static => {
                let mut qs = vec![VecDeque::new(); ranks];
                for (i, unit) in order.into_iter().enumerate() {
                    qs[i % ranks].push_back(unit);
                }
                qs
            }
        };
        Self {
            queues,
            schedule,
            in_flight: vec![0; ranks],
            attempts: vec![0; total_units],
            mean_elapsed_s: None,
            ranks,
        }
    }

    fn queue_of(&mut self, rank: usize) -> &mut VecDeque<usize> {
        match self.schedule {
            Schedule::Dynamic => &mut self.queues[0],
            Schedule::Static => &mut self.queues[rank],
        }
    }

    /// Units not yet handed out.
    pub fn pending(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Units handed out and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().sum()
    }

    /// Nothing pending and nothing in flight.
    pub fn is_finished(&self) -> bool {
        self.pending() == 0 && self.in_flight() == 0
    }

    /// The next batch for `rank` as `(unit index, attempt number)` pairs; empty when there is
    /// nothing for it now.
    pub fn next_batch(&mut self, rank: usize) -> Vec<(usize, u32)> {
        let remaining = match self.schedule {
            Schedule::Dynamic => self.queues[0].len(),
            Schedule::Static => self.queues[rank].len(),
        };
        if remaining == 0 {
            return Vec::new();
        }
        let sharers = match self.schedule {
            Schedule::Dynamic => self.ranks,
            Schedule::Static => 1,
        };
        let fair_share = (remaining / (2 * sharers)).max(1);
        let by_cost = match self.mean_elapsed_s {
            Some(mean) if mean > 0.0 => ((BATCH_TARGET.as_secs_f64() / mean) as usize).max(1),
            Some(_) => MAX_BATCH,
            None => 1,
        };
        let n = by_cost.min(fair_share).min(MAX_BATCH);
        let queue = self.queue_of(rank);
        let batch: Vec<usize> = queue.drain(..n.min(queue.len())).collect();
        self.in_flight[rank] += batch.len();
        batch
            .into_iter()
            .map(|unit| {
                self.attempts[unit] += 1;
                (unit, self.attempts[unit])
            })
            .collect()
    }

    /// Records that `rank` reported `unit` after `elapsed_s` seconds.
    pub fn complete(&mut self, rank: usize, elapsed_s: f64) {
        self.in_flight[rank] = self.in_flight[rank].saturating_sub(1);
        let e = elapsed_s.max(0.0);
        self.mean_elapsed_s = Some(match self.mean_elapsed_s {
            None => e,
            Some(m) => 0.9 * m + 0.1 * e,
        });
    }

    /// Puts a unit that `rank` returned unrun back at the front, without counting an attempt.
    pub fn give_back(&mut self, rank: usize, unit: usize) {
        self.in_flight[rank] = self.in_flight[rank].saturating_sub(1);
        self.attempts[unit] = self.attempts[unit].saturating_sub(1);
        self.queue_of(rank).push_front(unit);
    }

    /// Queues `unit` for another attempt (at the back).
    pub fn retry(&mut self, rank: usize, unit: usize) {
        self.queue_of(rank).push_back(unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_queue_starts_with_single_units_then_batches_short_ones() {
        let mut q = WorkQueue::new((0..10_000).collect(), 10_000, 2, Schedule::Dynamic);
        let first = q.next_batch(0);
        assert_eq!(first, vec![(0, 1)]);
        q.complete(0, 1e-7);
        let second = q.next_batch(1);
        assert!(second.len() > 100, "{}", second.len());
        assert!(second.len() <= MAX_BATCH);
        assert_eq!(second[0], (1, 1));
    }

    #[test]
    fn long_units_go_one_at_a_time_and_batches_never_exceed_a_fair_share() {
        let mut q = WorkQueue::new((0..6).collect(), 6, 3, Schedule::Dynamic);
        q.next_batch(0);
        q.complete(0, 1.0);
        assert_eq!(q.next_batch(1).len(), 1);
        let mut q = WorkQueue::new((0..8).collect(), 8, 2, Schedule::Dynamic);
        q.next_batch(0);
        q.complete(0, 0.0);
        // 7 left, 2 ranks: a fair share is 7 / 4 = 1.
        assert_eq!(q.next_batch(1).len(), 1);
    }

    #[test]
    fn static_schedule_is_round_robin_over_ranks() {
        let mut q = WorkQueue::new((0..7).collect(), 7, 3, Schedule::Static);
        let mut got = vec![Vec::new(); 3];
        while !q.is_finished() {
            for (rank, units) in got.iter_mut().enumerate() {
                for (u, _) in q.next_batch(rank) {
                    units.push(u);
                    q.complete(rank, 0.0);
                }
            }
        }
        assert_eq!(got, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn retries_count_attempts_and_given_back_units_do_not() {
        let mut q = WorkQueue::new(vec![0, 1], 2, 1, Schedule::Dynamic);
        assert_eq!(q.next_batch(0), vec![(0, 1)]);
        q.complete(0, 0.5);
        q.retry(0, 0);
        let b = q.next_batch(0);
        assert_eq!(b, vec![(1, 1)]);
        q.give_back(0, 1);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.next_batch(0), vec![(1, 1)]);
        q.complete(0, 0.5);
        assert_eq!(q.next_batch(0), vec![(0, 2)]);
        q.complete(0, 0.5);
        assert!(q.is_finished());
    }
}
