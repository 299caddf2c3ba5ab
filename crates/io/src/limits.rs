//! Sizes read from files are checked before anything is allocated for them.
//!
//! A header or dataspace that declares a huge size (a FITS image of 1048576² pixels in a
//! 530 KB file, an HDF5 dataset of 2³³ rows that was never written) must become a bad-input
//! error naming the file, not an allocation failure that aborts the whole process. Readers
//! check every bulk read against the unit's memory limit ([`unit_memory_limit_bytes`]) and,
//! where the data must be stored whole in the file (contiguous, uncompressed), against the
//! file's real size.
//!
//! The unit's memory limit is, in order: the limit the engine sets around a unit with
//! [`MemoryLimitScope::enter`] (a stage's declared estimate), else the process's address-space
//! limit (`RLIMIT_AS`, which an isolated unit runs under: `[run] memory_limit_mb`), else the
//! machine's physical memory. The scope is per thread: the engine sets it on the thread that
//! runs the unit.
//!
//! Isolated children also leave a trace of the files they read on standard error (lines
//! starting with [`READ_TRACE_PREFIX`]), so that a child killed by its memory limit can be
//! recorded with the file it was reading.

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Start of the standard-error lines an isolated child writes before reading a file.
pub const READ_TRACE_PREFIX: &str = "skypipe-io: reading ";

thread_local! {
    static SCOPED_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
}

static READ_TRACE: AtomicBool = AtomicBool::new(false);

/// Sets the memory limit of the unit running on this thread until dropped.
#[derive(Debug)]
pub struct MemoryLimitScope {
    previous: Option<u64>,
}

impl MemoryLimitScope {
    /// Limits reads on this thread to `bytes` (`None` leaves the process-wide limit).
    pub fn enter(bytes: Option<u64>) -> Self {
        let previous = SCOPED_LIMIT.with(|c| c.replace(bytes.or(c.get())));
        Self { previous }
    }
}

impl Drop for MemoryLimitScope {
    fn drop(&mut self) {
        SCOPED_LIMIT.with(|c| c.set(self.previous));
    }
}

/// The process's limit: its address-space limit (`RLIMIT_AS`) or the physical memory,
/// whichever is smaller.
pub fn process_memory_limit_bytes() -> u64 {
    // SAFETY: sysconf and getrlimit only read process/system information into locals.
    let physical = unsafe {
        let pages = libc::sysconf(libc::_SC_PHYS_PAGES);
        let page = libc::sysconf(libc::_SC_PAGESIZE);
        if pages > 0 && page > 0 {
            (pages as u64).saturating_mul(page as u64)
        } else {
            u64::MAX
        }
    };
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    let address_space = if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rlim) } == 0
        && rlim.rlim_cur != libc::RLIM_INFINITY
    {
        rlim.rlim_cur
    } else {
        u64::MAX
    };
    physical.min(address_space)
}

/// The memory limit of the unit running on this thread, bytes (see the module documentation).
pub fn unit_memory_limit_bytes() -> u64 {
    let process = process_memory_limit_bytes();
    SCOPED_LIMIT
        .with(Cell::get)
        .map_or(process, |scoped| scoped.min(process))
}

/// Refuses a read of `bytes` that cannot fit in the unit's memory limit; the message says
/// what the read needs and what the limit is.
pub(crate) fn check_allocation(bytes: u128) -> Result<(), String> {
    let limit = unit_memory_limit_bytes();
    if bytes > u128::from(limit) {
        return Err(format!(
            "reading it needs {}, more than the unit's memory limit of {}",
            human_bytes(bytes),
            human_bytes(u128::from(limit))
        ));
    }
    Ok(())
}

/// Refuses `declared` bytes of data stored whole from `offset` in a file of `file_len` bytes.
pub(crate) fn check_stored(declared: u128, offset: u64, file_len: u64) -> Result<(), String> {
    if u128::from(offset) + declared > u128::from(file_len) {
        return Err(format!(
            "declares {} of data at byte {offset}, but the file has only {}",
            human_bytes(declared),
            human_bytes(u128::from(file_len))
        ));
    }
    Ok(())
}

/// The size of `path` in bytes (0 if it cannot be read, which then refuses any stored data).
pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Turns the read trace on (in isolated children).
pub fn enable_read_trace() {
    READ_TRACE.store(true, Ordering::Relaxed);
}

/// Notes on standard error that `path` is being read, when the trace is on.
pub(crate) fn trace_read(path: &Path) {
    if READ_TRACE.load(Ordering::Relaxed) {
        eprintln!("{READ_TRACE_PREFIX}{}", path.display());
    }
}

/// `1536` → `1.5 KiB`, `2^36` → `64.0 GiB`: a size a person can read.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_limits_refuse_larger_reads_and_restore_on_drop() {
        let process = unit_memory_limit_bytes();
        assert!(check_allocation(1 << 20).is_ok());
        {
            let _scope = MemoryLimitScope::enter(Some(1 << 20));
            assert_eq!(unit_memory_limit_bytes(), 1 << 20);
            let err = check_allocation(3 << 20).unwrap_err();
            assert!(err.contains("3.0 MiB") && err.contains("1.0 MiB"), "{err}");
            let _none = MemoryLimitScope::enter(None);
            assert_eq!(unit_memory_limit_bytes(), 1 << 20);
        }
        assert_eq!(unit_memory_limit_bytes(), process);
        assert!(check_allocation(1 << 70).is_err());
    }

    #[test]
    fn stored_data_must_fit_in_the_file() {
        assert!(check_stored(100, 2880, 2980).is_ok());
        let err = check_stored(1 << 42, 2880, 530_000).unwrap_err();
        assert!(
            err.contains("4.0 TiB") && err.contains("517.6 KiB"),
            "{err}"
        );
        assert_eq!(human_bytes(512), "512 bytes");
    }
}
