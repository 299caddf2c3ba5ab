//! HDF5 helpers (under construction).
