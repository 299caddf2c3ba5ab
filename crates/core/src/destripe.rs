//! Destriping: per-detector offset baselines solved by preconditioned conjugate gradient.
//!
//! Each detector timestream `d` is modelled as `d = P m + F a + n`: `P` the pointing matrix
//! (weights into pixels), `m` the sky, `F` the baseline template (sample `i` of a detector
//! belongs to its baseline `i / L`, `L` = [`DestripeConfig::baseline_length`]) and `n` white
//! noise of weight `1/σ²` per detector. The baselines minimise `χ²` after marginalising the map:
//!
//! `(Fᵀ Z F) a = Fᵀ Z d`, with `Z = N⁻¹ − N⁻¹ P (Pᵀ N⁻¹ P)⁻¹ Pᵀ N⁻¹`.
//!
//! Applying `Z` to a timestream `y` is "bin `y` into a map, then scan the map back and subtract":
//! per pixel `m = C⁻¹ Σ w y/σ²` with the binned matrix `C` of [`crate::binning`]. The only
//! step that needs every process's data is the sum of the binned right-hand side over processes;
//! it is the [`Reduce`] trait (with [`Reduce::sum`] for the CG dot products). [`SingleProcess`]
//! is the identity; the MPI stage implements it with owned sub-maps (each summed on one owner
//! and sent back to the processes that hit it), in bounded rounds. Everything else is local to
//! the detectors a process holds.
//!
//! Samples that are flagged, or whose pixel is cut by the rcond threshold, take no part.
//! Baselines without such samples stay 0.
//!
//! **Null space.** A common offset on every baseline is indistinguishable from a constant added
//! to the I map, so `Fᵀ Z F` is singular. The solver uses `Fᵀ Z F + c u uᵀ` (`u` = 1 on every
//! baseline with data, `c` = mean diagonal / number of such baselines): since `uᵀ Fᵀ Z d = 0`,
//! its solution is the solution of the original system whose baselines sum to zero. (Sky
//! patches never linked by any detector's scan add further null directions; CG on the
//! consistent system still converges there, but each patch's mean is then arbitrary.)
//!
//! **Preconditioner.** Two levels, each optional:
//! - *Blocks* ([`DestripeConfig::block_baselines`]): the baselines of the timestreams of one
//!   [`Timestream::group`] (e.g. one observation), in time windows of at most that many
//!   baselines, form a dense block of `A' = Fᵀ Z F + c u uᵀ` assembled exactly from the
//!   samples (`W_k δ_kk' + c − Σ_p v_kpᵀ C_p⁻¹ v_k'p`) and inverted by Cholesky. Elsewhere, and
//!   with 0, the inverse of `Fᵀ N⁻¹ F`: `σ² / n_k` for a baseline of `n_k` good samples (the
//!   standard MADAM / TOAST choice). A block lives on the process holding its timestreams,
//!   so no communication.
//! - *Coarse space* ([`DestripeConfig::coarse_groups`] × [`DestripeConfig::coarse_detectors`]
//!   × [`DestripeConfig::coarse_segments`] templates): `Z` has one column per group (or per
//!   timestream of a group) and time segment, 1 on its baselines. `A' Z` is
//!   assembled once (each template binned into a map column, summed over processes with
//!   [`Reduce::reduce_map_where_held`], solved per pixel and scanned back), `E = Zᵀ A' Z` is
//!   summed with [`Reduce::sum`] and factorised identically on every process. CG is then
//!   deflated (Saad et al. 2000; the two-level preconditioner of Szydlarski et al. 2014):
//!   `x₀ = Z E⁻¹ Zᵀ b`, and each search direction is made `A'`-orthogonal to `range(Z)`, at
//!   the cost of `k` more values in each iteration's scalar reduction — still one operator
//!   application per iteration. The global offset (the null space above) lies in `range(Z)`.
//!
//! **Slow modes.** On weakly cross-linked scans (each pixel crossed at few angles, the same
//! ring scanned repeatedly) the smallest eigenvalues of the block-preconditioned operator
//! (Lanczos estimates from the CG coefficients: down to 4·10⁻⁴, condition ~7000 on the
//! demo) belong to two families of modes that no single observation can pin down but that
//! cost almost nothing jointly: (1) a detector pair's offset *difference*, constant over an
//! observation, which mimics polarisation along the ring; (2) smooth, sky-like offset patterns
//! repeating with the spin period across every observation and detector (a large-scale
//! I/Q/U pattern scanned into the baselines). Per-observation templates span neither; per-
//! detector templates split into short segments ([`DestripeConfig::coarse_detectors`],
//! [`DestripeConfig::coarse_segments`]; piecewise-constant aggregates of a few baselines,
//! as in aggregation multigrid) span both, and CG then converges in a few tens of
//! iterations.
//!
//! # Example
//! ```
//! use skypipe_core::binning::{Components, SubmapLayout};
//! use skypipe_core::destripe::{destripe, DestripeConfig, SingleProcess, Timestream};
//! use skypipe_core::pointing::stokes_weights_from_psi;
//!
//! // A ring of 8 pixels scanned 20 times, alternating two angles, with an offset per scan.
//! let n = 8 * 20;
//! let pixels: Vec<u64> = (0..n).map(|i| (i % 8) as u64).collect();
//! let weights: Vec<[f64; 3]> = (0..n).map(|i| stokes_weights_from_psi(0.4 * (i % 7) as f64, 1.0)).collect();
//! let signal: Vec<f64> = (0..n).map(|i| 0.5 + 0.1 * (i / 8) as f64).collect(); // flat sky + offsets
//! let ts = Timestream { pixels: &pixels, weights: &weights, signal: &signal, flags: None, inv_var: 1.0, group: 0 };
//! let cfg = DestripeConfig { baseline_length: 8, ..DestripeConfig::default() };
//! let out = destripe(&[ts], SubmapLayout::new(12, 4)?, Components::Iqu, &cfg, &mut SingleProcess)?;
//! assert!(out.converged);
//! // Offsets recovered up to their mean (0.95).
//! for (k, a) in out.baselines[0].iter().enumerate() {
//!     assert!((a - (0.1 * k as f64 - 0.95)).abs() < 1e-8);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::binning::{
    BinAccumulator, BinnedMap, BinningError, Components, SparseMap, SubmapLayout,
};
use crate::dense::{Pivots, cholesky, cholesky_solve};

