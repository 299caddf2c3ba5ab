//! Mollweide quicklook images of full-sky maps, oriented as healpy's `mollview`.
//!
//! [`image_to_sky`] is the inverse Mollweide projection from a position in the image to a sky
//! direction; [`render`] samples a map (any `Fn(θ, φ) -> Option<f64>`, `None` for unseen) at
//! every image pixel inside the ellipse, fixes a colour scale ([`Scale`]) and returns an RGB8
//! [`Quicklook`] with a colour bar beneath the map. [`labelled`] turns it into the published
//! figure: a title above, the colour bar with tick labels at its minimum, middle and maximum and
//! the unit beneath (text from [`crate::figure`]), values shown in μK or mK where a map in kelvin
//! is small ([`display_unit`]). Encoding it (e.g. as PNG) is left to the I/O layer.
//!
//! Orientation, as `healpy.mollview`: north (`θ = 0`) up, longitude `φ = 0` at the centre,
//! longitude increasing to the **left** (the sky seen from inside the sphere).
//!
//! Because the Mollweide projection is equal-area, image pixels inside the ellipse sample the
//! sphere uniformly, so percentiles over them are sky-area percentiles.
//!
//! ```
//! use skypipe_core::quicklook::{render, Scale};
//! // A dipole along the z axis: bright at the north pole.
//! let ql = render(64, Scale::default(), |theta, _phi| Some(theta.cos())).unwrap();
//! assert_eq!((ql.width, ql.rgb.len()), (64, 64 * ql.height as usize * 3));
//! assert!(ql.min < 0.0 && ql.max > 0.0);
//! ```

use std::f64::consts::{FRAC_PI_2, PI};

use crate::figure::{self, Canvas};

/// Smallest accepted image width (pixels).
pub const MIN_WIDTH: u32 = 16;
/// Largest accepted image width (pixels); rendering it takes about 0.8 GB (samples and RGB).
pub const MAX_WIDTH: u32 = 8192;
/// Colour of pixels inside the ellipse where the map is unseen.
pub const UNSEEN_RGB: [u8; 3] = [150, 150, 150];
/// Colour of the background outside the ellipse and around the colour bar.
pub const BACKGROUND_RGB: [u8; 3] = [255, 255, 255];

/// Colour map control points `(position, sRGB)`, interpolated linearly in sRGB. Chosen for this
/// module: indigo → blue → teal → green → yellow, with CIE lightness L* rising roughly evenly
/// (about 10, 33, 53, 72, 91) so that brighter always means larger; a unit test checks that L*
/// increases along the whole scale (up to 8-bit rounding).
const COLOUR_STOPS: [(f64, [u8; 3]); 5] = [
    (0.0, [30, 16, 72]),
    (0.25, [42, 74, 142]),
    (0.5, [28, 140, 140]),
    (0.75, [120, 196, 84]),
    (1.0, [250, 232, 90]),
];

/// How the colour scale's limits are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Limits at these percentiles (in `[0, 100]`, `low < high`) of the seen values sampled at
    /// the image pixels; robust against a few extreme pixels.
    Percentile {
        /// Lower percentile.
        low: f64,
        /// Upper percentile.
        high: f64,
    },
    /// Explicit limits (finite, `min < max`), e.g. to compare several maps on one scale.
    Fixed {
        /// Value drawn with the bottom colour (and everything below it).
        min: f64,
        /// Value drawn with the top colour (and everything above it).
        max: f64,
    },
}

impl Default for Scale {
    /// The 2nd and 98th percentiles.
    fn default() -> Self {
        Scale::Percentile {
            low: 2.0,
            high: 98.0,
        }
    }
}

/// Why a quicklook could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuicklookError {
    /// The width is outside [`MIN_WIDTH`]`..=`[`MAX_WIDTH`].
    #[error("quicklook width {width} is outside [{MIN_WIDTH}, {MAX_WIDTH}]")]
    Width {
        /// The requested width.
        width: u32,
    },
    /// [`Scale::Percentile`] with percentiles not in `[0, 100]` or not increasing.
    #[error("percentiles {low}, {high}: need 0 <= low < high <= 100")]
    Percentiles {
        /// Lower percentile.
        low: f64,
        /// Upper percentile.
        high: f64,
    },
    /// [`Scale::Fixed`] with non-finite or non-increasing limits.
    #[error("colour limits {min}, {max}: need finite min < max")]
    Limits {
        /// Lower limit.
        min: f64,
        /// Upper limit.
        max: f64,
    },
    /// [`Scale::Percentile`] on a map with no seen (finite) value at any image pixel.
    #[error("no seen pixel to take percentiles of")]
    NothingSeen,
}

