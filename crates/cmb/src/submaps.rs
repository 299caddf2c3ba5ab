//! Owned sub-maps: the map unit's reductions, reduce-scatter style (as MADAM and TOAST do).
//!
//! Every sub-map that some rank hits (the *union*) has one owner rank: the union, ascending,
//! is cut into as many contiguous runs of (nearly) equal length as there are ranks
//! ([`owner_of`]), so each rank owns `⌈union / ranks⌉` sub-maps at most. A reduction sends
//! each rank's blocks to their owners only ([`Collectives::all_to_all_f64`]), the owner sums
//! them (senders in rank order), and sends the sums back to exactly the ranks that sent them.
//! The exchange runs in rounds, each owner receiving at most [`EXCHANGE_VALUES`] values per
//! round (one sub-map from every rank hitting it at least); a rank's send and receive buffers
//! are at most its own blocks. For the maps that are written (the binned matrix and the final
//! destriped right-hand side: [`Reduce::reduce_map`]) the owner keeps its sums
//! ([`OwnedReduce::take_owned`]); the destriper's iterations ([`Reduce::reduce_map_where_held`])
//! keep nothing.
//!
//! Memory per rank: the sub-maps it hits (its accumulators) plus the sub-maps it owns (the sums
//! it keeps), plus one round's buffers; no rank ever allocates the union.

use skypipe_core::binning::{SparseMap, touched_mask};
use skypipe_core::destripe::Reduce;
use skypipe_stage::Collectives;

/// Values an owner receives per exchange round (32 MiB of `f64`), unless a single sub-map
/// from all the ranks hitting it is more.
pub const EXCHANGE_VALUES: usize = 1 << 22;

/// The owner of entry `index` of a union of `union_len` sub-maps over `ranks` ranks: contiguous
/// runs, the first `union_len % ranks` ranks owning one more.
pub fn owner_of(index: usize, union_len: usize, ranks: usize) -> usize {
    let (base, extra) = (union_len / ranks, union_len % ranks);
    let long = extra * (base + 1);
    if index < long {
        index / (base + 1)
    } else {
        extra + (index - long) / base.max(1)
    }
}

/// The round of each union entry: each owner's run is split, in order, into groups whose
/// blocks from all hitting ranks (`hitters[i] · block_len` values) stay within `limit`.
/// Returns the rounds and their number (the largest over owners).
pub fn exchange_rounds(
    hitters: &[u64],
    ranks: usize,
    block_len: usize,
    limit: usize,
) -> (Vec<u32>, usize) {
    let mut rounds = vec![0u32; hitters.len()];
    let mut count = 0;
    let (mut owner, mut round, mut filled) = (usize::MAX, 0u32, 0usize);
    for (i, &h) in hitters.iter().enumerate() {
        let values = h as usize * block_len;
        let o = owner_of(i, hitters.len(), ranks);
        if o != owner {
            (owner, round, filled) = (o, 0, 0);
        } else if filled + values > limit {
            (round, filled) = (round + 1, 0);
        }
        filled += values;
        rounds[i] = round;
        count = count.max(round as usize + 1);
    }
    (rounds, count)
}

/// Who sends which sub-maps to whom, for one set of allocated sub-maps.
struct Routes {
    /// This rank's allocated sub-maps, ascending (what the routes were built for).
    mine: Vec<usize>,
    /// The union, ascending, and the number of ranks hitting each of its sub-maps.
    union: Vec<usize>,
    hitters: Vec<u64>,
    /// Per owner rank: the positions in `union` of this rank's sub-maps it owns, ascending.
    sent: Vec<Vec<usize>>,
    /// Per sending rank: the positions in `union` of the sub-maps it sends here, ascending.
    received: Vec<Vec<usize>>,
    /// The positions in `union` this rank owns.
    owned: std::ops::Range<usize>,
}

/// [`Reduce`] over the ranks of a multi-rank unit with owned sub-maps (see the module docs).
pub struct OwnedReduce<'a> {
    coll: &'a dyn Collectives,
    routes: Option<Routes>,
    /// The owner's sums of the maps reduced with [`Reduce::reduce_map`], in call order.
    kept: Vec<SparseMap>,
    /// The most sub-maps allocated at once on this rank: the largest map reduced plus the
    /// owned sums kept.
    peak_submaps: usize,
    /// Values sent to other ranks (not counting those a rank sends itself), both directions.
    sent_values: u64,
}

impl<'a> OwnedReduce<'a> {
    /// A reduction over `coll`'s ranks; routes are built at the first map.
    pub fn new(coll: &'a dyn Collectives) -> Self {
        Self {
            coll,
            routes: None,
            kept: Vec::new(),
            peak_submaps: 0,
            sent_values: 0,
        }
    }