/// One detector's (chunk of) timestream, as binned: pixels, `(I, Q, U)` weights, calibrated
/// signal, optional flags (`0` = good) and the white-noise weight `1/σ²`.
#[derive(Debug, Clone, Copy)]
pub struct Timestream<'a> {
    /// HEALPix pixel per sample.
    pub pixels: &'a [u64],
    /// Stokes weights per sample.
    pub weights: &'a [[f64; 3]],
    /// Calibrated signal per sample.
    pub signal: &'a [f64],
    /// Flags per sample (`0` = use), or `None` for all good.
    pub flags: Option<&'a [u8]>,
    /// Noise weight `1/σ²` of the detector.
    pub inv_var: f64,
    /// Coarse-space group (below [`DestripeConfig::coarse_groups`]; ignored without a coarse
    /// space): timestreams of one group
    /// share one constant-offset template of the two-level preconditioner. Typically one group
    /// per detector and observation, numbered the same way on every process.
    pub group: usize,
}

/// The steps that need all processes: summing a sparse map and summing scalars.
///
/// For a map, a process needs the sums only in the sub-maps it has allocated itself (where it
/// holds samples): an MPI implementation can reduce each sub-map to one owner process and send
/// the sums back to the processes that allocated it (`skypipe_cmb::submaps`), or allreduce
/// the union ([`crate::binning::reduce_in_chunks`]). Scalars must be summed on every process
/// alike. The destriper calls
/// [`Reduce::reduce_map`] once for the matrix and once for the final map,
/// [`Reduce::reduce_map_where_held`] once per operator application (the right-hand side and
/// each CG iteration), and [`Reduce::sum`] with one to three scalars per dot product.
pub trait Reduce {
    /// Sum `map` over all processes into the sub-maps this process has allocated, in place:
    /// the maps that are products (the binned matrix, the destriped map), whose sums an
    /// implementation with owned sub-maps keeps on the owners for writing.
    fn reduce_map(&mut self, map: &mut SparseMap);
    /// Sum `map` over all processes where a process needs the sums only in the sub-maps where
    /// it holds samples (the destriper's iterations; the binned and destriped maps use
    /// [`Reduce::reduce_map`]). A sub-map where a single process holds samples needs no
    /// communication at all. The default sums everything.
    fn reduce_map_where_held(&mut self, map: &mut SparseMap) {
        self.reduce_map(map);
    }
    /// Sum each element of `values` over all processes, in place.
    fn sum(&mut self, values: &mut [f64]);
}

/// The single-process [`Reduce`]: nothing to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Reduce for SingleProcess {
    fn reduce_map(&mut self, _map: &mut SparseMap) {}
    fn sum(&mut self, _values: &mut [f64]) {}
}

/// Destriper settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DestripeConfig {
    /// Samples per baseline (the last baseline of a detector may be shorter).
    pub baseline_length: usize,
    /// Stop when `‖r‖ / ‖b‖` (CG residual relative to the right-hand side) is below this.
    pub tolerance: f64,
    /// Iteration cap.
    pub max_iterations: usize,
    /// Pixels whose matrix has a smaller reciprocal condition number are cut.
    pub rcond_min: f64,
    /// Number of coarse-space groups ([`Timestream::group`] is below it), the same on every
    /// process; 0 for the one-level (diagonal) preconditioner alone. At most
    /// [`MAX_COARSE_GROUPS`].
    pub coarse_groups: usize,
    /// Templates per group: each timestream's baselines split into this many consecutive
    /// segments of (nearly) equal length, each with its own constant-offset template (at
    /// least 1). The coarse space has `coarse_groups · max(coarse_detectors, 1) ·
    /// coarse_segments` columns.
    pub coarse_segments: usize,
    /// Templates per group by timestream: with `D > 0`, the `j`-th timestream of group `g` in
    /// this process's input (`j < D`) has its own templates (column `(g·D + j)·segments + s`)
    /// instead of sharing the group's; every timestream of a group must then be held by one
    /// process, in the same order wherever the groups are numbered. Per-detector templates
    /// span the differences of offsets within a group, such as a detector pair's offset
    /// difference, which mimics polarisation along the whole scan and is the slowest mode of
    /// weakly cross-linked data. 0: one template per group.
    pub coarse_detectors: usize,
    /// Block-Jacobi level: the baselines of each group of timestreams with the same
    /// [`Timestream::group`], in windows of at most this many baselines, form one block of the
    /// preconditioner, inverted exactly (memory: `8 · block_baselines` bytes per baseline).
    /// 0: the diagonal `σ²/n` alone.
    pub block_baselines: usize,
}

/// Largest coarse space: its dense matrix (`k²` values) is summed over processes and
/// factorised on each.
pub const MAX_COARSE_GROUPS: usize = 4096;

impl Default for DestripeConfig {
    /// `baseline_length` 1000, tolerance 1e-10, 200 iterations, rcond cut 1e-3, no coarse
    /// space.
    fn default() -> Self {
        Self {
            baseline_length: 1000,
            tolerance: 1e-10,
            max_iterations: 200,
            rcond_min: 1e-3,
            coarse_groups: 0,
            coarse_segments: 1,
            coarse_detectors: 0,
            block_baselines: 0,
        }
    }
}

