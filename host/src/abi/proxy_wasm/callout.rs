//! Calls a filter dispatches to a configured cluster: HTTP calls
//! (`proxy_http_call`) and gRPC calls (`proxy_grpc_call`, see `grpc.rs`),
//! made by the request's task without blocking a worker and bounded by the
//! filter's timeout. An HTTP call's answer goes to
//! `proxy_on_http_call_response` as headers (with `:status`) and a body,
//! or as nothing if the call failed or timed out, as the spec says.
//!
//! A plain HTTP/1.1 destination gets one HTTP/1.0 exchange on a fresh
//! connection; a cluster that speaks TLS or HTTP/2 is reached through
//! Pingora's connector (its pooled, multiplexed connections).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::StaticUpstream;

/// The largest call response kept; a larger one fails the call.
const MAX_RESPONSE: usize = 1 << 20;

/// The most answers one chain of HTTP calls gets, a request's, a
/// response's or a root context's (each answer may dispatch another
/// call): past it the rest are dropped and what waited goes on, so a
/// filter cannot hold a stream, or the instance it runs in, for ever.
pub const MAX_CHAINED_ANSWERS: usize = 16;

/// A call a filter dispatched, waiting to be made. It holds one of its
/// tenant's callout slots until it is dropped (answered or abandoned).
#[derive(Debug)]
pub struct PendingCall {
    /// The token the filter was given.
    pub token: u32,
    /// Where the call goes.
    pub target: StaticUpstream,
    /// What kind of call it is, and so which callbacks get its answer.
    pub kind: CallKind,
    /// Its header pairs, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// How long it may take.
    pub timeout: Duration,
    /// The tenant's callout slot it holds.
    pub slot: super::CallSlot,
}

/// The kind of a dispatched call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `proxy_http_call`, answered by `proxy_on_http_call_response`.
    Http,
    /// `proxy_grpc_call`, answered by `proxy_on_grpc_receive` or
    /// `proxy_on_grpc_close`.
    Grpc,
}

/// What a call got back.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// Header pairs, `:status` first.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Trailer pairs (HTTP/2 only).
    pub trailers: Vec<(String, String)>,
}

/// Why a call got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailed {
    /// Its timeout passed.
    TimedOut,
    /// It could not be made, or its answer was not HTTP or too large.
    Failed,
}

/// Makes `call`.
pub async fn perform(call: &PendingCall) -> Result<CallResponse, CallFailed> {
    let exchange = async {
        if call.target.tls || call.target.is_h2() {
            exchange_pooled(call).await
        } else {
            exchange(call).await
        }
    };
    match tokio::time::timeout(call.timeout, exchange).await {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(CallFailed::Failed),
        Err(_) => Err(CallFailed::TimedOut),
    }
}

/// The connector every call to a TLS or HTTP/2 cluster goes through: its
/// connections are pooled, and an HTTP/2 one carries many calls at once.
fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
}

/// One exchange through Pingora's connector: the request, then the whole
/// response, its trailers included, bounded by [`MAX_RESPONSE`].
async fn exchange_pooled(call: &PendingCall) -> Option<CallResponse> {
    let request = pooled_request(call)?;
    let peer = call.target.peer();
    let (mut session, _reused) = connector().get_http_session(&peer).await.ok()?;
    let body = !call.body.is_empty();
    session.write_request_header(request).await.ok()?;
    if body {
        let body = Bytes::copy_from_slice(&call.body);
        session.write_request_body(body, true).await.ok()?;
    }
    session.finish_request_body().await.ok()?;
    session.read_response_header().await.ok()?;
    let header = session.response_header()?;
    let mut headers = vec![(":status".to_string(), header.status.as_str().to_string())];
    headers.extend(pairs(&header.headers));
    let mut response = Vec::new();
    while let Some(chunk) = session.read_response_body().await.ok()? {
        if response.len() + chunk.len() > MAX_RESPONSE {
            return None;
        }
        response.extend_from_slice(&chunk);
    }
    let trailers = match &mut session {
        HttpSession::H2(h2) => h2.read_trailers().await.ok()?,
        _ => None,
    };
    let trailers = trailers.as_ref().map(pairs).unwrap_or_default();
    connector()
        .release_http_session(session, &peer, Some(Duration::from_secs(60)))
        .await;
    Some(CallResponse {
        headers,
        body: response,
        trailers,
    })
}

