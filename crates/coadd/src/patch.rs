//! The pixel grid of one patch's outer region (inner square plus border) and its FITS WCS.
//!
//! Pixel `(i, j)` (0-based) of the grid is tract pixel `(x·P − B + i, y·P − B + j)` in the
//! sky map's tract coordinates (`P` = patch size, `B` = border), and its centre is at tract
//! coordinates `+ ½`. The FITS WCS written into warps and coadds is the tract's own gnomonic
//! projection: `CRVAL` = tract centre, `CD` = diag(scale, scale) (x towards local east, y
//! towards north, as the tract grid), `LONPOLE = 180`, and `CRPIX` the grid position of the
//! tract centre, so WCSLIB or astropy on the header give the positions
//! [`skypipe_registry::Tract::deproject`] gives.

use serde::{Deserialize, Serialize};
use skypipe_registry::{PatchId, SkyPoint, Tract};

/// A patch as units carry it (serialisable [`PatchId`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PatchKey {
    /// Tract id.
    pub tract: u32,
    /// Patch column.
    pub x: u32,
    /// Patch row.
    pub y: u32,
}

impl From<PatchId> for PatchKey {
    fn from(p: PatchId) -> Self {
        Self {
            tract: p.tract,
            x: p.x,
            y: p.y,
        }
    }
}

impl From<PatchKey> for PatchId {
    fn from(p: PatchKey) -> Self {
        Self {
            tract: p.tract,
            x: p.x,
            y: p.y,
        }
    }
}

/// The outer-region pixel grid of one patch.
#[derive(Debug, Clone)]
pub struct PatchGrid {
    tract: Tract,
    /// Tract pixel coordinates of the grid's lower-left pixel edge.
    origin: (f64, f64),
    /// Pixels per side (patch size + 2 × border).
    side: usize,
}

impl PatchGrid {
    /// The grid of patch `(x, y)` of `tract`.
    pub fn new(tract: Tract, x: u32, y: u32) -> Self {
        let (p, b) = (f64::from(tract.patch_size), f64::from(tract.border));
        let side = (tract.patch_size + 2 * tract.border) as usize;
        Self {
            origin: (f64::from(x) * p - b, f64::from(y) * p - b),
            side,
            tract,
        }
    }

    /// Width and height in pixels (equal).
    pub fn shape(&self) -> (usize, usize) {
        (self.side, self.side)
    }

    /// The sky position of the centre of 0-based pixel `(i, j)` (any real values).
    pub fn sky_of(&self, i: f64, j: f64) -> SkyPoint {
        self.tract
            .deproject(self.origin.0 + i + 0.5, self.origin.1 + j + 0.5)
    }

    /// The 0-based pixel of a sky position, `None` 90° or more from the tract centre.
    pub fn pixel_of(&self, p: SkyPoint) -> Option<(f64, f64)> {
        let (x, y) = self.tract.project(p)?;
        Some((x - self.origin.0 - 0.5, y - self.origin.1 - 0.5))
    }

    /// The WCS as FITS keyrecords (80 characters each; see the module documentation).
    pub fn wcs_records(&self) -> Vec<String> {
        let (w, h) = self.tract.size_pixels();
        // 1-based pixel p has its centre at tract coordinate origin + p − ½.
        let crpix = (w / 2.0 - self.origin.0 + 0.5, h / 2.0 - self.origin.1 + 0.5);
        let scale = self.tract.pixel_scale / 3600.0;
        let text = |k: &str, v: &str| format!("{k:<8}= '{v:<8}'");
        let real = |k: &str, v: f64| format!("{k:<8}= {:>20}", format!("{v:E}"));
        [
            format!("{:<8}= {:>20}", "WCSAXES", 2),
            text("CTYPE1", "RA---TAN"),
            text("CTYPE2", "DEC--TAN"),
            text("CUNIT1", "deg"),
            text("CUNIT2", "deg"),
            text("RADESYS", "ICRS"),
            real("CRPIX1", crpix.0),
            real("CRPIX2", crpix.1),
            real("CRVAL1", self.tract.centre.ra()),
            real("CRVAL2", self.tract.centre.dec()),
            real("CD1_1", scale),
            real("CD1_2", 0.0),
            real("CD2_1", 0.0),
            real("CD2_2", scale),
            real("LONPOLE", 180.0),
        ]
        .into_iter()
        .map(|r| format!("{r:<80}"))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_registry::{SkyMap, SkyMapConfig};
    use skypipe_wcs::Wcs;

    fn map() -> SkyMap {
        SkyMap::new(SkyMapConfig {
            rings: 120,
            pixel_scale: 0.2,
            patch_size: 400,
            border: 20,
        })
        .unwrap()
    }

    /// WCSLIB on the written header gives the tract's own positions, for an equatorial tract
    /// (one across RA = 0) and both polar caps.
    #[test]
    fn header_wcs_matches_the_tract_projection() {
        let map = map();
        let at = |ra, dec| map.locate(SkyPoint::new(ra, dec).unwrap());
        for id in [
            at(150.0, 2.0),
            at(0.01, -0.5),
            at(10.0, 89.9),
            at(200.0, -89.9),
        ] {
            let grid = PatchGrid::new(map.tract(id.tract).unwrap(), id.x, id.y);
            let wcs = Wcs::from_header("patch", &grid.wcs_records().concat()).unwrap();
            let (w, h) = grid.shape();
            let pixels: Vec<[f64; 2]> = [(0.0, 0.0), (w as f64 - 1.0, 3.0), (17.5, h as f64)]
                .iter()
                .map(|&(i, j)| [i + 1.0, j + 1.0])
                .collect();
            let sky = wcs.pixel_to_sky(&pixels).unwrap();
            for (p, s) in pixels.iter().zip(sky) {
                let s = s.unwrap();
                let truth = grid.sky_of(p[0] - 1.0, p[1] - 1.0);
                let sep = truth.separation(SkyPoint::new(s[0], s[1]).unwrap());
                assert!(sep * 3600.0 < 1e-6, "{id:?} pixel {p:?}: {sep} deg");
                let back = grid.pixel_of(truth).unwrap();
                assert!((back.0 - (p[0] - 1.0)).hypot(back.1 - (p[1] - 1.0)) < 1e-6);
            }
        }
    }
}
