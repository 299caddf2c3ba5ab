//! HEALPix pixel indices of directions, bit-for-bit as healpy computes them.
//!
//! Coordinates: colatitude `θ ∈ [0, π]` from the +z axis and longitude `φ` from +x towards +y;
//! a direction `(x, y, z) = (sin θ cos φ, sin θ sin φ, cos θ)`. Pixels are `u64` in
//! `[0, 12·nside²)`, in [`Ordering::Ring`] or [`Ordering::Nested`] order.
//!
//! [`Healpix::vec2pix`] and [`Healpix::ang2pix`] perform the floating-point operations of
//! HEALPix C++ 3.8 (`T_Healpix_Base::vec2pix`, `ang2pix`, `loc2pix`), which healpy calls, in the
//! same order with the same constants, so that a direction lying on a pixel boundary is assigned
//! to the same pixel as healpy assigns it (libm's `atan2`, `sin` and `cos` are the same glibc
//! functions). The integration test `tests/healpy.rs` demands zero mismatches against healpy.
//! cdshealpix's nested hash computes in longitude/latitude and can round the other way on
//! boundaries; it serves here for pixel centres and as an independent reference in tests.

use std::f64::consts::{FRAC_2_PI, PI, TAU};

/// Largest supported `nside` (2²⁹), as in healpy.
pub const MAX_NSIDE: u64 = 1 << 29;

/// Pixel numbering scheme; configurations spell it `"ring"` / `"nested"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Pixels numbered along iso-latitude rings from the north pole.
    Ring,
    /// Hierarchical numbering: the four children of pixel `p` are `4p .. 4p + 4`.
    Nested,
}

impl Ordering {
    /// The FITS `ORDERING` keyword value and HDF5 `ordering` attribute: `RING` / `NESTED`.
    pub fn header_name(self) -> &'static str {
        match self {
            Ordering::Ring => "RING",
            Ordering::Nested => "NESTED",
        }
    }

    /// Parses an `ORDERING` keyword or `ordering` attribute (`RING`, `NESTED` or `NEST`,
    /// case-insensitive).
    pub fn parse_header(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "RING" => Some(Ordering::Ring),
            "NESTED" | "NEST" => Some(Ordering::Nested),
            _ => None,
        }
    }
}

/// Why a HEALPix input was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealpixError {
    /// `nside` must be a power of two in `[1, 2^29]`.
    #[error("nside {nside} is not a power of two in [1, {MAX_NSIDE}]")]
    BadNside {
        /// The offending value.
        nside: u64,
    },
    /// A direction vector must be finite and non-zero.
    #[error("direction {v:?} is zero or not finite")]
    BadVector {
        /// The offending vector.
        v: [f64; 3],
    },
    /// `θ` must be in `[0, π]` and `φ` finite.
    #[error("angles θ = {theta}, φ = {phi} rad: need θ in [0, π] and finite φ")]
    BadAngle {
        /// Colatitude (rad).
        theta: f64,
        /// Longitude (rad).
        phi: f64,
    },
    /// A pixel index must be below `12·nside²`.
    #[error("pixel {pix} is not below npix = {npix}")]
    BadPixel {
        /// The offending pixel.
        pix: u64,
        /// Number of pixels at this nside.
        npix: u64,
    },
    /// Input and output slices differ in length.
    #[error("{inputs} inputs but {outputs} output slots")]
    LengthMismatch {
        /// Input length.
        inputs: usize,
        /// Output length.
        outputs: usize,
    },
    /// An element of a batch was refused.
    #[error("element {index}: {source}")]
    InBatch {
        /// Index in the batch.
        index: usize,
        /// Why it was refused.
        source: Box<HealpixError>,
    },
}

/// A HEALPix grid: `nside` (a power of two) and an [`Ordering`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Healpix {
    nside: i64,
    order: u32,
    ordering: Ordering,
    npix: i64,
    ncap: i64,
}

// Constants as in HEALPix C++ (lsconstants.h): twothird = 2.0/3.0, inv_halfpi = 2/π.
const TWOTHIRD: f64 = 2.0 / 3.0;
const INV_HALFPI: f64 = FRAC_2_PI;
/// HEALPix C++ `ang2pix` passes `sin θ` for `θ > 3.14159 − 0.01` (its literal, not `π − 0.01`).
#[allow(clippy::approx_constant)]
const SOUTH_CAP_THETA: f64 = 3.14159 - 0.01;

