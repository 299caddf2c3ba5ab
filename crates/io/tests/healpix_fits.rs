//! `write_healpix_map` checked by the readers that matter: healpy and astropy (Debian's
//! `/usr/bin/python3` with python3-healpy, which the project's test command installs; a missing
//! healpy fails the test, it is never skipped) and this crate's own `FitsReader`.
//!
//! Maps at nside 4 (one pixel per table row) and 64 (1024 pixels per row), RING and NESTED, with
//! I/Q/U (float64, some pixels at healpy's UNSEEN), an int32 HITS and a float64 RCOND column. The expected values travel to Python as raw
//! little-endian float64 in file order, so every comparison is exact. Two maps carry
//! provenance, one in header cards and one with a `PROVENANCE` table after the map's.

use skypipe_io::Durability;
use skypipe_io::fits::{
    Card, Column, ColumnSpec, FitsReader, HEALPIX_EXTNAME, Hdu, HealpixHeader, write_healpix_map,
    write_healpix_map_blocks,
};
use skypipe_io::provenance::{MAX_INPUT_CARDS, Provenance};
use std::path::{Path, PathBuf};
use std::process::Command;

const PYTHON: &str = "/usr/bin/python3";
/// healpy's `UNSEEN` (the script checks that healpy agrees).
const UNSEEN: f64 = -1.6375e30;
const NAMES: [&str; 5] = ["I_STOKES", "Q_STOKES", "U_STOKES", "HITS", "RCOND"];

/// One map file to write and check.
struct Case {
    nside: u64,
    nested: bool,
    coordsys: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        nside: 4,
        nested: false,
        coordsys: "G",
    },
    Case {
        nside: 4,
        nested: true,
        coordsys: "E",
    },
    Case {
        nside: 64,
        nested: false,
        coordsys: "C",
    },
    Case {
        nside: 64,
        nested: true,
        coordsys: "G",
    },
];

const SCRIPT: &str = r#"
import sys
try:
    import numpy as np
    import healpy as hp
    from astropy.io import fits
except ImportError as e:
    print(f"cannot import healpy/astropy with {sys.executable}: {e}", file=sys.stderr)
    sys.exit(3)