/// A rendered quicklook: the map in rows `0..width / 2`, the colour bar below it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quicklook {
    /// Image width (pixels).
    pub width: u32,
    /// Image height (pixels): the map's `width / 2` rows plus the colour-bar strip.
    pub height: u32,
    /// Pixels row by row from the top, 3 bytes (R, G, B) each.
    pub rgb: Vec<u8>,
    /// Value at the bottom of the colour scale.
    pub min: f64,
    /// Value at the top of the colour scale.
    pub max: f64,
}

/// The inverse Mollweide projection of an image position, in `mollview` orientation.
///
/// Input: `(x, y)` in pixels from the top-left corner of a `width × height` map area (the
/// centre of pixel `(column i, row j)` is `(i + 0.5, j + 0.5)`); the ellipse fills the area.
/// Output: `(θ, φ)` in radians, colatitude `θ ∈ [0, π]` and longitude `φ ∈ [−π, π]` (positive
/// left of the centre), or `None` outside the ellipse (its boundary counts as inside).
///
/// ```
/// use skypipe_core::quicklook::image_to_sky;
/// use std::f64::consts::FRAC_PI_2;
/// assert_eq!(image_to_sky(100.0, 50.0, 200, 100), Some((FRAC_PI_2, 0.0)));
/// assert_eq!(image_to_sky(100.0, 0.0, 200, 100), Some((0.0, 0.0))); // north pole
/// assert_eq!(image_to_sky(1.0, 1.0, 200, 100), None); // a corner
/// ```
pub fn image_to_sky(x: f64, y: f64, width: u32, height: u32) -> Option<(f64, f64)> {
    let (half_w, half_h) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
    // Normalised ellipse coordinates: u to the right, v up, the ellipse is u² + v² ≤ 1.
    let u = (x - half_w) / half_w;
    let v = (half_h - y) / half_h;
    // Written so that NaN positions are outside too.
    let inside = u * u + v * v <= 1.0;
    if !inside {
        return None;
    }
    // Mollweide: X = 2√2 λ cos t / π, Y = √2 sin t with 2t + sin 2t = π sin(lat); here
    // u = X / (2√2) and v = Y / √2.
    let t = v.clamp(-1.0, 1.0).asin();
    let lat = ((2.0 * t + (2.0 * t).sin()) / PI).clamp(-1.0, 1.0).asin();
    let cos_t = t.cos();
    // At the poles (cos t = 0) only u = 0 is inside, and the longitude is arbitrary.
    let lon = if cos_t > 0.0 {
        (PI * u / cos_t).clamp(-PI, PI)
    } else {
        0.0
    };
    // East (increasing φ) is to the left; `0.0 - lon` keeps φ = +0 at the centre.
    Some(((FRAC_PI_2 - lat).clamp(0.0, PI), 0.0 - lon))
}

