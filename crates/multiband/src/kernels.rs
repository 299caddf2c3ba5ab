//! Pure kernels of the multiband stage: matching per-band detections into objects, the
//! inner-region rule, measurement at a position (centroid, aperture and PSF-weighted fluxes,
//! second moments, flags) with the optical crate's kernels, aperture corrections, and the
//! choice of a reference band. No I/O.

use serde::{Deserialize, Serialize};
use skypipe_optical::background::Background;
use skypipe_optical::image::{Image, mask};
use skypipe_optical::measure::{self, FWHM_TO_SIGMA, flags};

/// Flag bits of the multiband catalogues: the optical crate's measurement flags plus these.
pub mod flag {
    pub use skypipe_optical::measure::flags::{
        BAD_PIXELS, BLENDED, CENTROID_FAILED, EDGE, MOMENTS_FAILED, SATURATED,
    };
    /// The band's measurement is missing (its coadd could not be read or its unit failed).
    pub const MISSING: u32 = 1 << 8;
    /// Every flag as (header keyword, bit, meaning), for the catalogue header.
    pub const NAMES: [(&str, u32, &str); 7] = [
        ("FL_EDGE", EDGE, "aperture reaches beyond the data"),
        ("FL_SAT", SATURATED, "saturated pixels in the aperture"),
        ("FL_BLEND", BLENDED, "other peaks within the match radius"),
        ("FL_BAD", BAD_PIXELS, "bad pixels in the aperture"),
        ("FL_CENT", CENTROID_FAILED, "centroid failed, position kept"),
        ("FL_MOM", MOMENTS_FAILED, "adaptive moments failed"),
        ("FL_MISS", MISSING, "band missing"),
    ];
}

/// One detection of one band, in patch pixels (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// Index of the band in the stage's band list.
    pub band: usize,
    /// x, pixels.
    pub x: f64,
    /// y, pixels.
    pub y: f64,
    /// Detection significance, σ.
    pub significance: f64,
}

/// An object: the peaks of every band matched to it and their significance-weighted mean
/// position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedObject {
    /// Mean x, pixels.
    pub x: f64,
    /// Mean y, pixels.
    pub y: f64,
    /// The matched peaks, at most one per band.
    pub peaks: Vec<Peak>,
    /// Whether another object lies within twice the match radius.
    pub blended: bool,
}

/// Matches the peaks of every band into objects: peaks are taken brightest first; a peak joins
/// the nearest object within `radius` pixels that has no peak of its band yet, else starts a
/// new object. Objects come out sorted by position (y, then x) so the order does not depend on
/// the order of the bands.
pub fn merge_peaks(peaks: &[Peak], radius: f64) -> Vec<MergedObject> {
    let mut order: Vec<&Peak> = peaks.iter().collect();
    order.sort_by(|a, b| b.significance.total_cmp(&a.significance));
    let cell = radius.max(1e-6);
    let key = |x: f64, y: f64| ((x / cell).floor() as i64, (y / cell).floor() as i64);
    let mut grid: std::collections::HashMap<(i64, i64), Vec<usize>> = Default::default();
    let mut objects: Vec<MergedObject> = Vec::new();
    for p in order {
        let (cx, cy) = key(p.x, p.y);
        let mut best: Option<(f64, usize)> = None;
        for gx in cx - 1..=cx + 1 {
            for gy in cy - 1..=cy + 1 {
                for &k in grid.get(&(gx, gy)).into_iter().flatten() {
                    let o = &objects[k];
                    let first = &o.peaks[0];
                    let d = (first.x - p.x).hypot(first.y - p.y);
                    if d <= radius
                        && o.peaks.iter().all(|q| q.band != p.band)
                        && best.is_none_or(|(bd, _)| d < bd)
                    {
                        best = Some((d, k));
                    }
                }
            }
        }
        match best {
            Some((_, k)) => objects[k].peaks.push(*p),
            None => {
                grid.entry((cx, cy)).or_default().push(objects.len());
                objects.push(MergedObject {
                    x: p.x,
                    y: p.y,
                    peaks: vec![*p],
                    blended: false,
                });
            }
        }
    }
    for o in &mut objects {
        let w: f64 = o.peaks.iter().map(|p| p.significance.max(1e-3)).sum();
        o.x = o
            .peaks
            .iter()
            .map(|p| p.significance.max(1e-3) * p.x)
            .sum::<f64>()
            / w;
        o.y = o
            .peaks
            .iter()
            .map(|p| p.significance.max(1e-3) * p.y)
            .sum::<f64>()
            / w;
    }
    // Blended: another object within twice the radius (neighbours found through a grid of
    // that cell size, so crowded or shredded patches stay linear in the number of objects).
    let reach = 2.0 * radius;
    let wide = reach.max(1e-6);
    let wide_key = |x: f64, y: f64| ((x / wide).floor() as i64, (y / wide).floor() as i64);
    let mut near: std::collections::HashMap<(i64, i64), Vec<usize>> = Default::default();
    for (k, o) in objects.iter().enumerate() {
        near.entry(wide_key(o.x, o.y)).or_default().push(k);
    }
    let blended: Vec<bool> = objects
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let (cx, cy) = wide_key(o.x, o.y);
            (cx - 1..=cx + 1).any(|gx| {
                (cy - 1..=cy + 1).any(|gy| {
                    near.get(&(gx, gy))
                        .into_iter()
                        .flatten()
                        .any(|&j| j != k && (objects[j].x - o.x).hypot(objects[j].y - o.y) <= reach)
                })
            })
        })
        .collect();
    for (o, b) in objects.iter_mut().zip(blended) {
        o.blended = b;
    }
    objects.sort_by(|a, b| {
        (a.y, a.x)
            .partial_cmp(&(b.y, b.x))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    objects
}

/// The inner-region rule: whether 0-based pixel position `(x, y)` of a patch grid with
/// `border` pixels around an inner square of `patch_size` lies in the inner square, half-open
/// (`[border − ½, border + patch_size − ½)` on each axis), so that of two neighbouring patches
/// exactly one owns any position.
pub fn in_inner_region(x: f64, y: f64, border: u32, patch_size: u32) -> bool {
    let lo = f64::from(border) - 0.5;
    let hi = lo + f64::from(patch_size);
    (lo..hi).contains(&x) && (lo..hi).contains(&y)
}

/// A coadd ready to measure on: pixels without data set to 0, with a huge variance and the BAD
/// bit; background re-estimated and subtracted.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Background-subtracted values.
    pub image: Image<f32>,
    /// Variances.
    pub variance: Image<f32>,
    /// Mask bits (the calexp's bits; no-data pixels BAD).
    pub mask: Image<u32>,
}

