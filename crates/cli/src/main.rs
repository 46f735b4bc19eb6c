//! The `scalestack` binary.
fn main() {}
