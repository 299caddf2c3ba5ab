//! Noise-weighted binning of timestreams into sparse HEALPix maps, and the per-pixel solve.
//!
//! The sky (`npix` pixels, any ordering) is split by a [`SubmapLayout`] into fixed blocks
//! ("sub-maps") of `submap_size` consecutive pixels, a power of two. A [`SparseMap`] allocates
//! only the sub-maps that were touched, in first-touch order, and keeps `stride` `f64` values per
//! pixel; each allocated block is one contiguous slice of `submap_size · stride` values, so a
//! reduction over processes can run block by block (export, sum, import) over the union of the
//! touched sub-maps, in chunks of a bounded number of blocks ([`touched_mask`] gives the
//! union, [`reduce_in_chunks`] the chunked sum around any allreduce).
//!
//! A [`BinAccumulator`] keeps, per pixel, one record of `stride` values
//! `[hits, C…, b…]` where `C` are the unique terms of `Σ w wᵀ/σ²` and `b = Σ w d/σ²`:
//! - [`Components::Iqu`]: stride 10, `[hits, C_II, C_IQ, C_IU, C_QQ, C_QU, C_UU, b_I, b_Q, b_U]`;
//! - [`Components::I`]: stride 3, `[hits, C_II, b_I]` (only the intensity weight is used).
//!
//! Hits are stored as `f64` (exact up to 2⁵³) so a whole block is one `f64` slice.
//! [`BinAccumulator::solve`] inverts each pixel's matrix where its reciprocal condition number
//! (smallest over largest eigenvalue, see [`rcond_sym3`]) reaches the cut; other pixels are set
//! to [`UNSEEN`].
//!
//! # Example
//! ```
//! use skypipe_core::binning::{BinAccumulator, Components, SubmapLayout, UNSEEN};
//! use skypipe_core::pointing::stokes_weights_from_psi;
//!
//! let layout = SubmapLayout::new(12 * 4 * 4, 16)?; // nside 4, 12 sub-maps of 16 pixels
//! let mut acc = BinAccumulator::new(layout, Components::Iqu);
//! let (i, q, u) = (2.0, 0.3, -0.1);
//! let psis = [0.0, 0.5, 1.0, 2.0];
//! let weights: Vec<[f64; 3]> = psis.iter().map(|&p| stokes_weights_from_psi(p, 1.0)).collect();
//! let signal: Vec<f64> = weights.iter().map(|w| w[0] * i + w[1] * q + w[2] * u).collect();
//! let pixels = vec![17u64; 4];
//! acc.accumulate(&pixels, &weights, &signal, None, 1.0)?;
//! let map = acc.solve(1e-3);
//! let v = map.value(17).unwrap();
//! assert!((v[0] - i).abs() < 1e-12 && (v[1] - q).abs() < 1e-12 && (v[2] - u).abs() < 1e-12);
//! assert_eq!(map.value(3), None); // never observed
//! assert_eq!(acc.map().touched_submaps(), vec![1]); // only pixels 16..32 allocated
//! # Ok::<(), skypipe_core::binning::BinningError>(())
//! ```

/// The value healpy writes for pixels without data (`hp.UNSEEN`).
pub const UNSEEN: f64 = -1.6375e30;

/// Why a binning input was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinningError {
    /// `submap_size` must be a power of two, and `npix` non-zero.
    #[error("sub-map size {submap_size} is not a power of two, or npix {npix} is zero")]
    BadLayout {
        /// Pixels in the sky.
        npix: u64,
        /// Requested pixels per sub-map.
        submap_size: u64,
    },
    /// A pixel index is not below `npix`.
    #[error("sample {index}: pixel {pix} is not below npix = {npix}")]
    BadPixel {
        /// Sample index in the chunk.
        index: usize,
        /// The offending pixel.
        pix: u64,
        /// Pixels in the sky.
        npix: u64,
    },
    /// An unflagged sample has a non-finite value or weight.
    #[error("sample {index}: value or weight is not finite")]
    NotFinite {
        /// Sample index in the chunk.
        index: usize,
    },
    /// The noise weight `1/σ²` must be finite and positive.
    #[error("noise weight 1/σ² = {inv_var} is not finite and positive")]
    BadNoiseWeight {
        /// The offending value.
        inv_var: f64,
    },
    /// Parallel slices differ in length.
    #[error("{what}: length {found}, expected {expected}")]
    LengthMismatch {
        /// Which slice.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The length required.
        expected: usize,
    },
    /// Two maps with different layouts or strides cannot be combined.
    #[error("maps differ in layout or stride")]
    Incompatible,
    /// A sub-map index is not below the number of sub-maps.
    #[error("sub-map {submap} is not below {n_submaps}")]
    BadSubmap {
        /// The offending index.
        submap: usize,
        /// Number of sub-maps in the layout.
        n_submaps: usize,
    },
}

/// Which Stokes components are solved for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Components {
    /// Intensity only: a 1×1 system per pixel.
    I,
    /// I, Q and U: a 3×3 symmetric system per pixel.
    Iqu,
}

impl Components {
    /// Number of map components (1 or 3).
    pub const fn nnz(self) -> usize {
        match self {
            Components::I => 1,
            Components::Iqu => 3,
        }
    }

    /// Number of unique matrix terms (1 or 6).
    pub const fn ncov(self) -> usize {
        match self {
            Components::I => 1,
            Components::Iqu => 6,
        }
    }

    /// Values per pixel in a [`BinAccumulator`]: hits, matrix terms, right-hand side.
    pub const fn stride(self) -> usize {
        1 + self.ncov() + self.nnz()
    }
}

/// The split of `npix` pixels into sub-maps of `submap_size` (a power of two) pixels; the last
/// sub-map may extend past `npix` (its extra pixels are never touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubmapLayout {
    npix: u64,
    submap_size: u64,
    shift: u32,
}

