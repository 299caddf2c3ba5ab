//! The joint astrometric solution of a tract, as a pure kernel: per-CCD polynomial corrections
//! of the pixel coordinates and the positions of the stars, fitted together by weighted least
//! squares with iterative outlier rejection.
//!
//! ## Model
//!
//! A detection `o` of star `s` on CCD `c` at pixel `p` has, through the CCD's current WCS, the
//! tangent-plane position `t_o` (arcsec, in the tract's gnomonic plane) and the Jacobian
//! `J_o = ∂t/∂p` (arcsec per pixel). The corrected WCS evaluates the current one at
//! `p + δ_c(p)`, where `δ_c` is a polynomial of order `order` (1: affine) in the CCD's
//! normalised pixel coordinates `((x − x₀)/h, (y − y₀)/h)`, one coefficient vector per axis.
//! Linearised (corrections are small: the caller has removed large offsets first; the
//! second-order term is `|δ|² ∂J/∂p`, below 10⁻⁵ pixel for `|δ|` of a few pixels on a TAN-SIP
//! WCS), the corrected position is `t_o + J_o Φ(p) a_c` with `Φ` the monomials and `a_c` the
//! CCD's coefficients. It must equal the star's position `X_s`, an unknown; a star matched to
//! the reference catalogue has a second measurement, `X_s = r_s` with the reference's error.
//!
//! χ² = Σ_o |t_o + J_o Φ a_c − X_s|² / σ_o² + Σ_s |X_s − r_s|² / σ_r² (+ a weak prior
//! `|a|² / (100 px)²` that only pins directions the data leave free, e.g. the common shift of
//! an island of CCDs without a reference star; it is ~10⁻⁸ of the data's weight).
//!
//! ## Solution: Schur complement on the stars
//!
//! The normal matrix has a block-diagonal star part (each star couples only to itself: a
//! multiple of the 2 × 2 identity) and a CCD part coupled to the stars each CCD saw, which is
//! where the sparsity is. Every star is eliminated in closed form (Schur complement): the
//! reduced system for the CCD coefficients, `S = H_cc − H_cs H_ss⁻¹ H_sc`, has one
//! `P × P` block per pair of CCDs that share a star (`P = 2 × terms`), and is solved by a dense
//! Cholesky factorisation — a few hundred CCDs per tract give a few thousand unknowns. Star
//! positions follow by back-substitution. Stars are independent, so the reduction is
//! accumulated in parallel over stars (rayon: a partial `S` per fixed block of stars, summed in
//! block order, so the bits do not depend on the number of threads). This is exact
//! (not alternating), so a noise-free problem is recovered in one solve.
//!
//! ## Outliers and degenerate CCDs
//!
//! After each solve, normalised residuals `|r|/σ` of every detection and reference position are
//! compared with `clip` × their robust per-axis scatter (from the median of `|r|²/σ²` over all
//! of them, rejected ones included, as for a 2-D Gaussian); those beyond are rejected and the problem solved again, until nothing changes
//! or `iterations` solves were made. A star needs two measurements (two detections, or one and
//! its reference position) to constrain anything; a CCD with fewer than `min_stars_per_ccd`
//! such detections is left out and reported ([`CcdOutcome::Unsolved`]) — never a NaN.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use skypipe_astrometry::linalg::median;
use skypipe_astrometry::tansip::terms;
use skypipe_core::dense::{self, Pivots};

/// How pixel coordinates of a CCD are normalised for its correction polynomial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CcdFrame {
    /// Centre pixel `(x₀, y₀)` (1-based like the detections).
    pub centre: [f64; 2],
    /// Half the CCD's larger side, pixels (`h`).
    pub half_size: f64,
}

impl CcdFrame {
    /// The frame of a `width` × `height` CCD (1-based pixel centres 1..=width).
    pub fn of_size(width: f64, height: f64) -> Self {
        Self {
            centre: [(width + 1.0) / 2.0, (height + 1.0) / 2.0],
            half_size: width.max(height).max(2.0) / 2.0,
        }
    }

    fn normalise(&self, p: [f64; 2]) -> [f64; 2] {
        [
            (p[0] - self.centre[0]) / self.half_size,
            (p[1] - self.centre[1]) / self.half_size,
        ]
    }
}

/// One detection of a star on a CCD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Index of the CCD in [`JointProblem::ccds`].
    pub ccd: usize,
    /// Index of the star (`< JointProblem::n_stars`).
    pub star: usize,
    /// Measured pixel, 1-based.
    pub pixel: [f64; 2],
    /// Tangent-plane position through the CCD's current WCS, arcsec.
    pub position: [f64; 2],
    /// `∂position/∂pixel` at `pixel`, arcsec per pixel (`[[∂ξ/∂x, ∂ξ/∂y], [∂η/∂x, ∂η/∂y]]`).
    pub jacobian: [[f64; 2]; 2],
    /// 1σ error per coordinate, arcsec.
    pub sigma: f64,
}

/// A star's reference-catalogue position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferencePosition {
    /// Index of the star.
    pub star: usize,
    /// Tangent-plane position, arcsec.
    pub position: [f64; 2],
    /// 1σ error per coordinate, arcsec.
    pub sigma: f64,
}

