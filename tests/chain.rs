//! Chain runs (`skypipe-run`): the CMB stages pointing → calibrate → mapmake in one MPI job,
//! planned as one graph. Stage overlap is proved by the ledgers' run-wide sequence numbers,
//! never by timing.

mod common;

use common::cmb::*;
use common::content::*;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Six short noiseless observations of four detector pairs.
const SIM: &str = "net_uk_sqrt_s = 0.0\nfknee_hz = 0.0\nobservations = 6\n\
                   obs_duration_s = 60.0\nprecession_deg = 7.5\n\
                   precession_period_days = 0.01\ndetector_pairs = 2\n";

/// The three stage tables of the tests; `mapmake_extra` is added to `[mapmake]`.
fn tables(list: &Path, mapmake_extra: &str) -> [(&'static str, String); 3] {
    let obs = format!("observations = \"{}\"", list.display());
    [
        ("pointing", format!("{obs}\n{POINTING}")),
        ("calibrate", obs.clone()),
        (
            "mapmake",
            format!("{obs}\nquicklook_width = 200\ndestripe = false\n{mapmake_extra}"),
        ),
    ]
}

/// A chain file of the three stages.
fn chain_config(dir: &Path, name: &str, tables: &[(&str, String)]) -> String {
    // Records reach the ledger file at once, so the kill test sees them while the job runs.
    let mut text = String::from(
        "[run]\nfsync = false\nprogress_interval_s = 60.0\nledger_sync_interval_s = 0.001\n[chain]\n",
    );
    let names: Vec<String> = tables.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    text += &format!("stages = [{}]\n", names.join(", "));
    for (table, body) in tables {
        text += &format!("[{table}]\n{body}\n");
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    s(&path)
}

/// Runs the chain on `ranks` ranks into `run_dir`.
fn run_chain(config: &str, run_dir: &Path, ranks: usize, extra: &[&str]) -> std::process::Output {
    let run_s = s(run_dir);
    let mut args = vec!["--config", config, "--run-dir", &run_s];
    args.extend_from_slice(extra);
    run(mpirun(ranks, &bin("run"), &args))
}

/// Every complete record of every stage: (seq, stage, unit, outcome). Safe while a job
/// appends (a partly written last line is skipped).
fn records(run_dir: &Path) -> Vec<(u64, String, String, String)> {
    let mut all = Vec::new();
    for stage in ["pointing", "calibrate", "mapmake"] {
        let path = run_dir.join("ledger").join(format!("{stage}.jsonl"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rsplit_once('\n').map_or("", |(head, _)| head);
        for line in complete.lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            all.push((
                r["seq"].as_u64().unwrap(),
                stage.to_string(),
                r["unit"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            ));
        }
    }
    all.sort();
    all
}

/// Waits (up to 20 s) until no process holds a stage's ledger lock: killed ranks may outlive
/// mpirun for a moment.
fn wait_for_locks(run_dir: &Path) {
    let start = std::time::Instant::now();
    for stage in ["pointing", "calibrate", "mapmake"] {
        let path = run_dir.join("ledger").join(format!("{stage}.lock"));
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        while file.try_lock().is_err() {
            assert!(
                start.elapsed().as_secs() < 20,
                "{} still locked",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Compares two runs' binned maps with healpy, to 1e-12 of the I map's RMS (the tolerance
/// documented for different reduction orders).
const COMPARE_MAPS: &str = r#"
import sys, numpy as np, healpy as hp
a, b = sys.argv[1], sys.argv[2]
for kind, tol in (('binned', 1e-12),):
    ma = hp.read_map(a + f'/mapmake/map_{kind}.fits', field=(0, 1, 2, 3))
    mb = hp.read_map(b + f'/mapmake/map_{kind}.fits', field=(0, 1, 2, 3))
    assert (ma[3] == mb[3]).all()
    seen = (ma[3] > 0) & (ma[0] != hp.UNSEEN)
    assert seen.sum() > 100, seen.sum()
    rms = np.sqrt(np.mean(ma[0][seen] ** 2))
    err = max(np.abs(ma[c][seen] - mb[c][seen]).max() for c in range(3)) / rms
    assert err <= tol, (kind, err)
print('ok')
"#;

#[test]
fn cmb_chain_overlaps_stages_matches_separate_jobs_and_resumes_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), SIM);
    let tables = tables(&list, "");

    // Three separate jobs, one stage after another.
    let separate = tmp.path().join("separate");
    for (stage, body) in &tables {
        let cfg = stage_config(tmp.path(), &format!("{stage}.toml"), stage, body);
        let out = run_stage(stage, &cfg, &list, &separate, 2, &[]);
        assert_eq!(code(&out.status), 0, "{stage}: {}", text(&out));
    }

    // The same stages as one chain job.
    let chain = tmp.path().join("chain");
    let cfg = chain_config(tmp.path(), "chain.toml", &tables);
    let out = run_chain(&cfg, &chain, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let recs = records(&chain);
    assert_eq!(recs.len(), 6 + 6 + 7, "{recs:?}");
    assert!(recs.iter().all(|r| r.3 == "done"), "{recs:?}");
    let seqs: Vec<u64> = recs.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (1..=19).collect::<Vec<u64>>(),
        "one run-wide sequence"
    );
    let last = |stage: &str| {
        recs.iter()
            .filter(|r| r.1 == stage)
            .map(|r| r.0)
            .max()
            .unwrap()
    };
    let first = |stage: &str| {
        recs.iter()
            .filter(|r| r.1 == stage)
            .map(|r| r.0)
            .min()
            .unwrap()
    };
    assert!(
        first("calibrate") < last("pointing"),
        "calibrate started before pointing ended: {recs:?}"
    );
    assert!(first("mapmake") < last("calibrate"), "{recs:?}");
    // Per stage: calibrate[obs] is recorded after pointing[obs], mapmake[obs] after both.
    let seq_of = |stage: &str, unit: &str| {
        recs.iter()
            .find(|r| r.1 == stage && r.2 == unit)
            .map(|r| r.0)
            .unwrap()
    };
    for o in 0..6 {
        let unit = format!("obs={o:04}");
        assert!(seq_of("pointing", &unit) < seq_of("calibrate", &unit));
        assert!(seq_of("calibrate", &unit) < seq_of("mapmake", &unit));
    }
    // Byte-identical timestreams and pointing but for their provenance (another run
    // directory); maps within the reduction-order tolerance.
    for dir in ["pointing", "calibrate"] {
        let (a, b) = (
            files_without_provenance(&separate.join(dir)),
            files_without_provenance(&chain.join(dir)),
        );
        assert_eq!(a.len(), 6);
        assert!(
            a == b,
            "{dir} files differ between the chain and separate jobs"
        );
    }
    python(COMPARE_MAPS, &[s(&separate), s(&chain)]);
    let chain_report = report(&chain);
    assert_eq!(chain_report["stage"], "chain");
    // The run's timeline is drawn at its end, one row per rank, coloured by stage.
    let svg = std::fs::read_to_string(chain.join("timeline.svg")).expect("timeline.svg");
    assert!(svg.contains("<svg") && svg.contains("calibrate"), "{svg}");
    assert_eq!(chain_report["stages"].as_array().unwrap().len(), 3);
    let part: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chain.join("ledger/calibrate.report.json")).unwrap())
            .unwrap();
    assert_eq!(part["ran"], 6);

    // A stage alone on the chain's run directory: same fingerprint, nothing left to do; one
    // unit of the chain runs in-process by its stage-qualified ID.
    let records_before = records(&chain).len();
    let (stage, body) = &tables[1];
    let alone = stage_config(tmp.path(), "alone.toml", stage, body);
    let out = run_stage(stage, &alone, &list, &chain, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert_eq!(records(&chain).len(), records_before, "nothing redone");
    let chain_s = s(&chain);
    let out = run(direct(
        &bin("run"),
        &[
            "--config",
            &cfg,
            "--run-dir",
            &chain_s,
            "--unit",
            "calibrate[obs=0003]",
        ],
    ));
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert!(
        text(&out).contains("calibrate[obs=0003] done"),
        "{}",
        text(&out)
    );

    // Killed mid-run and rerun with the same command: every unit done exactly once.
    let killed = tmp.path().join("killed");
    let run_s = s(&killed);
    let job = Job::spawn(mpirun(
        2,
        &bin("run"),
        &["--config", &cfg, "--run-dir", &run_s],
    ));
    let start = std::time::Instant::now();
    while records(&killed).len() < 3 && start.elapsed().as_secs() < 100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill_group(job.pgid(), "KILL");
    let _ = job.wait();
    wait_for_locks(&killed);
    let before = records(&killed).len();
    assert!((3..19).contains(&before), "killed after {before} records");
    let out = run_chain(&cfg, &killed, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let mut done: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in records(&killed) {
        assert_eq!(r.3, "done", "{r:?}");
        *done.entry((r.1, r.2)).or_insert(0) += 1;
    }
    assert_eq!(done.len(), 19);
    assert!(done.values().all(|&n| n == 1), "{done:?}");
    for dir in ["pointing", "calibrate"] {
        assert!(
            files_without_provenance(&separate.join(dir))
                == files_without_provenance(&killed.join(dir))
        );
    }
}

#[test]
fn a_failed_upstream_unit_fails_only_its_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), SIM);
    // Observation 2's raw file is truncated: pointing[obs=0002] has bad input.
    let raw = list.parent().unwrap().join("obs/obs=0002.h5");
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::write(&raw, &bytes[..bytes.len() / 3]).unwrap();
    let tables = tables(&list, "allow_failed_observations = true");
    let cfg = chain_config(tmp.path(), "chain.toml", &tables);
    let run_dir = tmp.path().join("run");
    let out = run_chain(&cfg, &run_dir, 3, &[]);
    assert_eq!(code(&out.status), 2, "{}", text(&out));
    assert!(text(&out).contains("obs=0002.h5"), "{}", text(&out));
    let outcome = |stage: &str, unit: &str| {
        outcomes(&run_dir, stage)
            .into_iter()
            .find(|(u, _)| u == unit)
            .map(|(_, o)| o)
            .unwrap()
    };
    assert_eq!(outcome("pointing", "obs=0002"), "bad-input");
    assert_eq!(outcome("calibrate", "obs=0002"), "dependency-failed");
    assert_eq!(outcome("mapmake", "obs=0002"), "dependency-failed");
    assert_eq!(
        outcome("mapmake", "map=full"),
        "done",
        "the map is made without it"
    );
    for stage in ["pointing", "calibrate", "mapmake"] {
        let done = outcomes(&run_dir, stage)
            .iter()
            .filter(|(_, o)| o == "done")
            .count();
        assert_eq!(done, if stage == "mapmake" { 6 } else { 5 }, "{stage}");
    }

    // skypipe-slurm submits the chain as one job and counts what is left in every stage's
    // ledger: nothing, or the three failed units with --retry-failed.
    let run_s = s(&run_dir);
    let run_bin = s(&bin("run"));
    let slurm = |extra: &[&str]| {
        let mut args = vec!["--dry-run", "--ntasks-per-node", "2", "--unit-seconds", "1"];
        args.push(run_bin.as_str());
        args.extend(["--config", cfg.as_str(), "--run-dir", run_s.as_str()]);
        args.extend_from_slice(extra);
        let out = run(direct(
            Path::new(env!("CARGO_BIN_EXE_skypipe-slurm")),
            &args,
        ));
        assert_eq!(code(&out.status), 0, "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let script = slurm(&[]);
    assert!(
        script.contains("#SBATCH --job-name=skypipe-chain"),
        "{script}"
    );
    assert!(script.contains("# Walltime: 0 units"), "{script}");
    let sruns = script.lines().filter(|l| l.starts_with("srun ")).count();
    assert_eq!(sruns, 1, "one job: {script}");
    let script = slurm(&["--retry-failed"]);
    assert!(script.contains("# Walltime: 3 units"), "{script}");
}

#[test]
fn an_input_that_nothing_produces_is_refused_before_any_unit_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), SIM);
    // Pointing plans observations 0..4 only, calibrate all six.
    let text_list = std::fs::read_to_string(&list).unwrap();
    let mut short: serde_json::Value = serde_json::from_str(&text_list).unwrap();
    short["observations"].as_array_mut().unwrap().pop();
    let short_list: PathBuf = list.with_file_name("five.json");
    std::fs::write(&short_list, short.to_string()).unwrap();
    let mut tables = tables(&list, "");
    tables[0].1 = format!("observations = \"{}\"\n{POINTING}", short_list.display());
    let cfg = chain_config(tmp.path(), "chain.toml", &tables[..2]);
    let run_dir = tmp.path().join("run");
    let out = run_chain(&cfg, &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("calibrate[obs=0005] reads"), "{all}");
    assert!(all.contains("pointing/obs=0005.h5"), "{all}");
    assert!(records(&run_dir).is_empty(), "no unit ran");
    // The dry run says the same without MPI.
    let run_s = s(&run_dir);
    let out = run(direct(
        &bin("run"),
        &["--config", &cfg, "--run-dir", &run_s, "--dry-run"],
    ));
    assert_eq!(code(&out.status), 1, "{}", text(&out));
    assert!(text(&out).contains("calibrate[obs=0005] reads"));
}

#[test]
fn a_second_calibration_pass_uses_the_first_map_in_the_same_job() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), SIM);
    let run_dir = tmp.path().join("run");
    let obs = format!("observations = \"{}\"", list.display());
    let map = run_dir.join("mapmake/map_binned.fits");
    let tables = [
        ("pointing", format!("{obs}\n{POINTING}")),
        ("calibrate", obs.clone()),
        (
            "mapmake",
            format!("{obs}\ncomponents = \"i\"\ndestripe = false\nquicklook_width = 200"),
        ),
        (
            "calibrate2",
            format!(
                "{obs}\nsky_model = \"{}\"\noutput_dir = \"{}\"",
                map.display(),
                run_dir.join("calibrate2").display()
            ),
        ),
        (
            "mapmake2",
            format!(
                "{obs}\ncalibrated_dir = \"{}\"\nout_dir = \"{}\"\ndestripe = false\nquicklook_width = 200",
                run_dir.join("calibrate2").display(),
                run_dir.join("mapmake2").display()
            ),
        ),
    ];
    let mut cfg = std::fs::read_to_string(chain_config(tmp.path(), "chain.toml", &tables)).unwrap();
    cfg = cfg.replace(
        "[chain]\n",
        "[chain]\nkinds = { calibrate2 = \"calibrate\", mapmake2 = \"mapmake\" }\n",
    );
    let cfg_path = tmp.path().join("iterate.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = run_chain(&s(&cfg_path), &run_dir, 2, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let seq_of = |stage: &str, unit: &str| {
        ledger(&run_dir, stage)
            .into_iter()
            .find(|r| r["unit"] == unit && r["outcome"] == "done")
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or_else(|| panic!("{stage}[{unit}] not done"))
    };
    let first_map = seq_of("mapmake", "map=full");
    for o in 0..6 {
        let unit = format!("obs={o:04}");
        assert!(
            seq_of("calibrate2", &unit) > first_map,
            "{unit} waited for the map"
        );
        assert!(seq_of("mapmake2", &unit) > seq_of("calibrate2", &unit));
    }
    assert!(run_dir.join("mapmake2/map_binned.fits").is_file());
    assert_eq!(files(&run_dir.join("calibrate2")).len(), 6);
}

