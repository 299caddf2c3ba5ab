//! Lanczos3 resampling of an image, its variance and its mask plane onto another pixel grid
//! (the warp of a CCD onto a coadd patch).
//!
//! # Conventions
//! - Images are row-major, `index = y · width + x`, pixel centres at integer 0-based
//!   coordinates (pixel `x` covers `[x − ½, x + ½)`).
//! - The mapping takes a **target** pixel centre `[x, y]` to the **source** position `[x, y]`
//!   (0-based; callers using FITS/WCSLIB 1-based pixels subtract 1 on both sides). A source
//!   position that does not exist (e.g. beyond a projection's boundary) is `NaN`.
//! - The mapping is evaluated exactly only on the nodes of a [`CoarseMap`] (every `step` target
//!   pixels along both axes) and bilinearly interpolated in between.
//!   [`CoarseMap::max_interpolation_error`] measures the error this gives against the exact
//!   mapping on any set of pixels; for a TAN CCD onto a TAN patch a few degrees apart at
//!   0.2″ pixels, a step of 32 stays below 10⁻³ pixel (`tests::coarse_grid_error_of_tan_like_mapping`
//!   checks the bound `step² · max|∂²f| / 8`).
//!
//! # Kernel
//! The 1-D Lanczos3 kernel `L(d) = sinc(d) sinc(d/3)` for `|d| < 3` (0 beyond) is tabulated
//! at 1/1024 pixel and linearly interpolated (normalised weights within 10⁻⁵ of the exact
//! kernel's, checked by `tests::lanczos3_known_values`; exact zeros at integer offsets so
//! integer shifts copy pixels). For a source position `x` with
//! `x₀ = ⌊x⌋`, the six taps `x₀−2 … x₀+3` get weights `L(x − i)`, normalised to sum 1 (so a flat
//! image stays flat); the 2-D weight is the product of the x and y weights (6 + 6 weights per
//! output pixel, 36 products).
//!
//! # Flux, variance and mask
//! - **Units.** The output is in the input's units per *output* pixel, times
//!   `flux_scale` (the common zero-point factor, e.g. `10^(−0.4 (zp_ccd − zp_common))`) times the
//!   pixel-area ratio `|det ∂(source)/∂(target)|` (source pixels per target pixel), so the sum
//!   over the output of a star's pixels equals its sum over the input whatever the two pixel
//!   scales. [`FluxScaling::Fixed`] takes the ratio once at the centre of the target grid
//!   (SWarp's default `FSCALASTRO_TYPE FIXED`); [`FluxScaling::Local`] takes it per pixel from
//!   the coarse grid (SWarp's `VARIABLE`), which conserves flux also where the scale varies
//!   across the field; [`FluxScaling::None`] keeps surface brightness per source pixel.
//! - **Variance** is propagated as for any linear combination, `σ²_out = s² Σ w² σ²_in`
//!   (`s` = flux scale × area ratio), which is exact for each output pixel taken alone. Neighbouring
//!   output pixels share input pixels, so the output noise is correlated (its pixel-to-pixel
//!   covariance is not represented): the variance of a sum of many warped pixels is larger
//!   than the sum of their variances, and for a shifted image of white noise the per-pixel
//!   variance is smaller than the input's (Σ w² < 1 for a fractional shift).
//! - **Mask.** The output mask is the OR of the mask bits of every input pixel whose 2-D weight
//!   magnitude is at least [`WarpParams::mask_weight_threshold`]. Input values are used as they
//!   are (masked pixels included): a caller wanting masked pixels out of the sum replaces them
//!   first (an input `NaN` makes the output `NaN`).
//! - **No data.** Taps whose 1-D weight is below 10⁻⁵ in magnitude are dropped (this is what
//!   makes identity and integer shifts exact); if any remaining tap falls outside the source
//!   image, or the source position is undefined, the output pixel gets value and variance
//!   `NaN` and the mask bit [`WarpParams::no_data_bit`] only.

use std::sync::OnceLock;

/// Half-width of the Lanczos kernel (Lanczos3: taps within ±3 pixels).
pub const LANCZOS_A: usize = 3;
/// Table points per pixel of the tabulated kernel.
const TABLE_PER_PIXEL: usize = 1024;
/// 1-D weights below this magnitude are treated as zero (tap dropped).
const NEGLIGIBLE_WEIGHT: f64 = 1e-5;

