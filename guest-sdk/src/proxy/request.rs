//! [`RequestHeader`]: the request the upstream will receive, and the
//! changes a hook makes to it.

use std::cell::OnceCell;

use serde_json::value::RawValue;

use super::{decode_part, first_header};
use crate::error::{Error, ErrorType, Result};
use crate::wire;

/// The request the upstream will receive (Pingora's `RequestHeader`).
///
/// Changes are recorded as operations and sent back as such; the request
/// itself is decoded only if the hook reads it.
#[derive(Debug)]
pub struct RequestHeader {
    raw: Option<Box<RawValue>>,
    /// The request with `changes` applied, built on first read.
    current: OnceCell<wire::UpstreamRequest>,
    changes: wire::RequestChanges,
}

impl RequestHeader {
    /// Wraps an already decoded upstream request.
    pub fn new(request: wire::UpstreamRequest) -> Self {
        RequestHeader {
            raw: None,
            current: OnceCell::from(request),
            changes: wire::RequestChanges::default(),
        }
    }

    /// A request over its JSON (or, without it, fetched from the host),
    /// decoded when first read.
    pub(crate) fn from_json(raw: Option<Box<RawValue>>) -> Self {
        RequestHeader {
            raw,
            current: OnceCell::new(),
            changes: wire::RequestChanges::default(),
        }
    }

    fn view(&self) -> &wire::UpstreamRequest {
        self.current.get_or_init(|| {
            let mut request: wire::UpstreamRequest =
                decode_part(self.raw.as_deref(), wire::PART_UPSTREAM_REQUEST);
            apply_changes(&mut request, &self.changes);
            request
        })
    }

    /// Records `op` and applies it to the decoded view, if there is one.
    fn record(&mut self, op: wire::HeaderOp) {
        if let Some(current) = self.current.get_mut() {
            apply_op(current, &op);
        }
        self.changes.headers.push(op);
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.view().method
    }

    /// The request target: path and query.
    pub fn uri(&self) -> &str {
        &self.view().uri
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.view().headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get_header(&self, name: &str) -> Option<&str> {
        first_header(&self.view().headers, name)
    }

    /// Sets the method.
    pub fn set_method(&mut self, method: &str) -> Result<()> {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("invalid method {method:?}"),
            );
        }
        if let Some(current) = self.current.get_mut() {
            current.method = method.to_string();
        }
        self.changes.method = Some(method.to_string());
        Ok(())
    }

    /// Sets the request target (`/path?query`).
    pub fn set_uri(&mut self, uri: &str) -> Result<()> {
        if !uri.starts_with('/') || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Error::e_explain(ErrorType::InternalError, format!("invalid uri {uri:?}"));
        }
        if let Some(current) = self.current.get_mut() {
            current.uri = uri.to_string();
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
    pub fn remove_header(&mut self, name: &str) -> Option<String> {
        let first = self.get_header(name).map(str::to_string);
        self.record(wire::HeaderOp::Remove(name.to_string()));
        first
    }

    /// The changes made so far, as they are sent to the host.
    pub fn changes(&self) -> &wire::RequestChanges {
        &self.changes
    }

    pub(crate) fn into_changes(self) -> wire::RequestChanges {
        self.changes
    }
}

fn apply_changes(request: &mut wire::UpstreamRequest, changes: &wire::RequestChanges) {
    if let Some(method) = &changes.method {
        request.method = method.clone();
    }
    if let Some(uri) = &changes.uri {
        request.uri = uri.clone();
    }
    for op in &changes.headers {
        apply_op(request, op);
    }
}

fn apply_op(request: &mut wire::UpstreamRequest, op: &wire::HeaderOp) {
    let headers = &mut request.headers;
    match op {
        wire::HeaderOp::Insert(name, value) => {
            match headers
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                Some(first) => {
                    headers[first] = (name.clone(), value.clone());
                    let mut index = 0;
                    headers.retain(|(n, _)| {
                        index += 1;
                        index - 1 <= first || !n.eq_ignore_ascii_case(name)
                    });
                }
                None => headers.push((name.clone(), value.clone())),
            }
        }
        wire::HeaderOp::Append(name, value) => headers.push((name.clone(), value.clone())),
        wire::HeaderOp::Remove(name) => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
    }
}

/// RFC 9110 `tchar`s: the bytes of a method or a header name.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[b as usize]
}

fn checked_header(name: String, value: String) -> Result<(String, String)> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Error::e_explain(
            ErrorType::InternalError,
            format!("invalid header name {name:?}"),
        );
    }
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Error::e_explain(
            ErrorType::InternalError,
            format!("invalid value for header {name}"),
        );
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bytes_are_rfc_9110_tchars() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_byte(b), tchar, "byte {b:#x}");
        }
    }

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
        assert!(req.headers().is_empty());
    }

    #[test]
    fn changes_are_recorded_without_decoding_and_seen_when_read() {
        let raw = RawValue::from_string(
            r#"{"method":"GET","uri":"/","headers":[["host","a"],["x-old","1"]]}"#.into(),
        )
        .unwrap();
        let mut req = RequestHeader::from_json(Some(raw));
        req.insert_header("Host", "b").unwrap();
        assert!(req.current.get().is_none(), "nothing read yet");
        assert_eq!(req.get_header("host"), Some("b"));
        assert_eq!(req.remove_header("x-old").as_deref(), Some("1"));
        req.append_header("x-new", "2").unwrap();
        assert_eq!(
            req.headers(),
            &[("Host".into(), "b".into()), ("x-new".into(), "2".into())]
        );
        assert_eq!(req.changes().headers.len(), 3);
    }
}
