//! Seeded generators of CCD records and query polygons, shared by the tests and the benchmark.

#![allow(dead_code)]

use rand::{Rng, RngExt};
use skypipe_registry::{CcdRecord, CcdStatus, ConvexPolygon, SkyPoint, Vec3};

/// East and north unit vectors of the tangent plane at `c` (any orthonormal pair at a pole).
pub fn tangent_basis(c: Vec3) -> (Vec3, Vec3) {
    let axis = if c.z.abs() < 0.999_999 {
        Vec3::new(0.0, 0.0, 1.0)
    } else {
        Vec3::new(1.0, 0.0, 0.0)
    };
    let east = axis.cross(c);
    let east = east.scale(1.0 / east.norm());
    (east, c.cross(east))
}

/// Deprojects tangent-plane offsets (degrees, gnomonic) around `centre` to sky points.
/// Vertices within 1e-7° of a pole are snapped onto it.
pub fn deproject(centre: SkyPoint, offsets: &[(f64, f64)]) -> Vec<SkyPoint> {
    let c = centre.to_vector();
    let (e, n) = tangent_basis(c);
    offsets
        .iter()
        .map(|&(x, y)| {
            let (x, y) = (x.to_radians(), y.to_radians());
            let v = c + e.scale(x) + n.scale(y);
            let p = SkyPoint::from_vector(v).unwrap();
            if p.dec().abs() > 90.0 - 1e-7 {
                SkyPoint::new(p.ra(), 90f64.copysign(p.dec())).unwrap()
            } else {
                p
            }
        })
        .collect()
}

/// A `w` × `h` degree rectangle around `centre`, rotated by `angle` degrees.
pub fn rectangle(centre: SkyPoint, w: f64, h: f64, angle: f64) -> Vec<SkyPoint> {
    let (s, c) = angle.to_radians().sin_cos();
    let corners = [(-w, -h), (w, -h), (w, h), (-w, h)].map(|(x, y)| {
        let (x, y) = (x / 2.0, y / 2.0);
        (x * c - y * s, x * s + y * c)
    });
    deproject(centre, &corners)
}

/// A random convex polygon of `n` vertices on a circle of radius `r` degrees (tangent plane)
/// around `centre`; angles are jittered around even spacing so no gap reaches 180°.
pub fn cyclic_polygon<R: Rng>(rng: &mut R, centre: SkyPoint, r: f64, n: usize) -> ConvexPolygon {
    let step = 360.0 / n as f64;
    let phase = rng.random_range(0.0..360.0);
    let offsets: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let t = (phase + step * (k as f64 + rng.random_range(-0.3..0.3))).to_radians();
            (r * t.cos(), r * t.sin())
        })
        .collect();
    ConvexPolygon::new(&deproject(centre, &offsets)).unwrap()
}

/// Where the random shapes go: hot spots around RA = 0 and the two poles (so that overlaps
/// are common there), and anywhere on the sphere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Region {
    /// |ra| < 1.5°, |dec| < 1.5°: straddles RA = 0.
    RaZero,
    /// Within 1.5° of the north pole.
    North,
    /// Within 1.5° of the south pole.
    South,
    /// Uniform on the sphere.
    Anywhere,
}

/// A random centre in `region`.
pub fn centre<R: Rng>(rng: &mut R, region: Region) -> SkyPoint {
    let (ra, dec) = match region {
        Region::RaZero => (rng.random_range(-1.5..1.5), rng.random_range(-1.5f64..1.5)),
        Region::North => (rng.random_range(0.0..360.0), rng.random_range(88.5..=90.0)),
        Region::South => (
            rng.random_range(0.0..360.0),
            rng.random_range(-90.0..=-88.5),
        ),
        Region::Anywhere => (
            rng.random_range(0.0..360.0),
            rng.random_range(-1.0f64..1.0).asin().to_degrees(),
        ),
    };
    SkyPoint::new(ra, dec).unwrap()
}

/// A random region, weighted towards the hot spots.
pub fn region<R: Rng>(rng: &mut R) -> Region {
    match rng.random_range(0..10) {
        0..=3 => Region::RaZero,
        4..=5 => Region::North,
        6..=7 => Region::South,
        _ => Region::Anywhere,
    }
}

