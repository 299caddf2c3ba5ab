//! The readout geometry of a raw CCD frame: which pixels each amplifier read (its data section),
//! where its overscan is, its gain, read noise and saturation, and which part of the frame the
//! calibrated image keeps (the trim). Built from header keywords (DECam style: `DATASECA`,
//! `BIASSECA`, `GAINA`, `RDNOISEA`, `SATURATA`, … per amplifier; or the single-amplifier
//! `DATASEC`, `BIASSEC`, `TRIMSEC`, `GAIN`, `RDNOISE`, `SATURATE`) and checked here, without I/O:
//! the stage reads the keywords and turns a [`ReadoutError`] into an error naming the file.
//!
//! Sections are written in FITS headers as `[x1:x2,y1:y2]`, 1-based and inclusive (IRAF
//! convention); here they are 0-based half-open [`Section`]s. A flipped section (`x1 > x2`,
//! meant as a readout direction) is refused: the header WCS describes the pixels as stored, so
//! mirroring an amplifier would break it.

use crate::pipeline::Instrument;
use std::collections::BTreeMap;

/// A rectangle of pixels, 0-based and half-open: columns `x0..x1`, rows `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// First column.
    pub x0: usize,
    /// One past the last column.
    pub x1: usize,
    /// First row.
    pub y0: usize,
    /// One past the last row.
    pub y1: usize,
}

impl Section {
    /// The whole of a `width × height` image.
    pub fn whole(width: usize, height: usize) -> Self {
        Self {
            x0: 0,
            x1: width,
            y0: 0,
            y1: height,
        }
    }

    /// Parses a FITS section `[x1:x2,y1:y2]` (1-based, inclusive; blanks allowed).
    /// A flipped range (`x1 > x2`) or a zero index is refused with the reason.
    ///
    /// ```
    /// use skypipe_optical::amplifiers::Section;
    /// let s = Section::parse("[57:1080, 51:4146]").unwrap();
    /// assert_eq!((s.x0, s.x1, s.y0, s.y1), (56, 1080, 50, 4146));
    /// assert_eq!(s.to_fits(), "[57:1080,51:4146]");
    /// assert!(Section::parse("[1080:57,51:4146]").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, SectionError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let shape = || SectionError::Shape { text: text.into() };
        let inner = compact
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(shape)?;
        let range = |part: &str, axis: &'static str| -> Result<(usize, usize), SectionError> {
            let (a, b) = part.split_once(':').ok_or_else(|| SectionError::NoColon {
                text: text.into(),
                axis,
                part: part.into(),
            })?;
            let parse = |v: &str| {
                v.parse::<usize>().map_err(|_| SectionError::Index {
                    text: text.into(),
                    value: v.into(),
                })
            };
            let (a, b) = (parse(a)?, parse(b)?);
            if a == 0 {
                return Err(SectionError::Zero { text: text.into() });
            }
            if a > b {
                return Err(SectionError::Flipped {
                    text: text.into(),
                    axis,
                    first: a,
                    last: b,
                });
            }
            Ok((a - 1, b))
        };
        let (xs, ys) = inner.split_once(',').ok_or_else(shape)?;
        let (x0, x1) = range(xs, "x")?;
        let (y0, y1) = range(ys, "y")?;
        Ok(Self { x0, x1, y0, y1 })
    }

    /// The section as a FITS header writes it (`[x1:x2,y1:y2]`, 1-based, inclusive).
    pub fn to_fits(&self) -> String {
        format!("[{}:{},{}:{}]", self.x0 + 1, self.x1, self.y0 + 1, self.y1)
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    /// Number of pixels.
    pub fn area(&self) -> usize {
        self.width() * self.height()
    }

    /// The common part of two sections, if any.
    pub fn intersect(&self, other: &Section) -> Option<Section> {
        let s = Section {
            x0: self.x0.max(other.x0),
            x1: self.x1.min(other.x1),
            y0: self.y0.max(other.y0),
            y1: self.y1.min(other.y1),
        };
        (s.x0 < s.x1 && s.y0 < s.y1).then_some(s)
    }

    /// Whether `other` lies inside this section.
    pub fn contains(&self, other: &Section) -> bool {
        other.x0 >= self.x0 && other.x1 <= self.x1 && other.y0 >= self.y0 && other.y1 <= self.y1
    }

    /// The smallest section holding both.
    fn union_box(&self, other: &Section) -> Section {
        Section {
            x0: self.x0.min(other.x0),
            x1: self.x1.max(other.x1),
            y0: self.y0.min(other.y0),
            y1: self.y1.max(other.y1),
        }
    }

    /// This section moved by `(-dx, -dy)` (into the coordinates of an image cut at `(dx, dy)`).
    fn shifted_back(&self, dx: usize, dy: usize) -> Section {
        Section {
            x0: self.x0 - dx,
            x1: self.x1 - dx,
            y0: self.y0 - dy,
            y1: self.y1 - dy,
        }
    }
}

