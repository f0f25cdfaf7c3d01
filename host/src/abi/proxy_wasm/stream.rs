//! What a filter's callbacks see of one HTTP stream: copies of the request
//! and response header maps (with the pseudo-headers), the local response
//! a filter sends, the properties it sets, and facts about the request.
//!
//! A callback works on these copies inside its store; the host applies
//! them back to Pingora's headers after the callback returns, and only if
//! the filter changed them.

use std::collections::HashMap;

use pingora::http::{RequestHeader, ResponseHeader};

use super::types::{BufferType, MapType, Status};
use crate::abi::framing::{check_method, is_framing};
use crate::abi::HookFault;
use crate::abi::{
    header_name, header_refused, header_value, is_final_status, HeaderTarget, LocalReply,
};

/// The most fields a filter may give or make a header map hold: a map
/// with more (a replacement, a callout's or a local reply's headers) is
/// `BAD_ARGUMENT`, and so is an edit that would pass it.
pub(super) const MAX_HEADER_PAIRS: usize = 1024;

/// A header map as a filter sees it: ordered pairs, pseudo-headers first.
/// Names and values are kept back to back in one string, so that making
/// a map costs two allocations, not two per field.
#[derive(Default, Clone)]
pub struct HeaderPairs {
    /// Every name and value, back to back (with the text of edited pairs
    /// left behind until [`compact`](Self::compact)).
    text: String,
    /// Each pair's name and value, as `[name start, name end, value start,
    /// value end]` in `text`.
    spans: Vec<[usize; 4]>,
    changed: bool,
    /// Where the pairs added since the map was made start, while every
    /// change is an addition (the common edit, applied by appending).
    added_from: Option<usize>,
    /// A request's map, where `host` is another name of `:authority`.
    request: bool,
}

/// The pairs and flags only: the dead text of edited pairs (a removed
/// `Authorization`, say) never reaches a log.
impl std::fmt::Debug for HeaderPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderPairs")
            .field("pairs", &self.iter().collect::<Vec<_>>())
            .field("changed", &self.changed)
            .field("added_from", &self.added_from)
            .field("request", &self.request)
            .finish()
    }
}

impl HeaderPairs {
    /// An empty map with room for `fields` fields of `bytes` bytes.
    fn with_capacity(fields: usize, bytes: usize) -> Self {
        HeaderPairs {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(fields),
            ..HeaderPairs::default()
        }
    }

    /// The request's map: `:method`, `:path`, `:authority` (the `Host`
    /// field), `:scheme`, then its other fields.
    pub fn of_request(request: &RequestHeader, scheme: &str) -> Self {
        let headers = &request.headers;
        let mut map = Self::with_capacity(headers.len() + 4, 64 + 48 * headers.len());
        map.push(":method", request.method.as_str());
        map.push_bytes(":path", request.raw_path());
        match headers.get(http::header::HOST) {
            Some(host) => map.push_bytes(":authority", host.as_bytes()),
            None => match request.uri.authority() {
                Some(authority) => map.push(":authority", authority.as_str()),
                None => map.push(":authority", ""),
            },
        }
        map.push(":scheme", scheme);
        // `Host` is `:authority` here, as in Envoy.
        for (name, value) in headers {
            if name != http::header::HOST {
                map.push_bytes(name.as_str(), value.as_bytes());
            }
        }
        map.request = true;
        map.added_from = Some(map.spans.len());
        map
    }

