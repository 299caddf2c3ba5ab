//! Fixed rotations between celestial frames: ecliptic (J2000 mean equinox) → galactic.
//!
//! The rotation is built from published definitions, not fitted:
//! - ecliptic → equatorial: a rotation about x̂ by the J2000 mean obliquity
//!   ε = 84381.406″ (IAU 2006; the value astropy uses at J2000);
//! - equatorial (FK5 J2000) → galactic: north galactic pole at α = 192.85948°, δ = 27.12825°, and
//!   the north celestial pole at galactic longitude 122.93192° (Hipparcos catalogue vol. 1,
//!   §1.5.3).
//!
//! The ICRS–FK5 frame bias (≈ 0.02″) is ignored; the tests compare against astropy's
//! `BarycentricMeanEcliptic → Galactic` and agree to better than 0.1″.

use crate::quat::{self, Quat};

/// A celestial frame of attitude, velocities, pointing and maps; configurations and HDF5
/// `frame` attributes spell it `"ecliptic"` / `"equatorial"` / `"galactic"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Frame {
    /// J2000 mean ecliptic.
    Ecliptic,
    /// FK5 J2000 equatorial.
    Equatorial,
    /// Galactic.
    Galactic,
}

impl Frame {
    /// The name stored in HDF5 `frame` attributes and configurations.
    pub fn as_str(self) -> &'static str {
        match self {
            Frame::Ecliptic => "ecliptic",
            Frame::Equatorial => "equatorial",
            Frame::Galactic => "galactic",
        }
    }

    /// Parses a `frame` attribute (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "ecliptic" => Some(Frame::Ecliptic),
            "equatorial" => Some(Frame::Equatorial),
            "galactic" => Some(Frame::Galactic),
            _ => None,
        }
    }

    /// The HEALPix FITS `COORDSYS` letter: `G`, `E` or `C`.
    pub fn coordsys(self) -> &'static str {
        match self {
            Frame::Galactic => "G",
            Frame::Ecliptic => "E",
            Frame::Equatorial => "C",
        }
    }

    /// Parses a FITS `COORDSYS` value (`G`, `E`, `C` or `Q`, case-insensitive).
    pub fn parse_coordsys(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "G" => Some(Frame::Galactic),
            "E" => Some(Frame::Ecliptic),
            "C" | "Q" => Some(Frame::Equatorial),
            _ => None,
        }
    }

    fn to_galactic(self) -> Quat {
        match self {
            Frame::Ecliptic => ecliptic_to_galactic(),
            Frame::Equatorial => equatorial_to_galactic(),
            Frame::Galactic => quat::IDENTITY,
        }
    }

    /// The rotation taking vectors in `self` to vectors in `to` (unit quaternion).
    pub fn rotation_to(self, to: Frame) -> Quat {
        if self == to {
            return quat::IDENTITY;
        }
        quat::mul(quat::conj(to.to_galactic()), self.to_galactic())
    }
}

/// J2000 mean obliquity of the ecliptic, IAU 2006 (arcsec).
pub const OBLIQUITY_J2000_ARCSEC: f64 = 84381.406;

/// Right ascension of the north galactic pole, FK5 J2000 (deg).
pub const NGP_RA_DEG: f64 = 192.85948;
/// Declination of the north galactic pole, FK5 J2000 (deg).
pub const NGP_DEC_DEG: f64 = 27.12825;
/// Galactic longitude of the north celestial pole, J2000 (deg).
pub const NCP_L_DEG: f64 = 122.93192;

/// Row-major rotation matrix taking J2000 mean ecliptic vectors to equatorial (FK5 J2000).
pub fn ecliptic_to_equatorial_matrix() -> [[f64; 3]; 3] {
    let (s, c) = (OBLIQUITY_J2000_ARCSEC / 3600.0).to_radians().sin_cos();
    [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]
}

