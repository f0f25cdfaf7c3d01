//! The guest's view of Pingora's `ProxyHttp`: the trait, the session, the
//! peer and the upstream request, with Pingora's names so tutorial code
//! ports by changing its imports.
//!
//! Built on [`sys`] alone: a request part the host did not send
//! with the input is fetched from it when first read.

mod peer;
mod request;
mod session;

pub use peer::{HttpPeer, PeerOptions, ToPeerAddress};
pub use request::RequestHeader;
pub use session::Session;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::Result;
use crate::sys;

/// A proxy policy: where each request goes and what the upstream receives.
///
/// Pingora's trait of the same name, with the two hooks the host delegates.
/// Hooks are synchronous (a guest cannot block); everything else matches.
pub trait ProxyHttp {
    /// Per-request state carried from `upstream_peer` to
    /// `upstream_request_filter`. It travels through the host as JSON;
    /// a zero-sized one (such as `()`) carries nothing, so it is not sent
    /// at all and each hook gets a fresh [`new_ctx`](Self::new_ctx).
    type CTX: Serialize + DeserializeOwned;

    /// Creates the context at the start of a request.
    fn new_ctx(&self) -> Self::CTX;

    /// Where to send this request.
    fn upstream_peer(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>>;

    /// Changes the request the upstream receives. Defaults to no change.
    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }
}

fn first_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
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