impl SubmapLayout {
    /// A layout of `npix` pixels in sub-maps of `submap_size` pixels (power of two, ≥ 1).
    pub fn new(npix: u64, submap_size: u64) -> Result<Self, BinningError> {
        if npix == 0 || !submap_size.is_power_of_two() {
            return Err(BinningError::BadLayout { npix, submap_size });
        }
        Ok(Self {
            npix,
            submap_size,
            shift: submap_size.trailing_zeros(),
        })
    }

    /// Pixels in the sky.
    pub fn npix(&self) -> u64 {
        self.npix
    }

    /// Pixels per sub-map.
    pub fn submap_size(&self) -> usize {
        self.submap_size as usize
    }

    /// Number of sub-maps covering the sky.
    pub fn n_submaps(&self) -> usize {
        self.npix.div_ceil(self.submap_size) as usize
    }

    /// Sub-map index and offset within it of pixel `pix`.
    #[inline(always)]
    pub fn split(&self, pix: u64) -> (usize, usize) {
        (
            (pix >> self.shift) as usize,
            (pix & (self.submap_size - 1)) as usize,
        )
    }
}

const ABSENT: u32 = u32::MAX;

/// A block-sparse array of `stride` `f64` values per pixel: only touched sub-maps are stored.
///
/// Memory: `submap_size · stride · 8` bytes per touched sub-map plus 4 bytes per sub-map of the
/// layout for the index. Blocks are stored in first-touch order ("slots");
/// [`SparseMap::touched_submaps`] lists them sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMap {
    layout: SubmapLayout,
    stride: usize,
    slot_of: Vec<u32>,
    submaps: Vec<usize>,
    data: Vec<f64>,
}