/// A tract's joint problem.
#[derive(Debug, Clone, PartialEq)]
pub struct JointProblem {
    /// The CCDs.
    pub ccds: Vec<CcdFrame>,
    /// Number of stars.
    pub n_stars: usize,
    /// Every detection.
    pub observations: Vec<Observation>,
    /// Reference positions (at most one per star).
    pub references: Vec<ReferencePosition>,
}

/// Settings of [`solve_joint`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveParams {
    /// Polynomial order of the corrections (1: affine).
    pub order: usize,
    /// Rejection threshold in units of the robust scatter.
    pub clip: f64,
    /// At most this many solves.
    pub iterations: usize,
    /// A CCD with fewer usable detections is not solved.
    pub min_stars_per_ccd: usize,
}

/// The correction of one CCD: `pixel + δ(pixel)` is where the current WCS is evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// Normalisation of the pixel coordinates.
    pub frame: CcdFrame,
    /// Polynomial order.
    pub order: usize,
    /// Coefficients of `δx` over `terms(order, 0)` of the normalised coordinates, pixels.
    pub dx: Vec<f64>,
    /// Coefficients of `δy`, likewise.
    pub dy: Vec<f64>,
}

impl Correction {
    /// The zero correction.
    pub fn identity(frame: CcdFrame, order: usize) -> Self {
        let n = terms(order, 0).len();
        Self {
            frame,
            order,
            dx: vec![0.0; n],
            dy: vec![0.0; n],
        }
    }

    /// `δ(pixel)`, pixels.
    pub fn delta(&self, pixel: [f64; 2]) -> [f64; 2] {
        let phi = monomials(self.order, self.frame.normalise(pixel));
        [dot(&phi, &self.dx), dot(&phi, &self.dy)]
    }

    /// `pixel + δ(pixel)`.
    pub fn apply(&self, pixel: [f64; 2]) -> [f64; 2] {
        let d = self.delta(pixel);
        [pixel[0] + d[0], pixel[1] + d[1]]
    }

    /// This correction followed by a constant shift of `shift` pixels (added to the constant
    /// terms).
    pub fn shifted(mut self, shift: [f64; 2]) -> Self {
        self.dx[0] += shift[0];
        self.dy[0] += shift[1];
        self
    }
}

/// What became of one CCD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CcdOutcome {
    /// Solved.
    Solved(Correction),
    /// Not solved, and why (it keeps its current WCS).
    Unsolved(String),
}

/// The solution of a [`JointProblem`].
#[derive(Debug, Clone, PartialEq)]
pub struct JointSolution {
    /// Per CCD, in the order of the problem.
    pub ccds: Vec<CcdOutcome>,
    /// Fitted star positions (arcsec), `None` for stars left out.
    pub stars: Vec<Option<[f64; 2]>>,
    /// Which observations the final solve used.
    pub used_observations: Vec<bool>,
    /// Which reference positions the final solve used.
    pub used_references: Vec<bool>,
    /// χ² of the final solve (without the prior).
    pub chi2: f64,
    /// Its degrees of freedom: measured coordinates minus unknowns.
    pub dof: f64,
    /// Solves made.
    pub iterations: usize,
}

/// Why no solution exists at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SolveError {
    /// The reduced system is not positive definite (should not happen with the prior).
    #[error("the reduced normal equations are singular")]
    Singular,
}

/// Smallest robust scatter of normalised residuals used for rejection: residuals below a
/// thousandth of their σ are never outliers (a noise-free problem keeps every measurement).
const SCATTER_FLOOR: f64 = 1e-3;

/// σ of the prior on every correction coefficient, pixels (see the module documentation).
pub const DEGENERACY_PRIOR_PX: f64 = 100.0;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Monomials `u^p v^q` over `terms(order, 0)`.
fn monomials(order: usize, uv: [f64; 2]) -> Vec<f64> {
    terms(order, 0)
        .iter()
        .map(|&(p, q)| uv[0].powi(p as i32) * uv[1].powi(q as i32))
        .collect()
}

/// Which stars and CCDs take part, given the measurements still used: a fixed point of "a
/// star needs two measurements on taking-part CCDs" and "a CCD needs `min` detections of
/// taking-part stars", starting from the `eligible` CCDs. The counts returned are each CCD's
/// usable detections (for a CCD left out, when it was left out).
fn active_sets(
    problem: &JointProblem,
    eligible: &[bool],
    used_obs: &[bool],
    used_ref: &[bool],
    min: usize,
) -> (Vec<bool>, Vec<bool>, Vec<usize>) {
    let mut ccd_on = eligible.to_vec();
    let mut reported = vec![0usize; problem.ccds.len()];
    let mut has_ref = vec![false; problem.n_stars];
    for (r, u) in problem.references.iter().zip(used_ref) {
        if *u {
            has_ref[r.star] = true;
        }
    }
    loop {
        let mut count = vec![0usize; problem.n_stars];
        for (o, u) in problem.observations.iter().zip(used_obs) {
            if *u && ccd_on[o.ccd] {
                count[o.star] += 1;
            }
        }
        let star_on: Vec<bool> = (0..problem.n_stars)
            .map(|s| count[s] + usize::from(has_ref[s]) >= 2 && count[s] >= 1)
            .collect();
        let mut per_ccd = vec![0usize; problem.ccds.len()];
        for (o, u) in problem.observations.iter().zip(used_obs) {
            if *u && ccd_on[o.ccd] && star_on[o.star] {
                per_ccd[o.ccd] += 1;
            }
        }
        let next: Vec<bool> = per_ccd
            .iter()
            .zip(&ccd_on)
            .map(|(n, on)| *on && *n >= min.max(1))
            .collect();
        for c in 0..ccd_on.len() {
            if ccd_on[c] {
                reported[c] = per_ccd[c];
            }
        }
        if next == ccd_on {
            return (ccd_on, star_on, reported);
        }
        ccd_on = next;
    }
}

