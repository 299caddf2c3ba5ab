//! Registry behaviour: overlap queries against brute force, upserts, reopening, concurrency,
//! and rejection of bad input.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use common::Region;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skypipe_registry::{
    Calibration, CcdFit, CcdRecord, CcdStatus, CoaddRecord, ConvexPolygon, GeometryError,
    MosaicWcs, MultibandRecord, PatchId, RecordError, Registry, RegistryError, SCHEMA_VERSION,
    SkyMap, SkyMapConfig, SkyPoint, WarpRecord,
};

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("registry.sqlite3")
}

fn keys(records: &[CcdRecord]) -> BTreeSet<(u64, u32)> {
    records.iter().map(|r| (r.visit, r.ccd)).collect()
}

fn sp(ra: f64, dec: f64) -> SkyPoint {
    SkyPoint::new(ra, dec).unwrap()
}

/// A record with axis-aligned corners [ra0, ra1] × [dec0, dec1].
fn square_record(
    visit: u64,
    ccd: u32,
    band: &str,
    ra0: f64,
    dec0: f64,
    ra1: f64,
    dec1: f64,
) -> CcdRecord {
    CcdRecord {
        visit,
        ccd,
        band: band.into(),
        exposure_time: 30.0,
        psf_fwhm: 3.0,
        corners: [sp(ra0, dec0), sp(ra1, dec0), sp(ra1, dec1), sp(ra0, dec1)],
        calexp_path: format!("calexp/{visit}-{ccd}.fits").into(),
        catalog_path: format!("src/{visit}-{ccd}.fits").into(),
        calibration: None,
        status: CcdStatus::Processed,
    }
}

/// The brute-force answer: the exact test over every stored row.
fn brute_force(
    all: &[(CcdRecord, ConvexPolygon)],
    q: &ConvexPolygon,
    band: Option<&str>,
) -> BTreeSet<(u64, u32)> {
    all.iter()
        .filter(|(r, p)| band.is_none_or(|b| r.band == b) && p.intersects(q))
        .map(|(r, _)| (r.visit, r.ccd))
        .collect()
}

#[test]
fn overlap_queries_equal_brute_force_on_random_polygons() {
    let mut rng = ChaCha8Rng::seed_from_u64(20240611);
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(db(&dir)).unwrap();

    // 800 CCDs: hot spots at RA = 0 and both poles (some with a corner exactly on the pole),
    // the rest anywhere; written in batches of 100.
    let records: Vec<CcdRecord> = (0..800u64)
        .map(|i| {
            let region = common::region(&mut rng);
            common::ccd_record(&mut rng, i / 10, (i % 10) as u32, region)
        })
        .collect();
    for batch in records.chunks(100) {
        reg.insert_ccds(batch).unwrap();
    }
    assert_eq!(reg.count().unwrap(), 800);
    let on_pole = records
        .iter()
        .filter(|r| r.corners.iter().any(|c| c.dec().abs() == 90.0))
        .count();
    assert!(on_pole >= 5, "only {on_pole} CCDs with a corner on a pole");

    let stored: Vec<(CcdRecord, ConvexPolygon)> = reg
        .all()
        .unwrap()
        .into_iter()
        .map(|r| {
            let p = r.region().unwrap();
            (r, p)
        })
        .collect();
    assert_eq!(stored.len(), 800);

    // 500 queries: CCD-sized, patch-sized and tract/cap-sized, 3-8 vertices.
    let mut stats = [0usize; 4]; // nonempty queries per region
    let mut total_hits = 0;
    let mut empty = 0;
    for q in 0..500 {
        let region = common::region(&mut rng);
        let c = common::centre(&mut rng, region);
        let r = match q % 3 {
            0 => rng.random_range(0.05..0.2),
            1 => rng.random_range(0.2..1.0),
            _ => rng.random_range(1.0..20.0),
        };
        let n = rng.random_range(3..=8);
        let poly = common::cyclic_polygon(&mut rng, c, r, n);
        let want = brute_force(&stored, &poly, None);
        let got = reg.overlapping(&poly).unwrap();
        assert_eq!(keys(&got), want, "query {q} {:?}", poly.vertices());
        assert_eq!(got.len(), want.len(), "duplicates in query {q}");
        // Results come back in (visit, ccd) order.
        assert!(
            got.windows(2)
                .all(|w| (w[0].visit, w[0].ccd) < (w[1].visit, w[1].ccd))
        );
        let band = ["g", "r", "i"][q % 3];
        let got_band = reg.overlapping_in_band(&poly, band).unwrap();
        assert_eq!(
            keys(&got_band),
            brute_force(&stored, &poly, Some(band)),
            "query {q} band {band}"
        );
        if want.is_empty() {
            empty += 1;
        } else {
            stats[region as usize] += 1;
        }
        total_hits += want.len();
    }
    // The comparison means something only if both outcomes are common in every hot spot.
    assert!(empty >= 50, "{empty} empty queries");
    for (region, n) in [Region::RaZero, Region::North, Region::South]
        .iter()
        .zip(stats)
    {
        assert!(n >= 30, "{region:?}: only {n} queries with hits");
    }
    assert!(total_hits >= 2000, "{total_hits} hits");

    // Caps centred exactly on each pole and a polygon with a vertex on the pole.
    for (c, want_min) in [(sp(0.0, 90.0), 1), (sp(0.0, -90.0), 1)] {
        let cap = common::cyclic_polygon(&mut rng, c, 0.5, 6);
        let got = reg.overlapping(&cap).unwrap();
        assert_eq!(keys(&got), brute_force(&stored, &cap, None));
        assert!(got.len() >= want_min);
    }
    let wedge = ConvexPolygon::from_radec(&[(10.0, 89.0), (100.0, 89.0), (0.0, 90.0)]).unwrap();
    assert_eq!(
        keys(&reg.overlapping(&wedge).unwrap()),
        brute_force(&stored, &wedge, None)
    );
}