#[test]
fn pointing_expanded_on_the_fly_equals_the_pointing_files_and_gives_the_same_maps() {
    use skypipe_cmb::model::{FocalPlane, ObservationList};
    use skypipe_cmb::pointing::{ChunkPointing, ObservationPointing, OutputFrame, PointingConfig};
    use skypipe_io::hdf5::H5Reader;
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), SIM);
    // The dense chain, on one rank (a fixed reduction order).
    let dense = tmp.path().join("dense");
    let out = run_chain(
        &chain_config(tmp.path(), "dense.toml", &tables(&list, "")),
        &dense,
        1,
        &[],
    );
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    // calibrate + mapmake expanding the pointing themselves, with no pointing stage; the
    // calibration's chunks (65536) are not the pointing's (5000).
    let obs = format!("observations = \"{}\"", list.display());
    let expand = [
        (
            "calibrate",
            format!("{obs}\npointing = \"expand\"\n[calibrate.expand]\n{POINTING}"),
        ),
        (
            "mapmake",
            format!(
                "{obs}\nquicklook_width = 200\ndestripe = false\npointing = \"expand\"\n[mapmake.expand]\n{POINTING}"
            ),
        ),
    ];
    let expanded = tmp.path().join("expanded");
    let out = run_chain(
        &chain_config(tmp.path(), "expand.toml", &expand),
        &expanded,
        1,
        &[],
    );
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert!(!expanded.join("pointing").exists());
    let cal = files_without_provenance(&dense.join("calibrate"));
    assert_eq!(cal.len(), 6);
    assert!(
        cal == files_without_provenance(&expanded.join("calibrate")),
        "calibrated files differ"
    );
    let read = |d: &Path, f: &str| std::fs::read(d.join("mapmake").join(f)).unwrap();
    let map = |d: &Path| without_provenance(&d.join("mapmake/map_binned.fits"));
    assert!(map(&dense) == map(&expanded));
    // The summaries agree but for their wall times and peak memory.
    let summary = |d: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&read(d, "summary.json")).unwrap();
        let fields = v.as_object_mut().unwrap();
        fields.remove("seconds");
        fields.remove("peak_memory_mb_per_rank");
        v
    };
    assert_eq!(summary(&dense), summary(&expanded));
    // The shared expansion equals the pointing stage's double-precision files bit for bit.
    // The geometry of POINTING.
    let geometry = PointingConfig {
        nside: 64,
        frame: OutputFrame::Galactic,
        aberration: true,
        chunk_samples: 5000,
        ..Default::default()
    }
    .geometry();
    let obs_list = ObservationList::load(&list).unwrap();
    let focal_plane = FocalPlane::read(&obs_list.focal_plane).unwrap();
    let mut buf = ChunkPointing::default();
    for entry in &obs_list.observations {
        let raw = H5Reader::open(&entry.file).unwrap();
        let e = ObservationPointing::open(&raw, &focal_plane, &geometry).unwrap();
        let pt = H5Reader::open(
            dense
                .join("pointing")
                .join(format!("obs={:04}.h5", entry.obs)),
        )
        .unwrap();
        for d in 0..e.detector_count() {
            let (det, _, len) = e.detector(d);
            let group = format!("detectors/{}", det.name);
            let pixels: Vec<u64> = pt.read_1d(&format!("{group}/pixels"), Some(len)).unwrap();
            let weights: Vec<[f64; 3]> =
                pt.read_2d(&format!("{group}/weights"), Some(len)).unwrap();
            let angles: Vec<Vec<f64>> = ["theta", "phi", "psi"]
                .map(|n| pt.read_1d(&format!("{group}/{n}"), Some(len)).unwrap())
                .to_vec();
            let mut seen = 0;
            for index in 0..len.div_ceil(geometry.chunk_samples) {
                let start = e.expand_chunk(d, index, true, &mut buf).unwrap();
                let r = start..start + buf.pixels.len();
                assert_eq!(buf.pixels, pixels[r.clone()]);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let flat =
                    |w: &[[f64; 3]]| w.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(flat(&buf.weights), flat(&weights[r.clone()]));
                assert_eq!(bits(&buf.theta), bits(&angles[0][r.clone()]));
                assert_eq!(bits(&buf.phi), bits(&angles[1][r.clone()]));
                assert_eq!(bits(&buf.psi), bits(&angles[2][r.clone()]));
                seen += buf.pixels.len();
            }
            assert_eq!(seen, len);
        }
    }
}

