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
    use crate::error::{Error, ErrorType, Result};
    use crate::proxy::{Phase, ProxyHttp, RequestHeader, ResponseHeader, Session};
    use crate::sys;
    use crate::wire::{self, HookOutput};

    /// `request_filter`: answer or refuse the request, or change it
    /// ([`ProxyHttp::request_filter`]).
    pub struct request_filter;

    /// What `request_filter` decided, as it goes to the host.
    #[derive(Debug)]
    pub enum RequestFilterOutput {
        /// Go on, with these changes to the downstream request (maybe
        /// none): `request_changes`.
        Continue(wire::RequestChanges),
        /// Answer the request with this response: `response`.
        Respond(wire::LocalResponse),
    }

    impl<P: ProxyHttp> GuestHook<P> for request_filter {
        type Output = RequestFilterOutput;

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<RequestFilterOutput> {
            let mut session = Session::from_json(input.request, Phase::RequestFilter);
            let done = proxy.request_filter(&mut session, ctx)?;
            // A response written is sent whatever the hook returned: it is
            // what the guest did, and dropping it would proxy a request the
            // guest meant to answer.
            match session.take_response() {
                Some(response) => Ok(RequestFilterOutput::Respond(response?)),
                None if done => Error::e_explain(
                    ErrorType::InternalError,
                    "request_filter returned Ok(true) without writing a response",
                ),
                None => Ok(RequestFilterOutput::Continue(
                    session.take_request_changes(),
                )),
            }
        }

        fn output<C>(output: RequestFilterOutput, ctx: Option<C>) -> HookOutput<C> {
            match output {
                RequestFilterOutput::Continue(changes) => HookOutput {
                    request_changes: (!changes.is_empty()).then(|| Box::new(changes)),
                    ..unchanged(ctx)
                },
                RequestFilterOutput::Respond(response) => HookOutput {
                    response: Some(Box::new(response)),
                    ..unchanged(ctx)
                },
            }
        }

        fn encode(
            out: &mut Vec<u8>,
            output: RequestFilterOutput,
            ctx: Option<&P::CTX>,
        ) -> serde_json::Result<()> {
            match output {
                // On every request's path: written directly.
                RequestFilterOutput::Continue(changes) => {
                    encode::request_changes_output(out, "request_changes", &changes, ctx)
                }
                respond => {
                    serde_json::to_writer(out, &<Self as GuestHook<P>>::output(respond, ctx))
                }
            }
        }
    }

    /// `upstream_peer`: where the request goes
    /// ([`ProxyHttp::upstream_peer`]).
    pub struct upstream_peer;

    impl<P: ProxyHttp> GuestHook<P> for upstream_peer {
        type Output = wire::Peer;

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<wire::Peer> {
            let mut session = Session::from_json(input.request, Phase::Other);
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
            let mut session = Session::from_json(input.request, Phase::Other);
            let mut upstream_request =
                RequestHeader::from_json(input.upstream_request, wire::PART_UPSTREAM_REQUEST);
            proxy.upstream_request_filter(&mut session, &mut upstream_request, ctx)?;
            Ok(upstream_request.into_changes())
        }

        fn output<C>(changes: wire::RequestChanges, ctx: Option<C>) -> HookOutput<C> {
            HookOutput {
                upstream_changes: (!changes.is_empty()).then(|| Box::new(changes)),
                ..unchanged(ctx)
            }
        }

        fn encode(
            out: &mut Vec<u8>,
            changes: wire::RequestChanges,
            ctx: Option<&P::CTX>,
        ) -> serde_json::Result<()> {
            encode::request_changes_output(out, "upstream_changes", &changes, ctx)
        }
    }

    /// `response_trailer_filter`: the trailers the client receives
    /// ([`ProxyHttp::response_trailer_filter`]), sent back as changes.
    pub struct response_trailer_filter;

    impl<P: ProxyHttp> GuestHook<P> for response_trailer_filter {
        type Output = wire::ResponseChanges;

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<wire::ResponseChanges> {
            let mut session = Session::from_json(input.request, Phase::Other);
            let mut trailers = ResponseHeader::from_json(input.response, wire::PART_RESPONSE);
            proxy.response_trailer_filter(&mut session, &mut trailers, ctx)?;
            Ok(trailers.into_changes())
        }

        fn output<C>(changes: wire::ResponseChanges, ctx: Option<C>) -> HookOutput<C> {
            <response_filter as GuestHook<P>>::output(changes, ctx)
        }

        fn encode(
            out: &mut Vec<u8>,
            changes: wire::ResponseChanges,
            ctx: Option<&P::CTX>,
        ) -> serde_json::Result<()> {
            encode::response_changes_output(out, &changes, ctx)
        }
    }

    /// `response_filter`: what the client receives
    /// ([`ProxyHttp::response_filter`]), sent back as changes.
    pub struct response_filter;

    impl<P: ProxyHttp> GuestHook<P> for response_filter {
        type Output = wire::ResponseChanges;

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<wire::ResponseChanges> {
            let mut session = Session::from_json(input.request, Phase::Other);
            let mut response = ResponseHeader::from_json(input.response, wire::PART_RESPONSE);
            proxy.response_filter(&mut session, &mut response, ctx)?;
            Ok(response.into_changes())
        }

        fn output<C>(changes: wire::ResponseChanges, ctx: Option<C>) -> HookOutput<C> {
            HookOutput {
                response_changes: (!changes.is_empty()).then(|| Box::new(changes)),
                ..unchanged(ctx)
            }
        }

        fn encode(
            out: &mut Vec<u8>,
            changes: wire::ResponseChanges,
            ctx: Option<&P::CTX>,
        ) -> serde_json::Result<()> {
            encode::response_changes_output(out, &changes, ctx)
        }
    }

    /// `logging`: the request has ended ([`ProxyHttp::logging`]). Its
    /// output is `{}`: the host ignores it.
    pub struct logging;

    impl<P: ProxyHttp> GuestHook<P> for logging {
        type Output = ();

        fn call(proxy: &P, input: Input, ctx: &mut P::CTX) -> Result<()> {
            let mut session =
                Session::for_logging(input.request, input.response, input.duration_us);
            let logged = match input.error {
                Some(raw) => serde_json::from_str(raw.get()).ok(),
                None => sys::read_part::<wire::LoggedError>(wire::PART_ERROR)
                    .ok()
                    .flatten(),
            };
            let error = logged.map(|logged| {
                // The kind `HTTPStatus` does not carry its code; Pingora
                // answers such an error with that code, so it is the
                // status the client got.
                let status = if logged.kind == "HTTPStatus" {
                    session
                        .response_written()
                        .map_or(500, |response| response.status.as_u16())
                } else {
                    500
                };
                Error::from_logged(logged, status)
            });
            proxy.logging(&mut session, error.as_ref(), ctx);
            Ok(())
        }

        fn output<C>(_: (), _ctx: Option<C>) -> HookOutput<C> {
            unchanged(None)
        }

        fn encode(out: &mut Vec<u8>, _: (), _ctx: Option<&P::CTX>) -> serde_json::Result<()> {
            out.extend_from_slice(b"{}");
            Ok(())
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
    use crate::proxy::{HttpPeer, RequestHeader, ResponseHeader, Session};
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
        fn request_filter(&self, session: &mut Session, ctx: &mut Value) -> Result<bool> {
            *ctx = Value::from("request_filter");
            let path = session.req_header().uri.path().to_string();
            match path.as_str() {
                "/answer" => {
                    let mut header = ResponseHeader::build(401, None)?;
                    header.insert_header("Content-Type", "text/plain")?;
                    header.insert_header("WWW-Authenticate", "Basic")?;
                    session.write_response_header(Box::new(header), false)?;
                    session.write_response_body(Some("no\n".into()), true)?;
                    Ok(true)
                }
                "/answer-false" => {
                    session.respond_error(200)?;
                    Ok(false)
                }
                "/rewrite" => {
                    session.req_header_mut().set_uri("/rewritten")?;
                    session.req_header_mut().insert_header("x-rewritten", "1")?;
                    Ok(false)
                }
                "/true" => Ok(true),
                "/deny" => Error::e_explain(ErrorType::HTTPStatus(403), "denied"),
                _ => Ok(false),
            }
        }
        fn response_filter(
            &self,
            _: &mut Session,
            response: &mut ResponseHeader,
            _: &mut Value,
        ) -> Result<()> {
            if response.status == 201 {
                response.set_status(203)?;
            }
            response.insert_header("Server", "MyGateway")
        }
        fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Value) {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let error = e.map_or("-".to_string(), |e| e.to_string());
            *ctx = Value::from(format!(
                "{} status={status} error={error} us={}",
                self.request_summary(session, ctx),
                session.elapsed().as_micros()
            ));
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
            response: raw(r#"{"status":200,"headers":[["server","o"]]}"#),
            ..no_input()
        };
        encoders_agree::<hooks::upstream_peer>(input);
        encoders_agree::<hooks::upstream_request_filter>(input);
        encoders_agree::<hooks::response_filter>(input);
        encoders_agree::<hooks::request_filter>(input);
        let answer = || HookInput {
            request: raw(r#"{"method":"GET","uri":"/answer","headers":[]}"#),
            ..no_input()
        };
        encoders_agree::<hooks::request_filter>(answer);
        let unchanged = || HookInput {
            request: raw(r#"{"method":"GET","uri":"/keep","headers":[]}"#),
            ..no_input()
        };
        encoders_agree::<hooks::request_filter>(unchanged);
    }

    /// Runs hook `H` of `Echo` on `input` and returns its output JSON as
    /// the host reads it, and the ctx after the call.
    fn run_hook<H: GuestHook<Echo>>(input: Input) -> (Value, Value) {
        let mut ctx = Value::Null;
        let mut out = Vec::new();
        match H::call(&Echo, input, &mut ctx) {
            Ok(output) => H::encode(&mut out, output, Some(&ctx)).unwrap(),
            Err(e) => encode::error_output(&mut out, &e.to_wire()).unwrap(),
        }
        (serde_json::from_slice(&out).unwrap(), ctx)
    }

    fn request(uri: &str, headers: &str) -> Input {
        let json = format!(r#"{{"method":"GET","uri":"{uri}","headers":{headers}}}"#);
        HookInput {
            request: Some(RawValue::from_string(json).unwrap()),
            ..no_input()
        }
    }

    #[test]
    fn request_filter_answers_changes_or_refuses() {
        let (out, ctx) = run_hook::<hooks::request_filter>(request("/answer", "[]"));
        assert_eq!(out["response"]["status"], 401);
        assert_eq!(out["response"]["body"], "no\n");
        assert_eq!(out["response"]["headers"][1][0], "WWW-Authenticate");
        assert_eq!(out["ctx"], ctx);
        assert_eq!(ctx, "request_filter");

        let (out, _) = run_hook::<hooks::request_filter>(request("/rewrite", "[]"));
        assert_eq!(out["request_changes"]["uri"], "/rewritten");
        assert_eq!(
            out["request_changes"]["headers"][0]["insert"][0],
            "x-rewritten"
        );
        assert!(out.get("response").is_none());

        let (out, _) = run_hook::<hooks::request_filter>(request("/keep", "[]"));
        assert!(out.get("request_changes").is_none() && out.get("response").is_none());

        // Written but Ok(false): sent anyway.
        let (out, _) = run_hook::<hooks::request_filter>(request("/answer-false", "[]"));
        assert_eq!(out["response"]["status"], 200);

        // Ok(true) with nothing written: the guest's bug, a 500.
        let (out, _) = run_hook::<hooks::request_filter>(request("/true", "[]"));
        assert_eq!(out["error"]["status"], 500);

        let (out, _) = run_hook::<hooks::request_filter>(request("/deny", "[]"));
        assert_eq!(out["error"]["status"], 403);
    }

    #[test]
    fn response_filter_sends_changes() {
        let input = HookInput {
            response: Some(
                RawValue::from_string(r#"{"status":201,"headers":[["Server","o"]]}"#.into())
                    .unwrap(),
            ),
            ..request("/", "[]")
        };
        let (out, _) = run_hook::<hooks::response_filter>(input);
        assert_eq!(
            out["response_changes"],
            serde_json::json!({"status": 203, "headers": [{"insert": ["Server", "MyGateway"]}]})
        );
    }

    #[test]
    fn logging_sees_error_response_and_duration_and_returns_nothing() {
        let raw = |json: &str| Some(RawValue::from_string(json.into()).unwrap());
        let input = HookInput {
            response: raw(r#"{"status":403,"headers":[]}"#),
            error: raw(r#"{"kind":"HTTPStatus","text":"denied"}"#),
            duration_us: Some(1500),
            ..request("/", r#"[["host","h"]]"#)
        };
        let (out, ctx) = run_hook::<hooks::logging>(input);
        assert_eq!(out, serde_json::json!({}));
        assert_eq!(
            ctx,
            "GET /, Host: h status=403 error=HTTPStatus(403) context: denied us=1500"
        );

        let (_, ctx) = run_hook::<hooks::logging>(request("/", "[]"));
        assert_eq!(ctx, "GET /, Host:  status=0 error=- us=0");
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