#[test]
fn known_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(db(&dir)).unwrap();
    reg.insert_ccds(&[
        square_record(1, 0, "r", 359.8, -0.1, 359.9, 0.1), // west of RA = 0
        square_record(1, 1, "r", 0.1, -0.1, 0.2, 0.1),     // east of RA = 0
        square_record(2, 0, "g", 359.95, -0.05, 0.05, 0.05), // across RA = 0
        square_record(3, 0, "r", 180.0, -0.1, 180.1, 0.1), // far away
    ])
    .unwrap();
    // A cap around the north pole.
    let cap = CcdRecord {
        corners: [
            sp(0.0, 89.9),
            sp(90.0, 89.9),
            sp(180.0, 89.9),
            sp(270.0, 89.9),
        ],
        ..square_record(4, 0, "i", 0.0, 0.0, 1.0, 1.0)
    };
    reg.insert_ccds(&[cap]).unwrap();

    let q = |v: &[(f64, f64)]| {
        let p = ConvexPolygon::from_radec(v).unwrap();
        keys(&reg.overlapping(&p).unwrap())
    };
    // A gap between 359.9 and 0.1 contains only the CCD across RA = 0.
    assert_eq!(
        q(&[(359.91, -1.0), (0.09, -1.0), (0.09, 1.0), (359.91, 1.0)]),
        [(2, 0)].into()
    );
    // Sharing the edge RA = 359.9 exactly counts as touching.
    assert_eq!(
        q(&[(359.9, -1.0), (359.92, -1.0), (359.92, 1.0), (359.9, 1.0)]),
        [(1, 0)].into()
    );
    // A wide query across RA = 0 finds all three.
    assert_eq!(
        q(&[(359.0, -1.0), (1.0, -1.0), (1.0, 1.0), (359.0, 1.0)]),
        [(1, 0), (1, 1), (2, 0)].into()
    );
    // Near the pole at RA = 45: the cap's edge bulges to Dec 89.9293, so 89.92 misses it.
    assert_eq!(
        q(&[(44.0, 89.91), (46.0, 89.91), (46.0, 89.92), (44.0, 89.92)]),
        BTreeSet::new()
    );
    assert_eq!(
        q(&[(44.0, 89.92), (46.0, 89.92), (46.0, 89.94), (44.0, 89.94)]),
        [(4, 0)].into()
    );
    // The other side of the sky.
    assert_eq!(
        q(&[(179.0, -1.0), (181.0, -1.0), (181.0, 1.0), (179.0, 1.0)]),
        [(3, 0)].into()
    );

    assert_eq!(reg.count().unwrap(), 5);
    assert_eq!(keys(&reg.by_visit(1).unwrap()), [(1, 0), (1, 1)].into());
    assert_eq!(
        keys(&reg.by_band("r").unwrap()),
        [(1, 0), (1, 1), (3, 0)].into()
    );
    assert!(reg.by_band("z").unwrap().is_empty());
    assert!(reg.by_visit(99).unwrap().is_empty());
    assert!(reg.get(u64::MAX, 0).unwrap().is_none());
    let cross =
        ConvexPolygon::from_radec(&[(359.0, -1.0), (1.0, -1.0), (1.0, 1.0), (359.0, 1.0)]).unwrap();
    assert_eq!(
        keys(&reg.overlapping_in_band(&cross, "r").unwrap()),
        [(1, 0), (1, 1)].into()
    );
}

