//! [`Session`]: the downstream request, the response a guest writes in
//! `request_filter`, and in `logging` how the request ended.

use std::cell::OnceCell;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{RequestHeader, ResponseHeader};
use crate::error::{Error, ErrorType, Result};
use crate::http::first_header;
use crate::sys;
use crate::wire;

/// The largest body a guest may answer with (the host's limit).
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Which hook a [`Session`] serves: it decides what the session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `request_filter`: may change the request and write a response.
    RequestFilter,
    /// `logging`: sees the response sent and how the request ended.
    Logging,
    /// Any other hook.
    Other,
}

/// The downstream session being proxied (Pingora's `Session`).
///
/// The request arrives as JSON, or is fetched from the host, and is
/// decoded on first use, so a hook that never looks at it does not pay for
/// it; [`get_header`](Self::get_header) reads a single header without
/// decoding it at all.
///
/// In `request_filter` the session can change the request
/// ([`req_header_mut`](Self::req_header_mut)) and answer it
/// ([`respond_error`](Self::respond_error),
/// [`write_response_header`](Self::write_response_header), ...). In
/// `logging` it tells what was sent ([`response_written`](Self::response_written))
/// and how long it took ([`elapsed`](Self::elapsed)).
#[derive(Debug)]
pub struct Session {
    request: RequestHeader,
    phase: Phase,
    answer: Option<Answer>,
    logged: Logged,
}

/// The response written in `request_filter`.
#[derive(Debug)]
struct Answer {
    header: Box<ResponseHeader>,
    body: Vec<u8>,
    ended: bool,
}

/// What `logging` is told besides the request: the response sent and the
/// duration, each from the input or, if absent there, from the host.
#[derive(Debug, Default)]
struct Logged {
    response_raw: Option<Box<RawValue>>,
    response: OnceCell<Option<ResponseHeader>>,
    duration_us: OnceCell<u64>,
}

impl Session {
    /// A session for an already decoded request.
    pub fn new(request: wire::Request) -> Self {
        Session {
            request: RequestHeader::from_request(request),
            phase: Phase::Other,
            answer: None,
            logged: Logged::default(),
        }
    }

    /// A session for hook `phase` over the request's JSON, decoded when
    /// first read; without it, fetched from the host when first read.
    pub(crate) fn from_json(raw: Option<Box<RawValue>>, phase: Phase) -> Self {
        Session {
            request: RequestHeader::from_json(raw, wire::PART_REQUEST),
            phase,
            answer: None,
            logged: Logged::default(),
        }
    }

    /// A `logging` session: the response sent (JSON, or fetched from the
    /// host if None) and the duration (fetched from the host if None).
    pub(crate) fn for_logging(
        raw: Option<Box<RawValue>>,
        response: Option<Box<RawValue>>,
        duration_us: Option<u64>,
    ) -> Self {
        let mut session = Session::from_json(raw, Phase::Logging);
        session.logged.response_raw = response;
        if let Some(duration_us) = duration_us {
            let _ = session.logged.duration_us.set(duration_us);
        }
        session
    }

    /// The downstream request's header (Pingora's `session.req_header()`).
    pub fn req_header(&self) -> &RequestHeader {
        &self.request
    }