impl SparseMap {
    /// An empty map (no sub-map allocated) with `stride` values per pixel.
    pub fn new(layout: SubmapLayout, stride: usize) -> Self {
        Self {
            layout,
            stride,
            slot_of: vec![ABSENT; layout.n_submaps()],
            submaps: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The sub-map layout.
    pub fn layout(&self) -> SubmapLayout {
        self.layout
    }

    /// Values per pixel.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Values in one block: `submap_size · stride`.
    pub fn block_len(&self) -> usize {
        self.layout.submap_size() * self.stride
    }

    /// Allocated sub-maps, sorted ascending.
    pub fn touched_submaps(&self) -> Vec<usize> {
        let mut s = self.submaps.clone();
        s.sort_unstable();
        s
    }

    /// Number of allocated sub-maps.
    pub fn n_touched(&self) -> usize {
        self.submaps.len()
    }

    /// Whether sub-map `submap` is allocated.
    pub fn is_touched(&self, submap: usize) -> bool {
        self.slot_of.get(submap).is_some_and(|&s| s != ABSENT)
    }

    fn check_submap(&self, submap: usize) -> Result<(), BinningError> {
        if submap >= self.slot_of.len() {
            return Err(BinningError::BadSubmap {
                submap,
                n_submaps: self.slot_of.len(),
            });
        }
        Ok(())
    }

    /// Slot of `submap`, allocating a zeroed block if absent. `submap` must be in range.
    #[inline]
    fn slot_or_alloc(&mut self, submap: usize) -> usize {
        let s = self.slot_of[submap];
        if s != ABSENT {
            return s as usize;
        }
        let slot = self.submaps.len();
        self.slot_of[submap] = u32::try_from(slot).expect("fewer than 2^32 - 1 sub-maps");
        self.submaps.push(submap);
        self.data.resize(self.data.len() + self.block_len(), 0.0);
        slot
    }

    /// Allocate (zeroed), in first-touch order, the absent sub-maps of the used samples of
    /// `chunk` from sample `from` on, growing the storage once. A map without storage gets it
    /// fresh from the allocator as zeroed memory, so the pages of records that are never
    /// written are never touched.
    fn allocate_met(&mut self, chunk: &Chunk<'_>, from: usize) {
        let before = self.submaps.len();
        for i in (from..chunk.pixels.len()).filter(|&i| chunk.is_used(i)) {
            let sm = self.layout.split(chunk.pixels[i]).0;
            if self.slot_of[sm] == ABSENT {
                self.slot_of[sm] =
                    u32::try_from(self.submaps.len()).expect("fewer than 2^32 - 1 sub-maps");
                self.submaps.push(sm);
            }
        }
        if self.submaps.len() == before {
            return;
        }
        let len = self.submaps.len() * self.block_len();
        if self.data.is_empty() {
            self.data = vec![0.0; len];
        } else {
            self.data.resize(len, 0.0);
        }
    }

    /// Allocate (zeroed) sub-map `submap` if it is absent.
    pub fn allocate(&mut self, submap: usize) -> Result<(), BinningError> {
        self.check_submap(submap)?;
        self.slot_or_alloc(submap);
        Ok(())
    }

    /// The block of sub-map `submap`, if allocated: `submap_size` records of `stride` values.
    pub fn block(&self, submap: usize) -> Option<&[f64]> {
        let s = *self.slot_of.get(submap)?;
        (s != ABSENT).then(|| {
            let n = self.block_len();
            &self.data[s as usize * n..(s as usize + 1) * n]
        })
    }

    /// The block of sub-map `submap`, if allocated, mutably.
    pub fn block_mut(&mut self, submap: usize) -> Option<&mut [f64]> {
        let s = *self.slot_of.get(submap)?;
        if s == ABSENT {
            return None;
        }
        let n = self.block_len();
        Some(&mut self.data[s as usize * n..(s as usize + 1) * n])
    }

    /// Copy sub-map `submap` into `out` (length [`block_len`](Self::block_len)), zeros if it is
    /// not allocated: the send side of a reduction over the union of touched sub-maps.
    pub fn export_block(&self, submap: usize, out: &mut [f64]) -> Result<(), BinningError> {
        self.check_submap(submap)?;
        self.check_len(out.len())?;
        match self.block(submap) {
            Some(b) => out.copy_from_slice(b),
            None => out.fill(0.0),
        }
        Ok(())
    }

    /// Add `data` (length [`block_len`](Self::block_len)) into sub-map `submap`, allocating it.
    pub fn add_block(&mut self, submap: usize, data: &[f64]) -> Result<(), BinningError> {
        self.check_submap(submap)?;
        self.check_len(data.len())?;
        let slot = self.slot_or_alloc(submap);
        let n = self.block_len();
        for (a, b) in self.data[slot * n..(slot + 1) * n].iter_mut().zip(data) {
            *a += b;
        }
        Ok(())
    }

    /// Replace sub-map `submap` by `data` (length [`block_len`](Self::block_len)). When the
    /// sub-map is absent it is allocated if `allocate`, otherwise `data` is ignored (a rank
    /// keeps only the reduced blocks it touches itself). Returns whether the data was stored.
    pub fn import_block(
        &mut self,
        submap: usize,
        data: &[f64],
        allocate: bool,
    ) -> Result<bool, BinningError> {
        self.check_submap(submap)?;
        self.check_len(data.len())?;
        if !allocate && !self.is_touched(submap) {
            return Ok(false);
        }
        let slot = self.slot_or_alloc(submap);
        let n = self.block_len();
        self.data[slot * n..(slot + 1) * n].copy_from_slice(data);
        Ok(true)
    }

    fn check_len(&self, len: usize) -> Result<(), BinningError> {
        if len != self.block_len() {
            return Err(BinningError::LengthMismatch {
                what: "block",
                found: len,
                expected: self.block_len(),
            });
        }
        Ok(())
    }

    /// Add `other` into `self` (allocating its sub-maps): the serial form of the reduction.
    pub fn merge(&mut self, other: &SparseMap) -> Result<(), BinningError> {
        if self.layout != other.layout || self.stride != other.stride {
            return Err(BinningError::Incompatible);
        }
        for &sm in &other.submaps {
            self.add_block(sm, other.block(sm).expect("listed sub-map is allocated"))?;
        }
        Ok(())
    }

    /// Set every stored value to zero, keeping the allocation.
    pub fn clear_values(&mut self) {
        self.data.fill(0.0);
    }

    /// The record of pixel `pix` (`stride` values), if its sub-map is allocated.
    pub fn pixel(&self, pix: u64) -> Option<&[f64]> {
        if pix >= self.layout.npix {
            return None;
        }
        let (sm, off) = self.layout.split(pix);
        self.block(sm)
            .map(|b| &b[off * self.stride..(off + 1) * self.stride])
    }

    /// Offset of pixel `pix`'s record in the flat storage, if allocated. `pix < npix`.
    #[inline(always)]
    pub(crate) fn record_offset(&self, pix: u64) -> Option<usize> {
        let (sm, off) = self.layout.split(pix);
        let s = self.slot_of[sm];
        (s != ABSENT).then(|| (s as usize * self.layout.submap_size() + off) * self.stride)
    }

    /// The flat storage, block after block in slot order.
    pub fn values(&self) -> &[f64] {
        &self.data
    }

    /// The flat storage, mutably.
    pub(crate) fn values_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// Sub-maps in slot (storage) order.
    pub(crate) fn slots(&self) -> &[usize] {
        &self.submaps
    }

    /// Iterate over `(pixel, record)` for every pixel of every allocated sub-map (in slot
    /// order), including pixels never touched and excluding pixels past `npix`.
    pub fn records(&self) -> impl Iterator<Item = (u64, &[f64])> + '_ {
        let size = self.layout.submap_size();
        self.submaps
            .iter()
            .enumerate()
            .flat_map(move |(slot, &sm)| {
                let base = slot * size * self.stride;
                (0..size).filter_map(move |off| {
                    let pix = (sm * size + off) as u64;
                    (pix < self.layout.npix).then(|| {
                        let o = base + off * self.stride;
                        (pix, &self.data[o..o + self.stride])
                    })
                })
            })
    }
}

/// One byte per sub-map of `map`'s layout, 1 where allocated: summed (or max-reduced) over
/// processes it gives the union of touched sub-maps, see [`submaps_in_mask`].
pub fn touched_mask(map: &SparseMap) -> Vec<u8> {
    map.slot_of.iter().map(|&s| u8::from(s != ABSENT)).collect()
}

/// Sub-maps whose entry in a (reduced) [`touched_mask`] is non-zero, ascending.
pub fn submaps_in_mask(mask: &[u8]) -> Vec<usize> {
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m != 0)
        .map(|(i, _)| i)
        .collect()
}

/// Sum `map` over processes over the sub-maps `union` (ascending, the same on every process,
/// e.g. from [`touched_mask`]): blocks are exported (zeros where absent) into a buffer of at
/// most `max_chunk_values` values (at least one block), `allreduce` sums that buffer in place
/// across processes, and the sums are imported into the blocks this process has allocated.
/// Every process must call it with the same `union` and limit, so the buffers line up. With
/// `max_chunk_values < 2³¹` no MPI count overflows. Returns the number of `allreduce` calls.
pub fn reduce_in_chunks(
    map: &mut SparseMap,
    union: &[usize],
    max_chunk_values: usize,
    mut allreduce: impl FnMut(&mut [f64]),
) -> Result<usize, BinningError> {
    let n = map.block_len();
    let per_chunk = (max_chunk_values / n.max(1)).max(1);
    let mut buf = vec![0.0; per_chunk.min(union.len()) * n];
    let mut calls = 0;
    for group in union.chunks(per_chunk) {
        let buf = &mut buf[..group.len() * n];
        for (k, &sm) in group.iter().enumerate() {
            map.export_block(sm, &mut buf[k * n..(k + 1) * n])?;
        }
        allreduce(buf);
        calls += 1;
        for (k, &sm) in group.iter().enumerate() {
            map.import_block(sm, &buf[k * n..(k + 1) * n], false)?;
        }
    }
    Ok(calls)
}