#[test]
fn records_round_trip_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(db(&dir)).unwrap();
    let mut recs: Vec<CcdRecord> = (0..20)
        .map(|i| common::ccd_record(&mut rng, 1000 + i, 3, Region::Anywhere))
        .collect();
    recs[1].calibration = Some(Calibration {
        wcs: "CTYPE1  = 'RA---TAN-SIP'".into(),
        zero_point: 27.123456789,
    });
    recs[1].status = CcdStatus::Calibrated;
    recs[2].status = CcdStatus::Rejected;
    recs[3].visit = i64::MAX as u64;
    recs[4].band = "N921 narrow-band ✓".into();
    reg.insert_ccds(&recs).unwrap();
    let mut want = recs.clone();
    want.sort_by_key(|r| (r.visit, r.ccd));
    assert_eq!(reg.all().unwrap(), want);
    for r in &recs {
        assert_eq!(reg.get(r.visit, r.ccd).unwrap().as_ref(), Some(r));
    }
}

#[test]
fn upsert_is_idempotent_and_moves_the_index() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(db(&dir)).unwrap();
    let recs: Vec<CcdRecord> = (0..50)
        .map(|i| common::ccd_record(&mut rng, i / 5, (i % 5) as u32, Region::RaZero))
        .collect();
    reg.insert_ccds(&recs).unwrap();
    let first = reg.all().unwrap();
    // Rerunning every unit (same batch, then in different batches) changes nothing.
    reg.insert_ccds(&recs).unwrap();
    for chunk in recs.chunks(7).rev() {
        reg.insert_ccds(chunk).unwrap();
    }
    assert_eq!(reg.count().unwrap(), 50);
    assert_eq!(reg.all().unwrap(), first);

    // A rerun that produces a different result replaces the row and moves its index box.
    let old = recs[0].clone();
    let old_region = old.region().unwrap();
    let mut moved = square_record(old.visit, old.ccd, "z", 120.0, 30.0, 120.2, 30.1);
    moved.calibration = Some(Calibration {
        wcs: "W".into(),
        zero_point: 31.0,
    });
    moved.status = CcdStatus::Calibrated;
    reg.insert_ccds(&[moved.clone()]).unwrap();
    assert_eq!(reg.count().unwrap(), 50);
    assert_eq!(reg.get(old.visit, old.ccd).unwrap(), Some(moved.clone()));
    assert!(!keys(&reg.overlapping(&old_region).unwrap()).contains(&(old.visit, old.ccd)));
    let new_region = moved.region().unwrap();
    assert_eq!(
        keys(&reg.overlapping(&new_region).unwrap()),
        [(old.visit, old.ccd)].into()
    );

    // Duplicates within one batch: the last one wins.
    let mut a = recs[1].clone();
    a.psf_fwhm = 1.5;
    let mut b = recs[1].clone();
    b.psf_fwhm = 2.5;
    reg.insert_ccds(&[a, b.clone()]).unwrap();
    assert_eq!(reg.get(b.visit, b.ccd).unwrap(), Some(b));
    assert_eq!(reg.count().unwrap(), 50);
}

