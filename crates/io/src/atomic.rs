//! Atomic output files: temporary name, sync, rename, directory sync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Part of every temporary file name, so stale temporaries can be recognised and removed.
pub const TEMP_MARKER: &str = ".skypipe-tmp.";

/// Whether a committed file must survive a machine crash (fsync) or only a process crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Data and directory entry are synced before and after the rename (the default).
    Synced,
    /// Rename only: still atomic if the process dies, not if the machine does. For tests and
    /// scratch runs where thousands of small fsyncs would dominate.
    ProcessCrashOnly,
}

/// An I/O error naming the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// Any operating-system error while writing `path`.
    #[error("{path}: {action}: {source}")]
    Os {
        /// The file (final name) being written.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl IoError {
    fn os<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> IoError + 'a {
        move |source| IoError::Os {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name; [`AtomicFile::commit`] moves it into place.
/// Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    writer: Option<BufWriter<File>>,
    durability: Durability,
}

impl AtomicFile {
    /// Starts writing `path`; its parent directory is created if missing.
    pub fn create(path: impl AsRef<Path>, durability: Durability) -> Result<Self, IoError> {
        let final_path = path.as_ref().to_path_buf();
        let dir = parent_dir(&final_path);
        fs::create_dir_all(&dir).map_err(IoError::os(&final_path, "creating the directory"))?;
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_path = dir.join(format!(
            ".{name}{TEMP_MARKER}{}.{unique}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(IoError::os(&final_path, "creating the temporary file"))?;
        Ok(Self {
            final_path,
            temp_path,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            durability,
        })
    }

    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The temporary file's name, for libraries that must open the path themselves (HDF5,
    /// CFITSIO); write nothing through [`Write`] in that case.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Flushes, syncs (when durable), renames into place and syncs the directory.
    pub fn commit(mut self) -> Result<PathBuf, IoError> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer
            .into_inner()
            .map_err(|e| IoError::os(&self.final_path, "flushing")(e.into_error()))?;
        if self.durability == Durability::Synced {
            file.sync_data()
                .map_err(IoError::os(&self.final_path, "syncing"))?;
        }
        drop(file);
        fs::rename(&self.temp_path, &self.final_path)
            .map_err(IoError::os(&self.final_path, "renaming into place"))?;
        if self.durability == Durability::Synced {
            sync_dir(&parent_dir(&self.final_path))
                .map_err(IoError::os(&self.final_path, "syncing the directory"))?;
        }
        Ok(std::mem::take(&mut self.final_path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer
            .as_mut()
            .expect("writer present until commit")
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer
            .as_mut()
            .expect("writer present until commit")
            .flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(
    path: impl AsRef<Path>,
    bytes: &[u8],
    durability: Durability,
) -> Result<PathBuf, IoError> {
    let mut file = AtomicFile::create(path, durability)?;
    file.write_all(bytes)
        .map_err(IoError::os(file.final_path(), "writing"))?;
    file.commit()
}

/// Removes temporary files left in `dir` (not recursive) by writers that were killed;
/// returns how many were removed. Call it only when no other writer uses the directory.
pub fn remove_stale_temporaries(dir: impl AsRef<Path>) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir.as_ref()) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().contains(TEMP_MARKER) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Syncs a directory so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn uncommitted_file_never_appears_and_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&path, Durability::Synced).unwrap();
            f.write_all(b"partial").unwrap();
            assert!(!path.exists());
            assert_eq!(names(dir.path()).len(), 1);
            assert!(names(dir.path())[0].contains(TEMP_MARKER));
        }
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn commit_replaces_an_existing_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/out.txt");
        write_atomic(&path, b"first version", Durability::Synced).unwrap();
        write_atomic(&path, b"second", Durability::ProcessCrashOnly).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(names(path.parent().unwrap()), vec!["out.txt"]);
    }

    #[test]
    fn stale_temporaries_are_removed_and_final_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path().join("keep.txt"), b"x", Durability::Synced).unwrap();
        let f = AtomicFile::create(dir.path().join("lost.txt"), Durability::Synced).unwrap();
        std::mem::forget(f); // as if the process had been killed
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert_eq!(names(dir.path()), vec!["keep.txt"]);
        assert_eq!(
            remove_stale_temporaries(dir.path().join("missing")).unwrap(),
            0
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let err = write_atomic(blocker.join("x.txt"), b"", Durability::Synced).unwrap_err();
        assert!(err.to_string().contains("not-a-dir/x.txt"), "{err}");
    }
}