/// The samples of one `accumulate` call; sample `i` is used when `flags[i] == 0` (all when
/// `flags` is `None`).
struct Chunk<'a> {
    pixels: &'a [u64],
    weights: &'a [[f64; 3]],
    signal: &'a [f64],
    flags: Option<&'a [u8]>,
    inv_var: f64,
}

/// Exponent bits of an `f64`, all set exactly for infinities and NaNs.
const EXP_BITS: u64 = 0x7ff0_0000_0000_0000;
/// The lowest exponent bit: added to the exponent bits, it carries into the sign bit exactly
/// when they are all set.
const EXP_LSB: u64 = 1 << 52;

/// Bit 63 set when `x` is infinite or NaN.
#[inline(always)]
fn not_finite_bit(x: f64) -> u64 {
    (x.to_bits() & EXP_BITS) + EXP_LSB
}

/// Bit 63 set when `p ≥ npix` (`top = npix - 1`); also, harmlessly, for `2⁶³ ≤ p < npix`.
#[inline(always)]
fn out_of_range_bit(top: u64, p: u64) -> u64 {
    p | top.wrapping_sub(p)
}

impl Chunk<'_> {
    /// Whether sample `i` is binned (not flagged).
    #[inline(always)]
    fn is_used(&self, i: usize) -> bool {
        self.flags.is_none_or(|f| f[i] == 0)
    }

    /// Validate the lengths, the noise weight and every used sample (pixel in range, weights
    /// and value finite), reporting the first bad sample; returns the number of used samples.
    ///
    /// The samples are checked by branch-free OR-reductions (vectorised), and only when one
    /// flags a problem are they scanned again to name the first bad sample.
    fn validate(&self, npix: u64) -> Result<u64, BinningError> {
        let n = self.pixels.len();
        let check = |what, found: usize| {
            if found == n {
                Ok(())
            } else {
                Err(BinningError::LengthMismatch {
                    what,
                    found,
                    expected: n,
                })
            }
        };
        check("weights", self.weights.len())?;
        check("signal", self.signal.len())?;
        if let Some(f) = self.flags {
            check("flags", f.len())?;
        }
        let inv_var = self.inv_var;
        if !(inv_var.is_finite() && inv_var > 0.0) {
            return Err(BinningError::BadNoiseWeight { inv_var });
        }
        let top = npix - 1;
        let (bad, used) = match self.flags {
            None => {
                let pix = self
                    .pixels
                    .iter()
                    .fold(0, |a, &p| a | out_of_range_bit(top, p));
                let values = (self.weights.as_flattened().iter())
                    .chain(self.signal)
                    .fold(0, |a, &x| a | not_finite_bit(x));
                (pix | values, n as u64)
            }
            Some(flags) => (self.pixels.iter().zip(self.weights))
                .zip(self.signal)
                .zip(flags)
                .fold((0, 0), |(a, used), (((&p, w), &s), &f)| {
                    let bits = out_of_range_bit(top, p)
                        | not_finite_bit(w[0])
                        | not_finite_bit(w[1])
                        | not_finite_bit(w[2])
                        | not_finite_bit(s);
                    let keep = u64::from(f == 0);
                    (a | (bits & keep.wrapping_neg()), used + keep)
                }),
        };
        if bad >> 63 != 0 {
            for i in (0..n).filter(|&i| self.is_used(i)) {
                let p = self.pixels[i];
                if p >= npix {
                    return Err(BinningError::BadPixel {
                        index: i,
                        pix: p,
                        npix,
                    });
                }
                if !(self.weights[i].iter().all(|x| x.is_finite()) && self.signal[i].is_finite()) {
                    return Err(BinningError::NotFinite { index: i });
                }
            }
        }
        Ok(used)
    }
}

/// Samples ahead of the one being binned whose record is prefetched, to overlap the misses on
/// the records (measured on `bin_samples`: the speed is flat from 8 to 32).
const PREFETCH_AHEAD: usize = 16;

/// Hint that `data[o..o + len]` (`len ≥ 1`) is about to be updated: prefetches its first and
/// last cache lines (a record spans at most two). No effect off x86-64.
#[inline(always)]
fn prefetch_record(data: &[f64], o: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let first = data.as_ptr().wrapping_add(o);
        let last = first.wrapping_add(len - 1);
        // SAFETY: a prefetch is only a hint: it never faults nor changes memory, whatever the
        // address (here it is in bounds anyway, the record being allocated).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first.cast());
            _mm_prefetch::<_MM_HINT_T0>(last.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, o, len);
}

/// Add the used samples of a validated `chunk` into their pixels' records of `S` values with
/// `add(record, w, signal · inv_var)`, in sample order, prefetching each record
/// [`PREFETCH_AHEAD`] samples before its update. Absent sub-maps are allocated when first met
/// (ahead), all those of the rest of the chunk at once.
fn scatter<const S: usize>(
    map: &mut SparseMap,
    chunk: &Chunk<'_>,
    add: impl Fn(&mut [f64; S], [f64; 3], f64) + Copy,
) {
    debug_assert_eq!(map.stride, S);
    let mut start = 0;
    while let Some(i) = scatter_from::<S>(map, chunk, start, add) {
        map.allocate_met(chunk, i);
        start = i;
    }
}

