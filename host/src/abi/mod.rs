//! ABI v1 from the host's side: typed calls of the two request hooks and
//! the conversions between Pingora's types and the wire types of
//! `guest_sdk::wire`.

mod hooks;
mod peer;
mod request;

pub use hooks::{call_upstream_peer, call_upstream_request_filter, HookFailure};
pub use peer::build_peer;
pub use request::{apply_upstream_request, downstream_request, upstream_request};
