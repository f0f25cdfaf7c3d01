//! What a hook call shows the guest: the downstream request, and per hook
//! the upstream request, the response, how the request ended, and the
//! ctx; each encoded straight from Pingora's types and only when needed (a
//! lazy-input guest that never asks for a part costs no encoding at all).

use std::sync::OnceLock;
use std::time::Duration;

use guest_sdk::wire;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::l4::socket::SocketAddr;

use super::instance::InputParts;
use super::request::{RequestJson, UpstreamRequestJson};
use super::response::response_json;

/// The downstream request as the hooks see it. Its JSON is encoded at most
/// once per request, into a cell the request's ctx keeps for every hook
/// (and empties when `request_filter` changes the request).
pub struct DownstreamRequest<'a> {
    header: &'a RequestHeader,
    client_addr: Option<&'a SocketAddr>,
    json: &'a OnceLock<String>,
}

impl<'a> DownstreamRequest<'a> {
    /// The request `header` from `client_addr`; `json` caches its encoding.
    pub fn new(
        header: &'a RequestHeader,
        client_addr: Option<&'a SocketAddr>,
        json: &'a OnceLock<String>,
    ) -> Self {
        DownstreamRequest {
            header,
            client_addr,
            json,
        }
    }

    /// The request's JSON (`REQ`), encoded on first use.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            RequestJson {
                header: self.header,
                client_addr: self.client_addr,
            }
            .to_json()
        })
    }
}

/// How a request ended, as `logging` is shown it.
pub struct RequestEnd<'a> {
    /// Why it failed, if it did.
    pub error: Option<&'a pingora::Error>,
    /// From its arrival to now.
    pub duration: Duration,
}

/// The parts one hook call can show: the downstream request, the upstream
/// request (`upstream_request_filter`), the response (`response_filter`,
/// `logging`), the outcome (`logging`) and the ctx. Each is encoded at
/// most once per call, and only if the guest is given or asks for it.
pub(super) struct HookInput<'a> {
    request: &'a DownstreamRequest<'a>,
    upstream: Option<&'a RequestHeader>,
    upstream_json: OnceLock<String>,
    response: Option<&'a ResponseHeader>,
    response_json: OnceLock<String>,
    outcome: Option<RequestEnd<'a>>,
    error_json: OnceLock<Option<String>>,
    duration_json: OnceLock<String>,
    ctx: &'a str,
}

impl<'a> HookInput<'a> {
    /// The input of a hook that sees the downstream request and the ctx.
    pub(super) fn new(request: &'a DownstreamRequest<'a>, ctx: &'a str) -> Self {
        HookInput {
            request,
            upstream: None,
            upstream_json: OnceLock::new(),
            response: None,
            response_json: OnceLock::new(),
            outcome: None,
            error_json: OnceLock::new(),
            duration_json: OnceLock::new(),
            ctx,
        }
    }

    /// Shows the upstream request too.
    pub(super) fn with_upstream(mut self, upstream: &'a RequestHeader) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Shows a response too (none: the request ended without one).
    pub(super) fn with_response(mut self, response: Option<&'a ResponseHeader>) -> Self {
        self.response = response;
        self
    }

    /// Shows how the request ended too.
    pub(super) fn with_outcome(mut self, outcome: RequestEnd<'a>) -> Self {
        self.outcome = Some(outcome);
        self
    }

    pub(super) fn ctx_json(&self) -> &str {
        self.ctx
    }

    /// The whole input JSON, in pieces to be written one after another.
    pub(super) fn whole_json(&self) -> Vec<&[u8]> {
        let mut pieces: Vec<&[u8]> = vec![br#"{"request":"#, self.request_json().as_bytes()];
        let fields: [(&[u8], Option<&str>); 4] = [
            (br#","upstream_request":"#, self.upstream_json()),
            (br#","response":"#, self.response_json()),
            (br#","error":"#, self.error_json()),
            (br#","duration_us":"#, self.duration_json()),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                pieces.extend([key, value.as_bytes()]);
            }
        }
        pieces.extend([br#","ctx":"#.as_slice(), self.ctx.as_bytes(), b"}"]);
        pieces
    }

    pub(super) fn request_json(&self) -> &str {
        self.request.json()
    }

    /// The upstream request's JSON (`HDR`), if this call has one.
    pub(super) fn upstream_json(&self) -> Option<&str> {
        let upstream = self.upstream?;
        Some(
            self.upstream_json
                .get_or_init(|| UpstreamRequestJson(upstream).to_json()),
        )
    }

    /// The response's JSON (`RESP`), if this call has one.
    fn response_json(&self) -> Option<&str> {
        let response = self.response?;
        Some(self.response_json.get_or_init(|| response_json(response)))
    }

    /// The failure's JSON (`ERR`), if the request failed.
    fn error_json(&self) -> Option<&str> {
        let outcome = self.outcome.as_ref()?;
        self.error_json
            .get_or_init(|| {
                outcome.error.map(|error| {
                    let logged = wire::LoggedError {
                        kind: error.etype().as_str().to_string(),
                        text: error.to_string(),
                    };
                    serde_json::to_string(&logged).unwrap_or_default()
                })
            })
            .as_deref()
    }

    /// The request's duration in microseconds, if this call has one.
    fn duration_json(&self) -> Option<&str> {
        let outcome = self.outcome.as_ref()?;
        Some(
            self.duration_json
                .get_or_init(|| outcome.duration.as_micros().to_string()),
        )
    }
}

impl InputParts for HookInput<'_> {
    fn part(&self, part: i32) -> Option<&str> {
        match part {
            wire::PART_REQUEST => Some(self.request_json()),
            wire::PART_UPSTREAM_REQUEST => self.upstream_json(),
            wire::PART_CTX => Some(self.ctx),
            wire::PART_RESPONSE => self.response_json(),
            wire::PART_ERROR => self.error_json(),
            wire::PART_DURATION_US => self.duration_json(),
            _ => None,
        }
    }

    fn header(&self, part: i32, name: &str) -> Option<&[u8]> {
        let headers = match part {
            wire::PART_REQUEST => &self.request.header.headers,
            wire::PART_UPSTREAM_REQUEST => &self.upstream?.headers,
            wire::PART_RESPONSE => &self.response?.headers,
            _ => return None,
        };
        headers.get(name).map(|value| value.as_bytes())
    }
}
