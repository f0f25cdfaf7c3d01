//! The headers an edge proxy adds to what it forwards: `X-Forwarded-For`
//! (the client's address, appended to what proxies before it said),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` (how and for which name the
//! client asked, replacing whatever the client itself claimed). They are
//! added before the guest's `upstream_request_filter`, which may change
//! or remove them.

use http::header::{HeaderName, HeaderValue, HOST};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Adds the three headers to `upstream`, the request about to go to the
/// upstream for `session`'s downstream request.
pub fn add_forwarded_headers(session: &Session, upstream: &mut RequestHeader) -> Result<()> {
    if let Some(client) = session.client_addr().and_then(|addr| addr.as_inet()) {
        let mut chain = Vec::new();
        for earlier in upstream.headers.get_all(&X_FORWARDED_FOR) {
            chain.extend_from_slice(earlier.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(client.ip().to_string().as_bytes());
        let chain = HeaderValue::from_bytes(&chain).or_err(
            InvalidHTTPHeader,
            "X-Forwarded-For of the downstream request",
        )?;
        upstream.insert_header(X_FORWARDED_FOR, chain)?;
    }
    let tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    upstream.insert_header(X_FORWARDED_PROTO, if tls { "https" } else { "http" })?;
    let downstream = session.req_header();
    // HTTP/2 carries the name in :authority, not in a Host header.
    let host = match downstream.headers.get(HOST) {
        Some(host) => Some(host.clone()),
        None => downstream
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok()),
    };
    match host {
        Some(host) => upstream.insert_header(X_FORWARDED_HOST, host)?,
        None => {
            upstream.remove_header(&X_FORWARDED_HOST);
        }
    }
    Ok(())
}
