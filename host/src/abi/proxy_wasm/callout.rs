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
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::abi::grpc;
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
    /// A gRPC stream: the filter ended its side (nothing more may be
    /// sent).
    pub ended: bool,
    /// Its header pairs, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// How long it may take.
    pub timeout: Duration,
    /// The tenant's callout slot it holds.
    pub slot: super::CallSlot,
}

impl PendingCall {
    /// The first value of its header field `name` (any case): its
    /// pseudo-headers say the method, path and authority.
    fn field(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The kind of a dispatched call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `proxy_http_call`, answered by `proxy_on_http_call_response`.
    Http,
    /// `proxy_grpc_call`, answered by `proxy_on_grpc_receive` or
    /// `proxy_on_grpc_close`.
    Grpc,
    /// `proxy_grpc_stream`: its events go to
    /// `proxy_on_grpc_receive_initial_metadata`, `proxy_on_grpc_receive`
    /// (each message), `proxy_on_grpc_receive_trailing_metadata` and
    /// `proxy_on_grpc_close`, as they come.
    GrpcStream,
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
static CONNECTOR: OnceLock<Connector> = OnceLock::new();

/// Builds the calls' connector with `ca_file` (the Pingora conf's: calls
/// trust what proxied requests trust). Later calls do nothing.
pub fn init_connector(ca_file: Option<String>) {
    CONNECTOR.get_or_init(|| {
        // Pingora's default idle pool: calls of every tenant share it.
        let mut options = ConnectorOptions::new(128);
        options.ca_file = ca_file;
        Connector::new(Some(options))
    });
}

fn connector() -> &'static Connector {
    CONNECTOR.get_or_init(|| Connector::new(None))
}

/// How often an idle HTTP/2 connection of the calls' pool is pinged: one
/// a peer dropped without a word is found dead and not used again.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The most bytes of header fields (or trailers) a call's answer may
/// carry.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// The peer of `target` for a call: its flow-control window no larger
/// than the answer a call may get, and pinged while idle.
fn call_peer(target: &StaticUpstream) -> pingora::upstreams::peer::HttpPeer {
    let mut peer = target.peer();
    peer.options.h2_ping_interval = Some(PING_INTERVAL);
    peer.options.h2_stream_window_size = Some(MAX_RESPONSE as u32);
    peer
}

/// Header pairs of `map`, if they are no more than [`MAX_HEADER_BYTES`].
fn bounded_pairs(map: &http::HeaderMap) -> Option<Vec<(String, String)>> {
    let bytes: usize = map
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (bytes <= MAX_HEADER_BYTES).then(|| pairs(map))
}

/// One exchange through Pingora's connector: the request, then the whole
/// response, its trailers included, bounded by [`MAX_RESPONSE`].
async fn exchange_pooled(call: &PendingCall) -> Option<CallResponse> {
    let request = pooled_request(call)?;
    let peer = call_peer(&call.target);
    let (mut session, _reused) = connector().get_http_session(&peer).await.ok()?;
    if call.kind != CallKind::Http && !matches!(session, HttpSession::H2(_)) {
        // gRPC needs HTTP/2 (a TLS cluster that chose http/1.1).
        return None;
    }
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
    headers.extend(bounded_pairs(&header.headers)?);
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
    let trailers = match &trailers {
        Some(map) => bounded_pairs(map)?,
        None => Vec::new(),
    };
    connector()
        .release_http_session(session, &peer, Some(Duration::from_secs(60)))
        .await;
    Some(CallResponse {
        headers,
        body: response,
        trailers,
    })
}

/// The most messages one gRPC stream delivers; past it the stream is
/// closed with `RESOURCE_EXHAUSTED`: each costs a callback.
pub(super) const MAX_STREAM_MESSAGES: usize = 1000;

/// What happens on a gRPC stream a filter opened, in order: metadata,
/// messages, trailing metadata, and its close (always last, once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The response's headers (initial metadata).
    InitialMetadata(Vec<(String, String)>),
    /// One message.
    Message(Vec<u8>),
    /// The trailers (trailing metadata).
    TrailingMetadata(Vec<(String, String)>),
    /// The stream is over, with this status and message.
    Closed(u32, String),
}

/// What a filter did to the gRPC stream whose event it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// Send a message (framed; empty: none), ending the filter's side if
    /// the flag says so.
    Send(Vec<u8>, bool),
    /// Reset the stream: nothing more is delivered for it.
    Cancel,
}

