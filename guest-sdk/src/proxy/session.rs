//! [`Session`]: the downstream request, read-only.

use std::cell::OnceCell;

use serde_json::value::RawValue;

use super::{decode_part, first_header};
use crate::wire;

/// The downstream request being proxied (Pingora's `Session`, read-only).
///
/// The request arrives as JSON and is decoded on first use, so a hook that
/// never looks at it does not pay for decoding it.
#[derive(Debug)]
pub struct Session {
    raw: Option<Box<RawValue>>,
    request: OnceCell<wire::Request>,
}

impl Session {
    /// A session for an already decoded request.
    pub fn new(request: wire::Request) -> Self {
        Session {
            raw: None,
            request: OnceCell::from(request),
        }
    }

    /// A session over the request's JSON, decoded when first read; without
    /// it, fetched from the host when first read.
    pub(crate) fn from_json(raw: Option<Box<RawValue>>) -> Self {
        Session {
            raw,
            request: OnceCell::new(),
        }
    }

    /// The downstream request's header (Pingora's `session.req_header()`).
    pub fn req_header(&self) -> &wire::Request {
        self.request.get_or_init(|| {
            // The host always sends a well-formed request.
            decode_part(self.raw.as_deref(), wire::PART_REQUEST)
        })
    }

    /// The client's address, e.g. `127.0.0.1:51234`, when known.
    pub fn client_addr(&self) -> Option<&str> {
        self.req_header().client_addr.as_deref()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.req_header().header(name)
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
