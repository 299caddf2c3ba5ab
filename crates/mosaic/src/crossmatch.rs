//! Matching in the tract's tangent plane (arcsec), as pure kernels: a CCD's offset from the
//! reference catalogue by voting, detections of one star on several CCDs grouped
//! (friends of friends within a radius), and groups matched one-to-one to reference stars.

use std::collections::HashMap;

/// A grid of points bucketed in square cells of side `cell`.
struct Grid {
    cell: f64,
    cells: HashMap<(i64, i64), Vec<usize>>,
}

impl Grid {
    fn new(points: &[[f64; 2]], cell: f64) -> Self {
        let cell = cell.max(1e-9);
        let mut cells: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
        for (i, p) in points.iter().enumerate() {
            cells.entry(Self::key(cell, *p)).or_default().push(i);
        }
        Self { cell, cells }
    }

    fn key(cell: f64, p: [f64; 2]) -> (i64, i64) {
        ((p[0] / cell).floor() as i64, (p[1] / cell).floor() as i64)
    }

    /// Indices of the points within `radius` (≤ `reach` cells) of `p`, unordered.
    fn near(&self, points: &[[f64; 2]], p: [f64; 2], radius: f64) -> Vec<usize> {
        let (cx, cy) = Self::key(self.cell, p);
        let reach = (radius / self.cell).ceil() as i64;
        let mut out = Vec::new();
        for dx in -reach..=reach {
            for dy in -reach..=reach {
                for &j in self.cells.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                    let q = points[j];
                    if (q[0] - p[0]).hypot(q[1] - p[1]) <= radius {
                        out.push(j);
                    }
                }
            }
        }
        out
    }
}

