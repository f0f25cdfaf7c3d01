//! The two request hooks as typed calls: encode the input, run the guest,
//! decode and sort its answer.

use guest_sdk::wire::{self, FilterInput, FilterOutput, HookError, PeerInput, PeerOutput};
use serde_json::value::RawValue;

use pingora::http::RequestHeader;

use super::request::{
    apply_request_changes, apply_upstream_request, upstream_request as upstream_request_wire,
    UpstreamRequestJson,
};
use crate::runtime::{decode_json, GuestModule, Hook, HookFault};

/// How a hook call can fail to produce its result.
#[derive(Debug)]
pub enum HookFailure {
    /// The guest misbehaved: 500.
    Fault(HookFault),
    /// The guest refused the request with its own status.
    Refused(HookError),
}

impl From<HookFault> for HookFailure {
    fn from(fault: HookFault) -> Self {
        HookFailure::Fault(fault)
    }
}

/// What `upstream_peer` decided: the peer and the new ctx (None:
/// unchanged), or a refusal.
pub type PeerDecision = Result<(wire::Peer, Option<Box<RawValue>>), HookFailure>;

/// How `upstream_request_filter` wants the upstream request changed.
#[derive(Debug)]
pub enum UpstreamEdit {
    /// Leave it as it is.
    Unchanged,
    /// Replace it with this whole request.
    Whole(wire::UpstreamRequest),
    /// Apply these changes.
    Changes(wire::RequestChanges),
}

/// What `upstream_request_filter` decided: the edit and the new ctx (None:
/// unchanged), or a refusal.
pub type FilterDecision = Result<(UpstreamEdit, Option<Box<RawValue>>), HookFailure>;

/// Calls `upstream_peer`.
pub fn call_upstream_peer(
    module: &GuestModule,
    request: &RawValue,
    ctx: &RawValue,
) -> PeerDecision {
    let size_hint = request.get().len() + ctx.get().len();
    let input = encode(&PeerInput { request, ctx }, size_hint)?;
    module.call(Hook::UpstreamPeer, &input, decode_peer_output)?
}

/// The outcome of `upstream_peer` from its output bytes.
pub fn decode_peer_output(bytes: &[u8]) -> Result<PeerDecision, HookFault> {
    let output: PeerOutput<Box<RawValue>> = decode_json(bytes)?;
    if let Some(error) = output.error {
        return Ok(Err(HookFailure::Refused(error)));
    }
    let peer = output
        .peer
        .ok_or_else(|| HookFault::InvalidOutput("neither `peer` nor `error` returned".into()))?;
    Ok(Ok((peer, output.ctx)))
}

/// Calls `upstream_request_filter`.
pub fn call_upstream_request_filter(
    module: &GuestModule,
    request: &RawValue,
    upstream_request: &impl serde::Serialize,
    ctx: &RawValue,
) -> FilterDecision {
    // The upstream request is about as long as the downstream one.
    let size_hint = 2 * request.get().len() + ctx.get().len();
    let input = encode(
        &FilterInput {
            request,
            upstream_request,
            ctx,
        },
        size_hint,
    )?;
    module.call(Hook::UpstreamRequestFilter, &input, decode_filter_output)?
}

/// The whole `upstream_request_filter` step: call the guest with the
/// current upstream request and apply its edit. Returns the new ctx (None:
/// unchanged).
pub fn filter_upstream_request(
    module: &GuestModule,
    request: &RawValue,
    upstream_request: &mut RequestHeader,
    ctx: &RawValue,
) -> Result<Option<Box<RawValue>>, HookFailure> {
    let current = UpstreamRequestJson(upstream_request);
    let (edit, new_ctx) = call_upstream_request_filter(module, request, &current, ctx)?;
    match edit {
        UpstreamEdit::Unchanged => {}
        UpstreamEdit::Changes(changes) => apply_request_changes(upstream_request, &changes)?,
        UpstreamEdit::Whole(returned) => {
            // What the guest was shown, to touch only what it changed.
            let sent = upstream_request_wire(upstream_request);
            apply_upstream_request(upstream_request, &sent, &returned)?;
        }
    }
    Ok(new_ctx)
}

/// The outcome of `upstream_request_filter` from its output bytes.
pub fn decode_filter_output(bytes: &[u8]) -> Result<FilterDecision, HookFault> {
    let output: FilterOutput<wire::UpstreamRequest, Box<RawValue>> = decode_json(bytes)?;
    if let Some(error) = output.error {
        return Ok(Err(HookFailure::Refused(error)));
    }
    let edit = match (output.upstream_request, output.upstream_changes) {
        (Some(whole), _) => UpstreamEdit::Whole(whole),
        (None, Some(changes)) => UpstreamEdit::Changes(changes),
        (None, None) => UpstreamEdit::Unchanged,
    };
    Ok(Ok((edit, output.ctx)))
}

/// Encodes a hook's input into one buffer sized up front: the request and
/// ctx are already JSON and are copied in as they are.
fn encode<T: serde::Serialize>(input: &T, size_hint: usize) -> Result<Vec<u8>, HookFault> {
    let mut buffer = Vec::with_capacity(size_hint + 64);
    // Only fails for non-string map keys, which the wire types do not have.
    serde_json::to_writer(&mut buffer, input)
        .map_err(|e| HookFault::InvalidOutput(format!("encoding input: {e}")))?;
    Ok(buffer)
}