/// [`scatter`] from sample `start` on, up to the sample whose record or prefetch meets an
/// absent sub-map: returns that sample's index, `None` when the chunk is done.
#[inline(always)]
fn scatter_from<const S: usize>(
    map: &mut SparseMap,
    chunk: &Chunk<'_>,
    start: usize,
    add: impl Fn(&mut [f64; S], [f64; 3], f64),
) -> Option<usize> {
    let (shift, mask) = (map.layout.shift, map.layout.submap_size - 1);
    let size = map.layout.submap_size();
    let slot_of = &map.slot_of;
    let data = &mut map.data;
    let pixels = chunk.pixels;
    let slot = |i: usize| slot_of[(pixels[i] >> shift) as usize];
    let offset = |i: usize, slot: u32| (slot as usize * size + (pixels[i] & mask) as usize) * S;
    let n = pixels.len();
    if (start..n.min(start + PREFETCH_AHEAD)).any(|i| chunk.is_used(i) && slot(i) == ABSENT) {
        return Some(start);
    }
    for i in start..n {
        let ahead = i + PREFETCH_AHEAD;
        if ahead < n && chunk.is_used(ahead) {
            let s = slot(ahead);
            if s == ABSENT {
                return Some(i);
            }
            prefetch_record(data, offset(ahead, s), S);
        }
        if !chunk.is_used(i) {
            continue;
        }
        let o = offset(i, slot(i));
        let r: &mut [f64; S] = (&mut data[o..o + S])
            .try_into()
            .expect("a slice of S values");
        add(r, chunk.weights[i], chunk.signal[i] * chunk.inv_var);
    }
    None
}

/// Per-pixel hits, noise-weighted matrix `Σ w wᵀ/σ²` and right-hand side `Σ w d/σ²`.
#[derive(Debug, Clone, PartialEq)]
pub struct BinAccumulator {
    comps: Components,
    map: SparseMap,
}

impl BinAccumulator {
    /// An empty accumulator.
    pub fn new(layout: SubmapLayout, comps: Components) -> Self {
        Self {
            comps,
            map: SparseMap::new(layout, comps.stride()),
        }
    }

    /// An accumulator holding `map`'s records (e.g. sums received from other processes);
    /// `map` must have `comps`' stride.
    pub fn from_map(comps: Components, map: SparseMap) -> Result<Self, BinningError> {
        if map.stride != comps.stride() {
            return Err(BinningError::Incompatible);
        }
        Ok(Self { comps, map })
    }

    /// The components solved for.
    pub fn components(&self) -> Components {
        self.comps
    }

    /// The underlying sparse records (for export, import and reduction).
    pub fn map(&self) -> &SparseMap {
        &self.map
    }

    /// The underlying sparse records, mutably (for importing a reduced block).
    pub fn map_mut(&mut self) -> &mut SparseMap {
        &mut self.map
    }

    /// Accumulate one chunk of one detector: for every sample with `flags[i] == 0` (all when
    /// `flags` is `None`), pixel `p = pixels[i]` gets `hits += 1`, `C += w wᵀ·inv_var` and
    /// `b += w·signal[i]·inv_var`. [`Components::I`] uses only `w[0]`. The whole chunk is
    /// validated first, so on error the accumulator is unchanged. Returns the samples used.
    pub fn accumulate(
        &mut self,
        pixels: &[u64],
        weights: &[[f64; 3]],
        signal: &[f64],
        flags: Option<&[u8]>,
        inv_var: f64,
    ) -> Result<u64, BinningError> {
        let chunk = Chunk {
            pixels,
            weights,
            signal,
            flags,
            inv_var,
        };
        let used = chunk.validate(self.map.layout.npix)?;
        match self.comps {
            Components::I => scatter::<3>(&mut self.map, &chunk, |r, w, d| {
                r[0] += 1.0;
                r[1] += w[0] * w[0] * inv_var;
                r[2] += w[0] * d;
            }),
            Components::Iqu => scatter::<10>(&mut self.map, &chunk, |r, w, d| {
                let (a, b, c) = (w[0] * inv_var, w[1] * inv_var, w[2] * inv_var);
                r[0] += 1.0;
                r[1] += a * w[0];
                r[2] += a * w[1];
                r[3] += a * w[2];
                r[4] += b * w[1];
                r[5] += b * w[2];
                r[6] += c * w[2];
                r[7] += w[0] * d;
                r[8] += w[1] * d;
                r[9] += w[2] * d;
            }),
        }
        Ok(used)
    }

    /// Add another accumulator into this one.
    pub fn merge(&mut self, other: &BinAccumulator) -> Result<(), BinningError> {
        if self.comps != other.comps {
            return Err(BinningError::Incompatible);
        }
        self.map.merge(&other.map)
    }

    /// Sum of hits over all pixels.
    pub fn total_hits(&self) -> f64 {
        self.map
            .data
            .chunks_exact(self.comps.stride())
            .map(|r| r[0])
            .sum()
    }

