//! The sky map: a tessellation of the sky into tracts and patches (pure geometry, no I/O).
//!
//! **Tracts.** The sky is cut into `rings` declination rings of equal height
//! `h = 180° / (rings + 1)` plus two polar caps of radius `h / 2`. Ring `i` covers
//! `Dec ∈ [-90° + h/2 + i·h, -90° + h/2 + (i+1)·h)` and is split into `n_i` tracts of equal RA
//! width, `n_i = ⌈360° · cos(Dec nearest the equator) / h⌉`, tract `j` centred on
//! `RA = j · 360°/n_i`. These RA/Dec cells are the tracts' *inner regions*: a half-open partition
//! of the sphere, so every position lies in exactly one. Tract ids run from 0 (south cap)
//! through the rings, south to north, to the north cap.
//!
//! **Projection and patches.** Each tract has its own gnomonic (TAN) projection centred on its
//! centre (the pole for a cap), pixel x growing towards local east and y towards local north,
//! and a pixel grid of `patches_x × patches_y` patches of `patch_size` pixels, centred on the
//! tract centre and large enough to hold the projected inner region plus `border` pixels on
//! every side. A patch's inner region is its `patch_size`-pixel square; its outer region adds
//! `border` pixels all round. Inside a tract the inner squares tile the grid, so a position has
//! exactly one (tract, patch) whose inner regions both contain it ([`SkyMap::locate`]).
//!
//! A pixel rectangle of a gnomonic projection is exactly a spherical quadrilateral with
//! great-circle edges, so patch and tract footprints are exact [`ConvexPolygon`]s and every
//! overlap test is the unit-vector test of [`crate::sphere`]: no special case at RA = 0 or at
//! the poles.

use serde::{Deserialize, Serialize};

use crate::sphere::{ConvexPolygon, SkyPoint, Vec3};

/// Largest tract grid side, in pixels (pixel indices stay exact in `f64` and fit `i32`).
const MAX_TRACT_PIXELS: f64 = 2.0e9;

/// Boundary samples per inner-region edge when measuring its projected extent.
const EDGE_SAMPLES: usize = 256;

/// Safety margin (pixels) added to the sampled projected extent of an inner region.
const EXTENT_MARGIN: f64 = 2.0;

/// The `[skymap]` configuration table. Unknown keys are refused.
///
/// ```toml
/// [skymap]
/// rings = 120          # declination rings between the two polar caps
/// pixel_scale = 0.2    # arcsec per pixel
/// patch_size = 4000    # patch inner side, pixels
/// border = 100         # patch overlap border, pixels
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SkyMapConfig {
    /// Number of declination rings between the polar caps (at least 3; ring height is
    /// `180° / (rings + 1)`, which is also the nominal tract size).
    pub rings: u32,
    /// Pixel scale of every tract's grid, arcsec per pixel.
    pub pixel_scale: f64,
    /// Side of a patch's inner region, pixels.
    pub patch_size: u32,
    /// Width of the border around a patch's inner region (overlap with neighbours), pixels.
    pub border: u32,
}

impl Default for SkyMapConfig {
    fn default() -> Self {
        Self {
            rings: 120,
            pixel_scale: 0.2,
            patch_size: 4000,
            border: 100,
        }
    }
}

/// Why a [`SkyMapConfig`] is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SkyMapError {
    /// Fewer than three rings (tracts would span more than 45°).
    #[error("skymap.rings is {0}, expected at least 3")]
    TooFewRings(u32),
    /// The pixel scale is not a finite positive number.
    #[error("skymap.pixel_scale is {0}, expected a finite positive number of arcsec")]
    BadPixelScale(f64),
    /// The patch size is zero.
    #[error("skymap.patch_size is 0, expected a positive number of pixels")]
    ZeroPatchSize,
    /// The border is not smaller than the patch.
    #[error("skymap.border is {border}, expected less than patch_size {patch_size}")]
    BorderTooLarge {
        /// The border given.
        border: u32,
        /// The patch size given.
        patch_size: u32,
    },
    /// A tract id that the sky map does not have (a stored tract row that does not match the
    /// stored configuration).
    #[error("tract {0} is not in the sky map")]
    UnknownTract(i64),
    /// A tract would have more pixels on a side than the grid can index.
    #[error("a tract would be {pixels:.3e} pixels across, more than {MAX_TRACT_PIXELS:e}")]
    TractTooLarge {
        /// Tract side in pixels.
        pixels: f64,
    },
}

