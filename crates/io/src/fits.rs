//! FITS files through CFITSIO (crate `fitsio`): float32 images, multi-HDU exposures, binary
//! tables and header keywords, read with validation and written atomically.
//!
//! Every error names the file and the HDU (and the key or column) it concerns, so a failed unit
//! says exactly what is wrong with which input. Writers go through [`crate::AtomicFile`]:
//! CFITSIO writes the temporary name, and [`FitsWriter::commit`] syncs it and renames it into
//! place, so a reader never sees a half-written FITS file.
//!
//! ```
//! use skypipe_io::fits::{Card, Column, FitsReader, FitsWriter, Hdu};
//! use ndarray::Array2;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("calexp.fits");
//! let mut w = FitsWriter::create(&path, false, None).unwrap();
//! w.primary_keys(&[Card::int("VISIT", 12, "visit"), Card::text("BAND", "r", "filter")]).unwrap();
//! w.image_f32("IMAGE", &Array2::from_elem((4, 6), 1.5f32), &[Card::real("EXPTIME", 30.0, "s")]).unwrap();
//! w.table("SOURCES", &[Column::f64("X", "pix", vec![1.0, 2.0])], &[]).unwrap();
//! w.commit().unwrap();
//! let mut r = FitsReader::open(&path).unwrap();
//! assert_eq!(r.image_f32(Hdu::Name("IMAGE")).unwrap().dim(), (4, 6));
//! assert_eq!(r.key_i64(Hdu::Primary, "VISIT").unwrap(), 12);
//! assert_eq!(r.column_f64(Hdu::Name("SOURCES"), "X").unwrap(), vec![1.0, 2.0]);
//! ```

use crate::provenance::Provenance;
use crate::{AtomicFile, Durability, IoError};
use fitsio::FitsFile;
use fitsio::hdu::{FitsHdu, HduInfo};
use fitsio::images::{ImageDescription, ImageType};
use fitsio::tables::{ColumnDataType, ColumnDescription};
use ndarray::Array2;
use std::fmt;
use std::path::{Path, PathBuf};

/// Which HDU of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hdu<'a> {
    /// The primary HDU (index 0).
    Primary,
    /// The extension with this `EXTNAME`.
    Name(&'a str),
}

impl fmt::Display for Hdu<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hdu::Primary => f.write_str("primary HDU"),
            Hdu::Name(n) => write!(f, "HDU '{n}'"),
        }
    }
}

/// Everything that can go wrong reading or writing a FITS file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FitsError {
    /// The file cannot be opened as FITS (missing, not FITS, truncated header).
    #[error("{path}: cannot open as FITS: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// CFITSIO's explanation.
        message: String,
    },
    /// An HDU is missing or cannot be read (e.g. the data are truncated).
    #[error("{path}: {hdu}: {message}")]
    Hdu {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: String,
        /// What went wrong.
        message: String,
    },
    /// A required header keyword is absent.
    #[error("{path}: {hdu}: missing header keyword '{key}'")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: String,
        /// The keyword.
        key: String,
    },
    /// A header keyword has an unusable value.
    #[error("{path}: {hdu}: keyword '{key}': {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: String,
        /// The keyword.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// An image has the wrong shape (or is not a 2-D image).
    #[error("{path}: {hdu}: image shape {found:?}, expected {expected}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: String,
        /// The shape found (rows, columns).
        found: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// Every pixel of an image is NaN or infinite.
    #[error("{path}: {hdu}: every pixel is NaN or infinite")]
    AllNan {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: String,
    },
    /// A table column is missing or unreadable.
    #[error("{path}: {hdu}: column '{column}': {message}")]
    Column {
        /// The file.
        path: PathBuf,
        /// The HDU.
        hdu: String,
        /// The column.
        column: String,
        /// What went wrong.
        message: String,
    },
    /// CFITSIO failed while writing.
    #[error("{path}: writing {what}: {message}")]
    Write {
        /// The final file name.
        path: PathBuf,
        /// What was being written.
        what: String,
        /// CFITSIO's explanation.
        message: String,
    },
    /// Creating, syncing or renaming the output failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

fn shape_text(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().rev().map(usize::to_string).collect();
    parts.join(" × ")
}

fn describe(e: &fitsio::errors::Error) -> String {
    match e {
        fitsio::errors::Error::Fits(f) => format!("CFITSIO status {}: {}", f.status, f.message),
        other => other.to_string(),
    }
}

/// A FITS file open for reading.
pub struct FitsReader {
    path: PathBuf,
    file: FitsFile,
}

impl fmt::Debug for FitsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FitsReader")
            .field("path", &self.path)
            .finish()
    }
}