/// Why a warp could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WarpError {
    /// An image plane's length does not match its width × height.
    #[error("{plane} has {len} values but the image is {width} × {height}")]
    Shape {
        /// Which plane: "image", "variance" or "mask".
        plane: &'static str,
        /// Values given.
        len: usize,
        /// Image width.
        width: usize,
        /// Image height.
        height: usize,
    },
    /// The coarse grid step or the target size is zero.
    #[error("coarse grid step {step} and target size {width} × {height} must all be positive")]
    Grid {
        /// Node spacing in target pixels.
        step: usize,
        /// Target width.
        width: usize,
        /// Target height.
        height: usize,
    },
    /// The mapping returned a different number of positions than it was asked for.
    #[error("mapping returned {got} positions for {asked} pixels")]
    MappingLength {
        /// Positions asked for.
        asked: usize,
        /// Positions returned.
        got: usize,
    },
}

/// The exact Lanczos3 kernel `sinc(d) sinc(d/3)` (0 for `|d| ≥ 3`), `sinc(x) = sin(πx)/(πx)`.
pub fn lanczos3(d: f64) -> f64 {
    let d = d.abs();
    if d >= LANCZOS_A as f64 {
        return 0.0;
    }
    if d < 1e-12 {
        return 1.0;
    }
    let a = LANCZOS_A as f64;
    let pd = std::f64::consts::PI * d;
    a * pd.sin() * (pd / a).sin() / (pd * pd)
}

/// The tabulated kernel on `[0, 3]` at 1/1024 pixel, with one trailing zero.
fn table() -> &'static [f64] {
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let n = LANCZOS_A * TABLE_PER_PIXEL;
        (0..=n + 1)
            .map(|i| {
                if i % TABLE_PER_PIXEL == 0 && i > 0 {
                    0.0 // exact zeros at integer offsets
                } else {
                    lanczos3(i as f64 / TABLE_PER_PIXEL as f64)
                }
            })
            .collect()
    })
}

/// The six normalised 1-D weights for source coordinate `x` (taps `⌊x⌋−2 … ⌊x⌋+3`), negligible
/// ones set to exactly zero, and the first tap index.
pub fn lanczos3_weights(x: f64) -> ([f64; 6], i64) {
    let x0 = x.floor();
    (weights_at(table(), x - x0), x0 as i64 - 2)
}

/// The normalised weights of the taps at offsets `f + 2, f + 1, …, f − 3` (`f` in `[0, 1)`).
/// The table indices of the six offsets are `1024` apart, so two index/fraction pairs serve
/// all six: one for the taps at or left of `x` (offset `f + m`), one for those right of it
/// (offset `m + 1 − f`).
#[inline]
fn weights_at(table: &[f64], f: f64) -> [f64; 6] {
    let n = TABLE_PER_PIXEL;
    let t = f * n as f64;
    let i = (t as usize).min(n - 1);
    let fr = t - i as f64;
    let u = n as f64 - t;
    let j = (u as usize).min(n);
    let ur = u - j as f64;
    let lerp = |k: usize, r: f64| table[k] + r * (table[k + 1] - table[k]);
    let mut w = [
        lerp(2 * n + i, fr),
        lerp(n + i, fr),
        lerp(i, fr),
        lerp(j, ur),
        lerp(n + j, ur),
        lerp(2 * n + j, ur),
    ];
    let mut sum = 0.0;
    for wk in &mut w {
        if wk.abs() < NEGLIGIBLE_WEIGHT {
            *wk = 0.0;
        }
        sum += *wk;
    }
    let inv = 1.0 / sum;
    w.map(|wk| wk * inv)
}

/// The target → source mapping evaluated exactly on a coarse grid of the target image and
/// interpolated bilinearly in between.
#[derive(Debug, Clone)]
pub struct CoarseMap {
    width: usize,
    height: usize,
    step: usize,
    nx: usize,
    ny: usize,
    /// Source positions at the nodes, row-major `ny × nx`.
    nodes: Vec<[f64; 2]>,
    /// `|det J|` (source pixels per target pixel) at the nodes, from node differences.
    area: Vec<f64>,
    /// The area ratio at the centre of the target (the median over defined nodes if the
    /// centre has none), for [`FluxScaling::Fixed`].
    fixed_area: f64,
}

