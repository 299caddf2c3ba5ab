//! Matching detected sources to reference stars, both in pixel coordinates (the references
//! projected through the approximate header WCS).
//!
//! [`find_transform`]: triangles among the brightest `bright` stars of each list are compared
//! by their shape (side ratios, orientation); each pair of similar triangles whose size ratio
//! and rotation are within the allowed scale error and rotation votes for its three vertex
//! correspondences. Mutually best-voted correspondences give a similarity transform (clipped
//! least squares), which [`match_lists`] refines into an affine transform by iterative
//! nearest-neighbour matching over the whole lists. Nothing depends on an initial offset, so
//! offsets of hundreds of pixels are found as easily as small ones.

use crate::linalg::{NormalEquations, median};
use std::collections::HashMap;

/// A star of either list: pixel position and a brightness that orders the list (flux for
/// sources, `−mag` for references).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Star {
    /// x, pixels.
    pub x: f64,
    /// y, pixels.
    pub y: f64,
    /// Larger is brighter.
    pub brightness: f64,
}

/// Settings of the matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchParams {
    /// Sources used for triangles (the brightest).
    pub bright: usize,
    /// References used for triangles (the brightest): more than `bright` when the references
    /// cover a larger area than the sources (a margin for the header WCS's error).
    pub bright_refs: usize,
    /// Largest fractional scale error between the lists.
    pub max_scale_error: f64,
    /// Largest rotation between the lists, degrees.
    pub max_rotation_deg: f64,
    /// Final nearest-neighbour match radius, pixels.
    pub radius: f64,
}

impl Default for MatchParams {
    fn default() -> Self {
        Self {
            bright: 30,
            bright_refs: 30,
            max_scale_error: 0.05,
            max_rotation_deg: 5.0,
            radius: 2.0,
        }
    }
}

/// An affine map `x' = c[0] + c[1] x + c[2] y`, `y' = c[3] + c[4] x + c[5] y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [f64; 6]);

impl Affine {
    /// Applies the map.
    pub fn apply(&self, x: f64, y: f64) -> [f64; 2] {
        let c = &self.0;
        [c[0] + c[1] * x + c[2] * y, c[3] + c[4] * x + c[5] * y]
    }

    /// Scale (square root of the determinant's magnitude) and rotation in degrees.
    pub fn scale_rotation(&self) -> (f64, f64) {
        let c = &self.0;
        let det = c[1] * c[5] - c[2] * c[4];
        (
            det.abs().sqrt(),
            (c[4] - c[2]).atan2(c[1] + c[5]).to_degrees(),
        )
    }
}

/// The outcome of [`match_lists`].
#[derive(Debug, Clone, PartialEq)]
pub struct Matches {
    /// `(source index, reference index)`, each index at most once.
    pub pairs: Vec<(usize, usize)>,
    /// The fitted map from source pixels to reference pixels.
    pub transform: Affine,
}

#[derive(Debug, Clone, Copy)]
struct Triangle {
    /// Vertices opposite the longest, middle and shortest side (indices into the list).
    v: [usize; 3],
    /// Middle/longest and shortest/longest side ratios.
    shape: [f64; 2],
    /// Longest side, pixels.
    size: f64,
    /// Direction of the longest side (from `v[1]` to `v[2]`), radians.
    angle: f64,
    /// Orientation of (v0, v1, v2): +1 counter-clockwise, −1 clockwise.
    orientation: i8,
}

const SHAPE_TOLERANCE: f64 = 0.01;
const MIN_SIDE: f64 = 10.0;

fn brightest(stars: &[Star], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..stars.len()).collect();
    idx.sort_by(|&a, &b| stars[b].brightness.total_cmp(&stars[a].brightness));
    idx.truncate(n);
    idx
}

