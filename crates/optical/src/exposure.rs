//! The exposure-wide astrometric solution of one visit (`[singleframe.calibration]
//! exposure_wide`): the camera geometry from the CCDs' header WCSs, then one fit of every CCD's
//! matches ([`skypipe_astrometry::exposure`]) and the TAN-SIP WCS it gives each CCD.
//!
//! Camera geometry: the visit's focal plane is the tangent plane about the mean of the CCD
//! centres (through their header WCSs), in nominal pixels (the median of the headers' pixel
//! scales). Each CCD is placed rigidly: its centre where its header puts it, rotated as its
//! header says, with every pixel the same size; the headers' per-CCD scale and shear, and any
//! distortion they carry, are left to the fitted model, whose rotation, scale and distortion
//! are shared by all CCDs. It is derived per visit from that visit's headers alone, so nothing
//! waits for another visit; the headers' common errors (pointing, rotation, scale) do not
//! matter, only their relative placement of the CCDs. A visit whose headers put two CCDs on
//! the same part of the focal plane has no usable geometry, and the step fails for it.

use crate::calibration::{CalibrationParams, Match};
use crate::wcs::Wcs;
use skypipe_astrometry::exposure::{CcdMatches, ExposureFit, Placement, fit_exposure};
use skypipe_astrometry::tansip::{self, FitParams, TanSip};

/// What the exposure-wide step needs of one CCD.
#[derive(Debug)]
pub struct CcdForExposure<'a> {
    /// CCD number.
    pub ccd: u32,
    /// Its header WCS (the camera geometry).
    pub header: &'a Wcs,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
    /// Its matches to the reference catalogue.
    pub matches: &'a [Match],
}

/// The exposure-wide WCS of one CCD.
#[derive(Debug, Clone, PartialEq)]
pub struct CcdSolution {
    /// The CCD's TAN-SIP WCS derived from the exposure model.
    pub tan_sip: TanSip,
    /// The CCD's own matches kept by the visit's fit (0 for a CCD placed by the others).
    pub n_matches: usize,
    /// RMS of those matches' 2-D residuals, arcsec; without matches, the visit's.
    pub rms_arcsec: f64,
}

/// The solution of a visit.
#[derive(Debug, Clone)]
pub struct VisitSolution {
    /// Per CCD in the order given: its WCS, or why the visit cannot place it.
    pub ccds: Vec<(u32, Result<CcdSolution, String>)>,
    /// Matches used in all.
    pub n_matches: usize,
    /// RMS of their 2-D residuals, arcsec.
    pub rms_arcsec: f64,
    /// Order of the fitted distortion (1: none).
    pub order: usize,
}

/// Unit vector of (ra, dec) in degrees.
fn unit_vector(sky: [f64; 2]) -> [f64; 3] {
    let (a, d) = (sky[0].to_radians(), sky[1].to_radians());
    [d.cos() * a.cos(), d.cos() * a.sin(), d.sin()]
}

