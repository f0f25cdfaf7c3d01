//! The two request hooks as typed calls: show the guest its input, run it,
//! decode and sort its answer.

use guest_sdk::wire::{self, FilterOutput, HookError, PeerOutput};
use serde_json::value::RawValue;

use pingora::http::RequestHeader;

use super::ctx::{CtxUpdate, GuestCtx};
use super::input::{DownstreamRequest, HookInput};
use super::request::{apply_request_changes, apply_upstream_request, upstream_request};
use crate::runtime::{decode_json, GuestModule, Hook, HookFault, InputMode, SliceMeter};

/// How a hook call can fail to produce its result.
#[derive(Debug)]
pub enum HookFailure {
    /// The guest misbehaved: 500.
    Fault(HookFault),
    /// The guest refused the request with its own status.
    Refused(HookError),
    /// The guest was not called: its tenant's circuit breaker is open.
    Skipped,
}

impl std::fmt::Display for HookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookFailure::Fault(fault) => fault.fmt(f),
            HookFailure::Refused(refusal) => {
                write!(f, "refused with {}: {}", refusal.status, refusal.message)
            }
            HookFailure::Skipped => f.write_str("not called, the circuit breaker is open"),
        }
    }
}

impl From<HookFault> for HookFailure {
    fn from(fault: HookFault) -> Self {
        HookFailure::Fault(fault)
    }
}

/// What `upstream_peer` decided: the peer and what becomes of the ctx, or
/// a refusal.
pub type PeerDecision = Result<(wire::Peer, CtxUpdate), HookFailure>;

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

/// What `upstream_request_filter` decided: the edit and what becomes of the
/// ctx, or a refusal.
pub type FilterDecision = Result<(UpstreamEdit, CtxUpdate), HookFailure>;

/// Calls `upstream_peer` for `request` with the request's `ctx`, its
/// guest time charged to `meter`.
pub async fn call_upstream_peer(
    module: &GuestModule,
    request: &DownstreamRequest<'_>,
    ctx: &GuestCtx,
    meter: &dyn SliceMeter,
) -> PeerDecision {
    let input = HookInput::new(request, None, ctx.json());
    call(module, Hook::UpstreamPeer, &input, ctx, meter, |bytes| {
        decode_peer_output(bytes, ctx)
    })
    .await?
}