impl SkyMapConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), SkyMapError> {
        if self.rings < 3 {
            return Err(SkyMapError::TooFewRings(self.rings));
        }
        if !(self.pixel_scale.is_finite() && self.pixel_scale > 0.0) {
            return Err(SkyMapError::BadPixelScale(self.pixel_scale));
        }
        if self.patch_size == 0 {
            return Err(SkyMapError::ZeroPatchSize);
        }
        if self.border >= self.patch_size {
            return Err(SkyMapError::BorderTooLarge {
                border: self.border,
                patch_size: self.patch_size,
            });
        }
        // The widest tract is a ring tract near the equator: about 2h across in RA at worst.
        let h = 180.0 / f64::from(self.rings + 1);
        let pixels =
            2.0 * h.to_radians().tan().abs().max(h.to_radians()) * 206_264.806 / self.pixel_scale;
        if pixels.is_nan() || pixels >= MAX_TRACT_PIXELS {
            return Err(SkyMapError::TractTooLarge { pixels });
        }
        Ok(())
    }
}

/// A patch: its tract and its column/row in the tract's patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatchId {
    /// Tract id.
    pub tract: u32,
    /// Patch column (pixel x / patch_size).
    pub x: u32,
    /// Patch row (pixel y / patch_size).
    pub y: u32,
}

/// One declination ring of tracts (caps are rings of one tract).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ring {
    /// Inner-region Dec bounds (degrees); the caps use ±90 for their pole side.
    dec_lo: f64,
    dec_hi: f64,
    /// Number of tracts in the ring.
    count: u32,
    /// Id of the ring's first tract.
    first: u32,
    /// Whether this ring is a polar cap (one tract centred on the pole).
    cap: bool,
    /// Patch grid (columns, rows) of the ring's tracts, alike for all of them.
    grid: (u32, u32),
    /// Dec range (degrees) reached by the ring's tract footprints (all alike up to a rotation
    /// about the pole axis), from their exact bounding boxes.
    reach: (f64, f64),
}

/// One tract: its projection, pixel grid and patch grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Tract {
    /// Tract id.
    pub id: u32,
    /// Projection centre (the pole for a polar cap).
    pub centre: SkyPoint,
    /// Number of patch columns.
    pub patches_x: u32,
    /// Number of patch rows.
    pub patches_y: u32,
    /// Pixel scale, arcsec per pixel.
    pub pixel_scale: f64,
    /// Patch inner side, pixels.
    pub patch_size: u32,
    /// Patch border, pixels.
    pub border: u32,
    /// Tangent-plane basis at the centre: centre, east, north unit vectors.
    basis: [Vec3; 3],
}

impl Tract {
    fn new(id: u32, centre: SkyPoint, config: &SkyMapConfig) -> Self {
        let c = centre.to_vector();
        let (sr, cr) = centre.ra().to_radians().sin_cos();
        // East along increasing RA; at a pole the centre's RA (0) fixes the orientation.
        let east = Vec3::new(-sr, cr, 0.0);
        let north = c.cross(east);
        Self {
            id,
            centre,
            patches_x: 0,
            patches_y: 0,
            pixel_scale: config.pixel_scale,
            patch_size: config.patch_size,
            border: config.border,
            basis: [c, east, north],
        }
    }