/// `B = J Φ`: the 2 × P design block of an observation for its CCD's coefficients, laid out
/// `[a_x (n), a_y (n)]`.
fn design(o: &Observation, frame: &CcdFrame, order: usize) -> [Vec<f64>; 2] {
    let phi = monomials(order, frame.normalise(o.pixel));
    let n = phi.len();
    let mut b = [vec![0.0; 2 * n], vec![0.0; 2 * n]];
    for (k, f) in phi.iter().enumerate() {
        for (row, bk) in b.iter_mut().enumerate() {
            bk[k] = o.jacobian[row][0] * f;
            bk[n + k] = o.jacobian[row][1] * f;
        }
    }
    b
}

/// Dense Cholesky solve of the symmetric positive definite `a` (`n × n`, row-major, lower
/// triangle read) for `b`; `None` when not positive definite.
pub fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let (l, _) = dense::cholesky(a.to_vec(), n, 0.0, Pivots::Refuse)?;
    let mut x = b.to_vec();
    dense::cholesky_solve(&l, n, &mut x);
    Some(x)
}

/// One detection's share of the normal equations: its CCD's slot, design block `B`, weight
/// and tangent-plane position.
struct Piece {
    slot: usize,
    design: [Vec<f64>; 2],
    weight: f64,
    position: [f64; 2],
}

/// One weighted solve on the measurements in use.
struct Solved {
    coeffs: Vec<Option<Vec<f64>>>,
    stars: Vec<Option<[f64; 2]>>,
}

fn solve_once(
    problem: &JointProblem,
    order: usize,
    used_obs: &[bool],
    used_ref: &[bool],
    ccd_on: &[bool],
    star_on: &[bool],
) -> Result<Solved, SolveError> {
    let nt = terms(order, 0).len();
    let p = 2 * nt;
    let mut slot = vec![usize::MAX; problem.ccds.len()];
    let mut n_on = 0;
    for (c, on) in ccd_on.iter().enumerate() {
        if *on {
            slot[c] = n_on;
            n_on += 1;
        }
    }
    let n = n_on * p;
    // Measurements per star.
    let mut by_star: Vec<Vec<usize>> = vec![Vec::new(); problem.n_stars];
    for (i, (o, u)) in problem.observations.iter().zip(used_obs).enumerate() {
        if *u && ccd_on[o.ccd] && star_on[o.star] {
            by_star[o.star].push(i);
        }
    }
    let mut reference: Vec<Option<&ReferencePosition>> = vec![None; problem.n_stars];
    for (r, u) in problem.references.iter().zip(used_ref) {
        if *u && star_on[r.star] {
            reference[r.star] = Some(r);
        }
    }
    // Per star: h_s (H_ss = h_s I), g_s, and per observation (slot, w B, w B^T t) pieces.
    let star_terms = |s: usize| {
        let mut h = 0.0;
        let mut g = [0.0; 2];
        let mut pieces: Vec<Piece> = Vec::new();
        for &i in &by_star[s] {
            let o = &problem.observations[i];
            let w = 1.0 / (o.sigma * o.sigma);
            h += w;
            g[0] += w * o.position[0];
            g[1] += w * o.position[1];
            pieces.push(Piece {
                slot: slot[o.ccd],
                design: design(o, &problem.ccds[o.ccd], order),
                weight: w,
                position: o.position,
            });
        }
        if let Some(r) = reference[s] {
            let w = 1.0 / (r.sigma * r.sigma);
            h += w;
            g[0] += w * r.position[0];
            g[1] += w * r.position[1];
        }
        (h, g, pieces)
    };
    // Adds star `s`'s terms to a partial S (`a`, lower triangle) and right-hand side `b`.
    let accumulate = |a: &mut [f64], b: &mut [f64], s: usize| {
        let (h, g, pieces) = star_terms(s);
        // H_cs for this star, per CCD slot: −Σ w Bᵀ (P × 2), accumulated per piece.
        let mut hcs: Vec<(usize, Vec<[f64; 2]>)> = Vec::new();
        for piece in &pieces {
            let (c, bm, w, t) = (&piece.slot, &piece.design, &piece.weight, &piece.position);
            let base = c * p;
            // H_cc += w BᵀB; g_c += −w Bᵀ t.
            for i in 0..p {
                for j in 0..=i {
                    a[(base + i) * n + base + j] += w * (bm[0][i] * bm[0][j] + bm[1][i] * bm[1][j]);
                }
                b[base + i] -= w * (bm[0][i] * t[0] + bm[1][i] * t[1]);
            }
            let entry = match hcs.iter().position(|e| e.0 == *c) {
                Some(k) => &mut hcs[k].1,
                None => {
                    hcs.push((*c, vec![[0.0; 2]; p]));
                    &mut hcs.last_mut().expect("just pushed").1
                }
            };
            for (e, (b0, b1)) in entry.iter_mut().zip(bm[0].iter().zip(&bm[1])) {
                e[0] -= w * b0;
                e[1] -= w * b1;
            }
        }
        // Eliminate the star: S −= H_cs H_sc / h, rhs −= H_cs g / h.
        for (c1, m1) in &hcs {
            for (i, u) in m1.iter().enumerate() {
                let row = c1 * p + i;
                b[row] -= (u[0] * g[0] + u[1] * g[1]) / h;
                for (c2, m2) in &hcs {
                    for (j, v) in m2.iter().enumerate() {
                        let col = c2 * p + j;
                        if col <= row {
                            a[row * n + col] -= (u[0] * v[0] + u[1] * v[1]) / h;
                        }
                    }
                }
            }
        }
    };
    // Contiguous blocks of stars, each into its own dense partial S (in parallel), summed in
    // block order: the same bits whatever the number of threads.
    let block_len = problem.n_stars.div_ceil(SCHUR_BLOCKS).max(1);
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..SCHUR_BLOCKS)
        .into_par_iter()
        .map(|k| {
            let (mut a, mut b) = (vec![0.0; n * n], vec![0.0; n]);
            let stars =
                (k * block_len).min(problem.n_stars)..((k + 1) * block_len).min(problem.n_stars);
            for s in stars.filter(|&s| star_on[s]) {
                accumulate(&mut a, &mut b, s);
            }
            (a, b)
        })
        .collect();
    let mut blocks = partials.into_iter();
    let (mut s_mat, mut rhs) = blocks.next().expect("SCHUR_BLOCKS ≥ 1");
    for (a2, b2) in blocks {
        s_mat.iter_mut().zip(&a2).for_each(|(x, y)| *x += y);
        rhs.iter_mut().zip(&b2).for_each(|(x, y)| *x += y);
    }
    let prior = 1.0 / (DEGENERACY_PRIOR_PX * DEGENERACY_PRIOR_PX);
    for i in 0..n {
        s_mat[i * n + i] += prior;
    }
    // Fill the upper triangle is not needed: the solver reads the lower one.
    let x = if n == 0 {
        Vec::new()
    } else {
        cholesky_solve(&s_mat, &rhs, n).ok_or(SolveError::Singular)?
    };
    rhs.clear();
    let coeffs: Vec<Option<Vec<f64>>> = (0..problem.ccds.len())
        .map(|c| ccd_on[c].then(|| x[slot[c] * p..slot[c] * p + p].to_vec()))
        .collect();
    // Back-substitution: X_s = (g_s − H_sc a) / h_s = (g_s + Σ w B a) / h_s.
    let stars: Vec<Option<[f64; 2]>> = (0..problem.n_stars)
        .into_par_iter()
        .map(|s| {
            if !star_on[s] {
                return None;
            }
            let (h, mut g, pieces) = star_terms(s);
            for piece in &pieces {
                let a = &x[piece.slot * p..piece.slot * p + p];
                g[0] += piece.weight * dot(&piece.design[0], a);
                g[1] += piece.weight * dot(&piece.design[1], a);
            }
            Some([g[0] / h, g[1] / h])
        })
        .collect();
    Ok(Solved { coeffs, stars })
}

