//! The entry points the exports of [`export_proxy!`](crate::export_proxy)
//! call: [`init`] for `hook_init`, and [`run`] for every hook, which is
//! told what to do by a [`GuestHook`], one per hook in [`hooks`].
//!
//! A guest that writes its exports by hand (to wrap or replace what a hook
//! returns, say) calls these the same way:
//!
//! ```
//! use std::cell::OnceCell;
//! use guest_sdk::prelude::*;
//! use guest_sdk::{entry, sys};
//!
//! # #[derive(Default)]
//! # pub struct MyProxy;
//! # impl ProxyHttp for MyProxy {
//! #     type CTX = ();
//! #     fn new_ctx(&self) {}
//! #     fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
//! #         Ok(Box::new(HttpPeer::new("127.0.0.1:8080", false, String::new())))
//! #     }
//! # }
//! thread_local! {
//!     static PROXY: OnceCell<MyProxy> = const { OnceCell::new() };
//! }
//!
//! fn new(_config: serde_json::Value) -> Result<MyProxy> {
//!     Ok(MyProxy)
//! }
//!
//! #[no_mangle]
//! pub extern "C" fn hook_abi_version() -> i32 {
//!     sys::ABI_VERSION
//! }
//!
//! #[no_mangle]
//! pub extern "C" fn hook_alloc(len: i32) -> i32 {
//!     sys::alloc(len)
//! }
//!
//! #[no_mangle]
//! pub extern "C" fn hook_init(ptr: i32, len: i32) -> i64 {
//!     entry::init(&PROXY, new, ptr, len)
//! }
//!
//! #[no_mangle]
//! pub extern "C" fn upstream_peer(ptr: i32, len: i32) -> i64 {
//!     entry::run::<_, _, entry::hooks::upstream_peer>(&PROXY, new, ptr, len)
//! }
//! ```

use std::cell::OnceCell;
use std::thread::LocalKey;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::encode;
use crate::error::{Error, ErrorType, Result};
use crate::proxy::ProxyHttp;
use crate::sys;
use crate::wire::{self, HookInput, HookOutput};

/// Where a guest's proxy lives between calls: filled by [`init`], or by the
/// first hook from the configuration `{}` if the host never called
/// `hook_init`.
pub type ProxyCell<P> = LocalKey<OnceCell<P>>;

/// A hook's input without its ctx, each part still JSON. A part that is
/// absent (a lazy-input guest gets none) is fetched from the host when the
/// hook first reads it.
pub type Input = HookInput<Box<RawValue>, ()>;

/// One hook, described as data: how it calls its [`ProxyHttp`] method and
/// what it returns to the host. [`run`] does the rest (the proxy, the input
/// buffer, the ctx, errors).
///
/// Adding a hook to the SDK is a method on [`ProxyHttp`] and a unit type in
/// [`hooks`] implementing this trait; [`export_proxy!`](crate::export_proxy)
/// then exports it by name.
pub trait GuestHook<P: ProxyHttp> {
    /// What the hook's method yields, ready to be encoded.
    type Output;

    /// Takes the hook's parts from `input` and calls its method.
    fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<Self::Output>;

    /// The wire output for `output`, with `ctx` as the new ctx (`None`:
    /// unchanged).
    fn output<C>(output: Self::Output, ctx: Option<C>) -> HookOutput<C>;

    /// Writes the output JSON into `out` (given empty). The default
    /// serialises [`output`](Self::output) with serde; a hook on every
    /// request's path writes it directly instead, with the same meaning.
    fn encode(
        out: &mut Vec<u8>,
        output: Self::Output,
        ctx: Option<&P::CTX>,
    ) -> serde_json::Result<()> {
        serde_json::to_writer(out, &Self::output(output, ctx))
    }
}

/// An output that changes nothing but, if `ctx` is `Some`, the ctx: the
/// base a [`GuestHook::output`] fills in.
pub fn unchanged<C>(ctx: Option<C>) -> HookOutput<C> {
    HookOutput {
        peer: None,
        request_changes: None,
        response: None,
        upstream_request: None,
        upstream_changes: None,
        response_changes: None,
        ctx,
        error: None,
    }
}