    /// Radians of tangent plane per pixel.
    fn radians_per_pixel(&self) -> f64 {
        (self.pixel_scale / 3600.0).to_radians()
    }

    /// Tract grid size in pixels (x, y).
    pub fn size_pixels(&self) -> (f64, f64) {
        let p = f64::from(self.patch_size);
        (f64::from(self.patches_x) * p, f64::from(self.patches_y) * p)
    }

    /// Pixel coordinates of a unit vector, or `None` when it is not in front of the tangent
    /// plane (90° or more from the centre).
    pub fn project_vector(&self, v: Vec3) -> Option<(f64, f64)> {
        let [c, e, n] = self.basis;
        let d = v.dot(c);
        if d <= 1e-12 {
            return None;
        }
        let s = 1.0 / (d * self.radians_per_pixel());
        let (w, h) = self.size_pixels();
        Some((w / 2.0 + v.dot(e) * s, h / 2.0 + v.dot(n) * s))
    }

    /// Pixel coordinates of a sky position (see [`Tract::project_vector`]).
    pub fn project(&self, p: SkyPoint) -> Option<(f64, f64)> {
        self.project_vector(p.to_vector())
    }

    /// The sky position of pixel coordinates (any finite values).
    pub fn deproject(&self, x: f64, y: f64) -> SkyPoint {
        let [c, e, n] = self.basis;
        let (w, h) = self.size_pixels();
        let r = self.radians_per_pixel();
        let v = c + e.scale((x - w / 2.0) * r) + n.scale((y - h / 2.0) * r);
        SkyPoint::from_vector(v).expect("tangent-plane point is a non-zero finite vector")
    }

    /// The spherical quadrilateral of a pixel rectangle (exact: TAN maps great circles to lines).
    fn pixel_rectangle(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> ConvexPolygon {
        let corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)].map(|(x, y)| self.deproject(x, y));
        ConvexPolygon::new(&corners).expect("a pixel rectangle projects to a convex quadrilateral")
    }

    /// The tract's whole footprint: its pixel grid plus the patch border all round (it holds
    /// every patch's outer region).
    pub fn footprint(&self) -> ConvexPolygon {
        let (w, h) = self.size_pixels();
        let b = f64::from(self.border);
        self.pixel_rectangle(-b, -b, w + b, h + b)
    }

    /// A patch's outer region (inner square plus border), as a sky polygon.
    pub fn patch_outer(&self, x: u32, y: u32) -> ConvexPolygon {
        let (p, b) = (f64::from(self.patch_size), f64::from(self.border));
        let (x0, y0) = (f64::from(x) * p, f64::from(y) * p);
        self.pixel_rectangle(x0 - b, y0 - b, x0 + p + b, y0 + p + b)
    }

    /// A patch's inner region, as a sky polygon.
    pub fn patch_inner(&self, x: u32, y: u32) -> ConvexPolygon {
        let p = f64::from(self.patch_size);
        let (x0, y0) = (f64::from(x) * p, f64::from(y) * p);
        self.pixel_rectangle(x0, y0, x0 + p, y0 + p)
    }

    /// The patch whose inner square holds pixel (x, y), if it is on the grid.
    fn patch_at(&self, x: f64, y: f64) -> Option<PatchId> {
        let p = f64::from(self.patch_size);
        let (i, j) = ((x / p).floor(), (y / p).floor());
        let inside = |k: f64, n: u32| k >= 0.0 && k < f64::from(n);
        (inside(i, self.patches_x) && inside(j, self.patches_y)).then_some(PatchId {
            tract: self.id,
            x: i as u32,
            y: j as u32,
        })
    }

    /// Every patch of this tract whose outer region intersects `region` (touching counts).
    pub fn patches_overlapping(&self, region: &ConvexPolygon) -> Vec<PatchId> {
        let (nx, ny) = (self.patches_x, self.patches_y);
        // Candidate range from the projected vertices: the polygon's edges are straight lines in
        // the tangent plane when every vertex is in front of it; otherwise try the whole grid.
        let projected: Option<Vec<(f64, f64)>> = region
            .unit_vectors()
            .iter()
            .map(|&v| self.project_vector(v))
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = (0, nx, 0, ny);
        if let Some(pts) = projected {
            let (p, b) = (f64::from(self.patch_size), f64::from(self.border) + 1.0);
            let range = |lo: f64, hi: f64, n: u32| {
                let a = ((lo - b) / p).floor().clamp(0.0, f64::from(n));
                let z = ((hi + b) / p).floor().clamp(-1.0, f64::from(n) - 1.0) + 1.0;
                (a as u32, z.max(a) as u32)
            };
            let fold = |f: fn(&(f64, f64)) -> f64| {
                pts.iter()
                    .map(f)
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                        (lo.min(v), hi.max(v))
                    })
            };
            let (lx, hx) = fold(|q| q.0);
            let (ly, hy) = fold(|q| q.1);
            (x0, x1) = range(lx, hx, nx);
            (y0, y1) = range(ly, hy, ny);
        }
        let mut out = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                if self.patch_outer(x, y).intersects(region) {
                    out.push(PatchId {
                        tract: self.id,
                        x,
                        y,
                    });
                }
            }
        }
        out
    }
}

