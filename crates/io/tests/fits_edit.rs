//! `FitsWriter::edit_copy`: an edited copy of a FITS file, checked with this crate's reader and
//! astropy (one card per keyword, nothing else changed, the source untouched).

use ndarray::Array2;
use skypipe_io::fits::{Card, Column, FitsReader, FitsWriter, Hdu};
use std::process::Command;

#[test]
fn an_edited_copy_updates_keys_and_columns_and_leaves_the_source_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("in.fits");
    let mut w = FitsWriter::create(&source, false, None).unwrap();
    w.primary_keys(&[
        Card::int("WCSFIT", 0, "before"),
        Card::text("BAND", "r", ""),
    ])
    .unwrap();
    let image = Array2::from_shape_fn((3, 4), |(r, c)| (r * 4 + c) as f32);
    w.image_f32(
        "IMAGE",
        &image,
        &[
            Card::real("CRPIX1", 1.5, ""),
            Card::real("CD1_1", 1.0, ""),
            Card::real("A_2_0", 1e-6, ""),
        ],
    )
    .unwrap();
    w.table(
        "SOURCES",
        &[
            Column::f64("X", "pix", vec![1.0, 2.0, 3.0]),
            Column::f64("RA", "deg", vec![0.0; 3]),
        ],
        &[],
    )
    .unwrap();
    w.commit().unwrap();
    let before = std::fs::read(&source).unwrap();

    let out = dir.path().join("sub/out.fits");
    let mut e = FitsWriter::edit_copy(&source, &out, false).unwrap();
    e.set_keys(
        Hdu::Primary,
        &[
            Card::int("WCSFIT", 1, "after"),
            Card::real("NEWKEY", 0.1, ""),
        ],
    )
    .unwrap();
    e.delete_keys(Hdu::Name("IMAGE"), &["A_2_0", "CD1_1", "NOTTHERE"])
        .unwrap();
    e.set_keys(
        Hdu::Name("IMAGE"),
        &[
            Card::real("CRPIX1", -1234.25, ""),
            Card::real("CD1_1", 2.0, ""),
        ],
    )
    .unwrap();
    e.set_column_f64(Hdu::Name("SOURCES"), "RA", &[10.0, 20.0, 30.0])
        .unwrap();
    let short = e.set_column_f64(Hdu::Name("SOURCES"), "RA", &[1.0]);
    assert!(short.unwrap_err().to_string().contains("3 rows"));
    e.image_f32("EXTRA", &Array2::zeros((0, 0)), &[Card::int("K", 7, "")])
        .unwrap();
    e.commit().unwrap();

    assert_eq!(std::fs::read(&source).unwrap(), before, "source changed");
    let mut r = FitsReader::open(&out).unwrap();
    assert_eq!(r.key_i64(Hdu::Primary, "WCSFIT").unwrap(), 1);
    assert_eq!(r.key_string(Hdu::Primary, "BAND").unwrap(), "r");
    assert_eq!(r.key_f64(Hdu::Name("IMAGE"), "CRPIX1").unwrap(), -1234.25);
    assert!(
        r.key_f64_opt(Hdu::Name("IMAGE"), "A_2_0")
            .unwrap()
            .is_none()
    );
    assert_eq!(r.image_f32(Hdu::Name("IMAGE")).unwrap(), image);
    assert_eq!(
        r.column_f64(Hdu::Name("SOURCES"), "RA").unwrap(),
        vec![10.0, 20.0, 30.0]
    );
    assert_eq!(
        r.column_f64(Hdu::Name("SOURCES"), "X").unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    assert_eq!(r.key_i64(Hdu::Name("EXTRA"), "K").unwrap(), 7);
    let py = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, warnings\nwarnings.simplefilter('error')\nfrom astropy.io import fits\n\
             f = fits.open(sys.argv[1])\n\
             assert [h.name for h in f] == ['PRIMARY', 'IMAGE', 'SOURCES', 'EXTRA'], [h.name for h in f]\n\
             for h in f:\n    keys = [c.keyword for c in h.header.cards if c.keyword not in ('', 'COMMENT', 'HISTORY')]\n    assert len(keys) == len(set(keys)), keys\n\
             assert f['IMAGE'].header['CD1_1'] == 2.0 and f[0].header['WCSFIT'] == 1\n\
             f.close()\n",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let missing = FitsWriter::edit_copy(dir.path().join("nope.fits"), &out, false);
    assert!(missing.unwrap_err().to_string().contains("nope.fits"));
}
