//! The guest's view of Pingora's `ProxyHttp`: the trait, the session, the
//! peer and the upstream request, with Pingora's names so tutorial code
//! ports by changing its imports.

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::{Error, ErrorType, Result};
use crate::wire;

/// A proxy policy: where each request goes and what the upstream receives.
///
/// Pingora's trait of the same name, with the two hooks the host delegates.
/// Hooks are synchronous (a guest cannot block); everything else matches.
pub trait ProxyHttp {
    /// Per-request state carried from `upstream_peer` to
    /// `upstream_request_filter`. It travels through the host as JSON;
    /// a zero-sized one (such as `()`) carries nothing, so it is not sent
    /// at all and each hook gets a fresh [`new_ctx`](Self::new_ctx).
    type CTX: Serialize + DeserializeOwned;

    /// Creates the context at the start of a request.
    fn new_ctx(&self) -> Self::CTX;

    /// Where to send this request.
    fn upstream_peer(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>>;

    /// Changes the request the upstream receives. Defaults to no change.
    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }
}

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

fn first_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Anything that names an upstream address: `("1.1.1.1", 443)`,
/// `"1.1.1.1:443"`, a `SocketAddr`.
pub trait ToPeerAddress {
    /// The address as `host:port` (`[v6]:port` for IPv6).
    fn to_peer_address(&self) -> String;
}

impl ToPeerAddress for (&str, u16) {
    fn to_peer_address(&self) -> String {
        if self.0.contains(':') && !self.0.starts_with('[') {
            format!("[{}]:{}", self.0, self.1)
        } else {
            format!("{}:{}", self.0, self.1)
        }
    }
}

impl ToPeerAddress for (String, u16) {
    fn to_peer_address(&self) -> String {
        (self.0.as_str(), self.1).to_peer_address()
    }
}

impl ToPeerAddress for &str {
    fn to_peer_address(&self) -> String {
        self.to_string()
    }
}

impl ToPeerAddress for String {
    fn to_peer_address(&self) -> String {
        self.clone()
    }
}

impl ToPeerAddress for &String {
    fn to_peer_address(&self) -> String {
        (*self).clone()
    }
}

impl ToPeerAddress for SocketAddr {
    fn to_peer_address(&self) -> String {
        self.to_string()
    }
}

/// Connection options of an [`HttpPeer`] (Pingora's `PeerOptions`, the
/// fields the host honours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOptions {
    /// Timeout to establish the connection, TLS included.
    pub connection_timeout: Option<Duration>,
    /// Timeout for each read from the upstream.
    pub read_timeout: Option<Duration>,
    /// Verify the upstream certificate chain.
    pub verify_cert: bool,
    /// Verify the certificate matches the SNI.
    pub verify_hostname: bool,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connection_timeout: None,
            read_timeout: None,
            verify_cert: true,
            verify_hostname: true,
        }
    }
}

/// The upstream to connect to (Pingora's `HttpPeer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPeer {
    /// `ip:port` (or `name:port`, resolved by the host without blocking).
    pub address: String,
    /// Speak TLS to the upstream.
    pub tls: bool,
    /// TLS server name.
    pub sni: String,
    /// Connection options.
    pub options: PeerOptions,
}

impl HttpPeer {
    /// A peer at `address`, with TLS if `tls`, using `sni` as server name.
    pub fn new(address: impl ToPeerAddress, tls: bool, sni: String) -> Self {
        HttpPeer {
            address: address.to_peer_address(),
            tls,
            sni,
            options: PeerOptions::default(),
        }
    }

    pub(crate) fn into_wire(self) -> wire::Peer {
        let millis = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        wire::Peer {
            address: self.address,
            tls: self.tls,
            sni: self.sni,
            options: wire::PeerOptions {
                connection_timeout_ms: self.options.connection_timeout.map(millis),
                read_timeout_ms: self.options.read_timeout.map(millis),
                verify_cert: self.options.verify_cert,
                verify_hostname: self.options.verify_hostname,
            },
        }
    }
}

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

/// Decodes an input part from the JSON given, or else from the host. The
/// host always sends well-formed parts; anything else decodes as empty.
fn decode_part<T: DeserializeOwned + Default>(raw: Option<&RawValue>, part: i32) -> T {
    let fetched;
    let raw = match raw {
        Some(raw) => raw,
        None => match crate::rt::input_part(part) {
            Some(part) => {
                fetched = part;
                &*fetched
            }
            None => return T::default(),
        },
    };
    serde_json::from_str(raw.get()).unwrap_or_default()
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

    #[test]
    fn tuple_addresses_bracket_ipv6() {
        assert_eq!(("::1", 80).to_peer_address(), "[::1]:80");
        assert_eq!(("1.1.1.1", 443).to_peer_address(), "1.1.1.1:443");
    }
}