/// Stars are accumulated into the reduced system in this many contiguous blocks, each with its
/// own dense partial matrix, summed in block order: the result does not depend on the number of
/// threads (at most this many work on it at once; memory is this many n × n matrices).
const SCHUR_BLOCKS: usize = 4;

/// The corrected position of an observation under coefficients `a` (arcsec).
fn corrected(o: &Observation, frame: &CcdFrame, order: usize, a: &[f64]) -> [f64; 2] {
    let b = design(o, frame, order);
    [o.position[0] + dot(&b[0], a), o.position[1] + dot(&b[1], a)]
}

/// Solves the problem (see the module documentation).
pub fn solve_joint(
    problem: &JointProblem,
    params: &SolveParams,
) -> Result<JointSolution, SolveError> {
    let order = params.order.max(1);
    let mut used_obs = vec![true; problem.observations.len()];
    let mut used_ref = vec![true; problem.references.len()];
    let mut iterations = 0;
    // Which CCDs have enough detections before any rejection; rejection never takes a CCD out
    // of the solve (its measurements keep their chance to come back), but one left with fewer
    // than the minimum at the end is reported unsolved.
    let (eligible, _, initial) = active_sets(
        problem,
        &vec![true; problem.ccds.len()],
        &used_obs,
        &used_ref,
        params.min_stars_per_ccd,
    );
    loop {
        let (ccd_on, star_on, per_ccd) = active_sets(problem, &eligible, &used_obs, &used_ref, 1);
        let solved = solve_once(problem, order, &used_obs, &used_ref, &ccd_on, &star_on)?;
        iterations += 1;
        // Where each star is: fitted, or for a star left out, the weighted mean of all its
        // measurements (corrected detections on solved CCDs and its reference position), so
        // that measurements rejected in an earlier round can come back.
        let mut mean = vec![([0.0f64; 2], 0.0f64, 0usize); problem.n_stars];
        for o in &problem.observations {
            if let Some(a) = &solved.coeffs[o.ccd] {
                let t = corrected(o, &problem.ccds[o.ccd], order, a);
                let w = 1.0 / (o.sigma * o.sigma);
                let e = &mut mean[o.star];
                e.0[0] += w * t[0];
                e.0[1] += w * t[1];
                e.1 += w;
                e.2 += 1;
            }
        }
        for r in &problem.references {
            let w = 1.0 / (r.sigma * r.sigma);
            let e = &mut mean[r.star];
            e.0[0] += w * r.position[0];
            e.0[1] += w * r.position[1];
            e.1 += w;
            e.2 += 1;
        }
        let star_at = |s: usize| -> Option<[f64; 2]> {
            solved.stars[s].or_else(|| {
                let (sum, w, n) = mean[s];
                (n >= 2).then(|| [sum[0] / w, sum[1] / w])
            })
        };
        // Normalised residuals of every measurement of a located star on a solved CCD.
        let obs_resid: Vec<Option<f64>> = problem
            .observations
            .par_iter()
            .map(|o| {
                let a = solved.coeffs[o.ccd].as_ref()?;
                let x = star_at(o.star)?;
                let t = corrected(o, &problem.ccds[o.ccd], order, a);
                Some((t[0] - x[0]).hypot(t[1] - x[1]) / o.sigma)
            })
            .collect();
        let ref_resid: Vec<Option<f64>> = problem
            .references
            .iter()
            .map(|r| {
                let x = star_at(r.star)?;
                Some((x[0] - r.position[0]).hypot(x[1] - r.position[1]) / r.sigma)
            })
            .collect();
        let in_use = |resid: &[Option<f64>], used: &[bool]| -> Vec<f64> {
            resid
                .iter()
                .zip(used)
                .filter_map(|(r, u)| r.filter(|_| *u))
                .collect()
        };
        let kept_obs = in_use(&obs_resid, &used_obs);
        let kept_ref = in_use(&ref_resid, &used_ref);
        let chi2: f64 = kept_obs.iter().chain(&kept_ref).map(|r| r * r).sum();
        let n_stars_on = star_on.iter().filter(|s| **s).count();
        let n_ccd_on = ccd_on.iter().filter(|c| **c).count();
        let dof = 2.0 * (kept_obs.len() + kept_ref.len()) as f64
            - 2.0 * n_stars_on as f64
            - (2 * terms(order, 0).len() * n_ccd_on) as f64;
        // Robust per-axis scatter of the normalised residuals of every located measurement
        // (rejected ones too, so that rejection does not shrink it round after round).
        let squares: Vec<f64> = obs_resid
            .iter()
            .chain(&ref_resid)
            .flatten()
            .map(|r| r * r)
            .collect();
        let scatter = (median(&squares) / (2.0 * std::f64::consts::LN_2)).sqrt();
        let limit = params.clip * scatter.max(SCATTER_FLOOR);
        let keep = |r: &Option<f64>, u: &bool| match r {
            Some(r) => *r <= limit,
            None => *u,
        };
        let next_obs: Vec<bool> = obs_resid
            .iter()
            .zip(&used_obs)
            .map(|(r, u)| keep(r, u))
            .collect();
        let next_ref: Vec<bool> = ref_resid
            .iter()
            .zip(&used_ref)
            .map(|(r, u)| keep(r, u))
            .collect();
        let converged = next_obs == used_obs && next_ref == used_ref;
        if converged || iterations >= params.iterations.max(1) || squares.is_empty() {
            let ccds = (0..problem.ccds.len())
                .map(|c| match &solved.coeffs[c] {
                    Some(_) if per_ccd[c] < params.min_stars_per_ccd => {
                        CcdOutcome::Unsolved(format!(
                            "{} of {} usable star detections left after outlier rejection, \
                             need min_stars_per_ccd = {}",
                            per_ccd[c], initial[c], params.min_stars_per_ccd
                        ))
                    }
                    Some(a) => {
                        let nt = a.len() / 2;
                        CcdOutcome::Solved(Correction {
                            frame: problem.ccds[c],
                            order,
                            dx: a[..nt].to_vec(),
                            dy: a[nt..].to_vec(),
                        })
                    }
                    None => CcdOutcome::Unsolved(format!(
                        "{} usable star detections, need min_stars_per_ccd = {}",
                        initial[c], params.min_stars_per_ccd
                    )),
                })
                .collect();
            return Ok(JointSolution {
                ccds,
                stars: solved.stars,
                used_observations: used_obs
                    .iter()
                    .zip(&problem.observations)
                    .map(|(u, o)| *u && ccd_on[o.ccd] && star_on[o.star])
                    .collect(),
                used_references: used_ref
                    .iter()
                    .zip(&problem.references)
                    .map(|(u, r)| *u && star_on[r.star])
                    .collect(),
                chi2,
                dof,
                iterations,
            });
        }
        used_obs = next_obs;
        used_ref = next_ref;
    }
}

