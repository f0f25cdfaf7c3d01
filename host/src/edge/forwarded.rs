//! What an edge proxy adds to the requests it takes in: `X-Forwarded-For`
//! (the client's address, appended to what proxies before it said),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` (how and for which name the
//! client asked, replacing whatever the client itself claimed), and a
//! `Host` for an HTTP/2 request, which names its host in `:authority`.
//! They go into the downstream request as it arrives, as Envoy adds its
//! own: every guest (filters, `request_filter`, ...,
//! `upstream_request_filter`) sees them and may change or remove them, and
//! what is left goes upstream.

use std::io::Write;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::Version;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

// Names given to Pingora as `&'static str`: a `HeaderName` that is not a
// standard one would be copied into a fresh buffer for the request's
// case-preserving map on every request, a string literal is not.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// An HTTP/2 request without a Host header gets one from its
/// `:authority`, so that guests read every request's host the same way
/// (Pingora makes the same Host for an HTTP/1.1 upstream).
pub(crate) fn authority_as_host(request: &mut RequestHeader) {
    if request.version != Version::HTTP_2 || request.headers.contains_key(HOST) {
        return;
    }
    let host = request
        .uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    if let Some(host) = host {
        // Inserting a valid name and value cannot fail.
        let _ = request.insert_header(HOST, host);
    }
}

/// Adds the three X-Forwarded headers to `session`'s request.
pub(crate) fn add_forwarded_headers(session: &mut Session) -> Result<()> {
    let client = session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .copied();
    let tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    let request = session.req_header_mut();
    if let Some(client) = client {
        let mut chain = Vec::new();
        for earlier in request.headers.get_all(X_FORWARDED_FOR) {
            chain.extend_from_slice(earlier.as_bytes());
            chain.extend_from_slice(b", ");
        }
        // Written in place, and the buffer handed over, not copied.
        let _ = write!(chain, "{}", client.ip());
        let chain = HeaderValue::from_maybe_shared(Bytes::from(chain)).or_err(
            InvalidHTTPHeader,
            "X-Forwarded-For of the downstream request",
        )?;
        request.insert_header(X_FORWARDED_FOR, chain)?;
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    request.insert_header(X_FORWARDED_PROTO, proto)?;
    match request.headers.get(HOST).cloned() {
        Some(host) => request.insert_header(X_FORWARDED_HOST, host)?,
        None => {
            request.remove_header(X_FORWARDED_HOST);
        }
    }
    Ok(())
}