/// Prepares a coadd's planes (row-major, `width` × `height`) for measurement; `no_data_bit`
/// marks pixels without inputs, `background_cell` is the background mesh cell in pixels.
pub fn prepare(
    image: &[f32],
    variance: &[f32],
    mask_plane: &[u32],
    (width, height): (usize, usize),
    no_data_bit: u32,
    background_cell: usize,
) -> Prepared {
    let mut img = Image::from_vec(width, height, image.to_vec());
    let mut var = Image::from_vec(width, height, variance.to_vec());
    let keep = mask::SAT | mask::BAD | mask::CR;
    let mut m = Image::from_vec(
        width,
        height,
        mask_plane.iter().map(|&b| b & keep).collect::<Vec<u32>>(),
    );
    for (k, &bits) in mask_plane.iter().enumerate() {
        let usable = img.data[k].is_finite() && var.data[k].is_finite() && var.data[k] > 0.0;
        if !usable || bits & no_data_bit != 0 {
            img.data[k] = 0.0;
            var.data[k] = f32::MAX.sqrt();
            m.data[k] |= mask::BAD;
        }
    }
    Background::estimate(&img, &m, background_cell).subtract_from(&mut img);
    Prepared {
        image: img,
        variance: var,
        mask: m,
    }
}

/// Settings of a measurement at a position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasureAt {
    /// PSF FWHM of the band, pixels (centroid window, PSF model, moments start).
    pub fwhm: f64,
    /// Aperture radius, pixels.
    pub aperture_radius: f64,
    /// Recentre with the windowed centroid (false: forced photometry at the given position).
    pub recentre: bool,
}

/// One measurement of one object in one band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// x, pixels (the centroid, or the given position).
    pub x: f64,
    /// y, pixels.
    pub y: f64,
    /// Aperture flux.
    pub flux_aper: f64,
    /// Its 1σ error from the variance plane.
    pub flux_aper_err: f64,
    /// PSF-weighted flux (Gaussian PSF of the band's FWHM), before aperture correction.
    pub flux_psf: f64,
    /// Its 1σ error.
    pub flux_psf_err: f64,
    /// Adaptive second moment xx, pixels² (`NaN` when they failed).
    pub ixx: f64,
    /// yy.
    pub iyy: f64,
    /// xy.
    pub ixy: f64,
    /// Bits of [`flag`].
    pub flags: u32,
}