    /// The sums this rank owns of every map reduced with [`Reduce::reduce_map`], in call order
    /// (the destriper: the binned matrix, then the destriped right-hand side).
    pub fn take_owned(&mut self) -> Vec<SparseMap> {
        std::mem::take(&mut self.kept)
    }

    /// Sub-maps this rank owns (0 before the first map).
    pub fn owned_submaps(&self) -> usize {
        self.routes.as_ref().map_or(0, |r| r.owned.len())
    }

    /// Sub-maps some rank hits (0 before the first map).
    pub fn union_submaps(&self) -> usize {
        self.routes.as_ref().map_or(0, |r| r.union.len())
    }

    /// Sub-maps that at least two ranks hit: the only ones whose blocks travel between ranks
    /// when their owner hits them too.
    pub fn shared_submaps(&self) -> usize {
        self.routes
            .as_ref()
            .map_or(0, |r| r.hitters.iter().filter(|&&h| h > 1).count())
    }

    /// The most sub-maps this rank held at once: its largest reduced map plus the owned sums
    /// kept at that moment.
    pub fn peak_submaps(&self) -> usize {
        self.peak_submaps
    }

    /// Values this rank sent to other ranks in all its exchanges.
    pub fn sent_values(&self) -> u64 {
        self.sent_values
    }

    /// Builds (or keeps) the routes for `map`'s allocated sub-maps; every rank decides alike.
    fn routes_for(&mut self, map: &SparseMap) {
        let mine = map.touched_submaps();
        let mut changed = [u64::from(
            self.routes.as_ref().is_none_or(|r| r.mine != mine),
        )];
        self.coll.all_reduce_sum_u64(&mut changed);
        if changed[0] == 0 {
            return;
        }
        let ranks = self.coll.size();
        let mut count: Vec<u64> = touched_mask(map).into_iter().map(u64::from).collect();
        self.coll.all_reduce_sum_u64(&mut count);
        let union: Vec<usize> = (0..count.len()).filter(|&sm| count[sm] > 0).collect();
        let hitters: Vec<u64> = union.iter().map(|&sm| count[sm]).collect();
        drop(count);
        let mut sent = vec![Vec::new(); ranks];
        for &sm in &mine {
            let i = union
                .binary_search(&sm)
                .expect("a hit sub-map is in the union");
            sent[owner_of(i, union.len(), ranks)].push(i);
        }
        let counts: Vec<usize> = sent.iter().map(Vec::len).collect();
        let flat: Vec<u64> = sent.iter().flatten().map(|&i| i as u64).collect();
        let (got, got_counts) = self.coll.all_to_all_u64(&flat, &counts);
        let mut received = Vec::with_capacity(ranks);
        let mut at = 0;
        for n in got_counts {
            received.push(got[at..at + n].iter().map(|&i| i as usize).collect());
            at += n;
        }
        let me = self.coll.rank();
        let first = (0..union.len())
            .find(|&i| owner_of(i, union.len(), ranks) >= me)
            .unwrap_or(union.len());
        let end = (first..union.len())
            .find(|&i| owner_of(i, union.len(), ranks) > me)
            .unwrap_or(union.len());
        self.routes = Some(Routes {
            mine,
            union,
            hitters,
            sent,
            received,
            owned: first..end,
        });
    }

