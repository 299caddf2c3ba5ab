//! Output files compared without their provenance: two runs of the same data in different run
//! directories (or with configurations that differ only in ways that cannot change the data)
//! write the same data but name different input paths and configuration fingerprints.
//! FITS: the primary header's provenance cards (`SKYPIPE`, `SP*`, with their `CONTINUE`
//! cards) and the `PROVENANCE` extension are dropped, every other card and every data byte
//! kept. HDF5: every group, dataset and attribute but `/provenance`, in name order, with its
//! type, shape and values. Other files: their bytes.

use std::collections::BTreeMap;
use std::path::Path;

/// Keywords of the provenance cards in a FITS primary header.
const PROVENANCE_KEYS: [&str; 5] = ["SKYPIPE", "SPSTAGE", "SPUNIT", "SPCONFIG", "SPNINPUT"];

/// `EXTNAME` of the table holding a long provenance input list.
const PROVENANCE_EXTNAME: &str = "PROVENANCE";

/// The file's content without its provenance (see the module documentation).
pub fn without_provenance(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if bytes.starts_with(b"SIMPLE  =") {
        fits_without_provenance(&bytes)
    } else if bytes.starts_with(b"\x89HDF\r\n\x1a\n") {
        hdf5_without_provenance(path)
    } else {
        bytes
    }
}

/// All files under `dir` (recursively) with their content without provenance, keyed by path
/// relative to `dir` — [`super::files`] for outputs that carry provenance.
pub fn files_without_provenance(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    super::files(dir)
        .into_keys()
        .map(|rel| {
            let content = without_provenance(&dir.join(&rel));
            (rel, content)
        })
        .collect()
}

/// Every HDU's cards but the provenance ones, each followed by its data; the `PROVENANCE`
/// extension left out.
fn fits_without_provenance(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let cards = header_cards(&bytes[at..]);
        let header_len = (cards.len() + 1).div_ceil(36) * 2880;
        let data_len = data_bytes(&cards).div_ceil(2880) * 2880;
        let data = &bytes[at + header_len..(at + header_len + data_len).min(bytes.len())];
        if text_value(&cards, "EXTNAME").as_deref() != Some(PROVENANCE_EXTNAME) {
            let mut in_provenance_card = false;
            for card in &cards {
                let key = card[..8].trim_end();
                if key != "CONTINUE" {
                    in_provenance_card = is_provenance_key(key);
                }
                if !in_provenance_card {
                    out.extend_from_slice(card.as_bytes());
                }
            }
            out.extend_from_slice(data);
        }
        at += header_len + data_len;
    }
    out
}

fn is_provenance_key(key: &str) -> bool {
    PROVENANCE_KEYS.contains(&key)
        || (key.len() == 8
            && key.starts_with("SPIN")
            && key[4..].bytes().all(|b| b.is_ascii_digit()))
}

/// The 80-character cards of the header starting `bytes`, up to (without) `END`.
fn header_cards(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(80)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .take_while(|c| c.trim_end() != "END")
        .collect()
}

/// The value of an integer card, if present.
fn int_value(cards: &[String], key: &str) -> Option<i64> {
    value_text(cards, key).and_then(|v| v.parse().ok())
}

/// The value of a text card, without quotes, if present.
fn text_value(cards: &[String], key: &str) -> Option<String> {
    value_text(cards, key).map(|v| v.trim_matches('\'').trim().to_string())
}

fn value_text(cards: &[String], key: &str) -> Option<String> {
    let card = cards
        .iter()
        .find(|c| c[..8].trim_end() == key && &c[8..10] == "= ")?;
    let value = card[10..].split(" /").next().unwrap_or("");
    Some(value.trim().to_string())
}

/// Bytes of an HDU's data (before padding), from BITPIX, NAXISn, PCOUNT and GCOUNT.
fn data_bytes(cards: &[String]) -> usize {
    let naxis = int_value(cards, "NAXIS").unwrap_or(0);
    if naxis == 0 {
        return 0;
    }
    let elements: i64 = (1..=naxis)
        .map(|i| int_value(cards, &format!("NAXIS{i}")).unwrap_or(0))
        .product();
    let bitpix = int_value(cards, "BITPIX").unwrap_or(8).abs();
    let pcount = int_value(cards, "PCOUNT").unwrap_or(0);
    let gcount = int_value(cards, "GCOUNT").unwrap_or(1);
    (bitpix / 8 * gcount * (pcount + elements)) as usize
}

/// Every group, dataset and attribute but `/provenance`, in name order: name, type, shape,
/// values.
fn hdf5_without_provenance(path: &Path) -> Vec<u8> {
    let file = hdf5::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    dump_group(&file, &mut out);
    out
}

fn dump_group(group: &hdf5::Group, out: &mut Vec<u8>) {
    dump_attributes(group, out);
    let mut groups = group.groups().unwrap();
    groups.sort_by_key(|g| g.name());
    for g in groups {
        if g.name() == "/provenance" {
            continue;
        }
        out.extend_from_slice(format!("group {}\n", g.name()).as_bytes());
        dump_group(&g, out);
    }
    let mut datasets = group.datasets().unwrap();
    datasets.sort_by_key(|d| d.name());
    for d in datasets {
        out.extend_from_slice(format!("dataset {}\n", d.name()).as_bytes());
        dump_attributes(&d, out);
        dump_values(&d, out);
    }
}

fn dump_attributes(location: &hdf5::Location, out: &mut Vec<u8>) {
    let mut names = location.attr_names().unwrap();
    names.sort();
    for name in names {
        out.extend_from_slice(format!("attribute {name}\n").as_bytes());
        dump_values(&location.attr(&name).unwrap(), out);
    }
}

/// Type, shape and values (little-endian numbers, NUL-terminated strings) of a dataset or
/// attribute; a type skypipe does not write is refused.
fn dump_values(container: &hdf5::Container, out: &mut Vec<u8>) {
    use hdf5::types::{FloatSize, IntSize, TypeDescriptor as T, VarLenUnicode};
    let descriptor = container.dtype().unwrap().to_descriptor().unwrap();
    out.extend_from_slice(format!("{descriptor:?} {:?}\n", container.shape()).as_bytes());
    macro_rules! numbers {
        ($t:ty) => {
            for v in container.read_raw::<$t>().unwrap() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
    }
    match descriptor {
        T::Float(FloatSize::U8) => numbers!(f64),
        T::Float(FloatSize::U4) => numbers!(f32),
        T::Integer(IntSize::U8) => numbers!(i64),
        T::Integer(IntSize::U4) => numbers!(i32),
        T::Integer(IntSize::U2) => numbers!(i16),
        T::Integer(IntSize::U1) => numbers!(i8),
        T::Unsigned(IntSize::U8) => numbers!(u64),
        T::Unsigned(IntSize::U4) => numbers!(u32),
        T::Unsigned(IntSize::U2) => numbers!(u16),
        T::Unsigned(IntSize::U1) => numbers!(u8),
        T::VarLenUnicode => {
            for s in container.read_raw::<VarLenUnicode>().unwrap() {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
        }
        other => panic!("no comparison for HDF5 type {other:?}"),
    }
}