/// A gRPC stream to a cluster, open: what the filter sends goes out as it
/// sends it, and its events are read one at a time, all bounded by the
/// stream's deadline.
pub struct GrpcStream {
    session: Option<HttpSession>,
    /// Where it goes, to give its connection back after a clean end.
    peer: pingora::upstreams::peer::HttpPeer,
    /// It failed (could not be opened, broke, or ran out of time): the
    /// tenant's failed callouts count it.
    failed: bool,
    /// The filter ended its side: nothing more may be sent.
    ended: bool,
    deadline: tokio::time::Instant,
    /// Body bytes read and not yet a whole message.
    pending: Vec<u8>,
    /// The body has ended: trailers and the close are next.
    body_done: bool,
    /// What comes after the current event, when it is known already.
    queued: std::collections::VecDeque<StreamEvent>,
    messages: usize,
    closed: bool,
}

impl GrpcStream {
    /// Opens `call` (a [`CallKind::GrpcStream`]): its headers, then what
    /// the filter sent so far (and the end of its side, if it ended it).
    /// A stream that cannot be opened is one that closes at once.
    pub async fn open(call: &PendingCall) -> GrpcStream {
        let mut stream = GrpcStream {
            session: None,
            peer: call_peer(&call.target),
            failed: false,
            ended: call.ended,
            deadline: tokio::time::Instant::now() + call.timeout,
            pending: Vec::new(),
            body_done: false,
            queued: Default::default(),
            messages: 0,
            closed: false,
        };
        let opened = tokio::time::timeout_at(stream.deadline, async {
            let request = pooled_request(call)?;
            let (session, _) = connector().get_http_session(&stream.peer).await.ok()?;
            let HttpSession::H2(session) = session else {
                // gRPC needs HTTP/2 (a TLS cluster that chose http/1.1).
                return None;
            };
            let mut session = HttpSession::H2(session);
            session.write_request_header(request).await.ok()?;
            if !call.body.is_empty() {
                let body = Bytes::copy_from_slice(&call.body);
                session.write_request_body(body, call.ended).await.ok()?;
            } else if call.ended {
                session.finish_request_body().await.ok()?;
            }
            Some(session)
        })
        .await;
        match opened {
            Ok(Some(session)) => stream.session = Some(session),
            Ok(None) => stream.fail(grpc::UNAVAILABLE, "the cluster could not be reached"),
            Err(_) => stream.fail(grpc::DEADLINE_EXCEEDED, "deadline exceeded"),
        }
        stream
    }

