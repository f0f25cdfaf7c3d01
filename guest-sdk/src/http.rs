//! The value types of a request and a response header as Pingora code
//! reads them, shaped after the `http` crate's (which Pingora re-exports as
//! `pingora::http`): [`RequestParts`] and [`ResponseParts`] are what
//! [`RequestHeader`](crate::RequestHeader) and
//! [`ResponseHeader`](crate::ResponseHeader) dereference to, so that
//! `req.uri.path()`, `req.method`, `req.headers.get("host")` and
//! `resp.status.as_u16()` port unchanged.
//!
//! They are lighter than the `http` crate's: strings as the host sends
//! them (UTF-8, with U+FFFD in place of bytes that were not), header
//! names compared ASCII case-insensitively rather than normalised.
//! Read-only: changes go through the headers' methods (`insert_header`,
//! `set_uri`, ...), which record them for the host.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A request method (`http::Method`), e.g. [`Method::GET`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Method(Cow<'static, str>);

impl Method {
    /// `GET`.
    pub const GET: Method = Method(Cow::Borrowed("GET"));
    /// `HEAD`.
    pub const HEAD: Method = Method(Cow::Borrowed("HEAD"));
    /// `POST`.
    pub const POST: Method = Method(Cow::Borrowed("POST"));
    /// `PUT`.
    pub const PUT: Method = Method(Cow::Borrowed("PUT"));
    /// `DELETE`.
    pub const DELETE: Method = Method(Cow::Borrowed("DELETE"));
    /// `OPTIONS`.
    pub const OPTIONS: Method = Method(Cow::Borrowed("OPTIONS"));
    /// `PATCH`.
    pub const PATCH: Method = Method(Cow::Borrowed("PATCH"));
    /// `CONNECT`.
    pub const CONNECT: Method = Method(Cow::Borrowed("CONNECT"));
    /// `TRACE`.
    pub const TRACE: Method = Method(Cow::Borrowed("TRACE"));

    /// The method as text, e.g. `GET`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_string(method: String) -> Self {
        Method(Cow::Owned(method))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Method {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Method {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A request target (`http::Uri`) as received: normally origin form,
/// `/path?query`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uri(String);

impl Uri {
    /// The path, e.g. `/a` for `/a?b=1`.
    pub fn path(&self) -> &str {
        let end = self.0.find('?').unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The query without `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.0.split_once('?').map(|(_, query)| query)
    }

    /// The whole target as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_string(uri: String) -> Self {
        Uri(uri)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Uri {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Uri {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A response status (`http::StatusCode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

impl StatusCode {
    /// The code as a number, e.g. 200.
    pub fn as_u16(&self) -> u16 {
        self.0
    }

    /// 100-199.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.0)
    }

    /// 200-299.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.0)
    }

    /// 300-399.
    pub fn is_redirection(&self) -> bool {
        (300..400).contains(&self.0)
    }

    /// 400-499.
    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.0)
    }

    /// 500-599.
    pub fn is_server_error(&self) -> bool {
        (500..600).contains(&self.0)
    }

    pub(crate) fn from_u16(code: u16) -> Self {
        StatusCode(code)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl PartialEq<u16> for StatusCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl From<StatusCode> for u16 {
    fn from(status: StatusCode) -> u16 {
        status.0
    }
}

impl Serialize for StatusCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u16::deserialize(deserializer).map(StatusCode)
    }
}

/// A header value (`http::HeaderValue`), borrowed from its
/// [`HeaderMap`].
///
/// Unlike `http`'s, it is always UTF-8 (the host sends values that are
/// not with U+FFFD in place of the bad bytes), so [`to_str`](Self::to_str)
/// does not fail.
#[repr(transparent)]
pub struct HeaderValue(str);

impl HeaderValue {
    /// Views `value` as a header value.
    pub fn new(value: &str) -> &HeaderValue {
        // `HeaderValue` is `repr(transparent)` over `str`.
        // SAFETY: same layout and length metadata; `value`'s lifetime kept.
        unsafe { &*(value as *const str as *const HeaderValue) }
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The value as text; never fails here (see the type's docs), the
    /// `Result` is `http`'s signature.
    pub fn to_str(&self) -> Result<&str, ToStrError> {
        Ok(&self.0)
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &HeaderValue) -> bool {
        self.0 == other.0
    }
}

impl Eq for HeaderValue {}

impl PartialEq<str> for HeaderValue {
    fn eq(&self, other: &str) -> bool {
        &self.0 == other
    }
}

impl PartialEq<&str> for HeaderValue {
    fn eq(&self, other: &&str) -> bool {
        &self.0 == *other
    }
}

impl AsRef<str> for HeaderValue {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&HeaderValue> for String {
    fn from(value: &HeaderValue) -> String {
        value.0.to_string()
    }
}

/// The error of [`HeaderValue::to_str`] in `http`; never returned here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToStrError;

impl fmt::Display for ToStrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("header value is not visible ASCII")
    }
}

impl std::error::Error for ToStrError {}

/// Header fields in order (`http::HeaderMap`); names keep their case and
/// are looked up ASCII case-insensitively, repeated names stay repeated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HeaderMap {
    pub(crate) entries: Vec<(String, String)>,
}

impl HeaderMap {
    /// The first value of header `name`.
    pub fn get(&self, name: impl AsRef<str>) -> Option<&HeaderValue> {
        self.get_str(name.as_ref()).map(HeaderValue::new)
    }