#[test]
fn reopen_existing_database() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let recs: Vec<CcdRecord> = (0..30)
        .map(|i| common::ccd_record(&mut rng, i, 0, Region::North))
        .collect();
    {
        let mut reg = Registry::open(&path).unwrap();
        reg.insert_ccds(&recs[..20]).unwrap();
    }
    let cap = ConvexPolygon::from_radec(&[(0.0, 88.0), (120.0, 88.0), (240.0, 88.0)]).unwrap();
    let before = {
        let ro = Registry::open_read_only(&path).unwrap();
        assert_eq!(ro.path(), path.as_path());
        assert_eq!(ro.count().unwrap(), 20);
        ro.overlapping(&cap).unwrap()
    };
    assert!(!before.is_empty());
    let mut reg = Registry::open(&path).unwrap();
    assert_eq!(reg.count().unwrap(), 20);
    assert_eq!(reg.overlapping(&cap).unwrap(), before);
    reg.insert_ccds(&recs[20..]).unwrap();
    drop(reg);
    let ro = Registry::open_read_only(&path).unwrap();
    assert_eq!(ro.count().unwrap(), 30);
    assert_eq!(keys(&ro.all().unwrap()), keys(&recs));
    // The file really is in WAL mode.
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn reader_sees_whole_batches_while_the_writer_writes() {
    const BATCH: usize = 25;
    const BATCHES: usize = 40;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let recs: Vec<CcdRecord> = (0..(BATCH * BATCHES) as u64)
        .map(|i| common::ccd_record(&mut rng, i / 10, (i % 10) as u32, Region::RaZero))
        .collect();
    let mut writer = Registry::open(&path).unwrap();
    let (tx, rx) = mpsc::channel::<usize>();
    let reader = {
        let path = path.clone();
        thread::spawn(move || {
            let reg = Registry::open_read_only(&path).unwrap();
            let query =
                ConvexPolygon::from_radec(&[(359.0, -2.0), (1.0, -2.0), (1.0, 2.0), (359.0, 2.0)])
                    .unwrap();
            let mut seen = Vec::new();
            loop {
                // Every read succeeds while the writer is busy, and sees whole batches only.
                let n = reg.count().unwrap() as usize;
                assert_eq!(n % BATCH, 0, "saw a partial batch: {n} rows");
                assert!(seen.last().is_none_or(|&last| n >= last));
                reg.overlapping(&query).unwrap();
                seen.push(n);
                // Wait for the writer's next commit (or stop after the last).
                if n == BATCH * BATCHES {
                    return seen;
                }
                let _ = rx.recv_timeout(std::time::Duration::from_millis(50));
            }
        })
    };
    for batch in recs.chunks(BATCH) {
        writer.insert_ccds(batch).unwrap();
        let _ = tx.send(0);
    }
    let seen = reader.join().unwrap();
    assert_eq!(*seen.last().unwrap(), BATCH * BATCHES);
}

#[test]
fn invalid_records_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut reg = Registry::open(&path).unwrap();
    let good = square_record(5, 6, "r", 10.0, 10.0, 10.2, 10.1);
    // (how to break a good record, what the error must say)
    type Case = (fn(&mut CcdRecord), fn(&RecordError) -> bool);
    let cases: &[Case] = &[
        (
            |r| r.psf_fwhm = f64::NAN,
            |e| {
                matches!(
                    e,
                    RecordError::NotPositive {
                        field: "psf fwhm",
                        ..
                    }
                )
            },
        ),
        (
            |r| r.psf_fwhm = 0.0,
            |e| {
                matches!(
                    e,
                    RecordError::NotPositive {
                        field: "psf fwhm",
                        ..
                    }
                )
            },
        ),
        (
            |r| r.exposure_time = -1.0,
            |e| {
                matches!(
                    e,
                    RecordError::NotPositive {
                        field: "exposure time",
                        ..
                    }
                )
            },
        ),
        (
            |r| r.exposure_time = f64::INFINITY,
            |e| matches!(e, RecordError::NotPositive { .. }),
        ),
        (|r| r.band.clear(), |e| *e == RecordError::EmptyBand),
        (
            |r| r.visit = i64::MAX as u64 + 1,
            |e| matches!(e, RecordError::VisitTooLarge(_)),
        ),
        (
            |r| r.calexp_path = PathBuf::new(),
            |e| {
                matches!(
                    e,
                    RecordError::BadPath {
                        field: "calexp",
                        ..
                    }
                )
            },
        ),
        (
            |r| r.status = CcdStatus::Calibrated,
            |e| *e == RecordError::MissingCalibration,
        ),
        (
            |r| {
                r.calibration = Some(Calibration {
                    wcs: String::new(),
                    zero_point: f64::NAN,
                })
            },
            |e| matches!(e, RecordError::ZeroPointNotFinite(_)),
        ),
        // Bow-tie corners.
        (
            |r| r.corners.swap(1, 2),
            |e| matches!(e, RecordError::Corners(GeometryError::NotConvex { .. })),
        ),
        // Two corners in the same place.
        (
            |r| r.corners[1] = r.corners[0],
            |e| {
                matches!(
                    e,
                    RecordError::Corners(GeometryError::CoincidentVertices { .. })
                )
            },
        ),
    ];
    for (i, (break_it, check)) in cases.iter().enumerate() {
        let mut bad = good.clone();
        break_it(&mut bad);
        let batch = [square_record(1, 1, "r", 0.0, 0.0, 0.1, 0.1), bad];
        let err = reg.insert_ccds(&batch).unwrap_err();
        match &err {
            RegistryError::InvalidRecord {
                path: p,
                visit,
                ccd,
                source,
            } => {
                assert_eq!(p, &path);
                assert_eq!((*visit, *ccd), (batch[1].visit, 6));
                assert!(check(source), "case {i}: {source:?}");
            }
            other => panic!("case {i}: {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains("ccd=6"),
            "{msg}"
        );
        assert_eq!(reg.count().unwrap(), 0, "case {i} wrote part of its batch");
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut bad = good.clone();
        bad.catalog_path = PathBuf::from(std::ffi::OsStr::from_bytes(b"src/\xff.fits"));
        assert!(matches!(
            reg.insert_ccds(&[bad]),
            Err(RegistryError::InvalidRecord {
                source: RecordError::BadPath {
                    field: "catalog",
                    ..
                },
                ..
            })
        ));
    }
    reg.insert_ccds(&[good]).unwrap();
    assert_eq!(reg.count().unwrap(), 1);
}

