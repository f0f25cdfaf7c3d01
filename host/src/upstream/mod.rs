//! Where requests go: a tenant's static upstream, its pools of backends
//! with their health checks, and the egress rules for destinations a
//! guest chooses itself.

pub mod egress;
pub mod pools;
pub(crate) mod static_upstream;

pub use static_upstream::StaticUpstream;