/// Row-major rotation matrix taking equatorial (FK5 J2000) vectors to galactic.
pub fn equatorial_to_galactic_matrix() -> [[f64; 3]; 3] {
    let (sa, ca) = NGP_RA_DEG.to_radians().sin_cos();
    let (sd, cd) = NGP_DEC_DEG.to_radians().sin_cos();
    let (sl, cl) = NCP_L_DEG.to_radians().sin_cos();
    let z_g = [cd * ca, cd * sa, sd]; // galactic pole
    // The celestial pole projected on the galactic plane lies at longitude l_NCP.
    let u = [-sd * z_g[0], -sd * z_g[1], 1.0 - sd * z_g[2]];
    let un = (u[0] * u[0] + u[1] * u[1] + u[2] * u[2]).sqrt();
    let e1 = u.map(|c| c / un);
    let e2 = crate::aberration::cross(z_g, e1); // longitude l_NCP + 90°
    let x_g = [0, 1, 2].map(|i| cl * e1[i] - sl * e2[i]);
    let y_g = [0, 1, 2].map(|i| sl * e1[i] + cl * e2[i]);
    [x_g, y_g, z_g]
}

/// Row-major rotation matrix taking J2000 mean ecliptic vectors to galactic.
pub fn ecliptic_to_galactic_matrix() -> [[f64; 3]; 3] {
    matmul(
        equatorial_to_galactic_matrix(),
        ecliptic_to_equatorial_matrix(),
    )
}

/// The ecliptic → galactic rotation as a unit quaternion (scalar-last `[x, y, z, w]`):
/// `rotate(q, v_ecliptic) = v_galactic`. Its conjugate goes back.
pub fn ecliptic_to_galactic() -> Quat {
    quat::from_matrix(ecliptic_to_galactic_matrix())
}

/// The equatorial (FK5 J2000) → galactic rotation as a unit quaternion (scalar-last).
pub fn equatorial_to_galactic() -> Quat {
    quat::from_matrix(equatorial_to_galactic_matrix())
}

/// The J2000 ecliptic → equatorial rotation as a unit quaternion (scalar-last).
pub fn ecliptic_to_equatorial() -> Quat {
    quat::from_matrix(ecliptic_to_equatorial_matrix())
}

/// Unit vector of longitude `lon` and latitude `lat` (degrees).
pub fn lonlat_deg_to_vec(lon: f64, lat: f64) -> [f64; 3] {
    let (sl, cl) = lon.to_radians().sin_cos();
    let (sb, cb) = lat.to_radians().sin_cos();
    [cb * cl, cb * sl, sb]
}

/// Longitude in `[0, 360)` and latitude of a unit vector (degrees).
pub fn vec_to_lonlat_deg(v: [f64; 3]) -> (f64, f64) {
    let lon = v[1].atan2(v[0]).to_degrees().rem_euclid(360.0);
    let lat = v[2].atan2((v[0] * v[0] + v[1] * v[1]).sqrt()).to_degrees();
    (lon, lat)
}

