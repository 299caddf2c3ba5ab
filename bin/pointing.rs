//! `skypipe-pointing` (under construction).
fn main() {}
