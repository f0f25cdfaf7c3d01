//! The proxy host: Pingora plus a wasmtime runtime for guest hooks.
//!
//! Follow one request from [`proxy`] (the `ProxyHttp` impl, which calls the
//! guest hooks of [`guest::hooks`]'s table through [`guest`]'s one call
//! path) into [`abi`] (each guest ABI: its exports, wire encoding, peer and
//! header checks) and the `wasm-runtime` crate (the wasm layer: instances,
//! limits, deadlines, faults). Around it: [`edge`] (what faces clients),
//! [`tenancy`] (who is served, from which configuration), [`upstream`]
//! (where requests go).

pub mod abi;
pub mod config_model;
pub(crate) mod edge;
pub mod guest;
pub mod metrics;
pub mod modules;
pub(crate) mod proxy;
pub mod server;
pub mod tenancy;
pub mod upstream;

pub use server::main;
