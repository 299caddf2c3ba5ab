//! Text and colour-bar labels on RGB8 images, for the quicklook PNGs. Pure: no I/O.
//!
//! Glyphs are the public-domain 8×8 bitmaps of the `font8x8` crate (ASCII, Latin-1 and Greek,
//! so `μK` draws), scaled by whole pixels: the text is embedded in the binary, with no font file
//! to find at run time. [`Canvas`] is an RGB8 image that text and rectangles are drawn on;
//! [`title_strip`], [`colour_bar`] and [`stack`] build the parts of a labelled figure:
//! a title above, the picture, a colour bar with tick labels at its ends and middle and the
//! unit beneath.
//!
//! ```
//! use skypipe_core::figure::{format_value, title_strip};
//! let strip = title_strip(320, "mapmake binned I");
//! assert_eq!(strip.width, 320);
//! assert_eq!(format_value(-0.000123456), "-0.000123");
//! ```

use font8x8::{BASIC_FONTS, GREEK_FONTS, LATIN_FONTS, UnicodeFonts};

/// Side of one unscaled glyph cell (pixels).
pub const GLYPH_SIZE: u32 = 8;
/// Colour of text, tick marks and the colour bar's outline.
pub const INK_RGB: [u8; 3] = [0, 0, 0];
/// Colour of the figure's background.
pub const PAPER_RGB: [u8; 3] = [255, 255, 255];