impl CoarseMap {
    /// Evaluates `map` once, on all nodes at target pixels `(i·step, j·step)` covering a
    /// `width × height` target (the last node row/column may lie past the edge). `map` gets the
    /// node positions and returns one source position per node (`[NaN, NaN]` where undefined).
    pub fn new(
        width: usize,
        height: usize,
        step: usize,
        map: impl FnOnce(&[[f64; 2]]) -> Vec<[f64; 2]>,
    ) -> Result<Self, WarpError> {
        if step == 0 || width == 0 || height == 0 {
            return Err(WarpError::Grid {
                step,
                width,
                height,
            });
        }
        let nx = (width - 1).div_ceil(step).max(1) + 1;
        let ny = (height - 1).div_ceil(step).max(1) + 1;
        let points: Vec<[f64; 2]> = (0..ny)
            .flat_map(|j| (0..nx).map(move |i| [(i * step) as f64, (j * step) as f64]))
            .collect();
        let nodes = map(&points);
        if nodes.len() != points.len() {
            return Err(WarpError::MappingLength {
                asked: points.len(),
                got: nodes.len(),
            });
        }
        let h = step as f64;
        let at = |i: usize, j: usize| nodes[j * nx + i];
        let finite = |p: [f64; 2]| p[0].is_finite() && p[1].is_finite();
        // Derivative along one axis at node (i, j): central difference, or one-sided where a
        // neighbour is missing or undefined.
        let derivative = |i: usize, j: usize, along_x: bool| -> [f64; 2] {
            let (n, k) = if along_x { (nx, i) } else { (ny, j) };
            let node = |k: usize| if along_x { at(k, j) } else { at(i, k) };
            let pairs = [
                (k.checked_sub(1), (k + 1 < n).then_some(k + 1)),
                (Some(k), (k + 1 < n).then_some(k + 1)),
                (k.checked_sub(1), Some(k)),
            ];
            for (lo, hi) in pairs {
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    let (a, b) = (node(hi), node(lo));
                    if finite(a) && finite(b) {
                        let d = (hi - lo) as f64 * h;
                        return [(a[0] - b[0]) / d, (a[1] - b[1]) / d];
                    }
                }
            }
            [f64::NAN; 2]
        };
        let mut area = Vec::with_capacity(nodes.len());
        for j in 0..ny {
            for i in 0..nx {
                let [sxx, syx] = derivative(i, j, true);
                let [sxy, syy] = derivative(i, j, false);
                area.push((sxx * syy - sxy * syx).abs());
            }
        }
        let mut map = Self {
            width,
            height,
            step,
            nx,
            ny,
            nodes,
            area,
            fixed_area: f64::NAN,
        };
        map.fixed_area = map.area_ratio((width - 1) as f64 / 2.0, (height - 1) as f64 / 2.0);
        if !map.fixed_area.is_finite() {
            // The centre has no source position: the median over the defined nodes.
            let mut defined: Vec<f64> =
                map.area.iter().copied().filter(|a| a.is_finite()).collect();
            defined.sort_by(f64::total_cmp);
            map.fixed_area = defined.get(defined.len() / 2).copied().unwrap_or(f64::NAN);
        }
        Ok(map)
    }

    /// Target width and height.
    pub fn target_shape(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Cell index and bilinear fractions of target position `(x, y)`.
    fn cell(&self, x: f64, y: f64) -> (usize, usize, f64, f64) {
        let h = self.step as f64;
        let i = ((x / h).floor().max(0.0) as usize).min(self.nx - 2);
        let j = ((y / h).floor().max(0.0) as usize).min(self.ny - 2);
        (i, j, x / h - i as f64, y / h - j as f64)
    }

    fn bilinear<T: Copy>(&self, v: &[T], x: f64, y: f64, f: impl Fn(T) -> [f64; 2]) -> [f64; 2] {
        let (i, j, u, t) = self.cell(x, y);
        let k = j * self.nx + i;
        let (a, b, c, d) = (
            f(v[k]),
            f(v[k + 1]),
            f(v[k + self.nx]),
            f(v[k + self.nx + 1]),
        );
        let mut out = [0.0; 2];
        for (n, o) in out.iter_mut().enumerate() {
            *o = (1.0 - t) * ((1.0 - u) * a[n] + u * b[n]) + t * ((1.0 - u) * c[n] + u * d[n]);
        }
        out
    }

    /// Interpolated source position of target position `(x, y)`.
    pub fn source_of(&self, x: f64, y: f64) -> [f64; 2] {
        self.bilinear(&self.nodes, x, y, |p| p)
    }

    /// The pixel-area ratio used by [`FluxScaling::Fixed`]: at the centre of the target.
    pub fn fixed_area_ratio(&self) -> f64 {
        self.fixed_area
    }

    /// Interpolated pixel-area ratio (source pixels per target pixel) at target `(x, y)`.
    pub fn area_ratio(&self, x: f64, y: f64) -> f64 {
        self.bilinear(&self.area, x, y, |a| [a, 0.0])[0]
    }

    /// The largest distance (source pixels) between the interpolated and the exact mapping
    /// over the target pixels `points` (`exact` maps them as in [`CoarseMap::new`]); pixels
    /// where either is undefined are skipped.
    pub fn max_interpolation_error(
        &self,
        points: &[[f64; 2]],
        exact: impl FnOnce(&[[f64; 2]]) -> Vec<[f64; 2]>,
    ) -> Result<f64, WarpError> {
        let truth = exact(points);
        if truth.len() != points.len() {
            return Err(WarpError::MappingLength {
                asked: points.len(),
                got: truth.len(),
            });
        }
        Ok(points
            .iter()
            .zip(&truth)
            .map(|(p, t)| {
                let s = self.source_of(p[0], p[1]);
                (s[0] - t[0]).hypot(s[1] - t[1])
            })
            .filter(|e| e.is_finite())
            .fold(0.0, f64::max))
    }

    /// Target pixels on a regular grid every `spacing` pixels, offset by half a coarse cell so
    /// they fall between nodes where interpolation errs most (for
    /// [`CoarseMap::max_interpolation_error`]).
    pub fn probe_points(&self, spacing: usize) -> Vec<[f64; 2]> {
        let spacing = spacing.max(1);
        let off = self.step / 2;
        let xs: Vec<usize> = (off.min(self.width - 1)..self.width)
            .step_by(spacing)
            .collect();
        (off.min(self.height - 1)..self.height)
            .step_by(spacing)
            .flat_map(|y| xs.iter().map(move |&x| [x as f64, y as f64]))
            .collect()
    }
}