    /// Solve every allocated pixel: `m = C⁻¹ b` where `rcond(C) ≥ rcond_min` and `hits > 0`,
    /// [`UNSEEN`] elsewhere. See [`rcond_sym3`] for the condition number.
    pub fn solve(&self, rcond_min: f64) -> BinnedMap {
        let nnz = self.comps.nnz();
        let ncov = self.comps.ncov();
        let stride = self.comps.stride();
        let nrec = self.map.data.len() / stride;
        let mut values = vec![UNSEEN; nrec * nnz];
        let mut inv_cov = vec![0.0; nrec * ncov];
        let mut rcond = vec![0.0; nrec];
        let mut hits = vec![0.0; nrec];
        for (k, r) in self.map.data.chunks_exact(stride).enumerate() {
            hits[k] = r[0];
            if r[0] <= 0.0 {
                continue;
            }
            let c = &r[1..1 + ncov];
            let b = &r[1 + ncov..];
            match self.comps {
                Components::I => {
                    let rc = if c[0] > 0.0 { 1.0 } else { 0.0 };
                    rcond[k] = rc;
                    if rc >= rcond_min && rc > 0.0 {
                        inv_cov[k] = 1.0 / c[0];
                        values[k] = b[0] / c[0];
                    }
                }
                Components::Iqu => {
                    let cc = [c[0], c[1], c[2], c[3], c[4], c[5]];
                    let rc = rcond_sym3(cc);
                    rcond[k] = rc;
                    if rc >= rcond_min
                        && rc > 0.0
                        && let Some(inv) = invert_sym3(cc)
                    {
                        let m = apply_sym3(&inv, [b[0], b[1], b[2]]);
                        values[k * 3..k * 3 + 3].copy_from_slice(&m);
                        inv_cov[k * 6..k * 6 + 6].copy_from_slice(&inv);
                    }
                }
            }
        }
        BinnedMap {
            layout: self.map.layout,
            comps: self.comps,
            slot_of: self.map.slot_of.clone(),
            submaps: self.map.submaps.clone(),
            values,
            inv_cov,
            rcond,
            hits,
        }
    }
}

/// `y = S x` for a symmetric 3×3 `S` given by its unique terms `[s00, s01, s02, s11, s12, s22]`.
#[inline(always)]
pub fn apply_sym3(s: &[f64; 6], x: [f64; 3]) -> [f64; 3] {
    [
        s[0] * x[0] + s[1] * x[1] + s[2] * x[2],
        s[1] * x[0] + s[3] * x[1] + s[4] * x[2],
        s[2] * x[0] + s[4] * x[1] + s[5] * x[2],
    ]
}

/// Inverse of a symmetric 3×3 matrix (unique terms `[a00, a01, a02, a11, a12, a22]`) by
/// cofactors; `None` when the determinant is zero or not finite.
pub fn invert_sym3(a: [f64; 6]) -> Option<[f64; 6]> {
    let [a00, a01, a02, a11, a12, a22] = a;
    let c00 = a11 * a22 - a12 * a12;
    let c01 = a02 * a12 - a01 * a22;
    let c02 = a01 * a12 - a02 * a11;
    let det = a00 * c00 + a01 * c01 + a02 * c02;
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let c11 = a00 * a22 - a02 * a02;
    let c12 = a01 * a02 - a00 * a12;
    let c22 = a00 * a11 - a01 * a01;
    let r = 1.0 / det;
    Some([c00 * r, c01 * r, c02 * r, c11 * r, c12 * r, c22 * r])
}

/// Eigenvalues, ascending, of a symmetric 3×3 matrix (unique terms
/// `[a00, a01, a02, a11, a12, a22]`), by the closed-form trigonometric method (Smith 1961).
/// Absolute accuracy is a few ulp of the largest eigenvalue.
pub fn eigenvalues_sym3(a: [f64; 6]) -> [f64; 3] {
    let [a00, a01, a02, a11, a12, a22] = a;
    let p1 = a01 * a01 + a02 * a02 + a12 * a12;
    if p1 == 0.0 {
        let mut e = [a00, a11, a22];
        e.sort_by(f64::total_cmp);
        return e;
    }
    let q = (a00 + a11 + a22) / 3.0;
    let (b00, b11, b22) = (a00 - q, a11 - q, a22 - q);
    let p2 = b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * p1;
    let p = (p2 / 6.0).sqrt();
    // det(B) / 2 with B = (A − qI) / p.
    let det = b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02)
        + a02 * (a01 * a12 - b11 * a02);
    let r = (det / (2.0 * p * p * p)).clamp(-1.0, 1.0);
    let phi = r.acos() / 3.0;
    let e_max = q + 2.0 * p * phi.cos();
    let e_min = q + 2.0 * p * (phi + 2.0 * std::f64::consts::FRAC_PI_3).cos();
    let e_mid = 3.0 * q - e_max - e_min;
    [e_min, e_mid, e_max]
}

/// Reciprocal condition number of a symmetric positive semi-definite 3×3 matrix: the ratio of
/// its smallest to its largest eigenvalue ([`eigenvalues_sym3`]), clamped to `[0, 1]`, `0` for the
/// zero matrix or non-finite input. This is the 2-norm rcond, the eigenvalue ratio that TOAST's
/// covariance inversion also cuts on; a pixel seen at a single polarisation angle (a rank-one
/// matrix) has rcond ≈ 0 (≲ 1e-16). An estimate from norms would only bound it.
pub fn rcond_sym3(a: [f64; 6]) -> f64 {
    if !a.iter().all(|x| x.is_finite()) {
        return 0.0;
    }
    let e = eigenvalues_sym3(a);
    if e[2] <= 0.0 {
        return 0.0;
    }
    (e[0] / e[2]).clamp(0.0, 1.0)
}

/// Solved maps on the allocated sub-maps of a [`BinAccumulator`].
#[derive(Debug, Clone, PartialEq)]
pub struct BinnedMap {
    layout: SubmapLayout,
    comps: Components,
    slot_of: Vec<u32>,
    submaps: Vec<usize>,
    pub(crate) values: Vec<f64>,
    pub(crate) inv_cov: Vec<f64>,
    rcond: Vec<f64>,
    hits: Vec<f64>,
}

/// Full-sky arrays of a [`BinnedMap`] (what a FITS writer needs).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseMaps {
    /// One array per component (I, or I, Q, U), [`UNSEEN`] where not solved.
    pub values: Vec<Vec<f64>>,
    /// Hits per pixel.
    pub hits: Vec<f64>,
    /// Reciprocal condition number per pixel (0 where unobserved).
    pub rcond: Vec<f64>,
}