/// The outputs recorded for `unit` of `stage` by its latest done record: (path, bytes).
fn recorded_outputs(run_dir: &Path, stage: &str, unit: &str) -> Vec<(PathBuf, u64)> {
    let record = ledger(run_dir, stage)
        .into_iter()
        .rfind(|r| r["unit"] == unit && r["outcome"] == "done")
        .unwrap_or_else(|| panic!("{stage}[{unit}] not recorded done"));
    record["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("{stage}[{unit}] records no outputs: {record}"))
        .iter()
        .map(|o| {
            (
                PathBuf::from(o["path"].as_str().unwrap()),
                o["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_deleted_or_truncated_output_is_made_again_with_its_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let list = simulate(tmp.path(), SIM);
    let tables = tables(&list, "");
    let cfg = chain_config(tmp.path(), "chain.toml", &tables[..2]);
    let run_dir = tmp.path().join("run");
    let out = run_chain(&cfg, &run_dir, 3, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));

    // One pointing output deleted, one calibrated output truncated.
    let pointing = recorded_outputs(&run_dir, "pointing", "obs=0001");
    let calibrated = recorded_outputs(&run_dir, "calibrate", "obs=0003");
    assert!(!pointing.is_empty() && !calibrated.is_empty());
    std::fs::remove_file(&pointing[0].0).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&calibrated[0].0)
        .unwrap();
    file.set_len(calibrated[0].1 / 2).unwrap();
    drop(file);

    // skypipe-status says so before the rerun.
    let status = run(direct(
        Path::new(env!("CARGO_BIN_EXE_skypipe-status")),
        &[&s(&run_dir)],
    ));
    let status = text(&status);
    assert!(!status.contains("complete;"), "{status}");
    assert!(
        status.contains("output changed: obs=0001") && status.contains("missing"),
        "{status}"
    );
    assert!(status.contains("output changed: obs=0003"), "{status}");

    // The rerun makes exactly those units again, and the reader of the remade pointing.
    let out = run_chain(&cfg, &run_dir, 3, &[]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    let rerun = |stage: &str| -> Vec<String> {
        let mut v: Vec<String> = ledger(&run_dir, stage)
            .into_iter()
            .filter(|r| r["invocation"] == 2)
            .map(|r| r["unit"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(rerun("pointing"), vec!["obs=0001"], "{}", text(&out));
    assert_eq!(
        rerun("calibrate"),
        vec!["obs=0001", "obs=0003"],
        "{}",
        text(&out)
    );
    assert!(text(&out).contains(&s(&pointing[0].0)), "{}", text(&out));
    for (path, bytes) in pointing.iter().chain(&calibrated) {
        assert_eq!(std::fs::metadata(path).unwrap().len(), *bytes, "{path:?}");
    }
    let report = report(&run_dir);
    assert_eq!(report["outputs_changed"], 2, "{report}");
    assert_eq!(report["inputs_remade"], 1, "{report}");

    // With --no-verify a changed output is left alone.
    std::fs::remove_file(&pointing[0].0).unwrap();
    let out = run_chain(&cfg, &run_dir, 2, &["--no-verify"]);
    assert_eq!(code(&out.status), 0, "{}", text(&out));
    assert!(rerun("pointing").len() == 1 && !pointing[0].0.exists());
}