assert hp.UNSEEN == -1.6375e30, hp.UNSEEN
names = ["I_STOKES", "Q_STOKES", "U_STOKES", "HITS", "RCOND"]
args = sys.argv[1:]
for k in range(0, len(args), 6):
    path, nside, nested, coordsys, expected, inputs = args[k:k + 6]
    nside, nested, inputs = int(nside), nested == "1", int(inputs)
    npix = 12 * nside * nside
    exp = np.fromfile(expected, dtype="<f8").reshape(5, npix)
    where = f"{path} (nside {nside}, nested {nested})"

    # As stored, without reordering.
    m = hp.read_map(path, field=(0, 1, 2), nest=None)
    assert m.dtype == np.float64 and m.shape == (3, npix), (where, m.dtype, m.shape)
    assert np.array_equal(m, exp[:3]), where

    # healpy reorders from the ORDERING keyword. nest2ring(nside, n) is the RING index of
    # NESTED pixel n, so a NESTED column e reads in RING order as r[nest2ring(n)] = e[n], and
    # a RING column e reads in NESTED order as r[n] = e[nest2ring(n)].
    n2r = hp.nest2ring(nside, np.arange(npix))
    if nested:
        ring = np.empty_like(exp[:3])
        ring[:, n2r] = exp[:3]
        nest = exp[:3]
    else:
        ring = exp[:3]
        nest = exp[:3][:, n2r]
    assert np.array_equal(hp.read_map(path, field=(0, 1, 2)), ring), where + " as RING"
    assert np.array_equal(hp.read_map(path, field=(0, 1, 2), nest=False), ring), where
    assert np.array_equal(hp.read_map(path, field=(0, 1, 2), nest=True), nest), where
    assert (m[0] == hp.UNSEEN).sum() > 0, where

    hits, h = hp.read_map(path, field=3, nest=None, h=True)
    assert hits.dtype.kind == "i" and hits.dtype.itemsize == 4, (where, hits.dtype)
    assert np.array_equal(hits, exp[3]), where
    rcond = hp.read_map(path, field=4, nest=None)
    assert np.array_equal(rcond, exp[4]), where
    h = dict(h)
    want = {
        "PIXTYPE": "HEALPIX", "ORDERING": "NESTED" if nested else "RING",
        "COORDSYS": coordsys, "NSIDE": nside, "FIRSTPIX": 0, "LASTPIX": npix - 1,
        "INDXSCHM": "IMPLICIT", "OBJECT": "FULLSKY",
        "TUNIT1": "K_CMB", "TUNIT2": "K_CMB", "TUNIT3": "K_CMB", "TUNIT5": "1",
        "STAGE": "mapmake", "TTYPE4": "HITS",
    }
    for key, value in want.items():
        assert h.get(key) == value, (where, key, h.get(key), value)
    assert "TUNIT4" not in h, where

    # astropy: standard-conforming, one table, one pixel per row, typed columns.
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert len(hdul) == (3 if inputs > 64 else 2), where
        assert hdul[0].header.get("SPNINPUT", 0) == inputs, where
        if inputs > 64:
            assert hdul[2].name == "PROVENANCE" and len(hdul[2].data) == inputs, where
        t = hdul[1]
        assert t.header["XTENSION"] == "BINTABLE" and t.header["EXTNAME"] == "HEALPIX", where
        assert t.columns.names == names, (where, t.columns.names)
        # healpy's own layout: 1024 pixels per row above 1024 pixels, else one.
        per_row = 1024 if npix > 1024 else 1
        prefix = "1024" if per_row > 1 else ""
        formats = [prefix + f for f in ["D", "D", "D", "J", "D"]]
        assert t.columns.formats == formats, (where, t.columns.formats)
        assert t.header["NAXIS2"] == npix // per_row, where
        for i, name in enumerate(names):
            assert np.array_equal(t.data[name].ravel(), exp[i]), (where, name)
    print("ok", where)
"#;

/// The map of a case in file order: I, Q, U (UNSEEN where unobserved), HITS, RCOND.
fn map_values(npix: usize) -> [Vec<f64>; 5] {
    let unseen = |p: usize| p % 11 == 3;
    let field = |f: fn(f64) -> f64| -> Vec<f64> {
        (0..npix)
            .map(|p| if unseen(p) { UNSEEN } else { f(p as f64) })
            .collect()
    };
    let i = field(|p| 2.7e-5 * (0.37 * p).sin() + 1e-7 * p);
    let q = field(|p| -3.1e-6 * (0.11 * p).cos());
    let u = field(|p| 1.3e-6 * (0.05 * p + 1.0).sin() / 3.0);
    let hits = (0..npix)
        .map(|p| {
            if unseen(p) {
                0.0
            } else {
                (p * 7 % 13 + 1) as f64
            }
        })
        .collect();
    let rcond = field(|p| 1.0 / (3.0 + p));
    [i, q, u, hits, rcond]
}

fn columns(values: &[Vec<f64>; 5]) -> Vec<Column> {
    let [i, q, u, hits, rcond] = values;
    vec![
        Column::f64("I_STOKES", "K_CMB", i.clone()),
        Column::f64("Q_STOKES", "K_CMB", q.clone()),
        Column::f64("U_STOKES", "K_CMB", u.clone()),
        Column::i32("HITS", "", hits.iter().map(|&h| h as i32).collect()),
        Column::f64("RCOND", "1", rcond.clone()),
    ]
}

fn header(case: &Case) -> HealpixHeader<'static> {
    HealpixHeader {
        nside: case.nside,
        nested: case.nested,
        coordsys: case.coordsys,
        cards: vec![Card::text("STAGE", "mapmake", "written by")],
        provenance: None,
    }
}

