//! Empty on purpose. This crate has `[build-dependencies]` (syn 3) only to
//! line up proc-macro-side features, and, as in cargo-hakari's generated
//! workspace-hack crates, a build script makes sure cargo treats them as real
//! build dependencies.

fn main() {}
