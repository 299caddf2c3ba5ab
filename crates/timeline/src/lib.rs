//! Per-rank timeline pictures of a run: one row per rank, one bar per unit attempt.
//!
//! The model is neutral: a [`Timeline`] is a list of [`Bar`]s (start and end in seconds from
//! the run's origin, the ranks the attempt ran on, a legend [`Category`], a hover text) and
//! one [`RowStats`] per rank. [`render_svg`] draws it with the `svg` crate: rows with their
//! idle gaps left blank, bars coloured by category, multi-rank attempts drawn across their
//! ranks, a time axis in seconds, a legend, each row's utilisation at its right end (the full
//! value in the row's `<title>`), the makespan and overall utilisation in the title, and each
//! bar's hover text in its `<title>`. Attempts narrower than a pixel that follow each other on
//! one rank are merged into one mark per pixel (the picture says how many), so a million
//! units draw as a few thousand elements. [`render_png`] rasterises the same SVG with `resvg`,
//! using the system's fonts (Debian `fonts-dejavu-core`). No files, no MPI.
//!
//! ```
//! use skypipe_timeline::{Bar, Category, RenderOptions, RowStats, Timeline, render_svg};
//! let timeline = Timeline {
//!     title: "demo".into(),
//!     notes: vec![],
//!     categories: vec![Category::new("done", "#4c9a2a")],
//!     bars: vec![Bar::new(0.0, 1.5, vec![0], 0, "unit a=1 · rank 0 · 1.5 s · done")],
//!     rows: vec![RowStats { busy_s: 1.5, utilisation: 0.75, attempts: 1, note: String::new() }],
//!     makespan_s: 2.0,
//!     utilisation: 0.75,
//!     now_s: None,
//!     outline_label: None,
//! };
//! let svg = render_svg(&timeline, &RenderOptions::default());
//! assert!(svg.contains("<title>unit a=1 · rank 0 · 1.5 s · done</title>"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use svg::Document;
use svg::node::element::{Group, Line, Rectangle, Text, Title};

/// A legend entry: what a bar's colour means.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// Name shown in the legend (a stage, or an outcome such as `done`).
    pub name: String,
    /// Fill colour, any SVG colour (e.g. `#4c9a2a`).
    pub colour: String,
    /// Bars of this category (e.g. failures) are never merged and are drawn at least
    /// [`EMPHASIS_MIN_PX`] wide, so that a short failure stays visible among many units.
    pub emphasis: bool,
}

impl Category {
    /// A category named `name` drawn in `colour`.
    pub fn new(name: impl Into<String>, colour: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            colour: colour.into(),
            emphasis: false,
        }
    }

    /// A category whose bars are emphasised (see [`Category::emphasis`]).
    pub fn emphasised(name: impl Into<String>, colour: impl Into<String>) -> Self {
        Self {
            emphasis: true,
            ..Self::new(name, colour)
        }
    }
}

/// Smallest width, pixels, of an emphasised or outlined bar.
pub const EMPHASIS_MIN_PX: f64 = 2.0;

/// One unit attempt: a bar from `start_s` to `end_s` on each of its ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Start, seconds from the timeline's origin.
    pub start_s: f64,
    /// End, seconds from the timeline's origin.
    pub end_s: f64,
    /// Ranks the attempt ran on (one for a one-rank unit), ascending.
    pub ranks: Vec<usize>,
    /// Index into [`Timeline::categories`].
    pub category: usize,
    /// Hover text (the bar's SVG `<title>`): unit ID, rank, elapsed time, outcome.
    pub hover: String,
    /// Drawn with a dark red outline (e.g. a failed attempt when colours show stages); like
    /// an emphasised category, never merged and at least [`EMPHASIS_MIN_PX`] wide.
    pub outline: bool,
    /// Extra `data-*` attributes (name without the `data-` prefix, value) for scripts.
    pub data: Vec<(String, String)>,
}

