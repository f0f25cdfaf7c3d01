//! The proxy host: Pingora plus a wasmtime runtime for guest hooks.
//!
//! Follow one request from [`proxy`] (the `ProxyHttp` impl) into [`abi`]
//! (wire encoding, peer and header checks) and [`runtime`] (instances,
//! limits, faults).

pub mod abi;
pub mod budget;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod tenants;

pub use server::main;
