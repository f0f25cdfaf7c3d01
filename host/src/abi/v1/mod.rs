//! Guest ABI v1, the project's own (docs/ABI.md): a hook's input is JSON
//! written into a guest buffer, its output JSON in guest memory, and the
//! per-request ctx is JSON the host carries from hook to hook, so any idle
//! instance may serve any call. This module converts between Pingora's
//! types and the wire types of `guest_sdk::wire`.

mod ctx;
mod headers;
mod hooks;
mod imports;
mod input;
mod instance;
mod module;
mod peer;
mod request;
mod response;

#[cfg(test)]
mod fuzz_tests;

pub use ctx::{CtxUpdate, GuestCtx};
pub use hooks::{
    decode_filter_output, decode_peer_output, logging, request_filter, response_filter,
    response_trailer_filter, upstream_peer, upstream_request_filter, RequestVerdict, UpstreamEdit,
};
pub use imports::V1;
pub use input::{DownstreamRequest, RequestEnd};
pub use instance::{InputParts, NoParts, V1Instance};
pub use module::{decode_json, InputMode, V1Module, ABI_VERSION};
pub use peer::{AddressPeer, PeerAddress, PeerChoice, PoolPick};
pub use request::{
    apply_request_changes, apply_upstream_request, upstream_request, RequestJson,
    UpstreamRequestJson,
};
pub use response::{apply_response_changes, local_response, response_json};
