//! [`RequestHeader`]: a request header (the downstream request, or the
//! request the upstream will receive), and the changes a hook makes to it.

use std::ops::Deref;

use serde_json::value::RawValue;

use super::headers::{apply_op, checked_header, is_header_name, is_token_byte, LazyPart};
use crate::error::{Error, ErrorType, Result};
use crate::http::{Method, RequestParts, Uri};
use crate::wire;

/// A request header (Pingora's `RequestHeader`): the downstream request
/// ([`Session::req_header`](super::Session::req_header)) or the request
/// the upstream will receive (`upstream_request_filter`).
///
/// It dereferences to [`RequestParts`], so Pingora's `req.uri.path()`,
/// `req.method` and `req.headers.get(name)` read as they do there.
/// Changes go through the methods ([`insert_header`](Self::insert_header),
/// [`set_uri`](Self::set_uri), ...), which check them and record them as
/// operations; only those are sent back to the host. The request itself is
/// decoded only if the hook reads it, and [`get_header`](Self::get_header)
/// reads single headers without decoding it.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    part: LazyPart<RequestParts>,
    changes: wire::RequestChanges,
}

impl RequestHeader {
    /// Wraps an already decoded upstream request.
    pub fn new(request: wire::UpstreamRequest) -> Self {
        RequestHeader {
            part: LazyPart::decoded(RequestParts {
                method: Method::from_string(request.method),
                uri: Uri::from_string(request.uri),
                version: String::new(),
                headers: crate::http::HeaderMap {
                    entries: request.headers,
                },
                client_addr: None,
            }),
            changes: wire::RequestChanges::default(),
        }
    }

    /// Wraps an already decoded downstream request.
    pub(crate) fn from_request(request: wire::Request) -> Self {
        RequestHeader {
            part: LazyPart::decoded(RequestParts {
                method: Method::from_string(request.method),
                uri: Uri::from_string(request.uri),
                version: request.version,
                headers: crate::http::HeaderMap {
                    entries: request.headers,
                },
                client_addr: request.client_addr,
            }),
            changes: wire::RequestChanges::default(),
        }
    }

    /// Input part `part` over its JSON (or, without it, fetched from the
    /// host), decoded when first read.
    pub(crate) fn from_json(raw: Option<Box<RawValue>>, part: i32) -> Self {
        RequestHeader {
            part: LazyPart::new(raw, part),
            changes: wire::RequestChanges::default(),
        }
    }

    fn view(&self) -> &RequestParts {
        self.part
            .view(|request| apply_changes(request, &self.changes))
    }

    /// Records `op` and applies it to the decoded view, if there is one.
    fn record(&mut self, op: wire::HeaderOp) {
        if let Some(current) = self.part.current.get_mut() {
            apply_op(&mut current.headers.entries, &op);
        }
        self.changes.headers.push(op);
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.view().method.as_str()
    }

    /// The request target: path and query.
    pub fn uri(&self) -> &str {
        self.view().uri.as_str()
    }

    /// The path of the request target, e.g. `/a` for `/a?b=1`.
    pub fn path(&self) -> &str {
        self.view().uri.path()
    }