/// The offset `reference − source` shared by most source–reference pairs closer than
/// `max_offset`: every such pair votes in a 2-D histogram of `bin`-wide cells, the cell with the
/// most votes in its 3 × 3 neighbourhood wins, and the mean offset of the pairs near it (within
/// `2 bin` of its centre, then twice within `bin` of the last mean) is returned with their
/// number. `None` with fewer than `min_pairs` pairs.
pub fn offset_by_voting(
    sources: &[[f64; 2]],
    references: &[[f64; 2]],
    max_offset: f64,
    bin: f64,
    min_pairs: usize,
) -> Option<([f64; 2], usize)> {
    let grid = Grid::new(references, max_offset);
    let mut offsets = Vec::new();
    for s in sources {
        for j in grid.near(references, *s, max_offset) {
            offsets.push([references[j][0] - s[0], references[j][1] - s[1]]);
        }
    }
    let mut votes: HashMap<(i64, i64), usize> = HashMap::new();
    for d in &offsets {
        *votes.entry(Grid::key(bin, *d)).or_default() += 1;
    }
    let score = |k: (i64, i64)| -> usize {
        let mut n = 0;
        for dx in -1..=1 {
            for dy in -1..=1 {
                n += votes.get(&(k.0 + dx, k.1 + dy)).copied().unwrap_or(0);
            }
        }
        n
    };
    let best = votes
        .keys()
        .copied()
        .max_by_key(|k| (score(*k), std::cmp::Reverse(*k)))?;
    let centre = [(best.0 as f64 + 0.5) * bin, (best.1 as f64 + 0.5) * bin];
    // Mean of the pairs in the winning neighbourhood (within two cells of its centre), then
    // twice the mean of those within one cell of the previous mean.
    let mut estimate = centre;
    let mut n = 0;
    for radius in [2.0 * bin, bin, bin] {
        let near: Vec<&[f64; 2]> = offsets
            .iter()
            .filter(|d| (d[0] - estimate[0]).hypot(d[1] - estimate[1]) <= radius)
            .collect();
        n = near.len();
        if n == 0 {
            return None;
        }
        estimate = [
            near.iter().map(|d| d[0]).sum::<f64>() / n as f64,
            near.iter().map(|d| d[1]).sum::<f64>() / n as f64,
        ];
    }
    (n >= min_pairs).then_some((estimate, n))
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Groups detections (positions and the CCD of each) into stars: detections on different CCDs
/// closer than `radius` are linked, transitively. A group holding two detections of one CCD is
/// ambiguous (a blend or a chain through neighbours) and split back into single detections.
/// Groups are returned in order of their smallest index, each sorted.
pub fn group_detections(points: &[[f64; 2]], ccd: &[usize], radius: f64) -> Vec<Vec<usize>> {
    let grid = Grid::new(points, radius);
    let mut parent: Vec<usize> = (0..points.len()).collect();
    for (i, p) in points.iter().enumerate() {
        for j in grid.near(points, *p, radius) {
            if j > i && ccd[j] != ccd[i] {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..points.len() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(i);
    }
    let mut out = Vec::with_capacity(groups.len());
    for (_, g) in groups {
        let mut ccds: Vec<usize> = g.iter().map(|&i| ccd[i]).collect();
        ccds.sort_unstable();
        ccds.dedup();
        if ccds.len() == g.len() {
            out.push(g);
        } else {
            out.extend(g.into_iter().map(|i| vec![i]));
        }
    }
    out.sort_by_key(|g| g[0]);
    out
}

/// One-to-one nearest matches of `points` to `references` within `radius`: each point takes
/// its nearest reference, and a reference claimed by several points keeps the closest.
pub fn match_to_reference(
    points: &[[f64; 2]],
    references: &[[f64; 2]],
    radius: f64,
) -> Vec<Option<usize>> {
    let grid = Grid::new(references, radius);
    let mut best: HashMap<usize, (usize, f64)> = HashMap::new();
    for (i, p) in points.iter().enumerate() {
        let nearest = grid
            .near(references, *p, radius)
            .into_iter()
            .map(|j| (j, (references[j][0] - p[0]).hypot(references[j][1] - p[1])))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        if let Some((j, d)) = nearest {
            let e = best.entry(j).or_insert((i, d));
            if d < e.1 || (d == e.1 && i < e.0) {
                *e = (i, d);
            }
        }
    }
    let mut out = vec![None; points.len()];
    for (j, (i, _)) in best {
        out[i] = Some(j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn voting_finds_a_shift_among_confusing_neighbours() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let refs: Vec<[f64; 2]> = (0..60)
            .map(|_| [rng.random_range(0.0..100.0), rng.random_range(0.0..200.0)])
            .collect();
        let shift = [3.7, -2.2];
        // 40 of the references detected (shifted back, with noise), plus 30 unrelated sources.
        let mut sources: Vec<[f64; 2]> = refs[..40]
            .iter()
            .map(|r| {
                [
                    r[0] - shift[0] + rng.random_range(-0.05..0.05),
                    r[1] - shift[1] + rng.random_range(-0.05..0.05),
                ]
            })
            .collect();
        sources
            .extend((0..30).map(|_| [rng.random_range(0.0..100.0), rng.random_range(0.0..200.0)]));
        let (d, n) = offset_by_voting(&sources, &refs, 10.0, 0.5, 5).unwrap();
        assert!(
            (d[0] - shift[0]).abs() < 0.03 && (d[1] - shift[1]).abs() < 0.03,
            "{d:?}"
        );
        assert!((38..=45).contains(&n), "{n}");
        // Too few pairs: none.
        assert_eq!(offset_by_voting(&sources[..2], &refs, 10.0, 0.5, 5), None);
    }

    #[test]
    fn groups_link_ccds_and_split_ambiguous_ones() {
        let points = [
            [0.0, 0.0],
            [0.3, 0.0],
            [0.5, 0.2],
            [10.0, 10.0],
            [10.2, 10.0],
            [20.0, 0.0],
        ];
        // 0, 1, 2 on three CCDs → one star; 3 and 4 on the same CCD → split; 5 alone.
        let ccd = [0, 1, 2, 0, 0, 1];
        let g = group_detections(&points, &ccd, 0.6);
        assert_eq!(g, vec![vec![0, 1, 2], vec![3], vec![4], vec![5]]);
    }

    #[test]
    fn reference_matches_are_one_to_one_and_nearest() {
        let refs = [[0.0, 0.0], [5.0, 0.0]];
        let points = [[0.4, 0.0], [0.1, 0.0], [5.2, 0.1], [9.0, 9.0]];
        let m = match_to_reference(&points, &refs, 1.0);
        assert_eq!(m, vec![None, Some(0), Some(1), None]);
    }
}
