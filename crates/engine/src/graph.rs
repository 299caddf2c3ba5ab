//! The dispatcher's bookkeeping, free of MPI so it can be tested directly: which units are
//! ready (all the units they run after have ended well), which run where, and batch sizes.
//!
//! Units are identified by their index in the plan. A unit becomes ready the moment its own
//! inputs end, never waiting for a whole stage. Ready units are taken deepest first (a coadd
//! before more warps, so results and memory are released early), then by decreasing cost
//! hint, then in plan order. Batches: one unit until unit durations are seen, then as many as
//! fit in [`BATCH_TARGET`] of expected work, never more than a fair share of what is ready
//! nor `max_batch`.

use crate::options::Schedule;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Expected work per batch once unit durations are known.
pub const BATCH_TARGET: Duration = Duration::from_millis(2);

/// A unit as the graph sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSpec {
    /// Indices of the units it runs after.
    pub after: Vec<usize>,
    /// Ranks it needs at once.
    pub ranks: usize,
    /// Cost hint.
    pub hint: Option<f64>,
    /// Runs once its inputs have ended, even if some failed.
    pub tolerant: bool,
    /// How it ended in an earlier invocation: `Some(true)` done or no-work (not rerun),
    /// `Some(false)` failed and not retried now, `None` to run.
    pub prior: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Blocked,
    Ready,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug)]
struct Node {
    after: Vec<usize>,
    dependants: Vec<usize>,
    waiting_on: usize,
    ranks: usize,
    level: u32,
    hint: f64,
    state: State,
    attempts: u32,
    tolerant: bool,
}

/// Heap key: deeper first, then costlier, then earlier in the plan.
#[derive(Debug, PartialEq)]
struct Key {
    level: u32,
    hint: f64,
    index: usize,
}

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.level
            .cmp(&other.level)
            .then(self.hint.total_cmp(&other.hint))
            .then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a rank gets next.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// Single-rank units as `(index, attempt)`.
    Batch(Vec<(usize, u32)>),
    /// A multi-rank unit `(index, attempt)`: gather ranks for it.
    Multi(usize, u32),
    /// Nothing ready for this rank now.
    Nothing,
}

/// The units of a run and their states.
#[derive(Debug)]
pub(crate) struct Graph {
    nodes: Vec<Node>,
    ready: Vec<BinaryHeap<Key>>,
    schedule: Schedule,
    ranks: usize,
    max_batch: usize,
    in_flight: Vec<usize>,
    mean_elapsed_s: Option<f64>,
    open: usize,
}

impl Graph {
    /// Builds the graph. Returns it with the units that cannot run because a unit they run
    /// after failed earlier, as `(unit, failed input)`, or the index of a unit on a cycle.
    pub fn new(
        specs: Vec<NodeSpec>,
        ranks: usize,
        schedule: Schedule,
        max_batch: usize,
    ) -> Result<(Self, Vec<(usize, usize)>), usize> {
        assert!(ranks > 0, "at least one rank");
        let mut graph = Self {
            nodes: Vec::new(),
            ready: match schedule {
                Schedule::Dynamic => vec![BinaryHeap::new()],
                Schedule::Static => (0..ranks).map(|_| BinaryHeap::new()).collect(),
            },
            schedule,
            ranks,
            max_batch: max_batch.max(1),
            in_flight: vec![0; ranks],
            mean_elapsed_s: None,
            open: 0,
        };
        let blocked = graph.add(specs)?;
        Ok((graph, blocked))
    }