fn matmul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut m = [[0.0; 3]; 3];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_spellings_round_trip() {
        for f in [Frame::Ecliptic, Frame::Equatorial, Frame::Galactic] {
            assert_eq!(Frame::parse(f.as_str()), Some(f));
            assert_eq!(Frame::parse_coordsys(f.coordsys()), Some(f));
        }
        assert_eq!(Frame::parse("Galactic"), Some(Frame::Galactic));
        assert_eq!(Frame::parse_coordsys("q"), Some(Frame::Equatorial));
        assert_eq!(Frame::parse_coordsys("X"), None);
        assert_eq!(Frame::parse("icrs"), None);
    }

    #[test]
    fn frame_rotation_composes_through_galactic() {
        let v = [0.3, -0.4, (1.0f64 - 0.25).sqrt()];
        let direct = quat::rotate(Frame::Ecliptic.rotation_to(Frame::Galactic), v);
        let known = quat::rotate(ecliptic_to_galactic(), v);
        for k in 0..3 {
            assert!((direct[k] - known[k]).abs() < 1e-12);
        }
        assert_eq!(Frame::Galactic.rotation_to(Frame::Galactic), quat::IDENTITY);
    }

    // Generated by crates/core/scripts/astropy_ecliptic_galactic.py with astropy 5.2.1
    // (Debian python3-astropy): BarycentricMeanEcliptic (lon, lat) → Galactic (l, b), degrees.
    const ECL_TO_GAL: [((f64, f64), (f64, f64)); 10] = [
        ((0.0, 0.0), (96.337279586662, -60.188546097377)),
        ((90.0, 0.0), (186.372444301025, -0.020148356183)),
        ((180.0, 30.0), (102.471800525572, 89.810374270735)),
        ((270.0, -60.0), (310.020476559238, -25.490812757878)),
        ((45.0, 89.0), (97.192916532086, 29.101589654903)),
        ((123.4, -12.3), (215.373293133854, 21.129391553254)),
        ((0.0, 90.0), (96.383988719657, 29.811445689869)),
        ((0.0, -90.0), (276.383988719657, -29.811445689869)),
        ((300.0, 10.0), (31.246017382536, -19.914256589339)),
        ((200.0, -45.0), (290.739486128212, 13.007632530236)),
    ];

    fn arcsec_between(a: [f64; 3], b: [f64; 3]) -> f64 {
        let c = crate::aberration::cross(a, b);
        let s = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        s.atan2(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])
            .to_degrees()
            * 3600.0
    }

    #[test]
    fn matches_astropy_to_a_tenth_of_an_arcsec() {
        let q = ecliptic_to_galactic();
        let m = ecliptic_to_galactic_matrix();
        for ((lon, lat), (l, b)) in ECL_TO_GAL {
            let v = lonlat_deg_to_vec(lon, lat);
            let expected = lonlat_deg_to_vec(l, b);
            let got = quat::rotate(q, v);
            let err = arcsec_between(got, expected);
            assert!(err < 0.1, "({lon}, {lat}): {err}″ from astropy");
            let mv = [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2]);
            assert!(arcsec_between(mv, got) < 1e-9);
        }
    }

    #[test]
    fn galactic_pole_and_centre_land_where_defined() {
        // The NGP (α, δ) = (192.85948°, 27.12825°) has b = +90°; the NCP has l = 122.93192°.
        let q = equatorial_to_galactic();
        let ngp = quat::rotate(q, lonlat_deg_to_vec(NGP_RA_DEG, NGP_DEC_DEG));
        assert!((ngp[2] - 1.0).abs() < 1e-15);
        let (l, b) = vec_to_lonlat_deg(quat::rotate(q, [0.0, 0.0, 1.0]));
        assert!((l - NCP_L_DEG).abs() < 1e-9 && (b - NGP_DEC_DEG).abs() < 1e-9);
        // Galactic centre, J2000: (α, δ) ≈ (266.40499°, −28.93617°) (Hipparcos vol. 1).
        let (l, b) = vec_to_lonlat_deg(quat::rotate(q, lonlat_deg_to_vec(266.40499, -28.93617)));
        assert!(
            l.min(360.0 - l) * 3600.0 < 1.0 && b.abs() * 3600.0 < 1.0,
            "{l} {b}"
        );
    }

    #[test]
    fn matrices_are_proper_rotations() {
        for m in [
            ecliptic_to_galactic_matrix(),
            equatorial_to_galactic_matrix(),
            ecliptic_to_equatorial_matrix(),
        ] {
            let mt = [0, 1, 2].map(|i| [0, 1, 2].map(|j| m[j][i]));
            let p = matmul(m, mt);
            for (i, row) in p.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    assert!((x - f64::from(u8::from(i == j))).abs() < 1e-15);
                }
            }
            let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
            assert!((det - 1.0).abs() < 1e-15);
        }
        // The ecliptic pole is at (α, δ) = (270°, 90° − ε).
        let (ra, dec) = vec_to_lonlat_deg(quat::rotate(ecliptic_to_equatorial(), [0.0, 0.0, 1.0]));
        assert!((ra - 270.0).abs() < 1e-9 && (dec - (90.0 - 84381.406 / 3600.0)).abs() < 1e-12);
    }
}