impl BinnedMap {
    /// The sub-map layout.
    pub fn layout(&self) -> SubmapLayout {
        self.layout
    }

    /// The components solved for.
    pub fn components(&self) -> Components {
        self.comps
    }

    #[inline(always)]
    fn record(&self, pix: u64) -> Option<usize> {
        if pix >= self.layout.npix {
            return None;
        }
        let (sm, off) = self.layout.split(pix);
        let s = self.slot_of[sm];
        (s != ABSENT).then(|| s as usize * self.layout.submap_size() + off)
    }

    /// The solved `(I, Q, U)` of pixel `pix` (`Q = U = 0` in intensity-only mode), or `None`
    /// when the pixel is unobserved or cut.
    #[inline]
    pub fn value(&self, pix: u64) -> Option<[f64; 3]> {
        let k = self.record(pix)?;
        let nnz = self.comps.nnz();
        let v = &self.values[k * nnz..(k + 1) * nnz];
        if v[0] == UNSEEN {
            return None;
        }
        Some(if nnz == 1 {
            [v[0], 0.0, 0.0]
        } else {
            [v[0], v[1], v[2]]
        })
    }

    /// The inverse matrix `C⁻¹` (unique terms; `[C⁻¹_II, 0, …]` in intensity-only mode) of a
    /// solved pixel, or `None` when unobserved or cut.
    #[inline]
    pub fn inv_cov(&self, pix: u64) -> Option<[f64; 6]> {
        let k = self.record(pix)?;
        if self.values[k * self.comps.nnz()] == UNSEEN {
            return None;
        }
        Some(match self.comps {
            Components::I => [self.inv_cov[k], 0.0, 0.0, 0.0, 0.0, 0.0],
            Components::Iqu => {
                let c = &self.inv_cov[k * 6..k * 6 + 6];
                [c[0], c[1], c[2], c[3], c[4], c[5]]
            }
        })
    }