    /// The name a pair of `name` has in this map: in a request's, `host`
    /// is `:authority` (so a filter that reads, replaces or removes `host`
    /// touches the one `Host` there is, as in Envoy).
    fn key<'a>(&self, name: &'a str) -> &'a str {
        if self.request && name.eq_ignore_ascii_case("host") {
            ":authority"
        } else {
            name
        }
    }

    /// A map of `pairs` as given.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let bytes = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut map = Self::with_capacity(pairs.len(), bytes);
        for (name, value) in &pairs {
            map.push(name, value);
        }
        map.added_from = Some(map.spans.len());
        map
    }

    /// A trailers map: its fields.
    pub fn of_trailers(trailers: &http::HeaderMap) -> Self {
        let mut map = Self::with_capacity(trailers.len(), 48 * trailers.len());
        for (name, value) in trailers {
            map.push_bytes(name.as_str(), value.as_bytes());
        }
        map.added_from = Some(map.spans.len());
        map
    }

    /// Applies the map to `trailers`: its fields replace theirs, each
    /// checked (pseudo-headers have no place there and are left out).
    pub fn apply_to_trailers(&self, trailers: &mut http::HeaderMap) -> Result<(), HookFault> {
        if let Some(added) = self.only_added() {
            return add_fields(trailers, checked_all(added)?, false);
        }
        let fields = self.iter().filter(|(name, _)| !name.starts_with(':'));
        add_fields(trailers, checked_all(fields)?, true)
    }

    /// The response's map: `:status`, then its fields.
    pub fn of_response(response: &ResponseHeader) -> Self {
        let headers = &response.headers;
        let mut map = Self::with_capacity(headers.len() + 1, 16 + 48 * headers.len());
        map.push(":status", response.status.as_str());
        for (name, value) in headers {
            map.push_bytes(name.as_str(), value.as_bytes());
        }
        map.added_from = Some(map.spans.len());
        map
    }

    /// Appends a pair as given.
    fn push(&mut self, name: &str, value: &str) {
        let name_at = self.text.len();
        self.text.push_str(name);
        let value_at = self.text.len();
        self.text.push_str(value);
        self.spans
            .push([name_at, value_at, value_at, self.text.len()]);
    }

    /// Appends a pair whose value may not be UTF-8 (a field may carry any
    /// bytes): such bytes become U+FFFD.
    fn push_bytes(&mut self, name: &str, value: &[u8]) {
        match std::str::from_utf8(value) {
            Ok(value) => self.push(name, value),
            Err(_) => self.push(name, &String::from_utf8_lossy(value)),
        }
    }

    fn name(&self, span: &[usize; 4]) -> &str {
        &self.text[span[0]..span[1]]
    }

    fn value(&self, span: &[usize; 4]) -> &str {
        &self.text[span[2]..span[3]]
    }

    /// How many pairs it holds.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether it holds no pair.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.spans
            .iter()
            .map(|span| (self.name(span), self.value(span)))
    }

    /// Every pair, copied.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    /// The first value of `name` (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = self.key(name);
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Adds a pair.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = self.key(name);
        let at = self.text.len();
        self.push(name, value);
        self.text[at..at + name.len()].make_ascii_lowercase();
        self.changed = true;
    }

    /// Replaces every pair of `name` with one, where the first was.
    pub fn replace(&mut self, name: &str, value: &str) {
        let name = self.key(name);
        let first = self
            .spans
            .iter()
            .position(|span| self.name(span).eq_ignore_ascii_case(name));
        match first {
            Some(first) => {
                let at = self.text.len();
                self.text.push_str(value);
                self.spans[first][2] = at;
                self.spans[first][3] = self.text.len();
                let mut index = 0;
                let spans = std::mem::take(&mut self.spans);
                self.spans = spans
                    .into_iter()
                    .filter(|span| {
                        index += 1;
                        index - 1 == first || !self.name(span).eq_ignore_ascii_case(name)
                    })
                    .collect();
                self.added_from = None;
                self.compact();
            }
            None => self.add(name, value),
        }
        self.changed = true;
    }

    /// Removes every pair of `name`; removing an absent one is fine.
    pub fn remove(&mut self, name: &str) {
        let name = self.key(name);
        let before = self.spans.len();
        self.retain(|n| !n.eq_ignore_ascii_case(name));
        if self.spans.len() != before {
            self.changed = true;
            self.added_from = None;
        }
    }

    /// Removes every field called `name` (lower case) as if the map had
    /// been made without it: not a change to apply.
    fn forget(&mut self, name: &str) {
        let before = self.spans.len();
        self.retain(|n| n != name);
        let gone = before - self.spans.len();
        if let Some(from) = self.added_from.as_mut() {
            *from = from.saturating_sub(gone);
        }
    }

    /// Keeps the pairs whose name `keep` accepts.
    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let spans = std::mem::take(&mut self.spans);
        self.spans = spans
            .into_iter()
            .filter(|span| keep(self.name(span)))
            .collect();
        self.compact();
    }

    /// Drops the text of pairs no longer held once it outweighs the live
    /// text: a filter that edits a map in a loop holds no more host memory
    /// than twice the map.
    fn compact(&mut self) {
        let live: usize = self.spans.iter().map(|s| s[1] - s[0] + s[3] - s[2]).sum();
        if self.text.len() <= 2 * live + 4096 {
            return;
        }
        let mut text = String::with_capacity(live);
        for span in &mut self.spans {
            let name_at = text.len();
            text.push_str(&self.text[span[0]..span[1]]);
            let value_at = text.len();
            text.push_str(&self.text[span[2]..span[3]]);
            *span = [name_at, value_at, value_at, text.len()];
        }
        self.text = text;
    }

    /// Replaces the whole map.
    pub fn set_all(&mut self, pairs: Vec<(String, String)>) {
        let bytes = pairs.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
        let mut map = Self::with_capacity(pairs.len(), bytes);
        for (name, value) in &pairs {
            // Names are matched lower case from here on (as HTTP/2 writes
            // them): `:Authority` is `:authority`.
            let name = match self.request && name.eq_ignore_ascii_case("host") {
                true => ":authority",
                false => name,
            };
            let at = map.text.len();
            map.push(name, value);
            map.text[at..at + name.len()].make_ascii_lowercase();
        }
        self.text = map.text;
        self.spans = map.spans;
        self.changed = true;
        self.added_from = None;
    }

    /// The pairs added since the map was made, if every change was an
    /// addition of a field (not of a pseudo-header).
    fn only_added(&self) -> Option<impl Iterator<Item = (&str, &str)> + Clone + '_> {
        let added = self.iter().skip(self.added_from?);
        (!added.clone().any(|(name, _)| name.starts_with(':'))).then_some(added)
    }

    /// Whether the filter changed it.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The map in the ABI's serialized form (see [`serialize_pairs`]).
    pub fn serialize(&self) -> Vec<u8> {
        serialize_pairs(self.iter())
    }

    /// The size of its serialized form, without making it (from the
    /// spans alone: it is asked before every edit).
    pub fn serialized_len(&self) -> usize {
        let text: usize = self.spans.iter().map(|s| s[1] - s[0] + s[3] - s[2]).sum();
        4 + 10 * self.spans.len() + text
    }

    /// Pairs from the serialized form; None if it is malformed or holds
    /// more than [`MAX_HEADER_PAIRS`] (checked before anything is made).
    pub fn deserialize(bytes: &[u8]) -> Option<Vec<(String, String)>> {
        let u32_at = |at: usize| -> Option<usize> {
            let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(raw) as usize)
        };
        let count = u32_at(0)?;
        if count > MAX_HEADER_PAIRS {
            return None;
        }
        let mut sizes = Vec::with_capacity(count.min(1024));
        for i in 0..count {
            sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
        }
        let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
        let mut pairs = Vec::with_capacity(sizes.len());
        for (name_len, value_len) in sizes {
            let name = bytes.get(at..at.checked_add(name_len)?)?;
            at += name_len + 1;
            let value = bytes.get(at..at.checked_add(value_len)?)?;
            at += value_len + 1;
            pairs.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
        Some(pairs)
    }

    /// Writes the changed map back to the request: pseudo-headers to the
    /// method, path and `Host`, the rest as its fields. Everything is
    /// checked before anything is changed.
    pub fn apply_to_request(&self, request: &mut RequestHeader) -> Result<(), HookFault> {
        if let Some(added) = self.only_added() {
            return add_fields(request, checked_all(added)?, false);
        }
        let (mut method, mut path) = (None, None);
        let mut fields = Vec::new();
        for (name, value) in self.iter() {
            match name {
                ":method" => {
                    method = Some(
                        http::Method::from_bytes(value.as_bytes())
                            .map_err(|_| invalid(format!("invalid :method {value:?}")))?,
                    )
                }
                ":path" if value.starts_with('/') => path = Some(value),
                ":path" => return Err(invalid(format!(":path {value:?} is not a path"))),
                ":authority" => fields.push(checked("host", value)?),
                other if other.starts_with(':') => {}
                // Pingora reads the body by the request's own framing,
                // which it keeps (a removed Content-Length only reframes
                // the upstream body).
                other if is_framing(other) => {}
                other => fields.push(checked(other, value)?),
            }
        }
        for (name, value) in request.headers.iter() {
            if is_framing(name.as_str()) {
                fields.push((name.clone(), value.clone()));
            }
        }
        if let Some(path) = path {
            request
                .set_raw_path(path.as_bytes())
                .map_err(|e| invalid(format!(":path {path:?}: {e}")))?;
        }
        if let Some(method) = method {
            check_method(request.method.as_str(), method.as_str()).map_err(invalid)?;
            request.set_method(method);
        }
        add_fields(request, fields, true)
    }

    /// Writes the changed map back to the response: `:status` to the
    /// status, the rest as its fields. Everything is checked before
    /// anything is changed.
    pub fn apply_to_response(&self, response: &mut ResponseHeader) -> Result<(), HookFault> {
        if let Some(added) = self.only_added() {
            return add_fields(response, checked_all(added)?, false);
        }
        let mut status = None;
        let mut fields = Vec::new();
        for (name, value) in self.iter() {
            match name {
                ":status" => {
                    status = Some(
                        value
                            .parse::<u16>()
                            .ok()
                            .filter(|s| is_final_status(*s))
                            .ok_or_else(|| invalid(format!(":status {value:?} is not 200-599")))?,
                    )
                }
                other if other.starts_with(':') => {}
                other => fields.push(checked(other, value)?),
            }
        }
        if let Some(status) = status {
            response
                .set_status(status)
                .map_err(|e| invalid(format!(":status: {e}")))?;
        }
        add_fields(response, fields, true)
    }
}