/// Triangles of the stars `idx` whose sides are between [`MIN_SIDE`] and `max_side`.
fn triangles(stars: &[Star], idx: &[usize], max_side: f64) -> Vec<Triangle> {
    let mut out = Vec::new();
    let d = |a: usize, b: usize| (stars[a].x - stars[b].x).hypot(stars[a].y - stars[b].y);
    for i in 0..idx.len() {
        for j in i + 1..idx.len() {
            for k in j + 1..idx.len() {
                let (a, b, c) = (idx[i], idx[j], idx[k]);
                // (side length, opposite vertex)
                let mut s = [(d(b, c), a), (d(a, c), b), (d(a, b), c)];
                s.sort_by(|x, y| y.0.total_cmp(&x.0));
                if s[2].0 < MIN_SIDE || s[0].0 > max_side {
                    continue;
                }
                let v = [s[0].1, s[1].1, s[2].1];
                let cross = (stars[v[1]].x - stars[v[0]].x) * (stars[v[2]].y - stars[v[0]].y)
                    - (stars[v[1]].y - stars[v[0]].y) * (stars[v[2]].x - stars[v[0]].x);
                out.push(Triangle {
                    v,
                    shape: [s[1].0 / s[0].0, s[2].0 / s[0].0],
                    size: s[0].0,
                    angle: (stars[v[2]].y - stars[v[1]].y).atan2(stars[v[2]].x - stars[v[1]].x),
                    orientation: if cross >= 0.0 { 1 } else { -1 },
                });
            }
        }
    }
    out
}

fn cell(shape: [f64; 2]) -> (i64, i64) {
    (
        (shape[0] / SHAPE_TOLERANCE).floor() as i64,
        (shape[1] / SHAPE_TOLERANCE).floor() as i64,
    )
}

/// Least-squares similarity (`x' = a x − b y + tx`, `y' = b x + a y + ty`) or affine map from
/// pairs of points; `None` if singular.
fn fit_map(from: &[[f64; 2]], to: &[[f64; 2]], affine: bool) -> Option<Affine> {
    if affine {
        let mut ne = NormalEquations::new(3, 2);
        for (f, t) in from.iter().zip(to) {
            ne.add(&[1.0, f[0], f[1]], t, 1.0);
        }
        let s = ne.solve()?;
        Some(Affine([
            s[0][0], s[0][1], s[0][2], s[1][0], s[1][1], s[1][2],
        ]))
    } else {
        let mut ne = NormalEquations::new(4, 1);
        for (f, t) in from.iter().zip(to) {
            ne.add(&[f[0], -f[1], 1.0, 0.0], &[t[0]], 1.0);
            ne.add(&[f[1], f[0], 0.0, 1.0], &[t[1]], 1.0);
        }
        let s = &ne.solve()?[0];
        Some(Affine([s[2], s[0], -s[1], s[3], s[1], s[0]]))
    }
}

/// Fits a map to pairs, dropping pairs beyond `3 ×` the robust residual scatter (at least
/// `floor` pixels) until none is dropped. Returns the map and the kept pairs.
fn clipped_map(
    sources: &[Star],
    refs: &[Star],
    mut pairs: Vec<(usize, usize)>,
    affine: bool,
    floor: f64,
) -> Option<(Affine, Vec<(usize, usize)>)> {
    let need = if affine { 4 } else { 3 };
    for _ in 0..10 {
        if pairs.len() < need {
            return None;
        }
        let from: Vec<[f64; 2]> = pairs
            .iter()
            .map(|&(i, _)| [sources[i].x, sources[i].y])
            .collect();
        let to: Vec<[f64; 2]> = pairs.iter().map(|&(_, j)| [refs[j].x, refs[j].y]).collect();
        let m = fit_map(&from, &to, affine)?;
        let r: Vec<f64> = from
            .iter()
            .zip(&to)
            .map(|(f, t)| {
                let p = m.apply(f[0], f[1]);
                (p[0] - t[0]).hypot(p[1] - t[1])
            })
            .collect();
        let limit = (3.0 * 1.4826 * median(&r)).max(floor);
        let before = pairs.len();
        let kept: Vec<(usize, usize)> = pairs
            .iter()
            .zip(&r)
            .filter(|(_, r)| **r <= limit)
            .map(|(p, _)| *p)
            .collect();
        if kept.len() == before {
            return Some((m, pairs));
        }
        pairs = kept;
    }
    None
}

