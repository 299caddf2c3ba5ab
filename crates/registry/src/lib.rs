//! Kernels under construction.
