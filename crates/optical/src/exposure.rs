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
//! A CCD whose matches disagree with a fit of the other CCDs (its header misplaces it) is left
//! out of the fit and not placed.

use crate::calibration::{CalibrationParams, Match};
use crate::wcs::{Wcs, WcsError};
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
    pub ccds: Vec<(u32, Result<CcdSolution, VisitError>)>,
    /// Matches used in all.
    pub n_matches: usize,
    /// RMS of their 2-D residuals, arcsec.
    pub rms_arcsec: f64,
    /// Order of the fitted distortion (1: none).
    pub order: usize,
}

/// Why the exposure-wide step cannot solve a visit, or place one of its CCDs; each names the
/// visit and, where one is to blame, the CCD.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VisitError {
    /// A CCD's header WCS cannot be evaluated.
    #[error("visit {visit}: ccd {ccd}: {source}")]
    Header {
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
        /// WCSLIB's refusal.
        #[source]
        source: WcsError,
    },
    /// A CCD's header WCS has no sky position near the CCD's centre.
    #[error("visit {visit}: ccd {ccd}: the header WCS gives no sky position near the CCD centre")]
    NoSkyPosition {
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
    },
    /// A CCD's header puts it on the far side of the sky from the visit's mean position.
    #[error("visit {visit}: ccd {ccd}: the header puts it on the far side of the sky")]
    FarSide {
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
    },
    /// A CCD's header WCS has a singular Jacobian.
    #[error("visit {visit}: ccd {ccd}: singular header WCS")]
    Singular {
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
    },
    /// The visit has no CCD.
    #[error("visit {visit}: no CCD to fit")]
    NoCcd {
        /// The visit.
        visit: u64,
    },
    /// The headers' median pixel scale is zero or not finite.
    #[error("visit {visit}: the header WCSs have no pixel scale")]
    NoPixelScale {
        /// The visit.
        visit: u64,
    },
    /// Two CCDs' headers put them on the same part of the focal plane.
    #[error(
        "visit {visit}: the header WCSs put ccd {first} and ccd {second} on the same part of the focal plane (centres {apart:.0} pixels apart): no camera geometry"
    )]
    Overlap {
        /// The visit.
        visit: u64,
        /// One CCD.
        first: u32,
        /// The other.
        second: u32,
        /// Their centres' distance, nominal pixels.
        apart: f64,
    },
    /// Too few matches for any exposure-wide fit.
    #[error(
        "visit {visit}: {offered} matches over {ccds} CCDs are too few for an exposure-wide fit"
    )]
    TooFewMatches {
        /// The visit.
        visit: u64,
        /// Matches offered.
        offered: usize,
        /// CCDs.
        ccds: usize,
    },
    /// Fewer matches than `min_matches` survived clipping.
    #[error("visit {visit}: {used} matches after clipping, fewer than min_matches = {min}")]
    Clipped {
        /// The visit.
        visit: u64,
        /// Matches kept.
        used: usize,
        /// `[singleframe.calibration] min_matches`.
        min: usize,
    },
    /// A CCD whose matches disagree with the other CCDs' fit (left out and not placed).
    #[error(
        "visit {visit} cannot place ccd {ccd}: its {matches} matches disagree with the other CCDs' (its header WCS puts it elsewhere in the focal plane)"
    )]
    Misplaced {
        /// The visit.
        visit: u64,
        /// The CCD.
        ccd: u32,
        /// Its matches.
        matches: usize,
    },
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
) -> Result<VisitSolution, VisitError> {
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
            .map_err(|source| VisitError::Header {
                visit,
                ccd: c.ccd,
                source,
            })?;
        let sky: Option<Vec<[f64; 2]>> = sky.into_iter().collect();
        let sky = sky.ok_or(VisitError::NoSkyPosition { visit, ccd: c.ccd })?;
        probes.push((centre, d, sky));
    }
    if probes.is_empty() {
        return Err(VisitError::NoCcd { visit });
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
        tansip::project(tangent, s).ok_or(VisitError::FarSide { visit, ccd })
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
        return Err(VisitError::NoPixelScale { visit });
    }
    let mut placements = Vec::with_capacity(ccds.len());
    for (c, (centre, focal, j)) in ccds.iter().zip(&local) {
        let jn = [
            [j[0][0] / scale, j[0][1] / scale],
            [j[1][0] / scale, j[1][1] / scale],
        ];
        let placement = Placement::rigid(*centre, [focal[0] / scale, focal[1] / scale], jn)
            .ok_or(VisitError::Singular { visit, ccd: c.ccd })?;
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
                return Err(VisitError::Overlap {
                    visit,
                    first: ccds[a].ccd,
                    second: ccds[b].ccd,
                    apart,
                });
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
    // A CCD (with at least 3 matches) whose matches lie, by their median, more than
    // max(5 × the fit's RMS, 1″) from a fit of the other CCDs disagrees with them: its header
    // misplaces it. The worst is left out and the others tested again (a misplaced CCD bends a
    // fit that includes it), until every CCD left agrees.
    let mut misplaced = vec![false; ccds.len()];
    loop {
        let mut worst: Option<(usize, f64)> = None;
        for k in 0..matches.len() {
            if misplaced[k] || matches[k].pixels.len() < 3 {
                continue;
            }
            let mut out = misplaced.clone();
            out[k] = true;
            let Ok(others) = fit_interpolating(
                visit,
                &without(&matches, &out),
                &misplaced,
                tangent,
                p,
                offered,
            ) else {
                continue;
            };
            let ratio =
                median_residual_arcsec(&others, &matches[k]) / (5.0 * others.rms_arcsec).max(1.0);
            if ratio > 1.0 && worst.is_none_or(|w| ratio > w.1) {
                worst = Some((k, ratio));
            }
        }
        match worst {
            Some((k, _)) => misplaced[k] = true,
            None => break,
        }
    }
    let fit = fit_interpolating(
        visit,
        &without(&matches, &misplaced),
        &misplaced,
        tangent,
        p,
        offered,
    )?;
    if fit.n_used < p.min_matches {
        return Err(VisitError::Clipped {
            visit,
            used: fit.n_used,
            min: p.min_matches,
        });
    }
    let order = fit.model.sip.as_ref().map_or(1, |s| s.order);
    let solved = ccds
        .iter()
        .zip(&matches)
        .zip(&fit.ccds)
        .zip(&misplaced)
        .map(|(((c, m), r), out)| {
            let placed = if *out {
                Err(VisitError::Misplaced {
                    visit,
                    ccd: c.ccd,
                    matches: m.pixels.len(),
                })
            } else {
                Ok(CcdSolution {
                    tan_sip: fit.ccd_wcs(&m.placement, m.size),
                    n_matches: r.n_used,
                    rms_arcsec: if r.n_used > 0 {
                        r.rms_arcsec
                    } else {
                        fit.rms_arcsec
                    },
                })
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

/// `matches` with the matches of the CCDs flagged in `out` removed (placements kept).
fn without(matches: &[CcdMatches], out: &[bool]) -> Vec<CcdMatches> {
    matches
        .iter()
        .zip(out)
        .map(|(m, out)| {
            if *out {
                CcdMatches {
                    pixels: Vec::new(),
                    sky: Vec::new(),
                    sigma: Vec::new(),
                    ..m.clone()
                }
            } else {
                m.clone()
            }
        })
        .collect()
}

/// Median distance, arcsec, between one CCD's reference stars and where `fit` puts its matched
/// sources.
fn median_residual_arcsec(fit: &ExposureFit, m: &CcdMatches) -> f64 {
    let centre = fit.model.crval;
    let mut r: Vec<f64> = m
        .pixels
        .iter()
        .zip(&m.sky)
        .map(|(px, sky)| {
            let at = fit.model.pixel_to_sky(m.placement.to_focal(*px));
            match (tansip::project(centre, at), tansip::project(centre, *sky)) {
                (Some(a), Some(b)) => 3600.0 * (a[0] - b[0]).hypot(a[1] - b[1]),
                _ => f64::INFINITY,
            }
        })
        .collect();
    r.sort_by(f64::total_cmp);
    r.get(r.len() / 2).copied().unwrap_or(0.0)
}

/// The fit of the highest order ≤ `exposure_order` whose distortion is interpolated at every
/// CCD not `excluded` (a CCD without matches at the camera's edge lowers it; order 1
/// extrapolates safely).
fn fit_interpolating(
    visit: u64,
    matches: &[CcdMatches],
    excluded: &[bool],
    tangent: [f64; 2],
    p: &CalibrationParams,
    offered: usize,
) -> Result<ExposureFit, VisitError> {
    let mut order = p.exposure_order.max(1);
    loop {
        let fp = FitParams {
            order,
            clip: p.clip,
            max_iterations: 10,
        };
        let fit = fit_exposure(matches, tangent, &fp).ok_or(VisitError::TooFewMatches {
            visit,
            offered,
            ccds: matches.len(),
        })?;
        let fitted = fit.model.sip.as_ref().map_or(1, |s| s.order);
        let covered = matches
            .iter()
            .zip(excluded)
            .all(|(m, out)| *out || fit.covers(&m.placement, m.size));
        if fitted == 1 || covered {
            return Ok(fit);
        }
        order = fitted - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 × 2 camera of 200 × 400 CCDs with 20-pixel gaps: each CCD's true TAN WCS about the
    /// boresight (150, 2), 0.2″ pixels, rotated by 0.3°.
    fn truth(ccd: usize) -> TanSip {
        let (col, row) = ((ccd % 2) as f64, (ccd / 2) as f64);
        let s = 0.2 / 3600.0;
        let r = 0.3f64.to_radians();
        TanSip {
            crpix: [210.5 - col * 220.0, 410.5 - row * 420.0],
            crval: [150.0, 2.0],
            cd: [[-s * r.cos(), s * r.sin()], [s * r.sin(), s * r.cos()]],
            sip: None,
        }
    }

    /// The header: the truth moved by 10″ in Dec, rotated and scaled like every CCD's.
    fn header(ccd: usize) -> Wcs {
        let mut w = truth(ccd);
        w.crval[1] += 10.0 / 3600.0;
        let (c, s) = (0.2f64.to_radians().cos(), 0.2f64.to_radians().sin());
        let k = 1.005;
        let cd = w.cd;
        w.cd = [
            [
                k * (c * cd[0][0] - s * cd[1][0]),
                k * (c * cd[0][1] - s * cd[1][1]),
            ],
            [
                k * (s * cd[0][0] + c * cd[1][0]),
                k * (s * cd[0][1] + c * cd[1][1]),
            ],
        ];
        Wcs::from_header("test header", &w.keyrecords().concat()).unwrap()
    }

    fn matches(ccd: usize, n: usize) -> Vec<Match> {
        (0..n)
            .map(|i| {
                let p = [10.0 + (i * 37 % 180) as f64, 10.0 + (i * 53 % 380) as f64];
                let s = truth(ccd).pixel_to_sky(p);
                Match {
                    x: p[0],
                    y: p[1],
                    ra: s[0],
                    dec: s[1],
                    sigma: 0.02,
                }
            })
            .collect()
    }

    fn solve(headers: &[Wcs], m: &[Vec<Match>]) -> Result<VisitSolution, VisitError> {
        let ccds: Vec<CcdForExposure<'_>> = headers
            .iter()
            .zip(m)
            .enumerate()
            .map(|(k, (header, matches))| CcdForExposure {
                ccd: k as u32,
                header,
                width: 200,
                height: 400,
                matches,
            })
            .collect();
        solve_visit(7, &ccds, &CalibrationParams::default())
    }

    #[test]
    fn places_every_ccd_from_the_headers_geometry_and_the_matches() {
        let headers: Vec<Wcs> = (0..4).map(header).collect();
        // CCD 2 has no match of its own.
        let m: Vec<Vec<Match>> = [40, 40, 0, 40]
            .iter()
            .enumerate()
            .map(|(k, n)| matches(k, *n))
            .collect();
        let solution = solve(&headers, &m).unwrap();
        assert_eq!(solution.n_matches, 120);
        for (k, (ccd, placed)) in solution.ccds.iter().enumerate() {
            assert_eq!(*ccd as usize, k);
            let w = &placed.as_ref().unwrap().tan_sip;
            for p in [[1.0, 1.0], [200.0, 400.0], [100.5, 17.25]] {
                let (a, b) = (w.pixel_to_sky(p), truth(k).pixel_to_sky(p));
                let d = 3600.0 * ((a[0] - b[0]) * 2f64.to_radians().cos()).hypot(a[1] - b[1]);
                assert!(d < 1e-6, "ccd {k} at {p:?}: {d} arcsec");
            }
        }
        assert_eq!(solution.ccds[2].1.as_ref().unwrap().n_matches, 0);
    }

    #[test]
    fn a_misplaced_ccd_is_not_placed_and_overlapping_headers_fail_the_visit() {
        let headers: Vec<Wcs> = (0..4).map(header).collect();
        let mut m: Vec<Vec<Match>> = (0..4).map(|k| matches(k, 40)).collect();
        // CCD 1's stars are 30 pixels from where its header puts them.
        for x in &mut m[1] {
            x.x += 30.0;
        }
        let solution = solve(&headers, &m).unwrap();
        let why = solution.ccds[1].1.as_ref().unwrap_err();
        assert!(
            matches!(
                why,
                VisitError::Misplaced {
                    visit: 7,
                    ccd: 1,
                    ..
                }
            ),
            "{why}"
        );
        assert!(
            why.to_string().contains("visit 7 cannot place ccd 1"),
            "{why}"
        );
        let placed: Vec<String> = solution
            .ccds
            .iter()
            .map(|c| format!("{} {:?}", c.0, c.1.as_ref().map(|s| s.n_matches)))
            .collect();
        assert!(
            solution.ccds.iter().filter(|c| c.1.is_ok()).count() == 3,
            "{placed:?}"
        );
        // CCD 3's header copies CCD 0's placement.
        let mut overlapping: Vec<Wcs> = (0..3).map(header).collect();
        overlapping.push(header(0));
        let e = solve(&overlapping, &m).unwrap_err();
        assert!(
            matches!(
                e,
                VisitError::Overlap {
                    visit: 7,
                    first: 0,
                    second: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("ccd 0 and ccd 3"), "{e}");
        let e = solve(&headers, &[vec![], vec![], vec![], matches(3, 2)]).unwrap_err();
        assert!(
            matches!(e, VisitError::TooFewMatches { visit: 7, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("too few"), "{e}");
    }
}
