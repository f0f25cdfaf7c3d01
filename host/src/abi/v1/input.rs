//! What a hook call shows the guest: the downstream request, in
//! `upstream_request_filter` the upstream request (both encoded straight
//! from Pingora's headers, and only when needed: a lazy-input guest that
//! never asks for a part costs no encoding at all), and the ctx.

use std::sync::OnceLock;

use guest_sdk::wire;
use pingora::http::RequestHeader;
use pingora::protocols::l4::socket::SocketAddr;

use super::instance::InputParts;
use super::request::{RequestJson, UpstreamRequestJson};

/// The downstream request as the hooks see it. Its JSON is encoded at most
/// once per request, into a cell the request's ctx keeps for both hooks.
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

/// The parts one hook call can show: the downstream request, the upstream
/// request in the filter (encoded at most once per call), and the ctx.
pub(super) struct HookInput<'a> {
    request: &'a DownstreamRequest<'a>,
    upstream: Option<&'a RequestHeader>,
    upstream_json: OnceLock<String>,
    ctx: &'a str,
}

impl<'a> HookInput<'a> {
    pub(super) fn new(
        request: &'a DownstreamRequest<'a>,
        upstream: Option<&'a RequestHeader>,
        ctx: &'a str,
    ) -> Self {
        HookInput {
            request,
            upstream,
            upstream_json: OnceLock::new(),
            ctx,
        }
    }

    pub(super) fn ctx_json(&self) -> &str {
        self.ctx
    }

    /// The whole input JSON, in pieces to be written one after another.
    pub(super) fn whole_json(&self) -> Vec<&[u8]> {
        let mut pieces: Vec<&[u8]> = vec![br#"{"request":"#, self.request_json().as_bytes()];
        if let Some(upstream) = self.upstream_json() {
            pieces.extend([br#","upstream_request":"#.as_slice(), upstream.as_bytes()]);
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
}

impl InputParts for HookInput<'_> {
    fn part(&self, part: i32) -> Option<&str> {
        match part {
            wire::PART_REQUEST => Some(self.request_json()),
            wire::PART_UPSTREAM_REQUEST => self.upstream_json(),
            wire::PART_CTX => Some(self.ctx),
            _ => None,
        }
    }
}
