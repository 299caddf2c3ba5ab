//! Instrument signature removal: saturation and bad-pixel masks, bias and flat correction,
//! conversion to electrons, and the variance plane.

use crate::image::{Image, mask};

/// Marks pixels of the raw image (ADU) at or above `saturate` as [`mask::SAT`], together with
/// their 8 neighbours (charge spills a little), and non-finite pixels as [`mask::BAD`].
/// Returns the number of saturated pixels (before growing).
///
/// ```
/// use skypipe_optical::image::{Image, mask};
/// let raw = Image::from_vec(3, 3, vec![0.0, 0.0, 0.0, 0.0, 70000.0, 0.0, 0.0, 0.0, f32::NAN]);
/// let mut m = Image::filled(3, 3, 0u32);
/// assert_eq!(skypipe_optical::isr::mask_saturated_and_bad(&raw, 65000.0, &mut m), 1);
/// assert!(m.data.iter().all(|v| v & mask::SAT != 0));
/// assert_ne!(m.get(2, 2) & mask::BAD, 0);
/// ```
pub fn mask_saturated_and_bad(raw: &Image<f32>, saturate: f32, m: &mut Image<u32>) -> usize {
    debug_assert_eq!((raw.width, raw.height), (m.width, m.height));
    let (w, h) = (raw.width, raw.height);
    let mut count = 0;
    for y in 0..h {
        for x in 0..w {
            let v = raw.get(x, y);
            if !v.is_finite() {
                m.data[y * w + x] |= mask::BAD;
            } else if v >= saturate {
                count += 1;
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        m.data[yy * w + xx] |= mask::SAT;
                    }
                }
            }
        }
    }
    count
}

/// Bias subtraction, flat division and conversion from ADU to electrons, in place:
/// `out = (raw - bias) / flat * gain`. Pixels whose flat is not finite and positive, or that are
/// not finite, are set to 0 and marked [`mask::BAD`].
pub fn bias_flat_gain(
    img: &mut Image<f32>,
    bias: Option<&Image<f32>>,
    flat: Option<&Image<f32>>,
    gain: f32,
    m: &mut Image<u32>,
) {
    for i in 0..img.data.len() {
        let mut v = img.data[i];
        if let Some(b) = bias {
            v -= b.data[i];
        }
        if let Some(f) = flat {
            let fv = f.data[i];
            if fv.is_finite() && fv > 0.0 {
                v /= fv;
            } else {
                v = f32::NAN;
            }
        }
        v *= gain;
        if v.is_finite() {
            img.data[i] = v;
        } else {
            img.data[i] = 0.0;
            m.data[i] |= mask::BAD;
        }
    }
}

/// The variance plane in e-², from the calibrated image in electrons (sky included): Poisson
/// noise of the collected electrons plus read noise, both divided by the flat as the image was:
/// `var = max(img, 0) / flat + (read_noise / flat)²`. Bad pixels get the median variance.
pub fn variance_plane(
    img: &Image<f32>,
    flat: Option<&Image<f32>>,
    read_noise_e: f32,
    m: &Image<u32>,
) -> Image<f32> {
    let rn2 = read_noise_e * read_noise_e;
    let mut var = Image::filled(img.width, img.height, 0.0f32);
    for i in 0..img.data.len() {
        let f = flat.map_or(1.0, |f| f.data[i]);
        let f = if f.is_finite() && f > 0.0 { f } else { 1.0 };
        var.data[i] = img.data[i].max(0.0) / f + rn2 / (f * f);
    }
    if m.data.iter().all(|mm| mm & mask::BAD == 0) {
        return var;
    }
    let mut good: Vec<f32> = var
        .data
        .iter()
        .zip(&m.data)
        .filter(|(_, mm)| *mm & mask::BAD == 0)
        .map(|(v, _)| *v)
        .collect();
    let fill = if good.is_empty() {
        rn2.max(1.0)
    } else {
        let mid = good.len() / 2;
        *good.select_nth_unstable_by(mid, f32::total_cmp).1
    };
    for (v, mm) in var.data.iter_mut().zip(&m.data) {
        if mm & mask::BAD != 0 {
            *v = fill;
        }
    }
    var
}

/// Marks the pixels within `edge` pixels of the boundary as [`mask::EDGE`].
pub fn mask_edges(m: &mut Image<u32>, edge: usize) {
    let (w, h) = (m.width, m.height);
    for y in 0..h {
        for x in 0..w {
            if x < edge || y < edge || x + edge >= w || y + edge >= h {
                m.data[y * w + x] |= mask::EDGE;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_flat_gain_inverts_the_instrument() {
        // Known values: raw = bias + flat * signal / gain.
        let signal = [100.0f32, 2000.0, 0.0, 55.5];
        let bias = Image::from_vec(2, 2, vec![1000.0, 1010.0, 990.0, 1003.0]);
        let flat = Image::from_vec(2, 2, vec![1.0, 1.1, 0.9, 1.02]);
        let gain = 2.5;
        let raw: Vec<f32> = (0..4)
            .map(|i| bias.data[i] + flat.data[i] * signal[i] / gain)
            .collect();
        let mut img = Image::from_vec(2, 2, raw);
        let mut m = Image::filled(2, 2, 0);
        bias_flat_gain(&mut img, Some(&bias), Some(&flat), gain, &mut m);
        for (got, want) in img.data.iter().zip(signal) {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
        assert!(m.data.iter().all(|&v| v == 0));
    }

    #[test]
    fn zero_flat_and_nan_become_bad() {
        let mut img = Image::from_vec(3, 1, vec![5.0, f32::NAN, 7.0]);
        let flat = Image::from_vec(3, 1, vec![1.0, 1.0, 0.0]);
        let mut m = Image::filled(3, 1, 0);
        bias_flat_gain(&mut img, None, Some(&flat), 1.0, &mut m);
        assert_eq!(img.data, vec![5.0, 0.0, 0.0]);
        assert_eq!(m.data, vec![0, mask::BAD, mask::BAD]);
    }

    #[test]
    fn variance_is_poisson_plus_read_noise() {
        let img = Image::from_vec(3, 1, vec![400.0, -10.0, 100.0]);
        let flat = Image::from_vec(3, 1, vec![1.0, 1.0, 2.0]);
        let m = Image::filled(3, 1, 0);
        let v = variance_plane(&img, Some(&flat), 5.0, &m);
        assert_eq!(v.data, vec![425.0, 25.0, 50.0 + 6.25]);
    }

    #[test]
    fn saturation_grows_by_one_pixel() {
        let mut raw = Image::filled(5, 5, 10.0f32);
        raw.set(0, 0, 100.0);
        let mut m = Image::filled(5, 5, 0);
        assert_eq!(mask_saturated_and_bad(&raw, 100.0, &mut m), 1);
        let sat: usize = m.data.iter().filter(|&&v| v & mask::SAT != 0).count();
        assert_eq!(sat, 4);
        mask_edges(&mut m, 1);
        assert_eq!(m.get(2, 2), 0);
        assert_ne!(m.get(4, 2) & mask::EDGE, 0);
    }
}