impl Measurement {
    /// PSF-flux signal-to-noise (0 without a finite positive error).
    pub fn snr(&self) -> f64 {
        if self.flux_psf_err > 0.0 && self.flux_psf.is_finite() {
            self.flux_psf / self.flux_psf_err
        } else {
            0.0
        }
    }
}

/// Measures one object at `(x, y)` on a prepared coadd.
pub fn measure_at(p: &Prepared, x: f64, y: f64, s: &MeasureAt) -> Measurement {
    let sigma = s.fwhm * FWHM_TO_SIGMA;
    let mut bits = 0;
    let (cx, cy) = if s.recentre {
        match measure::windowed_centroid(&p.image, x, y, sigma) {
            Some(c) => c,
            None => {
                bits |= flags::CENTROID_FAILED;
                (x, y)
            }
        }
    } else {
        (x, y)
    };
    let (flux_aper, flux_aper_err, pixel_bits, outside) =
        measure::aperture_flux(&p.image, &p.variance, &p.mask, cx, cy, s.aperture_radius);
    let (flux_psf, flux_psf_err) = measure::psf_flux(&p.image, &p.variance, cx, cy, sigma);
    if outside {
        bits |= flags::EDGE;
    }
    if pixel_bits & mask::SAT != 0 {
        bits |= flags::SATURATED;
    }
    if pixel_bits & mask::BAD != 0 {
        bits |= flags::BAD_PIXELS;
    }
    let (ixx, iyy, ixy) =
        match measure::adaptive_moments(&p.image, cx, cy, sigma, 4.0 * s.aperture_radius) {
            Some(m) => m,
            None => {
                bits |= flags::MOMENTS_FAILED;
                (f64::NAN, f64::NAN, f64::NAN)
            }
        };
    Measurement {
        x: cx,
        y: cy,
        flux_aper,
        flux_aper_err,
        flux_psf,
        flux_psf_err,
        ixx,
        iyy,
        ixy,
        flags: bits,
    }
}

/// The aperture correction of PSF fluxes: the median aperture / PSF flux ratio over the
/// stellar locus, 1 when it is empty. Candidates are unflagged measurements with PSF S/N at
/// least `min_snr`, finite adaptive moments, and no other measurement within `isolation`
/// pixels brighter than 1 % of their aperture flux; the locus is those whose size
/// `sqrt((Ixx + Iyy) / 2)` lies within 15 % of the candidates' 20th-percentile size. Galaxies,
/// blends and crowded stars hold more light in the aperture than the PSF model sees, so with
/// them the median would scale every PSF flux up.
pub fn aperture_correction(
    measurements: &[Measurement],
    min_snr: f64,
    isolation: f64,
) -> ApertureCorrection {
    let neighbours = measure::NeighbourIndex::new(measurements.iter().map(|m| m.x));
    let candidates: Vec<(usize, f64)> = measurements
        .iter()
        .enumerate()
        .filter(|(_, m)| m.flags == 0 && m.snr() >= min_snr && m.flux_psf > 0.0)
        .filter(|(_, m)| (m.flux_aper / m.flux_psf).is_finite())
        .filter(|&(i, m)| {
            !neighbours.any_within(
                i,
                (m.x, m.y),
                isolation,
                |j| (measurements[j].x, measurements[j].y),
                |j| measurements[j].flux_aper > 0.01 * m.flux_aper,
            )
        })
        .map(|(i, m)| (i, ((m.ixx + m.iyy) / 2.0).sqrt()))
        .filter(|(_, size)| size.is_finite() && *size > 0.0)
        .collect();
    if candidates.is_empty() {
        return ApertureCorrection {
            factor: 1.0,
            stars: 0,
        };
    }
    let mut ratios: Vec<f64> = measure::stellar_locus(&candidates)
        .iter()
        .map(|&(i, _)| measurements[i].flux_aper / measurements[i].flux_psf)
        .collect();
    let mid = ratios.len() / 2;
    ApertureCorrection {
        factor: *ratios.select_nth_unstable_by(mid, f64::total_cmp).1,
        stars: ratios.len(),
    }
}

/// An aperture correction and the number of stars it is the median of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApertureCorrection {
    /// Factor applied to PSF fluxes and their errors.
    pub factor: f64,
    /// Stars of the locus it was measured on (0: none, factor 1).
    pub stars: usize,
}

