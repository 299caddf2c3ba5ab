//! The per-rank timeline of a real run: `skypipe-loadtest` on 4 ranks with injected failures,
//! retried transient units, group gathers and a two-rank collective unit; then
//! `skypipe-status --timeline` as SVG (checked as XML against the ledger and
//! `run-report.json`), as PNG, and the SVG rendered by headless Chromium.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const RANKS: usize = 4;

fn status_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skypipe-status"))
}

/// One load-test run shared by the tests of this file; returns its run directory.
fn loadtest_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("timeline-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let workload = dir.join("w.json");
        let durations: Vec<f64> = (0..40).map(|i| 0.02 + 0.01 * (i % 5) as f64).collect();
        write_workload(&workload, &durations, 10);
        let cfg = dir.join("loadtest.toml");
        std::fs::write(
            &cfg,
            format!(
                "[run]\nfsync = false\nmax_retries = 2\n[loadtest]\nworkload = \"{}\"\nwrite_outputs = true\ngather = true\ncollective_ranks = 2\n[loadtest.inject]\nerror = [\"task=3\"]\npanic = [\"task=17\"]\ntransient = [\"task=5\", \"task=22\"]\ntransient_attempts = 2\n",
                workload.display()
            ),
        )
        .unwrap();
        let run_dir = dir.join("run");
        let out = run(mpirun(
            RANKS,
            &loadtest_bin(),
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--run-dir",
                run_dir.to_str().unwrap(),
            ],
        ));
        assert_eq!(code(&out.status), 2, "{}", text(&out));
        run_dir
    })
}

fn draw(run_dir: &Path, file: &str) -> PathBuf {
    let out_path = run_dir.parent().unwrap().join(file);
    let out = run(direct(
        &status_bin(),
        &[
            run_dir.to_str().unwrap(),
            "--timeline",
            out_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    out_path
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
        .unwrap_or_default()
        .to_string()
}

/// The number after `key ` in `text`, up to the next space.
fn number_after(text: &str, key: &str) -> f64 {
    let rest = text
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key:?} in {text:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

fn svg_size(svg: &str) -> (u32, u32) {
    let doc = roxmltree::Document::parse(svg).unwrap();
    let root = doc.root_element();
    let dim = |name| root.attribute(name).unwrap().parse::<f64>().unwrap() as u32;
    (dim("width"), dim("height"))
}

/// Pixels of a PNG (RGB or RGBA, 8-bit) as RGB triples, with its size.
fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{path:?}");
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

fn near(p: [u8; 3], hex: &str, tolerance: i32) -> bool {
    let c = |i: usize| i32::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap();
    (0..3).all(|i| (i32::from(p[i]) - c(i)).abs() <= tolerance)
}

#[test]
fn the_svg_has_a_row_per_rank_a_bar_per_attempt_and_the_reports_utilisation() {
    let run_dir = loadtest_run();
    let records = ledger(run_dir, "loadtest");
    let report = report(run_dir);

    let svg_path = draw(run_dir, "timeline.svg");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the timeline SVG is well-formed XML");
    assert_eq!(
        doc.root_element().tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );

    // One bar per attempt: each record's retried attempts and its last one; units that never
    // ran (dependency-failed, 0 attempts) draw nothing. Nothing is merged at this scale.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut multi_rank: Vec<Vec<u64>> = Vec::new();
    for r in &records {
        let retried = r["retried"].as_array().map_or(0, |a| a.len());
        if r["attempts"] == 0 && retried == 0 {
            continue;
        }
        expected.insert(r["unit"].as_str().unwrap().to_string(), retried + 1);
        if let Some(ranks) = r["ranks"].as_array() {
            multi_rank.push(ranks.iter().map(|v| v.as_u64().unwrap()).collect());
        }
    }
    assert!(expected["task=5"] == 3 && expected["task=22"] == 3);
    assert_eq!(multi_rank.len(), 1, "the collective unit has its ranks");
    assert!(groups(&doc, "merged").is_empty());
    let attempts = groups(&doc, "attempt");
    assert_eq!(attempts.len(), expected.values().sum::<usize>());
    let mut drawn: BTreeMap<String, usize> = BTreeMap::new();
    for g in &attempts {
        let title = title_of(*g);
        let unit = title.split(" · ").next().unwrap().to_string();
        *drawn.entry(unit).or_insert(0) += 1;
        assert!(
            title.contains(" s · "),
            "elapsed time in the hover text: {title}"
        );
    }
    assert_eq!(drawn, expected);

    // Failed units in their colour, retried attempts in theirs, the collective across ranks.
    let by_unit = |unit: &str| -> Vec<roxmltree::Node> {
        attempts
            .iter()
            .copied()
            .filter(|g| title_of(*g).starts_with(&format!("{unit} · ")))
            .collect()
    };
    for unit in ["task=3", "task=17"] {
        let bars = by_unit(unit);
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].attribute("data-outcome"), Some("bad-input"));
        assert_eq!(bars[0].attribute("fill"), Some("#d62728"), "{unit}");
        assert!(title_of(bars[0]).contains("· bad-input ·"));
    }
    let task5 = by_unit("task=5");
    let retried: Vec<_> = task5
        .iter()
        .filter(|g| g.attribute("data-retried") == Some("true"))
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(
        retried
            .iter()
            .all(|g| g.attribute("fill") == Some("#ff9f1c")
                && g.attribute("data-outcome") == Some("transient"))
    );
    let collective = by_unit("collective=1");
    let ranks_text: Vec<String> = multi_rank[0].iter().map(|r| r.to_string()).collect();
    assert_eq!(
        collective[0].attribute("data-ranks"),
        Some(ranks_text.join(" ").as_str())
    );

    // One row per rank; each row's <title> has the report's utilisation in full, and on the
    // ranks without a multi-rank unit the ledger's attempts add up to the report's busy time.
    let rows = groups(&doc, "row");
    assert_eq!(rows.len(), RANKS);
    let per_rank = report["per_rank"].as_array().unwrap();
    assert_eq!(per_rank.len(), RANKS);
    for (rank, row) in rows.iter().enumerate() {
        let title = title_of(*row);
        let want = &per_rank[rank];
        assert_eq!(want["rank"], rank);
        let util = number_after(&title, "utilisation ");
        assert!(
            (util - want["utilisation"].as_f64().unwrap()).abs() <= 1e-6,
            "rank {rank}: {title} vs {want}"
        );
        let busy = want["busy_s"].as_f64().unwrap();
        assert!((number_after(&title, "(busy ") - busy).abs() <= 1e-6);
        if !multi_rank[0].contains(&(rank as u64)) {
            let ledger_busy = number_after(&title, "add up to ");
            assert!(
                (ledger_busy - busy).abs() <= 1e-6,
                "rank {rank}: ledger {ledger_busy} s, report {busy} s"
            );
        }
    }
    let summary = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("summary"))
        .unwrap()
        .text()
        .unwrap()
        .trim()
        .to_string();
    let makespan = report["makespan_s"].as_f64().unwrap();
    let utilisation = report["utilisation"].as_f64().unwrap();
    assert!(
        summary.starts_with(&format!(
            "makespan {makespan:.3} s · utilisation {:.1}% · {RANKS} ranks",
            100.0 * utilisation
        )),
        "{summary}"
    );

    // The file the engine writes at the end of a run draws the same attempts.
    let written = skypipe_status::timeline::write_run_timeline(run_dir).unwrap();
    assert_eq!(written, run_dir.join("timeline.svg"));
    let again = std::fs::read_to_string(&written).unwrap();
    let doc2 = roxmltree::Document::parse(&again).unwrap();
    assert_eq!(groups(&doc2, "attempt").len(), attempts.len());

    // The PNG has the SVG's size and shows the done bars.
    let png_path = draw(run_dir, "timeline.png");
    let (w, h, pixels) = decode_png(&png_path);
    assert_eq!((w, h), svg_size(&svg));
    let green = pixels.iter().filter(|p| near(**p, "#4c9a2a", 0)).count();
    assert!(green > 10_000, "{green} done-coloured pixels");
}

#[test]
fn the_svg_renders_in_headless_chromium_at_its_size() {
    let run_dir = loadtest_run();
    let svg_path = draw(run_dir, "chromium.svg");
    let (w, h) = svg_size(&std::fs::read_to_string(&svg_path).unwrap());
    let shot = run_dir.parent().unwrap().join("chromium-shot.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--screenshot={}", shot.display()))
    .arg(format!("--window-size={w},{h}"))
    .arg(format!(
        "file://{}",
        svg_path.canonicalize().unwrap().display()
    ))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .process_group(0);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start chromium ({e}): install it with `scripts/install-deps.sh test` (Debian package chromium)")
    });
    let out = wait_with_deadline(child, Duration::from_secs(90));
    assert!(out.status.success(), "{}", text(&out));
    let (sw, sh, pixels) = decode_png(&shot);
    assert_eq!((sw, sh), (w, h), "screenshot at the SVG's size");
    let white = pixels.iter().filter(|p| near(**p, "#ffffff", 2)).count();
    let green = pixels.iter().filter(|p| near(**p, "#4c9a2a", 8)).count();
    let red = pixels.iter().filter(|p| near(**p, "#d62728", 8)).count();
    let dark = pixels.iter().filter(|p| p.iter().all(|c| *c < 90)).count();
    assert!(white < pixels.len(), "the screenshot is blank");
    assert!(green > 10_000, "done bars drawn: {green} pixels");
    assert!(red > 100, "failed units drawn: {red} pixels");
    assert!(dark > 500, "text and axis drawn: {dark} pixels");
}

