//! HDF5 helpers: typed reads with shape checks, errors naming the file and the dataset, and
//! deterministic atomic writes.
//!
//! - [`H5Reader`] opens a file read-only; every read checks the dataset's rank and, where the
//!   caller knows it, its shape, and every error names the file and the dataset or attribute
//!   (`/data/obs=0421.h5: dataset 'attitude/quat' has shape [900, 3], expected [900, 4]`).
//!   Numeric types are converted by HDF5 (an `i64` attribute reads as `f64`); strings may be
//!   variable- or fixed-length, ASCII or UTF-8 (as h5py and numpy write them).
//! - [`H5Writer`] writes a new file under a temporary name in the target directory
//!   ([`crate::AtomicFile::temp_path`]) and renames it into place on [`H5Writer::commit`].
//!   Object modification times are not recorded and datasets are contiguous and unfiltered, so
//!   the same calls with the same data write byte-identical files.
//!
//! ```
//! use skypipe_io::Durability;
//! use skypipe_io::hdf5::{H5Reader, H5Writer};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("obs=0001.h5");
//! let w = H5Writer::create(&path, Durability::ProcessCrashOnly).unwrap();
//! w.write_2d("attitude/quat", &[[0.0, 0.0, 0.0, 1.0]; 3]).unwrap();
//! w.attr_str("attitude/quat", "frame", "ecliptic").unwrap();
//! w.commit().unwrap();
//! let r = H5Reader::open(&path).unwrap();
//! let q: Vec<[f64; 4]> = r.read_2d("attitude/quat", Some(3)).unwrap();
//! assert_eq!(q[2], [0.0, 0.0, 0.0, 1.0]);
//! assert_eq!(r.attr_str("attitude/quat", "frame").unwrap(), "ecliptic");
//! let err = r.read_2d::<f64, 3>("attitude/quat", None).unwrap_err();
//! assert!(err.to_string().contains("'attitude/quat' has shape [3, 4], expected [*, 3]"), "{err}");
//! ```

use crate::{AtomicFile, Durability, IoError};
use ::hdf5 as h5;
pub use ::hdf5::H5Type;
use ::hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// An HDF5 error naming the file and the dataset, group or attribute concerned.
#[derive(Debug, thiserror::Error)]
pub enum H5Error {
    /// The file could not be opened or created (missing, truncated, not HDF5).
    #[error("{path}: cannot open as HDF5: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// HDF5's reason.
        #[source]
        source: h5::Error,
    },
    /// A required dataset, group or attribute does not exist.
    #[error("{path}: {what} '{name}' is missing")]
    Missing {
        /// The file.
        path: PathBuf,
        /// "dataset", "group" or "attribute".
        what: &'static str,
        /// Its name (attributes as `object@attribute`).
        name: String,
    },
    /// A dataset or attribute has the wrong rank or shape.
    #[error("{path}: dataset '{name}' has shape {found:?}, expected {expected}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The dataset or attribute.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// The expected shape (`*` for any length).
        expected: String,
    },
    /// Reading failed (unreadable data, no conversion to the requested type).
    #[error("{path}: cannot read '{name}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The dataset or attribute.
        name: String,
        /// HDF5's reason.
        #[source]
        source: h5::Error,
    },
    /// The values read are not acceptable (NaN, out of range, ...), as the caller found.
    #[error("{path}: '{name}': {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dataset or attribute.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Writing failed.
    #[error("{path}: cannot write '{name}': {source}")]
    Write {
        /// The file (its final name).
        path: PathBuf,
        /// The object being written.
        name: String,
        /// HDF5's reason.
        #[source]
        source: h5::Error,
    },
    /// The atomic commit (sync, rename) failed.
    #[error(transparent)]
    Commit(#[from] IoError),
}

impl H5Error {
    /// An [`H5Error::Invalid`] for values a caller refuses after reading them.
    pub fn invalid(path: &Path, name: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            name: name.to_string(),
            message: message.into(),
        }
    }
}

