//! FITS helpers (under construction).