/// Renders `map` into a Mollweide quicklook `width` pixels wide.
///
/// The map is sampled once at the centre of each of the `width × width / 2` map pixels inside
/// the ellipse, with `map(θ, φ)` as in [`image_to_sky`]; `None` or a non-finite value is drawn
/// grey ([`UNSEEN_RGB`]), so a caller holding healpy-style maps returns `None` for
/// [`crate::binning::UNSEEN`]. Values are coloured on a scale from `min` to `max` fixed by
/// `scale` (values beyond are clamped; a constant map gets the middle colour). The background
/// is white ([`BACKGROUND_RGB`]). Under the map, a strip holds the colour bar, spanning the
/// central 80 % of the width from `min` (left) to `max` (right).
///
/// Errors: a width outside [`MIN_WIDTH`]`..=`[`MAX_WIDTH`], an invalid `scale`, or percentile
/// limits on a map with nothing seen.
pub fn render(
    width: u32,
    scale: Scale,
    map: impl Fn(f64, f64) -> Option<f64>,
) -> Result<Quicklook, QuicklookError> {
    if !(MIN_WIDTH..=MAX_WIDTH).contains(&width) {
        return Err(QuicklookError::Width { width });
    }
    match scale {
        Scale::Percentile { low, high } if !(0.0 <= low && low < high && high <= 100.0) => {
            return Err(QuicklookError::Percentiles { low, high });
        }
        Scale::Fixed { min, max } if !(min.is_finite() && max.is_finite() && min < max) => {
            return Err(QuicklookError::Limits { min, max });
        }
        _ => {}
    }
    let map_height = width / 2;
    let (w, mh) = (width as usize, map_height as usize);

    // Sample once; keep None for outside, Some(None) for unseen.
    let mut samples: Vec<Option<Option<f64>>> = Vec::with_capacity(w * mh);
    for j in 0..mh {
        for i in 0..w {
            let sample = image_to_sky(i as f64 + 0.5, j as f64 + 0.5, width, map_height)
                .map(|(theta, phi)| map(theta, phi).filter(|v| v.is_finite()));
            samples.push(sample);
        }
    }

    let (min, max) = match scale {
        Scale::Fixed { min, max } => (min, max),
        Scale::Percentile { low, high } => {
            let mut seen: Vec<f64> = samples.iter().filter_map(|s| s.flatten()).collect();
            if seen.is_empty() {
                return Err(QuicklookError::NothingSeen);
            }
            seen.sort_unstable_by(f64::total_cmp);
            (percentile(&seen, low), percentile(&seen, high))
        }
    };

    // Colour-bar strip: a gap, the bar, a gap.
    let gap = bar_gap(width) as usize;
    let bar = figure::bar_thickness(width) as usize;
    let height = mh + 2 * gap + bar;
    let mut rgb = Vec::with_capacity(w * height * 3);
    for s in &samples {
        let colour = match s {
            None => BACKGROUND_RGB,
            Some(None) => UNSEEN_RGB,
            Some(Some(v)) => colour_at(normalise(*v, min, max)),
        };
        rgb.extend_from_slice(&colour);
    }
    let (x0, x1) = figure::bar_columns(width);
    let (x0, x1) = (x0 as usize, x1 as usize);
    let mut bar_row = Vec::with_capacity(w * 3);
    for i in 0..w {
        let colour = if (x0..x1).contains(&i) {
            colour_at(figure::bar_position((i - x0) as u32, (x1 - x0) as u32))
        } else {
            BACKGROUND_RGB
        };
        bar_row.extend_from_slice(&colour);
    }
    let blank = BACKGROUND_RGB.repeat(w * gap);
    rgb.extend_from_slice(&blank);
    for _ in 0..bar {
        rgb.extend_from_slice(&bar_row);
    }
    rgb.extend_from_slice(&blank);
    debug_assert_eq!(rgb.len(), w * height * 3);
    Ok(Quicklook {
        width,
        height: height as u32,
        rgb,
        min,
        max,
    })
}

/// Rows between the map and its colour bar (and below the bar) in a quicklook `width` wide.
fn bar_gap(width: u32) -> u32 {
    (width / 64).max(1)
}

/// The factor and unit to show values of a map in `unit` spanning `[min, max]` with: a unit
/// starting with `K` (`K`, `K_CMB`, `K_RJ`) becomes `μK…` when every value is below 1 mK in
/// magnitude and `mK…` when below 1 K; any other unit is kept, with factor 1.
///
/// ```
/// use skypipe_core::quicklook::display_unit;
/// assert_eq!(display_unit(-2e-4, 3e-4, "K_CMB"), (1e6, "μK_CMB".to_string()));
/// assert_eq!(display_unit(-0.2, 0.5, "K"), (1e3, "mK".to_string()));
/// assert_eq!(display_unit(0.0, 3.0, "K_CMB"), (1.0, "K_CMB".to_string()));
/// assert_eq!(display_unit(0.0, 1e-6, "counts"), (1.0, "counts".to_string()));
/// ```
pub fn display_unit(min: f64, max: f64, unit: &str) -> (f64, String) {
    let largest = min.abs().max(max.abs());
    if !unit.starts_with('K') || !largest.is_finite() {
        return (1.0, unit.to_string());
    }
    if largest < 1e-3 {
        (1e6, format!("μ{unit}"))
    } else if largest < 1.0 {
        (1e3, format!("m{unit}"))
    } else {
        (1.0, unit.to_string())
    }
}