    /// The downstream request's header, to change it. Only changes made in
    /// `request_filter` are sent to the host, which applies them before
    /// `upstream_peer` and the later hooks see the request (and before it
    /// goes upstream); in other hooks they are local to the call.
    pub fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.request
    }

    /// The first value of request header `name` (ASCII case-insensitive).
    ///
    /// The cheap way to read a header or two: unless the request has been
    /// decoded already (or its header `name` changed in this call), this
    /// asks the host for that header alone.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.request.get_header(name)
    }

    /// The client's address, e.g. `127.0.0.1:51234`, when known. (Pingora
    /// returns a socket address; here it is its text.)
    pub fn client_addr(&self) -> Option<&str> {
        self.request.client_addr()
    }

    /// A one-line summary of the request for logs, as Pingora writes it:
    /// `GET /path?query, Host: example.com`.
    pub fn request_summary(&self) -> String {
        let request: &crate::http::RequestParts = &self.request;
        format!(
            "{} {}, Host: {}",
            request.method,
            request.uri,
            first_header(request.headers.as_slice(), "host").unwrap_or_default()
        )
    }

    /// Answers the request with status `status` and an empty body, like
    /// Pingora's error page (with `Cache-Control: private, no-store`; the
    /// host sets `Content-Length`). `request_filter` then returns
    /// `Ok(true)`. Does nothing if a response was already written.
    ///
    /// An error outside `request_filter`, or if `status` is not 200-599.
    pub fn respond_error(&mut self, status: u16) -> Result<()> {
        self.respond_error_with_body(status, Bytes::new())
    }

    /// [`respond_error`](Self::respond_error) with a body, which must be
    /// UTF-8 (the wire carries text) and at most [`MAX_RESPONSE_BODY`]
    /// bytes.
    pub fn respond_error_with_body(&mut self, status: u16, body: impl Into<Bytes>) -> Result<()> {
        self.check_writable()?;
        if self.answer.is_some() {
            return Ok(());
        }
        let body = body.into();
        let mut response = ResponseHeader::build(status, Some(1))?;
        response.insert_header("Cache-Control", "private, no-store")?;
        let empty = body.is_empty();
        self.write_response_header(Box::new(response), empty)?;
        if !empty {
            self.write_response_body(Some(body), true)?;
        }
        Ok(())
    }

    /// Answers the request with `resp` (build it with
    /// [`ResponseHeader::build`]); the body follows with
    /// [`write_response_body`](Self::write_response_body) unless
    /// `end_of_stream`. The host sets `Content-Length` from the body.
    ///
    /// Only in `request_filter`, which then returns `Ok(true)`; a response
    /// written is sent whatever `request_filter` returns, unless it
    /// returns an error. An error if a response header was already
    /// written.
    pub fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        end_of_stream: bool,
    ) -> Result<()> {
        self.check_writable()?;
        if self.answer.is_some() {
            return Error::e_explain(
                ErrorType::InternalError,
                "a response header was already written",
            );
        }
        self.answer = Some(Answer {
            header: resp,
            body: Vec::new(),
            ended: end_of_stream,
        });
        Ok(())
    }

    /// [`write_response_header`](Self::write_response_header) with a copy
    /// of `resp`.
    pub fn write_response_header_ref(
        &mut self,
        resp: &ResponseHeader,
        end_of_stream: bool,
    ) -> Result<()> {
        self.write_response_header(Box::new(resp.clone()), end_of_stream)
    }

    /// Adds `data` to the body of the response written with
    /// [`write_response_header`](Self::write_response_header);
    /// `end_of_stream` ends it. The whole body is sent when the hook
    /// returns (the host does not stream it), so it must be UTF-8 (the
    /// wire carries text; checked when the body ends) and at most
    /// [`MAX_RESPONSE_BODY`] bytes.
    ///
    /// Only in `request_filter`, after the header; an error too if `data`
    /// comes after the end.
    pub fn write_response_body(&mut self, data: Option<Bytes>, end_of_stream: bool) -> Result<()> {
        self.check_writable()?;
        let Some(answer) = &mut self.answer else {
            return Error::e_explain(
                ErrorType::InternalError,
                "response body written before its header",
            );
        };
        let data = data.unwrap_or_default();
        if answer.ended && !data.is_empty() {
            return Error::e_explain(
                ErrorType::InternalError,
                "response body written after its end",
            );
        }
        if answer.body.len() + data.len() > MAX_RESPONSE_BODY {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("response body over {MAX_RESPONSE_BODY} bytes"),
            );
        }
        answer.body.extend_from_slice(&data);
        if end_of_stream && !answer.ended {
            answer.ended = true;
            if std::str::from_utf8(&answer.body).is_err() {
                return Error::e_explain(ErrorType::InternalError, "response body is not UTF-8");
            }
        }
        Ok(())
    }

    /// The response sent downstream: in `logging`, the one the client got
    /// (None if none was sent); in `request_filter`, the one written so
    /// far; else None (Pingora's `response_written`, which is None before
    /// the response goes out).
    pub fn response_written(&self) -> Option<&ResponseHeader> {
        if let Some(answer) = &self.answer {
            return Some(&answer.header);
        }
        if self.phase != Phase::Logging {
            return None;
        }
        self.logged
            .response
            .get_or_init(|| match &self.logged.response_raw {
                Some(raw) => Some(ResponseHeader::from_json(
                    Some(raw.clone()),
                    wire::PART_RESPONSE,
                )),
                None => sys::read_part::<wire::Response>(wire::PART_RESPONSE)
                    .ok()
                    .flatten()
                    .map(ResponseHeader::new),
            })
            .as_ref()
    }

    /// In `logging`, the time from the request's arrival to its end (as
    /// the host measured it, to the microsecond); zero in other hooks. Not
    /// in Pingora, whose guests time requests themselves.
    pub fn elapsed(&self) -> Duration {
        if self.phase != Phase::Logging {
            return Duration::ZERO;
        }
        let micros = self.logged.duration_us.get_or_init(|| {
            sys::read_part::<u64>(wire::PART_DURATION_US)
                .ok()
                .flatten()
                .unwrap_or(0)
        });
        Duration::from_micros(*micros)
    }

    fn check_writable(&self) -> Result<()> {
        if self.phase == Phase::RequestFilter {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::InternalError,
                "a response can only be written in request_filter",
            )
        }
    }

    /// The response written in `request_filter`, if any, as the host
    /// takes it; an error if its body is not UTF-8.
    pub(crate) fn take_response(&mut self) -> Option<Result<wire::LocalResponse>> {
        let answer = self.answer.take()?;
        let wire::Response { status, headers } = answer.header.to_wire();
        Some(match String::from_utf8(answer.body) {
            Ok(body) => Ok(wire::LocalResponse {
                status,
                headers,
                body,
            }),
            Err(_) => Error::e_explain(ErrorType::InternalError, "response body is not UTF-8"),
        })
    }

    /// The changes made to the downstream request.
    pub(crate) fn take_request_changes(&mut self) -> wire::RequestChanges {
        self.request.take_changes()
    }
}

