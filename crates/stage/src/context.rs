//! What a running unit sees: its attempt, the run directory, its inputs' values, a slot for
//! its own value, and (for units that run on several ranks) collectives among those ranks.

use crate::{FailureKind, OutcomeKind, UnitFailure, UnitId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

/// The outcome and value of a unit that this unit runs after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The input unit.
    pub unit: UnitId,
    /// How it ended: done or no-work, or (only for units planned with
    /// `tolerating_failed_inputs`) a failure kind.
    pub outcome: OutcomeKind,
    /// The value it set with [`UnitContext::set_value`], encoded.
    pub value: Option<Vec<u8>>,
}

/// Collective operations among the ranks running one multi-rank unit, and only those.
///
/// The engine implements it on an MPI sub-communicator of ranks that were free when the unit
/// started; [`SoloCollectives`] is the one-rank version used when such a unit runs alone.
/// Every member must make the same calls in the same order.
pub trait Collectives {
    /// This rank's index among the unit's ranks (0..size).
    fn rank(&self) -> usize;
    /// Number of ranks running the unit.
    fn size(&self) -> usize;
    /// Element-wise sum over the unit's ranks, in place, on every rank.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    /// Element-wise sum over the unit's ranks, in place, on every rank.
    fn all_reduce_sum_u64(&self, values: &mut [u64]);
    /// Replaces `bytes` on every rank with `root`'s `bytes`.
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>);
    /// Every rank's `mine`, indexed by rank, on every rank.
    fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>>;
    /// Waits until every rank of the unit reaches this call.
    fn barrier(&self);
    /// Element-wise sum over the unit's ranks into `values` on `root` only (other ranks'
    /// `values` are left as they were): gathering disjoint pieces to one rank.
    fn reduce_sum_f64(&self, root: usize, values: &mut [f64]);
    /// Personalised exchange (`MPI_Alltoallv`): `send` holds, rank after rank, `counts[r]`
    /// values for rank `r`; returns what every rank sent to this one, rank after rank, with
    /// the count from each. Callers bound the volume (at most 2³¹ − 1 values in and out).
    fn all_to_all_f64(&self, send: &[f64], counts: &[usize]) -> (Vec<f64>, Vec<usize>);
    /// [`Collectives::all_to_all_f64`] for `u64` values.
    fn all_to_all_u64(&self, send: &[u64], counts: &[usize]) -> (Vec<u64>, Vec<usize>);
}

/// [`Collectives`] over a single rank: every operation is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoloCollectives;

impl Collectives for SoloCollectives {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {}
    fn all_reduce_sum_u64(&self, _values: &mut [u64]) {}
    fn broadcast_bytes(&self, _root: usize, _bytes: &mut Vec<u8>) {}
    fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
    fn barrier(&self) {}
    fn reduce_sum_f64(&self, _root: usize, _values: &mut [f64]) {}
    fn all_to_all_f64(&self, send: &[f64], counts: &[usize]) -> (Vec<f64>, Vec<usize>) {
        (send.to_vec(), counts.to_vec())
    }
    fn all_to_all_u64(&self, send: &[u64], counts: &[usize]) -> (Vec<u64>, Vec<usize>) {
        (send.to_vec(), counts.to_vec())
    }
}

/// What a unit may know about how it is being run. Science code should not need more.
pub struct UnitContext {
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    /// The run directory (ledger, reports and, by default, outputs).
    pub run_dir: PathBuf,
    /// The MPI rank running the unit (0 when run interactively); for log messages only.
    pub rank: usize,
    /// Whether outputs must be fsynced before they are renamed into place.
    pub durable: bool,
    inputs: Vec<Input>,
    unproduced: Vec<PathBuf>,
    collectives: Option<Box<dyn Collectives>>,
    value: RefCell<Option<Vec<u8>>>,
}

impl fmt::Debug for UnitContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitContext")
            .field("attempt", &self.attempt)
            .field("run_dir", &self.run_dir)
            .field("rank", &self.rank)
            .field("durable", &self.durable)
            .field("inputs", &self.inputs.len())
            .field(
                "collective_ranks",
                &self.collectives.as_ref().map(|c| c.size()),
            )
            .finish()
    }
}

impl UnitContext {
    /// A context without inputs, on one rank.
    pub fn new(attempt: u32, run_dir: impl Into<PathBuf>, rank: usize, durable: bool) -> Self {
        Self {
            attempt,
            run_dir: run_dir.into(),
            rank,
            durable,
            inputs: Vec::new(),
            unproduced: Vec::new(),
            collectives: None,
            value: RefCell::new(None),
        }
    }