impl Bar {
    /// A bar on `ranks` from `start_s` to `end_s` in `category`, with its hover text.
    pub fn new(
        start_s: f64,
        end_s: f64,
        ranks: Vec<usize>,
        category: usize,
        hover: impl Into<String>,
    ) -> Self {
        Self {
            start_s,
            end_s,
            ranks,
            category,
            hover: hover.into(),
            outline: false,
            data: Vec::new(),
        }
    }

    fn width_s(&self) -> f64 {
        (self.end_s - self.start_s).max(0.0)
    }
}

/// What a row's right end and `<title>` say about its rank.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStats {
    /// Seconds the rank spent inside units.
    pub busy_s: f64,
    /// Busy time over the makespan (0..1), written in full in the row's `<title>`.
    pub utilisation: f64,
    /// Unit attempts on the rank.
    pub attempts: u64,
    /// Where the figures come from, added to the row's `<title>` (may be empty).
    pub note: String,
}

/// Everything a timeline picture shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// First title line (e.g. the run directory and its stages).
    pub title: String,
    /// Extra lines under the title (e.g. "job still running").
    pub notes: Vec<String>,
    /// Legend entries; bars refer to them by index.
    pub categories: Vec<Category>,
    /// Every unit attempt.
    pub bars: Vec<Bar>,
    /// One entry per rank: the number of rows.
    pub rows: Vec<RowStats>,
    /// Makespan, seconds (shown in the title; the time axis spans at least this).
    pub makespan_s: f64,
    /// Busy time over makespan × ranks (0..1).
    pub utilisation: f64,
    /// Position of a "now" line (a running job), seconds from the origin.
    pub now_s: Option<f64>,
    /// Legend text for outlined bars (e.g. "failed attempt"); `None`: no legend entry.
    pub outline_label: Option<String>,
}

/// Picture size.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Width of the whole picture, pixels.
    pub width_px: u32,
    /// Height of one rank's row, pixels; `None`: from 22 px for few ranks down to 2 px for
    /// thousands, so the rows fit in about 640 px.
    pub row_px: Option<f64>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            width_px: 1200,
            row_px: None,
        }
    }
}

/// Errors of [`render_png`].
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// No font was found for the text of a PNG.
    #[error(
        "no font found on this system to draw the PNG's text (install Debian's fonts-dejavu-core, or write an SVG)"
    )]
    NoFonts,
    /// The SVG could not be rasterised.
    #[error("cannot rasterise the timeline: {0}")]
    Raster(String),
}

const LEFT_PX: f64 = 72.0;
const RIGHT_PX: f64 = 64.0;
const FONT: &str = "DejaVu Sans, Liberation Sans, Arial, sans-serif";
const IDLE_COLOUR: &str = "#f1f1f1";
const OUTLINE_COLOUR: &str = "#8b0000";

/// Layout of one picture, in pixels.
#[derive(Debug, Clone, Copy)]
struct Layout {
    plot_left: f64,
    plot_width: f64,
    rows_top: f64,
    row_h: f64,
    ranks: usize,
    span_s: f64,
}

impl Layout {
    fn x(&self, t: f64) -> f64 {
        self.plot_left + (t / self.span_s).clamp(0.0, 1.0) * self.plot_width
    }

    fn seconds_per_px(&self) -> f64 {
        self.span_s / self.plot_width
    }

    fn rows_bottom(&self) -> f64 {
        self.rows_top + self.row_h * self.ranks as f64
    }

    fn inset(&self) -> f64 {
        if self.row_h >= 6.0 {
            (self.row_h * 0.12).min(3.0)
        } else {
            0.0
        }
    }
}

fn default_row_px(ranks: usize) -> f64 {
    (640.0 / ranks.max(1) as f64).clamp(2.0, 22.0)
}

/// How the bars were drawn: one mark per attempt, or merged below a pixel.
#[derive(Debug, Clone, Default, PartialEq)]
struct Marks {
    /// Attempts drawn one by one.
    single: Vec<usize>,
    /// Merged marks: the attempts (indices into the bars) each one stands for, one rank each.
    merged: Vec<(usize, Vec<usize>)>,
}