/// Finds the similarity transform from source pixels to reference pixels by triangle
/// matching; returns it with the number of vertex correspondences that support it, or `None`
/// if no consistent set of at least three was found.
pub fn find_transform(sources: &[Star], refs: &[Star], p: &MatchParams) -> Option<(Affine, usize)> {
    let si = brightest(sources, p.bright);
    let ri = brightest(refs, p.bright_refs);
    let st = triangles(sources, &si, f64::INFINITY);
    let largest = st.iter().map(|t| t.size).fold(0.0, f64::max);
    let rt = triangles(refs, &ri, largest * (1.0 + p.max_scale_error));
    let mut grid: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (k, t) in rt.iter().enumerate() {
        grid.entry(cell(t.shape)).or_default().push(k);
    }
    let max_rot = p.max_rotation_deg.to_radians();
    let mut votes: HashMap<(usize, usize), u32> = HashMap::new();
    for s in &st {
        let (c0, c1) = cell(s.shape);
        for dx in -1..=1 {
            for dy in -1..=1 {
                let Some(list) = grid.get(&(c0 + dx, c1 + dy)) else {
                    continue;
                };
                for &k in list {
                    let r = &rt[k];
                    if r.orientation != s.orientation
                        || (r.shape[0] - s.shape[0]).abs() > SHAPE_TOLERANCE
                        || (r.shape[1] - s.shape[1]).abs() > SHAPE_TOLERANCE
                    {
                        continue;
                    }
                    let scale = r.size / s.size;
                    if (scale - 1.0).abs() > p.max_scale_error {
                        continue;
                    }
                    let rot = (r.angle - s.angle + std::f64::consts::PI)
                        .rem_euclid(2.0 * std::f64::consts::PI)
                        - std::f64::consts::PI;
                    if rot.abs() > max_rot {
                        continue;
                    }
                    for m in 0..3 {
                        *votes.entry((s.v[m], r.v[m])).or_default() += 1;
                    }
                }
            }
        }
    }
    // Mutually best correspondences with at least a third of the best one's votes (a true
    // correspondence collects votes from many triangles, a chance one from a few).
    let mut best_s: HashMap<usize, (usize, u32)> = HashMap::new();
    let mut best_r: HashMap<usize, (usize, u32)> = HashMap::new();
    for (&(i, j), &v) in &votes {
        let e = best_s.entry(i).or_insert((j, 0));
        if v > e.1 || (v == e.1 && j < e.0) {
            *e = (j, v);
        }
        let e = best_r.entry(j).or_insert((i, 0));
        if v > e.1 || (v == e.1 && i < e.0) {
            *e = (i, v);
        }
    }
    let threshold = (votes.values().copied().max().unwrap_or(0) / 3).max(2);
    let mut pairs: Vec<(usize, usize)> = best_s
        .iter()
        .filter(|(i, (j, v))| *v >= threshold && best_r.get(j).map(|b| b.0) == Some(**i))
        .map(|(i, (j, _))| (*i, *j))
        .collect();
    pairs.sort_unstable();
    let (m, kept) = clipped_map(sources, refs, pairs, false, 1.0)?;
    let (scale, rot) = m.scale_rotation();
    if (scale - 1.0).abs() > p.max_scale_error || rot.abs() > p.max_rotation_deg {
        return None;
    }
    Some((m, kept.len()))
}