/// Why the destriper refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DestripeError {
    /// A detector's samples were refused by the binning.
    #[error("detector {detector}: {source}")]
    Detector {
        /// Index of the detector in the input.
        detector: usize,
        /// Why.
        source: BinningError,
    },
    /// A configuration value is out of range.
    #[error("bad destriper configuration: {0}")]
    Config(&'static str),
    /// A group has more timestreams than [`DestripeConfig::coarse_detectors`].
    #[error(
        "detector {detector}: coarse group {group} has more than coarse_detectors = {detectors} timestreams"
    )]
    GroupSize {
        /// Index of the detector in the input.
        detector: usize,
        /// Its group.
        group: usize,
        /// [`DestripeConfig::coarse_detectors`].
        detectors: usize,
    },
    /// A timestream's coarse-space group is not below the configured number of groups.
    #[error("detector {detector}: coarse group {group} is not below coarse_groups = {groups}")]
    Group {
        /// Index of the detector in the input.
        detector: usize,
        /// Its group.
        group: usize,
        /// [`DestripeConfig::coarse_groups`].
        groups: usize,
    },
}

/// The destriper's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Destriped {
    /// Baseline offsets per detector (`ceil(n / L)` each), summing to zero over all baselines
    /// with data.
    pub baselines: Vec<Vec<f64>>,
    /// CG iterations done.
    pub iterations: usize,
    /// Final relative residual `‖r‖ / ‖b‖` (0 when `b = 0`).
    pub residual: f64,
    /// Relative residual after each iteration (index 0: before the first).
    pub residual_history: Vec<f64>,
    /// Whether the tolerance was reached within the iteration cap.
    pub converged: bool,
    /// Columns of the coarse space used (0: one-level preconditioner, either by configuration
    /// or because the coarse matrix was singular).
    pub coarse_dimension: usize,
    /// The binned map of the input, before destriping.
    pub binned: BinnedMap,
    /// The map of the destriped timestreams `d − F a`.
    pub destriped: BinnedMap,
}

/// Subtract baselines: `out[i] = signal[i] − baselines[i / baseline_length]`.
///
/// # Panics
/// When `out` and `signal` differ in length or `baselines` are too few to cover `signal`.
pub fn subtract_baselines(
    signal: &[f64],
    baselines: &[f64],
    baseline_length: usize,
    out: &mut [f64],
) {
    assert_eq!(signal.len(), out.len(), "signal and output lengths differ");
    assert!(
        baselines.len() * baseline_length >= signal.len(),
        "too few baselines"
    );
    for (k, (s, o)) in signal
        .chunks(baseline_length)
        .zip(out.chunks_mut(baseline_length))
        .enumerate()
    {
        for (x, y) in s.iter().zip(o) {
            *y = x - baselines[k];
        }
    }
}

/// State shared by the CG iterations: good-sample masks and the projection map.
struct Projector<'a, 'b> {
    data: &'a [Timestream<'b>],
    good: Vec<Vec<bool>>,
    /// Byte offset of each sample's pixel record in `rhs` (valid where good).
    rec: Vec<Vec<u32>>,
    comps: Components,
    binned: &'a BinnedMap,
    rhs: SparseMap,
    l: usize,
}

impl Projector<'_, '_> {
    /// Bin the timestream `y(det, i)` over good samples into `rhs`, reduce (`everywhere`, or
    /// only where this process holds samples), and solve per pixel in place (`rhs ← C⁻¹ rhs`).
    fn bin_and_solve<R: Reduce + ?Sized>(
        &mut self,
        reduce: &mut R,
        y: impl Fn(usize, usize) -> f64,
        everywhere: bool,
    ) {
        self.rhs.clear_values();
        let nnz = self.comps.nnz();
        let vals = self.rhs.values_mut();
        for (d, ts) in self.data.iter().enumerate() {
            let good = &self.good[d];
            let rec = &self.rec[d];
            for i in 0..ts.pixels.len() {
                if !good[i] {
                    continue;
                }
                let o = rec[i] as usize;
                let v = y(d, i) * ts.inv_var;
                let w = ts.weights[i];
                for c in 0..nnz {
                    vals[o + c] += w[c] * v;
                }
            }
        }
        if everywhere {
            reduce.reduce_map(&mut self.rhs);
        } else {
            reduce.reduce_map_where_held(&mut self.rhs);
        }
        let vals = self.rhs.values_mut();
        match self.comps {
            Components::I => {
                for (v, ic) in vals.iter_mut().zip(&self.binned.inv_cov) {
                    *v *= ic;
                }
            }
            Components::Iqu => {
                for (v, ic) in vals
                    .chunks_exact_mut(3)
                    .zip(self.binned.inv_cov.chunks_exact(6))
                {
                    let ic = [ic[0], ic[1], ic[2], ic[3], ic[4], ic[5]];
                    let m = crate::binning::apply_sym3(&ic, [v[0], v[1], v[2]]);
                    v.copy_from_slice(&m);
                }
            }
        }
    }

    /// The solved map scanned back at good sample `i` of detector `d`.
    #[inline]
    fn scan(&self, d: usize, i: usize) -> f64 {
        let o = self.rec[d][i] as usize;
        let w = self.data[d].weights[i];
        let v = self.rhs.values();
        (0..self.comps.nnz()).map(|c| w[c] * v[o + c]).sum()
    }

    /// `out_k = Σ_{good i in k} (y(d, i) − scan(d, i)) / σ²` for every baseline: `Fᵀ Z y`.
    fn apply_z<R: Reduce + ?Sized>(
        &mut self,
        reduce: &mut R,
        y: impl Fn(usize, usize) -> f64 + Copy,
        out: &mut [Vec<f64>],
    ) {
        self.bin_and_solve(reduce, y, false);
        for (d, ts) in self.data.iter().enumerate() {
            out[d].fill(0.0);
            for i in 0..ts.pixels.len() {
                if self.good[d][i] {
                    out[d][i / self.l] += (y(d, i) - self.scan(d, i)) * ts.inv_var;
                }
            }
        }
    }
}

fn dot(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>())
        .sum()
}

/// Values of the dense block map used while assembling the coarse space (8 bytes each), summed
/// over processes so that every process picks the same number of groups per block: 64 MiB.
const COARSE_BLOCK_VALUES: usize = 1 << 23;