    /// Adds the outcomes and values of the units this one runs after.
    pub fn with_inputs(mut self, inputs: Vec<Input>) -> Self {
        self.inputs = inputs;
        self
    }

    /// Adds the declared input files whose writing unit in this run ended no-work.
    pub fn with_unproduced_inputs(mut self, paths: Vec<PathBuf>) -> Self {
        self.unproduced = paths;
        self
    }

    /// Whether `path`, one of the unit's declared input files, was to be written by a unit of
    /// this run that ended no-work: the file is absent by design, not by error (a coadd of a
    /// patch that no CCD reached, in a chain planned before the CCDs were processed).
    pub fn unproduced(&self, path: &Path) -> bool {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        self.unproduced.contains(&abs)
    }

    /// Adds the collectives of a multi-rank unit.
    pub fn with_collectives(mut self, collectives: Box<dyn Collectives>) -> Self {
        self.collectives = Some(collectives);
        self
    }

    /// The units this one runs after, in the order the plan listed them.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The decoded values of the inputs that set one (no-work inputs have none).
    pub fn input_values<T: DeserializeOwned>(&self) -> Result<Vec<(UnitId, T)>, UnitFailure> {
        self.inputs
            .iter()
            .filter_map(|input| input.value.as_ref().map(|v| (input, v)))
            .map(|(input, bytes)| {
                postcard::from_bytes(bytes)
                    .map(|value| (input.unit.clone(), value))
                    .map_err(|e| UnitFailure {
                        kind: FailureKind::BadInput,
                        message: format!(
                            "the value of input unit {} cannot be decoded: {e}",
                            input.unit
                        ),
                    })
            })
            .collect()
    }

    /// Collectives among the ranks running this unit; [`SoloCollectives`] when it runs on one.
    pub fn collectives(&self) -> &dyn Collectives {
        match &self.collectives {
            Some(c) => c.as_ref(),
            None => &SoloCollectives,
        }
    }

    /// Sets the value this unit passes to the units that run after it (a group's gather, a
    /// follow-up phase). Keep it small (a solution, a summary): bulk data goes to files.
    /// On a multi-rank unit, the value of the unit's rank 0 is kept.
    pub fn set_value<T: Serialize>(&self, value: &T) {
        let bytes = postcard::to_stdvec(value).expect("a serde value always encodes");
        *self.value.borrow_mut() = Some(bytes);
    }

    /// Takes the encoded value set by the unit (for the engine).
    pub fn take_value(&self) -> Option<Vec<u8>> {
        self.value.borrow_mut().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_inputs() {
        let producer = UnitContext::new(1, "/tmp", 0, false);
        producer.set_value(&(3_u32, "wcs".to_string()));
        let bytes = producer.take_value().unwrap();
        assert!(producer.take_value().is_none());
        let consumer = UnitContext::new(1, "/tmp", 0, false).with_inputs(vec![
            Input {
                unit: "ccd=1".parse().unwrap(),
                outcome: OutcomeKind::Done,
                value: Some(bytes),
            },
            Input {
                unit: "ccd=2".parse().unwrap(),
                outcome: OutcomeKind::NoWork,
                value: None,
            },
        ]);
        let values: Vec<(UnitId, (u32, String))> = consumer.input_values().unwrap();
        assert_eq!(
            values,
            vec![("ccd=1".parse().unwrap(), (3, "wcs".to_string()))]
        );
        assert_eq!(consumer.inputs().len(), 2);
        type Wrong = (u32, String, u64);
        let bad = consumer.input_values::<Wrong>();
        assert!(bad.unwrap_err().message.contains("ccd=1"));
    }

    #[test]
    fn solo_collectives_are_the_identity() {
        let ctx = UnitContext::new(1, "/tmp", 0, false);
        let c = ctx.collectives();
        let mut v = [1.0, 2.0];
        c.all_reduce_sum_f64(&mut v);
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(c.all_gather_bytes(b"x"), vec![b"x".to_vec()]);
        assert_eq!((c.rank(), c.size()), (0, 1));
    }

    #[test]
    fn unproduced_inputs_are_matched_by_absolute_path() {
        let cwd = std::env::current_dir().unwrap();
        let ctx = UnitContext::new(1, "/tmp", 0, false)
            .with_unproduced_inputs(vec![cwd.join("coadd/g.fits")]);
        assert!(ctx.unproduced(Path::new("coadd/g.fits")));
        assert!(ctx.unproduced(&cwd.join("coadd/g.fits")));
        assert!(!ctx.unproduced(Path::new("coadd/r.fits")));
    }
}