/// A validated sky map: the configuration and the ring layout derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SkyMap {
    config: SkyMapConfig,
    rings: Vec<Ring>,
}

impl SkyMap {
    /// Builds the sky map of a configuration (validated first).
    pub fn new(config: SkyMapConfig) -> Result<Self, SkyMapError> {
        config.validate()?;
        let n = config.rings;
        let h = 180.0 / f64::from(n + 1);
        let edge = 90.0 - h / 2.0;
        let mut rings = Vec::with_capacity(n as usize + 2);
        rings.push(Ring {
            dec_lo: -90.0,
            dec_hi: -edge,
            count: 1,
            first: 0,
            cap: true,
            grid: (0, 0),
            reach: (-90.0, 90.0),
        });
        let mut next = 1;
        for i in 0..n {
            let dec_lo = -edge + f64::from(i) * h;
            let dec_hi = if i + 1 == n {
                edge
            } else {
                -edge + f64::from(i + 1) * h
            };
            let nearest = if dec_lo <= 0.0 && dec_hi >= 0.0 {
                0.0
            } else {
                dec_lo.abs().min(dec_hi.abs())
            };
            let count = ((360.0 * nearest.to_radians().cos() / h).ceil() as u32).max(1);
            rings.push(Ring {
                dec_lo,
                dec_hi,
                count,
                first: next,
                cap: false,
                grid: (0, 0),
                reach: (-90.0, 90.0),
            });
            next += count;
        }
        rings.push(Ring {
            dec_lo: edge,
            dec_hi: 90.0,
            count: 1,
            first: next,
            cap: true,
            grid: (0, 0),
            reach: (-90.0, 90.0),
        });
        let mut map = Self { config, rings };
        for i in 0..map.rings.len() {
            map.rings[i].grid = map.grid_of_ring(&map.rings[i]);
            let tract = map
                .tract(map.rings[i].first)
                .expect("every ring has a tract");
            let bb = tract.footprint().bounding_box();
            map.rings[i].reach = (z_to_dec(bb.min[2]), z_to_dec(bb.max[2]));
        }
        Ok(map)
    }

    /// The configuration this map was built from.
    pub fn config(&self) -> &SkyMapConfig {
        &self.config
    }

    /// Number of tracts.
    pub fn tract_count(&self) -> u32 {
        let last = self.rings.last().expect("a sky map has two caps");
        last.first + last.count
    }

    fn ring_of_tract(&self, id: u32) -> Option<&Ring> {
        self.rings
            .iter()
            .find(|r| id >= r.first && id < r.first + r.count)
    }