/// CCD-shaped corners: 0.1°–0.3° on a side, random rotation; one in ten has a corner exactly
/// on a pole when `region` is polar.
pub fn ccd_corners<R: Rng>(rng: &mut R, region: Region) -> [SkyPoint; 4] {
    let w: f64 = rng.random_range(0.1..0.3);
    let h: f64 = rng.random_range(0.1..0.3);
    let polar = matches!(region, Region::North | Region::South);
    let pts = if polar && rng.random_range(0..10) == 0 {
        // Put corner 2 (offset (w/2, h/2)) on the pole: rotate it to point north (or south),
        // then place the centre that far from the pole.
        let half_diag = (w / 2.0).hypot(h / 2.0);
        let corner_pa = (w / 2.0).atan2(h / 2.0).to_degrees(); // east of north
        let north = region == Region::North;
        let angle = if north { corner_pa } else { corner_pa + 180.0 };
        let dist = half_diag.to_radians().atan().to_degrees();
        let dec = if north { 90.0 - dist } else { -90.0 + dist };
        let c = SkyPoint::new(rng.random_range(0.0..360.0), dec).unwrap();
        let pts = rectangle(c, w, h, angle);
        assert!(pts.iter().any(|p| p.dec().abs() == 90.0), "{pts:?}");
        pts
    } else {
        rectangle(centre(rng, region), w, h, rng.random_range(0.0..360.0))
    };
    [pts[0], pts[1], pts[2], pts[3]]
}

/// A complete random CCD record; bands cycle through g, r, i by visit.
pub fn ccd_record<R: Rng>(rng: &mut R, visit: u64, ccd: u32, region: Region) -> CcdRecord {
    let mut corners = ccd_corners(rng, region);
    if rng.random_range(0..2) == 0 {
        corners.reverse(); // either winding is accepted
    }
    CcdRecord {
        visit,
        ccd,
        band: ["g", "r", "i"][(visit % 3) as usize].to_string(),
        exposure_time: 30.0,
        psf_fwhm: rng.random_range(2.0..5.0),
        corners,
        calexp_path: format!("calexp/{visit}/{ccd}.fits").into(),
        catalog_path: format!("src/{visit}/{ccd}.fits").into(),
        calibration: None,
        status: CcdStatus::Processed,
    }
}

/// A simulated survey: `visits` pointings in a `side`-degree square straddling RA = 0, each a
/// camera of `nx` × `ny` CCDs of 0.1° × 0.2° with 0.01° gaps, dithered and rotated.
pub fn survey<R: Rng>(rng: &mut R, visits: u64, nx: u32, ny: u32, side: f64) -> Vec<CcdRecord> {
    let (cw, ch, gap) = (0.1, 0.2, 0.01);
    let mut out = Vec::with_capacity((visits * (nx * ny) as u64) as usize);
    for visit in 0..visits {
        let pointing = SkyPoint::new(
            rng.random_range(-side / 2.0..side / 2.0),
            rng.random_range(-side / 2.0..side / 2.0),
        )
        .unwrap();
        let rot = rng.random_range(0.0f64..360.0).to_radians();
        let (s, c) = rot.sin_cos();
        for ix in 0..nx {
            for iy in 0..ny {
                let x0 = (ix as f64 - nx as f64 / 2.0) * (cw + gap);
                let y0 = (iy as f64 - ny as f64 / 2.0) * (ch + gap);
                let offsets = [(x0, y0), (x0 + cw, y0), (x0 + cw, y0 + ch), (x0, y0 + ch)]
                    .map(|(x, y)| (x * c - y * s, x * s + y * c));
                let p = deproject(pointing, &offsets);
                out.push(CcdRecord {
                    visit,
                    ccd: ix * ny + iy,
                    band: ["g", "r", "i", "z", "y"][(visit % 5) as usize].to_string(),
                    exposure_time: 150.0,
                    psf_fwhm: rng.random_range(2.5..5.0),
                    corners: [p[0], p[1], p[2], p[3]],
                    calexp_path: format!("calexp/{visit:06}/{:03}.fits", ix * ny + iy).into(),
                    catalog_path: format!("src/{visit:06}/{:03}.fits", ix * ny + iy).into(),
                    calibration: None,
                    status: CcdStatus::Processed,
                });
            }
        }
    }
    out
}