/// `hook_init`: builds the proxy with `new` from the module configuration
/// at `ptr`/`len` and answers that the guest takes its input lazily.
/// A second call keeps the first proxy.
pub fn init<P, C>(cell: &'static ProxyCell<P>, new: fn(C) -> Result<P>, ptr: i32, len: i32) -> i64
where
    C: DeserializeOwned,
{
    sys::install_panic_hook();
    let result = sys::read_input::<C>(ptr, len).and_then(new);
    let out = match result {
        Ok(proxy) => {
            cell.with(|cell| {
                let _ = cell.set(proxy);
            });
            // Off wasm there is no host to fetch parts from.
            wire::InitOutput {
                error: None,
                lazy_input: cfg!(target_arch = "wasm32"),
                lazy_ctx: cfg!(target_arch = "wasm32"),
            }
        }
        Err(e) => wire::InitOutput {
            error: Some(e.to_wire()),
            ..Default::default()
        },
    };
    sys::write_output(&out)
}

/// Any hook `H`: reads the input at `ptr`/`len` (or, when `len` is 0, only
/// the ctx, from the host), calls the hook on the proxy in `cell` and
/// returns its output's packed location; a hook's error becomes
/// `{"error": ...}`.
pub fn run<P, C, H>(cell: &'static ProxyCell<P>, new: fn(C) -> Result<P>, ptr: i32, len: i32) -> i64
where
    P: ProxyHttp,
    C: DeserializeOwned,
    H: GuestHook<P>,
{
    let result = with_proxy(cell, new, |proxy| {
        let (input, ctx) = if len == 0 {
            (no_input(), read_ctx_part::<P::CTX>()?)
        } else {
            split_ctx(sys::read_input::<HookInput<Box<RawValue>, Option<P::CTX>>>(
                ptr, len,
            )?)
        };
        let mut ctx = ctx.unwrap_or_else(|| proxy.new_ctx());
        let output = H::call(proxy, input, &mut ctx)?;
        Ok((output, ctx))
    });
    match result {
        Ok((output, ctx)) => sys::write_with(|out| H::encode(out, output, sent_ctx(&ctx))),
        Err(e) => sys::write_with(|out| encode::error_output(out, &e.to_wire())),
    }
}

/// The hooks [`export_proxy!`](crate::export_proxy) can export, each named
/// as its export (and its [`ProxyHttp`] method).
#[allow(non_camel_case_types)]
pub mod hooks {
    use super::{encode, unchanged, GuestHook, Input};
    use crate::error::Result;
    use crate::proxy::{ProxyHttp, RequestHeader, Session};
    use crate::wire::{self, HookOutput};

    /// `upstream_peer`: where the request goes
    /// ([`ProxyHttp::upstream_peer`]).
    pub struct upstream_peer;

    impl<P: ProxyHttp> GuestHook<P> for upstream_peer {
        type Output = wire::Peer;

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<wire::Peer> {
            let mut session = Session::from_json(input.request);
            Ok(proxy.upstream_peer(&mut session, ctx)?.into_wire())
        }

        fn output<C>(peer: wire::Peer, ctx: Option<C>) -> HookOutput<C> {
            HookOutput {
                peer: Some(peer),
                ..unchanged(ctx)
            }
        }

        fn encode(
            out: &mut Vec<u8>,
            peer: wire::Peer,
            ctx: Option<&P::CTX>,
        ) -> serde_json::Result<()> {
            encode::peer_output(out, &peer, ctx)
        }
    }

    /// `upstream_request_filter`: what the upstream receives
    /// ([`ProxyHttp::upstream_request_filter`]), sent back as changes.
    pub struct upstream_request_filter;

    impl<P: ProxyHttp> GuestHook<P> for upstream_request_filter {
        type Output = wire::RequestChanges;

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<wire::RequestChanges> {
            let mut session = Session::from_json(input.request);
            let mut upstream_request = RequestHeader::from_json(input.upstream_request);
            proxy.upstream_request_filter(&mut session, &mut upstream_request, ctx)?;
            Ok(upstream_request.into_changes())
        }

        fn output<C>(changes: wire::RequestChanges, ctx: Option<C>) -> HookOutput<C> {
            HookOutput {
                upstream_changes: (!changes.is_empty()).then_some(changes),
                ..unchanged(ctx)
            }
        }

        fn encode(
            out: &mut Vec<u8>,
            changes: wire::RequestChanges,
            ctx: Option<&P::CTX>,
        ) -> serde_json::Result<()> {
            encode::filter_output(out, &changes, ctx)
        }
    }
}

/// Runs `hook` with the proxy, building it from `{}` if the host never
/// called `hook_init`.
fn with_proxy<P, C, T>(
    cell: &'static ProxyCell<P>,
    new: fn(C) -> Result<P>,
    hook: impl FnOnce(&P) -> Result<T>,
) -> Result<T>
where
    C: DeserializeOwned,
{
    cell.with(|cell| {
        if cell.get().is_none() {
            // hook_init, which installs the panic hook, did not come first.
            sys::install_panic_hook();
            let config = serde_json::from_str::<C>("{}").map_err(|e| {
                Error::explain(ErrorType::InternalError, format!("module config: {e}"))
            })?;
            let _ = cell.set(new(config)?);
        }
        match cell.get() {
            Some(proxy) => hook(proxy),
            None => Error::e_explain(ErrorType::InternalError, "proxy not initialised"),
        }
    })
}

/// The input of a call without any: every part is fetched when read.
fn no_input() -> Input {
    HookInput {
        request: None,
        upstream_request: None,
        response: None,
        error: None,
        duration_us: None,
        ctx: (),
    }
}

/// Separates an input's ctx from its parts.
fn split_ctx<C>(input: HookInput<Box<RawValue>, C>) -> (Input, C) {
    let HookInput {
        request,
        upstream_request,
        response,
        error,
        duration_us,
        ctx,
    } = input;
    let parts = HookInput {
        request,
        upstream_request,
        response,
        error,
        duration_us,
        ctx: (),
    };
    (parts, ctx)
}

/// The ctx of a call made without input (`lazy_ctx`), fetched from the
/// host: None if it is `null` or the host has none. A zero-sized ctx is
/// never sent, so never fetched.
fn read_ctx_part<T: DeserializeOwned>() -> Result<Option<T>> {
    if std::mem::size_of::<T>() == 0 {
        return Ok(None);
    }
    Ok(sys::read_part::<Option<T>>(wire::PART_CTX)?.flatten())
}

/// The ctx to return to the host: none for a zero-sized type, which
/// carries nothing.
fn sent_ctx<T>(ctx: &T) -> Option<&T> {
    (std::mem::size_of::<T>() != 0).then_some(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{HttpPeer, RequestHeader, Session};
    use serde_json::Value;

    struct Echo;

    impl ProxyHttp for Echo {
        type CTX = Value;
        fn new_ctx(&self) -> Value {
            Value::Null
        }
        fn upstream_peer(&self, _: &mut Session, ctx: &mut Value) -> Result<Box<HttpPeer>> {
            *ctx = Value::Bool(true);
            Ok(Box::new(HttpPeer::new(("10.0.0.1", 80), true, "x".into())))
        }
        fn upstream_request_filter(
            &self,
            _: &mut Session,
            upstream_request: &mut RequestHeader,
            _: &mut Value,
        ) -> Result<()> {
            upstream_request.insert_header("Host", "x")
        }
    }

    /// A hook's own encoder writes what the serde default would, with and
    /// without a ctx.
    fn encoders_agree<H: GuestHook<Echo>>(input: impl Fn() -> Input) {
        let ctx = serde_json::json!({"stamp": "a\"b"});
        for ctx in [Some(&ctx), None] {
            let call = || H::call(&Echo, input(), &mut Value::Null).unwrap();
            let mut fast = Vec::new();
            H::encode(&mut fast, call(), ctx).unwrap();
            let serde = serde_json::to_vec(&H::output(call(), ctx)).unwrap();
            // As the host reads them: defaults filled in.
            let read = |json: &[u8]| {
                let output: HookOutput<Value> = serde_json::from_slice(json).unwrap();
                serde_json::to_value(output).unwrap()
            };
            assert_eq!(read(&fast), read(&serde));
            assert_eq!(read(&fast).get("ctx").is_some(), ctx.is_some());
        }
    }

    #[test]
    fn hooks_encode_what_their_output_says() {
        let raw = |json: &str| Some(RawValue::from_string(json.into()).unwrap());
        let input = || HookInput {
            request: raw(r#"{"method":"GET","uri":"/","headers":[]}"#),
            upstream_request: raw(r#"{"method":"GET","uri":"/","headers":[["host","a"]]}"#),
            ..no_input()
        };
        encoders_agree::<hooks::upstream_peer>(input);
        encoders_agree::<hooks::upstream_request_filter>(input);
    }

    #[test]
    fn split_ctx_keeps_the_parts() {
        let input: HookInput<Box<RawValue>, Option<Value>> =
            serde_json::from_str(r#"{"request":{"method":"GET"},"duration_us":7,"ctx":[1]}"#)
                .unwrap();
        let (parts, ctx) = split_ctx(input);
        assert_eq!(ctx, Some(serde_json::json!([1])));
        assert_eq!(parts.request.unwrap().get(), r#"{"method":"GET"}"#);
        assert_eq!(parts.duration_us, Some(7));
    }

    #[test]
    fn zero_sized_ctx_is_neither_sent_nor_fetched() {
        assert!(sent_ctx(&()).is_none());
        assert!(sent_ctx(&1u8).is_some());
        assert!(matches!(read_ctx_part::<()>(), Ok(None)));
    }
}