/// One amplifier of a raw frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Amplifier {
    /// Keyword suffix (`A`, `B`, …), empty for a single-amplifier frame.
    pub name: String,
    /// The amplifier's pixels that the calibrated image keeps, in raw coordinates
    /// (`TRIMSECx` if given, else `DATASECx`).
    pub data: Section,
    /// Its overscan (`BIASSECx`), in raw coordinates, if given.
    pub overscan: Option<Section>,
    /// Gain, read noise and saturation (`GAINx`, `RDNOISEx`, `SATURATx`, else the
    /// single-amplifier keywords).
    pub instrument: Instrument,
}

/// One amplifier's part of the trimmed image, with its electrical properties: what the ISR
/// kernels need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmpRegion {
    /// The amplifier's pixels in the trimmed image.
    pub region: Section,
    /// Gain, read noise and saturation.
    pub instrument: Instrument,
}

/// The readout geometry of a raw frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Readout {
    /// Columns of the raw frame.
    pub width: usize,
    /// Rows of the raw frame.
    pub height: usize,
    /// The part of the raw frame the calibrated image keeps, tiled by the amplifiers' data.
    pub trim: Section,
    /// The amplifiers, in the order of their keyword suffixes.
    pub amplifiers: Vec<Amplifier>,
}

/// Why a FITS section (`[x1:x2,y1:y2]`) was refused; each quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SectionError {
    /// Not of the form `[x1:x2,y1:y2]`.
    #[error("'{text}' is not a section '[x1:x2,y1:y2]'")]
    Shape {
        /// The text given.
        text: String,
    },
    /// A range without its `:`.
    #[error("'{text}': the {axis} range '{part}' has no ':'")]
    NoColon {
        /// The text given.
        text: String,
        /// `x` or `y`.
        axis: &'static str,
        /// The range.
        part: String,
    },
    /// A bound that is not a pixel index.
    #[error("'{text}': '{value}' is not a pixel index")]
    Index {
        /// The text given.
        text: String,
        /// The bound.
        value: String,
    },
    /// A bound of 0 (FITS indices are 1-based).
    #[error("'{text}': pixel indices start at 1")]
    Zero {
        /// The text given.
        text: String,
    },
    /// A decreasing range.
    #[error(
        "'{text}': the {axis} range {first}:{last} is flipped (a readout direction); flipped sections are not supported — the header WCS describes the pixels as stored, so give the section in increasing order"
    )]
    Flipped {
        /// The text given.
        text: String,
        /// `x` or `y`.
        axis: &'static str,
        /// The first index.
        first: usize,
        /// The last index, below the first.
        last: usize,
    },
}

/// A header keyword of the readout geometry that is missing, malformed or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keyword {keyword}: {message}")]
pub struct ReadoutError {
    /// The keyword to blame (the first one when two disagree).
    pub keyword: String,
    /// What is wrong.
    pub message: String,
}