impl FitsReader {
    /// Opens `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FitsError> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(FitsError::Open {
                path,
                message: "no such file".into(),
            });
        }
        crate::limits::trace_read(&path);
        let file = FitsFile::open(&path).map_err(|e| FitsError::Open {
            path: path.clone(),
            message: describe(&e),
        })?;
        Ok(Self { path, file })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn hdu(&mut self, hdu: Hdu<'_>) -> Result<FitsHdu, FitsError> {
        let r = match hdu {
            Hdu::Primary => self.file.primary_hdu(),
            Hdu::Name(n) => self.file.hdu(n),
        };
        r.map_err(|e| FitsError::Hdu {
            path: self.path.clone(),
            hdu: hdu.to_string(),
            message: match hdu {
                Hdu::Name(_) => format!("not found or unreadable ({})", describe(&e)),
                Hdu::Primary => describe(&e),
            },
        })
    }

    /// Whether an extension named `name` exists.
    pub fn has_hdu(&mut self, name: &str) -> bool {
        self.file.hdu(name).is_ok()
    }

    /// A 2-D image as float32, shape (rows, columns) = (NAXIS2, NAXIS1).
    pub fn image_f32(&mut self, hdu: Hdu<'_>) -> Result<Array2<f32>, FitsError> {
        let h = self.hdu(hdu)?;
        let shape = match &h.info {
            HduInfo::ImageInfo { shape, .. } => shape.clone(),
            _ => {
                return Err(FitsError::Hdu {
                    path: self.path.clone(),
                    hdu: hdu.to_string(),
                    message: "is not an image".into(),
                });
            }
        };
        if shape.len() != 2 || shape.contains(&0) {
            return Err(FitsError::Shape {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                found: shape,
                expected: "a non-empty 2-D image".into(),
            });
        }
        self.check_image_size(hdu, &shape)?;
        let data: Vec<f32> = h.read_image(&mut self.file).map_err(|e| FitsError::Hdu {
            path: self.path.clone(),
            hdu: hdu.to_string(),
            message: format!("cannot read the pixels (truncated file?): {}", describe(&e)),
        })?;
        Array2::from_shape_vec((shape[0], shape[1]), data).map_err(|_| FitsError::Shape {
            path: self.path.clone(),
            hdu: hdu.to_string(),
            found: shape,
            expected: "as many pixels as NAXIS1 × NAXIS2".into(),
        })
    }

    /// Refuses the current HDU's image before it is read when its declared size cannot be
    /// right: an uncompressed image must be stored whole in the file, and its float32 pixels
    /// must fit in the unit's memory limit (see [`crate::limits`]).
    fn check_image_size(&mut self, hdu: Hdu<'_>, shape: &[usize]) -> Result<(), FitsError> {
        let refuse = |message: String| FitsError::Hdu {
            path: self.path.clone(),
            hdu: hdu.to_string(),
            message: format!("image of {} pixels: {message}", shape_text(shape)),
        };
        let pixels = shape
            .iter()
            .fold(1_u128, |acc, &d| acc.saturating_mul(d as u128));
        let mut status = 0;
        let (mut head, mut data_start, mut data_end) = (0, 0, 0);
        // SAFETY: the pointer is CFITSIO's handle of this open file, positioned on the HDU by
        // `self.hdu`; both calls only read header information into the locals.
        let compressed = unsafe {
            let raw = self.file.as_raw();
            let compressed = fitsio::sys::fits_is_compressed_image(raw, &mut status) != 0;
            fitsio::sys::ffghadll(raw, &mut head, &mut data_start, &mut data_end, &mut status);
            compressed
        };
        if status == 0 && !compressed {
            let declared = u128::try_from(data_end.saturating_sub(data_start)).unwrap_or(0);
            let start = u64::try_from(data_start).unwrap_or(0);
            crate::limits::check_stored(declared, start, crate::limits::file_len(&self.path))
                .map_err(refuse)?;
        }
        crate::limits::check_allocation(pixels.saturating_mul(4)).map_err(refuse)
    }

    /// [`FitsReader::image_f32`], refusing an image whose shape is not `expected` (rows, cols)
    /// or whose every pixel is NaN.
    pub fn image_f32_checked(
        &mut self,
        hdu: Hdu<'_>,
        expected: Option<(usize, usize)>,
    ) -> Result<Array2<f32>, FitsError> {
        let img = self.image_f32(hdu)?;
        if let Some(e) = expected
            && img.dim() != e
        {
            return Err(FitsError::Shape {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                found: vec![img.nrows(), img.ncols()],
                expected: format!("[{}, {}] (as the science image)", e.0, e.1),
            });
        }
        if !img.iter().any(|v| v.is_finite()) {
            return Err(FitsError::AllNan {
                path: self.path.clone(),
                hdu: hdu.to_string(),
            });
        }
        Ok(img)
    }

    fn key<T: fitsio::headers::ReadsKey>(
        &mut self,
        hdu: Hdu<'_>,
        key: &str,
    ) -> Result<Option<T>, FitsError> {
        let h = self.hdu(hdu)?;
        match h.read_key::<T>(&mut self.file, key) {
            Ok(v) => Ok(Some(v)),
            Err(fitsio::errors::Error::Fits(f)) if f.status == 202 => Ok(None),
            Err(e) => Err(FitsError::BadKey {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                key: key.into(),
                message: describe(&e),
            }),
        }
    }

    fn required<T>(&self, hdu: Hdu<'_>, key: &str, v: Option<T>) -> Result<T, FitsError> {
        v.ok_or_else(|| FitsError::MissingKey {
            path: self.path.clone(),
            hdu: hdu.to_string(),
            key: key.into(),
        })
    }

    /// A numeric keyword, required and finite.
    pub fn key_f64(&mut self, hdu: Hdu<'_>, key: &str) -> Result<f64, FitsError> {
        let v = self.key_f64_opt(hdu, key)?;
        self.required(hdu, key, v)
    }

    /// A numeric keyword if present; an error if present but not a finite number.
    pub fn key_f64_opt(&mut self, hdu: Hdu<'_>, key: &str) -> Result<Option<f64>, FitsError> {
        let v: Option<f64> = self.key(hdu, key)?;
        if let Some(x) = v
            && !x.is_finite()
        {
            return Err(FitsError::BadKey {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                key: key.into(),
                message: format!("not a finite number ({x})"),
            });
        }
        Ok(v)
    }

    /// An integer keyword, required.
    pub fn key_i64(&mut self, hdu: Hdu<'_>, key: &str) -> Result<i64, FitsError> {
        let v: Option<i64> = self.key(hdu, key)?;
        self.required(hdu, key, v)
    }

    /// A string keyword, required (surrounding blanks removed).
    pub fn key_string(&mut self, hdu: Hdu<'_>, key: &str) -> Result<String, FitsError> {
        let v = self.key_string_opt(hdu, key)?;
        self.required(hdu, key, v)
    }

    /// A string keyword if present (surrounding blanks removed).
    pub fn key_string_opt(&mut self, hdu: Hdu<'_>, key: &str) -> Result<Option<String>, FitsError> {
        let v: Option<String> = self.key(hdu, key)?;
        Ok(v.map(|s| s.trim().to_string()))
    }

    /// A string keyword that may use the long-string convention (CONTINUE cards), if
    /// present (surrounding blanks removed).
    pub fn key_long_string_opt(
        &mut self,
        hdu: Hdu<'_>,
        key: &str,
    ) -> Result<Option<String>, FitsError> {
        /// CFITSIO's status for a keyword that is not in the header.
        const KEY_NO_EXIST: i32 = 202;
        self.hdu(hdu)?;
        let name = std::ffi::CString::new(key).unwrap_or_default();
        let mut value: *mut std::os::raw::c_char = std::ptr::null_mut();
        let mut status = 0;
        // SAFETY: the handle is CFITSIO's for this open file, positioned on `hdu` by the call
        // above; CFITSIO allocates `value` (NUL-terminated) and we free it with `fffree`.
        let text = unsafe {
            fitsio::sys::ffgkls(
                self.file.as_raw(),
                name.as_ptr(),
                &mut value,
                std::ptr::null_mut(),
                &mut status,
            );
            let text = (!value.is_null()).then(|| {
                std::ffi::CStr::from_ptr(value)
                    .to_string_lossy()
                    .into_owned()
            });
            if !value.is_null() {
                let mut free_status = 0;
                fitsio::sys::fffree(value.cast(), &mut free_status);
            }
            text
        };
        match status {
            0 => Ok(text.map(|t| t.trim().to_string())),
            KEY_NO_EXIST => Ok(None),
            _ => Err(FitsError::BadKey {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                key: key.into(),
                message: format!("CFITSIO status {status}"),
            }),
        }
    }

    /// Number of rows of a table HDU.
    pub fn num_rows(&mut self, hdu: Hdu<'_>) -> Result<usize, FitsError> {
        let h = self.hdu(hdu)?;
        match h.info {
            HduInfo::TableInfo { num_rows, .. } => Ok(num_rows),
            _ => Err(FitsError::Hdu {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                message: "is not a table".into(),
            }),
        }
    }

    fn column<T: fitsio::tables::ReadsCol>(
        &mut self,
        hdu: Hdu<'_>,
        column: &str,
    ) -> Result<Vec<T>, FitsError> {
        let h = self.hdu(hdu)?;
        h.read_col::<T>(&mut self.file, column)
            .map_err(|e| FitsError::Column {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                column: column.into(),
                message: describe(&e),
            })
    }

    /// A numeric column as f64 (CFITSIO converts integer and float columns).
    pub fn column_f64(&mut self, hdu: Hdu<'_>, column: &str) -> Result<Vec<f64>, FitsError> {
        self.column(hdu, column)
    }

    /// An integer column as i64.
    pub fn column_i64(&mut self, hdu: Hdu<'_>, column: &str) -> Result<Vec<i64>, FitsError> {
        self.column(hdu, column)
    }

    /// A string column.
    pub fn column_string(&mut self, hdu: Hdu<'_>, column: &str) -> Result<Vec<String>, FitsError> {
        let v: Vec<String> = self.column(hdu, column)?;
        Ok(v.into_iter().map(|s| s.trim().to_string()).collect())
    }

    /// Names of the columns of a table HDU.
    pub fn column_names(&mut self, hdu: Hdu<'_>) -> Result<Vec<String>, FitsError> {
        let h = self.hdu(hdu)?;
        match h.info {
            HduInfo::TableInfo {
                column_descriptions,
                ..
            } => Ok(column_descriptions.into_iter().map(|c| c.name).collect()),
            _ => Err(FitsError::Hdu {
                path: self.path.clone(),
                hdu: hdu.to_string(),
                message: "is not a table".into(),
            }),
        }
    }
}