/// Splits the bars into those drawn one by one and runs of consecutive one-rank attempts
/// narrower than a pixel, merged into one mark no wider than a pixel per run.
fn plan_marks(timeline: &Timeline, layout: &Layout) -> Marks {
    let px = layout.seconds_per_px();
    let mut marks = Marks::default();
    let mut per_rank: Vec<Vec<usize>> = vec![Vec::new(); layout.ranks];
    for (i, bar) in timeline.bars.iter().enumerate() {
        match bar.ranks.as_slice() {
            [r] if *r < layout.ranks && bar.width_s() < px && !emphasised(timeline, bar) => {
                per_rank[*r].push(i)
            }
            _ => marks.single.push(i),
        }
    }
    for (rank, mut narrow) in per_rank.into_iter().enumerate() {
        narrow.sort_by(|&a, &b| {
            timeline.bars[a]
                .start_s
                .total_cmp(&timeline.bars[b].start_s)
        });
        let mut k = 0;
        while k < narrow.len() {
            let limit = timeline.bars[narrow[k]].start_s + px;
            let mut end = k + 1;
            while end < narrow.len() && timeline.bars[narrow[end]].end_s <= limit {
                end += 1;
            }
            if end - k == 1 {
                marks.single.push(narrow[k]);
            } else {
                marks.merged.push((rank, narrow[k..end].to_vec()));
            }
            k = end;
        }
    }
    marks.single.sort_unstable();
    marks
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving at most about `max_ticks` ticks over `span`.
fn tick_step(span: f64, max_ticks: f64) -> f64 {
    let raw = (span / max_ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn format_tick(t: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{t:.decimals$}")
}

/// Seconds in a short human form for labels (`0.042 s`, `12.3 s`, `1 h 02 min`).
pub fn short_seconds(s: f64) -> String {
    if !s.is_finite() {
        "?".to_string()
    } else if s < 1.0 {
        format!("{s:.3} s")
    } else if s < 100.0 {
        format!("{s:.2} s")
    } else if s < 3600.0 {
        format!("{s:.0} s")
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

fn text(x: f64, y: f64, size: f64, content: impl Into<String>) -> Text {
    Text::new(content)
        .set("x", round2(x))
        .set("y", round2(y))
        .set("font-size", round2(size))
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Contiguous runs of ranks (`[0, 1, 3]` → `[(0, 1), (3, 3)]`).
fn rank_runs(ranks: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &r in ranks {
        match runs.last_mut() {
            Some((_, last)) if r == *last + 1 => *last = r,
            _ => runs.push((r, r)),
        }
    }
    runs
}

fn emphasised(timeline: &Timeline, bar: &Bar) -> bool {
    bar.outline
        || timeline
            .categories
            .get(bar.category)
            .is_some_and(|c| c.emphasis)
}

fn bar_rect(
    layout: &Layout,
    (start, end): (f64, f64),
    (first, last): (usize, usize),
    min_px: f64,
) -> Rectangle {
    let x0 = layout.x(start);
    let x1 = layout.x(end).max(x0 + min_px);
    let inset = layout.inset();
    let y = layout.rows_top + first as f64 * layout.row_h + inset;
    let h = (last + 1 - first) as f64 * layout.row_h - 2.0 * inset;
    Rectangle::new()
        .set("x", round2(x0))
        .set("y", round2(y))
        .set("width", round2(x1 - x0).max(min_px))
        .set("height", round2(h.max(0.5)))
}

fn safe_attr(value: &str) -> String {
    value.replace('"', "'")
}

/// The two title lines: the caller's title, then makespan, utilisation and counts.
fn summary_line(timeline: &Timeline, merged: usize, marks: usize) -> String {
    let mut line = format!(
        "makespan {} · utilisation {:.1}% · {} ranks · {} attempts",
        short_seconds(timeline.makespan_s),
        100.0 * timeline.utilisation,
        timeline.rows.len(),
        thousands(timeline.bars.len())
    );
    if merged > 0 {
        let _ = write!(
            line,
            " · {} attempts narrower than a pixel merged into {} marks (hover for counts)",
            thousands(merged),
            thousands(marks)
        );
    }
    line
}

/// Draws the timeline as an SVG document.
pub fn render_svg(timeline: &Timeline, options: &RenderOptions) -> String {
    let ranks = timeline.rows.len().max(1);
    let width = f64::from(options.width_px.max(400));
    let row_h = options
        .row_px
        .unwrap_or_else(|| default_row_px(ranks))
        .max(1.0);
    let span_s = timeline
        .bars
        .iter()
        .map(|b| b.end_s)
        .chain([timeline.makespan_s, timeline.now_s.unwrap_or(0.0)])
        .fold(0.0f64, |a, b| if b.is_finite() { a.max(b) } else { a });
    let header_lines = 2 + timeline.notes.len();
    let layout = Layout {
        plot_left: LEFT_PX,
        plot_width: width - LEFT_PX - RIGHT_PX,
        rows_top: 14.0 + 17.0 * header_lines as f64,
        row_h,
        ranks,
        span_s: if span_s > 0.0 { span_s } else { 1.0 },
    };
    let marks = plan_marks(timeline, &layout);
    let merged_attempts: usize = marks.merged.iter().map(|(_, m)| m.len()).sum();

    let mut doc = Group::new().set("font-family", FONT);
    // Title lines.
    doc = doc.add(
        text(10.0, 22.0, 15.0, timeline.title.clone())
            .set("font-weight", "bold")
            .set("class", "title"),
    );
    doc = doc.add(
        text(
            10.0,
            39.0,
            12.0,
            summary_line(timeline, merged_attempts, marks.merged.len()),
        )
        .set("class", "summary"),
    );
    for (i, note) in timeline.notes.iter().enumerate() {
        doc = doc.add(text(10.0, 56.0 + 17.0 * i as f64, 12.0, note.clone()).set("fill", "#444"));
    }

    // Rows: the idle background, the rank label, the utilisation, the full values in <title>.
    let label_size = (row_h - 3.0).min(12.0);
    let mut rows = Group::new().set("class", "rows");
    for (rank, stats) in timeline.rows.iter().enumerate() {
        let y = layout.rows_top + rank as f64 * row_h;
        let mut title = format!(
            "rank {rank}: utilisation {} (busy {} s of makespan {} s; {} attempts)",
            stats.utilisation, stats.busy_s, timeline.makespan_s, stats.attempts
        );
        if !stats.note.is_empty() {
            let _ = write!(title, "; {}", stats.note);
        }
        let mut row = Group::new()
            .set("class", "row")
            .set("data-rank", rank)
            .set("data-utilisation", stats.utilisation)
            .add(Title::new(title))
            .add(
                Rectangle::new()
                    .set("x", layout.plot_left)
                    .set("y", round2(y))
                    .set("width", round2(layout.plot_width))
                    .set("height", round2(row_h))
                    .set(
                        "fill",
                        if rank % 2 == 0 {
                            IDLE_COLOUR
                        } else {
                            "#e8e8e8"
                        },
                    ),
            );
        if label_size >= 7.0 {
            let baseline = y + row_h / 2.0 + label_size * 0.35;
            row = row
                .add(
                    text(
                        layout.plot_left - 6.0,
                        baseline,
                        label_size,
                        format!("rank {rank}"),
                    )
                    .set("text-anchor", "end"),
                )
                .add(text(
                    layout.plot_left + layout.plot_width + 6.0,
                    baseline,
                    label_size,
                    format!("{:.1}%", 100.0 * stats.utilisation),
                ));
        }
        rows = rows.add(row);
    }
    doc = doc.add(rows);

    // Bars, one group per attempt.
    let mut bars = Group::new().set("class", "bars");
    // Emphasised and outlined bars go on top of everything else, merged marks included.
    let mut on_top = Vec::new();
    for &i in &marks.single {
        let bar = &timeline.bars[i];
        let colour = timeline
            .categories
            .get(bar.category)
            .map_or("#777777", |c| c.colour.as_str());
        let mut group = Group::new()
            .set("class", "attempt")
            .set(
                "data-ranks",
                bar.ranks
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .set("fill", colour)
            .add(Title::new(bar.hover.clone()));
        if let Some(c) = timeline.categories.get(bar.category) {
            group = group.set("data-category", safe_attr(&c.name));
        }
        for (name, value) in &bar.data {
            group = group.set(format!("data-{name}"), safe_attr(value));
        }
        if bar.outline {
            group = group.set("stroke", OUTLINE_COLOUR).set("stroke-width", 1.5);
        } else if bar.width_s() >= 3.0 * layout.seconds_per_px() {
            // A hairline that keeps back-to-back attempts of one colour apart.
            group = group.set("stroke", "#ffffff").set("stroke-width", 0.5);
        }
        let min_px = if emphasised(timeline, bar) {
            EMPHASIS_MIN_PX
        } else {
            0.25
        };
        for run in rank_runs(&bar.ranks) {
            if run.1 < ranks {
                group = group.add(bar_rect(&layout, (bar.start_s, bar.end_s), run, min_px));
            }
        }
        if emphasised(timeline, bar) {
            on_top.push(group);
        } else {
            bars = bars.add(group);
        }
    }
    for (rank, members) in &marks.merged {
        let start = members
            .iter()
            .map(|&i| timeline.bars[i].start_s)
            .fold(f64::INFINITY, f64::min);
        let end = members
            .iter()
            .map(|&i| timeline.bars[i].end_s)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut time_by_category: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
        for &i in members {
            let e = time_by_category
                .entry(timeline.bars[i].category)
                .or_insert((0.0, 0));
            e.0 += timeline.bars[i].width_s();
            e.1 += 1;
        }
        let main = time_by_category
            .iter()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .map_or(0, |(c, _)| *c);
        let colour = timeline
            .categories
            .get(main)
            .map_or("#777777", |c| c.colour.as_str());
        let counts: Vec<String> = time_by_category
            .iter()
            .map(|(c, (_, n))| {
                let name = timeline.categories.get(*c).map_or("?", |c| c.name.as_str());
                format!("{n} {name}")
            })
            .collect();
        let group = Group::new()
            .set("class", "merged")
            .set("data-ranks", *rank)
            .set("data-count", members.len())
            .set("fill", colour)
            .add(Title::new(format!(
                "rank {rank}: {} attempts merged (each narrower than a pixel) from {:.3} s to {:.3} s: {}",
                members.len(),
                start,
                end,
                counts.join(", ")
            )));
        bars = bars.add(group.add(bar_rect(&layout, (start, end), (*rank, *rank), 0.25)));
    }
    for group in on_top {
        bars = bars.add(group);
    }
    doc = doc.add(bars);

    // "Now" line of a running job.
    if let Some(now) = timeline.now_s {
        let x = round2(layout.x(now));
        doc = doc.add(
            Group::new()
                .set("class", "now")
                .add(Title::new(format!("now: {now:.1} s")))
                .add(
                    Line::new()
                        .set("x1", x)
                        .set("x2", x)
                        .set("y1", round2(layout.rows_top - 4.0))
                        .set("y2", round2(layout.rows_bottom() + 4.0))
                        .set("stroke", "#d00000")
                        .set("stroke-dasharray", "4 3"),
                )
                .add(
                    text(x, layout.rows_top - 6.0, 10.0, "now")
                        .set("text-anchor", "middle")
                        .set("fill", "#d00000"),
                ),
        );
    }

    // Time axis.
    let axis_y = layout.rows_bottom() + 2.0;
    let step = tick_step(layout.span_s, (layout.plot_width / 80.0).max(2.0));
    let mut axis = Group::new().set("class", "axis").add(
        Line::new()
            .set("x1", layout.plot_left)
            .set("x2", round2(layout.plot_left + layout.plot_width))
            .set("y1", round2(axis_y))
            .set("y2", round2(axis_y))
            .set("stroke", "#333"),
    );
    let mut k = 0u64;
    loop {
        let t = k as f64 * step;
        if t > layout.span_s * (1.0 + 1e-9) {
            break;
        }
        let x = round2(layout.x(t));
        axis = axis
            .add(
                Line::new()
                    .set("x1", x)
                    .set("x2", x)
                    .set("y1", round2(axis_y))
                    .set("y2", round2(axis_y + 5.0))
                    .set("stroke", "#333"),
            )
            .add(text(x, axis_y + 17.0, 11.0, format_tick(t, step)).set("text-anchor", "middle"));
        k += 1;
    }
    axis = axis.add(
        text(
            layout.plot_left + layout.plot_width / 2.0,
            axis_y + 33.0,
            12.0,
            "seconds since the first attempt started",
        )
        .set("text-anchor", "middle"),
    );
    doc = doc.add(axis);

    // Legend, wrapping at the picture's width.
    let mut entries: Vec<(String, Rectangle)> = Vec::new();
    let swatch = |fill: &str| {
        Rectangle::new()
            .set("width", 12)
            .set("height", 12)
            .set("fill", fill.to_string())
    };
    let used: std::collections::BTreeSet<usize> =
        timeline.bars.iter().map(|b| b.category).collect();
    for (i, c) in timeline.categories.iter().enumerate() {
        if used.contains(&i) {
            entries.push((c.name.clone(), swatch(&c.colour)));
        }
    }
    if let Some(label) = &timeline.outline_label
        && timeline.bars.iter().any(|b| b.outline)
    {
        entries.push((
            label.clone(),
            swatch("#ffffff")
                .set("stroke", OUTLINE_COLOUR)
                .set("stroke-width", 1.5),
        ));
    }
    entries.push((
        "idle".to_string(),
        swatch(IDLE_COLOUR).set("stroke", "#bbb"),
    ));
    let mut legend = Group::new().set("class", "legend");
    let mut x = layout.plot_left;
    let mut y = axis_y + 46.0;
    for (name, rect) in entries {
        let w = 22.0 + 7.0 * name.chars().count() as f64 + 18.0;
        if x + w > width - 10.0 && x > layout.plot_left {
            x = layout.plot_left;
            y += 18.0;
        }
        legend = legend.add(
            Group::new()
                .set("class", "legend-entry")
                .add(rect.set("x", round2(x)).set("y", round2(y)))
                .add(text(x + 17.0, y + 10.5, 12.0, name)),
        );
        x += w;
    }
    doc = doc.add(legend);
    let height = (y + 24.0).ceil();

    Document::new()
        .set("width", width)
        .set("height", height)
        .set("viewBox", (0, 0, width, height))
        .add(Title::new(format!(
            "{} — {}",
            timeline.title,
            summary_line(timeline, merged_attempts, marks.merged.len())
        )))
        .add(
            Rectangle::new()
                .set("width", "100%")
                .set("height", "100%")
                .set("fill", "white"),
        )
        .add(doc)
        .to_string()
}

/// The pixel size of an SVG written by [`render_svg`] (its `width` and `height`).
pub fn svg_size(svg: &str) -> Option<(u32, u32)> {
    let head = &svg[..svg.find('>')?];
    let attr = |name: &str| -> Option<u32> {
        let start = head.find(&format!(" {name}=\""))? + name.len() + 3;
        let rest = &head[start..];
        rest[..rest.find('"')?]
            .parse::<f64>()
            .ok()
            .map(|v| v as u32)
    };
    Some((attr("width")?, attr("height")?))
}

/// Draws the timeline as a PNG (the SVG of [`render_svg`], rasterised at its own size).
pub fn render_png(timeline: &Timeline, options: &RenderOptions) -> Result<Vec<u8>, TimelineError> {
    svg_to_png(&render_svg(timeline, options))
}

/// Rasterises an SVG written by [`render_svg`] to PNG bytes with the system's fonts.
pub fn svg_to_png(svg_text: &str) -> Result<Vec<u8>, TimelineError> {
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    if opt.fontdb.is_empty() {
        return Err(TimelineError::NoFonts);
    }
    opt.font_family = "DejaVu Sans".to_string();
    let tree = resvg::usvg::Tree::from_str(svg_text, &opt)
        .map_err(|e| TimelineError::Raster(e.to_string()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| TimelineError::Raster(format!("empty picture size {size:?}")))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| TimelineError::Raster(e.to_string()))
}

#[cfg(test)]
mod tests;