fn err(keyword: &str, message: String) -> ReadoutError {
    ReadoutError {
        keyword: keyword.to_string(),
        message,
    }
}

/// The readout keywords of a raw header as found: sections as text, numbers as values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadoutKeywords {
    /// `DATASEC*`, `BIASSEC*`, `TRIMSEC*` values.
    pub sections: BTreeMap<String, String>,
    /// `GAIN*`, `RDNOISE*`, `SATURAT*` values.
    pub numbers: BTreeMap<String, f64>,
}

/// Amplifier suffixes looked for: `A` to `Z`.
pub const AMPLIFIER_SUFFIXES: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The keywords of amplifier `c` (`DATASECc`, `BIASSECc`, `TRIMSECc`, `GAINc`, `RDNOISEc`,
/// `SATURATc`; for amplifier `E` the last is the single-amplifier `SATURATE`, left out here).
fn amplifier_keys(c: char) -> Vec<String> {
    [
        "DATASEC", "BIASSEC", "TRIMSEC", "GAIN", "RDNOISE", "SATURAT",
    ]
    .iter()
    .map(|b| format!("{b}{c}"))
    .filter(|k| k != "SATURATE")
    .collect()
}

impl ReadoutKeywords {
    /// Every section keyword the readout may use (single-amplifier and per amplifier).
    pub fn section_keys() -> Vec<String> {
        let mut keys = Vec::new();
        for suffix in
            std::iter::once(String::new()).chain(AMPLIFIER_SUFFIXES.chars().map(String::from))
        {
            for base in ["DATASEC", "BIASSEC", "TRIMSEC"] {
                keys.push(format!("{base}{suffix}"));
            }
        }
        keys
    }

    /// Every numeric keyword the readout may use (`SATURATE`, and `SATURATx` per amplifier to
    /// fit FITS's eight characters).
    pub fn number_keys() -> Vec<String> {
        let mut keys = vec!["GAIN".into(), "RDNOISE".into(), "SATURATE".into()];
        for suffix in AMPLIFIER_SUFFIXES.chars() {
            for base in ["GAIN", "RDNOISE", "SATURAT"] {
                let key = format!("{base}{suffix}");
                if key != "SATURATE" {
                    keys.push(key);
                }
            }
        }
        keys
    }

    fn section(&self, key: &str) -> Result<Option<Section>, ReadoutError> {
        self.sections
            .get(key)
            .map(|v| Section::parse(v).map_err(|e| err(key, e.to_string())))
            .transpose()
    }
}

impl Readout {
    /// A frame read by one amplifier, all of it data, no overscan.
    pub fn single(width: usize, height: usize, instrument: Instrument) -> Self {
        let whole = Section::whole(width, height);
        Self {
            width,
            height,
            trim: whole,
            amplifiers: vec![Amplifier {
                name: String::new(),
                data: whole,
                overscan: None,
                instrument,
            }],
        }
    }

    /// The readout of a `width × height` raw frame from its header keywords.
    ///
    /// Without per-amplifier keywords the frame has one amplifier: `GAIN` and `RDNOISE` are
    /// required, `DATASEC` (default: the whole frame), `BIASSEC` and `TRIMSEC` (inside
    /// `DATASEC`) optional. With per-amplifier keywords (suffix `A`…`Z`), every amplifier that
    /// has any keyword needs its `DATASECx`; `GAINx`/`RDNOISEx`/`SATURATx` fall back to
    /// `GAIN`/`RDNOISE`/`SATURATE`; `BIASSECx` is given for all amplifiers or none (a bare
    /// `BIASSEC` is then ambiguous and refused); `TRIMSECx` keeps part of `DATASECx`; a global
    /// `DATASEC` must hold every `DATASECx`; `TRIMSEC` (default: the box around the data) is
    /// what the calibrated image keeps.
    ///
    /// Refused, naming the keyword: a malformed or flipped section, one outside the frame,
    /// overlapping data sections, an overscan overlapping data, data that does not tile the
    /// trim exactly (amplifiers separated by overscan cannot be joined under one header WCS),
    /// a gain that is not > 0, a negative read noise.
    pub fn from_keywords(
        width: usize,
        height: usize,
        keys: &ReadoutKeywords,
    ) -> Result<Self, ReadoutError> {
        let frame = Section::whole(width, height);
        let inside = |key: &str, s: Section| -> Result<Section, ReadoutError> {
            if frame.contains(&s) {
                Ok(s)
            } else {
                Err(err(
                    key,
                    format!(
                        "'{}' reaches outside the {width}×{height} frame",
                        s.to_fits()
                    ),
                ))
            }
        };
        let section = |key: &str| -> Result<Option<Section>, ReadoutError> {
            keys.section(key)?.map(|s| inside(key, s)).transpose()
        };
        let number = |key: &str| keys.numbers.get(key).copied();
        let suffixes: Vec<char> = AMPLIFIER_SUFFIXES
            .chars()
            .filter(|c| {
                amplifier_keys(*c)
                    .iter()
                    .any(|k| keys.sections.contains_key(k) || keys.numbers.contains_key(k))
            })
            .collect();
        let electrical = |suffix: &str| -> Result<Instrument, ReadoutError> {
            let pick = |base: &str, single: &str| {
                let own = format!("{base}{suffix}");
                match number(&own) {
                    Some(v) => Some((own, v)),
                    None => number(single).map(|v| (single.to_string(), v)),
                }
            };
            let missing = |base: &str, single: &str| {
                if suffix.is_empty() {
                    err(single, "missing".into())
                } else {
                    err(
                        &format!("{base}{suffix}"),
                        format!("missing (and no {single} for every amplifier)"),
                    )
                }
            };
            let (gkey, gain) = pick("GAIN", "GAIN").ok_or_else(|| missing("GAIN", "GAIN"))?;
            if !(gain.is_finite() && gain > 0.0) {
                return Err(err(&gkey, format!("the gain must be > 0, got {gain}")));
            }
            let (rkey, read_noise) =
                pick("RDNOISE", "RDNOISE").ok_or_else(|| missing("RDNOISE", "RDNOISE"))?;
            if !(read_noise.is_finite() && read_noise >= 0.0) {
                return Err(err(
                    &rkey,
                    format!("the read noise must be ≥ 0, got {read_noise}"),
                ));
            }
            let saturate = pick("SATURAT", "SATURATE").map_or(f64::from(f32::MAX), |(_, v)| v);
            Ok(Instrument {
                gain: gain as f32,
                read_noise: read_noise as f32,
                saturate: saturate as f32,
            })
        };

        let mut amplifiers = Vec::new();
        if suffixes.is_empty() {
            let data = section("DATASEC")?;
            if data.is_none()
                && let Some(v) = keys.sections.get("BIASSEC")
            {
                return Err(err(
                    "BIASSEC",
                    format!("'{v}' without DATASEC: which pixels are data is not given"),
                ));
            }
            let data = data.unwrap_or(frame);
            let keep = match section("TRIMSEC")? {
                Some(t) if !data.contains(&t) => {
                    return Err(err(
                        "TRIMSEC",
                        format!(
                            "'{}' is not inside DATASEC '{}'",
                            t.to_fits(),
                            data.to_fits()
                        ),
                    ));
                }
                Some(t) => t,
                None => data,
            };
            amplifiers.push(Amplifier {
                name: String::new(),
                data: keep,
                overscan: section("BIASSEC")?,
                instrument: electrical("")?,
            });
        } else {
            if let Some(v) = keys.sections.get("BIASSEC") {
                return Err(err(
                    "BIASSEC",
                    format!(
                        "'{v}' with per-amplifier keywords is ambiguous: give BIASSEC{} … \
                         per amplifier",
                        suffixes[0]
                    ),
                ));
            }
            let global_data = section("DATASEC")?;
            for c in &suffixes {
                let name = c.to_string();
                let dkey = format!("DATASEC{c}");
                let Some(data) = section(&dkey)? else {
                    let found = amplifier_keys(*c)
                        .into_iter()
                        .find(|k| keys.sections.contains_key(k) || keys.numbers.contains_key(k))
                        .expect("the amplifier has a keyword");
                    return Err(err(
                        &found,
                        format!(
                            "amplifier {c} has {found} but no {dkey}: its pixels are not given"
                        ),
                    ));
                };
                if let Some(g) = global_data
                    && !g.contains(&data)
                {
                    return Err(err(
                        &dkey,
                        format!(
                            "'{}' is not inside DATASEC '{}'",
                            data.to_fits(),
                            g.to_fits()
                        ),
                    ));
                }
                let tkey = format!("TRIMSEC{c}");
                let keep = match section(&tkey)? {
                    Some(t) if !data.contains(&t) => {
                        return Err(err(
                            &tkey,
                            format!(
                                "'{}' is not inside {dkey} '{}'",
                                t.to_fits(),
                                data.to_fits()
                            ),
                        ));
                    }
                    Some(t) => t,
                    None => data,
                };
                amplifiers.push(Amplifier {
                    name,
                    data: keep,
                    overscan: section(&format!("BIASSEC{c}"))?,
                    instrument: electrical(&c.to_string())?,
                });
            }
            let with = amplifiers.iter().filter(|a| a.overscan.is_some()).count();
            if with != 0 && with != amplifiers.len() {
                let has = amplifiers.iter().find(|a| a.overscan.is_some()).unwrap();
                let lacks = amplifiers.iter().find(|a| a.overscan.is_none()).unwrap();
                return Err(err(
                    &format!("BIASSEC{}", lacks.name),
                    format!(
                        "missing while BIASSEC{} is given: overscan for every amplifier or none",
                        has.name
                    ),
                ));
            }
        }

        // Data sections must not overlap each other; overscans must not overlap data.
        let dname = |a: &Amplifier| format!("DATASEC{}", a.name);
        for (i, a) in amplifiers.iter().enumerate() {
            for b in &amplifiers[i + 1..] {
                if let Some(common) = a.data.intersect(&b.data) {
                    return Err(err(
                        &dname(b),
                        format!(
                            "'{}' overlaps {} '{}' in {}",
                            b.data.to_fits(),
                            dname(a),
                            a.data.to_fits(),
                            common.to_fits()
                        ),
                    ));
                }
            }
            for b in &amplifiers {
                if let Some(o) = a.overscan
                    && let Some(common) = o.intersect(&b.data)
                {
                    return Err(err(
                        &format!("BIASSEC{}", a.name),
                        format!(
                            "'{}' overlaps the data {} '{}' in {}",
                            o.to_fits(),
                            dname(b),
                            b.data.to_fits(),
                            common.to_fits()
                        ),
                    ));
                }
            }
        }
        let bounding = amplifiers
            .iter()
            .map(|a| a.data)
            .reduce(|a, b| a.union_box(&b))
            .expect("at least one amplifier");
        // A single amplifier's TRIMSEC is already its data; with several it cuts their union.
        let given_trim = if suffixes.is_empty() {
            None
        } else {
            section("TRIMSEC")?
        };
        let trim = given_trim.unwrap_or(bounding);
        let covered: usize = amplifiers
            .iter()
            .filter_map(|a| a.data.intersect(&trim))
            .map(|s| s.area())
            .sum();
        if covered != trim.area() {
            let names: Vec<String> = amplifiers.iter().map(dname).collect();
            let (key, what) = match given_trim {
                Some(_) => (
                    "TRIMSEC".to_string(),
                    format!("TRIMSEC '{}'", trim.to_fits()),
                ),
                None => (
                    names.join("/"),
                    format!("their bounding box '{}'", trim.to_fits()),
                ),
            };
            return Err(err(
                &key,
                format!(
                    "the data sections {} do not cover {what} ({covered} of {} pixels): \
                     amplifiers separated by overscan or gaps cannot be joined under one \
                     header WCS",
                    names.join(", "),
                    trim.area()
                ),
            ));
        }
        Ok(Self {
            width,
            height,
            trim,
            amplifiers,
        })
    }

    /// Whether the frame needs neither trimming nor overscan subtraction.
    pub fn is_plain(&self) -> bool {
        self.trim == Section::whole(self.width, self.height)
            && self.amplifiers.iter().all(|a| a.overscan.is_none())
    }

    /// Shape of the calibrated (trimmed) image, `(width, height)`.
    pub fn trimmed_shape(&self) -> (usize, usize) {
        (self.trim.width(), self.trim.height())
    }

    /// Each amplifier's part of the trimmed image, in amplifier order (amplifiers wholly outside
    /// the trim left out). Together they tile the trimmed image.
    pub fn regions(&self) -> Vec<AmpRegion> {
        self.amplifiers
            .iter()
            .filter_map(|a| {
                a.data.intersect(&self.trim).map(|s| AmpRegion {
                    region: s.shifted_back(self.trim.x0, self.trim.y0),
                    instrument: a.instrument,
                })
            })
            .collect()
    }

    /// With per-row overscan levels, every overscan must cover its data rows (a serial
    /// overscan, read out with the same rows); the error names the keyword.
    pub fn check_overscan_rows(&self) -> Result<(), ReadoutError> {
        for a in &self.amplifiers {
            if let Some(o) = a.overscan
                && (o.y0 > a.data.y0 || o.y1 < a.data.y1)
            {
                return Err(err(
                    &format!("BIASSEC{}", a.name),
                    format!(
                        "rows {}:{} do not cover the data rows {}:{} (per-row overscan needs a \
                         serial overscan beside the data; use overscan = \"mean\")",
                        o.y0 + 1,
                        o.y1,
                        a.data.y0 + 1,
                        a.data.y1
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(sections: &[(&str, &str)], numbers: &[(&str, f64)]) -> ReadoutKeywords {
        ReadoutKeywords {
            sections: sections
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            numbers: numbers.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// A DECam-like frame of 100 × 10: overscan A | data A | data B | overscan B.
    fn two_amps() -> Vec<(&'static str, &'static str)> {
        vec![
            ("BIASSECA", "[1:10,1:10]"),
            ("DATASECA", "[11:50,1:10]"),
            ("DATASECB", "[51:90,1:10]"),
            ("BIASSECB", "[91:100,1:10]"),
        ]
    }

    fn gains() -> Vec<(&'static str, f64)> {
        vec![
            ("GAINA", 1.5),
            ("GAINB", 2.0),
            ("RDNOISEA", 5.0),
            ("RDNOISEB", 6.0),
        ]
    }

    fn refused(sections: &[(&str, &str)], numbers: &[(&str, f64)]) -> ReadoutError {
        Readout::from_keywords(100, 10, &keys(sections, numbers)).unwrap_err()
    }

    #[test]
    fn sections_parse_as_fits_writes_them() {
        let s = Section::parse(" [ 1:10 , 3:4 ] ").unwrap();
        assert_eq!(
            s,
            Section {
                x0: 0,
                x1: 10,
                y0: 2,
                y1: 4
            }
        );
        assert_eq!(Section::parse(&s.to_fits()).unwrap(), s);
        for bad in [
            "1:10,3:4",
            "[1:10]",
            "[0:10,1:4]",
            "[a:10,1:4]",
            "[1-10,1:4]",
        ] {
            assert!(Section::parse(bad).is_err(), "{bad}");
        }
        let flipped = Section::parse("[10:1,1:4]").unwrap_err();
        assert!(
            matches!(
                flipped,
                SectionError::Flipped {
                    axis: "x",
                    first: 10,
                    last: 1,
                    ..
                }
            ),
            "{flipped}"
        );
        assert!(flipped.to_string().contains("flipped"), "{flipped}");
    }

    #[test]
    fn no_keywords_is_the_plain_single_amplifier_frame() {
        let r = Readout::from_keywords(100, 10, &keys(&[], &[("GAIN", 2.0), ("RDNOISE", 4.0)]))
            .unwrap();
        assert!(r.is_plain());
        assert_eq!(r.trimmed_shape(), (100, 10));
        assert_eq!(r.regions()[0].instrument.gain, 2.0);
        assert_eq!(r.regions()[0].instrument.saturate, f32::MAX);
        // A DATASEC naming the whole frame is the same.
        let whole = keys(
            &[("DATASEC", "[1:100,1:10]")],
            &[("GAIN", 2.0), ("RDNOISE", 4.0)],
        );
        assert!(Readout::from_keywords(100, 10, &whole).unwrap().is_plain());
    }

    #[test]
    fn single_amplifier_with_overscan_and_trimsec() {
        let k = keys(
            &[
                ("DATASEC", "[1:90,1:10]"),
                ("BIASSEC", "[91:100,1:10]"),
                ("TRIMSEC", "[3:88,2:10]"),
            ],
            &[("GAIN", 2.0), ("RDNOISE", 4.0), ("SATURATE", 6e4)],
        );
        let r = Readout::from_keywords(100, 10, &k).unwrap();
        assert!(!r.is_plain());
        assert_eq!(
            r.trim,
            Section {
                x0: 2,
                x1: 88,
                y0: 1,
                y1: 10
            }
        );
        assert_eq!(r.trimmed_shape(), (86, 9));
        assert_eq!(r.regions()[0].region, Section::whole(86, 9));
        assert_eq!(r.regions()[0].instrument.saturate, 6e4);
        r.check_overscan_rows().unwrap();
    }

    #[test]
    fn two_amplifiers_tile_the_trim_in_their_own_places() {
        let r = Readout::from_keywords(100, 10, &keys(&two_amps(), &gains())).unwrap();
        assert_eq!(
            r.trim,
            Section {
                x0: 10,
                x1: 90,
                y0: 0,
                y1: 10
            }
        );
        let regions = r.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!(
            regions[0].region,
            Section {
                x0: 0,
                x1: 40,
                y0: 0,
                y1: 10
            }
        );
        assert_eq!(
            regions[1].region,
            Section {
                x0: 40,
                x1: 80,
                y0: 0,
                y1: 10
            }
        );
        assert_eq!(regions[1].instrument.gain, 2.0);
        assert_eq!(regions[1].instrument.read_noise, 6.0);
        // The single-amplifier keywords are the fallback; a global DATASEC holding both is fine.
        let mut s = two_amps();
        s.push(("DATASEC", "[11:90,1:10]"));
        let r = Readout::from_keywords(
            100,
            10,
            &keys(&s, &[("GAIN", 3.0), ("RDNOISE", 4.0), ("GAINB", 2.0)]),
        )
        .unwrap();
        assert_eq!(r.amplifiers[0].instrument.gain, 3.0);
        assert_eq!(r.amplifiers[1].instrument.gain, 2.0);
        assert_eq!(r.amplifiers[1].instrument.read_noise, 4.0);
    }

    #[test]
    fn header_defects_name_their_keyword() {
        // A section outside the frame.
        let mut s = two_amps();
        s[3] = ("BIASSECB", "[91:101,1:10]");
        let e = refused(&s, &gains());
        assert_eq!(e.keyword, "BIASSECB");
        assert!(e.message.contains("outside the 100×10 frame"), "{e}");
        // Overlapping data sections.
        let mut s = two_amps();
        s[2] = ("DATASECB", "[50:90,1:10]");
        let e = refused(&s, &gains());
        assert_eq!(e.keyword, "DATASECB");
        assert!(e.message.contains("overlaps DATASECA"), "{e}");
        // An overscan on data.
        let mut s = two_amps();
        s[0] = ("BIASSECA", "[5:11,1:10]");
        assert_eq!(refused(&s, &gains()).keyword, "BIASSECA");
        // GAINB without DATASECB.
        let e = refused(
            &[("DATASECA", "[1:50,1:10]")],
            &[("GAINA", 1.0), ("GAINB", 2.0), ("RDNOISE", 5.0)],
        );
        assert_eq!(e.keyword, "GAINB");
        assert!(e.message.contains("no DATASECB"), "{e}");
        // Non-positive gain, negative read noise, missing gain.
        let mut g = gains();
        g[1] = ("GAINB", 0.0);
        assert_eq!(refused(&two_amps(), &g).keyword, "GAINB");
        let mut g = gains();
        g[2] = ("RDNOISEA", -1.0);
        assert_eq!(refused(&two_amps(), &g).keyword, "RDNOISEA");
        let e = refused(&two_amps(), &gains()[1..]);
        assert_eq!(e.keyword, "GAINA");
        assert!(e.message.contains("missing"), "{e}");
        assert_eq!(refused(&[], &[("RDNOISE", 5.0)]).keyword, "GAIN");
        assert_eq!(
            refused(&[], &[("GAIN", -2.0), ("RDNOISE", 5.0)]).keyword,
            "GAIN"
        );
        // A flipped section.
        let mut s = two_amps();
        s[1] = ("DATASECA", "[50:11,1:10]");
        let e = refused(&s, &gains());
        assert_eq!(e.keyword, "DATASECA");
        assert!(e.message.contains("flipped"), "{e}");
        // Amplifiers separated by a gap (overscan between them).
        let s = [
            ("DATASECA", "[1:40,1:10]"),
            ("BIASSECA", "[41:50,1:10]"),
            ("BIASSECB", "[51:60,1:10]"),
            ("DATASECB", "[61:100,1:10]"),
        ];
        let e = refused(&s, &gains());
        assert_eq!(e.keyword, "DATASECA/DATASECB");
        assert!(e.message.contains("do not cover"), "{e}");
        // Overscan for one amplifier only; a bare BIASSEC with amplifiers.
        assert_eq!(refused(&two_amps()[..3], &gains()).keyword, "BIASSECB");
        let mut s = two_amps();
        s.push(("BIASSEC", "[91:100,1:10]"));
        assert_eq!(refused(&s, &gains()).keyword, "BIASSEC");
        // TRIMSEC outside DATASEC; TRIMSEC not covered by the amplifiers.
        let e = refused(
            &[("DATASEC", "[1:90,1:10]"), ("TRIMSEC", "[1:95,1:10]")],
            &[("GAIN", 1.0), ("RDNOISE", 1.0)],
        );
        assert_eq!(e.keyword, "TRIMSEC");
        let mut s = two_amps();
        s.push(("TRIMSEC", "[5:90,1:10]"));
        assert_eq!(refused(&s, &gains()).keyword, "TRIMSEC");
        // An overscan without a data section.
        let e = refused(
            &[("BIASSEC", "[91:100,1:10]")],
            &[("GAIN", 1.0), ("RDNOISE", 1.0)],
        );
        assert_eq!(e.keyword, "BIASSEC");
        assert!(e.message.contains("without DATASEC"), "{e}");
        // Per-row overscan that does not cover the data rows.
        let k = keys(
            &[("DATASEC", "[1:90,1:10]"), ("BIASSEC", "[91:100,1:5]")],
            &[("GAIN", 1.0), ("RDNOISE", 1.0)],
        );
        let r = Readout::from_keywords(100, 10, &k).unwrap();
        assert_eq!(r.check_overscan_rows().unwrap_err().keyword, "BIASSEC");
    }
}
