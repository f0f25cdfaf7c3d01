//! ABI v1's hooks as typed calls, one per phase: show the guest its input,
//! run it, decode its answer, and apply it (to the upstream request or the
//! response, and to the ctx, which each call takes and updates itself).

use std::sync::OnceLock;

use bytes::Bytes;
use guest_sdk::wire::{self, HookOutput};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::l4::socket::SocketAddr;
use serde_json::value::RawValue;

use super::ctx::{CtxUpdate, GuestCtx};
use super::headers::check_framing;
use super::input::{DownstreamRequest, HookInput, RequestEnd};
use super::module::{decode_json, InputMode, V1Module};
use super::peer::PeerChoice;
use super::request::{apply_request_changes, apply_upstream_request, upstream_request};
use super::response::{apply_response_changes, apply_trailer_changes, local_response};
use crate::abi::framing::{check_method, Message};
use crate::abi::hook_table::Hook;
use crate::abi::{HookFailure, HookFault, Refusal};
use wasm_runtime::SliceMeter;

impl From<wire::HookError> for Refusal {
    fn from(error: wire::HookError) -> Self {
        Refusal {
            status: error.status,
            message: error.message,
        }
    }
}

/// Decodes a hook's output; a refusal becomes [`HookFailure::Refused`].
fn decode_output(bytes: &[u8]) -> Result<HookOutput<&RawValue>, HookFailure> {
    let mut output: HookOutput<&RawValue> = decode_json(bytes)?;
    match output.error.take() {
        Some(error) => Err(HookFailure::Refused(error.into())),
        None => Ok(output),
    }
}