/// Pairs in the ABI's serialized form: the number of pairs, each pair's
/// key and value sizes (u32, little-endian), then each key and value
/// followed by a NUL.
pub(super) fn serialize_pairs<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
    I::IntoIter: Clone,
{
    let pairs = pairs.into_iter();
    let mut out = Vec::with_capacity(serialized_len(pairs.clone()));
    out.extend_from_slice(&(pairs.clone().count() as u32).to_le_bytes());
    for (name, value) in pairs.clone() {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// The size of the serialized form of `pairs`, without making it.
pub(super) fn serialized_len<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
    pairs.map(|(n, v)| 8 + n.len() + v.len() + 2).sum::<usize>() + 4
}

/// Adds checked `fields` to `target`, after removing all it had if
/// `replace`.
fn add_fields(
    target: &mut impl HeaderTarget,
    fields: Vec<(http::HeaderName, http::HeaderValue)>,
    replace: bool,
) -> Result<(), HookFault> {
    if replace {
        target.clear_fields();
    }
    for (name, value) in fields {
        target
            .append(name.as_str().to_string(), value)
            .map_err(header_refused)?;
    }
    Ok(())
}

/// Every pair checked as a field.
fn checked_all<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, HookFault> {
    pairs.map(|(name, value)| checked(name, value)).collect()
}

fn invalid(what: String) -> HookFault {
    HookFault::InvalidOutput(what)
}

/// A field from a filter, its name and value checked; a bad value is
/// named by its lower-cased name.
fn checked(name: &str, value: &str) -> Result<(http::HeaderName, http::HeaderValue), HookFault> {
    let name = header_name(name)?;
    let value = header_value(name.as_str(), value)?;
    Ok((name, value))
}

/// What a filter reads of the call answer being delivered: a header map
/// (an HTTP call's response headers, a gRPC stream's metadata), a buffer
/// (the response body, a gRPC message) and a gRPC status
/// (`proxy_get_status`), each there only during the callback that
/// delivers it.
#[derive(Debug, Default)]
pub struct CallView {
    /// The map, and which map type names it.
    pub(super) map: Option<(MapType, HeaderPairs)>,
    /// The buffer, and which buffer type names it.
    pub(super) buffer: Option<(BufferType, Vec<u8>)>,
    /// A gRPC status and its message.
    pub(super) status: Option<(u32, String)>,
}

impl CallView {
    pub(super) fn header_map(&self, map: MapType) -> Option<&HeaderPairs> {
        self.map
            .as_ref()
            .filter(|(kind, _)| *kind == map)
            .map(|(_, map)| map)
    }

    pub(super) fn header_map_mut(&mut self, map: MapType) -> Option<&mut HeaderPairs> {
        self.map
            .as_mut()
            .filter(|(kind, _)| *kind == map)
            .map(|(_, map)| map)
    }

    pub(super) fn buffer(&self, buffer: BufferType) -> Option<&[u8]> {
        self.buffer
            .as_ref()
            .filter(|(kind, _)| *kind == buffer)
            .map(|(_, bytes)| bytes.as_slice())
    }
}

/// Facts about the request, for properties.
#[derive(Debug, Default, Clone)]
pub struct RequestFacts {
    /// `request.id`: unique per request in this process.
    pub id: u64,
    /// `request.protocol` (`HTTP/1.1` as written), kept unformatted: few
    /// filters read it.
    pub protocol: http::Version,
    /// `request.time`: when the request's filters began, in nanoseconds
    /// since the Unix epoch.
    pub started_unix_ns: i64,
    /// The client's connection.
    pub connection: ConnectionFacts,
    /// `upstream.address` and `upstream.port`, once connected.
    pub upstream: Option<std::net::SocketAddr>,
}

/// Facts about the client's connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFacts {
    /// `source.address` and `source.port`.
    pub client: Option<std::net::SocketAddr>,
    /// `destination.address` and `destination.port`.
    pub server: Option<std::net::SocketAddr>,
    /// The TLS session, if the connection is TLS.
    pub tls: Option<TlsFacts>,
}