impl wire::Request {
    /// The path part of the uri, e.g. `/a` for `/a?b=1`.
    pub fn path(&self) -> &str {
        let end = self.uri.find('?').unwrap_or(self.uri.len());
        &self.uri[..end]
    }

    /// The query part of the uri without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, query)| query)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake_host;

    fn request_filter_session() -> Session {
        let raw = RawValue::from_string(
            r#"{"method":"GET","uri":"/a?b=1","headers":[["host","example.com"]],"client_addr":"10.0.0.1:5"}"#
                .into(),
        )
        .unwrap();
        Session::from_json(Some(raw), Phase::RequestFilter)
    }

    #[test]
    fn reads_the_request() {
        let session = request_filter_session();
        assert_eq!(session.get_header("HOST"), Some("example.com"));
        assert_eq!(session.client_addr(), Some("10.0.0.1:5"));
        assert_eq!(session.req_header().uri.query(), Some("b=1"));
        assert_eq!(session.request_summary(), "GET /a?b=1, Host: example.com");
    }

    #[test]
    fn respond_error_writes_an_empty_error_page_once() {
        let mut session = request_filter_session();
        session.respond_error(403).unwrap();
        assert_eq!(session.response_written().unwrap().status.as_u16(), 403);
        session.respond_error(500).unwrap();
        let response = session.take_response().unwrap().unwrap();
        assert_eq!(response.status, 403);
        assert_eq!(response.body, "");
        assert_eq!(
            response.headers,
            [("Cache-Control".to_string(), "private, no-store".to_string())]
        );
        assert!(session.respond_error(99).is_err());
    }

    #[test]
    fn a_response_is_a_header_then_a_body() {
        let mut session = request_filter_session();
        assert!(session
            .write_response_body(Some(Bytes::from_static(b"x")), true)
            .is_err());
        let mut header = ResponseHeader::build(401, None).unwrap();
        header.insert_header("WWW-Authenticate", "Basic").unwrap();
        session
            .write_response_header(Box::new(header), false)
            .unwrap();
        assert!(session
            .write_response_header(Box::new(ResponseHeader::build(200, None).unwrap()), true)
            .is_err());
        session
            .write_response_body(Some(Bytes::from_static(b"no ")), false)
            .unwrap();
        session
            .write_response_body(Some("entry\n".into()), true)
            .unwrap();
        assert!(session
            .write_response_body(Some(Bytes::from_static(b"more")), true)
            .is_err());
        session.write_response_body(None, true).unwrap();
        let response = session.take_response().unwrap().unwrap();
        assert_eq!(response.status, 401);
        assert_eq!(response.body, "no entry\n");
    }

    #[test]
    fn bodies_must_be_utf8_and_not_too_big() {
        let mut session = request_filter_session();
        session
            .write_response_header(Box::new(ResponseHeader::build(200, None).unwrap()), false)
            .unwrap();
        assert!(session
            .write_response_body(Some(vec![0u8; MAX_RESPONSE_BODY + 1].into()), false)
            .is_err());
        assert!(session
            .write_response_body(Some(Bytes::from_static(b"\xff")), true)
            .is_err());
        assert!(session.take_response().unwrap().is_err());
    }

    #[test]
    fn only_request_filter_writes_responses() {
        for phase in [Phase::Other, Phase::Logging] {
            let mut session = Session::from_json(None, phase);
            assert!(session.respond_error(403).is_err());
            assert!(session
                .write_response_header(Box::new(ResponseHeader::build(200, None).unwrap()), true)
                .is_err());
            assert!(session.take_response().is_none());
        }
    }

    #[test]
    fn logging_sees_the_response_and_the_duration() {
        fake_host::clear();
        fake_host::set_part(wire::PART_RESPONSE, r#"{"status":502,"headers":[]}"#);
        fake_host::set_part(wire::PART_DURATION_US, "1234");
        let session = Session::for_logging(None, None, None);
        assert_eq!(session.response_written().unwrap().status.as_u16(), 502);
        assert_eq!(session.elapsed(), Duration::from_micros(1234));
        // Other hooks see neither.
        let session = Session::from_json(None, Phase::Other);
        assert!(session.response_written().is_none());
        assert_eq!(session.elapsed(), Duration::ZERO);
        fake_host::clear();
        let session = Session::for_logging(None, None, Some(7));
        assert!(session.response_written().is_none());
        assert_eq!(session.elapsed(), Duration::from_micros(7));
    }
}
