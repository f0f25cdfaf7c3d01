//! [`ResponseHeader`]: a response header, the upstream's (as
//! `response_filter` changes it and `logging` sees it) or one a guest
//! builds to answer a request itself in `request_filter`.

use std::ops::Deref;

use serde_json::value::RawValue;

use super::headers::{apply_op, checked_header, is_header_name, LazyPart};
use crate::error::{Error, ErrorType, Result};
use crate::http::{HeaderMap, ResponseParts, StatusCode};
use crate::wire;

/// A response header (Pingora's `ResponseHeader`).
///
/// It dereferences to [`ResponseParts`], so Pingora's
/// `resp.status.as_u16()` and `resp.headers.get(name)` read as they do
/// there. Changes go through the methods ([`insert_header`](Self::insert_header),
/// [`set_status`](Self::set_status), ...), which check them (a status must
/// be 200-599, names tokens, values free of control characters) and record
/// them; in `response_filter` only those operations are sent back to the
/// host. The upstream's response is decoded only if the hook reads it, and
/// [`get_header`](Self::get_header) reads single headers without decoding
/// it.
#[derive(Debug, Clone)]
pub struct ResponseHeader {
    part: LazyPart<ResponseParts>,
    changes: wire::ResponseChanges,
}

impl ResponseHeader {
    /// A new response with status `status` and no headers, to answer a
    /// request with in `request_filter`
    /// ([`Session::write_response_header`](super::Session::write_response_header)).
    /// `size_hint` (the number of headers to expect) is Pingora's and is
    /// not needed here. An error if `status` is not 200-599.
    pub fn build(status: impl IntoStatus, size_hint: Option<usize>) -> Result<Self> {
        let status = checked_status(status.into_status())?;
        let mut headers = HeaderMap::default();
        headers.entries.reserve(size_hint.unwrap_or(0).min(64));
        Ok(ResponseHeader {
            part: LazyPart::decoded(ResponseParts {
                status: StatusCode::from_u16(status),
                headers,
            }),
            changes: wire::ResponseChanges::default(),
        })
    }

    /// Wraps an already decoded response.
    pub fn new(response: wire::Response) -> Self {
        ResponseHeader {
            part: LazyPart::decoded(ResponseParts {
                status: StatusCode::from_u16(response.status),
                headers: HeaderMap {
                    entries: response.headers,
                },
            }),
            changes: wire::ResponseChanges::default(),
        }
    }

    /// Input part `part` over its JSON (or, without it, fetched from the
    /// host), decoded when first read.
    pub(crate) fn from_json(raw: Option<Box<RawValue>>, part: i32) -> Self {
        ResponseHeader {
            part: LazyPart::new(raw, part),
            changes: wire::ResponseChanges::default(),
        }
    }

    fn view(&self) -> &ResponseParts {
        self.part
            .view(|response| apply_changes(response, &self.changes))
    }

    fn record(&mut self, op: wire::HeaderOp) {
        if let Some(current) = self.part.current.get_mut() {
            apply_op(&mut current.headers.entries, &op);
        }
        self.changes.headers.push(op);
    }

    /// The status code as a number.
    pub fn status_code(&self) -> u16 {
        self.view().status.as_u16()
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.view().headers.entries
    }

    /// The first value of header `name` (ASCII case-insensitive).
    ///
    /// Until the response is decoded, this asks the host for that one
    /// header (`hook.get_header`) rather than decoding the whole response,
    /// and remembers the answer.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.part.header(
            name,
            &self.changes.headers,
            |response| response.headers.get_str(name),
            |response| apply_changes(response, &self.changes),
        )
    }

    /// Sets the status; an error if it is not 200-599.
    pub fn set_status(&mut self, status: impl IntoStatus) -> Result<()> {
        let status = checked_status(status.into_status())?;
        if let Some(current) = self.part.current.get_mut() {
            current.status = StatusCode::from_u16(status);
        }
        self.changes.status = Some(status);
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

    /// The changes made so far, as `response_filter` sends them.
    pub fn changes(&self) -> &wire::ResponseChanges {
        &self.changes
    }

    pub(crate) fn into_changes(self) -> wire::ResponseChanges {
        self.changes
    }

    /// The response as a whole: its status and headers.
    pub(crate) fn to_wire(&self) -> wire::Response {
        let view = self.view();
        wire::Response {
            status: view.status.as_u16(),
            headers: view.headers.entries.clone(),
        }
    }
}