/// The published figure of a quicklook: `title` centred above the map, then the map, then its
/// colour bar (the same colours and columns as in `ql`) with tick marks and labels at `min`,
/// the middle and `max` (3 significant digits, [`figure::format_value`]) and the unit
/// beneath, both in the scale [`display_unit`] picks for `unit`.
///
/// ```
/// use skypipe_core::quicklook::{labelled, render, Scale};
/// let ql = render(400, Scale::Fixed { min: -1e-4, max: 1e-4 }, |t, _| Some(t.cos())).unwrap();
/// let figure = labelled(&ql, "mapmake binned I (galactic, nside 64)", "K_CMB");
/// assert_eq!(figure.width, 400);
/// assert!(figure.height > ql.height);
/// ```
pub fn labelled(ql: &Quicklook, title: &str, unit: &str) -> Canvas {
    let (factor, shown) = display_unit(ql.min, ql.max, unit);
    let ticks = [
        (0.0, figure::format_value(ql.min * factor)),
        (0.5, figure::format_value((ql.min + ql.max) / 2.0 * factor)),
        (1.0, figure::format_value(ql.max * factor)),
    ];
    let map_rows = (ql.width / 2 + bar_gap(ql.width)) as usize;
    let map = Canvas::from_rgb(
        ql.width,
        map_rows as u32,
        ql.rgb[..map_rows * ql.width as usize * 3].to_vec(),
    );
    figure::stack(&[
        figure::title_strip(ql.width, title),
        map,
        figure::colour_bar(ql.width, colour_at, &ticks, &shown),
    ])
}

/// The `p`-th percentile of sorted, non-empty `v`, interpolating linearly between order
/// statistics (numpy's default "linear" method).
fn percentile(v: &[f64], p: f64) -> f64 {
    let pos = p / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let frac = pos - lo as f64;
    v[lo] + frac * (v[hi] - v[lo])
}

