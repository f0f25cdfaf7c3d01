//! HTTP calls a filter dispatches (`proxy_http_call`) to a configured
//! cluster: made by the request's task without blocking a worker, bounded
//! by the filter's timeout, and delivered to `proxy_on_http_call_response`
//! as headers (with `:status`) and a body, or as nothing if the call
//! failed or timed out, as the spec says.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    pub address: SocketAddr,
    /// Its header pairs, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// How long it may take.
    pub timeout: Duration,
    /// The tenant's callout slot it holds.
    pub slot: super::CallSlot,
}

/// What a call got back.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// Header pairs, `:status` first.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Makes `call`; None if it failed or timed out.
pub async fn perform(call: &PendingCall) -> Option<CallResponse> {
    tokio::time::timeout(call.timeout, exchange(call))
        .await
        .ok()
        .flatten()
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
    let authority = get(":authority").map_or_else(|| call.address.to_string(), str::to_string);
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
    let mut stream = TcpStream::connect(call.address).await.ok()?;
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
    Some(CallResponse { headers, body })
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