    /// Index into `rings` of the ring whose inner Dec range holds `dec` (north cap includes
    /// +90°, south cap includes -90°).
    fn ring_index(&self, dec: f64) -> usize {
        let last = self.rings.len() - 1;
        if dec >= self.rings[last].dec_lo {
            return last;
        }
        if dec < self.rings[0].dec_hi {
            return 0;
        }
        let h = 180.0 / f64::from(self.config.rings + 1);
        let i = ((dec - self.rings[0].dec_hi) / h).floor() as isize + 1;
        let mut i = i.clamp(1, last as isize - 1) as usize;
        // Guard the floor against rounding at a ring edge.
        while i > 1 && dec < self.rings[i].dec_lo {
            i -= 1;
        }
        while i < last - 1 && dec >= self.rings[i].dec_hi {
            i += 1;
        }
        i
    }

    /// Projection centre and RA width of tract `j` of `ring`.
    fn centre_of(ring: &Ring, j: u32) -> (SkyPoint, f64) {
        let width = 360.0 / f64::from(ring.count);
        let (ra, dec) = if ring.cap {
            (0.0, if ring.dec_lo < 0.0 { -90.0 } else { 90.0 })
        } else {
            (f64::from(j) * width, (ring.dec_lo + ring.dec_hi) / 2.0)
        };
        let centre = SkyPoint::new(ra, dec).expect("tract centre is a valid position");
        (centre, width)
    }

    /// The patch grid of a ring's tracts: the projected inner region of its first tract plus
    /// the border and a margin, centred on the tract centre. Every tract of a ring is the
    /// first one rotated about the pole axis, so they share it.
    fn grid_of_ring(&self, ring: &Ring) -> (u32, u32) {
        let (centre, width) = Self::centre_of(ring, 0);
        // With an empty grid, projected coordinates are offsets from the centre.
        let tract = Tract::new(ring.first, centre, &self.config);
        let (mut half_x, mut half_y) = (0.0f64, 0.0f64);
        for p in inner_boundary(ring, centre.ra(), width) {
            let (x, y) = tract
                .project(p)
                .expect("an inner region lies within 90° of its tract centre");
            half_x = half_x.max(x.abs());
            half_y = half_y.max(y.abs());
        }
        let pad = f64::from(self.config.border) + EXTENT_MARGIN;
        let p = f64::from(self.config.patch_size);
        let count = |half: f64| ((2.0 * (half + pad) / p).ceil() as u32).max(1);
        (count(half_x), count(half_y))
    }

    /// The tract with this id, or `None` past the last tract.
    pub fn tract(&self, id: u32) -> Option<Tract> {
        let ring = self.ring_of_tract(id)?;
        let (centre, _) = Self::centre_of(ring, id - ring.first);
        let mut tract = Tract::new(id, centre, &self.config);
        (tract.patches_x, tract.patches_y) = ring.grid;
        Some(tract)
    }