/// The provenance of case `k`: none for the RING maps, a few inputs (header cards) and more
/// than fit in cards (a `PROVENANCE` table) for the NESTED ones.
fn provenance(k: usize) -> Option<Provenance> {
    let inputs = match k {
        1 => 3,
        3 => MAX_INPUT_CARDS + 36,
        _ => return None,
    };
    Some(Provenance::new(
        "mapmake",
        "map=full",
        "0123456789abcdef",
        (0..inputs).map(|i| {
            (
                "calibrated".to_string(),
                format!("/run/calibrate/obs={i:04}.h5"),
            )
        }),
    ))
}

/// Writes every case into `dir`; returns the file, its values and the raw expected-values file.
fn write_cases(dir: &Path) -> Vec<(PathBuf, [Vec<f64>; 5], PathBuf)> {
    CASES
        .iter()
        .enumerate()
        .map(|(k, case)| {
            let order = if case.nested { "nest" } else { "ring" };
            let path = dir.join(format!("map_{}_{order}.fits", case.nside));
            let values = map_values((12 * case.nside * case.nside) as usize);
            let provenance = provenance(k);
            let header = HealpixHeader {
                provenance: provenance.as_ref(),
                ..header(case)
            };
            write_healpix_map(
                &path,
                &header,
                columns(&values),
                Durability::ProcessCrashOnly,
            )
            .unwrap();
            let expected = path.with_extension("f8");
            let raw: Vec<u8> = values
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(&expected, raw).unwrap();
            (path, values, expected)
        })
        .collect()
}

#[test]
fn healpy_and_astropy_read_the_maps_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_cases(dir.path());
    let mut args = Vec::new();
    for (k, (case, (path, _, expected))) in CASES.iter().zip(&written).enumerate() {
        args.push(path.display().to_string());
        args.push(case.nside.to_string());
        args.push(u8::from(case.nested).to_string());
        args.push(case.coordsys.to_string());
        args.push(expected.display().to_string());
        args.push(provenance(k).map_or(0, |p| p.inputs.len()).to_string());
    }
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(SCRIPT)
        .args(&args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {PYTHON} ({e}): install Debian's python3 with python3-healpy")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "{PYTHON} cannot import healpy: install python3-healpy (the project's test command \
         does).\n{stderr}"
    );
    assert!(
        out.status.success(),
        "healpy/astropy check failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 4);
}

#[test]
fn fits_reader_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for (k, (case, (path, values, _))) in CASES.iter().zip(write_cases(dir.path())).enumerate() {
        assert_eq!(Provenance::read(&path).unwrap(), provenance(k));
        let npix = 12 * case.nside * case.nside;
        let hdu = Hdu::Name(HEALPIX_EXTNAME);
        let mut r = FitsReader::open(&path).unwrap();
        let per_row = if npix > 1024 { 1024 } else { 1 };
        assert_eq!(r.num_rows(hdu).unwrap() as u64, npix / per_row);
        assert_eq!(r.column_names(hdu).unwrap(), NAMES);
        for (name, want) in NAMES.iter().zip(&values) {
            assert_eq!(&r.column_f64(hdu, name).unwrap(), want, "{name}");
        }
        assert_eq!(r.key_i64(hdu, "NSIDE").unwrap() as u64, case.nside);
        assert_eq!(r.key_i64(hdu, "LASTPIX").unwrap() as u64, npix - 1);
        let ordering = if case.nested { "NESTED" } else { "RING" };
        assert_eq!(r.key_string(hdu, "ORDERING").unwrap(), ordering);
        assert_eq!(r.key_string(hdu, "COORDSYS").unwrap(), case.coordsys);
        assert_eq!(r.key_string(hdu, "STAGE").unwrap(), "mapmake");
    }
    // Only the maps and the expected-value files: no temporaries.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 8);
}

