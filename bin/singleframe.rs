//! `skypipe-singleframe` (under construction).
fn main() {}
