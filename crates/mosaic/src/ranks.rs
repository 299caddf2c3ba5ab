//! Sharing a tract unit among the ranks that run it (a large tract is planned on several).
//!
//! Every exchange carries a `Result`, so a rank that failed (a corrupt catalogue, a refused
//! read) still joins the exchange and every rank learns of the failure at the same point: no
//! rank goes on to a collective that another will never join. On one rank
//! ([`skypipe_stage::SoloCollectives`]) every exchange is an encoding round trip, exact for
//! every value (postcard stores `f64` bits as they are), so one code path gives bit-identical
//! results on any number of ranks.

use serde::Serialize;
use serde::de::DeserializeOwned;
use skypipe_stage::{Collectives, UnitFailure};
use std::ops::Range;

/// The items (of `n`, in order) that rank `rank` of `size` handles: contiguous blocks in rank
/// order, their lengths differing by at most one.
pub fn block(n: usize, size: usize, rank: usize) -> Range<usize> {
    n * rank / size..n * (rank + 1) / size
}

/// `make()` run on the unit's rank 0 only; its result, success or failure, on every rank.
pub fn from_rank_zero<T: Serialize + DeserializeOwned>(
    coll: &dyn Collectives,
    make: impl FnOnce() -> Result<T, UnitFailure>,
) -> Result<T, UnitFailure> {
    let mut bytes = if coll.rank() == 0 {
        encode(&make())
    } else {
        Vec::new()
    };
    coll.broadcast_bytes(0, &mut bytes);
    decode::<Result<T, UnitFailure>>(&bytes)?
}

/// Every rank's block of items, concatenated in rank order, on every rank; when a rank failed,
/// every rank returns the failure of the first rank (in rank order) that failed.
pub fn gather_blocks<T: Serialize + DeserializeOwned>(
    coll: &dyn Collectives,
    mine: Result<Vec<T>, UnitFailure>,
) -> Result<Vec<T>, UnitFailure> {
    let mine = encode(&mine);
    // One broadcast per rank rather than an all-gather: no bound on a block's size.
    let blocks: Vec<Result<Vec<T>, UnitFailure>> = (0..coll.size())
        .map(|root| {
            let mut bytes = if root == coll.rank() {
                mine.clone()
            } else {
                Vec::new()
            };
            coll.broadcast_bytes(root, &mut bytes);
            decode::<Result<Vec<T>, UnitFailure>>(&bytes)?
        })
        .collect();
    let blocks: Vec<Vec<T>> = blocks.into_iter().collect::<Result<_, _>>()?;
    Ok(blocks.into_iter().flatten().collect())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("the unit's data always encodes")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, UnitFailure> {
    postcard::from_bytes(bytes).map_err(|e| {
        UnitFailure::bad_input(format!("a rank of the unit sent undecodable data: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_stage::SoloCollectives;

    #[test]
    fn blocks_cover_every_item_once_in_order_and_are_balanced() {
        for n in [0, 1, 5, 16, 501] {
            for size in 1..=4 {
                let blocks: Vec<Range<usize>> = (0..size).map(|r| block(n, size, r)).collect();
                let all: Vec<usize> = blocks.iter().cloned().flatten().collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
                let lengths: Vec<usize> = blocks.iter().map(ExactSizeIterator::len).collect();
                let (lo, hi) = (lengths.iter().min(), lengths.iter().max());
                assert!(hi.unwrap() - lo.unwrap() <= 1, "{lengths:?}");
            }
        }
    }

    #[test]
    fn on_one_rank_values_and_failures_pass_through_bit_for_bit() {
        let coll = SoloCollectives;
        let values = vec![[0.1 + 0.2, f64::MIN_POSITIVE / 3.0], [-0.0, f64::NAN]];
        let gathered = gather_blocks(&coll, Ok(values.clone())).unwrap();
        let bits =
            |v: &[[f64; 2]]| -> Vec<u64> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&gathered), bits(&values));
        let failure = UnitFailure::bad_input("c01.fits: truncated");
        let err = gather_blocks::<u8>(&coll, Err(failure.clone())).unwrap_err();
        assert_eq!(err, failure);
        assert_eq!(from_rank_zero(&coll, || Ok(7_u32)).unwrap(), 7);
        let err = from_rank_zero::<u32>(&coll, || Err(failure.clone())).unwrap_err();
        assert_eq!(err, failure);
    }
}