/// An RGB8 image, row by row from the top, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// Width (pixels).
    pub width: u32,
    /// Height (pixels).
    pub height: u32,
    /// Pixels row by row from the top, 3 bytes (R, G, B) each.
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A `width × height` canvas filled with `colour`.
    pub fn new(width: u32, height: u32, colour: [u8; 3]) -> Canvas {
        Canvas {
            width,
            height,
            rgb: colour.repeat(width as usize * height as usize),
        }
    }

    /// Wraps existing RGB8 pixels (`rgb.len()` must be `width × height × 3`).
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Canvas {
        assert_eq!(rgb.len(), width as usize * height as usize * 3);
        Canvas { width, height, rgb }
    }

    /// The colour at column `x`, row `y` (`None` outside).
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        (x < self.width && y < self.height).then(|| {
            let k = (y as usize * self.width as usize + x as usize) * 3;
            [self.rgb[k], self.rgb[k + 1], self.rgb[k + 2]]
        })
    }

    /// Sets one pixel; positions outside the canvas are ignored (drawing clips).
    pub fn set(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if (0..i64::from(self.width)).contains(&x) && (0..i64::from(self.height)).contains(&y) {
            let k = (y as usize * self.width as usize + x as usize) * 3;
            self.rgb[k..k + 3].copy_from_slice(&colour);
        }
    }

    /// Fills the rectangle of `w × h` pixels with top-left corner `(x, y)`, clipped.
    pub fn fill(&mut self, x: i64, y: i64, w: u32, h: u32, colour: [u8; 3]) {
        for row in y..y + i64::from(h) {
            for col in x..x + i64::from(w) {
                self.set(col, row, colour);
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each glyph pixel a `scale × scale`
    /// square, clipped at the edges. Characters without a glyph draw as `?`.
    pub fn draw_text(&mut self, x: i64, y: i64, text: &str, scale: u32, colour: [u8; 3]) {
        let cell = i64::from(GLYPH_SIZE * scale);
        for (k, c) in text.chars().enumerate() {
            let bits = glyph(c);
            let left = x + k as i64 * cell;
            for (row, line) in bits.iter().enumerate() {
                for col in 0..8 {
                    if line & (1 << col) != 0 {
                        let s = i64::from(scale);
                        self.fill(left + col * s, y + row as i64 * s, scale, scale, colour);
                    }
                }
            }
        }
    }

    /// Draws `text` horizontally centred on column `centre`, kept inside the canvas where it
    /// fits (a label at an edge shifts inwards rather than being cut).
    pub fn draw_text_centred(&mut self, centre: i64, y: i64, text: &str, scale: u32) {
        let w = i64::from(text_width(text, scale));
        let left = (centre - w / 2).min(i64::from(self.width) - w).max(0);
        self.draw_text(left, y, text, scale, INK_RGB);
    }
}

/// The 8×8 bitmap of `c`: rows from the top, bit `k` of a row is column `k` from the left.
/// Characters outside the font's ASCII, Latin-1 and Greek sets give the glyph of `?`.
pub fn glyph(c: char) -> [u8; 8] {
    BASIC_FONTS
        .get(c)
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| GREEK_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .expect("the basic font has '?'")
}

/// Width of `text` drawn at `scale` (pixels).
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH_SIZE * scale
}

/// The text scale for a figure `width` pixels wide: one glyph pixel per 400 image pixels of
/// width, at least 1 (8-pixel glyphs at 400 wide, 32-pixel glyphs at 1600).
pub fn text_scale(width: u32) -> u32 {
    (width / 400).max(1)
}

/// `v` rounded to 3 significant digits: plain decimals for magnitudes from 0.0001 to below
/// 100 000 (`-0.000123`, `12300`), otherwise scientific (`1.23e-5`, `4.00e7`); `0` for zero,
/// `NaN` and `inf` as Rust writes them.
pub fn format_value(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    // The exponent after rounding to 3 significant digits (9.996 rounds to 10.0).
    let rounded: f64 = format!("{v:.2e}")
        .parse()
        .expect("a formatted float parses");
    let exponent = rounded.abs().log10().floor() as i32;
    if (-4..5).contains(&exponent) {
        let decimals = (2 - exponent).max(0) as usize;
        format!("{rounded:.decimals$}")
    } else {
        format!("{rounded:.2e}")
    }
}

/// A strip `width` wide holding `title` centred at [`text_scale`] (smaller, down to 1, when the
/// title would not fit), with a margin of half a line above and below.
pub fn title_strip(width: u32, title: &str) -> Canvas {
    let mut scale = text_scale(width);
    while scale > 1 && text_width(title, scale) > width {
        scale -= 1;
    }
    let line = GLYPH_SIZE * scale;
    let mut strip = Canvas::new(width, 2 * line, PAPER_RGB);
    strip.draw_text_centred(i64::from(width / 2), i64::from(line / 2), title, scale);
    strip
}

/// The columns `[left, right)` a colour bar spans in a figure `width` wide: the central 80 %.
pub fn bar_columns(width: u32) -> (u32, u32) {
    (width / 10, width - width / 10)
}

/// Thickness of a colour bar in a figure `width` wide (pixels).
pub fn bar_thickness(width: u32) -> u32 {
    (width / 32).max(2)
}

/// Position along the bar, in `[0, 1]`, of bar column `i` of `n`.
pub fn bar_position(i: u32, n: u32) -> f64 {
    if n > 1 {
        f64::from(i) / f64::from(n - 1)
    } else {
        0.0
    }
}

/// A colour bar `width` wide with its labels: the bar over [`bar_columns`], coloured by
/// `colour(s)` at position `s ∈ [0, 1]` from left to right, [`bar_thickness`] high, then
/// tick marks and the `ticks` labels (`(position, text)`) centred under them, then `unit`
/// centred under the bar. Text at [`text_scale`]`(width)`, a gap of half a line between rows.
pub fn colour_bar(
    width: u32,
    colour: impl Fn(f64) -> [u8; 3],
    ticks: &[(f64, String)],
    unit: &str,
) -> Canvas {
    let scale = text_scale(width);
    let line = GLYPH_SIZE * scale;
    let (left, right) = bar_columns(width);
    let thick = bar_thickness(width);
    let tick_len = line / 2;
    // Rows: bar, tick marks, half-line gap, labels, half-line gap, unit, half-line margin.
    let labels_top = thick + tick_len + line / 2;
    let unit_top = labels_top + line + line / 2;
    let height = unit_top + line + line / 2;
    let mut canvas = Canvas::new(width, height, PAPER_RGB);
    let n = right - left;
    for i in 0..n {
        let c = colour(bar_position(i, n));
        canvas.fill(i64::from(left + i), 0, 1, thick, c);
    }
    for (position, label) in ticks {
        let x = i64::from(left) + (position.clamp(0.0, 1.0) * f64::from(n - 1)).round() as i64;
        canvas.fill(x, i64::from(thick), scale, tick_len, INK_RGB);
        canvas.draw_text_centred(x, i64::from(labels_top), label, scale);
    }
    canvas.draw_text_centred(
        i64::from((left + right) / 2),
        i64::from(unit_top),
        unit,
        scale,
    );
    canvas
}

/// The canvases one below the other (all must have the same width).
pub fn stack(parts: &[Canvas]) -> Canvas {
    let width = parts.first().map_or(0, |p| p.width);
    assert!(parts.iter().all(|p| p.width == width), "equal widths");
    let height = parts.iter().map(|p| p.height).sum();
    let rgb = parts.iter().flat_map(|p| p.rgb.iter().copied()).collect();
    Canvas::from_rgb(width, height, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The font's bitmap of `c` drawn at `scale` at the canvas origin, read back pixel by pixel.
    fn assert_glyph_at(canvas: &Canvas, left: u32, top: u32, c: char, scale: u32) {
        let bits = glyph(c);
        for y in 0..8 * scale {
            for x in 0..8 * scale {
                let on = bits[(y / scale) as usize] & (1 << (x / scale)) != 0;
                let want = if on { INK_RGB } else { PAPER_RGB };
                assert_eq!(
                    canvas.pixel(left + x, top + y),
                    Some(want),
                    "{c:?} at ({x}, {y}) scale {scale}"
                );
            }
        }
    }

    #[test]
    fn drawn_text_is_the_fonts_bitmap() {
        // 'A' in the public-domain 8x8 font: rows from the top, bit 0 = leftmost column.
        assert_eq!(glyph('A'), [0x0C, 0x1E, 0x33, 0x33, 0x3F, 0x33, 0x33, 0x00]);
        for scale in [1, 3] {
            let mut canvas = Canvas::new(40 * scale, 12 * scale, PAPER_RGB);
            canvas.draw_text(
                i64::from(2 * scale),
                i64::from(scale),
                "Aμ5",
                scale,
                INK_RGB,
            );
            for (k, c) in "Aμ5".chars().enumerate() {
                assert_glyph_at(&canvas, (2 + 8 * k as u32) * scale, scale, c, scale);
            }
            // Nothing drawn right of the text or above it.
            assert!((0..12 * scale).all(|y| canvas.pixel(26 * scale, y) == Some(PAPER_RGB)));
            assert!((0..40 * scale).all(|x| canvas.pixel(x, 0) == Some(PAPER_RGB)));
        }
        // The two μ code points (Latin-1 micro sign and Greek mu) both have glyphs.
        assert_ne!(glyph('µ'), glyph('?'));
        assert_ne!(glyph('μ'), glyph('?'));
        assert_eq!(glyph('\u{2603}'), glyph('?'));
    }

    #[test]
    fn text_clips_at_the_edges() {
        let mut canvas = Canvas::new(10, 6, PAPER_RGB);
        canvas.draw_text(-4, -2, "WW", 1, INK_RGB);
        canvas.draw_text(100, 100, "W", 1, INK_RGB);
        assert_eq!(canvas.rgb.len(), 10 * 6 * 3);
        assert!(canvas.rgb.contains(&0));
    }

    #[test]
    fn values_have_three_significant_digits() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1.00"),
            (-1.23456, "-1.23"),
            (12.345, "12.3"),
            (123.456, "123"),
            (99_960.0, "1.00e5"),
            (12_345.0, "12300"),
            (123_456.0, "1.23e5"),
            (0.0123456, "0.0123"),
            (0.000123456, "0.000123"),
            (-0.0000123456, "-1.23e-5"),
            (9.996, "10.0"),
            (1.2e-7, "1.20e-7"),
            (3e10, "3.00e10"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_value(v), want, "{v}");
        }
    }

    #[test]
    fn the_colour_bar_follows_its_colours_and_labels_its_ticks() {
        let width = 800;
        let grey = |s: f64| {
            let g = (s * 255.0).round() as u8;
            [g, g, g]
        };
        let ticks = [(0.0, "-1.5".to_string()), (1.0, "2.5".to_string())];
        let bar = colour_bar(width, grey, &ticks, "K");
        let (left, right) = bar_columns(width);
        assert_eq!((left, right), (80, 720));
        // Bar row 0: paper outside, the colours left to right, monotonic.
        assert_eq!(bar.pixel(left - 1, 0), Some(PAPER_RGB));
        assert_eq!(bar.pixel(right, 0), Some(PAPER_RGB));
        assert_eq!(bar.pixel(left, 0), Some([0, 0, 0]));
        assert_eq!(bar.pixel(right - 1, 0), Some([255, 255, 255]));
        let row: Vec<u8> = (left..right).map(|x| bar.pixel(x, 0).unwrap()[0]).collect();
        assert!(row.windows(2).all(|p| p[0] <= p[1]));
        // The tick labels: glyphs where the centred text starts.
        let scale = text_scale(width);
        let line = GLYPH_SIZE * scale;
        let labels_top = bar_thickness(width) + line / 2 + line / 2;
        let first = left - text_width("-1.5", scale) / 2;
        for (k, c) in "-1.5".chars().enumerate() {
            assert_glyph_at(&bar, first + k as u32 * line, labels_top, c, scale);
        }
        let last = right - 1 - text_width("2.5", scale) / 2;
        for (k, c) in "2.5".chars().enumerate() {
            assert_glyph_at(&bar, last + k as u32 * line, labels_top, c, scale);
        }
        let unit_top = labels_top + line + line / 2;
        assert_glyph_at(&bar, (left + right) / 2 - line / 2, unit_top, 'K', scale);
    }

    #[test]
    fn titles_shrink_to_fit_and_stack_joins_rows() {
        let strip = title_strip(100, "a title far too long for the strip");
        assert_eq!(strip.height, 2 * GLYPH_SIZE);
        let wide = title_strip(1600, "short");
        assert_eq!(wide.height, 2 * 8 * 4);
        let scale = 4;
        let left = 800 - text_width("short", scale) / 2;
        for (k, c) in "short".chars().enumerate() {
            assert_glyph_at(&wide, left + k as u32 * 32, 16, c, scale);
        }
        let joined = stack(&[Canvas::new(3, 2, INK_RGB), Canvas::new(3, 1, PAPER_RGB)]);
        assert_eq!((joined.width, joined.height), (3, 3));
        assert_eq!(joined.pixel(2, 1), Some(INK_RGB));
        assert_eq!(joined.pixel(2, 2), Some(PAPER_RGB));
    }
}
