//! ABI v1 from the host's side: typed calls of the two request hooks and
//! the conversions between Pingora's types and the wire types of
//! `guest_sdk::wire`.

mod ctx;
mod hooks;
mod input;
mod peer;
mod request;

#[cfg(test)]
mod fuzz_tests;

pub use ctx::{CtxUpdate, GuestCtx};
pub use hooks::{
    call_upstream_peer, call_upstream_request_filter, decode_filter_output, decode_peer_output,
    filter_upstream_request, FilterDecision, HookFailure, PeerDecision, UpstreamEdit,
};
pub use input::DownstreamRequest;
pub use peer::{build_peer, http_peer, peer_address, PeerAddress};
pub use request::{
    apply_request_changes, apply_upstream_request, upstream_request, RequestJson,
    UpstreamRequestJson,
};