fn assert_names_path(err: &RegistryError, path: &Path) {
    let msg = err.to_string();
    assert!(msg.starts_with(path.to_str().unwrap()), "{msg}");
}

#[test]
fn open_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();

    // Not a database at all.
    let garbage = dir.path().join("garbage.sqlite3");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = Registry::open(&garbage).unwrap_err();
    assert!(matches!(err, RegistryError::Sqlite { .. }), "{err:?}");
    assert_names_path(&err, &garbage);

    // A missing file cannot be opened read-only.
    let missing = dir.path().join("missing.sqlite3");
    let err = Registry::open_read_only(&missing).unwrap_err();
    assert!(matches!(err, RegistryError::Sqlite { .. }), "{err:?}");
    assert_names_path(&err, &missing);
    assert!(!missing.exists());

    // Someone else's database.
    let other = dir.path().join("other.sqlite3");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let journal = |p: &Path| -> String {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    };
    for err in [
        Registry::open(&other).unwrap_err(),
        Registry::open_read_only(&other).unwrap_err(),
    ] {
        assert!(matches!(err, RegistryError::NotARegistry { .. }), "{err:?}");
        assert_names_path(&err, &other);
    }
    // ... and left untouched (still in rollback-journal mode).
    assert_eq!(journal(&other), "delete");

    // A registry from a future version.
    let future = db(&dir);
    drop(Registry::open(&future).unwrap());
    rusqlite::Connection::open(&future)
        .unwrap()
        .execute(
            "UPDATE schema_version SET version = ?1",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    for err in [
        Registry::open(&future).unwrap_err(),
        Registry::open_read_only(&future).unwrap_err(),
    ] {
        assert!(
            matches!(err, RegistryError::SchemaVersion { found: Some(v), expected: SCHEMA_VERSION, .. } if v == SCHEMA_VERSION + 1),
            "{err:?}"
        );
        assert!(err.to_string().contains("needs a newer skypipe"), "{err}");
        assert_names_path(&err, &future);
    }

    // A read-only connection cannot write.
    let ro_path = dir.path().join("ro.sqlite3");
    drop(Registry::open(&ro_path).unwrap());
    let mut ro = Registry::open_read_only(&ro_path).unwrap();
    let err = ro
        .insert_ccds(&[square_record(1, 1, "r", 0.0, 0.0, 0.1, 0.1)])
        .unwrap_err();
    assert!(matches!(err, RegistryError::Sqlite { .. }), "{err:?}");
    assert_names_path(&err, &ro_path);
}

#[test]
fn corrupt_rows_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut reg = Registry::open(&path).unwrap();
    reg.insert_ccds(&[square_record(8, 9, "r", 10.0, 10.0, 10.2, 10.1)])
        .unwrap();
    // Hand-edit the row: two corners made equal.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE ccd SET ra1 = ra0, dec1 = dec0", [])
        .unwrap();
    let q =
        ConvexPolygon::from_radec(&[(9.0, 9.0), (11.0, 9.0), (11.0, 11.0), (9.0, 11.0)]).unwrap();
    let err = reg.overlapping(&q).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::CorruptRow {
                visit: 8,
                ccd: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names_path(&err, &path);
    // Only one calibration column set.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE ccd SET zero_point = 27.0", [])
        .unwrap();
    let err = reg.all().unwrap_err();
    assert!(matches!(err, RegistryError::CorruptRow { .. }), "{err:?}");
}

