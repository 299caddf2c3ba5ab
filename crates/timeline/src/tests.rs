use super::*;

fn row(busy: f64, util: f64, attempts: u64) -> RowStats {
    RowStats {
        busy_s: busy,
        utilisation: util,
        attempts,
        note: String::new(),
    }
}

fn timeline(bars: Vec<Bar>, ranks: usize, makespan: f64) -> Timeline {
    Timeline {
        title: "t".into(),
        notes: vec!["a note".into()],
        categories: vec![
            Category::new("done", "#4c9a2a"),
            Category::new("bad-input", "#d62728"),
        ],
        bars,
        rows: (0..ranks)
            .map(|r| row(1.0, 1.0 / (r + 3) as f64, 1))
            .collect(),
        makespan_s: makespan,
        utilisation: 0.5,
        now_s: None,
        outline_label: Some("failed".into()),
    }
}

fn attr(node: roxmltree::Node, name: &str) -> f64 {
    node.attribute(name).unwrap().parse().unwrap()
}

fn groups<'a>(doc: &'a roxmltree::Document, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some(class))
        .collect()
}

fn title_of(node: roxmltree::Node) -> String {
    node.children()
        .find(|c| c.has_tag_name("title"))
        .and_then(|t| t.text())
        .unwrap_or("")
        .to_string()
}

