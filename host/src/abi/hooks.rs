//! The two request hooks as typed calls: encode the input, run the guest,
//! decode and sort its answer.

use guest_sdk::wire::{self, FilterInput, FilterOutput, HookError, PeerInput, PeerOutput};
use serde_json::value::RawValue;

use crate::runtime::{GuestModule, Hook, HookFault};

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

/// Calls `upstream_peer`; returns the peer and the new ctx (None: unchanged).
pub fn call_upstream_peer(
    module: &GuestModule,
    request: &RawValue,
    ctx: &RawValue,
) -> Result<(wire::Peer, Option<Box<RawValue>>), HookFailure> {
    let input = encode(&PeerInput { request, ctx })?;
    let output: PeerOutput<Box<RawValue>> =
        module.call(Hook::UpstreamPeer, &input, crate::runtime::decode_json)?;
    if let Some(error) = output.error {
        return Err(HookFailure::Refused(error));
    }
    let peer = output
        .peer
        .ok_or_else(|| HookFault::InvalidOutput("neither `peer` nor `error` returned".into()))?;
    Ok((peer, output.ctx))
}

/// Calls `upstream_request_filter`; returns the new upstream request and
/// ctx (None: unchanged).
#[allow(clippy::type_complexity)]
pub fn call_upstream_request_filter(
    module: &GuestModule,
    request: &RawValue,
    upstream_request: &wire::UpstreamRequest,
    ctx: &RawValue,
) -> Result<(Option<wire::UpstreamRequest>, Option<Box<RawValue>>), HookFailure> {
    let input = encode(&FilterInput {
        request,
        upstream_request,
        ctx,
    })?;
    let output: FilterOutput<wire::UpstreamRequest, Box<RawValue>> = module.call(
        Hook::UpstreamRequestFilter,
        &input,
        crate::runtime::decode_json,
    )?;
    if let Some(error) = output.error {
        return Err(HookFailure::Refused(error));
    }
    Ok((output.upstream_request, output.ctx))
}

fn encode<T: serde::Serialize>(input: &T) -> Result<Vec<u8>, HookFault> {
    // Only fails for non-string map keys, which the wire types do not have.
    serde_json::to_vec(input).map_err(|e| HookFault::InvalidOutput(format!("encoding input: {e}")))
}
