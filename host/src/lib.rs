//! The proxy host: Pingora plus a wasmtime runtime for guest hooks.
//!
//! Follow one request from [`proxy`] (the `ProxyHttp` impl, which calls the
//! guest hooks of [`hooks`]'s table) into [`abi`] (each guest ABI: its
//! exports, wire encoding, peer and header checks) and the `wasm-runtime`
//! crate (the wasm layer: instances, limits, deadlines, faults).

pub mod abi;
pub mod budget;
pub mod cli;
pub mod config;
pub mod config_model;
pub mod drain;
mod epoch_ticker;
mod filter_chain;
pub mod filter_ticks;
pub mod forwarded;
mod guest_call;
pub mod hooks;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod sni;
pub mod tenants;
pub mod throttle;
pub mod tls;
pub mod upstream;
pub mod upstream_pools;

pub use server::main;
