//! The two request hooks as typed calls: encode the input, run the guest,
//! decode and sort its answer.

use guest_sdk::wire::{self, FilterInput, FilterOutput, HookError, PeerInput, PeerOutput};
use serde_json::value::RawValue;

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

/// What `upstream_request_filter` decided: the new upstream request and ctx
/// (None: unchanged), or a refusal.
pub type FilterDecision =
    Result<(Option<wire::UpstreamRequest>, Option<Box<RawValue>>), HookFailure>;

/// Calls `upstream_peer`.
pub fn call_upstream_peer(
    module: &GuestModule,
    request: &RawValue,
    ctx: &RawValue,
) -> PeerDecision {
    let input = encode(&PeerInput { request, ctx })?;
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
    upstream_request: &wire::UpstreamRequest,
    ctx: &RawValue,
) -> FilterDecision {
    let input = encode(&FilterInput {
        request,
        upstream_request,
        ctx,
    })?;
    module.call(Hook::UpstreamRequestFilter, &input, decode_filter_output)?
}

/// The outcome of `upstream_request_filter` from its output bytes.
pub fn decode_filter_output(bytes: &[u8]) -> Result<FilterDecision, HookFault> {
    let output: FilterOutput<wire::UpstreamRequest, Box<RawValue>> = decode_json(bytes)?;
    if let Some(error) = output.error {
        return Ok(Err(HookFailure::Refused(error)));
    }
    Ok(Ok((output.upstream_request, output.ctx)))
}

fn encode<T: serde::Serialize>(input: &T) -> Result<Vec<u8>, HookFault> {
    // Only fails for non-string map keys, which the wire types do not have.
    serde_json::to_vec(input).map_err(|e| HookFault::InvalidOutput(format!("encoding input: {e}")))
}