/// The version-1 schema exactly as version-1 builds created it (kept here to build v1 files).
const SCHEMA_V1_DDL: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE ccd (
    id            INTEGER PRIMARY KEY,
    visit         INTEGER NOT NULL CHECK (visit >= 0),
    ccd           INTEGER NOT NULL CHECK (ccd >= 0),
    band          TEXT    NOT NULL,
    exposure_time REAL    NOT NULL,
    psf_fwhm      REAL    NOT NULL,
    ra0 REAL NOT NULL, dec0 REAL NOT NULL,
    ra1 REAL NOT NULL, dec1 REAL NOT NULL,
    ra2 REAL NOT NULL, dec2 REAL NOT NULL,
    ra3 REAL NOT NULL, dec3 REAL NOT NULL,
    calexp_path   TEXT    NOT NULL,
    catalog_path  TEXT    NOT NULL,
    wcs           TEXT,
    zero_point    REAL,
    status        TEXT    NOT NULL CHECK (status IN ('processed', 'calibrated', 'rejected')),
    UNIQUE (visit, ccd)
);
CREATE INDEX ccd_band ON ccd (band);
CREATE VIRTUAL TABLE ccd_box USING rtree (id, min_x, max_x, min_y, max_y, min_z, max_z);
INSERT INTO schema_version (version) VALUES (1);
INSERT INTO ccd VALUES (1, 7, 3, 'r', 30.0, 3.1, 359.9, 0.0, 0.1, 0.0, 0.1, 0.2, 359.9, 0.2,
                        'calexp/7-3.fits', 'src/7-3.fits', 'WCS', 27.5, 'calibrated');
INSERT INTO ccd_box VALUES (1, 0.99, 1.0, -0.002, 0.002, -1e-9, 0.0035);
";