#[test]
fn invalid_maps_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_map.fits");
    let ok = || header(&CASES[0]);
    let good = || columns(&map_values(192));
    let refuse = |header: HealpixHeader<'_>, columns: Vec<Column>, needle: &str| {
        let e = write_healpix_map(&path, &header, columns, Durability::ProcessCrashOnly)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad_map.fits") && e.contains(needle), "{e}");
    };
    for nside in [0, 3, 6, 1 << 30] {
        refuse(HealpixHeader { nside, ..ok() }, good(), "power of two");
    }
    for coordsys in ["Q", "g", "", "GAL"] {
        refuse(HealpixHeader { coordsys, ..ok() }, good(), "coordsys");
    }
    let mut short = good();
    short[1] = Column::f64("Q_STOKES", "K_CMB", vec![0.0; 191]);
    refuse(
        ok(),
        short,
        "'Q_STOKES' has 191 values, expected 12·nside² = 192",
    );
    refuse(
        HealpixHeader { nside: 8, ..ok() },
        good(),
        "'I_STOKES' has 192 values, expected 12·nside² = 768",
    );
    refuse(ok(), vec![], "no columns");
    let mut text = good();
    text.push(Column::text("NAME", vec![String::new(); 192]));
    refuse(ok(), text, "'NAME' holds text");
    let mut twice = good();
    twice.push(Column::f64("i_stokes", "", vec![0.0; 192]));
    refuse(ok(), twice, "two columns named 'i_stokes'");
    for key in ["NSIDE", "ordering", "EXTNAME"] {
        let cards = vec![Card::int(key, 1, "")];
        refuse(
            HealpixHeader { cards, ..ok() },
            good(),
            "written by the HEALPix writer",
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn maps_written_block_by_block_equal_maps_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    // nside 256: 786 432 pixels, 768 rows of 1024, several 16 MiB blocks.
    let case = Case {
        nside: 256,
        nested: false,
        coordsys: "G",
    };
    let npix = 12 * 256 * 256;
    let whole = columns(&map_values(npix));
    let specs: Vec<ColumnSpec> = whole
        .iter()
        .map(|c| ColumnSpec::new(&c.name, &c.unit, c.kind().unwrap()))
        .collect();
    let a = dir.path().join("whole.fits");
    let b = dir.path().join("blocks.fits");
    write_healpix_map(
        &a,
        &header(&case),
        whole.clone(),
        Durability::ProcessCrashOnly,
    )
    .unwrap();
    let mut calls = Vec::new();
    let fill = |first: usize, n: usize| {
        calls.push((first, n));
        let values = map_values(npix);
        columns(&values)
            .into_iter()
            .map(|c| match c.kind().unwrap() {
                skypipe_io::fits::ColumnType::I32 => {
                    let v: Vec<i32> = values[3][first..first + n]
                        .iter()
                        .map(|&h| h as i32)
                        .collect();
                    Column::i32(&c.name, &c.unit, v)
                }
                _ => {
                    let k = NAMES.iter().position(|n| *n == c.name).unwrap();
                    Column::f64(&c.name, &c.unit, values[k][first..first + n].to_vec())
                }
            })
            .collect()
    };
    write_healpix_map_blocks(
        &b,
        &header(&case),
        &specs,
        fill,
        Durability::ProcessCrashOnly,
    )
    .unwrap();
    assert!(calls.len() > 1, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|(first, n)| first % 1024 == 0 && n % 1024 == 0)
    );
    assert_eq!(calls.iter().map(|c| c.1).sum::<usize>(), npix);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "files differ"
    );

    // A block that does not match the declared columns is refused; nothing is left behind.
    let c = dir.path().join("bad_block.fits");
    let short =
        |_first: usize, n: usize| vec![Column::f64("I_STOKES", "K_CMB", vec![0.0; n.min(10)])];
    let e = write_healpix_map_blocks(
        &c,
        &header(&case),
        &specs[..1],
        short,
        Durability::ProcessCrashOnly,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bad_block.fits") && e.contains("does not match"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