/// A TLS connection's facts.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// `connection.tls_version`, e.g. `TLSv1.3`.
    pub version: String,
    /// `connection.requested_server_name`: the client's SNI.
    pub server_name: Option<String>,
}

/// One HTTP stream as a filter's callbacks see it.
#[derive(Debug, Default)]
pub struct Stream {
    /// The request header map.
    pub request: HeaderPairs,
    /// The response header map, once there is a response.
    pub response: Option<HeaderPairs>,
    /// The response's trailers, during `proxy_on_response_trailers`.
    pub response_trailers: Option<HeaderPairs>,
    /// A local response the filter asked for in this callback.
    pub local_reply: Option<LocalReply>,
    /// Properties the filter set (`proxy_set_property`), by path.
    pub properties: HashMap<String, Vec<u8>>,
    /// Facts about the request.
    pub facts: RequestFacts,
    /// The filter asked for the stream to be reset
    /// (`proxy_close_stream`).
    pub close: bool,
    /// HTTP calls the filter dispatched in this callback.
    pub calls: Vec<super::callout::PendingCall>,
    /// What the filter reads of the call answer being delivered.
    pub call_view: CallView,
    /// The request body buffered so far (`HTTP_REQUEST_BODY`).
    pub request_body: Vec<u8>,
    /// The response body buffered so far (`HTTP_RESPONSE_BODY`).
    pub response_body: Vec<u8>,
    /// A filter removed the request's `Content-Length` (this one or one
    /// before it): the body goes upstream by chunks, and the filter's
    /// request map has none.
    pub request_reframed: bool,
}