impl Healpix {
    /// The grid at `nside` (power of two, `1 ..= 2^29`) numbered by `ordering`.
    pub fn new(nside: u64, ordering: Ordering) -> Result<Self, HealpixError> {
        if !nside.is_power_of_two() || nside > MAX_NSIDE {
            return Err(HealpixError::BadNside { nside });
        }
        let n = nside as i64;
        Ok(Self {
            nside: n,
            order: nside.trailing_zeros(),
            ordering,
            npix: 12 * n * n,
            ncap: 2 * n * (n - 1),
        })
    }

    /// `nside`.
    pub fn nside(&self) -> u64 {
        self.nside as u64
    }

    /// `log2(nside)` (the HEALPix order or depth).
    pub fn order(&self) -> u32 {
        self.order
    }

    /// The pixel numbering scheme.
    pub fn ordering(&self) -> Ordering {
        self.ordering
    }

    /// Number of pixels, `12·nside²`.
    pub fn npix(&self) -> u64 {
        self.npix as u64
    }

    /// Pixel containing the direction `v` (any finite non-zero length), as healpy's `vec2pix`.
    ///
    /// ```
    /// use skypipe_core::healpix::{Healpix, Ordering};
    /// // healpy: hp.vec2pix(16, 1, 0, 0) == 1504
    /// let hp = Healpix::new(16, Ordering::Ring).unwrap();
    /// assert_eq!(hp.vec2pix([1.0, 0.0, 0.0]).unwrap(), 1504);
    /// ```
    pub fn vec2pix(&self, v: [f64; 3]) -> Result<u64, HealpixError> {
        let len2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if !(len2.is_finite() && len2 > 0.0 && v.iter().all(|c| c.is_finite())) {
            return Err(HealpixError::BadVector { v });
        }
        Ok(self.vec2pix_unchecked(v))
    }

