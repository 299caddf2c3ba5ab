//! Under construction.

pub mod sim;