/// Position of `v` on the scale `[min, max]`, clamped to `[0, 1]`; 0.5 for a degenerate scale.
fn normalise(v: f64, min: f64, max: f64) -> f64 {
    if max > min {
        ((v - min) / (max - min)).clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// The colour map at `s ∈ [0, 1]`.
fn colour_at(s: f64) -> [u8; 3] {
    debug_assert!((0.0..=1.0).contains(&s));
    let k = COLOUR_STOPS
        .windows(2)
        .position(|w| s <= w[1].0)
        .unwrap_or(COLOUR_STOPS.len() - 2);
    let ((s0, c0), (s1, c1)) = (COLOUR_STOPS[k], COLOUR_STOPS[k + 1]);
    let f = (s - s0) / (s1 - s0);
    std::array::from_fn(|ch| {
        let (a, b) = (f64::from(c0[ch]), f64::from(c1[ch]));
        (a + f * (b - a)).round() as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATOL: f64 = 1e-9;

    /// Forward Mollweide in `mollview` orientation, the reference for the inverse: `(θ, φ)` →
    /// image position `(x, y)` in a `width × height` area. Solves `2t + sin 2t = π sin(lat)` by
    /// Newton's method.
    fn sky_to_image(theta: f64, phi: f64, width: u32, height: u32) -> (f64, f64) {
        let lat = FRAC_PI_2 - theta;
        let target = PI * lat.sin();
        let mut t = lat;
        for _ in 0..100 {
            let f = 2.0 * t + (2.0 * t).sin() - target;
            let df = 2.0 + 2.0 * (2.0 * t).cos();
            if df.abs() < 1e-300 {
                break;
            }
            let step = f / df;
            t -= step;
            if step.abs() < 1e-15 {
                break;
            }
        }
        let u = -phi * t.cos() / PI;
        let v = t.sin();
        let (half_w, half_h) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
        (half_w + u * half_w, half_h - v * half_h)
    }

    /// CIE L* of an sRGB colour.
    fn lightness(c: [u8; 3]) -> f64 {
        let lin = |x: u8| {
            let s = f64::from(x) / 255.0;
            if s <= 0.04045 {
                s / 12.92
            } else {
                ((s + 0.055) / 1.055).powf(2.4)
            }
        };
        let y = 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
        if y > 216.0 / 24389.0 {
            116.0 * y.cbrt() - 16.0
        } else {
            y * 24389.0 / 27.0
        }
    }

    fn pixel(ql: &Quicklook, col: usize, row: usize) -> [u8; 3] {
        let k = (row * ql.width as usize + col) * 3;
        [ql.rgb[k], ql.rgb[k + 1], ql.rgb[k + 2]]
    }

    #[test]
    fn the_centre_is_on_the_equator_at_zero_longitude() {
        for (w, h) in [(200, 100), (201, 100), (64, 32)] {
            let (theta, phi) = image_to_sky(f64::from(w) / 2.0, f64::from(h) / 2.0, w, h).unwrap();
            assert!(
                (theta - FRAC_PI_2).abs() < 1e-15 && phi == 0.0,
                "{theta} {phi}"
            );
        }
    }

    #[test]
    fn the_central_column_reaches_both_poles() {
        let (theta, phi) = image_to_sky(100.0, 0.0, 200, 100).unwrap();
        assert_eq!((theta, phi), (0.0, 0.0));
        let (theta, _) = image_to_sky(100.0, 100.0, 200, 100).unwrap();
        assert_eq!(theta, PI);
        // Just inside the top and bottom rows of pixel centres: close to the poles.
        let (theta, _) = image_to_sky(100.0, 0.5, 200, 100).unwrap();
        assert!(theta > 0.0 && theta < 0.2, "{theta}");
        let (theta, _) = image_to_sky(100.0, 99.5, 200, 100).unwrap();
        assert!(theta < PI && theta > PI - 0.2, "{theta}");
        // Colatitude grows monotonically down the central column.
        let thetas: Vec<f64> = (0..=100)
            .map(|j| image_to_sky(100.0, f64::from(j), 200, 100).unwrap().0)
            .collect();
        assert!(thetas.windows(2).all(|p| p[0] < p[1]));
    }

    #[test]
    fn longitude_increases_to_the_left() {
        let (theta, phi) = image_to_sky(50.0, 50.0, 200, 100).unwrap();
        assert!((theta - FRAC_PI_2).abs() < 1e-15);
        assert!((phi - FRAC_PI_2).abs() < 1e-15, "{phi}");
        let (_, phi) = image_to_sky(150.0, 50.0, 200, 100).unwrap();
        assert!((phi + FRAC_PI_2).abs() < 1e-15, "{phi}");
        // The left and right ends of the equator are φ = ±π (the same meridian).
        assert_eq!(image_to_sky(0.0, 50.0, 200, 100), Some((FRAC_PI_2, PI)));
        assert_eq!(image_to_sky(200.0, 50.0, 200, 100), Some((FRAC_PI_2, -PI)));
    }

    #[test]
    fn the_ellipse_boundary() {
        let (w, h) = (400u32, 200u32);
        for k in 0..360 {
            let a = f64::from(k).to_radians();
            let point = |r: f64| (200.0 + r * 200.0 * a.cos(), 100.0 - r * 100.0 * a.sin());
            let (x, y) = point(1.0 - 1e-9);
            let (theta, phi) = image_to_sky(x, y, w, h).expect("just inside");
            // On the boundary, |φ| = π except at the poles.
            if a.sin().abs() < 0.999 {
                assert!((phi.abs() - PI).abs() < 1e-3, "{k}: φ = {phi}");
            }
            assert!((0.0..=PI).contains(&theta));
            let (x, y) = point(1.0 + 1e-9);
            assert_eq!(image_to_sky(x, y, w, h), None, "{k}: just outside");
        }
        assert_eq!(image_to_sky(0.0, 0.0, w, h), None);
        assert_eq!(image_to_sky(-1.0, 100.0, w, h), None);
        assert_eq!(image_to_sky(f64::NAN, 100.0, w, h), None);
    }

    #[test]
    fn inverse_then_forward_is_the_identity() {
        let (w, h) = (360u32, 180u32);
        let mut checked = 0;
        for j in 0..h {
            for i in 0..w {
                let (x, y) = (f64::from(i) + 0.5, f64::from(j) + 0.5);
                if let Some((theta, phi)) = image_to_sky(x, y, w, h) {
                    let (x2, y2) = sky_to_image(theta, phi, w, h);
                    assert!(
                        (x - x2).abs() < ATOL && (y - y2).abs() < ATOL,
                        "({x}, {y}) → ({theta}, {phi}) → ({x2}, {y2})"
                    );
                    checked += 1;
                }
            }
        }
        // π/4 of the area is inside the ellipse.
        let frac = f64::from(checked) / f64::from(w * h);
        assert!((frac - PI / 4.0).abs() < 0.01, "{frac}");
    }

    #[test]
    fn forward_then_inverse_is_the_identity() {
        for k in 1..40 {
            for l in -40..=40 {
                let (theta, phi) = (f64::from(k) * PI / 40.0, f64::from(l) * PI / 41.0);
                let (x, y) = sky_to_image(theta, phi, 800, 400);
                let (t2, p2) = image_to_sky(x, y, 800, 400).unwrap();
                assert!(
                    (theta - t2).abs() < ATOL && (phi - p2).abs() < ATOL,
                    "({theta}, {phi}) → ({t2}, {p2})"
                );
            }
        }
    }

    #[test]
    fn the_colour_map_brightens_monotonically() {
        let l: Vec<f64> = (0..=1000)
            .map(|k| lightness(colour_at(f64::from(k) / 1000.0)))
            .collect();
        // Rounding to 8-bit channels may dip L* by a few hundredths where one channel falls
        // while another rises; a just-noticeable difference is about 1.
        if let Some(k) = (1..l.len()).find(|&k| l[k] < l[k - 1] - 0.1) {
            panic!(
                "L* falls from {} to {} at s = {}",
                l[k - 1],
                l[k],
                k as f64 / 1000.0
            );
        }
        assert!(l[0] < 15.0 && l[1000] > 85.0);
        assert_eq!(colour_at(0.0), COLOUR_STOPS[0].1);
        assert_eq!(colour_at(1.0), COLOUR_STOPS[4].1);
        for c in [UNSEEN_RGB, BACKGROUND_RGB] {
            assert!((0..=1000).all(|k| colour_at(f64::from(k) / 1000.0) != c));
        }
    }

    #[test]
    fn cos_theta_is_brightest_at_the_top() {
        let ql = render(128, Scale::default(), |theta, _| Some(theta.cos())).unwrap();
        let (w, mh) = (128usize, 64usize);
        assert_eq!(ql.height as usize, mh + 2 * 2 + 4);
        assert_eq!(ql.rgb.len(), w * ql.height as usize * 3);
        // Percentiles of cos θ sampled uniformly on the sphere: 2·0.02 − 1 and 2·0.98 − 1.
        assert!((ql.min + 0.96).abs() < 0.02 && (ql.max - 0.96).abs() < 0.02);
        assert_eq!(pixel(&ql, w / 2, 0), COLOUR_STOPS[4].1);
        assert_eq!(pixel(&ql, w / 2, 1), COLOUR_STOPS[4].1);
        assert_eq!(pixel(&ql, w / 2, mh - 1), COLOUR_STOPS[0].1);
        let centre = pixel(&ql, w / 2, mh / 2);
        assert!((lightness(centre) - lightness(colour_at(0.5))).abs() < 3.0);
        assert_eq!(pixel(&ql, 0, 0), BACKGROUND_RGB);
        // Top to bottom of the central column, the colours darken.
        let l: Vec<f64> = (0..mh).map(|j| lightness(pixel(&ql, w / 2, j))).collect();
        assert!(l.windows(2).all(|p| p[1] <= p[0] + 0.1), "{l:?}");
    }

    #[test]
    fn unseen_is_grey_and_the_colour_bar_spans_the_scale() {
        // Unseen in the western (right-hand) hemisphere.
        let ql = render(
            64,
            Scale::Fixed {
                min: -1.0,
                max: 1.0,
            },
            |_, phi| (phi >= 0.0).then_some(phi.sin()),
        )
        .unwrap();
        assert_eq!((ql.min, ql.max), (-1.0, 1.0));
        assert_eq!(pixel(&ql, 48, 16), UNSEEN_RGB);
        assert_ne!(pixel(&ql, 16, 16), UNSEEN_RGB);
        let bar_row = 32 + 1 + 1;
        assert_eq!(pixel(&ql, 6, bar_row), COLOUR_STOPS[0].1);
        assert_eq!(pixel(&ql, 57, bar_row), COLOUR_STOPS[4].1);
        assert_eq!(pixel(&ql, 5, bar_row), BACKGROUND_RGB);
        assert_eq!(pixel(&ql, 58, bar_row), BACKGROUND_RGB);
        assert_eq!(pixel(&ql, 32, 32), BACKGROUND_RGB);
        assert_eq!(pixel(&ql, 32, ql.height as usize - 1), BACKGROUND_RGB);
    }

    #[test]
    fn constant_and_non_finite_maps() {
        let ql = render(32, Scale::default(), |_, _| Some(3.0)).unwrap();
        assert_eq!((ql.min, ql.max), (3.0, 3.0));
        assert_eq!(pixel(&ql, 16, 8), colour_at(0.5));
        let ql = render(32, Scale::default(), |t, _| {
            Some(if t < 1.0 { f64::NAN } else { 1.0 })
        })
        .unwrap();
        assert_eq!(pixel(&ql, 16, 0), UNSEEN_RGB);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 98, 100]) = [1, 1.75, 2.5, 3.94, 4].
        let v = [1.0, 2.0, 3.0, 4.0];
        for (p, want) in [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (98.0, 3.94),
            (100.0, 4.0),
        ] {
            assert!((percentile(&v, p) - want).abs() < 1e-12, "{p}");
        }
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
    }

    #[test]
    fn the_labelled_figure_has_title_map_and_labelled_bar() {
        let (min, max) = (-1.234e-4, 2.5e-4);
        let ql = render(800, Scale::Fixed { min, max }, |t, _| Some(t.cos())).unwrap();
        let fig = labelled(&ql, "mapmake binned I", "K_CMB");
        let title = figure::title_strip(800, "mapmake binned I");
        let map_rows = 400 + bar_gap(800);
        // The tick labels are the limits in μK with 3 significant digits.
        let ticks = [
            (0.0, "-123".to_string()),
            (0.5, "63.3".to_string()),
            (1.0, "250".to_string()),
        ];
        let bar = figure::colour_bar(800, colour_at, &ticks, "μK_CMB");
        assert_eq!(fig.height, title.height + map_rows + bar.height);
        let row_bytes = 800 * 3;
        let (t, m) = (title.height as usize, map_rows as usize);
        assert_eq!(fig.rgb[..t * row_bytes], title.rgb[..]);
        assert_eq!(
            fig.rgb[t * row_bytes..(t + m) * row_bytes],
            ql.rgb[..m * row_bytes]
        );
        assert_eq!(fig.rgb[(t + m) * row_bytes..], bar.rgb[..]);
        // The bar's colours are the colour map's, from min to max, brightening monotonically.
        let (left, right) = figure::bar_columns(800);
        let y = (t + m) as u32;
        assert_eq!(fig.pixel(left, y), Some(COLOUR_STOPS[0].1));
        assert_eq!(fig.pixel(right - 1, y), Some(COLOUR_STOPS[4].1));
        let l: Vec<f64> = (left..right)
            .map(|x| lightness(fig.pixel(x, y).unwrap()))
            .collect();
        assert!(l.windows(2).all(|p| p[1] >= p[0] - 0.1));
        // And the same as the unlabelled quicklook's bar.
        let ql_bar_row = (400 + bar_gap(800)) as usize;
        for x in left..right {
            assert_eq!(fig.pixel(x, y), Some(pixel(&ql, x as usize, ql_bar_row)));
        }
    }

    #[test]
    fn refusals() {
        let any = |_: f64, _: f64| Some(1.0);
        assert_eq!(
            render(15, Scale::default(), any),
            Err(QuicklookError::Width { width: 15 })
        );
        assert_eq!(
            render(MAX_WIDTH + 1, Scale::default(), any),
            Err(QuicklookError::Width {
                width: MAX_WIDTH + 1
            })
        );
        for (low, high) in [(-1.0, 50.0), (50.0, 50.0), (2.0, 101.0), (f64::NAN, 98.0)] {
            let e = render(32, Scale::Percentile { low, high }, any).unwrap_err();
            assert!(matches!(e, QuicklookError::Percentiles { .. }), "{e}");
        }
        for (min, max) in [(1.0, 1.0), (2.0, 1.0), (f64::NEG_INFINITY, 0.0)] {
            let e = render(32, Scale::Fixed { min, max }, any).unwrap_err();
            assert!(matches!(e, QuicklookError::Limits { .. }), "{e}");
        }
        assert_eq!(
            render(32, Scale::default(), |_, _| None),
            Err(QuicklookError::NothingSeen)
        );
        // With fixed limits, an empty map is a valid (all grey) picture.
        let ql = render(32, Scale::Fixed { min: 0.0, max: 1.0 }, |_, _| None).unwrap();
        assert_eq!(pixel(&ql, 16, 8), UNSEEN_RGB);
    }
}