/// RMS residuals of a tract before and after its correction.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ResidualStats {
    /// Detections in the internal statistic (of stars seen at least twice).
    pub n_internal: usize,
    /// Internal RMS (detections about their star's mean position) before, arcsec.
    pub internal_before_arcsec: f64,
    /// The same after, arcsec.
    pub internal_after_arcsec: f64,
    /// Internal RMS before, pixels.
    pub internal_before_px: f64,
    /// Internal RMS after, pixels.
    pub internal_after_px: f64,
    /// Detections of reference stars.
    pub n_reference: usize,
    /// RMS of detections about their reference position before, arcsec.
    pub reference_before_arcsec: f64,
    /// The same after, arcsec.
    pub reference_after_arcsec: f64,
    /// Against the reference before, pixels.
    pub reference_before_px: f64,
    /// Against the reference after, pixels.
    pub reference_after_px: f64,
}

/// Per-CCD residuals: detections used and their RMS about the star's reference position (or
/// mean position, without one), pixels, before and after.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CcdResiduals {
    /// Detections used.
    pub n: usize,
    /// RMS before, pixels.
    pub before_px: f64,
    /// RMS after, pixels.
    pub after_px: f64,
}

fn rms(sum: f64, n: usize) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        (sum / n as f64).sqrt()
    }
}