/// How the pixel-area ratio enters the output scaling (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxScaling {
    /// One ratio, at the centre of the target grid (SWarp `FSCALASTRO_TYPE FIXED`).
    Fixed,
    /// The local ratio at every target pixel (SWarp `VARIABLE`).
    Local,
    /// No area scaling: surface brightness per source pixel.
    None,
}

/// Warp settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarpParams {
    /// Common zero-point factor multiplying the output (its square multiplies the variance).
    pub flux_scale: f64,
    /// Pixel-area scaling of the output.
    pub flux_scaling: FluxScaling,
    /// Mask bit set (alone) on output pixels with no data.
    pub no_data_bit: u32,
    /// Input mask bits propagate from pixels whose |2-D weight| is at least this.
    pub mask_weight_threshold: f64,
}

impl Default for WarpParams {
    /// Flux scale 1, [`FluxScaling::Fixed`], no-data bit `1 << 31`, mask threshold 0.01.
    fn default() -> Self {
        Self {
            flux_scale: 1.0,
            flux_scaling: FluxScaling::Fixed,
            no_data_bit: 1 << 31,
            mask_weight_threshold: 0.01,
        }
    }
}

/// A source image: value, variance and mask planes, row-major `width × height`.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Pixel values.
    pub image: &'a [f32],
    /// Per-pixel variance.
    pub variance: &'a [f32],
    /// Per-pixel mask bits (0 = good).
    pub mask: &'a [u32],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl Source<'_> {
    fn check(&self) -> Result<(), WarpError> {
        let n = self.width * self.height;
        for (plane, len) in [
            ("image", self.image.len()),
            ("variance", self.variance.len()),
            ("mask", self.mask.len()),
        ] {
            if len != n {
                return Err(WarpError::Shape {
                    plane,
                    len,
                    width: self.width,
                    height: self.height,
                });
            }
        }
        Ok(())
    }
}