/// The reference band of an object from its S/N per band (`None` for a missing band): the
/// first band of `priority` whose S/N is at least `min_snr`, else the band of highest S/N;
/// `None` when no band was measured.
pub fn reference_band(
    bands: &[String],
    snr: &[Option<f64>],
    priority: &[String],
    min_snr: f64,
) -> Option<usize> {
    for want in priority {
        if let Some(k) = bands.iter().position(|b| b == want)
            && snr[k].is_some_and(|s| s >= min_snr)
        {
            return Some(k);
        }
    }
    snr.iter()
        .enumerate()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn peak(band: usize, x: f64, y: f64, significance: f64) -> Peak {
        Peak {
            band,
            x,
            y,
            significance,
        }
    }

    /// Two bands' peaks of the same source merge into one object at their weighted mean; a
    /// source seen in one band only is its own object; a second peak of the same band within
    /// the radius is a separate (blended) object.
    #[test]
    fn peaks_merge_per_object() {
        let peaks = [
            peak(0, 10.0, 10.0, 30.0),
            peak(1, 10.4, 10.0, 10.0),
            peak(1, 50.0, 50.0, 8.0),
            peak(0, 10.0, 10.9, 6.0),
        ];
        let objects = merge_peaks(&peaks, 1.0);
        assert_eq!(objects.len(), 3, "{objects:?}");
        let a = &objects[0];
        assert_eq!(a.peaks.len(), 2);
        assert!(
            (a.x - 10.1).abs() < 1e-12 && (a.y - 10.0).abs() < 1e-12,
            "{a:?}"
        );
        assert!(a.blended && objects[1].blended);
        assert_eq!(objects[1].peaks, vec![peak(0, 10.0, 10.9, 6.0)]);
        assert!(!objects[2].blended);
        assert_eq!(objects[2].peaks[0].band, 1);
    }

    /// Of two neighbouring patches (inner side 100, border 10), exactly one owns every position
    /// on a fine grid across their shared edge.
    #[test]
    fn inner_region_owns_each_position_once() {
        let (size, border) = (100u32, 10u32);
        for k in 0..4000 {
            // Tract coordinate of a pixel centre, across patches 0 and 1 (x), patch 0 (y).
            let t = 80.0 + k as f64 * 0.01;
            let in_0 = in_inner_region(t - 0.5 + 10.0, 50.0, border, size);
            let in_1 = in_inner_region(t - 0.5 + 10.0 - 100.0, 50.0, border, size);
            assert!(in_0 ^ in_1, "tract x {t}: {in_0} {in_1}");
        }
        assert!(!in_inner_region(5.0, 50.0, border, size));
    }

    /// A Gaussian star of known flux on white noise: recentred measurement finds its position,
    /// flux (aperture and aperture-corrected PSF) and second moments σ²; forced measurement off
    /// by a pixel keeps the position given; the star's absence gives a flux consistent with 0.
    #[test]
    fn measurement_of_a_gaussian_star() {
        let (w, h) = (80usize, 80usize);
        let (x0, y0, flux, sigma) = (40.3, 38.7, 50_000.0, 1.5);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut image = vec![0f32; w * h];
        let mut blank = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let r2 = (x as f64 - x0).powi(2) + (y as f64 - y0).powi(2);
                let g = flux / (2.0 * std::f64::consts::PI * sigma * sigma)
                    * (-r2 / (2.0 * sigma * sigma)).exp();
                let n: f64 = rng.sample(StandardNormal);
                image[y * w + x] = (g + 3.0 * n) as f32;
                blank[y * w + x] = (3.0 * n) as f32;
            }
        }
        let variance = vec![9.0f32; w * h];
        let mask = vec![0u32; w * h];
        let fwhm = sigma / FWHM_TO_SIGMA;
        let s = MeasureAt {
            fwhm,
            aperture_radius: 4.0 * fwhm,
            recentre: true,
        };
        let p = prepare(&image, &variance, &mask, (w, h), 1 << 8, 16);
        let m = measure_at(&p, 41.0, 38.0, &s);
        assert_eq!(m.flags, 0, "{m:?}");
        assert!((m.x - x0).hypot(m.y - y0) < 0.02, "{m:?}");
        assert!((m.flux_aper / flux - 1.0).abs() < 0.01, "{m:?}");
        // Aperture error: sqrt(area × 9).
        let area = std::f64::consts::PI * (4.0 * fwhm).powi(2);
        assert!(
            (m.flux_aper_err / (area * 9.0).sqrt() - 1.0).abs() < 0.02,
            "{m:?}"
        );
        assert!((m.flux_psf / flux - 1.0).abs() < 0.01, "{m:?}");
        assert!((m.ixx / (sigma * sigma) - 1.0).abs() < 0.03, "{m:?}");
        assert!(
            (m.iyy / (sigma * sigma) - 1.0).abs() < 0.03 && m.ixy.abs() < 0.05,
            "{m:?}"
        );
        let forced = measure_at(
            &p,
            41.3,
            38.7,
            &MeasureAt {
                recentre: false,
                ..s
            },
        );
        assert_eq!((forced.x, forced.y), (41.3, 38.7));
        assert!(forced.flux_psf < m.flux_psf);
        let empty = prepare(&blank, &variance, &mask, (w, h), 1 << 8, 16);
        let none = measure_at(
            &empty,
            x0,
            y0,
            &MeasureAt {
                recentre: false,
                ..s
            },
        );
        assert!(none.flux_aper.abs() < 4.0 * none.flux_aper_err, "{none:?}");
        assert!(none.flux_psf.abs() < 4.0 * none.flux_psf_err, "{none:?}");
        // Near the edge and on no-data pixels: flagged.
        let mut holed = mask.clone();
        holed[38 * w + 44] = 1 << 8;
        let p2 = prepare(&image, &variance, &holed, (w, h), 1 << 8, 16);
        assert_ne!(measure_at(&p2, x0, y0, &s).flags & flag::BAD_PIXELS, 0);
        assert_ne!(
            measure_at(
                &p,
                2.0,
                40.0,
                &MeasureAt {
                    recentre: false,
                    ..s
                }
            )
            .flags
                & flag::EDGE,
            0
        );
    }

    /// The median ratio of unflagged, bright, isolated measurements of stellar size; 1 without
    /// any.
    #[test]
    fn aperture_correction_is_the_median_ratio() {
        let at = std::cell::Cell::new(0.0);
        let m = |aper: f64, psf: f64, flags: u32| Measurement {
            x: {
                at.set(at.get() + 100.0);
                at.get()
            },
            y: 0.0,
            flux_aper: aper,
            flux_aper_err: 1.0,
            flux_psf: psf,
            flux_psf_err: 1.0,
            ixx: 1.0,
            iyy: 1.0,
            ixy: 0.0,
            flags,
        };
        let list = [
            m(110.0, 100.0, 0),
            m(120.0, 100.0, 0),
            m(105.0, 100.0, 0),
            m(300.0, 100.0, 1),
            m(6.0, 5.0, 0),
        ];
        assert_eq!(aperture_correction(&list, 50.0, 20.0).factor, 1.1);
        assert_eq!(aperture_correction(&list[3..], 50.0, 20.0).factor, 1.0);
        // Galaxies (twice the stars' size, aperture flux 40 % above the PSF flux) outnumber
        // the stars but do not move the correction.
        let galaxy = Measurement {
            ixx: 4.0,
            iyy: 4.0,
            ..m(140.0, 100.0, 0)
        };
        let mut crowd = list.to_vec();
        crowd.extend((0..6).map(|_| Measurement {
            x: m(0.0, 1.0, 0).x,
            ..galaxy
        }));
        assert_eq!(aperture_correction(&crowd, 50.0, 20.0).factor, 1.1);
        // Stars with a neighbour within the isolation radius (aperture flux 50 % above the PSF
        // flux) are left out too: with them the median would be 1.2.
        let mut crowded = list.to_vec();
        for _ in 0..2 {
            let star = m(150.0, 100.0, 0);
            crowded.push(star);
            crowded.push(Measurement {
                x: star.x + 5.0,
                flux_aper: 6.0,
                flux_psf: 5.0,
                ..star
            });
        }
        assert_eq!(aperture_correction(&crowded, 50.0, 20.0).factor, 1.1);
        assert_eq!(aperture_correction(&crowded, 50.0, 1.0).factor, 1.2);
    }

    /// The priority list wins above the threshold; otherwise the highest S/N; missing bands
    /// never.
    #[test]
    fn reference_band_follows_priority_then_snr() {
        let bands: Vec<String> = ["g", "r", "i"].map(String::from).to_vec();
        let priority: Vec<String> = ["i", "r"].map(String::from).to_vec();
        assert_eq!(
            reference_band(
                &bands,
                &[Some(50.0), Some(20.0), Some(12.0)],
                &priority,
                10.0
            ),
            Some(2)
        );
        assert_eq!(
            reference_band(
                &bands,
                &[Some(50.0), Some(20.0), Some(8.0)],
                &priority,
                10.0
            ),
            Some(1)
        );
        assert_eq!(
            reference_band(&bands, &[Some(9.0), Some(3.0), None], &priority, 10.0),
            Some(0)
        );
        assert_eq!(
            reference_band(&bands, &[Some(9.0), None, Some(30.0)], &[], 10.0),
            Some(2)
        );
        assert_eq!(
            reference_band(&bands, &[None, None, None], &priority, 10.0),
            None
        );
    }
}
