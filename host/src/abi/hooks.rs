//! The two request hooks as typed calls: encode the input, run the guest,
//! decode and sort its answer.

use std::sync::Arc;

use guest_sdk::wire::{self, FilterOutput, HookError, PeerOutput};
use serde_json::value::RawValue;

use pingora::http::RequestHeader;

use super::request::{apply_request_changes, apply_upstream_request, upstream_request_json};
use crate::runtime::{decode_json, GuestModule, Hook, HookFault, InputParts};

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

/// Calls `upstream_peer`. `request` is the downstream request's JSON.
pub fn call_upstream_peer(
    module: &GuestModule,
    request: &Arc<str>,
    ctx: &RawValue,
) -> PeerDecision {
    let (input, parts) = if module.lazy_input() {
        let parts = InputParts {
            request: Some(request.clone()),
            upstream_request: None,
        };
        (join(&[r#"{"ctx":"#, ctx.get(), "}"]), parts)
    } else {
        let input = join(&[r#"{"request":"#, request, r#","ctx":"#, ctx.get(), "}"]);
        (input, InputParts::default())
    };
    module.call(Hook::UpstreamPeer, &input, parts, decode_peer_output)?
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

/// Calls `upstream_request_filter`; `upstream` is the current upstream
/// request's JSON (see [`upstream_request_json`]).
pub fn call_upstream_request_filter(
    module: &GuestModule,
    request: &Arc<str>,
    upstream: &Arc<str>,
    ctx: &RawValue,
) -> FilterDecision {
    let (input, parts) = if module.lazy_input() {
        let parts = InputParts {
            request: Some(request.clone()),
            upstream_request: Some(upstream.clone()),
        };
        (join(&[r#"{"ctx":"#, ctx.get(), "}"]), parts)
    } else {
        let input = join(&[
            r#"{"request":"#,
            request,
            r#","upstream_request":"#,
            upstream,
            r#","ctx":"#,
            ctx.get(),
            "}",
        ]);
        (input, InputParts::default())
    };
    module.call(
        Hook::UpstreamRequestFilter,
        &input,
        parts,
        decode_filter_output,
    )?
}

/// Concatenates JSON pieces into one input buffer sized up front.
fn join(pieces: &[&str]) -> Vec<u8> {
    let mut input = Vec::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for piece in pieces {
        input.extend_from_slice(piece.as_bytes());
    }
    input
}

/// The whole `upstream_request_filter` step: call the guest with the
/// current upstream request and apply its edit. Returns the new ctx (None:
/// unchanged).
pub fn filter_upstream_request(
    module: &GuestModule,
    request: &Arc<str>,
    upstream_request: &mut RequestHeader,
    ctx: &RawValue,
) -> Result<Option<Box<RawValue>>, HookFailure> {
    let upstream = upstream_request_json(upstream_request)?;
    let (edit, new_ctx) = call_upstream_request_filter(module, request, &upstream, ctx)?;
    match edit {
        UpstreamEdit::Unchanged => {}
        UpstreamEdit::Changes(changes) => apply_request_changes(upstream_request, &changes)?,
        UpstreamEdit::Whole(returned) => {
            // What the guest was shown, to touch only what it changed.
            let sent: wire::UpstreamRequest = serde_json::from_str(&upstream)
                .map_err(|e| HookFault::InvalidOutput(format!("re-reading the input: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::super::request::upstream_request as upstream_request_wire;
    use super::*;
    use crate::runtime::{EngineOptions, GuestEngine, GuestLimits};

    /// A guest without lazy input: `upstream_peer` returns a fixed answer,
    /// `upstream_request_filter` returns its own input, which is a valid
    /// output only if the host's input has the documented shape.
    const ECHO_GUEST: &str = r#"(module
        (memory (export "memory") 1)
        (data (i32.const 16) "{\"peer\":{\"address\":\"127.0.0.1:9\"},\"ctx\":{\"seen\":1}}")
        (func (export "hook_abi_version") (result i32) i32.const 1)
        (func (export "hook_alloc") (param i32) (result i32) i32.const 1024)
        (func (export "upstream_peer") (param i32 i32) (result i64) i64.const 0x1000000033)
        (func (export "upstream_request_filter") (param $ptr i32) (param $len i32) (result i64)
            (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                    (i64.extend_i32_u (local.get $len)))))"#;

    #[test]
    fn full_inputs_have_the_documented_shape() {
        let limits = GuestLimits::default();
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: limits.memory_limit_bytes(),
            cache_dir: None,
        })
        .unwrap();
        let bytes = wat::parse_str(ECHO_GUEST).unwrap();
        let module = GuestModule::from_bytes(&engine, "echo".into(), &bytes, "{}", limits).unwrap();
        assert!(!module.lazy_input());

        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.append_header("Host", "example.com").unwrap();
        let request: Arc<str> = super::super::RequestJson {
            header: &req,
            client_addr: None,
        }
        .to_json()
        .into();
        let null = RawValue::from_string("null".into()).unwrap();
        let (peer, ctx) = call_upstream_peer(&module, &request, &null).unwrap();
        assert_eq!(peer.address, "127.0.0.1:9");
        let ctx = ctx.unwrap();
        assert_eq!(ctx.get(), r#"{"seen":1}"#);

        let before = upstream_request_wire(&req).unwrap();
        let new_ctx = filter_upstream_request(&module, &request, &mut req, &ctx).unwrap();
        assert_eq!(new_ctx.unwrap().get(), r#"{"seen":1}"#);
        assert_eq!(upstream_request_wire(&req).unwrap(), before);
    }
}