    /// Whether it failed (for the tenant's failed callouts).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether the filter ended its side.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn fail(&mut self, status: u32, message: &str) {
        self.failed = true;
        self.close(status, message);
    }

    /// Sends `message` (framed) on the stream, ending the filter's side
    /// if `end`; false if the stream cannot take it (it is over).
    pub async fn send(&mut self, frame: Vec<u8>, end: bool) -> bool {
        if self.ended {
            return false;
        }
        self.ended = end;
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let sent = tokio::time::timeout_at(self.deadline, async {
            if !frame.is_empty() {
                session
                    .write_request_body(Bytes::from(frame), end)
                    .await
                    .is_ok()
            } else if end {
                session.finish_request_body().await.is_ok()
            } else {
                true
            }
        })
        .await;
        sent == Ok(true)
    }

    /// Resets the stream: no more events.
    pub fn cancel(&mut self) {
        if let Some(HttpSession::H2(mut h2)) = self.session.take() {
            h2.shutdown();
        }
        self.closed = true;
        self.queued.clear();
    }

    /// Whether the close was delivered (or the stream cancelled).
    pub fn is_over(&self) -> bool {
        self.closed && self.queued.is_empty()
    }

    fn close(&mut self, status: u32, message: &str) {
        self.queued
            .push_back(StreamEvent::Closed(status, message.to_string()));
        self.closed = true;
        if let Some(HttpSession::H2(mut h2)) = self.session.take() {
            h2.shutdown();
        }
    }

    /// The next event; after [`StreamEvent::Closed`], None.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if let Some(event) = self.queued.pop_front() {
            return Some(event);
        }
        if self.closed {
            return None;
        }
        match tokio::time::timeout_at(self.deadline, self.read()).await {
            Ok(Ok(())) => {}
            Ok(Err((status, message))) => self.fail(status, message),
            Err(_) => self.fail(grpc::DEADLINE_EXCEEDED, "deadline exceeded"),
        }
        self.queued.pop_front()
    }

    /// Reads until there is an event to give.
    async fn read(&mut self) -> Result<(), (u32, &'static str)> {
        const NO_STREAM: (u32, &str) = (grpc::INTERNAL, "no stream");
        let failed = |_| (grpc::UNAVAILABLE, "the stream failed");
        let session = self.session.as_mut().ok_or(NO_STREAM)?;
        if session.response_header().is_none() {
            session.read_response_header().await.map_err(failed)?;
            let header = session
                .response_header()
                .ok_or((grpc::INTERNAL, "no header"))?;
            let status = header.status.as_u16();
            let fields = bounded_pairs(&header.headers)
                .ok_or((grpc::RESOURCE_EXHAUSTED, "headers past 64 KiB"))?;
            if status != 200 {
                // As Envoy: the headers, then the status mapped.
                self.queued.push_back(StreamEvent::InitialMetadata(fields));
                self.fail(
                    grpc::status_of_http(status),
                    "the cluster's answer is not HTTP 200",
                );
                return Ok(());
            }
            if let Some(code) = grpc_status_of(&fields) {
                // Trailers-only: the headers are the trailers (and, as
                // Envoy delivers it, the initial metadata is empty).
                let message = grpc_message_of(&fields);
                self.queued
                    .push_back(StreamEvent::InitialMetadata(Vec::new()));
                self.queued.push_back(StreamEvent::TrailingMetadata(fields));
                self.close(code, &message);
                return Ok(());
            }
            self.queued.push_back(StreamEvent::InitialMetadata(fields));
            return Ok(());
        }
        loop {
            if let Some(message) = self.take_message()? {
                self.messages += 1;
                if self.messages > MAX_STREAM_MESSAGES {
                    return Err((grpc::RESOURCE_EXHAUSTED, "too many messages"));
                }
                self.queued.push_back(StreamEvent::Message(message));
                return Ok(());
            }
            if self.body_done {
                break;
            }
            let session = self.session.as_mut().ok_or(NO_STREAM)?;
            match session.read_response_body().await.map_err(failed)? {
                Some(chunk) => {
                    // At most the end of one message (its size checked by
                    // `take_message`) and the start of the next.
                    if self.pending.len() + chunk.len() > 2 * (MAX_RESPONSE + 5) {
                        return Err((grpc::RESOURCE_EXHAUSTED, "a message past 1 MiB"));
                    }
                    self.pending.extend_from_slice(&chunk);
                }
                None => self.body_done = true,
            }
        }
        if !self.pending.is_empty() {
            return Err((grpc::INTERNAL, "the stream ended inside a message"));
        }
        let trailers = match self.session.as_mut().ok_or(NO_STREAM)? {
            HttpSession::H2(h2) => h2.read_trailers().await.map_err(failed)?,
            _ => None,
        };
        let fields = match &trailers {
            Some(map) => {
                bounded_pairs(map).ok_or((grpc::RESOURCE_EXHAUSTED, "trailers past 64 KiB"))?
            }
            None => Vec::new(),
        };
        let code = grpc_status_of(&fields).unwrap_or(grpc::UNKNOWN);
        let message = grpc_message_of(&fields);
        self.queued.push_back(StreamEvent::TrailingMetadata(fields));
        // A clean end: the connection goes back to the pool.
        if let Some(session) = self.session.take() {
            connector()
                .release_http_session(session, &self.peer, Some(Duration::from_secs(60)))
                .await;
        }
        self.close(code, &message);
        Ok(())
    }

    /// The next whole message buffered, if there is one.
    fn take_message(&mut self) -> Result<Option<Vec<u8>>, (u32, &'static str)> {
        let Some(head) = self.pending.get(..5) else {
            return Ok(None);
        };
        if head[0] != 0 {
            return Err((grpc::INTERNAL, "a compressed message"));
        }
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if length > MAX_RESPONSE {
            return Err((grpc::RESOURCE_EXHAUSTED, "a message past 1 MiB"));
        }
        if self.pending.len() < 5 + length {
            return Ok(None);
        }
        let message = self.pending[5..5 + length].to_vec();
        self.pending.drain(..5 + length);
        Ok(Some(message))
    }
}

/// The `grpc-status` of `fields`; a code past the last is `UNKNOWN`.
fn grpc_status_of(fields: &[(String, String)]) -> Option<u32> {
    let value = &fields.iter().find(|(name, _)| name == "grpc-status")?.1;
    Some(
        value
            .parse()
            .ok()
            .filter(|code| *code <= grpc::MAX_STATUS)
            .unwrap_or(grpc::UNKNOWN),
    )
}

fn grpc_message_of(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .find(|(name, _)| name == "grpc-message")
        .map(|(_, value)| grpc::percent_decode(value))
        .unwrap_or_default()
}

/// The request of `call` for Pingora: its pseudo-headers as the method,
/// path and authority, its other fields as given (framing fields dropped:
/// the body's length is the connector's to say).
fn pooled_request(call: &PendingCall) -> Option<Box<RequestHeader>> {
    let get = |name: &str| call.field(name);
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
    let get = |name: &str| call.field(name);
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
