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
            ".{name}{TEMP_MARKER}{}.{}.{unique}",
            host_name(),
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

/// This machine's host name (`localhost` if it cannot be read), as temporary names record it.
pub fn host_name() -> String {
    let mut buf = [0_u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into our buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match ok && len > 0 {
        true => String::from_utf8_lossy(&buf[..len]).into_owned(),
        false => "localhost".to_string(),
    }
}

/// Whether process `pid` of this machine is alive (or exists under another user).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Removes, under `dir` (recursively, not following links), the temporary files whose writer
/// is provably dead: written on this machine by a process that no longer exists. Temporaries
/// of other machines and of live processes are kept, so it is safe while other jobs run.
/// Returns how many were removed.
pub fn remove_dead_temporaries(dir: impl AsRef<Path>) -> io::Result<usize> {
    let host = host_name();
    let mut removed = 0;
    let mut stack = vec![dir.as_ref().to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((_, writer)) = name.split_once(TEMP_MARKER) else {
                continue;
            };
            // writer = HOST.PID.N (HOST may contain dots)
            let mut parts = writer.rsplitn(3, '.');
            let (_, pid, writer_host) = (parts.next(), parts.next(), parts.next());
            let pid = pid.and_then(|p| p.parse::<u32>().ok());
            if writer_host == Some(host.as_str()) && pid.is_some_and(|p| !process_alive(p)) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
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
    fn temporaries_of_dead_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        fs::create_dir_all(&sub).unwrap();
        let live = AtomicFile::create(sub.join("live.h5"), Durability::Synced).unwrap();
        let host = host_name();
        // PID 0x7fff_fff0 cannot exist (above Linux's pid_max).
        let dead = sub.join(format!(".x.h5{TEMP_MARKER}{host}.{}.3", 0x7fff_fff0_u32));
        let elsewhere = sub.join(format!(
            ".y.h5{TEMP_MARKER}other-node.{}.3",
            0x7fff_fff0_u32
        ));
        fs::write(&dead, b"partial").unwrap();
        fs::write(&elsewhere, b"partial").unwrap();
        assert_eq!(remove_dead_temporaries(dir.path()).unwrap(), 1);
        assert!(!dead.exists() && elsewhere.exists() && live.temp_path().exists());
        assert!(process_alive(std::process::id()));
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