    /// Every tract, in id order.
    pub fn tracts(&self) -> impl Iterator<Item = Tract> + '_ {
        (0..self.tract_count()).filter_map(|id| self.tract(id))
    }

    /// The tract whose inner region holds `p` (exactly one).
    pub fn tract_of(&self, p: SkyPoint) -> u32 {
        let ring = &self.rings[self.ring_index(p.dec())];
        if ring.cap {
            return ring.first;
        }
        let width = 360.0 / f64::from(ring.count);
        let j = ((p.ra() / width + 0.5).floor() as i64).rem_euclid(i64::from(ring.count));
        ring.first + j as u32
    }

    /// The (tract, patch) whose inner regions hold `p`: exactly one for every position.
    pub fn locate(&self, p: SkyPoint) -> PatchId {
        let tract = self
            .tract(self.tract_of(p))
            .expect("tract_of returns a valid id");
        let (x, y) = tract
            .project(p)
            .expect("a position in a tract's inner region projects onto it");
        tract
            .patch_at(x, y)
            .expect("the patch grid covers the tract's inner region")
    }

    /// Ids of the tracts whose footprint may hold a point of Dec range [lo, hi] (degrees): the
    /// tracts of every ring whose footprints reach into that range.
    fn tracts_in_dec_range(&self, lo: f64, hi: f64) -> impl Iterator<Item = u32> + '_ {
        self.rings
            .iter()
            .filter(move |r| r.reach.0 <= hi && r.reach.1 >= lo)
            .flat_map(|r| r.first..r.first + r.count)
    }

    /// Every tract whose footprint ([`Tract::footprint`]) intersects `region`, in id order.
    pub fn tracts_overlapping(&self, region: &ConvexPolygon) -> Vec<Tract> {
        let bb = region.bounding_box();
        self.tracts_in_dec_range(z_to_dec(bb.min[2]), z_to_dec(bb.max[2]))
            .filter_map(|id| self.tract(id))
            .filter(|t| t.footprint().intersects(region))
            .collect()
    }

    /// Every patch (any tract) whose outer region intersects `region`, sorted.
    pub fn patches_overlapping(&self, region: &ConvexPolygon) -> Vec<PatchId> {
        let mut out: Vec<PatchId> = self
            .tracts_overlapping(region)
            .iter()
            .flat_map(|t| t.patches_overlapping(region))
            .collect();
        out.sort();
        out
    }

    /// Every patch (any tract) whose outer region holds `p`, sorted; includes [`SkyMap::locate`].
    pub fn patches_containing(&self, p: SkyPoint) -> Vec<PatchId> {
        let v = p.to_vector();
        let mut out = Vec::new();
        for id in self.tracts_in_dec_range(z_to_dec(v.z), z_to_dec(v.z)) {
            let Some(t) = self.tract(id) else { continue };
            let Some((x, y)) = t.project_vector(v) else {
                continue;
            };
            let (ps, b) = (f64::from(t.patch_size), f64::from(t.border));
            let lo = |c: f64, n: u32| ((c - b) / ps).floor().clamp(0.0, f64::from(n)) as u32;
            let hi =
                |c: f64, n: u32| (((c + b) / ps).floor() + 1.0).clamp(0.0, f64::from(n)) as u32;
            for py in lo(y, t.patches_y)..hi(y, t.patches_y) {
                for px in lo(x, t.patches_x)..hi(x, t.patches_x) {
                    if t.patch_outer(px, py).contains_vector(v) {
                        out.push(PatchId {
                            tract: id,
                            x: px,
                            y: py,
                        });
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// Declination (degrees) of the unit-vector z component `z`.
fn z_to_dec(z: f64) -> f64 {
    z.clamp(-1.0, 1.0).asin().to_degrees()
}

/// Points along the boundary of a tract's inner region (RA width `width` around `ra`).
fn inner_boundary(ring: &Ring, ra: f64, width: f64) -> Vec<SkyPoint> {
    let at = |ra: f64, dec: f64| SkyPoint::new(ra, dec).expect("boundary point is valid");
    let mut out = Vec::with_capacity(4 * (EDGE_SAMPLES + 1));
    if ring.cap {
        let dec = if ring.dec_lo < 0.0 {
            ring.dec_hi
        } else {
            ring.dec_lo
        };
        for k in 0..4 * EDGE_SAMPLES {
            out.push(at(360.0 * k as f64 / (4 * EDGE_SAMPLES) as f64, dec));
        }
        return out;
    }
    let (ra0, ra1) = (ra - width / 2.0, ra + width / 2.0);
    for k in 0..=EDGE_SAMPLES {
        let t = k as f64 / EDGE_SAMPLES as f64;
        let r = ra0 + t * (ra1 - ra0);
        let d = ring.dec_lo + t * (ring.dec_hi - ring.dec_lo);
        out.extend([
            at(r, ring.dec_lo),
            at(r, ring.dec_hi),
            at(ra0, d),
            at(ra1, d),
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> SkyMap {
        SkyMap::new(SkyMapConfig {
            rings: 12,
            pixel_scale: 36.0,
            patch_size: 400,
            border: 40,
        })
        .unwrap()
    }

    #[test]
    fn config_validation_and_unknown_keys() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            skymap: SkyMapConfig,
        }
        let err = toml::from_str::<Doc>("[skymap]\nrings = 12\nringz = 3\n").unwrap_err();
        assert!(err.to_string().contains("ringz"), "{err}");
        let doc: Doc = toml::from_str("[skymap]\nrings = 12\npixel_scale = 1.0\n").unwrap();
        assert_eq!(doc.skymap.patch_size, 4000);
        let bad = |c: SkyMapConfig| SkyMap::new(c).unwrap_err();
        let base = *small().config();
        assert_eq!(
            bad(SkyMapConfig { rings: 2, ..base }),
            SkyMapError::TooFewRings(2)
        );
        assert!(matches!(
            bad(SkyMapConfig {
                pixel_scale: f64::NAN,
                ..base
            }),
            SkyMapError::BadPixelScale(_)
        ));
        assert_eq!(
            bad(SkyMapConfig {
                patch_size: 0,
                ..base
            }),
            SkyMapError::ZeroPatchSize
        );
        assert!(matches!(
            bad(SkyMapConfig {
                border: 400,
                ..base
            }),
            SkyMapError::BorderTooLarge { .. }
        ));
        assert!(matches!(
            bad(SkyMapConfig {
                pixel_scale: 1e-9,
                ..base
            }),
            SkyMapError::TractTooLarge { .. }
        ));
    }

    /// The default map: 242 tracts on the equator (⌈360 / (180/121)⌉), each a 7 × 7 patch grid
    /// at most (1.49° + borders at 0.2"/px in 4000-pixel patches), and positions found anywhere.
    #[test]
    fn default_map_layout() {
        let map = SkyMap::new(SkyMapConfig::default()).unwrap();
        let eq = map
            .tract(map.tract_of(SkyPoint::new(0.0, 0.0).unwrap()))
            .unwrap();
        assert_eq!(map.rings[60].count, 242);
        assert!(eq.patches_x <= 7 && eq.patches_y <= 7, "{eq:?}");
        assert!(map.tract_count() > 15_000 && map.tract_count() < 25_000);
        for (ra, dec) in [(0.0, 0.0), (359.999, -45.0), (12.0, 89.9), (200.0, -90.0)] {
            let p = SkyPoint::new(ra, dec).unwrap();
            let id = map.locate(p);
            assert!(
                map.tract(id.tract)
                    .unwrap()
                    .patch_inner(id.x, id.y)
                    .contains(p)
            );
        }
    }

    #[test]
    fn layout_has_caps_and_rings_of_shrinking_tract_counts() {
        let map = small();
        // h = 180/13: 12 rings + 2 caps; equatorial rings have ⌈360/h⌉ = 26 tracts.
        assert_eq!(map.rings.len(), 14);
        assert_eq!(map.rings[6].count, 26);
        assert!(map.rings[1].count < map.rings[6].count);
        assert_eq!(map.tract_of(SkyPoint::new(0.0, -90.0).unwrap()), 0);
        assert_eq!(
            map.tract_of(SkyPoint::new(123.0, 90.0).unwrap()),
            map.tract_count() - 1
        );
        // RA 359.99 and 0.01 at the equator fall in the same tract (centred on RA 0).
        let a = map.tract_of(SkyPoint::new(359.99, 0.5).unwrap());
        let b = map.tract_of(SkyPoint::new(0.01, 0.5).unwrap());
        assert_eq!(a, b);
        assert_eq!(map.tract(a).unwrap().centre.ra(), 0.0);
    }

    #[test]
    fn project_deproject_round_trip() {
        let map = small();
        for t in map.tracts() {
            let (w, h) = t.size_pixels();
            for (x, y) in [(0.0, 0.0), (w, h), (w / 3.0, h * 0.7)] {
                let (x2, y2) = t.project(t.deproject(x, y)).unwrap();
                assert!(
                    (x - x2).abs() < 1e-6 && (y - y2).abs() < 1e-6,
                    "tract {}",
                    t.id
                );
            }
        }
    }

    fn point() -> impl Strategy<Value = SkyPoint> {
        // Uniform on the sphere, plus a share of points right at RA = 0 and the poles.
        prop_oneof![
            (0.0..360.0f64, -1.0..1.0f64).prop_map(|(ra, z)| SkyPoint::new(
                ra,
                z.asin().to_degrees()
            )
            .unwrap()),
            (-1e-6..1e-6f64, -90.0..90.0f64).prop_map(|(ra, d)| SkyPoint::new(ra, d).unwrap()),
            (0.0..360.0f64, 89.0..=90.0f64, any::<bool>()).prop_map(|(ra, d, s)| SkyPoint::new(
                ra,
                if s { d } else { -d }
            )
            .unwrap()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// Every position has exactly one (tract, patch) whose inner regions hold it; that
        /// patch's inner polygon contains it and its outer region is among the containing ones.
        #[test]
        fn inner_regions_partition_the_sky(p in point()) {
            let map = small();
            let id = map.locate(p);
            let tract = map.tract(id.tract).unwrap();
            prop_assert!(tract.patch_inner(id.x, id.y).contains(p));
            let containing = map.patches_containing(p);
            prop_assert!(containing.contains(&id), "{id:?} not in {containing:?}");
        }

        /// The partition holds for any configuration, near the caps and RA = 0 included.
        #[test]
        fn partition_holds_for_any_configuration(
            p in point(), rings in 3u32..60, scale in 1.0..60.0f64,
            patch in 50u32..2000, border_frac in 0.0..0.5f64,
        ) {
            let border = (f64::from(patch) * border_frac) as u32;
            let map = SkyMap::new(SkyMapConfig { rings, pixel_scale: scale, patch_size: patch, border });
            prop_assume!(map.is_ok());
            let map = map.unwrap();
            let id = map.locate(p);
            prop_assert!(map.tract(id.tract).unwrap().patch_inner(id.x, id.y).contains(p));
            prop_assert!(map.patches_containing(p).contains(&id));
        }

        /// Polygon lookup equals brute force over every patch of every tract.
        #[test]
        fn polygon_lookup_equals_brute_force(
            c in point(), w in 0.1..8.0f64, h in 0.1..8.0f64, rot in 0.0..90.0f64,
        ) {
            let map = small();
            let v = c.to_vector();
            let axis = if v.z.abs() < 0.9 { Vec3::new(0.0, 0.0, 1.0) } else { Vec3::new(1.0, 0.0, 0.0) };
            let e = axis.cross(v); let e = e.scale(1.0 / e.norm());
            let n = v.cross(e);
            let (s, co) = rot.to_radians().sin_cos();
            let corners: Vec<SkyPoint> = [(-w, -h), (w, -h), (w, h), (-w, h)].iter().map(|&(x, y)| {
                let (x, y) = ((x * co - y * s).to_radians() / 2.0, (x * s + y * co).to_radians() / 2.0);
                SkyPoint::from_vector(v + e.scale(x) + n.scale(y)).unwrap()
            }).collect();
            let poly = ConvexPolygon::new(&corners).unwrap();
            let fast = map.patches_overlapping(&poly);
            let mut brute = Vec::new();
            for t in map.tracts() {
                for y in 0..t.patches_y { for x in 0..t.patches_x {
                    if t.patch_outer(x, y).intersects(&poly) {
                        brute.push(PatchId { tract: t.id, x, y });
                    }
                }}
            }
            brute.sort();
            prop_assert_eq!(fast, brute);
        }
    }
}