    /// Sums `map` over the ranks into each rank's allocated sub-maps, through the owners;
    /// with `keep`, the owner's sums are kept.
    fn exchange(&mut self, map: &mut SparseMap, keep: bool) {
        self.routes_for(map);
        let routes = self.routes.as_ref().expect("built above");
        let (ranks, me) = (self.coll.size(), self.coll.rank());
        let n = map.block_len();
        let (round_of, rounds) = exchange_rounds(&routes.hitters, ranks, n, EXCHANGE_VALUES);
        let mut owned = keep.then(|| {
            let mut m = SparseMap::new(map.layout(), map.stride());
            for &sm in &routes.union[routes.owned.clone()] {
                m.allocate(sm).expect("sub-map of the map's own layout");
            }
            m
        });
        let held = map.n_touched() + owned.as_ref().map_or(0, SparseMap::n_touched);
        let kept: usize = self.kept.iter().map(SparseMap::n_touched).sum();
        self.peak_submaps = self.peak_submaps.max(held + kept);
        for round in 0..rounds as u32 {
            let in_round = |i: &&usize| round_of[**i] == round;
            // 1. Blocks to their owners.
            let mut send = Vec::new();
            let mut counts = vec![0; ranks];
            for (owner, list) in routes.sent.iter().enumerate() {
                for &i in list.iter().filter(in_round) {
                    send.extend_from_slice(map.block(routes.union[i]).expect("allocated"));
                    counts[owner] += n;
                }
            }
            self.sent_values += (send.len() - counts[me]) as u64;
            let (got, got_counts) = self.coll.all_to_all_f64(&send, &counts);
            drop(send);
            // 2. The owner sums them, senders in rank order.
            let mine: Vec<usize> = routes
                .owned
                .clone()
                .filter(|i| round_of[*i] == round)
                .collect();
            let mut sums = vec![0.0; mine.len() * n];
            let mut at = 0;
            for list in &routes.received {
                for &i in list.iter().filter(in_round) {
                    let k = mine.binary_search(&i).expect("sent to its owner");
                    for (s, v) in sums[k * n..(k + 1) * n].iter_mut().zip(&got[at..at + n]) {
                        *s += v;
                    }
                    at += n;
                }
            }
            debug_assert_eq!(at, got.len());
            drop(got);
            if let Some(owned) = owned.as_mut() {
                for (k, &i) in mine.iter().enumerate() {
                    owned
                        .import_block(routes.union[i], &sums[k * n..(k + 1) * n], false)
                        .expect("owned sub-map allocated above");
                }
            }
            // 3. The sums back to the ranks that sent the blocks.
            let mut back = Vec::with_capacity(got_counts.iter().sum());
            let mut back_counts = vec![0; ranks];
            for (rank, list) in routes.received.iter().enumerate() {
                for &i in list.iter().filter(in_round) {
                    let k = mine.binary_search(&i).expect("owned here");
                    back.extend_from_slice(&sums[k * n..(k + 1) * n]);
                    back_counts[rank] += n;
                }
            }
            drop(sums);
            self.sent_values += (back.len() - back_counts[me]) as u64;
            let (returned, _) = self.coll.all_to_all_f64(&back, &back_counts);
            drop(back);
            let mut at = 0;
            for list in &routes.sent {
                for &i in list.iter().filter(in_round) {
                    map.import_block(routes.union[i], &returned[at..at + n], false)
                        .expect("a sub-map this rank sent");
                    at += n;
                }
            }
        }
        if let Some(owned) = owned {
            self.kept.push(owned);
        }
    }
}

impl Reduce for OwnedReduce<'_> {
    fn reduce_map(&mut self, map: &mut SparseMap) {
        self.exchange(map, true);
    }

    fn reduce_map_where_held(&mut self, map: &mut SparseMap) {
        self.exchange(map, false);
    }

    fn sum(&mut self, values: &mut [f64]) {
        self.coll.all_reduce_sum_f64(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_core::binning::SubmapLayout;
    use skypipe_stage::SoloCollectives;

    #[test]
    fn owners_are_contiguous_runs_of_nearly_equal_length() {
        let owners: Vec<usize> = (0..10).map(|i| owner_of(i, 10, 4)).collect();
        assert_eq!(owners, vec![0, 0, 0, 1, 1, 1, 2, 2, 3, 3]);
        let few: Vec<usize> = (0..2).map(|i| owner_of(i, 2, 4)).collect();
        assert_eq!(few, vec![0, 1], "ranks 2 and 3 own nothing");
        assert!((0..7).all(|i| owner_of(i, 7, 1) == 0));
    }

    #[test]
    fn rounds_keep_each_owner_under_the_limit() {
        // 6 sub-maps over 2 owners (3 each), blocks of 10 values, limit 40.
        let (rounds, n) = exchange_rounds(&[2, 2, 1, 4, 1, 1], 2, 10, 40);
        // Owner 0: 20 + 20 = 40 fit, then 10 → round 1. Owner 1: 40, then 10 + 10.
        assert_eq!(rounds, vec![0, 0, 1, 0, 1, 1]);
        assert_eq!(n, 2);
        // A single sub-map over the limit still gets its own round.
        assert_eq!(exchange_rounds(&[9, 9], 1, 10, 40), (vec![0, 1], 2));
    }

    #[test]
    fn one_rank_owns_everything_and_keeps_the_written_sums() {
        let layout = SubmapLayout::new(48, 4).unwrap();
        let mut map = SparseMap::new(layout, 2);
        for sm in [7, 2] {
            map.allocate(sm).unwrap();
            map.block_mut(sm).unwrap().fill(sm as f64);
        }
        let before = map.clone();
        let solo = SoloCollectives;
        let mut reduce = OwnedReduce::new(&solo);
        reduce.reduce_map_where_held(&mut map);
        assert_eq!(map, before);
        reduce.reduce_map(&mut map);
        assert_eq!(map, before);
        assert_eq!((reduce.owned_submaps(), reduce.union_submaps()), (2, 2));
        assert_eq!(reduce.peak_submaps(), 4, "the map and its owned sums");
        assert_eq!(reduce.sent_values(), 0);
        let kept = reduce.take_owned();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].touched_submaps(), vec![2, 7]);
        assert_eq!(kept[0].block(7), before.block(7));
    }
}