fn shape_text(expected: &[Option<usize>]) -> String {
    let parts: Vec<String> = expected
        .iter()
        .map(|d| d.map_or("*".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A file open for reading.
#[derive(Debug)]
pub struct H5Reader {
    path: PathBuf,
    file: h5::File,
}

/// One dataset of an [`H5Reader`], for reading in row ranges (bounded memory).
#[derive(Debug)]
pub struct H5Dataset<'a> {
    path: &'a Path,
    name: String,
    ds: h5::Dataset,
    shape: Vec<usize>,
}

impl H5Reader {
    /// Opens `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, H5Error> {
        let path = path.as_ref().to_path_buf();
        crate::limits::trace_read(&path);
        match h5::File::open(&path) {
            Ok(file) => Ok(Self { path, file }),
            Err(source) => Err(H5Error::Open { path, source }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a link (group or dataset) exists at `name` (intermediate groups may be missing).
    pub fn exists(&self, name: &str) -> bool {
        let mut prefix = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.file.link_exists(&prefix) {
                return false;
            }
        }
        !prefix.is_empty()
    }

    /// Names of the groups inside group `name` (`""` or `/` for the root), sorted.
    pub fn group_names(&self, name: &str) -> Result<Vec<String>, H5Error> {
        let group = self.group(name)?;
        let groups = group
            .groups()
            .map_err(|source| self.read_err(name, source))?;
        let mut names: Vec<String> = groups
            .iter()
            .map(|g| g.name().rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    fn group(&self, name: &str) -> Result<h5::Group, H5Error> {
        let trimmed = name.trim_matches('/');
        if trimmed.is_empty() {
            return self
                .file
                .group("/")
                .map_err(|source| self.read_err(name, source));
        }
        if !self.exists(trimmed) {
            return Err(self.missing("group", trimmed));
        }
        self.file
            .group(trimmed)
            .map_err(|source| self.read_err(trimmed, source))
    }

    fn missing(&self, what: &'static str, name: &str) -> H5Error {
        H5Error::Missing {
            path: self.path.clone(),
            what,
            name: name.to_string(),
        }
    }

    fn read_err(&self, name: &str, source: h5::Error) -> H5Error {
        H5Error::Read {
            path: self.path.clone(),
            name: name.to_string(),
            source,
        }
    }

    /// Opens dataset `name` and checks its shape against `expected` (`None` = any length).
    pub fn dataset(
        &self,
        name: &str,
        expected: &[Option<usize>],
    ) -> Result<H5Dataset<'_>, H5Error> {
        if !self.exists(name) {
            return Err(self.missing("dataset", name));
        }
        let ds = self
            .file
            .dataset(name)
            .map_err(|source| self.read_err(name, source))?;
        let shape = ds.shape();
        let ok = shape.len() == expected.len()
            && shape
                .iter()
                .zip(expected)
                .all(|(s, e)| e.is_none_or(|e| e == *s));
        if !ok {
            return Err(H5Error::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                found: shape,
                expected: shape_text(expected),
            });
        }
        self.check_storage(name, &ds, &shape)?;
        Ok(H5Dataset {
            path: &self.path,
            name: name.to_string(),
            ds,
            shape,
        })
    }

    /// Refuses a contiguous, unfiltered dataset whose declared size does not fit in the file
    /// (chunked or compressed data may legitimately declare more than is stored).
    fn check_storage(&self, name: &str, ds: &h5::Dataset, shape: &[usize]) -> Result<(), H5Error> {
        if ds.layout() != h5::dataset::Layout::Contiguous || !ds.filters().is_empty() {
            return Ok(());
        }
        let Some(offset) = ds.offset() else {
            return Ok(()); // never written: reads give the fill value, bounded by the memory check
        };
        let element = ds
            .dtype()
            .map_err(|source| self.read_err(name, source))?
            .size();
        let declared = shape
            .iter()
            .fold(element as u128, |acc, &d| acc.saturating_mul(d as u128));
        crate::limits::check_stored(declared, offset, crate::limits::file_len(&self.path))
            .map_err(|message| H5Error::invalid(&self.path, name, message))
    }

    /// Reads a whole 1-D dataset, checking its length when `len` is given.
    pub fn read_1d<T: H5Type>(&self, name: &str, len: Option<usize>) -> Result<Vec<T>, H5Error> {
        let ds = self.dataset(name, &[len])?;
        ds.read_rows(0..ds.rows())
    }

    /// Reads a whole `[rows, N]` dataset as rows, checking the row count when `rows` is given.
    pub fn read_2d<T: H5Type + Copy + Default, const N: usize>(
        &self,
        name: &str,
        rows: Option<usize>,
    ) -> Result<Vec<[T; N]>, H5Error> {
        let ds = self.dataset(name, &[rows, Some(N)])?;
        ds.read_rows_2d(0..ds.rows())
    }

    /// Reads a scalar dataset.
    pub fn read_scalar<T: H5Type>(&self, name: &str) -> Result<T, H5Error> {
        let ds = self.dataset(name, &[])?;
        ds.ds
            .read_scalar()
            .map_err(|source| self.read_err(name, source))
    }

    fn attribute(&self, object: &str, attr: &str) -> Result<h5::Attribute, H5Error> {
        let label = format!("{}@{attr}", object.trim_matches('/'));
        let trimmed = object.trim_matches('/');
        let location: h5::Location = if trimmed.is_empty() {
            (**self.file).clone()
        } else if !self.exists(trimmed) {
            return Err(self.missing("attribute", &label));
        } else if let Ok(g) = self.file.group(trimmed) {
            (*g).clone()
        } else {
            let d = self
                .file
                .dataset(trimmed)
                .map_err(|source| self.read_err(&label, source))?;
            (**d).clone()
        };
        let names = location
            .attr_names()
            .map_err(|source| self.read_err(&label, source))?;
        if !names.iter().any(|n| n == attr) {
            return Err(self.missing("attribute", &label));
        }
        location
            .attr(attr)
            .map_err(|source| self.read_err(&label, source))
    }

    /// Whether `object` (a group or dataset; `""` for the root) has attribute `attr`.
    pub fn has_attr(&self, object: &str, attr: &str) -> bool {
        self.attribute(object, attr).is_ok()
    }

    /// A numeric attribute holding one value (scalar or shape `[1]`), converted to `f64`.
    pub fn attr_f64(&self, object: &str, attr: &str) -> Result<f64, H5Error> {
        let v = self.attr_vec::<f64>(object, attr, Some(1))?;
        Ok(v[0])
    }

    /// A numeric attribute holding one value (scalar or shape `[1]`), as `i64`.
    pub fn attr_i64(&self, object: &str, attr: &str) -> Result<i64, H5Error> {
        let v = self.attr_vec::<i64>(object, attr, Some(1))?;
        Ok(v[0])
    }

    /// A 1-D (or scalar) attribute as a vector, checking its length when `len` is given.
    pub fn attr_vec<T: H5Type>(
        &self,
        object: &str,
        attr: &str,
        len: Option<usize>,
    ) -> Result<Vec<T>, H5Error> {
        let label = format!("{}@{attr}", object.trim_matches('/'));
        let a = self.attribute(object, attr)?;
        let shape = a.shape();
        let n: usize = shape.iter().product();
        let ok = shape.len() <= 1 && len.is_none_or(|l| l == n);
        if !ok {
            return Err(H5Error::Shape {
                path: self.path.clone(),
                name: label,
                found: shape,
                expected: shape_text(&[len]),
            });
        }
        a.read_raw::<T>()
            .map_err(|source| self.read_err(&label, source))
    }

    /// A string attribute (variable- or fixed-length, ASCII or UTF-8; trailing NULs dropped).
    pub fn attr_str(&self, object: &str, attr: &str) -> Result<String, H5Error> {
        let label = format!("{}@{attr}", object.trim_matches('/'));
        let a = self.attribute(object, attr)?;
        let err = |source| self.read_err(&label, source);
        let desc = a.dtype().and_then(|t| t.to_descriptor()).map_err(err)?;
        if !a.shape().iter().all(|&d| d == 1) {
            return Err(H5Error::Shape {
                path: self.path.clone(),
                name: label,
                found: a.shape(),
                expected: "a single string".to_string(),
            });
        }
        let text = match desc {
            TypeDescriptor::VarLenUnicode => a
                .read_raw::<VarLenUnicode>()
                .map_err(err)?
                .first()
                .map(|s| s.as_str().to_string()),
            TypeDescriptor::VarLenAscii => a
                .read_raw::<VarLenAscii>()
                .map_err(err)?
                .first()
                .map(|s| s.as_str().to_string()),
            TypeDescriptor::FixedAscii(_) => a
                .read_raw::<FixedAscii<256>>()
                .map_err(err)?
                .first()
                .map(|s| s.as_str().to_string()),
            TypeDescriptor::FixedUnicode(_) => a
                .read_raw::<FixedUnicode<1024>>()
                .map_err(err)?
                .first()
                .map(|s| s.as_str().to_string()),
            other => {
                return Err(H5Error::invalid(
                    &self.path,
                    &label,
                    format!("expected a string, found {other}"),
                ));
            }
        };
        Ok(text.unwrap_or_default().trim_end_matches('\0').to_string())
    }
}

impl H5Dataset<'_> {
    /// The file the dataset belongs to.
    pub fn file_path(&self) -> &Path {
        self.path
    }

    /// The dataset's name in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shape of the dataset.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Length of the first dimension.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Checks that the stored elements are floating point (`integer = false`, float32 or
    /// float64) or integers (`integer = true`, any width and sign): reads convert either width
    /// to the requested type, so a reader accepts both layouts after this check.
    pub fn require_numeric(&self, integer: bool) -> Result<(), H5Error> {
        let desc = self
            .ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| self.read_err(e))?;
        let ok = match desc {
            TypeDescriptor::Float(_) => !integer,
            TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => integer,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(H5Error::invalid(
                self.path,
                &self.name,
                format!(
                    "stored as {desc:?}, expected {}",
                    if integer {
                        "integers"
                    } else {
                        "float32 or float64"
                    }
                ),
            ))
        }
    }

    fn read_err(&self, source: h5::Error) -> H5Error {
        H5Error::Read {
            path: self.path.to_path_buf(),
            name: self.name.clone(),
            source,
        }
    }

    fn check_range(&self, rows: &Range<usize>) -> Result<(), H5Error> {
        if rows.start > rows.end || rows.end > self.rows() {
            return Err(H5Error::invalid(
                self.path,
                &self.name,
                format!(
                    "rows {}..{} requested from a dataset of {} rows",
                    rows.start,
                    rows.end,
                    self.rows()
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a read of `rows` rows of `row_bytes` bytes each that exceeds the unit's memory
    /// limit (see [`crate::limits`]).
    fn check_memory(&self, rows: &Range<usize>, row_bytes: usize) -> Result<(), H5Error> {
        let bytes = (rows.len() as u128).saturating_mul(row_bytes as u128);
        crate::limits::check_allocation(bytes).map_err(|message| {
            H5Error::invalid(
                self.path,
                &self.name,
                format!("{} rows declared: {message}", self.rows()),
            )
        })
    }

    /// Reads rows `rows` of a 1-D dataset.
    pub fn read_rows<T: H5Type>(&self, rows: Range<usize>) -> Result<Vec<T>, H5Error> {
        self.check_range(&rows)?;
        self.check_memory(&rows, std::mem::size_of::<T>())?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let arr = self
            .ds
            .read_slice_1d::<T, _>(rows)
            .map_err(|e| self.read_err(e))?;
        Ok(arr.into_raw_vec_and_offset().0)
    }

    /// Reads rows `rows` of a `[n, N]` dataset.
    pub fn read_rows_2d<T: H5Type + Copy + Default, const N: usize>(
        &self,
        rows: Range<usize>,
    ) -> Result<Vec<[T; N]>, H5Error> {
        self.check_range(&rows)?;
        self.check_memory(&rows, std::mem::size_of::<[T; N]>())?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let arr = self
            .ds
            .read_slice_2d::<T, _>(ndarray::s![rows, ..])
            .map_err(|e| self.read_err(e))?;
        let flat = arr.as_standard_layout();
        let flat = flat.as_slice().unwrap_or(&[]);
        Ok(flat
            .chunks_exact(N)
            .map(|c| {
                let mut row = [T::default(); N];
                row.copy_from_slice(c);
                row
            })
            .collect())
    }
}

/// A new HDF5 file written under a temporary name and renamed into place by
/// [`H5Writer::commit`]; dropped without commit, it leaves nothing behind.
#[derive(Debug)]
pub struct H5Writer {
    atomic: AtomicFile,
    file: Option<h5::File>,
}

/// A dataset of an [`H5Writer`], written in row ranges.
#[derive(Debug)]
pub struct H5OutDataset {
    path: PathBuf,
    name: String,
    ds: h5::Dataset,
}

impl H5Writer {
    /// Starts writing `path` (its directory is created if missing).
    pub fn create(path: impl AsRef<Path>, durability: Durability) -> Result<Self, H5Error> {
        let atomic = AtomicFile::create(path.as_ref(), durability)?;
        let file = h5::File::with_options()
            .with_fcpl(|p| p.obj_track_times(false))
            .with_fapl(|p| p.fclose_degree(h5::file::FileCloseDegree::Strong))
            .create(atomic.temp_path())
            .map_err(|source| H5Error::Open {
                path: path.as_ref().to_path_buf(),
                source,
            })?;
        Ok(Self {
            atomic,
            file: Some(file),
        })
    }

    /// The final path of the file.
    pub fn path(&self) -> &Path {
        self.atomic.final_path()
    }

    fn file(&self) -> &h5::File {
        self.file.as_ref().expect("file open until commit")
    }

    fn write_err(&self, name: &str, source: h5::Error) -> H5Error {
        H5Error::Write {
            path: self.path().to_path_buf(),
            name: name.to_string(),
            source,
        }
    }

    /// Creates group `name` and its missing parents (without modification times).
    pub fn group(&self, name: &str) -> Result<(), H5Error> {
        let mut prefix = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.file().link_exists(&prefix) {
                self.file()
                    .create_group_builder()
                    .obj_track_times(false)
                    .create(prefix.as_str())
                    .map_err(|source| self.write_err(&prefix, source))?;
            }
        }
        Ok(())
    }

    fn parent_of(&self, name: &str) -> Result<(), H5Error> {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.group(parent)?;
        }
        Ok(())
    }

    /// Creates a contiguous dataset of element type `T` and shape `shape`, to be filled with
    /// [`H5OutDataset::write_rows`] (parents are created).
    pub fn dataset<T: H5Type>(&self, name: &str, shape: &[usize]) -> Result<H5OutDataset, H5Error> {
        self.parent_of(name)?;
        let ds = self
            .file()
            .new_dataset_builder()
            .obj_track_times(false)
            .no_chunk()
            .empty::<T>()
            .shape(shape.to_vec())
            .create(name)
            .map_err(|source| self.write_err(name, source))?;
        Ok(H5OutDataset {
            path: self.path().to_path_buf(),
            name: name.to_string(),
            ds,
        })
    }

    /// Writes a whole 1-D dataset.
    pub fn write_1d<T: H5Type>(&self, name: &str, data: &[T]) -> Result<(), H5Error> {
        let ds = self.dataset::<T>(name, &[data.len()])?;
        ds.write_rows(0, data)
    }

    /// Writes a whole `[n, N]` dataset from rows.
    pub fn write_2d<T: H5Type, const N: usize>(
        &self,
        name: &str,
        rows: &[[T; N]],
    ) -> Result<(), H5Error> {
        let ds = self.dataset::<T>(name, &[rows.len(), N])?;
        ds.write_rows_2d(0, rows)
    }

    fn location(&self, object: &str) -> Result<h5::Location, H5Error> {
        let trimmed = object.trim_matches('/');
        if trimmed.is_empty() {
            return Ok((***self.file()).clone());
        }
        if let Ok(g) = self.file().group(trimmed) {
            return Ok((*g).clone());
        }
        self.file()
            .dataset(trimmed)
            .map(|d| (**d).clone())
            .map_err(|source| self.write_err(trimmed, source))
    }

    /// Sets a scalar `f64` attribute on `object` (a group, created if missing, or a dataset).
    pub fn attr_f64(&self, object: &str, attr: &str, value: f64) -> Result<(), H5Error> {
        self.attr_scalar(object, attr, value)
    }

    /// Sets a scalar `i64` attribute on `object`.
    pub fn attr_i64(&self, object: &str, attr: &str, value: i64) -> Result<(), H5Error> {
        self.attr_scalar(object, attr, value)
    }

    fn attr_scalar<T: H5Type>(&self, object: &str, attr: &str, value: T) -> Result<(), H5Error> {
        self.ensure_object(object)?;
        let label = format!("{}@{attr}", object.trim_matches('/'));
        let loc = self.location(object)?;
        let a = loc
            .new_attr::<T>()
            .create(attr)
            .map_err(|source| self.write_err(&label, source))?;
        a.write_scalar(&value)
            .map_err(|source| self.write_err(&label, source))
    }

    /// Sets a 1-D attribute on `object`.
    pub fn attr_vec<T: H5Type>(
        &self,
        object: &str,
        attr: &str,
        values: &[T],
    ) -> Result<(), H5Error> {
        self.ensure_object(object)?;
        let label = format!("{}@{attr}", object.trim_matches('/'));
        let loc = self.location(object)?;
        loc.new_attr_builder()
            .with_data(values)
            .create(attr)
            .map_err(|source| self.write_err(&label, source))?;
        Ok(())
    }

    /// Sets a variable-length UTF-8 string attribute on `object` (as h5py writes `str`).
    pub fn attr_str(&self, object: &str, attr: &str, value: &str) -> Result<(), H5Error> {
        let label = format!("{}@{attr}", object.trim_matches('/'));
        let v: VarLenUnicode = value.parse().map_err(|e: h5::types::StringError| {
            H5Error::invalid(self.path(), &label, e.to_string())
        })?;
        self.attr_scalar(object, attr, v)
    }

    fn ensure_object(&self, object: &str) -> Result<(), H5Error> {
        let trimmed = object.trim_matches('/');
        if !trimmed.is_empty() && !self.file().link_exists(trimmed) {
            self.group(trimmed)?;
        }
        Ok(())
    }

    /// Closes the file, syncs it (when durable) and renames it into place.
    pub fn commit(mut self) -> Result<PathBuf, H5Error> {
        let name = self.path().to_path_buf();
        if let Some(file) = self.file.take() {
            file.close().map_err(|source| H5Error::Write {
                path: name,
                name: "/".to_string(),
                source,
            })?;
        }
        Ok(self.atomic.commit()?)
    }
}

impl H5OutDataset {
    fn write_err(&self, source: h5::Error) -> H5Error {
        H5Error::Write {
            path: self.path.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Writes `data` at rows `start .. start + data.len()` of a 1-D dataset.
    pub fn write_rows<T: H5Type>(&self, start: usize, data: &[T]) -> Result<(), H5Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.ds
            .write_slice(data, start..start + data.len())
            .map_err(|e| self.write_err(e))
    }

    /// Writes `rows` at rows `start .. start + rows.len()` of a `[n, N]` dataset.
    pub fn write_rows_2d<T: H5Type, const N: usize>(
        &self,
        start: usize,
        rows: &[[T; N]],
    ) -> Result<(), H5Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let flat = rows.as_flattened();
        let view =
            ndarray::ArrayView2::from_shape((rows.len(), N), flat).expect("rows × N elements");
        self.ds
            .write_slice(&view, ndarray::s![start..start + rows.len(), ..])
            .map_err(|e| self.write_err(e))
    }

    /// Sets a variable-length UTF-8 string attribute on the dataset.
    pub fn attr_str(&self, attr: &str, value: &str) -> Result<(), H5Error> {
        let v: VarLenUnicode = value.parse().map_err(|e: h5::types::StringError| {
            H5Error::invalid(&self.path, attr, e.to_string())
        })?;
        let a = self
            .ds
            .new_attr::<VarLenUnicode>()
            .create(attr)
            .map_err(|e| self.write_err(e))?;
        a.write_scalar(&v).map_err(|e| self.write_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &Path) {
        let w = H5Writer::create(path, Durability::ProcessCrashOnly).unwrap();
        w.write_1d("a/b/x", &[1.0f64, 2.0, 3.0]).unwrap();
        w.write_2d("a/q", &[[1u8, 2], [3, 4]]).unwrap();
        w.attr_f64("a", "rate_hz", 180.37).unwrap();
        w.attr_i64("", "obs", 421).unwrap();
        w.attr_vec("a/b", "v", &[1.0f64, 2.0, 3.0]).unwrap();
        w.attr_str("a/b/x", "units", "K_CMB").unwrap();
        let ds = w.dataset::<f32>("big", &[10]).unwrap();
        ds.write_rows(0, &[1.0; 4]).unwrap();
        ds.write_rows(4, &[2.0; 6]).unwrap();
        w.commit().unwrap();
    }

    #[test]
    fn round_trip_with_shape_checks_and_conversions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.h5");
        sample(&path);
        let r = H5Reader::open(&path).unwrap();
        assert_eq!(r.read_1d::<f64>("a/b/x", Some(3)).unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(r.read_1d::<f32>("a/b/x", None).unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(
            r.read_2d::<u8, 2>("a/q", Some(2)).unwrap(),
            [[1, 2], [3, 4]]
        );
        assert_eq!(r.attr_f64("a", "rate_hz").unwrap(), 180.37);
        assert_eq!(r.attr_f64("", "obs").unwrap(), 421.0);
        assert_eq!(r.attr_i64("/", "obs").unwrap(), 421);
        assert_eq!(
            r.attr_vec::<f64>("a/b", "v", Some(3)).unwrap(),
            [1.0, 2.0, 3.0]
        );
        assert_eq!(r.attr_str("a/b/x", "units").unwrap(), "K_CMB");
        assert_eq!(r.group_names("a").unwrap(), ["b"]);
        assert!(r.exists("a/b/x") && !r.exists("a/c/x") && !r.exists(""));
        let big = r.dataset("big", &[Some(10)]).unwrap();
        assert_eq!(big.read_rows::<f32>(3..5).unwrap(), [1.0, 2.0]);
        let e = big.read_rows::<f32>(8..11).unwrap_err().to_string();
        assert!(e.contains("rows 8..11") && e.contains("f.h5"), "{e}");

        let e = r.read_1d::<f64>("a/b/x", Some(4)).unwrap_err().to_string();
        assert!(
            e.ends_with("dataset 'a/b/x' has shape [3], expected [4]"),
            "{e}"
        );
        let e = r.read_2d::<u8, 3>("a/q", None).unwrap_err().to_string();
        assert!(e.contains("expected [*, 3]"), "{e}");
        let e = r.read_1d::<f64>("a/nothing", None).unwrap_err().to_string();
        assert!(e.contains("f.h5: dataset 'a/nothing' is missing"), "{e}");
        let e = r.attr_f64("a", "nope").unwrap_err().to_string();
        assert!(e.contains("attribute 'a@nope' is missing"), "{e}");
        let e = r.attr_f64("a/b", "v").unwrap_err().to_string();
        assert!(e.contains("'a/b@v' has shape [3]"), "{e}");
        assert!(r.attr_str("a", "rate_hz").is_err());
    }

    #[test]
    fn numeric_kind_checks_accept_either_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.h5");
        sample(&path);
        let r = H5Reader::open(&path).unwrap();
        let big = r.dataset("big", &[Some(10)]).unwrap();
        big.require_numeric(false).unwrap();
        assert_eq!(big.read_rows::<f64>(3..5).unwrap(), [1.0, 2.0]);
        let e = big.require_numeric(true).unwrap_err().to_string();
        assert!(
            e.contains("f.h5") && e.contains("big") && e.contains("integers"),
            "{e}"
        );
        let x = r.dataset("a/b/x", &[Some(3)]).unwrap();
        x.require_numeric(false).unwrap();
        let q = r.dataset("a/q", &[Some(2), Some(2)]).unwrap();
        q.require_numeric(true).unwrap();
        let e = q.require_numeric(false).unwrap_err().to_string();
        assert!(e.contains("float32 or float64"), "{e}");
    }

    #[test]
    fn identical_writes_give_identical_bytes_and_no_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("1.h5"), dir.path().join("2.h5"));
        sample(&p1);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        sample(&p2);
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        {
            let w = H5Writer::create(dir.path().join("3.h5"), Durability::Synced).unwrap();
            w.write_1d("x", &[1i64]).unwrap();
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn truncated_and_foreign_files_are_open_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.h5");
        sample(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = H5Reader::open(&path)
            .and_then(|r| r.read_1d::<f64>("a/b/x", None))
            .unwrap_err();
        assert!(e.to_string().contains("t.h5"), "{e}");
        let text = dir.path().join("x.h5");
        std::fs::write(&text, b"not hdf5").unwrap();
        let e = H5Reader::open(&text).unwrap_err();
        assert!(
            matches!(e, H5Error::Open { .. }) && e.to_string().contains("x.h5"),
            "{e}"
        );
    }
}
