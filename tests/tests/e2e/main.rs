//! End-to-end tests: the proxy binary in a child process, real upstreams
//! on loopback (plain HTTP and TLS with a test CA), a real HTTP client.
//! One test binary with topic modules keeps link time down.

mod clients;
mod support;

mod boundaries;
mod budgets;
mod edge;
mod failures;
mod filters;
mod grpc;
mod lifecycle;
mod load;
mod parity;
mod pools;
mod proxying;
mod registries;
mod sandbox;
mod sdks;
mod startup;
mod tenants;