    /// Adds units (their `after` may name earlier units or each other). Returns the units
    /// that cannot run because an input already failed, or the index of a unit on a cycle.
    pub fn add(&mut self, specs: Vec<NodeSpec>) -> Result<Vec<(usize, usize)>, usize> {
        let first = self.nodes.len();
        let count = specs.len();
        let priors: Vec<Option<bool>> = specs.iter().map(|s| s.prior).collect();
        for (k, spec) in specs.into_iter().enumerate() {
            let index = first + k;
            for &a in &spec.after {
                assert!(
                    a < first + count,
                    "unit {index} runs after unknown unit {a}"
                );
            }
            self.nodes.push(Node {
                after: spec.after,
                dependants: Vec::new(),
                waiting_on: 0,
                ranks: spec.ranks.max(1),
                level: 0,
                hint: spec.hint.unwrap_or(0.0),
                state: State::Blocked,
                attempts: 0,
                tolerant: spec.tolerant,
            });
        }
        for index in first..first + count {
            for a in self.nodes[index].after.clone() {
                self.nodes[a].dependants.push(index);
            }
        }
        // Kahn's algorithm over the new units, settling each in topological order.
        let mut unsettled: Vec<usize> = (first..first + count)
            .map(|i| self.nodes[i].after.iter().filter(|&&a| a >= first).count())
            .collect();
        let mut stack: Vec<usize> = (first..first + count)
            .filter(|&i| unsettled[i - first] == 0)
            .collect();
        let mut order = Vec::with_capacity(count);
        while let Some(i) = stack.pop() {
            order.push(i);
            for &d in &self.nodes[i].dependants {
                if d >= first {
                    unsettled[d - first] -= 1;
                    if unsettled[d - first] == 0 {
                        stack.push(d);
                    }
                }
            }
        }
        if order.len() < count {
            let on_cycle = (first..first + count)
                .find(|&i| unsettled[i - first] > 0)
                .expect("a unit on the cycle");
            self.nodes.truncate(first);
            for node in &mut self.nodes {
                node.dependants.retain(|&d| d < first);
            }
            return Err(on_cycle);
        }
        let mut blocked = Vec::new();
        for i in order {
            let level = self.nodes[i]
                .after
                .iter()
                .map(|&a| self.nodes[a].level + 1)
                .max()
                .unwrap_or(0);
            self.nodes[i].level = level;
            let failed_input = if self.nodes[i].tolerant {
                None
            } else {
                self.nodes[i]
                    .after
                    .iter()
                    .copied()
                    .find(|&a| self.nodes[a].state == State::Failed)
            };
            match (priors[i - first], failed_input) {
                (Some(true), _) => self.nodes[i].state = State::Succeeded,
                (Some(false), _) => self.nodes[i].state = State::Failed,
                (None, Some(a)) => {
                    self.nodes[i].state = State::Failed;
                    blocked.push((i, a));
                }
                (None, None) => {
                    self.open += 1;
                    let tolerant = self.nodes[i].tolerant;
                    let waiting = self.nodes[i]
                        .after
                        .iter()
                        .filter(|&&a| match self.nodes[a].state {
                            State::Succeeded => false,
                            State::Failed => !tolerant,
                            _ => true,
                        })
                        .count();
                    self.nodes[i].waiting_on = waiting;
                    if waiting == 0 {
                        self.push_ready(i);
                    }
                }
            }
        }
        Ok(blocked)
    }

    fn heap_of(&self, index: usize) -> usize {
        match self.schedule {
            Schedule::Dynamic => 0,
            Schedule::Static => index % self.ranks,
        }
    }

    fn push_ready(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.state = State::Ready;
        let key = Key {
            level: node.level,
            hint: node.hint,
            index,
        };
        let heap = self.heap_of(index);
        self.ready[heap].push(key);
    }

    /// Units not ended (ready, blocked or running).
    pub fn open(&self) -> usize {
        self.open
    }

