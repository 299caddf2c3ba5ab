//! `skypipe-calibrate` (under construction).
fn main() {}