/// Table and index definitions of a database, sorted.
fn schema_of(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT coalesce(sql, name) FROM sqlite_master ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A version-1 file: a reader asks for migration, a writer migrates it in place keeping its
/// rows, and the result has the same schema as a new file.
#[test]
fn version_1_file_is_migrated_by_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1.sqlite3");
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch(SCHEMA_V1_DDL)
        .unwrap();
    let err = Registry::open_read_only(&old).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NeedsMigration {
                found: 1,
                expected: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names_path(&err, &old);
    assert!(err.to_string().contains("open it for writing"), "{err}");

    let reg = Registry::open(&old).unwrap();
    let rec = reg.get(7, 3).unwrap().unwrap();
    assert_eq!(rec.status, CcdStatus::Calibrated);
    assert_eq!(rec.calibration.unwrap().zero_point, 27.5);
    let q = ConvexPolygon::from_radec(&[(359.95, 0.05), (0.05, 0.05), (0.05, 0.1), (359.95, 0.1)])
        .unwrap();
    assert_eq!(
        keys(&reg.overlapping(&q).unwrap()),
        BTreeSet::from([(7, 3)])
    );
    drop(reg);
    let version: i64 = rusqlite::Connection::open(&old)
        .unwrap()
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Readers accept it now; the schema equals a freshly created one.
    Registry::open_read_only(&old).unwrap();
    let fresh = db(&dir);
    drop(Registry::open(&fresh).unwrap());
    assert_eq!(schema_of(&old), schema_of(&fresh));
}

/// A small sky map whose patches are a few degrees across (a few thousand patches in all, so
/// brute force over every patch stays cheap).
fn coarse_skymap() -> SkyMap {
    SkyMap::new(SkyMapConfig {
        rings: 12,
        pixel_scale: 36.0,
        patch_size: 300,
        border: 30,
    })
    .unwrap()
}

/// Registry-driven planning equals brute force: for every CCD its (tract, patch) list, and
/// for every patch its CCDs, on random footprints concentrated at RA = 0 and the poles.
#[test]
fn planning_equals_brute_force_over_every_patch() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(db(&dir)).unwrap();
    let map = coarse_skymap();
    reg.set_skymap(&map).unwrap();
    reg.set_skymap(&map).unwrap(); // idempotent
    let patches: Vec<(PatchId, ConvexPolygon)> = map
        .tracts()
        .flat_map(|t| {
            (0..t.patches_y).flat_map(move |y| {
                let t = t.clone();
                (0..t.patches_x).map(move |x| (PatchId { tract: t.id, x, y }, t.patch_outer(x, y)))
            })
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let mut records: Vec<CcdRecord> = (0..90)
        .map(|i| {
            let region = common::region(&mut rng);
            let c = common::centre(&mut rng, region);
            let (w, h) = (rng.random_range(0.3..4.0), rng.random_range(0.3..4.0));
            let pts = common::rectangle(c, w, h, rng.random_range(0.0..360.0));
            let band = ["g", "r"][i as usize % 2];
            let mut r = square_record(i, 0, band, 0.0, 0.0, 0.1, 0.1);
            r.corners = [pts[0], pts[1], pts[2], pts[3]];
            r
        })
        .collect();
    // One CCD straddling RA = 0 on the equator, inside the tract centred on RA = 0.
    records.push(square_record(1000, 0, "r", 359.0, -0.5, 1.0, 0.5));
    reg.insert_ccds(&records).unwrap();
    let regions: Vec<(CcdRecord, ConvexPolygon)> = records
        .iter()
        .map(|r| (r.clone(), r.region().unwrap()))
        .collect();

    let mut used = BTreeSet::new();
    for (r, poly) in &regions {
        let planned = reg.patches_of_ccd(r.visit, r.ccd).unwrap();
        let mut brute: Vec<PatchId> = patches
            .iter()
            .filter(|(_, p)| p.intersects(poly))
            .map(|(id, _)| *id)
            .collect();
        brute.sort();
        assert_eq!(planned, brute, "visit {}", r.visit);
        assert!(!planned.is_empty());
        used.extend(planned);
    }
    let zero_tract = map.tract_of(sp(0.0, 0.0));
    assert_eq!(map.tract(zero_tract).unwrap().centre.ra(), 0.0);
    let straddling = reg.patches_of_ccd(1000, 0).unwrap();
    assert!(
        straddling.iter().any(|p| p.tract == zero_tract),
        "{straddling:?}"
    );

    // Patch -> CCDs for every patch any CCD touches, plus a sample of the others.
    let sample = patches.iter().step_by(97).map(|(id, _)| *id);
    for id in used.iter().copied().chain(sample) {
        let outer = &patches.iter().find(|(p, _)| *p == id).unwrap().1;
        let planned = keys(&reg.ccds_overlapping_patch(id).unwrap());
        assert_eq!(planned, brute_force(&regions, outer, None), "{id:?}");
        let planned = keys(&reg.ccds_overlapping_patch_in_band(id, "g").unwrap());
        assert_eq!(planned, brute_force(&regions, outer, Some("g")), "{id:?}");
    }
}

/// Fits replace the sky region and calibration, move the index, and are dropped when
/// single-frame processing reruns; bad fits and unknown CCDs are refused naming the file.
#[test]
fn fits_round_trip_and_move_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut reg = Registry::open(&path).unwrap();
    let rec = square_record(5, 2, "i", 10.0, 10.0, 10.2, 10.2);
    reg.insert_ccds(std::slice::from_ref(&rec)).unwrap();
    let fit = CcdFit {
        visit: 5,
        ccd: 2,
        wcs: "CTYPE1  = 'RA---TAN-SIP'".into(),
        corners: [
            sp(10.5, 10.0),
            sp(10.7, 10.0),
            sp(10.7, 10.2),
            sp(10.5, 10.2),
        ],
        zero_point: 28.1,
        zero_point_err: 0.01,
        astrometric_scatter: 0.03,
        matches: 412,
    };
    reg.record_fits(std::slice::from_ref(&fit)).unwrap();
    assert_eq!(reg.fit(5, 2).unwrap().as_ref(), Some(&fit));
    let got = reg.get(5, 2).unwrap().unwrap();
    assert_eq!(got.status, CcdStatus::Calibrated);
    let at = |ra: f64| {
        ConvexPolygon::from_radec(&[
            (ra, 10.05),
            (ra + 0.05, 10.05),
            (ra + 0.05, 10.1),
            (ra, 10.1),
        ])
        .unwrap()
    };
    assert!(reg.overlapping(&at(10.05)).unwrap().is_empty());
    assert_eq!(reg.overlapping(&at(10.55)).unwrap().len(), 1);
    // Rerunning single-frame processing resets the row and drops the stale fit.
    reg.insert_ccds(&[rec]).unwrap();
    assert_eq!(reg.fit(5, 2).unwrap(), None);

    let unknown = CcdFit {
        visit: 6,
        ..fit.clone()
    };
    let err = reg.record_fits(&[fit.clone(), unknown]).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::UnknownCcd {
                visit: 6,
                ccd: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names_path(&err, &path);
    assert_eq!(
        reg.fit(5, 2).unwrap(),
        None,
        "nothing of the batch is written"
    );
    for bad in [
        CcdFit {
            zero_point_err: -1.0,
            ..fit.clone()
        },
        CcdFit {
            astrometric_scatter: f64::NAN,
            ..fit.clone()
        },
        CcdFit {
            wcs: " ".into(),
            ..fit.clone()
        },
        CcdFit {
            zero_point: f64::INFINITY,
            ..fit.clone()
        },
    ] {
        let err = reg.record_fits(&[bad]).unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::InvalidRecord {
                    visit: 5,
                    ccd: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_names_path(&err, &path);
    }
}

/// Sky map, mosaic WCS and per-patch products round-trip; conflicts and unknown patches are
/// refused naming the file.
#[test]
fn skymap_and_patch_products_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut reg = Registry::open(&path).unwrap();
    let patch = PatchId {
        tract: 3,
        x: 1,
        y: 2,
    };
    let warp = WarpRecord {
        patch,
        visit: 1,
        ccd: 4,
        path: "warp/3-1-2/1-4.fits".into(),
        good_pixels: 81_000,
    };
    let err = reg.record_warps(std::slice::from_ref(&warp)).unwrap_err();
    assert!(matches!(err, RegistryError::NoSkyMap { .. }), "{err:?}");
    assert_names_path(&err, &path);

    let map = coarse_skymap();
    reg.set_skymap(&map).unwrap();
    assert_eq!(reg.skymap().unwrap().as_ref(), Some(&map));
    let other = SkyMap::new(SkyMapConfig {
        border: 20,
        ..*map.config()
    })
    .unwrap();
    let err = reg.set_skymap(&other).unwrap_err();
    assert!(
        matches!(err, RegistryError::SkyMapConflict { .. }),
        "{err:?}"
    );
    assert_names_path(&err, &path);

    reg.insert_ccds(&[square_record(1, 4, "g", 1.0, 1.0, 1.2, 1.2)])
        .unwrap();
    // Relative paths are stored made absolute against the writer's working directory.
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap();
    reg.record_warps(std::slice::from_ref(&warp)).unwrap();
    assert_eq!(
        reg.warps(patch).unwrap(),
        vec![WarpRecord {
            path: absolute(&warp.path),
            ..warp.clone()
        }]
    );
    let coadd = CoaddRecord {
        patch,
        band: "g".into(),
        path: "coadd/3-1-2/g.fits".into(),
        inputs: 1,
        depth: 25.3,
    };
    reg.record_coadds(std::slice::from_ref(&coadd)).unwrap();
    let stored = CoaddRecord {
        path: absolute(&coadd.path),
        ..coadd.clone()
    };
    assert_eq!(reg.coadds(patch).unwrap(), vec![stored.clone()]);
    assert_eq!(reg.all_coadds().unwrap(), vec![stored]);
    let cat = MultibandRecord {
        patch,
        path: "multiband/3-1-2.fits".into(),
        objects: 1234,
    };
    reg.record_multiband(std::slice::from_ref(&cat)).unwrap();
    assert_eq!(
        reg.multiband(patch).unwrap(),
        Some(MultibandRecord {
            path: absolute(&cat.path),
            ..cat
        })
    );
    let mosaic = MosaicWcs {
        visit: 1,
        ccd: 4,
        tract: 3,
        wcs: "CTYPE1 = 'RA---TAN'".into(),
    };
    reg.record_mosaic_wcs(std::slice::from_ref(&mosaic))
        .unwrap();
    assert_eq!(
        reg.mosaic_wcs(1, 4, 3).unwrap().as_deref(),
        Some(mosaic.wcs.as_str())
    );
    assert_eq!(reg.mosaic_wcs(1, 4, 2).unwrap(), None);

    let nowhere = PatchId {
        tract: 3,
        x: 999,
        y: 0,
    };
    let err = reg
        .record_coadds(&[CoaddRecord {
            patch: nowhere,
            ..coadd.clone()
        }])
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnknownPatch { x: 999, .. }),
        "{err:?}"
    );
    assert_names_path(&err, &path);
    let err = reg
        .record_coadds(&[CoaddRecord {
            band: String::new(),
            ..coadd
        }])
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidPatchRow { .. }),
        "{err:?}"
    );
    let err = reg.ccds_overlapping_patch(nowhere).unwrap_err();
    assert!(matches!(err, RegistryError::UnknownPatch { .. }), "{err:?}");
}

/// A version-2 file (today's file without the raw-CCD tables): a writer adds them and the
/// result has the same schema as a new file, rows kept.
#[test]
fn version_2_file_is_migrated_by_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.sqlite3");
    let old = dir.path().join("v2.sqlite3");
    drop(Registry::open(&new).unwrap());
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch(SCHEMA_V1_DDL)
        .unwrap();
    // Migrate to version 3, then take the version-3 tables away again: a version-2 file.
    drop(Registry::open(&old).unwrap());
    let conn = rusqlite::Connection::open(&old).unwrap();
    conn.execute_batch(
        "DROP TABLE raw_ccd; DROP TABLE raw_box; UPDATE schema_version SET version = 2;",
    )
    .unwrap();
    drop(conn);
    let err = Registry::open_read_only(&old).unwrap_err();
    assert!(
        matches!(err, RegistryError::NeedsMigration { found: 2, .. }),
        "{err:?}"
    );
    let reg = Registry::open(&old).unwrap();
    assert_eq!(reg.get(7, 3).unwrap().unwrap().ccd, 3);
    assert_eq!(reg.raw_count().unwrap(), 0);
    drop(reg);
    assert_eq!(schema_of(&old), schema_of(&new));
}