impl Deref for ResponseHeader {
    type Target = ResponseParts;

    /// The response's fields, decoded on first use (with the changes made
    /// so far).
    fn deref(&self) -> &ResponseParts {
        self.view()
    }
}

/// What [`ResponseHeader::build`] and [`ResponseHeader::set_status`] take:
/// a `u16` or a [`StatusCode`].
pub trait IntoStatus {
    /// The status as a number.
    fn into_status(self) -> u16;
}

impl IntoStatus for u16 {
    fn into_status(self) -> u16 {
        self
    }
}

impl IntoStatus for StatusCode {
    fn into_status(self) -> u16 {
        self.as_u16()
    }
}

/// `status` if the host accepts it for a response a guest gives or
/// changes: 200-599 (an informational status is not a final answer).
fn checked_status(status: u16) -> Result<u16> {
    if (200..=599).contains(&status) {
        Ok(status)
    } else {
        Error::e_explain(
            ErrorType::InternalError,
            format!("invalid response status {status}: not 200-599"),
        )
    }
}

fn apply_changes(response: &mut ResponseParts, changes: &wire::ResponseChanges) {
    if let Some(status) = changes.status {
        response.status = StatusCode::from_u16(status);
    }
    for op in &changes.headers {
        apply_op(&mut response.headers.entries, op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake_host;

    #[test]
    fn build_checks_and_records_nothing() {
        assert!(ResponseHeader::build(99, None).is_err());
        assert!(ResponseHeader::build(700, None).is_err());
        let mut resp = ResponseHeader::build(200, Some(2)).unwrap();
        resp.insert_header("Server", "MyGateway").unwrap();
        resp.append_header("x", "1").unwrap();
        assert!(resp.insert_header("bad name", "v").is_err());
        assert!(resp.insert_header("x", "a\r\n").is_err());
        assert!(resp.set_status(100).is_err());
        resp.set_status(StatusCode::from_u16(201)).unwrap();
        assert_eq!(resp.status.as_u16(), 201);
        assert_eq!(resp.headers.get("server").unwrap(), "MyGateway");
        assert_eq!(
            resp.to_wire(),
            wire::Response {
                status: 201,
                headers: vec![
                    ("Server".into(), "MyGateway".into()),
                    ("x".into(), "1".into())
                ],
            }
        );
    }

    #[test]
    fn upstream_response_changes_are_ops_and_read_back() {
        fake_host::clear();
        fake_host::set_part(
            wire::PART_RESPONSE,
            r#"{"status":200,"headers":[["Server","origin"],["alt-svc","h3"]]}"#,
        );
        let mut resp = ResponseHeader::from_json(None, wire::PART_RESPONSE);
        resp.insert_header("Server", "MyGateway").unwrap();
        assert_eq!(resp.remove_header("alt-svc").as_deref(), Some("h3"));
        assert!(resp.part.current.get().is_none(), "read one header only");
        resp.set_status(203).unwrap();
        assert_eq!(
            resp.changes(),
            &wire::ResponseChanges {
                status: Some(203),
                headers: vec![
                    wire::HeaderOp::Insert("Server".into(), "MyGateway".into()),
                    wire::HeaderOp::Remove("alt-svc".into()),
                ],
            }
        );
        assert_eq!(resp.status.as_u16(), 203);
        assert_eq!(resp.headers(), &[("Server".into(), "MyGateway".into())]);
        fake_host::clear();
    }
}