/// The coarse level of the two-level preconditioner: `Z` has one column per group, 1 on the
/// group's baselines with data; `A'` is the regularised operator `Fᵀ Z F + c u uᵀ`.
struct Coarse {
    /// Number of groups `k`.
    k: usize,
    /// Group of each local baseline.
    group: Vec<Vec<u32>>,
    /// First flattened baseline index of each local timestream.
    first: Vec<usize>,
    /// Rows of `Fᵀ Z F Z` (without the `c u uᵀ` term) for this process's baselines, flattened
    /// timestream after timestream, in compressed-row form.
    row_ptr: Vec<usize>,
    cols: Vec<u32>,
    vals: Vec<f64>,
    /// Baselines with data per group, over all processes (`Zᵀ u`).
    n: Vec<f64>,
    /// Lower Cholesky factor of `E = Zᵀ A' Z`, row-major `k × k`, the same on every process.
    chol: Vec<f64>,
    /// The null-space weight `c`.
    c_null: f64,
    /// Templates left out because they depend (numerically) on earlier ones: their
    /// coefficients are 0.
    dropped: Vec<bool>,
}

impl Coarse {
    /// Assemble the coarse level: for each block of groups, bin each group's template
    /// (`Pᵀ N⁻¹ F zⱼ`, one map column per group), sum over processes where held, solve per
    /// pixel and scan back into the rows of `A Z`; `E = Zᵀ (A Z) + c n nᵀ` is summed over
    /// processes and factorised. `None` (on every process alike) when `E` is not positive
    /// definite (sky regions that no scan links).
    #[allow(clippy::too_many_arguments)]
    fn build<R: Reduce + ?Sized>(
        proj: &Projector,
        k: usize,
        segments: usize,
        template: &[usize],
        weight: &[Vec<f64>],
        active: &[Vec<bool>],
        c_null: f64,
        reduce: &mut R,
    ) -> Option<Self> {
        let data = proj.data;
        let l = proj.l;
        let nnz = proj.comps.nnz();
        // Template of baseline kb of timestream d: its group's segment of equal length.
        let group: Vec<Vec<u32>> = template
            .iter()
            .zip(weight)
            .map(|(&t, w)| {
                let nb = w.len();
                (0..nb)
                    .map(|kb| (t * segments + kb * segments / nb) as u32)
                    .collect()
            })
            .collect();
        let mut first = Vec::with_capacity(data.len());
        let mut nflat = 0;
        for w in weight {
            first.push(nflat);
            nflat += w.len();
        }
        let nrec = proj.rhs.values().len() / nnz;
        let mut total = [proj.rhs.values().len() as f64];
        reduce.sum(&mut total);
        let per_block = ((COARSE_BLOCK_VALUES as f64 / total[0].max(1.0)) as usize).clamp(1, k);
        // E (k × k) then n (k), summed over processes at the end.
        let mut e = vec![0.0; k * k + k];
        let mut triplets: Vec<(usize, u32, f64)> = Vec::new();
        let mut column = SparseMap::new(proj.rhs.layout(), nnz * per_block);
        for &sm in proj.rhs.slots() {
            column.allocate(sm).expect("sub-map of the same layout");
        }
        let mut scratch = vec![0.0; per_block];
        let mut seen = vec![false; per_block];
        let mut touched: Vec<usize> = Vec::new();
        for j0 in (0..k).step_by(per_block) {
            let width = per_block.min(k - j0);
            let stride = nnz * per_block;
            // Templates binned: column jj of record q at q·stride + jj·nnz.
            column.clear_values();
            let vals = column.values_mut();
            for (d, ts) in data.iter().enumerate() {
                let gd = &group[d];
                if !gd.iter().any(|g| (j0..j0 + width).contains(&(*g as usize))) {
                    continue;
                }
                for i in 0..ts.pixels.len() {
                    let g = gd[i / l] as usize;
                    if proj.good[d][i] && (j0..j0 + width).contains(&g) {
                        let jj = g - j0;
                        let o = proj.rec[d][i] as usize / nnz * stride + jj * nnz;
                        for c in 0..nnz {
                            vals[o + c] += ts.weights[i][c] * ts.inv_var;
                        }
                    }
                }
            }
            reduce.reduce_map_where_held(&mut column);
            // Solve per pixel and keep the non-zero columns of each record.
            let vals = column.values();
            let mut pix_ptr = Vec::with_capacity(nrec + 1);
            let mut entries: Vec<(u32, [f64; 3])> = Vec::new();
            pix_ptr.push(0u32);
            for q in 0..nrec {
                for jj in 0..width {
                    let v = &vals[q * stride + jj * nnz..q * stride + (jj + 1) * nnz];
                    if v.iter().all(|&x| x == 0.0) {
                        continue;
                    }
                    let m = match proj.comps {
                        Components::I => [v[0] * proj.binned.inv_cov[q], 0.0, 0.0],
                        Components::Iqu => {
                            let ic = &proj.binned.inv_cov[q * 6..q * 6 + 6];
                            crate::binning::apply_sym3(
                                &[ic[0], ic[1], ic[2], ic[3], ic[4], ic[5]],
                                [v[0], v[1], v[2]],
                            )
                        }
                    };
                    entries.push((jj as u32, m));
                }
                pix_ptr.push(u32::try_from(entries.len()).expect("fewer than 2^32 entries"));
            }
            // Scan back: (A zⱼ)_b = δ W_b − Σ_{i ∈ b} wᵢ · (C⁻¹ Pᵀ N⁻¹ F zⱼ)(pᵢ) / σ².
            for (d, ts) in data.iter().enumerate() {
                for (kb, &is_active) in active[d].iter().enumerate() {
                    if !is_active {
                        continue;
                    }
                    let end = ((kb + 1) * l).min(ts.pixels.len());
                    for i in kb * l..end {
                        if !proj.good[d][i] {
                            continue;
                        }
                        let q = proj.rec[d][i] as usize / nnz;
                        let w = ts.weights[i];
                        for (jj, m) in &entries[pix_ptr[q] as usize..pix_ptr[q + 1] as usize] {
                            let jj = *jj as usize;
                            let h = (w[0] * m[0] + w[1] * m[1] + w[2] * m[2]) * ts.inv_var;
                            if !seen[jj] {
                                seen[jj] = true;
                                touched.push(jj);
                            }
                            scratch[jj] -= h;
                        }
                    }
                    let g = group[d][kb] as usize;
                    if (j0..j0 + width).contains(&g) {
                        let jj = g - j0;
                        if !seen[jj] {
                            seen[jj] = true;
                            touched.push(jj);
                        }
                        scratch[jj] += weight[d][kb];
                    }
                    touched.sort_unstable();
                    for &jj in &touched {
                        let v = scratch[jj];
                        triplets.push((first[d] + kb, (j0 + jj) as u32, v));
                        e[g * k + j0 + jj] += v;
                        scratch[jj] = 0.0;
                        seen[jj] = false;
                    }
                    touched.clear();
                }
            }
        }
        for (gd, av) in group.iter().zip(active) {
            for (&g, &a) in gd.iter().zip(av) {
                if a {
                    e[k * k + g as usize] += 1.0;
                }
            }
        }
        reduce.sum(&mut e);
        let n = e.split_off(k * k);
        // Symmetrise (rounding), add the null-space term, keep empty groups out of the way.
        for i in 0..k {
            for j in 0..i {
                let m = 0.5 * (e[i * k + j] + e[j * k + i]);
                e[i * k + j] = m;
                e[j * k + i] = m;
            }
        }
        for i in 0..k {
            for j in 0..k {
                e[i * k + j] += c_null * n[i] * n[j];
            }
            if n[i] == 0.0 {
                e[i * k + i] = 1.0;
            }
        }
        let (chol, dropped) =
            cholesky(e, k, 1e-8, Pivots::Drop).expect("dropping pivots never refuses");
        if dropped.iter().all(|&d| d) {
            return None;
        }
        // Triplets are in block order; sort them into rows (stable: columns stay ascending).
        let mut row_ptr = vec![0usize; nflat + 1];
        for t in &triplets {
            row_ptr[t.0 + 1] += 1;
        }
        for b in 0..nflat {
            row_ptr[b + 1] += row_ptr[b];
        }
        let mut next = row_ptr.clone();
        let mut cols = vec![0u32; triplets.len()];
        let mut vals = vec![0.0; triplets.len()];
        for (b, j, v) in triplets {
            cols[next[b]] = j;
            vals[next[b]] = v;
            next[b] += 1;
        }
        Some(Self {
            k,
            group,
            first,
            row_ptr,
            cols,
            vals,
            n,
            chol,
            c_null,
            dropped,
        })
    }