impl Stream {
    /// Takes `request` into the filter's request map, without the
    /// `Content-Length` a filter removed.
    pub fn read_request(&mut self, request: &RequestHeader) {
        self.request = HeaderPairs::of_request(request, "http");
        if self.request_reframed {
            self.request.forget("content-length");
        }
    }

    /// After a callback: whether the filter removed the request's
    /// `Content-Length` from its map (its edits are then applied).
    pub fn note_reframing(&mut self, request: &RequestHeader) {
        let had_length = request.headers.contains_key(http::header::CONTENT_LENGTH);
        if had_length && self.request.get("content-length").is_none() {
            self.request_reframed = true;
        }
    }

    /// The body buffered for `direction`.
    pub fn body_mut(&mut self, direction: super::Direction) -> &mut Vec<u8> {
        match direction {
            super::Direction::Request => &mut self.request_body,
            super::Direction::Response => &mut self.response_body,
        }
    }

    /// Header map `map`, if this stream keeps it now.
    pub(super) fn header_map(&self, map: MapType) -> Result<&HeaderPairs, Status> {
        match map {
            MapType::HttpRequestHeaders => Some(&self.request),
            MapType::HttpResponseHeaders => self.response.as_ref(),
            MapType::HttpResponseTrailers => self.response_trailers.as_ref(),
            other => self.call_view.header_map(other),
        }
        .ok_or(Status::NotFound)
    }