/// Output rows of a warp: value, variance and mask, each `rows × target width`.
#[derive(Debug)]
pub struct TargetRows<'a> {
    /// Pixel values.
    pub image: &'a mut [f32],
    /// Variances.
    pub variance: &'a mut [f32],
    /// Mask bits.
    pub mask: &'a mut [u32],
}

/// A warped image (the whole target grid).
#[derive(Debug, Clone, PartialEq)]
pub struct Warped {
    /// Pixel values (`NaN` where no data).
    pub image: Vec<f32>,
    /// Variances (`NaN` where no data).
    pub variance: Vec<f32>,
    /// Mask bits.
    pub mask: Vec<u32>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// Warps `source` onto the whole target grid of `map`, single-threaded (see [`warp_parallel`]
/// and [`warp_rows`] to split the rows between threads).
pub fn warp(source: &Source, map: &CoarseMap, params: &WarpParams) -> Result<Warped, WarpError> {
    let (width, height) = map.target_shape();
    let n = width * height;
    let (mut image, mut variance, mut mask) = (vec![0f32; n], vec![0f32; n], vec![0u32; n]);
    warp_rows(
        source,
        map,
        params,
        0,
        TargetRows {
            image: &mut image,
            variance: &mut variance,
            mask: &mut mask,
        },
    )?;
    Ok(Warped {
        image,
        variance,
        mask,
        width,
        height,
    })
}

/// As [`warp`], with the target rows split into chunks of `rows_per_chunk` computed on the
/// current rayon thread pool; the result is identical to [`warp`]'s. Under MPI, where ranks
/// already fill the cores, [`warp`] is the one to call.
pub fn warp_parallel(
    source: &Source,
    map: &CoarseMap,
    params: &WarpParams,
    rows_per_chunk: usize,
) -> Result<Warped, WarpError> {
    use rayon::prelude::*;
    source.check()?;
    let (width, height) = map.target_shape();
    let n = width * height;
    let chunk = rows_per_chunk.max(1) * width;
    let (mut image, mut variance, mut mask) = (vec![0f32; n], vec![0f32; n], vec![0u32; n]);
    image
        .par_chunks_mut(chunk)
        .zip(variance.par_chunks_mut(chunk))
        .zip(mask.par_chunks_mut(chunk))
        .enumerate()
        .try_for_each(|(k, ((image, variance), mask))| {
            let rows = TargetRows {
                image,
                variance,
                mask,
            };
            warp_rows(source, map, params, k * rows_per_chunk.max(1), rows)
        })?;
    Ok(Warped {
        image,
        variance,
        mask,
        width,
        height,
    })
}

/// Warps `source` into target rows `first_row ..` (as many as `out` holds). Disjoint row
/// ranges can be computed by different threads (e.g. `rayon` over chunks of rows); the result
/// does not depend on the split.
pub fn warp_rows(
    source: &Source,
    map: &CoarseMap,
    params: &WarpParams,
    first_row: usize,
    out: TargetRows,
) -> Result<(), WarpError> {
    source.check()?;
    let (width, height) = map.target_shape();
    let rows = out.image.len() / width;
    for (plane, len) in [
        ("image", out.image.len()),
        ("variance", out.variance.len()),
        ("mask", out.mask.len()),
    ] {
        if len != rows * width || first_row + rows > height {
            return Err(WarpError::Shape {
                plane,
                len,
                width,
                height: height - first_row.min(height),
            });
        }
    }
    let (sw, sh) = (source.width as i64, source.height as i64);
    let h = map.step as f64;
    for r in 0..rows {
        let y = (first_row + r) as f64;
        // Along a row the bilinear interpolant is linear within each coarse cell: the source
        // position steps by a constant per pixel from the cell's left edge.
        let (_, j, _, t) = map.cell(0.0, y);
        let edge = |i: usize| {
            let (a, b) = (map.nodes[j * map.nx + i], map.nodes[(j + 1) * map.nx + i]);
            [(1.0 - t) * a[0] + t * b[0], (1.0 - t) * a[1] + t * b[1]]
        };
        let mut x = 0;
        while x < width {
            let i = (x / map.step).min(map.nx - 2);
            let end = if i == map.nx - 2 {
                width
            } else {
                ((i + 1) * map.step).min(width)
            };
            let (left, right) = (edge(i), edge(i + 1));
            let slope = [(right[0] - left[0]) / h, (right[1] - left[1]) / h];
            for x in x..end {
                let o = r * width + x;
                let dx = (x - i * map.step) as f64;
                let (sx, sy) = (left[0] + dx * slope[0], left[1] + dx * slope[1]);
                let area = match params.flux_scaling {
                    FluxScaling::Fixed => map.fixed_area,
                    FluxScaling::Local => map.area_ratio(x as f64, y),
                    FluxScaling::None => 1.0,
                };
                match sample(source, sx, sy, sw, sh, params.mask_weight_threshold) {
                    Some((v, var, m)) => {
                        let s = params.flux_scale * area;
                        out.image[o] = (v * s) as f32;
                        out.variance[o] = (var * s * s) as f32;
                        out.mask[o] = m;
                    }
                    None => {
                        out.image[o] = f32::NAN;
                        out.variance[o] = f32::NAN;
                        out.mask[o] = params.no_data_bit;
                    }
                }
            }
            x = end;
        }
    }
    Ok(())
}

/// Lanczos3 value, variance and mask of `source` at `(sx, sy)`; `None` if a used tap leaves
/// the image or the position is undefined.
#[inline]
fn sample(
    source: &Source,
    sx: f64,
    sy: f64,
    sw: i64,
    sh: i64,
    mask_threshold: f64,
) -> Option<(f64, f64, u32)> {
    // Also rejects NaN, and keeps the tap indices far from overflow.
    if !(sx > -4.0 && sx < (sw + 3) as f64 && sy > -4.0 && sy < (sh + 3) as f64) {
        return None;
    }
    // ⌊s⌋ without a libm call (s > −4 here).
    let (fx, fy) = ((sx + 8.0) as i64 - 8, (sy + 8.0) as i64 - 8);
    let table = table();
    let wx = weights_at(table, sx - fx as f64);
    let wy = weights_at(table, sy - fy as f64);
    let (x0, y0) = (fx - 2, fy - 2);
    let used = |w: &[f64; 6], first: i64, len: i64| {
        w.iter()
            .enumerate()
            .all(|(k, &wk)| wk == 0.0 || (0..len).contains(&(first + k as i64)))
    };
    if !used(&wx, x0, sw) || !used(&wy, y0, sh) {
        return None;
    }
    // Clamp the tap windows to the image; the clamped-away taps have zero weight.
    let kx0 = (-x0).clamp(0, 6) as usize;
    let kx1 = (sw - x0).clamp(0, 6) as usize;
    let ky0 = (-y0).clamp(0, 6) as usize;
    let ky1 = (sh - y0).clamp(0, 6) as usize;
    let (mut v, mut var, mut m) = (0.0, 0.0, 0u32);
    let wx2 = wx.map(|w| w * w);
    for (ky, &wyk) in wy.iter().enumerate().take(ky1).skip(ky0) {
        if wyk == 0.0 {
            continue;
        }
        // Taps of this row whose 2-D weight reaches the mask threshold.
        let mask_min = mask_threshold / wyk.abs();
        let base = (y0 + ky as i64) * sw + x0;
        let (mut rv, mut rvar) = (0.0, 0.0);
        if kx0 == 0 && kx1 == 6 {
            // The whole row of taps inside the image: fixed-size slices, no bounds checks.
            let i = base as usize;
            let img: &[f32; 6] = source.image[i..i + 6].try_into().expect("six taps");
            let vr: &[f32; 6] = source.variance[i..i + 6].try_into().expect("six taps");
            let mk: &[u32; 6] = source.mask[i..i + 6].try_into().expect("six taps");
            for k in 0..6 {
                rv += wx[k] * f64::from(img[k]);
                rvar += wx2[k] * f64::from(vr[k]);
                if wx[k].abs() >= mask_min {
                    m |= mk[k];
                }
            }
        } else {
            for kx in kx0..kx1 {
                let i = (base + kx as i64) as usize;
                rv += wx[kx] * f64::from(source.image[i]);
                rvar += wx2[kx] * f64::from(source.variance[i]);
                if wx[kx].abs() >= mask_min {
                    m |= source.mask[i];
                }
            }
        }
        v += wyk * rv;
        var += wyk * wyk * rvar;
    }
    Some((v, var, m))
}

#[cfg(test)]
mod tests;