/// Longest string value one card holds; longer ones are written with CONTINUE cards.
const MAX_SHORT_STRING: usize = 68;

/// A header card to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// Keyword (≤ 8 characters, upper case).
    pub key: String,
    /// Value.
    pub value: CardValue,
    /// Comment.
    pub comment: String,
}

/// The value of a [`Card`].
#[derive(Debug, Clone, PartialEq)]
pub enum CardValue {
    /// Floating point.
    Real(f64),
    /// Integer.
    Int(i64),
    /// String.
    Text(String),
}

impl Card {
    /// A floating-point card.
    pub fn real(key: &str, value: f64, comment: &str) -> Self {
        Self {
            key: key.into(),
            value: CardValue::Real(value),
            comment: comment.into(),
        }
    }
    /// An integer card.
    pub fn int(key: &str, value: i64, comment: &str) -> Self {
        Self {
            key: key.into(),
            value: CardValue::Int(value),
            comment: comment.into(),
        }
    }
    /// A string card.
    pub fn text(key: &str, value: &str, comment: &str) -> Self {
        Self {
            key: key.into(),
            value: CardValue::Text(value.into()),
            comment: comment.into(),
        }
    }
}

/// One column of a binary table to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Column name (`TTYPEn`).
    pub name: String,
    /// Unit (`TUNITn`), empty for none.
    pub unit: String,
    /// The values.
    pub data: ColumnData,
}

/// The values of a [`Column`].
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// 64-bit floats (`D`).
    F64(Vec<f64>),
    /// 32-bit floats (`E`).
    F32(Vec<f32>),
    /// 64-bit integers (`K`).
    I64(Vec<i64>),
    /// 32-bit integers (`J`).
    I32(Vec<i32>),
    /// Fixed-width strings (`A`), width of the longest value.
    Text(Vec<String>),
}

/// The element type of a numeric column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// 64-bit floats (`D`).
    F64,
    /// 32-bit floats (`E`).
    F32,
    /// 64-bit integers (`K`).
    I64,
    /// 32-bit integers (`J`).
    I32,
}

impl ColumnType {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            ColumnType::F64 | ColumnType::I64 => 8,
            ColumnType::F32 | ColumnType::I32 => 4,
        }
    }
}

/// A numeric column declared ahead of its values (tables written block by block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Column name (`TTYPEn`).
    pub name: String,
    /// Physical unit (`TUNITn`; empty for none).
    pub unit: String,
    /// Element type.
    pub kind: ColumnType,
}

impl ColumnSpec {
    /// A column named `name` of unit `unit` and type `kind`.
    pub fn new(name: &str, unit: &str, kind: ColumnType) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            kind,
        }
    }
}

/// The CFITSIO description of a numeric column with `per_row` values per row.
fn numeric_description(name: &str, kind: ColumnType, per_row: usize) -> ColumnDescription {
    let mut d = ColumnDescription::new(name);
    let t = match kind {
        ColumnType::F64 => ColumnDataType::Double,
        ColumnType::F32 => ColumnDataType::Float,
        ColumnType::I64 => ColumnDataType::LongLong,
        ColumnType::I32 => ColumnDataType::Int,
    };
    d.with_type(t).that_repeats(per_row);
    d
}

/// Appends rows `first..first + n` of numeric `columns` (`per_row` values each) to `buf` as
/// big-endian FITS binary-table rows.
fn encode_rows(columns: &[Column], first: usize, n: usize, per_row: usize, buf: &mut Vec<u8>) {
    for row in first..first + n {
        let range = row * per_row..(row + 1) * per_row;
        for c in columns {
            match &c.data {
                ColumnData::F64(v) => v[range.clone()]
                    .iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_be_bytes())),
                ColumnData::F32(v) => v[range.clone()]
                    .iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_be_bytes())),
                ColumnData::I64(v) => v[range.clone()]
                    .iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_be_bytes())),
                ColumnData::I32(v) => v[range.clone()]
                    .iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_be_bytes())),
                ColumnData::Text(_) => unreachable!("numeric columns only"),
            }
        }
    }
}

impl Column {
    /// Values `first..first + n` as a new column of the same name, unit and type.
    fn slice(&self, first: usize, n: usize) -> Column {
        let r = first..first + n;
        let data = match &self.data {
            ColumnData::F64(v) => ColumnData::F64(v[r].to_vec()),
            ColumnData::F32(v) => ColumnData::F32(v[r].to_vec()),
            ColumnData::I64(v) => ColumnData::I64(v[r].to_vec()),
            ColumnData::I32(v) => ColumnData::I32(v[r].to_vec()),
            ColumnData::Text(v) => ColumnData::Text(v[r].to_vec()),
        };
        Column {
            name: self.name.clone(),
            unit: self.unit.clone(),
            data,
        }
    }

    /// The element type, or `None` for text.
    pub fn kind(&self) -> Option<ColumnType> {
        match self.data {
            ColumnData::F64(_) => Some(ColumnType::F64),
            ColumnData::F32(_) => Some(ColumnType::F32),
            ColumnData::I64(_) => Some(ColumnType::I64),
            ColumnData::I32(_) => Some(ColumnType::I32),
            ColumnData::Text(_) => None,
        }
    }

    /// A float64 column.
    pub fn f64(name: &str, unit: &str, data: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            data: ColumnData::F64(data),
        }
    }
    /// A float32 column.
    pub fn f32(name: &str, unit: &str, data: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            data: ColumnData::F32(data),
        }
    }
    /// An int64 column.
    pub fn i64(name: &str, unit: &str, data: Vec<i64>) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            data: ColumnData::I64(data),
        }
    }
    /// An int32 column.
    pub fn i32(name: &str, unit: &str, data: Vec<i32>) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            data: ColumnData::I32(data),
        }
    }
    /// A string column.
    pub fn text(name: &str, data: Vec<String>) -> Self {
        Self {
            name: name.into(),
            unit: String::new(),
            data: ColumnData::Text(data),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            ColumnData::F64(v) => v.len(),
            ColumnData::F32(v) => v.len(),
            ColumnData::I64(v) => v.len(),
            ColumnData::I32(v) => v.len(),
            ColumnData::Text(v) => v.len(),
        }
    }
}

/// Pixel types of 4 bytes, stored in FITS as big-endian words.
trait Pixel4: Copy {
    fn to_fits(self) -> [u8; 4];
}

impl Pixel4 for f32 {
    fn to_fits(self) -> [u8; 4] {
        self.to_be_bytes()
    }
}

impl Pixel4 for i32 {
    fn to_fits(self) -> [u8; 4] {
        self.to_be_bytes()
    }
}

/// Pixels per write call: 1 MiB at a time. (CFITSIO's image writer converts and writes
/// 28,800 bytes per call, which costs the kernel about twice as much CPU per byte.)
const PIXELS_PER_WRITE: usize = 1 << 18;

/// Writes `data` (row order, all of it) as the pixels of `f`'s current image HDU: converted to
/// big-endian chunk by chunk in one reused buffer and handed to CFITSIO as bytes at their
/// offset in the data unit (CFITSIO pads the unit when the HDU is closed). Returns the CFITSIO
/// status on failure.
fn write_pixels<T: Pixel4>(f: &mut FitsFile, data: &[T]) -> Result<(), i32> {
    let mut buf: Vec<u8> = Vec::with_capacity(4 * data.len().min(PIXELS_PER_WRITE));
    let mut status = 0;
    for (k, chunk) in data.chunks(PIXELS_PER_WRITE).enumerate() {
        buf.clear();
        buf.resize(4 * chunk.len(), 0);
        for (bytes, &v) in buf.chunks_exact_mut(4).zip(chunk) {
            bytes.copy_from_slice(&v.to_fits());
        }
        let offset = (4 * k * PIXELS_PER_WRITE) as i64;
        // SAFETY: the pointer is CFITSIO's handle of this open, writable file, whose current
        // HDU is the image being written; CFITSIO reads `buf.len()` bytes from `buf` and does
        // not keep the pointer.
        unsafe {
            fitsio::sys::ffpextn(
                f.as_raw(),
                offset,
                buf.len() as i64,
                buf.as_mut_ptr().cast(),
                &mut status,
            );
        }
        if status != 0 {
            return Err(status);
        }
    }
    Ok(())
}