/// One-to-one nearest-neighbour pairs between `sources` mapped by `m` and `refs`, within
/// `radius` pixels (each reference keeps its closest source).
pub fn nearest_pairs(
    sources: &[Star],
    refs: &[Star],
    m: &Affine,
    radius: f64,
) -> Vec<(usize, usize)> {
    // Bucket the references on a grid of `radius` cells.
    let cellsize = radius.max(1e-6);
    let key = |x: f64, y: f64| ((x / cellsize).floor() as i64, (y / cellsize).floor() as i64);
    let mut grid: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (j, r) in refs.iter().enumerate() {
        grid.entry(key(r.x, r.y)).or_default().push(j);
    }
    let mut best: HashMap<usize, (usize, f64)> = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        let p = m.apply(s.x, s.y);
        let (cx, cy) = key(p[0], p[1]);
        let mut nearest: Option<(usize, f64)> = None;
        for dx in -1..=1 {
            for dy in -1..=1 {
                for &j in grid.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                    let d = (refs[j].x - p[0]).hypot(refs[j].y - p[1]);
                    if d <= radius && nearest.is_none_or(|n| d < n.1) {
                        nearest = Some((j, d));
                    }
                }
            }
        }
        if let Some((j, d)) = nearest {
            let e = best.entry(j).or_insert((i, d));
            if d < e.1 {
                *e = (i, d);
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = best.into_iter().map(|(j, (i, _))| (i, j)).collect();
    pairs.sort_unstable();
    pairs
}

/// Matches the lists: [`find_transform`], then nearest-neighbour matching within a radius
/// shrinking from 5 × `radius` to `radius`, refitting an affine map each time. `None` if no
/// transform is found or fewer than four pairs remain.
pub fn match_lists(sources: &[Star], refs: &[Star], p: &MatchParams) -> Option<Matches> {
    let (mut m, _) = find_transform(sources, refs, p)?;
    let mut pairs = Vec::new();
    for factor in [5.0, 3.0, 2.0, 1.0] {
        let radius = p.radius * factor;
        pairs = nearest_pairs(sources, refs, &m, radius);
        let (fitted, _) = clipped_map(sources, refs, pairs.clone(), true, radius)?;
        m = fitted;
    }
    (pairs.len() >= 4).then_some(Matches {
        pairs,
        transform: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A field of `n` stars; the references are the truth mapped by a similarity, with extra
    /// references off the source list and extra sources (galaxies) absent from the references.
    fn field(
        seed: u64,
        offset: [f64; 2],
        rot_deg: f64,
        scale: f64,
    ) -> (Vec<Star>, Vec<Star>, Vec<Option<usize>>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (c, s) = (
            rot_deg.to_radians().cos() * scale,
            rot_deg.to_radians().sin() * scale,
        );
        let mut sources = Vec::new();
        let mut refs = Vec::new();
        let mut truth = Vec::new();
        for _ in 0..60 {
            let (x, y) = (rng.random_range(0.0..256.0), rng.random_range(0.0..512.0));
            let b: f64 = rng.random_range(0.0..10.0);
            let kind: f64 = rng.random_range(0.0..1.0);
            if kind < 0.75 {
                // A star in both lists.
                truth.push(Some(refs.len()));
                refs.push(Star {
                    x: c * x - s * y + offset[0] + rng.random_range(-0.1..0.1),
                    y: s * x + c * y + offset[1] + rng.random_range(-0.1..0.1),
                    brightness: b + rng.random_range(-0.5..0.5),
                });
                sources.push(Star {
                    x,
                    y,
                    brightness: b,
                });
            } else if kind < 0.9 {
                truth.push(None);
                sources.push(Star {
                    x,
                    y,
                    brightness: b,
                });
            } else {
                refs.push(Star {
                    x: x + 300.0,
                    y,
                    brightness: b,
                });
            }
        }
        (sources, refs, truth)
    }

    #[test]
    fn finds_large_offsets_rotations_and_scale_errors() {
        for (seed, off, rot, scale) in [
            (1, [100.0, -70.0], 0.5, 1.01),
            (2, [-140.0, 30.0], -2.0, 0.98),
            (3, [3.0, 2.0], 0.0, 1.0),
        ] {
            let (src, refs, truth) = field(seed, off, rot, scale);
            let m = match_lists(&src, &refs, &MatchParams::default()).unwrap();
            let (s, r) = m.transform.scale_rotation();
            assert!(
                (s - scale).abs() < 1e-3 && (r - rot).abs() < 0.02,
                "{s} {r}"
            );
            let good = m
                .pairs
                .iter()
                .filter(|(i, j)| truth[*i] == Some(*j))
                .count();
            let expected = truth.iter().flatten().count();
            assert_eq!(good, m.pairs.len(), "wrong pairs for seed {seed}");
            assert!(good + 2 >= expected, "{good} of {expected}");
        }
    }

    #[test]
    fn rotations_beyond_the_limit_are_not_matched() {
        let (src, refs, _) = field(4, [10.0, 10.0], 20.0, 1.0);
        assert!(match_lists(&src, &refs, &MatchParams::default()).is_none());
    }

    #[test]
    fn unrelated_lists_are_not_matched() {
        let (src, _, _) = field(5, [0.0, 0.0], 0.0, 1.0);
        let (_, refs, _) = field(6, [0.0, 0.0], 0.0, 1.0);
        assert!(match_lists(&src, &refs, &MatchParams::default()).is_none());
    }
}
