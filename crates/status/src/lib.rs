//! Run-directory inspection (under construction).