    /// Header map `map` to edit, if this stream keeps it now. An edit of
    /// the call response's map only changes what the filter reads back.
    pub(super) fn header_map_mut(&mut self, map: MapType) -> Result<&mut HeaderPairs, Status> {
        match map {
            MapType::HttpRequestHeaders => Some(&mut self.request),
            MapType::HttpResponseHeaders => self.response.as_mut(),
            MapType::HttpResponseTrailers => self.response_trailers.as_mut(),
            other => self.call_view.header_map_mut(other),
        }
        .ok_or(Status::NotFound)
    }

    /// The bytes of buffer `buffer`, if this stream keeps it now.
    pub(super) fn buffer(&self, buffer: BufferType) -> Result<&[u8], Status> {
        match buffer {
            BufferType::HttpRequestBody => Ok(&self.request_body),
            BufferType::HttpResponseBody => Ok(&self.response_body),
            other => self.call_view.buffer(other).ok_or(Status::NotFound),
        }
    }

    /// Replaces bytes `[start, start + size)` of a body with `data`, as
    /// the SDKs use it: `(0, len)` for the whole body, `(len, 0)` to
    /// append. Both ends are clamped to the body; past
    /// [`MAX_BODY`](super::MAX_BODY) it is `BAD_ARGUMENT`.
    pub(super) fn set_body_bytes(
        &mut self,
        buffer: BufferType,
        start: u32,
        size: u32,
        data: Vec<u8>,
    ) -> Result<(), Status> {
        let body = match buffer {
            BufferType::HttpRequestBody => &mut self.request_body,
            BufferType::HttpResponseBody => &mut self.response_body,
            _ => return Err(Status::NotFound),
        };
        let start = (start as usize).min(body.len());
        let end = start.saturating_add(size as usize).min(body.len());
        if body.len() - (end - start) + data.len() > super::MAX_BODY {
            return Err(Status::BadArgument);
        }
        body.splice(start..end, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_serialize_and_back() {
        let pairs = vec![
            (":path".to_string(), "/a".to_string()),
            ("x".to_string(), String::new()),
        ];
        let map = HeaderPairs::from_pairs(pairs.clone());
        let bytes = map.serialize();
        assert_eq!(map.serialized_len(), bytes.len());
        assert_eq!(HeaderPairs::deserialize(&bytes), Some(pairs));
        assert_eq!(HeaderPairs::deserialize(&bytes[..bytes.len() - 2]), None);
        assert_eq!(HeaderPairs::deserialize(&[255, 255, 255, 255]), None);
    }

    #[test]
    fn edits_reach_the_request_and_pseudo_headers_its_line() {
        let mut request = RequestHeader::build("GET", b"/a", None).unwrap();
        request.insert_header("Host", "h.example").unwrap();
        request.insert_header("x-old", "1").unwrap();
        let mut map = HeaderPairs::of_request(&request, "http");
        assert_eq!(map.get(":authority"), Some("h.example"));
        map.replace(":path", "/b?q=1");
        map.replace(":method", "POST");
        map.remove("x-old");
        map.remove("x-never-there");
        map.add("x-new", "2");
        map.apply_to_request(&mut request).unwrap();
        assert_eq!(request.raw_path(), b"/b?q=1");
        assert_eq!(request.method, "POST");
        assert!(request.headers.get("x-old").is_none());
        assert_eq!(request.headers["x-new"], "2");
        assert_eq!(request.headers["host"], "h.example");

        let mut response = ResponseHeader::build(200, None).unwrap();
        response.insert_header("server", "origin").unwrap();
        let mut map = HeaderPairs::of_response(&response);
        map.add("x-added", "1");
        assert!(map.only_added().is_some(), "additions are appended");
        map.replace("server", "edge");
        assert!(map.only_added().is_none(), "a replacement rewrites");
        map.apply_to_response(&mut response).unwrap();
        assert_eq!(response.headers["server"], "edge");
        assert_eq!(response.headers["x-added"], "1");

        let mut map = HeaderPairs::of_request(&request, "http");
        map.add("bad name", "v");
        assert!(map.apply_to_request(&mut request).is_err());
        assert_eq!(request.headers["x-new"], "2", "a bad map changes nothing");
    }

    #[test]
    fn a_removed_content_length_stays_on_the_downstream_request() {
        let mut request = RequestHeader::build("POST", b"/", None).unwrap();
        request.insert_header("Host", "a.example").unwrap();
        request.insert_header("Content-Length", "5").unwrap();
        let mut stream = Stream::default();
        stream.read_request(&request);
        stream.request.remove("content-length");
        stream.request.replace("x-new", "1");
        stream.note_reframing(&request);
        stream.request.apply_to_request(&mut request).unwrap();
        assert!(stream.request_reframed);
        // Pingora reads the body by it: it stays.
        assert_eq!(request.headers["content-length"], "5");
        assert_eq!(request.headers["x-new"], "1");
        // A later filter's map is made without it.
        stream.read_request(&request);
        assert_eq!(stream.request.get("content-length"), None);
        assert!(!stream.request.changed());
    }

    #[test]
    fn host_is_the_request_s_authority() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("Host", "a.example").unwrap();
        let mut map = HeaderPairs::of_request(&request, "http");
        assert_eq!(map.get("Host"), Some("a.example"));
        map.replace("host", "b.example");
        map.apply_to_request(&mut request).unwrap();
        let hosts: Vec<_> = request.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["b.example"]);

        let mut map = HeaderPairs::of_request(&request, "http");
        map.set_all(vec![("host".to_string(), "c.example".to_string())]);
        assert_eq!(map.get(":authority"), Some("c.example"));
        let mut response = HeaderPairs::of_response(&ResponseHeader::build(200, None).unwrap());
        response.add("host", "x");
        assert_eq!(
            response.get(":authority"),
            None,
            "a response has no authority"
        );
    }

