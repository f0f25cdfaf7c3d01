//! The guest's view of Pingora's `ProxyHttp`: the trait, the session, the
//! peer and the request and response headers, with Pingora's names so
//! Pingora code ports by changing its imports and dropping
//! `async`/`.await`.
//!
//! Built on [`sys`], [`wire`](crate::wire) and [`http`](crate::http)
//! alone: a request or response part the host did not send with the input
//! is fetched from it when first read.

mod headers;
mod peer;
mod request;
mod response;
mod session;

pub use peer::{HttpPeer, PeerOptions, ToPeerAddress, ALPN};
pub use request::RequestHeader;
pub use response::{IntoStatus, ResponseHeader};
pub use session::{Session, MAX_RESPONSE_BODY};

pub(crate) use session::Phase;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::{Error, ErrorType, Result};
use crate::sys;

/// A proxy policy: which requests to answer or refuse, where the others
/// go, what the upstream receives, what the client receives, and what to
/// log (Pingora's trait of the same name, with the hooks the host
/// delegates).
///
/// Hooks are synchronous (a guest cannot block); otherwise the signatures
/// and defaults are Pingora's, so Pingora code ports by changing its
/// imports and dropping `async` and `.await`. A request passes through the
/// hooks in this order, each only if the module exports it (see
/// [`export_proxy!`](crate::export_proxy)): [`request_filter`](Self::request_filter),
/// [`upstream_peer`](Self::upstream_peer),
/// [`upstream_request_filter`](Self::upstream_request_filter),
/// [`response_filter`](Self::response_filter), [`logging`](Self::logging).
///
/// Any hook returning `Err` fails the request: the client gets the error's
/// status ([`Error::status`]) and the host logs its context.
///
/// Pingora's examples port like this:
///
/// ```
/// use guest_sdk::info;
/// use guest_sdk::prelude::*;
///
/// #[derive(Default)]
/// pub struct MyGateway;
///
/// fn check_login(req: &RequestHeader) -> bool {
///     req.headers.get("Authorization").map(|v| v.as_bytes()) == Some(b"password")
/// }
///
/// impl ProxyHttp for MyGateway {
///     type CTX = ();
///     fn new_ctx(&self) -> Self::CTX {}
///
///     fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
///         if session.req_header().uri.path().starts_with("/login")
///             && !check_login(session.req_header())
///         {
///             let _ = session.respond_error(403);
///             return Ok(true);
///         }
///         Ok(false)
///     }
///
///     fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
///         Ok(Box::new(HttpPeer::new("127.0.0.1:8080", false, String::new())))
///     }
///
///     fn response_filter(
///         &self,
///         _session: &mut Session,
///         upstream_response: &mut ResponseHeader,
///         _ctx: &mut Self::CTX,
///     ) -> Result<()> {
///         upstream_response.insert_header("Server", "MyGateway").unwrap();
///         upstream_response.remove_header("alt-svc");
///         Ok(())
///     }
///
///     fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
///         let response_code = session.response_written().map_or(0, |resp| resp.status.as_u16());
///         info!("{} response code: {response_code}", self.request_summary(session, ctx));
///     }
/// }
///
/// guest_sdk::export_proxy!(
///     MyGateway,
///     hooks = [request_filter, upstream_peer, response_filter, logging]
/// );
/// ```
pub trait ProxyHttp {
    /// Per-request state carried from hook to hook. It travels through the
    /// host as JSON; a zero-sized one (such as `()`) carries nothing, so it
    /// is not sent at all and each hook gets a fresh
    /// [`new_ctx`](Self::new_ctx).
    type CTX: Serialize + DeserializeOwned;

    /// Creates the context at the start of a request.
    fn new_ctx(&self) -> Self::CTX;