    /// The query of the request target without `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.view().uri.query()
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.view().headers.entries
    }

    /// The first value of header `name` (ASCII case-insensitive).
    ///
    /// Until the request is decoded, this asks the host for that one
    /// header (`hook.get_header`) rather than decoding the whole request,
    /// and remembers the answer.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.part.header(
            name,
            &self.changes.headers,
            |request| request.headers.get_str(name),
            |request| apply_changes(request, &self.changes),
        )
    }

    /// Same as [`get_header`](Self::get_header).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.get_header(name)
    }

    /// Sets the method.
    pub fn set_method(&mut self, method: &str) -> Result<()> {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("invalid method {method:?}"),
            );
        }
        if let Some(current) = self.part.current.get_mut() {
            current.method = Method::from_string(method.to_string());
        }
        self.changes.method = Some(method.to_string());
        Ok(())
    }

    /// Sets the request target (`/path?query`).
    pub fn set_uri(&mut self, uri: &str) -> Result<()> {
        if !uri.starts_with('/') || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Error::e_explain(ErrorType::InternalError, format!("invalid uri {uri:?}"));
        }
        if let Some(current) = self.part.current.get_mut() {
            current.uri = Uri::from_string(uri.to_string());
        }
        self.changes.uri = Some(uri.to_string());
        Ok(())
    }

    /// Replaces every field called `name` with one field `name: value`.
    pub fn insert_header(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<()> {
        let (name, value) = checked_header(name.into(), value.into())?;
        self.record(wire::HeaderOp::Insert(name, value));
        Ok(())
    }

    /// Adds a field `name: value`, keeping existing ones of that name.
    pub fn append_header(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<()> {
        let (name, value) = checked_header(name.into(), value.into())?;
        self.record(wire::HeaderOp::Append(name, value));
        Ok(())
    }

    /// Removes every field called `name`; returns the first removed value.
    /// A name that is not a valid header name matches nothing.
    pub fn remove_header(&mut self, name: &str) -> Option<String> {
        if !is_header_name(name) {
            return None;
        }
        let first = self.get_header(name).map(str::to_string);
        self.record(wire::HeaderOp::Remove(name.to_string()));
        first
    }

    /// The changes made so far, as they are sent to the host.
    pub fn changes(&self) -> &wire::RequestChanges {
        &self.changes
    }

    /// The downstream client's address, if this is the downstream request
    /// and the host knows it.
    pub(crate) fn client_addr(&self) -> Option<&str> {
        self.view().client_addr.as_deref()
    }

    pub(crate) fn into_changes(self) -> wire::RequestChanges {
        self.changes
    }

    pub(crate) fn take_changes(&mut self) -> wire::RequestChanges {
        std::mem::take(&mut self.changes)
    }
}

impl Deref for RequestHeader {
    type Target = RequestParts;

    /// The request's fields, decoded on first use (with the changes made
    /// so far).
    fn deref(&self) -> &RequestParts {
        self.view()
    }
}

fn apply_changes(request: &mut RequestParts, changes: &wire::RequestChanges) {
    if let Some(method) = &changes.method {
        request.method = Method::from_string(method.clone());
    }
    if let Some(uri) = &changes.uri {
        request.uri = Uri::from_string(uri.clone());
    }
    for op in &changes.headers {
        apply_op(&mut request.headers.entries, op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake_host;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        RequestHeader::new(wire::UpstreamRequest {
            method: "GET".into(),
            uri: "/".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn insert_header_replaces_all_of_that_name_in_place() {
        let mut req = request(&[("host", "a"), ("x", "1"), ("Host", "b")]);
        req.insert_header("Host", "c").unwrap();
        assert_eq!(
            req.headers(),
            &[
                ("Host".to_string(), "c".to_string()),
                ("x".into(), "1".into())
            ]
        );
    }

    #[test]
    fn invalid_headers_are_refused() {
        let mut req = request(&[]);
        assert!(req.insert_header("bad name", "v").is_err());
        assert!(req.append_header("x", "a\r\nb").is_err());
        assert!(req.set_uri("no-slash").is_err());
        assert!(req.set_method("GE T").is_err());
        assert_eq!(req.remove_header("bad name"), None);
        assert!(req.headers().is_empty());
        assert!(req.changes().is_empty());
    }

    #[test]
    fn changes_are_recorded_without_decoding_and_seen_when_read() {
        let raw = RawValue::from_string(
            r#"{"method":"GET","uri":"/","headers":[["host","a"],["x-old","1"]]}"#.into(),
        )
        .unwrap();
        let mut req = RequestHeader::from_json(Some(raw), wire::PART_UPSTREAM_REQUEST);
        req.insert_header("Host", "b").unwrap();
        assert!(req.part.current.get().is_none(), "nothing read yet");
        assert_eq!(req.get_header("host"), Some("b"));
        assert_eq!(req.remove_header("x-old").as_deref(), Some("1"));
        req.append_header("x-new", "2").unwrap();
        assert_eq!(
            req.headers(),
            &[("Host".into(), "b".into()), ("x-new".into(), "2".into())]
        );
        assert_eq!(req.changes().headers.len(), 3);
    }

    #[test]
    fn deref_reads_like_pingora() {
        let mut req = request(&[("Authorization", "password")]);
        req.set_uri("/login?next=/").unwrap();
        assert_eq!(req.uri.path(), "/login");
        assert_eq!(req.method, Method::GET);
        assert_eq!(
            req.headers.get("authorization").map(|v| v.as_bytes()),
            Some(b"password".as_slice())
        );
    }

    #[test]
    fn lazy_headers_are_fetched_one_by_one_until_decoded() {
        fake_host::clear();
        fake_host::set_part(
            wire::PART_REQUEST,
            r#"{"method":"GET","uri":"/a","headers":[["X-Key","k"],["host","h"]]}"#,
        );
        let mut req = RequestHeader::from_json(None, wire::PART_REQUEST);
        assert_eq!(req.get_header("x-key"), Some("k"));
        assert_eq!(req.get_header("X-KEY"), Some("k"));
        assert_eq!(req.get_header("missing"), None);
        assert_eq!(fake_host::header_calls(), 2, "remembered");
        assert!(req.part.current.get().is_none(), "not decoded");

        // A change to another header leaves the cheap path open; a change
        // to this one decodes the request to apply it.
        req.insert_header("x-other", "1").unwrap();
        assert_eq!(req.get_header("host"), Some("h"));
        assert_eq!(fake_host::header_calls(), 3);
        req.insert_header("X-Key", "new").unwrap();
        assert_eq!(req.get_header("x-key"), Some("new"));
        assert!(req.part.current.get().is_some());
        assert_eq!(req.uri.path(), "/a");
        assert_eq!(req.get_header("x-other"), Some("1"));
        fake_host::clear();
    }
}