/// A FITS file being written under a temporary name; [`FitsWriter::commit`] moves it into place.
pub struct FitsWriter {
    file: Option<FitsFile>,
    atomic: Option<AtomicFile>,
    final_path: PathBuf,
    durable: bool,
}

impl fmt::Debug for FitsWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FitsWriter")
            .field("final_path", &self.final_path)
            .finish()
    }
}

impl FitsWriter {
    /// Starts writing `path` (parent directories are created). With `primary`, the primary HDU
    /// holds that float32 image (as single-image files such as raw exposures do, for tools
    /// that read only the primary HDU); without, an empty primary HDU. `durable` fsyncs the
    /// file before it is renamed into place.
    pub fn create(
        path: impl AsRef<Path>,
        durable: bool,
        primary: Option<&Array2<f32>>,
    ) -> Result<Self, FitsError> {
        let final_path = path.as_ref().to_path_buf();
        let durability = if durable {
            Durability::Synced
        } else {
            Durability::ProcessCrashOnly
        };
        let atomic = AtomicFile::create(&final_path, durability)?;
        let temp = atomic.temp_path().to_path_buf();
        let werr = |what: &str, e: fitsio::errors::Error| FitsError::Write {
            path: final_path.clone(),
            what: what.into(),
            message: describe(&e),
        };
        let mut file = match primary {
            Some(img) => {
                let dims = [img.nrows(), img.ncols()];
                let desc = ImageDescription {
                    data_type: ImageType::Float,
                    dimensions: &dims,
                };
                let mut f = FitsFile::create(&temp)
                    .with_custom_primary(&desc)
                    .overwrite()
                    .open()
                    .map_err(|e| werr("the primary HDU", e))?;
                f.primary_hdu().map_err(|e| werr("the primary HDU", e))?;
                let gathered: Vec<f32>;
                let data = match img.as_slice() {
                    Some(s) => s,
                    None => {
                        gathered = img.iter().copied().collect();
                        &gathered
                    }
                };
                write_pixels(&mut f, data).map_err(|status| FitsError::Write {
                    path: final_path.clone(),
                    what: "the primary image".into(),
                    message: format!("CFITSIO status {status}"),
                })?;
                f
            }
            None => FitsFile::create(&temp)
                .overwrite()
                .open()
                .map_err(|e| werr("the primary HDU", e))?,
        };
        // fitsio names a custom primary "_PRIMARY"; rename it in place (one EXTNAME card, as
        // readers expect: appending a second card leaves astropy reading the first).
        if primary.is_some() {
            file.primary_hdu().map_err(|e| werr("the primary HDU", e))?;
            let mut status = 0;
            // SAFETY: the pointer is CFITSIO's handle of this open, writable file, made current
            // on the primary HDU just above; the strings are NUL-terminated literals.
            unsafe {
                fitsio::sys::ffukys(
                    file.as_raw(),
                    c"EXTNAME".as_ptr(),
                    c"PRIMARY".as_ptr(),
                    c"name of this HDU".as_ptr(),
                    &mut status,
                );
            }
            if status != 0 {
                return Err(FitsError::Write {
                    path: final_path.clone(),
                    what: "the primary HDU's EXTNAME".into(),
                    message: format!("CFITSIO status {status}"),
                });
            }
        }
        Ok(Self {
            file: Some(file),
            atomic: Some(atomic),
            final_path,
            durable,
        })
    }

    fn f(&mut self) -> &mut FitsFile {
        self.file.as_mut().expect("open until commit")
    }

    /// Starts writing `path` as an edited copy of the FITS file `source` (its bytes copied to
    /// the temporary name, then opened for update): keywords set or deleted, table columns
    /// overwritten, extensions appended, and [`FitsWriter::commit`] moves it into place. The
    /// source is not changed.
    pub fn edit_copy(
        source: impl AsRef<Path>,
        path: impl AsRef<Path>,
        durable: bool,
    ) -> Result<Self, FitsError> {
        let source = source.as_ref();
        let final_path = path.as_ref().to_path_buf();
        let durability = if durable {
            Durability::Synced
        } else {
            Durability::ProcessCrashOnly
        };
        if !source.is_file() {
            return Err(FitsError::Open {
                path: source.to_path_buf(),
                message: "no such file".into(),
            });
        }
        crate::limits::trace_read(source);
        let atomic = AtomicFile::create(&final_path, durability)?;
        let temp = atomic.temp_path().to_path_buf();
        std::fs::copy(source, &temp).map_err(|e| FitsError::Open {
            path: source.to_path_buf(),
            message: format!("copying to {}: {e}", temp.display()),
        })?;
        let file = FitsFile::edit(&temp).map_err(|e| FitsError::Open {
            path: source.to_path_buf(),
            message: format!("opening its copy for update: {}", describe(&e)),
        })?;
        Ok(Self {
            file: Some(file),
            atomic: Some(atomic),
            final_path,
            durable,
        })
    }

    /// Makes `hdu` CFITSIO's current HDU.
    fn select(&mut self, hdu: Hdu<'_>) -> Result<FitsHdu, FitsError> {
        let path = self.final_path.clone();
        let f = self.f();
        let r = match hdu {
            Hdu::Primary => f.primary_hdu(),
            Hdu::Name(n) => f.hdu(n),
        };
        r.map_err(|e| FitsError::Hdu {
            path,
            hdu: hdu.to_string(),
            message: describe(&e),
        })
    }

    /// Sets keywords of `hdu`: a keyword already present is updated in place (its first
    /// card), a new one is appended. Reals keep 17 significant digits.
    pub fn set_keys(&mut self, hdu: Hdu<'_>, cards: &[Card]) -> Result<(), FitsError> {
        self.select(hdu)?;
        for c in cards {
            let key = std::ffi::CString::new(c.key.as_str()).unwrap_or_default();
            let comment = std::ffi::CString::new(c.comment.as_str()).unwrap_or_default();
            let mut status = 0;
            let file = self.f();
            // SAFETY: the pointer is CFITSIO's handle of this open, writable file, positioned
            // on `hdu` above; every string is a NUL-terminated CString that outlives the call.
            unsafe {
                let fptr = file.as_raw();
                match &c.value {
                    CardValue::Real(v) => {
                        fitsio::sys::ffukyd(
                            fptr,
                            key.as_ptr(),
                            *v,
                            -17,
                            comment.as_ptr(),
                            &mut status,
                        );
                    }
                    CardValue::Int(v) => {
                        fitsio::sys::ffukyj(fptr, key.as_ptr(), *v, comment.as_ptr(), &mut status);
                    }
                    CardValue::Text(v) if v.len() > MAX_SHORT_STRING => {
                        // The long-string convention (CONTINUE cards), as astropy reads it.
                        let value = std::ffi::CString::new(v.as_str()).unwrap_or_default();
                        fitsio::sys::ffukls(
                            fptr,
                            key.as_ptr(),
                            value.as_ptr(),
                            comment.as_ptr(),
                            &mut status,
                        );
                    }
                    CardValue::Text(v) => {
                        let value = std::ffi::CString::new(v.as_str()).unwrap_or_default();
                        fitsio::sys::ffukys(
                            fptr,
                            key.as_ptr(),
                            value.as_ptr(),
                            comment.as_ptr(),
                            &mut status,
                        );
                    }
                }
            }
            if status != 0 {
                return Err(FitsError::Write {
                    path: self.final_path.clone(),
                    what: format!("keyword '{}' of {hdu}", c.key),
                    message: format!("CFITSIO status {status}"),
                });
            }
        }
        Ok(())
    }