#[test]
fn rows_bars_gaps_and_multi_rank_attempts_are_drawn_where_they_belong() {
    let mut failed = Bar::new(
        3.0,
        4.0,
        vec![0],
        1,
        "unit a=2 <x> & y · rank 0 · 1 s · bad-input",
    );
    failed.outline = true;
    failed.data.push(("outcome".into(), "bad-input".into()));
    let bars = vec![
        Bar::new(0.0, 1.0, vec![0], 0, "unit a=1"),
        failed,
        Bar::new(1.0, 2.0, vec![0, 1, 2], 0, "unit g=1 gather"),
        Bar::new(2.0, 4.0, vec![1, 3], 0, "unit g=2 split"),
    ];
    let t = timeline(bars, 4, 4.0);
    let svg = render_svg(&t, &RenderOptions::default());
    let doc = roxmltree::Document::parse(&svg).expect("SVG is XML");
    let rows = groups(&doc, "row");
    assert_eq!(rows.len(), 4);
    for (r, node) in rows.iter().enumerate() {
        let title = title_of(*node);
        let util: f64 = title
            .split("utilisation ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            util,
            1.0 / (r + 3) as f64,
            "full value in the title: {title}"
        );
    }
    let attempts = groups(&doc, "attempt");
    // Drawn in order, except the outlined failure, which goes on top (last).
    let (failed_i, gather_i, split_i) = (3, 1, 2);
    assert_eq!(attempts.len(), 4);
    assert!(groups(&doc, "merged").is_empty());

    // The idle gap on rank 0 from 1 s to 3 s (rank 0 also runs the gather from 1 s to 2 s).
    let rect = |g: roxmltree::Node| -> Vec<(f64, f64, f64, f64)> {
        g.children()
            .filter(|c| c.has_tag_name("rect"))
            .map(|r| {
                (
                    attr(r, "x"),
                    attr(r, "width"),
                    attr(r, "y"),
                    attr(r, "height"),
                )
            })
            .collect()
    };
    let plot_w = 1200.0 - LEFT_PX - RIGHT_PX;
    let first = rect(attempts[0])[0];
    let second = rect(attempts[failed_i])[0];
    assert!((first.0 - LEFT_PX).abs() < 0.01);
    assert!((first.1 - plot_w / 4.0).abs() < 0.02);
    assert!((second.0 - (LEFT_PX + 0.75 * plot_w)).abs() < 0.01);
    assert_eq!(attempts[failed_i].attribute("stroke"), Some(OUTLINE_COLOUR));
    assert_eq!(
        attempts[failed_i].attribute("data-outcome"),
        Some("bad-input")
    );
    assert_eq!(attempts[failed_i].attribute("fill"), Some("#d62728"));
    assert_eq!(
        title_of(attempts[failed_i]),
        "unit a=2 <x> & y · rank 0 · 1 s · bad-input"
    );

    // The gather spans three rows in one rect; the split attempt draws one rect per run.
    let gather = rect(attempts[gather_i]);
    assert_eq!(gather.len(), 1);
    let row_h = default_row_px(4);
    let inset = (row_h * 0.12).min(3.0);
    assert!((gather[0].3 - (3.0 * row_h - 2.0 * inset)).abs() < 0.02);
    assert_eq!(attempts[gather_i].attribute("data-ranks"), Some("0 1 2"));
    let split = rect(attempts[split_i]);
    assert_eq!(split.len(), 2);
    assert!((split[1].2 - split[0].2 - 2.0 * row_h).abs() < 0.02);

    // Legend: the used categories, the outline and idle.
    let legend: Vec<String> = groups(&doc, "legend-entry")
        .iter()
        .map(|g| {
            g.descendants()
                .find(|n| n.has_tag_name("text"))
                .unwrap()
                .text()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(legend, vec!["done", "bad-input", "failed", "idle"]);
    let summary = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("summary"))
        .unwrap();
    assert!(
        summary
            .text()
            .unwrap()
            .trim()
            .contains("makespan 4.00 s · utilisation 50.0% · 4 ranks")
    );
}

#[test]
fn attempts_narrower_than_a_pixel_merge_and_the_picture_says_so() {
    // 2 ranks × 50,000 back-to-back attempts of 1 ms, plus one long one and a lone short one.
    let mut bars = Vec::new();
    for rank in 0..2 {
        for k in 0..50_000 {
            let start = k as f64 * 0.001;
            let category = usize::from(k % 1000 == 0);
            let mut b = Bar::new(start, start + 0.001, vec![rank], category, "u");
            b.outline = category == 1;
            bars.push(b);
        }
    }
    bars.push(Bar::new(50.0, 60.0, vec![0], 0, "long"));
    bars.push(Bar::new(70.0, 70.001, vec![1], 0, "lone"));
    let total = bars.len();
    let t = timeline(bars, 2, 70.001);
    let svg = render_svg(&t, &RenderOptions::default());
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let singles = groups(&doc, "attempt");
    let merged = groups(&doc, "merged");
    let in_merged: usize = merged
        .iter()
        .map(|g| g.attribute("data-count").unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(singles.len() + in_merged, total, "every attempt drawn once");
    assert_eq!(
        singles.len(),
        2 + 100,
        "the long and the lone attempt and the 100 outlined failures stay single"
    );
    let failures: Vec<_> = singles
        .iter()
        .filter(|g| g.attribute("stroke") == Some(OUTLINE_COLOUR))
        .collect();
    assert_eq!(failures.len(), 100);
    for g in failures {
        let rect = g.children().find(|c| c.has_tag_name("rect")).unwrap();
        assert!(
            attr(rect, "width") >= EMPHASIS_MIN_PX,
            "failures stay visible"
        );
    }
    // At most about one mark per pixel of the 50 busy seconds on each rank.
    let px_per_s = (1200.0 - LEFT_PX - RIGHT_PX) / 70.001;
    // Each mark spans up to a pixel, less the width of one attempt.
    let per_mark = 1.0 / px_per_s - 0.001;
    assert!(
        merged.len() as f64 <= 2.0 * (50.0 / per_mark + 2.0),
        "{}",
        merged.len()
    );
    assert!(merged.iter().all(|g| attr(*g, "data-count") >= 2.0));
    assert!(
        svg.contains(&format!(
            "99,900 attempts narrower than a pixel merged into {} marks",
            thousands(merged.len())
        )),
        "the picture says it merged"
    );
}

#[test]
fn ticks_are_nice_and_cover_the_span() {
    assert_eq!(tick_step(10.0, 10.0), 1.0);
    assert_eq!(tick_step(13.0, 10.0), 2.0);
    assert_eq!(tick_step(0.03, 6.0), 0.005);
    assert_eq!(tick_step(4000.0, 10.0), 500.0);
    assert_eq!(format_tick(0.005 * 3.0, 0.005), "0.015");
    assert_eq!(format_tick(1500.0, 500.0), "1500");
    assert_eq!(rank_runs(&[0, 1, 2, 5, 7, 8]), vec![(0, 2), (5, 5), (7, 8)]);
    assert_eq!(thousands(1234567), "1,234,567");
    assert_eq!(short_seconds(7322.0), "2 h 02 min");
}

#[test]
fn many_ranks_get_thin_rows_without_labels_but_keep_their_titles() {
    let t = timeline(
        vec![Bar::new(0.0, 1.0, vec![999], 0, "last rank")],
        1000,
        1.0,
    );
    let svg = render_svg(&t, &RenderOptions::default());
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let rows = groups(&doc, "row");
    assert_eq!(rows.len(), 1000);
    assert!(
        rows.iter()
            .all(|r| !r.descendants().any(|n| n.has_tag_name("text")))
    );
    assert!(title_of(rows[999]).starts_with("rank 999: utilisation "));
    assert_eq!(svg_size(&svg).map(|s| s.0), Some(1200));
}

#[test]
fn png_has_the_svg_size_and_is_not_blank() {
    let mut t = timeline(
        vec![
            Bar::new(0.0, 2.0, vec![0], 0, "a"),
            Bar::new(1.0, 3.0, vec![1], 1, "b"),
        ],
        2,
        3.0,
    );
    t.now_s = Some(2.5);
    let options = RenderOptions {
        width_px: 640,
        row_px: None,
    };
    let (w, h) = svg_size(&render_svg(&t, &options)).unwrap();
    let png = render_png(&t, &options).expect("fonts-dejavu-core is installed");
    let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
    assert_eq!((pixmap.width(), pixmap.height()), (w, h));
    assert_eq!(w, 640);
    let pixels = pixmap.pixels();
    let green = pixels
        .iter()
        .filter(|p| (p.red(), p.green(), p.blue()) == (0x4c, 0x9a, 0x2a))
        .count();
    let dark = pixels
        .iter()
        .filter(|p| p.red() < 80 && p.green() < 80 && p.blue() < 80)
        .count();
    assert!(green > 100, "the done bar is drawn: {green} pixels");
    assert!(dark > 200, "text and axis are drawn: {dark} pixels");
}