/// Residual statistics of the observations the solution used, before (current WCS) and after
/// (corrected; an unsolved CCD's detections count unchanged). Pixels are arcsec divided by each
/// detection's pixel scale `√|det J|`.
pub fn residual_stats(
    problem: &JointProblem,
    solution: &JointSolution,
) -> (ResidualStats, Vec<CcdResiduals>) {
    let order = solution
        .ccds
        .iter()
        .find_map(|c| match c {
            CcdOutcome::Solved(k) => Some(k.order),
            CcdOutcome::Unsolved(_) => None,
        })
        .unwrap_or(1);
    let after = |o: &Observation| match &solution.ccds[o.ccd] {
        CcdOutcome::Solved(k) => {
            let a: Vec<f64> = k.dx.iter().chain(&k.dy).copied().collect();
            corrected(o, &problem.ccds[o.ccd], order, &a)
        }
        CcdOutcome::Unsolved(_) => o.position,
    };
    let scale = |o: &Observation| {
        let j = o.jacobian;
        (j[0][0] * j[1][1] - j[0][1] * j[1][0]).abs().sqrt()
    };
    let used: Vec<&Observation> = problem
        .observations
        .iter()
        .zip(&solution.used_observations)
        .filter_map(|(o, u)| u.then_some(o))
        .collect();
    let mut reference: Vec<Option<[f64; 2]>> = vec![None; problem.n_stars];
    for (r, u) in problem.references.iter().zip(&solution.used_references) {
        if *u {
            reference[r.star] = Some(r.position);
        }
    }
    let mut sums = vec![([0.0; 2], [0.0; 2], 0usize); problem.n_stars];
    for o in &used {
        let (b, a) = (o.position, after(o));
        let e = &mut sums[o.star];
        e.0[0] += b[0];
        e.0[1] += b[1];
        e.1[0] += a[0];
        e.1[1] += a[1];
        e.2 += 1;
    }
    let mut st = ResidualStats::default();
    let mut acc = [0.0f64; 8];
    let mut per_ccd = vec![(0usize, 0.0f64, 0.0f64); problem.ccds.len()];
    for o in &used {
        let (b, a, s) = (o.position, after(o), scale(o));
        let (sb, sa, n) = sums[o.star];
        let d2 = |p: [f64; 2], q: [f64; 2]| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2);
        let (mb, ma) = (
            [sb[0] / n as f64, sb[1] / n as f64],
            [sa[0] / n as f64, sa[1] / n as f64],
        );
        if n >= 2 {
            st.n_internal += 1;
            acc[0] += d2(b, mb);
            acc[1] += d2(a, ma);
            acc[2] += d2(b, mb) / (s * s);
            acc[3] += d2(a, ma) / (s * s);
        }
        let (tb, ta) = match reference[o.star] {
            Some(r) => {
                st.n_reference += 1;
                acc[4] += d2(b, r);
                acc[5] += d2(a, r);
                acc[6] += d2(b, r) / (s * s);
                acc[7] += d2(a, r) / (s * s);
                (r, r)
            }
            None => (mb, ma),
        };
        let e = &mut per_ccd[o.ccd];
        e.0 += 1;
        e.1 += d2(b, tb) / (s * s);
        e.2 += d2(a, ta) / (s * s);
    }
    st.internal_before_arcsec = rms(acc[0], st.n_internal);
    st.internal_after_arcsec = rms(acc[1], st.n_internal);
    st.internal_before_px = rms(acc[2], st.n_internal);
    st.internal_after_px = rms(acc[3], st.n_internal);
    st.reference_before_arcsec = rms(acc[4], st.n_reference);
    st.reference_after_arcsec = rms(acc[5], st.n_reference);
    st.reference_before_px = rms(acc[6], st.n_reference);
    st.reference_after_px = rms(acc[7], st.n_reference);
    let ccds = per_ccd
        .into_iter()
        .map(|(n, b, a)| CcdResiduals {
            n,
            before_px: rms(b, n),
            after_px: rms(a, n),
        })
        .collect();
    (st, ccds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    /// A CCD with a linear current WCS `t = M (p − c) + o` (arcsec) and a true correction.
    struct SimCcd {
        m: [[f64; 2]; 2],
        origin: [f64; 2],
        truth: Correction,
    }

    const SIZE: f64 = 200.0;
    const SCALE: f64 = 0.2;

    fn inverse(m: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        [
            [m[1][1] / det, -m[0][1] / det],
            [-m[1][0] / det, m[0][0] / det],
        ]
    }

    fn mul(m: [[f64; 2]; 2], v: [f64; 2]) -> [f64; 2] {
        [
            m[0][0] * v[0] + m[0][1] * v[1],
            m[1][0] * v[0] + m[1][1] * v[1],
        ]
    }

    /// Six CCDs: three dithered visits of a 2 × 1 camera, each CCD with a random affine
    /// correction of up to a pixel; `n_stars` stars over the field, the first
    /// `n_reference` with reference positions. Pixel noise `noise_px`, reference noise
    /// `ref_noise` arcsec.
    fn problem(
        seed: u64,
        n_stars: usize,
        n_reference: usize,
        noise_px: f64,
        ref_noise: f64,
    ) -> (JointProblem, Vec<SimCcd>, Vec<[f64; 2]>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let frame = CcdFrame::of_size(SIZE, SIZE);
        let mut ccds = Vec::new();
        for visit in 0..3 {
            let dither = [visit as f64 * 9.0 - 9.0, visit as f64 * 5.0 - 5.0];
            for col in 0..2 {
                let rot: f64 = rng.random_range(-0.01..0.01);
                let s = SCALE * (1.0 + rng.random_range(-1e-3..1e-3));
                let mut truth = Correction::identity(frame, 1);
                truth.dx = vec![
                    rng.random_range(-1.0..1.0),
                    rng.random_range(-0.3..0.3),
                    rng.random_range(-0.3..0.3),
                ];
                truth.dy = vec![
                    rng.random_range(-1.0..1.0),
                    rng.random_range(-0.3..0.3),
                    rng.random_range(-0.3..0.3),
                ];
                ccds.push(SimCcd {
                    m: [
                        [s * rot.cos(), -s * rot.sin()],
                        [s * rot.sin(), s * rot.cos()],
                    ],
                    origin: [col as f64 * 42.0 + dither[0], dither[1]],
                    truth,
                });
            }
        }
        let stars: Vec<[f64; 2]> = (0..n_stars)
            .map(|_| [rng.random_range(-30.0..72.0), rng.random_range(-25.0..25.0)])
            .collect();
        let noise = Normal::new(0.0, 1.0).unwrap();
        let mut observations = Vec::new();
        for (c, k) in ccds.iter().enumerate() {
            let l = [
                [k.truth.dx[1], k.truth.dx[2]],
                [k.truth.dy[1], k.truth.dy[2]],
            ];
            // p + d0 + L (p − c)/h = q  ⇒  (I + L/h) p = q − d0 + L c / h.
            let a = [
                [1.0 + l[0][0] / frame.half_size, l[0][1] / frame.half_size],
                [l[1][0] / frame.half_size, 1.0 + l[1][1] / frame.half_size],
            ];
            let lc = mul(l, frame.centre);
            for (s, x) in stars.iter().enumerate() {
                let rel = mul(inverse(k.m), [x[0] - k.origin[0], x[1] - k.origin[1]]);
                let q = [rel[0] + frame.centre[0], rel[1] + frame.centre[1]];
                let rhs = [
                    q[0] - k.truth.dx[0] + lc[0] / frame.half_size,
                    q[1] - k.truth.dy[0] + lc[1] / frame.half_size,
                ];
                let mut p = mul(inverse(a), rhs);
                if !(p[0] >= 1.0 && p[0] <= SIZE && p[1] >= 1.0 && p[1] <= SIZE) {
                    continue;
                }
                p[0] += noise_px * noise.sample(&mut rng);
                p[1] += noise_px * noise.sample(&mut rng);
                let t = mul(k.m, [p[0] - frame.centre[0], p[1] - frame.centre[1]]);
                observations.push(Observation {
                    ccd: c,
                    star: s,
                    pixel: p,
                    position: [t[0] + k.origin[0], t[1] + k.origin[1]],
                    jacobian: k.m,
                    sigma: noise_px.max(1e-3) * SCALE,
                });
            }
        }
        let references = (0..n_reference)
            .map(|s| ReferencePosition {
                star: s,
                position: [
                    stars[s][0] + ref_noise * noise.sample(&mut rng),
                    stars[s][1] + ref_noise * noise.sample(&mut rng),
                ],
                sigma: ref_noise.max(1e-4),
            })
            .collect();
        let problem = JointProblem {
            ccds: vec![frame; ccds.len()],
            n_stars,
            observations,
            references,
        };
        (problem, ccds, stars)
    }

    fn params() -> SolveParams {
        SolveParams {
            order: 1,
            clip: 4.0,
            iterations: 10,
            min_stars_per_ccd: 8,
        }
    }

    /// Largest difference between the fitted and true correction over the CCD, pixels.
    fn worst_error(solution: &JointSolution, ccds: &[SimCcd]) -> f64 {
        let mut worst: f64 = 0.0;
        for (out, k) in solution.ccds.iter().zip(ccds) {
            let CcdOutcome::Solved(c) = out else {
                panic!("{out:?}")
            };
            for p in [
                [1.0, 1.0],
                [SIZE, 1.0],
                [1.0, SIZE],
                [SIZE, SIZE],
                [100.0, 100.0],
            ] {
                let (a, b) = (c.delta(p), k.truth.delta(p));
                worst = worst.max((a[0] - b[0]).hypot(a[1] - b[1]));
            }
        }
        worst
    }

    #[test]
    fn cholesky_solves_a_known_system() {
        let a = [4.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 1.0, 2.0];
        // Lower triangle of [[4, 2, 0], [2, 3, 1], [0, 1, 2]]; x = (1, −1, 2).
        let x = cholesky_solve(&a, &[2.0, 1.0, 3.0], 3).unwrap();
        for (v, e) in x.iter().zip([1.0, -1.0, 2.0]) {
            assert!((v - e).abs() < 1e-12, "{x:?}");
        }
        assert_eq!(cholesky_solve(&[1.0, 0.0, 1.0, 1.0], &[1.0, 1.0], 2), None);
    }

    #[test]
    fn noise_free_corrections_and_stars_are_recovered_exactly() {
        let (problem, ccds, stars) = problem(1, 300, 40, 0.0, 0.0);
        let s = solve_joint(&problem, &params()).unwrap();
        let err = worst_error(&s, &ccds);
        assert!(err < 1e-6, "{err}");
        for (fit, truth) in s.stars.iter().zip(&stars) {
            if let Some(f) = fit {
                assert!((f[0] - truth[0]).hypot(f[1] - truth[1]) < 1e-6);
            }
        }
        let (stats, per_ccd) = residual_stats(&problem, &s);
        assert!(
            stats.internal_after_px < 1e-6 && stats.internal_before_px > 0.1,
            "{stats:?}"
        );
        assert!(stats.reference_after_px < 1e-6, "{stats:?}");
        assert!(per_ccd.iter().all(|c| c.n >= 8 && c.after_px < 1e-6));
    }

    #[test]
    fn chi_square_with_noise_is_the_degrees_of_freedom() {
        let mut ratios = Vec::new();
        for seed in 0..4 {
            let (problem, ccds, _) = problem(10 + seed, 400, 60, 0.05, 0.01);
            let p = SolveParams {
                clip: 100.0,
                ..params()
            };
            let s = solve_joint(&problem, &p).unwrap();
            assert_eq!(s.iterations, 1);
            // χ² ~ dof ± √(2 dof).
            let z = (s.chi2 - s.dof) / (2.0 * s.dof).sqrt();
            assert!(z.abs() < 4.0, "chi2 {} dof {} z {z}", s.chi2, s.dof);
            ratios.push(s.chi2 / s.dof);
            assert!(worst_error(&s, &ccds) < 0.1, "{}", worst_error(&s, &ccds));
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "{ratios:?}");
    }

    /// The solution is the same bits on 1, 3 and 8 threads, and on repeated runs.
    #[test]
    fn the_solution_does_not_depend_on_the_threads() {
        let (problem, _, _) = problem(21, 600, 60, 0.05, 0.01);
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| solve_joint(&problem, &params()).unwrap())
        };
        let one = on(1);
        for threads in [3, 8, 8] {
            assert!(on(threads) == one, "{threads} threads differ from one");
        }
    }

    #[test]
    fn outliers_are_rejected() {
        let (mut problem, ccds, _) = problem(5, 400, 60, 0.02, 0.004);
        let bad = [3, 50, 77, 120, 300];
        for &i in &bad {
            problem.observations[i].position[0] += 3.0; // 15 pixels: a mismatch
        }
        problem.references[7].position[1] -= 2.0;
        let s = solve_joint(&problem, &params()).unwrap();
        for &i in &bad {
            assert!(!s.used_observations[i], "observation {i} kept");
        }
        assert!(!s.used_references[7]);
        // Few good measurements are lost: compare with the same problem without outliers.
        let (clean, _, _) = self::problem(5, 400, 60, 0.02, 0.004);
        let clean = solve_joint(&clean, &params()).unwrap();
        let clean_kept = clean.used_observations.iter().filter(|u| **u).count();
        let kept = s.used_observations.iter().filter(|u| **u).count();
        assert!(
            kept as f64 > 0.97 * clean_kept as f64,
            "{kept} {clean_kept}"
        );
        // As good as without the outliers.
        let (err, clean_err) = (worst_error(&s, &ccds), worst_error(&clean, &ccds));
        assert!(err < 1.3 * clean_err, "{err} {clean_err}");
        // Without rejection the mismatches pull the solution away.
        let once = solve_joint(
            &problem,
            &SolveParams {
                iterations: 1,
                ..params()
            },
        )
        .unwrap();
        assert!(worst_error(&once, &ccds) > 3.0 * worst_error(&s, &ccds));
    }

    #[test]
    fn a_ccd_with_too_few_stars_is_reported_not_nan() {
        let (mut problem, ccds, _) = problem(7, 300, 40, 0.0, 0.0);
        // CCD 5 keeps three detections only.
        let mut seen = 0;
        problem.observations.retain(|o| {
            if o.ccd != 5 {
                return true;
            }
            seen += 1;
            seen <= 3
        });
        let s = solve_joint(&problem, &params()).unwrap();
        match &s.ccds[5] {
            CcdOutcome::Unsolved(why) => assert!(why.contains("3 usable"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(s.chi2.is_finite() && s.dof > 0.0);
        let solved: Vec<&SimCcd> = ccds.iter().take(5).collect();
        for (out, k) in s.ccds.iter().zip(solved) {
            let CcdOutcome::Solved(c) = out else {
                panic!("{out:?}")
            };
            let d = c.delta([50.0, 50.0]);
            let t = k.truth.delta([50.0, 50.0]);
            assert!((d[0] - t[0]).hypot(d[1] - t[1]) < 1e-6);
        }
        let (_, per_ccd) = residual_stats(&problem, &s);
        assert!(per_ccd.iter().all(|c| !c.before_px.is_nan() || c.n == 0));
    }
}
