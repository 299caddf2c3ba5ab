//! Scatter plots drawn on a [`Canvas`]: a framed plot area with tick values at both ends and
//! the middle of each axis, axis labels, an optional zero line, and points coloured by series
//! with a legend that counts them. Text is the embedded 8×8 font of [`crate::figure`].

use crate::figure::{
    Canvas, GLYPH_SIZE, INK_RGB, PAPER_RGB, format_value, stack, text_scale, text_width,
    title_strip,
};

/// Colour of the zero line.
const GRID_RGB: [u8; 3] = [170, 170, 170];

/// One set of points drawn in one colour and named in the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text (the legend appends the number of points).
    pub label: String,
    /// Colour of its points and legend text.
    pub colour: [u8; 3],
    /// `(x, y)` in data units; non-finite points are left out.
    pub points: Vec<(f64, f64)>,
}

/// What the axes show.
#[derive(Debug, Clone, PartialEq)]
pub struct Axes {
    /// Label under the x axis.
    pub x_label: String,
    /// Label above the y axis.
    pub y_label: String,
    /// Data range of the x axis, left to right (`min < max`).
    pub x_range: (f64, f64),
    /// Data range of the y axis, bottom to top (`min < max`).
    pub y_range: (f64, f64),
    /// Draw a grey horizontal line at y = 0 when it lies inside the range.
    pub zero_line: bool,
}

/// Where the plot area of a scatter plot `width × height` (without its title) lies, and the
/// mapping of data values onto it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// Leftmost column of the plot area.
    pub left: i64,
    /// Top row of the plot area.
    pub top: i64,
    /// Width of the plot area, pixels.
    pub width: i64,
    /// Height of the plot area, pixels.
    pub height: i64,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

impl Frame {
    /// The plot area of a body `width × height` drawn at text `scale`: room on the left for
    /// tick values of up to 8 characters, two lines below (values, x label), two above (y label),
    /// one on the right.
    pub fn new(width: u32, height: u32, scale: u32, axes: &Axes) -> Frame {
        let line = i64::from(GLYPH_SIZE * scale);
        let left = i64::from(text_width("-0.00e-0", scale)) + line;
        let top = 2 * line;
        Frame {
            left,
            top,
            width: (i64::from(width) - left - line).max(2),
            height: (i64::from(height) - top - 3 * line).max(2),
            x_range: axes.x_range,
            y_range: axes.y_range,
        }
    }

    /// Canvas pixel of data point `(x, y)`, `None` outside the axes' ranges (or not finite).
    pub fn pixel(&self, x: f64, y: f64) -> Option<(i64, i64)> {
        let fx = (x - self.x_range.0) / (self.x_range.1 - self.x_range.0);
        let fy = (y - self.y_range.0) / (self.y_range.1 - self.y_range.0);
        if !((0.0..=1.0).contains(&fx) && (0.0..=1.0).contains(&fy)) {
            return None;
        }
        let col = self.left + (fx * (self.width - 1) as f64).round() as i64;
        let row = self.top + ((1.0 - fy) * (self.height - 1) as f64).round() as i64;
        Some((col, row))
    }
}