    /// `out += Zᵀ r` over this process's baselines.
    fn restrict(&self, r: &[Vec<f64>], active: &[Vec<bool>], out: &mut [f64]) {
        for ((rv, av), gd) in r.iter().zip(active).zip(&self.group) {
            for ((x, &a), &g) in rv.iter().zip(av).zip(gd) {
                if a {
                    out[g as usize] += x;
                }
            }
        }
    }

    /// `out += (Fᵀ Z F Z)ᵀ z` over this process's baselines (the `c n uᵀ z` term is added by
    /// [`Coarse::finish_projection`] after the sum over processes).
    fn az_transpose(&self, z: &[Vec<f64>], out: &mut [f64]) {
        for (d, zv) in z.iter().enumerate() {
            for (kb, &x) in zv.iter().enumerate() {
                let b = self.first[d] + kb;
                for e in self.row_ptr[b]..self.row_ptr[b + 1] {
                    out[self.cols[e] as usize] += self.vals[e] * x;
                }
            }
        }
    }

    /// From summed `[(AZ)ᵀ z, uᵀ z]`, the coarse coefficients `E⁻¹ (A'Z)ᵀ z` in place.
    fn finish_projection(&self, az_t: &mut [f64], u_z: f64) {
        for (v, n) in az_t.iter_mut().zip(&self.n) {
            *v += self.c_null * n * u_z;
        }
        self.solve(az_t);
    }

    /// `v ← E⁻¹ v` with the Cholesky factor.
    fn solve(&self, v: &mut [f64]) {
        for (x, &d) in v.iter_mut().zip(&self.dropped) {
            if d {
                *x = 0.0;
            }
        }
        cholesky_solve(&self.chol, self.k, v);
    }

    /// `out += scale · Z y` on the baselines with data.
    fn prolong(&self, y: &[f64], scale: f64, active: &[Vec<bool>], out: &mut [Vec<f64>]) {
        for ((ov, av), gd) in out.iter_mut().zip(active).zip(&self.group) {
            for ((o, &a), &g) in ov.iter_mut().zip(av).zip(gd) {
                if a {
                    *o += scale * y[g as usize];
                }
            }
        }
    }

    /// `out −= A' Z y` (the coarse start's residual), with `A' Z = A Z + c u nᵀ`.
    fn subtract_az(&self, y: &[f64], active: &[Vec<bool>], out: &mut [Vec<f64>]) {
        let ny: f64 = self.n.iter().zip(y).map(|(n, y)| n * y).sum();
        for (d, (ov, av)) in out.iter_mut().zip(active).enumerate() {
            for (kb, (o, &a)) in ov.iter_mut().zip(av).enumerate() {
                let b = self.first[d] + kb;
                let mut s = 0.0;
                for e in self.row_ptr[b]..self.row_ptr[b + 1] {
                    s += self.vals[e] * y[self.cols[e] as usize];
                }
                if a {
                    s += self.c_null * ny;
                }
                *o -= s;
            }
        }
    }
}

/// A dense diagonal block of the preconditioner: the exact `A'` restricted to some baselines.
#[derive(Debug)]
struct Block {
    /// `(timestream, baseline)` of each row.
    members: Vec<(u32, u32)>,
    /// Lower Cholesky factor of the block, row-major.
    chol: Vec<f64>,
}

