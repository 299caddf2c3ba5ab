//! The gnomonic (TAN) world coordinate system of FITS (Calabretta & Greisen 2002), with a CD
//! matrix: `CRPIX1/2` (1-based pixels), `CRVAL1/2` (deg), `CD1_1 … CD2_2` (deg/pixel),
//! `CTYPE1/2 = 'RA---TAN' / 'DEC--TAN'`, LONPOLE 180.

use serde::{Deserialize, Serialize};

/// A TAN WCS. Pixel coordinates here are FITS 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TanWcs {
    /// Reference pixel (x, y), 1-based.
    pub crpix: [f64; 2],
    /// Reference sky position (ra, dec), degrees.
    pub crval: [f64; 2],
    /// Linear transformation pixel → intermediate coordinates, degrees per pixel,
    /// `[[CD1_1, CD1_2], [CD2_1, CD2_2]]`.
    pub cd: [[f64; 2]; 2],
}

impl TanWcs {
    /// Sky position (ra in [0, 360), dec), degrees, of 1-based pixel (x, y).
    pub fn pixel_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        let (dx, dy) = (x - self.crpix[0], y - self.crpix[1]);
        let xi = (self.cd[0][0] * dx + self.cd[0][1] * dy).to_radians();
        let eta = (self.cd[1][0] * dx + self.cd[1][1] * dy).to_radians();
        let (a0, d0) = (self.crval[0].to_radians(), self.crval[1].to_radians());
        let denom = d0.cos() - eta * d0.sin();
        let ra = a0 + xi.atan2(denom);
        let dec = (d0.sin() + eta * d0.cos()).atan2(xi.hypot(denom));
        (ra.to_degrees().rem_euclid(360.0), dec.to_degrees())
    }

    /// 1-based pixel of sky position (ra, dec) in degrees; `None` on the far hemisphere.
    pub fn sky_to_pixel(&self, ra: f64, dec: f64) -> Option<(f64, f64)> {
        let (a, d) = (ra.to_radians(), dec.to_radians());
        let (a0, d0) = (self.crval[0].to_radians(), self.crval[1].to_radians());
        let cosc = d.sin() * d0.sin() + d.cos() * d0.cos() * (a - a0).cos();
        if cosc <= 0.0 {
            return None;
        }
        let xi = (d.cos() * (a - a0).sin() / cosc).to_degrees();
        let eta = ((d.sin() * d0.cos() - d.cos() * d0.sin() * (a - a0).cos()) / cosc).to_degrees();
        let [[a11, a12], [a21, a22]] = self.cd;
        let det = a11 * a22 - a12 * a21;
        let dx = (a22 * xi - a12 * eta) / det;
        let dy = (-a21 * xi + a11 * eta) / det;
        Some((self.crpix[0] + dx, self.crpix[1] + dy))
    }

    /// Pixel scale, arcsec per pixel (square root of |det CD|).
    pub fn scale_arcsec(&self) -> f64 {
        let [[a, b], [c, d]] = self.cd;
        (a * d - b * c).abs().sqrt() * 3600.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wcs() -> TanWcs {
        let s = 0.2 / 3600.0;
        let t = 0.3f64.to_radians();
        TanWcs {
            crpix: [-500.5, 1024.0],
            crval: [359.95, -30.0],
            cd: [[-s * t.cos(), s * t.sin()], [s * t.sin(), s * t.cos()]],
        }
    }

    #[test]
    fn reference_pixel_maps_to_the_reference_position() {
        let w = wcs();
        let (ra, dec) = w.pixel_to_sky(-500.5, 1024.0);
        assert!((ra - 359.95).abs() < 1e-12 && (dec + 30.0).abs() < 1e-12);
    }

    #[test]
    fn round_trip_across_ra_zero() {
        let w = wcs();
        for (x, y) in [(1.0, 1.0), (2048.0, 4096.0), (3000.5, -200.25)] {
            let (ra, dec) = w.pixel_to_sky(x, y);
            let (x2, y2) = w.sky_to_pixel(ra, dec).unwrap();
            assert!(
                (x - x2).abs() < 1e-7 && (y - y2).abs() < 1e-7,
                "{x},{y} -> {x2},{y2}"
            );
        }
        assert!((w.scale_arcsec() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn known_value_from_astropy() {
        // astropy 5.2.1 (Debian 12), WCS with CTYPE RA---TAN/DEC--TAN, CRPIX (100, 200),
        // CRVAL (10, 20), CD = [[-1e-4, 0], [0, 1e-4]]: all_pix2world(600, 900, 1) =
        // (9.946767456, 20.069991994).
        let w = TanWcs {
            crpix: [100.0, 200.0],
            crval: [10.0, 20.0],
            cd: [[-1e-4, 0.0], [0.0, 1e-4]],
        };
        let (ra, dec) = w.pixel_to_sky(600.0, 900.0);
        assert!((ra - 9.946_767_456).abs() < 1e-8, "{ra}");
        assert!((dec - 20.069_991_994).abs() < 1e-8, "{dec}");
    }
}
