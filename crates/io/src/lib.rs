//! File I/O shared by every skypipe stage.
//!
//! **Invariant:** an output appears under its final name whole or not at all. [`AtomicFile`]
//! writes to a hidden temporary name in the same directory, syncs it, renames it into place and
//! syncs the directory, so a job killed at any moment leaves no partial file under a final name.
//!
//! ```
//! use skypipe_io::{write_atomic, Durability};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("obs=0421.txt");
//! write_atomic(&path, b"calibrated", Durability::Synced).unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"calibrated");
//! ```

mod atomic;
pub mod fits;
pub mod hdf5;
pub mod limits;
pub mod png;
pub mod provenance;

pub use atomic::{
    AtomicFile, Durability, IoError, TEMP_MARKER, host_name, process_alive,
    remove_dead_temporaries, remove_stale_temporaries, write_atomic,
};