/// The block-Jacobi level of the preconditioner: the baselines of each group of timestreams
/// (in windows of at most `block_baselines` baselines) form one block, inverted exactly. It
/// captures the near-null modes that live inside a group, such as a detector pair's offset
/// difference mimicking polarisation in poorly cross-linked pixels.
#[derive(Debug, Default)]
struct BlockJacobi {
    blocks: Vec<Block>,
}

impl BlockJacobi {
    /// Assemble and factorise the blocks (local: a block's rows are this process's baselines,
    /// and `C⁻¹` is already summed over processes).
    fn build(
        proj: &Projector,
        block_baselines: usize,
        weight: &[Vec<f64>],
        active: &[Vec<bool>],
        c_null: f64,
    ) -> Self {
        let data = proj.data;
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (d, ts) in data.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| *g == ts.group) {
                Some((_, v)) => v.push(d),
                None => groups.push((ts.group, vec![d])),
            }
        }
        let mut blocks = Vec::new();
        for (_, dets) in groups {
            let longest = dets.iter().map(|&d| weight[d].len()).max().unwrap_or(0);
            let window = (block_baselines / dets.len()).max(1);
            for t0 in (0..longest).step_by(window) {
                let members: Vec<(u32, u32)> = dets
                    .iter()
                    .flat_map(|&d| {
                        (t0..(t0 + window).min(weight[d].len()))
                            .filter(move |&kb| active[d][kb])
                            .map(move |kb| (d as u32, kb as u32))
                    })
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let a = block_matrix(proj, &members, weight, c_null);
                let n = members.len();
                // A tiny ridge keeps blocks with exact null modes (unlinked sky) positive.
                let mut a = a;
                for (i, &(d, kb)) in members.iter().enumerate() {
                    a[i * n + i] += 1e-10 * weight[d as usize][kb as usize];
                }
                let chol = match cholesky(a, n, 1e-13, Pivots::Refuse) {
                    Some((c, _)) => c,
                    None => {
                        // Fall back to the diagonal of Fᵀ N⁻¹ F for this block.
                        let mut c = vec![0.0; n * n];
                        for (i, &(d, kb)) in members.iter().enumerate() {
                            c[i * n + i] = weight[d as usize][kb as usize].sqrt();
                        }
                        c
                    }
                };
                blocks.push(Block { members, chol });
            }
        }
        Self { blocks }
    }

    /// `z ← M⁻¹ r` on the baselines in blocks.
    fn apply(&self, r: &[Vec<f64>], z: &mut [Vec<f64>], scratch: &mut Vec<f64>) {
        for b in &self.blocks {
            let n = b.members.len();
            scratch.clear();
            scratch.extend(b.members.iter().map(|&(d, kb)| r[d as usize][kb as usize]));
            cholesky_solve(&b.chol, n, scratch);
            for (&(d, kb), v) in b.members.iter().zip(scratch.iter()) {
                z[d as usize][kb as usize] = *v;
            }
        }
    }
}

/// The block of `A' = Fᵀ Z F + c u uᵀ` on `members`: `W_k δ_kk' + c − Σ_p v_kpᵀ C_p⁻¹ v_k'p`
/// with `v_kp = Σ_{i ∈ k, pᵢ = p} wᵢ / σ²`, row-major.
fn block_matrix(
    proj: &Projector,
    members: &[(u32, u32)],
    weight: &[Vec<f64>],
    c_null: f64,
) -> Vec<f64> {
    let nnz = proj.comps.nnz();
    let l = proj.l;
    let n = members.len();
    let mut a = vec![c_null; n * n];
    // (record, row, weighted Stokes weights) of every good sample, merged per (record, row).
    let mut hits: Vec<(u32, u32, [f64; 3])> = Vec::new();
    for (row, &(d, kb)) in members.iter().enumerate() {
        let (d, kb) = (d as usize, kb as usize);
        a[row * n + row] += weight[d][kb];
        let ts = &proj.data[d];
        for i in kb * l..((kb + 1) * l).min(ts.pixels.len()) {
            if proj.good[d][i] {
                let w = ts.weights[i];
                let v = ts.inv_var;
                hits.push((
                    proj.rec[d][i] / nnz as u32,
                    row as u32,
                    [w[0] * v, w[1] * v, w[2] * v],
                ));
            }
        }
    }
    hits.sort_unstable_by_key(|h| (h.0, h.1));
    let mut merged: Vec<(u32, u32, [f64; 3])> = Vec::with_capacity(hits.len());
    for h in hits {
        match merged.last_mut() {
            Some(m) if m.0 == h.0 && m.1 == h.1 => {
                for c in 0..3 {
                    m.2[c] += h.2[c];
                }
            }
            _ => merged.push(h),
        }
    }
    let mut start = 0;
    while start < merged.len() {
        let q = merged[start].0;
        let end = start + merged[start..].iter().take_while(|h| h.0 == q).count();
        let q = q as usize;
        let solved: Vec<[f64; 3]> = merged[start..end]
            .iter()
            .map(|h| match proj.comps {
                Components::I => [h.2[0] * proj.binned.inv_cov[q], 0.0, 0.0],
                Components::Iqu => {
                    let ic = &proj.binned.inv_cov[q * 6..q * 6 + 6];
                    crate::binning::apply_sym3(&[ic[0], ic[1], ic[2], ic[3], ic[4], ic[5]], h.2)
                }
            })
            .collect();
        for hx in &merged[start..end] {
            let (r, v) = (hx.1 as usize, hx.2);
            for (hy, m) in merged[start..end].iter().zip(&solved) {
                a[r * n + hy.1 as usize] -= v[0] * m[0] + v[1] * m[1] + v[2] * m[2];
            }
        }
        start = end;
    }
    a
}