/// Runs `hook` with `input` given as the module's input mode asks: no
/// input, just `{"ctx"}`, or the whole input JSON.
async fn call<T>(
    module: &V1Module,
    hook: Hook,
    input: &HookInput<'_>,
    meter: &dyn SliceMeter,
    decode: impl FnOnce(&[u8]) -> Result<T, HookFailure>,
) -> Result<T, HookFailure> {
    match module.input_mode() {
        InputMode::OnDemand => module.call(hook, &[], input, meter, decode).await,
        InputMode::LazyParts => {
            let pieces: [&[u8]; 3] = [br#"{"ctx":"#, input.ctx_json().as_bytes(), b"}"];
            module.call(hook, &pieces, input, meter, decode).await
        }
        InputMode::Whole => {
            let pieces = input.whole_json();
            module.call(hook, &pieces, input, meter, decode).await
        }
    }
}

/// Calls `upstream_peer` for `request`, its guest time charged to
/// `meter`; applies its ctx and returns where it sends the request.
pub async fn upstream_peer(
    module: &V1Module,
    request: &DownstreamRequest<'_>,
    ctx: &mut GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<PeerChoice, HookFailure> {
    let input = HookInput::new(request, ctx.json());
    let (peer, update) = call(module, Hook::UpstreamPeer, &input, meter, |bytes| {
        decode_peer_output(bytes, ctx)
    })
    .await?;
    // The ctx holds even if the peer is refused (a fail-open request goes
    // on with it).
    ctx.apply(update);
    Ok(PeerChoice::of(peer)?)
}

/// The peer `upstream_peer` chose and what becomes of the ctx, from its
/// output bytes; `ctx` is the request's ctx before the call.
pub fn decode_peer_output(
    bytes: &[u8],
    ctx: &GuestCtx,
) -> Result<(wire::Peer, CtxUpdate), HookFailure> {
    let output = decode_output(bytes)?;
    let peer = output.peer.ok_or_else(|| {
        HookFailure::Fault(crate::abi::HookFault::InvalidOutput(
            "neither `peer` nor `error` returned".into(),
        ))
    })?;
    Ok((peer, ctx.update_to(output.ctx)))
}

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

/// The whole `upstream_request_filter` step: call the guest with the
/// current `upstream` request, its guest time charged to `meter`, and
/// apply its edit and its ctx.
pub async fn upstream_request_filter(
    module: &V1Module,
    request: &DownstreamRequest<'_>,
    upstream: &mut RequestHeader,
    ctx: &mut GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<(), HookFailure> {
    let input = HookInput::new(request, ctx.json()).with_upstream(upstream);
    let (edit, update) = call(
        module,
        Hook::UpstreamRequestFilter,
        &input,
        meter,
        |bytes| decode_filter_output(bytes, ctx),
    )
    .await?;
    match edit {
        UpstreamEdit::Unchanged => {}
        UpstreamEdit::Changes(changes) => apply_request_changes(upstream, changes)?,
        UpstreamEdit::Whole(returned) => {
            // What the guest was shown, to touch only what it changed.
            let sent = upstream_request(upstream).map_err(HookFailure::Host)?;
            apply_upstream_request(upstream, &sent, &returned)?;
        }
    }
    ctx.apply(update);
    Ok(())
}

/// The edit `upstream_request_filter` asked for and what becomes of the
/// ctx, from its output bytes; `ctx` is the request's ctx before the call.
pub fn decode_filter_output(
    bytes: &[u8],
    ctx: &GuestCtx,
) -> Result<(UpstreamEdit, CtxUpdate), HookFailure> {
    let output = decode_output(bytes)?;
    let edit = match (output.upstream_request, output.upstream_changes) {
        (Some(whole), _) => UpstreamEdit::Whole(*whole),
        (None, Some(changes)) => UpstreamEdit::Changes(*changes),
        (None, None) => UpstreamEdit::Unchanged,
    };
    Ok((edit, ctx.update_to(output.ctx)))
}

/// What `request_filter` decided, its changes to the request applied.
#[derive(Debug)]
pub enum RequestVerdict {
    /// Go on.
    Continue,
    /// Answer the request with this response (checked) and body; no
    /// upstream is contacted.
    Answer(Box<ResponseHeader>, Bytes),
}

/// The whole `request_filter` step: call the guest with the downstream
/// `request` (from `client`; `json` caches its encoding), its guest time
/// charged to `meter`, and apply its changes to the request (emptying the
/// cache, so later hooks see the request as changed) and its ctx.
pub async fn request_filter(
    module: &V1Module,
    request: &mut RequestHeader,
    client: Option<&SocketAddr>,
    json: &mut OnceLock<String>,
    ctx: &mut GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<RequestVerdict, HookFailure> {
    let downstream = DownstreamRequest::new(request, client, json);
    let input = HookInput::new(&downstream, ctx.json());
    let (decision, update) = call(module, Hook::RequestFilter, &input, meter, |bytes| {
        let output = decode_output(bytes)?;
        let decision = match output.response {
            Some(answer) => {
                let (response, body) = local_response(*answer)?;
                Err((Box::new(response), body))
            }
            None => Ok(output.request_changes.map(|changes| *changes)),
        };
        Ok((decision, ctx.update_to(output.ctx)))
    })
    .await?;
    // The ctx holds even if the changes are refused (a fail-open request
    // goes on with it).
    ctx.apply(update);
    match decision {
        Ok(None) => Ok(RequestVerdict::Continue),
        Ok(Some(changes)) => {
            check_framing(&changes.headers, Message::DownstreamRequest)?;
            if let Some(method) = &changes.method {
                check_method(request.method.as_str(), method).map_err(HookFault::InvalidOutput)?;
            }
            apply_request_changes(request, changes)?;
            *json = OnceLock::new();
            Ok(RequestVerdict::Continue)
        }
        Err((response, body)) => Ok(RequestVerdict::Answer(response, body)),
    }
}

/// The whole `response_filter` step: call the guest with `response` (as
/// the upstream, or `request_filter`, answered) and apply its changes and
/// its ctx.
pub async fn response_filter(
    module: &V1Module,
    request: &DownstreamRequest<'_>,
    response: &mut ResponseHeader,
    ctx: &mut GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<(), HookFailure> {
    let input = HookInput::new(request, ctx.json()).with_response(Some(response));
    let (changes, update) = call(module, Hook::ResponseFilter, &input, meter, |bytes| {
        let output = decode_output(bytes)?;
        Ok((output.response_changes, ctx.update_to(output.ctx)))
    })
    .await?;
    if let Some(changes) = changes {
        apply_response_changes(response, *changes)?;
    }
    ctx.apply(update);
    Ok(())
}

/// The whole `response_trailer_filter` step: call the guest with the
/// trailers (shown as a response with `status`, the response's, and the
/// trailers as its headers) and apply its changes to them, and its ctx.
pub async fn response_trailer_filter(
    module: &V1Module,
    request: &DownstreamRequest<'_>,
    status: u16,
    trailers: &mut http::HeaderMap,
    ctx: &mut GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<(), HookFailure> {
    let invalid = |e: Box<pingora::Error>| HookFault::InvalidOutput(format!("trailers: {e}"));
    let mut shown = ResponseHeader::build(status, Some(trailers.len())).map_err(invalid)?;
    for (name, value) in trailers.iter() {
        shown
            .append_header(name.clone(), value.clone())
            .map_err(invalid)?;
    }
    let input = HookInput::new(request, ctx.json()).with_response(Some(&shown));
    let hook = Hook::ResponseTrailerFilter;
    let (changes, update) = call(module, hook, &input, meter, |bytes| {
        let output = decode_output(bytes)?;
        Ok((output.response_changes, ctx.update_to(output.ctx)))
    })
    .await?;
    if let Some(changes) = changes {
        apply_trailer_changes(trailers, *changes)?;
    }
    ctx.apply(update);
    Ok(())
}

/// Calls `logging` with how the request ended. Its output is ignored:
/// nothing it returns can change what was sent.
pub async fn logging(
    module: &V1Module,
    request: &DownstreamRequest<'_>,
    response: Option<&ResponseHeader>,
    outcome: RequestEnd<'_>,
    ctx: &GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<(), HookFailure> {
    let input = HookInput::new(request, ctx.json())
        .with_response(response)
        .with_outcome(outcome);
    call(module, Hook::Logging, &input, meter, |_| Ok(())).await
}

#[cfg(test)]
mod tests {
    use super::super::request::upstream_request as upstream_request_wire;
    use super::*;
    use wasm_runtime::{EngineOptions, GuestEngine, GuestLimits, Unmetered};

    /// Runs a hook call to completion: these calls never yield.
    fn ready<F: std::future::Future>(call: F) -> F::Output {
        let mut call = std::pin::pin!(call);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match call.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("a short hook call yielded"),
        }
    }

    /// A module from WebAssembly text, with default limits and `{}` config.
    fn load_wat(wat: &str) -> V1Module {
        let limits = GuestLimits::default();
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: limits.memory_limit_bytes(),
            cache_dir: None,
            fresh_instances: false,
        })
        .unwrap();
        let bytes = wat::parse_str(wat).unwrap();
        V1Module::from_bytes(&engine, "test".into(), &bytes, "{}", limits).unwrap()
    }

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
        let module = load_wat(ECHO_GUEST);
        assert_eq!(module.input_mode(), InputMode::Whole);

        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.append_header("Host", "example.com").unwrap();
        let downstream = req.clone();
        let cache = std::sync::OnceLock::new();
        let request = DownstreamRequest::new(&downstream, None, &cache);
        let mut ctx = GuestCtx::default();
        let choice = ready(upstream_peer(&module, &request, &mut ctx, &Unmetered)).unwrap();
        let PeerChoice::Address(address) = choice else {
            panic!("an address");
        };
        let peer = ready(address.build(&Default::default())).unwrap().unwrap();
        assert_eq!(peer._address.to_string(), "127.0.0.1:9");
        assert_eq!(ctx.json(), r#"{"seen":1}"#);

        let before = upstream_request_wire(&req).unwrap();
        ready(upstream_request_filter(
            &module, &request, &mut req, &mut ctx, &Unmetered,
        ))
        .unwrap();
        assert_eq!(ctx.json(), r#"{"seen":1}"#, "the echoed ctx is the same");
        assert_eq!(upstream_request_wire(&req).unwrap(), before);
    }

    /// A `lazy_input` guest (without `lazy_ctx`): its filter echoes its
    /// input, which must be just `{"ctx": ...}`.
    const LAZY_PARTS_GUEST: &str = r#"(module
        (memory (export "memory") 1)
        (data (i32.const 16) "{\"lazy_input\":true}")
        (func (export "hook_abi_version") (result i32) i32.const 1)
        (func (export "hook_alloc") (param i32) (result i32) i32.const 1024)
        (func (export "hook_init") (param i32 i32) (result i64) i64.const 0x1000000013)
        (func (export "upstream_peer") (param i32 i32) (result i64) unreachable)
        (func (export "upstream_request_filter") (param $ptr i32) (param $len i32) (result i64)
            (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                    (i64.extend_i32_u (local.get $len)))))"#;

    #[test]
    fn lazy_parts_input_is_only_the_ctx() {
        let module = load_wat(LAZY_PARTS_GUEST);
        assert_eq!(module.input_mode(), InputMode::LazyParts);

        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let cache = std::sync::OnceLock::new();
        let request = DownstreamRequest::new(&req, None, &cache);
        let mut ctx = GuestCtx::default();
        ctx.apply(ctx.update_to(Some(&RawValue::from_string(r#"{"a":1}"#.into()).unwrap())));
        let mut upstream = req.clone();
        ready(upstream_request_filter(
            &module,
            &request,
            &mut upstream,
            &mut ctx,
            &Unmetered,
        ))
        .unwrap();
        assert_eq!(ctx.json(), r#"{"a":1}"#, "the ctx came back as sent");
        assert!(cache.get().is_none(), "the request was never encoded");
    }
}
