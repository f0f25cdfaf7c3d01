//! Intentionally empty: this crate exists only for its dependencies.
//!
//! It lists the third-party crates whose features would otherwise differ
//! between `cargo test --workspace` and `cargo run -p host`, with the union of
//! their features, so that both commands share one build of pingora, wasmtime
//! and the rest. See the comment at the top of `Cargo.toml` for how to
//! regenerate it.