    /// Units handed out and not yet reported, counted per rank running them.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().sum()
    }

    /// Units ready to run.
    pub fn ready(&self) -> usize {
        self.ready.iter().map(BinaryHeap::len).sum()
    }

    /// Nothing left to run or running.
    pub fn is_finished(&self) -> bool {
        self.open == 0
    }

    /// What `rank` should run next.
    pub fn next(&mut self, rank: usize) -> Next {
        let heap = match self.schedule {
            Schedule::Dynamic => 0,
            Schedule::Static => rank,
        };
        let Some(top) = self.ready[heap].peek() else {
            return Next::Nothing;
        };
        if self.nodes[top.index].ranks > 1 {
            let index = self.ready[heap].pop().expect("peeked").index;
            let node = &mut self.nodes[index];
            node.state = State::Running;
            node.attempts += 1;
            return Next::Multi(index, node.attempts);
        }
        let sharers = match self.schedule {
            Schedule::Dynamic => self.ranks,
            Schedule::Static => 1,
        };
        let fair_share = (self.ready[heap].len() / (2 * sharers)).max(1);
        let by_cost = match self.mean_elapsed_s {
            Some(mean) if mean > 0.0 => ((BATCH_TARGET.as_secs_f64() / mean) as usize).max(1),
            Some(_) => self.max_batch,
            None => 1,
        };
        let n = by_cost.min(fair_share).min(self.max_batch);
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            match self.ready[heap].peek() {
                Some(k) if self.nodes[k.index].ranks == 1 => {
                    let index = self.ready[heap].pop().expect("peeked").index;
                    let node = &mut self.nodes[index];
                    node.state = State::Running;
                    node.attempts += 1;
                    batch.push((index, node.attempts));
                }
                _ => break,
            }
        }
        self.in_flight[rank] += batch.len();
        Next::Batch(batch)
    }

    /// Counts a unit as running on `rank` (each rank of a multi-rank unit).
    pub fn start_on(&mut self, rank: usize) {
        self.in_flight[rank] += 1;
    }

    /// `rank` reported one unit after `elapsed_s` seconds.
    pub fn returned(&mut self, rank: usize, elapsed_s: f64) {
        self.in_flight[rank] = self.in_flight[rank].saturating_sub(1);
        let e = elapsed_s.max(0.0);
        self.mean_elapsed_s = Some(match self.mean_elapsed_s {
            None => e,
            Some(m) => 0.9 * m + 0.1 * e,
        });
    }

    /// Records that `index` ended. On success its dependants whose inputs are now all done
    /// become ready; on failure every unit that (transitively) runs after it fails, and those
    /// are returned as `(unit, failed input)` for recording.
    pub fn finish(&mut self, index: usize, success: bool) -> Vec<(usize, usize)> {
        let mut blocked = Vec::new();
        let node = &mut self.nodes[index];
        debug_assert!(matches!(node.state, State::Running | State::Ready));
        if matches!(node.state, State::Succeeded | State::Failed) {
            return blocked;
        }
        self.open -= 1;
        if success {
            node.state = State::Succeeded;
            for d in self.nodes[index].dependants.clone() {
                let dep = &mut self.nodes[d];
                if dep.state == State::Blocked {
                    dep.waiting_on -= 1;
                    if dep.waiting_on == 0 {
                        self.push_ready(d);
                    }
                }
            }
        } else {
            node.state = State::Failed;
            let mut stack = vec![index];
            while let Some(i) = stack.pop() {
                for d in self.nodes[i].dependants.clone() {
                    if self.nodes[d].state != State::Blocked {
                        continue;
                    }
                    if self.nodes[d].tolerant {
                        self.nodes[d].waiting_on -= 1;
                        if self.nodes[d].waiting_on == 0 {
                            self.push_ready(d);
                        }
                    } else {
                        self.nodes[d].state = State::Failed;
                        self.open -= 1;
                        blocked.push((d, i));
                        stack.push(d);
                    }
                }
            }
        }
        blocked
    }

    /// Queues `index` for another attempt.
    pub fn retry(&mut self, index: usize) {
        self.push_ready(index);
    }

    /// Puts back a unit that was handed out but not run (the attempt does not count).
    pub fn give_back(&mut self, rank: Option<usize>, index: usize) {
        if let Some(rank) = rank {
            self.in_flight[rank] = self.in_flight[rank].saturating_sub(1);
        }
        self.nodes[index].attempts = self.nodes[index].attempts.saturating_sub(1);
        self.push_ready(index);
    }

    /// Ranks unit `index` needs.
    pub fn ranks_of(&self, index: usize) -> usize {
        self.nodes[index].ranks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(after: &[usize]) -> NodeSpec {
        NodeSpec {
            after: after.to_vec(),
            ranks: 1,
            ..NodeSpec::default()
        }
    }

    fn independent(n: usize) -> Vec<NodeSpec> {
        (0..n).map(|_| spec(&[])).collect()
    }

    fn batch(next: Next) -> Vec<(usize, u32)> {
        match next {
            Next::Batch(b) => b,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn starts_with_single_units_then_batches_short_ones() {
        let (mut g, _) = Graph::new(independent(10_000), 2, Schedule::Dynamic, 1024).unwrap();
        assert_eq!(batch(g.next(0)), vec![(0, 1)]);
        g.returned(0, 1e-7);
        g.finish(0, true);
        let second = batch(g.next(1));
        assert!(
            second.len() > 100 && second.len() <= 1024,
            "{}",
            second.len()
        );
        assert_eq!(second[0], (1, 1));
        let (mut unbatched, _) = Graph::new(independent(100), 2, Schedule::Dynamic, 1).unwrap();
        unbatched.next(0);
        unbatched.returned(0, 0.0);
        assert_eq!(batch(unbatched.next(1)).len(), 1);
    }

    #[test]
    fn long_units_go_one_at_a_time_and_batches_never_exceed_a_fair_share() {
        let (mut g, _) = Graph::new(independent(6), 3, Schedule::Dynamic, 1024).unwrap();
        g.next(0);
        g.returned(0, 1.0);
        assert_eq!(batch(g.next(1)).len(), 1);
        let (mut g, _) = Graph::new(independent(8), 2, Schedule::Dynamic, 1024).unwrap();
        g.next(0);
        g.returned(0, 0.0);
        // 7 ready, 2 ranks: a fair share is 7 / 4 = 1.
        assert_eq!(batch(g.next(1)).len(), 1);
    }

    #[test]
    fn static_schedule_is_round_robin_over_ranks() {
        let (mut g, _) = Graph::new(independent(7), 3, Schedule::Static, 1024).unwrap();
        let mut got = vec![Vec::new(); 3];
        while !g.is_finished() {
            for (rank, units) in got.iter_mut().enumerate() {
                let Next::Batch(b) = g.next(rank) else {
                    continue;
                };
                for (u, _) in b {
                    units.push(u);
                    g.returned(rank, 0.0);
                    g.finish(u, true);
                }
            }
        }
        assert_eq!(got, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn hints_order_longest_first_and_ties_keep_plan_order() {
        let specs = [1.0, 5.0, 1.0, 9.0]
            .iter()
            .map(|&h| NodeSpec {
                hint: Some(h),
                ..spec(&[])
            })
            .collect();
        let (mut g, _) = Graph::new(specs, 1, Schedule::Dynamic, 1).unwrap();
        let mut order = Vec::new();
        while let Next::Batch(b) = g.next(0) {
            if b.is_empty() {
                break;
            }
            order.push(b[0].0);
        }
        assert_eq!(order, vec![3, 1, 0, 2]);
    }

    #[test]
    fn a_unit_starts_when_its_own_inputs_end_and_goes_before_fresh_units() {
        // 0,1 -> 2 (a patch's warps and coadd); 3,4 independent warps of another patch.
        let (mut g, _) = Graph::new(
            vec![spec(&[]), spec(&[]), spec(&[0, 1]), spec(&[]), spec(&[])],
            1,
            Schedule::Dynamic,
            1,
        )
        .unwrap();
        assert_eq!(batch(g.next(0)), vec![(0, 1)]);
        g.finish(0, true);
        assert_eq!(batch(g.next(0)), vec![(1, 1)]);
        g.finish(1, true);
        // The coadd (deeper) comes before the remaining warps.
        assert_eq!(batch(g.next(0)), vec![(2, 1)]);
    }

    #[test]
    fn failure_fails_everything_downstream_and_nothing_else() {
        // 0 -> 1 -> 2, 3 independent.
        let (mut g, _) = Graph::new(
            vec![spec(&[]), spec(&[0]), spec(&[1]), spec(&[])],
            1,
            Schedule::Dynamic,
            1,
        )
        .unwrap();
        let first = batch(g.next(0));
        let blocked = g.finish(first[0].0, false);
        assert_eq!(blocked, vec![(1, 0), (2, 1)]);
        assert_eq!(batch(g.next(0)), vec![(3, 1)]);
        g.finish(3, true);
        assert!(g.is_finished());
    }

    #[test]
    fn a_tolerant_unit_runs_after_failed_inputs_and_stops_the_cascade() {
        // 0, 1 -> 2 (tolerant) -> 3; 0 fails.
        let mut specs = vec![spec(&[]), spec(&[]), spec(&[0, 1]), spec(&[2])];
        specs[2].tolerant = true;
        let (mut g, _) = Graph::new(specs, 1, Schedule::Dynamic, 1).unwrap();
        assert_eq!(batch(g.next(0)), vec![(0, 1)]);
        assert!(g.finish(0, false).is_empty());
        assert_eq!(batch(g.next(0)), vec![(1, 1)]);
        g.finish(1, true);
        assert_eq!(batch(g.next(0)), vec![(2, 1)]);
        g.finish(2, true);
        assert_eq!(batch(g.next(0)), vec![(3, 1)]);
        // Failed earlier and not retried counts as ended for a tolerant unit.
        let mut specs = vec![spec(&[]), spec(&[0])];
        specs[0].prior = Some(false);
        specs[1].tolerant = true;
        let (mut g, blocked) = Graph::new(specs, 1, Schedule::Dynamic, 1).unwrap();
        assert!(blocked.is_empty());
        assert_eq!(batch(g.next(0)), vec![(1, 1)]);
    }

    #[test]
    fn prior_outcomes_settle_units_before_the_run() {
        let mut specs = vec![spec(&[]), spec(&[0]), spec(&[]), spec(&[2])];
        specs[0].prior = Some(true);
        specs[2].prior = Some(false);
        let (mut g, blocked) = Graph::new(specs, 1, Schedule::Dynamic, 1).unwrap();
        assert_eq!(blocked, vec![(3, 2)]);
        assert_eq!(g.open(), 1);
        assert_eq!(batch(g.next(0)), vec![(1, 1)]);
    }

    #[test]
    fn cycles_are_refused_and_units_can_be_added_later() {
        assert!(Graph::new(vec![spec(&[1]), spec(&[0])], 1, Schedule::Dynamic, 1).is_err());
        let (mut g, _) = Graph::new(vec![spec(&[])], 1, Schedule::Dynamic, 1).unwrap();
        assert_eq!(g.add(vec![spec(&[0]), spec(&[1])]), Ok(vec![]));
        assert_eq!(g.add(vec![spec(&[4]), spec(&[3])]), Err(3));
        assert_eq!(g.open(), 3);
        let b = batch(g.next(0));
        g.finish(b[0].0, true);
        assert_eq!(batch(g.next(0)), vec![(1, 1)]);
    }

    #[test]
    fn multi_rank_units_come_out_whole_and_retries_count_attempts() {
        let mut specs = independent(3);
        specs[1].ranks = 2;
        specs[1].hint = Some(10.0);
        let (mut g, _) = Graph::new(specs, 2, Schedule::Dynamic, 1).unwrap();
        assert_eq!(g.next(0), Next::Multi(1, 1));
        g.start_on(0);
        g.start_on(1);
        g.returned(0, 0.1);
        g.returned(1, 0.1);
        g.retry(1);
        assert_eq!(g.next(1), Next::Multi(1, 2));
        g.give_back(None, 1);
        assert_eq!(g.next(1), Next::Multi(1, 2));
        assert_eq!(g.ranks_of(1), 2);
    }
}
