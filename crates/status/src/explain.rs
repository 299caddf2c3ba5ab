//! `skypipe-status --explain FILE`: the chain of provenance behind an output file, read from
//! the provenance each skypipe output carries (FITS header cards, HDF5 attributes), followed
//! through its inputs back to files skypipe did not write.

use skypipe_io::provenance::{Provenance, ProvenanceError};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

/// How deep the explanation follows inputs (a chain is a handful of stages deep).
const MAX_DEPTH: usize = 12;

/// The provenance chain of `file` as indented text: what wrote it, then each input in turn.
/// Fails only when `file` itself cannot be read as a FITS or HDF5 file.
pub fn explain(file: &Path) -> Result<String, ProvenanceError> {
    let mut out = String::new();
    let provenance = Provenance::read(file)?;
    let _ = writeln!(out, "{}", file.display());
    let mut seen = HashSet::new();
    seen.insert(file.to_path_buf());
    write_node(&mut out, provenance.as_ref(), 1, &mut seen);
    Ok(out)
}

fn write_node(
    out: &mut String,
    provenance: Option<&Provenance>,
    depth: usize,
    seen: &mut HashSet<std::path::PathBuf>,
) {
    let pad = "  ".repeat(depth);
    let Some(p) = provenance else {
        let _ = writeln!(
            out,
            "{pad}no skypipe provenance (input data, or written by another tool)"
        );
        return;
    };
    let _ = writeln!(
        out,
        "{pad}written by {}: stage {}, unit {}, configuration {}",
        p.software, p.stage, p.unit, p.config_fingerprint
    );
    if p.inputs.is_empty() {
        let _ = writeln!(out, "{pad}made from no input file");
        return;
    }
    let _ = writeln!(out, "{pad}made from {} file(s):", p.inputs.len());
    for input in &p.inputs {
        let _ = writeln!(out, "{pad}- {} {}", input.kind, input.path.display());
        let inner = "  ".repeat(depth + 1);
        if !input.path.exists() {
            let _ = writeln!(out, "{inner}(no longer exists)");
        } else if !seen.insert(input.path.clone()) {
            let _ = writeln!(out, "{inner}(explained above)");
        } else if depth >= MAX_DEPTH {
            let _ = writeln!(
                out,
                "{inner}(not followed further: {MAX_DEPTH} levels deep)"
            );
        } else {
            match Provenance::read(&input.path) {
                Ok(inner_provenance) => {
                    write_node(out, inner_provenance.as_ref(), depth + 1, seen);
                }
                Err(e) => {
                    let _ = writeln!(out, "{inner}(provenance unreadable: {e})");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skypipe_io::fits::FitsWriter;

    fn write(path: &Path, stage: &str, unit: &str, inputs: &[(&str, &Path)]) {
        let mut w = FitsWriter::create(path, false, None).unwrap();
        Provenance::new(
            stage,
            unit,
            "feedc0de",
            inputs.iter().map(|(k, p)| (k.to_string(), p.to_path_buf())),
        )
        .write_fits(&mut w)
        .unwrap();
        w.commit().unwrap();
    }

    #[test]
    fn the_chain_is_followed_to_raw_data_and_missing_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.fits");
        FitsWriter::create(&raw, false, None)
            .unwrap()
            .commit()
            .unwrap();
        let gone = dir.path().join("gone.fits");
        let calexp = dir.path().join("calexp.fits");
        write(&calexp, "singleframe", "visit=1,ccd=2", &[("raw", &raw)]);
        let coadd = dir.path().join("coadd.fits");
        write(
            &coadd,
            "coadd",
            "tract=0,patch=1,1,band=r",
            &[("warp", &calexp), ("warp", &gone), ("warp", &calexp)],
        );
        let text = explain(&coadd).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("stage coadd, unit tract=0,patch=1,1,band=r"),
            "{text}"
        );
        assert!(lines[1].contains("configuration feedc0de"), "{text}");
        assert!(
            text.contains("stage singleframe, unit visit=1,ccd=2"),
            "{text}"
        );
        assert!(text.contains("no skypipe provenance (input data"), "{text}");
        assert!(text.contains("(no longer exists)"), "{text}");
        assert!(text.contains("(explained above)"), "{text}");
        let raw_line = lines.iter().position(|l| l.contains("raw.fits")).unwrap();
        assert!(lines[raw_line].starts_with("    - raw "), "{text}");
    }

    #[test]
    fn a_file_of_another_kind_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.txt");
        std::fs::write(&f, "text").unwrap();
        assert!(explain(&f).is_err());
    }
}