    /// Every value of header `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| HeaderValue::new(v))
    }

    /// Whether there is a header `name`.
    pub fn contains_key(&self, name: impl AsRef<str>) -> bool {
        self.get_str(name.as_ref()).is_some()
    }

    /// Every field, in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.entries
            .iter()
            .map(|(n, v)| (n.as_str(), HeaderValue::new(v)))
    }

    /// How many fields there are (a repeated name counts each time).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The fields as `(name, value)` pairs, as the wire carries them.
    pub fn as_slice(&self) -> &[(String, String)] {
        &self.entries
    }

    pub(crate) fn get_str(&self, name: &str) -> Option<&str> {
        first_header(&self.entries, name)
    }
}

impl<'a> IntoIterator for &'a HeaderMap {
    type Item = (&'a str, &'a HeaderValue);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A request header's fields (`http::request::Parts`), what
/// [`RequestHeader`](crate::RequestHeader) dereferences to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RequestParts {
    /// The method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// The protocol version, e.g. `HTTP/1.1`; empty for the upstream
    /// request, whose version the host chooses.
    #[serde(default)]
    pub version: String,
    /// The header fields.
    #[serde(default)]
    pub headers: HeaderMap,
    /// The downstream client's address, when known (downstream only).
    #[serde(default)]
    pub(crate) client_addr: Option<String>,
}

/// A response header's fields (`http::response::Parts`, the part Pingora
/// uses), what [`ResponseHeader`](crate::ResponseHeader) dereferences to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ResponseParts {
    /// The status.
    pub status: StatusCode,
    /// The header fields.
    #[serde(default)]
    pub headers: HeaderMap,
}

/// The first value of header `name` (ASCII case-insensitive).
pub(crate) fn first_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_like_http_crate_parts() {
        let parts: RequestParts = serde_json::from_str(
            r#"{"method":"GET","uri":"/login?x=1","headers":[["Authorization","password"],["a","1"],["A","2"]]}"#,
        )
        .unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/login");
        assert_eq!(parts.uri.query(), Some("x=1"));
        assert_eq!(
            parts.headers.get("authorization").map(|v| v.as_bytes()),
            Some(b"password".as_slice())
        );
        let all: Vec<&str> = parts.headers.get_all("a").map(|v| v.as_str()).collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(parts.headers.get("missing"), None);
        assert_eq!(parts.headers.iter().count(), 3);

        let response: ResponseParts =
            serde_json::from_str(r#"{"status":404,"headers":[["Server","x"]]}"#).unwrap();
        assert_eq!(response.status.as_u16(), 404);
        assert!(response.status.is_client_error());
        assert_eq!(response.headers.get("server").unwrap().to_str(), Ok("x"));
    }
}
