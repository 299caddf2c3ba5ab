//! Pure spherical geometry: sky points, unit vectors, convex spherical polygons.
//!
//! A [`ConvexPolygon`] is bounded by great-circle arcs between consecutive vertices.
//! Everything is computed on 3-D unit vectors, so RA = 0/360 and the poles need no special case.
//! Polygons are closed sets: a point within [`BOUNDARY_TOLERANCE`] of the boundary is inside,
//! so two polygons that share an edge or a vertex intersect.
//!
//! **Invariant:** this module does no I/O and knows nothing of SQLite.
//!
//! ```
//! use skypipe_registry::sphere::{ConvexPolygon, SkyPoint};
//! // A 0.2° square straddling RA = 0 and one across the pole.
//! let square = ConvexPolygon::from_radec(&[(359.9, -0.1), (0.1, -0.1), (0.1, 0.1), (359.9, 0.1)])?;
//! let cap = ConvexPolygon::from_radec(&[(0.0, 89.0), (90.0, 89.0), (180.0, 89.0), (270.0, 89.0)])?;
//! assert!(square.contains(SkyPoint::new(0.0, 0.0)?));
//! assert!(cap.contains(SkyPoint::new(123.0, 90.0)?));
//! assert!(!square.intersects(&cap));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// Slack, in radians (sine of the angular distance), by which a point may lie outside a
/// polygon's edge and still count as inside; also the minimum margin demanded for convexity.
pub const BOUNDARY_TOLERANCE: f64 = 1e-12;

/// Two consecutive vertices whose chord is shorter than this (radians) are coincident.
const MIN_EDGE_SIN: f64 = 1e-10;

/// Padding added to every side of a [`Box3`] so that the boundary tolerance and rounding
/// cannot make the box miss a point the exact test counts as inside.
const BOX_PADDING: f64 = 1e-9;

/// Why a single sky coordinate was rejected.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum PointError {
    /// RA or Dec is NaN or infinite.
    #[error("coordinate is not finite: ra={ra}, dec={dec}")]
    NonFinite {
        /// The RA given, in degrees.
        ra: f64,
        /// The Dec given, in degrees.
        dec: f64,
    },
    /// Dec is outside [-90°, 90°].
    #[error("dec={dec} is outside [-90, 90] degrees")]
    DecOutOfRange {
        /// The Dec given, in degrees.
        dec: f64,
    },
}

/// Why a list of vertices does not describe a convex spherical polygon.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeometryError {
    /// One vertex is not a valid sky coordinate.
    #[error("vertex {index}: {source}")]
    Vertex {
        /// Position of the vertex in the input.
        index: usize,
        /// What was wrong with it.
        #[source]
        source: PointError,
    },
    /// Fewer than three vertices.
    #[error("a polygon needs at least 3 vertices, got {found}")]
    TooFewVertices {
        /// Number of vertices given.
        found: usize,
    },
    /// Two consecutive vertices are the same point, so their edge has no direction.
    #[error("vertices {first} and {second} coincide")]
    CoincidentVertices {
        /// Input index of the first vertex of the edge.
        first: usize,
        /// Input index of the second vertex of the edge.
        second: usize,
    },
    /// Two consecutive vertices are antipodal, so the great circle between them is undefined.
    #[error("vertices {first} and {second} are antipodal")]
    AntipodalVertices {
        /// Input index of the first vertex of the edge.
        first: usize,
        /// Input index of the second vertex of the edge.
        second: usize,
    },
    /// The polygon is not strictly convex: a vertex lies on, or on the wrong side of, the great
    /// circle of an edge it does not belong to (collinear, reflex or self-intersecting shapes).
    #[error(
        "not strictly convex: vertex {vertex} is on or outside the great circle of edge {edge}"
    )]
    NotConvex {
        /// Input index of the offending vertex.
        vertex: usize,
        /// Input index of the first vertex of the edge it violates.
        edge: usize,
    },
}

/// A validated sky position: finite RA normalised to [0, 360) and Dec in [-90, 90] degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkyPoint {
    ra: f64,
    dec: f64,
}

impl SkyPoint {
    /// Validates `(ra, dec)` in degrees; any finite RA is wrapped into [0, 360).
    pub fn new(ra: f64, dec: f64) -> Result<Self, PointError> {
        if !ra.is_finite() || !dec.is_finite() {
            return Err(PointError::NonFinite { ra, dec });
        }
        if !(-90.0..=90.0).contains(&dec) {
            return Err(PointError::DecOutOfRange { dec });
        }
        let mut ra = ra.rem_euclid(360.0);
        // rem_euclid of a tiny negative number rounds to exactly 360.
        if ra >= 360.0 {
            ra = 0.0;
        }
        Ok(Self { ra, dec })
    }

    /// Right ascension in degrees, in [0, 360).
    pub fn ra(&self) -> f64 {
        self.ra
    }

    /// Declination in degrees, in [-90, 90].
    pub fn dec(&self) -> f64 {
        self.dec
    }

    /// The unit vector of this direction (x towards RA=0 Dec=0, z towards the north pole).
    pub fn to_vector(self) -> Vec3 {
        let (sr, cr) = self.ra.to_radians().sin_cos();
        let (sd, cd) = self.dec.to_radians().sin_cos();
        Vec3::new(cd * cr, cd * sr, sd)
    }