/// The request of `call` for Pingora: its pseudo-headers as the method,
/// path and authority, its other fields as given (framing fields dropped:
/// the body's length is the connector's to say).
fn pooled_request(call: &PendingCall) -> Option<Box<RequestHeader>> {
    let get = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let method = get(":method").unwrap_or("GET");
    let path = get(":path").unwrap_or("/");
    let authority = match get(":authority") {
        Some(authority) => authority.to_string(),
        None if !call.target.sni.is_empty() => call.target.sni.clone(),
        None => call.target.address.to_string(),
    };
    let mut request = RequestHeader::build(method, path.as_bytes(), None).ok()?;
    if call.target.is_h2() {
        let scheme = if call.target.tls { "https" } else { "http" };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .ok()?;
        request.set_uri(uri);
    } else {
        request.insert_header(http::header::HOST, &authority).ok()?;
    }
    for (name, value) in &call.headers {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') || is_connection_field(&name) {
            continue;
        }
        request.append_header(name, value.as_str()).ok()?;
    }
    if !call.target.is_h2() {
        request
            .insert_header(http::header::CONTENT_LENGTH, call.body.len())
            .ok()?;
    }
    Some(Box::new(request))
}

/// Fields a caller may not set: framing and connection management are the
/// connector's.
fn is_connection_field(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "proxy-connection"
    )
}

/// Header pairs of `map`, values lossily as text.
fn pairs(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// One HTTP/1.0 exchange: the request, then the response read to the end
/// of the connection (so no chunked framing comes back).
async fn exchange(call: &PendingCall) -> Option<CallResponse> {
    let get = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let method = get(":method").unwrap_or("GET");
    let path = get(":path").unwrap_or("/");
    let authority =
        get(":authority").map_or_else(|| call.target.address.to_string(), str::to_string);
    let clean = |text: &str| !text.contains(['\r', '\n']);
    if !clean(method) || !clean(path) || !clean(&authority) {
        return None;
    }
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\n");
    for (name, value) in &call.headers {
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") || !clean(name) || !clean(value) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", call.body.len()));
    let mut stream = TcpStream::connect(call.target.address).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    stream.write_all(&call.body).await.ok()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..read]);
        if raw.len() > MAX_RESPONSE {
            return None;
        }
    }
    parse(&raw)
}

/// The response in `raw`: status line, headers, and the body after them
/// (cut to `Content-Length` if the server sent one).
fn parse(raw: &[u8]) -> Option<CallResponse> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    let httparse::Status::Complete(length) = response.parse(raw).ok()? else {
        return None;
    };
    let mut headers = vec![(":status".to_string(), response.code?.to_string())];
    let mut body = raw[length..].to_vec();
    for field in response.headers.iter() {
        let value = String::from_utf8_lossy(field.value).into_owned();
        if field.name.eq_ignore_ascii_case("content-length") {
            if let Ok(declared) = value.trim().parse::<usize>() {
                body.truncate(declared);
            }
        }
        headers.push((field.name.to_ascii_lowercase(), value));
    }
    Some(CallResponse {
        headers,
        body,
        trailers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_and_garbage_does_not() {
        let response =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nallowEXTRA").unwrap();
        assert_eq!(response.headers[0], (":status".into(), "200".into()));
        assert_eq!(response.headers[2], ("x-a".into(), "b".into()));
        assert_eq!(response.body, b"allow");
        assert!(parse(b"nonsense").is_none());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nX-A: b\r\n").is_none(),
            "cut short"
        );
    }
}