    /// Deletes every card of each keyword in `keys` from `hdu` (absent keywords are fine).
    pub fn delete_keys(&mut self, hdu: Hdu<'_>, keys: &[&str]) -> Result<(), FitsError> {
        /// CFITSIO's status for a keyword that is not in the header.
        const KEY_NO_EXIST: i32 = 202;
        self.select(hdu)?;
        for key in keys {
            let name = std::ffi::CString::new(*key).unwrap_or_default();
            loop {
                let mut status = 0;
                let file = self.f();
                // SAFETY: as in `set_keys`.
                unsafe {
                    fitsio::sys::ffdkey(file.as_raw(), name.as_ptr(), &mut status);
                }
                match status {
                    0 => continue,
                    KEY_NO_EXIST => break,
                    other => {
                        return Err(FitsError::Write {
                            path: self.final_path.clone(),
                            what: format!("deleting keyword '{key}' of {hdu}"),
                            message: format!("CFITSIO status {other}"),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Overwrites every row of the float64 column `column` of table `hdu`; `data` must have
    /// as many values as the table has rows.
    pub fn set_column_f64(
        &mut self,
        hdu: Hdu<'_>,
        column: &str,
        data: &[f64],
    ) -> Result<(), FitsError> {
        let h = self.select(hdu)?;
        let rows = match &h.info {
            HduInfo::TableInfo { num_rows, .. } => *num_rows,
            _ => usize::MAX,
        };
        if rows != data.len() {
            return Err(FitsError::Write {
                path: self.final_path.clone(),
                what: format!("column '{column}' of {hdu}"),
                message: format!("{} values for a table of {rows} rows", data.len()),
            });
        }
        let what = format!("column '{column}' of {hdu}");
        let path = self.final_path.clone();
        h.write_col(self.f(), column, data)
            .map_err(|e| FitsError::Write {
                path,
                what,
                message: describe(&e),
            })?;
        Ok(())
    }

    fn werr(&self, what: String) -> impl Fn(fitsio::errors::Error) -> FitsError + '_ {
        move |e| FitsError::Write {
            path: self.final_path.clone(),
            what: what.clone(),
            message: describe(&e),
        }
    }

    fn write_cards(
        &mut self,
        hdu: &FitsHdu,
        cards: &[Card],
        where_: &str,
    ) -> Result<(), FitsError> {
        for c in cards {
            let f = self.file.as_mut().expect("open until commit");
            let r = match &c.value {
                CardValue::Real(v) => hdu.write_key(f, &c.key, (*v, c.comment.as_str())),
                CardValue::Int(v) => hdu.write_key(f, &c.key, (*v, c.comment.as_str())),
                CardValue::Text(v) => hdu.write_key(f, &c.key, (v.clone(), c.comment.as_str())),
            };
            r.map_err(|e| FitsError::Write {
                path: self.final_path.clone(),
                what: format!("keyword '{}' of {where_}", c.key),
                message: describe(&e),
            })?;
        }
        Ok(())
    }

    /// Writes keywords into the primary HDU.
    pub fn primary_keys(&mut self, cards: &[Card]) -> Result<(), FitsError> {
        let hdu = self.f().primary_hdu().map_err(|e| FitsError::Write {
            path: PathBuf::new(),
            what: "the primary HDU".into(),
            message: describe(&e),
        })?;
        self.write_cards(&hdu, cards, "the primary HDU")
    }

    /// Appends a float32 image extension named `extname` with `cards` in its header.
    pub fn image_f32(
        &mut self,
        extname: &str,
        data: &Array2<f32>,
        cards: &[Card],
    ) -> Result<(), FitsError> {
        self.image(extname, data, ImageType::Float, cards)
    }

    /// Appends a 32-bit integer image extension (mask planes).
    pub fn image_i32(
        &mut self,
        extname: &str,
        data: &Array2<i32>,
        cards: &[Card],
    ) -> Result<(), FitsError> {
        self.image(extname, data, ImageType::Long, cards)
    }

    fn image<T: Pixel4>(
        &mut self,
        extname: &str,
        data: &Array2<T>,
        data_type: ImageType,
        cards: &[Card],
    ) -> Result<(), FitsError> {
        let dims = [data.nrows(), data.ncols()];
        let desc = ImageDescription {
            data_type,
            dimensions: &dims,
        };
        let what = format!("HDU '{extname}'");
        let hdu = {
            let f = self.file.as_mut().expect("open until commit");
            f.create_image(extname, &desc)
        }
        .map_err(self.werr(what.clone()))?;
        // The keywords first: a header that outgrows its block before the data exist moves
        // nothing, after them CFITSIO would shift every pixel written (a TAN-SIP WCS on three
        // 8 MB planes cost 0.05 s per CCD).
        self.write_cards(&hdu, cards, &what)?;
        // A standard-layout array is written as it is; only another layout is gathered into
        // row order first.
        let gathered: Vec<T>;
        let flat = match data.as_slice() {
            Some(s) => s,
            None => {
                gathered = data.iter().copied().collect();
                &gathered
            }
        };
        write_pixels(self.f(), flat).map_err(|status| FitsError::Write {
            path: self.final_path.clone(),
            what: format!("{what}'s pixels"),
            message: format!("CFITSIO status {status}"),
        })
    }

    /// Appends a binary table extension. All columns must have the same length.
    pub fn table(
        &mut self,
        extname: &str,
        columns: &[Column],
        cards: &[Card],
    ) -> Result<(), FitsError> {
        self.table_per_row(extname, columns, cards, 1)
    }

    /// [`FitsWriter::table`] storing `per_row` consecutive values of each numeric column in
    /// every row (vector columns, `TFORMn = '{per_row}D'` etc.). Precondition, checked by the
    /// caller: with `per_row > 1` the columns are numeric and their length is a multiple of
    /// `per_row`.
    fn table_per_row(
        &mut self,
        extname: &str,
        columns: &[Column],
        cards: &[Card],
        per_row: usize,
    ) -> Result<(), FitsError> {
        let what = format!("table '{extname}'");
        let rows = columns.first().map_or(0, Column::len);
        if let Some(c) = columns.iter().find(|c| c.len() != rows) {
            return Err(FitsError::Write {
                path: self.final_path.clone(),
                what,
                message: format!("column '{}' has {} rows, expected {rows}", c.name, c.len()),
            });
        }
        debug_assert!(
            per_row == 1
                || columns
                    .iter()
                    .all(|c| c.len() % per_row == 0 && !matches!(c.data, ColumnData::Text(_))),
            "vector columns must be numeric and fill whole rows"
        );
        let mut descs = Vec::with_capacity(columns.len());
        for c in columns {
            let d = match (&c.data, c.kind()) {
                (_, Some(kind)) => numeric_description(&c.name, kind, per_row),
                (ColumnData::Text(v), None) => {
                    let mut d = ColumnDescription::new(c.name.clone());
                    d.with_type(ColumnDataType::String)
                        .that_repeats(v.iter().map(String::len).max().unwrap_or(1).max(1));
                    d
                }
                (_, None) => unreachable!("only text columns have no numeric kind"),
            };
            descs.push(d.create().map_err(self.werr(what.clone()))?);
        }
        let hdu = {
            let f = self.file.as_mut().expect("open until commit");
            f.create_table(extname, &descs)
        }
        .map_err(self.werr(what.clone()))?;
        let numeric = columns
            .iter()
            .all(|c| !matches!(c.data, ColumnData::Text(_)));
        if numeric {
            let row_bytes: usize = columns
                .iter()
                .map(|c| c.kind().map_or(0, ColumnType::bytes) * per_row)
                .sum();
            self.write_numeric_rows(rows / per_row, row_bytes, &what, |first, n, buf| {
                encode_rows(columns, first, n, per_row, buf);
                Ok(())
            })?;
        }
        for c in columns.iter().filter(|_| !numeric) {
            let f = self.file.as_mut().expect("open until commit");
            let r = match &c.data {
                ColumnData::F64(v) => hdu.write_col(f, &c.name, v).map(|_| ()),
                ColumnData::F32(v) => hdu.write_col(f, &c.name, v).map(|_| ()),
                ColumnData::I64(v) => hdu.write_col(f, &c.name, v).map(|_| ()),
                ColumnData::I32(v) => hdu.write_col(f, &c.name, v).map(|_| ()),
                ColumnData::Text(v) => hdu.write_col(f, &c.name, v).map(|_| ()),
            };
            r.map_err(|e| FitsError::Write {
                path: self.final_path.clone(),
                what: format!("column '{}' of {what}", c.name),
                message: describe(&e),
            })?;
        }
        let units: Vec<Card> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.unit.is_empty())
            .map(|(i, c)| Card::text(&format!("TUNIT{}", i + 1), &c.unit, "unit"))
            .collect();
        self.write_cards(&hdu, &units, &what)?;
        self.write_cards(&hdu, cards, &what)
    }

    /// Writes a numeric table's data row by row as raw big-endian bytes (CFITSIO `ffptbb`) in
    /// blocks of about 16 MiB: one sequential write instead of one strided pass per column,
    /// which matters for full-sky maps (tens of millions of rows). `encode(first, n, buf)`
    /// appends rows `first..first + n` (each `row_bytes` long) to `buf`.
    fn write_numeric_rows(
        &mut self,
        rows: usize,
        row_bytes: usize,
        what: &str,
        mut encode: impl FnMut(usize, usize, &mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), FitsError> {
        let block_rows = ((16 << 20) / row_bytes.max(1)).max(1);
        let mut buf = Vec::with_capacity(block_rows.min(rows) * row_bytes);
        let mut first = 0;
        while first < rows {
            let n = block_rows.min(rows - first);
            buf.clear();
            let fail = |message: String| FitsError::Write {
                path: self.final_path.clone(),
                what: what.to_string(),
                message,
            };
            encode(first, n, &mut buf).map_err(fail)?;
            if buf.len() != n * row_bytes {
                return Err(fail(format!(
                    "rows {first}..{}: {} bytes of data, expected {}",
                    first + n,
                    buf.len(),
                    n * row_bytes
                )));
            }
            let f = self.file.as_mut().expect("open until commit");
            let mut status = 0;
            // SAFETY: the table just created is the current HDU of `f`, whose rows are
            // `row_bytes` long; `buf` holds `n` whole rows starting at row `first` (0-based),
            // and CFITSIO only reads `buf.len()` bytes from it.
            unsafe {
                fitsio::sys::ffptbb(
                    f.as_raw(),
                    (first + 1) as i64,
                    1,
                    buf.len() as i64,
                    buf.as_mut_ptr(),
                    &mut status,
                );
            }
            if status != 0 {
                return Err(fail(format!(
                    "CFITSIO status {status} writing rows {first}..{}",
                    first + n
                )));
            }
            first += n;
        }
        Ok(())
    }

    /// Appends a numeric binary table (`per_row` values of each column per row) of
    /// `values` values per column, produced block by block: `fill(first, n)` returns values
    /// `first..first + n` of every column, in the order and with the types of `specs`.
    fn numeric_table_blocks(
        &mut self,
        extname: &str,
        specs: &[ColumnSpec],
        cards: &[Card],
        values: usize,
        per_row: usize,
        mut fill: impl FnMut(usize, usize) -> Vec<Column>,
    ) -> Result<(), FitsError> {
        let what = format!("table '{extname}'");
        let mut descs = Vec::with_capacity(specs.len());
        for spec in specs {
            let d = numeric_description(&spec.name, spec.kind, per_row)
                .create()
                .map_err(self.werr(what.clone()))?;
            descs.push(d);
        }
        let hdu = {
            let f = self.file.as_mut().expect("open until commit");
            f.create_table(extname, &descs)
        }
        .map_err(self.werr(what.clone()))?;
        let row_bytes: usize = specs.iter().map(|s| s.kind.bytes() * per_row).sum();
        self.write_numeric_rows(values / per_row, row_bytes, &what, |first, n, buf| {
            let block = fill(first * per_row, n * per_row);
            let matches = block.len() == specs.len()
                && block
                    .iter()
                    .zip(specs)
                    .all(|(c, s)| c.len() == n * per_row && c.kind() == Some(s.kind));
            if !matches {
                return Err(format!(
                    "the block of values {}..{} does not match the declared columns",
                    first * per_row,
                    (first + n) * per_row
                ));
            }
            encode_rows(&block, 0, n, per_row, buf);
            Ok(())
        })?;
        let units: Vec<Card> = specs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.unit.is_empty())
            .map(|(i, s)| Card::text(&format!("TUNIT{}", i + 1), &s.unit, "unit"))
            .collect();
        self.write_cards(&hdu, &units, &what)?;
        self.write_cards(&hdu, cards, &what)
    }

    /// Closes the file, syncs it (when durable) and renames it into place.
    pub fn commit(mut self) -> Result<PathBuf, FitsError> {
        drop(self.file.take());
        let atomic = self.atomic.take().expect("present until commit");
        if self.durable {
            let sync = std::fs::File::open(atomic.temp_path()).and_then(|f| f.sync_all());
            sync.map_err(|source| {
                FitsError::Io(IoError::Os {
                    path: self.final_path.clone(),
                    action: "syncing",
                    source,
                })
            })?;
        }
        Ok(atomic.commit()?)
    }
}

impl Drop for FitsWriter {
    fn drop(&mut self) {
        // Close CFITSIO's handle before the AtomicFile removes the temporary file.
        drop(self.file.take());
    }
}

/// `EXTNAME` of the table extension [`write_healpix_map`] writes.
pub const HEALPIX_EXTNAME: &str = "HEALPIX";

/// Pixels per table row in [`write_healpix_map`]'s files with more than this many pixels.
const HEALPIX_ROW_PIXELS: usize = 1024;

/// Largest `nside` [`write_healpix_map`] accepts (2²⁹, as HEALPix itself).
const HEALPIX_MAX_NSIDE: u64 = 1 << 29;

/// Keywords [`write_healpix_map`] writes itself, refused among the caller's extra cards so that
/// no header holds two different values for one of them.
const HEALPIX_KEYS: [&str; 9] = [
    "PIXTYPE", "ORDERING", "COORDSYS", "NSIDE", "FIRSTPIX", "LASTPIX", "INDXSCHM", "OBJECT",
    "EXTNAME",
];

/// Header of a HEALPix map table.
#[derive(Debug, Clone, PartialEq)]
pub struct HealpixHeader<'a> {
    /// HEALPix resolution: a power of two in `[1, 2²⁹]`; the map has `12·nside²` pixels.
    pub nside: u64,
    /// Pixel order of the columns: NESTED when true, RING when false.
    pub nested: bool,
    /// "G", "E" or "C" (galactic, ecliptic, celestial), written as COORDSYS.
    pub coordsys: &'a str,
    /// extra keywords, written after the HEALPix ones.
    pub cards: Vec<Card>,
    /// Where the map came from: written into the primary header (and a `PROVENANCE` table
    /// after the map's, so that the map stays the first extension) when given.
    pub provenance: Option<&'a Provenance>,
}

/// Writes a full-sky HEALPix map as `healpy.read_map` reads it: an empty primary HDU and one
/// BINTABLE extension ([`HEALPIX_EXTNAME`]) holding `columns` (each `12·nside²` values in the
/// pixel order of `header.nested`; unseen pixels are whatever the caller put there, normally
/// healpy's `UNSEEN` = −1.6375e30), with `TUNITn` from each column's unit and the keywords
/// PIXTYPE='HEALPIX', ORDERING='RING'/'NESTED', COORDSYS, NSIDE, FIRSTPIX=0, LASTPIX=npix−1,
/// INDXSCHM='IMPLICIT', OBJECT='FULLSKY', followed by `header.cards`. Written atomically (temp
/// file, then rename) with the given durability.
///
/// Layout: 1024 pixels per row (vector columns `1024D`, `1024J`, …) when the map has more than
/// 1024 pixels (nside ≥ 16, where 12·nside² is a multiple of 1024), else one pixel per row —
/// exactly what `healpy.write_map` writes by default (`fits_IDL=True`, kept for HEALPix's IDL
/// readers); healpy (which flattens each column with `ravel()`) and astropy read it, as the
/// integration test `tests/healpix_fits.rs` checks.
/// It is also the faster layout: at nside 1024, CFITSIO writes it and healpy reads it about
/// twice as fast as one pixel per row (measured), because each column lies in 1024-value runs
/// instead of one value per row.
///
/// Refused, with an error naming the file: an nside that is not a power of two in `[1, 2²⁹]`,
/// a coordsys other than G/E/C, no columns, a text column, a column whose length is not
/// `12·nside²`, two columns with the same name, and an extra card for a keyword written here.
///
/// ```
/// use skypipe_io::fits::{write_healpix_map, Column, FitsReader, Hdu, HealpixHeader, HEALPIX_EXTNAME};
/// use skypipe_io::Durability;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("map.fits");
/// let header = HealpixHeader { nside: 1, nested: false, coordsys: "G", cards: vec![], provenance: None };
/// let hits = Column::i32("HITS", "", (0..12).collect());
/// write_healpix_map(&path, &header, vec![hits], Durability::ProcessCrashOnly).unwrap();
/// let mut r = FitsReader::open(&path).unwrap();
/// assert_eq!(r.key_string(Hdu::Name(HEALPIX_EXTNAME), "ORDERING").unwrap(), "RING");
/// ```
pub fn write_healpix_map(
    path: &Path,
    header: &HealpixHeader<'_>,
    columns: Vec<Column>,
    durability: Durability,
) -> Result<(), FitsError> {
    let npix = healpix_npix(path, header)?;
    let mut specs = Vec::with_capacity(columns.len());
    for c in &columns {
        let Some(kind) = c.kind() else {
            return Err(healpix_refusal(
                path,
                format!("column '{}' holds text, not numbers", c.name),
            ));
        };
        if c.len() as u64 != npix {
            return Err(healpix_refusal(
                path,
                format!(
                    "column '{}' has {} values, expected 12·nside² = {npix} (nside {})",
                    c.name,
                    c.len(),
                    header.nside
                ),
            ));
        }
        specs.push(ColumnSpec::new(&c.name, &c.unit, kind));
    }
    write_healpix_map_blocks(
        path,
        header,
        &specs,
        |first, n| columns.iter().map(|c| c.slice(first, n)).collect(),
        durability,
    )
}

/// [`write_healpix_map`] with the columns produced block by block, so that a full-sky map
/// never has to be held in memory: `fill(first, n)` returns the values of output pixels
/// `first..first + n` of every column, in the order and with the types of `specs` (a block
/// that does not match is refused). Blocks are about 16 MiB of table rows.
///
/// ```
/// use skypipe_io::fits::{write_healpix_map_blocks, Column, ColumnSpec, ColumnType, HealpixHeader};
/// use skypipe_io::Durability;
/// let dir = tempfile::tempdir().unwrap();
/// let header = HealpixHeader { nside: 2, nested: true, coordsys: "G", cards: vec![], provenance: None };
/// let specs = [ColumnSpec::new("I_STOKES", "K_CMB", ColumnType::F64)];
/// let fill = |first: usize, n: usize| vec![Column::f64("I_STOKES", "K_CMB", (first..first + n).map(|p| p as f64).collect())];
/// write_healpix_map_blocks(&dir.path().join("m.fits"), &header, &specs, fill, Durability::ProcessCrashOnly).unwrap();
/// ```
pub fn write_healpix_map_blocks(
    path: &Path,
    header: &HealpixHeader<'_>,
    specs: &[ColumnSpec],
    fill: impl FnMut(usize, usize) -> Vec<Column>,
    durability: Durability,
) -> Result<(), FitsError> {
    let refuse = |message: String| healpix_refusal(path, message);
    let npix = healpix_npix(path, header)?;
    let nside = header.nside;
    if specs.is_empty() {
        return Err(refuse("no columns".into()));
    }
    for (k, c) in specs.iter().enumerate() {
        if specs[..k]
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(&c.name))
        {
            return Err(refuse(format!("two columns named '{}'", c.name)));
        }
    }
    if let Some(c) = header
        .cards
        .iter()
        .find(|c| HEALPIX_KEYS.contains(&c.key.trim().to_ascii_uppercase().as_str()))
    {
        return Err(refuse(format!(
            "extra keyword '{}' is written by the HEALPix writer itself",
            c.key
        )));
    }
    let ordering = if header.nested { "NESTED" } else { "RING" };
    let last = i64::try_from(npix - 1).expect("npix < 2^62");
    let mut cards = vec![
        Card::text("PIXTYPE", "HEALPIX", "HEALPIX pixelisation"),
        Card::text("ORDERING", ordering, "pixel ordering scheme"),
        Card::text(
            "COORDSYS",
            header.coordsys,
            "G = galactic, E = ecliptic, C = celestial",
        ),
        Card::int("NSIDE", nside as i64, "resolution parameter"),
        Card::int("FIRSTPIX", 0, "first pixel (0 based)"),
        Card::int("LASTPIX", last, "last pixel (0 based)"),
        Card::text("INDXSCHM", "IMPLICIT", "indexing: implicit (full sky)"),
        Card::text("OBJECT", "FULLSKY", "sky coverage"),
    ];
    cards.extend(header.cards.iter().cloned());
    let per_row = if npix > HEALPIX_ROW_PIXELS as u64 {
        HEALPIX_ROW_PIXELS
    } else {
        1
    };
    let mut w = FitsWriter::create(path, durability == Durability::Synced, None)?;
    w.numeric_table_blocks(HEALPIX_EXTNAME, specs, &cards, npix as usize, per_row, fill)?;
    if let Some(provenance) = header.provenance {
        provenance.write_fits(&mut w)?;
    }
    w.commit()?;
    Ok(())
}

/// The number of pixels of a valid header's map; refuses a bad nside or coordsys.
fn healpix_npix(path: &Path, header: &HealpixHeader<'_>) -> Result<u64, FitsError> {
    let nside = header.nside;
    if !(nside.is_power_of_two() && nside <= HEALPIX_MAX_NSIDE) {
        return Err(healpix_refusal(
            path,
            format!("nside {nside} is not a power of two in [1, 2^29]"),
        ));
    }
    if !["G", "E", "C"].contains(&header.coordsys) {
        return Err(healpix_refusal(
            path,
            format!("coordsys '{}' is not one of 'G', 'E', 'C'", header.coordsys),
        ));
    }
    Ok(12 * nside * nside)
}

/// The error for a HEALPix map refused before writing.
fn healpix_refusal(path: &Path, message: String) -> FitsError {
    FitsError::Write {
        path: path.to_path_buf(),
        what: "HEALPix map".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(path: &Path) {
        let img = Array2::from_shape_fn((3, 5), |(r, c)| (r * 10 + c) as f32);
        let mut w = FitsWriter::create(path, true, Some(&img)).unwrap();
        w.primary_keys(&[
            Card::real("GAIN", 1.5, "e-/ADU"),
            Card::text("BAND", "g", "filter"),
            Card::int("CCD", 3, "ccd"),
        ])
        .unwrap();
        let mask = Array2::from_elem((3, 5), 4i32);
        w.image_i32("MASK", &mask, &[Card::int("MP_CR", 4, "bit")])
            .unwrap();
        w.table(
            "SOURCES",
            &[
                Column::f64("RA", "deg", vec![10.5, 11.5]),
                Column::i64("ID", "", vec![7, 8]),
                Column::f32("F", "e-", vec![1.0, 2.0]),
                Column::i32("FLAGS", "", vec![0, 3]),
                Column::text("TYPE", vec!["star".into(), "galaxy".into()]),
            ],
            &[Card::text("BANDS", "g,r", "")],
        )
        .unwrap();
        w.commit().unwrap();
    }

    #[test]
    fn round_trip_images_keys_and_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.fits");
        write_sample(&path);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporaries left: {names:?}");
        let mut r = FitsReader::open(&path).unwrap();
        let img = r.image_f32(Hdu::Primary).unwrap();
        assert_eq!(img.dim(), (3, 5));
        assert_eq!(img[[2, 4]], 24.0);
        assert_eq!(r.key_f64(Hdu::Primary, "GAIN").unwrap(), 1.5);
        assert_eq!(r.key_string(Hdu::Primary, "BAND").unwrap(), "g");
        assert_eq!(r.key_i64(Hdu::Primary, "CCD").unwrap(), 3);
        assert_eq!(r.key_f64_opt(Hdu::Primary, "NOPE").unwrap(), None);
        assert_eq!(r.key_i64(Hdu::Name("MASK"), "MP_CR").unwrap(), 4);
        assert_eq!(r.num_rows(Hdu::Name("SOURCES")).unwrap(), 2);
        assert_eq!(
            r.column_f64(Hdu::Name("SOURCES"), "RA").unwrap(),
            vec![10.5, 11.5]
        );
        assert_eq!(
            r.column_i64(Hdu::Name("SOURCES"), "ID").unwrap(),
            vec![7, 8]
        );
        assert_eq!(
            r.column_f64(Hdu::Name("SOURCES"), "FLAGS").unwrap(),
            vec![0.0, 3.0]
        );
        assert_eq!(
            r.column_string(Hdu::Name("SOURCES"), "TYPE").unwrap(),
            vec!["star", "galaxy"]
        );
        assert_eq!(
            r.column_names(Hdu::Name("SOURCES")).unwrap(),
            vec!["RA", "ID", "F", "FLAGS", "TYPE"]
        );
        assert!(r.has_hdu("MASK") && !r.has_hdu("VARIANCE"));
    }

    #[test]
    fn images_in_any_memory_layout_are_written_in_row_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layout.fits");
        let rows = Array2::from_shape_fn((4, 3), |(r, c)| (r * 10 + c) as f32);
        // The transpose of a (3, 4) array: the same values, stored column by column.
        let columns = Array2::from_shape_fn((3, 4), |(c, r)| (r * 10 + c) as f32).reversed_axes();
        assert!(!columns.is_standard_layout());
        let mut w = FitsWriter::create(&path, false, None).unwrap();
        w.image_f32("ROWS", &rows, &[]).unwrap();
        w.image_f32("COLUMNS", &columns, &[]).unwrap();
        w.commit().unwrap();
        let mut r = FitsReader::open(&path).unwrap();
        assert_eq!(r.image_f32(Hdu::Name("ROWS")).unwrap(), rows);
        assert_eq!(r.image_f32(Hdu::Name("COLUMNS")).unwrap(), rows);
    }

    #[test]
    fn images_of_several_write_chunks_round_trip_to_the_bit() {
        // 2.3 chunks of pixels, with NaN, infinities, −0 and subnormals among them.
        let (rows, cols) = (601, 1003);
        assert!(rows * cols > 2 * PIXELS_PER_WRITE && rows * cols % PIXELS_PER_WRITE != 0);
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e-41,
            f32::MAX,
        ];
        let img = Array2::from_shape_fn((rows, cols), |(r, c)| {
            let i = r * cols + c;
            if i % 1009 == 0 {
                special[i / 1009 % special.len()]
            } else {
                (i as f32).sin() * 1e4
            }
        });
        let mask = Array2::from_shape_fn((rows, cols), |(r, c)| (r * cols + c) as i32 - 300_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.fits");
        let mut w = FitsWriter::create(&path, false, Some(&img)).unwrap();
        w.image_i32("MASK", &mask, &[]).unwrap();
        w.image_f32("IMAGE", &img, &[]).unwrap();
        w.commit().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() % 2880, 0);
        let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let mut r = FitsReader::open(&path).unwrap();
        assert_eq!(bits(&r.image_f32(Hdu::Primary).unwrap()), bits(&img));
        assert_eq!(bits(&r.image_f32(Hdu::Name("IMAGE")).unwrap()), bits(&img));
        // The mask through CFITSIO's own reader as 32-bit integers.
        let hdu = r.file.hdu("MASK").unwrap();
        let back: Vec<i32> = hdu.read_image(&mut r.file).unwrap();
        assert_eq!(back, mask.iter().copied().collect::<Vec<_>>());
    }

    #[test]
    fn errors_name_the_file_hdu_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fits");
        write_sample(&path);
        let mut r = FitsReader::open(&path).unwrap();
        let e = r.key_f64(Hdu::Primary, "RDNOISE").unwrap_err().to_string();
        assert!(
            e.contains("x.fits") && e.contains("RDNOISE") && e.contains("primary"),
            "{e}"
        );
        let e = r.image_f32(Hdu::Name("VARIANCE")).unwrap_err().to_string();
        assert!(e.contains("x.fits") && e.contains("VARIANCE"), "{e}");
        let e = r
            .image_f32_checked(Hdu::Primary, Some((4, 5)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3, 5]") && e.contains("[4, 5]"), "{e}");
        let e = r
            .column_f64(Hdu::Name("SOURCES"), "DEC")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DEC") && e.contains("SOURCES"), "{e}");
        let e = r.key_f64(Hdu::Primary, "BAND").unwrap_err().to_string();
        assert!(e.contains("BAND"), "{e}");

        // Truncated: the header survives, the pixels do not.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.fits");
        std::fs::write(&cut, &bytes[..2880 + 100]).unwrap();
        let e = match FitsReader::open(&cut) {
            Err(e) => e.to_string(),
            Ok(mut r) => r.image_f32(Hdu::Primary).unwrap_err().to_string(),
        };
        assert!(e.contains("cut.fits"), "{e}");
        let e = FitsReader::open(dir.path().join("missing.fits"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.fits"), "{e}");

        // All NaN.
        let nan = dir.path().join("nan.fits");
        let img = Array2::from_elem((2, 2), f32::NAN);
        FitsWriter::create(&nan, false, Some(&img))
            .unwrap()
            .commit()
            .unwrap();
        let e = FitsReader::open(&nan)
            .unwrap()
            .image_f32_checked(Hdu::Primary, None)
            .unwrap_err();
        assert!(matches!(e, FitsError::AllNan { .. }), "{e}");
    }

    #[test]
    fn an_uncommitted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = FitsWriter::create(dir.path().join("y.fits"), false, None).unwrap();
            w.primary_keys(&[Card::int("A", 1, "")]).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