    /// The direction of a non-zero finite vector; `None` for a zero or non-finite vector.
    pub fn from_vector(v: Vec3) -> Option<Self> {
        let r = v.norm();
        if !r.is_finite() || r == 0.0 {
            return None;
        }
        let ra = v.y.atan2(v.x).to_degrees();
        let dec = v.z.atan2(v.x.hypot(v.y)).to_degrees().clamp(-90.0, 90.0);
        Self::new(ra, dec).ok()
    }

    /// Angular distance to `other`, in degrees (accurate at all separations).
    pub fn separation(self, other: SkyPoint) -> f64 {
        let a = self.to_vector();
        let b = other.to_vector();
        a.cross(b).norm().atan2(a.dot(b)).to_degrees()
    }
}

/// A Cartesian 3-vector; the unit vectors of sky directions come from [`SkyPoint::to_vector`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vec3 {
    /// x component (towards RA=0, Dec=0 for a direction).
    pub x: f64,
    /// y component (towards RA=90°, Dec=0).
    pub y: f64,
    /// z component (towards the north pole).
    pub z: f64,
}

impl Vec3 {
    /// Builds a vector from its components.
    pub const fn new(x: f64, y: f64, z: f64) -> Self {
        Self { x, y, z }
    }

    /// The components as an array `[x, y, z]`.
    pub const fn to_array(self) -> [f64; 3] {
        [self.x, self.y, self.z]
    }

    /// Dot product.
    pub fn dot(self, o: Vec3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }

    /// Cross product `self × o`.
    pub fn cross(self, o: Vec3) -> Vec3 {
        Vec3::new(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }

    /// Euclidean length.
    pub fn norm(self) -> f64 {
        self.dot(self).sqrt()
    }

    /// `self * s`.
    pub fn scale(self, s: f64) -> Vec3 {
        Vec3::new(self.x * s, self.y * s, self.z * s)
    }
}

impl std::ops::Add for Vec3 {
    type Output = Vec3;
    fn add(self, o: Vec3) -> Vec3 {
        Vec3::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl std::ops::Sub for Vec3 {
    type Output = Vec3;
    fn sub(self, o: Vec3) -> Vec3 {
        Vec3::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

/// An axis-aligned box in 3-D unit-vector space, as stored in the registry's R*Tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Box3 {
    /// Lower corner `[x, y, z]`.
    pub min: [f64; 3],
    /// Upper corner `[x, y, z]`.
    pub max: [f64; 3],
}

impl Box3 {
    /// True when the two closed boxes share at least one point.
    pub fn intersects(&self, other: &Box3) -> bool {
        (0..3).all(|k| self.min[k] <= other.max[k] && other.min[k] <= self.max[k])
    }

    /// True when `v` lies inside the closed box.
    pub fn contains(&self, v: Vec3) -> bool {
        let a = v.to_array();
        (0..3).all(|k| self.min[k] <= a[k] && a[k] <= self.max[k])
    }
}

/// A convex spherical polygon: vertices joined by the shorter great-circle arcs, each edge
/// shorter than 180°, the whole lying in an open hemisphere.
///
/// Construction accepts either winding and stores the counter-clockwise one (seen from outside
/// the sphere: RA increases along the southern edge of a small polygon), keeping the first
/// vertex first. Edge `i` runs from vertex `i` to vertex `i + 1` (cyclically).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvexPolygon {
    points: Vec<SkyPoint>,
    vectors: Vec<Vec3>,
    /// Unit normal of each edge's great circle; the interior is where `normal · p >= 0`.
    normals: Vec<Vec3>,
}

impl ConvexPolygon {
    /// Builds a polygon from validated points, rejecting degenerate and non-convex shapes.
    pub fn new(points: &[SkyPoint]) -> Result<Self, GeometryError> {
        let n = points.len();
        if n < 3 {
            return Err(GeometryError::TooFewVertices { found: n });
        }
        let vectors: Vec<Vec3> = points.iter().map(|p| p.to_vector()).collect();
        let normals = edge_normals(&vectors)?;
        // Orientation from the first edge and the first vertex off it; the full check below
        // then demands that every vertex lies strictly on that side of every other edge.
        let sign = if normals[0].dot(vectors[2]) < 0.0 {
            -1.0
        } else {
            1.0
        };
        for (i, normal) in normals.iter().enumerate() {
            for (k, v) in vectors.iter().enumerate() {
                if k == i || k == (i + 1) % n {
                    continue;
                }
                if sign * normal.dot(*v) <= BOUNDARY_TOLERANCE {
                    return Err(GeometryError::NotConvex { vertex: k, edge: i });
                }
            }
        }
        // Every vertex strictly inside every other edge's half-space implies the vertices lie in
        // an open hemisphere (around the sum of the normals); gnomonic projection then maps the
        // polygon to a planar one with the same property, which is convex and simple.
        if sign > 0.0 {
            return Ok(Self {
                points: points.to_vec(),
                vectors,
                normals,
            });
        }
        // Reverse the winding but keep vertex 0 first: 0, n-1, n-2, ..., 1.
        let order: Vec<usize> = std::iter::once(0).chain((1..n).rev()).collect();
        let points: Vec<SkyPoint> = order.iter().map(|&i| points[i]).collect();
        let vectors: Vec<Vec3> = order.iter().map(|&i| vectors[i]).collect();
        let normals = edge_normals(&vectors)?;
        Ok(Self {
            points,
            vectors,
            normals,
        })
    }

    /// Validates `(ra, dec)` pairs in degrees and builds the polygon.
    pub fn from_radec(vertices: &[(f64, f64)]) -> Result<Self, GeometryError> {
        let points = vertices
            .iter()
            .enumerate()
            .map(|(index, &(ra, dec))| {
                SkyPoint::new(ra, dec).map_err(|source| GeometryError::Vertex { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(&points)
    }

    /// Number of vertices.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Always false: a polygon has at least three vertices (present for API symmetry).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The vertices in counter-clockwise order.
    pub fn vertices(&self) -> &[SkyPoint] {
        &self.points
    }

    /// The vertices' unit vectors, in the same order as [`ConvexPolygon::vertices`].
    pub fn unit_vectors(&self) -> &[Vec3] {
        &self.vectors
    }

    /// Unit normals of the edges' great circles, pointing into the polygon's hemisphere.
    pub fn edge_normals(&self) -> &[Vec3] {
        &self.normals
    }

    /// True when the sky point is inside or on the boundary.
    pub fn contains(&self, p: SkyPoint) -> bool {
        self.contains_vector(p.to_vector())
    }

    /// True when the unit vector `v` is inside or within [`BOUNDARY_TOLERANCE`] of the boundary.
    pub fn contains_vector(&self, v: Vec3) -> bool {
        self.normals
            .iter()
            .all(|nrm| nrm.dot(v) >= -BOUNDARY_TOLERANCE)
    }

    /// True when the two closed polygons share at least one point.
    ///
    /// Two convex regions meet exactly when a vertex of one lies in the other or two edges
    /// cross; vertex containment (with tolerance) covers touching and shared edges, and the
    /// crossing test only has to decide proper crossings.
    pub fn intersects(&self, other: &ConvexPolygon) -> bool {
        if other.vectors.iter().any(|&v| self.contains_vector(v))
            || self.vectors.iter().any(|&v| other.contains_vector(v))
        {
            return true;
        }
        let (n, m) = (self.len(), other.len());
        (0..n).any(|i| {
            let (a0, a1) = (self.vectors[i], self.vectors[(i + 1) % n]);
            (0..m).any(|j| {
                let (b0, b1) = (other.vectors[j], other.vectors[(j + 1) % m]);
                arcs_cross_with_normals(a0, a1, self.normals[i], b0, b1, other.normals[j])
            })
        })
    }

    /// The tightest axis-aligned box around the polygon in unit-vector space, padded by a
    /// small margin; any point [`ConvexPolygon::contains_vector`] accepts lies inside it.
    ///
    /// Extremes of a coordinate over a convex spherical polygon occur at a vertex, at the
    /// point of an edge arc nearest that axis, or at the axis itself when the polygon covers it,
    /// so arcs bulging beyond their chords and polygons around a pole are handled exactly.
    pub fn bounding_box(&self) -> Box3 {
        let mut min = [f64::INFINITY; 3];
        let mut max = [f64::NEG_INFINITY; 3];
        let mut include = |v: Vec3| {
            for (k, c) in v.to_array().into_iter().enumerate() {
                min[k] = min[k].min(c);
                max[k] = max[k].max(c);
            }
        };
        for &v in &self.vectors {
            include(v);
        }
        let n = self.len();
        let axes = [
            Vec3::new(1.0, 0.0, 0.0),
            Vec3::new(0.0, 1.0, 0.0),
            Vec3::new(0.0, 0.0, 1.0),
        ];
        for i in 0..n {
            let (a, b, nrm) = (self.vectors[i], self.vectors[(i + 1) % n], self.normals[i]);
            for e in axes {
                // The point of the edge's great circle nearest to ±e.
                let q = e - nrm.scale(nrm.dot(e));
                let len = q.norm();
                if len < 1e-15 {
                    // The circle is perpendicular to the axis: the coordinate is 0 along it.
                    continue;
                }
                for s in [1.0, -1.0] {
                    let p = q.scale(s / len);
                    if a.cross(p).dot(nrm) >= 0.0 && p.cross(b).dot(nrm) >= 0.0 {
                        include(p);
                    }
                }
            }
        }
        for (k, e) in axes.into_iter().enumerate() {
            if self.contains_vector(e) {
                max[k] = 1.0;
            }
            if self.contains_vector(e.scale(-1.0)) {
                min[k] = -1.0;
            }
        }
        for k in 0..3 {
            min[k] -= BOX_PADDING;
            max[k] += BOX_PADDING;
        }
        Box3 { min, max }
    }
}

/// Unit normals `v[i] × v[i+1]`, rejecting coincident and antipodal neighbours.
fn edge_normals(vectors: &[Vec3]) -> Result<Vec<Vec3>, GeometryError> {
    let n = vectors.len();
    (0..n)
        .map(|i| {
            let j = (i + 1) % n;
            let c = vectors[i].cross(vectors[j]);
            let len = c.norm();
            if len < MIN_EDGE_SIN {
                return Err(if vectors[i].dot(vectors[j]) > 0.0 {
                    GeometryError::CoincidentVertices {
                        first: i,
                        second: j,
                    }
                } else {
                    GeometryError::AntipodalVertices {
                        first: i,
                        second: j,
                    }
                });
            }
            Ok(c.scale(1.0 / len))
        })
        .collect()
}

/// True when the great-circle arcs `a0→a1` and `b0→b1` (each shorter than 180°) cross at a
/// point interior to both. Touching at or through an endpoint is not a proper crossing.
pub fn arcs_cross(a0: Vec3, a1: Vec3, b0: Vec3, b1: Vec3) -> bool {
    arcs_cross_with_normals(a0, a1, a0.cross(a1), b0, b1, b0.cross(b1))
}

/// [`arcs_cross`] with precomputed (not necessarily unit) normals `na = a0×a1`, `nb = b0×b1`.
///
/// The arcs cross when b0 and b1 are on opposite sides of A's great circle, a0 and a1 on
/// opposite sides of B's, and the four orientations agree (which selects the crossing point
/// inside both arcs rather than its antipode).
fn arcs_cross_with_normals(a0: Vec3, a1: Vec3, na: Vec3, b0: Vec3, b1: Vec3, nb: Vec3) -> bool {
    let s = na.dot(b0);
    if s == 0.0 {
        return false;
    }
    let same = |x: f64| if s > 0.0 { x > 0.0 } else { x < 0.0 };
    let opposite = |x: f64| if s > 0.0 { x < 0.0 } else { x > 0.0 };
    opposite(na.dot(b1)) && same(nb.dot(a1)) && opposite(nb.dot(a0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Absolute tolerance for known-value checks of unit-vector components.
    const ATOL: f64 = 1e-15;

    fn poly(v: &[(f64, f64)]) -> ConvexPolygon {
        ConvexPolygon::from_radec(v).unwrap()
    }

    fn pt(ra: f64, dec: f64) -> SkyPoint {
        SkyPoint::new(ra, dec).unwrap()
    }

    /// Axis-aligned "square" in (ra, dec) with corners given in the order asked.
    fn square(ra0: f64, dec0: f64, ra1: f64, dec1: f64) -> ConvexPolygon {
        poly(&[(ra0, dec0), (ra1, dec0), (ra1, dec1), (ra0, dec1)])
    }

    #[test]
    fn unit_vectors_known_values() {
        // Analytic: RA=0,Dec=0 is +x; RA=90 is +y; Dec=90 is +z; RA=180,Dec=-90 is -z.
        let cases = [
            ((0.0, 0.0), [1.0, 0.0, 0.0]),
            ((90.0, 0.0), [0.0, 1.0, 0.0]),
            ((180.0, 0.0), [-1.0, 0.0, 0.0]),
            ((0.0, 90.0), [0.0, 0.0, 1.0]),
            ((180.0, -90.0), [0.0, 0.0, -1.0]),
            ((45.0, 0.0), [0.5f64.sqrt(), 0.5f64.sqrt(), 0.0]),
        ];
        for ((ra, dec), want) in cases {
            let got = pt(ra, dec).to_vector().to_array();
            for k in 0..3 {
                assert!((got[k] - want[k]).abs() < ATOL, "({ra},{dec}) -> {got:?}");
            }
        }
    }

    #[test]
    fn ra_is_wrapped() {
        assert_eq!(pt(-10.0, 0.0).ra(), 350.0);
        assert_eq!(pt(370.0, 0.0).ra(), 10.0);
        assert_eq!(pt(360.0, 0.0).ra(), 0.0);
        assert_eq!(pt(-1e-300, 0.0).ra(), 0.0);
    }

    #[test]
    fn separation_known_values() {
        assert!((pt(0.0, 0.0).separation(pt(90.0, 0.0)) - 90.0).abs() < 1e-12);
        assert!((pt(359.95, 0.0).separation(pt(0.05, 0.0)) - 0.1).abs() < 1e-12);
        assert!((pt(10.0, 90.0).separation(pt(200.0, 90.0))).abs() < 1e-12);
        assert!((pt(0.0, 89.0).separation(pt(180.0, 89.0)) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn from_vector_round_trip() {
        for (ra, dec) in [(0.0, 0.0), (359.999, -45.0), (123.4, 89.99), (10.0, -89.5)] {
            let p = SkyPoint::from_vector(pt(ra, dec).to_vector()).unwrap();
            assert!(p.separation(pt(ra, dec)) < 1e-10, "{ra},{dec} -> {p:?}");
        }
        assert_eq!(SkyPoint::from_vector(Vec3::new(0.0, 0.0, 0.0)), None);
        assert_eq!(SkyPoint::from_vector(Vec3::new(f64::NAN, 0.0, 1.0)), None);
    }

    #[test]
    fn winding_is_normalised_and_first_vertex_kept() {
        let ccw = square(10.0, 0.0, 11.0, 1.0);
        let cw = poly(&[(10.0, 0.0), (10.0, 1.0), (11.0, 1.0), (11.0, 0.0)]);
        assert_eq!(cw.vertices()[0], pt(10.0, 0.0));
        assert_eq!(cw.vertices(), ccw.vertices());
        assert_eq!(cw.edge_normals(), ccw.edge_normals());
        // The interior side of every edge contains the centre.
        let centre = pt(10.5, 0.5).to_vector();
        assert!(ccw.edge_normals().iter().all(|n| n.dot(centre) > 0.0));
    }

    #[test]
    fn point_in_polygon_known_values() {
        let sq = square(359.9, -0.1, 0.1, 0.1);
        assert!(sq.contains(pt(0.0, 0.0)));
        assert!(sq.contains(pt(359.95, 0.05)));
        assert!(sq.contains(pt(0.05, -0.05)));
        assert!(!sq.contains(pt(180.0, 0.0)));
        assert!(!sq.contains(pt(0.2, 0.0)));
        assert!(!sq.contains(pt(359.8, 0.0)));
        // Vertices and edge midpoints are on the (closed) boundary.
        assert!(sq.contains(pt(359.9, -0.1)));
        assert!(sq.contains(pt(0.1, 0.0)));
        // A cap around the south pole.
        let cap = poly(&[(0.0, -80.0), (120.0, -80.0), (240.0, -80.0)]);
        assert!(cap.contains(pt(0.0, -90.0)));
        assert!(cap.contains(pt(77.0, -85.0)));
        assert!(!cap.contains(pt(0.0, 90.0)));
        assert!(!cap.contains(pt(60.0, -79.0)));
    }

    #[test]
    fn adjacent_squares_sharing_an_edge_touch() {
        let a = square(10.0, 0.0, 10.2, 0.2);
        let b = square(10.2, 0.0, 10.4, 0.2);
        assert!(a.intersects(&b) && b.intersects(&a));
        // Sharing only a corner.
        let c = square(10.2, 0.2, 10.4, 0.4);
        assert!(a.intersects(&c) && c.intersects(&a));
        // A gap of 1e-6 degrees (~17e-9 rad) is not touching.
        let d = square(10.200001, 0.0, 10.4, 0.2);
        assert!(!a.intersects(&d) && !d.intersects(&a));
    }

    #[test]
    fn disjoint_squares_near_ra_zero() {
        let west = square(359.85, -0.05, 359.9, 0.05);
        let east = square(0.1, -0.05, 0.15, 0.05);
        assert!(!west.intersects(&east) && !east.intersects(&west));
        let across = square(359.88, -0.01, 0.12, 0.01);
        assert!(across.intersects(&west) && across.intersects(&east));
        assert!(west.intersects(&across) && east.intersects(&across));
    }

    #[test]
    fn crossing_without_contained_vertices() {
        // A plus sign: neither polygon has a vertex inside the other; only edges cross.
        let horizontal = square(359.0, -0.1, 1.0, 0.1);
        let vertical = square(359.9, -1.0, 0.1, 1.0);
        assert!(
            !horizontal
                .unit_vectors()
                .iter()
                .any(|&v| vertical.contains_vector(v))
        );
        assert!(
            !vertical
                .unit_vectors()
                .iter()
                .any(|&v| horizontal.contains_vector(v))
        );
        assert!(horizontal.intersects(&vertical) && vertical.intersects(&horizontal));
    }

    #[test]
    fn containment_counts_as_intersection() {
        let big = square(20.0, 20.0, 30.0, 30.0);
        let small = square(24.0, 24.0, 25.0, 25.0);
        assert!(big.intersects(&small) && small.intersects(&big));
    }

    #[test]
    fn cap_around_the_pole() {
        let cap = poly(&[(0.0, 85.0), (90.0, 85.0), (180.0, 85.0), (270.0, 85.0)]);
        let bb = cap.bounding_box();
        assert!(bb.max[2] >= 1.0);
        // The edge from (0, 85) to (90, 85) bulges poleward to Dec atan(sqrt(2) tan 85°) =
        // 86.46° at RA = 45: a CCD at Dec 85.5-85.7 there is outside although it is north of
        // the vertices; one straddling Dec 86.46 and one at the pole are inside.
        let edge_dec = (2f64.sqrt() * 85f64.to_radians().tan()).atan().to_degrees();
        assert!((edge_dec - 86.46).abs() < 0.01);
        let below = square(44.9, 85.5, 45.1, 85.7);
        let straddle = square(44.9, edge_dec - 0.1, 45.1, edge_dec + 0.1);
        let at_pole = poly(&[(0.0, 89.9), (120.0, 89.9), (240.0, 89.9)]);
        assert!(!cap.intersects(&below) && !below.intersects(&cap));
        assert!(cap.intersects(&straddle) && straddle.intersects(&cap));
        assert!(cap.intersects(&at_pole) && at_pole.intersects(&cap));
        // The cap's interior is poleward of the edge: 1e-6° (~1.7e-8 rad) either side decides.
        assert!(cap.contains(pt(45.0, edge_dec + 1e-6)));
        assert!(!cap.contains(pt(45.0, edge_dec - 1e-6)));
        // A polygon with a vertex exactly at the pole.
        let wedge = poly(&[(10.0, 80.0), (20.0, 80.0), (0.0, 90.0)]);
        assert!(wedge.contains(pt(300.0, 90.0)));
        assert!(wedge.intersects(&cap));
        // Nothing in the south.
        assert!(!cap.intersects(&poly(&[(0.0, -85.0), (120.0, -85.0), (240.0, -85.0)])));
    }

    #[test]
    fn arcs_cross_known_values() {
        let v = |ra, dec| pt(ra, dec).to_vector();
        // Equator arc and a meridian arc through it.
        assert!(arcs_cross(
            v(0.0, 0.0),
            v(90.0, 0.0),
            v(45.0, -10.0),
            v(45.0, 10.0)
        ));
        // The same meridian at the antipodal longitude does not cross.
        assert!(!arcs_cross(
            v(0.0, 0.0),
            v(90.0, 0.0),
            v(225.0, -10.0),
            v(225.0, 10.0)
        ));
        // Parallel arcs (both above the equator).
        assert!(!arcs_cross(
            v(0.0, 0.0),
            v(90.0, 0.0),
            v(10.0, 5.0),
            v(80.0, 5.0)
        ));
        // Touching at an endpoint is not a proper crossing.
        assert!(!arcs_cross(
            v(0.0, 0.0),
            v(90.0, 0.0),
            v(90.0, 0.0),
            v(90.0, 10.0)
        ));
        // Across RA = 0.
        assert!(arcs_cross(
            v(359.0, 0.0),
            v(1.0, 0.0),
            v(0.0, -1.0),
            v(0.0, 1.0)
        ));
    }

    #[test]
    fn bounding_box_covers_bulging_arcs() {
        // The edge from (0,60) to (90,60) bulges north to Dec ~ 67.8 at RA=45.
        let p = poly(&[(0.0, 60.0), (90.0, 60.0), (45.0, 50.0)]);
        let bb = p.bounding_box();
        let top =
            SkyPoint::from_vector(pt(0.0, 60.0).to_vector() + pt(90.0, 60.0).to_vector()).unwrap();
        assert!(top.dec() > 67.0);
        // The box's z max is that of the arc's midpoint, not of the vertices (sin 60°).
        assert!((bb.max[2] - top.dec().to_radians().sin()).abs() < 1e-8);
        assert!(bb.max[2] > 60f64.to_radians().sin() + 0.05);
        assert!(bb.contains(top.to_vector()));
    }

    #[test]
    fn rejects_bad_input() {
        use GeometryError as E;
        let err = |v: &[(f64, f64)]| ConvexPolygon::from_radec(v).unwrap_err();
        assert!(matches!(
            err(&[(0.0, 0.0), (f64::NAN, 1.0), (1.0, 1.0)]),
            E::Vertex {
                index: 1,
                source: PointError::NonFinite { .. }
            }
        ));
        assert!(matches!(
            err(&[(0.0, 0.0), (1.0, 0.0), (f64::INFINITY, 1.0)]),
            E::Vertex { index: 2, .. }
        ));
        assert!(matches!(
            err(&[(0.0, 0.0), (1.0, 0.0), (1.0, 90.5)]),
            E::Vertex {
                index: 2,
                source: PointError::DecOutOfRange { .. }
            }
        ));
        assert!(matches!(
            err(&[(0.0, -91.0), (1.0, 0.0), (1.0, 1.0)]),
            E::Vertex { index: 0, .. }
        ));
        assert_eq!(err(&[]), E::TooFewVertices { found: 0 });
        assert_eq!(
            err(&[(0.0, 0.0), (1.0, 1.0)]),
            E::TooFewVertices { found: 2 }
        );
        assert_eq!(
            err(&[(0.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, 1.0)]),
            E::CoincidentVertices {
                first: 1,
                second: 2
            }
        );
        // Two "different" vertices at the pole are the same point.
        assert_eq!(
            err(&[(0.0, 80.0), (10.0, 90.0), (200.0, 90.0)]),
            E::CoincidentVertices {
                first: 1,
                second: 2
            }
        );
        // 0 and 360 are the same RA.
        assert!(matches!(
            err(&[(0.0, 0.0), (360.0, 0.0), (1.0, 1.0)]),
            E::CoincidentVertices { .. }
        ));
        assert_eq!(
            err(&[(0.0, 0.0), (180.0, 0.0), (90.0, 45.0)]),
            E::AntipodalVertices {
                first: 0,
                second: 1
            }
        );
        // Three points on one great circle (the equator).
        assert!(matches!(
            err(&[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]),
            E::NotConvex { .. }
        ));
        // A collinear middle vertex on an edge.
        assert!(matches!(
            err(&[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (1.0, 1.0)]),
            E::NotConvex { .. }
        ));
        // Reflex (arrow-head) quadrilateral.
        assert!(matches!(
            err(&[(0.0, 0.0), (1.0, 0.5), (2.0, 0.0), (1.0, 2.0)]),
            E::NotConvex { .. }
        ));
        // Bow-tie (self-intersecting) quadrilateral.
        assert!(matches!(
            err(&[(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)]),
            E::NotConvex { .. }
        ));
        // Pentagram: winds twice.
        let star: Vec<(f64, f64)> = (0..5)
            .map(|k| {
                let t = (k as f64) * 144f64.to_radians();
                (t.cos(), t.sin())
            })
            .collect();
        assert!(matches!(err(&star), E::NotConvex { .. }));
        // A "polygon" whose vertices span the equator: a hemisphere, not strictly convex.
        assert!(matches!(
            err(&[(0.0, 0.0), (120.0, 0.0), (240.0, 0.0)]),
            E::NotConvex { .. }
        ));
        // Error text names the vertex.
        let msg = err(&[(0.0, 0.0), (1.0, 0.0), (1.0, 95.0)]).to_string();
        assert!(msg.contains("vertex 2") && msg.contains("95"), "{msg}");
    }

    // ---- Independent reference: planar geometry after gnomonic projection ----

    /// Gnomonic projection of `v` onto the plane tangent at `c` (None when not in c's hemisphere).
    fn gnomonic(c: Vec3, v: Vec3) -> Option<[f64; 2]> {
        let d = c.dot(v);
        if d <= 1e-3 {
            return None;
        }
        let pole = if c.z.abs() < 0.9 {
            Vec3::new(0.0, 0.0, 1.0)
        } else {
            Vec3::new(1.0, 0.0, 0.0)
        };
        let e1 = pole.cross(c).scale(1.0 / pole.cross(c).norm());
        let e2 = c.cross(e1);
        Some([e1.dot(v) / d, e2.dot(v) / d])
    }

    /// Planar separating-axis test for two convex polygons (either winding).
    fn planar_convex_intersect(a: &[[f64; 2]], b: &[[f64; 2]]) -> bool {
        for (p, q) in [(a, b), (b, a)] {
            for i in 0..p.len() {
                let (s, t) = (p[i], p[(i + 1) % p.len()]);
                let axis = [-(t[1] - s[1]), t[0] - s[0]];
                let proj = |pts: &[[f64; 2]]| {
                    pts.iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                            let x = axis[0] * v[0] + axis[1] * v[1];
                            (lo.min(x), hi.max(x))
                        })
                };
                let (plo, phi) = proj(p);
                let (qlo, qhi) = proj(q);
                if phi < qlo || qhi < plo {
                    return false;
                }
            }
        }
        true
    }

    /// A random convex polygon: vertices on a small circle of radius `r` degrees around
    /// (ra, dec), at angles `phase + 360° (k + jitter[k]) / n` (|jitter| <= 0.2 keeps every
    /// gap below 180°).
    fn cyclic_polygon(ra: f64, dec: f64, r: f64, phase: f64, jitter: &[f64]) -> ConvexPolygon {
        let n = jitter.len();
        let c = pt(ra, dec).to_vector();
        let pole = if c.z.abs() < 0.9 {
            Vec3::new(0.0, 0.0, 1.0)
        } else {
            Vec3::new(1.0, 0.0, 0.0)
        };
        let e1 = pole.cross(c).scale(1.0 / pole.cross(c).norm());
        let e2 = c.cross(e1);
        let (sr, cr) = r.to_radians().sin_cos();
        let pts: Vec<SkyPoint> = jitter
            .iter()
            .enumerate()
            .map(|(k, j)| {
                let t = phase + 360.0 * (k as f64 + j) / n as f64;
                let (st, ct) = t.to_radians().sin_cos();
                let v = c.scale(cr) + e1.scale(ct * sr) + e2.scale(st * sr);
                SkyPoint::from_vector(v).unwrap()
            })
            .collect();
        ConvexPolygon::new(&pts).unwrap()
    }

    /// (phase, jitter) for [`cyclic_polygon`] with 3 to 7 vertices.
    fn shape_strategy() -> impl Strategy<Value = (f64, Vec<f64>)> {
        (0.0f64..360.0, proptest::collection::vec(-0.2f64..0.2, 3..8))
    }

    fn centre_strategy() -> impl Strategy<Value = (f64, f64)> {
        prop_oneof![
            (-2.0f64..2.0, -5.0f64..5.0),   // across RA = 0
            (0.0f64..360.0, 80.0f64..90.0), // north polar cap
            (0.0f64..360.0, -90.0f64..-80.0),
            (0.0f64..360.0, -89.0f64..89.0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The spherical test agrees with a planar separating-axis test in the gnomonic
        /// projection around the pair's midpoint (valid because both lie near it).
        #[test]
        fn intersects_matches_gnomonic_reference(
            (ra, dec) in centre_strategy(),
            r1 in 0.05f64..8.0, r2 in 0.05f64..8.0,
            dra in -10.0f64..10.0, ddec in -10.0f64..10.0,
            (ph1, j1) in shape_strategy(),
            (ph2, j2) in shape_strategy(),
        ) {
            let dec2 = (dec + ddec).clamp(-90.0, 90.0);
            let p = cyclic_polygon(ra, dec, r1, ph1, &j1);
            let q = cyclic_polygon(ra + dra, dec2, r2, ph2, &j2);
            let mid = {
                let (u, v) = (pt(ra, dec).to_vector(), pt(ra + dra, dec2).to_vector());
                let s = Vec3::new(u.x + v.x, u.y + v.y, u.z + v.z);
                s.scale(1.0 / s.norm())
            };
            let pp: Option<Vec<_>> = p.unit_vectors().iter().map(|&v| gnomonic(mid, v)).collect();
            let qq: Option<Vec<_>> = q.unit_vectors().iter().map(|&v| gnomonic(mid, v)).collect();
            prop_assume!(pp.is_some() && qq.is_some());
            let (pp, qq) = (pp.unwrap(), qq.unwrap());
            let want = planar_convex_intersect(&pp, &qq);
            // Skip near-touching pairs, where the reference's own rounding decides.
            let shrink = |poly: &[[f64; 2]], f: f64| -> Vec<[f64; 2]> {
                let n = poly.len() as f64;
                let cx = poly.iter().map(|v| v[0]).sum::<f64>() / n;
                let cy = poly.iter().map(|v| v[1]).sum::<f64>() / n;
                poly.iter().map(|v| [cx + (v[0] - cx) * f, cy + (v[1] - cy) * f]).collect()
            };
            let robust = planar_convex_intersect(&shrink(&pp, 0.999), &shrink(&qq, 0.999)) == want
                && planar_convex_intersect(&shrink(&pp, 1.001), &shrink(&qq, 1.001)) == want;
            prop_assume!(robust);
            prop_assert_eq!(p.intersects(&q), want);
            prop_assert_eq!(q.intersects(&p), want);
            if want {
                prop_assert!(p.bounding_box().intersects(&q.bounding_box()));
            }
        }

        /// Point containment agrees with the planar test in the gnomonic projection, and the
        /// bounding box holds every contained point.
        #[test]
        fn contains_matches_gnomonic_reference(
            (ra, dec) in centre_strategy(),
            r in 0.05f64..20.0,
            (phase, jitter) in shape_strategy(),
            (pra, pdec) in (-25.0f64..25.0, -25.0f64..25.0),
        ) {
            let p = cyclic_polygon(ra, dec, r, phase, &jitter);
            let point = pt(ra + pra, (dec + pdec).clamp(-90.0, 90.0));
            let c = pt(ra, dec).to_vector();
            let poly2: Vec<[f64; 2]> = p.unit_vectors().iter().map(|&v| gnomonic(c, v).unwrap()).collect();
            let want = match gnomonic(c, point.to_vector()) {
                None => false,
                Some(x) => {
                    let n = poly2.len();
                    let sides: Vec<f64> = (0..n).map(|i| {
                        let (s, t) = (poly2[i], poly2[(i + 1) % n]);
                        (t[0] - s[0]) * (x[1] - s[1]) - (t[1] - s[1]) * (x[0] - s[0])
                    }).collect();
                    prop_assume!(sides.iter().all(|s| s.abs() > 1e-9));
                    sides.iter().all(|&s| s > 0.0) || sides.iter().all(|&s| s < 0.0)
                }
            };
            prop_assert_eq!(p.contains(point), want);
            if want {
                prop_assert!(p.bounding_box().contains(point.to_vector()));
            }
            for v in p.vertices() {
                prop_assert!(p.contains(*v));
            }
        }

        /// The box is tight: each face is touched by some point of the polygon (sampled densely
        /// along the edges, plus the axis points it covers), within the padding.
        #[test]
        fn bounding_box_is_tight(
            (ra, dec) in centre_strategy(),
            r in 0.05f64..30.0,
            (phase, jitter) in shape_strategy(),
        ) {
            let p = cyclic_polygon(ra, dec, r, phase, &jitter);
            let bb = p.bounding_box();
            let mut lo = [f64::INFINITY; 3];
            let mut hi = [f64::NEG_INFINITY; 3];
            let n = p.len();
            let samples = 2000;
            for i in 0..n {
                let (a, b) = (p.unit_vectors()[i], p.unit_vectors()[(i + 1) % n]);
                for s in 0..=samples {
                    let t = s as f64 / samples as f64;
                    let v = Vec3::new(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t, a.z + (b.z - a.z) * t);
                    let v = v.scale(1.0 / v.norm());
                    prop_assert!(bb.contains(v));
                    for (k, c) in v.to_array().into_iter().enumerate() {
                        lo[k] = lo[k].min(c);
                        hi[k] = hi[k].max(c);
                    }
                }
            }
            for (k, e) in [Vec3::new(1.0, 0.0, 0.0), Vec3::new(0.0, 1.0, 0.0), Vec3::new(0.0, 0.0, 1.0)].into_iter().enumerate() {
                if p.contains_vector(e) { hi[k] = 1.0; }
                if p.contains_vector(e.scale(-1.0)) { lo[k] = -1.0; }
            }
            // Sampling at 2000 points per edge resolves the arc extremes to ~ (edge/2000)^2.
            for k in 0..3 {
                prop_assert!(bb.min[k] <= lo[k] && lo[k] - bb.min[k] < 1e-6, "axis {} min {} vs {}", k, bb.min[k], lo[k]);
                prop_assert!(bb.max[k] >= hi[k] && bb.max[k] - hi[k] < 1e-6, "axis {} max {} vs {}", k, bb.max[k], hi[k]);
            }
        }
    }
}