/// Runs `hook` with `input` given as the module's input mode asks: no
/// input, just `{"ctx"}`, or the whole input JSON (with
/// `upstream_request` when the call has one).
async fn call<T>(
    module: &GuestModule,
    hook: Hook,
    input: &HookInput<'_>,
    ctx: &GuestCtx,
    meter: &dyn SliceMeter,
    decode: impl FnOnce(&[u8]) -> Result<T, HookFault> + Send,
) -> Result<T, HookFault> {
    let ctx_json = ctx.json().as_bytes();
    match module.input_mode() {
        InputMode::OnDemand => module.call(hook, &[], input, meter, decode).await,
        InputMode::LazyParts => {
            let pieces: [&[u8]; 3] = [br#"{"ctx":"#, ctx_json, b"}"];
            module.call(hook, &pieces, input, meter, decode).await
        }
        InputMode::Whole => {
            let mut pieces: Vec<&[u8]> = vec![br#"{"request":"#, input.request_json().as_bytes()];
            if let Some(upstream) = input.upstream_json() {
                pieces.extend([br#","upstream_request":"#.as_slice(), upstream.as_bytes()]);
            }
            pieces.extend([br#","ctx":"#.as_slice(), ctx_json, b"}"]);
            module.call(hook, &pieces, input, meter, decode).await
        }
    }
}

/// The outcome of `upstream_peer` from its output bytes; `ctx` is the
/// request's ctx before the call.
pub fn decode_peer_output(bytes: &[u8], ctx: &GuestCtx) -> Result<PeerDecision, HookFault> {
    let output: PeerOutput<&RawValue> = decode_json(bytes)?;
    if let Some(error) = output.error {
        return Ok(Err(HookFailure::Refused(error)));
    }
    let peer = output
        .peer
        .ok_or_else(|| HookFault::InvalidOutput("neither `peer` nor `error` returned".into()))?;
    Ok(Ok((peer, ctx.update_to(output.ctx))))
}

/// Calls `upstream_request_filter` with the current `upstream` request,
/// its guest time charged to `meter`.
pub async fn call_upstream_request_filter(
    module: &GuestModule,
    request: &DownstreamRequest<'_>,
    upstream: &RequestHeader,
    ctx: &GuestCtx,
    meter: &dyn SliceMeter,
) -> FilterDecision {
    let input = HookInput::new(request, Some(upstream), ctx.json());
    call(
        module,
        Hook::UpstreamRequestFilter,
        &input,
        ctx,
        meter,
        |bytes| decode_filter_output(bytes, ctx),
    )
    .await?
}

/// The whole `upstream_request_filter` step: call the guest with the
/// current upstream request and apply its edit. Returns what becomes of
/// the ctx.
pub async fn filter_upstream_request(
    module: &GuestModule,
    request: &DownstreamRequest<'_>,
    upstream: &mut RequestHeader,
    ctx: &GuestCtx,
    meter: &dyn SliceMeter,
) -> Result<CtxUpdate, HookFailure> {
    let (edit, update) =
        call_upstream_request_filter(module, request, upstream, ctx, meter).await?;
    match edit {
        UpstreamEdit::Unchanged => {}
        UpstreamEdit::Changes(changes) => apply_request_changes(upstream, changes)?,
        UpstreamEdit::Whole(returned) => {
            // What the guest was shown, to touch only what it changed.
            let sent = upstream_request(upstream)?;
            apply_upstream_request(upstream, &sent, &returned)?;
        }
    }
    Ok(update)
}

/// The outcome of `upstream_request_filter` from its output bytes; `ctx`
/// is the request's ctx before the call.
pub fn decode_filter_output(bytes: &[u8], ctx: &GuestCtx) -> Result<FilterDecision, HookFault> {
    let output: FilterOutput<wire::UpstreamRequest, &RawValue> = decode_json(bytes)?;
    if let Some(error) = output.error {
        return Ok(Err(HookFailure::Refused(error)));
    }
    let edit = match (output.upstream_request, output.upstream_changes) {
        (Some(whole), _) => UpstreamEdit::Whole(whole),
        (None, Some(changes)) => UpstreamEdit::Changes(changes),
        (None, None) => UpstreamEdit::Unchanged,
    };
    Ok(Ok((edit, ctx.update_to(output.ctx))))
}

#[cfg(test)]
mod tests {
    use super::super::request::upstream_request as upstream_request_wire;
    use super::*;
    use crate::runtime::{EngineOptions, GuestEngine, GuestLimits, Unmetered};

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
    fn load_wat(wat: &str) -> GuestModule {
        let limits = GuestLimits::default();
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: limits.memory_limit_bytes(),
            cache_dir: None,
        })
        .unwrap();
        let bytes = wat::parse_str(wat).unwrap();
        GuestModule::from_bytes(&engine, "test".into(), &bytes, "{}", limits).unwrap()
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
        let (peer, update) =
            ready(call_upstream_peer(&module, &request, &ctx, &Unmetered)).unwrap();
        assert_eq!(peer.address, "127.0.0.1:9");
        ctx.apply(update);
        assert_eq!(ctx.json(), r#"{"seen":1}"#);

        let before = upstream_request_wire(&req).unwrap();
        let update = ready(filter_upstream_request(
            &module, &request, &mut req, &ctx, &Unmetered,
        ))
        .unwrap();
        assert_eq!(update, CtxUpdate::Unchanged, "the echoed ctx is the same");
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
        let (edit, update) = ready(call_upstream_request_filter(
            &module, &request, &req, &ctx, &Unmetered,
        ))
        .unwrap();
        assert!(matches!(edit, UpstreamEdit::Unchanged), "{edit:?}");
        assert_eq!(update, CtxUpdate::Unchanged, "the ctx came back as sent");
        assert!(cache.get().is_none(), "the request was never encoded");
    }
}