/// A scatter plot `width` wide: `title` in a strip on top, then a body `height` high with the
/// framed plot area, ticks and values at both ends and the middle of each axis, the axis
/// labels, the series' points (squares of `scale + 2` pixels, `scale` = [`text_scale`]) and a
/// legend in the plot area's top-right corner (`label (n)` per series, then how many points
/// fell outside the axes, if any).
pub fn scatter(width: u32, height: u32, title: &str, axes: &Axes, series: &[Series]) -> Canvas {
    let scale = text_scale(width);
    let line = i64::from(GLYPH_SIZE * scale);
    let frame = Frame::new(width, height, scale, axes);
    let mut body = Canvas::new(width, height, PAPER_RGB);
    if axes.zero_line
        && let Some((_, row)) = frame.pixel(axes.x_range.0, 0.0)
    {
        body.fill(frame.left, row, frame.width as u32, 1, GRID_RGB);
    }
    let dot = i64::from(scale + 2);
    let mut outside = 0;
    for s in series {
        for &(x, y) in &s.points {
            match frame.pixel(x, y) {
                Some((col, row)) => body.fill(
                    col - dot / 2,
                    row - dot / 2,
                    dot as u32,
                    dot as u32,
                    s.colour,
                ),
                None => outside += 1,
            }
        }
    }
    draw_frame(&mut body, &frame, scale);
    draw_ticks(&mut body, &frame, axes, scale);
    body.draw_text(frame.left, line / 2, &axes.y_label, scale, INK_RGB);
    body.draw_text_centred(
        frame.left + frame.width / 2,
        frame.top + frame.height + line + line,
        &axes.x_label,
        scale,
    );
    let mut legend: Vec<(String, [u8; 3])> = series
        .iter()
        .map(|s| (format!("{} ({})", s.label, s.points.len()), s.colour))
        .collect();
    if outside > 0 {
        legend.push((format!("{outside} outside the axes"), INK_RGB));
    }
    for (k, (text, colour)) in legend.iter().enumerate() {
        let x = frame.left + frame.width - i64::from(text_width(text, scale)) - line / 2;
        body.draw_text(
            x,
            frame.top + line / 2 + k as i64 * line,
            text,
            scale,
            *colour,
        );
    }
    stack(&[title_strip(width, title), body])
}

/// The plot area's outline, one text pixel thick, just outside the area.
fn draw_frame(canvas: &mut Canvas, frame: &Frame, scale: u32) {
    let s = i64::from(scale);
    let (w, h) = (frame.width as u32, frame.height as u32);
    canvas.fill(frame.left - s, frame.top - s, w + 2 * scale, scale, INK_RGB);
    canvas.fill(
        frame.left - s,
        frame.top + frame.height,
        w + 2 * scale,
        scale,
        INK_RGB,
    );
    canvas.fill(frame.left - s, frame.top, scale, h, INK_RGB);
    canvas.fill(frame.left + frame.width, frame.top, scale, h, INK_RGB);
}

/// Tick marks and values at both ends and the middle of each axis.
fn draw_ticks(canvas: &mut Canvas, frame: &Frame, axes: &Axes, scale: u32) {
    let line = i64::from(GLYPH_SIZE * scale);
    let tick = line / 2;
    for f in [0.0, 0.5, 1.0] {
        let x = axes.x_range.0 + f * (axes.x_range.1 - axes.x_range.0);
        let col = frame.left + (f * (frame.width - 1) as f64).round() as i64;
        let bottom = frame.top + frame.height + i64::from(scale);
        canvas.fill(col, bottom, scale, tick as u32, INK_RGB);
        canvas.draw_text_centred(col, bottom + tick, &format_value(x), scale);

        let y = axes.y_range.0 + f * (axes.y_range.1 - axes.y_range.0);
        let row = frame.top + ((1.0 - f) * (frame.height - 1) as f64).round() as i64;
        canvas.fill(
            frame.left - i64::from(scale) - tick,
            row,
            tick as u32,
            scale,
            INK_RGB,
        );
        let label = format_value(y);
        let x_text = frame.left - i64::from(scale) - tick - i64::from(text_width(&label, scale));
        canvas.draw_text(x_text - 2, row - line / 2, &label, scale, INK_RGB);
    }
}