/// Derives the camera geometry from the headers and fits the visit; `visit` names it in
/// errors. An error when the headers give no geometry or the matches no fit.
pub fn solve_visit(
    visit: u64,
    ccds: &[CcdForExposure<'_>],
    p: &CalibrationParams,
) -> Result<VisitSolution, String> {
    // Each CCD's centre and a square of half-size d around it on the sky, through its header.
    let mut probes = Vec::with_capacity(ccds.len());
    for c in ccds {
        let centre = [(c.width as f64 + 1.0) / 2.0, (c.height as f64 + 1.0) / 2.0];
        let d = c.width.min(c.height) as f64 / 4.0;
        let pixels = [
            centre,
            [centre[0] + d, centre[1]],
            [centre[0] - d, centre[1]],
            [centre[0], centre[1] + d],
            [centre[0], centre[1] - d],
        ];
        let sky = c
            .header
            .pixel_to_sky(&pixels)
            .map_err(|e| format!("visit {visit}: ccd {}: {e}", c.ccd))?;
        let sky: Option<Vec<[f64; 2]>> = sky.into_iter().collect();
        let sky = sky.ok_or_else(|| {
            format!(
                "visit {visit}: ccd {}: the header WCS gives no sky position near the CCD centre",
                c.ccd
            )
        })?;
        probes.push((centre, d, sky));
    }
    if probes.is_empty() {
        return Err(format!("visit {visit}: no CCD to fit"));
    }
    let mut mean = [0.0; 3];
    for (_, _, sky) in &probes {
        let u = unit_vector(sky[0]);
        for a in 0..3 {
            mean[a] += u[a];
        }
    }
    let tangent = [
        mean[1].atan2(mean[0]).to_degrees().rem_euclid(360.0),
        mean[2].atan2(mean[0].hypot(mean[1])).to_degrees(),
    ];
    let project = |ccd: u32, s: [f64; 2]| {
        tansip::project(tangent, s).ok_or_else(|| {
            format!("visit {visit}: ccd {ccd}: the header puts it on the far side of the sky")
        })
    };
    // Local jacobians (degrees per pixel) in the visit's tangent plane.
    let mut local = Vec::with_capacity(ccds.len());
    for (c, (centre, d, sky)) in ccds.iter().zip(&probes) {
        let q: Vec<[f64; 2]> = sky
            .iter()
            .map(|s| project(c.ccd, *s))
            .collect::<Result<_, _>>()?;
        let j = [
            [
                (q[1][0] - q[2][0]) / (2.0 * d),
                (q[3][0] - q[4][0]) / (2.0 * d),
            ],
            [
                (q[1][1] - q[2][1]) / (2.0 * d),
                (q[3][1] - q[4][1]) / (2.0 * d),
            ],
        ];
        local.push((*centre, q[0], j));
    }
    let mut scales: Vec<f64> = local
        .iter()
        .map(|(_, _, j)| (j[0][0] * j[1][1] - j[0][1] * j[1][0]).abs().sqrt())
        .collect();
    scales.sort_by(f64::total_cmp);
    let scale = scales[scales.len() / 2];
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!(
            "visit {visit}: the header WCSs have no pixel scale"
        ));
    }
    let mut placements = Vec::with_capacity(ccds.len());
    for (c, (centre, focal, j)) in ccds.iter().zip(&local) {
        let jn = [
            [j[0][0] / scale, j[0][1] / scale],
            [j[1][0] / scale, j[1][1] / scale],
        ];
        let placement = Placement::rigid(*centre, [focal[0] / scale, focal[1] / scale], jn)
            .ok_or_else(|| format!("visit {visit}: ccd {}: singular header WCS", c.ccd))?;
        placements.push(placement);
    }
    // Two CCDs of one camera never overlap: headers that say so give no geometry.
    for a in 0..ccds.len() {
        for b in a + 1..ccds.len() {
            let fa = placements[a].to_focal(local[a].0);
            let fb = placements[b].to_focal(local[b].0);
            let apart = (fa[0] - fb[0]).hypot(fa[1] - fb[1]);
            let side = |c: &CcdForExposure<'_>| c.width.min(c.height) as f64;
            if apart < 0.5 * side(&ccds[a]).min(side(&ccds[b])) {
                return Err(format!(
                    "visit {visit}: the header WCSs put ccd {} and ccd {} on the same part of \
                     the focal plane (centres {apart:.0} pixels apart): no camera geometry",
                    ccds[a].ccd, ccds[b].ccd
                ));
            }
        }
    }
    let matches: Vec<CcdMatches> = ccds
        .iter()
        .zip(&placements)
        .map(|(c, placement)| CcdMatches {
            placement: *placement,
            size: [c.width as f64, c.height as f64],
            pixels: c.matches.iter().map(|m| [m.x, m.y]).collect(),
            sky: c.matches.iter().map(|m| [m.ra, m.dec]).collect(),
            sigma: c.matches.iter().map(|m| m.sigma).collect(),
        })
        .collect();
    let offered: usize = ccds.iter().map(|c| c.matches.len()).sum();
    // The highest order whose distortion is interpolated at every CCD (a CCD without matches
    // at the camera's edge lowers it; order 1 extrapolates safely).
    let mut order = p.exposure_order.max(1);
    let fit: ExposureFit = loop {
        let fp = FitParams {
            order,
            clip: p.clip,
            max_iterations: 10,
        };
        let fit = fit_exposure(&matches, tangent, &fp).ok_or_else(|| {
            format!(
                "visit {visit}: {offered} matches over {} CCDs are too few for an exposure-wide \
                 fit",
                ccds.len()
            )
        })?;
        let fitted = fit.model.sip.as_ref().map_or(1, |s| s.order);
        if fitted == 1 || matches.iter().all(|m| fit.covers(&m.placement, m.size)) {
            break fit;
        }
        order = fitted - 1;
    };
    if fit.n_used < p.min_matches {
        return Err(format!(
            "visit {visit}: {} matches after clipping, fewer than min_matches = {}",
            fit.n_used, p.min_matches
        ));
    }
    let order = fit.model.sip.as_ref().map_or(1, |s| s.order);
    let solved = ccds
        .iter()
        .zip(&matches)
        .zip(&fit.ccds)
        .map(|((c, m), r)| {
            // A CCD whose own matches all disagree with the others: its header misplaces it.
            let placed = if m.pixels.len() < 3 || r.n_used > 0 {
                Ok(CcdSolution {
                    tan_sip: fit.ccd_wcs(&m.placement, m.size),
                    n_matches: r.n_used,
                    rms_arcsec: if r.n_used > 0 {
                        r.rms_arcsec
                    } else {
                        fit.rms_arcsec
                    },
                })
            } else {
                Err(format!(
                    "visit {visit} cannot place ccd {}: all {} of its matches disagree with the \
                     visit's solution (its header WCS puts it elsewhere in the focal plane)",
                    c.ccd,
                    m.pixels.len()
                ))
            };
            (c.ccd, placed)
        })
        .collect();
    Ok(VisitSolution {
        ccds: solved,
        n_matches: fit.n_used,
        rms_arcsec: fit.rms_arcsec,
        order,
    })
}