    /// Handle the incoming request.
    ///
    /// Runs first, before the upstream is chosen. In this phase, users can
    /// parse, validate, rate limit, perform access control and/or return a
    /// response for this request: change it through
    /// [`Session::req_header_mut`] (the later hooks and the upstream see
    /// the change), or answer it with [`Session::respond_error`] or
    /// [`Session::write_response_header`] and friends.
    ///
    /// If the user already sent a response to this request, an `Ok(true)`
    /// should be returned so that the proxy would exit; the response still
    /// passes through [`response_filter`](Self::response_filter) and
    /// [`logging`](Self::logging), but no upstream is contacted. The proxy
    /// continues to the next phases when `Ok(false)` is returned. Here a
    /// response written is sent even if `Ok(false)` is returned, and
    /// `Ok(true)` without one is an error (500). `Err` refuses the request
    /// with the error's status.
    ///
    /// By default this filter does nothing and returns `Ok(false)`.
    fn request_filter(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        Ok(false)
    }

    /// Define where the proxy should send the request to.
    ///
    /// The returned [`HttpPeer`] contains the information regarding where
    /// and how this request should be forwarded to.
    ///
    /// Called only if the module exports it: without it the host sends the
    /// request to its own configured upstream. The default, for a module
    /// that does not export it, is an error.
    fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "this module has no upstream_peer")
    }

    /// Modify the request before it is sent to the upstream.
    ///
    /// Runs after [`upstream_peer`](Self::upstream_peer); changes to
    /// `upstream_request` are what the upstream receives. By default this
    /// filter does nothing.
    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }

    /// Modify the response header before it is sent to the downstream.
    ///
    /// Runs once the response header is known: the upstream's, or the one
    /// [`request_filter`](Self::request_filter) wrote. Changes to
    /// `upstream_response` (headers, status) are what the client receives.
    /// `Err` fails the request with the error's status instead.
    ///
    /// By default this filter does nothing.
    fn response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }

    /// Modify the response's trailers before they are sent to the
    /// downstream.
    ///
    /// Runs when the upstream's response ends with trailers (an HTTP/2
    /// upstream's: a gRPC call's `grpc-status`, `grpc-message` and
    /// trailing metadata). `upstream_trailers` holds them as its headers,
    /// with the response's status (which cannot change here); header
    /// changes are what the client receives. Pingora's hook takes a
    /// `HeaderMap`; this one a [`ResponseHeader`], whose header methods
    /// are the same. `Err` fails the response, which is under way: no
    /// change applies, and it ends with `grpc-status: 13` (INTERNAL) for a
    /// gRPC client, with no trailers for any other.
    ///
    /// By default this filter does nothing.
    fn response_trailer_filter(
        &self,
        _session: &mut Session,
        _upstream_trailers: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }

    /// This filter is called when the entire response is sent to the
    /// downstream successfully or there is a fatal error that terminates
    /// the request.
    ///
    /// An error log is already emitted if there is any error (`e`). This
    /// phase is used for collecting metrics and sending access logs:
    /// [`Session::response_written`] is what the client got and
    /// [`Session::elapsed`] how long it took. Nothing done here changes the
    /// response.
    ///
    /// By default this filter does nothing.
    fn logging(&self, _session: &mut Session, _e: Option<&Error>, _ctx: &mut Self::CTX) {}

    /// A one-line description of the request for log lines.
    ///
    /// Users can define what is important to be written about this request
    /// via the returned string. The default is Pingora's:
    /// `GET /path?query, Host: example.com`.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        session.request_summary()
    }
}

/// Decodes an input part from the JSON given, or else fetches it from the
/// host. The host always sends well-formed parts; anything else decodes as
/// empty.
fn decode_part<T: DeserializeOwned + Default>(raw: Option<&RawValue>, part: i32) -> T {
    match raw {
        // Bytes, as `sys::read_part` decodes: one deserializer per type.
        Some(raw) => serde_json::from_slice(raw.get().as_bytes()).unwrap_or_default(),
        None => sys::read_part(part).ok().flatten().unwrap_or_default(),
    }
}