/// A symmetric range `(-r, r)` holding about `fraction` of `values` (by absolute value), at
/// least `floor`, rounded up to 2 significant digits so that tick values stay short.
pub fn symmetric_range(values: &[f64], fraction: f64, floor: f64) -> (f64, f64) {
    let mut magnitudes: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .collect();
    magnitudes.sort_by(f64::total_cmp);
    let at = if magnitudes.is_empty() {
        0.0
    } else {
        let k = ((magnitudes.len() as f64 * fraction).ceil() as usize).clamp(1, magnitudes.len());
        magnitudes[k - 1]
    };
    let r = (1.1 * at).max(floor);
    let step = 10f64.powf(r.log10().floor() - 1.0);
    let rounded = (r / step).ceil() * step;
    (-rounded, rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes() -> Axes {
        Axes {
            x_label: "true r [mag]".into(),
            y_label: "dmag".into(),
            x_range: (16.0, 24.0),
            y_range: (-0.5, 0.5),
            zero_line: true,
        }
    }

    const RED: [u8; 3] = [220, 30, 30];

    fn count(canvas: &Canvas, colour: [u8; 3]) -> usize {
        canvas
            .rgb
            .chunks(3)
            .filter(|p| p == &colour.as_slice())
            .count()
    }

    /// Corners of the range land on the plot area's corners; the middle in its middle.
    #[test]
    fn data_points_map_onto_the_plot_area() {
        let f = Frame::new(600, 400, 1, &axes());
        assert_eq!(f.pixel(16.0, 0.5), Some((f.left, f.top)));
        assert_eq!(
            f.pixel(24.0, -0.5),
            Some((f.left + f.width - 1, f.top + f.height - 1))
        );
        let (col, row) = f.pixel(20.0, 0.0).unwrap();
        assert!((col - (f.left + (f.width - 1) / 2)).abs() <= 1);
        assert!((row - (f.top + (f.height - 1) / 2)).abs() <= 1);
        assert_eq!(f.pixel(24.01, 0.0), None);
        assert_eq!(f.pixel(20.0, f64::NAN), None);
    }

    /// A point is drawn in its series' colour where the frame maps it (below the title strip);
    /// a point outside the axes is not drawn.
    #[test]
    fn points_are_drawn_where_they_belong_and_only_inside() {
        let inside = Series {
            label: "r".into(),
            colour: RED,
            points: vec![(18.0, 0.25)],
        };
        let plot = scatter(
            600,
            400,
            "residuals",
            &axes(),
            std::slice::from_ref(&inside),
        );
        let title = title_strip(600, "residuals").height;
        let f = Frame::new(600, 400, 1, &axes());
        let (col, row) = f.pixel(18.0, 0.25).unwrap();
        assert_eq!(plot.pixel(col as u32, title + row as u32), Some(RED));
        assert_eq!(plot.width, 600);
        assert_eq!(plot.height, 400 + title);
        let drawn = count(&plot, RED);
        assert!(drawn >= 9, "{drawn}");

        let far = Series {
            points: vec![(18.0, 5.0)],
            ..inside
        };
        let plot = scatter(600, 400, "residuals", &axes(), &[far]);
        // Only the legend text is red then: fewer red pixels than point + legend.
        assert!(count(&plot, RED) < drawn, "{}", count(&plot, RED));
    }

    /// The frame and the zero line are drawn: the area's outline in ink, the zero row grey.
    #[test]
    fn frame_and_zero_line_are_drawn() {
        let plot = scatter(600, 400, "t", &axes(), &[]);
        let title = title_strip(600, "t").height as i64;
        let f = Frame::new(600, 400, 1, &axes());
        let ink = |x: i64, y: i64| plot.pixel(x as u32, (y + title) as u32);
        assert_eq!(ink(f.left - 1, f.top + 5), Some(INK_RGB));
        assert_eq!(ink(f.left + f.width, f.top + 5), Some(INK_RGB));
        assert_eq!(ink(f.left + 5, f.top + f.height), Some(INK_RGB));
        let (_, zero) = f.pixel(16.0, 0.0).unwrap();
        assert_eq!(ink(f.left + f.width / 3, zero), Some(GRID_RGB));
    }

    /// The range covers the requested fraction, respects the floor, and rounds to 2 digits.
    #[test]
    fn symmetric_ranges_cover_the_values() {
        let values: Vec<f64> = (1..=100).map(|k| f64::from(k) * 0.01).collect();
        let (lo, hi) = symmetric_range(&values, 0.9, 0.01);
        assert_eq!(lo, -hi);
        assert!((0.99..=1.0).contains(&hi), "{hi}");
        assert_eq!(symmetric_range(&[], 0.9, 0.05), (-0.05, 0.05));
        assert_eq!(
            symmetric_range(&[f64::NAN, 0.001], 1.0, 0.05),
            (-0.05, 0.05)
        );
    }
}