    /// The map of another right-hand side `rhs` (`Σ w y/σ²`, [`Components::nnz`] values per
    /// pixel, same layout) solved with this map's matrices: `C⁻¹ rhs` where this map is
    /// solved, [`UNSEEN`] elsewhere; hits and rcond are this map's. Sub-maps that `rhs` lacks
    /// count as zero.
    pub fn solve_rhs(&self, rhs: &SparseMap) -> Result<BinnedMap, BinningError> {
        let nnz = self.comps.nnz();
        if rhs.layout != self.layout || rhs.stride != nnz {
            return Err(BinningError::Incompatible);
        }
        let size = self.layout.submap_size();
        let mut out = self.clone();
        for (slot, &sm) in self.submaps.iter().enumerate() {
            let block = rhs.block(sm);
            for off in 0..size {
                let k = slot * size + off;
                if self.values[k * nnz] == UNSEEN {
                    continue;
                }
                let b = |c: usize| block.map_or(0.0, |b| b[off * nnz + c]);
                match self.comps {
                    Components::I => out.values[k] = self.inv_cov[k] * b(0),
                    Components::Iqu => {
                        let ic = &self.inv_cov[k * 6..k * 6 + 6];
                        let ic = [ic[0], ic[1], ic[2], ic[3], ic[4], ic[5]];
                        let m = apply_sym3(&ic, [b(0), b(1), b(2)]);
                        out.values[k * 3..k * 3 + 3].copy_from_slice(&m);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reciprocal condition number of pixel `pix` (0 when unobserved).
    pub fn rcond(&self, pix: u64) -> f64 {
        self.record(pix).map_or(0.0, |k| self.rcond[k])
    }

    /// Hits of pixel `pix`.
    pub fn hits(&self, pix: u64) -> f64 {
        self.record(pix).map_or(0.0, |k| self.hits[k])
    }

    /// Pixels with hits but not solved (rcond under the cut), sorted.
    pub fn cut_pixels(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .observed_pixels()
            .filter(|&p| self.value(p).is_none())
            .collect();
        out.sort_unstable();
        out
    }

    /// Pixels with at least one hit, in storage order.
    pub fn observed_pixels(&self) -> impl Iterator<Item = u64> + '_ {
        let size = self.layout.submap_size();
        self.submaps
            .iter()
            .enumerate()
            .flat_map(move |(slot, &sm)| {
                (0..size).filter_map(move |off| {
                    let pix = (sm * size + off) as u64;
                    (pix < self.layout.npix && self.hits[slot * size + off] > 0.0).then_some(pix)
                })
            })
    }

    /// Expand to full-sky arrays (for output; costs `npix · (nnz + 2)` values).
    pub fn to_dense(&self) -> DenseMaps {
        let npix = self.layout.npix as usize;
        let nnz = self.comps.nnz();
        let mut out = DenseMaps {
            values: vec![vec![UNSEEN; npix]; nnz],
            hits: vec![0.0; npix],
            rcond: vec![0.0; npix],
        };
        let size = self.layout.submap_size();
        for (slot, &sm) in self.submaps.iter().enumerate() {
            for off in 0..size {
                let pix = sm * size + off;
                if pix >= npix {
                    break;
                }
                let k = slot * size + off;
                out.hits[pix] = self.hits[k];
                out.rcond[pix] = self.rcond[k];
                for c in 0..nnz {
                    out.values[c][pix] = self.values[k * nnz + c];
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sub-maps met for the first time late in a chunk (past the prefetch distance, after an
    /// earlier call allocated others) are stored in first-touch order.
    #[test]
    fn a_second_right_hand_side_is_solved_with_the_same_matrices() {
        use crate::pointing::stokes_weights_from_psi;
        let layout = SubmapLayout::new(48, 4).unwrap();
        let psis = [0.0, 0.5, 1.0, 2.0, 2.5];
        let weights: Vec<[f64; 3]> = psis
            .iter()
            .map(|&p| stokes_weights_from_psi(p, 1.0))
            .collect();
        let pixels = vec![5u64, 5, 5, 5, 9];
        let (first, second) = ([1.0, 0.2, -0.3], [-2.0, 0.1, 0.4]);
        let scan = |m: [f64; 3]| -> Vec<f64> {
            weights
                .iter()
                .map(|w| w[0] * m[0] + w[1] * m[1] + w[2] * m[2])
                .collect()
        };
        let mut acc = BinAccumulator::new(layout, Components::Iqu);
        acc.accumulate(&pixels, &weights, &scan(first), None, 2.0)
            .unwrap();
        let map = acc.solve(1e-3);
        let mut rhs = SparseMap::new(layout, 3);
        for ((&p, w), d) in pixels.iter().zip(&weights).zip(scan(second)) {
            let (sm, off) = layout.split(p);
            rhs.allocate(sm).unwrap();
            let b = rhs.block_mut(sm).unwrap();
            for c in 0..3 {
                b[off * 3 + c] += w[c] * d * 2.0;
            }
        }
        let solved = map.solve_rhs(&rhs).unwrap();
        let v = solved.value(5).unwrap();
        for c in 0..3 {
            assert!((v[c] - second[c]).abs() < 1e-12, "{v:?}");
        }
        assert_eq!(solved.value(9), None, "pixel 9 (one angle) stays cut");
        assert_eq!(solved.hits(5), 4.0);
        let wrong = SparseMap::new(layout, 10);
        assert_eq!(map.solve_rhs(&wrong), Err(BinningError::Incompatible));
        let records = acc.map().clone();
        let again = BinAccumulator::from_map(Components::Iqu, records).unwrap();
        assert_eq!(again.solve(1e-3), map);
        assert!(BinAccumulator::from_map(Components::I, acc.map().clone()).is_err());
    }

    #[test]
    fn submaps_are_allocated_in_first_touch_order() {
        let layout = SubmapLayout::new(64, 4).unwrap();
        let mut acc = BinAccumulator::new(layout, Components::Iqu);
        let w = [1.0, 0.5, -0.5];
        acc.accumulate(&[20, 21], &[w; 2], &[1.0; 2], None, 1.0)
            .unwrap();
        let mut pixels = vec![21u64; 40];
        pixels.extend([60, 5, 60, 22, 9, 5]);
        let mut flags = vec![0u8; pixels.len()];
        flags[41] = 1; // pixel 5 first used at the last sample
        let n = pixels.len();
        let used = acc
            .accumulate(&pixels, &vec![w; n], &vec![2.0; n], Some(&flags), 2.0)
            .unwrap();
        assert_eq!(used, n as u64 - 1);
        assert_eq!(acc.map().slots(), &[5, 15, 2, 1]);
        assert_eq!(acc.map().pixel(21).unwrap()[0], 41.0);
        assert_eq!(acc.map().pixel(5).unwrap()[0], 1.0);
        assert_eq!(acc.total_hits(), n as f64 + 1.0);
    }

    /// The first bad used sample is reported (flagged ones are skipped), and nothing changes.
    #[test]
    fn first_bad_sample_is_reported() {
        let layout = SubmapLayout::new(48, 4).unwrap();
        let mut acc = BinAccumulator::new(layout, Components::I);
        let mut pixels = vec![3u64; 100];
        let mut w = vec![[1.0, 0.0, 0.0]; 100];
        let mut s = vec![1.0; 100];
        let mut flags = vec![0u8; 100];
        pixels[10] = u64::MAX;
        flags[10] = 1;
        w[20][2] = f64::INFINITY;
        flags[20] = 1;
        s[30] = f64::NAN;
        pixels[30] = 48;
        w[40][1] = f64::NEG_INFINITY;
        let e = acc.accumulate(&pixels, &w, &s, Some(&flags), 1.0);
        assert_eq!(
            e,
            Err(BinningError::BadPixel {
                index: 30,
                pix: 48,
                npix: 48
            })
        );
        pixels[30] = 47;
        let e = acc.accumulate(&pixels, &w, &s, Some(&flags), 1.0);
        assert_eq!(e, Err(BinningError::NotFinite { index: 30 }));
        s[30] = 1.0;
        let e = acc.accumulate(&pixels, &w, &s, None, 1.0);
        assert_eq!(
            e,
            Err(BinningError::BadPixel {
                index: 10,
                pix: u64::MAX,
                npix: 48
            })
        );
        let e = acc.accumulate(&pixels, &w, &s, Some(&flags), 1.0);
        assert_eq!(e, Err(BinningError::NotFinite { index: 40 }));
        assert_eq!(acc.map().n_touched(), 0);
        w[40][1] = 0.0;
        assert_eq!(acc.accumulate(&pixels, &w, &s, Some(&flags), 1.0), Ok(98));
    }

    /// With `npix > 2⁶³` the quick range check also flags valid pixels at or above 2⁶³: the
    /// exact scan then finds no error.
    #[test]
    fn huge_npix_pixels_are_accepted() {
        let chunk = |pixels| Chunk {
            pixels,
            weights: &[[1.0, 0.0, 0.0]; 2],
            signal: &[1.0; 2],
            flags: None,
            inv_var: 1.0,
        };
        assert_eq!(chunk(&[1 << 63, u64::MAX - 1]).validate(u64::MAX), Ok(2));
        assert_eq!(
            chunk(&[1, u64::MAX]).validate(u64::MAX),
            Err(BinningError::BadPixel {
                index: 1,
                pix: u64::MAX,
                npix: u64::MAX
            })
        );
    }
}