/// Destripe the timestreams held by this process; `reduce` sums over all processes (use
/// [`SingleProcess`] when this process holds all the data). Returns the baselines, the
/// convergence report and the binned maps before and after.
pub fn destripe<R: Reduce + ?Sized>(
    data: &[Timestream],
    layout: SubmapLayout,
    comps: Components,
    cfg: &DestripeConfig,
    reduce: &mut R,
) -> Result<Destriped, DestripeError> {
    if cfg.baseline_length == 0 {
        return Err(DestripeError::Config("baseline_length must be at least 1"));
    }
    if !(cfg.tolerance.is_finite() && cfg.tolerance >= 0.0) {
        return Err(DestripeError::Config(
            "tolerance must be finite and non-negative",
        ));
    }
    if cfg.coarse_segments == 0 {
        return Err(DestripeError::Config("coarse_segments must be at least 1"));
    }
    let per_group = cfg.coarse_detectors.max(1);
    if cfg
        .coarse_groups
        .saturating_mul(per_group)
        .saturating_mul(cfg.coarse_segments)
        > MAX_COARSE_GROUPS
    {
        return Err(DestripeError::Config(
            "coarse_groups × coarse_detectors × coarse_segments must be at most MAX_COARSE_GROUPS",
        ));
    }
    if let Some(d) = data
        .iter()
        .position(|ts| cfg.coarse_groups > 0 && ts.group >= cfg.coarse_groups)
    {
        return Err(DestripeError::Group {
            detector: d,
            group: data[d].group,
            groups: cfg.coarse_groups,
        });
    }
    // Coarse template of each timestream (before the split into segments).
    let mut template = Vec::with_capacity(data.len());
    let mut seen_in_group: Vec<(usize, usize)> = Vec::new();
    for (d, ts) in data.iter().enumerate() {
        if cfg.coarse_detectors == 0 {
            template.push(ts.group);
            continue;
        }
        let j = match seen_in_group.iter_mut().find(|(g, _)| *g == ts.group) {
            Some((_, count)) => {
                *count += 1;
                *count - 1
            }
            None => {
                seen_in_group.push((ts.group, 1));
                0
            }
        };
        if j >= cfg.coarse_detectors {
            return Err(DestripeError::GroupSize {
                detector: d,
                group: ts.group,
                detectors: cfg.coarse_detectors,
            });
        }
        template.push(ts.group * cfg.coarse_detectors + j);
    }
    let l = cfg.baseline_length;
    // 1. Hits, matrix and right-hand side of the raw data; binned map.
    let mut acc = BinAccumulator::new(layout, comps);
    for (d, ts) in data.iter().enumerate() {
        acc.accumulate(ts.pixels, ts.weights, ts.signal, ts.flags, ts.inv_var)
            .map_err(|source| DestripeError::Detector {
                detector: d,
                source,
            })?;
    }
    reduce.reduce_map(acc.map_mut());
    let binned = acc.solve(cfg.rcond_min);

    // 2. Good samples and their record offsets in a right-hand-side map of the same slots.
    let nnz = comps.nnz();
    let mut rhs = SparseMap::new(layout, nnz);
    for &sm in acc.map().slots() {
        rhs.allocate(sm).expect("sub-map of the same layout");
    }
    assert!(
        rhs.values().len() < u32::MAX as usize,
        "local map too large for u32 offsets"
    );
    let mut good = Vec::with_capacity(data.len());
    let mut rec = Vec::with_capacity(data.len());
    for ts in data {
        let mut g = vec![false; ts.pixels.len()];
        let mut r = vec![0u32; ts.pixels.len()];
        for (i, &p) in ts.pixels.iter().enumerate() {
            if ts.flags.is_some_and(|f| f[i] != 0) || binned.value(p).is_none() {
                continue;
            }
            g[i] = true;
            r[i] = rhs.record_offset(p).expect("observed pixel is allocated") as u32;
        }
        good.push(g);
        rec.push(r);
    }
    let nbase: Vec<usize> = data.iter().map(|ts| ts.pixels.len().div_ceil(l)).collect();
    // Preconditioner: 1 / Σ_{good} 1/σ² per baseline; u = indicator of baselines with data.
    let mut precond: Vec<Vec<f64>> = nbase.iter().map(|&n| vec![0.0; n]).collect();
    for (d, ts) in data.iter().enumerate() {
        for (i, &g) in good[d].iter().enumerate() {
            if g {
                precond[d][i / l] += ts.inv_var;
            }
        }
    }
    let weight = precond.clone();
    let mut stats = [0.0, 0.0]; // [Σ diag, n active]
    for p in precond.iter_mut().flatten() {
        if *p > 0.0 {
            stats[0] += *p;
            stats[1] += 1.0;
            *p = 1.0 / *p;
        }
    }
    reduce.sum(&mut stats);
    let c_null = if stats[1] > 0.0 {
        stats[0] / (stats[1] * stats[1])
    } else {
        0.0
    };
    let active: Vec<Vec<bool>> = precond
        .iter()
        .map(|v| v.iter().map(|&p| p > 0.0).collect())
        .collect();

    let mut proj = Projector {
        data,
        good,
        rec,
        comps,
        binned: &binned,
        rhs,
        l,
    };
    let zeros = || -> Vec<Vec<f64>> { nbase.iter().map(|&n| vec![0.0; n]).collect() };
    let blocks = if cfg.block_baselines > 0 {
        BlockJacobi::build(&proj, cfg.block_baselines, &weight, &active, c_null)
    } else {
        BlockJacobi::default()
    };

    // 3. Right-hand side b = Fᵀ Z d.
    let mut b = zeros();
    proj.apply_z(reduce, |d, i| data[d].signal[i], &mut b);

    // Operator A' x = Fᵀ Z F x + c u (uᵀ x).
    let apply = |proj: &mut Projector, reduce: &mut R, x: &[Vec<f64>], out: &mut [Vec<f64>]| {
        proj.apply_z(reduce, |d, i| x[d][i / l], out);
        let mut s = [x
            .iter()
            .zip(&active)
            .map(|(xv, av)| {
                xv.iter()
                    .zip(av)
                    .filter(|(_, a)| **a)
                    .map(|(v, _)| v)
                    .sum::<f64>()
            })
            .sum::<f64>()];
        reduce.sum(&mut s);
        for (o, av) in out.iter_mut().zip(&active) {
            for (y, &a) in o.iter_mut().zip(av) {
                if a {
                    *y += c_null * s[0];
                }
            }
        }
    };

    // 4. The coarse level (two-level preconditioner), if configured and well posed.
    let coarse = if cfg.coarse_groups > 0 {
        Coarse::build(
            &proj,
            cfg.coarse_groups * per_group * cfg.coarse_segments,
            cfg.coarse_segments,
            &template,
            &weight,
            &active,
            c_null,
            reduce,
        )
    } else {
        None
    };
    drop(weight);
    let k = coarse.as_ref().map_or(0, |c| c.k);
    let coarse_dimension = coarse
        .as_ref()
        .map_or(0, |c| c.dropped.iter().filter(|&&d| !d).count());

    // 5. Deflated preconditioned CG (Saad, Yeung, Erhel & Guyomarc'h 2000; the two-level
    // preconditioner of Szydlarski et al. 2014): start from the coarse solution
    // x₀ = Z E⁻¹ Zᵀ b, so that Zᵀ r₀ = 0, and keep the search directions A'-orthogonal to
    // range(Z): p ← z + β p − Z E⁻¹ (A'Z)ᵀ z. One operator application per iteration, as
    // without the coarse level; the coarse terms ride on the dot products' reduction.
    let mut x = zeros();
    let mut r = b.clone();
    let mut z = zeros();
    let mut scratch = Vec::new();
    let mut precondition = |r: &[Vec<f64>], z: &mut [Vec<f64>]| {
        for ((zv, rv), mv) in z.iter_mut().zip(r).zip(&precond) {
            for ((zz, rr), mm) in zv.iter_mut().zip(rv).zip(mv) {
                *zz = rr * mm;
            }
        }
        blocks.apply(r, z, &mut scratch);
    };
    let mut bb = [dot(&b, &b)];
    reduce.sum(&mut bb);
    let b_norm = bb[0].sqrt();
    if let Some(cz) = &coarse {
        let mut y = vec![0.0; k];
        cz.restrict(&b, &active, &mut y);
        reduce.sum(&mut y);
        cz.solve(&mut y);
        cz.prolong(&y, 1.0, &active, &mut x);
        cz.subtract_az(&y, &active, &mut r);
    }
    // Sums after each preconditioning: [r·r, r·z, uᵀz, (AZ)ᵀz (k values)].
    let mut sums = vec![0.0; 3 + k];
    let mut precondition_and_sum =
        |reduce: &mut R, r: &[Vec<f64>], z: &mut [Vec<f64>], sums: &mut [f64]| {
            precondition(r, z);
            sums.fill(0.0);
            sums[0] = dot(r, r);
            sums[1] = dot(r, z);
            if let Some(cz) = &coarse {
                sums[2] = z
                    .iter()
                    .zip(&active)
                    .map(|(zv, av)| {
                        zv.iter()
                            .zip(av)
                            .filter(|(_, a)| **a)
                            .map(|(v, _)| v)
                            .sum::<f64>()
                    })
                    .sum();
                cz.az_transpose(z, &mut sums[3..]);
            }
            reduce.sum(sums);
            if let Some(cz) = &coarse {
                let u_z = sums[2];
                cz.finish_projection(&mut sums[3..], u_z);
            }
        };
    precondition_and_sum(reduce, &r, &mut z, &mut sums);
    let mut rz = sums[1];
    let mut p = z.clone();
    if let Some(cz) = &coarse {
        cz.prolong(&sums[3..], -1.0, &active, &mut p);
    }
    let mut q = zeros();
    let relative = |rr: f64| {
        if b_norm > 0.0 {
            rr.sqrt() / b_norm
        } else {
            0.0
        }
    };
    let mut residual = relative(sums[0]);
    let mut history = vec![residual];
    let mut iterations = 0;
    let mut converged = b_norm == 0.0 || residual <= cfg.tolerance;
    while !converged && iterations < cfg.max_iterations {
        apply(&mut proj, reduce, &p, &mut q);
        let mut pq = [dot(&p, &q)];
        reduce.sum(&mut pq);
        if pq[0].is_nan() || pq[0] <= 0.0 {
            break; // breakdown: the Krylov space is exhausted.
        }
        let alpha = rz / pq[0];
        for (((xv, rv), pv), qv) in x.iter_mut().zip(r.iter_mut()).zip(&p).zip(&q) {
            for (((xx, rr), pp), qq) in xv.iter_mut().zip(rv.iter_mut()).zip(pv).zip(qv) {
                *xx += alpha * pp;
                *rr -= alpha * qq;
            }
        }
        precondition_and_sum(reduce, &r, &mut z, &mut sums);
        iterations += 1;
        residual = relative(sums[0]);
        history.push(residual);
        if residual <= cfg.tolerance {
            converged = true;
            break;
        }
        let beta = sums[1] / rz;
        rz = sums[1];
        for (pv, zv) in p.iter_mut().zip(&z) {
            for (pp, zz) in pv.iter_mut().zip(zv) {
                *pp = zz + beta * *pp;
            }
        }
        if let Some(cz) = &coarse {
            cz.prolong(&sums[3..], -1.0, &active, &mut p);
        }
    }

    // 6. The destriped map: bin d − F a (good samples) and solve with the same matrices.
    proj.bin_and_solve(reduce, |d, i| data[d].signal[i] - x[d][i / l], true);
    let mut destriped = binned.clone();
    for (k, v) in destriped.values.iter_mut().enumerate() {
        if *v != crate::binning::UNSEEN {
            *v = proj.rhs.values()[k];
        }
    }
    debug_assert_eq!(destriped.values.len(), proj.rhs.values().len());
    Ok(Destriped {
        baselines: x,
        iterations,
        residual,
        residual_history: history,
        converged,
        coarse_dimension,
        binned,
        destriped,
    })
}