    #[test]
    fn a_later_filter_s_additions_reach_a_reframed_request() {
        // An earlier filter removed Content-Length: a later filter's map
        // is made without it, and what it only adds is still applied.
        let mut request = RequestHeader::build("POST", b"/", None).unwrap();
        request.insert_header("Host", "a.example").unwrap();
        request.insert_header("Content-Length", "5").unwrap();
        let mut stream = Stream {
            request_reframed: true,
            ..Stream::default()
        };
        stream.read_request(&request);
        stream.request.add("x-a", "1");
        stream.request.apply_to_request(&mut request).unwrap();
        assert_eq!(request.headers["x-a"], "1");
        assert!(format!("{:?}", stream.request).contains("x-a"));
    }

    #[test]
    fn edits_in_a_loop_hold_no_more_than_twice_the_map() {
        let mut map = HeaderPairs::from_pairs(vec![("x".into(), "1".into())]);
        let value = "v".repeat(60_000);
        for _ in 0..1000 {
            map.replace("x", &value);
            map.add("y", "2");
            map.remove("y");
        }
        assert_eq!(map.get("x"), Some(value.as_str()));
        assert_eq!(map.len(), 1);
        assert!(map.text.len() <= 2 * 60_001 + 4096, "{}", map.text.len());
    }

    #[test]
    fn a_head_request_stays_head() {
        let mut request = RequestHeader::build("HEAD", b"/", None).unwrap();
        let mut map = HeaderPairs::of_request(&request, "http");
        map.replace(":method", "GET");
        assert!(map.apply_to_request(&mut request).is_err());
        assert_eq!(request.method, "HEAD");
    }
}
