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
//! is the identity; an MPI stage implements it as an allreduce over the union of touched
//! sub-maps, in bounded chunks. Everything else is local to the detectors a process holds.
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
//! **Preconditioner.** The inverse of `Fᵀ N⁻¹ F`: `σ² / n_k` for a baseline of `n_k` good
//! samples (the standard MADAM / TOAST choice).
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
//! let ts = Timestream { pixels: &pixels, weights: &weights, signal: &signal, flags: None, inv_var: 1.0 };
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
}

/// The steps that need all processes: summing a sparse map and summing scalars.
///
/// Implementations must leave every process with the same sums (an allreduce). For a map, a
/// process needs the reduced values only in the sub-maps it has allocated itself: an MPI
/// implementation is [`crate::binning::touched_mask`] reduced once per map for the union, then
/// [`crate::binning::reduce_in_chunks`] around `MPI_Allreduce`. The destriper calls
/// [`Reduce::reduce_map`] once for the matrix and once for the final map,
/// [`Reduce::reduce_map_where_held`] once per operator application (the right-hand side and
/// each CG iteration), and [`Reduce::sum`] with one to three scalars per dot product.
pub trait Reduce {
    /// Sum `map` over all processes, in place.
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
}

impl Default for DestripeConfig {
    /// `baseline_length` 1000, tolerance 1e-10, 200 iterations, rcond cut 1e-3.
    fn default() -> Self {
        Self {
            baseline_length: 1000,
            tolerance: 1e-10,
            max_iterations: 200,
            rcond_min: 1e-3,
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

    // 4. Preconditioned CG from x = 0.
    let mut x = zeros();
    let mut r = b.clone();
    let mut z = zeros();
    let precondition = |r: &[Vec<f64>], z: &mut [Vec<f64>]| {
        for ((zv, rv), mv) in z.iter_mut().zip(r).zip(&precond) {
            for ((zz, rr), mm) in zv.iter_mut().zip(rv).zip(mv) {
                *zz = rr * mm;
            }
        }
    };
    precondition(&r, &mut z);
    let mut s = [dot(&b, &b), dot(&r, &z)];
    reduce.sum(&mut s);
    let b_norm = s[0].sqrt();
    let mut rz = s[1];
    let mut p = z.clone();
    let mut q = zeros();
    let mut history = vec![if b_norm > 0.0 { 1.0 } else { 0.0 }];
    let mut residual = history[0];
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
        precondition(&r, &mut z);
        let mut s = [dot(&r, &r), dot(&r, &z)];
        reduce.sum(&mut s);
        iterations += 1;
        residual = s[0].sqrt() / b_norm;
        history.push(residual);
        if residual <= cfg.tolerance {
            converged = true;
            break;
        }
        let beta = s[1] / rz;
        rz = s[1];
        for (pv, zv) in p.iter_mut().zip(&z) {
            for (pp, zz) in pv.iter_mut().zip(zv) {
                *pp = zz + beta * *pp;
            }
        }
    }

    // 5. The destriped map: bin d − F a (good samples) and solve with the same matrices.
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
        binned,
        destriped,
    })
}