    /// [`vec2pix`](Self::vec2pix) for every vector of `v`, into `out` (same length).
    pub fn vec2pix_batch(&self, v: &[[f64; 3]], out: &mut [u64]) -> Result<(), HealpixError> {
        if v.len() != out.len() {
            return Err(HealpixError::LengthMismatch {
                inputs: v.len(),
                outputs: out.len(),
            });
        }
        for (index, (v, o)) in v.iter().zip(out.iter_mut()).enumerate() {
            *o = self.vec2pix(*v).map_err(|e| HealpixError::InBatch {
                index,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Pixel containing colatitude `theta ∈ [0, π]` and longitude `phi` (rad), as healpy's
    /// `ang2pix`.
    pub fn ang2pix(&self, theta: f64, phi: f64) -> Result<u64, HealpixError> {
        if !((0.0..=PI).contains(&theta) && phi.is_finite()) {
            return Err(HealpixError::BadAngle { theta, phi });
        }
        // healpy wraps the angles first (`pointing::normalize`: θ ∈ [0, π] is kept, φ is reduced
        // to [0, 2π) by `fmodulo`), then HEALPix C++ `ang2pix` passes sin θ near the poles.
        let phi = fmodulo(phi, TAU);
        let pix = if !(0.01..=SOUTH_CAP_THETA).contains(&theta) {
            self.loc2pix(theta.cos(), phi, theta.sin(), true)
        } else {
            self.loc2pix(theta.cos(), phi, 0.0, false)
        };
        Ok(pix as u64)
    }

    /// [`ang2pix`](Self::ang2pix) for every `(θ, φ)` pair, into `out` (same length).
    pub fn ang2pix_batch(
        &self,
        theta_phi: &[(f64, f64)],
        out: &mut [u64],
    ) -> Result<(), HealpixError> {
        if theta_phi.len() != out.len() {
            return Err(HealpixError::LengthMismatch {
                inputs: theta_phi.len(),
                outputs: out.len(),
            });
        }
        for (index, (&(t, p), o)) in theta_phi.iter().zip(out.iter_mut()).enumerate() {
            *o = self.ang2pix(t, p).map_err(|e| HealpixError::InBatch {
                index,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// `(θ, φ)` of the centre of pixel `pix` (rad, `φ ∈ [0, 2π)`), via cdshealpix.
    pub fn pix2ang(&self, pix: u64) -> Result<(f64, f64), HealpixError> {
        let nested = self.to_nested(pix)?;
        let (lon, lat) = cdshealpix::nested::get(self.order as u8).center(nested);
        Ok((std::f64::consts::FRAC_PI_2 - lat, lon))
    }

    /// Unit vector of the centre of pixel `pix`, via cdshealpix.
    pub fn pix2vec(&self, pix: u64) -> Result<[f64; 3], HealpixError> {
        let nested = self.to_nested(pix)?;
        let (lon, lat) = cdshealpix::nested::get(self.order as u8).center(nested);
        let (sl, cl) = lon.sin_cos();
        let (sb, cb) = lat.sin_cos();
        Ok([cb * cl, cb * sl, sb])
    }

    /// The NESTED index of pixel `pix` of this grid (identity for a NESTED grid).
    pub fn to_nested(&self, pix: u64) -> Result<u64, HealpixError> {
        self.check_pixel(pix)?;
        Ok(match self.ordering {
            Ordering::Nested => pix,
            Ordering::Ring => cdshealpix::nested::get(self.order as u8).from_ring(pix),
        })
    }

    /// The RING index of pixel `pix` of this grid (identity for a RING grid).
    pub fn to_ring(&self, pix: u64) -> Result<u64, HealpixError> {
        self.check_pixel(pix)?;
        Ok(match self.ordering {
            Ordering::Ring => pix,
            Ordering::Nested => cdshealpix::nested::get(self.order as u8).to_ring(pix),
        })
    }

    fn check_pixel(&self, pix: u64) -> Result<(), HealpixError> {
        if pix >= self.npix() {
            return Err(HealpixError::BadPixel {
                pix,
                npix: self.npix(),
            });
        }
        Ok(())
    }

    /// `vec2pix` without input checks: `v` must be finite and non-zero.
    #[inline(always)]
    fn vec2pix_unchecked(&self, v: [f64; 3]) -> u64 {
        match self.ordering {
            Ordering::Ring => self.vec2pix_in::<false>(v),
            Ordering::Nested => self.vec2pix_in::<true>(v),
        }
    }

    /// `vec2pix` of a block of finite non-zero vectors into `out` (same length), with the
    /// ordering decided once per block.
    #[inline]
    pub(crate) fn vec2pix_block(&self, v: &[[f64; 3]], out: &mut [u64]) {
        debug_assert_eq!(v.len(), out.len());
        match self.ordering {
            Ordering::Ring => {
                for (v, o) in v.iter().zip(out.iter_mut()) {
                    *o = self.vec2pix_in::<false>(*v);
                }
            }
            Ordering::Nested => {
                for (v, o) in v.iter().zip(out.iter_mut()) {
                    *o = self.vec2pix_in::<true>(*v);
                }
            }
        }
    }

    /// Mirrors HEALPix C++ `T_Healpix_Base::vec2pix` operation by operation.
    #[inline(always)]
    fn vec2pix_in<const NEST: bool>(&self, v: [f64; 3]) -> u64 {
        let [x, y, z] = v;
        let xl = 1.0 / (x * x + y * y + z * z).sqrt();
        let phi = if x == 0.0 && y == 0.0 {
            0.0
        } else {
            y.atan2(x)
        }; // safe_atan2
        let nz = z * xl;
        let pix = if nz.abs() > 0.99 {
            self.loc2pix_in::<NEST>(nz, phi, (x * x + y * y).sqrt() * xl, true)
        } else {
            self.loc2pix_in::<NEST>(nz, phi, 0.0, false)
        };
        pix as u64
    }

    #[inline(always)]
    fn loc2pix(&self, z: f64, phi: f64, sth: f64, have_sth: bool) -> i64 {
        match self.ordering {
            Ordering::Ring => self.loc2pix_in::<false>(z, phi, sth, have_sth),
            Ordering::Nested => self.loc2pix_in::<true>(z, phi, sth, have_sth),
        }
    }

    /// HEALPix C++ `T_Healpix_Base::loc2pix(z, phi, sth, have_sth)`.
    #[inline(always)]
    fn loc2pix_in<const NEST: bool>(&self, z: f64, phi: f64, sth: f64, have_sth: bool) -> i64 {
        let nside = self.nside;
        let nside_f = nside as f64;
        let za = z.abs();
        let tt = fmodulo4(phi * INV_HALFPI);
        let polar_tmp = || {
            if za < 0.99 || !have_sth {
                nside_f * (3.0 * (1.0 - za)).sqrt()
            } else {
                nside_f * sth / ((1.0 + za) / 3.0).sqrt()
            }
        };
        if !NEST {
            if za <= TWOTHIRD {
                let nl4 = 4 * nside;
                let temp1 = nside_f * (0.5 + tt);
                let temp2 = nside_f * z * 0.75;
                let jp = (temp1 - temp2) as i64; // ascending edge line
                let jm = (temp1 + temp2) as i64; // descending edge line
                let ir = nside + 1 + jp - jm; // ring counted from z = 2/3, in 1..=2n+1
                let kshift = 1 - (ir & 1);
                let t1 = jp + jm - nside + kshift + 1 + nl4 + nl4;
                let ip = if self.order > 0 {
                    (t1 >> 1) & (nl4 - 1)
                } else {
                    (t1 >> 1) % nl4
                };
                self.ncap + (ir - 1) * nl4 + ip
            } else {
                let tp = tt - (tt as i64) as f64;
                let tmp = polar_tmp();
                let jp = (tp * tmp) as i64;
                let jm = ((1.0 - tp) * tmp) as i64;
                let ir = jp + jm + 1; // ring counted from the closest pole
                let ip = (tt * ir as f64) as i64;
                if z > 0.0 {
                    2 * ir * (ir - 1) + ip
                } else {
                    self.npix - 2 * ir * (ir + 1) + ip
                }
            }
        } else {
            if za <= TWOTHIRD {
                let temp1 = nside_f * (0.5 + tt);
                let temp2 = nside_f * (z * 0.75);
                let jp = (temp1 - temp2) as i64;
                let jm = (temp1 + temp2) as i64;
                let ifp = jp >> self.order;
                let ifm = jm >> self.order;
                let face = if ifp == ifm {
                    ifp | 4
                } else if ifp < ifm {
                    ifp
                } else {
                    ifm + 8
                };
                let ix = jm & (nside - 1);
                let iy = nside - (jp & (nside - 1)) - 1;
                self.xyf2nest(ix, iy, face)
            } else {
                let ntt = (tt as i64).min(3);
                let tp = tt - ntt as f64;
                let tmp = polar_tmp();
                let jp = ((tp * tmp) as i64).min(nside - 1);
                let jm = (((1.0 - tp) * tmp) as i64).min(nside - 1);
                if z >= 0.0 {
                    self.xyf2nest(nside - jm - 1, nside - jp - 1, ntt)
                } else {
                    self.xyf2nest(jp, jm, ntt + 8)
                }
            }
        }
    }

    #[inline(always)]
    fn xyf2nest(&self, ix: i64, iy: i64, face: i64) -> i64 {
        (face << (2 * self.order))
            + spread_bits(ix as u64) as i64
            + ((spread_bits(iy as u64) as i64) << 1)
    }
}

/// HEALPix C++ `fmodulo(v1, v2)`: the remainder of `v1 / v2` in `[0, v2)`, for `v2 > 0`.
fn fmodulo(v1: f64, v2: f64) -> f64 {
    if v1 >= 0.0 {
        if v1 < v2 { v1 } else { v1 % v2 }
    } else {
        let tmp = v1 % v2 + v2;
        if tmp == v2 { 0.0 } else { tmp }
    }
}

/// HEALPix C++ `fmodulo(v, 4.0)` for `v = φ·(2/π)`, `φ` from `atan2`, so `|v| ≤ 2` (+ rounding).
///
/// `fmod(v, 4) == v` exactly for `|v| < 4`, so no `fmod` call is needed; other inputs (only from
/// `ang2pix` with large `|φ|`) take the general path.
#[inline(always)]
fn fmodulo4(v: f64) -> f64 {
    if v >= 0.0 {
        if v < 4.0 { v } else { v % 4.0 }
    } else {
        let tmp = if v > -4.0 { v + 4.0 } else { v % 4.0 + 4.0 };
        if tmp == 4.0 { 0.0 } else { tmp }
    }
}

/// Spreads the low 32 bits of `v` to the even bit positions (Morton / z-order interleave).
#[inline(always)]
fn spread_bits(v: u64) -> u64 {
    let mut x = v & 0xFFFF_FFFF;
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    x = (x | (x << 1)) & 0x5555_5555_5555_5555;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ordering_header_spellings_round_trip() {
        for o in [Ordering::Ring, Ordering::Nested] {
            assert_eq!(Ordering::parse_header(o.header_name()), Some(o));
        }
        assert_eq!(Ordering::parse_header("nest"), Some(Ordering::Nested));
        assert_eq!(Ordering::parse_header("ring"), Some(Ordering::Ring));
        assert_eq!(Ordering::parse_header("RINGS"), None);
    }

    fn random_unit(rng: &mut ChaCha8Rng) -> [f64; 3] {
        let z: f64 = rng.random_range(-1.0..=1.0);
        let phi: f64 = rng.random_range(0.0..std::f64::consts::TAU);
        let s = (1.0 - z * z).sqrt();
        [s * phi.cos(), s * phi.sin(), z]
    }

    #[test]
    fn known_values_from_healpy_docs() {
        // healpy 1.16.1 (Debian python3-healpy), as in its docstrings: vec2pix(16, 1, 0, 0) =
        // 1504; vec2pix(16, [1,0],[0,1],[0,0]) = [1504, 1520]; vec2pix([1,2,4,8], 1, 0, 0) =
        // [4, 20, 88, 368]; ang2pix(16, [π/2, π/4, π/2, 0, π], [0, π/4, π/2, 0, 0]) =
        // [1440, 427, 1520, 0, 3068]; ang2pix(16, π/2, 0, nest=True) = 1216.
        let ring = |n| Healpix::new(n, Ordering::Ring).unwrap();
        assert_eq!(ring(16).vec2pix([1.0, 0.0, 0.0]).unwrap(), 1504);
        assert_eq!(ring(16).vec2pix([0.0, 1.0, 0.0]).unwrap(), 1520);
        for (n, p) in [(1, 4), (2, 20), (4, 88), (8, 368)] {
            assert_eq!(ring(n).vec2pix([1.0, 0.0, 0.0]).unwrap(), p);
        }
        use std::f64::consts::{FRAC_PI_2 as H, FRAC_PI_4 as Q};
        let r16 = ring(16);
        for ((t, p), pix) in [(H, 0.0), (Q, Q), (H, H), (0.0, 0.0), (PI, 0.0)]
            .into_iter()
            .zip([1440, 427, 1520, 0, 3068])
        {
            assert_eq!(r16.ang2pix(t, p).unwrap(), pix);
        }
        let n16 = Healpix::new(16, Ordering::Nested).unwrap();
        assert_eq!(n16.ang2pix(H, 0.0).unwrap(), 1216);
    }

    #[test]
    fn rejects_bad_inputs() {
        for nside in [0, 3, 12, MAX_NSIDE * 2] {
            assert_eq!(
                Healpix::new(nside, Ordering::Ring),
                Err(HealpixError::BadNside { nside })
            );
        }
        assert!(Healpix::new(MAX_NSIDE, Ordering::Nested).is_ok());
        let hp = Healpix::new(4, Ordering::Ring).unwrap();
        for v in [
            [0.0; 3],
            [f64::NAN, 0.0, 1.0],
            [f64::INFINITY, 0.0, 0.0],
            [1e300, 1e300, 0.0],
        ] {
            assert!(
                matches!(hp.vec2pix(v), Err(HealpixError::BadVector { .. })),
                "{v:?}"
            );
        }
        for (t, p) in [
            (-1e-12, 0.0),
            (PI + 1e-12, 0.0),
            (f64::NAN, 0.0),
            (1.0, f64::INFINITY),
        ] {
            assert!(matches!(
                hp.ang2pix(t, p),
                Err(HealpixError::BadAngle { .. })
            ));
        }
        assert_eq!(
            hp.pix2vec(192),
            Err(HealpixError::BadPixel {
                pix: 192,
                npix: 192
            })
        );
        assert!(hp.pix2ang(192).is_err() && hp.to_ring(192).is_err() && hp.to_nested(192).is_err());
        let mut out = [0u64; 2];
        assert_eq!(
            hp.vec2pix_batch(&[[1.0, 0.0, 0.0]], &mut out),
            Err(HealpixError::LengthMismatch {
                inputs: 1,
                outputs: 2
            })
        );
        let e = hp
            .vec2pix_batch(&[[1.0, 0.0, 0.0], [0.0; 3]], &mut out)
            .unwrap_err();
        assert!(matches!(e, HealpixError::InBatch { index: 1, .. }), "{e}");
        assert!(matches!(
            hp.ang2pix_batch(&[(0.0, 0.0)], &mut out),
            Err(HealpixError::LengthMismatch { .. })
        ));
        assert!(matches!(
            hp.ang2pix_batch(&[(0.0, 0.0), (4.0, 0.0)], &mut out),
            Err(HealpixError::InBatch { index: 1, .. })
        ));
    }

    #[test]
    fn every_pixel_centre_maps_back_to_its_pixel() {
        for order in 0..=5 {
            for ordering in [Ordering::Ring, Ordering::Nested] {
                let hp = Healpix::new(1 << order, ordering).unwrap();
                for pix in 0..hp.npix() {
                    let v = hp.pix2vec(pix).unwrap();
                    assert_eq!(hp.vec2pix(v).unwrap(), pix, "order {order} {ordering:?}");
                    let (t, p) = hp.pix2ang(pix).unwrap();
                    assert_eq!(hp.ang2pix(t, p).unwrap(), pix);
                    let other = match ordering {
                        Ordering::Ring => hp.to_nested(pix).unwrap(),
                        Ordering::Nested => hp.to_ring(pix).unwrap(),
                    };
                    let twin = Healpix::new(
                        1 << order,
                        match ordering {
                            Ordering::Ring => Ordering::Nested,
                            Ordering::Nested => Ordering::Ring,
                        },
                    )
                    .unwrap();
                    assert_eq!(twin.vec2pix(v).unwrap(), other);
                }
            }
        }
    }

    #[test]
    fn random_pixel_centres_round_trip_at_high_nside() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for order in [10, 13, 20, 29] {
            for ordering in [Ordering::Ring, Ordering::Nested] {
                let hp = Healpix::new(1 << order, ordering).unwrap();
                for _ in 0..2000 {
                    let pix = rng.random_range(0..hp.npix());
                    assert_eq!(hp.vec2pix(hp.pix2vec(pix).unwrap()).unwrap(), pix);
                }
            }
        }
    }

    #[test]
    fn agrees_with_cdshealpix_on_random_directions() {
        // Independent implementation (lon/lat based). Random points are never within rounding
        // distance of a boundary in practice, so the two must agree exactly.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for order in [0u8, 1, 5, 8, 11, 13, 20, 29] {
            let layer = cdshealpix::nested::get(order);
            let nest = Healpix::new(1 << order, Ordering::Nested).unwrap();
            let ring = Healpix::new(1 << order, Ordering::Ring).unwrap();
            for _ in 0..5000 {
                let v = random_unit(&mut rng);
                let lon = v[1].atan2(v[0]);
                let lat = v[2].atan2((v[0] * v[0] + v[1] * v[1]).sqrt());
                let h = layer.hash(lon, lat);
                assert_eq!(nest.vec2pix(v).unwrap(), h, "order {order} {v:?}");
                assert_eq!(
                    ring.vec2pix(v).unwrap(),
                    layer.to_ring(h),
                    "order {order} {v:?}"
                );
            }
        }
    }

    #[test]
    fn scaling_a_vector_keeps_its_pixel() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let hp = Healpix::new(1024, Ordering::Nested).unwrap();
        for _ in 0..1000 {
            let v = random_unit(&mut rng);
            let p = hp.vec2pix(v).unwrap();
            assert_eq!(hp.vec2pix(v.map(|c| c * 1e-3)).unwrap(), p);
            assert_eq!(hp.vec2pix(v.map(|c| c * 4.0)).unwrap(), p);
        }
    }

    #[test]
    fn fmodulo_matches_the_general_definition() {
        // HEALPix C++: v >= 0 ? (v < 4 ? v : fmod(v, 4)) : (t = fmod(v, 4) + 4, t == 4 ? 0 : t).
        let reference = |v: f64| fmodulo(v, 4.0);
        for v in [
            0.0, -0.0, 1e-300, -1e-300, -1e-17, 2.0, -2.0, 3.999, 4.0, -4.0, 9.5, -9.5, -1e-16,
        ] {
            assert_eq!(fmodulo4(v).to_bits(), reference(v).to_bits(), "{v}");
        }
        assert_eq!(fmodulo4(-1e-17), 0.0); // rounds to 4 → wrapped to 0
        assert_eq!(fmodulo(-1e-17, TAU), 0.0);
        assert_eq!(fmodulo(-1.0, TAU), TAU - 1.0);
        assert_eq!(fmodulo(7.0, TAU), 7.0 % TAU);
        assert_eq!(fmodulo(-7.0, TAU), -7.0 % TAU + TAU);
    }

    #[test]
    fn spread_bits_interleaves() {
        assert_eq!(spread_bits(0b1011), 0b1000101);
        assert_eq!(spread_bits(u32::MAX as u64), 0x5555_5555_5555_5555);
    }
}