#[test]
fn a_running_job_draws_what_has_ended_with_a_now_line_and_its_ledger_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let workload = tmp.path().join("w.json");
    write_workload(&workload, &[0.005; 30], 30);
    let hold = tmp.path().join("hold");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nfsync = false\nledger_sync_interval_s = 0.05\n[loadtest]\nworkload = \"{}\"\n[loadtest.inject]\nhold = [\"task=0\"]\nhold_dir = \"{}\"\n",
            workload.display(),
            hold.display()
        ),
    )
    .unwrap();
    let run_dir = tmp.path().join("run");
    let job = Job::spawn(mpirun(
        2,
        &loadtest_bin(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    ));
    // task=0 is held while the other rank finishes the 29 other units.
    let start = std::time::Instant::now();
    while ledger(&run_dir, "loadtest").len() < 29 || !hold.join("task=0.started").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the job did not progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ledger_path = run_dir.join("ledger/loadtest.jsonl");
    let before = std::fs::read(&ledger_path).unwrap();
    let svg_path = draw(&run_dir, "running.svg");
    assert_eq!(
        std::fs::read(&ledger_path).unwrap(),
        before,
        "ledger untouched"
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(svg.contains("a job is running (loadtest)"), "{svg}");
    assert_eq!(groups(&doc, "now").len(), 1, "a now line");
    assert_eq!(
        groups(&doc, "attempt").len(),
        29,
        "the held unit is not drawn yet"
    );

    std::fs::write(hold.join("task=0.release"), "").unwrap();
    let out = job.wait();
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let svg = std::fs::read_to_string(draw(&run_dir, "finished.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(groups(&doc, "now").is_empty());
    assert_eq!(groups(&doc, "attempt").len(), 30);
}
